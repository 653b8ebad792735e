//! The embedded state store: one redb database file (`state.redb`).
//!
//! Documents are JSON values in one table per [`DocTable`]; records, cache entries and
//! dictionaries are byte rows keyed by address; access statistics are `(i64, u64)` values;
//! the applied position is a `u64` in `memory_meta`. A batch is one redb transaction,
//! committed with `Durability::None` when it need not be durable (a later durable commit
//! makes it so).

use crate::StoreError;
use crate::records::RecordRow;
use crate::state::{DocStore, DocTable, RecordVisit, RowVisit, StateBatch, StateStore, StateView, WriterHold};
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Bytes = TableDefinition<'static, &'static [u8], &'static [u8]>;

const RECORDS: Bytes = TableDefinition::new("records");
const ACCESS: TableDefinition<'static, &'static [u8], (i64, u64)> = TableDefinition::new("access");
const MEMORY_META: TableDefinition<'static, &'static str, u64> = TableDefinition::new("memory_meta");
const APPLIED_SEQ: &str = "applied_seq";
const CACHE: Bytes = TableDefinition::new("cas");
const DICTS: Bytes = TableDefinition::new("memory_dicts");

fn docs(table: DocTable) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.0)
}

/// The redb-backed [`StateStore`].
///
/// After a write of its file fails (a full, read-only or failing disk), redb refuses every
/// use, reads too, until the database is reopened. So a write first proves the disk takes
/// writes (a small probe file beside the database, synced when the write is durable) and
/// stops there when it does not, leaving the database open for reads. When a write fails
/// anyway, [`Embedded::with`] reopens the database (at most once a second) and runs the use
/// again, so the service recovers by itself once the disk takes writes; reopening checks
/// the file as after a crash: only committed transactions are in it.
pub struct Embedded {
    /// `None` only after a reopen failed; the next use tries again.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    cache_bytes: usize,
    last_reopen: Mutex<Option<Instant>>,
}

/// Every open checks the checksum of every page: a file damaged at rest is refused with
/// [`StoreError::Corrupt`] instead of being trusted (a plain open may panic on it).
fn builder(cache_bytes: usize) -> redb::Builder {
    let mut b = Database::builder();
    b.set_cache_size(cache_bytes).set_check_integrity_on_open(true);
    b
}

/// How often a refused database is reopened at most (a reopen checks the whole file).
const REOPEN_EVERY: Duration = Duration::from_secs(1);

impl Embedded {
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Embedded, StoreError> {
        let db = builder(cache_bytes).create(path)?;
        Ok(Embedded {
            db: RwLock::new(Some(Arc::new(db))),
            path: path.to_owned(),
            cache_bytes,
            last_reopen: Mutex::new(None),
        })
    }

    /// Runs `f` on the database; when redb refuses it because an earlier write failed,
    /// reopens the database and runs `f` once more.
    fn with<T>(&self, f: impl Fn(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.current()?;
        match f(&db) {
            Err(StoreError::Reopening(_)) => {
                let stale = Arc::as_ptr(&db);
                drop(db);
                self.reopen(Some(stale))?;
                f(self.current()?.as_ref())
            }
            other => other,
        }
    }

    /// Like [`Embedded::with`] for a write: only once the disk proved it takes writes.
    fn write_with<T>(&self, durable: bool, f: impl Fn(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.probe_disk(durable)?;
        self.with(f)
    }

    /// Writes (and with `sync`, syncs) a small file beside the database.
    fn probe_disk(&self, sync: bool) -> Result<(), StoreError> {
        use std::io::Write;
        let probe = self.path.with_extension("probe");
        std::fs::File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok").and_then(|()| if sync { f.sync_data() } else { Ok(()) }))
            .map_err(|e| StoreError::io("embedded database's disk", e))
    }

    /// A read transaction, from a reopened database when the open one refuses.
    fn read_txn(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.with(|db| Ok(db.begin_read()?))
    }

    fn current(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.db.read().as_ref() {
            return Ok(db.clone());
        }
        self.reopen(None)?;
        self.db.read().clone().ok_or_else(|| StoreError::Reopening("reopening it".into()))
    }

    /// Replaces the database `stale` points at (`None`: the missing one) with a fresh open of
    /// the file, unless another thread already did.
    fn reopen(&self, stale: Option<*const Database>) -> Result<(), StoreError> {
        let mut slot = self.db.write();
        if slot.as_ref().map(Arc::as_ptr) != stale {
            return Ok(());
        }
        {
            let mut last = self.last_reopen.lock();
            if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
                return Err(StoreError::Reopening("the next attempt to reopen it is within a second".into()));
            }
            *last = Some(Instant::now());
        }
        if let Some(old) = slot.take() {
            // Uses already under way hold the old handle for one short call; wait for them.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break drop(db),
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(still) => {
                        *slot = Some(still);
                        return Err(StoreError::Reopening("it is still in use; trying again later".into()));
                    }
                }
            }
        }
        match builder(self.cache_bytes).create(&self.path) {
            Ok(db) => {
                tracing::warn!(path = %self.path.display(), "embedded database reopened after a failed write");
                *slot = Some(Arc::new(db));
                Ok(())
            }
            Err(e) => {
                let e = StoreError::from(e);
                tracing::error!(error = %e, "reopening the embedded database failed; the next use tries again");
                Err(e)
            }
        }
    }
}

