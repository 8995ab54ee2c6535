//! zmesh-proxy: the data plane.
//!
//! One proxy per workload: its identity (SVID fetched and rotated), its configuration (from
//! the control plane or local files, swapped whole), and its listeners — HBONE inbound,
//! plaintext inbound, outbound, health, metrics and admin. See `run` for how they fit.

pub mod admission;
pub mod capture;
pub mod config;
pub mod control_channel;
pub mod detect;
pub mod ext_authz;
pub mod forward;
pub mod hbone;
pub mod http2;
pub mod identity;
pub mod jwks;
pub mod l7;
pub mod local;
pub mod net;
pub mod observed;
pub mod preauth;
pub mod ratelimit;
pub mod run;
pub mod splice;
pub mod subscription;

pub use zmesh_telemetry::{endpoints as admin, metrics};
