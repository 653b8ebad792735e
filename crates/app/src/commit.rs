//! The commit thread: the single writer of the ledger and of the state derived from it.
//!
//! Operations arrive on a bounded queue. The thread drains what is waiting into one batch,
//! lets the [`StateMachine`] validate each operation against current state (earlier
//! operations of the same batch included) and turn it into ledger entries, appends all
//! entries with one `fdatasync` (group commit), applies the effects, and only then answers
//! the callers. So an acknowledged operation is always in the ledger, and the ledger is the
//! write-ahead log the state is rebuilt from after a crash.

use crate::clock::Clock;
use crate::error::{AppError, AppResult};
use crate::replicas::head::ChainHead;
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_core::time::Micros;
use daena_store::StoreError;
use daena_store::ledger::{LedgerAppend, Receipt};
use daena_store::state::{DocScope, StateRows};
use ed25519_dalek::SigningKey;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// An operation for the commit thread: plain entries, or an operation on the state machine's
/// state, whose type (`S`) the commit thread does not need to know.
#[derive(Debug)]
pub enum Op<S> {
    /// Plain ledger entries: events with no state to change.
    Append(Vec<NewEntry>),
    /// Entries that must be the very first of the ledger (a legacy genesis).
    Genesis(Vec<NewEntry>),
    /// A change to the state ([`crate::state::StateOp`] for the service).
    State(S),
}

/// What the commit thread needs from the state it maintains.
pub trait StateMachine: Send + 'static {
    /// The state's own operations.
    type Op: Send + 'static;
    /// Validates `op` against current state plus the batch so far and returns its entries.
    /// An error rejects only this operation.
    fn prepare(&mut self, op: &mut Op<Self::Op>) -> AppResult<Vec<NewEntry>>;
    /// The batch is durable: apply the accepted operations with their receipts.
    fn apply(&mut self, batch: Vec<(Op<Self::Op>, Vec<Receipt>)>) -> AppResult<()>;
    /// The batch could not be written: forget what `prepare` staged.
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
    /// `Ok(false)`: put off because the store is still busy; the commit thread asks again
    /// after its next batch or tick.
    fn flush_background(&mut self) -> AppResult<bool> {
        self.flush().map(|()| true)
    }
    /// The rows the prepared batch leaves in the state, for a ledger that keeps the state
    /// with its entries: `ops` are the accepted operations, each with the sequence number its
    /// first entry will get, and `ts` the batch's time.
    fn chain_rows(&mut self, _ops: &[(&Op<Self::Op>, u64)], _ts: Micros) -> AppResult<StateRows> {
        Ok(StateRows::default())
    }
    /// The documents such a ledger keeps (emptied before a rebuild from [`StateMachine::all_rows`]).
    fn kept_docs(&self) -> &'static [DocScope] {
        &[]
    }
    /// Every row of the applied state, a page at a time, to rebuild the state such a ledger
    /// keeps.
    fn all_rows(&mut self, _page: &mut dyn FnMut(StateRows) -> AppResult<()>) -> AppResult<()> {
        Ok(())
    }
}

/// A state machine with no state: every operation is just its entries.
#[derive(Debug, Default)]
pub struct NoState;

