//! herald marks its paths in gobgpd with a source AS of its own (that is how it tells them from
//! operators' paths). This checks that the mark changes nothing for BGP peers: a second gobgpd,
//! peering over loopback with ADD-PATH like the lab's router, receives herald's paths exactly like
//! an operator's: every next hop of a prefix, third-party next hops kept, communities kept.

use herald_testkit::gobgpd;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gobgpd::{Gobgpd, free_port};
use herald_core::config::{Community, GobgpConfig, Origin, Seconds};
use herald_core::plan::{NextHop, Plan, PlanSnapshot, Route, RouteKind};
use tokio::sync::watch;

fn speaker_config(
    asn: u32,
    address: &str,
    port: u16,
    peer_asn: u32,
    peer: &str,
    peer_port: u16,
    add_paths: &str,
) -> String {
    let mut config = format!(
        "[global.config]\n  as = {asn}\n  router-id = \"{address}\"\n  port = {port}\n  local-address-list = [\"{address}\"]\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{peer}\"\n    peer-as = {peer_asn}\n\
         \x20 [neighbors.transport.config]\n    local-address = \"{address}\"\n    remote-port = {peer_port}\n\
         \x20 [neighbors.timers.config]\n    connect-retry = 1\n"
    );
    for family in ["ipv4-unicast", "ipv6-unicast"] {
        config.push_str(&format!(
            "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\"\n\
             \x20   [neighbors.afi-safis.add-paths.config]\n      {add_paths}\n"
        ));
    }
    config
}

fn route(prefix: &str, hops: &[(&str, &str)], communities: &[u32]) -> Route {
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
        sources: BTreeSet::new(),
        reason: String::new(),
        communities: communities.iter().map(|&c| Community(c)).collect(),
        large_communities: BTreeSet::new(),
        part_of: None,
        left_out: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bgp_peer_gets_herald_s_paths_like_any_other() {
    let (bgp_a, bgp_b) = (free_port(), free_port());
    let mut pool = Gobgpd::with_config(
        free_port(),
        &speaker_config(
            64512,
            "127.0.0.1",
            bgp_a,
            64513,
            "127.0.0.2",
            bgp_b,
            "send-max = 8",
        ),
    );
    let mut router = Gobgpd::with_config(
        free_port(),
        &speaker_config(
            64513,
            "127.0.0.2",
            bgp_b,
            64512,
            "127.0.0.1",
            bgp_a,
            "receive = true",
        ),
    );
    pool.spawn_and_wait().await.unwrap();
    router.spawn_and_wait().await.unwrap();

    let routes = vec![
        route(
            "198.19.32.0/20",
            &[
                ("node1", "198.19.0.1"),
                ("node2", "198.19.0.2"),
                ("node3", "198.19.0.3"),
            ],
            &[64512 << 16 | 100],
        ),
        route("198.19.38.11/32", &[("node2", "198.19.0.2")], &[]),
        route(
            "fd00:198:19:20::/64",
            &[("node1", "fd00:198:19::1"), ("node2", "fd00:198:19::2")],
            &[],
        ),
    ];
    let plan = Plan {
        routes: routes.into_iter().map(|r| (r.prefix, r)).collect(),
        ..Default::default()
    };
    let (plans, plans_rx) = watch::channel(PlanSnapshot {
        generation: 1,
        plan: plan.clone().into(),
        ..Default::default()
    });
    let config = GobgpConfig {
        address: pool.address(),
        origin: Origin::Igp,
        local_pref: None,
        anti_entropy_interval: Seconds(Duration::from_secs(30)),
        batch_size: 1000,
    };
    let mut status = herald_gobgp::spawn(config, plans_rx);
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| s.applied_generation == 1),
    )
    .await
    .expect("converges")
    .unwrap();
    // An operator path for comparison.
    pool.cli(&[
        "global",
        "rib",
        "add",
        "198.19.48.0/20",
        "nexthop",
        "198.19.0.1",
        "-a",
        "ipv4",
    ]);

    // What the router should learn: (prefix, next hop, communities), herald's and the operator's.
    let mut want: BTreeSet<(String, String, Vec<u32>)> = plan
        .routes
        .values()
        .flat_map(|r| {
            r.next_hops.iter().map(move |h| {
                (
                    r.prefix.to_string(),
                    h.address.to_string(),
                    r.communities.iter().map(|c| c.0).collect(),
                )
            })
        })
        .collect();
    want.insert(("198.19.48.0/20".into(), "198.19.0.1".into(), vec![]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<(String, String, Vec<u32>)> = router
            .paths()
            .await
            .into_iter()
            .map(|p| (p.prefix.to_string(), p.next_hop.to_string(), p.communities))
            .collect();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router did not learn the paths: got {got:?}, want {want:?}\npool: {}\nrouter: {}",
            pool.log(),
            router.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A withdrawal reaches the router too: one next hop of the range goes.
    let mut less = plan.clone();
    less.route_mut(&"198.19.32.0/20".parse().unwrap())
        .unwrap()
        .next_hops
        .retain(|h| h.node != "node3");
    plans.send_replace(PlanSnapshot {
        generation: 2,
        plan: less.into(),
        ..Default::default()
    });
    want.remove(&(
        "198.19.32.0/20".into(),
        "198.19.0.3".into(),
        vec![64512 << 16 | 100],
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeSet<(String, String, Vec<u32>)> = router
            .paths()
            .await
            .into_iter()
            .map(|p| (p.prefix.to_string(), p.next_hop.to_string(), p.communities))
            .collect();
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the withdrawal did not reach the router: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
