//! The process around the rules: listeners for Envoy's HTTP and gRPC checks, the rules file
//! reloaded when it changes, a bound on connections, and a graceful stop.
//!
//! Flow: bind (the rules must load, or nothing starts) → accept on each listener (a connection
//! slot first, shared by both) → one task per connection, drained on stop with a deadline;
//! beside it, a poll of the rules file's metadata that swaps in a new [`RuleSet`] when the file
//! changed and loads, and keeps the last good one (and logs why) when it does not.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use zmesh_xds::envoy::service::auth::v3::authorization_server::AuthorizationServer;

use crate::attributes::RequestAttributes;
use crate::clock::Clock;
use crate::grpc::GrpcAuthorization;
use crate::rules::{Action, DecidedBy, Decision, LoadError, Outcome, RuleSet};

/// The HTTP port of Istio's sample ext-authz server, which mesh configurations often name.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8000";
/// The gRPC port of Istio's sample ext-authz server.
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:9000";

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub rules_path: PathBuf,
    /// Where to serve Envoy's HTTP ext_authz checks, if at all.
    pub http: Option<SocketAddr>,
    /// Where to serve Envoy's gRPC ext_authz checks, if at all.
    pub grpc: Option<SocketAddr>,
    /// The `pathPrefix` the proxy puts before the original path on HTTP checks; it is removed
    /// before the rules see the path, and a check without it is denied.
    pub http_path_prefix: String,
    /// Which token payload in the jwt_authn metadata rules see as `request.auth.claims` (the
    /// `payload_in_metadata` name; Istio uses the issuer). Unset: the only one present.
    pub claims_key: Option<String>,
    /// Open connections, over both listeners; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// How often the rules file's metadata is checked for a change.
    pub reload_interval: Duration,
    /// How long open connections may take to finish after a stop.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// Defaults for everything but the rules file; no listener is set.
    pub fn new(rules_path: PathBuf) -> ServerConfig {
        ServerConfig {
            rules_path,
            http: None,
            grpc: None,
            http_path_prefix: String::new(),
            claims_key: None,
            max_connections: 1024,
            reload_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("the rules file does not load, so the server does not start")]
    Rules(#[source] LoadError),
    #[error("cannot listen on {addr} for {protocol} checks; is the port in use?")]
    Bind {
        addr: SocketAddr,
        protocol: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no listener: give --http ADDR, --grpc ADDR or both")]
    NoListener,
}

/// What every connection shares.
pub(crate) struct Shared {
    rules: watch::Receiver<Arc<RuleSet>>,
    pub clock: Arc<dyn Clock>,
    pub claims_key: Option<String>,
    pub http_path_prefix: String,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("rules", &*self.rules.borrow()).finish_non_exhaustive()
    }
}

impl Shared {
    /// The rules in force now; a reload does not affect a decision already under way.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.borrow().clone()
    }
}

/// A server whose rules are loaded and whose listeners are bound.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    shared: Arc<Shared>,
    publish: watch::Sender<Arc<RuleSet>>,
    loaded: Option<Fingerprint>,
    http: Option<TcpListener>,
    grpc: Option<TcpListener>,
}

impl Server {
    /// Load the rules and bind the listeners. Port 0 picks a free port (see
    /// [`Server::http_addr`]).
    pub async fn bind(config: ServerConfig, clock: Arc<dyn Clock>) -> Result<Server, ServerError> {
        if config.http.is_none() && config.grpc.is_none() {
            return Err(ServerError::NoListener);
        }
        let loaded = fingerprint(&config.rules_path).ok();
        let rules = RuleSet::load(&config.rules_path).map_err(ServerError::Rules)?;
        let (publish, receive) = watch::channel(Arc::new(rules));
        let listen = |addr: Option<SocketAddr>, protocol: &'static str| async move {
            match addr {
                None => Ok(None),
                Some(addr) => TcpListener::bind(addr).await.map(Some).map_err(|source| ServerError::Bind {
                    addr,
                    protocol,
                    source,
                }),
            }
        };
        let http = listen(config.http, "HTTP").await?;
        let grpc = listen(config.grpc, "gRPC").await?;
        let shared = Arc::new(Shared {
            rules: receive,
            clock,
            claims_key: config.claims_key.clone(),
            http_path_prefix: config.http_path_prefix.clone(),
        });
        Ok(Server { config, shared, publish, loaded, http, grpc })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    /// The names of the rules in force, in order.
    pub fn rule_names(&self) -> Vec<String> {
        self.shared.rules().rule_names().map(str::to_owned).collect()
    }

