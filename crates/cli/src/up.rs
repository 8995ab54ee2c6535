//! `zmesh up`: a whole mesh on this machine. The control plane (with its CA) runs in this
//! process; every workload gets a proxy process, and in the built-in demo an echo app and a
//! traffic generator too, so allowed and denied flows happen at once and the summary shows
//! them. `zmesh exec WORKLOAD -- CMD` runs a command as one of the workloads.
//!
//! Three shapes:
//! - default (no privileges, where the kernel permits user namespaces): `up` runs itself again
//!   inside new user, network and mount namespaces (see [`userns`]) and builds the `--isolate`
//!   layout there, so STRICT holds against every process outside a workload;
//! - `--isolate` (root): every workload gets its own network namespace joined to a bridge,
//!   with iptables capture, exactly like pods;
//! - `--loopback` (or when user namespaces are not permitted, with a warning): every workload
//!   has its own 127.0.x.y address; proxies run in explicit mode, and apps reach the mesh
//!   through their proxy's HTTP proxy port. Any local process can dial an app's address
//!   directly, so STRICT does not hold against local processes.
//!
//! A workload's network namespace is held by a `unshare --net sleep infinity` process of its
//! own, so it disappears with that process even when `up` is killed outright, and `zmesh exec`
//! enters it by that PID (recorded in `STATE/up.json`).
//!
//! Whatever `up` starts it stops on Ctrl-C (or `--duration`): processes by PID, then the
//! bridge. Nothing else on the machine is touched.

mod demo;
mod expect;
mod stand_in;
mod summary;
pub(crate) mod traffic;
mod userns;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use zmesh_control::plane::{ControlPlane, Options};
use zmesh_control::store::WatchOptions;
use zmesh_registry::MeshWorkload;

use crate::control::{GRPC_PORT, STATUS_PORT};

#[derive(Debug, clap::Args)]
pub(crate) struct UpArgs {
    /// Run your own workloads: a directory of WorkloadEntries and policies (watched). Without
    /// it, the built-in demo mesh runs.
    #[arg(long, value_name = "DIR")]
    config: Option<PathBuf>,
    /// Give every workload its own network namespace with transparent capture in this
    /// machine's network (needs root). Without it, `up` does the same inside a user namespace
    /// of its own, without root.
    #[arg(long, conflicts_with = "loopback")]
    isolate: bool,
    /// Run every workload on a loopback address of this machine instead of in a namespace of its
    /// own. STRICT then does not hold against local processes: they can dial an app directly.
    #[arg(long)]
    loopback: bool,
    /// Set when `up` has run itself inside its own user, network and mount namespaces.
    #[arg(long, hide = true)]
    in_user_namespace: bool,
    /// Where the run keeps its configuration copy, CA, tokens and logs.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Stop by itself after this many seconds (0: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    duration: u64,
    /// How often the summary is printed.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    summary_ms: u64,
    /// Log filter for the control plane (RUST_LOG syntax); proxies log to the state directory.
    #[arg(long, default_value = "warn")]
    log_level: String,
}

/// The bridge and address block of `--isolate`.
const BRIDGE: &str = "zmesh0";
const ISOLATE_PREFIX: [u8; 2] = [10, 88];
const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

/// The default state directory: per user, under the runtime directory when there is one.
pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(runtime).join("zmesh-up");
    }
    std::env::temp_dir().join(format!("zmesh-up-{}", own_uid()))
}

/// The uid this process runs as (the owner of `/proc/self`).
fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

