//! The ledger on disk: append-only JSONL segments, a derived file of entry hashes, signed
//! checkpoints, and the group-commit writer.
//!
//! ```text
//! ledger/
//!   seg-00000000000000000001.jsonl   entries 1.. (named by their first sequence number)
//!   seg-00000000000000120533.jsonl   the next segment, once the first passed segment_bytes
//!   hashes.bin                       32-byte entry hashes in sequence order (derived, rebuilt)
//!   checkpoints.jsonl                signed checkpoints, newest last
//!   signing_key.pub                  the checkpoint key's public half (hex)
//! ```
//!
//! One [`LedgerWriter`] appends; any number of [`LedgerReader`]s read what is durable. An
//! append returns only after its batch is written and `fdatasync`ed, so everything a caller
//! was told is durable survives a crash. At open, a torn last line (a crash mid-write) is
//! cut off and reported; anything else that does not verify stops the open.

mod prefix;
mod reader;
mod tree;
mod verify;
mod writer;

pub use prefix::{copy_prefix, last_at_or_before};
pub use reader::{LedgerReader, StreamEnd, stream_dir};
pub use tree::ChunkTree;
pub use verify::verify_path;
pub use writer::{LedgerWriter, Sealed};

use crate::StoreError;
use crate::state::{DocScope, StateRows};
use daena_core::ledger::Checkpoint;
use daena_core::ledger::entry::{self, Entry, GENESIS_PREV, NewEntry};
use daena_core::ledger::verify::Summary;
use daena_core::merkle::{Hash, SubtreeHashes};
use daena_core::time::Micros;
use parking_lot::RwLock;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ledger's writing side. The commit thread holds the only one; an append returns only
/// once its batch is durable.
pub trait LedgerAppend: Send {
    /// Entries in the ledger.
    fn size(&self) -> u64;
    /// Seals `entries` (sequence numbers, `prev` chaining, hashes) and makes them durable as
    /// one batch; on error nothing of the batch is visible.
    fn append(&mut self, entries: &[NewEntry], now: Micros) -> Result<Vec<Receipt>, StoreError>;
    /// Signs and stores a checkpoint of the current size.
    fn checkpoint(&mut self, key: &ed25519_dalek::SigningKey, now: Micros) -> Result<Checkpoint, StoreError>;
    /// Publishes the checkpoint key's public half beside the ledger.
    fn publish_public_key(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError>;
    /// Takes in checkpoints other writers of a shared chain signed, newer than this copy's
    /// newest and covered by it (checked against `key` and this copy); nothing alone.
    fn adopt_checkpoints(&mut self, _key: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether other processes append to the same chain (replicas on PostgreSQL). The commit
    /// thread then calls [`LedgerAppend::begin`] before each batch and
    /// [`LedgerAppend::catch_up`] before answering a read barrier.
    fn shared(&self) -> bool {
        false
    }
    /// Takes the chain for one batch, until [`LedgerAppend::append`] or
    /// [`LedgerAppend::release`], and returns the entries others appended since, already
    /// added to this writer's copy of the chain (the state has yet to apply them).
    fn begin(&mut self) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }
    /// Gives the chain back without appending.
    fn release(&mut self) {}
    /// Like [`LedgerAppend::begin`] without taking the chain.
    fn catch_up(&mut self) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }

    /// The chain position the state kept with a shared chain reflects, read while the chain
    /// is taken ([`LedgerAppend::begin`]); equal to [`LedgerAppend::size`] unless the kept
    /// state must be rebuilt. A chain that keeps no state answers its size.
    fn kept_state(&mut self) -> Result<u64, StoreError> {
        Ok(self.size())
    }
    /// Writes `rows` into the state kept with a shared chain, moving its position from
    /// `from` to `to`, in the transaction of the batch being appended (after
    /// [`LedgerAppend::begin`]): they land with [`LedgerAppend::append`] or not at all. A kept
    /// state not at `from` is refused (`Corrupt`) and nothing is written.
    fn stage_state(&mut self, _rows: &StateRows, _from: u64, _to: u64) -> Result<(), StoreError> {
        Err(StoreError::Db("this ledger keeps no state with its entries".into()))
    }
    /// The time [`LedgerAppend::append`] gives a batch appended now with `now` (never before
    /// the head's), so rows derived from it can be written with the batch.
    fn batch_ts(&self, now: Micros) -> Micros {
        now
    }
    /// Empties the state kept with a shared chain (position 0; of the documents, those in
    /// `docs`), to be rebuilt by
    /// [`LedgerAppend::stage_state`] calls and [`LedgerAppend::commit_state`], all in the
    /// transaction [`LedgerAppend::begin`] opened.
    fn clear_state(&mut self, _docs: &[DocScope]) -> Result<(), StoreError> {
        Err(StoreError::Db("this ledger keeps no state with its entries".into()))
    }
    /// Commits what was staged without appending, and gives the chain back.
    fn commit_state(&mut self) -> Result<(), StoreError> {
        Err(StoreError::Db("this ledger keeps no state with its entries".into()))
    }
}