    /// Serve until `stop` is cancelled, then let open connections finish (up to the drain
    /// timeout).
    pub async fn run(self, stop: CancellationToken) {
        let Server { config, shared, publish, loaded, http, grpc } = self;
        let tasks = TaskTracker::new();
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let reload =
            tokio::spawn(reload_loop(config.rules_path.clone(), config.reload_interval, publish, loaded, stop.clone()));
        let mut loops = Vec::new();
        for (listener, protocol) in [(http, Protocol::Http), (grpc, Protocol::Grpc)] {
            if let Some(listener) = listener {
                let accept = Accept {
                    shared: Arc::clone(&shared),
                    slots: Arc::clone(&slots),
                    tasks: tasks.clone(),
                    stop: stop.clone(),
                    drain: config.drain_timeout,
                };
                loops.push(tokio::spawn(accept.run(listener, protocol)));
            }
        }
        for accept_loop in loops {
            let _ = accept_loop.await;
        }
        let _ = reload.await;
        tasks.close();
        if tokio::time::timeout(config.drain_timeout, tasks.wait()).await.is_err() {
            warn!(open = tasks.len(), "connections still open after the drain timeout; closing them");
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

struct Accept {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
    drain: Duration,
}

impl Accept {
    async fn run(self, listener: TcpListener, protocol: Protocol) {
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                () = self.stop.cancelled() => return,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off rather than spin.
                        warn!(protocol = protocol.name(), %error, "accept failed");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                            () = self.stop.cancelled() => return,
                        }
                    }
                },
                () = self.stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let shared = Arc::clone(&self.shared);
            let stop = self.stop.clone();
            let drain = self.drain;
            self.tasks.spawn(async move {
                serve_connection(stream, peer, protocol, shared, stop, drain).await;
                drop(slot);
            });
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    shared: Arc<Shared>,
    stop: CancellationToken,
    drain: Duration,
) {
    let io = TokioIo::new(stream);
    let builder = auto::Builder::new(TokioExecutor::new());
    match protocol {
        Protocol::Http => {
            let service = hyper::service::service_fn(move |request| handle_http(request, Arc::clone(&shared)));
            drive(builder.serve_connection(io, service), peer, protocol, stop, drain).await;
        }
        Protocol::Grpc => {
            let service =
                hyper_util::service::TowerToHyperService::new(AuthorizationServer::new(GrpcAuthorization { shared }));
            let builder = builder.http2_only();
            drive(builder.serve_connection(io, service), peer, protocol, stop, drain).await;
        }
    }
}

async fn drive<C>(connection: C, peer: SocketAddr, protocol: Protocol, stop: CancellationToken, drain: Duration)
where
    C: GracefulConnection,
    C::Error: fmt::Display,
{
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(drain, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        debug!(protocol = protocol.name(), %peer, %error, "connection ended with an error");
    }
}

/// Envoy's HTTP ext_authz check: the original method, path (after the configured prefix) and
/// headers; 200 allows, anything else denies.
async fn handle_http(request: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, _body) = request.into_parts();
    let outcome = match http_attributes(&parts, &shared.http_path_prefix) {
        Ok(attributes) => {
            let rules = shared.rules();
            let decision = rules.decide(&attributes, shared.clock.now());
            log_decision("http", &attributes, &decision);
            return Ok(http_response(decision.outcome));
        }
        Err(message) => unreadable_request("http", &message),
    };
    Ok(http_response(outcome))
}

/// The attributes of an HTTP check. `host` and `content-length` are left out of the headers:
/// the host is `request.host`, and the length is that of the (empty) check, not of the
/// original request.
pub(crate) fn http_attributes(parts: &http::request::Parts, prefix: &str) -> Result<RequestAttributes, String> {
    let full_path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let path = match full_path.strip_prefix(prefix) {
        Some("") => "/".to_owned(),
        Some(rest) if rest.starts_with('/') || rest.starts_with('?') || prefix.is_empty() => {
            if rest.starts_with('?') {
                format!("/{rest}")
            } else {
                rest.to_owned()
            }
        }
        _ => {
            return Err(format!(
                "the check's path `{full_path}` does not start with the configured prefix `{prefix}`; set the same pathPrefix in the proxy and the server"
            ));
        }
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|authority| authority.as_str().to_owned()))
        .unwrap_or_default();
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if name == header::HOST || name == header::CONTENT_LENGTH {
            continue;
        }
        let value = value.to_str().map_err(|_| format!("header {name} is not visible ASCII"))?;
        headers.push((name.as_str().to_owned(), value.to_owned()));
    }
    Ok(RequestAttributes { method: parts.method.as_str().to_owned(), path, host, headers, ..Default::default() })
}

