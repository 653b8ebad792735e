//! Cache counters and cost accounting, persisted so a restart does not reset them.
//!
//! Spend is what upstream calls cost (their `usage` priced with `llm.prices`); savings are
//! what hits would have cost had they gone upstream (the cached answer's usage, same prices),
//! and are never added to spend. Usage a client reports with a cache-aside store is nobody's
//! measurement: its cost, and the savings of hits on such entries, are kept apart as
//! `client_reported_*`. Counts saturate instead of overflowing.
//!
//! Costs are kept per (day, tenant, model, agent), stored as a list of rows with those
//! fields. Per tenant, agents besides the 6x8 fleet and models without a price are kept up
//! to a bound; more are counted as `(other)`.

use daena_base::error::AppResult;
use daena_store::kv::{DocTable, DocWrite, Kv, doc_table, encode_doc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const STATS: DocTable = doc_table("cas_stats");
/// Where the counters this process observed are saved (a replica's own, left out of a seed).
pub const LOCAL: DocTable = STATS;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Counters {
    pub requests: u64,
    pub exact_hits: u64,
    pub near_hits: u64,
    pub misses: u64,
    pub bypass: u64,
    pub upstream_errors: u64,
    pub stores: u64,
    pub guard_refusals: u64,
    pub false_positive_reports: u64,
    pub evictions: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        for (a, b) in [
            (&mut self.requests, o.requests),
            (&mut self.exact_hits, o.exact_hits),
            (&mut self.near_hits, o.near_hits),
            (&mut self.misses, o.misses),
            (&mut self.bypass, o.bypass),
            (&mut self.upstream_errors, o.upstream_errors),
            (&mut self.stores, o.stores),
            (&mut self.guard_refusals, o.guard_refusals),
            (&mut self.false_positive_reports, o.false_positive_reports),
            (&mut self.evictions, o.evictions),
        ] {
            *a = a.saturating_add(b);
        }
    }
}

/// Spend and savings of one (day, tenant, model, agent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(default)]
pub struct Cost {
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub spend_usd: f64,
    pub saved_usd: f64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub tokens_saved: u64,
    /// Upstream answers that carried no usage (their cost is unknown, counted as 0).
    pub usage_missing: u64,
    /// What clients said their own upstream calls cost (cache-aside stores), priced the
    /// same way; not part of spend.
    pub client_reported_spend_usd: f64,
    /// What hits on such entries would have cost, by the clients' word; not part of savings.
    pub client_reported_saved_usd: f64,
}

impl Cost {
    pub fn add(&mut self, o: &Cost) {
        let usd = |a: &mut f64, b: f64| *a = (*a + b).clamp(0.0, f64::MAX);
        self.requests = self.requests.saturating_add(o.requests);
        self.hits = self.hits.saturating_add(o.hits);
        self.misses = self.misses.saturating_add(o.misses);
        usd(&mut self.spend_usd, o.spend_usd);
        usd(&mut self.saved_usd, o.saved_usd);
        self.prompt_tokens = self.prompt_tokens.saturating_add(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(o.completion_tokens);
        self.tokens_saved = self.tokens_saved.saturating_add(o.tokens_saved);
        self.usage_missing = self.usage_missing.saturating_add(o.usage_missing);
        usd(&mut self.client_reported_spend_usd, o.client_reported_spend_usd);
        usd(&mut self.client_reported_saved_usd, o.client_reported_saved_usd);
    }
}

/// What a cost is kept under.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CostKey {
    pub day: String,
    pub tenant: String,
    pub model: String,
    pub agent: String,
}

/// One stored cost row: its key and its figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CostRow {
    #[serde(flatten)]
    key: CostKey,
    #[serde(flatten)]
    cost: Cost,
}

/// Costs as a list of rows; a map keyed `day|tenant|model|agent`, as written before, is read
/// too (a `|` inside a model name made that key ambiguous; such a row is kept under the
/// first split).
mod cost_rows {
    use super::{Cost, CostKey, CostRow};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(costs: &BTreeMap<CostKey, Cost>, s: S) -> Result<S::Ok, S::Error> {
        let rows: Vec<CostRow> = costs.iter().map(|(k, c)| CostRow { key: k.clone(), cost: c.clone() }).collect();
        rows.serialize(s)
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Rows(Vec<CostRow>),
        Joined(BTreeMap<String, Cost>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<CostKey, Cost>, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Rows(rows) => rows.into_iter().map(|r| (r.key, r.cost)).collect(),
            Stored::Joined(map) => map
                .into_iter()
                .filter_map(|(k, c)| {
                    let mut parts = k.splitn(4, '|').map(str::to_owned);
                    let key = CostKey {
                        day: parts.next()?,
                        tenant: parts.next()?,
                        model: parts.next()?,
                        agent: parts.next()?,
                    };
                    Some((key, c))
                })
                .collect(),
        })
    }
}

