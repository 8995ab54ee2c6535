//! The two halves of a connection: a reader that keeps the bytes not consumed yet (the rest of
//! a body, a pipelined request) and a writer, both counting what crossed them.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

/// How much one read asks for. Bodies move through the buffer in pieces of about this size,
/// so a body of any length costs one buffer per direction.
const READ_CHUNK: usize = 16 * 1024;

/// After the proxy decides to close, it keeps reading (and discarding) for up to this long so
/// the client receives the last response instead of a reset caused by unread input. Envoy's
/// `delayed_close_timeout` default.
const DELAYED_CLOSE: Duration = Duration::from_secs(1);

/// One side of the proxied exchange: the client (downstream) or the app (upstream).
#[derive(Debug)]
pub(super) struct Peer<S> {
    pub(super) reader: Reader<ReadHalf<S>>,
    pub(super) writer: Writer<WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> Peer<S> {
    pub(super) fn new(stream: S) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self { reader: Reader { io: read, buf: BytesMut::new(), total: 0 }, writer: Writer { io: write, total: 0 } }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// Finish the last response (FIN), then drain what the peer still sends for a moment, so
    /// unread input does not turn the close into a reset that destroys that response.
    pub(super) async fn close_gracefully(&mut self) {
        if self.writer.io.shutdown().await.is_err() {
            return;
        }
        let drained = async {
            loop {
                self.reader.buf.clear();
                if !matches!(self.reader.fill().await, Ok(1..)) {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DELAYED_CLOSE, drained).await;
    }
}

#[derive(Debug)]
pub(super) struct Reader<R> {
    pub(super) io: R,
    /// Bytes read but not consumed yet.
    pub(super) buf: BytesMut,
    /// Bytes read in total.
    pub(super) total: u64,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads once more into `buf`; `Ok(0)` is end of stream. Cancel-safe: when the future is
    /// dropped before it completes, nothing was read.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.is_empty() {
            // Typically waiting for the next request of a keep-alive connection, which may take
            // minutes: wait holding no buffer, borrowing one only when bytes are there.
            self.buf = BytesMut::new();
            let buf = &mut self.buf;
            let io = &mut self.io;
            let read =
                std::future::poll_fn(|cx| crate::splice::poll_read_pooled(std::pin::Pin::new(&mut *io), cx, buf))
                    .await?;
            self.total += read as u64;
            return Ok(read);
        }
        self.buf.reserve(READ_CHUNK);
        let read = self.io.read_buf(&mut self.buf).await?;
        self.total += read as u64;
        Ok(read)
    }

    /// Drop the buffer's capacity when nothing is buffered.
    pub(super) fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// [`fill`](Self::fill), or `None` when nothing arrives within `timeout`.
    pub(super) async fn fill_within(&mut self, timeout: Duration) -> Option<io::Result<usize>> {
        tokio::time::timeout(timeout, self.fill()).await.ok()
    }
}

#[derive(Debug)]
pub(super) struct Writer<W> {
    pub(super) io: W,
    /// Bytes written in total.
    pub(super) total: u64,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes and flushes: the stream may be TLS, which holds records until flushed, and a
    /// streamed response must not stall in a buffer while the proxy waits for more.
    pub(super) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.total += bytes.len() as u64;
        self.io.flush().await
    }
}
