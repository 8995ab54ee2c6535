//! HTTP/1 request heads from the network: parsing and path normalization never panic, and a
//! normalized path normalizes to itself — except where Envoy's own normalization is not
//! idempotent and zmesh reproduces it: a `.`/`..` segment with parameters that the first pass
//! leaves (spelled `%2e%2e;p`, or behind a backslash, it is a name to Envoy; once forwarded as
//! `/..;p/` a second pass would resolve it).
#![no_main]

fn has_dot_segment_with_parameters(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    path.split('/').any(|segment| segment.split_once(';').is_some_and(|(dots, _)| dots == "." || dots == ".."))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, _))) = zmesh_http::parse_request_head(data, &zmesh_http::Limits::default())
        && let Some(path) = head.path_and_query()
        && let Ok(normalized) = zmesh_http::normalize_path(path, zmesh_http::PathNormalization::Base)
    {
        let again = zmesh_http::normalize_path(&normalized, zmesh_http::PathNormalization::Base)
            .expect("a normalized path normalizes");
        if !has_dot_segment_with_parameters(&normalized) {
            assert_eq!(again, normalized);
        }
    }
});
