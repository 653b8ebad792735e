//! Daena's storage layer: the data directory and its lock, the embedded key-value store
//! (redb), the ledger's segment files and the cold tier's segment files.
//!
//! Everything here moves bytes and keeps them durable; what the bytes mean is decided in
//! `core` (formats, hashes) and `app` (use cases).

pub mod cold;
pub mod datadir;
pub mod error;
pub mod kv;
pub mod ledger;
pub mod records;

pub use error::StoreError;
