//! The near-duplicate index: SimHashes per scope, searched by Hamming distance without a scan.

use super::content::hamming;

/// Multi-index hashing over four 16-bit blocks: a pair within distance d has at least one
/// block within distance floor(d/4), so probing each block's table with every value within
/// that radius finds every candidate without scanning. Buckets hold the full hashes, so a
/// candidate is checked without another lookup, and a candidate is counted only from the
/// first block that can reach it (no de-duplication set).
#[derive(Debug, Default)]
pub struct NearIndex {
    /// (scope, block value) → (slot, hash), per block.
    tables: [BlockTable; 4],
    slots: Vec<Option<(u64, u64)>>,
    free: Vec<u32>,
    live: usize,
}

/// (scope, block value) → (slot, hash) of the entries with that block.
type BlockTable = std::collections::HashMap<(u64, u16), Vec<(u32, u64)>, BuildMix>;

/// A fast hasher for the index's (scope, block) keys: the scope is already a SHA-256 prefix,
/// so mixing it with the block value is enough.
#[derive(Debug, Default, Clone, Copy)]
pub struct BuildMix;

#[derive(Debug, Default)]
pub struct Mix(u64);

impl std::hash::BuildHasher for BuildMix {
    type Hasher = Mix;
    fn build_hasher(&self) -> Mix {
        Mix(0)
    }
}

impl std::hash::Hasher for Mix {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

fn block(h: u64, i: usize) -> u16 {
    (h >> (16 * i)) as u16
}

/// Every 16-bit value within distance `r` of `v`.
fn ball(v: u16, r: u32) -> Vec<u16> {
    match r {
        0 => vec![v],
        1 => std::iter::once(v).chain((0..16).map(|i| v ^ (1 << i))).collect(),
        2 => {
            let mut out: Vec<u16> = std::iter::once(v).chain((0..16).map(|i| v ^ (1 << i))).collect();
            for i in 0..16 {
                for j in i + 1..16 {
                    out.push(v ^ (1 << i) ^ (1 << j));
                }
            }
            out
        }
        // Wider radii only arise for thresholds below 0.81; enumerate them exhaustively.
        _ => (0..=u16::MAX).filter(|x| (x ^ v).count_ones() <= r).collect(),
    }
}

impl NearIndex {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Adds a SimHash in `scope`; returns its slot (for removal).
    pub fn insert(&mut self, scope: u64, hash: u64) -> u32 {
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some((scope, hash));
                s
            }
            None => {
                self.slots.push(Some((scope, hash)));
                (self.slots.len() - 1) as u32
            }
        };
        for (i, t) in self.tables.iter_mut().enumerate() {
            t.entry((scope, block(hash, i))).or_default().push((slot, hash));
        }
        self.live += 1;
        slot
    }

    pub fn remove(&mut self, slot: u32) {
        let Some(Some((scope, hash))) = self.slots.get(slot as usize).copied() else { return };
        for (i, t) in self.tables.iter_mut().enumerate() {
            if let Some(v) = t.get_mut(&(scope, block(hash, i))) {
                v.retain(|(s, _)| *s != slot);
                if v.is_empty() {
                    t.remove(&(scope, block(hash, i)));
                }
            }
        }
        self.slots[slot as usize] = None;
        self.free.push(slot);
        self.live -= 1;
    }

    /// Slots in `scope` within distance `max` of `hash`, nearest first, as (slot, distance).
    pub fn search(&self, scope: u64, hash: u64, max: u32) -> Vec<(u32, u32)> {
        let r = max / 4;
        let mut out = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            for v in ball(block(hash, i), r) {
                let Some(bucket) = t.get(&(scope, v)) else { continue };
                for (slot, h) in bucket {
                    let d = hamming(*h, hash);
                    // Counted from the first block whose probe reaches it.
                    if d <= max && (0..i).all(|j| (block(*h, j) ^ block(hash, j)).count_ones() > r) {
                        out.push((*slot, d));
                    }
                }
            }
        }
        out.sort_by_key(|(s, d)| (*d, *s));
        out
    }

    /// The same search by scanning every slot: the baseline for benchmarks and tests.
    pub fn scan(&self, scope: u64, hash: u64, max: u32) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(s, e)| match e {
                Some((sc, h)) if *sc == scope && hamming(*h, hash) <= max => Some((s as u32, hamming(*h, hash))),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(s, d)| (*d, *s));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The multi-index finds exactly what a linear scan finds.
        #[test]
        fn index_equals_scan(hashes in proptest::collection::vec(any::<u64>(), 1..400), flips in proptest::collection::vec(0u32..64, 0..12), max in 0u32..12) {
            let mut idx = NearIndex::default();
            for (i, h) in hashes.iter().enumerate() {
                idx.insert((i % 3) as u64, *h);
            }
            let mut q = hashes[0];
            for f in &flips {
                q ^= 1 << f;
            }
            for scope in 0..3 {
                prop_assert_eq!(idx.search(scope, q, max), idx.scan(scope, q, max));
            }
            idx.remove(0);
            prop_assert_eq!(idx.search(0, q, max), idx.scan(0, q, max));
        }
    }
}
