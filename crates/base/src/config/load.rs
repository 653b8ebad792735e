//! Assembling the configuration from defaults, files, environment and flags.
//!
//! Each layer is parsed to a JSON tree and merged over the layers below it; after each
//! layer the merged tree is deserialized into [`Config`] so that an error can name the layer
//! that introduced it. Collections that a file lists in full (class tables, aging rules,
//! tenant overrides) replace the defaults rather than merging into them, so a file says
//! exactly which classes exist.

use super::{Config, Secret, Secrets};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A configuration problem: which layer, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {key}: {message}")]
pub struct ConfigError {
    /// The file, environment variable or flag that introduced the problem.
    pub source_name: String,
    /// The key as `section.key`, or `-` when the whole source is unreadable.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(source_name: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { source_name: source_name.into(), key: key.into(), message: message.into() }
    }
}

/// Where to look and what to override.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The config directory; `None` means `DAENA_CONFIG_DIR` from `env`, else `./config`.
    pub config_dir: Option<PathBuf>,
    /// `DAENA_*` variables (tests pass their own; the binary passes the process environment).
    pub env: BTreeMap<String, String>,
    /// Flag overrides as (`section.key`, value, flag name).
    pub overrides: Vec<(String, String, String)>,
}

impl LoadOptions {
    /// Options carrying the process environment's `DAENA_*` variables.
    pub fn from_process_env() -> Self {
        LoadOptions {
            env: std::env::vars().filter(|(k, _)| k.starts_with("DAENA_")).collect(),
            ..LoadOptions::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub secrets: Secrets,
    /// The files that were read, in order.
    pub files: Vec<PathBuf>,
    pub config_dir: PathBuf,
}

impl LoadedConfig {
    /// The defaults, with data in `<root>/data`, config files under `<root>/config` (none
    /// read) and `ops_key` as the operator key: a self-contained service for tests,
    /// benchmarks and the load generator.
    pub fn in_dir(root: &Path, ops_key: Option<&str>) -> LoadedConfig {
        LoadedConfig {
            config: Config { data_dir: root.join("data"), ..Config::default() },
            secrets: Secrets { ops_key: ops_key.map(Secret::new), ..Secrets::default() },
            files: Vec::new(),
            config_dir: root.join("config"),
        }
    }
}

/// Variables that configure the CLI or carry secrets rather than config keys.
const NON_CONFIG_ENV: &[&str] = &["DAENA_URL", "DAENA_API_KEY", "DAENA_CONFIG_DIR", "DAENA_LOG"];
const SECRET_ENV: &[&str] = &["DAENA_OPS_KEY", "DAENA_MEMORY_AES_KEY", "DAENA_LLM_API_KEY"];

/// The runbook's names, kept as they are, and short forms.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("DAENA_NBMF_ENABLED", "server.writes_enabled"),
    ("DAENA_TENANT_RATE_LIMIT_RPM", "rate_limit.rpm"),
    ("DAENA_TENANT_BURST", "rate_limit.burst"),
    ("DAENA_LISTEN", "server.listen"),
    ("DAENA_LOG_FORMAT", "server.log_format"),
];

/// Paths whose values replace the lower layer's instead of merging into it.
const REPLACE_PATHS: &[&str] = &["memory.classes", "policy.classes", "memory.cas.tenants", "llm.prices"];

pub fn load(opts: &LoadOptions) -> Result<LoadedConfig, ConfigError> {
    let defaults =
        serde_json::to_value(Config::default()).map_err(|e| ConfigError::new("defaults", "-", e.to_string()))?;
    let mut tree = defaults.clone();

    let (config_dir, dir_explicit) = match (&opts.config_dir, opts.env.get("DAENA_CONFIG_DIR")) {
        (Some(dir), _) => (dir.clone(), true),
        (None, Some(dir)) => (PathBuf::from(dir), true),
        (None, None) => (PathBuf::from("./config"), false),
    };
    if dir_explicit && !config_dir.is_dir() {
        return Err(ConfigError::new(
            config_dir.display().to_string(),
            "-",
            "config directory does not exist (set by DAENA_CONFIG_DIR or --config-dir)",
        ));
    }

    let mut files = Vec::new();
    for (name, section, parse) in [
        ("daena.toml", None, parse_toml as fn(&str) -> Result<Value, String>),
        ("memory_config.yaml", Some("memory"), parse_yaml),
        ("policy_config.yaml", Some("policy"), parse_yaml),
    ] {
        let path = config_dir.join(name);
        let Some(layer) = read_layer(&path, parse)? else { continue };
        let layer = match section {
            Some(section) => {
                let mut wrapped = Map::new();
                wrapped.insert(section.to_owned(), layer);
                Value::Object(wrapped)
            }
            None => layer,
        };
        merge(&mut tree, layer, "");
        check(&tree, &path.display().to_string())?;
        files.push(path);
    }

    let secrets = apply_env(&mut tree, &defaults, &opts.env)?;

    for (key, raw, flag) in &opts.overrides {
        let value =
            parse_scalar_for(&defaults, key, raw).map_err(|m| ConfigError::new(flag.clone(), key.clone(), m))?;
        set_path(&mut tree, key, value);
        check(&tree, flag)?;
    }

    let config = check(&tree, "configuration")?;
    config.validate().map_err(|(key, message)| ConfigError::new("configuration", key, message))?;
    Ok(LoadedConfig { config, secrets, files, config_dir })
}

fn read_layer(path: &Path, parse: fn(&str) -> Result<Value, String>) -> Result<Option<Value>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ConfigError::new(path.display().to_string(), "-", format!("cannot read: {e}"))),
    };
    let value = parse(&text).map_err(|m| ConfigError::new(path.display().to_string(), "-", m))?;
    match value {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(Some(value)),
        _ => Err(ConfigError::new(path.display().to_string(), "-", "the top level must be a mapping")),
    }
}

