//! Loading this proxy's SVID and trust bundle, and the errors an operator sees when they are wrong.

use std::time::{Duration, UNIX_EPOCH};

use zmesh_tls::{Identity, PemInput, Side, TlsError, TrustBundle, Whose};

use crate::fixtures::*;

#[test]
fn an_svid_loads_with_its_spiffe_id_serial_and_validity() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::spiffe(SERVER_ID).serial(0x2a));
    let identity = Identity::from_pem(&svid.chain_pem, &svid.key_pem).expect("a minted SVID loads");
    assert_eq!(identity.spiffe_id(), &id(SERVER_ID));
    assert_eq!(identity.serial(), "2a");
    assert_eq!(identity.not_before(), UNIX_EPOCH + Duration::from_secs(1_893_456_000)); // 2030-01-01
    assert_eq!(identity.not_after(), UNIX_EPOCH + Duration::from_secs(1_893_542_400)); // 2030-01-02
    assert_eq!(identity.chain().len(), 1);
}

#[test]
fn an_svid_keeps_its_intermediates_in_order() {
    let root = Ca::root("zmesh root");
    let intermediate = root.intermediate("zmesh intermediate");
    let svid = intermediate.issue(Leaf::spiffe(SERVER_ID));
    let identity = Identity::from_pem(&svid.chain_pem, &svid.key_pem).expect("an SVID with its intermediate loads");
    assert_eq!(identity.chain().len(), 2);
}

#[test]
fn a_key_that_belongs_to_another_certificate_is_refused() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let other = ca.issue(Leaf::spiffe(SERVER_ID));
    let error = Identity::from_pem(&svid.chain_pem, &other.key_pem).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the SVID private key does not match the leaf certificate (the first in the chain); pass the key generated \
         for this certificate's CSR, and put the leaf before its intermediates"
    );
    assert_eq!(error.side(), Side::Local);
}

#[test]
fn a_sec1_key_loads_like_its_pkcs8_form() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let sec1_pem = pem("EC PRIVATE KEY", &sec1_from_pkcs8(&svid.pkcs8_der));
    let identity = Identity::from_pem(&svid.chain_pem, sec1_pem).expect("a SEC1 key loads");
    assert_eq!(identity.spiffe_id(), &id(SERVER_ID));
}

#[test]
fn an_svid_without_a_uri_san_is_refused() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::with_sans(vec![dns_san("cart.shop.svc")]));
    let error = Identity::from_pem(&svid.chain_pem, &svid.key_pem).unwrap_err();
    assert_eq!(
        error.to_string(),
        "local SVID carries no SPIFFE ID: it has no URI SAN (its SANs: DNS:cart.shop.svc); a mesh SVID must carry \
         exactly one URI SAN `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`"
    );
    assert_eq!(error.side(), Side::Local);
}

#[test]
fn an_svid_with_two_uri_sans_is_refused() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::with_sans(vec![uri_san(SERVER_ID), uri_san(CLIENT_ID)]));
    let error = Identity::from_pem(&svid.chain_pem, &svid.key_pem).unwrap_err();
    assert!(
        matches!(&error, TlsError::MultipleUriSans { whose: Whose::LocalSvid, uris } if uris.len() == 2),
        "{error}"
    );
}

#[test]
fn a_ca_certificate_is_refused_as_an_svid() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::spiffe(SERVER_ID).presented_as_ca("rogue intermediate"));
    let error = Identity::from_pem(&svid.chain_pem, &svid.key_pem).unwrap_err();
    assert!(matches!(&error, TlsError::CaAsLeaf { whose: Whose::LocalSvid, .. }), "{error}");
}

#[test]
fn an_empty_chain_is_refused_with_what_to_pass() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let error = Identity::from_pem("", &svid.key_pem).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the SVID certificate chain holds no CERTIFICATE block; pass the leaf first, then its intermediates \
         (or, for a bundle, every root)"
    );
}

#[test]
fn a_missing_key_is_refused_naming_the_key() {
    let ca = Ca::root("zmesh root");
    let svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let error = Identity::from_pem(&svid.chain_pem, &svid.chain_pem).unwrap_err();
    assert!(matches!(error, TlsError::Pem { what: PemInput::SvidKey, .. }), "{error}");
}

#[test]
fn a_bundle_keeps_every_root_for_rotation() {
    let old_root = Ca::root("zmesh root");
    let new_root = Ca::root("zmesh root 2");
    let bundle = TrustBundle::from_pem(
        format!("{}{}", old_root.cert_pem(), new_root.cert_pem()),
        domains("cluster.local", &["old.local"]),
    )
    .expect("two roots load");
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.trust_domains(), &domains("cluster.local", &["old.local"]));
}

/// The ECPrivateKey (SEC1) inside a PKCS#8 PrivateKeyInfo: its last field, an OCTET STRING.
fn sec1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    fn header(der: &[u8]) -> (usize, usize) {
        match der[1] {
            short @ 0..0x80 => (2, usize::from(short)),
            long => {
                let count = usize::from(long & 0x7f);
                let length = der[2..2 + count].iter().fold(0, |length, byte| length << 8 | usize::from(*byte));
                (2 + count, length)
            }
        }
    }
    let (outer_header, _) = header(pkcs8);
    let mut rest = &pkcs8[outer_header..];
    for _version_and_algorithm in 0..2 {
        let (field_header, length) = header(rest);
        rest = &rest[field_header + length..];
    }
    assert_eq!(rest[0], 0x04, "the private key field is an OCTET STRING");
    let (field_header, length) = header(rest);
    rest[field_header..field_header + length].to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::new();
    for chunk in der.chunks(3) {
        let bytes = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let triple = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for position in 0..4 {
            if position <= chunk.len() {
                encoded.push(char::from(ALPHABET[(triple >> (18 - 6 * position) & 0x3f) as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    let lines: Vec<&str> =
        encoded.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}
