//! Push benchmark against a real gobgpd: `cargo bench -p herald --bench push`.
//!
//! 100,000 paths into an empty gobgpd RIB, by:
//! - `raw`: a minimal AddPathStream client written here, the floor for any client of gobgpd: every
//!   message (1,000 paths each) built before the clock starts, then streamed in one call: the timed
//!   part is gobgpd taking the paths, nothing else;
//! - `herald`: the reconciler (`gobgp::spawn_with` + `V3Client`, herald's default settings), from
//!   publishing the plan to the status saying gobgpd holds it: plan -> path set, diff, encoding,
//!   pushes, the path count it takes afterwards;
//! - `client`: herald's `V3Client::push` alone, fed the reconciler's operations in its chunks.
//!
//! The same paths (prefix, next hop, identifier, source AS, ORIGIN, one community) every time.
//! Runs alternate (raw, herald, client, raw, ...), each with a fresh gobgpd; medians and ratios
//! are of this run only (the machine is shared and noisy). Then unary `AddPath`, one path a call,
//! and, for what the scale plan's range routes cost gobgpd, prefixes with many next hops each.
//!
//! With `-- --scale default|large` (or `HERALD_SCALE`), the paths are those of the scale scenario's
//! plan instead (1,000 nodes; or 5,000 with `ecmp: {maxPaths: 64}`): both families, communities,
//! and range parts of up to 64 next hops a prefix, which gobgpd takes far slower.
//!
//! `HERALD_PUSH_ONLY=raw|herald|client` runs one variant only (for `perf record`);
//! `RUST_LOG=herald=debug` shows the reconciler's own timings.

use herald_testkit::gobgpd;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gobgpd::Gobgpd;
use herald_api::gobgp::v3 as api;
use herald_core::config::{Community, Config, GobgpConfig, Origin, Seconds};
use herald_core::plan::{NextHop, Plan, PlanSnapshot, Route, RouteKind};
use herald_gobgp::paths::{self, PathAttrs, PathSet};
use herald_gobgp::reconciler::GobgpClient;
use herald_gobgp::v3::V3Client;
use herald_testkit::herald_run::cpu_seconds;
use herald_testkit::scale::{self, Scale};
use ipnet::IpNet;
use pbjson_types::Any;
use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::watch;

const ROUTES: usize = 50_000;
const HOPS_PER_ROUTE: usize = 2;
const PATHS: usize = ROUTES * HOPS_PER_ROUTE;
const ROUNDS: usize = 9;
const UNARY_PATHS: usize = 10_000;
const UNARY_ROUNDS: usize = 3;
const BATCH: usize = 1000;
const COMMUNITY: u32 = 64512 << 16 | 100;

