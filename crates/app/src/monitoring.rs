//! Analytics and monitoring, as one capability of [`crate::Daena`]: what agents did
//! (analytics and costs), how the service runs (Prometheus metrics, the dashboard's history,
//! the background checks) and the caches that keep `/health` and `/metrics` cheap.

use crate::analytics::Analytics;
use crate::checks::Background;
use crate::dashboard::Series;
use crate::telemetry::Metrics;
use crate::{health, metrics_view};
use std::time::Instant;

pub struct Monitoring {
    analytics: Analytics,
    metrics: Metrics,
    /// The dashboard's last 24 hours.
    series: Series,
    /// The background checks' results (full ledger verification, upstream probe).
    background: Background,
    pub(crate) health_cache: health::Cache,
    pub(crate) metrics_freshness: metrics_view::Freshness,
    started: Instant,
}

impl Monitoring {
    pub(crate) fn new(analytics: Analytics, metrics: Metrics, series: Series) -> Monitoring {
        Monitoring {
            analytics,
            metrics,
            series,
            background: Background::default(),
            health_cache: health::Cache::default(),
            metrics_freshness: metrics_view::Freshness::default(),
            started: Instant::now(),
        }
    }

    /// Per-agent and per-tenant activity, costs and savings.
    pub fn analytics(&self) -> &Analytics {
        &self.analytics
    }

    /// The Prometheus registry and its instruments.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The dashboard's last 24 hours.
    pub fn series(&self) -> &Series {
        &self.series
    }

    /// The background checks' last results.
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Time since the service opened.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Persists what is kept in memory between saves (analytics, the dashboard's history).
    pub(crate) fn flush(&self) -> crate::error::AppResult<()> {
        self.series.save(false)?;
        self.analytics.flush()
    }
}
