//! Fetching the JWK sets of RequestAuthentication `jwksUri`s, in the proxy.
//!
//! Istio's istiod fetches every jwksUri and inlines the keys into the configuration it pushes.
//! zmesh fetches in each proxy instead: a key rotation reaches the proxy without a control-plane
//! round trip (and an unknown `kid` refreshes at once); each proxy keeps its last good keys
//! through an issuer's or the control plane's outage; and the control plane never needs egress
//! to the internet. The cost, one fetch per proxy per 20 minutes per issuer, is small.
//!
//! Fetches go over http or https (rustls, with the roots of the `ClientConfig` given), with the
//! rule's timeout (5 s by default, as Istio), a 1 MiB response cap, and no redirects: a 3xx is
//! a failure, because following one would let whoever answers the first URL choose where keys
//! come from. A URI never fetched successfully has no key set, so its tokens fail closed (401).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zmesh_jwt::{InlineKeySets, KeySet, KeySource};
use zmesh_policy::set::JwtRules;

/// Timings and limits of the fetcher; the defaults are Istio's where Istio has one.
#[derive(Debug, Clone)]
pub struct JwksOptions {
    /// How often a key set is fetched again (Istio's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL).
    pub refresh: Duration,
    /// The first retry after a failure; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// An unknown `kid` forces a fetch at most this often per URI.
    pub unknown_kid_interval: Duration,
    /// A rule without `timeout` gets this one.
    pub default_timeout: Duration,
    /// Larger responses are refused.
    pub max_size: usize,
    /// Failures of one URI are logged at most this often.
    pub log_interval: Duration,
    /// Mark the proxy's connections so transparent capture lets them pass.
    pub marked: bool,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            refresh: Duration::from_secs(20 * 60),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            unknown_kid_interval: Duration::from_secs(30),
            default_timeout: Duration::from_secs(5),
            max_size: 1 << 20,
            log_interval: Duration::from_secs(60),
            marked: false,
        }
    }
}

#[derive(Debug)]
struct UriState {
    /// The last good key set and the digest of the document it came from.
    keys: Option<(Arc<KeySet>, [u8; 32])>,
    timeout: Duration,
    refresh_now: Arc<Notify>,
    last_forced: Option<Instant>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    tls: Arc<rustls::ClientConfig>,
    options: JwksOptions,
    uris: RwLock<HashMap<String, UriState>>,
    inline: InlineKeySets,
    generation: AtomicU64,
    fetches: AtomicU64,
}

/// The key sets of every `jwksUri` in force, kept fresh in the background; the proxy's
/// [`KeySource`].
#[derive(Debug)]
pub struct JwksCache {
    shared: Arc<Shared>,
    /// Serializes `watch` calls so two configuration updates cannot race on the task set.
    watching: Mutex<()>,
}

impl Drop for JwksCache {
    fn drop(&mut self) {
        for state in self.shared.uris.read().unwrap_or_else(std::sync::PoisonError::into_inner).values() {
            state.task.abort();
        }
    }
}

