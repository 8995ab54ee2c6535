//! zmesh-control: the control plane.
//!
//! Today: the certificate-signing service (workloads prove who they are and get SVIDs).
//! The config store, registry and push come with the control-plane work.

pub mod ca_service;
pub mod push;
pub mod ratelimit;
pub mod store;
pub mod plane;
pub mod snapshot;
pub mod status;
pub mod tokens;

use std::time::Duration;

/// What went wrong, from the control plane's side.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("caller authentication failed: {0}")]
    BadToken(String),
    #[error("the bootstrap token key is {len} bytes; it must be at least 32 random bytes")]
    WeakTokenKey { len: usize },
    #[error("too many certificate requests from {caller}; retry in {retry_after:?}")]
    RateLimited { caller: String, retry_after: Duration },
}
