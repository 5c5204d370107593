//! The gobgp sink against a real gobgpd (no mocks): every test starts its own standalone gobgpd
//! on a free port, so the tests run in parallel.

use herald_testkit::gobgpd;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use gobgpd::{Gobgpd, Listed};
use herald_core::config::{Community, GobgpConfig, LargeCommunity, Origin, Seconds};
use herald_core::plan::{NextHop, Plan, PlanSnapshot, Route, RouteKind};
use herald_gobgp::SinkStatus;
use ipnet::IpNet;
use tokio::sync::watch;

/// herald's mark on its paths in gobgpd, written out here rather than taken from herald.
const HERALD_SOURCE_ASN: u32 = 4_200_437_253;
/// How long anything may take to converge in these tests (generous: tests run in parallel).
const CONVERGE: Duration = Duration::from_secs(30);

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The identifier herald gives a node's paths (no collisions among the names used here).
fn node_id(node: &str) -> u32 {
    0xA000_0000 | (fnv1a(node.as_bytes()) & 0x0FFF_FFFF)
}

fn route(prefix: &str, hops: &[(&str, &str)], communities: &[&str], large: &[&str]) -> Route {
    Route {
        prefix: prefix.parse().unwrap(),
        kind: RouteKind::ClusterRange,
        next_hops: hops
            .iter()
            .map(|(n, a)| NextHop {
                node: n.to_string(),
                address: a.parse().unwrap(),
            })
            .collect(),
        sources: BTreeSet::from(["test".to_string()]),
        reason: "test".to_string(),
        communities: communities
            .iter()
            .map(|c| c.parse::<Community>().unwrap())
            .collect(),
        large_communities: large
            .iter()
            .map(|c| c.parse::<LargeCommunity>().unwrap())
            .collect(),
        part_of: None,
        left_out: Default::default(),
    }
}

fn plan(routes: Vec<Route>) -> Plan {
    Plan {
        routes: routes.into_iter().map(|r| (r.prefix, r)).collect(),
        ..Default::default()
    }
}

/// The lab's plan: the cluster range over three nodes, a host route on node2, an IPv6 range.
fn lab_plan() -> Plan {
    plan(vec![
        route(
            "198.19.32.0/20",
            &[
                ("node1", "198.19.0.1"),
                ("node2", "198.19.0.2"),
                ("node3", "198.19.0.3"),
            ],
            &["64512:100"],
            &["64512:1:2"],
        ),
        route(
            "198.19.38.11/32",
            &[("node2", "198.19.0.2")],
            &["64512:100", "64512:200"],
            &[],
        ),
        route(
            "fd00:198:19:20::/64",
            &[("node1", "fd00:198:19::1"), ("node2", "fd00:198:19::2")],
            &[],
            &[],
        ),
    ])
}

fn config(address: String, anti_entropy: Duration) -> GobgpConfig {
    GobgpConfig {
        address,
        origin: Origin::Igp,
        local_pref: None,
        anti_entropy_interval: Seconds(anti_entropy),
        batch_size: 1000,
    }
}

/// What gobgpd should hold for herald, in [`Listed`]'s terms (less age and attribute order).
type Expected = (
    IpNet,
    IpAddr,
    u32,
    u32,
    Vec<u32>,
    Vec<(u32, u32, u32)>,
    Option<u32>,
);

fn expected(plan: &Plan, origin: u32, local_pref: Option<u32>) -> Vec<Expected> {
    let mut out: Vec<Expected> = plan
        .routes
        .values()
        .flat_map(|r| {
            r.next_hops.iter().map(move |h| {
                (
                    r.prefix,
                    h.address,
                    node_id(&h.node),
                    origin,
                    r.communities.iter().map(|c| c.0).collect(),
                    r.large_communities
                        .iter()
                        .map(|c| (c.0, c.1, c.2))
                        .collect(),
                    local_pref,
                )
            })
        })
        .collect();
    out.sort();
    out
}

fn herald_paths(listed: &[Listed]) -> Vec<Listed> {
    listed
        .iter()
        .filter(|p| p.source_asn == HERALD_SOURCE_ASN)
        .cloned()
        .collect()
}

