//! The configuration push protocol end to end, in process: the real control plane (file store,
//! snapshots, push server) on loopback and the proxy's real subscription client. Edits reach
//! the proxy as incremental versions; a refused version (NACK) keeps the previous one and is
//! reported; a proxy whose SVID proves another identity is refused, and so is a caller without
//! an SVID, a plaintext client, or a proxy that does not trust the control plane's root; a
//! restarted control plane resyncs a proxy without resending what it holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zmesh_control::plane::{ControlPlane, Options, token_issuer};
use zmesh_control::store::WatchOptions;
use zmesh_id::SpiffeId;
use zmesh_proxy::config::ProxyConfig;
use zmesh_proxy::control_channel::ControlEndpoint;
use zmesh_proxy::identity::{BootstrapToken, IdentityError, IdentityManager, SigningClient};
use zmesh_proxy::subscription::Subscription;
use zmesh_testkit::TempDir;
use zmesh_tls::{CertStore, ControlCredentials, TrustBundle, TrustDomains};

const WORKLOADS: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: payments, namespace: fintech}
spec: {address: 10.0.0.9, serviceAccount: payments, labels: {app: payments}, ports: {http: 8080}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: orders, namespace: shop}
spec: {address: 10.0.0.10, serviceAccount: orders, labels: {app: orders}}
";

fn policy(path: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: payments-access, namespace: fintech}}
spec:
  selector: {{matchLabels: {{app: payments}}}}
  rules: [{{to: [{{operation: {{paths: ['{path}']}}}}]}}]
"
    )
}

struct Plane {
    dir: TempDir,
    shutdown: CancellationToken,
    grpc: SocketAddr,
    plane: Option<ControlPlane>,
}

impl Plane {
    async fn start(dir: TempDir, grpc: SocketAddr) -> Plane {
        let shutdown = CancellationToken::new();
        let options = Options {
            config: dir.path().join("config"),
            ca_dir: dir.path().join("ca"),
            grpc,
            admin: "127.0.0.1:0".parse().expect("addr"),
            watch: WatchOptions { poll: Duration::from_millis(20), debounce: Duration::from_millis(30), notify: true },
        };
        let plane = ControlPlane::start(options, shutdown.clone()).await.expect("control plane starts");
        Plane { dir, shutdown, grpc: plane.grpc, plane: Some(plane) }
    }

    async fn stop(mut self) -> TempDir {
        self.shutdown.cancel();
        if let Some(plane) = self.plane.take() {
            plane.wait().await;
        }
        self.dir
    }

    fn control(&self) -> ControlEndpoint {
        let domain = "cluster.local".parse().expect("trust domain");
        ControlEndpoint::new(&format!("https://{}", self.grpc), zmesh_tls::control_plane_id(&domain)).expect("endpoint")
    }

    /// What a proxy is started with: the CA directory's root-cert.pem.
    fn roots(&self) -> Arc<TrustBundle> {
        let pem = std::fs::read(self.dir.path().join("ca/root-cert.pem")).expect("root-cert.pem");
        Arc::new(TrustBundle::from_pem(pem, TrustDomains::new("cluster.local".parse().expect("td"))).expect("roots"))
    }

    fn token(&self, identity: &str) -> String {
        let id: SpiffeId = identity.parse().expect("spiffe id");
        let now = SystemTime::now();
        token_issuer(&self.dir.path().join("ca")).expect("tokens").issue(&id, now, now + Duration::from_secs(600))
    }

    fn identity_manager(&self, identity: &str) -> IdentityManager {
        let client = SigningClient::new(self.control(), BootstrapToken::Text(self.token(identity)));
        IdentityManager::new(
            identity.parse().expect("id"),
            TrustDomains::new("cluster.local".parse().expect("td")),
            client,
        )
    }

    /// A first certificate for `identity`, as a proxy gets it: bootstrap token over TLS.
    async fn svid(&self, identity: &str) -> Arc<CertStore> {
        self.identity_manager(identity).bootstrap(self.roots(), Duration::from_secs(5)).await.expect("first SVID").0
    }

    async fn subscription(&self, identity: &str, workload: &str, proxy_id: &str) -> Subscription {
        Subscription::new(self.control(), self.svid(identity).await, workload, proxy_id.into()).expect("subscription")
    }

    fn proxies(&self) -> serde_json::Value {
        let status = self.plane.as_ref().expect("running").status.clone();
        let snapshot = status.snapshots.borrow().clone();
        let now = SystemTime::now();
        serde_json::Value::Array(
            status.proxies.list().iter().map(|p| zmesh_control::status::proxy_json(p, &snapshot, now)).collect(),
        )
    }

