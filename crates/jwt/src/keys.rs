//! JWK sets: the public keys a rule's tokens are verified with.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Every key set gets a fresh generation when it is built, so a verified-token cache entry
/// made with one set is never served once another set replaces it.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The signature algorithms zmesh accepts. `none` and the HMAC family are never accepted: a
/// mesh-wide public key set must not double as a shared secret.
pub const SUPPORTED_ALGORITHMS: [&str; 9] =
    ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// Parse a JWT `alg` into an algorithm zmesh accepts.
pub(crate) fn parse_algorithm(alg: &str) -> Option<Algorithm> {
    Some(match alg {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// What kind of public key a JWK holds; it decides which algorithms the key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    fn verifies(self, algorithm: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => algorithm == ES256,
            KeyKind::EcP384 => algorithm == ES384,
            KeyKind::Ed25519 => algorithm == EdDSA,
        }
    }
}

/// One usable public key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The `alg` the key is pinned to, if the JWK names one.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).field("kind", &self.kind).finish()
    }
}

impl Key {
    /// Whether this key may verify a token signed with `algorithm` (its type fits, and a
    /// pinned `alg` is the same).
    pub fn accepts(&self, algorithm: Algorithm) -> bool {
        self.kind.verifies(algorithm) && self.alg.is_none_or(|pinned| pinned == algorithm)
    }
}

/// A key of the document that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    /// Position in the document's `keys` list.
    pub index: usize,
    pub kid: Option<String>,
    pub reason: String,
}

/// Why a JWKS document gives no key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("the JWKS document is not valid JSON: {0}; serve a JSON object with a `keys` list")]
    NotJson(String),
    #[error("the JWKS document has no `keys` list; serve a JSON object such as {{\"keys\": [...]}}")]
    NoKeysList,
    #[error("the JWKS document has no usable key ({}); serve at least one RSA, EC P-256/P-384 or Ed25519 signing key", describe_skipped(.0))]
    NoUsableKey(Vec<SkippedKey>),
}

fn describe_skipped(skipped: &[SkippedKey]) -> String {
    if skipped.is_empty() {
        return "the list is empty".to_owned();
    }
    skipped
        .iter()
        .map(|s| match &s.kid {
            Some(kid) => format!("keys[{}] (kid `{kid}`): {}", s.index, s.reason),
            None => format!("keys[{}]: {}", s.index, s.reason),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The usable keys of a JWKS document.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<Key>,
    skipped: Vec<SkippedKey>,
    generation: u64,
}

impl KeySet {
    /// Parse a JWKS document (`{"keys": [...]}`). Keys zmesh cannot use are skipped (see
    /// [`KeySet::skipped`]); a document without any usable key is an error.
    pub fn from_json(document: &[u8]) -> Result<KeySet, KeySetError> {
        let value: Value = serde_json::from_slice(document).map_err(|e| KeySetError::NotJson(e.to_string()))?;
        KeySet::from_value(&value)
    }

    /// As [`KeySet::from_json`], from an already parsed document (a rule's inline `jwks`).
    pub fn from_value(document: &Value) -> Result<KeySet, KeySetError> {
        let list = document.get("keys").and_then(Value::as_array).ok_or(KeySetError::NoKeysList)?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, jwk) in list.iter().enumerate() {
            let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
            match parse_jwk(jwk) {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(SkippedKey { index, kid, reason }),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey(skipped));
        }
        Ok(KeySet { keys, skipped, generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed) })
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn skipped(&self) -> &[SkippedKey] {
        &self.skipped
    }

    /// Unique to this set (process-wide); a replacement set always has another.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether some key carries this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn string_field<'a>(jwk: &'a Value, name: &str) -> Result<&'a str, String> {
    match jwk.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) | None => Err(format!("`{name}` is missing")),
        Some(_) => Err(format!("`{name}` is not a string")),
    }
}

/// A base64url component, decoded to check it (padding tolerated, as some issuers pad).
fn component(jwk: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = string_field(jwk, name)?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("`{name}` is not base64url: {e}"))
        .and_then(|bytes| if bytes.is_empty() { Err(format!("`{name}` is empty")) } else { Ok(bytes) })
}

