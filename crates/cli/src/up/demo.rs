//! The built-in demo mesh of `zmesh up`: the workloads and policies of the seed articles —
//! fintech-core (payment-processor, its two permitted callers and one that is not), production
//! (api-gateway and frontend under the deny baseline), ecommerce (a backend tier and its
//! clients) — and the flows the traffic generator drives, each with the decision Istio makes.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The demo's policies, exactly as the seeds wrote them.
pub(crate) const POLICIES: &str = include_str!("demo-policies.yaml");

/// The HTTP port every demo app serves.
pub(crate) const APP_PORT: u16 = 8080;

/// One demo workload: `(namespace, name, service account, labels)`.
pub(crate) struct DemoWorkload {
    pub namespace: &'static str,
    pub name: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
    /// Serves HTTP on [`APP_PORT`] (callers only send).
    pub serves: bool,
}

pub(crate) const WORKLOADS: &[DemoWorkload] = &[
    DemoWorkload {
        namespace: "fintech-core",
        name: "payment-processor",
        labels: &[("app", "payment-processor")],
        serves: true,
    },
    DemoWorkload {
        namespace: "fintech-core",
        name: "order-service",
        labels: &[("app", "order-service")],
        serves: false,
    },
    DemoWorkload {
        namespace: "fintech-core",
        name: "checkout-service",
        labels: &[("app", "checkout-service")],
        serves: false,
    },
    DemoWorkload {
        namespace: "fintech-core",
        name: "reporting-job",
        labels: &[("app", "reporting-job")],
        serves: false,
    },
    DemoWorkload { namespace: "production", name: "api-gateway", labels: &[("app", "api-gateway")], serves: true },
    DemoWorkload { namespace: "production", name: "frontend", labels: &[("app", "frontend")], serves: false },
    DemoWorkload {
        namespace: "ecommerce",
        name: "backend",
        labels: &[("app", "backend"), ("tier", "backend")],
        serves: true,
    },
    DemoWorkload { namespace: "ecommerce", name: "frontend", labels: &[("app", "frontend")], serves: false },
    DemoWorkload { namespace: "ecommerce", name: "api-gateway", labels: &[("app", "api-gateway")], serves: false },
];

/// A flow the traffic generator drives.
pub(crate) struct Flow {
    /// `namespace/name` of the caller.
    pub from: &'static str,
    /// `namespace/name` of the destination.
    pub to: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    /// What the seed policies decide, as the articles describe it. The summary asks the policy
    /// engine instead (the configuration may have been edited); tests hold the two together.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests only"))]
    pub expect_allowed: bool,
}

pub(crate) const FLOWS: &[Flow] = &[
    Flow {
        from: "fintech-core/order-service",
        to: "fintech-core/payment-processor",
        method: "POST",
        path: "/api/v2/payments/process",
        headers: &[],
        expect_allowed: true,
    },
    Flow {
        from: "fintech-core/checkout-service",
        to: "fintech-core/payment-processor",
        method: "POST",
        path: "/api/v2/payments/authorize",
        headers: &[],
        expect_allowed: true,
    },
    Flow {
        from: "fintech-core/reporting-job",
        to: "fintech-core/payment-processor",
        method: "POST",
        path: "/api/v2/payments/process",
        headers: &[],
        expect_allowed: false,
    },
    Flow {
        from: "fintech-core/order-service",
        to: "fintech-core/payment-processor",
        method: "GET",
        path: "/api/v2/payments/process",
        headers: &[],
        expect_allowed: false,
    },
    Flow {
        from: "production/frontend",
        to: "production/api-gateway",
        method: "GET",
        path: "/api/v1/orders",
        headers: &[("x-api-version", "v1")],
        expect_allowed: true,
    },
    Flow {
        from: "production/frontend",
        to: "production/api-gateway",
        method: "GET",
        path: "/api/v1/orders",
        headers: &[("x-api-version", "v1"), ("user-agent", "sqlmap/1.7")],
        // Istio reads `*sqlmap*` as a suffix match on the literal `sqlmap*`: the seed's
        // baseline never fires for a real scanner. `zmesh analyze` reports it (ZM1001).
        expect_allowed: true,
    },
    Flow {
        from: "ecommerce/frontend",
        to: "ecommerce/backend",
        method: "GET",
        path: "/catalog",
        headers: &[],
        expect_allowed: true,
    },
    Flow {
        from: "ecommerce/api-gateway",
        to: "ecommerce/backend",
        method: "POST",
        path: "/cart",
        headers: &[],
        expect_allowed: true,
    },
    Flow {
        from: "production/frontend",
        to: "ecommerce/backend",
        method: "GET",
        path: "/catalog",
        headers: &[],
        expect_allowed: false,
    },
    Flow {
        from: "fintech-core/order-service",
        to: "production/api-gateway",
        method: "GET",
        path: "/api/v1/orders",
        headers: &[("x-api-version", "v1")],
        expect_allowed: false,
    },
];

