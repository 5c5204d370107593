//! Node changes at scale: `cargo bench -p herald --bench nodes`.
//!
//! On the scale cluster (1,000 nodes, 20,000 Services, 200,000 endpoints), side by side in one run:
//!
//! 1. **A batch of 1,000 Node changes** (what a cluster state holds after `kubectl label nodes
//!    --all`, a rolling kubelet upgrade, or the mass `Unknown` of a sick control plane): planned one
//!    change at a time as `herald run` did (`IncrementalPlanner::apply`, a full re-plan per Node
//!    change; timed on the first changes and multiplied out, the whole would take minutes), and as
//!    one batch (`IncrementalPlanner::apply_batch`). Two batches: 1,000 relabels with a label
//!    herald does not read, and a rolling upgrade's 1,000 changes of which 50 flip `Ready`.
//! 2. **Kubelet status churn**: what one Node status report costs herald when it changes nothing
//!    herald reads (the heartbeat times, the images): the watcher's JSON decoding of a realistic
//!    Node, the conversion to the cluster model, the comparison with the Node herald has (the
//!    Kubernetes source's steps; it then publishes nothing, so nothing is planned). Given per
//!    report, and as CPU share for 5,000 nodes reporting every 10 s.
//! 3. **Endpoint change -> gobgpd acknowledgment during a mass relabel**: endpoint churn at 200/s for
//!    12 s while 1,000 Nodes are relabelled at 500/s, through the planner thread and the real
//!    reconciler into a real gobgpd (as the latency bench does), once with the planner as it was
//!    (every change of a state applied one by one) and once with `herald run`'s planner
//!    (`run::spawn_planner`: batches, guard). p50/p99 of the changes that changed a route.
//!
//! Figures are of one run; the machine is shared and noisy.

use herald_testkit::gobgpd;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gobgpd::Gobgpd;
use herald_core::cluster::{ClusterState, Node};
use herald_core::config::{Config, GobgpConfig, Origin, Seconds};
use herald_core::plan::PlanSnapshot;
use herald_core::planner::incremental::{Change, IncrementalPlanner};
use herald_gobgp::v3::V3Client;
use herald_k8s::source::SourceSnapshot;
use herald_k8s::source::kubernetes::DEFAULT_MIN_INTERVAL;
use herald_testkit::scale::{self, Scale};
use k8s_openapi::api::core::v1 as core;
use tokio::sync::watch;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Every node relabelled with a label herald does not read (`kubectl label nodes --all team=blue`).
fn relabelled(state: &ClusterState) -> ClusterState {
    let mut out = state.clone();
    for node in state.nodes.values() {
        let mut node = Node::clone(node);
        node.labels.insert("team".to_string(), "blue".to_string());
        out.insert_node(node);
    }
    out
}

/// A rolling kubelet upgrade, one state's worth: every node's version label changes, 50 flip Ready.
fn upgraded(state: &ClusterState) -> ClusterState {
    let mut out = state.clone();
    for (i, node) in state.nodes.values().enumerate() {
        let mut node = Node::clone(node);
        node.labels.insert(
            "node.kubernetes.io/kubelet-version".to_string(),
            "v1.34.2".to_string(),
        );
        if i % 20 == 3 {
            node.ready = !node.ready;
        }
        out.insert_node(node);
    }
    out
}

/// One batch of Node changes, planned one by one (the first `sample` of them, timed) and as a batch.
fn batch(label: &str, from: &ClusterState, to: &ClusterState, sample: usize) {
    let changes = from.changes_to(to);
    let n = changes.len();
    let mut one_by_one = planner_of(from);
    let mut times = Vec::new();
    for change in changes.iter().take(sample).cloned() {
        let t = Instant::now();
        one_by_one.apply(change);
        times.push(t.elapsed());
    }
    let per_change = median(times.clone());
    let sampled: Duration = times.iter().sum();
    let mut batched = planner_of(from);
    let t = Instant::now();
    let delta = batched.apply_batch(changes);
    let batch_time = t.elapsed();
    let full = herald_core::planner::plan(to, batched_config());
    assert_eq!(
        batched.plan(),
        &full,
        "the batch plans what a full plan of the state plans"
    );
    println!(
        "  {label}: {n} Node changes; one by one: {:.1} ms per change (median of the first {sample}: {:.2} s for them), \
         {:.0} s for the {n} multiplied out; as one batch: {:.1} ms ({} routes changed); ratio {:.0}x",
        ms(per_change),
        sampled.as_secs_f64(),
        per_change.as_secs_f64() * n as f64,
        ms(batch_time),
        delta.upserted.len() + delta.removed.len(),
        per_change.as_secs_f64() * n as f64 / batch_time.as_secs_f64().max(1e-6)
    );
}

