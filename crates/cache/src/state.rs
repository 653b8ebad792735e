//! The cache's part of the commit thread's state machine: stores, evictions and re-seals
//! staged against the batch being prepared, applied once it is durable, and `llm.cache_*`
//! entries replayed after a crash or on another replica.

use super::*;

/// A cache mutation for the commit thread.
#[derive(Debug)]
pub enum CasOp {
    Store {
        tenant: String,
        key: [u8; 32],
        row: Box<CasRow>,
        actor: String,
    },
    Evict {
        tenant: String,
        key: [u8; 32],
        reason: &'static str,
        actor: String,
    },
    /// The same entry sealed again under the tenant's current data key ([`CasShared::resealed`]);
    /// refused when the entry left the cache meanwhile.
    Reseal {
        tenant: String,
        key: [u8; 32],
        row: Box<CasRow>,
        actor: String,
    },
}

#[derive(Debug)]
enum Staged {
    Store { tenant: String, key: [u8; 32], row: Arc<CasRow> },
    Evict { tenant: String, key: [u8; 32] },
}

/// The cache's part of the commit thread's state machine.
pub struct CasState {
    shared: Arc<CasShared>,
    /// Changes of the batch being prepared, in order.
    staged: Vec<Staged>,
    /// What those changes do to each tenant's entries, kept as they are staged.
    batch: HashMap<String, BatchTenant>,
}

/// One tenant's part of the batch being prepared.
#[derive(Default)]
struct BatchTenant {
    /// The last change staged per key: stored (true) or evicted (false).
    fate: HashMap<[u8; 32], bool>,
    /// Applied entries the batch evicts.
    leaving: HashSet<[u8; 32]>,
    /// Entries the batch adds, earliest stored first.
    arriving: VecDeque<[u8; 32]>,
}

impl CasState {
    pub fn new(shared: Arc<CasShared>) -> CasState {
        CasState { shared, staged: Vec::new(), batch: HashMap::new() }
    }

    /// Stages a change and records its effect on the tenant's entries.
    fn stage(&mut self, change: Staged) {
        let (tenant, key, stored) = match &change {
            Staged::Store { tenant, key, .. } => (tenant, *key, true),
            Staged::Evict { tenant, key } => (tenant, *key, false),
        };
        let applied = self.shared.contains(tenant, &key);
        let t = self.batch.entry(tenant.clone()).or_default();
        let was_arriving = !applied && t.fate.get(&key) == Some(&true);
        if stored {
            t.leaving.remove(&key);
            if !applied && !was_arriving {
                t.arriving.push_back(key);
            }
        } else if was_arriving {
            // An entry stored earlier in the batch just does not arrive.
            if t.arriving.front() == Some(&key) {
                t.arriving.pop_front();
            } else {
                t.arriving.retain(|k| *k != key);
            }
        } else if applied {
            t.leaving.insert(key);
        }
        t.fate.insert(key, stored);
        self.staged.push(change);
    }

    pub fn shared(&self) -> &Arc<CasShared> {
        &self.shared
    }

    fn ref_of(key: &[u8; 32]) -> String {
        format!("cas/{}", hex::encode(&key[..8]))
    }

    pub fn prepare(&mut self, op: &mut CasOp) -> AppResult<Vec<NewEntry>> {
        match op {
            CasOp::Store { tenant, key, row, actor } => {
                let mut entries = Vec::new();
                if !self.present(tenant, key, false) {
                    for victim in self.victims(tenant) {
                        entries.push(
                            NewEntry::new(tenant.as_str(), actor.as_str(), "llm.cache_evict", Self::ref_of(&victim))
                                .attrs(json!({"key": hex::encode(victim), "reason": "capacity"})),
                        );
                        self.stage(Staged::Evict { tenant: tenant.clone(), key: victim });
                    }
                }
                entries.push(Self::store_entry(tenant, key, row, actor, false));
                self.stage(Staged::Store { tenant: tenant.clone(), key: *key, row: Arc::new((**row).clone()) });
                Ok(entries)
            }
            CasOp::Reseal { tenant, key, row, actor } => {
                if !self.present(tenant, key, false) {
                    return Err(AppError::not_found("the cache entry left the cache"));
                }
                let entry = Self::store_entry(tenant, key, row, actor, true);
                self.stage(Staged::Store { tenant: tenant.clone(), key: *key, row: Arc::new((**row).clone()) });
                Ok(vec![entry])
            }
            CasOp::Evict { tenant, key, reason, actor } => {
                if !self.present(tenant, key, true) {
                    return Err(AppError::not_found("no such cache entry"));
                }
                self.stage(Staged::Evict { tenant: tenant.clone(), key: *key });
                Ok(vec![
                    NewEntry::new(tenant.as_str(), actor.as_str(), "llm.cache_evict", Self::ref_of(key))
                        .attrs(json!({"key": hex::encode(*key), "reason": reason})),
                ])
            }
        }
    }

