//! `daena governance artifacts`: the evidence an auditor asks for, in one directory: the
//! ledger manifest, the policy summary, the newest drill report, the key status, a
//! governance summary and a readable compliance report. Every field holds a value or says in
//! words why there is none.

use super::{Target, target};
use crate::cli::Global;
use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn write(dir: &Path, name: &str, v: &Value) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

pub async fn artifacts(global: &Global, out_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let generated = {
        use daena_app::clock::{Clock, SystemClock, rfc3339, whole_seconds};
        rfc3339(whole_seconds(SystemClock.now()))
    };
    let dir =
        out_dir.unwrap_or_else(|| PathBuf::from(format!("governance_artifacts_{}", generated.replace([':', '-'], ""))));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (policy, _) = super::policy::inspect(global, None)?;
    let policy = serde_json::to_value(&policy)?;
    // The ledger is verified in full now, not taken on trust.
    let (manifest, drill, keys, memory, verification) = match target(global, "governance artifacts")? {
        Target::Remote(r) => (
            r.get::<Value>("/api/v1/ledger/manifest").await?,
            r.get::<Value>("/api/v1/admin/drills/last").await?,
            r.get::<Value>("/api/v1/admin/key-status").await?,
            r.get::<Value>("/monitoring/memory").await?,
            r.post::<_, Value>("/api/v1/ledger/verification", &json!({})).await?,
        ),
        Target::Offline(d) => {
            let verification = daena_app::checks::verify_ledger(&d).await.map_err(|e| anyhow!(e.message));
            let got = (|| -> anyhow::Result<(Value, Value, Value, Value, Value)> {
                Ok((
                    serde_json::to_value(daena_app::ledger::manifest(&d).map_err(|e| anyhow!(e.message))?)?,
                    serde_json::to_value(daena_app::snapshot::last_drill(&d).map_err(|e| anyhow!(e.message))?)?,
                    serde_json::to_value(daena_app::keyrotate::status(&d).map_err(|e| anyhow!(e.message))?)?,
                    serde_json::to_value(daena_app::memory::monitor::report(
                        &d,
                        &daena_app::auth::Principal::local_operator(daena_core::ids::TenantId::default_tenant()),
                    ))?,
                    serde_json::to_value(verification?)?,
                ))
            })();
            d.shutdown().await.map_err(|e| anyhow!(e.message))?;
            got?
        }
    };
    let drill = if drill.is_null() {
        json!({"status": "no drill has run", "advice": "run `daena drill` (weekly)"})
    } else {
        drill
    };
    let key_status = {
        let mut k = keys.clone();
        if k["oldest_data_key_created_at"].is_null() {
            k["oldest_data_key_created_at"] = json!("no data keys yet");
        }
        k["rotation"] = match k["last_rotation_at"].as_str() {
            Some(at) => json!(format!("{} rotation(s), the newest at {at}", k["rotations"])),
            None => json!("the master key has never been rotated (`daena key rotate`)"),
        };
        if k["last_rotation_at"].is_null() {
            k["last_rotation_at"] = json!("never");
        }
        k
    };
    let ledger_ok = verification["ok"] == true;
    let summary = json!({
        "generated_at": generated,
        "ledger": {
            "entries": manifest["entries"],
            "merkle_root": text(&manifest["merkle_root"]),
            "newest_checkpoint_size": manifest["checkpoint"]["size"].as_u64().map_or(json!("no checkpoint yet"), |s| json!(s)),
            "verified": verification,
        },
        "policy": {
            "classes_with_rules": policy["classes"].as_array().map_or(0, Vec::len),
            "cedar_rules": policy["rule_count"],
            "default": if policy["default_allow"] == true { "allow" } else { "deny" },
        },
        "memory": {
            "records": memory["totals"]["records"],
            "divergence_rate": memory["divergence"]["rate"],
            "writes_enabled": memory["writes_enabled"],
        },
        "drill": if drill["passed"].is_boolean() {
            json!({"passed": drill["passed"], "at": drill["at"], "rto_seconds": drill["rto_seconds"], "rpo_seconds": drill["rpo_seconds"]})
        } else {
            json!("no drill has run")
        },
        "keys": {"master_key_id": key_status["master_key_id"], "tenants_with_data_keys": key_status["tenants_with_data_keys"], "rotation": key_status["rotation"]},
    });
    let mut files = vec![
        write(&dir, "ledger_manifest.json", &manifest)?,
        write(&dir, "policy_summary.json", &policy)?,
        write(&dir, "drill_report.json", &drill)?,
        write(&dir, "key_rotation_status.json", &key_status)?,
        write(&dir, "governance_summary.json", &summary)?,
    ];
    let mut md = String::new();
    md.push_str(&format!("# Daena compliance report\n\nGenerated {generated}.\n\n"));
    md.push_str("## Ledger\n\n");
    md.push_str(&format!(
        "- Entries: {}\n- Merkle root: `{}`\n- Newest signed checkpoint covers: {}\n- Full verification at {}: {}\n- Verify independently: `daena ledger verify --checkpoint <a checkpoint kept elsewhere>`\n\n",
        text(&manifest["entries"]),
        text(&manifest["merkle_root"]),
        text(&summary["ledger"]["newest_checkpoint_size"]),
        text(&verification["at"]),
        if ledger_ok {
            format!("every entry, the chain and {} signed checkpoint(s) verified", text(&verification["checkpoints_verified"]))
        } else {
            format!("FAILED: {}", text(&verification["failure"]))
        }
    ));
    md.push_str("## Access policy\n\n| class | allow roles | deny roles |\n|---|---|---|\n");
    for c in policy["classes"].as_array().cloned().unwrap_or_default() {
        let list = |v: &Value| {
            v.as_array()
                .filter(|a| !a.is_empty())
                .map_or("-".to_owned(), |a| a.iter().map(text).collect::<Vec<_>>().join(", "))
        };
        md.push_str(&format!("| {} | {} | {} |\n", text(&c["class"]), list(&c["allow_roles"]), list(&c["deny_roles"])));
    }
    if policy["classes"].as_array().is_none_or(Vec::is_empty) {
        md.push_str("| (no class has rules of its own) | - | - |\n");
    }
    md.push_str(&format!(
        "\nClasses without rules: {}.\n\n",
        if policy["default_allow"] == true { "allowed to every role" } else { "denied" }
    ));
    md.push_str("## Memory\n\n");
    md.push_str(&format!(
        "- Records: {}\n- Divergence rate: {}\n- Writes enabled: {}\n\n",
        text(&memory["totals"]["records"]),
        text(&memory["divergence"]["rate"]),
        text(&memory["writes_enabled"])
    ));
    md.push_str("## Disaster recovery\n\n");
    if drill["passed"].is_boolean() {
        md.push_str(&format!(
            "- Newest drill: {} at {} (RTO {} s, RPO {} s), ledger entry {}\n\n",
            if drill["passed"] == true { "passed" } else { "FAILED" },
            text(&drill["at"]),
            text(&drill["rto_seconds"]),
            text(&drill["rpo_seconds"]),
            text(&drill["seq"])
        ));
    } else {
        md.push_str("- No drill has run. Run `daena drill` weekly.\n\n");
    }
    md.push_str("## Encryption keys\n\n");
    md.push_str(&format!(
        "- Master key id: `{}` (from {})\n- Tenants with data keys: {}\n- Oldest data key: {} ({} days)\n- Rotation: {}\n",
        text(&key_status["master_key_id"]),
        text(&key_status["master_key_source"]),
        text(&key_status["tenants_with_data_keys"]),
        text(&key_status["oldest_data_key_created_at"]),
        text(&key_status["oldest_data_key_age_days"]),
        text(&key_status["rotation"])
    ));
    let report = dir.join("compliance_report.md");
    std::fs::write(&report, md).with_context(|| format!("writing {}", report.display()))?;
    files.push(report);
    if global.json {
        crate::output::json(&json!({"out_dir": dir, "files": files, "ledger_ok": ledger_ok}))?;
    } else if !ledger_ok {
        eprintln!("the ledger does not verify: {}", text(&verification["failure"]));
    } else {
        println!("wrote {} artifacts to {}:", files.len(), dir.display());
        for f in &files {
            println!("  {}", f.display());
        }
    }
    Ok(if ledger_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
