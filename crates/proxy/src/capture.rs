//! Transparent capture: the iptables rules that send a pod's traffic through its proxy, as
//! istio-init writes them.
//!
//! Inbound TCP to the pod goes to 15006 (plaintext/PERMISSIVE inbound), except the proxy's own
//! ports (15008 HBONE, 15020 metrics, 15021 health) and ports the operator excludes. Outbound
//! TCP goes to 15001, except traffic the proxy itself makes (its sockets carry the mark
//! [`PROXY_MARK`]), loopback, and excluded ports. Both IP families get the same scheme:
//! iptables for IPv4, ip6tables for IPv6 (the capture listeners listen on both). Rule
//! generation is pure; applying it runs `iptables-restore` and `ip6tables-restore` in the
//! current network namespace.

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

/// An IP family, each captured by its own tool with the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// Whether an excluded CIDR belongs to this family (each tool rejects the other's).
    fn holds(self, cidr: &str) -> bool {
        cidr.contains(':') == (self == Family::V6)
    }
}

/// The `iptables-restore --noflush` (or `ip6tables-restore`) input that installs capture of
/// `family` in the nat table.
pub fn install_rules(spec: &CaptureSpec, family: Family) -> String {
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
    rules.push_str(&format!("-A ZMESH_OUTPUT -d {} -j RETURN\n", family.loopback()));
    // HBONE between proxies is already mTLS: never capture it, whoever dials it.
    rules.push_str(&format!("-A ZMESH_OUTPUT -p tcp --dport {HBONE_PORT} -j RETURN\n"));
    for cidr in spec.exclude_outbound_cidrs.iter().filter(|cidr| family.holds(cidr)) {
        rules.push_str(&format!("-A ZMESH_OUTPUT -d {cidr} -j RETURN\n"));
    }
    for port in &spec.exclude_outbound_ports {
        rules.push_str(&format!("-A ZMESH_OUTPUT -p tcp --dport {port} -j RETURN\n"));
    }
    rules.push_str("-A ZMESH_OUTPUT -j ZMESH_REDIRECT\n");
    rules.push_str("COMMIT\n");
    rules
}

/// The IPv6 addresses of `/proc/net/if_inet6` (one line per address: 32 hex digits, interface
/// index, prefix length, scope, flags, name) other than loopback's, with their interfaces.
/// Link-local addresses count: a neighbour on the same link reaches the app through them.
pub fn reachable_ipv6_addresses(if_inet6: &str) -> Vec<(String, std::net::Ipv6Addr)> {
    if_inet6
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (hex, name) = (fields.first()?, fields.last()?);
            let address = std::net::Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            (hex.len() == 32 && !address.is_loopback()).then(|| ((*name).to_owned(), address))
        })
        .collect()
}

/// What [`install`] did about IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Capture {
    /// IPv6 is captured like IPv4.
    Installed,
    /// ip6tables could not install the rules, but the namespace has no IPv6 address other than
    /// loopback (IPv6 disabled or absent), so no IPv6 traffic can reach or leave the pod.
    NotNeeded { reason: String },
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
    #[error(
        "IPv4 is captured but IPv6 is not ({error}), and the network namespace has IPv6 addresses ({addresses}): IPv6 traffic would bypass the proxy. Install ip6tables (and the kernel's ip6table_nat module), or disable IPv6 in the pod (sysctl net.ipv6.conf.all.disable_ipv6=1), then run `zmesh capture install` again"
    )]
    Ipv6Uncaptured { error: Box<CaptureError>, addresses: String },
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

