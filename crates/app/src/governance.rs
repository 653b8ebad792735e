//! Governance through the ledger: API keys, tenant shreds, data key retirement, rate-limit
//! overrides, the write switch and drill records change state only when the commit thread
//! applies their ledger entries, like memory operations. Crash recovery, replay, rollback and restore therefore
//! rebuild them from the same entries: a key revoked in the ledger is revoked in every state
//! built from it.
//!
//! Two facts are also never undone by going back in time: a revoked key and a shredded
//! tenant. A restore or rollback that sets entries aside carries the revocations and shreds
//! among them forward ([`carried_facts`]): the new state records them in the setting
//! `carry_forward`, and the next open applies and ledgers them again before it serves.
//!
//! Every action the ledger may hold is named in [`replay`]'s match or in [`NO_STATE`]; an
//! unknown one stops a replay with an error instead of being skipped.

use crate::agents::AgentRegistry;
use crate::auth::{KeyRing, KeyView};
use crate::error::{AppError, AppResult};
use crate::failed_auth::FailedAuth;
use crate::keyring::Keyring;
use crate::memory::MemoryShared;
use crate::policy::PolicyEngine;
use crate::ratelimit::OVERRIDES;
use crate::ratelimit::{LimitView, RateLimiter};
use crate::snapshot::{DrillRecord, LAST_DRILL, LastDrill};
use daena_core::auth::{ApiKeyRecord, KeyAttributes, Role};
use daena_core::ids::TenantId;
use daena_core::ledger::entry::{Entry, NewEntry};
use daena_core::time::Micros;
use daena_store::kv::{API_KEYS, DocTable, Kv, SETTINGS, encode_doc};
use daena_store::ledger::Receipt;
use daena_store::state::DocScope;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Ledger actions that change no state: events, reports and outcomes.
pub const NO_STATE: &[&str] = &[
    "policy.deny",
    "memory.divergence_abort",
    "ops.snapshot",
    "ops.restore",
    "ops.rollback",
    "ops.replay",
    "key.rotate",
    "ledger.import_legacy",
    "ledger.repair",
];

/// Setting of the persisted write switch (`admin.writes`).
const WRITES_SWITCH: &str = "writes_switch";
/// Setting of the facts a restore or rollback carried forward, not yet applied.
const CARRY_FORWARD: &str = "carry_forward";

/// A document as a ledger that keeps the state writes it: table, key, JSON (`None` removes).
pub type KeptDoc = (DocTable, String, Option<Vec<u8>>);

/// The governance documents a ledger that keeps the state holds (see
/// [`GovState::chain_docs`]).
pub const KEPT_DOCS: [DocScope; 4] =
    [(API_KEYS, None), (OVERRIDES, None), (SETTINGS, Some(WRITES_SWITCH)), (SETTINGS, Some(LAST_DRILL))];

/// A governance change, prepared by a use case for the commit thread.
#[derive(Debug)]
pub enum GovOp {
    KeyCreate {
        record: ApiKeyRecord,
        actor: String,
    },
    KeyRevoke {
        id: String,
        actor: String,
        carried_from: Option<u64>,
    },
    /// Crypto-shreds a tenant's data keys up to `through` (filled in by `prepare` with the
    /// tenant's newest version when `None`).
    Shred {
        tenant: TenantId,
        actor: String,
        through: Option<u32>,
        evicted: usize,
        records: u64,
        carried_from: Option<u64>,
    },
    /// Retires a tenant's data keys older than `below`, once nothing is sealed under them
    /// (after a rotation's re-encryption). Not carried forward: a rollback to before it brings
    /// back the records sealed under those keys, and the keys with them.
    Retire {
        tenant: TenantId,
        below: u32,
        actor: String,
    },
    RateLimit {
        tenant: TenantId,
        limit: Option<LimitView>,
        actor: String,
    },
    Writes {
        enabled: bool,
        tenant: TenantId,
        actor: String,
    },
    Drill {
        record: DrillRecord,
        tenant: TenantId,
        actor: String,
    },
}

