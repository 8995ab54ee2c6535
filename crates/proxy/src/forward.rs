//! The explicit HTTP proxy port (15080, explicit mode): an app started with
//! `http_proxy=http://<proxy>:15080` reaches mesh workloads by name (`name.namespace`,
//! ServiceEntry hosts) through the mesh, without capture and without DNS for mesh names.
//!
//! Per request on one client connection (HTTP/1.1, hyper):
//! - `CONNECT host:port` → route the host and port in the registry (`Registry::route_host`) →
//!   open the outbound connection → `200` → splice the bytes. A mesh workload (or an IP
//!   literal) takes the same path as the captured or explicit outbound ports
//!   (`Proxy::open_outbound`: an HBONE tunnel verified against the destination's SPIFFE ID, a
//!   ServiceEntry, or outboundTrafficPolicy); a ServiceEntry host on a port the entry declares
//!   goes to the entry's endpoints, its host resolved by DNS, or (resolution NONE) the
//!   addresses it declares or the host by DNS, over plain TCP (`Proxy::open_service_entry`).
//!   ServiceEntry hosts are in the registry, so REGISTRY_ONLY lets them through — on their
//!   declared ports only, as Istio does.
//! - absolute-form (`GET http://host:port/path`) → route → open (or reuse) an outbound
//!   connection to `host:port` → send the request in origin-form with hop-by-hop and `Proxy-*`
//!   headers removed → stream the response back unchanged, so the destination's own answer
//!   (such as its `403 RBAC: access denied`) is what the app sees.
//! - origin-form (the port used as if it were a web server) → `400` saying how to use it.
//!
//! Failures this proxy answers itself say which destination and why: `502` for a host (or a
//! ServiceEntry host's port) outside the registry under REGISTRY_ONLY, a name that does not
//! resolve, or a destination that is not who it should be; `503` when the destination's proxy
//! or a ServiceEntry's endpoints cannot be reached; the destination proxy's own status and
//! reason when it refuses the tunnel by policy (L4 ports). Bodies are streamed and never logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};
use zmesh_config::mesh::OutboundTrafficPolicy;
use zmesh_registry::HostRoute;

use crate::hbone::{HboneError, Side};
use crate::run::{Outbound, OutboundError, Proxy};

type Body = BoxBody<Bytes, hyper::Error>;

/// Upstream connections one client connection keeps open for reuse, one per `host:port`. A client
/// that talks to more hosts than this over one connection gets the least recently used closed:
/// each is an HBONE stream (or a socket) held on the client's behalf.
const MAX_UPSTREAMS_PER_CONNECTION: usize = 8;

/// How long a kept upstream connection may take to be ready for the next request.
const UPSTREAM_READY_TIMEOUT: Duration = Duration::from_secs(1);

/// A client that sends half a request head is cut off after this (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serve one client connection of the HTTP proxy port until it closes or the proxy shuts down.
pub async fn serve(proxy: Arc<Proxy>, stream: TcpStream, source: SocketAddr) {
    let local = stream.local_addr().ok();
    let shutdown = proxy.shutdown.clone();
    let client = Arc::new(Client { proxy, local, upstreams: Mutex::default(), tunnel: Mutex::default() });
    let handler = client.clone();
    let service = hyper::service::service_fn(move |request| handler.clone().handle(request));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            // Finish the request in flight, then close; the accept loop's drain deadline bounds it.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        debug!(%error, %source, "HTTP proxy connection ended with an error");
    }
    // A tunnel may live for long; the idle upstream connections of earlier requests need not.
    client.upstreams.lock().unwrap_or_else(PoisonError::into_inner).clear();
    let accepted = client.tunnel.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(Tunnel { on_upgrade, mut upstream, destination }) = accepted {
        // The splice runs on this connection's task, so it counts against the listener's
        // connection limit and its drain, like any outbound connection.
        match on_upgrade.await {
            Ok(upgraded) => {
                let _ = crate::splice::splice(&mut TokioIo::new(upgraded), &mut upstream).await;
            }
            Err(error) => debug!(%error, %source, %destination, "the client left before its CONNECT tunnel started"),
        }
    }
}

