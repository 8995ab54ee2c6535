//! Local rate limiting on the inbound HTTP path, as Envoy's `envoy.filters.http.local_ratelimit`
//! does it for an Istio sidecar configured by an EnvoyFilter.
//!
//! Flow: at each configuration version, [`limiters_for`] picks the EnvoyFilters that apply to
//! the workload (Istio's selection and order) and builds one [`LocalRateLimiter`] per filter;
//! at each connection [`LocalRateLimiter::for_connection`] gives the connection its limiter
//! (a fresh bucket when the filter limits per connection); at each request
//! [`LocalRateLimiter::check`] decides, in O(1) with one short lock.
//!
//! Per request, as Envoy: the request is sampled against `filter_enabled` (Envoy's default is
//! 0%: absent means the filter looks at nothing); an enabled request takes a token (`ok`) or
//! finds none (`rate_limited`); a request without a token is refused only when it is also
//! sampled into `filter_enforced` (`enforced`), otherwise it goes on (shadow mode). Refused
//! requests get the configured status (429 by default), body `local_rate_limited`,
//! `x-envoy-ratelimited: true` and the configured `response_headers_to_add`. Envoy sets no
//! `x-local-rate-limit` header itself: that one exists only when configured, as in Istio's
//! example.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use zmesh_config::Config;
use zmesh_config::networking::{
    FilterPosition, HeaderAppend, HeaderToAdd, LocalRateLimit, RateLimitFilter, TokenBucket,
};

/// The body of a refused request, as Envoy writes it.
pub const RATE_LIMITED_BODY: &str = "local_rate_limited";

/// Uniform random numbers for sampling `filter_enabled` and `filter_enforced`; a parameter so
/// that tests are deterministic.
pub trait RandomSource: Send + Sync + std::fmt::Debug {
    fn next_u64(&self) -> u64;
}

/// SplitMix64 over an atomic counter: lock-free and evenly spread, enough for sampling
/// percentages (never for secrets). Seed it once per process from a real random source.
#[derive(Debug)]
pub struct SplitMix64 {
    state: AtomicU64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: AtomicU64::new(seed) }
    }
}

