//! Loading files and directories of YAML into one [`Config`].
//!
//! Every document is read on its own: a bad document is reported and left out, and the caller
//! decides whether a load with errors may be used (the CLI refuses it; the control plane keeps
//! its last good configuration).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::authn::{PeerAuthentication, RequestAuthentication};
use crate::authz::AuthorizationPolicy;
use crate::decode::Ctx;
use crate::diag::{Diagnostic, ObjectRef, Origin, Severity};
use crate::kube::{KubeService, KubeWorkload, Namespace, NetworkPolicy, ServiceAccountObject};
use crate::mesh::MeshConfig;
use crate::networking::{LocalRateLimit, ServiceEntry, WorkloadEntry};
use crate::telemetry::Telemetry;
use crate::yaml::{self, Node, Pos};

/// Stable codes of configuration zmesh reads but does not apply (docs/diagnostic-codes.md).
/// Each is a warning: the document loads, and the message says what zmesh does instead.
pub(crate) mod codes {
    /// An EnvoyFilter patch that is not a local rate limit on sidecar inbound HTTP.
    pub const ENVOY_FILTER_NOT_SUPPORTED: &str = "ZM2001";
    /// A local rate limit filter with no token bucket: it limits nothing.
    pub const RATE_LIMIT_NO_TOKEN_BUCKET: &str = "ZM2002";
    /// A local rate limit for outbound or gateway traffic (or ANY: only inbound is enforced).
    pub const RATE_LIMIT_CONTEXT_NOT_ENFORCED: &str = "ZM2003";
    /// A local rate limit setting or match field zmesh does not implement.
    pub const RATE_LIMIT_FIELD_NOT_SUPPORTED: &str = "ZM2004";
    /// A local rate limit that Envoy's own defaults leave disabled or unenforced.
    pub const RATE_LIMIT_DISABLED: &str = "ZM2005";
    /// targetRef/targetRefs: the policy is for gateways and waypoints; sidecars ignore it.
    pub const TARGET_REFS_NOT_FOR_SIDECARS: &str = "ZM2010";
    /// A NetworkPolicy: validated, not enforced by zmesh.
    pub const NETWORK_POLICY_NOT_ENFORCED: &str = "ZM2011";
    /// A Telemetry resource: validated, not applied by zmesh's proxies.
    pub const TELEMETRY_NOT_APPLIED: &str = "ZM2012";
    /// An Istio or Gateway API kind that changes traffic in Istio and that zmesh skips.
    pub const KIND_NOT_SUPPORTED: &str = "ZM2013";
    /// A MeshConfig field that is accepted and ignored.
    pub const MESH_CONFIG_FIELD_IGNORED: &str = "ZM2014";
    /// A PeerAuthentication annotated `istio.io/dry-run: "true"`: observed, not enforced.
    pub const PEER_AUTHENTICATION_DRY_RUN: &str = "ZM2015";
}

/// Applies the macro `$apply` to the names of every resource list of [`Config`].
macro_rules! resource_lists {
    ($apply:ident) => {
        $apply!(
            authorization_policies,
            peer_authentications,
            request_authentications,
            telemetries,
            workload_entries,
            service_entries,
            rate_limits,
            network_policies,
            namespaces,
            workloads,
            services,
            service_accounts
        )
    };
}

/// Every resource zmesh read, in load order.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub request_authentications: Vec<RequestAuthentication>,
    pub telemetries: Vec<Telemetry>,
    pub workload_entries: Vec<WorkloadEntry>,
    pub service_entries: Vec<ServiceEntry>,
    pub rate_limits: Vec<LocalRateLimit>,
    pub network_policies: Vec<NetworkPolicy>,
    pub namespaces: Vec<Namespace>,
    pub workloads: Vec<KubeWorkload>,
    pub services: Vec<KubeService>,
    pub service_accounts: Vec<ServiceAccountObject>,
    /// The mesh configuration, defaults unless a source set it.
    pub mesh: MeshConfig,
}

impl Config {
    /// How many resources were read (MeshConfig not counted).
    pub fn resource_count(&self) -> usize {
        macro_rules! count {
            ($($list:ident),*) => { 0 $(+ self.$list.len())* };
        }
        resource_lists!(count)
    }

