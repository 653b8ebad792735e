//! `daena-torture`: crash rounds against the real `daena serve`.
//!
//! Each round starts the server on the same data directory, checks everything the previous
//! rounds acknowledged, then runs concurrent writers (memory PUT and DELETE, cache stores, key
//! creation and revocation, rate-limit changes) and kills the server with SIGKILL at a seeded
//! random moment. Checked after every restart:
//! - every acknowledged write reads back exactly: a record's payload is its last acknowledged
//!   one (or the one in flight at the kill, which may or may not have landed), an
//!   acknowledged delete stays deleted, a stored cache answer is served, a created key works
//!   and a revoked one is refused, a changed limit is in effect;
//! - nothing unacknowledged is half visible: a payload is always one that was sent whole;
//! - the ledger verifies from the first entry;
//! - at the end, the state rebuilt offline from the ledger (`daena replay` from a snapshot
//!   taken before the first write) shows exactly the same.
//!
//! It reports rounds, acknowledged operations, losses (target 0) and the recovery time after
//! each kill (spawn to serving), and exits 1 on any loss.

pub mod model;
pub mod run;

use std::path::PathBuf;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "daena-torture",
    about = "Crash rounds: writers, SIGKILL at seeded moments, restart, check every acknowledged write",
    after_help = "Examples:\n  cargo build --release -p daena -p daena-torture\n  target/release/daena-torture --rounds 200 --seed 7\n  target/release/daena-torture --rounds 5 --writers 4 --kill-after-ms 300..900 --keep"
)]
pub struct Args {
    /// Crash rounds to run
    #[arg(long, default_value_t = 20)]
    pub rounds: u32,
    /// Seed for the kill moments and the operations (the same seed gives the same plan)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Concurrent memory writers
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Keys per writer (each writer owns its keys, so each key's history is sequential)
    #[arg(long, default_value_t = 40)]
    pub keys: usize,
    /// Range of the time from serving to the kill, in ms: `MIN..MAX`
    #[arg(long, default_value = "200..1500", value_parser = parse_range)]
    pub kill_after_ms: (u64, u64),
    /// The `daena` binary (default: the one next to this program)
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Keep the data directory (printed) instead of removing it
    #[arg(long)]
    pub keep: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or("expected MIN..MAX, e.g. 200..1500")?;
    let (a, b) = (a.parse().map_err(|_| "MIN is not a number")?, b.parse().map_err(|_| "MAX is not a number")?);
    if a == 0 || a >= b {
        return Err("expected 0 < MIN < MAX".into());
    }
    Ok((a, b))
}
