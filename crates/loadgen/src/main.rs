//! `daena-loadgen`: drives Daena's HTTP paths at a fixed concurrency and reports throughput
//! and latency percentiles beside a baseline measured in the same run (a null HTTP server
//! on the same box, through the same client).
//!
//! Examples:
//!   cargo run --release -p daena-loadgen -- memory-get --records 1000000 --concurrency 64
//!   cargo run --release -p daena-loadgen -- memory-put --concurrency 64 --seconds 10
//!   cargo build --release -p daena -p daena-loadgen && target/release/daena-loadgen soak --minutes 10

mod chart;
mod client;
mod replicas;
mod scenarios;
mod soak;

use clap::{Parser, Subcommand};

/// The same allocator as the `daena` binary, so the in-process server behaves as deployed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "daena-loadgen", about = "Load generator for Daena's HTTP paths")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Concurrent connections (one request in flight each)
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds per measured point
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Warm-up seconds before measuring
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// GET /api/v1/memory/{class}/{key}: L1 hits, then L2 reads with L1 disabled
    MemoryGet {
        #[command(flatten)]
        common: Common,
        /// Records stored before measuring
        #[arg(long, default_value_t = 100_000)]
        records: u64,
        /// The embedded store's page cache (`memory.l2_cache_bytes`), in MiB
        #[arg(long, default_value_t = 256)]
        l2_cache_mib: u64,
    },
    /// PUT /api/v1/memory/{class}/{key}: durable writes
    MemoryPut {
        #[command(flatten)]
        common: Common,
    },
    /// One embedded replica against one and two on PostgreSQL + Redis (PUT, GET, exact hits)
    Replicas {
        #[command(flatten)]
        common: Common,
        /// Redis shared by the replicas on PostgreSQL (PostgreSQL: DAENA_TEST_POSTGRES_URL,
        /// default the local server; each set of replicas gets a throwaway database)
        #[arg(long, default_value = "redis://127.0.0.1:6379/")]
        redis: String,
    },
    /// The real `daena serve` under fleet traffic at a fixed rate for minutes: memory, file
    /// handles, latency, ledger and data size over time, as CSV and an SVG chart
    Soak(soak::SoakArgs),
    /// POST /v1/chat/completions exact cache hits, beside a Redis GET loop of the same size
    CasHit {
        #[command(flatten)]
        common: Common,
        /// Redis to measure the baseline against
        #[arg(long, default_value = "127.0.0.1:6379")]
        redis: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // As `daena serve` logs: each request's span is part of what it costs.
    daena_api::init_logging(daena_app::config::LogFormat::Text);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.scenario {
            Scenario::MemoryGet { common, records, l2_cache_mib } => {
                let bytes = l2_cache_mib
                    .checked_mul(1 << 20)
                    .ok_or_else(|| anyhow::anyhow!("--l2-cache-mib {l2_cache_mib} is too large"))?;
                scenarios::memory_get(&common, records, bytes).await
            }
            Scenario::MemoryPut { common } => scenarios::memory_put(&common).await,
            Scenario::CasHit { common, redis } => scenarios::cas_hit(&common, &redis).await,
            Scenario::Replicas { common, redis } => replicas::run(&common, &redis).await,
            Scenario::Soak(args) => soak::run(&args).await,
        }
    })
}
