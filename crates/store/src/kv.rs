//! The state store handle the use cases hold, and the small tables kept as JSON documents.
//!
//! [`Kv`] wraps one [`StateStore`] trait object: the single place a backend is chosen
//! ([`Kv::open`]: the embedded redb file). Documents (API keys, settings, overrides,
//! registries) are few, small and rarely written, so they are JSON committed with immediate
//! durability; the typed helpers here encode and decode them.

use crate::StoreError;
use crate::records::RecordRow;
pub use crate::state::{DocStore, DocTable, DocWrite, StateBatch, StateStore, StateView, WriterHold};
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;
use std::sync::Arc;

/// A document as every table stores it (JSON); [`Kv::get_doc`] reads it back.
pub fn encode_doc<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Db(e.to_string()))
}

/// A document table named `name`.
pub const fn doc_table(name: &'static str) -> DocTable {
    DocTable(name)
}

/// API keys by key id.
pub const API_KEYS: DocTable = DocTable("api_keys");
/// Small settings documents (schema version, runtime switches).
pub const SETTINGS: DocTable = DocTable("settings");

/// The on-disk schema version of the state store; bumped on incompatible layout changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone)]
pub struct Kv {
    store: Arc<dyn StateStore>,
    /// Where the documents are: the store itself, unless [`Kv::with_docs`] put them elsewhere.
    docs: Arc<dyn DocStore>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kv")
    }
}

impl Kv {
    /// Opens (or creates) the embedded store at `path` and checks its schema version.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Kv, StoreError> {
        let store = crate::embedded::Embedded::open(path, cache_bytes).map_err(|e| match e {
            StoreError::Corrupt { detail, .. } => StoreError::Corrupt {
                what: format!("the state database {}", path.display()),
                detail: format!(
                    "{detail}. Move the file aside and rebuild the state from the newest snapshot and \
                     the ledger's entries after it: `daena replay --ledger <data dir>/ledger --from-snapshot \
                     <data dir>/snapshots/<newest>.tar.zst`"
                ),
            },
            other => other,
        })?;
        let kv = Kv::over(Arc::new(store));
        kv.check_schema(&path.display().to_string())?;
        Ok(kv)
    }

    /// Opens the state store in the PostgreSQL database at `url` (migrating its schema) and
    /// checks its schema version.
    #[cfg(feature = "shared")]
    pub fn open_postgres(url: &str) -> Result<Kv, StoreError> {
        let kv = Kv::over(Arc::new(crate::pg::PgState::open(url)?));
        kv.check_schema(&format!("the state in {}", crate::pg::redact_url(url)))?;
        Ok(kv)
    }

    /// A handle over `store`.
    pub fn over(store: Arc<dyn StateStore>) -> Kv {
        let docs: Arc<dyn DocStore> = store.clone();
        Kv { store, docs }
    }

    /// This handle with its documents kept in `docs` (shared by the replicas of a deployment)
    /// and everything else where it was.
    pub fn with_docs(&self, docs: Arc<dyn DocStore>) -> Kv {
        Kv { store: self.store.clone(), docs }
    }

    fn check_schema(&self, what: &str) -> Result<(), StoreError> {
        match self.get_doc::<u32>(SETTINGS, "schema_version")? {
            None => self.put_doc(SETTINGS, "schema_version", &SCHEMA_VERSION),
            Some(SCHEMA_VERSION) => Ok(()),
            Some(other) => Err(StoreError::Corrupt {
                what: what.to_owned(),
                detail: format!("schema version {other}, this build reads {SCHEMA_VERSION}"),
            }),
        }
    }

    /// The backend, for what the helpers here do not cover.
    pub fn store(&self) -> &dyn StateStore {
        self.store.as_ref()
    }

    pub fn get_doc<T: DeserializeOwned>(&self, table: DocTable, key: &str) -> Result<Option<T>, StoreError> {
        self.docs.get_doc(table, key)?.map(|bytes| decode_doc(table, key, &bytes)).transpose()
    }

    pub fn put_doc<T: Serialize>(&self, table: DocTable, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode_doc(value)?;
        self.docs.put_docs(table, &[(key, bytes.as_slice())])
    }

    /// Writes `new` only if the document's stored bytes still are `expected` (`None`:
    /// absent), even against other processes sharing the documents; whether it did.
    pub fn swap_doc<T: Serialize>(
        &self,
        table: DocTable,
        key: &str,
        expected: Option<&[u8]>,
        new: &T,
    ) -> Result<bool, StoreError> {
        self.docs.swap_doc(table, key, expected, &encode_doc(new)?)
    }

    /// A document's stored bytes, for [`Kv::swap_doc`].
    pub fn get_doc_bytes(&self, table: DocTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.docs.get_doc(table, key)
    }

    /// Every document of `table` as stored, in key order (wherever the documents are kept).
    pub fn scan_doc_bytes(&self, table: DocTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.docs.scan_docs(table)
    }

    /// Writes several documents in one transaction: all or none.
    pub fn put_docs<T: Serialize>(&self, table: DocTable, items: &[(String, T)]) -> Result<(), StoreError> {
        let encoded =
            items.iter().map(|(k, v)| Ok((k.as_str(), encode_doc(v)?))).collect::<Result<Vec<_>, StoreError>>()?;
        let refs: Vec<(&str, &[u8])> = encoded.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        self.docs.put_docs(table, &refs)
    }

    pub fn delete_doc(&self, table: DocTable, key: &str) -> Result<bool, StoreError> {
        self.docs.delete_doc(table, key)
    }

    /// Every document of `table`, in key order.
    pub fn scan_docs<T: DeserializeOwned>(&self, table: DocTable) -> Result<Vec<(String, T)>, StoreError> {
        self.docs.scan_docs(table)?.into_iter().map(|(k, v)| Ok((k.clone(), decode_doc(table, &k, &v)?))).collect()
    }

    /// One record row.
    pub fn record(&self, addr: &[u8]) -> Result<Option<RecordRow>, StoreError> {
        self.store.record(addr)
    }

    /// A record's access statistics: (last access µs, reads).
    pub fn access(&self, addr: &[u8]) -> Result<Option<(i64, u64)>, StoreError> {
        self.store.access(addr)
    }

    /// Calls `f` for rows whose address starts with `prefix`, from `after` (exclusive) on,
    /// until it returns false.
    pub fn scan_records(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        mut f: impl FnMut(&[u8], RecordRow) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.store.scan_records(prefix, after, &mut f)
    }

    /// The highest ledger sequence number applied to the records (0 when none).
    pub fn applied_seq(&self) -> Result<u64, StoreError> {
        self.store.applied_seq()
    }

    pub fn cache_row(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.cache_row(key)
    }

    pub fn scan_cache(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.store.scan_cache(&mut f)
    }

    pub fn scan_dicts(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.store.scan_dicts(&mut f)
    }

    pub fn put_dict(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.store.put_dict(key, value)
    }

    /// Writes a batch: all or none.
    pub fn write(&self, batch: &StateBatch<'_>) -> Result<(), StoreError> {
        self.store.write(batch)
    }

    /// A consistent read of everything as it is now.
    pub fn view(&self) -> Result<Box<dyn StateView>, StoreError> {
        self.store.view()
    }

    /// Proves the store answers a read.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.store.probe()
    }

    /// Holds the single writer until the guard is dropped (tests).
    pub fn hold_writer(&self) -> Result<Box<dyn WriterHold>, StoreError> {
        self.store.hold_writer()
    }
}

