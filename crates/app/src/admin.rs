//! Governance actions on keys and switches: each is a [`GovOp`] the commit thread ledgers
//! and then applies ([`crate::governance`]).

use crate::Daena;
use crate::auth::{CreatedKey, KeyView, NewKey, Principal};
use crate::error::{AppError, AppResult};
use crate::governance::{self, GovOp};

pub async fn create_key(d: &Daena, who: &Principal, new: NewKey) -> AppResult<CreatedKey> {
    let (key, record) = d.governance().api_keys().mint(new)?;
    let id = record.id.clone();
    governance::submit(d, GovOp::KeyCreate { record, actor: who.actor() }).await?;
    let view = d
        .governance()
        .api_keys()
        .view(&id)
        .ok_or_else(|| AppError::internal(format!("key {id} was ledgered but not stored")))?;
    tracing::info!(key_id = %view.id, name = %view.name, role = %view.role.as_str(), "api key created");
    Ok(CreatedKey { key, view })
}

pub async fn revoke_key(d: &Daena, who: &Principal, id_or_name: &str) -> AppResult<KeyView> {
    let record = d.governance().api_keys().find(id_or_name)?;
    if record.revoked_at.is_none() {
        let op = GovOp::KeyRevoke { id: record.id.clone(), actor: who.actor(), carried_from: None };
        governance::submit(d, op).await?;
        tracing::info!(key_id = %record.id, name = %record.name, "api key revoked");
    }
    d.governance()
        .api_keys()
        .view(&record.id)
        .ok_or_else(|| AppError::not_found(format!("no key with id {}", record.id)))
}

pub async fn set_writes(d: &Daena, who: &Principal, enabled: bool) -> AppResult<bool> {
    if d.writes_enabled() != enabled {
        governance::submit(d, GovOp::Writes { enabled, tenant: who.tenant().clone(), actor: who.actor() }).await?;
        tracing::warn!(enabled, actor = %who.actor(), "writes switch changed");
    }
    Ok(d.writes_enabled())
}
