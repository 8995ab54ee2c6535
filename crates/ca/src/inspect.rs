//! Reading certificates back for people: `zmesh cert inspect` and the rotation status.

use std::time::SystemTime;

use x509_parser::extensions::GeneralName;

use crate::keys::KeyAlgorithm;
use crate::{CaError, chain, clock, pem};

/// The parts of a certificate an operator asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// URI SANs with the `spiffe://` scheme, as written (a foreign certificate's IDs need not
    /// follow zmesh's `/ns/…/sa/…` form, and inspecting must still show them).
    pub spiffe_ids: Vec<String>,
    pub dns_names: Vec<String>,
    /// RFC 4514-style, e.g. `O=zmesh, CN=zmesh root CA`; empty for an empty subject.
    pub subject: String,
    pub issuer: String,
    /// Lowercase hex without leading zeros.
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
    pub key_algorithm: KeyAlgorithm,
}

/// Every certificate in `pem_text`, in order. Non-certificate PEM blocks (keys, CSRs) are skipped.
pub fn inspect_pem(pem_text: &str) -> Result<Vec<CertInfo>, CaError> {
    let bad = |index: usize, detail: String| CaError::BadCertificate { path: "<input>".into(), index, detail };
    let ders = pem::certificates(pem_text.as_bytes()).map_err(|detail| bad(1, detail))?;
    if ders.is_empty() {
        return Err(CaError::NoCertificate { path: "<input>".into(), expected: "at least one certificate" });
    }
    ders.iter().enumerate().map(|(index, der)| inspect_der(der).map_err(|detail| bad(index + 1, detail))).collect()
}

/// One DER certificate, or why it cannot be read.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, String> {
    let cert = chain::parse(der)?;
    let mut spiffe_ids = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) if uri.starts_with(zmesh_id::SPIFFE_SCHEME) => spiffe_ids.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        spiffe_ids,
        dns_names,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: pem::hex_unsigned(cert.raw_serial()),
        not_before: clock::from_asn1(cert.validity().not_before),
        not_after: clock::from_asn1(cert.validity().not_after),
        is_ca: cert.is_ca(),
        key_algorithm: KeyAlgorithm::of(cert.public_key()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_certificates_is_an_error_not_an_empty_list() {
        let error = inspect_pem("hello").unwrap_err();
        assert!(matches!(error, CaError::NoCertificate { .. }));
    }

    #[test]
    fn a_corrupt_certificate_is_reported_by_position() {
        let text = pem::encode(pem::CERTIFICATE, b"not DER");
        let error = inspect_pem(&text).unwrap_err();
        assert!(matches!(error, CaError::BadCertificate { index: 1, .. }));
    }
}
