//! One allowed request and its response, over an app connection.
//!
//! The request body and the response move at the same time: a client that sent
//! `Expect: 100-continue` waits for the app's `100` before sending its body, and an app may
//! answer (say 413) before reading the body at all. When the response ends first, the
//! connection closes after it, because the rest of the body would otherwise be read as the next
//! request (Envoy does the same).

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Buf as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use zmesh_http::BodyFraming;

use super::ConnectionContext;
use super::body::{CopyError, copy_chunked, copy_length, copy_until_close, fill, pipe};
use super::chunked::{ChunkedBody, Output};
use super::error::{L7Error, ResponseError, Side};
use super::io::{Peer, Reader, Writer};
use super::reply::LocalReply;
use super::response::{RequestFacts, ResponseBody, ResponseHead, ResponseKind, parse_response_head};

/// What the connection does after the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    KeepAlive,
    Close,
    /// The connection was upgraded, tunnelled and has ended.
    Tunnelled,
}

/// Scratch space reused across the requests of a connection, one per direction because both
/// directions run at once.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) to_app: Vec<u8>,
    pub(super) to_client: Vec<u8>,
    /// Headers admission sets on this request's response (an authorizer's
    /// `headersToDownstreamOnAllow`); usually empty.
    pub(super) response_set: Vec<(String, String)>,
}

/// Sends `upstream_head` and the request body to the app and relays its response. On an error
/// before the response started, the client has been sent the matching local reply.
pub(super) async fn exchange<D, U>(
    client: &mut Peer<D>,
    app: &mut Peer<U>,
    upstream_head: &[u8],
    request: RequestFacts,
    ctx: &ConnectionContext,
    scratch: &mut Scratch,
) -> Result<After, L7Error>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let progress = Progress {
        request_done: AtomicBool::new(matches!(request.body, BodyFraming::None | BodyFraming::ContentLength(0))),
        response_started: AtomicBool::new(false),
    };
    let result = match app.writer.send(upstream_head).await {
        Ok(()) => relay_both_ways(client, app, request, &progress, ctx, scratch).await,
        Err(error) => Err(L7Error::AppWrite(error)),
    };
    match result {
        Ok(After::Tunnelled) => tunnel(client, app, ctx).await.map(|()| After::Tunnelled),
        Ok(after) => Ok(after),
        Err(error) => {
            let response_started = progress.response_started.load(Ordering::Relaxed);
            if let Some(reply) = LocalReply::for_error(&error).filter(|_| !response_started) {
                reply.encode(&mut scratch.to_client);
                // The client may be gone too; the original error is the one worth reporting.
                let _ = client.writer.send(&scratch.to_client).await;
            }
            Err(error)
        }
    }
}

/// How far the two directions of an exchange have got; each direction runs in its own future.
#[derive(Debug)]
struct Progress {
    /// The whole request body has reached the app.
    request_done: AtomicBool,
    /// A final (or 101) head has gone to the client, so a local reply is no longer possible.
    /// Interim heads do not count: Envoy still answers with its own final response after them.
    response_started: AtomicBool,
}

async fn relay_both_ways<D, U>(
    client: &mut Peer<D>,
    app: &mut Peer<U>,
    request: RequestFacts,
    progress: &Progress,
    ctx: &ConnectionContext,
    scratch: &mut Scratch,
) -> Result<After, L7Error>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let idle = ctx.timeouts.idle;
    // Async blocks capture whole variables, so split the peers into the halves each direction uses.
    let Peer { reader: client_reader, writer: client_writer } = client;
    let Peer { reader: app_reader, writer: app_writer } = app;
    let Scratch { to_app, to_client, response_set } = scratch;
    let mut body = pin!(async {
        send_request_body(client_reader, app_writer, request.body, ctx, to_app).await?;
        progress.request_done.store(true, Ordering::Relaxed);
        Ok::<(), L7Error>(())
    });
    let mut response = pin!(relay_response(app_reader, client_writer, request, progress, ctx, to_client, response_set));
    let mut body_running = true;
    loop {
        tokio::select! {
            sent = &mut body, if body_running => {
                body_running = false;
                match sent {
                    Ok(()) => {}
                    // The app stopped reading (it may have answered early and closed); its
                    // response, if any, still goes to the client, and the connection closes.
                    Err(error) if error.side() == Side::Upstream => {
                        tracing::debug!(%error, "app stopped taking the request body");
                    }
                    Err(error) => return Err(error),
                }
            }
            relayed = &mut response => return relayed.map_err(|error| error.into_response_error(idle)),
        }
    }
}

async fn send_request_body<D, U>(
    client: &mut Reader<ReadHalf<D>>,
    app: &mut Writer<WriteHalf<U>>,
    framing: BodyFraming,
    ctx: &ConnectionContext,
    out: &mut Vec<u8>,
) -> Result<(), L7Error>
where
    D: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
{
    let idle = ctx.timeouts.idle;
    let copied = match framing {
        BodyFraming::None => Ok(()),
        BodyFraming::ContentLength(length) => copy_length(client, app, length, idle).await,
        BodyFraming::Chunked => {
            let body = ChunkedBody::new(Output::Chunked, ctx.limits.max_header_bytes);
            copy_chunked(client, app, body, idle, out).await
        }
    };
    copied.map_err(|error| error.into_request_error(idle))
}