fn batched_config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(scale::config)
}

/// A planner of `state` (a full plan: what the planner thread has after the state).
fn planner_of(state: &ClusterState) -> IncrementalPlanner {
    IncrementalPlanner::new(state.clone(), batched_config().clone())
}

/// A Node as a kubelet reports it on a node of a real cluster: labels, annotations, five
/// conditions, 40 images, capacity, node info. `beat` moves the heartbeat times.
fn node_json(name: &str, address: &str, beat: u64) -> String {
    let time = |s: u64| {
        format!(
            "2026-12-04T{:02}:{:02}:{:02}Z",
            (s / 3600) % 24,
            (s / 60) % 60,
            s % 60
        )
    };
    let condition = |t: &str, status: &str, reason: &str| {
        format!(
            r#"{{"type":"{t}","status":"{status}","lastHeartbeatTime":"{}","lastTransitionTime":"{}","reason":"{reason}","message":"kubelet has {reason}"}}"#,
            time(beat),
            time(0)
        )
    };
    let images: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"names":["registry.example.com/team-{i}/app@sha256:{:064x}","registry.example.com/team-{i}/app:v{i}.2.{}"],"sizeBytes":{}}}"#,
                i * 7919,
                i % 10,
                50_000_000 + i * 1_234_567
            )
        })
        .collect();
    format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","uid":"6c1f3c3e-1111-4a4a-9b9b-{:012}","resourceVersion":"{}","creationTimestamp":"2026-01-01T00:00:00Z",
"labels":{{"beta.kubernetes.io/arch":"amd64","beta.kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","kubernetes.io/hostname":"{name}","kubernetes.io/os":"linux",
"node.kubernetes.io/instance-type":"m6i.4xlarge","topology.kubernetes.io/region":"eu-west-1","topology.kubernetes.io/zone":"eu-west-1a","node-role.kubernetes.io/worker":"",
"team":"platform","rack":"r12"}},
"annotations":{{"node.alpha.kubernetes.io/ttl":"0","volumes.kubernetes.io/controller-managed-attach-detach":"true","csi.volume.kubernetes.io/nodeid":"{{\"ebs.csi.aws.com\":\"i-0abc\"}}"}}}},
"spec":{{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"],"providerID":"aws:///eu-west-1a/i-0abc"}},
"status":{{"capacity":{{"cpu":"16","ephemeral-storage":"104845292Ki","hugepages-1Gi":"0","hugepages-2Mi":"0","memory":"65049628Ki","pods":"110"}},
"allocatable":{{"cpu":"15890m","ephemeral-storage":"95551679124","hugepages-1Gi":"0","hugepages-2Mi":"0","memory":"64034076Ki","pods":"110"}},
"conditions":[{},{},{},{},{}],
"addresses":[{{"type":"InternalIP","address":"{address}"}},{{"type":"Hostname","address":"{name}"}},{{"type":"InternalDNS","address":"{name}.eu-west-1.compute.internal"}}],
"daemonEndpoints":{{"kubeletEndpoint":{{"Port":10250}}}},
"nodeInfo":{{"machineID":"ec2abc","systemUUID":"ec2abc","bootID":"b0b0","kernelVersion":"6.1.0-27-amd64","osImage":"Debian GNU/Linux 12 (bookworm)","containerRuntimeVersion":"containerd://1.7.22","kubeletVersion":"v1.34.1","kubeProxyVersion":"v1.34.1","operatingSystem":"linux","architecture":"amd64"}},
"images":[{}]}}}}"#,
        beat % 1_000_000_000_000,
        1_000_000 + beat,
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        condition("Ready", "True", "KubeletReady"),
        condition("NetworkUnavailable", "False", "RouteCreated"),
        images.join(",")
    )
}

