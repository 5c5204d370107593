//! Cluster state from the Kubernetes API: kube-runtime watchers on Services, EndpointSlices
//! (`discovery.k8s.io/v1`) and Nodes, folded into one [`ClusterState`].
//!
//! - No cluster state is published until each of the three watchers has completed its first full
//!   list, so herald never plans Services from a partial (or empty) cluster at start-up. The Nodes
//!   alone are published before that (`nodes_listed`), as soon as they are listed: the range
//!   routes depend on nothing else, and in a large cluster the Services take seconds longer.
//! - A list (the first one, or a re-list after `410 Gone`) is buffered per kind and swapped in whole
//!   at `InitDone`; `Apply` / `Delete` events change the state in place. Updates that do not change
//!   what herald reads (a Node heartbeat, a Service status that is not a load-balancer IP) change
//!   nothing and publish nothing.
//! - The state is a persistent map: a published copy shares all of it, and a change after
//!   publication copies only the path to the object changed.
//! - A change is published at once, with every other event already received; publications are at
//!   least `min_interval` (5 ms) apart, so a burst of events gives a few new states, not one per
//!   event, and a lone change waits for nothing.
//! - Errors never withdraw anything: the last published state stays, the error is put in
//!   `status.last_error`, the watcher backs off (kube's default backoff: 0.8 s doubling to 30 s,
//!   jittered) and resumes from its last resourceVersion. A `410 Gone` (the resourceVersion was
//!   compacted away) is not an error: the watcher re-lists at once. While an error is set, a cheap
//!   probe (a list of one object of the failing kind) runs every `probe_interval` and clears the
//!   error when the API server answers again, since a resumed watch that has nothing to report
//!   would otherwise never say that it is back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::utils::StreamBackoff;
use kube::runtime::watcher::{self, DefaultBackoff};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{ClusterSource, SourceSnapshot};
use crate::cluster::{ClusterState, EndpointSlice, Node, ObjectKey, Objects, Service};
use crate::config::KubernetesSourceConfig;
use crate::convert::{from_endpoint_slice, from_node, from_service};

/// The least time between two publications of the cluster state, unless configured otherwise.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(5);

/// How many events already received are applied before the loop looks at anything else.
const MAX_EVENTS_AT_ONCE: usize = 1024;

/// The source's name in `GetStatus`.
pub const SOURCE_NAME: &str = "kubernetes";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes API configuration: not in a cluster ({in_cluster}), and no usable kubeconfig \
         ($KUBECONFIG or ~/.kube/config: {kubeconfig})"
    )]
    NotFound {
        in_cluster: String,
        kubeconfig: String,
    },
    #[error("cannot make a Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The Kubernetes client herald uses for its watchers and its Events.
///
/// With `kubeconfig` set, that file (its current context); otherwise the in-cluster config (the
/// pod's ServiceAccount), and failing that `$KUBECONFIG` / `~/.kube/config`.
///
/// kube's request-level retry of 429/503/504 is turned off: it retries up to 15 times over minutes,
/// during which an unavailable API server would not show in `status.last_error`. The watchers have
/// their own backoff, and the event recorder retries on its own.
pub async fn client(config: &KubernetesSourceConfig) -> Result<Client, ClientError> {
    let mut kube_config = match &config.kubeconfig {
        Some(path) => {
            let error = |source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
        None => match kube::Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => kube::Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|kubeconfig| ClientError::NotFound {
                    in_cluster: in_cluster.to_string(),
                    kubeconfig: kubeconfig.to_string(),
                })?,
        },
    };
    kube_config.default_retry = false;
    Ok(Client::try_from(kube_config)?)
}

/// Watches Services, EndpointSlices and Nodes cluster-wide and publishes the cluster state.
pub struct KubernetesSource {
    client: Client,
    min_interval: Duration,
    probe_interval: Duration,
    watcher_config: watcher::Config,
}

