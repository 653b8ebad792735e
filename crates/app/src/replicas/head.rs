//! Reads that skip the barrier's PostgreSQL round trip.
//!
//! Every replica publishes the chain's head to Redis once a batch it appended commits, before
//! answering its callers. A read arriving later finds a head in Redis at least that batch's; if
//! this replica has applied that far, the read is answered at once, without asking PostgreSQL
//! and without waiting for the commit thread. Otherwise, or when Redis does not answer, the
//! read waits for the barrier as before.
//!
//! A batch whose head could not be published (Redis down for its replica, or a replica without
//! `storage.redis_url`) must not be missed by a replica that trusts Redis: its replica raises
//! the fence in PostgreSQL ([`HeadFence`]) and waits until every lease taken before the fence
//! went up has run out. A replica trusts Redis only under a lease: the barrier's PostgreSQL
//! read, started less than [`LEASE`] ago, found the fence down. So a read either sees the
//! batch's head in Redis, or its replica's lease started after the batch committed and its
//! catch-up already applied it. The fence is lowered by [`ChainHead::resync`] once Redis
//! answers and nobody touched it for [`QUIET`].
//!
//! Redis itself may lose a head it acknowledged (restarted from an older snapshot, or failed
//! over to a lagging copy). Either breaks this replica's connections or reaches another server
//! process, which changes [`SharedLimits::generation`]; the head is then not trusted until a
//! lease renewal has published the chain's newest position, read from PostgreSQL, again.

use daena_store::pg::HeadFence;
use daena_store::redis_limits::SharedLimits;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long a PostgreSQL read that found the fence down lets a replica trust Redis's head.
pub const LEASE: Duration = Duration::from_secs(1);
/// How long the fence stays up after the last batch that touched it.
pub const QUIET: Duration = Duration::from_secs(5);
/// Margin for clocks that run at slightly different rates on different machines.
const MARGIN: Duration = Duration::from_millis(100);

