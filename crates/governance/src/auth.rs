//! API keys and the principal a request acts as.
//!
//! [`Principal`] can only be built here, by [`KeyRing::authenticate`], so a use case that
//! takes a `&Principal` knows the caller was authenticated, its role allowed the route and
//! its tenant was resolved (an `agent` key can never act for another tenant).

use daena_base::clock::Clock;
use daena_base::config::Secret;
use daena_base::error::{AppError, AppResult, ErrorCode};
use daena_core::auth::{ApiKeyRecord, KeyAttributes, Role, key_digest};
use daena_core::ids::TenantId;
use daena_core::time::Micros;
use daena_store::kv::{API_KEYS, Kv};
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Which roles a route admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Administration: `ops` only.
    Ops,
    /// Monitoring, analytics, ledger and governance reads: `ops` and `auditor`.
    Read,
    /// The data plane (memory, cache, heartbeats, interactions): `ops` and `agent`.
    Data,
    /// Any valid key.
    Any,
}

impl Access {
    pub fn admits(self, role: Role) -> bool {
        match self {
            Access::Ops => role == Role::Ops,
            Access::Read => matches!(role, Role::Ops | Role::Auditor),
            Access::Data => matches!(role, Role::Ops | Role::Agent),
            Access::Any => true,
        }
    }

    /// Admits `role` or says which roles this access needs.
    pub fn check(self, role: Role) -> AppResult<()> {
        if self.admits(role) {
            return Ok(());
        }
        Err(AppError::forbidden(format!("role {} may not call this route (needs {})", role.as_str(), self.roles())))
    }

    pub fn roles(self) -> &'static str {
        match self {
            Access::Ops => "ops",
            Access::Read => "ops or auditor",
            Access::Data => "ops or agent",
            Access::Any => "any",
        }
    }
}

/// An authenticated caller acting for one tenant.
#[derive(Debug, Clone)]
pub struct Principal {
    key_id: String,
    key_name: String,
    role: Role,
    tenant: TenantId,
    attributes: KeyAttributes,
}

impl Principal {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
    pub fn role(&self) -> Role {
        self.role
    }
    /// The tenant this request acts for.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    pub fn attributes(&self) -> &KeyAttributes {
        &self.attributes
    }
    /// How the ledger names this caller.
    pub fn actor(&self) -> String {
        format!("key:{}", self.key_name)
    }

    /// The one agent this key acts as, when it is bound to one.
    pub fn bound_agent(&self) -> Option<&str> {
        self.attributes.agent.as_deref()
    }

    /// The agent a request acts as: the one `X-Agent-ID` (or a body field) names, checked
    /// against the agent the key is bound to; without a name, the bound agent or
    /// `key:<name>`.
    pub fn acting_agent(&self, claimed: Option<&str>) -> AppResult<String> {
        let claimed = claimed.map(str::trim).filter(|c| !c.is_empty());
        match (claimed, self.bound_agent()) {
            (Some(c), Some(bound)) if c != bound => Err(AppError::forbidden(format!(
                "key {} is bound to agent {bound} and cannot act as {c}",
                self.key_name
            ))),
            (Some(c), _) => Ok(daena_core::ids::AgentId::new(c)
                .map_err(|e| AppError::invalid(format!("X-Agent-ID: {e}")))?
                .to_string()),
            (None, Some(bound)) => Ok(bound.to_owned()),
            (None, None) => Ok(format!("key:{}", self.key_name)),
        }
    }
    /// The operator running an offline command on a data directory it holds: whoever can
    /// open the directory has full power over it anyway, so this acts as `ops`.
    pub fn local_operator(tenant: TenantId) -> Principal {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        Principal {
            key_id: "local".into(),
            key_name: format!("cli:{user}"),
            role: Role::Ops,
            tenant,
            attributes: KeyAttributes::default(),
        }
    }

    /// Whether this key may act for any tenant: ops keys, and auditor keys granted it.
    pub fn all_tenants(&self) -> bool {
        self.role == Role::Ops || (self.role == Role::Auditor && self.attributes.all_tenants)
    }

    /// The same caller acting for another tenant; only ops keys, and auditor keys granted
    /// every tenant, may.
    pub fn for_tenant(&self, tenant: &TenantId) -> AppResult<Principal> {
        if tenant != &self.tenant && !self.all_tenants() {
            let role = self.role.as_str();
            let hint =
                if self.role == Role::Auditor { " (create it with --all-tenants to grant every tenant)" } else { "" };
            return Err(AppError::forbidden(format!(
                "{role} key {} is bound to tenant {} and cannot act for {tenant}{hint}",
                self.key_name, self.tenant
            )));
        }
        Ok(Principal { tenant: tenant.clone(), ..self.clone() })
    }
}

