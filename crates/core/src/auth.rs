//! API keys as the domain sees them: roles, tenants and ABAC attributes.
//!
//! The key itself never appears here: a key is known by its id and by the SHA-256 digest of
//! its secret text, so nothing stored or logged can be replayed as a credential.

use crate::ids::TenantId;
use crate::time::Micros;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key may do. `ops` may do everything for any tenant; `auditor` reads monitoring,
/// analytics, ledger and governance; `agent` uses the data plane of its own tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Ops,
    Auditor,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ops => "ops",
            Role::Auditor => "auditor",
            Role::Agent => "agent",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "ops" => Some(Role::Ops),
            "auditor" => Some(Role::Auditor),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

/// Attributes ABAC policies see besides the tenant: business roles such as `legal.officer`
/// and the department the key's holder belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyAttributes {
    pub roles: Vec<String>,
    pub department: Option<String>,
    /// The one agent an `agent` key acts as (`daena keys create --agent legal_synth`): it
    /// writes, confirms and sends heartbeats only as that agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// An `auditor` key granted every tenant (`--all-tenants`); without it, an auditor reads
    /// its own tenant only.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all_tenants: bool,
}

/// A stored API key. `digest` is hex SHA-256 of the key text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub tenant: TenantId,
    pub attributes: KeyAttributes,
    pub digest: String,
    pub created_at: Micros,
    pub revoked_at: Option<Micros>,
}

/// SHA-256 of the key text, the only form in which keys are stored.
pub fn key_digest(key_text: &str) -> [u8; 32] {
    Sha256::digest(key_text.as_bytes()).into()
}
