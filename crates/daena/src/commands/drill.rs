//! `daena drill`: a disaster-recovery rehearsal. Snapshot (through the running server, or
//! offline), restore it into a scratch directory, open it, compare the ledger position and
//! the record count with the snapshot's manifest, read a sample of records, and report the
//! recovery time (RTO: restore + open + checks) and recovery point (RPO: how much the
//! snapshot is behind when the drill ends). The report goes to `drill_report.json` and its
//! outcome into the ledger (`ops.drill`).

use super::runbook::{Check, Status, check};
use super::{Target, load_config, target};
use crate::cli::{DrillArgs, Global};
use anyhow::{Context, anyhow};
use daena_app::auth::Principal;
use daena_app::snapshot::{self, DrillRecord, Manifest};
use daena_app::{Daena, OpenOptions};
use daena_core::ids::TenantId;
use serde::Serialize;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Serialize)]
struct DrillReport {
    passed: bool,
    snapshot: Option<String>,
    started_at: String,
    finished_at: String,
    snapshot_seconds: f64,
    rto_seconds: f64,
    /// The age of the newest restorable point (the drill's snapshot) when the drill ended.
    rpo_seconds: f64,
    /// What a disaster just before the drill would have lost: the age of the newest snapshot
    /// there was then (none: everything).
    rpo_before_drill_seconds: Option<f64>,
    rpo_entries: u64,
    ledger_position: u64,
    records: u64,
    sampled_reads: usize,
    scratch_dir: String,
    checks: Vec<Check>,
}

fn now_rfc3339() -> String {
    use daena_app::clock::{Clock, SystemClock, rfc3339, whole_seconds};
    rfc3339(whole_seconds(SystemClock.now()))
}

/// Restores `archive` into `scratch` and checks it against `m`; returns the checks, the
/// records found and the reads sampled.
async fn rehearse(
    global: &Global,
    archive: &std::path::Path,
    m: &Manifest,
    scratch: &std::path::Path,
    samples: usize,
    public_key: &str,
) -> (Vec<Check>, u64, usize) {
    let mut checks = Vec::new();
    // Everything the restore writes stays in the scratch directory, the cold tier included
    // (with `storage.l3_path` it would otherwise land on the live cold volume), and the
    // scratch service is a single node even when the deployment's replicas share PostgreSQL:
    // it must not join them.
    let overrides = vec![
        ("data_dir".to_owned(), scratch.display().to_string(), "--scratch".to_owned()),
        ("storage.l3_path".to_owned(), scratch.join("l3").display().to_string(), "--scratch".to_owned()),
        ("storage.backend".to_owned(), "embedded".to_owned(), "--scratch".to_owned()),
    ];
    let loaded = match load_config(global, overrides.clone()) {
        Ok(l) => l,
        Err(e) => return (vec![check("restore", Status::Fail, format!("{e:#}"))], 0, 0),
    };
    // The snapshot was signed by this deployment's key a moment ago; the scratch directory
    // has no key of its own, so this deployment's public key is pinned.
    let trust = daena_app::backup_trust::Trust { trust_unsigned: false, public_key: Some(public_key.to_owned()) };
    match snapshot::restore(&loaded, archive, &trust) {
        Ok(r) => checks.push(check(
            "restore",
            Status::Pass,
            format!("every file matches its SHA-256; ledger verified, {} entries", r.ledger_verified_entries),
        )),
        Err(e) => {
            checks.push(check("restore", Status::Fail, e.message));
            return (checks, 0, 0);
        }
    }
    let d = match load_config(global, overrides)
        .and_then(|l| Daena::open(l, OpenOptions::offline("drill")).map_err(|e| anyhow!(e.message)))
    {
        Ok(d) => d,
        Err(e) => {
            checks.push(check("open", Status::Fail, format!("the restored directory does not open: {e:#}")));
            return (checks, 0, 0);
        }
    };
    let head = d.ledger().reader.head().size;
    checks.push(check(
        "ledger position",
        if head == m.ledger_size { Status::Pass } else { Status::Fail },
        format!("{head} entries, snapshot says {}", m.ledger_size),
    ));
    let keys = match snapshot::record_keys(&d).await {
        Ok(k) => k,
        Err(e) => {
            checks.push(check("record count", Status::Fail, e.message));
            let _ = d.shutdown().await;
            return (checks, 0, 0);
        }
    };
    let records = keys.len() as u64;
    checks.push(check(
        "record count",
        if records == m.records { Status::Pass } else { Status::Fail },
        format!("{records} records, snapshot says {}", m.records),
    ));
    let step = (keys.len() / samples.max(1)).max(1);
    let (mut read, mut failed) = (0usize, Vec::new());
    for k in keys.iter().step_by(step).take(samples) {
        match daena_app::memory::get_stored(&d, k) {
            Ok(_) => read += 1,
            Err(e) => failed.push(e.message),
        }
    }
    checks.push(if failed.is_empty() {
        check("sampled reads", Status::Pass, format!("{read} records read and decrypted"))
    } else {
        check(
            "sampled reads",
            Status::Fail,
            format!("{} of {} failed: {}", failed.len(), read + failed.len(), failed.join("; ")),
        )
    });
    let _ = d.shutdown().await;
    (checks, records, read)
}

