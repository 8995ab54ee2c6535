//! Inbound HTTP/1.1: parse each request as Envoy (an Istio sidecar) does, authorize it, forward
//! it to the local app.
//!
//! Flow, per request on one downstream connection: wait for a head (`head`) → decide, purely
//! (`decide`: refuse, deny or forward) → answer locally (`reply`), or rewrite the head
//! (`rewrite`) and exchange it with the app (`exchange`: the request body and the response move
//! at once) → the next request, in order, so pipelined requests are each authorized.
//!
//! A downstream connection pairs with at most one app connection, opened at the first allowed
//! request and reused while both sides keep alive; when either side closes, so does the other.

mod body;
mod chunked;
mod decide;
mod error;
mod exchange;
mod head;
mod io;
mod reply;
mod response;
mod rewrite;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span, field};
use zmesh_http::{BodyFraming, Limits, Method, PathNormalization, RequestHead, Version};
use zmesh_id::SpiffeId;

use crate::admission::{Admission, Admitted, Edits, HttpAttributes, HttpProtocol, Refusal, Refuser};

pub(crate) use decide::XFCC;
pub use error::{ChunkError, L7Error, ResponseError, Side};
pub(crate) use rewrite::xfcc_value;

use decide::{Verdict, decide};
use exchange::{After, Scratch, exchange};
use head::{HeadEvent, next_head};
use io::Peer;
use reply::{LocalReply, Persistence, encode_denial, encode_refusal};
use response::RequestFacts;

/// Everything [`serve_http1`] needs to know about one downstream connection.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// What decides each request (token, external authorizer, policy, rate limits) for the
    /// destination workload, at one configuration version.
    pub admission: Arc<Admission>,
    /// This connection's view of the workload's local rate limits
    /// ([`Admission::connection_limits`]).
    pub rate_limits: Arc<[crate::ratelimit::LocalRateLimiter]>,
    /// The peer's verified mTLS identity; `None` for a plaintext peer.
    pub peer: Option<SpiffeId>,
    /// This workload's own identity, for the `By=` of `x-forwarded-client-cert`.
    pub local_identity: Option<SpiffeId>,
    /// The directly connected peer.
    pub source: SocketAddr,
    /// The workload address and port the requests are for.
    pub destination: SocketAddr,
    /// meshConfig `pathNormalization`.
    pub path_normalization: PathNormalization,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// Cancelled when the proxy drains: the connection ends before its next request.
    pub shutdown: CancellationToken,
}

/// How long each wait may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end (Envoy's `request_headers_timeout`);
    /// past it the client gets 408 and the connection closes. Bounds slow-header clients.
    pub header_read: Duration,
    /// How long nothing may arrive: between requests (then the connection closes quietly, like
    /// Envoy's `idle_timeout`), and within an exchange, from the client's body or the app's
    /// response (then 408, like Envoy's `stream_idle_timeout`). WebSocket tunnels have none.
    /// On HTTP/2 the connection is idle while it has no streams open; it is then sent a GOAWAY.
    pub idle: Duration,
    /// How long a new connection may wait for its first request (the first byte of its head on
    /// HTTP/1.1, its first stream on HTTP/2) before it closes like an idle one; when shorter
    /// than `idle`. Clients open connections to send requests, so one that sends nothing only
    /// holds a socket and a task.
    pub first_request: Duration,
    /// HTTP/2: how long after the GOAWAY (at the idle timeout or shutdown) a client that has no
    /// streams left may keep the connection open (Envoy's `drain_timeout`). Bounds clients that
    /// never answer the GOAWAY's PING, which hyper waits for before closing.
    pub drain: Duration,
    /// For connecting to the app; past it the client gets 503.
    pub upstream_connect: Duration,
}