/// A revocation or shred set aside by a restore or rollback, to be applied again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFact {
    /// The fact's sequence number in the ledger it was set aside from.
    pub seq: u64,
    pub action: String,
    pub tenant: String,
    /// The key id of a revocation.
    #[serde(default)]
    pub key_id: Option<String>,
    /// The highest data key version a shred destroyed.
    #[serde(default)]
    pub through: Option<u32>,
}

impl CarriedFact {
    /// The fact a ledger entry states, if it is one that must survive going back in time.
    pub fn of(e: &Entry) -> Option<CarriedFact> {
        let fact = |key_id, through| CarriedFact {
            seq: e.seq,
            action: e.action.clone(),
            tenant: e.tenant.clone(),
            key_id,
            through,
        };
        match e.action.as_str() {
            "key.revoke" => Some(fact(Some(e.attrs.get("id")?.as_str()?.to_owned()), None)),
            "key.shred" => Some(fact(None, shred_through_attr(&e.attrs))),
            _ => None,
        }
    }

    fn op(&self) -> AppResult<GovOp> {
        let actor = format!("system:carried-from-{}", self.seq);
        match self.action.as_str() {
            "key.revoke" => Ok(GovOp::KeyRevoke {
                id: self.key_id.clone().unwrap_or_default(),
                actor,
                carried_from: Some(self.seq),
            }),
            "key.shred" => Ok(GovOp::Shred {
                tenant: TenantId::new(&self.tenant)?,
                actor,
                through: self.through,
                evicted: 0,
                records: 0,
                carried_from: Some(self.seq),
            }),
            other => Err(AppError::internal(format!("cannot carry forward {other}"))),
        }
    }
}

fn shred_through_attr(attrs: &Value) -> Option<u32> {
    attrs.get("shredded_through").and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok())
}

/// The revocations and shreds of the ledger in `current` that the ledger in `new` does not
/// hold: those after the two ledgers' common prefix (entry hashes chain, so the prefix ends at
/// the first position where they differ). A restore or rollback that replaces `current` by
/// `new` carries them forward. A `current` that cannot be read to its end (the damage a
/// restore may be repairing) gives the facts read up to there, with a warning.
pub fn facts_set_aside(current: &std::path::Path, new: &std::path::Path) -> AppResult<Vec<CarriedFact>> {
    #[derive(Deserialize)]
    struct Head<'a> {
        seq: u64,
        hash: &'a str,
        action: &'a str,
    }
    let prefix = |h: &str| u64::from_str_radix(h.get(..16).unwrap_or(""), 16).ok();
    if !current.is_dir() {
        return Ok(Vec::new());
    }
    let mut new_hashes: Vec<Option<u64>> = Vec::new();
    daena_store::ledger::stream_dir(new, |line| {
        new_hashes.push(serde_json::from_str::<Head>(line).ok().and_then(|h| prefix(h.hash)));
    })?;
    let mut facts = Vec::new();
    let mut diverged = false;
    let streamed = daena_store::ledger::stream_dir(current, |line| {
        let Ok(head) = serde_json::from_str::<Head>(line) else { return };
        if !diverged {
            let same = usize::try_from(head.seq.wrapping_sub(1)).ok().and_then(|i| new_hashes.get(i).copied());
            if same.is_some() && same == Some(prefix(head.hash)) {
                return;
            }
            diverged = true;
        }
        if matches!(head.action, "key.revoke" | "key.shred")
            && let Ok(entry) = daena_core::ledger::entry::parse_line(line)
            && let Some(fact) = CarriedFact::of(&entry)
        {
            facts.push(fact);
        }
    });
    if let Err(e) = streamed {
        tracing::warn!(error = %e, facts = facts.len(), "the replaced ledger could not be read to its end; carrying forward the revocations and shreds read before");
    }
    Ok(facts)
}

/// Records `facts` in the state database at `state_db` (a staged restore or rollback), for the
/// next open to apply.
pub fn record_carried(state_db: &std::path::Path, facts: &[CarriedFact]) -> AppResult<()> {
    if facts.is_empty() {
        return Ok(());
    }
    let kv = Kv::open(state_db, 1 << 20)?;
    let mut all: Vec<CarriedFact> = kv.get_doc(SETTINGS, CARRY_FORWARD)?.unwrap_or_default();
    all.extend(facts.iter().cloned());
    kv.put_doc(SETTINGS, CARRY_FORWARD, &all)?;
    Ok(())
}