fn parse_toml(text: &str) -> Result<Value, String> {
    let value: toml::Value = toml::from_str(text).map_err(|e| e.to_string())?;
    serde_json::to_value(value).map_err(|e| e.to_string())
}

fn parse_yaml(text: &str) -> Result<Value, String> {
    let value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    serde_json::to_value(value).map_err(|e| e.to_string())
}

/// Deserializes the tree, naming the offending key on failure.
fn check(tree: &Value, source_name: &str) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize::<_, Config>(tree.clone()).map_err(|e| {
        let key = e.path().to_string();
        let message = e.into_inner().to_string();
        ConfigError::new(source_name, if key == "." { "-".to_owned() } else { key }, message)
    })
}

fn merge(base: &mut Value, layer: Value, path: &str) {
    match (base, layer) {
        (Value::Object(base), Value::Object(layer)) => {
            for (k, v) in layer {
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match base.get_mut(&k) {
                    Some(existing) if !REPLACE_PATHS.contains(&child.as_str()) => merge(existing, v, &child),
                    _ => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, layer) => *base = layer,
    }
}

/// Every leaf key of the defaults, as (`section.key`, `DAENA_SECTION_KEY`).
fn leaf_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaf_paths(v, &path, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn env_name(path: &str) -> String {
    format!("DAENA_{}", path.replace(['.', '-'], "_").to_ascii_uppercase())
}

fn apply_env(tree: &mut Value, defaults: &Value, env: &BTreeMap<String, String>) -> Result<Secrets, ConfigError> {
    let mut paths = Vec::new();
    leaf_paths(defaults, "", &mut paths);
    let by_env: BTreeMap<String, String> = paths
        .iter()
        .map(|p| (env_name(p), p.clone()))
        .chain(ENV_ALIASES.iter().map(|(e, p)| ((*e).to_owned(), (*p).to_owned())))
        .collect();
    let mut secrets = Secrets::default();
    for (name, raw) in env {
        if !name.starts_with("DAENA_") || NON_CONFIG_ENV.contains(&name.as_str()) {
            continue;
        }
        if SECRET_ENV.contains(&name.as_str()) {
            let secret = (!raw.is_empty()).then(|| Secret::new(raw.clone()));
            match name.as_str() {
                "DAENA_OPS_KEY" => secrets.ops_key = secret,
                "DAENA_MEMORY_AES_KEY" => secrets.memory_aes_key = secret,
                _ => secrets.llm_api_key = secret,
            }
            continue;
        }
        let Some(path) = by_env.get(name) else {
            return Err(ConfigError::new(
                name.clone(),
                "-",
                "unknown environment variable; `daena config show` lists the keys, set `section.key` as DAENA_SECTION_KEY",
            ));
        };
        let value =
            parse_scalar_for(defaults, path, raw).map_err(|m| ConfigError::new(name.clone(), path.clone(), m))?;
        set_path(tree, path, value);
        check(tree, name)?;
    }
    Ok(secrets)
}

fn get_path<'a>(tree: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(tree, |v, k| v.get(k))
}

fn set_path(tree: &mut Value, path: &str, value: Value) {
    let mut node = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if !node.get(*part).is_some_and(Value::is_object)
            && let Value::Object(map) = node
        {
            map.insert((*part).to_owned(), Value::Object(Map::new()));
        }
        let Some(next) = node.get_mut(*part) else { return };
        node = next;
    }
    if let Value::Object(map) = node {
        map.insert(parts[parts.len() - 1].to_owned(), value);
    }
}

/// Parses a string from the environment or a flag into the JSON type the default has.
fn parse_scalar_for(defaults: &Value, path: &str, raw: &str) -> Result<Value, String> {
    let raw = raw.trim();
    match get_path(defaults, path) {
        Some(Value::Bool(_)) => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Value::Bool(true)),
            "0" | "false" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err(format!("expected a boolean (true/false, 1/0, yes/no, on/off), got {raw:?}")),
        },
        Some(Value::Number(_)) => serde_json::from_str::<serde_json::Number>(raw)
            .map(Value::Number)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Some(Value::Array(_)) => {
            if raw.starts_with('[') {
                serde_json::from_str(raw).map_err(|e| format!("expected a JSON array: {e}"))
            } else {
                Ok(Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| Value::String(s.to_owned()))
                        .collect(),
                ))
            }
        }
        Some(Value::Object(_)) => serde_json::from_str(raw).map_err(|e| format!("expected a JSON object: {e}")),
        Some(Value::Null) if raw.is_empty() => Ok(Value::Null),
        Some(Value::Null) => Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write config file");
        }
        dir
    }

    fn load_with(
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> (tempfile::TempDir, Result<LoadedConfig, ConfigError>) {
        let dir = dir_with(files);
        let opts = LoadOptions {
            config_dir: Some(dir.path().to_owned()),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            overrides: Vec::new(),
        };
        let result = load(&opts);
        (dir, result)
    }

    #[test]
    fn defaults_load_without_files() {
        let (_d, loaded) = load_with(&[], &[]);
        let loaded = loaded.expect("defaults are valid");
        assert_eq!(loaded.config.server.listen.port(), 8000);
        assert_eq!(loaded.config.memory.simhash_max_distance(), 7);
        assert!(loaded.files.is_empty());
    }

    #[test]
    fn unknown_key_in_file_names_file_and_key() {
        let (_d, r) = load_with(&[("memory_config.yaml", "simhash_treshold: 0.9\n")], &[]);
        let e = r.expect_err("unknown key must fail");
        assert!(e.source_name.ends_with("memory_config.yaml"), "{e}");
        assert!(e.message.contains("simhash_treshold"), "{e}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let (_d, r) = load_with(&[("memory_config.yaml", "slo:\n  l1_p95_ms: fast\n")], &[]);
        let e = r.expect_err("bad value must fail");
        assert_eq!(e.key, "memory.slo.l1_p95_ms", "{e}");
        let (_d, r) = load_with(&[("memory_config.yaml", "zstd_level: 40\n")], &[]);
        assert_eq!(r.expect_err("range").key, "memory.zstd_level");
        let (_d, r) = load_with(&[("daena.toml", "[server]\nlisten = \"nope\"\n")], &[]);
        let e = r.expect_err("bad listen");
        assert!(e.source_name.ends_with("daena.toml") && e.key == "server.listen", "{e}");
    }

    #[test]
    fn env_overrides_files_and_unknown_env_fails() {
        let files = [("daena.toml", "[server]\nrequest_timeout_secs = 5\n")];
        let (_d, r) = load_with(&files, &[("DAENA_SERVER_REQUEST_TIMEOUT_SECS", "7"), ("DAENA_NBMF_ENABLED", "false")]);
        let c = r.expect("valid").config;
        assert_eq!(c.server.request_timeout_secs, 7);
        assert!(!c.server.writes_enabled);
        let (_d, r) = load_with(&[], &[("DAENA_NOT_A_THING", "1")]);
        assert_eq!(r.expect_err("unknown env").source_name, "DAENA_NOT_A_THING");
        let (_d, r) = load_with(&[], &[("DAENA_NBMF_ENABLED", "maybe")]);
        assert_eq!(r.expect_err("bad bool").source_name, "DAENA_NBMF_ENABLED");
    }

    #[test]
    fn l2_cache_size_is_set_by_file_or_env_and_bounded_below() {
        let (_d, r) = load_with(&[], &[]);
        assert_eq!(r.expect("defaults").config.memory.l2_cache_bytes, 256 * 1024 * 1024);
        let (_d, r) = load_with(&[("memory_config.yaml", "l2_cache_bytes: 1073741824\n")], &[]);
        assert_eq!(r.expect("file").config.memory.l2_cache_bytes, 1 << 30);
        let (_d, r) = load_with(&[], &[("DAENA_MEMORY_L2_CACHE_BYTES", "2147483648")]);
        assert_eq!(r.expect("env").config.memory.l2_cache_bytes, 2 << 30);
        let (_d, r) = load_with(&[("memory_config.yaml", "l2_cache_bytes: 4096\n")], &[]);
        let e = r.expect_err("under 1 MiB");
        assert_eq!(e.key, "memory.l2_cache_bytes", "{e}");
        assert!(e.message.contains("at least 1048576"), "{e}");
    }

    #[test]
    fn secrets_are_kept_apart_and_redacted() {
        let (_d, r) = load_with(&[], &[("DAENA_OPS_KEY", "ops-key"), ("DAENA_MEMORY_AES_KEY", "c2VjcmV0")]);
        let loaded = r.expect("valid");
        assert_eq!(loaded.secrets.ops_key.as_ref().map(Secret::expose), Some("ops-key"));
        let shown = format!("{:?} {}", loaded.secrets, serde_json::to_string(&loaded.secrets).expect("json"));
        assert!(!shown.contains("ops-key") && !shown.contains("c2VjcmV0"), "{shown}");
    }

    #[test]
    fn file_class_tables_replace_defaults() {
        let policy = "default:\n  allow: false\nclasses:\n  pii:\n    allow_roles: [admin]\n    require_tenant: true\n";
        let memory = "classes:\n  chat:\n    retention_days: 30\n";
        let (_d, r) = load_with(&[("policy_config.yaml", policy), ("memory_config.yaml", memory)], &[]);
        let c = r.expect("valid").config;
        assert!(!c.policy.default.allow);
        assert_eq!(c.policy.classes.len(), 1);
        assert_eq!(c.memory.classes.len(), 1, "the file's class table replaces the defaults");
        let (_d, r) = load_with(&[("policy_config.yaml", "classes:\n  pii:\n    require_tenant: false\n")], &[]);
        assert_eq!(r.expect_err("require_tenant false").key, "policy.classes.pii.require_tenant");
    }

    #[test]
    fn flags_override_env() {
        let dir = dir_with(&[]);
        let opts = LoadOptions {
            config_dir: Some(dir.path().to_owned()),
            env: [("DAENA_LISTEN".to_owned(), "127.0.0.1:9000".to_owned())].into(),
            overrides: vec![("server.listen".into(), "127.0.0.1:9100".into(), "--listen".into())],
        };
        assert_eq!(load(&opts).expect("valid").config.server.listen.port(), 9100);
        let opts = LoadOptions { overrides: vec![("server.listen".into(), "x".into(), "--listen".into())], ..opts };
        assert_eq!(load(&opts).expect_err("bad flag").source_name, "--listen");
    }

    #[test]
    fn missing_explicit_dir_fails() {
        let opts =
            LoadOptions { config_dir: Some(PathBuf::from("/nonexistent/daena-config")), ..LoadOptions::default() };
        assert!(load(&opts).is_err());
    }
}
