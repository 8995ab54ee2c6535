//! Parsing and verifying one token against one rule, in the order Envoy's jwt_authn checks:
//! format, issuer, time, audiences, key set, signature. The order matters because only the
//! first failure is reported (an expired token signed with an unknown key is "expired").

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use zmesh_config::authn::JwtRule;

use crate::keys::{KeySet, parse_algorithm};

/// Envoy's default `clock_skew_seconds`, which Istio does not change.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// Why a token was not accepted. `Display` gives Envoy's wording, which is also the body of
/// the 401/403 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is missing")]
    Missing,
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBadBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderBadJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    /// `none`, the HMAC family and anything else zmesh does not verify.
    #[error("Jwt header [alg] is not supported")]
    AlgNotSupported,
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadBadJson,
    #[error("Jwt payload [iss] field is not a string")]
    IssNotString,
    #[error("Jwt payload [sub] field is not a string")]
    SubNotString,
    #[error("Jwt payload [aud] field is not a string or string list")]
    AudNotStringOrList,
    #[error("Jwt payload [exp] field is not an integer")]
    ExpNotInteger,
    #[error("Jwt payload [nbf] field is not an integer")]
    NbfNotInteger,
    #[error("Jwt payload [iat] field is not an integer")]
    IatNotInteger,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBadBase64,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    /// The key set for the rule was never fetched (or its inline set is unusable).
    #[error("Jwks remote fetch is failed")]
    JwksFetchFailed,
    /// The token names a `kid` no key of the set carries: the issuer may have rotated its
    /// keys, so the fetcher should refresh. Envoy reports it like [`JwtError::KidAlgMismatch`].
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    UnknownKid,
    /// No key fits the token's `kid` and `alg` together.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    /// Keys fit, but none verifies the signature.
    #[error("Jwt verification fails")]
    VerificationFails,
}

impl JwtError {
    /// The HTTP status Envoy answers with: 403 for a disallowed audience, else 401.
    pub fn status(self) -> u16 {
        if self == JwtError::AudienceNotAllowed { 403 } else { 401 }
    }
}

/// A token split and decoded, not yet verified.
#[derive(Debug, Clone)]
pub struct ParsedToken<'t> {
    pub raw: &'t str,
    /// The payload segment as it appears in the token (what `outputPayloadToHeader` sends).
    pub payload_segment: &'t str,
    signing_input: &'t str,
    signature: &'t str,
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
}

fn decode_segment(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()
}

/// A non-negative integer claim; Envoy refuses fractions and other types.
fn integer_claim(claims: &Map<String, Value>, name: &str, error: JwtError) -> Result<Option<u64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .or_else(|| value.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19).map(|f| f as u64))
            .map(Some)
            .ok_or(error),
    }
}

/// Split and decode a token; any format error is reported as Envoy names it.
pub fn parse(raw: &str) -> Result<ParsedToken<'_>, JwtError> {
    let mut parts = raw.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    let header_json: Value = serde_json::from_slice(&decode_segment(header).ok_or(JwtError::HeaderBadBase64)?)
        .map_err(|_| JwtError::HeaderBadJson)?;
    let Value::Object(header_json) = header_json else { return Err(JwtError::HeaderBadJson) };
    let alg = match header_json.get("alg") {
        Some(Value::String(alg)) => parse_algorithm(alg).ok_or(JwtError::AlgNotSupported)?,
        _ => return Err(JwtError::HeaderBadAlg),
    };
    let kid = match header_json.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::HeaderBadKid),
    };
    let claims: Value = serde_json::from_slice(&decode_segment(payload).ok_or(JwtError::PayloadBadBase64)?)
        .map_err(|_| JwtError::PayloadBadJson)?;
    let Value::Object(claims) = claims else { return Err(JwtError::PayloadBadJson) };
    let issuer = match claims.get("iss") {
        None => None,
        Some(Value::String(iss)) => Some(iss.clone()),
        Some(_) => return Err(JwtError::IssNotString),
    };
    if claims.get("sub").is_some_and(|sub| !sub.is_string()) {
        return Err(JwtError::SubNotString);
    }
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or(JwtError::AudNotStringOrList))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(JwtError::AudNotStringOrList),
    };
    integer_claim(&claims, "iat", JwtError::IatNotInteger)?;
    let nbf = integer_claim(&claims, "nbf", JwtError::NbfNotInteger)?;
    let exp = integer_claim(&claims, "exp", JwtError::ExpNotInteger)?;
    if signature.is_empty() || decode_segment(signature).is_none() {
        return Err(JwtError::SignatureBadBase64);
    }
    let signing_input = &raw[..header.len() + 1 + payload.len()];
    Ok(ParsedToken {
        raw,
        payload_segment: payload,
        signing_input,
        signature,
        alg,
        kid,
        claims,
        issuer,
        audiences,
        exp,
        nbf,
    })
}

