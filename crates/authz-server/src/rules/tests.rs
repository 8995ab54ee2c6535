use std::collections::BTreeMap;

use super::*;
use crate::attributes::ClaimValue;

fn at(rfc3339: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(rfc3339).expect("test time").into()
}

fn rules(text: &str) -> RuleSet {
    RuleSet::parse("rules.yaml", text).unwrap_or_else(|error| panic!("the rules do not load:\n{error}"))
}

fn problems(text: &str) -> Vec<String> {
    match RuleSet::parse("rules.yaml", text) {
        Ok(_) => panic!("the rules loaded, but problems were expected"),
        Err(LoadError::Invalid { problems }) => problems.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

fn get(path: &str) -> RequestAttributes {
    RequestAttributes { method: "GET".into(), path: path.into(), host: "shop.example".into(), ..Default::default() }
}

fn with_header(mut request: RequestAttributes, name: &str, value: &str) -> RequestAttributes {
    request.headers.push((name.into(), value.into()));
    request
}

fn with_claims(mut request: RequestAttributes, claims: &[(&str, ClaimValue)]) -> RequestAttributes {
    request.claims = claims.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<BTreeMap<_, _>>();
    request
}

fn business_hours() -> RuleSet {
    let path = zmesh_testkit::testdata().join("authz-server/business-hours.yaml");
    RuleSet::load(&path).unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn business_hours_follow_berlin_time_not_utc() {
    let rules = business_hours();
    let request = get("/catalog");
    // Monday 2 March 2026: Berlin is UTC+1.
    let monday_0930_berlin = rules.decide(&request, at("2026-03-02T08:30:00Z"));
    assert!(monday_0930_berlin.is_allowed(), "{:?}", monday_0930_berlin.by);
    assert_eq!(monday_0930_berlin.by, DecidedBy::Rule("business-hours"));
    // 08:30 in Berlin is 07:30 UTC: still closed, although 08:30 UTC would be open.
    let monday_0830_berlin = rules.decide(&request, at("2026-03-02T07:30:00Z"));
    assert!(!monday_0830_berlin.is_allowed());
    assert_eq!(monday_0830_berlin.by, DecidedBy::Rule("closed"));
    assert_eq!(monday_0830_berlin.outcome.status, 403);
    assert!(monday_0830_berlin.outcome.body.starts_with("closed outside business hours"));
    // 17:30 UTC is 18:30 in Berlin: closed.
    assert!(!rules.decide(&request, at("2026-03-02T17:30:00Z")).is_allowed());
}

#[test]
fn business_hours_follow_summer_time() {
    let rules = business_hours();
    // Monday 6 July 2026: Berlin is UTC+2, so 07:30 UTC is 09:30 there.
    assert!(rules.decide(&get("/catalog"), at("2026-07-06T07:30:00Z")).is_allowed());
    // 16:30 UTC is 18:30 in Berlin: closed, although UTC+1 would still be open.
    assert!(!rules.decide(&get("/catalog"), at("2026-07-06T16:30:00Z")).is_allowed());
}

#[test]
fn the_weekend_is_closed_in_berlin_even_when_it_is_friday_in_utc() {
    let rules = business_hours();
    // Friday 6 March 2026 23:30 UTC is Saturday 00:30 in Berlin.
    let decision = rules.decide(&get("/catalog"), at("2026-03-06T23:30:00Z"));
    assert_eq!(decision.by, DecidedBy::Rule("closed"));
    // Saturday noon.
    assert!(!rules.decide(&get("/catalog"), at("2026-03-07T11:00:00Z")).is_allowed());
}

#[test]
fn an_allow_carries_the_rule_headers_for_the_upstream() {
    let rules = business_hours();
    let decision = rules.decide(&get("/catalog"), at("2026-03-02T08:30:00Z"));
    assert_eq!(
        decision.outcome.headers,
        vec![(HeaderName::from_static("x-authz-rule"), HeaderValue::from_static("business-hours"))]
    );
    assert_eq!(decision.outcome.status, 200);
}

#[test]
fn a_rule_time_zone_overrides_the_file_time_zone() {
    let rules = rules(
        "timeZone: Europe/Berlin\nrules:\n- name: new-york-morning\n  timeZone: America/New_York\n  when: now.getHours() == 9\n  action: allow\n",
    );
    // 14:00 UTC in March 2026 (after the US switch to daylight time on 8 March) is 10:00 in
    // New York; 13:00 UTC is 09:00.
    assert!(rules.decide(&get("/"), at("2026-03-10T13:00:00Z")).is_allowed());
    assert!(!rules.decide(&get("/"), at("2026-03-10T14:00:00Z")).is_allowed());
}

#[test]
fn an_explicit_zone_argument_is_honoured() {
    let rules = rules("rules:\n- name: tokyo\n  when: now.getHours('Asia/Tokyo') == 18\n  action: allow\n");
    assert!(rules.decide(&get("/"), at("2026-03-10T09:00:00Z")).is_allowed());
    assert!(!rules.decide(&get("/"), at("2026-03-10T18:00:00Z")).is_allowed());
}

#[test]
fn an_amount_header_at_or_below_the_token_limit_is_allowed_and_above_it_is_denied() {
    let rules = business_hours();
    let sunday_night = at("2026-03-08T22:00:00Z");
    let payment = |amount: &str, limit: f64| {
        with_claims(
            with_header(get("/payments/42"), "x-amount", amount),
            &[("payment_limit", ClaimValue::Number(limit))],
        )
    };
    let within = rules.decide(&payment("250", 500.0), sunday_night);
    assert!(within.is_allowed(), "{:?}", within.by);
    assert_eq!(within.by, DecidedBy::Rule("payments-within-limit"));
    assert!(rules.decide(&payment("500", 500.0), sunday_night).is_allowed());
    let over = rules.decide(&payment("501", 500.0), sunday_night);
    assert_eq!(over.by, DecidedBy::Rule("closed"));
    // No token: the claim is absent, so the rule does not match (it tests for it first).
    let anonymous = with_header(get("/payments/42"), "x-amount", "1");
    assert_eq!(rules.decide(&anonymous, sunday_night).by, DecidedBy::Rule("closed"));
}

#[test]
fn claims_compare_as_strings_lists_and_nested_maps() {
    let rules = rules(
        r#"rules:
- name: admins-of-acme
  when: >-
    request.auth.claims.iss == "https://issuer.example" &&
    "admin" in request.auth.claims.groups &&
    request.auth.claims.org.name == "acme"
  action: allow
"#,
    );
    let claims = |group: &str, org: &str| {
        vec![
            ("iss", ClaimValue::String("https://issuer.example".into())),
            ("groups", ClaimValue::List(vec![ClaimValue::String("dev".into()), ClaimValue::String(group.into())])),
            ("org", ClaimValue::Map([("name".to_owned(), ClaimValue::String(org.into()))].into())),
        ]
    };
    let now = at("2026-03-02T08:30:00Z");
    assert!(rules.decide(&with_claims(get("/"), &claims("admin", "acme")), now).is_allowed());
    assert!(!rules.decide(&with_claims(get("/"), &claims("ops", "acme")), now).is_allowed());
    assert!(!rules.decide(&with_claims(get("/"), &claims("admin", "other")), now).is_allowed());
}

#[test]
fn an_evaluation_error_denies_even_when_a_later_rule_would_allow() {
    let rules = rules(
        r#"rules:
- name: small-orders
  when: int(request.headers["x-amount"]) < 100
  action: allow
- name: everyone
  when: "true"
  action: allow
"#,
    );
    let now = at("2026-03-02T08:30:00Z");
    // Not a number: int() fails.
    let decision = rules.decide(&with_header(get("/"), "x-amount", "lots"), now);
    assert!(!decision.is_allowed());
    assert_eq!(decision.outcome.status, 403);
    assert!(matches!(decision.by, DecidedBy::Error { rule: "small-orders", .. }), "{:?}", decision.by);
    // No such header: the map lookup fails.
    let decision = rules.decide(&get("/"), now);
    assert!(matches!(decision.by, DecidedBy::Error { rule: "small-orders", .. }), "{:?}", decision.by);
    // With a number, the first rule decides normally.
    assert!(rules.decide(&with_header(get("/"), "x-amount", "5"), now).is_allowed());
}

#[test]
fn an_expression_that_is_not_a_boolean_denies() {
    let rules = rules("default: allow\nrules:\n- name: path\n  when: request.path\n  action: allow\n");
    let decision = rules.decide(&get("/x"), at("2026-03-02T08:30:00Z"));
    assert!(!decision.is_allowed());
    let DecidedBy::Error { rule, message } = decision.by else { panic!("expected an error, got {:?}", decision.by) };
    assert_eq!(rule, "path");
    assert!(message.contains("instead of a boolean"), "{message}");
}

#[test]
fn no_matching_rule_falls_to_a_deny_by_default() {
    let rules = rules("rules:\n- name: only-get\n  when: request.method == 'GET'\n  action: allow\n");
    let mut post = get("/");
    post.method = "POST".into();
    let decision = rules.decide(&post, at("2026-03-02T08:30:00Z"));
    assert_eq!(decision.by, DecidedBy::Default);
    assert!(!decision.is_allowed());
    assert_eq!(decision.outcome.status, 403);
}

#[test]
fn a_default_can_allow_or_deny_with_its_own_response() {
    let allow = rules("default: allow\nrules: []\n");
    assert!(allow.decide(&get("/"), at("2026-03-02T08:30:00Z")).is_allowed());
    let deny =
        rules("default: {action: deny, status: 401, body: sign in, headers: {www-authenticate: Bearer}}\nrules: []\n");
    let decision = deny.decide(&get("/"), at("2026-03-02T08:30:00Z"));
    assert_eq!(decision.outcome.status, 401);
    assert_eq!(decision.outcome.body, "sign in");
    assert_eq!(decision.outcome.headers[0].0, "www-authenticate");
}

#[test]
fn query_parameters_and_headers_are_maps_without_pseudo_headers() {
    let rules = rules(
        r#"rules:
- name: debug
  when: request.query.debug == "on x" && request.path == "/p" && request.headers["x-team"] == "a,b" && !(":path" in request.headers)
  action: allow
"#,
    );
    let mut request = with_header(with_header(get("/p?debug=on+x&other=1"), "x-team", "a"), "x-team", "b");
    request.headers.push((":path".into(), "/p?debug=on+x".into()));
    assert!(rules.decide(&request, at("2026-03-02T08:30:00Z")).is_allowed());
}

#[test]
fn comprehension_variables_are_not_unknown_variables() {
    let rules =
        rules("rules:\n- name: any-x\n  when: request.headers.exists(name, name.startsWith('x-'))\n  action: allow\n");
    assert!(rules.decide(&with_header(get("/"), "x-a", "1"), at("2026-03-02T08:30:00Z")).is_allowed());
    assert!(!rules.decide(&with_header(get("/"), "y-a", "1"), at("2026-03-02T08:30:00Z")).is_allowed());
}

#[test]
fn a_syntax_error_on_the_when_line_points_into_the_expression() {
    //            col: 123456789012345678901234
    let text = "rules:\n- name: broken\n  when: request.path == \n  action: allow\n";
    let problems = problems(text);
    // The expression starts at column 9 of line 3; cel reports the end of input at column 16
    // of the expression (after `request.path ==` and the space YAML trims).
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("rules.yaml:3:24: rule broken: when: Syntax error"), "{}", problems[0]);
}

#[test]
fn a_syntax_error_in_a_block_expression_points_at_its_line_and_column() {
    let text = "rules:\n- name: broken\n  when: |\n    request.path == '/a' &&\n      request.method ) 'GET'\n  action: allow\n";
    let problems = problems(text);
    // `)` is on line 5 at column 22.
    assert!(
        problems[0].starts_with("rules.yaml:5:22: rule broken: when: Syntax error: mismatched input ')'"),
        "{}",
        problems[0]
    );
}

#[test]
fn a_syntax_error_in_a_quoted_expression_skips_the_quote() {
    let text = "rules:\n- name: broken\n  when: \"1 +* 2\"\n  action: allow\n";
    // `*` is the fourth character of the expression, which starts after the quote at column 10.
    assert!(problems(text)[0].starts_with("rules.yaml:3:13: rule broken: when:"), "{:?}", problems(text));
}

#[test]
fn an_unknown_variable_is_an_error_at_load_with_its_position() {
    let problems = problems("rules:\n- name: typo\n  when: requst.path == '/'\n  action: allow\n");
    assert_eq!(
        problems,
        vec![
            "rules.yaml:3:9: rule typo: when: unknown variable `requst`; the variables are request, source, destination, now"
        ]
    );
}

#[test]
fn an_unknown_field_of_a_known_variable_is_an_error_at_load() {
    let problems =
        problems("rules:\n- name: typo\n  when: request.path == '/' && request.methd == 'GET'\n  action: allow\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("rules.yaml:3:"), "{}", problems[0]);
    assert!(
        problems[0].contains("`request` has no field `methd`; its fields are method, path, host"),
        "{}",
        problems[0]
    );
    let problems = self::problems("rules:\n- name: deep\n  when: has(request.auth.token.sub)\n  action: allow\n");
    assert!(problems[0].contains("`request.auth` has no field `token`"), "{problems:?}");
}

#[test]
fn an_unknown_time_zone_is_an_error_at_load() {
    let problems = problems(
        "timeZone: Europe/Berln\nrules:\n- name: mars\n  when: now.getHours('Mars/Base') > 1\n  action: allow\n- name: bad-zone\n  timeZone: Nowhere\n  when: 'true'\n  action: allow\n",
    );
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("rules.yaml:1:11: timeZone: unknown time zone `Europe/Berln`"), "{}", problems[0]);
    assert!(problems[1].starts_with("rules.yaml:4:"), "{}", problems[1]);
    assert!(problems[1].contains("rule mars: when: unknown time zone `Mars/Base`"), "{}", problems[1]);
    assert!(
        problems[2].starts_with("rules.yaml:7:13: rule bad-zone: timeZone: unknown time zone `Nowhere`"),
        "{}",
        problems[2]
    );
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let problems = problems(
        r#"rules:
- name: a
  when: "true"
  action: allow
  status: 403
- name: b
  when: "true"
  action: maybe
- when: "true"
  action: deny
  headers:
    content-length: "0"
    "bad header": x
- name: a
  when: "true"
  action: deny
  staus: 401
"#,
    );
    let expected = [
        "rules.yaml:5:11: rule a: status: an allow always answers 200",
        "rules.yaml:8:11: rule b: action: unknown action `maybe`",
        "rules.yaml:9:3: rules[2].name: missing",
        "rules.yaml:12:5: rules[2].headers.content-length: `content-length` frames the HTTP message",
        "rules.yaml:13:5: rules[2].headers.bad header: `bad header` is not a valid HTTP header name",
        "rules.yaml:14:9: rule a: name: another rule (line 2) has this name",
        "rules.yaml:17:3: rule a: staus: unknown field `staus`",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, expected) in problems.iter().zip(expected) {
        assert!(problem.starts_with(expected), "{problem}\n  expected to start with\n{expected}");
    }
}

#[test]
fn a_deny_status_must_be_a_redirect_or_an_error() {
    let problems = problems("rules:\n- name: odd\n  when: 'true'\n  action: deny\n  status: 200\n");
    assert!(
        problems[0].starts_with("rules.yaml:5:11: rule odd: status: expected an HTTP status from 300 to 599"),
        "{problems:?}"
    );
}

#[test]
fn yaml_syntax_errors_and_empty_files_are_reported_with_positions() {
    assert!(problems("rules: [\n")[0].starts_with("rules.yaml:"), "{:?}", problems("rules: [\n"));
    assert_eq!(problems("# nothing\n"), vec!["rules.yaml:1:1: the rules file is empty; it needs a `rules:` list"]);
}

#[test]
fn locate_maps_expression_positions_into_the_file() {
    let text = "a:\n  when: |\n    x &&\n    y )\n";
    assert_eq!(locate(text, Pos { line: 3, column: 5 }, "x &&\ny )\n", 2, 3), Pos { line: 4, column: 7 });
    // Text that cannot be found as written (folded) falls back to the value's position.
    assert_eq!(locate(text, Pos { line: 3, column: 5 }, "x && y )", 1, 8), Pos { line: 3, column: 5 });
}
