//! Mesh mTLS between zmesh proxies: rustls configs built from a workload's SVID, with SPIFFE
//! peer verification and certificates that swap in place.
//!
//! Flow: load the SVID ([`Identity::from_pem`]) and the roots ([`TrustBundle::from_pem`]) → put
//! them in a [`CertStore`] → build [`server_config`] / [`client_config`] once → each handshake
//! reads the store's current SVID and bundle → after the handshake, [`peer_identity`] names the
//! peer. Rotation is `store.set_identity(..)` / `store.set_bundle(..)`; configs are not rebuilt.
//!
//! A peer is admitted when its chain leads to a root of the current bundle, it is valid at the
//! config's clock, its leaf is not a CA and carries exactly one URI SAN that is a SPIFFE ID in the
//! local trust domain or a configured alias, and — when dialing — that ID is one the destination
//! is expected to have.

mod bundle;
mod config;
mod control;
mod error;
mod identity;
mod resumption;
mod store;
mod time;
mod verify;

pub use bundle::{TrustBundle, TrustDomains};
pub use config::{ALPN_H2, TlsOptions, client_config, server_config};
pub use control::{
    CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT, ControlCredentials, control_client_config,
    control_plane_id, control_server_config, vouch,
};
pub use error::{PemInput, RootSubjects, Side, TlsError, Whose};
pub use identity::{Identity, peer_identity};
pub use resumption::TICKET_LIFETIME;
pub use store::CertStore;
pub use time::Timestamp;
pub use verify::ExpectedPeers;
