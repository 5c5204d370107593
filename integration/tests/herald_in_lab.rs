//! The seed lab for real: herald + gobgpd in the pool namespace, BIRD 2 as host1, and host1's kernel
//! routing table as the judge. Needs root; the test makes its own namespaces and removes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_integration::lab::Lab;
use herald_integration::lab_herald::{
    ALL_NODES, LAB_RANGES, LabHerald, lab_final_table, table, write_atomically,
};
use herald_integration::process::{repo_root, wait_until};

const ALL: &[&str] = ALL_NODES;

fn write_state(path: &Path, transform: impl Fn(String) -> String) {
    let lab_state =
        std::fs::read_to_string(repo_root().join("examples/yaobank/cluster-state.yaml")).unwrap();
    write_atomically(path, &transform(lab_state)).unwrap();
}

#[test]
fn host1_learns_the_lab_routes_and_follows_the_cluster() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("cluster-state.yaml");
    write_state(&state, |s| s);
    let herald = LabHerald::start(&lab, dir.path(), &state, LAB_RANGES, "").unwrap();

    // The lab's final `ip route` on host1: both /20s over the three nodes, the /32s via node1.
    herald.wait_table(
        &lab,
        &lab_final_table("198.19.0.2"),
        Duration::from_secs(15),
        "initial routes",
    );
    let text = lab.host1_routes_v4().unwrap();
    for line in [
        "198.19.32.0/20 proto bird",
        "nexthop via 198.19.0.1 dev eth0 weight 1",
        "nexthop via 198.19.0.2 dev eth0 weight 1",
        "nexthop via 198.19.0.3 dev eth0 weight 1",
        "198.19.38.11 via 198.19.0.2 dev eth0 proto bird",
        "198.19.48.0/20 proto bird",
        "198.19.48.10 via 198.19.0.2 dev eth0 proto bird",
    ] {
        assert!(
            text.contains(line),
            "host1's ip route lacks `{line}`:\n{text}"
        );
    }

    // herald knows the routes are in gobgpd's RIB (it books them when gobgpd answers its call,
    // which may come after gobgpd has passed them on to host1).
    let (routes, status) = wait_until(Duration::from_secs(5), "herald's books", || {
        let routes = herald.ctl(&["routes"]);
        let status = herald.ctl(&["status"]);
        (status.contains("8 paths applied, 0 pending")
            && routes.lines().filter(|l| l.contains(" yes ")).count() == 4)
            .then_some((routes, status))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            herald.ctl(&["routes"]),
            herald.ctl(&["status"])
        )
    });
    assert!(routes.contains("IN RIB"), "{routes}");
    assert!(status.contains("(reachable)"), "{status}");

    // The customer pod moves to node2: host1's /32s follow within 2 s.
    write_state(&state, |s| s.replace("nodeName: node1", "nodeName: node2"));
    let moved = herald.wait_table(
        &lab,
        &lab_final_table("198.19.0.3"),
        Duration::from_secs(2),
        "pod moved to node2",
    );
    eprintln!("pod move reached host1 in {moved:?}");

    // Back to externalTrafficPolicy: Cluster: the host routes go, the ranges stay.
    write_state(&state, |s| {
        s.replace("nodeName: node1", "nodeName: node2").replace(
            "externalTrafficPolicy: Local",
            "externalTrafficPolicy: Cluster",
        )
    });
    let ranges_only = table(&[("198.19.32.0/20", ALL), ("198.19.48.0/20", ALL)]);
    let cluster = herald.wait_table(
        &lab,
        &ranges_only,
        Duration::from_secs(2),
        "policy back to Cluster",
    );
    eprintln!("policy change reached host1 in {cluster:?}");

    // A node that is not Ready leaves every ECMP set.
    write_state(&state, |s| {
        s.replace(
            "externalTrafficPolicy: Local",
            "externalTrafficPolicy: Cluster",
        )
        .replacen(
            "status: \"True\"\n      reason: KubeletReady",
            "status: \"False\"\n      reason: KubeletNotReady",
            1,
        )
    });
    let without_control = table(&[("198.19.32.0/20", &ALL[1..]), ("198.19.48.0/20", &ALL[1..])]);
    herald.wait_table(
        &lab,
        &without_control,
        Duration::from_secs(2),
        "control NotReady",
    );
}

/// IPv6: a dual-stack Local Service gets a /128 from its endpoint's node, over MP_REACH_NLRI.
#[test]
fn ipv6_host_routes_reach_host1() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster-state.yaml");
    write_state(&state, |s| {
        s.replace("      type: InternalIP\n", "      type: InternalIP\n    - address: fd00:198:19::NODE\n      type: InternalIP\n")
            .replace("198.19.0.1\n      type: InternalIP\n    - address: fd00:198:19::NODE", "198.19.0.1\n      type: InternalIP\n    - address: fd00:198:19::1")
            .replace("198.19.0.2\n      type: InternalIP\n    - address: fd00:198:19::NODE", "198.19.0.2\n      type: InternalIP\n    - address: fd00:198:19::2")
            .replace("198.19.0.3\n      type: InternalIP\n    - address: fd00:198:19::NODE", "198.19.0.3\n      type: InternalIP\n    - address: fd00:198:19::3")
            .replace("    - 198.19.48.10\n", "    - 198.19.48.10\n    - fd00:48::10\n")
            // The customer's IPv6 endpoint, in a slice of its own family as Kubernetes makes it.
            .replace(
                "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata:\n    name: customer-x7k2p\n",
                "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata:\n    name: customer-v6\n    namespace: yaobank\n    \
                 labels: {kubernetes.io/service-name: customer}\n  addressType: IPv6\n  \
                 endpoints: [{addresses: ['fd00:244::10'], conditions: {ready: true}, nodeName: node1}]\n\
                 - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata:\n    name: customer-x7k2p\n",
            )
    });
    let ranges = "serviceClusterIPs: [{cidr: 198.19.32.0/20}]\nserviceExternalIPs: [{cidr: 198.19.48.0/20}, {cidr: 'fd00:48::/64'}]\n";
    let herald = LabHerald::start(&lab, dir.path(), &state, ranges, "").unwrap();
    let expected = "fd00:48::10 via fd00:198:19::2 dev eth0 proto bird";
    let found = wait_until(
        Duration::from_secs(15),
        "the IPv6 host route on host1",
        || {
            lab.host1_routes_v6()
                .ok()
                .filter(|t| t.contains(expected) && t.contains("fd00:48::/64"))
        },
    );
    assert!(
        found.is_ok(),
        "{:?}\n{}\n{}",
        lab.host1_routes_v6(),
        lab.diagnostics(),
        herald.herald.log_text()
    );
    let v6 = found.unwrap();
    for node in ["fd00:198:19::1", "fd00:198:19::2", "fd00:198:19::3"] {
        assert!(
            v6.contains(&format!("nexthop via {node} dev eth0 weight 1")),
            "{v6}"
        );
    }
}