/// Makes `state` (mode 0700) if it is missing, and refuses one another user could have planted
/// or can write into: it must be a real directory (not a link), owned by this user, with no
/// access for group or others. The same holds for the CA and token keys already in it. Without
/// `XDG_RUNTIME_DIR` the default lies in the shared temporary directory, where anyone can
/// create `zmesh-up-<uid>` first and hand the mesh a CA of their own.
pub(crate) fn secure_state_dir(state: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    if let Some(parent) = state.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(state) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).with_context(|| format!("cannot create {}", state.display())),
    }
    let uid = own_uid();
    let check = |path: &Path, want_dir: bool| -> anyhow::Result<()> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !want_dir => return Ok(()),
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        let kind_ok = if want_dir { meta.file_type().is_dir() } else { meta.file_type().is_file() };
        if !kind_ok || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            bail!(
                "{} is not private to you (owner uid {}, mode {:o}, {}): another user could have planted it; \
                 remove it, or give `--state-dir` a directory of your own",
                path.display(),
                meta.uid(),
                meta.mode() & 0o7777,
                if meta.file_type().is_symlink() {
                    "a symbolic link"
                } else if want_dir {
                    "a directory"
                } else {
                    "a file"
                },
            );
        }
        Ok(())
    };
    check(state, true)?;
    for secret in ["ca/ca-key.pem".to_owned(), format!("ca/{}", zmesh_control::plane::TOKEN_KEY_FILE)] {
        check(&state.join(secret), false)?;
    }
    Ok(())
}

/// What `zmesh exec` needs to know about a running `up`, kept in `STATE/up.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunState {
    pub pid: u32,
    /// Every workload has a network namespace of its own (`--isolate` or the default shape).
    pub isolate: bool,
    /// Those namespaces belong to a user namespace of `up`'s own, which `zmesh exec` enters too.
    #[serde(default)]
    pub user_namespace: bool,
    pub status_api: String,
    pub workloads: Vec<RunWorkload>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct RunWorkload {
    /// `namespace/name`.
    pub workload: String,
    pub address: IpAddr,
    /// The proxy's HTTP proxy port (loopback mode).
    pub http_proxy: Option<SocketAddr>,
    /// The PID holding the workload's network namespace (`--isolate` and the default shape).
    pub netns_pid: Option<u32>,
}

/// Every process `up` started, stopped by PID when it goes away (also on errors).
#[derive(Debug, Default)]
struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    fn spawn(&mut self, what: String, command: &mut Command, log: &Path) -> anyhow::Result<u32> {
        let file = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let pid = child.id().with_context(|| format!("{what} exited at once"))?;
        self.children.push((what, child));
        Ok(pid)
    }

    fn adopt(&mut self, what: String, child: Child) {
        self.children.push((what, child));
    }

    /// SIGTERM everything, give it `grace` to drain, then SIGKILL what is left.
    async fn stop(&mut self, grace: Duration) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id.cast_signed())) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (what, child) in &mut self.children {
            if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
                tracing::warn!(%what, "did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
        self.children.clear();
    }

    /// A child that exited on its own, if any.
    fn exited(&mut self) -> Option<(String, std::process::ExitStatus)> {
        self.children.iter_mut().find_map(|(what, child)| child.try_wait().ok().flatten().map(|s| (what.clone(), s)))
    }
}

/// `program`, run inside the network namespace held by `netns_pid` when there is one.
fn as_workload(netns_pid: Option<u32>, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    match netns_pid {
        Some(pid) => {
            let mut command = std::process::Command::new("nsenter");
            command.args(["-t", &pid.to_string(), "-n"]).arg(program);
            command
        }
        None => std::process::Command::new(program),
    }
}

/// Run `ip …` (or any setup command) and fail with its stderr.
async fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program).args(args).output().await.with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// The bridge of `--isolate`, removed when the run ends (the namespaces go with their holders).
#[derive(Debug, Default)]
struct Isolation {
    bridge: bool,
}

impl Isolation {
    async fn bridge(&mut self) -> anyhow::Result<()> {
        // A bridge left by a run that was killed outright would block this one.
        let _ = run("ip", &["link", "del", BRIDGE]).await;
        run("ip", &["link", "add", BRIDGE, "type", "bridge"]).await?;
        self.bridge = true;
        run("ip", &["addr", "add", &format!("{BRIDGE_ADDRESS}/16"), "dev", BRIDGE]).await?;
        run("ip", &["link", "set", BRIDGE, "up"]).await
    }