/// How many agents (besides the fleet) and unpriced models cost tracking keeps per tenant.
#[derive(Debug, Clone, Copy)]
pub struct CostBounds {
    pub agents: usize,
    pub models: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CasStats {
    pub total: Counters,
    pub by_tenant: BTreeMap<String, Counters>,
    /// Near hits by Hamming distance.
    pub near_distances: BTreeMap<u32, u64>,
    #[serde(with = "cost_rows")]
    pub costs: BTreeMap<CostKey, Cost>,
    #[serde(skip)]
    dirty: bool,
    /// Per tenant, the agents besides the fleet and the unpriced models costs are kept for.
    #[serde(skip)]
    admitted: std::collections::HashMap<String, (std::collections::HashSet<String>, std::collections::HashSet<String>)>,
}

/// What a request did, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exact,
    Near(u32),
    Miss,
    Bypass,
    UpstreamError,
}

impl CasStats {
    pub fn load(kv: &Kv) -> AppResult<CasStats> {
        Ok(kv.get_doc(STATS, "all")?.unwrap_or_default())
    }

    /// The statistics as a document to save, when they changed since the last one; a failed
    /// save calls [`CasStats::mark_unsaved`].
    pub fn unsaved_doc(&mut self) -> AppResult<Option<DocWrite>> {
        if !self.dirty {
            return Ok(None);
        }
        let json = encode_doc(self)?;
        self.dirty = false;
        Ok(Some((STATS, "all", json)))
    }

    /// Adds another replica's counters and costs to these (for a report; the bounds on
    /// agents and models are each replica's own).
    pub fn add(&mut self, o: &CasStats) {
        self.total.add(&o.total);
        for (tenant, c) in &o.by_tenant {
            self.by_tenant.entry(tenant.clone()).or_default().add(c);
        }
        for (distance, n) in &o.near_distances {
            let m = self.near_distances.entry(*distance).or_default();
            *m = m.saturating_add(*n);
        }
        for (key, cost) in &o.costs {
            self.costs.entry(key.clone()).or_default().add(cost);
        }
    }

    pub fn mark_unsaved(&mut self) {
        self.dirty = true;
    }

    fn bump(&mut self, tenant: &str, f: impl Fn(&mut Counters)) {
        f(&mut self.total);
        f(self.by_tenant.entry(tenant.to_owned()).or_default());
        self.dirty = true;
    }

    pub fn record(&mut self, tenant: &str, outcome: Outcome) {
        self.bump(tenant, |c| {
            c.requests += 1;
            match outcome {
                Outcome::Exact => c.exact_hits += 1,
                Outcome::Near(_) => c.near_hits += 1,
                Outcome::Miss => c.misses += 1,
                Outcome::Bypass => c.bypass += 1,
                Outcome::UpstreamError => c.upstream_errors += 1,
            }
        });
        if let Outcome::Near(d) = outcome {
            *self.near_distances.entry(d).or_default() += 1;
        }
    }

    pub fn guard_refused(&mut self, tenant: &str) {
        self.bump(tenant, |c| c.guard_refusals += 1);
    }

    pub fn false_positive(&mut self, tenant: &str) {
        self.bump(tenant, |c| c.false_positive_reports += 1);
    }

    pub fn stored(&mut self, tenant: &str) {
        self.bump(tenant, |c| c.stores += 1);
    }

    pub fn evicted(&mut self) {
        self.total.evictions += 1;
        self.dirty = true;
    }

    /// Adds `add` to the costs of `key`, its agent and model bounded per tenant (`priced`
    /// models are always kept).
    pub fn cost(&mut self, mut key: CostKey, priced: bool, add: &Cost, bounds: CostBounds) {
        let costs = &self.costs;
        let tenant = key.tenant.as_str();
        let (agents, models) = self.admitted.entry(key.tenant.clone()).or_insert_with(|| {
            let mine = costs.keys().filter(|k| k.tenant == tenant);
            let agents = mine
                .clone()
                .filter(|k| daena_core::agents::department_of(&k.agent).is_none())
                .map(|k| k.agent.clone())
                .collect();
            (agents, mine.map(|k| k.model.clone()).collect())
        });
        let other = daena_core::agents::OTHER;
        if daena_core::agents::department_of(&key.agent).is_none() && !agents.contains(&key.agent) {
            if agents.len() < bounds.agents {
                agents.insert(key.agent.clone());
            } else {
                key.agent = other.to_owned();
            }
        }
        if !priced && !models.contains(&key.model) {
            if models.len() < bounds.models {
                models.insert(key.model.clone());
            } else {
                key.model = other.to_owned();
            }
        }
        self.costs.entry(key).or_default().add(add);
        self.dirty = true;
    }
}