pub async fn run(global: &Global, args: DrillArgs) -> anyhow::Result<ExitCode> {
    let started_at = now_rfc3339();
    let started = Instant::now();
    let mut checks = Vec::new();
    let snapshots_dir = load_config(global, Vec::new())?.config.data_dir.join("snapshots");
    let age = |created_at: &str| {
        use daena_app::clock::{Clock, SystemClock};
        daena_app::clock::parse_rfc3339(created_at).map(|t| (SystemClock.now().days_since(t) * 86_400.0).max(0.0))
    };
    let rpo_before_drill_seconds = snapshot::list(&snapshots_dir)
        .ok()
        .and_then(|l| l.last().map(|(_, m)| m.created_at.clone()))
        .and_then(|at| age(&at));
    let source = target(global, "drill");
    let snap: anyhow::Result<Manifest> = match &source {
        Ok(Target::Remote(r)) => r.post("/api/v1/admin/snapshots", &serde_json::json!({})).await,
        Ok(Target::Offline(d)) => snapshot::create(d).await.map_err(|e| anyhow!(e.message)),
        Err(e) => Err(anyhow!("the data directory cannot be opened: {e:#}")),
    };
    let snapshot_seconds = started.elapsed().as_secs_f64();
    let data_dir = load_config(global, Vec::new())?.config.data_dir;
    let scratch = match &args.scratch {
        Some(dir) => dir.clone(),
        // Two drills in the same second (of two deployments on one machine) get two directories.
        None => std::env::temp_dir().join(format!(
            "daena-drill-{}-{}",
            started_at.replace([':', '-'], ""),
            std::process::id()
        )),
    };
    let (mut records, mut sampled, mut position, mut name) = (0, 0, 0, None);
    let rehearsal = Instant::now();
    match &snap {
        Err(e) => checks.push(check("snapshot", Status::Fail, format!("{e:#}"))),
        Ok(m) => {
            checks.push(check("snapshot", Status::Pass, format!("{} in {snapshot_seconds:.2}s", m.name)));
            name = Some(m.name.clone());
            position = m.ledger_size;
            let archive = data_dir.join("snapshots").join(format!("{}.tar.zst", m.name));
            if scratch.exists() && std::fs::read_dir(&scratch).map(|mut d| d.next().is_some()).unwrap_or(true) {
                checks.push(check("scratch", Status::Fail, format!("{} exists and is not empty", scratch.display())));
            } else {
                // The scratch copy needs the master key the state is sealed under: it is kept in
                // a private (0700) directory and removed after the rehearsal, whatever happens.
                private_dir(&scratch)?;
                let key = data_dir.join("keys/master.key");
                if key.exists() {
                    private_dir(&scratch.join("keys"))?;
                    std::fs::copy(&key, scratch.join("keys/master.key")).context("copying the master key")?;
                }
                let public_key = std::fs::read_to_string(data_dir.join("ledger/signing_key.pub")).unwrap_or_default();
                let (c, r, s) = rehearse(global, &archive, m, &scratch, args.samples, public_key.trim()).await;
                checks.extend(c);
                (records, sampled) = (r, s);
                if let Err(e) = std::fs::remove_dir_all(scratch.join("keys")) {
                    eprintln!("warning: could not remove the key copies in {}: {e}", scratch.join("keys").display());
                }
            }
        }
    }
    let rto_seconds = rehearsal.elapsed().as_secs_f64();
    // RPO: what a restore of this snapshot would lose by now.
    let head_now = match &source {
        Ok(Target::Remote(r)) => {
            r.get::<serde_json::Value>("/api/v1/ledger/head").await.ok().and_then(|h| h["size"].as_u64())
        }
        Ok(Target::Offline(d)) => Some(d.ledger().reader.head().size),
        Err(_) => None,
    }
    .unwrap_or(position);
    let rpo_entries = head_now.saturating_sub(position);
    // The newest restorable point is the drill's own snapshot: its age now.
    let rpo_seconds =
        snap.as_ref().ok().and_then(|m| age(&m.created_at)).unwrap_or_else(|| started.elapsed().as_secs_f64());
    let passed = checks.iter().all(|c| c.status != Status::Fail);
    if !args.keep_scratch && args.scratch.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let report = DrillReport {
        passed,
        snapshot: name.clone(),
        started_at,
        finished_at: now_rfc3339(),
        snapshot_seconds: round(snapshot_seconds),
        rto_seconds: round(rto_seconds),
        rpo_seconds: round(rpo_seconds),
        rpo_before_drill_seconds: rpo_before_drill_seconds.map(round),
        rpo_entries,
        ledger_position: position,
        records,
        sampled_reads: sampled,
        scratch_dir: scratch.display().to_string(),
        checks,
    };
    let text = serde_json::to_string_pretty(&report)? + "\n";
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    let record = DrillRecord {
        snapshot: name.unwrap_or_else(|| "none".into()),
        passed,
        rto_seconds: report.rto_seconds,
        rpo_seconds: report.rpo_seconds,
        rpo_entries,
        failed_checks: report.checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name.clone()).collect(),
    };
    let ledgered = match &source {
        Ok(Target::Remote(r)) => r.post::<_, snapshot::Ledgered>("/api/v1/admin/drills", &record).await,
        Ok(Target::Offline(d)) => {
            let who = Principal::local_operator(TenantId::default_tenant());
            snapshot::record_drill(d, &who, &record).await.map_err(|e| anyhow!(e.message))
        }
        Err(_) => Err(anyhow!("the data directory could not be opened")),
    };
    if let Ok(Target::Offline(d)) = &source {
        let _ = d.shutdown().await;
    }
    if global.json {
        crate::output::json(&report)?;
    } else {
        super::runbook::print_checks(&report.checks);
        println!(
            "drill {}: RTO {:.2}s, RPO {:.2}s ({} entries behind); report in {}",
            if passed { "PASSED" } else { "FAILED" },
            report.rto_seconds,
            report.rpo_seconds,
            rpo_entries,
            args.out.display()
        );
    }
    match ledgered {
        Ok(l) if !global.json => println!("ledgered as entry {}", l.seq),
        Ok(_) => {}
        Err(e) => eprintln!("warning: the drill's outcome could not be ledgered: {e:#}"),
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Creates `dir` readable by its owner only.
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    Ok(())
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
