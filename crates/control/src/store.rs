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
//! # Why the file store polls instead of using inotify
//!
//! Every `poll` (100 ms by default) the watcher lists the tree and stats every file *through*
//! its symlinks (size, mtime, ctime, inode, device). Whatever happens to a file, what it
//! resolves to is compared, so these need no special cases:
//!
//! - an in-place write (size or mtime changes);
//! - an atomic replace, where a temporary file is renamed over the old one (new inode);
//! - a Kubernetes ConfigMap volume, where `x.yaml -> ..data/x.yaml` and the kubelet swaps the
//!   `..data` symlink to a new timestamped directory (the same path now resolves to another
//!   inode). With inotify the watches would have to follow symlink targets and be set up again
//!   after every rename and swap.
//!
//! Polling also works on every filesystem, including network mounts where inotify never hears
//! about writes made by other hosts. The cost is a directory listing (which stats every entry to
//! tell directories from files) and one `stat` per file per poll, on a blocking thread. For the
//! usual few dozen files that is well under a millisecond. For 10,000 files in 100 directories it
//! measured about 30 ms per poll (ext4, warm cache, 2-CPU VM), mostly the listing; so the pause
//! between polls stretches to ten times the last poll's cost, and watching never takes more
//! than about a tenth of one thread. The price is latency: a change is acted on after up to
//! `poll` plus `debounce` rounded up to whole polls (300 ms with the defaults), later for huge
//! trees.
//!
//! A changed fingerprint is not acted on at once: editors and deployment tools write in several
//! steps, so the watcher waits until the fingerprint has stayed the same for
//! `debounce`. Only then are the files read, and a content hash decides whether anything
//! changed (a `touch` publishes nothing).
//!
//! Timestamps are coarse on some filesystems (a few milliseconds on ext4, up to seconds on
//! others), so a file rewritten with the same size just after it was read could keep its
//! fingerprint. As git does for its index, files modified shortly before they were read are
//! read once more [`RACY_WINDOW`] later.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zmesh_ca::Rfc3339;
use zmesh_config::diag::codes;
use zmesh_config::yaml::Pos;
use zmesh_config::{Diagnostic, FileKind, Loaded, Loader, ObjectRef, Origin, Severity};

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
/// valid YAML) are listed with kind `File` and the file as the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    pub kind: String,
    /// Empty for MeshConfig, Namespace and files.
    pub namespace: String,
    pub name: String,
    pub file: Option<String>,
    /// Where the document starts (for a rejected one, its first error when the start is unknown).
    pub line: usize,
    pub state: ResourceState,
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

