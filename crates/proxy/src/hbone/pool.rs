//! Pooled HTTP/2 connections to peer proxies, keyed by (proxy address, expected identities).
//!
//! The identities are part of the key because they are part of the TLS verification: a
//! connection verified for one set must not carry tunnels meant for another. A connection
//! carries up to `max_streams` tunnels; past that, or once it is closed (GOAWAY, error, peer
//! gone), the next checkout dials another. Dialing holds the key's lock, so a burst of connects
//! to a new destination makes one connection rather than one each.
//!
//! Idle connections are forgotten: a sweep every [`IDLE_SWEEP`] closes the connections that
//! carried no tunnel at two sweeps in a row, and drops the keys left with none, so peers the
//! workload stopped talking to hold no connection, task or memory here.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use zmesh_id::SpiffeId;
use zmesh_tls::ExpectedPeers;

use super::error::HboneError;
use super::tls_watch::TlsFailure;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) proxy: SocketAddr,
    /// Sorted, so that the same set in another order shares connections.
    pub(crate) expected: Vec<SpiffeId>,
}

impl PoolKey {
    pub(crate) fn new(proxy: SocketAddr, expected: &ExpectedPeers) -> Self {
        let mut ids = expected.ids().to_vec();
        ids.sort();
        Self { proxy, expected: ids }
    }
}

/// One established mTLS HTTP/2 connection to a peer proxy.
pub(crate) struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    /// The peer proxy's SPIFFE ID, as verified in the handshake.
    peer: SpiffeId,
    tls_failure: TlsFailure,
    open_streams: Arc<AtomicUsize>,
    /// Sweeps in a row that found no tunnel on this connection.
    idle_sweeps: AtomicU8,
}

/// How often idle connections are looked for; one idle for two sweeps in a row is closed.
pub(crate) const IDLE_SWEEP: Duration = Duration::from_secs(120);

impl Connection {
    pub(crate) fn new(sender: SendRequest<Empty<Bytes>>, peer: SpiffeId, tls_failure: TlsFailure) -> Self {
        Self { sender, peer, tls_failure, open_streams: Arc::default(), idle_sweeps: AtomicU8::new(0) }
    }

    pub(crate) fn lease(&self, reused: bool) -> Lease {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        Lease {
            sender: self.sender.clone(),
            peer: self.peer.clone(),
            tls_failure: Arc::clone(&self.tls_failure),
            reused,
            slot: StreamSlot(Arc::clone(&self.open_streams)),
        }
    }
}

/// A connection lent to one tunnel. It counts against the connection's streams until the slot
/// is dropped, which is when the tunnel is.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(crate) sender: SendRequest<Empty<Bytes>>,
    pub(crate) peer: SpiffeId,
    pub(crate) tls_failure: TlsFailure,
    /// Whether the connection carried tunnels before: only then may a failure be the stale-pool
    /// kind (a GOAWAY not noticed yet) that one retry on a new connection fixes.
    pub(crate) reused: bool,
    pub(crate) slot: StreamSlot,
}

#[derive(Debug)]
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connections to one key, and what the last dial to it came to.
#[derive(Default)]
struct Entry {
    state: tokio::sync::Mutex<EntryState>,
    /// Counts failed dials, so that a connect queued behind one learns it failed.
    failed_dials: AtomicU64,
}

#[derive(Default)]
struct EntryState {
    connections: Vec<Connection>,
    last_failure: Option<HboneError>,
}

type Entries = Mutex<HashMap<PoolKey, Arc<Entry>>>;

#[derive(Default)]
pub(crate) struct Pool {
    // A std mutex: held only to find the key's entry, never across an await.
    by_key: Arc<Entries>,
    sweeping: AtomicBool,
}

