//! `/health`: real checks, each pass / warn / fail, folded into healthy / degraded / unhealthy.
//!
//! A failing check that makes the service unusable (storage, data directory) makes it
//! unhealthy; one that limits it (read-only mode, missing agents) makes it degraded.

use crate::Daena;
use crate::clock::rfc3339;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Check {
    pub status: CheckStatus,
    /// Whether a failure makes the service unhealthy (critical) or only degraded.
    pub critical: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub observed: Option<serde_json::Value>,
}

impl Check {
    pub fn new(status: CheckStatus, critical: bool, detail: impl Into<String>) -> Check {
        Check { status, critical, detail: detail.into(), observed: None }
    }
    pub fn observed(mut self, v: serde_json::Value) -> Check {
        self.observed = Some(v);
        self
    }
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthReport {
    pub status: HealthStatus,
    pub service: &'static str,
    pub version: &'static str,
    pub time: String,
    /// Present when the request carried a valid API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, Check>>,
}

/// How long the probes' results are reused: `/health` costs a disk write and a store read
/// at most this often, however often it is asked (anyone may ask, without a key). The
/// other checks read state in memory and run on every request.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The last probes' results and when they were taken.
#[derive(Debug, Default)]
pub struct Cache(parking_lot::Mutex<Option<(std::time::Instant, [Check; 2])>>, std::sync::atomic::AtomicU64);

impl Cache {
    /// How many times the probes ran since start.
    pub fn probes_run(&self) -> u64 {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The probe results (`/health`'s cache).
pub fn probes_run(d: &Daena) -> u64 {
    d.monitoring().health_cache.probes_run()
}

/// The data directory and store probes: cached for [`PROBE_EVERY`]; while another request
/// runs them, the previous results.
fn probes(d: &Daena) -> [Check; 2] {
    let run = || {
        d.monitoring().health_cache.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        [
            match d.data().probe_writable() {
                Ok(()) => Check::new(CheckStatus::Pass, true, format!("{} is writable", d.data().root().display())),
                Err(e) => Check::new(CheckStatus::Fail, true, e.to_string()),
            },
            match d.kv().probe() {
                Ok(()) => Check::new(CheckStatus::Pass, true, "embedded store answers reads"),
                Err(e) => Check::new(CheckStatus::Fail, true, e.to_string()),
            },
        ]
    };
    let Some(mut slot) = d.monitoring().health_cache.0.try_lock() else {
        return d.monitoring().health_cache.0.lock().as_ref().map_or_else(run, |(_, p)| p.clone());
    };
    if let Some((at, p)) = slot.as_ref()
        && at.elapsed() < PROBE_EVERY
    {
        return p.clone();
    }
    let p = run();
    *slot = Some((std::time::Instant::now(), p.clone()));
    p
}

/// Runs every check. `detailed` decides whether the checks are shown, not whether they run.
pub fn check(d: &Daena, detailed: bool) -> HealthReport {
    let mut checks = BTreeMap::new();
    let [writable, storage] = probes(d);
    checks.insert("data_dir_writable".to_owned(), writable);
    checks.insert("storage".to_owned(), storage);
    let writes = d.writes_enabled();
    checks.insert(
        "writes_enabled".to_owned(),
        if writes {
            Check::new(CheckStatus::Pass, false, "memory writes are enabled")
        } else {
            Check::new(CheckStatus::Warn, false, "read-only mode: writes are refused with writes_disabled")
        },
    );
    let tenant = &d.config().agents.fleet_tenant;
    let active = d.governance().agents().active_count(tenant);
    let expected = daena_core::agents::EXPECTED_AGENTS;
    checks.insert(
        "active_agents".to_owned(),
        Check::new(
            if active >= expected { CheckStatus::Pass } else { CheckStatus::Warn },
            false,
            format!(
                "{active} of {expected} agents of tenant {tenant} sent a heartbeat in the last {} s",
                d.config().agents.heartbeat_window_secs
            ),
        )
        .observed(serde_json::json!({"active": active, "expected": expected, "tenant": tenant})),
    );
    for (name, check) in d.extra_health_checks() {
        checks.insert(name, check);
    }

    for (name, c) in &checks {
        let v = match c.status {
            CheckStatus::Pass => 1.0,
            CheckStatus::Warn => 0.5,
            CheckStatus::Fail => 0.0,
        };
        d.monitoring()
            .metrics()
            .health_check
            .get_or_create(&crate::telemetry::CheckLabels { check: name.clone() })
            .set(v);
    }
    HealthReport {
        status: fold(checks.values()),
        service: "daena",
        version: env!("CARGO_PKG_VERSION"),
        time: rfc3339(d.clock().now()),
        checks: detailed.then_some(checks),
    }
}

fn fold<'a>(checks: impl Iterator<Item = &'a Check>) -> HealthStatus {
    let mut status = HealthStatus::Healthy;
    for c in checks {
        match (c.status, c.critical) {
            (CheckStatus::Fail, true) => return HealthStatus::Unhealthy,
            (CheckStatus::Fail, false) | (CheckStatus::Warn, _) => status = HealthStatus::Degraded,
            (CheckStatus::Pass, _) => {}
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding() {
        let pass = Check::new(CheckStatus::Pass, true, "");
        let warn = Check::new(CheckStatus::Warn, false, "");
        let soft_fail = Check::new(CheckStatus::Fail, false, "");
        let hard_fail = Check::new(CheckStatus::Fail, true, "");
        assert_eq!(fold([&pass].into_iter()), HealthStatus::Healthy);
        assert_eq!(fold([&pass, &warn].into_iter()), HealthStatus::Degraded);
        assert_eq!(fold([&soft_fail].into_iter()), HealthStatus::Degraded);
        assert_eq!(fold([&warn, &hard_fail].into_iter()), HealthStatus::Unhealthy);
    }
}