/// What `keys list` shows: never the key or its digest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyView {
    pub id: String,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "agent"))]
    pub role: Role,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tenant: TenantId,
    pub roles: Vec<String>,
    pub department: Option<String>,
    /// The one agent the key acts as, when bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// An auditor key granted every tenant.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub all_tenants: bool,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub active: bool,
}

impl From<&ApiKeyRecord> for KeyView {
    fn from(r: &ApiKeyRecord) -> Self {
        KeyView {
            id: r.id.clone(),
            name: r.name.clone(),
            role: r.role,
            tenant: r.tenant.clone(),
            roles: r.attributes.roles.clone(),
            department: r.attributes.department.clone(),
            agent: r.attributes.agent.clone(),
            all_tenants: r.attributes.all_tenants,
            created_at: daena_base::clock::rfc3339(r.created_at),
            revoked_at: r.revoked_at.map(daena_base::clock::rfc3339),
            active: r.revoked_at.is_none(),
        }
    }
}

/// A request to create a key.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub tenant: TenantId,
    pub attributes: KeyAttributes,
}

/// A created key: the text is shown once and never stored.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedKey {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

/// The id of the key provisioned from `DAENA_OPS_KEY`.
pub const ENV_OPS_KEY_ID: &str = "env-ops";

pub struct KeyRing {
    kv: Kv,
    clock: Arc<dyn Clock>,
    by_digest: RwLock<HashMap<[u8; 32], ApiKeyRecord>>,
}

/// The active keys' digests at one moment, without the store: checks a presented key while
/// the stores are closed (a restore's maintenance window).
pub struct FrozenKeys(std::collections::HashSet<[u8; 32]>);

impl FrozenKeys {
    /// `Ok` for a key that was active; `unauthenticated` otherwise.
    pub fn check(&self, key_text: Option<&str>) -> AppResult<()> {
        let key_text = key_text.ok_or_else(|| AppError::unauthenticated("missing X-API-Key header"))?;
        let digest = key_digest(key_text);
        let known = self.0.iter().fold(subtle::Choice::from(0), |found, d| found | d[..].ct_eq(&digest[..]));
        if bool::from(known) { Ok(()) } else { Err(AppError::unauthenticated("unknown or revoked API key")) }
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("keys", &self.by_digest.read().len()).finish()
    }
}

impl KeyRing {
    pub fn load(kv: Kv, clock: Arc<dyn Clock>) -> AppResult<KeyRing> {
        let mut by_digest = HashMap::new();
        for (_, record) in kv.scan_docs::<ApiKeyRecord>(API_KEYS)? {
            let digest = parse_digest(&record.digest)
                .ok_or_else(|| AppError::internal(format!("stored key {} has a malformed digest", record.id)))?;
            by_digest.insert(digest, record);
        }
        Ok(KeyRing { kv, clock, by_digest: RwLock::new(by_digest) })
    }

