//! An action the state machine does not know stops the replay with an error naming it and
//! its sequence number: a future version's entry is never skipped silently.

use daena_app::config::LoadedConfig;
use daena_app::{Daena, OpenOptions};
use daena_core::ledger::NewEntry;
use daena_core::ledger::entry::{parse_line, seal};
use daena_core::time::Micros;

fn loaded(dir: &std::path::Path) -> LoadedConfig {
    LoadedConfig::in_dir(dir, Some("k"))
}

#[tokio::test]
async fn an_unknown_action_stops_the_replay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Daena::open(loaded(tmp.path()), OpenOptions::offline("test")).expect("open");
    let who = d.governance().api_keys().authenticate(Some("k"), None, daena_app::auth::Access::Ops).expect("ops");
    daena_app::admin::set_writes(&d, &who, false).await.expect("a ledgered governance action");
    let ledger_dir = d.data().ledger_dir();
    d.shutdown().await.expect("shutdown");
    drop(d);

    // A well-formed entry, chained onto the last one, with an action from some later version.
    let (mut seq, mut prev) = (0u64, [0u8; 32]);
    daena_store::ledger::stream_dir(&ledger_dir, |line| {
        let e = parse_line(line).expect("entry");
        (seq, prev) = (e.seq, e.hash);
    })
    .expect("stream");
    let (line, _) = seal(&NewEntry::new("default", "key:ops", "future.action", "x"), seq + 1, Micros(1), &prev);
    let segments = daena_store::ledger::list_segments(&ledger_dir).expect("segments");
    let (_, segment) = segments.last().expect("a segment");
    let mut file = std::fs::OpenOptions::new().append(true).open(segment).expect("open segment");
    std::io::Write::write_all(&mut file, line.as_bytes()).expect("append");
    drop(file);

    let err = Daena::open(loaded(tmp.path()), OpenOptions::offline("test")).expect_err("the replay stops");
    assert!(
        err.message.contains("\"future.action\"") && err.message.contains(&format!("entry {}", seq + 1)),
        "{}",
        err.message
    );
}
