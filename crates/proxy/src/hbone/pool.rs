//! Pooled HTTP/2 connections to peer proxies, keyed by (proxy address, expected identities).
//!
//! The identities are part of the key because they are part of the TLS verification: a
//! connection verified for one set must not carry tunnels meant for another. A connection
//! carries up to `max_streams` tunnels; past that, or once it is closed (GOAWAY, error, peer
//! gone), the next checkout dials another. Dialing holds the key's lock, so a burst of connects
//! to a new destination makes one connection rather than one each.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
}

impl Connection {
    pub(crate) fn new(sender: SendRequest<Empty<Bytes>>, peer: SpiffeId, tls_failure: TlsFailure) -> Self {
        Self { sender, peer, tls_failure, open_streams: Arc::default() }
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

#[derive(Default)]
pub(crate) struct Pool {
    // A std mutex: held only to find the key's entry, never across an await.
    by_key: Mutex<HashMap<PoolKey, Arc<Entry>>>,
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
        let entry = self.entry(key);
        let failures_before = entry.failed_dials.load(Ordering::Acquire);
        let mut state = entry.state.lock().await;
        state.connections.retain(|connection| !connection.sender.is_closed());
        let free =
            state.connections.iter().find(|connection| connection.open_streams.load(Ordering::Relaxed) < max_streams);
        if let Some(connection) = free {
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

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.by_key.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Pool").field("keys", &keys).finish_non_exhaustive()
    }
}