impl KeySource for JwksCache {
    fn key_set(&self, rules: &Arc<JwtRules>, index: usize) -> Option<Arc<KeySet>> {
        let rule = rules.rules.get(index)?;
        if rule.jwks.is_some() {
            return self.shared.inline.get(rules, index);
        }
        let uri = rule.jwks_uri.as_ref()?;
        self.shared.read().get(uri).and_then(|state| state.keys.as_ref().map(|(keys, _)| keys.clone()))
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, UriState>> {
        self.uris.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, UriState>> {
        self.uris.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl JwksCache {
    /// `tls` verifies https servers (build it with the web PKI roots, or the mesh's own).
    pub fn new(tls: Arc<rustls::ClientConfig>, options: JwksOptions) -> JwksCache {
        JwksCache {
            shared: Arc::new(Shared {
                tls,
                options,
                uris: RwLock::new(HashMap::new()),
                inline: InlineKeySets::default(),
                generation: AtomicU64::new(0),
                fetches: AtomicU64::new(0),
            }),
            watching: Mutex::new(()),
        }
    }

    /// Fetch and keep fresh exactly these URIs (each with its rule's timeout): new ones start
    /// fetching, dropped ones stop and forget their keys. Call within a tokio runtime, on
    /// every configuration change.
    pub fn watch(&self, uris: impl IntoIterator<Item = (String, Option<Duration>)>) {
        let _serial = self.watching.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let wanted: HashMap<String, Duration> = uris
            .into_iter()
            .map(|(uri, timeout)| (uri, timeout.unwrap_or(self.shared.options.default_timeout)))
            .collect();
        let mut states = self.shared.write();
        states.retain(|uri, state| {
            let keep = wanted.contains_key(uri);
            if !keep {
                state.task.abort();
            }
            keep
        });
        for (uri, timeout) in wanted {
            if let Some(state) = states.get_mut(&uri) {
                state.timeout = timeout;
                continue;
            }
            let refresh_now = Arc::new(Notify::new());
            let task = tokio::spawn(keep_fresh(Arc::downgrade(&self.shared), uri.clone(), refresh_now.clone()));
            states.insert(uri, UriState { keys: None, timeout, refresh_now, last_forced: None, task });
        }
    }

    /// A token named a `kid` the set of `uri` lacks: the issuer may have rotated its keys, so
    /// fetch again now, unless that was done within the last `unknown_kid_interval`.
    pub fn unknown_kid(&self, uri: &str) {
        let mut states = self.shared.write();
        let Some(state) = states.get_mut(uri) else { return };
        let now = Instant::now();
        if state.last_forced.is_some_and(|at| now.duration_since(at) < self.shared.options.unknown_kid_interval) {
            return;
        }
        state.last_forced = Some(now);
        state.refresh_now.notify_one();
    }

    /// Bumped whenever some URI's key set changes.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    /// Fetch attempts so far (successful or not).
    pub fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }
}

/// Fetch `uri` now, then every `refresh`, retrying failures with a doubling backoff, until the
/// cache is dropped or stops watching the URI.
async fn keep_fresh(shared: Weak<Shared>, uri: String, refresh_now: Arc<Notify>) {
    let mut backoff = None::<Duration>;
    let mut last_logged = None::<Instant>;
    let mut suppressed = 0u64;
    loop {
        let Some(cache) = shared.upgrade() else { return };
        let Some(timeout) = cache.read().get(&uri).map(|s| s.timeout) else { return };
        cache.fetches.fetch_add(1, Ordering::Relaxed);
        let options = cache.options.clone();
        let outcome = match fetch(&cache.tls, &uri, timeout, &options).await {
            Ok(document) => store(&cache, &uri, &document),
            Err(reason) => Err(reason),
        };
        let wait = match outcome {
            Ok(()) => {
                backoff = None;
                options.refresh
            }
            Err(reason) => {
                let kept = cache.read().get(&uri).is_some_and(|s| s.keys.is_some());
                let now = Instant::now();
                if last_logged.is_none_or(|at| now.duration_since(at) >= options.log_interval) {
                    tracing::warn!(
                        uri = %uri,
                        reason = %reason,
                        suppressed,
                        "JWKS fetch failed; {}",
                        if kept { "keeping the last good key set" } else { "tokens for this key set are refused until a fetch succeeds" }
                    );
                    last_logged = Some(now);
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                let next = backoff.map_or(options.min_backoff, |b| (b * 2).min(options.max_backoff));
                backoff = Some(next);
                next
            }
        };
        drop(cache);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = refresh_now.notified() => {}
        }
    }
}

/// Keep a new key set; an unchanged document keeps the current set (and its cached tokens).
/// A document that gives no key set is a failed fetch.
fn store(cache: &Shared, uri: &str, document: &[u8]) -> Result<(), String> {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, document).as_ref());
    if cache.read().get(uri).and_then(|s| s.keys.as_ref()).is_some_and(|(_, old)| *old == digest) {
        return Ok(());
    }
    let keys = KeySet::from_json(document).map_err(|error| format!("the document is refused: {error}"))?;
    for skipped in keys.skipped() {
        tracing::warn!(uri = %uri, index = skipped.index, kid = ?skipped.kid, reason = %skipped.reason, "JWKS key skipped");
    }
    if let Some(state) = cache.write().get_mut(uri) {
        state.keys = Some((Arc::new(keys), digest));
        cache.generation.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// GET `uri` and return the body of a 200 answer of at most `max_size` bytes, or why not.
async fn fetch(
    tls: &Arc<rustls::ClientConfig>,
    uri: &str,
    timeout: Duration,
    options: &JwksOptions,
) -> Result<Bytes, String> {
    match tokio::time::timeout(timeout, fetch_inner(tls, uri, options)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no complete answer within {timeout:?}")),
    }
}

async fn fetch_inner(tls: &Arc<rustls::ClientConfig>, uri: &str, options: &JwksOptions) -> Result<Bytes, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("not a valid URL: {e}"))?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("only http and https URLs are fetched".to_owned()),
    };
    let host = parsed.host().ok_or("the URL has no host")?.to_owned();
    let bare_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let address = match bare_host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => crate::net::lookup(&bare_host, port).await.map_err(|e| format!("DNS lookup of {bare_host}: {e}"))?[0],
    };
    let stream =
        crate::net::connect(address, options.marked).await.map_err(|e| format!("connect to {address}: {e}"))?;
    let authority = parsed.authority().map(|a| a.as_str().to_owned()).unwrap_or(host);
    let path = parsed.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "zmesh-proxy")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = if https {
        let name = rustls::pki_types::ServerName::try_from(bare_host.clone())
            .map_err(|e| format!("`{bare_host}` is not a valid TLS server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {bare_host}: {e}"))?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(stream), request).await?
    };
    let status = response.status();
    if status.is_redirection() {
        let to = response.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("?");
        return Err(format!(
            "status {status} redirecting to {to}; redirects are not followed, configure the final URL"
        ));
    }
    if status != http::StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if let Some(length) =
        response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && length > options.max_size as u64
    {
        return Err(format!("the document is {length} bytes, more than the {} allowed", options.max_size));
    }
    Limited::new(response.into_body(), options.max_size)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|e| format!("reading the document (at most {} bytes): {e}", options.max_size))
}

