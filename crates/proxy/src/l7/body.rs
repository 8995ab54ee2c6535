//! Copying a message body from one peer to the other by its framing, through the reader's
//! bounded buffer: a body of any size costs one buffer, never the whole body.

use std::io;
use std::time::Duration;

use bytes::Buf as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::chunked::ChunkedBody;
use super::error::{ChunkError, L7Error};
use super::io::{Reader, Writer};

/// A copy failed; which side that is depends on the direction (see the `into_*` methods).
#[derive(Debug)]
pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// The sender closed before the body ended.
    EndedEarly,
    /// The sender sent nothing for the idle timeout.
    Stalled,
    Chunked(ChunkError),
}

impl CopyError {
    /// For a request body, client → app.
    pub(super) fn into_request_error(self, idle: Duration) -> L7Error {
        match self {
            Self::Read(error) => L7Error::ClientRead(error),
            Self::Write(error) => L7Error::AppWrite(error),
            Self::EndedEarly => L7Error::ClientClosedMidBody,
            Self::Stalled => L7Error::ClientStalled { timeout: idle },
            Self::Chunked(error) => L7Error::RequestBody(error),
        }
    }

    /// For a response, app → client.
    pub(super) fn into_response_error(self, idle: Duration) -> L7Error {
        match self {
            Self::Read(error) => L7Error::AppRead(error),
            Self::Write(error) => L7Error::ClientWrite(error),
            Self::EndedEarly => L7Error::AppClosedEarly,
            Self::Stalled => L7Error::AppStalled { timeout: idle },
            Self::Chunked(error) => L7Error::ResponseBody(error),
        }
    }
}

/// Reads more into `from`'s buffer; `Ok(0)` at end of stream.
pub(super) async fn fill<R: AsyncRead + Unpin>(from: &mut Reader<R>, idle: Duration) -> Result<usize, CopyError> {
    match from.fill_within(idle).await {
        Some(read) => read.map_err(CopyError::Read),
        None => Err(CopyError::Stalled),
    }
}

/// Exactly `length` bytes.
pub(super) async fn copy_length<R, W>(
    from: &mut Reader<R>,
    to: &mut Writer<W>,
    mut length: u64,
    idle: Duration,
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while length > 0 {
        if from.buf.is_empty() && fill(from, idle).await? == 0 {
            return Err(CopyError::EndedEarly);
        }
        let take = usize::try_from(length).map_or(from.buf.len(), |length| length.min(from.buf.len()));
        to.send(&from.buf[..take]).await.map_err(CopyError::Write)?;
        from.buf.advance(take);
        length -= take as u64;
    }
    Ok(())
}

/// A chunked body, re-encoded by `body` (see [`ChunkedBody`]); `out` is scratch space.
pub(super) async fn copy_chunked<R, W>(
    from: &mut Reader<R>,
    to: &mut Writer<W>,
    mut body: ChunkedBody,
    idle: Duration,
    out: &mut Vec<u8>,
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        out.clear();
        let consumed = body.transcode(&from.buf, out).map_err(CopyError::Chunked)?;
        from.buf.advance(consumed);
        if !out.is_empty() {
            to.send(out).await.map_err(CopyError::Write)?;
        }
        if body.is_done() {
            return Ok(());
        }
        if fill(from, idle).await? == 0 {
            return Err(CopyError::EndedEarly);
        }
    }
}

/// Everything until the sender closes.
pub(super) async fn copy_until_close<R, W>(
    from: &mut Reader<R>,
    to: &mut Writer<W>,
    idle: Duration,
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !from.buf.is_empty() {
            to.send(&from.buf).await.map_err(CopyError::Write)?;
            from.buf.clear();
        }
        if fill(from, idle).await? == 0 {
            return Ok(());
        }
    }
}

/// One direction of a tunnel: everything until the sender closes, with no idle limit (a
/// WebSocket may be quiet for long), then a close of the receiver's write half.
pub(super) async fn pipe<R, W>(from: &mut Reader<R>, to: &mut Writer<W>) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        if !from.buf.is_empty() {
            to.send(&from.buf).await.map_err(CopyError::Write)?;
            from.buf.clear();
        }
        if from.fill().await.map_err(CopyError::Read)? == 0 {
            return to.io.shutdown().await.map_err(CopyError::Write);
        }
    }
}
