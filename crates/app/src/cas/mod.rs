//! The LLM cache's use cases: a chat completion through the cache ([`chat`]) and the cost
//! report ([`report`]). The cache's state is `daena_cache`, re-exported here.

pub use daena_cache::*;

pub mod chat;
pub mod report;
