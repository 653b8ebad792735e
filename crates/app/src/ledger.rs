//! Ledger use cases: the head, entries (tenant-scoped), proofs, checkpoints, the export
//! manifest and the adoption of a legacy Python ledger as genesis.

use crate::Daena;
use crate::auth::Principal;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult};
use base64::Engine;
use daena_core::auth::Role;
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_core::ledger::{Checkpoint, legacy};
use daena_core::merkle::{self, Hash};
use daena_store::datadir::{DataDir, write_atomic};
use daena_store::ledger::{Head, LedgerRead, OpenReport};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub const SIGNING_KEY_FILE: &str = "ledger_signing.key";

/// The checkpoint signing key, created on first use (hex of 32 bytes, mode 0600).
pub fn signing_key(data: &DataDir) -> AppResult<SigningKey> {
    let path = data.keys_dir().join(SIGNING_KEY_FILE);
    match daena_store::datadir::read_optional(&path)? {
        Some(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)
                .map_err(|_| AppError::internal(format!("{} is not 64 hex digits", path.display())))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        None => {
            let seed: [u8; 32] = rand::random();
            write_atomic(&path, format!("{}\n", hex::encode(seed)).as_bytes(), true)?;
            tracing::info!(path = %path.display(), "created the ledger checkpoint signing key");
            Ok(SigningKey::from_bytes(&seed))
        }
    }
}

