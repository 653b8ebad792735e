//! Background work of a running service: aging on its interval, growth samples, heartbeat
//! flushes, and a replica's exchange of figures with the others. Each task logs its failures
//! and tries again on its next tick. Of replicas sharing a deployment, only the lease holder
//! ages, sweeps, trains and writes seeds for new replicas ([`Daena::leads`]).

use crate::Daena;
use std::sync::Arc;
use std::time::Duration;

/// Runs `f` on a blocking thread every `period` (the first time at once when `at_start`),
/// logging its failures as `what`.
fn blocking_every(
    d: &Arc<Daena>,
    period: Duration,
    at_start: bool,
    what: &'static str,
    f: fn(&Daena) -> crate::error::AppResult<()>,
) -> tokio::task::JoinHandle<()> {
    let d = d.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        if !at_start {
            tick.tick().await;
        }
        loop {
            tick.tick().await;
            let d = d.clone();
            match tokio::task::spawn_blocking(move || f(&d)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e.message, "{what} failed"),
                Err(e) => tracing::warn!(error = %e, "{what}: task failed"),
            }
        }
    })
}

/// Starts the background tasks on the current tokio runtime.
pub fn spawn(d: Arc<Daena>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // The first flush is a period after start; a replica exchanges figures at once.
    tasks.push(blocking_every(&d, Duration::from_secs(30), false, "periodic flush", |d| d.flush()));
    if d.replicas().is_some() {
        let (every, what) = (crate::replicas::PUBLISH_EVERY, "sharing figures with the other replicas");
        tasks.push(blocking_every(&d, every, true, what, crate::replicas::exchange));
    }
    if let Some(every) = crate::replicas::seed::every(d.config()) {
        let seed = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if !seed.leads() {
                    continue;
                }
                if let Err(e) = crate::replicas::seed::write(&seed).await {
                    tracing::warn!(error = %e.message, "writing a seed for new replicas failed");
                }
            }
        }));
    }
    let series = d.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(crate::dashboard::INTERVAL_SECS));
        loop {
            tick.tick().await;
            let d = series.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || d.monitoring().series().record(&d)).await {
                tracing::warn!(error = %e, "dashboard sample task failed");
            }
        }
    }));
    let growth = d.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            growth.memory().sample_growth();
            growth.governance().limiter().sweep();
            growth.governance().failed_auth().sweep();
        }
    }));
    let verify = d.clone();
    tasks.push(tokio::spawn(async move {
        let every = verify.config().ledger.verify_every_hours;
        if every == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(every.saturating_mul(3600)));
        loop {
            tick.tick().await;
            match crate::checks::verify_ledger(&verify).await {
                Ok(v) if v.ok => {
                    tracing::info!(entries = v.entries, seconds = v.seconds, "full ledger verification passed")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message, "full ledger verification could not run"),
            }
        }
    }));
    let probe = d.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            crate::checks::probe_upstream(&probe).await;
        }
    }));
    let sweep = d.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(300));
        tick.tick().await;
        loop {
            tick.tick().await;
            if !sweep.writes_enabled() || !sweep.leads() {
                continue;
            }
            match crate::cas::chat::sweep_expired(&sweep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(evicted = n, "expired cache entries evicted"),
                Err(e) => tracing::warn!(error = %e.message, "cache expiry sweep failed"),
            }
        }
    }));
    let train = d.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            if !train.writes_enabled() || !train.leads() {
                continue;
            }
            if let Err(e) = crate::memory::dict::train_due(&train).await {
                tracing::warn!(error = %e.message, "compression dictionary training failed");
            }
        }
    }));
    let minutes = d.config().memory.aging.interval_minutes;
    if minutes > 0 {
        let aging = d.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(minutes * 60));
            tick.tick().await;
            loop {
                tick.tick().await;
                if !aging.writes_enabled() || !aging.leads() {
                    continue;
                }
                if let Err(e) = crate::memory::aging::run(&aging, "system:aging", false).await {
                    tracing::warn!(error = %e.message, "scheduled aging run failed");
                }
            }
        }));
    }
    tasks
}
