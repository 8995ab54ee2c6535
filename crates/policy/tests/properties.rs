//! Invariants of the decision engine, checked over generated policies and requests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use proptest::prelude::*;
use zmesh_config::authz::{Action, AuthorizationPolicy, Condition, ConditionKey, Operation, Rule, Source};
use zmesh_config::meta::{Meta, Selector};
use zmesh_config::yaml::Pos;
use zmesh_config::{Config, Spanned};
use zmesh_id::SpiffeId;
use zmesh_policy::{Claims, HttpRequest, PolicySet, Request, Workload};

fn spanned<T>(value: T) -> Spanned<T> {
    Spanned { value, pos: Pos::default() }
}

fn pick<T: Clone + std::fmt::Debug + 'static>(pool: &'static [T]) -> impl Strategy<Value = Vec<T>> {
    proptest::sample::subsequence(pool, 0..=2)
}

const PRINCIPALS: &[&str] = &["cluster.local/ns/foo/sa/sleep", "cluster.local/ns/bar/sa/*", "*", "*/sa/admin"];
const NAMESPACES: &[&str] = &["foo", "bar", "ba*"];
const METHODS: &[&str] = &["GET", "POST", "*"];
const PATHS: &[&str] = &["/api/*", "/admin", "*/health", "/api/{*}/x"];
const PORTS: &[u16] = &[80, 8080, 9090];
const HEADER_VALUES: &[&str] = &["v1", "v*", "*"];
const REQUEST_PRINCIPALS: &[&str] = &["*", "iss/alice", "iss/*"];

fn strings(values: Vec<&str>) -> Vec<Spanned<String>> {
    values.into_iter().map(|v| spanned(v.to_owned())).collect()
}

fn arb_source() -> impl Strategy<Value = Source> {
    (pick(PRINCIPALS), pick(PRINCIPALS), pick(NAMESPACES), pick(REQUEST_PRINCIPALS), any::<bool>()).prop_map(
        |(principals, not_principals, namespaces, request_principals, use_ip)| Source {
            principals: strings(principals),
            not_principals: strings(not_principals),
            namespaces: strings(namespaces),
            request_principals: strings(request_principals),
            ip_blocks: if use_ip { vec![spanned("10.0.0.0/24".parse().expect("cidr"))] } else { Vec::new() },
            ..Source::default()
        },
    )
}

fn arb_operation() -> impl Strategy<Value = Operation> {
    (pick(METHODS), pick(PATHS), pick(PATHS), pick(PORTS)).prop_map(|(methods, paths, not_paths, ports)| Operation {
        methods: strings(methods),
        paths: strings(paths),
        not_paths: strings(not_paths),
        ports: ports.into_iter().map(spanned).collect(),
        ..Operation::default()
    })
}

fn arb_condition() -> impl Strategy<Value = Condition> {
    (pick(HEADER_VALUES), pick(HEADER_VALUES)).prop_map(|(values, not_values)| Condition {
        pos: Pos::default(),
        key: spanned(ConditionKey::RequestHeader("x-version".into())),
        values: strings(if values.is_empty() && not_values.is_empty() { vec!["v1"] } else { values }),
        not_values: strings(not_values),
    })
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(arb_source(), 0..2),
        proptest::collection::vec(arb_operation(), 0..2),
        proptest::collection::vec(arb_condition(), 0..2),
    )
        .prop_map(|(from, to, when)| Rule { pos: Pos::default(), from, to, when })
}

