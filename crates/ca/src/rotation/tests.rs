use super::*;
use crate::test_support::{DAY, PluggedCa, TempDir, id, new_ca, now, rng, webpki_verifies};
use crate::{CertificateAuthority, IssuedSvid, generate_csr};
use std::time::Duration;

fn config() -> CaConfig {
    CaConfig::default()
}

fn reload(dir: &Path, at: SystemTime) -> CertificateAuthority {
    CertificateAuthority::load(dir, config(), at).unwrap()
}

fn sign(ca: &CertificateAuthority, at: SystemTime) -> IssuedSvid {
    let web = id("spiffe://cluster.local/ns/shop/sa/web");
    let (csr, _) = generate_csr(&web, &rng()).unwrap();
    ca.sign_csr(csr.as_bytes(), &web, None, at, &rng()).unwrap()
}

fn bundle(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(ROOT_CERT_FILE)).unwrap()
}

#[test]
fn a_fresh_ca_is_idle_and_its_next_step_is_prepare() {
    let (dir, _) = new_ca();
    let status = status(dir.path()).unwrap();
    assert_eq!(status.stage, RotationStage::Idle);
    assert_eq!(status.next_step, RotationStep::Prepare);
    assert_eq!(status.roots_in_bundle, 1);
}

#[test]
fn prepare_adds_a_new_root_to_the_bundle_but_keeps_signing_with_the_old() {
    let (dir, old) = new_ca();
    let status = prepare(dir.path(), now(), &rng()).unwrap();
    assert_eq!(status.stage, RotationStage::Prepared);
    assert_eq!(status.roots_in_bundle, 2);
    let new_root = status.new_root.unwrap();
    assert_eq!(new_root.subject, "O=zmesh, CN=zmesh root CA");
    assert_ne!(Some(new_root.serial_hex), status.old_root.map(|root| root.serial_hex));
    let ca = reload(dir.path(), now());
    assert_eq!(ca.signing_cert_der(), old.signing_cert_der());
    assert_eq!(ca.roots_der().len(), 2);
}

#[test]
fn a_leaf_signed_before_activation_still_verifies_after_it_and_stops_after_retire() {
    let (dir, old_ca) = new_ca();
    let old_leaf = sign(&old_ca, now());

    prepare(dir.path(), now(), &rng()).unwrap();
    let later = now() + DAY;
    let activated = activate(dir.path(), &config(), later).unwrap();
    assert_eq!(activated.stage, RotationStage::Activated);
    assert_eq!(activated.next_step, RotationStep::Retire);

    let new_ca = reload(dir.path(), later);
    assert_ne!(new_ca.signing_cert_der(), old_ca.signing_cert_der());
    let new_leaf = sign(&new_ca, later);
    let check_at = later + Duration::from_secs(60);
    webpki_verifies(&old_leaf.chain_pem, &bundle(dir.path()), now() + Duration::from_secs(60)).unwrap();
    webpki_verifies(&new_leaf.chain_pem, &bundle(dir.path()), check_at).unwrap();

    let until = activated.old_leaves_valid_until.unwrap();
    let retired = retire(dir.path(), until, RetireCheck::WaitForOldLeaves).unwrap();
    assert_eq!(retired.stage, RotationStage::Idle);
    assert_eq!(retired.roots_in_bundle, 1);
    assert!(!dir.path().join(ROTATION_DIR).exists());
    let error = webpki_verifies(&old_leaf.chain_pem, &bundle(dir.path()), now() + Duration::from_secs(60)).unwrap_err();
    // Both roots are named "zmesh root CA", so webpki finds the new one by name and then
    // rejects the signature; either way the old leaf no longer verifies.
    assert!(error.contains("UnknownIssuer") || error.contains("InvalidSignatureForPublicKey"), "{error}");
    webpki_verifies(&new_leaf.chain_pem, &bundle(dir.path()), check_at).unwrap();
    reload(dir.path(), until);
}

