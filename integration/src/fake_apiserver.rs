//! A small Kubernetes API server for tests: plain HTTP on 127.0.0.1, reached by the real kube client
//! through a kubeconfig it writes.
//!
//! It serves what herald reads, with the API's semantics where herald depends on them:
//! - list and watch of Services (`/api/v1`), EndpointSlices (`/apis/discovery.k8s.io/v1`) and Nodes,
//!   cluster-wide and per namespace, and `get` of one object;
//! - one resourceVersion counter for all kinds (like etcd's revision), stamped on every object and
//!   every list; paginated lists (`limit` / `continue`);
//! - watches from a resourceVersion replay what happened since, then stream live changes; a
//!   resourceVersion older than the last [`compact`](FakeApiServer::compact) gets the API server's
//!   answer: HTTP 200 and a watch event `ERROR` with a 410 `Expired` Status;
//! - `allowWatchBookmarks=true` watches get a BOOKMARK with the current resourceVersion every
//!   bookmark interval (sent in order with the watch's other events, so a bookmark never gets ahead
//!   of an event);
//! - Events: POST (and merge PATCH) of `events.k8s.io/v1` and core `v1` Events, recorded for
//!   assertions;
//! - Leases (`coordination.k8s.io/v1`): get, list, create, update (PUT), merge PATCH and delete,
//!   with optimistic concurrency as the API server has it: a write that carries a resourceVersion
//!   other than the stored one gets 409 Conflict, a create of an existing name 409 AlreadyExists;
//!   every stored version is kept for assertions;
//! - failures: [`drop_watches`](FakeApiServer::drop_watches) cuts every watch connection mid-stream,
//!   [`start_outage`](FakeApiServer::start_outage) answers 503 or refuses connections outright (the
//!   listening socket is closed), [`hold_lists`](FakeApiServer::hold_lists) keeps a kind's list
//!   requests waiting.
//!
//! Label and field selectors are not applied (herald sends none).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A kind the server stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "/api/v1",
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1",
        }
    }
    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// How the server fails during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Every request gets 503 Service Unavailable (an API server behind a load balancer with no
    /// healthy backend).
    Unavailable,
    /// The listening socket is closed: connections are refused.
    Refuse,
}

/// One request, as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    /// The Accept header (`...;as=PartialObjectMetadataList;...` for metadata-only lists).
    pub accept: String,
    pub status: u16,
}

impl RequestRecord {
    pub fn is_metadata(&self) -> bool {
        self.accept.contains("as=PartialObjectMetadata")
    }
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
    /// The kind a list or watch was for.
    pub fn kind(&self) -> Option<Kind> {
        let last = self.path.rsplit('/').next()?;
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == last && self.path.starts_with(k.prefix()))
    }
}

/// An Event that herald created.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    /// `events.k8s.io/v1` or `v1`.
    pub api_version: String,
    pub namespace: String,
    /// The Event as stored (after any PATCHes).
    pub object: Value,
    /// How many PATCHes it received.
    pub patches: usize,
}

impl RecordedEvent {
    pub fn reason(&self) -> &str {
        self.object["reason"].as_str().unwrap_or_default()
    }
    pub fn type_(&self) -> &str {
        self.object["type"].as_str().unwrap_or_default()
    }
    /// `note` (events.k8s.io) or `message` (core).
    pub fn note(&self) -> &str {
        self.object["note"]
            .as_str()
            .or_else(|| self.object["message"].as_str())
            .unwrap_or_default()
    }
    /// `regarding` (events.k8s.io) or `involvedObject` (core).
    pub fn regarding(&self) -> &Value {
        if self.object.get("regarding").is_some() {
            &self.object["regarding"]
        } else {
            &self.object["involvedObject"]
        }
    }
}

enum WatchFrame {
    Event(Value),
    /// End the response cleanly (as at `timeoutSeconds`).
    Close,
    /// Cut the connection mid-stream.
    Abort,
}

struct Watcher {
    kind: Kind,
    namespace: Option<String>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<WatchFrame>,
}

