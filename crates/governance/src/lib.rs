//! Governance: who may do what, and with which keys.
//!
//! - [`auth`]: API keys (minted, digested, revoked) and the [`auth::Principal`] a request
//!   runs as;
//! - [`policy`]: the ABAC rules per data class, compiled to Cedar;
//! - [`failed_auth`]: the per-address limit on failed authentication;
//! - [`agents`]: the per-tenant agent registry and heartbeats;
//! - [`keyring`]: the master key (`master.rs`) and the tenants' versioned data keys;
//! - [`backup_trust`]: the deployment's signing key for snapshots and archives.
//!
//! How governance changes reach the ledger and survive recovery is `daena_app::governance`:
//! this crate keeps the state, the use cases decide when it changes.

pub mod agents;
pub mod auth;
pub mod backup_trust;
pub mod failed_auth;
pub mod keyring;
mod master;
pub mod policy;
