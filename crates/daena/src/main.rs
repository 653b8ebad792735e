//! The `daena` binary: CLI parsing and wiring. Every command's logic lives in `daena-app`
//! (use cases) or `daena-api` (HTTP); this crate only connects them to a terminal.

mod cli;
mod client;
mod commands;
mod output;

use clap::Parser;

/// mimalloc: the service allocates many short-lived buffers across threads (request
/// bodies, envelopes, zstd output), where glibc's allocator showed up as ~15% of CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    // TLS for upstream model endpoints and remote admin calls; `ring` is the one provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
