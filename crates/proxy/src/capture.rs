//! Transparent capture: the iptables rules that send a pod's traffic through its proxy, as
//! istio-init writes them.
//!
//! Inbound TCP to the pod goes to 15006 (plaintext/PERMISSIVE inbound), except the proxy's own
//! ports (15008 HBONE, 15020 metrics, 15021 health) and ports the operator excludes. Outbound
//! TCP goes to 15001, except traffic the proxy itself makes (its sockets carry the mark
//! [`PROXY_MARK`]), loopback, and excluded ports. Rule generation is pure; applying it runs
//! `iptables-restore` in the current network namespace.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// The socket mark the proxy puts on connections it makes, so capture lets them through
/// (Istio uses the same value).
pub const PROXY_MARK: u32 = 1337;

pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;
pub const METRICS_PORT: u16 = 15020;
pub const HEALTH_PORT: u16 = 15021;
/// The HTTP proxy port of explicit mode: apps reach mesh workloads by name with
/// `http_proxy=http://<proxy>:15080`. Not an Istio port (Istio has no forward proxy); it is only
/// bound without capture, so the capture rules need no exemption for it.
pub const HTTP_PROXY_PORT: u16 = 15080;

/// What to capture.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptureSpec {
    /// Inbound ports left alone (in addition to the proxy's own).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub exclude_outbound_ports: Vec<u16>,
    /// Outbound destination CIDRs left alone (e.g. the node's metadata service).
    pub exclude_outbound_cidrs: Vec<String>,
}

const CHAINS: [&str; 4] = ["ZMESH_INBOUND", "ZMESH_IN_REDIRECT", "ZMESH_OUTPUT", "ZMESH_REDIRECT"];

/// The `iptables-restore --noflush` input that installs capture in the nat table.
pub fn install_rules(spec: &CaptureSpec) -> String {
    let mut rules = String::from("*nat\n");
    for chain in CHAINS {
        rules.push_str(&format!(":{chain} - [0:0]\n"));
    }
    rules.push_str(&format!("-A ZMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}\n"));
    rules.push_str(&format!("-A ZMESH_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}\n"));
    rules.push_str("-A PREROUTING -p tcp -j ZMESH_INBOUND\n");
    let own_ports = [HBONE_PORT, METRICS_PORT, HEALTH_PORT];
    for port in own_ports.iter().chain(&spec.exclude_inbound_ports) {
        rules.push_str(&format!("-A ZMESH_INBOUND -p tcp --dport {port} -j RETURN\n"));
    }
    rules.push_str("-A ZMESH_INBOUND -p tcp -j ZMESH_IN_REDIRECT\n");
    rules.push_str("-A OUTPUT -p tcp -j ZMESH_OUTPUT\n");
    // The proxy's own connections (to peers and to the local app) must not loop back into it.
    rules.push_str(&format!("-A ZMESH_OUTPUT -m mark --mark {PROXY_MARK} -j RETURN\n"));
    rules.push_str("-A ZMESH_OUTPUT -d 127.0.0.1/32 -j RETURN\n");
    // HBONE between proxies is already mTLS: never capture it, whoever dials it.
    rules.push_str(&format!("-A ZMESH_OUTPUT -p tcp --dport {HBONE_PORT} -j RETURN\n"));
    for cidr in &spec.exclude_outbound_cidrs {
        rules.push_str(&format!("-A ZMESH_OUTPUT -d {cidr} -j RETURN\n"));
    }
    for port in &spec.exclude_outbound_ports {
        rules.push_str(&format!("-A ZMESH_OUTPUT -p tcp --dport {port} -j RETURN\n"));
    }
    rules.push_str("-A ZMESH_OUTPUT -j ZMESH_REDIRECT\n");
    rules.push_str("COMMIT\n");
    rules
}

/// Why capture could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "cannot run {program}: {source}; install iptables (Debian: apt-get install iptables) and run as root in the pod's network namespace"
    )]
    Spawn { program: &'static str, source: std::io::Error },
    #[error("{program} failed: {stderr}")]
    Failed { program: &'static str, stderr: String },
}

fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<(), CaptureError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { program, source })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).map_err(|source| CaptureError::Spawn { program, source })?;
    }
    let output = child.wait_with_output().map_err(|source| CaptureError::Spawn { program, source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Failed { program, stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned() })
    }
}

/// Install capture in the current network namespace (removing an earlier install first, so
/// running it twice leaves one set of rules).
pub fn install(spec: &CaptureSpec) -> Result<(), CaptureError> {
    remove()?;
    run("iptables-restore", &["--noflush"], Some(&install_rules(spec)))
}

/// Remove everything [`install`] added; a namespace without capture is left as it is.
pub fn remove() -> Result<(), CaptureError> {
    // Jumps first, then the chains; missing ones are not an error.
    let _ = run("iptables", &["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ZMESH_INBOUND"], None);
    let _ = run("iptables", &["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "ZMESH_OUTPUT"], None);
    for chain in CHAINS {
        let _ = run("iptables", &["-t", "nat", "-F", chain], None);
    }
    for chain in CHAINS {
        let _ = run("iptables", &["-t", "nat", "-X", chain], None);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_both_directions_and_exempt_the_proxy() {
        let rules = install_rules(&CaptureSpec {
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![53],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".into()],
        });
        assert!(rules.starts_with("*nat\n:ZMESH_INBOUND - [0:0]\n"));
        assert!(rules.contains("-A ZMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
        assert!(rules.contains("-A ZMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        for port in [15008, 15020, 15021, 22] {
            assert!(rules.contains(&format!("-A ZMESH_INBOUND -p tcp --dport {port} -j RETURN\n")), "{port}");
        }
        assert!(rules.contains("-A ZMESH_OUTPUT -m mark --mark 1337 -j RETURN\n"));
        assert!(rules.contains("-A ZMESH_OUTPUT -p tcp --dport 15008 -j RETURN\n"));
        assert!(rules.contains("-A ZMESH_OUTPUT -p tcp --dport 53 -j RETURN\n"));
        assert!(rules.contains("-A ZMESH_OUTPUT -d 169.254.169.254/32 -j RETURN\n"));
        // The catch-all redirect comes after every exemption.
        let redirect = rules.find("-A ZMESH_OUTPUT -j ZMESH_REDIRECT").unwrap();
        assert!(rules[..redirect].contains("--mark 1337"));
        assert!(rules.ends_with("COMMIT\n"));
    }
}
