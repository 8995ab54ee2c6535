use tokio::io::DuplexStream;

use super::*;

/// The proxy spawns one task per connection, so the connection future must be `Send`.
#[test]
fn serving_a_connection_is_a_send_future() {
    fn assert_send<T: Send>(_: &T) {}
    let ctx = ConnectionContext {
        policy: Arc::new(WorkloadPolicy::default()),
        peer: None,
        local_identity: None,
        source: "127.0.0.1:1".parse().expect("address"),
        destination: "127.0.0.1:2".parse().expect("address"),
        path_normalization: PathNormalization::Base,
        limits: Limits::default(),
        timeouts: Timeouts::default(),
        shutdown: CancellationToken::new(),
    };
    let (downstream, _) = tokio::io::duplex(1);
    let future = serve_http1(downstream, &ctx, || async { Ok::<DuplexStream, std::io::Error>(tokio::io::duplex(1).0) });
    assert_send(&future);
}
