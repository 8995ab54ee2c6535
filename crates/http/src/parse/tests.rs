use super::*;
use crate::{BodyFraming, Method, RequestError, RequestTarget, Upgrade, Version};

fn parse_with(raw: &[u8], limits: &Limits) -> (RequestHead, usize) {
    match parse_request_head(raw, limits) {
        Ok(Some(parsed)) => parsed,
        other => panic!("expected a head from {:?}, got {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn parse(raw: &[u8]) -> RequestHead {
    parse_with(raw, &Limits::default()).0
}

fn reject(raw: &[u8]) -> RequestError {
    match parse_request_head(raw, &Limits::default()) {
        Err(error) => error,
        other => panic!("expected {:?} to be refused, got {other:?}", String::from_utf8_lossy(raw)),
    }
}

fn header<'a>(head: &'a RequestHead, name: &str) -> Option<&'a [u8]> {
    head.headers.get(name)
}

// ---- request line -------------------------------------------------------------------------

#[test]
fn a_minimal_get_parses_into_method_path_version_and_host() {
    let head = parse(b"GET /api?x=1 HTTP/1.1\r\nHost: app.default.svc.cluster.local\r\n\r\n");
    assert_eq!(head.method, Method::Get);
    assert_eq!(head.target, RequestTarget::Origin("/api?x=1".into()));
    assert_eq!(head.version, Version::Http11);
    assert_eq!(head.path(), Some("/api"));
    assert_eq!(head.query(), Some("x=1"));
    assert_eq!(head.authority().as_deref(), Some("app.default.svc.cluster.local"));
    assert_eq!(head.body, BodyFraming::None);
    assert_eq!(head.upgrade, None);
    assert!(head.keep_alive());
}

#[test]
fn consumed_bytes_end_at_the_blank_line_and_leave_body_and_pipelined_requests() {
    let head_bytes = b"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 12\r\n\r\n";
    let raw = [&head_bytes[..], b"{\"amount\":1}GET /admin HTTP/1.1\r\n"].concat();
    let (head, consumed) = parse_with(&raw, &Limits::default());
    assert_eq!(consumed, head_bytes.len());
    assert_eq!(head.body, BodyFraming::ContentLength(12));
}

