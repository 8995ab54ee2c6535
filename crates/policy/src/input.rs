//! The JSON description of a workload and a request that `zmesh authz check` and
//! `zmesh authn check` take (`--workload-json`, `--request-json`), and the whole decision a
//! sidecar would make for it: token, path normalization, then authorization.
//!
//! The field names follow the conformance cases, so a case's `workload` and `request` objects
//! can be passed as they are.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use zmesh_config::authn::MtlsMode;
use zmesh_config::mesh::MeshConfig;
use zmesh_http::PathNormalization;
use zmesh_id::SpiffeId;

use crate::authn::{AuthnOutcome, Token, TokenLocation, authenticate};
use crate::authz::{Decision, Reason, WorkloadPolicy};
use crate::explain::{Explanation, explain};
use crate::request::{HttpRequest, Request, remote_ip_from_forwarded_for};
use crate::set::{JwtRules, MtlsDecision, PolicySet, Workload};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadInput {
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_service_account")]
    pub service_account: String,
}

fn default_service_account() -> String {
    "default".to_owned()
}

impl From<&WorkloadInput> for Workload {
    fn from(input: &WorkloadInput) -> Workload {
        Workload {
            namespace: input.namespace.clone(),
            labels: input.labels.clone(),
            service_account: input.service_account.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceInput {
    /// The peer's identity in Istio's principal form `td/ns/x/sa/y` (with or without
    /// `spiffe://`); absent for a plaintext peer.
    pub principal: Option<String>,
    /// Informational: the namespace is read from the principal.
    pub namespace: Option<String>,
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationInput {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtInput {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Option<serde_json::Value>,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtInvalidInput {
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestInput {
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub source: SourceInput,
    pub destination: DestinationInput,
    pub method: Option<String>,
    pub host: Option<String>,
    /// The raw path as the client sent it; it is normalized as the mesh config says.
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub sni: Option<String>,
    /// A token in the default location that verified.
    pub jwt: Option<JwtInput>,
    /// A token in a configured location that failed verification.
    pub jwt_invalid: Option<JwtInvalidInput>,
}

/// Bad input, said in terms of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// The outcome of `authz check`: the decision, and the explanation when authorization ran.
#[derive(Debug, Clone)]
pub struct Checked {
    pub decision: Decision,
    pub explanation: Option<Explanation>,
    /// The path authorization saw (after normalization).
    pub normalized_path: Option<String>,
    /// Why the request was refused before authorization, if it was.
    pub refused: Option<String>,
    /// The destination port's effective PeerAuthentication, when it was applied
    /// ([`check_request`], [`check_in_force`]).
    pub mtls: Option<MtlsDecision>,
}

impl RequestInput {
    fn peer(&self) -> Result<Option<SpiffeId>, InputError> {
        let Some(principal) = &self.source.principal else { return Ok(None) };
        let parsed = if principal.starts_with(zmesh_id::SPIFFE_SCHEME) {
            principal.parse()
        } else {
            SpiffeId::from_principal(principal)
        };
        parsed.map(Some).map_err(|error| InputError(format!("request.source.principal: {error}")))
    }

    fn token(&self) -> Token {
        if let Some(invalid) = &self.jwt_invalid {
            return Token::Invalid { location: TokenLocation::AuthorizationBearer, reason: invalid.reason.clone() };
        }
        let Some(jwt) = &self.jwt else { return Token::None };
        let mut claims = jwt.claims.clone();
        for (name, value) in [
            ("iss", jwt.iss.clone().map(serde_json::Value::String)),
            ("sub", jwt.sub.clone().map(serde_json::Value::String)),
            ("aud", jwt.aud.clone()),
        ] {
            if let Some(value) = value {
                claims.insert(name.to_owned(), value);
            }
        }
        Token::Valid { location: TokenLocation::AuthorizationBearer, claims }
    }
}

/// Decide a request the way the workload's sidecar would, from authorization on: the
/// connection is taken as accepted (see [`check_request`] for PeerAuthentication first).
pub fn check_authz(
    set: &PolicySet,
    mesh: &MeshConfig,
    workload: &WorkloadInput,
    request: &RequestInput,
) -> Result<Checked, InputError> {
    let workload = Workload::from(workload);
    decide(&set.for_workload(&workload), &set.jwt_rules(&workload), mesh.path_normalization, request)
}

/// Decide a request the way the workload's sidecar would, from the connection on: the
/// effective PeerAuthentication of the destination port first (a plaintext peer — one without
/// a principal — is refused on a STRICT port before any authorization, as the proxy closes
/// such a connection), then [`check_authz`].
pub fn check_request(
    set: &PolicySet,
    mesh: &MeshConfig,
    workload: &WorkloadInput,
    request: &RequestInput,
) -> Result<Checked, InputError> {
    let workload = Workload::from(workload);
    check_in_force(set, &set.for_workload(&workload), &workload, mesh.path_normalization, request)
}

/// [`check_request`] with the workload's policies already gathered, as a proxy holds them in
/// its configuration (`ProxyConfig::policy`): the live `zmesh authz check` passes the proxy's
/// own compiled configuration here, so the answer is the one the proxy computes.
pub fn check_in_force(
    set: &PolicySet,
    policy: &WorkloadPolicy,
    workload: &Workload,
    normalization: PathNormalization,
    request: &RequestInput,
) -> Result<Checked, InputError> {
    let mtls = set.mtls_mode(workload, request.destination.port);
    if request.source.principal.is_none() && mtls.mode == MtlsMode::Strict {
        let set_by = match (&mtls.policy, mtls.port_level) {
            (Some(policy), true) => format!("PeerAuthentication {policy} (portLevelMtls)"),
            (Some(policy), false) => format!("PeerAuthentication {policy}"),
            // STRICT is never the default, so some policy set it.
            (None, _) => "a PeerAuthentication".to_owned(),
        };
        return Ok(Checked {
            decision: Decision::deny(Reason::PlaintextRefused, 0, None),
            explanation: None,
            normalized_path: None,
            refused: Some(format!(
                "plaintext refused before authorization: {set_by} sets STRICT mTLS on port {}, so a peer without an mTLS identity has its connection closed",
                request.destination.port
            )),
            mtls: Some(mtls),
        });
    }
    let mut checked = decide(policy, &set.jwt_rules(workload), normalization, request)?;
    checked.mtls = Some(mtls);
    Ok(checked)
}

/// Token, path normalization, then authorization, for a connection already accepted.
fn decide(
    policy: &WorkloadPolicy,
    jwt_rules: &[std::sync::Arc<JwtRules>],
    normalization: PathNormalization,
    request: &RequestInput,
) -> Result<Checked, InputError> {
    let peer = request.peer()?;
    let is_http = request.protocol == Protocol::Http;
    let refuse = |decision: Decision, why: String, path: Option<String>| Checked {
        decision,
        explanation: None,
        normalized_path: path,
        refused: Some(why),
        mtls: None,
    };

    let mut claims = None;
    if is_http {
        match authenticate(jwt_rules, &request.token()) {
            AuthnOutcome::Pass { claims: verified, .. } => claims = verified,
            AuthnOutcome::Reject { status, reason, detail } => {
                return Ok(refuse(Decision::deny(reason, status, None), detail, None));
            }
        }
    }
    let normalized = match (&request.path, is_http) {
        (Some(path), true) => match zmesh_http::normalize_path(path, normalization) {
            Ok(normalized) => Some(normalized.into_owned()),
            Err(error) => {
                return Ok(refuse(
                    Decision::deny(Reason::NoAllowMatched, 400, None),
                    format!("the path is refused before authorization: {error}"),
                    None,
                ));
            }
        },
        _ => None,
    };
    let headers: Vec<(&str, &str)> = request.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let http = is_http.then(|| HttpRequest {
        method: request.method.as_deref().unwrap_or("GET"),
        host: request.host.as_deref().unwrap_or_default(),
        path: normalized.as_deref().unwrap_or("/"),
        headers: &headers,
    });
    let forwarded_for = http.as_ref().and_then(|h| h.header("x-forwarded-for")).map(|v| v.into_owned());
    let attributes = Request {
        peer: peer.as_ref(),
        source_ip: request.source.ip,
        remote_ip: if is_http {
            remote_ip_from_forwarded_for(forwarded_for.as_deref(), request.source.ip)
        } else {
            request.source.ip
        },
        destination_ip: request.destination.ip,
        destination_port: request.destination.port,
        sni: request.sni.as_deref(),
        http,
        jwt: claims.as_ref(),
    };
    let explanation = explain(policy, &attributes);
    Ok(Checked {
        decision: explanation.decision.clone(),
        explanation: Some(explanation),
        normalized_path: normalized,
        refused: None,
        mtls: None,
    })
}
