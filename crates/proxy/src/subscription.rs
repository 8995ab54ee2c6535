//! Following the control plane: the proxy's end of `zmesh.config.v1.ConfigService`.
//!
//! Every response is applied to a copy of the resources held; the copy is loaded with the same
//! validating loader the control plane used, compiled for this workload and put in force whole
//! — or refused (NACK), in which case the proxy keeps enforcing its previous version. When the
//! stream breaks the proxy keeps its configuration and reconnects with backoff, telling the
//! control plane what it holds so only differences come back. The stream runs over the TLS
//! control channel, the proxy presenting its SVID (see `control_channel`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zmesh_config::{FileKind, Loader};
use zmesh_tls::{CertStore, ControlCredentials};
use zmesh_xds::config::config_service_client::ConfigServiceClient;
use zmesh_xds::config::{ConfigRequest, ConfigResponse, Node, Resource};

use crate::config::{Documents, ProxyConfig};
use crate::control_channel::ControlEndpoint;

/// The most a response split in parts may add up to (its documents' text): far above any real
/// mesh's slice for one workload, and a bound on what a broken or hostile stream can make the
/// proxy buffer.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a subscription cannot be set up at all (transient failures are retried, not returned).
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("--workload must be NAMESPACE/NAME, got `{0}`")]
    Workload(String),
}

/// What the proxy holds from the control plane, and how to reach it.
#[derive(Debug)]
pub struct Subscription {
    control: ControlEndpoint,
    /// The proxy's SVID, presented on every connection.
    credentials: ControlCredentials,
    node: Node,
    namespace: String,
    name: String,
    /// Resources in force, by key; the configuration in force holds the same set.
    held: Documents,
    /// The version in force; empty before the first one.
    version: String,
    stream: Option<Open>,
    /// Connection attempts since the last successful response, for backoff.
    failures: u32,
    /// The first parts of a response split in several (`more`), until its last part arrives.
    partial: Option<ConfigResponse>,
    /// The size of the documents in `partial`.
    partial_bytes: usize,
    /// A split response refused part-way: its remaining parts are skipped, never applied as a
    /// response of their own.
    skipping: Option<String>,
    /// The most a (split) response may add up to; [`MAX_RESPONSE_BYTES`] unless lowered.
    max_response_bytes: usize,
}

#[derive(Debug)]
struct Open {
    requests: mpsc::Sender<ConfigRequest>,
    responses: tonic::Streaming<ConfigResponse>,
}

/// What happened to one response.
enum Applied {
    Accepted,
    Refused,
    /// A part of a split response; the rest follows.
    Partial,
}

impl Subscription {
    pub fn new(
        control: ControlEndpoint,
        svid: Arc<CertStore>,
        workload: &str,
        proxy_id: String,
    ) -> Result<Self, SubscriptionError> {
        let (namespace, name) = workload
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .ok_or_else(|| SubscriptionError::Workload(workload.to_owned()))?;
        Ok(Subscription {
            control,
            credentials: ControlCredentials::Svid(svid),
            node: Node { workload: workload.to_owned(), proxy_id, build_version: env!("CARGO_PKG_VERSION").to_owned() },
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            held: Documents::default(),
            version: String::new(),
            stream: None,
            failures: 0,
            partial: None,
            partial_bytes: 0,
            skipping: None,
            max_response_bytes: MAX_RESPONSE_BYTES,
        })
    }

