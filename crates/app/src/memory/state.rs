//! The memory state machine run by the commit thread: validates memory operations against
//! the current rows (and the batch so far), turns each into one ledger entry whose body is
//! the record's envelope, applies durable batches to the state store, L1 and the statistics, and replays
//! ledger entries after a crash.

mod ops;
mod replay;

pub use ops::*;

use super::settle::{Job, Settler};
use super::{Addr, Footprint, MemoryShared, RowMeta};
use crate::cas::CasOp;
use crate::error::{AppError, AppResult, ErrorCode};
use daena_core::ledger::entry::NewEntry;
use daena_store::records::{self, RecordRow, RowBody, Tier, TrustRow};
use daena_store::state::StateRows;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Rows kept in the overlay before they are handed to the settler in one redb transaction.
const OVERLAY_LIMIT: usize = 4096;
/// Rows the active layer may hold while the settler still writes the previous layer; past
/// this the commit thread waits for redb, which bounds the overlay's memory.
const OVERLAY_HARD_LIMIT: usize = 4 * OVERLAY_LIMIT;
/// How long the durable save may be put off while redb is busy. Past this the commit thread
/// waits for redb, so access statistics and counters are saved even if redb never catches up.
const DURABLE_PUT_OFF_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What an applied operation did to a row, for apply().
enum Change {
    Upsert(Box<RecordRow>),
    Remove,
}

pub struct MemoryState {
    shared: Arc<MemoryShared>,
    cas: crate::cas::CasState,
    /// Rows as the batch being prepared leaves them (None: deleted).
    pending: HashMap<Vec<u8>, Option<RecordRow>>,
    /// Per prepared operation, in order: the address, what the row counted for before and
    /// its change.
    staged: Vec<(Addr, Option<Footprint>, Change)>,
    applied: u64,
    /// The durable counters as last saved.
    counters_saved: [u64; 5],
    /// Writes frozen overlay layers to redb.
    settler: Settler,
    /// The applied point of the last durable write handed to the settler.
    durable_applied: u64,
    /// Since when the durable save has been put off because redb was busy.
    durable_put_off: Option<std::time::Instant>,
}

impl MemoryState {
    pub fn new(shared: Arc<MemoryShared>, cas: Arc<crate::cas::CasShared>) -> AppResult<MemoryState> {
        let applied = shared.kv.applied_seq()?;
        let counters_saved = shared.counters.durable();
        let settler = Settler::start(shared.clone(), cas.clone())?;
        Ok(MemoryState {
            counters_saved,
            settler,
            durable_applied: applied,
            durable_put_off: None,
            shared,
            cas: crate::cas::CasState::new(cas),
            pending: HashMap::new(),
            staged: Vec::new(),
            applied,
        })
    }

    fn current(&self, key: &[u8]) -> AppResult<Option<RecordRow>> {
        if let Some(p) = self.pending.get(key) {
            return Ok(p.clone());
        }
        self.shared.row(key)
    }

    /// Stages `change` to the row at `addr`, which `old` described before it.
    fn stage(&mut self, addr: &Addr, old: Option<Footprint>, change: Change) {
        let key = addr.table_key();
        let after = match &change {
            Change::Upsert(row) => Some((**row).clone()),
            Change::Remove => None,
        };
        self.pending.insert(key, after);
        self.staged.push((addr.clone(), old, change));
    }

    fn now(&self) -> i64 {
        self.shared.clock.now().0
    }

