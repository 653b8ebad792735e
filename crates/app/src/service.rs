//! Opening the service: the data directory, the stores, the capabilities, the ledger and its
//! commit thread, wired into one [`Daena`] handle.

use crate::agents::AgentRegistry;
use crate::auth::KeyRing;
use crate::clock::{Clock, SystemClock};
use crate::commit::{CommitPolicy, Committer, StateMachine};
use crate::config::{Config, LoadedConfig};
use crate::error::{AppError, AppResult, ErrorCode};
use crate::health::{Check, CheckStatus};
use crate::keyring::Keyring;
use crate::ledger::LedgerService;
use crate::memory::MemoryShared;
use crate::memory::state::MemoryState;
use crate::policy::PolicyEngine;
use crate::state::StateOp;
use crate::telemetry::Metrics;
use crate::{
    analytics, cas, checks, dashboard, failed_auth, governance, keyring, ledger, metrics_view, monitoring, operations,
    ratelimit, replicas, state,
};
use daena_store::cold::ColdStore;
use daena_store::datadir::{DataDir, LockInfo};
use daena_store::kv::Kv;
use daena_store::ledger::LedgerRead;
use std::path::PathBuf;
use std::sync::Arc;

/// How a process opens the data directory.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// `serve`, or the name of the offline command holding the directory.
    pub holder: String,
    /// The address `serve` listens on, recorded in the lock file for the CLI.
    pub listen: Option<String>,
    /// The clock; the system clock unless a test brings its own.
    pub clock: Option<Arc<dyn Clock>>,
    /// Operation records kept across reopenings of the stores by `serve`.
    pub operations: Option<Arc<operations::Operations>>,
}

impl OpenOptions {
    pub fn serve(listen: String) -> Self {
        OpenOptions { holder: "serve".into(), listen: Some(listen), clock: None, operations: None }
    }
    pub fn offline(command: &str) -> Self {
        OpenOptions { holder: command.into(), listen: None, clock: None, operations: None }
    }
}

/// The running service: a small handle over its capabilities. Each capability owns its
/// state; use cases reach them through the accessors below.
pub struct Daena {
    config: Arc<Config>,
    config_files: Vec<PathBuf>,
    clock: Arc<dyn Clock>,
    data: DataDir,
    /// Where this process keeps its L3 segments ([`cold_dir`]).
    cold_dir: PathBuf,
    kv: Kv,
    /// The ledger as read (head, ranges, proofs) and the commit thread every write goes through.
    ledger: LedgerService,
    commit: Committer<StateOp>,
    governance: governance::Governance,
    memory: Arc<MemoryShared>,
    cas: Arc<cas::CasShared>,
    monitoring: monitoring::Monitoring,
    operations: Arc<operations::Operations>,
    /// Set when replicas share the deployment through PostgreSQL.
    replicas: Option<Arc<replicas::Replicas>>,
}

impl std::fmt::Debug for Daena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daena").field("data_dir", &self.data.root()).finish()
    }
}

impl Daena {
    /// Opens the data directory (taking its lock), the stores and the registries.
    pub fn open(loaded: LoadedConfig, opts: OpenOptions) -> AppResult<Arc<Daena>> {
        Daena::open_in(loaded, opts, None)
    }

