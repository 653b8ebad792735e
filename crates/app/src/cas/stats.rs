//! Cache counters and cost accounting, persisted so a restart does not reset them.
//!
//! Spend is what upstream calls cost (their `usage` priced with `llm.prices`); savings are
//! what hits would have cost had they gone upstream (the cached answer's usage, same prices),
//! and are never added to spend.

use crate::error::AppResult;
use daena_store::kv::{DocTable, DocWrite, Kv, doc_table, encode_doc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const STATS: DocTable = doc_table("cas_stats");

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

/// Spend and savings of one (day, tenant, model, agent).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
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
}

impl Cost {
    pub fn add(&mut self, o: &Cost) {
        self.requests += o.requests;
        self.hits += o.hits;
        self.misses += o.misses;
        self.spend_usd += o.spend_usd;
        self.saved_usd += o.saved_usd;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.tokens_saved += o.tokens_saved;
        self.usage_missing += o.usage_missing;
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CasStats {
    pub total: Counters,
    pub by_tenant: BTreeMap<String, Counters>,
    /// Near hits by Hamming distance.
    pub near_distances: BTreeMap<u32, u64>,
    /// Keyed `day|tenant|model|agent`.
    pub costs: BTreeMap<String, Cost>,
    #[serde(skip)]
    dirty: bool,
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
    pub(crate) fn unsaved_doc(&mut self) -> AppResult<Option<DocWrite>> {
        if !self.dirty {
            return Ok(None);
        }
        let json = encode_doc(self)?;
        self.dirty = false;
        Ok(Some((STATS, "all", json)))
    }

    pub(crate) fn mark_unsaved(&mut self) {
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

    pub fn cost(&mut self, day: &str, tenant: &str, model: &str, agent: &str, add: &Cost) {
        self.costs.entry(format!("{day}|{tenant}|{model}|{agent}")).or_default().add(add);
        self.dirty = true;
    }
}
