//! What the rounds acknowledged, and what a restarted server must show for it.
//!
//! Every record key belongs to one writer, so its history is sequential: after a kill its
//! value is the last acknowledged one, or the one whose request was in flight at the kill
//! (which may or may not have landed). The same holds for keys, revocations and the limit.

use std::collections::BTreeMap;

/// A record's value: absent, or the marker of the payload last written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Absent,
    Put(String),
}

#[derive(Debug, Clone)]
pub struct Cell<T> {
    pub acked: T,
    /// Sent when the server was killed: its effect may or may not be there.
    pub in_flight: Option<T>,
}

impl<T: Clone + PartialEq + std::fmt::Debug> Cell<T> {
    pub fn new(v: T) -> Self {
        Cell { acked: v, in_flight: None }
    }

    /// Whether `seen` is a state this cell may be in after a kill.
    pub fn admits(&self, seen: &T) -> bool {
        *seen == self.acked || self.in_flight.as_ref() == Some(seen)
    }

    /// After a check: what was seen is the truth from now on.
    pub fn settle(&mut self, seen: T) {
        self.acked = seen;
        self.in_flight = None;
    }
}

/// An agent key created during the rounds.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub token: String,
    /// Revoked (acknowledged), or a revocation in flight.
    pub revoked: Cell<bool>,
}

#[derive(Debug, Default)]
pub struct Model {
    pub records: BTreeMap<String, Cell<Value>>,
    /// Acknowledged cache stores: (prompt, answer).
    pub cache: Vec<(String, String)>,
    pub keys: Vec<ApiKey>,
    /// The test tenant's requests per minute.
    pub limit: Option<Cell<u32>>,
    pub acked: u64,
}

impl Model {
    /// A copy to check against a server without holding the lock across requests.
    pub fn clone_for_check(&self) -> Model {
        Model {
            records: self.records.clone(),
            cache: self.cache.clone(),
            keys: self.keys.clone(),
            limit: self.limit.clone(),
            acked: self.acked,
        }
    }
}
