//! Redis, for replicas that share one deployment: GCRA rate-limit state kept in one place, so
//! a tenant's limit, and a client address's budget of failed authentications, hold for the
//! whole fleet. Each decision is one script run atomically
//! on the server, timed by the server's clock (replicas' clocks may differ).
//!
//! It also holds the shared chain's head as the replicas acknowledge it ([`SharedLimits::publish_head`]):
//! a read on a replica that has applied that far needs no PostgreSQL round trip
//! (`daena_app::replicas::head`).
//!
//! Redis is an accelerator here, never the only copy of anything: when it does not answer,
//! callers fall back to limits of their own and report it ([`SharedLimits::is_down`]); the
//! next call after [`RETRY_AFTER`] tries again.

use crate::StoreError;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a failed Redis is left alone before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest a decision waits for Redis.
const IO_TIMEOUT: Duration = Duration::from_millis(250);
/// Connections kept for reuse.
const POOL: usize = 16;

/// GCRA with the theoretical arrival time in Redis. ARGV: interval µs, window µs (burst ×
/// interval). Returns {allowed, remaining or retry_after µs, reset µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
-- A TAT more than a window ahead only comes from a clock that went back: a used-up burst.
local stored = tonumber(redis.call('GET', KEYS[1]) or '0')
local tat = math.min(stored, now + window)
if tat < stored then
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local start = math.max(tat, now)
local nxt = start + interval
if nxt - now > window then
  return {0, nxt - now - window, start - now}
end
redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', math.ceil((nxt - now) / 1000) + 1000)
return {1, math.floor((window - (nxt - now)) / interval), nxt - now}
";

/// Raises the head kept at KEYS[1] to ARGV[1]; never lowers it (replicas publish out of order).
const RAISE_HEAD: &str = r"
local new = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if cur < new then
  redis.call('SET', KEYS[1], ARGV[1])
  return new
end
return cur
";

/// What the shared limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDecision {
    Allow { remaining: u32, reset: i64 },
    Deny { retry_after: i64, reset: i64 },
}

pub struct SharedLimits {
    client: redis::Client,
    prefix: String,
    script: redis::Script,
    raise_head: redis::Script,
    head_key: String,
    pool: Mutex<Vec<redis::Connection>>,
    /// When the last failure happened.
    failed_at: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    /// The server process connections reached (`INFO server`'s run_id).
    run_id: Mutex<Option<String>>,
    generation: AtomicU64,
    pub failures: AtomicI64,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits").field("prefix", &self.prefix).finish()
    }
}