/// An object as stored: its JSON value, and the same written out once. A list copies the bytes
/// instead of serializing each object again: at 100,000 objects, serializing them was most of this
/// server's work in the cold-start bench, which runs it on the 2 cores herald and gobgpd use (a
/// real API server serves its lists from elsewhere).
struct Stored {
    value: Value,
    json: Vec<u8>,
}

impl Stored {
    fn new(value: Value) -> Stored {
        let json = serde_json::to_vec(&value).expect("JSON serializes");
        Stored { value, json }
    }
}

impl std::ops::Deref for Stored {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

struct State {
    resource_version: u64,
    /// Shared with the pages of lists under way (a list is a snapshot; an object is replaced, never
    /// changed in place), so that listing tens of thousands of objects copies none.
    objects: BTreeMap<(Kind, String, String), Arc<Stored>>,
    /// (resourceVersion, kind, ADDED|MODIFIED|DELETED, object), oldest first.
    history: Vec<(u64, Kind, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410.
    compacted: u64,
    watchers: Vec<Watcher>,
    requests: Vec<RequestRecord>,
    events: Vec<RecordedEvent>,
    /// Leases by (namespace, name).
    leases: BTreeMap<(String, String), Value>,
    /// Every version of every Lease stored, oldest first (deletions not included).
    lease_versions: Vec<Value>,
    pages: HashMap<String, (u64, Vec<Arc<Stored>>)>,
    next_page: u64,
    outage: Option<Outage>,
    send_bookmarks: bool,
    next_uid: u64,
    /// Watches answered with 410 Gone.
    expired: usize,
}

struct Inner {
    state: Mutex<State>,
    /// Kinds whose list requests wait.
    held: watch::Sender<BTreeSet<Kind>>,
    /// Bumped to close every open connection.
    epoch: watch::Sender<u64>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The server. Dropping it stops it.
pub struct FakeApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    accept: Mutex<Option<JoinHandle<()>>>,
    bookmarks: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        self.bookmarks.abort();
        self.inner.epoch.send_modify(|e| *e += 1);
    }
}

impl FakeApiServer {
    /// Starts a server on a free port of 127.0.0.1 that sends bookmarks every second.
    pub async fn start() -> anyhow::Result<FakeApiServer> {
        Self::start_with_bookmarks(Duration::from_secs(1)).await
    }

