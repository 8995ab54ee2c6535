//! Interop: the real `openssl` binary accepts what the CA issues, for a self-generated root, for
//! an intermediate that OpenSSL itself made and the operator plugged in, and across a root
//! rotation.
//!
//! These tests need `openssl` on PATH and fail (never skip) without it: CI installs it.
//! OpenSSL checks validity against the real clock, so unlike the unit tests these take `now`
//! from `SystemTime::now()`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use ring::rand::SystemRandom;
use zmesh_ca::rotation::{self, RetireCheck};
use zmesh_ca::{CaConfig, CertificateAuthority, IssuedSvid, generate_csr};
use zmesh_id::SpiffeId;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("zmesh-ca-openssl-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("the temp dir is writable");
        Self(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run openssl; panics with its output when it fails, or with an install hint when it is missing.
fn openssl(args: &[&str], cwd: &Path) -> String {
    let output = Command::new("openssl").args(args).current_dir(cwd).output().unwrap_or_else(|error| {
        panic!(
            "cannot run `openssl` ({error}); install it (Debian/Ubuntu: `apt-get install openssl`) — \
             CI installs it, and this interop test must not be skipped"
        )
    });
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "openssl {} failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `openssl verify`'s verdict, without panicking on a rejection.
fn openssl_verifies(work: &TempDir, bundle: &Path, svid: &IssuedSvid) -> bool {
    std::fs::write(work.join("chain.pem"), &svid.chain_pem).expect("the work dir is writable");
    const END: &str = "-----END CERTIFICATE-----\n";
    let leaf_end = svid.chain_pem.find(END).expect("a chain starts with the leaf") + END.len();
    std::fs::write(work.join("leaf.pem"), &svid.chain_pem[..leaf_end]).expect("the work dir is writable");
    let output = Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
        .arg(bundle)
        .args(["-untrusted", "chain.pem", "leaf.pem"])
        .current_dir(&work.0)
        .output()
        .expect("openssl ran a moment ago");
    output.status.success() && String::from_utf8_lossy(&output.stdout).contains("leaf.pem: OK")
}

fn web() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/web".parse().expect("a valid SPIFFE ID")
}

fn sign(ca: &CertificateAuthority, now: SystemTime) -> IssuedSvid {
    let rng = SystemRandom::new();
    let (csr, _key) = generate_csr(&web(), &rng).expect("a CSR for a valid ID");
    ca.sign_csr(csr.as_bytes(), &web(), None, now, &rng).expect("the CA signs its own trust domain")
}

fn assert_one_spiffe_uri(work: &TempDir) {
    let text = openssl(&["x509", "-in", "leaf.pem", "-text", "-noout"], &work.0);
    assert_eq!(text.matches("URI:spiffe://").count(), 1, "{text}");
    assert!(text.contains("URI:spiffe://cluster.local/ns/shop/sa/web"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"), "{text}");
}

#[test]
fn openssl_verifies_leaves_of_a_self_generated_root() {
    openssl(&["version"], Path::new("."));
    let (dir, work) = (TempDir::new(), TempDir::new());
    let now = SystemTime::now();
    let (ca, _) = CertificateAuthority::open_or_create(&dir.0, CaConfig::default(), now, &SystemRandom::new()).unwrap();
    let svid = sign(&ca, now);
    assert!(openssl_verifies(&work, &dir.join("root-cert.pem"), &svid));
    assert_one_spiffe_uri(&work);
}

#[test]
fn openssl_verifies_leaves_of_an_intermediate_openssl_made_and_the_operator_plugged_in() {
    openssl(&["version"], Path::new("."));
    let (dir, work) = (TempDir::new(), TempDir::new());
    // An operator's offline root (EC) and an RSA intermediate, as in Istio's plug-in guide.
    std::fs::write(
        work.join("ext.cnf"),
        "[root]\nbasicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\n\
         [intermediate]\nbasicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n",
    )
    .unwrap();
    let run = |args: &str| openssl(&args.split_whitespace().collect::<Vec<_>>(), &work.0);
    run("genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root-key.pem");
    run("req -x509 -new -key root-key.pem -subj /O=Example/CN=Example-Root -days 3650 \
         -extensions root -config ext.cnf -out root-cert.pem");
    run("genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca-key.pem");
    run("req -new -key ca-key.pem -subj /O=Example/CN=Example-Intermediate -config ext.cnf -out ca.csr");
    run("x509 -req -in ca.csr -CA root-cert.pem -CAkey root-key.pem -CAcreateserial -days 365 \
         -extfile ext.cnf -extensions intermediate -out ca-cert.pem");
    for name in ["ca-cert.pem", "ca-key.pem", "root-cert.pem"] {
        std::fs::copy(work.join(name), dir.join(name)).unwrap();
    }
    let chain = std::fs::read_to_string(work.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(work.join("root-cert.pem")).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("ca-key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let now = SystemTime::now();
    let ca = CertificateAuthority::load(&dir.0, CaConfig::default(), now).unwrap();
    let svid = sign(&ca, now);
    assert_eq!(svid.chain_pem.matches("BEGIN CERTIFICATE").count(), 2, "leaf + intermediate");
    assert!(openssl_verifies(&work, &dir.join("root-cert.pem"), &svid));
    assert_one_spiffe_uri(&work);
}

#[test]
fn openssl_accepts_old_leaves_through_activation_and_rejects_them_after_retire() {
    openssl(&["version"], Path::new("."));
    let (dir, work) = (TempDir::new(), TempDir::new());
    let rng = SystemRandom::new();
    let now = SystemTime::now();
    let (old_ca, _) = CertificateAuthority::open_or_create(&dir.0, CaConfig::default(), now, &rng).unwrap();
    let old_leaf = sign(&old_ca, now);

    rotation::prepare(&dir.0, now, &rng).unwrap();
    rotation::activate(&dir.0, &CaConfig::default(), now).unwrap();
    let new_ca = CertificateAuthority::load(&dir.0, CaConfig::default(), now).unwrap();
    let new_leaf = sign(&new_ca, now);
    let bundle = dir.join("root-cert.pem");
    // Both roots share a subject name; OpenSSL must pick the right one by key identifier.
    assert!(openssl_verifies(&work, &bundle, &old_leaf), "old leaf after activate");
    assert!(openssl_verifies(&work, &bundle, &new_leaf), "new leaf after activate");

    rotation::retire(&dir.0, now, RetireCheck::Force).unwrap();
    assert!(!openssl_verifies(&work, &bundle, &old_leaf), "old leaf after retire");
    assert!(openssl_verifies(&work, &bundle, &new_leaf), "new leaf after retire");
}
