//! Object metadata and the selection fields shared by Istio's security and telemetry kinds.

use std::collections::BTreeMap;

use crate::decode::{Ctx, Fields, Spanned};
use crate::diag::Origin;
use crate::yaml::Pos;

/// Annotation that turns an AuthorizationPolicy into a shadow policy (evaluated, logged, never
/// enforced), as in Istio. zmesh also reads it on PeerAuthentication (an extension: Istio
/// enforces such a policy): the mode is computed and the plaintext it would refuse is counted,
/// never refused.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Kubernetes object metadata, as far as zmesh uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    /// `default` when the document does not say, as `kubectl apply` would do.
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339 creation time when the document carries one (objects read back from a cluster).
    pub creation_timestamp: Option<String>,
    /// Where the document starts.
    pub origin: Origin,
    /// Position in the load order (files sorted by path, documents in file order). Stands in for
    /// the creation time when none is given: the first document is the oldest.
    pub order: usize,
}

impl Meta {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Istio's "oldest wins" order: creation time when both have one, else load order.
    pub fn age_key(&self) -> (Option<&str>, usize) {
        (self.creation_timestamp.as_deref(), self.order)
    }
}

pub(crate) fn read_meta(
    ctx: &mut Ctx<'_>,
    mut fields: Fields<'_>,
    origin: Origin,
    order: usize,
    namespaced: bool,
) -> Option<Meta> {
    let name = fields.string(ctx, "name");
    let namespace = fields.string(ctx, "namespace");
    let labels = fields.string_map(ctx, "labels");
    let annotations = fields.string_map(ctx, "annotations");
    let creation_timestamp = fields.string(ctx, "creationTimestamp").map(|s| s.value);
    fields.ignore(&[
        "uid",
        "resourceVersion",
        "generation",
        "generateName",
        "managedFields",
        "ownerReferences",
        "finalizers",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ]);
    let pos = fields.pos;
    let field = fields.path("name");
    fields.finish(ctx);
    let Some(name) = name else {
        ctx.error(pos, &field, "metadata.name is required", "give the object a name");
        return None;
    };
    check_dns_name(ctx, &name, &field, 253);
    let namespace = match namespace {
        Some(ns) if namespaced => {
            if let Err(error) = ns.value.parse::<zmesh_id::Namespace>() {
                ctx.error(ns.pos, "metadata.namespace", error.to_string(), "");
            }
            ns.value
        }
        _ => "default".to_owned(),
    };
    Some(Meta { name: name.value, namespace, labels, annotations, creation_timestamp, origin, order })
}

fn check_dns_name(ctx: &mut Ctx<'_>, name: &Spanned<String>, field: &str, max: usize) {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let edges_ok =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > max || !name.chars().all(ok_char) || !edges_ok {
        ctx.error(
            name.pos,
            field,
            format!("`{}` is not a valid object name", name.value),
            "use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (RFC 1123)",
        );
    }
}

/// `selector.matchLabels`: selects workloads whose labels include all of these.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub pos: Pos,
}

impl Selector {
    /// Subset match, as Istio does it: every selector label is on the workload with that value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A `selector` of the security and telemetry kinds (`istio.type.v1beta1.WorkloadSelector`,
/// labels under `matchLabels`); reports label keys or values Istio refuses.
pub(crate) fn read_selector(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &'static str) -> Option<Selector> {
    read_labels_selector(ctx, fields, key, "matchLabels")
}

/// A `workloadSelector` of the networking kinds (ServiceEntry, EnvoyFilter:
/// `istio.networking.v1.WorkloadSelector`), whose labels sit under `labels`.
pub(crate) fn read_workload_selector(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>) -> Option<Selector> {
    read_labels_selector(ctx, fields, "workloadSelector", "labels")
}

fn read_labels_selector(
    ctx: &mut Ctx<'_>,
    fields: &mut Fields<'_>,
    key: &'static str,
    labels_key: &'static str,
) -> Option<Selector> {
    let mut selector = fields.map(ctx, key)?;
    let pos = selector.pos;
    let labels_path = selector.path(labels_key);
    let match_labels = selector.string_map(ctx, labels_key);
    selector.finish(ctx);
    for (k, v) in &match_labels {
        if k.is_empty() {
            ctx.error(pos, &labels_path, "a label key is empty", "remove the empty key");
        }
        if k.contains('*') || v.contains('*') {
            ctx.error(
                pos,
                &format!("{labels_path}.{k}"),
                "wildcards are not allowed in selector labels",
                "labels are matched exactly; remove the `*`",
            );
        }
    }
    Some(Selector { match_labels, pos })
}

/// A policy attachment to a Gateway, GatewayClass, Service or ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub pos: Pos,
}

