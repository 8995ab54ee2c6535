//! An ext_authz gRPC server that decides with OPA (Rego), for interop tests of ext_authz
//! clients (the proxy's CUSTOM action) against an independent implementation.
//!
//! The server is the Go program in `crates/testkit/opa-envoy/`: OPA's published module
//! (`github.com/open-policy-agent/opa`) evaluates the policy behind the gRPC service of Envoy's
//! published Go types (`github.com/envoyproxy/go-control-plane/envoy`), with the input and
//! result contract of opa-envoy-plugin, so the plugin's policies run unchanged. (The plugin's own
//! module, `github.com/open-policy-agent/opa-envoy-plugin`, is not served by the Go module proxy
//! this project builds from.)
//!
//! The binary is built once per source version with `go build` into
//! `${XDG_CACHE_HOME:-$HOME/.cache}/zmesh/test-tools/opa-envoy-<hash>/`, outside the checkout so
//! that reruns (and CI runs on the same machine) reuse it, under a lock file so that parallel
//! tests build it once. A failed build panics with Go's output.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// OPA's version, as pinned in `opa-envoy/go.mod`.
pub const OPA_VERSION: &str = "v1.22.4";

/// The Go sources of the server.
fn source_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("opa-envoy")
}

/// Where built test tools are kept between runs.
fn cache_root(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    let base = env("XDG_CACHE_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("zmesh").join("test-tools")
}

/// FNV-1a over the sources: a new source version gets a new binary, an old one is reused.
fn source_hash(dir: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for name in ["go.mod", "go.sum", "main.go"] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for byte in name.bytes().chain(bytes) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// The path of the opa-envoy server binary, built first if this source version has no build
/// yet. Panics with Go's output when the build fails, or when Go is missing.
pub fn opa_envoy_binary() -> PathBuf {
    let env = |name: &str| std::env::var(name).ok();
    let sources = source_dir();
    let dir = cache_root(&env).join(format!("opa-envoy-{OPA_VERSION}-{}", source_hash(&sources)));
    let binary = dir.join("opa-envoy");
    if binary.is_file() {
        return binary;
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let lock_path = dir.join("build.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    // Released when `lock` is closed, also if this process dies mid-build.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));
    if binary.is_file() {
        return binary;
    }
    let go = env("ZMESH_GO").unwrap_or_else(|| "go".to_owned());
    let partial = dir.join(format!("opa-envoy.partial-{}", std::process::id()));
    let started = Instant::now();
    let output = Command::new(&go)
        .current_dir(&sources)
        .args(["build", "-trimpath", "-mod=readonly", "-o"])
        .arg(&partial)
        .arg(".")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{go}` to build the OPA ext_authz server: {e}; install Go 1.26 or set ZMESH_GO")
        });
    if !output.status.success() {
        panic!(
            "building the OPA ext_authz server in {} failed ({}):\n{}{}",
            sources.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&partial, &binary).unwrap_or_else(|e| panic!("cannot move the build to {}: {e}", binary.display()));
    eprintln!("built {} in {:.1} s", binary.display(), started.elapsed().as_secs_f64());
    binary
}

/// A running opa-envoy server on 127.0.0.1, killed when dropped.
#[derive(Debug)]
pub struct OpaEnvoy {
    child: Child,
    addr: SocketAddr,
}

impl OpaEnvoy {
    /// Start the server with `policy` (Rego source), written under `dir`, deciding with `query`
    /// (opa-envoy-plugin's default is `data.envoy.authz.allow`). Waits up to 30 s for it to
    /// listen.
    pub fn start(policy: &str, query: &str, dir: &Path) -> OpaEnvoy {
        let binary = opa_envoy_binary();
        let policy_path = dir.join("policy.rego");
        std::fs::write(&policy_path, policy).unwrap_or_else(|e| panic!("cannot write {}: {e}", policy_path.display()));
        let mut child = Command::new(&binary)
            .args(["-addr", "127.0.0.1:0", "-query", query, "-policy"])
            .arg(&policy_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        // The server prints its address once it listens; read it on a thread so a server that
        // hangs fails the test at the deadline instead of blocking it.
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = send.send(line);
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = receive.recv_timeout(deadline.saturating_duration_since(Instant::now())).unwrap_or_default();
        let addr = line.trim().strip_prefix("listening on ").and_then(|addr| addr.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let status = child.wait().map(|status| status.to_string()).unwrap_or_default();
            panic!("the OPA ext_authz server did not start (said {line:?}, exit {status}); see its log above");
        };
        OpaEnvoy { child, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OpaEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_follows_xdg_then_home() {
        let xdg = |name: &str| match name {
            "XDG_CACHE_HOME" => Some("/xdg".to_owned()),
            "HOME" => Some("/home/u".to_owned()),
            _ => None,
        };
        assert_eq!(cache_root(&xdg), PathBuf::from("/xdg/zmesh/test-tools"));
        let home = |name: &str| (name == "HOME").then(|| "/home/u".to_owned());
        assert_eq!(cache_root(&home), PathBuf::from("/home/u/.cache/zmesh/test-tools"));
    }
}
