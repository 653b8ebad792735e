//! Aging runs: scan every record, decide with `daena_core::aging`, and submit the actions
//! (each ledgered) through the commit thread. Run by the scheduler and `daena aging run`.

use super::state::{AgeAction, MemoryOp};
use super::{Addr, codec};
use crate::Daena;
use crate::config::AgingAction as ConfigAction;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::state::Op;
use daena_core::aging::{self, AgeKind, Decision, Place, Rule};
use daena_core::ids::{ClassName, RecordKey, TenantId};
use daena_core::time::Micros;
use daena_store::records::{self, RowBody, Tier};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgingItem {
    pub tenant: String,
    pub class: String,
    pub key: String,
    pub action: String,
    pub idle_days: f64,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgingReport {
    pub dry_run: bool,
    pub scanned: u64,
    pub tightened: u64,
    pub archived: u64,
    pub expired: u64,
    /// Records that changed between the scan and the action (left for the next run).
    pub skipped: u64,
    pub errors: u64,
    /// The first 100 actions.
    pub actions: Vec<AgingItem>,
}

struct Candidate {
    addr: Addr,
    decision: Decision,
    seq: u64,
    idle_days: f64,
    envelope: Option<Vec<u8>>,
    /// What the decision was made on, to make it again on the fleet's last access.
    place: Place,
    level: i32,
    retention: Option<u32>,
    updated_at: i64,
    last_access: i64,
}

impl Candidate {
    /// Decides again with the fleet's last access of the record (replicas each keep the
    /// reads they served): a record read through another replica is not idle.
    fn decide_on(&mut self, fleet_last: i64, now: Micros, rules: &[Rule], cold_level: i32) {
        if fleet_last <= self.last_access {
            return;
        }
        self.last_access = fleet_last;
        self.idle_days = now.days_since(Micros(self.updated_at.max(fleet_last)));
        let subject = aging::Subject {
            class: self.addr.class.as_str(),
            place: self.place,
            level: self.level,
            idle_days: self.idle_days,
        };
        self.decision = aging::decide(subject, self.retention, rules, cold_level);
    }
}

fn rules(d: &Daena) -> Vec<Rule> {
    d.config()
        .memory
        .aging
        .rules
        .iter()
        .map(|r| Rule {
            after_days: r.after_days,
            kind: match r.action {
                ConfigAction::TightenCompression => AgeKind::Tighten,
                ConfigAction::Archive => AgeKind::Archive,
            },
            targets: r.targets.iter().map(|t| t.to_string()).collect(),
        })
        .collect()
}

/// Scans and applies (or, with `dry_run`, only reports) the aging rules at the clock's now.
pub async fn run(d: &Daena, actor: &str, dry_run: bool) -> AppResult<AgingReport> {
    if !dry_run && !d.writes_enabled() {
        return Err(AppError::new(ErrorCode::WritesDisabled, "aging changes records; the service is read-only"));
    }
    let now = d.clock().now();
    let rules = rules(d);
    let cold_level = d.config().memory.l3_zstd_level;
    let mut report = AgingReport { dry_run, ..AgingReport::default() };
    d.commit().settle().await?;
    let mut candidates = Vec::new();
    let kv = &d.memory().kv;
    kv.scan_records(&[], None, |k, row| {
        report.scanned += 1;
        let Some((t, c, key)) = records::split_key(k) else { return Ok(true) };
        let last_access = kv.access(k)?.map_or(0, |(last, _)| last);
        let last = row.updated_at.max(last_access);
        let idle_days = now.days_since(Micros(last));
        let place = match row.tier {
            Tier::L2 => Place::Warm,
            Tier::L2Q => Place::Quarantine,
            Tier::L3 => Place::Cold,
        };
        let (Ok(tenant), Ok(class), Ok(key)) = (TenantId::new(t), ClassName::new(c), RecordKey::new(key)) else {
            return Ok(true);
        };
        let retention = d.config().memory.class(&class).retention_days;
        let level = i32::from(row.level);
        let subject = aging::Subject { class: c, place, level, idle_days };
        let decision = aging::decide(subject, retention, &rules, cold_level);
        if decision != Decision::Keep {
            let envelope = match &row.body {
                RowBody::Inline(b) => Some(b.clone()),
                RowBody::Cold { .. } => None,
            };
            candidates.push(Candidate {
                addr: Addr { tenant, class, key },
                decision,
                seq: row.seq,
                idle_days,
                envelope,
                place,
                level,
                retention,
                updated_at: row.updated_at,
                last_access,
            });
        }
        Ok(true)
    })?;
    if let Some(r) = d.replicas()
        && !candidates.is_empty()
    {
        // Idle here may be busy elsewhere: a more recent read through any replica counts.
        let addrs: Vec<Vec<u8>> = candidates.iter().map(|c| c.addr.table_key()).collect();
        let unread = |e| {
            AppError::unavailable(format!(
                "aging needs the replicas' access statistics to tell idle records from ones read through \
                 another replica, and they could not be read ({e}); nothing was changed"
            ))
        };
        let fleet = r.access.fleet_access(&addrs).map_err(unread)?;
        // Reads other replicas served before the statistics began are unknown: no record is
        // idle from before then.
        let since = r.access.since(now.0).map_err(unread)?;
        for (c, addr) in candidates.iter_mut().zip(&addrs) {
            let last = fleet.get(addr).copied().unwrap_or(0).max(since);
            c.decide_on(last, now, &rules, cold_level);
        }
        candidates.retain(|c| c.decision != Decision::Keep);
    }

    for c in candidates {
        let name = match c.decision {
            Decision::Tighten => "tighten_compression",
            Decision::Archive => "archive",
            Decision::Expire => "expire",
            Decision::Keep => continue,
        };
        if report.actions.len() < 100 {
            report.actions.push(AgingItem {
                tenant: c.addr.tenant.to_string(),
                class: c.addr.class.to_string(),
                key: c.addr.key.to_string(),
                action: name.to_owned(),
                idle_days: (c.idle_days * 100.0).round() / 100.0,
            });
        }
        if dry_run {
            count(&mut report, c.decision);
            continue;
        }
        let op = match (c.decision, c.envelope) {
            (Decision::Expire, _) => {
                MemoryOp::Expire { addr: c.addr, actor: actor.to_owned(), expect_seq: c.seq, idle_days: c.idle_days }
            }
            (Decision::Tighten | Decision::Archive, Some(envelope)) => {
                let m = d.memory().clone();
                let addr = c.addr.clone();
                let sealed = tokio::task::spawn_blocking(move || {
                    codec::recompress(&m, &addr.tenant, addr.class.as_str(), addr.key.as_str(), &envelope, cold_level)
                })
                .await
                .map_err(|e| AppError::internal(format!("recompress task: {e}")))?;
                let (envelope, raw_len) = match sealed {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e.message, "aging could not re-seal a record");
                        report.errors += 1;
                        continue;
                    }
                };
                let action = if c.decision == Decision::Archive { AgeAction::Archive } else { AgeAction::Tighten };
                MemoryOp::Age {
                    addr: c.addr,
                    actor: actor.to_owned(),
                    action,
                    envelope,
                    raw_len,
                    level: i8::try_from(cold_level).unwrap_or(i8::MAX),
                    expect_seq: c.seq,
                }
            }
            _ => continue,
        };
        match d.commit().submit(Op::from(op)).await {
            Ok(_) => count(&mut report, c.decision),
            Err(e) if matches!(e.code, ErrorCode::VersionConflict | ErrorCode::NotFound) => report.skipped += 1,
            Err(e) => {
                tracing::warn!(error = %e.message, "aging action failed");
                report.errors += 1;
            }
        }
    }
    if !dry_run && (report.tightened + report.archived + report.expired) > 0 {
        tracing::info!(
            tightened = report.tightened,
            archived = report.archived,
            expired = report.expired,
            "aging run applied"
        );
    }
    Ok(report)
}

