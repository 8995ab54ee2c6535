//! Generating a self-signed root: on first start, and as the new root of a rotation.

use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose};
use ring::rand::SecureRandom;

use crate::signing::{CLOCK_SKEW, new_serial};
use crate::{CaError, clock, keys, pem};

/// Ten years: long enough that root rotation is a planned event, short enough to happen in a
/// key's lifetime. (3,652 days covers the leap days of any ten-year span.)
pub const ROOT_VALIDITY: Duration = Duration::from_secs(3_652 * 24 * 60 * 60);

/// A new root certificate and its key, both as PEM ready for the CA directory.
#[derive(Debug)]
pub(crate) struct NewRoot {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

pub(crate) fn generate(now: SystemTime, rng: &dyn SecureRandom) -> Result<NewRoot, CaError> {
    let key = keys::generate_p256(rng)?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "zmesh");
    name.push(DnType::CommonName, "zmesh root CA");
    params.distinguished_name = name;
    // pathlen 0: this root signs workload leaves directly and never an intermediate, so a
    // stolen leaf key can never be used to mint more certificates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(new_serial(rng)?.to_vec().into());
    params.not_before = clock::to_offset("root not-before", clock::floor_second(now) - CLOCK_SKEW)?;
    params.not_after = clock::to_offset("root not-after", clock::floor_second(now) + ROOT_VALIDITY)?;
    let cert = params.self_signed(&key).map_err(|source| CaError::Rcgen { action: "self-sign a root", source })?;
    Ok(NewRoot { cert_pem: pem::encode(pem::CERTIFICATE, cert.der()), key_pem: key.serialize_pem() })
}
