//! ECMP width at scale: `cargo bench -p herald --bench ecmp`; at the 5,000-node scenario with
//! `-- --scale large` (or `HERALD_SCALE=large`), where the cold start's target is 5 s with maxPaths 64.
//!
//! The scale scenario (1,000 nodes, 20,000 Services; or 5,000 nodes, 50,000 Services) planned and announced with no limit and with
//! `ecmp: {maxPaths: 64}`, side by side in one run, alternating (no limit, 64, no limit, 64, ...),
//! each round with a fresh gobgpd:
//! - the plan's size: routes, paths, the most next hops of one route;
//! - the first push: `herald run` (this build's binary, the file source on the cluster as kubectl
//!   prints it) from its start to gobgpd holding every path of the plan, and gobgpd's CPU time
//!   meanwhile;
//! - change → ack when a node leaves: through `herald run`'s planner thread and reconciler (in this
//!   process, `run::spawn_planner` + `gobgp::spawn_with`, against the same gobgpd, which already
//!   holds the plan), nodes going NotReady and Ready again one at a time: from publishing the
//!   cluster state to the reconciler's status saying gobgpd holds the plan made from it; and
//!   gobgpd's CPU time over those changes.

use herald_testkit::cluster_yaml;
use herald_testkit::gobgpd;
use herald_testkit::herald_run;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gobgpd::Gobgpd;
use herald_core::cluster::{ClusterState, Node};
use herald_core::config::Config;
use herald_gobgp::v3::V3Client;
use herald_k8s::source::SourceSnapshot;
use herald_run::HeraldRun;
use herald_testkit::scale::{self, Scale};
use tokio::sync::watch;

const ROUNDS: usize = 2;
/// Node changes per round (each one NotReady, then Ready again).
const NODE_CHANGES: usize = 30;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Variant {
    name: &'static str,
    /// Added to the scale config.
    ecmp: &'static str,
}

const VARIANTS: [Variant; 2] = [
    Variant {
        name: "no limit",
        ecmp: "",
    },
    Variant {
        name: "maxPaths 64",
        ecmp: "ecmp: {maxPaths: 64}\n",
    },
];

#[derive(Default)]
struct Figures {
    first_push: Vec<Duration>,
    first_push_gobgpd_cpu: Vec<f64>,
    node_change: Vec<Duration>,
    node_changes_gobgpd_cpu: Vec<f64>,
}

