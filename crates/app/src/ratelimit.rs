//! Per-tenant rate limits: GCRA (`daena_core::gcra`) with one timestamp per active tenant,
//! sharded for concurrency, idle tenants dropped. Overrides per tenant are persisted and
//! ledgered.
//!
//! A tenant's state is found by a keyed 64-bit SipHash of its id (random key per process),
//! stored inline in the map, so a decision among a million tenants touches two cache lines
//! rather than chasing the id's heap string. Two ids whose hashes collide would share one
//! limit; at a million tenants the odds are about 3 in 10⁸, and the random key keeps anyone
//! from choosing such ids.

use crate::Daena;
use crate::auth::Principal;
use crate::clock::Clock;
use crate::config::RateLimitConfig;
use crate::error::{AppError, AppResult};
use daena_core::gcra::{self, Decision, Limit};
use daena_core::ids::TenantId;
use daena_core::ledger::NewEntry;
use daena_store::kv::{DocTable, Kv, doc_table};
use daena_store::redis_limits::{SharedDecision, SharedLimits};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) const OVERRIDES: DocTable = doc_table("rate_limit_overrides");
const SHARDS: usize = 64;

/// The map's hasher: the keys already are keyed hashes, so it passes them through.
#[derive(Debug, Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for u64 keys; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, Slot, std::hash::BuildHasherDefault<PassThrough>>;

/// One tenant's entry: its id (for stats) and its state.
#[derive(Debug)]
struct Slot {
    tenant: Box<str>,
    state: TenantState,
}

#[derive(Debug, Default, Clone, Copy)]
struct TenantState {
    tat: Option<i64>,
    allowed: u64,
    rejected: u64,
    last_seen: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitView {
    #[serde(deserialize_with = "daena_core::canonical::integer")]
    pub rpm: u32,
    #[serde(deserialize_with = "daena_core::canonical::integer")]
    pub burst: u32,
}

impl From<Limit> for LimitView {
    fn from(l: Limit) -> Self {
        LimitView { rpm: l.rpm, burst: l.burst }
    }
}

/// The limiter's answer for one request, with what the response headers say.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    pub decision: Decision,
    pub limit: Limit,
}

pub struct RateLimiter {
    enabled: bool,
    defaults: Limit,
    idle_micros: i64,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    overrides: RwLock<HashMap<String, Limit>>,
    clock: Arc<dyn Clock>,
    kv: Kv,
    /// The fleet's limits in Redis (replicas); this process's own while it is unreachable.
    shared: Option<Arc<SharedLimits>>,
    pub allowed: AtomicU64,
    pub rejected: AtomicU64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("defaults", &self.defaults).finish()
    }
}

