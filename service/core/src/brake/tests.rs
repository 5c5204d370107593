//! The withdrawal brake through the guard, fed by the incremental planner as `herald run` feeds it:
//! cluster states in, guarded plans out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::brake::BrakeConfig;
use crate::cluster::{
    ClusterState, Endpoint, EndpointSlice, Node, ObjectKey, Service, TrafficPolicy,
};
use crate::config::Config;
use crate::guard::{Guard, GuardConfig, Guarded};
use crate::plan::Plan;
use crate::planner::EXCLUDE_LABEL;
use crate::planner::incremental::IncrementalPlanner;

const RANGE: &str = "198.19.32.0/20";
/// The Local Service's cluster IP: a host route from the nodes with its endpoints.
const LOCAL_IP: &str = "198.19.32.10/32";

fn node(i: usize) -> Node {
    Node {
        name: format!("n{i:02}"),
        labels: BTreeMap::new(),
        ready: true,
        internal_ips: vec![format!("10.0.0.{}", i + 1).parse().unwrap()],
    }
}

/// `nodes` nodes, a range, and a Local Service with endpoints on `endpoint_nodes`.
fn cluster(nodes: usize, endpoint_nodes: &[usize]) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 0..nodes {
        state.insert_node(node(i));
    }
    state.insert_service(Service {
        key: ObjectKey::new("ns", "web"),
        type_: crate::cluster::ServiceType::ClusterIP,
        cluster_ips: vec!["198.19.32.10".to_string()],
        external_traffic_policy: TrafficPolicy::Local,
        ..Default::default()
    });
    state.insert_endpoint_slice(slice(endpoint_nodes));
    state
}

