//! Fleet analytics per tenant: agent-to-agent interactions (reported), what the service
//! observes of each agent (memory and LLM calls carrying `X-Agent-ID`), per-minute activity
//! for error rates and anomaly detection, and the communication matrix.
//!
//! Anomalies: for each agent and metric (activity per minute, error rate, mean latency), the
//! last complete minute is scored against the 60 minutes before it with a robust z-score
//! (median and MAD, `daena_core::stats`); 3.5 is medium, 6 high. Error rate and latency are
//! also judged on the current minute once it holds enough events, so a burst of failures
//! shows while it happens. State is persisted every flush, so a restart does not reset it.
//!
//! Agents that buffer may report interactions late, in batches, with the time they happened
//! (`at`, up to the history kept, three hours).

use crate::Daena;
use crate::auth::Principal;
use crate::clock::{Clock, rfc3339};
use crate::error::{AppError, AppResult};
use daena_core::agents;
use daena_core::ids::AgentId;
use daena_core::time::Micros;
use daena_store::kv::{DocTable, Kv, doc_table};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const TABLE: DocTable = doc_table("analytics");
/// Minutes of per-minute history kept per agent.
const HISTORY_MINUTES: i64 = 180;
/// Minutes the anomaly baseline spans, and the fewest it needs.
const BASELINE_MINUTES: i64 = 60;
const MIN_BASELINE: usize = 10;
/// Events the current, unfinished minute needs before its error rate and latency are judged.
const MIN_CURRENT_EVENTS: u64 = 10;
/// Most interactions one request may report.
pub const MAX_BATCH: usize = 1000;
pub use daena_core::agents::OTHER;
/// Kinds of interaction kept per agent pair; more are counted as [`OTHER`].
const MAX_KINDS_PER_PAIR: usize = 16;
/// Tokens and USD one reported interaction may carry.
const MAX_TOKENS: u64 = 1_000_000_000;
const MAX_COST_USD: f64 = 1_000_000.0;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStats {
    /// Interactions this agent sent.
    pub tasks: u64,
    pub successes: u64,
    pub failures: u64,
    pub latency_ms_sum: f64,
    pub latency_n: u64,
    pub tokens: u64,
    pub cost_usd: f64,
    /// Interactions addressed to this agent.
    pub received: u64,
    pub memory_reads: u64,
    pub memory_writes: u64,
    pub llm_calls: u64,
    pub cache_hits: u64,
    /// Requests to Daena observed with this agent's `X-Agent-ID`, and how many failed (5xx).
    pub requests: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PairStats {
    pub count: u64,
    pub successes: u64,
    pub latency_ms_sum: f64,
    pub latency_n: u64,
    pub kinds: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Minute {
    pub minute: i64,
    pub events: u64,
    pub errors: u64,
    pub latency_ms_sum: f64,
    pub latency_n: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct TenantData {
    agents: BTreeMap<String, AgentStats>,
    pairs: BTreeMap<String, PairStats>,
    minutes: BTreeMap<String, VecDeque<Minute>>,
    /// Tracked agents that are not of the 6x8 fleet (counted when first needed).
    #[serde(skip)]
    extra_agents: Option<usize>,
}

/// How many agents and pairs a tenant's analytics keep (`analytics.*`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub agents: usize,
    pub pairs: usize,
}

impl TenantData {
    /// The name `agent` is counted under: its own while it is of the fleet, already tracked,
    /// or within `bound` agents besides the fleet; else [`OTHER`].
    fn admit_agent(&mut self, agent: &str, bound: usize) -> String {
        if self.agents.contains_key(agent) || agents::department_of(agent).is_some() {
            return agent.to_owned();
        }
        let agents = &self.agents;
        let extra = *self
            .extra_agents
            .get_or_insert_with(|| agents.keys().filter(|a| agents::department_of(a).is_none() && *a != OTHER).count());
        if extra < bound {
            self.extra_agents = Some(extra + 1);
            agent.to_owned()
        } else {
            OTHER.to_owned()
        }
    }

    /// The key a pair is counted under: its own within `bound` pairs, else `(other)->(other)`.
    fn admit_pair(&self, from: &str, to: &str, bound: usize) -> String {
        let key = pair_key(from, to);
        if self.pairs.contains_key(&key) || self.pairs.len() < bound { key } else { pair_key(OTHER, OTHER) }
    }

    /// The agent's bucket for `minute`, kept in order; late reports land in their minute.
    fn bucket(&mut self, agent: &str, minute: i64) -> &mut Minute {
        let q = self.minutes.entry(agent.to_owned()).or_default();
        let newest = q.back().map_or(minute, |m| m.minute.max(minute));
        while q.front().is_some_and(|m| m.minute <= newest - HISTORY_MINUTES) {
            q.pop_front();
        }
        let at = match q.binary_search_by_key(&minute, |m| m.minute) {
            Ok(i) => i,
            Err(i) => {
                q.insert(i, Minute { minute, ..Minute::default() });
                i
            }
        };
        &mut q[at]
    }
}

pub struct Analytics {
    bounds: Bounds,
    tenants: RwLock<HashMap<String, Arc<Mutex<TenantData>>>>,
    kv: Kv,
    clock: Arc<dyn Clock>,
    dirty: AtomicBool,
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics").field("tenants", &self.tenants.read().len()).finish()
    }
}

fn pair_key(from: &str, to: &str) -> String {
    format!("{from}->{to}")
}

impl Analytics {
    pub fn load(kv: Kv, clock: Arc<dyn Clock>, bounds: Bounds) -> AppResult<Analytics> {
        let tenants =
            kv.scan_docs::<TenantData>(TABLE)?.into_iter().map(|(t, d)| (t, Arc::new(Mutex::new(d)))).collect();
        Ok(Analytics { bounds, tenants: RwLock::new(tenants), kv, clock, dirty: AtomicBool::new(false) })
    }

    /// Agents and pairs a tenant's analytics keep, for tests and reports.
    pub fn tracked(&self, tenant: &str) -> (usize, usize) {
        let t = self.tenant(tenant);
        let t = t.lock();
        (t.agents.len(), t.pairs.len())
    }

    fn tenant(&self, tenant: &str) -> Arc<Mutex<TenantData>> {
        if let Some(t) = self.tenants.read().get(tenant) {
            return t.clone();
        }
        self.tenants.write().entry(tenant.to_owned()).or_default().clone()
    }

    fn minute(&self) -> i64 {
        self.clock.now().0.div_euclid(Micros::MINUTE)
    }

    /// What the service saw of an agent's request.
    pub fn observe(&self, tenant: &str, agent: &str, kind: Observed, latency_ms: f64, failed: bool) {
        let minute = self.minute();
        let t = self.tenant(tenant);
        let mut t = t.lock();
        let agent = t.admit_agent(agent, self.bounds.agents);
        let a = t.agents.entry(agent.clone()).or_default();
        a.requests += 1;
        a.errors += u64::from(failed);
        match kind {
            Observed::MemoryRead => a.memory_reads += 1,
            Observed::MemoryWrite => a.memory_writes += 1,
            Observed::Llm { hit } => {
                a.llm_calls += 1;
                a.cache_hits += u64::from(hit);
            }
        }
        let b = t.bucket(&agent, minute);
        b.events += 1;
        b.errors += u64::from(failed);
        b.latency_ms_sum += latency_ms;
        b.latency_n += 1;
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Writes the state if it changed since the last flush.
    pub fn flush(&self) -> AppResult<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        let all: Vec<(String, Arc<Mutex<TenantData>>)> =
            self.tenants.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (tenant, data) in all {
            let doc = data.lock().clone();
            if let Err(e) = self.kv.put_doc(TABLE, &tenant, &doc) {
                self.dirty.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// A request the service observed for an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    MemoryRead,
    MemoryWrite,
    Llm { hit: bool },
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Interaction {
    /// The sending agent, e.g. `legal_synth`.
    pub from: String,
    /// The receiving agent, if the interaction was addressed to one.
    pub to: Option<String>,
    /// What it was: `message`, `delegation`, `review`, ...
    pub kind: String,
    pub latency_ms: Option<f64>,
    #[serde(default = "yes")]
    pub success: bool,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    /// When it happened (RFC 3339), for late reports; at most three hours ago. Default: now.
    pub at: Option<String>,
}

/// One interaction or a batch of up to 1000.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Interactions {
    One(Interaction),
    Many(Vec<Interaction>),
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recorded {
    pub recorded: bool,
    /// How many interactions were recorded.
    pub count: usize,
    pub tenant: String,
}

/// An interaction that passed validation, with its minute.
struct Valid {
    i: Interaction,
    from: AgentId,
    to: Option<AgentId>,
    minute: i64,
}

fn validate(i: Interaction, now: Micros) -> AppResult<Valid> {
    let from = AgentId::new(&i.from).map_err(|e| AppError::invalid(format!("from: {e}")))?;
    let to = i.to.as_deref().map(AgentId::new).transpose().map_err(|e| AppError::invalid(format!("to: {e}")))?;
    if i.kind.is_empty() || i.kind.len() > 64 || i.kind.chars().any(|c| c.is_control()) {
        return Err(AppError::invalid("kind must be 1..=64 printable characters"));
    }
    let latency = i.latency_ms.unwrap_or(0.0);
    if !(latency.is_finite() && latency >= 0.0 && i.cost_usd.is_finite() && i.cost_usd >= 0.0) {
        return Err(AppError::invalid("latency_ms and cost_usd must be non-negative numbers"));
    }
    if i.tokens > MAX_TOKENS || i.cost_usd > MAX_COST_USD || latency > 86_400_000.0 {
        return Err(AppError::invalid(format!(
            "an interaction carries at most {MAX_TOKENS} tokens, {MAX_COST_USD} USD and a day of latency"
        )));
    }
    let at = match &i.at {
        None => now,
        Some(s) => {
            let at = crate::clock::parse_rfc3339(s)
                .ok_or_else(|| AppError::invalid(format!("at: {s:?} is not an RFC 3339 time")))?;
            let oldest = now.saturating_sub((HISTORY_MINUTES - 1) * Micros::MINUTE);
            if at < oldest || at > now.saturating_add(Micros::MINUTE) {
                return Err(AppError::invalid(format!(
                    "at: {s} is outside the analytics window (the last {} hours, up to a minute ahead)",
                    HISTORY_MINUTES / 60
                )));
            }
            at
        }
    };
    Ok(Valid { minute: at.0.div_euclid(Micros::MINUTE), i, from, to })
}

/// Records interactions reported by agents: all of a batch, or none when one is invalid.
pub fn record(d: &Daena, who: &Principal, batch: Interactions) -> AppResult<Recorded> {
    let list = match batch {
        Interactions::One(i) => vec![i],
        Interactions::Many(v) => v,
    };
    if list.is_empty() || list.len() > MAX_BATCH {
        return Err(AppError::invalid(format!("send 1..={MAX_BATCH} interactions, got {}", list.len())));
    }
    let now = d.analytics.clock.now();
    let valid = list
        .into_iter()
        .enumerate()
        .map(|(n, i)| validate(i, now).map_err(|e| AppError::invalid(format!("interaction {n}: {}", e.message))))
        .collect::<AppResult<Vec<_>>>()?;
    // A key bound to an agent reports that agent's interactions only.
    for v in &valid {
        who.acting_agent(Some(v.from.as_str()))?;
    }
    let count = valid.len();
    let a = &d.analytics;
    let t = a.tenant(who.tenant().as_str());
    let mut t = t.lock();
    for v in valid {
        apply(&mut t, v, a.bounds);
    }
    a.dirty.store(true, Ordering::Relaxed);
    Ok(Recorded { recorded: true, count, tenant: who.tenant().to_string() })
}

fn apply(t: &mut TenantData, Valid { i, from, to, minute }: Valid, bounds: Bounds) {
    let latency = i.latency_ms.unwrap_or(0.0);
    let from = t.admit_agent(from.as_str(), bounds.agents);
    let to = to.map(|to| t.admit_agent(to.as_str(), bounds.agents));
    let s = t.agents.entry(from.clone()).or_default();
    s.tasks += 1;
    if i.success {
        s.successes += 1;
    } else {
        s.failures += 1;
    }
    if i.latency_ms.is_some() {
        s.latency_ms_sum += latency;
        s.latency_n += 1;
    }
    s.tokens = s.tokens.saturating_add(i.tokens);
    s.cost_usd = (s.cost_usd + i.cost_usd).min(f64::MAX);
    if let Some(to) = &to {
        t.agents.entry(to.clone()).or_default().received += 1;
        let key = t.admit_pair(&from, to, bounds.pairs);
        let p = t.pairs.entry(key).or_default();
        p.count += 1;
        p.successes += u64::from(i.success);
        if i.latency_ms.is_some() {
            p.latency_ms_sum += latency;
            p.latency_n += 1;
        }
        let kind = if p.kinds.contains_key(&i.kind) || p.kinds.len() < MAX_KINDS_PER_PAIR {
            i.kind.clone()
        } else {
            OTHER.to_owned()
        };
        *p.kinds.entry(kind).or_default() += 1;
    }
    let b = t.bucket(&from, minute);
    b.events += 1;
    b.errors += u64::from(!i.success);
    if i.latency_ms.is_some() {
        b.latency_ms_sum += latency;
        b.latency_n += 1;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnomalyReport {
    pub tenant: String,
    pub anomalies: Vec<Anomaly>,
    pub total_anomalies: usize,
    pub method: String,
    pub threshold: f64,
}

pub fn anomalies(d: &Daena, who: &Principal) -> AnomalyReport {
    let data = d.analytics.tenant(who.tenant().as_str());
    let list = detect(&data.lock(), d.analytics.minute());
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopAgent {
    pub agent_id: String,
    pub events_last_hour: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Path {
    pub path: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    let now_minute = d.analytics.minute();
    let data = d.analytics.tenant(who.tenant().as_str());
    let data = data.lock();
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
        max_error_rate: d.config.memory.slo.max_error_rate,
        active_agents: d.agents.active_count(who.tenant()),
        expected_agents: agents::EXPECTED_AGENTS,
        top_agents: top,
        top_communication_paths: paths,
        recent_anomalies: anomalies,
        time: rfc3339(d.clock.now()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    let data = d.analytics.tenant(who.tenant().as_str());
    let data = data.lock();
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Bottleneck {
    pub agent_id: String,
    pub inbound: u64,
    pub avg_inbound_latency_ms: Option<f64>,
    pub inbound_failure_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    let fleet = d.agents.fleet();
    let data = d.analytics.tenant(who.tenant().as_str());
    let data = data.lock();
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

/// Error rate over the last `minutes` across every tenant (for `/metrics`).
pub fn fleet_error_rate(d: &Daena, minutes: i64) -> ErrorRate {
    let now = d.analytics.minute();
    let (mut events, mut errors) = (0, 0);
    let all: Vec<Arc<Mutex<TenantData>>> = d.analytics.tenants.read().values().cloned().collect();
    for t in all {
        let r = error_rate(&t.lock(), now, minutes);
        events += r.events;
        errors += r.errors;
    }
    ErrorRate { events, errors, rate: if events == 0 { 0.0 } else { round(errors as f64 / events as f64, 5) } }
}

/// Anomalies now, per tenant (for `/metrics`).
pub fn anomaly_counts(d: &Daena) -> Vec<(String, usize)> {
    let now = d.analytics.minute();
    let all: Vec<(String, Arc<Mutex<TenantData>>)> =
        d.analytics.tenants.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.into_iter().map(|(t, data)| (t, detect(&data.lock(), now).len())).collect()
}
