//! The file config store puts a change in force only when all of it is valid, keeps the last
//! good configuration otherwise, and follows the ways files really change: in-place edits,
//! atomic renames, ConfigMap symlink swaps, deletions and new files.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zmesh_config::authz::Action;
use zmesh_control::store::{
    ConfigStore, FileStore, ResourceState, ResourceStatus, StoreError, StoreState, WatchOptions,
};
use zmesh_testkit::TempDir;

/// The promise for a single edit with the default options (poll 100 ms + debounce 150 ms).
const PROMPT: Duration = Duration::from_secs(1);
/// Bound for the other waits; generous because other builds and tests may load the machine.
const SETTLE: Duration = Duration::from_secs(5);
/// How long "nothing happens" is watched: several polls and more than a debounce.
const QUIET: Duration = Duration::from_millis(600);

fn policy(name: &str, action: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\n\
         kind: AuthorizationPolicy\n\
         metadata:\n  name: {name}\n  namespace: shop\n\
         spec:\n  action: {action}\n  rules:\n    - from:\n        - source:\n            namespaces: [\"shop\"]\n"
    )
}

fn documents(docs: &[String]) -> String {
    docs.join("---\n")
}

struct Watched {
    store: FileStore,
    states: watch::Receiver<Arc<StoreState>>,
    shutdown: CancellationToken,
}

fn open(path: &Path) -> Watched {
    open_with(path, WatchOptions::default())
}

/// Polling alone, as on a filesystem without inotify.
fn polling_only() -> WatchOptions {
    WatchOptions { notify: false, ..WatchOptions::default() }
}

fn open_with(path: &Path, options: WatchOptions) -> Watched {
    let shutdown = CancellationToken::new();
    let store = FileStore::open(path, options, shutdown.clone()).expect("the first load is valid");
    let states = store.subscribe();
    Watched { store, states, shutdown }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Watched {
    fn now(&self) -> Arc<StoreState> {
        self.states.borrow().clone()
    }

    /// The next published state, within `within`.
    async fn next(&mut self, within: Duration) -> Arc<StoreState> {
        tokio::time::timeout(within, self.states.changed())
            .await
            .expect("a new state in time")
            .expect("the store is alive");
        self.states.borrow_and_update().clone()
    }

    /// The first published state that satisfies `wanted`, within `within`. For changes made in
    /// several steps, which a loaded machine may let the watcher see one at a time.
    async fn until(&mut self, within: Duration, wanted: impl Fn(&StoreState) -> bool) -> Arc<StoreState> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let state = self.next(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
            if wanted(&state) {
                return state;
            }
        }
    }

    /// Nothing is published for `QUIET`.
    async fn quiet(&mut self) {
        if tokio::time::timeout(QUIET, self.states.changed()).await.is_ok() {
            panic!("nothing should have been published, got {:#?}", self.states.borrow().to_json());
        }
    }
}

/// `namespace/name` of every AuthorizationPolicy in force, sorted.
fn policies(state: &StoreState) -> Vec<String> {
    let mut keys: Vec<String> = state
        .loaded
        .sources
        .iter()
        .filter(|s| s.kind == "AuthorizationPolicy")
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    keys.sort();
    keys
}

/// The action of the AuthorizationPolicy `name` in force, read back from its document as a proxy
/// reads it (the store keeps policies as documents only).
fn action(state: &StoreState, name: &str) -> Action {
    let source = state
        .loaded
        .sources
        .iter()
        .find(|s| s.kind == "AuthorizationPolicy" && s.name == name)
        .unwrap_or_else(|| panic!("{name} is in force"));
    let loaded = zmesh_config::load_str(&source.json);
    loaded.config.authorization_policies.first().unwrap_or_else(|| panic!("{name}: {:?}", loaded.diagnostics)).action
}