    /// The labels a workload must carry for the policy of `kind` read last to apply to it;
    /// `None` when it has no selector (or its kind has none: NetworkPolicy's own selector is
    /// a full label selector, and other kinds are not policies).
    fn last_selector(&self, kind: &str) -> Option<BTreeMap<String, String>> {
        let selector = match kind {
            "AuthorizationPolicy" => self.authorization_policies.last().and_then(|r| r.selector.as_ref()),
            "PeerAuthentication" => self.peer_authentications.last().and_then(|r| r.selector.as_ref()),
            "RequestAuthentication" => self.request_authentications.last().and_then(|r| r.selector.as_ref()),
            "Telemetry" => self.telemetries.last().and_then(|r| r.selector.as_ref()),
            "EnvoyFilter" => self.rate_limits.last().and_then(|r| r.selector.as_ref()),
            _ => None,
        };
        selector.map(|s| s.match_labels.clone())
    }

    /// The metadata of the resource of `kind` read last.
    fn last_of_kind(&self, kind: &str) -> Option<&crate::meta::Meta> {
        match kind {
            "AuthorizationPolicy" => self.authorization_policies.last().map(|r| &r.meta),
            "PeerAuthentication" => self.peer_authentications.last().map(|r| &r.meta),
            "RequestAuthentication" => self.request_authentications.last().map(|r| &r.meta),
            "Telemetry" => self.telemetries.last().map(|r| &r.meta),
            "WorkloadEntry" => self.workload_entries.last().map(|r| &r.meta),
            "ServiceEntry" => self.service_entries.last().map(|r| &r.meta),
            "EnvoyFilter" => self.rate_limits.last().map(|r| &r.meta),
            "NetworkPolicy" => self.network_policies.last().map(|r| &r.meta),
            "Namespace" => self.namespaces.last().map(|r| &r.meta),
            "Service" => self.services.last().map(|r| &r.meta),
            "ServiceAccount" => self.service_accounts.last().map(|r| &r.meta),
            _ => self.workloads.last().map(|r| &r.meta),
        }
    }
}

/// The outcome of a load: what was read, and everything worth telling about it.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub config: Config,
    pub diagnostics: Vec<Diagnostic>,
    pub files: usize,
    pub documents: usize,
    /// Every accepted resource as the document it came from, in load order: what the control
    /// plane pushes to proxies, which read it back with this same loader.
    pub sources: Vec<SourceDocument>,
}

/// One accepted document, kept as JSON (a YAML subset, so [`Loader::add_str`] reads it back with
/// the same validation). MeshConfig is kept with kind `MeshConfig` and its fields at the top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDocument {
    pub kind: String,
    /// Empty for MeshConfig and cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
    /// Position in the load order; a reader loading sources in this order gets the same
    /// PeerAuthentication ages.
    pub order: usize,
    pub origin: Origin,
    /// Shared, so that a snapshot of the configuration holds no second copy.
    pub json: Arc<str>,
    /// For the policy kinds with a workload selector (AuthorizationPolicy, PeerAuthentication,
    /// RequestAuthentication, Telemetry, EnvoyFilter): the labels a workload must carry for the
    /// document to apply to it. `None` selects every workload in its scope.
    pub selector: Option<BTreeMap<String, String>>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    /// Append what another loader read from the files that come after this load's, with the
    /// result one loader reading all of them in that order would give: load order continues
    /// (so PeerAuthentication ages agree), and a MeshConfig given again is an error. Lets a
    /// caller keep each file's load and read again only the files that changed.
    pub fn append(&mut self, part: &Loaded) {
        let offset = self.documents;
        macro_rules! append_lists {
            ($($list:ident),*) => {$(
                self.config.$list.extend(part.config.$list.iter().map(|resource| {
                    let mut resource = resource.clone();
                    resource.meta.order += offset;
                    resource
                }));
            )*};
        }
        resource_lists!(append_lists);
        self.diagnostics.extend(part.diagnostics.iter().cloned());
        self.files += part.files;
        self.documents += part.documents;
        // Looked up only for a part that has a MeshConfig (rare), so appending many parts stays
        // linear.
        let part_has_mesh = part.sources.iter().any(|s| s.kind == "MeshConfig");
        let first_mesh = part_has_mesh
            .then(|| self.sources.iter().find(|s| s.kind == "MeshConfig").map(|s| s.origin.to_string()))
            .flatten();
        for source in &part.sources {
            if source.kind == "MeshConfig" {
                if let Some(first) = &first_mesh {
                    self.diagnostics.push(Diagnostic {
                        severity: Severity::Error,
                        code: Some(crate::diag::codes::SCHEMA),
                        origin: source.origin.clone(),
                        object: None,
                        field: String::new(),
                        message: format!("MeshConfig is given a second time (first at {first})"),
                        hint: Some("keep one MeshConfig source".to_owned()),
                    });
                    continue;
                }
                self.config.mesh = part.config.mesh.clone();
            }
            self.sources.push(SourceDocument { order: source.order + offset, ..source.clone() });
        }
    }
}