impl RandomSource for SplitMix64 {
    fn next_u64(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self.state.fetch_add(GAMMA, Ordering::Relaxed).wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Envoy's counters for one filter (`<stat_prefix>.http_local_rate_limit.<name>`).
#[derive(Debug, Default)]
pub struct RateLimitStats {
    /// Requests sampled into `filter_enabled` (the limiter looked at them).
    pub enabled: AtomicU64,
    /// Requests refused.
    pub enforced: AtomicU64,
    /// Enabled requests that found no token (refused or not).
    pub rate_limited: AtomicU64,
    /// Enabled requests that took a token.
    pub ok: AtomicU64,
}

impl RateLimitStats {
    /// `(counter name, value)` in Envoy's order.
    pub fn values(&self) -> [(&'static str, u64); 4] {
        [
            ("enabled", self.enabled.load(Ordering::Relaxed)),
            ("enforced", self.enforced.load(Ordering::Relaxed)),
            ("rate_limited", self.rate_limited.load(Ordering::Relaxed)),
            ("ok", self.ok.load(Ordering::Relaxed)),
        ]
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitVerdict {
    /// Not looked at, or within the limit: go on.
    Pass,
    /// Over the limit and enforced: answer with this instead of forwarding.
    Limited {
        status: u16,
        body: &'static str,
        /// Every header of the response besides `content-length`, `date` and `server`,
        /// `response_headers_to_add` already applied in order.
        headers: Arc<[(String, String)]>,
    },
    /// Over the limit but not enforced: go on, with `request_headers_to_add_when_not_enforced`
    /// applied to the request (see [`apply_headers`]).
    ShadowLimited { request_headers: Arc<[HeaderToAdd]> },
}

/// The token bucket's state. Refills are computed when a request comes rather than by a timer,
/// with the timer's result: whole intervals since the last fill each add `tokens_per_fill`.
#[derive(Debug)]
struct BucketState {
    tokens: u32,
    last_fill: Instant,
}

#[derive(Debug)]
struct Bucket {
    config: TokenBucket,
    state: Mutex<BucketState>,
}

impl Bucket {
    /// Envoy's bucket starts full.
    fn new(config: TokenBucket, now: Instant) -> Self {
        Bucket { config, state: Mutex::new(BucketState { tokens: config.max_tokens, last_fill: now }) }
    }

    fn try_take(&self, now: Instant) -> bool {
        // A panic elsewhere while holding this lock cannot leave the two fields inconsistent
        // in a way that matters for a rate limit, so a poisoned lock is used as it is.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let interval = self.config.fill_interval.max(Duration::from_millis(1));
        let elapsed = now.saturating_duration_since(state.last_fill);
        let fills = elapsed.as_nanos() / interval.as_nanos();
        if fills > 0 {
            let added = fills.saturating_mul(u128::from(self.config.tokens_per_fill));
            let tokens = (u128::from(state.tokens) + added).min(u128::from(self.config.max_tokens));
            state.tokens = u32::try_from(tokens).unwrap_or(self.config.max_tokens);
            // Keep the fill schedule: the next fill is a whole number of intervals later.
            let step = u32::try_from(fills).map_or(elapsed, |f| interval.saturating_mul(f));
            state.last_fill += step;
        }
        if state.tokens == 0 {
            return false;
        }
        state.tokens -= 1;
        true
    }
}

/// One local rate limit filter of one workload.
#[derive(Debug, Clone)]
pub struct LocalRateLimiter {
    settings: Arc<Settings>,
    bucket: Arc<Bucket>,
}

#[derive(Debug)]
struct Settings {
    /// `namespace/name` of the EnvoyFilter and its patch index, for logs.
    source: String,
    filter: RateLimitFilter,
    limited_headers: Arc<[(String, String)]>,
    request_headers: Arc<[HeaderToAdd]>,
    stats: Arc<RateLimitStats>,
    random: Arc<dyn RandomSource>,
}

impl LocalRateLimiter {
    /// A limiter for `filter`, its bucket full at `now`.
    pub fn new(
        source: String,
        filter: RateLimitFilter,
        now: Instant,
        stats: Arc<RateLimitStats>,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        let limited_headers = limited_response_headers(&filter.response_headers).into();
        let request_headers = filter.request_headers_when_not_enforced.clone().into();
        let bucket = Arc::new(Bucket::new(filter.token_bucket, now));
        LocalRateLimiter {
            settings: Arc::new(Settings { source, filter, limited_headers, request_headers, stats, random }),
            bucket,
        }
    }

    /// The limiter a new connection uses: this one, or with
    /// `local_rate_limit_per_downstream_connection` one with its own full bucket.
    pub fn for_connection(&self, now: Instant) -> LocalRateLimiter {
        if self.settings.filter.per_connection {
            LocalRateLimiter {
                settings: self.settings.clone(),
                bucket: Arc::new(Bucket::new(self.settings.filter.token_bucket, now)),
            }
        } else {
            self.clone()
        }
    }

    /// Decide one request.
    pub fn check(&self, now: Instant) -> RateLimitVerdict {
        let settings = &*self.settings;
        let filter = &settings.filter;
        if !filter.filter_enabled.admits(settings.random.next_u64()) {
            return RateLimitVerdict::Pass;
        }
        settings.stats.enabled.fetch_add(1, Ordering::Relaxed);
        if self.bucket.try_take(now) {
            settings.stats.ok.fetch_add(1, Ordering::Relaxed);
            return RateLimitVerdict::Pass;
        }
        settings.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        if !filter.filter_enforced.admits(settings.random.next_u64()) {
            return RateLimitVerdict::ShadowLimited { request_headers: settings.request_headers.clone() };
        }
        settings.stats.enforced.fetch_add(1, Ordering::Relaxed);
        RateLimitVerdict::Limited {
            status: filter.status,
            body: RATE_LIMITED_BODY,
            headers: settings.limited_headers.clone(),
        }
    }

    /// Where the filter runs relative to authentication and authorization.
    pub fn position(&self) -> FilterPosition {
        self.settings.filter.position
    }

    /// Whether requests to this inbound port pass through the filter (`match.listener.portNumber`).
    pub fn applies_to_port(&self, port: u16) -> bool {
        self.settings.filter.port.is_none_or(|p| p == port)
    }

    pub fn stats(&self) -> &Arc<RateLimitStats> {
        &self.settings.stats
    }

    pub fn stat_prefix(&self) -> &str {
        &self.settings.filter.stat_prefix
    }

    /// `namespace/name[patch]` of the EnvoyFilter this limiter comes from.
    pub fn source(&self) -> &str {
        &self.settings.source
    }

    /// Envoy's name of a counter: `<stat_prefix>.http_local_rate_limit.<counter>`.
    pub fn stat_name(&self, counter: &str) -> String {
        format!("{}.http_local_rate_limit.{counter}", self.settings.filter.stat_prefix)
    }
}

/// The headers of Envoy's local reply for a refused request: `content-type: text/plain`,
/// `x-envoy-ratelimited: true`, then `response_headers_to_add` in order.
fn limited_response_headers(adds: &[HeaderToAdd]) -> Vec<(String, String)> {
    let mut headers = vec![("x-envoy-ratelimited".to_owned(), "true".to_owned())];
    apply_headers(&mut headers, adds);
    // Envoy sets the content type of a local reply's text body after the filter's headers,
    // so a configured content-type does not survive.
    headers.retain(|(name, _)| name != "content-type");
    headers.insert(0, ("content-type".to_owned(), "text/plain".to_owned()));
    headers
}

/// Apply header options (Envoy's append actions) to a header list, for the request headers of
/// a [`RateLimitVerdict::ShadowLimited`] request. Names are compared lower-cased.
pub fn apply_headers(headers: &mut Vec<(String, String)>, adds: &[HeaderToAdd]) {
    for add in adds {
        let present = headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(&add.name));
        let entry = (add.name.clone(), add.value.clone());
        match add.action {
            HeaderAppend::AppendIfExistsOrAdd => headers.push(entry),
            HeaderAppend::AddIfAbsent if !present => headers.push(entry),
            HeaderAppend::AddIfAbsent => {}
            HeaderAppend::OverwriteIfExists if !present => {}
            HeaderAppend::OverwriteIfExistsOrAdd | HeaderAppend::OverwriteIfExists => {
                headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&add.name));
                headers.push(entry);
            }
        }
    }
}

/// The EnvoyFilters that apply to a workload, in Istio's order: those of the root namespace
/// (with no selector, or a selector the workload's labels satisfy, whatever its namespace),
/// then those of the workload's own namespace (same rule); each group by age; then a stable
/// sort by `priority`, lowest first.
pub fn envoy_filters_for<'c>(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    config: &'c Config,
) -> Vec<&'c LocalRateLimit> {
    let root = config.mesh.root_namespace.as_str();
    let selected = |filter: &&LocalRateLimit| filter.selector.as_ref().is_none_or(|s| s.matches(labels));
    let in_namespace = |ns: &str| {
        let mut found: Vec<&LocalRateLimit> =
            config.rate_limits.iter().filter(|f| f.meta.namespace == ns).filter(selected).collect();
        found.sort_by(|a, b| (a.meta.age_key(), &a.meta.name).cmp(&(b.meta.age_key(), &b.meta.name)));
        found
    };
    let mut filters = in_namespace(root);
    if namespace != root {
        filters.extend(in_namespace(namespace));
    }
    filters.sort_by_key(|f| f.priority);
    filters
}

