//! Request bodies already seen, by digest, with what they key to: a body sent again is
//! looked up without parsing its JSON or deriving its keys again.
//!
//! The cache key is a pure function of the tenant and the request body, so a remembered
//! key never goes stale: whether it is still in the cache is asked of the cache each time.
//! The digest is SHA-256 over the tenant (length-prefixed) and the body bytes, so two
//! bodies share a memo slot only if SHA-256 collides. Only bodies that passed validation
//! are remembered. Bounded: each shard is emptied when it reaches its share of
//! [`MEMO_CAPACITY`]; a forgotten body takes the full path, which remembers it again.

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Bodies remembered at most (about 100 bytes each, plus the model name).
pub const MEMO_CAPACITY: usize = 64 * 1024;
const SHARDS: usize = 16;

/// What a validated request body keys to, and what serving a hit needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memo {
    pub exact: [u8; 32],
    pub model: Arc<str>,
    pub stream: bool,
    pub include_usage: bool,
}

#[derive(Debug)]
pub struct BodyMemo {
    shards: Vec<Mutex<HashMap<[u8; 32], Memo>>>,
    per_shard: usize,
}

impl Default for BodyMemo {
    fn default() -> Self {
        BodyMemo::with_capacity(MEMO_CAPACITY)
    }
}

impl BodyMemo {
    pub fn with_capacity(capacity: usize) -> BodyMemo {
        BodyMemo {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The memo digest of `body` sent by `tenant`.
    pub fn digest(tenant: &str, body: &[u8]) -> [u8; 32] {
        Sha256::new()
            .chain_update((tenant.len() as u64).to_le_bytes())
            .chain_update(tenant.as_bytes())
            .chain_update(body)
            .finalize()
            .into()
    }

    fn shard(&self, digest: &[u8; 32]) -> &Mutex<HashMap<[u8; 32], Memo>> {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Memo> {
        self.shard(digest).lock().get(digest).cloned()
    }

    pub fn insert(&self, digest: [u8; 32], memo: Memo) {
        let mut shard = self.shard(&digest).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.clear();
        }
        shard.insert(digest, memo);
    }

    /// Bodies remembered now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo(n: u8) -> Memo {
        Memo { exact: [n; 32], model: Arc::from("m"), stream: n.is_multiple_of(2), include_usage: false }
    }

    #[test]
    fn the_tenant_is_part_of_the_digest() {
        let body = br#"{"model":"m","messages":[]}"#;
        assert_eq!(BodyMemo::digest("acme", body), BodyMemo::digest("acme", body));
        assert_ne!(BodyMemo::digest("acme", body), BodyMemo::digest("globex", body));
        // The length prefix keeps the boundary between tenant and body.
        assert_ne!(BodyMemo::digest("ab", b"c"), BodyMemo::digest("a", b"bc"));
    }

    #[test]
    fn remembers_and_stays_within_its_capacity() {
        let m = BodyMemo::with_capacity(64);
        let d = BodyMemo::digest("acme", b"one");
        assert_eq!(m.get(&d), None);
        m.insert(d, memo(1));
        assert_eq!(m.get(&d), Some(memo(1)));
        for i in 0..10_000u32 {
            m.insert(BodyMemo::digest("acme", &i.to_le_bytes()), memo(2));
            assert!(m.len() <= 64, "{} bodies remembered", m.len());
        }
        // Refreshing a body already remembered never empties its shard.
        let m = BodyMemo::with_capacity(SHARDS);
        m.insert(d, memo(1));
        m.insert(d, memo(3));
        assert_eq!((m.len(), m.get(&d)), (1, Some(memo(3))));
    }
}
