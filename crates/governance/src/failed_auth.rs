//! Failed authentication per client address: a key guesser gets a small budget of wrong keys,
//! then 429 with `Retry-After` before any key lookup happens.
//!
//! Each address has a GCRA budget of failures (`rate_limit.failed_auth_burst` at once,
//! refilling at `rate_limit.failed_auth_per_minute`); only a presented key that is unknown or
//! revoked spends it. Requests without a key cost no lookup and are not counted. IPv6
//! addresses count per /64, the block a single host is usually given.
//!
//! Replicas sharing a deployment spend one budget per address in Redis
//! ([`FailedAuth::shared_by`]): each failure is decided there, and the replica keeps the
//! fleet's answer, so its own checks refuse without asking Redis. A guesser spread over N
//! replicas therefore gets the burst once, plus at most one attempt per other replica (the
//! failure that tells that replica the budget is spent). Redis not answering: each replica
//! keeps its own budget until it is back.
//!
//! The check sits on every request that carries a key, so it is free while nobody fails:
//! a count of tracked addresses lets the check skip the map when it is empty. The map is
//! bounded: a full shard first drops addresses whose budget is whole again, then the one
//! closest to being whole.

use daena_base::clock::Clock;
use daena_base::config::RateLimitConfig;
use daena_core::gcra::{self, Decision, Limit};
#[cfg(feature = "shared")]
use daena_store::redis_limits::{SharedDecision, SharedLimits};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const SHARDS: usize = 16;
/// Addresses tracked per shard; 16 × 8192 = 131k addresses, about 4 MiB.
const SHARD_CAP: usize = 8192;

/// The answer for an address that spent its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Whole seconds until one more attempt fits (at least 1).
    pub retry_after_secs: u64,
}

pub struct FailedAuth {
    limit: Option<Limit>,
    shards: Vec<Mutex<HashMap<u128, i64>>>,
    tracked: AtomicUsize,
    clock: Arc<dyn Clock>,
    failures: AtomicU64,
    refused: AtomicU64,
    /// The fleet's budgets, when replicas share them through Redis.
    #[cfg(feature = "shared")]
    shared: Option<Arc<SharedLimits>>,
}

impl std::fmt::Debug for FailedAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedAuth").field("limit", &self.limit).finish()
    }
}

/// An address as the map keys it: IPv4 (and IPv4-mapped IPv6) whole, IPv6 by its /64.
fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => u128::from(v6) & !u128::from(u64::MAX),
        },
    }
}

impl FailedAuth {
    pub fn new(cfg: &RateLimitConfig, clock: Arc<dyn Clock>) -> FailedAuth {
        let limit = (cfg.failed_auth_burst > 0)
            .then(|| Limit { rpm: cfg.failed_auth_per_minute.max(1), burst: cfg.failed_auth_burst });
        FailedAuth {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            tracked: AtomicUsize::new(0),
            clock,
            failures: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            #[cfg(feature = "shared")]
            shared: None,
        }
    }

    /// Spends failures in the budgets the replicas share, when there are any.
    #[cfg(feature = "shared")]
    pub fn shared_by(mut self, shared: Option<Arc<SharedLimits>>) -> Self {
        self.shared = shared;
        self
    }

    fn shard(&self, key: u128) -> &Mutex<HashMap<u128, i64>> {
        let folded = (key >> 64) as u64 ^ key as u64;
        &self.shards[(folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS]
    }

    /// Whether `ip` may try a key now; `Err` when its failures used up the budget. Does not
    /// spend anything.
    pub fn check(&self, ip: IpAddr) -> Result<(), Throttled> {
        let Some(limit) = self.limit else { return Ok(()) };
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let key = address_key(ip);
        let now = self.clock.now().0;
        let tat = self.shard(key).lock().get(&key).copied();
        match gcra::decide(limit, tat, now).0 {
            Decision::Allow { .. } => Ok(()),
            Decision::Deny { retry_after, .. } => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(Throttled { retry_after_secs: (retry_after.max(0) as u64).div_ceil(1_000_000).max(1) })
            }
        }
    }

    /// Spends one failure of `ip`'s budget.
    pub fn failed(&self, ip: IpAddr) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let Some(limit) = self.limit else { return };
        let key = address_key(ip);
        // The fleet's budget after this failure, when replicas share it and Redis answers.
        let fleet = self.fleet_failure(key, limit);
        let now = self.clock.now().0;
        let mut shard = self.shard(key).lock();
        let tat = shard.get(&key).copied();
        if tat.is_none() && shard.len() >= SHARD_CAP {
            self.make_room(&mut shard, now);
        }
        let next = match fleet {
            Some(reset) => Some(tat.unwrap_or(now).max(now.saturating_add(reset))),
            // A denial leaves the state as it was: the address is already out of budget.
            None => gcra::decide(limit, tat, now).1,
        };
        if let Some(next) = next
            && shard.insert(key, next).is_none()
        {
            self.tracked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spends one failure of the address keyed `key` in the fleet's budget; its state after
    /// that, as µs from now (Redis's clock decides). `None` alone, or when Redis does not
    /// answer.
    #[cfg(feature = "shared")]
    fn fleet_failure(&self, key: u128, limit: Limit) -> Option<i64> {
        let shared = self.shared.as_ref()?;
        match shared.failed_auth(&format!("{key:x}"), limit.interval(), limit.burst).ok()? {
            SharedDecision::Allow { reset, .. } | SharedDecision::Deny { reset, .. } => Some(reset),
        }
    }

    #[cfg(not(feature = "shared"))]
    fn fleet_failure(&self, _key: u128, _limit: Limit) -> Option<i64> {
        None
    }

    /// Drops addresses whose budget is whole again; if none is, the one nearest to it.
    fn make_room(&self, shard: &mut HashMap<u128, i64>, now: i64) {
        let before = shard.len();
        shard.retain(|_, tat| *tat > now);
        if shard.len() == before
            && let Some(key) = shard.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k)
        {
            shard.remove(&key);
        }
        self.tracked.fetch_sub(before - shard.len(), Ordering::Relaxed);
    }

