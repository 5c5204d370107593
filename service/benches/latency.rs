//! Latency benchmark: `cargo bench -p herald --bench latency`.
//!
//! From a cluster-state change to gobgpd acknowledging the plan that contains it, under a churn of
//! 1,000 EndpointSlice changes a second on the scale cluster (1,000 nodes, 20,000 Services, 200,000
//! endpoints), in one process: an `IncrementalPlanner` (on a thread of its own) applies
//! `scale::endpoint_change` slices on a fixed schedule and publishes `PlanSnapshot`s on a watch
//! channel; the real reconciler (`gobgp::spawn_with`, `V3Client`, herald's default settings) pushes
//! them into a real gobgpd. A change's latency runs from its scheduled time (so a planner that
//! falls behind is charged for it) to the `SinkStatus` whose `applied_generation` first covers the
//! generation that contained it (its `last_applied` stamp). No guard, so no hold-down.
//!
//! Two ways of publishing: one plan per change (each change clones the whole plan), and coalesced
//! (the planner applies every change that is due, then publishes one plan); then, as a what-if that
//! is not herald, coalesced plans published without their Service explanations (what publishing
//! would cost if the plan shared them). First, what each step costs at this scale, measured alone.
//! Each run reports where the latency goes: change -> plan published, plan published -> acknowledged.
//! Figures are of one run; the machine is shared and noisy.
//!
//! `HERALD_LATENCY_ONLY=per-change|coalesced|routes-only` runs one 15 s churn only (for `perf record`).

#[path = "../tests/support/gobgpd.rs"]
mod gobgpd;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gobgpd::Gobgpd;
use herald::config::{GobgpConfig, Origin, Seconds};
use herald::gobgp::paths::{self, PathSet};
use herald::gobgp::reconciler::GobgpClient;
use herald::gobgp::v3::V3Client;
use herald::gobgp::SinkStatus;
use herald::plan::{Plan, PlanSnapshot};
use herald::planner::incremental::{Change, IncrementalPlanner};
use herald::scale::{self, Scale};
use tokio::sync::watch;

const RATE: f64 = 1000.0;
/// How long each churn runs. The coalesced run is longer than the default anti-entropy interval
/// (30 s), so that it includes one anti-entropy pass as herald in production would.
const STRICT_RUN: Duration = Duration::from_secs(5);
const COALESCED_RUN: Duration = Duration::from_secs(35);
const ROUTES_ONLY_RUN: Duration = Duration::from_secs(15);

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

/// How the planner publishes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// One plan per change.
    PerChange,
    /// One plan for every change due.
    Coalesced,
    /// Coalesced, and the plan published without its Service explanations: what publishing would
    /// cost if the plan shared them instead of copying 20,000 of them (a what-if, not herald).
    RoutesOnly,
}

/// One change: when it was due, the generation that carried it, whether it changed a route.
struct Applied {
    due: Instant,
    generation: u64,
    routes_changed: bool,
}

struct Churn {
    changes: Vec<Applied>,
    /// Time per publication: applying its changes, cloning the plan.
    publish: Vec<Duration>,
    clones: Vec<Duration>,
    /// When each generation was published.
    published: Vec<(u64, Instant)>,
    last_generation: u64,
    /// How far behind schedule the planner was at the end.
    behind: Duration,
}

/// Applies changes at `RATE` for `run`; `coalesce`: publish once for every change due, else once per change.
fn churn(
    planner: &mut IncrementalPlanner,
    rng: &mut scale::Rng,
    plans: &watch::Sender<PlanSnapshot>,
    mut generation: u64,
    run: Duration,
    mode: Publish,
) -> Churn {
    let coalesce = mode != Publish::PerChange;
    let total = (run.as_secs_f64() * RATE) as usize;
    let due = |t0: Instant, i: usize| t0 + Duration::from_secs_f64(i as f64 / RATE);
    let mut out = Churn {
        changes: Vec::with_capacity(total),
        publish: vec![],
        clones: vec![],
        published: vec![],
        last_generation: 0,
        behind: Duration::ZERO,
    };
    let (dropper, superseded) = std::sync::mpsc::channel::<PlanSnapshot>();
    std::thread::spawn(move || superseded.into_iter().for_each(drop));
    let t0 = Instant::now();
    let mut i = 0;
    while i < total {
        let now = Instant::now();
        if due(t0, i) > now {
            std::thread::sleep(due(t0, i) - now);
            continue;
        }
        // Every change due by now, or just the next one.
        let last = if coalesce { (((now - t0).as_secs_f64() * RATE) as usize + 1).clamp(i + 1, total) } else { i + 1 };
        let started = Instant::now();
        generation += 1;
        for j in i..last {
            let slice = scale::endpoint_change(planner.state(), Scale::LARGE, rng);
            let delta = planner.apply(Change::EndpointSlice(slice));
            out.changes.push(Applied { due: due(t0, j), generation, routes_changed: !delta.is_empty() });
        }
        let c = Instant::now();
        let plan = match mode {
            Publish::RoutesOnly => {
                let p = planner.plan();
                Plan { routes: p.routes.clone(), refusals: p.refusals.clone(), services: Default::default(), notes: p.notes.clone() }
            }
            _ => planner.plan().clone(),
        };
        let plan = Arc::new(plan);
        out.clones.push(c.elapsed());
        let at = Instant::now();
        let superseded = plans.send_replace(PlanSnapshot { generation, plan });
        out.published.push((generation, at));
        out.publish.push(at - started);
        // Freed elsewhere, as the reconciler does: freeing a whole plan takes milliseconds.
        let _ = dropper.send(superseded);
        i = last;
        if !coalesce && Instant::now().duration_since(t0) > run * 2 {
            // Hopelessly behind: stop here rather than run for minutes.
            break;
        }
    }
    out.behind = Instant::now().saturating_duration_since(due(t0, i.saturating_sub(1)));
    out.last_generation = generation;
    out
}