fn slice(endpoint_nodes: &[usize]) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new("ns", "web-abcde"),
        service_name: Some("web".to_string()),
        endpoints: endpoint_nodes
            .iter()
            .map(|i| Endpoint {
                node_name: Some(format!("n{i:02}")),
                ready: Some(true),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// herald's planner thread in small: the incremental planner, fed batches, and the guard.
struct Herald {
    state: ClusterState,
    planner: IncrementalPlanner,
    guard: Guard,
    t0: Instant,
    last: Option<Guarded>,
}

impl Herald {
    fn new(state: ClusterState, brake: Option<BrakeConfig>, hold_down: Duration) -> Herald {
        let config = Config::parse(&format!("serviceClusterIPs: [{{cidr: {RANGE}}}]\n")).unwrap();
        let planner = IncrementalPlanner::new(state.clone(), config);
        let mut herald = Herald {
            state,
            planner,
            guard: Guard::new(GuardConfig {
                hold_down,
                max_routes: None,
                brake,
            }),
            t0: Instant::now(),
            last: None,
        };
        herald.step(0, |_| {});
        herald
    }

    /// Changes the cluster at `ms` and plans it, as one batch.
    fn step(&mut self, ms: u64, change: impl FnOnce(&mut ClusterState)) -> &Guarded {
        let before = self.state.clone();
        change(&mut self.state);
        self.planner.apply_batch(before.changes_to(&self.state));
        let guarded = self
            .guard
            .apply(self.planner.plan(), self.t0 + Duration::from_millis(ms));
        self.last = Some(guarded);
        self.last.as_ref().unwrap()
    }

    fn plan(&self) -> &Plan {
        &self.last.as_ref().unwrap().plan
    }

    fn hops(&self, prefix: &str) -> Vec<String> {
        let prefix: ipnet::IpNet = prefix.parse().unwrap();
        self.plan()
            .routes
            .get(&prefix)
            .map(|r| r.next_hops.iter().map(|h| h.node.clone()).collect())
            .unwrap_or_default()
    }

    fn engaged(&self) -> bool {
        self.last.as_ref().unwrap().brake.is_some()
    }
}

/// Every path of a plan: prefix -> next hops' nodes.
fn paths(plan: &Plan) -> BTreeMap<String, Vec<String>> {
    plan.routes
        .iter()
        .map(|(p, r)| {
            (
                p.to_string(),
                r.next_hops.iter().map(|h| h.node.clone()).collect(),
            )
        })
        .collect()
}

fn set_ready(state: &mut ClusterState, nodes: impl IntoIterator<Item = usize>, ready: bool) {
    for i in nodes {
        let name = format!("n{i:02}");
        let mut node = Node::clone(&state.nodes[&name]);
        node.ready = ready;
        state.insert_node(node);
    }
}

fn names(nodes: impl IntoIterator<Item = usize>) -> Vec<String> {
    nodes.into_iter().map(|i| format!("n{i:02}")).collect()
}

fn brake() -> Option<BrakeConfig> {
    Some(BrakeConfig::default())
}

#[test]
fn sixty_percent_not_ready_at_once_keeps_the_plan_and_raises_the_alarm_and_their_return_clears_it_without_a_flap()
 {
    // Hold-down on: a path the brake kept must not be taken for a flapping one when it comes back.
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::from_secs(60));
    let good = herald.plan().clone();
    assert_eq!(herald.hops(RANGE), names(0..10));
    assert_eq!(herald.hops(LOCAL_IP), names([0, 1, 7]));
    assert!(!herald.engaged());

    let guarded = herald.step(1_000, |s| set_ready(s, 0..6, false));
    let status = guarded.brake.clone().expect("the brake engages");
    assert_eq!(status.nodes, names(0..6).into_iter().collect());
    assert!(
        status.reason.contains("6 of the pool's 10 eligible nodes"),
        "{}",
        status.reason
    );
    assert_eq!(paths(herald.plan()), paths(&good), "every route as it was");
    assert!(
        herald
            .plan()
            .notes
            .iter()
            .any(|n| n.starts_with("withdrawal brake engaged")),
        "{:?}",
        herald.plan().notes
    );
    // The nodes' table says the truth: the planner sees them not Ready.
    assert_eq!(
        herald.plan().nodes["n00"].ineligible.as_deref(),
        Some(crate::planner::NOT_READY)
    );

    // Kubernetes then marks their pods' endpoints not ready: still held.
    herald.step(2_000, |s| {
        s.insert_endpoint_slice(EndpointSlice {
            endpoints: slice(&[0, 1, 7])
                .endpoints
                .into_iter()
                .map(|mut e| {
                    e.ready = Some(e.node_name.as_deref() == Some("n07"));
                    e
                })
                .collect(),
            ..slice(&[])
        })
    });
    assert_eq!(paths(herald.plan()), paths(&good));

    // Back: the alarm clears, and nothing was withdrawn at any step (no flap, no hold-down).
    herald.step(30_000, |s| {
        set_ready(s, 0..6, true);
        s.insert_endpoint_slice(slice(&[0, 1, 7]));
    });
    assert!(!herald.engaged(), "released once they are back");
    assert_eq!(
        herald.plan().routes,
        good.routes,
        "the plan before, reasons and all"
    );
    assert!(herald.plan().notes.is_empty(), "{:?}", herald.plan().notes);
    let release = herald
        .guard
        .last_brake_release()
        .expect("a release is recorded");
    assert!(release.why.contains("recovered"), "{}", release.why);
}

#[test]
fn ten_percent_not_ready_is_withdrawn_as_without_the_brake() {
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::ZERO);
    let mut without = Herald::new(cluster(10, &[0, 1, 7]), None, Duration::ZERO);
    herald.step(1_000, |s| set_ready(s, [0], false));
    without.step(1_000, |s| set_ready(s, [0], false));
    assert!(!herald.engaged());
    assert_eq!(herald.hops(RANGE), names(1..10));
    assert_eq!(herald.hops(LOCAL_IP), names([1, 7]));
    assert_eq!(herald.plan(), without.plan());
}

#[test]
fn the_exclusion_label_on_half_the_pool_and_more_is_withdrawn() {
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::ZERO);
    herald.step(1_000, |s| {
        for i in 0..6 {
            let mut node = node(i);
            node.labels
                .insert(EXCLUDE_LABEL.to_string(), "true".to_string());
            s.insert_node(node);
        }
    });
    assert!(!herald.engaged(), "an intended removal is not held");
    assert_eq!(herald.hops(RANGE), names(6..10));
    assert_eq!(herald.hops(LOCAL_IP), names([7]));
}

