//! Handshakes that succeed, and the refusals rustls makes on our configs' behalf.

use rustls::pki_types::ServerName;

use crate::fixtures::*;

#[tokio::test]
async fn mutual_tls_over_loopback_lets_each_side_name_the_other() {
    let ca = Ca::root("zmesh root");
    let server_svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let client_svid = ca.issue(Leaf::spiffe(CLIENT_ID));
    let (addr, mut reports) =
        echo_server(mesh_server(store(&server_svid, &[&ca], domains("cluster.local", &[])))).await;

    let client_store = store(&client_svid, &[&ca], domains("cluster.local", &[]));
    let mut tls = connect(addr, mesh_client(client_store, &[SERVER_ID])).await.expect("mesh peers connect");

    let server_saw =
        reports.recv().await.expect("the server reports the handshake").expect("the server admits the client");
    assert_eq!(server_saw, id(CLIENT_ID));
    let connection = tls.get_ref().1;
    assert_eq!(zmesh_tls::peer_identity(connection).expect("the client reads the server's ID"), id(SERVER_ID));
    assert_eq!(connection.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(connection.alpn_protocol(), Some(zmesh_tls::ALPN_H2));
    echo(&mut tls, b"hello over mesh mTLS").await;
}

#[tokio::test]
async fn a_leaf_under_an_intermediate_is_accepted_when_the_peer_sends_the_intermediate() {
    let root = Ca::root("zmesh root");
    let intermediate = root.intermediate("zmesh intermediate");
    let server_svid = intermediate.issue(Leaf::spiffe(SERVER_ID));
    let client_svid = intermediate.issue(Leaf::spiffe(CLIENT_ID));
    let outcome = handshake(
        mesh_server(store(&server_svid, &[&root], domains("cluster.local", &[]))),
        mesh_client(store(&client_svid, &[&root], domains("cluster.local", &[])), &[SERVER_ID]),
    )
    .await;

    let server = outcome.server.expect("the server admits a client whose chain includes the intermediate");
    outcome.client.expect("the client admits a server whose chain includes the intermediate");
    assert_eq!(zmesh_tls::peer_identity(server.get_ref().1).expect("verified peer"), id(CLIENT_ID));
}

#[tokio::test]
async fn a_client_from_an_alias_trust_domain_is_accepted_when_the_alias_is_configured() {
    let ca = Ca::root("zmesh root");
    let alias_client = ca.issue(Leaf::spiffe("spiffe://old.local/ns/web/sa/frontend"));
    let server_svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let outcome = handshake(
        mesh_server(store(&server_svid, &[&ca], domains("cluster.local", &["old.local"]))),
        mesh_client(store(&alias_client, &[&ca], domains("cluster.local", &[])), &[SERVER_ID]),
    )
    .await;

    let server = outcome.server.expect("the server admits a client from a configured alias");
    assert_eq!(
        zmesh_tls::peer_identity(server.get_ref().1).expect("verified peer"),
        id("spiffe://old.local/ns/web/sa/frontend")
    );
}

#[tokio::test]
async fn a_server_from_an_alias_trust_domain_matches_the_expected_local_identity_when_the_alias_is_configured() {
    let ca = Ca::root("zmesh root");
    let alias_server = ca.issue(Leaf::spiffe("spiffe://old.local/ns/shop/sa/cart"));
    let client_svid = ca.issue(Leaf::spiffe(CLIENT_ID));
    let outcome = handshake(
        mesh_server(store(&alias_server, &[&ca], domains("cluster.local", &[]))),
        mesh_client(store(&client_svid, &[&ca], domains("cluster.local", &["old.local"])), &[SERVER_ID]),
    )
    .await;

    let client = outcome.client.expect("the client admits the cart server under its former trust domain");
    assert_eq!(
        zmesh_tls::peer_identity(client.get_ref().1).expect("verified peer"),
        id("spiffe://old.local/ns/shop/sa/cart")
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let ca = Ca::root("zmesh root");
    let server_svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let outcome =
        handshake(mesh_server(store(&server_svid, &[&ca], domains("cluster.local", &[]))), bare_client(None)).await;

    let error = outcome.server.expect_err("the server requires a client certificate");
    assert_eq!(error.to_string(), "peer sent no certificates");
}

#[test]
fn peer_identity_before_the_handshake_says_there_is_no_peer_certificate() {
    let ca = Ca::root("zmesh root");
    let client_svid = ca.issue(Leaf::spiffe(CLIENT_ID));
    let config = mesh_client(store(&client_svid, &[&ca], domains("cluster.local", &[])), &[SERVER_ID]);
    let connection = rustls::ClientConnection::new(config, ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
        .expect("a client connection starts");

    let error = zmesh_tls::peer_identity(&connection).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the connection has no peer certificate; read the peer identity only after a completed mTLS handshake"
    );
    assert_eq!(error.side(), zmesh_tls::Side::Local);
}
