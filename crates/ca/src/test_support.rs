//! Fixtures shared by the unit tests: temporary directories, fixed times, identities, and a
//! plugged-in CA (root + intermediate) built with rcgen.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use ring::rand::SystemRandom;
use zmesh_id::SpiffeId;

use crate::{CaConfig, CertificateAuthority, pem};

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("zmesh-ca-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(unique);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 2025-01-01T00:00:00Z: tests never read the clock.
pub(crate) fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(86_400);

pub(crate) fn rng() -> SystemRandom {
    SystemRandom::new()
}

pub(crate) fn id(text: &str) -> SpiffeId {
    text.parse().unwrap()
}

/// A fresh self-generated CA in a new temp dir.
pub(crate) fn new_ca() -> (TempDir, CertificateAuthority) {
    let dir = TempDir::new();
    let (ca, _) = CertificateAuthority::open_or_create(dir.path(), CaConfig::default(), now(), &rng()).unwrap();
    (dir, ca)
}

/// A plugged-in CA as an operator would make one: an offline root and an intermediate it signed.
pub(crate) struct PluggedCa {
    pub(crate) root_pem: String,
    pub(crate) intermediate_key: KeyPair,
    pub(crate) intermediate_pem: String,
}

pub(crate) fn ca_params(common_name: &str, not_before: SystemTime, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Example Corp");
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params
}

impl PluggedCa {
    pub(crate) fn new() -> Self {
        Self::with_intermediate(ca_params("Example Intermediate CA", now() - DAY, now() + 365 * DAY))
    }

    pub(crate) fn with_intermediate(intermediate_params: CertificateParams) -> Self {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Example Root CA", now() - DAY, now() + 3650 * DAY);
        let root_pem = root_params.self_signed(&root_key).unwrap().pem();
        let intermediate_key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&root_params, &root_key);
        let intermediate_pem = intermediate_params.signed_by(&intermediate_key, &issuer).unwrap().pem();
        Self { root_pem, intermediate_key, intermediate_pem }
    }

    /// Write Istio's layout: ca-cert = intermediate, cert-chain = intermediate + root.
    pub(crate) fn write(&self, dir: &Path) {
        write_ca_files(
            dir,
            &self.intermediate_pem,
            &self.intermediate_key.serialize_pem(),
            &self.root_pem,
            &format!("{}{}", self.intermediate_pem, self.root_pem),
        );
    }
}

pub(crate) fn write_ca_files(dir: &Path, ca_cert: &str, ca_key: &str, root_cert: &str, cert_chain: &str) {
    use crate::store::{CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
    std::fs::write(dir.join(CA_CERT_FILE), ca_cert).unwrap();
    std::fs::write(dir.join(ROOT_CERT_FILE), root_cert).unwrap();
    std::fs::write(dir.join(CERT_CHAIN_FILE), cert_chain).unwrap();
    let key_path = dir.join(CA_KEY_FILE);
    std::fs::write(&key_path, ca_key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Verify `chain_pem` (leaf first) against `roots_pem` at `at` the way zmesh-tls will: webpki,
/// client-auth usage, and no name constraints beyond what the certificates carry.
pub(crate) fn webpki_verifies(chain_pem: &str, roots_pem: &str, at: SystemTime) -> Result<(), String> {
    use rustls_pki_types::{CertificateDer, UnixTime};
    let chain = pem::certificates(chain_pem.as_bytes()).unwrap();
    let roots_der = pem::certificates(roots_pem.as_bytes()).unwrap();
    let anchors: Vec<_> = roots_der
        .iter()
        .map(|der| webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice())).unwrap().to_owned())
        .collect();
    let leaf_der = CertificateDer::from(chain[0].as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| e.to_string())?;
    let intermediates: Vec<CertificateDer<'_>> =
        chain[1..].iter().map(|der| CertificateDer::from(der.as_slice())).collect();
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        time,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}
