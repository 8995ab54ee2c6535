//! The config store: where the control plane's configuration comes from, and what became of
//! every change to it.
//!
//! [`ConfigStore`] is what the rest of the control plane sees: a [`watch`] channel of
//! [`StoreState`], each holding the configuration in force and the status of every resource.
//! [`FileStore`] implements it over a directory of YAML files (or one file); a Kubernetes
//! implementation is meant to come later behind the same trait.
//!
//! A change is validated as a whole. When any document in it has an error, nothing of it is put
//! in force: the last good configuration stays, and the refusal is published next to it with
//! every diagnostic, so the mesh never runs on a half-applied change.
//!
//! # How the file store sees changes
//!
//! What the tree *is* is always decided by its fingerprint: the watcher lists the tree and
//! stats every file *through* its symlinks (size, mtime, ctime, inode, device). Whatever happens
//! to a file, what it resolves to is compared, so these need no special cases:
//!
//! - an in-place write (size or mtime changes);
//! - an atomic replace, where a temporary file is renamed over the old one (new inode);
//! - a Kubernetes ConfigMap volume, where `x.yaml -> ..data/x.yaml` and the kubelet swaps the
//!   `..data` symlink to a new timestamped directory (the same path now resolves to another
//!   inode).
//!
//! *When* to look comes from two sources. Every `poll` (100 ms by default) the watcher looks,
//! which works on every filesystem, including network mounts where the kernel never hears of
//! writes made by other hosts. A listing costs well under a millisecond for a few dozen files
//! and about 30–50 ms for 10,000 (ext4, warm cache, 2-CPU VM), so the pause between polls
//! stretches to ten times the last listing's cost and polling never takes more than about a
//! tenth of one thread. Where inotify is available, the watcher also wakes on events in the
//! root and in every directory holding a listed file (`store::notify`): a change is then looked at as
//! soon as the events stop for `debounce`, instead of at the next poll (for a large tree, up to
//! half a second later).
//!
//! A changed fingerprint is not acted on at once: editors and deployment tools write in several
//! steps, so the watcher waits until the change has settled — the events stopped, or, when it
//! was found by polling, the fingerprint stayed the same — for `debounce`. Only then are the
//! files read: only those whose stamp changed, and only those whose content changed are
//! validated again (`store::tree`). A content hash decides whether anything changed (a `touch`
//! publishes nothing).
//!
//! Timestamps are coarse on some filesystems (a few milliseconds on ext4, up to seconds on
//! others), so a file rewritten with the same size just after it was read could keep its
//! fingerprint. As git does for its index, files modified shortly before they were read are
//! read once more [`RACY_WINDOW`] later.

mod notify;
mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zmesh_ca::Rfc3339;
use zmesh_config::{Diagnostic, Loaded, ObjectRef, Origin, Severity};

use notify::TreeEvents;
use tree::{Digest, Fingerprint, Tree, first_read, read_error};

/// Where configuration comes from. Implementations validate every change as a whole and publish
/// a new [`StoreState`] for every accepted or refused change.
pub trait ConfigStore: Send + Sync + 'static {
    /// The current state (marked as seen) and every later one.
    fn subscribe(&self) -> watch::Receiver<Arc<StoreState>>;

    /// Where the configuration comes from, for logs and the admin API: `files under /etc/zmesh`.
    fn source(&self) -> String;
}

/// The configuration in force, and what became of the latest change.
#[derive(Debug, Clone)]
pub struct StoreState {
    /// 1 for the first good configuration, one more for every accepted change.
    pub generation: u64,
    /// When the configuration in force was accepted.
    pub accepted_at: SystemTime,
    /// The last good load: configuration, its warnings, and the accepted source documents.
    pub loaded: Arc<Loaded>,
    /// Every resource, in force or not, ordered by file and line.
    pub resources: Vec<ResourceStatus>,
    /// The latest change, if it was refused and nothing good came after it.
    pub rejection: Option<Rejection>,
}