/// One limiter per local rate limit filter that applies to the workload, in the order the
/// filters run (see [`envoy_filters_for`], then patch order). Every bucket starts full at
/// `now`: like Envoy, a new configuration starts new buckets. Counters are taken from (or added
/// to) `stats` by `stat_prefix`, so they outlive configuration versions and filters with the
/// same prefix share them, as Envoy's stats of one name are one counter.
pub fn limiters_for<'f>(
    envoy_filters: impl IntoIterator<Item = &'f LocalRateLimit>,
    now: Instant,
    random: &Arc<dyn RandomSource>,
    stats: &mut BTreeMap<String, Arc<RateLimitStats>>,
) -> Vec<LocalRateLimiter> {
    let mut limiters = Vec::new();
    for envoy_filter in envoy_filters {
        for filter in &envoy_filter.filters {
            let counters = stats.entry(filter.stat_prefix.clone()).or_default().clone();
            let source = format!("{}[{}]", envoy_filter.meta.key(), filter.patch);
            limiters.push(LocalRateLimiter::new(source, filter.clone(), now, counters, random.clone()));
        }
    }
    limiters
}

#[cfg(test)]
mod tests {
    use super::*;

    use zmesh_config::networking::Fraction;

    /// A random source that replays fixed values, so sampling is exact.
    #[derive(Debug)]
    struct Replay {
        values: Vec<u64>,
        next: AtomicU64,
    }

