use super::*;
use crate::test_support::{DAY, HOUR, PluggedCa, TempDir, ca_params, id, new_ca, now, rng, webpki_verifies};
use crate::{CLOCK_SKEW, generate_csr};
use std::fs;
use x509_parser::extensions::{GeneralName, ParsedExtension};

fn web() -> SpiffeId {
    id("spiffe://cluster.local/ns/shop/sa/web")
}

fn csr_for(identity: &SpiffeId) -> Csr {
    let (csr_pem, _) = generate_csr(identity, &rng()).unwrap();
    Csr::parse(csr_pem.as_bytes()).unwrap()
}

fn sign_web(ca: &CertificateAuthority, ttl: Option<Duration>) -> IssuedSvid {
    ca.sign(&csr_for(&web()), &web(), ttl, now(), &rng()).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// --- first start ---------------------------------------------------------------------------

#[test]
fn first_start_writes_a_self_signed_root_in_istios_layout() {
    let dir = TempDir::new();
    let (ca, opened) = CertificateAuthority::open_or_create(dir.path(), CaConfig::default(), now(), &rng()).unwrap();
    assert_eq!(opened, Opened::GeneratedRoot);
    let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
    let root = read(ROOT_CERT_FILE);
    assert_eq!(read(CA_CERT_FILE), root, "a self-generated ca-cert is the root");
    assert_eq!(read(CERT_CHAIN_FILE), root, "a self-generated chain is just the root");
    assert!(read(CA_KEY_FILE).starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
    assert_eq!(ca.trust_bundle_pem(), root);
}

#[test]
fn the_generated_root_is_a_p256_ca_limited_to_signing_leaves_for_ten_years() {
    let (_dir, ca) = new_ca();
    let root = chain::parse(ca.signing_cert_der()).unwrap();
    assert_eq!(root.subject().to_string(), "O=zmesh, CN=zmesh root CA");
    let constraints = root.basic_constraints().unwrap().unwrap().value;
    assert!(constraints.ca);
    assert_eq!(constraints.path_len_constraint, Some(0));
    let usage = root.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign() && !usage.digital_signature());
    assert!(root.subject_alternative_name().unwrap().is_none(), "roots carry no SPIFFE ID");
    assert_eq!(crate::KeyAlgorithm::of(root.public_key()), crate::KeyAlgorithm::EcdsaP256);
    let lifetime = crate::clock::from_asn1(root.validity().not_after)
        .duration_since(crate::clock::from_asn1(root.validity().not_before))
        .unwrap();
    assert_eq!(lifetime, crate::ROOT_VALIDITY + CLOCK_SKEW);
    assert!(chain::is_signed_by(&root, &root));
}

#[test]
fn a_second_start_loads_the_root_it_wrote_instead_of_making_a_new_one() {
    let (dir, first) = new_ca();
    let (second, opened) =
        CertificateAuthority::open_or_create(dir.path(), CaConfig::default(), now() + DAY, &rng()).unwrap();
    assert_eq!(opened, Opened::LoadedExisting);
    assert_eq!(second.signing_cert_der(), first.signing_cert_der());
}

#[cfg(unix)]
#[test]
fn start_is_refused_when_the_ca_key_is_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _) = new_ca();
    let key = dir.path().join(CA_KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let error = CertificateAuthority::open_or_create(dir.path(), CaConfig::default(), now(), &rng()).unwrap_err();
    assert!(matches!(&error, CaError::KeyPermissions { path, mode: 0o644 } if *path == key), "{error:?}");
    assert!(error.to_string().contains(&format!("chmod 600 {}", key.display())), "{error}");
}

#[cfg(unix)]
#[test]
fn start_is_refused_when_the_ca_key_is_readable_by_its_group() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, _) = new_ca();
    fs::set_permissions(dir.path().join(CA_KEY_FILE), fs::Permissions::from_mode(0o640)).unwrap();
    let error = CertificateAuthority::load(dir.path(), CaConfig::default(), now()).unwrap_err();
    assert!(matches!(error, CaError::KeyPermissions { mode: 0o640, .. }), "{error:?}");
}

#[test]
fn a_directory_missing_some_ca_files_is_refused_rather_than_overwritten() {
    let (dir, _) = new_ca();
    fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
    let error = CertificateAuthority::open_or_create(dir.path(), CaConfig::default(), now(), &rng()).unwrap_err();
    assert!(matches!(&error, CaError::IncompleteCaDir { missing, .. } if missing == CA_KEY_FILE), "{error:?}");
}

