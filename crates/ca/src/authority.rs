//! The certificate authority: opened from its directory, then asked to sign.
//!
//! Flow: `open_or_create` (first start writes a new root) or `load` (validate the four files)
//! → `sign` (check the caller may have the identity, decide validity, sign the leaf).
//! After a rotation step changes the directory, `load` it again to pick up the new signer.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use ring::rand::SecureRandom;
use zmesh_id::{Namespace, ServiceAccount, SpiffeId, TrustDomain};

use crate::chain::{self, Layout};
use crate::keys::{self, SubjectKey};
use crate::pem::{self, PrivateKeyPem};
use crate::signing::{self, IssuedSvid, Limits};
use crate::store::{self, CA_CERT_FILE, CA_FILES, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE, Transaction};
use crate::{CaError, Csr, root};

/// The lifetime of an SVID when the request names none (DESIGN.md §4).
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest SVID the CA issues unless configured otherwise. Workloads renew at half-life,
/// so a week only matters to machines outside the mesh (`zmesh ca issue`); longer leaves
/// would also hold up retiring a rotated root for longer.
pub const DEFAULT_MAX_SVID_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// What the CA signs for and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    /// Other trust domains the CA also signs for (meshConfig `trustDomainAliases`).
    pub trust_domain_aliases: Vec<TrustDomain>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

impl CaConfig {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            trust_domain_aliases: Vec::new(),
            default_ttl: DEFAULT_SVID_TTL,
            max_ttl: DEFAULT_MAX_SVID_TTL,
        }
    }

    pub fn accepts(&self, trust_domain: &TrustDomain) -> bool {
        *trust_domain == self.trust_domain || self.trust_domain_aliases.contains(trust_domain)
    }

    fn accepted(&self) -> String {
        if self.trust_domain_aliases.is_empty() {
            return self.trust_domain.to_string();
        }
        let aliases: Vec<&str> = self.trust_domain_aliases.iter().map(TrustDomain::as_str).collect();
        format!("{} (aliases: {})", self.trust_domain, aliases.join(", "))
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        Self::new(TrustDomain::default())
    }
}

/// How `open_or_create` found the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The directory had no CA; a new self-signed root was written to it.
    GeneratedRoot,
    /// The directory already held a CA (self-generated earlier, or plugged in).
    LoadedExisting,
}

