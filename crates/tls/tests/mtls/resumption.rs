//! Session resumption: a proxy that reconnects skips the full handshake, keeps its verified
//! identity, and never resumes across a certificate change or past the ticket's lifetime.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::HandshakeKind;
use rustls::pki_types::UnixTime;
use rustls::time_provider::TimeProvider;
use tokio::net::TcpStream;
use tokio_rustls::client;
use zmesh_tls::{TICKET_LIFETIME, TlsOptions, server_config};

use crate::fixtures::*;

/// A clock a test can move forward.
#[derive(Debug)]
struct MovableClock(AtomicU64);

impl TimeProvider for MovableClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(self.0.load(Ordering::SeqCst))))
    }
}

fn kind(tls: &client::TlsStream<TcpStream>) -> Option<HandshakeKind> {
    tls.get_ref().1.handshake_kind()
}

/// A connection that has carried data, so the client has read the server's tickets.
async fn used(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> client::TlsStream<TcpStream> {
    let mut tls = connect(addr, config).await.expect("the handshake succeeds");
    echo(&mut tls, b"ping").await;
    tls
}

/// What is swapped, and the swap.
type Swap<'a> = (&'a str, Box<dyn Fn() + 'a>);

struct Pair {
    server_store: Arc<zmesh_tls::CertStore>,
    client_store: Arc<zmesh_tls::CertStore>,
    ca: Ca,
}

fn pair() -> Pair {
    let ca = Ca::root("zmesh root");
    let server_store = store(&ca.issue(Leaf::spiffe(SERVER_ID)), &[&ca], domains("cluster.local", &[]));
    let client_store = store(&ca.issue(Leaf::spiffe(CLIENT_ID)), &[&ca], domains("cluster.local", &[]));
    Pair { server_store, client_store, ca }
}

#[tokio::test]
async fn a_reconnecting_client_resumes_and_both_sides_still_know_who_the_other_is() {
    let p = pair();
    let (addr, mut reports) = echo_server(mesh_server(p.server_store.clone())).await;
    let client = mesh_client(p.client_store.clone(), &[SERVER_ID]);

    let first = used(addr, client.clone()).await;
    assert_eq!(kind(&first), Some(HandshakeKind::Full));
    assert_eq!(reports.recv().await.expect("reported").expect("admitted"), id(CLIENT_ID));

    let mut second = used(addr, client.clone()).await;
    assert_eq!(kind(&second), Some(HandshakeKind::Resumed), "no certificates sent or verified again");
    assert_eq!(reports.recv().await.expect("reported").expect("admitted"), id(CLIENT_ID), "the server's view");
    assert_eq!(zmesh_tls::peer_identity(second.get_ref().1).expect("verified peer"), id(SERVER_ID));
    echo(&mut second, b"a resumed connection carries data").await;

    // A client config for another destination has its own sessions: it never offers these.
    let other = mesh_client(p.client_store.clone(), &[SERVER_ID, "spiffe://cluster.local/ns/shop/sa/other"]);
    assert_eq!(kind(&used(addr, other).await), Some(HandshakeKind::Full));
}

#[tokio::test]
async fn a_changed_certificate_or_bundle_on_either_side_means_a_full_handshake() {
    let p = pair();
    let (addr, mut reports) = echo_server(mesh_server(p.server_store.clone())).await;
    let client = mesh_client(p.client_store.clone(), &[SERVER_ID]);
    let same_bundle = || bundle(&[&p.ca], domains("cluster.local", &[]));
    let swaps: [Swap; 4] = [
        ("server SVID", Box::new(|| drop(p.server_store.set_identity(p.ca.issue(Leaf::spiffe(SERVER_ID)).identity())))),
        ("server bundle", Box::new(|| drop(p.server_store.set_bundle(same_bundle())))),
        ("client SVID", Box::new(|| drop(p.client_store.set_identity(p.ca.issue(Leaf::spiffe(CLIENT_ID)).identity())))),
        ("client bundle", Box::new(|| drop(p.client_store.set_bundle(same_bundle())))),
    ];
    let _warm = used(addr, client.clone()).await;
    for (swapped, swap) in swaps {
        assert_eq!(kind(&used(addr, client.clone()).await), Some(HandshakeKind::Resumed), "before the {swapped} swap");
        swap();
        assert_eq!(kind(&used(addr, client.clone()).await), Some(HandshakeKind::Full), "after the {swapped} swap");
    }
    while let Ok(report) = reports.try_recv() {
        assert_eq!(report.expect("admitted"), id(CLIENT_ID));
    }
}

#[tokio::test]
async fn a_ticket_older_than_its_lifetime_is_refused_by_the_server() {
    let p = pair();
    let clock = Arc::new(MovableClock(AtomicU64::new(NOW)));
    let options = TlsOptions { time_provider: clock.clone(), ..TlsOptions::default() };
    let (addr, _reports) = echo_server(server_config(p.server_store.clone(), &options)).await;
    // The client's clock stays put, so it keeps offering its tickets: the server decides.
    let client = mesh_client(p.client_store.clone(), &[SERVER_ID]);

    let _first = used(addr, client.clone()).await;
    clock.0.fetch_add(u64::from(TICKET_LIFETIME), Ordering::SeqCst);
    assert_eq!(kind(&used(addr, client.clone()).await), Some(HandshakeKind::Resumed), "at its lifetime: still good");
    clock.0.fetch_add(u64::from(TICKET_LIFETIME) + 1, Ordering::SeqCst);
    assert_eq!(kind(&used(addr, client).await), Some(HandshakeKind::Full), "past it");
}

#[tokio::test]
async fn a_burst_of_dials_to_one_peer_all_resume_once_tickets_are_in_stock() {
    let p = pair();
    let (addr, _reports) = echo_server(mesh_server(p.server_store.clone())).await;
    let client = mesh_client(p.client_store.clone(), &[SERVER_ID]);
    // Each connection uses one ticket and brings two: after these, more than a dozen are saved.
    for _ in 0..14 {
        drop(used(addr, client.clone()).await);
    }
    // Twelve dials that read nothing (so bring no ticket back), as a burst of dials would be:
    // each needs a ticket of its own from the stock.
    let mut burst = Vec::new();
    for _ in 0..12 {
        burst.push(connect(addr, client.clone()).await.expect("handshake"));
    }
    let kinds: Vec<Option<HandshakeKind>> = burst.iter().map(kind).collect();
    assert!(kinds.iter().all(|k| *k == Some(HandshakeKind::Resumed)), "{kinds:?}");
}
