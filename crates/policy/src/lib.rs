//! zmesh-policy: the pure policy engine.
//!
//! For a workload (namespace, labels, service account) and the mesh's configuration, it selects
//! the policies that apply and decides: authorization (CUSTOM > DENY > ALLOW, with every Istio
//! field), the effective PeerAuthentication mode per port, and what a request's token means
//! under RequestAuthentication. No I/O, no async, no clock: the proxy, the CLI and the tests
//! all call the same functions.
//!
//! Flow: `Config` → [`PolicySet::compile`] → [`PolicySet::for_workload`] →
//! [`WorkloadPolicy::authorize`] (hot path) or [`explain`] (for people).

pub mod analyze;
pub mod authn;
pub mod authz;
pub mod compile;
pub mod explain;
pub mod input;
pub mod matcher;
pub mod request;
pub mod set;

pub use authn::{AuthnOutcome, Token, authenticate};
pub use authz::{Decision, Reason, RuleRef, Verdict, WorkloadPolicy};
pub use explain::{Explanation, explain};
pub use request::{Claims, HttpRequest, Request, remote_ip_from_forwarded_for};
pub use set::{MtlsDecision, PolicySet, Workload};
