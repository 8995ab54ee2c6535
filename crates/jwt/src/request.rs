//! One request through a workload's RequestAuthentication rules, as Istio configures Envoy.
//!
//! Istio gives Envoy one provider per jwtRule and the requirement "any of the providers, or
//! no token at all" (`requires_any` of every provider plus `allow_missing`). Envoy then, for
//! each provider in order, takes every token found in that provider's locations and requires
//! all of them to verify; the first provider whose tokens all verify accepts the request with
//! its claims. When none does, the errors are combined: a real failure (bad signature, expired,
//! wrong audience…) wins over "issuer not configured" (the token was for another provider),
//! which wins over "missing". "Missing" everywhere means no token: the request goes on with no
//! request identity. Anything else is refused: 403 for a disallowed audience, else 401.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use zmesh_config::authn::JwtRule;
use zmesh_policy::authz::Reason;
use zmesh_policy::compile::PolicyId;
use zmesh_policy::set::JwtRules;
use zmesh_policy::{AuthnOutcome, Claims};

use crate::cache::{Digest, TokenCache, Verified, digest};
use crate::extract::{FoundToken, RequestTokens, tokens_for_rule};
use crate::source::KeySource;
use crate::token::{self, JwtError, check_time};

/// Edits to the request before it goes to the application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    /// Header names (lower case) to remove, every value: incoming copies of the headers the
    /// rules write (so a client cannot forge them), and the header a verified token came in
    /// unless its rule forwards the original token.
    pub remove: Vec<String>,
    /// Headers to add after the removals (`outputPayloadToHeader`, `outputClaimToHeaders`).
    pub add: Vec<(String, String)>,
}

/// What authentication decided for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtResult {
    /// Pass (with or without claims) or Reject (401/403 with Envoy's message as detail).
    pub outcome: AuthnOutcome,
    /// The failure that decided a rejection (`None` when the request passes).
    pub error: Option<JwtError>,
    /// The `jwksUri`s whose key set lacked a token's `kid`: the fetcher should refresh them.
    pub unknown_kid: Vec<String>,
    /// Apply these only when the request passes.
    pub edits: HeaderEdits,
}

impl JwtResult {
    pub fn claims(&self) -> Option<&Claims> {
        match &self.outcome {
            AuthnOutcome::Pass { claims, .. } => claims.as_ref(),
            AuthnOutcome::Reject { .. } => None,
        }
    }

    /// The policy and rule index that accepted the token.
    pub fn accepted_by(&self) -> Option<&(PolicyId, usize)> {
        match &self.outcome {
            AuthnOutcome::Pass { rule, .. } => rule.as_ref(),
            AuthnOutcome::Reject { .. } => None,
        }
    }
}

fn seconds(now: SystemTime) -> u64 {
    // A clock before 1970 reads as 0: every `exp` is then in the future, but nothing is
    // accepted without a valid signature, and such a clock is broken anyway.
    now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A token string of this request, hashed once however many rules read it.
struct Seen<'a> {
    raw: Cow<'a, str>,
    digest: Digest,
}

fn seen_index<'a>(seen: &mut Vec<Seen<'a>>, found: &FoundToken<'a>) -> usize {
    if let Some(i) = seen.iter().position(|s| s.raw == found.token) {
        return i;
    }
    seen.push(Seen { raw: found.token.clone(), digest: digest(&found.token) });
    seen.len() - 1
}

struct Check<'c> {
    keys: &'c dyn KeySource,
    cache: &'c TokenCache,
    now: u64,
    unknown_kid: Vec<String>,
}

impl Check<'_> {
    fn verify(
        &mut self,
        seen: &mut Seen<'_>,
        rules: &Arc<JwtRules>,
        index: usize,
        rule: &JwtRule,
    ) -> Result<Arc<Verified>, JwtError> {
        let keys = self.keys.key_set(rules, index);
        if let Some(keys) = &keys
            && let Some(verified) = self.cache.get(&seen.digest, rules, index, keys.generation())
        {
            check_time(verified.exp, verified.nbf, self.now)?;
            return Ok(verified);
        }
        let parsed = token::parse(&seen.raw)?;
        let result = token::verify(&parsed, rule, keys.as_deref(), self.now);
        let kid_unknown = result == Err(JwtError::UnknownKid)
            || (result == Err(JwtError::VerificationFails)
                && parsed.kid.as_deref().is_some_and(|kid| keys.as_ref().is_some_and(|k| !k.has_kid(kid))));
        if kid_unknown
            && let Some(uri) = rule.jwks_uri.as_ref().filter(|_| rule.jwks.is_none())
            && !self.unknown_kid.contains(uri)
        {
            self.unknown_kid.push(uri.clone());
        }
        result?;
        let verified = Arc::new(Verified {
            exp: parsed.exp,
            nbf: parsed.nbf,
            claims: Claims::new(parsed.claims.clone(), &rule.space_delimited_claims),
            raw: parsed.claims,
        });
        if let Some(keys) = &keys {
            self.cache.insert(&seen.digest, rules, index, keys.generation(), verified.clone());
        }
        Ok(verified)
    }
}