    fn prepare_memory(&mut self, op: &MemoryOp) -> AppResult<NewEntry> {
        match op {
            MemoryOp::Put(put) => self.prepare_put(put),
            MemoryOp::Dict { tenant, class, sealed, attrs } => {
                Ok(NewEntry::new(tenant.as_str(), "system", "memory.dict", format!("{class}/dictionary"))
                    .attrs(attrs.clone())
                    .body(sealed.clone()))
            }
            MemoryOp::Delete { addr, actor, if_match, action } => {
                let row = self.current(&addr.table_key())?.ok_or_else(|| not_found(addr))?;
                if let Some(v) = if_match
                    && *v != row.version
                {
                    return Err(version_conflict(*v, row.version));
                }
                self.stage(addr, Some(Footprint::of(&row)), Change::Remove);
                Ok(entry(
                    addr,
                    actor,
                    action,
                    json!({"class": addr.class, "key": addr.key, "version": row.version, "tier": row.tier.as_str()}),
                ))
            }
            MemoryOp::Confirm { addr, actor, agent, by, threshold } => {
                let mut row = self.current(&addr.table_key())?.ok_or_else(|| not_found(addr))?;
                let old = Footprint::of(&row);
                if row.tier != Tier::L2Q {
                    return Err(AppError::new(
                        ErrorCode::Conflict,
                        format!("{}/{} is not in quarantine", addr.class, addr.key),
                    ));
                }
                let trust = row.trust.get_or_insert_with(|| TrustRow {
                    writer: String::new(),
                    confirmations: Vec::new(),
                    score: 0.0,
                });
                // Rows written before trust was per key name their writer by agent id.
                if &trust.writer == by || &trust.writer == agent {
                    return Err(AppError::forbidden(
                        "this key wrote this version and cannot confirm it; another key must".to_owned(),
                    ));
                }
                if trust.confirmations.iter().any(|a| a == by) {
                    return Err(AppError::invalid("this key already confirmed this version"));
                }
                trust.confirmations.push(by.clone());
                trust.score = super::trust_score(trust.confirmations.len());
                let promoted = trust.score >= *threshold;
                let (score, n) = (trust.score, trust.confirmations.len());
                if promoted {
                    row.tier = Tier::L2;
                }
                row.updated_at = self.now();
                let attrs = json!({"class": addr.class, "key": addr.key, "version": row.version, "agent": agent,
                    "by": by, "confirmations": n, "score": score, "promoted": promoted, "updated_at": row.updated_at});
                self.stage(addr, Some(old), Change::Upsert(Box::new(row)));
                Ok(entry(addr, actor, "memory.confirm", attrs))
            }
            MemoryOp::Promote { addr, actor } => {
                let mut row = self.current(&addr.table_key())?.ok_or_else(|| not_found(addr))?;
                let old = Footprint::of(&row);
                if row.tier != Tier::L2Q {
                    return Err(AppError::new(
                        ErrorCode::Conflict,
                        format!("{}/{} is not in quarantine", addr.class, addr.key),
                    ));
                }
                row.tier = Tier::L2;
                row.updated_at = self.now();
                let attrs = json!({"class": addr.class, "key": addr.key, "version": row.version, "by": actor, "updated_at": row.updated_at});
                self.stage(addr, Some(old), Change::Upsert(Box::new(row)));
                Ok(entry(addr, actor, "memory.promote", attrs))
            }
            MemoryOp::Age { addr, actor, action, envelope, raw_len, level, expect_seq } => {
                let mut row = self.current(&addr.table_key())?.ok_or_else(|| not_found(addr))?;
                let old = Footprint::of(&row);
                if row.seq != *expect_seq {
                    return Err(AppError::new(
                        ErrorCode::VersionConflict,
                        "the record changed since aging looked at it",
                    ));
                }
                let (what, to) = match action {
                    AgeAction::Tighten => ("tighten_compression", row.tier),
                    AgeAction::Reseal => ("reseal", row.tier),
                    AgeAction::Archive => ("archive", Tier::L3),
                };
                let from = row.tier;
                row.tier = to;
                row.raw_len = *raw_len;
                row.level = *level;
                row.body = RowBody::Inline(envelope.clone());
                let attrs = json!({"class": addr.class, "key": addr.key, "version": row.version, "action": what,
                    "from": from.as_str(), "to": to.as_str(), "level": level, "raw_len": raw_len});
                self.stage(addr, Some(old), Change::Upsert(Box::new(row)));
                Ok(entry(addr, actor, "memory.age", attrs).body(envelope.clone()))
            }
            MemoryOp::Expire { addr, actor, expect_seq, idle_days } => {
                let row = self.current(&addr.table_key())?.ok_or_else(|| not_found(addr))?;
                if row.seq != *expect_seq {
                    return Err(AppError::new(
                        ErrorCode::VersionConflict,
                        "the record changed since aging looked at it",
                    ));
                }
                self.stage(addr, Some(Footprint::of(&row)), Change::Remove);
                Ok(entry(
                    addr,
                    actor,
                    "memory.expire",
                    json!({"class": addr.class, "key": addr.key, "version": row.version,
                    "tier": row.tier.as_str(), "idle_days": (idle_days * 100.0).round() / 100.0}),
                ))
            }
            MemoryOp::Reheat { addr, expect_seq, reads } => {
                let mut row = self.current(&addr.table_key())?.ok_or_else(|| not_found(addr))?;
                let old = Footprint::of(&row);
                if row.seq != *expect_seq || row.tier != Tier::L3 {
                    return Err(AppError::new(ErrorCode::VersionConflict, "the record changed or left L3"));
                }
                let envelope = match &row.body {
                    RowBody::Cold { segment, offset, len } => self.shared.cold.read(*segment, *offset, *len)?,
                    RowBody::Inline(b) => b.clone(),
                };
                row.tier = Tier::L2;
                row.body = RowBody::Inline(envelope.clone());
                let attrs = json!({"class": addr.class, "key": addr.key, "version": row.version, "reads_in_l3": reads});
                self.stage(addr, Some(old), Change::Upsert(Box::new(row)));
                Ok(entry(addr, "system", "memory.reheat", attrs).body(envelope))
            }
        }
    }