    /// A network namespace for one workload, held by a process of its own, with `eth0` at
    /// `address` on the bridge; returns the holder's PID.
    async fn pod(
        &mut self,
        processes: &mut Processes,
        log: &Path,
        address: Ipv4Addr,
        index: usize,
    ) -> anyhow::Result<u32> {
        let mut holder = Command::new("unshare");
        holder.args(["--net", "sleep", "infinity"]);
        let pid = processes.spawn(format!("namespace holder {address}"), &mut holder, log)?;
        userns::wait_for_own_netns(pid).await?;
        let host_end = format!("zm-veth{index}");
        let target = pid.to_string();
        run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &target]).await?;
        run("ip", &["link", "set", &host_end, "master", BRIDGE, "up"]).await?;
        let address = format!("{address}/16");
        let gateway = BRIDGE_ADDRESS.to_string();
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", &address, "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["route", "add", "default", "via", &gateway],
        ] {
            let mut all = vec!["-t", &target, "-n", "ip"];
            all.extend_from_slice(args);
            run("nsenter", &all).await?;
        }
        Ok(pid)
    }

    async fn remove(&mut self) {
        if std::mem::take(&mut self.bridge)
            && let Err(error) = run("ip", &["link", "del", BRIDGE]).await
        {
            eprintln!("warning: {error:#}");
        }
    }
}

fn state_dir_in_use(state: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(state.join("up.json")).ok()?;
    let run: RunState = serde_json::from_str(&text).ok()?;
    Path::new(&format!("/proc/{}", run.pid)).exists().then_some(run.pid)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// What `zmesh up` prints when workloads share this machine's network.
const LOOPBACK_WARNING: &str = "warning: loopback mode: every workload listens on a 127.0.x.y address of this machine, \
so any local process can dial an app directly, past its proxy: STRICT does not hold against local processes";

pub(crate) fn up(mut args: UpArgs) -> anyhow::Result<u8> {
    crate::control::init_logging(&args.log_level)?;
    if !args.isolate && !args.loopback && !args.in_user_namespace {
        match userns::probe() {
            Ok(()) => {
                let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
                let state =
                    std::path::absolute(&state).with_context(|| format!("cannot resolve {}", state.display()))?;
                secure_state_dir(&state)?;
                if let Some(pid) = state_dir_in_use(&state) {
                    bail!("zmesh up is already running (pid {pid}) with state in {}; stop it first", state.display());
                }
                let config = match &args.config {
                    Some(dir) => {
                        Some(std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?)
                    }
                    None => None,
                };
                return userns::supervise(userns::Inner {
                    state,
                    config,
                    duration: args.duration,
                    summary_ms: args.summary_ms,
                    log_level: args.log_level.clone(),
                });
            }
            Err(reason) => {
                eprintln!(
                    "{LOOPBACK_WARNING}.\nUser namespaces are not available here ({reason}); run `zmesh up --isolate` as root for namespaces."
                );
                args.loopback = true;
            }
        }
    } else if args.loopback {
        eprintln!("{LOOPBACK_WARNING}.");
    }
    // Inside its own user namespace `up` is root over the namespaces it makes: the `--isolate`
    // layout, without touching the host.
    let user_namespace = args.in_user_namespace;
    if user_namespace {
        // A supervisor killed outright (SIGKILL) must not leave the mesh running unseen: its
        // death stops this process as Ctrl-C would.
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
            .context("cannot ask to be stopped with the supervising `zmesh up`")?;
        if rustix::process::getppid().is_none_or(|parent| parent.as_raw_nonzero().get() == 1) {
            bail!("the supervising `zmesh up` is gone; nothing was started");
        }
    }
    args.isolate |= user_namespace;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::control::cancel_on_signal(shutdown.clone())?;
        let mut processes = Processes::default();
        let mut isolation = Isolation::default();
        let result = Mesh::start(&args, user_namespace, &shutdown, &mut processes, &mut isolation).await;
        let outcome = match result {
            Ok(mut mesh) => mesh.watch(&args, &shutdown, &mut processes).await,
            Err(error) => Err(error),
        };
        shutdown.cancel();
        processes.stop(Duration::from_secs(6)).await;
        isolation.remove().await;
        let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
        let _ = std::fs::remove_file(state.join("up.json"));
        outln!(
            "zmesh up: stopped; every process it started has exited{}",
            if args.isolate { " and its namespaces are gone" } else { "" }
        );
        outcome
    })?;
    Ok(0)
}

