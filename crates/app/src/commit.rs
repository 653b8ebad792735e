//! The commit thread: the single writer of the ledger and of the state derived from it.
//!
//! Operations arrive on a bounded queue. The thread drains what is waiting into one batch,
//! lets the [`StateMachine`] validate each operation against current state (earlier
//! operations and batches not yet applied included) and turn it into ledger entries, writes
//! all entries with one `fdatasync` (group commit), applies the effects, and only then
//! answers the callers. So an acknowledged operation is always in the ledger, and the ledger
//! is the write-ahead log the state is rebuilt from after a crash.
//!
//! The `fdatasync` runs on a second thread, so the disk and the commit thread work at once:
//!
//! ```text
//! commit thread:  prepare N+1 | wait | publish N, write N+1 | apply N, answer N | prepare N+2 | wait ...
//! fsync thread:   [ fdatasync N ......]                     [ fdatasync N+1 ...............]
//! ```
//!
//! One batch is on disk unsynced at a time. If its sync fails, the segment is cut back, the
//! batch and the one prepared behind it are refused, and the state forgets both.

use crate::clock::Clock;
use crate::error::{AppError, AppResult};
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_store::StoreError;
use daena_store::ledger::{LedgerWriter, Receipt, Syncer, Written};
use ed25519_dalek::SigningKey;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// An operation for the commit thread. Each capability adds its variants.
#[derive(Debug)]
pub enum Op {
    /// Plain ledger entries: governance events with no state to change.
    Append(Vec<NewEntry>),
    /// Entries that must be the very first of the ledger (a legacy genesis).
    Genesis(Vec<NewEntry>),
    /// A memory mutation.
    Memory(Box<crate::memory::state::MemoryOp>),
    /// A cache store or eviction.
    Cas(Box<crate::cas::CasOp>),
}

/// What the commit thread needs from the state it maintains.
pub trait StateMachine: Send + 'static {
    /// Validates `op` against current state plus every operation prepared and not yet
    /// applied, and returns its entries. An error rejects only this operation and stages
    /// nothing.
    fn prepare(&mut self, op: &mut Op) -> AppResult<Vec<NewEntry>>;
    /// The operations prepared since the last call form one batch; `apply` takes batches
    /// in this order.
    fn end_batch(&mut self) {}
    /// The oldest batch not yet applied is durable: apply its operations with their receipts.
    fn apply(&mut self, batch: Vec<(Op, Vec<Receipt>)>) -> AppResult<()>;
    /// A batch could not be made durable: forget everything prepared and not applied.
    fn abort(&mut self);
    /// Re-applies an entry found in the ledger after `applied_seq` (crash recovery).
    fn replay(&mut self, entry: &Entry) -> AppResult<()>;
    /// The highest sequence number whose effects are in the state.
    fn applied_seq(&self) -> u64;
    /// Writes state kept in memory to the store, so scans see it (not necessarily durable).
    fn settle(&mut self) -> AppResult<()> {
        Ok(())
    }
    /// Makes applied state durable and returns when it is (at shutdown and before copies).
    fn flush(&mut self) -> AppResult<()>;
    /// Starts making applied state durable without waiting for it (called every second).
    fn flush_background(&mut self) -> AppResult<()> {
        self.flush()
    }
}

/// A state machine with no state: every operation is just its entries.
#[derive(Debug, Default)]
pub struct NoState;

impl StateMachine for NoState {
    fn prepare(&mut self, op: &mut Op) -> AppResult<Vec<NewEntry>> {
        match op {
            Op::Append(entries) | Op::Genesis(entries) => Ok(std::mem::take(entries)),
            Op::Memory(_) | Op::Cas(_) => {
                Err(AppError::internal("a memory operation reached a commit thread without memory"))
            }
        }
    }
    fn apply(&mut self, _: Vec<(Op, Vec<Receipt>)>) -> AppResult<()> {
        Ok(())
    }
    fn abort(&mut self) {}
    fn replay(&mut self, _: &Entry) -> AppResult<()> {
        Ok(())
    }
    fn applied_seq(&self) -> u64 {
        0
    }
    fn flush(&mut self) -> AppResult<()> {
        Ok(())
    }
}

/// Work run on the commit thread with the state machine.
type ExclusiveJob = Box<dyn FnOnce(&mut dyn StateMachine) + Send>;

enum Msg {
    Job(Op, oneshot::Sender<AppResult<Vec<Receipt>>>),
    /// Wake up for time-based work (checkpoints, state flushes).
    Tick,
    /// Checkpoint now and answer with it.
    Checkpoint(oneshot::Sender<AppResult<daena_core::ledger::Checkpoint>>),
    /// Run `f` with exclusive access to the state machine, between batches.
    Exclusive(ExclusiveJob),
    Shutdown(oneshot::Sender<AppResult<()>>),
}

