//! A token bucket per caller: a misbehaving workload cannot make the CA sign in a loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zmesh_id::SpiffeId;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct PerCallerLimit {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<SpiffeId, Bucket>>,
}

impl PerCallerLimit {
    /// `burst` requests at once, refilled at `per_second`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        PerCallerLimit { per_second, burst: f64::from(burst), buckets: Mutex::new(HashMap::new()) }
    }

    /// Take one token for `caller` at `now`; `Err(wait)` says how long until one is available.
    pub fn check(&self, caller: &SpiffeId, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bound memory: forget callers whose bucket has long been full again.
        if buckets.len() > 100_000 {
            let full_after = Duration::from_secs_f64(self.burst / self.per_second);
            buckets.retain(|_, b| now.saturating_duration_since(b.updated) < full_after);
        }
        let bucket = buckets.entry(caller.clone()).or_insert(Bucket { tokens: self.burst, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_burst_then_waits_for_refill() {
        let limit = PerCallerLimit::new(2.0, 3);
        let caller: SpiffeId = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limit.check(&caller, start).is_ok());
        }
        let wait = limit.check(&caller, start).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO, "{wait:?}");
        assert!(limit.check(&caller, start + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn callers_do_not_share_a_bucket() {
        let limit = PerCallerLimit::new(1.0, 1);
        let now = Instant::now();
        assert!(limit.check(&"spiffe://td/ns/a/sa/one".parse().unwrap(), now).is_ok());
        assert!(limit.check(&"spiffe://td/ns/a/sa/two".parse().unwrap(), now).is_ok());
    }
}
