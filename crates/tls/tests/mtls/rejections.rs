//! Each way a peer certificate is refused, on the server side (verifying a client) and the client
//! side (verifying a server), with the exact text that reaches the logs.

use crate::fixtures::*;

const EXPIRED: &str = "peer certificate expired: now is 2030-01-01T12:00:00Z, it was valid from 2029-12-30T00:00:00Z \
     to 2029-12-31T00:00:00Z; the peer must renew its SVID (can it reach the mesh CA?), or this host's clock is wrong";

const NOT_YET_VALID: &str = "peer certificate is not valid yet: now is 2030-01-01T12:00:00Z, it is valid from \
     2030-01-02T00:00:00Z to 2030-01-03T00:00:00Z; the clocks of this host and of the mesh CA disagree";

const UNKNOWN_ISSUER: &str = "peer certificate was issued by `CN=other mesh root`, which does not chain to any root of \
     the trust bundle (`CN=zmesh root`); the peer belongs to another CA, or the bundle lacks that CA's root (during a \
     root rotation, the bundle must hold the old and the new root)";

const TWO_URIS: &str = "peer certificate carries 2 URI SANs (spiffe://cluster.local/ns/shop/sa/cart, \
     spiffe://cluster.local/ns/shop/sa/admin); a mesh SVID must carry exactly one, its SPIFFE ID";

const DNS_ONLY: &str = "peer certificate carries no SPIFFE ID: it has no URI SAN (its SANs: DNS:cart.shop.svc, \
     DNS:cart.example.com); a mesh SVID must carry exactly one URI SAN \
     `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`";

const CA_AS_LEAF: &str = "peer certificate `CN=rogue intermediate` is a CA certificate (BasicConstraints CA:true) \
     presented as a leaf; present a workload SVID issued by the CA, never the CA certificate itself";

fn wrong_domain(id: &str, domain: &str, accepted: &str) -> String {
    format!(
        "peer `{id}` belongs to trust domain `{domain}`, but this proxy accepts only {accepted}; if `{domain}` is a \
         former name of this mesh, add it to the trust-domain aliases"
    )
}

fn expired(uri: &str) -> Leaf {
    Leaf::spiffe(uri).valid((2029, 12, 30), (2029, 12, 31))
}

fn not_yet_valid(uri: &str) -> Leaf {
    Leaf::spiffe(uri).valid((2030, 1, 2), (2030, 1, 3))
}

fn two_uris() -> Leaf {
    Leaf::with_sans(vec![uri_san(SERVER_ID), uri_san("spiffe://cluster.local/ns/shop/sa/admin")])
}

fn dns_only() -> Leaf {
    Leaf::with_sans(vec![dns_san("cart.shop.svc"), dns_san("cart.example.com")])
}

fn ca_as_leaf() -> Leaf {
    Leaf::spiffe(SERVER_ID).presented_as_ca("rogue intermediate")
}

// ---- a certificate from another CA ----

#[tokio::test]
async fn server_refuses_a_client_from_another_ca_naming_its_issuer_and_our_roots() {
    let ca = Ca::root("zmesh root");
    let stranger = Ca::root("other mesh root").issue(Leaf::spiffe(CLIENT_ID));
    assert_eq!(server_refuses(&ca, domains("cluster.local", &[]), &stranger).await, UNKNOWN_ISSUER);
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca_naming_its_issuer_and_our_roots() {
    let ca = Ca::root("zmesh root");
    let stranger = Ca::root("other mesh root").issue(Leaf::spiffe(SERVER_ID));
    assert_eq!(client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &stranger).await, UNKNOWN_ISSUER);
}

#[tokio::test]
async fn server_refuses_a_client_that_omits_its_intermediate() {
    let root = Ca::root("zmesh root");
    let intermediate = root.intermediate("zmesh intermediate");
    let mut client = intermediate.issue(Leaf::spiffe(CLIENT_ID));
    client.chain_pem = client.leaf_pem.clone();
    let expected = UNKNOWN_ISSUER.replace("other mesh root", "zmesh intermediate");
    assert_eq!(server_refuses(&root, domains("cluster.local", &[]), &client).await, expected);
}

// ---- validity window ----

#[tokio::test]
async fn server_refuses_an_expired_client_with_now_and_the_validity_window() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(expired(CLIENT_ID));
    assert_eq!(server_refuses(&ca, domains("cluster.local", &[]), &client).await, EXPIRED);
}

#[tokio::test]
async fn client_refuses_an_expired_server_with_now_and_the_validity_window() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(expired(SERVER_ID));
    assert_eq!(client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &server).await, EXPIRED);
}

#[tokio::test]
async fn server_refuses_a_client_that_is_not_valid_yet() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(not_yet_valid(CLIENT_ID));
    assert_eq!(server_refuses(&ca, domains("cluster.local", &[]), &client).await, NOT_YET_VALID);
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_valid_yet() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(not_yet_valid(SERVER_ID));
    assert_eq!(client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &server).await, NOT_YET_VALID);
}

// ---- trust domains ----

