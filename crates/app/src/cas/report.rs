//! `/monitoring/memory/cas`, `/monitoring/memory/cost-tracking` and `daena cas diagnostics`.

use super::stats::{CasStats, Cost, Counters};
use crate::Daena;
use crate::clock::rfc3339;
use daena_core::cas::max_distance;
use daena_core::time::Micros;
use daena_store::kv::{DocTable, doc_table};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rates {
    pub requests: u64,
    pub exact_hits: u64,
    pub near_hits: u64,
    pub misses: u64,
    pub bypass: u64,
    pub upstream_errors: u64,
    /// (exact + near) ÷ lookups (bypassed requests are not lookups).
    pub hit_rate: f64,
    pub exact_rate: f64,
    pub near_rate: f64,
}

fn rates(c: &Counters) -> Rates {
    let lookups = c.exact_hits + c.near_hits + c.misses;
    let r = |n: u64| if lookups == 0 { 0.0 } else { (n as f64 / lookups as f64 * 10_000.0).round() / 10_000.0 };
    Rates {
        requests: c.requests,
        exact_hits: c.exact_hits,
        near_hits: c.near_hits,
        misses: c.misses,
        bypass: c.bypass,
        upstream_errors: c.upstream_errors,
        hit_rate: r(c.exact_hits + c.near_hits),
        exact_rate: r(c.exact_hits),
        near_rate: r(c.near_hits),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Threshold {
    pub simhash_threshold: f64,
    pub max_hamming_distance: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CasReport {
    #[serde(flatten)]
    pub rates: Rates,
    pub entries: usize,
    pub bytes: u64,
    pub threshold: Threshold,
    /// Near-duplicates found but refused because their numbers or negations differed.
    pub guard_refusals: u64,
    pub false_positive_reports: u64,
    pub stores: u64,
    pub evictions: u64,
    pub target_hit_rate: f64,
    /// `ok` at or above the target, `below_target`, `no_data`.
    pub status: String,
    pub by_tenant: BTreeMap<String, Rates>,
    pub upstream_configured: bool,
}

/// Each replica's cache counters and costs, published for the others' reports.
const BY_REPLICA: DocTable = doc_table("cas_stats_by_replica");

/// How a retired replica's counters and costs fold into the `retired` partition.
pub const FOLD: crate::replicas::Fold = crate::replicas::Fold { table: BY_REPLICA, merge: fold_stats };

fn fold_stats(table: DocTable, key: &str, into: Option<&[u8]>, from: &[u8]) -> crate::error::AppResult<Vec<u8>> {
    crate::replicas::merge_docs::<CasStats>(table, key, into, from, CasStats::add)
}

/// The cache's counters and costs: this replica's, plus the other replicas' as they last
/// published them.
fn stats(d: &Daena) -> CasStats {
    let mut s = d.cas().stats.lock().clone();
    if let Some(r) = d.replicas() {
        for (_, other) in r.peers.others::<CasStats>(BY_REPLICA) {
            s.add(&other);
        }
    }
    s
}

/// Starts a replica's counters and costs from what it last published: it publishes more often
/// than it saves, so that is the newer copy (a crash loses at most the publishing interval).
pub fn resume(cas: &crate::cas::CasShared, peers: &crate::replicas::Peers) -> crate::error::AppResult<()> {
    if let Some((_, published)) = peers.own::<CasStats>(BY_REPLICA)?.into_iter().find(|(key, _)| key == "all") {
        *cas.stats.lock() = published;
    }
    Ok(())
}

/// Publishes this replica's cache counters and costs for the other replicas' reports.
pub fn publish(d: &Daena) -> crate::error::AppResult<()> {
    let Some(r) = d.replicas() else { return Ok(()) };
    let own = d.cas().stats.lock().clone();
    r.peers.publish(BY_REPLICA, &[("all".to_owned(), own)])
}

pub fn cas(d: &Daena) -> CasReport {
    let s = stats(d);
    let (entries, bytes, _) = d.cas().sizes();
    let rates_total = rates(&s.total);
    let target = d.config().memory.slo.min_cas_hit_rate;
    let lookups = s.total.exact_hits + s.total.near_hits + s.total.misses;
    CasReport {
        status: if lookups == 0 {
            "no_data"
        } else if rates_total.hit_rate >= target {
            "ok"
        } else {
            "below_target"
        }
        .to_owned(),
        rates: rates_total,
        entries,
        bytes,
        threshold: Threshold {
            simhash_threshold: d.config().memory.simhash_threshold,
            max_hamming_distance: max_distance(d.config().memory.simhash_threshold),
        },
        guard_refusals: s.total.guard_refusals,
        false_positive_reports: s.total.false_positive_reports,
        stores: s.total.stores,
        evictions: s.total.evictions,
        target_hit_rate: target,
        by_tenant: s.by_tenant.iter().map(|(t, c)| (t.clone(), rates(c))).collect(),
        upstream_configured: d.config().llm.upstream_url.is_some(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CostView {
    pub spend_usd: f64,
    /// What hits would have cost upstream; never part of spend.
    pub saved_usd: f64,
    /// saved ÷ (spend + saved), in percent.
    pub savings_pct: f64,
    pub tokens_saved: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub usage_missing: u64,
    /// Figures clients reported with cache-aside stores: their spend by their own word, and
    /// the savings of hits on their entries. Neither is in `spend_usd` or `saved_usd`.
    pub client_reported: ClientReported,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientReported {
    pub spend_usd: f64,
    pub saved_usd: f64,
}

fn view(c: &Cost) -> CostView {
    let total = c.spend_usd + c.saved_usd;
    let round = |v: f64| (v * 1e6).round() / 1e6;
    CostView {
        spend_usd: round(c.spend_usd),
        saved_usd: round(c.saved_usd),
        savings_pct: if total > 0.0 { (c.saved_usd / total * 10_000.0).round() / 100.0 } else { 0.0 },
        tokens_saved: c.tokens_saved,
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
        requests: c.requests,
        hits: c.hits,
        misses: c.misses,
        usage_missing: c.usage_missing,
        client_reported: ClientReported {
            spend_usd: round(c.client_reported_spend_usd),
            saved_usd: round(c.client_reported_saved_usd),
        },
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CostReport {
    #[serde(flatten)]
    pub total: CostView,
    pub by_model: BTreeMap<String, CostView>,
    pub by_tenant: BTreeMap<String, CostView>,
    pub by_agent: BTreeMap<String, CostView>,
    pub by_day: BTreeMap<String, CostView>,
    /// Models seen without a price in `llm.prices` (their spend and savings count as 0).
    pub unpriced_models: Vec<String>,
}

pub fn costs(d: &Daena) -> CostReport {
    let s = stats(d);
    let mut total = Cost::default();
    let mut by: [BTreeMap<String, Cost>; 4] = Default::default();
    for (k, c) in &s.costs {
        total.add(c);
        for (i, name) in [&k.model, &k.tenant, &k.agent, &k.day].into_iter().enumerate() {
            by[i].entry(name.clone()).or_default().add(c);
        }
    }
    let unpriced_models = by[0].keys().filter(|m| !d.config().llm.prices.contains_key(*m)).cloned().collect();
    let [by_model, by_tenant, by_agent, by_day] = by.map(|m| m.iter().map(|(k, c)| (k.clone(), view(c))).collect());
    CostReport { total: view(&total), by_model, by_tenant, by_agent, by_day, unpriced_models }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RepeatedPrompt {
    /// SHA-256 of the normalized prompt, first 16 hex digits: the text is never shown.
    pub prompt_hash: String,
    pub model: String,
    pub tenant: String,
    pub hits: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Diagnostics {
    pub cas: CasReport,
    /// Near hits by Hamming distance.
    pub near_distance_histogram: BTreeMap<u32, u64>,
    /// Entries with the most hits since the service started.
    pub top_repeated_prompts: Vec<RepeatedPrompt>,
    /// Entries expiring within 1 hour, 1 day and 7 days.
    pub expiring: BTreeMap<String, u64>,
    pub advice: Vec<String>,
    pub generated_at: String,
}

pub fn diagnostics(d: &Daena) -> Diagnostics {
    let cas = cas(d);
    let s = stats(d);
    let now = d.clock().now().0;
    let mut all = d.cas().all();
    all.sort_by_key(|m| std::cmp::Reverse(m.hits.load(Ordering::Relaxed)));
    let top_repeated_prompts = all
        .iter()
        .take(10)
        .filter(|m| m.hits.load(Ordering::Relaxed) > 0)
        .map(|m| RepeatedPrompt {
            prompt_hash: hex::encode(&m.prompt_hash[..8]),
            model: m.model.clone(),
            tenant: m.tenant.clone(),
            hits: m.hits.load(Ordering::Relaxed),
        })
        .collect();
    let mut expiring = BTreeMap::new();
    for (label, within) in [("1h", Micros::HOUR), ("24h", Micros::DAY), ("7d", 7 * Micros::DAY)] {
        expiring.insert(label.to_owned(), all.iter().filter(|m| m.expires_at <= now + within).count() as u64);
    }
    let mut advice = Vec::new();
    if cas.status == "below_target" {
        advice.push(format!(
            "The hit rate {:.1}% is under the {:.0}% target. Check that agents reuse identical system prompts and \
             parameters (temperature, max_tokens and seed separate cache entries), that requests are not sent with \
             Cache-Control: no-cache, and consider a lower simhash_threshold (now {}, max distance {}) if near-duplicate \
             refusals are rare.",
            cas.rates.hit_rate * 100.0,
            cas.target_hit_rate * 100.0,
            cas.threshold.simhash_threshold,
            cas.threshold.max_hamming_distance
        ));
    }
    if cas.false_positive_reports > 0 && cas.rates.near_hits > 0 {
        advice.push(format!(
            "{} wrong hits were reported; if they were near-duplicates, raise simhash_threshold.",
            cas.false_positive_reports
        ));
    }
    if cas.guard_refusals > cas.rates.near_hits && cas.guard_refusals > 10 {
        advice.push("Many near-duplicates differ in numbers or negations: prompts vary in figures, so exact matching carries the hit rate.".into());
    }
    if !cas.upstream_configured {
        advice.push("No upstream is configured (llm.upstream_url): misses are refused with 503.".into());
    }
    Diagnostics {
        cas,
        near_distance_histogram: s.near_distances.clone(),
        top_repeated_prompts,
        expiring,
        advice,
        generated_at: rfc3339(d.clock().now()),
    }
}
