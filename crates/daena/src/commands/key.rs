//! `daena key rotate|validate`: the master key.

use super::{Target, target};
use crate::cli::{Global, KeyCommand};
use anyhow::anyhow;
use daena_app::auth::Principal;
use daena_app::config::Secret;
use daena_app::keyrotate::{self, RotationReport, ValidationReport};
use daena_app::memory::aging::ResealReport;
use daena_core::ids::TenantId;
use std::process::ExitCode;

pub async fn run(global: &Global, cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Rotate { dry_run } => {
            let new_key = std::env::var("DAENA_MEMORY_AES_KEY_NEW").ok().map(Secret::new);
            let r: RotationReport = match target(global, "key rotate")? {
                Target::Remote(r) => {
                    if new_key.is_some() {
                        eprintln!(
                            "note: DAENA_MEMORY_AES_KEY_NEW is not sent to a running server; it rotates a key that \
                             lives in keys/master.key"
                        );
                    }
                    let op = r.post("/api/v1/admin/key-rotation", &serde_json::json!({"dry_run": dry_run})).await?;
                    crate::client::finished(r.wait_operation(op).await?)?
                }
                Target::Offline(d) => {
                    let who = Principal::local_operator(TenantId::default_tenant());
                    let mut bar = crate::output::Progress::new("re-encrypting records", None);
                    let result =
                        keyrotate::rotate(&d, &who, new_key.as_ref(), dry_run, |done, _total| bar.set(done)).await;
                    bar.finish();
                    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
                    result.map_err(|e| anyhow!(e.message))?
                }
            };
            if global.json {
                crate::output::json(&r)?;
            } else {
                println!(
                    "{}master key {} -> {}: {} data keys of {} tenants re-wrapped, {} new data key versions, {} records \
                     re-encrypted ({} skipped as changed meanwhile, {} errors){}",
                    if r.dry_run { "dry run: " } else { "" },
                    r.old_key_id,
                    r.new_key_id,
                    r.data_keys,
                    r.tenants,
                    r.new_data_key_versions,
                    r.records_reencrypted,
                    r.reencryption.skipped,
                    r.reencryption.errors,
                    r.ledger_seq.map(|s| format!("; ledger entry {s}")).unwrap_or_default()
                );
                if !r.dry_run {
                    println!("{}", retirement(&r.reencryption));
                }
                println!("next: {}", r.next_step);
            }
            Ok(if r.reencryption.errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        KeyCommand::Shred { tenant, confirm } => {
            let t = TenantId::new(&tenant).map_err(|e| anyhow!("--tenant: {e}"))?;
            let r: keyrotate::ShredReport = match target(global, "key shred")? {
                Target::Remote(r) => {
                    let path = format!("/api/v1/admin/tenants/{}/shred", crate::client::segment(&tenant));
                    r.post(&path, &serde_json::json!({"confirm": confirm})).await?
                }
                Target::Offline(d) => {
                    let who = Principal::local_operator(t.clone());
                    let result = keyrotate::shred(&d, &who, &t, &confirm).await;
                    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
                    result.map_err(|e| anyhow!(e.message))?
                }
            };
            if global.json {
                crate::output::json(&r)?;
            } else {
                println!(
                    "tenant {} shredded: {} data keys destroyed, {} cache entries evicted, {} records unreadable{}",
                    r.tenant,
                    r.data_keys_destroyed,
                    r.cache_entries_evicted,
                    r.records_unreadable,
                    r.ledger_seq.map(|s| format!("; ledger entry {s}")).unwrap_or_default()
                );
                println!("snapshots taken before hold the wrapped keys: delete them (`daena snapshot list`)");
            }
            Ok(ExitCode::SUCCESS)
        }
        KeyCommand::Reseal => {
            let r: ResealReport = match target(global, "key reseal")? {
                Target::Remote(r) => {
                    let op = r.post("/api/v1/admin/key-reseal", &serde_json::json!({})).await?;
                    crate::client::finished(r.wait_operation(op).await?)?
                }
                Target::Offline(d) => {
                    let who = Principal::local_operator(TenantId::default_tenant());
                    let mut bar = crate::output::Progress::new("re-encrypting records", None);
                    let result = keyrotate::reseal(&d, &who, |done, _total| bar.set(done)).await;
                    bar.finish();
                    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
                    result.map_err(|e| anyhow!(e.message))?
                }
            };
            if global.json {
                crate::output::json(&r)?;
            } else {
                println!(
                    "{} records under an older data key version, {} sealed again ({} skipped as changed meanwhile, {} \
                     errors); {} dictionaries and {} cache entries sealed again",
                    r.stale, r.resealed, r.skipped, r.errors, r.dictionaries_resealed, r.cache_entries_resealed
                );
                println!("{}", retirement(&r));
            }
            Ok(if r.errors > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        KeyCommand::Validate => {
            let v: ValidationReport = match target(global, "key validate")? {
                Target::Remote(r) => r.post("/api/v1/admin/key-validation", &serde_json::json!({})).await?,
                Target::Offline(d) => {
                    let result = keyrotate::validate(&d).await;
                    d.shutdown().await.map_err(|e| anyhow!(e.message))?;
                    result.map_err(|e| anyhow!(e.message))?
                }
            };
            if global.json {
                crate::output::json(&v)?;
            } else {
                println!("master key:     {}", v.master_key_id);
                println!(
                    "rotations:      {} ({})",
                    v.rotations,
                    v.chain_problem.as_deref().map_or("chain intact".to_owned(), |p| format!("BROKEN: {p}"))
                );
                println!(
                    "data keys:      {}",
                    if v.stale_tenants.is_empty() {
                        "all under the current master key".to_owned()
                    } else {
                        format!("under a retired key for {}", v.stale_tenants.join(", "))
                    }
                );
                println!("records:        {} read, {} unreadable", v.records - v.unreadable_count, v.unreadable_count);
                println!(
                    "old data keys:  {} records still sealed under an older version; {}",
                    v.records_under_old_data_keys,
                    if v.older_data_keys == 0 {
                        "every older version retired".to_owned()
                    } else {
                        format!(
                            "{} older versions not retired ({}): run `daena key reseal`",
                            v.older_data_keys,
                            v.tenants_with_older_data_keys.join(", ")
                        )
                    }
                );
                for u in &v.unreadable {
                    println!("  {u}");
                }
                println!("{}", if v.ok { "PASS" } else { "FAIL" });
            }
            Ok(if v.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// What a re-encryption did with the older data key versions.
fn retirement(r: &ResealReport) -> String {
    match &r.retirement_blocked {
        Some(why) => format!("older data key versions kept: {why}"),
        None => format!("{} older data key versions retired", r.data_keys_retired),
    }
}
