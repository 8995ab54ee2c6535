//! The control channel: a proxy trusts the control plane only through roots it already holds,
//! and the control plane learns a proxy's identity from the certificate it presents.

use std::sync::Arc;

use zmesh_tls::{ControlCredentials, control_client_config, control_plane_id, control_server_config, vouch};

use crate::fixtures::*;

const CONTROL: &str = "spiffe://cluster.local/ns/zmesh-system/sa/zmesh-control";

fn control_plane(ca: &Ca) -> Arc<zmesh_tls::CertStore> {
    store(&ca.issue(Leaf::spiffe(CONTROL)), &[ca], domains("cluster.local", &[]))
}

#[test]
fn the_control_plane_identity_is_fixed_per_trust_domain() {
    let domain = "cluster.local".parse().expect("valid");
    assert_eq!(control_plane_id(&domain), id(CONTROL));
}

#[tokio::test]
async fn a_proxy_without_an_svid_reaches_a_control_plane_its_roots_vouch_for_and_presents_nothing() {
    let ca = Ca::root("zmesh root");
    let roots = Arc::new(bundle(&[&ca], domains("cluster.local", &[])));
    let outcome = handshake(
        control_server_config(control_plane(&ca), &options()),
        control_client_config(&ControlCredentials::Bootstrap(roots), id(CONTROL), &options()),
    )
    .await;
    outcome.client.expect("the proxy accepts the control plane");
    let server = outcome.server.expect("the control plane lets a proxy without a certificate through");
    assert!(server.get_ref().1.peer_certificates().is_none(), "no client certificate was presented");
}

#[tokio::test]
async fn a_proxy_with_an_svid_presents_it_and_the_control_plane_reads_its_identity() {
    let ca = Ca::root("zmesh root");
    let proxy = store(&ca.issue(Leaf::spiffe(CLIENT_ID)), &[&ca], domains("cluster.local", &[]));
    let outcome = handshake(
        control_server_config(control_plane(&ca), &options()),
        control_client_config(&ControlCredentials::Svid(proxy), id(CONTROL), &options()),
    )
    .await;
    outcome.client.expect("the proxy accepts the control plane");
    let server = outcome.server.expect("the control plane accepts the proxy's SVID");
    assert_eq!(zmesh_tls::peer_identity(server.get_ref().1).expect("an identity"), id(CLIENT_ID));
}

#[tokio::test]
async fn a_control_plane_under_a_root_the_proxy_does_not_hold_is_refused() {
    let mesh = Ca::root("zmesh root");
    let attacker = Ca::root("zmesh root");
    let roots = Arc::new(bundle(&[&mesh], domains("cluster.local", &[])));
    let outcome = handshake(
        control_server_config(control_plane(&attacker), &options()),
        control_client_config(&ControlCredentials::Bootstrap(roots), id(CONTROL), &options()),
    )
    .await;
    // The attacker's root even copies the mesh root's name: only the key tells them apart.
    let error = outcome.client.expect_err("an on-path server with its own root is refused");
    assert!(peer_fault(&error).contains("signature does not match its issuer's key"), "{error}");
}

#[tokio::test]
async fn a_mesh_workload_posing_as_the_control_plane_is_refused() {
    let ca = Ca::root("zmesh root");
    let workload = store(&ca.issue(Leaf::spiffe(SERVER_ID)), &[&ca], domains("cluster.local", &[]));
    let roots = Arc::new(bundle(&[&ca], domains("cluster.local", &[])));
    let outcome = handshake(
        control_server_config(workload, &options()),
        control_client_config(&ControlCredentials::Bootstrap(roots), id(CONTROL), &options()),
    )
    .await;
    let error = outcome.client.expect_err("a workload SVID is not the control plane's");
    assert!(peer_fault(&error).contains("not an identity this destination expects"), "{error}");
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_not_ignored() {
    let ca = Ca::root("zmesh root");
    let other = Ca::root("zmesh root");
    let outcome = handshake(
        control_server_config(control_plane(&ca), &options()),
        bare_client(Some(&other.issue(Leaf::spiffe(CLIENT_ID)))),
    )
    .await;
    let error = outcome.server.expect_err("a presented certificate must verify");
    assert!(peer_fault(&error).contains("signature does not match its issuer's key"), "{error}");
}

#[test]
fn a_bundle_that_keeps_a_trusted_root_is_vouched_for_and_one_that_does_not_is_refused() {
    let old = Ca::root("zmesh root old");
    let new = Ca::root("zmesh root new");
    let planted = Ca::root("zmesh root planted");
    let trusted = bundle(&[&old], domains("cluster.local", &[]));
    let prepared = bundle(&[&old, &new], domains("cluster.local", &[]));
    let retired = bundle(&[&new], domains("cluster.local", &[]));
    vouch(&trusted, &prepared).expect("a rotation's prepare step keeps the old root");
    vouch(&prepared, &retired).expect("after prepare, the retire step keeps the new root");
    let error = vouch(&trusted, &retired).expect_err("skipping the overlap is refused");
    assert!(error.to_string().contains("shares no root"), "{error}");
    assert!(vouch(&trusted, &bundle(&[&planted], domains("cluster.local", &[]))).is_err());
}