/// One client connection's state, shared by its requests (which hyper serves one at a time).
struct Client {
    proxy: Arc<Proxy>,
    /// This port's own address, to tell a client that used it as a web server what to do instead.
    local: Option<SocketAddr>,
    /// Upstream connections by lowercase `host:port`, least recently used first.
    upstreams: Mutex<Vec<(String, SendRequest<Incoming>)>>,
    /// An accepted CONNECT: spliced once hyper hands over the client's connection.
    tunnel: Mutex<Option<Tunnel>>,
}

struct Tunnel {
    on_upgrade: OnUpgrade,
    upstream: Outbound,
    destination: String,
}

impl Client {
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let method = request.method().clone();
        let answered = if method == Method::CONNECT {
            self.connect(request).await
        } else if request.uri().scheme().is_some() {
            self.forward(request).await
        } else {
            Err(self.not_a_proxy_request())
        };
        let response = answered.unwrap_or_else(Answer::into_response);
        debug!(%method, status = response.status().as_u16(), "HTTP proxy request");
        Ok(response)
    }

    /// `CONNECT host:port`: open the outbound connection first, so a failure is an HTTP answer
    /// instead of a tunnel that closes at once.
    async fn connect(&self, mut request: Request<Incoming>) -> Result<Response<Body>, Answer> {
        let authority = request
            .uri()
            .authority()
            .cloned()
            .ok_or_else(|| Answer::new(StatusCode::BAD_REQUEST, "CONNECT needs a host:port target".to_owned()))?;
        let port = authority.port_u16().ok_or_else(|| {
            Answer::new(StatusCode::BAD_REQUEST, format!("CONNECT {authority}: the target needs a port, as host:port"))
        })?;
        let destination = format!("{}:{port}", authority.host());
        let upstream = self.open(authority.host(), port, &destination).await?;
        let on_upgrade = hyper::upgrade::on(&mut request);
        *self.tunnel.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Tunnel { on_upgrade, upstream, destination });
        Ok(Response::new(empty()))
    }

    /// An absolute-form request: to its destination in origin-form, the response back as it came.
    async fn forward(&self, request: Request<Incoming>) -> Result<Response<Body>, Answer> {
        let uri = request.uri();
        if uri.scheme() != Some(&Scheme::HTTP) {
            return Err(Answer::new(
                StatusCode::BAD_REQUEST,
                format!("{uri}: only http:// URLs are forwarded; for https, clients send CONNECT host:443 instead"),
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| Answer::new(StatusCode::BAD_REQUEST, format!("{uri}: the URL has no host")))?;
        let port = authority.port_u16().unwrap_or(80);
        let destination = format!("{}:{port}", authority.host().to_ascii_lowercase());
        let request = origin_form(request, &authority)?;
        let (mut sender, reused) = match self.checkout(&destination).await {
            Some(sender) => (sender, true),
            None => (self.dial(authority.host(), port, &destination).await?, false),
        };
        let mut sent = sender.try_send_request(request).await;
        if reused && let Err(failed) = &mut sent {
            // The destination closed the idle connection as the request went out; the request
            // was not written, so it is safe to send again on a new connection.
            if let Some(request) = failed.take_message() {
                let error = failed.error();
                debug!(%destination, %error, "a reused upstream connection failed; retrying on a new one");
                sender = self.dial(authority.host(), port, &destination).await?;
                sent = sender.try_send_request(request).await;
            }
        }
        match sent {
            Ok(response) => {
                self.checkin(destination, sender);
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
            Err(failed) => {
                let error = failed.into_error();
                info!(%destination, %error, "the destination failed to answer a proxied request");
                Err(Answer::new(StatusCode::BAD_GATEWAY, format!("{destination} did not answer: {error}")))
            }
        }
    }

    fn not_a_proxy_request(&self) -> Answer {
        let address = self.local.map_or_else(|| "<this address>".to_owned(), |local| local.to_string());
        Answer::new(
            StatusCode::BAD_REQUEST,
            format!(
                "this port is zmesh's HTTP proxy, not a web server: use it via http_proxy=http://{address} \
                 (requests as GET http://name.namespace:port/path, or CONNECT host:port)"
            ),
        )
    }

    /// The outbound connection to `host:port`, as the registry routes it: a workload or an IP
    /// literal by address, a ServiceEntry host on a declared port to the entry's upstreams;
    /// anything else only under ALLOW_ANY.
    async fn open(&self, host: &str, port: u16, destination: &str) -> Result<Outbound, Answer> {
        let config = self.proxy.config();
        let opened = match config.registry.route_host(host, port) {
            HostRoute::Address(ip) => self.proxy.open_outbound(SocketAddr::new(ip, port)).await,
            HostRoute::ServiceEntry(route) => {
                debug!(%destination, service_entry = %route.service_entry, "HTTP proxy request to a ServiceEntry");
                self.proxy.open_service_entry(&route).await
            }
            _ if config.mesh.outbound_traffic_policy == OutboundTrafficPolicy::AllowAny => {
                return self.open_outside(host, port, destination).await;
            }
            HostRoute::UndeclaredPort { service_entry, declared } => {
                let ports = if declared.len() == 1 { "port" } else { "ports" };
                let declared: Vec<String> = declared.iter().map(u16::to_string).collect();
                info!(%destination, %service_entry, "REGISTRY_ONLY: the ServiceEntry does not declare the port; refused");
                return Err(Answer::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "{destination} is not in the mesh registry: ServiceEntry {service_entry} declares {host} on \
                         {ports} {} only, and outboundTrafficPolicy is REGISTRY_ONLY",
                        declared.join(", ")
                    ),
                ));
            }
            HostRoute::Unknown => {
                info!(%host, "REGISTRY_ONLY: the host is not in the mesh registry; request refused");
                return Err(Answer::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "{host} is not in the mesh registry (no WorkloadEntry or ServiceEntry has that name), and \
                         outboundTrafficPolicy is REGISTRY_ONLY; mesh workloads are reached as name.namespace"
                    ),
                ));
            }
        };
        opened.map_err(|error| outbound_failure(destination, &error))
    }

    /// ALLOW_ANY, for a host the registry does not route: where the registry's names point
    /// (a ServiceEntry endpoint's address on a port the entry does not declare), else what DNS
    /// says, trying each address in turn (a name such as `localhost` may resolve to an IPv6
    /// address first that nothing listens on).
    async fn open_outside(&self, host: &str, port: u16, destination: &str) -> Result<Outbound, Answer> {
        let targets = match self.proxy.config().registry.resolve(host) {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => crate::net::lookup(host, port).await.map_err(|error| {
                info!(%host, %error, "cannot resolve a host outside the mesh");
                Answer::new(
                    StatusCode::BAD_GATEWAY,
                    format!("{host} is not in the mesh registry and does not resolve: {error}"),
                )
            })?,
        };
        let mut failed = None;
        for target in targets {
            match self.proxy.open_outbound(target).await {
                Ok(upstream) => return Ok(upstream),
                Err(error) => failed = Some(error),
            }
        }
        Err(failed.map_or_else(
            || Answer::new(StatusCode::BAD_GATEWAY, format!("{host} resolves to no address")),
            |error| outbound_failure(destination, &error),
        ))
    }

    /// A new upstream HTTP/1.1 connection to `host:port` through the mesh (or passthrough).
    async fn dial(&self, host: &str, port: u16, destination: &str) -> Result<SendRequest<Incoming>, Answer> {
        let upstream = self.open(host, port, destination).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await.map_err(|error| {
                Answer::new(StatusCode::BAD_GATEWAY, format!("cannot speak HTTP/1.1 to {destination}: {error}"))
            })?;
        let destination = destination.to_owned();
        // Ends when the destination closes, or once this client connection drops the sender.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, %destination, "upstream connection of the HTTP proxy ended with an error");
            }
        });
        Ok(sender)
    }

    /// A kept upstream connection to `destination` that can take another request.
    async fn checkout(&self, destination: &str) -> Option<SendRequest<Incoming>> {
        let mut sender = {
            let mut upstreams = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
            let at = upstreams.iter().position(|(key, _)| key == destination)?;
            upstreams.remove(at).1
        };
        // hyper serves a client connection's requests in order and had streamed the previous
        // response whole before reading this request, so a live upstream connection turns idle
        // at once; the bound only guards against waiting on one that never does.
        match tokio::time::timeout(UPSTREAM_READY_TIMEOUT, sender.ready()).await {
            Ok(Ok(())) => Some(sender),
            _ => None,
        }
    }

    fn checkin(&self, destination: String, sender: SendRequest<Incoming>) {
        let mut upstreams = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        upstreams.push((destination, sender));
        if upstreams.len() > MAX_UPSTREAMS_PER_CONNECTION {
            upstreams.remove(0);
        }
    }
}

