use super::*;

fn at(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds as u64)
}

fn target() -> Target {
    Target { namespace: "shop".into(), name: "backend".into(), address: "10.79.0.3".parse().unwrap() }
}

const PAGE: &str = "# HELP zmesh_plaintext_connections_total Plaintext.\n\
# TYPE zmesh_plaintext_connections_total counter\n\
zmesh_plaintext_connections_total{destination_port=\"8080\",source_workload=\"unknown\",source_address=\"10.79.0.9\"} 3\n\
zmesh_plaintext_connections_total{destination_port=\"8080\",source_workload=\"shop/old\",source_address=\"10.79.0.8\"} 5\n\
zmesh_plaintext_last_seen_seconds{destination_port=\"8080\",source_workload=\"unknown\",source_address=\"10.79.0.9\"} 1000\n\
zmesh_plaintext_last_seen_seconds{destination_port=\"8080\",source_workload=\"shop/old\",source_address=\"10.79.0.8\"} 100\n\
zmesh_mtls_dry_run_refusals_total{destination_port=\"8080\",policy=\"shop/strict\"} 8\n\
zmesh_mtls_dry_run_refusals_total{destination_port=\"9090\",policy=\"shop/strict\"} 1\n\
zmesh_plaintext_observed_since_seconds 50\n";

fn assessed(now: i64, window: u64) -> WorkloadReport {
    let samples = parse_prometheus(PAGE);
    assess(target(), Ok(&samples), at(now), Duration::from_secs(window))
}

#[test]
fn a_source_seen_within_the_window_makes_the_workload_unsafe_and_is_named() {
    let report = assessed(1010, 60);
    assert_eq!(report.verdict, Verdict::Unsafe);
    let port = &report.ports["8080"];
    assert_eq!(port.sources.len(), 1);
    assert_eq!(port.sources[0].address, "10.79.0.9");
    assert_eq!(port.sources[0].connections, 3);
    assert_eq!(port.older, 1, "shop/old was last seen before the window");
    assert_eq!(port.dry_run_refusals["shop/strict"], 8);
    assert!(verdict_text(&report).contains("10.79.0.9 on port 8080"), "{}", verdict_text(&report));
}

#[test]
fn dry_run_refusals_add_up_per_policy_over_every_port() {
    assert_eq!(assessed(1010, 60).dry_run_refusals()["shop/strict"], 9);
}

#[test]
fn sources_all_seen_before_the_window_leave_the_workload_safe() {
    let report = assessed(2000, 60);
    assert_eq!(report.verdict, Verdict::Safe);
    assert_eq!(report.ports["8080"].older, 2);
}

#[test]
fn a_proxy_that_cannot_be_read_or_shows_nothing_is_unknown_never_safe() {
    let unreachable = assess(target(), Err("cannot reach".into()), at(0), Duration::from_secs(60));
    assert!(matches!(unreachable.verdict, Verdict::Unknown(_)));
    let empty = assess(target(), Ok(&[]), at(0), Duration::from_secs(60));
    assert!(matches!(empty.verdict, Verdict::Unknown(_)));
    // A proxy without a plaintext inbound path exports no observation start.
    let explicit = parse_prometheus("zmesh_certificate_expiry_seconds 100\n");
    let explicit = assess(target(), Ok(&explicit), at(0), Duration::from_secs(60));
    assert!(matches!(&explicit.verdict, Verdict::Unknown(why) if why.contains("explicit mode")), "{explicit:?}");
}

#[test]
fn the_readiness_json_carries_verdict_sources_and_dry_run_refusals() {
    let report = assessed(1010, 60);
    let json = readiness_json(&[report], at(1010), Duration::from_secs(60));
    let workload = &json["workloads"][0];
    assert_eq!(workload["workload"], "shop/backend");
    assert_eq!(workload["verdict"], "UNSAFE");
    assert_eq!(workload["ports"][0]["plaintextSources"][0]["lastSeenSecondsAgo"], 10);
    assert_eq!(workload["ports"][0]["dryRunRefusals"][0], json!({"policy": "shop/strict", "connections": 8}));
    assert_eq!(json["windowSeconds"], 60);
}

const TRAFFIC: &str = "\
istio_requests_total{reporter=\"destination\",source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",destination_workload=\"backend\",connection_security_policy=\"mutual_tls\",request_protocol=\"http\"} 5\n\
istio_requests_total{reporter=\"destination\",source_principal=\"unknown\",destination_workload=\"backend\",connection_security_policy=\"none\",request_protocol=\"http\"} 2\n\
zmesh_authz_decisions_total{reporter=\"destination\",source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",connection_security_policy=\"mutual_tls\",request_protocol=\"http\",decision=\"deny\"} 3\n\
zmesh_authz_decisions_total{reporter=\"destination\",source_principal=\"unknown\",connection_security_policy=\"none\",request_protocol=\"http\",decision=\"deny\"} 0\n\
istio_tcp_connections_opened_total{source_principal=\"unknown\",connection_security_policy=\"none\",destination_port=\"5432\",decision=\"strict_refused\"} 4\n\
istio_tcp_connections_opened_total{source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",connection_security_policy=\"mutual_tls\",destination_port=\"5432\",decision=\"allow\"} 1\n\
zmesh_jwt_authn_total{destination_workload=\"backend\",result=\"denied\"} 2\n\
zmesh_ext_authz_total{destination_workload=\"backend\",result=\"allow\"} 9\n\
zmesh_connections_refused_total{listener=\"hbone\",reason=\"per_source_limit\"} 1\n\
zmesh_authz_dry_run_total{destination_workload=\"backend\",policy=\"shop/trial\",shadow_result=\"deny\"} 6\n";

