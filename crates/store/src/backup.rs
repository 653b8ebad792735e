//! The embedded backend's persisted bytes in and out of a backup archive (`tar` + zstd).
//!
//! ```text
//! <name>.tar.zst
//!   state.redb          a consistent copy of the state store
//!   ledger/...          the ledger files, each up to its length at the cut
//!   l3/cold-*.seg       the L3 segments, each up to its length at the cut
//!   manifest.json       written by the caller (what the archive holds, with every hash)
//!   manifest.sig        the deployment's signature over manifest.json
//! ```
//!
//! A [`Cut`] is taken on the commit thread between batches: a consistent view of the state
//! store and the lengths of the ledger and L3 files. Those files only grow, so their first
//! `length` bytes are that moment's content, and the copy can run while writes go on.
//! [`unpack`] takes an archive apart into a staging directory, refusing any entry outside the
//! layout and hashing every file; [`swap_in`] moves the live state aside (never deleting it)
//! and the staged one into its place.

use crate::StoreError;
use crate::datadir::list_dir;
use crate::kv::{DocTable, Kv, StateView};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The state store's file in a data directory and in an archive.
pub const STATE_FILE: &str = "state.redb";
/// The caller's description of the archive.
pub const MANIFEST: &str = "manifest.json";
/// The signature over [`MANIFEST`].
pub const MANIFEST_SIG: &str = "manifest.sig";
const MANIFEST_LIMIT: u64 = 1 << 24;
const SIGNATURE_LIMIT: u64 = 1 << 12;

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(what.to_string(), e)
}

/// A file as archived: its path inside the archive, length and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Everything the store persists, as of one moment.
pub struct Cut {
    view: Box<dyn StateView>,
    /// Documents added to the state's copy: those the live state keeps elsewhere.
    docs: Vec<(DocTable, String, Vec<u8>)>,
    ledger_dir: PathBuf,
    l3_dir: PathBuf,
    ledger: Vec<(String, u64)>,
    l3: Vec<(String, u64)>,
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cut").field("ledger", &self.ledger).field("l3", &self.l3).finish()
    }
}

/// Files of `dir` whose names start with `prefix`, with their current lengths.
fn lengths(dir: &Path, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    for entry in list_dir(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            let len = entry.metadata().map_err(io(&name))?.len();
            out.push((name, len));
        }
    }
    out.sort();
    Ok(out)
}

/// Takes a cut of a data directory's stores (`DataDir::ledger_dir` and `DataDir::l3_dir`
/// name the directories). Call it where nothing writes: on the commit thread, between
/// batches, with the state settled into the store.
pub fn cut(kv: &Kv, ledger_dir: PathBuf, l3_dir: PathBuf) -> Result<Cut, StoreError> {
    let view = kv.view()?;
    let mut ledger = lengths(&ledger_dir, "seg-")?;
    ledger.extend(lengths(&ledger_dir, crate::ledger::CHECKPOINTS_FILE)?);
    ledger.extend(lengths(&ledger_dir, crate::ledger::PUBLIC_KEY_FILE)?);
    let l3 = lengths(&l3_dir, "cold-")?;
    Ok(Cut { view, docs: Vec::new(), ledger_dir, l3_dir, ledger, l3 })
}

/// What [`Cut::write_into`] put in the archive.
#[derive(Debug, Clone)]
pub struct Written {
    pub files: Vec<ArchivedFile>,
    /// The state store's tables and its number of records.
    pub tables: Vec<String>,
    pub records: u64,
}

struct HashingReader<'a, R> {
    inner: R,
    hasher: &'a mut Sha256,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn header(len: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o600);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

/// Appends the first `len` bytes of `src` to the archive as `path`, hashing them.
fn add_file<W: Write>(tar: &mut tar::Builder<W>, src: &Path, path: &str, len: u64) -> Result<ArchivedFile, StoreError> {
    let file = File::open(src).map_err(io(src.display()))?;
    let mut hasher = Sha256::new();
    let reader = HashingReader { inner: file.take(len), hasher: &mut hasher };
    tar.append_data(&mut header(len), path, reader).map_err(io(path))?;
    Ok(ArchivedFile { path: path.to_owned(), bytes: len, sha256: hex::encode(hasher.finalize()) })
}