/// The operations that apply the carried facts a state still holds.
pub fn carried_ops(kv: &Kv) -> AppResult<Vec<GovOp>> {
    let facts: Vec<CarriedFact> = kv.get_doc(SETTINGS, CARRY_FORWARD)?.unwrap_or_default();
    facts.iter().map(CarriedFact::op).collect()
}

/// The persisted write switch (`None`: never set at runtime).
pub fn persisted_writes(kv: &Kv) -> AppResult<Option<bool>> {
    Ok(kv.get_doc(SETTINGS, WRITES_SWITCH)?)
}

fn key_attrs(v: &KeyView) -> Value {
    json!({"id": v.id, "name": v.name, "role": v.role.as_str(), "tenant": v.tenant.as_str(),
           "roles": v.roles, "department": v.department, "agent": v.agent, "all_tenants": v.all_tenants})
}

/// Governance, as one capability of [`crate::Daena`]: who may call (API keys, the failed-auth
/// limit, the fleet's agents), what they may touch (policy per data class), how fast (tenant
/// rate limits), the data keys records are sealed with, and the write switch.
pub struct Governance {
    api_keys: Arc<KeyRing>,
    data_keys: Arc<Keyring>,
    policy: PolicyEngine,
    limiter: Arc<RateLimiter>,
    failed_auth: FailedAuth,
    agents: AgentRegistry,
    writes: Arc<AtomicBool>,
}

/// The parts [`Governance`] is made of, opened by [`crate::Daena::open`].
pub(crate) struct GovernanceParts {
    pub api_keys: Arc<KeyRing>,
    pub data_keys: Arc<Keyring>,
    pub policy: PolicyEngine,
    pub limiter: Arc<RateLimiter>,
    pub failed_auth: FailedAuth,
    pub agents: AgentRegistry,
    pub writes_enabled: bool,
}

impl Governance {
    pub(crate) fn new(p: GovernanceParts) -> Governance {
        Governance {
            api_keys: p.api_keys,
            data_keys: p.data_keys,
            policy: p.policy,
            limiter: p.limiter,
            failed_auth: p.failed_auth,
            agents: p.agents,
            writes: Arc::new(AtomicBool::new(p.writes_enabled)),
        }
    }

    /// The state the commit thread changes when it applies governance entries.
    pub(crate) fn state(&self, memory: Arc<MemoryShared>) -> GovState {
        GovState::new(self.api_keys.clone(), self.limiter.clone(), self.writes.clone(), self.data_keys.clone(), memory)
    }

    /// API keys: who may call, with which role and tenant.
    pub fn api_keys(&self) -> &Arc<KeyRing> {
        &self.api_keys
    }

    /// The master key and the tenants' data keys records and cache answers are sealed with.
    pub fn data_keys(&self) -> &Arc<Keyring> {
        &self.data_keys
    }

    /// The ABAC policy per data class.
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// Per-tenant rate limits.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Failed authentication per client address.
    pub fn failed_auth(&self) -> &FailedAuth {
        &self.failed_auth
    }

    /// The fleet's agents and their heartbeats.
    pub fn agents(&self) -> &AgentRegistry {
        &self.agents
    }

    /// Whether writes are on (`admin.writes`, or the configuration at start).
    pub fn writes_enabled(&self) -> bool {
        self.writes.load(Ordering::SeqCst)
    }
}

/// The state the governance entries change, applied on the commit thread.
pub struct GovState {
    keys: Arc<KeyRing>,
    limiter: Arc<RateLimiter>,
    writes: Arc<AtomicBool>,
    keyring: Arc<Keyring>,
    memory: Arc<MemoryShared>,
    kv: Kv,
    /// Names of keys created by the batch being prepared.
    names: HashSet<String>,
}

impl GovState {
    pub fn new(
        keys: Arc<KeyRing>,
        limiter: Arc<RateLimiter>,
        writes: Arc<AtomicBool>,
        keyring: Arc<Keyring>,
        memory: Arc<MemoryShared>,
    ) -> GovState {
        let kv = memory.kv.clone();
        GovState { keys, limiter, writes, keyring, memory, kv, names: HashSet::new() }
    }

