//! When a workload should renew its SVID. Pure arithmetic on times the caller passes in.
//!
//! Renewing at half-life means a CA outage shorter than half a lifetime never expires a
//! workload. The jitter spreads renewals of workloads that started together (a node reboot, a
//! rollout) over 40–60% of the lifetime, so they do not all hit the CA in the same second.

use std::time::{Duration, SystemTime};

use crate::clock;

/// The fraction of a lifetime jitter may move the renewal point either way.
const JITTER_SPAN: f64 = 0.1;

/// `not_before + lifetime × (0.5 ± 0.1)`, where `jitter` in `0..=1` picks the point: 0 renews
/// at 40%, 0.5 at exactly half, 1 at 60%. Out-of-range jitter is clamped; NaN counts as 0.5.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, jitter: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or(Duration::ZERO);
    let jitter = if jitter.is_nan() { 0.5 } else { jitter.clamp(0.0, 1.0) };
    let fraction = 0.5 + JITTER_SPAN * (2.0 * jitter - 1.0);
    not_before + lifetime.mul_f64(fraction)
}

/// Whether a certificate valid from `not_before` to `not_after` is due for renewal at `now`.
pub fn should_renew(now: SystemTime, not_before: SystemTime, not_after: SystemTime, jitter: f64) -> bool {
    now >= renew_at(not_before, not_after, jitter)
}

/// Whole seconds from `now` until `not_after`; negative once expired.
pub fn seconds_to_expiry(now: SystemTime, not_after: SystemTime) -> i64 {
    clock::unix_seconds(not_after) - clock::unix_seconds(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn middle_jitter_renews_at_exactly_half_life() {
        let start = UNIX_EPOCH + 1000 * DAY;
        assert_eq!(renew_at(start, start + DAY, 0.5), start + DAY / 2);
    }

    #[test]
    fn extreme_jitter_renews_at_forty_and_sixty_percent() {
        let start = UNIX_EPOCH + 1000 * DAY;
        let end = start + Duration::from_secs(1000);
        assert_eq!(renew_at(start, end, 0.0), start + Duration::from_secs(400));
        assert_eq!(renew_at(start, end, 1.0), start + Duration::from_secs(600));
    }

    #[test]
    fn should_renew_turns_true_at_the_renewal_point() {
        let start = UNIX_EPOCH + 1000 * DAY;
        let end = start + DAY;
        assert!(!should_renew(start + DAY / 2 - Duration::from_secs(1), start, end, 0.5));
        assert!(should_renew(start + DAY / 2, start, end, 0.5));
    }

    #[test]
    fn seconds_to_expiry_goes_negative_after_expiry() {
        let end = UNIX_EPOCH + 1000 * DAY;
        assert_eq!(seconds_to_expiry(end - Duration::from_secs(90), end), 90);
        assert_eq!(seconds_to_expiry(end + Duration::from_secs(5), end), -5);
    }

    #[test]
    fn an_inverted_window_renews_immediately_rather_than_panicking() {
        let start = UNIX_EPOCH + 1000 * DAY;
        assert_eq!(renew_at(start, start - DAY, 0.5), start);
    }

    proptest! {
        #[test]
        fn renewal_always_falls_within_forty_to_sixty_percent(
            lifetime in 1u64..10_000_000, jitter in proptest::num::f64::ANY,
        ) {
            let start = UNIX_EPOCH + 1000 * DAY;
            let end = start + Duration::from_secs(lifetime);
            let at = renew_at(start, end, jitter).duration_since(start).unwrap().as_secs_f64();
            let lifetime = lifetime as f64;
            prop_assert!(at >= lifetime * 0.4 - 1e-6 && at <= lifetime * 0.6 + 1e-6);
        }
    }
}
