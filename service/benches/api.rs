//! API benchmark: `cargo bench -p herald --bench api [-- --scale default|large]`.
//! ListRoutes of 100,000 routes, and 50 WatchPlan clients while the plan changes 20 times a second.
//! With `--scale` (or `HERALD_SCALE`), also the scale scenario's plan served: ListRoutes of it, and
//! ExplainService of 1,000 of its Services (each explained when asked, from the plan's inputs).
//! Medians and percentiles of one run; compare only figures of the same run.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_api::herald::v1 as pb;
use herald_api::herald::v1::plan_service_client::PlanServiceClient;
use herald_core::config::ApiLimits;
use herald_core::plan::{NextHop, Plan, PlanSnapshot, Route, RouteKind};
use herald_grpc::limits::{Limits, RefusedCalls};
use herald_grpc::server::{ApiState, health_service, serve_limited};
use herald_k8s::source::SourceSnapshot;
use herald_testkit::scale::{self, Scale};
use ipnet::IpNet;
use tokio::sync::watch;

fn big_plan(routes: u32) -> Plan {
    let mut plan = Plan::default();
    for i in 0..routes {
        let prefix = IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0A60_0000 + i)));
        let next_hops: BTreeSet<NextHop> = (0..1 + i % 3)
            .map(|n| NextHop {
                node: format!("node-{:04}", (i + n * 7) % 1000),
                address: IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (i + n * 7) % 1000)),
            })
            .collect();
        plan.insert_route(Route {
            prefix,
            kind: RouteKind::ClusterIp,
            next_hops,
            sources: BTreeSet::from([format!("ns-{}/svc-{i:06}", i % 100)]),
            reason: "externalTrafficPolicy: Local; ready endpoints on node-0001".to_string(),
            communities: BTreeSet::new(),
            large_communities: BTreeSet::new(),
            part_of: None,
            left_out: Default::default(),
        });
    }
    plan
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn client(addr: std::net::SocketAddr) -> PlanServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    PlanServiceClient::new(channel).max_decoding_message_size(512 << 20)
}

/// Ten ListRoutes calls, each checked to answer `routes` routes: their times, sorted, and the
/// answer's size in bytes.
async fn list_routes_ten_times(
    c: &mut PlanServiceClient<tonic::transport::Channel>,
    routes: usize,
) -> (Vec<Duration>, usize) {
    let mut samples = Vec::new();
    let mut bytes = 0;
    for _ in 0..10 {
        let t = Instant::now();
        let response = c
            .list_routes(pb::ListRoutesRequest::default())
            .await
            .unwrap()
            .into_inner();
        samples.push(t.elapsed());
        assert_eq!(response.routes.len(), routes);
        bytes = prost::Message::encoded_len(&response);
    }
    samples.sort();
    (samples, bytes)
}

