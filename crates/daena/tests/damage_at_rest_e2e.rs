//! Damage at rest found at start: a flipped byte in the state database (L2) and in a snapshot
//! archive. Neither is trusted: the server refuses to start on the damaged database and says
//! how to rebuild it (the newest snapshot and the ledger after it), which then brings every
//! record back, those written after the snapshot too; the damaged
//! snapshot is refused by restore and by replay, and the data directory is untouched.

mod common;

use common::faults::{assert_all_back, put};
use common::{Server, daena, run, stderr, stdout};
use std::path::Path;

/// Flips one byte of `file` inside the first place `needle` occurs (so it lands in data, not
/// in free space).
fn flip_inside(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).expect("read");
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("the needle is in the file");
    bytes[at + needle.len() / 2] ^= 0x20;
    std::fs::write(file, &bytes).expect("write");
}

async fn write_records(dir: &Path, n: usize) -> Vec<String> {
    let server = Server::start(dir, &[]);
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("rec-{i:03}");
        let (s, v) = put(&server.url, &key).await;
        assert_eq!(s, 201, "{v}");
        keys.push(key);
    }
    server.stop();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_database_is_refused_and_rebuilt_from_the_ledger() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut keys = write_records(tmp.path(), 30).await;
    let snapshot = snapshot(tmp.path());
    // Written after the snapshot: only the ledger has them.
    let server = Server::start(tmp.path(), &[]);
    for i in 30..40 {
        let key = format!("rec-{i:03}");
        let (s, v) = put(&server.url, &key).await;
        assert_eq!(s, 201, "{v}");
        keys.push(key);
    }
    server.stop();
    let state = tmp.path().join("data/state.redb");
    flip_inside(&state, b"rec-017");

    let out = run(daena(tmp.path()).args(["serve", "--listen", "127.0.0.1:0"]).env("DAENA_OPS_KEY", "ops-key"));
    assert!(!out.status.success(), "serve must not start on a damaged state database: {}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("state database") && err.contains("daena replay"), "the reason and the way out: {err}");

    // The way out the message gives: move the file aside, rebuild from the newest snapshot
    // and the ledger after it.
    std::fs::rename(&state, tmp.path().join("state.redb.damaged")).expect("move aside");
    let ledger = tmp.path().join("data/ledger");
    let out = run(daena(tmp.path()).args(["replay", "--ledger"]).arg(&ledger).arg("--from-snapshot").arg(&snapshot));
    assert!(out.status.success(), "replay: {} {}", stdout(&out), stderr(&out));
    assert_all_back(tmp.path(), &keys, &[]).await;
}

/// Takes a snapshot of the stopped data directory; its path.
fn snapshot(dir: &Path) -> std::path::PathBuf {
    let out = run(daena(dir).args(["snapshot", "create", "--json"]));
    assert!(out.status.success(), "snapshot: {} {}", stdout(&out), stderr(&out));
    let snapshots: Vec<_> = std::fs::read_dir(dir.join("data/snapshots"))
        .expect("snapshots dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".tar.zst"))
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    snapshots[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_is_refused_by_restore_and_replay() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keys = write_records(tmp.path(), 10).await;
    let good = std::fs::read(snapshot(tmp.path())).expect("read");
    let damaged = tmp.path().join("damaged.tar.zst");
    let ledger = tmp.path().join("data/ledger");

    // A byte flipped in the middle, the archive cut in half, and one file inside changed
    // under a valid compression frame (only the manifest's hashes can tell).
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x20;
    let cut = good[..good.len() / 2].to_vec();
    let rewritten = with_inner_file_changed(&good, "ledger/");
    for (what, bytes) in
        [("a flipped byte", flipped), ("cut in half", cut), ("a changed ledger file inside", rewritten)]
    {
        std::fs::write(&damaged, &bytes).expect("write");
        let out = run(daena(tmp.path()).args(["snapshot", "restore"]).arg(&damaged));
        assert!(!out.status.success(), "restore of a snapshot with {what} must fail: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            !err.contains("panicked") && err.contains("damaged.tar.zst"),
            "{what}: the message names the file: {err}"
        );
        if what.contains("inside") {
            assert!(err.contains("does not match its manifest hash"), "{what}: {err}");
        }

        let out = run(daena(tmp.path()).args(["replay", "--ledger"]).arg(&ledger).arg("--from-snapshot").arg(&damaged));
        assert!(!out.status.success(), "replay from a snapshot with {what} must fail: {}", stdout(&out));
        assert!(!stderr(&out).contains("panicked"), "{what}: {}", stderr(&out));
    }

    // The data directory is untouched: everything reads back.
    assert_all_back(tmp.path(), &keys, &[]).await;
}

/// The archive with one byte changed in the first file whose path starts with `prefix`,
/// packed and compressed again (a valid archive whose contents differ from its manifest).
fn with_inner_file_changed(archive: &[u8], prefix: &str) -> Vec<u8> {
    let tar_bytes = zstd::decode_all(archive).expect("zstd");
    let mut out = tar::Builder::new(Vec::new());
    let mut changed = false;
    let mut reader = tar::Archive::new(tar_bytes.as_slice());
    for entry in reader.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("read entry");
        if !changed && path.starts_with(prefix) && !data.is_empty() {
            let at = data.len() / 2;
            data[at] ^= 0x01;
            changed = true;
        }
        let mut header = entry.header().clone();
        header.set_size(data.len() as u64);
        header.set_cksum();
        out.append(&header, data.as_slice()).expect("append");
    }
    assert!(changed, "the archive has a file under {prefix}");
    zstd::encode_all(out.into_inner().expect("tar").as_slice(), 3).expect("zstd")
}