#[test]
fn retire_waits_until_no_leaf_of_the_old_root_can_be_valid() {
    let (dir, _) = new_ca();
    prepare(dir.path(), now(), &rng()).unwrap();
    let activated = activate(dir.path(), &config(), now()).unwrap();
    let until = activated.old_leaves_valid_until.unwrap();
    assert_eq!(until, now() + config().max_ttl);
    let error = retire(dir.path(), until - Duration::from_secs(1), RetireCheck::WaitForOldLeaves).unwrap_err();
    assert!(matches!(error, CaError::OldLeavesStillValid { until: u } if u == until), "{error:?}");
    assert_eq!(retire(dir.path(), now(), RetireCheck::Force).unwrap().stage, RotationStage::Idle);
}

#[test]
fn activate_before_prepare_says_prepare_comes_next() {
    let (dir, _) = new_ca();
    let error = activate(dir.path(), &config(), now()).unwrap_err();
    assert!(
        matches!(
            error,
            CaError::RotationOutOfOrder {
                attempted: RotationStep::Activate,
                stage: RotationStage::Idle,
                next: RotationStep::Prepare
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("the next step is `prepare`"), "{error}");
}

#[test]
fn preparing_twice_says_activate_comes_next() {
    let (dir, _) = new_ca();
    prepare(dir.path(), now(), &rng()).unwrap();
    let error = prepare(dir.path(), now(), &rng()).unwrap_err();
    assert!(matches!(error, CaError::RotationOutOfOrder { next: RotationStep::Activate, .. }), "{error:?}");
    assert_eq!(status(dir.path()).unwrap().roots_in_bundle, 2, "the refused step changed nothing");
}

#[test]
fn activating_twice_says_retire_comes_next() {
    let (dir, _) = new_ca();
    prepare(dir.path(), now(), &rng()).unwrap();
    activate(dir.path(), &config(), now()).unwrap();
    let error = activate(dir.path(), &config(), now()).unwrap_err();
    assert!(matches!(error, CaError::RotationOutOfOrder { next: RotationStep::Retire, .. }), "{error:?}");
}

#[test]
fn retire_while_the_old_root_still_signs_is_refused_and_says_so() {
    let (dir, _) = new_ca();
    prepare(dir.path(), now(), &rng()).unwrap();
    let error = retire(dir.path(), now(), RetireCheck::Force).unwrap_err();
    assert!(matches!(error, CaError::RetireWhileOldRootSigns), "{error:?}");
    assert!(error.to_string().contains("it still signs"), "{error}");
}

#[test]
fn retire_without_a_rotation_says_prepare_comes_next() {
    let (dir, _) = new_ca();
    let error = retire(dir.path(), now(), RetireCheck::Force).unwrap_err();
    assert!(matches!(error, CaError::RotationOutOfOrder { stage: RotationStage::Idle, .. }), "{error:?}");
}

#[test]
fn a_plugged_in_ca_is_not_rotated_by_generating_a_root() {
    let dir = TempDir::new();
    PluggedCa::new().write(dir.path());
    let error = prepare(dir.path(), now(), &rng()).unwrap_err();
    assert!(matches!(error, CaError::RotationOfPluggedCa { .. }), "{error:?}");
}

#[test]
fn the_next_root_key_is_owner_only_and_not_kept_twice_after_activation() {
    let (dir, _) = new_ca();
    prepare(dir.path(), now(), &rng()).unwrap();
    let next_key = dir.path().join(NEXT_ROOT_KEY);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&next_key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    activate(dir.path(), &config(), now()).unwrap();
    assert!(!next_key.exists());
}

#[test]
fn activation_is_refused_if_the_new_root_was_removed_from_the_bundle() {
    let (dir, old) = new_ca();
    prepare(dir.path(), now(), &rng()).unwrap();
    std::fs::write(dir.path().join(ROOT_CERT_FILE), old.trust_bundle_pem()).unwrap();
    let error = activate(dir.path(), &config(), now()).unwrap_err();
    assert!(matches!(error, CaError::BadRotationState { .. }), "{error:?}");
}
