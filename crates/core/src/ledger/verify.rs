//! Streaming verification of a ledger: entry hashes, body hashes, sequence numbers, the hash
//! chain, and Merkle roots against signed checkpoints, in one pass and O(log n) memory.
//!
//! The verifier reports the first bad sequence number: the position where the stored entry
//! differs from what an intact ledger would hold there. A rewrite that keeps the chain
//! consistent is caught by the first checkpoint whose root no longer matches; the bad range
//! then starts after the last checkpoint that still matched.

use super::checkpoint::Checkpoint;
use super::entry::{self, GENESIS_PREV};
use crate::merkle::{Frontier, Hash};
use crate::time::Micros;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The first bad sequence number, when the problem has one.
    pub seq: Option<u64>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub entries: u64,
    pub root: String,
    pub first_hash: Option<String>,
    pub last_hash: Option<String>,
    pub first_ts: Option<Micros>,
    pub last_ts: Option<Micros>,
    /// Checkpoint sizes whose signature and root were confirmed.
    pub checkpoints_verified: Vec<u64>,
    pub failure: Option<Failure>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

#[derive(Debug)]
pub struct ChainVerifier {
    next_seq: u64,
    prev: Hash,
    frontier: Frontier,
    checkpoints: Vec<(Checkpoint, Hash)>,
    next_cp: usize,
    last_matching_cp: u64,
    verified: Vec<u64>,
    scratch: Vec<u8>,
    first: Option<(Hash, Micros)>,
    last: Option<(Hash, Micros)>,
    failure: Option<Failure>,
}

