//! Long operations that outlive the request that starts them, one at a time.
//!
//! - A key rotation runs in the background while the server serves.
//! - A restore, rollback or replay replaces the stores the server has open. `daena serve`
//!   runs them in a maintenance window: it stops accepting requests (waiting for the ones in
//!   flight), closes the stores, keeps the data directory locked, answers 503 `unavailable`
//!   on its port while the operation runs, then opens the result and serves again. When the
//!   operation fails before it replaced anything (a snapshot that does not verify, a point
//!   with no snapshot before it), the same state is opened again.
//!
//! Each operation has a record (phase, progress, result or error) that callers poll with
//! `GET /api/v1/admin/operations/{id}`. The newest records are kept in memory across those
//! reopens; restores, rollbacks and replays are also ledgered when they end (`ops.<kind>`).

use crate::Daena;
use crate::error::{AppError, AppResult, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// How many finished operation records are kept.
const KEPT: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operation {
    pub id: String,
    /// `key.rotate`, `restore`, `rollback` or `replay`.
    pub kind: String,
    pub state: OpState,
    /// What it is doing now, for a person.
    pub phase: String,
    /// Units done and, when known, the total (records for a rotation).
    pub done: u64,
    pub total: Option<u64>,
    pub requested_by: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Seconds the server did not serve requests (maintenance operations).
    pub downtime_seconds: Option<f64>,
    /// The operation's report once it succeeded.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// A restore, rollback or replay, which needs the stores closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Maintenance {
    Restore { archive: PathBuf, trust: crate::backup_trust::Trust },
    Rollback { to: String, trust: crate::backup_trust::Trust },
    Replay { ledger: PathBuf, snapshot: Option<PathBuf>, to: Option<String>, trust: crate::backup_trust::Trust },
}

impl Maintenance {
    pub fn kind(&self) -> &'static str {
        match self {
            Maintenance::Restore { .. } => "restore",
            Maintenance::Rollback { .. } => "rollback",
            Maintenance::Replay { .. } => "replay",
        }
    }
}

/// A maintenance operation handed to the serve loop.
#[derive(Debug, Clone)]
pub struct MaintenanceRequest {
    pub id: String,
    pub requested_by: String,
    pub op: Maintenance,
}

/// The operation records, and the serve loop's mailbox for maintenance requests.
#[derive(Debug, Default)]
pub struct Operations {
    records: parking_lot::Mutex<VecDeque<Operation>>,
    maintenance: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedSender<MaintenanceRequest>>>,
}

use crate::clock::Clock;

fn now() -> String {
    crate::clock::rfc3339(crate::clock::SystemClock.now())
}

impl Operations {
    pub fn new() -> std::sync::Arc<Operations> {
        std::sync::Arc::new(Operations::default())
    }

    /// Starts a record, unless another operation is running (409 `conflict`).
    pub fn begin(&self, kind: &str, requested_by: &str) -> AppResult<Operation> {
        let mut records = self.records.lock();
        if let Some(r) = records.iter().find(|r| r.state == OpState::Running) {
            return Err(AppError::new(
                ErrorCode::Conflict,
                format!("operation {} ({}) is running: {}; wait for it to end", r.id, r.kind, r.phase),
            ));
        }
        let op = Operation {
            id: format!(
                "op-{}-{:08x}",
                crate::clock::compact_stamp(crate::clock::SystemClock.now()),
                rand::random::<u32>()
            ),
            kind: kind.to_owned(),
            state: OpState::Running,
            phase: "starting".to_owned(),
            done: 0,
            total: None,
            requested_by: requested_by.to_owned(),
            started_at: now(),
            finished_at: None,
            downtime_seconds: None,
            result: None,
            error: None,
        };
        records.push_back(op.clone());
        while records.len() > KEPT {
            match records.iter().position(|r| r.state != OpState::Running) {
                Some(i) => {
                    records.remove(i);
                }
                None => break,
            }
        }
        Ok(op)
    }

    pub fn update(&self, id: &str, f: impl FnOnce(&mut Operation)) {
        if let Some(r) = self.records.lock().iter_mut().find(|r| r.id == id) {
            f(r);
        }
    }

    pub fn phase(&self, id: &str, phase: &str) {
        tracing::info!(operation = id, phase, "operation progress");
        self.update(id, |r| r.phase = phase.to_owned());
    }

