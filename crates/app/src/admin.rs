//! Governance actions on keys and switches, each recorded in the ledger after it succeeds.

use crate::Daena;
use crate::auth::{CreatedKey, KeyView, NewKey, Principal};
use crate::error::AppResult;
use daena_core::ledger::NewEntry;
use serde_json::json;

fn key_attrs(v: &KeyView) -> serde_json::Value {
    json!({"id": v.id, "name": v.name, "role": v.role.as_str(), "tenant": v.tenant.as_str(),
           "roles": v.roles, "department": v.department})
}

pub async fn create_key(d: &Daena, who: &Principal, new: NewKey) -> AppResult<CreatedKey> {
    let created = d.keys.create(new)?;
    let entry =
        NewEntry::new(created.view.tenant.as_str(), who.actor(), "key.create", format!("key/{}", created.view.id))
            .attrs(key_attrs(&created.view));
    d.commit.append(vec![entry]).await?;
    tracing::info!(key_id = %created.view.id, name = %created.view.name, role = %created.view.role.as_str(), "api key created");
    Ok(created)
}

pub async fn revoke_key(d: &Daena, who: &Principal, id_or_name: &str) -> AppResult<KeyView> {
    let view = d.keys.revoke(id_or_name)?;
    let entry = NewEntry::new(view.tenant.as_str(), who.actor(), "key.revoke", format!("key/{}", view.id))
        .attrs(key_attrs(&view));
    d.commit.append(vec![entry]).await?;
    tracing::info!(key_id = %view.id, name = %view.name, "api key revoked");
    Ok(view)
}

pub async fn set_writes(d: &Daena, who: &Principal, enabled: bool) -> AppResult<bool> {
    let before = d.writes_enabled();
    d.set_writes_enabled(enabled);
    if before != enabled {
        let entry = NewEntry::new(who.tenant().as_str(), who.actor(), "admin.writes", "writes")
            .attrs(json!({"enabled": enabled}));
        d.commit.append(vec![entry]).await?;
        tracing::warn!(enabled, actor = %who.actor(), "writes switch changed");
    }
    Ok(d.writes_enabled())
}