/// One resource as the admin API shows it. Problems not tied to a resource (a file that is not
/// valid YAML, a kind zmesh skips such as Sidecar) are listed with kind `File` and the file as
/// the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    pub kind: String,
    /// Empty for MeshConfig, Namespace and files.
    pub namespace: String,
    pub name: String,
    pub file: Option<String>,
    /// Where the document starts (for a rejected one, its first error when the start is unknown;
    /// for a file, its first finding).
    pub line: usize,
    pub state: ResourceState,
    /// The warnings of its document, as `zmesh validate` prints them: what zmesh reads but does
    /// not enforce or apply (codes in docs/diagnostic-codes.md). A zero-trust mesh must say
    /// what it leaves undone; warnings never refuse a change.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceState {
    /// In force.
    Accepted,
    /// Its document has errors; `reasons` are the diagnostics, rendered with file:line and hint.
    Rejected { reasons: Vec<String> },
    /// Valid as written (or removed from the files), but not in force, because the change it
    /// belongs to was refused as a whole.
    Pending { because: String },
}

/// A refused change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub at: SystemTime,
    /// Every error diagnostic of the change, rendered.
    pub errors: Vec<String>,
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The first load had errors; there is no last good configuration to fall back on.
    #[error("{}", invalid_message(errors))]
    Invalid { errors: Vec<String> },
    #[error("cannot read {path}; check that it exists and that this process may read it")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the file config store must be opened inside a tokio runtime (it spawns its watcher there)")]
    NoRuntime,
}

