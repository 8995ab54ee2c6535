//! Reading the four CA files and checking that together they make a CA: the key matches the
//! signing certificate, which is a CA, whose chain links up to a root in the bundle, with
//! nothing expired. Each way this can fail has its own error naming the file to fix.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::KeyPair;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::store::{self, CA_CERT_FILE, CA_KEY_FILE, CERT_CHAIN_FILE, ROOT_CERT_FILE};
use crate::{CaError, clock, pem};

/// Where each of the CA's files lives.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) ca_cert: PathBuf,
    pub(crate) ca_key: PathBuf,
    pub(crate) root_cert: PathBuf,
    pub(crate) cert_chain: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join(CA_CERT_FILE),
            ca_key: dir.join(CA_KEY_FILE),
            root_cert: dir.join(ROOT_CERT_FILE),
            cert_chain: dir.join(CERT_CHAIN_FILE),
        }
    }
}

/// A validated CA, ready to sign.
#[derive(Debug)]
pub(crate) struct CaMaterial {
    pub(crate) key: KeyPair,
    pub(crate) ca_cert: Vec<u8>,
    /// What follows a leaf in its chain: the certificates of cert-chain.pem that are not roots
    /// in the bundle. Empty when ca-cert is itself a root.
    pub(crate) chain_tail: Vec<Vec<u8>>,
    pub(crate) roots: Vec<Vec<u8>>,
    /// The bundle root the chain ends at.
    pub(crate) anchor: Vec<u8>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((_, _)) => Err("trailing bytes after the certificate".to_owned()),
        Err(error) => Err(error.to_string()),
    }
}

/// Whether `child` names `parent` as its issuer and carries a signature `parent`'s key made.
/// Names are compared as raw bytes, as webpki does, so a chain that passes here chains for peers.
pub(crate) fn is_signed_by(child: &X509Certificate<'_>, parent: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == parent.subject().as_raw() && child.verify_signature(Some(parent.public_key())).is_ok()
}

/// The DER of every certificate in a PEM file; `expected` says what the file should hold.
pub(crate) fn read_certificates(path: &Path, expected: &'static str) -> Result<Vec<Vec<u8>>, CaError> {
    let text = store::read(path)?;
    let ders = pem::certificates(&text).map_err(|detail| CaError::BadCertificate {
        path: path.to_owned(),
        index: 1,
        detail,
    })?;
    if ders.is_empty() {
        return Err(CaError::NoCertificate { path: path.to_owned(), expected });
    }
    for (index, der) in ders.iter().enumerate() {
        parse(der).map_err(|detail| CaError::BadCertificate { path: path.to_owned(), index: index + 1, detail })?;
    }
    Ok(ders)
}

/// Read a PKCS#8 private key from a file only its owner may read.
pub(crate) fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    let text = store::read_secret(path)?;
    let bad = |detail: String| CaError::BadKey { path: path.to_owned(), detail };
    let blocks = pem::blocks(&text).map_err(bad)?;
    let Some(block) = blocks.first() else {
        return Err(bad("no PEM block found".to_owned()));
    };
    if block.label != pem::PRIVATE_KEY {
        return Err(bad(format!("it is a `{}` block", block.label)));
    }
    KeyPair::try_from(block.contents.as_slice()).map_err(|error| bad(error.to_string()))
}

pub(crate) fn subject(cert: &X509Certificate<'_>) -> String {
    let name = cert.subject().to_string();
    if name.is_empty() { "(empty subject)".to_owned() } else { name }
}