    impl RandomSource for Replay {
        fn next_u64(&self) -> u64 {
            let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
            self.values[i % self.values.len()]
        }
    }

    fn replay(values: &[u64]) -> Arc<dyn RandomSource> {
        Arc::new(Replay { values: values.to_vec(), next: AtomicU64::new(0) })
    }

    fn filter(max_tokens: u32, tokens_per_fill: u32, fill_interval: Duration) -> RateLimitFilter {
        RateLimitFilter {
            patch: 0,
            pos: Default::default(),
            stat_prefix: "http_local_rate_limiter".into(),
            position: FilterPosition::AfterAuthorization,
            port: None,
            token_bucket: TokenBucket { max_tokens, tokens_per_fill, fill_interval },
            filter_enabled: Fraction::ALL,
            filter_enforced: Fraction::ALL,
            response_headers: Vec::new(),
            request_headers_when_not_enforced: Vec::new(),
            status: 429,
            per_connection: false,
        }
    }

    fn limiter(filter: RateLimitFilter, start: Instant, random: Arc<dyn RandomSource>) -> LocalRateLimiter {
        LocalRateLimiter::new("ns/f[0]".into(), filter, start, Arc::default(), random)
    }

    fn passes(verdict: &RateLimitVerdict) -> bool {
        matches!(verdict, RateLimitVerdict::Pass)
    }

    #[test]
    fn the_bucket_starts_full_and_refuses_the_request_after_the_last_token() {
        let start = Instant::now();
        let limiter = limiter(filter(3, 3, Duration::from_secs(60)), start, replay(&[0]));
        for _ in 0..3 {
            assert!(passes(&limiter.check(start)));
        }
        let RateLimitVerdict::Limited { status, body, headers } = limiter.check(start) else {
            panic!("the fourth request must be limited");
        };
        assert_eq!((status, body), (429, "local_rate_limited"));
        assert_eq!(
            &*headers,
            [
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("x-envoy-ratelimited".to_owned(), "true".to_owned())
            ]
        );
        let stats = limiter.stats().values();
        assert_eq!(stats, [("enabled", 4), ("enforced", 1), ("rate_limited", 1), ("ok", 3)]);
    }

    #[test]
    fn tokens_come_back_per_whole_fill_interval_and_never_above_max_tokens() {
        let start = Instant::now();
        let limiter = limiter(filter(4, 2, Duration::from_secs(10)), start, replay(&[0]));
        for _ in 0..4 {
            assert!(passes(&limiter.check(start)));
        }
        // Just before the first fill: still empty.
        assert!(!passes(&limiter.check(start + Duration::from_millis(9_999))));
        // One fill: two tokens.
        let after_one = start + Duration::from_secs(10);
        assert!(passes(&limiter.check(after_one)));
        assert!(passes(&limiter.check(after_one)));
        assert!(!passes(&limiter.check(after_one)));
        // An hour later the bucket holds max_tokens, not 720 fills' worth.
        let later = start + Duration::from_secs(3_600);
        for _ in 0..4 {
            assert!(passes(&limiter.check(later)));
        }
        assert!(!passes(&limiter.check(later)));
        // The fill schedule keeps its phase: 3 610 s is the next fill after 3 600 s.
        assert!(!passes(&limiter.check(later + Duration::from_millis(9_999))));
        assert!(passes(&limiter.check(start + Duration::from_secs(3_610))));
    }

