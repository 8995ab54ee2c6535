//! What each demo flow should get under the configuration in force, decided by the policy
//! engine itself (`zmesh_policy::explain`, the code `zmesh authz check` runs) rather than by the
//! demo's fixed text: after an edit the summary expects what the proxies now enforce.

use zmesh_config::{Config, FileKind, Loaded, Loader};
use zmesh_policy::{HttpRequest, PolicySet, Request, explain};
use zmesh_registry::Registry;

use super::demo::{APP_PORT, Flow};

/// The decision the configuration in force makes for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expectation {
    /// `None` when the flow cannot happen as written (a workload left the configuration).
    pub allowed: Option<bool>,
    /// The engine's own one-line explanation.
    pub reason: String,
}

impl Expectation {
    pub fn word(&self) -> &'static str {
        match self.allowed {
            Some(true) => "ALLOW",
            Some(false) => "DENY",
            None => "NONE",
        }
    }
}

/// The configuration in force, as the proxies build it: the control plane's store keeps the
/// policies only as the documents it pushes, so they are loaded again from those documents, in
/// the store's load order, as every proxy does.
pub(crate) fn config_in_force(loaded: &Loaded) -> Result<Config, String> {
    let mut sources: Vec<_> = loaded.sources.iter().collect();
    sources.sort_by_key(|source| source.order);
    let mut loader = Loader::new();
    for source in sources {
        let kind = if source.kind == "MeshConfig" { FileKind::MeshConfig } else { FileKind::Resources };
        loader.add_str(Some(source.origin.to_string().into()), &source.json, kind);
    }
    let reloaded = loader.finish();
    if reloaded.has_errors() {
        return Err(reloaded.errors().map(ToString::to_string).collect::<Vec<_>>().join("; "));
    }
    Ok(reloaded.config)
}

/// The expectation of every flow, in order, under `config`.
pub(crate) fn expectations(config: &Config, flows: &[Flow]) -> Vec<Expectation> {
    let policies = PolicySet::compile(config);
    let registry = Registry::from_config(config);
    flows.iter().map(|flow| expect(&policies, &registry, flow)).collect()
}

fn expect(policies: &PolicySet, registry: &Registry, flow: &Flow) -> Expectation {
    let named = |key: &str| {
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        registry.workload_named(namespace, name)
    };
    let (Some(from), Some(to)) = (named(flow.from), named(flow.to)) else {
        return Expectation {
            allowed: None,
            reason: format!("{} or {} is no longer in the configuration", flow.from, flow.to),
        };
    };
    let destination = to.policy_workload();
    // Both ends are in the mesh, so the caller's proxy always presents its certificate; a port
    // whose mode is DISABLE would see it as plaintext, which the engine then decides on.
    let mtls = policies.mtls_mode(&destination, APP_PORT);
    let peer = mtls.accepts_mtls().then_some(&from.identity);
    let host = format!("{}.{}:{APP_PORT}", to.name, to.namespace);
    let request = Request {
        peer,
        source_ip: Some(from.address),
        destination_ip: Some(to.address),
        destination_port: APP_PORT,
        http: Some(HttpRequest { method: flow.method, host: &host, path: flow.path, headers: flow.headers }),
        ..Default::default()
    };
    let explanation = explain::explain(&policies.for_workload(&destination), &request);
    Expectation { allowed: Some(explanation.decision.is_allow()), reason: explanation.reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::demo::{FLOWS, POLICIES, workload_entries};

    fn load(policies: &str) -> Config {
        let text = format!("{}---\n{policies}", workload_entries([127, 0]));
        let loaded = zmesh_config::load_str(&text);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        loaded.config
    }

    #[test]
    fn the_seed_policies_give_every_flow_the_decision_the_demo_documents() {
        let expected = expectations(&load(POLICIES), FLOWS);
        for (flow, expectation) in FLOWS.iter().zip(&expected) {
            assert_eq!(expectation.allowed, Some(flow.expect_allowed), "{} → {}: {expectation:?}", flow.from, flow.to);
        }
        // The GET flow is denied for its method, and the engine says so.
        assert!(expected[3].reason.contains("GET"), "{:?}", expected[3]);
    }

    #[test]
    fn allowing_get_turns_the_get_flow_into_an_expected_allow() {
        let edited = POLICIES.replace("methods: ['POST']", "methods: ['POST', 'GET']");
        assert_ne!(edited, POLICIES);
        let expected = expectations(&load(&edited), FLOWS);
        assert_eq!(expected[3].allowed, Some(true), "{:?}", expected[3]);
        assert!(expected[3].reason.contains("payment-processor-access"), "{:?}", expected[3]);
        // The caller that is not listed stays denied.
        assert_eq!(expected[2].allowed, Some(false));
    }

    #[test]
    fn the_configuration_in_force_is_rebuilt_from_the_documents_the_store_keeps() {
        let text = format!("{}---\n{POLICIES}", workload_entries([127, 0]));
        let mut loaded = zmesh_config::load_str(&text);
        // The store keeps the typed registry kinds and the policies as documents only.
        loaded.config.authorization_policies.clear();
        loaded.config.peer_authentications.clear();
        let stripped = expectations(&loaded.config, FLOWS);
        assert!(stripped.iter().all(|e| e.allowed == Some(true)), "{stripped:?}");
        let config = config_in_force(&loaded).unwrap();
        let expected = expectations(&config, FLOWS);
        for (flow, expectation) in FLOWS.iter().zip(&expected) {
            assert_eq!(expectation.allowed, Some(flow.expect_allowed), "{} → {}", flow.from, flow.to);
        }
    }

    #[test]
    fn a_flow_whose_workload_left_the_configuration_expects_nothing() {
        let text = POLICIES.to_owned();
        let loaded = zmesh_config::load_str(&text);
        let expected = expectations(&loaded.config, FLOWS);
        assert!(expected.iter().all(|e| e.allowed.is_none()), "{expected:?}");
        assert_eq!(expected[0].word(), "NONE");
    }
}
