//! The plan API under a flood, and the reconciler beside it: `cargo bench -p herald --bench api_flood`.
//!
//! `herald run` (this build's release binary, file source) on 5,000 Services over 50 nodes, pushing
//! into a real gobgpd. A change is one Service with externalTrafficPolicy: Local and a ready
//! endpoint appearing in (or leaving) the cluster file; its latency runs from the file's rename to
//! gobgpd's RIB holding (or no longer holding) its /32, polled every 2 ms with ListPath. Measured
//! quiet, then during a flood of the plan API (1,000 WatchPlan streams from 50 peers, 40 clients
//! calling ListRoutes back to back), then quiet again; the flood's clients run in this process on a
//! runtime of one thread. The file source polls every 50 ms: the latencies include that.
//! Figures of one run; compare only figures of the same run (the machine is shared and noisy).

use herald_testkit::{cluster_yaml, gobgpd, herald_run};

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gobgpd::Gobgpd;
use herald_api::gobgp::v3 as api;
use herald_api::herald::v1 as pb;
use herald_api::herald::v1::plan_service_client::PlanServiceClient;
use herald_run::HeraldRun;
use herald_testkit::scale::{self, Scale};

const CHANGES: usize = 40;
const PROBE: &str = "100.64.250.1/32";

fn extra_items(node: &str) -> String {
    format!(
        "- apiVersion: v1\n  kind: Service\n  metadata: {{name: probe, namespace: bench}}\n  spec:\n    type: ClusterIP\n    clusterIP: 10.111.250.1\n    clusterIPs: [10.111.250.1]\n    externalIPs: [100.64.250.1]\n    externalTrafficPolicy: Local\n\
         - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: probe-1, namespace: bench, labels: {{kubernetes.io/service-name: probe}}}}\n  addressType: IPv4\n  endpoints: [{{addresses: [10.0.0.1], conditions: {{ready: true}}, nodeName: {node}}}]\n"
    )
}

async fn holds_probe(
    client: &mut api::gobgp_api_client::GobgpApiClient<tonic::transport::Channel>,
) -> bool {
    let request = api::ListPathRequest {
        table_type: api::TableType::Global as i32,
        family: Some(api::Family {
            afi: api::family::Afi::Ip as i32,
            safi: api::family::Safi::Unicast as i32,
        }),
        prefixes: vec![api::TableLookupPrefix {
            prefix: PROBE.to_string(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let Ok(response) = client.list_path(request).await else {
        return false;
    };
    let mut stream = response.into_inner();
    let mut found = false;
    while let Ok(Some(m)) = stream.message().await {
        found |= m.destination.is_some_and(|d| !d.paths.is_empty());
    }
    found
}

fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// `CHANGES` changes, alternately adding and removing the probe Service; latencies sorted.
async fn changes(
    g: &Gobgpd,
    cluster: &std::path::Path,
    with: &str,
    without: &str,
) -> Vec<Duration> {
    let mut client = g.client().await;
    let mut present = holds_probe(&mut client).await;
    let mut latencies = Vec::new();
    for _ in 0..CHANGES {
        let want = !present;
        let started = Instant::now();
        write(cluster, if want { with } else { without });
        loop {
            if holds_probe(&mut client).await == want {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "gobgpd never followed the change"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(started.elapsed());
        present = want;
        // Apart, so that each change is measured alone.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    latencies.sort();
    latencies
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(name: &str, v: &[Duration]) -> Duration {
    let median = v[v.len() / 2];
    let p90 = v[(v.len() - 1) * 9 / 10];
    println!(
        "  {name:<14} median {:6.1} ms   p90 {:6.1} ms   max {:6.1} ms",
        ms(median),
        ms(p90),
        ms(*v.last().unwrap())
    );
    median
}

/// The flood, on a runtime of its own thread, until `stop`: counts answered and refused calls.
fn flood(
    port: u16,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 4]>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let connect = |from: Ipv4Addr| async move {
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                        .unwrap()
                        .local_address(Some(IpAddr::V4(from)))
                        .connect()
                        .await
                        .unwrap();
                PlanServiceClient::new(channel).max_decoding_message_size(256 << 20)
            };
            let mut streams = Vec::new();
            for peer in 1..=50u8 {
                let client = connect(Ipv4Addr::new(127, 0, 2, peer)).await;
                for _ in 0..20 {
                    let mut client = client.clone();
                    let counts = counts.clone();
                    streams.push(tokio::spawn(async move {
                        match client.watch_plan(pb::WatchPlanRequest {}).await {
                            Ok(r) => {
                                counts[0].fetch_add(1, Ordering::Relaxed);
                                let mut stream = r.into_inner();
                                while let Ok(Some(_)) = stream.message().await {}
                            }
                            Err(_) => {
                                counts[1].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
            }
            let mut lists = Vec::new();
            for i in 1..=40u8 {
                let mut client = connect(Ipv4Addr::new(127, 0, 3, i)).await;
                let (stop, counts) = (stop.clone(), counts.clone());
                lists.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.list_routes(pb::ListRoutesRequest::default()).await {
                            Ok(_) => counts[2].fetch_add(1, Ordering::Relaxed),
                            Err(_) => counts[3].fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }));
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for task in streams.into_iter().chain(lists) {
                task.abort();
            }
        });
    })
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main]
async fn main() {
    let scale = Scale::small(50, 5000);
    let state = scale::cluster(scale);
    let base = cluster_yaml::cluster_yaml(&state);
    let node = state.nodes.keys().next().unwrap().clone();
    let with = base.replacen("items:\n", &format!("items:\n{}", extra_items(&node)), 1);
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    write(&cluster, &base);
    let g = Gobgpd::start().await;
    let herald = HeraldRun::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_herald")),
        dir.path(),
        &cluster,
        "",
        &g.address(),
    );
    let pid = herald.pid();
    // Settled: gobgpd's path count stops changing.
    let mut last = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let count = g.path_count().await;
        if count > 0 && count == last {
            break;
        }
        last = count;
    }
    println!(
        "api_flood: {} Services, {} nodes; gobgpd holds {last} paths; {CHANGES} changes per run",
        scale.services, scale.nodes
    );
    let quiet = changes(&g, &cluster, &with, &base).await;
    let rss_quiet = rss_mib(pid, "VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let flooder = flood(herald.api_port, stop.clone(), counts.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flooded = changes(&g, &cluster, &with, &base).await;
    let rss_flood = rss_mib(pid, "VmRSS:");
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet_again = changes(&g, &cluster, &with, &base).await;

    println!("change -> gobgpd holds it (or not):");
    let q = summary("quiet", &quiet);
    let f = summary("during flood", &flooded);
    let q2 = summary("quiet again", &quiet_again);
    let [watch_ok, watch_refused, list_ok, list_refused] = counts
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect::<Vec<_>>()[..]
    else {
        unreachable!()
    };
    println!(
        "flood: WatchPlan {watch_ok} accepted, {watch_refused} refused; ListRoutes {list_ok} answered, {list_refused} refused (RESOURCE_EXHAUSTED)"
    );
    println!(
        "herald RSS: {rss_quiet:.0} MiB quiet, {rss_flood:.0} MiB in the flood, peak (VmHWM) {:.0} MiB",
        rss_mib(pid, "VmHWM:")
    );
    println!(
        "flood/quiet median: {:.2}x (quiet again: {:.2}x)",
        ms(f) / ms(q),
        ms(f) / ms(q2)
    );
}
