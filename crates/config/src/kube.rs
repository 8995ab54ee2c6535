//! Kubernetes objects that define workloads and services (Namespace, Pod, Deployment and the
//! other pod controllers, Service, ServiceAccount) and NetworkPolicy.
//!
//! Only the fields zmesh uses are read from pod templates; the API server validates the rest of
//! a pod spec, so unknown fields inside it are not reported here.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::decode::{Ctx, Spanned};
use crate::meta::{Meta, Selector};
use crate::networking::{ServicePort, read_ports_list};
use crate::yaml::{Node, Pos};

/// Pod annotation/label that opts a pod in or out of sidecar injection.
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
/// Namespace/pod label that puts workloads in ambient (node proxy) mode.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub meta: Meta,
}

impl Namespace {
    pub fn is_ambient(&self) -> bool {
        self.meta.labels.get(DATAPLANE_MODE_LABEL).is_some_and(|m| m == "ambient")
    }

    /// `istio-injection: enabled` or a revision label turns injection on for the namespace.
    pub fn injection_enabled(&self) -> bool {
        self.meta.labels.get("istio-injection").is_some_and(|v| v == "enabled")
            || self.meta.labels.contains_key("istio.io/rev")
    }
}

/// A pod, or the pod template of a controller (Deployment, StatefulSet, DaemonSet, ReplicaSet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeWorkload {
    pub meta: Meta,
    pub kind: String,
    /// Labels and annotations of the pods (the template's for controllers).
    pub pod_labels: BTreeMap<String, String>,
    pub pod_annotations: BTreeMap<String, String>,
    /// `default` when not set, as in Kubernetes.
    pub service_account: String,
    pub replicas: u32,
    pub container_ports: Vec<ServicePort>,
    /// A Pod's `status.podIP`, present when the document was read back from a cluster
    /// (`kubectl get pod -o yaml`); it makes the pod an addressable mesh workload.
    pub pod_ip: Option<std::net::IpAddr>,
}