/// Appends `bytes` to the archive as `path` (the manifest and its signature).
pub fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
    tar.append_data(&mut header(bytes.len() as u64), path, bytes).map_err(io(path))
}

impl Cut {
    /// Adds `docs` (table, key, stored bytes) to the state's copy: documents the live state
    /// keeps apart from its store, which a restored copy needs in it.
    pub fn with_docs(mut self, docs: Vec<(DocTable, String, Vec<u8>)>) -> Cut {
        self.docs = docs;
        self
    }

    /// Writes the state (copied through `scratch`, a private directory the caller removes),
    /// then the ledger and L3 files up to their lengths at the cut.
    pub fn write_into<W: Write>(self, tar: &mut tar::Builder<W>, scratch: &Path) -> Result<Written, StoreError> {
        let state = scratch.join(STATE_FILE);
        let (mut tables, records) = self.view.copy_to(&state)?;
        drop(self.view);
        if !self.docs.is_empty() {
            let copy = Kv::open(&state, 1 << 20)?;
            let mut by_table: BTreeMap<&'static str, Vec<(&str, &[u8])>> = BTreeMap::new();
            for (table, key, doc) in &self.docs {
                by_table.entry(table.name()).or_default().push((key.as_str(), doc.as_slice()));
            }
            for (name, items) in by_table {
                copy.store().put_docs(DocTable(name), &items)?;
                if !tables.iter().any(|t| t == name) {
                    tables.push(name.to_owned());
                }
            }
        }
        let mut files = Vec::new();
        let state_len = std::fs::metadata(&state).map_err(io(state.display()))?.len();
        files.push(add_file(tar, &state, STATE_FILE, state_len)?);
        for (f, len) in &self.ledger {
            files.push(add_file(tar, &self.ledger_dir.join(f), &format!("ledger/{f}"), *len)?);
        }
        for (f, len) in &self.l3 {
            files.push(add_file(tar, &self.l3_dir.join(f), &format!("l3/{f}"), *len)?);
        }
        Ok(Written { files, tables, records })
    }
}

/// An archive being written: `<name>.tar.zst.part` (owner-only) until [`ArchiveFile::finish`]
/// makes it durable and renames it to `<name>.tar.zst`.
pub struct ArchiveFile {
    part: PathBuf,
    done: PathBuf,
    /// The archive's entries go here.
    pub tar: tar::Builder<zstd::Encoder<'static, File>>,
}

impl ArchiveFile {
    pub fn create(dir: &Path, name: &str) -> Result<ArchiveFile, StoreError> {
        let part = dir.join(format!("{name}.tar.zst.part"));
        let file = create_private(dir, &part)?;
        let enc = zstd::Encoder::new(file, 1).map_err(io("zstd"))?;
        Ok(ArchiveFile { done: dir.join(format!("{name}.tar.zst")), part, tar: tar::Builder::new(enc) })
    }

    /// Ends the archive, makes it durable and gives it its final name; returns that path and
    /// the archive's size.
    pub fn finish(self) -> Result<(PathBuf, u64), StoreError> {
        let enc = self.tar.into_inner().map_err(io("archive"))?;
        let file = enc.finish().map_err(io("zstd"))?;
        publish(file, &self.part, self.done)
    }
}

/// A zstd-compressed file of lines (a record archive), written under a temporary name that
/// only the owner may read, and made durable and given its name by [`LinesFile::finish`]: a
/// crash leaves a `.part` file, never a cut archive under the final name.
pub struct LinesFile {
    part: PathBuf,
    done: PathBuf,
    out: zstd::Encoder<'static, std::io::BufWriter<File>>,
}

impl LinesFile {
    /// Starts `dir/<name>` (as `dir/.<name>.part`), compressed at `level`.
    pub fn create(dir: &Path, name: &str, level: i32) -> Result<LinesFile, StoreError> {
        let part = dir.join(format!(".{name}.part"));
        let file = create_private(dir, &part)?;
        let out = zstd::Encoder::new(std::io::BufWriter::new(file), level).map_err(io("zstd"))?;
        Ok(LinesFile { done: dir.join(name), part, out })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out.write_all(bytes).map_err(io(self.part.display()))
    }

