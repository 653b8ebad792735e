//! Serving the router on a socket: one hyper HTTP/1 connection per accepted TCP stream, with
//! the peer address in each request's extensions (`ConnectInfo<SocketAddr>`, for the
//! per-address limits), `TCP_NODELAY`, a header-read timeout (a client that trickles its
//! headers is cut off after `server.header_read_timeout_secs`), and a graceful shutdown
//! bounded by `server.shutdown_grace_secs`.

use crate::extract::AppState;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::time::Duration;
use tower::ServiceExt;

/// `listener` with Nagle's algorithm off on every accepted connection: answers are written
/// whole, and waiting to coalesce them only adds latency (up to a delayed-ACK timeout). For
/// the maintenance router, which `axum::serve` serves.
pub fn no_delay(listener: tokio::net::TcpListener) -> NoDelay {
    use axum::serve::ListenerExt;
    listener.tap_io(set_nodelay as fn(&mut tokio::net::TcpStream))
}

fn set_nodelay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// A listener that sets `TCP_NODELAY` on every accepted connection.
pub type NoDelay = axum::serve::TapIo<tokio::net::TcpListener, fn(&mut tokio::net::TcpStream)>;

/// Serves `router(state)` on `listener` until `shutdown` resolves, then waits for in-flight
/// requests (bounded by `server.shutdown_grace_secs`).
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = &state.config().server;
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let header_timeout = Duration::from_secs(config.header_read_timeout_secs);
    let app = crate::router(state);
    accept_loop(listener, app, header_timeout, grace, shutdown).await
}

/// Serves `/metrics` without a key on `listener` (`server.metrics_listen`), until aborted.
pub async fn serve_metrics(state: AppState, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let header_timeout = Duration::from_secs(state.config().server.header_read_timeout_secs);
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(crate::routes::system::metrics_unkeyed))
        .fallback(crate::middleware::not_found)
        .with_state(state);
    accept_loop(listener, app, header_timeout, Duration::ZERO, std::future::pending()).await
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let mut tcp = tcp;
        set_nodelay(&mut tcp);
        let service = app.clone().map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            req
        });
        let conn = http.serve_connection(TokioIo::new(tcp), hyper_util::service::TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace period over; dropping remaining connections"),
    }
    Ok(())
}