/// `exp`/`nbf` against `now` (seconds since the epoch) with Envoy's clock skew.
pub fn check_time(exp: Option<u64>, nbf: Option<u64>, now: u64) -> Result<(), JwtError> {
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(CLOCK_SKEW_SECONDS)) {
        return Err(JwtError::NotYetValid);
    }
    if exp.is_some_and(|exp| exp.saturating_add(CLOCK_SKEW_SECONDS) < now) {
        return Err(JwtError::Expired);
    }
    Ok(())
}

/// Envoy compares audiences without an `http://`/`https://` scheme and a trailing `/`.
fn sanitize_audience(audience: &str) -> &str {
    let bare = audience.strip_prefix("http://").or_else(|| audience.strip_prefix("https://")).unwrap_or(audience);
    bare.strip_suffix('/').unwrap_or(bare)
}

/// A rule with no audiences accepts any; otherwise one of the token's must be listed.
pub fn audiences_allowed(rule: &JwtRule, audiences: &[String]) -> bool {
    rule.audiences.is_empty()
        || audiences
            .iter()
            .any(|token| rule.audiences.iter().any(|allowed| sanitize_audience(allowed) == sanitize_audience(token)))
}

/// The token's issuer against the rule's. A token without `iss` is not refused for it: Envoy
/// checks `iss` only when both the provider and the token name one.
pub fn issuer_allowed(rule: &JwtRule, issuer: Option<&str>) -> bool {
    rule.issuer.is_empty() || issuer.is_none_or(|issuer| issuer == rule.issuer)
}

/// The claims checks (issuer, time, audiences) that come before any key is looked at.
pub fn check_claims(token: &ParsedToken<'_>, rule: &JwtRule, now: u64) -> Result<(), JwtError> {
    if !issuer_allowed(rule, token.issuer.as_deref()) {
        return Err(JwtError::UnknownIssuer);
    }
    check_time(token.exp, token.nbf, now)?;
    if !audiences_allowed(rule, &token.audiences) {
        return Err(JwtError::AudienceNotAllowed);
    }
    Ok(())
}

/// Verify the signature with the keys that fit the token's `kid` and `alg`. A key without a
/// `kid` fits any token `kid`, and a token without a `kid` is tried with every key of its
/// algorithm.
pub fn check_signature(token: &ParsedToken<'_>, keys: &KeySet) -> Result<(), JwtError> {
    let mut fitting = 0;
    for key in keys.keys() {
        if !key.accepts(token.alg) {
            continue;
        }
        if let (Some(wanted), Some(kid)) = (&token.kid, &key.kid)
            && wanted != kid
        {
            continue;
        }
        fitting += 1;
        if jsonwebtoken::crypto::verify(token.signature, token.signing_input.as_bytes(), &key.decoding, token.alg)
            .unwrap_or(false)
        {
            return Ok(());
        }
    }
    match (&token.kid, fitting) {
        (Some(kid), 0) if !keys.has_kid(kid) => Err(JwtError::UnknownKid),
        (_, 0) => Err(JwtError::KidAlgMismatch),
        _ => Err(JwtError::VerificationFails),
    }
}