    fn prepare_put(&mut self, put: &Put) -> AppResult<NewEntry> {
        let addr = &put.addr;
        let key = addr.table_key();
        let current = match put.absent_at {
            // No change to the stripe was applied since the caller saw the record absent, and
            // none is staged in this batch: it is still absent (no redb read).
            Some(g) if !self.pending.contains_key(&key) && self.shared.generation(&key) == g => None,
            _ => self.current(&key)?,
        };
        let current_version = current.as_ref().map(|r| r.version);
        if let Some(v) = put.if_match
            && Some(v) != current_version
            && !(v == 0 && current_version.is_none())
        {
            return Err(version_conflict(v, current_version.unwrap_or(0)));
        }
        if put.observed != current_version {
            // Someone wrote in between: the caller recomputes divergence and retries.
            let _ = put.result.set(PutOutcome::Raced);
            return Err(AppError::new(ErrorCode::VersionConflict, "the record changed while the write was prepared"));
        }
        // Sealed under a data key version retired or shredded since: it could never be read.
        if let Ok((_, v)) = crate::keyring::parse_header(&put.envelope)
            && !self.shared.keyring.has_version(addr.tenant.as_str(), v)
        {
            return Err(AppError::unavailable("the tenant's data key changed while this write was prepared; retry"));
        }
        let now = self.now();
        let version = current_version.unwrap_or(0) + 1;
        let tier = if put.quarantine { Tier::L2Q } else { Tier::L2 };
        let row = RecordRow {
            format: records::ROW_FORMAT,
            tier,
            seq: 0,
            version,
            created_at: current.as_ref().map_or(now, |r| r.created_at),
            updated_at: now,
            content_sha256: put.content_sha256,
            raw_len: put.raw_len,
            level: put.level,
            trust: put.quarantine.then(|| TrustRow {
                writer: put.writer_key.clone(),
                confirmations: Vec::new(),
                score: 0.0,
            }),
            body: RowBody::Inline(put.envelope.clone()),
        };
        let attrs = json!({
            "class": addr.class, "key": addr.key, "version": version, "tier": tier.as_str(),
            "created_at": row.created_at, "updated_at": now, "content_mac": put.content_mac,
            "raw_len": put.raw_len, "level": put.level, "payload_bytes": put.payload_bytes, "writer": put.writer, "writer_key": put.writer_key,
            "divergence": put.divergence.map(|d| (d * 10_000.0).round() / 10_000.0), "intended_revision": put.intended,
        });
        let _ = put.result.set(PutOutcome::Written(RowMeta::of(&row)));
        self.stage(addr, current.as_ref().map(Footprint::of), Change::Upsert(Box::new(row)));
        Ok(entry(addr, &put.actor, "memory.put", attrs).body(put.envelope.clone()))
    }

