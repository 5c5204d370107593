//! Latency benchmark: `cargo bench -p herald --bench latency`; at the 5,000-node scenario with
//! `-- --scale large` (or `HERALD_SCALE=large`).
//!
//! From a cluster-state change to gobgpd acknowledging the plan that contains it, under a churn of
//! 1,000 EndpointSlice changes a second on the scale cluster (1,000 nodes, 20,000 Services, 200,000
//! endpoints), or of 5,000 a second on the 5,000-node one (50,000 Services, 500,000 endpoints;
//! `HERALD_LATENCY_RATE` sets another rate), through herald's own pipeline in one process: cluster states published on a source
//! channel as a source does, `run::spawn_planner` (the planner thread of `herald run`: incremental
//! planner fed by the difference between states, guard, publication) and the real reconciler
//! (`gobgp::spawn_with`, `V3Client`, herald's default settings) pushing into a real gobgpd.
//!
//! A change's latency runs from its scheduled time (so a source or planner that falls behind is
//! charged for it) to the `SinkStatus` whose `applied_generation` first covers a plan made from a
//! cluster state containing it (`PlanSnapshot::cluster_version`; the status's `last_applied` stamp).
//! Only changes that change a route count: the others have nothing for gobgpd to acknowledge. Which
//! ones those are is found after the run, by replaying the same changes through an
//! `IncrementalPlanner` (not during it: that would take CPU from the pipeline). No guard, so no
//! hold-down.
//!
//! Two ways of publishing cluster states: one per change, and paced as the Kubernetes source paces
//! them (at least `kubernetes::DEFAULT_MIN_INTERVAL` apart, a lone change at once). The paced run is
//! longer than the default anti-entropy interval (30 s), so that it includes one anti-entropy pass
//! as herald in production would. First, what each step costs at this scale, measured alone. Each
//! run reports where the latency goes: change -> plan published, plan published -> acknowledged.
//! Figures are of one run; the machine is shared and noisy.
//!
//! `HERALD_LATENCY_ONLY=per-change|paced` runs one 15 s churn only (for `perf record`).

use herald_testkit::gobgpd;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gobgpd::Gobgpd;
use herald_core::cluster::ClusterState;
use herald_core::config::{Config, GobgpConfig, Origin, Seconds};
use herald_core::plan::{Plan, PlanSnapshot};
use herald_core::planner::incremental::{Change, IncrementalPlanner};
use herald_gobgp::SinkStatus;
use herald_gobgp::paths::{self, PathSet};
use herald_gobgp::reconciler::GobgpClient;
use herald_gobgp::v3::V3Client;
use herald_k8s::source::SourceSnapshot;
use herald_k8s::source::kubernetes::DEFAULT_MIN_INTERVAL;
use herald_testkit::scale::{self, Scale};
use tokio::sync::watch;

/// The cluster and the rate of changes to it (per second).
#[derive(Clone, Copy)]
struct Load {
    scale: Scale,
    rate: f64,
}
/// How long each churn runs. The paced run is longer than the default anti-entropy interval
/// (30 s), so that it includes one anti-entropy pass.
const PER_CHANGE_RUN: Duration = Duration::from_secs(10);
const PACED_RUN: Duration = Duration::from_secs(35);

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

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn gobgp_config(address: String) -> GobgpConfig {
    GobgpConfig {
        address,
        origin: Origin::Igp,
        local_pref: None,
        anti_entropy_interval: Seconds(Duration::from_secs(30)),
        batch_size: 1000,
    }
}

/// How the source publishes cluster states.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pacing {
    /// One state per change.
    PerChange,
    /// As the Kubernetes source: at least `DEFAULT_MIN_INTERVAL` apart, a lone change at once.
    Paced,
}

/// One change: when it was due, the first source version that contained it, the slice it wrote.
struct Applied {
    due: Instant,
    version: u64,
    change: Change,
}

struct Churn {
    changes: Vec<Applied>,
    /// Time per publication of a cluster state (applying its changes, the copy).
    publish: Vec<Duration>,
    /// How far behind schedule the source was at the end.
    behind: Duration,
}

fn source_snapshot(state: &ClusterState, version: u64) -> SourceSnapshot {
    SourceSnapshot::synced("bench", Arc::new(state.clone()), version)
}

