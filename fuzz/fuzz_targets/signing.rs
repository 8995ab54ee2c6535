//! Certificate signing messages, both ways.
//!
//! - Input starting with an even byte: a `CertificateRequest` as the signing service receives
//!   it, its CSR signed by a real CA for one fixed proven identity, with the TTL the service
//!   derives from `validity_seconds`. Never panics, and a certificate is only ever issued for
//!   the proven identity, whatever the CSR asks for.
//! - Input starting with an odd byte: a `CertificateResponse` as a proxy receives it, read as
//!   the proxy reads it (the chain with the proxy's own key, then the trust bundle). Never
//!   panics.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use zmesh_xds::ca::{CertificateRequest, CertificateResponse};

const MAX_INPUT: usize = 64 * 1024;

/// Time is a parameter: a fixed instant keeps every run reproducible.
fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn caller() -> &'static zmesh_id::SpiffeId {
    static CALLER: OnceLock<zmesh_id::SpiffeId> = OnceLock::new();
    CALLER.get_or_init(|| "spiffe://cluster.local/ns/foo/sa/httpbin".parse().expect("a valid SPIFFE ID"))
}

fn ca() -> &'static zmesh_ca::CertificateAuthority {
    static CA: OnceLock<zmesh_ca::CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("zmesh-fuzz-signing-ca-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = zmesh_ca::CaConfig::new(caller().trust_domain().clone());
        let (ca, _) =
            zmesh_ca::CertificateAuthority::open_or_create(&dir, config, now(), &ring::rand::SystemRandom::new())
                .expect("a CA in a fresh directory");
        // The CA keeps what it loaded in memory; the files are not needed again.
        let _ = std::fs::remove_dir_all(&dir);
        ca
    })
}

/// The proxy's own key (ECDSA P-256, PKCS#8), made for this target and protecting nothing:
/// the key a response's chain must match.
const PROXY_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnRPgapZOZ+zdfKNo
BcvUhsR6fCDWqhz8V7h6M6iOUHShRANCAARuoHwII6DOO6qZ75TcgHACRPypWES3
BbQVnUl+CsAm64h7uwhC6AsYDA1gNZVaJpRfMaNBFHbAWOqYAE0utKzr
-----END PRIVATE KEY-----
";

fn sign(request: CertificateRequest) {
    // As the signing service does: a positive `validity_seconds` is the TTL asked for.
    let ttl = u64::try_from(request.validity_seconds).ok().filter(|&s| s > 0).map(Duration::from_secs);
    let Ok(issued) = ca().sign_csr(request.csr.as_bytes(), caller(), ttl, now(), &ring::rand::SystemRandom::new())
    else {
        return;
    };
    assert_eq!(&issued.id, caller(), "issued for another identity than the proven one");
    let leaf = zmesh_ca::inspect_der(&issued.leaf_der).expect("the CA's own certificate parses");
    assert_eq!(leaf.spiffe_ids, [caller().to_string()], "the leaf names another identity");
    assert!(!leaf.is_ca, "a workload certificate that is a CA");
}

fn receive(response: CertificateResponse) {
    if let Ok(identity) = zmesh_tls::Identity::from_pem(response.cert_chain.concat(), PROXY_KEY_PEM) {
        let _ = identity.spiffe_id() == caller();
    }
    let domains = zmesh_tls::TrustDomains::new(caller().trust_domain().clone());
    let _ = zmesh_tls::TrustBundle::from_pem(response.trust_bundle.concat(), domains);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let Some((&which, message)) = data.split_first() else { return };
    if which % 2 == 0 {
        if let Ok(request) = CertificateRequest::decode(message) {
            sign(request);
        }
    } else if let Ok(response) = CertificateResponse::decode(message) {
        receive(response);
    }
});
