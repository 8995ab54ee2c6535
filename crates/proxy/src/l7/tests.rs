use tokio::io::DuplexStream;

use super::*;

fn context() -> ConnectionContext {
    ConnectionContext {
        policy: Arc::new(WorkloadPolicy::default()),
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