struct Mesh {
    plane: ControlPlane,
    demo: bool,
    outcomes: tokio::sync::mpsc::Receiver<traffic::Outcome>,
    workloads: usize,
    printer: summary::Printer,
    /// The generation the expectations were computed for.
    generation: u64,
    expectations: Vec<expect::Expectation>,
    /// Observations since `in_force_since`, by flow.
    tallies: Vec<summary::Tally>,
    /// When the generation in force reached every proxy; `None` while it is being applied.
    in_force_since: Option<SystemTime>,
}

impl Mesh {
    async fn start(
        args: &UpArgs,
        user_namespace: bool,
        shutdown: &CancellationToken,
        processes: &mut Processes,
        isolation: &mut Isolation,
    ) -> anyhow::Result<Mesh> {
        let state = args.state_dir.clone().unwrap_or_else(default_state_dir);
        secure_state_dir(&state)?;
        if let Some(pid) = state_dir_in_use(&state) {
            bail!("zmesh up is already running (pid {pid}) with state in {}; stop it first", state.display());
        }
        for sub in ["config", "tokens", "logs"] {
            let dir = state.join(sub);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let exe = std::env::current_exe().context("cannot find the zmesh binary")?;
        let demo = args.config.is_none();
        let prefix = if args.isolate { ISOLATE_PREFIX } else { [127, 0] };
        let (config_dir, stand_ins, not_enforced) = match &args.config {
            Some(dir) => {
                let prepared = stand_in::prepare(dir, &state.join("config"), prefix)?;
                (prepared.config_dir, prepared.stand_ins, prepared.not_enforced)
            }
            None => {
                let dir = state.join("config");
                std::fs::write(dir.join("workloads.yaml"), demo::workload_entries(prefix))?;
                std::fs::write(dir.join("policies.yaml"), demo::POLICIES)?;
                (dir, Vec::new(), Vec::new())
            }
        };
        if user_namespace {
            // A new network namespace starts with loopback down; the status API listens there.
            run("ip", &["link", "set", "lo", "up"])
                .await
                .context("cannot bring up loopback in the mesh's namespace")?;
        }
        if args.isolate {
            isolation.bridge().await.context("--isolate needs root (or a user namespace) and iproute2")?;
        }
        let listen_ip = if args.isolate { IpAddr::V4(BRIDGE_ADDRESS) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) };
        let options = Options {
            config: config_dir.clone(),
            ca_dir: state.join("ca"),
            grpc: SocketAddr::new(listen_ip, GRPC_PORT),
            admin: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), STATUS_PORT),
            watch: WatchOptions::default(),
        };
        let plane = ControlPlane::start(options, shutdown.clone()).await?;
        if user_namespace {
            userns::serve_status_socket(&state, plane.admin, shutdown.clone()).await?;
        }
        let control_plane_url = format!("https://{}", plane.grpc);
        let roots = state.join("ca").join(zmesh_ca::ROOT_CERT_FILE);
        let tokens = zmesh_control::plane::token_issuer(&state.join("ca"))?;
        let snapshot = plane.status.snapshots.borrow().clone();
        let mut workloads: Vec<Arc<MeshWorkload>> = snapshot.registry.workloads().cloned().collect();
        workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        if workloads.is_empty() {
            bail!(
                "{} has no workload to run: no WorkloadEntry with an address, and no Pod or Deployment (or other pod controller) whose sidecar is not disabled",
                config_dir.display()
            );
        }

        let mut run_state = RunState {
            pid: std::process::id(),
            isolate: args.isolate,
            user_namespace,
            status_api: format!("http://{}", plane.admin),
            workloads: Vec::new(),
        };
        // A token only gets a proxy its first certificate (renewals present the certificate),
        // so it needs to outlive only the start-up.
        let now = SystemTime::now();
        let expires = now + Duration::from_secs(10 * 60);
        for (index, workload) in workloads.iter().enumerate() {
            let key = format!("{}.{}", workload.name, workload.namespace);
            let token_file = state.join("tokens").join(&key);
            write_private(&token_file, &tokens.issue(&workload.identity, now, expires))?;
            let log = |what: &str| state.join("logs").join(format!("{key}.{what}.log"));
            if args.isolate && workload.address.is_loopback() {
                bail!(
                    "{}/{} has the loopback address {}: its app runs on this machine, outside the namespaces `up` \
                     makes for workloads; run `zmesh up --loopback`, or give it an address that is not a loopback one",
                    workload.namespace,
                    workload.name,
                    workload.address
                );
            }
            let netns = match (args.isolate, workload.address) {
                (false, _) => None,
                (true, IpAddr::V4(address)) => Some(isolation.pod(processes, &log("netns"), address, index).await?),
                (true, IpAddr::V6(address)) => {
                    bail!("{key} has the IPv6 address {address}; namespaces of `up` take IPv4 only")
                }
            };
            let in_pod = |netns: &Option<u32>| Command::from(as_workload(*netns, &exe));
            if netns.is_some() {
                let mut capture = in_pod(&netns);
                capture.args(["capture", "install"]);
                let output = capture.output().await?;
                if !output.status.success() {
                    bail!("capture in the namespace of {key}: {}", String::from_utf8_lossy(&output.stderr).trim());
                }
            }
            if demo || stand_ins.iter().any(|w| *w == format!("{}/{}", workload.namespace, workload.name)) {
                for port in &workload.ports {
                    let listen = if args.isolate {
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port.number)
                    } else {
                        SocketAddr::new(workload.address, port.number)
                    };
                    let mut app = in_pod(&netns);
                    app.args([
                        "echo",
                        "--listen",
                        &listen.to_string(),
                        "--name",
                        &format!("{}/{}", workload.namespace, workload.name),
                    ]);
                    processes.spawn(format!("app {key}"), &mut app, &log("app"))?;
                }
            }
            let mut proxy = in_pod(&netns);
            proxy.args(["proxy", "--control-plane", &control_plane_url, "--workload"]);
            proxy.arg(format!("{}/{}", workload.namespace, workload.name));
            proxy.arg("--token-file").arg(&token_file).arg("--roots").arg(&roots).args(["--log-level", "info"]);
            if !args.isolate {
                proxy.arg("--explicit");
            }
            processes.spawn(format!("proxy {key}"), &mut proxy, &log("proxy"))?;
            run_state.workloads.push(RunWorkload {
                workload: format!("{}/{}", workload.namespace, workload.name),
                address: workload.address,
                http_proxy: (!args.isolate)
                    .then(|| SocketAddr::new(workload.address, zmesh_proxy::capture::HTTP_PROXY_PORT)),
                netns_pid: netns,
            });
        }
        write_private(&state.join("up.json"), &serde_json::to_string_pretty(&run_state)?)?;

        // Every proxy answers its health check before traffic starts.
        let started = Instant::now();
        for workload in &workloads {
            let health = SocketAddr::new(workload.address, zmesh_proxy::capture::HEALTH_PORT);
            loop {
                if crate::control::get_json(&format!("http://{health}"), "/healthz/ready").await.is_ok()
                    || tokio::net::TcpStream::connect(health).await.is_ok()
                {
                    break;
                }
                if let Some((what, status)) = processes.exited() {
                    bail!("{what} exited ({status}); see the logs in {}", state.join("logs").display());
                }
                if started.elapsed() > Duration::from_secs(30) {
                    bail!(
                        "the proxy of {}/{} is not ready after 30 s; see {}",
                        workload.namespace,
                        workload.name,
                        state.join("logs").display()
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = shutdown.cancelled() => bail!("stopped while starting"),
                }
            }
        }

        let (sender, outcomes) = tokio::sync::mpsc::channel(1024);
        if demo {
            start_traffic(&run_state, &workloads, &exe, &state.join("logs"), processes, &sender)?;
        }
        let shape = match (args.isolate, user_namespace) {
            (true, true) => "each in its own network namespace (inside a user namespace, no root)",
            (true, false) => "each in its own network namespace",
            (false, _) => "on loopback addresses (STRICT does not hold against local processes)",
        };
        let mut banner = vec![
            format!(
                "zmesh up: {} workloads, each with its own proxy and SPIFFE identity, {shape}; control plane on {}",
                workloads.len(),
                plane.grpc
            ),
            format!("  status API   http://{}/api/v1/proxies   (zmesh proxy-status)", plane.admin),
            format!("  policies     {}   (edit them: the summary follows within a second)", config_dir.display()),
            format!("  run as one   zmesh exec {} -- curl -s http://...", run_state.workloads[0].workload),
            format!("  logs         {}", state.join("logs").display()),
        ];
        if !stand_ins.is_empty() {
            banner.push(format!("  addresses    given to {} (echo apps stand in for them)", stand_ins.join(", ")));
        }
        if !not_enforced.is_empty() {
            banner.push(format!(
                "  not enforced or not applied ({} finding(s); codes in docs/diagnostic-codes.md):",
                not_enforced.len()
            ));
            banner.extend(not_enforced.iter().map(|diagnostic| format!("    {diagnostic}")));
        }
        for line in &banner {
            outln!("{line}");
        }
        let printer = summary::Printer::new(std::io::stdout().is_terminal(), banner);
        let mut mesh = Mesh {
            plane,
            demo,
            outcomes,
            workloads: workloads.len(),
            printer,
            generation: 0,
            expectations: Vec::new(),
            tallies: Vec::new(),
            in_force_since: None,
        };
        mesh.follow_configuration();
        Ok(mesh)
    }

    /// Print the summary until shutdown (or `--duration`); a process that dies ends the run.
    async fn watch(
        &mut self,
        args: &UpArgs,
        shutdown: &CancellationToken,
        processes: &mut Processes,
    ) -> anyhow::Result<()> {
        let stop_at = (args.duration > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(args.duration));
        let mut tick = tokio::time::interval(Duration::from_millis(args.summary_ms.max(200)));
        // A new generation is noticed, and the moment every proxy holds it, within this.
        let mut follow = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                Some(outcome) = self.outcomes.recv() => self.record(outcome),
                _ = follow.tick() => self.follow_configuration(),
                _ = tick.tick() => {
                    if let Some((what, status)) = processes.exited() {
                        bail!("{what} exited unexpectedly ({status})");
                    }
                    self.follow_configuration();
                    self.print_summary();
                }
                () = shutdown.cancelled() => return Ok(()),
                () = async { match stop_at { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => return Ok(()),
            }
        }
    }

    /// On a new generation, recompute every flow's expectation from the configuration now in
    /// force and start counting afresh; counting starts once every proxy acknowledged it, so
    /// the verdict never mixes answers given under two configurations.
    fn follow_configuration(&mut self) {
        let snapshot = self.plane.status.snapshots.borrow().clone();
        if snapshot.generation != self.generation {
            self.generation = snapshot.generation;
            self.in_force_since = None;
            if self.demo {
                let store = self.plane.status.store.borrow().clone();
                self.expectations = match expect::config_in_force(&store.loaded) {
                    Ok(config) => expect::expectations(&config, demo::FLOWS),
                    // The proxies cannot build it either: nothing is expected to pass.
                    Err(error) => vec![
                        expect::Expectation {
                            allowed: None,
                            reason: format!("the configuration in force does not load: {error}")
                        };
                        demo::FLOWS.len()
                    ],
                };
                self.tallies = vec![summary::Tally::default(); demo::FLOWS.len()];
            }
        }
        if self.in_force_since.is_none() {
            let proxies = self.plane.status.proxies.list();
            let acked: Vec<SystemTime> = proxies
                .iter()
                .filter(|p| p.connected && p.sync_state(&snapshot.version) == "SYNCED")
                .filter_map(|p| p.acked.as_ref().map(|(_, at)| *at))
                .collect();
            if acked.len() >= self.workloads {
                // A configuration equal to the last one is acknowledged before it was built.
                let latest = acked.into_iter().max().unwrap_or(snapshot.created_at);
                self.in_force_since = Some(latest.max(snapshot.created_at));
            }
        }
    }

    fn record(&mut self, outcome: traffic::Outcome) {
        let Some(since) = self.in_force_since else { return };
        let sent_at = SystemTime::UNIX_EPOCH + Duration::from_millis(outcome.sent_at_ms);
        if sent_at < since {
            return;
        }
        if let Some(tally) = self.tallies.get_mut(outcome.flow) {
            tally.record(outcome.status, outcome.peer, outcome.error);
        }
    }

    fn print_summary(&mut self) {
        let snapshot = self.plane.status.snapshots.borrow().clone();
        let store = self.plane.status.store.borrow().clone();
        let proxies = self.plane.status.proxies.list();
        let synced = proxies.iter().filter(|p| p.connected && p.sync_state(&snapshot.version) == "SYNCED").count();
        let view = summary::View {
            now: SystemTime::now(),
            synced,
            proxies: self.workloads,
            version: &snapshot.version,
            generation: snapshot.generation,
            refused: store.rejection.as_ref().map(|r| (r.at, r.errors.as_slice())),
            flows: if self.demo { demo::FLOWS } else { &[] },
            expectations: &self.expectations,
            tallies: &self.tallies,
            in_force_since: self.in_force_since,
        };
        if let Some(frame) = self.printer.frame(summary::render(&view)) {
            out!("{frame}");
        }
    }
}