impl StoreState {
    /// The state of a freshly accepted configuration: every resource in it accepted.
    pub fn accepted(generation: u64, at: SystemTime, loaded: Arc<Loaded>) -> StoreState {
        let mut resources: Vec<ResourceStatus> = loaded
            .sources
            .iter()
            .map(|source| ResourceStatus {
                kind: source.kind.clone(),
                namespace: source.namespace.clone(),
                name: source.name.clone(),
                file: file_of(&source.origin),
                line: source.origin.pos.line,
                state: ResourceState::Accepted,
            })
            .collect();
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
        let mut rejected: BTreeMap<(Key, Option<String>), (usize, Vec<String>)> = BTreeMap::new();
        let mut broken_files = BTreeSet::new();
        for error in &errors {
            let file = file_of(&error.origin);
            let key = match &error.object {
                Some(object) => object_key(object),
                None => {
                    broken_files.insert(file.clone());
                    ("File".to_owned(), String::new(), file.clone().unwrap_or_else(|| "<input>".to_owned()))
                }
            };
            let entry = rejected.entry((key, file)).or_insert((error.origin.pos.line, Vec::new()));
            entry.0 = entry.0.min(error.origin.pos.line);
            entry.1.push(error.to_string());
        }
        let rejected_keys: BTreeSet<Key> = rejected.keys().map(|(key, _)| key.clone()).collect();

        let mut resources = Vec::new();
        let in_force: BTreeSet<(Key, &str)> =
            self.loaded.sources.iter().map(|s| (source_key(&s.kind, &s.namespace, &s.name), &*s.json)).collect();
        let mut in_files = BTreeSet::new();
        for source in &attempt.sources {
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
            let (kind, namespace, name) = key;
            resources.push(ResourceStatus { kind, namespace, name, file, line: source.origin.pos.line, state });
        }
        // What is in force but gone from the files: removing it is part of the refused change.
        for source in &self.loaded.sources {
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
            let (kind, namespace, name) = key;
            resources.push(ResourceStatus { kind, namespace, name, file, line: source.origin.pos.line, state });
        }
        for ((key, file), (line, reasons)) in rejected {
            let (kind, namespace, name) = key;
            resources.push(ResourceStatus {
                kind,
                namespace,
                name,
                file,
                line,
                state: ResourceState::Rejected { reasons },
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
        })
    }
}

/// How often the file store looks, and how long a change must hold still before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    pub poll: Duration,
    pub debounce: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { poll: Duration::from_millis(100), debounce: Duration::from_millis(150) }
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
        let (fingerprint, snapshot) = first_read(&root, options.poll)?;
        let loaded = snapshot.load();
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
            recheck_at: snapshot.racy.then(|| Instant::now() + RACY_WINDOW),
            seen: snapshot.digest,
            in_force: snapshot.digest,
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

impl FileStore {
    /// The consumer has built what it needs from generation `generation`'s typed resources (the
    /// control plane's snapshot): drop them from the state kept here, keeping the MeshConfig,
    /// the accepted documents and the diagnostics the status pages use. A generation then costs
    /// about half as much while the next one loads. Subscribers are not woken: nothing they
    /// show changes.
    pub fn release_resources(&self, generation: u64) {
        self.states.send_if_modified(|state| {
            if state.generation != generation || state.loaded.config.resource_count() == 0 {
                return false;
            }
            let loaded = &state.loaded;
            let slim = Loaded {
                config: zmesh_config::Config { mesh: loaded.config.mesh.clone(), ..zmesh_config::Config::default() },
                diagnostics: loaded.diagnostics.clone(),
                files: loaded.files,
                documents: loaded.documents,
                sources: loaded.sources.clone(),
            };
            *state = Arc::new(StoreState { loaded: Arc::new(slim), ..(**state).clone() });
            false
        });
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

fn log_accepted(generation: u64, loaded: &Loaded, source: &str) {
    for warning in loaded.diagnostics.iter().filter(|d| d.severity == Severity::Warning) {
        warn!(%warning, "configuration warning");
    }
    info!(generation, resources = loaded.sources.len(), files = loaded.files, source, "configuration accepted");
}

/// What the tree looks like without reading it: every listed file and what it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    files: Vec<(PathBuf, Stamp)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    File {
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
        ino: u64,
        dev: u64,
    },
    /// A symlink to nothing: in a ConfigMap volume, a key being removed (the kubelet swaps
    /// `..data` first and deletes the stale link after).
    Dangling,
}

impl Stamp {
    fn modified(&self) -> Option<SystemTime> {
        match *self {
            Stamp::File { mtime: (seconds, nanos), .. } => {
                let seconds = u64::try_from(seconds).ok()?;
                let nanos = u32::try_from(nanos).ok()?;
                SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
            }
            Stamp::Dangling => None,
        }
    }
}

fn read_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Read { path: path.to_path_buf(), source }
}

