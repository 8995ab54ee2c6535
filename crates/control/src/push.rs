//! Configuration push: one gRPC stream per proxy (`zmesh.config.v1.ConfigService`).
//!
//! The shape is Envoy's incremental xDS: each response carries a version, a nonce, the
//! resources added or changed for this proxy and the keys it must drop; the proxy answers every
//! response with an ACK (the new version is in force) or a NACK (refused, the previous version
//! stays). The server keeps, per stream, what the proxy has acknowledged holding, so every
//! push is a difference against that — a NACKed response changes nothing on either side. At
//! most one response is outstanding per stream: a proxy that is slow to answer gets the newest
//! configuration once it does, never a queue of stale ones.
//!
//! A proxy proves who it is with the SVID it presents on the TLS connection (see `channel`);
//! it is served only a workload whose identity is the SVID's. Bootstrap tokens are not
//! accepted here: they only get a first certificate.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use zmesh_xds::config::config_service_server::{ConfigService, ConfigServiceServer};
use zmesh_xds::config::{ConfigRequest, ConfigResponse};

use crate::snapshot::{Snapshot, WireResource};

/// What the control plane knows about one proxy.
#[derive(Debug, Clone)]
pub struct ProxyStatus {
    pub proxy_id: String,
    /// `namespace/name` of the workload it serves.
    pub workload: String,
    pub identity: String,
    pub peer: Option<SocketAddr>,
    pub build_version: String,
    pub connected: bool,
    pub connected_at: SystemTime,
    pub disconnected_at: Option<SystemTime>,
    /// The version last sent, and when.
    pub sent: Option<(Arc<str>, SystemTime)>,
    /// The version the proxy acknowledged last, and when.
    pub acked: Option<(Arc<str>, SystemTime)>,
    /// The last refusal: version, the proxy's reason, when.
    pub nacked: Option<(Arc<str>, String, SystemTime)>,
    /// How many resources the proxy holds.
    pub resources: usize,
}

impl ProxyStatus {
    /// SYNCED when the proxy acknowledged the current version, else STALE (or NACKED when it
    /// refused it), as `istioctl proxy-status` words it.
    pub fn sync_state(&self, current: &str) -> &'static str {
        match (&self.acked, &self.nacked) {
            (_, Some((version, _, _))) if &**version == current => "NACKED",
            (Some((version, _)), _) if &**version == current => "SYNCED",
            _ => "STALE",
        }
    }
}

/// The proxies connected now, and those that left within [`DISCONNECTED_KEPT`] (at most
/// [`MAX_TRACKED`] rows), by proxy id. A row belongs to the stream that made it: another
/// stream — a reconnect, or another caller reusing the id — never changes it.
#[derive(Debug, Default)]
pub struct ProxyTracker(Mutex<Tracked>);

#[derive(Debug, Default)]
struct Tracked {
    rows: BTreeMap<String, (u64, ProxyStatus)>,
    next_stream: u64,
}

/// How long a disconnected proxy stays listed (`zmesh proxy-status` shows it as gone).
pub const DISCONNECTED_KEPT: std::time::Duration = std::time::Duration::from_secs(600);
/// Rows kept at most; past it the longest-disconnected go first.
pub const MAX_TRACKED: usize = 20_000;

impl ProxyTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the row of `proxy_id` if `stream` still owns it.
    fn update(&self, proxy_id: &str, stream: u64, change: impl FnOnce(&mut ProxyStatus)) {
        if let Some((owner, status)) = self.lock().rows.get_mut(proxy_id)
            && *owner == stream
        {
            change(status);
        }
    }

    /// Gives `status` its row and returns the stream number that owns it — unless a connected
    /// proxy of another identity holds that id: ids are chosen by callers, and one caller must
    /// not take over (or hide) another's row.
    pub(crate) fn insert(&self, status: ProxyStatus, now: SystemTime) -> Result<u64, Status> {
        let mut tracked = self.lock();
        if let Some((_, current)) = tracked.rows.get(&status.proxy_id)
            && current.connected
            && current.identity != status.identity
        {
            return Err(Status::permission_denied(format!(
                "proxy id `{}` is in use by a connected proxy of another identity; give each proxy its own id",
                status.proxy_id
            )));
        }
        tracked.rows.retain(|_, (_, row)| {
            row.connected
                || row.disconnected_at.is_none_or(|at| now.duration_since(at).unwrap_or_default() < DISCONNECTED_KEPT)
        });
        if tracked.rows.len() >= MAX_TRACKED && !tracked.rows.contains_key(&status.proxy_id) {
            let oldest = tracked
                .rows
                .iter()
                .filter(|(_, (_, row))| !row.connected)
                .min_by_key(|(_, (_, row))| row.disconnected_at)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    tracked.rows.remove(&id);
                }
                None => return Err(Status::resource_exhausted("too many proxies are connected")),
            }
        }
        tracked.next_stream += 1;
        let stream = tracked.next_stream;
        tracked.rows.insert(status.proxy_id.clone(), (stream, status));
        Ok(stream)
    }

    /// A copy of every proxy's status, ordered by proxy id.
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.lock().rows.values().map(|(_, status)| status.clone()).collect()
    }
}