/// How often checkpoints and state flushes happen.
#[derive(Debug, Clone)]
pub struct CommitPolicy {
    pub checkpoint_every_entries: u64,
    pub checkpoint_every: Duration,
    pub flush_every: Duration,
}

/// The handle to the commit thread.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Msg>,
    thread: Arc<parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>>,
    alive: Arc<AtomicBool>,
    /// What the group commit has written, for metrics.
    pub stats: Arc<CommitStats>,
}

/// Totals since start of the batches the commit thread wrote. Ratios of their increases give
/// the batch size (`ops / batches`) and the disk time per batch (`write_micros / batches`).
#[derive(Debug, Default)]
pub struct CommitStats {
    pub batches: AtomicU64,
    /// Operations acknowledged in those batches.
    pub ops: AtomicU64,
    /// Microseconds spent writing and `fdatasync`ing those batches.
    pub write_micros: AtomicU64,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("alive", &self.alive.load(Ordering::Relaxed)).finish()
    }
}

const QUEUE: usize = 8192;
const MAX_BATCH: usize = 2048;

impl Committer {
    pub fn start(
        writer: LedgerWriter,
        state: Box<dyn StateMachine>,
        key: SigningKey,
        clock: Arc<dyn Clock>,
        policy: CommitPolicy,
    ) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let alive = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(CommitStats::default());
        let worker = Worker {
            writer,
            state,
            key,
            clock,
            policy,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_flush: Instant::now(),
            stats: stats.clone(),
            fsync: FsyncThread::start(),
            in_flight: None,
        };
        let alive2 = alive.clone();
        let spawned = std::thread::Builder::new().name("daena-commit".into()).spawn(move || {
            worker.run(rx);
            alive2.store(false, Ordering::SeqCst);
        });
        let thread = match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the commit thread");
                alive.store(false, Ordering::SeqCst);
                None
            }
        };
        // A ticker so checkpoints and flushes happen even when no writes arrive.
        let tick_tx = tx.clone();
        let _ = std::thread::Builder::new().name("daena-commit-tick".into()).spawn(move || {
            while tick_tx.blocking_send(Msg::Tick).is_ok() {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Committer { tx, thread: Arc::new(parking_lot::Mutex::new(thread)), alive, stats }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn gone() -> AppError {
        AppError::unavailable("the commit thread has stopped; the service is shutting down or failed (see the log)")
    }

    /// Submits an operation and waits until it is durable (or rejected).
    pub async fn submit(&self, op: Op) -> AppResult<Vec<Receipt>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Job(op, reply)).await.map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())?
    }

    /// Queues plain entries without waiting for them (used while opening, before any
    /// runtime exists). Failures are logged by the commit thread.
    pub fn append_detached(&self, entries: Vec<NewEntry>) {
        let (reply, _) = oneshot::channel();
        if self.tx.try_send(Msg::Job(Op::Append(entries), reply)).is_err() {
            tracing::warn!("could not queue a ledger entry while opening");
        }
    }

    /// Appends plain entries durably.
    pub async fn append(&self, entries: Vec<NewEntry>) -> AppResult<Vec<Receipt>> {
        self.submit(Op::Append(entries)).await
    }

    /// Signs a checkpoint of the current size now.
    pub async fn checkpoint(&self) -> AppResult<daena_core::ledger::Checkpoint> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Checkpoint(reply)).await.map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())?
    }

    /// Runs `f` on the commit thread with the state machine, between batches.
    pub async fn exclusive<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn StateMachine) -> R + Send + 'static,
    ) -> AppResult<R> {
        let (reply, rx) = oneshot::channel();
        let job: ExclusiveJob = Box::new(move |sm| {
            let _ = reply.send(f(sm));
        });
        self.tx.send(Msg::Exclusive(job)).await.map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())
    }

    /// Final checkpoint and state flush; the thread exits afterwards.
    pub async fn shutdown(&self) -> AppResult<()> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(reply)).await.is_err() {
            return Ok(());
        }
        let result = rx.await.unwrap_or(Ok(()));
        // Wait until the thread has let go of the stores, so the data directory can be
        // reopened at once.
        let handle = self.thread.lock().take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        result
    }
}