impl SharedLimits {
    /// Limits in the Redis at `url`, under keys starting with `prefix` (one per deployment).
    pub fn new(url: &str, prefix: &str) -> Result<SharedLimits, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Db(format!("Redis URL {}: {e}", crate::pg::redact_url(url))))?;
        Ok(SharedLimits {
            client,
            prefix: prefix.to_owned(),
            script: redis::Script::new(GCRA),
            raise_head: redis::Script::new(RAISE_HEAD),
            head_key: format!("{prefix}:head"),
            pool: Mutex::new(Vec::new()),
            failed_at: Mutex::new(None),
            last_error: Mutex::new(None),
            run_id: Mutex::new(None),
            generation: AtomicU64::new(0),
            failures: AtomicI64::new(0),
        })
    }

    /// Whether Redis failed within the last [`RETRY_AFTER`], with its error.
    pub fn is_down(&self) -> Option<String> {
        let failed = (*self.failed_at.lock()).is_some_and(|t| t.elapsed() < RETRY_AFTER);
        failed.then(|| self.last_error.lock().clone().unwrap_or_default())
    }

    fn connection(&self) -> Result<redis::Connection, redis::RedisError> {
        if let Some(c) = self.pool.lock().pop() {
            return Ok(c);
        }
        let mut c = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        c.set_read_timeout(Some(IO_TIMEOUT))?;
        c.set_write_timeout(Some(IO_TIMEOUT))?;
        // The server process this connection reached: another one than before (a restart or a
        // failover) may hold older data.
        let info: String = redis::cmd("INFO").arg("server").query(&mut c)?;
        let run = info.lines().find_map(|l| l.strip_prefix("run_id:")).map(|r| r.trim().to_owned());
        let mut seen = self.run_id.lock();
        if seen.is_some() && *seen != run {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        *seen = run;
        Ok(c)
    }

    /// Changes whenever Redis failed or a new connection reached another server process (a
    /// restart or a failover): what was written before may be gone or older.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn failed(&self, e: &redis::RedisError) -> StoreError {
        *self.failed_at.lock() = Some(Instant::now());
        *self.last_error.lock() = Some(e.to_string());
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        StoreError::Db(format!("Redis: {e}"))
    }

    /// Runs `f` on a pooled connection, unless Redis failed within [`RETRY_AFTER`].
    fn with<T>(&self, f: impl FnOnce(&mut redis::Connection) -> Result<T, redis::RedisError>) -> Result<T, StoreError> {
        if let Some(e) = self.is_down() {
            return Err(StoreError::Db(format!("Redis is down ({e}); retrying shortly")));
        }
        let mut conn = self.connection().map_err(|e| self.failed(&e))?;
        match f(&mut conn) {
            Ok(v) => {
                let mut pool = self.pool.lock();
                if pool.len() < POOL {
                    pool.push(conn);
                }
                *self.failed_at.lock() = None;
                Ok(v)
            }
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// Decides one request of `tenant` under a limit of one request per `interval` µs with
    /// bursts of `burst`.
    pub fn decide(&self, tenant: &str, interval: i64, burst: u32) -> Result<SharedDecision, StoreError> {
        self.spend(&format!("rl:{tenant}"), interval, burst)
    }

    /// Spends one failed authentication of `address` (its budget: one failure back per
    /// `interval` µs, `burst` at once); the answer carries the fleet's state of that budget.
    pub fn failed_auth(&self, address: &str, interval: i64, burst: u32) -> Result<SharedDecision, StoreError> {
        self.spend(&format!("fa:{address}"), interval, burst)
    }

    /// One GCRA decision on the budget kept under `<prefix>:<name>`.
    fn spend(&self, name: &str, interval: i64, burst: u32) -> Result<SharedDecision, StoreError> {
        let key = format!("{}:{name}", self.prefix);
        let window = interval.saturating_mul(i64::from(burst.max(1)));
        let out: Vec<i64> = self.with(|c| self.script.key(&key).arg(interval).arg(window).invoke(c))?;
        match out.as_slice() {
            [1, remaining, reset] => {
                Ok(SharedDecision::Allow { remaining: u32::try_from(*remaining).unwrap_or(0), reset: *reset })
            }
            [0, retry_after, reset] => Ok(SharedDecision::Deny { retry_after: *retry_after, reset: *reset }),
            other => Err(StoreError::Db(format!("Redis GCRA script answered {other:?}"))),
        }
    }

    /// Forgets `tenant`'s state: its (changed) limit starts from the whole burst.
    pub fn reset(&self, tenant: &str) -> Result<(), StoreError> {
        let key = format!("{}:rl:{tenant}", self.prefix);
        self.with(|c| redis::cmd("DEL").arg(&key).query::<i64>(c)).map(|_| ())
    }

    /// Raises the chain head kept in Redis to `head` (a position every replica has committed);
    /// answers the head kept afterwards.
    pub fn publish_head(&self, head: u64) -> Result<u64, StoreError> {
        self.with(|c| self.raise_head.key(&self.head_key).arg(head).invoke(c))
    }

    /// The chain head kept in Redis; `None` when nothing is (a Redis that restarted empty).
    pub fn head(&self) -> Result<Option<u64>, StoreError> {
        self.with(|c| redis::cmd("GET").arg(&self.head_key).query::<Option<u64>>(c))
    }

    /// Proves Redis answers (for `/health`).
    pub fn probe(&self) -> Result<(), StoreError> {
        *self.failed_at.lock() = None;
        self.with(|c| redis::cmd("PING").query::<String>(c)).map(|_| ())
    }
}