    pub async fn start_with_bookmarks(
        bookmark_interval: Duration,
    ) -> anyhow::Result<FakeApiServer> {
        let listener = bind("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                resource_version: 1000,
                objects: BTreeMap::new(),
                history: Vec::new(),
                compacted: 0,
                watchers: Vec::new(),
                requests: Vec::new(),
                events: Vec::new(),
                leases: BTreeMap::new(),
                lease_versions: Vec::new(),
                pages: HashMap::new(),
                next_page: 1,
                outage: None,
                send_bookmarks: true,
                next_uid: 1,
                expired: 0,
            }),
            held: watch::channel(BTreeSet::new()).0,
            epoch: watch::channel(0).0,
        });
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig(addr))?;
        let accept = tokio::spawn(accept_loop(listener, inner.clone()));
        let bookmarks = tokio::spawn(bookmark_loop(inner.clone(), bookmark_interval));
        Ok(FakeApiServer {
            inner,
            addr,
            dir,
            accept: Mutex::new(Some(accept)),
            bookmarks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig (current context: this server) to give the kube client.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A directory that lives as long as the server, for the test's own files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.inner.lock().resource_version
    }

    /// Creates or replaces an object (any of the three kinds); returns its new resourceVersion.
    pub fn apply<K: k8s_openapi::Resource + Serialize>(&self, object: &K) -> u64 {
        self.apply_value(serde_json::to_value(object).expect("k8s-openapi objects serialize"))
    }

    /// Creates or replaces an object given as JSON (with `kind`).
    pub fn apply_value(&self, mut object: Value) -> u64 {
        let kind = object["kind"]
            .as_str()
            .and_then(Kind::from_name)
            .expect("a Service, EndpointSlice or Node");
        object["apiVersion"] = json!(kind.api_version());
        let name = object["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let namespace = if kind.namespaced() {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            object["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        let mut state = self.inner.lock();
        state.resource_version += 1;
        let rv = state.resource_version;
        let key = (kind, namespace, name);
        let existing = state.objects.get(&key).cloned();
        let uid = match existing
            .as_ref()
            .and_then(|e| e["metadata"]["uid"].as_str())
        {
            Some(uid) => uid.to_string(),
            None => {
                state.next_uid += 1;
                format!("00000000-0000-4000-8000-{:012x}", state.next_uid)
            }
        };
        object["metadata"]["uid"] = json!(uid);
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]
            .get("creationTimestamp")
            .is_none_or(Value::is_null)
        {
            object["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        let type_ = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state
            .objects
            .insert(key, Arc::new(Stored::new(object.clone())));
        state.publish(rv, kind, type_, object);
        rv
    }

    /// Deletes an object; false if there was none. `namespace` is ignored for Nodes.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let namespace = if kind.namespaced() {
            namespace.to_string()
        } else {
            String::new()
        };
        let mut state = self.inner.lock();
        let Some(object) = state.objects.remove(&(kind, namespace, name.to_string())) else {
            return false;
        };
        let mut object =
            Arc::try_unwrap(object).map_or_else(|shared| shared.value.clone(), |s| s.value);
        state.resource_version += 1;
        let rv = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.publish(rv, kind, "DELETED", object);
        true
    }

    /// Forgets history up to now: a watch from an older resourceVersion gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.inner.lock();
        let rv = state.resource_version;
        state.compacted = rv;
        state.history.retain(|(v, ..)| *v > rv);
        state.pages.clear();
    }

    /// Whether watches that ask for bookmarks get them.
    pub fn set_bookmarks(&self, enabled: bool) {
        self.inner.lock().send_bookmarks = enabled;
    }

    /// Cuts every open watch connection mid-stream (no terminating chunk).
    pub fn drop_watches(&self) -> usize {
        self.end_watches(|| WatchFrame::Abort)
    }

    /// Ends every open watch cleanly, as the API server does at the watch's timeout.
    pub fn close_watches(&self) -> usize {
        self.end_watches(|| WatchFrame::Close)
    }

    fn end_watches(&self, frame: impl Fn() -> WatchFrame) -> usize {
        let mut state = self.inner.lock();
        let watchers = std::mem::take(&mut state.watchers);
        let count = watchers.iter().filter(|w| !w.tx.is_closed()).count();
        for watcher in watchers {
            let _ = watcher.tx.send(frame());
        }
        count
    }

    /// Open watch streams, per kind.
    pub fn open_watches(&self, kind: Kind) -> usize {
        let state = self.inner.lock();
        state
            .watchers
            .iter()
            .filter(|w| w.kind == kind && !w.tx.is_closed())
            .count()
    }

    /// Starts an outage: open watches are cut, and until [`end_outage`](Self::end_outage) every
    /// request gets 503 or every connection is refused.
    pub fn start_outage(&self, outage: Outage) {
        self.inner.lock().outage = Some(outage);
        self.drop_watches();
        if outage == Outage::Refuse {
            if let Some(task) = self.accept.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
            // Close every connection, idle keep-alive ones included.
            self.inner.epoch.send_modify(|e| *e += 1);
        }
    }

    /// Ends an outage; the server listens on the same address again.
    pub async fn end_outage(&self) -> anyhow::Result<()> {
        let outage = self.inner.lock().outage.take();
        if outage == Some(Outage::Refuse) {
            // The port was ours a moment ago; retry briefly in case the kernel is slow to free it.
            let mut attempts = 0;
            let listener = loop {
                match bind(self.addr) {
                    Ok(listener) => break listener,
                    Err(e) if attempts < 50 => {
                        attempts += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            let task = tokio::spawn(accept_loop(listener, self.inner.clone()));
            *self.accept.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(())
    }

    /// Makes list requests for `kind` wait until [`release_lists`](Self::release_lists).
    pub fn hold_lists(&self, kind: Kind) {
        self.inner.held.send_modify(|held| {
            held.insert(kind);
        });
    }

    pub fn release_lists(&self, kind: Kind) {
        self.inner.held.send_modify(|held| {
            held.remove(&kind);
        });
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.inner.lock().requests.clone()
    }

    /// Completed (200) full-object list requests for a kind, pages counted once (first page only).
    pub fn list_count(&self, kind: Kind) -> usize {
        self.count(|r| {
            r.status == 200 && !r.is_watch() && !r.is_metadata() && r.kind() == Some(kind)
        }) - self.count(|r| {
            r.status == 200
                && r.query.contains_key("continue")
                && !r.is_metadata()
                && r.kind() == Some(kind)
        })
    }

    /// Metadata-only list requests for a kind (whatever their answer).
    pub fn metadata_list_count(&self, kind: Kind) -> usize {
        self.count(|r| !r.is_watch() && r.is_metadata() && r.kind() == Some(kind))
    }

    fn count(&self, filter: impl Fn(&RequestRecord) -> bool) -> usize {
        self.inner
            .lock()
            .requests
            .iter()
            .filter(|r| r.method == "GET" && filter(r))
            .count()
    }

    /// Watch requests for a kind that were answered 200.
    pub fn watch_count(&self, kind: Kind) -> usize {
        self.inner
            .lock()
            .requests
            .iter()
            .filter(|r| {
                r.method == "GET" && r.status == 200 && r.is_watch() && r.kind() == Some(kind)
            })
            .count()
    }

    /// Watches answered with 410 Gone (their resourceVersion was compacted away).
    pub fn expired_watches(&self) -> usize {
        self.inner.lock().expired
    }

    /// Every stored object (Services, EndpointSlices, Nodes) as the API serves it.
    pub fn objects(&self) -> Vec<Value> {
        self.inner
            .lock()
            .objects
            .values()
            .map(|o| Value::clone(o))
            .collect()
    }

    /// The Events created so far.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.inner.lock().events.clone()
    }

    /// A Lease as stored now.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .leases
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every version a Lease was stored in, oldest first.
    pub fn lease_versions(&self, namespace: &str, name: &str) -> Vec<Value> {
        let state = self.inner.lock();
        state
            .lease_versions
            .iter()
            .filter(|l| l["metadata"]["namespace"] == namespace && l["metadata"]["name"] == name)
            .cloned()
            .collect()
    }
}

impl State {
    fn publish(&mut self, rv: u64, kind: Kind, type_: &'static str, object: Value) {
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        self.watchers.retain(|w| !w.tx.is_closed());
        for watcher in &self.watchers {
            if watcher.kind == kind
                && (watcher.namespace.is_none() || watcher.namespace == namespace)
            {
                let _ = watcher
                    .tx
                    .send(WatchFrame::Event(json!({"type": type_, "object": object})));
            }
        }
        self.history.push((rv, kind, type_, object));
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

fn kubeconfig(addr: SocketAddr) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
users:
- name: fake
  user:
    token: fake-token
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
"
    )
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let inner = inner.clone();
        let mut epoch = inner.epoch.subscribe();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(handle(inner, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = epoch.changed() => {} // dropped: the socket closes
            }
        });
    }
}