fn as_expected(listed: &[Listed]) -> Vec<Expected> {
    let mut out: Vec<Expected> = herald_paths(listed)
        .into_iter()
        .map(|p| {
            let mut communities = p.communities.clone();
            communities.sort();
            let mut large = p.large_communities.clone();
            large.sort();
            (
                p.prefix,
                p.next_hop,
                p.identifier,
                p.origin,
                communities,
                large,
                p.local_pref,
            )
        })
        .collect();
    out.sort();
    out
}

/// A herald sink fed plans by the test.
struct Herald {
    plans: watch::Sender<PlanSnapshot>,
    status: watch::Receiver<SinkStatus>,
}

impl Herald {
    /// Starts the reconciler; with `first`, the plan is there before it starts (as in `herald run`,
    /// whose planner publishes first), so that what it reports about it does not race its start.
    fn start(config: GobgpConfig, first: Option<Plan>) -> Herald {
        let first = first.map(|p| PlanSnapshot {
            generation: 1,
            plan: std::sync::Arc::new(p),
            ..Default::default()
        });
        let (plans, plans_rx) = watch::channel(first.unwrap_or_default());
        let status = herald_gobgp::spawn(config, plans_rx);
        Herald { plans, status }
    }

    /// Starts the reconciler with no plan yet and calls to gobgpd that time out after
    /// `call_timeout` (herald's is 10 s: tests of a hung gobgpd need not wait that long).
    fn with_call_timeout(g: &Gobgpd, call_timeout: Duration) -> Herald {
        let cfg = config(g.address(), Duration::from_secs(60));
        let client =
            herald_gobgp::v3::V3Client::new(&g.address(), cfg.batch_size, call_timeout).unwrap();
        let (plans, plans_rx) = watch::channel(PlanSnapshot::default());
        let status =
            herald_gobgp::spawn_with(client, &g.address(), herald_gobgp::settings(&cfg), plans_rx);
        Herald { plans, status }
    }

    fn publish(&mut self, plan: Plan) -> u64 {
        let mut generation = 0;
        self.plans.send_modify(|s| {
            s.generation += 1;
            s.plan = std::sync::Arc::new(plan);
            generation = s.generation;
        });
        generation
    }

    fn generation(&self) -> u64 {
        self.plans.borrow().generation
    }

    /// Waits until gobgpd holds the current plan.
    async fn converged(&mut self, within: Duration) -> SinkStatus {
        let generation = self.generation();
        self.wait(within, "gobgpd to hold the plan", |s| {
            s.applied_generation >= generation && s.pending_operations == 0 && s.reachable
        })
        .await
    }

    async fn wait(
        &mut self,
        within: Duration,
        what: &str,
        f: impl FnMut(&SinkStatus) -> bool,
    ) -> SinkStatus {
        let result = match tokio::time::timeout(within, self.status.wait_for(f)).await {
            Ok(Ok(s)) => Some(s.clone()),
            Ok(Err(_)) => panic!("the sink stopped while waiting for {what}"),
            Err(_) => None,
        };
        result.unwrap_or_else(|| panic!("no {what} within {within:?}: {:?}", *self.status.borrow()))
    }

    /// Stops the reconciler (as herald's exit does) and waits until it is gone.
    async fn stop(self) -> SinkStatus {
        let Herald { plans, mut status } = self;
        drop(plans);
        tokio::time::timeout(Duration::from_secs(15), async {
            while status.changed().await.is_ok() {}
        })
        .await
        .expect("the reconciler stops once the plan channel closes");
        status.borrow().clone()
    }
}