/// A claim as a header value: strings as they are, numbers and booleans as text; other types
/// and values a header cannot carry are not sent.
fn claim_header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        _ => return None,
    };
    text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f)).then_some(text)
}

/// A claim by a `.`-separated path (`a.b` reads `{"a": {"b": ...}}`); a claim whose own name
/// holds the dots is found first.
fn claim_by_path<'v>(claims: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let first = claims.get(parts.next()?)?;
    parts.try_fold(first, |value, key| value.get(key))
}

/// Authenticate one request under the workload's rules (`PolicySet::jwt_rules`), verifying
/// tokens with `keys` at time `now`, and remembering verified tokens in `cache`.
pub fn authenticate_request(
    rules: &[Arc<JwtRules>],
    keys: &dyn KeySource,
    request: &RequestTokens<'_>,
    now: SystemTime,
    cache: &TokenCache,
) -> JwtResult {
    let pass_without_identity = AuthnOutcome::Pass { claims: None, rule: None };
    let mut edits = HeaderEdits::default();
    for rule in rules.iter().flat_map(|r| r.rules.iter()) {
        let written =
            rule.output_payload_to_header.iter().chain(rule.output_claim_to_headers.iter().map(|c| &c.header));
        for header in written {
            let header = header.to_ascii_lowercase();
            if !edits.remove.contains(&header) {
                edits.remove.push(header);
            }
        }
    }
    let mut result = JwtResult { outcome: pass_without_identity, error: None, unknown_kid: Vec::new(), edits };
    if rules.is_empty() || request.is_cors_preflight() {
        return result;
    }

    let mut check = Check { keys, cache, now: seconds(now), unknown_kid: Vec::new() };
    let mut seen: Vec<Seen<'_>> = Vec::new();
    let mut statuses = Vec::new();
    for (rules_arc, index, rule) in
        rules.iter().flat_map(|r| r.rules.iter().enumerate().map(move |(i, rule)| (r, i, rule)))
    {
        let found = tokens_for_rule(rule, request);
        if found.is_empty() {
            statuses.push(JwtError::Missing);
            continue;
        }
        let mut verified = Vec::with_capacity(found.len());
        let mut failure = None;
        for token in &found {
            let at = seen_index(&mut seen, token);
            match check.verify(&mut seen[at], rules_arc, index, rule) {
                Ok(v) => verified.push((at, v)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failure {
            statuses.push(error);
            continue;
        }
        // Every token this rule reads verified: the request is accepted with the first one's
        // claims (Istio leaves the principal undefined when tokens sit in several places).
        let (first_at, first) = &verified[0];
        for token in &found {
            if let Some(header) = token.header.as_ref().filter(|_| !rule.forward_original_token)
                && !result.edits.remove.contains(header)
            {
                result.edits.remove.push(header.clone());
            }
        }
        if let Some(header) = &rule.output_payload_to_header {
            let payload = seen[*first_at].raw.split('.').nth(1).unwrap_or_default().to_owned();
            result.edits.add.push((header.to_ascii_lowercase(), payload));
        }
        for output in &rule.output_claim_to_headers {
            if let Some(value) = claim_by_path(&first.raw, &output.claim).and_then(claim_header_value) {
                result.edits.add.push((output.header.to_ascii_lowercase(), value));
            }
        }
        result.outcome =
            AuthnOutcome::Pass { claims: Some(first.claims.clone()), rule: Some((rules_arc.policy.clone(), index)) };
        result.unknown_kid = check.unknown_kid;
        return result;
    }

    result.unknown_kid = check.unknown_kid;
    let mut decided = JwtError::Missing;
    for status in &statuses {
        if !matches!(status, JwtError::Missing | JwtError::UnknownIssuer) {
            decided = *status;
        }
    }
    if decided == JwtError::Missing && statuses.contains(&JwtError::UnknownIssuer) {
        decided = JwtError::UnknownIssuer;
    }
    if decided == JwtError::Missing {
        return result;
    }
    let reason = if decided == JwtError::AudienceNotAllowed { Reason::JwtAudience } else { Reason::JwtInvalid };
    result.outcome = AuthnOutcome::Reject { status: decided.status(), reason, detail: decided.to_string() };
    result.error = Some(decided);
    result
}