impl RateLimiter {
    pub fn load(cfg: &RateLimitConfig, kv: Kv, clock: Arc<dyn Clock>) -> AppResult<RateLimiter> {
        let overrides = kv
            .scan_docs::<LimitView>(OVERRIDES)?
            .into_iter()
            .map(|(t, l)| (t, Limit { rpm: l.rpm, burst: l.burst }))
            .collect();
        Ok(RateLimiter {
            enabled: cfg.enabled,
            defaults: Limit { rpm: cfg.rpm, burst: cfg.burst },
            idle_micros: i64::try_from(cfg.idle_secs).unwrap_or(i64::MAX / 1_000_000) * 1_000_000,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            overrides: RwLock::new(overrides),
            clock,
            kv,
            shared: None,
            allowed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// This limiter with its decisions made in Redis for the whole fleet, when given.
    pub fn shared_by(mut self, shared: Option<Arc<SharedLimits>>) -> Self {
        self.shared = shared;
        self
    }

    /// Why the fleet-wide limits are not in use right now (Redis configured but failing).
    pub fn shared_down(&self) -> Option<String> {
        self.shared.as_ref().and_then(|s| s.is_down())
    }

    /// Proves the fleet-wide limits answer; `None` when there are none.
    pub fn probe_shared(&self) -> Option<Result<(), String>> {
        self.shared.as_ref().map(|s| s.probe().map_err(|e| e.to_string()))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn defaults(&self) -> Limit {
        self.defaults
    }

    pub fn limit_of(&self, tenant: &str) -> Limit {
        self.overrides.read().get(tenant).copied().unwrap_or(self.defaults)
    }

    /// The tenant's key and its shard. The shard comes from bits the map does not use for
    /// its buckets (low) or tags (top seven), so every shard's buckets stay evenly filled.
    fn slot(&self, tenant: &str) -> (u64, &Mutex<Shard>) {
        let h = self.hasher.hash_one(tenant);
        (h, &self.shards[((h >> 40) as usize) % SHARDS])
    }

    /// Decides one request of `tenant` now.
    pub fn check(&self, tenant: &str) -> Verdict {
        let limit = self.limit_of(tenant);
        if let Some(shared) = &self.shared
            && let Ok(d) = shared.decide(tenant, limit.interval(), limit.burst)
        {
            let decision = match d {
                SharedDecision::Allow { remaining, reset } => {
                    self.allowed.fetch_add(1, Ordering::Relaxed);
                    Decision::Allow { remaining, reset }
                }
                SharedDecision::Deny { retry_after, reset } => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                    Decision::Deny { retry_after, reset }
                }
            };
            return Verdict { decision, limit };
        }
        let now = self.clock.now().0;
        let (key, shard) = self.slot(tenant);
        let mut shard = shard.lock();
        let state = &mut shard
            .entry(key)
            .or_insert_with(|| Slot { tenant: tenant.into(), state: TenantState::default() })
            .state;
        let (decision, tat) = gcra::decide(limit, state.tat, now);
        state.tat = tat;
        state.last_seen = now;
        match decision {
            Decision::Allow { .. } => {
                state.allowed += 1;
                self.allowed.fetch_add(1, Ordering::Relaxed);
            }
            Decision::Deny { .. } => {
                state.rejected += 1;
                self.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
        Verdict { decision, limit }
    }

    /// Sets (or with `None` removes) `tenant`'s override, persisted; a changed limit starts
    /// from its whole burst. Run by the commit thread when the change is in the ledger.
    pub(crate) fn apply_override(&self, tenant: &str, limit: Option<LimitView>) -> AppResult<()> {
        let before = self.limit_of(tenant);
        match limit {
            Some(l) => {
                self.kv.put_doc(OVERRIDES, tenant, &l)?;
                self.overrides.write().insert(tenant.to_owned(), Limit { rpm: l.rpm, burst: l.burst });
            }
            None => {
                self.kv.delete_doc(OVERRIDES, tenant)?;
                self.overrides.write().remove(tenant);
            }
        }
        if self.limit_of(tenant) != before {
            self.start_afresh(tenant);
        }
        Ok(())
    }

    /// Every override, by tenant.
    pub fn overrides(&self) -> BTreeMap<String, LimitView> {
        self.overrides.read().iter().map(|(t, l)| (t.clone(), (*l).into())).collect()
    }

    /// Gives `tenant` the whole burst of its (changed) limit. The state is a time measured in
    /// the old limit's emission intervals: kept, a debt of 5 requests at 1 per minute would
    /// read as 5 minutes of debt under 6000 per minute too.
    fn start_afresh(&self, tenant: &str) {
        if let Some(shared) = &self.shared
            && let Err(e) = shared.reset(tenant)
        {
            tracing::warn!(error = %e, tenant, "the fleet-wide limit could not start afresh");
        }
        let (key, shard) = self.slot(tenant);
        if let Some(slot) = shard.lock().get_mut(&key) {
            slot.state.tat = None;
        }
    }

    /// Drops the state of tenants idle for `rate_limit.idle_secs`; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now().0;
        let mut dropped = 0;
        for shard in &self.shards {
            let mut s = shard.lock();
            let before = s.len();
            s.retain(|_, slot| now - slot.state.last_seen < self.idle_micros);
            dropped += before - s.len();
        }
        dropped
    }

    fn snapshot(&self) -> Vec<(String, TenantState)> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().values().map(|v| (v.tenant.to_string(), v.state)).collect::<Vec<_>>())
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantStatus {
    pub tenant: String,
    pub limit: LimitView,
    /// Whether the limit is a per-tenant override.
    pub overridden: bool,
    /// Requests that fit right now.
    pub remaining: u32,
    pub allowed: u64,
    pub rejected: u64,
    /// Share of the burst in use right now, in percent.
    pub utilization_pct: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimitStats {
    pub enabled: bool,
    pub defaults: LimitView,
    pub overrides: BTreeMap<String, LimitView>,
    /// Tenants with limiter state (seen within `rate_limit.idle_secs`).
    pub active_tenants: usize,
    pub allowed: u64,
    pub rejected: u64,
    /// Active tenants, most requests first (at most 100).
    pub tenants: Vec<TenantStatus>,
}

fn status_of(r: &RateLimiter, tenant: &str, st: TenantState, now: i64) -> TenantStatus {
    let limit = r.limit_of(tenant);
    let remaining = gcra::available(limit, st.tat, now);
    TenantStatus {
        tenant: tenant.to_owned(),
        limit: limit.into(),
        overridden: r.overrides.read().contains_key(tenant),
        remaining,
        allowed: st.allowed,
        rejected: st.rejected,
        utilization_pct: ((1.0 - f64::from(remaining) / f64::from(limit.burst.max(1))) * 10_000.0).round() / 100.0,
    }
}

pub fn stats(d: &Daena) -> RateLimitStats {
    let r = &d.governance().limiter();
    let now = d.clock().now().0;
    let mut tenants: Vec<TenantStatus> = r.snapshot().into_iter().map(|(t, st)| status_of(r, &t, st, now)).collect();
    let active_tenants = tenants.len();
    tenants.sort_by(|a, b| (b.allowed + b.rejected).cmp(&(a.allowed + a.rejected)).then(a.tenant.cmp(&b.tenant)));
    tenants.truncate(100);
    RateLimitStats {
        enabled: r.enabled,
        defaults: r.defaults.into(),
        overrides: r.overrides(),
        active_tenants,
        allowed: r.allowed.load(Ordering::Relaxed),
        rejected: r.rejected.load(Ordering::Relaxed),
        tenants,
    }
}

pub fn status(d: &Daena, tenant: &TenantId) -> TenantStatus {
    let (key, shard) = d.governance().limiter().slot(tenant.as_str());
    let st = shard.lock().get(&key).map(|s| s.state).unwrap_or_default();
    status_of(d.governance().limiter(), tenant.as_str(), st, d.clock().now().0)
}

/// Sets (or with `None` removes) a tenant's limit: ledgered, then applied by the commit thread
/// ([`crate::governance`]).
pub async fn set_override(
    d: &Daena,
    who: &Principal,
    tenant: &TenantId,
    limit: Option<LimitView>,
) -> AppResult<TenantStatus> {
    if let Some(l) = limit
        && (l.rpm == 0 || l.burst == 0)
    {
        return Err(AppError::invalid("rpm and burst must be positive"));
    }
    let op = crate::governance::GovOp::RateLimit { tenant: tenant.clone(), limit, actor: who.actor() };
    d.commit().submit(crate::state::Op::from(op)).await?;
    Ok(status(d, tenant))
}

/// The ledger entry of an override change.
pub(crate) fn override_entry(tenant: &TenantId, actor: &str, limit: Option<LimitView>) -> NewEntry {
    NewEntry::new(tenant.as_str(), actor, "ratelimit.override", format!("tenant/{tenant}")).attrs(
        serde_json::json!({"rpm": limit.map(|l| l.rpm), "burst": limit.map(|l| l.burst), "removed": limit.is_none()}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    /// Redis configured but not answering: each replica limits on its own (the same GCRA),
    /// and says why.
    #[test]
    fn with_redis_down_limits_fall_back_to_this_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = Kv::open(&dir.path().join("state.redb"), 1 << 20).expect("kv");
        let cfg = RateLimitConfig { rpm: 60, burst: 3, ..RateLimitConfig::default() };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = format!("redis://{}/", listener.local_addr().expect("addr"));
        drop(listener);
        let shared = Arc::new(SharedLimits::new(&dead, "daena:test").expect("client"));
        let clock: Arc<dyn Clock> = ManualClock::new(daena_core::time::Micros(1_000_000));
        let limiter = RateLimiter::load(&cfg, kv, clock).expect("load").shared_by(Some(shared));
        let allowed = (0..5).filter(|_| matches!(limiter.check("acme").decision, Decision::Allow { .. })).count();
        assert_eq!(allowed, 3, "the local burst applies");
        assert!(limiter.shared_down().is_some(), "and the limiter says Redis is down");
    }

    /// A limiter deciding in this process (one replica, the embedded default) and one deciding
    /// in Redis (replicas), both on the real clock, with a fresh store and Redis key prefix.
    fn backends(cfg: &RateLimitConfig) -> Vec<(&'static str, RateLimiter, tempfile::TempDir)> {
        let open = |shared: Option<Arc<SharedLimits>>| {
            let dir = tempfile::tempdir().expect("tempdir");
            let kv = Kv::open(&dir.path().join("state.redb"), 1 << 20).expect("kv");
            let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
            (RateLimiter::load(cfg, kv, clock).expect("load").shared_by(shared), dir)
        };
        let prefix = format!("daena-test:{}:{}", std::process::id(), rand::random::<u64>());
        let redis = Arc::new(SharedLimits::new("redis://127.0.0.1:6379/", &prefix).expect("client"));
        let (local, d1) = open(None);
        let (shared, d2) = open(Some(redis));
        vec![("this process", local, d1), ("Redis", shared, d2)]
    }

    fn allows(limiter: &RateLimiter, tenant: &str) -> Option<u32> {
        match limiter.check(tenant).decision {
            Decision::Allow { remaining, .. } => Some(remaining),
            Decision::Deny { .. } => None,
        }
    }

    /// The limit scenarios, the same on every backend that keeps limit state: a burst counts
    /// down and is then refused with a retry time within one interval; tenants are apart; a
    /// changed limit starts from its whole new burst; waiting the retry time lets exactly one
    /// more through; concurrent requests never get more than the burst.
    #[test]
    fn limits_behave_alike_in_this_process_and_in_redis() {
        let cfg = RateLimitConfig { rpm: 60, burst: 3, ..RateLimitConfig::default() };
        for (name, limiter, _dir) in backends(&cfg) {
            let burst: Vec<Option<u32>> = (0..4).map(|_| allows(&limiter, "acme")).collect();
            assert_eq!(burst, [Some(2), Some(1), Some(0), None], "{name}: the burst counts down");
            let Decision::Deny { retry_after, .. } = limiter.check("acme").decision else {
                panic!("{name}: a used-up burst is refused")
            };
            assert!(retry_after > 0 && retry_after <= 1_000_000, "{name}: retry after {retry_after} µs");
            assert_eq!(allows(&limiter, "other"), Some(2), "{name}: tenants are apart");

            std::thread::sleep(std::time::Duration::from_micros(retry_after as u64 + 50_000));
            assert_eq!(allows(&limiter, "acme"), Some(0), "{name}: one more after the retry time");
            assert_eq!(allows(&limiter, "acme"), None, "{name}: and only one");

            limiter.apply_override("acme", Some(LimitView { rpm: 60, burst: 5 })).expect("override");
            let afresh = (0..6).filter_map(|_| allows(&limiter, "acme")).count();
            assert_eq!(afresh, 5, "{name}: a changed limit starts from its whole burst");

            let granted = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..8 {
                    s.spawn(|| {
                        for _ in 0..4 {
                            if allows(&limiter, "crowd").is_some() {
                                granted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            assert_eq!(granted.into_inner(), 3, "{name}: 32 concurrent requests, a burst of 3");
            assert_eq!(limiter.shared_down(), None, "{name}: decided where it says");
        }
    }
}
