//! Cold start: `cargo bench -p herald-integration --bench cold_start [-- --scale large]
//! [--source kubernetes|file] [--rounds N]`.
//!
//! `herald run` (this workspace's release binary, built first) from its start to gobgpd holding the
//! whole plan, with `ecmp: {maxPaths: 64}`, on the scale scenario (1,000 nodes, or 5,000 with
//! `--scale large` / `HERALD_SCALE=large`), from each source side by side, alternating, each round
//! with a fresh gobgpd:
//! - `kubernetes`: the Kubernetes source listing and watching a Kubernetes API server (the fake one
//!   of the integration tests: real HTTP, paginated JSON lists, watches) that holds the cluster;
//! - `file`: the file source reading the same cluster as `kubectl get -o yaml` prints it.
//!
//! Done is herald's own log line saying gobgpd holds the plan (read from the log every 10 ms, so
//! that nothing asks gobgpd for its RIB while it takes the push), then checked once against
//! gobgpd's path count. herald's log gives the phases: source synced, plan made, plan pushed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use herald_integration::fake_apiserver::FakeApiServer;
use herald_integration::process::{Herald, free_port, workspace_bin};
use herald_testkit::gobgpd::Gobgpd;
use herald_testkit::herald_run::cpu_seconds;
use herald_testkit::scale::{self, Scale};
use serde_json::Value;

const ROUNDS: usize = 3;
const ECMP: &str = "ecmp: {maxPaths: 64}\n";

#[derive(Clone, Copy, PartialEq)]
enum Source {
    Kubernetes,
    File,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Kubernetes => "kubernetes",
            Source::File => "file (YAML)",
        }
    }
}

/// One cold start: the times from `herald run`'s start to each phase's log line, and the CPU
/// time herald and gobgpd used until gobgpd held the plan.
#[derive(Debug, Clone, Copy)]
struct Phases {
    synced: Duration,
    /// gobgpd holds the ranges planned from the Nodes alone (the Kubernetes source lists them first).
    ranges: Option<Duration>,
    planned: Duration,
    applied: Duration,
    herald_cpu: Duration,
    gobgpd_cpu: Duration,
}

