//! The seed lab, stage by stage, read from the example files a user runs `herald plan` on (the
//! planner's rules are tested on small clusters in herald-core; this is the reader and the planner
//! together).

use herald_core::config::Config;
use herald_core::planner::plan;
use herald_k8s::parse_manifest;
use herald_testkit::tables::{ALL3, expect, routes};

/// The seed lab, stage by stage, from the example files a user runs `herald plan` on.
#[test]
fn seed_lab_stages() {
    let lab = Config::parse(include_str!("../../../examples/yaobank/herald.yaml")).unwrap();
    let read = |text: &str| parse_manifest(text).unwrap();
    let stage1 = plan(
        &read(include_str!(
            "../../../examples/yaobank/stage1-cluster-range.yaml"
        )),
        &lab,
    );
    assert_eq!(
        routes(&stage1),
        expect(&[("198.19.32.0/20", ALL3), ("198.19.48.0/20", ALL3)])
    );
    let stage2 = plan(
        &read(include_str!(
            "../../../examples/yaobank/stage2-local-policy.yaml"
        )),
        &lab,
    );
    assert_eq!(
        routes(&stage2),
        expect(&[
            ("198.19.32.0/20", ALL3),
            ("198.19.38.11/32", &["node1=198.19.0.2"]),
            ("198.19.48.0/20", ALL3)
        ])
    );
    let stage3 = plan(
        &read(include_str!("../../../examples/yaobank/cluster-state.yaml")),
        &lab,
    );
    assert_eq!(
        routes(&stage3),
        expect(&[
            ("198.19.32.0/20", ALL3),
            ("198.19.38.11/32", &["node1=198.19.0.2"]),
            ("198.19.48.0/20", ALL3),
            ("198.19.48.10/32", &["node1=198.19.0.2"]),
        ])
    );
}