async fn bookmark_loop(inner: Arc<Inner>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let mut state = inner.lock();
        if !state.send_bookmarks || state.outage.is_some() {
            continue;
        }
        let rv = state.resource_version.to_string();
        state.watchers.retain(|w| !w.tx.is_closed());
        for watcher in state.watchers.iter().filter(|w| w.bookmarks) {
            let bookmark = json!({
                "type": "BOOKMARK",
                "object": {
                    "kind": watcher.kind.name(),
                    "apiVersion": watcher.kind.api_version(),
                    "metadata": {"resourceVersion": rv},
                },
            });
            let _ = watcher.tx.send(WatchFrame::Event(bookmark));
        }
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    full_bytes(status, body.to_string().into_bytes())
}

fn full_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("valid response")
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

/// What a path names.
enum Target {
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    Object {
        kind: Kind,
        namespace: String,
        name: String,
    },
    Events {
        api_version: &'static str,
        namespace: String,
        name: Option<String>,
    },
    Leases {
        namespace: String,
        name: Option<String>,
    },
    Version,
}

fn route(path: &str) -> Option<Target> {
    if path == "/version" {
        return Some(Target::Version);
    }
    if let Some(rest) = path.strip_prefix("/apis/coordination.k8s.io/v1/namespaces/") {
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        return match parts.as_slice() {
            [ns, "leases"] => Some(Target::Leases {
                namespace: ns.to_string(),
                name: None,
            }),
            [ns, "leases", name] => Some(Target::Leases {
                namespace: ns.to_string(),
                name: Some(name.to_string()),
            }),
            _ => None,
        };
    }
    let (api_version, rest): (&'static str, &str) =
        if let Some(rest) = path.strip_prefix("/api/v1/") {
            ("v1", rest)
        } else if let Some(rest) = path.strip_prefix("/apis/discovery.k8s.io/v1/") {
            ("discovery.k8s.io/v1", rest)
        } else if let Some(rest) = path.strip_prefix("/apis/events.k8s.io/v1/") {
            ("events.k8s.io/v1", rest)
        } else {
            return None;
        };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let kind_of = |plural: &str| {
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.api_version() == api_version)
    };
    match parts.as_slice() {
        ["namespaces", ns, "events"] if api_version != "discovery.k8s.io/v1" => {
            Some(Target::Events {
                api_version,
                namespace: ns.to_string(),
                name: None,
            })
        }
        ["namespaces", ns, "events", name] if api_version != "discovery.k8s.io/v1" => {
            Some(Target::Events {
                api_version,
                namespace: ns.to_string(),
                name: Some(name.to_string()),
            })
        }
        [plural] => kind_of(plural).map(|kind| Target::Collection {
            kind,
            namespace: None,
        }),
        ["namespaces", ns, plural] => {
            kind_of(plural)
                .filter(|k| k.namespaced())
                .map(|kind| Target::Collection {
                    kind,
                    namespace: Some(ns.to_string()),
                })
        }
        ["namespaces", ns, plural, name] => {
            kind_of(plural)
                .filter(|k| k.namespaced())
                .map(|kind| Target::Object {
                    kind,
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
        }
        [plural, name] => kind_of(plural)
            .filter(|k| !k.namespaced())
            .map(|kind| Target::Object {
                kind,
                namespace: String::new(),
                name: name.to_string(),
            }),
        _ => None,
    }
}

async fn handle(inner: Arc<Inner>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let accept = header(hyper::header::ACCEPT);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let response = match route(&path) {
        Some(Target::Leases { namespace, name }) if inner.lock().outage.is_none() => {
            leases(&inner, &method, &namespace, name, &content_type, &body)
        }
        _ => respond(&inner, &method, &path, &query, &accept, &body).await,
    };
    inner.lock().requests.push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        accept,
        status: response.status().as_u16(),
    });
    response
}

