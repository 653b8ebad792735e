//! `daena config check|show`.

use super::load_config;
use crate::cli::{ConfigCommand, Global};
use std::process::ExitCode;

pub fn run(global: &Global, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    let loaded = match load_config(global, Vec::new()) {
        Ok(loaded) => loaded,
        Err(e) => {
            if global.json {
                crate::output::json(&serde_json::json!({"ok": false, "error": format!("{e:#}")}))?;
            } else {
                eprintln!("config check failed: {e:#}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    let files: Vec<String> = loaded.files.iter().map(|p| p.display().to_string()).collect();
    match cmd {
        ConfigCommand::Check => {
            if global.json {
                crate::output::json(&serde_json::json!({
                    "ok": true,
                    "config_dir": loaded.config_dir.display().to_string(),
                    "files": files,
                }))?;
            } else {
                println!("configuration is valid");
                println!("config dir: {}", loaded.config_dir.display());
                if files.is_empty() {
                    println!("files read: none (built-in defaults)");
                } else {
                    println!("files read: {}", files.join(", "));
                }
            }
        }
        ConfigCommand::Show => {
            // Connection strings may carry passwords: show them masked.
            let mut config = loaded.config.clone();
            for url in [&mut config.storage.postgres_url, &mut config.storage.redis_url].into_iter().flatten() {
                *url = daena_store::pg::redact_url(url);
            }
            let shown = serde_json::json!({
                "config_dir": loaded.config_dir.display().to_string(),
                "files": files,
                "secrets": {
                    "DAENA_OPS_KEY": loaded.secrets.ops_key.is_some().then_some("<set, redacted>"),
                    "DAENA_MEMORY_AES_KEY": loaded.secrets.memory_aes_key.is_some().then_some("<set, redacted>"),
                    "DAENA_LLM_API_KEY": loaded.secrets.llm_api_key.is_some().then_some("<set, redacted>"),
                },
                "config": config,
            });
            if global.json {
                crate::output::json(&shown)?;
            } else {
                print!("{}", render_text(&shown));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An indented, YAML-like rendering for humans (JSON with `--json`).
fn render_text(v: &serde_json::Value) -> String {
    fn walk(v: &serde_json::Value, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        serde_json::Value::Object(m) if !m.is_empty() => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            walk(v, indent + 1, out);
                        }
                        _ => out.push_str(&format!("{pad}{k}: {}\n", inline(v))),
                    }
                }
            }
            other => out.push_str(&format!("{pad}{}\n", inline(other))),
        }
    }
    fn inline(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Null => "~".into(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    let mut out = String::new();
    walk(v, 0, &mut out);
    out
}
