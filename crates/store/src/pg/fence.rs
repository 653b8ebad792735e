//! The fence over the chain head kept in Redis.
//!
//! A replica may answer a read without asking PostgreSQL when Redis's head is no further than
//! what it has applied, but only while it holds a lease: a PostgreSQL read, no older than the
//! lease, that found this fence down. A replica that acknowledges a batch it could not publish
//! to Redis raises the fence first and waits until every lease taken before the fence went up
//! has run out, so no replica trusts a head that misses that batch. While the fence stays up
//! (touched by each such batch) readers ask PostgreSQL, as they do without Redis. Once Redis
//! answers again and nobody touched the fence for a while, any replica lowers it: it publishes
//! the chain's newest position, read in the same snapshot as the fence, then lowers the fence
//! only if nobody raised it since.

use super::{Conn, on, pg};
use crate::StoreError;
use parking_lot::Mutex;
use std::time::Duration;

/// The fence's state as one snapshot read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceState {
    pub raised: bool,
    pub epoch: i64,
    /// The chain's newest position in the same snapshot.
    pub head: u64,
    /// Whether nobody touched the fence for the quiet period asked for.
    pub quiet: bool,
}

pub struct HeadFence {
    conn: Mutex<Conn>,
}

impl std::fmt::Debug for HeadFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadFence").finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl HeadFence {
    /// The fence of the deployment at `url` (connects on first use).
    pub fn open(url: &str) -> HeadFence {
        HeadFence { conn: Mutex::new(Conn::new(url)) }
    }

    /// Raises the fence (or touches it when it is up) and answers how long to wait before
    /// acknowledging: until `lease` has passed since it went up, by PostgreSQL's clock.
    pub fn raise(&self, lease: Duration) -> Result<Duration, StoreError> {
        on(&self.conn, |c| {
            let row = c
                .query_one(
                    "update daena_head_fence set epoch = epoch + 1, touched_at = clock_timestamp(),
                       raised_at = case when raised then raised_at else clock_timestamp() end, raised = true
                     where id = 1
                     returning greatest(0, $1::int8 - (extract(epoch from clock_timestamp() - raised_at) * 1000000)::int8)",
                    &[&micros(lease)],
                )
                .map_err(pg("raising the fence over the head in Redis"))?;
            Ok(Duration::from_micros(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
        })
    }

    /// The fence and the chain's newest position, read in one snapshot; `quiet`: whether
    /// nobody touched the fence for `quiet_for`.
    pub fn state(&self, quiet_for: Duration) -> Result<FenceState, StoreError> {
        on(&self.conn, |c| {
            let row = c
                .query_one(
                    "select raised, epoch, (select coalesce(max(seq), 0) from daena_ledger),
                            touched_at < clock_timestamp() - $1::int8 * interval '1 microsecond'
                     from daena_head_fence where id = 1",
                    &[&micros(quiet_for)],
                )
                .map_err(pg("reading the fence over the head in Redis"))?;
            Ok(FenceState {
                raised: row.get(0),
                epoch: row.get(1),
                head: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                quiet: row.get(3),
            })
        })
    }

    /// Whether the fence is up (a lease is taken only while it is down).
    pub fn is_raised(&self) -> Result<bool, StoreError> {
        on(&self.conn, |c| {
            let row = c
                .query_one("select raised from daena_head_fence where id = 1", &[])
                .map_err(pg("reading the fence over the head in Redis"))?;
            Ok(row.get(0))
        })
    }

    /// Lowers the fence if it is still at `epoch` (nobody raised or touched it since the
    /// snapshot whose head was published); answers whether it did.
    pub fn lower(&self, epoch: i64) -> Result<bool, StoreError> {
        on(&self.conn, |c| {
            let n = c
                .execute("update daena_head_fence set raised = false where id = 1 and epoch = $1 and raised", &[&epoch])
                .map_err(pg("lowering the fence over the head in Redis"))?;
            Ok(n == 1)
        })
    }
}
