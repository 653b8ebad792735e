//! The configuration schema: every key, its default and its validation.
//!
//! Structs deny unknown fields and default missing ones, so a partial file is fine and a
//! misspelt key is an error. `Config::validate` (`validate.rs`) checks what types cannot
//! (ranges, cross-references).

use daena_core::ids::{ClassName, TenantId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where Daena keeps its state (`DAENA_DATA_DIR`).
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub agents: AgentsConfig,
    pub ledger: LedgerConfig,
    pub llm: LlmConfig,
    pub rate_limit: RateLimitConfig,
    /// `config/memory_config.yaml`.
    pub memory: MemoryConfig,
    /// `config/policy_config.yaml`.
    pub policy: PolicyConfig,
    pub storage: StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            server: ServerConfig::default(),
            agents: AgentsConfig::default(),
            ledger: LedgerConfig::default(),
            llm: LlmConfig::default(),
            rate_limit: RateLimitConfig::default(),
            memory: MemoryConfig::default(),
            policy: PolicyConfig::default(),
            storage: StorageConfig::default(),
        }
    }
}

/// Where the durable state lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageBackend {
    /// Everything in the data directory (redb and files): one process.
    #[default]
    Embedded,
    /// The ledger and the shared documents in PostgreSQL, so several replicas serve one
    /// deployment; each keeps a disposable copy of the state in its data directory.
    Postgres,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `embedded` or `postgres` (`DAENA_STORAGE_BACKEND`).
    pub backend: StorageBackend,
    /// `postgres://user@host:5432/db` (`DAENA_STORAGE_POSTGRES_URL`); needed by `postgres`.
    pub postgres_url: Option<String>,
    /// `redis://host:6379/` (`DAENA_STORAGE_REDIS_URL`): tenant rate limits shared by the
    /// replicas. Without it (or while it is down) each replica limits on its own.
    pub redis_url: Option<String>,
    /// Cold segments on a path the replicas share (`DAENA_STORAGE_L3_PATH`); default
    /// `<data_dir>/l3`.
    pub l3_path: Option<PathBuf>,
    /// Replicas with `l3_path`: how often the lease holder writes a seed (a snapshot under
    /// `<l3_path>/seeds/`) that a replica started on an empty data directory begins from, so
    /// it replays only what came after (`DAENA_STORAGE_SEED_EVERY_SECS`); default 3600, 0
    /// turns seeds off.
    pub seed_every_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`DAENA_LISTEN`).
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub request_body_limit_bytes: usize,
    /// A request taking longer than this gets 408.
    pub request_timeout_secs: u64,
    pub log_format: LogFormat,
    /// Memory writes on (`DAENA_NBMF_ENABLED`); off puts the service in read-only mode.
    pub writes_enabled: bool,
    /// Whether `GET /metrics` answers without an API key. Off by default: scrapers send an
    /// ops or auditor key as `Authorization: Bearer <key>`, or read `metrics_listen`.
    pub metrics_public: bool,
    /// A second address serving only `/metrics`, without a key (bind it to a private
    /// interface for Prometheus). Tenant names are left out of the metrics while it is set.
    pub metrics_listen: Option<SocketAddr>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_secs: u64,
    /// A connection that has not sent a request's headers whole within this time is closed.
    pub header_read_timeout_secs: u64,
    /// Load balancers and ingress proxies in front of Daena (addresses or CIDR ranges,
    /// `DAENA_SERVER_TRUSTED_PROXIES=10.0.0.0/8,192.168.1.7`). A request from one of them is
    /// attributed to the address its `X-Forwarded-For` names (the nearest one not itself
    /// trusted) for the per-address limit on failed authentication; from anyone else the
    /// header is ignored, so it cannot be used to dodge that limit.
    pub trusted_proxies: Vec<TrustedProxy>,
}

/// An address or CIDR range of a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy(pub ipnet::IpNet);

impl TrustedProxy {
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl std::str::FromStr for TrustedProxy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        s.parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map(TrustedProxy)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8 or 192.168.1.7)"))
    }
}

impl Serialize for TrustedProxy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TrustedProxy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            request_body_limit_bytes: 2 * 1024 * 1024,
            request_timeout_secs: 30,
            log_format: LogFormat::Text,
            writes_enabled: true,
            metrics_public: false,
            metrics_listen: None,
            shutdown_grace_secs: 10,
            header_read_timeout_secs: 10,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// An agent counts as active when its last heartbeat is younger than this.
    pub heartbeat_window_secs: u64,
    /// The tenant whose fleet `/health` counts against the expected 48.
    pub fleet_tenant: TenantId,
    /// Agent ids besides the 6x8 fleet that analytics and cost tracking keep per tenant;
    /// any more are counted together as `(other)`, so invented ids cannot grow memory.
    pub max_tracked_per_tenant: usize,
    /// Agent pairs the communication matrix keeps per tenant; more are `(other)->(other)`.
    pub max_pairs_per_tenant: usize,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            heartbeat_window_secs: 300,
            fleet_tenant: TenantId::default_tenant(),
            max_tracked_per_tenant: 256,
            max_pairs_per_tenant: 2048,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// A signed checkpoint is written after this many new entries ...
    pub checkpoint_every_entries: u64,
    /// ... or after this many seconds with new entries, whichever comes first.
    pub checkpoint_every_secs: u64,
    /// Segment files roll over at this size.
    pub segment_bytes: u64,
    /// A full verification of the ledger runs in the background this often (and a minute
    /// after start); 0 turns it off.
    pub verify_every_hours: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            checkpoint_every_entries: 10_000,
            checkpoint_every_secs: 60,
            segment_bytes: 64 * 1024 * 1024,
            verify_every_hours: 24,
        }
    }
}

