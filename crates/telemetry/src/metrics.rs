//! Prometheus metrics with Istio's standard names and labels, rendered as text for
//! `/stats/prometheus` on 15020. The full telemetry work (Telemetry API overrides, histograms)
//! builds on this.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Label values of one series, in the order they are written.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), i64>>,
}

/// Missing values are the literal `unknown`, as Istio writes them.
pub fn value(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

const HELP: &[(&str, &str, &str)] = &[
    ("istio_requests_total", "counter", "Requests handled by the proxy."),
    ("istio_tcp_connections_opened_total", "counter", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "counter", "TCP connections closed."),
    ("istio_tcp_received_bytes_total", "counter", "Bytes received from the client."),
    ("istio_tcp_sent_bytes_total", "counter", "Bytes sent to the client."),
    ("zmesh_authz_decisions_total", "counter", "Authorization decisions by deciding policy and rule."),
    ("zmesh_jwt_authn_total", "counter", "Requests refused by RequestAuthentication (an invalid or unaccepted token)."),
    ("zmesh_ext_authz_total", "counter", "Checks with external authorizers of CUSTOM policies, by result."),
    ("zmesh_authz_audit_total", "counter", "Requests an AUDIT policy matched, by policy and rule."),
    (
        "zmesh_authz_dry_run_total",
        "counter",
        "Requests whose decision a dry-run policy would change, by policy and shadow result.",
    ),
    (
        "zmesh_local_rate_limit_total",
        "counter",
        "Requests over a local rate limit, enforced (rate_limited) or not (shadow_limited).",
    ),
    (
        "zmesh_connections_refused_total",
        "counter",
        "Connections closed before they proved themselves (handshake or first bytes), by listener and reason.",
    ),
    ("zmesh_certificate_expiry_seconds", "gauge", "Seconds until the workload certificate expires."),
    (
        "zmesh_plaintext_connections_total",
        "counter",
        "Plaintext (non-mTLS) connections to an app port, by destination port and source (at most 1024 sources, then `other`).",
    ),
    (
        "zmesh_plaintext_observed_since_seconds",
        "gauge",
        "When this proxy began observing plaintext connections (Unix time); the zmesh_plaintext_* series cover the time since.",
    ),
    (
        "zmesh_plaintext_first_seen_seconds",
        "gauge",
        "When a source's first plaintext connection to the port arrived (Unix time).",
    ),
    (
        "zmesh_plaintext_last_seen_seconds",
        "gauge",
        "When a source's latest plaintext connection to the port arrived (Unix time).",
    ),
    (
        "zmesh_mtls_dry_run_refusals_total",
        "counter",
        "Plaintext connections a dry-run PeerAuthentication would refuse (not enforced), by destination port and policy.",
    ),
];

impl Metrics {
    pub fn add(&self, name: &'static str, labels: Labels, by: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *counters.entry((name, labels)).or_default() += by;
    }

    pub fn set(&self, name: &'static str, labels: Labels, value: i64) {
        self.gauges.lock().unwrap_or_else(|p| p.into_inner()).insert((name, labels), value);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let series: Vec<(&Labels, String)> = if *kind == "counter" {
                counters.iter().filter(|((n, _), _)| n == name).map(|((_, l), v)| (l, v.to_string())).collect()
            } else {
                gauges.iter().filter(|((n, _), _)| n == name).map(|((_, l), v)| (l, v.to_string())).collect()
            };
            if series.is_empty() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                    continue;
                }
                let rendered: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", rendered.join(","));
            }
        }
        out
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_prometheus_text_with_escaped_labels() {
        let metrics = Metrics::default();
        let labels = vec![
            ("reporter", "destination".to_owned()),
            ("response_code", "403".to_owned()),
            ("note", "a\"b".to_owned()),
        ];
        metrics.add("istio_requests_total", labels.clone(), 1);
        metrics.add("istio_requests_total", labels, 2);
        metrics.set("zmesh_certificate_expiry_seconds", vec![], 42);
        let text = metrics.render();
        assert!(text.contains("# TYPE istio_requests_total counter\n"));
        assert!(
            text.contains("istio_requests_total{reporter=\"destination\",response_code=\"403\",note=\"a\\\"b\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("zmesh_certificate_expiry_seconds 42\n"), "{text}");
    }

    #[test]
    fn plaintext_observation_series_render_with_their_type() {
        let metrics = Metrics::default();
        let labels = vec![
            ("destination_port", "8080".to_owned()),
            ("source_workload", "shop/legacy".to_owned()),
            ("source_address", "10.0.0.4".to_owned()),
        ];
        metrics.add("zmesh_plaintext_connections_total", labels.clone(), 2);
        metrics.set("zmesh_plaintext_last_seen_seconds", labels, 1_700_000_000);
        metrics.add(
            "zmesh_mtls_dry_run_refusals_total",
            vec![("destination_port", "8080".to_owned()), ("policy", "shop/strict".to_owned())],
            2,
        );
        let text = metrics.render();
        assert!(text.contains("# TYPE zmesh_plaintext_connections_total counter\n"), "{text}");
        assert!(text.contains("# TYPE zmesh_plaintext_last_seen_seconds gauge\n"), "{text}");
        assert!(
            text.contains("zmesh_plaintext_last_seen_seconds{destination_port=\"8080\",source_workload=\"shop/legacy\",source_address=\"10.0.0.4\"} 1700000000\n"),
            "{text}"
        );
        assert!(
            text.contains("zmesh_mtls_dry_run_refusals_total{destination_port=\"8080\",policy=\"shop/strict\"} 2\n"),
            "{text}"
        );
    }
}
