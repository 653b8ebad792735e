//! The `daena` binary: CLI parsing and wiring. Every command's logic lives in `daena-app`
//! (use cases) or `daena-api` (HTTP); this crate only connects them to a terminal.

mod cli;
mod client;
mod commands;
mod output;

use clap::Parser;
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
