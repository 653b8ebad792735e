//! The one typed configuration of Daena and how it is assembled.
//!
//! Layers, lowest first: built-in defaults < `config/daena.toml` < `config/memory_config.yaml`
//! (the `memory` section) < `config/policy_config.yaml` (the `policy` section) < `DAENA_*`
//! environment variables < command-line flags. Every layer is checked against the typed
//! schema with unknown keys denied, and an error names the layer (file, variable or flag)
//! and the key. Secrets never live in this struct: they come from the environment or a file
//! and are held in [`Secrets`], whose `Debug` and `Serialize` redact them.

mod load;
mod schema;
mod validate;

pub use load::{ConfigError, LoadOptions, LoadedConfig, load};
pub use schema::*;
pub use validate::MIN_L2_CACHE_BYTES;

use serde::{Serialize, Serializer};
use std::fmt;

/// A secret string: redacted in `Debug`, `Display` and `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call sites are few and greppable on purpose.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Secrets read from the environment (never from the config files).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Secrets {
    /// `DAENA_OPS_KEY`: provisions an ops API key at start.
    pub ops_key: Option<Secret>,
    /// `DAENA_MEMORY_AES_KEY`: the master key (base64 or hex of 32 bytes).
    pub memory_aes_key: Option<Secret>,
    /// `DAENA_LLM_API_KEY`: the credential sent to the upstream model endpoint.
    pub llm_api_key: Option<Secret>,
}