#[test]
fn denials_are_read_from_every_refusal_counter_and_zero_or_allowed_series_are_not_denials() {
    let samples = parse_prometheus(TRAFFIC);
    let denials = denials(&samples);
    let found = |kind: DenialKind| denials.iter().filter(|d| d.kind == kind).map(|d| d.count).sum::<u64>();
    assert_eq!(found(DenialKind::HttpRequest), 3, "{denials:?}");
    assert_eq!(found(DenialKind::StrictPlaintext), 4, "{denials:?}");
    assert_eq!(found(DenialKind::Token), 2, "{denials:?}");
    assert_eq!(found(DenialKind::Unproven), 1, "{denials:?}");
    assert_eq!(found(DenialKind::ExternalAuthorizer), 0, "an allow is not a denial: {denials:?}");
    assert_eq!(found(DenialKind::TcpConnection), 0, "an allowed connection is not a denial: {denials:?}");
    let http = denials.iter().find(|d| d.kind == DenialKind::HttpRequest).unwrap();
    assert_eq!(http.source, "spiffe://cluster.local/ns/shop/sa/client");
    assert_eq!(http.policy, "", "the proxy does not export the deciding policy of an enforced deny");
    let strict = denials.iter().find(|d| d.kind == DenialKind::StrictPlaintext).unwrap();
    assert_eq!(strict.detail, "port 5432");
    assert_eq!(dry_run_authz(&samples)[&("shop/trial".to_owned(), "deny".to_owned())], 6);
}

#[test]
fn traffic_sums_requests_and_connections_per_caller_and_security() {
    let edges = traffic(&parse_prometheus(TRAFFIC));
    let client = edges.iter().find(|e| e.source.ends_with("/sa/client")).unwrap();
    assert_eq!((client.security.as_str(), client.requests, client.connections), ("mutual_tls", 5, 1));
    let plaintext = edges.iter().find(|e| e.source == "unknown").unwrap();
    assert_eq!((plaintext.security.as_str(), plaintext.requests, plaintext.connections), ("none", 2, 4));
}

#[test]
fn only_the_series_the_control_plane_reads_are_kept_from_a_scrape() {
    let page = format!("{TRAFFIC}{PAGE}some_other_series{{a=\"b\"}} 1\nprocess_cpu_seconds_total 3\n");
    let samples = parse_prometheus(&page);
    let kept: Vec<&Sample> = samples.iter().filter(|s| kept(s)).collect();
    assert_eq!(kept.len(), samples.len() - 2);
    assert!(kept.iter().all(|s| s.name != "some_other_series" && s.name != "process_cpu_seconds_total"));
}

fn connected(workload: &str) -> crate::push::ProxyStatus {
    crate::push::ProxyStatus {
        proxy_id: format!("{workload}-proxy"),
        workload: workload.to_owned(),
        identity: format!("spiffe://cluster.local/ns/shop/sa/{workload}"),
        peer: None,
        build_version: String::new(),
        connected: true,
        connected_at: SystemTime::UNIX_EPOCH,
        disconnected_at: None,
        sent: None,
        acked: None,
        nacked: None,
        resources: 0,
    }
}

#[tokio::test]
async fn a_round_reads_each_connected_proxy_keeps_only_what_it_uses_and_never_dials_a_workload_without_one() {
    // A real metrics endpoint (the server the proxies use) on 127.0.0.1, a port of its own.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let shutdown = CancellationToken::new();
    let page = format!("{PAGE}process_cpu_seconds_total 3\n");
    let routes: zmesh_telemetry::endpoints::Routes =
        Arc::new(move |path| (path == "/stats/prometheus").then(|| (http::StatusCode::OK, "text/plain", page.clone())));
    tokio::spawn(zmesh_telemetry::endpoints::serve(listener, routes, shutdown.clone()));

    // backend answers; frontend's proxy is connected but its address has nothing listening;
    // ghost has no proxy.
    let entry = |name: &str, address: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{address: {address}, serviceAccount: {name}}}\n"
        )
    };
    let yaml = [entry("backend", "127.0.0.1"), entry("frontend", "127.0.0.2"), entry("ghost", "127.0.0.3")].concat();
    let snapshot = Snapshot::build(1, &zmesh_config::load_str(&yaml), SystemTime::UNIX_EPOCH);
    let (_keep, snapshots) = watch::channel(Arc::new(snapshot));
    let proxies = Arc::new(ProxyTracker::default());
    for workload in ["shop/backend", "shop/frontend"] {
        proxies.insert(connected(workload), SystemTime::now()).expect("tracked");
    }
    let options = ObserveOptions { metrics_port: port, timeout: Duration::from_secs(2), ..ObserveOptions::default() };
    let observer = Observer::default();
    assert!(observer.latest().at.is_none(), "nothing before the first round");
    let stop = CancellationToken::new();
    let task = tokio::spawn(observer.clone().run(snapshots, proxies, options, stop.clone()));
    let mut waited = 0;
    while observer.latest().at.is_none() {
        assert!(waited < 100, "no round within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    stop.cancel();
    task.await.expect("the round task stops on shutdown");
    shutdown.cancel();

    let latest = observer.latest();
    let keys: Vec<&str> = latest.workloads.keys().map(String::as_str).collect();
    assert_eq!(keys, ["shop/backend", "shop/frontend"], "ghost has no proxy and is not dialled");
    let backend = latest.workloads["shop/backend"].scraped.as_ref().expect("backend read");
    assert_eq!(backend.len(), parse_prometheus(PAGE).len(), "process_cpu_seconds_total is dropped");
    let frontend = &latest.workloads["shop/frontend"].scraped;
    assert!(frontend.as_ref().is_err_and(|e| e.contains("127.0.0.2")), "{frontend:?}");
}