/// Per-tenant rate limits (GCRA) on every authenticated route.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Requests per minute per tenant (`DAENA_TENANT_RATE_LIMIT_RPM`).
    pub rpm: u32,
    /// Requests a tenant may send at once (`DAENA_TENANT_BURST`); a new tenant starts full.
    pub burst: u32,
    /// A tenant's limiter state is dropped after this long without requests (its burst is
    /// full again by then), keeping memory bounded for millions of tenants.
    pub idle_secs: u64,
    /// Unknown or revoked keys a client address may present at once before it gets 429;
    /// 0 turns the guard off. Applies whether or not tenant limits are `enabled`.
    pub failed_auth_burst: u32,
    /// How fast that budget refills, in failed attempts per minute.
    pub failed_auth_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            rpm: 1000,
            burst: 100,
            idle_secs: 600,
            failed_auth_burst: 20,
            failed_auth_per_minute: 30,
        }
    }
}

/// The upstream model endpoint behind `/v1/chat/completions` and its prices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// Base URL of an OpenAI-compatible API, e.g. `https://api.openai.com/v1` or
    /// `http://localhost:11434/v1`; requests go to `<upstream_url>/chat/completions`. Unset:
    /// cache hits are served and misses get 503 `upstream_not_configured`.
    pub upstream_url: Option<String>,
    /// Give up on the upstream after this long.
    pub timeout_secs: u64,
    /// Largest upstream response accepted (and cached).
    pub max_response_bytes: usize,
    /// USD per million tokens, per model; a model not listed costs 0 (and is reported as unpriced).
    pub prices: BTreeMap<String, Price>,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            upstream_url: None,
            timeout_secs: 120,
            max_response_bytes: 8 * 1024 * 1024,
            prices: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

/// `config/memory_config.yaml`: tiers, classes, aging, trust, SLOs and the LLM cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// SimHash similarity t for near-duplicate cache hits; max Hamming distance floor((1 − t)·64).
    pub simhash_threshold: f64,
    /// L1 capacity in records.
    pub l1_cache_size: u64,
    /// L1 capacity in bytes of decoded records.
    pub l1_cache_bytes: u64,
    /// Page cache of the embedded state store (L2 records, LLM cache entries, keys), in bytes.
    /// Reads of pages outside it go to the file system: size it to the store's hot set.
    pub l2_cache_bytes: u64,
    /// zstd level for L2 (warm) records.
    pub zstd_level: i32,
    /// zstd level for L3 (cold) records and for records whose compression aging tightened.
    pub l3_zstd_level: i32,
    /// Largest accepted record payload (JSON bytes).
    pub max_payload_bytes: usize,
    /// Reads from L3 after which a record moves back to L2.
    pub promote_after_accesses: u32,
    /// Per-class settings; classes not listed use the defaults of [`ClassConfig`].
    pub classes: BTreeMap<ClassName, ClassConfig>,
    pub aging: AgingConfig,
    pub trust: TrustConfig,
    pub slo: SloConfig,
    pub cas: CasConfig,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        let class = |retention_days: u32, divergence_abort: Option<f64>| ClassConfig {
            retention_days: Some(retention_days),
            divergence_abort,
            ..ClassConfig::default()
        };
        let mut classes = BTreeMap::new();
        for (name, cfg) in [
            ("chat", class(180, None)),
            ("ops_log", class(90, None)),
            ("research_note", class(365, None)),
            ("legal", class(2555, Some(0.20))),
            ("finance", class(2555, Some(0.25))),
            ("pii", class(2555, Some(0.20))),
        ] {
            if let Ok(name) = ClassName::new(name) {
                classes.insert(name, cfg);
            }
        }
        MemoryConfig {
            simhash_threshold: 0.88,
            l1_cache_size: 10_000,
            l1_cache_bytes: 256 * 1024 * 1024,
            l2_cache_bytes: 256 * 1024 * 1024,
            zstd_level: 3,
            l3_zstd_level: 19,
            max_payload_bytes: 1024 * 1024,
            promote_after_accesses: 5,
            classes,
            aging: AgingConfig::default(),
            trust: TrustConfig::default(),
            slo: SloConfig::default(),
            cas: CasConfig::default(),
        }
    }
}

