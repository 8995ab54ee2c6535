//! Keeps the TLS error that broke a client connection.
//!
//! In TLS 1.3 the server checks the client's certificate after the client's side of the
//! handshake has completed, so a refusal arrives as an alert on the first read, deep inside
//! HTTP/2, where hyper reports only a connection error (h2's error hides its I/O cause from
//! `source()`). Watching the stream below HTTP/2 keeps the TLS cause so that `connect` can say
//! "the peer refused our certificate" instead of "HTTP/2 failed".

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first TLS failure seen on a connection, described for an operator.
pub(crate) type TlsFailure = Arc<OnceLock<String>>;

#[derive(Debug)]
pub(crate) struct TlsWatch<S> {
    inner: S,
    failure: TlsFailure,
}

impl<S> TlsWatch<S> {
    pub(crate) fn new(inner: S) -> (Self, TlsFailure) {
        let failure = TlsFailure::default();
        (Self { inner, failure: Arc::clone(&failure) }, failure)
    }

    fn observe<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(error)) = &result
            && let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            let _ = self.failure.set(describe(tls));
        }
        result
    }
}

/// What a failed handshake says, and whether this crate's verifier refused the peer (`Peer`) or
/// this proxy's own certificate state is at fault (`Local`); `None` when neither is known.
pub(crate) fn explain_handshake(error: &io::Error) -> (String, Option<zmesh_tls::Side>) {
    if let Some(tls) = zmesh_tls::TlsError::find_in_io(error) {
        return (tls.to_string(), Some(tls.side()));
    }
    match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls_error) => (describe(rustls_error), None),
        None => (error.to_string(), None),
    }
}

/// An alert means the peer refused; its log holds the reason, which never crosses the wire.
fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::AlertReceived(alert) => {
            format!(
                "the peer refused this proxy's certificate or the handshake (TLS alert {alert:?}); its log says why"
            )
        }
        other => other.to_string(),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TlsWatch<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.observe(result)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TlsWatch<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.observe(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.observe(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.observe(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
