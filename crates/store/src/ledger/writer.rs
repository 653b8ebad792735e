//! The single ledger writer: seals a batch, writes it with one `write` and one `fdatasync`
//! (group commit), and only then publishes it to readers.

use super::{CHECKPOINTS_FILE, Head, PUBLIC_KEY_FILE, Receipt, Shared, io, segment_name, sync_dir};
use crate::StoreError;
use daena_core::ledger::Checkpoint;
use daena_core::ledger::entry::{self, NewEntry};
use daena_core::merkle::{Hash, SubtreeHashes};
use daena_core::time::Micros;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

/// A batch sealed after the head, not written yet.
#[derive(Debug)]
pub struct Sealed {
    pub first_seq: u64,
    /// The entries' lines, each with its newline.
    pub lines: String,
    pub receipts: Vec<Receipt>,
}

#[derive(Debug)]
pub struct LedgerWriter {
    shared: Arc<Shared>,
    seg: File,
    seg_len: u64,
    hashes: File,
    segment_bytes: u64,
    next_seq: u64,
    prev: Hash,
    last_ts: Micros,
    /// Set when `hashes.bin` could not be appended: proofs are off until the next open
    /// rebuilds it. The entries themselves are durable.
    hashes_broken: bool,
}

impl LedgerWriter {
    pub(super) fn new(shared: Arc<Shared>, seg: File, seg_len: u64, hashes: File, segment_bytes: u64) -> LedgerWriter {
        let head = shared.state.read().head;
        LedgerWriter {
            shared,
            seg,
            seg_len,
            hashes,
            segment_bytes,
            next_seq: head.size + 1,
            prev: head.hash,
            last_ts: head.ts,
            hashes_broken: false,
        }
    }

    pub fn size(&self) -> u64 {
        self.next_seq - 1
    }

    /// The hash of the newest entry (`None` when the ledger is empty).
    pub fn head_line_hash(&self) -> Option<Hash> {
        (self.size() > 0).then_some(self.prev)
    }

    /// Appends `entries` as one durable batch. On error nothing of the batch is published
    /// and the segment is cut back to where it was.
    pub fn append(&mut self, entries: &[NewEntry], now: Micros) -> Result<Vec<Receipt>, StoreError> {
        let sealed = self.seal(entries, now);
        self.write_sealed(&sealed)?;
        Ok(sealed.receipts)
    }

    /// Seals `entries` after the current head (sequence numbers, `prev` chaining, hashes)
    /// without writing them: [`LedgerWriter::write_sealed`] does, once they are accepted.
    /// The time a batch sealed now with `now` gets: never before the head's.
    pub fn batch_ts(&self, now: Micros) -> Micros {
        if now > self.last_ts { now } else { self.last_ts }
    }

    pub fn seal(&self, entries: &[NewEntry], now: Micros) -> Sealed {
        let ts = self.batch_ts(now);
        let mut lines = String::new();
        let mut receipts = Vec::with_capacity(entries.len());
        let mut prev = self.prev;
        for (i, e) in entries.iter().enumerate() {
            let seq = self.next_seq + i as u64;
            let (line, hash) = entry::seal(e, seq, ts, &prev);
            lines.push_str(&line);
            receipts.push(Receipt { seq, hash, ts });
            prev = hash;
        }
        Sealed { first_seq: self.next_seq, lines, receipts }
    }

    /// Writes a batch [`LedgerWriter::seal`] made (nothing else may have been written since)
    /// with one `fdatasync`, and publishes it to readers.
    pub fn write_sealed(&mut self, sealed: &Sealed) -> Result<(), StoreError> {
        self.write_batch(sealed, true)
    }

    /// [`LedgerWriter::write_sealed`] without `fdatasync`: for a copy of a ledger kept
    /// durably elsewhere, which is copied again after a crash.
    pub fn write_sealed_unsynced(&mut self, sealed: &Sealed) -> Result<(), StoreError> {
        self.write_batch(sealed, false)
    }

    fn write_batch(&mut self, sealed: &Sealed, sync: bool) -> Result<(), StoreError> {
        if sealed.receipts.is_empty() {
            return Ok(());
        }
        if sealed.first_seq != self.next_seq {
            return Err(StoreError::Corrupt {
                what: "ledger batch".into(),
                detail: format!("sealed at {}, the ledger is at {}", sealed.first_seq, self.next_seq),
            });
        }
        self.write_lines(&sealed.lines, &sealed.receipts, sync)
    }

    /// Appends lines sealed elsewhere (another replica's entries, read from the shared
    /// ledger) after checking each continues this chain: sequence, `prev`, hash and body.
    /// Not synced: the shared ledger keeps them durably. Returns the entries, parsed once
    /// (parsing checks the line), for the state to apply.
    pub fn mirror(&mut self, lines: &[String]) -> Result<Vec<entry::Entry>, StoreError> {
        let mut buf = String::new();
        let mut receipts = Vec::with_capacity(lines.len());
        let mut entries = Vec::with_capacity(lines.len());
        let mut prev = self.prev;
        for (i, line) in lines.iter().enumerate() {
            let seq = self.next_seq + i as u64;
            let text = line.strip_suffix('\n').unwrap_or(line);
            let e = entry::parse_line(text).map_err(|e| StoreError::Corrupt {
                what: format!("shared ledger entry {seq}"),
                detail: e.to_string(),
            })?;
            if e.seq != seq || e.prev != prev {
                return Err(StoreError::Corrupt {
                    what: format!("shared ledger entry {seq}"),
                    detail: format!("it does not continue this chain (it states sequence {})", e.seq),
                });
            }
            buf.push_str(text);
            buf.push('\n');
            receipts.push(Receipt { seq, hash: e.hash, ts: e.ts });
            prev = e.hash;
            entries.push(e);
        }
        self.write_lines(&buf, &receipts, false)?;
        Ok(entries)
    }