/// Applies changes to `state` at `load.rate` for `run`, publishing states on `source` as `pacing` says.
fn churn(
    state: &mut ClusterState,
    rng: &mut scale::Rng,
    source: &watch::Sender<SourceSnapshot>,
    run: Duration,
    pacing: Pacing,
    load: Load,
) -> Churn {
    let total = (run.as_secs_f64() * load.rate) as usize;
    let due = |t0: Instant, i: usize| t0 + Duration::from_secs_f64(i as f64 / load.rate);
    let mut version = source.borrow().version;
    let mut out = Churn {
        changes: Vec::with_capacity(total),
        publish: vec![],
        behind: Duration::ZERO,
    };
    let t0 = Instant::now();
    let mut last_published: Option<Instant> = None;
    let mut unpublished = 0usize;
    let mut i = 0;
    while i < total || unpublished > 0 {
        let now = Instant::now();
        let publish_at = match (pacing, last_published) {
            (Pacing::Paced, Some(at)) => at + DEFAULT_MIN_INTERVAL,
            _ => now,
        };
        if unpublished > 0 && publish_at <= now {
            let started = Instant::now();
            version += 1;
            source.send_replace(source_snapshot(state, version));
            out.publish.push(started.elapsed());
            last_published = Some(now);
            unpublished = 0;
            continue;
        }
        if i < total && due(t0, i) <= now {
            let slice = scale::endpoint_change(state, load.scale, rng);
            let change = Change::EndpointSlice(slice.into());
            state.apply(&change);
            out.changes.push(Applied {
                due: due(t0, i),
                version: version + 1,
                change,
            });
            unpublished += 1;
            i += 1;
            continue;
        }
        let next = if i < total { due(t0, i) } else { publish_at };
        let next = if unpublished > 0 {
            next.min(publish_at)
        } else {
            next
        };
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    out.behind = Instant::now().saturating_duration_since(due(t0, total.saturating_sub(1)));
    out
}

/// Every plan published: (generation, the cluster version it was made from, when).
fn watch_plans(mut plans: watch::Receiver<PlanSnapshot>) -> Arc<Mutex<Vec<(u64, u64, Instant)>>> {
    let seen: Arc<Mutex<Vec<(u64, u64, Instant)>>> = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while plans.changed().await.is_ok() {
            let (generation, version) = {
                let p = plans.borrow_and_update();
                (p.generation, p.cluster_version)
            };
            out.lock()
                .unwrap()
                .push((generation, version, Instant::now()));
        }
    });
    seen
}

/// Every time the status says a newer generation is applied: (generation, when it was applied).
fn watch_acks(
    mut status: watch::Receiver<SinkStatus>,
    clock: (Instant, SystemTime),
) -> Arc<Mutex<Vec<(u64, Instant)>>> {
    let acks: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let out = acks.clone();
    tokio::spawn(async move {
        let mut last = 0;
        while status.changed().await.is_ok() {
            let (generation, at) = {
                let s = status.borrow_and_update();
                (s.applied_generation, s.last_applied)
            };
            if generation > last {
                last = generation;
                let at = at
                    .and_then(|t| t.duration_since(clock.1).ok())
                    .map_or_else(Instant::now, |d| clock.0 + d);
                out.lock().unwrap().push((generation, at));
            }
        }
    });
    acks
}

struct Report {
    /// Per change that changed a route: from when it was due to its acknowledgment.
    routes: Vec<Duration>,
    /// Per published plan: from publication to acknowledgment (the reconciler and gobgpd).
    sink: Vec<Duration>,
    /// Per change that changed a route: from when it was due to the publication of its plan.
    planner: Vec<Duration>,
}

fn latencies(
    changes: &[&Applied],
    plans: &[(u64, u64, Instant)],
    acks: &[(u64, Instant)],
) -> Report {
    let ack = |generation: u64| {
        let k = acks.partition_point(|(g, _)| *g < generation);
        acks.get(k)
            .map(|a| a.1)
            .expect("every generation acknowledged")
    };
    let mut report = Report {
        routes: vec![],
        sink: vec![],
        planner: vec![],
    };
    for (generation, _, at) in plans {
        report
            .sink
            .push(ack(*generation).saturating_duration_since(*at));
    }
    for c in changes {
        // The first plan made from a state that contains the change.
        let k = plans.partition_point(|(_, version, _)| *version < c.version);
        let (generation, _, published) = plans.get(k).copied().expect("every route change planned");
        report
            .planner
            .push(published.saturating_duration_since(c.due));
        report
            .routes
            .push(ack(generation).saturating_duration_since(c.due));
    }
    report.routes.sort();
    report.sink.sort();
    report.planner.sort();
    report
}