    /// Validates `op` against current state and the batch so far; returns its entry.
    pub fn prepare(&mut self, op: &mut GovOp) -> AppResult<NewEntry> {
        match op {
            GovOp::KeyCreate { record, actor } => {
                if self.keys.active_name(&record.name) || !self.names.insert(record.name.clone()) {
                    return Err(AppError::new(
                        crate::error::ErrorCode::Conflict,
                        format!("an active key named {} already exists", record.name),
                    ));
                }
                let view = KeyView::from(&*record);
                let digest = hex::decode(&record.digest).map_err(|_| AppError::internal("malformed key digest"))?;
                // The body is the key's SHA-256 digest, so a replay can make the key again; the
                // key itself is 256 random bits and never leaves the response that made it.
                Ok(NewEntry::new(record.tenant.as_str(), actor.as_str(), "key.create", format!("key/{}", record.id))
                    .attrs(key_attrs(&view))
                    .body(digest))
            }
            GovOp::KeyRevoke { id, actor, carried_from } => {
                let view = self.keys.view(id).ok_or_else(|| AppError::not_found(format!("no key with id {id}")))?;
                if !view.active {
                    return Err(AppError::invalid(format!("key {id} is already revoked")));
                }
                let mut attrs = key_attrs(&view);
                if let Some(seq) = carried_from {
                    attrs["carried_from"] = json!(seq);
                }
                Ok(NewEntry::new(view.tenant.as_str(), actor.as_str(), "key.revoke", format!("key/{id}")).attrs(attrs))
            }
            GovOp::Shred { tenant, actor, through, evicted, records, carried_from } => {
                let (top, shredded) = self.keyring.versions(tenant.as_str())?;
                let upto = *through.get_or_insert(top);
                if carried_from.is_some() && shredded >= upto {
                    return Err(AppError::invalid(format!("tenant {tenant} is already shredded through {upto}")));
                }
                let mut attrs = json!({"data_keys_destroyed": self.keyring.count_through(tenant.as_str(), upto)?,
                    "cache_entries_evicted": evicted, "records": records, "shredded_through": upto});
                if let Some(seq) = carried_from {
                    attrs["carried_from"] = json!(seq);
                }
                Ok(NewEntry::new(tenant.as_str(), actor.as_str(), "key.shred", format!("tenant/{tenant}")).attrs(attrs))
            }
            GovOp::Retire { tenant, below, actor } => {
                let older = self.keyring.count_through(tenant.as_str(), below.saturating_sub(1))?;
                let attrs = json!({"retired_below": below, "data_keys_destroyed": older});
                Ok(NewEntry::new(tenant.as_str(), actor.as_str(), "key.retire", format!("tenant/{tenant}"))
                    .attrs(attrs))
            }
            GovOp::RateLimit { tenant, limit, actor } => Ok(crate::ratelimit::override_entry(tenant, actor, *limit)),
            GovOp::Writes { enabled, tenant, actor } => {
                Ok(NewEntry::new(tenant.as_str(), actor.as_str(), "admin.writes", "writes")
                    .attrs(json!({"enabled": enabled})))
            }
            GovOp::Drill { record, tenant, actor } => {
                let attrs = serde_json::to_value(&*record).map_err(|e| AppError::internal(e.to_string()))?;
                Ok(NewEntry::new(tenant.as_str(), actor.as_str(), "ops.drill", record.snapshot.clone()).attrs(attrs))
            }
        }
    }

    /// The batch is durable: applies the batch's governance operations, each with its receipt.
    pub fn apply(&mut self, ops: &[(&GovOp, &Receipt)]) {
        self.names.clear();
        for (g, r) in ops {
            if let Err(e) = self.apply_one(g, r.seq, r.ts) {
                // The entry is durable; the next open replays it.
                tracing::error!(error = %e.message, seq = r.seq, "applying a governance entry failed");
            }
        }
    }

    pub fn abort(&mut self) {
        self.names.clear();
    }

