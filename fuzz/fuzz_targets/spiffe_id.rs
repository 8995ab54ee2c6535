//! SPIFFE ID parsing: never panics, and whatever parses displays back to the same text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<zmesh_id::SpiffeId>() {
        assert_eq!(id.to_string(), text);
    }
    let _ = zmesh_id::SpiffeId::from_principal(text);
});