fn summary(label: &str, sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return format!("{label}: none");
    }
    format!(
        "{label} ({}): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        sorted.len(),
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.9)),
        ms(percentile(sorted, 0.99)),
        ms(percentile(sorted, 0.999)),
        ms(*sorted.last().unwrap())
    )
}

/// One churn run: herald's planner thread and reconciler, a fresh gobgpd, the scale cluster.
async fn run(
    initial: &ClusterState,
    config: &Config,
    seed: u64,
    run: Duration,
    pacing: Pacing,
    load: Load,
) {
    let g = Gobgpd::start().await;
    let cfg = gobgp_config(g.address());
    let client = V3Client::new(&cfg.address, cfg.batch_size, herald_gobgp::CALL_TIMEOUT).unwrap();
    let (source, source_rx) = watch::channel(source_snapshot(initial, 1));
    let plans = herald::run::spawn_planner(Arc::new(config.clone()), source_rx).unwrap();
    let mut status = herald_gobgp::spawn_with(
        client,
        &cfg.address,
        herald_gobgp::settings(&cfg),
        plans.clone(),
    );
    let t = Instant::now();
    status
        .wait_for(|s| s.applied_generation >= 1)
        .await
        .unwrap();
    let initial_push = t.elapsed();
    let paths = plans.borrow().plan.path_count();
    assert_eq!(g.path_count().await as usize, paths);
    let clock = (Instant::now(), SystemTime::now());
    let acks = watch_acks(status.clone(), clock);
    let published = watch_plans(plans.clone());
    let gobgpd_pid = g.pid().unwrap().to_string();
    let cpu = |pid: &str| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let (cpu_self, cpu_gobgpd) = (cpu("self"), cpu(&gobgpd_pid));
    let started = Instant::now();
    let mut state = initial.clone();
    let (churned, _source) = tokio::task::spawn_blocking(move || {
        let mut rng = scale::Rng::new(seed);
        (
            churn(&mut state, &mut rng, &source, run, pacing, load),
            source,
        )
    })
    .await
    .unwrap();
    let wall = started.elapsed();
    let (cpu_self, cpu_gobgpd) = (cpu("self") - cpu_self, cpu(&gobgpd_pid) - cpu_gobgpd);

    // Which changes changed a route: the same changes again, through a planner of their own.
    let mut replay = IncrementalPlanner::new(initial.clone(), config.clone());
    let moved: Vec<&Applied> = churned
        .changes
        .iter()
        .filter(|c| !replay.apply(c.change.clone()).is_empty())
        .collect();
    // The pipeline ends with the replayed plan, in gobgpd.
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut plans = plans.clone();
        let generation = plans
            .wait_for(|p| *p.plan == *replay.plan())
            .await
            .expect("the planner runs")
            .generation;
        status
            .wait_for(|s| s.applied_generation >= generation)
            .await
            .expect("the reconciler runs");
    })
    .await
    .expect("the pipeline ends with the replayed plan, applied");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let acks = acks.lock().unwrap().clone();
    let published = published.lock().unwrap().clone();
    let s = status.borrow().clone();
    let report = latencies(&moved, &published, &acks);
    let n = churned.changes.len();
    println!(
        "{}: {n} changes in {:.1} s ({:.0}/s), {} of them changed a route; {} cluster states published, {} plans, {} acknowledged by the reconciler; initial plan and push of {paths} paths {:.0} ms",
        match pacing {
            Pacing::PerChange => "one cluster state per change",
            Pacing::Paced => "cluster states paced as by the Kubernetes source",
        },
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        moved.len(),
        churned.publish.len(),
        published.len(),
        acks.len(),
        ms(initial_push)
    );
    println!(
        "  source: per publication median {:.3} ms (the state's copy), max {:.2} ms; behind schedule at the end: {:.1} ms",
        ms(median(churned.publish.clone())),
        ms(*churned.publish.iter().max().unwrap()),
        ms(churned.behind)
    );
    println!(
        "  reconciler: {} paths added, {} withdrawn, {} errors, {} repairs; CPU over the run: bench process {:.1} s, gobgpd {:.1} s",
        s.paths_added, s.paths_withdrawn, s.errors, s.repairs, cpu_self, cpu_gobgpd
    );
    println!(
        "  {}",
        summary(
            "latency, changes that changed a route (an AddPath)",
            &report.routes
        )
    );
    println!(
        "  where it goes: {}",
        summary(
            "change due -> its plan published (source + planner)",
            &report.planner
        )
    );
    println!(
        "                 {}",
        summary(
            "plan published -> acknowledged (reconciler + gobgpd), per plan",
            &report.sink
        )
    );
    let slow = report
        .routes
        .iter()
        .filter(|d| **d > Duration::from_millis(20))
        .count();
    println!(
        "  route changes over 20 ms: {slow} ({:.2}%); target p99 <= 20 ms",
        100.0 * slow as f64 / moved.len().max(1) as f64
    );
    assert_eq!(
        g.path_count().await,
        s.paths_applied,
        "gobgpd holds the plan"
    );
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let bench_started = Instant::now();
    let scale = Scale::selected_or_exit();
    let large = scale.nodes > Scale::LARGE.nodes;
    // At 5,000 nodes, `ecmp: {maxPaths: 64}`: without a limit a range is a prefix of ~5,000 next
    // hops, which gobgpd takes at a few hundred paths a second (minutes for the first push).
    let config = if large {
        Config::parse(&format!("{}ecmp: {{maxPaths: 64}}\n", scale::CONFIG)).expect("scale config")
    } else {
        scale::config()
    };
    let default_rate = if large { 5000.0 } else { 1000.0 };
    let rate = std::env::var("HERALD_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default_rate);
    let load = Load { scale, rate };
    println!(
        "scale: {}; churn: {rate:.0} EndpointSlice changes a second{}",
        scale.describe(),
        if large { "; ecmp: {maxPaths: 64}" } else { "" }
    );
    let initial = scale::cluster(scale);
    let mut planner = IncrementalPlanner::new(initial.clone(), config.clone());
    let plan: Plan = planner.plan().clone();
    println!(
        "cluster: {} nodes, {} services, {} endpoint slices; plan: {} routes, {} paths, {} Services explained",
        planner.state().nodes.len(),
        planner.state().services.len(),
        planner.state().endpoint_slices.len(),
        plan.routes.len(),
        plan.path_count(),
        plan.services.len()
    );

    // What each step costs, alone.
    let mut rng = scale::Rng::new(11);
    let mut apply_times = Vec::new();
    let mut local_change = None;
    for _ in 0..2000 {
        let slice = scale::endpoint_change(planner.state(), scale, &mut rng);
        let t = Instant::now();
        let delta = planner.apply(Change::EndpointSlice(slice.into()));
        apply_times.push(t.elapsed());
        if !delta.is_empty() && local_change.is_none() {
            local_change = Some(planner.plan().clone());
        }
    }
    let changed_plan = local_change.expect("some change moves a route");
    let clone = time(20, || plan.clone());
    let compare = time(20, || plan == changed_plan);
    // What publishing cost when every plan was copied whole: each route cloned.
    let deep_clone = time(5, || {
        let routes: Vec<_> = plan
            .routes
            .iter()
            .map(|(p, r)| (*p, herald_core::plan::Route::clone(r)))
            .collect();
        routes.len()
    });
    let mut one_change = initial.clone();
    one_change.apply(&Change::EndpointSlice(
        scale::endpoint_change(&initial, scale, &mut rng).into(),
    ));
    let state_copy = time(20, || initial.clone());
    let state_diff = time(20, || initial.changes_to(&one_change));
    let desired = paths::desired_paths(&plan, Origin::Igp, None);
    let desired_changed = paths::desired_paths(&changed_plan, Origin::Igp, None);
    let desired_time = time(20, || paths::desired_paths(&plan, Origin::Igp, None));
    let diff_time = time(20, || paths::diff(&desired_changed, &desired));
    let in_rib_time = time(20, || paths::prefixes_in_rib(&desired, &desired));
    let ops = paths::diff(&desired_changed, &desired);
    // What the reconciler does per plan instead, since it keeps its path set up to date.
    let mut kept = paths::Desired::new(&plan, Origin::Igp, None);
    let mut forth = false;
    let mut changed_prefixes = Vec::new();
    let update_time = time(21, || {
        forth = !forth;
        let changed = if forth {
            kept.update(&plan, &changed_plan)
        } else {
            kept.update(&changed_plan, &plan)
        };
        changed_prefixes = changed.expect("a small change is taken incrementally");
    });
    let restricted_time = time(20, || {
        paths::diff_prefixes(&desired_changed, &desired, &changed_prefixes)
    });
    println!("costs at this scale, medians measured alone:");
    println!(
        "  IncrementalPlanner::apply, one EndpointSlice change: {:.1} us",
        median(apply_times).as_secs_f64() * 1e6
    );
    println!(
        "  Plan copy (what each publication costs; shared): {:.4} ms; comparing two versions a change apart {:.4} ms; \
         for scale, a deep copy of its {} routes {:.2} ms",
        ms(clone),
        ms(compare),
        plan.routes.len(),
        ms(deep_clone)
    );
    println!(
        "  ClusterState copy (what each source publication costs; shared): {:.4} ms; the changes between two states a change apart {:.4} ms",
        ms(state_copy),
        ms(state_diff)
    );
    println!(
        "  path set of a whole plan {:.2} ms; full-set diff {:.3} ms ({} ops for a one-route change); inRib {:.2} ms",
        ms(desired_time),
        ms(diff_time),
        ops.len(),
        ms(in_rib_time)
    );
    println!(
        "  the reconciler per plan, kept up to date: path set update {:.3} ms (compares the {} routes), diff of the changed prefixes {:.4} ms",
        ms(update_time),
        plan.routes.len(),
        ms(restricted_time)
    );
    {
        let g = Gobgpd::start().await;
        let mut client = V3Client::new(&g.address(), 1000, herald_gobgp::CALL_TIMEOUT).unwrap();
        let all = paths::diff(&desired, &PathSet::new());
        for chunk in all.chunks(8000) {
            client.push(chunk).await.unwrap();
        }
        let mut get_table = Vec::new();
        let mut small_push = Vec::new();
        for i in 0..50 {
            let t = Instant::now();
            client.path_counts().await.unwrap();
            get_table.push(t.elapsed());
            // Flip one route back and forth: a real AddPath of a few paths.
            let (from, to) = if i % 2 == 0 {
                (&desired, &desired_changed)
            } else {
                (&desired_changed, &desired)
            };
            let ops = paths::diff(to, from);
            let t = Instant::now();
            client.push(&ops).await.unwrap();
            small_push.push(t.elapsed());
        }
        let mut lists = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let view = client.list().await.unwrap();
            lists.push(t.elapsed());
            assert_eq!(view.own.len(), desired.len());
        }
        println!(
            "  gobgpd holding {} paths: ListPath read-back (each anti-entropy pass, every 30 s by default, beside the pushes) {:.0} ms",
            desired.len(),
            ms(median(lists))
        );
        println!(
            "  gobgpd holding {} paths: GetTable x2 (the reconciler's path count after each plan) {:.2} ms; AddPathStream of {} ops {:.2} ms",
            desired.len(),
            ms(median(get_table)),
            ops.len(),
            ms(median(small_push))
        );
    }

    if let Ok(only) = std::env::var("HERALD_LATENCY_ONLY") {
        // For profiling one run: `HERALD_LATENCY_ONLY=paced perf record -g target/release/deps/latency-*`.
        let pacing = if only == "per-change" {
            Pacing::PerChange
        } else {
            Pacing::Paced
        };
        run(&initial, &config, 2, Duration::from_secs(15), pacing, load).await;
        return;
    }
    run(
        &initial,
        &config,
        1,
        PER_CHANGE_RUN,
        Pacing::PerChange,
        load,
    )
    .await;
    run(&initial, &config, 2, PACED_RUN, Pacing::Paced, load).await;
    println!("bench took {:.0?}", bench_started.elapsed());
}
