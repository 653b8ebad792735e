//! The settler: writes frozen overlay layers to redb on its own thread, so the commit thread
//! never stalls behind a redb transaction (a 4096-row write takes 10–20 ms here, a durable
//! one with its fsyncs 15–30 ms). One layer is in flight at a time; the commit thread waits
//! for it only when the next layer is ready before it is written.

use super::MemoryShared;
use crate::cas::{CAS, CasRow, CasShared};
use crate::error::{AppError, AppResult};
use crate::overlay::Layer;
use daena_store::kv::DocWrite;
use daena_store::records::{ACCESS, APPLIED_SEQ, MEMORY_META, RECORDS, RecordRow, RowBody, Tier};
use redb::ReadableTable;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;

/// One redb transaction's worth of state.
pub(super) struct Job {
    pub rows: Arc<Layer<RecordRow>>,
    pub cas: Arc<Layer<CasRow>>,
    /// The ledger sequence number the rows bring redb to.
    pub applied: u64,
    /// Commit with fsync (else redb's `Durability::None`, made durable by a later commit).
    pub durable: bool,
    /// Access statistics to save: a copy; the shared map keeps each until it is written.
    pub access: HashMap<Vec<u8>, (i64, u64)>,
    /// Documents saved in the same transaction: (table, key, JSON).
    pub docs: Vec<DocWrite>,
}

impl Job {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.cas.is_empty() && self.access.is_empty() && self.docs.is_empty()
    }
}

pub(super) struct Settler {
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<AppResult<()>>,
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Settler {
    pub fn start(shared: Arc<MemoryShared>, cas: Arc<CasShared>) -> AppResult<Settler> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(1);
        let (done_tx, done) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("daena-settle".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let result = write(&shared, &job);
                    if result.is_ok() {
                        shared.overlay.release(&job.rows);
                        cas.pending.release(&job.cas);
                        shared.forget_access(&job.access);
                    }
                    if done_tx.send(result).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| AppError::internal(format!("cannot start the settle thread: {e}")))?;
        Ok(Settler { jobs: Some(jobs), done, in_flight: false, thread: Some(thread) })
    }

    /// Starts writing `job`; the previous job must have been waited for.
    pub fn send(&mut self, job: Job) -> AppResult<()> {
        debug_assert!(!self.in_flight);
        let gone = || AppError::internal("the settle thread has stopped");
        self.jobs.as_ref().ok_or_else(gone)?.send(job).map_err(|_| gone())?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits for the job in flight, if any, and returns its outcome.
    pub fn wait(&mut self) -> AppResult<()> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(());
        }
        self.done.recv().map_err(|_| AppError::internal("the settle thread has stopped"))?
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the job in flight; joining it lets go of
        // the stores, so the data directory can be reopened at once.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes a job in one redb transaction. Rows that moved to L3 with their body still inline
/// get their bytes appended to a cold segment first.
pub(super) fn write(shared: &MemoryShared, job: &Job) -> AppResult<()> {
    let db = shared.kv.db();
    let mut txn = db.begin_write().map_err(AppError::storage)?;
    if !job.durable {
        txn.set_durability(redb::Durability::None).map_err(|e| AppError::internal(format!("redb durability: {e}")))?;
    }
    {
        let mut table = txn.open_table(RECORDS).map_err(AppError::storage)?;
        let mut access = txn.open_table(ACCESS).map_err(AppError::storage)?;
        for (key, row) in job.rows.iter() {
            match row {
                Some(row) => {
                    let bytes = match (&row.tier, &row.body) {
                        (Tier::L3, RowBody::Inline(inline)) => {
                            let (segment, offset, len) = shared.cold.append(inline)?;
                            RecordRow { body: RowBody::Cold { segment, offset, len }, ..(**row).clone() }.encode()?
                        }
                        _ => row.encode()?,
                    };
                    table.insert(key.as_slice(), bytes.as_slice()).map_err(AppError::storage)?;
                }
                None => {
                    table.remove(key.as_slice()).map_err(AppError::storage)?;
                    access.remove(key.as_slice()).map_err(AppError::storage)?;
                }
            }
        }
        for (key, (last, count)) in &job.access {
            // Only records that still exist keep statistics.
            if table.get(key.as_slice()).map_err(AppError::storage)?.is_some() {
                access.insert(key.as_slice(), (*last, *count)).map_err(AppError::storage)?;
            }
        }
        if !job.cas.is_empty() {
            let mut table = txn.open_table(CAS).map_err(AppError::storage)?;
            for (key, row) in job.cas.iter() {
                match row {
                    Some(row) => {
                        let bytes = postcard::to_allocvec(&**row)
                            .map_err(|e| AppError::internal(format!("encode cas row: {e}")))?;
                        table.insert(key.as_slice(), bytes.as_slice()).map_err(AppError::storage)?;
                    }
                    None => {
                        table.remove(key.as_slice()).map_err(AppError::storage)?;
                    }
                }
            }
        }
        for (name, key, json) in &job.docs {
            txn.open_table(*name)
                .map_err(AppError::storage)?
                .insert(*key, json.as_slice())
                .map_err(AppError::storage)?;
        }
        let mut meta = txn.open_table(MEMORY_META).map_err(AppError::storage)?;
        meta.insert(APPLIED_SEQ, job.applied).map_err(AppError::storage)?;
    }
    if job.durable {
        // Rows pointing into L3 must not become durable before the bytes they point at.
        shared.cold.sync()?;
    }
    txn.commit().map_err(AppError::storage)?;
    Ok(())
}
