//! `ecmp.maxPaths` against a real router: a pool of 40 nodes, BIRD 2 with its default `merge paths
//! on` (16 next hops a route), herald with `maxPaths: 16`. Without the limit, host1 would keep 16 of
//! 40 paths of each range, the lowest addresses (see ../shared/notes/ecmp-limits-and-graceful-
//! restart.md); with it, host1's kernel holds exactly herald's plan, and every node carries part of
//! every range.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use herald_integration::lab::{Lab, LabNode, LabOptions, RouteTable};
use herald_integration::lab_herald::{LabHerald, write_atomically};
use herald_integration::process::wait_until;
use ipnet::IpNet;

const NODES: usize = 40;
const MAX_PATHS: usize = 16;
const RANGES: &str =
    "serviceClusterIPs: [{cidr: 198.19.32.0/20}]\nserviceExternalIPs: [{cidr: 198.19.48.0/20}]\n";

fn node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 1, 1 + i as u8)
}

/// The cluster: 40 nodes (`not_ready` of them NotReady), and a Local Service with a ready endpoint
/// on 20 of them.
fn cluster_state(not_ready: &[usize]) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..NODES {
        let ready = if not_ready.contains(&i) {
            "False"
        } else {
            "True"
        };
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Node\n  metadata: {{name: node-{i}}}\n  status:\n    addresses: [{{type: InternalIP, address: {}}}]\n    conditions: [{{type: Ready, status: \"{ready}\"}}]\n",
            node_v4(i)
        );
    }
    y.push_str(
        "- apiVersion: v1\n  kind: Service\n  metadata: {name: web, namespace: shop}\n  spec:\n    type: ClusterIP\n    clusterIP: 198.19.38.11\n    externalIPs: [198.19.48.10]\n    externalTrafficPolicy: Local\n",
    );
    let endpoints: Vec<String> = (0..20)
        .map(|i| {
            format!(
                "{{addresses: [10.244.{i}.9], conditions: {{ready: true}}, nodeName: node-{i}}}"
            )
        })
        .collect();
    let _ = write!(
        y,
        "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n  addressType: IPv4\n  endpoints: [{}]\n",
        endpoints.join(", ")
    );
    y
}

/// herald's plan as JSON routes: prefix -> (next hops, the range it is a part of).
fn plan_parts(herald: &LabHerald) -> BTreeMap<IpNet, (BTreeSet<IpAddr>, Option<IpNet>)> {
    let json: serde_json::Value =
        serde_json::from_str(&herald.ctl(&["routes", "-o", "json"])).expect("routes as JSON");
    json["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            let hops = r["nextHops"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["address"].as_str().unwrap().parse().unwrap())
                .collect();
            let part_of = r["partOf"].as_str().map(|p| p.parse().unwrap());
            (
                r["prefix"].as_str().unwrap().parse().unwrap(),
                (hops, part_of),
            )
        })
        .collect()
}

#[test]
fn host1_holds_exactly_the_plan_and_every_node_carries_every_range() {
    let v6 = |i: usize| Ipv6Addr::new(0xfd00, 0x198, 0x19, 1, 0, 0, 0, 1 + i as u16);
    let nodes = (0..NODES)
        .map(|i| LabNode::new(&format!("node-{i}"), node_v4(i), v6(i)))
        .collect();
    let lab = Lab::start_with(LabOptions {
        nodes,
        ..LabOptions::default()
    })
    .expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster-state.yaml");
    write_atomically(&state, &cluster_state(&[])).unwrap();
    let herald = LabHerald::start(
        &lab,
        dir.path(),
        &state,
        RANGES,
        &format!("ecmp: {{maxPaths: {MAX_PATHS}}}\n"),
    )
    .unwrap();

    // host1's kernel table equals the plan, route by route: nothing truncated by BIRD.
    let planned = wait_until(Duration::from_secs(30), "a plan", || {
        herald.planned_table().filter(|t| t.len() > 4)
    })
    .expect("plan");
    let installed = herald.wait_table(
        &lab,
        &planned,
        Duration::from_secs(30),
        "host1 holds the plan",
    );
    eprintln!(
        "host1 holds the plan's {} routes {installed:?} after herald's first plan",
        planned.len()
    );
    assert!(
        planned.values().all(|hops| hops.len() <= MAX_PATHS),
        "{planned:?}"
    );

    // Every range in parts of 16 next hops, the union of which is all 40 nodes.
    let parts = plan_parts(&herald);
    let all: BTreeSet<IpAddr> = (0..NODES).map(|i| IpAddr::V4(node_v4(i))).collect();
    for range in ["198.19.32.0/20", "198.19.48.0/20"] {
        let range: IpNet = range.parse().unwrap();
        let of_range: Vec<&BTreeSet<IpAddr>> = parts
            .values()
            .filter(|(_, of)| *of == Some(range))
            .map(|(hops, _)| hops)
            .collect();
        assert_eq!(
            of_range.len(),
            4,
            "{range}: 4 parts of 16 for 40 nodes: {parts:?}"
        );
        assert!(of_range.iter().all(|hops| hops.len() == MAX_PATHS));
        let union: BTreeSet<IpAddr> = of_range
            .iter()
            .flat_map(|hops| hops.iter().copied())
            .collect();
        assert_eq!(
            union, all,
            "{range}: the parts' next hops are not all 40 nodes"
        );
        assert_eq!(
            parts[&range].0.len(),
            MAX_PATHS,
            "the aggregate from 16 nodes"
        );
    }
    // The Service's 20 endpoint nodes: its host routes from 16 of them.
    let host: IpNet = "198.19.38.11/32".parse().unwrap();
    assert_eq!(parts[&host].0.len(), MAX_PATHS);
    let explain = herald.ctl(&["explain", "shop/web"]);
    assert!(
        explain.contains("of 20 endpoint nodes: ecmp.maxPaths 16); left out: "),
        "{explain}"
    );
    let nodes = herald.ctl(&["nodes", "node-0"]);
    assert!(
        nodes.contains("node node-0 (198.19.1.1), eligible")
            && nodes.contains("part of 198.19.32.0/20"),
        "{nodes}"
    );

    // A node leaves (NotReady): host1 changes only the routes that node was in, and still holds
    // exactly the plan.
    let gone = IpAddr::V4(node_v4(7));
    let before: RouteTable = planned;
    write_atomically(&state, &cluster_state(&[7])).unwrap();
    let after = wait_until(Duration::from_secs(30), "the plan without node-7", || {
        herald
            .planned_table()
            .filter(|t| t.values().all(|hops| !hops.contains(&gone)))
    })
    .expect("plan without node-7");
    herald.wait_table(
        &lab,
        &after,
        Duration::from_secs(30),
        "host1 follows node-7 leaving",
    );
    let changed: BTreeSet<&IpNet> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    let had_it: BTreeSet<&IpNet> = before
        .iter()
        .filter(|(_, hops)| hops.contains(&gone))
        .map(|(p, _)| p)
        .collect();
    assert!(!had_it.is_empty());
    assert!(
        changed.is_subset(&had_it),
        "routes changed that node-7 was not in: {:?}",
        changed.difference(&had_it).collect::<Vec<_>>()
    );
    for prefix in &changed {
        // In each: node-7 out, at most one node in its place.
        let (b, a) = (&before[*prefix], &after[*prefix]);
        assert!(
            b.difference(a).count() == 1 && a.difference(b).count() <= 1,
            "{prefix}: {b:?} -> {a:?}"
        );
    }
    eprintln!(
        "node-7 left: {} of {} routes changed on host1, each by node-7 and its replacement",
        changed.len(),
        before.len()
    );
}