fn parse_jwk(jwk: &Value) -> Result<Key, String> {
    if !jwk.is_object() {
        return Err("not a JSON object".to_owned());
    }
    for name in ["kid", "alg", "use"] {
        if jwk.get(name).is_some_and(|v| !v.is_string()) {
            return Err(format!("`{name}` is not a string"));
        }
    }
    if let Some(usage) = jwk.get("use").and_then(Value::as_str)
        && usage != "sig"
    {
        return Err(format!("`use` is `{usage}`, not `sig`"));
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("`key_ops` is not a list")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Err("`key_ops` does not include `verify`".to_owned());
        }
    }
    let alg =
        match jwk.get("alg").and_then(Value::as_str) {
            None => None,
            Some(alg) => Some(parse_algorithm(alg).ok_or_else(|| {
                format!("`alg` `{alg}` is not accepted (accepted: {})", SUPPORTED_ALGORITHMS.join(", "))
            })?),
        };
    let kty = string_field(jwk, "kty")?;
    let (kind, decoding) = match kty {
        "RSA" => {
            let n = component(jwk, "n")?;
            let e = component(jwk, "e")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            // ring verifies RSA signatures only with moduli of 2048 bits or more.
            if significant < 256 {
                return Err(format!("RSA modulus is {} bits; at least 2048 are needed", significant * 8));
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let crv = string_field(jwk, "crv")?;
            let (kind, size) = match crv {
                "P-256" => (KeyKind::EcP256, 32),
                "P-384" => (KeyKind::EcP384, 48),
                other => return Err(format!("EC curve `{other}` is not supported (P-256 and P-384 are)")),
            };
            let x = component(jwk, "x")?;
            let y = component(jwk, "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!("`x`/`y` are not {size}-byte coordinates for {crv}"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            let crv = string_field(jwk, "crv")?;
            if crv != "Ed25519" {
                return Err(format!("OKP curve `{crv}` is not supported (Ed25519 is)"));
            }
            let x = component(jwk, "x")?;
            if x.len() != 32 {
                return Err("`x` is not a 32-byte Ed25519 key".to_owned());
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        "oct" => return Err("symmetric (`oct`) keys are refused: HMAC tokens are not accepted".to_owned()),
        other => return Err(format!("key type `{other}` is not supported (RSA, EC and OKP are)")),
    };
    if let Some(alg) = alg
        && !kind.verifies(alg)
    {
        return Err(format!("`alg` {alg:?} does not fit a key of type {kty}"));
    }
    Ok(Key { kid: jwk.get("kid").and_then(Value::as_str).map(str::to_owned), alg, kind, decoding })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_that_is_not_json_is_refused_with_what_to_serve() {
        let error = KeySet::from_json(b"<html>").unwrap_err();
        assert!(matches!(error, KeySetError::NotJson(_)));
        assert!(error.to_string().contains("`keys` list"), "{error}");
    }

    #[test]
    fn a_document_without_a_keys_list_is_refused() {
        assert_eq!(KeySet::from_json(br#"{"keys": {}}"#).unwrap_err(), KeySetError::NoKeysList);
        assert_eq!(KeySet::from_json(b"[]").unwrap_err(), KeySetError::NoKeysList);
    }

    #[test]
    fn a_document_with_only_unusable_keys_names_each_and_why() {
        let error = KeySet::from_json(
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}, {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}"#,
        )
        .unwrap_err();
        let KeySetError::NoUsableKey(skipped) = &error else { panic!("{error:?}") };
        assert_eq!(skipped.len(), 2);
        assert_eq!(skipped[0].kid.as_deref(), Some("h"));
        let text = error.to_string();
        assert!(text.contains("keys[0] (kid `h`): symmetric"), "{text}");
        assert!(text.contains("keys[1]: EC curve `P-521`"), "{text}");
    }

    #[test]
    fn an_empty_key_list_is_refused() {
        let error = KeySet::from_json(br#"{"keys": []}"#).unwrap_err();
        assert!(error.to_string().contains("the list is empty"), "{error}");
    }

    #[test]
    fn usable_keys_are_kept_and_the_rest_skipped_with_reasons() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let document = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "HS256"},
            {"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "RS256"},
            {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([1u8; 128]), "e": "AQAB"},
        ]});
        let set = KeySet::from_value(&document).unwrap();
        assert_eq!(set.keys().len(), 1);
        assert!(set.has_kid("ed"));
        let reasons: Vec<&str> = set.skipped().iter().map(|s| s.reason.as_str()).collect();
        assert!(reasons[0].contains("`use` is `enc`"), "{reasons:?}");
        assert!(reasons[1].contains("`alg` `HS256` is not accepted"), "{reasons:?}");
        assert!(reasons[2].contains("does not fit a key of type OKP"), "{reasons:?}");
        assert!(reasons[3].contains("1024 bits"), "{reasons:?}");
    }

    #[test]
    fn every_new_set_has_a_new_generation() {
        let document =
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32])}]});
        let a = KeySet::from_value(&document).unwrap();
        let b = KeySet::from_value(&document).unwrap();
        assert_ne!(a.generation(), b.generation());
    }
}
