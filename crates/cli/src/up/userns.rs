//! The default shape of `zmesh up`: every workload in its own network namespace without root.
//!
//! `up` runs itself again inside new user, network and mount namespaces (`unshare --user
//! --map-root-user --net --mount`), where it is root over namespaces it owns and builds the
//! `--isolate` layout there: a bridge, one network namespace per workload joined by a veth, and
//! transparent capture. Nothing of it is reachable from the host's network, so no local process
//! can dial an app past its proxy.
//!
//! This process stays in the host's namespaces as the supervisor: it forwards the host's
//! `127.0.0.1:15014` (the status API that `zmesh proxy-status` and friends read) to a unix
//! socket under the state directory, which the inner `up` serves by connecting to its own status
//! API. A path in the file system crosses network namespaces where an address cannot. Ctrl-C or
//! SIGTERM here is passed on, and the inner `up` stops everything it started.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;

use crate::control::STATUS_PORT;

/// The unix socket, in the state directory, that carries the status API out of the namespaces.
pub(crate) const STATUS_SOCKET: &str = "status.sock";

/// The longest socket path the kernel takes (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Whether this machine lets this user make user and network namespaces; the reason when not.
pub(crate) fn probe() -> Result<(), String> {
    let read = |path: &str| std::fs::read_to_string(path).ok().map(|text| text.trim().to_owned());
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err("/proc/sys/user/max_user_namespaces is 0".into());
    }
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") && super::own_uid() != 0 {
        return Err("/proc/sys/kernel/unprivileged_userns_clone is 0".into());
    }
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--mount", "true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run `unshare` (util-linux): {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "`unshare --user --map-root-user --net --mount` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// The arguments the inner `up` gets: the user's own, with paths made absolute.
pub(crate) struct Inner {
    pub state: PathBuf,
    pub config: Option<PathBuf>,
    pub duration: u64,
    pub summary_ms: u64,
    pub log_level: String,
}

/// Run `up` inside new namespaces and supervise it from here; returns its exit code.
pub(crate) fn supervise(inner: Inner) -> anyhow::Result<u8> {
    let socket = inner.state.join(STATUS_SOCKET);
    check_socket_path(&socket)?;
    let exe = std::env::current_exe().context("cannot find the zmesh binary")?;
    let state = inner.state.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let code = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::control::cancel_on_signal(shutdown.clone())?;
        // Without --fork, unshare becomes the inner `up` itself: one PID to signal and wait for.
        let mut command = tokio::process::Command::new("unshare");
        command.args(["--user", "--map-root-user", "--net", "--mount", "--"]).arg(&exe);
        command.args(["up", "--in-user-namespace", "--state-dir"]).arg(&inner.state);
        command.args(["--duration", &inner.duration.to_string(), "--summary-ms", &inner.summary_ms.to_string()]);
        command.args(["--log-level", &inner.log_level]);
        if let Some(config) = &inner.config {
            command.arg("--config").arg(config);
        }
        let mut child = command.stdin(Stdio::null()).kill_on_drop(true).spawn().context("cannot run `unshare`")?;
        let host = SocketAddr::from((Ipv4Addr::LOCALHOST, STATUS_PORT));
        match tokio::net::TcpListener::bind(host).await {
            Ok(listener) => {
                tokio::spawn(forward_tcp_to_unix(listener, socket.clone(), shutdown.clone()));
            }
            Err(error) => eprintln!(
                "warning: cannot listen on {host} ({error}); the status API stays inside the mesh's namespace, so \
                 `zmesh proxy-status` on this machine will not reach it; stop what holds the port"
            ),
        }
        let status = tokio::select! {
            status = child.wait() => status?,
            () = shutdown.cancelled() => {
                if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id.cast_signed())) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                // The inner `up` gives its processes 6 s to drain; past 20 s it is stuck.
                match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        eprintln!("warning: the mesh did not stop within 20 s; killing it");
                        child.kill().await?;
                        child.wait().await?
                    }
                }
            }
        };
        shutdown.cancel();
        anyhow::Ok(status)
    })?;
    // Whatever happened inside, a stale record would stop the next run and mislead `zmesh exec`.
    let _ = std::fs::remove_file(state.join("up.json"));
    let _ = std::fs::remove_file(state.join(STATUS_SOCKET));
    Ok(code.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(crate::EXIT_FINDINGS))
}

fn check_socket_path(socket: &Path) -> anyhow::Result<()> {
    let length = socket.as_os_str().len();
    if length > MAX_SOCKET_PATH {
        bail!(
            "{} is {length} bytes long, more than a unix socket path may be ({MAX_SOCKET_PATH}); give `--state-dir` a shorter directory",
            socket.display()
        );
    }
    Ok(())
}

async fn forward_tcp_to_unix(listener: tokio::net::TcpListener, socket: PathBuf, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let Ok((mut client, _)) = accepted else { continue };
        let socket = socket.clone();
        tokio::spawn(async move {
            // Not up yet or gone: the client sees the connection close, as with no listener.
            if let Ok(mut inner) = tokio::net::UnixStream::connect(&socket).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut inner).await;
            }
        });
    }
}

/// Inside: serve the unix socket by connecting each client to the status API at `status`.
pub(crate) async fn serve_status_socket(
    state: &Path,
    status: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let path = state.join(STATUS_SOCKET);
    check_socket_path(&path)?;
    let _ = std::fs::remove_file(&path);
    let listener =
        tokio::net::UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let Ok((mut client, _)) = accepted else { continue };
            tokio::spawn(async move {
                if let Ok(mut api) = tokio::net::TcpStream::connect(status).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut api).await;
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// Waits until process `pid` lives in a network namespace other than this process's (a holder
/// started with `unshare --net` has made its own), so nothing is moved into the wrong one.
pub(crate) async fn wait_for_own_netns(pid: u32) -> anyhow::Result<()> {
    let own = std::fs::read_link("/proc/self/ns/net").context("cannot read /proc/self/ns/net")?;
    for _ in 0..500 {
        match std::fs::read_link(format!("/proc/{pid}/ns/net")) {
            Ok(theirs) if theirs != own => return Ok(()),
            Ok(_) => {}
            Err(error) => bail!("the namespace holder (pid {pid}) is gone: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the namespace holder (pid {pid}) did not make its network namespace within 5 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_too_long_for_a_socket_is_refused_with_what_to_do() {
        let long = PathBuf::from(format!("/{}", "d".repeat(120))).join(STATUS_SOCKET);
        let error = check_socket_path(&long).unwrap_err().to_string();
        assert!(error.contains("shorter directory"), "{error}");
        check_socket_path(Path::new("/run/user/1000/zmesh-up/status.sock")).unwrap();
    }
}