/// The ledger's reading side, shared by every reader: what is durable, by sequence number,
/// with the Merkle roots and proofs over it.
pub trait LedgerRead: Send + Sync + std::fmt::Debug {
    /// Where the ledger lives, for messages (a directory for the embedded backend).
    fn location(&self) -> String;
    fn head(&self) -> Head;
    /// The newest signed checkpoint.
    fn checkpoint(&self) -> Option<Checkpoint>;
    /// The Merkle root of the first `size` entries; `None` past the head.
    fn root(&self, size: u64) -> Result<Option<Hash>, StoreError>;
    /// The hash of entry `seq`; `None` past the head.
    fn entry_hash(&self, seq: u64) -> Result<Option<Hash>, StoreError>;
    fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Option<Vec<Hash>>, StoreError>;
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Option<Vec<Hash>>, StoreError>;
    /// Calls `f` with each entry's line from `from` on, in order, until it breaks.
    fn scan(&self, from: u64, f: &mut dyn FnMut(u64, &str) -> ControlFlow<()>) -> Result<(), StoreError>;
    /// Verifies every entry and checkpoint from the start (hashes, chaining, signatures, and
    /// the checkpoint key against `pinned_key` when given).
    fn verify_all(&self, pinned_key: Option<&str>) -> Result<Summary, StoreError>;

    /// Up to `limit` entries from `from` on that pass `keep`, scanning at most `max_scan`
    /// lines; with the sequence number to continue from when it stopped early.
    fn entries(
        &self,
        from: u64,
        limit: usize,
        max_scan: u64,
        keep: &dyn Fn(&Entry) -> bool,
    ) -> Result<(Vec<Entry>, Option<u64>), StoreError> {
        let mut out = Vec::new();
        let mut scanned = 0u64;
        let mut next = None;
        let mut error = None;
        self.scan(from, &mut |seq, line| {
            if out.len() >= limit || scanned >= max_scan {
                next = Some(seq);
                return ControlFlow::Break(());
            }
            scanned += 1;
            match entry::parse_line(line) {
                Ok(e) if keep(&e) => out.push(e),
                Ok(_) => {}
                Err(e) => {
                    error = Some(StoreError::Corrupt { what: format!("ledger entry {seq}"), detail: e.to_string() });
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        match error {
            Some(e) => Err(e),
            None => Ok((out, next)),
        }
    }
}

impl LedgerAppend for LedgerWriter {
    fn size(&self) -> u64 {
        LedgerWriter::size(self)
    }
    fn append(&mut self, entries: &[NewEntry], now: Micros) -> Result<Vec<Receipt>, StoreError> {
        LedgerWriter::append(self, entries, now)
    }
    fn batch_ts(&self, now: Micros) -> Micros {
        LedgerWriter::batch_ts(self, now)
    }
    fn checkpoint(&mut self, key: &ed25519_dalek::SigningKey, now: Micros) -> Result<Checkpoint, StoreError> {
        LedgerWriter::checkpoint(self, key, now)
    }
    fn publish_public_key(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError> {
        LedgerWriter::publish_public_key(self, key)
    }
}

impl LedgerRead for LedgerReader {
    fn location(&self) -> String {
        self.dir().display().to_string()
    }
    fn head(&self) -> Head {
        LedgerReader::head(self)
    }
    fn checkpoint(&self) -> Option<Checkpoint> {
        LedgerReader::checkpoint(self)
    }
    fn root(&self, size: u64) -> Result<Option<Hash>, StoreError> {
        LedgerReader::root(self, size)
    }
    fn entry_hash(&self, seq: u64) -> Result<Option<Hash>, StoreError> {
        LedgerReader::entry_hash(self, seq)
    }
    fn inclusion_proof(&self, seq: u64, size: u64) -> Result<Option<Vec<Hash>>, StoreError> {
        LedgerReader::inclusion_proof(self, seq, size)
    }
    fn consistency_proof(&self, old: u64, new: u64) -> Result<Option<Vec<Hash>>, StoreError> {
        LedgerReader::consistency_proof(self, old, new)
    }
    fn scan(&self, from: u64, f: &mut dyn FnMut(u64, &str) -> ControlFlow<()>) -> Result<(), StoreError> {
        LedgerReader::scan(self, from, f)
    }
    fn verify_all(&self, pinned_key: Option<&str>) -> Result<Summary, StoreError> {
        let checkpoints = read_checkpoints(self.dir())?;
        verify_path(self.dir(), checkpoints, pinned_key, |_| {}).map(|(summary, _)| summary)
    }
}

pub const HASHES_FILE: &str = "hashes.bin";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const PUBLIC_KEY_FILE: &str = "signing_key.pub";

/// Where an appended entry landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: Hash,
    pub ts: Micros,
}

/// What opening the ledger found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub entries: u64,
    /// Bytes of a torn last line that were cut off.
    pub repaired_bytes: u64,
    /// Entry hashes recomputed into `hashes.bin`.
    pub rebuilt_hashes: u64,
    /// Entries of the last segment whose hashes and chain were verified at open.
    pub verified_tail: u64,
    /// The newest checkpoint, verified against the tree.
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub hash: Hash,
    pub ts: Micros,
}

/// State shared between the writer and readers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) state: RwLock<SharedState>,
}

#[derive(Debug)]
pub(crate) struct SharedState {
    pub(crate) head: Head,
    pub(crate) tree: ChunkTree,
    /// (first sequence number, path), ascending.
    pub(crate) segments: Vec<(u64, PathBuf)>,
    pub(crate) checkpoint: Option<Checkpoint>,
}

pub fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.jsonl")
}

/// Segment files of `dir`, ascending by first sequence number.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut segs = Vec::new();
    for entry in crate::datadir::list_dir(dir)? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first) =
            name.strip_prefix("seg-").and_then(|r| r.strip_suffix(".jsonl")).and_then(|n| n.parse().ok())
        {
            segs.push((first, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt { what: what.into(), detail: detail.into() }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |e| StoreError::io(context, e)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(format!("fsync {}", dir.display())))
}

/// The hash field of a sealed line, without verifying it.
pub(crate) fn stated_hash(line: &[u8]) -> Option<Hash> {
    let tail = line.strip_suffix(b"\"}")?;
    let hex_part = tail.get(tail.len().checked_sub(64)?..)?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut h).ok()?;
    Some(h)
}

