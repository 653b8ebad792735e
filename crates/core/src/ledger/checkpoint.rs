//! Signed checkpoints: (size, root, time) signed with the ledger's Ed25519 key.
//!
//! The signed message is the ASCII text
//! `daena-checkpoint-v1\n<size>\n<root hex>\n<ts micros>\n`. A checkpoint exported and kept
//! away from the operator lets anyone later prove the ledger was neither truncated nor
//! rewritten up to `size`.

use crate::merkle::Hash;
use crate::time::Micros;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Entries covered: sequence numbers 1..=size.
    pub size: u64,
    /// Merkle root (hex) of the first `size` entries.
    pub root: String,
    pub ts: Micros,
    /// The Ed25519 public key (hex) that signed it.
    pub public_key: String,
    /// The Ed25519 signature (hex) over the message above.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("checkpoint signature does not verify")]
    BadSignature,
}

pub fn message(size: u64, root: &Hash, ts: Micros) -> String {
    format!("daena-checkpoint-v1\n{size}\n{}\n{}\n", hex::encode(root), ts.0)
}

impl Checkpoint {
    pub fn sign(key: &SigningKey, size: u64, root: &Hash, ts: Micros) -> Checkpoint {
        let sig = key.sign(message(size, root, ts).as_bytes());
        Checkpoint {
            size,
            root: hex::encode(root),
            ts,
            public_key: hex::encode(key.verifying_key().to_bytes()),
            signature: hex::encode(sig.to_bytes()),
        }
    }

    pub fn root_hash(&self) -> Result<Hash, CheckpointError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.root, &mut out).map_err(|e| CheckpointError::Malformed(format!("root: {e}")))?;
        Ok(out)
    }

    /// Checks the signature with the checkpoint's own key, and that the key is `expected`
    /// when one is pinned.
    pub fn verify(&self, expected_key: Option<&str>) -> Result<(), CheckpointError> {
        if let Some(k) = expected_key
            && !k.eq_ignore_ascii_case(&self.public_key)
        {
            return Err(CheckpointError::Malformed("signed by a different key than the ledger's".into()));
        }
        let mut pk = [0u8; 32];
        hex::decode_to_slice(&self.public_key, &mut pk)
            .map_err(|e| CheckpointError::Malformed(format!("public_key: {e}")))?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|e| CheckpointError::Malformed(format!("public_key: {e}")))?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut sig)
            .map_err(|e| CheckpointError::Malformed(format!("signature: {e}")))?;
        let root = self.root_hash()?;
        key.verify_strict(message(self.size, &root, self.ts).as_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| CheckpointError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let cp = Checkpoint::sign(&key, 10, &[1u8; 32], Micros(5));
        cp.verify(None).expect("valid");
        cp.verify(Some(&cp.public_key.to_uppercase())).expect("pinned key");
        let mut forged = cp.clone();
        forged.size = 11;
        assert_eq!(forged.verify(None), Err(CheckpointError::BadSignature));
        let other = Checkpoint::sign(&SigningKey::from_bytes(&[8u8; 32]), 10, &[1u8; 32], Micros(5));
        assert!(cp.verify(Some(&other.public_key)).is_err());
    }
}