fn count(report: &mut AgingReport, d: Decision) {
    match d {
        Decision::Tighten => report.tightened += 1,
        Decision::Archive => report.archived += 1,
        Decision::Expire => report.expired += 1,
        Decision::Keep => {}
    }
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResealReport {
    pub scanned: u64,
    /// Records sealed under an older data key version before the run.
    pub stale: u64,
    pub resealed: u64,
    /// Changed meanwhile (a newer write is already under the current key).
    pub skipped: u64,
    pub errors: u64,
    /// Compression dictionaries sealed again under the current data keys.
    #[serde(default)]
    pub dictionaries_resealed: u64,
    /// LLM cache entries sealed again under the current data keys.
    #[serde(default)]
    pub cache_entries_resealed: u64,
    /// Older data key versions destroyed once nothing was sealed under them any more.
    #[serde(default)]
    pub data_keys_retired: u64,
    /// Why older data key versions were kept, when they were.
    #[serde(default)]
    pub retirement_blocked: Option<String>,
}

/// Records sealed under an older data key version than their tenant's current one, with the
/// change sequence number seen; and how many records were scanned.
pub async fn stale_records(d: &Daena) -> AppResult<(u64, Vec<(Addr, u64)>)> {
    d.commit().settle().await?;
    let mut scanned = 0u64;
    let mut stale: Vec<(Addr, u64)> = Vec::new();
    d.memory().kv.scan_records(&[], None, |k, row| {
        scanned += 1;
        let Some((t, c, key)) = records::split_key(k) else { return Ok(true) };
        let (Ok(tenant), Ok(class), Ok(key)) = (TenantId::new(t), ClassName::new(c), RecordKey::new(key)) else {
            return Ok(true);
        };
        let version = match &row.body {
            RowBody::Inline(b) => crate::keyring::parse_header(b).map(|(_, v)| v).ok(),
            RowBody::Cold { segment, offset, len } => d
                .memory()
                .cold
                .read(*segment, *offset, *len)
                .ok()
                .and_then(|b| crate::keyring::parse_header(&b).map(|(_, v)| v).ok()),
        };
        if version.is_some_and(|v| d.memory().keyring.older_and_held(t, v)) {
            stale.push((Addr { tenant, class, key }, row.seq));
        }
        Ok(true)
    })?;
    Ok((scanned, stale))
}

/// Seals again, under each tenant's current data key, every record sealed under an older
/// version, in place through the commit thread (ledgered as `memory.age` / `reseal`), so
/// requests go on. `progress(done, total)` is called as it goes.
pub async fn reseal_stale(d: &Daena, actor: &str, mut progress: impl FnMut(u64, u64)) -> AppResult<ResealReport> {
    if !d.writes_enabled() {
        return Err(AppError::new(
            ErrorCode::WritesDisabled,
            "re-encryption changes records; the service is read-only",
        ));
    }
    let (scanned, stale) = stale_records(d).await?;
    let mut report = ResealReport { scanned, ..ResealReport::default() };
    report.stale = stale.len() as u64;
    let total = report.stale;
    for (n, (addr, seq)) in stale.into_iter().enumerate() {
        progress(n as u64, total);
        let Some(row) = d.memory().row(&addr.table_key())? else {
            report.skipped += 1;
            continue;
        };
        if row.seq != seq {
            report.skipped += 1;
            continue;
        }
        let envelope = match &row.body {
            RowBody::Inline(b) => b.clone(),
            RowBody::Cold { segment, offset, len } => d.memory().cold.read(*segment, *offset, *len)?,
        };
        let (m, a, level) = (d.memory().clone(), addr.clone(), i32::from(row.level));
        let sealed = tokio::task::spawn_blocking(move || {
            codec::recompress(&m, &a.tenant, a.class.as_str(), a.key.as_str(), &envelope, level)
        })
        .await
        .map_err(|e| AppError::internal(format!("reseal task: {e}")))?;
        let (envelope, raw_len) = match sealed {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e.message, "could not re-seal a record");
                report.errors += 1;
                continue;
            }
        };
        let op = MemoryOp::Age {
            addr,
            actor: actor.to_owned(),
            action: AgeAction::Reseal,
            envelope,
            raw_len,
            level: row.level,
            expect_seq: seq,
        };
        match d.commit().submit(Op::from(op)).await {
            Ok(_) => report.resealed += 1,
            Err(e) if matches!(e.code, ErrorCode::VersionConflict | ErrorCode::NotFound) => report.skipped += 1,
            Err(e) => {
                tracing::warn!(error = %e.message, "re-sealing a record failed");
                report.errors += 1;
            }
        }
    }
    progress(total, total);
    Ok(report)
}
