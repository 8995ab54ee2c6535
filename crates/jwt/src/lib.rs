//! zmesh-jwt: JWT verification for RequestAuthentication, with the semantics of an Istio
//! sidecar (Envoy's jwt_authn filter as istiod configures it).
//!
//! Pure: no I/O, no clock, no async. The proxy gives it the request's headers and query, the
//! key sets it has fetched ([`KeySource`]) and the time; it answers with the authentication
//! outcome (the same [`zmesh_policy::AuthnOutcome`] the offline checker uses), the verified
//! claims, the header edits for the upstream request, and which key sets lacked a token's key.
//!
//! Flow per request: [`authenticate_request`] → for each rule, [`extract::tokens_for_rule`] →
//! [`TokenCache`] hit, or [`token::parse`] + [`token::verify`] → combine as Envoy does.

pub mod cache;
pub mod extract;
pub mod keys;
pub mod request;
pub mod source;
pub mod token;

pub use cache::TokenCache;
pub use extract::RequestTokens;
pub use keys::{Key, KeySet, KeySetError, SkippedKey};
pub use request::{HeaderEdits, JwtResult, authenticate_request};
pub use source::{InlineKeySets, KeySource, StaticKeys};
pub use token::{CLOCK_SKEW_SECONDS, JwtError};

#[cfg(test)]
pub(crate) mod tests {
    /// A rule with only an issuer, as the config crate would build it.
    pub(crate) fn rule(issuer: &str) -> zmesh_config::authn::JwtRule {
        zmesh_config::authn::JwtRule {
            pos: Default::default(),
            issuer: issuer.to_owned(),
            audiences: Vec::new(),
            jwks_uri: None,
            jwks: None,
            from_headers: Vec::new(),
            from_params: Vec::new(),
            from_cookies: Vec::new(),
            output_payload_to_header: None,
            forward_original_token: false,
            output_claim_to_headers: Vec::new(),
            timeout: None,
            space_delimited_claims: Vec::new(),
        }
    }
}