impl ChainVerifier {
    /// A verifier for a ledger starting at sequence 1, checking the given checkpoints.
    /// `pinned_key` (hex) requires every checkpoint to be signed by that key.
    pub fn new(checkpoints: Vec<Checkpoint>, pinned_key: Option<&str>) -> ChainVerifier {
        let mut failure = None;
        let mut cps = Vec::new();
        for cp in checkpoints {
            match cp.verify(pinned_key).and_then(|()| cp.root_hash()) {
                Ok(root) => cps.push((cp, root)),
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(Failure { seq: None, reason: format!("checkpoint of size {}: {e}", cp.size) });
                    }
                }
            }
        }
        cps.sort_by_key(|(cp, _)| cp.size);
        cps.dedup_by(|a, b| a.0.size == b.0.size && a.1 == b.1);
        let mut verifier = ChainVerifier {
            next_seq: 1,
            prev: GENESIS_PREV,
            frontier: Frontier::default(),
            checkpoints: cps,
            next_cp: 0,
            last_matching_cp: 0,
            verified: Vec::new(),
            scratch: Vec::new(),
            first: None,
            last: None,
            failure,
        };
        // A checkpoint of the empty ledger (a fresh installation signs one) is judged before
        // any line arrives; otherwise it would wait for a size the ledger never passes.
        verifier.match_checkpoints();
        verifier
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    fn fail(&mut self, seq: Option<u64>, reason: String) {
        if self.failure.is_none() {
            self.failure = Some(Failure { seq, reason });
        }
    }

    /// Feeds the next line (without its newline). After the first failure the rest is only
    /// counted, not judged.
    pub fn push(&mut self, line: &str) {
        if self.failure.is_some() {
            return;
        }
        let checked = entry::check_line(line, &mut self.scratch);
        self.push_checked(checked);
    }

    /// Feeds the result of [`entry::check_line`] for the next line, computed elsewhere (e.g.
    /// on another thread): the order-dependent checks (sequence, chain, Merkle) happen here.
    pub fn push_checked(&mut self, checked: Result<entry::LineFacts, entry::EntryError>) {
        if self.failure.is_some() {
            return;
        }
        let seq = self.next_seq;
        let facts = match checked {
            Ok(f) => f,
            Err(e) => return self.fail(Some(seq), e.to_string()),
        };
        if facts.seq != seq {
            return self.fail(Some(seq), format!("expected sequence number {seq}, found {}", facts.seq));
        }
        if facts.prev != self.prev {
            return self.fail(Some(seq), "prev does not match the previous entry's hash (chain broken)".into());
        }
        self.prev = facts.hash;
        self.next_seq += 1;
        self.frontier.push_leaf(facts.leaf);
        if self.first.is_none() {
            self.first = Some((facts.hash, facts.ts));
        }
        self.last = Some((facts.hash, facts.ts));
        self.match_checkpoints();
    }

    /// Checks every checkpoint whose size the tree has just reached.
    fn match_checkpoints(&mut self) {
        if self.failure.is_some() {
            return;
        }
        while let Some((cp, root)) = self.checkpoints.get(self.next_cp) {
            if cp.size != self.frontier.size() {
                break;
            }
            if self.frontier.root() == *root {
                self.last_matching_cp = cp.size;
                self.verified.push(cp.size);
                self.next_cp += 1;
            } else {
                let from = self.last_matching_cp + 1;
                let size = cp.size;
                return self.fail(
                    Some(from),
                    format!("Merkle root of entries 1..={size} differs from the signed checkpoint: rewritten within {from}..={size}"),
                );
            }
        }
    }

    pub fn finish(mut self) -> Summary {
        let entries = self.next_seq - 1;
        if self.failure.is_none()
            && let Some((cp, _)) = self.checkpoints.get(self.next_cp)
        {
            let size = cp.size;
            self.fail(
                Some(entries + 1),
                format!("a signed checkpoint covers {size} entries but the ledger has {entries}: truncated"),
            );
        }
        Summary {
            entries,
            root: hex::encode(self.frontier.root()),
            first_hash: self.first.map(|(h, _)| hex::encode(h)),
            last_hash: self.last.map(|(h, _)| hex::encode(h)),
            first_ts: self.first.map(|(_, t)| t),
            last_ts: self.last.map(|(_, t)| t),
            checkpoints_verified: self.verified,
            failure: self.failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::entry::{NewEntry, seal};
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use serde_json::json;

    fn build(n: u64) -> (Vec<String>, Vec<Hash>) {
        let mut prev = GENESIS_PREV;
        let mut lines = Vec::new();
        let mut hashes = Vec::new();
        for seq in 1..=n {
            let new = NewEntry::new(format!("t{}", seq % 3), "key:ops", "memory.put", format!("chat/k{seq}"))
                .attrs(json!({"version": seq}))
                .body(format!("body-{seq}").into_bytes());
            let (line, hash) = seal(&new, seq, Micros(seq as i64 * 1000), &prev);
            prev = hash;
            lines.push(line.trim_end_matches('\n').to_owned());
            hashes.push(hash);
        }
        (lines, hashes)
    }

    fn checkpoint_for(hashes: &[Hash]) -> Checkpoint {
        let mut f = Frontier::default();
        hashes.iter().for_each(|h| f.push_entry(h));
        Checkpoint::sign(&SigningKey::from_bytes(&[3u8; 32]), hashes.len() as u64, &f.root(), Micros(1))
    }

    fn verify(lines: &[String], cps: Vec<Checkpoint>) -> Summary {
        let mut v = ChainVerifier::new(cps, None);
        lines.iter().for_each(|l| v.push(l));
        v.finish()
    }

    #[test]
    fn intact_ledger_verifies() {
        let (lines, hashes) = build(50);
        let s = verify(&lines, vec![checkpoint_for(&hashes[..20]), checkpoint_for(&hashes)]);
        assert!(s.ok(), "{s:?}");
        assert_eq!(s.entries, 50);
        assert_eq!(s.checkpoints_verified, vec![20, 50]);
        assert_eq!(s.last_hash, Some(hex::encode(hashes[49])));
    }

    #[test]
    fn consistent_rewrite_is_caught_by_a_checkpoint() {
        let (mut lines, hashes) = build(30);
        let cp10 = checkpoint_for(&hashes[..10]);
        let cp30 = checkpoint_for(&hashes);
        // Rewrite entry 15 and re-chain everything after it, as someone with write access would.
        let mut prev = {
            let e = entry::parse_line(&lines[13]).expect("entry 14");
            e.hash
        };
        for seq in 15..=30u64 {
            let new = NewEntry::new("t", "key:ops", "memory.put", format!("forged/{seq}"));
            let (line, hash) = seal(&new, seq, Micros(1), &prev);
            prev = hash;
            lines[(seq - 1) as usize] = line.trim_end().to_owned();
        }
        let plain = verify(&lines, vec![]);
        assert!(plain.ok(), "without checkpoints a consistent rewrite passes the chain check");
        let s = verify(&lines, vec![cp10, cp30]);
        let f = s.failure.expect("caught");
        assert_eq!(f.seq, Some(11), "{}", f.reason);
    }

    #[test]
    fn empty_ledger_with_its_checkpoint_verifies() {
        // A fresh installation signs a checkpoint of size 0 at its first stop.
        let s = verify(&[], vec![checkpoint_for(&[])]);
        assert!(s.ok(), "{s:?}");
        assert_eq!((s.entries, s.checkpoints_verified), (0, vec![0]));
        // The empty checkpoint stays valid as the ledger grows.
        let (lines, hashes) = build(3);
        let s = verify(&lines, vec![checkpoint_for(&[]), checkpoint_for(&hashes)]);
        assert_eq!(s.checkpoints_verified, vec![0, 3], "{s:?}");
        // A size-0 checkpoint with another root is a forgery, not a truncation.
        let forged = Checkpoint::sign(&SigningKey::from_bytes(&[3u8; 32]), 0, &[7u8; 32], Micros(1));
        let f = verify(&[], vec![forged]).failure.expect("a wrong empty root fails");
        assert!(f.reason.contains("differs"), "{}", f.reason);
    }

    #[test]
    fn forged_checkpoint_signature_fails() {
        let (lines, hashes) = build(5);
        let mut cp = checkpoint_for(&hashes);
        cp.size = 4;
        let s = verify(&lines, vec![cp]);
        assert!(!s.ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any single-byte change is detected at the entry it touches.
        #[test]
        fn single_byte_change(n in 1u64..40, which in any::<u64>(), pos in any::<u64>(), byte in any::<u8>()) {
            let (mut lines, _) = build(n);
            let i = (which % n) as usize;
            let mut bytes = lines[i].clone().into_bytes();
            let p = (pos % bytes.len() as u64) as usize;
            prop_assume!(bytes[p] != byte);
            bytes[p] = byte;
            lines[i] = String::from_utf8_lossy(&bytes).into_owned();
            let s = verify(&lines, vec![]);
            prop_assert_eq!(s.failure.map(|f| f.seq), Some(Some(i as u64 + 1)));
        }

        /// Deleting an entry is detected at its sequence number.
        #[test]
        fn deleted_entry(n in 2u64..40, which in any::<u64>()) {
            let (mut lines, _) = build(n);
            let i = (which % (n - 1)) as usize; // deleting the last one is a truncation
            lines.remove(i);
            let s = verify(&lines, vec![]);
            prop_assert_eq!(s.failure.map(|f| f.seq), Some(Some(i as u64 + 1)));
        }

        /// Swapping two entries is detected at the earlier position.
        #[test]
        fn reordered_entries(n in 2u64..40, a in any::<u64>(), b in any::<u64>()) {
            let (mut lines, _) = build(n);
            let (i, j) = ((a % n) as usize, (b % n) as usize);
            prop_assume!(i != j);
            lines.swap(i, j);
            let s = verify(&lines, vec![]);
            prop_assert_eq!(s.failure.map(|f| f.seq), Some(Some(i.min(j) as u64 + 1)));
        }

        /// Truncating the tail is detected against a kept checkpoint, at the first missing entry.
        #[test]
        fn truncated_tail(n in 2u64..40, keep in any::<u64>()) {
            let (lines, hashes) = build(n);
            let keep = (keep % n) as usize;
            let cp = checkpoint_for(&hashes);
            let s = verify(&lines[..keep], vec![cp]);
            prop_assert_eq!(s.failure.map(|f| f.seq), Some(Some(keep as u64 + 1)));
        }
    }
}