/// `ROUTES` host routes, each on `HOPS_PER_ROUTE` of 64 nodes.
fn plan() -> Plan {
    let hop = |n: usize| NextHop {
        node: format!("node-{n:02}"),
        address: IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1 + n as u8)),
    };
    let routes = (0..ROUTES).map(|i| {
        let prefix = IpNet::from(IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + i as u32)));
        let route = Route {
            prefix,
            kind: RouteKind::LoadBalancerIp,
            next_hops: (0..HOPS_PER_ROUTE).map(|h| hop((i + h) % 64)).collect(),
            sources: BTreeSet::from([format!("ns-{}/svc-{i:05}", i % 100)]),
            reason: String::new(),
            communities: BTreeSet::from([Community(COMMUNITY)]),
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

fn config(address: String) -> GobgpConfig {
    GobgpConfig {
        address,
        origin: Origin::Igp,
        local_pref: None,
        anti_entropy_interval: Seconds(Duration::from_secs(30)),
        batch_size: BATCH,
    }
}

/// What the raw client starts from: the path in binary form, as any client would hold it.
#[derive(Clone)]
struct RawPath {
    prefix: IpNet,
    identifier: u32,
    attrs: PathAttrs,
}

/// The scale scenario asked for (`--scale`, `HERALD_SCALE`), if any.
fn scale_asked() -> Option<Scale> {
    let asked = std::env::args().any(|a| a.starts_with("--scale"))
        || std::env::var_os("HERALD_SCALE").is_some();
    asked.then(Scale::selected_or_exit)
}

/// The scale scenario's plan, as the benches push it ([`scale::ecmp_config`]).
fn scale_plan(scale: Scale) -> Plan {
    let config = Config::parse(&format!("{}{}", scale::CONFIG, scale::ecmp_config(scale))).unwrap();
    herald_core::planner::plan(&scale::cluster(scale), &config)
}

/// The raw client's encoder: NLRI and next hop per path, constant attributes shared.
struct RawEncoder {
    origin: Any,
    communities: Any,
}

impl RawEncoder {
    fn new() -> Self {
        let any = |url: &str, bytes: Vec<u8>| Any {
            type_url: format!("type.googleapis.com/apipb.{url}"),
            value: Bytes::from(bytes),
        };
        RawEncoder {
            origin: any(
                "OriginAttribute",
                api::OriginAttribute { origin: 0 }.encode_to_vec(),
            ),
            communities: any(
                "CommunitiesAttribute",
                api::CommunitiesAttribute {
                    communities: vec![COMMUNITY],
                }
                .encode_to_vec(),
            ),
        }
    }

    fn path(&self, p: &RawPath) -> api::Path {
        let any = |url: &str, bytes: Vec<u8>| Any {
            type_url: format!("type.googleapis.com/apipb.{url}"),
            value: Bytes::from(bytes),
        };
        let nlri = any(
            "IPAddressPrefix",
            api::IpAddressPrefix {
                prefix_len: p.prefix.prefix_len().into(),
                prefix: p.prefix.network().to_string(),
            }
            .encode_to_vec(),
        );
        let family = api::Family {
            afi: if p.prefix.addr().is_ipv4() {
                api::family::Afi::Ip as i32
            } else {
                api::family::Afi::Ip6 as i32
            },
            safi: api::family::Safi::Unicast as i32,
        };
        let a = &p.attrs;
        let mut pattrs = vec![if a.origin == 0 {
            self.origin.clone()
        } else {
            any(
                "OriginAttribute",
                api::OriginAttribute {
                    origin: a.origin.into(),
                }
                .encode_to_vec(),
            )
        }];
        if p.prefix.addr().is_ipv4() && a.next_hop.is_ipv4() {
            pattrs.push(any(
                "NextHopAttribute",
                api::NextHopAttribute {
                    next_hop: a.next_hop.to_string(),
                }
                .encode_to_vec(),
            ));
        } else {
            pattrs.push(any(
                "MpReachNLRIAttribute",
                api::MpReachNlriAttribute {
                    family: Some(family),
                    next_hops: vec![a.next_hop.to_string()],
                    nlris: vec![nlri.clone()],
                }
                .encode_to_vec(),
            ));
        }
        if *a.communities == [COMMUNITY] {
            pattrs.push(self.communities.clone());
        } else if !a.communities.is_empty() {
            pattrs.push(any(
                "CommunitiesAttribute",
                api::CommunitiesAttribute {
                    communities: a.communities.to_vec(),
                }
                .encode_to_vec(),
            ));
        }
        if !a.large_communities.is_empty() {
            pattrs.push(any(
                "LargeCommunitiesAttribute",
                api::LargeCommunitiesAttribute {
                    communities: a
                        .large_communities
                        .iter()
                        .map(|c| api::LargeCommunity {
                            global_admin: c.0,
                            local_data1: c.1,
                            local_data2: c.2,
                        })
                        .collect(),
                }
                .encode_to_vec(),
            ));
        }
        if let Some(local_pref) = a.local_pref {
            pattrs.push(any(
                "LocalPrefAttribute",
                api::LocalPrefAttribute { local_pref }.encode_to_vec(),
            ));
        }
        api::Path {
            nlri: Some(nlri),
            pattrs,
            family: Some(family),
            source_asn: paths::HERALD_SOURCE_ASN,
            identifier: p.identifier,
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Raw,
    Herald,
    Client,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Raw => "raw AddPathStream",
            Variant::Herald => "herald reconciler",
            Variant::Client => "herald V3Client::push",
        }
    }
}

struct Sample {
    elapsed: Duration,
    self_cpu: f64,
    gobgpd_cpu: f64,
}

struct Inputs {
    /// Paths in the plan.
    paths: usize,
    plan: Arc<Plan>,
    raw: Arc<Vec<RawPath>>,
    desired: PathSet,
}

fn raw_messages(raw: &[RawPath]) -> Vec<api::AddPathStreamRequest> {
    let encoder = RawEncoder::new();
    raw.chunks(BATCH)
        .map(|chunk| api::AddPathStreamRequest {
            table_type: api::TableType::Global as i32,
            vrf_id: String::new(),
            paths: chunk.iter().map(|p| encoder.path(p)).collect(),
        })
        .collect()
}

/// The reconciler, started and idle (it has read gobgpd's empty RIB back), then given the plan.
async fn push_herald(
    g: &Gobgpd,
    plan: Arc<Plan>,
    paths: usize,
    started: &mut Option<(Instant, f64, f64)>,
    gobgpd_pid: &str,
) {
    let cfg = config(g.address());
    let client = V3Client::new(&cfg.address, cfg.batch_size, herald_gobgp::CALL_TIMEOUT).unwrap();
    let (tx, rx) = watch::channel(PlanSnapshot::default());
    let mut status =
        herald_gobgp::spawn_with(client, &cfg.address, herald_gobgp::settings(&cfg), rx);
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.reachable))
        .await
        .expect("reconciler ready")
        .unwrap();
    *started = Some((Instant::now(), cpu_seconds("self"), cpu_seconds(gobgpd_pid)));
    tx.send_replace(PlanSnapshot {
        generation: 1,
        plan,
        ..Default::default()
    });
    let s = tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| s.applied_generation >= 1),
    )
    .await
    .expect("reconciler converges")
    .unwrap()
    .clone();
    assert_eq!(s.paths_applied as usize, paths);
    assert_eq!(s.pending_operations, 0);
}

