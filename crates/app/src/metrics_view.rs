//! What `/metrics` shows: the registry's counters, and gauges refreshed from the service's
//! state at most every [`REFRESH`], however often it is scraped (a scrape never computes a
//! report or an anomaly scan of its own).
//!
//! Tenant names appear as label values only when every way to read `/metrics` needs a key
//! (`server.metrics_public = false` and no `server.metrics_listen`); otherwise the
//! per-tenant series are summed under `tenant="all"`.

use crate::telemetry::{LimitLabels, ResultLabels, TenantLabels, TierLabels, WindowLabels};
use crate::{Daena, analytics, cas, memory, ratelimit};
use daena_core::ids::TenantId;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How stale the state gauges may be.
pub const REFRESH: Duration = Duration::from_secs(5);

/// When the state gauges were last refreshed.
#[derive(Debug, Default)]
pub struct Freshness(parking_lot::Mutex<Option<Instant>>);

impl Freshness {
    /// Claims the next refresh when the last one is older than [`REFRESH`].
    fn due(&self) -> bool {
        let Some(mut last) = self.0.try_lock() else { return false };
        if last.is_some_and(|t| t.elapsed() < REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Whether tenant names may be label values.
fn tenant_names(d: &Daena) -> bool {
    !d.config().server.metrics_public && d.config().server.metrics_listen.is_none()
}

/// The label value for `tenant`: its name, or `all`.
fn tenant_label(names: bool, tenant: &str) -> String {
    if names { tenant.to_owned() } else { "all".to_owned() }
}

pub fn render(d: &Daena) -> String {
    let m = &d.monitoring().metrics();
    if d.monitoring().metrics_freshness.due() {
        refresh(d);
    }
    m.uptime_seconds.set(d.uptime().as_secs_f64());
    // Counters read as they are: two atomics, cheaper than deciding whether to.
    if let Some(r) = d.replicas() {
        for (result, n) in [("redis_head", &r.head.stats.by_redis), ("barrier", &r.head.stats.by_postgres)] {
            m.replica_read_checks
                .get_or_create(&ResultLabels { result: result.to_owned() })
                .set(as_i64(n.load(Ordering::Relaxed)));
        }
    }
    m.encode()
}

fn refresh(d: &Daena) {
    let m = &d.monitoring().metrics();
    let names = tenant_names(d);
    m.active_agents.clear();
    // The default tenant is always there, so a silent fleet shows as 0 and not as no series.
    m.active_agents
        .get_or_create(&TenantLabels { tenant: tenant_label(names, TenantId::default_tenant().as_str()) })
        .set(0);
    for (tenant, active) in d.governance().agents().active_by_tenant() {
        m.active_agents
            .get_or_create(&TenantLabels { tenant: tenant_label(names, tenant.as_str()) })
            .inc_by(as_i64(active as u64));
    }
    m.writes_enabled.set(i64::from(d.writes_enabled()));
    memory_and_ledger(d);
    cache_and_costs(d);
    for (window, minutes) in [("5m", 5), ("1h", 60)] {
        m.error_rate
            .get_or_create(&WindowLabels { window: window.to_owned() })
            .set(analytics::fleet_error_rate(d, minutes).rate);
    }
    m.anomalies.clear();
    for (tenant, n) in analytics::anomaly_counts(d).into_iter().take(100) {
        m.anomalies.get_or_create(&TenantLabels { tenant: tenant_label(names, &tenant) }).inc_by(as_i64(n as u64));
    }
    limits(d, names);
    m.auth_failures.set(as_i64(d.governance().failed_auth().failures()));
    m.auth_throttled.set(as_i64(d.governance().failed_auth().refused()));
    m.auth_throttled_addresses.set(as_i64(d.governance().failed_auth().tracked() as u64));
}

fn memory_and_ledger(d: &Daena) {
    let m = &d.monitoring().metrics();
    let ops = d.governance().api_keys().authenticate_system();
    let report = memory::monitor::report(d, &ops);
    for (tier, view) in [("l2", &report.l2), ("l2q", &report.l2q), ("l3", &report.l3)] {
        let l = TierLabels { tier: tier.to_owned() };
        m.memory_records.get_or_create(&l).set(as_i64(view.records));
        m.memory_bytes.get_or_create(&l).set(as_i64(view.bytes));
    }
    for (tier, lat) in [("l1", &report.l1.latency), ("l2", &report.l2.latency), ("l3", &report.l3.latency)] {
        m.memory_latency_p95_ms
            .get_or_create(&TierLabels { tier: tier.to_owned() })
            .set(lat.as_ref().map_or(0.0, |l| l.p95_ms));
    }
    m.memory_growth_records_per_hour.set(report.growth.records_per_hour.unwrap_or(0.0));
    m.divergence_rate.set(report.divergence.rate);
    m.policy_denies.set(as_i64(report.operations.policy_denies));
    m.ledger_entries.set(as_i64(report.ledger.size));
    m.ledger_checkpoint_size.set(as_i64(report.ledger.checkpoint_size));
    let commit = &d.commit().stats;
    m.ledger_commit_batches.set(as_i64(commit.batches.load(Ordering::Relaxed)));
    m.ledger_commit_ops.set(as_i64(commit.ops.load(Ordering::Relaxed)));
    #[allow(clippy::cast_precision_loss)] // microseconds: exact far beyond any uptime
    m.ledger_commit_write_seconds.set(commit.write_micros.load(Ordering::Relaxed) as f64 / 1e6);
    #[allow(clippy::cast_precision_loss)]
    m.memory_settle_wait_seconds.set(d.memory().counters.settle_wait_micros.load(Ordering::Relaxed) as f64 / 1e6);
}

fn cache_and_costs(d: &Daena) {
    let m = &d.monitoring().metrics();
    let cas = cas::report::cas(d);
    for (result, n) in [
        ("exact", cas.rates.exact_hits),
        ("near", cas.rates.near_hits),
        ("miss", cas.rates.misses),
        ("bypass", cas.rates.bypass),
        ("upstream_error", cas.rates.upstream_errors),
    ] {
        m.cas_requests.get_or_create(&ResultLabels { result: result.to_owned() }).set(as_i64(n));
    }
    m.cas_hit_rate.set(cas.rates.hit_rate);
    m.cas_entries.set(as_i64(cas.entries as u64));
    let costs = cas::report::costs(d);
    m.cost_spend_usd.set(costs.total.spend_usd);
    m.cost_saved_usd.set(costs.total.saved_usd);
}

/// Rate-limit decisions: the 50 busiest tenants by name, the rest as "other" (or all as
/// "all" when names are not shown).
fn limits(d: &Daena, names: bool) {
    let m = &d.monitoring().metrics();
    m.rate_limit_requests.clear();
    let stats = ratelimit::stats(d);
    let (mut other_allowed, mut other_rejected) = (stats.allowed, stats.rejected);
    if names {
        for t in stats.tenants.iter().take(50) {
            other_allowed = other_allowed.saturating_sub(t.allowed);
            other_rejected = other_rejected.saturating_sub(t.rejected);
            for (decision, n) in [("allowed", t.allowed), ("rejected", t.rejected)] {
                m.rate_limit_requests
                    .get_or_create(&LimitLabels { tenant: t.tenant.clone(), decision: decision.to_owned() })
                    .set(as_i64(n));
            }
        }
    }
    let rest = if names { "other" } else { "all" };
    for (decision, n) in [("allowed", other_allowed), ("rejected", other_rejected)] {
        m.rate_limit_requests
            .get_or_create(&LimitLabels { tenant: rest.to_owned(), decision: decision.to_owned() })
            .set(as_i64(n));
    }
}

/// The `method` label of request metrics: a known method, or `other` (a client may send any
/// token as its method, and each would be a new series).
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}
