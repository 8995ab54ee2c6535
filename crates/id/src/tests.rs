use super::*;
use proptest::prelude::*;

#[test]
fn spiffe_id_parts_are_read_from_the_uri() {
    let id: SpiffeId = "spiffe://cluster.local/ns/fintech-core/sa/order-service".parse().unwrap();
    assert_eq!(id.trust_domain().as_str(), "cluster.local");
    assert_eq!(id.namespace().as_str(), "fintech-core");
    assert_eq!(id.service_account().as_str(), "order-service");
    assert_eq!(id.principal(), "cluster.local/ns/fintech-core/sa/order-service");
}

#[test]
fn spiffe_id_without_scheme_is_refused_by_from_str_but_read_as_a_principal() {
    assert!(matches!("cluster.local/ns/a/sa/b".parse::<SpiffeId>(), Err(IdError::NotSpiffeId { .. })));
    assert!(SpiffeId::from_principal("cluster.local/ns/a/sa/b").is_ok());
}

#[test]
fn spiffe_id_with_extra_or_missing_segments_is_refused() {
    for bad in [
        "spiffe://td/ns/a/sa/b/c",
        "spiffe://td/ns/a",
        "spiffe://td/namespace/a/sa/b",
        "spiffe://td/ns//sa/b",
        "spiffe:///ns/a/sa/b",
        "http://td/ns/a/sa/b",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad} should be refused");
    }
}

#[test]
fn bad_characters_are_named_with_their_position() {
    let error = "Fintech".parse::<Namespace>().unwrap_err();
    assert_eq!(
        error.to_string(),
        "namespace `Fintech` has the character 'F' at position 0; a namespace may only hold lowercase letters, digits and '-' (an RFC 1123 label)"
    );
}

#[test]
fn namespace_must_not_end_with_a_dash() {
    assert!(matches!("prod-".parse::<Namespace>(), Err(IdError::BadEdge { .. })));
}

#[test]
fn overlong_namespace_is_refused() {
    assert!(matches!("a".repeat(64).parse::<Namespace>(), Err(IdError::TooLong { .. })));
}

fn arb_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn arb_spiffe_id() -> impl Strategy<Value = SpiffeId> {
    ("[a-z0-9._-]{1,30}", arb_label(), "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?")
        .prop_map(|(td, ns, sa)| SpiffeId::new(td.parse().unwrap(), ns.parse().unwrap(), sa.parse().unwrap()))
}

proptest! {
    #[test]
    fn spiffe_id_display_then_parse_is_identity(id in arb_spiffe_id()) {
        prop_assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id.clone());
        prop_assert_eq!(SpiffeId::from_principal(id.principal()).unwrap(), id);
    }

    #[test]
    fn parse_then_display_is_identity_for_every_accepted_string(s in "spiffe://[a-z0-9./_-]{0,40}") {
        if let Ok(id) = s.parse::<SpiffeId>() {
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<SpiffeId>();
    }
}