    /// Hands the overlay to the settler: waits for the layer in flight (a no-op unless
    /// redb is slower than the writes), freezes the active layer and sends it. `durable`
    /// writes also save access statistics and counters and commit with fsync; `wait` returns
    /// only once redb holds everything applied so far.
    fn hand_off(&mut self, durable: bool, wait: bool) -> AppResult<()> {
        if let Err(e) = self.wait_for_settler() {
            // The failed layer stays frozen and is merged into this one.
            self.counters_saved = [u64::MAX; 5];
            self.durable_applied = 0;
            self.cas.shared().stats.lock().mark_unsaved();
            tracing::error!(error = %e.message, "writing applied state to redb failed; trying again");
        }
        let mut job = Job {
            rows: self.shared.overlay.freeze(),
            cas: self.cas.shared().pending.freeze(),
            applied: self.applied,
            durable,
            access: HashMap::new(),
            docs: Vec::new(),
        };
        if durable {
            job.access = self.shared.unsaved_access();
            let counters = self.shared.counters.durable();
            if counters != self.counters_saved {
                job.docs.push(super::Counters::doc(counters)?);
                self.counters_saved = counters;
            }
            job.docs.extend(self.cas.shared().stats.lock().unsaved_doc()?);
            if job.is_empty() && self.durable_applied == self.applied {
                return Ok(());
            }
            self.durable_applied = self.applied;
        } else if job.is_empty() {
            return Ok(());
        }
        self.settler.send(job)?;
        if wait { self.wait_for_settler() } else { Ok(()) }
    }

    /// A hand-off that does not wait for redb: put off (`false`) while the settler still
    /// writes the previous layer, unless the active layer has reached [`OVERLAY_HARD_LIMIT`].
    fn hand_off_unless_busy(&mut self, durable: bool) -> AppResult<bool> {
        if self.settler.busy() && self.shared.overlay.active_len() < OVERLAY_HARD_LIMIT {
            return Ok(false);
        }
        self.hand_off(durable, false).map(|()| true)
    }

    /// Waits for the layer in flight, counting the commit thread's time in
    /// `settle_wait_micros` (`/metrics`).
    fn wait_for_settler(&mut self) -> AppResult<()> {
        let started = std::time::Instant::now();
        let outcome = self.settler.wait();
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.shared.counters.settle_wait_micros.fetch_add(micros, std::sync::atomic::Ordering::Relaxed);
        outcome
    }

    /// The SHA-256 of the canonical payload sealed in `envelope`; zeros when it cannot be
    /// opened (a shredded tenant's: nobody reads it anyway).
    fn payload_sha256(&self, addr: &Addr, envelope: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        super::codec::open(&self.shared, &addr.tenant, addr.class.as_str(), addr.key.as_str(), envelope)
            .ok()
            .and_then(|plain| serde_json::from_str::<Value>(&plain.payload).ok())
            .map_or([0; 32], |v| sha2::Sha256::digest(daena_core::canonical::to_string(&v).as_bytes()).into())
    }
}

/// The sequence number of each staged change: staged changes follow the batch's memory
/// operations in order, one each, except dictionaries.
fn staged_seqs(ops: &[(&MemoryOp, u64)]) -> Vec<u64> {
    ops.iter().filter(|(m, _)| !matches!(m, MemoryOp::Dict { .. })).map(|(_, seq)| *seq).collect()
}

fn not_found(addr: &Addr) -> AppError {
    AppError::not_found(format!("no record {}/{}", addr.class, addr.key))
}

fn version_conflict(expected: u64, current: u64) -> AppError {
    AppError::new(
        ErrorCode::VersionConflict,
        format!("If-Match {expected} does not match the current version {current}"),
    )
    .with_details(json!({"current_version": current}))
}

fn entry(addr: &Addr, actor: &str, action: &str, attrs: Value) -> NewEntry {
    NewEntry::new(addr.tenant.as_str(), actor, action, format!("{}/{}", addr.class, addr.key)).attrs(attrs)
}