#[test]
fn a_node_selector_change_is_not_held() {
    // The pool's nodeSelector no longer picks most nodes (they were relabelled away).
    let config = Config::parse(&format!(
        "nodeSelector: pool=a\nserviceClusterIPs: [{{cidr: {RANGE}}}]\n"
    ))
    .unwrap();
    let mut state = cluster(10, &[0, 1, 7]);
    for i in 0..10 {
        let mut n = node(i);
        n.labels.insert("pool".to_string(), "a".to_string());
        state.insert_node(n);
    }
    let mut planner = IncrementalPlanner::new(state.clone(), config);
    let mut guard = Guard::new(GuardConfig {
        brake: brake(),
        ..Default::default()
    });
    let t0 = Instant::now();
    guard.apply(planner.plan(), t0);
    let before = state.clone();
    for i in 0..8 {
        state.insert_node(node(i));
    }
    planner.apply_batch(before.changes_to(&state));
    let guarded = guard.apply(planner.plan(), t0 + Duration::from_secs(1));
    assert!(guarded.brake.is_none());
    let range = guarded
        .plan
        .routes
        .get(&RANGE.parse::<ipnet::IpNet>().unwrap())
        .unwrap();
    assert_eq!(
        range
            .next_hops
            .iter()
            .map(|h| h.node.clone())
            .collect::<Vec<_>>(),
        names([8, 9])
    );
}

#[test]
fn nodes_deleted_one_at_a_time_are_withdrawn_each_at_once() {
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::ZERO);
    // One a minute, longer apart than the window: each a loss of its own.
    for i in 0..6u64 {
        herald.step(60_000 * (i + 1), |s| {
            s.nodes.remove(&format!("n{i:02}"));
        });
        assert!(!herald.engaged(), "deletion {i}");
        assert_eq!(herald.hops(RANGE), names(i as usize + 1..10));
    }
}

#[test]
fn a_wave_in_several_batches_puts_back_the_first_ones_too() {
    let mut herald = Herald::new(cluster(10, &[0, 7, 8]), brake(), Duration::from_secs(60));
    let good = herald.plan().clone();
    // The first nodes of the wave: too few to tell, withdrawn at once.
    herald.step(1_000, |s| set_ready(s, 0..3, false));
    assert!(!herald.engaged());
    assert_eq!(herald.hops(RANGE), names(3..10));
    // Seconds later the wave is big enough: every node of it is announced again, the first ones
    // too (and hold-down does not hold them back as flapping).
    herald.step(4_000, |s| set_ready(s, 3..7, false));
    assert!(herald.engaged());
    assert_eq!(paths(herald.plan()), paths(&good));
    assert_eq!(
        herald
            .last
            .as_ref()
            .unwrap()
            .brake
            .as_ref()
            .unwrap()
            .nodes
            .len(),
        7
    );
}

#[test]
fn while_held_the_rest_of_the_plan_follows_the_cluster() {
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::ZERO);
    herald.step(1_000, |s| set_ready(s, 0..6, false));
    assert!(herald.engaged());
    // A new endpoint on a healthy node gets its next hop; the held ones stay.
    herald.step(2_000, |s| s.insert_endpoint_slice(slice(&[0, 1, 7, 8])));
    assert_eq!(herald.hops(LOCAL_IP), names([0, 1, 7, 8]));
    // A healthy node's endpoint goes: withdrawn, as usual.
    herald.step(3_000, |s| s.insert_endpoint_slice(slice(&[0, 1, 8])));
    assert_eq!(herald.hops(LOCAL_IP), names([0, 1, 8]));
    // A Service deleted while held is withdrawn: it is not a node's loss.
    herald.step(4_000, |s| {
        s.services.remove(&ObjectKey::new("ns", "web"));
    });
    assert!(
        herald.hops(LOCAL_IP).is_empty(),
        "{:?}",
        herald.hops(LOCAL_IP)
    );
}

#[test]
fn most_of_a_prefixs_next_hops_lost_at_once_are_held_even_in_a_small_wave() {
    // 2 of 20 nodes (10%, no pool-wide wave), but they are 2 of the 3 endpoint nodes of the Service.
    let mut herald = Herald::new(cluster(20, &[0, 1, 7]), brake(), Duration::ZERO);
    herald.step(1_000, |s| set_ready(s, [0, 1], false));
    assert!(herald.engaged());
    assert_eq!(
        herald.hops(LOCAL_IP),
        names([0, 1, 7]),
        "the prefix keeps its next hops"
    );
    assert_eq!(
        herald.hops(RANGE),
        names(2..20),
        "the range, which lost 10%, is withdrawn from them"
    );
}