/// Polls `f` until it holds.
async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_plan_in_gobgpd(g: &Gobgpd, plan: &Plan, within: Duration) {
    let want = expected(plan, 0, None);
    eventually(within, "plan in gobgpd", || async {
        as_expected(&g.paths().await) == want
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_is_pushed_as_one_path_per_prefix_and_next_hop() {
    let g = Gobgpd::start().await;
    let mut cfg = config(g.address(), Duration::from_secs(30));
    cfg.origin = Origin::Incomplete;
    cfg.local_pref = Some(200);
    let p = lab_plan();
    let mut h = Herald::start(cfg, Some(p.clone()));
    let status = h.converged(CONVERGE).await;

    let listed = g.paths().await;
    assert_eq!(as_expected(&listed), expected(&p, 2, Some(200)));
    assert_eq!(status.paths_applied, 6);
    assert_eq!(status.paths_added, 6);
    assert_eq!(status.paths_withdrawn, 0);
    assert!(status.last_error.is_none() && status.last_applied.is_some());
    let in_rib: BTreeSet<String> = status.in_rib.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        in_rib,
        BTreeSet::from([
            "198.19.32.0/20".into(),
            "198.19.38.11/32".into(),
            "fd00:198:19:20::/64".into()
        ])
    );
    // IPv4 paths carry a NEXT_HOP attribute, IPv6 paths MP_REACH_NLRI.
    for path in &listed {
        let has = |t: &str| path.attribute_types.iter().any(|a| a == t);
        match path.prefix {
            IpNet::V4(_) => assert!(
                has("NextHopAttribute") && !has("MpReachNLRIAttribute"),
                "{path:?}"
            ),
            IpNet::V6(_) => assert!(has("MpReachNLRIAttribute"), "{path:?}"),
        }
    }
    // Three next hops of the range, three distinct identifiers (ECMP through ADD-PATH).
    let ids: BTreeSet<u32> = listed
        .iter()
        .filter(|p| p.prefix.to_string() == "198.19.32.0/20")
        .map(|p| p.identifier)
        .collect();
    assert_eq!(ids.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_change_applies_exactly_the_diff() {
    let g = Gobgpd::start().await;
    let before = lab_plan();
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(30)),
        Some(before.clone()),
    );
    h.converged(CONVERGE).await;
    let first = herald_paths(&g.paths().await);
    // Ages have a resolution of a second: make a re-added path show.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // node3 leaves the range, node2's host route moves to node1, the IPv6 range changes communities,
    // a new external range appears.
    let after = plan(vec![
        route(
            "198.19.32.0/20",
            &[("node1", "198.19.0.1"), ("node2", "198.19.0.2")],
            &["64512:100"],
            &["64512:1:2"],
        ),
        route(
            "198.19.38.11/32",
            &[("node1", "198.19.0.1")],
            &["64512:100", "64512:200"],
            &[],
        ),
        route(
            "fd00:198:19:20::/64",
            &[("node1", "fd00:198:19::1"), ("node2", "fd00:198:19::2")],
            &["64512:300"],
            &[],
        ),
        route(
            "198.19.48.0/20",
            &[
                ("node1", "198.19.0.1"),
                ("node2", "198.19.0.2"),
                ("node3", "198.19.0.3"),
            ],
            &[],
            &[],
        ),
    ]);
    h.publish(after.clone());
    let status = h.converged(CONVERGE).await;
    let listed = g.paths().await;
    assert_eq!(as_expected(&listed), expected(&after, 0, None));
    // Added: node1's host route, 2 IPv6 paths with new communities, 3 for the new range.
    // Withdrawn: node3 from the range, node2's host route.
    assert_eq!(status.paths_added, 6 + 1 + 2 + 3);
    assert_eq!(status.paths_withdrawn, 2);
    // Untouched paths were not re-added.
    let unchanged = |p: &&Listed| {
        p.prefix.to_string() == "198.19.32.0/20" && p.next_hop.to_string() != "198.19.0.3"
    };
    let old: Vec<_> = first.iter().filter(unchanged).collect();
    let new_paths = herald_paths(&listed);
    let new: Vec<_> = new_paths.iter().filter(unchanged).collect();
    assert_eq!(old, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_paths_are_never_touched() {
    let g = Gobgpd::start().await;
    let id1 = node_id("node1").to_string();
    // Before herald starts: the same prefix, next hop and identifier as herald's node1 path, and a
    // prefix of its own with an identifier in herald's space.
    g.cli(&[
        "global",
        "rib",
        "add",
        "198.19.32.0/20",
        "nexthop",
        "198.19.0.1",
        "identifier",
        &id1,
        "community",
        "65000:1",
        "-a",
        "ipv4",
    ]);
    g.cli(&[
        "global",
        "rib",
        "add",
        "198.19.99.0/24",
        "nexthop",
        "198.19.0.9",
        "identifier",
        &id1,
        "-a",
        "ipv4",
    ]);
    g.cli(&[
        "global",
        "rib",
        "add",
        "2001:db8:99::/64",
        "nexthop",
        "2001:db8::9",
        "-a",
        "ipv6",
    ]);
    let operator = |listed: &[Listed]| -> Vec<Listed> {
        let mut v: Vec<Listed> = listed
            .iter()
            .filter(|p| p.source_asn != HERALD_SOURCE_ASN)
            .cloned()
            .collect();
        v.sort();
        v
    };
    let theirs = operator(&g.paths().await);
    assert_eq!(theirs.len(), 3);
    assert!(theirs.iter().all(|p| p.source_asn == 0), "{theirs:?}");

    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(1)),
        Some(lab_plan()),
    );
    h.converged(CONVERGE).await;
    let listed = g.paths().await;
    assert_eq!(operator(&listed), theirs);
    assert_eq!(as_expected(&listed), expected(&lab_plan(), 0, None));
    // Both paths with the same prefix, next hop and identifier are there.
    let same: Vec<_> = listed
        .iter()
        .filter(|p| {
            p.prefix.to_string() == "198.19.32.0/20" && p.next_hop.to_string() == "198.19.0.1"
        })
        .collect();
    assert_eq!(same.len(), 2, "{same:?}");
    assert!(same.iter().all(|p| p.identifier == node_id("node1")));

    // An operator path added while herald runs, then a change of communities (herald replaces its
    // paths), then herald drops the prefix altogether (herald withdraws its paths).
    g.cli(&[
        "global",
        "rib",
        "add",
        "198.19.38.11/32",
        "nexthop",
        "198.19.0.2",
        "identifier",
        &node_id("node2").to_string(),
        "-a",
        "ipv4",
    ]);
    let theirs = operator(&g.paths().await);
    assert_eq!(theirs.len(), 4);
    let mut changed = lab_plan();
    changed
        .route_mut(&"198.19.32.0/20".parse().unwrap())
        .unwrap()
        .communities = BTreeSet::from([Community(7)]);
    h.publish(changed.clone());
    h.converged(CONVERGE).await;
    assert_eq!(as_expected(&g.paths().await), expected(&changed, 0, None));
    let mut gone = changed.clone();
    gone.routes
        .remove(&"198.19.32.0/20".parse::<ipnet::IpNet>().unwrap());
    gone.routes
        .remove(&"198.19.38.11/32".parse::<ipnet::IpNet>().unwrap());
    h.publish(gone.clone());
    h.converged(CONVERGE).await;
    let listed = g.paths().await;
    assert_eq!(as_expected(&listed), expected(&gone, 0, None));
    assert_eq!(operator(&listed), theirs);
    // Through a couple of anti-entropy passes (1 s) too, and herald's stop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let status = h.stop().await;
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(operator(&g.paths().await), theirs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_herald_adopts_its_paths_without_withdrawing() {
    let g = Gobgpd::start().await;
    let p = lab_plan();
    g.cli(&[
        "global",
        "rib",
        "add",
        "198.19.99.0/24",
        "nexthop",
        "198.19.0.9",
        "-a",
        "ipv4",
    ]);
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(30)),
        Some(p.clone()),
    );
    h.converged(CONVERGE).await;
    h.stop().await;
    let before = g.paths().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Same plan: nothing to do, nothing re-added (same ages), nothing withdrawn.
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(30)),
        Some(p.clone()),
    );
    let status = h.converged(CONVERGE).await;
    assert_eq!(
        (status.paths_added, status.paths_withdrawn),
        (0, 0),
        "{status:?}"
    );
    assert_eq!(status.paths_applied, 6);
    assert_eq!(status.in_rib.len(), 3);
    assert_eq!(g.paths().await, before);
    h.stop().await;

    // A restart that comes with a changed plan: only the difference is applied.
    let mut changed = p.clone();
    let range = changed
        .route_mut(&"198.19.32.0/20".parse().unwrap())
        .unwrap();
    range.next_hops.retain(|h| h.node != "node3");
    range.communities.insert(Community(9));
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(30)),
        Some(changed.clone()),
    );
    let status = h.converged(CONVERGE).await;
    assert_eq!(
        (status.paths_added, status.paths_withdrawn),
        (2, 1),
        "{status:?}"
    );
    let after = g.paths().await;
    assert_eq!(as_expected(&after), expected(&changed, 0, None));
    let untouched = |l: &[Listed]| -> Vec<Listed> {
        l.iter()
            .filter(|p| p.prefix.to_string() != "198.19.32.0/20")
            .cloned()
            .collect()
    };
    assert_eq!(untouched(&after), untouched(&before));

    // A herald that has no plan yet touches nothing.
    h.stop().await;
    let h = Herald::start(config(g.address(), Duration::from_secs(30)), None);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(g.paths().await, after);
    let status = h.stop().await;
    assert_eq!(status.paths_applied, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_gobgpd_gets_everything_back() {
    let mut g = Gobgpd::start().await;
    let p = lab_plan();
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(60)),
        Some(p.clone()),
    );
    h.converged(CONVERGE).await;

    // A quick restart: gobgpd comes back empty before herald's next probe.
    g.kill();
    g.spawn_and_wait().await.unwrap();
    let started = Instant::now();
    wait_for_plan_in_gobgpd(&g, &p, Duration::from_secs(10)).await;
    eprintln!(
        "plan back in gobgpd {:?} after its restart",
        started.elapsed()
    );

    // A longer outage: herald notices, says so, and pushes everything once gobgpd is back.
    g.kill();
    h.wait(Duration::from_secs(10), "gobgpd unreachable", |s| {
        !s.reachable && s.last_error.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    g.spawn_and_wait().await.unwrap();
    wait_for_plan_in_gobgpd(&g, &p, Duration::from_secs(10)).await;
    let status = h
        .wait(Duration::from_secs(10), "recovery", |s| {
            s.reachable && s.last_error.is_none()
        })
        .await;
    assert_eq!(status.paths_applied, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_deleted_by_hand_come_back() {
    let g = Gobgpd::start().await;
    let p = lab_plan();
    let anti_entropy = Duration::from_secs(3);
    let mut h = Herald::start(config(g.address(), anti_entropy), Some(p.clone()));
    h.converged(CONVERGE).await;

    // The CLI cannot name herald's paths (their source differs), but it can delete every path.
    // herald may put them back before the test could look (its probe runs every second), so what
    // shows that they were gone is herald's count of repairs.
    let repairs = h.status.borrow().repairs;
    g.cli(&["global", "rib", "-a", "ipv4", "del", "all"]);
    let started = Instant::now();
    h.wait(
        anti_entropy + Duration::from_secs(2),
        "the deletion repaired",
        |s| s.repairs > repairs,
    )
    .await;
    wait_for_plan_in_gobgpd(&g, &p, anti_entropy + Duration::from_secs(2)).await;
    eprintln!("deleted IPv4 paths back after {:?}", started.elapsed());

    // A deletion that leaves gobgpd's path count unchanged (one of herald's paths deleted through
    // the API, an operator path added): only anti-entropy notices.
    let mut client = g.client().await;
    let target = herald_paths(&g.paths().await)
        .into_iter()
        .find(|l| l.prefix.to_string() == "198.19.38.11/32")
        .unwrap();
    let repairs = h.status.borrow().repairs;
    delete_herald_path(&mut client, &target).await;
    g.cli(&[
        "global",
        "rib",
        "add",
        "198.19.99.0/24",
        "nexthop",
        "198.19.0.9",
        "-a",
        "ipv4",
    ]);
    // Between the two CLI calls the count is one short, and the probe may see it; either way the
    // path is repaired, not left out.
    let started = Instant::now();
    h.wait(
        anti_entropy + Duration::from_secs(2),
        "the deleted path repaired",
        |s| s.repairs > repairs,
    )
    .await;
    wait_for_plan_in_gobgpd(&g, &p, anti_entropy + Duration::from_secs(2)).await;
    eprintln!("deleted path back after {:?}", started.elapsed());
    assert_eq!(g.paths().await.len(), 7);
}

/// Deletes one of herald's paths the way only an API client can: the full path, with herald's
/// source AS.
async fn delete_herald_path(
    client: &mut herald_api::gobgp::v3::gobgp_api_client::GobgpApiClient<tonic::transport::Channel>,
    listed: &Listed,
) {
    use herald_api::gobgp::v3 as api;
    use prost::Message;
    let any = |url: &str, bytes: Vec<u8>| pbjson_types::Any {
        type_url: format!("type.googleapis.com/apipb.{url}"),
        value: bytes.into(),
    };
    let family = api::Family {
        afi: api::family::Afi::Ip as i32,
        safi: api::family::Safi::Unicast as i32,
    };
    let path = api::Path {
        nlri: Some(any(
            "IPAddressPrefix",
            api::IpAddressPrefix {
                prefix_len: listed.prefix.prefix_len().into(),
                prefix: listed.prefix.addr().to_string(),
            }
            .encode_to_vec(),
        )),
        pattrs: vec![
            any(
                "OriginAttribute",
                api::OriginAttribute { origin: 0 }.encode_to_vec(),
            ),
            any(
                "NextHopAttribute",
                api::NextHopAttribute {
                    next_hop: listed.next_hop.to_string(),
                }
                .encode_to_vec(),
            ),
        ],
        family: Some(family),
        source_asn: HERALD_SOURCE_ASN,
        identifier: listed.identifier,
        ..Default::default()
    };
    client
        .delete_path(api::DeletePathRequest {
            table_type: api::TableType::Global as i32,
            family: Some(family),
            path: Some(path),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Log lines of every test in this binary (tests tell theirs apart by gobgpd's address).
fn logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        struct Writer(&'static std::sync::Mutex<Vec<u8>>);
        impl std::io::Write for Writer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Writer(buffer))
            .init();
        buffer
    })
}

fn log_text(address: &str) -> String {
    let logs = logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(&format!("address={address}")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// How many log lines about `address` contain `text`.
fn log_lines(address: &str, text: &str) -> usize {
    let logs = logs().lock().unwrap();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(&format!("address={address}")) && l.contains(text))
        .count()
}

/// Waits (at most 5 s) until `count` log lines about `address` contain `text`, then checks that
/// there are exactly that many: a line is logged just after the status it goes with is published.
async fn expect_log_lines(address: &str, text: &str, count: usize) {
    let started = Instant::now();
    while log_lines(address, text) < count && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        log_lines(address, text),
        count,
        "{text:?} in\n{}",
        log_text(address)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_gobgpd_at_start_is_reported_then_caught_up() {
    logs();
    let mut g = Gobgpd::new(gobgpd::free_port());
    let p = lab_plan();
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(30)),
        Some(p.clone()),
    );
    let status = h
        .wait(Duration::from_secs(10), "an error", |s| {
            s.last_error.is_some()
        })
        .await;
    assert!(!status.reachable, "{status:?}");
    assert_eq!(status.pending_operations, 6, "{status:?}");
    assert_eq!(status.applied_generation, 0);
    assert!(status.in_rib.is_empty());
    // Still retrying a while later; one warning for all the retries.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!h.status.borrow().reachable);
    expect_log_lines(&g.address(), "WARN", 1).await;
    expect_log_lines(&g.address(), "gobgpd unreachable", 1).await;

    g.spawn_and_wait().await.unwrap();
    let status = h.converged(CONVERGE).await;
    assert!(status.last_error.is_none());
    assert_eq!(as_expected(&g.paths().await), expected(&p, 0, None));
    expect_log_lines(&g.address(), "reachable and up to date again", 1).await;

    // Gone again for a while: one more warning, then one more recovery.
    g.kill();
    h.wait(Duration::from_secs(10), "gobgpd unreachable", |s| {
        !s.reachable
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    g.spawn_and_wait().await.unwrap();
    wait_for_plan_in_gobgpd(&g, &p, Duration::from_secs(10)).await;
    h.wait(Duration::from_secs(10), "recovery", |s| {
        s.reachable && s.last_error.is_none()
    })
    .await;
    expect_log_lines(&g.address(), "gobgpd unreachable", 2).await;
    expect_log_lines(&g.address(), "read gobgpd's RIB back after an error", 1).await;
    expect_log_lines(&g.address(), "reachable and up to date again", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_gobgpd_lacks_is_reported_not_retried() {
    // gobgpd with an IPv4 RIB only: it accepts IPv6 paths and drops them.
    let g = Gobgpd::start_with(
        "[[global.afi-safis]]\n  [global.afi-safis.config]\n    afi-safi-name = \"ipv4-unicast\"\n",
    )
    .await;
    let p = lab_plan();
    let mut h = Herald::start(config(g.address(), Duration::from_secs(1)), Some(p.clone()));
    let status = h.converged(CONVERGE).await;
    assert_eq!(status.paths_added, 4, "{status:?}");
    let error = status.last_error.unwrap_or_default();
    assert!(error.contains("ipv6-unicast (2 paths)"), "{error}");
    let in_rib: BTreeSet<String> = status.in_rib.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        in_rib,
        BTreeSet::from(["198.19.32.0/20".into(), "198.19.38.11/32".into()])
    );
    // No busy loop: nothing more pushed through probes and anti-entropy passes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = h.status.borrow().clone();
    assert_eq!(
        (status.paths_added, status.paths_withdrawn),
        (4, 0),
        "{status:?}"
    );
    assert!(status.reachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_routes_carry_mp_reach_nlri() {
    let g = Gobgpd::start().await;
    let p = plan(vec![
        route(
            "2001:db8:40::/64",
            &[("node-a", "2001:db8::a"), ("node-b", "2001:db8::b")],
            &["64512:6"],
            &["64512:6:6"],
        ),
        route("2001:db8:41::7/128", &[("node-b", "2001:db8::b")], &[], &[]),
    ]);
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(30)),
        Some(p.clone()),
    );
    h.converged(CONVERGE).await;
    let listed = g.paths().await;
    assert_eq!(as_expected(&listed), expected(&p, 0, None));
    assert!(listed.iter().all(|l| {
        l.attribute_types
            .iter()
            .any(|t| t == "MpReachNLRIAttribute")
    }));
    assert!(
        listed
            .iter()
            .all(|l| !l.attribute_types.iter().any(|t| t == "NextHopAttribute"))
    );
    let cli = g.cli(&["global", "rib", "-a", "ipv6"]);
    assert!(
        cli.contains("2001:db8:40::/64")
            && cli.contains("2001:db8::a")
            && cli.contains("2001:db8::b"),
        "{cli}"
    );

    // Withdrawal of an IPv6 path.
    let mut less = p.clone();
    less.routes
        .remove(&"2001:db8:41::7/128".parse::<ipnet::IpNet>().unwrap());
    h.publish(less.clone());
    h.converged(CONVERGE).await;
    assert_eq!(as_expected(&g.paths().await), expected(&less, 0, None));
}

/// `count` /32 host routes, each on two of `nodes` nodes.
fn big_plan(count: usize, nodes: usize, salt: u32) -> Plan {
    plan(
        (0..count)
            .map(|i| {
                let a = format!("node-{}", i % nodes);
                let b = format!("node-{}", (i + 1) % nodes);
                let ip = std::net::Ipv4Addr::from(0x0a00_0000u32 + i as u32);
                let c = format!("64512:{}", salt);
                route(
                    &format!("{ip}/32"),
                    &[
                        (&a, &format!("198.19.0.{}", 1 + i % nodes)),
                        (&b, &format!("198.19.0.{}", 1 + (i + 1) % nodes)),
                    ],
                    &[c.as_str()],
                    &[],
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_paths() {
    let g = Gobgpd::start().await;
    let p = big_plan(5000, 50, 1);
    assert_eq!(p.path_count(), 10_000);
    let started = Instant::now();
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(60)),
        Some(p.clone()),
    );
    let status = h.converged(Duration::from_secs(60)).await;
    eprintln!("10,000 paths pushed in {:?}", started.elapsed());
    assert_eq!(status.paths_applied, 10_000);
    assert_eq!(status.in_rib.len(), 5000);
    assert_eq!(g.path_count().await, 10_000);
    assert_eq!(as_expected(&g.paths().await), expected(&p, 0, None));

    // Everything changes (communities), then everything goes.
    let started = Instant::now();
    h.publish(big_plan(5000, 50, 2));
    let status = h.converged(Duration::from_secs(60)).await;
    eprintln!("10,000 paths replaced in {:?}", started.elapsed());
    assert_eq!(status.paths_added, 20_000);
    let started = Instant::now();
    h.publish(Plan::default());
    let status = h.converged(Duration::from_secs(60)).await;
    eprintln!("10,000 paths withdrawn in {:?}", started.elapsed());
    assert_eq!(status.paths_withdrawn, 10_000);
    assert_eq!(g.path_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_coalesce_while_gobgpd_hangs() {
    let g = Gobgpd::start().await;
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(60)),
        Some(lab_plan()),
    );
    h.converged(CONVERGE).await;
    let added = h.status.borrow().paths_added;

    g.signal("STOP");
    // Many plans while gobgpd hangs: only the last one matters.
    let mut last = Plan::default();
    for i in 0..200u32 {
        last = plan(vec![route(
            &format!("198.19.{}.0/24", 64 + i % 64),
            &[("node1", "198.19.0.1"), ("node2", "198.19.0.2")],
            &[],
            &[],
        )]);
        h.publish(last.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    g.signal("CONT");
    h.converged(CONVERGE).await;
    assert_eq!(as_expected(&g.paths().await), expected(&last, 0, None));
    // Far fewer operations than 200 plans' worth.
    let status = h.status.borrow().clone();
    assert!(status.paths_added - added <= 8, "{status:?}");
}

/// A gobgpd that does not answer from the start: until herald's first call is answered or fails
/// (ListPath gets a minute: gobgpd gathers the whole table first), the status says "no answer yet",
/// not "unreachable" with no reason. (`hung_gobgpd_times_out_then_gets_the_latest_plan` has the
/// timeout named.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_call_unanswered_is_not_called_unreachable_without_a_reason() {
    let g = Gobgpd::start().await;
    g.signal("STOP");
    let mut h = Herald::with_call_timeout(&g, Duration::from_secs(1));
    h.publish(lab_plan());
    // Past the call timeout (1 s), still within ListPath's minute.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = h.status.borrow().clone();
    assert!(
        waiting.awaiting_first_answer
            && !waiting.reachable
            && waiting.last_error.is_none()
            && waiting.errors == 0,
        "{waiting:?}"
    );
    g.signal("CONT");
    let converged = h.converged(CONVERGE).await;
    assert!(!converged.awaiting_first_answer, "{converged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_gobgpd_times_out_then_gets_the_latest_plan() {
    let g = Gobgpd::start().await;
    let mut h = Herald::with_call_timeout(&g, Duration::from_secs(1));
    h.publish(lab_plan());
    h.converged(CONVERGE).await;

    g.signal("STOP");
    let mut last = lab_plan();
    last.routes
        .remove(&"198.19.38.11/32".parse::<ipnet::IpNet>().unwrap());
    h.publish(last.clone());
    let status = h
        .wait(Duration::from_secs(10), "a timeout", |s| {
            !s.reachable && s.last_error.is_some()
        })
        .await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("no answer"),
        "{status:?}"
    );
    assert_eq!(status.pending_operations, 1, "{status:?}");
    // Retrying with backoff meanwhile; more plans come and go.
    for i in 0..20u8 {
        last.route_mut(&"198.19.32.0/20".parse().unwrap())
            .unwrap()
            .communities = BTreeSet::from([Community(u32::from(i))]);
        h.publish(last.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    g.signal("CONT");
    h.converged(CONVERGE).await;
    assert_eq!(as_expected(&g.paths().await), expected(&last, 0, None));
}

/// Anti-entropy reads gobgpd's RIB beside the pushes: what herald pushes while a read is under way
/// must neither be taken for drift (a repair) nor be undone by the older read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_during_an_anti_entropy_read_are_kept() {
    let g = Gobgpd::start().await;
    let mut current = big_plan(5000, 50, 1);
    let mut h = Herald::start(
        config(g.address(), Duration::from_secs(1)),
        Some(current.clone()),
    );
    h.converged(Duration::from_secs(60)).await;

    // A route's communities change every 10 ms for 3.5 s: three or four reads of 10,000 paths, each
    // with pushes landing while it runs.
    let prefixes: Vec<ipnet::IpNet> = current.routes.keys().copied().collect();
    let started = Instant::now();
    let mut step = 0u32;
    while started.elapsed() < Duration::from_millis(3500) {
        step += 1;
        let prefix = prefixes[(step as usize * 37) % prefixes.len()];
        current.route_mut(&prefix).unwrap().communities =
            BTreeSet::from([Community(64512 << 16 | step)]);
        h.publish(current.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = h.converged(Duration::from_secs(30)).await;
    assert!(step > 100, "only {step} plans");
    assert_eq!(
        status.repairs, 0,
        "herald's own pushes were taken for drift"
    );
    assert_eq!(as_expected(&g.paths().await), expected(&current, 0, None));
    // And drift is still found: one of herald's paths deleted by hand, an operator path added.
    let mut client = g.client().await;
    let target = herald_paths(&g.paths().await).into_iter().next().unwrap();
    delete_herald_path(&mut client, &target).await;
    g.cli(&[
        "global",
        "rib",
        "add",
        "198.19.99.0/24",
        "nexthop",
        "198.19.0.9",
        "-a",
        "ipv4",
    ]);
    wait_for_plan_in_gobgpd(&g, &current, Duration::from_secs(5)).await;
    let status = h
        .wait(Duration::from_secs(5), "the repair counted", |s| {
            s.repairs == 1
        })
        .await;
    assert_eq!(status.paths_applied, 10_000);
}
