//! herald's Kubernetes source and Event recorder against a fake API server, through the real kube
//! client: initial sync, updates, deletes, re-list after 410, resumed watches, bookmarks, outages,
//! IPRefused Events, parity with the file source; the Events Lease (one leader among candidates,
//! a live Lease never taken) and `herald run` replicas and pools sharing one voice for Events.
//!
//! Every wait is bounded; figures (sync time, latencies, takeover) are printed (`--nocapture`
//! shows them).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_core::cluster::ClusterState;
use herald_core::config::{Config, KubernetesSourceConfig};
use herald_core::plan::PlanSnapshot;
use herald_integration::fake_apiserver::{FakeApiServer, Kind, Outage};
use herald_k8s::source::file::FileSource;
use herald_k8s::source::kubernetes::{KubernetesSource, client};
use herald_k8s::source::{ClusterSource, SourceSnapshot};
use herald_k8s::{from_endpoint_slice, from_node, from_service};
use herald_testkit::gobgpd::Gobgpd;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Objects

fn node(name: &str, ips: &[&str], labels: &[(&str, &str)], ready: bool) -> Value {
    let labels: BTreeMap<&str, &str> = [("kubernetes.io/hostname", name)]
        .into_iter()
        .chain(labels.iter().copied())
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "addresses": ips.iter().map(|ip| json!({"type": "InternalIP", "address": ip}))
                .chain([json!({"type": "Hostname", "address": name})]).collect::<Vec<_>>(),
            "conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": if ready { "True" } else { "False" },
                 "lastHeartbeatTime": "2025-01-01T00:00:00Z"},
            ],
        },
    })
}

fn service(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// An endpoint: (node, ready, serving, terminating).
type Ep<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

/// An EndpointSlice of `service`.
fn slice(namespace: &str, service: &str, suffix: &str, endpoints: &[Ep]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{suffix}"), "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints.iter().enumerate().map(|(i, (node, ready, serving, terminating))| json!({
            "addresses": [format!("10.244.{}.{}", i / 200, i % 200 + 10)],
            "nodeName": node,
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        })).collect::<Vec<_>>(),
        "ports": [{"port": 80, "protocol": "TCP"}],
    })
}

const READY: (Option<bool>, Option<bool>, Option<bool>) = (Some(true), Some(true), Some(false));

fn ep(node: &str, c: (Option<bool>, Option<bool>, Option<bool>)) -> Ep<'_> {
    (node, c.0, c.1, c.2)
}

/// A cluster with a bit of everything the planner distinguishes.
fn yaobank() -> Vec<Value> {
    let pool_a = [("pool", "a")];
    let draining = (Some(false), Some(true), Some(true));
    let unset = (None, None, None);
    vec![
        node("node-1", &["10.0.0.1"], &pool_a, true),
        node("node-2", &["10.0.0.2"], &pool_a, true),
        node("node-3", &["10.0.0.3"], &[("pool", "b")], true),
        node("node-4", &["10.0.0.4"], &pool_a, false),
        node(
            "node-5",
            &["10.0.0.5"],
            &[
                ("pool", "a"),
                (
                    "node.kubernetes.io/exclude-from-external-load-balancers",
                    "",
                ),
            ],
            true,
        ),
        node("node-6", &["10.0.0.6", "fd00::6"], &pool_a, true),
        service(
            "default",
            "kubernetes",
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"]}),
        ),
        service(
            "yaobank",
            "customer",
            json!({
                "type": "NodePort", "clusterIP": "10.96.38.11", "clusterIPs": ["10.96.38.11"],
                "externalIPs": ["198.19.48.10"], "externalTrafficPolicy": "Local",
                "ports": [{"port": 80, "nodePort": 30180}],
            }),
        ),
        service(
            "yaobank",
            "summary",
            json!({"type": "ClusterIP", "clusterIP": "10.96.38.28", "externalTrafficPolicy": "Local"}),
        ),
        service(
            "yaobank",
            "database",
            json!({"type": "ClusterIP", "clusterIP": "None"}),
        ),
        service(
            "yaobank",
            "docs",
            json!({"type": "ExternalName", "externalName": "docs.example.org"}),
        ),
        {
            let mut lb = service(
                "yaobank",
                "lb",
                json!({
                    "type": "LoadBalancer", "clusterIP": "10.96.40.1", "externalTrafficPolicy": "Local",
                }),
            );
            lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.19.64.5"}]}});
            lb
        },
        service(
            "yaobank",
            "bad",
            json!({
                "type": "ClusterIP", "clusterIP": "10.96.41.1", "externalIPs": ["203.0.113.7", "not-an-ip"],
            }),
        ),
        service(
            "yaobank",
            "dual",
            json!({
                "type": "ClusterIP", "clusterIPs": ["10.96.5.5", "fd00:96::5"], "ipFamilies": ["IPv4", "IPv6"],
                "externalTrafficPolicy": "Local",
            }),
        ),
        slice(
            "yaobank",
            "customer",
            "abc",
            &[ep("node-1", READY), ep("node-3", READY)],
        ),
        slice("yaobank", "summary", "xyz", &[ep("node-2", draining)]),
        slice(
            "yaobank",
            "lb",
            "1",
            &[ep("node-1", unset), ep("node-4", READY)],
        ),
        slice("yaobank", "dual", "v4", &[ep("node-6", READY)]),
    ]
}

const CONFIG: &str = "
serviceClusterIPs: [{cidr: 10.96.0.0/16}]
serviceExternalIPs: [{cidr: 198.19.48.0/20}]
serviceLoadBalancerIPs: [{cidr: 198.19.64.0/20}]
";

fn load(server: &FakeApiServer, objects: &[Value]) {
    for object in objects {
        server.apply_value(object.clone());
    }
}