/// Every check of one token against one rule. `keys` is `None` when the rule's key set has
/// never been fetched: fail closed.
pub fn verify(token: &ParsedToken<'_>, rule: &JwtRule, keys: Option<&KeySet>, now: u64) -> Result<(), JwtError> {
    check_claims(token, rule, now)?;
    check_signature(token, keys.ok_or(JwtError::JwksFetchFailed)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", segment(header), segment(payload))
    }

    #[test]
    fn format_errors_are_named_as_envoy_names_them() {
        let cases = [
            ("a.b".to_owned(), JwtError::BadFormat),
            ("a.b.c.d".to_owned(), JwtError::BadFormat),
            ("!!.e30.c2ln".to_owned(), JwtError::HeaderBadBase64),
            (format!("{}.e30.c2ln", segment("[")), JwtError::HeaderBadJson),
            (token(r#"{"typ":"JWT"}"#, "{}"), JwtError::HeaderBadAlg),
            (token(r#"{"alg":"none"}"#, "{}"), JwtError::AlgNotSupported),
            (token(r#"{"alg":"HS256"}"#, "{}"), JwtError::AlgNotSupported),
            (token(r#"{"alg":"RS256","kid":7}"#, "{}"), JwtError::HeaderBadKid),
            (format!("{}.!!.c2ln", segment(r#"{"alg":"RS256"}"#)), JwtError::PayloadBadBase64),
            (token(r#"{"alg":"RS256"}"#, "[1]"), JwtError::PayloadBadJson),
            (token(r#"{"alg":"RS256"}"#, r#"{"iss":1}"#), JwtError::IssNotString),
            (token(r#"{"alg":"RS256"}"#, r#"{"sub":true}"#), JwtError::SubNotString),
            (token(r#"{"alg":"RS256"}"#, r#"{"aud":[1]}"#), JwtError::AudNotStringOrList),
            (token(r#"{"alg":"RS256"}"#, r#"{"exp":"soon"}"#), JwtError::ExpNotInteger),
            (token(r#"{"alg":"RS256"}"#, r#"{"exp":1.5}"#), JwtError::ExpNotInteger),
            (token(r#"{"alg":"RS256"}"#, r#"{"nbf":-1}"#), JwtError::NbfNotInteger),
            (token(r#"{"alg":"RS256"}"#, r#"{"iat":"x"}"#), JwtError::IatNotInteger),
            (format!("{}.{}.", segment(r#"{"alg":"RS256"}"#), segment("{}")), JwtError::SignatureBadBase64),
        ];
        for (raw, expected) in cases {
            assert_eq!(parse(&raw).unwrap_err(), expected, "{raw}");
        }
        assert_eq!(JwtError::AlgNotSupported.to_string(), "Jwt header [alg] is not supported");
    }

    #[test]
    fn a_well_formed_token_keeps_its_claims_and_segments() {
        let raw = token(r#"{"alg":"ES256","kid":"k"}"#, r#"{"iss":"i","aud":["a","b"],"exp":10,"nbf":5}"#);
        let parsed = parse(&raw).unwrap();
        assert_eq!(parsed.alg, Algorithm::ES256);
        assert_eq!(parsed.kid.as_deref(), Some("k"));
        assert_eq!(parsed.audiences, ["a", "b"]);
        assert_eq!((parsed.exp, parsed.nbf), (Some(10), Some(5)));
        assert_eq!(parsed.payload_segment, raw.split('.').nth(1).unwrap());
    }

    #[test]
    fn expiry_and_not_before_allow_sixty_seconds_of_skew() {
        assert_eq!(check_time(Some(1000), None, 1060), Ok(()));
        assert_eq!(check_time(Some(1000), None, 1061), Err(JwtError::Expired));
        assert_eq!(check_time(None, Some(1060), 1000), Ok(()));
        assert_eq!(check_time(None, Some(1061), 1000), Err(JwtError::NotYetValid));
        assert_eq!(check_time(None, None, u64::MAX), Ok(()));
    }

    #[test]
    fn audiences_compare_without_scheme_or_trailing_slash() {
        let mut rule = crate::tests::rule("https://issuer");
        assert!(audiences_allowed(&rule, &[]));
        rule.audiences = vec!["https://api.example.com/".to_owned()];
        assert!(audiences_allowed(&rule, &["api.example.com".to_owned()]));
        assert!(audiences_allowed(&rule, &["other".to_owned(), "http://api.example.com".to_owned()]));
        assert!(!audiences_allowed(&rule, &["api.example.org".to_owned()]));
        assert!(!audiences_allowed(&rule, &[]));
    }

    #[test]
    fn the_issuer_must_match_when_both_name_one() {
        let rule = crate::tests::rule("https://issuer");
        assert!(issuer_allowed(&rule, Some("https://issuer")));
        assert!(!issuer_allowed(&rule, Some("https://issuer/")));
        assert!(issuer_allowed(&rule, None));
        assert!(issuer_allowed(&crate::tests::rule(""), Some("anyone")));
    }
}
