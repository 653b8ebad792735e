//! Command dispatch and the helpers every command shares: loading the configuration and
//! choosing between a running server (admin API) and the data directory (offline).

mod archive;
mod config;
mod drill;
mod governance;
mod key;
mod keys;
mod ledger;
mod policy;
mod runbook;
mod serve;
pub mod simulate;
mod snapshot;

use crate::cli::{Cli, Command, Global, GovernanceCommand, WritesAction};
use crate::client::Remote;
use anyhow::{Context, bail};
use daena_app::config::{LoadOptions, LoadedConfig};
use daena_app::{Daena, OpenOptions};
use std::process::ExitCode;
use std::sync::Arc;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(&cli.global, args).await,
            Command::Config(cmd) => config::run(&cli.global, cmd),
            Command::Keys(cmd) => keys::run(&cli.global, cmd).await,
            Command::Ledger(cmd) => ledger::run(&cli.global, cmd).await,
            Command::Cas(crate::cli::CasCommand::Diagnostics) => cas_diagnostics(&cli.global).await,
            Command::Aging(crate::cli::AgingCommand::Run { dry_run }) => aging(&cli.global, dry_run).await,
            Command::Writes { action } => writes(&cli.global, action).await,
            Command::Simulate(args) => simulate::run(&cli.global, args).await,
            Command::Policy(cmd) => policy::run(&cli.global, cmd),
            Command::Snapshot(cmd) => snapshot::run(&cli.global, cmd).await,
            Command::Drill(args) => drill::run(&cli.global, args).await,
            Command::Archive(cmd) => archive::run(&cli.global, cmd).await,
            Command::Key(cmd) => key::run(&cli.global, cmd).await,
            Command::Rollback { to, trust } => snapshot::rollback(&cli.global, &to, trust.into()).await,
            Command::Replay { ledger, from_snapshot, to, trust } => {
                snapshot::replay(&cli.global, &ledger, from_snapshot.as_deref(), to.as_deref(), trust.into()).await
            }
            Command::Governance(GovernanceCommand::Artifacts { out_dir }) => {
                governance::artifacts(&cli.global, out_dir).await
            }
            Command::Runbook { cadence } => runbook::run(&cli.global, cadence).await,
        }
    })
}

