//! The state store's seam: what the use cases keep besides the ledger and the cold segments,
//! named for what it is, with nothing of the backend showing.
//!
//! - **Documents**: small JSON values by table and key (API keys, settings, overrides,
//!   registries, counters).
//! - **Records**: memory rows by address (`tenant 0 class 0 key`), their access statistics,
//!   and the ledger position the rows reflect (`applied_seq`).
//! - **Cache entries** and **dictionaries**: opaque rows by key.
//! - **Batches**: what the commit thread applied, written all or none, durable or not.
//! - **Views**: a consistent read of everything at one moment, which snapshots copy.
//!
//! [`crate::embedded`] implements it on redb; [`crate::kv::Kv`] is the handle the use cases
//! hold (one trait object: the single place a backend is chosen). `tests/conformance.rs` runs
//! the same scenarios against any implementation.

use crate::StoreError;
use crate::records::RecordRow;
use std::path::Path;

/// A table of JSON documents, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DocTable(pub &'static str);

impl DocTable {
    pub fn name(self) -> &'static str {
        self.0
    }
}

/// A document to write with a batch: (table, key, encoded document).
pub type DocWrite = (DocTable, &'static str, Vec<u8>);

/// Rows to write at once: all or none.
#[derive(Debug, Default)]
pub struct StateBatch<'a> {
    /// Encoded record rows by address, in the order given (`None` removes the record and its
    /// access statistics).
    pub records: Vec<(&'a [u8], Option<Vec<u8>>)>,
    /// Access statistics (last access µs, reads), kept only for records present once the
    /// batch's rows are written: a statistic never outlives its record.
    pub access: Vec<(&'a [u8], (i64, u64))>,
    /// Cache entry rows by key (`None` removes).
    pub cache: Vec<(&'a [u8], Option<Vec<u8>>)>,
    pub docs: &'a [DocWrite],
    /// The ledger position the records reach.
    pub applied: u64,
    /// Durable when the call returns; otherwise made durable by a later durable batch (or
    /// lost in a crash, to be replayed from the ledger).
    pub durable: bool,
}

/// What a batch of the chain leaves in the state, owned: handed to a ledger that keeps the
/// state with its entries (replicas on PostgreSQL write these rows in the same transaction
/// as the batch). Later rows for the same key replace earlier ones.
#[derive(Debug, Default)]
pub struct StateRows {
    /// Encoded record rows by address (`None` removes the record and its access statistics).
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Cache entry rows by key (`None` removes).
    pub cache: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Dictionary rows by key.
    pub dicts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Documents by table and key (`None` removes).
    pub docs: Vec<(DocTable, String, Option<Vec<u8>>)>,
}

impl StateRows {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.records.len() + self.cache.len() + self.dicts.len() + self.docs.len()
    }
}

/// Documents a state keeps with a chain: a whole table (`None`) or one key of it.
pub type DocScope = (DocTable, Option<&'static str>);

/// A consistent read of the whole state at the moment it was taken.
pub trait StateView: Send {
    /// Copies every table into a new state store at `path` (a snapshot's `state.redb`);
    /// returns the table names and the number of records.
    fn copy_to(&self, path: &Path) -> Result<(Vec<String>, u64), StoreError>;
    /// Every record address, in order.
    fn record_keys(&self) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// Keeps the store's single writer busy until dropped (tests of what waits for it).
pub trait WriterHold: Send {}

/// Calls back for each row of a scan; `Ok(false)` stops it.
pub type RecordVisit<'a> = dyn FnMut(&[u8], RecordRow) -> Result<bool, StoreError> + 'a;
/// Calls back for each (key, value) of an opaque table.
pub type RowVisit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// Documents by table and key: the part of the state a replicated deployment may keep apart
/// from the rest (the tenants' wrapped data keys live in PostgreSQL, shared by the replicas).
pub trait DocStore: Send + Sync + 'static {
    fn get_doc(&self, table: DocTable, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Writes documents of one table: all or none, durable when it returns.
    fn put_docs(&self, table: DocTable, items: &[(&str, &[u8])]) -> Result<(), StoreError>;
    /// Whether there was a document to delete.
    fn delete_doc(&self, table: DocTable, key: &str) -> Result<bool, StoreError>;
    /// Every document of `table`, in key order.
    fn scan_docs(&self, table: DocTable) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Writes `new` only if the document still is `expected` (`None`: absent), atomically
    /// even against other processes sharing the store; whether it did. Durable when it returns.
    fn swap_doc(&self, table: DocTable, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, StoreError>;
}

pub trait StateStore: DocStore {
    fn record(&self, addr: &[u8]) -> Result<Option<RecordRow>, StoreError>;
    fn access(&self, addr: &[u8]) -> Result<Option<(i64, u64)>, StoreError>;
    /// Records whose address starts with `prefix`, after `after` (exclusive), in order.
    fn scan_records(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut RecordVisit<'_>) -> Result<(), StoreError>;
    /// The ledger position the records reflect (0: none).
    fn applied_seq(&self) -> Result<u64, StoreError>;

    fn cache_row(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn scan_cache(&self, f: &mut RowVisit<'_>) -> Result<(), StoreError>;

    fn scan_dicts(&self, f: &mut RowVisit<'_>) -> Result<(), StoreError>;
    /// Stores a dictionary row, durable when it returns.
    fn put_dict(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    fn write(&self, batch: &StateBatch<'_>) -> Result<(), StoreError>;
    fn view(&self) -> Result<Box<dyn StateView>, StoreError>;
    /// Proves the store answers a read.
    fn probe(&self) -> Result<(), StoreError>;
    /// Takes the single writer (tests).
    fn hold_writer(&self) -> Result<Box<dyn WriterHold>, StoreError>;
}