impl Default for Timeouts {
    /// Envoy's HCM idle timeout (1 h) and drain timeout (5 s), and Istio's default cluster
    /// `connectTimeout` (10 s). Envoy has no header timeout by default; 10 s is zmesh's, to
    /// bound slowloris clients. Envoy has no first-request timeout either (an unused connection
    /// waits the idle hour); zmesh gives it 30 s: every HTTP and gRPC client sends its first
    /// request right after connecting, so 30 s leaves ample room for a slow or loaded client,
    /// while a connection that never sends one (a scanner, a stuck client, an attacker holding
    /// sockets) is gone after seconds rather than an hour. A pool's warmed connection that is
    /// closed unused is merely reopened.
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(3600),
            first_request: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            upstream_connect: Duration::from_secs(10),
        }
    }
}

impl Timeouts {
    /// How long a connection may wait for a request, having served `served` requests before.
    pub fn wait_for_request(&self, served: u64) -> Duration {
        if served == 0 { self.first_request.min(self.idle) } else { self.idle }
    }
}

/// What happened on one downstream connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Requests that began: forwarded, denied or rejected.
    pub requests: u64,
    /// Refused by admission: authorization (the RBAC 403), the token (401), the external
    /// authorizer or a rate limit.
    pub denied: u64,
    /// Refused before authorization: heads or paths that do not parse, refused upgrades and
    /// CONNECT, header-read timeouts.
    pub rejected: u64,
    pub bytes_from_downstream: u64,
    pub bytes_to_downstream: u64,
}

/// Serves the HTTP/1.1 requests of one downstream connection until the client or the app
/// closes, an error, or `ctx.shutdown` between requests.
///
/// `connect_upstream` opens a connection to the app; it is called at the first allowed request
/// (a connection that only carries denied requests never reaches the app).
///
/// Refused and denied requests are answered and counted, not errors. `Err` means the connection
/// ended abnormally (see [`L7Error::side`]); the client has been sent whatever reply Envoy would
/// have sent (503 when the app is unreachable, 502 for a malformed response, ...) when the
/// response had not started yet.
pub async fn serve_http1<D, U, F, Fut>(
    downstream: D,
    ctx: &ConnectionContext,
    connect_upstream: F,
) -> Result<ConnectionStats, L7Error>
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<U>>,
{
    let mut connection = Connection {
        ctx,
        client: Peer::new(downstream),
        app: None,
        connect_upstream,
        xfcc: rewrite::xfcc_value(ctx),
        upstream_head: Vec::new(),
        scratch: Scratch::default(),
        stats: ConnectionStats::default(),
    };
    let outcome = loop {
        let span = tracing::debug_span!("request", method = field::Empty, path = field::Empty, status = field::Empty);
        match connection.serve_request().instrument(span).await {
            Ok(Next::Continue) => connection.release_idle_buffers(),
            Ok(Next::Close) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    // The app first: it must not wait on a client that lingers.
    connection.app = None;
    connection.client.close_gracefully().await;
    let mut stats = connection.stats;
    stats.bytes_from_downstream = connection.client.reader.total;
    stats.bytes_to_downstream = connection.client.writer.total;
    outcome.map(|()| stats)
}

/// Whether the connection carries on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Continue,
    Close,
}

struct Connection<'c, D, U, F> {
    ctx: &'c ConnectionContext,
    client: Peer<D>,
    app: Option<Peer<U>>,
    connect_upstream: F,
    /// This connection's `x-forwarded-client-cert`, fixed by its peer.
    xfcc: Option<String>,
    upstream_head: Vec<u8>,
    scratch: Scratch,
    stats: ConnectionStats,
}