    /// The documents the batch being prepared leaves (`ops`: its governance operations, each
    /// with its entry's sequence number; `ts`: the batch's time), for a ledger that keeps the
    /// state with its entries: key records, limit overrides, the write switch, the last drill.
    /// Data keys are shared apart (the keyring's documents live in PostgreSQL already).
    pub fn chain_docs(&self, ops: &[(&GovOp, u64)], ts: Micros) -> AppResult<Vec<KeptDoc>> {
        let mut docs = Vec::new();
        for (op, seq) in ops {
            let doc: Option<KeptDoc> = match op {
                GovOp::KeyCreate { record, .. } => {
                    let created = ApiKeyRecord { created_at: ts, ..record.clone() };
                    Some((API_KEYS, record.id.clone(), Some(encode_doc(&created)?)))
                }
                GovOp::KeyRevoke { id, .. } => match self.keys.record(id) {
                    Some(r) => {
                        let revoked = ApiKeyRecord { revoked_at: r.revoked_at.or(Some(ts)), ..r };
                        Some((API_KEYS, id.clone(), Some(encode_doc(&revoked)?)))
                    }
                    None => None,
                },
                GovOp::RateLimit { tenant, limit, .. } => {
                    Some((OVERRIDES, tenant.as_str().to_owned(), limit.as_ref().map(encode_doc).transpose()?))
                }
                GovOp::Writes { enabled, .. } => Some((SETTINGS, WRITES_SWITCH.to_owned(), Some(encode_doc(enabled)?))),
                GovOp::Drill { record, .. } => {
                    let last = LastDrill { record: record.clone(), at: crate::clock::rfc3339(ts), seq: *seq };
                    Some((SETTINGS, LAST_DRILL.to_owned(), Some(encode_doc(&last)?)))
                }
                GovOp::Shred { .. } | GovOp::Retire { .. } => None,
            };
            docs.extend(doc);
        }
        Ok(docs)
    }

    /// Every document [`KEPT_DOCS`] names, as this replica holds them.
    pub fn kept_docs(&self) -> AppResult<Vec<KeptDoc>> {
        let mut docs = Vec::new();
        for (table, key) in KEPT_DOCS {
            match key {
                None => docs.extend(self.kv.scan_doc_bytes(table)?.into_iter().map(|(k, d)| (table, k, Some(d)))),
                Some(key) => docs.extend(self.kv.get_doc_bytes(table, key)?.map(|d| (table, key.to_owned(), Some(d)))),
            }
        }
        Ok(docs)
    }

    fn apply_one(&self, op: &GovOp, seq: u64, ts: Micros) -> AppResult<()> {
        match op {
            GovOp::KeyCreate { record, .. } => self.keys.insert(ApiKeyRecord { created_at: ts, ..record.clone() }),
            GovOp::KeyRevoke { id, carried_from, .. } => {
                self.keys.set_revoked(id, ts)?;
                self.carried_done(*carried_from)
            }
            GovOp::Shred { tenant, through, carried_from, .. } => {
                self.shred(tenant.as_str(), through.unwrap_or(0))?;
                self.carried_done(*carried_from)
            }
            GovOp::Retire { tenant, below, .. } => self.keyring.retire_below(tenant.as_str(), *below).map(drop),
            GovOp::RateLimit { tenant, limit, .. } => self.limiter.apply_override(tenant.as_str(), *limit),
            GovOp::Writes { enabled, .. } => self.set_writes(*enabled),
            GovOp::Drill { record, .. } => self.set_drill(record.clone(), seq, ts),
        }
    }

    fn shred(&self, tenant: &str, through: u32) -> AppResult<()> {
        self.keyring.shred_through(tenant, through)?;
        // Dictionaries are sealed under the tenant's keys, and L1 holds its decoded records.
        self.memory.dicts.forget_tenant(tenant);
        let prefix = daena_store::records::tenant_prefix(tenant);
        self.memory.l1.retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }

    fn set_writes(&self, enabled: bool) -> AppResult<()> {
        self.kv.put_doc(SETTINGS, WRITES_SWITCH, &enabled)?;
        self.writes.store(enabled, Ordering::SeqCst);
        Ok(())
    }

    fn set_drill(&self, record: DrillRecord, seq: u64, ts: Micros) -> AppResult<()> {
        let last = LastDrill { record, at: crate::clock::rfc3339(ts), seq };
        Ok(self.kv.put_doc(SETTINGS, LAST_DRILL, &last)?)
    }