/// How a file is read: as Kubernetes-style documents, or as a bare MeshConfig (the `mesh` key
/// of Istio's ConfigMap, fields at the top level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Resources,
    MeshConfig,
}

/// A file's YAML, parsed and not yet read (see [`Loader::parse`]).
#[derive(Debug)]
pub struct ParsedFile {
    file: Option<Arc<str>>,
    kind: FileKind,
    documents: Result<Vec<yaml::Document>, yaml::YamlError>,
}

/// Accumulates sources, then produces one [`Loaded`].
#[derive(Debug, Default)]
pub struct Loader {
    loaded: Loaded,
    limits: yaml::Limits,
    mesh_origin: Option<Origin>,
}

/// Istio's groups and the versions zmesh reads of each.
const VERSIONS: &[(&str, &[&str])] = &[
    ("security.istio.io", &["v1", "v1beta1"]),
    ("telemetry.istio.io", &["v1", "v1alpha1"]),
    ("networking.istio.io", &["v1", "v1beta1", "v1alpha3"]),
    ("networking.k8s.io", &["v1"]),
    ("install.istio.io", &["v1alpha1"]),
    ("apps", &["v1"]),
    ("", &["v1"]),
];

/// Files below a directory that are read: `*.yaml` and `*.yml`, sorted so the order (which
/// decides PeerAuthentication age when no creation time is given) is stable.
pub fn yaml_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt as _;
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let root = std::fs::metadata(path)?;
    // Directories already listed, so a symlink to a parent cannot loop forever.
    let mut seen = std::collections::HashSet::from([(root.dev(), root.ino())]);
    let mut pending = vec![path.to_path_buf()];
    // Symlinked directories are followed after every real one, so a directory reachable both
    // ways is listed under its real path.
    let mut linked = Vec::new();
    let next_linked = |seen: &mut std::collections::HashSet<(u64, u64)>, linked: &mut Vec<PathBuf>| {
        linked.sort();
        linked.retain(|link| std::fs::metadata(link).is_ok_and(|m| m.is_dir() && !seen.contains(&(m.dev(), m.ino()))));
        let next = linked.pop();
        if let Some(m) = next.as_ref().and_then(|link| std::fs::metadata(link).ok()) {
            seen.insert((m.dev(), m.ino()));
        }
        next
    };
    while let Some(dir) = pending.pop().or_else(|| next_linked(&mut seen, &mut linked)) {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            // Kubernetes ConfigMap mounts keep data in hidden `..data` directories.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // The entry's own type costs no system call; only a symlink needs its target's.
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                if entry.metadata().is_ok_and(|m| seen.insert((m.dev(), m.ino()))) {
                    pending.push(path);
                }
            } else if file_type.is_symlink() && path.is_dir() {
                linked.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

impl Loader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: yaml::Limits) -> Self {
        Loader { limits, ..Self::default() }
    }

    fn push(&mut self, file: Option<&Arc<str>>, pos: Pos, message: String, hint: &str, severity: Severity) {
        self.loaded.diagnostics.push(Diagnostic {
            severity,
            code: (severity == Severity::Error).then_some(crate::diag::codes::SCHEMA),
            origin: Origin { file: file.cloned(), pos },
            object: None,
            field: String::new(),
            message,
            hint: (!hint.is_empty()).then(|| hint.to_owned()),
        });
    }

    /// Add a file or every YAML file below a directory. A file named `mesh.yaml`/`mesh.yml`
    /// whose documents have no `kind` is read as a MeshConfig.
    pub fn add_path(&mut self, path: &Path) {
        let files = match yaml_files(path) {
            Ok(files) => files,
            Err(error) => {
                let name: Arc<str> = path.display().to_string().into();
                self.push(
                    Some(&name),
                    Pos::default(),
                    format!("cannot read: {error}"),
                    "check that the path exists and is readable",
                    Severity::Error,
                );
                return;
            }
        };
        for file in files {
            self.add_file(&file, FileKind::Resources);
        }
    }

    pub fn add_file(&mut self, path: &Path, kind: FileKind) {
        let name: Arc<str> = path.display().to_string().into();
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => self.add_str(Some(name), &text, kind),
                Err(_) => self.push(
                    Some(&name),
                    Pos::default(),
                    "the file is not UTF-8 text".into(),
                    "save it as UTF-8",
                    Severity::Error,
                ),
            },
            Err(error) => self.push(
                Some(&name),
                Pos::default(),
                format!("cannot read: {error}"),
                "check that the file exists and is readable",
                Severity::Error,
            ),
        }
    }

    /// Add YAML text; `file` names it in diagnostics.
    pub fn add_str(&mut self, file: Option<Arc<str>>, text: &str, kind: FileKind) {
        let parsed = self.parse(file, text, kind);
        self.add_parsed(parsed);
    }

    /// The first half of [`add_str`](Self::add_str): parse a file's YAML. It needs nothing from
    /// the files before it, so a caller may parse the next file on another thread while this
    /// loader reads the documents of the current one.
    pub fn parse(&self, file: Option<Arc<str>>, text: &str, kind: FileKind) -> ParsedFile {
        ParsedFile { documents: yaml::parse_stream(text, &self.limits), file, kind }
    }

    /// The second half of [`add_str`](Self::add_str): read a parsed file's documents, in order.
    pub fn add_parsed(&mut self, parsed: ParsedFile) {
        let ParsedFile { file, kind, documents } = parsed;
        self.loaded.files += 1;
        let documents = match documents {
            Ok(documents) => documents,
            Err(error) => {
                let pos = error.pos().unwrap_or_default();
                let message = match &error {
                    yaml::YamlError::Syntax { message, .. } => {
                        format!("YAML syntax error: {message}")
                    }
                    other => {
                        other.to_string().split_once(": ").map_or_else(|| other.to_string(), |(_, m)| m.to_owned())
                    }
                };
                self.push(file.as_ref(), pos, message, "nothing from this file was loaded", Severity::Error);
                return;
            }
        };
        let is_mesh_file =
            file.as_deref().and_then(|f| Path::new(f).file_name()).is_some_and(|n| n == "mesh.yaml" || n == "mesh.yml");
        for document in documents {
            let Some(root) = document.root else { continue };
            self.loaded.documents += 1;
            let as_mesh = kind == FileKind::MeshConfig || (is_mesh_file && root.get("kind").is_none());
            if as_mesh {
                self.add_mesh(file.clone(), &root, "");
            } else {
                self.add_document(file.clone(), &root);
            }
        }
    }

    fn add_mesh(&mut self, file: Option<Arc<str>>, node: &Node, path: &str) {
        let origin = Origin { file: file.clone(), pos: node.pos };
        if let Some(first) = &self.mesh_origin {
            let first = first.to_string();
            self.push(
                file.as_ref(),
                node.pos,
                format!("MeshConfig is given a second time (first at {first})"),
                "keep one MeshConfig source",
                Severity::Error,
            );
            return;
        }
        let mut ctx = Ctx {
            file,
            object: Some(ObjectRef { kind: "MeshConfig".into(), namespace: None, name: None }),
            diagnostics: &mut self.loaded.diagnostics,
        };
        let mesh = crate::mesh::read_mesh_config(&mut ctx, node, path, origin.clone());
        if mesh.is_some() {
            warn_ignored_mesh_fields(&mut ctx, node, path);
        }
        if let Some(mesh) = mesh {
            self.loaded.config.mesh = mesh;
            self.loaded.sources.push(SourceDocument {
                kind: "MeshConfig".into(),
                namespace: String::new(),
                name: String::new(),
                order: self.loaded.documents,
                origin: origin.clone(),
                json: node.to_json().to_string().into(),
                selector: None,
            });
            self.mesh_origin = Some(origin);
        }
    }

    fn add_document(&mut self, file: Option<Arc<str>>, root: &Node) {
        let before = self.loaded.config.resource_count();
        let origin = Origin { file: file.clone(), pos: root.pos };
        self.read_document(file, root);
        let kind = root.get("kind").and_then(Node::scalar_text).unwrap_or_default().to_owned();
        // A List records each of its items itself.
        if kind != "List" && self.loaded.config.resource_count() == before + 1 {
            let meta = self.loaded.config.last_of_kind(&kind);
            let (namespace, name) = meta.map(|m| (m.namespace.clone(), m.name.clone())).unwrap_or_default();
            let namespace = if kind == "Namespace" { String::new() } else { namespace };
            let selector = self.loaded.config.last_selector(&kind);
            self.loaded.sources.push(SourceDocument {
                kind,
                namespace,
                name,
                order: self.loaded.documents,
                origin,
                json: root.to_json().to_string().into(),
                selector,
            });
        }
    }

    fn read_document(&mut self, file: Option<Arc<str>>, root: &Node) {
        let order = self.loaded.documents;
        let mut ctx = Ctx { file: file.clone(), object: None, diagnostics: &mut self.loaded.diagnostics };
        let Some(mut fields) = ctx.map(root, "") else {
            return;
        };
        let api_version = fields.string(&mut ctx, "apiVersion");
        let kind = fields.string(&mut ctx, "kind");
        let (Some(api_version), Some(kind)) = (api_version, kind) else {
            ctx.error(
                root.pos,
                "kind",
                "the document has no apiVersion or kind",
                "start it with apiVersion and kind, as for kubectl apply",
            );
            return;
        };
        let metadata = fields.get("metadata");
        // Name the object in every later diagnostic.
        let name = metadata.as_ref().and_then(|(m, _)| m.get("name")).and_then(Node::scalar_text).map(str::to_owned);
        let namespace =
            metadata.as_ref().and_then(|(m, _)| m.get("namespace")).and_then(Node::scalar_text).map(str::to_owned);
        ctx.object = Some(ObjectRef {
            kind: kind.value.clone(),
            namespace: namespace.or_else(|| name.as_ref().map(|_| "default".to_owned())),
            name,
        });

        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
        let Some((_, versions)) = VERSIONS.iter().find(|(g, _)| *g == group) else {
            skip_kind(&mut ctx, root.pos, group, &api_version.value, &kind.value);
            return;
        };
        if !versions.contains(&version) {
            ctx.error(
                api_version.pos,
                "apiVersion",
                format!("{} is not a supported version of {group}", api_version.value),
                format!("use {group}/{}", versions[0]),
            );
            return;
        }
        let origin = Origin { file, pos: root.pos };
        let spec = fields.get("spec");
        // Only a Pod's status is read (its IP, when the document was read back from a cluster).
        let status = fields.get("status").map(|(node, _)| node.clone());
        let namespaced = !matches!(kind.as_str(), "Namespace");
        let meta = match metadata {
            Some((node, path)) => {
                let Some(meta_fields) = ctx.map(node, &path) else {
                    return;
                };
                crate::meta::read_meta(&mut ctx, meta_fields, origin, order, namespaced)
            }
            None => {
                ctx.error(
                    root.pos,
                    "metadata",
                    "the document has no metadata",
                    "add metadata.name (and metadata.namespace)",
                );
                None
            }
        };
        let config = &mut self.loaded.config;
        let data = (group, kind.as_str()).eq(&("", "ConfigMap")).then(|| fields.get("data")).flatten();
        let items =
            (group, kind.as_str()).eq(&("", "List")).then(|| fields.get("items").map(|(n, _)| n.clone())).flatten();
        let handled = matches!(
            (group, kind.as_str()),
            ("security.istio.io", "AuthorizationPolicy" | "PeerAuthentication" | "RequestAuthentication")
                | ("telemetry.istio.io", "Telemetry")
                | ("networking.istio.io", "WorkloadEntry" | "ServiceEntry" | "EnvoyFilter")
                | ("networking.k8s.io", "NetworkPolicy")
                | ("", "Namespace" | "ServiceAccount" | "Service" | "Pod" | "ConfigMap" | "List")
                | ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
                | ("install.istio.io", "IstioOperator")
        );
        if handled {
            // Top-level fields of the kinds zmesh reads; Istio kinds have only spec and status
            // (status was taken above).
            let kubernetes = matches!(group, "" | "apps");
            if kubernetes {
                fields.ignore(&[
                    "binaryData",
                    "immutable",
                    "secrets",
                    "imagePullSecrets",
                    "automountServiceAccountToken",
                ]);
            }
            fields.finish(&mut ctx);
        }
        match (group, kind.as_str()) {
            ("security.istio.io", "AuthorizationPolicy") => {
                let policy = meta.and_then(|m| crate::authz::read(&mut ctx, m, spec));
                if let Some(policy) = &policy {
                    warn_target_refs(&mut ctx, root, &policy.target_refs, "AuthorizationPolicy");
                }
                config.authorization_policies.extend(policy);
            }
            ("security.istio.io", "PeerAuthentication") => {
                config
                    .peer_authentications
                    .extend(meta.and_then(|m| crate::authn::read_peer_authentication(&mut ctx, m, spec)));
            }
            ("security.istio.io", "RequestAuthentication") => {
                let policy = meta.and_then(|m| crate::authn::read_request_authentication(&mut ctx, m, spec));
                if let Some(policy) = &policy {
                    warn_target_refs(&mut ctx, root, &policy.target_refs, "RequestAuthentication");
                }
                config.request_authentications.extend(policy);
            }
            ("telemetry.istio.io", "Telemetry") => {
                let telemetry = meta.and_then(|m| crate::telemetry::read(&mut ctx, m, spec));
                if let Some(telemetry) = &telemetry {
                    crate::telemetry::warn_not_applied(&mut ctx, telemetry);
                    warn_target_refs(&mut ctx, root, &telemetry.target_refs, "Telemetry");
                }
                config.telemetries.extend(telemetry);
            }
            ("networking.istio.io", "WorkloadEntry") => {
                config
                    .workload_entries
                    .extend(meta.and_then(|m| crate::networking::read_workload_entry(&mut ctx, m, spec)));
            }
            ("networking.istio.io", "ServiceEntry") => {
                config
                    .service_entries
                    .extend(meta.and_then(|m| crate::networking::read_service_entry(&mut ctx, m, spec)));
            }
            ("networking.istio.io", "EnvoyFilter") => {
                config.rate_limits.extend(meta.and_then(|m| crate::networking::read_envoy_filter(&mut ctx, m, spec)));
            }
            ("networking.k8s.io", "NetworkPolicy") => {
                let policy = meta.and_then(|m| crate::kube::read_network_policy(&mut ctx, m, spec));
                if let Some(policy) = &policy {
                    crate::kube::warn_not_enforced(&mut ctx, policy);
                }
                config.network_policies.extend(policy);
            }
            ("", "Namespace") => config.namespaces.extend(meta.map(|meta| Namespace { meta })),
            ("", "ServiceAccount") => config.service_accounts.extend(meta.map(|meta| ServiceAccountObject { meta })),
            ("", "Service") => config.services.extend(meta.and_then(|m| crate::kube::read_service(&mut ctx, m, spec))),
            ("", "Pod") | ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
                config
                    .workloads
                    .extend(meta.and_then(|m| crate::kube::read_workload(&mut ctx, m, &kind, spec, status.as_ref())));
            }
            ("", "ConfigMap") => {
                let Some(meta) = meta else { return };
                let mesh_text = data.and_then(|(d, _)| d.get("mesh"));
                match mesh_text {
                    Some(text_node) if meta.name == "istio" => {
                        let text = text_node.scalar_text().unwrap_or_default().to_owned();
                        drop(ctx);
                        self.add_embedded_mesh(meta.origin.file.clone(), text_node.pos, &text);
                    }
                    Some(text_node) => ctx.warn(
                        crate::diag::codes::MESH_CONFIG_IGNORED,
                        text_node.pos,
                        "data.mesh",
                        format!("ConfigMap {} has a `mesh` key, but MeshConfig is read only from ConfigMap `istio`; it is ignored", meta.key()),
                        "rename the ConfigMap to `istio`, or move these settings into it",
                    ),
                    None => ctx.report(Severity::Info, root.pos, "", format!("ConfigMap {} is not used by zmesh; skipped", meta.key()), None),
                }
            }
            ("install.istio.io", "IstioOperator") => {
                let mesh = spec.and_then(|(s, p)| s.get("meshConfig").map(|m| (m.clone(), format!("{p}.meshConfig"))));
                match mesh {
                    Some((node, path)) => {
                        drop(ctx);
                        self.add_mesh(meta.and_then(|m| m.origin.file), &node, &path);
                    }
                    None => ctx.report(
                        Severity::Info,
                        root.pos,
                        "",
                        "IstioOperator has no spec.meshConfig; nothing in it is used by zmesh".into(),
                        None,
                    ),
                }
            }
            ("", "List") => {
                drop(ctx);
                if let Some(Node { value: yaml::Value::Seq(items), .. }) = items {
                    for item in &items {
                        self.add_document(origin_file(&meta), item);
                    }
                }
            }
            _ => skip_kind(&mut ctx, root.pos, group, &api_version.value, &kind.value),
        }
    }

    /// The `mesh` key of ConfigMap `istio`: YAML inside a string. Positions inside it are
    /// shifted to the lines of the enclosing file.
    fn add_embedded_mesh(&mut self, file: Option<Arc<str>>, at: Pos, text: &str) {
        match yaml::parse_stream(text, &self.limits) {
            Ok(documents) => {
                let mark = self.loaded.diagnostics.len();
                if let Some(root) = documents.into_iter().find_map(|d| d.root) {
                    self.add_mesh(file, &root, "data.mesh");
                }
                // `at` is where the scalar's content starts: inner line 1 is outer line
                // `at.line`, indented by `at.column - 1`.
                for diagnostic in &mut self.loaded.diagnostics[mark..] {
                    diagnostic.origin.pos.line += at.line - 1;
                    diagnostic.origin.pos.column += at.column - 1;
                }
            }
            Err(error) => {
                let line = at.line - 1 + error.pos().map_or(1, |p| p.line);
                self.push(
                    file.as_ref(),
                    Pos { line, column: 1 },
                    format!("data.mesh is not valid YAML: {error}"),
                    "fix the YAML inside the `mesh` key",
                    Severity::Error,
                );
            }
        }
    }

    pub fn finish(self) -> Loaded {
        self.loaded
    }
}