    /// Makes `DAENA_OPS_KEY` a valid ops key of the default tenant. A key revoked while it was
    /// provisioned stays revoked; a different key text replaces the old provisioned key.
    pub fn provision_env_ops(&self, key: &Secret) -> AppResult<()> {
        let digest = key_digest(key.expose());
        let existing: Option<ApiKeyRecord> = self.kv.get_doc(API_KEYS, ENV_OPS_KEY_ID)?;
        if let Some(existing) = &existing
            && parse_digest(&existing.digest).is_some_and(|d| bool::from(d.ct_eq(&digest)))
        {
            if existing.revoked_at.is_some() {
                tracing::warn!("DAENA_OPS_KEY was revoked and stays revoked; set a new key to provision one");
            }
            return Ok(());
        }
        let record = ApiKeyRecord {
            id: ENV_OPS_KEY_ID.into(),
            name: "DAENA_OPS_KEY".into(),
            role: Role::Ops,
            tenant: TenantId::default_tenant(),
            attributes: KeyAttributes::default(),
            digest: hex::encode(digest),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.kv.put_doc(API_KEYS, &record.id, &record)?;
        let mut map = self.by_digest.write();
        map.retain(|_, r| r.id != ENV_OPS_KEY_ID);
        map.insert(digest, record);
        Ok(())
    }

    /// A principal for the service's own fleet-wide reports (metrics): an ops view of the
    /// default tenant that no request can obtain.
    pub fn authenticate_system(&self) -> Principal {
        Principal {
            key_id: "system".into(),
            key_name: "system".into(),
            role: Role::Ops,
            tenant: TenantId::default_tenant(),
            attributes: KeyAttributes::default(),
        }
    }

    /// The active keys as they are now, for checks while the stores are closed.
    pub fn frozen(&self) -> FrozenKeys {
        FrozenKeys(self.by_digest.read().iter().filter(|(_, r)| r.revoked_at.is_none()).map(|(d, _)| *d).collect())
    }

    /// Resolves a request's key and tenant header into a principal admitted by `access`.
    pub fn authenticate(
        &self,
        key_text: Option<&str>,
        tenant_header: Option<&str>,
        access: Access,
    ) -> AppResult<Principal> {
        let key_text = key_text.ok_or_else(|| AppError::unauthenticated("missing X-API-Key header"))?;
        let digest = key_digest(key_text);
        // The map is keyed by a SHA-256 digest of the key, so lookup timing reveals nothing
        // usable about the key text; the final comparison is constant-time regardless.
        // Each map key is the parsed `digest` of its record (`load`, `create`, provisioning),
        // so comparing with the key compares with the stored digest.
        let principal = {
            let map = self.by_digest.read();
            let (_, record) = map
                .get_key_value(&digest)
                .filter(|(stored, _)| bool::from(stored[..].ct_eq(&digest[..])))
                .ok_or_else(|| AppError::unauthenticated("unknown API key"))?;
            if record.revoked_at.is_some() {
                return Err(AppError::unauthenticated("API key revoked"));
            }
            access.check(record.role)?;
            Principal {
                key_id: record.id.clone(),
                key_name: record.name.clone(),
                role: record.role,
                tenant: record.tenant.clone(),
                attributes: record.attributes.clone(),
            }
        };
        match tenant_header.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(principal),
            Some(t) => {
                let tenant = TenantId::new(t).map_err(|e| AppError::invalid(format!("X-Tenant-ID: {e}")))?;
                principal.for_tenant(&tenant)
            }
        }
    }

