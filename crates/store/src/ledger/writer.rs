//! The single ledger writer: seals a batch, writes it with one `write` and one `fdatasync`
//! (group commit), and only then publishes it to readers. [`LedgerWriter::append`] does the
//! three steps at once; [`LedgerWriter::write`], [`Written::syncer`] and
//! [`LedgerWriter::publish`] split them so the next batch is written while one syncs.

use super::{CHECKPOINTS_FILE, Head, PUBLIC_KEY_FILE, Receipt, Shared, io, segment_name, sync_dir};
use crate::StoreError;
use daena_core::ledger::Checkpoint;
use daena_core::ledger::entry::{self, NewEntry};
use daena_core::merkle::{Hash, SubtreeHashes};
use daena_core::time::Micros;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

#[derive(Debug)]
pub struct LedgerWriter {
    shared: Arc<Shared>,
    seg: Arc<File>,
    /// Bytes written to the current segment, synced or not.
    seg_len: u64,
    /// Bytes of the current segment that are synced and published.
    durable_len: u64,
    hashes: File,
    segment_bytes: u64,
    /// The next sequence number to write, and the chain and clock where writing stands.
    next_seq: u64,
    prev: Hash,
    last_ts: Micros,
    /// Set when `hashes.bin` could not be appended: proofs are off until the next open
    /// rebuilds it. The entries themselves are durable.
    hashes_broken: bool,
}

/// A batch written to the segment but not yet synced nor visible to readers. Sync it with
/// [`Written::syncer`] (on any thread), then hand it to [`LedgerWriter::publish`]; if the
/// sync fails, call [`LedgerWriter::discard_unsynced`] instead.
#[derive(Debug)]
pub struct Written {
    pub receipts: Vec<Receipt>,
    file: Arc<File>,
    end: u64,
}

impl Written {
    /// What makes this batch durable: `fdatasync` of the segment it was written to.
    pub fn syncer(&self) -> Syncer {
        Syncer(self.file.clone())
    }
}

/// Syncs one segment file; cheap to clone and send to another thread.
#[derive(Debug, Clone)]
pub struct Syncer(Arc<File>);

impl Syncer {
    pub fn sync(&self) -> Result<(), StoreError> {
        self.0.sync_data().map_err(|e| StoreError::io("fdatasync the ledger", e))
    }
}

impl LedgerWriter {
    pub(super) fn new(shared: Arc<Shared>, seg: File, seg_len: u64, hashes: File, segment_bytes: u64) -> LedgerWriter {
        let head = shared.state.read().head;
        LedgerWriter {
            shared,
            seg: Arc::new(seg),
            seg_len,
            durable_len: seg_len,
            hashes,
            segment_bytes,
            next_seq: head.size + 1,
            prev: head.hash,
            last_ts: head.ts,
            hashes_broken: false,
        }
    }

    /// Entries written, including a batch written but not yet published.
    pub fn size(&self) -> u64 {
        self.next_seq - 1
    }

    /// Whether a written batch awaits its sync and publication.
    pub fn has_unsynced(&self) -> bool {
        self.seg_len != self.durable_len
    }

