//! Crash recovery for memory and the cache: ledger entries after the state's applied point
//! are applied again, each exactly as the commit thread applied it when it was written.

use super::*;
use crate::error::AppResult;
use crate::memory::{Addr, Footprint};
use daena_core::ids::{ClassName, RecordKey, TenantId};
use daena_core::ledger::entry::Entry;
use daena_store::records::{self, RecordRow, RowBody, Tier, TrustRow};
use serde_json::Value;
use std::sync::Arc;

impl MemoryState {
    fn replay_memory(&mut self, e: &Entry) -> AppResult<Option<(Addr, Change)>> {
        let addr = || -> AppResult<Addr> {
            let s = |k: &str| e.attrs.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            Ok(Addr {
                tenant: TenantId::new(&e.tenant)?,
                class: ClassName::new(&s("class"))?,
                key: RecordKey::new(&s("key"))?,
            })
        };
        let num = |k: &str| e.attrs.get(k).and_then(Value::as_i64).unwrap_or(0);
        let current = |addr: &Addr| self.shared.row(&addr.table_key());
        Ok(match e.action.as_str() {
            "memory.put" => {
                let addr = addr()?;
                let tier =
                    if e.attrs.get("tier").and_then(Value::as_str) == Some("L2Q") { Tier::L2Q } else { Tier::L2 };
                // Entries carry a keyed hash of the payload; the row's SHA-256 is taken from
                // the sealed payload itself (older entries carry it in the clear).
                let mut sha = [0u8; 32];
                match e.attrs.get("content_sha256").and_then(Value::as_str) {
                    Some(text) => {
                        let _ = hex::decode_to_slice(text, &mut sha);
                    }
                    None => sha = self.payload_sha256(&addr, &e.body),
                }
                let row = RecordRow {
                    format: records::ROW_FORMAT,
                    tier,
                    seq: e.seq,
                    version: num("version") as u64,
                    created_at: num("created_at"),
                    updated_at: num("updated_at"),
                    content_sha256: sha,
                    raw_len: num("raw_len") as u32,
                    level: num("level") as i8,
                    trust: (tier == Tier::L2Q).then(|| TrustRow {
                        writer: e
                            .attrs
                            .get("writer_key")
                            .or_else(|| e.attrs.get("writer"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        confirmations: Vec::new(),
                        score: 0.0,
                    }),
                    body: RowBody::Inline(e.body.clone()),
                };
                Some((addr, Change::Upsert(Box::new(row))))
            }
            "memory.delete" | "memory.reject" | "memory.expire" => Some((addr()?, Change::Remove)),
            "memory.confirm" => {
                let addr = addr()?;
                match current(&addr)? {
                    Some(mut row) => {
                        let agent = e
                            .attrs
                            .get("by")
                            .or_else(|| e.attrs.get("agent"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        let trust = row.trust.get_or_insert_with(|| TrustRow {
                            writer: String::new(),
                            confirmations: Vec::new(),
                            score: 0.0,
                        });
                        if !trust.confirmations.contains(&agent) {
                            trust.confirmations.push(agent);
                        }
                        trust.score = crate::memory::trust_score(trust.confirmations.len());
                        if e.attrs.get("promoted").and_then(Value::as_bool) == Some(true) {
                            row.tier = Tier::L2;
                        }
                        row.updated_at = num("updated_at");
                        Some((addr, Change::Upsert(Box::new(row))))
                    }
                    None => None,
                }
            }
            "memory.promote" => {
                let addr = addr()?;
                current(&addr)?.map(|mut row| {
                    row.tier = Tier::L2;
                    row.updated_at = num("updated_at");
                    (addr, Change::Upsert(Box::new(row)))
                })
            }
            "memory.age" | "memory.reheat" => {
                let addr = addr()?;
                current(&addr)?.map(|mut row| {
                    row.tier = match e.attrs.get("to").and_then(Value::as_str) {
                        Some("L3") => Tier::L3,
                        Some("L2Q") => Tier::L2Q,
                        _ => Tier::L2,
                    };
                    if e.action == "memory.age" {
                        row.raw_len = num("raw_len") as u32;
                        row.level = num("level") as i8;
                    }
                    row.body = RowBody::Inline(e.body.clone());
                    (addr, Change::Upsert(Box::new(row)))
                })
            }
            _ => None,
        })
    }

    /// The actions [`MemoryState::replay`] applies.
    pub(crate) fn replays(action: &str) -> bool {
        matches!(
            action,
            "memory.put"
                | "memory.delete"
                | "memory.reject"
                | "memory.expire"
                | "memory.confirm"
                | "memory.promote"
                | "memory.age"
                | "memory.reheat"
                | "memory.dict"
                | "llm.cache_store"
                | "llm.cache_evict"
        )
    }

    pub(crate) fn replay(&mut self, e: &Entry) -> AppResult<()> {
        if e.action.starts_with("llm.cache_") {
            self.cas.replay(e)?;
        } else if e.action == "memory.dict" {
            let class = e.attrs.get("class").and_then(Value::as_str).unwrap_or_default();
            let created_at = e.attrs.get("created_at").and_then(Value::as_i64).unwrap_or(0);
            let shared = &self.shared;
            shared.dicts.install(
                &shared.kv,
                &shared.keyring,
                &TenantId::new(&e.tenant)?,
                class,
                created_at,
                &e.body,
            )?;
        } else if let Some((addr, change)) = self.replay_memory(e)? {
            let key = addr.table_key();
            let old = self.shared.row(&key)?;
            let new = match change {
                Change::Upsert(mut row) => {
                    row.seq = e.seq;
                    Some(Arc::new(*row))
                }
                Change::Remove => None,
            };
            let footprint = new.as_deref().map(Footprint::of);
            self.shared.stats.lock().replace(&addr, old.as_ref().map(Footprint::of), footprint);
            // Entries another replica wrote replace what this one's L1 holds, under the
            // stripe so a reader filling L1 cannot put the older version back.
            let stripe = self.shared.stripe_of(&key);
            let _guard = self.shared.stripes[stripe].write();
            self.shared.l1.remove(&key);
            self.shared.overlay.insert(key.clone(), new);
            self.shared.bump_generation(stripe);
        }
        self.applied = e.seq;
        if self.shared.overlay.active_len() >= OVERLAY_LIMIT {
            self.hand_off_unless_busy(false)?;
        }
        Ok(())
    }
}
