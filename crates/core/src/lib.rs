//! Daena's pure domain: everything here is deterministic, takes time and randomness as
//! parameters, and does no IO. The outer layers (`store`, `app`, `api`) bring the world in.

pub mod agents;
pub mod aging;
pub mod archive;
pub mod auth;
pub mod canonical;
pub mod cas;
pub mod divergence;
pub mod gcra;
pub mod ids;
pub mod ledger;
pub mod merkle;
pub mod stats;
pub mod time;
