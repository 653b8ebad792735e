//! Memory: records addressed by (tenant, class, key) in three tiers.
//!
//! Writes are sealed (compressed, encrypted) here, then go through the commit thread, which
//! ledgers them before they are acknowledged and applies them to L2 (or L2Q) and L1. Reads go
//! L1 → L2 → L3. ABAC is checked on every read, write, delete and list; denials are ledgered.
//! Quarantined classes land in L2Q until distinct agents confirm them (or a reviewer
//! promotes them); overwrites are measured for divergence and refused above a class's
//! threshold unless marked as an intended revision.

pub mod aging;
pub mod codec;
pub mod dict;
pub mod latency;
pub mod monitor;
pub use latency::LatencyWindow;
mod read;
mod settle;
mod shared;
pub mod state;

pub use read::*;
pub use shared::*;

use crate::Daena;
use crate::auth::Principal;
use crate::error::{AppError, AppResult, ErrorCode};
use crate::policy::Action;
use crate::state::Op;
use codec::Plain;
use daena_core::auth::Role;
use daena_core::ids::{ClassName, RecordKey};
use daena_core::ledger::NewEntry;
use daena_store::records::{Tier, TrustRow};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use state::{MemoryOp, Put, PutOutcome};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// The caller's agent identity: the `X-Agent-ID` header (which a key bound to an agent
/// may only set to that agent), else the bound agent or the key's name.
pub fn agent_of(who: &Principal, header: Option<&str>) -> AppResult<String> {
    who.acting_agent(header)
}

pub(super) fn check_policy(
    d: &Daena,
    who: &Principal,
    addr_class: &ClassName,
    reference: &str,
    action: Action,
) -> AppResult<()> {
    let decision = d.governance().policy().decide(who, addr_class, action);
    if decision.allowed {
        return Ok(());
    }
    d.memory().counters.policy_denies.fetch_add(1, Ordering::Relaxed);
    let entry = NewEntry::new(who.tenant().as_str(), who.actor(), "policy.deny", reference).attrs(json!({
        "class": addr_class, "action": action.as_str(), "rules": decision.rules, "reason": decision.reason,
        "roles": crate::policy::Subject::of(who).roles,
    }));
    d.commit().append_detached(vec![entry]);
    Err(AppError::new(
        ErrorCode::PolicyDenied,
        format!("{} on class {addr_class} denied: {}", action.as_str(), decision.reason),
    )
    .with_details(json!({"rules": decision.rules, "class": addr_class, "action": action.as_str()})))
}

pub(super) fn writes_enabled(d: &Daena) -> AppResult<()> {
    if d.writes_enabled() {
        Ok(())
    } else {
        Err(AppError::new(
            ErrorCode::WritesDisabled,
            "the service is read-only (DAENA_NBMF_ENABLED=false or `daena writes off`); reads continue",
        ))
    }
}