fn status_churn() {
    const NODES: usize = 5000;
    const REPORTS: usize = 20_000;
    // The nodes as herald has them.
    let known: BTreeMap<String, Arc<Node>> = (0..NODES)
        .map(|i| {
            let json = node_json(
                &scale::node_name(i as u32),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                0,
            );
            let node: core::Node = serde_json::from_str(&json).unwrap();
            let node = herald_k8s::from_node(&node);
            (node.name.clone(), Arc::new(node))
        })
        .collect();
    let reports: Vec<String> = (0..REPORTS)
        .map(|r| {
            let i = r % NODES;
            node_json(
                &scale::node_name(i as u32),
                &format!("10.1.{}.{}", i / 250, i % 250 + 1),
                10 * (r / NODES + 1) as u64,
            )
        })
        .collect();
    let bytes = reports[0].len();
    let (mut decode, mut convert) = (Duration::ZERO, Duration::ZERO);
    let mut changed = 0usize;
    for report in &reports {
        let t = Instant::now();
        let node: core::Node = serde_json::from_str(report).unwrap();
        let t1 = Instant::now();
        let model = herald_k8s::from_node(&node);
        // The source's test before it changes (and publishes) anything.
        changed += usize::from(known.get(&model.name).map(|n| &**n) != Some(&model));
        decode += t1 - t;
        convert += t1.elapsed();
    }
    assert_eq!(
        changed, 0,
        "a status report that changes nothing herald reads changes nothing"
    );
    let per = |d: Duration| d.as_secs_f64() * 1e6 / REPORTS as f64;
    let rate = NODES as f64 / 10.0;
    println!(
        "kubelet status churn ({bytes} bytes of JSON per Node, {REPORTS} reports of {NODES} nodes that change only heartbeat times):\n  \
         per report: JSON decoding (kube's watcher) {:.1} us, conversion and comparison (herald's source) {:.1} us; \
         {changed} changes published, so nothing planned; 5,000 nodes every 10 s ({rate:.0}/s): {:.1}% of a core, {:.2}% of it herald's own",
        per(decode),
        per(convert),
        rate * (per(decode) + per(convert)) / 1e4,
        rate * per(convert) / 1e4
    );
}

fn source_snapshot(state: &ClusterState, version: u64) -> SourceSnapshot {
    SourceSnapshot::synced("bench", Arc::new(state.clone()), version)
}

/// The planner thread as `herald run` had it before Node changes were batched: every change of a
/// new state applied one by one (a full re-plan per Node change), no guard.
fn spawn_one_by_one_planner(
    config: Config,
    mut source: watch::Receiver<SourceSnapshot>,
) -> watch::Receiver<PlanSnapshot> {
    let (plans, rx) = watch::channel(PlanSnapshot::default());
    let runtime = tokio::runtime::Handle::current();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let mut planner: Option<IncrementalPlanner> = None;
            let mut planned: Option<Arc<ClusterState>> = None;
            loop {
                let (cluster, version) = {
                    let s = source.borrow_and_update();
                    (s.cluster.clone(), s.version)
                };
                if let Some(cluster) = cluster {
                    match (&mut planner, &planned) {
                        (Some(p), Some(before)) => {
                            for change in before.changes_to(&cluster) {
                                p.apply(change);
                            }
                        }
                        _ => {
                            planner = Some(IncrementalPlanner::new(
                                ClusterState::clone(&cluster),
                                config.clone(),
                            ))
                        }
                    }
                    planned = Some(cluster);
                    let plan = planner.as_ref().unwrap().plan().clone();
                    plans.send_if_modified(|current| {
                        if current.generation > 0 && *current.plan == plan {
                            return false;
                        }
                        current.generation += 1;
                        current.cluster_version = version;
                        current.plan = Arc::new(plan);
                        true
                    });
                }
                if source.changed().await.is_err() {
                    return;
                }
            }
        })
    });
    rx
}