    fn store_entry(tenant: &str, key: &[u8; 32], row: &CasRow, actor: &str, resealed: bool) -> NewEntry {
        let mut attrs = json!({
            "key": hex::encode(*key), "model": row.model, "scope": format!("{:016x}", row.scope),
            "simhash": format!("{:016x}", row.simhash), "guard": format!("{:016x}", row.guard),
            "prompt_hash": hex::encode(row.prompt_hash), "created_at": row.created_at, "expires_at": row.expires_at,
            "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens, "cost_usd": row.cost_usd,
            "agent": row.agent, "class": row.class, "client_reported": row.client_reported,
        });
        if resealed {
            attrs["resealed"] = json!(true);
        }
        NewEntry::new(tenant, actor, "llm.cache_store", Self::ref_of(key)).attrs(attrs).body(row.envelope.clone())
    }

    /// Whether `key` is in the cache once the batch is applied; `unexpired`
    /// leaves out applied entries past their TTL (still counted against the cap).
    fn present(&self, tenant: &str, key: &[u8; 32], unexpired: bool) -> bool {
        let staged = self.batch.get(tenant).and_then(|t| t.fate.get(key)).copied();
        staged.unwrap_or_else(|| {
            if unexpired { self.shared.get(tenant, key).is_some() } else { self.shared.contains(tenant, key) }
        })
    }

    /// The entries to evict so that one more fits under the tenant's cap, counting what the
    /// batch already stores and evicts: the oldest applied entries not already on their way
    /// out, then, when the batch alone stores more than the cap, its own earliest stores.
    fn victims(&self, tenant: &str) -> Vec<[u8; 32]> {
        let cap = self.shared.config.memory.cas.max_entries_per_tenant;
        let none = BatchTenant::default();
        let t = self.batch.get(tenant).unwrap_or(&none);
        let applied = self.shared.tenant_len(tenant) as u64;
        let after = applied + t.arriving.len() as u64 - t.leaving.len() as u64 + 1;
        let over = after.saturating_sub(cap) as usize;
        let mut out = self.shared.oldest(tenant, over, &t.leaving);
        let short = over - out.len();
        out.extend(t.arriving.iter().take(short));
        out
    }

    /// The rows the batch being prepared writes, in order: the entry's row, or `None` for an
    /// eviction (for a ledger that keeps the state with its entries).
    pub fn staged_rows(&self) -> impl Iterator<Item = (Vec<u8>, Option<&CasRow>)> + '_ {
        self.staged.iter().map(|s| match s {
            Staged::Store { tenant, key, row } => (table_key(tenant, key), Some(&**row)),
            Staged::Evict { tenant, key } => (table_key(tenant, key), None),
        })
    }

    /// Applies the batch, now durable.
    pub fn apply(&mut self) {
        self.batch.clear();
        for s in std::mem::take(&mut self.staged) {
            self.apply_one(s);
        }
    }

    fn apply_one(&mut self, s: Staged) {
        match s {
            Staged::Store { tenant, key, row } => {
                // The row first: a reader that finds the new entry must read the new answer.
                self.shared.pending.insert(table_key(&tenant, &key), Some(row.clone()));
                self.shared.insert_meta(&tenant, key, &row);
            }
            Staged::Evict { tenant, key } => {
                if self.shared.remove_meta(&tenant, &key) {
                    self.shared.stats.lock().evicted();
                }
                self.shared.pending.insert(table_key(&tenant, &key), None);
            }
        }
    }

    pub fn abort(&mut self) {
        self.staged.clear();
        self.batch.clear();
    }

    /// Replays a cache entry of the ledger.
    pub fn replay(&mut self, e: &Entry) -> AppResult<()> {
        let key = || -> Option<[u8; 32]> {
            let mut k = [0u8; 32];
            hex::decode_to_slice(e.attrs.get("key")?.as_str()?, &mut k).ok()?;
            Some(k)
        };
        let hex64 = |name: &str| {
            e.attrs.get(name).and_then(Value::as_str).and_then(|s| u64::from_str_radix(s, 16).ok()).unwrap_or(0)
        };
        let num = |name: &str| e.attrs.get(name).and_then(Value::as_i64).unwrap_or(0);
        let Some(key) = key() else { return Ok(()) };
        match e.action.as_str() {
            "llm.cache_store" => {
                let mut prompt_hash = [0u8; 32];
                let _ = hex::decode_to_slice(
                    e.attrs.get("prompt_hash").and_then(Value::as_str).unwrap_or_default(),
                    &mut prompt_hash,
                );
                let text = |name: &str| e.attrs.get(name).and_then(Value::as_str).map(str::to_owned);
                let row = CasRow {
                    format: ROW_FORMAT,
                    model: text("model").unwrap_or_default(),
                    scope: hex64("scope"),
                    simhash: hex64("simhash"),
                    guard: hex64("guard"),
                    prompt_hash,
                    created_at: num("created_at"),
                    expires_at: num("expires_at"),
                    prompt_tokens: num("prompt_tokens") as u64,
                    completion_tokens: num("completion_tokens") as u64,
                    cost_usd: e.attrs.get("cost_usd").and_then(Value::as_f64).unwrap_or(0.0),
                    agent: text("agent"),
                    class: text("class"),
                    envelope: e.body.clone(),
                    client_reported: e.attrs.get("client_reported").and_then(Value::as_bool).unwrap_or(false),
                };
                self.apply_one(Staged::Store { tenant: e.tenant.clone(), key, row: Arc::new(row) });
            }
            "llm.cache_evict" => self.apply_one(Staged::Evict { tenant: e.tenant.clone(), key }),
            _ => {}
        }
        Ok(())
    }
}
