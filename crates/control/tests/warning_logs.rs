//! Each warning of the configuration is logged once per change read — accepted or refused —
//! and never again while the files stay the same. Alone in its test binary: the log capture is
//! a thread-local subscriber, and tracing caches per call site whether anyone listens, which a
//! concurrent test logging without a subscriber could decide first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use zmesh_control::store::{ConfigStore, FileStore, WatchOptions};
use zmesh_testkit::TempDir;

/// Bound for a change to be published; generous because other builds and tests may load the
/// machine.
const SETTLE: Duration = Duration::from_secs(10);
/// How long "nothing happens" is watched: several polls and more than a debounce.
const QUIET: Duration = Duration::from_millis(600);

/// A Sidecar (skipped: ZM2013, line 1) and a NetworkPolicy (not enforced: ZM2011, line 6).
const SIDECAR_AND_NETWORK_POLICY: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec: {egress: [{hosts: [./*]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]
";

fn policy(name: &str, action: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{action: {action}, rules: [{{}}]}}\n"
    )
}

/// Log output, shared with the subscriber that writes it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("the log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().expect("the log buffer")).into_owned();
        text.lines().filter(|line| line.contains(needle)).count()
    }
}

// One thread: the watcher logs on the thread whose subscriber captures it.
#[tokio::test(flavor = "current_thread")]
async fn each_warning_is_logged_once_per_change_and_not_again_while_the_files_stay_the_same() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = TempDir::new("status-warnings-log");
    let traffic = dir.write("traffic.yaml", SIDECAR_AND_NETWORK_POLICY);
    dir.write("policy.yaml", &policy("allow-web", "ALLOW"));
    let shutdown = CancellationToken::new();
    let store = FileStore::open(dir.path(), WatchOptions::default(), shutdown.clone()).expect("a valid first load");
    let mut states = store.subscribe();
    let logged = || (captured.count("ZM2011"), captured.count("ZM2013"));
    assert_eq!(logged(), (1, 1), "the first load");

    // Polls and a touch change nothing: nothing is logged again.
    std::fs::File::options()
        .write(true)
        .open(&traffic)
        .and_then(|f| f.set_modified(SystemTime::now() + Duration::from_secs(1)))
        .expect("touch");
    assert!(tokio::time::timeout(QUIET, states.changed()).await.is_err(), "a touch publishes nothing");
    assert_eq!(logged(), (1, 1), "polls and a touch");

    // An accepted change and a refused one: each logs the warnings of what it read, once.
    dir.write("policy.yaml", &policy("allow-web", "DENY"));
    tokio::time::timeout(SETTLE, states.changed()).await.expect("the change in time").expect("store alive");
    assert_eq!(states.borrow_and_update().generation, 2);
    assert_eq!(logged(), (2, 2), "an accepted change");
    dir.write("policy.yaml", &policy("allow-web", "MAYBE"));
    tokio::time::timeout(SETTLE, states.changed()).await.expect("the change in time").expect("store alive");
    assert!(states.borrow_and_update().rejection.is_some());
    assert_eq!(logged(), (3, 3), "a refused change");
    assert!(tokio::time::timeout(QUIET, states.changed()).await.is_err());
    assert_eq!(logged(), (3, 3), "nothing more while the files stay the same");
    let line = format!("{}:6:", traffic.display());
    assert!(captured.count(&line) == 3, "the log names file:line");
    shutdown.cancel();
}