async fn respond(
    inner: &Arc<Inner>,
    method: &Method,
    path: &str,
    query: &BTreeMap<String, String>,
    accept: &str,
    body: &Bytes,
) -> Response<Body> {
    if inner.lock().outage == Some(Outage::Unavailable) {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    let Some(target) = route(path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    match (method, target) {
        (&Method::GET, Target::Version) => full(
            StatusCode::OK,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-fake", "platform": "linux/amd64"}),
        ),
        (&Method::GET, Target::Collection { kind, namespace }) => {
            let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
            if watching {
                watch(inner, kind, namespace, query)
            } else {
                let mut held = inner.held.subscribe();
                let _ = held.wait_for(|held| !held.contains(&kind)).await;
                list(
                    inner,
                    kind,
                    namespace,
                    query,
                    accept.contains("as=PartialObjectMetadataList"),
                )
            }
        }
        (
            &Method::GET,
            Target::Object {
                kind,
                namespace,
                name,
            },
        ) => match inner.lock().objects.get(&(kind, namespace, name.clone())) {
            Some(object) => full(StatusCode::OK, object),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("{} \"{name}\" not found", kind.plural()),
            ),
        },
        (
            &Method::POST,
            Target::Events {
                api_version,
                namespace,
                name: None,
            },
        ) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body is not JSON",
                );
            };
            let mut state = inner.lock();
            state.resource_version += 1;
            state.next_uid += 1;
            object["metadata"]["namespace"] = json!(namespace);
            object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
            object["metadata"]["uid"] =
                json!(format!("00000000-0000-4000-9000-{:012x}", state.next_uid));
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if name.is_empty() {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value",
                );
            }
            if state
                .events
                .iter()
                .any(|e| e.namespace == namespace && e.object["metadata"]["name"] == json!(name))
            {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("events \"{name}\" already exists"),
                );
            }
            state.events.push(RecordedEvent {
                api_version: api_version.to_string(),
                namespace,
                object: object.clone(),
                patches: 0,
            });
            full(StatusCode::CREATED, &object)
        }
        (
            &Method::PATCH,
            Target::Events {
                namespace,
                name: Some(name),
                ..
            },
        ) => {
            let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the body is not JSON",
                );
            };
            let mut state = inner.lock();
            let Some(event) = state
                .events
                .iter_mut()
                .find(|e| e.namespace == namespace && e.object["metadata"]["name"] == json!(name))
            else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("events \"{name}\" not found"),
                );
            };
            merge(&mut event.object, &patch);
            event.patches += 1;
            let object = event.object.clone();
            full(StatusCode::OK, &object)
        }
        (
            &Method::GET,
            Target::Events {
                namespace,
                name: None,
                ..
            },
        ) => {
            let state = inner.lock();
            let items: Vec<Value> = state
                .events
                .iter()
                .filter(|e| e.namespace == namespace)
                .map(|e| e.object.clone())
                .collect();
            full(
                StatusCode::OK,
                &json!({"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}),
            )
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path}"),
        ),
    }
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