/// The memory and cache part of the commit thread's state machine ([`crate::state`] routes
/// operations and ledger entries here).
impl MemoryState {
    pub(crate) fn prepare(&mut self, op: &MemoryOp) -> AppResult<NewEntry> {
        self.prepare_memory(op)
    }

    pub(crate) fn prepare_cas(&mut self, op: &mut CasOp) -> AppResult<Vec<NewEntry>> {
        self.cas.prepare(op)
    }

    /// The batch is durable. `ops`: its memory operations in order, each with the sequence
    /// number of its entry; `last_seq`: the batch's last sequence number.
    pub(crate) fn apply(&mut self, ops: &[(&MemoryOp, u64)], last_seq: Option<u64>) -> AppResult<()> {
        let last_seq = last_seq.unwrap_or(self.applied);
        let staged = std::mem::take(&mut self.staged);
        self.pending.clear();
        let seqs = staged_seqs(ops);
        // Dictionaries first: a record in this batch may already use one.
        for (m, _) in ops {
            if let MemoryOp::Dict { tenant, class, sealed, attrs } = m {
                let created_at = attrs.get("created_at").and_then(Value::as_i64).unwrap_or(0);
                let shared = &self.shared;
                shared.dicts.install(&shared.kv, &shared.keyring, tenant, class, created_at, sealed)?;
            }
        }
        debug_assert_eq!(seqs.len(), staged.len());
        let stripes: Vec<usize> = {
            let mut s: Vec<usize> = staged.iter().map(|(a, _, _)| self.shared.stripe_of(&a.table_key())).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        // Hold the stripes of every touched record across the overlay and L1 updates, so a
        // reader filling L1 cannot put back a version older than this batch.
        let shared = self.shared.clone();
        let guards: Vec<_> = stripes.iter().map(|i| shared.stripes[*i].write()).collect();
        for ((addr, old, change), seq) in staged.into_iter().zip(seqs) {
            let key = addr.table_key();
            let new = match change {
                Change::Upsert(mut row) => {
                    row.seq = seq;
                    Some(Arc::new(*row))
                }
                Change::Remove => None,
            };
            shared.stats.lock().replace(&addr, old, new.as_deref().map(Footprint::of));
            // L1 is filled by reads: a write only drops the version it replaces.
            shared.l1.remove(&key);
            shared.overlay.insert(key, new);
        }
        // After the overlay holds the changes: a writer that reads the new generation sees them.
        stripes.iter().for_each(|i| shared.bump_generation(*i));
        drop(guards);
        self.cas.apply();
        self.applied = last_seq;
        if shared.overlay.active_len() >= OVERLAY_LIMIT {
            self.hand_off_unless_busy(false)?;
        }
        Ok(())
    }

    /// The rows the batch being prepared leaves in the state (`ops` as for
    /// [`MemoryState::apply`]), for a ledger that keeps the state with its entries. A row
    /// archived to L3 keeps its body inline there: cold segments are this replica's own.
    pub(crate) fn chain_rows(&self, ops: &[(&MemoryOp, u64)]) -> AppResult<StateRows> {
        let mut rows = StateRows::default();
        for ((addr, _, change), seq) in self.staged.iter().zip(staged_seqs(ops)) {
            let bytes = match change {
                Change::Upsert(row) => Some(RecordRow { seq, ..(**row).clone() }.encode()?),
                Change::Remove => None,
            };
            rows.records.push((addr.table_key(), bytes));
        }
        for (m, _) in ops {
            if let MemoryOp::Dict { tenant, class, sealed, attrs } = m {
                let created_at = attrs.get("created_at").and_then(Value::as_i64).unwrap_or(0);
                rows.dicts.push(super::dict::sealed_row(tenant.as_str(), class, created_at, sealed));
            }
        }
        for (key, row) in self.cas.staged_rows() {
            rows.cache.push((key, row.map(super::settle::encode_cas).transpose()?));
        }
        Ok(rows)
    }

    /// Every applied row (records, cache entries, dictionaries), handed to `page` a page at a
    /// time, L3 bodies read back inline: what a ledger that keeps the state is rebuilt from.
    pub(crate) fn all_rows(&mut self, page: &mut dyn FnMut(StateRows) -> AppResult<()>) -> AppResult<()> {
        const PAGE: usize = 1000;
        self.hand_off(false, true)?;
        let kv = self.shared.kv.clone();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut found: Vec<(Vec<u8>, RecordRow)> = Vec::with_capacity(PAGE);
            kv.scan_records(b"", after.as_deref(), |addr, row| {
                found.push((addr.to_vec(), row));
                Ok(found.len() < PAGE)
            })?;
            let Some((last, _)) = found.last() else { break };
            after = Some(last.clone());
            let full = found.len() == PAGE;
            let mut rows = StateRows::default();
            for (addr, mut row) in found {
                if let RowBody::Cold { segment, offset, len } = row.body {
                    row.body = RowBody::Inline(self.shared.cold.read(segment, offset, len)?);
                }
                rows.records.push((addr, Some(row.encode()?)));
            }
            page(rows)?;
            if !full {
                break;
            }
        }
        let mut rows = StateRows::default();
        kv.scan_cache(|k, v| {
            rows.cache.push((k.to_vec(), Some(v.to_vec())));
            Ok(())
        })?;
        kv.scan_dicts(|k, v| {
            rows.dicts.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        page(rows)
    }

    pub(crate) fn abort(&mut self) {
        self.pending.clear();
        self.staged.clear();
        self.cas.abort();
    }

    /// Notes that entry `seq`, which changes no memory, is applied.
    pub(crate) fn mark_applied(&mut self, seq: u64) {
        self.applied = seq;
    }

    pub(crate) fn settle(&mut self) -> AppResult<()> {
        self.hand_off(false, true)
    }

    pub(crate) fn applied_seq(&self) -> u64 {
        self.applied
    }

    pub(crate) fn flush(&mut self) -> AppResult<()> {
        self.hand_off(true, true)
    }

    pub(crate) fn flush_background(&mut self) -> AppResult<bool> {
        let since = *self.durable_put_off.get_or_insert_with(std::time::Instant::now);
        let handed = if since.elapsed() >= DURABLE_PUT_OFF_LIMIT {
            self.hand_off(true, false).map(|()| true)?
        } else {
            self.hand_off_unless_busy(true)?
        };
        if handed {
            self.durable_put_off = None;
        }
        Ok(handed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::settle::tests::{offline_daena, row};
    use std::time::Duration;

    /// While redb is busy the durable save is put off, but not past
    /// [`DURABLE_PUT_OFF_LIMIT`]: then the commit thread waits for redb, and the wait is
    /// counted. redb is kept busy by a write transaction the test holds.
    #[test]
    fn a_durable_save_is_put_off_while_redb_is_busy_but_not_forever() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = offline_daena(dir.path());
        let shared = d.memory().clone();
        let mut state = MemoryState::new(shared.clone(), d.cas().clone()).expect("state");
        let blocker = shared.kv.hold_writer().expect("the store's writer");

        // A layer in flight, which the settler cannot write while the test holds redb.
        let key = records::address_key("default", "chat", "held");
        shared.overlay.insert(key.clone(), Some(Arc::new(row(9))));
        state.hand_off(false, false).expect("hand-off");
        assert!(state.settler.busy());
        assert!(!state.flush_background().expect("put off"), "put off while redb is busy");
        assert!(state.durable_put_off.is_some());

        // Past the limit the save waits for redb: release it from another thread.
        state.durable_put_off = state.durable_put_off.map(|t| t - DURABLE_PUT_OFF_LIMIT);
        let waited_before = shared.counters.settle_wait_micros.load(std::sync::atomic::Ordering::Relaxed);
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(blocker);
        });
        assert!(state.flush_background().expect("saved"), "handed off once the limit passed");
        release.join().expect("release");
        assert_eq!(state.durable_put_off, None);
        let waited = shared.counters.settle_wait_micros.load(std::sync::atomic::Ordering::Relaxed) - waited_before;
        assert!(waited >= 100_000, "the wait for redb is counted: {waited} µs");
        state.flush().expect("flush");
        let stored = shared.kv.record(&key).expect("read");
        assert!(stored.is_some(), "the held layer reached redb");
    }
}
