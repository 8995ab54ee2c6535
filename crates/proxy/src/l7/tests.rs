use tokio::io::DuplexStream;

use super::*;

fn context() -> ConnectionContext {
    ConnectionContext {
        admission: Arc::new(crate::admission::Admission::policy_only(
            Arc::new(zmesh_policy::WorkloadPolicy::default()),
        )),
        rate_limits: Arc::from([]),
        peer: None,
        local_identity: None,
        source: "127.0.0.1:1".parse().expect("address"),
        destination: "127.0.0.1:2".parse().expect("address"),
        path_normalization: PathNormalization::Base,
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        shutdown: CancellationToken::new(),
    }
}

/// The proxy spawns one task per connection: the future must be `Send`, and it is held for
/// the connection's whole life, so it must stay small (buffers live on the heap, and the
/// response parser's header array only on the stack of a synchronous call).
#[test]
fn serving_a_connection_is_a_small_send_future() {
    fn assert_send<T: Send>(_: &T) {}
    let ctx = context();
    let (downstream, _) = tokio::io::duplex(1);
    let future = serve_http1(downstream, &ctx, || async { Ok::<DuplexStream, std::io::Error>(tokio::io::duplex(1).0) });
    assert_send(&future);
    // 2.3 KB in a debug build today.
    assert!(
        std::mem::size_of_val(&future) <= 4096,
        "the connection future grew to {} bytes",
        std::mem::size_of_val(&future)
    );
}

/// The client's end of a connection, counting the writes that reach it.
struct CountedWrites {
    inner: DuplexStream,
    writes: Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for CountedWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(1..))) {
            self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        written
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response read from the app in one piece leaves in one write: through a tunnel, one HTTP/2
/// DATA frame, which the client's proxy passes on to its app in one write too.
#[tokio::test]
async fn a_response_read_whole_is_written_to_the_client_in_one_write() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ctx = context();
    let (client, proxy_side) = tokio::io::duplex(64 * 1024);
    let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let downstream = CountedWrites { inner: proxy_side, writes: Arc::clone(&writes) };
    let (app, app_side) = tokio::io::duplex(64 * 1024);
    let mut app_side = Some(app_side);
    let app_task = tokio::spawn(async move {
        let mut app = app;
        let mut request = vec![0u8; 1024];
        let read = app.read(&mut request).await.expect("the request reaches the app");
        assert!(request[..read].starts_with(b"GET /one HTTP/1.1\r\n"));
        app.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await.expect("respond");
        app
    });
    let client_task = tokio::spawn(async move {
        let mut client = client;
        client.write_all(b"GET /one HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n").await.expect("request");
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.expect("response");
        response
    });
    let served = serve_http1(downstream, &ctx, || {
        let app = app_side.take();
        async move { app.ok_or_else(|| std::io::Error::other("one app connection only")) }
    });
    served.await.expect("the exchange completes");
    let response = client_task.await.expect("client");
    let _app = app_task.await.expect("app");
    assert!(response.ends_with(b"\r\n\r\nhello"), "{}", String::from_utf8_lossy(&response));
    assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1, "head and body in one write");
}
