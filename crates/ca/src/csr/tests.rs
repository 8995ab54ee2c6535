use super::*;
use crate::test_support::{id, rng};
use rcgen::KeyPair;

const RSA_1024: &str = include_str!("../../testdata/rsa1024.csr.pem");
const RSA_2048: &str = include_str!("../../testdata/rsa2048.csr.pem");
const P521: &str = include_str!("../../testdata/p521.csr.pem");
const P256_SHA1: &str = include_str!("../../testdata/p256-sha1.csr.pem");

/// A CSR with exactly these SANs, signed by `key`.
fn csr_with(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

#[test]
fn a_generated_csr_parses_and_asks_for_its_identity() {
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let (csr_pem, key) = generate_csr(&web, &rng()).unwrap();
    let csr = Csr::parse(csr_pem.as_bytes()).unwrap();
    assert_eq!(csr.requested_id(), &web);
    assert_eq!(csr.key_algorithm(), &KeyAlgorithm::EcdsaP256);
    assert!(key.expose().starts_with("-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn a_der_csr_is_accepted_like_pem() {
    let (csr_pem, _) = generate_csr(&id("spiffe://cluster.local/ns/a/sa/b"), &rng()).unwrap();
    let der = pem::blocks(csr_pem.as_bytes()).unwrap().remove(0).contents;
    assert_eq!(Csr::parse(&der).unwrap().requested_id(), &id("spiffe://cluster.local/ns/a/sa/b"));
}

#[test]
fn ed25519_and_p384_keys_are_accepted() {
    for (algorithm, expected) in
        [(&rcgen::PKCS_ED25519, KeyAlgorithm::Ed25519), (&rcgen::PKCS_ECDSA_P384_SHA384, KeyAlgorithm::EcdsaP384)]
    {
        let key = KeyPair::generate_for(algorithm).unwrap();
        let csr = Csr::parse(csr_with(&key, vec![uri("spiffe://cluster.local/ns/a/sa/b")]).as_bytes()).unwrap();
        assert_eq!(csr.key_algorithm(), &expected);
    }
}

#[test]
fn an_rsa_2048_key_is_accepted() {
    let csr = Csr::parse(RSA_2048.as_bytes()).unwrap();
    assert_eq!(csr.key_algorithm(), &KeyAlgorithm::Rsa { bits: 2048 });
    assert_eq!(csr.requested_id(), &id("spiffe://cluster.local/ns/default/sa/rsa2048"));
}

#[test]
fn an_rsa_1024_key_is_refused_as_too_weak() {
    let error = Csr::parse(RSA_1024.as_bytes()).unwrap_err();
    assert!(matches!(&error, CaError::KeyNotAccepted { algorithm: KeyAlgorithm::Rsa { bits: 1024 }, .. }), "{error:?}");
    assert!(error.to_string().contains("shorter than 2048 bits"), "{error}");
}

#[test]
fn a_p521_key_is_refused_as_unsupported() {
    let error = Csr::parse(P521.as_bytes()).unwrap_err();
    assert!(matches!(error, CaError::KeyNotAccepted { algorithm: KeyAlgorithm::EcdsaP521, .. }), "{error:?}");
}

#[test]
fn a_sha1_signed_csr_is_refused() {
    let error = Csr::parse(P256_SHA1.as_bytes()).unwrap_err();
    assert!(matches!(error, CaError::WeakCsrSignature { algorithm: "ECDSA with SHA-1" }), "{error:?}");
}

#[test]
fn a_csr_whose_identity_was_altered_after_signing_fails_its_signature_check() {
    let (csr_pem, _) = generate_csr(&id("spiffe://cluster.local/ns/shop/sa/web"), &rng()).unwrap();
    let mut der = pem::blocks(csr_pem.as_bytes()).unwrap().remove(0).contents;
    // Same length, so the DER stays well formed: only the signature can notice.
    let at = der.windows(6).position(|w| w == b"sa/web").unwrap();
    der[at + 3..at + 6].copy_from_slice(b"db1");
    let error = Csr::parse(&der).unwrap_err();
    assert!(matches!(error, CaError::CsrSignature), "{error:?}");
}

#[test]
fn a_csr_with_a_corrupted_signature_is_refused() {
    let (csr_pem, _) = generate_csr(&id("spiffe://cluster.local/ns/shop/sa/web"), &rng()).unwrap();
    let mut der = pem::blocks(csr_pem.as_bytes()).unwrap().remove(0).contents;
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert!(matches!(Csr::parse(&der), Err(CaError::CsrSignature)));
}

#[test]
fn a_csr_without_a_uri_san_is_refused() {
    let key = KeyPair::generate().unwrap();
    let error = Csr::parse(csr_with(&key, vec![]).as_bytes()).unwrap_err();
    assert!(matches!(error, CaError::CsrUriCount { count: 0 }), "{error:?}");
}

#[test]
fn a_csr_asking_for_two_identities_is_refused() {
    let key = KeyPair::generate().unwrap();
    let sans = vec![uri("spiffe://cluster.local/ns/a/sa/b"), uri("spiffe://cluster.local/ns/a/sa/c")];
    let error = Csr::parse(csr_with(&key, sans).as_bytes()).unwrap_err();
    assert!(matches!(error, CaError::CsrUriCount { count: 2 }), "{error:?}");
}

#[test]
fn a_csr_asking_for_a_dns_name_is_refused() {
    let key = KeyPair::generate().unwrap();
    let sans = vec![uri("spiffe://cluster.local/ns/a/sa/b"), SanType::DnsName("web.example".try_into().unwrap())];
    let error = Csr::parse(csr_with(&key, sans).as_bytes()).unwrap_err();
    assert!(matches!(error, CaError::CsrOtherName { kind: "DNS" }), "{error:?}");
}

#[test]
fn a_uri_san_that_is_not_a_zmesh_spiffe_id_is_refused() {
    let key = KeyPair::generate().unwrap();
    let error = Csr::parse(csr_with(&key, vec![uri("spiffe://cluster.local/workload")]).as_bytes()).unwrap_err();
    assert!(matches!(&error, CaError::CsrBadSpiffeId { uri, .. } if uri == "spiffe://cluster.local/workload"));
}

#[test]
fn bytes_that_are_no_csr_are_a_parse_error() {
    assert!(matches!(Csr::parse(b"\x30\x03\x02\x01\x00"), Err(CaError::CsrParse { .. })));
    assert!(matches!(
        Csr::parse(b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        Err(CaError::CsrParse { .. })
    ));
    assert!(matches!(Csr::parse(b""), Err(CaError::CsrParse { .. })));
}

proptest::proptest! {
    /// The signing service feeds attacker bytes straight in: it must answer, never panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_csr_parser(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let _ = Csr::parse(&bytes);
    }
}