fn status<'s>(state: &'s StoreState, kind: &str, name: &str) -> &'s ResourceStatus {
    state
        .resources
        .iter()
        .find(|r| r.kind == kind && r.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {name}: {:#?}", state.resources))
}

fn all_accepted(state: &StoreState) -> bool {
    state.resources.iter().all(|r| r.state == ResourceState::Accepted)
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

#[tokio::test]
async fn the_first_load_puts_every_resource_in_force() {
    let dir = TempDir::new("store-first");
    dir.write("mesh.yaml", "rootNamespace: mesh-root\n");
    let file = dir.write("policies.yaml", &documents(&[policy("allow-web", "ALLOW"), policy("deny-bots", "DENY")]));
    let w = open(dir.path());

    let state = w.now();
    assert_eq!(state.generation, 1);
    assert!(state.rejection.is_none());
    assert_eq!(policies(&state), ["shop/allow-web", "shop/deny-bots"]);
    assert_eq!(state.loaded.config.mesh.root_namespace, "mesh-root", "mesh.yaml is read as MeshConfig");
    assert_eq!(w.store.source(), format!("files under {}", dir.path().display()));

    let kinds: Vec<&str> = state.resources.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["MeshConfig", "AuthorizationPolicy", "AuthorizationPolicy"], "{:#?}", state.resources);
    assert!(all_accepted(&state));
    let deny = status(&state, "AuthorizationPolicy", "deny-bots");
    assert_eq!((deny.namespace.as_str(), deny.file.as_deref()), ("shop", Some(&*file.display().to_string())));
    assert_eq!(deny.line, line_of(&documents(&[policy("allow-web", "ALLOW"), policy("deny-bots", "DENY")]), "---") + 1);

    let json = state.to_json();
    assert_eq!(json["generation"], 1);
    assert!(json["acceptedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{json}");
    assert_eq!(json["rejection"], serde_json::Value::Null);
    assert_eq!(json["resources"][2]["name"], "deny-bots");
    assert_eq!(json["resources"][2]["status"], "accepted");
    assert_eq!(json["resources"][2]["reasons"], serde_json::json!([]));
}

#[tokio::test]
async fn an_edit_is_in_force_as_generation_2_within_a_second() {
    let dir = TempDir::new("store-edit");
    dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let mut w = open(dir.path());

    dir.write("a.yaml", &policy("allow-web", "DENY"));
    let state = w.next(PROMPT).await;
    assert_eq!(state.generation, 2);
    assert_eq!(action(&state, "allow-web"), Action::Deny);
    assert!(state.rejection.is_none());
}

#[tokio::test]
async fn an_invalid_change_is_refused_whole_and_its_fix_is_the_next_generation() {
    let dir = TempDir::new("store-invalid");
    dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let b = dir.write("b.yaml", &policy("deny-bots", "DENY"));
    dir.write("c.yaml", &policy("allow-metrics", "ALLOW"));
    let mut w = open(dir.path());

    dir.write("c.yaml", &policy("allow-metrics", "DENY"));
    let good = w.next(SETTLE).await;
    assert_eq!(good.generation, 2);
    let in_force = policies(&good);

    // One change: a bad action in a.yaml, a new policy next to it, and b.yaml removed.
    let bad_text = documents(&[policy("allow-web", "MAYBE"), policy("allow-api", "ALLOW")]);
    let a = dir.write("a.yaml", &bad_text);
    std::fs::remove_file(&b).expect("remove b.yaml");
    let refused = w
        .until(SETTLE, |s| {
            s.rejection.is_some()
                && s.resources.iter().all(|r| r.name != "deny-bots" || r.state != ResourceState::Accepted)
        })
        .await;

    assert_eq!(refused.generation, 2, "a refused change is no new generation");
    assert_eq!(policies(&refused), in_force, "the last good configuration stays in force");
    assert_eq!(action(&refused, "allow-web"), Action::Allow);
    assert_eq!(refused.accepted_at, good.accepted_at);

    let rejection = refused.rejection.as_ref().expect("rejection");
    assert_eq!(rejection.errors.len(), 1, "{:#?}", rejection.errors);
    let error = &rejection.errors[0];
    let at = format!("{}:{}:", a.display(), line_of(&bad_text, "MAYBE"));
    assert!(error.starts_with(&at), "names file:line: {error}");
    assert!(error.contains("AuthorizationPolicy shop/allow-web") && error.contains("spec.action"), "{error}");
    assert!(error.contains("MAYBE"), "{error}");

    match &status(&refused, "AuthorizationPolicy", "allow-web").state {
        ResourceState::Rejected { reasons } => assert_eq!(reasons, &rejection.errors),
        other => panic!("allow-web should be rejected, is {other:?}"),
    }
    match &status(&refused, "AuthorizationPolicy", "allow-api").state {
        ResourceState::Pending { because } => assert!(because.contains("refused as a whole"), "{because}"),
        other => panic!("allow-api should be pending, is {other:?}"),
    }
    let removed = status(&refused, "AuthorizationPolicy", "deny-bots");
    match &removed.state {
        ResourceState::Pending { because } => assert!(because.contains("removed from the files"), "{because}"),
        other => panic!("deny-bots should be pending removal, is {other:?}"),
    }
    assert_eq!(status(&refused, "AuthorizationPolicy", "allow-metrics").state, ResourceState::Accepted);

    let json = refused.to_json();
    assert_eq!(json["generation"], 2);
    assert_eq!(json["rejection"]["errors"][0], error.as_str());
    assert!(json["rejection"]["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{json}");
    let statuses: Vec<(&str, &str)> = json["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| (r["name"].as_str().unwrap_or(""), r["status"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        statuses,
        [("allow-web", "rejected"), ("allow-api", "pending"), ("deny-bots", "pending"), ("allow-metrics", "accepted")]
    );

    dir.write("a.yaml", &documents(&[policy("allow-web", "DENY"), policy("allow-api", "ALLOW")]));
    let fixed = w.next(SETTLE).await;
    assert_eq!(fixed.generation, 3);
    assert!(fixed.rejection.is_none());
    assert_eq!(policies(&fixed), ["shop/allow-api", "shop/allow-metrics", "shop/allow-web"]);
    assert_eq!(action(&fixed, "allow-web"), Action::Deny);
    assert!(all_accepted(&fixed), "{:#?}", fixed.resources);
}

#[tokio::test]
async fn a_file_that_is_not_yaml_is_rejected_as_a_file_and_undoing_it_clears_the_refusal() {
    let dir = TempDir::new("store-syntax");
    dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let original = policy("deny-bots", "DENY");
    let b = dir.write("b.yaml", &original);
    let mut w = open(dir.path());

    dir.write("b.yaml", "apiVersion: v1\nkind: [unclosed\n");
    let refused = w.next(SETTLE).await;
    assert_eq!(refused.generation, 1);
    let rejection = refused.rejection.as_ref().expect("rejection");
    assert!(rejection.errors[0].contains("YAML syntax error"), "{:?}", rejection.errors);
    let name = b.display().to_string();
    let file = status(&refused, "File", &name);
    assert_eq!(file.file.as_deref(), Some(name.as_str()));
    assert!(matches!(&file.state, ResourceState::Rejected { reasons } if reasons == &rejection.errors));
    // What b.yaml held stays in force, and says so.
    assert_eq!(status(&refused, "AuthorizationPolicy", "deny-bots").state, ResourceState::Accepted);
    assert_eq!(status(&refused, "AuthorizationPolicy", "allow-web").state, ResourceState::Accepted);

    // Touching the refused file refuses nothing new.
    std::fs::File::options()
        .write(true)
        .open(&b)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(1)))
        .expect("touch b.yaml");
    w.quiet().await;

    // Back to exactly what is in force: the refusal goes, the generation stays.
    dir.write("b.yaml", &original);
    let undone = w.next(SETTLE).await;
    assert_eq!(undone.generation, 1);
    assert!(undone.rejection.is_none());
    assert!(all_accepted(&undone));
    assert!(!undone.resources.iter().any(|r| r.kind == "File"));
}

#[tokio::test]
async fn an_atomic_rename_over_a_file_is_seen() {
    atomic_rename(WatchOptions::default()).await;
}

#[tokio::test]
async fn an_atomic_rename_over_a_file_is_seen_by_polling_alone() {
    atomic_rename(polling_only()).await;
}

#[tokio::test]
async fn a_change_is_heard_without_waiting_for_the_next_poll() {
    let dir = TempDir::new("store-heard");
    let file = dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let slow_polls = WatchOptions { poll: Duration::from_secs(60), ..WatchOptions::default() };
    let mut w = open_with(dir.path(), slow_polls);
    // Past the watcher's first look (at once after opening); the next poll is a minute away.
    tokio::time::sleep(QUIET).await;
    let started = tokio::time::Instant::now();
    std::fs::write(&file, policy("allow-web", "DENY")).expect("edit");
    let state = w.next(SETTLE).await;
    assert_eq!(action(&state, "allow-web"), Action::Deny);
    assert!(started.elapsed() < Duration::from_secs(5), "heard, not polled: {:?}", started.elapsed());
}

async fn atomic_rename(options: WatchOptions) {
    let dir = TempDir::new("store-rename");
    let elsewhere = TempDir::new("store-rename-tmp");
    let target = dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let mut w = open_with(dir.path(), options);

    let tmp = elsewhere.write("a.yaml.tmp", &policy("allow-web", "DENY"));
    std::fs::rename(&tmp, &target).expect("rename over a.yaml");
    let state = w.next(SETTLE).await;
    assert_eq!(state.generation, 2);
    assert_eq!(action(&state, "allow-web"), Action::Deny);
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_seen_and_a_dropped_key_goes_away() {
    configmap_swap(WatchOptions::default()).await;
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_seen_by_polling_alone() {
    configmap_swap(polling_only()).await;
}

async fn configmap_swap(options: WatchOptions) {
    use std::os::unix::fs::symlink;

    let dir = TempDir::new("store-configmap");
    let root = dir.path();
    // The kubelet's layout: data in a timestamped directory, `..data` pointing at it, and one
    // visible symlink per key through `..data`.
    std::fs::create_dir(root.join("..2026_01_01_1")).expect("mkdir");
    dir.write("..2026_01_01_1/policies.yaml", &policy("allow-web", "ALLOW"));
    dir.write("..2026_01_01_1/extra.yaml", &policy("allow-metrics", "ALLOW"));
    symlink("..2026_01_01_1", root.join("..data")).expect("..data");
    symlink("..data/policies.yaml", root.join("policies.yaml")).expect("policies.yaml");
    symlink("..data/extra.yaml", root.join("extra.yaml")).expect("extra.yaml");
    let mut w = open_with(root, options);
    assert_eq!(policies(&w.now()), ["shop/allow-metrics", "shop/allow-web"]);

    // A new version without the `extra.yaml` key, swapped in by renaming a new link over `..data`.
    std::fs::create_dir(root.join("..2026_01_01_2")).expect("mkdir");
    dir.write("..2026_01_01_2/policies.yaml", &policy("allow-web", "DENY"));
    symlink("..2026_01_01_2", root.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(root.join("..2026_01_01_1")).expect("remove the old version");

    // `extra.yaml` now dangles (the kubelet removes it a moment later): its key is gone.
    let state = w.next(SETTLE).await;
    assert_eq!(state.generation, 2);
    assert!(state.rejection.is_none(), "{:?}", state.rejection);
    assert_eq!(policies(&state), ["shop/allow-web"]);
    assert_eq!(action(&state, "allow-web"), Action::Deny);

    std::fs::remove_file(root.join("extra.yaml")).expect("remove the stale link");
    w.quiet().await;
}

#[tokio::test]
async fn a_deleted_file_takes_its_resources_and_a_new_file_brings_them() {
    let dir = TempDir::new("store-delete");
    dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let b = dir.write("b.yaml", &policy("deny-bots", "DENY"));
    let mut w = open(dir.path());

    std::fs::remove_file(&b).expect("remove b.yaml");
    let state = w.next(SETTLE).await;
    assert_eq!(state.generation, 2);
    assert_eq!(policies(&state), ["shop/allow-web"]);
    assert_eq!(state.resources.len(), 1);

    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    dir.write("sub/c.yml", &policy("allow-api", "ALLOW"));
    let state = w.next(SETTLE).await;
    assert_eq!(state.generation, 3);
    assert_eq!(policies(&state), ["shop/allow-api", "shop/allow-web"]);
}

#[tokio::test]
async fn touching_a_file_without_changing_it_publishes_nothing() {
    let dir = TempDir::new("store-touch");
    let text = policy("allow-web", "ALLOW");
    let a = dir.write("a.yaml", &text);
    let mut w = open(dir.path());

    dir.write("a.yaml", &text);
    std::fs::File::options()
        .write(true)
        .open(&a)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(1)))
        .expect("touch a.yaml");
    w.quiet().await;

    // The next real change is generation 2: the touch was not counted as one.
    dir.write("a.yaml", &policy("allow-web", "DENY"));
    let state = w.next(SETTLE).await;
    assert_eq!(state.generation, 2);
}

#[tokio::test]
async fn an_invalid_first_load_is_refused_with_every_diagnostic() {
    let dir = TempDir::new("store-first-invalid");
    let text = documents(&[policy("allow-web", "MAYBE"), policy("Bad_Name", "ALLOW")]);
    let a = dir.write("a.yaml", &text);

    let error = FileStore::open(dir.path(), WatchOptions::default(), CancellationToken::new())
        .expect_err("an invalid first load is refused");
    let StoreError::Invalid { errors } = &error else { panic!("expected Invalid, got {error}") };
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with(&format!("{}:{}:", a.display(), line_of(&text, "MAYBE"))), "{}", errors[0]);
    assert!(errors[0].contains("spec.action"), "{}", errors[0]);
    assert!(errors[1].starts_with(&format!("{}:{}:", a.display(), line_of(&text, "Bad_Name"))), "{}", errors[1]);
    let message = error.to_string();
    assert!(message.starts_with("the configuration is not valid (2 errors)"), "{message}");
    assert!(errors.iter().all(|e| message.contains(e.as_str())), "{message}");

    let missing = FileStore::open(&dir.path().join("nowhere"), WatchOptions::default(), CancellationToken::new())
        .expect_err("a missing path is refused");
    assert!(matches!(missing, StoreError::Read { .. }), "{missing}");
}

#[tokio::test]
async fn a_single_file_is_watched_through_edits_and_replacement() {
    let dir = TempDir::new("store-single");
    let elsewhere = TempDir::new("store-single-tmp");
    let file = dir.write("mesh-policies.yaml", &policy("allow-web", "ALLOW"));
    dir.write("ignored.yaml", &policy("not-read", "ALLOW"));
    let mut w = open(&file);
    assert_eq!(w.store.source(), format!("file {}", file.display()));
    assert_eq!(policies(&w.now()), ["shop/allow-web"]);

    dir.write("mesh-policies.yaml", &policy("allow-web", "DENY"));
    let state = w.next(SETTLE).await;
    assert_eq!((state.generation, action(&state, "allow-web")), (2, Action::Deny));

    let tmp = elsewhere.write("new.yaml", &documents(&[policy("allow-web", "DENY"), policy("allow-api", "ALLOW")]));
    std::fs::rename(&tmp, &file).expect("rename over the file");
    let state = w.next(SETTLE).await;
    assert_eq!(state.generation, 3);
    assert_eq!(policies(&state), ["shop/allow-api", "shop/allow-web"]);
}

#[tokio::test]
async fn after_shutdown_nothing_is_watched() {
    let dir = TempDir::new("store-shutdown");
    dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let mut w = open(dir.path());

    w.shutdown.cancel();
    dir.write("a.yaml", &policy("allow-web", "DENY"));
    w.quiet().await;
    assert_eq!(w.now().generation, 1);
}

#[test]
fn opening_outside_a_runtime_is_an_error() {
    let dir = TempDir::new("store-no-runtime");
    dir.write("a.yaml", &policy("allow-web", "ALLOW"));
    let error = FileStore::open(dir.path(), WatchOptions::default(), CancellationToken::new())
        .expect_err("no runtime to run the watcher");
    assert!(matches!(error, StoreError::NoRuntime), "{error}");
}