async fn push_client(g: &Gobgpd, desired: &PathSet) -> Duration {
    let cfg = config(g.address());
    let mut client =
        V3Client::new(&cfg.address, cfg.batch_size, herald_gobgp::CALL_TIMEOUT).unwrap();
    let per_push = herald_gobgp::settings(&cfg).ops_per_push;
    // Connect first, as the reconciler has by the time it pushes.
    client.path_counts().await.unwrap();
    let ops = paths::diff(desired, &PathSet::new());
    let t = Instant::now();
    for chunk in ops.chunks(per_push) {
        client.push(chunk).await.expect("push");
    }
    t.elapsed()
}

async fn run_once(variant: Variant, inputs: &Inputs) -> Sample {
    let g = Gobgpd::start().await;
    let pid = g.pid().unwrap().to_string();
    let sample = match variant {
        Variant::Raw => {
            let messages = raw_messages(&inputs.raw);
            // Connected before timing, like the others.
            let mut client = g.client().await;
            client.get_bgp(api::GetBgpRequest {}).await.unwrap();
            let (c0, g0) = (cpu_seconds("self"), cpu_seconds(&pid));
            let t = Instant::now();
            client
                .add_path_stream(tokio_stream::iter(messages))
                .await
                .expect("AddPathStream");
            Sample {
                elapsed: t.elapsed(),
                self_cpu: cpu_seconds("self") - c0,
                gobgpd_cpu: cpu_seconds(&pid) - g0,
            }
        }
        Variant::Herald => {
            let mut started = None;
            push_herald(&g, inputs.plan.clone(), inputs.paths, &mut started, &pid).await;
            let elapsed = started.unwrap().0.elapsed();
            let (_, c0, g0) = started.unwrap();
            Sample {
                elapsed,
                self_cpu: cpu_seconds("self") - c0,
                gobgpd_cpu: cpu_seconds(&pid) - g0,
            }
        }
        Variant::Client => {
            let (c0, g0) = (cpu_seconds("self"), cpu_seconds(&pid));
            let elapsed = push_client(&g, &inputs.desired).await;
            Sample {
                elapsed,
                self_cpu: cpu_seconds("self") - c0,
                gobgpd_cpu: cpu_seconds(&pid) - g0,
            }
        }
    };
    assert_eq!(
        g.path_count().await as usize,
        inputs.paths,
        "{variant:?}: gobgpd holds every path"
    );
    sample
}