impl Pool {
    /// A connection for `key` with a free stream, dialing one if there is none.
    ///
    /// A connect that waited while another dialed the same key and failed gets that failure
    /// instead of dialing again: otherwise a burst of connects to an unreachable peer would
    /// wait out one connect timeout each, in turn.
    pub(crate) async fn checkout<Dial, Dialed>(
        &self,
        key: &PoolKey,
        max_streams: usize,
        dial: Dial,
    ) -> Result<Lease, HboneError>
    where
        Dial: FnOnce() -> Dialed,
        Dialed: Future<Output = Result<Connection, HboneError>>,
    {
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep_until_dropped(Arc::downgrade(&self.by_key)));
        }
        let entry = self.entry(key);
        let failures_before = entry.failed_dials.load(Ordering::Acquire);
        let mut state = entry.state.lock().await;
        state.connections.retain(|connection| !connection.sender.is_closed());
        let free =
            state.connections.iter().find(|connection| connection.open_streams.load(Ordering::Relaxed) < max_streams);
        if let Some(connection) = free {
            connection.idle_sweeps.store(0, Ordering::Relaxed);
            return Ok(connection.lease(true));
        }
        if entry.failed_dials.load(Ordering::Acquire) != failures_before
            && let Some(failure) = &state.last_failure
        {
            return Err(failure.clone());
        }
        match dial().await {
            Ok(connection) => {
                let lease = connection.lease(false);
                state.connections.push(connection);
                state.last_failure = None;
                Ok(lease)
            }
            Err(failure) => {
                state.last_failure = Some(failure.clone());
                entry.failed_dials.fetch_add(1, Ordering::Release);
                Err(failure)
            }
        }
    }

    /// Forget the connection behind `lease`, so the next checkout dials a new one.
    pub(crate) async fn evict(&self, key: &PoolKey, lease: &Lease) {
        let entry = self.entry(key);
        let mut state = entry.state.lock().await;
        state.connections.retain(|connection| !Arc::ptr_eq(&connection.open_streams, &lease.slot.0));
    }

    fn entry(&self, key: &PoolKey) -> Arc<Entry> {
        let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(by_key.entry(key.clone()).or_default())
    }
}

/// Sweeps the pool every [`IDLE_SWEEP`] while it exists.
async fn sweep_until_dropped(entries: Weak<Entries>) {
    loop {
        tokio::time::sleep(IDLE_SWEEP).await;
        let Some(entries) = entries.upgrade() else { return };
        sweep(&entries);
    }
}

/// One sweep: a connection without tunnels now and at the previous sweep is dropped (its
/// task ends once no tunnel holds it); a key left without connections, and that no checkout
/// is using, is forgotten. Entries a checkout holds locked are left for the next sweep.
fn sweep(entries: &Entries) {
    let mut by_key = entries.lock().unwrap_or_else(PoisonError::into_inner);
    by_key.retain(|_, entry| {
        let Ok(mut state) = entry.state.try_lock() else { return true };
        state.connections.retain(|connection| {
            if connection.sender.is_closed() {
                return false;
            }
            if connection.open_streams.load(Ordering::Relaxed) > 0 {
                connection.idle_sweeps.store(0, Ordering::Relaxed);
                return true;
            }
            connection.idle_sweeps.fetch_add(1, Ordering::Relaxed) < 1
        });
        let unused = state.connections.is_empty() && Arc::strong_count(entry) == 1;
        drop(state);
        !unused
    });
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.by_key.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Pool").field("keys", &keys).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live HTTP/2 connection over an in-memory pipe, as the pool holds one.
    async fn connection() -> Connection {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_request: hyper::Request<hyper::body::Incoming>| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
            });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .await;
        });
        let (sender, driver) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(client),
        )
        .await
        .expect("handshake");
        tokio::spawn(driver);
        let peer: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().expect("id");
        Connection::new(sender, peer, TlsFailure::default())
    }

    fn key(port: u16) -> PoolKey {
        PoolKey { proxy: SocketAddr::from(([127, 0, 0, 1], port)), expected: Vec::new() }
    }

    #[tokio::test]
    async fn idle_connections_and_their_keys_are_forgotten_after_two_sweeps_busy_ones_are_kept() {
        let pool = Pool::default();
        let idle = pool.checkout(&key(1), 10, || async { Ok(connection().await) }).await.expect("checkout");
        let busy = pool.checkout(&key(2), 10, || async { Ok(connection().await) }).await.expect("checkout");
        drop(idle);
        sweep(&pool.by_key);
        assert_eq!(pool.by_key.lock().expect("lock").len(), 2, "one idle sweep is not enough");
        sweep(&pool.by_key);
        let keys: Vec<PoolKey> = pool.by_key.lock().expect("lock").keys().cloned().collect();
        assert_eq!(keys, [key(2)], "the idle key is gone, the one with a tunnel stays");
        drop(busy);
        sweep(&pool.by_key);
        sweep(&pool.by_key);
        assert!(pool.by_key.lock().expect("lock").is_empty());
    }
}
