//! zmesh-ca: the certificate authority of the mesh, as a library.
//!
//! No async, no network and no clock reads: every operation takes `now`, and everything random
//! (keys, serials) comes from a `&dyn ring::rand::SecureRandom` the caller passes. The control
//! plane wraps it in the signing service, the CLI in `zmesh ca …`.
//!
//! - [`CertificateAuthority`]: opened from a directory in Istio's plugged-in CA layout
//!   (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), generating a root on first
//!   start; signs [`Csr`]s into [`IssuedSvid`]s for the identity the caller proved.
//! - [`rotation`]: staged root rotation (prepare → activate → retire).
//! - [`renewal`]: when a workload should renew.
//! - [`inspect_pem`]: what `zmesh cert inspect` shows.
//! - [`generate_csr`]: the workload side of signing.

mod authority;
mod chain;
mod clock;
mod csr;
mod error;
mod inspect;
mod keys;
mod pem;
pub mod renewal;
mod root;
pub mod rotation;
mod signing;
mod store;
#[cfg(test)]
mod test_support;

pub use authority::{CaConfig, CertificateAuthority, DEFAULT_MAX_SVID_TTL, DEFAULT_SVID_TTL, Opened};
pub use clock::Rfc3339;
pub use csr::{Csr, generate_csr};
pub use error::{CaError, CaErrorKind};
pub use inspect::{CertInfo, inspect_der, inspect_pem};
pub use keys::KeyAlgorithm;
pub use pem::PrivateKeyPem;
pub use renewal::{renew_at, seconds_to_expiry, should_renew};
pub use root::ROOT_VALIDITY;
pub use rotation::{RetireCheck, RotationStage, RotationStatus, RotationStep};
pub use signing::{CLOCK_SKEW, IssuedSvid};
pub use store::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
