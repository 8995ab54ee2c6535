//! Key types: naming a public key, deciding whether the CA will certify it, and making new
//! ECDSA P-256 keys from the caller's random source.

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm};
use ring::rand::SecureRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::CaError;

/// The algorithm and size of a public key, as `zmesh cert inspect` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Ed25519,
    Rsa {
        bits: usize,
    },
    /// Anything else, by OID (and curve OID for other elliptic curves).
    Other(String),
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcdsaP256 => f.write_str("ECDSA P-256"),
            Self::EcdsaP384 => f.write_str("ECDSA P-384"),
            Self::EcdsaP521 => f.write_str("ECDSA P-521"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa { bits } => write!(f, "RSA {bits}"),
            Self::Other(what) => f.write_str(what),
        }
    }
}

/// Smallest RSA modulus the CA certifies: NIST SP 800-131A disallows less since 2013.
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus ring verifies; more is refused rather than burning CPU on a request.
const MAX_RSA_BITS: usize = 8192;

impl KeyAlgorithm {
    /// Read the algorithm out of a SubjectPublicKeyInfo.
    pub(crate) fn of(spki: &SubjectPublicKeyInfo<'_>) -> Self {
        let oid = &spki.algorithm.algorithm;
        if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(curve) if curve == OID_EC_P256 => Self::EcdsaP256,
                Some(curve) if curve == OID_NIST_EC_P384 => Self::EcdsaP384,
                Some(curve) if curve == OID_NIST_EC_P521 => Self::EcdsaP521,
                Some(curve) => Self::Other(format!("EC curve {curve}")),
                None => Self::Other("EC without a named curve".to_owned()),
            }
        } else if *oid == OID_SIG_ED25519 {
            Self::Ed25519
        } else if *oid == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => Self::Rsa { bits: bit_length(rsa.modulus) },
                _ => Self::Other("RSA with an unreadable modulus".to_owned()),
            }
        } else {
            Self::Other(format!("key type {oid}"))
        }
    }

    /// The signature algorithm rcgen needs to write this key into a certificate, or why the CA
    /// will not certify it.
    pub(crate) fn certifiable(&self) -> Result<&'static SignatureAlgorithm, &'static str> {
        match self {
            Self::EcdsaP256 => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::EcdsaP384 => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
            Self::Ed25519 => Ok(&rcgen::PKCS_ED25519),
            Self::Rsa { bits } if *bits < MIN_RSA_BITS => Err("RSA keys shorter than 2048 bits are too weak"),
            Self::Rsa { bits } if *bits > MAX_RSA_BITS => Err("RSA keys longer than 8192 bits are not supported"),
            Self::Rsa { .. } => Ok(&rcgen::PKCS_RSA_SHA256),
            Self::EcdsaP521 => Err("P-521 is not supported by the mesh's TLS stack"),
            Self::Other(_) => Err("the algorithm is not supported"),
        }
    }

    pub(crate) fn is_rsa(&self) -> bool {
        matches!(self, Self::Rsa { .. })
    }
}

/// Bits in a big-endian unsigned integer, ignoring leading zeros (DER adds one when the top
/// bit is set).
fn bit_length(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        Some(start) => (be.len() - start) * 8 - be[start].leading_zeros() as usize,
        None => 0,
    }
}

/// A public key taken from a CSR, in the form rcgen writes into a certificate.
#[derive(Clone, Debug)]
pub(crate) struct SubjectKey {
    /// The SubjectPublicKeyInfo's BIT STRING contents (the EC point, RSAPublicKey or Ed25519 key).
    pub(crate) raw: Vec<u8>,
    /// Only its key-type OIDs are used: rcgen writes them as the SubjectPublicKeyInfo algorithm.
    pub(crate) algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

/// A fresh ECDSA P-256 key drawn from `rng`.
pub(crate) fn generate_p256(rng: &dyn SecureRandom) -> Result<KeyPair, CaError> {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, rng).map_err(|_| CaError::Random)?;
    KeyPair::try_from(pkcs8.as_ref()).map_err(|source| CaError::Rcgen { action: "load a key ring generated", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length_ignores_the_der_sign_byte() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x7f, 0xff]), 15);
        assert_eq!(bit_length(&[0, 0]), 0);
    }

    #[test]
    fn only_strong_supported_keys_are_certifiable() {
        assert!(KeyAlgorithm::EcdsaP256.certifiable().is_ok());
        assert!(KeyAlgorithm::EcdsaP384.certifiable().is_ok());
        assert!(KeyAlgorithm::Ed25519.certifiable().is_ok());
        assert!(KeyAlgorithm::Rsa { bits: 2048 }.certifiable().is_ok());
        assert!(KeyAlgorithm::Rsa { bits: 2047 }.certifiable().is_err());
        assert!(KeyAlgorithm::Rsa { bits: 8193 }.certifiable().is_err());
        assert!(KeyAlgorithm::EcdsaP521.certifiable().is_err());
    }
}
