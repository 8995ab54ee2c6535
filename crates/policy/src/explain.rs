//! Explanations for people: which policies apply, what each rule made of the request, and why
//! the decision is what it is.

use std::fmt::Write as _;
use std::sync::Arc;

use zmesh_config::authz::Action;

use crate::authz::{Decision, Miss, Reason, Verdict, WorkloadPolicy, check_rule};
use crate::compile::{CompiledPolicy, PolicyId};
use crate::request::Request;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleOutcome {
    Matched,
    /// The first field that did not match, and that said in words with the request's value.
    Missed {
        miss: Miss,
        detail: String,
    },
}

#[derive(Debug, Clone)]
pub struct PolicyTrace {
    pub policy: PolicyId,
    pub action: Action,
    pub dry_run: bool,
    pub provider: Option<String>,
    pub rules: Vec<RuleOutcome>,
}

#[derive(Debug, Clone)]
pub struct Explanation {
    pub decision: Decision,
    /// The decision if dry-run policies were enforced, when there are any.
    pub shadow: Option<Decision>,
    pub policies: Vec<PolicyTrace>,
    /// One line saying why.
    pub reason: String,
}

fn trace(policy: &Arc<CompiledPolicy>, request: &Request<'_>) -> PolicyTrace {
    PolicyTrace {
        policy: policy.id.clone(),
        action: policy.action,
        dry_run: policy.dry_run,
        provider: policy.provider.clone(),
        rules: policy
            .rules
            .iter()
            .map(|rule| match check_rule(rule, policy.action, request) {
                Ok(()) => RuleOutcome::Matched,
                Err(miss) => RuleOutcome::Missed { detail: describe_miss(&miss, request), miss },
            })
            .collect(),
    }
}

/// Describe a miss with the request's actual value.
pub fn describe_miss(miss: &Miss, request: &Request<'_>) -> String {
    if miss.part == "rule" {
        return "uses HTTP-only fields, so it never matches a TCP connection".to_owned();
    }
    let inner = match miss.part {
        "from" => "source",
        "to" => "operation",
        _ => "",
    };
    let location = if inner.is_empty() {
        format!("when[{}] {}", miss.index, miss.field)
    } else {
        format!("{}[{}].{inner}.{}", miss.part, miss.index, miss.field)
    };
    let http = request.http.as_ref();
    let actual = match miss.field {
        "principals"
        | "namespaces"
        | "serviceAccounts"
        | "trustDomains"
        | "source.principal"
        | "source.namespace"
        | "source.serviceAccount"
        | "source.trustDomain" => {
            request.peer.map_or_else(|| "a plaintext peer with no identity".to_owned(), |id| format!("peer {id}"))
        }
        "requestPrincipals"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "request.auth.claims" => match request.jwt {
            Some(claims) => format!("token of {}/{}", claims.issuer().unwrap_or("?"), claims.subject().unwrap_or("?")),
            None => "no verified token".to_owned(),
        },
        "ipBlocks" | "source.ip" => {
            format!("source IP {}", request.source_ip.map_or("unknown".to_owned(), |ip| ip.to_string()))
        }
        "remoteIpBlocks" | "remote.ip" => {
            format!("remote IP {}", request.remote_ip().map_or("unknown".to_owned(), |ip| ip.to_string()))
        }
        "ports" | "destination.port" => format!("port {}", request.destination_port),
        "destination.ip" => {
            format!("destination IP {}", request.destination_ip.map_or("unknown".to_owned(), |ip| ip.to_string()))
        }
        "hosts" => format!("host {:?}", http.map_or("", |h| h.host)),
        "methods" => format!("method {}", http.map_or("", |h| h.method)),
        "paths" => format!("path {}", http.map_or("", |h| h.path_only())),
        "connection.sni" => format!("SNI {:?}", request.sni.unwrap_or("")),
        _ => "the request".to_owned(),
    };
    let verb = if miss.positive { "matches none of the listed values" } else { "matches a `not` value" };
    format!("{location}: {actual} {verb}")
}

/// Explain a decision: every applicable policy, rule by rule.
pub fn explain(workload: &WorkloadPolicy, request: &Request<'_>) -> Explanation {
    let decision = workload.authorize(request);
    let policies: Vec<PolicyTrace> = workload.all().map(|p| trace(p, request)).collect();
    let mut reason = String::new();
    match (&decision.reason, &decision.decided_by) {
        (Reason::NoAllowMatched, _) => {
            reason.push_str("no ALLOW rule matched");
            for policy in policies.iter().filter(|p| p.action == Action::Allow && !p.dry_run) {
                if policy.rules.is_empty() {
                    let _ = write!(reason, "; {} has no rules (it allows nothing)", policy.policy);
                }
                for (index, outcome) in policy.rules.iter().enumerate() {
                    if let RuleOutcome::Missed { detail, .. } = outcome {
                        let _ = write!(reason, "; {} rule {index}: {detail}", policy.policy);
                    }
                }
            }
        }
        (other, Some(rule)) => {
            let _ = write!(reason, "{} ({} rule {})", other.describe(), rule.policy, rule.rule);
        }
        (other, None) => reason.push_str(other.describe()),
    }
    if let Some(external) = &decision.external
        && decision.verdict == Verdict::Allow
    {
        let _ = write!(
            reason,
            "; CUSTOM policy {} sends the request to its external authorizer, which must allow it too",
            external.policy
        );
    }
    Explanation { shadow: workload.shadow_decision(request), decision, policies, reason }
}
