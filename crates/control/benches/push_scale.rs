//! Control plane push at scale: N simulated proxies (default 1,000) connected to one control
//! plane holding M AuthorizationPolicies (default 10,000); one policy change must reach every
//! proxy, acknowledged, in under a second, with the control plane under 200 MiB.
//!
//! ```text
//! cargo build --release -p zmesh
//! cargo bench -p zmesh-control --bench push_scale
//! QUICK=1 cargo bench -p zmesh-control --bench push_scale        # a smoke run: 50 proxies
//! ```
//!
//! The control plane is the real `zmesh control-plane` binary in its own process (so its memory
//! is its own), found at `$ZMESH` or `target/release/zmesh` (a relative `$ZMESH` is taken from
//! the workspace root). The bench writes the mesh into a temporary directory, starts the control
//! plane on free loopback ports, issues each workload's SVID from the CA the control plane
//! created (what a proxy holds once it has bootstrapped), and opens one
//! `zmesh.config.v1.ConfigService` stream per simulated proxy, each over its own mTLS connection
//! presenting that SVID, as `zmesh proxy` does. Each simulated proxy keeps its resources (key → version)
//! and ACKs every response at once, as `zmesh proxy` does once its configuration compiles.
//!
//! Knobs (environment): `PROXIES` (1000), `POLICIES` (10000), `NAMESPACES` (50), `CHANGES` (5),
//! `POLL_MS` (100, the control plane's `--poll-ms`),
//! `LAYOUT` (`per-resource`: one file per document in a directory per namespace, or
//! `per-namespace`: one file per namespace), `PAUSE_MS` (3000, quiet time before each change),
//! `CLIENT_THREADS` (2), `QUICK=1` (50 proxies, 500 policies, 5 namespaces, 2 changes),
//! `KEEP=1` (keep the temporary directory and the control plane's log).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use zmesh_control::snapshot::Snapshot;
use zmesh_tls::{CertStore, ControlCredentials, Identity, TlsOptions, TrustBundle, TrustDomains};
use zmesh_xds::config::config_service_client::ConfigServiceClient;
use zmesh_xds::config::{ConfigRequest, ConfigResponse, Node};

type Result<T, E = String> = std::result::Result<T, E>;

const ROOT_NAMESPACE: &str = "istio-system";
const TRUST_DOMAIN: &str = "cluster.local";
/// The store stretches its pause between polls to this many times what the last poll cost
/// (mirrors `POLL_COST_RATIO` in `zmesh_control::store`), so a large tree is polled less often.
const POLL_COST_RATIO: u32 = 10;
const LOG_FILTER: &str = "warn,zmesh_control::store=info,zmesh_control::plane=info";

const APPS: [&str; 20] = [
    "frontend",
    "api",
    "checkout",
    "cart",
    "orders",
    "payments",
    "ledger",
    "inventory",
    "search",
    "reviews",
    "recommend",
    "shipping",
    "notify",
    "auth",
    "users",
    "catalog",
    "pricing",
    "reports",
    "gateway",
    "worker",
];
const DOMAINS: [&str; 10] =
    ["shop", "payments", "ledger", "search", "media", "identity", "shipping", "catalog", "billing", "analytics"];
const STAGES: [&str; 5] = ["prod", "staging", "dev", "qa", "perf"];
const RESOURCES: [&str; 8] = ["orders", "items", "accounts", "charges", "refunds", "users", "sessions", "reports"];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("push_scale: {error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    PerResource,
    PerNamespace,
}

#[derive(Debug)]
struct Knobs {
    proxies: usize,
    policies: usize,
    namespaces: usize,
    changes: usize,
    poll_ms: u64,
    layout: Layout,
    pause: Duration,
    client_threads: usize,
    keep: bool,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_num(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().map_err(|_| format!("{name}={value}: not a whole number")),
        Err(_) => Ok(default),
    }
}

impl Knobs {
    fn from_env() -> Result<Knobs> {
        let quick = env_flag("QUICK");
        let (proxies, policies, namespaces, changes) = if quick { (50, 500, 5, 2) } else { (1000, 10_000, 50, 5) };
        let layout = match std::env::var("LAYOUT").as_deref() {
            Err(_) | Ok("per-resource") => Layout::PerResource,
            Ok("per-namespace") => Layout::PerNamespace,
            Ok(other) => return Err(format!("LAYOUT={other}: use per-resource or per-namespace")),
        };
        let knobs = Knobs {
            proxies: env_num("PROXIES", proxies)?,
            policies: env_num("POLICIES", policies)?,
            namespaces: env_num("NAMESPACES", namespaces)?,
            changes: env_num("CHANGES", changes)?,
            poll_ms: env_num("POLL_MS", 100)? as u64,
            layout,
            pause: Duration::from_millis(env_num("PAUSE_MS", 3000)? as u64),
            client_threads: env_num("CLIENT_THREADS", 2)?,
            keep: env_flag("KEEP"),
        };
        if knobs.proxies == 0 || knobs.policies == 0 || knobs.namespaces == 0 {
            return Err("PROXIES, POLICIES and NAMESPACES must be at least 1".into());
        }
        if knobs.client_threads == 0 {
            return Err("CLIENT_THREADS must be at least 1".into());
        }
        Ok(knobs)
    }
}