/// What happened to one endpoint change: when it was due, the first source version with it.
struct Applied {
    due: Instant,
    version: u64,
    change: Change,
}

/// Endpoint churn at `rate` for `run`, and from `relabel_at` the 1,000 nodes relabelled at
/// `relabel_rate`; states published as the Kubernetes source paces them.
fn churn(
    state: &mut ClusterState,
    source: &watch::Sender<SourceSnapshot>,
    run: Duration,
    rate: f64,
    relabel_at: Duration,
    relabel_rate: f64,
) -> Vec<Applied> {
    let mut rng = scale::Rng::new(7);
    let nodes: Vec<String> = state.nodes.keys().cloned().collect();
    let total = (run.as_secs_f64() * rate) as usize;
    let t0 = Instant::now();
    let due = |i: usize| t0 + Duration::from_secs_f64(i as f64 / rate);
    let relabel_due = |j: usize| t0 + relabel_at + Duration::from_secs_f64(j as f64 / relabel_rate);
    let mut version = source.borrow().version;
    let mut out = Vec::new();
    let (mut i, mut j) = (0usize, 0usize);
    let mut last_published = Instant::now() - DEFAULT_MIN_INTERVAL;
    let mut unpublished = false;
    while i < total || j < nodes.len() || unpublished {
        let now = Instant::now();
        if unpublished && now >= last_published + DEFAULT_MIN_INTERVAL {
            version += 1;
            source.send_replace(source_snapshot(state, version));
            last_published = now;
            unpublished = false;
            continue;
        }
        if i < total && due(i) <= now {
            let slice = scale::endpoint_change(state, Scale::LARGE, &mut rng);
            let change = Change::EndpointSlice(slice.into());
            state.apply(&change);
            out.push(Applied {
                due: due(i),
                version: version + 1,
                change,
            });
            unpublished = true;
            i += 1;
            continue;
        }
        if j < nodes.len() && relabel_due(j) <= now {
            let mut node = Node::clone(&state.nodes[&nodes[j]]);
            node.labels.insert("team".to_string(), "blue".to_string());
            state.insert_node(node);
            unpublished = true;
            j += 1;
            continue;
        }
        let next = [
            unpublished.then(|| last_published + DEFAULT_MIN_INTERVAL),
            (i < total).then(|| due(i)),
            (j < nodes.len()).then(|| relabel_due(j)),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    out
}

async fn latency_run(
    label: &str,
    initial: &ClusterState,
    config: &Config,
    batched: bool,
) -> (Duration, Duration, usize) {
    let g = Gobgpd::start().await;
    let cfg = GobgpConfig {
        address: g.address(),
        origin: Origin::Igp,
        local_pref: None,
        anti_entropy_interval: Seconds(Duration::from_secs(30)),
        batch_size: 1000,
    };
    let client = V3Client::new(&cfg.address, cfg.batch_size, herald_gobgp::CALL_TIMEOUT).unwrap();
    let (source, source_rx) = watch::channel(source_snapshot(initial, 1));
    let plans = if batched {
        herald::run::spawn_planner(Arc::new(config.clone()), source_rx).unwrap()
    } else {
        spawn_one_by_one_planner(config.clone(), source_rx)
    };
    let mut status = herald_gobgp::spawn_with(
        client,
        &cfg.address,
        herald_gobgp::settings(&cfg),
        plans.clone(),
    );
    status
        .wait_for(|s| s.applied_generation >= 1)
        .await
        .unwrap();
    // Every plan published (generation, cluster version, when) and every acknowledgment.
    let published: Arc<Mutex<Vec<(u64, u64, Instant)>>> = Arc::default();
    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    {
        let (published, mut plans) = (published.clone(), plans.clone());
        tokio::spawn(async move {
            while plans.changed().await.is_ok() {
                let (g, v) = {
                    let p = plans.borrow_and_update();
                    (p.generation, p.cluster_version)
                };
                published.lock().unwrap().push((g, v, Instant::now()));
            }
        });
        let (acks, mut status) = (acks.clone(), status.clone());
        tokio::spawn(async move {
            let mut last = 0;
            while status.changed().await.is_ok() {
                let g = status.borrow_and_update().applied_generation;
                if g > last {
                    last = g;
                    acks.lock().unwrap().push((g, Instant::now()));
                }
            }
        });
    }
    let mut state = initial.clone();
    let started = Instant::now();
    let (changes, _source) = tokio::task::spawn_blocking(move || {
        let changes = churn(
            &mut state,
            &source,
            Duration::from_secs(12),
            200.0,
            Duration::from_secs(2),
            500.0,
        );
        (changes, source)
    })
    .await
    .unwrap();
    // Which changes changed a route: the same changes, replayed through a planner of their own.
    let mut replay = IncrementalPlanner::new(initial.clone(), config.clone());
    let mut moved = Vec::new();
    for c in &changes {
        if !replay.apply(c.change.clone()).is_empty() {
            moved.push(c);
        }
    }
    // Drained: the replayed plan published and acknowledged (bounded: the one-by-one planner is slow).
    tokio::time::timeout(Duration::from_secs(600), async {
        let generation = plans
            .clone()
            .wait_for(|p| *p.plan == *replay.plan())
            .await
            .unwrap()
            .generation;
        status
            .wait_for(|s| s.applied_generation >= generation)
            .await
            .unwrap();
    })
    .await
    .expect("the pipeline drains within 10 minutes");
    let wall = started.elapsed();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let published = published.lock().unwrap().clone();
    let acks = acks.lock().unwrap().clone();
    // A change whose route a later change of the same state undid has no plan of its own: it
    // counts with the next plan published, if any.
    let mut latencies: Vec<Duration> = moved
        .iter()
        .filter_map(|c| {
            let k = published.partition_point(|(_, v, _)| *v < c.version);
            let generation = published.get(k)?.0;
            let a = acks.partition_point(|(g, _)| *g < generation);
            Some(acks.get(a)?.1.saturating_duration_since(c.due))
        })
        .collect();
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "  {label}: {} endpoint changes ({} changed a route) and 1,000 Node relabels; {} plans published; drained {:.1} s after the start; \
         change -> gobgpd ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        changes.len(),
        latencies.len(),
        published.len(),
        wall.as_secs_f64(),
        ms(p50),
        ms(p99),
        ms(*latencies.last().unwrap())
    );
    (p50, p99, latencies.len())
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let config = scale::config();
    let initial = scale::cluster(Scale::LARGE);
    let t = Instant::now();
    let _ = herald_core::planner::plan(&initial, &config);
    println!(
        "scale: {} nodes, {} services, {} endpoint slices; one full plan {:.0} ms",
        initial.nodes.len(),
        initial.services.len(),
        initial.endpoint_slices.len(),
        ms(t.elapsed())
    );

    println!("1,000 Node changes in one cluster state:");
    batch(
        "relabel with a label herald does not read",
        &initial,
        &relabelled(&initial),
        20,
    );
    batch(
        "rolling kubelet upgrade (a version label on every node, 50 flip Ready)",
        &initial,
        &upgraded(&initial),
        20,
    );

    status_churn();

    if std::env::var_os("HERALD_NODES_NO_LATENCY").is_some() {
        return;
    }
    println!(
        "endpoint change -> gobgpd acknowledgment, 200 endpoint changes/s for 12 s, 1,000 Nodes relabelled at 500/s from 2 s:"
    );
    let (_, before, _) =
        latency_run("one change at a time (before)", &initial, &config, false).await;
    let (_, after, _) = latency_run(
        "batched, herald run's planner (after)",
        &initial,
        &config,
        true,
    )
    .await;
    println!(
        "  p99 before / after: {:.0}x",
        before.as_secs_f64() / after.as_secs_f64().max(1e-6)
    );
    println!("bench took {:.0?}", started.elapsed());
}
