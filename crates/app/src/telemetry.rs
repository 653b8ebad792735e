//! Prometheus metrics: one registry per running service (no global recorder), so several
//! services in one test process stay independent.
//!
//! Counters and histograms are updated where things happen; gauges that describe state
//! (active agents, records per tier) are refreshed from that state just before rendering.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The matched route template, e.g. `/api/v1/memory/{class}/{key}`; bounded.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WindowLabels {
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    pub tenant: String,
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

pub type GaugeF64 = Gauge<f64, AtomicU64>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~13 s: the fast paths are sub-millisecond, upstream LLM calls take seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 19))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    pub active_agents: Family<TenantLabels, Gauge>,
    pub expected_agents: Gauge,
    /// 1 when writes are enabled, 0 in read-only mode.
    pub writes_enabled: Gauge,
    /// Health per check: 1 pass, 0.5 warn, 0 fail.
    pub health_check: Family<CheckLabels, GaugeF64>,
    pub uptime_seconds: GaugeF64,
    pub memory_records: Family<TierLabels, Gauge>,
    pub memory_bytes: Family<TierLabels, Gauge>,
    pub memory_latency_p95_ms: Family<TierLabels, GaugeF64>,
    pub memory_growth_records_per_hour: GaugeF64,
    pub divergence_rate: GaugeF64,
    pub policy_denies: Gauge,
    pub cas_requests: Family<ResultLabels, Gauge>,
    pub cas_hit_rate: GaugeF64,
    pub cas_entries: Gauge,
    pub cost_spend_usd: GaugeF64,
    pub cost_saved_usd: GaugeF64,
    pub error_rate: Family<WindowLabels, GaugeF64>,
    pub anomalies: Family<TenantLabels, Gauge>,
    pub rate_limit_requests: Family<LimitLabels, Gauge>,
    pub auth_failures: Gauge,
    pub auth_throttled: Gauge,
    pub auth_throttled_addresses: Gauge,
    pub ledger_entries: Gauge,
    pub ledger_checkpoint_size: Gauge,
    pub ledger_commit_batches: Gauge,
    pub ledger_commit_ops: Gauge,
    pub ledger_commit_write_seconds: GaugeF64,
    pub memory_settle_wait_seconds: GaugeF64,
    pub replica_read_checks: Family<ResultLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("daena");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by method, route and status", http_requests.clone());
        let http_duration = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("http_request_duration_seconds", "HTTP request latency", http_duration.clone());
        let active_agents = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "active_agents",
            "Agents with a heartbeat inside the window, per tenant",
            active_agents.clone(),
        );
        let expected_agents = Gauge::default();
        registry.register("expected_agents", "Agents the 6x8 structure expects per tenant", expected_agents.clone());
        let writes_enabled = Gauge::default();
        registry.register(
            "writes_enabled",
            "1 when memory writes are enabled, 0 when read-only",
            writes_enabled.clone(),
        );
        let health_check = Family::<CheckLabels, GaugeF64>::default();
        registry.register("health_check", "Health checks: 1 pass, 0.5 warn, 0 fail", health_check.clone());
        let uptime_seconds = GaugeF64::default();
        registry.register("uptime_seconds", "Seconds since the service started", uptime_seconds.clone());
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        let memory_records =
            reg!("memory_records", "Records per tier (l2, l2q, l3)", Family::<TierLabels, Gauge>::default());
        let memory_bytes = reg!("memory_bytes", "Stored bytes per tier", Family::<TierLabels, Gauge>::default());
        let memory_latency_p95_ms = reg!(
            "memory_latency_p95_ms",
            "Read latency p95 per tier over the last 4096 reads (ms)",
            Family::<TierLabels, GaugeF64>::default()
        );
        let memory_growth_records_per_hour =
            reg!("memory_growth_records_per_hour", "Record growth rate over the last day", GaugeF64::default());
        let divergence_rate =
            reg!("divergence_rate", "Unintended divergent overwrites / overwrites", GaugeF64::default());
        let policy_denies = reg!("policy_denies", "ABAC denials since start", Gauge::default());
        let cas_requests = reg!(
            "cas_requests",
            "LLM cache requests by result (exact, near, miss, bypass, upstream_error)",
            Family::<ResultLabels, Gauge>::default()
        );
        let cas_hit_rate = reg!("cas_hit_rate", "LLM cache hit rate (exact + near) / lookups", GaugeF64::default());
        let cas_entries = reg!("cas_entries", "LLM cache entries", Gauge::default());
        let cost_spend_usd = reg!("cost_spend_usd", "Upstream LLM spend (USD)", GaugeF64::default());
        let cost_saved_usd = reg!("cost_saved_usd", "What cache hits would have cost (USD)", GaugeF64::default());
        let error_rate = reg!(
            "error_rate",
            "Failed / all agent interactions and requests, per window",
            Family::<WindowLabels, GaugeF64>::default()
        );
        let anomalies =
            reg!("anomalies", "Anomalies detected now, per tenant", Family::<TenantLabels, Gauge>::default());
        let rate_limit_requests = reg!(
            "rate_limit_requests",
            "Rate-limited requests per tenant and decision (tenants seen recently)",
            Family::<LimitLabels, Gauge>::default()
        );
        let auth_failures =
            reg!("auth_failures", "Requests with an unknown or revoked API key since start", Gauge::default());
        let auth_throttled = reg!(
            "auth_throttled",
            "Requests refused with 429 because their address presented too many bad keys",
            Gauge::default()
        );
        let auth_throttled_addresses = reg!(
            "auth_failed_addresses",
            "Client addresses whose failed-authentication budget is not whole",
            Gauge::default()
        );
        let ledger_entries = reg!("ledger_entries", "Ledger entries", Gauge::default());
        let ledger_checkpoint_size =
            reg!("ledger_checkpoint_size", "Entries covered by the newest signed checkpoint", Gauge::default());
        let ledger_commit_batches =
            reg!("ledger_commit_batches", "Group-commit batches written since start", Gauge::default());
        let ledger_commit_ops = reg!(
            "ledger_commit_ops",
            "Operations acknowledged by those batches (ops per batch = their ratio)",
            Gauge::default()
        );
        let ledger_commit_write_seconds = reg!(
            "ledger_commit_write_seconds",
            "Seconds spent writing and fdatasyncing those batches",
            GaugeF64::default()
        );
        let memory_settle_wait_seconds = reg!(
            "memory_settle_wait_seconds",
            "Seconds the commit thread waited for redb to take the previous overlay layer (rises when redb falls behind the writes)",
            GaugeF64::default()
        );
        let replica_read_checks = reg!(
            "replica_read_checks",
            "Requests on a replica let through on the chain head in Redis (redis_head) or after the barrier's PostgreSQL read (barrier), since start",
            Family::<ResultLabels, Gauge>::default()
        );
        Metrics {
            registry,
            replica_read_checks,
            ledger_commit_batches,
            ledger_commit_ops,
            ledger_commit_write_seconds,
            memory_settle_wait_seconds,
            memory_records,
            memory_bytes,
            memory_latency_p95_ms,
            memory_growth_records_per_hour,
            divergence_rate,
            policy_denies,
            cas_requests,
            cas_hit_rate,
            cas_entries,
            cost_spend_usd,
            cost_saved_usd,
            error_rate,
            anomalies,
            rate_limit_requests,
            auth_failures,
            auth_throttled,
            auth_throttled_addresses,
            ledger_entries,
            ledger_checkpoint_size,
            http_requests,
            http_duration,
            active_agents,
            expected_agents,
            writes_enabled,
            health_check,
            uptime_seconds,
        }
    }

    /// Mutable access for the layers that register their own families at start.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Counts a request. `route` must come from a closed set (the router's templates or
    /// `unmatched`); the method is reduced to a known one or `other`.
    pub fn observe_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let method = crate::metrics_view::method_label(method);
        let labels = HttpLabels { method: method.to_owned(), route: route.to_owned(), status };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration.get_or_create(&labels).observe(seconds);
    }

    /// The registry in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