/// Read the CA files in `layout` and check that they make a CA that may sign at `now`.
pub(crate) fn load(layout: &Layout, now: SystemTime) -> Result<CaMaterial, CaError> {
    // The key first: a key others can read must stop startup before anything else is looked at.
    let key = read_key(&layout.ca_key)?;
    let ca_certs = read_certificates(&layout.ca_cert, "the CA's signing certificate")?;
    if ca_certs.len() > 1 {
        return Err(CaError::TooManyCaCerts { path: layout.ca_cert.clone(), count: ca_certs.len() });
    }
    let chain = read_certificates(&layout.cert_chain, "the signing certificate followed by its issuers")?;
    let roots = read_certificates(&layout.root_cert, "one or more root certificates")?;
    let ca_der = &ca_certs[0];
    let ca =
        parse(ca_der).map_err(|detail| CaError::BadCertificate { path: layout.ca_cert.clone(), index: 1, detail })?;

    check_is_ca(&layout.ca_cert, &ca)?;
    if ca.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::KeyMismatch { key_path: layout.ca_key.clone(), cert_path: layout.ca_cert.clone() });
    }
    if chain[0] != *ca_der {
        return Err(CaError::ChainDoesNotStartWithCaCert {
            chain_path: layout.cert_chain.clone(),
            cert_path: layout.ca_cert.clone(),
        });
    }

    let parsed_chain: Vec<X509Certificate<'_>> = chain.iter().filter_map(|der| parse(der).ok()).collect();
    for (index, pair) in parsed_chain.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        if !is_signed_by(child, parent) {
            return Err(CaError::ChainBroken {
                path: layout.cert_chain.clone(),
                index: index + 1,
                subject: subject(child),
                next: index + 2,
                next_subject: subject(parent),
            });
        }
        check_is_ca(&layout.cert_chain, parent)?;
    }

    let top_der = chain.last().unwrap_or(ca_der);
    let top = parsed_chain.last().unwrap_or(&ca);
    let anchor = if roots.contains(top_der) {
        top_der.clone()
    } else {
        roots.iter().find(|root| parse(root).is_ok_and(|root| is_signed_by(top, &root))).cloned().ok_or_else(|| {
            CaError::ChainNotAnchored {
                chain_path: layout.cert_chain.clone(),
                bundle_path: layout.root_cert.clone(),
                subject: subject(top),
            }
        })?
    };

    let anchor_parsed = parse(&anchor).map_err(|detail| CaError::BadCertificate {
        path: layout.root_cert.clone(),
        index: 1,
        detail,
    })?;
    let path_certs = parsed_chain.iter().map(|cert| (&layout.cert_chain, cert));
    for (path, cert) in path_certs.chain(std::iter::once((&layout.root_cert, &anchor_parsed))) {
        check_validity(path, cert, now)?;
    }

    let chain_tail = chain.iter().filter(|der| !roots.contains(der)).cloned().collect();
    let not_before = clock::from_asn1(ca.validity().not_before);
    let not_after = clock::from_asn1(ca.validity().not_after);
    Ok(CaMaterial { key, ca_cert: ca_der.clone(), chain_tail, roots, anchor, not_before, not_after })
}

fn check_is_ca(path: &Path, cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let not_ca = |reason| CaError::NotCa { path: path.to_owned(), subject: subject(cert), reason };
    match cert.basic_constraints() {
        Ok(Some(constraints)) if constraints.value.ca => {}
        Ok(_) => return Err(not_ca("its BasicConstraints do not say CA:TRUE")),
        Err(_) => return Err(not_ca("its BasicConstraints extension is malformed")),
    }
    match cert.key_usage() {
        Ok(Some(usage)) if !usage.value.key_cert_sign() => Err(not_ca("its KeyUsage lacks keyCertSign")),
        Ok(_) => Ok(()),
        Err(_) => Err(not_ca("its KeyUsage extension is malformed")),
    }
}

fn check_validity(path: &Path, cert: &X509Certificate<'_>, now: SystemTime) -> Result<(), CaError> {
    let not_before = clock::from_asn1(cert.validity().not_before);
    let not_after = clock::from_asn1(cert.validity().not_after);
    if now > not_after {
        return Err(CaError::CertExpired { path: path.to_owned(), subject: subject(cert), not_after });
    }
    if now < not_before {
        return Err(CaError::CertNotYetValid { path: path.to_owned(), subject: subject(cert), not_before });
    }
    Ok(())
}