/// Read side of the ledger held by the service.
#[derive(Debug)]
pub struct LedgerService {
    pub reader: std::sync::Arc<dyn LedgerRead>,
    pub public_key: String,
    pub opened: OpenReport,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CheckpointView {
    pub size: u64,
    pub root: String,
    pub time: String,
    /// Microseconds since the epoch, as signed.
    pub ts: i64,
    pub public_key: String,
    pub signature: String,
}

impl From<&Checkpoint> for CheckpointView {
    fn from(c: &Checkpoint) -> Self {
        CheckpointView {
            size: c.size,
            root: c.root.clone(),
            time: rfc3339(c.ts),
            ts: c.ts.0,
            public_key: c.public_key.clone(),
            signature: c.signature.clone(),
        }
    }
}

impl CheckpointView {
    /// Back to the signed form, for verification.
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            size: self.size,
            root: self.root.clone(),
            ts: daena_core::time::Micros(self.ts),
            public_key: self.public_key.clone(),
            signature: self.signature.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadView {
    /// Entries in the ledger (sequence numbers 1..=size).
    pub size: u64,
    pub head_hash: String,
    pub root: String,
    pub last_entry_at: Option<String>,
    /// The key checkpoints are signed with.
    pub public_key: String,
    pub checkpoint: Option<CheckpointView>,
    /// Entries of the last segment verified when the service opened the ledger.
    pub verified_at_open: u64,
    /// Bytes of a torn last line cut off at open (a crash mid-write).
    pub repaired_bytes_at_open: u64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryView {
    pub seq: u64,
    pub time: String,
    pub tenant: String,
    pub actor: String,
    pub action: String,
    #[serde(rename = "ref")]
    pub reference: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attrs: serde_json::Value,
    pub body_sha256: String,
    /// The operation body (base64; encrypted for memory operations), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub prev: String,
    pub hash: String,
}

impl EntryView {
    pub fn new(e: &Entry, with_body: bool) -> EntryView {
        EntryView {
            seq: e.seq,
            time: rfc3339(e.ts),
            tenant: e.tenant.clone(),
            actor: e.actor.clone(),
            action: e.action.clone(),
            reference: e.reference.clone(),
            attrs: e.attrs.clone(),
            body_sha256: hex::encode(e.body_sha256),
            body: with_body.then(|| base64::engine::general_purpose::STANDARD.encode(&e.body)),
            prev: hex::encode(e.prev),
            hash: hex::encode(e.hash),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntriesPage {
    pub entries: Vec<EntryView>,
    /// Where to continue (`from=`), when there may be more.
    pub next: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InclusionView {
    pub seq: u64,
    pub size: u64,
    /// 0-based leaf index (seq − 1), as RFC 6962 counts.
    pub leaf_index: u64,
    pub entry_hash: String,
    pub leaf_hash: String,
    pub root: String,
    pub proof: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConsistencyView {
    pub from: u64,
    pub to: u64,
    pub root_from: String,
    pub root_to: String,
    pub proof: Vec<String>,
}

fn hexes(hs: &[Hash]) -> Vec<String> {
    hs.iter().map(hex::encode).collect()
}

impl LedgerService {
    pub fn head(&self) -> AppResult<HeadView> {
        let Head { size, hash, ts } = self.reader.head();
        let root = self.reader.root(size)?.unwrap_or_else(merkle::empty_root);
        Ok(HeadView {
            size,
            head_hash: hex::encode(hash),
            root: hex::encode(root),
            last_entry_at: (size > 0).then(|| rfc3339(ts)),
            public_key: self.public_key.clone(),
            checkpoint: self.reader.checkpoint().as_ref().map(CheckpointView::from),
            verified_at_open: self.opened.verified_tail,
            repaired_bytes_at_open: self.opened.repaired_bytes,
        })
    }

    /// Entries from `from`, at most `limit`; non-ops callers only see their tenant's.
    pub fn entries(
        &self,
        who: &Principal,
        from: u64,
        limit: usize,
        tenant: Option<&str>,
        with_body: bool,
    ) -> AppResult<EntriesPage> {
        if limit == 0 || limit > 1000 {
            return Err(AppError::invalid("limit must be 1..=1000"));
        }
        let scope: Option<String> = match (who.all_tenants(), tenant) {
            (true, t) => t.map(str::to_owned),
            (_, Some(t)) if t != who.tenant().as_str() => {
                return Err(AppError::forbidden(format!("this key may only read tenant {}'s entries", who.tenant())));
            }
            _ => Some(who.tenant().to_string()),
        };
        let (entries, next) =
            self.reader.entries(from.max(1), limit, 100_000, &|e| scope.as_deref().is_none_or(|t| e.tenant == t))?;
        Ok(EntriesPage { entries: entries.iter().map(|e| EntryView::new(e, with_body)).collect(), next })
    }

    /// An inclusion proof for `who`. Ops and auditor keys get any entry in any tree size. An
    /// agent key gets its own tenant's entries only, in the tree of the newest signed
    /// checkpoint, so the proof tells it no more of other tenants than that checkpoint does.
    pub fn inclusion_for(&self, who: &Principal, seq: u64, size: Option<u64>) -> AppResult<InclusionView> {
        if who.role() != Role::Agent {
            return self.inclusion(seq, size);
        }
        let cp = self.reader.checkpoint().map_or(0, |c| c.size);
        if size.is_some_and(|s| s != cp) {
            return Err(AppError::forbidden(format!(
                "an agent key gets proofs against the newest signed checkpoint (size {cp}) only"
            )));
        }
        let (found, _) = self.reader.entries(seq.max(1), 1, 1, &|_| true)?;
        match found.first() {
            Some(e) if e.seq == seq && e.tenant == who.tenant().as_str() => {}
            _ => return Err(AppError::not_found(format!("no entry {seq} of tenant {}", who.tenant()))),
        }
        if seq > cp {
            return Err(AppError::not_found(format!(
                "entry {seq} is not yet covered by a signed checkpoint (the newest covers {cp}); \
                 one is signed at least every ledger.checkpoint_every_secs"
            )));
        }
        self.inclusion(seq, Some(cp))
    }

    pub fn inclusion(&self, seq: u64, size: Option<u64>) -> AppResult<InclusionView> {
        let head = self.reader.head().size;
        let size = size.unwrap_or(head);
        if seq == 0 {
            return Err(AppError::invalid("seq starts at 1"));
        }
        if seq > size || size > head {
            return Err(AppError::not_found(format!(
                "need 1 <= seq <= size <= {head} (the ledger size); got seq={seq}, size={size}"
            )));
        }
        let proof = self.reader.inclusion_proof(seq, size)?.ok_or_else(|| AppError::internal("no proof"))?;
        let entry_hash = self.reader.entry_hash(seq)?.ok_or_else(|| AppError::internal("no entry hash"))?;
        let root = self.reader.root(size)?.ok_or_else(|| AppError::internal("no root"))?;
        Ok(InclusionView {
            seq,
            size,
            leaf_index: seq - 1,
            entry_hash: hex::encode(entry_hash),
            leaf_hash: hex::encode(merkle::leaf_hash(&entry_hash)),
            root: hex::encode(root),
            proof: hexes(&proof),
        })
    }

    pub fn consistency(&self, from: u64, to: Option<u64>) -> AppResult<ConsistencyView> {
        let head = self.reader.head().size;
        let to = to.unwrap_or(head);
        if from > to || to > head {
            return Err(AppError::not_found(format!(
                "need from <= to <= {head} (the ledger size); got from={from}, to={to}"
            )));
        }
        let proof = self.reader.consistency_proof(from, to)?.ok_or_else(|| AppError::internal("no proof"))?;
        let root = |n| -> AppResult<String> {
            Ok(hex::encode(self.reader.root(n)?.ok_or_else(|| AppError::internal("no root"))?))
        };
        Ok(ConsistencyView { from, to, root_from: root(from)?, root_to: root(to)?, proof: hexes(&proof) })
    }
}

/// The newest checkpoint; `fresh` signs one covering the current size first.
pub async fn checkpoint(d: &Daena, fresh: bool) -> AppResult<CheckpointView> {
    let cp = match (fresh, d.ledger().reader.checkpoint()) {
        (false, Some(cp)) => cp,
        _ => d.commit().checkpoint().await?,
    };
    Ok(CheckpointView::from(&cp))
}

/// What `daena ledger export` writes: enough to pin the ledger's state elsewhere.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Manifest {
    pub format: String,
    pub entries: u64,
    pub merkle_root: String,
    pub first_hash: Option<String>,
    pub last_hash: Option<String>,
    pub checkpoint: Option<CheckpointView>,
    pub created_at: String,
    pub ledger_dir: String,
}

pub fn manifest(d: &Daena) -> AppResult<Manifest> {
    let head = d.ledger().head()?;
    Ok(Manifest {
        format: "daena-ledger-manifest-v1".to_owned(),
        entries: head.size,
        merkle_root: head.root,
        first_hash: d.ledger().reader.entry_hash(1)?.map(hex::encode),
        last_hash: (head.size > 0).then_some(head.head_hash),
        checkpoint: head.checkpoint,
        created_at: rfc3339(d.clock().now()),
        ledger_dir: d.ledger().reader.location(),
    })
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LegacyImport {
    pub seq: u64,
    pub legacy_entries: usize,
    pub legacy_merkle_root: Option<String>,
    pub first_txid: Option<String>,
    pub last_txid: Option<String>,
    pub source_sha256: String,
}

/// Verifies a legacy Python ledger and records it as this ledger's genesis entry.
pub async fn import_legacy(d: &Daena, who: &Principal, text: &str) -> AppResult<LegacyImport> {
    let report = legacy::verify(text);
    if !report.ok() {
        let first = &report.problems[0];
        return Err(AppError::invalid(format!(
            "the legacy ledger does not verify: line {}: {} ({} problems in all)",
            first.line,
            first.reason,
            report.problems.len()
        )));
    }
    if report.entries == 0 {
        return Err(AppError::invalid("the legacy ledger has no entries"));
    }
    if d.ledger().reader.head().size > 0 {
        return Err(AppError::invalid(
            "a legacy ledger can only become the genesis of an empty ledger; import it into a fresh data directory",
        ));
    }
    // The commit thread re-checks emptiness atomically (Op::Genesis).
    let source_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let entry =
        NewEntry::new(who.tenant().as_str(), who.actor(), "ledger.import_legacy", "legacy").attrs(serde_json::json!({
            "legacy_entries": report.entries,
            "legacy_merkle_root": report.merkle_root,
            "first_txid": report.first_txid,
            "last_txid": report.last_txid,
            "source_sha256": source_sha256,
        }));
    let receipts = d.commit().submit(crate::commit::Op::Genesis(vec![entry])).await?;
    Ok(LegacyImport {
        seq: receipts.first().map_or(0, |r| r.seq),
        legacy_entries: report.entries,
        legacy_merkle_root: report.merkle_root,
        first_txid: report.first_txid,
        last_txid: report.last_txid,
        source_sha256,
    })
}