/// Whether `error` reading `path` means a dangling symlink below the root. The root itself never
/// counts: a single configuration file vanishing is a failure to retry, not an empty config.
fn is_dangling(root: &Path, path: &Path, error: &std::io::Error) -> bool {
    path != root
        && error.kind() == std::io::ErrorKind::NotFound
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

impl Fingerprint {
    fn take(root: &Path) -> Result<Fingerprint, StoreError> {
        let paths = zmesh_config::yaml_files(root).map_err(|e| read_error(root, e))?;
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let stamp = match std::fs::metadata(&path) {
                Ok(m) => Stamp::File {
                    len: m.len(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    ctime: (m.ctime(), m.ctime_nsec()),
                    ino: m.ino(),
                    dev: m.dev(),
                },
                Err(error) if is_dangling(root, &path, &error) => Stamp::Dangling,
                Err(error) => return Err(read_error(&path, error)),
            };
            files.push((path, stamp));
        }
        Ok(Fingerprint { files })
    }
}

type Digest = [u8; 32];

/// The contents of every file of a fingerprint.
#[derive(Debug)]
struct Snapshot {
    files: Vec<(PathBuf, Vec<u8>)>,
    /// SHA-256 over every path and content, length-prefixed.
    digest: Digest,
    /// Some file was modified so shortly before this read that a same-size rewrite could go
    /// unseen by its timestamps.
    racy: bool,
}

impl Snapshot {
    fn read(root: &Path, fingerprint: &Fingerprint) -> Result<Snapshot, StoreError> {
        let started = SystemTime::now();
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut files = Vec::with_capacity(fingerprint.files.len());
        for (path, _) in &fingerprint.files {
            let bytes = match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(error) if is_dangling(root, path, &error) => continue,
                Err(error) => return Err(read_error(path, error)),
            };
            let name = path.as_os_str().as_encoded_bytes();
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name);
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
            files.push((path.clone(), bytes));
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(hasher.finish().as_ref());
        // A timestamp in the future (clock skew on a network mount) counts as racy too.
        let racy = fingerprint
            .files
            .iter()
            .filter_map(|(_, stamp)| stamp.modified())
            .any(|modified| modified + RACY_WINDOW > started);
        Ok(Snapshot { files, digest, racy })
    }

    /// Validate the whole tree with one loader, files in sorted order (as `Loader::add_path`
    /// does, so PeerAuthentication ages come out the same).
    ///
    /// Two stages run at once: one thread parses the YAML of the next files while this one
    /// reads and validates the documents of the current file. The queue between them is short,
    /// so only a couple of parsed files exist at a time.
    fn load(&self) -> Loaded {
        let mut loader = Loader::new();
        let mut not_utf8 = Vec::new();
        std::thread::scope(|scope| {
            let (parsed, files) = std::sync::mpsc::sync_channel(2);
            let parser = Loader::new();
            scope.spawn(move || {
                for (path, bytes) in &self.files {
                    let name: Arc<str> = path.display().to_string().into();
                    let file = match std::str::from_utf8(bytes) {
                        Ok(text) => Ok(parser.parse(Some(name), text, FileKind::Resources)),
                        Err(error) => Err(not_utf8_diagnostic(name, bytes, &error)),
                    };
                    if parsed.send(file).is_err() {
                        return;
                    }
                }
            });
            for file in files {
                match file {
                    Ok(file) => loader.add_parsed(file),
                    Err(diagnostic) => not_utf8.push(diagnostic),
                }
            }
        });
        let mut loaded = loader.finish();
        loaded.files += not_utf8.len();
        loaded.diagnostics.extend(not_utf8);
        loaded
    }
}

/// The loader's own "not UTF-8" error, with the position of the first bad byte.
fn not_utf8_diagnostic(file: Arc<str>, bytes: &[u8], error: &std::str::Utf8Error) -> Diagnostic {
    let valid = &bytes[..error.valid_up_to()];
    let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
    Diagnostic {
        severity: Severity::Error,
        code: Some(codes::SCHEMA),
        origin: Origin { file: Some(file), pos: Pos { line, column } },
        object: None,
        field: String::new(),
        message: "the file is not UTF-8 text".into(),
        hint: Some("save it as UTF-8".into()),
    }
}