/// Opens `table` of a read transaction; `None` when it was never written.
macro_rules! open_or_none {
    ($txn:expr, $table:expr) => {
        match $txn.open_table($table) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        }
    };
}

fn scan_bytes(txn: &redb::ReadTransaction, table: Bytes, f: &mut RowVisit<'_>) -> Result<(), StoreError> {
    let Some(t) = open_or_none!(txn, table) else { return Ok(()) };
    for item in t.iter()? {
        let (k, v) = item?;
        f(k.value(), v.value())?;
    }
    Ok(())
}

impl DocStore for Embedded {
    fn get_doc(&self, table: DocTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(t) = open_or_none!(txn, docs(table)) else { return Ok(None) };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    fn put_docs(&self, table: DocTable, items: &[(&str, &[u8])]) -> Result<(), StoreError> {
        self.write_with(true, |db| {
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(docs(table))?;
                for (key, value) in items {
                    t.insert(*key, *value)?;
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    fn delete_doc(&self, table: DocTable, key: &str) -> Result<bool, StoreError> {
        self.write_with(true, |db| {
            let txn = db.begin_write()?;
            let existed = txn.open_table(docs(table))?.remove(key)?.is_some();
            txn.commit()?;
            Ok(existed)
        })
    }

    fn scan_docs(&self, table: DocTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(t) = open_or_none!(txn, docs(table)) else { return Ok(Vec::new()) };
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn swap_doc(&self, table: DocTable, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError> {
        self.write_with(true, |db| {
            let txn = db.begin_write()?;
            let swapped = {
                let mut t = txn.open_table(docs(table))?;
                let same = t.get(key)?.map(|v| v.value().to_vec()).as_deref() == expected;
                if same {
                    t.insert(key, new)?;
                }
                same
            };
            txn.commit()?;
            Ok(swapped)
        })
    }
}

impl StateStore for Embedded {
    fn record(&self, addr: &[u8]) -> Result<Option<RecordRow>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(t) = open_or_none!(txn, RECORDS) else { return Ok(None) };
            t.get(addr)?.map(|v| RecordRow::decode(v.value())).transpose()
        })
    }

    fn access(&self, addr: &[u8]) -> Result<Option<(i64, u64)>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(t) = open_or_none!(txn, ACCESS) else { return Ok(None) };
            Ok(t.get(addr)?.map(|v| v.value()))
        })
    }

    fn scan_records(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut RecordVisit<'_>) -> Result<(), StoreError> {
        let txn = self.read_txn()?;
        let Some(t) = open_or_none!(txn, RECORDS) else { return Ok(()) };
        let start: &[u8] = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        for item in t.range(start..)? {
            let (k, v) = item?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|a| k <= a) {
                continue;
            }
            if !f(k, RecordRow::decode(v.value())?)? {
                break;
            }
        }
        Ok(())
    }