// --- issued SVIDs -----------------------------------------------------------------------------

#[test]
fn an_issued_svid_has_exactly_one_uri_san_and_leaf_only_extensions() {
    let (_dir, ca) = new_ca();
    let svid = sign_web(&ca, None);
    let leaf = chain::parse(&svid.leaf_der).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names, vec![GeneralName::URI("spiffe://cluster.local/ns/shop/sa/web")]);

    let usage = leaf.key_usage().unwrap().unwrap();
    assert!(usage.critical);
    assert!(usage.value.digital_signature());
    assert!(!usage.value.key_encipherment() && !usage.value.key_cert_sign());

    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing && eku.other.is_empty());

    let constraints = leaf.basic_constraints().unwrap().unwrap();
    assert!(constraints.critical && !constraints.value.ca);

    let ca_cert = chain::parse(ca.signing_cert_der()).unwrap();
    let ski = ca_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
            _ => None,
        })
        .unwrap();
    let aki = leaf
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski, "AuthorityKeyIdentifier names the CA's key");
    assert_eq!(leaf.subject().to_string(), "O=zmesh");
    assert!(chain::is_signed_by(&leaf, &ca_cert));
}

#[test]
fn an_issued_svid_is_backdated_for_clock_skew_and_lives_the_default_day() {
    let (_dir, ca) = new_ca();
    let svid = sign_web(&ca, None);
    let leaf = chain::parse(&svid.leaf_der).unwrap();
    assert_eq!(crate::clock::from_asn1(leaf.validity().not_before), now() - CLOCK_SKEW);
    assert_eq!(crate::clock::from_asn1(leaf.validity().not_after), now() + 24 * HOUR);
    assert_eq!((svid.not_before, svid.not_after), (now() - CLOCK_SKEW, now() + 24 * HOUR));
    assert!(!svid.ttl_capped);
}

#[test]
fn a_ttl_above_the_configured_maximum_is_capped_in_the_certificate() {
    let dir = TempDir::new();
    let config = CaConfig { max_ttl: 12 * HOUR, ..CaConfig::default() };
    let (ca, _) = CertificateAuthority::open_or_create(dir.path(), config, now(), &rng()).unwrap();
    let svid = sign_web(&ca, Some(30 * DAY));
    assert!(svid.ttl_capped);
    let leaf = chain::parse(&svid.leaf_der).unwrap();
    assert_eq!(crate::clock::from_asn1(leaf.validity().not_after), now() + 12 * HOUR);
}

#[test]
fn serials_differ_between_issues_and_match_what_the_certificate_says() {
    let (_dir, ca) = new_ca();
    let first = sign_web(&ca, None);
    let second = sign_web(&ca, None);
    assert_ne!(first.serial_hex, second.serial_hex);
    for svid in [&first, &second] {
        let leaf = chain::parse(&svid.leaf_der).unwrap();
        assert_eq!(crate::pem::hex_unsigned(leaf.raw_serial()), svid.serial_hex);
        assert!(leaf.raw_serial().len() <= 16, "16 bytes with the top bit clear need no sign byte");
    }
}

#[test]
fn a_self_generated_ca_returns_the_leaf_alone_as_the_chain() {
    let (_dir, ca) = new_ca();
    let svid = sign_web(&ca, None);
    assert_eq!(crate::pem::certificates(svid.chain_pem.as_bytes()).unwrap(), vec![svid.leaf_der.clone()]);
    webpki_verifies(&svid.chain_pem, ca.trust_bundle_pem(), now()).unwrap();
}

#[test]
fn an_rsa_leaf_also_allows_key_encipherment() {
    let (_dir, ca) = new_ca();
    let csr = Csr::parse(include_bytes!("../../testdata/rsa2048.csr.pem")).unwrap();
    let caller = id("spiffe://cluster.local/ns/default/sa/rsa2048");
    let svid = ca.sign(&csr, &caller, None, now(), &rng()).unwrap();
    let leaf = chain::parse(&svid.leaf_der).unwrap();
    let usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && usage.key_encipherment());
    webpki_verifies(&svid.chain_pem, ca.trust_bundle_pem(), now()).unwrap();
}

// --- signing policy ---------------------------------------------------------------------------

#[test]
fn a_workload_cannot_obtain_another_workloads_identity() {
    let (_dir, ca) = new_ca();
    let db = id("spiffe://cluster.local/ns/shop/sa/db");
    let error = ca.sign(&csr_for(&db), &web(), None, now(), &rng()).unwrap_err();
    assert!(
        matches!(&error, CaError::IdentityMismatch { requested, caller } if **requested == db && **caller == web()),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "CSR asks for spiffe://cluster.local/ns/shop/sa/db but the caller is spiffe://cluster.local/ns/shop/sa/web; \
         workloads may only request their own identity"
    );
    assert_eq!(error.kind(), crate::CaErrorKind::Denied);
}

