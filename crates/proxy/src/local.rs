//! The proxy fed from local files (`zmesh proxy --config DIR --ca-dir DIR --workload NS/NAME`):
//! configuration from a directory of YAML, and an SVID issued directly from a CA directory.
//! Used for tests and single-host meshes; the control plane replaces both sources later.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ring::rand::SystemRandom;
use zmesh_ca::{CaConfig, CertificateAuthority};
use zmesh_config::Config;
use zmesh_tls::{CertStore, Identity, TrustBundle, TrustDomains};

use zmesh_registry::{MeshWorkload, Registry};

/// Why the proxy cannot start from local files.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the configuration is invalid:\n{0}")]
    Config(String),
    #[error("--workload must be NAMESPACE/NAME, got `{0}`")]
    WorkloadFlag(String),
    #[error(transparent)]
    Workload(#[from] zmesh_registry::WorkloadError),
    #[error("cannot issue the workload's certificate: {0}")]
    Identity(String),
}

/// Everything the proxy needs, read once at start.
#[derive(Debug)]
pub struct Local {
    pub config: Config,
    pub registry: Registry,
    pub workload: Arc<MeshWorkload>,
    pub store: Arc<CertStore>,
    pub trust_domains: TrustDomains,
    /// The CA certificates are renewed from; `None` when the identity came from files.
    ca: Option<CertificateAuthority>,
}

/// Where the workload's certificate comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// Issue (and renew) from a CA directory.
    CaDir(std::path::PathBuf),
    /// Fixed files: the certificate chain, its key, and the trust bundle (no renewal; for
    /// certificates another system manages, and benchmarks).
    Files { chain: std::path::PathBuf, key: std::path::PathBuf, roots: std::path::PathBuf },
}

pub fn trust_domains(config: &Config) -> TrustDomains {
    trust_domains_of(&config.mesh)
}

/// The trust domain and its aliases, as peers' certificates are checked against them.
pub fn trust_domains_of(mesh: &zmesh_config::mesh::MeshConfig) -> TrustDomains {
    TrustDomains::new(mesh.trust_domain.clone()).with_aliases(mesh.trust_domain_aliases.iter().cloned())
}

fn issue(
    ca: &CertificateAuthority,
    workload: &MeshWorkload,
    domains: &TrustDomains,
) -> Result<(Identity, TrustBundle), LocalError> {
    let now = SystemTime::now();
    let (svid, key) = ca
        .issue_with_new_key(&workload.identity, None, now, &SystemRandom::new())
        .map_err(|e| LocalError::Identity(e.to_string()))?;
    let identity =
        Identity::from_pem(&svid.chain_pem, key.expose()).map_err(|e| LocalError::Identity(e.to_string()))?;
    let bundle = TrustBundle::from_pem(ca.trust_bundle_pem(), domains.clone())
        .map_err(|e| LocalError::Identity(e.to_string()))?;
    Ok((identity, bundle))
}

fn from_files(
    chain: &Path,
    key: &Path,
    roots: &Path,
    workload: &MeshWorkload,
    domains: &TrustDomains,
) -> Result<(Identity, TrustBundle), LocalError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| LocalError::Identity(format!("cannot read {}: {e}", path.display())))
    };
    let identity = Identity::from_pem(read(chain)?, read(key)?).map_err(|e| LocalError::Identity(e.to_string()))?;
    if identity.spiffe_id() != &workload.identity {
        return Err(LocalError::Identity(format!(
            "{} holds {}, but workload {}/{} is {}",
            chain.display(),
            identity.spiffe_id(),
            workload.namespace,
            workload.name,
            workload.identity
        )));
    }
    let bundle =
        TrustBundle::from_pem(read(roots)?, domains.clone()).map_err(|e| LocalError::Identity(e.to_string()))?;
    Ok((identity, bundle))
}

impl Local {
    /// The configuration the proxy starts with (and keeps: local files are read once).
    pub fn proxy_config(&self) -> crate::config::ProxyConfig {
        crate::config::ProxyConfig::from_config(
            "local".to_owned(),
            self.workload.clone(),
            self.registry.clone(),
            &self.config,
        )
    }

    pub fn load(config_dir: &Path, identity: &IdentitySource, workload: &str) -> Result<Local, LocalError> {
        let (namespace, name) = workload
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .ok_or_else(|| LocalError::WorkloadFlag(workload.to_owned()))?;
        let loaded = zmesh_config::load_paths(&[config_dir.to_path_buf()], None);
        if loaded.has_errors() {
            return Err(LocalError::Config(loaded.errors().map(ToString::to_string).collect::<Vec<_>>().join("\n")));
        }
        crate::config::log_warnings(&loaded.diagnostics);
        let config = loaded.config;
        let registry = Registry::from_config(&config);
        let workload = registry.workload(&config, namespace, name)?;
        let domains = trust_domains(&config);
        let (ca, (identity, bundle)) = match identity {
            IdentitySource::CaDir(ca_dir) => {
                let ca_config = CaConfig {
                    trust_domain: config.mesh.trust_domain.clone(),
                    trust_domain_aliases: config.mesh.trust_domain_aliases.clone(),
                    ..CaConfig::default()
                };
                let ca = CertificateAuthority::load(ca_dir, ca_config, SystemTime::now())
                    .map_err(|e| LocalError::Identity(e.to_string()))?;
                let issued = issue(&ca, &workload, &domains)?;
                (Some(ca), issued)
            }
            IdentitySource::Files { chain, key, roots } => (None, from_files(chain, key, roots, &workload, &domains)?),
        };
        Ok(Local {
            store: Arc::new(CertStore::new(identity, bundle)),
            config,
            registry,
            workload,
            trust_domains: domains,
            ca,
        })
    }

    /// Re-issue the SVID at half of its lifetime, forever (nothing to do for fixed files).
    pub async fn rotate(&self, stop: tokio_util::sync::CancellationToken) {
        let Some(ca) = &self.ca else { return };
        loop {
            let current = self.store.identity();
            let now = SystemTime::now();
            let renew = zmesh_ca::renew_at(now.min(current.not_after()), current.not_after(), 0.5);
            let wait = renew.duration_since(now).unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            match issue(ca, &self.workload, &self.trust_domains) {
                Ok((identity, bundle)) => {
                    self.store.set_bundle(bundle);
                    self.store.set_identity(identity);
                }
                Err(error) => {
                    tracing::warn!(%error, "renewal from the local CA failed; keeping the current certificate")
                }
            }
        }
    }
}