fn invalid_message(errors: &[String]) -> String {
    let count = plural(errors.len(), "error");
    let mut message = format!("the configuration is not valid ({count}); nothing was loaded:");
    for error in errors {
        message.push_str("\n  ");
        message.push_str(error);
    }
    message
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

/// (kind, namespace, name), with the namespace empty where sources leave it empty.
type Key = (String, String, String);

fn object_key(object: &ObjectRef) -> Key {
    // The loader gives a Namespace object the namespace `default` in diagnostics but none in its
    // source document; the status must treat both as the same object.
    let namespace =
        if object.kind == "Namespace" { String::new() } else { object.namespace.clone().unwrap_or_default() };
    (object.kind.clone(), namespace, object.name.clone().unwrap_or_default())
}

fn source_key(kind: &str, namespace: &str, name: &str) -> Key {
    (kind.to_owned(), namespace.to_owned(), name.to_owned())
}

fn file_of(origin: &Origin) -> Option<String> {
    origin.file.as_deref().map(str::to_owned)
}

/// The status key of findings that belong to a file rather than to a resource.
fn file_key(file: &Option<String>) -> Key {
    ("File".to_owned(), String::new(), file.clone().unwrap_or_else(|| "<input>".to_owned()))
}

/// A resource of a load: its key and its file.
type Place = (Key, Option<String>);

fn places(loaded: &Loaded) -> BTreeSet<Place> {
    loaded.sources.iter().map(|s| (source_key(&s.kind, &s.namespace, &s.name), file_of(&s.origin))).collect()
}

fn is_warning(diagnostic: &&Diagnostic) -> bool {
    diagnostic.severity == Severity::Warning
}

/// The warnings of one load, handed out to the statuses they belong to: each to the resource
/// its object names in its file (as errors are matched), the others — a kind zmesh skips, a
/// ConfigMap it does not read — to their file.
#[derive(Debug, Default)]
struct Warnings {
    by_resource: BTreeMap<Place, Vec<Diagnostic>>,
    by_file: BTreeMap<Option<String>, Vec<Diagnostic>>,
}

impl Warnings {
    /// The warnings of `loaded`; those naming one of `resources` are kept for it.
    fn of(loaded: &Loaded, resources: &BTreeSet<Place>) -> Warnings {
        let mut warnings = Warnings::default();
        for warning in loaded.diagnostics.iter().filter(is_warning) {
            let file = file_of(&warning.origin);
            let place = warning.object.as_ref().map(|object| (object_key(object), file.clone()));
            match place.filter(|place| resources.contains(place)) {
                Some(place) => warnings.by_resource.entry(place).or_default().push(warning.clone()),
                None => warnings.by_file.entry(file).or_default().push(warning.clone()),
            }
        }
        warnings
    }

    /// The warnings of the resource `key` in `file` from `line` on. A key repeated in one file
    /// (the later document replaces the earlier) is asked for from its last document up, so
    /// each document gets the warnings that lie within it.
    fn take(&mut self, key: &Key, file: &Option<String>, line: usize) -> Vec<Diagnostic> {
        let place = (key.clone(), file.clone());
        let Some(all) = self.by_resource.get_mut(&place) else { return Vec::new() };
        let (taken, rest): (Vec<_>, Vec<_>) = std::mem::take(all).into_iter().partition(|w| w.origin.pos.line >= line);
        if rest.is_empty() {
            self.by_resource.remove(&place);
        } else {
            *all = rest;
        }
        taken
    }

    /// What no status took, by file (nothing is dropped).
    fn by_file(mut self) -> BTreeMap<Option<String>, Vec<Diagnostic>> {
        for ((_, file), rest) in std::mem::take(&mut self.by_resource) {
            self.by_file.entry(file).or_default().extend(rest);
        }
        self.of_no_resource()
    }

    /// The warnings that name no resource, by file, in the order of their positions.
    fn of_no_resource(mut self) -> BTreeMap<Option<String>, Vec<Diagnostic>> {
        for list in self.by_file.values_mut() {
            list.sort_by(|a, b| a.origin.cmp(&b.origin));
        }
        self.by_file
    }
}

/// The status of a file's findings that belong to no resource.
fn file_status(file: Option<String>, state: ResourceState, warnings: Vec<Diagnostic>) -> ResourceStatus {
    let (kind, namespace, name) = file_key(&file);
    let line = warnings.iter().map(|w| w.origin.pos.line).min().unwrap_or(1);
    ResourceStatus { kind, namespace, name, file, line, state, warnings }
}

impl StoreState {
    /// The state of a freshly accepted configuration: every resource in it accepted.
    pub fn accepted(generation: u64, at: SystemTime, loaded: Arc<Loaded>) -> StoreState {
        let mut warnings = Warnings::of(&loaded, &places(&loaded));
        let mut resources: Vec<ResourceStatus> = loaded
            .sources
            .iter()
            .rev()
            .map(|source| {
                let key = source_key(&source.kind, &source.namespace, &source.name);
                let file = file_of(&source.origin);
                let line = source.origin.pos.line;
                let warnings = warnings.take(&key, &file, line);
                let (kind, namespace, name) = key;
                ResourceStatus { kind, namespace, name, file, line, state: ResourceState::Accepted, warnings }
            })
            .collect();
        for (file, list) in warnings.by_file() {
            resources.push(file_status(file, ResourceState::Accepted, list));
        }
        sort(&mut resources);
        StoreState { generation, accepted_at: at, loaded, resources, rejection: None }
    }

    /// The state after `attempt` (a load with errors) was refused: this state's configuration
    /// stays in force, and every resource says whether it is in force, rejected, or waiting on
    /// the rest of its change.
    pub fn refused(&self, at: SystemTime, attempt: &Loaded) -> StoreState {
        let errors: Vec<&Diagnostic> = attempt.errors().collect();
        let because_change = format!(
            "the change it belongs to was refused as a whole ({}); generation {} stays in force",
            plural(errors.len(), "error"),
            self.generation
        );

        // Rejected resources, and files with errors of no resource, by (key, file).
        let mut rejected: BTreeMap<Place, (usize, Vec<String>)> = BTreeMap::new();
        let mut broken_files = BTreeSet::new();
        for error in &errors {
            let file = file_of(&error.origin);
            let key = match &error.object {
                Some(object) => object_key(object),
                None => {
                    broken_files.insert(file.clone());
                    file_key(&file)
                }
            };
            let entry = rejected.entry((key, file)).or_insert((error.origin.pos.line, Vec::new()));
            entry.0 = entry.0.min(error.origin.pos.line);
            entry.1.push(error.to_string());
        }
        let rejected_keys: BTreeSet<Key> = rejected.keys().map(|(key, _)| key.clone()).collect();

        // The warnings of what the files hold now, and of what is in force (for what the change
        // would remove, or what a broken file held).
        let mut attempt_places = places(attempt);
        attempt_places.extend(rejected.keys().cloned());
        let mut warnings = Warnings::of(attempt, &attempt_places);
        let mut in_force_warnings = Warnings::of(&self.loaded, &places(&self.loaded));

        let mut resources = Vec::new();
        let in_force: BTreeSet<(Key, &str)> =
            self.loaded.sources.iter().map(|s| (source_key(&s.kind, &s.namespace, &s.name), &*s.json)).collect();
        let mut in_files = BTreeSet::new();
        for source in attempt.sources.iter().rev() {
            let key = source_key(&source.kind, &source.namespace, &source.name);
            let file = file_of(&source.origin);
            in_files.insert(key.clone());
            if let Some(entry) = rejected.get_mut(&(key.clone(), file.clone())) {
                // A document read despite an error (a bad namespace, say) is still rejected;
                // its start is a better line than its first error.
                entry.0 = source.origin.pos.line;
                continue;
            }
            let state = if in_force.contains(&(key.clone(), &*source.json)) {
                ResourceState::Accepted
            } else {
                ResourceState::Pending { because: format!("valid, but not in force: {because_change}") }
            };
            let line = source.origin.pos.line;
            let warnings = warnings.take(&key, &file, line);
            let (kind, namespace, name) = key;
            resources.push(ResourceStatus { kind, namespace, name, file, line, state, warnings });
        }
        // What is in force but gone from the files: removing it is part of the refused change.
        for source in self.loaded.sources.iter().rev() {
            let key = source_key(&source.kind, &source.namespace, &source.name);
            if in_files.contains(&key) || rejected_keys.contains(&key) {
                continue;
            }
            let file = file_of(&source.origin);
            let state = if broken_files.contains(&file) {
                // Its file could not be read this time; the file's own status says why.
                ResourceState::Accepted
            } else {
                ResourceState::Pending {
                    because: format!("removed from the files, but still in force: {because_change}"),
                }
            };
            let line = source.origin.pos.line;
            let warnings = in_force_warnings.take(&key, &file, line);
            let (kind, namespace, name) = key;
            resources.push(ResourceStatus { kind, namespace, name, file, line, state, warnings });
        }
        let mut rejected: BTreeMap<Place, (usize, Vec<String>, Vec<Diagnostic>)> = rejected
            .into_iter()
            .map(|((key, file), (line, reasons))| {
                let warnings = warnings.take(&key, &file, 0);
                ((key, file), (line, reasons, warnings))
            })
            .collect();
        // Findings of no resource: with the file's errors when it has any; otherwise the file's
        // own status, in force when the files say what the configuration in force said.
        let in_force_files = in_force_warnings.of_no_resource();
        for (file, list) in warnings.by_file() {
            if let Some(entry) = rejected.get_mut(&(file_key(&file), file.clone())) {
                entry.2.extend(list);
                continue;
            }
            let state = if in_force_files.get(&file) == Some(&list) {
                ResourceState::Accepted
            } else {
                ResourceState::Pending { because: format!("valid, but not in force: {because_change}") }
            };
            resources.push(file_status(file, state, list));
        }
        for ((key, file), (line, reasons, warnings)) in rejected {
            let (kind, namespace, name) = key;
            resources.push(ResourceStatus {
                kind,
                namespace,
                name,
                file,
                line,
                state: ResourceState::Rejected { reasons },
                warnings,
            });
        }
        sort(&mut resources);

        StoreState {
            generation: self.generation,
            accepted_at: self.accepted_at,
            loaded: self.loaded.clone(),
            resources,
            rejection: Some(Rejection { at, errors: errors.iter().map(ToString::to_string).collect() }),
        }
    }

    /// The admin API's `/api/v1/resources` document.
    pub fn to_json(&self) -> Value {
        json!({
            "generation": self.generation,
            "acceptedAt": Rfc3339(self.accepted_at).to_string(),
            "warningCount": self.resources.iter().map(|r| r.warnings.len()).sum::<usize>(),
            "resources": self.resources.iter().map(ResourceStatus::to_json).collect::<Vec<_>>(),
            "rejection": self.rejection.as_ref().map(|r| json!({
                "at": Rfc3339(r.at).to_string(),
                "errors": r.errors,
            })),
        })
    }
}

fn sort(resources: &mut [ResourceStatus]) {
    resources.sort_by(|a, b| {
        (&a.file, a.line, &a.kind, &a.namespace, &a.name).cmp(&(&b.file, b.line, &b.kind, &b.namespace, &b.name))
    });
}

impl ResourceStatus {
    pub fn to_json(&self) -> Value {
        let (status, reasons) = match &self.state {
            ResourceState::Accepted => ("accepted", Vec::new()),
            ResourceState::Rejected { reasons } => ("rejected", reasons.clone()),
            ResourceState::Pending { because } => ("pending", vec![because.clone()]),
        };
        json!({
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "file": self.file,
            "line": self.line,
            "status": status,
            "reasons": reasons,
            "warnings": self.warnings.iter().map(warning_json).collect::<Vec<_>>(),
        })
    }
}

/// One warning in the admin API: its parts, and `text` as `zmesh validate` prints it.
fn warning_json(warning: &Diagnostic) -> Value {
    json!({
        "code": warning.code,
        "at": warning.origin.to_string(),
        "file": warning.origin.file.as_deref(),
        "line": warning.origin.pos.line,
        "column": warning.origin.pos.column,
        "field": warning.field,
        "message": warning.message,
        "hint": warning.hint,
        "text": warning.to_string(),
    })
}

/// How often the file store looks, how long a change must hold still before it is read, and
/// whether to hear about changes from the kernel as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    pub poll: Duration,
    pub debounce: Duration,
    /// Wake on inotify events (where available) instead of waiting for the next poll. Polling
    /// goes on either way; `false` leaves changes to polling alone.
    pub notify: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { poll: Duration::from_millis(100), debounce: Duration::from_millis(150), notify: true }
    }
}

