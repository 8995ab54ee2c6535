//! The signing service's hot path: verify one CSR and sign one SVID.
//! Target: at least 5,000 per second on one core, i.e. at most 200 µs per iteration.

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use ring::rand::SystemRandom;
use zmesh_ca::{CaConfig, CertificateAuthority, Csr, generate_csr};
use zmesh_id::SpiffeId;

fn sign(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let now = UNIX_EPOCH + Duration::from_secs(1_735_689_600);
    let dir = std::env::temp_dir().join(format!("zmesh-ca-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (ca, _) =
        CertificateAuthority::open_or_create(&dir, CaConfig::default(), now, &rng).expect("a CA in a temp dir");
    let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().expect("a valid SPIFFE ID");
    let (csr_pem, _key) = generate_csr(&id, &rng).expect("a CSR");
    let at = |offset: u64| -> SystemTime { now + Duration::from_secs(offset % 3600) };

    let mut offset = 0u64;
    c.bench_function("ca/verify-csr-and-sign-svid", |b| {
        b.iter(|| {
            offset += 1;
            ca.sign_csr(black_box(csr_pem.as_bytes()), &id, None, at(offset), &rng).expect("signing succeeds")
        })
    });
    c.bench_function("ca/verify-csr", |b| b.iter(|| Csr::parse(black_box(csr_pem.as_bytes())).expect("a valid CSR")));
    let csr = Csr::parse(csr_pem.as_bytes()).expect("a valid CSR");
    c.bench_function("ca/sign-svid", |b| {
        b.iter(|| ca.sign(black_box(&csr), &id, None, now, &rng).expect("signing succeeds"))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, sign);
criterion_main!(benches);