#[test]
fn an_empty_query_is_kept_on_the_path() {
    let head = parse(b"POST /api/v2/payments/process? HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.path_and_query(), Some("/api/v2/payments/process?"));
    assert_eq!(head.query(), Some(""));
}

#[test]
fn a_lower_case_method_is_refused_from_its_first_byte() {
    assert_eq!(parse_request_head(b"g", &Limits::default()), Err(RequestError::UnknownMethod));
    assert_eq!(reject(b"get /admin HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::UnknownMethod);
}

#[test]
fn a_mixed_case_method_is_refused() {
    let error = reject(b"PoSt /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(error, RequestError::UnknownMethod);
    assert_eq!((error.status(), error.detail()), (400, "http1.codec_error"));
}

#[test]
fn unknown_upper_case_methods_are_refused() {
    for method in ["GETS", "FOO", "PRI", "QUERY", "M-SEARCH"] {
        let raw = format!("{method} / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(reject(raw.as_bytes()), RequestError::UnknownMethod, "{method}");
    }
}

#[test]
fn every_method_envoy_knows_parses_including_webdav() {
    for method in Method::ALL {
        let target = if method == Method::Connect { "app:443" } else { "/" };
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: app:443\r\n\r\n");
        assert_eq!(parse(raw.as_bytes()).method, method);
    }
    assert_eq!(Method::from_token(b"MSEARCH"), Some(Method::MSearch));
}

#[test]
fn an_empty_line_before_the_request_line_is_refused() {
    assert_eq!(reject(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::UnknownMethod);
    assert_eq!(reject(b" GET / HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::UnknownMethod);
}

#[test]
fn the_version_token_is_case_sensitive() {
    let error = reject(b"GET /admin http/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(error, RequestError::MalformedVersion);
    assert_eq!(error.detail(), "http1.codec_error");
}

#[test]
fn malformed_versions_are_codec_errors() {
    for version in ["HTTP/1.1x", "HTTP/11", "HTTP/1.", "HTTP/a.b", "x HTTP/1.1"] {
        let raw = format!("GET / {version}\r\nHost: a\r\n\r\n");
        assert_eq!(reject(raw.as_bytes()), RequestError::MalformedVersion, "{version}");
    }
}

#[test]
fn extra_spaces_and_tabs_between_request_line_parts_are_accepted() {
    let head = parse(b"GET  /admin  HTTP/1.1\r\nHost: app\r\n\r\n");
    assert_eq!(head.path(), Some("/admin"));
    let head = parse(b"GET\t/admin\tHTTP/1.1 \r\nHost: app\r\n\r\n");
    assert_eq!(head.path(), Some("/admin"));
}

#[test]
fn http_1_0_is_answered_426_low_version() {
    let error = reject(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n");
    assert_eq!(error, RequestError::UnsupportedVersion);
    assert_eq!((error.status(), error.detail()), (426, "low_version"));
}

#[test]
fn other_http_versions_count_as_http_1_0() {
    for version in ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "HTTP/9.9"] {
        let raw = format!("GET / {version}\r\nHost: a\r\n\r\n");
        assert_eq!(reject(raw.as_bytes()), RequestError::UnsupportedVersion, "{version}");
    }
}

#[test]
fn an_http_0_9_request_line_is_refused_as_soon_as_it_ends() {
    assert_eq!(reject(b"GET /admin\r\n\r\n"), RequestError::UnsupportedVersion);
    assert_eq!(reject(b"GET /admin\r\n"), RequestError::UnsupportedVersion);
}

#[test]
fn http_1_0_is_accepted_when_enabled_and_still_needs_a_host() {
    let limits = Limits { accept_http_10: true, ..Limits::default() };
    let (head, _) = parse_with(b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n", &limits);
    assert_eq!(head.version, Version::Http10);
    assert!(!head.keep_alive());
    let (head, _) = parse_with(b"GET /x HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", &limits);
    assert!(head.keep_alive());
    assert_eq!(parse_request_head(b"GET /x HTTP/1.0\r\n\r\n", &limits), Err(RequestError::MissingHost));
}

#[test]
fn an_http_0_9_line_whose_target_ends_in_http_1_1_counts_as_http_1_1() {
    // Envoy asks whether the request line ends in "HTTP/1.1", not whether the version is.
    assert_eq!(reject(b"GET /HTTP/1.1\r\n"), RequestError::MissingHost);
    let (head, consumed) = parse_with(b"GET http://app/HTTP/1.1\r\n\r\n", &Limits::default());
    assert_eq!((head.version, consumed), (Version::Http11, 25));
}

#[test]
fn a_request_line_with_only_a_method_is_a_codec_error() {
    assert_eq!(reject(b"GET\r\nHost: a\r\n\r\n"), RequestError::MalformedTarget);
}

// ---- request-target ------------------------------------------------------------------------

#[test]
fn a_target_starting_with_a_backslash_is_refused() {
    let error = reject(b"GET \\admin HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(error, RequestError::MalformedTarget);
    assert_eq!(error.detail(), "http1.codec_error");
}

#[test]
fn options_asterisk_is_answered_404_absolute_path_rejected() {
    let error = reject(b"OPTIONS * HTTP/1.1\r\nHost: app.default.svc.cluster.local\r\n\r\n");
    assert_eq!(error, RequestError::PathNotAbsolute);
    assert_eq!((error.status(), error.detail()), (404, "absolute_path_rejected"));
}

#[test]
fn an_asterisk_target_with_another_method_is_an_invalid_url() {
    assert_eq!(reject(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::InvalidUrl);
}

#[test]
fn raw_nul_and_control_bytes_in_the_target_are_invalid_characters() {
    for raw in [
        &b"POST /api/v2/payments/process\x00 HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        // 0x01 also splits the request line; Envoy still reports the control byte.
        b"GET /\x01admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x7fadmin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a\x0cb HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let error = reject(raw);
        assert_eq!(error, RequestError::InvalidCharacters);
        assert_eq!((error.status(), error.detail()), (400, "http1.invalid_characters"));
    }
}

#[test]
fn raw_utf8_in_the_target_is_a_codec_error() {
    assert_eq!(reject(b"GET /\xEF\xBD\x81dmin HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::MalformedTarget);
}

#[test]
fn a_bad_request_line_is_refused_before_the_head_is_complete() {
    assert_eq!(
        parse_request_head(b"GET \\admin HTTP/1.1\r\nHost: a", &Limits::default()),
        Err(RequestError::MalformedTarget)
    );
}

#[test]
fn absolute_form_routes_on_the_path_and_replaces_host_with_the_authority() {
    let head = parse(
        b"POST http://app.default.svc.cluster.local/api/v2/payments/process HTTP/1.1\r\n\
          Host: other\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(head.path_and_query(), Some("/api/v2/payments/process"));
    assert_eq!(head.authority().as_deref(), Some("app.default.svc.cluster.local"));
    assert_eq!(head.headers.get_all("host").count(), 1);
    assert_eq!(
        head.target,
        RequestTarget::Absolute {
            scheme: "http".into(),
            authority: "app.default.svc.cluster.local".into(),
            path_and_query: "/api/v2/payments/process".into(),
        }
    );
}

#[test]
fn absolute_form_drops_userinfo() {
    let head = parse(b"GET http://user:pw@host:8080/admin?q HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.path_and_query(), Some("/admin?q"));
    assert_eq!(head.authority().as_deref(), Some("host:8080"));
}

#[test]
fn absolute_form_without_a_path_routes_on_slash() {
    let head = parse(b"GET HTTP://Host HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.path_and_query(), Some("/"));
    assert!(matches!(head.target, RequestTarget::Absolute { ref scheme, .. } if scheme == "http"));
}

#[test]
fn absolute_form_with_only_a_query_has_no_absolute_path() {
    assert_eq!(reject(b"GET http://host?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::PathNotAbsolute);
}

#[test]
fn absolute_form_with_a_scheme_other_than_http_is_refused() {
    let error = reject(b"GET ftp://host/x HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!((error.status(), error.detail()), (400, "http1.invalid_scheme"));
    parse(b"GET https://host/x HTTP/1.1\r\nHost: a\r\n\r\n");
}

#[test]
fn malformed_absolute_urls_are_invalid_urls() {
    for target in [
        "h2://host/x",
        "http://host:65536/x",
        "http://host:/x",
        "http://a!b/x",
        "http://:80/x",
        "http://u@h@h/x",
        "http://[::1/x",
    ] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        let error = reject(raw.as_bytes());
        assert_eq!(error, RequestError::InvalidUrl, "{target}");
        assert_eq!(error.detail(), "http1.invalid_url");
    }
    parse(b"GET http://[::1]:8080/x HTTP/1.1\r\nHost: a\r\n\r\n");
}

#[test]
fn a_target_without_scheme_slashes_is_a_codec_error() {
    assert_eq!(reject(b"GET host:80/x HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::MalformedTarget);
    assert_eq!(reject(b"GET http:/x HTTP/1.1\r\nHost: a\r\n\r\n"), RequestError::MalformedTarget);
}

#[test]
fn absolute_form_overrides_an_invalid_host_header() {
    let head = parse(b"GET http://app/x HTTP/1.1\r\nHost: a b\r\n\r\n");
    assert_eq!(head.authority().as_deref(), Some("app"));
}

#[test]
fn connect_takes_an_authority_form_target_that_becomes_the_host() {
    let head = parse(b"CONNECT app.internal:443 HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(head.target, RequestTarget::Authority("app.internal:443".into()));
    assert_eq!(head.authority().as_deref(), Some("app.internal:443"));
    assert_eq!(head.path_and_query(), None);
}

#[test]
fn connect_without_a_port_or_with_a_path_is_an_invalid_url() {
    for target in ["app.internal", "/x", "http://app:443/", "user@app:443"] {
        let raw = format!("CONNECT {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(reject(raw.as_bytes()), RequestError::InvalidUrl, "{target}");
    }
}

#[test]
fn connect_may_declare_an_empty_body_but_no_other() {
    let head = parse(b"CONNECT app:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert!(!head.headers.contains("content-length"));
    assert_eq!(head.body, BodyFraming::None);
    let error = reject(b"CONNECT app:443 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(error.detail(), "http1.body_disallowed");
    let error = reject(b"CONNECT app:443 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!((error.status(), error.detail()), (501, "http1.invalid_transfer_encoding"));
}

// ---- headers -------------------------------------------------------------------------------

#[test]
fn header_names_are_lower_cased_and_values_trimmed() {
    let head = parse(b"GET / HTTP/1.1\r\nHOST: a\r\nX-Foo: \t bar baz \t\r\nX-Empty:\r\n\r\n");
    let names: Vec<&str> = head.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["host", "x-foo", "x-empty"]);
    assert_eq!(header(&head, "x-foo"), Some(&b"bar baz"[..]));
    assert_eq!(header(&head, "X-EMPTY"), Some(&b""[..]));
}

#[test]
fn duplicate_headers_are_kept_in_order_and_join_with_commas() {
    let head = parse(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nX-A: 1\r\nContent-Type: text/plain\r\n\r\n",
    );
    let values: Vec<&[u8]> = head.headers.get_all("content-type").collect();
    assert_eq!(values, [&b"application/json"[..], b"text/plain"]);
    assert_eq!(head.headers.joined("content-type").as_deref(), Some(&b"application/json,text/plain"[..]));
}

#[test]
fn duplicate_host_headers_make_one_comma_joined_authority() {
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    assert_eq!(head.authority().as_deref(), Some("a,b"));
}

#[test]
fn underscores_in_header_names_are_allowed() {
    let head = parse(b"GET /x HTTP/1.1\r\nHost: app\r\nUser_Agent: x sqlmap*\r\n\r\n");
    assert_eq!(header(&head, "user_agent"), Some(&b"x sqlmap*"[..]));
    assert_eq!(header(&head, "user-agent"), None);
}

#[test]
fn whitespace_before_the_colon_is_refused() {
    for raw in [
        &b"GET /x HTTP/1.1\r\nHost: app\r\nX-Foo : bar\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: app\r\nX-Foo\t: bar\r\n\r\n",
    ] {
        let error = reject(raw);
        assert_eq!(error, RequestError::InvalidHeaderName { line: 3 });
        assert_eq!(error.detail(), "http1.codec_error");
    }
}

#[test]
fn a_header_line_without_a_colon_is_refused() {
    assert_eq!(
        reject(b"GET / HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n"),
        RequestError::HeaderWithoutColon { line: 3 }
    );
}

#[test]
fn empty_or_non_token_header_names_are_refused() {
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: a\r\n: empty\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nX\"Quote: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX\xe9: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX/Y: v\r\n\r\n",
    ] {
        assert_eq!(reject(raw), RequestError::InvalidHeaderName { line: 3 });
    }
}

#[test]
fn obs_fold_lines_join_the_header_keeping_their_whitespace() {
    let head = parse(b"GET /x HTTP/1.1\r\nHost: app\r\nX-Foo: a\r\n b\r\n\r\n");
    assert_eq!(header(&head, "x-foo"), Some(&b"a b"[..]));
    let head = parse(b"GET /x HTTP/1.1\r\nHost: app\r\nUser-Agent: Mozilla\r\n sqlmap*\r\n\r\n");
    assert_eq!(header(&head, "user-agent"), Some(&b"Mozilla sqlmap*"[..]));
    // Envoy only deletes the line break, so the continuation's own whitespace stays.
    let head = parse(b"GET /x HTTP/1.1\r\nHost: app\r\nX-Foo: a\r\n\t  b\n c\r\n\r\n");
    assert_eq!(header(&head, "x-foo"), Some(&b"a\t  b c"[..]));
}

#[test]
fn a_continuation_line_starting_with_another_control_byte_is_refused() {
    assert_eq!(
        reject(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\rb\r\n\r\n"),
        RequestError::InvalidContinuationLine { line: 4 }
    );
}

#[test]
fn a_first_header_line_starting_with_whitespace_is_refused() {
    assert_eq!(reject(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"), RequestError::InvalidHeaderName { line: 2 });
}

#[test]
fn bare_lf_line_endings_are_accepted_alone_or_mixed() {
    let (head, consumed) = parse_with(b"GET /admin HTTP/1.1\nHost: app\n\n", &Limits::default());
    assert_eq!((head.path(), consumed), (Some("/admin"), 31));
    let head = parse(b"GET /x HTTP/1.1\nHost: app\r\nUser-Agent: x sqlmap*\n\r\n");
    assert_eq!(header(&head, "user-agent"), Some(&b"x sqlmap*"[..]));
}

#[test]
fn control_bytes_in_header_values_are_invalid_characters() {
    assert_eq!(reject(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n"), RequestError::InvalidCharacters);
}

#[test]
fn obs_text_in_header_values_is_kept_as_bytes_and_a_lone_cr_is_dropped() {
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\nY: a\rb\r\n\r\n");
    assert_eq!(header(&head, "x"), Some(&b"caf\xe9"[..]));
    assert_eq!(header(&head, "y"), Some(&b"ab"[..]));
}

// ---- host ----------------------------------------------------------------------------------

#[test]
fn http_1_1_without_host_is_answered_missing_host_header() {
    let error = reject(b"POST /api/v2/payments/process HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
    assert_eq!((error.status(), error.detail()), (400, "missing_host_header"));
}

#[test]
fn a_host_with_a_space_or_non_ascii_is_an_invalid_authority() {
    let error = reject(b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n");
    assert_eq!((error.status(), error.detail()), (400, "http.invalid_authority"));
    assert_eq!(reject(b"GET /x HTTP/1.1\r\nHost: caf\xe9\r\n\r\n"), RequestError::InvalidAuthority);
    assert_eq!(reject(b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n"), RequestError::InvalidAuthority);
}

#[test]
fn an_empty_host_counts_as_present() {
    assert_eq!(parse(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").authority().as_deref(), Some(""));
}

// ---- body framing --------------------------------------------------------------------------

#[test]
fn transfer_encoding_with_content_length_is_refused_in_either_order() {
    for raw in [
        &b"POST /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"[..],
        b"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: abc\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let error = reject(raw);
        assert_eq!((error.status(), error.detail()), (400, "http1.content_length_and_chunked_not_allowed"));
    }
}

#[test]
fn transfer_encodings_other_than_chunked_are_answered_501() {
    for coding in ["chunked, identity", "identity", "gzip, chunked", "chunked;x", ""] {
        let raw = format!("POST /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: {coding}\r\n\r\n");
        let error = reject(raw.as_bytes());
        assert_eq!((error.status(), error.detail()), (501, "http1.invalid_transfer_encoding"), "{coding}");
    }
}

#[test]
fn a_repeated_transfer_encoding_is_answered_501() {
    let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(reject(raw), RequestError::UnsupportedTransferEncoding);
}

#[test]
fn chunked_is_recognised_in_any_case() {
    let head = parse(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD \r\n\r\n");
    assert_eq!(head.body, BodyFraming::Chunked);
}

#[test]
fn malformed_content_lengths_are_codec_errors() {
    for value in ["1, 1", "+5", "-1", "0x10", "1 1", "", "18446744073709551616"] {
        let raw = format!("POST /x HTTP/1.1\r\nHost: app\r\nContent-Length: {value}\r\n\r\nx");
        let error = reject(raw.as_bytes());
        assert_eq!(error, RequestError::InvalidContentLength, "{value:?}");
        assert_eq!(error.detail(), "http1.codec_error");
    }
}

#[test]
fn a_repeated_content_length_is_refused_even_when_equal() {
    let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
    assert_eq!(reject(raw), RequestError::DuplicateContentLength);
}

#[test]
fn content_length_allows_surrounding_whitespace_and_leading_zeros() {
    let head = parse(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: \t 0012 \r\n\r\n");
    assert_eq!(head.body, BodyFraming::ContentLength(12));
    let head = parse(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n");
    assert_eq!(head.body, BodyFraming::ContentLength(u64::MAX));
}

// ---- limits --------------------------------------------------------------------------------

fn head_of_len(total: usize) -> Vec<u8> {
    let start = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ";
    let end = b"\r\n\r\n";
    let filler = vec![b'A'; total - start.len() - end.len()];
    [&start[..], &filler, end].concat()
}

#[test]
fn a_head_of_exactly_the_limit_is_accepted_and_one_byte_more_is_431() {
    let limit = Limits::default().max_header_bytes;
    assert_eq!(limit, 61_440);
    parse(&head_of_len(limit));
    let error = reject(&head_of_len(limit + 1));
    assert_eq!(error, RequestError::HeadersTooLarge { limit });
    assert_eq!((error.status(), error.detail()), (431, "http1.headers_too_large"));
}

#[test]
fn an_unfinished_head_is_refused_once_it_reaches_the_limit() {
    let limit = Limits::default().max_header_bytes;
    let head = head_of_len(limit + 100);
    assert_eq!(parse_request_head(&head[..limit - 1], &Limits::default()), Ok(None));
    assert_eq!(parse_request_head(&head[..limit], &Limits::default()), Err(RequestError::HeadersTooLarge { limit }));
}

#[test]
fn a_single_100_kib_header_is_431() {
    let big = vec![b'A'; 100 * 1024];
    let raw = [&b"GET /x HTTP/1.1\r\nHost: app\r\nX-Big: "[..], &big, b"\r\n\r\n"].concat();
    assert_eq!(reject(&raw).detail(), "http1.headers_too_large");
}

fn head_with_headers(count: usize) -> Vec<u8> {
    let mut raw = b"GET /x HTTP/1.1\r\nHost: app\r\n".to_vec();
    for index in 1..count {
        raw.extend_from_slice(format!("X-H{index}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    raw
}

#[test]
fn one_hundred_headers_are_accepted_and_one_hundred_and_one_are_431() {
    assert_eq!(parse(&head_with_headers(100)).headers.len(), 100);
    let error = reject(&head_with_headers(101));
    assert_eq!(error, RequestError::TooManyHeaders { limit: 100 });
    assert_eq!((error.status(), error.detail()), (431, "http1.too_many_headers"));
    assert_eq!(reject(&head_with_headers(500)).detail(), "http1.too_many_headers");
}

#[test]
fn limits_are_configurable() {
    let limits = Limits { max_header_bytes: 64, max_headers: 1, accept_http_10: false };
    assert_eq!(parse_request_head(&head_with_headers(2), &limits), Err(RequestError::TooManyHeaders { limit: 1 }));
    assert_eq!(parse_request_head(&head_of_len(65), &limits), Err(RequestError::HeadersTooLarge { limit: 64 }));
}

// ---- upgrades and Connection ---------------------------------------------------------------

#[test]
fn an_h2c_upgrade_is_served_as_http_1_1_without_its_upgrade_headers() {
    let head = parse(
        b"GET /admin HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    );
    assert_eq!(head.path(), Some("/admin"));
    assert_eq!(head.upgrade, None);
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(!head.headers.contains(name), "{name} should be gone");
    }
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, upgrade\r\nUpgrade: H2C\r\n\r\n");
    assert_eq!(header(&head, "connection"), Some(&b"keep-alive"[..]));
}

#[test]
fn a_websocket_upgrade_is_reported_with_its_headers_intact() {
    let head = parse(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(head.upgrade, Some(Upgrade::WebSocket));
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo/2\r\n\r\n");
    assert_eq!(head.upgrade, Some(Upgrade::Other(b"foo/2".to_vec())));
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(head.upgrade, None);
}

#[test]
fn connection_close_ends_keep_alive() {
    assert!(!parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").keep_alive());
    assert!(!parse(b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n").keep_alive());
}

#[test]
fn headers_nominated_in_connection_are_removed_before_filters_see_them() {
    let head = parse(b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: sqlmap*\r\nConnection: close, User-Agent\r\n\r\n");
    assert!(!head.headers.contains("user-agent"));
    assert_eq!(header(&head, "connection"), Some(&b"close"[..]));
    let head = parse(b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nConnection: x-a\r\n\r\n");
    assert!(!head.headers.contains("x-a") && !head.headers.contains("connection"));
}

#[test]
fn connection_may_nominate_itself_without_removing_itself() {
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: connection, keep-alive\r\n\r\n");
    assert_eq!(header(&head, "connection"), Some(&b"keep-alive"[..]));
}

#[test]
fn nominating_host_in_connection_leaves_the_request_without_host() {
    assert_eq!(reject(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n"), RequestError::MissingHost);
}

#[test]
fn nominating_te_keeps_it_only_as_trailers() {
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nTE: gzip, trailers\r\nConnection: te\r\n\r\n");
    assert_eq!(header(&head, "te"), Some(&b"trailers"[..]));
    assert_eq!(header(&head, "connection"), Some(&b"te"[..]));
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nTE: gzip\r\nConnection: te\r\n\r\n");
    assert!(!head.headers.contains("te"));
}

#[test]
fn nominating_forwarding_or_pseudo_headers_or_ten_headers_is_refused() {
    let ten = "a,b,c,d,e,f,g,h,i,j";
    for nominated in ["X-Forwarded-For", "close, x-forwarded-proto", "x-forwarded-host", ":path", ten] {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nConnection: {nominated}\r\n\r\n");
        let error = reject(raw.as_bytes());
        assert_eq!((error.status(), error.detail()), (400, "http1.connection_header_rejected"), "{nominated}");
    }
    parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: a,b,c,d,e,f,g,h,i\r\n\r\n");
}

#[test]
fn an_oversized_nominated_te_is_refused() {
    let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nTE: {}\r\nConnection: te\r\n\r\n", "x".repeat(256));
    assert_eq!(reject(raw.as_bytes()), RequestError::ConnectionHeaderRejected);
}

#[test]
fn upgrade_requests_keep_their_nominated_headers() {
    let head = parse(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nConnection: upgrade, x-a\r\nUpgrade: websocket\r\n\r\n");
    assert!(head.headers.contains("x-a"));
}

// ---- incremental input ---------------------------------------------------------------------

#[test]
fn an_empty_buffer_needs_more_bytes() {
    assert_eq!(parse_request_head(b"", &Limits::default()), Ok(None));
}

#[test]
fn every_prefix_of_a_valid_head_needs_more_bytes() {
    for raw in [
        &b"GET /api?x=1 HTTP/1.1\r\nHost: a\r\nX-Foo: a\r\n b\r\n\r\n"[..],
        b"GET /admin HTTP/1.1\nHost: app\n\n",
        b"POST http://app/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
        b"CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n",
    ] {
        for end in 0..raw.len() {
            assert_eq!(
                parse_request_head(&raw[..end], &Limits::default()),
                Ok(None),
                "prefix {:?}",
                String::from_utf8_lossy(&raw[..end])
            );
        }
        assert_eq!(parse_with(raw, &Limits::default()).1, raw.len());
    }
}

#[test]
fn every_prefix_of_a_refused_head_waits_or_fails_the_same_way() {
    for raw in [
        &b"GET /x HTTP/1.1\r\nContent-Length: 1\r\n\r\n"[..],
        b"get /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET \\x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        let full = reject(raw);
        for end in 0..raw.len() {
            match parse_request_head(&raw[..end], &Limits::default()) {
                Ok(None) => {}
                Err(error) => assert_eq!(error, full),
                Ok(Some(_)) => panic!("prefix of a refused head parsed"),
            }
        }
    }
}

// ---- errors --------------------------------------------------------------------------------

#[test]
fn every_error_names_envoys_status_and_detail() {
    let expected = [
        (RequestError::UnknownMethod, 400, "http1.codec_error"),
        (RequestError::MalformedTarget, 400, "http1.codec_error"),
        (RequestError::MalformedVersion, 400, "http1.codec_error"),
        (RequestError::InvalidCharacters, 400, "http1.invalid_characters"),
        (RequestError::HeaderWithoutColon { line: 2 }, 400, "http1.codec_error"),
        (RequestError::InvalidHeaderName { line: 2 }, 400, "http1.codec_error"),
        (RequestError::InvalidContinuationLine { line: 3 }, 400, "http1.codec_error"),
        (RequestError::InvalidContentLength, 400, "http1.codec_error"),
        (RequestError::DuplicateContentLength, 400, "http1.codec_error"),
        (RequestError::HeadersTooLarge { limit: 1 }, 431, "http1.headers_too_large"),
        (RequestError::TooManyHeaders { limit: 1 }, 431, "http1.too_many_headers"),
        (RequestError::ContentLengthWithTransferEncoding, 400, "http1.content_length_and_chunked_not_allowed"),
        (RequestError::UnsupportedTransferEncoding, 501, "http1.invalid_transfer_encoding"),
        (RequestError::ConnectWithBody, 400, "http1.body_disallowed"),
        (RequestError::ConnectionHeaderRejected, 400, "http1.connection_header_rejected"),
        (RequestError::InvalidUrl, 400, "http1.invalid_url"),
        (RequestError::InvalidScheme, 400, "http1.invalid_scheme"),
        (RequestError::UnsupportedVersion, 426, "low_version"),
        (RequestError::InvalidAuthority, 400, "http.invalid_authority"),
        (RequestError::MissingHost, 400, "missing_host_header"),
        (RequestError::PathNotAbsolute, 404, "absolute_path_rejected"),
        (RequestError::FragmentInPath, 400, "path_normalization_failed"),
        (RequestError::NulInPath, 400, "path_normalization_failed"),
    ];
    for (error, status, detail) in expected {
        assert_eq!((error.status(), error.detail()), (status, detail), "{error:?}");
        assert!(!error.to_string().is_empty());
    }
}

// ---- hand-copied conformance cases ---------------------------------------------------------

#[test]
fn smuggled_chunked_body_leaves_the_pipelined_request_for_the_next_parse() {
    let raw = b"POST /x HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: app\r\n\r\n";
    let (head, consumed) = parse_with(raw, &Limits::default());
    assert_eq!((head.path(), head.body), (Some("/x"), BodyFraming::Chunked));
    assert_eq!(&raw[consumed..consumed + 5], b"0\r\n\r\n");
}

#[test]
fn spoofed_forwarding_headers_pass_through_unchanged() {
    let head = parse(
        b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.1\r\nX-Forwarded-Proto: https\r\n\r\n",
    );
    assert_eq!(header(&head, "x-forwarded-for"), Some(&b"10.0.0.1, 127.0.0.1"[..]));
    assert_eq!(header(&head, "x-forwarded-proto"), Some(&b"https"[..]));
}

#[test]
fn a_fragment_in_the_target_parses_and_is_left_to_normalization() {
    let head = parse(b"GET /x#/../admin HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(head.path_and_query(), Some("/x#/../admin"));
}