fn http_response(outcome: &Outcome) -> Response<Full<Bytes>> {
    let (status, body) = match outcome.action {
        Action::Allow => (StatusCode::OK, Bytes::new()),
        Action::Deny => {
            (StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::FORBIDDEN), Bytes::from(outcome.body.clone()))
        }
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in &outcome.headers {
        headers.append(name.clone(), value.clone());
    }
    if outcome.action == Action::Deny && !outcome.body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    response
}

/// A check that cannot be read is denied, and said so in the log.
pub(crate) fn unreadable_request(protocol: &'static str, message: &str) -> &'static Outcome {
    warn!(protocol, reason = message, "deny: the check request cannot be read");
    crate::rules::error_outcome()
}

pub(crate) fn log_decision(protocol: &'static str, request: &RequestAttributes, decision: &Decision<'_>) {
    let source = request.source.principal.as_str();
    match (&decision.by, decision.outcome.action) {
        (DecidedBy::Error { rule, message }, _) => {
            warn!(protocol, method = %request.method, path = %request.path, source, rule, error = %message, "deny: the rule failed to evaluate");
        }
        (by, Action::Deny) => {
            info!(protocol, method = %request.method, path = %request.path, source, by = %by, status = decision.outcome.status, "deny");
        }
        (by, Action::Allow) => {
            debug!(protocol, method = %request.method, path = %request.path, source, by = %by, "allow");
        }
    }
}

/// What identifies a version of the rules file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<Fingerprint> {
    use std::os::unix::fs::MetadataExt as _;
    // Through symlinks: a ConfigMap mount swaps the `..data` link, not the file.
    let metadata = std::fs::metadata(path)?;
    Ok(Fingerprint { modified: metadata.modified().ok(), len: metadata.len(), inode: metadata.ino() })
}

async fn reload_loop(
    path: PathBuf,
    interval: Duration,
    publish: watch::Sender<Arc<RuleSet>>,
    mut seen: Option<Fingerprint>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unreadable = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let current = match fingerprint(&path) {
            Ok(current) => current,
            Err(error) => {
                if !unreadable {
                    warn!(path = %path.display(), %error, "cannot read the rules file; the last good rules stay in force");
                }
                unreadable = true;
                seen = None;
                continue;
            }
        };
        unreadable = false;
        if seen == Some(current) {
            continue;
        }
        seen = Some(current);
        match RuleSet::load(&path) {
            Ok(rules) => {
                info!(path = %path.display(), rules = rules.rule_names().count(), "rules reloaded");
                publish.send_replace(Arc::new(rules));
            }
            Err(error) => {
                warn!(path = %path.display(), "the rules file changed but does not load; the last good rules stay in force:\n{error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = Request::builder().method("POST").uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn an_http_check_loses_the_path_prefix_and_keeps_the_query() {
        let attributes =
            http_attributes(&parts("/authz/orders/7?x=1", &[("host", "shop"), ("x-a", "1")]), "/authz").expect("reads");
        assert_eq!(attributes.path, "/orders/7?x=1");
        assert_eq!(attributes.host, "shop");
        assert_eq!(attributes.method, "POST");
        assert_eq!(attributes.headers, vec![("x-a".to_owned(), "1".to_owned())]);
        assert_eq!(http_attributes(&parts("/authz", &[]), "/authz").expect("reads").path, "/");
        assert_eq!(http_attributes(&parts("/authz?q", &[]), "/authz").expect("reads").path, "/?q");
    }

    #[test]
    fn an_http_check_without_the_configured_prefix_is_unreadable() {
        assert!(http_attributes(&parts("/orders", &[]), "/authz").is_err());
        // A prefix must end at a path segment: `/authzx` is not under `/authz`.
        assert!(http_attributes(&parts("/authzx/orders", &[]), "/authz").is_err());
    }

    #[test]
    fn a_deny_answers_with_its_status_body_and_headers_and_an_allow_with_200() {
        let deny = Outcome {
            action: Action::Deny,
            status: 401,
            body: "sign in".into(),
            headers: vec![(http::HeaderName::from_static("www-authenticate"), HeaderValue::from_static("Bearer"))],
        };
        let response = http_response(&deny);
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
        let allow = Outcome { action: Action::Allow, status: 200, body: String::new(), headers: deny.headers.clone() };
        let response = http_response(&allow);
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
}
