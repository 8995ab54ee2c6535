//! The signing service refuses what it must, with the right gRPC status, and writes an audit
//! record for every certificate it issues.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ring::rand::SystemRandom;
use tonic::{Code, Request};
use zmesh_ca::{CaConfig, CertificateAuthority};
use zmesh_control::ca_service::{SharedCa, Signer};
use zmesh_control::ratelimit::PerCallerLimit;
use zmesh_control::tokens::BootstrapTokens;
use zmesh_id::SpiffeId;
use zmesh_xds::ca::CertificateRequest;
use zmesh_xds::ca::certificate_service_server::CertificateService;

struct Fixture {
    signer: Signer,
    tokens: Arc<BootstrapTokens>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(label: &str, burst: u32) -> Fixture {
    let dir = std::env::temp_dir().join(format!("zmesh-signing-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ca, _) =
        CertificateAuthority::open_or_create(&dir, CaConfig::default(), SystemTime::now(), &SystemRandom::new())
            .expect("CA");
    let tokens = Arc::new(BootstrapTokens::new(&[9u8; 32]).expect("key"));
    let signer = Signer::new(SharedCa::new(ca), tokens.clone(), PerCallerLimit::new(0.01, burst));
    Fixture { signer, tokens, dir }
}

fn id(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/shop/sa/{sa}").parse().expect("id")
}

fn request(csr_for: &str, token: Option<String>) -> Request<CertificateRequest> {
    let (csr, _key) = zmesh_ca::generate_csr(&id(csr_for), &SystemRandom::new()).expect("csr");
    let mut request = Request::new(CertificateRequest { csr, validity_seconds: 0 });
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    }
    request
}

fn token(fixture: &Fixture, sa: &str) -> String {
    fixture.tokens.issue(&id(sa), SystemTime::now(), SystemTime::now() + Duration::from_secs(60))
}

#[tokio::test]
async fn a_caller_gets_a_certificate_for_the_identity_its_token_proves() {
    let f = fixture("ok", 10);
    let response =
        f.signer.create_certificate(request("web", Some(token(&f, "web")))).await.expect("issued").into_inner();
    let info = zmesh_ca::inspect_pem(&response.cert_chain.concat()).expect("pem");
    assert_eq!(info[0].spiffe_ids, ["spiffe://cluster.local/ns/shop/sa/web"]);
    assert_eq!(info[0].serial_hex, response.serial);
    assert!(!response.trust_bundle.is_empty());
}

#[tokio::test]
async fn a_csr_for_another_identity_is_permission_denied() {
    let f = fixture("mismatch", 10);
    let status = f.signer.create_certificate(request("admin", Some(token(&f, "web")))).await.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("workloads may only request their own identity"), "{}", status.message());
}

#[tokio::test]
async fn a_missing_or_forged_token_is_unauthenticated() {
    let f = fixture("token", 10);
    let missing = f.signer.create_certificate(request("web", None)).await.expect_err("refused");
    assert_eq!(missing.code(), Code::Unauthenticated);
    let forged = f
        .signer
        .create_certificate(request("web", Some(token(&f, "web").replace("shop", "bank"))))
        .await
        .expect_err("refused");
    assert_eq!(forged.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_caller_over_its_rate_is_told_to_retry_later() {
    let f = fixture("limit", 2);
    for _ in 0..2 {
        f.signer.create_certificate(request("web", Some(token(&f, "web")))).await.expect("within the burst");
    }
    let status = f.signer.create_certificate(request("web", Some(token(&f, "web")))).await.expect_err("limited");
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Another identity has its own bucket.
    f.signer.create_certificate(request("api", Some(token(&f, "api")))).await.expect("another caller");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn every_issue_leaves_an_audit_record_with_identity_serial_expiry_and_caller() {
    let f = fixture("audit", 10);
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let response =
        f.signer.create_certificate(request("web", Some(token(&f, "web")))).await.expect("issued").into_inner();
    let log = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let line =
        log.lines().find(|l| l.contains("certificate issued")).unwrap_or_else(|| panic!("no audit record in:\n{log}"));
    assert!(line.contains("zmesh::audit"), "{line}");
    assert!(line.contains("identity=spiffe://cluster.local/ns/shop/sa/web"), "{line}");
    assert!(line.contains(&format!("serial={}", response.serial)), "{line}");
    assert!(line.contains(&format!("not_after={}", response.not_after)), "{line}");
    assert!(line.contains("caller=spiffe://cluster.local/ns/shop/sa/web"), "{line}");
}

/// A request as it arrives on the TLS control channel from a caller that presented `svid`.
fn over_mtls(csr_for: &str, svid: &str) -> Request<CertificateRequest> {
    let mut request = request(csr_for, None);
    request.extensions_mut().insert(zmesh_control::channel::ConnectionInfo {
        remote: "127.0.0.1:40000".parse().expect("addr"),
        svid: Some(id(svid)),
    });
    request
}

#[tokio::test]
async fn a_renewal_is_proven_by_the_svid_the_caller_presents_without_a_token() {
    let f = fixture("svid", 10);
    let response = f.signer.create_certificate(over_mtls("web", "web")).await.expect("renewed").into_inner();
    let info = zmesh_ca::inspect_pem(&response.cert_chain.concat()).expect("pem");
    assert_eq!(info[0].spiffe_ids, ["spiffe://cluster.local/ns/shop/sa/web"]);
}

#[tokio::test]
async fn an_svid_cannot_renew_another_identity() {
    let f = fixture("svid-other", 10);
    let status = f.signer.create_certificate(over_mtls("admin", "web")).await.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn nobody_is_issued_the_control_planes_identity() {
    let f = fixture("control-id", 10);
    let control: SpiffeId = "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-control".parse().expect("id");
    let (csr, _key) = zmesh_ca::generate_csr(&control, &SystemRandom::new()).expect("csr");
    let mut request = Request::new(CertificateRequest { csr, validity_seconds: 0 });
    let token = f.tokens.issue(&control, SystemTime::now(), SystemTime::now() + Duration::from_secs(60));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("metadata"));
    let status = f.signer.create_certificate(request).await.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("control plane's identity"), "{}", status.message());
}
