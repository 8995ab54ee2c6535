//! The one error type of the crate, and which side each failure belongs to.

use std::path::PathBuf;
use std::time::SystemTime;

use zmesh_id::{IdError, SpiffeId};

use crate::keys::KeyAlgorithm;
use crate::rotation::{RotationStage, RotationStep};

/// Why the CA refused or failed. Every message says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    // --- the CA directory -------------------------------------------------------------------
    #[error("cannot read {path}; check that it exists and that this process may read it")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}; check that the CA directory exists, is writable and its disk is not full")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CA key {path} is accessible by group or others (mode {mode:04o}); run `chmod 600 {path}` \
         (for a Kubernetes secret volume, set `defaultMode: 0600`)"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error(
        "CA directory {dir} holds only some of its files (missing: {missing}); restore them, or move the \
         directory aside to let zmesh generate a new root"
    )]
    IncompleteCaDir { dir: PathBuf, missing: String },
    #[error(
        "CA directory {dir} has an unreadable pending write ({detail}); remove {dir}/.pending after checking the CA files"
    )]
    BadJournal { dir: PathBuf, detail: String },

    // --- CA files that do not make a CA ------------------------------------------------------
    #[error("{path} holds no PEM `CERTIFICATE` block; it must hold {expected}")]
    NoCertificate { path: PathBuf, expected: &'static str },
    #[error(
        "{path} holds {count} certificates; it must hold only the signing certificate (put the rest in cert-chain.pem)"
    )]
    TooManyCaCerts { path: PathBuf, count: usize },
    #[error("certificate {index} in {path} cannot be parsed ({detail}); replace it with a valid X.509 certificate")]
    BadCertificate { path: PathBuf, index: usize, detail: String },
    #[error(
        "cannot use {path} as a CA key ({detail}); it must be an unencrypted PKCS#8 `PRIVATE KEY` (ECDSA P-256/P-384, \
         Ed25519 or RSA); convert one with `openssl pkcs8 -topk8 -nocrypt -in {path} -out {path}.pk8`"
    )]
    BadKey { path: PathBuf, detail: String },
    #[error("CA key {key_path} does not belong to the certificate in {cert_path}; plug in the matching pair")]
    KeyMismatch { key_path: PathBuf, cert_path: PathBuf },
    #[error("{path} ({subject}) is not a CA certificate: {reason}; plug in a certificate issued for signing")]
    NotCa { path: PathBuf, subject: String, reason: &'static str },
    #[error(
        "the first certificate of {chain_path} is not the one in {cert_path}; cert-chain.pem must start with ca-cert.pem"
    )]
    ChainDoesNotStartWithCaCert { chain_path: PathBuf, cert_path: PathBuf },
    #[error(
        "certificate {index} in {path} ({subject}) is not signed by certificate {next} ({next_subject}); \
         order cert-chain.pem from ca-cert up to the root"
    )]
    ChainBroken { path: PathBuf, index: usize, subject: String, next: usize, next_subject: String },
    #[error(
        "{chain_path} ends at {subject}, which is neither a root in {bundle_path} nor signed by one; \
         add the issuing root to root-cert.pem"
    )]
    ChainNotAnchored { chain_path: PathBuf, bundle_path: PathBuf, subject: String },
    #[error("{subject} in {path} expired at {}; plug in a renewed CA certificate", crate::clock::Rfc3339(*.not_after))]
    CertExpired { path: PathBuf, subject: String, not_after: SystemTime },
    #[error("{subject} in {path} is not valid until {}; check the clock, or wait", crate::clock::Rfc3339(*.not_before))]
    CertNotYetValid { path: PathBuf, subject: String, not_before: SystemTime },
    #[error(
        "leaves signed with {path} would not chain to it: its subject `{subject}` cannot be reproduced byte for byte; \
         re-issue the CA certificate with a plain subject (single-valued O=…, CN=…)"
    )]
    IssuerNameNotReproducible { path: PathBuf, subject: String },

    // --- CSRs ---------------------------------------------------------------------------------
    #[error(
        "cannot parse the CSR as a PEM or DER PKCS#10 request ({detail}); send the output of `zmesh ca csr` or `openssl req`"
    )]
    CsrParse { detail: String },
    #[error("the CSR's self-signature does not verify; the request was altered or not signed by the key it carries")]
    CsrSignature,
    #[error("the CSR is signed with {algorithm}, which is not accepted; sign it with SHA-256 or stronger")]
    WeakCsrSignature { algorithm: &'static str },
    #[error(
        "the CSR's key ({algorithm}) is not accepted: {reason}; use ECDSA P-256 (recommended), P-384, Ed25519 or RSA of 2048 to 8192 bits"
    )]
    KeyNotAccepted { algorithm: KeyAlgorithm, reason: &'static str },
    #[error("the CSR must ask for exactly one URI SAN (its SPIFFE ID) but asks for {count}")]
    CsrUriCount { count: usize },
    #[error("the CSR asks for a {kind} name; the CA certifies only SPIFFE IDs, so request just the URI SAN")]
    CsrOtherName { kind: &'static str },
    #[error("the CSR's URI SAN `{uri}` is not a zmesh SPIFFE ID: {source}")]
    CsrBadSpiffeId { uri: String, source: IdError },

    // --- signing policy -----------------------------------------------------------------------
    #[error("CSR asks for {requested} but the caller is {caller}; workloads may only request their own identity")]
    IdentityMismatch { requested: Box<SpiffeId>, caller: Box<SpiffeId> },
    #[error(
        "{id} is in trust domain {}, but this CA signs only for {accepted}; use the mesh's trust domain",
        id.trust_domain()
    )]
    ForeignTrustDomain { id: Box<SpiffeId>, accepted: String },
    #[error("a requested certificate lifetime must be longer than zero; omit it to get the default")]
    ZeroTtl,
    #[error("the CA's signing certificate expired at {}; rotate the root or plug in a renewed CA", crate::clock::Rfc3339(*.not_after))]
    SigningCertExpired { not_after: SystemTime },
    #[error("{what} {} cannot be written into a certificate; pass a time between 1970 and 9999", crate::clock::Rfc3339(*.time))]
    TimeOutOfRange { what: &'static str, time: SystemTime },
    #[error("the system random number generator failed; check /dev/urandom and retry")]
    Random,
    #[error("rcgen could not {action}; this is a bug in zmesh-ca, please report it")]
    Rcgen {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },

    // --- root rotation ------------------------------------------------------------------------
    #[error("cannot {attempted} a root rotation while it is {stage}; the next step is `{next}`")]
    RotationOutOfOrder { attempted: RotationStep, stage: RotationStage, next: RotationStep },
    #[error(
        "cannot retire the old root: it still signs (ca-cert.pem is the old signing certificate); \
         run `activate` first, then `retire` once every leaf of the old root has expired"
    )]
    RetireWhileOldRootSigns,
    #[error(
        "cannot retire the old root yet: leaves it signed may be valid until {}; retire after that \
         (every workload renews well before), or force it knowing those leaves will stop verifying", crate::clock::Rfc3339(*.until)
    )]
    OldLeavesStillValid { until: SystemTime },
    #[error(
        "{dir} holds a plugged-in CA (ca-cert.pem is not a self-signed root); rotate it by adding the new root to \
         root-cert.pem, then plugging in the new ca-cert/ca-key/cert-chain"
    )]
    RotationOfPluggedCa { dir: PathBuf },
    #[error(
        "rotation state file {path} is unreadable ({detail}); fix or remove it after checking `zmesh ca rotate status`"
    )]
    BadRotationState { path: PathBuf, detail: String },
}