    fn applied_seq(&self) -> Result<u64, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(t) = open_or_none!(txn, MEMORY_META) else { return Ok(0) };
            Ok(t.get(APPLIED_SEQ)?.map_or(0, |v| v.value()))
        })
    }

    fn cache_row(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            let Some(t) = open_or_none!(txn, CACHE) else { return Ok(None) };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    fn scan_cache(&self, f: &mut RowVisit<'_>) -> Result<(), StoreError> {
        scan_bytes(&self.read_txn()?, CACHE, f)
    }

    fn scan_dicts(&self, f: &mut RowVisit<'_>) -> Result<(), StoreError> {
        scan_bytes(&self.read_txn()?, DICTS, f)
    }

    fn put_dict(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.write_with(true, |db| {
            let txn = db.begin_write()?;
            txn.open_table(DICTS)?.insert(key, value)?;
            txn.commit()?;
            Ok(())
        })
    }

    fn write(&self, batch: &StateBatch<'_>) -> Result<(), StoreError> {
        self.write_with(batch.durable, |db| write_batch(db, batch))
    }

    fn view(&self) -> Result<Box<dyn StateView>, StoreError> {
        Ok(Box::new(View(self.read_txn()?)))
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.with(|db| {
            let txn = db.begin_read()?;
            drop(open_or_none!(txn, docs(crate::kv::SETTINGS)));
            Ok(())
        })
    }

    fn hold_writer(&self) -> Result<Box<dyn WriterHold>, StoreError> {
        Ok(Box::new(Hold(Some(self.with(|db| Ok(db.begin_write()?))?))))
    }
}

/// One batch in one transaction: all or none.
fn write_batch(db: &Database, batch: &StateBatch<'_>) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    if !batch.durable {
        txn.set_durability(redb::Durability::None).map_err(|e| StoreError::Db(e.to_string()))?;
    }
    {
        let mut records = txn.open_table(RECORDS)?;
        let mut access = txn.open_table(ACCESS)?;
        for (key, row) in &batch.records {
            match row {
                Some(bytes) => {
                    records.insert(*key, bytes.as_slice())?;
                }
                None => {
                    records.remove(*key)?;
                    access.remove(*key)?;
                }
            }
        }
        for (key, stats) in &batch.access {
            if records.get(*key)?.is_some() {
                access.insert(*key, *stats)?;
            }
        }
        if !batch.cache.is_empty() {
            let mut cache = txn.open_table(CACHE)?;
            for (key, row) in &batch.cache {
                match row {
                    Some(bytes) => {
                        cache.insert(*key, bytes.as_slice())?;
                    }
                    None => {
                        cache.remove(*key)?;
                    }
                }
            }
        }
        for (table, key, json) in batch.docs {
            txn.open_table(docs(*table))?.insert(*key, json.as_slice())?;
        }
        txn.open_table(MEMORY_META)?.insert(APPLIED_SEQ, batch.applied)?;
    }
    txn.commit()?;
    Ok(())
}

struct Hold(Option<redb::WriteTransaction>);

impl WriterHold for Hold {}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(txn) = self.0.take() {
            let _ = txn.abort();
        }
    }
}

struct View(redb::ReadTransaction);

impl StateView for View {
    fn copy_to(&self, path: &Path) -> Result<(Vec<String>, u64), StoreError> {
        let out = Database::create(path)?;
        let w = out.begin_write()?;
        let mut names = Vec::new();
        let mut records = 0u64;
        for handle in self.0.list_tables()? {
            let name = handle.name().to_owned();
            let n = name.as_str();
            match n {
                "records" | "cas" | "memory_dicts" => {
                    let def = TableDefinition::<&[u8], &[u8]>::new(n);
                    let src = self.0.open_table(def)?;
                    let mut dst = w.open_table(def)?;
                    for item in src.iter()? {
                        let (k, v) = item?;
                        dst.insert(k.value(), v.value())?;
                        records += u64::from(n == "records");
                    }
                }
                "access" => {
                    let src = self.0.open_table(ACCESS)?;
                    let mut dst = w.open_table(ACCESS)?;
                    for item in src.iter()? {
                        let (k, v) = item?;
                        dst.insert(k.value(), v.value())?;
                    }
                }
                "memory_meta" => {
                    let src = self.0.open_table(MEMORY_META)?;
                    let mut dst = w.open_table(MEMORY_META)?;
                    for item in src.iter()? {
                        let (k, v) = item?;
                        dst.insert(k.value(), v.value())?;
                    }
                }
                _ => {
                    let def = TableDefinition::<&str, &[u8]>::new(n);
                    let src = self.0.open_table(def).map_err(|e| StoreError::Corrupt {
                        what: format!("table {name}"),
                        detail: format!("unknown layout: {e}"),
                    })?;
                    let mut dst = w.open_table(def)?;
                    for item in src.iter()? {
                        let (k, v) = item?;
                        dst.insert(k.value(), v.value())?;
                    }
                }
            }
            names.push(name);
        }
        w.commit()?;
        Ok((names, records))
    }

