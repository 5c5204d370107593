//! How fast the gobgp sink pushes, replaces, withdraws and reads back many paths, against a real
//! gobgpd. Ignored by default (it measures, it does not check much):
//!
//! ```text
//! cargo test --release -p herald --test gobgp_throughput -- --ignored --nocapture
//! HERALD_BENCH_PATHS=200000 cargo test --release -p herald --test gobgp_throughput -- --ignored --nocapture
//! ```

use herald_testkit::gobgpd;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gobgpd::Gobgpd;
use herald_core::config::{Community, GobgpConfig, Origin, Seconds};
use herald_core::plan::{NextHop, Plan, PlanSnapshot, Route, RouteKind};
use herald_gobgp::SinkStatus;
use herald_gobgp::reconciler::GobgpClient;
use herald_gobgp::v3::V3Client;
use tokio::sync::watch;

/// CPU seconds (user + system) a process used, from /proc.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// `count` host routes on two of 64 nodes each: `2 * count` paths.
fn plan(count: usize, community: u32) -> Plan {
    let routes = (0..count).map(|i| {
        let hop = |n: usize| NextHop {
            node: format!("node-{n}"),
            address: format!("198.19.0.{}", 1 + n).parse().unwrap(),
        };
        let prefix = format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000u32 + i as u32))
            .parse()
            .unwrap();
        let route = Route {
            prefix,
            kind: RouteKind::LoadBalancerIp,
            next_hops: BTreeSet::from([hop(i % 64), hop((i + 1) % 64)]),
            sources: BTreeSet::new(),
            reason: String::new(),
            communities: BTreeSet::from([Community(community)]),
            large_communities: BTreeSet::new(),
            part_of: None,
            left_out: Default::default(),
        };
        (prefix, route)
    });
    Plan {
        routes: routes.collect(),
        ..Default::default()
    }
}

async fn converge(status: &mut watch::Receiver<SinkStatus>, generation: u64) {
    tokio::time::timeout(
        Duration::from_secs(300),
        status.wait_for(|s| s.applied_generation >= generation && s.pending_operations == 0),
    )
    .await
    .expect("converges")
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures throughput; run with --ignored --nocapture"]
async fn throughput() {
    let routes: usize = std::env::var("HERALD_BENCH_PATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
        / 2;
    let batch: usize = std::env::var("HERALD_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let g = Gobgpd::start().await;
    let gobgpd_pid = g.pid().unwrap().to_string();
    let config = GobgpConfig {
        address: g.address(),
        origin: Origin::Igp,
        local_pref: None,
        anti_entropy_interval: Seconds(Duration::from_secs(3600)),
        batch_size: batch,
    };
    let plans: Vec<Arc<Plan>> = vec![
        Arc::new(plan(routes, 1)),
        Arc::new(plan(routes, 2)),
        Arc::new(Plan::default()),
    ];
    let (tx, rx) = watch::channel(PlanSnapshot::default());
    let mut status = herald_gobgp::spawn(config, rx);
    for (i, (what, p)) in ["pushed", "replaced", "withdrawn"]
        .iter()
        .zip(&plans)
        .enumerate()
    {
        let (herald_cpu, gobgpd_cpu) = (cpu_seconds("self"), cpu_seconds(&gobgpd_pid));
        let started = Instant::now();
        tx.send_replace(PlanSnapshot {
            generation: i as u64 + 1,
            plan: p.clone(),
            ..Default::default()
        });
        converge(&mut status, i as u64 + 1).await;
        let elapsed = started.elapsed();
        let paths = 2 * routes;
        eprintln!(
            "{paths} paths {what} in {elapsed:.2?} ({:.0} paths/s); CPU: herald {:.2} s, gobgpd {:.2} s",
            paths as f64 / elapsed.as_secs_f64(),
            cpu_seconds("self") - herald_cpu,
            cpu_seconds(&gobgpd_pid) - gobgpd_cpu,
        );
        if i == 1 {
            // Read everything back, as at start and on every anti-entropy pass.
            let mut client = V3Client::new(&g.address(), batch, Duration::from_secs(60)).unwrap();
            let (herald_cpu, gobgpd_cpu) = (cpu_seconds("self"), cpu_seconds(&gobgpd_pid));
            let started = Instant::now();
            let view = client.list().await.unwrap();
            eprintln!(
                "{} paths read back (ListPath) in {:.2?}; CPU: herald {:.2} s, gobgpd {:.2} s",
                view.own.len(),
                started.elapsed(),
                cpu_seconds("self") - herald_cpu,
                cpu_seconds(&gobgpd_pid) - gobgpd_cpu,
            );
            assert_eq!(view.own.len(), paths);
            let started = Instant::now();
            let counts = client.path_counts().await.unwrap();
            eprintln!(
                "path counts (GetTable, the 1 s probe) {counts:?} in {:.2?}",
                started.elapsed()
            );
        }
    }
    assert_eq!(g.path_count().await, 0);
}
