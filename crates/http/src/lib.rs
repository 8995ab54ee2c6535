//! Sans-IO HTTP/1.1 request heads and request paths, accepted and rejected exactly as Envoy
//! does when Istio configures it as a sidecar's inbound HTTP listener.
//!
//! Flow: bytes → [`parse_request_head`] (Envoy's Balsa framer, its HTTP/1 codec, and the
//! connection manager's checks that run before any filter) → [`RequestHead`] →
//! [`normalize_path`] with the mesh's [`PathNormalization`] → the path that routing and
//! authorization see.
//!
//! Every refusal is a [`RequestError`] that knows the status Envoy answers with and the
//! `%RESPONSE_CODE_DETAILS%` string it logs, so a proxy can reply the same way and a
//! conformance test can compare both.

mod error;
mod head;
mod headers;
mod method;
mod normalize;
mod parse;

pub use error::RequestError;
pub use head::{BodyFraming, RequestHead, RequestTarget, Upgrade, Version};
pub use headers::{Header, Headers};
pub use method::Method;
pub use normalize::{PathNormalization, normalize_path};
pub use parse::{Limits, parse_request_head};