    /// Refuse responses whose documents add up to more than `bytes` (tests use a small bound).
    pub fn with_max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response_bytes = bytes;
        self
    }

    /// The version in force (empty before the first).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Wait for the first configuration this proxy can run with (retrying the connection and
    /// refusing unusable versions meanwhile). `None` when `shutdown` came first.
    pub async fn initial(&mut self, shutdown: &CancellationToken) -> Option<ProxyConfig> {
        let mut first = None;
        while first.is_none() {
            let applied = self
                .next(shutdown, &mut |config| {
                    first = Some(config);
                    Ok(())
                })
                .await?;
            if !matches!(applied, Applied::Accepted) {
                continue;
            }
        }
        first
    }

    /// Follow the control plane until `shutdown`, putting each accepted version in force with
    /// `apply` (which may still refuse it, e.g. [`crate::run::Proxy::update`]).
    pub async fn follow(
        mut self,
        shutdown: CancellationToken,
        mut apply: impl FnMut(ProxyConfig) -> Result<(), String> + Send,
    ) {
        while self.next(&shutdown, &mut apply).await.is_some() {}
    }

    /// Handle the next response (connecting first when needed). `None` on shutdown.
    async fn next(
        &mut self,
        shutdown: &CancellationToken,
        apply: &mut (dyn FnMut(ProxyConfig) -> Result<(), String> + Send),
    ) -> Option<Applied> {
        loop {
            if self.stream.is_none() {
                match self.connect().await {
                    Ok(open) => {
                        // The control plane accepted the stream (it answers the call only after
                        // checking the token): a success even if no response follows — a
                        // resync at the version the proxy holds sends none — so the next break
                        // starts the backoff afresh and a restarted control plane is found
                        // quickly every time.
                        self.failures = 0;
                        self.partial = None;
                        self.partial_bytes = 0;
                        self.skipping = None;
                        self.stream = Some(open);
                    }
                    Err(error) => {
                        let wait = backoff(self.failures);
                        self.failures = self.failures.saturating_add(1);
                        tracing::warn!(endpoint = %self.control.uri(), %error, retry_in = ?wait, version = %self.version, "control plane unreachable; keeping the configuration in force");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => continue,
                            () = shutdown.cancelled() => return None,
                        }
                    }
                }
            }
            let Some(open) = self.stream.as_mut() else { continue };
            let message = tokio::select! {
                message = open.responses.message() => message,
                () = shutdown.cancelled() => return None,
            };
            match message {
                Ok(Some(response)) => {
                    self.failures = 0;
                    return Some(self.handle(response, apply).await);
                }
                Ok(None) => {
                    tracing::warn!(version = %self.version, "the control plane closed the stream; reconnecting")
                }
                Err(status) => {
                    tracing::warn!(version = %self.version, code = ?status.code(), message = status.message(), "configuration stream broke; reconnecting")
                }
            }
            self.stream = None;
            let wait = backoff(self.failures);
            self.failures = self.failures.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    async fn connect(&self) -> Result<Open, String> {
        let channel = self.control.connect(&self.credentials).await.map_err(|e| crate::identity::source_chain(&e))?;
        let (requests, outgoing) = mpsc::channel(4);
        let hello = ConfigRequest {
            node: Some(self.node.clone()),
            version_info: self.version.clone(),
            initial_resource_versions: self.held.iter().map(|(k, r)| (k.clone(), r.version.clone())).collect(),
            ..Default::default()
        };
        // The server reads this first request before it answers the call.
        requests.send(hello).await.map_err(|_| "the request channel closed".to_owned())?;
        let request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing));
        let responses = ConfigServiceClient::new(channel)
            .stream_config(request)
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
            .into_inner();
        tracing::info!(endpoint = %self.control.uri(), workload = %self.node.workload, "connected to the control plane");
        Ok(Open { requests, responses })
    }

    async fn handle(
        &mut self,
        response: ConfigResponse,
        apply: &mut (dyn FnMut(ProxyConfig) -> Result<(), String> + Send),
    ) -> Applied {
        if let Some(nonce) = &self.skipping {
            if *nonce == response.nonce {
                if !response.more {
                    self.skipping = None;
                }
                return Applied::Partial;
            }
            self.skipping = None;
        }
        // A split response is applied whole, once its last part is here.
        let size = response_bytes(&response);
        let response = match self.partial.take() {
            Some(mut first) if first.nonce == response.nonce => {
                first.resources.extend(response.resources);
                first.removed.extend(response.removed);
                first.more = response.more;
                self.partial_bytes += size;
                first
            }
            _ => {
                self.partial_bytes = size;
                response
            }
        };
        if self.partial_bytes > self.max_response_bytes {
            let error = format!(
                "the response holds more than {} bytes of documents; refused without reading the rest",
                self.max_response_bytes
            );
            tracing::warn!(version = %response.version_info, kept = %self.version, %error, "configuration refused (NACK)");
            self.partial_bytes = 0;
            if response.more {
                self.skipping = Some(response.nonce.clone());
            }
            let nack = ConfigRequest {
                response_nonce: response.nonce,
                version_info: self.version.clone(),
                error_detail: error,
                ..Default::default()
            };
            if let Some(open) = &self.stream
                && open.requests.send(nack).await.is_err()
            {
                self.stream = None;
            }
            return Applied::Refused;
        }
        if response.more {
            self.partial = Some(response);
            return Applied::Partial;
        }
        self.partial_bytes = 0;
        let mut candidate = BTreeMap::clone(&self.held);
        for key in &response.removed {
            candidate.remove(key);
        }
        for resource in &response.resources {
            candidate.insert(resource.key.clone(), resource.clone());
        }
        // Shared with the configuration built from it, so the documents in force are in memory
        // once, whether the admin port is asked for them or not.
        let candidate = Arc::new(candidate);
        let outcome = build(&candidate, &response.version_info, &self.namespace, &self.name)
            .map(|mut config| {
                config.documents = Some(candidate.clone());
                config
            })
            .and_then(&mut *apply);
        let (answer, applied) = match outcome {
            Ok(()) => {
                self.held = candidate;
                self.version.clone_from(&response.version_info);
                let answer = ConfigRequest {
                    response_nonce: response.nonce,
                    version_info: self.version.clone(),
                    ..Default::default()
                };
                (answer, Applied::Accepted)
            }
            Err(error) => {
                tracing::warn!(version = %response.version_info, kept = %self.version, %error, "configuration refused (NACK)");
                let answer = ConfigRequest {
                    response_nonce: response.nonce,
                    version_info: self.version.clone(),
                    error_detail: error,
                    ..Default::default()
                };
                (answer, Applied::Refused)
            }
        };
        if let Some(open) = &self.stream
            && open.requests.send(answer).await.is_err()
        {
            self.stream = None;
        }
        applied
    }
}