    pub fn finish(&self, id: &str, outcome: Result<serde_json::Value, String>) {
        self.update(id, |r| {
            r.finished_at = Some(now());
            match outcome {
                Ok(v) => {
                    r.state = OpState::Succeeded;
                    r.phase = "done".to_owned();
                    r.result = Some(v);
                }
                Err(e) => {
                    r.state = OpState::Failed;
                    r.phase = "failed".to_owned();
                    r.error = Some(e);
                }
            }
        });
    }

    /// Finishes with a report (serialized into the record) or the error's message.
    pub fn finish_report<T: Serialize>(&self, id: &str, result: AppResult<T>) {
        let outcome = result.and_then(|r| serde_json::to_value(r).map_err(|e| AppError::internal(e.to_string())));
        self.finish(id, outcome.map_err(|e| e.message));
    }

    /// A progress callback `(done, total)` that updates the record, under `phase`.
    pub fn progress(
        self: &std::sync::Arc<Self>,
        id: &str,
        phase: &'static str,
    ) -> impl FnMut(u64, u64) + Send + 'static {
        let (ops, id) = (self.clone(), id.to_owned());
        move |done, total| {
            ops.update(&id, |r| {
                r.phase = phase.to_owned();
                r.done = done;
                r.total = Some(total);
            })
        }
    }

    pub fn get(&self, id: &str) -> Option<Operation> {
        self.records.lock().iter().find(|r| r.id == id).cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Operation> {
        self.records.lock().iter().rev().cloned().collect()
    }

    pub fn running(&self) -> Option<Operation> {
        self.records.lock().iter().find(|r| r.state == OpState::Running).cloned()
    }

    /// Called by `daena serve` for each opening of the stores.
    pub fn attach(&self, tx: tokio::sync::mpsc::UnboundedSender<MaintenanceRequest>) {
        *self.maintenance.lock() = Some(tx);
    }

    pub fn detach(&self) {
        *self.maintenance.lock() = None;
    }
}

/// Checks a maintenance request against the running server and hands it to the serve loop;
/// the server stops serving right after the answer to this request.
pub fn request_maintenance(d: &Daena, requested_by: &str, op: Maintenance) -> AppResult<Operation> {
    let Some(tx) = d.operations().maintenance.lock().clone() else {
        return Err(AppError::unavailable(format!(
            "a {} through the API needs `daena serve`; on a stopped data directory run the command offline",
            op.kind()
        )));
    };
    crate::replicas::single_node_only(d.config(), &format!("a {}", op.kind()))?;
    check(d, &op)?;
    let record = d.operations().begin(op.kind(), requested_by)?;
    d.operations().phase(&record.id, "waiting for requests in flight to finish");
    let request = MaintenanceRequest { id: record.id.clone(), requested_by: requested_by.to_owned(), op };
    if tx.send(request).is_err() {
        d.operations().finish(&record.id, Err("the server is shutting down".into()));
        return Err(AppError::unavailable("the server is shutting down"));
    }
    Ok(d.operations().get(&record.id).unwrap_or(record))
}

/// What can be checked before the server stops serving; the rest (the archive's hashes, the
/// ledger's chain) is checked in the maintenance window before anything is replaced.
fn check(d: &Daena, op: &Maintenance) -> AppResult<()> {
    let absolute_file = |p: &Path, what: &str| {
        if !p.is_absolute() {
            return Err(AppError::invalid(format!("{what} {} must be an absolute path on the server", p.display())));
        }
        Ok(())
    };
    match op {
        Maintenance::Restore { archive, .. } => {
            absolute_file(archive, "snapshot")?;
            if !archive.is_file() {
                return Err(AppError::not_found(format!("no snapshot archive at {}", archive.display())));
            }
        }
        Maintenance::Rollback { to, .. } => {
            let head = d.ledger().reader.head().size;
            let to_seq = match to.parse::<u64>() {
                Ok(seq) => seq,
                Err(_) => {
                    let t = crate::clock::parse_rfc3339(to).ok_or_else(|| {
                        AppError::invalid(format!("to {to:?} is neither a sequence number nor an RFC 3339 time"))
                    })?;
                    if t > d.clock().now() {
                        return Err(AppError::new(ErrorCode::Conflict, format!("to {to} is in the future")));
                    }
                    return Ok(());
                }
            };
            if to_seq >= head {
                return Err(AppError::new(
                    ErrorCode::Conflict,
                    format!("the ledger ends at {head}; the point {to_seq} is not before it"),
                ));
            }
            let snapshots = crate::snapshot::list(&d.data().snapshots_dir())?;
            if !snapshots.iter().any(|(_, m)| m.ledger_size <= to_seq) {
                return Err(AppError::new(
                    ErrorCode::Conflict,
                    format!(
                        "no snapshot at or before entry {to_seq}; one is needed, as the data keys live in the state"
                    ),
                ));
            }
        }
        Maintenance::Replay { ledger, snapshot, to, .. } => {
            absolute_file(ledger, "ledger")?;
            if !ledger.is_dir() {
                return Err(AppError::not_found(format!("{} is not a ledger directory", ledger.display())));
            }
            if let Some(s) = snapshot {
                absolute_file(s, "snapshot")?;
                if !s.is_file() {
                    return Err(AppError::not_found(format!("no snapshot archive at {}", s.display())));
                }
            }
            if let Some(to) = to
                && to.parse::<u64>().is_err()
                && crate::clock::parse_rfc3339(to).is_none()
            {
                return Err(AppError::invalid(format!("to {to:?} is neither a sequence number nor an RFC 3339 time")));
            }
        }
    }
    Ok(())
}

