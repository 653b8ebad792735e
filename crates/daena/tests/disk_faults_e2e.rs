//! Disk faults under the real server: the data directory on a size-limited tmpfs that fills
//! up, and one that is read-only when the server starts (a disk going read-only under a
//! running server is in `io_faults_e2e.rs`). Writes are refused with a clear 503 (never a 500, never
//! acknowledged and lost), `/health` says unhealthy, reads keep working, the service recovers
//! by itself once the disk is writable again, and after a restart every acknowledged write
//! reads back and the ledger verifies.
//!
//! These tests mount file systems, so they need root (or CAP_SYS_ADMIN), as on the CI machines.
//! Where mounting is not permitted they fail and say so; `DAENA_SKIP_MOUNT_TESTS=1` skips them
//! by choice.

mod common;

use common::faults::{
    Tmpfs, assert_all_back, assert_refused_clearly, assert_unhealthy_and_reading, get_text, put, wait_writable_check,
};
use common::{Server, daena, run, stderr};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(_fs) = Tmpfs::mount(&tmp.path().join("data"), 48) else { return };
    let server = Server::start(tmp.path(), &[]);
    let url = server.url.clone();
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("before-{i}");
        let (s, v) = put(&url, &key).await;
        assert_eq!(s, 201, "{v}");
        acked.push(key);
    }

    // Fill the disk.
    let filler = tmp.path().join("data/filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..4096]).is_ok() {}
    }
    // Writes may still fit in the last partly used pages; then they are refused.
    let mut refusal = None;
    for i in 0..500 {
        let key = format!("full-{i}");
        let (s, v) = put(&url, &key).await;
        match s {
            201 => acked.push(key),
            _ => {
                refusal = Some((s, v, key));
                break;
            }
        }
    }
    let (s, v, refused_key) = refusal.expect("a write is refused once the disk is full");
    assert_refused_clearly(s, &v, "full");
    assert_unhealthy_and_reading(&url, &acked, "while the disk is full").await;

    // Long enough for the state flush (every second) to meet the full disk too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for key in &acked {
        let (s, _) = get_text(&url, key).await;
        assert_eq!(s, 200, "{key} after flushes met the full disk");
    }

    // Space again: writes work without a restart, and /health is healthy again.
    std::fs::remove_file(&filler).expect("remove filler");
    let (s, v) = put(&url, "after").await;
    assert_eq!(s, 201, "{v}");
    acked.push("after".into());
    let h = wait_writable_check(&url, "pass").await;
    assert_eq!(h["checks"]["data_dir_writable"]["status"], "pass", "{h}");
    server.kill9();
    assert_all_back(tmp.path(), &acked, &[refused_key]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_directory_at_start_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tmp");
    let Some(fs) = Tmpfs::mount(&tmp.path().join("data"), 64) else { return };
    let server = Server::start(tmp.path(), &[]);
    let (s, v) = put(&server.url, "before").await;
    assert_eq!(s, 201, "{v}");
    server.stop();

    fs.remount("ro");
    let out = run(daena(tmp.path()).args(["serve", "--listen", "127.0.0.1:0"]).env("DAENA_OPS_KEY", "ops-key"));
    assert!(!out.status.success(), "serve on a read-only data directory must not start");
    let err = stderr(&out);
    assert!(err.contains("read-only"), "the reason is given: {err}");

    fs.remount("rw");
    assert_all_back(tmp.path(), &["before".to_owned()], &[]).await;
}