/// How reads were let through, since start (`/metrics`).
#[derive(Debug, Default)]
pub struct HeadStats {
    /// Answered on Redis's head.
    pub by_redis: AtomicU64,
    /// Waited for the barrier (PostgreSQL).
    pub by_postgres: AtomicU64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A request waiting to learn whether it may skip the barrier.
type Ask = oneshot::Sender<bool>;
/// Requests that may wait for the head at once (more take the barrier).
const ASKS: usize = 4096;

/// The head reader: takes every request waiting, reads the head once, answers them all.
fn read_heads(me: &std::sync::Weak<ChainHead>, mut asks: mpsc::Receiver<Ask>) {
    let mut waiting = Vec::new();
    while let Some(first) = asks.blocking_recv() {
        let Some(me) = me.upgrade() else { return };
        waiting.push(first);
        while let Ok(more) = asks.try_recv() {
            waiting.push(more);
        }
        let head = me.redis.as_ref().map(|r| r.head());
        // Read after the head: what the state held and the lease, at a time after every
        // waiting request arrived.
        let ok = matches!(head, Some(Ok(Some(head))) if me.applied.load(Ordering::Acquire) >= head) && me.trusted();
        for reply in waiting.drain(..) {
            let _ = reply.send(ok);
        }
    }
}

pub struct ChainHead {
    /// Requests for the head reader (with Redis).
    asks: Option<mpsc::Sender<Ask>>,
    redis: Option<Arc<SharedLimits>>,
    fence: HeadFence,
    started: Instant,
    /// The highest position whose effects the state holds (set by the commit thread).
    applied: AtomicU64,
    /// Until when Redis's head may be trusted, in microseconds since `started` (0: not).
    lease_until: AtomicU64,
    /// The state stopped following the chain: every read waits for the barrier (which fails).
    stalled: AtomicBool,
    /// Whether the last lease renewal found the fence up (or none happened yet).
    fence_seen: AtomicBool,
    /// When the fence was last read for a lease (microseconds since `started`).
    last_look: AtomicU64,
    /// The Redis generation ([`SharedLimits::generation`]) the chain's head was last published
    /// in by a lease renewal; the head is trusted only while Redis is still at it.
    synced: AtomicU64,
    /// When this replica last touched the fence (it skips touching it again within QUIET / 2).
    touched: parking_lot::Mutex<Option<Instant>>,
    pub stats: HeadStats,
}

impl std::fmt::Debug for ChainHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainHead").field("applied", &self.applied.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl ChainHead {
    /// The head of the deployment at `url`; with Redis, a thread reads it for waiting requests.
    pub fn new(url: &str, redis: Option<Arc<SharedLimits>>) -> Arc<ChainHead> {
        Arc::new_cyclic(|me| {
            let asks = redis.as_ref().and_then(|_| {
                let (tx, rx) = mpsc::channel(ASKS);
                let me = me.clone();
                let spawned = std::thread::Builder::new().name("daena-head".into()).spawn(move || read_heads(&me, rx));
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the thread that reads the head in Redis; reads take the barrier");
                        None
                    }
                }
            });
            ChainHead::with(url, redis, asks)
        })
    }

    fn with(url: &str, redis: Option<Arc<SharedLimits>>, asks: Option<mpsc::Sender<Ask>>) -> ChainHead {
        ChainHead {
            asks,
            redis,
            fence: HeadFence::open(url),
            started: Instant::now(),
            applied: AtomicU64::new(0),
            lease_until: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            fence_seen: AtomicBool::new(true),
            last_look: AtomicU64::new(0),
            synced: AtomicU64::new(u64::MAX),
            touched: parking_lot::Mutex::new(None),
            stats: HeadStats::default(),
        }
    }

    fn since_start(&self, at: Instant) -> u64 {
        micros(at.saturating_duration_since(self.started))
    }

    /// Whether a read arriving now may be answered without the barrier: under a lease, Redis's
    /// head is no further than what this replica has applied.
    /// Requests waiting together share one read of Redis, started after they all arrived.
    pub async fn current(&self) -> bool {
        let ok = match &self.asks {
            Some(asks) if self.trusted() => {
                let (reply, answer) = oneshot::channel();
                asks.try_send(reply).is_ok() && answer.await.unwrap_or(false)
            }
            _ => false,
        };
        let counter = if ok { &self.stats.by_redis } else { &self.stats.by_postgres };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    /// Under a lease, and following the chain.
    fn trusted(&self) -> bool {
        !self.stalled.load(Ordering::Acquire)
            && self.since_start(Instant::now()) < self.lease_until.load(Ordering::Acquire)
            && self.redis.as_ref().is_some_and(|r| r.generation() == self.synced.load(Ordering::Acquire))
    }

    /// What `/health` says of the head: whether reads trust it now, and why not.
    pub fn describe(&self) -> &'static str {
        if self.redis.is_none() {
            "reads take the barrier (a PostgreSQL query per group of reads)"
        } else if self.stalled.load(Ordering::Acquire) {
            "reads take the barrier: this replica stopped following the chain"
        } else if self.fence_seen.load(Ordering::Acquire) {
            "reads take the barrier: the fence over the chain head in Redis is up (a replica without Redis, or whose \
             Redis failed, wrote within the last seconds)"
        } else {
            "reads skip the barrier when the chain head in Redis says this replica is current"
        }
    }

    /// The state holds every entry up to `seq` (the commit thread, after applying).
    pub fn applied(&self, seq: u64) {
        self.applied.store(seq, Ordering::Release);
    }

    /// The state stopped following the chain.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::Release);
    }

    /// Whether it is time to renew the lease: it ends within half its length; while the fence
    /// is up, a quarter of a lease after the last look.
    pub fn lease_ending(&self) -> bool {
        let now = self.since_start(Instant::now());
        let next = if self.fence_seen.load(Ordering::Acquire) {
            self.last_look.load(Ordering::Acquire) + micros(LEASE / 4)
        } else {
            self.lease_until.load(Ordering::Acquire).saturating_sub(micros(LEASE / 2))
        };
        self.redis.is_some() && now >= next
    }

    /// Renews the lease after a catch-up with the chain that started at `started`: granted when
    /// the fence is down.
    ///
    /// After Redis failed or a connection reached another Redis process (a restart, a
    /// failover), its head may be missing or older than a batch already acknowledged: the
    /// chain's newest position is published again first, and the head is not trusted until then.
    pub fn renew(&self, started: Instant) {
        let Some(redis) = &self.redis else { return };
        self.last_look.store(self.since_start(Instant::now()), Ordering::Release);
        let generation = redis.generation();
        let raised = if generation == self.synced.load(Ordering::Acquire) {
            self.fence.is_raised()
        } else {
            self.fence.state(QUIET).and_then(|state| redis.publish_head(state.head).map(|_| state.raised)).inspect(
                |_| {
                    if redis.generation() == generation {
                        self.synced.store(generation, Ordering::Release);
                    }
                },
            )
        };
        let until = match raised {
            Ok(raised) => {
                self.fence_seen.store(raised, Ordering::Release);
                if raised { 0 } else { self.since_start(started + LEASE) }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the fence over the head in Redis failed; reads ask PostgreSQL");
                0
            }
        };
        self.lease_until.store(until, Ordering::Release);
    }

    /// A batch this replica appended committed, taking the chain to `head`: publishes it to
    /// Redis, or raises the fence and waits out the leases taken before it went up. Call
    /// before acknowledging the batch.
    pub fn committed(&self, head: u64) {
        if let Some(redis) = &self.redis {
            match redis.publish_head(head) {
                Ok(_) => return,
                Err(e) => tracing::debug!(error = %e, "publishing the chain's head to Redis failed; raising the fence"),
            }
        }
        let recently = (*self.touched.lock()).is_some_and(|t| t.elapsed() < QUIET / 2);
        if recently {
            // Touched within QUIET / 2: nobody can have lowered it since, and its wait is over.
            return;
        }
        let wait = match self.fence.raise(LEASE + MARGIN) {
            Ok(wait) => {
                *self.touched.lock() = Some(Instant::now());
                wait
            }
            // Without the fence, a lease taken before this batch committed runs out by then.
            Err(e) => {
                tracing::warn!(error = %e, "raising the fence over the head in Redis failed; waiting out the leases");
                LEASE + MARGIN
            }
        };
        std::thread::sleep(wait);
    }

    /// Periodic: when Redis answers and the fence has been quiet for [`QUIET`], or Redis
    /// holds no head (it restarted empty), publishes the chain's newest position and lowers
    /// the fence if nobody raised it since that position was read.
    pub fn resync(&self) {
        let Some(redis) = &self.redis else { return };
        let missing = match redis.head() {
            Ok(head) => head.is_none(),
            Err(_) => return,
        };
        if !missing && !self.fence_seen.load(Ordering::Acquire) {
            return;
        }
        let state = match self.fence.state(QUIET) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading the fence over the head in Redis failed");
                return;
            }
        };
        let lowerable = state.raised && state.quiet;
        if !missing && !lowerable {
            return;
        }
        if let Err(e) = redis.publish_head(state.head) {
            tracing::debug!(error = %e, "publishing the chain's head to Redis failed");
            return;
        }
        if lowerable {
            match self.fence.lower(state.epoch) {
                Ok(true) => tracing::info!(head = state.head, "Redis holds the chain's head again; reads trust it"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "lowering the fence over the head in Redis failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daena_store::pg::{self, TestDatabase};
    use daena_store::test_redis::TestRedis;

    /// After Redis restarts (its head gone), the head is not trusted, whatever the lease, until
    /// a renewal has published the chain's position again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_redis_is_not_trusted_until_the_head_is_published_again() {
        let db = TestDatabase::create();
        pg::migrate(&db.url).expect("migrate");
        let mut server = TestRedis::start();
        let redis = Arc::new(SharedLimits::new(&server.url, "daena:head-test").expect("client"));
        let head = ChainHead::new(&db.url, Some(redis.clone()));
        let fence = HeadFence::open(&db.url);
        let lower = || {
            let state = fence.state(Duration::ZERO).expect("state");
            assert!(fence.lower(state.epoch).expect("lower"));
        };
        tokio::task::block_in_place(lower);
        let renew = || tokio::task::block_in_place(|| head.renew(Instant::now()));
        renew();
        assert_eq!(redis.head().expect("head"), Some(0), "the first renewal published the chain's head");
        assert!(head.current().await, "under a lease, at the head");
        redis.publish_head(3).expect("publish");
        assert!(!head.current().await, "behind the head");
        head.applied(3);
        assert!(head.current().await);

        server.restart();
        assert!(!head.current().await, "the restart is seen: not trusted");
        while redis.is_down().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(redis.head().expect("the new server answers"), None);
        assert!(!head.current().await, "still the lease, but not trusted until published again");
        renew();
        assert_eq!(redis.head().expect("head"), Some(0), "published again from the chain");
        assert!(head.current().await);
    }
}