/// The push service.
#[derive(Clone)]
pub struct PushServer {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    proxies: Arc<ProxyTracker>,
}

impl std::fmt::Debug for PushServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushServer").field("version", &self.snapshots.borrow().version).finish_non_exhaustive()
    }
}

impl PushServer {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, proxies: Arc<ProxyTracker>) -> Self {
        PushServer { snapshots, proxies }
    }

    pub fn into_service(self) -> ConfigServiceServer<PushServer> {
        ConfigServiceServer::new(self)
    }
}

type ResponseStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ConfigResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigService for PushServer {
    type StreamConfigStream = ResponseStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<ConfigRequest>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let peer = crate::channel::remote(&request);
        let Some(caller) = crate::channel::svid_caller(&request).cloned() else {
            tracing::warn!(target: "zmesh::audit", peer = ?peer, "configuration stream refused: no SVID");
            return Err(Status::unauthenticated(
                "present the workload's SVID as TLS client certificate: configuration is served over mTLS only \
                 (a bootstrap token only gets a first certificate)",
            ));
        };
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream ended before its first request"))?;
        let node = first.node.clone().ok_or_else(|| {
            Status::invalid_argument("the first request must carry `node` (the workload this proxy serves)")
        })?;
        let (namespace, name) = node
            .workload
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .map(|(ns, n)| (ns.to_owned(), n.to_owned()))
            .ok_or_else(|| {
                Status::invalid_argument(format!("node.workload `{}` is not NAMESPACE/NAME", node.workload))
            })?;
        if node.proxy_id.is_empty() {
            return Err(Status::invalid_argument("node.proxy_id is empty"));
        }
        let initial_version = (!first.version_info.is_empty()).then(|| Arc::from(first.version_info));
        let stream = Stream {
            proxy_id: node.proxy_id.clone(),
            namespace,
            name,
            caller: caller.to_string(),
            snapshots: self.snapshots.clone(),
            proxies: self.proxies.clone(),
            held: Held::Reported(
                first
                    .initial_resource_versions
                    .into_iter()
                    .map(|(key, version)| (Arc::from(key), Arc::from(version)))
                    .collect(),
            ),
            nonce: 0,
            initial_version: initial_version.clone(),
            row: 0,
        };
        stream.check_identity(&self.snapshots.borrow())?;
        let mut stream = stream;
        stream.row = self.proxies.insert(
            ProxyStatus {
                proxy_id: node.proxy_id.clone(),
                workload: node.workload.clone(),
                identity: stream.caller.clone(),
                peer,
                build_version: node.build_version,
                connected: true,
                connected_at: SystemTime::now(),
                disconnected_at: None,
                sent: None,
                acked: initial_version.map(|v| (v, SystemTime::now())),
                nacked: None,
                resources: match &stream.held {
                    Held::Reported(held) => held.len(),
                    Held::Slice(_) => 0,
                },
            },
            SystemTime::now(),
        )?;
        tracing::info!(proxy = %node.proxy_id, workload = %node.workload, identity = %caller, "proxy connected");
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(stream.run(inbound, sender));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

/// One proxy's stream.
struct Stream {
    proxy_id: String,
    namespace: String,
    name: String,
    caller: String,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    proxies: Arc<ProxyTracker>,
    /// What the proxy has acknowledged holding.
    held: Held,
    nonce: u64,
    /// The tracker row this stream owns.
    row: u64,
    /// The version the proxy said it holds when it connected.
    initial_version: Option<Arc<str>>,
}

/// What a proxy holds, as the stream knows it.
enum Held {
    /// Exactly its slice of this snapshot (it acknowledged that version). Keeping the snapshot
    /// costs nothing while it is current; an older one stays alive only for proxies that have
    /// not taken a newer version.
    Slice(Arc<Snapshot>),
    /// What the proxy reported on connect (key → version), until its first acknowledgement.
    Reported(HashMap<Arc<str>, Arc<str>>),
}

/// Responses are split so that none is larger than tonic's encode buffer (8 KiB): tonic keeps a
/// stream's encode buffer at the size of the largest message it sent, for the life of the
/// stream, and a thousand streams with one large message each would hold hundreds of MiB.
const RESPONSE_BYTES: usize = 6 * 1024;

/// How a stream ended.
enum End {
    /// The proxy went away (or the control plane is stopping).
    Closed,
    Refused(Status),
}

impl Stream {
    /// The workload, once the registry knows it, must have the caller's identity.
    fn check_identity(&self, snapshot: &Snapshot) -> Result<(), Status> {
        match snapshot.registry.workload_named(&self.namespace, &self.name) {
            Some(workload) if workload.identity.to_string() != self.caller => {
                tracing::warn!(target: "zmesh::audit", proxy = %self.proxy_id, caller = %self.caller, workload = %workload.identity, "configuration stream refused: identity mismatch");
                Err(Status::permission_denied(format!(
                    "workload {}/{} runs as {}, but the caller's SVID proves {}",
                    self.namespace, self.name, workload.identity, self.caller
                )))
            }
            _ => Ok(()),
        }
    }

    async fn run(
        mut self,
        mut inbound: Streaming<ConfigRequest>,
        sender: mpsc::Sender<Result<ConfigResponse, Status>>,
    ) {
        let end = self.serve(&mut inbound, &sender).await;
        if let End::Refused(status) = end {
            let _ = sender.send(Err(status)).await;
        }
        let now = SystemTime::now();
        self.proxies.update(&self.proxy_id, self.row, |s| {
            s.connected = false;
            s.disconnected_at = Some(now);
        });
        tracing::info!(proxy = %self.proxy_id, "proxy disconnected");
    }

    async fn serve(
        &mut self,
        inbound: &mut Streaming<ConfigRequest>,
        sender: &mpsc::Sender<Result<ConfigResponse, Status>>,
    ) -> End {
        // The proxy's version as it reported it on connect; nothing is sent when that is
        // already current and nothing differs (a resync after a control-plane restart).
        let mut proxy_version = self.initial_version.take();
        loop {
            let snapshot = self.snapshots.borrow_and_update().clone();
            if let Err(status) = self.check_identity(&snapshot) {
                return End::Refused(status);
            }
            if proxy_version.as_deref() != Some(&*snapshot.version) {
                let (changed, removed) = self.difference(&snapshot);
                self.nonce += 1;
                let nonce = self.nonce.to_string();
                for response in split(&snapshot.version, &nonce, &changed, &removed) {
                    if sender.send(Ok(response)).await.is_err() {
                        return End::Closed;
                    }
                }
                let sent_at = SystemTime::now();
                self.proxies.update(&self.proxy_id, self.row, |s| s.sent = Some((snapshot.version.clone(), sent_at)));
                match self.await_answer(inbound, &nonce).await {
                    Answer::Ack(version) => {
                        let holds = snapshot.resources_count_for(
                            snapshot.registry.workload_named(&self.namespace, &self.name).map(|w| &**w),
                        );
                        self.held = Held::Slice(snapshot.clone());
                        let now = SystemTime::now();
                        self.proxies.update(&self.proxy_id, self.row, |s| {
                            s.acked = Some((version.clone(), now));
                            s.resources = holds;
                        });
                        proxy_version = Some(version);
                    }
                    Answer::Nack(error) => {
                        tracing::warn!(proxy = %self.proxy_id, version = %snapshot.version, %error, "proxy refused the configuration (NACK); it keeps its previous version");
                        let now = SystemTime::now();
                        self.proxies.update(&self.proxy_id, self.row, |s| {
                            s.nacked = Some((snapshot.version.clone(), error.clone(), now));
                        });
                        // Not resent until the configuration changes again.
                        proxy_version = Some(snapshot.version.clone());
                    }
                    Answer::End(end) => return end,
                }
            }
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { return End::Closed },
                message = inbound.message() => match message {
                    // Only answers to responses are expected; anything else is ignored.
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return End::Closed,
                },
            }
        }
    }

    /// What to send so the proxy holds exactly its slice of `snapshot`. When it holds the
    /// slice of the snapshot this one was built after, and its own workload did not change,
    /// only the keys that changed are looked at; otherwise its whole slice is compared.
    fn difference(&self, snapshot: &Snapshot) -> (Vec<Arc<WireResource>>, Vec<Arc<str>>) {
        let workload = snapshot.registry.workload_named(&self.namespace, &self.name).map(|w| &**w);
        if let Held::Slice(old) = &self.held {
            let old_workload = old.registry.workload_named(&self.namespace, &self.name).map(|w| &**w);
            let incremental = snapshot.previous.as_deref() == Some(&*old.version)
                && old_workload == workload
                && !snapshot.changed.iter().any(|k| &**k == "MeshConfig");
            if incremental {
                let mut changed = Vec::new();
                let mut removed = Vec::new();
                for key in &snapshot.changed {
                    let before = old.applies(key, old_workload);
                    match (before, snapshot.applies(key, workload)) {
                        (before, Some(now)) if before.is_none_or(|b| b.version != now.version) => {
                            changed.push(now.clone());
                        }
                        (Some(_), None) => removed.push(key.clone()),
                        _ => {}
                    }
                }
                return (changed, removed);
            }
        }
        let wanted = snapshot.resources_for(workload);
        let held: HashMap<Arc<str>, Arc<str>> = match &self.held {
            Held::Reported(held) => held.clone(),
            Held::Slice(old) => {
                let old_workload = old.registry.workload_named(&self.namespace, &self.name).map(|w| &**w);
                old.resources_for(old_workload).into_iter().map(|(k, r)| (k, r.version.clone())).collect()
            }
        };
        let changed = wanted.values().filter(|r| held.get(&r.key).is_none_or(|v| **v != *r.version)).cloned().collect();
        let removed = held.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        (changed, removed)
    }

    async fn await_answer(&self, inbound: &mut Streaming<ConfigRequest>, nonce: &str) -> Answer {
        loop {
            match inbound.message().await {
                Ok(Some(answer)) if answer.response_nonce == nonce => {
                    return if answer.error_detail.is_empty() {
                        Answer::Ack(Arc::from(answer.version_info))
                    } else {
                        Answer::Nack(answer.error_detail)
                    };
                }
                // An answer to an older response: superseded.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return Answer::End(End::Closed),
            }
        }
    }
}