#[test]
fn an_identity_in_a_foreign_trust_domain_is_refused() {
    let (_dir, ca) = new_ca();
    let foreign = id("spiffe://other.example/ns/shop/sa/web");
    let error = ca.sign(&csr_for(&foreign), &foreign, None, now(), &rng()).unwrap_err();
    assert!(matches!(&error, CaError::ForeignTrustDomain { id, .. } if id.trust_domain().as_str() == "other.example"));
    assert!(error.to_string().contains("signs only for cluster.local"), "{error}");
}

#[test]
fn an_identity_in_an_alias_trust_domain_is_signed() {
    let dir = TempDir::new();
    let config = CaConfig { trust_domain_aliases: vec!["old.example".parse().unwrap()], ..CaConfig::default() };
    let (ca, _) = CertificateAuthority::open_or_create(dir.path(), config, now(), &rng()).unwrap();
    let aliased = id("spiffe://old.example/ns/shop/sa/web");
    let svid = ca.sign(&csr_for(&aliased), &aliased, None, now(), &rng()).unwrap();
    assert_eq!(svid.id, aliased);
}

#[test]
fn sign_csr_parses_and_signs_in_one_call() {
    let (_dir, ca) = new_ca();
    let (csr_pem, _) = generate_csr(&web(), &rng()).unwrap();
    let svid = ca.sign_csr(csr_pem.as_bytes(), &web(), None, now(), &rng()).unwrap();
    assert_eq!(svid.id, web());
    assert!(matches!(ca.sign_csr(b"junk", &web(), None, now(), &rng()), Err(CaError::CsrParse { .. })));
}

#[test]
fn issue_with_new_key_returns_a_key_matching_the_certificate() {
    let (_dir, ca) = new_ca();
    let (svid, key_pem) = ca.issue_with_new_key(&web(), Some(HOUR), now(), &rng()).unwrap();
    let key = KeyPair::from_pem(key_pem.expose()).unwrap();
    let leaf = chain::parse(&svid.leaf_der).unwrap();
    assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), key.public_key_raw());
    assert_eq!(svid.not_after, now() + HOUR);
    let foreign = id("spiffe://other.example/ns/a/sa/b");
    assert!(matches!(ca.issue_with_new_key(&foreign, None, now(), &rng()), Err(CaError::ForeignTrustDomain { .. })));
}

#[test]
fn the_ca_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
}

// --- plugged-in CAs ---------------------------------------------------------------------------

#[test]
fn a_plugged_in_intermediate_signs_leaves_whose_chain_includes_it() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    let (ca, opened) = CertificateAuthority::open_or_create(dir.path(), CaConfig::default(), now(), &rng()).unwrap();
    assert_eq!(opened, Opened::LoadedExisting);
    let svid = sign_web(&ca, None);
    let chain = crate::pem::certificates(svid.chain_pem.as_bytes()).unwrap();
    assert_eq!(chain.len(), 2, "leaf, then the intermediate; the root stays out");
    assert_eq!(chain[1], ca.signing_cert_der());
    assert_eq!(ca.roots_der().len(), 1);
    webpki_verifies(&svid.chain_pem, &plugged.root_pem, now()).unwrap();
}

#[test]
fn a_leaf_never_outlives_a_plugged_in_intermediate() {
    let dir = TempDir::new();
    let plugged = PluggedCa::with_intermediate(ca_params("Short CA", now() - DAY, now() + 2 * HOUR));
    plugged.write(dir.path());
    let ca = CertificateAuthority::load(dir.path(), CaConfig::default(), now()).unwrap();
    let svid = sign_web(&ca, None);
    assert_eq!(svid.not_after, now() + 2 * HOUR);
    assert!(svid.ttl_capped);
}

fn load_error(dir: &TempDir) -> CaError {
    CertificateAuthority::load(dir.path(), CaConfig::default(), now()).unwrap_err()
}

#[test]
fn a_plugged_in_key_that_does_not_match_ca_cert_is_refused() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    let other = KeyPair::generate().unwrap().serialize_pem();
    crate::test_support::write_ca_files(
        dir.path(),
        &plugged.intermediate_pem,
        &other,
        &plugged.root_pem,
        &format!("{}{}", plugged.intermediate_pem, plugged.root_pem),
    );
    assert!(matches!(load_error(&dir), CaError::KeyMismatch { .. }));
}