impl KubeWorkload {
    /// The explicit injection choice, if the pod makes one.
    pub fn injection(&self) -> Option<bool> {
        self.pod_labels
            .get(INJECT_ANNOTATION)
            .or_else(|| self.pod_annotations.get(INJECT_ANNOTATION))
            .map(|v| v == "true")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeService {
    pub meta: Meta,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountObject {
    pub meta: Meta,
}

fn string_map_loose(node: Option<&Node>) -> BTreeMap<String, String> {
    let Some(crate::yaml::Value::Map(entries)) = node.map(|n| &n.value) else {
        return BTreeMap::new();
    };
    entries.iter().filter_map(|(k, v)| Some((k.scalar_text()?.to_owned(), v.scalar_text()?.to_owned()))).collect()
}

pub(crate) fn read_workload(
    ctx: &mut Ctx<'_>,
    meta: Meta,
    kind: &str,
    spec: Option<(&Node, String)>,
    status: Option<&Node>,
) -> Option<KubeWorkload> {
    let pod_ip = status.filter(|_| kind == "Pod").and_then(|s| s.get("podIP")).and_then(|ip| {
        let text = ip.scalar_text()?;
        let parsed = text.parse().ok();
        if parsed.is_none() {
            ctx.error(ip.pos, "status.podIP", format!("`{text}` is not an IP address"), "give the pod's IP address");
        }
        parsed
    });
    let (pod_meta, pod_spec, replicas) = match (kind, spec) {
        ("Pod", Some((spec, _))) => (None, Some(spec), 1),
        (_, Some((spec, path))) => {
            let template = spec.get("template");
            if template.is_none() {
                ctx.error(
                    spec.pos,
                    &format!("{path}.template"),
                    format!("a {kind} needs spec.template"),
                    "give the pod template",
                );
                return None;
            }
            let replicas = spec.get("replicas").and_then(|r| r.scalar_text()).and_then(|r| r.parse().ok()).unwrap_or(1);
            (template.and_then(|t| t.get("metadata")), template.and_then(|t| t.get("spec")), replicas)
        }
        (_, None) => (None, None, 1),
    };
    let (pod_labels, pod_annotations) = match pod_meta {
        Some(pod_meta) => (string_map_loose(pod_meta.get("labels")), string_map_loose(pod_meta.get("annotations"))),
        None => (meta.labels.clone(), meta.annotations.clone()),
    };
    let service_account = pod_spec
        .and_then(|s| s.get("serviceAccountName").or_else(|| s.get("serviceAccount")))
        .and_then(Node::scalar_text)
        .unwrap_or("default")
        .to_owned();
    let mut container_ports = Vec::new();
    if let Some(crate::yaml::Value::Seq(containers)) = pod_spec.and_then(|s| s.get("containers")).map(|c| &c.value) {
        for (i, container) in containers.iter().enumerate() {
            if let Some(mut fields) = ctx.map(container, &format!("spec.containers[{i}]")) {
                container_ports.extend(read_ports_list(ctx, &mut fields));
            }
        }
    }
    Some(KubeWorkload {
        meta,
        kind: kind.to_owned(),
        pod_labels,
        pod_annotations,
        service_account,
        replicas,
        container_ports,
        pod_ip,
    })
}

pub(crate) fn read_service(ctx: &mut Ctx<'_>, meta: Meta, spec: Option<(&Node, String)>) -> Option<KubeService> {
    let Some((spec, path)) = spec else {
        return Some(KubeService { meta, selector: BTreeMap::new(), ports: Vec::new() });
    };
    let selector = string_map_loose(spec.get("selector"));
    let mut fields = ctx.map(spec, &path)?;
    let ports = read_ports_list(ctx, &mut fields);
    Some(KubeService { meta, selector, ports })
}

/// A NetworkPolicy peer: pods (by labels, in namespaces by labels) or an IP block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkPeer {
    Pods { pod_selector: Option<LabelSelector>, namespace_selector: Option<LabelSelector> },
    IpBlock { cidr: IpNet, except: Vec<IpNet> },
}

/// A Kubernetes label selector (matchLabels and matchExpressions).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelExpression {
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        Selector { match_labels: self.match_labels.clone(), pos: Pos::default() }.matches(labels)
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => value.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => value.is_some(),
                    _ => value.is_none(),
                }
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicyPort {
    pub protocol: String,
    /// A number, or a named container port.
    pub port: Option<Spanned<String>>,
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicyRule {
    /// Empty: every peer.
    pub peers: Vec<NetworkPeer>,
    /// Empty: every port.
    pub ports: Vec<NetworkPolicyPort>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub meta: Meta,
    pub pod_selector: LabelSelector,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub ingress: Vec<NetworkPolicyRule>,
    pub egress: Vec<NetworkPolicyRule>,
}

fn read_label_selector(ctx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<LabelSelector> {
    let mut fields = ctx.map(node, path)?;
    let match_labels = fields.string_map(ctx, "matchLabels");
    let mut match_expressions = Vec::new();
    for (item, item_path) in fields.items(ctx, "matchExpressions").unwrap_or_default() {
        let Some(mut expression) = ctx.map(item, &item_path) else {
            continue;
        };
        let key = expression.string(ctx, "key");
        let operator = expression.string(ctx, "operator");
        let values = expression.strings(ctx, "values").unwrap_or_default();
        expression.finish(ctx);
        match (key, operator) {
            (Some(key), Some(op)) if ["In", "NotIn", "Exists", "DoesNotExist"].contains(&op.as_str()) => {
                let needs_values = matches!(op.as_str(), "In" | "NotIn");
                if needs_values == values.is_empty() {
                    ctx.error(
                        item.pos,
                        &format!("{item_path}.values"),
                        format!("operator {} {} values", op.value, if needs_values { "needs" } else { "takes no" }),
                        "",
                    );
                }
                match_expressions.push(LabelExpression {
                    key: key.value,
                    operator: op.value,
                    values: values.into_iter().map(|v| v.value).collect(),
                });
            }
            (_, op) => ctx.error(
                item.pos,
                &format!("{item_path}.operator"),
                format!("invalid expression operator {:?}", op.map(|o| o.value)),
                "use In, NotIn, Exists or DoesNotExist with a key",
            ),
        }
    }
    fields.finish(ctx);
    Some(LabelSelector { match_labels, match_expressions })
}

fn read_network_rules(
    ctx: &mut Ctx<'_>,
    fields: &mut crate::decode::Fields<'_>,
    key: &'static str,
    peers_key: &'static str,
) -> Vec<NetworkPolicyRule> {
    let mut rules = Vec::new();
    for (item, item_path) in fields.items(ctx, key).unwrap_or_default() {
        let Some(mut rule) = ctx.map(item, &item_path) else {
            continue;
        };
        let mut peers = Vec::new();
        for (peer_node, peer_path) in rule.items(ctx, peers_key).unwrap_or_default() {
            let Some(mut peer) = ctx.map(peer_node, &peer_path) else {
                continue;
            };
            let pod_selector = peer.get("podSelector").and_then(|(n, p)| read_label_selector(ctx, n, &p));
            let namespace_selector = peer.get("namespaceSelector").and_then(|(n, p)| read_label_selector(ctx, n, &p));
            let ip_block = peer.map(ctx, "ipBlock");
            peer.finish(ctx);
            if let Some(mut block) = ip_block {
                let cidr_path = block.path("cidr");
                let cidr = block.string(ctx, "cidr");
                let except = block.strings(ctx, "except").unwrap_or_default();
                block.finish(ctx);
                if pod_selector.is_some() || namespace_selector.is_some() {
                    ctx.error(
                        peer_node.pos,
                        &peer_path,
                        "ipBlock cannot be combined with podSelector or namespaceSelector",
                        "use separate peers",
                    );
                }
                let parse =
                    |v: &Spanned<String>| v.parse::<IpNet>().map_err(|_| format!("`{}` is not a CIDR block", v.value));
                match cidr.as_ref().map(parse) {
                    Some(Ok(cidr)) => {
                        let except: Vec<IpNet> = except
                            .iter()
                            .filter_map(|e| {
                                parse(e)
                                    .map_err(|m| {
                                        ctx.error(
                                            e.pos,
                                            &format!("{peer_path}.ipBlock.except"),
                                            m,
                                            "write a CIDR such as 10.0.0.0/24",
                                        )
                                    })
                                    .ok()
                            })
                            .collect();
                        peers.push(NetworkPeer::IpBlock { cidr, except });
                    }
                    Some(Err(message)) => {
                        ctx.error(peer_node.pos, &cidr_path, message, "write a CIDR such as 10.0.0.0/16")
                    }
                    None => ctx.error(
                        peer_node.pos,
                        &cidr_path,
                        "ipBlock.cidr is required",
                        "write a CIDR such as 10.0.0.0/16",
                    ),
                }
            } else if pod_selector.is_some() || namespace_selector.is_some() {
                peers.push(NetworkPeer::Pods { pod_selector, namespace_selector });
            } else {
                ctx.error(peer_node.pos, &peer_path, "a peer needs podSelector, namespaceSelector or ipBlock", "");
            }
        }
        let mut ports = Vec::new();
        for (port_node, port_path) in rule.items(ctx, "ports").unwrap_or_default() {
            let Some(mut port) = ctx.map(port_node, &port_path) else {
                continue;
            };
            let protocol = port.string(ctx, "protocol").map(|p| p.value).unwrap_or_else(|| "TCP".to_owned());
            let number = port.get("port").and_then(|(n, p)| ctx.text(n, &p));
            let end_port = port.get("endPort").and_then(|(n, p)| ctx.port(n, &p));
            port.finish(ctx);
            if !["TCP", "UDP", "SCTP"].contains(&protocol.as_str()) {
                ctx.error(
                    port_node.pos,
                    &format!("{port_path}.protocol"),
                    format!("unknown protocol `{protocol}`"),
                    "use TCP, UDP or SCTP",
                );
            }
            ports.push(NetworkPolicyPort { protocol, port: number, end_port });
        }
        rule.finish(ctx);
        rules.push(NetworkPolicyRule { peers, ports });
    }
    rules
}

pub(crate) fn read_network_policy(
    ctx: &mut Ctx<'_>,
    meta: Meta,
    spec: Option<(&Node, String)>,
) -> Option<NetworkPolicy> {
    let mark = ctx.diagnostics.len();
    let (node, path) = spec?;
    let mut fields = ctx.map(node, &path)?;
    let pod_selector = match fields.get("podSelector") {
        Some((n, p)) => read_label_selector(ctx, n, &p).unwrap_or_default(),
        None => LabelSelector::default(),
    };
    let types_path = fields.path("policyTypes");
    let types = fields.strings(ctx, "policyTypes");
    let ingress = read_network_rules(ctx, &mut fields, "ingress", "from");
    let egress = read_network_rules(ctx, &mut fields, "egress", "to");
    let has_egress_field = fields.get("egress").is_some();
    fields.finish(ctx);
    // Kubernetes defaults: Ingress always; Egress when egress rules are given.
    let (mut ingress_isolated, mut egress_isolated) = (true, has_egress_field);
    if let Some(types) = types {
        ingress_isolated = false;
        egress_isolated = false;
        for t in types {
            match t.as_str() {
                "Ingress" => ingress_isolated = true,
                "Egress" => egress_isolated = true,
                other => {
                    ctx.error(t.pos, &types_path, format!("unknown policy type `{other}`"), "use Ingress or Egress")
                }
            }
        }
    }
    (!ctx.has_errors_since(mark)).then_some(NetworkPolicy {
        meta,
        pod_selector,
        ingress_isolated,
        egress_isolated,
        ingress,
        egress,
    })
}

/// zmesh validates NetworkPolicy but its proxies do not enforce it; in a cluster the CNI plugin
/// does (or does not), exactly as without zmesh.
pub(crate) fn warn_not_enforced(ctx: &mut Ctx<'_>, policy: &NetworkPolicy) {
    ctx.warn(
        crate::load::codes::NETWORK_POLICY_NOT_ENFORCED,
        policy.meta.origin.pos,
        "spec",
        "NetworkPolicy is validated but not enforced by zmesh: only the cluster's CNI plugin enforces it, if it supports NetworkPolicy",
        "to have zmesh's proxies enforce the same rule, write an AuthorizationPolicy (source namespaces or principals, and ports)",
    );
}