fn list(
    inner: &Arc<Inner>,
    kind: Kind,
    namespace: Option<String>,
    query: &BTreeMap<String, String>,
    metadata_only: bool,
) -> Response<Body> {
    let mut state = inner.lock();
    let (rv, items) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => match state.pages.remove(token) {
            Some(page) => page,
            None => {
                return status(
                    StatusCode::GONE,
                    "Expired",
                    "the provided continue parameter is too old to display a consistent list result",
                );
            }
        },
        None => {
            let items: Vec<Arc<Stored>> = state
                .objects
                .iter()
                .filter(|((k, ns, _), _)| *k == kind && namespace.as_ref().is_none_or(|n| n == ns))
                .map(|(_, object)| object.clone())
                .collect();
            (state.resource_version, items)
        }
    };
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (page, rest) = match limit {
        Some(limit) if items.len() > limit => {
            let mut items = items;
            let rest = items.split_off(limit);
            (items, Some(rest))
        }
        _ => (items, None),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(rest) = rest {
        let token = format!("page-{}", state.next_page);
        state.next_page += 1;
        state.pages.insert(token.clone(), (rv, rest));
        metadata["continue"] = json!(token);
    }
    if metadata_only {
        let items: Vec<Value> = page
            .iter()
            .map(|o| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]}))
            .collect();
        return full(
            StatusCode::OK,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "items": items}),
        );
    }
    // The head, then the stored objects' bytes (see [`Stored`]).
    let mut body = serde_json::to_vec(&json!({
        "kind": format!("{}List", kind.name()),
        "apiVersion": kind.api_version(),
        "metadata": metadata,
    }))
    .expect("JSON serializes");
    body.pop(); // its closing brace
    body.reserve(page.iter().map(|item| item.json.len() + 1).sum::<usize>() + 16);
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&item.json);
    }
    body.extend_from_slice(b"]}");
    full_bytes(StatusCode::OK, body)
}