/// A write request.
#[derive(Debug, Clone)]
pub struct PutRequest {
    pub class: String,
    pub key: String,
    pub payload: Value,
    pub meta: Option<Value>,
    pub if_match: Option<u64>,
    pub intended_revision: bool,
    pub agent: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteResult {
    pub created: bool,
    /// Divergence from the previous version (overwrites only).
    pub divergence: Option<f64>,
    #[serde(flatten)]
    pub record: SystemFields,
}

/// Writes a record (create or overwrite); acknowledged once its ledger entry is durable.
pub async fn put(d: &Daena, who: &Principal, req: PutRequest) -> AppResult<WriteResult> {
    let start = Instant::now();
    let addr =
        Addr { tenant: who.tenant().clone(), class: ClassName::new(&req.class)?, key: RecordKey::new(&req.key)? };
    let reference = format!("{}/{}", addr.class, addr.key);
    writes_enabled(d)?;
    check_policy(d, who, &addr.class, &reference, Action::Write)?;
    let meta = match req.meta {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(m @ Value::Object(_)) => m,
        Some(_) => return Err(AppError::invalid("meta must be a JSON object")),
    };
    let payload_text = serde_json::to_string(&req.payload).map_err(|e| AppError::invalid(e.to_string()))?;
    let max = d.config().memory.max_payload_bytes;
    if payload_text.len() > max {
        return Err(AppError::new(
            ErrorCode::PayloadTooLarge,
            format!("payload is {} bytes; memory.max_payload_bytes is {max}", payload_text.len()),
        ));
    }
    let meta_text = serde_json::to_string(&meta).map_err(|e| AppError::invalid(e.to_string()))?;
    let writer = agent_of(who, req.agent.as_deref())?;
    let class_cfg = d.config().memory.class(&addr.class);
    let level = class_cfg.zstd_level.unwrap_or(d.config().memory.zstd_level);
    let quarantine = d.config().memory.trust.require_quarantine.contains(&addr.class);
    let canonical = daena_core::canonical::to_string(&req.payload);
    let content_sha256: [u8; 32] = Sha256::digest(canonical.as_bytes()).into();
    // The ledger carries a keyed hash of the payload, not its SHA-256 (crypto::content_mac).
    let (mac_version, mac) = d.governance().data_keys().content_mac(&addr.tenant, canonical.as_bytes())?;
    let content_mac = format!("{mac_version}:{}", hex::encode(mac));
    let plain = Plain { payload: Arc::from(payload_text.as_str()), meta: Arc::from(meta_text.as_str()) };
    // Small records are sealed on the request's thread (tens of microseconds); large ones on
    // the blocking pool so they do not stall other requests.
    let (envelope, raw_len) = if payload_text.len() + meta_text.len() < 64 * 1024 {
        codec::seal(d.memory(), &addr.tenant, addr.class.as_str(), addr.key.as_str(), &plain, level)?
    } else {
        let m = d.memory().clone();
        let (tenant, class, key, sealed_plain) =
            (addr.tenant.clone(), addr.class.to_string(), addr.key.to_string(), plain.clone());
        tokio::task::spawn_blocking(move || codec::seal(&m, &tenant, &class, &key, &sealed_plain, level))
            .await
            .map_err(|e| AppError::internal(format!("seal task: {e}")))??
    };

    let table_key = addr.table_key();
    for _attempt in 0..5 {
        let generation = d.memory().generation(&table_key);
        // What is there now, to measure divergence against.
        let current = match get_current(d, &addr, &table_key) {
            Ok(c) => c,
            Err(e) => return Err(e),
        };
        let divergence = match &current {
            Some((_, old)) => {
                let old: Value = serde_json::from_str(&old.payload).unwrap_or(Value::Null);
                Some(daena_core::divergence::divergence(&old, &req.payload))
            }
            None => None,
        };
        if let Some(div) = divergence {
            let c = &d.memory().counters;
            c.overwrites.fetch_add(1, Ordering::Relaxed);
            if req.intended_revision {
                c.intended_revisions.fetch_add(1, Ordering::Relaxed);
            } else if div >= DIVERGENCE_EVENT {
                c.divergence_events.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(limit) = class_cfg.divergence_abort
                && div >= limit
                && !req.intended_revision
            {
                c.divergence_aborts.fetch_add(1, Ordering::Relaxed);
                let entry = NewEntry::new(addr.tenant.as_str(), who.actor(), "memory.divergence_abort", &reference)
                    .attrs(json!({
                        "class": addr.class, "key": addr.key, "divergence": (div * 10_000.0).round() / 10_000.0,
                        "threshold": limit, "current_version": current.as_ref().map(|(v, _)| *v),
                    }));
                d.commit().append(vec![entry]).await?;
                return Err(AppError::new(
                    ErrorCode::DivergenceAbort,
                    format!(
                        "this overwrite of {reference} diverges {div:.3} from the current version, at or above the \
                         {} threshold {limit}; send it with \"intended_revision\": true if the change is intended",
                        addr.class
                    ),
                )
                .with_details(json!({"divergence": div, "threshold": limit})));
            }
        }
        let op = Put {
            addr: addr.clone(),
            actor: who.actor(),
            writer: writer.clone(),
            writer_key: who.key_id().to_owned(),
            envelope: envelope.clone(),
            raw_len,
            level: i8::try_from(level).unwrap_or(i8::MAX),
            content_sha256,
            content_mac: content_mac.clone(),
            payload_bytes: payload_text.len(),
            if_match: req.if_match,
            observed: current.as_ref().map(|(v, _)| *v),
            absent_at: current.is_none().then_some(generation),
            quarantine,
            divergence,
            intended: req.intended_revision,
            result: Arc::new(std::sync::OnceLock::new()),
        };
        let result = op.result.clone();
        match d.commit().submit(Op::from(MemoryOp::Put(Box::new(op)))).await {
            Ok(receipts) => {
                d.memory().counters.writes.fetch_add(1, Ordering::Relaxed);
                d.memory().latency.write.record(start.elapsed().as_secs_f64() * 1e3);
                let Some(PutOutcome::Written(meta)) = result.get() else {
                    return Err(AppError::internal("the commit did not report the row"));
                };
                let mut meta = meta.clone();
                meta.seq = receipts.first().map_or(0, |r| r.seq);
                let threshold = d.config().memory.trust.promote_threshold;
                let tier = meta.tier.as_str();
                return Ok(WriteResult {
                    created: current.is_none(),
                    divergence,
                    record: system_fields(&addr, &meta, tier, 0, 0, threshold),
                });
            }
            Err(_) if matches!(result.get(), Some(PutOutcome::Raced)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(AppError::new(ErrorCode::VersionConflict, "the record kept changing while this write was prepared; retry"))
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteResult {
    pub deleted: bool,
    pub class: String,
    pub key: String,
    pub seq: u64,
}

pub(super) async fn remove(
    d: &Daena,
    who: &Principal,
    class: &str,
    key: &str,
    if_match: Option<u64>,
    action: &'static str,
    policy: Action,
) -> AppResult<DeleteResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    writes_enabled(d)?;
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), policy)?;
    let op = MemoryOp::Delete { addr, actor: who.actor(), if_match, action };
    let receipts = d.commit().submit(Op::from(op)).await?;
    d.memory().counters.deletes.fetch_add(1, Ordering::Relaxed);
    Ok(DeleteResult {
        deleted: true,
        class: class.to_owned(),
        key: key.to_owned(),
        seq: receipts.first().map_or(0, |r| r.seq),
    })
}

pub async fn delete(
    d: &Daena,
    who: &Principal,
    class: &str,
    key: &str,
    if_match: Option<u64>,
) -> AppResult<DeleteResult> {
    remove(d, who, class, key, if_match, "memory.delete", Action::Delete).await
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrustResult {
    pub class: String,
    pub key: String,
    pub tier: String,
    pub quarantined: bool,
    pub score: f32,
    pub confirmations: Vec<String>,
    pub promoted: bool,
    pub seq: u64,
}

pub(super) async fn trust_result(d: &Daena, addr: &Addr, seq: u64) -> AppResult<TrustResult> {
    let row = d.memory().row(&addr.table_key())?.ok_or_else(|| AppError::not_found("the record is gone"))?;
    let trust = row.trust.clone().unwrap_or(TrustRow { writer: String::new(), confirmations: Vec::new(), score: 1.0 });
    Ok(TrustResult {
        class: addr.class.to_string(),
        key: addr.key.to_string(),
        tier: row.tier.as_str().to_owned(),
        quarantined: row.tier == Tier::L2Q,
        score: trust.score,
        confirmations: trust.confirmations,
        promoted: row.tier != Tier::L2Q,
        seq,
    })
}

/// A distinct agent confirms a quarantined record; enough confirmations promote it.
pub async fn confirm(
    d: &Daena,
    who: &Principal,
    class: &str,
    key: &str,
    agent: Option<&str>,
) -> AppResult<TrustResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    writes_enabled(d)?;
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), Action::Write)?;
    let agent = agent_of(who, agent)?;
    let threshold = d.config().memory.trust.promote_threshold as f32;
    let op =
        MemoryOp::Confirm { addr: addr.clone(), actor: who.actor(), agent, by: who.key_id().to_owned(), threshold };
    let receipts = d.commit().submit(Op::from(op)).await?;
    trust_result(d, &addr, receipts.first().map_or(0, |r| r.seq)).await
}

/// Reviewers (ops keys or keys with the ABAC role `trust.reviewer`) may promote or reject.
pub(super) fn require_reviewer(who: &Principal) -> AppResult<()> {
    if who.role() == Role::Ops || who.attributes().roles.iter().any(|r| r == "trust.reviewer") {
        Ok(())
    } else {
        Err(AppError::forbidden("promoting or rejecting needs an ops key or the ABAC role trust.reviewer"))
    }
}

pub async fn promote(d: &Daena, who: &Principal, class: &str, key: &str) -> AppResult<TrustResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    writes_enabled(d)?;
    require_reviewer(who)?;
    check_policy(d, who, &addr.class, &format!("{class}/{key}"), Action::Write)?;
    let receipts = d.commit().submit(Op::from(MemoryOp::Promote { addr: addr.clone(), actor: who.actor() })).await?;
    trust_result(d, &addr, receipts.first().map_or(0, |r| r.seq)).await
}

pub async fn reject(d: &Daena, who: &Principal, class: &str, key: &str) -> AppResult<DeleteResult> {
    let addr = Addr { tenant: who.tenant().clone(), class: ClassName::new(class)?, key: RecordKey::new(key)? };
    require_reviewer(who)?;
    let row = d.memory().row(&addr.table_key())?;
    if row.as_ref().is_some_and(|r| r.tier != Tier::L2Q) {
        return Err(AppError::new(
            ErrorCode::Conflict,
            format!("{class}/{key} is not in quarantine; delete it instead"),
        ));
    }
    remove(d, who, class, key, None, "memory.reject", Action::Write).await
}
