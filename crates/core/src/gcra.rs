//! GCRA (generic cell rate algorithm): a rate limit as one timestamp per tenant.
//!
//! With `rpm` requests per minute the emission interval is T = 60 s / rpm; a tenant's state is
//! its theoretical arrival time (TAT). A request at `now` is allowed when
//! max(TAT, now) + T − now ≤ burst · T, and then TAT becomes max(TAT, now) + T. A tenant with
//! no state (new, or idle long enough that its TAT passed) has its whole burst available.
//! Time is a parameter (microseconds), so every rule is testable without sleeping.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub rpm: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; `remaining` further requests fit in the burst now, and the burst is full
    /// again after `reset` µs.
    Allow { remaining: u32, reset: i64 },
    /// Refused; retry after `retry_after` µs.
    Deny { retry_after: i64, reset: i64 },
}

impl Limit {
    /// The emission interval in µs (at least 1).
    pub fn interval(self) -> i64 {
        (60_000_000 / i64::from(self.rpm.max(1))).max(1)
    }
}

/// Decides a request at `now` for a tenant whose TAT is `tat` (None: no state). Returns the
/// decision and the new TAT (on a denial unchanged, but for a TAT pulled back to a window
/// ahead of `now`).
pub fn decide(limit: Limit, tat: Option<i64>, now: i64) -> (Decision, Option<i64>) {
    let t = limit.interval();
    let window = t.saturating_mul(i64::from(limit.burst.max(1)));
    // A TAT more than one window ahead only comes from a wall clock that went back (or
    // a replica whose clock is ahead): count it as a used-up burst, not an hour's lockout.
    let start = tat.map_or(now, |x| x.clamp(now, now.saturating_add(window)));
    let next = start.saturating_add(t);
    if next - now > window {
        let retry_after = next - now - window;
        (Decision::Deny { retry_after, reset: start - now }, tat.map(|_| start))
    } else {
        let remaining = u32::try_from((window - (next - now)) / t).unwrap_or(u32::MAX);
        (Decision::Allow { remaining, reset: next - now }, Some(next))
    }
}

/// Requests that fit right now for a tenant at `tat`.
pub fn available(limit: Limit, tat: Option<i64>, now: i64) -> u32 {
    let t = limit.interval();
    let window = t * i64::from(limit.burst.max(1));
    let used = tat.map_or(0, |x| (x - now).max(0));
    u32::try_from((window - used).max(0) / t).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_clock_that_goes_back_costs_at_most_one_interval() {
        let limit = Limit { rpm: 600, burst: 20 };
        let t = limit.interval();
        let mut tat = None;
        let now = 10_000_000_000;
        for _ in 0..10 {
            let (d, next) = decide(limit, tat, now);
            assert!(matches!(d, Decision::Allow { .. }));
            tat = next;
        }
        // The wall clock jumps back an hour: the burst counts as used, for one interval.
        let back = now - 3_600_000_000;
        let (d, pulled_back) = decide(limit, tat, back);
        assert_eq!(d, Decision::Deny { retry_after: t, reset: 20 * t });
        assert_eq!(pulled_back, Some(back + 20 * t));
        let tat = pulled_back;
        let (d, _) = decide(limit, tat, back + t);
        assert!(matches!(d, Decision::Allow { .. }), "{d:?}");
    }

    #[test]
    fn burst_then_refill() {
        let limit = Limit { rpm: 60, burst: 5 }; // one per second, five at once
        let mut tat = None;
        for i in 0..5 {
            let (d, t) = decide(limit, tat, 0);
            assert_eq!(d, Decision::Allow { remaining: 4 - i, reset: (i64::from(i) + 1) * 1_000_000 });
            tat = t;
        }
        let (d, t) = decide(limit, tat, 0);
        assert_eq!(d, Decision::Deny { retry_after: 1_000_000, reset: 5_000_000 });
        assert_eq!(t, tat, "a denial does not consume");
        let (d, _) = decide(limit, tat, 999_999);
        assert!(matches!(d, Decision::Deny { retry_after: 1, .. }));
        let (d, tat2) = decide(limit, tat, 1_000_000);
        assert!(matches!(d, Decision::Allow { remaining: 0, .. }));
        assert_eq!(available(limit, tat2, 10_000_000), 5, "idle long enough: the whole burst is back");
    }

    proptest! {
        /// Over any interval the number of allowed requests is at most burst + elapsed / T.
        #[test]
        fn never_exceeds_the_rate(rpm in 1u32..10_000, burst in 1u32..200, gaps in proptest::collection::vec(0i64..2_000_000, 1..400)) {
            let limit = Limit { rpm, burst };
            let mut tat = None;
            let mut now = 0i64;
            let mut allowed = 0i64;
            for g in gaps {
                now += g;
                let (d, t) = decide(limit, tat, now);
                if let Decision::Allow { .. } = d {
                    allowed += 1;
                }
                tat = t;
            }
            prop_assert!(allowed <= i64::from(burst) + now / limit.interval() + 1);
        }
    }
}
