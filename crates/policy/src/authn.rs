//! RequestAuthentication outcomes: what a request's token means before authorization.
//!
//! The token's signature and expiry are verified by the proxy; here the verification result
//! is an input, and the rules decide whether the request continues (with or without a request
//! identity) or is refused with 401 or 403 (istio-semantics §8).

use std::sync::Arc;

use crate::authz::Reason;
use crate::compile::PolicyId;
use crate::request::Claims;
use crate::set::{JwtRules, MtlsDecision, PolicySet, Workload};

/// The mTLS mode in force on a workload port, and the one a dry-run PeerAuthentication would
/// put in force (`istio.io/dry-run: "true"` on a PeerAuthentication is a zmesh extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsModes {
    /// What the proxy enforces: dry-run policies take no part.
    pub enforced: MtlsDecision,
    /// The decision with dry-run policies enforced too, when a dry-run policy is the one that
    /// sets it (its `policy` names that dry-run PeerAuthentication); `None` when removing every
    /// dry-run annotation would change nothing.
    pub dry_run: Option<MtlsDecision>,
}

impl MtlsModes {
    /// The dry-run policy that would refuse a plaintext connection the enforced mode accepts.
    pub fn dry_run_refuses_plaintext(&self) -> Option<&MtlsDecision> {
        self.dry_run.as_ref().filter(|d| self.enforced.accepts_plaintext() && !d.accepts_plaintext())
    }
}

impl PolicySet {
    /// The enforced mode of a workload port and, beside it, the mode its dry-run
    /// PeerAuthentications would enforce (the same composition, as if their annotation were
    /// removed).
    pub fn mtls_modes(&self, workload: &Workload, port: u16) -> MtlsModes {
        let (enforced, _) = self.compose_mtls_mode(workload, port, false);
        let (would, by_dry_run) = self.compose_mtls_mode(workload, port, true);
        MtlsModes { enforced, dry_run: by_dry_run.then_some(would) }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use zmesh_config::authn::MtlsMode;

    fn set(yaml: &str) -> PolicySet {
        let loaded = zmesh_config::load_str(yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        PolicySet::compile(&loaded.config)
    }

    fn backend() -> Workload {
        Workload {
            namespace: "shop".into(),
            labels: [("app".to_owned(), "backend".to_owned())].into(),
            service_account: "backend".into(),
        }
    }

    const PERMISSIVE_NAMESPACE: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
"#;

    const STRICT_DRY_RUN_WORKLOAD: &str = r#"
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend-strict, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
"#;

    #[test]
    fn a_dry_run_strict_policy_is_not_enforced_but_is_reported_as_the_mode_it_would_set() {
        let set = set(&format!("{PERMISSIVE_NAMESPACE}{STRICT_DRY_RUN_WORKLOAD}"));
        let modes = set.mtls_modes(&backend(), 8080);
        assert_eq!(modes.enforced.mode, MtlsMode::Permissive);
        assert_eq!(modes.enforced.policy.as_ref().map(|p| p.to_string()), Some("shop/default".to_owned()));
        assert_eq!(set.mtls_mode(&backend(), 8080), modes.enforced);
        let would = modes.dry_run_refuses_plaintext().expect("the dry-run policy refuses plaintext on 8080");
        assert_eq!(would.mode, MtlsMode::Strict);
        assert_eq!(would.policy.as_ref().map(|p| p.to_string()), Some("shop/backend-strict".to_owned()));
    }

    #[test]
    fn a_dry_run_port_level_permissive_refuses_nothing_on_that_port() {
        let set = set(&format!("{PERMISSIVE_NAMESPACE}{STRICT_DRY_RUN_WORKLOAD}"));
        let modes = set.mtls_modes(&backend(), 9090);
        assert_eq!(modes.enforced.mode, MtlsMode::Permissive);
        assert!(modes.dry_run.as_ref().is_some_and(|d| d.port_level && d.mode == MtlsMode::Permissive));
        assert_eq!(modes.dry_run_refuses_plaintext(), None);
    }

    #[test]
    fn an_enforced_workload_policy_overrides_a_dry_run_namespace_policy() {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: backend, namespace: shop}
spec:
  selector: {matchLabels: {app: backend}}
  mtls: {mode: PERMISSIVE}
"#;
        let set = set(yaml);
        let modes = set.mtls_modes(&backend(), 8080);
        assert_eq!(modes.enforced.mode, MtlsMode::Permissive);
        assert_eq!(modes.dry_run, None, "removing the annotation would change nothing for this workload");
        let other = Workload { labels: Default::default(), ..backend() };
        let modes = set.mtls_modes(&other, 8080);
        assert_eq!(modes.enforced.mode, MtlsMode::Permissive);
        assert_eq!(modes.enforced.policy, None);
        assert_eq!(modes.dry_run_refuses_plaintext().map(|d| d.mode), Some(MtlsMode::Strict));
    }

    #[test]
    fn an_enforced_strict_policy_leaves_nothing_for_the_dry_run_to_refuse() {
        let yaml = format!("{}{STRICT_DRY_RUN_WORKLOAD}", PERMISSIVE_NAMESPACE.replace("PERMISSIVE", "STRICT"));
        let set = set(&yaml);
        let modes = set.mtls_modes(&backend(), 8080);
        assert_eq!(modes.enforced.mode, MtlsMode::Strict);
        assert_eq!(modes.dry_run_refuses_plaintext(), None);
    }
}