#[tokio::test]
async fn server_refuses_a_client_from_a_foreign_trust_domain_naming_it_and_the_accepted_ones() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(Leaf::spiffe("spiffe://evil.example/ns/web/sa/frontend"));
    assert_eq!(
        server_refuses(&ca, domains("cluster.local", &["old.local"]), &client).await,
        wrong_domain(
            "spiffe://evil.example/ns/web/sa/frontend",
            "evil.example",
            "`cluster.local` and the aliases `old.local`"
        )
    );
}

#[tokio::test]
async fn client_refuses_a_server_from_a_foreign_trust_domain_naming_it_and_the_accepted_ones() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(Leaf::spiffe("spiffe://evil.example/ns/shop/sa/cart"));
    assert_eq!(
        client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &server).await,
        wrong_domain("spiffe://evil.example/ns/shop/sa/cart", "evil.example", "`cluster.local` and no alias")
    );
}

#[tokio::test]
async fn server_refuses_a_client_from_an_alias_that_is_not_configured() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(Leaf::spiffe("spiffe://old.local/ns/web/sa/frontend"));
    assert_eq!(
        server_refuses(&ca, domains("cluster.local", &[]), &client).await,
        wrong_domain("spiffe://old.local/ns/web/sa/frontend", "old.local", "`cluster.local` and no alias")
    );
}

#[tokio::test]
async fn client_refuses_a_server_from_an_alias_that_is_not_configured() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(Leaf::spiffe("spiffe://old.local/ns/shop/sa/cart"));
    assert_eq!(
        client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &server).await,
        wrong_domain("spiffe://old.local/ns/shop/sa/cart", "old.local", "`cluster.local` and no alias")
    );
}

// ---- SANs ----

#[tokio::test]
async fn server_refuses_a_client_with_two_uri_sans() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(two_uris());
    assert_eq!(server_refuses(&ca, domains("cluster.local", &[]), &client).await, TWO_URIS);
}

#[tokio::test]
async fn client_refuses_a_server_with_two_uri_sans() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(two_uris());
    assert_eq!(client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &server).await, TWO_URIS);
}

#[tokio::test]
async fn server_refuses_a_client_with_only_dns_sans() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(dns_only());
    assert_eq!(server_refuses(&ca, domains("cluster.local", &[]), &client).await, DNS_ONLY);
}

#[tokio::test]
async fn client_refuses_a_server_with_only_dns_sans() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(dns_only());
    assert_eq!(client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &server).await, DNS_ONLY);
}

#[tokio::test]
async fn server_refuses_a_client_whose_uri_san_is_not_a_workload_spiffe_id() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(Leaf::spiffe("spiffe://cluster.local/workload/frontend"));
    assert_eq!(
        server_refuses(&ca, domains("cluster.local", &[]), &client).await,
        "peer certificate URI SAN `spiffe://cluster.local/workload/frontend` is not a SPIFFE ID: \
         `spiffe://cluster.local/workload/frontend` is not a SPIFFE ID of the form \
         spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    );
}

// ---- a CA certificate presented as a leaf ----

#[tokio::test]
async fn server_refuses_a_ca_certificate_presented_as_a_client_leaf() {
    let ca = Ca::root("zmesh root");
    let client = ca.issue(ca_as_leaf());
    assert_eq!(server_refuses(&ca, domains("cluster.local", &[]), &client).await, CA_AS_LEAF);
}

#[tokio::test]
async fn client_refuses_a_ca_certificate_presented_as_a_server_leaf() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(ca_as_leaf());
    assert_eq!(client_refuses(&ca, domains("cluster.local", &[]), &[SERVER_ID], &server).await, CA_AS_LEAF);
}

// ---- an identity the destination does not expect (client side only) ----

#[tokio::test]
async fn client_refuses_a_valid_server_that_is_not_an_expected_identity_naming_both() {
    let ca = Ca::root("zmesh root");
    let server = ca.issue(Leaf::spiffe("spiffe://cluster.local/ns/shop/sa/payments"));
    let expected = [SERVER_ID, "spiffe://cluster.local/ns/shop/sa/cart-canary"];
    assert_eq!(
        client_refuses(&ca, domains("cluster.local", &[]), &expected, &server).await,
        "server `spiffe://cluster.local/ns/shop/sa/payments` is not an identity this destination expects \
         (expected: `spiffe://cluster.local/ns/shop/sa/cart`, `spiffe://cluster.local/ns/shop/sa/cart-canary`); \
         the address may now belong to another workload, or the destination's service accounts are misconfigured"
    );
}

#[tokio::test]
async fn client_refuses_a_mesh_server_with_an_unexpected_identity() {
    // The same check with the real mesh server on the other end, not a bare one.
    let ca = Ca::root("zmesh root");
    let server_svid = ca.issue(Leaf::spiffe(SERVER_ID));
    let client_svid = ca.issue(Leaf::spiffe(CLIENT_ID));
    let outcome = handshake(
        mesh_server(store(&server_svid, &[&ca], domains("cluster.local", &[]))),
        mesh_client(
            store(&client_svid, &[&ca], domains("cluster.local", &[])),
            &["spiffe://cluster.local/ns/db/sa/db"],
        ),
    )
    .await;
    let error = outcome.client.expect_err("the client refuses the unexpected server");
    assert!(peer_fault(&error).starts_with("server `spiffe://cluster.local/ns/shop/sa/cart` is not an identity"));
}
