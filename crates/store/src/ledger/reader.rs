//! Reading the ledger: the durable head, entries by sequence number, roots and proofs.
//! Readers never see past the head the writer published after its `fdatasync`.

use super::{Head, Shared, io, list_segments};
use crate::StoreError;
use daena_core::ledger::Checkpoint;
use daena_core::merkle::{Hash, SubtreeHashes};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LedgerReader {
    shared: Arc<Shared>,
}

impl LedgerReader {
    pub(super) fn new(shared: Arc<Shared>) -> LedgerReader {
        LedgerReader { shared }
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn head(&self) -> Head {
        self.shared.state.read().head
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.shared.state.read().checkpoint.clone()
    }

    /// The Merkle root of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Option<Hash>, StoreError> {
        let state = self.shared.state.read();
        if size > state.tree.size() {
            return Ok(None);
        }
        let view = state.tree.view();
        let root = view.root(size);
        view.finish(Some(root))
    }

    /// The hash of entry `seq`.
    pub fn entry_hash(&self, seq: u64) -> Result<Option<Hash>, StoreError> {
        if seq == 0 || seq > self.head().size {
            return Ok(None);
        }
        let path = self.shared.dir.join(super::HASHES_FILE);
        let f = File::open(&path).map_err(io("open hashes.bin"))?;
        let mut h = [0u8; 32];
        f.read_exact_at(&mut h, (seq - 1) * 32).map_err(io("read hashes.bin"))?;
        Ok(Some(h))
    }

    /// The audit path of entry `seq` (1-based) in the tree of the first `size` entries.
    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Option<Vec<Hash>>, StoreError> {
        if seq == 0 {
            return Ok(None);
        }
        let state = self.shared.state.read();
        let view = state.tree.view();
        let proof = view.inclusion_proof(seq - 1, size);
        view.finish(proof)
    }

    /// The proof that the first `old` entries are a prefix of the first `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Option<Vec<Hash>>, StoreError> {
        let state = self.shared.state.read();
        let view = state.tree.view();
        let proof = view.consistency_proof(old, new);
        view.finish(proof)
    }

    /// Calls `f` with each durable line from `from` (1-based) on, until it breaks.
    pub fn scan(&self, from: u64, mut f: impl FnMut(u64, &str) -> ControlFlow<()>) -> Result<(), StoreError> {
        let (size, segments) = {
            let s = self.shared.state.read();
            (s.head.size, s.segments.clone())
        };
        let from = from.max(1);
        if from > size {
            return Ok(());
        }
        let start = segments.partition_point(|(first, _)| *first <= from).saturating_sub(1);
        let mut line = String::new();
        for (first, path) in &segments[start..] {
            let file = File::open(path).map_err(io(format!("open {}", path.display())))?;
            let mut r = BufReader::with_capacity(256 * 1024, file);
            let mut seq = *first;
            loop {
                if seq > size {
                    return Ok(());
                }
                line.clear();
                let n = r.read_line(&mut line).map_err(io(format!("read {}", path.display())))?;
                if n == 0 {
                    break;
                }
                if seq >= from && f(seq, line.trim_end_matches('\n')).is_break() {
                    return Ok(());
                }
                seq += 1;
            }
        }
        Ok(())
    }
}

/// How a stream over ledger files ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamEnd {
    pub lines: u64,
    /// Bytes after the last newline: a write in flight, or a crash's torn line.
    pub torn_bytes: u64,
}

/// Streams every complete line of a ledger directory (its segments in order) or of a single
/// JSONL file, without taking any lock: safe while a server appends.
pub fn stream_dir(path: &Path, mut f: impl FnMut(&str)) -> Result<StreamEnd, StoreError> {
    let files: Vec<std::path::PathBuf> =
        if path.is_dir() { list_segments(path)?.into_iter().map(|(_, p)| p).collect() } else { vec![path.to_owned()] };
    let mut end = StreamEnd::default();
    let mut line = Vec::new();
    for (i, p) in files.iter().enumerate() {
        let file = File::open(p).map_err(io(format!("open {}", p.display())))?;
        let mut r = BufReader::with_capacity(1 << 20, file);
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line).map_err(io(format!("read {}", p.display())))?;
            if n == 0 {
                break;
            }
            // A last line without its newline is torn (or in flight) only in the last file;
            // elsewhere it is a complete file without a final newline, and the line counts.
            if line.last() != Some(&b'\n') && i + 1 == files.len() {
                end.torn_bytes = line.len() as u64;
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches('\n');
            if text.is_empty() {
                continue;
            }
            f(text);
            end.lines += 1;
        }
    }
    Ok(end)
}
