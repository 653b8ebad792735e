//! Daena's storage layer: the data directory and its lock, the state store (its seam in
//! [`state`], the embedded redb backend in [`embedded`], the handle in [`kv`]), the ledger's
//! segment files and the cold tier's segment files. No other crate names redb.
//!
//! Everything here moves bytes and keeps them durable; what the bytes mean is decided in
//! `core` (formats, hashes) and `app` (use cases).

pub mod backup;
pub mod cold;
pub mod datadir;
pub mod embedded;
pub mod error;
pub mod kv;
pub mod ledger;
pub mod overlay;
#[cfg(feature = "shared")]
pub mod pg;
pub mod records;
#[cfg(feature = "shared")]
pub mod redis_limits;
pub mod state;
#[cfg(feature = "shared")]
pub mod test_redis;

pub use error::StoreError;
