//! Memory benchmark: `cargo bench -p herald --bench memory`; at the 5,000-node scenario with
//! `-- --scale large` (or `HERALD_SCALE=large`).
//!
//! 1. In this process, at the scale scenario (1,000 nodes, 20,000 Services, 200,000 endpoints;
//!    or 5,000 nodes, 50,000 Services, 500,000 endpoints):
//!    resident memory (VmRSS, and the peak VmHWM, from /proc/self/status) after building the
//!    ClusterState, its plan, an IncrementalPlanner (which holds a state and a plan of its own),
//!    and a reconciler that has pushed the plan into a real gobgpd (its desired and applied path
//!    sets).
//! 2. `herald run` with the file source on the same cluster written as YAML, the way
//!    `kubectl get services,endpointslices,nodes -A -o yaml` prints it (a `List`, keys sorted,
//!    the usual metadata and status fields), pushing into a real gobgpd: its peak RSS (VmHWM of
//!    the child) once gobgpd holds the whole plan.
//!
//! `HERALD_MEMORY_YAML_ONLY=1` writes the YAML and reads it back in this process (and checks that
//! it reads as the scale cluster).

use herald_testkit::cluster_yaml;
use herald_testkit::gobgpd;
use herald_testkit::herald_run;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_yaml::cluster_yaml;
use gobgpd::Gobgpd;
use herald_core::cluster::ClusterState;
use herald_core::config::{GobgpConfig, Origin, Seconds};
use herald_core::plan::PlanSnapshot;
use herald_core::planner::incremental::IncrementalPlanner;
use herald_gobgp::v3::V3Client;
use herald_run::HeraldRun;
use herald_testkit::scale::{self, Scale};
use tokio::sync::watch;

/// The targets, in MB: (in this process, `herald run`) at 1,000 nodes and at 5,000.
fn targets(scale: Scale) -> (f64, f64) {
    if scale.nodes > Scale::LARGE.nodes {
        (600.0, 800.0)
    } else {
        (200.0, 200.0)
    }
}

/// (VmRSS, VmHWM) in MB of a process ("self" or a pid).
fn memory(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Stages {
    last: f64,
}

impl Stages {
    fn report(&mut self, what: &str) -> f64 {
        let (rss, hwm) = memory("self");
        println!(
            "  {what:<72} VmRSS {rss:7.1} MB ({:+7.1} MB)   VmHWM {hwm:7.1} MB",
            rss - self.last
        );
        self.last = rss;
        rss
    }
}

// ---------------------------------------------------------------------------------------------

async fn in_process(scale: Scale) -> (ClusterState, usize) {
    let (target_mb, _) = targets(scale);
    println!("1. in this process (the bench binary: tokio, tonic; no API server):");
    let mut stages = Stages { last: 0.0 };
    let base = stages.report("at start");
    let state = scale::cluster(scale);
    let config = herald_core::config::Config::parse(&format!(
        "{}{}",
        scale::CONFIG,
        scale::ecmp_config(scale)
    ))
    .expect("scale config");
    stages.report(&format!(
        "+ ClusterState ({} nodes, {} Services, {} endpoints)",
        state.nodes.len(),
        state.services.len(),
        state
            .endpoint_slices
            .values()
            .map(|s| s.endpoints.len())
            .sum::<usize>()
    ));
    let plan = Arc::new(herald_core::planner::plan(&state, &config));
    stages.report(&format!(
        "+ its plan ({} routes, {} paths, {} Services explained)",
        plan.routes.len(),
        plan.path_count(),
        plan.services.len()
    ));
    let planner = IncrementalPlanner::new(state.clone(), config.clone());
    stages.report("+ IncrementalPlanner (its own ClusterState, plan and per-Service parts)");

    let g = Gobgpd::start().await;
    let cfg = GobgpConfig {
        address: g.address(),
        origin: Origin::Igp,
        local_pref: None,
        anti_entropy_interval: Seconds(Duration::from_secs(30)),
        batch_size: 1000,
    };
    let client = V3Client::new(&cfg.address, cfg.batch_size, herald_gobgp::CALL_TIMEOUT).unwrap();
    let (tx, rx) = watch::channel(PlanSnapshot {
        generation: 1,
        plan: plan.clone(),
        ..Default::default()
    });
    let mut status =
        herald_gobgp::spawn_with(client, &cfg.address, herald_gobgp::settings(&cfg), rx);
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.applied_generation >= 1),
    )
    .await
    .expect("the plan reaches gobgpd")
    .unwrap();
    let paths = plan.path_count();
    assert_eq!(g.path_count().await as usize, paths);
    let rss = stages.report(&format!(
        "+ reconciler after pushing the plan into gobgpd ({paths} paths, desired + applied)"
    ));
    let (_, hwm) = memory("self");
    let (gobgpd_rss, gobgpd_hwm) = memory(&g.pid().unwrap().to_string());
    println!(
        "  => holding all of it: VmRSS {rss:.1} MB ({:.1} MB above the start), peak VmHWM {hwm:.1} MB; target <= {target_mb:.0} MB: {}",
        rss - base,
        if hwm <= target_mb { "met" } else { "NOT met" }
    );
    println!(
        "  (gobgpd itself, another process: VmRSS {gobgpd_rss:.1} MB, VmHWM {gobgpd_hwm:.1} MB)"
    );
    drop(tx);
    drop(planner);
    (state, paths)
}