async fn unary(raw: &[RawPath]) -> (Duration, f64) {
    let g = Gobgpd::start().await;
    let pid = g.pid().unwrap().to_string();
    let mut client = g.client().await;
    let encoder = RawEncoder::new();
    let g0 = cpu_seconds(&pid);
    let t = Instant::now();
    for p in &raw[..UNARY_PATHS] {
        client
            .add_path(api::AddPathRequest {
                table_type: api::TableType::Global as i32,
                vrf_id: String::new(),
                path: Some(encoder.path(p)),
            })
            .await
            .expect("AddPath");
    }
    let elapsed = t.elapsed();
    let gobgpd_cpu = cpu_seconds(&pid) - g0;
    assert_eq!(g.path_count().await as usize, UNARY_PATHS);
    (elapsed, gobgpd_cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        // The reconciler's own timings (`RUST_LOG=herald=debug`): plan taken, each batch applied.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let started = Instant::now();
    let scale = scale_asked();
    let plan = scale.map_or_else(plan, scale_plan);
    let desired = paths::desired_paths(&plan, Origin::Igp, None);
    if scale.is_none() {
        assert_eq!(desired.len(), PATHS);
    }
    let raw: Vec<RawPath> = desired
        .iter()
        .map(|(k, a)| RawPath {
            prefix: k.prefix,
            identifier: k.identifier,
            attrs: a.clone(),
        })
        .collect();
    let inputs = Inputs {
        paths: desired.len(),
        plan: Arc::new(plan),
        raw: Arc::new(raw),
        desired,
    };
    match scale {
        None => println!(
            "push: {PATHS} paths ({ROUTES} /32 routes x {HOPS_PER_ROUTE} next hops, ORIGIN + NEXT_HOP + 1 community) into an empty gobgpd ({}), {BATCH} paths a message",
            gobgpd::GOBGPD
        ),
        Some(scale) => println!(
            "push: the plan of the scale scenario ({}): {} routes, {} paths ({} IPv6; at most {} next hops a route) into an empty gobgpd ({}), {BATCH} paths a message",
            scale.describe(),
            inputs.plan.routes.len(),
            inputs.paths,
            inputs
                .desired
                .keys()
                .filter(|k| k.prefix.addr().is_ipv6())
                .count(),
            inputs
                .plan
                .routes
                .values()
                .map(|r| r.next_hops.len())
                .max()
                .unwrap_or(0),
            gobgpd::GOBGPD
        ),
    }
    println!(
        "{ROUNDS} rounds of raw, herald, client, each run with a fresh gobgpd; wall time from push to acknowledgment"
    );

    // herald's own work before its first message, measured alone.
    let time = |f: &mut dyn FnMut()| {
        let mut v: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[4]
    };
    let desired_ms = time(&mut || {
        drop(std::hint::black_box(paths::desired_paths(
            &inputs.plan,
            Origin::Igp,
            None,
        )))
    });
    let diff_ms = time(&mut || {
        drop(std::hint::black_box(paths::diff(
            &inputs.desired,
            &PathSet::new(),
        )))
    });
    let in_rib_ms = time(&mut || {
        drop(std::hint::black_box(paths::prefixes_in_rib(
            &inputs.desired,
            &inputs.desired,
        )))
    });
    println!(
        "herald's CPU, alone: path set of the plan {desired_ms:.1} ms, diff against an empty RIB {diff_ms:.1} ms, inRib {in_rib_ms:.1} ms"
    );

    let variants = [Variant::Raw, Variant::Herald, Variant::Client];
    if let Ok(only) = std::env::var("HERALD_PUSH_ONLY") {
        // For profiling one variant: `HERALD_PUSH_ONLY=herald perf record -g target/release/deps/push-*`.
        let v = match only.as_str() {
            "raw" => Variant::Raw,
            "herald" => Variant::Herald,
            _ => Variant::Client,
        };
        for _ in 0..ROUNDS {
            let s = run_once(v, &inputs).await;
            println!(
                "{}: {:.0} paths/s",
                v.name(),
                inputs.paths as f64 / s.elapsed.as_secs_f64()
            );
        }
        return;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    let mut cpus: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
    let mut round_ratios = Vec::new();
    for round in 1..=ROUNDS {
        let mut line = format!("  round {round}:");
        let mut round_rates = [0.0; 3];
        for (i, &v) in variants.iter().enumerate() {
            let s = run_once(v, &inputs).await;
            let rate = inputs.paths as f64 / s.elapsed.as_secs_f64();
            rates[i].push(rate);
            cpus[i].push((s.self_cpu, s.gobgpd_cpu));
            round_rates[i] = rate;
            line += &format!(
                "  {} {:.0} ms = {:.0} paths/s (CPU bench {:.2} s, gobgpd {:.2} s);",
                match v {
                    Variant::Raw => "raw",
                    Variant::Herald => "herald",
                    Variant::Client => "client",
                },
                s.elapsed.as_secs_f64() * 1e3,
                rate,
                s.self_cpu,
                s.gobgpd_cpu
            );
        }
        round_ratios.push(round_rates[1] / round_rates[0]);
        println!("{line}");
    }
    let medians: Vec<f64> = rates.iter().map(|r| median(r.clone())).collect();
    for (i, v) in variants.iter().enumerate() {
        println!(
            "{:<24} median {:>7.0} paths/s (min {:.0}, max {:.0}); median CPU: bench process {:.2} s, gobgpd {:.2} s",
            v.name(),
            medians[i],
            rates[i].iter().copied().fold(f64::INFINITY, f64::min),
            rates[i].iter().copied().fold(0.0, f64::max),
            median(cpus[i].iter().map(|c| c.0).collect()),
            median(cpus[i].iter().map(|c| c.1).collect()),
        );
    }
    println!(
        "herald / raw: {:.3} (ratio of medians); per-round ratios {:?}, median {:.3}; target >= 0.9",
        medians[1] / medians[0],
        round_ratios
            .iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
        median(round_ratios.clone())
    );
    println!(
        "herald V3Client::push alone / raw: {:.3}",
        medians[2] / medians[0]
    );

    let mut unary_rates = Vec::new();
    let mut unary_cpu = Vec::new();
    for _ in 0..UNARY_ROUNDS {
        let (elapsed, gobgpd_cpu) = unary(&inputs.raw).await;
        unary_rates.push(UNARY_PATHS as f64 / elapsed.as_secs_f64());
        unary_cpu.push(gobgpd_cpu);
    }
    let unary_median = median(unary_rates.clone());
    println!(
        "unary AddPath, one path a call, {UNARY_PATHS} paths x {UNARY_ROUNDS} fresh gobgpds: median {:.0} paths/s ({:?}); gobgpd CPU median {:.2} s; raw stream / unary: {:.0}x",
        unary_median,
        unary_rates.iter().map(|r| r.round()).collect::<Vec<_>>(),
        median(unary_cpu),
        medians[0] / unary_median
    );
    // What the scale plan's range routes look like to gobgpd: few prefixes, each from every node.
    for (prefixes, hops) in [(6usize, 1000usize), (60, 100)] {
        let wide: Vec<RawPath> = (0..prefixes)
            .flat_map(|p| {
                (0..hops).map(move |h| RawPath {
                    prefix: IpNet::new(
                        IpAddr::V4(Ipv4Addr::from(0x6400_0000u32 + ((p as u32) << 16))),
                        16,
                    )
                    .unwrap(),
                    identifier: paths::IDENTIFIER_TAG | h as u32,
                    attrs: PathAttrs {
                        next_hop: IpAddr::V4(Ipv4Addr::from(0x0a01_0000u32 + h as u32)),
                        origin: 0,
                        local_pref: None,
                        communities: Arc::from(vec![COMMUNITY]),
                        large_communities: Arc::from(Vec::new()),
                        foreign_attributes: false,
                    },
                })
            })
            .collect();
        let messages = raw_messages(&wide);
        let g = Gobgpd::start().await;
        let pid = g.pid().unwrap().to_string();
        let mut client = g.client().await;
        client.get_bgp(api::GetBgpRequest {}).await.unwrap();
        let g0 = cpu_seconds(&pid);
        let t = Instant::now();
        client
            .add_path_stream(tokio_stream::iter(messages))
            .await
            .expect("AddPathStream");
        let elapsed = t.elapsed();
        assert_eq!(g.path_count().await as usize, wide.len());
        println!(
            "raw AddPathStream, {prefixes} prefixes x {hops} next hops ({} paths): {:.0} ms = {:.0} paths/s, gobgpd CPU {:.2} s",
            wide.len(),
            elapsed.as_secs_f64() * 1e3,
            wide.len() as f64 / elapsed.as_secs_f64(),
            cpu_seconds(&pid) - g0
        );
    }
    println!("bench took {:.0?}", started.elapsed());
}
