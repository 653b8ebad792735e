//! Validated identifiers: tenants, data classes, record keys and agent ids.
//!
//! Every identifier that reaches storage passes through one of these constructors, so the
//! rest of the code can rely on their shape (length bounds, no control characters, no
//! separators that would let one tenant's key alias another's).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was refused. The message names the kind and the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub reason: String,
}

fn err(kind: &'static str, reason: impl Into<String>) -> IdError {
    IdError { kind, reason: reason.into() }
}

/// Checks a slug: 1..=max bytes, first byte `first`, the rest from `rest`.
fn check_slug(
    kind: &'static str,
    s: &str,
    max: usize,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
    allowed: &str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(err(kind, "must not be empty"));
    }
    if s.len() > max {
        return Err(err(kind, format!("longer than {max} bytes")));
    }
    let bytes = s.as_bytes();
    if !first(bytes[0]) || !bytes[1..].iter().all(|b| rest(*b)) {
        return Err(err(kind, format!("{s:?} must match {allowed}")));
    }
    Ok(())
}

fn lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The rules below as JSON Schema patterns, for the OpenAPI document.
pub const TENANT_PATTERN: &str = "^[a-z0-9][a-z0-9_.-]{0,63}$";
pub const CLASS_PATTERN: &str = "^[a-z][a-z0-9_.-]{0,63}$";
pub const AGENT_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$";
/// Characters, not bytes, as JSON Schema counts them.
pub const RECORD_KEY_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]{1,512}$";

string_id!(
    /// A tenant: `[a-z0-9][a-z0-9_.-]{0,63}`.
    TenantId
);
string_id!(
    /// A data class (`chat`, `legal`, `ops_log`, ...): `[a-z][a-z0-9_.-]{0,63}`.
    ClassName
);
string_id!(
    /// A record key inside a (tenant, class): 1..=512 characters, no control characters.
    RecordKey
);
string_id!(
    /// An agent id such as `legal_synth`: `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`.
    AgentId
);

impl TenantId {
    pub fn new(s: &str) -> Result<Self, IdError> {
        check_slug(
            "tenant",
            s,
            64,
            lower_alnum,
            |b| lower_alnum(b) || b"_.-".contains(&b),
            "[a-z0-9][a-z0-9_.-]{0,63}",
        )?;
        Ok(TenantId(s.to_owned()))
    }

    /// The tenant every fresh installation has.
    pub fn default_tenant() -> Self {
        TenantId("default".to_owned())
    }
}

impl ClassName {
    pub fn new(s: &str) -> Result<Self, IdError> {
        check_slug(
            "class",
            s,
            64,
            |b| b.is_ascii_lowercase(),
            |b| lower_alnum(b) || b"_.-".contains(&b),
            "[a-z][a-z0-9_.-]{0,63}",
        )?;
        Ok(ClassName(s.to_owned()))
    }
}

impl RecordKey {
    pub const MAX_LEN: usize = 512;

    pub fn new(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(err("key", "must not be empty"));
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(err("key", format!("longer than {} characters", Self::MAX_LEN)));
        }
        if s.chars().any(char::is_control) {
            return Err(err("key", "must not contain control characters"));
        }
        Ok(RecordKey(s.to_owned()))
    }
}

impl AgentId {
    pub fn new(s: &str) -> Result<Self, IdError> {
        check_slug(
            "agent id",
            s,
            128,
            |b| b.is_ascii_alphanumeric(),
            |b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b),
            "[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
        )?;
        Ok(AgentId(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ok: bool, result: Result<impl fmt::Debug, IdError>) {
        assert_eq!(result.is_ok(), ok, "{result:?}");
    }

    #[test]
    fn tenants() {
        check(true, TenantId::new("default"));
        check(true, TenantId::new("finance_global"));
        check(true, TenantId::new("acme-corp.eu"));
        check(false, TenantId::new(""));
        check(false, TenantId::new("Acme"));
        check(false, TenantId::new("-acme"));
        check(false, TenantId::new("a/b"));
        check(false, TenantId::new(&"a".repeat(65)));
    }

    #[test]
    fn classes_keys_agents() {
        check(true, ClassName::new("research_note"));
        check(false, ClassName::new("9chat"));
        check(false, ClassName::new("legal|finance"));
        check(true, RecordKey::new("users/42:profile"));
        check(false, RecordKey::new("a\nb"));
        check(false, RecordKey::new(&"k".repeat(513)));
        check(true, AgentId::new("legal_synth"));
        check(false, AgentId::new("legal synth"));
    }

    #[test]
    fn deserialize_validates() {
        let bad: Result<TenantId, _> = serde_json::from_str("\"NOPE\"");
        assert!(bad.is_err());
        let good: TenantId = serde_json::from_str("\"acme\"").expect("valid tenant");
        assert_eq!(good.as_str(), "acme");
    }
}