    /// [`Daena::open`] in a data directory this process already holds (from [`Daena::close`]),
    /// or, with `None`, taking its lock.
    pub fn open_in(loaded: LoadedConfig, opts: OpenOptions, held: Option<DataDir>) -> AppResult<Arc<Daena>> {
        let LoadedConfig { config, secrets, files, config_dir } = loaded;
        let config = Arc::new(config);
        let clock = opts.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let info = LockInfo { pid: std::process::id(), listen: opts.listen, holder: opts.holder };
        let data = match held {
            Some(data) => {
                data.update_lock_info(&info)?;
                data
            }
            None => DataDir::open(&config.data_dir, &info).map_err(|e| match e {
                daena_store::StoreError::Locked { .. } => AppError::new(ErrorCode::Unavailable, e.to_string()),
                other => AppError::internal(other.to_string()),
            })?,
        };
        let replicas =
            replicas::Replicas::open(&config, &data, secrets.memory_aes_key.is_some(), clock.now())?.map(Arc::new);
        // An empty data directory starts from the state PostgreSQL keeps, else from a seed,
        // else by applying the whole chain.
        if let Some(r) = &replicas
            && replicas::start_from_postgres(&config, &data, r)?.is_none()
        {
            replicas::seed::start_from(&config, &data, r)?;
        }
        // The master key is checked against the stored data keys before anything is written.
        keyring::finish_rotation(&data)?;
        let master = keyring::load_master(&data, secrets.memory_aes_key.as_ref())?;
        keyring::check_master(&data.state_db(), &master)?;
        // `validate` checked that the size fits a usize.
        let cache = usize::try_from(config.memory.l2_cache_bytes).unwrap_or(usize::MAX);
        let kv = Kv::open(&data.state_db(), cache)?;
        // Replicas share the tenants' data keys through PostgreSQL.
        let key_docs = match &replicas {
            Some(r) => kv.with_docs(r.docs.clone()),
            None => kv.clone(),
        };
        let data_keys = Arc::new(Keyring::load(key_docs, master, clock.clone())?);
        let api_keys = Arc::new(KeyRing::load(kv.clone(), clock.clone())?);
        if let Some(ops) = &secrets.ops_key {
            api_keys.provision_env_ops(ops)?;
        }
        let limiter = Arc::new(
            ratelimit::RateLimiter::load(&config.rate_limit, kv.clone(), clock.clone())?
                .shared_by(replicas.as_ref().and_then(|r| r.limits.clone())),
        );
        let governance = governance::Governance::new(governance::GovernanceParts {
            api_keys,
            data_keys: data_keys.clone(),
            policy: PolicyEngine::compile(&config.policy, &config_dir)?,
            limiter,
            failed_auth: failed_auth::FailedAuth::new(&config.rate_limit, clock.clone())
                .shared_by(replicas.as_ref().and_then(|r| r.limits.clone())),
            agents: AgentRegistry::load(kv.clone(), clock.clone(), config.agents.heartbeat_window_secs)?,
            // Off at start when the configuration says so, or when it was switched off at runtime.
            writes_enabled: config.server.writes_enabled && governance::persisted_writes(&kv)?.unwrap_or(true),
        });
        let bounds = analytics::Bounds {
            agents: config.agents.max_tracked_per_tenant,
            pairs: config.agents.max_pairs_per_tenant,
        };
        let peers = replicas.as_ref().map(|r| r.peers.clone());
        let analytics = analytics::Analytics::load(kv.clone(), clock.clone(), bounds, peers)?;
        let cold_dir = cold_dir(&config, &data, replicas.as_deref());
        let cold = Box::new(ColdStore::open(&cold_dir)?);
        let memory = MemoryShared::open(kv.clone(), cold, data_keys.clone(), clock.clone(), config.clone())?;
        let cas =
            cas::CasShared::open(kv.clone(), data_keys, clock.clone(), config.clone(), secrets.llm_api_key.clone())?;
        if let Some(r) = &replicas {
            cas::report::resume(&cas, &r.peers)?;
        }
        let state =
            state::DaenaState::new(MemoryState::new(memory.clone(), cas.clone())?, governance.state(memory.clone()));
        let carried = governance::carried_ops(&kv)?.into_iter().map(state::Op::from).collect();
        let (ledger, commit) =
            open_ledger(&config, &data, replicas.as_deref(), clock.clone(), Box::new(state), carried)?;
        let metrics = Metrics::new();
        metrics.expected_agents.set(daena_core::agents::EXPECTED_AGENTS as i64);
        let monitoring = monitoring::Monitoring::new(
            analytics,
            metrics,
            dashboard::Series::load(kv.clone(), replicas.as_ref().map(|r| r.docs.clone()))?,
        );
        Ok(Arc::new(Daena {
            config,
            config_files: files,
            clock,
            data,
            cold_dir,
            kv,
            ledger,
            commit,
            governance,
            memory,
            cas,
            monitoring,
            operations: opts.operations.unwrap_or_default(),
            replicas,
        }))
    }

    /// Where this process keeps its L3 segments.
    pub fn cold_dir(&self) -> &std::path::Path {
        &self.cold_dir
    }