    /// A new key's text and record, checked against the keys there are. Nothing is stored
    /// here: the commit thread stores the record once its `key.create` entry is durable
    /// (`daena_app::governance`).
    pub fn mint(&self, new: NewKey) -> AppResult<(String, ApiKeyRecord)> {
        let name = new.name.trim();
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(AppError::invalid("key name must be 1..=128 printable characters"));
        }
        if self.active_name(name) {
            return Err(AppError::new(ErrorCode::Conflict, format!("an active key named {name} already exists")));
        }
        for role in &new.attributes.roles {
            if role.is_empty() || role.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(AppError::invalid(format!("invalid attribute role {role:?}")));
            }
        }
        if new.attributes.all_tenants && new.role != Role::Auditor {
            return Err(AppError::invalid("only auditor keys are granted every tenant (ops keys have it anyway)"));
        }
        if let Some(agent) = &new.attributes.agent {
            if new.role != Role::Agent {
                return Err(AppError::invalid("only agent keys can be bound to an agent"));
            }
            daena_core::ids::AgentId::new(agent).map_err(|e| AppError::invalid(format!("agent: {e}")))?;
        }
        let secret: [u8; 32] = rand::random();
        let key_text = format!("dk_{}", base64_url(&secret));
        let id_bytes: [u8; 6] = rand::random();
        let record = ApiKeyRecord {
            id: format!("key_{}", hex::encode(id_bytes)),
            name: name.to_owned(),
            role: new.role,
            tenant: new.tenant,
            attributes: new.attributes,
            digest: hex::encode(key_digest(&key_text)),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        Ok((key_text, record))
    }

    /// Whether an active key has this name.
    pub fn active_name(&self, name: &str) -> bool {
        self.by_digest.read().values().any(|r| r.name == name && r.revoked_at.is_none())
    }

    /// Stores a key record (its creation, or its replay), replacing one with the same id.
    pub fn insert(&self, record: ApiKeyRecord) -> AppResult<()> {
        let digest = parse_digest(&record.digest)
            .ok_or_else(|| AppError::internal(format!("key {} has a malformed digest", record.id)))?;
        self.kv.put_doc(API_KEYS, &record.id, &record)?;
        let mut map = self.by_digest.write();
        map.retain(|_, r| r.id != record.id);
        map.insert(digest, record);
        Ok(())
    }

    /// The key an id, or an active key's name, names.
    pub fn find(&self, id_or_name: &str) -> AppResult<ApiKeyRecord> {
        let map = self.by_digest.read();
        let matches: Vec<&ApiKeyRecord> =
            map.values().filter(|r| r.id == id_or_name || (r.name == id_or_name && r.revoked_at.is_none())).collect();
        match matches.as_slice() {
            [r] => Ok((*r).clone()),
            [] => Err(AppError::not_found(format!("no key with id or name {id_or_name}"))),
            _ => Err(AppError::invalid(format!("{id_or_name} names several keys; use the id"))),
        }
    }

    /// Marks key `id` revoked at `at`, persisted; a key already revoked keeps its time.
    /// `None` when there is no such key.
    pub fn set_revoked(&self, id: &str, at: Micros) -> AppResult<Option<KeyView>> {
        let mut map = self.by_digest.write();
        let Some(record) = map.values_mut().find(|r| r.id == id) else { return Ok(None) };
        if record.revoked_at.is_none() {
            let mut updated = record.clone();
            updated.revoked_at = Some(at);
            self.kv.put_doc(API_KEYS, &updated.id, &updated)?;
            *record = updated;
        }
        Ok(Some(KeyView::from(&*record)))
    }

    /// The stored record of the key with this id.
    pub fn record(&self, id: &str) -> Option<ApiKeyRecord> {
        self.by_digest.read().values().find(|r| r.id == id).cloned()
    }

    /// The key with this id.
    pub fn view(&self, id: &str) -> Option<KeyView> {
        self.by_digest.read().values().find(|r| r.id == id).map(KeyView::from)
    }

    pub fn list(&self) -> Vec<KeyView> {
        let mut keys: Vec<KeyView> = self.by_digest.read().values().map(KeyView::from).collect();
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        keys
    }

    /// Active keys per role, for health details.
    pub fn active_count(&self) -> usize {
        self.by_digest.read().values().filter(|r| r.revoked_at.is_none()).count()
    }
}