/// One traffic generator per calling workload, run as that workload.
fn start_traffic(
    run_state: &RunState,
    workloads: &[Arc<MeshWorkload>],
    exe: &Path,
    logs: &Path,
    processes: &mut Processes,
    sender: &tokio::sync::mpsc::Sender<traffic::Outcome>,
) -> anyhow::Result<()> {
    let mut by_caller: BTreeMap<&str, Vec<serde_json::Value>> = BTreeMap::new();
    for (id, flow) in demo::FLOWS.iter().enumerate() {
        let (namespace, name) = flow.to.split_once('/').unwrap_or_default();
        let destination = workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
            .with_context(|| format!("the demo flow's destination {} is missing", flow.to))?;
        // Through the HTTP proxy a name resolves in the mesh registry; with capture the app
        // dials the address, as a pod without DNS would.
        let host = if run_state.isolate { destination.address.to_string() } else { format!("{name}.{namespace}") };
        by_caller.entry(flow.from).or_default().push(serde_json::json!({
            "id": id,
            "method": flow.method,
            "url": format!("http://{host}:{}{}", demo::APP_PORT, flow.path),
            "headers": flow.headers,
        }));
    }
    for (caller, flows) in by_caller {
        let own = run_state
            .workloads
            .iter()
            .find(|w| w.workload == caller)
            .with_context(|| format!("the demo caller {caller} is missing"))?;
        let mut command = Command::from(as_workload(own.netns_pid, exe));
        command.arg("traffic").arg("--flows").arg(serde_json::Value::Array(flows).to_string());
        if let Some(proxy) = own.http_proxy {
            command.arg("--proxy").arg(proxy.to_string());
        }
        let log = logs.join(format!("{}.traffic.log", caller.replace('/', ".")));
        let log = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the traffic generator")?;
        let stdout = child.stdout.take().context("the traffic generator has no stdout")?;
        let sender = sender.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(outcome) = serde_json::from_str::<traffic::Outcome>(&line)
                    && sender.send(outcome).await.is_err()
                {
                    return;
                }
            }
        });
        processes.adopt(format!("traffic from {caller}"), child);
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExecArgs {
    /// The workload to run as: NAME, NAMESPACE/NAME or NAME.NAMESPACE.
    workload: String,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    /// The state directory of the `zmesh up` to join.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

/// `zmesh exec`: run a command as a workload of a running `zmesh up`.
pub(crate) fn exec(args: ExecArgs) -> anyhow::Result<u8> {
    let state = args.state_dir.unwrap_or_else(default_state_dir);
    let text = std::fs::read_to_string(state.join("up.json"))
        .with_context(|| format!("no running `zmesh up` found (no {})", state.join("up.json").display()))?;
    let run: RunState = serde_json::from_str(&text).context("up.json is not readable")?;
    let wanted = args.workload.as_str();
    let matches: Vec<&RunWorkload> = run
        .workloads
        .iter()
        .filter(|w| {
            let (namespace, name) = w.workload.split_once('/').unwrap_or_default();
            w.workload == wanted || name == wanted || format!("{name}.{namespace}") == wanted
        })
        .collect();
    let workload = match matches.as_slice() {
        [one] => *one,
        [] => {
            let known: Vec<&str> = run.workloads.iter().map(|w| w.workload.as_str()).collect();
            return Err(crate::UsageError(format!("no workload `{wanted}`; running: {}", known.join(", "))).into());
        }
        many => {
            let names: Vec<&str> = many.iter().map(|w| w.workload.as_str()).collect();
            return Err(crate::UsageError(format!(
                "`{wanted}` is ambiguous: {}; give NAMESPACE/NAME",
                names.join(", ")
            ))
            .into());
        }
    };
    let (program, rest) = args.command.split_first().context("no command given")?;
    let mut command = match (workload.netns_pid, run.user_namespace) {
        // Enter `up`'s user namespace first: it owns the workload's network namespace, and
        // there this user is root over it.
        (Some(pid), true) => {
            let mut command = std::process::Command::new("nsenter");
            // `--preserve-credentials`: the user namespace denies setgroups, which nsenter would
            // call to become its root; entering it gives this user its capabilities anyway.
            command.args(["-t", &pid.to_string(), "-U", "-n", "--preserve-credentials"]).arg(program);
            command
        }
        (pid, _) => as_workload(pid, program),
    };
    command.args(rest).env("ZMESH_WORKLOAD", &workload.workload);
    if let Some(proxy) = workload.http_proxy {
        let url = format!("http://{proxy}");
        command.env("http_proxy", &url).env("HTTP_PROXY", &url).env_remove("no_proxy").env_remove("NO_PROXY");
    }
    let status = command.status().with_context(|| format!("cannot run {program}"))?;
    Ok(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(crate::EXIT_FINDINGS))
}

#[cfg(test)]
mod state_dir_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_new_state_directory_is_made_private_and_a_shared_one_is_refused() {
        let base = zmesh_testkit::TempDir::new("state-dir");
        let state = base.path().join("zmesh-up");
        secure_state_dir(&state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = secure_state_dir(&state).unwrap_err().to_string();
        assert!(error.contains("is not private to you") && error.contains("mode 777"), "{error}");

        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir_all(state.join("ca")).unwrap();
        std::fs::write(state.join("ca/ca-key.pem"), "key").unwrap();
        std::fs::set_permissions(state.join("ca/ca-key.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = secure_state_dir(&state).unwrap_err().to_string();
        assert!(error.contains("ca-key.pem is not private to you"), "{error}");

        let link = base.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let error = secure_state_dir(&link).unwrap_err().to_string();
        assert!(error.contains("a symbolic link"), "{error}");
    }
}