    fn record_keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let Some(t) = open_or_none!(self.0, RECORDS) else { return Ok(Vec::new()) };
        let mut keys = Vec::new();
        for item in t.iter()? {
            keys.push(item?.0.value().to_vec());
        }
        Ok(keys)
    }
}

/// Rows read from another backend (a PostgreSQL view), written page by page as an embedded
/// store file: the layout a snapshot's `state.redb` has whatever the backend. The file is
/// whole once [`Copy::finish`] returns (each page is committed on its own, so memory holds one
/// page at a time; the file is a staging copy until then).
#[cfg(feature = "shared")]
pub(crate) struct Copy {
    db: Database,
    names: std::collections::BTreeSet<String>,
}

/// An opaque table a [`Copy`] fills.
#[cfg(feature = "shared")]
#[derive(Debug, Clone, Copy)]
pub(crate) enum CopyTable {
    Records,
    Cache,
    Dicts,
}

#[cfg(feature = "shared")]
impl Copy {
    /// Creates the file at `path`.
    pub(crate) fn create(path: &Path) -> Result<Copy, StoreError> {
        Ok(Copy { db: Database::create(path)?, names: std::collections::BTreeSet::new() })
    }

    /// Adds a page of `(key, value)` rows to `table`.
    pub(crate) fn rows(&mut self, table: CopyTable, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let def = match table {
            CopyTable::Records => RECORDS,
            CopyTable::Cache => CACHE,
            CopyTable::Dicts => DICTS,
        };
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(def)?;
            for (k, v) in rows {
                t.insert(k.as_slice(), v.as_slice())?;
            }
        }
        w.commit()?;
        self.names.insert(def.name().to_owned());
        Ok(())
    }

    /// Adds a page of access statistics.
    pub(crate) fn access(&mut self, rows: &[(Vec<u8>, (i64, u64))]) -> Result<(), StoreError> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(ACCESS)?;
            for (k, stats) in rows {
                t.insert(k.as_slice(), *stats)?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// Adds a page of documents, `(table, key, JSON)`.
    pub(crate) fn docs(&mut self, rows: &[(String, String, Vec<u8>)]) -> Result<(), StoreError> {
        let w = self.db.begin_write()?;
        for (table, key, json) in rows {
            w.open_table(TableDefinition::<&str, &[u8]>::new(table))?.insert(key.as_str(), json.as_slice())?;
            self.names.insert(table.clone());
        }
        w.commit()?;
        Ok(())
    }

    /// Records the ledger position the rows reach and makes sure every state table exists;
    /// returns the names of the tables the file holds.
    pub(crate) fn finish(mut self, applied: u64) -> Result<Vec<String>, StoreError> {
        let w = self.db.begin_write()?;
        for def in [RECORDS, CACHE, DICTS] {
            w.open_table(def)?;
            self.names.insert(def.name().to_owned());
        }
        w.open_table(ACCESS)?;
        w.open_table(MEMORY_META)?.insert(APPLIED_SEQ, applied)?;
        w.commit()?;
        self.names.extend([ACCESS.name().to_owned(), MEMORY_META.name().to_owned()]);
        Ok(self.names.into_iter().collect())
    }
}

/// Documents as stored: (key, JSON).
pub type Documents = Vec<(String, Vec<u8>)>;

/// Reads every document of `table` from the database file at `path` without writing to it
/// (the writable open may update the file). `None` when there is no database yet, or when
/// it needs the repair a crash leaves behind.
pub fn read_docs_untouched(path: &Path, table: DocTable) -> Result<Option<Documents>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let db = match Database::builder().open_read_only(path) {
        Ok(db) => db,
        // A crash leaves the file needing a repair that only a writable open performs.
        Err(redb::DatabaseError::RepairAborted) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let txn = db.begin_read()?;
    let Some(t) = open_or_none!(txn, docs(table)) else { return Ok(Some(Vec::new())) };
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok(Some(out))
}