/// Install capture of both families in the current network namespace (removing an earlier
/// install first, so running it twice leaves one set of rules). IPv6 that cannot be captured is
/// an error whenever the namespace has an IPv6 address beyond loopback: an uncaptured family
/// would reach the app, and the app reach the network, around the proxy. Failing the install
/// (so the pod does not start) is preferred to a blanket IPv6 DROP: where ip6tables itself is
/// missing no DROP can be installed either, and a pod whose IPv6 silently goes nowhere is
/// harder to diagnose than an init step that names what to install.
pub fn install(spec: &CaptureSpec) -> Result<Ipv6Capture, CaptureError> {
    remove()?;
    run(Family::V4.restore(), &["--noflush"], Some(&install_rules(spec, Family::V4)))?;
    let Err(error) = run(Family::V6.restore(), &["--noflush"], Some(&install_rules(spec, Family::V6))) else {
        return Ok(Ipv6Capture::Installed);
    };
    let addresses = match std::fs::read_to_string("/proc/net/if_inet6") {
        Ok(table) => reachable_ipv6_addresses(&table),
        // A kernel without IPv6 has no such file: nothing to capture.
        Err(missing) if missing.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(unreadable) => {
            return Err(CaptureError::Ipv6Uncaptured {
                error: Box::new(error),
                addresses: format!("unknown: cannot read /proc/net/if_inet6: {unreadable}"),
            });
        }
    };
    if addresses.is_empty() {
        return Ok(Ipv6Capture::NotNeeded { reason: error.to_string() });
    }
    let addresses: Vec<String> = addresses.iter().map(|(name, address)| format!("{address} on {name}")).collect();
    Err(CaptureError::Ipv6Uncaptured { error: Box::new(error), addresses: addresses.join(", ") })
}

/// Remove everything [`install`] added, for both families; a namespace without capture is
/// left as it is.
pub fn remove() -> Result<(), CaptureError> {
    for family in [Family::V4, Family::V6] {
        let program = family.iptables();
        // Jumps first, then the chains; missing ones (or a missing ip6tables) are not an error.
        let _ = run(program, &["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ZMESH_INBOUND"], None);
        let _ = run(program, &["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", "ZMESH_OUTPUT"], None);
        for chain in CHAINS {
            let _ = run(program, &["-t", "nat", "-F", chain], None);
        }
        for chain in CHAINS {
            let _ = run(program, &["-t", "nat", "-X", chain], None);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_redirect_both_directions_and_exempt_the_proxy() {
        let rules = install_rules(
            &CaptureSpec {
                exclude_inbound_ports: vec![22],
                exclude_outbound_ports: vec![53],
                exclude_outbound_cidrs: vec!["169.254.169.254/32".into(), "fd00:ec2::254/128".into()],
            },
            Family::V4,
        );
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
        assert!(rules.contains("-A ZMESH_OUTPUT -d 127.0.0.1/32 -j RETURN\n"));
        // iptables-restore rejects an IPv6 CIDR (and would then install nothing).
        assert!(!rules.contains("fd00:ec2::254"));
        // The catch-all redirect comes after every exemption.
        let redirect = rules.find("-A ZMESH_OUTPUT -j ZMESH_REDIRECT").unwrap();
        assert!(rules[..redirect].contains("--mark 1337"));
        assert!(rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn ipv6_rules_redirect_to_the_same_ports_with_the_same_exemptions_and_ipv6_addresses_only() {
        let spec = CaptureSpec {
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![53],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".into(), "fd00:ec2::254/128".into()],
        };
        let rules = install_rules(&spec, Family::V6);
        let v4 = install_rules(&spec, Family::V4);
        // Line for line the IPv4 scheme, with IPv6 loopback and only the IPv6 CIDR.
        let expected = v4
            .replace("-A ZMESH_OUTPUT -d 127.0.0.1/32 -j RETURN\n", "-A ZMESH_OUTPUT -d ::1/128 -j RETURN\n")
            .replace(
                "-A ZMESH_OUTPUT -d 169.254.169.254/32 -j RETURN\n",
                "-A ZMESH_OUTPUT -d fd00:ec2::254/128 -j RETURN\n",
            );
        assert_eq!(rules, expected);
        assert!(rules.contains("-A ZMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
        assert!(rules.contains("-A ZMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        assert!(!rules.contains("127.0.0.1") && !rules.contains("169.254"));
    }

    #[test]
    fn every_ipv6_address_but_loopback_counts_as_reachable_link_local_included() {
        let table = "\
00000000000000000000000000000001 01 80 10 80       lo
fd007800000000000000000000000002 03 40 00 80     eth0
fe80000000000000a8bbccfffedd0011 03 40 20 80     eth0
";
        let found = reachable_ipv6_addresses(table);
        assert_eq!(
            found,
            vec![
                ("eth0".to_owned(), "fd00:7800::2".parse().unwrap()),
                ("eth0".to_owned(), "fe80::a8bb:ccff:fedd:11".parse().unwrap()),
            ]
        );
        assert!(reachable_ipv6_addresses("00000000000000000000000000000001 01 80 10 80 lo\n").is_empty());
        assert!(reachable_ipv6_addresses("").is_empty());
    }
}
