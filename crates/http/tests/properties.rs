//! Properties of the parser and the normalizer that must hold for any input.

use proptest::prelude::*;
use zmesh_http::{
    BodyFraming, Headers, Limits, Method, PathNormalization, RequestHead, RequestTarget, Version, normalize_path,
    parse_request_head,
};

/// Path fragments chosen to collide: dots and their escapes, slashes and theirs, stray and
/// nested percent signs, bytes that must be escaped.
fn tricky_path() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", "%", "%%", "%25", "%41", "%61", "%30",
        "%3", "%g", "a", "b", "~", ";", "=", "\"", "é", "?", "%00",
    ]);
    prop::collection::vec(pieces, 0..24).prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn segments(normalized: &str) -> Vec<&str> {
    let path = normalized.split('?').next().unwrap_or_default();
    path.split('/').collect()
}

proptest! {
    #[test]
    fn normalizing_twice_changes_nothing_for_base_and_merge_slashes(
        path in tricky_path(),
        mode in prop::sample::select(vec![PathNormalization::Base, PathNormalization::MergeSlashes]),
    ) {
        if let Ok(once) = normalize_path(&path, mode) {
            // The one exception, as in Envoy: escaped dots with path parameters (`%2e%2e;p`)
            // decode to `..;p`, which stays a name the first time but is a dot segment when
            // normalized again.
            let dotted_with_parameters = segments(&once)
                .iter()
                .any(|segment| segment.split_once(';').is_some_and(|(dots, _)| dots == "." || dots == ".."));
            if !dotted_with_parameters {
                let twice = normalize_path(&once, mode);
                prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()));
            }
        }
    }

    #[test]
    fn normalized_paths_have_no_dot_segments_and_no_backslashes(
        path in tricky_path(),
        mode in prop::sample::select(vec![
            PathNormalization::Base,
            PathNormalization::MergeSlashes,
            PathNormalization::DecodeAndMergeSlashes,
        ]),
    ) {
        if let Ok(normalized) = normalize_path(&path, mode) {
            let path_part = normalized.split('?').next().unwrap_or_default();
            prop_assert!(!path_part.contains('\\'), "{normalized}");
            for segment in segments(&normalized) {
                prop_assert!(segment != "." && segment != "..", "{normalized}");
            }
        }
    }

    #[test]
    fn normalization_leaves_the_query_alone(path in tricky_path(), query in "[a-z/.%?=]{0,12}") {
        let with_query = format!("{path}?{query}");
        if let Ok(normalized) = normalize_path(&with_query, PathNormalization::DecodeAndMergeSlashes) {
            let expected_suffix = &with_query[with_query.find('?').unwrap_or_default()..];
            prop_assert!(normalized.ends_with(expected_suffix));
        }
    }

    #[test]
    fn the_parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check_outcome(&bytes);
    }

    #[test]
    fn the_parser_never_panics_on_damaged_heads(
        bytes in prop::collection::vec(
            prop::sample::select(vec![
                &b"GET "[..], b"CONNECT ", b"/", b"http://", b"a", b"@", b"[", b":", b"%",
                b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00", b"\x80", b"HTTP/1.1", b"HTTP/1.0",
                b"Host: ", b"Content-Length: ", b"Transfer-Encoding: chunked", b"Connection: ",
                b"Upgrade: ", b"upgrade", b"h2c", b"te", b",", b"1",
            ]),
            0..40,
        )
    ) {
        check_outcome(&bytes.concat());
    }

    #[test]
    fn encoding_a_head_then_parsing_it_gives_the_same_head(head in valid_head()) {
        let encoded = head.encode();
        let parsed = parse_request_head(&encoded, &Limits::default());
        prop_assert_eq!(parsed, Ok(Some((head, encoded.len()))));
    }

    #[test]
    fn every_proper_prefix_of_a_valid_head_needs_more_bytes(head in valid_head()) {
        let encoded = head.encode();
        for end in 0..encoded.len() {
            prop_assert_eq!(parse_request_head(&encoded[..end], &Limits::default()), Ok(None));
        }
    }
}

/// Whatever the bytes, the outcome is one of the three documented ones and stays in bounds.
fn check_outcome(bytes: &[u8]) {
    match parse_request_head(bytes, &Limits::default()) {
        Ok(None) => {}
        Ok(Some((head, consumed))) => {
            assert!(consumed <= bytes.len());
            assert_eq!(head.version, Version::Http11);
            if let Some(path) = head.path_and_query() {
                assert!(path.starts_with('/'));
            }
        }
        Err(error) => assert!([400, 404, 426, 431, 501].contains(&error.status())),
    }
}

fn valid_head() -> impl Strategy<Value = RequestHead> {
    let methods: Vec<Method> = Method::ALL.into_iter().filter(|method| *method != Method::Connect).collect();
    let header = ("[a-z0-9_-]{1,12}", value());
    (
        prop::sample::select(methods),
        "(/[A-Za-z0-9._~%;=-]{0,8}){1,4}(\\?[A-Za-z0-9=&/?.]{0,10})?",
        "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        prop::collection::vec(header, 0..20),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(method, path, host, fields, content_length)| {
            let mut headers = Headers::new();
            headers.push("host", host);
            for (name, value) in fields {
                // An `x-` prefix keeps generated names clear of framing and hop-by-hop headers.
                headers.push(&format!("x-{name}"), value);
            }
            let body = match content_length {
                Some(length) => {
                    headers.push("content-length", length.to_string());
                    BodyFraming::ContentLength(length)
                }
                None => BodyFraming::None,
            };
            RequestHead {
                method,
                target: RequestTarget::Origin(path),
                version: Version::Http11,
                headers,
                body,
                upgrade: None,
            }
        })
}

/// A header value as it survives parsing: visible bytes and obs-text, inner spaces and
/// tabs, nothing to trim at either end.
fn value() -> impl Strategy<Value = Vec<u8>> {
    let visible = prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff];
    let inner = prop_oneof![4 => visible.clone(), 1 => Just(b' '), 1 => Just(b'\t')];
    prop::option::of((visible.clone(), prop::collection::vec(inner, 0..16), visible)).prop_map(|parts| match parts {
        None => Vec::new(),
        Some((first, middle, last)) => [vec![first], middle, vec![last]].concat(),
    })
}
