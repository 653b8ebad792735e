//! The embedded key-value store (redb) and the small tables kept as JSON documents.
//!
//! Hot tables (records, cache entries) have their own modules with binary layouts; the
//! registry-like tables here (API keys, settings, overrides) are few, small and rarely
//! written, so they are JSON documents committed with immediate durability.

use crate::StoreError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;
use std::sync::Arc;

/// A table of JSON documents keyed by string.
pub type DocTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// A document to write inside a caller's transaction: (table, key, encoded document).
pub type DocWrite = (DocTable, &'static str, Vec<u8>);

/// A document as every table here stores it (JSON); [`Kv::get_doc`] reads it back.
pub fn encode_doc<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Db(e.to_string()))
}

/// A document table named `name`.
pub const fn doc_table(name: &'static str) -> DocTable {
    TableDefinition::new(name)
}

/// API keys by key id.
pub const API_KEYS: DocTable = TableDefinition::new("api_keys");
/// Small settings documents (schema version, runtime switches).
pub const SETTINGS: DocTable = TableDefinition::new("settings");

/// The on-disk schema version of `state.redb`; bumped on incompatible layout changes.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone)]
pub struct Kv {
    db: Arc<Database>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kv")
    }
}

impl Kv {
    /// Opens (or creates) the database and checks its schema version.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Kv, StoreError> {
        let db = Database::builder().set_cache_size(cache_bytes).create(path)?;
        let kv = Kv { db: Arc::new(db) };
        match kv.get_doc::<u32>(SETTINGS, "schema_version")? {
            None => kv.put_doc(SETTINGS, "schema_version", &SCHEMA_VERSION)?,
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Corrupt {
                    what: path.display().to_string(),
                    detail: format!("schema version {other}, this build reads {SCHEMA_VERSION}"),
                });
            }
        }
        Ok(kv)
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn get_doc<T: DeserializeOwned>(&self, table: DocTable, key: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match t.get(key)? {
            Some(v) => decode(table, key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    pub fn put_doc<T: Serialize>(&self, table: DocTable, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = encode_doc(value)?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(table)?;
            t.insert(key, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes several documents in one transaction: all or none.
    pub fn put_docs<T: Serialize>(&self, table: DocTable, items: &[(String, T)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(table)?;
            for (key, value) in items {
                let bytes = encode_doc(value)?;
                t.insert(key.as_str(), bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    pub fn delete_doc(&self, table: DocTable, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let existed = {
            let mut t = txn.open_table(table)?;
            t.remove(key)?.is_some()
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Every document of `table`, in key order.
    pub fn scan_docs<T: DeserializeOwned>(&self, table: DocTable) -> Result<Vec<(String, T)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(table) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), decode(table, k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Proves the database answers a read transaction.
    pub fn probe(&self) -> Result<(), StoreError> {
        self.get_doc::<u32>(SETTINGS, "schema_version").map(|_| ())
    }
}

/// Reads every document of `table` from the database at `path` without writing to it (the
/// writable open may update the file). `None` when there is no database yet, or when it
/// needs the repair a crash leaves behind.
pub fn read_docs_untouched<T: DeserializeOwned>(
    path: &Path,
    table: DocTable,
) -> Result<Option<Vec<(String, T)>>, StoreError> {
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
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Some(Vec::new())),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        out.push((k.value().to_owned(), decode(table, k.value(), v.value())?));
    }
    Ok(Some(out))
}

fn decode<T: DeserializeOwned>(table: DocTable, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("table {} key {key}", redb::TableHandle::name(&table)),
        detail: e.to_string(),
    })
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
