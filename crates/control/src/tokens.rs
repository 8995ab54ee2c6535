//! Bootstrap tokens: how a workload proves its identity to the CA in local mode.
//!
//! The control plane issues a token bound to one SPIFFE ID (and an expiry) when it starts the
//! workload's proxy; the CA signs only CSRs for the identity the token names. A token is
//! `zmesh-bootstrap:v1:<spiffe-id>:<expiry-unix-seconds>:<hex HMAC-SHA256>` — SPIFFE IDs never
//! contain spaces, and the MAC covers everything before it.
//!
//! A token has one purpose: getting a workload its first certificate. Renewals prove the
//! identity with the SVID itself and configuration is served only to SVIDs, so a token is
//! worth nothing once the workload runs, and it lives at most [`MAX_TOKEN_TTL`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;
use zmesh_id::SpiffeId;

use crate::ControlError;

const PREFIX: &str = zmesh_xds::BOOTSTRAP_TOKEN_PREFIX;

/// The longest a bootstrap token may live: long enough to start a workload (or copy a token to
/// a machine and start its proxy), short enough that a leaked token is soon worthless.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Clock skew allowed between the issuer and the control plane when checking the cap.
const SKEW: Duration = Duration::from_secs(300);

/// Proves a caller's identity from its bearer token.
pub trait CallerAuthenticator: Send + Sync + 'static {
    fn authenticate(&self, token: &str, now: SystemTime) -> Result<SpiffeId, ControlError>;
}

/// Issues and checks bootstrap tokens with a key only the control plane holds.
pub struct BootstrapTokens {
    key: hmac::Key,
}

impl std::fmt::Debug for BootstrapTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootstrapTokens { key: <secret> }")
    }
}

impl BootstrapTokens {
    /// `secret` must be at least 32 random bytes.
    pub fn new(secret: &[u8]) -> Result<Self, ControlError> {
        if secret.len() < 32 {
            return Err(ControlError::WeakTokenKey { len: secret.len() });
        }
        Ok(BootstrapTokens { key: hmac::Key::new(hmac::HMAC_SHA256, secret) })
    }

    /// A token for `id`, valid until `expires` — or for [`MAX_TOKEN_TTL`] after `now` when
    /// that comes first.
    pub fn issue(&self, id: &SpiffeId, now: SystemTime, expires: SystemTime) -> String {
        let expires = expires.min(now + MAX_TOKEN_TTL);
        let expiry = expires.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        let body = format!("{PREFIX}{id}:{expiry}");
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!("{body}:{}", hex(tag.as_ref()))
    }
}

impl CallerAuthenticator for BootstrapTokens {
    fn authenticate(&self, token: &str, now: SystemTime) -> Result<SpiffeId, ControlError> {
        let malformed = || ControlError::BadToken("not a zmesh bootstrap token".into());
        let (body, tag_hex) = token.rsplit_once(':').ok_or_else(malformed)?;
        let tag = unhex(tag_hex).ok_or_else(malformed)?;
        // Check the MAC before reading anything the caller wrote.
        hmac::verify(&self.key, body.as_bytes(), &tag)
            .map_err(|_| ControlError::BadToken("the token's signature does not verify".into()))?;
        let rest = body.strip_prefix(PREFIX).ok_or_else(malformed)?;
        let (id, expiry) = rest.rsplit_once(':').ok_or_else(malformed)?;
        let expiry: u64 = expiry.parse().map_err(|_| malformed())?;
        let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        if now_secs >= expiry {
            return Err(ControlError::BadToken(format!(
                "the token expired at {expiry} (now {now_secs}); restart the workload to get a new one"
            )));
        }
        // A token living longer than the cap was not minted by a current issuer: refuse it
        // rather than honour a lifetime the mesh no longer grants.
        if expiry > now_secs + (MAX_TOKEN_TTL + SKEW).as_secs() {
            return Err(ControlError::BadToken(format!(
                "the token is valid until {expiry}, longer than bootstrap tokens may live ({} s); issue a new one",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        id.parse().map_err(|e| ControlError::BadToken(format!("the token names no valid identity: {e}")))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> BootstrapTokens {
        BootstrapTokens::new(&[7u8; 32]).unwrap()
    }

    fn id() -> SpiffeId {
        "spiffe://cluster.local/ns/fintech-core/sa/order-service".parse().unwrap()
    }

    #[test]
    fn a_token_proves_the_identity_it_was_issued_for() {
        let now = SystemTime::now();
        let token = tokens().issue(&id(), now, now + Duration::from_secs(60));
        assert_eq!(tokens().authenticate(&token, now).unwrap(), id());
    }

    #[test]
    fn a_token_with_an_edited_identity_is_refused() {
        let now = SystemTime::now();
        let token = tokens().issue(&id(), now, now + Duration::from_secs(60)).replace("order-service", "admin");
        let error = tokens().authenticate(&token, now).unwrap_err();
        assert_eq!(error.to_string(), "caller authentication failed: the token's signature does not verify");
    }

    #[test]
    fn an_expired_token_is_refused() {
        let now = SystemTime::now();
        let token = tokens().issue(&id(), now, now);
        assert!(
            tokens().authenticate(&token, now + Duration::from_secs(1)).unwrap_err().to_string().contains("expired")
        );
    }

    #[test]
    fn a_token_from_another_key_is_refused() {
        let now = SystemTime::now();
        let other = BootstrapTokens::new(&[8u8; 32]).unwrap().issue(&id(), now, now + Duration::from_secs(60));
        assert!(tokens().authenticate(&other, now).is_err());
    }

    #[test]
    fn a_token_asked_for_longer_than_the_cap_lives_only_as_long_as_the_cap() {
        let now = SystemTime::now();
        let token = tokens().issue(&id(), now, now + Duration::from_secs(30 * 24 * 3600));
        assert!(tokens().authenticate(&token, now + MAX_TOKEN_TTL - Duration::from_secs(1)).is_ok());
        assert!(tokens().authenticate(&token, now + MAX_TOKEN_TTL + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_token_that_lives_longer_than_the_cap_is_refused_even_with_a_valid_signature() {
        // Minted by hand (as an old issuer without the cap would have): valid MAC, a year long.
        let now = SystemTime::now();
        let expiry = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 365 * 24 * 3600;
        let body = format!("{PREFIX}{}:{expiry}", id());
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let token = format!("{body}:{}", hex(hmac::sign(&key, body.as_bytes()).as_ref()));
        let error = tokens().authenticate(&token, now).unwrap_err().to_string();
        assert!(error.contains("longer than bootstrap tokens may live"), "{error}");
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(BootstrapTokens::new(&[1u8; 16]).is_err());
    }
}
