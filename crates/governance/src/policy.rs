//! ABAC per data class: the runbook's simple rules (`config/policy_config.yaml`) compiled to
//! Cedar, plus an optional `.cedar` file, evaluated with the Cedar engine.
//!
//! The simple rules, for class C and a caller with ABAC roles R and tenant T:
//! a role of R in `deny_roles` denies; T in `deny_tenants` denies; a non-empty `allow_roles`
//! without any role of R denies; a non-empty `allow_tenants` without T denies; otherwise a
//! class with an allow list allows, and a class without one follows `default.allow`. Each
//! rule becomes one Cedar policy with a stable id (`pii.deny_roles`, ...), so a denial names
//! the rule that denied. `ops` keys carry the ABAC role `admin` in addition to their own.

use crate::auth::Principal;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, Policy, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use daena_base::config::{ClassRule, PolicyConfig};
use daena_base::error::{AppError, AppResult};
use daena_core::auth::Role;
use daena_core::ids::ClassName;
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

/// What is being done to a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Write,
    Delete,
    List,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::List => "list",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        [Action::Read, Action::Write, Action::Delete, Action::List].into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Decision {
    pub allowed: bool,
    /// The rules that decided: the denying ones, or the permitting ones.
    pub rules: Vec<String>,
    pub reason: String,
}

/// The ABAC subject: roles and tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    pub roles: Vec<String>,
    pub tenant: String,
}

impl Subject {
    pub fn of(who: &Principal) -> Subject {
        let mut roles = who.attributes().roles.clone();
        if who.role() == Role::Ops && !roles.iter().any(|r| r == "admin") {
            roles.push("admin".to_owned());
        }
        Subject { roles, tenant: who.tenant().to_string() }
    }
}

pub struct PolicyEngine {
    set: PolicySet,
    descriptions: BTreeMap<String, String>,
    source: String,
    authorizer: Authorizer,
    cache: RwLock<HashMap<(Subject, String, Action), Decision>>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine").field("rules", &self.descriptions.len()).finish()
    }
}

fn cedar_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn cedar_set<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.into_iter().map(cedar_str).collect();
    format!("[{}]", items.join(", "))
}

/// The Cedar source of the simple rules, as (id, description, policy text).
pub fn compile_simple(cfg: &PolicyConfig) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    if cfg.default.allow {
        out.push((
            "default.allow".into(),
            "classes without an allow list are open to every role".into(),
            "permit (principal, action, resource);".into(),
        ));
    }
    for (class, rule) in &cfg.classes {
        let ClassRule { allow_roles, deny_roles, allow_tenants, deny_tenants, .. } = rule;
        let res = format!("resource == Daena::Class::{}", cedar_str(class.as_str()));
        if !deny_roles.is_empty() {
            out.push((
                format!("{class}.deny_roles"),
                format!("{class}: roles {} are denied", deny_roles.join(", ")),
                format!(
                    "forbid (principal, action, {res}) when {{ principal.roles.containsAny({}) }};",
                    cedar_set(deny_roles.iter().map(String::as_str))
                ),
            ));
        }
        if !deny_tenants.is_empty() {
            out.push((
                format!("{class}.deny_tenants"),
                format!(
                    "{class}: tenants {} are denied",
                    deny_tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                ),
                format!(
                    "forbid (principal, action, {res}) when {{ {}.contains(principal.tenant) }};",
                    cedar_set(deny_tenants.iter().map(|t| t.as_str()))
                ),
            ));
        }
        if !allow_roles.is_empty() {
            out.push((
                format!("{class}.allow_roles"),
                format!("{class}: only roles {} are allowed", allow_roles.join(", ")),
                format!(
                    "forbid (principal, action, {res}) unless {{ principal.roles.containsAny({}) }};",
                    cedar_set(allow_roles.iter().map(String::as_str))
                ),
            ));
        }
        if !allow_tenants.is_empty() {
            out.push((
                format!("{class}.allow_tenants"),
                format!(
                    "{class}: only tenants {} are allowed",
                    allow_tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                ),
                format!(
                    "forbid (principal, action, {res}) unless {{ {}.contains(principal.tenant) }};",
                    cedar_set(allow_tenants.iter().map(|t| t.as_str()))
                ),
            ));
        }
        if !allow_roles.is_empty() || !allow_tenants.is_empty() {
            out.push((
                format!("{class}.allow"),
                format!("{class}: callers passing its allow lists"),
                format!("permit (principal, action, {res});"),
            ));
        }
    }
    out
}