/// How long after its last modification a file's timestamps may still hide a same-size rewrite:
/// two seconds covers the coarsest common filesystems.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The pause between polls is at least this many times what the last poll cost, so a huge tree
/// is looked at less often instead of keeping a thread busy.
const POLL_COST_RATIO: u32 = 10;

/// Polls of a failing read before the failure is logged as a warning rather than at debug level
/// (a file vanishing mid-rename fixes itself within a poll or two).
const WARN_AFTER_FAILURES: u32 = 10;

/// Configuration from a directory of YAML files (every `*.yaml`/`*.yml` below it, hidden entries
/// skipped) or from one file, watched for changes.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    source: String,
    states: Arc<watch::Sender<Arc<StoreState>>>,
}

impl FileStore {
    /// Load `path` and start watching it until `shutdown` (or until the store and every
    /// subscriber are gone). The first load must be valid. Must be called inside a tokio
    /// runtime; the first load reads the files on the calling thread.
    pub fn open(path: &Path, options: WatchOptions, shutdown: CancellationToken) -> Result<FileStore, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
        let root = path.to_path_buf();
        // Listening before the first read: a change made while it runs is heard.
        let mut events = if options.notify { TreeEvents::new() } else { None };
        if let Some(events) = &mut events {
            events.watch(top_directory(&root));
        }
        let (fingerprint, tree) = first_read(&root, options.poll)?;
        let digest = tree.digest();
        let loaded = tree.load();
        if loaded.has_errors() {
            return Err(StoreError::Invalid { errors: loaded.errors().map(ToString::to_string).collect() });
        }
        let source =
            if root.is_dir() { format!("files under {}", root.display()) } else { format!("file {}", root.display()) };
        log_accepted(1, &loaded, &source);
        let state = StoreState::accepted(1, SystemTime::now(), Arc::new(loaded));
        let states = Arc::new(watch::Sender::new(Arc::new(state)));
        let watcher = Watcher {
            root: root.clone(),
            source: source.clone(),
            options,
            states: states.clone(),
            last: fingerprint,
            candidate: None,
            recheck_at: tree.racy().then(|| Instant::now() + RACY_WINDOW),
            seen: digest,
            in_force: digest,
            tree: Arc::new(tree),
            events,
            failures: 0,
        };
        runtime.spawn(watcher.run(shutdown));
        Ok(FileStore { path: root, source, states })
    }

    /// The state now.
    pub fn current(&self) -> Arc<StoreState> {
        self.states.borrow().clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ConfigStore for FileStore {
    fn subscribe(&self) -> watch::Receiver<Arc<StoreState>> {
        self.states.subscribe()
    }

    fn source(&self) -> String {
        self.source.clone()
    }
}

/// Log every warning of a change, once: when the change is read (accepted or refused), never
/// again while the files stay the same.
fn log_warnings(loaded: &Loaded) {
    for warning in loaded.diagnostics.iter().filter(is_warning) {
        warn!(
            code = warning.code.unwrap_or_default(),
            at = %warning.origin,
            field = %warning.field,
            %warning,
            "configuration warning"
        );
    }
}

fn log_accepted(generation: u64, loaded: &Loaded, source: &str) {
    log_warnings(loaded);
    info!(generation, resources = loaded.sources.len(), files = loaded.files, source, "configuration accepted");
}

/// The background task of a [`FileStore`].
struct Watcher {
    root: PathBuf,
    source: String,
    options: WatchOptions,
    states: Arc<watch::Sender<Arc<StoreState>>>,
    /// The fingerprint of the tree as last read.
    last: Fingerprint,
    /// A different fingerprint, and since when it has held still.
    candidate: Option<(Fingerprint, Instant)>,
    /// When to read again although the fingerprint did not change (see [`RACY_WINDOW`]).
    recheck_at: Option<Instant>,
    /// Every file as last read (accepted or not), reused for the files a change leaves alone.
    tree: Arc<Tree>,
    /// The content last loaded, accepted or not.
    seen: Digest,
    /// The content of the configuration in force.
    in_force: Digest,
    /// Where inotify is available (and wanted): the events that wake the watcher early.
    events: Option<TreeEvents>,
    /// Reads that failed in a row.
    failures: u32,
}

impl Watcher {
    async fn run(mut self, shutdown: CancellationToken) {
        // The first look is at once: the watches on directories below the root were set after
        // the first read.
        let mut pause = Duration::ZERO;
        self.watch_directories();
        loop {
            // Nobody can ever see another state: the store and every receiver are gone.
            if Arc::strong_count(&self.states) == 1 && self.states.is_closed() {
                debug!(source = %self.source, "config store dropped; watcher stops");
                return;
            }
            let settled = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => false,
                () = settled(self.events.as_mut(), self.options.debounce) => true,
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                spent = self.look(settled) => {
                    // A change seen and waiting out its debounce is confirmed as soon as the
                    // debounce allows, not after a large tree's long pause.
                    pause = if self.candidate.is_some() {
                        self.options.debounce
                    } else {
                        self.options.poll.max(spent * POLL_COST_RATIO)
                    };
                }
            }
        }
    }

    /// Point the inotify watches at the directories of the tree as last read (on the first
    /// look, and after every read).
    fn watch_directories(&mut self) {
        if let Some(events) = &mut self.events {
            events.watch(top_directory(&self.root).into_iter().chain(self.last.directories()));
        }
    }

    /// One look at the tree; returns what taking its fingerprint cost. A new fingerprint is read
    /// once it has held still for the debounce, or at once when the change has `settled` (the
    /// events that announced it stopped for that long).
    async fn look(&mut self, settled: bool) -> Duration {
        let root = self.root.clone();
        let started = Instant::now();
        let fingerprint = blocking(&self.root, move || Fingerprint::take(&root)).await;
        let now = Instant::now();
        let spent = now.duration_since(started);
        let fingerprint = match fingerprint {
            Ok(fingerprint) => fingerprint,
            Err(error) => {
                self.failed(&error);
                return spent;
            }
        };
        if fingerprint == self.last {
            self.candidate = None;
            if self.recheck_at.is_some_and(|at| now >= at) {
                self.recheck_at = None;
                self.read(fingerprint).await;
            }
            return spent;
        }
        match &self.candidate {
            _ if settled => self.read(fingerprint).await,
            Some((candidate, since)) if *candidate == fingerprint => {
                if now.duration_since(*since) >= self.options.debounce {
                    self.read(fingerprint).await;
                }
            }
            _ => self.candidate = Some((fingerprint, now)),
        }
        spent
    }

    /// Read the tree behind `fingerprint`, and publish what became of it if its content changed.
    async fn read(&mut self, fingerprint: Fingerprint) {
        let root = self.root.clone();
        let stamps = fingerprint.clone();
        let previous = self.tree.clone();
        let tree = match blocking(&self.root, move || previous.refresh(&root, &stamps)).await {
            Ok(tree) => Arc::new(tree),
            // The candidate stays, so the next poll tries again (a file vanished mid-rename).
            Err(error) => return self.failed(&error),
        };
        self.failures = 0;
        // The fingerprint taken before the read: a write during the read changes the next one.
        self.last = fingerprint;
        self.watch_directories();
        self.candidate = None;
        self.recheck_at = tree.racy().then(|| Instant::now() + RACY_WINDOW);
        self.tree = tree.clone();
        let digest = tree.digest();
        if digest == self.seen {
            debug!(source = %self.source, "files touched, content unchanged");
            return;
        }
        self.seen = digest;
        let loaded = match blocking(&self.root, move || Ok(tree.load())).await {
            Ok(loaded) => loaded,
            Err(error) => return self.failed(&error),
        };
        self.publish(digest, loaded);
    }

    fn publish(&mut self, digest: Digest, loaded: Loaded) {
        let current = self.states.borrow().clone();
        let now = SystemTime::now();
        let state = if loaded.has_errors() {
            log_warnings(&loaded);
            for error in loaded.errors() {
                warn!(%error, "configuration change refused");
            }
            warn!(
                generation = current.generation,
                errors = loaded.errors().count(),
                source = %self.source,
                "configuration change refused as a whole; the configuration in force stays"
            );
            current.refused(now, &loaded)
        } else if digest == self.in_force {
            // Back to exactly what is in force (a bad edit undone): nothing to push again, but
            // the refusal no longer stands.
            if current.rejection.is_none() {
                return;
            }
            info!(
                generation = current.generation,
                source = %self.source,
                "the files are back to the configuration in force; the refusal is cleared"
            );
            StoreState::accepted(current.generation, current.accepted_at, current.loaded.clone())
        } else {
            let generation = current.generation + 1;
            log_accepted(generation, &loaded, &self.source);
            self.in_force = digest;
            StoreState::accepted(generation, now, Arc::new(loaded))
        };
        self.states.send_replace(Arc::new(state));
    }

    fn failed(&mut self, error: &StoreError) {
        self.failures = self.failures.saturating_add(1);
        let error = with_causes(error);
        if self.failures == WARN_AFTER_FAILURES {
            warn!(
                %error,
                polls = self.failures,
                "cannot read the configuration; still retrying, the last good one stays in force"
            );
        } else {
            debug!(%error, "cannot read the configuration; retrying at the next poll");
        }
    }
}