    /// The configuration the service was opened with.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The configuration files it was read from, in the order they were applied.
    pub fn config_files(&self) -> &[PathBuf] {
        &self.config_files
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The data directory, held under its lock.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The state store (records, cache entries, registry, settings).
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// The ledger as read: head, ranges, proofs, checkpoints.
    pub fn ledger(&self) -> &LedgerService {
        &self.ledger
    }

    /// The commit thread: every change is an operation it seals into the ledger and applies.
    pub fn commit(&self) -> &Committer<StateOp> {
        &self.commit
    }

    /// API keys, data keys, policy, rate limits, failed-auth limit, agents, the write switch.
    pub fn governance(&self) -> &governance::Governance {
        &self.governance
    }

    /// The three-tier memory.
    pub fn memory(&self) -> &Arc<MemoryShared> {
        &self.memory
    }

    /// The LLM cache and the upstream it calls.
    pub fn cas(&self) -> &Arc<cas::CasShared> {
        &self.cas
    }

    /// Analytics, metrics, the dashboard's history and the background checks.
    pub fn monitoring(&self) -> &monitoring::Monitoring {
        &self.monitoring
    }

    /// Long-running operations (snapshots, drills, archives, rotations) and their progress.
    pub fn operations(&self) -> &Arc<operations::Operations> {
        &self.operations
    }

    /// The shared deployment this replica serves (`storage.backend = "postgres"`).
    pub fn replicas(&self) -> Option<&replicas::Replicas> {
        self.replicas.as_deref()
    }

    /// Whether this process runs the schedulers now: always alone, else when it holds the
    /// replicas' lease.
    pub fn leads(&self) -> bool {
        self.replicas.as_ref().is_none_or(|r| r.leads())
    }

    /// Time since the service opened.
    pub fn uptime(&self) -> std::time::Duration {
        self.monitoring.uptime()
    }

    /// Whether writes are on ([`governance::Governance::writes_enabled`]).
    pub fn writes_enabled(&self) -> bool {
        self.governance.writes_enabled()
    }

    /// Health checks contributed by later capabilities (ledger, upstream, ...).
    pub(crate) fn extra_health_checks(&self) -> Vec<(String, Check)> {
        let mut checks = Vec::new();
        let ledger = match self.ledger.head() {
            Ok(head) if self.commit.is_alive() => {
                let cp = head.checkpoint.as_ref().map_or(0, |c| c.size);
                Check::new(
                    CheckStatus::Pass,
                    true,
                    format!(
                        "{} entries; at open the last segment's {} entries were verified and the tree matched the \
                         newest signed checkpoint ({cp} entries); the full verification is ledger_verified",
                        head.size, head.verified_at_open
                    ),
                )
                .observed(serde_json::json!({"size": head.size, "head_hash": head.head_hash, "checkpoint_size": cp,
                    "verified_at_open": head.verified_at_open}))
            }
            Ok(_) => {
                Check::new(CheckStatus::Fail, true, "the commit thread has stopped: writes cannot be made durable")
            }
            Err(e) => Check::new(CheckStatus::Fail, true, e.message),
        };
        checks.push(("ledger".to_owned(), ledger));
        if let Some(r) = &self.replicas {
            checks.extend(replicas::health_checks(r, self.governance.limiter(), &self.config));
        }
        checks.push(("ledger_verified".to_owned(), checks::verification_check(self)));
        checks.push(("upstream".to_owned(), checks::upstream_check(self)));
        checks
    }

    /// Renders `/metrics` ([`metrics_view`]).
    pub fn render_metrics(&self) -> String {
        metrics_view::render(self)
    }

    /// Periodic housekeeping: flushes heartbeats and analytics. Called by the scheduler and at shutdown.
    pub fn flush(&self) -> AppResult<()> {
        self.governance.agents().flush()?;
        self.monitoring.flush()
    }

    /// Orderly shutdown: persists everything kept in memory, checkpoints the ledger and
    /// stops the commit thread.
    pub async fn shutdown(&self) -> AppResult<()> {
        // A replica's last figures go to the others (its scheduler does so every few seconds).
        if let Err(e) = replicas::exchange(self) {
            tracing::warn!(error = %e.message, "publishing this replica's figures to the others");
        }
        self.flush()?;
        self.monitoring.series().save(true)?;
        self.commit.shutdown().await
    }

    /// Closes every store after [`Daena::shutdown`] and hands back the data directory, still
    /// locked, for work on its files; `Err` gives the service back when something else still
    /// holds a reference to it.
    pub fn close(self: Arc<Self>) -> Result<DataDir, Arc<Self>> {
        let Daena { data, .. } = Arc::try_unwrap(self)?;
        Ok(data)
    }
}

/// Opens the ledger, replays what the state has not applied yet, and starts the commit thread.
fn open_ledger(
    config: &Config,
    data: &DataDir,
    replicas: Option<&replicas::Replicas>,
    clock: Arc<dyn Clock>,
    mut state: Box<dyn StateMachine<Op = StateOp>>,
    first: Vec<state::Op>,
) -> AppResult<(LedgerService, Committer<StateOp>)> {
    let (writer, reader, opened) = daena_store::ledger::open(&data.ledger_dir(), config.ledger.segment_bytes)
        .map_err(|e| AppError::internal(format!("opening the ledger: {e}")))?;
    if opened.repaired_bytes > 0 {
        tracing::warn!(bytes = opened.repaired_bytes, "cut a torn last line off the ledger (a crash mid-write)");
    }
    if opened.rebuilt_hashes > 0 {
        tracing::info!(entries = opened.rebuilt_hashes, "re-derived ledger hashes");
    }
    let key = ledger::signing_key(data)?;
    writer.publish_public_key(&key.verifying_key())?;
    let public_key = hex::encode(key.verifying_key().to_bytes());
    replay(&reader, state.as_mut())?;
    let writer: Box<dyn daena_store::ledger::LedgerAppend> = match replicas {
        Some(r) => {
            // Copy what the shared chain holds past the local copy, and apply it.
            let mut shared = daena_store::pg::PgLedger::open(&r.url, writer)
                .map_err(|e| AppError::unavailable(format!("opening the shared ledger: {e}")))?;
            let copied = daena_store::ledger::LedgerAppend::catch_up(&mut shared)
                .map_err(|e| AppError::unavailable(format!("reading the shared ledger: {e}")))?;
            if !copied.is_empty() {
                copied.iter().try_for_each(|e| state.replay(e))?;
                state.flush()?;
                tracing::info!(entries = copied.len(), "copied and applied the shared ledger's new entries");
            }
            Box::new(shared)
        }
        None => Box::new(writer),
    };
    let policy = CommitPolicy {
        checkpoint_every_entries: config.ledger.checkpoint_every_entries,
        checkpoint_every: std::time::Duration::from_secs(config.ledger.checkpoint_every_secs),
        flush_every: std::time::Duration::from_secs(1),
    };
    let repaired = opened.repaired_bytes;
    let commit = Committer::start(writer, state, key, clock, policy, first, replicas.map(|r| r.head.clone()));
    let service = LedgerService { reader: Arc::new(reader), public_key, opened };
    if repaired > 0 {
        let entry = daena_core::ledger::NewEntry::new("system", "system", "ledger.repair", "ledger")
            .attrs(serde_json::json!({"torn_bytes_removed": repaired}));
        commit.append_detached(vec![entry]);
    }
    Ok((service, commit))
}

/// Hands every entry after the state's applied point to the state machine.
fn replay(reader: &dyn LedgerRead, state: &mut dyn StateMachine<Op = StateOp>) -> AppResult<()> {
    let from = state.applied_seq() + 1;
    let size = reader.head().size;
    if from > size {
        return Ok(());
    }
    let mut result = Ok(());
    let mut count = 0u64;
    reader.scan(from, &mut |_, line| match daena_core::ledger::entry::parse_line(line) {
        Ok(entry) => match state.replay(&entry) {
            Ok(()) => {
                count += 1;
                std::ops::ControlFlow::Continue(())
            }
            Err(e) => {
                result = Err(e);
                std::ops::ControlFlow::Break(())
            }
        },
        Err(e) => {
            result = Err(AppError::internal(format!("replaying the ledger: {e}")));
            std::ops::ControlFlow::Break(())
        }
    })?;
    result?;
    state.flush()?;
    if count > 0 {
        tracing::info!(entries = count, from, "replayed the ledger tail into the state");
    }
    Ok(())
}

/// Where a process keeps its L3 segments: a replica its own directory under `storage.l3_path`;
/// otherwise `storage.l3_path` when set, else `<data>/l3`.
pub fn cold_dir(config: &Config, data: &DataDir, replicas: Option<&replicas::Replicas>) -> PathBuf {
    match (replicas, &config.storage.l3_path) {
        (Some(r), Some(path)) => path.join(format!("replica-{}", r.replica)),
        (None, Some(path)) => path.clone(),
        (_, None) => data.l3_dir(),
    }
}
