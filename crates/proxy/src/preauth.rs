//! Connections that have proven nothing yet: an HBONE connection before its mTLS handshake
//! completes, a captured plaintext connection before its opening bytes are judged. Each holds
//! a connection slot like any other, so a flood of silent ones could fill a listener and lock
//! every other client out (issue #11, item 6). Two defences, decided purely here and applied
//! by the listeners:
//!
//! - a deadline that shrinks as such connections fill the listener: the full `timeout` while
//!   they hold few of the slots still to be had, falling linearly to `floor` once they hold
//!   three quarters, so under a flood every slot turns over within `floor`;
//! - a cap on how many may wait at once from one source address; more are closed at accept.
//!
//! Flow: accept → [`Gate::admit`] (or close, counted) → the handshake or first read
//! [`within`] the shrinking deadline (or close, counted) → proven: the [`Waiting`] ticket is
//! dropped on every path and the connection no longer counts.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long a connection may take to prove itself, and how many may wait from one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreAuthLimits {
    /// The time allowed while few connections wait.
    pub timeout: Duration,
    /// The time allowed once waiting connections hold three quarters of the slots still to be
    /// had. Never more than `timeout` (a larger floor is read as `timeout`).
    pub floor: Duration,
    /// Connections one source address may have waiting at once; further ones are closed at
    /// accept.
    pub per_source: usize,
}

impl Default for PreAuthLimits {
    /// 10 s when quiet: Istio's default `connectTimeout`, and zmesh's HTTP header timeout, so
    /// a slow but honest peer far away is never cut short while nothing presses. 1 s under a
    /// flood: a TLS 1.3 handshake or a client's first request takes one round trip (well under
    /// 100 ms across regions), so only silent clients lose it. 64 per source: a peer proxy pools
    /// its HBONE connections and a client sends at once, so an honest source rarely has more
    /// than a few unproven connections at a time, while a flood needs 64 sources (4096 slots)
    /// to fill a listener.
    fn default() -> Self {
        PreAuthLimits { timeout: Duration::from_secs(10), floor: Duration::from_secs(1), per_source: 64 }
    }
}

/// The share of the slots still to be had (waiting + free) that waiting connections must hold
/// for the deadline to reach its floor, as a fraction: three quarters.
const FULL_PRESSURE: (u128, u128) = (3, 4);

/// How often a waiting connection looks at the pressure again, so that one that started while
/// the listener was quiet still loses its time once a flood arrives. Twice a second keeps the
/// wake-ups of thousands of waiting connections cheap.
const RECHECK: Duration = Duration::from_millis(500);

/// How full one listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Connections that have not proven themselves yet.
    pub waiting: usize,
    /// Connection slots no one holds: what new clients can still get.
    pub free: usize,
}

impl PreAuthLimits {
    /// The time a connection may take to prove itself when the listener is as full as
    /// `occupancy` says: `timeout` with nothing waiting, down in a straight line to `floor` as
    /// waiting connections reach three quarters of `waiting + free`, `floor` beyond. Measured
    /// against the slots still to be had rather than all of them, so that a listener mostly
    /// held by proven connections turns its last slots over quickly too.
    pub fn timeout_for(&self, occupancy: Occupancy) -> Duration {
        let obtainable = occupancy.waiting as u128 + occupancy.free as u128;
        let floor = self.floor.min(self.timeout);
        if obtainable == 0 {
            return self.timeout;
        }
        let (numerator, denominator) = FULL_PRESSURE;
        // waiting / obtainable as a share of 3/4, capped at 1.
        let full = obtainable * numerator;
        let reached = (occupancy.waiting as u128 * denominator).min(full);
        let span = (self.timeout - floor).as_nanos();
        let cut = u64::try_from(span * reached / full).unwrap_or(u64::MAX);
        self.timeout.saturating_sub(Duration::from_nanos(cut)).max(floor)
    }

    /// What is left of a connection's time after it has waited `waited`; `None` once it is up.
    pub fn remaining(&self, waited: Duration, occupancy: Occupancy) -> Option<Duration> {
        self.timeout_for(occupancy).checked_sub(waited).filter(|left| !left.is_zero())
    }

    /// Whether a source that already has `waiting_from_source` unproven connections may open
    /// one more.
    pub fn admits(&self, waiting_from_source: usize) -> bool {
        waiting_from_source < self.per_source
    }
}

/// One listener's unproven connections: how many there are, per source and in all.
#[derive(Debug)]
pub struct Gate {
    /// Names the listener in the refusal counter (`hbone`, `inbound_capture`).
    listener: &'static str,
    limits: PreAuthLimits,
    /// The listener's connection slots, whose free count is half of the pressure.
    slots: Arc<Semaphore>,
    /// Entries exist only while non-zero, so the map is never larger than the connections
    /// waiting (themselves bounded by the slots).
    by_source: Mutex<HashMap<IpAddr, usize>>,
    waiting: AtomicUsize,
    metrics: Option<Arc<Metrics>>,
}

