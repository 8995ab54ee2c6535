use super::*;

fn parse(input: &str) -> Result<Vec<Document>, YamlError> {
    parse_stream(input, &Limits::default())
}

#[test]
fn documents_and_positions_are_kept() {
    let docs = parse("a: 1\n---\n# only a comment\n---\nb:\n  - x\n  - 'y'\n").unwrap();
    assert_eq!(docs.len(), 3);
    assert!(docs[1].root.is_none());
    let b = docs[2].root.as_ref().unwrap().get("b").unwrap();
    let Value::Seq(items) = &b.value else { panic!("expected a list") };
    assert_eq!(items[1].pos, Pos { line: 7, column: 5 });
    assert_eq!(items[1].scalar_type(), Some(ScalarType::String));
}

#[test]
fn plain_scalars_resolve_with_the_core_schema() {
    let docs = parse("a: 9090\nb: 'true'\nc: true\nd: ~\ne: 0.5\nf: 0x1F\ng: 1.2.3\n").unwrap();
    let root = docs[0].root.as_ref().unwrap();
    let ty = |k: &str| root.get(k).unwrap().scalar_type().unwrap();
    assert_eq!(ty("a"), ScalarType::Int);
    assert_eq!(ty("b"), ScalarType::String);
    assert_eq!(ty("c"), ScalarType::Bool);
    assert_eq!(ty("d"), ScalarType::Null);
    assert_eq!(ty("e"), ScalarType::Float);
    assert_eq!(ty("f"), ScalarType::Int);
    assert_eq!(ty("g"), ScalarType::String);
    assert_eq!(root.to_json()["f"], serde_json::json!(31));
}

#[test]
fn duplicate_keys_are_refused_with_both_lines() {
    let error = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
    assert_eq!(
        error.to_string(),
        "3:1: duplicate key `a` (first at line 1); Kubernetes rejects duplicate keys, so remove one"
    );
}

#[test]
fn syntax_errors_carry_a_position() {
    let error = parse("a: [1, 2\n").unwrap_err();
    assert!(matches!(error, YamlError::Syntax { .. }), "{error}");
    assert!(error.pos().is_some());
}

#[test]
fn aliases_expand_to_copies_of_the_anchor() {
    let docs = parse("a: &x {k: v}\nb: *x\n").unwrap();
    let root = docs[0].root.as_ref().unwrap();
    assert_eq!(root.get("b").unwrap().get("k").unwrap().scalar_text(), Some("v"));
}

#[test]
fn an_alias_bomb_is_refused() {
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
    let mut previous = "a";
    for name in names {
        bomb.push_str(&format!("{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"));
        previous = name;
    }
    let error = parse(&bomb).unwrap_err();
    assert!(matches!(error, YamlError::TooManyNodes { .. }), "{error}");
}

#[test]
fn deep_nesting_is_refused() {
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    assert!(matches!(parse(&deep).unwrap_err(), YamlError::TooDeep { .. }));
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let limits = Limits { max_bytes: 10, ..Limits::default() };
    assert!(matches!(parse_stream("a: 12345678901", &limits), Err(YamlError::TooLarge { .. })));
}

#[test]
fn merge_keys_are_refused_explicitly() {
    let error = parse("base: &b {x: 1}\nderived:\n  <<: *b\n").unwrap_err();
    assert!(matches!(error, YamlError::MergeKey { .. }), "{error}");
}
