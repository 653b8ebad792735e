//! `daena runbook daily|weekly|monthly`: the operators' checklists run against a running
//! server, each check judged against the thresholds of the server's own reports (which
//! come from `memory_config.yaml`), printed as a PASS/WARN/FAIL table; exit 1 on any FAIL.

use super::{load_config, remote};
use crate::cli::{Cadence, Global};
use crate::client::Remote;
use serde::Serialize;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Serialize)]
struct Report {
    cadence: &'static str,
    url: String,
    status: Status,
    checks: Vec<Check>,
}

/// The checks as a status/check/detail table.
pub fn print_checks(checks: &[Check]) {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| vec![format!("{:?}", c.status).to_uppercase(), c.name.clone(), c.detail.clone()])
        .collect();
    crate::output::table(&["status", "check", "detail"], &rows);
}

pub fn check(name: &str, status: Status, detail: impl Into<String>) -> Check {
    Check { name: name.to_owned(), status, detail: detail.into() }
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// Days since an RFC 3339 time in a report; infinite when it is missing or unreadable.
fn age_days(at: &Value) -> f64 {
    use daena_app::clock::{Clock, SystemClock};
    at.as_str().and_then(daena_app::clock::parse_rfc3339).map_or(f64::INFINITY, |t| SystemClock.now().days_since(t))
}

/// Fetches `path`; a failure becomes a FAIL check instead of stopping the checklist.
async fn fetch(r: &Remote, path: &str, checks: &mut Vec<Check>, name: &str) -> Option<Value> {
    match r.get::<Value>(path).await {
        Ok(v) => Some(v),
        Err(e) => {
            checks.push(check(name, Status::Fail, format!("{e:#}")));
            None
        }
    }
}

async fn daily(r: &Remote, checks: &mut Vec<Check>) {
    if let Some(h) = fetch(r, "/health", checks, "health").await {
        let status = match h["status"].as_str() {
            Some("healthy") => Status::Pass,
            Some("degraded") => Status::Warn,
            _ => Status::Fail,
        };
        let failing: Vec<String> = h["checks"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, c)| c["status"] != "pass")
                    .map(|(k, c)| format!("{k}: {}", c["detail"].as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        let detail = if failing.is_empty() {
            h["status"].as_str().unwrap_or("?").to_owned()
        } else {
            format!("{}; {}", h["status"].as_str().unwrap_or("?"), failing.join("; "))
        };
        checks.push(check("health", status, detail));
    }
    if let Some(m) = fetch(r, "/monitoring/memory", checks, "memory").await {
        for (slo, name) in [("l1_p95_ms", "L1 p95 latency"), ("l2_p95_ms", "L2 p95 latency")] {
            let s = &m["slo"][slo];
            let target = s["target"].as_f64().unwrap_or(0.0);
            checks.push(match (s["status"].as_str(), s["observed"].as_f64()) {
                (Some("ok"), Some(v)) => check(name, Status::Pass, format!("{v:.2} ms (< {target} ms)")),
                (Some("violated"), Some(v)) => check(name, Status::Fail, format!("{v:.2} ms, objective < {target} ms")),
                _ => check(name, Status::Warn, format!("no reads measured yet (objective < {target} ms)")),
            });
        }
        let div = &m["divergence"];
        let (rate, max) = (div["rate"].as_f64().unwrap_or(0.0), div["max_rate"].as_f64().unwrap_or(0.0));
        checks.push(check(
            "divergence rate",
            if rate > max { Status::Fail } else { Status::Pass },
            format!("{} of {} overwrites (max {})", pct(rate), div["overwrites"], pct(max)),
        ));
        let g = &m["growth"];
        checks.push(match g["records_per_hour"].as_f64() {
            Some(v) => check(
                "memory growth",
                Status::Pass,
                format!(
                    "{v:.1} records/h, {:.1} KiB/h over {:.1} h; {} records in all",
                    g["bytes_per_hour"].as_f64().unwrap_or(0.0) / 1024.0,
                    g["window_hours"].as_f64().unwrap_or(0.0),
                    m["totals"]["records"]
                ),
            ),
            None => check("memory growth", Status::Warn, "not enough history for a growth rate yet"),
        });
        if m["writes_enabled"] == false {
            checks.push(check("writes", Status::Warn, "writes are disabled (read-only); `daena writes on` resumes"));
        }
    }
    if let Some(c) = fetch(r, "/monitoring/memory/cas", checks, "CAS hit rate").await {
        let (rate, target) = (c["hit_rate"].as_f64().unwrap_or(0.0), c["target_hit_rate"].as_f64().unwrap_or(0.6));
        checks.push(match c["status"].as_str() {
            Some("no_data") => check("CAS hit rate", Status::Warn, "no LLM requests yet"),
            _ if rate >= target => check("CAS hit rate", Status::Pass, format!("{} (> {})", pct(rate), pct(target))),
            _ => check(
                "CAS hit rate",
                Status::Fail,
                format!("{} below {}; `daena cas diagnostics` has advice", pct(rate), pct(target)),
            ),
        });
    }
    if let Some(s) = fetch(r, "/api/v1/analytics/summary", checks, "analytics").await {
        let e = &s["error_rate_1h"];
        let (rate, max) = (e["rate"].as_f64().unwrap_or(0.0), s["max_error_rate"].as_f64().unwrap_or(0.001));
        checks.push(match e["events"].as_u64().unwrap_or(0) {
            0 => check("error rate (1 h)", Status::Warn, "no agent traffic in the last hour"),
            n if rate < max => {
                check("error rate (1 h)", Status::Pass, format!("{} of {n} events (< {})", pct(rate), pct(max)))
            }
            n => check(
                "error rate (1 h)",
                Status::Fail,
                format!("{} of {n} events, objective < {}", pct(rate), pct(max)),
            ),
        });
        let (active, expected) =
            (s["active_agents"].as_u64().unwrap_or(0), s["expected_agents"].as_u64().unwrap_or(48));
        checks.push(check(
            "active agents",
            if active >= expected { Status::Pass } else { Status::Warn },
            format!("{active} of {expected} sent a heartbeat recently"),
        ));
    }
    if let Some(a) = fetch(r, "/api/v1/analytics/anomalies", checks, "anomalies").await {
        let list = a["anomalies"].as_array().cloned().unwrap_or_default();
        let high = list.iter().filter(|x| x["severity"] == "high").count();
        let named: Vec<String> = list
            .iter()
            .take(5)
            .map(|x| format!("{}/{}", x["agent_id"].as_str().unwrap_or("?"), x["metric"].as_str().unwrap_or("?")))
            .collect();
        checks.push(match list.len() {
            0 => check("anomalies", Status::Pass, "none"),
            n => check("anomalies", Status::Warn, format!("{n} ({high} high): {}", named.join(", "))),
        });
    }
    if let Some(l) = fetch(r, "/api/v1/tenant-rate-limit/stats", checks, "rate limits").await {
        let (allowed, rejected) = (l["allowed"].as_u64().unwrap_or(0), l["rejected"].as_u64().unwrap_or(0));
        let share = rejected as f64 / (allowed + rejected).max(1) as f64;
        checks.push(check(
            "rate-limit rejections",
            if share > 0.01 { Status::Warn } else { Status::Pass },
            format!("{rejected} of {} requests rejected ({})", allowed + rejected, pct(share)),
        ));
    }
}

async fn weekly(global: &Global, r: &Remote, checks: &mut Vec<Check>) {
    // Monday: governance review.
    match super::policy::inspect(global, None) {
        Ok((p, _)) => checks.push(check(
            "policy",
            Status::Pass,
            format!("{} classes with rules, {} Cedar rules compile", p.classes.len(), p.rule_count),
        )),
        Err(e) => checks.push(check("policy", Status::Fail, format!("{e:#}"))),
    }
    // The ledger is verified now, in full, by the server.
    match r.post::<_, Value>("/api/v1/ledger/verification", &serde_json::json!({})).await {
        Ok(v) if v["ok"] == true => checks.push(check(
            "ledger",
            Status::Pass,
            format!(
                "{} entries, the chain and {} signed checkpoint(s) verified in {} s",
                v["entries"], v["checkpoints_verified"], v["seconds"]
            ),
        )),
        Ok(v) => checks.push(check("ledger", Status::Fail, v["failure"].as_str().unwrap_or("failed").to_owned())),
        Err(e) => checks.push(check("ledger", Status::Fail, format!("{e:#}"))),
    }
    // Wednesday: performance review, each report judged against the service's objectives.
    let max_error_rate = fetch(r, "/api/v1/analytics/summary", checks, "efficiency")
        .await
        .and_then(|s| s["max_error_rate"].as_f64())
        .unwrap_or(0.001);
    if let Some(e) = fetch(r, "/api/v1/analytics/agents/efficiency", checks, "efficiency").await {
        checks.push(efficiency(&e, max_error_rate));
    }
    if let Some(c) = fetch(r, "/monitoring/memory/cost-tracking", checks, "cost tracking").await {
        checks.push(costs(&c));
    }
    if let Some(p) = fetch(r, "/api/v1/analytics/communication-patterns", checks, "communication").await {
        checks.push(communication(&p));
    }
    // Friday: disaster recovery.
    if let Some(list) = fetch(r, "/api/v1/admin/snapshots", checks, "backups").await {
        let newest = list.as_array().and_then(|l| l.last()).cloned();
        checks.push(match newest {
            None => check("backups", Status::Fail, "no snapshot exists: `daena snapshot create`"),
            Some(m) => {
                let age_days = age_days(&m["created_at"]);
                let detail = format!(
                    "newest {} ({age_days:.1} days old, ledger position {}, {} records)",
                    m["name"].as_str().unwrap_or("?"),
                    m["ledger_size"],
                    m["records"]
                );
                check("backups", if age_days <= 7.0 { Status::Pass } else { Status::Fail }, detail)
            }
        });
    }
    if let Some(last) = fetch(r, "/api/v1/admin/drills/last", checks, "DR drill").await {
        checks.push(if last.is_null() {
            check("DR drill", Status::Fail, "no drill has run: `daena drill`")
        } else {
            let age_days = age_days(&last["at"]);
            let detail = format!(
                "{} {age_days:.1} days ago: RTO {}s, RPO {}s (ledger entry {})",
                if last["passed"] == true { "passed" } else { "FAILED" },
                last["rto_seconds"],
                last["rpo_seconds"],
                last["seq"]
            );
            let ok = last["passed"] == true && age_days <= 7.0;
            check("DR drill", if ok { Status::Pass } else { Status::Fail }, detail)
        });
    }
}

/// Agents that did at least this many tasks are judged on their error rate.
const MIN_TASKS_JUDGED: u64 = 20;

/// Agents whose tasks fail more often than the error objective.
fn efficiency(e: &Value, max_error_rate: f64) -> Check {
    let agents = e["agents"].as_array().cloned().unwrap_or_default();
    let busy: Vec<&Value> = agents.iter().filter(|a| a["tasks"].as_u64().unwrap_or(0) >= MIN_TASKS_JUDGED).collect();
    if busy.is_empty() {
        return check("agent efficiency", Status::Warn, format!("no agent reported {MIN_TASKS_JUDGED} tasks or more"));
    }
    let failing: Vec<String> = busy
        .iter()
        .filter(|a| 1.0 - a["success_rate"].as_f64().unwrap_or(1.0) > max_error_rate)
        .map(|a| {
            format!(
                "{} ({:.1}% failed)",
                a["agent_id"].as_str().unwrap_or("?"),
                100.0 * (1.0 - a["success_rate"].as_f64().unwrap_or(1.0))
            )
        })
        .collect();
    if failing.is_empty() {
        check(
            "agent efficiency",
            Status::Pass,
            format!("{} agents within the error objective ({})", busy.len(), pct(max_error_rate)),
        )
    } else {
        check(
            "agent efficiency",
            Status::Warn,
            format!(
                "{} of {} agents above the error objective ({}): {}",
                failing.len(),
                busy.len(),
                pct(max_error_rate),
                failing.join(", ")
            ),
        )
    }
}

/// Whether the spend figures are complete: every model priced, every answer with usage.
fn costs(c: &Value) -> Check {
    let unpriced: Vec<&str> =
        c["unpriced_models"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let missing = c["usage_missing"].as_u64().unwrap_or(0);
    let detail = format!(
        "spent ${:.4}, saved ${:.4} by the cache ({}% of would-be spend); client-reported ${:.4}",
        num(c, "spend_usd"),
        num(c, "saved_usd"),
        c["savings_pct"],
        c["client_reported"]["spend_usd"].as_f64().unwrap_or(0.0)
    );
    if c["requests"].as_u64().unwrap_or(0) == 0 {
        check("cost tracking", Status::Warn, "no LLM requests yet")
    } else if !unpriced.is_empty() || missing > 0 {
        check(
            "cost tracking",
            Status::Warn,
            format!(
                "{detail}; incomplete: models without a price in llm.prices: [{}], answers without usage: {missing}",
                unpriced.join(", ")
            ),
        )
    } else {
        check("cost tracking", Status::Pass, detail)
    }
}

/// Bottlenecks the communication report names.
fn communication(p: &Value) -> Check {
    let total = p["total_messages"].as_u64().unwrap_or(0);
    let bottlenecks: Vec<&str> = p["bottlenecks"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["agent_id"].as_str()).collect())
        .unwrap_or_default();
    let detail = format!("{total} messages, honeycomb neighbour share {}", p["neighbour_share"]);
    match (total, bottlenecks.is_empty()) {
        (0, _) => check("communication patterns", Status::Warn, "no interactions reported"),
        (_, true) => check("communication patterns", Status::Pass, format!("{detail}; no bottleneck")),
        (_, false) => {
            check("communication patterns", Status::Warn, format!("{detail}; bottlenecks: {}", bottlenecks.join(", ")))
        }
    }
}

/// A number at the top level of a report, also where it is nested under `totals`.
fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().or_else(|| v["totals"][key].as_f64()).unwrap_or(0.0)
}

/// Days after which the runbook expects keys to be rotated.
const ROTATION_DAYS: f64 = 90.0;

async fn monthly(global: &Global, r: &Remote, checks: &mut Vec<Check>) {
    if let Some(k) = fetch(r, "/api/v1/admin/key-status", checks, "key rotation").await {
        let age = k["master_key_age_days"].as_f64().unwrap_or(0.0);
        let detail = format!(
            "master key {} from {} in use {age:.1} days (rotation period {ROTATION_DAYS} days); {} rotation(s){}",
            k["master_key_id"].as_str().unwrap_or("?"),
            k["master_key_source"].as_str().unwrap_or("?"),
            k["rotations"],
            if age > ROTATION_DAYS { "; run `daena key rotate`" } else { "" }
        );
        checks.push(check("key rotation", if age > ROTATION_DAYS { Status::Fail } else { Status::Pass }, detail));
    }
    // Validate the rotation: the signed chain, every data key under the current master key,
    // every record readable.
    match r.post::<_, Value>("/api/v1/admin/key-validation", &serde_json::json!({})).await {
        Ok(v) => {
            let detail = format!(
                "{} records read; {} unreadable, {} under an older data key, stale tenants {}{}",
                v["records"],
                v["unreadable_count"],
                v["records_under_old_data_keys"],
                v["stale_tenants"],
                v["chain_problem"].as_str().map(|p| format!("; rotation chain: {p}")).unwrap_or_default()
            );
            checks.push(check("key validation", if v["ok"] == true { Status::Pass } else { Status::Fail }, detail));
        }
        Err(e) => checks.push(check("key validation", Status::Fail, format!("{e:#}"))),
    }
    match super::policy::inspect(global, None) {
        Ok((p, _)) => checks.push(check(
            "policy review",
            Status::Pass,
            format!("{} classes with rules; review them with `daena policy inspect`", p.classes.len()),
        )),
        Err(e) => checks.push(check("policy review", Status::Fail, format!("{e:#}"))),
    }
}

pub async fn run(global: &Global, cadence: Cadence) -> anyhow::Result<ExitCode> {
    let loaded = load_config(global, Vec::new())?;
    let r = remote(global, &loaded.config.data_dir)?;
    let mut checks = Vec::new();
    let name = match cadence {
        Cadence::Daily => {
            daily(&r, &mut checks).await;
            "daily"
        }
        Cadence::Weekly => {
            weekly(global, &r, &mut checks).await;
            "weekly"
        }
        Cadence::Monthly => {
            monthly(global, &r, &mut checks).await;
            "monthly"
        }
    };
    let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Pass);
    let report = Report { cadence: name, url: r.base().to_owned(), status, checks };
    if global.json {
        crate::output::json(&report)?;
    } else {
        print_checks(&report.checks);
        println!("{name} checklist: {}", format!("{status:?}").to_uppercase());
    }
    Ok(if status == Status::Fail { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