/// `targetRef` and `targetRefs`, validated as Istio does. Returns every reference given.
pub(crate) fn read_target_refs(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>) -> Vec<TargetRef> {
    let mut refs = Vec::new();
    let mut nodes = Vec::new();
    if let Some((node, path)) = fields.get("targetRef") {
        nodes.push((node, path));
    }
    if let Some(items) = fields.items(ctx, "targetRefs") {
        if items.len() > 16 {
            ctx.error(
                fields.pos,
                &fields.path("targetRefs"),
                format!("{} targetRefs given; at most 16 are allowed", items.len()),
                "split the policy",
            );
        }
        nodes.extend(items);
    }
    for (node, path) in nodes {
        let Some(mut reference) = ctx.map(node, &path) else {
            continue;
        };
        let group = reference.string(ctx, "group").map(|g| g.value).unwrap_or_default();
        let kind = reference.string(ctx, "kind");
        let name = reference.string(ctx, "name");
        if let Some(namespace) = reference.string(ctx, "namespace") {
            ctx.error(
                namespace.pos,
                &format!("{path}.namespace"),
                "cross-namespace policy references are not allowed",
                "remove `namespace`; a policy can only target objects in its own namespace",
            );
        }
        reference.finish(ctx);
        let Some(kind) = kind else {
            ctx.error(
                node.pos,
                &format!("{path}.kind"),
                "targetRef.kind is required",
                "set kind to Gateway, GatewayClass, Service or ServiceEntry",
            );
            continue;
        };
        let Some(name) = name else {
            ctx.error(
                node.pos,
                &format!("{path}.name"),
                "targetRef.name is required",
                "name the object the policy attaches to",
            );
            continue;
        };
        let allowed = matches!(
            (group.as_str(), kind.as_str()),
            ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
                | ("" | "core", "Service")
                | ("networking.istio.io", "ServiceEntry")
        );
        if !allowed {
            ctx.error(
                kind.pos,
                &format!("{path}.kind"),
                format!("targetRef to {group}/{} is not supported", kind.value),
                "target a Gateway or GatewayClass (gateway.networking.k8s.io), a Service (group \"\") or a ServiceEntry (networking.istio.io)",
            );
        }
        refs.push(TargetRef { group, kind: kind.value, name: name.value, pos: node.pos });
    }
    refs
}

/// How a policy attaches: `selector` for sidecars, or `targetRef(s)` for gateways and waypoints.
/// Istio allows only one of the three fields.
pub(crate) fn read_attachment(ctx: &mut Ctx<'_>, spec: &mut Fields<'_>) -> (Option<Selector>, Vec<TargetRef>) {
    let selector = read_selector(ctx, spec, "selector");
    let target_refs = read_target_refs(ctx, spec);
    let given = usize::from(selector.is_some())
        + usize::from(spec.get("targetRef").is_some())
        + usize::from(spec.get("targetRefs").is_some());
    if given > 1 {
        ctx.error(
            spec.pos,
            &spec.path("selector"),
            "only one of selector, targetRef and targetRefs may be set",
            "keep selector for sidecars, or targetRefs for gateways and waypoints",
        );
    }
    (selector, target_refs)
}