/// The request as the destination should get it: origin-form target, `Host` from the URL (RFC
/// 9112 §3.2.2: a proxy replaces a received Host with the absolute-form's authority, without
/// any userinfo), no hop-by-hop or `Proxy-*` headers, HTTP/1.1.
fn origin_form(request: Request<Incoming>, authority: &Authority) -> Result<Request<Incoming>, Answer> {
    let (mut parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map_or("/", |target| target.as_str());
    parts.uri =
        Uri::try_from(target).map_err(|error| Answer::new(StatusCode::BAD_REQUEST, format!("{target}: {error}")))?;
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let host = match authority.port() {
        Some(port) => format!("{}:{port}", authority.host()),
        None => authority.host().to_owned(),
    };
    let host = HeaderValue::from_str(&host)
        .map_err(|error| Answer::new(StatusCode::BAD_REQUEST, format!("{authority}: {error}")))?;
    parts.headers.insert(header::HOST, host);
    Ok(Request::from_parts(parts, body))
}

/// Headers that describe one hop (RFC 9110 §7.6.1) and the client's proxy credentials: none of
/// them is for the next hop. hyper frames the bodies itself on each side.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
    ] {
        headers.remove(name);
    }
    let proxy_headers: Vec<HeaderName> =
        headers.keys().filter(|name| name.as_str().starts_with("proxy-")).cloned().collect();
    for name in proxy_headers {
        headers.remove(name);
    }
}