/// Who has to act on an error. The control plane maps this to a gRPC status in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaErrorKind {
    /// The request itself is malformed or too weak (`INVALID_ARGUMENT`).
    BadRequest,
    /// The request is well formed but asks for more than the caller may have (`PERMISSION_DENIED`).
    Denied,
    /// The CA's files or the operator's command are wrong (`FAILED_PRECONDITION`).
    Operator,
    /// A fault inside this process or machine (`INTERNAL`).
    Internal,
}

impl CaError {
    pub fn kind(&self) -> CaErrorKind {
        use CaError::*;
        match self {
            CsrParse { .. }
            | CsrSignature
            | WeakCsrSignature { .. }
            | KeyNotAccepted { .. }
            | CsrUriCount { .. }
            | CsrOtherName { .. }
            | CsrBadSpiffeId { .. }
            | ZeroTtl => CaErrorKind::BadRequest,
            IdentityMismatch { .. } | ForeignTrustDomain { .. } => CaErrorKind::Denied,
            KeyPermissions { .. }
            | IncompleteCaDir { .. }
            | BadJournal { .. }
            | NoCertificate { .. }
            | TooManyCaCerts { .. }
            | BadCertificate { .. }
            | BadKey { .. }
            | KeyMismatch { .. }
            | NotCa { .. }
            | ChainDoesNotStartWithCaCert { .. }
            | ChainBroken { .. }
            | ChainNotAnchored { .. }
            | CertExpired { .. }
            | CertNotYetValid { .. }
            | IssuerNameNotReproducible { .. }
            | SigningCertExpired { .. }
            | RotationOutOfOrder { .. }
            | RetireWhileOldRootSigns
            | OldLeavesStillValid { .. }
            | RotationOfPluggedCa { .. }
            | BadRotationState { .. } => CaErrorKind::Operator,
            ReadFile { .. } | WriteFile { .. } | TimeOutOfRange { .. } | Random | Rcgen { .. } => CaErrorKind::Internal,
        }
    }
}