/// Opens the ledger in `dir` (creating it if empty), repairing a torn tail and re-deriving
/// `hashes.bin` as needed, and checks the newest checkpoint against the tree.
pub fn open(dir: &Path, segment_bytes: u64) -> Result<(LedgerWriter, LedgerReader, OpenReport), StoreError> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let mut report = OpenReport::default();
    let mut segments = list_segments(dir)?;
    if segments.is_empty() {
        let path = dir.join(segment_name(1));
        File::create(&path).map_err(io(format!("create {}", path.display())))?;
        sync_dir(dir)?;
        segments.push((1, path));
    }
    let (last_first, last_path) = segments.last().cloned().ok_or_else(|| corrupt("ledger", "no segments"))?;

    // The last segment: cut a torn line, verify every line and the chain inside it.
    let mut data = std::fs::read(&last_path).map_err(io(format!("read {}", last_path.display())))?;
    let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    if keep < data.len() {
        report.repaired_bytes = (data.len() - keep) as u64;
        let f = OpenOptions::new().write(true).open(&last_path).map_err(io(format!("open {}", last_path.display())))?;
        f.set_len(keep as u64).and_then(|_| f.sync_all()).map_err(io(format!("truncate {}", last_path.display())))?;
        data.truncate(keep);
    }
    let mut next = last_first;
    let mut first_prev: Option<Hash> = None;
    let mut prev: Option<Hash> = None;
    let mut ts = Micros(0);
    let mut scratch = Vec::new();
    for raw in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let what = format!("ledger entry {next} in {}", last_path.display());
        let line = std::str::from_utf8(raw).map_err(|_| corrupt(&what, "not UTF-8"))?;
        let facts = entry::check_line(line, &mut scratch)
            .map_err(|e| corrupt(&what, format!("{e}; run `daena ledger verify` for the full picture")))?;
        if facts.seq != next {
            return Err(corrupt(&what, format!("found sequence number {}", facts.seq)));
        }
        match prev {
            Some(p) if p != facts.prev => return Err(corrupt(&what, "chain broken: prev does not match")),
            None => first_prev = Some(facts.prev),
            _ => {}
        }
        prev = Some(facts.hash);
        ts = facts.ts;
        next += 1;
        report.verified_tail += 1;
    }
    let size = next - 1;
    report.entries = size;

    // hashes.bin follows the segments; rebuild what is missing or wrong.
    let hashes_path = dir.join(HASHES_FILE);
    let mut hashes = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&hashes_path)
        .map_err(io(format!("open {}", hashes_path.display())))?;
    let len = hashes.metadata().map_err(io("stat hashes.bin"))?.len();
    let mut have = len / 32;
    let last_hash = |hashes: &File, n: u64| -> Option<Hash> {
        use std::os::unix::fs::FileExt;
        let mut h = [0u8; 32];
        (n > 0 && hashes.read_exact_at(&mut h, (n - 1) * 32).is_ok()).then_some(h)
    };
    let consistent_with_tail = |hashes: &File, have: u64| -> bool {
        let tail_ok = have < size || prev.is_none_or(|p| last_hash(hashes, size) == Some(p));
        let link_ok = last_first <= 1 || have < last_first - 1 || {
            let expected = first_prev.or(prev);
            expected.is_none_or(|p| last_hash(hashes, last_first - 1) == Some(p))
        };
        tail_ok && link_ok
    };
    if len % 32 != 0 || have > size || !consistent_with_tail(&hashes, have) {
        have = have.min(size);
        if !consistent_with_tail(&hashes, have) {
            tracing::warn!("hashes.bin disagrees with the ledger; rebuilding it from the segments");
            have = 0;
        }
        hashes.set_len(have * 32).map_err(io("truncate hashes.bin"))?;
    }
    if have < size {
        let mut missing = Vec::with_capacity(((size - have) * 32) as usize);
        for (i, (first, path)) in segments.iter().enumerate() {
            let end = segments.get(i + 1).map_or(size + 1, |(f, _)| *f);
            if end <= have + 1 {
                continue;
            }
            let bytes = if *path == last_path {
                data.clone()
            } else {
                std::fs::read(path).map_err(io(format!("read {}", path.display())))?
            };
            for (k, raw) in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                let seq = first + k as u64;
                if seq <= have {
                    continue;
                }
                let h = stated_hash(raw).ok_or_else(|| corrupt(format!("ledger entry {seq}"), "no hash field"))?;
                missing.extend_from_slice(&h);
            }
        }
        if missing.len() as u64 != (size - have) * 32 {
            return Err(corrupt("ledger segments", "segment files do not hold every sequence number"));
        }
        hashes.write_all(&missing).map_err(io("append hashes.bin"))?;
        report.rebuilt_hashes = size - have;
    }
    if !consistent_with_tail(&hashes, size) {
        return Err(corrupt("ledger", "the last segment does not chain onto the previous one"));
    }

    // The Merkle tree from hashes.bin.
    let mut tree = ChunkTree::new(hashes_path.clone());
    let mut reader = File::open(&hashes_path).map_err(io("open hashes.bin"))?;
    let mut buf = vec![0u8; 32 * 32 * 1024];
    let mut remaining = size * 32;
    while remaining > 0 {
        let want = remaining.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..want]).map_err(io("read hashes.bin"))?;
        for c in buf[..want].chunks_exact(32) {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            tree.push_entry(&h);
        }
        remaining -= want as u64;
    }
    let head_hash = match prev {
        Some(p) => p,
        None if size > 0 => last_hash(&hashes, size).ok_or_else(|| corrupt("hashes.bin", "cannot read the head"))?,
        None => GENESIS_PREV,
    };

    // The newest checkpoint must match the tree.
    let checkpoint = read_checkpoints(dir)?.pop();
    if let Some(cp) = &checkpoint {
        cp.verify(None).map_err(|e| corrupt("the newest ledger checkpoint", e.to_string()))?;
        if cp.size > size {
            return Err(corrupt(
                "ledger",
                format!(
                    "a signed checkpoint covers {} entries but only {size} are present: the ledger was truncated; \
                     restore it from a snapshot (`daena snapshot restore`)",
                    cp.size
                ),
            ));
        }
        let view = tree.view();
        let root = view.root(cp.size);
        let root = view.finish(root)?;
        if hex::encode(root) != cp.root {
            return Err(corrupt(
                "ledger",
                format!("entries 1..={} no longer match their signed checkpoint: the ledger was rewritten", cp.size),
            ));
        }
    }
    report.checkpoint = checkpoint.clone();

    let seg_len = data.len() as u64;
    let seg = OpenOptions::new().append(true).open(&last_path).map_err(io(format!("open {}", last_path.display())))?;
    let shared = Arc::new(Shared {
        dir: dir.to_owned(),
        state: RwLock::new(SharedState { head: Head { size, hash: head_hash, ts }, tree, segments, checkpoint }),
    });
    let writer = LedgerWriter::new(shared.clone(), seg, seg_len, hashes, segment_bytes);
    Ok((writer, LedgerReader::new(shared), report))
}

/// Every checkpoint in `dir/checkpoints.jsonl`, oldest first; a torn last line is ignored.
pub fn read_checkpoints(dir: &Path) -> Result<Vec<Checkpoint>, StoreError> {
    let path = dir.join(CHECKPOINTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
    };
    let complete = text.rfind('\n').map_or("", |p| &text[..p]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| corrupt(format!("{} line {}", path.display(), i + 1), e.to_string()))
        })
        .collect()
}