fn watch(
    inner: &Arc<Inner>,
    kind: Kind,
    namespace: Option<String>,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut state = inner.lock();
        let from = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if from == 0 {
            // "Any": the current state as ADDED events, then changes.
            for ((k, ns, _), object) in &state.objects {
                if *k == kind && namespace.as_ref().is_none_or(|n| n == ns) {
                    let _ = tx.send(WatchFrame::Event(
                        json!({"type": "ADDED", "object": &object.value}),
                    ));
                }
            }
        } else if from < state.compacted {
            let expired = json!({
                "type": "ERROR",
                "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", state.compacted),
                    "reason": "Expired", "code": 410,
                },
            });
            let _ = tx.send(WatchFrame::Event(expired));
            let _ = tx.send(WatchFrame::Close);
            state.expired += 1;
        } else {
            for (rv, k, type_, object) in &state.history {
                let object_ns = object["metadata"]["namespace"].as_str();
                if *rv > from
                    && *k == kind
                    && namespace.as_deref().is_none_or(|n| Some(n) == object_ns)
                {
                    let _ = tx.send(WatchFrame::Event(json!({"type": type_, "object": object})));
                }
            }
        }
        let bookmarks = matches!(
            query.get("allowWatchBookmarks").map(String::as_str),
            Some("true" | "1")
        );
        state.watchers.push(Watcher {
            kind,
            namespace,
            bookmarks,
            tx,
        });
    }
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let deadline = tokio::time::sleep(Duration::from_secs(timeout));
    let frames = futures::stream::unfold(
        (rx, Box::pin(deadline), false),
        |(mut rx, mut deadline, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(WatchFrame::Event(event)) => {
                        let mut line = event.to_string();
                        line.push('\n');
                        Some((Ok(Frame::data(Bytes::from(line))), (rx, deadline, false)))
                    }
                    Some(WatchFrame::Close) | None => None,
                    Some(WatchFrame::Abort) => Some((
                        Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "watch dropped by the test")),
                        (rx, deadline, true),
                    )),
                },
                () = &mut deadline => None,
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(StreamBody::new(frames.boxed())))
        .expect("valid response")
}

