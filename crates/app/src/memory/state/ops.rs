//! The memory operations use cases prepare (payload already sealed) for the commit thread.

use crate::memory::Addr;
use daena_core::ids::TenantId;
use serde_json::Value;
use std::sync::Arc;

/// What the commit thread made of a [`Put`], beyond accepting or refusing it.
#[derive(Debug, Clone)]
pub enum PutOutcome {
    /// Written: the row as stored (its `seq` is filled in from the receipt by the caller).
    Written(crate::memory::RowMeta),
    /// Refused because the record changed after the caller read it for divergence: the
    /// caller reads again and retries.
    Raced,
}

/// A memory mutation, prepared by a use case (payload already sealed) for the commit thread.
#[derive(Debug)]
pub enum MemoryOp {
    Put(Box<Put>),
    Delete {
        addr: Addr,
        actor: String,
        if_match: Option<u64>,
        action: &'static str,
    },
    /// A confirmation counts once per authenticated key (`by`), never per claimed agent.
    Confirm {
        addr: Addr,
        actor: String,
        agent: String,
        by: String,
        threshold: f32,
    },
    Promote {
        addr: Addr,
        actor: String,
    },
    /// Aging: re-compress in place (tighten) or move to L3 (archive), with the new envelope.
    Age {
        addr: Addr,
        actor: String,
        action: AgeAction,
        envelope: Vec<u8>,
        raw_len: u32,
        level: i8,
        expect_seq: u64,
    },
    /// Aging: delete by retention.
    Expire {
        addr: Addr,
        actor: String,
        expect_seq: u64,
        idle_days: f64,
    },
    /// Back from L3 to L2 after enough reads.
    Reheat {
        addr: Addr,
        expect_seq: u64,
        reads: u32,
    },
    /// A trained compression dictionary (`dict`): id ‖ sealed dictionary, the entry's body.
    Dict {
        tenant: TenantId,
        class: String,
        sealed: Vec<u8>,
        attrs: Value,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeAction {
    Tighten,
    Archive,
    /// Sealed again under the tenant's current data key (key rotation), in place.
    Reseal,
}

#[derive(Debug)]
pub struct Put {
    pub addr: Addr,
    pub actor: String,
    /// The agent the write acts as (ledgered).
    pub writer: String,
    /// The authenticated key that wrote it: it may not confirm its own write.
    pub writer_key: String,
    pub envelope: Vec<u8>,
    pub raw_len: u32,
    pub level: i8,
    pub content_sha256: [u8; 32],
    /// `<data key version>:<HMAC-SHA256 hex>` of the canonical payload, for the ledger.
    pub content_mac: String,
    pub payload_bytes: usize,
    pub if_match: Option<u64>,
    /// The version the caller's divergence was computed against (None: no record).
    pub observed: Option<u64>,
    /// When the caller saw no record: the generation of the record's stripe it read before
    /// looking ([`super::MemoryShared::generation`]). While it is unchanged the record is
    /// still absent, and `prepare` need not look again.
    pub absent_at: Option<u64>,
    pub quarantine: bool,
    pub divergence: Option<f64>,
    pub intended: bool,
    /// What became of this write, reported back to the writer.
    pub result: Arc<std::sync::OnceLock<PutOutcome>>,
}
