//! Configuration files: whatever bytes are in `daena.toml`, `memory_config.yaml` or
//! `policy_config.yaml`, loading answers with the configuration or an error naming the file,
//! never a panic.
#![no_main]

use daena_base::config::{LoadOptions, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let name = ["daena.toml", "memory_config.yaml", "policy_config.yaml"][usize::from(which) % 3];
    let Ok(dir) = tempfile::tempdir() else { return };
    if std::fs::write(dir.path().join(name), rest).is_err() {
        return;
    }
    let opts = LoadOptions { config_dir: Some(dir.path().to_owned()), ..LoadOptions::default() };
    if let Err(e) = load(&opts) {
        assert!(!e.to_string().is_empty());
    }
});
