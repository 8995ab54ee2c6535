//! What this proxy trusts: the mesh CA roots and the trust domains whose SPIFFE IDs it accepts.
//!
//! Both live in one value because they change together when the mesh configuration changes, and
//! a handshake must see a consistent pair.

use std::fmt;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use zmesh_id::TrustDomain;

use crate::error::{PemInput, RootSubjects, TlsError, Whose};
use crate::identity::parse_certificate;

/// The trust domains whose SPIFFE IDs this proxy accepts: its own, plus aliases (former names of
/// this mesh, kept while workloads still carry SVIDs issued under them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustDomains {
    local: TrustDomain,
    aliases: Vec<TrustDomain>,
}

impl TrustDomains {
    /// Only the local trust domain, no alias.
    pub fn new(local: TrustDomain) -> Self {
        Self { local, aliases: Vec::new() }
    }

    /// Also accept these trust domains. Duplicates and the local domain itself are dropped so
    /// error messages list each domain once.
    pub fn with_aliases(mut self, aliases: impl IntoIterator<Item = TrustDomain>) -> Self {
        for alias in aliases {
            if alias != self.local && !self.aliases.contains(&alias) {
                self.aliases.push(alias);
            }
        }
        self
    }

    pub fn local(&self) -> &TrustDomain {
        &self.local
    }

    pub fn aliases(&self) -> &[TrustDomain] {
        &self.aliases
    }

    pub fn accepts(&self, domain: &TrustDomain) -> bool {
        *domain == self.local || self.aliases.contains(domain)
    }
}

impl fmt::Display for TrustDomains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`", self.local)?;
        match self.aliases.as_slice() {
            [] => f.write_str(" and no alias"),
            aliases => {
                f.write_str(" and the aliases")?;
                for (position, alias) in aliases.iter().enumerate() {
                    f.write_str(if position == 0 { " " } else { ", " })?;
                    write!(f, "`{alias}`")?;
                }
                Ok(())
            }
        }
    }
}

/// The roots a peer's chain must lead to, and the trust domains its SPIFFE ID may be in.
///
/// Holds several roots so that a root rotation can keep the old and the new root side by side
/// until every SVID has been reissued under the new one.
#[derive(Debug)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    root_subjects: RootSubjects,
    domains: TrustDomains,
}

impl TrustBundle {
    /// Load every `CERTIFICATE` block of `roots_pem` as a root.
    pub fn from_pem(roots_pem: impl AsRef<[u8]>, domains: TrustDomains) -> Result<Self, TlsError> {
        let roots = CertificateDer::pem_slice_iter(roots_pem.as_ref())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem { what: PemInput::TrustBundle, source })?;
        if roots.is_empty() {
            // An empty bundle would reject every peer, with a far less helpful message.
            return Err(TlsError::NoCertificates { what: PemInput::TrustBundle });
        }
        let mut anchors = Vec::with_capacity(roots.len());
        let mut subjects = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            let whose = Whose::BundleRoot { index };
            subjects.push(parse_certificate(root, whose)?.subject().to_string());
            let anchor = webpki::anchor_from_trusted_cert(root)
                .map_err(|error| TlsError::BadCertificate { whose, reason: error.to_string() })?;
            anchors.push(anchor.to_owned());
        }
        Ok(Self { roots, anchors, root_subjects: RootSubjects(subjects), domains })
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The same roots, accepting SPIFFE IDs of `domains` (the mesh's aliases become known only
    /// with its configuration, after the first certificate).
    pub fn with_domains(&self, domains: TrustDomains) -> Self {
        Self {
            roots: self.roots.clone(),
            anchors: self.anchors.clone(),
            root_subjects: self.root_subjects.clone(),
            domains,
        }
    }

    pub fn trust_domains(&self) -> &TrustDomains {
        &self.domains
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub(crate) fn root_subjects(&self) -> &RootSubjects {
        &self.root_subjects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str) -> TrustDomain {
        name.parse().expect("test trust domains are valid")
    }

    #[test]
    fn only_the_local_domain_is_accepted_without_aliases() {
        let domains = TrustDomains::new(domain("cluster.local"));
        assert!(domains.accepts(&domain("cluster.local")));
        assert!(!domains.accepts(&domain("old.local")));
        assert_eq!(domains.to_string(), "`cluster.local` and no alias");
    }

    #[test]
    fn configured_aliases_are_accepted_and_listed_once() {
        let domains = TrustDomains::new(domain("cluster.local")).with_aliases([
            domain("old.local"),
            domain("cluster.local"),
            domain("old.local"),
            domain("legacy.local"),
        ]);
        assert!(domains.accepts(&domain("old.local")));
        assert!(domains.accepts(&domain("legacy.local")));
        assert_eq!(domains.aliases(), [domain("old.local"), domain("legacy.local")]);
        assert_eq!(domains.to_string(), "`cluster.local` and the aliases `old.local`, `legacy.local`");
    }

    #[test]
    fn a_bundle_without_certificates_is_refused() {
        let error = TrustBundle::from_pem("", TrustDomains::new(domain("cluster.local"))).unwrap_err();
        assert!(matches!(error, TlsError::NoCertificates { what: PemInput::TrustBundle }), "{error}");
    }
}