/// The Lease API: what a leader election needs, with the API server's optimistic concurrency.
fn leases(
    inner: &Arc<Inner>,
    method: &Method,
    namespace: &str,
    name: Option<String>,
    content_type: &str,
    body: &Bytes,
) -> Response<Body> {
    let mut state = inner.lock();
    let not_found = |name: &str| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        )
    };
    let key = |name: &str| (namespace.to_string(), name.to_string());
    match (method, name) {
        (&Method::GET, None) => {
            let items: Vec<Value> = state
                .leases
                .iter()
                .filter(|((ns, _), _)| ns == namespace)
                .map(|(_, l)| l.clone())
                .collect();
            let metadata = json!({"resourceVersion": state.resource_version.to_string()});
            full(
                StatusCode::OK,
                &json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1", "metadata": metadata, "items": items}),
            )
        }
        (&Method::GET, Some(name)) => match state.leases.get(&key(&name)) {
            Some(lease) => full(StatusCode::OK, lease),
            None => not_found(&name),
        },
        (&Method::POST, None) => {
            let lease = match lease_body(body) {
                Ok(lease) => lease,
                Err(rejection) => return rejected(rejection),
            };
            let Some(name) = lease["metadata"]["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_string)
            else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "Lease.coordination.k8s.io \"\" is invalid: metadata.name: Required value",
                );
            };
            if state.leases.contains_key(&key(&name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                );
            }
            state.next_uid += 1;
            let uid = format!("00000000-0000-4000-a000-{:012x}", state.next_uid);
            state.store_lease(namespace, &name, lease, &uid, StatusCode::CREATED)
        }
        (&Method::PUT | &Method::PATCH, Some(name)) => {
            let Some(stored) = state.leases.get(&key(&name)).cloned() else {
                return not_found(&name);
            };
            let lease = if method == Method::PUT {
                match lease_body(body) {
                    Ok(lease) => lease,
                    Err(rejection) => return rejected(rejection),
                }
            } else {
                // Strategic merge equals a merge patch for a Lease's fields (no lists in its spec).
                if !matches!(
                    content_type,
                    "application/merge-patch+json" | "application/strategic-merge-patch+json"
                ) {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        &format!(
                            "this test server takes merge patches of Leases, not {content_type}"
                        ),
                    );
                }
                let Ok(patch) = serde_json::from_slice::<Value>(body) else {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is not JSON",
                    );
                };
                let mut patched = stored.clone();
                // The stored resourceVersion stays unless the patch names one (a precondition).
                merge(&mut patched, &patch);
                match lease_body(patched.to_string().as_bytes()) {
                    Ok(lease) => lease,
                    Err(rejection) => return rejected(rejection),
                }
            };
            if lease["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n != name)
            {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name of the object does not match the name on the URL",
                );
            }
            let wanted = lease["metadata"]["resourceVersion"]
                .as_str()
                .filter(|v| !v.is_empty());
            if wanted.is_some_and(|v| Some(v) != stored["metadata"]["resourceVersion"].as_str()) {
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                    ),
                );
            }
            let uid = stored["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let mut lease = lease;
            lease["metadata"]["creationTimestamp"] =
                stored["metadata"]["creationTimestamp"].clone();
            state.store_lease(namespace, &name, lease, &uid, StatusCode::OK)
        }
        (&Method::DELETE, Some(name)) => match state.leases.remove(&key(&name)) {
            Some(_) => full(
                StatusCode::OK,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ),
            None => not_found(&name),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on leases"),
        ),
    }
}

/// Why the API server turns a body down: the status code, its reason and a message.
type Rejection = (StatusCode, &'static str, String);

/// A Lease from a request body, checked as the API server's validation does for what a leader
/// election writes: 400 if it is not a Lease at all, 422 if a field is out of range.
fn lease_body(body: &[u8]) -> Result<Value, Rejection> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, "BadRequest", message);
    let lease: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let typed: k8s_openapi::api::coordination::v1::Lease = serde_json::from_value(lease.clone())
        .map_err(|e| bad(format!("the body is not a Lease: {e}")))?;
    let spec = typed.spec.unwrap_or_default();
    let invalid = |field: &str, value: i32, why: &str| {
        Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("Lease is invalid: spec.{field}: Invalid value: {value}: {why}"),
        ))
    };
    if let Some(seconds) = spec.lease_duration_seconds.filter(|s| *s <= 0) {
        return invalid("leaseDurationSeconds", seconds, "must be greater than 0");
    }
    if let Some(transitions) = spec.lease_transitions.filter(|t| *t < 0) {
        return invalid(
            "leaseTransitions",
            transitions,
            "must be greater than or equal to 0",
        );
    }
    Ok(lease)
}

fn rejected((code, reason, message): Rejection) -> Response<Body> {
    status(code, reason, &message)
}

impl State {
    /// Stores a Lease under a new resourceVersion and answers with it.
    fn store_lease(
        &mut self,
        namespace: &str,
        name: &str,
        mut lease: Value,
        uid: &str,
        code: StatusCode,
    ) -> Response<Body> {
        self.resource_version += 1;
        lease["apiVersion"] = json!("coordination.k8s.io/v1");
        lease["kind"] = json!("Lease");
        lease["metadata"]["name"] = json!(name);
        lease["metadata"]["namespace"] = json!(namespace);
        lease["metadata"]["uid"] = json!(uid);
        lease["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        if lease["metadata"]
            .get("creationTimestamp")
            .is_none_or(Value::is_null)
        {
            lease["metadata"]["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        self.leases
            .insert((namespace.to_string(), name.to_string()), lease.clone());
        self.lease_versions.push(lease.clone());
        full(code, &lease)
    }
}
