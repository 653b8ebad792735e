//! A Merkle tree in the style of RFC 6962 / RFC 9162 over 32-byte entry hashes.
//!
//! Leaves and interior nodes are domain-separated (`0x00` and `0x01` prefixes), so no leaf
//! can pose as a node. The tree hash of n leaves splits at the largest power of two below n.
//! Inclusion and consistency proofs follow RFC 6962 §2.1; their verification follows
//! RFC 9162 §2.1.3.2 and §2.1.4.2.
//!
//! Proof generation works against any [`SubtreeHashes`]: the in-memory [`MemoryTree`] here,
//! or the storage layer's tree that keeps only upper levels in memory.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// SHA-256 of the empty string: the root of an empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The leaf hash of an entry hash: SHA-256(0x00 ‖ entry_hash).
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

/// An interior node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (n ≥ 2).
pub fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The tree hash of a slice of leaf hashes (not entry hashes).
pub fn root_of_leaves(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root_of_leaves(&leaves[..k]), &root_of_leaves(&leaves[k..]))
        }
    }
}

/// Access to subtree hashes of a tree of `size()` leaves.
pub trait SubtreeHashes {
    fn size(&self) -> u64;

    /// The hash of the complete subtree of `len` leaves starting at `start`, where `len` is a
    /// power of two and `start` a multiple of `len`, and `start + len ≤ size()`.
    fn aligned(&self, start: u64, len: u64) -> Hash;

    /// The tree hash of leaves `[start, end)` as RFC 6962 defines it for that range.
    fn range(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        match n {
            0 => empty_root(),
            _ if n.is_power_of_two() && start.is_multiple_of(n) => self.aligned(start, n),
            _ => {
                let k = split_point(n);
                node_hash(&self.range(start, start + k), &self.range(start + k, end))
            }
        }
    }

    /// The root of the first `size` leaves.
    fn root(&self, size: u64) -> Hash {
        self.range(0, size)
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves.
    fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Some(proof)
    }

    #[doc(hidden)]
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.range(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.range(start, start + k));
        }
    }

    /// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves.
    fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old > new || new > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Some(proof)
    }

    #[doc(hidden)]
    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.range(start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.range(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.range(start, start + k));
        }
    }
}

/// Every level of the tree in memory: fine for tests and verification of modest logs.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[j][i]` is the hash of the complete subtree of 2^j leaves starting at i·2^j.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        MemoryTree { levels: vec![Vec::new()] }
    }

    /// Appends the leaf for `entry_hash`.
    pub fn push_entry(&mut self, entry_hash: &Hash) {
        self.push_leaf(leaf_hash(entry_hash));
    }

    pub fn push_leaf(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut j = 0;
        while self.levels[j].len().is_multiple_of(2) {
            let n = self.levels[j].len();
            let parent = node_hash(&self.levels[j][n - 2], &self.levels[j][n - 1]);
            if self.levels.len() == j + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[j + 1].push(parent);
            j += 1;
        }
    }
}

impl SubtreeHashes for MemoryTree {
    fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    fn aligned(&self, start: u64, len: u64) -> Hash {
        let level = len.trailing_zeros() as usize;
        self.levels[level][(start >> level) as usize]
    }
}

