//! Aging on a replica judges a record idle by the reads of the whole fleet: each replica
//! serves its own reads, so a record read only through another replica is not idle; and no
//! record is idle from before the fleet's statistics began.

mod common;

use common::call;
use common::replicas::{Deployment, get, put};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Records untouched for 12.1 s archive.
const RULES: &str = "aging:\n  interval_minutes: 0\n  rules:\n    - after_days: 0.00014\n      action: archive\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_read_through_another_replica_is_not_idle() {
    let deployment = Deployment::new(2);
    for dir in &deployment.dirs {
        std::fs::create_dir_all(dir.path().join("config")).expect("config dir");
        std::fs::write(dir.path().join("config/memory_config.yaml"), RULES).expect("write");
    }
    let (a, b) = (deployment.start(0, true), deployment.start(1, true));
    let written = Instant::now();
    for key in ["read-through-b", "idle"] {
        assert_eq!(put(&a.url, key, key).await, 201, "{key}");
    }
    // Past the rule's 12.1 s, reading one record through B only (B publishes its reads
    // every 5 s, so the last it published is at most ~5 s old when aging runs).
    while written.elapsed() < Duration::from_secs(14) {
        assert_eq!(get(&b.url, "read-through-b").await.0, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let run = || async {
        let (status, report) =
            call(Method::POST, &format!("{}/api/v1/admin/aging/run", a.url), None, Some(&json!({}))).await;
        assert_eq!(status, 200, "{report}");
        report
    };
    // Statistics that began only now know nothing of earlier reads elsewhere: nothing is idle.
    let since = |sql_time: &str| {
        format!(
            "update daena_docs set doc = convert_to(({sql_time})::text, 'UTF8') where tbl = 'fleet_access' and key = 'since'"
        )
    };
    deployment.execute(&since("(extract(epoch from clock_timestamp()) * 1000000)::bigint"));
    let report = run().await;
    assert_eq!(report["archived"], json!(0), "statistics begun now: {report}");
    deployment.execute(&since("0"));
    let report = run().await;
    let aged: Vec<&str> =
        report["actions"].as_array().expect("actions").iter().filter_map(|x| x["key"].as_str()).collect();
    assert_eq!(aged, ["idle"], "A aged only the record nobody read: {report}");
    assert_eq!(report["archived"], json!(1), "{report}");
    let tier = |v: &Value| v["tier"].as_str().unwrap_or_default().to_owned();
    assert_eq!(tier(&get(&a.url, "read-through-b").await.1), "L2");
    assert_eq!(tier(&get(&a.url, "idle").await.1), "L3");
    drop((a, b));
}
