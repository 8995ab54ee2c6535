//! The compiled policies of a whole mesh, indexed so that finding the ones that apply to a
//! workload costs in proportion to the policies of its namespace and labels, not the mesh.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use zmesh_config::Config;
use zmesh_config::authn::{JwtRule, MtlsMode, PeerAuthentication};
use zmesh_config::authz::Action;
use zmesh_config::meta::{Meta, Selector};

use crate::authz::WorkloadPolicy;
use crate::compile::{CompiledPolicy, PolicyId, TrustDomains, compile_policy};

/// A workload as policies see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Workload {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
}

/// Policies of one namespace: those without a selector, and those with one, keyed by one of
/// their labels (the smallest) so a workload only looks at selectors that could match it.
/// Items with a selector, filed under one of its labels.
type Selected<T> = Vec<(Arc<T>, Selector)>;

#[derive(Debug)]
struct Bucket<T> {
    namespace_wide: Vec<Arc<T>>,
    by_label: HashMap<(String, String), Selected<T>>,
}

impl<T> Default for Bucket<T> {
    fn default() -> Self {
        Bucket { namespace_wide: Vec::new(), by_label: HashMap::new() }
    }
}

impl<T> Bucket<T> {
    fn insert(&mut self, item: Arc<T>, selector: Option<&Selector>) {
        match selector.and_then(|s| s.match_labels.iter().next().map(|kv| (s, kv))) {
            Some((selector, (k, v))) => {
                self.by_label.entry((k.clone(), v.clone())).or_default().push((item, selector.clone()))
            }
            None => self.namespace_wide.push(item),
        }
    }

    fn selecting<'a>(&'a self, labels: &'a BTreeMap<String, String>) -> impl Iterator<Item = &'a Arc<T>> + 'a {
        let selected = labels
            .iter()
            .filter_map(|(k, v)| self.by_label.get(&(k.clone(), v.clone())))
            .flatten()
            .filter(|(_, selector)| selector.matches(labels))
            .map(|(item, _)| item);
        self.namespace_wide.iter().chain(selected)
    }
}

/// Index by namespace of anything selected like an Istio policy.
#[derive(Debug)]
struct Index<T> {
    namespaces: HashMap<String, Bucket<T>>,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Index { namespaces: HashMap::new() }
    }
}

impl<T> Index<T> {
    fn insert(&mut self, namespace: &str, item: Arc<T>, selector: Option<&Selector>) {
        self.namespaces.entry(namespace.to_owned()).or_default().insert(item, selector);
    }

    /// Root-namespace items (selectors apply mesh-wide) and the workload's namespace items.
    fn applying<'a>(&'a self, root: &'a str, workload: &'a Workload) -> impl Iterator<Item = &'a Arc<T>> + 'a {
        let root_bucket = self.namespaces.get(root);
        let own = (workload.namespace != root).then(|| self.namespaces.get(&workload.namespace)).flatten();
        root_bucket.into_iter().chain(own).flat_map(|bucket| bucket.selecting(&workload.labels))
    }
}

/// A RequestAuthentication's rules with where they came from.
#[derive(Debug, Clone)]
pub struct JwtRules {
    pub policy: PolicyId,
    pub rules: Vec<JwtRule>,
}

/// Every policy of the mesh, compiled and indexed.
#[derive(Debug)]
pub struct PolicySet {
    root_namespace: String,
    known_providers: Arc<[String]>,
    authz: Index<CompiledPolicy>,
    request_authn: Index<JwtRules>,
    peer_authn: Vec<Arc<PeerAuthentication>>,
    policy_count: usize,
}

/// The effective mTLS mode of a workload port and the policy that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsDecision {
    /// Never `Unset`: with nothing set anywhere the mode is PERMISSIVE.
    pub mode: MtlsMode,
    pub policy: Option<PolicyId>,
    /// True when the mode came from `portLevelMtls`.
    pub port_level: bool,
}

impl MtlsDecision {
    pub fn accepts_plaintext(&self) -> bool {
        self.mode != MtlsMode::Strict
    }

    pub fn accepts_mtls(&self) -> bool {
        self.mode != MtlsMode::Disable
    }
}

fn oldest<'a>(candidates: impl Iterator<Item = &'a Arc<PeerAuthentication>>) -> Option<&'a Arc<PeerAuthentication>> {
    candidates.min_by(|a, b| age(&a.meta).cmp(&age(&b.meta)))
}

/// Oldest first: by creation time when documents carry one, then by load order.
fn age(meta: &Meta) -> (&str, usize) {
    let (created, order) = meta.age_key();
    (created.unwrap_or_default(), order)
}

