//! `zmesh capture` installs and removes its IPv6 rules (ip6tables) as it does the IPv4 ones,
//! tested in a network namespace this test makes (unshare: user + network namespaces), so it
//! needs no real root and cannot touch the host. If the namespace cannot be made the test
//! fails and says why.

use std::process::Command;

fn in_namespace(script: &str) -> String {
    let zmesh = env!("CARGO_BIN_EXE_zmesh");
    let output = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "sh", "-ec"])
        .arg(script.replace("ZMESH", zmesh))
        .output()
        .expect("`unshare` must be installed (util-linux) for the capture tests");
    assert!(
        output.status.success(),
        "the namespace script failed (needs unshare with user namespaces and iptables with ip6tables; CI installs them):\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn ipv6_capture_installs_once_with_the_ipv4_scheme_and_removes_cleanly() {
    let out = in_namespace(
        "ZMESH capture install --exclude-inbound-ports 22 --exclude-outbound-cidrs 169.254.169.254/32,fd00:ec2::254/128
         ZMESH capture install --exclude-inbound-ports 22 --exclude-outbound-cidrs 169.254.169.254/32,fd00:ec2::254/128
         ip6tables -t nat -S
         echo ---
         ZMESH capture remove
         ip6tables -t nat -S",
    );
    let (installed, removed) = out.split_once("---").expect("marker");
    assert_eq!(
        installed.matches("-A PREROUTING -p tcp -j ZMESH_INBOUND").count(),
        1,
        "installing twice must not duplicate rules:\n{installed}"
    );
    assert_eq!(installed.matches("-A OUTPUT -p tcp -j ZMESH_OUTPUT").count(), 1, "{installed}");
    assert!(installed.contains("-A ZMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"), "{installed}");
    assert!(installed.contains("-A ZMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001"), "{installed}");
    for port in [15008, 15020, 15021, 22] {
        assert!(installed.contains(&format!("-A ZMESH_INBOUND -p tcp -m tcp --dport {port} -j RETURN")), "{installed}");
    }
    assert!(installed.contains("-A ZMESH_OUTPUT -m mark --mark 0x539 -j RETURN"), "{installed}");
    assert!(installed.contains("-A ZMESH_OUTPUT -d ::1/128 -j RETURN"), "{installed}");
    assert!(installed.contains("-A ZMESH_OUTPUT -d fd00:ec2::254/128 -j RETURN"), "{installed}");
    assert!(!installed.contains("169.254"), "an IPv4 CIDR in the IPv6 rules:\n{installed}");
    assert!(!removed.contains("ZMESH"), "rules left behind:\n{removed}");
}