/// `--source kubernetes|file` (default: both) and `--rounds N` (default 3) among the arguments.
fn option(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The seconds since the Unix epoch of a log line's RFC 3339 timestamp (`2026-12-04T19:38:05.783187Z`).
fn timestamp(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let (date, time) = stamp.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let s = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

/// The first line of `log` holding `needle`, as seconds since the epoch.
fn when(log: &str, needle: &str) -> Option<f64> {
    log.lines().find(|l| l.contains(needle)).and_then(timestamp)
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The cluster's objects, as a Kubernetes API server holds them: each item of the kubectl YAML.
fn objects(yaml: &str) -> Vec<Value> {
    // cluster_yaml writes `items:` first, each item starting at column 0 with "- ", then the
    // List's own `kind` and `metadata`.
    let (_, items) = yaml.split_once("\nitems:\n").expect("a List");
    let (items, _) = items.rsplit_once("kind: List\n").expect("a List");
    let mut starts: Vec<usize> = items.match_indices("\n- ").map(|(i, _)| i + 1).collect();
    starts.insert(0, 0);
    starts.push(items.len());
    starts
        .windows(2)
        .map(|w| {
            let mut one: Vec<Value> =
                serde_saphyr::from_str(&items[w[0]..w[1]]).expect("an item of the List");
            one.remove(0)
        })
        .collect()
}

async fn cold_start(
    source: Source,
    dir: &Path,
    server: &FakeApiServer,
    cluster_file: &Path,
    paths: u64,
) -> Phases {
    let gobgpd = Gobgpd::start().await;
    let port = free_port();
    let source_config = match source {
        Source::Kubernetes => format!(
            "source: {{kubernetes: {{kubeconfig: {}}}}}\n",
            server.kubeconfig_path().display()
        ),
        Source::File => format!("source: {{file: {}}}\n", cluster_file.display()),
    };
    let config = dir.join("herald.yaml");
    std::fs::write(
        &config,
        format!(
            "{}{ECMP}{source_config}api: {{listen: \"127.0.0.1:{port}\"}}\ngobgp: {{address: \"{}\"}}\n",
            scale::CONFIG,
            gobgpd.address()
        ),
    )
    .unwrap();
    let log_path = dir.join(format!("herald-{}.log", port));
    let started = now_epoch();
    let mut herald = Herald::start(&config, port, log_path, &[]).expect("herald starts");
    let deadline = Instant::now() + Duration::from_secs(300);
    let log = loop {
        let log = herald.log_text();
        if log.contains("gobgpd holds the plan") {
            break log;
        }
        assert!(
            herald.is_running(),
            "herald exited:\n{}",
            &log[log.len().saturating_sub(4000)..]
        );
        assert!(Instant::now() < deadline, "no plan in gobgpd in 300 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu = |pid: u32| Duration::from_secs_f64(cpu_seconds(&pid.to_string()));
    let herald_cpu = cpu(herald.pid());
    let gobgpd_cpu = cpu(gobgpd.pid().expect("gobgpd runs"));
    assert_eq!(gobgpd.path_count().await, paths, "gobgpd holds the plan");
    let since = |needle: &str| {
        Duration::from_secs_f64(
            (when(&log, needle).unwrap_or_else(|| panic!("no `{needle}` in herald's log"))
                - started)
                .max(0.0),
        )
    };
    let phases = Phases {
        synced: since(match source {
            Source::Kubernetes => "first cluster state published",
            Source::File => "cluster state read",
        }),
        ranges: when(&log, "gobgpd holds the ranges planned")
            .map(|t| Duration::from_secs_f64((t - started).max(0.0))),
        planned: since("plan updated"),
        applied: since("gobgpd holds the plan"),
        herald_cpu,
        gobgpd_cpu,
    };
    let _ = herald.stop(15); // SIGTERM: herald's own shutdown
    phases
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let scale = Scale::selected_or_exit();
    let took = Instant::now();
    // The release binary, as a user runs it.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let built = Command::new(cargo)
        .args(["build", "--release", "-p", "herald", "--bin", "herald"])
        .status()
        .expect("cargo runs");
    assert!(built.success(), "cargo build --release -p herald failed");
    let _ = workspace_bin("herald");

    let state = scale::cluster(scale);
    let config = herald_core::config::Config::parse(&format!("{}{ECMP}", scale::CONFIG)).unwrap();
    let plan = herald_core::planner::plan(&state, &config);
    let paths: u64 = plan.routes.values().map(|r| r.next_hops.len() as u64).sum();
    let yaml = herald_testkit::cluster_yaml::cluster_yaml(&state);
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.yaml");
    std::fs::write(&cluster_file, &yaml).unwrap();
    let server = FakeApiServer::start().await.unwrap();
    let objects = objects(&yaml);
    let expected = state.nodes.len() + state.services.len() + state.endpoint_slices.len();
    assert_eq!(objects.len(), expected, "every object of the cluster");
    for object in objects {
        server.apply_value(object);
    }
    drop(yaml);
    let sources: Vec<Source> = match option("--source").as_deref() {
        None => vec![Source::Kubernetes, Source::File],
        Some("kubernetes") => vec![Source::Kubernetes],
        Some("file") => vec![Source::File],
        Some(other) => panic!("--source {other}: kubernetes or file"),
    };
    let rounds: usize = option("--rounds").map_or(ROUNDS, |r| r.parse().expect("--rounds N"));
    println!(
        "Cold start, {}: `herald run` start to gobgpd holding the plan ({} paths, ecmp.maxPaths 64); the YAML is {:.1} MB; {rounds} rounds, sources alternating",
        scale.describe(),
        paths,
        std::fs::metadata(&cluster_file).unwrap().len() as f64 / 1e6
    );
    let mut results: Vec<Vec<Phases>> = vec![Vec::new(); sources.len()];
    for round in 1..=rounds {
        for (i, source) in sources.iter().enumerate() {
            let p = cold_start(*source, dir.path(), &server, &cluster_file, paths).await;
            println!(
                "round {round}, {:<12}: ranges in gobgpd {}, source synced {:5.2} s, planned {:5.2} s, \
                 gobgpd holds the plan {:5.2} s (CPU: herald {:.2} s, gobgpd {:.2} s)",
                source.name(),
                p.ranges
                    .map_or("-".to_string(), |r| format!("{:.2} s", r.as_secs_f64())),
                p.synced.as_secs_f64(),
                p.planned.as_secs_f64(),
                p.applied.as_secs_f64(),
                p.herald_cpu.as_secs_f64(),
                p.gobgpd_cpu.as_secs_f64()
            );
            results[i].push(p);
        }
    }
    println!("\nMedians of {rounds} rounds:");
    println!(
        "| source | synced | planned | gobgpd holds the plan | target | CPU: herald, gobgpd |"
    );
    println!("|---|---|---|---|---|---|");
    for (source, phases) in sources.iter().zip(&results) {
        let m = |f: fn(&Phases) -> Duration| median(phases.iter().map(f).collect());
        println!(
            "| {} | {:.2} s | {:.2} s | **{:.2} s** | <= 5 s | {:.2} s, {:.2} s |",
            source.name(),
            m(|p| p.synced).as_secs_f64(),
            m(|p| p.planned).as_secs_f64(),
            m(|p| p.applied).as_secs_f64(),
            m(|p| p.herald_cpu).as_secs_f64(),
            m(|p| p.gobgpd_cpu).as_secs_f64()
        );
    }
    println!("\n(took {:.0} s)", took.elapsed().as_secs_f64());
}