/// The address of demo workload `index` under `prefix` (`127.0` on loopback, a private /16
/// with `--isolate`): one /24 per namespace, so addresses read like the mesh's structure.
pub(crate) fn address(prefix: [u8; 2], index: usize) -> Ipv4Addr {
    let workload = &WORKLOADS[index];
    let namespace = WORKLOADS
        .iter()
        .map(|w| w.namespace)
        .fold(Vec::new(), |mut seen, ns| {
            if !seen.contains(&ns) {
                seen.push(ns);
            }
            seen
        })
        .iter()
        .position(|ns| *ns == workload.namespace)
        .unwrap_or(0);
    let within = WORKLOADS[..index].iter().filter(|w| w.namespace == workload.namespace).count();
    Ipv4Addr::new(
        prefix[0],
        prefix[1],
        u8::try_from(namespace + 1).unwrap_or(255),
        u8::try_from(within + 2).unwrap_or(255),
    )
}

/// The demo's WorkloadEntries (a Kubernetes-style List would do as well; plain documents read
/// best).
pub(crate) fn workload_entries(prefix: [u8; 2]) -> String {
    let mut yaml =
        String::from("# The workloads of the built-in demo mesh; `zmesh up` starts an app and a proxy for each.\n");
    for (index, workload) in WORKLOADS.iter().enumerate() {
        let labels: Vec<String> = workload.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let ports = if workload.serves { format!(", ports: {{http: {APP_PORT}}}") } else { String::new() };
        let _ = write!(
            yaml,
            "---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {{address: {address}, serviceAccount: {name}, labels: {{{labels}}}{ports}}}\n",
            name = workload.name,
            namespace = workload.namespace,
            address = address(prefix, index),
            labels = labels.join(", "),
        );
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid_and_every_flow_names_known_workloads() {
        let mut text = workload_entries([127, 0]);
        text.push_str("---\n");
        text.push_str(POLICIES);
        let loaded = zmesh_config::load_str(&text);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.config.workload_entries.len(), WORKLOADS.len());
        let known: Vec<String> = WORKLOADS.iter().map(|w| format!("{}/{}", w.namespace, w.name)).collect();
        for flow in FLOWS {
            assert!(known.iter().any(|k| k == flow.from) && known.iter().any(|k| k == flow.to), "{}", flow.from);
        }
        assert_eq!(address([127, 0], 0), Ipv4Addr::new(127, 0, 1, 2));
        assert_eq!(address([127, 0], 4), Ipv4Addr::new(127, 0, 2, 2));
    }

    #[test]
    fn every_flow_gets_the_decision_the_summary_expects() {
        let mut text = workload_entries([127, 0]);
        text.push_str("---\n");
        text.push_str(POLICIES);
        let config = zmesh_config::load_str(&text).config;
        let policies = zmesh_policy::PolicySet::compile(&config);
        let registry = zmesh_registry::Registry::from_config(&config);
        for flow in FLOWS {
            let (to_ns, to_name) = flow.to.split_once('/').expect("ns/name");
            let (from_ns, from_name) = flow.from.split_once('/').expect("ns/name");
            let from = registry.workload_named(from_ns, from_name).expect("caller");
            let to = registry.workload_named(to_ns, to_name).expect("destination");
            let request = zmesh_policy::Request {
                peer: Some(&from.identity),
                destination_port: APP_PORT,
                http: Some(zmesh_policy::HttpRequest {
                    method: flow.method,
                    host: flow.to,
                    path: flow.path,
                    headers: flow.headers,
                }),
                ..Default::default()
            };
            let decision = policies.for_workload(&to.policy_workload()).authorize(&request);
            assert_eq!(
                decision.is_allow(),
                flow.expect_allowed,
                "{} → {} {} {}",
                flow.from,
                flow.to,
                flow.method,
                flow.path
            );
        }
    }
}
