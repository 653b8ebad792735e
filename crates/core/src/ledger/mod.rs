//! The ledger's formats: entries and their hash chain, signed checkpoints, streaming
//! verification, and the legacy (Python) ledger format.
//!
//! `docs/FORMATS.md` specifies each format with test vectors; the tests here pin them.

pub mod checkpoint;
pub mod entry;
pub mod legacy;
pub mod verify;

pub use checkpoint::Checkpoint;
pub use entry::{Entry, EntryError, NewEntry};
