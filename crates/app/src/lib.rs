//! Daena's use cases. [`Daena`] is the handle every use case runs against: the configuration,
//! clock and data directory, and one accessor per capability (governance, memory, the LLM
//! cache, the ledger and its commit thread, monitoring, operations), each owning its state.
//! Handlers in `api` and commands in the binary call functions here; nothing here knows about
//! HTTP.

pub mod admin;
pub mod analytics;
pub mod archive;
pub mod cas;
pub mod checks;
pub mod commit;
pub mod dashboard;
pub mod governance;
pub mod health;
pub mod keyrotate;
pub mod ledger;
pub mod memory;
pub mod metrics_view;
pub mod monitoring;
pub mod operations;
pub mod ratelimit;
pub mod replicas;
pub mod scheduler;
mod service;
pub mod snapshot;
pub mod state;
pub mod telemetry;

pub use daena_base::{clock, config, error};
pub use daena_governance::{agents, auth, backup_trust, failed_auth, keyring, policy};

pub use service::{Daena, OpenOptions};
