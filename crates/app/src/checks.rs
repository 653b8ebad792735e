//! Checks that run in the background and report: a full verification of the ledger (every
//! entry hash, the chain, the Merkle roots against every signed checkpoint, pinned to this
//! deployment's key) and a probe of the LLM upstream. `/health`, the runbook's checklists and
//! the governance artifacts read their results instead of assuming them.

use crate::Daena;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult};
use crate::health::{Check, CheckStatus};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The last full ledger verification is kept in this setting, so a restart still knows it.
const LAST_VERIFICATION: &str = "last_ledger_verification";

/// The outcome of a full ledger verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Verification {
    pub at: String,
    pub ok: bool,
    /// Entries verified.
    pub entries: u64,
    /// Signed checkpoints whose root matched.
    pub checkpoints_verified: usize,
    /// The first problem found, with the first bad sequence number when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub seconds: f64,
}

/// The outcome of the last upstream probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamProbe {
    pub at: String,
    pub reachable: bool,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Background {
    verification: Mutex<Option<Verification>>,
    upstream: Mutex<Option<UpstreamProbe>>,
}

impl Background {
    /// The last verification, from memory or, after a restart, from the store.
    pub fn verification(&self, d: &Daena) -> Option<Verification> {
        let mut slot = self.verification.lock();
        if slot.is_none() {
            *slot = d.kv().get_doc(daena_store::kv::SETTINGS, LAST_VERIFICATION).ok().flatten();
        }
        slot.clone()
    }
}

/// Verifies the whole ledger on disk now (a blocking read of every segment) and records it.
pub async fn verify_ledger(d: &std::sync::Arc<Daena>) -> AppResult<Verification> {
    let started = std::time::Instant::now();
    let reader = d.ledger().reader.clone();
    let key = d.ledger().public_key.clone();
    let summary = tokio::task::spawn_blocking(move || reader.verify_all(Some(&key)))
        .await
        .map_err(|e| AppError::internal(format!("verification task: {e}")))??;
    let v = Verification {
        at: rfc3339(d.clock().now()),
        ok: summary.failure.is_none(),
        entries: summary.entries,
        checkpoints_verified: summary.checkpoints_verified.len(),
        failure: summary.failure.map(|f| match f.seq {
            Some(seq) => format!("entry {seq}: {}", f.reason),
            None => f.reason,
        }),
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    };
    if !v.ok {
        tracing::error!(failure = ?v.failure, "the full ledger verification failed");
    }
    d.kv().put_doc(daena_store::kv::SETTINGS, LAST_VERIFICATION, &v)?;
    *d.monitoring().background().verification.lock() = Some(v.clone());
    Ok(v)
}

/// Probes the upstream model endpoint (`GET <upstream_url>/models`): any HTTP answer means it
/// is reachable. Nothing to do without an upstream.
pub async fn probe_upstream(d: &Daena) {
    let Some(base) = d.config().llm.upstream_url.clone() else { return };
    let url = format!("{}/models", base.trim_end_matches('/'));
    let mut req = d.cas().http.get(&url).timeout(Duration::from_secs(5));
    if let Some(k) = &d.cas().upstream_key {
        req = req.bearer_auth(k.expose());
    }
    let probe = match req.send().await {
        Ok(r) => UpstreamProbe {
            at: rfc3339(d.clock().now()),
            reachable: true,
            detail: format!("the upstream answered HTTP {}", r.status().as_u16()),
        },
        Err(e) => UpstreamProbe {
            at: rfc3339(d.clock().now()),
            reachable: false,
            detail: format!("the upstream cannot be reached: {}", e.without_url()),
        },
    };
    *d.monitoring().background().upstream.lock() = Some(probe);
}

/// `/health`'s view of the full verification.
pub fn verification_check(d: &Daena) -> Check {
    let every = d.config().ledger.verify_every_hours;
    match d.monitoring().background().verification(d) {
        None if every == 0 => {
            Check::new(CheckStatus::Warn, false, "full verification is off (ledger.verify_every_hours = 0)")
        }
        None => Check::new(CheckStatus::Pass, true, "no full verification yet (the first runs a minute after start)"),
        Some(v) if !v.ok => Check::new(
            CheckStatus::Fail,
            true,
            format!("the full verification at {} failed: {}", v.at, v.failure.clone().unwrap_or_default()),
        )
        .observed(serde_json::json!(v)),
        Some(v) => {
            let age_hours =
                crate::clock::parse_rfc3339(&v.at).map_or(f64::INFINITY, |t| d.clock().now().days_since(t) * 24.0);
            let stale = every > 0 && age_hours > 2.0 * every as f64;
            Check::new(
                if stale { CheckStatus::Warn } else { CheckStatus::Pass },
                true,
                format!(
                    "every entry, the chain and {} signed checkpoint(s) verified at {} ({} entries){}",
                    v.checkpoints_verified,
                    v.at,
                    v.entries,
                    if stale { "; overdue" } else { "" }
                ),
            )
            .observed(serde_json::json!(v))
        }
    }
}

/// `/health`'s view of the upstream.
pub fn upstream_check(d: &Daena) -> Check {
    if d.config().llm.upstream_url.is_none() {
        return Check::new(CheckStatus::Pass, false, "no upstream configured: cached answers only, misses get 503");
    }
    match d.monitoring().background().upstream.lock().clone() {
        None => Check::new(CheckStatus::Pass, false, "not probed yet"),
        Some(p) if p.reachable => Check::new(CheckStatus::Pass, false, format!("{} at {}", p.detail, p.at)),
        Some(p) => {
            Check::new(CheckStatus::Warn, false, format!("{} at {}; cache hits are still served", p.detail, p.at))
        }
    }
}