/// Runs a maintenance operation in a data directory this process holds with no store open.
pub fn perform(
    data: &daena_store::datadir::DataDir,
    loaded: &crate::config::LoadedConfig,
    op: &Maintenance,
) -> AppResult<serde_json::Value> {
    use crate::snapshot::{Rebuild, rebuild_in, restore_in};
    let value = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| AppError::internal(e.to_string()));
    match op {
        Maintenance::Restore { archive, trust } => {
            value(serde_json::to_value(restore_in(data, loaded, archive, trust)?))
        }
        Maintenance::Rollback { to, trust } => {
            let spec = Rebuild { ledger: None, snapshot: None, to: Some(to), holder: "rollback", trust: trust.clone() };
            value(serde_json::to_value(rebuild_in(data, loaded, spec)?))
        }
        Maintenance::Replay { ledger, snapshot, to, trust } => {
            let spec = Rebuild {
                ledger: Some(ledger),
                snapshot: snapshot.as_deref(),
                to: to.as_deref(),
                holder: "replay",
                trust: trust.clone(),
            };
            value(serde_json::to_value(rebuild_in(data, loaded, spec)?))
        }
    }
}

/// Ledgers the end of a restore, rollback or replay (`ops.<kind>`) in the state that is now
/// open, whether it succeeded or not; returns the entry's sequence number.
pub async fn ledger_outcome(
    d: &Daena,
    requested_by: &str,
    kind: &str,
    id: &str,
    outcome: &Result<serde_json::Value, String>,
) -> AppResult<Option<u64>> {
    let attrs = match outcome {
        Ok(report) => serde_json::json!({"outcome": "succeeded", "report": summary(report)}),
        Err(e) => serde_json::json!({"outcome": "failed", "error": e}),
    };
    let entry = daena_core::ledger::NewEntry::new("system", requested_by, format!("ops.{kind}"), id).attrs(attrs);
    Ok(d.commit().append(vec![entry]).await?.first().map(|r| r.seq))
}

/// A report without its longest parts (the per-file list of a manifest).
fn summary(report: &serde_json::Value) -> serde_json::Value {
    let mut v = report.clone();
    if let Some(m) = v.get_mut("manifest").and_then(|m| m.as_object_mut()) {
        m.remove("files");
        m.remove("tables");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operation_runs_at_a_time_and_records_are_bounded() {
        let ops = Operations::new();
        let first = ops.begin("restore", "ops:a").expect("first");
        let e = ops.begin("key.rotate", "ops:b").expect_err("second while the first runs");
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains(&first.id), "{}", e.message);
        ops.update(&first.id, |r| r.done = 3);
        ops.finish(&first.id, Err("the archive does not verify".into()));
        let r = ops.get(&first.id).expect("kept");
        assert_eq!((r.state, r.done, r.error.as_deref()), (OpState::Failed, 3, Some("the archive does not verify")));
        assert!(r.finished_at.is_some());
        for i in 0..(KEPT + 5) {
            let op = ops.begin("rollback", "ops:a").expect("after the previous ended");
            ops.finish(&op.id, Ok(serde_json::json!({"i": i})));
        }
        let list = ops.list();
        assert_eq!(list.len(), KEPT);
        assert_eq!(list[0].result, Some(serde_json::json!({"i": KEPT + 4})), "newest first");
        assert!(ops.get(&first.id).is_none(), "the oldest finished records go first");
        assert!(ops.running().is_none());
    }
}
