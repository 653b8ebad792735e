//! Memory records: one row per address, holding the system fields and either the encrypted
//! body or a pointer into the cold tier (stored by [`crate::state::StateStore`], with each
//! record's access statistics and the applied point).
//!
//! Keys are `tenant 0x00 class 0x00 key`: neither tenants nor classes may contain 0x00, and
//! keys have no control characters, so the order groups a tenant's records by class and a
//! prefix scan lists them. Rows are postcard-encoded [`RecordRow`]s, format 1.

use crate::StoreError;
use serde::{Deserialize, Serialize};

pub const ROW_FORMAT: u8 = 1;

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Tier {
    L2,
    /// Quarantine: an untrusted write of a class that requires trust.
    L2Q,
    L3,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L2 => "L2",
            Tier::L2Q => "L2Q",
            Tier::L3 => "L3",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustRow {
    /// The agent (or key) that wrote this version; its own confirmation does not count.
    pub writer: String,
    /// Distinct agents that confirmed this version.
    pub confirmations: Vec<String>,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowBody {
    /// The envelope (compressed, encrypted) in the row.
    Inline(Vec<u8>),
    /// The envelope in a cold segment.
    Cold { segment: u32, offset: u64, len: u32 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordRow {
    pub format: u8,
    pub tier: Tier,
    /// Ledger sequence number of the last change.
    pub seq: u64,
    pub version: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub content_sha256: [u8; 32],
    /// Bytes of the plaintext (payload and meta JSON) before compression.
    pub raw_len: u32,
    /// zstd level the body was compressed with.
    pub level: i8,
    pub trust: Option<TrustRow>,
    pub body: RowBody,
}

impl RecordRow {
    /// Bytes the body takes in its tier.
    pub fn stored_len(&self) -> u64 {
        match &self.body {
            RowBody::Inline(b) => b.len() as u64,
            RowBody::Cold { len, .. } => u64::from(*len),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        postcard::to_allocvec(self).map_err(|e| StoreError::Db(format!("encode record row: {e}")))
    }

    pub fn decode(bytes: &[u8]) -> Result<RecordRow, StoreError> {
        let row: RecordRow = postcard::from_bytes(bytes)
            .map_err(|e| StoreError::Corrupt { what: "record row".into(), detail: e.to_string() })?;
        if row.format != ROW_FORMAT {
            return Err(StoreError::Corrupt { what: "record row".into(), detail: format!("format {}", row.format) });
        }
        Ok(row)
    }
}

/// The table key of an address.
pub fn address_key(tenant: &str, class: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + class.len() + key.len() + 2);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(class.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// The start of every table key of `tenant`.
pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 1);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k
}

/// Splits a table key back into (tenant, class, key).
pub fn split_key(k: &[u8]) -> Option<(&str, &str, &str)> {
    let mut parts = k.splitn(3, |b| *b == 0);
    let tenant = std::str::from_utf8(parts.next()?).ok()?;
    let class = std::str::from_utf8(parts.next()?).ok()?;
    let key = std::str::from_utf8(parts.next()?).ok()?;
    Some((tenant, class, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_rows_round_trip() {
        let k = address_key("acme", "chat", "a/b:c");
        assert_eq!(split_key(&k), Some(("acme", "chat", "a/b:c")));
        let row = RecordRow {
            format: ROW_FORMAT,
            tier: Tier::L2Q,
            seq: 9,
            version: 2,
            created_at: 1,
            updated_at: 2,
            content_sha256: [7; 32],
            raw_len: 100,
            level: 3,
            trust: Some(TrustRow { writer: "legal_synth".into(), confirmations: vec!["hr_synth".into()], score: 0.5 }),
            body: RowBody::Inline(vec![1, 2, 3]),
        };
        let bytes = row.encode().expect("encode");
        assert_eq!(RecordRow::decode(&bytes).expect("decode"), row);
        assert!(RecordRow::decode(&[9, 9]).is_err());
    }
}
