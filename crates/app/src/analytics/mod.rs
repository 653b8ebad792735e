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

mod reports;

pub use reports::*;

use crate::Daena;
use crate::auth::Principal;
use crate::clock::Clock;
use crate::error::{AppError, AppResult};
use crate::replicas::Peers;
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
/// Where a replica saves the figures it observed itself (left out of a seed).
pub(crate) const LOCAL: DocTable = TABLE;
/// Each replica's tenants, published for the others' reports ([`crate::replicas::Peers`]).
const BY_REPLICA: DocTable = doc_table("analytics_by_replica");

/// How a retired replica's tenants fold into the `retired` partition.
pub const FOLD: crate::replicas::Fold = crate::replicas::Fold { table: BY_REPLICA, merge: fold_tenant };

fn fold_tenant(table: DocTable, key: &str, into: Option<&[u8]>, from: &[u8]) -> AppResult<Vec<u8>> {
    crate::replicas::merge_docs::<TenantData>(table, key, into, from, TenantData::merge)
}
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
pub const MAX_TOKENS: u64 = 1_000_000_000;
pub const MAX_COST_USD: f64 = 1_000_000.0;

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

impl AgentStats {
    fn add(&mut self, o: &AgentStats) {
        for (a, b) in [
            (&mut self.tasks, o.tasks),
            (&mut self.successes, o.successes),
            (&mut self.failures, o.failures),
            (&mut self.latency_n, o.latency_n),
            (&mut self.tokens, o.tokens),
            (&mut self.received, o.received),
            (&mut self.memory_reads, o.memory_reads),
            (&mut self.memory_writes, o.memory_writes),
            (&mut self.llm_calls, o.llm_calls),
            (&mut self.cache_hits, o.cache_hits),
            (&mut self.requests, o.requests),
            (&mut self.errors, o.errors),
        ] {
            *a = a.saturating_add(b);
        }
        self.latency_ms_sum += o.latency_ms_sum;
        self.cost_usd = (self.cost_usd + o.cost_usd).min(f64::MAX);
    }
}

impl PairStats {
    fn add(&mut self, o: &PairStats) {
        self.count = self.count.saturating_add(o.count);
        self.successes = self.successes.saturating_add(o.successes);
        self.latency_n = self.latency_n.saturating_add(o.latency_n);
        self.latency_ms_sum += o.latency_ms_sum;
        for (kind, n) in &o.kinds {
            let k = self.kinds.entry(kind.clone()).or_default();
            *k = k.saturating_add(*n);
        }
    }
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

    /// Adds another replica's figures of the same tenant to these.
    fn merge(&mut self, o: &TenantData) {
        for (agent, stats) in &o.agents {
            self.agents.entry(agent.clone()).or_default().add(stats);
        }
        for (pair, stats) in &o.pairs {
            self.pairs.entry(pair.clone()).or_default().add(stats);
        }
        for (agent, minutes) in &o.minutes {
            for m in minutes {
                let b = self.bucket(agent, m.minute);
                b.events = b.events.saturating_add(m.events);
                b.errors = b.errors.saturating_add(m.errors);
                b.latency_ms_sum += m.latency_ms_sum;
                b.latency_n = b.latency_n.saturating_add(m.latency_n);
            }
        }
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
    /// Changed since the last flush to the state store.
    dirty: AtomicBool,
    /// Replicas sharing the deployment, and whether this one's figures changed since it
    /// last published them.
    peers: Option<Arc<Peers>>,
    unpublished: AtomicBool,
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
    /// Loads the figures saved by [`Analytics::flush`]; with `peers`, reports add the other
    /// replicas' published figures.
    pub fn load(kv: Kv, clock: Arc<dyn Clock>, bounds: Bounds, peers: Option<Arc<Peers>>) -> AppResult<Analytics> {
        let mut tenants: HashMap<String, TenantData> = kv.scan_docs::<TenantData>(TABLE)?.into_iter().collect();
        // A replica publishes more often than it saves, so what it last published is the
        // newer copy of its own figures (a crash loses at most the publishing interval).
        if let Some(peers) = &peers {
            tenants.extend(peers.own::<TenantData>(BY_REPLICA)?);
        }
        let tenants = tenants.into_iter().map(|(t, d)| (t, Arc::new(Mutex::new(d)))).collect();
        Ok(Analytics {
            bounds,
            tenants: RwLock::new(tenants),
            kv,
            clock,
            dirty: AtomicBool::new(false),
            unpublished: AtomicBool::new(peers.is_some()),
            peers,
        })
    }

    fn touched(&self) {
        self.dirty.store(true, Ordering::Relaxed);
        self.unpublished.store(true, Ordering::Relaxed);
    }

    /// A tenant's figures for a report: this replica's, plus the other replicas' as they
    /// last published them.
    fn view(&self, tenant: &str) -> TenantData {
        let mut data = self.tenant(tenant).lock().clone();
        if let Some(peers) = &self.peers {
            for (_, other) in peers.others_where::<TenantData>(BY_REPLICA, |t| t == tenant) {
                data.merge(&other);
            }
        }
        data
    }

    /// Every tenant's figures as they are now (each tenant copied under its own lock, the
    /// map's lock not held meanwhile).
    fn snapshot(&self) -> Vec<(String, TenantData)> {
        let all: Vec<(String, Arc<Mutex<TenantData>>)> =
            self.tenants.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.into_iter().map(|(tenant, data)| (tenant, data.lock().clone())).collect()
    }

    /// Publishes this replica's figures for the other replicas' reports, when they changed.
    pub fn publish(&self) -> AppResult<()> {
        let Some(peers) = &self.peers else { return Ok(()) };
        if !self.unpublished.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        peers.publish(BY_REPLICA, &self.snapshot()).inspect_err(|_| self.unpublished.store(true, Ordering::Relaxed))
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
        self.touched();
    }

    /// Writes the state if it changed since the last flush.
    pub fn flush(&self) -> AppResult<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        for (tenant, doc) in self.snapshot() {
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

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[serde(default, deserialize_with = "daena_core::canonical::integer")]
    pub tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
    /// When it happened (RFC 3339), for late reports; at most three hours ago. Default: now.
    pub at: Option<String>,
}

/// One interaction or a batch of up to 1000.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Interactions {
    One(Interaction),
    Many(Vec<Interaction>),
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    if i.kind.is_empty() || i.kind.chars().count() > 64 || i.kind.chars().any(|c| c.is_control()) {
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
    let now = d.monitoring().analytics().clock.now();
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
    let a = d.monitoring().analytics();
    let t = a.tenant(who.tenant().as_str());
    let mut t = t.lock();
    for v in valid {
        apply(&mut t, v, a.bounds);
    }
    a.touched();
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
