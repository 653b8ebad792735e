//! `GET /monitoring/memory`: per tier records, bytes, compression, hit rate and latency; L2Q;
//! divergence; by class and tenant; growth; the ledger; SLO status.

use super::Agg;
use super::latency::LatencyWindow;
use crate::Daena;
use crate::auth::Principal;
use daena_core::auth::Role;
use daena_core::time::Micros;
use daena_store::records::Tier;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Operations of this kind in the window: the last one to two minutes.
    pub samples: u64,
}

fn latency(w: &LatencyWindow) -> Option<Latency> {
    w.percentiles().map(|(p50, p95, p99, samples)| Latency {
        p50_ms: round3(p50),
        p95_ms: round3(p95),
        p99_ms: round3(p99),
        samples,
    })
}

/// p95 read latency of L1, L2 and L3 over their windows (ms), for the dashboard's history.
pub fn tier_p95(d: &Daena) -> [Option<f64>; 3] {
    let l = &d.memory().latency;
    [&l.l1, &l.l2, &l.l3].map(|w| latency(w).map(|l| l.p95_ms))
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TierView {
    pub records: u64,
    /// Bytes as stored (compressed and encrypted).
    pub bytes: u64,
    /// Bytes of plaintext (payload and meta JSON).
    pub raw_bytes: u64,
    /// raw ÷ stored; null when empty.
    pub compression_ratio: Option<f64>,
    /// Reads served by this tier ÷ reads that reached it.
    pub hit_rate: Option<f64>,
    pub hits: u64,
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct L1View {
    pub entries: u64,
    pub bytes: u64,
    pub capacity_entries: u64,
    pub capacity_bytes: u64,
    pub hit_rate: Option<f64>,
    pub hits: u64,
    pub latency: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CountView {
    pub records: u64,
    pub bytes: u64,
    pub l2: u64,
    pub l2q: u64,
    pub l3: u64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DivergenceView {
    /// Unintended divergence events ÷ overwrites; intended revisions do not count.
    pub rate: f64,
    pub events: u64,
    pub overwrites: u64,
    pub aborted: u64,
    pub intended_revisions: u64,
    pub max_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrowthView {
    pub records_per_hour: Option<f64>,
    pub bytes_per_hour: Option<f64>,
    /// Hours the growth rate is computed over (since start, at most 24).
    pub window_hours: f64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SloCheck {
    pub target: f64,
    pub observed: Option<f64>,
    /// `ok`, `violated`, or `no_data`.
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerBrief {
    pub size: u64,
    pub head_hash: String,
    pub checkpoint_size: u64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Operations {
    pub reads: u64,
    pub misses: u64,
    pub writes: u64,
    pub deletes: u64,
    pub policy_denies: u64,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryReport {
    pub l1: L1View,
    pub l2: TierView,
    pub l2q: TierView,
    pub l3: TierView,
    pub totals: CountView,
    pub by_class: BTreeMap<String, CountView>,
    pub by_tenant: BTreeMap<String, CountView>,
    pub divergence: DivergenceView,
    pub growth: GrowthView,
    pub operations: Operations,
    pub ledger: LedgerBrief,
    pub slo: BTreeMap<String, SloCheck>,
    pub writes_enabled: bool,
    /// The tenant the per-class view is scoped to (non-ops callers see only theirs).
    pub scope: String,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| (a as f64 / b as f64 * 10_000.0).round() / 10_000.0)
}

fn add(v: &mut CountView, tier: Tier, a: &Agg) {
    v.records += a.records;
    v.bytes += a.stored;
    match tier {
        Tier::L2 => v.l2 += a.records,
        Tier::L2Q => v.l2q += a.records,
        Tier::L3 => v.l3 += a.records,
    }
}

fn slo(target: f64, observed: Option<f64>, lower_is_better: bool) -> SloCheck {
    let status = match observed {
        None => "no_data",
        Some(o) if (lower_is_better && o <= target) || (!lower_is_better && o >= target) => "ok",
        Some(_) => "violated",
    };
    SloCheck { target, observed, status: status.to_owned() }
}

pub fn report(d: &Daena, who: &Principal) -> MemoryReport {
    let m = &d.memory();
    let c = &m.counters;
    let scope_all = who.role() == Role::Ops || who.role() == Role::Auditor;
    let tenant = who.tenant().to_string();
    let empty = || CountView { records: 0, bytes: 0, l2: 0, l2q: 0, l3: 0 };
    let mut tiers: BTreeMap<Tier, Agg> = BTreeMap::new();
    let mut by_class: BTreeMap<String, CountView> = BTreeMap::new();
    let mut by_tenant: BTreeMap<String, CountView> = BTreeMap::new();
    let mut totals = empty();
    for ((t, class, tier), a) in m.stats.lock().by.iter() {
        if a.records == 0 || (!scope_all && *t != tenant) {
            continue;
        }
        let e = tiers.entry(*tier).or_default();
        e.records += a.records;
        e.stored += a.stored;
        e.raw += a.raw;
        add(&mut totals, *tier, a);
        add(by_class.entry(class.clone()).or_insert_with(empty), *tier, a);
        add(by_tenant.entry(t.clone()).or_insert_with(empty), *tier, a);
    }
    let (l1h, l2h, l3h, miss) = (
        c.l1_hits.load(Ordering::Relaxed),
        c.l2_hits.load(Ordering::Relaxed),
        c.l3_hits.load(Ordering::Relaxed),
        c.misses.load(Ordering::Relaxed),
    );
    let reads = l1h + l2h + l3h + miss;
    let tier_view = |tier: Tier, hits: u64, reached: u64, lat: &LatencyWindow| {
        let a = tiers.get(&tier).copied().unwrap_or_default();
        TierView {
            records: a.records,
            bytes: a.stored,
            raw_bytes: a.raw,
            compression_ratio: ratio(a.raw, a.stored),
            hit_rate: ratio(hits, reached),
            hits,
            latency: latency(lat),
        }
    };
    let cfg = &d.config().memory;
    let l1 = L1View {
        entries: m.l1.len() as u64,
        bytes: m.l1.weight(),
        capacity_entries: cfg.l1_cache_size,
        capacity_bytes: cfg.l1_cache_bytes,
        hit_rate: ratio(l1h, reads),
        hits: l1h,
        latency: latency(&m.latency.l1),
    };
    let after_l1 = reads - l1h;
    let l2 = tier_view(Tier::L2, l2h, after_l1, &m.latency.l2);
    let l2q = tier_view(Tier::L2Q, 0, 0, &LatencyWindow::default());
    let l3 = tier_view(Tier::L3, l3h, after_l1.saturating_sub(l2h), &m.latency.l3);

    let overwrites = c.overwrites.load(Ordering::Relaxed);
    let events = c.divergence_events.load(Ordering::Relaxed);
    let rate = ratio(events, overwrites).unwrap_or(0.0);
    let divergence = DivergenceView {
        rate,
        events,
        overwrites,
        aborted: c.divergence_aborts.load(Ordering::Relaxed),
        intended_revisions: c.intended_revisions.load(Ordering::Relaxed),
        max_rate: cfg.slo.max_divergence_rate,
    };

    let growth = {
        let g = m.growth.lock();
        match (g.front(), g.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let hours = (last.0 - first.0) as f64 / Micros::HOUR as f64;
                GrowthView {
                    records_per_hour: Some(((last.1 as f64 - first.1 as f64) / hours * 100.0).round() / 100.0),
                    bytes_per_hour: Some(((last.2 as f64 - first.2 as f64) / hours).round()),
                    window_hours: (hours * 1000.0).round() / 1000.0,
                }
            }
            _ => GrowthView { records_per_hour: None, bytes_per_hour: None, window_hours: 0.0 },
        }
    };

    let head = d.ledger().reader.head();
    let ledger = LedgerBrief {
        size: head.size,
        head_hash: hex::encode(head.hash),
        checkpoint_size: d.ledger().reader.checkpoint().map_or(0, |c| c.size),
    };
    let mut slos = BTreeMap::new();
    slos.insert("l1_p95_ms".to_owned(), slo(cfg.slo.l1_p95_ms, l1.latency.as_ref().map(|l| l.p95_ms), true));
    slos.insert("l2_p95_ms".to_owned(), slo(cfg.slo.l2_p95_ms, l2.latency.as_ref().map(|l| l.p95_ms), true));
    slos.insert("l3_p95_ms".to_owned(), slo(cfg.slo.l3_p95_ms, l3.latency.as_ref().map(|l| l.p95_ms), true));
    slos.insert(
        "max_divergence_rate".to_owned(),
        slo(cfg.slo.max_divergence_rate, (overwrites > 0).then_some(rate), true),
    );
    MemoryReport {
        l1,
        l2,
        l2q,
        l3,
        totals,
        by_class,
        by_tenant,
        divergence,
        growth,
        operations: Operations {
            reads,
            misses: miss,
            writes: c.writes.load(Ordering::Relaxed),
            deletes: c.deletes.load(Ordering::Relaxed),
            policy_denies: c.policy_denies.load(Ordering::Relaxed),
        },
        ledger,
        slo: slos,
        writes_enabled: d.writes_enabled(),
        scope: if scope_all { "all tenants".to_owned() } else { tenant },
    }
}
