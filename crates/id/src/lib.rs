//! SPIFFE identity vocabulary: the names a zmesh workload is known by.
//!
//! Every identity is parsed once, at the edge, into one of these types; after that a `&str`
//! never stands in for an identity. `Display` is the exact inverse of `FromStr` for each type,
//! which the property tests check.

use std::fmt;
use std::str::FromStr;

/// Why a name is not a valid identity component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} `{value}` is longer than {max} characters")]
    TooLong { what: &'static str, value: String, max: usize },
    #[error("{what} `{value}` has the character {ch:?} at position {position}; {allowed}")]
    BadCharacter { what: &'static str, value: String, ch: char, position: usize, allowed: &'static str },
    #[error("{what} `{value}` must start and end with a lowercase letter or digit")]
    BadEdge { what: &'static str, value: String },
    #[error("`{value}` is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    NotSpiffeId { value: String },
}

fn check_chars(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > max {
        return Err(IdError::TooLong { what, value: value.to_owned(), max });
    }
    if let Some((position, ch)) = value.char_indices().find(|&(_, c)| !ok(c)) {
        return Err(IdError::BadCharacter { what, value: value.to_owned(), ch, position, allowed });
    }
    Ok(())
}

fn check_alnum_edges(what: &'static str, value: &str) -> Result<(), IdError> {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if edge_ok(value.chars().next()) && edge_ok(value.chars().last()) {
        Ok(())
    } else {
        Err(IdError::BadEdge { what, value: value.to_owned() })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The name as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                $check(value)?;
                Ok(Self(value.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                $check(&value)?;
                Ok(Self(value))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

fn check_trust_domain(value: &str) -> Result<(), IdError> {
    // SPIFFE ID spec §2.1: lowercase letters, digits, dots, dashes and underscores.
    check_chars(
        "trust domain",
        value,
        255,
        "a trust domain may only hold lowercase letters, digits, '.', '-' and '_'",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'),
    )
}

fn check_namespace(value: &str) -> Result<(), IdError> {
    // A Kubernetes namespace is an RFC 1123 label.
    check_chars(
        "namespace",
        value,
        63,
        "a namespace may only hold lowercase letters, digits and '-' (an RFC 1123 label)",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
    )?;
    check_alnum_edges("namespace", value)
}

fn check_service_account(value: &str) -> Result<(), IdError> {
    // A Kubernetes service account name is an RFC 1123 subdomain.
    check_chars(
        "service account",
        value,
        253,
        "a service account may only hold lowercase letters, digits, '-' and '.' (an RFC 1123 subdomain)",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'),
    )?;
    check_alnum_edges("service account", value)
}

name_type!(
    /// A SPIFFE trust domain, such as `cluster.local`.
    TrustDomain,
    check_trust_domain
);
name_type!(
    /// A Kubernetes namespace name (RFC 1123 label).
    Namespace,
    check_namespace
);
name_type!(
    /// A Kubernetes service account name (RFC 1123 subdomain).
    ServiceAccount,
    check_service_account
);

impl Default for TrustDomain {
    /// Istio's default trust domain.
    fn default() -> Self {
        Self("cluster.local".to_owned())
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`: the identity a workload proves
/// with its X.509 SVID.
///
/// The full URI is kept alongside its parts so that matching it against policy strings costs no
/// allocation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    trust_domain: TrustDomain,
    namespace: Namespace,
    service_account: ServiceAccount,
}

/// The URI scheme prefix of every SPIFFE ID.
pub const SPIFFE_SCHEME: &str = "spiffe://";

impl SpiffeId {
    pub fn new(trust_domain: TrustDomain, namespace: Namespace, service_account: ServiceAccount) -> Self {
        let uri = format!("{SPIFFE_SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}");
        Self { uri, trust_domain, namespace, service_account }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    pub fn service_account(&self) -> &ServiceAccount {
        &self.service_account
    }

    /// The whole URI, `spiffe://td/ns/x/sa/y`.
    pub fn as_uri(&self) -> &str {
        &self.uri
    }

    /// The URI without its scheme, `td/ns/x/sa/y`: the form Istio policies write principals in.
    pub fn principal(&self) -> &str {
        &self.uri[SPIFFE_SCHEME.len()..]
    }

    /// The same workload identity under another trust domain (used for trust-domain aliases).
    pub fn with_trust_domain(&self, trust_domain: TrustDomain) -> Self {
        Self::new(trust_domain, self.namespace.clone(), self.service_account.clone())
    }

    /// Parse the scheme-less principal form `td/ns/x/sa/y`.
    pub fn from_principal(principal: &str) -> Result<Self, IdError> {
        let not_spiffe = || IdError::NotSpiffeId { value: principal.to_owned() };
        let mut parts = principal.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not_spiffe());
        };
        Ok(Self::new(td.parse()?, ns.parse()?, sa.parse()?))
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    /// The only parser of full SPIFFE URIs.
    fn from_str(value: &str) -> Result<Self, IdError> {
        let rest = value.strip_prefix(SPIFFE_SCHEME).ok_or_else(|| IdError::NotSpiffeId { value: value.to_owned() })?;
        Self::from_principal(rest).map_err(|error| match error {
            IdError::NotSpiffeId { .. } => IdError::NotSpiffeId { value: value.to_owned() },
            other => other,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

#[cfg(test)]
mod tests;