fn arb_policy(action: Action) -> impl Strategy<Value = AuthorizationPolicy> {
    (
        "[a-z]{1,6}",
        prop::sample::select(vec!["foo", "istio-system", "bar"]),
        proptest::option::of(prop::sample::select(vec!["httpbin", "other"])),
        proptest::collection::vec(arb_rule(), 0..3),
    )
        .prop_map(move |(name, namespace, app, rules)| AuthorizationPolicy {
            meta: Meta {
                name: format!("{}-{name}", action.as_str().to_lowercase()),
                namespace: namespace.to_owned(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                creation_timestamp: None,
                origin: Default::default(),
                order: 0,
            },
            selector: app.map(|app| Selector {
                match_labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
                pos: Pos::default(),
            }),
            target_refs: Vec::new(),
            action,
            provider: None,
            rules,
            dry_run: false,
        })
}

fn arb_policies() -> impl Strategy<Value = Vec<AuthorizationPolicy>> {
    let action = prop::sample::select(vec![Action::Allow, Action::Deny, Action::Audit]);
    proptest::collection::vec(action.prop_flat_map(arb_policy), 0..6)
}

/// Method, path and headers of a generated HTTP request.
type OwnedHttp = (String, String, Vec<(String, String)>);

/// An owned request, borrowed into the engine's `Request` for each decision.
#[derive(Debug, Clone)]
struct OwnedRequest {
    peer: Option<SpiffeId>,
    source_ip: IpAddr,
    port: u16,
    http: Option<OwnedHttp>,
    claims: Option<Claims>,
}

impl OwnedRequest {
    fn decide(&self, set: &PolicySet, workload: &Workload) -> bool {
        let headers: Vec<(&str, &str)> = self
            .http
            .as_ref()
            .map(|(_, _, h)| h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect())
            .unwrap_or_default();
        let request = Request {
            peer: self.peer.as_ref(),
            source_ip: Some(self.source_ip),
            remote_ip: None,
            destination_ip: None,
            destination_port: self.port,
            sni: None,
            http: self.http.as_ref().map(|(method, path, _)| HttpRequest {
                method,
                host: "httpbin.foo",
                path,
                headers: &headers,
            }),
            jwt: self.claims.as_ref(),
        };
        set.for_workload(workload).authorize(&request).is_allow()
    }
}

fn arb_request() -> impl Strategy<Value = OwnedRequest> {
    let peer = proptest::option::of(prop::sample::select(vec![
        "cluster.local/ns/foo/sa/sleep",
        "cluster.local/ns/bar/sa/admin",
        "other.td/ns/baz/sa/x",
    ]));
    let http = proptest::option::of((
        prop::sample::select(vec!["GET", "POST", "DELETE"]),
        prop::sample::select(vec!["/api/v1", "/api/a/x", "/admin", "/x/health", "/"]),
        proptest::option::of(prop::sample::select(vec!["v1", "v2", ""])),
    ));
    let claims = proptest::option::of(prop::sample::select(vec!["alice", "bob"]));
    (peer, prop::sample::select(vec!["10.0.0.5", "192.168.1.1"]), prop::sample::select(PORTS.to_vec()), http, claims)
        .prop_map(|(peer, ip, port, http, claims)| OwnedRequest {
            peer: peer.map(|p| SpiffeId::from_principal(p).expect("valid principal")),
            source_ip: ip.parse().expect("ip"),
            port,
            http: http.map(|(method, path, version)| {
                (
                    method.to_owned(),
                    path.to_owned(),
                    version.map(|v| vec![("x-version".to_owned(), v.to_owned())]).unwrap_or_default(),
                )
            }),
            claims: claims.map(|sub| {
                let mut map = serde_json::Map::new();
                map.insert("iss".into(), "iss".into());
                map.insert("sub".into(), sub.into());
                Claims::new(map, &[])
            }),
        })
}

fn workload() -> Workload {
    Workload {
        namespace: "foo".into(),
        labels: BTreeMap::from([("app".into(), "httpbin".into())]),
        service_account: "httpbin".into(),
    }
}

fn set_of(policies: &[AuthorizationPolicy]) -> PolicySet {
    PolicySet::compile(&Config { authorization_policies: policies.to_vec(), ..Config::default() })
}

fn unique_names(policies: &mut [AuthorizationPolicy]) {
    for (i, policy) in policies.iter_mut().enumerate() {
        policy.meta.name = format!("{}-{i}", policy.meta.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn adding_a_deny_policy_never_allows_more(mut policies in arb_policies(), deny in arb_policy(Action::Deny), request in arb_request()) {
        unique_names(&mut policies);
        let before = request.decide(&set_of(&policies), &workload());
        policies.push(AuthorizationPolicy { meta: Meta { name: "added-deny".into(), ..deny.meta.clone() }, ..deny });
        prop_assert!(!request.decide(&set_of(&policies), &workload()) || before);
    }

    #[test]
    fn adding_the_first_allow_policy_never_allows_more(mut policies in arb_policies(), allow in arb_policy(Action::Allow), request in arb_request()) {
        policies.retain(|p| p.action != Action::Allow);
        unique_names(&mut policies);
        let before = request.decide(&set_of(&policies), &workload());
        policies.push(AuthorizationPolicy { meta: Meta { name: "added-allow".into(), ..allow.meta.clone() }, ..allow });
        prop_assert!(!request.decide(&set_of(&policies), &workload()) || before);
    }

    #[test]
    fn adding_an_allow_to_a_workload_that_has_one_never_allows_less(mut policies in arb_policies(), existing in arb_policy(Action::Allow), allow in arb_policy(Action::Allow), request in arb_request()) {
        // Make sure the workload already has an ALLOW policy: one in its own namespace, no selector.
        let mut existing = existing;
        existing.meta.namespace = "foo".into();
        existing.selector = None;
        policies.push(existing);
        unique_names(&mut policies);
        let workload = workload();
        prop_assert!(!set_of(&policies).for_workload(&workload).allow.is_empty());
        let before = request.decide(&set_of(&policies), &workload);
        policies.push(AuthorizationPolicy { meta: Meta { name: "added-allow".into(), ..allow.meta.clone() }, ..allow });
        prop_assert!(request.decide(&set_of(&policies), &workload) || !before);
    }

    #[test]
    fn a_dry_run_policy_never_changes_a_decision(mut policies in arb_policies(), extra in prop::sample::select(vec![Action::Allow, Action::Deny, Action::Audit]).prop_flat_map(arb_policy), request in arb_request()) {
        unique_names(&mut policies);
        let before = request.decide(&set_of(&policies), &workload());
        policies.push(AuthorizationPolicy { meta: Meta { name: "added-dry-run".into(), ..extra.meta.clone() }, dry_run: true, ..extra });
        prop_assert_eq!(request.decide(&set_of(&policies), &workload()), before);
    }

    #[test]
    fn decisions_do_not_depend_on_document_order(mut policies in arb_policies(), request in arb_request(), seed in any::<u64>()) {
        unique_names(&mut policies);
        let set = set_of(&policies);
        let before = set.for_workload(&workload()).authorize(&Request::default()).clone();
        let decided = request.decide(&set, &workload());
        let mut shuffled = policies.clone();
        let len = shuffled.len().max(1);
        shuffled.rotate_left((seed as usize) % len);
        shuffled.reverse();
        let shuffled_set = set_of(&shuffled);
        prop_assert_eq!(request.decide(&shuffled_set, &workload()), decided);
        prop_assert_eq!(shuffled_set.for_workload(&workload()).authorize(&Request::default()), before);
    }
}