/// A CA ready to sign. Immutable: share it behind an `Arc`, and replace it after a rotation.
pub struct CertificateAuthority {
    config: CaConfig,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    signing_cert_der: Vec<u8>,
    /// Appended after each leaf: the intermediates, as PEM (empty when ca-cert is the root).
    chain_tail_pem: String,
    roots: Vec<Vec<u8>>,
    bundle_pem: String,
    signer_not_before: SystemTime,
    signer_not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("trust_domain", &self.config.trust_domain)
            .field("roots", &self.roots.len())
            .field("signer_not_after", &self.signer_not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Load the CA in `dir`, or on first start (no CA files at all) generate a self-signed root
    /// there. A directory holding only some of the four files is an error, never a reason to
    /// overwrite: a missing file is more likely a mistake than a wish for a new root.
    pub fn open_or_create(
        dir: &Path,
        config: CaConfig,
        now: SystemTime,
        rng: &dyn SecureRandom,
    ) -> Result<(Self, Opened), CaError> {
        store::ensure_dir(dir)?;
        store::recover(dir)?;
        let missing: Vec<&str> = CA_FILES.into_iter().filter(|name| !store::exists(&dir.join(name))).collect();
        let opened = match missing.len() {
            0 => Opened::LoadedExisting,
            n if n == CA_FILES.len() => {
                let new_root = root::generate(now, rng)?;
                let mut tx = Transaction::new();
                tx.put_secret(CA_KEY_FILE, new_root.key_pem)
                    .put(CA_CERT_FILE, new_root.cert_pem.clone())
                    .put(CERT_CHAIN_FILE, new_root.cert_pem.clone())
                    .put(ROOT_CERT_FILE, new_root.cert_pem);
                tx.commit(dir)?;
                Opened::GeneratedRoot
            }
            _ => return Err(CaError::IncompleteCaDir { dir: dir.to_owned(), missing: missing.join(", ") }),
        };
        Ok((Self::load(dir, config, now)?, opened))
    }

    /// Load and validate the CA in `dir` (Istio's layout, self-generated or plugged in).
    pub fn load(dir: &Path, config: CaConfig, now: SystemTime) -> Result<Self, CaError> {
        if store::exists(dir) {
            store::recover(dir)?;
        }
        let layout = Layout::new(dir);
        let material = chain::load(&layout, now)?;
        let not_reproducible = || {
            let subject = chain::parse(&material.ca_cert).map(|cert| chain::subject(&cert)).unwrap_or_default();
            CaError::IssuerNameNotReproducible { path: layout.ca_cert.clone(), subject }
        };
        let issuer = Issuer::from_ca_cert_der(&material.ca_cert.as_slice().into(), material.key)
            .map_err(|_| not_reproducible())?;
        let ca = Self {
            config,
            dir: dir.to_owned(),
            issuer,
            signing_cert_der: material.ca_cert.clone(),
            chain_tail_pem: pem::encode_certificates(material.chain_tail.iter().map(Vec::as_slice)),
            bundle_pem: pem::encode_certificates(material.roots.iter().map(Vec::as_slice)),
            roots: material.roots,
            signer_not_before: material.not_before,
            signer_not_after: material.not_after,
        };
        if !ca.probe_chains(now)? {
            return Err(not_reproducible());
        }
        Ok(ca)
    }

    /// Sign `csr` for `caller`, the identity the caller *proved* (by token). The CSR must ask
    /// for exactly that identity, in a trust domain this CA serves. `ttl` of `None` means the
    /// default; more than the maximum is capped (and `ttl_capped` says so).
    pub fn sign(
        &self,
        csr: &Csr,
        caller: &SpiffeId,
        ttl: Option<Duration>,
        now: SystemTime,
        rng: &dyn SecureRandom,
    ) -> Result<IssuedSvid, CaError> {
        let requested = csr.requested_id();
        if requested != caller {
            return Err(CaError::IdentityMismatch {
                requested: Box::new(requested.clone()),
                caller: Box::new(caller.clone()),
            });
        }
        self.check_trust_domain(requested)?;
        self.issue(requested, &csr.subject_key, csr.key_algorithm().is_rsa(), ttl, now, rng)
    }

    /// [`Csr::parse`] then [`sign`](Self::sign): the signing service's whole job for one request.
    pub fn sign_csr(
        &self,
        csr: &[u8],
        caller: &SpiffeId,
        ttl: Option<Duration>,
        now: SystemTime,
        rng: &dyn SecureRandom,
    ) -> Result<IssuedSvid, CaError> {
        self.sign(&Csr::parse(csr)?, caller, ttl, now, rng)
    }

    /// Issue an SVID together with a new ECDSA P-256 key, for a machine outside the mesh that
    /// cannot make its own CSR (`zmesh ca issue`). The operator running this is the proof of
    /// identity, so only the trust domain is checked.
    pub fn issue_with_new_key(
        &self,
        id: &SpiffeId,
        ttl: Option<Duration>,
        now: SystemTime,
        rng: &dyn SecureRandom,
    ) -> Result<(IssuedSvid, PrivateKeyPem), CaError> {
        self.check_trust_domain(id)?;
        let key = keys::generate_p256(rng)?;
        let svid = self.issue(id, &key, false, ttl, now, rng)?;
        Ok((svid, PrivateKeyPem::new(key.serialize_pem())))
    }

    /// The trust bundle (root-cert.pem as loaded): what peers verify SVIDs against.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The roots of the trust bundle, as DER.
    pub fn roots_der(&self) -> &[Vec<u8>] {
        &self.roots
    }

    /// The certificate that signs leaves (ca-cert.pem), as DER.
    pub fn signing_cert_der(&self) -> &[u8] {
        &self.signing_cert_der
    }

    /// No leaf is issued past this instant; plug in or rotate to a new CA before it.
    pub fn signing_cert_not_after(&self) -> SystemTime {
        self.signer_not_after
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_trust_domain(&self, id: &SpiffeId) -> Result<(), CaError> {
        if self.config.accepts(id.trust_domain()) {
            return Ok(());
        }
        Err(CaError::ForeignTrustDomain { id: Box::new(id.clone()), accepted: self.config.accepted() })
    }

    fn limits(&self) -> Limits {
        Limits {
            default_ttl: self.config.default_ttl,
            max_ttl: self.config.max_ttl,
            signer_not_before: self.signer_not_before,
            signer_not_after: self.signer_not_after,
        }
    }

    fn issue(
        &self,
        id: &SpiffeId,
        key: &impl PublicKeyData,
        rsa_key: bool,
        ttl: Option<Duration>,
        now: SystemTime,
        rng: &dyn SecureRandom,
    ) -> Result<IssuedSvid, CaError> {
        let validity = signing::validity(now, ttl, &self.limits())?;
        let serial = signing::new_serial(rng)?;
        let params = signing::leaf_params(id, &validity, &serial, rsa_key)?;
        let leaf =
            params.signed_by(key, &self.issuer).map_err(|source| CaError::Rcgen { action: "sign a leaf", source })?;
        let leaf_der = leaf.der().to_vec();
        let mut chain_pem = pem::encode(pem::CERTIFICATE, &leaf_der);
        chain_pem.push_str(&self.chain_tail_pem);
        Ok(IssuedSvid {
            id: id.clone(),
            chain_pem,
            leaf_der,
            serial_hex: pem::hex_unsigned(&serial),
            not_before: validity.not_before,
            not_after: validity.not_after,
            ttl_capped: validity.capped,
        })
    }

    /// Sign a throwaway leaf and check it chains to ca-cert byte for byte. rcgen rebuilds the
    /// issuer name from the parsed subject; if that ever differs from the original bytes, every
    /// leaf would fail in peers' handshakes, so find out at startup instead.
    fn probe_chains(&self, now: SystemTime) -> Result<bool, CaError> {
        let probe_id = SpiffeId::new(
            self.config.trust_domain.clone(),
            "zmesh-system".parse::<Namespace>().expect("a constant RFC 1123 label is a valid namespace"),
            "ca-self-test".parse::<ServiceAccount>().expect("a constant RFC 1123 name is a valid service account"),
        );
        let signing_key = self.issuer.key();
        let probe_key = SubjectKey { raw: signing_key.public_key_raw().to_vec(), algorithm: signing_key.algorithm() };
        let limits = Limits { default_ttl: Duration::from_secs(60), ..self.limits() };
        let validity = signing::validity(now, None, &limits)?;
        let params = signing::leaf_params(&probe_id, &validity, &[1; 16], false)?;
        let leaf = params
            .signed_by(&probe_key, &self.issuer)
            .map_err(|source| CaError::Rcgen { action: "sign the start-up probe", source })?;
        let (Ok(leaf), Ok(ca)) = (chain::parse(leaf.der()), chain::parse(&self.signing_cert_der)) else {
            return Ok(false);
        };
        Ok(chain::is_signed_by(&leaf, &ca))
    }
}

#[cfg(test)]
mod tests;