/// Reads every document of `table` from the embedded store file at `path` without writing
/// to it. `None` when there is no file yet, or when it needs the repair a crash leaves.
pub fn read_docs_untouched<T: DeserializeOwned>(
    path: &Path,
    table: DocTable,
) -> Result<Option<Vec<(String, T)>>, StoreError> {
    let Some(rows) = crate::embedded::read_docs_untouched(path, table)? else { return Ok(None) };
    rows.into_iter().map(|(k, v)| Ok((k.clone(), decode_doc(table, &k, &v)?))).collect::<Result<Vec<_>, _>>().map(Some)
}

/// A stored document (as [`encode_doc`] wrote it) decoded; `Corrupt` names the table and key.
pub fn decode_doc<T: DeserializeOwned>(table: DocTable, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt { what: format!("table {} key {key}", table.name()), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kv = Kv::open(&tmp.path().join("state.redb"), 1 << 20).expect("open");
        assert_eq!(kv.get_doc::<String>(API_KEYS, "a").expect("get"), None);
        kv.put_doc(API_KEYS, "b", &"two".to_owned()).expect("put");
        kv.put_doc(API_KEYS, "a", &"one".to_owned()).expect("put");
        let all: Vec<(String, String)> = kv.scan_docs(API_KEYS).expect("scan");
        assert_eq!(all, vec![("a".into(), "one".into()), ("b".into(), "two".into())]);
        assert!(kv.delete_doc(API_KEYS, "a").expect("delete"));
        assert!(!kv.delete_doc(API_KEYS, "a").expect("delete again"));
        drop(kv);
        let kv = Kv::open(&tmp.path().join("state.redb"), 1 << 20).expect("reopen");
        assert_eq!(kv.get_doc::<String>(API_KEYS, "b").expect("get"), Some("two".into()));
    }
}