/// `herald run` on the cluster as YAML: its VmRSS and VmHWM once gobgpd holds the plan.
async fn herald_run(dir: &Path, state: &ClusterState, paths: usize, scale: Scale) {
    let (_, target_mb) = targets(scale);
    println!("2. `herald run`, file source, the same cluster as kubectl prints it:");
    let t = Instant::now();
    let yaml = cluster_yaml(state);
    let cluster_path = dir.join("cluster.yaml");
    std::fs::write(&cluster_path, &yaml).unwrap();
    println!(
        "  cluster.yaml: {:.1} MB, {} lines (written in {:.1} s)",
        yaml.len() as f64 / 1e6,
        yaml.bytes().filter(|b| *b == b'\n').count(),
        t.elapsed().as_secs_f64()
    );
    drop(yaml);
    let g = Gobgpd::start().await;
    let started = Instant::now();
    let mut child = HeraldRun::start(
        Path::new(env!("CARGO_BIN_EXE_herald")),
        dir,
        &cluster_path,
        scale::ecmp_config(scale),
        &g.address(),
    );
    let pid = child.pid().to_string();
    let mut peak = (0.0f64, 0.0f64);
    let outcome = loop {
        let (rss, hwm) = memory(&pid);
        peak = (peak.0.max(rss), peak.1.max(hwm));
        if let Some(status) = child.exited() {
            break Err(format!("herald exited with {status}"));
        }
        if child.log_text().contains("cluster state not usable") {
            break Err("herald cannot read the cluster state".to_string());
        }
        if g.path_count().await as usize >= paths {
            break Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(240) {
            break Err("gobgpd did not get the plan within 240 s".to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (rss, hwm) = memory(&pid);
    let log_text = child.log_text();
    match outcome {
        Ok(elapsed) => {
            // Settled: a second later, still holding everything.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (rss_later, hwm_later) = memory(&pid);
            println!(
                "  herald read, planned and pushed {paths} paths into gobgpd in {:.1} s",
                elapsed.as_secs_f64()
            );
            println!(
                "  herald run: VmRSS {rss:.1} MB then {rss_later:.1} MB, peak VmHWM {:.1} MB; target <= {target_mb:.0} MB: {}",
                hwm.max(hwm_later),
                if hwm.max(hwm_later) <= target_mb {
                    "met".to_string()
                } else {
                    format!("NOT met, {:.0} MB over", hwm.max(hwm_later) - target_mb)
                }
            );
        }
        Err(e) => {
            println!(
                "  herald run FAILED: {e}; VmRSS {rss:.1} MB, peak VmHWM {:.1} MB (sampled peak RSS {:.1} MB)",
                hwm.max(peak.1),
                peak.0
            );
            let interesting: Vec<&str> = log_text
                .lines()
                .filter(|l| {
                    l.contains("WARN") || l.contains("ERROR") || l.contains("cluster state")
                })
                .take(5)
                .collect();
            for line in interesting {
                println!("    log: {}", line.chars().take(400).collect::<String>());
            }
        }
    }
    drop(child);
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let scale = Scale::selected_or_exit();
    println!(
        "scale: {}; config: the scale config {}",
        scale.describe(),
        if scale::ecmp_config(scale).is_empty() {
            "as it is"
        } else {
            "with ecmp: {maxPaths: 64}"
        }
    );
    let dir = tempfile::Builder::new()
        .prefix("herald-memory-")
        .tempdir()
        .unwrap();
    if std::env::var_os("HERALD_MEMORY_YAML_ONLY").is_some() {
        // Writes the YAML and reads it back in this process: `HERALD_MEMORY_YAML_ONLY=1`.
        let state = scale::cluster(scale);
        let yaml = cluster_yaml(&state);
        println!("{:.1} MB", yaml.len() as f64 / 1e6);
        let t = Instant::now();
        match herald_k8s::parse_manifest(&yaml) {
            Ok(read) => {
                println!(
                    "parsed in {:.1} s; VmHWM {:.1} MB",
                    t.elapsed().as_secs_f64(),
                    memory("self").1
                );
                assert_eq!(read.services, state.services);
                assert_eq!(read.endpoint_slices, state.endpoint_slices);
                let ips = |s: &ClusterState| {
                    s.nodes
                        .values()
                        .map(|n| (n.name.clone(), n.ready, n.internal_ips.clone()))
                        .collect::<Vec<(String, bool, Vec<IpAddr>)>>()
                };
                assert_eq!(ips(&read), ips(&state));
            }
            Err(e) => println!(
                "parse failed after {:.1} s: {}",
                t.elapsed().as_secs_f64(),
                e.to_string().chars().take(300).collect::<String>()
            ),
        }
        return;
    }
    let (state, paths) = in_process(scale).await;
    herald_run(dir.path(), &state, paths, scale).await;
    println!("bench took {:.0?}", started.elapsed());
}
