//! `daena serve`: open the data directory, start the API and the background work, stop
//! gracefully on SIGTERM or SIGINT.

use super::load_config;
use crate::cli::{Global, LogFormatArg, ServeArgs};
use anyhow::Context;
use daena_app::config::LogFormat;
use daena_app::{Daena, OpenOptions};
use daena_store::datadir::LockInfo;
use std::process::ExitCode;

pub async fn run(global: &Global, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut overrides = Vec::new();
    if let Some(listen) = &args.listen {
        overrides.push(("server.listen".to_owned(), listen.clone(), "--listen".to_owned()));
    }
    if let Some(format) = args.log_format {
        let f = match format {
            LogFormatArg::Text => "text",
            LogFormatArg::Json => "json",
        };
        overrides.push(("server.log_format".to_owned(), f.to_owned(), "--log-format".to_owned()));
    }
    let loaded = load_config(global, overrides)?;
    init_logging(loaded.config.server.log_format);
    let listen = loaded.config.server.listen;
    for file in &loaded.files {
        tracing::info!(file = %file.display(), "configuration file read");
    }
    let daena =
        Daena::open(loaded, OpenOptions::serve(listen.to_string())).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if daena.keys.active_count() == 0 {
        tracing::warn!("no API keys exist: set DAENA_OPS_KEY or run `daena keys create --role ops` to use the API");
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let info = LockInfo { pid: std::process::id(), listen: Some(bound.to_string()), holder: "serve".into() };
    daena.data.update_lock_info(&info).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(listen = %bound, data_dir = %daena.data.root().display(), "daena serving");
    let background = daena_app::scheduler::spawn(daena.clone());
    daena_api::serve(daena.clone(), listener, shutdown_signal()).await.context("serving HTTP")?;
    for task in background {
        task.abort();
    }
    tracing::info!("shutting down: flushing state");
    daena.shutdown().await.map_err(|e| anyhow::anyhow!("shutdown: {}", e.message))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DAENA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