    fn version(&self) -> String {
        self.plane.as_ref().expect("running").status.snapshots.borrow().version.to_string()
    }
}

fn config_dir(path: &str) -> TempDir {
    let dir = TempDir::new("subscription");
    std::fs::create_dir_all(dir.path().join("config")).expect("config dir");
    std::fs::write(dir.path().join("config/workloads.yaml"), WORKLOADS).expect("write");
    std::fs::write(dir.path().join("config/policy.yaml"), policy(path)).expect("write");
    dir
}

fn rewrite(dir: &std::path::Path, text: &str) {
    let tmp = dir.join("config/.policy.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join("config/policy.yaml")).expect("rename");
}

/// The paths the payments policy allows, as the proxy compiled them.
fn allowed(config: &ProxyConfig, path: &str) -> bool {
    let peer: SpiffeId = "spiffe://cluster.local/ns/shop/sa/orders".parse().expect("id");
    let request = zmesh_policy::Request {
        peer: Some(&peer),
        destination_port: 8080,
        http: Some(zmesh_policy::HttpRequest { method: "GET", host: "payments", path, headers: &[] }),
        ..Default::default()
    };
    config.policy.authorize(&request).is_allow()
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_arrive_as_versions_and_a_refused_version_keeps_the_previous_one() {
    let plane = Plane::start(config_dir("/v1"), "127.0.0.1:0".parse().expect("addr")).await;
    let mut subscription = plane
        .subscription("spiffe://cluster.local/ns/fintech/sa/payments", "fintech/payments", "payments.fintech-1")
        .await;
    let stop = CancellationToken::new();
    let first = subscription.initial(&stop).await.expect("first configuration");
    assert!(allowed(&first, "/v1") && !allowed(&first, "/v2"));
    assert_eq!(first.version, plane.version());
    assert_eq!(first.registry.len(), 2, "the proxy knows its peers");

    // Follow; refuse any version whose policy allows /refuse, like a proxy that cannot apply it.
    let (sender, mut versions) = mpsc::unbounded_channel();
    let follower = tokio::spawn(subscription.follow(stop.clone(), move |config: ProxyConfig| {
        if allowed(&config, "/refuse") {
            return Err("this proxy cannot apply /refuse".into());
        }
        let _ = sender.send((config.version.clone(), allowed(&config, "/v2")));
        Ok(())
    }));

    rewrite(plane.dir.path(), &policy("/v2"));
    let (version, allows_v2) =
        tokio::time::timeout(Duration::from_secs(2), versions.recv()).await.expect("pushed in time").expect("version");
    assert!(allows_v2);
    assert_eq!(version, plane.version());
    wait_for("SYNCED", || plane.proxies()[0]["state"] == "SYNCED").await;
    let proxies = plane.proxies();
    assert_eq!(proxies[0]["versionAcked"], version.as_str());
    assert_eq!(proxies[0]["resources"], 3, "two WorkloadEntries and the one policy that selects it: {proxies:#}");

    rewrite(plane.dir.path(), &policy("/refuse"));
    wait_for("NACK", || plane.proxies()[0]["state"] == "NACKED").await;
    let proxies = plane.proxies();
    assert_eq!(proxies[0]["versionAcked"], version.as_str(), "the proxy stays on its previous version");
    assert_eq!(proxies[0]["nack"]["error"], "this proxy cannot apply /refuse");
    assert!(versions.try_recv().is_err(), "nothing was put in force");

    rewrite(plane.dir.path(), &policy("/v3"));
    let (version, _) =
        tokio::time::timeout(Duration::from_secs(2), versions.recv()).await.expect("pushed in time").expect("version");
    wait_for("SYNCED again", || plane.proxies()[0]["state"] == "SYNCED").await;
    assert_eq!(plane.proxies()[0]["versionAcked"], version.as_str());

    stop.cancel();
    follower.await.expect("follower stops");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_of_another_identity_gets_no_configuration() {
    let plane = Plane::start(config_dir("/v1"), "127.0.0.1:0".parse().expect("addr")).await;
    let mut subscription =
        plane.subscription("spiffe://cluster.local/ns/shop/sa/orders", "fintech/payments", "impostor-1").await;
    let stop = CancellationToken::new();
    let got = tokio::time::timeout(Duration::from_millis(800), subscription.initial(&stop)).await;
    assert!(got.is_err(), "an impostor must never receive the workload's configuration");
    assert!(plane.proxies().as_array().expect("list").is_empty(), "and is not listed as a proxy");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_resyncs_the_proxy_which_kept_its_configuration_meanwhile() {
    let plane = Plane::start(config_dir("/v1"), "127.0.0.1:0".parse().expect("addr")).await;
    let grpc = plane.grpc;
    let mut subscription = plane
        .subscription("spiffe://cluster.local/ns/fintech/sa/payments", "fintech/payments", "payments.fintech-2")
        .await;
    let stop = CancellationToken::new();
    let first = subscription.initial(&stop).await.expect("first configuration");
    let in_force = Arc::new(std::sync::Mutex::new(first.version.clone()));
    let follower = {
        let in_force = in_force.clone();
        tokio::spawn(subscription.follow(stop.clone(), move |config: ProxyConfig| {
            *in_force.lock().expect("lock") = config.version.clone();
            Ok(())
        }))
    };

    // Down: the proxy keeps its version; the policy changes meanwhile.
    let dir = plane.stop().await;
    rewrite(dir.path(), &policy("/while-down"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*in_force.lock().expect("lock"), first.version);

    // Back on the same port: the proxy reconnects (backoff ≤ 5 s) and takes the new version.
    let plane = Plane::start(dir, grpc).await;
    let wanted = plane.version();
    assert_ne!(wanted, first.version);
    wait_for("resync", || *in_force.lock().expect("lock") == wanted).await;
    wait_for("SYNCED", || plane.proxies().get(0).is_some_and(|p| p["state"] == "SYNCED")).await;
    assert_eq!(plane.proxies()[0]["resources"], 3);

    stop.cancel();
    follower.await.expect("follower stops");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_configuration_arrives_in_parts_and_is_applied_whole() {
    let dir = config_dir("/v1");
    let many: String = (0..400)
        .map(|i| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: peer-{i}, namespace: crowd}}\nspec: {{address: 10.9.{}.{}, serviceAccount: peer-{i}, labels: {{app: peer-{i}, team: crowd}}}}\n",
                i / 200,
                i % 200 + 1
            )
        })
        .collect();
    std::fs::write(dir.path().join("config/crowd.yaml"), many).expect("write");
    let plane = Plane::start(dir, "127.0.0.1:0".parse().expect("addr")).await;
    let mut subscription = plane
        .subscription("spiffe://cluster.local/ns/fintech/sa/payments", "fintech/payments", "payments.fintech-3")
        .await;
    let stop = CancellationToken::new();
    let first = subscription.initial(&stop).await.expect("first configuration");
    assert_eq!(first.registry.len(), 402, "every peer, though they did not fit in one message");
    assert!(allowed(&first, "/v1"));
    wait_for("SYNCED", || plane.proxies()[0]["state"] == "SYNCED").await;
    assert_eq!(plane.proxies()[0]["resources"], 403);
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_response_beyond_the_size_bound_is_refused_and_none_of_its_parts_applied() {
    let dir = config_dir("/v1");
    let many: String = (0..400)
        .map(|i| {
            format!(
                "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: peer-{i}, namespace: crowd}}\nspec: {{address: 10.9.{}.{}, serviceAccount: peer-{i}}}\n",
                i / 200,
                i % 200 + 1
            )
        })
        .collect();
    std::fs::write(dir.path().join("config/crowd.yaml"), many).expect("write");
    let plane = Plane::start(dir, "127.0.0.1:0".parse().expect("addr")).await;
    let mut subscription = plane
        .subscription("spiffe://cluster.local/ns/fintech/sa/payments", "fintech/payments", "payments.fintech-4")
        .await
        .with_max_response_bytes(16 * 1024);
    let stop = CancellationToken::new();
    let got = tokio::time::timeout(Duration::from_secs(2), subscription.initial(&stop)).await;
    assert!(got.is_err(), "no configuration may be put in force from a refused response or its tail");
    wait_for("NACK", || plane.proxies().get(0).is_some_and(|p| p["state"] == "NACKED")).await;
    let proxies = plane.proxies();
    assert!(proxies[0]["nack"]["error"].as_str().is_some_and(|e| e.contains("more than 16384 bytes")), "{proxies:#}");
    assert_eq!(subscription.version(), "", "nothing was applied");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_an_svid_gets_no_configuration_even_with_a_valid_bootstrap_token() {
    use zmesh_xds::config::config_service_client::ConfigServiceClient;
    use zmesh_xds::config::{ConfigRequest, Node};
    let plane = Plane::start(config_dir("/v1"), "127.0.0.1:0".parse().expect("addr")).await;
    let channel = plane.control().connect(&ControlCredentials::Bootstrap(plane.roots())).await.expect("TLS channel");
    let hello = ConfigRequest {
        node: Some(Node {
            workload: "fintech/payments".into(),
            proxy_id: "token-only-1".into(),
            build_version: String::new(),
        }),
        ..Default::default()
    };
    let mut request = tonic::Request::new(tokio_stream::iter([hello]));
    let bearer = format!("Bearer {}", plane.token("spiffe://cluster.local/ns/fintech/sa/payments"));
    request.metadata_mut().insert("authorization", bearer.parse().expect("metadata"));
    let status = ConfigServiceClient::new(channel).stream_config(request).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("SVID"), "{status:?}");
    assert!(plane.proxies().as_array().expect("list").is_empty());
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_gets_nothing_from_the_control_plane() {
    use zmesh_xds::ca::CertificateRequest;
    use zmesh_xds::ca::certificate_service_client::CertificateServiceClient;
    let plane = Plane::start(config_dir("/v1"), "127.0.0.1:0".parse().expect("addr")).await;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", plane.grpc)).expect("endpoint");
    let outcome = async {
        let channel = endpoint.connect().await?;
        let mut request = tonic::Request::new(CertificateRequest { csr: String::new(), validity_seconds: 0 });
        let bearer = format!("Bearer {}", plane.token("spiffe://cluster.local/ns/fintech/sa/payments"));
        request.metadata_mut().insert("authorization", bearer.parse().expect("metadata"));
        CertificateServiceClient::new(channel).create_certificate(request).await.map_err(Into::into)
    };
    let outcome: Result<_, Box<dyn std::error::Error>> =
        tokio::time::timeout(Duration::from_secs(15), outcome).await.expect("the server answers or closes");
    assert!(outcome.is_err(), "plaintext gRPC must not be served: {outcome:?}");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_started_with_other_roots_refuses_the_control_plane() {
    let plane = Plane::start(config_dir("/v1"), "127.0.0.1:0".parse().expect("addr")).await;
    let elsewhere = TempDir::new("other-ca");
    let (other, _) = zmesh_ca::CertificateAuthority::open_or_create(
        elsewhere.path(),
        zmesh_ca::CaConfig::default(),
        SystemTime::now(),
        &ring::rand::SystemRandom::new(),
    )
    .expect("another CA");
    let domains = TrustDomains::new("cluster.local".parse().expect("td"));
    let wrong = Arc::new(TrustBundle::from_pem(other.trust_bundle_pem(), domains).expect("roots"));
    let manager = plane.identity_manager("spiffe://cluster.local/ns/fintech/sa/payments");
    let error = manager.bootstrap(wrong, Duration::from_millis(500)).await.expect_err("no certificate");
    assert!(matches!(error, IdentityError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("trust bundle"), "the handshake names the root problem: {error}");
    plane.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_carries_the_documents_it_was_compiled_from_shared_with_the_subscription_not_copied() {
    let plane = Plane::start(config_dir("/v1"), "127.0.0.1:0".parse().expect("addr")).await;
    let mut subscription = plane
        .subscription("spiffe://cluster.local/ns/fintech/sa/payments", "fintech/payments", "payments.fintech-3")
        .await;
    let stop = CancellationToken::new();
    let first = subscription.initial(&stop).await.expect("first configuration");
    let documents = first.documents.clone().expect("a configuration from the control plane keeps its documents");
    assert_eq!(
        Arc::strong_count(&documents),
        3,
        "one set, held by the subscription, the configuration and this test: not a copy"
    );
    assert_eq!(documents.len(), 3, "two WorkloadEntries and the policy: {:?}", documents.keys().collect::<Vec<_>>());
    let policy_of = |documents: &zmesh_proxy::config::Documents| {
        documents.get("AuthorizationPolicy/fintech/payments-access").map(|r| r.document.clone()).unwrap_or_default()
    };
    assert!(policy_of(&documents).contains("\"/v1\""), "{}", policy_of(&documents));

    let (sender, mut versions) = mpsc::unbounded_channel();
    let follower = tokio::spawn(subscription.follow(stop.clone(), move |config: ProxyConfig| {
        let _ = sender.send((config.version.clone(), config.documents.clone()));
        Ok(())
    }));
    rewrite(plane.dir.path(), &policy("/v2"));
    let (version, next) =
        tokio::time::timeout(Duration::from_secs(2), versions.recv()).await.expect("pushed in time").expect("version");
    assert_eq!(version, plane.version());
    let next = next.expect("the next version keeps its documents too");
    assert!(policy_of(&next).contains("\"/v2\"") && !policy_of(&next).contains("\"/v1\""), "{}", policy_of(&next));
    assert_eq!(next.len(), 3, "the unchanged documents are kept with the changed one");
    assert!(policy_of(&documents).contains("\"/v1\""), "the first version's documents are left as they were");

    stop.cancel();
    follower.await.expect("follower stops");
    plane.stop().await;
}