/// Why a connection was closed before it proved itself (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source had `per_source` connections waiting already.
    PerSourceLimit,
    /// Its handshake or opening bytes did not arrive in time.
    Timeout,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::PerSourceLimit => "per_source_limit",
            Refused::Timeout => "timeout",
        }
    }
}

impl Gate {
    /// A gate for the listener whose connection slots are `slots`; refusals are counted in
    /// `metrics` as `zmesh_connections_refused_total{listener, reason}` when given.
    pub fn new(
        listener: &'static str,
        limits: PreAuthLimits,
        slots: Arc<Semaphore>,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Gate> {
        Arc::new(Gate { listener, limits, slots, by_source: Mutex::default(), waiting: AtomicUsize::new(0), metrics })
    }

    /// A ticket for a connection from `source` that has just been accepted, or `None` (counted)
    /// when its source has too many waiting already: the caller closes it at once.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Waiting> {
        // An IPv4 client of a dual-stack socket appears as `::ffff:a.b.c.d`; it is the same
        // source as `a.b.c.d`.
        let source = source.to_canonical();
        let mut by_source = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = by_source.get(&source).copied().unwrap_or(0);
        if !self.limits.admits(from_source) {
            drop(by_source);
            self.count(Refused::PerSourceLimit);
            return None;
        }
        by_source.insert(source, from_source + 1);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Some(Waiting { gate: Arc::clone(self), source, started: Instant::now() })
    }

    /// How full the listener is now.
    pub fn occupancy(&self) -> Occupancy {
        Occupancy { waiting: self.waiting.load(Ordering::Relaxed), free: self.slots.available_permits() }
    }

    /// Unproven connections from `source` now.
    pub fn waiting_from(&self, source: IpAddr) -> usize {
        let by_source = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        by_source.get(&source.to_canonical()).copied().unwrap_or(0)
    }

    fn count(&self, reason: Refused) {
        if let Some(metrics) = &self.metrics {
            let labels = vec![("listener", self.listener.to_owned()), ("reason", reason.label().to_owned())];
            metrics.add("zmesh_connections_refused_total", labels, 1);
        }
    }

    fn release(&self, source: IpAddr) {
        let mut by_source = self.by_source.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                by_source.remove(&source);
            }
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One unproven connection's place in its [`Gate`]; dropping it (proven, failed, timed out,
/// cancelled) gives the place back.
#[derive(Debug)]
pub struct Waiting {
    gate: Arc<Gate>,
    source: IpAddr,
    started: Instant,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gate.release(self.source);
    }
}

/// The handshake or opening read `work` of the connection `waiting` stands for, given up when
/// its time runs out (counted); the time is looked at again every [`RECHECK`] as the pressure
/// changes.
pub async fn within<F: Future>(waiting: &Waiting, work: F) -> Result<F::Output, TimedOut> {
    let gate = &waiting.gate;
    let mut work = std::pin::pin!(work);
    loop {
        let waited = waiting.started.elapsed();
        let Some(left) = gate.limits.remaining(waited, gate.occupancy()) else {
            gate.count(Refused::Timeout);
            return Err(TimedOut { waited });
        };
        tokio::select! {
            biased;
            done = &mut work => return Ok(done),
            () = tokio::time::sleep(left.min(RECHECK)) => {}
        }
    }
}

/// A connection did not prove itself in the time it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nothing proven after {waited:?}")]
pub struct TimedOut {
    pub waited: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PreAuthLimits {
        PreAuthLimits { timeout: Duration::from_secs(10), floor: Duration::from_secs(1), per_source: 2 }
    }

    fn occupancy(waiting: usize, free: usize) -> Occupancy {
        Occupancy { waiting, free }
    }

    #[test]
    fn a_quiet_listener_gives_the_full_timeout() {
        assert_eq!(limits().timeout_for(occupancy(0, 4096)), Duration::from_secs(10));
        assert_eq!(limits().timeout_for(occupancy(0, 0)), Duration::from_secs(10));
    }

    #[test]
    fn the_timeout_falls_linearly_to_the_floor_at_three_quarters_full() {
        // A quarter of 3/4 reached cuts a quarter of the 9 s between timeout and floor.
        assert_eq!(limits().timeout_for(occupancy(3, 13)), Duration::from_millis(7_750));
        assert_eq!(limits().timeout_for(occupancy(6, 10)), Duration::from_millis(5_500));
        assert_eq!(limits().timeout_for(occupancy(12, 4)), Duration::from_secs(1));
        assert_eq!(limits().timeout_for(occupancy(16, 0)), Duration::from_secs(1), "never below the floor");
        let mut previous = Duration::MAX;
        for waiting in 0..=100 {
            let timeout = limits().timeout_for(occupancy(waiting, 100 - waiting));
            assert!(timeout <= previous, "more waiting never gives more time ({waiting})");
            previous = timeout;
        }
    }

