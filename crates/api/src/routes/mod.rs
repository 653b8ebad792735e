//! Route handlers, one module per area. A handler extracts, calls one `app` function and
//! maps the result.

pub mod admin;
pub mod agents;
pub mod analytics;
pub mod cas;
pub mod dashboard;
pub mod ledger;
pub mod memory;
pub mod monitoring;
pub mod ratelimit;
pub mod system;
