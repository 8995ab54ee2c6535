//! `authorize()` with 10, 1,000 and 10,000 policies in the mesh, 50 of them applying to the
//! workload; and compiling 10,000 policies. The cost of a decision must depend on the
//! policies that apply, not on the size of the mesh.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use zmesh_id::SpiffeId;
use zmesh_policy::{HttpRequest, PolicySet, Request, Workload};

/// A mesh of `total` policies: 50 select `payments/app=api` (10 DENY that do not match the
/// request, 40 ALLOW of which only the last matches), the rest live in other namespaces or
/// select other apps.
fn mesh_yaml(total: usize) -> String {
    let mut out = String::new();
    for i in 0..total {
        let applies = i < 50;
        let namespace = if applies { "payments".to_owned() } else { format!("team-{}", i % 200) };
        let app = if applies { "api".to_owned() } else { format!("svc-{i}") };
        let (action, rules) = if applies && i < 10 {
            (
                "DENY",
                format!(
                    "  - to:\n    - operation:\n        paths: [\"/admin/{i}*\"]\n  - when:\n    - key: request.headers[x-block]\n      values: [\"b{i}\"]\n"
                ),
            )
        } else if applies && i < 49 {
            (
                "ALLOW",
                format!(
                    "  - from:\n    - source:\n        principals: [\"cluster.local/ns/other/sa/client-{i}\"]\n    to:\n    - operation:\n        methods: [\"POST\"]\n        paths: [\"/api/v{i}/*\"]\n"
                ),
            )
        } else if applies {
            ("ALLOW", "  - from:\n    - source:\n        principals: [\"cluster.local/ns/shop/sa/checkout\"]\n        namespaces: [\"shop\"]\n    to:\n    - operation:\n        methods: [\"GET\", \"POST\"]\n        paths: [\"/api/v2/*\"]\n        ports: [\"8080\"]\n    when:\n    - key: request.headers[x-api-version]\n      values: [\"v2\"]\n".to_owned())
        } else {
            ("ALLOW", format!("  - from:\n    - source:\n        namespaces: [\"ns-{i}\"]\n"))
        };
        out.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p-{i}\n  namespace: {namespace}\nspec:\n  action: {action}\n  selector:\n    matchLabels:\n      app: {app}\n  rules:\n{rules}"
        ));
    }
    out
}

fn load(total: usize) -> zmesh_config::Config {
    let loaded = zmesh_config::load_str(&mesh_yaml(total));
    assert!(!loaded.has_errors(), "{:?}", loaded.errors().next());
    assert_eq!(loaded.config.authorization_policies.len(), total);
    loaded.config
}

fn authorize(c: &mut Criterion) {
    let workload = Workload {
        namespace: "payments".into(),
        labels: [("app".to_owned(), "api".to_owned())].into(),
        service_account: "api".into(),
    };
    let peer: SpiffeId = "spiffe://cluster.local/ns/shop/sa/checkout".parse().expect("valid id");
    let headers = [("x-api-version", "v2"), ("user-agent", "curl/8.5")];
    let request = Request {
        peer: Some(&peer),
        source_ip: Some("10.0.0.5".parse().expect("ip")),
        remote_ip: None,
        destination_ip: Some("10.0.0.9".parse().expect("ip")),
        destination_port: 8080,
        sni: None,
        http: Some(HttpRequest {
            method: "POST",
            host: "api.payments:8080",
            path: "/api/v2/charges?id=7",
            headers: &headers,
        }),
        jwt: None,
    };
    let mut group = c.benchmark_group("authorize");
    for total in [10, 1_000, 10_000] {
        let set = PolicySet::compile(&load(total));
        let policies = set.for_workload(&workload);
        assert_eq!(policies.all().count(), total.min(50));
        assert!(policies.authorize(&request).is_allow());
        group.bench_with_input(BenchmarkId::new("http-50-applying", total), &total, |b, _| {
            b.iter(|| black_box(&policies).authorize(black_box(&request)))
        });
        group.bench_with_input(BenchmarkId::new("select-and-authorize", total), &total, |b, _| {
            b.iter(|| set.for_workload(black_box(&workload)).authorize(black_box(&request)))
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let config = load(10_000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("10k-policies", |b| b.iter(|| PolicySet::compile(black_box(&config))));
    let text = mesh_yaml(10_000);
    group.bench_function("10k-policies-from-yaml", |b| {
        b.iter(|| PolicySet::compile(&zmesh_config::load_str(black_box(&text)).config))
    });
    group.finish();
}

criterion_group!(benches, authorize, compile);
criterion_main!(benches);