    #[test]
    fn slots_held_by_proven_connections_count_as_gone() {
        // 4 waiting out of 4096 slots, but only 1 free: the last slots must turn over fast.
        assert_eq!(limits().timeout_for(occupancy(4, 1)), Duration::from_secs(1));
        assert!(limits().timeout_for(occupancy(4, 4092)) > Duration::from_millis(9_900));
    }

    #[test]
    fn a_floor_above_the_timeout_leaves_the_timeout() {
        let limits = PreAuthLimits { floor: Duration::from_secs(30), ..limits() };
        assert_eq!(limits.timeout_for(occupancy(100, 0)), Duration::from_secs(10));
    }

    #[test]
    fn time_left_shrinks_with_the_time_waited_and_with_pressure() {
        let limits = limits();
        assert_eq!(limits.remaining(Duration::from_secs(4), occupancy(0, 100)), Some(Duration::from_secs(6)));
        assert_eq!(limits.remaining(Duration::from_secs(10), occupancy(0, 100)), None);
        assert_eq!(limits.remaining(Duration::from_secs(4), occupancy(75, 25)), None, "a flood cuts it to 1 s");
        assert_eq!(limits.remaining(Duration::from_millis(400), occupancy(75, 25)), Some(Duration::from_millis(600)));
    }

    #[test]
    fn a_source_is_admitted_up_to_its_cap_and_others_still_are() {
        let gate = Gate::new("test", limits(), Arc::new(Semaphore::new(16)), None);
        let flooder: IpAddr = "127.0.0.2".parse().expect("address");
        let other: IpAddr = "127.0.0.1".parse().expect("address");
        let first = gate.admit(flooder).expect("first");
        let second = gate.admit(flooder).expect("second");
        assert!(gate.admit(flooder).is_none(), "a third from the same source is refused");
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("address");
        assert!(gate.admit(mapped).is_none(), "the same source over a dual-stack socket is refused too");
        let _honest = gate.admit(other).expect("another source is not affected");
        assert_eq!(gate.occupancy().waiting, 3);
        drop(first);
        assert_eq!(gate.waiting_from(flooder), 1);
        let _third = gate.admit(flooder).expect("a released place is free again");
        drop(second);
        assert_eq!(gate.occupancy().waiting, 2);
    }

    #[test]
    fn refusals_are_counted_by_listener_and_reason() {
        let metrics = Arc::new(Metrics::default());
        let limits = PreAuthLimits { per_source: 0, ..limits() };
        let gate = Gate::new("hbone", limits, Arc::new(Semaphore::new(1)), Some(metrics.clone()));
        assert!(gate.admit("10.0.0.1".parse().expect("address")).is_none());
        assert!(
            metrics
                .render()
                .contains("zmesh_connections_refused_total{listener=\"hbone\",reason=\"per_source_limit\"} 1"),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_given_up_at_the_timeout_and_its_place_released() {
        let gate = Gate::new("test", limits(), Arc::new(Semaphore::new(100)), None);
        let waiting = gate.admit("10.0.0.1".parse().expect("address")).expect("admitted");
        let started = Instant::now();
        let result = within(&waiting, std::future::pending::<()>()).await;
        // It counts itself as waiting, which takes a sliver off the 10 s.
        let waited = result.expect_err("nothing ever arrives").waited;
        assert!(waited > Duration::from_millis(9_800) && waited <= Duration::from_secs(10), "{waited:?}");
        assert_eq!(started.elapsed(), waited);
        drop(waiting);
        assert_eq!(gate.occupancy().waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_arriving_later_shortens_the_wait_of_a_connection_already_waiting() {
        let slots = Arc::new(Semaphore::new(8));
        let gate = Gate::new("test", PreAuthLimits { per_source: 100, ..limits() }, slots.clone(), None);
        let early = gate.admit("10.0.0.1".parse().expect("address")).expect("admitted");
        let flood = tokio::spawn({
            let (gate, slots) = (gate.clone(), slots.clone());
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Seven silent connections take seven of the eight slots and wait.
                let held: Vec<_> = (0..7)
                    .map(|_| {
                        let slot = slots.clone().try_acquire_owned().expect("a free slot");
                        (slot, gate.admit("10.0.0.9".parse().expect("address")).expect("admitted"))
                    })
                    .collect();
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(held);
            }
        });
        let started = Instant::now();
        let result = within(&early, std::future::pending::<()>()).await;
        assert!(result.is_err());
        // The flood came at 2 s and cut its time to 1 s, noticed at the next recheck.
        assert!(started.elapsed() <= Duration::from_millis(2_500), "{:?}", started.elapsed());
        flood.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_in_time_is_returned() {
        let gate = Gate::new("test", limits(), Arc::new(Semaphore::new(100)), None);
        let waiting = gate.admit("10.0.0.1".parse().expect("address")).expect("admitted");
        let work = async {
            tokio::time::sleep(Duration::from_secs(9)).await;
            7
        };
        assert_eq!(within(&waiting, work).await, Ok(7));
    }
}
