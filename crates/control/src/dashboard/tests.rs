use super::*;
use crate::observe::{DenialKind, Target, assess, parse_prometheus};

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

const HOSTILE: &str = "<script>alert(\"x\")</script>&'";

fn page() -> Page {
    let now = at(1_000_000);
    let backend = Target { namespace: "shop".into(), name: "backend".into(), address: "10.0.0.3".parse().unwrap() };
    let ghost = Target { namespace: "shop".into(), name: HOSTILE.into(), address: "10.0.0.9".parse().unwrap() };
    let samples = parse_prometheus(
        "zmesh_plaintext_connections_total{destination_port=\"8080\",source_workload=\"shop/legacy\",source_address=\"10.0.0.4\"} 4\n\
zmesh_plaintext_last_seen_seconds{destination_port=\"8080\",source_workload=\"shop/legacy\",source_address=\"10.0.0.4\"} 999990\n\
zmesh_mtls_dry_run_refusals_total{destination_port=\"8080\",policy=\"shop/backend-strict\"} 4\n\
zmesh_plaintext_observed_since_seconds 999000\n",
    );
    let window = Duration::from_secs(3600);
    let certificate = |name: &str, not_before: u64, not_after: u64| CertRow {
        name: name.to_owned(),
        serial: "1a2b".to_owned(),
        not_before: at(not_before),
        not_after: at(not_after),
    };
    Page {
        now,
        window,
        version: "v-123".into(),
        generation: 2,
        proxies: vec![
            ProxyRow {
                proxy_id: "backend-1".into(),
                workload: "shop/backend".into(),
                connected: true,
                state: "SYNCED".into(),
                version_acked: Some("v-123".into()),
                lag_ms: 12,
                build_version: "0.1.0".into(),
                nack: None,
            },
            ProxyRow {
                proxy_id: "client-1".into(),
                workload: "shop/client".into(),
                connected: true,
                state: "NACKED".into(),
                version_acked: None,
                lag_ms: 0,
                build_version: "0.1.0".into(),
                nack: Some(format!("v-123: {HOSTILE}")),
            },
        ],
        workloads: vec![
            WorkloadRow {
                key: "shop/backend".into(),
                address: "10.0.0.3".into(),
                identity: "spiffe://cluster.local/ns/shop/sa/backend".into(),
                connected_proxies: 1,
                readiness: assess(backend, Ok(&samples), now, window),
                denials: vec![Denial {
                    kind: DenialKind::HttpRequest,
                    source: format!("spiffe://cluster.local/ns/shop/sa/{HOSTILE}"),
                    policy: String::new(),
                    rule: String::new(),
                    detail: String::new(),
                    count: 3,
                }],
                dry_run_authz: BTreeMap::new(),
                callers: vec![Edge {
                    source: "spiffe://cluster.local/ns/shop/sa/client".into(),
                    security: "mutual_tls".into(),
                    requests: 5,
                    connections: 0,
                }],
                scraped: true,
                held_certificates: vec![("spiffe://cluster.local/ns/shop/sa/client".to_owned(), at(999_000))],
            },
            WorkloadRow {
                key: format!("shop/{HOSTILE}"),
                address: "10.0.0.9".into(),
                identity: "spiffe://cluster.local/ns/shop/sa/ghost".into(),
                connected_proxies: 0,
                readiness: assess(ghost, Err("no proxy connected".into()), now, window),
                denials: Vec::new(),
                dry_run_authz: BTreeMap::new(),
                callers: Vec::new(),
                scraped: false,
                held_certificates: Vec::new(),
            },
        ],
        certificates: vec![
            certificate("spiffe://cluster.local/ns/shop/sa/backend", 999_000, 1_003_600),
            certificate("spiffe://cluster.local/ns/shop/sa/client", 990_000, 1_000_100),
        ],
        roots: vec![certificate("O=zmesh, CN=zmesh root CA", 0, 1_000_000 + 30 * 86_400)],
        observed_at: Some(at(999_998)),
    }
}

#[test]
fn every_value_is_escaped_so_no_markup_from_the_mesh_reaches_the_page() {
    let html = render(&page());
    assert!(!html.contains("<script"), "{html}");
    assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"), "{html}");
    assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
}

