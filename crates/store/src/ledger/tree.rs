//! The ledger's Merkle tree with only its upper levels in memory.
//!
//! Complete chunks of 256 leaves are represented by their root; levels above that are kept
//! in full (about 0.25 bytes per entry). Hashes inside a chunk are recomputed on demand from
//! `hashes.bin`, the file of entry hashes in sequence order, so a proof reads at most a few
//! 8 KiB chunks.

use crate::StoreError;
use daena_core::merkle::{self, Hash, SubtreeHashes};
use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

pub const CHUNK_BITS: u32 = 8;
pub const CHUNK: u64 = 1 << CHUNK_BITS;

#[derive(Debug)]
pub struct ChunkTree {
    /// `upper[j][i]`: root of the complete subtree of 2^(8+j) leaves starting at i·2^(8+j).
    upper: Vec<Vec<Hash>>,
    /// Leaf hashes of the last, incomplete chunk.
    tail: Vec<Hash>,
    size: u64,
    hashes_path: PathBuf,
}

impl ChunkTree {
    pub fn new(hashes_path: PathBuf) -> ChunkTree {
        ChunkTree { upper: vec![Vec::new()], tail: Vec::new(), size: 0, hashes_path }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends the leaf of an entry hash.
    pub fn push_entry(&mut self, entry_hash: &Hash) {
        self.tail.push(merkle::leaf_hash(entry_hash));
        self.size += 1;
        if self.tail.len() as u64 == CHUNK {
            let root = merkle::root_of_leaves(&self.tail);
            self.tail.clear();
            self.upper[0].push(root);
            let mut j = 0;
            while self.upper[j].len().is_multiple_of(2) {
                let n = self.upper[j].len();
                let parent = merkle::node_hash(&self.upper[j][n - 2], &self.upper[j][n - 1]);
                if self.upper.len() == j + 1 {
                    self.upper.push(Vec::new());
                }
                self.upper[j + 1].push(parent);
                j += 1;
            }
        }
    }

    /// A view for computing roots and proofs over the first `size()` leaves; it reads
    /// chunks from `hashes.bin` as needed. Call [`View::finish`] to learn of read errors.
    pub fn view(&self) -> View<'_> {
        View { tree: self, file: RefCell::new(None), chunks: RefCell::new(HashMap::new()), error: RefCell::new(None) }
    }
}

pub struct View<'a> {
    tree: &'a ChunkTree,
    file: RefCell<Option<File>>,
    chunks: RefCell<HashMap<u64, Vec<Hash>>>,
    error: RefCell<Option<StoreError>>,
}

impl View<'_> {
    /// Returns `value` unless a chunk read failed while computing it.
    pub fn finish<T>(self, value: T) -> Result<T, StoreError> {
        match self.error.into_inner() {
            Some(e) => Err(e),
            None => Ok(value),
        }
    }

    fn chunk_leaves(&self, chunk: u64) -> Option<Vec<Hash>> {
        if let Some(c) = self.chunks.borrow().get(&chunk) {
            return Some(c.clone());
        }
        let mut file = self.file.borrow_mut();
        if file.is_none() {
            match File::open(&self.tree.hashes_path) {
                Ok(f) => *file = Some(f),
                Err(e) => {
                    *self.error.borrow_mut() = Some(StoreError::io("open hashes.bin", e));
                    return None;
                }
            }
        }
        let f = file.as_ref()?;
        let mut buf = vec![0u8; (CHUNK * 32) as usize];
        if let Err(e) = f.read_exact_at(&mut buf, chunk * CHUNK * 32) {
            *self.error.borrow_mut() = Some(StoreError::io(format!("read chunk {chunk} of hashes.bin"), e));
            return None;
        }
        let leaves: Vec<Hash> = buf
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                merkle::leaf_hash(&h)
            })
            .collect();
        self.chunks.borrow_mut().insert(chunk, leaves.clone());
        Some(leaves)
    }
}

impl SubtreeHashes for View<'_> {
    fn size(&self) -> u64 {
        self.tree.size
    }

    fn aligned(&self, start: u64, len: u64) -> Hash {
        if len >= CHUNK {
            let level = (len.trailing_zeros() - CHUNK_BITS) as usize;
            return self.tree.upper[level][(start >> len.trailing_zeros()) as usize];
        }
        let chunk = start >> CHUNK_BITS;
        let offset = (start - (chunk << CHUNK_BITS)) as usize;
        let complete = self.tree.upper[0].len() as u64;
        let leaves = if chunk == complete {
            self.tree.tail.clone()
        } else {
            match self.chunk_leaves(chunk) {
                Some(l) => l,
                None => return [0u8; 32],
            }
        };
        merkle::root_of_leaves(&leaves[offset..offset + len as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daena_core::merkle::MemoryTree;
    use sha2_free::entry;

    mod sha2_free {
        /// Deterministic distinct 32-byte values without pulling a hash crate into the test.
        pub fn entry(i: u64) -> [u8; 32] {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&i.to_le_bytes());
            h[8..16].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes());
            h
        }
    }

    #[test]
    fn matches_the_memory_tree() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("hashes.bin");
        let n = 1300u64;
        let mut bytes = Vec::new();
        let mut tree = ChunkTree::new(path.clone());
        let mut mem = MemoryTree::new();
        for i in 0..n {
            let e = entry(i);
            bytes.extend_from_slice(&e);
            tree.push_entry(&e);
            mem.push_entry(&e);
        }
        std::fs::write(&path, &bytes).expect("write hashes");
        let view = tree.view();
        for size in [1, 2, 255, 256, 257, 511, 512, 513, 1024, 1299, 1300] {
            assert_eq!(view.root(size), mem.root(size), "root {size}");
            for i in [0, size / 2, size - 1] {
                assert_eq!(view.inclusion_proof(i, size), mem.inclusion_proof(i, size), "inclusion {i} of {size}");
            }
            for old in [1, size / 3, size - 1] {
                assert_eq!(
                    view.consistency_proof(old, size),
                    mem.consistency_proof(old, size),
                    "consistency {old}->{size}"
                );
            }
        }
        view.finish(()).expect("no read errors");
    }
}