    /// Removes the carried fact of `seq`, now applied and ledgered again.
    fn carried_done(&self, carried_from: Option<u64>) -> AppResult<()> {
        let Some(seq) = carried_from else { return Ok(()) };
        let mut facts: Vec<CarriedFact> = self.kv.get_doc(SETTINGS, CARRY_FORWARD)?.unwrap_or_default();
        facts.retain(|f| f.seq != seq);
        if facts.is_empty() {
            self.kv.delete_doc(SETTINGS, CARRY_FORWARD)?;
        } else {
            self.kv.put_doc(SETTINGS, CARRY_FORWARD, &facts)?;
        }
        Ok(())
    }

    /// Applies a governance entry found in the ledger (crash recovery, replay, rollback).
    /// `Ok(false)`: not a governance action.
    pub fn replay(&self, e: &Entry) -> AppResult<bool> {
        let text = |k: &str| e.attrs.get(k).and_then(Value::as_str).map(str::to_owned);
        match e.action.as_str() {
            "key.create" => match replayed_key(e) {
                Some(record) => self.keys.insert(record)?,
                None => tracing::warn!(
                    seq = e.seq,
                    key = text("id").unwrap_or_default(),
                    "key.create entry without the key's digest (written before keys were replayable): not made again"
                ),
            },
            "key.revoke" => {
                let id = text("id").unwrap_or_default();
                if self.keys.set_revoked(&id, e.ts)?.is_none() {
                    tracing::warn!(seq = e.seq, key = %id, "key.revoke of a key this state does not hold");
                }
            }
            "key.shred" => {
                // Entries written before shreds were versioned destroyed every key there was.
                let through = match shred_through_attr(&e.attrs) {
                    Some(t) => t,
                    None => self.keyring.versions(&e.tenant)?.0,
                };
                self.shred(&e.tenant, through)?;
            }
            "key.retire" => {
                let below = e.attrs.get("retired_below").and_then(Value::as_u64).ok_or_else(|| malformed(e))?;
                self.keyring.retire_below(&e.tenant, u32::try_from(below).map_err(|_| malformed(e))?)?;
            }
            "ratelimit.override" => {
                let num = |k: &str| e.attrs.get(k).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
                let limit = match (e.attrs.get("removed").and_then(Value::as_bool), num("rpm"), num("burst")) {
                    (Some(true), _, _) => None,
                    (_, Some(rpm), Some(burst)) => Some(LimitView { rpm, burst }),
                    _ => return Err(malformed(e)),
                };
                self.limiter.apply_override(&e.tenant, limit)?;
            }
            "admin.writes" => {
                let enabled = e.attrs.get("enabled").and_then(Value::as_bool).ok_or_else(|| malformed(e))?;
                self.set_writes(enabled)?;
            }
            "ops.drill" => {
                let record: DrillRecord = serde_json::from_value(e.attrs.clone()).map_err(|_| malformed(e))?;
                self.set_drill(record, e.seq, e.ts)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn malformed(e: &Entry) -> AppError {
    AppError::internal(format!("ledger entry {} ({}) has malformed attributes", e.seq, e.action))
}

/// The key record a `key.create` entry makes, when it carries the key's digest.
fn replayed_key(e: &Entry) -> Option<ApiKeyRecord> {
    if e.body.len() != 32 {
        return None;
    }
    let text = |k: &str| e.attrs.get(k).and_then(Value::as_str);
    Some(ApiKeyRecord {
        id: text("id")?.to_owned(),
        name: text("name")?.to_owned(),
        role: Role::parse(text("role")?)?,
        tenant: TenantId::new(text("tenant")?).ok()?,
        attributes: KeyAttributes {
            roles: e
                .attrs
                .get("roles")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
            department: text("department").map(str::to_owned),
            agent: text("agent").map(str::to_owned),
            all_tenants: e.attrs.get("all_tenants").and_then(Value::as_bool).unwrap_or(false),
        },
        digest: hex::encode(&e.body),
        created_at: e.ts,
        revoked_at: None,
    })
}

/// Submits a governance operation and waits until it is durable and applied.
pub async fn submit(d: &crate::Daena, op: GovOp) -> AppResult<u64> {
    let receipts = d.commit().submit(op.into()).await?;
    Ok(receipts.first().map_or(0, |r| r.seq))
}
