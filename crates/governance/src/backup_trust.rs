//! Authenticated backups: snapshots and archives carry an Ed25519 signature by the
//! deployment's signing key (the one that signs ledger checkpoints) over their manifest, and a
//! restore, rollback, replay or archive import checks it before it trusts the file.
//!
//! A file signed by this deployment is trusted. One signed by another deployment is trusted
//! when its public key is pinned (`--public-key`). Anything else (unsigned, signed by an
//! unknown key, a signature that does not verify) is refused, naming the key that was
//! expected, unless the operator says `--trust-unsigned`; an archive imported that way puts
//! the records of quarantined classes into quarantine, whatever the archive says.

use daena_base::error::{AppError, AppResult};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// A signature over a backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackupSignature {
    /// The signer's Ed25519 public key, hex.
    pub public_key: String,
    /// The signature, hex.
    pub signature: String,
}

/// What a restore or import accepts besides this deployment's own signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct Trust {
    /// Accept a file that is unsigned or not signed by the expected key.
    pub trust_unsigned: bool,
    /// Another deployment's public key (hex) whose signature is trusted instead of this one's.
    pub public_key: Option<String>,
}

/// Who vouches for a backup that passed the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// Signed by this deployment.
    ThisDeployment,
    /// Signed by the pinned key of another deployment.
    Pinned,
    /// Accepted with `--trust-unsigned`: nothing vouches for it.
    Unverified,
}

/// The message signed for a backup of `kind` (`snapshot`, `archive`) with `manifest`: the
/// kind separates the two, so one's signature never passes for the other's.
fn message(kind: &str, manifest: &[u8]) -> Vec<u8> {
    let mut m = format!("daena-backup-v1\0{kind}\0").into_bytes();
    m.extend_from_slice(manifest);
    m
}

pub fn sign(key: &SigningKey, kind: &str, manifest: &[u8]) -> BackupSignature {
    BackupSignature {
        public_key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(key.sign(&message(kind, manifest)).to_bytes()),
    }
}

pub fn parse_key(hex_text: &str, what: &str) -> AppResult<VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_text.trim(), &mut bytes)
        .map_err(|_| AppError::invalid(format!("{what} is not 64 hex digits")))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| AppError::invalid(format!("{what} is not an Ed25519 public key")))
}

/// Checks `signature` over `manifest` of the backup at `what`: against the pinned key when
/// `trust` names one, else against `ours`.
pub fn check(
    what: &str,
    kind: &str,
    manifest: &[u8],
    signature: Option<&BackupSignature>,
    ours: &VerifyingKey,
    trust: &Trust,
) -> AppResult<Provenance> {
    let (expected, provenance) = match &trust.public_key {
        Some(k) => (parse_key(k, "--public-key")?, Provenance::Pinned),
        None => (*ours, Provenance::ThisDeployment),
    };
    let expected_hex = hex::encode(expected.to_bytes());
    let problem = match signature {
        None => format!("{what} is not signed; this deployment expects a signature by key {expected_hex}"),
        Some(sig) if sig.public_key != expected_hex => format!(
            "{what} is signed by key {}, not by the expected key {expected_hex} (pin another deployment's key with --public-key)",
            sig.public_key
        ),
        Some(sig) => {
            let mut bytes = [0u8; 64];
            let verified = hex::decode_to_slice(&sig.signature, &mut bytes).is_ok()
                && expected.verify(&message(kind, manifest), &ed25519_dalek::Signature::from_bytes(&bytes)).is_ok();
            if verified {
                return Ok(provenance);
            }
            format!("{what}: the signature by key {expected_hex} does not verify; the manifest was changed")
        }
    };
    if trust.trust_unsigned {
        tracing::warn!(%problem, "accepted with --trust-unsigned");
        return Ok(Provenance::Unverified);
    }
    Err(AppError::invalid(format!("{problem}; refused (--trust-unsigned accepts it anyway)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_against_the_expected_key() {
        let ours = SigningKey::from_bytes(&[1; 32]);
        let theirs = SigningKey::from_bytes(&[2; 32]);
        let m = b"{\"name\":\"s\"}";
        let ok =
            |sig: Option<&BackupSignature>, trust: &Trust| check("f", "snapshot", m, sig, &ours.verifying_key(), trust);
        let strict = Trust::default();
        assert_eq!(ok(Some(&sign(&ours, "snapshot", m)), &strict).ok(), Some(Provenance::ThisDeployment));
        let e = ok(None, &strict).expect_err("unsigned");
        assert!(e.message.contains(&hex::encode(ours.verifying_key().to_bytes())), "{}", e.message);
        let e = ok(Some(&sign(&theirs, "snapshot", m)), &strict).expect_err("another key");
        assert!(e.message.contains("--public-key"), "{}", e.message);
        assert!(ok(Some(&sign(&ours, "archive", m)), &strict).is_err(), "an archive's signature is not a snapshot's");
        let mut changed = sign(&ours, "snapshot", m);
        changed.signature.replace_range(0..2, if changed.signature.starts_with("00") { "01" } else { "00" });
        assert!(ok(Some(&changed), &strict).is_err());
        let pinned = Trust { public_key: Some(hex::encode(theirs.verifying_key().to_bytes())), ..Trust::default() };
        assert_eq!(ok(Some(&sign(&theirs, "snapshot", m)), &pinned).ok(), Some(Provenance::Pinned));
        assert!(ok(Some(&sign(&ours, "snapshot", m)), &pinned).is_err(), "a pinned key is the only one");
        let lax = Trust { trust_unsigned: true, public_key: None };
        assert_eq!(ok(None, &lax).ok(), Some(Provenance::Unverified));
        assert_eq!(ok(Some(&sign(&theirs, "snapshot", m)), &lax).ok(), Some(Provenance::Unverified));
        assert!(ok(None, &Trust { public_key: Some("zz".into()), ..Trust::default() }).is_err());
    }
}
