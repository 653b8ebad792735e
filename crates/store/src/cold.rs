//! The cold tier (L3): append-only segment files of encrypted record envelopes.
//!
//! `l3/cold-00000001.seg`, ... Each envelope is appended as-is; the record's row holds
//! (segment, offset, length). Appends are made durable by [`ColdStore::sync`] before the
//! rows pointing at them are committed durably; after a crash the ledger replays the
//! archive operations and appends again, leaving only unreferenced bytes behind.

use crate::StoreError;
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SEGMENT_LIMIT: u64 = 256 * 1024 * 1024;

/// Where cold records live: append-only segments addressed by (segment, offset, length).
pub trait ColdSegments: Send + Sync + std::fmt::Debug {
    /// Appends `bytes`; returns where they landed. Durable only after [`ColdSegments::sync`].
    fn append(&self, bytes: &[u8]) -> Result<(u32, u64, u32), StoreError>;
    /// Makes every append so far durable.
    fn sync(&self) -> Result<(), StoreError>;
    fn read(&self, segment: u32, offset: u64, len: u32) -> Result<Vec<u8>, StoreError>;
    /// Bytes held, live and dead.
    fn disk_bytes(&self) -> u64;
}

impl ColdSegments for ColdStore {
    fn append(&self, bytes: &[u8]) -> Result<(u32, u64, u32), StoreError> {
        ColdStore::append(self, bytes)
    }
    fn sync(&self) -> Result<(), StoreError> {
        ColdStore::sync(self)
    }
    fn read(&self, segment: u32, offset: u64, len: u32) -> Result<Vec<u8>, StoreError> {
        ColdStore::read(self, segment, offset, len)
    }
    fn disk_bytes(&self) -> u64 {
        ColdStore::disk_bytes(self)
    }
}

#[derive(Debug)]
pub struct ColdStore {
    dir: PathBuf,
    current: Mutex<Current>,
}

#[derive(Debug)]
struct Current {
    id: u32,
    file: File,
    len: u64,
    dirty: bool,
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("cold-{id:08}.seg"))
}

impl ColdStore {
    pub fn open(dir: &Path) -> Result<ColdStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(format!("create {}", dir.display()), e))?;
        let mut last = 1u32;
        for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("list {}", dir.display()), e))? {
            let entry = entry.map_err(|e| StoreError::io("list l3", e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("cold-"))
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse().ok())
            {
                last = last.max(id);
            }
        }
        let path = segment_path(dir, last);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| StoreError::io("stat l3 segment", e))?.len();
        Ok(ColdStore { dir: dir.to_owned(), current: Mutex::new(Current { id: last, file, len, dirty: false }) })
    }

    /// Appends an envelope; returns (segment, offset, length).
    pub fn append(&self, bytes: &[u8]) -> Result<(u32, u64, u32), StoreError> {
        let len = u32::try_from(bytes.len()).map_err(|_| StoreError::Db("cold record larger than 4 GiB".into()))?;
        let mut cur = self.current.lock();
        if cur.len > 0 && cur.len + bytes.len() as u64 > SEGMENT_LIMIT {
            cur.file.sync_data().map_err(|e| StoreError::io("fsync l3 segment", e))?;
            let id = cur.id + 1;
            let path = segment_path(&self.dir, id);
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| StoreError::io(format!("create {}", path.display()), e))?;
            *cur = Current { id, file, len: 0, dirty: false };
        }
        let offset = cur.len;
        cur.file.write_all(bytes).map_err(|e| StoreError::io("append to l3", e))?;
        cur.len += bytes.len() as u64;
        cur.dirty = true;
        Ok((cur.id, offset, len))
    }

    /// Makes every append so far durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut cur = self.current.lock();
        if cur.dirty {
            cur.file.sync_data().map_err(|e| StoreError::io("fsync l3 segment", e))?;
            cur.dirty = false;
        }
        Ok(())
    }

    pub fn read(&self, segment: u32, offset: u64, len: u32) -> Result<Vec<u8>, StoreError> {
        let path = segment_path(&self.dir, segment);
        let file = File::open(&path).map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset).map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
        Ok(buf)
    }

    /// Bytes in all segments (live and dead).
    pub fn disk_bytes(&self) -> u64 {
        std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_reopen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cold = ColdStore::open(tmp.path()).expect("open");
        let a = cold.append(b"first").expect("append");
        let b = cold.append(b"second!").expect("append");
        cold.sync().expect("sync");
        assert_eq!(cold.read(a.0, a.1, a.2).expect("read"), b"first");
        drop(cold);
        let cold = ColdStore::open(tmp.path()).expect("reopen");
        assert_eq!(cold.read(b.0, b.1, b.2).expect("read"), b"second!");
        let c = cold.append(b"third").expect("append");
        assert_eq!(c.1, 12, "appends continue after the existing bytes");
    }
}