/// A sidecar ignores a policy with targetRef(s): Istio attaches it to the gateways, waypoints,
/// Services or ServiceEntries it names. zmesh has only sidecars, so the policy applies nowhere.
fn warn_target_refs(ctx: &mut Ctx<'_>, root: &Node, refs: &[crate::meta::TargetRef], kind: &str) {
    let Some(first) = refs.first() else { return };
    let spec = root.get("spec");
    let field = if spec.and_then(|s| s.get("targetRef")).is_some() { "spec.targetRef" } else { "spec.targetRefs[0]" };
    let names: Vec<String> = refs.iter().map(|r| format!("{} {}", r.kind, r.name)).collect();
    let instead = match kind {
        "AuthorizationPolicy" => "its rules allow or deny nothing on any sidecar",
        "RequestAuthentication" => "no sidecar validates these JWTs",
        _ => "no sidecar applies it",
    };
    ctx.warn(
        codes::TARGET_REFS_NOT_FOR_SIDECARS,
        first.pos,
        field,
        format!(
            "a {kind} with targetRefs ({}) applies only to the gateways and waypoints it names, never to a sidecar; zmesh runs sidecars, so {instead}",
            names.join(", ")
        ),
        "use selector.matchLabels (or no selector) to apply it to the workloads' sidecars",
    );
}