/// What a response part adds to the proxy's memory: its documents and keys.
fn response_bytes(response: &ConfigResponse) -> usize {
    let resources: usize = response.resources.iter().map(|r| r.key.len() + r.document.len() + r.version.len()).sum();
    resources + response.removed.iter().map(String::len).sum::<usize>()
}

/// Load the held documents (in the control plane's load order) and compile them for the
/// workload `namespace/name`.
pub fn build(
    resources: &BTreeMap<String, Resource>,
    version: &str,
    namespace: &str,
    name: &str,
) -> Result<ProxyConfig, String> {
    let mut ordered: Vec<&Resource> = resources.values().collect();
    ordered.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.key.cmp(&b.key)));
    let mut loader = Loader::new();
    for resource in ordered {
        let kind = if resource.key == "MeshConfig" { FileKind::MeshConfig } else { FileKind::Resources };
        let origin: Arc<str> = format!("control-plane:{}", resource.key).into();
        loader.add_str(Some(origin), &resource.document, kind);
    }
    let loaded = loader.finish();
    if loaded.has_errors() {
        return Err(loaded.errors().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    }
    crate::config::log_warnings(&loaded.diagnostics);
    ProxyConfig::build(version.to_owned(), &loaded.config, namespace, name).map_err(|e| e.to_string())
}

/// 100 ms doubling to 5 s: a restarted control plane is found quickly, a long outage costs
/// one attempt every few seconds per proxy.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_fast_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(30), Duration::from_secs(5));
    }
}
