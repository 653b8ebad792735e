//! Time as the domain sees it: microseconds since the Unix epoch, passed in by the caller.
//!
//! `core` never reads a clock; the `app` layer owns the clock and hands `Micros` down, so
//! every rule that depends on time is testable without sleeping.

use serde::{Deserialize, Serialize};

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    pub const SECOND: i64 = 1_000_000;
    pub const MINUTE: i64 = 60 * Self::SECOND;
    pub const HOUR: i64 = 60 * Self::MINUTE;
    pub const DAY: i64 = 24 * Self::HOUR;

    pub fn from_secs(secs: i64) -> Self {
        Micros(secs.saturating_mul(Self::SECOND))
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / Self::SECOND as f64
    }

    pub fn saturating_add(self, micros: i64) -> Self {
        Micros(self.0.saturating_add(micros))
    }

    pub fn saturating_sub(self, micros: i64) -> Self {
        Micros(self.0.saturating_sub(micros))
    }

    /// Whole elapsed microseconds from `earlier` to `self`, never negative.
    pub fn since(self, earlier: Micros) -> i64 {
        self.0.saturating_sub(earlier.0).max(0)
    }

    /// Elapsed days from `earlier` to `self` as a fraction, never negative.
    pub fn days_since(self, earlier: Micros) -> f64 {
        self.since(earlier) as f64 / Self::DAY as f64
    }
}