    #[test]
    fn a_filter_without_filter_enabled_looks_at_nothing() {
        let start = Instant::now();
        let mut disabled = filter(1, 1, Duration::from_secs(60));
        disabled.filter_enabled = Fraction::NONE;
        let limiter = limiter(disabled, start, replay(&[0, 7, 99]));
        for _ in 0..10 {
            assert!(passes(&limiter.check(start)));
        }
        assert_eq!(limiter.stats().values(), [("enabled", 0), ("enforced", 0), ("rate_limited", 0), ("ok", 0)]);
    }

    #[test]
    fn an_unenforced_limit_counts_the_request_and_lets_it_through_with_the_shadow_headers() {
        let start = Instant::now();
        let mut shadow = filter(1, 1, Duration::from_secs(60));
        shadow.filter_enforced = Fraction::NONE;
        shadow.request_headers_when_not_enforced =
            vec![HeaderToAdd { name: "x-over-limit".into(), value: "1".into(), action: HeaderAppend::AddIfAbsent }];
        let limiter = limiter(shadow, start, replay(&[0]));
        assert!(passes(&limiter.check(start)));
        let RateLimitVerdict::ShadowLimited { request_headers } = limiter.check(start) else {
            panic!("over the limit but not enforced");
        };
        let mut headers = vec![("host".to_owned(), "a".to_owned())];
        apply_headers(&mut headers, &request_headers);
        assert_eq!(headers[1], ("x-over-limit".to_owned(), "1".to_owned()));
        assert_eq!(limiter.stats().values(), [("enabled", 2), ("enforced", 0), ("rate_limited", 1), ("ok", 1)]);
    }

    #[test]
    fn enabled_and_enforced_fractions_sample_as_envoy_does() {
        let start = Instant::now();
        let mut half = filter(1, 1, Duration::from_secs(60));
        half.filter_enabled = Fraction { numerator: 50, denominator: 100 };
        half.filter_enforced = Fraction { numerator: 25, denominator: 10_000 };
        // Draws: 149 % 100 = 49 < 50 → enabled, takes the token. 50 → not enabled.
        // 0 → enabled, no token; 24 % 10 000 < 25 → enforced. 49 → enabled, no token;
        // 10 025 % 10 000 = 25 → not enforced.
        let limiter = limiter(half, start, replay(&[149, 50, 0, 24, 49, 10_025]));
        assert!(passes(&limiter.check(start)));
        assert!(passes(&limiter.check(start)));
        assert!(matches!(limiter.check(start), RateLimitVerdict::Limited { .. }));
        assert!(matches!(limiter.check(start), RateLimitVerdict::ShadowLimited { .. }));
        assert_eq!(limiter.stats().values(), [("enabled", 3), ("enforced", 1), ("rate_limited", 2), ("ok", 1)]);
    }

    #[test]
    fn configured_response_headers_and_status_shape_the_refusal() {
        let start = Instant::now();
        let mut custom = filter(1, 1, Duration::from_secs(60));
        custom.status = 503;
        custom.response_headers = vec![
            HeaderToAdd {
                name: "x-local-rate-limit".into(),
                value: "true".into(),
                action: HeaderAppend::OverwriteIfExistsOrAdd,
            },
            HeaderToAdd { name: "x-envoy-ratelimited".into(), value: "yes".into(), action: HeaderAppend::AddIfAbsent },
            HeaderToAdd { name: "x-missing".into(), value: "v".into(), action: HeaderAppend::OverwriteIfExists },
            HeaderToAdd {
                name: "content-type".into(),
                value: "application/json".into(),
                action: HeaderAppend::OverwriteIfExistsOrAdd,
            },
        ];
        let limiter = limiter(custom, start, replay(&[0]));
        limiter.check(start);
        let RateLimitVerdict::Limited { status, headers, .. } = limiter.check(start) else {
            panic!("limited");
        };
        assert_eq!(status, 503);
        assert_eq!(
            &*headers,
            [
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("x-envoy-ratelimited".to_owned(), "true".to_owned()),
                ("x-local-rate-limit".to_owned(), "true".to_owned()),
            ]
        );
    }

