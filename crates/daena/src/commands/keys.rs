//! `daena keys create|list|revoke`: through the admin API when a server holds the data
//! directory, directly on it otherwise.

use super::{Target, target};
use crate::cli::{CreateKeyArgs, Global, KeysCommand};
use crate::client::segment;
use daena_app::admin;
use daena_app::auth::{CreatedKey, KeyView, NewKey, Principal};
use daena_core::auth::{KeyAttributes, Role};
use daena_core::ids::TenantId;
use std::process::ExitCode;

#[derive(serde::Deserialize)]
struct KeyList {
    keys: Vec<RemoteKey>,
}

/// A key as the admin API returns it.
#[derive(serde::Deserialize, serde::Serialize)]
struct RemoteKey {
    id: String,
    name: String,
    role: String,
    tenant: String,
    roles: Vec<String>,
    department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    all_tenants: bool,
    created_at: String,
    revoked_at: Option<String>,
    active: bool,
}

impl From<KeyView> for RemoteKey {
    fn from(v: KeyView) -> Self {
        RemoteKey {
            id: v.id,
            name: v.name,
            role: v.role.as_str().to_owned(),
            tenant: v.tenant.to_string(),
            roles: v.roles,
            department: v.department,
            agent: v.agent,
            all_tenants: v.all_tenants,
            created_at: v.created_at,
            revoked_at: v.revoked_at,
            active: v.active,
        }
    }
}

#[derive(serde::Deserialize, serde::Serialize)]
struct RemoteCreated {
    key: String,
    #[serde(flatten)]
    view: RemoteKey,
}

impl From<CreatedKey> for RemoteCreated {
    fn from(c: CreatedKey) -> Self {
        RemoteCreated { key: c.key, view: c.view.into() }
    }
}

pub async fn run(global: &Global, cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    let target = target(global, "keys")?;
    match cmd {
        KeysCommand::Create(args) => create(global, target, args).await,
        KeysCommand::List => {
            let keys: Vec<RemoteKey> = match &target {
                Target::Remote(r) => r.get::<KeyList>("/api/v1/admin/keys").await?.keys,
                Target::Offline(d) => d.governance().api_keys().list().into_iter().map(RemoteKey::from).collect(),
            };
            if global.json {
                crate::output::json(&serde_json::json!({ "keys": keys }))?;
            } else {
                let rows: Vec<Vec<String>> = keys
                    .iter()
                    .map(|k| {
                        vec![
                            k.id.clone(),
                            k.name.clone(),
                            k.role.clone(),
                            k.tenant.clone(),
                            k.roles.join(","),
                            if k.active {
                                "active".into()
                            } else {
                                format!("revoked {}", k.revoked_at.clone().unwrap_or_default())
                            },
                        ]
                    })
                    .collect();
                crate::output::table(&["ID", "NAME", "ROLE", "TENANT", "ABAC ROLES", "STATUS"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { id } => {
            let view: RemoteKey = match &target {
                Target::Remote(r) => r.delete(&format!("/api/v1/admin/keys/{}", segment(&id))).await?,
                Target::Offline(d) => {
                    let who = Principal::local_operator(TenantId::default_tenant());
                    let view = admin::revoke_key(d, &who, &id).await.map_err(|e| anyhow::anyhow!(e.message))?;
                    d.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))?;
                    view.into()
                }
            };
            if global.json {
                crate::output::json(&view)?;
            } else {
                println!("revoked {} ({})", view.id, view.name);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create(global: &Global, target: Target, args: CreateKeyArgs) -> anyhow::Result<ExitCode> {
    let roles: Vec<String> = args.roles.iter().map(|r| r.trim().to_owned()).filter(|r| !r.is_empty()).collect();
    let created: RemoteCreated = match &target {
        Target::Remote(r) => {
            let body = serde_json::json!({
                "name": args.name, "role": args.role, "tenant": args.tenant,
                "roles": roles, "department": args.department, "agent": args.agent,
                "all_tenants": args.all_tenants,
            });
            r.post("/api/v1/admin/keys", &body).await?
        }
        Target::Offline(d) => {
            let role = Role::parse(&args.role).ok_or_else(|| anyhow::anyhow!("unknown role {}", args.role))?;
            let tenant = TenantId::new(&args.tenant)?;
            let new = NewKey {
                name: args.name,
                role,
                tenant,
                attributes: KeyAttributes {
                    roles,
                    department: args.department,
                    agent: args.agent,
                    all_tenants: args.all_tenants,
                },
            };
            let who = Principal::local_operator(TenantId::default_tenant());
            let created = admin::create_key(d, &who, new).await.map_err(|e| anyhow::anyhow!(e.message))?;
            d.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))?;
            created.into()
        }
    };
    if global.json {
        crate::output::json(&created)?;
    } else {
        println!(
            "created {} ({}, role {}, tenant {})",
            created.view.id, created.view.name, created.view.role, created.view.tenant
        );
        println!("key: {}", created.key);
        println!("This is the only time the key is shown; it is stored hashed.");
    }
    Ok(ExitCode::SUCCESS)
}