/// `herald run` until gobgpd holds `paths` paths: how long from its start, and gobgpd's CPU time.
async fn first_push(
    dir: &Path,
    cluster: &Path,
    variant: &Variant,
    g: &Gobgpd,
    paths: usize,
) -> (Duration, f64) {
    let gobgpd_pid = g.pid().unwrap();
    let cpu_before = herald_run::cpu_seconds(&gobgpd_pid.to_string());
    let started = Instant::now();
    let mut herald = HeraldRun::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        dir,
        cluster,
        variant.ecmp,
        &g.address(),
    );
    let outcome = loop {
        if let Some(status) = herald.exited() {
            break Err(format!("herald exited with {status}"));
        }
        if g.path_count().await as usize >= paths {
            break Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(300) {
            break Err("gobgpd did not get the plan within 300 s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cpu = herald_run::cpu_seconds(&gobgpd_pid.to_string()) - cpu_before;
    match outcome {
        Ok(elapsed) => (elapsed, cpu),
        Err(e) => panic!("{}: {e}\n{}", variant.name, herald.log_text()),
    }
}

fn snapshot(state: &ClusterState, version: u64) -> SourceSnapshot {
    SourceSnapshot::synced("bench", Arc::new(state.clone()), version)
}

/// Nodes going NotReady and Ready again, one change at a time, through the planner thread and the
/// reconciler, against `g` (already holding the plan): each change's time to acknowledgement.
async fn node_changes(
    state: &ClusterState,
    config: &Config,
    g: &Gobgpd,
    seed: u64,
    scale: Scale,
) -> (Vec<Duration>, f64) {
    let gobgp = config.gobgp.clone().unwrap();
    let client =
        V3Client::new(&gobgp.address, gobgp.batch_size, herald_gobgp::CALL_TIMEOUT).unwrap();
    let (source, source_rx) = watch::channel(snapshot(state, 1));
    let mut plans = herald::run::spawn_planner(Arc::new(config.clone()), source_rx).unwrap();
    let mut status = herald_gobgp::spawn_with(
        client,
        &gobgp.address,
        herald_gobgp::settings(&gobgp),
        plans.clone(),
    );
    // It finds the plan in gobgpd (adopted, nothing pushed).
    status
        .wait_for(|s| s.applied_generation >= 1)
        .await
        .unwrap();
    let gobgpd_pid = g.pid().unwrap();
    let cpu_before = herald_run::cpu_seconds(&gobgpd_pid.to_string());
    let mut state = state.clone();
    let mut rng = scale::Rng::new(seed);
    let mut times = Vec::new();
    for change in 0..2 * NODE_CHANGES {
        let name = scale::node_name(rng.below(scale.nodes));
        let mut node = Node::clone(&state.nodes[&name]);
        node.ready = !node.ready;
        state.insert_node(node);
        let version = 2 + change as u64;
        let published = Instant::now();
        source.send_replace(snapshot(&state, version));
        let generation = plans
            .wait_for(|p| p.cluster_version >= version)
            .await
            .unwrap()
            .generation;
        status
            .wait_for(|s| s.applied_generation >= generation)
            .await
            .unwrap();
        times.push(published.elapsed());
    }
    let cpu = herald_run::cpu_seconds(&gobgpd_pid.to_string()) - cpu_before;
    assert_eq!(
        g.path_count().await,
        status.borrow().paths_applied,
        "gobgpd holds the plan"
    );
    (times, cpu)
}

fn config_of(variant: &Variant, g: &Gobgpd) -> Config {
    Config::parse(&format!(
        "{}{}gobgp: {{address: '{}'}}\n",
        scale::CONFIG,
        variant.ecmp,
        g.address()
    ))
    .unwrap()
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("herald-ecmp-")
        .tempdir()
        .unwrap();
    let scale = Scale::selected_or_exit();
    let state = scale::cluster(scale);
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, cluster_yaml::cluster_yaml(&state)).unwrap();

    println!("The scale scenario: {}; its plan:", scale.describe());
    let mut paths = Vec::new();
    for variant in &VARIANTS {
        let config = Config::parse(&format!("{}{}", scale::CONFIG, variant.ecmp)).unwrap();
        let t = Instant::now();
        let plan = herald_core::planner::plan(&state, &config);
        let elapsed = t.elapsed();
        let widest = plan
            .routes
            .values()
            .map(|r| r.next_hops.len())
            .max()
            .unwrap_or(0);
        let parts = plan.routes.values().filter(|r| r.part_of.is_some()).count();
        let ranges = plan
            .routes
            .values()
            .filter(|r| r.kind.is_range() && r.part_of.is_none())
            .count();
        let range_paths: usize = plan
            .routes
            .values()
            .filter(|r| r.kind.is_range())
            .map(|r| r.next_hops.len())
            .sum();
        println!(
            "  {:<12} {:>6} routes ({ranges} ranges, {parts} parts), {:>6} paths ({range_paths} of them for ranges and parts), at most {widest} next hops a route; planned in {:.0} ms",
            variant.name,
            plan.routes.len(),
            plan.path_count(),
            ms(elapsed)
        );
        paths.push(plan.path_count());
    }

    // At 5,000 nodes, a range without a limit is a prefix of ~5,000 next hops, which gobgpd takes
    // at a few hundred paths a second (see the push bench's wide prefixes): its first push takes
    // minutes, so only maxPaths 64 is pushed there.
    let large = scale.nodes > Scale::LARGE.nodes;
    if large {
        println!(
            "(at this scale only maxPaths 64 is pushed: without a limit, gobgpd takes minutes for the ranges' ~5,000 next hops each)"
        );
    }
    let mut figures: Vec<Figures> = VARIANTS.iter().map(|_| Figures::default()).collect();
    for round in 0..ROUNDS {
        for (v, variant) in VARIANTS.iter().enumerate() {
            if large && variant.ecmp.is_empty() {
                continue;
            }
            let g = Gobgpd::start().await;
            let (push, cpu) = first_push(dir.path(), &cluster, variant, &g, paths[v]).await;
            let (changes, changes_cpu) = node_changes(
                &state,
                &config_of(variant, &g),
                &g,
                0x6563_6d70 + round as u64,
                scale,
            )
            .await;
            println!(
                "round {}, {:<12}: first push {:.1} s (gobgpd CPU {:.1} s); {} node changes: median {:.0} ms, p99 {:.0} ms (gobgpd CPU {:.1} s)",
                round + 1,
                variant.name,
                push.as_secs_f64(),
                cpu,
                changes.len(),
                ms({
                    let mut c = changes.clone();
                    c.sort();
                    c[c.len() / 2]
                }),
                ms({
                    let mut c = changes.clone();
                    c.sort();
                    percentile(&c, 0.99)
                }),
                changes_cpu
            );
            let f = &mut figures[v];
            f.first_push.push(push);
            f.first_push_gobgpd_cpu.push(cpu);
            f.node_change.extend(changes);
            f.node_changes_gobgpd_cpu.push(changes_cpu);
        }
    }

    if large {
        let f = &figures[1];
        let mut pushes = f.first_push.clone();
        pushes.sort();
        let mut changes = f.node_change.clone();
        changes.sort();
        println!(
            "\nmaxPaths 64 at this scale: cold start (`herald run` start to gobgpd holding the plan) {:?} s, median {:.1} s, target <= 5 s; node change -> ack p99 {:.0} ms, median {:.0} ms",
            pushes
                .iter()
                .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            pushes[pushes.len() / 2].as_secs_f64(),
            ms(percentile(&changes, 0.99)),
            ms(changes[changes.len() / 2])
        );
        println!("\n(took {:.0} s)", started.elapsed().as_secs_f64());
        return;
    }
    println!(
        "\nSide by side ({ROUNDS} rounds each, alternating; medians of the rounds, p99 over all node changes):"
    );
    println!("| | no limit | maxPaths 64 | ratio |");
    println!("|---|---|---|---|");
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    let median_f = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row = |what: &str, a: f64, b: f64, unit: &str| {
        println!("| {what} | {a:.1}{unit} | {b:.1}{unit} | {:.2} |", b / a)
    };
    row("paths in the plan", paths[0] as f64, paths[1] as f64, "");
    row(
        "first push, `herald run` start to applied",
        median(&figures[0].first_push).as_secs_f64(),
        median(&figures[1].first_push).as_secs_f64(),
        " s",
    );
    row(
        "gobgpd CPU during the first push",
        median_f(&figures[0].first_push_gobgpd_cpu),
        median_f(&figures[1].first_push_gobgpd_cpu),
        " s",
    );
    let p99 = |f: &Figures| {
        let mut v = f.node_change.clone();
        v.sort();
        ms(percentile(&v, 0.99))
    };
    row(
        "node change → ack, p99",
        p99(&figures[0]),
        p99(&figures[1]),
        " ms",
    );
    row(
        "node change → ack, median",
        ms(median(&figures[0].node_change)),
        ms(median(&figures[1].node_change)),
        " ms",
    );
    row(
        &format!("gobgpd CPU over {} node changes", 2 * NODE_CHANGES),
        median_f(&figures[0].node_changes_gobgpd_cpu),
        median_f(&figures[1].node_changes_gobgpd_cpu),
        " s",
    );
    println!("\n(took {:.0} s)", started.elapsed().as_secs_f64());
}