fn run() -> Result<()> {
    let knobs = Knobs::from_env()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let zmesh = match std::env::var_os("ZMESH") {
        Some(path) => root.join(path),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| root.join("target"), |dir| root.join(dir))
            .join("release/zmesh"),
    };
    if !zmesh.is_file() {
        return Err(format!(
            "no zmesh binary at {}: build it first with `cargo build --release -p zmesh` (or point ZMESH at one)",
            zmesh.display()
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knobs.client_threads)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let dir = zmesh_testkit::TempDir::new("push-scale");
    let result = runtime.block_on(bench(&knobs, &zmesh, dir.path()));
    if knobs.keep {
        eprintln!("push_scale: kept {}", dir.path().display());
        std::mem::forget(dir);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// The mesh

struct Doc {
    namespace: String,
    /// The file name in the per-resource layout, without `.yaml`.
    stem: String,
    text: String,
}

struct Workload {
    namespace: String,
    name: String,
    service_account: String,
}

struct Mesh {
    docs: Vec<Doc>,
    workloads: Vec<Workload>,
    root_policies: usize,
    peer_authentications: usize,
    /// The document every change rewrites: a mesh-wide DENY in the root namespace, so the new
    /// content goes to every proxy.
    target: usize,
}

fn namespace_name(i: usize) -> String {
    let base = format!("{}-{}", DOMAINS[i % DOMAINS.len()], STAGES[(i / DOMAINS.len()) % STAGES.len()]);
    let cycle = DOMAINS.len() * STAGES.len();
    if i < cycle { base } else { format!("{base}-{}", i / cycle) }
}

fn workload_entry(i: usize, namespace: &str, name: &str, app: &str, version: usize) -> String {
    // 10.1.0.0 upwards: never reachable, never needs to be.
    let address = i + (1 << 16);
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: {name}
  namespace: {namespace}
spec:
  address: 10.{}.{}.{}
  serviceAccount: {app}
  labels:
    app: {app}
    version: v{version}
  ports:
    http: 8080
    grpc-api: 9090
",
        (address >> 16) & 0xff,
        (address >> 8) & 0xff,
        address & 0xff,
    )
}

/// A mesh-wide DENY (no selector) in the root namespace; `revision` changes its paths.
fn mesh_wide_deny(i: usize, revision: usize) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-debug-{i}
  namespace: {ROOT_NAMESPACE}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: [\"{ROOT_NAMESPACE}\"]
    to:
    - operation:
        paths: [\"/debug/{i}/*\", \"/internal/rev-{revision}/*\", \"/actuator/*\"]
"
    )
}

fn root_app_policy(i: usize) -> String {
    let app = APPS[i % APPS.len()];
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {app}-allow-scrape-{i}
  namespace: {ROOT_NAMESPACE}
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"{TRUST_DOMAIN}/ns/{ROOT_NAMESPACE}/sa/prometheus\"]
    to:
    - operation:
        methods: [\"GET\"]
        paths: [\"/metrics\", \"/stats/prometheus\"]
        ports: [\"9090\"]
"
    )
}

/// The `q`-th policy of namespace number `n` (of `namespaces`): about 2 % namespace-wide
/// ALLOWs, 10 % DENYs on one app, the rest ALLOWs on one app from one caller.
fn namespace_policy(n: usize, namespaces: usize, q: usize) -> (String, String) {
    let namespace = namespace_name(n);
    let app = APPS[q % APPS.len()];
    let resource = RESOURCES[q % RESOURCES.len()];
    if q.is_multiple_of(50) {
        let name = format!("allow-same-namespace-{q}");
        let text = format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {namespace}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: [\"{namespace}\", \"{ROOT_NAMESPACE}\"]
"
        );
        return (name, text);
    }
    if q % 10 == 3 {
        let name = format!("{app}-deny-{q}");
        let text = format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector:
    matchLabels:
      app: {app}
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: [\"{namespace}\"]
    to:
    - operation:
        paths: [\"/admin/*\", \"/internal/{resource}/{q}/*\"]
  - to:
    - operation:
        methods: [\"DELETE\"]
        paths: [\"/api/v1/{resource}/*\"]
        ports: [\"8080\"]
"
        );
        return (name, text);
    }
    let name = format!("{app}-allow-{q}");
    let caller_namespace = namespace_name((n + q) % namespaces);
    let caller = APPS[(q * 7 + 3) % APPS.len()];
    let methods = if q.is_multiple_of(3) { "[\"GET\"]" } else { "[\"GET\", \"POST\", \"PUT\"]" };
    let when = if q % 4 == 1 {
        format!("    when:\n    - key: request.headers[x-tenant]\n      values: [\"tenant-{}\"]\n", q % 13)
    } else {
        String::new()
    };
    let text = format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector:
    matchLabels:
      app: {app}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"{TRUST_DOMAIN}/ns/{caller_namespace}/sa/{caller}\"]
    to:
    - operation:
        methods: {methods}
        paths: [\"/api/v{}/{resource}/*\", \"/api/v1/{resource}/{q}\"]
        ports: [\"8080\"]
{when}",
        q % 3 + 1
    );
    (name, text)
}

fn peer_authentication(namespace: &str, name: &str, selector: Option<&str>, mode: &str) -> String {
    let mut text = format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: {name}
  namespace: {namespace}
spec:
"
    );
    if let Some(app) = selector {
        let _ = write!(text, "  selector:\n    matchLabels:\n      app: {app}\n");
    }
    let _ = write!(text, "  mtls:\n    mode: {mode}\n");
    if selector.is_some() {
        text.push_str("  portLevelMtls:\n    9090:\n      mode: PERMISSIVE\n");
    }
    text
}

fn generate(knobs: &Knobs) -> Mesh {
    let mut docs = Vec::new();
    let mut workloads = Vec::new();
    for i in 0..knobs.proxies {
        let (n, j) = (i % knobs.namespaces, i / knobs.namespaces);
        let namespace = namespace_name(n);
        let app = APPS[j % APPS.len()];
        let name = if j < APPS.len() { app.to_owned() } else { format!("{app}-{}", j / APPS.len()) };
        docs.push(Doc {
            namespace: namespace.clone(),
            stem: format!("we-{name}"),
            text: workload_entry(i, &namespace, &name, app, j % 2 + 1),
        });
        workloads.push(Workload { namespace, name, service_account: app.to_owned() });
    }

    let root_policies = (knobs.policies / 100).clamp(1, knobs.policies);
    let mesh_wide = root_policies.min(5);
    let target = docs.len();
    for i in 0..root_policies {
        let (stem, text) = if i < mesh_wide {
            (format!("ap-deny-debug-{i}"), mesh_wide_deny(i, 0))
        } else {
            (format!("ap-root-{i}"), root_app_policy(i))
        };
        docs.push(Doc { namespace: ROOT_NAMESPACE.to_owned(), stem, text });
    }
    for p in 0..knobs.policies - root_policies {
        let (n, q) = (p % knobs.namespaces, p / knobs.namespaces);
        let (name, text) = namespace_policy(n, knobs.namespaces, q);
        docs.push(Doc { namespace: namespace_name(n), stem: format!("ap-{name}"), text });
    }

    let before = docs.len();
    docs.push(Doc {
        namespace: ROOT_NAMESPACE.to_owned(),
        stem: "pa-default".into(),
        text: peer_authentication(ROOT_NAMESPACE, "default", None, "STRICT"),
    });
    for n in 0..knobs.namespaces.min(3) {
        let namespace = namespace_name(n);
        let text = peer_authentication(&namespace, "default", None, "PERMISSIVE");
        docs.push(Doc { namespace: namespace.clone(), stem: "pa-default".into(), text });
        let text = peer_authentication(&namespace, "api-metrics", Some("api"), "STRICT");
        docs.push(Doc { namespace, stem: "pa-api-metrics".into(), text });
    }
    let peer_authentications = docs.len() - before;
    Mesh { docs, workloads, root_policies, peer_authentications, target }
}

impl Mesh {
    /// Every file (relative path) and the documents in it.
    fn files(&self, layout: Layout) -> BTreeMap<PathBuf, Vec<usize>> {
        let mut files: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (i, doc) in self.docs.iter().enumerate() {
            let path = match layout {
                Layout::PerResource => Path::new(&doc.namespace).join(format!("{}.yaml", doc.stem)),
                Layout::PerNamespace => PathBuf::from(format!("{}.yaml", doc.namespace)),
            };
            files.entry(path).or_default().push(i);
        }
        files
    }

    fn render(&self, docs: &[usize]) -> String {
        let mut text = String::new();
        for (k, &i) in docs.iter().enumerate() {
            if k > 0 {
                text.push_str("---\n");
            }
            text.push_str(&self.docs[i].text);
        }
        text
    }

    fn write(&self, dir: &Path, layout: Layout) -> Result<usize> {
        let files = self.files(layout);
        for (path, docs) in &files {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::write(&path, self.render(docs)).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(files.len())
    }

    /// Rewrite the target policy (revision `revision`) atomically: a hidden temporary file in
    /// the same directory, renamed over the old one. Returns the wall-clock and monotonic time
    /// of the rename.
    fn change(&mut self, dir: &Path, layout: Layout, revision: usize) -> Result<(SystemTime, Instant, PathBuf)> {
        self.docs[self.target].text = mesh_wide_deny(0, revision);
        let files = self.files(layout);
        let (path, docs) =
            files.iter().find(|(_, docs)| docs.contains(&self.target)).ok_or("the changed policy is in no file")?;
        let path = dir.join(path);
        let temporary = dir.join(format!(".push-scale-{revision}.tmp"));
        std::fs::write(&temporary, self.render(docs))
            .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
        let (wall, mono) = (SystemTime::now(), Instant::now());
        std::fs::rename(&temporary, &path).map_err(|e| format!("cannot rename over {}: {e}", path.display()))?;
        Ok((wall, mono, path))
    }
}

// ---------------------------------------------------------------------------------------------
// The control plane process

/// The control plane's process; killed (by its PID) when dropped, on success and on failure.
struct Plane {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("push_scale: stopped the control plane (pid {})", self.child.id());
    }
}

impl Plane {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start(zmesh: &Path, config: &Path, ca: &Path, log: PathBuf, poll_ms: u64) -> Result<Plane> {
        // Two distinct free ports: bind both before releasing either.
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot bind a free port: {e}"));
        let (a, b) = (bind()?, bind()?);
        let grpc = a.local_addr().map_err(|e| e.to_string())?;
        let admin = b.local_addr().map_err(|e| e.to_string())?;
        drop((a, b));
        let stderr = std::fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let child = Command::new(zmesh)
            .arg("control-plane")
            .arg("--config")
            .arg(config)
            .arg("--ca-dir")
            .arg(ca)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--log-level")
            .arg(LOG_FILTER)
            .arg("--poll-ms")
            .arg(poll_ms.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", zmesh.display()))?;
        Ok(Plane { child, grpc, admin, log })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the control plane exited ({status}); its log:\n{}", self.log_tail())),
            Err(e) => Err(format!("cannot check the control plane: {e}")),
        }
    }

    /// Wait for the bootstrap-token key, then for `/healthz/ready`.
    async fn ready(&mut self, key_file: &Path, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let key = loop {
            self.check_alive()?;
            if let Ok(key) = std::fs::read(key_file)
                && key.len() >= 32
            {
                break key;
            }
            if Instant::now() > deadline {
                return Err(format!("no {} after {timeout:?}; log:\n{}", key_file.display(), self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            self.check_alive()?;
            if let Ok((200, _)) = http_get(self.admin, "/healthz/ready").await {
                return Ok(key);
            }
            if Instant::now() > deadline {
                return Err(format!("the status API on {} was not ready after {timeout:?}", self.admin));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When the log says generation `generation` was accepted by the store and when its
    /// snapshot was handed to the push streams.
    fn generation_times(&self, generation: u64) -> (Option<SystemTime>, Option<SystemTime>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let field = format!("generation={generation}");
        let (mut accepted, mut pushing) = (None, None);
        for line in text.lines() {
            let line = strip_ansi(line);
            if !line.split_whitespace().any(|w| w == field) {
                continue;
            }
            let at = line.split_whitespace().next().and_then(parse_rfc3339);
            if line.contains("configuration accepted") {
                accepted = accepted.or(at);
            } else if line.contains("pushing a new configuration") {
                pushing = pushing.or(at);
            }
        }
        (accepted, pushing)
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-23T12:42:00.123456Z` (tracing-subscriber's timestamps).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (hms.next()??, hms.next()??, hms.next()??);
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(UNIX_EPOCH + Duration::new(days * 86_400 + hh * 3600 + mm * 60 + ss, nanos))
}

/// `VmHWM` and `VmRSS` of a process, in KiB.
fn memory(pid: u32) -> Result<(u64, u64)> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// A plain HTTP/1.1 GET with a 10 s bound; returns the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    let work = move || -> Result<(u16, String)> {
        let timeout = Duration::from_secs(10);
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(|e| format!("GET {path}: {e}"))?;
        let text = String::from_utf8(raw).map_err(|_| format!("GET {path}: not UTF-8"))?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("GET {path}: no header end"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("GET {path}: bad status line"))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        Ok((code, if chunked { dechunk(body)? } else { body.to_owned() }))
    };
    tokio::task::spawn_blocking(work).await.map_err(|e| e.to_string())?
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or("bad chunked body")?;
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).map_err(|_| "bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or("short chunk")?);
        body = rest.get(size + 2..).ok_or("short chunk")?;
    }
}

/// What `/api/v1/proxies` says.
struct ProxiesStatus {
    version: String,
    listed: usize,
    connected: usize,
    synced: usize,
    max_lag_ms: u64,
}

/// The status API once it shows all `count` proxies SYNCED at `version` (the last ACKs may still
/// be on their way when the simulated proxies have sent them), or after `timeout`.
async fn wait_synced(admin: SocketAddr, version: &str, count: usize, timeout: Duration) -> Result<ProxiesStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = proxies_status(admin).await?;
        if (status.version == version && status.synced == count) || Instant::now() > deadline {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn proxies_status(admin: SocketAddr) -> Result<ProxiesStatus> {
    let (code, body) = http_get(admin, "/api/v1/proxies").await?;
    if code != 200 {
        return Err(format!("GET /api/v1/proxies: HTTP {code}"));
    }
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("GET /api/v1/proxies: not JSON: {e}"))?;
    let proxies = json["proxies"].as_array().ok_or("GET /api/v1/proxies: no `proxies` list")?;
    let synced: Vec<&serde_json::Value> = proxies.iter().filter(|p| p["state"] == "SYNCED").collect();
    Ok(ProxiesStatus {
        version: json["version"].as_str().unwrap_or_default().to_owned(),
        listed: proxies.len(),
        connected: proxies.iter().filter(|p| p["connected"] == true).count(),
        synced: synced.len(),
        max_lag_ms: synced.iter().filter_map(|p| p["lagMs"].as_u64()).max().unwrap_or(0),
    })
}

// ---------------------------------------------------------------------------------------------
// Simulated proxies

/// One response received and acknowledged.
struct Ack {
    version: Arc<str>,
    received: Instant,
    /// When the ACK was handed to the stream.
    acked: Instant,
    changed: usize,
    removed: usize,
    /// Key, version and document bytes of the resources in the response.
    bytes: usize,
    /// Resources held after it.
    held: usize,
    /// Messages the response came in (a large push is split).
    parts: usize,
}

enum Event {
    Ack(usize, Ack),
    Ended(usize, String),
}

/// A gRPC channel to the control plane over TLS, presenting `store`'s SVID.
async fn mtls_channel(url: &str, store: Arc<CertStore>, control_plane: zmesh_id::SpiffeId) -> Result<Channel> {
    let tls = tokio_rustls::TlsConnector::from(zmesh_tls::control_client_config(
        &ControlCredentials::Svid(store),
        control_plane,
        &TlsOptions::default(),
    ));
    let connector = tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
            let tcp = tokio::net::TcpStream::connect(&authority).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("control-plane.invalid").expect("a valid name");
            let stream = tls.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    let endpoint =
        Endpoint::from_shared(url.to_owned()).map_err(|e| e.to_string())?.connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(Duration::from_secs(20), endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| format!("connecting to {url} timed out"))?
        .map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// One connection per simulated proxy needs more descriptors than the usual soft limit of 1,024.
fn raise_open_file_limit() -> String {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => format!("{:?}", limit.maximum),
        Err(error) => format!("{:?} (not raised: {error})", limit.current),
    }
}

async fn simulated_proxy(index: usize, channel: Channel, workload: String, events: mpsc::UnboundedSender<Event>) {
    let why = match follow(index, channel, workload, &events).await {
        Ok(()) => "the control plane closed the stream".to_owned(),
        Err(error) => error,
    };
    let _ = events.send(Event::Ended(index, why));
}

async fn follow(index: usize, channel: Channel, workload: String, events: &mpsc::UnboundedSender<Event>) -> Result<()> {
    let (requests, outgoing) = mpsc::channel(4);
    let hello = ConfigRequest {
        node: Some(Node { workload, proxy_id: format!("sim-{index:05}"), build_version: "push-scale-bench".into() }),
        ..Default::default()
    };
    requests.send(hello).await.map_err(|_| "the request channel closed")?;
    let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
    let mut responses = ConfigServiceClient::new(channel)
        .stream_config(request)
        .await
        .map_err(|s| format!("stream refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut held: HashMap<String, String> = HashMap::new();
    // A large push comes in parts with the same nonce, `more` on all but the last; like
    // `zmesh proxy`, the simulated proxy applies and answers only the whole.
    let mut partial: Option<(Instant, ConfigResponse, usize)> = None;
    while let Some(response) =
        responses.message().await.map_err(|s| format!("stream broke: {:?}: {}", s.code(), s.message()))?
    {
        let now = Instant::now();
        let (received, response, parts) = match partial.take() {
            Some((received, mut first, parts)) if first.nonce == response.nonce => {
                first.resources.extend(response.resources);
                first.removed.extend(response.removed);
                first.more = response.more;
                (received, first, parts + 1)
            }
            _ => (now, response, 1),
        };
        if response.more {
            partial = Some((received, response, parts));
            continue;
        }
        for key in &response.removed {
            held.remove(key);
        }
        let (changed, removed) = (response.resources.len(), response.removed.len());
        let mut bytes = 0;
        for resource in response.resources {
            bytes += resource.key.len() + resource.version.len() + resource.document.len();
            held.insert(resource.key, resource.version);
        }
        let version: Arc<str> = response.version_info.as_str().into();
        let ack =
            ConfigRequest { response_nonce: response.nonce, version_info: response.version_info, ..Default::default() };
        requests.send(ack).await.map_err(|_| "the request channel closed")?;
        let acked = Instant::now();
        let ack = Ack { version, received, acked, changed, removed, bytes, held: held.len(), parts };
        let _ = events.send(Event::Ack(index, ack));
    }
    Ok(())
}

/// Every simulated proxy's version and history, fed by their events.
struct Fleet {
    events: mpsc::UnboundedReceiver<Event>,
    current: Vec<Option<Arc<str>>>,
    history: Vec<Vec<Ack>>,
    /// How many proxies hold each version.
    counts: HashMap<Arc<str>, usize>,
}

impl Fleet {
    fn new(size: usize, events: mpsc::UnboundedReceiver<Event>) -> Fleet {
        Fleet {
            events,
            current: vec![None; size],
            history: (0..size).map(|_| Vec::new()).collect(),
            counts: HashMap::new(),
        }
    }

    fn apply(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Ended(index, why) => Err(format!("simulated proxy {index}: {why}")),
            Event::Ack(index, ack) => {
                if let Some(old) = self.current[index].take()
                    && let Some(count) = self.counts.get_mut(&old)
                {
                    *count -= 1;
                    if *count == 0 {
                        self.counts.remove(&old);
                    }
                }
                *self.counts.entry(ack.version.clone()).or_default() += 1;
                self.current[index] = Some(ack.version.clone());
                self.history[index].push(ack);
                Ok(())
            }
        }
    }

    fn converged(&self, old: Option<&str>) -> Option<Arc<str>> {
        match self.counts.iter().next() {
            Some((version, &count))
                if self.counts.len() == 1 && count == self.current.len() && Some(&**version) != old =>
            {
                Some(version.clone())
            }
            _ => None,
        }
    }

    fn summary(&self) -> String {
        let without = self.current.iter().filter(|v| v.is_none()).count();
        let mut text = format!("{without} proxies without a version");
        for (version, count) in &self.counts {
            let _ = write!(text, ", {count} at {version}");
        }
        text
    }

    /// Wait until every proxy holds one same version, other than `old`.
    async fn converge(&mut self, old: Option<&str>, timeout: Duration, what: &str) -> Result<Arc<str>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(version) = self.converged(old) {
                return Ok(version);
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => self.apply(event)?,
                Ok(None) => return Err("every simulated proxy stopped".into()),
                Err(_) => return Err(format!("{what}: not done after {timeout:?}: {}", self.summary())),
            }
        }
    }

    /// Each proxy's ACK of `version`.
    fn acks_of(&self, version: &str) -> Vec<&Ack> {
        self.history.iter().filter_map(|h| h.iter().rev().find(|a| &*a.version == version)).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Change {
    file: PathBuf,
    rename_to_accepted: Option<Duration>,
    accepted_to_pushing: Option<Duration>,
    pushing_to_first: Option<Duration>,
    pushing_to_median: Option<Duration>,
    pushing_to_last: Option<Duration>,
    rename_to_last: Duration,
    /// Proxies whose response carried exactly the changed policy and nothing else.
    exact: usize,
    server_max_lag_ms: u64,
}

/// One column of the results table: a measure of one change.
type Column = fn(&Change) -> Option<Duration>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn since(later: SystemTime, earlier: SystemTime) -> Option<Duration> {
    later.duration_since(earlier).ok()
}

async fn bench(knobs: &Knobs, zmesh: &Path, dir: &Path) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    // Not a CLI flag: the control plane always runs with the default debounce.
    let debounce_ms = zmesh_control::store::WatchOptions::default().debounce.as_millis();
    let config_dir = dir.join("config");
    let ca_dir = dir.join("ca");

    // The mesh, written and checked in process first.
    let started = Instant::now();
    let mut mesh = generate(knobs);
    let files = mesh.write(&config_dir, knobs.layout)?;
    let written = started.elapsed();
    let started = Instant::now();
    let listed = zmesh_config::yaml_files(&config_dir).map_err(|e| format!("cannot list the config: {e}"))?;
    for path in &listed {
        std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let fingerprint_cost = started.elapsed();
    let (_, rss_before_load) = memory(std::process::id())?;
    let started = Instant::now();
    let mut loader = zmesh_config::Loader::new();
    loader.add_path(&config_dir);
    let loaded = loader.finish();
    let load_cost = started.elapsed();
    if loaded.has_errors() {
        let errors: Vec<String> = loaded.errors().take(5).map(ToString::to_string).collect();
        return Err(format!("the generated mesh is not valid:\n{}", errors.join("\n")));
    }
    let warnings = loaded.diagnostics.len();
    if let Some(first) = loaded.diagnostics.first() {
        eprintln!("push_scale: the loader reports {warnings} diagnostics, the first: {first}");
    }
    let documents = loaded.sources.len();
    let started = Instant::now();
    let snapshot = Snapshot::build(1, &loaded, SystemTime::now());
    let build_cost = started.elapsed();
    let (_, rss_built) = memory(std::process::id())?;
    let started = Instant::now();
    let mut selected = 0;
    for workload in snapshot.registry.workloads() {
        selected += snapshot.resources_for(Some(workload)).len();
    }
    let select_cost = started.elapsed();
    drop((snapshot, loaded));

    println!("== zmesh control plane: push at scale ==");
    println!("machine: {cpus} CPUs; control plane: {}", zmesh.display());
    println!(
        "mesh: {} WorkloadEntries in {} namespaces, {} AuthorizationPolicies ({} in {ROOT_NAMESPACE}), {} PeerAuthentications",
        mesh.workloads.len(),
        knobs.namespaces,
        knobs.policies,
        mesh.root_policies,
        mesh.peer_authentications
    );
    println!(
        "files: {files} ({}), {documents} documents, {warnings} diagnostics, written in {:.0} ms",
        match knobs.layout {
            Layout::PerResource => "per-resource layout: one file per document, a directory per namespace",
            Layout::PerNamespace => "per-namespace layout: one file per namespace",
        },
        ms(written)
    );
    println!(
        "control plane: --poll-ms {} (debounce {debounce_ms} ms, the default); simulated proxies: {} streams, each over its own mTLS connection, {} client threads on the same machine",
        knobs.poll_ms, knobs.proxies, knobs.client_threads
    );
    println!();
    println!("what one change costs the control plane, measured in the bench process (one thread):");
    println!(
        "  list + stat the tree (one poll)      {:>8.1} ms   -> poll pause (without inotify) max({} ms, {POLL_COST_RATIO} x cost) = {:.0} ms",
        ms(fingerprint_cost),
        knobs.poll_ms,
        ms(Duration::from_millis(knobs.poll_ms).max(fingerprint_cost * POLL_COST_RATIO))
    );
    println!(
        "  read + validate the whole tree       {:>8.1} ms   (the first load; a change re-validates only its files)",
        ms(load_cost)
    );
    println!("  Snapshot::build                      {:>8.1} ms", ms(build_cost));
    println!(
        "  RSS of the loaded configuration + its snapshot: {:.1} MiB (bench process, before -> after)",
        mib(rss_built.saturating_sub(rss_before_load))
    );
    println!(
        "  resources_for x {} workloads       {:>8.1} ms   ({:.0} resources per proxy)",
        mesh.workloads.len(),
        ms(select_cost),
        selected as f64 / mesh.workloads.len() as f64
    );

    // The control plane.
    let mut plane = Plane::start(zmesh, &config_dir, &ca_dir, dir.join("control-plane.log"), knobs.poll_ms)?;
    let pid = plane.pid();
    let started = Instant::now();
    let key = plane.ready(&ca_dir.join(zmesh_control::plane::TOKEN_KEY_FILE), Duration::from_secs(120)).await?;
    let startup = started.elapsed();
    let (_, rss_started) = memory(pid)?;
    drop(key);
    // Each workload's SVID, as its proxy holds it after bootstrapping (one per identity).
    let raised = raise_open_file_limit();
    let domain: zmesh_id::TrustDomain = TRUST_DOMAIN.parse().map_err(|e| format!("{e}"))?;
    let ca = zmesh_ca::CertificateAuthority::load(&ca_dir, zmesh_ca::CaConfig::new(domain.clone()), SystemTime::now())
        .map_err(|e| format!("the control plane's CA: {e}"))?;
    let rng = ring::rand::SystemRandom::new();
    let mut stores: HashMap<String, Arc<CertStore>> = HashMap::new();
    let minted_at = Instant::now();
    for w in &mesh.workloads {
        let uri = format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}", w.namespace, w.service_account);
        if stores.contains_key(&uri) {
            continue;
        }
        let id: zmesh_id::SpiffeId = uri.parse().map_err(|e| format!("bad SPIFFE ID {uri}: {e}"))?;
        let (svid, key) = ca.issue_with_new_key(&id, None, SystemTime::now(), &rng).map_err(|e| e.to_string())?;
        let identity = Identity::from_pem(&svid.chain_pem, key.expose()).map_err(|e| e.to_string())?;
        let bundle = TrustBundle::from_pem(ca.trust_bundle_pem(), TrustDomains::new(domain.clone()))
            .map_err(|e| e.to_string())?;
        stores.insert(uri, Arc::new(CertStore::new(identity, bundle)));
    }
    println!("SVIDs: {} issued in {:.0} ms; open-file limit {raised}", stores.len(), ms(minted_at.elapsed()));

    // One mTLS connection per simulated proxy, opened 64 at a time.
    let url = format!("https://{}", plane.grpc);
    let control_plane = zmesh_tls::control_plane_id(&domain);
    let connect_start = Instant::now();
    let mut channels: Vec<Option<Channel>> = vec![None; mesh.workloads.len()];
    for (batch_start, batch) in mesh.workloads.chunks(64).enumerate().map(|(i, b)| (i * 64, b)) {
        let mut dials = tokio::task::JoinSet::new();
        for (offset, w) in batch.iter().enumerate() {
            let uri = format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}", w.namespace, w.service_account);
            let store = stores[&uri].clone();
            let (url, control_plane) = (url.clone(), control_plane.clone());
            dials.spawn(async move { (batch_start + offset, mtls_channel(&url, store, control_plane).await) });
        }
        while let Some(dialed) = dials.join_next().await {
            let (index, channel) = dialed.map_err(|e| e.to_string())?;
            channels[index] = Some(channel?);
        }
    }
    println!("mTLS connections: {} opened in {:.0} ms", channels.len(), ms(connect_start.elapsed()));

    // Initial sync: every proxy connects at once.
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut fleet = Fleet::new(mesh.workloads.len(), events_rx);
    let connect_start = Instant::now();
    for (i, (w, channel)) in mesh.workloads.iter().zip(channels).enumerate() {
        let workload = format!("{}/{}", w.namespace, w.name);
        let channel = channel.ok_or("a connection was not opened")?;
        tokio::spawn(simulated_proxy(i, channel, workload, events_tx.clone()));
    }
    drop(events_tx);
    let initial = fleet.converge(None, Duration::from_secs(300), "initial sync").await?;
    let acks = fleet.acks_of(&initial);
    let initial_last = acks.iter().map(|a| a.acked).max().unwrap_or(connect_start) - connect_start;
    let initial_first = acks.iter().map(|a| a.acked).min().unwrap_or(connect_start) - connect_start;
    let initial_bytes: usize = acks.iter().map(|a| a.bytes).sum();
    let slowest_handling = acks.iter().map(|a| a.acked - a.received).max().unwrap_or_default();
    let (parts_min, parts_max) =
        (acks.iter().map(|a| a.parts).min().unwrap_or(0), acks.iter().map(|a| a.parts).max().unwrap_or(0));
    let (held_min, held_max) =
        (acks.iter().map(|a| a.held).min().unwrap_or(0), acks.iter().map(|a| a.held).max().unwrap_or(0));
    let (hwm_initial, rss_initial) = memory(pid)?;
    let status = wait_synced(plane.admin, &initial, knobs.proxies, Duration::from_secs(10)).await?;
    let initial_status_ok =
        status.version == *initial && status.listed == knobs.proxies && status.synced == knobs.proxies;

    println!();
    println!(
        "control plane: pid {pid}, ready {:.0} ms after start (initial load + CA); RSS {:.1} MiB before any proxy",
        ms(startup),
        mib(rss_started)
    );
    println!(
        "initial sync: {}/{} proxies ACKed version {initial} {:.0} ms after the first connect (first ACK at {:.0} ms); \
         {held_min}..{held_max} resources per proxy in {parts_min}..{parts_max} messages, {:.1} MiB of documents sent in total",
        acks.len(),
        knobs.proxies,
        ms(initial_last),
        ms(initial_first),
        initial_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "  status API: {} listed, {} connected, {} SYNCED at {}; slowest simulated proxy took {:.1} ms from first part to ACK",
        status.listed,
        status.connected,
        status.synced,
        status.version,
        ms(slowest_handling)
    );
    println!(
        "  control plane memory after the initial sync: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(rss_initial),
        mib(hwm_initial)
    );
    if !initial_status_ok {
        return Err("the status API does not show every proxy SYNCED after the initial sync".into());
    }

    // The changes.
    let mut version = initial;
    let mut changes = Vec::new();
    for revision in 1..=knobs.changes {
        // Quiet time: the store re-reads recently modified files once (its racy-timestamp
        // check, 2 s after a read); the change is measured on a settled control plane.
        tokio::time::sleep(knobs.pause).await;
        plane.check_alive()?;
        let (wall, mono, file) = mesh.change(&config_dir, knobs.layout, revision)?;
        let next = fleet.converge(Some(&version), Duration::from_secs(60), &format!("change {revision}")).await?;
        let acks = fleet.acks_of(&next);
        let mut acked: Vec<Instant> = acks.iter().map(|a| a.acked).collect();
        acked.sort();
        let (first, last, median) = (acked[0], acked[acked.len() - 1], acked[acked.len() / 2]);
        let at = |i: Instant| wall + (i - mono);
        let (accepted, pushing) = plane.generation_times(1 + revision as u64);
        let status = wait_synced(plane.admin, &next, knobs.proxies, Duration::from_secs(10)).await?;
        if status.version != *next || status.synced != knobs.proxies {
            return Err(format!(
                "change {revision}: the status API shows {} of {} SYNCED at {} (the proxies hold {next})",
                status.synced, knobs.proxies, status.version
            ));
        }
        changes.push(Change {
            file: file.strip_prefix(&config_dir).unwrap_or(&file).to_path_buf(),
            rename_to_accepted: accepted.and_then(|a| since(a, wall)),
            accepted_to_pushing: accepted.zip(pushing).and_then(|(a, p)| since(p, a)),
            pushing_to_first: pushing.and_then(|p| since(at(first), p)),
            pushing_to_median: pushing.and_then(|p| since(at(median), p)),
            pushing_to_last: pushing.and_then(|p| since(at(last), p)),
            rename_to_last: last - mono,
            exact: acks.iter().filter(|a| a.changed == 1 && a.removed == 0).count(),
            server_max_lag_ms: status.max_lag_ms,
        });
        version = next;
    }
    let (hwm_end, rss_end) = memory(pid)?;
    let status = wait_synced(plane.admin, &version, knobs.proxies, Duration::from_secs(10)).await?;

    println!();
    println!(
        "one policy change, {} times: AuthorizationPolicy {ROOT_NAMESPACE}/deny-debug-0 (mesh-wide DENY, reaches every proxy), \
         file rewritten as a hidden temporary + rename; times from the rename",
        changes.len()
    );
    let cell = |d: Option<Duration>| d.map_or_else(|| "?".to_owned(), |d| format!("{:.0}", ms(d)));
    println!(
        "{:>6} | {:>14} | {:>13} | {:>13} | {:>14} | {:>13} | {:>14} | {:>15} | {:>10}",
        "change",
        "rename→accept",
        "accept→snap",
        "snap→1st ACK",
        "snap→median",
        "snap→last ACK",
        "rename→last",
        "server max lag",
        "exact diff"
    );
    for (i, c) in changes.iter().enumerate() {
        println!(
            "{:>6} | {:>11} ms | {:>10} ms | {:>10} ms | {:>11} ms | {:>10} ms | {:>11.0} ms | {:>12} ms | {:>10}",
            i + 1,
            cell(c.rename_to_accepted),
            cell(c.accepted_to_pushing),
            cell(c.pushing_to_first),
            cell(c.pushing_to_median),
            cell(c.pushing_to_last),
            ms(c.rename_to_last),
            c.server_max_lag_ms,
            format!("{}/{}", c.exact, knobs.proxies),
        );
    }
    let stats = |pick: Column| -> [String; 3] {
        let mut values: Vec<Duration> = changes.iter().filter_map(pick).collect();
        values.sort();
        if values.is_empty() {
            return ["?".into(), "?".into(), "?".into()];
        }
        [values[0], values[values.len() / 2], values[values.len() - 1]].map(|d| format!("{:.0}", ms(d)))
    };
    let columns: [Column; 7] = [
        |c| c.rename_to_accepted,
        |c| c.accepted_to_pushing,
        |c| c.pushing_to_first,
        |c| c.pushing_to_median,
        |c| c.pushing_to_last,
        |c| Some(c.rename_to_last),
        |c| Some(Duration::from_millis(c.server_max_lag_ms)),
    ];
    let summaries: Vec<[String; 3]> = columns.iter().map(|f| stats(*f)).collect();
    for (row, label) in ["min", "median", "max"].iter().enumerate() {
        println!(
            "{:>6} | {:>11} ms | {:>10} ms | {:>10} ms | {:>11} ms | {:>10} ms | {:>11} ms | {:>12} ms |",
            label,
            summaries[0][row],
            summaries[1][row],
            summaries[2][row],
            summaries[3][row],
            summaries[4][row],
            summaries[5][row],
            summaries[6][row],
        );
    }
    println!("  (the changed file: {})", changes.first().map_or_else(String::new, |c| c.file.display().to_string()));
    println!(
        "  rename→accept = the change heard (inotify) and settled for the debounce ({debounce_ms} ms), one listing, the changed file read and validated, the tree's load assembled;"
    );
    println!("  accept→snap = StoreState + Snapshot::build; snap→ACK = every stream diffs, sends, the proxy ACKs;");
    println!("  server max lag = the status API's largest lagMs (acceptance → ACK received, ms, server clock)");
    println!();
    println!(
        "status API at the end: {} listed, {} connected, {} SYNCED at {}",
        status.listed, status.connected, status.synced, status.version
    );
    println!(
        "control plane memory: VmRSS {:.1} MiB after start, {:.1} MiB after the initial sync, {:.1} MiB at the end; VmHWM (peak) {:.1} MiB",
        mib(rss_started),
        mib(rss_initial),
        mib(rss_end),
        mib(hwm_end)
    );
    let mut totals: Vec<Duration> = changes.iter().map(|c| c.rename_to_last).collect();
    totals.sort();
    if let Some(median) = totals.get(totals.len() / 2) {
        let worst = totals[totals.len() - 1];
        println!(
            "targets: change → every proxy ACKed < 1 s: median {:.0} ms, max {:.0} ms: {}; control-plane memory < 200 MiB: peak {:.1} MiB: {}",
            ms(*median),
            ms(worst),
            if worst < Duration::from_secs(1) { "met" } else { "MISSED" },
            mib(hwm_end),
            if hwm_end < 200 * 1024 { "met" } else { "MISSED" },
        );
    }
    if status.synced != knobs.proxies || status.version != *version {
        return Err("the status API does not show every proxy SYNCED at the end".into());
    }
    drop(plane);
    Ok(())
}