    /// Makes what [`LedgerWriter::mirror`] wrote durable: every segment's data, and the
    /// directory that names them.
    pub fn sync_all(&mut self) -> Result<(), StoreError> {
        let segments: Vec<std::path::PathBuf> =
            self.shared.state.read().segments.iter().map(|(_, p)| p.clone()).collect();
        for path in segments {
            File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(|e| StoreError::io(format!("sync {}", path.display()), e))?;
        }
        sync_dir(&self.shared.dir)
    }

    fn write_lines(&mut self, buf: &str, receipts: &[Receipt], sync: bool) -> Result<(), StoreError> {
        let Some(last) = receipts.last() else { return Ok(()) };
        if self.seg_len > 0 && self.seg_len + buf.len() as u64 > self.segment_bytes {
            self.roll(self.next_seq)?;
        }
        let written =
            self.seg.write_all(buf.as_bytes()).and_then(|()| if sync { self.seg.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Cut back a partial write so the next batch continues a clean file.
            let _ = self.seg.set_len(self.seg_len);
            return Err(StoreError::io("append to the ledger", e));
        }
        self.seg_len += buf.len() as u64;
        self.next_seq += receipts.len() as u64;
        self.prev = last.hash;
        self.last_ts = self.last_ts.max(last.ts);

        let mut hash_bytes = Vec::with_capacity(receipts.len() * 32);
        receipts.iter().for_each(|r| hash_bytes.extend_from_slice(&r.hash));
        if !self.hashes_broken
            && let Err(e) = self.hashes.write_all(&hash_bytes)
        {
            tracing::error!(error = %e, "cannot append hashes.bin; proofs are unavailable until restart");
            self.hashes_broken = true;
        }
        let mut state = self.shared.state.write();
        for r in receipts {
            state.tree.push_entry(&r.hash);
        }
        state.head = Head { size: self.size(), hash: self.prev, ts: self.last_ts };
        Ok(())
    }

    fn roll(&mut self, first_seq: u64) -> Result<(), StoreError> {
        let path = self.shared.dir.join(segment_name(first_seq));
        let seg = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("create {}", path.display())))?;
        sync_dir(&self.shared.dir)?;
        self.seg = seg;
        self.seg_len = 0;
        self.shared.state.write().segments.push((first_seq, path));
        tracing::info!(first_seq, "ledger segment rolled over");
        Ok(())
    }

    /// Signs and stores a checkpoint of the current size, unless the newest already covers it.
    pub fn checkpoint(&mut self, key: &ed25519_dalek::SigningKey, now: Micros) -> Result<Checkpoint, StoreError> {
        // A checkpoint never covers entries that are not on disk (a copy's are written unsynced).
        self.seg.sync_data().map_err(|e| StoreError::io("sync the ledger before a checkpoint", e))?;
        let size = self.size();
        if let Some(cp) = self.shared.state.read().checkpoint.clone()
            && cp.size == size
        {
            return Ok(cp);
        }
        let cp = Checkpoint::sign(key, size, &self.root_at(size)?, now);
        self.store_checkpoint(&cp)?;
        Ok(cp)
    }

    /// Takes in a checkpoint signed elsewhere of this same chain (another replica's), checked
    /// against `key`, its signature and this copy's first `cp.size` entries; it becomes the
    /// newest when it is newer and covers no more than this copy holds. Whether it did; an
    /// error when it does not match this copy.
    pub fn adopt_checkpoint(&mut self, cp: &Checkpoint, key: &ed25519_dalek::VerifyingKey) -> Result<bool, StoreError> {
        if cp.size <= self.checkpointed() || cp.size > self.size() {
            return Ok(false);
        }
        let corrupt =
            |detail: String| StoreError::Corrupt { what: format!("the checkpoint of size {}", cp.size), detail };
        cp.verify(Some(&hex::encode(key.to_bytes()))).map_err(|e| corrupt(e.to_string()))?;
        let root = cp.root_hash().map_err(|e| corrupt(e.to_string()))?;
        if self.root_at(cp.size)? != root {
            return Err(corrupt(format!("its root is not this copy's root of the first {} entries", cp.size)));
        }
        self.seg.sync_data().map_err(|e| StoreError::io("sync the ledger before a checkpoint", e))?;
        self.store_checkpoint(cp)?;
        Ok(true)
    }

    /// The Merkle root of the first `size` entries.
    fn root_at(&self, size: u64) -> Result<[u8; 32], StoreError> {
        if self.hashes_broken {
            return Err(StoreError::Corrupt {
                what: "hashes.bin".into(),
                detail: "not appendable; restart to rebuild it before checkpointing".into(),
            });
        }
        let state = self.shared.state.read();
        let view = state.tree.view();
        let root = view.root(size);
        view.finish(root)
    }

    /// Appends `cp` to the checkpoints file, durably, and makes it the newest.
    fn store_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), StoreError> {
        let mut line = serde_json::to_string(cp).map_err(|e| StoreError::Db(e.to_string()))?;
        line.push('\n');
        let path = self.shared.dir.join(CHECKPOINTS_FILE);
        let mut f =
            OpenOptions::new().append(true).create(true).open(&path).map_err(io(format!("open {}", path.display())))?;
        f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).map_err(io(format!("append {}", path.display())))?;
        self.shared.state.write().checkpoint = Some(cp.clone());
        Ok(())
    }

    /// The size the newest checkpoint covers (0: none).
    pub fn checkpointed(&self) -> u64 {
        self.shared.state.read().checkpoint.as_ref().map_or(0, |c| c.size)
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