struct Worker {
    writer: LedgerWriter,
    state: Box<dyn StateMachine>,
    key: SigningKey,
    clock: Arc<dyn Clock>,
    policy: CommitPolicy,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_flush: Instant,
    stats: Arc<CommitStats>,
    fsync: FsyncThread,
    /// The batch written and being synced.
    in_flight: Option<InFlight>,
}

type Reply = oneshot::Sender<AppResult<Vec<Receipt>>>;

/// An accepted operation: its reply, and where its entries sit in the batch.
struct Accepted {
    op: Op,
    reply: Reply,
    start: usize,
    len: usize,
}

/// A batch prepared by the state machine, not yet written.
struct Prepared {
    accepted: Vec<Accepted>,
    entries: Vec<NewEntry>,
}

struct InFlight {
    written: Written,
    accepted: Vec<Accepted>,
    write_micros: u64,
}

fn refuse(accepted: Vec<Accepted>, why: &str) {
    for a in accepted {
        let _ = a.reply.send(Err(AppError::internal(why.to_owned())));
    }
}

fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The thread that runs `fdatasync` for the commit thread: one request at a time, answered
/// with the result and the microseconds it took. Without it (it could not start) the commit
/// thread syncs inline.
struct FsyncThread {
    pipe: Option<(std::sync::mpsc::Sender<Syncer>, std::sync::mpsc::Receiver<(Result<(), StoreError>, u64)>)>,
    /// A sync to run inline at `wait`.
    inline: Option<Syncer>,
}

