//! Daena's use cases. [`Daena`] is the context every use case runs against: configuration,
//! clock, data directory, stores, keys and metrics. Handlers in `api` and commands in the
//! binary call functions here; nothing here knows about HTTP.

pub mod agents;
pub mod auth;
pub mod clock;
pub mod config;
pub mod error;
pub mod health;
pub mod telemetry;

use crate::agents::AgentRegistry;
use crate::auth::KeyRing;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, LoadedConfig, Secrets};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::health::Check;
use crate::telemetry::Metrics;
use daena_store::datadir::{DataDir, LockInfo};
use daena_store::kv::Kv;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a process opens the data directory.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// `serve`, or the name of the offline command holding the directory.
    pub holder: String,
    /// The address `serve` listens on, recorded in the lock file for the CLI.
    pub listen: Option<String>,
    /// The clock; the system clock unless a test brings its own.
    pub clock: Option<Arc<dyn Clock>>,
}

impl OpenOptions {
    pub fn serve(listen: String) -> Self {
        OpenOptions { holder: "serve".into(), listen: Some(listen), clock: None }
    }
    pub fn offline(command: &str) -> Self {
        OpenOptions { holder: command.into(), listen: None, clock: None }
    }
}

pub struct Daena {
    pub config: Arc<Config>,
    pub config_files: Vec<PathBuf>,
    pub clock: Arc<dyn Clock>,
    pub data: DataDir,
    pub kv: Kv,
    pub keys: KeyRing,
    pub agents: AgentRegistry,
    pub metrics: Metrics,
    #[allow(dead_code)]
    secrets: Secrets,
    writes_enabled: AtomicBool,
    started: Instant,
}

impl std::fmt::Debug for Daena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daena").field("data_dir", &self.data.root()).finish()
    }
}

impl Daena {
    /// Opens the data directory (taking its lock), the stores and the registries.
    pub fn open(loaded: LoadedConfig, opts: OpenOptions) -> AppResult<Arc<Daena>> {
        let LoadedConfig { config, secrets, files, .. } = loaded;
        let clock = opts.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let info = LockInfo { pid: std::process::id(), listen: opts.listen, holder: opts.holder };
        let data = DataDir::open(&config.data_dir, &info).map_err(|e| match e {
            daena_store::StoreError::Locked { .. } => AppError::new(ErrorCode::Unavailable, e.to_string()),
            other => AppError::internal(other.to_string()),
        })?;
        let kv = Kv::open(&data.state_db(), 64 * 1024 * 1024)?;
        let keys = KeyRing::load(kv.clone(), clock.clone())?;
        if let Some(ops) = &secrets.ops_key {
            keys.provision_env_ops(ops)?;
        }
        let agents = AgentRegistry::load(kv.clone(), clock.clone(), config.agents.heartbeat_window_secs)?;
        let metrics = Metrics::new();
        metrics.expected_agents.set(daena_core::agents::EXPECTED_AGENTS as i64);
        Ok(Arc::new(Daena {
            writes_enabled: AtomicBool::new(config.server.writes_enabled),
            config: Arc::new(config),
            config_files: files,
            clock,
            data,
            kv,
            keys,
            agents,
            metrics,
            secrets,
            started: Instant::now(),
        }))
    }

    pub fn writes_enabled(&self) -> bool {
        self.writes_enabled.load(Ordering::SeqCst)
    }

    /// The runtime read-only switch (the runbook's "stop writes").
    pub fn set_writes_enabled(&self, enabled: bool) {
        self.writes_enabled.store(enabled, Ordering::SeqCst);
    }

    /// Health checks contributed by later capabilities (ledger, upstream, ...).
    fn extra_health_checks(&self) -> Vec<(String, Check)> {
        Vec::new()
    }

    /// Refreshes state gauges and renders `/metrics`.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        m.active_agents.clear();
        for (tenant, active) in self.agents.active_by_tenant() {
            m.active_agents
                .get_or_create(&telemetry::TenantLabels { tenant: tenant.to_string() })
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
        m.writes_enabled.set(i64::from(self.writes_enabled()));
        m.uptime_seconds.set(self.started.elapsed().as_secs_f64());
        m.encode()
    }

    /// Periodic housekeeping: flushes heartbeats. Called by the scheduler and at shutdown.
    pub fn flush(&self) -> AppResult<()> {
        self.agents.flush()
    }

    /// Orderly shutdown: persists everything kept in memory.
    pub fn shutdown(&self) -> AppResult<()> {
        self.flush()
    }
}
