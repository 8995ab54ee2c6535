//! TLS 1.3 session resumption, bound to the certificates a session was verified under.
//!
//! A resumed handshake presents no certificate and verifies none: the peer proves it holds the
//! secret of an earlier full handshake, and the identity verified then carries over (rustls
//! keeps the peer's chain in the session). That is what makes a new connection between two
//! proxies that know each other cheap — no signature, no chain verification — and also why a
//! session must not outlive what it was verified against. So every session and ticket belongs to
//! one [`CertStore::generation`]: when the SVID or the trust bundle changes, the server's ticket
//! key is replaced (older tickets no longer decrypt) and the client's saved sessions are dropped,
//! and the next handshake is a full one against the new certificates. Tickets also expire after
//! [`TICKET_LIFETIME`], checked by the server, whatever the client claims.
//!
//! Tickets are stateless (the session is sealed into the ticket under a key that never leaves the
//! process), so resumption costs the server no memory per session.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::NamedGroup;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::server::ProducesTickets;
use rustls::time_provider::TimeProvider;
use rustls_pki_types::ServerName;

use crate::store::CertStore;

/// How long a ticket resumes a session: short next to an SVID's life (hours), so a session
/// never lasts long past the certificate it was verified with, and long enough that proxies
/// which reconnect often almost never need a full handshake.
pub const TICKET_LIFETIME: u32 = 10 * 60;

/// Saved sessions per client config (one per set of expected peers): enough for every proxy of
/// a destination service to be resumed with, for a few tickets each.
const CLIENT_SESSIONS: usize = 256;

/// Seals sessions into tickets under a key of the store's current generation.
pub(crate) struct GenerationTickets {
    store: Arc<CertStore>,
    clock: Arc<dyn TimeProvider>,
    current: Mutex<Sealer>,
}

struct Sealer {
    generation: u64,
    /// `None` when no key could be made (no randomness): then no ticket is issued.
    tickets: Option<Arc<dyn ProducesTickets>>,
}

impl GenerationTickets {
    pub(crate) fn new(store: Arc<CertStore>, clock: Arc<dyn TimeProvider>) -> Self {
        let generation = store.generation();
        Self { store, clock, current: Mutex::new(Sealer { generation, tickets: new_ticketer() }) }
    }

    /// The sealer of the store's current generation (a new key when the generation moved on).
    fn sealer(&self) -> Option<Arc<dyn ProducesTickets>> {
        let generation = self.store.generation();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.generation != generation {
            *current = Sealer { generation, tickets: new_ticketer() };
        }
        current.tickets.clone()
    }

    fn now(&self) -> Option<u64> {
        self.clock.current_time().map(|t| t.as_secs())
    }
}

fn new_ticketer() -> Option<Arc<dyn ProducesTickets>> {
    #[cfg(feature = "aws-lc-rs")]
    let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(not(feature = "aws-lc-rs"))]
    let ticketer = rustls::crypto::ring::Ticketer::new();
    ticketer.ok()
}

impl ProducesTickets for GenerationTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME
    }

    /// The issue time goes inside the sealed ticket, so the server enforces the lifetime itself.
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let issued = self.now()?;
        let mut stamped = Vec::with_capacity(8 + plain.len());
        stamped.extend_from_slice(&issued.to_be_bytes());
        stamped.extend_from_slice(plain);
        self.sealer()?.encrypt(&stamped)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let stamped = self.sealer()?.decrypt(cipher)?;
        let (issued, plain) = stamped.split_first_chunk::<8>()?;
        let age = self.now()?.checked_sub(u64::from_be_bytes(*issued))?;
        (age <= u64::from(TICKET_LIFETIME)).then(|| plain.to_vec())
    }
}

impl fmt::Debug for GenerationTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationTickets").field("lifetime", &TICKET_LIFETIME).finish_non_exhaustive()
    }
}

/// A client's saved sessions, all of the store's current generation.
pub(crate) struct GenerationSessions {
    store: Arc<CertStore>,
    current: Mutex<(u64, Arc<ClientSessionMemoryCache>)>,
}

impl GenerationSessions {
    pub(crate) fn new(store: Arc<CertStore>) -> Self {
        let generation = store.generation();
        Self { store, current: Mutex::new((generation, Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)))) }
    }

    /// The sessions saved under the current generation (none, after it moved on).
    fn sessions(&self) -> Arc<ClientSessionMemoryCache> {
        let generation = self.store.generation();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            *current = (generation, Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)));
        }
        Arc::clone(&current.1)
    }
}

impl ClientSessionStore for GenerationSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.sessions().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.sessions().kx_hint(server_name)
    }

    // Mesh connections are TLS 1.3 only; a TLS 1.2 session is never made or used.
    fn set_tls12_session(&self, _server_name: ServerName<'static>, _value: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.sessions().insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.sessions().take_tls13_ticket(server_name)
    }
}

impl fmt::Debug for GenerationSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationSessions").finish_non_exhaustive()
    }
}
