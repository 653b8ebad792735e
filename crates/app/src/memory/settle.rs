//! The settler: writes frozen overlay layers to the state store on its own thread, so the
//! commit thread never stalls behind a store transaction (a 4096-row write takes 10–20 ms here, a durable
//! one with its fsyncs 15–30 ms). One layer is in flight at a time. While it is, the next
//! hand-off is put off and the active layer keeps growing; the commit thread waits for redb
//! only when the active layer reaches its hard limit, or when a caller needs redb to hold
//! everything (scans, shutdown).

use super::MemoryShared;
use crate::cas::{CasRow, CasShared};
use crate::error::{AppError, AppResult};
use daena_store::kv::{DocWrite, StateBatch};
use daena_store::overlay::Layer;
use daena_store::records::{RecordRow, RowBody, Tier};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc;

/// One state store batch's worth of state.
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
    /// The outcome of the job in flight, once [`Settler::busy`] saw it finish.
    finished: Option<AppResult<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn stopped() -> AppError {
    AppError::internal("the settle thread has stopped")
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
        Ok(Settler { jobs: Some(jobs), done, in_flight: false, finished: None, thread: Some(thread) })
    }

    /// Starts writing `job`; the previous job must have been waited for.
    pub fn send(&mut self, job: Job) -> AppResult<()> {
        debug_assert!(!self.in_flight);
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        self.in_flight = true;
        Ok(())
    }

    /// Whether the job in flight is still being written. Never blocks; a finished job's
    /// outcome is kept for [`Settler::wait`].
    pub fn busy(&mut self) -> bool {
        if !self.in_flight || self.finished.is_some() {
            return false;
        }
        match self.done.try_recv() {
            Ok(outcome) => {
                self.finished = Some(outcome);
                false
            }
            Err(mpsc::TryRecvError::Empty) => true,
            Err(mpsc::TryRecvError::Disconnected) => {
                self.finished = Some(Err(stopped()));
                false
            }
        }
    }

    /// Waits for the job in flight, if any, and returns its outcome.
    pub fn wait(&mut self) -> AppResult<()> {
        if !std::mem::take(&mut self.in_flight) {
            return Ok(());
        }
        match self.finished.take() {
            Some(outcome) => outcome,
            None => self.done.recv().map_err(|_| stopped())?,
        }
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

/// `map`'s entries in key order. A job's keys are spread over the whole table; visiting
/// them in order walks each B-tree leaf once, in step with the pages redb already holds.
fn in_key_order<V>(map: &HashMap<Vec<u8>, V>) -> Vec<(&Vec<u8>, &V)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

/// Writes a job as one batch of the state store. Rows that moved to L3 with their body
/// still inline get their bytes appended to a cold segment first; a durable batch syncs the
/// cold segments before it, so no row points at bytes that are not durable.
pub(super) fn write(shared: &MemoryShared, job: &Job) -> AppResult<()> {
    let mut records = Vec::with_capacity(job.rows.len());
    for (key, row) in in_key_order(&job.rows) {
        let bytes = match row {
            Some(row) => Some(match (&row.tier, &row.body) {
                (Tier::L3, RowBody::Inline(inline)) => {
                    let (segment, offset, len) = shared.cold.append(inline)?;
                    RecordRow { body: RowBody::Cold { segment, offset, len }, ..(**row).clone() }.encode()?
                }
                _ => row.encode()?,
            }),
            None => None,
        };
        records.push((key.as_slice(), bytes));
    }
    let mut cache = Vec::with_capacity(job.cas.len());
    for (key, row) in job.cas.iter() {
        cache.push((key.as_slice(), row.as_deref().map(encode_cas).transpose()?));
    }
    if job.durable {
        shared.cold.sync()?;
    }
    let batch = StateBatch {
        records,
        access: in_key_order(&job.access).into_iter().map(|(k, stats)| (k.as_slice(), *stats)).collect(),
        cache,
        docs: &job.docs,
        applied: job.applied,
        durable: job.durable,
    };
    shared.kv.write(&batch)?;
    Ok(())
}

/// A cache entry's row as the state store keeps it.
pub(super) fn encode_cas(row: &CasRow) -> AppResult<Vec<u8>> {
    postcard::to_allocvec(row).map_err(|e| AppError::internal(format!("encode cas row: {e}")))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::LoadedConfig;
    use crate::{Daena, OpenOptions};
    use daena_store::records;
    use std::time::{Duration, Instant};

    /// A service on a fresh data directory in `dir`, without a listener or schedules.
    pub(in crate::memory) fn offline_daena(dir: &std::path::Path) -> Arc<Daena> {
        let mut loaded = LoadedConfig::in_dir(dir, None);
        loaded.config.memory.aging.interval_minutes = 0;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async { Daena::open(loaded, OpenOptions::offline("test")) }).expect("open")
    }

    /// A small record row with a recognisable digest.
    pub(in crate::memory) fn row(digest: u8) -> RecordRow {
        RecordRow {
            format: records::ROW_FORMAT,
            tier: Tier::L2,
            seq: 1,
            version: 1,
            created_at: 1,
            updated_at: 1,
            content_sha256: [digest; 32],
            raw_len: 3,
            level: 3,
            trust: None,
            body: RowBody::Inline(vec![1, 2, 3]),
        }
    }

    /// `busy` never blocks, and the outcome it sees is kept for `wait`: after `busy` saw the
    /// job finish, `wait` returns that outcome at once instead of waiting for another.
    #[test]
    fn busy_polls_and_leaves_the_outcome_to_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = offline_daena(dir.path());
        let mut settler = Settler::start(d.memory().clone(), d.cas().clone()).expect("settler");
        assert!(!settler.busy(), "nothing is in flight yet");
        settler.wait().expect("nothing to wait for");

        let key = records::address_key("default", "chat", "settled");
        let row = row(7);
        let kv = &d.memory().kv;
        let job = Job {
            rows: Arc::new(HashMap::from([(key.clone(), Some(Arc::new(row)))])),
            cas: Arc::new(HashMap::new()),
            applied: kv.applied_seq().expect("applied"),
            durable: false,
            access: HashMap::new(),
            docs: Vec::new(),
        };
        settler.send(job).expect("send");
        let started = Instant::now();
        while settler.busy() {
            assert!(started.elapsed() < Duration::from_secs(30), "the settler never finished a one-row job");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!settler.busy(), "a finished job stays finished");

        // `wait` runs on another thread so that a lost outcome fails the test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let first = settler.wait().map_err(|e| e.message);
            let second = settler.wait().map_err(|e| e.message);
            let _ = tx.send((first, second));
        });
        let (first, second) =
            rx.recv_timeout(Duration::from_secs(30)).expect("wait returned the outcome busy had seen");
        assert_eq!(first, Ok(()));
        assert_eq!(second, Ok(()), "nothing is in flight after the wait");
        let stored = kv.record(&key).expect("read").expect("the job's row is stored");
        assert_eq!((stored.version, stored.content_sha256), (1, [7; 32]));
    }
}