/// The model of `objects`, through the shared conversion.
fn model(objects: &[Value]) -> ClusterState {
    let mut state = ClusterState::default();
    for object in objects {
        match object["kind"].as_str() {
            Some("Node") => state.insert_node(from_node(
                &serde_json::from_value::<core::Node>(object.clone()).unwrap(),
            )),
            Some("Service") => {
                let mut object = object.clone();
                if object["metadata"].get("namespace").is_none() {
                    object["metadata"]["namespace"] = json!("default");
                }
                state.insert_service(from_service(
                    &serde_json::from_value::<core::Service>(object).unwrap(),
                ))
            }
            Some("EndpointSlice") => state.insert_endpoint_slice(from_endpoint_slice(
                &serde_json::from_value::<discovery::EndpointSlice>(object.clone()).unwrap(),
            )),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    state
}

// ---------------------------------------------------------------------------------------------
// Harness

/// Every distinct cluster state the source published, with when.
type Published = Arc<Mutex<Vec<(Instant, Arc<ClusterState>)>>>;

struct Source {
    rx: watch::Receiver<SourceSnapshot>,
    published: Published,
    client: kube::Client,
    started: Instant,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Source {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Source {
    async fn start(server: &FakeApiServer) -> Source {
        Self::start_with(server, |s| s).await
    }

    async fn start_with(
        server: &FakeApiServer,
        tune: impl FnOnce(KubernetesSource) -> KubernetesSource,
    ) -> Source {
        let config = KubernetesSourceConfig {
            kubeconfig: Some(server.kubeconfig_path()),
        };
        let client = client(&config)
            .await
            .expect("a client from the fake server's kubeconfig");
        let (tx, rx) = watch::channel(SourceSnapshot::default());
        let started = Instant::now();
        let source = tokio::spawn(tune(KubernetesSource::new(client.clone())).run(tx));
        let published: Published = Arc::default();
        let log = published.clone();
        let mut follow = rx.clone();
        let logger = tokio::spawn(async move {
            let mut last: Option<Arc<ClusterState>> = None;
            loop {
                let cluster = follow.borrow_and_update().cluster.clone();
                if let Some(cluster) = cluster
                    && last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &cluster))
                {
                    log.lock().unwrap().push((Instant::now(), cluster.clone()));
                    last = Some(cluster);
                }
                if follow.changed().await.is_err() {
                    return;
                }
            }
        });
        Source {
            rx,
            published,
            client,
            started,
            tasks: vec![source, logger],
        }
    }

    fn cluster(&self) -> Option<Arc<ClusterState>> {
        self.rx.borrow().cluster.clone()
    }

    fn publications(&self) -> usize {
        self.published.lock().unwrap().len()
    }

    fn last_error(&self) -> Option<String> {
        self.rx.borrow().status.last_error.clone()
    }

    /// Waits (bounded) until the published cluster satisfies `check`; returns how long it took.
    async fn wait_cluster(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ClusterState) -> bool,
    ) -> Duration {
        let start = Instant::now();
        wait(what, timeout, || {
            self.cluster().filter(|c| check(c)).map(|_| ())
        })
        .await;
        start.elapsed()
    }
}

/// Polls `f` every 5 ms until it gives `Some`, for at most `timeout`.
async fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

const SHORT: Duration = Duration::from_secs(10);
/// Long enough for kube's backoff (0.8 s doubling to 30 s, jittered) to come round after an outage.
const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn initial_sync_waits_for_all_three_lists() {
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    server.hold_lists(Kind::Node);
    let source = Source::start(&server).await;

    // Services and EndpointSlices are listed; Nodes are held: nothing may be published.
    wait("the Service and EndpointSlice lists", SHORT, || {
        (server.list_count(Kind::Service) >= 1 && server.list_count(Kind::EndpointSlice) >= 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        source.cluster().is_none(),
        "published before the Node list completed"
    );
    assert!(!source.rx.borrow().status.synced);
    assert_eq!(source.rx.borrow().status.name, "kubernetes");

    server.release_lists(Kind::Node);
    let expected = model(&objects);
    let after_release = source
        .wait_cluster("the first state", SHORT, |c| *c == expected)
        .await;
    assert_eq!(
        source.publications(),
        1,
        "one publication for the initial sync, complete"
    );
    assert!(source.rx.borrow().status.synced);
    assert!(source.last_error().is_none());
    println!(
        "initial sync: first state {} after the last list was released ({} objects)",
        ms(after_release),
        objects.len()
    );
}

#[tokio::test]
async fn initial_sync_time_and_empty_cluster() {
    // An empty cluster is still published, once, as an empty state (never "no state").
    let server = FakeApiServer::start().await.unwrap();
    let source = Source::start(&server).await;
    source
        .wait_cluster("an empty state", SHORT, |c| *c == ClusterState::default())
        .await;
    println!(
        "initial sync (empty cluster): {}",
        ms(source.started.elapsed())
    );

    // A bigger cluster: 1,000 Services, 1,000 EndpointSlices, 100 Nodes, lists paged by 500.
    let server = FakeApiServer::start().await.unwrap();
    let mut objects = Vec::new();
    for n in 0..100 {
        objects.push(node(
            &format!("node-{n}"),
            &[&format!("10.0.{}.{}", n / 250, n % 250 + 1)],
            &[],
            true,
        ));
    }
    for s in 0..1000 {
        objects.push(service(
            "bulk",
            &format!("svc-{s}"),
            json!({
                "type": "ClusterIP", "clusterIP": format!("10.96.{}.{}", s / 250, s % 250 + 1),
                "externalTrafficPolicy": "Local",
            }),
        ));
        let node_name = format!("node-{}", s % 100);
        objects.push(slice(
            "bulk",
            &format!("svc-{s}"),
            "a",
            &[ep(&node_name, READY)],
        ));
    }
    load(&server, &objects);
    let source = Source::start(&server).await;
    let expected = model(&objects);
    source
        .wait_cluster("2,100 objects", SHORT, |c| *c == expected)
        .await;
    assert_eq!(source.publications(), 1);
    assert!(server.list_count(Kind::Service) >= 1);
    let pages = server
        .requests()
        .iter()
        .filter(|r| r.query.contains_key("continue"))
        .count();
    assert!(
        pages >= 2,
        "the lists were paged ({pages} continuation requests)"
    );
    println!(
        "initial sync (2,100 objects, {pages} continuation pages): {}",
        ms(source.started.elapsed())
    );
}

#[tokio::test]
async fn updates_and_deletes_are_followed_and_irrelevant_changes_publish_nothing() {
    let server = FakeApiServer::start().await.unwrap();
    let mut objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    source
        .wait_cluster("the first state", SHORT, |c| *c == model(&objects))
        .await;

    // Update: a Service gains an external IP.
    let mut customer = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "customer")
        .unwrap()
        .clone();
    customer["spec"]["externalIPs"] = json!(["198.19.48.10", "198.19.48.11"]);
    server.apply_value(customer.clone());
    let update = source
        .wait_cluster("the new external IP", SHORT, |c| {
            c.services
                .values()
                .any(|s| s.external_ips.contains(&"198.19.48.11".to_string()))
        })
        .await;

    // Add: a new Node.
    let added = node("node-7", &["10.0.0.7"], &[("pool", "a")], true);
    server.apply_value(added.clone());
    let add = source
        .wait_cluster("node-7", SHORT, |c| c.nodes.contains_key("node-7"))
        .await;

    // Delete: an EndpointSlice and a Service.
    server.delete(Kind::EndpointSlice, "yaobank", "customer-abc");
    server.delete(Kind::Service, "yaobank", "customer");
    let delete = source
        .wait_cluster("the deletions", SHORT, |c| {
            !c.endpoint_slices.keys().any(|k| k.name == "customer-abc")
                && !c.services.keys().any(|k| k.name == "customer")
        })
        .await;

    objects
        .retain(|o| o["metadata"]["name"] != "customer" && o["metadata"]["name"] != "customer-abc");
    objects.push(added);
    let expected = model(&objects);
    assert_eq!(*source.cluster().unwrap(), expected);

    // A Node heartbeat and a Service's resourceVersion-only update change nothing herald reads.
    let before = source.publications();
    let mut heartbeat = node("node-1", &["10.0.0.1"], &[("pool", "a")], true);
    heartbeat["status"]["conditions"][1]["lastHeartbeatTime"] = json!("2025-01-01T00:05:00Z");
    server.apply_value(heartbeat);
    server.apply_value(
        objects
            .iter()
            .find(|o| o["metadata"]["name"] == "summary")
            .unwrap()
            .clone(),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        source.publications(),
        before,
        "an irrelevant change was published"
    );
    println!(
        "latency, change to publication: update {}, add {}, delete {}",
        ms(update),
        ms(add),
        ms(delete)
    );
}

#[tokio::test]
async fn a_burst_of_changes_is_coalesced() {
    let server = FakeApiServer::start().await.unwrap();
    load(&server, &yaobank());
    // A wider interval than the default (5 ms), so that the bound below does not depend on how
    // fast the fake API server streams.
    let interval = Duration::from_millis(50);
    let source = Source::start_with(&server, |s| s.with_min_interval(interval)).await;
    source
        .wait_cluster("the first state", SHORT, |_| true)
        .await;
    let before = source.publications();

    let start = Instant::now();
    for s in 0..300 {
        server.apply_value(service(
            "burst",
            &format!("svc-{s}"),
            json!({
                "type": "ClusterIP", "clusterIP": format!("10.96.100.{}", s % 250 + 1),
            }),
        ));
    }
    let took = source
        .wait_cluster("300 new Services", SHORT, |c| {
            c.services.keys().filter(|k| k.namespace == "burst").count() == 300
        })
        .await;
    let burst = source.publications() - before;
    let elapsed = start.elapsed();
    // At most one publication per interval while events arrive.
    let bound = (elapsed.as_millis() / interval.as_millis()) as usize + 2;
    assert!(
        burst <= bound && burst <= 10,
        "{burst} publications for a burst of 300 changes over {}",
        ms(elapsed)
    );
    println!(
        "burst: 300 Service creations → {burst} publication(s), all in after {}",
        ms(took)
    );
}

#[tokio::test]
async fn relists_after_410_gone() {
    let server = FakeApiServer::start().await.unwrap();
    server.set_bookmarks(false);
    let mut objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    source
        .wait_cluster("the first state", SHORT, |c| *c == model(&objects))
        .await;
    let lists = Kind::ALL.map(|k| server.list_count(k));

    // Changes the watchers will not see as events: history is compacted past them, and the
    // connections are cut. Resuming from their old resourceVersions gets 410; they must re-list.
    server.delete(Kind::EndpointSlice, "yaobank", "summary-xyz");
    let mut summary = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "summary")
        .unwrap()
        .clone();
    summary["spec"]["externalIPs"] = json!(["198.19.48.20"]);
    server.close_watches(); // nothing in flight: the changes above are not streamed first
    server.compact();
    server.drop_watches();
    // The watchers may have re-watched between close and compact: cut once more after compaction.
    server.apply_value(summary.clone());
    server.compact();
    server.drop_watches();

    let start = Instant::now();
    objects.retain(|o| o["metadata"]["name"] != "summary-xyz");
    for o in objects.iter_mut() {
        if o["metadata"]["name"] == "summary" {
            *o = summary.clone();
        }
    }
    let expected = model(&objects);
    source
        .wait_cluster("the re-listed state", SHORT, |c| *c == expected)
        .await;
    let relisted = Kind::ALL.map(|k| server.list_count(k));
    assert!(
        relisted[0] > lists[0] && relisted[1] > lists[1],
        "re-listed: before {lists:?}, after {relisted:?}"
    );
    let expired = server.expired_watches();
    assert!(
        expired >= 2,
        "the Service and EndpointSlice watches got 410 ({expired})"
    );
    assert!(
        source.last_error().is_none(),
        "410 is not an error: {:?}",
        source.last_error()
    );
    println!(
        "re-list after 410: state complete {} after compaction ({expired} watches answered 410)",
        ms(start.elapsed())
    );
}

#[tokio::test]
async fn dropped_watches_resume_from_their_resource_version() {
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    source
        .wait_cluster("the first state", SHORT, |c| *c == model(&objects))
        .await;
    let lists = Kind::ALL.map(|k| server.list_count(k));

    let mut latencies = Vec::new();
    for round in 0..3 {
        let watches = server.watch_count(Kind::Service);
        let dropped = server.drop_watches();
        assert_eq!(dropped, 3, "three watches were open");
        // A change made while nobody watches: the resumed watch replays it.
        server.apply_value(node(&format!("late-{round}"), &["10.0.9.1"], &[], true));
        let start = Instant::now();
        source
            .wait_cluster("the change made while disconnected", LONG, |c| {
                c.nodes.contains_key(&format!("late-{round}"))
            })
            .await;
        latencies.push(start.elapsed());
        wait("the watches to be re-established", LONG, || {
            (server.watch_count(Kind::Service) > watches).then_some(())
        })
        .await;
    }
    assert_eq!(
        Kind::ALL.map(|k| server.list_count(k)),
        lists,
        "a dropped watch resumes; it does not re-list"
    );
    wait("the transient errors to clear", LONG, || {
        source.last_error().is_none().then_some(())
    })
    .await;
    println!(
        "dropped watches: change seen after reconnect in {}",
        latencies
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[tokio::test]
async fn bookmarks_keep_resource_versions_fresh() {
    let server = FakeApiServer::start_with_bookmarks(Duration::from_millis(100))
        .await
        .unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    source
        .wait_cluster("the first state", SHORT, |c| *c == model(&objects))
        .await;
    let lists = Kind::ALL.map(|k| server.list_count(k));

    // Node changes move the global resourceVersion; the Service and EndpointSlice watches see no
    // event, only bookmarks. After compaction their resourceVersions are still good.
    for n in 0..20 {
        server.apply_value(node(&format!("extra-{n}"), &["10.0.8.1"], &[], true));
    }
    source
        .wait_cluster("the node changes", SHORT, |c| {
            c.nodes.contains_key("extra-19")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await; // a few bookmark intervals
    server.compact();
    let watches = server.watch_count(Kind::Service);
    server.drop_watches();
    wait("the watches to be re-established", LONG, || {
        (server.watch_count(Kind::Service) > watches).then_some(())
    })
    .await;
    server.apply_value(service(
        "late",
        "svc",
        json!({"type": "ClusterIP", "clusterIP": "10.96.77.7"}),
    ));
    source
        .wait_cluster("a Service made after the resume", LONG, |c| {
            c.services.keys().any(|k| k.namespace == "late")
        })
        .await;
    assert_eq!(
        Kind::ALL.map(|k| server.list_count(k)),
        lists,
        "bookmarks spared a re-list"
    );
    assert_eq!(server.expired_watches(), 0);
    let bookmarked = server
        .requests()
        .iter()
        .filter(|r| {
            r.is_watch() && r.query.get("allowWatchBookmarks").map(String::as_str) == Some("true")
        })
        .count();
    assert!(bookmarked >= 6, "the watches asked for bookmarks");
}

async fn outage(kind: Outage) {
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    let expected = model(&objects);
    source
        .wait_cluster("the first state", SHORT, |c| *c == expected)
        .await;
    let before = source.cluster().unwrap();
    let publications = source.publications();
    let config = Config::parse(CONFIG).unwrap();
    let plan_before = herald_core::planner::plan(&before, &config);

    let start = Instant::now();
    server.start_outage(kind);
    let error = wait("status.last_error", LONG, || source.last_error()).await;
    let detected = start.elapsed();

    // Changes made during the outage are not seen; the last state stays, nothing is published.
    server.apply_value(service(
        "during",
        "outage",
        json!({"type": "ClusterIP", "clusterIP": "10.96.66.6"}),
    ));
    server.delete(Kind::Node, "", "node-1");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        source.publications(),
        publications,
        "published during the outage"
    );
    assert!(
        Arc::ptr_eq(&source.cluster().unwrap(), &before),
        "the state changed during the outage"
    );
    assert_eq!(
        herald_core::planner::plan(&source.cluster().unwrap(), &config),
        plan_before
    );
    assert!(source.rx.borrow().status.synced);
    assert!(source.last_error().is_some());

    let back = Instant::now();
    server.end_outage().await.unwrap();
    let caught_up = source
        .wait_cluster("the changes made during the outage", LONG, |c| {
            c.services.keys().any(|k| k.namespace == "during") && !c.nodes.contains_key("node-1")
        })
        .await;
    wait("status.last_error to clear", LONG, || {
        source.last_error().is_none().then_some(())
    })
    .await;
    let cleared = back.elapsed();
    println!(
        "outage ({kind:?}): error reported after {}, state caught up {} and error cleared {} after recovery; error: {error}",
        ms(detected),
        ms(caught_up),
        ms(cleared)
    );
}

#[tokio::test]
async fn outage_503_keeps_the_last_state() {
    outage(Outage::Unavailable).await;
}

#[tokio::test]
async fn outage_refused_keeps_the_last_state() {
    outage(Outage::Refuse).await;
}

#[tokio::test]
async fn after_a_quiet_outage_the_error_clears_without_any_change() {
    // Nothing changes during the outage: the resumed watches have nothing to say, and the error
    // must still clear (the probe), with the same state and no new publication.
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    source
        .wait_cluster("the first state", SHORT, |c| *c == model(&objects))
        .await;
    let before = source.cluster().unwrap();
    let publications = source.publications();
    server.start_outage(Outage::Refuse);
    wait("status.last_error", LONG, || source.last_error()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let back = Instant::now();
    server.end_outage().await.unwrap();
    wait("status.last_error to clear", LONG, || {
        source.last_error().is_none().then_some(())
    })
    .await;
    let cleared = back.elapsed();
    assert_eq!(source.publications(), publications);
    assert!(Arc::ptr_eq(&source.cluster().unwrap(), &before));
    assert_eq!(
        Kind::ALL.map(|k| server.list_count(k)),
        [1, 1, 1],
        "resumed, not re-listed"
    );
    assert!(
        Kind::ALL.iter().any(|&k| server.metadata_list_count(k) > 0),
        "the probe asked"
    );
    println!(
        "quiet outage: error cleared {} after recovery, no publication",
        ms(cleared)
    );
}

#[tokio::test]
async fn unreachable_at_start_publishes_nothing() {
    let server = FakeApiServer::start().await.unwrap();
    load(&server, &yaobank());
    server.start_outage(Outage::Refuse);
    let source = Source::start(&server).await;
    let error = wait("status.last_error", SHORT, || source.last_error()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(source.cluster().is_none());
    assert!(!source.rx.borrow().status.synced);
    server.end_outage().await.unwrap();
    let took = source
        .wait_cluster("the first state", LONG, |c| *c == model(&yaobank()))
        .await;
    wait("status.last_error to clear", LONG, || {
        source.last_error().is_none().then_some(())
    })
    .await;
    println!(
        "unreachable at start ({error}); first state {} after the API server came up",
        ms(took)
    );
}

/// The planner loop of `herald run`, in small: plans each new cluster state.
fn spawn_planner(
    config: Config,
    mut source: watch::Receiver<SourceSnapshot>,
) -> (watch::Receiver<PlanSnapshot>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(PlanSnapshot::default());
    let task = tokio::spawn(async move {
        let mut last: Option<Arc<ClusterState>> = None;
        loop {
            let cluster = source.borrow_and_update().cluster.clone();
            if let Some(cluster) = cluster
                && last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, &cluster))
            {
                last = Some(cluster.clone());
                let plan = herald_core::planner::plan(&cluster, &config);
                tx.send_if_modified(|current| {
                    if current.generation > 0 && *current.plan == plan {
                        return false;
                    }
                    current.generation += 1;
                    current.plan = Arc::new(plan);
                    true
                });
            }
            if source.changed().await.is_err() {
                return;
            }
        }
    });
    (rx, task)
}

/// A recorder's reporting as the only replica: always leading (while the sender lives).
fn alone() -> (watch::Sender<bool>, herald_k8s::events::Reporting) {
    let (leading, rx) = watch::channel(true);
    let pool = herald_core::config::PoolName::default();
    (
        leading,
        herald_k8s::events::Reporting {
            pool,
            instance: "test".to_string(),
            leading: rx,
        },
    )
}

#[tokio::test]
async fn one_event_per_refusal_cause_across_plan_changes() {
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    let config = Config::parse(CONFIG).unwrap();
    let (mut plans, planner) = spawn_planner(config, source.rx.clone());
    let (_leading, reporting) = alone();
    let recorder =
        herald_k8s::events::spawn_event_recorder(source.client.clone(), plans.clone(), reporting);
    let _tasks = Tasks(vec![planner, recorder]);

    let generation = |plans: &watch::Receiver<PlanSnapshot>| plans.borrow().generation;
    let plan = wait("the first plan", SHORT, || {
        let s = plans.borrow_and_update().clone();
        (s.generation > 0).then_some(s.plan)
    })
    .await;
    let causes = herald_k8s::events::causes(&plan.refusals);
    assert!(causes.len() >= 3, "the example has refusals: {causes:?}");
    let start = Instant::now();
    wait("one Event per cause", SHORT, || {
        (server.events().len() >= causes.len()).then_some(())
    })
    .await;
    let first_events = start.elapsed();

    // Several plan changes that keep every cause.
    let mut g = generation(&plans);
    let changes = [
        node("node-8", &["10.0.0.8"], &[("pool", "a")], true),
        slice("yaobank", "customer", "def", &[ep("node-2", READY)]),
        service(
            "yaobank",
            "new",
            json!({"type": "ClusterIP", "clusterIP": "10.96.50.1", "externalTrafficPolicy": "Local"}),
        ),
        node("node-2", &["10.0.0.2"], &[("pool", "a")], false),
    ];
    for change in changes {
        server.apply_value(change);
        wait("a new plan", SHORT, || {
            (generation(&plans) > g).then_some(())
        })
        .await;
        g = generation(&plans);
    }
    let bad = || {
        objects
            .iter()
            .find(|o| o["metadata"]["name"] == "bad")
            .unwrap()
            .clone()
    };
    let mut annotated = bad();
    annotated["metadata"]["annotations"] = json!({"example.org/touched": "yes"});
    server.apply_value(annotated);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = server.events();
    assert_eq!(
        events.len(),
        causes.len(),
        "one Event per cause: {:#?}",
        events.iter().map(|e| e.note()).collect::<Vec<_>>()
    );

    // Their shape: a Warning IPRefused on the Service (with its uid), in its namespace.
    let uid_of = |namespace: &str, name: &str| {
        let objects = server.objects();
        objects
            .iter()
            .find(|o| {
                o["kind"] == "Service"
                    && o["metadata"]["namespace"] == namespace
                    && o["metadata"]["name"] == name
            })
            .map(|o| o["metadata"]["uid"].clone())
    };
    let mut seen = BTreeSet::new();
    for event in &events {
        assert_eq!(event.api_version, "events.k8s.io/v1");
        assert_eq!(event.type_(), "Warning");
        assert_eq!(event.reason(), "IPRefused");
        assert_eq!(event.object["action"], "Announce");
        assert_eq!(event.object["reportingController"], "herald");
        let regarding = event.regarding();
        assert_eq!(regarding["kind"], "Service");
        assert_eq!(regarding["apiVersion"], "v1");
        let (namespace, name) = (
            regarding["namespace"].as_str().unwrap(),
            regarding["name"].as_str().unwrap(),
        );
        assert_eq!(event.namespace, namespace);
        assert_eq!(Some(regarding["uid"].clone()), uid_of(namespace, name));
        let cause = causes
            .iter()
            .find(|(service, ip, reason)| {
                service.namespace == namespace
                    && service.name == name
                    && event.note().contains(&format!("IP {ip} "))
                    && event.note().contains(reason.as_str())
            })
            .unwrap_or_else(|| panic!("an Event for no cause: {}", event.note()));
        assert!(seen.insert(cause.clone()), "two Events for {cause:?}");
    }

    // A cause that goes away and comes back (the same Service) is not told twice.
    let mut fixed = bad();
    fixed["spec"]["externalIPs"] = json!([]);
    server.apply_value(fixed);
    wait("the refusals to go", SHORT, || {
        let p = plans.borrow().plan.clone();
        (!p.refusals.iter().any(|r| r.service.name == "bad")).then_some(())
    })
    .await;
    server.apply_value(bad());
    wait("the refusals to come back", SHORT, || {
        let p = plans.borrow().plan.clone();
        (p.refusals
            .iter()
            .filter(|r| r.service.name == "bad")
            .count()
            == 2)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.events().len(),
        causes.len(),
        "a flapping cause was told again"
    );

    // A new cause is told once; a re-created Service (new uid) is told again.
    let mut more = bad();
    more["spec"]["externalIPs"] = json!(["203.0.113.7", "not-an-ip", "192.0.2.1"]);
    server.apply_value(more);
    wait("the Event for the new cause", SHORT, || {
        (server.events().len() == causes.len() + 1).then_some(())
    })
    .await;
    server.delete(Kind::Service, "yaobank", "bad");
    wait("the Service's refusals to go", SHORT, || {
        let p = plans.borrow().plan.clone();
        (!p.refusals.iter().any(|r| r.service.name == "bad")).then_some(())
    })
    .await;
    server.apply_value(bad());
    wait("Events for the re-created Service", SHORT, || {
        (server.events().len() == causes.len() + 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.events().len(), causes.len() + 3);
    assert!(
        server.events().iter().all(|e| e.patches == 0),
        "no Event series (each cause is its own Event)"
    );
    println!(
        "events: {} causes → {} Events, the first {} after the first plan",
        causes.len(),
        causes.len(),
        ms(first_events)
    );
}

struct Tasks(Vec<JoinHandle<()>>);
impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[tokio::test]
async fn events_are_retried_when_the_api_server_fails() {
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let source = Source::start(&server).await;
    source
        .wait_cluster("the first state", SHORT, |_| true)
        .await;
    let config = Config::parse(CONFIG).unwrap();
    let plan = herald_core::planner::plan(&source.cluster().unwrap(), &config);
    // The plan arrives while the API server is down: the Events come once it is back.
    server.start_outage(Outage::Unavailable);
    let (tx, rx) = watch::channel(PlanSnapshot::default());
    let (_leading, reporting) = alone();
    let recorder = herald_k8s::events::spawn_event_recorder(source.client.clone(), rx, reporting);
    let _tasks = Tasks(vec![recorder]);
    tx.send_replace(PlanSnapshot {
        generation: 1,
        plan: Arc::new(plan.clone()),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.events().is_empty());
    server.end_outage().await.unwrap();
    let causes = herald_k8s::events::causes(&plan.refusals).len();
    wait(
        "the Events after the outage",
        Duration::from_secs(20),
        || (server.events().len() == causes).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.events().len(), causes);
}

#[tokio::test]
async fn file_and_kubernetes_sources_give_the_same_plan() {
    let server = FakeApiServer::start().await.unwrap();
    load(&server, &yaobank());
    let source = Source::start(&server).await;
    source
        .wait_cluster("the first state", SHORT, |_| true)
        .await;
    let from_kubernetes = source.cluster().unwrap();

    // The same objects as `kubectl get services,endpointslices,nodes -A -o yaml` prints them: what
    // the API server holds, in a List.
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": server.objects()});
    let yaml = serde_saphyr::to_string(&list).unwrap();
    let path = server.dir().join("cluster-state.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let (tx, mut rx) = watch::channel(SourceSnapshot::default());
    let file = tokio::spawn(
        FileSource::new(path.clone())
            .with_poll_interval(Duration::from_millis(20))
            .run(tx),
    );
    let _tasks = Tasks(vec![file]);
    let from_file = wait("the file source", SHORT, || {
        rx.borrow_and_update().cluster.clone()
    })
    .await;
    assert!(
        rx.borrow().status.last_error.is_none(),
        "{:?}",
        rx.borrow().status.last_error
    );

    assert_eq!(
        *from_file, *from_kubernetes,
        "the two sources read different clusters"
    );
    for config in [
        CONFIG.to_string(),
        format!("nodeSelector: pool=a\n{CONFIG}"),
        "nodeSelector: pool=b\nserviceExternalIPs: [{cidr: 198.19.48.0/20}]\n".to_string(),
    ] {
        let config = Config::parse(&config).unwrap();
        let a = herald_core::planner::plan(&from_file, &config);
        let b = herald_core::planner::plan(&from_kubernetes, &config);
        assert_eq!(a, b, "different plans from the same objects");
    }
    let plan = herald_core::planner::plan(&from_kubernetes, &Config::parse(CONFIG).unwrap());
    assert!(
        !plan.routes.is_empty() && !plan.refusals.is_empty(),
        "a plan worth comparing: {plan:?}"
    );
    println!(
        "parity: {} objects, {} routes, {} refusals: identical plans from the file and the Kubernetes source",
        server.objects().len(),
        plan.routes.len(),
        plan.refusals.len()
    );
}

/// Polls the async `probe` every 50 ms until it gives `Some`, for at most `timeout`.
async fn wait_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// gobgpd's IPv4 RIB as (prefix, next hop) pairs, through the `gobgp` CLI.
fn rib(gobgpd: &Gobgpd) -> Option<BTreeSet<(String, String)>> {
    let output = std::process::Command::new("gobgp")
        .args([
            "-u",
            "127.0.0.1",
            "-p",
            &gobgpd.port().to_string(),
            "global",
            "rib",
            "-a",
            "ipv4",
            "-j",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let rib: Value = serde_json::from_slice(&output.stdout).ok()?;
    let mut paths = BTreeSet::new();
    for (prefix, destinations) in rib.as_object()? {
        for path in destinations.as_array()? {
            let hop = path["attrs"]
                .as_array()?
                .iter()
                .find_map(|a| a["nexthop"].as_str())?;
            paths.insert((prefix.clone(), hop.to_string()));
        }
    }
    Some(paths)
}

/// The (prefix, next hop) paths of a plan's IPv4 routes: what gobgpd should hold.
fn paths(plan: &herald_core::plan::Plan) -> BTreeSet<(String, String)> {
    plan.routes
        .values()
        .filter(|r| r.prefix.addr().is_ipv4())
        .flat_map(|r| {
            r.next_hops
                .iter()
                .map(move |h| (r.prefix.to_string(), h.address.to_string()))
        })
        .collect()
}

/// A Service with `externalTrafficPolicy: Local` and its one endpoint, on node-2: the route
/// 10.96.90.9/32 via 10.0.0.2.
fn shop_web() -> [Value; 2] {
    [
        service(
            "shop",
            "web",
            json!({"type": "ClusterIP", "clusterIP": "10.96.90.9", "externalTrafficPolicy": "Local"}),
        ),
        slice("shop", "web", "1", &[ep("node-2", READY)]),
    ]
}

/// A `herald run` config: [`CONFIG`], the Kubernetes source on `server`, the API on `port`, `gobgpd`.
fn herald_config(server: &FakeApiServer, gobgpd: &Gobgpd, port: u16) -> std::path::PathBuf {
    let path = server.dir().join("herald.yaml");
    std::fs::write(
        &path,
        format!(
            "{CONFIG}source: {{kubernetes: {{kubeconfig: {}}}}}\napi: {{listen: \"127.0.0.1:{port}\"}}\n\
             gobgp: {{address: \"127.0.0.1:{}\"}}\n",
            server.kubeconfig_path().display(),
            gobgpd.port()
        ),
    )
    .unwrap();
    path
}

/// `herald run` on `config`, and a guard that prints its log when dropped (forget it once the
/// test passed).
fn start_herald(
    server: &FakeApiServer,
    config: &std::path::Path,
    port: u16,
) -> (herald_integration::process::Herald, impl Drop) {
    let herald = herald_integration::process::Herald::start(
        config,
        port,
        server.dir().join("herald.log"),
        &[],
    )
    .unwrap();
    let log = herald.log.clone();
    let dump = scopeguard(move || {
        eprintln!(
            "--- herald log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (herald, dump)
}

/// A channel to `herald`'s API, once it answers.
async fn api_channel(herald: &herald_integration::process::Herald) -> tonic::transport::Channel {
    wait_async("herald's API", SHORT, || async {
        tonic::transport::Channel::from_shared(herald.api.clone())
            .unwrap()
            .connect()
            .await
            .ok()
    })
    .await
}

/// `herald run` with `source: {kubernetes: ...}` and a gobgpd, as the user runs them: the binary
/// follows the API, serves the plan, puts it in gobgpd's RIB, records the Events, and keeps its plan
/// and the RIB through an outage of the API server.
#[tokio::test]
async fn herald_run_with_the_kubernetes_source() {
    use herald_api::herald::v1 as pb;
    use herald_api::herald::v1::plan_service_client::PlanServiceClient;
    use herald_integration::process::free_port;

    let server = FakeApiServer::start().await.unwrap();
    let mut objects = yaobank();
    load(&server, &objects);
    let gobgpd = Gobgpd::start().await;
    let port = free_port();
    let config_path = herald_config(&server, &gobgpd, port);
    let (herald, dump) = start_herald(&server, &config_path, port);

    let started = Instant::now();
    let mut api = PlanServiceClient::new(api_channel(&herald).await);
    let config = Config::parse(CONFIG).unwrap();
    let prefixes = |plan: &herald_core::plan::Plan| {
        plan.routes
            .keys()
            .map(|p| p.to_string())
            .collect::<BTreeSet<_>>()
    };
    let expected = prefixes(&herald_core::planner::plan(&model(&objects), &config));
    let routes = |mut api: PlanServiceClient<tonic::transport::Channel>| async move {
        let response = api
            .list_routes(pb::ListRoutesRequest::default())
            .await
            .ok()?
            .into_inner();
        Some((
            response.generation,
            response
                .routes
                .into_iter()
                .map(|r| r.prefix)
                .collect::<BTreeSet<_>>(),
        ))
    };
    wait_async("the plan from the Kubernetes API", SHORT, || {
        let api = api.clone();
        let expected = expected.clone();
        async move { routes(api).await.filter(|(g, r)| *g > 0 && *r == expected) }
    })
    .await;
    let first_plan = started.elapsed();
    let expected_paths = paths(&herald_core::planner::plan(&model(&objects), &config));
    assert!(expected_paths.len() >= 5);
    wait("gobgpd's RIB to hold the plan", SHORT, || {
        rib(&gobgpd).filter(|rib| *rib == expected_paths)
    })
    .await;
    let in_rib = started.elapsed();
    let status = api
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .source
        .unwrap();
    assert_eq!(status.name, "kubernetes");
    assert!(status.synced);
    assert_eq!(status.last_error, "");

    // The Events, from the binary's own recorder.
    let causes =
        herald_k8s::events::causes(&herald_core::planner::plan(&model(&objects), &config).refusals)
            .len();
    wait("the IPRefused Events", SHORT, || {
        (server.events().len() == causes).then_some(())
    })
    .await;

    // A change in the cluster reaches the served plan.
    let new = shop_web();
    for object in &new {
        server.apply_value(object.clone());
        objects.push(object.clone());
    }
    let expected = prefixes(&herald_core::planner::plan(&model(&objects), &config));
    let expected_paths = paths(&herald_core::planner::plan(&model(&objects), &config));
    assert!(expected.contains("10.96.90.9/32"));
    wait_async("the new host route", SHORT, || {
        let api = api.clone();
        let expected = expected.clone();
        async move { routes(api).await.filter(|(_, r)| *r == expected) }
    })
    .await;

    wait("the new host route in gobgpd", SHORT, || {
        rib(&gobgpd).filter(|rib| *rib == expected_paths)
    })
    .await;
    assert!(expected_paths.contains(&("10.96.90.9/32".to_string(), "10.0.0.2".to_string())));

    // An outage: the plan and the RIB stay, the status says why; then it clears.
    let (generation, _) = routes(api.clone()).await.unwrap();
    server.start_outage(Outage::Refuse);
    server.delete(Kind::Service, "shop", "web");
    let error = wait_async("the source error in GetStatus", LONG, || {
        let mut api = api.clone();
        async move {
            let status = api
                .get_status(pb::GetStatusRequest {})
                .await
                .ok()?
                .into_inner()
                .source?;
            (!status.last_error.is_empty()).then_some(status.last_error)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        routes(api.clone()).await.unwrap(),
        (generation, expected.clone()),
        "the plan changed during the outage"
    );
    assert_eq!(
        rib(&gobgpd),
        Some(expected_paths.clone()),
        "gobgpd's RIB changed during the outage"
    );
    server.end_outage().await.unwrap();
    wait_async("the error to clear and the deletion to show", LONG, || {
        let mut api = api.clone();
        async move {
            let status = api
                .get_status(pb::GetStatusRequest {})
                .await
                .ok()?
                .into_inner()
                .source?;
            let (_, routes) = routes(api).await?;
            (status.last_error.is_empty() && !routes.contains("10.96.90.9/32")).then_some(())
        }
    })
    .await;
    objects.retain(|o| o["metadata"]["namespace"] != "shop" || o["kind"] != "Service");
    let expected_paths = paths(&herald_core::planner::plan(&model(&objects), &config));
    wait("the withdrawal in gobgpd", SHORT, || {
        rib(&gobgpd).filter(|rib| *rib == expected_paths)
    })
    .await;
    std::mem::forget(dump);
    println!(
        "herald run: first plan served {} and in gobgpd's RIB {} after start; outage error: {error}",
        ms(first_plan),
        ms(in_rib)
    );
}

/// A restarted `herald run` announces the ranges as soon as the Nodes are listed, while the
/// Services are still listing, and withdraws nothing until the whole cluster is known: here a
/// Service deleted while herald was down keeps its route until the Services are listed, and a
/// Node that joined meanwhile announces the ranges before that.
#[tokio::test]
async fn ranges_are_announced_before_the_services_are_listed() {
    use herald_api::herald::v1 as pb;
    use herald_api::herald::v1::plan_service_client::PlanServiceClient;
    use herald_integration::process::{Herald, free_port};

    let server = FakeApiServer::start().await.unwrap();
    let mut objects = yaobank();
    let web = shop_web();
    objects.extend(web.iter().cloned());
    load(&server, &objects);
    let gobgpd = Gobgpd::start().await;
    let port = free_port();
    let config_path = herald_config(&server, &gobgpd, port);
    let config = Config::parse(CONFIG).unwrap();
    let before = paths(&herald_core::planner::plan(&model(&objects), &config));
    let stale = ("10.96.90.9/32".to_string(), "10.0.0.2".to_string());
    assert!(before.contains(&stale));
    let mut first = Herald::start(&config_path, port, server.dir().join("first.log"), &[]).unwrap();
    wait("the first herald's plan in gobgpd", SHORT, || {
        rib(&gobgpd).filter(|rib| *rib == before)
    })
    .await;
    // On a thread of its own: herald hands its Events Lease back to the API server, which runs on
    // this test's runtime, before it exits.
    let first = tokio::task::spawn_blocking(move || first.stop(libc::SIGTERM).map(|()| first));
    if let Err(e) = first.await.unwrap() {
        panic!("the first herald did not stop: {e}");
    }

    // While herald is down: shop/web is deleted, node-7 joins. Then the Services list is held.
    server.delete(Kind::Service, "shop", "web");
    objects.retain(|o| o["metadata"]["namespace"] != "shop" || o["kind"] != "Service");
    let joined = node("node-7", &["10.0.0.7"], &[("pool", "a")], true);
    server.apply_value(joined.clone());
    objects.push(joined);
    server.hold_lists(Kind::Service);
    let ranges = paths(&herald_core::planner::plan_ranges(
        &model(&objects),
        &config,
    ));
    assert!(ranges.contains(&("10.96.0.0/16".to_string(), "10.0.0.7".to_string())));
    assert!(!before.is_superset(&ranges), "node-7's range paths are new");

    let (herald, dump) = start_herald(&server, &config_path, port);
    let started = Instant::now();
    let during: BTreeSet<_> = before.union(&ranges).cloned().collect();
    wait(
        "the ranges with node-7 in gobgpd, nothing withdrawn",
        SHORT,
        || rib(&gobgpd).filter(|rib| *rib == during),
    )
    .await;
    let ranges_in = started.elapsed();
    let mut api = PlanServiceClient::new(api_channel(&herald).await);
    let status = api
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.source.unwrap().synced);
    assert!(
        status
            .alarms
            .iter()
            .any(|a| a.contains("the ranges are planned from the 7 Nodes listed")),
        "{:?}",
        status.alarms
    );
    let served: BTreeSet<String> = api
        .list_routes(pb::ListRoutesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .routes
        .into_iter()
        .map(|r| r.prefix)
        .collect();
    assert_eq!(
        served,
        ["10.96.0.0/16", "198.19.48.0/20", "198.19.64.0/20"]
            .map(String::from)
            .into(),
        "the plan served holds the ranges alone"
    );
    // Held for a while: still nothing withdrawn.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rib(&gobgpd), Some(during.clone()));

    server.release_lists(Kind::Service);
    let after = paths(&herald_core::planner::plan(&model(&objects), &config));
    assert!(!after.contains(&stale));
    wait(
        "the whole plan in gobgpd, the deleted Service's route withdrawn",
        SHORT,
        || rib(&gobgpd).filter(|rib| *rib == after),
    )
    .await;
    std::mem::forget(dump);
    println!(
        "restart with the Services held: the ranges (with a new node) in gobgpd {} after start",
        ms(ranges_in)
    );
}

/// Runs `f` on drop unless forgotten: the herald log for a failed test.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The herald configs in deploy/kubernetes are valid, read the Kubernetes API, and select their pool.
#[test]
fn deploy_kubernetes_configs_are_valid() {
    use herald_core::config::SourceConfig;
    let root = herald_integration::process::repo_root().join("deploy/kubernetes");
    let mut configs = vec![("base".to_string(), root.join("base/config/herald.yaml"))];
    for entry in std::fs::read_dir(root.join("overlays")).unwrap() {
        let dir = entry.unwrap().path();
        // An overlay of components only (pool-a-api-tls) has no herald.yaml of its own.
        if dir.join("herald.yaml").exists() {
            configs.push((
                dir.file_name().unwrap().to_string_lossy().into_owned(),
                dir.join("herald.yaml"),
            ));
        }
    }
    assert!(configs.len() >= 3, "base and two pools");
    let mut pools = BTreeMap::new();
    for (name, path) in configs {
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        if name.starts_with("pool-") {
            assert_eq!(config.pool.0, name, "the overlay's pool name");
            pools.insert(name.clone(), config.clone());
        }
        assert_eq!(
            config.source,
            Some(SourceConfig::Kubernetes(KubernetesSourceConfig::default())),
            "{name}"
        );
        // gobgpd's API on the pod's unix socket only; the plan API on the loopback, health apart.
        assert_eq!(
            config.gobgp.as_ref().map(|g| g.address.as_str()),
            Some("unix:///run/gobgp/api.sock"),
            "{name}"
        );
        assert_eq!(
            config.api.listen,
            "127.0.0.1:50151".parse().unwrap(),
            "{name}"
        );
        assert_eq!(
            config.api.health_listen,
            Some("0.0.0.0:50152".parse().unwrap()),
            "{name}"
        );
        assert!(!config.service_cluster_ips.is_empty(), "{name}");
        if let Some(pool) = name.strip_prefix("pool-") {
            let mut labels = BTreeMap::new();
            labels.insert("herald.dev/pool".to_string(), pool.to_string());
            assert!(
                config.node_selector.matches(&labels),
                "{name}: its nodeSelector selects its pool"
            );
            labels.insert("herald.dev/pool".to_string(), "elsewhere".to_string());
            assert!(
                !config.node_selector.matches(&labels),
                "{name}: its nodeSelector selects only its pool"
            );
        }
    }
    // Each pool knows every other pool's Service ranges, exactly (its own cluster range is shared).
    for (name, config) in &pools {
        let known: BTreeMap<String, BTreeSet<String>> = config
            .other_pools
            .iter()
            .map(|p| {
                (
                    p.name.0.clone(),
                    p.ranges.iter().map(ToString::to_string).collect(),
                )
            })
            .collect();
        let actual: BTreeMap<String, BTreeSet<String>> = pools
            .iter()
            .filter(|(other, _)| *other != name)
            .map(|(other, c)| {
                let ranges = c
                    .service_external_ips
                    .iter()
                    .chain(&c.service_load_balancer_ips)
                    .map(|r| r.cidr.to_string());
                (other.clone(), ranges.collect())
            })
            .collect();
        assert_eq!(
            known, actual,
            "{name}'s otherPools against the other overlays' ranges"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Events from one replica per pool: the Lease, and pools that know each other's ranges

/// The lease duration of the tests' replicas (renewed every 600 ms).
const LEASE: Duration = Duration::from_secs(3);
/// Where the replicas' Leases are (their `POD_NAMESPACE`): every pool in one namespace, so that the
/// per-pool Lease names are put to the test too.
const LEASE_NAMESPACE: &str = "herald";

/// A plan-only `herald run` of a pool against the fake API server, with `POD_NAME` = `name`. Its
/// log is printed if the test fails.
struct Replica {
    name: String,
    herald: herald_integration::process::Herald,
}

impl Replica {
    fn start(server: &FakeApiServer, name: &str, pool_config: &str) -> Replica {
        let port = herald_integration::process::free_port();
        let config = server.dir().join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "{pool_config}source: {{kubernetes: {{kubeconfig: {}}}}}\napi: {{listen: \"127.0.0.1:{port}\"}}\n\
                 events: {{leaseDuration: {}s}}\n",
                server.kubeconfig_path().display(),
                LEASE.as_secs()
            ),
        )
        .unwrap();
        let log = server.dir().join(format!("{name}.log"));
        let env = [("POD_NAME", name), ("POD_NAMESPACE", LEASE_NAMESPACE)];
        let herald =
            herald_integration::process::Herald::start_with_env(&config, port, log, &[], &env)
                .unwrap();
        Replica {
            name: name.to_string(),
            herald,
        }
    }

    async fn api(
        &self,
    ) -> herald_api::herald::v1::plan_service_client::PlanServiceClient<tonic::transport::Channel>
    {
        let channel = wait_async(&format!("{}'s API", self.name), SHORT, || async {
            tonic::transport::Channel::from_shared(self.herald.api.clone())
                .unwrap()
                .connect()
                .await
                .ok()
        })
        .await;
        herald_api::herald::v1::plan_service_client::PlanServiceClient::new(channel)
    }
}

impl Replica {
    /// Signals the process and waits (bounded) for it to end, without holding up this test's
    /// runtime: the fake API server runs on it, and a stopping herald still talks to it.
    async fn stop(&mut self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.herald.pid() as i32, signal) };
        wait(&format!("{} to stop", self.name), SHORT, || {
            (!self.herald.is_running()).then_some(())
        })
        .await;
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.herald.log_text());
        }
    }
}

/// An Event as told: (namespace/name, IP, reason) and its reporting instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Told {
    cause: (String, String, String),
    instance: String,
}

/// The IPRefused Events the server holds, read back from their notes
/// ("<role> IP <ip> is not announced over BGP: <reason>").
fn told(server: &FakeApiServer) -> Vec<Told> {
    server
        .events()
        .iter()
        .map(|event| {
            let regarding = event.regarding();
            let service = format!(
                "{}/{}",
                regarding["namespace"].as_str().unwrap(),
                regarding["name"].as_str().unwrap()
            );
            let (ip, reason) = event
                .note()
                .split_once(" IP ")
                .and_then(|(_, rest)| rest.split_once(" is not announced over BGP: "))
                .unwrap_or_else(|| panic!("an Event note of another shape: {}", event.note()));
            let instance = event.object["reportingInstance"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            Told {
                cause: (service, ip.to_string(), reason.to_string()),
                instance,
            }
        })
        .collect()
}

/// The causes that `pool_config`'s pool records for `objects`.
fn pool_causes(objects: &[Value], pool_config: &str) -> BTreeSet<(String, String, String)> {
    let config = Config::parse(pool_config).unwrap();
    let plan = herald_core::planner::plan(&model(objects), &config);
    herald_k8s::events::causes(plan.refusals.iter().filter(|r| r.event_pool == config.pool))
        .into_iter()
        .map(|(service, ip, reason)| (service.to_string(), ip, reason))
        .collect()
}

fn lease_of(server: &FakeApiServer, pool: &str) -> Option<Value> {
    server.lease(LEASE_NAMESPACE, &format!("herald-events-{pool}"))
}

fn holder_of(server: &FakeApiServer, pool: &str) -> Option<String> {
    lease_of(server, pool)?["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// Waits (bounded) until every cause is told, then a lease period more; checks that each was told
/// once, and returns the Events.
async fn told_once_each(
    server: &FakeApiServer,
    causes: &BTreeSet<(String, String, String)>,
) -> Vec<Told> {
    wait("one Event per cause", LONG, || {
        (told(server).len() >= causes.len()).then_some(())
    })
    .await;
    // A lease period more: time for a second voice to speak, if there were one.
    tokio::time::sleep(LEASE).await;
    let events = told(server);
    let mut seen: Vec<_> = events.iter().map(|t| t.cause.clone()).collect();
    seen.sort();
    assert_eq!(
        seen,
        causes.iter().cloned().collect::<Vec<_>>(),
        "one Event per cause, no more: {events:#?}"
    );
    events
}

/// A ClusterIP Service with one external IP.
fn with_external_ip(namespace: &str, name: &str, cluster_ip: &str, ip: &str) -> Value {
    service(
        namespace,
        name,
        json!({"type": "ClusterIP", "clusterIP": cluster_ip, "externalIPs": [ip]}),
    )
}

#[tokio::test]
async fn two_replicas_of_a_pool_record_one_event_per_cause() {
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let config = format!("pool: pool-a\n{CONFIG}");
    let causes = pool_causes(&objects, &config);
    assert!(causes.len() >= 3, "the example has refusals: {causes:?}");
    let replicas = [
        Replica::start(&server, "herald-a-1", &config),
        Replica::start(&server, "herald-a-2", &config),
    ];
    let started = Instant::now();

    let events = told_once_each(&server, &causes).await;
    let holder = holder_of(&server, "pool-a").expect("a holder of pool-a's Lease");
    assert!(
        events.iter().all(|t| t.instance == holder),
        "every Event from the holder {holder}: {events:#?}"
    );
    // One holder all along: the standby replica campaigned and never took the Lease.
    let holders: BTreeSet<String> = server
        .lease_versions(LEASE_NAMESPACE, "herald-events-pool-a")
        .iter()
        .filter_map(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
        .collect();
    assert_eq!(holders, BTreeSet::from([holder.clone()]));
    let standby = replicas.iter().find(|r| r.name != holder).unwrap();
    assert!(
        standby
            .herald
            .log_text()
            .contains("held by another replica"),
        "the standby replica saw the holder"
    );
    println!(
        "two replicas: {} causes, {} Events, all from {holder}; checked {} after start",
        causes.len(),
        events.len(),
        ms(started.elapsed())
    );
}

/// Two replicas of pool-a on the yaobank cluster, once each of its causes is told.
struct TwoReplicas {
    server: FakeApiServer,
    objects: Vec<Value>,
    config: String,
    causes: BTreeSet<(String, String, String)>,
    /// The one that holds the Events Lease.
    holder: Replica,
    other: Replica,
}

async fn two_replicas() -> TwoReplicas {
    let server = FakeApiServer::start().await.unwrap();
    let objects = yaobank();
    load(&server, &objects);
    let config = format!("pool: pool-a\n{CONFIG}");
    let causes = pool_causes(&objects, &config);
    let mut replicas = vec![
        Replica::start(&server, "herald-a-1", &config),
        Replica::start(&server, "herald-a-2", &config),
    ];
    told_once_each(&server, &causes).await;
    let holder = holder_of(&server, "pool-a").unwrap();
    let holder = replicas.remove(replicas.iter().position(|r| r.name == holder).unwrap());
    let other = replicas.remove(0);
    TwoReplicas {
        server,
        objects,
        config,
        causes,
        holder,
        other,
    }
}

#[tokio::test]
async fn the_other_replica_takes_over_when_the_lease_holder_dies() {
    let TwoReplicas {
        server,
        objects,
        config,
        causes,
        holder: mut dead,
        other: survivor,
    } = two_replicas().await;
    let survivor = &survivor;

    dead.stop(libc::SIGKILL).await;
    let killed = Instant::now();
    let late = with_external_ip("late", "refused", "10.96.42.1", "203.0.113.42");
    server.apply_value(late.clone());
    // The dead holder's Lease runs out at most a lease period after the kill (it last renewed
    // before); the survivor must take over and record within a lease period of that.
    let bound = LEASE * 2;
    let took_over = wait("the survivor to hold the Lease", bound, || {
        (holder_of(&server, "pool-a").as_deref() == Some(survivor.name.as_str()))
            .then(|| killed.elapsed())
    })
    .await;
    let new_cause = ("late/refused".to_string(), "203.0.113.42".to_string());
    let recorded = wait("the survivor's Event for the new cause", bound, || {
        told(&server)
            .iter()
            .any(|t| (t.cause.0.clone(), t.cause.1.clone()) == new_cause)
            .then(|| killed.elapsed())
    })
    .await;

    // The survivor told the new cause, and nothing its predecessor had told.
    let mut all = causes.clone();
    all.extend(pool_causes(
        &[objects.clone(), vec![late]].concat(),
        &config,
    ));
    let events = told_once_each(&server, &all).await;
    for event in &events {
        let expected = if event.cause.0 == "late/refused" {
            &survivor.name
        } else {
            &dead.name
        };
        assert_eq!(&event.instance, expected, "{event:?}");
    }
    assert_eq!(
        lease_of(&server, "pool-a").unwrap()["spec"]["leaseTransitions"],
        1
    );
    assert!(
        survivor
            .herald
            .log_text()
            .contains("leading: this replica records the pool's Events")
    );
    println!(
        "takeover (lease {}s): the survivor held the Lease {} after the holder was killed, recorded the next cause {} after",
        LEASE.as_secs(),
        ms(took_over),
        ms(recorded)
    );
}

#[tokio::test]
async fn a_stopped_holder_hands_the_lease_over() {
    let TwoReplicas {
        server,
        holder: mut stopped,
        other: successor,
        ..
    } = two_replicas().await;
    let (holder, successor) = (stopped.name.clone(), &successor);

    let stopped_at = Instant::now();
    stopped.stop(libc::SIGTERM).await;
    let handed_over = wait("the successor to hold the Lease", LEASE * 2, || {
        (holder_of(&server, "pool-a").as_deref() == Some(successor.name.as_str()))
            .then(|| stopped_at.elapsed())
    })
    .await;
    // The holder released the Lease on its way out (an empty holder), and the successor took it
    // from there rather than from an expired one.
    let versions = server.lease_versions(LEASE_NAMESPACE, "herald-events-pool-a");
    let holders: Vec<&str> = versions
        .iter()
        .map(|l| l["spec"]["holderIdentity"].as_str().unwrap_or(""))
        .collect();
    let last_of_stopped = holders.iter().rposition(|h| *h == holder).unwrap();
    assert_eq!(
        &holders[last_of_stopped + 1..last_of_stopped + 3],
        ["", successor.name.as_str()],
        "{holders:?}"
    );
    assert!(
        stopped
            .herald
            .log_text()
            .contains("released the Events Lease")
    );

    server.apply_value(with_external_ip(
        "late",
        "refused",
        "10.96.42.1",
        "203.0.113.42",
    ));
    wait("the successor's Event for a new cause", SHORT, || {
        told(&server)
            .iter()
            .any(|t| t.cause.1 == "203.0.113.42" && t.instance == successor.name)
            .then_some(())
    })
    .await;
    println!(
        "handover on SIGTERM: the successor held the Lease {} after the signal (lease {}s)",
        ms(handed_over),
        LEASE.as_secs()
    );
}

const POOL_A: &str = "pool: pool-a
nodeSelector: pool=a
serviceClusterIPs: [{cidr: 10.96.0.0/16}]
serviceExternalIPs: [{cidr: 198.19.48.0/21}]
serviceLoadBalancerIPs: [{cidr: 198.19.64.0/21}]
denyPrefixes: [198.19.49.0/24]
otherPools: [{name: pool-b, ranges: [198.19.56.0/21, 198.19.72.0/21]}]
";

const POOL_B: &str = "pool: pool-b
nodeSelector: pool=b
serviceClusterIPs: [{cidr: 10.96.0.0/16}]
serviceExternalIPs: [{cidr: 198.19.56.0/21}]
serviceLoadBalancerIPs: [{cidr: 198.19.72.0/21}]
denyPrefixes: [198.19.57.0/24]
otherPools: [{name: pool-a, ranges: [198.19.48.0/21, 198.19.64.0/21]}]
";

/// Two pools' Services: each pool's own IPs, and a denied IP in each pool's ranges (a refusal only
/// that pool records: proof that its recorder is at work).
fn two_pools_cluster() -> Vec<Value> {
    let mut objects: Vec<Value> = yaobank()
        .into_iter()
        .filter(|o| o["kind"] == "Node")
        .collect();
    let mut lb = service(
        "b",
        "lb",
        json!({"type": "LoadBalancer", "clusterIP": "10.96.1.3"}),
    );
    lb["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.19.72.5"}]}});
    objects.extend([
        with_external_ip("a", "web", "10.96.1.1", "198.19.48.5"),
        with_external_ip("b", "web", "10.96.1.2", "198.19.56.5"),
        lb,
        with_external_ip("a", "denied", "10.96.1.4", "198.19.49.9"),
        with_external_ip("b", "denied", "10.96.1.5", "198.19.57.9"),
    ]);
    objects
}

/// The refusals a replica's API lists, as (namespace/name, IP).
async fn api_refusals(replica: &Replica) -> BTreeSet<(String, String)> {
    let response = replica
        .api()
        .await
        .list_routes(herald_api::herald::v1::ListRoutesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(response.generation > 0, "{} has a plan", replica.name);
    response
        .refusals
        .into_iter()
        .map(|r| (r.service, r.ip))
        .collect()
}

fn pair(service: &str, ip: &str) -> (String, String) {
    (service.to_string(), ip.to_string())
}

#[tokio::test]
async fn two_pools_with_each_others_ranges_refuse_nothing_of_the_other() {
    let server = FakeApiServer::start().await.unwrap();
    let objects = two_pools_cluster();
    load(&server, &objects);
    let (causes_a, causes_b) = (pool_causes(&objects, POOL_A), pool_causes(&objects, POOL_B));
    assert_eq!(
        causes_a
            .iter()
            .map(|c| pair(&c.0, &c.1))
            .collect::<Vec<_>>(),
        [pair("a/denied", "198.19.49.9")]
    );
    assert_eq!(
        causes_b
            .iter()
            .map(|c| pair(&c.0, &c.1))
            .collect::<Vec<_>>(),
        [pair("b/denied", "198.19.57.9")]
    );
    let a = Replica::start(&server, "herald-pool-a", POOL_A);
    let b = Replica::start(&server, "herald-pool-b", POOL_B);

    // Each pool tells its own denied IP, each from its own Lease; nothing else is told.
    let events = told_once_each(&server, &causes_a.union(&causes_b).cloned().collect()).await;
    for event in &events {
        let expected = if event.cause.0.starts_with("a/") {
            &a.name
        } else {
            &b.name
        };
        assert_eq!(&event.instance, expected, "{event:?}");
    }
    assert_eq!(
        holder_of(&server, "pool-a").as_deref(),
        Some(a.name.as_str())
    );
    assert_eq!(
        holder_of(&server, "pool-b").as_deref(),
        Some(b.name.as_str())
    );
    // Neither refuses the other's IPs; each explains them as the other pool's.
    assert_eq!(
        api_refusals(&a).await,
        BTreeSet::from([pair("a/denied", "198.19.49.9")])
    );
    assert_eq!(
        api_refusals(&b).await,
        BTreeSet::from([pair("b/denied", "198.19.57.9")])
    );
    for (replica, namespace, other) in [(&a, "b", "pool-b"), (&b, "a", "pool-a")] {
        let request = herald_api::herald::v1::ExplainServiceRequest {
            namespace: namespace.to_string(),
            name: "web".to_string(),
        };
        let explained = replica
            .api()
            .await
            .explain_service(request)
            .await
            .unwrap()
            .into_inner();
        let external: Vec<_> = explained
            .ips
            .iter()
            .filter(|ip| ip.role == "external")
            .collect();
        assert_eq!(external.len(), 1, "{explained:?}");
        assert_eq!(
            external[0].pool, other,
            "{} explains {namespace}/web's IP as {other}'s: {explained:?}",
            replica.name
        );
    }
}

#[tokio::test]
async fn an_ip_in_no_pools_range_gets_one_event_across_pools() {
    let server = FakeApiServer::start().await.unwrap();
    let mut objects = two_pools_cluster();
    objects.push(service("c", "stray", json!({
        "type": "ClusterIP", "clusterIP": "10.96.1.6", "externalIPs": ["203.0.113.50", "not-an-ip"],
    })));
    load(&server, &objects);
    let (causes_a, causes_b) = (pool_causes(&objects, POOL_A), pool_causes(&objects, POOL_B));
    let a = Replica::start(&server, "herald-pool-a", POOL_A);
    let b = Replica::start(&server, "herald-pool-b", POOL_B);

    // Both pools refuse the stray IPs; pool-a, first by name, alone tells them.
    let stray = BTreeSet::from([
        pair("c/stray", "203.0.113.50"),
        pair("c/stray", "not-an-ip"),
    ]);
    wait_refusals(&a, &stray).await;
    wait_refusals(&b, &stray).await;
    let events = told_once_each(&server, &causes_a.union(&causes_b).cloned().collect()).await;
    let stray_events: Vec<_> = events.iter().filter(|t| t.cause.0 == "c/stray").collect();
    assert_eq!(
        stray_events.len(),
        2,
        "one Event for each stray IP: {events:#?}"
    );
    assert!(
        stray_events.iter().all(|t| t.instance == a.name),
        "{stray_events:#?}"
    );
    // pool-b's recorder was at work: it told its own denied IP.
    assert!(
        events
            .iter()
            .any(|t| t.cause.0 == "b/denied" && t.instance == b.name),
        "{events:#?}"
    );
}

/// Waits (bounded) until a replica's plan refuses every IP of `expected`.
async fn wait_refusals(replica: &Replica, expected: &BTreeSet<(String, String)>) {
    wait_async("the refusals in the replica's plan", SHORT, || async {
        let response = replica
            .api()
            .await
            .list_routes(herald_api::herald::v1::ListRoutesRequest::default())
            .await
            .ok()?
            .into_inner();
        let refusals: BTreeSet<_> = response
            .refusals
            .into_iter()
            .map(|r| (r.service, r.ip))
            .collect();
        expected.is_subset(&refusals).then_some(())
    })
    .await
}

/// A kube client of the fake server.
async fn kube_client(server: &FakeApiServer) -> kube::Client {
    client(&KubernetesSourceConfig {
        kubeconfig: Some(server.kubeconfig_path()),
    })
    .await
    .unwrap()
}

fn candidate_settings(name: &str, duration: Duration) -> herald_k8s::lease::LeaseSettings {
    herald_k8s::lease::LeaseSettings {
        namespace: LEASE_NAMESPACE.to_string(),
        name: "contested".to_string(),
        identity: name.to_string(),
        duration,
    }
}

/// A Lease that its holder keeps renewing is never taken over, however long a candidate waits;
/// once the holder stops, the candidate takes it within a lease period of its running out. The
/// holder here is the test, writing with the resourceVersion it read: had the candidate written
/// in between, the test's write would get 409 and fail.
#[tokio::test]
async fn a_live_lease_is_not_taken_over_and_a_dead_one_is() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use kube::api::PostParams;

    let server = FakeApiServer::start().await.unwrap();
    let client = kube_client(&server).await;
    let leases: kube::Api<Lease> = kube::Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let duration = Duration::from_secs(2);
    let renewed = || {
        Some(LeaseSpec {
            holder_identity: Some("someone-else".to_string()),
            lease_duration_seconds: Some(2),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            lease_transitions: Some(0),
            ..Default::default()
        })
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("contested".to_string()),
            ..Default::default()
        },
        spec: renewed(),
    };
    let mut lease = leases.create(&PostParams::default(), &lease).await.unwrap();

    let candidate =
        herald_k8s::lease::spawn_candidate(client, candidate_settings("candidate", duration));
    let leading = candidate.leading();
    let renewing = Instant::now();
    while renewing.elapsed() < duration * 2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lease.spec = renewed();
        lease = leases
            .replace("contested", &PostParams::default(), &lease)
            .await
            .expect("the holder renews undisturbed");
        assert!(!*leading.borrow(), "the candidate took a live Lease");
    }
    let stopped = Instant::now();
    let mut watching = leading.clone();
    wait("the candidate to lead", duration * 2, || {
        (*watching.borrow_and_update()).then_some(())
    })
    .await;
    let took = stopped.elapsed();
    let lease = server.lease(LEASE_NAMESPACE, "contested").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "candidate");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    println!(
        "live Lease kept for {}; taken {} after its holder stopped renewing (lease 2s)",
        ms(stopped - renewing),
        ms(took)
    );
}

/// The test server's Leases answer writes as the API server does: a stale resourceVersion (PUT or
/// merge PATCH) gets 409 Conflict, a second create 409 AlreadyExists, a bad duration 422.
#[tokio::test]
async fn the_test_server_guards_leases_like_the_api_server() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::api::{Patch, PatchParams, PostParams};

    let server = FakeApiServer::start().await.unwrap();
    let leases: kube::Api<Lease> =
        kube::Api::namespaced(kube_client(&server).await, LEASE_NAMESPACE);
    let lease = |body: Value| -> Lease { serde_json::from_value(body).unwrap() };
    let code = |result: Result<Lease, kube::Error>| match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(error) => panic!("{error}"),
    };
    let created = leases
        .create(
            &PostParams::default(),
            &lease(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}})),
        )
        .await
        .unwrap();
    let first = created.metadata.resource_version.clone().unwrap();
    assert_eq!(
        code(leases.create(&PostParams::default(), &created).await),
        409
    );
    let renewed = leases
        .replace("l", &PostParams::default(), &created)
        .await
        .unwrap();
    assert_ne!(
        renewed.metadata.resource_version.as_deref(),
        Some(first.as_str())
    );
    assert_eq!(
        code(leases.replace("l", &PostParams::default(), &created).await),
        409,
        "a PUT of the first version"
    );
    let stale = json!({"metadata": {"resourceVersion": first}, "spec": {"holderIdentity": "b"}});
    assert_eq!(
        code(
            leases
                .patch("l", &PatchParams::default(), &Patch::Merge(&stale))
                .await
        ),
        409
    );
    let patched = leases
        .patch(
            "l",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "b"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let mut bad = renewed.clone();
    bad.metadata.resource_version = None;
    bad.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
    assert_eq!(
        code(leases.replace("l", &PostParams::default(), &bad).await),
        422
    );
    let holders: Vec<_> = server
        .lease_versions(LEASE_NAMESPACE, "l")
        .iter()
        .map(|l| l["spec"]["holderIdentity"].clone())
        .collect();
    assert_eq!(holders, [json!("a"), json!("a"), json!("b")]);
}

/// Three candidates: one leader at a time. Its task ends without a word (as when the process
/// dies): another leads within two lease periods. It releases the Lease: the third leads.
#[tokio::test]
async fn one_leader_at_a_time_among_candidates() {
    let server = FakeApiServer::start().await.unwrap();
    let client = kube_client(&server).await;
    let duration = Duration::from_secs(2);
    let mut candidates: Vec<(String, herald_k8s::lease::Candidate)> = (1..=3)
        .map(|i| {
            let name = format!("candidate-{i}");
            (
                name.clone(),
                herald_k8s::lease::spawn_candidate(
                    client.clone(),
                    candidate_settings(&name, duration),
                ),
            )
        })
        .collect();
    let leaders = |candidates: &[(String, herald_k8s::lease::Candidate)]| -> Vec<String> {
        candidates
            .iter()
            .filter(|(_, c)| *c.leading().borrow())
            .map(|(n, _)| n.clone())
            .collect()
    };
    // Sampled every 5 ms for `span`: never two leaders; the one there is at the end.
    async fn sample(
        candidates: &[(String, herald_k8s::lease::Candidate)],
        span: Duration,
        leaders: impl Fn(&[(String, herald_k8s::lease::Candidate)]) -> Vec<String>,
    ) -> Option<String> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < span {
            let now = leaders(candidates);
            assert!(now.len() <= 1, "two leaders at once: {now:?}");
            last = now.into_iter().next();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last
    }
    let first = sample(&candidates, duration * 2, leaders)
        .await
        .expect("a leader");
    let position = candidates.iter().position(|(n, _)| *n == first).unwrap();
    drop(candidates.remove(position));
    let second = sample(&candidates, duration * 2, leaders)
        .await
        .expect("a new leader after the first died");
    let holder =
        server.lease(LEASE_NAMESPACE, "contested").unwrap()["spec"]["holderIdentity"].clone();
    assert_eq!(holder, json!(second));
    let position = candidates.iter().position(|(n, _)| *n == second).unwrap();
    let (_, leader) = candidates.remove(position);
    leader.release(duration).await;
    let third = sample(&candidates, duration, leaders)
        .await
        .expect("the last candidate leads after the release");
    let holders: Vec<String> = server
        .lease_versions(LEASE_NAMESPACE, "contested")
        .iter()
        .map(|l| {
            l["spec"]["holderIdentity"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let mut changes = holders.clone();
    changes.dedup();
    assert_eq!(
        changes,
        [first.clone(), second.clone(), String::new(), third.clone()],
        "the Lease's holders in order"
    );
    println!(
        "candidates: {first} led and died, {second} led and released, {third} led; never two at once"
    );
}