impl StateMachine for NoState {
    type Op = std::convert::Infallible;
    fn prepare(&mut self, op: &mut Op<Self::Op>) -> AppResult<Vec<NewEntry>> {
        match op {
            Op::Append(entries) | Op::Genesis(entries) => Ok(std::mem::take(entries)),
            Op::State(never) => match *never {},
        }
    }
    fn apply(&mut self, _: Vec<(Op<Self::Op>, Vec<Receipt>)>) -> AppResult<()> {
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
type ExclusiveJob<S> = Box<dyn FnOnce(&mut dyn StateMachine<Op = S>) + Send>;

/// Where an operation's outcome goes: its receipts once durable, or why it was refused.
type Reply = oneshot::Sender<AppResult<Vec<Receipt>>>;

enum Msg<S> {
    Job(Op<S>, Reply),
    /// Wake up for time-based work (checkpoints, state flushes).
    Tick,
    /// Checkpoint now and answer with it.
    Checkpoint(oneshot::Sender<AppResult<daena_core::ledger::Checkpoint>>),
    /// Run `f` with exclusive access to the state machine, between batches.
    Exclusive(ExclusiveJob<S>),
    /// Answer once the state holds every entry the shared ledger held when this arrived.
    Barrier(oneshot::Sender<AppResult<()>>),
    Shutdown(oneshot::Sender<AppResult<()>>),
}

/// How often checkpoints and state flushes happen.
#[derive(Debug, Clone)]
pub struct CommitPolicy {
    pub checkpoint_every_entries: u64,
    pub checkpoint_every: Duration,
    pub flush_every: Duration,
}

/// The handle to the commit thread of a state machine whose operations are `S`.
pub struct Committer<S> {
    tx: mpsc::Sender<Msg<S>>,
    thread: Arc<parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>>,
    alive: Arc<AtomicBool>,
    /// Whether other replicas extend the same ledger (reads then wait for a barrier).
    shared: bool,
    /// Replicas with Redis: the chain's head there lets reads skip the barrier.
    heads: Option<Arc<ChainHead>>,
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

impl<S> Clone for Committer<S> {
    fn clone(&self) -> Self {
        Committer {
            tx: self.tx.clone(),
            thread: self.thread.clone(),
            alive: self.alive.clone(),
            shared: self.shared,
            heads: self.heads.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Committer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").field("alive", &self.alive.load(Ordering::Relaxed)).finish()
    }
}

const QUEUE: usize = 8192;
const MAX_BATCH: usize = 2048;

impl<S: Send + 'static> Committer<S> {
    /// Starts the commit thread. `first` is committed before `start` returns, ahead of
    /// anything submitted later (facts a restore carried forward); its outcomes are logged.
    /// `heads`: a shared ledger's head in Redis ([`ChainHead`]).
    pub fn start(
        writer: Box<dyn LedgerAppend>,
        state: Box<dyn StateMachine<Op = S>>,
        key: SigningKey,
        clock: Arc<dyn Clock>,
        policy: CommitPolicy,
        first: Vec<Op<S>>,
        heads: Option<Arc<ChainHead>>,
    ) -> Committer<S> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let alive = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(CommitStats::default());
        let shared = writer.shared();
        let heads = heads.filter(|_| shared);
        let mut worker = Worker {
            heads: heads.clone(),
            last_resync: Instant::now(),
            stalled: None,
            last_catch_up: Instant::now(),
            writer,
            state,
            key,
            clock,
            policy,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            last_flush: Instant::now(),
            stats: stats.clone(),
        };
        if worker.writer.shared()
            && let Err(e) = worker.keep_state_at_start()
        {
            tracing::error!(error = %e.message, "could not check the state kept with the shared ledger; the next batch does");
        }
        worker.note_applied();
        if !first.is_empty() {
            let mut replies = Vec::new();
            let jobs = first
                .into_iter()
                .map(|op| {
                    let (reply, rx) = oneshot::channel();
                    replies.push(rx);
                    (op, reply)
                })
                .collect();
            worker.commit(jobs);
            for mut rx in replies {
                match rx.try_recv() {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::info!(error = %e.message, "a carried-forward fact was already in effect"),
                    Err(_) => tracing::warn!("a carried-forward fact got no answer"),
                }
            }
        }
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
        Committer { tx, thread: Arc::new(parking_lot::Mutex::new(thread)), alive, shared, heads, stats }
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn gone() -> AppError {
        AppError::unavailable("the commit thread has stopped; the service is shutting down or failed (see the log)")
    }

    /// Submits an operation and waits until it is durable (or rejected).
    pub async fn submit(&self, op: Op<S>) -> AppResult<Vec<Receipt>> {
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

    /// Returns once the state holds every entry the shared ledger held when called (a read
    /// barrier: what any replica acknowledged before is visible here after). Barriers that
    /// wait together share one read of the ledger. Immediate when the ledger is not shared.
    pub async fn barrier(&self) -> AppResult<()> {
        if !self.shared {
            return Ok(());
        }
        if let Some(h) = &self.heads
            && h.current().await
        {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Barrier(reply)).await.map_err(|_| Self::gone())?;
        rx.await.map_err(|_| Self::gone())?
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
        f: impl FnOnce(&mut dyn StateMachine<Op = S>) -> R + Send + 'static,
    ) -> AppResult<R> {
        let (reply, rx) = oneshot::channel();
        let job: ExclusiveJob<S> = Box::new(move |sm| {
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

struct Worker<S> {
    writer: Box<dyn LedgerAppend>,
    state: Box<dyn StateMachine<Op = S>>,
    key: SigningKey,
    clock: Arc<dyn Clock>,
    policy: CommitPolicy,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    last_flush: Instant,
    stats: Arc<CommitStats>,
    /// Why the state stopped following the shared ledger (an entry it could not apply):
    /// every operation is refused from then on.
    stalled: Option<AppError>,
    last_catch_up: Instant,
    heads: Option<Arc<ChainHead>>,
    last_resync: Instant,
}

impl<S: Send + 'static> Worker<S> {
    fn run(mut self, mut rx: mpsc::Receiver<Msg<S>>) {
        while let Some(msg) = rx.blocking_recv() {
            let mut jobs = Vec::new();
            let mut barriers = Vec::new();
            let mut pending = Some(msg);
            while let Some(msg) = pending.take() {
                match msg {
                    Msg::Job(op, reply) => jobs.push((op, reply)),
                    Msg::Tick => {}
                    Msg::Checkpoint(reply) => {
                        self.commit(std::mem::take(&mut jobs));
                        let _ = reply.send(self.checkpoint());
                    }
                    Msg::Exclusive(f) => {
                        self.commit(std::mem::take(&mut jobs));
                        f(self.state.as_mut());
                    }
                    Msg::Barrier(reply) => barriers.push(reply),
                    Msg::Shutdown(reply) => {
                        self.commit(std::mem::take(&mut jobs));
                        let result = self.checkpoint().map(|_| ()).and_then(|()| self.state.flush());
                        let _ = reply.send(result);
                        return;
                    }
                }
                if jobs.len() < MAX_BATCH {
                    pending = rx.try_recv().ok();
                }
            }
            self.commit(jobs);
            if !barriers.is_empty() {
                let outcome = self.catch_up();
                for reply in barriers {
                    let _ = reply.send(outcome.clone());
                }
            }
            self.timed_work();
        }
        // Every sender is gone: flush what we have.
        if let Err(e) = self.checkpoint().map(|_| ()).and_then(|()| self.state.flush()) {
            tracing::error!(error = %e.message, "final checkpoint or flush failed");
        }
    }

    /// Applies entries other replicas appended (already in the local ledger) to the state.
    fn replay_foreign(&mut self, entries: Vec<Entry>) -> AppResult<()> {
        if let Some(e) = &self.stalled {
            return Err(e.clone());
        }
        for entry in &entries {
            if let Err(e) = self.state.replay(entry) {
                tracing::error!(error = %e.message, "this replica cannot apply the shared ledger; it refuses operations until restarted with a version that can");
                self.stalled = Some(e.clone());
                if let Some(h) = &self.heads {
                    h.stall();
                }
                return Err(e);
            }
        }
        self.since_checkpoint += entries.len() as u64;
        self.note_applied();
        Ok(())
    }

    /// Tells reads how far the state goes.
    fn note_applied(&self) {
        if let Some(h) = &self.heads {
            h.applied(self.state.applied_seq());
        }
    }

    /// Brings the state up to the shared ledger's head (nothing to do when not shared).
    fn catch_up(&mut self) -> AppResult<()> {
        if !self.writer.shared() {
            return Ok(());
        }
        let started = Instant::now();
        let entries = self
            .writer
            .catch_up()
            .map_err(|e| AppError::unavailable(format!("the shared ledger cannot be read: {e}")))?;
        self.replay_foreign(entries)?;
        if let Some(h) = self.heads.as_ref().filter(|h| h.lease_ending()) {
            h.renew(started);
        }
        Ok(())
    }

    fn commit(&mut self, jobs: Vec<(Op<S>, Reply)>) {
        if jobs.is_empty() {
            return;
        }
        if self.writer.shared() {
            let taken = self
                .writer
                .begin()
                .map_err(|e| AppError::unavailable(format!("the shared ledger cannot be written: {e}")))
                .and_then(|entries| self.replay_foreign(entries));
            if let Err(e) = taken {
                self.writer.release();
                for (_, reply) in jobs {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        }
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
                    accepted.push((op, reply, entries.len(), es.len()));
                    entries.extend(es);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            self.state.abort();
            self.writer.release();
            return;
        }
        let now = self.clock.now();
        if self.writer.shared() {
            let from = self.writer.size();
            let ops: Vec<(&Op<S>, u64)> =
                accepted.iter().map(|(op, _, start, _)| (op, from + 1 + *start as u64)).collect();
            let staged = self
                .state
                .chain_rows(&ops, self.writer.batch_ts(now))
                .and_then(|rows| self.stage(&rows, from, from + entries.len() as u64));
            if let Err(e) = staged {
                self.state.abort();
                self.writer.release();
                tracing::error!(error = %e.message, "the batch's rows could not be written with it; the batch is refused");
                for (_, reply, _, _) in accepted {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        }
        let started = Instant::now();
        let receipts = match self.writer.append(&entries, now) {
            Ok(r) => r,
            Err(e) => {
                self.state.abort();
                tracing::error!(error = %e, "ledger append failed; the batch is refused");
                let refused = AppError::from(e);
                for (_, reply, _, _) in accepted {
                    let _ = reply.send(Err(refused.clone()));
                }
                return;
            }
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.write_micros.fetch_add(micros, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.ops.fetch_add(accepted.len() as u64, Ordering::Relaxed);
        self.since_checkpoint += receipts.len() as u64;
        let mut batch = Vec::with_capacity(accepted.len());
        let mut replies = Vec::with_capacity(accepted.len());
        for (op, reply, start, len) in accepted {
            let r = receipts[start..start + len].to_vec();
            replies.push((reply, r.clone()));
            batch.push((op, r));
        }
        if let Err(e) = self.state.apply(batch) {
            // The entries are durable; the next start replays them into the state.
            tracing::error!(error = %e.message, "applying a durable batch to the state failed; restart to replay it");
        }
        self.note_applied();
        if let Some(h) = &self.heads {
            h.committed(self.writer.size());
        }
        for (reply, r) in replies {
            let _ = reply.send(Ok(r));
        }
        if self.since_checkpoint >= self.policy.checkpoint_every_entries
            && let Err(e) = self.checkpoint()
        {
            tracing::warn!(error = %e.message, "checkpoint failed");
        }
    }

    /// Writes a batch's rows into the state the shared ledger keeps, moving it from entry
    /// `from` to `to`. A kept state elsewhere than `from` (a deployment whose chain predates
    /// it, or a rebuild that failed) is rebuilt from this replica's copy first, in the same
    /// transaction: the chain is taken, so that copy is the chain's state.
    fn stage(&mut self, rows: &StateRows, from: u64, to: u64) -> AppResult<()> {
        match self.writer.stage_state(rows, from, to) {
            Err(StoreError::Corrupt { detail, .. }) => {
                tracing::warn!(detail, "the state kept in PostgreSQL is not at the chain's head; rebuilding it");
                self.rebuild_kept_state()?;
                Ok(self.writer.stage_state(rows, from, to)?)
            }
            other => Ok(other?),
        }
    }

    /// Replaces the state kept with the shared ledger by this replica's (between `begin` and
    /// a commit).
    fn rebuild_kept_state(&mut self) -> AppResult<()> {
        let started = Instant::now();
        let size = self.writer.size();
        self.writer.clear_state(self.state.kept_docs())?;
        let writer = &mut self.writer;
        let mut written = 0usize;
        self.state.all_rows(&mut |rows| {
            written += rows.len();
            Ok(writer.stage_state(&rows, 0, 0)?)
        })?;
        self.writer.stage_state(&StateRows::default(), 0, size)?;
        tracing::info!(
            rows = written,
            entries = size,
            millis = started.elapsed().as_millis() as u64,
            "rebuilt the state kept in PostgreSQL from this replica's copy"
        );
        Ok(())
    }

    /// At start: takes the shared ledger, catches up, and rebuilds the state kept with it
    /// when that is not at the chain's head (the first start after an upgrade).
    fn keep_state_at_start(&mut self) -> AppResult<()> {
        let foreign = self.writer.begin()?;
        let kept = self.replay_foreign(foreign).and_then(|()| Ok(self.writer.kept_state()?));
        match kept {
            Ok(at) if at != self.writer.size() => {
                let rebuilt = self.rebuild_kept_state().and_then(|()| Ok(self.writer.commit_state()?));
                if rebuilt.is_err() {
                    self.writer.release();
                }
                rebuilt
            }
            other => {
                self.writer.release();
                other.map(|_| ())
            }
        }
    }

    fn timed_work(&mut self) {
        // Replicas follow each other's writes between reads too (L1 and governance stay fresh).
        if self.writer.shared() && self.last_catch_up.elapsed() >= Duration::from_millis(500) {
            self.last_catch_up = Instant::now();
            if let Err(e) = self.catch_up() {
                tracing::warn!(error = %e.message, "catching up with the shared ledger failed");
            }
            if let Err(e) = self.writer.adopt_checkpoints(&self.key.verifying_key()) {
                tracing::warn!(error = %e, "adopting the other replicas' checkpoints failed");
            }
        }
        if let Some(h) = self.heads.as_ref().filter(|_| self.last_resync.elapsed() >= Duration::from_secs(1)) {
            self.last_resync = Instant::now();
            h.resync();
        }
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.policy.checkpoint_every
            && let Err(e) = self.checkpoint()
        {
            tracing::warn!(error = %e.message, "checkpoint failed");
        }
        if self.last_flush.elapsed() >= self.policy.flush_every {
            match self.state.flush_background() {
                Ok(true) => self.last_flush = Instant::now(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e.message, "state flush failed");
                    self.last_flush = Instant::now();
                }
            }
        }
    }

    fn checkpoint(&mut self) -> AppResult<daena_core::ledger::Checkpoint> {
        let cp = self.writer.checkpoint(&self.key, self.clock.now())?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(cp)
    }
}

impl<S: Send + 'static> Committer<S> {
    /// Waits until state the commit thread keeps in memory is in the store (before scans).
    pub async fn settle(&self) -> AppResult<()> {
        self.exclusive(|sm| sm.settle()).await?
    }
}