    /// Ends the compressed stream, makes the file durable and gives it its name; returns that
    /// path and the file's size.
    pub fn finish(self) -> Result<(PathBuf, u64), StoreError> {
        let buf = self.out.finish().map_err(io("zstd"))?;
        let file = buf.into_inner().map_err(|e| StoreError::io(self.part.display().to_string(), e.into_error()))?;
        publish(file, &self.part, self.done)
    }
}

/// Reads a file written by [`LinesFile`] (or any zstd-compressed file) as decompressed text.
pub fn open_lines(path: &Path) -> Result<impl std::io::BufRead + use<>, StoreError> {
    let file = File::open(path).map_err(io(path.display()))?;
    let dec = zstd::Decoder::new(file).map_err(io(path.display()))?;
    Ok(std::io::BufReader::new(dec))
}

/// The size of the file at `path`, 0 when it cannot be read.
pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Creates `dir` if needed and `part` in it, readable and writable by the owner only.
fn create_private(dir: &Path, part: &Path) -> Result<File, StoreError> {
    std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    open.open(part).map_err(io(part.display()))
}

/// Makes `file` (written as `part`) durable and renames it to `done`: (`done`, its size).
fn publish(file: File, part: &Path, done: PathBuf) -> Result<(PathBuf, u64), StoreError> {
    file.sync_all().map_err(io(part.display()))?;
    std::fs::rename(part, &done).map_err(io(done.display()))?;
    let bytes = file_size(&done);
    Ok((done, bytes))
}

/// The sidecar manifests (`<name>.manifest.json`) in `dir` whose archive is present: the
/// archive's path and the manifest's bytes, in name order.
pub fn sidecars(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    for entry in list_dir(dir)? {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".manifest.json"))
        else {
            continue;
        };
        let archive = dir.join(format!("{name}.tar.zst"));
        if archive.exists() {
            out.push((archive, std::fs::read(&path).map_err(io(path.display()))?));
        }
    }
    out.sort();
    Ok(out)
}

/// An archive taken apart into a staging directory.
#[derive(Debug, Clone, Default)]
pub struct Unpacked {
    /// Every file written to the staging directory: its length and SHA-256 (hex).
    pub files: BTreeMap<String, (u64, String)>,
    /// The bytes of [`MANIFEST`] and [`MANIFEST_SIG`], when present.
    pub manifest: Option<Vec<u8>>,
    pub signature: Option<Vec<u8>>,
    /// The archive's size.
    pub archive_bytes: u64,
}

/// Why an archive was refused: a problem with the archive itself (`Invalid`), or with reading
/// or writing files (`Store`).
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Unpacks `archive` into `staging`: only regular files at [`STATE_FILE`], under `ledger/`
/// or `l3/`, and the manifest and its signature (kept in memory, bounded), each file made
/// durable and hashed as it is written.
pub fn unpack(archive: &Path, staging: &Path) -> Result<Unpacked, UnpackError> {
    let bad = |what: String| UnpackError::Invalid(format!("{}: {what}", archive.display()));
    let file = File::open(archive).map_err(io(archive.display()))?;
    let archive_bytes = file.metadata().map_or(0, |m| m.len());
    let dec = zstd::Decoder::new(file).map_err(io(archive.display()))?;
    let mut tar = tar::Archive::new(dec);
    let mut out = Unpacked { archive_bytes, ..Unpacked::default() };
    std::fs::create_dir_all(staging).map_err(io(staging.display()))?;
    for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.to_string_lossy().into_owned();
        let safe = !path.is_empty()
            && !path.starts_with('/')
            && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
            && (path == MANIFEST
                || path == MANIFEST_SIG
                || path == STATE_FILE
                || path.starts_with("ledger/")
                || path.starts_with("l3/"));
        if !safe || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("unexpected entry {path:?}")));
        }
        if path == MANIFEST || path == MANIFEST_SIG {
            let limit = if path == MANIFEST { MANIFEST_LIMIT } else { SIGNATURE_LIMIT };
            let mut text = Vec::new();
            entry.by_ref().take(limit).read_to_end(&mut text).map_err(|e| bad(e.to_string()))?;
            *(if path == MANIFEST { &mut out.manifest } else { &mut out.signature }) = Some(text);
            continue;
        }
        let dest = staging.join(&path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent.display()))?;
        }
        let mut file = File::create(&dest).map_err(io(dest.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(io(dest.display()))?;
            total += n as u64;
        }
        file.sync_all().map_err(io(dest.display()))?;
        out.files.insert(path, (total, hex::encode(hasher.finalize())));
    }
    Ok(out)
}