impl<D, U, F, Fut> Connection<'_, D, U, F>
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<U>>,
{
    /// Between requests a keep-alive connection may wait for minutes: give back the buffers a
    /// request grew (the next one borrows what it needs when its bytes arrive).
    fn release_idle_buffers(&mut self) {
        self.client.reader.release_if_empty();
        if let Some(app) = &mut self.app {
            app.reader.release_if_empty();
        }
        self.upstream_head = Vec::new();
        self.scratch = Scratch::default();
    }

    async fn serve_request(&mut self) -> Result<Next, L7Error> {
        let ctx = self.ctx;
        let wait = ctx.timeouts.wait_for_request(self.stats.requests);
        let event = next_head(&mut self.client.reader, self.app.as_mut(), ctx, wait).await?;
        if !matches!(event, HeadEvent::Done) {
            self.stats.requests += 1;
        }
        let head = match event {
            HeadEvent::Done => return Ok(Next::Close),
            HeadEvent::Invalid(error) => return self.reject(LocalReply::BadHead(error)).await,
            HeadEvent::TimedOut => return self.reject(LocalReply::HeaderTimeout).await,
            HeadEvent::Head(head) => head,
        };
        let span = Span::current();
        span.record("method", head.method.as_str());
        span.record("path", head.path_and_query().unwrap_or_default());

        let (path, websocket, connect) = match decide(&head, ctx) {
            Verdict::Refuse(refusal) => return self.reject(LocalReply::Refused(refusal)).await,
            Verdict::Admit { path, websocket } => (path, websocket, false),
            Verdict::Connect => (std::borrow::Cow::Borrowed(""), false, true),
        };
        // An authorizer that asks for the body gets it: read ahead (the bytes stay buffered
        // and go to the app as they would have), at most what the largest such provider takes.
        let body = match ctx.admission.body_limit() {
            Some(limit) if !matches!(head.body, BodyFraming::None | BodyFraming::ContentLength(0)) => {
                match self.read_ahead(head.body, limit).await {
                    Ok(body) => Some(body),
                    Err(error) => {
                        if let Some(reply) = LocalReply::for_error(&error) {
                            reply.encode(&mut self.scratch.to_client);
                            let _ = self.client.writer.send(&self.scratch.to_client).await;
                        }
                        return Err(error);
                    }
                }
            }
            _ => None,
        };
        let values = decide::header_values(&head);
        let headers = decide::header_pairs(&head, &values, self.xfcc.as_deref());
        // The parser has checked Host byte by byte (only authority bytes, so ASCII).
        let authority = head.authority().unwrap_or_default();
        let attributes = HttpAttributes {
            method: head.method.as_str(),
            authority: &authority,
            path: &path,
            original_path: head.path_and_query().unwrap_or_default(),
            headers: &headers,
            body: body.as_deref(),
            has_body: !matches!(head.body, BodyFraming::None | BodyFraming::ContentLength(0)),
            protocol: HttpProtocol::Http11,
        };
        match ctx.admission.admit(ctx, &attributes).await {
            Admitted::Refuse(refusal) => self.refuse(&head, refusal).await,
            Admitted::Forward(_) if connect => self.reject(LocalReply::NoRoute).await,
            Admitted::Forward(edits) => self.forward(&head, &path, websocket, &edits).await,
        }
    }

    /// Answers a request refused before authorization and closes, as Envoy does after a codec
    /// or connection-manager error.
    async fn reject(&mut self, reply: LocalReply) -> Result<Next, L7Error> {
        self.stats.rejected += 1;
        Span::current().record("status", reply.status());
        tracing::debug!(detail = reply.detail(), "request rejected");
        reply.encode(&mut self.scratch.to_client);
        self.client.writer.send(&self.scratch.to_client).await.map_err(L7Error::ClientWrite)?;
        Ok(Next::Close)
    }

    async fn refuse(&mut self, head: &RequestHead, refusal: Refusal) -> Result<Next, L7Error> {
        self.stats.denied += 1;
        Span::current().record("status", refusal.status);
        tracing::debug!(by = refusal.by.as_str(), status = refusal.status, "request refused");
        // The body is not read: it would be taken for the next request, and draining an
        // unauthorized client's bytes is not worth it. Close instead.
        let has_body = !matches!(head.body, BodyFraming::None | BodyFraming::ContentLength(0));
        let close = has_body || !head.keep_alive() || self.ctx.shutdown.is_cancelled();
        let persistence = Persistence::new(close, head.version == Version::Http10);
        let is_head = head.method == Method::Head;
        match &refusal.by {
            Refuser::Rbac(decided_by) => {
                encode_denial(decided_by.as_ref(), persistence, is_head, &mut self.scratch.to_client)
            }
            _ => encode_refusal(&refusal, persistence, is_head, &mut self.scratch.to_client),
        }
        self.client.writer.send(&self.scratch.to_client).await.map_err(L7Error::ClientWrite)?;
        Ok(if close { Next::Close } else { Next::Continue })
    }

    async fn forward(
        &mut self,
        head: &RequestHead,
        path: &str,
        websocket: bool,
        edits: &Edits,
    ) -> Result<Next, L7Error> {
        Span::current().record("path", path);
        let ctx = self.ctx;
        let app = match self.app {
            Some(ref mut app) => app,
            None => {
                let stream = match self.connect().await {
                    Ok(stream) => stream,
                    Err(error) => {
                        if let Some(reply) = LocalReply::for_error(&error) {
                            Span::current().record("status", reply.status());
                            reply.encode(&mut self.scratch.to_client);
                            // The client may be gone too; the connect error is the one to report.
                            let _ = self.client.writer.send(&self.scratch.to_client).await;
                        }
                        return Err(error);
                    }
                };
                self.app.insert(Peer::new(stream))
            }
        };
        rewrite::encode_upstream_head(head, path, websocket, self.xfcc.as_deref(), edits, &mut self.upstream_head);
        let request = RequestFacts {
            body: head.body,
            keep_alive: head.keep_alive(),
            http10: head.version == Version::Http10,
            is_head: head.method == Method::Head,
            websocket,
        };
        self.scratch.response_set.clone_from(&edits.response_set);
        match exchange(&mut self.client, app, &self.upstream_head, request, ctx, &mut self.scratch).await? {
            After::KeepAlive => Ok(Next::Continue),
            After::Close | After::Tunnelled => Ok(Next::Close),
        }
    }

    /// The start of the request body — all of it, or its first `limit` bytes — read ahead of
    /// the exchange without consuming it: the buffered bytes still go to the app as they came.
    /// Chunked coding is decoded from a copy of the buffered bytes.
    async fn read_ahead(&mut self, framing: BodyFraming, limit: usize) -> Result<Vec<u8>, L7Error> {
        let idle = self.ctx.timeouts.idle;
        let mut decoder = chunked::ChunkedBody::new(chunked::Output::Raw, self.ctx.limits.max_header_bytes);
        let (mut decoded, mut offset) = (Vec::new(), 0);
        loop {
            let buffered = &self.client.reader.buf[..];
            let complete = match framing {
                BodyFraming::ContentLength(length) => {
                    let want = usize::try_from(length).unwrap_or(usize::MAX).min(limit);
                    if buffered.len() >= want {
                        return Ok(buffered[..want].to_vec());
                    }
                    false
                }
                BodyFraming::Chunked => {
                    offset += decoder.transcode(&buffered[offset..], &mut decoded).map_err(L7Error::RequestBody)?;
                    decoder.is_done() || decoded.len() >= limit
                }
                BodyFraming::None => true,
            };
            if complete {
                decoded.truncate(limit);
                return Ok(decoded);
            }
            match self.client.reader.fill_within(idle).await {
                None => return Err(L7Error::ClientStalled { timeout: idle }),
                Some(Err(error)) => return Err(L7Error::ClientRead(error)),
                Some(Ok(0)) => return Err(L7Error::ClientClosedMidBody),
                Some(Ok(_)) => {}
            }
        }
    }

    async fn connect(&mut self) -> Result<U, L7Error> {
        let destination = self.ctx.destination;
        let timeout = self.ctx.timeouts.upstream_connect;
        match tokio::time::timeout(timeout, (self.connect_upstream)()).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(L7Error::Connect { destination, source }),
            Err(_) => Err(L7Error::ConnectTimeout { destination, timeout }),
        }
    }
}

#[cfg(test)]
mod tests;
