//! `daena-loadgen`: drives Daena's HTTP paths at a fixed concurrency and reports throughput
//! and latency percentiles beside a baseline measured in the same run (a null HTTP server
//! on the same box, through the same client).
//!
//! Examples:
//!   cargo run --release -p daena-loadgen -- memory-get --records 1000000 --concurrency 64
//!   cargo run --release -p daena-loadgen -- memory-put --concurrency 64 --seconds 10
//!   cargo build --release -p daena -p daena-loadgen && target/release/daena-loadgen soak --minutes 10
//!   daena-loadgen open-loop --rates 10000,20000,40000
//!   daena-loadgen growth --max-records 1000000 --max-prompts 1000000 --max-ledger 10000000
//!   daena-loadgen http --addr 127.0.0.1:8012 --path /get --body '{"prompt":"hello"}'
//!
//! `bench/run` runs them all and writes docs/BENCHMARKS.md.

mod chart;
mod client;
mod growth;
mod peer;
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
    /// Open loop at fixed arrival rates (latency from when each request was due): exact cache
    /// hits and memory GETs
    OpenLoop {
        #[command(flatten)]
        common: Common,
        /// Total requests per second, one point each
        #[arg(long, value_delimiter = ',', default_value = "10000,20000,40000")]
        rates: Vec<f64>,
    },
    /// Cost per operation as records, cached prompts and the ledger grow by powers of ten
    Growth(growth::GrowthArgs),
    /// Any HTTP server, through the same client (a peer such as GPTCache's server)
    Http(peer::HttpArgs),
    /// POST /v1/chat/completions exact cache hits, beside a Redis GET loop of the same size
    CasHit {
        #[command(flatten)]
        common: Common,
        /// Redis to measure the baseline against
        #[arg(long, default_value = "127.0.0.1:6379")]
        redis: String,
        /// Print the cached answer (JSON) and exit, to give a peer the same value
        #[arg(long)]
        print_answer: bool,
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
            Scenario::CasHit { print_answer: true, .. } => {
                println!("{}", scenarios::cached_pair().1);
                Ok(())
            }
            Scenario::CasHit { common, redis, .. } => scenarios::cas_hit(&common, &redis).await,
            Scenario::Replicas { common, redis } => replicas::run(&common, &redis).await,
            Scenario::Soak(args) => soak::run(&args).await,
            Scenario::OpenLoop { common, rates } => {
                anyhow::ensure!(rates.iter().all(|r| r.is_finite() && *r > 0.0), "--rates must be positive");
                scenarios::open_loop(&common, &rates).await
            }
            Scenario::Growth(args) => growth::run(&args).await,
            Scenario::Http(args) => peer::run(&args).await,
        }
    })
}
