//! HTTP/1 request heads from the network: parsing and path normalization never panic, and a
//! normalized path normalizes to itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head, _))) = zmesh_http::parse_request_head(data, &zmesh_http::Limits::default())
        && let Some(path) = head.path_and_query()
        && let Ok(normalized) = zmesh_http::normalize_path(path, zmesh_http::PathNormalization::Base)
    {
        let again = zmesh_http::normalize_path(&normalized, zmesh_http::PathNormalization::Base)
            .expect("a normalized path normalizes");
        assert_eq!(again, normalized);
    }
});