/// Loads the configuration with the global flags and `overrides` applied.
pub fn load_config(global: &Global, mut overrides: Vec<(String, String, String)>) -> anyhow::Result<LoadedConfig> {
    let mut opts = LoadOptions::from_process_env();
    opts.config_dir = global.config_dir.clone();
    if let Some(dir) = &global.data_dir {
        overrides.insert(0, ("data_dir".into(), dir.display().to_string(), "--data-dir".into()));
    }
    opts.overrides = overrides;
    daena_app::config::load(&opts).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

/// Where a state-changing command runs.
pub enum Target {
    /// Through the admin API of the server holding the data directory.
    Remote(Remote),
    /// Directly on the (now locked by us) data directory.
    Offline(Arc<Daena>),
}

/// Chooses the running server when it holds the data directory, the directory otherwise.
pub fn target(global: &Global, command: &str) -> anyhow::Result<Target> {
    let loaded = load_config(global, Vec::new())?;
    let root = loaded.config.data_dir.clone();
    if daena_store::datadir::is_locked(&root) {
        return remote(global, &root).map(Target::Remote);
    }
    match Daena::open(loaded, OpenOptions::offline(command)) {
        Ok(d) => Ok(Target::Offline(d)),
        // The server may have started between the check and the open.
        Err(e) if daena_store::datadir::is_locked(&root) => {
            tracing::debug!("data directory became locked: {e}");
            remote(global, &root).map(Target::Remote)
        }
        Err(e) => Err(anyhow::anyhow!("opening {}: {}", root.display(), e.message)),
    }
}

/// A client for the server that holds `root` (or `--url`).
pub fn remote(global: &Global, root: &std::path::Path) -> anyhow::Result<Remote> {
    let url = match &global.url {
        Some(url) => url.clone(),
        None => daena_store::datadir::read_lock_info(root)
            .and_then(|i| i.listen)
            .map(|l| format!("http://{}", l.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")))
            .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned()),
    };
    let Some(key) = &global.api_key else {
        bail!(
            "the data directory {} is held by a running server ({url}); set DAENA_API_KEY (or --api-key) \
             to an ops key to run this command through its admin API",
            root.display()
        );
    };
    Remote::new(&url, key)
}

/// `daena writes status|on|off` against the running server.
async fn writes(global: &Global, action: WritesAction) -> anyhow::Result<ExitCode> {
    let loaded = load_config(global, Vec::new())?;
    let remote = remote(global, &loaded.config.data_dir)?;
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Switch {
        enabled: bool,
    }
    let state: Switch = match action {
        WritesAction::Status => remote.get("/api/v1/admin/writes").await?,
        WritesAction::On => remote.put("/api/v1/admin/writes", &Switch { enabled: true }).await?,
        WritesAction::Off => remote.put("/api/v1/admin/writes", &Switch { enabled: false }).await?,
    };
    if global.json {
        crate::output::json(&state)?;
    } else if state.enabled {
        println!("writes are enabled");
    } else {
        println!("writes are disabled: the service is read-only");
    }
    Ok(ExitCode::SUCCESS)
}

/// `daena aging run [--dry-run]`.
async fn aging(global: &Global, dry_run: bool) -> anyhow::Result<ExitCode> {
    let report: daena_app::memory::aging::AgingReport = match target(global, "aging run")? {
        Target::Remote(r) => r.post("/api/v1/admin/aging/run", &serde_json::json!({"dry_run": dry_run})).await?,
        Target::Offline(d) => {
            let result = daena_app::memory::aging::run(&d, "cli:aging", dry_run).await;
            d.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))?;
            result.map_err(|e| anyhow::anyhow!(e.message))?
        }
    };
    if global.json {
        crate::output::json(&report)?;
    } else {
        println!(
            "{}scanned {} records: {} tightened, {} archived to L3, {} expired, {} skipped (changed meanwhile), {} errors",
            if report.dry_run { "dry run: " } else { "" },
            report.scanned,
            report.tightened,
            report.archived,
            report.expired,
            report.skipped,
            report.errors
        );
        for a in &report.actions {
            println!("  {:<20} {}/{}/{} (idle {} days)", a.action, a.tenant, a.class, a.key, a.idle_days);
        }
    }
    Ok(if report.errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `daena cas diagnostics`.
async fn cas_diagnostics(global: &Global) -> anyhow::Result<ExitCode> {
    let d: daena_app::cas::report::Diagnostics = match target(global, "cas diagnostics")? {
        Target::Remote(r) => r.get("/api/v1/cas/diagnostics").await?,
        Target::Offline(d) => {
            let report = daena_app::cas::report::diagnostics(&d);
            d.shutdown().await.map_err(|e| anyhow::anyhow!(e.message))?;
            report
        }
    };
    if global.json {
        crate::output::json(&d)?;
        return Ok(ExitCode::SUCCESS);
    }
    let c = &d.cas;
    println!("entries:            {} ({} bytes)", c.entries, c.bytes);
    println!(
        "requests:           {} ({} bypassed, {} upstream errors)",
        c.rates.requests, c.rates.bypass, c.rates.upstream_errors
    );
    println!(
        "hit rate:           {:.1}% (exact {:.1}%, near {:.1}%), target {:.0}%: {}",
        c.rates.hit_rate * 100.0,
        c.rates.exact_rate * 100.0,
        c.rates.near_rate * 100.0,
        c.target_hit_rate * 100.0,
        c.status
    );
    println!(
        "threshold:          {} (max Hamming distance {})",
        c.threshold.simhash_threshold, c.threshold.max_hamming_distance
    );
    println!("guard refusals:     {}", c.guard_refusals);
    println!("false positives:    {} reported", c.false_positive_reports);
    let hist: Vec<String> = d.near_distance_histogram.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!("near hit distances: {}", if hist.is_empty() { "-".to_owned() } else { hist.join(" ") });
    let exp: Vec<String> = d.expiring.iter().map(|(k, v)| format!("{v} within {k}")).collect();
    println!("expiring:           {}", exp.join(", "));
    if !d.top_repeated_prompts.is_empty() {
        println!("top repeated prompts (hashed):");
        for p in &d.top_repeated_prompts {
            println!("  {}  {:>6} hits  {} / {}", p.prompt_hash, p.hits, p.tenant, p.model);
        }
    }
    for a in &d.advice {
        println!("advice: {a}");
    }
    Ok(ExitCode::SUCCESS)
}
