//! Policy files: whatever `policy_config.yaml` (and the Cedar file it may name, `extra.cedar`,
//! the bytes after the first NUL) say, compiling answers with an engine or an error with a
//! message, never a panic; an engine decides every (subject, class, action) the same way
//! twice (the second from its cache).
#![no_main]

use daena_base::config::{LoadOptions, load};
use daena_governance::policy::{Action, PolicyEngine, Subject};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (yaml, cedar) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join("policy_config.yaml"), yaml).is_err()
        || std::fs::write(dir.path().join("extra.cedar"), cedar).is_err()
    {
        return;
    }
    let opts = LoadOptions { config_dir: Some(dir.path().to_owned()), ..LoadOptions::default() };
    let Ok(loaded) = load(&opts) else { return };
    let policy = &loaded.config.policy;
    let engine = match PolicyEngine::compile(policy, dir.path()) {
        Ok(engine) => engine,
        Err(e) => {
            assert!(!e.message.is_empty());
            return;
        }
    };
    let mut classes: Vec<String> = policy.classes.keys().map(ToString::to_string).collect();
    classes.push("chat".to_owned());
    let mut roles: Vec<String> = policy.classes.values().flat_map(|r| r.allow_roles.iter().cloned()).collect();
    roles.push("admin".to_owned());
    let tenants = ["default".to_owned(), "acme".to_owned()];
    for role in roles.iter().take(4) {
        for tenant in &tenants {
            let subject = Subject { roles: vec![role.clone()], tenant: tenant.clone() };
            for class in classes.iter().take(4) {
                for action in [Action::Read, Action::Write, Action::Delete, Action::List] {
                    let first = engine.decide_for(&subject, class, action);
                    let again = engine.decide_for(&subject, class, action);
                    assert_eq!(first.allowed, again.allowed, "{subject:?} {class} {action:?}");
                }
            }
        }
    }
});