/// The first read, retried briefly when a file vanishes between listing and reading (a rename
/// in progress), so that a store opened during an update does not fail for nothing.
fn first_read(root: &Path, pause: Duration) -> Result<(Fingerprint, Snapshot), StoreError> {
    let mut attempts = 0;
    loop {
        let result = Fingerprint::take(root).and_then(|fingerprint| {
            let snapshot = Snapshot::read(root, &fingerprint)?;
            Ok((fingerprint, snapshot))
        });
        match result {
            Err(StoreError::Read { source, .. }) if attempts < 2 && source.kind() == std::io::ErrorKind::NotFound => {
                attempts += 1;
                std::thread::sleep(pause);
            }
            other => return other,
        }
    }
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
    /// The content last loaded, accepted or not.
    seen: Digest,
    /// The content of the configuration in force.
    in_force: Digest,
    /// Reads that failed in a row.
    failures: u32,
}

impl Watcher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut pause = self.options.poll;
        loop {
            // Nobody can ever see another state: the store and every receiver are gone.
            if Arc::strong_count(&self.states) == 1 && self.states.is_closed() {
                debug!(source = %self.source, "config store dropped; watcher stops");
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = async {
                    tokio::time::sleep(pause).await;
                    let spent = self.poll().await;
                    // A change seen and waiting out its debounce is confirmed as soon as the
                    // debounce allows, not after a large tree's long pause.
                    pause = if self.candidate.is_some() {
                        self.options.debounce.max(self.options.poll)
                    } else {
                        self.options.poll.max(spent * POLL_COST_RATIO)
                    };
                } => {}
            }
        }
    }

    /// One look at the tree; returns what taking its fingerprint cost.
    async fn poll(&mut self) -> Duration {
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
        let snapshot = match blocking(&self.root, move || Snapshot::read(&root, &stamps)).await {
            Ok(snapshot) => snapshot,
            // The candidate stays, so the next poll tries again (a file vanished mid-rename).
            Err(error) => return self.failed(&error),
        };
        self.failures = 0;
        // The fingerprint taken before the read: a write during the read changes the next one.
        self.last = fingerprint;
        self.candidate = None;
        self.recheck_at = snapshot.racy.then(|| Instant::now() + RACY_WINDOW);
        if snapshot.digest == self.seen {
            debug!(source = %self.source, "files touched, content unchanged");
            return;
        }
        self.seen = snapshot.digest;
        let digest = snapshot.digest;
        let loaded = match blocking(&self.root, move || Ok(snapshot.load())).await {
            Ok(loaded) => loaded,
            Err(error) => return self.failed(&error),
        };
        self.publish(digest, loaded);
    }

    fn publish(&mut self, digest: Digest, loaded: Loaded) {
        let current = self.states.borrow().clone();
        let now = SystemTime::now();
        let state = if loaded.has_errors() {
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
    fn a_file_modified_just_before_it_was_read_is_read_again_later() {
        let dir = zmesh_testkit::TempDir::new("store-racy");
        let file = dir.write("a.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n");
        let fresh = Fingerprint::take(dir.path()).expect("fingerprint");
        assert!(Snapshot::read(dir.path(), &fresh).expect("read").racy);

        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&file).and_then(|f| f.set_modified(an_hour_ago)).expect("set mtime");
        let old = Fingerprint::take(dir.path()).expect("fingerprint");
        assert_ne!(old, fresh, "mtime is part of the fingerprint");
        assert!(!Snapshot::read(dir.path(), &old).expect("read").racy);
    }

    #[test]
    fn a_file_that_is_not_utf8_is_an_error_at_its_first_bad_byte() {
        let dir = zmesh_testkit::TempDir::new("store-utf8");
        let path = dir.path().join("a.yaml");
        std::fs::write(&path, b"kind: x\nab: \xff\n").expect("write");
        let fingerprint = Fingerprint::take(dir.path()).expect("fingerprint");
        let loaded = Snapshot::read(dir.path(), &fingerprint).expect("read").load();
        let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
        assert_eq!(errors, [format!("{}:2:5: error: the file is not UTF-8 text; save it as UTF-8", path.display())]);
        assert_eq!(loaded.files, 1);
    }

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
