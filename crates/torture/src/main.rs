//! `daena-torture`: see the library's documentation (`src/lib.rs`).

use clap::Parser;
use daena_torture::{Args, run};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match rt.block_on(run::run(args)) {
        Ok(report) => {
            println!("{}", report.summary());
            if report.losses.is_empty() { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