    #[test]
    fn a_per_connection_limit_gives_each_connection_its_own_bucket() {
        let start = Instant::now();
        let mut per_connection = filter(1, 1, Duration::from_secs(60));
        per_connection.per_connection = true;
        let shared = limiter(per_connection, start, replay(&[0]));
        let first = shared.for_connection(start);
        let second = shared.for_connection(start);
        assert!(passes(&first.check(start)));
        assert!(!passes(&first.check(start)));
        assert!(passes(&second.check(start)));
        // Counters stay per filter.
        assert_eq!(shared.stats().values()[3], ("ok", 2));

        let process_wide = limiter(filter(1, 1, Duration::from_secs(60)), start, replay(&[0]));
        assert!(passes(&process_wide.for_connection(start).check(start)));
        assert!(!passes(&process_wide.for_connection(start).check(start)));
    }

    #[test]
    fn concurrent_requests_never_take_more_tokens_than_the_bucket_holds() {
        let start = Instant::now();
        let limiter = limiter(filter(1_000, 1, Duration::from_secs(3_600)), start, replay(&[0]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limiter = limiter.clone();
                std::thread::spawn(move || (0..500).filter(|_| passes(&limiter.check(start))).count())
            })
            .collect();
        let passed: usize = threads.into_iter().map(|t| t.join().expect("thread")).sum();
        assert_eq!(passed, 1_000);
        assert_eq!(limiter.stats().values()[2], ("rate_limited", 1_000));
    }

    fn load(yaml: &str) -> Config {
        let loaded = zmesh_config::load_str(yaml);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        loaded.config
    }

    fn envoy_filter(namespace: &str, name: &str, selector: &str, priority: i32, prefix: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  {selector}
  priority: {priority}
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      listener: {{filterChain: {{filter: {{name: envoy.filters.network.http_connection_manager}}}}}}
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.local_ratelimit
        typed_config:
          '@type': type.googleapis.com/udpa.type.v1.TypedStruct
          type_url: type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
          value:
            stat_prefix: {prefix}
            token_bucket: {{max_tokens: 10, tokens_per_fill: 10, fill_interval: 60s}}
            filter_enabled: {{runtime_key: e, default_value: {{numerator: 100, denominator: HUNDRED}}}}
            filter_enforced: {{runtime_key: f, default_value: {{numerator: 100, denominator: HUNDRED}}}}
---
"
        )
    }

    #[test]
    fn filters_apply_from_the_root_namespace_then_the_workload_namespace_by_priority_and_selector() {
        let yaml = [
            envoy_filter("shop", "local-late", "", 0, "shop_all"),
            envoy_filter("shop", "local-selected", "workloadSelector: {labels: {app: web}}", -1, "shop_web"),
            envoy_filter("shop", "local-other-app", "workloadSelector: {labels: {app: db}}", 0, "shop_db"),
            envoy_filter("istio-system", "root-all", "", 0, "root_all"),
            envoy_filter("istio-system", "root-web", "workloadSelector: {labels: {app: web}}", 0, "root_web"),
            envoy_filter("other", "elsewhere", "", 0, "other_all"),
        ]
        .concat();
        let config = load(&yaml);
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let random = replay(&[0]);
        let mut stats = BTreeMap::new();
        let prefixes: Vec<String> =
            limiters_for(envoy_filters_for("shop", &labels, &config), Instant::now(), &random, &mut stats)
                .iter()
                .map(|l| l.stat_prefix().to_owned())
                .collect();
        // Priority first (stable), then root before namespace, then age.
        assert_eq!(prefixes, ["shop_web", "root_all", "root_web", "shop_all"]);

        let db = BTreeMap::from([("app".to_owned(), "db".to_owned())]);
        let prefixes: Vec<String> =
            limiters_for(envoy_filters_for("other", &db, &config), Instant::now(), &random, &mut stats)
                .iter()
                .map(|l| l.stat_prefix().to_owned())
                .collect();
        assert_eq!(prefixes, ["root_all", "other_all"]);
        // Counters are kept by stat_prefix across calls (configuration versions).
        assert_eq!(stats.len(), 5);
    }
}