#[test]
fn a_plugged_in_ca_cert_that_is_not_a_ca_is_refused() {
    let dir = TempDir::new();
    let mut params = ca_params("Not a CA", now() - DAY, now() + DAY);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    PluggedCa::with_intermediate(params).write(dir.path());
    let error = load_error(&dir);
    assert!(matches!(&error, CaError::NotCa { subject, .. } if subject.contains("Not a CA")), "{error:?}");
}

#[test]
fn a_plugged_in_ca_cert_without_key_cert_sign_is_refused() {
    let dir = TempDir::new();
    let mut params = ca_params("CRL only", now() - DAY, now() + DAY);
    params.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign];
    PluggedCa::with_intermediate(params).write(dir.path());
    assert!(matches!(load_error(&dir), CaError::NotCa { reason: "its KeyUsage lacks keyCertSign", .. }));
}

#[test]
fn a_cert_chain_that_does_not_start_with_ca_cert_is_refused() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    fs::write(dir.path().join(CERT_CHAIN_FILE), &plugged.root_pem).unwrap();
    assert!(matches!(load_error(&dir), CaError::ChainDoesNotStartWithCaCert { .. }));
}

#[test]
fn a_cert_chain_whose_next_link_did_not_sign_the_previous_is_refused() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    let stranger = PluggedCa::new();
    let chain = format!("{}{}", plugged.intermediate_pem, stranger.root_pem);
    fs::write(dir.path().join(CERT_CHAIN_FILE), chain).unwrap();
    let error = load_error(&dir);
    assert!(matches!(error, CaError::ChainBroken { index: 1, next: 2, .. }), "{error:?}");
}

#[test]
fn a_chain_that_ends_at_a_root_missing_from_the_bundle_is_refused() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    fs::write(dir.path().join(ROOT_CERT_FILE), PluggedCa::new().root_pem).unwrap();
    let error = load_error(&dir);
    assert!(matches!(&error, CaError::ChainNotAnchored { subject, .. } if subject.contains("Example Root CA")));
}

#[test]
fn a_chain_without_its_root_is_anchored_by_the_bundle() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    fs::write(dir.path().join(CERT_CHAIN_FILE), &plugged.intermediate_pem).unwrap();
    let ca = CertificateAuthority::load(dir.path(), CaConfig::default(), now()).unwrap();
    webpki_verifies(&sign_web(&ca, None).chain_pem, &plugged.root_pem, now()).unwrap();
}

#[test]
fn an_expired_plugged_in_intermediate_is_refused() {
    let dir = TempDir::new();
    PluggedCa::with_intermediate(ca_params("Old CA", now() - 30 * DAY, now() - DAY)).write(dir.path());
    let error = load_error(&dir);
    assert!(matches!(&error, CaError::CertExpired { subject, .. } if subject.contains("Old CA")), "{error:?}");
}

#[test]
fn a_plugged_in_intermediate_from_the_future_is_refused() {
    let dir = TempDir::new();
    PluggedCa::with_intermediate(ca_params("Future CA", now() + DAY, now() + 30 * DAY)).write(dir.path());
    assert!(matches!(load_error(&dir), CaError::CertNotYetValid { .. }));
}

#[test]
fn a_sec1_ec_key_is_refused_with_the_conversion_command() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    crate::test_support::write_ca_files(
        dir.path(),
        &plugged.intermediate_pem,
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        &plugged.root_pem,
        &plugged.intermediate_pem,
    );
    let error = load_error(&dir);
    assert!(matches!(error, CaError::BadKey { .. }), "{error:?}");
    assert!(error.to_string().contains("openssl pkcs8 -topk8 -nocrypt"));
}

#[test]
fn a_ca_cert_file_with_two_certificates_is_refused() {
    let dir = TempDir::new();
    let plugged = PluggedCa::new();
    plugged.write(dir.path());
    fs::write(dir.path().join(CA_CERT_FILE), format!("{}{}", plugged.intermediate_pem, plugged.root_pem)).unwrap();
    assert!(matches!(load_error(&dir), CaError::TooManyCaCerts { count: 2, .. }));
}

#[test]
fn an_empty_trust_bundle_is_refused() {
    let dir = TempDir::new();
    PluggedCa::new().write(dir.path());
    fs::write(dir.path().join(ROOT_CERT_FILE), "").unwrap();
    assert!(matches!(load_error(&dir), CaError::NoCertificate { .. }));
}
