//! RequestAuthentication outcomes: what a request's token means before authorization.
//!
//! The token's signature and expiry are verified by the proxy; here the verification result
//! is an input, and the rules decide whether the request continues (with or without a request
//! identity) or is refused with 401 or 403 (istio-semantics §8).

use std::sync::Arc;

use crate::authz::Reason;
use crate::compile::PolicyId;
use crate::request::Claims;
use crate::set::JwtRules;

/// Where a token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// `Authorization: Bearer <token>`, the default.
    AuthorizationBearer,
    Header(String),
    Param(String),
    Cookie(String),
}

/// What the proxy found about a request's token.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    None,
    /// A token was present but failed verification (signature, expiry, format…).
    Invalid {
        location: TokenLocation,
        reason: String,
    },
    /// A well-formed token with a valid signature; `claims` as in the payload.
    Valid {
        location: TokenLocation,
        claims: serde_json::Map<String, serde_json::Value>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum AuthnOutcome {
    /// Go on to authorization, with the verified claims if a rule accepted the token.
    Pass { claims: Option<Claims>, rule: Option<(PolicyId, usize)> },
    /// Refuse before authorization.
    Reject { status: u16, reason: Reason, detail: String },
}

fn rule_reads(rule: &zmesh_config::authn::JwtRule, location: &TokenLocation) -> bool {
    match location {
        TokenLocation::AuthorizationBearer => {
            rule.uses_default_locations()
                || rule
                    .from_headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("authorization") && h.prefix == "Bearer ")
        }
        TokenLocation::Header(name) => rule.from_headers.iter().any(|h| h.name.eq_ignore_ascii_case(name)),
        TokenLocation::Param(name) => {
            (rule.uses_default_locations() && name == "access_token") || rule.from_params.contains(name)
        }
        TokenLocation::Cookie(name) => rule.from_cookies.contains(name),
    }
}

/// Envoy compares audiences without their `http://`/`https://` scheme and trailing `/`.
fn same_audience(a: &str, b: &str) -> bool {
    let bare = |s: &'_ str| -> String {
        let s = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
        s.strip_suffix('/').unwrap_or(s).to_owned()
    };
    bare(a) == bare(b)
}

/// Apply the RequestAuthentication rules of a workload to a request's token.
pub fn authenticate(rules: &[Arc<JwtRules>], token: &Token) -> AuthnOutcome {
    let pass_without_identity = AuthnOutcome::Pass { claims: None, rule: None };
    let location = match token {
        Token::None => return pass_without_identity,
        Token::Invalid { location, .. } | Token::Valid { location, .. } => location,
    };
    // Without an applicable rule that reads this location, the token is not looked at.
    let reading: Vec<(&PolicyId, usize, &zmesh_config::authn::JwtRule)> = rules
        .iter()
        .flat_map(|r| r.rules.iter().enumerate().map(move |(i, rule)| (&r.policy, i, rule)))
        .filter(|(_, _, rule)| rule_reads(rule, location))
        .collect();
    if reading.is_empty() {
        return pass_without_identity;
    }
    let claims = match token {
        Token::Valid { claims, .. } => claims,
        Token::Invalid { reason, .. } => {
            return AuthnOutcome::Reject { status: 401, reason: Reason::JwtInvalid, detail: reason.clone() };
        }
        Token::None => return pass_without_identity,
    };
    // Envoy compares issuers only when both the token and the rule name one.
    let issuer = claims.get("iss").and_then(serde_json::Value::as_str);
    let for_issuer: Vec<_> = reading
        .iter()
        .filter(|(_, _, rule)| rule.issuer.is_empty() || issuer.is_none_or(|issuer| rule.issuer == issuer))
        .collect();
    let issuer = issuer.unwrap_or_default();
    if for_issuer.is_empty() {
        return AuthnOutcome::Reject {
            status: 401,
            reason: Reason::JwtInvalid,
            detail: format!("Jwt issuer `{issuer}` is not configured"),
        };
    }
    let token_audiences =
        Claims::new(claims.clone(), &[]).audiences().into_iter().map(str::to_owned).collect::<Vec<_>>();
    let accepted = for_issuer.iter().find(|(_, _, rule)| {
        rule.audiences.is_empty() || rule.audiences.iter().any(|a| token_audiences.iter().any(|t| same_audience(a, t)))
    });
    match accepted {
        Some((policy, index, rule)) => AuthnOutcome::Pass {
            claims: Some(Claims::new(claims.clone(), &rule.space_delimited_claims)),
            rule: Some(((*policy).clone(), *index)),
        },
        None => AuthnOutcome::Reject {
            status: 403,
            reason: Reason::JwtAudience,
            detail: "Audiences in Jwt are not allowed".to_owned(),
        },
    }
}