impl FsyncThread {
    fn start() -> FsyncThread {
        let (req_tx, req_rx) = std::sync::mpsc::channel::<Syncer>();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name("daena-fsync".into()).spawn(move || {
            while let Ok(syncer) = req_rx.recv() {
                let started = Instant::now();
                let result = syncer.sync();
                if done_tx.send((result, micros_since(started))).is_err() {
                    return;
                }
            }
        });
        match spawned {
            Ok(_) => FsyncThread { pipe: Some((req_tx, done_rx)), inline: None },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the fsync thread; the commit thread syncs itself");
                FsyncThread { pipe: None, inline: None }
            }
        }
    }

    fn start_sync(&mut self, syncer: Syncer) {
        match &self.pipe {
            Some((tx, _)) => {
                if let Err(back) = tx.send(syncer) {
                    self.pipe = None;
                    self.inline = Some(back.0);
                }
            }
            None => self.inline = Some(syncer),
        }
    }

    fn wait(&mut self) -> (Result<(), StoreError>, u64) {
        if let Some(syncer) = self.inline.take() {
            let started = Instant::now();
            return (syncer.sync(), micros_since(started));
        }
        match &self.pipe {
            Some((_, rx)) => rx.recv().unwrap_or_else(|_| (Err(StoreError::Db("the fsync thread stopped".into())), 0)),
            None => (Err(StoreError::Db("no ledger sync was started".into())), 0),
        }
    }
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            // Block for work only when no batch is syncing; otherwise take what is waiting
            // and, if nothing is, finish the batch in flight.
            let first = if self.in_flight.is_some() {
                match rx.try_recv() {
                    Ok(msg) => Some(msg),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.complete(None);
                        self.timed_work();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            } else {
                rx.blocking_recv()
            };
            let Some(msg) = first else { break };
            let mut jobs = Vec::new();
            let mut pending = Some(msg);
            while let Some(msg) = pending.take() {
                match msg {
                    Msg::Job(op, reply) => jobs.push((op, reply)),
                    Msg::Tick => {}
                    Msg::Checkpoint(reply) => {
                        self.drain(std::mem::take(&mut jobs));
                        let _ = reply.send(self.checkpoint());
                    }
                    Msg::Exclusive(f) => {
                        self.drain(std::mem::take(&mut jobs));
                        f(self.state.as_mut());
                    }
                    Msg::Shutdown(reply) => {
                        self.drain(std::mem::take(&mut jobs));
                        let result = self.checkpoint().map(|_| ()).and_then(|()| self.state.flush());
                        let _ = reply.send(result);
                        return;
                    }
                }
                if jobs.len() < MAX_BATCH {
                    pending = rx.try_recv().ok();
                }
            }
            let next = self.prepare(jobs);
            self.complete(next);
            self.timed_work();
        }
        // Every sender is gone: flush what we have.
        self.drain(Vec::new());
        if let Err(e) = self.checkpoint().map(|_| ()).and_then(|()| self.state.flush()) {
            tracing::error!(error = %e.message, "final checkpoint or flush failed");
        }
    }

    /// Commits `jobs` and everything in flight, and returns when all of it is answered.
    fn drain(&mut self, jobs: Vec<(Op, Reply)>) {
        let next = self.prepare(jobs);
        self.complete(next);
        self.complete(None);
    }

    /// Lets the state machine validate each job; the accepted ones form the next batch.
    fn prepare(&mut self, jobs: Vec<(Op, Reply)>) -> Option<Prepared> {
        let mut entries = Vec::new();
        let mut accepted = Vec::with_capacity(jobs.len());
        for (mut op, reply) in jobs {
            if matches!(op, Op::Genesis(_)) && (self.writer.size() > 0 || !entries.is_empty()) {
                let _ = reply.send(Err(AppError::invalid(
                    "a genesis entry must be the first of the ledger; this ledger already has entries",
                )));
                continue;
            }
            match self.state.prepare(&mut op) {
                Ok(es) => {
                    accepted.push(Accepted { op, reply, start: entries.len(), len: es.len() });
                    entries.extend(es);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return None;
        }
        self.state.end_batch();
        Some(Prepared { accepted, entries })
    }

    /// Waits for the batch in flight to be durable and publishes it, writes `next` and
    /// starts its sync, then applies and answers the finished batch.
    fn complete(&mut self, next: Option<Prepared>) {
        let finished = match self.in_flight.take() {
            None => None,
            Some(f) => {
                let (synced, sync_micros) = self.fsync.wait();
                if let Err(e) = synced {
                    self.writer.discard_unsynced();
                    self.state.abort();
                    tracing::error!(error = %e, "ledger sync failed; the batch is refused");
                    let why = format!("ledger append failed: {e}");
                    refuse(f.accepted, &why);
                    if let Some(next) = next {
                        refuse(next.accepted, &why);
                    }
                    return;
                }
                let ops = f.accepted.len() as u64;
                let receipts = self.writer.publish(f.written);
                self.stats.write_micros.fetch_add(f.write_micros + sync_micros, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.ops.fetch_add(ops, Ordering::Relaxed);
                self.since_checkpoint += receipts.len() as u64;
                Some((f.accepted, receipts))
            }
        };
        // Nothing is unsynced between publishing one batch and writing the next.
        self.checkpoint_if_due();
        let mut refused = None;
        if let Some(next) = next {
            let started = Instant::now();
            match self.writer.write(&next.entries, self.clock.now()) {
                Ok(written) => {
                    self.fsync.start_sync(written.syncer());
                    let write_micros = micros_since(started);
                    self.in_flight = Some(InFlight { written, accepted: next.accepted, write_micros });
                }
                Err(e) => refused = Some((next.accepted, e)),
            }
        }
        if let Some((accepted, receipts)) = finished {
            let mut batch = Vec::with_capacity(accepted.len());
            let mut replies = Vec::with_capacity(accepted.len());
            for a in accepted {
                let r = receipts[a.start..a.start + a.len].to_vec();
                replies.push((a.reply, r.clone()));
                batch.push((a.op, r));
            }
            if let Err(e) = self.state.apply(batch) {
                // The entries are durable; the next start replays them into the state.
                tracing::error!(error = %e.message, "applying a durable batch to the state failed; restart to replay it");
            }
            for (reply, r) in replies {
                let _ = reply.send(Ok(r));
            }
        }
        if let Some((accepted, e)) = refused {
            // Only the unwritten batch is still prepared and unapplied now.
            self.state.abort();
            tracing::error!(error = %e, "ledger append failed; the batch is refused");
            refuse(accepted, &format!("ledger append failed: {e}"));
        }
    }

    fn checkpoint_if_due(&mut self) {
        let due = self.since_checkpoint >= self.policy.checkpoint_every_entries
            || (self.since_checkpoint > 0 && self.last_checkpoint.elapsed() >= self.policy.checkpoint_every);
        if due
            && !self.writer.has_unsynced()
            && let Err(e) = self.checkpoint()
        {
            tracing::warn!(error = %e.message, "checkpoint failed");
        }
    }

    fn timed_work(&mut self) {
        self.checkpoint_if_due();
        if self.last_flush.elapsed() >= self.policy.flush_every {
            if let Err(e) = self.state.flush_background() {
                tracing::warn!(error = %e.message, "state flush failed");
            }
            self.last_flush = Instant::now();
        }
    }

    fn checkpoint(&mut self) -> AppResult<daena_core::ledger::Checkpoint> {
        let cp = self.writer.checkpoint(&self.key, self.clock.now())?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(cp)
    }
}

impl Committer {
    /// Waits until state the commit thread keeps in memory is in the store (before scans).
    pub async fn settle(&self) -> AppResult<()> {
        self.exclusive(|sm| sm.settle()).await?
    }
}