/// A private working directory inside the data directory (`<root>/.<label>-<stamp>`), removed
/// with everything in it when dropped.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn new(root: &Path, label: &str, stamp: &str) -> Result<Staging, StoreError> {
        let path = root.join(format!(".{label}-{stamp}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(io(path.display()))?;
        Ok(Staging { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Moves the current state, ledger and L3 of `root` aside to `<root>/replaced/<stamp>/` and
/// the staged ones into their place; returns where the old ones went. The L3 segments live in
/// `l3_dir` (`<root>/l3`, or `storage.l3_path`, possibly on another volume: then they are
/// copied rather than renamed). The signing key's public half stays with the key that signs
/// from now on.
pub fn swap_in(root: &Path, l3_dir: &Path, staging: &Path, stamp: &str) -> Result<PathBuf, StoreError> {
    // Two operations within one second get two directories.
    let mut aside = root.join("replaced").join(stamp);
    for n in 2.. {
        if !aside.exists() {
            break;
        }
        aside = root.join("replaced").join(format!("{stamp}-{n}"));
    }
    std::fs::create_dir_all(&aside).map_err(io(aside.display()))?;
    let live = |part: &str| if part == "l3" { l3_dir.to_path_buf() } else { root.join(part) };
    for part in [STATE_FILE, "ledger", "l3"] {
        let current = live(part);
        if current.exists() {
            move_path(&current, &aside.join(part))?;
        }
    }
    let public = format!("ledger/{}", crate::ledger::PUBLIC_KEY_FILE);
    if let Ok(p) = std::fs::read(aside.join(&public)) {
        let _ = std::fs::write(staging.join(&public), p);
    }
    for part in [STATE_FILE, "ledger", "l3"] {
        let staged = staging.join(part);
        if staged.exists() {
            move_path(&staged, &live(part))?;
        } else if part != STATE_FILE {
            std::fs::create_dir_all(live(part)).map_err(io(part))?;
        }
    }
    Ok(aside)
}

/// Renames `from` to `to`; across volumes, copies it (files synced) and removes `from`.
fn move_path(from: &Path, to: &Path) -> Result<(), StoreError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent.display()))?;
    }
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            copy_tree(from, to)?;
            if from.is_dir() { std::fs::remove_dir_all(from) } else { std::fs::remove_file(from) }
                .map_err(io(from.display()))
        }
        Err(e) => Err(StoreError::io(format!("move {} to {}", from.display(), to.display()), e)),
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), StoreError> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(io(to.display()))?;
        for entry in std::fs::read_dir(from).map_err(io(from.display()))? {
            let entry = entry.map_err(io(from.display()))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        return crate::ledger::sync_dir(to);
    }
    std::fs::copy(from, to).map_err(io(format!("copy {}", from.display())))?;
    File::open(to).and_then(|f| f.sync_all()).map_err(io(to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a move across volumes does (rename cannot): the copy holds every file, nested
    /// ones included, byte for byte.
    #[test]
    fn a_copied_tree_holds_every_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let from = tmp.path().join("l3");
        std::fs::create_dir_all(from.join("nested")).expect("mkdir");
        std::fs::write(from.join("cold-00000001.seg"), b"segment one").expect("write");
        std::fs::write(from.join("nested/x"), b"x").expect("write");
        let to = tmp.path().join("elsewhere/l3");
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        copy_tree(&from, &to).expect("copy");
        assert_eq!(std::fs::read(to.join("cold-00000001.seg")).expect("read"), b"segment one");
        assert_eq!(std::fs::read(to.join("nested/x")).expect("read"), b"x");
        move_path(&from, &tmp.path().join("aside/l3")).expect("move");
        assert!(!from.exists() && tmp.path().join("aside/l3/nested/x").exists());
    }
}