fn parse_digest(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text).ok()?.try_into().ok()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use daena_base::clock::ManualClock;
    use daena_core::time::Micros;

    fn ring() -> (tempfile::TempDir, KeyRing) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let kv = Kv::open(&tmp.path().join("state.redb"), 1 << 20).expect("kv");
        let ring = KeyRing::load(kv, ManualClock::new(Micros(1_000_000))).expect("ring");
        (tmp, ring)
    }

    fn new_key(name: &str, role: Role, tenant: &str) -> NewKey {
        NewKey {
            name: name.into(),
            role,
            tenant: TenantId::new(tenant).expect("tenant"),
            attributes: KeyAttributes::default(),
        }
    }

    /// Mints and stores a key as the commit thread would; returns its text.
    fn create(ring: &KeyRing, new: NewKey) -> String {
        let (text, record) = ring.mint(new).expect("mint");
        ring.insert(record).expect("insert");
        text
    }

    #[test]
    fn create_use_revoke() {
        let (_t, ring) = ring();
        let key = create(&ring, new_key("bot", Role::Agent, "acme"));
        assert!(key.starts_with("dk_"));
        let p = ring.authenticate(Some(&key), None, Access::Data).expect("auth");
        assert_eq!(p.tenant().as_str(), "acme");
        assert_eq!(p.role(), Role::Agent);
        assert!(ring.mint(new_key("bot", Role::Agent, "acme")).is_err(), "an active key has that name");
        let id = ring.find("bot").expect("find by name").id;
        ring.set_revoked(&id, Micros(5)).expect("revoke");
        assert_eq!(
            ring.set_revoked(&id, Micros(9)).expect("again").and_then(|v| v.revoked_at),
            Some(daena_base::clock::rfc3339(Micros(5)))
        );
        assert!(ring.find("bot").is_err(), "a revoked key is found by id only");
        let e = ring.authenticate(Some(&key), None, Access::Data).expect_err("revoked");
        assert_eq!(e.code, daena_base::error::ErrorCode::Unauthenticated);
        assert!(e.message.contains("revoked"));
    }

    #[test]
    fn roles_and_tenants() {
        let (_t, ring) = ring();
        let agent = create(&ring, new_key("bot", Role::Agent, "acme"));
        let auditor = create(&ring, new_key("aud", Role::Auditor, "default"));
        assert_eq!(
            ring.authenticate(None, None, Access::Data).expect_err("missing").code,
            daena_base::error::ErrorCode::Unauthenticated
        );
        assert_eq!(
            ring.authenticate(Some("nope"), None, Access::Data).expect_err("unknown").code,
            daena_base::error::ErrorCode::Unauthenticated
        );
        let e = ring.authenticate(Some(&agent), None, Access::Read).expect_err("a known key without the right");
        assert_eq!(e.code, daena_base::error::ErrorCode::Forbidden);
        assert_eq!(e.message, "role agent may not call this route (needs ops or auditor)");
        assert!(ring.authenticate(Some(&agent), None, Access::Read).is_err(), "agent cannot read monitoring");
        assert!(ring.authenticate(Some(&auditor), None, Access::Data).is_err(), "auditor has no data plane");
        let e = ring.authenticate(Some(&auditor), Some("other"), Access::Read).expect_err("an auditor is one tenant's");
        assert_eq!(e.code, daena_base::error::ErrorCode::Forbidden);
        let granted = NewKey {
            attributes: KeyAttributes { all_tenants: true, ..KeyAttributes::default() },
            ..new_key("aud-all", Role::Auditor, "default")
        };
        let granted = create(&ring, granted);
        assert!(ring.authenticate(Some(&granted), Some("other"), Access::Read).is_ok(), "granted every tenant");
        let e = ring.mint(NewKey {
            attributes: KeyAttributes { all_tenants: true, ..KeyAttributes::default() },
            ..new_key("x", Role::Agent, "acme")
        });
        assert!(e.is_err(), "only auditors are granted every tenant");
        let e = ring.authenticate(Some(&agent), Some("other"), Access::Data).expect_err("agent widening");
        assert_eq!(e.message, "agent key bot is bound to tenant acme and cannot act for other");
        assert!(ring.authenticate(Some(&agent), Some("acme"), Access::Data).is_ok());
        assert!(ring.authenticate(Some(&agent), Some("acme"), Access::Data).is_ok());
        let e = ring.authenticate(Some(&agent), Some("Not A Tenant"), Access::Data).expect_err("bad header");
        assert_eq!(e.code, daena_base::error::ErrorCode::InvalidRequest);
    }

    #[test]
    fn env_ops_key_and_persistence() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("state.redb");
        let clock = ManualClock::new(Micros(5));
        {
            let ring = KeyRing::load(Kv::open(&path, 1 << 20).expect("kv"), clock.clone()).expect("ring");
            ring.provision_env_ops(&Secret::new("ops-key")).expect("provision");
            let p = ring.authenticate(Some("ops-key"), Some("acme"), Access::Ops).expect("ops");
            assert_eq!(p.tenant().as_str(), "acme", "ops may act for any tenant");
            let id = ring.find("DAENA_OPS_KEY").expect("by name").id;
            ring.set_revoked(&id, Micros(6)).expect("revoke");
        }
        let ring = KeyRing::load(Kv::open(&path, 1 << 20).expect("kv"), clock.clone()).expect("ring");
        ring.provision_env_ops(&Secret::new("ops-key")).expect("provision again");
        assert!(ring.authenticate(Some("ops-key"), None, Access::Ops).is_err(), "revocation survives restarts");
        ring.provision_env_ops(&Secret::new("new-ops-key")).expect("new key");
        assert!(ring.authenticate(Some("new-ops-key"), None, Access::Ops).is_ok());
        assert!(ring.list().iter().all(|k| !format!("{k:?}").contains("ops-key")));
    }
}