    /// Forgets addresses whose budget is whole again; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now().0;
        let mut dropped = 0;
        for shard in &self.shards {
            let mut shard = shard.lock();
            let before = shard.len();
            shard.retain(|_, tat| *tat > now);
            dropped += before - shard.len();
        }
        self.tracked.fetch_sub(dropped, Ordering::Relaxed);
        dropped
    }

    /// Failed attempts (unknown or revoked keys) since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Requests refused with 429 because their address spent its budget, since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Addresses with failures still counting against them.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daena_base::clock::ManualClock;
    use daena_core::time::Micros;

    fn guard(per_minute: u32, burst: u32) -> (Arc<ManualClock>, FailedAuth) {
        let clock = ManualClock::new(Micros(1_000_000_000));
        let cfg =
            RateLimitConfig { failed_auth_per_minute: per_minute, failed_auth_burst: burst, ..Default::default() };
        (clock.clone(), FailedAuth::new(&cfg, clock))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn a_burst_of_failures_then_throttled_then_refilled() {
        let (clock, g) = guard(6, 3); // one failure back every 10 s
        let a = ip("203.0.113.7");
        for _ in 0..3 {
            assert_eq!(g.check(a), Ok(()));
            g.failed(a);
        }
        assert_eq!(g.check(a), Err(Throttled { retry_after_secs: 10 }));
        assert_eq!(g.check(ip("203.0.113.8")), Ok(()), "another address has its own budget");
        clock.advance(9_000_000);
        assert_eq!(g.check(a), Err(Throttled { retry_after_secs: 1 }));
        clock.advance(1_000_000);
        assert_eq!(g.check(a), Ok(()));
        assert_eq!((g.failures(), g.refused(), g.tracked()), (3, 2, 1));
        clock.advance(30_000_000);
        assert_eq!(g.sweep(), 1);
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_ipv4_as_ipv4() {
        let (_, g) = guard(1, 2);
        g.failed(ip("2001:db8:1:2::1"));
        g.failed(ip("2001:db8:1:2:ffff::9"));
        assert!(g.check(ip("2001:db8:1:2::42")).is_err(), "same /64");
        assert_eq!(g.check(ip("2001:db8:1:3::1")), Ok(()), "another /64");
        g.failed(ip("::ffff:198.51.100.1"));
        g.failed(ip("198.51.100.1"));
        assert!(g.check(ip("198.51.100.1")).is_err());
    }

    #[test]
    fn off_when_the_burst_is_zero() {
        let (_, g) = guard(60, 0);
        for _ in 0..100 {
            g.failed(ip("192.0.2.1"));
        }
        assert_eq!(g.check(ip("192.0.2.1")), Ok(()));
        assert_eq!(g.failures(), 100, "failures are still counted");
    }

    #[test]
    fn the_map_stays_bounded() {
        let (_, g) = guard(1, 5);
        for i in 0..(SHARDS * SHARD_CAP + 5000) as u32 {
            g.failed(IpAddr::V4(i.into()));
        }
        assert!(g.tracked() <= SHARDS * SHARD_CAP, "{}", g.tracked());
        let held: usize = g.shards.iter().map(|s| s.lock().len()).sum();
        assert_eq!(held, g.tracked());
    }

    /// Two replicas' guards over one Redis: a guesser alternating between them gets the
    /// burst once, plus the one failure that tells the second replica it is spent.
    #[cfg(feature = "shared")]
    #[test]
    fn replicas_spend_one_budget_through_redis() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_nanos();
        let prefix = format!("daena:test-fa-{}-{nanos}", std::process::id());
        let shared = Arc::new(SharedLimits::new("redis://127.0.0.1:6379/", &prefix).expect("client"));
        shared.probe().expect("Redis answers on 127.0.0.1:6379 (scripts/services starts it)");
        let cfg = RateLimitConfig { failed_auth_per_minute: 1, failed_auth_burst: 4, ..Default::default() };
        let clock = ManualClock::new(Micros(1_000_000_000));
        let a = FailedAuth::new(&cfg, clock.clone()).shared_by(Some(shared.clone()));
        let b = FailedAuth::new(&cfg, clock).shared_by(Some(shared));
        let guesser = ip("203.0.113.9");
        let mut tried = 0;
        for _ in 0..10 {
            for g in [&a, &b] {
                if g.check(guesser).is_ok() {
                    tried += 1;
                    g.failed(guesser);
                }
            }
        }
        assert_eq!(tried, 5, "a burst of 4 for the fleet, and one more that the second replica needed to learn it");
        assert!(a.check(guesser).is_err() && b.check(guesser).is_err());
        assert_eq!(a.check(ip("203.0.113.10")), Ok(()), "another address has its own budget");
    }
}
