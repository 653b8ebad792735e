//! The storage layer's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data directory {path} is in use by another Daena process{holder}")]
    Locked { path: PathBuf, holder: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("embedded database: {0}")]
    Db(String),
    #[error("PostgreSQL, {context}: {detail}")]
    Postgres { context: String, detail: String },
    #[error("corrupt data in {what}: {detail}")]
    Corrupt { what: String, detail: String },
    /// The embedded database refuses every use after a write of its file failed (a full or
    /// read-only disk) until it is reopened; it is reopened on the next use.
    #[error("embedded database: an earlier write to its file failed; {0}")]
    Reopening(String),
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
}

impl StoreError {
    /// The I/O error underneath, when there is one (a file, or the embedded database's file).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                // An I/O failure of the database file keeps its kind (a full disk, a
                // read-only file system), so callers can say what happened.
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}

db_errors!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(source) => StoreError::Io { context: "embedded database file".into(), source },
            redb::Error::PreviousIo => StoreError::Reopening("reopening it".into()),
            redb::Error::Corrupted(detail) => StoreError::Corrupt { what: "the embedded database file".into(), detail },
            other => StoreError::Db(other.to_string()),
        }
    }
}
