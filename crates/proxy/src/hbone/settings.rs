//! HTTP/2 settings shared by both ends of an HBONE connection.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Flow-control windows and keep-alive. The windows are the memory bound of a connection: a
/// tunnel holds at most `stream_window` bytes its reader has not taken, a connection at most
/// `connection_window` across all its tunnels, and a full window stops the sender (backpressure
/// to the app) rather than growing a queue.
#[derive(Clone, Debug)]
pub struct Http2Settings {
    /// Per tunnel. One tunnel's throughput is at most this per round trip, so the RFC default of
    /// 64 KiB would cap a 1 ms link at ~64 MB/s; 4 MiB does not stall bulk transfers.
    pub stream_window: u32,
    /// Per connection, shared by its tunnels; a few stream windows so that one busy tunnel
    /// cannot starve the others.
    pub connection_window: u32,
    /// How often to ping the peer to detect a dead connection (and keep NAT state alive).
    pub keep_alive_interval: Duration,
    /// How long to wait for a ping's answer before closing the connection and its tunnels.
    pub keep_alive_timeout: Duration,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

impl Http2Settings {
    pub(crate) fn server(&self, max_streams: u32) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_concurrent_streams(max_streams)
            .keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            // Tunnel responses are consumed by proxies, not people: no Date header to format.
            .auto_date_header(false);
        builder
    }

    pub(crate) fn client(&self) -> hyper::client::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            // A pooled connection is meant to be ready: find out it died before a tunnel needs it.
            .keep_alive_while_idle(true);
        builder
    }
}