#[test]
fn an_operator_release_withdraws_what_is_held_and_the_same_wave_does_not_engage_again() {
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::ZERO);
    herald.step(1_000, |s| set_ready(s, 0..6, false));
    assert!(herald.engaged());
    assert!(herald.guard.release_brake("an operator"));
    herald.step(2_000, |_| {});
    assert!(!herald.engaged());
    assert_eq!(herald.hops(RANGE), names(6..10));
    assert_eq!(herald.hops(LOCAL_IP), names([7]));
    assert!(
        herald
            .guard
            .last_brake_release()
            .unwrap()
            .why
            .contains("operator")
    );
    // Later changes do not bring the released wave back.
    herald.step(3_000, |s| s.insert_endpoint_slice(slice(&[0, 1, 7, 8])));
    assert!(!herald.engaged());
    assert_eq!(herald.hops(LOCAL_IP), names([7, 8]));
    // Nothing held: the release says so.
    assert!(!herald.guard.release_brake("an operator"));
}

#[test]
fn the_brake_lets_go_after_max_hold_and_wakes_the_caller_for_it() {
    let config = BrakeConfig {
        max_hold: Duration::from_secs(600),
        ..BrakeConfig::default()
    };
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), Some(config), Duration::ZERO);
    let t0 = herald.t0;
    let guarded = herald.step(1_000, |s| set_ready(s, 0..6, false));
    assert!(guarded.brake.is_some());
    assert_eq!(guarded.wake_at, Some(t0 + Duration::from_millis(601_000)));
    herald.step(600_999, |_| {});
    assert!(herald.engaged());
    herald.step(601_000, |_| {});
    assert!(!herald.engaged());
    assert_eq!(herald.hops(RANGE), names(6..10));
    assert!(
        herald
            .guard
            .last_brake_release()
            .unwrap()
            .why
            .contains("maxHold")
    );
}

#[test]
fn recovery_below_the_threshold_releases_and_withdraws_the_rest() {
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::ZERO);
    herald.step(1_000, |s| set_ready(s, 0..6, false));
    // Most come back: what is left (n00, one node) is a single failure, withdrawn.
    herald.step(20_000, |s| set_ready(s, 1..6, true));
    assert!(!herald.engaged());
    assert_eq!(herald.hops(RANGE), names(1..10));
    assert_eq!(herald.hops(LOCAL_IP), names([1, 7]));
}

#[test]
fn all_nodes_not_ready_in_a_pool_of_three_keep_every_route() {
    let mut herald = Herald::new(cluster(3, &[0, 1, 2]), brake(), Duration::ZERO);
    let good = herald.plan().clone();
    herald.step(1_000, |s| set_ready(s, 0..3, false));
    assert!(herald.engaged());
    assert_eq!(paths(herald.plan()), paths(&good));
    // One node failing in the same pool: withdrawn (one is never a wave).
    let mut herald = Herald::new(cluster(3, &[0, 1, 2]), brake(), Duration::ZERO);
    herald.step(1_000, |s| set_ready(s, [1], false));
    assert!(!herald.engaged());
    assert_eq!(herald.hops(RANGE), names([0, 2]));
}

#[test]
fn a_held_node_excluded_meanwhile_is_let_go() {
    let mut herald = Herald::new(cluster(10, &[0, 1, 7]), brake(), Duration::ZERO);
    herald.step(1_000, |s| set_ready(s, 0..6, false));
    assert!(herald.engaged());
    // An operator excludes one of the lost nodes: intended, not held any more.
    herald.step(2_000, |s| {
        for i in 0..1 {
            let mut node = Node::clone(&s.nodes[&format!("n{i:02}")]);
            node.labels
                .insert(EXCLUDE_LABEL.to_string(), "true".to_string());
            s.insert_node(node);
        }
    });
    assert!(herald.engaged());
    let held: Vec<String> = herald
        .last
        .as_ref()
        .unwrap()
        .brake
        .as_ref()
        .unwrap()
        .nodes
        .iter()
        .cloned()
        .collect();
    assert_eq!(held, names(1..6));
    assert_eq!(herald.hops(RANGE), names(1..10));
}