impl KubernetesSource {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            min_interval: DEFAULT_MIN_INTERVAL,
            probe_interval: Duration::from_secs(2),
            watcher_config: watcher::Config::default(),
        }
    }

    /// The least time between two publications (default 5 ms): changes arriving meanwhile are
    /// published together when it has passed.
    pub fn with_min_interval(mut self, min_interval: Duration) -> Self {
        self.min_interval = min_interval;
        self
    }

    /// How often, while a watcher is failing, herald checks whether the API server is back
    /// (default 2 s).
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// The watchers' list/watch parameters (default: kube's, with bookmarks and pages of 500).
    pub fn with_watcher_config(mut self, config: watcher::Config) -> Self {
        self.watcher_config = config;
        self
    }
}

/// The three kinds herald watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services = 0,
    EndpointSlices = 1,
    Nodes = 2,
}

const KINDS: [Kind; 3] = [Kind::Services, Kind::EndpointSlices, Kind::Nodes];

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::Nodes => "nodes",
        }
    }
}

/// One watcher event, already converted to the cluster model.
enum Step<M> {
    /// A (re-)list starts.
    Init,
    InitApply(M),
    /// The list is complete: it replaces what herald had of this kind.
    InitDone,
    Apply(M),
    Delete(M),
    /// 410 Gone: the watcher re-lists (an `Init` follows).
    Expired,
    Error(String),
}

/// One step of one of the three watches (Services, EndpointSlices, Nodes), as the merged stream
/// carries it.
enum WatchEvent {
    Service(Step<Service>),
    EndpointSlice(Step<EndpointSlice>),
    Node(Step<Node>),
}

/// A cluster-model type and where it lives in [`ClusterState`].
trait Model: Clone + PartialEq + Send + Sync + 'static {
    type Key: Ord + Clone + Send + Sync;
    const KIND: Kind;
    fn key(&self) -> Self::Key;
    fn map(state: &ClusterState) -> &Objects<Self::Key, Self>;
    fn map_mut(state: &mut ClusterState) -> &mut Objects<Self::Key, Self>;
    fn buffer(buffers: &mut Buffers) -> &mut Option<Objects<Self::Key, Self>>;
}

#[derive(Default)]
struct Buffers {
    services: Option<Objects<ObjectKey, Service>>,
    endpoint_slices: Option<Objects<ObjectKey, EndpointSlice>>,
    nodes: Option<Objects<String, Node>>,
}

impl Model for Service {
    type Key = ObjectKey;
    const KIND: Kind = Kind::Services;
    fn key(&self) -> ObjectKey {
        self.key.clone()
    }
    fn map(state: &ClusterState) -> &Objects<ObjectKey, Self> {
        &state.services
    }
    fn map_mut(state: &mut ClusterState) -> &mut Objects<ObjectKey, Self> {
        &mut state.services
    }
    fn buffer(buffers: &mut Buffers) -> &mut Option<Objects<ObjectKey, Self>> {
        &mut buffers.services
    }
}

impl Model for EndpointSlice {
    type Key = ObjectKey;
    const KIND: Kind = Kind::EndpointSlices;
    fn key(&self) -> ObjectKey {
        self.key.clone()
    }
    fn map(state: &ClusterState) -> &Objects<ObjectKey, Self> {
        &state.endpoint_slices
    }
    fn map_mut(state: &mut ClusterState) -> &mut Objects<ObjectKey, Self> {
        &mut state.endpoint_slices
    }
    fn buffer(buffers: &mut Buffers) -> &mut Option<Objects<ObjectKey, Self>> {
        &mut buffers.endpoint_slices
    }
}

impl Model for Node {
    type Key = String;
    const KIND: Kind = Kind::Nodes;
    fn key(&self) -> String {
        self.name.clone()
    }
    fn map(state: &ClusterState) -> &Objects<String, Self> {
        &state.nodes
    }
    fn map_mut(state: &mut ClusterState) -> &mut Objects<String, Self> {
        &mut state.nodes
    }
    fn buffer(buffers: &mut Buffers) -> &mut Option<Objects<String, Self>> {
        &mut buffers.nodes
    }
}