impl PolicyEngine {
    /// Compiles the simple rules and adds `cedar_file` (relative to `config_dir`) if set.
    pub fn compile(cfg: &PolicyConfig, config_dir: &Path) -> AppResult<PolicyEngine> {
        let mut set = PolicySet::new();
        let mut descriptions = BTreeMap::new();
        let mut source = String::new();
        for (id, description, text) in compile_simple(cfg) {
            let policy = Policy::parse(Some(PolicyId::new(&id)), &text)
                .map_err(|e| AppError::invalid(format!("policy {id}: {e}")))?;
            set.add(policy).map_err(|e| AppError::invalid(format!("policy {id}: {e}")))?;
            source.push_str(&format!("@id({})\n{text}\n\n", cedar_str(&id)));
            descriptions.insert(id, description);
        }
        if let Some(file) = &cfg.cedar_file {
            let path = if file.is_absolute() { file.clone() } else { config_dir.join(file) };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| AppError::invalid(format!("policy.cedar_file {}: {e}", path.display())))?;
            let extra = PolicySet::from_str(&text)
                .map_err(|e| AppError::invalid(format!("policy.cedar_file {}: {e}", path.display())))?;
            for p in extra.policies() {
                let id = format!("cedar_file.{}", p.id());
                let policy = p.new_id(PolicyId::new(&id));
                set.add(policy).map_err(|e| AppError::invalid(format!("policy.cedar_file {}: {e}", path.display())))?;
                descriptions.insert(id, format!("from {}", path.display()));
            }
            source.push_str(&format!("// from {}\n{text}\n", path.display()));
        }
        Ok(PolicyEngine {
            set,
            descriptions,
            source,
            authorizer: Authorizer::new(),
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// The compiled Cedar text, for `daena policy inspect`.
    pub fn cedar_source(&self) -> &str {
        &self.source
    }

    pub fn rules(&self) -> &BTreeMap<String, String> {
        &self.descriptions
    }

    pub fn decide(&self, who: &Principal, class: &ClassName, action: Action) -> Decision {
        self.decide_for(&Subject::of(who), class.as_str(), action)
    }

    pub fn decide_for(&self, subject: &Subject, class: &str, action: Action) -> Decision {
        let key = (subject.clone(), class.to_owned(), action);
        if let Some(d) = self.cache.read().get(&key) {
            return d.clone();
        }
        let d = self.evaluate(subject, class, action);
        let mut cache = self.cache.write();
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(key, d.clone());
        d
    }

    fn evaluate(&self, subject: &Subject, class: &str, action: Action) -> Decision {
        let deny = |reason: String| Decision { allowed: false, rules: Vec::new(), reason };
        let uid = |t: &str, id: &str| EntityUid::from_str(&format!("Daena::{t}::{}", cedar_str(id))).ok();
        let (Some(principal), Some(act), Some(resource)) =
            (uid("Key", "caller"), uid("Action", action.as_str()), uid("Class", class))
        else {
            return deny("the request could not be expressed in Cedar".into());
        };
        let attrs = HashMap::from([
            (
                "roles".to_owned(),
                RestrictedExpression::new_set(
                    subject.roles.iter().map(|r| RestrictedExpression::new_string(r.clone())),
                ),
            ),
            ("tenant".to_owned(), RestrictedExpression::new_string(subject.tenant.clone())),
        ]);
        let Ok(entity) = Entity::new(principal.clone(), attrs, HashSet::new()) else {
            return deny("the caller could not be expressed in Cedar".into());
        };
        let Ok(entities) = Entities::from_entities([entity], None) else {
            return deny("the caller could not be expressed in Cedar".into());
        };
        let Ok(request) = Request::new(principal, act, resource, Context::empty(), None) else {
            return deny("the request could not be expressed in Cedar".into());
        };
        let response = self.authorizer.is_authorized(&request, &self.set, &entities);
        let rules: Vec<String> = response.diagnostics().reason().map(|id| id.to_string()).collect();
        let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
        match response.decision() {
            CedarDecision::Allow => {
                Decision { allowed: true, reason: format!("allowed by {}", rules.join(", ")), rules }
            }
            CedarDecision::Deny if rules.is_empty() => Decision {
                allowed: false,
                rules: vec!["default.deny".into()],
                reason: if errors.is_empty() {
                    format!("no rule allows {} on class {class} (default.allow is false)", action.as_str())
                } else {
                    format!("policy evaluation errors: {}", errors.join("; "))
                },
            },
            CedarDecision::Deny => {
                let why: Vec<String> =
                    rules.iter().map(|r| self.descriptions.get(r).cloned().unwrap_or_else(|| r.clone())).collect();
                Decision { allowed: false, reason: why.join("; "), rules }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(yaml: &str) -> PolicyEngine {
        let cfg: PolicyConfig = serde_norway::from_str(yaml).expect("policy yaml");
        PolicyEngine::compile(&cfg, Path::new(".")).expect("compile")
    }

    fn subject(roles: &[&str], tenant: &str) -> Subject {
        Subject { roles: roles.iter().map(|r| (*r).to_owned()).collect(), tenant: tenant.to_owned() }
    }

    const RUNBOOK: &str = include_str!("../../../config/policy_config.yaml");

    /// The allow/deny matrix of the runbook's policy: (roles, class, allowed).
    #[test]
    fn runbook_matrix() {
        let e = engine(RUNBOOK);
        let cases: &[(&[&str], &str, bool)] = &[
            (&["legal.officer"], "pii", true),
            (&["admin"], "pii", true),
            (&["founder"], "legal", true),
            (&["guest"], "pii", false),
            (&["finance.analyst"], "pii", false),
            (&["finance.analyst", "admin"], "pii", false),
            (&[], "pii", false),
            (&["legal.officer"], "legal", true),
            (&["finance.analyst"], "legal", false),
            (&["finance.controller"], "finance", true),
            (&["legal.officer"], "finance", false),
            (&["guest"], "finance", false),
            (&[], "chat", true),
            (&["guest"], "chat", true),
        ];
        for (roles, class, allowed) in cases {
            for action in [Action::Read, Action::Write, Action::Delete, Action::List] {
                let d = e.decide_for(&subject(roles, "acme"), class, action);
                assert_eq!(d.allowed, *allowed, "{roles:?} {} {class}: {d:?}", action.as_str());
            }
        }
        let d = e.decide_for(&subject(&["guest"], "acme"), "pii", Action::Read);
        assert!(d.rules.contains(&"pii.deny_roles".to_owned()), "{d:?}");
        let d = e.decide_for(&subject(&[], "acme"), "finance", Action::Write);
        assert_eq!(d.rules, vec!["finance.allow_roles".to_owned()]);
    }

    #[test]
    fn tenants_and_default_deny() {
        let e = engine(
            "default: {allow: false}\nclasses:\n  chat:\n    deny_tenants: [globex]\n  ops_log:\n    allow_tenants: [acme]\n",
        );
        assert!(
            !e.decide_for(&subject(&[], "acme"), "chat", Action::Read).allowed,
            "deny-only class follows the default"
        );
        assert!(e.decide_for(&subject(&[], "acme"), "ops_log", Action::Read).allowed);
        assert!(!e.decide_for(&subject(&[], "globex"), "ops_log", Action::Read).allowed);
        let d = e.decide_for(&subject(&[], "acme"), "unlisted", Action::Read);
        assert_eq!((d.allowed, d.rules.clone()), (false, vec!["default.deny".to_owned()]));
    }

    #[test]
    fn quotes_cannot_inject() {
        let e = engine("classes:\n  chat:\n    deny_roles: ['a\"]) || true || principal.roles.containsAny([\"b']\n");
        assert!(e.decide_for(&subject(&["x"], "acme"), "chat", Action::Read).allowed);
    }
}
