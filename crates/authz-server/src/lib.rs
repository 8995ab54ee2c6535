//! zmesh-authz-server: an Envoy external authorization server (ext_authz, HTTP and gRPC) that
//! decides with rules written in CEL, for what Istio's AuthorizationPolicy cannot say: time
//! windows, comparisons between a header and a token claim, anything computed.
//!
//! Flow: rules file → [`RuleSet`] (every expression compiled and checked at load; problems at
//! `file:line:col`) → per request: Envoy's check (HTTP or gRPC) → [`RequestAttributes`] →
//! [`RuleSet::decide`] (pure; the time is a parameter) → allow (200, headers for the upstream)
//! or deny (status, body, headers for the client). Errors deny.
//!
//! # Rules file
//!
//! ```yaml
//! timeZone: Europe/Berlin      # optional: the zone `now` is in (default UTC); a rule may set its own
//! default: deny                # optional: when no rule matches (deny; or {action, status, body, headers})
//! rules:
//! - name: business-hours
//!   when: |
//!     now.getDayOfWeek() >= 1 && now.getDayOfWeek() <= 5 &&
//!     now.getHours() >= 9 && now.getHours() < 18
//!   action: allow
//!   headers: {x-authz-rule: business-hours}     # allow: added to the upstream request
//! - name: payments-within-limit
//!   when: int(request.headers["x-amount"]) <= request.auth.claims.payment_limit
//!   action: allow
//! - name: closed
//!   when: "true"
//!   action: deny
//!   status: 403                                  # deny only; 300..599
//!   body: closed outside business hours          # deny only
//!   headers: {x-authz-rule: closed}              # deny: added to the response to the client
//! ```
//!
//! # Variables
//!
//! | variable | type | over gRPC | over HTTP |
//! |---|---|---|---|
//! | `request.method`, `request.path` (no query), `request.host` | string | yes | yes |
//! | `request.headers` | map, lower-case names, repeats joined by `,`, no pseudo-headers | yes | the headers the proxy forwards |
//! | `request.query` | map, form-decoded values, repeats joined by `,` | yes | yes |
//! | `request.auth.claims` | map: the JWT payload from `metadata_context.filter_metadata["envoy.filters.http.jwt_authn"]` | yes | always empty |
//! | `source.principal`, `source.address` | string | yes | empty |
//! | `destination.principal`, `destination.address`, `destination.port` | string, string, int | yes | empty, empty, 0 |
//! | `now` | timestamp in the rule's zone: `now.getHours()`, or `now.getHours("America/New_York")` | | |
//!
//! Over HTTP, Envoy sends only the request line and headers, so there is nothing trustworthy to
//! take claims or peer identities from: a header such as jwt_authn's `forward_payload_header` is
//! set on success but not removed when a request comes without a token, so a client could
//! forge it. Rules that need claims or peers must be served over gRPC.
//!
//! Whole-number claims are CEL ints (JSON and protobuf's `Struct` only have doubles), so
//! `claims.limit >= int(request.headers["x-amount"])` compares ints.

mod attributes;
mod clock;
mod expr;
pub mod grpc;
mod rules;
mod server;

pub use attributes::{ClaimValue, Peer, RequestAttributes};
pub use clock::{Clock, FixedClock, SystemClock};
pub use rules::{Action, DecidedBy, Decision, LoadError, Outcome, Problem, RuleSet};
pub use server::{DEFAULT_GRPC_ADDR, DEFAULT_HTTP_ADDR, Server, ServerConfig, ServerError};