/// A watcher on one kind, converted with the shared conversion and backed off on errors. A 410 is
/// turned into [`Step::Expired`] before the backoff sees it, so that the re-list starts at once.
fn watch_kind<K, M>(
    api: Api<K>,
    config: watcher::Config,
    convert: fn(&K) -> M,
    wrap: fn(Step<M>) -> WatchEvent,
) -> impl Stream<Item = WatchEvent> + Send + 'static
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    M: Send + 'static,
{
    let steps = watcher::watcher(api, config).map(move |event| match event {
        Ok(watcher::Event::Init) => Ok(Step::Init),
        Ok(watcher::Event::InitApply(object)) => Ok(Step::InitApply(convert(&object))),
        Ok(watcher::Event::InitDone) => Ok(Step::InitDone),
        Ok(watcher::Event::Apply(object)) => Ok(Step::Apply(convert(&object))),
        Ok(watcher::Event::Delete(object)) => Ok(Step::Delete(convert(&object))),
        Err(watcher::Error::WatchError(status)) if status.code == 410 => Ok(Step::Expired),
        Err(error) => Err(describe(&error)),
    });
    StreamBackoff::new(steps, DefaultBackoff::default())
        .map(move |step| wrap(step.unwrap_or_else(Step::Error)))
}

/// A watcher error in one line: what failed, then the API's Status or the transport's error chain.
fn describe(error: &watcher::Error) -> String {
    use watcher::Error as E;
    let (what, inner) = match error {
        E::InitialListFailed(e) => ("list failed", e),
        E::WatchStartFailed(e) => ("watch failed to start", e),
        E::WatchFailed(e) => ("watch failed", e),
        E::WatchError(status) => {
            return format!(
                "watch error: HTTP {} {}: {}",
                status.code, status.reason, status.message
            );
        }
        E::NoResourceVersion => return error.to_string(),
    };
    let detail = match inner {
        kube::Error::Api(status) => {
            format!("HTTP {} {}: {}", status.code, status.reason, status.message)
        }
        other => error_chain(other),
    };
    format!("{what}: {detail}")
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Per-kind progress.
#[derive(Default)]
struct KindStatus {
    synced: bool,
    error: Option<String>,
    /// Bumped on every error, so that a probe started before an error cannot clear it.
    error_seq: u64,
}

type ProbeFuture = Pin<Box<dyn Future<Output = Vec<(Kind, u64, Result<(), String>)>> + Send>>;

struct Tracker {
    /// Published by copy after each change: a copy shares everything (see [`ClusterState`]).
    state: ClusterState,
    buffers: Buffers,
    kinds: [KindStatus; 3],
    /// Something changed since the last publication (or nothing was published yet).
    dirty: bool,
    published: bool,
    /// The Nodes last published as `nodes_listed`, before the first complete state.
    nodes_published: Option<Objects<String, Node>>,
}

impl Tracker {
    fn all_synced(&self) -> bool {
        self.kinds.iter().all(|k| k.synced)
    }

    /// Before the first complete state, once the Nodes are listed: a state of the Nodes alone, if
    /// they differ from the ones last published so.
    fn nodes_to_publish(&mut self) -> Option<ClusterState> {
        if self.published || !self.kinds[Kind::Nodes as usize].synced {
            return None;
        }
        if self.nodes_published.as_ref() == Some(&self.state.nodes) {
            return None;
        }
        self.nodes_published = Some(self.state.nodes.clone());
        Some(ClusterState {
            nodes: self.state.nodes.clone(),
            ..ClusterState::default()
        })
    }

    fn last_error(&self) -> Option<String> {
        let errors: Vec<String> = KINDS
            .iter()
            .filter_map(|&kind| {
                self.kinds[kind as usize]
                    .error
                    .as_ref()
                    .map(|e| format!("{}: {e}", kind.as_str()))
            })
            .collect();
        (!errors.is_empty()).then(|| errors.join("; "))
    }

    fn clear_error(&mut self, kind: Kind) {
        let status = &mut self.kinds[kind as usize];
        if status.error.take().is_some() {
            info!(
                source = SOURCE_NAME,
                kind = kind.as_str(),
                "watch is working again"
            );
        }
    }

    fn apply<M: Model>(&mut self, step: Step<M>) {
        let kind = M::KIND;
        match step {
            Step::Init => {
                debug!(kind = kind.as_str(), "list started");
                *M::buffer(&mut self.buffers) = Some(Objects::default());
            }
            Step::InitApply(object) => {
                let buffer = M::buffer(&mut self.buffers).get_or_insert_with(Objects::default);
                buffer.insert(object.key(), Arc::new(object));
                // A large cluster's first list takes a while: say how far it is.
                if buffer.len() % 10_000 == 0 {
                    info!(
                        source = SOURCE_NAME,
                        kind = kind.as_str(),
                        objects = buffer.len(),
                        "listing"
                    );
                }
            }
            Step::InitDone => {
                let listed = M::buffer(&mut self.buffers).take().unwrap_or_default();
                let first = !self.kinds[kind as usize].synced;
                info!(
                    source = SOURCE_NAME,
                    kind = kind.as_str(),
                    objects = listed.len(),
                    relist = !first,
                    "list complete"
                );
                if M::map(&self.state) != &listed {
                    *M::map_mut(&mut self.state) = listed;
                    self.dirty = true;
                }
                self.kinds[kind as usize].synced = true;
                self.clear_error(kind);
            }
            Step::Apply(object) => {
                let key = object.key();
                if M::map(&self.state).get(&key).map(|o| &**o) != Some(&object) {
                    M::map_mut(&mut self.state).insert(key, Arc::new(object));
                    self.dirty = true;
                }
                self.clear_error(kind);
            }
            Step::Delete(object) => {
                let key = object.key();
                if M::map(&self.state).contains_key(&key) {
                    M::map_mut(&mut self.state).remove(&key);
                    self.dirty = true;
                }
                self.clear_error(kind);
            }
            Step::Expired => {
                info!(
                    source = SOURCE_NAME,
                    kind = kind.as_str(),
                    "resourceVersion expired (410 Gone); re-listing"
                );
            }
            Step::Error(error) => {
                let status = &mut self.kinds[kind as usize];
                status.error_seq += 1;
                if status.error.as_deref() != Some(error.as_str()) {
                    warn!(source = SOURCE_NAME, kind = kind.as_str(), %error,
                          "watch failed; keeping the last state and retrying");
                    status.error = Some(error);
                }
            }
        }
    }

    fn apply_change(&mut self, change: WatchEvent) {
        match change {
            WatchEvent::Service(step) => self.apply(step),
            WatchEvent::EndpointSlice(step) => self.apply(step),
            WatchEvent::Node(step) => self.apply(step),
        }
    }
}

/// Lists at most one object of each failing kind: whether the API server answers again.
fn probe(client: Client, kinds: Vec<(Kind, u64)>) -> ProbeFuture {
    Box::pin(async move {
        let params = ListParams::default().limit(1);
        let mut results = Vec::new();
        for (kind, seq) in kinds {
            let list = async {
                match kind {
                    Kind::Services => Api::<core::Service>::all(client.clone())
                        .list_metadata(&params)
                        .await
                        .map(drop),
                    Kind::EndpointSlices => Api::<discovery::EndpointSlice>::all(client.clone())
                        .list_metadata(&params)
                        .await
                        .map(drop),
                    Kind::Nodes => Api::<core::Node>::all(client.clone())
                        .list_metadata(&params)
                        .await
                        .map(drop),
                }
            };
            let result = match tokio::time::timeout(Duration::from_secs(10), list).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
            results.push((kind, seq, result));
        }
        results
    })
}

impl ClusterSource for KubernetesSource {
    async fn run(self, updates: watch::Sender<SourceSnapshot>) {
        updates.send_modify(|s| s.status.name = SOURCE_NAME.to_string());
        let config = self.watcher_config.clone();
        let mut changes = futures::stream::select_all([
            watch_kind(
                Api::<core::Service>::all(self.client.clone()),
                config.clone(),
                from_service,
                WatchEvent::Service,
            )
            .boxed(),
            watch_kind(
                Api::<discovery::EndpointSlice>::all(self.client.clone()),
                config.clone(),
                from_endpoint_slice,
                WatchEvent::EndpointSlice,
            )
            .boxed(),
            watch_kind(
                Api::<core::Node>::all(self.client.clone()),
                config,
                from_node,
                WatchEvent::Node,
            )
            .boxed(),
        ]);

        let mut tracker = Tracker {
            state: ClusterState::default(),
            buffers: Buffers::default(),
            kinds: Default::default(),
            dirty: false,
            published: false,
            nodes_published: None,
        };
        let mut publish_at: Option<Instant> = None;
        let mut last_published: Option<Instant> = None;
        let mut probing: Option<ProbeFuture> = None;
        let mut next_probe = Instant::now();
        let mut reported_error: Option<String> = None;

        loop {
            let probe_due = probing.is_none() && tracker.kinds.iter().any(|k| k.error.is_some());
            tokio::select! {
                change = changes.next() => match change {
                    Some(change) => {
                        tracker.apply_change(change);
                        // And whatever else has arrived, to publish it together (bounded: a
                        // first list of a large cluster must not hold up the loop).
                        for _ in 0..MAX_EVENTS_AT_ONCE {
                            match changes.next().now_or_never() {
                                Some(Some(change)) => tracker.apply_change(change),
                                _ => break,
                            }
                        }
                    }
                    None => return, // the watchers never end
                },
                () = tokio::time::sleep_until(publish_at.unwrap_or_else(Instant::now)), if publish_at.is_some() => {
                    publish_at = None;
                    last_published = Some(Instant::now());
                    tracker.dirty = false;
                    let first = !tracker.published;
                    tracker.published = true;
                    let cluster = Arc::new(tracker.state.clone());
                    if first {
                        info!(source = SOURCE_NAME, services = cluster.services.len(), nodes = cluster.nodes.len(),
                              endpoint_slices = cluster.endpoint_slices.len(), "first cluster state published");
                    } else {
                        debug!(services = cluster.services.len(), endpoint_slices = cluster.endpoint_slices.len(),
                               "cluster state published");
                    }
                    updates.send_modify(|s| {
                        s.cluster = Some(cluster);
                        s.nodes_listed = None;
                        s.version += 1;
                        s.status.synced = true;
                        s.status.last_update = Some(SystemTime::now());
                    });
                }
                () = tokio::time::sleep_until(next_probe), if probe_due => {
                    let failing = KINDS.iter()
                        .filter(|&&k| tracker.kinds[k as usize].error.is_some())
                        .map(|&k| (k, tracker.kinds[k as usize].error_seq))
                        .collect();
                    probing = Some(probe(self.client.clone(), failing));
                }
                results = async { probing.as_mut().expect("guarded").await }, if probing.is_some() => {
                    probing = None;
                    next_probe = Instant::now() + self.probe_interval;
                    for (kind, seq, result) in results {
                        match result {
                            Ok(()) if tracker.kinds[kind as usize].error_seq == seq => tracker.clear_error(kind),
                            Ok(()) => {}
                            Err(error) => debug!(kind = kind.as_str(), %error, "API server still failing"),
                        }
                    }
                }
                () = updates.closed() => return,
            }

            if !tracker.all_synced() {
                if let Some(nodes) = tracker.nodes_to_publish() {
                    info!(
                        source = SOURCE_NAME,
                        nodes = nodes.nodes.len(),
                        "Nodes listed; publishing them for the ranges while the Services and EndpointSlices list"
                    );
                    // Not a cluster state: `version` counts those.
                    updates.send_modify(|s| s.nodes_listed = Some(Arc::new(nodes)));
                }
            }
            // The first complete state is published even when it is empty.
            if (tracker.dirty || !tracker.published) && tracker.all_synced() && publish_at.is_none()
            {
                let now = Instant::now();
                publish_at =
                    Some(last_published.map_or(now, |at| (at + self.min_interval).max(now)));
            }
            let error = tracker.last_error();
            if error != reported_error {
                if error.is_none() {
                    info!(source = SOURCE_NAME, "Kubernetes API reachable again");
                }
                reported_error = error.clone();
                updates.send_modify(|s| s.status.last_error = error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn tracker() -> Tracker {
        Tracker {
            state: ClusterState::default(),
            buffers: Buffers::default(),
            kinds: Default::default(),
            dirty: false,
            published: false,
            nodes_published: None,
        }
    }

    fn node(name: &str, ready: bool) -> Node {
        Node {
            name: name.to_string(),
            labels: BTreeMap::new(),
            ready,
            internal_ips: vec!["10.0.0.1".parse().unwrap()],
        }
    }

    fn service(name: &str) -> Service {
        Service {
            key: ObjectKey::new("ns", name),
            type_: crate::cluster::ServiceType::ClusterIP,
            ..Default::default()
        }
    }

    fn list<M: Model>(t: &mut Tracker, objects: Vec<M>) {
        t.apply::<M>(Step::Init);
        for object in objects {
            t.apply(Step::InitApply(object));
        }
        t.apply::<M>(Step::InitDone);
    }

    #[test]
    fn synced_only_when_every_kind_has_listed() {
        let mut t = tracker();
        list(&mut t, vec![service("a")]);
        list::<Node>(&mut t, vec![]);
        assert!(!t.all_synced());
        list::<EndpointSlice>(&mut t, vec![]);
        assert!(t.all_synced());
    }

    #[test]
    fn the_nodes_are_published_alone_until_the_first_complete_state() {
        let mut t = tracker();
        list(&mut t, vec![service("a")]);
        assert!(
            t.nodes_to_publish().is_none(),
            "the Nodes are not listed yet"
        );
        list(&mut t, vec![node("n1", true), node("n2", true)]);
        let nodes = t.nodes_to_publish().expect("the Nodes, listed");
        assert_eq!(nodes.nodes.keys().collect::<Vec<_>>(), ["n1", "n2"]);
        assert!(
            nodes.services.is_empty() && nodes.endpoint_slices.is_empty(),
            "the Nodes alone: a Service of a list under way is never planned"
        );
        assert!(t.nodes_to_publish().is_none(), "unchanged: not again");
        t.apply(Step::Apply(node("n2", false)));
        assert!(!t.nodes_to_publish().unwrap().nodes["n2"].ready);
        t.published = true;
        t.apply(Step::Apply(node("n3", true)));
        assert!(
            t.nodes_to_publish().is_none(),
            "after the first complete state, never"
        );
    }

    #[test]
    fn a_list_is_applied_whole_at_init_done() {
        let mut t = tracker();
        list(&mut t, vec![node("n1", true), node("n2", true)]);
        // A re-list: n2 is gone (its Delete was missed), n3 is new. Nothing changes before InitDone.
        t.apply::<Node>(Step::Init);
        t.apply(Step::InitApply(node("n1", true)));
        t.apply(Step::InitApply(node("n3", true)));
        assert_eq!(t.state.nodes.keys().collect::<Vec<_>>(), ["n1", "n2"]);
        t.apply::<Node>(Step::InitDone);
        assert_eq!(t.state.nodes.keys().collect::<Vec<_>>(), ["n1", "n3"]);
    }

    #[test]
    fn unchanged_objects_and_identical_relists_are_not_changes() {
        let mut t = tracker();
        list(&mut t, vec![node("n1", true)]);
        t.dirty = false;
        t.apply(Step::Apply(node("n1", true)));
        list(&mut t, vec![node("n1", true)]);
        t.apply(Step::Delete(node("absent", true)));
        assert!(!t.dirty);
        t.apply(Step::Apply(node("n1", false)));
        assert!(t.dirty);
    }

    #[test]
    fn a_published_state_is_copied_on_write_not_changed() {
        let mut t = tracker();
        list(&mut t, vec![service("a")]);
        let published = t.state.clone();
        t.apply(Step::Apply(service("b")));
        assert_eq!(
            published.services.len(),
            1,
            "the published state must not change"
        );
        assert_eq!(t.state.services.len(), 2);
        assert_eq!(published.changes_to(&t.state).len(), 1);
    }

    #[test]
    fn errors_are_per_kind_and_clear_on_the_next_event() {
        let mut t = tracker();
        t.apply::<Service>(Step::Error("list failed: HTTP 503".to_string()));
        t.apply::<Node>(Step::Error("watch failed: refused".to_string()));
        assert_eq!(
            t.last_error().unwrap(),
            "services: list failed: HTTP 503; nodes: watch failed: refused"
        );
        list::<Service>(&mut t, vec![]);
        assert_eq!(t.last_error().unwrap(), "nodes: watch failed: refused");
        t.apply(Step::Apply(node("n1", true)));
        assert_eq!(t.last_error(), None);
        // A 410 is not an error.
        t.apply::<Node>(Step::Expired);
        assert_eq!(t.last_error(), None);
    }
}