/// A kind zmesh does not read. Istio and Gateway API kinds change what Istio does with traffic,
/// so skipping them is a warning that says what zmesh does instead; other kinds (Secrets,
/// RBAC, …) are only noted.
fn skip_kind(ctx: &mut Ctx<'_>, pos: Pos, group: &str, api_version: &str, kind: &str) {
    let traffic = group.ends_with("istio.io") || group == "gateway.networking.k8s.io";
    if !traffic {
        ctx.report(Severity::Info, pos, "", format!("{api_version} {kind} is not used by zmesh; skipped"), None);
        return;
    }
    let instead = match (group, kind) {
        ("networking.istio.io", "VirtualService")
        | ("gateway.networking.k8s.io", "HTTPRoute" | "GRPCRoute" | "TCPRoute" | "TLSRoute") => {
            "routing rules are not applied: requests go to the host they address, without rewrites, retries, timeouts, fault injection or traffic splits"
        }
        ("networking.istio.io", "DestinationRule") => {
            "traffic policies and subsets are not applied: no load-balancing, connection-pool or outlier settings, and mesh traffic always uses zmesh's mTLS"
        }
        ("networking.istio.io", "Gateway") | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass") => {
            "zmesh runs no gateways, so nothing listens for it"
        }
        ("networking.istio.io", "Sidecar") => {
            "sidecar scoping is not applied: every sidecar reaches every registered host and serves every inbound port"
        }
        _ => "it is skipped and nothing in it is applied",
    };
    ctx.warn(
        codes::KIND_NOT_SUPPORTED,
        pos,
        "kind",
        format!("{api_version} {kind} is not supported by zmesh; {instead}"),
        "see docs/diagnostic-codes.md (ZM2013); remove it from the configuration zmesh reads to silence this",
    );
}

