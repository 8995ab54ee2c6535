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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::NamedGroup;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::server::ProducesTickets;
use rustls::time_provider::TimeProvider;
use rustls_pki_types::ServerName;

use crate::store::CertStore;

/// How long a ticket resumes a session: short next to an SVID's life (hours), so a session
/// never lasts long past the certificate it was verified with, and long enough that proxies
/// which reconnect often almost never need a full handshake.
pub const TICKET_LIFETIME: u32 = 10 * 60;

/// Servers a client config (one per set of expected peers) keeps sessions for: every proxy of a
/// large destination service.
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
///
/// Tickets are single-use, so a proxy that opens several connections to one peer at once needs
/// several in stock; rustls' own cache keeps 8 per server, which a burst of dials to a busy
/// peer runs through (the rest pay for full handshakes). This one keeps
/// [`TICKETS_PER_SERVER`].
pub(crate) struct GenerationSessions {
    store: Arc<CertStore>,
    current: Mutex<Sessions>,
}

/// Tickets kept per server (each about a kilobyte: it carries the server's certificate chain).
const TICKETS_PER_SERVER: usize = 32;

#[derive(Default)]
struct Sessions {
    generation: u64,
    servers: HashMap<ServerName<'static>, Server>,
}

#[derive(Default)]
struct Server {
    kx_hint: Option<NamedGroup>,
    /// Oldest first.
    tickets: VecDeque<Tls13ClientSessionValue>,
}

impl GenerationSessions {
    pub(crate) fn new(store: Arc<CertStore>) -> Self {
        let generation = store.generation();
        Self { store, current: Mutex::new(Sessions { generation, servers: HashMap::new() }) }
    }

    /// Work on the sessions saved under the current generation (none, after it moved on).
    fn with<T>(&self, work: impl FnOnce(&mut HashMap<ServerName<'static>, Server>) -> T) -> T {
        let generation = self.store.generation();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.generation != generation {
            *current = Sessions { generation, servers: HashMap::new() };
        }
        work(&mut current.servers)
    }

    /// The entry of `server_name`, making room for it among [`CLIENT_SESSIONS`] servers.
    fn server<'a>(
        servers: &'a mut HashMap<ServerName<'static>, Server>,
        server_name: ServerName<'static>,
    ) -> &'a mut Server {
        if servers.len() >= CLIENT_SESSIONS && !servers.contains_key(&server_name) {
            // Any one: a dropped server costs one full handshake, later.
            if let Some(evicted) = servers.keys().next().cloned() {
                servers.remove(&evicted);
            }
        }
        servers.entry(server_name).or_default()
    }
}

impl ClientSessionStore for GenerationSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.with(|servers| Self::server(servers, server_name).kx_hint = Some(group));
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.with(|servers| servers.get(&server_name.to_owned()).and_then(|s| s.kx_hint))
    }

    // Mesh connections are TLS 1.3 only; a TLS 1.2 session is never made or used.
    fn set_tls12_session(&self, _server_name: ServerName<'static>, _value: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _server_name: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.with(|servers| {
            let tickets = &mut Self::server(servers, server_name).tickets;
            if tickets.len() == TICKETS_PER_SERVER {
                tickets.pop_front();
            }
            tickets.push_back(value);
        });
    }

    /// The newest ticket: the furthest from expiring.
    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.with(|servers| servers.get_mut(server_name).and_then(|s| s.tickets.pop_back()))
    }
}

impl fmt::Debug for GenerationSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerationSessions").finish_non_exhaustive()
    }
}
