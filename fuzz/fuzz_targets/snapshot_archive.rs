//! Snapshot archives: whatever tar stream a `.tar.zst` holds, unpacking answers with the
//! files or an error naming the archive, never a panic, and writes nothing outside its
//! staging directory (no `..`, absolute paths, links or devices get through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(compressed) = zstd::encode_all(data, 1) else { return };
    let archive = dir.path().join("in.tar.zst");
    if std::fs::write(&archive, compressed).is_err() {
        return;
    }
    let staging = dir.path().join("staging");
    if let Err(e) = daena_store::backup::unpack(&archive, &staging) {
        assert!(!e.to_string().is_empty());
    }
    for entry in std::fs::read_dir(dir.path()).expect("the scratch directory") {
        let name = entry.expect("an entry").file_name();
        assert!(name == "in.tar.zst" || name == "staging", "unpacking wrote {name:?} outside its staging directory");
    }
});