/// The directory whose events are worth waking for besides those holding a listed file: the
/// root, or for a single file the directory it is renamed into.
fn top_directory(root: &Path) -> Option<&Path> {
    if root.is_dir() { Some(root) } else { root.parent() }
}

/// Until `events` report a change that then held still for `quiet`; forever without events.
async fn settled(events: Option<&mut TreeEvents>, quiet: Duration) {
    match events {
        Some(events) => events.settled(quiet).await,
        None => std::future::pending().await,
    }
}

/// Run filesystem work off the async threads (a large tree takes milliseconds to stat or read).
async fn blocking<T: Send + 'static>(
    root: &Path,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => Err(read_error(root, std::io::Error::other(format!("the reading task failed: {error}")))),
    }
}

fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_with_an_error_has_one_status() {
        // Diagnostics name a Namespace object with namespace `default`, its source with none.
        let good = zmesh_config::load_str("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n");
        let state = StoreState::accepted(1, SystemTime::UNIX_EPOCH, Arc::new(good));
        let bad = zmesh_config::load_str("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\nbogus: 1\n");
        assert!(bad.has_errors() && bad.sources.len() == 1, "{:?}", bad.diagnostics);

        let refused = state.refused(SystemTime::UNIX_EPOCH, &bad);
        assert_eq!(refused.resources.len(), 1, "{:#?}", refused.resources);
        let status = &refused.resources[0];
        assert_eq!((status.kind.as_str(), status.namespace.as_str(), status.name.as_str()), ("Namespace", "", "shop"));
        assert_eq!(status.line, 1, "the document's start, not its first error");
        assert!(matches!(&status.state, ResourceState::Rejected { reasons } if reasons[0].contains("bogus")));
    }
}
