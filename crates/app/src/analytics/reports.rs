//! What analytics reports: anomalies, the fleet summary, efficiency per agent and the
//! communication patterns, all computed from the per-tenant state in [`super`].

use super::*;
use crate::Daena;
use crate::auth::Principal;
use crate::clock::rfc3339;
use crate::error::{AppError, AppResult};
use daena_core::agents;
use daena_core::time::Micros;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Anomaly {
    pub agent_id: String,
    pub department: Option<String>,
    /// `activity` (events per minute), `error_rate`, `latency_ms`.
    pub metric: String,
    pub method: String,
    pub baseline: f64,
    pub observed: f64,
    pub score: f64,
    /// `medium` (score ≥ 3.5) or `high` (≥ 6).
    pub severity: String,
    /// The minute judged (UTC) and the baseline's span.
    pub minute: String,
    pub window: String,
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

fn detect(data: &TenantData, now_minute: i64) -> Vec<Anomaly> {
    let mut out = Vec::new();
    for (agent, q) in &data.minutes {
        let by_minute: HashMap<i64, &Minute> = q.iter().map(|m| (m.minute, m)).collect();
        let first = q.front().map_or(now_minute, |m| m.minute);
        let mut found: Vec<Anomaly> = Vec::new();
        // The last complete minute on every metric; the current one on the rates, once it
        // holds enough events to be judged.
        for (judged, current) in [(now_minute - 1, false), (now_minute, true)] {
            let span: Vec<i64> = ((judged - BASELINE_MINUTES).max(first)..judged).collect();
            if span.len() < MIN_BASELINE {
                continue;
            }
            let cur =
                by_minute.get(&judged).copied().copied().unwrap_or(Minute { minute: judged, ..Minute::default() });
            if current && cur.events < MIN_CURRENT_EVENTS {
                continue;
            }
            let activity: Vec<f64> = span.iter().map(|m| by_minute.get(m).map_or(0.0, |b| b.events as f64)).collect();
            let with_events: Vec<&Minute> =
                span.iter().filter_map(|m| by_minute.get(m).copied()).filter(|b| b.events > 0).collect();
            let error_rates: Vec<f64> = with_events.iter().map(|b| b.errors as f64 / b.events as f64).collect();
            let latencies: Vec<f64> =
                with_events.iter().filter(|b| b.latency_n > 0).map(|b| b.latency_ms_sum / b.latency_n as f64).collect();
            let mut check = |metric: &str, baseline: &[f64], observed: f64, floor: f64| {
                if baseline.len() < MIN_BASELINE {
                    return;
                }
                let Some((score, median)) = daena_core::stats::robust_score(baseline, observed, floor) else {
                    return;
                };
                if score < 3.5 || found.iter().any(|a| a.metric == metric && a.score >= score) {
                    return;
                }
                found.retain(|a| a.metric != metric);
                found.push(Anomaly {
                    agent_id: agent.clone(),
                    department: agents::department_of(agent).map(str::to_owned),
                    metric: metric.to_owned(),
                    method: "median_mad".to_owned(),
                    baseline: round(median, 3),
                    observed: round(observed, 3),
                    score: round(score, 2),
                    severity: if score >= 6.0 { "high" } else { "medium" }.to_owned(),
                    minute: rfc3339(Micros(judged * Micros::MINUTE)),
                    window: format!("{}m", baseline.len()),
                });
            };
            if !current {
                let med_activity = daena_core::stats::median(&activity).unwrap_or(0.0);
                check("activity", &activity, cur.events as f64, (0.25 * med_activity).max(1.0));
            }
            if cur.events > 0 {
                check("error_rate", &error_rates, cur.errors as f64 / cur.events as f64, 0.05);
                if cur.latency_n > 0 {
                    let med = daena_core::stats::median(&latencies).unwrap_or(0.0);
                    check("latency_ms", &latencies, cur.latency_ms_sum / cur.latency_n as f64, (0.25 * med).max(1.0));
                }
            }
        }
        out.extend(found);
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.agent_id.cmp(&b.agent_id)));
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnomalyReport {
    pub tenant: String,
    pub anomalies: Vec<Anomaly>,
    pub total_anomalies: usize,
    pub method: String,
    pub threshold: f64,
}

pub fn anomalies(d: &Daena, who: &Principal) -> AnomalyReport {
    let data = d.monitoring().analytics().view(who.tenant().as_str());
    let list = detect(&data, d.monitoring().analytics().minute());
    AnomalyReport {
        tenant: who.tenant().to_string(),
        total_anomalies: list.len(),
        anomalies: list,
        method: "robust z-score (median, MAD) of the last complete minute, and of the current one for error rate and \
                 latency, against the 60 minutes before"
            .into(),
        threshold: 3.5,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorRate {
    pub events: u64,
    pub errors: u64,
    pub rate: f64,
}

fn error_rate(data: &TenantData, now_minute: i64, minutes: i64) -> ErrorRate {
    let (mut events, mut errors) = (0, 0);
    for q in data.minutes.values() {
        for m in q.iter().filter(|m| m.minute > now_minute - minutes) {
            events += m.events;
            errors += m.errors;
        }
    }
    ErrorRate { events, errors, rate: if events == 0 { 0.0 } else { round(errors as f64 / events as f64, 5) } }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TopAgent {
    pub agent_id: String,
    pub events_last_hour: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Path {
    pub path: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    pub tenant: String,
    pub total_interactions: u64,
    pub total_observed_requests: u64,
    pub error_rate_5m: ErrorRate,
    pub error_rate_1h: ErrorRate,
    pub max_error_rate: f64,
    pub active_agents: usize,
    pub expected_agents: usize,
    pub top_agents: Vec<TopAgent>,
    pub top_communication_paths: Vec<Path>,
    pub recent_anomalies: Vec<Anomaly>,
    pub time: String,
}

pub fn summary(d: &Daena, who: &Principal) -> Summary {
    let now_minute = d.monitoring().analytics().minute();
    let data = d.monitoring().analytics().view(who.tenant().as_str());
    let mut top: Vec<TopAgent> = data
        .minutes
        .iter()
        .map(|(a, q)| TopAgent {
            agent_id: a.clone(),
            events_last_hour: q.iter().filter(|m| m.minute > now_minute - 60).map(|m| m.events).sum(),
        })
        .filter(|t| t.events_last_hour > 0)
        .collect();
    top.sort_by(|a, b| b.events_last_hour.cmp(&a.events_last_hour).then(a.agent_id.cmp(&b.agent_id)));
    top.truncate(10);
    let mut paths: Vec<Path> =
        data.pairs.iter().map(|(k, p)| Path { path: k.replace("->", " -> "), count: p.count }).collect();
    paths.sort_by(|a, b| b.count.cmp(&a.count).then(a.path.cmp(&b.path)));
    paths.truncate(10);
    let mut anomalies = detect(&data, now_minute);
    anomalies.truncate(5);
    Summary {
        tenant: who.tenant().to_string(),
        total_interactions: data.agents.values().map(|a| a.tasks).sum(),
        total_observed_requests: data.agents.values().map(|a| a.requests).sum(),
        error_rate_5m: error_rate(&data, now_minute, 5),
        error_rate_1h: error_rate(&data, now_minute, 60),
        max_error_rate: d.config().memory.slo.max_error_rate,
        active_agents: d.governance().agents().active_count(who.tenant()),
        expected_agents: agents::EXPECTED_AGENTS,
        top_agents: top,
        top_communication_paths: paths,
        recent_anomalies: anomalies,
        time: rfc3339(d.clock().now()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Efficiency {
    pub agent_id: String,
    pub department: Option<String>,
    pub tasks: u64,
    pub success_rate: Option<f64>,
    pub avg_latency_ms: Option<f64>,
    pub tokens: u64,
    pub cost_usd: f64,
    pub cost_per_task_usd: Option<f64>,
    /// This agent's own LLM cache hit rate.
    pub cache_hit_rate: Option<f64>,
    pub llm_calls: u64,
    pub memory_reads: u64,
    pub memory_writes: u64,
    pub requests: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EfficiencyReport {
    pub tenant: String,
    pub agents: Vec<Efficiency>,
    pub total_agents: usize,
}

pub fn efficiency(d: &Daena, who: &Principal, department: Option<&str>) -> AppResult<EfficiencyReport> {
    if let Some(dept) = department
        && !agents::DEPARTMENTS.iter().any(|(s, _)| *s == dept)
    {
        return Err(AppError::invalid(format!("unknown department {dept:?}")));
    }
    let data = d.monitoring().analytics().view(who.tenant().as_str());
    let ratio = |a: f64, b: u64| (b > 0).then(|| round(a / b as f64, 4));
    let mut list: Vec<Efficiency> = data
        .agents
        .iter()
        .map(|(id, s)| Efficiency {
            agent_id: id.clone(),
            department: agents::department_of(id).map(str::to_owned),
            tasks: s.tasks,
            success_rate: ratio(s.successes as f64, s.tasks),
            avg_latency_ms: ratio(s.latency_ms_sum, s.latency_n),
            tokens: s.tokens,
            cost_usd: round(s.cost_usd, 6),
            cost_per_task_usd: ratio(s.cost_usd, s.tasks),
            cache_hit_rate: ratio(s.cache_hits as f64, s.llm_calls),
            llm_calls: s.llm_calls,
            memory_reads: s.memory_reads,
            memory_writes: s.memory_writes,
            requests: s.requests,
            errors: s.errors,
        })
        .filter(|e| department.is_none_or(|dep| e.department.as_deref() == Some(dep)))
        .collect();
    list.sort_by(|a, b| (b.tasks + b.requests).cmp(&(a.tasks + a.requests)).then(a.agent_id.cmp(&b.agent_id)));
    Ok(EfficiencyReport { tenant: who.tenant().to_string(), total_agents: list.len(), agents: list })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PairView {
    pub from: String,
    pub to: String,
    pub count: u64,
    pub success_rate: f64,
    pub avg_latency_ms: Option<f64>,
    /// Honeycomb neighbours (same department, among the six nearest cells).
    pub neighbours: bool,
    pub kinds: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bottleneck {
    pub agent_id: String,
    pub inbound: u64,
    pub avg_inbound_latency_ms: Option<f64>,
    pub inbound_failure_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Patterns {
    pub tenant: String,
    pub total_messages: u64,
    pub agent_matrix: Vec<PairView>,
    /// Messages from department to department (`engineering -> legal`).
    pub department_matrix: BTreeMap<String, u64>,
    pub neighbour_share: f64,
    pub same_department_share: f64,
    pub cross_department_share: f64,
    /// Agents receiving more than average with slower or failing answers.
    pub bottlenecks: Vec<Bottleneck>,
}

pub fn patterns(d: &Daena, who: &Principal, agent: Option<&str>) -> Patterns {
    let fleet = d.governance().agents().fleet();
    let data = d.monitoring().analytics().view(who.tenant().as_str());
    let mut matrix = Vec::new();
    let mut departments: BTreeMap<String, u64> = BTreeMap::new();
    let (mut total, mut neighbour, mut same, mut cross) = (0u64, 0u64, 0u64, 0u64);
    let mut inbound: BTreeMap<String, (u64, f64, u64, u64)> = BTreeMap::new();
    for (k, p) in &data.pairs {
        let Some((from, to)) = k.split_once("->") else { continue };
        if agent.is_some_and(|a| a != from && a != to) {
            continue;
        }
        total += p.count;
        let is_neighbour = agents::are_neighbours(fleet, from, to);
        let (df, dt) = (agents::department_of(from), agents::department_of(to));
        if is_neighbour {
            neighbour += p.count;
        }
        match (df, dt) {
            (Some(a), Some(b)) if a == b => same += p.count,
            _ => cross += p.count,
        }
        *departments.entry(format!("{} -> {}", df.unwrap_or("external"), dt.unwrap_or("external"))).or_default() +=
            p.count;
        let e = inbound.entry(to.to_owned()).or_default();
        e.0 += p.count;
        e.1 += p.latency_ms_sum;
        e.2 += p.latency_n;
        e.3 += p.count - p.successes;
        matrix.push(PairView {
            from: from.to_owned(),
            to: to.to_owned(),
            count: p.count,
            success_rate: round(p.successes as f64 / p.count.max(1) as f64, 4),
            avg_latency_ms: (p.latency_n > 0).then(|| round(p.latency_ms_sum / p.latency_n as f64, 3)),
            neighbours: is_neighbour,
            kinds: p.kinds.clone(),
        });
    }
    matrix.sort_by(|a, b| b.count.cmp(&a.count).then(a.from.cmp(&b.from)).then(a.to.cmp(&b.to)));
    let share = |n: u64| if total == 0 { 0.0 } else { round(n as f64 / total as f64, 4) };
    let mean_in =
        if inbound.is_empty() { 0.0 } else { inbound.values().map(|v| v.0 as f64).sum::<f64>() / inbound.len() as f64 };
    let lat: Vec<f64> = inbound.values().filter(|v| v.2 > 0).map(|v| v.1 / v.2 as f64).collect();
    let median_lat = daena_core::stats::median(&lat).unwrap_or(0.0);
    let mut bottlenecks: Vec<Bottleneck> = inbound
        .iter()
        .map(|(a, (n, ls, ln, failed))| Bottleneck {
            agent_id: a.clone(),
            inbound: *n,
            avg_inbound_latency_ms: (*ln > 0).then(|| round(ls / *ln as f64, 3)),
            inbound_failure_rate: round(*failed as f64 / (*n).max(1) as f64, 4),
        })
        .filter(|b| {
            b.inbound as f64 > mean_in
                && (b.avg_inbound_latency_ms.is_some_and(|l| l > median_lat) || b.inbound_failure_rate > 0.05)
        })
        .collect();
    bottlenecks.sort_by(|a, b| b.inbound.cmp(&a.inbound).then(a.agent_id.cmp(&b.agent_id)));
    bottlenecks.truncate(5);
    Patterns {
        tenant: who.tenant().to_string(),
        total_messages: total,
        agent_matrix: matrix,
        department_matrix: departments,
        neighbour_share: share(neighbour),
        same_department_share: share(same),
        cross_department_share: share(cross),
        bottlenecks,
    }
}

/// Error rate over the last `minutes` across every tenant, of this replica's own traffic (for
/// `/metrics`: Prometheus adds up the replicas).
pub fn fleet_error_rate(d: &Daena, minutes: i64) -> ErrorRate {
    let now = d.monitoring().analytics().minute();
    let (mut events, mut errors) = (0, 0);
    let all: Vec<Arc<Mutex<TenantData>>> = d.monitoring().analytics().tenants.read().values().cloned().collect();
    for t in all {
        let r = error_rate(&t.lock(), now, minutes);
        events += r.events;
        errors += r.errors;
    }
    ErrorRate { events, errors, rate: if events == 0 { 0.0 } else { round(errors as f64 / events as f64, 5) } }
}

/// Anomalies now, per tenant, in this replica's own traffic (for `/metrics`).
pub fn anomaly_counts(d: &Daena) -> Vec<(String, usize)> {
    let now = d.monitoring().analytics().minute();
    let all: Vec<(String, Arc<Mutex<TenantData>>)> =
        d.monitoring().analytics().tenants.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.into_iter().map(|(t, data)| (t, detect(&data.lock(), now).len())).collect()
}
