//! `daena policy inspect`: the effective ABAC rules per class, their Cedar form, and the
//! decision for a given caller.

use super::load_config;
use crate::cli::{Global, PolicyCommand};
use anyhow::bail;
use daena_app::policy::{Action, PolicyEngine, Subject};
use serde::Serialize;
use std::process::ExitCode;

#[derive(Debug, Serialize)]
pub struct ClassView {
    class: String,
    allow_roles: Vec<String>,
    deny_roles: Vec<String>,
    allow_tenants: Vec<String>,
    deny_tenants: Vec<String>,
    /// The compiled Cedar rules for this class, by id.
    rules: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    config_file: Option<String>,
    default_allow: bool,
    cedar_file: Option<String>,
    pub classes: Vec<ClassView>,
    pub rule_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cedar: Option<String>,
}

/// Compiles the configured policy and describes it; `class` narrows it to one class.
pub fn inspect(global: &Global, class: Option<&str>) -> anyhow::Result<(Inspection, PolicyEngine)> {
    let loaded = load_config(global, Vec::new())?;
    let cfg = &loaded.config.policy;
    let engine =
        PolicyEngine::compile(cfg, &loaded.config_dir).map_err(|e| anyhow::anyhow!("policy: {}", e.message))?;
    let mut classes = Vec::new();
    for (name, rule) in &cfg.classes {
        if class.is_some_and(|c| c != name.as_str()) {
            continue;
        }
        let prefix = format!("{}.", name.as_str());
        classes.push(ClassView {
            class: name.to_string(),
            allow_roles: rule.allow_roles.clone(),
            deny_roles: rule.deny_roles.clone(),
            allow_tenants: rule.allow_tenants.iter().map(ToString::to_string).collect(),
            deny_tenants: rule.deny_tenants.iter().map(ToString::to_string).collect(),
            rules: engine.rules().keys().filter(|id| id.starts_with(&prefix)).cloned().collect(),
        });
    }
    if let Some(c) = class
        && classes.is_empty()
    {
        let known: Vec<&str> = cfg.classes.keys().map(|c| c.as_str()).collect();
        classes.push(ClassView {
            class: c.to_owned(),
            allow_roles: Vec::new(),
            deny_roles: Vec::new(),
            allow_tenants: Vec::new(),
            deny_tenants: Vec::new(),
            rules: Vec::new(),
        });
        eprintln!(
            "note: class {c:?} has no rules of its own (classes with rules: {}); the default applies: {}",
            known.join(", "),
            if cfg.default.allow { "allow" } else { "deny" }
        );
    }
    let file = loaded.files.iter().find(|f| f.ends_with("policy_config.yaml")).map(|f| f.display().to_string());
    let inspection = Inspection {
        config_file: file,
        default_allow: cfg.default.allow,
        cedar_file: cfg.cedar_file.as_ref().map(|p| p.display().to_string()),
        rule_count: engine.rules().len(),
        classes,
        explain: None,
        cedar: None,
    };
    Ok((inspection, engine))
}

pub fn run(global: &Global, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let PolicyCommand::Inspect { class, explain, role, tenant, action, cedar } = cmd;
    let (mut ins, engine) = inspect(global, class.as_deref())?;
    if explain {
        let Some(class) = &class else {
            bail!("--explain needs --class (and --role, --tenant, --action as the caller)");
        };
        let Some(act) = Action::parse(&action) else {
            bail!("--action must be read, write, delete or list, got {action:?}");
        };
        let subject = Subject { roles: role.clone(), tenant: tenant.clone() };
        let d = engine.decide_for(&subject, class, act);
        ins.explain = Some(serde_json::json!({
            "class": class, "roles": role, "tenant": tenant, "action": act.as_str(),
            "allowed": d.allowed, "rules": d.rules, "reason": d.reason,
        }));
    }
    if cedar {
        ins.cedar = Some(engine.cedar_source().to_owned());
    }
    if global.json {
        crate::output::json(&ins)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("policy: {}", ins.config_file.as_deref().unwrap_or("built-in defaults (no policy_config.yaml found)"));
    println!(
        "classes without rules: {}; {} compiled Cedar rules{}",
        if ins.default_allow { "allowed to every role" } else { "denied" },
        ins.rule_count,
        ins.cedar_file.as_deref().map(|f| format!(", plus {f}")).unwrap_or_default()
    );
    let list = |v: &[String]| if v.is_empty() { "-".to_owned() } else { v.join(",") };
    let rows: Vec<Vec<String>> = ins
        .classes
        .iter()
        .map(|c| {
            vec![
                c.class.clone(),
                list(&c.allow_roles),
                list(&c.deny_roles),
                list(&c.allow_tenants),
                list(&c.deny_tenants),
            ]
        })
        .collect();
    crate::output::table(&["class", "allow roles", "deny roles", "allow tenants", "deny tenants"], &rows);
    if let Some(e) = &ins.explain {
        println!(
            "\n{} {} on {} by roles [{}] of tenant {}: {}",
            if e["allowed"] == true { "ALLOW" } else { "DENY" },
            e["action"].as_str().unwrap_or(""),
            e["class"].as_str().unwrap_or(""),
            role.join(","),
            tenant,
            e["reason"].as_str().unwrap_or("")
        );
        if let Some(rules) = e["rules"].as_array().filter(|r| !r.is_empty()) {
            let ids: Vec<&str> = rules.iter().filter_map(|r| r.as_str()).collect();
            println!("decided by: {}", ids.join(", "));
        }
    }
    if let Some(src) = &ins.cedar {
        println!("\n{src}");
    }
    Ok(ExitCode::SUCCESS)
}
