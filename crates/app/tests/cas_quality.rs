//! Near-duplicate quality through the real lookup path, on the labelled workload the
//! `cas_quality` bench reports: recall ≥ 0.95 on every benign family, no wrong answer, no
//! false positive on numbers, signs, symbols, negations, units and dates, ≤ 1% overall.

#[path = "../benches/support/cas_workload.rs"]
mod cas_workload;

use daena_app::auth::Access;
use daena_app::config::LoadedConfig;
use daena_app::{Daena, OpenOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_duplicates_serve_benign_variants_and_refuse_different_questions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loaded = LoadedConfig::in_dir(dir.path(), Some("k"));
    let d = Daena::open(loaded, OpenOptions::offline("test")).expect("open");
    let who = d.governance().api_keys().authenticate(Some("k"), None, Access::Data).expect("auth");
    let tallies = cas_workload::run(&d, &who, 192).await;
    let mut problems = Vec::new();
    let (mut different, mut false_hits) = (0, 0);
    for (name, t) in &tallies {
        assert!(t.lookups >= 8, "{name} has only {} lookups", t.lookups);
        if t.benign {
            if t.rate() < 0.95 || t.wrong > 0 {
                problems.push(format!("{name}: recall {:.3}, {} wrong; {:?}", t.rate(), t.wrong, t.examples));
            }
        } else {
            different += t.lookups;
            false_hits += t.hits;
            if t.strict && t.hits > 0 {
                problems.push(format!("{name}: {} false positives; {:?}", t.hits, t.examples));
            }
        }
    }
    assert!(false_hits * 100 <= different, "{false_hits}/{different} false positives overall");
    assert!(problems.is_empty(), "{problems:#?}");
    d.shutdown().await.expect("shutdown");
}