#[tokio::main]
async fn main() {
    let plan = Arc::new(big_plan(100_000));
    let (plan_tx, plans) = watch::channel(PlanSnapshot {
        generation: 1,
        plan: plan.clone(),
        ..Default::default()
    });
    let (_source_tx, source) = watch::channel(SourceSnapshot::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The 50 watchers below all come from 127.0.0.1: more than one peer may open by default (16).
    let limits = Limits::new(
        ApiLimits {
            max_watch_streams_per_peer: 64,
            ..ApiLimits::default()
        },
        RefusedCalls::default(),
    );
    let health = health_service(plans.clone()).await;
    tokio::spawn(serve_limited(
        listener,
        None,
        ApiState {
            plans,
            source,
            sink: None,
            gobgp: None,
            brake_releases: None,
        },
        limits,
        health,
        std::future::pending(),
    ));

    // ListRoutes of 100,000 routes.
    let mut c = client(addr).await;
    let (samples, bytes) = list_routes_ten_times(&mut c, 100_000).await;
    println!(
        "ListRoutes, 100,000 routes ({:.1} MB): median {:.1} ms, min {:.1} ms over {} calls",
        bytes as f64 / 1e6,
        ms(percentile(&samples, 0.5)),
        ms(samples[0]),
        samples.len()
    );

    // 50 WatchPlan clients while 10 routes of a 10,000-route plan change 20 times a second for 5 s.
    const WATCHED_ROUTES: u32 = 10_000;
    let plan = Arc::new(big_plan(WATCHED_ROUTES));
    plan_tx.send_replace(PlanSnapshot {
        generation: 1,
        plan: plan.clone(),
        ..Default::default()
    });
    let published: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let mut watchers = Vec::new();
    for _ in 0..50 {
        let mut c = client(addr).await;
        let mut stream = c
            .watch_plan(pb::WatchPlanRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(first.snapshot);
        watchers.push(tokio::spawn(async move {
            let mut received = Vec::new();
            while let Ok(Some(message)) = stream.message().await {
                received.push((message.generation, Instant::now()));
                if message.generation == 101 {
                    break;
                }
            }
            received
        }));
    }
    let mut current = (*plan).clone();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    for generation in 2..=101u64 {
        ticker.tick().await;
        for k in 0..10u32 {
            let prefix = IpNet::from(IpAddr::V4(Ipv4Addr::from(
                0x0A60_0000 + (generation as u32 * 10 + k) % WATCHED_ROUTES,
            )));
            if let Some(route) = current.route_mut(&prefix) {
                route.reason = format!("changed at generation {generation}");
            }
        }
        let next = Arc::new(current.clone());
        published.lock().unwrap().push((generation, Instant::now()));
        plan_tx.send_replace(PlanSnapshot {
            generation,
            plan: next,
            ..Default::default()
        });
    }
    let published: std::collections::HashMap<u64, Instant> =
        published.lock().unwrap().iter().copied().collect();
    let mut latencies = Vec::new();
    let mut delivered = 0;
    for w in watchers {
        let received = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("watchers finish")
            .unwrap();
        delivered += received.len();
        for (generation, at) in received {
            latencies.push(at.duration_since(published[&generation]));
        }
    }
    latencies.sort();
    println!(
        "WatchPlan, 50 clients, {WATCHED_ROUTES}-route plan changing 20 times/s: {delivered} of {} updates delivered \
         (a slow client skips to the latest); publish -> receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        50 * 100,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );

    let asked = std::env::args().any(|a| a.starts_with("--scale"))
        || std::env::var_os("HERALD_SCALE").is_some();
    if asked {
        scale_plan_served(Scale::selected_or_exit(), &plan_tx, addr).await;
    }
}

/// The scale scenario's plan served: ListRoutes of it, ExplainService of 1,000 of its Services.
async fn scale_plan_served(
    scale: Scale,
    plan_tx: &watch::Sender<PlanSnapshot>,
    addr: std::net::SocketAddr,
) {
    let state = scale::cluster(scale);
    let config = herald_core::config::Config::parse(&format!(
        "{}{}",
        scale::CONFIG,
        scale::ecmp_config(scale)
    ))
    .unwrap();
    let plan = Arc::new(herald_core::planner::plan(&state, &config));
    let routes = plan.routes.len();
    plan_tx.send_replace(PlanSnapshot {
        generation: 1_000,
        plan,
        ..Default::default()
    });
    let mut c = client(addr).await;
    let (samples, _) = list_routes_ten_times(&mut c, routes).await;
    println!(
        "\nThe scale scenario's plan ({}; {}): ListRoutes of {routes} routes median {:.1} ms",
        scale.describe(),
        if scale::ecmp_config(scale).is_empty() {
            "no ECMP limit"
        } else {
            "ecmp.maxPaths 64"
        },
        ms(percentile(&samples, 0.5))
    );
    let step = (state.services.len() / 1_000).max(1);
    let mut samples = Vec::new();
    let mut with_routes = 0;
    for key in state.services.keys().step_by(step).take(1_000) {
        let t = Instant::now();
        let response = c
            .explain_service(pb::ExplainServiceRequest {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        samples.push(t.elapsed());
        assert!(response.found, "{key} is in the plan's cluster state");
        with_routes += usize::from(!response.ips.is_empty());
    }
    samples.sort();
    println!(
        "ExplainService, {} of its {} Services, one after another: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({with_routes} with IPs explained)",
        samples.len(),
        state.services.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap())
    );
}
