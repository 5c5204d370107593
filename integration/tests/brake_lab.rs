//! The withdrawal brake against a real router: herald in the lab's pool namespace, gobgpd, BIRD 2
//! on host1. A sick control plane (every node `Ready: Unknown`) must not empty host1's table; one
//! node really failing must still leave every ECMP set at once.

use std::time::{Duration, Instant};

use herald_integration::lab::Lab;
use herald_integration::lab_herald::{
    ALL_NODES, Sampler, lab_final_table, lab_state, start_with_state, table, withdrawals_received,
    write_atomically,
};
use herald_integration::process::wait_until;

/// The lab's state with these nodes' Ready condition as the node lifecycle controller sets it when
/// it no longer hears from the kubelets.
fn with_unknown(state: &str, nodes: &[&str]) -> String {
    let mut out = state.to_string();
    for node in nodes {
        let at = out
            .find(&format!("    name: {node}\n"))
            .unwrap_or_else(|| panic!("node {node} in the lab's state"));
        let (head, tail) = out.split_at(at);
        let tail = tail.replacen(
            "      status: \"True\"\n      reason: KubeletReady",
            "      status: \"Unknown\"\n      reason: NodeStatusUnknown",
            1,
        );
        out = format!("{head}{tail}");
    }
    assert_ne!(out, state);
    out
}

const NODES: [&str; 3] = ["control", "node1", "node2"];

#[test]
fn every_node_unknown_keeps_every_route_on_host1_and_the_status_shows_the_brake() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (herald, state) = start_with_state(&lab, 0, dir.path(), &lab_state(), "").unwrap();
    let expected = lab_final_table("198.19.0.2");
    herald.wait_table(&lab, &expected, Duration::from_secs(15), "initial routes");
    let status = herald.ctl(&["status"]);
    assert!(
        status.contains("brake:   armed, holding nothing"),
        "{status}"
    );
    let withdrawals = withdrawals_received(&lab);
    let sampler = Sampler::start(lab.host1_ns().to_string(), expected.clone());

    // The control plane loses the kubelets: every node Unknown, and Kubernetes marks the pods'
    // endpoints not ready too.
    let sick =
        with_unknown(&lab_state(), &NODES).replace("      ready: true\n", "      ready: false\n");
    write_atomically(&state, &sick).unwrap();
    let status = herald.wait_status(
        "brake:   ENGAGED",
        Duration::from_secs(10),
        "the brake engaged",
    );
    assert!(
        status.contains("3 of the pool's 3 eligible nodes lost"),
        "{status}"
    );
    assert!(
        status.contains("of 3 node(s): control, node1, node2"),
        "{status}"
    );
    assert!(
        status.contains("alarm:   withdrawal brake engaged"),
        "{status}"
    );
    let brake: serde_json::Value =
        serde_json::from_str(&herald.ctl(&["brake", "-o", "json"])).unwrap();
    assert_eq!(brake["engaged"], true, "{brake}");
    assert_eq!(brake["paths"], "8", "{brake}"); // uint64 as a string in proto3 JSON
    // The nodes' own view is the truth: not Ready.
    assert!(herald.ctl(&["nodes"]).contains("node not Ready"));
    // A while later, host1 still has every route.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        herald
            .herald
            .log_text()
            .contains("withdrawal brake engaged"),
        "{}",
        herald.herald.log_text()
    );

    // The control plane is back: the alarm clears, and host1 never saw a thing.
    write_atomically(&state, &lab_state()).unwrap();
    let status = herald.wait_status(
        "brake:   armed, holding nothing",
        Duration::from_secs(10),
        "the brake released",
    );
    assert!(status.contains("the cluster recovered"), "{status}");
    assert!(!status.contains("alarm:"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    let (samples, wrong) = sampler.finish();
    assert!(samples > 20, "{samples} samples");
    assert!(
        wrong.is_empty(),
        "host1 changed during the brake: {} of {samples} samples, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    assert_eq!(
        withdrawals_received(&lab),
        withdrawals,
        "BIRD received withdrawals"
    );

    // Sick again, and this time an operator decides the nodes are gone: released, withdrawn.
    write_atomically(&state, &sick).unwrap();
    wait_until(Duration::from_secs(10), "the brake engaged again", || {
        herald
            .ctl(&["status"])
            .contains("(engagement 2)")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.ctl(&["status"])));
    let released = herald.ctl(&["brake", "release"]);
    assert!(released.contains("released: plan generation"), "{released}");
    let empty = table(&[]);
    let took = herald.wait_table(
        &lab,
        &empty,
        Duration::from_secs(10),
        "every route withdrawn after the release",
    );
    eprintln!(
        "host1 kept every route through the brake ({samples} samples); withdrawn {took:?} after `heraldctl brake release`"
    );
    let status = herald.ctl(&["status"]);
    assert!(status.contains("released by an operator"), "{status}");
}

#[test]
fn a_single_node_failure_still_leaves_the_ecmp_sets() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (herald, state) = start_with_state(&lab, 0, dir.path(), &lab_state(), "").unwrap();
    herald.wait_table(
        &lab,
        &lab_final_table("198.19.0.2"),
        Duration::from_secs(15),
        "initial routes",
    );
    // node2 (no endpoint of the customer) fails on its own.
    let started = Instant::now();
    write_atomically(&state, &with_unknown(&lab_state(), &["node2"])).unwrap();
    let without_node2 = table(&[
        ("198.19.32.0/20", &ALL_NODES[..2]),
        ("198.19.38.11/32", &["198.19.0.2"]),
        ("198.19.48.0/20", &ALL_NODES[..2]),
        ("198.19.48.10/32", &["198.19.0.2"]),
    ]);
    herald.wait_table(
        &lab,
        &without_node2,
        Duration::from_secs(5),
        "node2 out of every ECMP set",
    );
    eprintln!("node2's failure reached host1 in {:?}", started.elapsed());
    let status = herald.ctl(&["status"]);
    assert!(
        status.contains("brake:   armed, holding nothing"),
        "{status}"
    );
}
