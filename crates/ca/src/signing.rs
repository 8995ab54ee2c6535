//! What goes into an X.509 SVID: the pure decisions (lifetime, serial) and the leaf template.
//! `CertificateAuthority::sign` in `authority.rs` applies them with the CA's key.

use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SerialNumber,
};
use ring::rand::SecureRandom;
use zmesh_id::SpiffeId;

use crate::{CaError, clock, csr, renewal};

/// How far NotBefore is backdated, so a peer whose clock runs a little behind the CA's still
/// accepts a certificate issued this second.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// An X.509 SVID the CA issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedSvid {
    pub id: SpiffeId,
    /// The leaf, then the intermediates up to (not including) the root, as PEM: what a
    /// workload presents in its TLS handshake.
    pub chain_pem: String,
    pub leaf_der: Vec<u8>,
    /// The serial as lowercase hex without leading zeros (as `CertInfo::serial_hex`).
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// True when the certificate lives shorter than asked: the request exceeded the CA's
    /// maximum TTL, or would have outlived the CA's signing certificate.
    pub ttl_capped: bool,
}

impl IssuedSvid {
    /// When the holder should renew it; see [`renewal::renew_at`].
    pub fn renew_at(&self, jitter: f64) -> SystemTime {
        renewal::renew_at(self.not_before, self.not_after, jitter)
    }
}

/// The validity window of a new leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) capped: bool,
}

/// Lifetime limits a leaf is issued under.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) default_ttl: Duration,
    pub(crate) max_ttl: Duration,
    pub(crate) signer_not_before: SystemTime,
    pub(crate) signer_not_after: SystemTime,
}

/// Decide a leaf's validity. Pure: `now` and the limits are all it looks at.
pub(crate) fn validity(now: SystemTime, requested: Option<Duration>, limits: &Limits) -> Result<Validity, CaError> {
    if requested == Some(Duration::ZERO) {
        return Err(CaError::ZeroTtl);
    }
    let now = clock::floor_second(now);
    let signer_not_after = clock::floor_second(limits.signer_not_after);
    if now >= signer_not_after {
        return Err(CaError::SigningCertExpired { not_after: signer_not_after });
    }
    let asked = requested.unwrap_or(limits.default_ttl);
    let mut capped = asked > limits.max_ttl;
    let ttl = asked.min(limits.max_ttl);
    let wanted_end = now.checked_add(ttl).unwrap_or(signer_not_after);
    // A leaf must not outlive its issuer: peers would reject the chain the moment it expires.
    let not_after = if wanted_end > signer_not_after {
        capped = true;
        signer_not_after
    } else {
        wanted_end
    };
    // Backdate for skew, but not before the issuer itself became valid.
    let not_before = (now - CLOCK_SKEW).max(clock::floor_second(limits.signer_not_before));
    Ok(Validity { not_before, not_after, capped })
}

/// 16 random bytes with the top bit cleared, so the DER INTEGER is positive and fits RFC 5280's
/// 20 octets; zero (from a broken or fixed test rng) is bumped to one, as serials must be positive.
pub(crate) fn new_serial(rng: &dyn SecureRandom) -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial).map_err(|_| CaError::Random)?;
    serial[0] &= 0x7f;
    if serial.iter().all(|&b| b == 0) {
        serial[15] = 1;
    }
    Ok(serial)
}

/// The certificate template of an SVID for `id`.
pub(crate) fn leaf_params(
    id: &SpiffeId,
    validity: &Validity,
    serial: &[u8; 16],
    rsa_key: bool,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "zmesh");
    params.distinguished_name = name;
    params.subject_alt_names = vec![csr::uri_san(id)?];
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.not_before = clock::to_offset("leaf not-before", validity.not_before)?;
    params.not_after = clock::to_offset("leaf not-after", validity.not_after)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa_key {
        // TLS 1.2 RSA key exchange encrypts to the certificate key.
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn limits() -> Limits {
        Limits {
            default_ttl: 24 * HOUR,
            max_ttl: 48 * HOUR,
            signer_not_before: at(0),
            signer_not_after: at(1_000_000_000),
        }
    }

    #[test]
    fn the_default_ttl_applies_when_none_is_requested() {
        let now = at(500_000_000);
        let window = validity(now, None, &limits()).unwrap();
        assert_eq!(window.not_after, now + 24 * HOUR);
        assert!(!window.capped);
    }

    #[test]
    fn not_before_is_backdated_by_the_clock_skew() {
        let now = at(500_000_000);
        assert_eq!(validity(now, None, &limits()).unwrap().not_before, now - CLOCK_SKEW);
    }

    #[test]
    fn a_ttl_above_the_maximum_is_capped_and_says_so() {
        let now = at(500_000_000);
        let window = validity(now, Some(100 * HOUR), &limits()).unwrap();
        assert_eq!(window.not_after, now + 48 * HOUR);
        assert!(window.capped);
    }

    #[test]
    fn a_leaf_never_outlives_the_signing_certificate() {
        let now = at(1_000_000_000 - 3600);
        let window = validity(now, None, &limits()).unwrap();
        assert_eq!(window.not_after, at(1_000_000_000));
        assert!(window.capped);
    }

    #[test]
    fn an_expired_signing_certificate_refuses_to_sign() {
        assert!(matches!(validity(at(1_000_000_000), None, &limits()), Err(CaError::SigningCertExpired { .. })));
    }

    #[test]
    fn a_zero_ttl_is_refused() {
        assert!(matches!(validity(at(5), Some(Duration::ZERO), &limits()), Err(CaError::ZeroTtl)));
    }

    #[test]
    fn validity_is_floored_to_whole_seconds_as_the_certificate_stores_it() {
        let now = at(500_000_000) + Duration::from_millis(999);
        let window = validity(now, None, &limits()).unwrap();
        assert_eq!(window.not_after, at(500_000_000) + 24 * HOUR);
    }

    #[test]
    #[allow(deprecated)] // ring's fixed-output rng is the only way to feed it chosen bytes.
    fn serials_are_positive_and_non_zero_even_from_a_degenerate_rng() {
        let zeros = ring::test::rand::FixedByteRandom { byte: 0x00 };
        let serial = new_serial(&zeros).unwrap();
        assert!(serial.iter().any(|&b| b != 0));
        let ones = ring::test::rand::FixedByteRandom { byte: 0xff };
        let serial = new_serial(&ones).unwrap();
        assert_eq!(serial[0], 0x7f);
    }
}
