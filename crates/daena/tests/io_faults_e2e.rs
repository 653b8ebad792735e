//! Faults the kernel hands a running server, injected between Daena and the C library
//! (`tests/faults/libfault.c`, loaded with LD_PRELOAD into the unchanged binary): a disk
//! that turns read-only, fsync that fails with EIO, and a wall clock that jumps back and
//! forth. Writes are refused with a clear 503 while a fault lasts (never acknowledged and
//! lost, never half visible), `/health` says unhealthy, reads keep working, the service
//! recovers by itself, and after a restart every acknowledged write reads back and the
//! ledger verifies.

mod common;

use common::faults::{
    Injector, assert_all_back, assert_refused_clearly, assert_unhealthy_and_reading, get_text, put, wait_writable_check,
};
use common::{call, ledger_size};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

/// Writes 10 records, turns `fault` on, checks writes are refused with a message containing
/// `words` while reads work and `/health` fails, turns it off, checks the service recovered,
/// kills it and checks everything acknowledged is back after a restart.
async fn refused_while_on_then_recovered(fault: &str, words: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let injector = Injector::build(tmp.path());
    let server = injector.server(tmp.path(), &[]);
    let url = server.url.clone();
    let mut acked = Vec::new();
    for i in 0..10 {
        let key = format!("before-{i}");
        let (s, v) = put(&url, &key).await;
        assert_eq!(s, 201, "{v}");
        acked.push(key);
    }

    injector.set(fault);
    let (s, v) = put(&url, "during").await;
    assert_refused_clearly(s, &v, words);
    assert_unhealthy_and_reading(&url, &acked, "during the fault").await;
    // Long enough for the state flush (every second) to meet the fault and retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (s, v) = put(&url, "during-2").await;
    assert_eq!(s, 503, "{v}");

    injector.set("");
    // The state store is reopened at most once a second: the writes in that second are told
    // to retry shortly.
    let mut answer = put(&url, "after").await;
    for _ in 0..10 {
        if answer.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        answer = put(&url, "after").await;
    }
    assert_eq!(answer.0, 201, "the service recovered by itself: {}", answer.1);
    acked.push("after".into());
    for key in &acked {
        let (s, _) = get_text(&url, key).await;
        assert_eq!(s, 200, "{key} once the fault is gone");
    }
    let h = wait_writable_check(&url, "pass").await;
    assert_eq!(h["checks"]["data_dir_writable"]["status"], "pass", "{h}");
    assert!(!server.log_text().contains("panicked"), "no panic in the server log: {}", server.log_text());
    server.kill9();
    assert_all_back(tmp.path(), &acked, &["during".to_owned(), "during-2".to_owned()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_turning_read_only_refuses_writes_clearly_and_recovers() {
    refused_while_on_then_recovered("erofs", "read-only").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failures_refuse_writes_clearly_and_lose_nothing() {
    refused_while_on_then_recovered("eio-sync", "I/O error").await;
}

async fn ledger_head(url: &str) -> Value {
    call(Method::GET, &format!("{url}/api/v1/ledger/head"), None, None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_jumping_back_and_forth_breaks_neither_order_nor_limits() {
    let tmp = tempfile::tempdir().expect("tmp");
    let injector = Injector::build(tmp.path());
    // 10 requests a second, a burst of 20: a jump back must not lock the tenant out.
    let limits =
        [("DAENA_RATE_LIMIT_ENABLED", "true"), ("DAENA_TENANT_RATE_LIMIT_RPM", "600"), ("DAENA_TENANT_BURST", "20")];
    let server = injector.server(tmp.path(), &limits);
    let url = server.url.clone();
    let mut acked = Vec::new();
    let mut last_ts = String::new();
    for (phase, fault) in [("now", ""), ("back", "clock -3600"), ("ahead", "clock 7200"), ("again", "")] {
        injector.set(fault);
        for i in 0..8 {
            let key = format!("{phase}-{i}");
            // Within the limit (8 writes a phase, at most 10 a second); a client that waits
            // a second after a 429 gets through: a jump costs at most the burst, never the
            // hour the clock moved.
            let mut answer = put(&url, &key).await;
            for _ in 0..3 {
                if answer.0 != 429 {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                answer = put(&url, &key).await;
            }
            assert_eq!(answer.0, 201, "{key} with the clock {phase}: {}", answer.1);
            acked.push(key);
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        let head = ledger_head(&url).await;
        let ts = head["last_entry_at"].as_str().expect("last entry time").to_owned();
        // RFC 3339 UTC text of one width orders like the instants.
        assert!(ts >= last_ts, "ledger time never goes back: {ts} after {last_ts} ({phase})");
        last_ts = ts;
    }
    let size = ledger_size(&url).await;
    assert!(size >= acked.len() as u64, "{size}");
    server.stop();
    assert_all_back(tmp.path(), &acked, &[]).await;
}
