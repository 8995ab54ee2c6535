//! zmesh-control: the control plane.
//!
//! Configuration flows one way: the config store (`store`, files today) accepts a change only
//! when it is valid as a whole → `snapshot` indexes the accepted documents per workload →
//! `push` streams each proxy its slice incrementally and tracks ACK/NACK → `status` serves the
//! whole picture on 15014, with `observe` (what the proxies' metrics say: plaintext, denials,
//! traffic) and `dashboard` (the security dashboard, HTML). Next to it, the CA's signing
//! service (`ca_service`, `tokens`, `ratelimit`); `channel` serves both over TLS and says who is
//! calling; `plane` runs them all as one process.

pub mod ca_service;
pub mod channel;
pub mod dashboard;
pub mod memory;
pub mod observe;
pub mod plane;
pub mod push;
pub mod ratelimit;
pub mod snapshot;
pub mod status;
pub mod store;
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
