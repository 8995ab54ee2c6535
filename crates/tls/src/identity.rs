//! This proxy's SVID (certificate chain and key), and reading SPIFFE IDs out of certificates.
//!
//! The same SAN rules apply to our own SVID and to a peer's: exactly one URI SAN, which must be a
//! SPIFFE ID, on a certificate that is not a CA. Checking our own SVID at load time turns a
//! CA misconfiguration into one clear error here instead of a handshake failure on every peer.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use zmesh_id::SpiffeId;

use crate::error::{PemInput, TlsError, Whose};
use crate::time::Timestamp;

/// A workload's X.509 SVID, ready to present in handshakes.
pub struct Identity {
    spiffe_id: SpiffeId,
    serial: String,
    not_before: Timestamp,
    not_after: Timestamp,
    certified_key: Arc<CertifiedKey>,
}

impl Identity {
    /// Load an SVID from its PEM chain (leaf first, then intermediates) and its PEM private key
    /// (PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`).
    ///
    /// Refuses a leaf without exactly one SPIFFE URI SAN, a CA certificate as leaf, and a key that
    /// does not belong to the leaf. Validity dates are not checked here: time is the caller's
    /// (see [`Identity::not_after`]).
    pub fn from_pem(chain_pem: impl AsRef<[u8]>, key_pem: impl AsRef<[u8]>) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_ref())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem { what: PemInput::SvidChain, source })?;
        let Some(leaf_der) = chain.first() else {
            return Err(TlsError::NoCertificates { what: PemInput::SvidChain });
        };
        let leaf = parse_certificate(leaf_der, Whose::LocalSvid)?;
        refuse_ca(&leaf, Whose::LocalSvid)?;
        let spiffe_id = spiffe_id_of(&leaf, Whose::LocalSvid)?;
        let validity = leaf.validity();
        let not_before = Timestamp::from_unix_seconds(validity.not_before.timestamp());
        let not_after = Timestamp::from_unix_seconds(validity.not_after.timestamp());
        let serial = leaf.raw_serial_as_string();

        let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_ref())
            .map_err(|source| TlsError::Pem { what: PemInput::SvidKey, source })?;
        let signing_key = crate::config::provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|reason| TlsError::UnsupportedKey { reason })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            // Both providers' keys expose their public half, so `Unknown` would mean a key type we
            // cannot check; refuse it rather than risk presenting a certificate we cannot sign for.
            Err(rustls::Error::InconsistentKeys(_)) => return Err(TlsError::KeyMismatch),
            Err(reason) => {
                return Err(TlsError::BadCertificate { whose: Whose::LocalSvid, reason: reason.to_string() });
            }
        }

        Ok(Self { spiffe_id, serial, not_before, not_after, certified_key: Arc::new(certified_key) })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The leaf's serial number as colon-separated hex bytes, the way `openssl x509` prints it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before.to_system_time()
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after.to_system_time()
    }

    /// The chain as presented to peers, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified_key.cert
    }

    pub(crate) fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }
}

impl fmt::Debug for Identity {
    // Spelled out so the private key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id.as_uri())
            .field("serial", &self.serial)
            .field("not_before", &self.not_before.to_string())
            .field("not_after", &self.not_after.to_string())
            .field("chain_len", &self.certified_key.cert.len())
            .finish()
    }
}

/// The SPIFFE ID of the peer of a completed handshake, for authorization and for
/// `X-Forwarded-Client-Cert`.
///
/// Only this crate's verifiers admit peers to mesh connections, so the certificate read here has
/// already passed every check; this only reads the ID back out of it.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<SpiffeId, TlsError> {
    let leaf_der = conn.peer_certificates().and_then(<[_]>::first).ok_or(TlsError::NoPeerCertificate)?;
    let leaf = parse_certificate(leaf_der, Whose::Peer)?;
    spiffe_id_of(&leaf, Whose::Peer)
}

pub(crate) fn parse_certificate<'a>(
    der: &'a CertificateDer<'_>,
    whose: Whose,
) -> Result<X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, certificate)) => Ok(certificate),
        Err(error) => Err(TlsError::BadCertificate { whose, reason: error.to_string() }),
    }
}

/// A CA certificate may sign SVIDs, so letting it stand for a workload would let anyone holding
/// an intermediate's key speak as that "workload" without a proper SVID.
pub(crate) fn refuse_ca(certificate: &X509Certificate<'_>, whose: Whose) -> Result<(), TlsError> {
    let is_ca = match certificate.basic_constraints() {
        Ok(constraints) => constraints.is_some_and(|extension| extension.value.ca),
        Err(error) => return Err(TlsError::BadCertificate { whose, reason: error.to_string() }),
    };
    if is_ca {
        return Err(TlsError::CaAsLeaf { whose, subject: certificate.subject().to_string() });
    }
    Ok(())
}

/// The one SPIFFE ID of a certificate: exactly one URI SAN, and it parses as a SPIFFE ID.
pub(crate) fn spiffe_id_of(certificate: &X509Certificate<'_>, whose: Whose) -> Result<SpiffeId, TlsError> {
    let names: &[GeneralName<'_>] = match certificate.subject_alternative_name() {
        Ok(Some(extension)) => &extension.value.general_names,
        Ok(None) => &[],
        Err(error) => return Err(TlsError::BadCertificate { whose, reason: error.to_string() }),
    };
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoSpiffeId { whose, sans: describe_sans(names) }),
        [uri] => uri.parse().map_err(|reason| TlsError::BadSpiffeId { whose, uri: (*uri).to_owned(), reason }),
        _ => Err(TlsError::MultipleUriSans { whose, uris: uris.iter().map(|uri| (*uri).to_owned()).collect() }),
    }
}

/// SANs in the `DNS:name` notation operators know from `openssl x509 -text`.
fn describe_sans(names: &[GeneralName<'_>]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let described: Vec<String> = names
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::RFC822Name(email) => format!("email:{email}"),
            GeneralName::IPAddress(bytes) => describe_ip(bytes),
            other => other.to_string(),
        })
        .collect();
    described.join(", ")
}

fn describe_ip(bytes: &[u8]) -> String {
    if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
        format!("IP:{}", std::net::Ipv4Addr::from(octets))
    } else if let Ok(octets) = <[u8; 16]>::try_from(bytes) {
        format!("IP:{}", std::net::Ipv6Addr::from(octets))
    } else {
        format!("IP:<{} bytes>", bytes.len())
    }
}
