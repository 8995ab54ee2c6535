//! PKCS#10 certificate signing requests: the untrusted input of the signing service.
//!
//! A [`Csr`] only exists once its key is strong enough, its self-signature verifies and it asks
//! for exactly one SPIFFE ID. Whether the *caller* may have that ID is the signer's decision
//! (`CertificateAuthority::sign`), because only the signer knows who the caller proved to be.

use rcgen::{CertificateParams, DistinguishedName, SanType};
use ring::rand::SecureRandom;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
use x509_parser::prelude::FromDer;
use zmesh_id::SpiffeId;

use crate::keys::{KeyAlgorithm, SubjectKey};
use crate::pem::PrivateKeyPem;
use crate::{CaError, keys, pem};

/// ecdsa-with-SHA1 (1.2.840.10045.4.1); oid-registry has no constant for it.
const ECDSA_WITH_SHA1: &[u64] = &[1, 2, 840, 10045, 4, 1];

/// A verified certificate signing request.
#[derive(Clone, Debug)]
pub struct Csr {
    requested_id: SpiffeId,
    key_algorithm: KeyAlgorithm,
    pub(crate) subject_key: SubjectKey,
}

impl Csr {
    /// Parse a PEM (`CERTIFICATE REQUEST`) or DER PKCS#10 request and check it: accepted key,
    /// valid self-signature, exactly one URI SAN holding a SPIFFE ID and no other names.
    pub fn parse(bytes: &[u8]) -> Result<Self, CaError> {
        let der = der_of(bytes)?;
        let csr = match X509CertificationRequest::from_der(&der) {
            Ok(([], csr)) => csr,
            Ok(_) => return Err(CaError::CsrParse { detail: "trailing bytes after the request".to_owned() }),
            Err(error) => return Err(CaError::CsrParse { detail: error.to_string() }),
        };
        let spki = &csr.certification_request_info.subject_pki;

        // Key strength before the signature: a weak key deserves its own message, not
        // "signature does not verify" from a verifier that refuses short RSA keys.
        let key_algorithm = KeyAlgorithm::of(spki);
        let algorithm = key_algorithm
            .certifiable()
            .map_err(|reason| CaError::KeyNotAccepted { algorithm: key_algorithm.clone(), reason })?;
        let signature_oid = &csr.signature_algorithm.algorithm;
        if *signature_oid == OID_PKCS1_SHA1WITHRSA || *signature_oid == OID_SHA1_WITH_RSA {
            return Err(CaError::WeakCsrSignature { algorithm: "SHA-1 with RSA" });
        }
        if signature_oid.iter().is_some_and(|arcs| arcs.eq(ECDSA_WITH_SHA1.iter().copied())) {
            return Err(CaError::WeakCsrSignature { algorithm: "ECDSA with SHA-1" });
        }
        csr.verify_signature().map_err(|_| CaError::CsrSignature)?;

        let requested_id = requested_id(&csr)?;
        let subject_key = SubjectKey { raw: spki.subject_public_key.data.to_vec(), algorithm };
        Ok(Self { requested_id, key_algorithm, subject_key })
    }

    /// The SPIFFE ID the request asks for (not yet checked against the caller).
    pub fn requested_id(&self) -> &SpiffeId {
        &self.requested_id
    }

    pub fn key_algorithm(&self) -> &KeyAlgorithm {
        &self.key_algorithm
    }
}

fn der_of(bytes: &[u8]) -> Result<Vec<u8>, CaError> {
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(bytes.to_vec());
    }
    let blocks = pem::blocks(bytes).map_err(|detail| CaError::CsrParse { detail })?;
    blocks
        .into_iter()
        .find(|block| block.label == "CERTIFICATE REQUEST" || block.label == "NEW CERTIFICATE REQUEST")
        .map(|block| block.contents)
        .ok_or_else(|| CaError::CsrParse { detail: "no `CERTIFICATE REQUEST` PEM block".to_owned() })
}

/// The one SPIFFE ID the request asks for. Other kinds of names are refused rather than
/// dropped, so a client that expects a DNS SAN learns at once that it will not get one.
fn requested_id(csr: &X509CertificationRequest<'_>) -> Result<SpiffeId, CaError> {
    let mut uris = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = extension else { continue };
        for name in &san.general_names {
            match name {
                GeneralName::URI(uri) => uris.push(*uri),
                GeneralName::DNSName(_) => return Err(CaError::CsrOtherName { kind: "DNS" }),
                GeneralName::IPAddress(_) => return Err(CaError::CsrOtherName { kind: "IP address" }),
                GeneralName::RFC822Name(_) => return Err(CaError::CsrOtherName { kind: "email" }),
                _ => return Err(CaError::CsrOtherName { kind: "non-URI" }),
            }
        }
    }
    let [uri] = uris.as_slice() else {
        return Err(CaError::CsrUriCount { count: uris.len() });
    };
    uri.parse().map_err(|source| CaError::CsrBadSpiffeId { uri: (*uri).to_owned(), source })
}

/// A CSR a workload sends to the CA, and the key it keeps: a fresh ECDSA P-256 key from `rng`,
/// an empty subject and the single URI SAN `id`.
pub fn generate_csr(id: &SpiffeId, rng: &dyn SecureRandom) -> Result<(String, PrivateKeyPem), CaError> {
    let key = keys::generate_p256(rng)?;
    let mut params = CertificateParams::default();
    // rcgen's default subject is "CN=rcgen self signed cert"; the identity lives in the SAN alone.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![uri_san(id)?];
    let csr = params.serialize_request(&key).map_err(|source| CaError::Rcgen { action: "write a CSR", source })?;
    let csr_pem = csr.pem().map_err(|source| CaError::Rcgen { action: "encode a CSR as PEM", source })?;
    Ok((csr_pem, PrivateKeyPem::new(key.serialize_pem())))
}

pub(crate) fn uri_san(id: &SpiffeId) -> Result<SanType, CaError> {
    // A parsed SpiffeId is always ASCII, so this conversion cannot fail in practice.
    let uri = id.as_uri().try_into().map_err(|source| CaError::Rcgen { action: "encode a URI SAN", source })?;
    Ok(SanType::URI(uri))
}

#[cfg(test)]
mod tests;
