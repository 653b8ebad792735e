//! The clock: the one place time enters Daena. Tests use [`ManualClock`] to move time
//! forward without sleeping.

use daena_core::time::Micros;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time.
    fn now(&self) -> Micros;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Micros(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Micros) -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(start.0)))
    }

    pub fn advance(&self, micros: i64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }

    pub fn set(&self, t: Micros) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Micros {
        Micros(self.0.load(Ordering::SeqCst))
    }
}

/// RFC 3339 text of a timestamp, UTC, microsecond precision.
pub fn rfc3339(t: Micros) -> String {
    let nanos = i128::from(t.0) * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|dt| dt.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{}us", t.0))
}

/// `t` cut to whole seconds (RFC 3339 text without a fraction).
pub fn whole_seconds(t: Micros) -> Micros {
    Micros(t.0 - t.0.rem_euclid(1_000_000))
}

/// A timestamp for file names, to the second: `20261128T101500Z`.
pub fn compact_stamp(t: Micros) -> String {
    rfc3339(whole_seconds(t)).replace([':', '-'], "")
}

/// Parses RFC 3339 text into a timestamp.
pub fn parse_rfc3339(s: &str) -> Option<Micros> {
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1000).ok().map(Micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let t = Micros(1_764_302_400_123_456);
        let s = rfc3339(t);
        assert_eq!(s, "2025-11-28T04:00:00.123456Z");
        assert_eq!(parse_rfc3339(&s), Some(t));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