    /// Appends `entries` as one durable batch: write, `fdatasync`, publish. On error nothing
    /// of the batch is published and the segment is cut back to where it was.
    pub fn append(&mut self, entries: &[NewEntry], now: Micros) -> Result<Vec<Receipt>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let written = self.write(entries, now)?;
        if let Err(e) = written.syncer().sync() {
            self.discard_unsynced();
            return Err(e);
        }
        Ok(self.publish(written))
    }

    /// Writes `entries` without syncing them, so the caller can sync on another thread and
    /// work meanwhile. One batch at a time: the previous one must be published or discarded
    /// first, so a failed sync never leaves a later batch behind it.
    pub fn write(&mut self, entries: &[NewEntry], now: Micros) -> Result<Written, StoreError> {
        if entries.is_empty() {
            return Err(StoreError::Db("an empty batch cannot be written".into()));
        }
        if self.has_unsynced() {
            return Err(StoreError::Db("a ledger batch was written while the previous one awaits its sync".into()));
        }
        let ts = if now > self.last_ts { now } else { self.last_ts };
        let mut buf = String::new();
        let mut receipts = Vec::with_capacity(entries.len());
        let mut prev = self.prev;
        for (i, e) in entries.iter().enumerate() {
            let seq = self.next_seq + i as u64;
            let (line, hash) = entry::seal(e, seq, ts, &prev);
            buf.push_str(&line);
            receipts.push(Receipt { seq, hash, ts });
            prev = hash;
        }
        if self.seg_len > 0 && self.seg_len + buf.len() as u64 > self.segment_bytes {
            self.roll(self.next_seq)?;
        }
        if let Err(e) = (&*self.seg).write_all(buf.as_bytes()) {
            // Cut back a partial write so the next batch continues a clean file.
            let _ = self.seg.set_len(self.seg_len);
            return Err(StoreError::io("append to the ledger", e));
        }
        self.seg_len += buf.len() as u64;
        self.next_seq += entries.len() as u64;
        self.prev = prev;
        self.last_ts = ts;
        Ok(Written { receipts, file: self.seg.clone(), end: self.seg_len })
    }

    /// A synced batch becomes visible to readers: hashes, tree and head. Batches must be
    /// published in the order they were written.
    pub fn publish(&mut self, written: Written) -> Vec<Receipt> {
        let receipts = written.receipts;
        let mut hash_bytes = Vec::with_capacity(receipts.len() * 32);
        receipts.iter().for_each(|r| hash_bytes.extend_from_slice(&r.hash));
        if !self.hashes_broken
            && let Err(e) = self.hashes.write_all(&hash_bytes)
        {
            tracing::error!(error = %e, "cannot append hashes.bin; proofs are unavailable until restart");
            self.hashes_broken = true;
        }
        self.durable_len = written.end;
        let mut state = self.shared.state.write();
        for r in &receipts {
            state.tree.push_entry(&r.hash);
        }
        if let Some(last) = receipts.last() {
            state.head = Head { size: last.seq, hash: last.hash, ts: last.ts };
        }
        receipts
    }

    /// A sync failed: cut the segment back to what is published and forget the batch
    /// written since, so writing continues from the durable head.
    pub fn discard_unsynced(&mut self) {
        if let Err(e) = self.seg.set_len(self.durable_len) {
            tracing::error!(error = %e, "cannot cut unsynced batches off the ledger segment");
        }
        let head = self.shared.state.read().head;
        self.seg_len = self.durable_len;
        self.next_seq = head.size + 1;
        self.prev = head.hash;
        self.last_ts = head.ts;
    }

    fn roll(&mut self, first_seq: u64) -> Result<(), StoreError> {
        let path = self.shared.dir.join(segment_name(first_seq));
        let seg = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("create {}", path.display())))?;
        sync_dir(&self.shared.dir)?;
        self.seg = Arc::new(seg);
        self.seg_len = 0;
        self.durable_len = 0;
        self.shared.state.write().segments.push((first_seq, path));
        tracing::info!(first_seq, "ledger segment rolled over");
        Ok(())
    }

    /// Signs and stores a checkpoint of the current size, unless the newest already covers it.
    pub fn checkpoint(&mut self, key: &ed25519_dalek::SigningKey, now: Micros) -> Result<Checkpoint, StoreError> {
        if self.has_unsynced() {
            return Err(StoreError::Db("a checkpoint was asked for while a written batch awaits its sync".into()));
        }
        let size = self.size();
        if let Some(cp) = self.shared.state.read().checkpoint.clone()
            && cp.size == size
        {
            return Ok(cp);
        }
        if self.hashes_broken {
            return Err(StoreError::Corrupt {
                what: "hashes.bin".into(),
                detail: "not appendable; restart to rebuild it before checkpointing".into(),
            });
        }
        let root = {
            let state = self.shared.state.read();
            let view = state.tree.view();
            let root = view.root(size);
            view.finish(root)?
        };
        let cp = Checkpoint::sign(key, size, &root, now);
        let mut line = serde_json::to_string(&cp).map_err(|e| StoreError::Db(e.to_string()))?;
        line.push('\n');
        let path = self.shared.dir.join(CHECKPOINTS_FILE);
        let mut f =
            OpenOptions::new().append(true).create(true).open(&path).map_err(io(format!("open {}", path.display())))?;
        f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).map_err(io(format!("append {}", path.display())))?;
        self.shared.state.write().checkpoint = Some(cp.clone());
        Ok(cp)
    }

    /// Writes the checkpoint key's public half next to the ledger for verifiers.
    pub fn publish_public_key(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), StoreError> {
        let path = self.shared.dir.join(PUBLIC_KEY_FILE);
        let text = format!("{}\n", hex::encode(key.to_bytes()));
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        crate::datadir::write_atomic(&path, text.as_bytes(), false)
    }
}