async fn send<IO>(
    io: TokioIo<IO>,
    request: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection is driven until the response body is read; it ends with the request.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.map_err(|e| format!("HTTP request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    /// What the test server answers, changed by the test as it goes.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        body: Vec<u8>,
        location: Option<String>,
    }

    struct Server {
        uri: String,
        answer: Arc<Mutex<Answer>>,
        hits: Arc<AtomicUsize>,
        task: JoinHandle<()>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        async fn start(status: u16, body: Vec<u8>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let uri = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
            let answer = Arc::new(Mutex::new(Answer { status, body, location: None }));
            let hits = Arc::new(AtomicUsize::new(0));
            let (a, h) = (answer.clone(), hits.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    let (a, h) = (a.clone(), h.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |_request| {
                            h.fetch_add(1, Ordering::SeqCst);
                            let answer = a.lock().unwrap();
                            let mut response = http::Response::builder().status(answer.status);
                            if let Some(location) = &answer.location {
                                response = response.header("location", location);
                            }
                            let response = response.body(Full::new(Bytes::from(answer.body.clone()))).unwrap();
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            Server { uri, answer, hits, task }
        }

        fn answer(&self, status: u16, body: Vec<u8>) {
            *self.answer.lock().unwrap() = Answer { status, body, location: None };
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// An Ed25519 JWKS document with one key per kid (the key bytes differ per kid).
    fn jwks(kids: &[&str]) -> Vec<u8> {
        // base64url of 32 bytes of 1, 2 and 3.
        const X: [&str; 3] = [
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE",
            "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
            "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM",
        ];
        let keys: Vec<serde_json::Value> = kids
            .iter()
            .zip(X)
            .map(|(kid, x)| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid}))
            .collect();
        serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap()
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    fn cache(options: JwksOptions) -> JwksCache {
        JwksCache::new(tls(), options)
    }

    fn rules(uri: &str) -> Arc<JwtRules> {
        let mut rule = zmesh_config::authn::JwtRule {
            pos: Default::default(),
            issuer: "https://issuer.example.com".to_owned(),
            audiences: Vec::new(),
            jwks_uri: Some(uri.to_owned()),
            jwks: None,
            from_headers: Vec::new(),
            from_params: Vec::new(),
            from_cookies: Vec::new(),
            output_payload_to_header: None,
            forward_original_token: false,
            output_claim_to_headers: Vec::new(),
            timeout: None,
            space_delimited_claims: Vec::new(),
        };
        rule.jwks_uri = Some(uri.to_owned());
        Arc::new(JwtRules { policy: "foo/jwt".into(), rules: vec![rule] })
    }

    fn kids(cache: &JwksCache, rules: &Arc<JwtRules>) -> Option<Vec<String>> {
        cache.key_set(rules, 0).map(|set| set.keys().iter().filter_map(|k| k.kid.clone()).collect())
    }

    /// Wait (in test time) until `done`, for at most `limit` steps of 10 ms.
    async fn until(limit: usize, mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..limit {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_fetch_gives_the_key_set() {
        let server = Server::start(200, jwks(&["a"])).await;
        let cache = cache(JwksOptions::default());
        let rules = rules(&server.uri);
        assert_eq!(kids(&cache, &rules), None, "not watched yet");
        cache.watch([(server.uri.clone(), None)]);
        assert!(until(500, || kids(&cache, &rules).is_some()).await);
        assert_eq!(kids(&cache, &rules), Some(vec!["a".to_owned()]));
        assert_eq!(cache.generation(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_uri_never_fetched_has_no_key_set() {
        let cache = cache(JwksOptions::default());
        let rules = rules("http://127.0.0.1:1/jwks");
        cache.watch([("http://127.0.0.1:1/jwks".to_owned(), None)]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(kids(&cache, &rules), None);
        assert!(cache.fetches() >= 2, "failures are retried");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_kid_refreshes_at_most_once_per_interval() {
        let server = Server::start(200, jwks(&["a"])).await;
        let cache = cache(JwksOptions::default());
        let rules = rules(&server.uri);
        cache.watch([(server.uri.clone(), None)]);
        assert!(until(500, || kids(&cache, &rules).is_some()).await);
        server.answer(200, jwks(&["a", "b"]));
        cache.unknown_kid(&server.uri);
        assert!(until(500, || kids(&cache, &rules) == Some(vec!["a".to_owned(), "b".to_owned()])).await);
        assert_eq!(server.hits(), 2);

        server.answer(200, jwks(&["c"]));
        cache.unknown_kid(&server.uri);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(server.hits(), 2, "a second unknown kid within 30 s does not fetch");
        tokio::time::sleep(Duration::from_secs(26)).await;
        cache.unknown_kid(&server.uri);
        assert!(until(500, || kids(&cache, &rules) == Some(vec!["c".to_owned()])).await);
        assert_eq!(server.hits(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn key_sets_are_refetched_every_twenty_minutes() {
        let server = Server::start(200, jwks(&["a"])).await;
        let cache = cache(JwksOptions::default());
        cache.watch([(server.uri.clone(), None)]);
        assert!(until(500, || server.hits() == 1).await);
        tokio::time::sleep(Duration::from_secs(19 * 60)).await;
        assert_eq!(server.hits(), 1);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(until(500, || server.hits() == 2).await);
        let generation = cache.generation();
        assert_eq!(generation, 1, "an unchanged document keeps the same key set");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_good_key_set_is_kept_while_the_server_fails_and_retries_back_off() {
        let server = Server::start(200, jwks(&["a"])).await;
        let cache = cache(JwksOptions::default());
        let rules = rules(&server.uri);
        cache.watch([(server.uri.clone(), None)]);
        assert!(until(500, || kids(&cache, &rules).is_some()).await);
        server.answer(503, b"down".to_vec());
        tokio::time::sleep(Duration::from_secs(20 * 60 - 1)).await;
        assert_eq!(server.hits(), 1);
        assert!(until(500, || server.hits() == 2).await);
        assert_eq!(kids(&cache, &rules), Some(vec!["a".to_owned()]));
        // Retries after 1, 2, 4, 8, 16 s: five more within 31 s (and not a sixth before 63 s).
        tokio::time::sleep(Duration::from_millis(31_500)).await;
        assert_eq!(server.hits(), 7);
        assert_eq!(kids(&cache, &rules), Some(vec!["a".to_owned()]));
        // A document that gives no key set is a failure too: kept keys, and the backoff goes on.
        server.answer(200, b"{\"keys\": 5}".to_vec());
        tokio::time::sleep(Duration::from_secs(32)).await;
        assert_eq!(server.hits(), 8);
        assert_eq!(kids(&cache, &rules), Some(vec!["a".to_owned()]), "an invalid document is refused");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(server.hits(), 9, "the retry after 60 s (the backoff's ceiling)");
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_invalid_and_redirected_documents_are_refused() {
        let options = JwksOptions { max_size: 64, ..JwksOptions::default() };
        let tls = tls();
        let server = Server::start(200, jwks(&["a", "b", "c"])).await;
        let error = fetch(&tls, &server.uri, Duration::from_secs(5), &options).await.unwrap_err();
        assert!(error.contains("more than the 64 allowed"), "{error}");

        server.answer(200, b"not json".to_vec());
        let cache = cache(JwksOptions::default());
        let rules = rules(&server.uri);
        cache.watch([(server.uri.clone(), None)]);
        assert!(until(500, || server.hits() >= 2).await);
        assert_eq!(kids(&cache, &rules), None);

        *server.answer.lock().unwrap() =
            Answer { status: 302, body: Vec::new(), location: Some("http://elsewhere/jwks".to_owned()) };
        let error = fetch(&tls, &server.uri, Duration::from_secs(5), &JwksOptions::default()).await.unwrap_err();
        assert!(error.contains("redirects are not followed"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_uri_no_longer_watched_stops_and_forgets_its_keys() {
        let server = Server::start(200, jwks(&["a"])).await;
        let cache = cache(JwksOptions::default());
        let rules = rules(&server.uri);
        cache.watch([(server.uri.clone(), Some(Duration::from_secs(1)))]);
        assert!(until(500, || kids(&cache, &rules).is_some()).await);
        cache.watch([]);
        assert_eq!(kids(&cache, &rules), None);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(server.hits(), 1);
    }
}