/// This proxy's answer when it opened nothing toward `destination`.
fn outbound_failure(destination: &str, error: &OutboundError) -> Answer {
    match error {
        OutboundError::NotInRegistry { target } => {
            info!(%destination, %target, "REGISTRY_ONLY: the destination is not in the mesh registry; refused");
            Answer::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "{destination} ({target}) is not in the mesh registry, and outboundTrafficPolicy is REGISTRY_ONLY"
                ),
            )
        }
        OutboundError::Tunnel { error: tunnel, .. } => match tunnel {
            // The destination's proxy refused the tunnel by policy: its answer, unchanged.
            HboneError::Refused { status, reason, .. } if tunnel.side() == Side::Policy => {
                info!(%destination, %status, "the destination's proxy refused the tunnel");
                Answer::new(*status, reason.clone().unwrap_or_else(|| "RBAC: access denied".to_owned()))
            }
            // Whoever answered is not who the destination should be (or refused this proxy).
            HboneError::Tls { .. } => {
                warn!(%destination, %error, "mTLS with the destination's proxy failed");
                Answer::new(StatusCode::BAD_GATEWAY, format!("cannot reach {destination} through the mesh: {error}"))
            }
            _ => {
                warn!(%destination, %error, "no tunnel to the destination");
                Answer::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot reach {destination} through the mesh: {error}"),
                )
            }
        },
        OutboundError::OwnProxyPort { .. } => {
            info!(%destination, %error, "refused: the workload's own proxy port");
            Answer::new(StatusCode::FORBIDDEN, format!("{destination}: {error}"))
        }
        OutboundError::Passthrough { .. } => {
            info!(%destination, %error, "passthrough connect failed");
            Answer::new(StatusCode::BAD_GATEWAY, format!("cannot reach {destination}: {error}"))
        }
        // The service is in the registry, but none of its upstreams took the connection (as
        // Envoy answers for a cluster without a reachable endpoint).
        OutboundError::ServiceEntry { .. } | OutboundError::NoEndpoints { .. } => {
            info!(%destination, %error, "no ServiceEntry upstream accepted the connection");
            Answer::new(StatusCode::SERVICE_UNAVAILABLE, format!("cannot reach {destination}: {error}"))
        }
    }
}

/// A response this proxy makes itself: a status and a one-line plain-text reason.
struct Answer {
    status: StatusCode,
    message: String,
}

impl Answer {
    fn new(status: StatusCode, message: String) -> Self {
        Answer { status, message }
    }

    fn into_response(self) -> Response<Body> {
        let body = Full::new(Bytes::from(self.message + "\n")).map_err(|never| match never {}).boxed();
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        response
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}