impl PolicySet {
    pub fn compile(config: &Config) -> PolicySet {
        let trust = TrustDomains::from_mesh(&config.mesh);
        let mut set = PolicySet {
            root_namespace: config.mesh.root_namespace.clone(),
            known_providers: config
                .mesh
                .extension_providers
                .iter()
                .filter(|p| p.kind.is_ext_authz())
                .map(|p| p.name.clone())
                .collect(),
            authz: Index::default(),
            request_authn: Index::default(),
            peer_authn: config.peer_authentications.iter().cloned().map(Arc::new).collect(),
            policy_count: 0,
        };
        // A later document with the same namespace/name replaces an earlier one, as a second
        // `kubectl apply` would.
        let mut latest: BTreeMap<String, &zmesh_config::authz::AuthorizationPolicy> = BTreeMap::new();
        for policy in &config.authorization_policies {
            latest.insert(policy.meta.key(), policy);
        }
        for policy in latest.into_values() {
            // Sidecars ignore policies that attach through targetRefs (gateways, waypoints).
            if !policy.target_refs.is_empty() {
                continue;
            }
            let compiled = Arc::new(compile_policy(&Arc::new(policy.clone()), &trust));
            set.authz.insert(&policy.meta.namespace, compiled, policy.selector.as_ref());
            set.policy_count += 1;
        }
        for policy in &config.request_authentications {
            if !policy.target_refs.is_empty() {
                continue;
            }
            let rules = Arc::new(JwtRules { policy: policy.meta.key().into(), rules: policy.jwt_rules.clone() });
            set.request_authn.insert(&policy.meta.namespace, rules, policy.selector.as_ref());
        }
        set
    }

    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// How many AuthorizationPolicies the set holds (after de-duplication).
    pub fn len(&self) -> usize {
        self.policy_count
    }

    pub fn is_empty(&self) -> bool {
        self.policy_count == 0
    }

    /// The AuthorizationPolicies that apply to a workload, ready to decide its requests.
    pub fn for_workload(&self, workload: &Workload) -> WorkloadPolicy {
        let mut policy = WorkloadPolicy { known_providers: self.known_providers.clone(), ..WorkloadPolicy::default() };
        for compiled in self.authz.applying(&self.root_namespace, workload) {
            let list = match (compiled.dry_run, compiled.action) {
                (true, _) => &mut policy.dry_run,
                (false, Action::Custom) => &mut policy.custom,
                (false, Action::Deny) => &mut policy.deny,
                (false, Action::Allow) => &mut policy.allow,
                (false, Action::Audit) => &mut policy.audit,
            };
            list.push(compiled.clone());
        }
        // Stable order, so the deciding policy never depends on document order.
        for list in [&mut policy.custom, &mut policy.deny, &mut policy.allow, &mut policy.audit, &mut policy.dry_run] {
            list.sort_by(|a, b| a.id.cmp(&b.id));
        }
        policy
    }

    /// The RequestAuthentication rules that apply to a workload (pooled across policies).
    pub fn jwt_rules(&self, workload: &Workload) -> Vec<Arc<JwtRules>> {
        let mut rules: Vec<Arc<JwtRules>> =
            self.request_authn.applying(&self.root_namespace, workload).cloned().collect();
        rules.sort_by(|a, b| a.policy.cmp(&b.policy));
        rules
    }

    /// The effective PeerAuthentication mode for a workload port (istio-semantics §7). Dry-run
    /// policies are not enforced and take no part; see [`PolicySet::mtls_modes`].
    pub fn mtls_mode(&self, workload: &Workload, port: u16) -> MtlsDecision {
        self.compose_mtls_mode(workload, port, false).0
    }

    /// The mode for a workload port from the enforced PeerAuthentications, and the dry-run ones
    /// too when `with_dry_run` (as if their annotation were removed); true when a dry-run policy
    /// set the mode.
    pub(crate) fn compose_mtls_mode(&self, workload: &Workload, port: u16, with_dry_run: bool) -> (MtlsDecision, bool) {
        let root = self.root_namespace.as_str();
        let in_namespace =
            |ns: String| self.peer_authn.iter().filter(move |p| p.meta.namespace == ns && (with_dry_run || !p.dry_run));
        let mesh = oldest(in_namespace(root.to_owned()).filter(|p| !p.has_selector()));
        let namespace = oldest(in_namespace(workload.namespace.clone()).filter(|p| !p.has_selector()));
        // Selector policies in the root namespace are ignored, even for root-namespace workloads.
        let selected =
            (workload.namespace != root)
                .then(|| {
                    oldest(in_namespace(workload.namespace.clone()).filter(|p| {
                        p.has_selector() && p.selector.as_ref().is_some_and(|s| s.matches(&workload.labels))
                    }))
                })
                .flatten();
        let mut decision = MtlsDecision { mode: MtlsMode::Permissive, policy: None, port_level: false };
        let mut by_dry_run = false;
        for level in [mesh, namespace, selected].into_iter().flatten() {
            if level.mode != MtlsMode::Unset {
                decision = MtlsDecision { mode: level.mode, policy: Some(level.meta.key().into()), port_level: false };
                by_dry_run = level.dry_run;
            }
        }
        if let Some(workload_policy) = selected
            && let Some(&mode) = workload_policy.port_level_mtls.get(&port)
            && mode != MtlsMode::Unset
        {
            decision = MtlsDecision { mode, policy: Some(workload_policy.meta.key().into()), port_level: true };
            by_dry_run = workload_policy.dry_run;
        }
        (decision, by_dry_run)
    }
}
