//! Untrusted JWT input: a token (what any client may send) and a JWKS document (what an issuer's
//! endpoint may answer). Neither ever panics, and a token verifies against no key set it was not
//! signed for — here, a key set with one fixed key, which random bytes cannot have signed for.
#![no_main]

use std::sync::OnceLock;

const KEY: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","alg":"ES256",
  "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fn keys() -> &'static zmesh_jwt::KeySet {
    static KEYS: OnceLock<zmesh_jwt::KeySet> = OnceLock::new();
    KEYS.get_or_init(|| zmesh_jwt::KeySet::from_json(KEY.as_bytes()).expect("the fixed key set parses"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (left, right) = data.split_at(data.len() / 2);
    let _ = zmesh_jwt::KeySet::from_json(left);
    let Ok(text) = std::str::from_utf8(right) else { return };
    if let Ok(token) = zmesh_jwt::token::parse(text) {
        assert!(zmesh_jwt::token::check_signature(&token, keys()).is_err(), "random bytes verified: {text}");
    }
});