/// MeshConfig fields zmesh acts on; `read_mesh_config` accepts more (and refuses unknown
/// ones), and every other field present is reported as ignored. `defaultConfig` is listed
/// by its subfields, since only parts of ProxyConfig could ever apply.
const MESH_FIELDS_APPLIED: &[&str] = &[
    "rootNamespace",
    "trustDomain",
    "trustDomainAliases",
    "extensionProviders",
    "pathNormalization",
    "outboundTrafficPolicy",
];

fn warn_ignored_mesh_fields(ctx: &mut Ctx<'_>, node: &Node, path: &str) {
    let join = |parent: &str, key: &str| if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") };
    let yaml::Value::Map(entries) = &node.value else { return };
    for (key, value) in entries {
        let Some(name) = key.scalar_text() else { continue };
        if MESH_FIELDS_APPLIED.contains(&name) || value.is_null() {
            continue;
        }
        if name == "defaultConfig" {
            let yaml::Value::Map(inner) = &value.value else { continue };
            for (inner_key, _) in inner {
                let Some(inner_name) = inner_key.scalar_text() else { continue };
                ctx.warn(
                    codes::MESH_CONFIG_FIELD_IGNORED,
                    inner_key.pos,
                    &join(&join(path, "defaultConfig"), inner_name),
                    format!("defaultConfig.{inner_name} configures Envoy sidecars; zmesh's proxies ignore it"),
                    "remove it, or keep it for the Istio proxies that still read this MeshConfig",
                );
            }
            continue;
        }
        ctx.warn(
            codes::MESH_CONFIG_FIELD_IGNORED,
            key.pos,
            &join(path, name),
            format!("meshConfig.{name} is accepted but ignored by zmesh"),
            "remove it, or keep it for the Istio components that still read this MeshConfig",
        );
    }
}

fn origin_file(meta: &Option<crate::meta::Meta>) -> Option<Arc<str>> {
    meta.as_ref().and_then(|m| m.origin.file.clone())
}

/// Load files and directories, and optionally a MeshConfig file.
pub fn load_paths(paths: &[PathBuf], mesh_config: Option<&Path>) -> Loaded {
    let mut loader = Loader::new();
    if let Some(mesh) = mesh_config {
        loader.add_file(mesh, FileKind::MeshConfig);
    }
    for path in paths {
        loader.add_path(path);
    }
    loader.finish()
}

/// Load YAML text (tests, and configuration given inline).
pub fn load_str(text: &str) -> Loaded {
    let mut loader = Loader::new();
    loader.add_str(None, text, FileKind::Resources);
    loader.finish()
}