#[test]
fn the_page_refreshes_itself_and_loads_nothing_from_outside() {
    let html = render(&page());
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "{html}");
    for outside in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(outside), "{outside} in {html}");
    }
}

#[test]
fn the_sections_show_proxies_coverage_denials_traffic_and_certificates() {
    let html = render(&page());
    for section in ["id=\"proxies\"", "id=\"mtls\"", "id=\"denials\"", "id=\"traffic\"", "id=\"certificates\""] {
        assert!(html.contains(section), "{section} missing");
    }
    // Proxies: sync state and version.
    assert!(html.contains("<td class=\"ok\">SYNCED</td><td><code>v-123</code></td>"), "{html}");
    assert!(html.contains("<td class=\"bad\">NACKED</td>"), "{html}");
    // Coverage: the verdict, the plaintext caller with its count, the dry-run refusals, and the
    // workload without a proxy.
    assert!(html.contains("<td class=\"bad\">UNSAFE</td>"), "{html}");
    assert!(html.contains("8080: shop/legacy (10.0.0.4), 4 connection(s), 10s ago"), "{html}");
    assert!(html.contains("shop/backend-strict: 4 connection(s)"), "{html}");
    assert!(html.contains("none: no mTLS"), "{html}");
    assert!(html.contains("<b class=\"warn\">1/2</b>workloads with a connected proxy"), "{html}");
    // Denials: what and who; the policy the counters do not carry is said to be missing.
    assert!(html.contains("HTTP request denied by AuthorizationPolicy"), "{html}");
    assert!(html.contains("not exported"), "{html}");
    // Traffic: the caller's identity resolved to nothing known, mTLS shown.
    assert!(html.contains("<td class=\"ok\">mTLS</td><td>5</td>"), "{html}");
    // Certificates: a fresh SVID, one past its renewal point, a root within 90 days.
    assert!(html.contains("<td class=\"ok\">in 1h 0m</td>"), "{html}");
    assert!(html.contains("<td class=\"warn\">SOON: in 1m 40s</td>"), "{html}");
    assert!(html.contains("<td class=\"warn\">SOON: in 30d 0h</td>"), "{html}");
    // What a proxy holds, flagged on its own: shop/backend's proxy still holds an expired one.
    assert!(
        html.contains("<tr><td>shop/backend</td><td>spiffe://cluster.local/ns/shop/sa/client</td><td>1970-01-12T13:30:00Z</td><td class=\"bad\">EXPIRED 16m 40s ago</td></tr>"),
        "{html}"
    );
}

#[test]
fn certificates_are_flagged_past_their_renewal_point_and_when_expired() {
    let cert = |not_before: u64, not_after: u64| CertRow {
        name: String::new(),
        serial: String::new(),
        not_before: at(not_before),
        not_after: at(not_after),
    };
    assert_eq!(svid_expiry(&cert(0, 100), at(50)), Expiry::Fine);
    assert_eq!(svid_expiry(&cert(0, 100), at(61)), Expiry::Soon);
    assert_eq!(svid_expiry(&cert(0, 100), at(100)), Expiry::Expired);
    let year = 365 * 86_400;
    assert_eq!(root_expiry(&cert(0, 10 * year), at(year)), Expiry::Fine);
    assert_eq!(root_expiry(&cert(0, 10 * year), at(10 * year - 86_400)), Expiry::Soon);
    assert_eq!(root_expiry(&cert(0, 10 * year), at(10 * year)), Expiry::Expired);
}

#[test]
fn a_page_before_the_first_round_says_readiness_is_not_known_yet() {
    let mut page = page();
    page.observed_at = None;
    assert!(render(&page).contains("proxies not read yet"));
}

#[test]
fn spans_read_in_the_largest_units() {
    assert_eq!(span(42), "42s");
    assert_eq!(span(7 * 60 + 3), "7m 3s");
    assert_eq!(span(5 * 3600 + 12 * 60), "5h 12m");
    assert_eq!(span(3 * 86_400 + 4 * 3600), "3d 4h");
    assert_eq!(span(-10), "10s ago");
}
