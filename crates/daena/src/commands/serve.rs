//! `daena serve`: open the data directory, start the API and the background work, stop
//! gracefully on SIGTERM or SIGINT.

use super::load_config;
use crate::cli::{Global, LogFormatArg, ServeArgs};
use anyhow::Context;
use daena_app::operations::{self, MaintenanceRequest, Operations};
use daena_app::{Daena, OpenOptions};
use daena_store::datadir::LockInfo;
use std::process::ExitCode;
use std::sync::Arc;

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
    let loaded = load_config(global, overrides.clone())?;
    daena_api::init_logging(loaded.config.server.log_format);
    let listen = loaded.config.server.listen;
    for file in &loaded.files {
        tracing::info!(file = %file.display(), "configuration file read");
    }
    let operations = Operations::new();
    let opts = |addr: String| OpenOptions { operations: Some(operations.clone()), ..OpenOptions::serve(addr) };
    let mut daena = Daena::open(loaded, opts(listen.to_string())).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if daena.governance().api_keys().active_count() == 0 {
        tracing::warn!("no API keys exist: set DAENA_OPS_KEY or run `daena keys create --role ops` to use the API");
    }
    // One listening socket for the whole process: it stays bound (connections queue) while a
    // maintenance operation closes and reopens the stores.
    let listener = std::net::TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    listener.set_nonblocking(true).context("configuring the listening socket")?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let info = LockInfo { pid: std::process::id(), listen: Some(bound.to_string()), holder: "serve".into() };
    daena.data().update_lock_info(&info).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(listen = %bound, data_dir = %daena.data().root().display(), "daena serving");
    let metrics_listener = match daena.config().server.metrics_listen {
        Some(addr) => {
            let l =
                std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr} (server.metrics_listen)"))?;
            l.set_nonblocking(true).context("configuring the metrics socket")?;
            tracing::info!(listen = %l.local_addr().context("metrics address")?, "serving /metrics without a key");
            Some(l)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    loop {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        daena.operations().attach(tx);
        let background = daena_app::scheduler::spawn(daena.clone());
        let requested = Arc::new(parking_lot::Mutex::new(None));
        let shutdown = {
            let (mut stop, requested) = (stop_rx.clone(), requested.clone());
            async move {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    Some(m) = rx.recv() => *requested.lock() = Some(m),
                }
            }
        };
        let socket = tokio::net::TcpListener::from_std(listener.try_clone().context("cloning the listening socket")?)
            .context("registering the listening socket")?;
        let metrics = match &metrics_listener {
            Some(l) => {
                let socket = tokio::net::TcpListener::from_std(l.try_clone().context("cloning the metrics socket")?)
                    .context("registering the metrics socket")?;
                Some(tokio::spawn(daena_api::serve_metrics(daena.clone(), socket)))
            }
            None => None,
        };
        daena_api::serve(daena.clone(), socket, shutdown).await.context("serving HTTP")?;
        if let Some(task) = metrics {
            task.abort();
            let _ = task.await;
        }
        daena.operations().detach();
        for task in background {
            task.abort();
            let _ = task.await;
        }
        let Some(request) = requested.lock().take() else { break };
        daena = maintain(global, &overrides, daena, request, &listener, &opts(bound.to_string())).await?;
    }
    if let Some(op) = daena.operations().running() {
        let grace = std::time::Duration::from_secs(daena.config().server.shutdown_grace_secs.max(30));
        tracing::warn!(operation = %op.id, kind = %op.kind, "waiting up to {grace:?} for the running operation to end");
        let deadline = std::time::Instant::now() + grace;
        while daena.operations().running().is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    tracing::info!("shutting down: flushing state");
    daena.shutdown().await.map_err(|e| anyhow::anyhow!("shutdown: {}", e.message))?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// A restore, rollback or replay: closes the stores (keeping the directory locked), answers
/// 503 on the port while the operation runs, then opens the result, or the unchanged state
/// when the operation failed before it replaced anything, and records the outcome.
async fn maintain(
    global: &Global,
    overrides: &[(String, String, String)],
    daena: Arc<Daena>,
    request: MaintenanceRequest,
    listener: &std::net::TcpListener,
    opts: &OpenOptions,
) -> anyhow::Result<Arc<Daena>> {
    let ops = daena.operations().clone();
    let keys = Arc::new(daena.governance().api_keys().frozen());
    let id = request.id.clone();
    let closed_at = std::time::Instant::now();
    ops.phase(&id, "closing the stores");
    // Requests have finished; what still holds the service (a blocking task) lets go soon.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while Arc::strong_count(&daena) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if Arc::strong_count(&daena) > 1 {
        ops.finish(&id, Err("the stores stayed in use for 30 s; nothing was changed, the server serves on".into()));
        return Ok(daena);
    }
    daena.shutdown().await.map_err(|e| anyhow::anyhow!("closing the stores: {}", e.message))?;
    let data = match daena.close() {
        Ok(data) => data,
        Err(daena) => {
            ops.finish(&id, Err("the stores stayed in use; nothing was changed".into()));
            anyhow::bail!("{}: the stores could not be closed for maintenance", daena.data().root().display());
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let socket = tokio::net::TcpListener::from_std(listener.try_clone().context("cloning the listening socket")?)
        .context("registering the listening socket")?;
    let window = tokio::spawn(
        axum::serve(daena_api::no_delay(socket), daena_api::maintenance_router(ops.clone(), keys))
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    ops.phase(&id, &format!("{}: verifying, then swapping in", request.op.kind()));
    let loaded = load_config(global, overrides.to_vec())?;
    let op = request.op.clone();
    let (data, outcome) = tokio::task::spawn_blocking(move || {
        let outcome = operations::perform(&data, &loaded, &op);
        (data, outcome)
    })
    .await
    .context("the maintenance task")?;
    ops.phase(&id, "opening the stores");
    let reopened = Daena::open_in(load_config(global, overrides.to_vec())?, opts.clone(), Some(data));
    let _ = stop_tx.send(());
    let _ = window.await;
    let outcome = outcome.map_err(|e| e.message);
    let daena = match reopened {
        Ok(d) => d,
        Err(e) => {
            let detail = match &outcome {
                Ok(report) => format!("the {} completed ({report}) but the result does not open", request.op.kind()),
                Err(err) => format!("the {} failed ({err}) and the state does not open again", request.op.kind()),
            };
            anyhow::bail!("{detail}: {}", e.message);
        }
    };
    let downtime = (closed_at.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let seq = operations::ledger_outcome(&daena, &request.requested_by, request.op.kind(), &id, &outcome).await;
    let outcome = match (outcome, seq) {
        (Ok(mut report), Ok(seq)) => {
            report["ledger_seq"] = serde_json::json!(seq);
            Ok(report)
        }
        (Ok(_), Err(e)) => Err(format!("done, but ledgering the outcome failed: {}", e.message)),
        (Err(e), _) => Err(e),
    };
    match &outcome {
        Ok(_) => tracing::info!(operation = %id, kind = request.op.kind(), downtime, "maintenance operation done"),
        Err(e) => {
            tracing::error!(operation = %id, kind = request.op.kind(), error = %e, "maintenance operation failed")
        }
    }
    ops.update(&id, |r| r.downtime_seconds = Some(downtime));
    ops.finish(&id, outcome);
    Ok(daena)
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
