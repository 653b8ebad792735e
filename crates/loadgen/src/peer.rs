//! Any HTTP server as a peer, driven by the same client as Daena's scenarios so that ratios
//! compare servers, not clients (`bench/run` points it at GPTCache's server).

use crate::Common;
use crate::client::{self, MakeRequest};
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    #[command(flatten)]
    pub common: Common,
    /// The server, as host:port
    #[arg(long)]
    pub addr: String,
    /// Request method
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Request path
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A JSON request body, sent with every request
    #[arg(long)]
    pub body: Option<String>,
    /// Open loop at this many requests a second in total (latency from when each was due);
    /// without it, closed loop (each connection sends when its last answer arrived)
    #[arg(long)]
    pub rate: Option<f64>,
    /// The name of the figure in the report
    #[arg(long, default_value = "HTTP peer")]
    pub label: String,
    /// A body the answer must contain (checked once before measuring), so a peer answering
    /// 200 without the cached value is not measured as a hit
    #[arg(long)]
    pub expect: Option<String>,
}

pub async fn run(a: &HttpArgs) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let addr = tokio::net::lookup_host(&a.addr)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", a.addr))?;
    if let Some(body) = &a.body {
        serde_json::from_str::<serde_json::Value>(body).map_err(|e| anyhow::anyhow!("--body is not JSON: {e}"))?;
    }
    anyhow::ensure!(a.path.starts_with('/'), "--path must start with /");
    let req = client::request(&a.method, &a.path, "", a.body.clone().map(Bytes::from));
    // One request first: the answer must be a success (and hold `--expect`).
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(&req).await?;
    let mut buf = Vec::new();
    let status = client::read_response(&mut stream, &mut buf).await?;
    anyhow::ensure!((200..300).contains(&status), "{} answered {status} to the first request", a.addr);
    if let Some(expect) = &a.expect {
        let text = String::from_utf8_lossy(&buf);
        anyhow::ensure!(text.contains(expect.as_str()), "the first answer does not hold {expect:?}: {text}");
    }
    drop(stream);
    let c = &a.common;
    let make: MakeRequest = Arc::new(move |_, _| req.clone());
    let r = match a.rate {
        Some(rate) => client::run_open(addr, rate, c.concurrency, c.warmup, c.seconds, make).await?,
        None => client::run(addr, c.concurrency, c.warmup, c.seconds, make).await?,
    };
    println!("{}", r.line(&a.label));
    Ok(())
}