/// Every time the status says a newer generation is applied: (generation, when it was applied).
fn watch_acks(mut status: watch::Receiver<SinkStatus>, clock: (Instant, SystemTime)) -> Arc<Mutex<Vec<(u64, Instant)>>> {
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
                let at = at.and_then(|t| t.duration_since(clock.1).ok()).map_or_else(Instant::now, |d| clock.0 + d);
                out.lock().unwrap().push((generation, at));
            }
        }
    });
    acks
}

struct Report {
    all: Vec<Duration>,
    routes: Vec<Duration>,
    /// Per published generation: from publication to acknowledgment (the reconciler and gobgpd).
    sink: Vec<Duration>,
    /// Per change: from when it was due to the publication of its generation (the planner).
    planner: Vec<Duration>,
}

fn latencies(changes: &[Applied], published: &[(u64, Instant)], acks: &[(u64, Instant)]) -> Report {
    let ack = |generation: u64| {
        let k = acks.partition_point(|(g, _)| *g < generation);
        acks.get(k).map(|a| a.1).expect("every generation acknowledged")
    };
    let mut report = Report { all: vec![], routes: vec![], sink: vec![], planner: vec![] };
    for (generation, at) in published {
        report.sink.push(ack(*generation).saturating_duration_since(*at));
    }
    let published_at: std::collections::HashMap<u64, Instant> = published.iter().copied().collect();
    for c in changes {
        // The first acknowledgment of a generation at least the change's.
        let latency = ack(c.generation).saturating_duration_since(c.due);
        report.planner.push(published_at[&c.generation].saturating_duration_since(c.due));
        report.all.push(latency);
        if c.routes_changed {
            report.routes.push(latency);
        }
    }
    report.all.sort();
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

/// One churn run against a fresh gobgpd and reconciler that already hold the plan.
async fn run(planner: Arc<Mutex<IncrementalPlanner>>, seed: u64, run: Duration, mode: Publish) {
    let g = Gobgpd::start().await;
    let cfg = gobgp_config(g.address());
    let client = V3Client::new(&cfg.address, cfg.batch_size, herald::gobgp::CALL_TIMEOUT).unwrap();
    let first = Arc::new(planner.lock().unwrap().plan().clone());
    let paths = first.path_count();
    let (tx, rx) = watch::channel(PlanSnapshot { generation: 1, plan: first });
    let mut status = herald::gobgp::spawn_with(client, &cfg.address, herald::gobgp::settings(&cfg), rx);
    let t = Instant::now();
    status.wait_for(|s| s.applied_generation >= 1).await.unwrap();
    let initial = t.elapsed();
    assert_eq!(g.path_count().await as usize, paths);
    let clock = (Instant::now(), SystemTime::now());
    let acks = watch_acks(status.clone(), clock);
    let gobgpd_pid = g.pid().unwrap().to_string();
    let cpu = |pid: &str| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let (cpu_self, cpu_gobgpd) = (cpu("self"), cpu(&gobgpd_pid));
    let started = Instant::now();
    let churned = tokio::task::spawn_blocking(move || {
        let mut planner = planner.lock().unwrap();
        let mut rng = scale::Rng::new(seed);
        churn(&mut planner, &mut rng, &tx, 1, run, mode)
    })
    .await
    .unwrap();
    let last = churned.last_generation;
    tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.applied_generation >= last))
        .await
        .expect("the reconciler catches up")
        .unwrap();
    let wall = started.elapsed();
    let (cpu_self, cpu_gobgpd) = (cpu("self") - cpu_self, cpu(&gobgpd_pid) - cpu_gobgpd);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let acks = acks.lock().unwrap().clone();
    let s = status.borrow().clone();
    let report = latencies(&churned.changes, &churned.published, &acks);
    let n = churned.changes.len();
    println!(
        "{}: {n} changes in {:.1} s ({:.0}/s), {} plans published, {} acknowledged by the reconciler; initial push of {paths} paths {:.0} ms",
        match mode {
            Publish::PerChange => "one plan per change",
            Publish::Coalesced => "coalesced (one plan for every change due)",
            Publish::RoutesOnly => "WHAT-IF, not herald: coalesced, plans published without their 20,000 Service explanations",
        },
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64(),
        churned.publish.len(),
        acks.len(),
        ms(initial)
    );
    println!(
        "  planner: per publication median {:.2} ms (of which plan clone {:.2} ms), max {:.1} ms; behind schedule at the end: {:.0} ms",
        ms(median(churned.publish.clone())),
        ms(median(churned.clones.clone())),
        ms(*churned.publish.iter().max().unwrap()),
        ms(churned.behind)
    );
    println!(
        "  reconciler: {} paths added, {} withdrawn, {} errors, {} repairs; CPU over the run: bench process {:.1} s, gobgpd {:.1} s",
        s.paths_added, s.paths_withdrawn, s.errors, s.repairs, cpu_self, cpu_gobgpd
    );
    println!("  {}", summary("latency, every change", &report.all));
    println!("  {}", summary("latency, changes that changed a route (an AddPath)", &report.routes));
    println!("  where it goes: {}", summary("change due -> its plan published (planner)", &report.planner));
    println!("                 {}", summary("plan published -> acknowledged (reconciler + gobgpd), per plan", &report.sink));
    let slow = report.all.iter().filter(|d| **d > Duration::from_millis(20)).count();
    println!("  changes over 20 ms: {slow} ({:.2}%); target p99 <= 20 ms", 100.0 * slow as f64 / n as f64);
    assert_eq!(g.path_count().await, s.paths_applied, "gobgpd holds the plan");
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    let bench_started = Instant::now();
    let config = scale::config();
    let state = scale::cluster(Scale::LARGE);
    let mut planner = IncrementalPlanner::new(state, config);
    let plan: Plan = planner.plan().clone();
    println!(
        "scale: {} nodes, {} services, {} endpoint slices; plan: {} routes, {} paths, {} service explanations",
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
        let slice = scale::endpoint_change(planner.state(), Scale::LARGE, &mut rng);
        let t = Instant::now();
        let delta = planner.apply(Change::EndpointSlice(slice));
        apply_times.push(t.elapsed());
        if !delta.is_empty() && local_change.is_none() {
            local_change = Some(planner.plan().clone());
        }
    }
    let changed_plan = local_change.expect("some change moves a route");
    let clone = time(20, || plan.clone());
    let clone_routes = time(20, || plan.routes.clone());
    let clone_services = time(20, || plan.services.clone());
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
        let changed = if forth { kept.update(&plan, &changed_plan) } else { kept.update(&changed_plan, &plan) };
        changed_prefixes = changed.expect("a small change is taken incrementally");
    });
    let restricted_time = time(20, || paths::diff_prefixes(&desired_changed, &desired, &changed_prefixes));
    println!("costs at this scale, medians measured alone:");
    println!("  IncrementalPlanner::apply, one EndpointSlice change: {:.1} us", median(apply_times).as_secs_f64() * 1e6);
    println!(
        "  Plan clone then free (what each publication costs): {:.2} ms, of which its {} routes {:.2} ms, its {} Service explanations {:.2} ms",
        ms(clone),
        plan.routes.len(),
        ms(clone_routes),
        plan.services.len(),
        ms(clone_services)
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
        let mut client = V3Client::new(&g.address(), 1000, herald::gobgp::CALL_TIMEOUT).unwrap();
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
            let (from, to) = if i % 2 == 0 { (&desired, &desired_changed) } else { (&desired_changed, &desired) };
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
            "  gobgpd holding {} paths: ListPath read-back (each anti-entropy pass, every 30 s by default; plans wait meanwhile) {:.0} ms",
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

    let planner = Arc::new(Mutex::new(planner));
    if let Ok(only) = std::env::var("HERALD_LATENCY_ONLY") {
        // For profiling one run: `HERALD_LATENCY_ONLY=coalesced perf record -g target/release/deps/latency-*`.
        let mode = match only.as_str() {
            "per-change" => Publish::PerChange,
            "routes-only" => Publish::RoutesOnly,
            _ => Publish::Coalesced,
        };
        run(planner.clone(), 2, Duration::from_secs(15), mode).await;
        return;
    }
    run(planner.clone(), 1, STRICT_RUN, Publish::PerChange).await;
    run(planner.clone(), 2, COALESCED_RUN, Publish::Coalesced).await;
    run(planner.clone(), 3, ROUTES_ONLY_RUN, Publish::RoutesOnly).await;
    println!("bench took {:.0?}", bench_started.elapsed());
}