enum Answer {
    Ack(Arc<str>),
    Nack(String),
    End(End),
}

/// The responses that bring a proxy to `version`: removals first, then the resources in parts
/// of about [`RESPONSE_BYTES`]; every one but the last says `more`. Each part is built only when
/// it is about to be sent, so a thousand streams syncing at once hold one part each.
fn split<'a>(
    version: &'a str,
    nonce: &'a str,
    changed: &'a [Arc<WireResource>],
    removed: &'a [Arc<str>],
) -> impl Iterator<Item = ConfigResponse> + Send + 'a {
    let mut next = 0;
    let mut first = true;
    std::iter::from_fn(move || {
        if !first && next >= changed.len() {
            return None;
        }
        let mut part = ConfigResponse {
            version_info: version.to_owned(),
            nonce: nonce.to_owned(),
            resources: Vec::new(),
            removed: Vec::new(),
            more: false,
        };
        let mut size = 0;
        if std::mem::take(&mut first) {
            part.removed = removed.iter().map(ToString::to_string).collect();
            size = removed.iter().map(|k| k.len()).sum();
        }
        while let Some(resource) = changed.get(next) {
            let resource_size = resource.document.len() + resource.key.len() + resource.version.len();
            if size > 0 && size + resource_size > RESPONSE_BYTES {
                break;
            }
            size += resource_size;
            part.resources.push(resource.to_proto());
            next += 1;
        }
        part.more = next < changed.len();
        Some(part)
    })
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn row(proxy_id: &str, identity: &str) -> ProxyStatus {
        ProxyStatus {
            proxy_id: proxy_id.to_owned(),
            workload: "ns/w".to_owned(),
            identity: identity.to_owned(),
            peer: None,
            build_version: String::new(),
            connected: true,
            connected_at: SystemTime::UNIX_EPOCH,
            disconnected_at: None,
            sent: None,
            acked: None,
            nacked: None,
            resources: 0,
        }
    }

    #[test]
    fn a_proxy_id_in_use_by_another_identity_is_refused_and_only_its_stream_changes_a_row() {
        let tracker = ProxyTracker::default();
        let now = SystemTime::UNIX_EPOCH;
        let first = tracker.insert(row("p1", "spiffe://td/ns/a/sa/a"), now).expect("first");
        let refused = tracker.insert(row("p1", "spiffe://td/ns/b/sa/b"), now).expect_err("another identity");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // The same identity reconnecting takes the row over; the old stream's late updates
        // (its disconnect) no longer touch it.
        let second = tracker.insert(row("p1", "spiffe://td/ns/a/sa/a"), now).expect("reconnect");
        tracker.update("p1", first, |s| s.connected = false);
        assert!(tracker.list()[0].connected);
        tracker.update("p1", second, |s| s.connected = false);
        assert!(!tracker.list()[0].connected);
    }

    #[test]
    fn disconnected_proxies_are_forgotten_after_a_while_so_the_tracker_stays_bounded() {
        let tracker = ProxyTracker::default();
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let stream = tracker.insert(row("gone", "spiffe://td/ns/a/sa/a"), start).expect("insert");
        tracker.update("gone", stream, |s| {
            s.connected = false;
            s.disconnected_at = Some(start);
        });
        tracker.insert(row("new", "spiffe://td/ns/a/sa/a"), start + DISCONNECTED_KEPT / 2).expect("insert");
        assert_eq!(tracker.list().len(), 2, "recently gone proxies are still listed");
        tracker.insert(row("newer", "spiffe://td/ns/a/sa/a"), start + DISCONNECTED_KEPT * 2).expect("insert");
        let ids: Vec<String> = tracker.list().into_iter().map(|s| s.proxy_id).collect();
        assert_eq!(ids, ["new", "newer"]);
    }

    #[test]
    fn a_large_push_is_split_into_parts_that_carry_everything_once() {
        let entries: String = (0..100)
            .map(|i| format!("---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: w{i}, namespace: ns}}\nspec: {{address: 10.0.0.{i}, labels: {{app: w{i}, padding: {}}}}}\n", "x".repeat(50)))
            .collect();
        let snapshot = Snapshot::build(1, &zmesh_config::load_str(&entries), SystemTime::UNIX_EPOCH);
        let mut changed: Vec<Arc<WireResource>> = snapshot.resources_for(None).into_values().collect();
        changed.sort_by(|a, b| a.key.cmp(&b.key));
        let removed: Vec<Arc<str>> = vec!["AuthorizationPolicy/ns/gone".into()];
        let parts: Vec<ConfigResponse> = split("v2", "7", &changed, &removed).collect();
        assert!(parts.len() > 2, "{} parts", parts.len());
        assert!(parts.iter().all(|p| p.version_info == "v2" && p.nonce == "7"));
        assert!(parts[..parts.len() - 1].iter().all(|p| p.more) && !parts[parts.len() - 1].more);
        assert_eq!(parts[0].removed, ["AuthorizationPolicy/ns/gone"]);
        let sent: Vec<&str> = parts.iter().flat_map(|p| p.resources.iter().map(|r| r.key.as_str())).collect();
        let expected: Vec<&str> = changed.iter().map(|r| &*r.key).collect();
        assert_eq!(sent, expected);
        for part in &parts {
            let size: usize = part.resources.iter().map(|r| r.document.len() + r.key.len() + r.version.len()).sum();
            assert!(size <= RESPONSE_BYTES || part.resources.len() == 1, "{size}");
        }
        let empty: Vec<ConfigResponse> = split("v3", "8", &[], &[]).collect();
        assert_eq!(empty.len(), 1, "a version with nothing to change is still one answerable response");
        assert!(!empty[0].more);
    }
}