/// The right edge of a growing tree (complete subtree roots, largest first): computes the root
/// of everything pushed so far in O(log n) memory, for streaming verification.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push_entry(&mut self, entry_hash: &Hash) {
        self.push_leaf(leaf_hash(entry_hash));
    }

    pub fn push_leaf(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, top)) = self.stack.last() {
            if h != node.0 {
                break;
            }
            self.stack.pop();
            node = (h + 1, node_hash(&top, &node.1));
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// The root of every leaf pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.stack.iter().rev();
        let Some(&(_, mut acc)) = iter.next() else { return empty_root() };
        for (_, left) in iter {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Verifies that `leaf` is leaf `index` of the tree of `size` leaves with root `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &r == root
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix of the tree of
/// `new` leaves with root `new_root`.
pub fn verify_consistency(old: u64, new: u64, proof: &[Hash], old_root: &Hash, new_root: &Hash) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let mut proof = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else { return false };
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && &fr == old_root && &sr == new_root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hx(h: &Hash) -> String {
        hex::encode(h)
    }

    /// RFC 6962 leaves as used by the certificate-transparency test suites; the leaf *data*
    /// is hashed with the 0x00 prefix directly (no entry-hash indirection here).
    fn ct_tree() -> MemoryTree {
        let data = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
        let mut t = MemoryTree::new();
        for d in data {
            let bytes = hex::decode(d).expect("hex");
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(&bytes);
            t.push_leaf(h.finalize().into());
        }
        t
    }

    #[test]
    fn rfc6962_vectors() {
        let t = ct_tree();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (i, r) in roots.iter().enumerate() {
            assert_eq!(hx(&t.root(i as u64 + 1)), *r, "root of {}", i + 1);
        }
        assert_eq!(hx(&t.root(0)), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let path: Vec<String> = t.inclusion_proof(5, 8).expect("proof").iter().map(hx).collect();
        assert_eq!(
            path,
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
        );
        let cons: Vec<String> = t.consistency_proof(3, 7).expect("proof").iter().map(hx).collect();
        assert_eq!(
            cons,
            [
                "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e"
            ]
        );
        assert_eq!(
            t.consistency_proof(4, 8).expect("proof").iter().map(hx).collect::<Vec<_>>(),
            ["6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]
        );
    }

    fn tree(n: u64) -> MemoryTree {
        let mut t = MemoryTree::new();
        for i in 0..n {
            t.push_entry(&Sha256::digest(i.to_be_bytes()).into());
        }
        t
    }

    #[test]
    fn frontier_matches_tree_and_slices() {
        let t = tree(300);
        let mut f = Frontier::default();
        let mut leaves = Vec::new();
        for i in 0..300u64 {
            assert_eq!(f.root(), t.root(i));
            let leaf = leaf_hash(&Sha256::digest(i.to_be_bytes()).into());
            f.push_leaf(leaf);
            leaves.push(leaf);
        }
        assert_eq!(f.root(), t.root(300));
        assert_eq!(root_of_leaves(&leaves), t.root(300));
    }

    /// Every inclusion and consistency proof of every size up to 130 verifies.
    #[test]
    fn all_proofs_verify_for_small_trees() {
        let t = tree(130);
        for size in 1..=130u64 {
            let root = t.root(size);
            for i in 0..size {
                let proof = t.inclusion_proof(i, size).expect("proof");
                let leaf = t.range(i, i + 1);
                assert!(verify_inclusion(&leaf, i, size, &proof, &root), "inclusion {i} of {size}");
            }
            for old in 0..=size {
                let proof = t.consistency_proof(old, size).expect("proof");
                assert!(verify_consistency(old, size, &proof, &t.root(old), &root), "consistency {old}->{size}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Proofs verify for sizes up to a few thousand and fail for a wrong leaf, index,
        /// root or a tampered proof element. (A size paired with another size's root is not
        /// something a proof can refuse; signed checkpoints bind size and root together.)
        #[test]
        fn proofs_verify_and_wrong_ones_fail(size in 1u64..4000, a in any::<u64>(), b in any::<u64>(), flip in any::<u8>()) {
            let t = tree(size);
            let root = t.root(size);
            let i = a % size;
            let proof = t.inclusion_proof(i, size).expect("proof");
            let leaf = t.range(i, i + 1);
            prop_assert!(verify_inclusion(&leaf, i, size, &proof, &root));
            let other = t.range((i + 1) % size, (i + 1) % size + 1);
            if size > 1 {
                prop_assert!(!verify_inclusion(&other, i, size, &proof, &root));
                prop_assert!(!verify_inclusion(&leaf, (i + 1) % size, size, &proof, &root));
            }
            prop_assert!(!verify_inclusion(&leaf, i, size, &proof, &t.root(size - 1)));
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let k = usize::from(flip) % bad.len();
                bad[k][0] ^= 1;
                prop_assert!(!verify_inclusion(&leaf, i, size, &bad, &root));
            }
            let old = b % (size + 1);
            let cproof = t.consistency_proof(old, size).expect("proof");
            prop_assert!(verify_consistency(old, size, &cproof, &t.root(old), &root));
            if old > 0 && old < size {
                let wrong_old = Sha256::digest(b"not the old root").into();
                prop_assert!(!verify_consistency(old, size, &cproof, &wrong_old, &root));
                prop_assert!(!verify_consistency(old, size, &cproof, &t.root(old), &t.root(old)));
                if !cproof.is_empty() {
                    let mut bad = cproof.clone();
                    let k = usize::from(flip) % bad.len();
                    bad[k][31] ^= 0x80;
                    prop_assert!(!verify_consistency(old, size, &bad, &t.root(old), &root));
                }
            }
        }
    }
}