/// Why relaying a response failed: a copy (whose side is known only by direction) or a
/// malformed head.
#[derive(Debug)]
enum RelayError {
    Copy(CopyError),
    Malformed(ResponseError),
}

impl RelayError {
    fn into_response_error(self, idle: std::time::Duration) -> L7Error {
        match self {
            Self::Copy(error) => error.into_response_error(idle),
            Self::Malformed(error) => L7Error::MalformedResponse(error),
        }
    }
}

impl From<CopyError> for RelayError {
    fn from(error: CopyError) -> Self {
        Self::Copy(error)
    }
}

/// Relays interim heads, then the final head and its body.
async fn relay_response<D, U>(
    app: &mut Reader<ReadHalf<U>>,
    client: &mut Writer<WriteHalf<D>>,
    request: RequestFacts,
    progress: &Progress,
    ctx: &ConnectionContext,
    out: &mut Vec<u8>,
    response_set: &[(String, String)],
) -> Result<After, RelayError>
where
    D: AsyncWrite + Unpin,
    U: AsyncRead + Unpin,
{
    let idle = ctx.timeouts.idle;
    loop {
        let head = read_response_head(app, request, &progress.request_done, ctx, out).await?;
        tracing::Span::current().record("status", head.status);
        if head.kind != ResponseKind::Interim {
            progress.response_started.store(true, Ordering::Relaxed);
        }
        if matches!(head.kind, ResponseKind::Final { .. }) && !response_set.is_empty() {
            super::response::set_headers(out, response_set);
        }
        let (mut body, close) = match head.kind {
            ResponseKind::Final { body, close } => (body, close),
            ResponseKind::Interim | ResponseKind::SwitchingProtocols => (ResponseBody::Empty, false),
        };
        if head.forward {
            // The head and the body bytes already read go out in one write: one HTTP/2 DATA
            // frame (or TCP segment) instead of two, which the client's side would relay to its
            // app as two writes, and the app would wake for twice.
            let buffered = match body {
                ResponseBody::Length(length) => usize::try_from(length).map_or(app.buf.len(), |l| l.min(app.buf.len())),
                ResponseBody::UntilClose => app.buf.len(),
                ResponseBody::Empty | ResponseBody::Chunked(_) => 0,
            };
            out.extend_from_slice(&app.buf[..buffered]);
            app.buf.advance(buffered);
            if let ResponseBody::Length(length) = &mut body {
                *length -= buffered as u64;
            }
            client.send(out).await.map_err(CopyError::Write)?;
        }
        match head.kind {
            ResponseKind::Interim => continue,
            ResponseKind::SwitchingProtocols => return Ok(After::Tunnelled),
            ResponseKind::Final { .. } => {}
        }
        match body {
            ResponseBody::Empty => {}
            ResponseBody::Length(length) => copy_length(app, client, length, idle).await?,
            ResponseBody::Chunked(output) => {
                let chunked = ChunkedBody::new(output, ctx.limits.max_header_bytes);
                copy_chunked(app, client, chunked, idle, out).await?;
            }
            ResponseBody::UntilClose => copy_until_close(app, client, idle).await?,
        }
        // Bytes after a complete response were never asked for: the app is not speaking
        // HTTP/1.1 as we understand it, so the connection cannot be trusted for another request.
        let close = close || !app.buf.is_empty();
        return Ok(if close { After::Close } else { After::KeepAlive });
    }
}

async fn read_response_head<U: AsyncRead + Unpin>(
    app: &mut Reader<ReadHalf<U>>,
    request: RequestFacts,
    request_done: &AtomicBool,
    ctx: &ConnectionContext,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, RelayError> {
    loop {
        if !app.buf.is_empty() {
            // Decided when the head is encoded: a response that starts before the request body
            // has ended closes the connection.
            let force_close = !request_done.load(Ordering::Relaxed) || ctx.shutdown.is_cancelled();
            let parsed =
                parse_response_head(&app.buf, request, force_close, &ctx.limits, out).map_err(RelayError::Malformed)?;
            if let Some(head) = parsed {
                app.buf.advance(head.consumed);
                return Ok(head);
            }
        }
        if fill(app, ctx.timeouts.idle).await? == 0 {
            return Err(CopyError::EndedEarly.into());
        }
    }
}

/// After a 101: raw bytes both ways (those already read first) until each side has closed
/// its half.
async fn tunnel<D, U>(client: &mut Peer<D>, app: &mut Peer<U>, ctx: &ConnectionContext) -> Result<(), L7Error>
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let idle = ctx.timeouts.idle;
    let Peer { reader: client_reader, writer: client_writer } = client;
    let Peer { reader: app_reader, writer: app_writer } = app;
    let upstream = async { pipe(client_reader, app_writer).await.map_err(|error| error.into_request_error(idle)) };
    let downstream = async { pipe(app_reader, client_writer).await.map_err(|error| error.into_response_error(idle)) };
    tokio::try_join!(upstream, downstream).map(|_| ())
}
