//! `zmesh ca …` and `zmesh cert inspect` through the binary, checked with the real openssl.

use std::process::{Command, Output};

use zmesh_testkit::TempDir;

fn zmesh(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zmesh")).args(args).current_dir(cwd).output().expect("the zmesh binary runs")
}

fn openssl(args: &[&str], cwd: &std::path::Path) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("openssl must be installed for these tests (CI installs it: apt-get install openssl)")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_issued_svid_verifies_with_openssl_and_carries_one_spiffe_id() {
    let dir = TempDir::new("cli-ca");
    let cwd = dir.path();
    assert!(stdout(&zmesh(&["ca", "init", "--dir", "ca"], cwd)).starts_with("created a new root CA in ca"));
    assert!(stdout(&zmesh(&["ca", "init", "--dir", "ca"], cwd)).starts_with("loaded the existing CA in ca"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(cwd.join("ca/ca-key.pem")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the CA key must be private to its owner");
    }
    let issued = stdout(&zmesh(
        &[
            "ca",
            "issue",
            "--identity",
            "spiffe://cluster.local/ns/shop/sa/web",
            "--ca-dir",
            "ca",
            "--out",
            "web",
            "--ttl",
            "2h",
        ],
        cwd,
    ));
    assert!(issued.starts_with("issued spiffe://cluster.local/ns/shop/sa/web (serial "), "{issued}");

    assert_eq!(
        stdout(&openssl(&["verify", "-CAfile", "web/root-cert.pem", "web/cert-chain.pem"], cwd)).trim(),
        "web/cert-chain.pem: OK"
    );
    let text = stdout(&openssl(&["x509", "-in", "web/cert-chain.pem", "-noout", "-text"], cwd));
    assert_eq!(text.matches("URI:spiffe://").count(), 1, "{text}");
    assert!(text.contains("URI:spiffe://cluster.local/ns/shop/sa/web"));
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");

    let table = stdout(&zmesh(&["cert", "inspect", "web/cert-chain.pem"], cwd));
    let mut lines = table.lines();
    assert!(
        lines.next().expect("header").starts_with("RESOURCE NAME   TYPE         STATUS   VALID CERT   SERIAL NUMBER")
    );
    let row = lines.next().expect("a row for the SVID");
    assert!(row.starts_with("default         Cert Chain   ACTIVE   true"), "{row}");
    assert!(row.contains("spiffe://cluster.local/ns/shop/sa/web"), "{row}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&zmesh(&["cert", "inspect", "ca/root-cert.pem", "-o", "json"], cwd)))
            .expect("JSON");
    assert_eq!(json[0]["resourceName"], "ROOTCA");
    assert_eq!(json[0]["isCa"], true);
}

#[test]
fn root_rotation_runs_in_stages_and_refuses_them_out_of_order() {
    let dir = TempDir::new("cli-rotate");
    let cwd = dir.path();
    stdout(&zmesh(&["ca", "init", "--dir", "ca"], cwd));
    let early = zmesh(&["ca", "rotate", "retire", "--ca-dir", "ca"], cwd);
    assert_eq!(early.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&early.stderr).contains("the next step is `prepare`"));
    // An SVID of the old root, to check it still verifies while both roots are trusted.
    stdout(&zmesh(
        &["ca", "issue", "--identity", "spiffe://cluster.local/ns/a/sa/old", "--ca-dir", "ca", "--out", "old"],
        cwd,
    ));
    assert!(stdout(&zmesh(&["ca", "rotate", "prepare", "--ca-dir", "ca"], cwd)).contains("roots in the bundle: 2"));
    assert!(stdout(&zmesh(&["ca", "rotate", "activate", "--ca-dir", "ca"], cwd)).contains("next step: retire"));
    stdout(&zmesh(
        &["ca", "issue", "--identity", "spiffe://cluster.local/ns/a/sa/new", "--ca-dir", "ca", "--out", "new"],
        cwd,
    ));
    for leaf in ["old/cert-chain.pem", "new/cert-chain.pem"] {
        assert!(stdout(&openssl(&["verify", "-CAfile", "ca/root-cert.pem", leaf], cwd)).contains(": OK"), "{leaf}");
    }
    let waiting = zmesh(&["ca", "rotate", "retire", "--ca-dir", "ca"], cwd);
    assert_eq!(waiting.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&waiting.stderr).contains("may be valid until 20"),
        "{}",
        String::from_utf8_lossy(&waiting.stderr)
    );
    assert!(
        stdout(&zmesh(&["ca", "rotate", "retire", "--ca-dir", "ca", "--force"], cwd))
            .contains("roots in the bundle: 1")
    );
    assert!(
        !openssl(&["verify", "-CAfile", "ca/root-cert.pem", "old/cert-chain.pem"], cwd).status.success(),
        "the old root's leaf must stop verifying"
    );
    assert!(stdout(&openssl(&["verify", "-CAfile", "ca/root-cert.pem", "new/cert-chain.pem"], cwd)).contains(": OK"));
}
