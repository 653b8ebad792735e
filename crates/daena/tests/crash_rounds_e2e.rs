//! A bounded run of the crash rounds (`daena-torture`): the real binary under concurrent
//! writers, memory, cache, keys and limits, killed with SIGKILL five times at seeded moments;
//! after every restart each acknowledged write reads back exactly and the ledger verifies, and
//! at the end the state rebuilt from the ledger (`daena replay`) shows the same.
//! Hundreds of rounds: `cargo build --release -p daena -p daena-torture &&
//! target/release/daena-torture --rounds 200`.

use clap::Parser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_rounds() {
    let args = daena_torture::Args::parse_from([
        "daena-torture",
        "--rounds",
        "5",
        "--writers",
        "4",
        "--kill-after-ms",
        "300..900",
        "--seed",
        "11",
        "--bin",
        env!("CARGO_BIN_EXE_daena"),
    ]);
    let report = daena_torture::run::run(args).await.expect("the rounds ran");
    println!("{}", report.summary());
    assert_eq!(report.rounds, 5);
    assert!(report.acked > 100, "the writers got work acknowledged: {}", report.summary());
    assert!(report.losses.is_empty(), "{}", report.summary());
    assert_eq!(report.recovery_ms.len(), 5, "a recovery time per kill");
    assert!(report.replayed, "the state rebuilt from the ledger was checked too");
}