impl MemoryConfig {
    /// The settings of `class`, or the defaults for an unlisted class.
    pub fn class(&self, class: &ClassName) -> ClassConfig {
        self.classes.get(class).cloned().unwrap_or_default()
    }

    /// Max Hamming distance for near-duplicates: floor((1 − t) · 64).
    pub fn simhash_max_distance(&self) -> u32 {
        ((1.0 - self.simhash_threshold) * 64.0 + 1e-9).floor().clamp(0.0, 64.0) as u32
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassConfig {
    /// Records not accessed for this many days are deleted (ledgered as `memory.expire`).
    pub retention_days: Option<u32>,
    /// zstd level for this class in L2 (overrides `zstd_level`).
    pub zstd_level: Option<i32>,
    /// Overwrites diverging at least this much are refused unless marked as intended revisions.
    pub divergence_abort: Option<f64>,
    /// Switch near-duplicate cache matching off for requests tagged with this class.
    pub disable_near_duplicates: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgingConfig {
    /// How often the in-process scheduler runs the rules; 0 disables the schedule.
    pub interval_minutes: u64,
    pub rules: Vec<AgingRule>,
}

impl Default for AgingConfig {
    fn default() -> Self {
        let targets = |names: &[&str]| names.iter().filter_map(|n| ClassName::new(n).ok()).collect();
        AgingConfig {
            interval_minutes: 60,
            rules: vec![
                AgingRule {
                    after_days: 14.0,
                    action: AgingAction::TightenCompression,
                    targets: targets(&["chat", "ops_log", "research_note"]),
                },
                AgingRule { after_days: 30.0, action: AgingAction::Archive, targets: targets(&["ops_log"]) },
                AgingRule { after_days: 90.0, action: AgingAction::Archive, targets: targets(&["chat"]) },
                AgingRule { after_days: 180.0, action: AgingAction::Archive, targets: targets(&["research_note"]) },
            ],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgingRule {
    /// Days since the record was last accessed.
    pub after_days: f64,
    pub action: AgingAction,
    /// Classes the rule applies to; empty means every class.
    #[serde(default)]
    pub targets: Vec<ClassName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgingAction {
    /// Re-compress the L2 record at `l3_zstd_level`.
    TightenCompression,
    /// Move the record to L3.
    Archive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Classes whose writes land in quarantine (L2Q) until trusted.
    pub require_quarantine: Vec<ClassName>,
    /// Trust score at which a quarantined record is promoted to L2.
    pub promote_threshold: f64,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            require_quarantine: ["legal", "finance", "pii"].iter().filter_map(|n| ClassName::new(n).ok()).collect(),
            promote_threshold: 0.66,
        }
    }
}

/// Service-level objectives, checked by `/monitoring/memory` and `daena runbook`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SloConfig {
    pub l1_p95_ms: f64,
    pub l2_p95_ms: f64,
    pub l3_p95_ms: f64,
    pub max_divergence_rate: f64,
    pub min_cas_hit_rate: f64,
    pub max_error_rate: f64,
}

impl Default for SloConfig {
    fn default() -> Self {
        SloConfig {
            l1_p95_ms: 25.0,
            l2_p95_ms: 120.0,
            l3_p95_ms: 500.0,
            max_divergence_rate: 0.005,
            min_cas_hit_rate: 0.60,
            max_error_rate: 0.001,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CasConfig {
    /// Cache entries live this long; a hit does not extend it.
    pub ttl_days: f64,
    /// Most entries kept per tenant before the oldest are evicted.
    pub max_entries_per_tenant: u64,
    /// Near-duplicate matching on by default.
    pub near_duplicates: bool,
    /// Per-tenant overrides.
    pub tenants: BTreeMap<TenantId, CasTenantConfig>,
}

impl Default for CasConfig {
    fn default() -> Self {
        CasConfig { ttl_days: 7.0, max_entries_per_tenant: 1_000_000, near_duplicates: true, tenants: BTreeMap::new() }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CasTenantConfig {
    pub ttl_days: Option<f64>,
    pub near_duplicates: Option<bool>,
}

/// `config/policy_config.yaml`: ABAC rules per data class.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub default: DefaultRule,
    pub classes: BTreeMap<ClassName, ClassRule>,
    /// Extra Cedar policies, evaluated together with the compiled simple rules.
    pub cedar_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultRule {
    /// Whether a class without rules is open to every role.
    pub allow: bool,
}

impl Default for DefaultRule {
    fn default() -> Self {
        DefaultRule { allow: true }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassRule {
    pub allow_roles: Vec<String>,
    pub deny_roles: Vec<String>,
    pub allow_tenants: Vec<TenantId>,
    pub deny_tenants: Vec<TenantId>,
    /// Kept for compatibility with the runbook's files: the tenant is always part of a record's
    /// address, so this may only be `true`.
    pub require_tenant: Option<bool>,
}
