//! The agent registry: every tenant's 6×8 fleet and its heartbeats.
//!
//! The fleet's shape is fixed (see `daena_core::agents`); what varies per tenant is which
//! agents are alive. Heartbeats are kept in memory and flushed to the embedded store
//! periodically and at shutdown, so a restart does not make the whole fleet look dead.

use crate::auth::Principal;
use daena_base::clock::{Clock, rfc3339};
use daena_base::error::{AppError, AppResult};
use daena_core::agents::{self, AgentSpec, StructureValidation};
use daena_core::ids::TenantId;
use daena_core::time::Micros;
use daena_store::kv::{DocTable, Kv, doc_table};
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const HEARTBEATS: DocTable = doc_table("heartbeats");

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentView {
    pub id: String,
    pub name: String,
    pub department: String,
    pub role: String,
    /// `advisor` or `specialist`.
    pub kind: String,
    pub cell_id: String,
    pub sunflower_index: usize,
    pub x: f64,
    pub y: f64,
    pub neighbours: Vec<String>,
    /// `active` when a heartbeat arrived within the window, else `inactive`.
    pub status: String,
    pub last_heartbeat: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentList {
    pub tenant: String,
    pub total: usize,
    pub active: usize,
    pub heartbeat_window_secs: u64,
    pub agents: Vec<AgentView>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Expected {
    pub departments: usize,
    pub agents: usize,
    pub roles_per_department: usize,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Validation {
    pub departments_valid: bool,
    pub agents_valid: bool,
    pub roles_valid: bool,
    pub structure_valid: bool,
    /// Whether every agent of the structure is active right now.
    pub all_active: bool,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DepartmentView {
    pub name: String,
    pub agents: usize,
    pub active: usize,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StructureView {
    pub tenant: String,
    pub departments: usize,
    pub agents: usize,
    pub roles_per_department: usize,
    pub active_agents: usize,
    pub expected: Expected,
    pub validation: Validation,
    pub department_breakdown: BTreeMap<String, DepartmentView>,
}

#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatView {
    pub agent_id: String,
    pub tenant: String,
    pub last_heartbeat: String,
    pub status: String,
}

pub struct AgentRegistry {
    fleet: Vec<AgentSpec>,
    index: HashMap<String, usize>,
    heartbeats: RwLock<HashMap<TenantId, Vec<Option<Micros>>>>,
    window_micros: i64,
    window_secs: u64,
    clock: Arc<dyn Clock>,
    kv: Kv,
    /// A heartbeat arrived (or was absorbed) since the last flush.
    dirty: AtomicBool,
    /// A heartbeat arrived here since this replica last published its heartbeats.
    unpublished: AtomicBool,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRegistry").field("tenants", &self.heartbeats.read().len()).finish()
    }
}

impl AgentRegistry {
    pub fn load(kv: Kv, clock: Arc<dyn Clock>, window_secs: u64) -> AppResult<AgentRegistry> {
        let fleet = agents::fleet();
        let index = fleet.iter().enumerate().map(|(i, a)| (a.id.clone(), i)).collect::<HashMap<_, _>>();
        let mut heartbeats = HashMap::new();
        for (tenant, beats) in kv.scan_docs::<BTreeMap<String, Micros>>(HEARTBEATS)? {
            let Ok(tenant) = TenantId::new(&tenant) else { continue };
            let mut row = vec![None; fleet.len()];
            for (agent, t) in beats {
                if let Some(i) = index.get(&agent) {
                    row[*i] = Some(t);
                }
            }
            heartbeats.insert(tenant, row);
        }
        Ok(AgentRegistry {
            fleet,
            index,
            heartbeats: RwLock::new(heartbeats),
            window_micros: i64::try_from(window_secs).unwrap_or(i64::MAX / Micros::SECOND) * Micros::SECOND,
            window_secs,
            clock,
            kv,
            dirty: AtomicBool::new(false),
            unpublished: AtomicBool::new(false),
        })
    }

    pub fn fleet(&self) -> &[AgentSpec] {
        &self.fleet
    }

    fn is_active(&self, beat: Option<Micros>, now: Micros) -> bool {
        beat.is_some_and(|t| now.since(t) < self.window_micros)
    }

    fn beats(&self, tenant: &TenantId) -> Vec<Option<Micros>> {
        self.heartbeats.read().get(tenant).cloned().unwrap_or_else(|| vec![None; self.fleet.len()])
    }

    pub fn list(&self, who: &Principal, department: Option<&str>) -> AppResult<AgentList> {
        if let Some(d) = department
            && !agents::DEPARTMENTS.iter().any(|(slug, _)| *slug == d)
        {
            return Err(AppError::invalid(format!("unknown department {d:?}")));
        }
        let now = self.clock.now();
        let beats = self.beats(who.tenant());
        let agents: Vec<AgentView> = self
            .fleet
            .iter()
            .zip(&beats)
            .filter(|(a, _)| department.is_none_or(|d| a.department == d))
            .map(|(a, beat)| AgentView {
                id: a.id.clone(),
                name: a.name.clone(),
                department: a.department.to_owned(),
                role: a.role.to_owned(),
                kind: a.kind.to_owned(),
                cell_id: a.cell_id.clone(),
                sunflower_index: a.sunflower_index,
                x: a.x,
                y: a.y,
                neighbours: a.neighbours.clone(),
                status: if self.is_active(*beat, now) { "active" } else { "inactive" }.to_owned(),
                last_heartbeat: beat.map(rfc3339),
            })
            .collect();
        let active = agents.iter().filter(|a| a.status == "active").count();
        Ok(AgentList {
            tenant: who.tenant().to_string(),
            total: agents.len(),
            active,
            heartbeat_window_secs: self.window_secs,
            agents,
        })
    }

    pub fn structure(&self, who: &Principal) -> StructureView {
        let now = self.clock.now();
        let beats = self.beats(who.tenant());
        let mut breakdown: BTreeMap<String, DepartmentView> = BTreeMap::new();
        for (a, beat) in self.fleet.iter().zip(&beats) {
            let d = breakdown.entry(a.department.to_owned()).or_insert_with(|| DepartmentView {
                name: agents::DEPARTMENTS
                    .iter()
                    .find(|(s, _)| *s == a.department)
                    .map(|(_, n)| (*n).to_owned())
                    .unwrap_or_default(),
                agents: 0,
                active: 0,
                roles: Vec::new(),
            });
            d.agents += 1;
            d.roles.push(a.role.to_owned());
            if self.is_active(*beat, now) {
                d.active += 1;
            }
        }
        let min_roles = breakdown.values().map(|d| d.roles.len()).min().unwrap_or(0);
        let max_roles = breakdown.values().map(|d| d.roles.len()).max().unwrap_or(0);
        let active_agents = breakdown.values().map(|d| d.active).sum();
        let StructureValidation { departments_valid, agents_valid, roles_valid, structure_valid } =
            agents::validate(breakdown.len(), self.fleet.len(), min_roles, max_roles);
        StructureView {
            tenant: who.tenant().to_string(),
            departments: breakdown.len(),
            agents: self.fleet.len(),
            roles_per_department: max_roles,
            active_agents,
            expected: Expected {
                departments: agents::EXPECTED_DEPARTMENTS,
                agents: agents::EXPECTED_AGENTS,
                roles_per_department: agents::EXPECTED_ROLES_PER_DEPARTMENT,
            },
            validation: Validation {
                departments_valid,
                agents_valid,
                roles_valid,
                structure_valid,
                all_active: active_agents == agents::EXPECTED_AGENTS,
            },
            department_breakdown: breakdown,
        }
    }

    pub fn heartbeat(&self, who: &Principal, agent_id: &str) -> AppResult<HeartbeatView> {
        // A key bound to an agent beats for that agent only.
        who.acting_agent(Some(agent_id))?;
        let i = *self
            .index
            .get(agent_id)
            .ok_or_else(|| AppError::not_found(format!("no agent {agent_id:?} in the 6x8 fleet")))?;
        let now = self.clock.now();
        self.heartbeats.write().entry(who.tenant().clone()).or_insert_with(|| vec![None; self.fleet.len()])[i] =
            Some(now);
        self.dirty.store(true, Ordering::Relaxed);
        self.unpublished.store(true, Ordering::Relaxed);
        Ok(HeartbeatView {
            agent_id: agent_id.to_owned(),
            tenant: who.tenant().to_string(),
            last_heartbeat: rfc3339(now),
            status: "active".into(),
        })
    }

    /// Active agents of `tenant` right now.
    pub fn active_count(&self, tenant: &TenantId) -> usize {
        let now = self.clock.now();
        self.beats(tenant).iter().filter(|b| self.is_active(**b, now)).count()
    }

    /// Active agents per tenant, for metrics.
    pub fn active_by_tenant(&self) -> Vec<(TenantId, usize)> {
        let now = self.clock.now();
        let map = self.heartbeats.read();
        map.iter().map(|(t, beats)| (t.clone(), beats.iter().filter(|b| self.is_active(**b, now)).count())).collect()
    }

    /// Every tenant's latest heartbeat per agent id.
    pub fn latest(&self) -> Vec<(String, BTreeMap<String, Micros>)> {
        let map = self.heartbeats.read();
        map.iter()
            .map(|(t, beats)| {
                let m = self.fleet.iter().zip(beats).filter_map(|(a, b)| b.map(|b| (a.id.clone(), b))).collect();
                (t.to_string(), m)
            })
            .collect()
    }

    /// Whether a heartbeat arrived here since the last call (for a replica publishing its
    /// heartbeats to the others).
    pub fn take_unpublished(&self) -> bool {
        self.unpublished.swap(false, Ordering::Relaxed)
    }

    /// Publishing failed: the next call of [`AgentRegistry::take_unpublished`] says so again.
    pub fn mark_unpublished(&self) {
        self.unpublished.store(true, Ordering::Relaxed);
    }

    /// Heartbeats another replica received: each agent keeps the later of its two times.
    /// Unknown tenants and agents are skipped.
    pub fn absorb(&self, tenant: &str, beats: &BTreeMap<String, Micros>) {
        let Ok(tenant) = TenantId::new(tenant) else { return };
        let mut map = self.heartbeats.write();
        let row = map.entry(tenant).or_insert_with(|| vec![None; self.fleet.len()]);
        for (agent, t) in beats {
            if let Some(&i) = self.index.get(agent)
                && row[i].is_none_or(|mine| mine < *t)
            {
                row[i] = Some(*t);
                self.dirty.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Writes heartbeats to the store if any arrived since the last flush.
    pub fn flush(&self) -> AppResult<()> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return Ok(());
        }
        for (tenant, beats) in self.latest() {
            if let Err(e) = self.kv.put_doc(HEARTBEATS, &tenant, &beats) {
                self.dirty.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        }
        Ok(())
    }
}
