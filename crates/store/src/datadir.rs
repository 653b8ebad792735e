//! The data directory: its layout, its exclusive lock and durable file helpers.
//!
//! ```text
//! data/
//!   daena.lock      held (flock) by the process that owns the directory; says who
//!   state.redb      the embedded database: L2, L2Q, registry, keys, cache, analytics
//!   ledger/         ledger segments and signed checkpoints
//!   l3/             cold-tier segment files
//!   keys/           master key file (when generated), wrapped data keys, signing key
//!   snapshots/      snapshot archives
//! ```
//!
//! One process owns a data directory at a time: `serve` for as long as it runs, or an
//! offline CLI command for its duration. Others find the owner in `daena.lock`.

use crate::StoreError;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Who holds the lock, written into `daena.lock` for other processes to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    /// `serve`'s listen address, so the CLI can find a running server.
    pub listen: Option<String>,
    /// What holds the directory: `serve` or the name of an offline command.
    pub holder: String,
}

#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: File,
}

pub const LOCK_FILE: &str = "daena.lock";

/// An error writing the data directory at start, with what to do about the usual causes.
fn unwritable(root: &Path, what: String, e: std::io::Error) -> StoreError {
    let hint = match e.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem => "is on a read-only file system",
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => "is on a full disk",
        std::io::ErrorKind::PermissionDenied => "is not writable by this user",
        _ => return StoreError::io(what, e),
    };
    StoreError::io(
        format!(
            "the data directory {} {hint}; Daena writes its ledger and state there: make it writable \
             or set DAENA_DATA_DIR to another directory ({what})",
            root.display()
        ),
        e,
    )
}

impl DataDir {
    /// Creates the directory tree if needed and takes the exclusive lock.
    pub fn open(root: &Path, info: &LockInfo) -> Result<DataDir, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(format!("create {}", root.display()), e))?;
        let lock_path = root.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| unwritable(root, format!("open {}", lock_path.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_lock_info(root)
                    .map(|i| match i.listen {
                        Some(listen) => format!(" (pid {}, {} on {listen})", i.pid, i.holder),
                        None => format!(" (pid {}, {})", i.pid, i.holder),
                    })
                    .unwrap_or_default();
                return Err(StoreError::Locked { path: root.to_owned(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::io(format!("lock {}", lock_path.display()), e));
            }
        }
        let text = serde_json::to_vec(info).map_err(|e| StoreError::Db(e.to_string()))?;
        lock.set_len(0)
            .and_then(|_| lock.rewind())
            .and_then(|_| lock.write_all(&text))
            .and_then(|_| lock.sync_data())
            .map_err(|e| unwritable(root, format!("write {}", lock_path.display()), e))?;
        let dir = DataDir { root: root.to_owned(), _lock: lock };
        for sub in [dir.ledger_dir(), dir.l3_dir(), dir.keys_dir(), dir.snapshots_dir()] {
            std::fs::create_dir_all(&sub).map_err(|e| StoreError::io(format!("create {}", sub.display()), e))?;
        }
        set_private_dir(&dir.keys_dir())?;
        Ok(dir)
    }

    /// Rewrites the lock file's contents (e.g. with the address actually bound).
    pub fn update_lock_info(&self, info: &LockInfo) -> Result<(), StoreError> {
        let text = serde_json::to_vec(info).map_err(|e| StoreError::Db(e.to_string()))?;
        let mut lock = &self._lock;
        lock.set_len(0)
            .and_then(|_| lock.rewind())
            .and_then(|_| lock.write_all(&text))
            .and_then(|_| lock.sync_data())
            .map_err(|e| StoreError::io("update the lock file", e))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.redb")
    }
    pub fn ledger_dir(&self) -> PathBuf {
        self.root.join("ledger")
    }
    pub fn l3_dir(&self) -> PathBuf {
        self.root.join("l3")
    }
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Proves the directory is writable right now: writes, syncs and removes a probe file.
    pub fn probe_writable(&self) -> Result<(), StoreError> {
        let probe = self.root.join(".write-probe");
        let result = File::create(&probe).and_then(|mut f| f.write_all(b"ok").and_then(|_| f.sync_data()));
        let _ = std::fs::remove_file(&probe);
        result.map_err(|e| StoreError::io(format!("write probe in {}", self.root.display()), e))
    }
}

/// Reads who holds `root`'s lock, whether or not it is still held.
pub fn read_lock_info(root: &Path) -> Option<LockInfo> {
    let mut text = String::new();
    File::open(root.join(LOCK_FILE)).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether another process holds `root` right now.
pub fn is_locked(root: &Path) -> bool {
    let Ok(file) = OpenOptions::new().read(true).write(true).open(root.join(LOCK_FILE)) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

fn set_private_dir(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::io(format!("chmod {}", path.display()), e))
}

/// The entries of `dir`; none when it does not exist.
pub fn list_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    let list = |e| StoreError::io(format!("list {}", dir.display()), e);
    match std::fs::read_dir(dir) {
        Ok(read) => read.collect::<Result<Vec<_>, _>>().map_err(list),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(list(e)),
    }
}

/// The text of a small file (a key, a chain of rotation lines), or `None` when it does not
/// exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("read {}", path.display()), e)),
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same directory,
/// fsync, rename, fsync of the directory. `private` makes the file mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if private {
        opts.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::io(format!("write {}", path.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_with_the_holder() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let info = LockInfo { pid: std::process::id(), listen: Some("127.0.0.1:8000".into()), holder: "serve".into() };
        let first = DataDir::open(tmp.path(), &info).expect("first open");
        assert!(is_locked(tmp.path()));
        let err = DataDir::open(tmp.path(), &info).expect_err("second open must fail");
        let msg = err.to_string();
        assert!(msg.contains("in use") && msg.contains("127.0.0.1:8000"), "{msg}");
        assert_eq!(read_lock_info(tmp.path()), Some(info.clone()));
        drop(first);
        assert!(!is_locked(tmp.path()));
        DataDir::open(tmp.path(), &info).expect("open after release");
    }

    #[test]
    fn atomic_private_write() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let p = tmp.path().join("secret.key");
        write_atomic(&p, b"abc", true).expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"abc");
        assert_eq!(std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777, 0o600);
    }
}
