//! The planner's rules, as tables of small clusters, plus properties over generated ones.

use std::collections::BTreeMap;

use herald_core::cluster::{
    AddressType, ClusterState, Endpoint, EndpointSlice, Node, ObjectKey, Service, ServiceType,
    TrafficPolicy,
};
use herald_core::config::Config;
use herald_core::plan::{IpOutcome, Plan, Route, RouteKind};
use herald_core::planner::*;
use herald_testkit::scale;
use herald_testkit::tables::{ALL3, expect, routes};
use ipnet::IpNet;

fn node(name: &str, ips: &[&str]) -> Node {
    Node {
        name: name.to_string(),
        labels: BTreeMap::new(),
        ready: true,
        internal_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
    }
}

fn labelled(mut n: Node, key: &str, value: &str) -> Node {
    n.labels.insert(key.to_string(), value.to_string());
    n
}

fn not_ready(mut n: Node) -> Node {
    n.ready = false;
    n
}

fn svc(name: &str, cluster: &[&str], local: bool) -> Service {
    Service {
        key: ObjectKey::new("ns", name),
        type_: ServiceType::ClusterIP,
        cluster_ips: cluster.iter().map(|s| s.to_string()).collect(),
        external_traffic_policy: if local {
            TrafficPolicy::Local
        } else {
            TrafficPolicy::Cluster
        },
        ..Default::default()
    }
}

fn with_external(mut s: Service, ips: &[&str]) -> Service {
    s.external_ips = ips.iter().map(|s| s.to_string()).collect();
    s
}

/// internalTrafficPolicy: Local.
fn itp_local(mut s: Service) -> Service {
    s.internal_traffic_policy = TrafficPolicy::Local;
    s
}

fn with_lb(mut s: Service, ips: &[&str]) -> Service {
    s.type_ = ServiceType::LoadBalancer;
    s.load_balancer_ips = ips.iter().map(|s| s.to_string()).collect();
    s
}

/// An endpoint: (node, ready, serving, terminating).
type Ep = (&'static str, Option<bool>, Option<bool>, Option<bool>);

const READY: fn(&'static str) -> Ep = |n| (n, Some(true), Some(true), Some(false));
const UNSET: fn(&'static str) -> Ep = |n| (n, None, None, None);
const NOT_READY: fn(&'static str) -> Ep = |n| (n, Some(false), Some(false), Some(false));
const DRAINING: fn(&'static str) -> Ep = |n| (n, Some(false), Some(true), Some(true));

/// An IPv4 EndpointSlice.
fn slice(service: &str, suffix: &str, endpoints: &[Ep]) -> EndpointSlice {
    typed_slice(AddressType::Ipv4, service, suffix, endpoints)
}

fn v6_slice(service: &str, suffix: &str, endpoints: &[Ep]) -> EndpointSlice {
    typed_slice(AddressType::Ipv6, service, suffix, endpoints)
}

fn typed_slice(
    address_type: AddressType,
    service: &str,
    suffix: &str,
    endpoints: &[Ep],
) -> EndpointSlice {
    EndpointSlice {
        key: ObjectKey::new("ns", format!("{service}-{suffix}")),
        service_name: Some(service.to_string()),
        address_type,
        endpoints: endpoints
            .iter()
            .map(|(n, ready, serving, terminating)| Endpoint {
                node_name: Some(n.to_string()),
                ready: *ready,
                serving: *serving,
                terminating: *terminating,
            })
            .collect(),
    }
}

fn state(nodes: Vec<Node>, services: Vec<Service>, slices: Vec<EndpointSlice>) -> ClusterState {
    let mut s = ClusterState::default();
    nodes.into_iter().for_each(|n| s.insert_node(n));
    services.into_iter().for_each(|n| s.insert_service(n));
    slices.into_iter().for_each(|n| s.insert_endpoint_slice(n));
    s
}

fn config(yaml: &str) -> Config {
    Config::parse(yaml).unwrap()
}

const LAB: &str = "serviceClusterIPs: [{cidr: 198.19.32.0/20}]\nserviceExternalIPs: [{cidr: 198.19.48.0/20}]\nserviceLoadBalancerIPs: [{cidr: 198.19.64.0/24}]\n";

fn lab_nodes() -> Vec<Node> {
    vec![
        node("control", &["198.19.0.1"]),
        node("node1", &["198.19.0.2"]),
        node("node2", &["198.19.0.3"]),
    ]
}

struct Case {
    name: &'static str,
    config: &'static str,
    state: ClusterState,
    routes: BTreeMap<String, Vec<String>>,
    refused: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "ranges from every node, cluster-policy services ride them",
            config: LAB,
            state: state(
                lab_nodes(),
                vec![with_external(
                    svc("a", &["198.19.38.11"], false),
                    &["198.19.48.10"],
                )],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.48.0/20", ALL3),
                ("198.19.64.0/24", ALL3),
            ]),
            refused: &[],
        },
        Case {
            name: "local policy: host routes from endpoint nodes only",
            config: LAB,
            state: state(
                lab_nodes(),
                vec![with_external(
                    svc("a", &["198.19.38.11"], true),
                    &["198.19.48.10"],
                )],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.48.0/20", ALL3),
                ("198.19.64.0/24", ALL3),
                ("198.19.38.11/32", &["node1=198.19.0.2"]),
                ("198.19.48.10/32", &["node1=198.19.0.2"]),
            ]),
            refused: &[],
        },
        Case {
            name: "ready unset counts as ready; not-ready endpoints do not count",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![svc("a", &["198.19.38.11"], true)],
                vec![slice("a", "1", &[UNSET("node2"), NOT_READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.38.11/32", &["node2=198.19.0.3"]),
            ]),
            refused: &[],
        },
        Case {
            name: "no ready endpoint: serving+terminating ones drain",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![svc("a", &["198.19.38.11"], true)],
                vec![slice("a", "1", &[DRAINING("node2"), NOT_READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.38.11/32", &["node2=198.19.0.3"]),
            ]),
            refused: &[],
        },
        Case {
            name: "ready endpoints win over draining ones",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![svc("a", &["198.19.38.11"], true)],
                vec![
                    slice("a", "1", &[DRAINING("node2")]),
                    slice("a", "2", &[READY("node1")]),
                ],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.38.11/32", &["node1=198.19.0.2"]),
            ]),
            refused: &[],
        },
        Case {
            name: "no endpoint at all: only the range covers it",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(lab_nodes(), vec![svc("a", &["198.19.38.11"], true)], vec![]),
            routes: expect(&[("198.19.32.0/20", ALL3)]),
            refused: &[],
        },
        Case {
            name: "endpoints on ineligible nodes are no next hops",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                vec![
                    node("control", &["198.19.0.1"]),
                    not_ready(node("node1", &["198.19.0.2"])),
                    labelled(node("node2", &["198.19.0.3"]), EXCLUDE_LABEL, ""),
                ],
                vec![svc("a", &["198.19.38.11"], true)],
                vec![slice(
                    "a",
                    "1",
                    &[READY("node1"), READY("node2"), READY("ghost")],
                )],
            ),
            routes: expect(&[("198.19.32.0/20", &["control=198.19.0.1"])]),
            refused: &[],
        },
        Case {
            name: "nodeSelector picks the pool",
            config: "nodeSelector: pool=a\nserviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                vec![
                    labelled(node("n1", &["198.19.0.2"]), "pool", "a"),
                    labelled(node("n2", &["198.19.0.3"]), "pool", "b"),
                ],
                vec![svc("a", &["198.19.38.11"], true)],
                vec![slice("a", "1", &[READY("n1"), READY("n2")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", &["n1=198.19.0.2"]),
                ("198.19.38.11/32", &["n1=198.19.0.2"]),
            ]),
            refused: &[],
        },
        Case {
            name: "no eligible node: no route",
            config: "nodeSelector: pool=z\nserviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(lab_nodes(), vec![], vec![]),
            routes: expect(&[]),
            refused: &[],
        },
        Case {
            name: "IPs outside the ranges are refused, never announced (CVE-2020-8554 class)",
            config: LAB,
            state: state(
                lab_nodes(),
                vec![with_lb(
                    with_external(
                        svc("evil", &["198.19.38.12"], true),
                        &["8.8.8.8", "198.19.0.2"],
                    ),
                    &["1.1.1.1", "198.19.64.7"],
                )],
                vec![slice("evil", "1", &[READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.48.0/20", ALL3),
                ("198.19.64.0/24", ALL3),
                ("198.19.38.12/32", &["node1=198.19.0.2"]),
                ("198.19.64.7/32", &["node1=198.19.0.2"]),
            ]),
            refused: &["8.8.8.8", "198.19.0.2", "1.1.1.1"],
        },
        Case {
            name: "external IPs with no serviceExternalIPs are refused",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![with_external(
                    svc("a", &["198.19.38.11"], true),
                    &["198.19.48.10"],
                )],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.38.11/32", &["node1=198.19.0.2"]),
            ]),
            refused: &["198.19.48.10"],
        },
        Case {
            name: "a node's own address inside a range is refused as a host route",
            config: "serviceExternalIPs: [{cidr: 198.19.0.0/20}]",
            state: state(
                lab_nodes(),
                vec![with_external(
                    svc("a", &["10.96.0.1"], true),
                    &["198.19.0.3"],
                )],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[("198.19.0.0/20", ALL3)]),
            refused: &["198.19.0.3"],
        },
        Case {
            name: "headless and ExternalName give nothing",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![
                    svc("headless", &["None"], true),
                    Service {
                        type_: ServiceType::ExternalName,
                        ..svc("ext", &[], true)
                    },
                ],
                vec![
                    slice("headless", "1", &[READY("node1")]),
                    slice("ext", "1", &[READY("node1")]),
                ],
            ),
            routes: expect(&[("198.19.32.0/20", ALL3)]),
            refused: &[],
        },
        Case {
            name: "dual stack: each family on its own; v4-only nodes are no v6 next hops",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}, {cidr: 'fd00:32::/112'}]",
            state: state(
                vec![
                    node("node1", &["198.19.0.2", "fd00::2"]),
                    node("node2", &["198.19.0.3"]),
                ],
                vec![svc("a", &["198.19.38.11", "fd00:32::11"], true)],
                vec![
                    slice("a", "1", &[READY("node1"), READY("node2")]),
                    v6_slice("a", "2", &[READY("node1"), READY("node2")]),
                ],
            ),
            routes: expect(&[
                ("198.19.32.0/20", &["node1=198.19.0.2", "node2=198.19.0.3"]),
                ("198.19.38.11/32", &["node1=198.19.0.2", "node2=198.19.0.3"]),
                ("fd00:32::/112", &["node1=fd00::2"]),
                ("fd00:32::11/128", &["node1=fd00::2"]),
            ]),
            refused: &[],
        },
        Case {
            name: "an endpoint of the other family makes no next hop: single-stack IPv4 with its node1 endpoint in an IPv6 slice",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![svc("a", &["198.19.34.1"], true)],
                vec![
                    v6_slice("a", "1", &[READY("node1")]),
                    slice("a", "2", &[READY("node2")]),
                ],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.34.1/32", &["node2=198.19.0.3"]),
            ]),
            refused: &[],
        },
        Case {
            name: "dual stack, endpoints split across nodes: IPv4 from the IPv4 endpoints' node, IPv6 from the IPv6 ones'",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}, {cidr: 'fd00:32::/112'}]",
            state: state(
                vec![
                    node("node1", &["198.19.0.2", "fd00::2"]),
                    node("node2", &["198.19.0.3", "fd00::3"]),
                ],
                vec![svc("a", &["198.19.34.1", "fd00:32::1"], true)],
                vec![
                    slice("a", "v4", &[READY("node2")]),
                    v6_slice("a", "v6", &[READY("node1")]),
                ],
            ),
            routes: expect(&[
                ("198.19.32.0/20", &["node1=198.19.0.2", "node2=198.19.0.3"]),
                ("198.19.34.1/32", &["node2=198.19.0.3"]),
                ("fd00:32::/112", &["node1=fd00::2", "node2=fd00::3"]),
                ("fd00:32::1/128", &["node1=fd00::2"]),
            ]),
            refused: &[],
        },
        Case {
            name: "FQDN slices are no endpoints: a Local Service with only one gets no host route",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![svc("a", &["198.19.38.11"], true)],
                vec![typed_slice(AddressType::Fqdn, "a", "1", &[READY("node1")])],
            ),
            routes: expect(&[("198.19.32.0/20", ALL3)]),
            refused: &[],
        },
        Case {
            name: "internalTrafficPolicy: Local with externalTrafficPolicy: Cluster: the cluster IP from its endpoint nodes, the external IP rides the range",
            config: LAB,
            state: state(
                lab_nodes(),
                vec![itp_local(with_external(
                    svc("a", &["198.19.38.11"], false),
                    &["198.19.48.10"],
                ))],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.48.0/20", ALL3),
                ("198.19.64.0/24", ALL3),
                ("198.19.38.11/32", &["node1=198.19.0.2"]),
            ]),
            refused: &[],
        },
        Case {
            name: "internalTrafficPolicy: Local with no ready endpoint: no host route (the range still covers it)",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![itp_local(svc("a", &["198.19.38.11"], false))],
                vec![slice("a", "1", &[NOT_READY("node1")])],
            ),
            routes: expect(&[("198.19.32.0/20", ALL3)]),
            refused: &[],
        },
        Case {
            name: "both policies Local: every IP from the endpoint nodes",
            config: LAB,
            state: state(
                lab_nodes(),
                vec![itp_local(with_lb(
                    with_external(svc("a", &["198.19.38.11"], true), &["198.19.48.10"]),
                    &["198.19.64.9"],
                ))],
                vec![slice("a", "1", &[READY("node1"), READY("node2")])],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.48.0/20", ALL3),
                ("198.19.64.0/24", ALL3),
                ("198.19.38.11/32", &["node1=198.19.0.2", "node2=198.19.0.3"]),
                ("198.19.48.10/32", &["node1=198.19.0.2", "node2=198.19.0.3"]),
                ("198.19.64.9/32", &["node1=198.19.0.2", "node2=198.19.0.3"]),
            ]),
            refused: &[],
        },
        Case {
            name: "another pool's range: not refused, not announced here; an IP of no pool is refused",
            config: "pool: pool-a\nserviceExternalIPs: [{cidr: 198.19.48.0/21}]\notherPools: [{name: pool-b, ranges: [198.19.56.0/21]}]",
            state: state(
                lab_nodes(),
                vec![with_external(
                    svc("a", &[], true),
                    &["198.19.48.10", "198.19.56.10", "8.8.8.8"],
                )],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[
                ("198.19.48.0/21", ALL3),
                ("198.19.48.10/32", &["node1=198.19.0.2"]),
            ]),
            refused: &["8.8.8.8"],
        },
        Case {
            name: "two services sharing an IP: one route, next hops merged",
            config: "serviceExternalIPs: [{cidr: 198.19.48.0/20}]",
            state: state(
                lab_nodes(),
                vec![
                    with_external(svc("a", &[], true), &["198.19.48.10"]),
                    with_external(svc("b", &[], true), &["198.19.48.10"]),
                ],
                vec![
                    slice("a", "1", &[READY("node1")]),
                    slice("b", "1", &[READY("node2")]),
                ],
            ),
            routes: expect(&[
                ("198.19.48.0/20", ALL3),
                ("198.19.48.10/32", &["node1=198.19.0.2", "node2=198.19.0.3"]),
            ]),
            refused: &[],
        },
        Case {
            name: "a malformed IP is refused; the rest is still planned",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![
                    svc("bad", &["198.19.38.300"], true),
                    svc("good", &["198.19.38.11"], true),
                ],
                vec![
                    slice("bad", "1", &[READY("node1")]),
                    slice("good", "1", &[READY("node2")]),
                ],
            ),
            routes: expect(&[
                ("198.19.32.0/20", ALL3),
                ("198.19.38.11/32", &["node2=198.19.0.3"]),
            ]),
            refused: &["198.19.38.300"],
        },
        Case {
            name: "deny list: ranges and host routes overlapping it are not announced",
            config: "serviceExternalIPs: [{cidr: 198.19.48.0/20}, {cidr: 10.0.0.0/8}]\ndenyPrefixes: [198.19.48.128/25, 10.0.0.0/8]",
            state: state(
                lab_nodes(),
                vec![with_external(
                    svc("a", &[], true),
                    &["198.19.48.200", "198.19.48.10"],
                )],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[("198.19.48.10/32", &["node1=198.19.0.2"])]),
            refused: &["198.19.48.200"],
        },
        Case {
            name: "a default route is never announced",
            config: "serviceExternalIPs: [{cidr: 0.0.0.0/0}]",
            state: state(
                lab_nodes(),
                vec![with_external(svc("a", &[], true), &["8.8.8.8"])],
                vec![slice("a", "1", &[READY("node1")])],
            ),
            routes: expect(&[("8.8.8.8/32", &["node1=198.19.0.2"])]),
            refused: &[],
        },
        Case {
            name: "slices of another namespace or without service label are not this service's",
            config: "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            state: state(
                lab_nodes(),
                vec![svc("a", &["198.19.38.11"], true)],
                vec![
                    EndpointSlice {
                        key: ObjectKey::new("other", "a-1"),
                        ..slice("a", "x", &[READY("node1")])
                    },
                    EndpointSlice {
                        service_name: None,
                        ..slice("a", "y", &[READY("node2")])
                    },
                ],
            ),
            routes: expect(&[("198.19.32.0/20", ALL3)]),
            refused: &[],
        },
    ]
}

#[test]
fn rules_table() {
    for case in cases() {
        let plan = plan(&case.state, &config(case.config));
        assert_eq!(routes(&plan), case.routes, "case: {}", case.name);
        let refused: Vec<&str> = plan.refusals.iter().map(|r| r.ip.as_str()).collect();
        let mut expected: Vec<&str> = case.refused.to_vec();
        let mut got = refused.clone();
        expected.sort();
        got.sort();
        assert_eq!(
            got, expected,
            "refusals of case: {} ({:?})",
            case.name, plan.refusals
        );
    }
}

#[test]
fn default_route_range_is_refused_with_a_note() {
    let p = plan(
        &state(lab_nodes(), vec![], vec![]),
        &config("serviceExternalIPs: [{cidr: 0.0.0.0/0}]"),
    );
    assert!(p.routes.is_empty());
    assert!(
        p.notes.iter().any(|n| n.contains("default route")),
        "{:?}",
        p.notes
    );
}

#[test]
fn kinds_sources_and_reasons() {
    let s = state(
        lab_nodes(),
        vec![with_lb(
            with_external(svc("a", &["198.19.38.11"], true), &["198.19.48.10"]),
            &["198.19.64.9"],
        )],
        vec![slice("a", "1", &[READY("node1")])],
    );
    let p = plan(&s, &config(LAB));
    let kind = |prefix: &str| p.routes[&prefix.parse::<IpNet>().unwrap()].kind;
    assert_eq!(kind("198.19.32.0/20"), RouteKind::ClusterRange);
    assert_eq!(kind("198.19.48.0/20"), RouteKind::ExternalRange);
    assert_eq!(kind("198.19.64.0/24"), RouteKind::LoadBalancerRange);
    assert_eq!(kind("198.19.38.11/32"), RouteKind::ClusterIp);
    assert_eq!(kind("198.19.48.10/32"), RouteKind::ExternalIp);
    assert_eq!(kind("198.19.64.9/32"), RouteKind::LoadBalancerIp);
    let host = &p.routes[&"198.19.38.11/32".parse::<IpNet>().unwrap()];
    assert_eq!(host.sources.iter().collect::<Vec<_>>(), ["ns/a"]);
    assert!(host.reason.contains("node1"), "{}", host.reason);
    let range = &p.routes[&"198.19.32.0/20".parse::<IpNet>().unwrap()];
    assert_eq!(
        range.sources.iter().collect::<Vec<_>>(),
        ["config:serviceClusterIPs[0]"]
    );
}

#[test]
fn communities_from_ranges_and_allowlisted_annotations() {
    let yaml = "serviceExternalIPs: [{cidr: 198.19.48.0/20, communities: ['65000:1'], largeCommunities: ['65000:1:2']}]\nallowedCommunities: ['65000:100']";
    let mut service = with_external(svc("a", &[], true), &["198.19.48.10"]);
    service.annotations.insert(
        COMMUNITIES_ANNOTATION.into(),
        "65000:100, 65000:666, junk".into(),
    );
    let p = plan(
        &state(
            lab_nodes(),
            vec![service],
            vec![slice("a", "1", &[READY("node1")])],
        ),
        &config(yaml),
    );
    let host = &p.routes[&"198.19.48.10/32".parse::<IpNet>().unwrap()];
    let communities: Vec<String> = host.communities.iter().map(ToString::to_string).collect();
    assert_eq!(communities, ["65000:1", "65000:100"]);
    assert_eq!(
        host.large_communities
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["65000:1:2"]
    );
    let range = &p.routes[&"198.19.48.0/20".parse::<IpNet>().unwrap()];
    assert_eq!(
        range
            .communities
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["65000:1"]
    );
    let notes = &p.services.get(&ObjectKey::new("ns", "a")).unwrap().notes;
    assert_eq!(notes.len(), 2, "{notes:?}");
}

#[test]
fn explanations_account_for_every_ip() {
    let s = state(
        lab_nodes(),
        vec![
            with_external(
                svc("a", &["198.19.38.11"], true),
                &["198.19.48.10", "8.8.8.8"],
            ),
            svc("b", &["198.19.33.1"], false),
        ],
        vec![slice("a", "1", &[READY("node1"), NOT_READY("node2")])],
    );
    let p = plan(&s, &config(LAB));
    let a = &p.services.get(&ObjectKey::new("ns", "a")).unwrap();
    let outcomes: Vec<(&str, &IpOutcome)> =
        a.ips.iter().map(|i| (i.ip.as_str(), &i.outcome)).collect();
    assert_eq!(
        outcomes[0],
        (
            "198.19.38.11",
            &IpOutcome::HostRoute("198.19.38.11/32".parse().unwrap())
        )
    );
    assert_eq!(
        outcomes[1],
        (
            "198.19.48.10",
            &IpOutcome::HostRoute("198.19.48.10/32".parse().unwrap())
        )
    );
    assert!(matches!(
        outcomes[2],
        ("8.8.8.8", IpOutcome::NotAnnounced(_))
    ));
    assert_eq!(a.endpoint_nodes["node1"], "ready endpoint");
    assert_eq!(a.endpoint_nodes["node2"], "endpoint not ready");
    let b = &p.services.get(&ObjectKey::new("ns", "b")).unwrap();
    assert_eq!(
        b.ips[0].outcome,
        IpOutcome::CoveredByRange("198.19.32.0/20".parse().unwrap())
    );
}

/// A cluster large enough to be planned in two halves gets the plan Service by Service would give,
/// in the full planner and in the incremental one.
#[test]
fn a_large_cluster_planned_in_two_halves_equals_one_by_one() {
    let state = scale::cluster(scale::Scale::small(40, 2 * PLAN_IN_TWO_ABOVE as u32 + 1));
    let config = scale::config();
    let context = PlanContext::new(&state, &config);
    let services: Vec<&Service> = state.services.values().map(|s| &**s).collect();
    let mut slices: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in state.endpoint_slices.values() {
        slices
            .entry(slice.service_key().unwrap())
            .or_default()
            .push(slice);
    }
    let plan_one = |s: &Service| {
        plan_service(
            &context,
            s,
            slices.get(&s.key).map(Vec::as_slice).unwrap_or_default(),
        )
    };
    let one_by_one: Vec<ServicePlan> = services.iter().map(|s| plan_one(s)).collect();
    let halves = plan_each(&services, plan_one);
    assert_eq!(halves, one_by_one);
    let full = plan(&state, &config);
    assert!(full.routes.len() > 100, "{} routes", full.routes.len());
    assert_eq!(
        herald_core::planner::incremental::IncrementalPlanner::new(state, config).plan(),
        &full
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    pub(super) fn arb_state_for_tests() -> impl Strategy<Value = ClusterState> {
        arb_state()
    }

    fn arb_state() -> impl Strategy<Value = ClusterState> {
        let nodes =
            proptest::collection::vec((any::<bool>(), any::<bool>(), 0u8..3, any::<bool>()), 1..6);
        // (externalTrafficPolicy Local, internalTrafficPolicy Local, cluster IP, with an IPv6 cluster
        // IP too, external IPs, endpoints as (node, condition, slice family: IPv4, IPv6, FQDN)).
        let services = proptest::collection::vec(
            (
                (any::<bool>(), any::<bool>()),
                0u16..64,
                any::<bool>(),
                proptest::collection::vec(0u16..600, 0..3),
                proptest::collection::vec((0usize..6, 0u8..4, 0u8..3), 0..6),
            ),
            0..12,
        );
        (nodes, services).prop_map(|(nodes, services)| {
            let mut s = ClusterState::default();
            for (i, (ready, excluded, pool, v6)) in nodes.iter().enumerate() {
                let mut ips = vec![format!("198.19.0.{}", i + 1)];
                if *v6 {
                    ips.push(format!("fd00::{}", i + 1));
                }
                let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
                let mut n = node(&format!("n{i}"), &ip_refs);
                n.ready = *ready;
                if *excluded {
                    n.labels.insert(EXCLUDE_LABEL.into(), String::new());
                }
                n.labels
                    .insert("pool".into(), ["a", "b", "c"][*pool as usize].into());
                s.insert_node(n);
            }
            for (j, ((local, internal_local), cluster_low, dual, externals, endpoints)) in
                services.iter().enumerate()
            {
                let name = format!("s{j}");
                let mut cluster = vec![format!(
                    "198.19.{}.{}",
                    32 + cluster_low / 8,
                    cluster_low % 250
                )];
                if *dual {
                    cluster.push(format!("fd00:32::{cluster_low:x}"));
                }
                let cluster: Vec<&str> = cluster.iter().map(String::as_str).collect();
                let external: Vec<String> = externals
                    .iter()
                    .map(|e| match e % 3 {
                        0 => format!("198.19.48.{}", e % 250),
                        1 => format!("8.8.{}.{}", e % 250, e % 7),
                        _ => format!("fd00:48::{e:x}"),
                    })
                    .collect();
                let ext_refs: Vec<&str> = external.iter().map(String::as_str).collect();
                let mut service = with_external(svc(&name, &cluster, *local), &ext_refs);
                if *internal_local {
                    service = itp_local(service);
                }
                s.insert_service(service);
                for (family, address_type) in
                    [AddressType::Ipv4, AddressType::Ipv6, AddressType::Fqdn]
                        .into_iter()
                        .enumerate()
                {
                    let eps: Vec<Endpoint> = endpoints
                        .iter()
                        .filter(|(_, _, f)| usize::from(*f) == family)
                        .map(|(n, cond, _)| Endpoint {
                            node_name: Some(format!("n{n}")),
                            ready: [Some(true), None, Some(false), Some(false)][*cond as usize],
                            serving: [None, None, Some(false), Some(true)][*cond as usize],
                            terminating: [None, None, Some(false), Some(true)][*cond as usize],
                        })
                        .collect();
                    if !eps.is_empty() {
                        s.insert_endpoint_slice(EndpointSlice {
                            key: ObjectKey::new("ns", format!("{name}-{}", address_type.as_str())),
                            service_name: Some(name.clone()),
                            address_type,
                            endpoints: eps,
                        });
                    }
                }
            }
            s
        })
    }

    pub(super) const CONFIG: &str = "pool: pool-m\nnodeSelector: pool in (a,b)\necmp: {maxPaths: 2}\n\
        serviceClusterIPs: [{cidr: 198.19.32.0/20}, {cidr: 'fd00:32::/112'}]\n\
        serviceExternalIPs: [{cidr: 198.19.48.0/24}, {cidr: 'fd00:48::/64'}]\n\
        otherPools: [{name: pool-z, ranges: [8.8.0.0/17]}]";

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Every announced prefix is a configured range or a host route inside one.
        #[test]
        fn prefixes_stay_inside_allowed_ranges(s in arb_state()) {
            let cfg = config(CONFIG);
            let ranges: Vec<IpNet> = cfg.service_cluster_ips.iter().chain(&cfg.service_external_ips).map(|r| r.cidr.0).collect();
            for prefix in plan(&s, &cfg).routes.keys() {
                prop_assert!(ranges.iter().any(|r| r.contains(prefix)), "{prefix} escapes the ranges");
            }
        }

        /// Every next hop is an eligible node, announced with its own address of the prefix's family.
        #[test]
        fn next_hops_are_eligible_nodes(s in arb_state()) {
            let cfg = config(CONFIG);
            for route in plan(&s, &cfg).routes.values() {
                prop_assert!(!route.next_hops.is_empty());
                for hop in &route.next_hops {
                    let n = &s.nodes[&hop.node];
                    prop_assert!(ineligibility(n, &cfg).is_none(), "{} is not eligible", hop.node);
                    prop_assert!(n.internal_ips.contains(&hop.address));
                    prop_assert_eq!(hop.address.is_ipv4(), route.prefix.addr().is_ipv4());
                }
            }
        }

        /// Host routes exist only for Local Services (internalTrafficPolicy: Local alone: cluster
        /// IPs only), and only on nodes with a ready (or, failing that, draining) endpoint of the
        /// IP's own family.
        #[test]
        fn host_routes_follow_endpoints(s in arb_state()) {
            let cfg = config(CONFIG);
            let p = plan(&s, &cfg);
            for route in p.routes.values().filter(|r| !r.kind.is_range()) {
                for source in &route.sources {
                    let (ns, name) = source.split_once('/').unwrap();
                    let service = &s.services[&ObjectKey::new(ns, name)];
                    let external = service.external_traffic_policy == TrafficPolicy::Local;
                    let internal = service.internal_traffic_policy == TrafficPolicy::Local;
                    prop_assert!(external || (internal && route.kind == RouteKind::ClusterIp),
                        "{} ({}) from {source}, whose policies give it no host route", route.prefix, route.kind);
                }
                for hop in &route.next_hops {
                    let has_endpoint = s.endpoint_slices.values()
                        .filter(|sl| route.sources.iter().any(|src| sl.service_key().map(|k| k.to_string()).as_ref() == Some(src)))
                        .filter(|sl| sl.address_type.serves(&route.prefix.addr()))
                        .flat_map(|sl| &sl.endpoints)
                        .any(|e| e.node_name.as_deref() == Some(hop.node.as_str()) && (e.is_ready() || e.is_draining()));
                    prop_assert!(has_endpoint, "{} announced from {} without an endpoint of its family there", route.prefix, hop.node);
                }
            }
        }

        /// The planner's output keeps every safety invariant, restated independently of it.
        #[test]
        fn plans_keep_the_invariants(s in arb_state()) {
            let cfg = config(CONFIG);
            let p = plan(&s, &cfg);
            if let Err(violations) = herald_testkit::invariants::check_plan_invariants(&s, &cfg, &p) {
                prop_assert!(false, "{violations}");
            }
        }

        /// Every IP of every Service gets exactly one explanation, and refused IPs are never announced.
        #[test]
        fn every_ip_accounted_for(s in arb_state()) {
            let cfg = config(CONFIG);
            let p = plan(&s, &cfg);
            for (key, service) in &s.services {
                let e = &p.services.get(key).unwrap();
                prop_assert_eq!(e.ips.len(), service.cluster_ips.len() + service.external_ips.len() + service.load_balancer_ips.len());
            }
            for refusal in &p.refusals {
                if let Ok(ip) = refusal.ip.parse::<std::net::IpAddr>() {
                    prop_assert!(!p.routes.contains_key(&IpNet::from(ip)), "refused {} is announced", ip);
                }
            }
        }

        /// The plan depends on the objects, not on the order they came in.
        #[test]
        fn independent_of_input_order(s in arb_state()) {
            let cfg = config(CONFIG);
            let mut reversed = ClusterState::default();
            s.endpoint_slices.values().rev().for_each(|e| reversed.insert_endpoint_slice(EndpointSlice::clone(e)));
            s.services.values().rev().for_each(|v| reversed.insert_service(Service::clone(v)));
            s.nodes.values().rev().for_each(|n| reversed.insert_node(Node::clone(n)));
            prop_assert_eq!(plan(&s, &cfg), plan(&reversed, &cfg));
        }
    }
}

mod incremental_equals_full {
    use proptest::prelude::*;

    use super::properties::arb_state_for_tests as arb_state;
    use super::*;
    use herald_core::planner::incremental::{Change, IncrementalPlanner};

    use super::properties::CONFIG;

    /// A change drawn against a state: (what, which, how).
    fn change_of(state: &ClusterState, (what, which, how): (u8, usize, u8)) -> Change {
        let pick = |n: usize| which % n.max(1);
        match what % 6 {
            0 if !state.endpoint_slices.is_empty() => {
                let mut slice = EndpointSlice::clone(
                    state
                        .endpoint_slices
                        .values()
                        .nth(pick(state.endpoint_slices.len()))
                        .unwrap(),
                );
                match how % 4 {
                    0 => slice
                        .endpoints
                        .iter_mut()
                        .for_each(|e| e.ready = Some(!e.is_ready())),
                    1 => slice.endpoints.push(Endpoint {
                        node_name: Some(format!("n{}", how % 5)),
                        ..Default::default()
                    }),
                    2 => {
                        slice.address_type =
                            [AddressType::Ipv4, AddressType::Ipv6, AddressType::Fqdn]
                                [usize::from(how / 4 % 3)]
                            .clone()
                    }
                    _ => slice.service_name = Some(format!("s{}", how % 12)),
                }
                Change::EndpointSlice(slice.into())
            }
            1 if !state.endpoint_slices.is_empty() => Change::EndpointSliceDeleted(
                state
                    .endpoint_slices
                    .keys()
                    .nth(pick(state.endpoint_slices.len()))
                    .unwrap()
                    .clone(),
            ),
            2 if !state.services.is_empty() => {
                let mut service = Service::clone(
                    state
                        .services
                        .values()
                        .nth(pick(state.services.len()))
                        .unwrap(),
                );
                let flip = |p: TrafficPolicy| {
                    if p == TrafficPolicy::Local {
                        TrafficPolicy::Cluster
                    } else {
                        TrafficPolicy::Local
                    }
                };
                match how % 4 {
                    0 => service.external_traffic_policy = flip(service.external_traffic_policy),
                    1 => service.external_ips.push(format!("198.19.48.{}", how)),
                    2 => service.internal_traffic_policy = flip(service.internal_traffic_policy),
                    _ => service.cluster_ips = vec![format!("198.19.33.{}", how % 4)],
                }
                Change::Service(service.into())
            }
            3 if !state.services.is_empty() => Change::ServiceDeleted(
                state
                    .services
                    .keys()
                    .nth(pick(state.services.len()))
                    .unwrap()
                    .clone(),
            ),
            4 if !state.nodes.is_empty() => {
                let mut node =
                    Node::clone(state.nodes.values().nth(pick(state.nodes.len())).unwrap());
                node.ready = !node.ready;
                Change::Node(node.into())
            }
            5 if !state.nodes.is_empty() => Change::NodeDeleted(
                state
                    .nodes
                    .keys()
                    .nth(pick(state.nodes.len()))
                    .unwrap()
                    .clone(),
            ),
            _ => {
                // A new Local Service sharing an IP with others, and its slice.
                let name = format!("new{which}");
                Change::Service(
                    with_external(svc(&name, &["198.19.33.1"], true), &["198.19.48.7"]).into(),
                )
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// After any sequence of changes, the incremental plan equals a full plan of the same state,
        /// and each delta is exactly the difference between the plans before and after.
        #[test]
        fn incremental_plan_equals_full_recompute(
            state in arb_state(),
            changes in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..25),
        ) {
            let cfg = config(CONFIG);
            let mut incremental = IncrementalPlanner::new(state.clone(), cfg.clone());
            prop_assert_eq!(incremental.plan(), &plan(&state, &cfg));
            for c in changes {
                let before = incremental.plan().clone();
                let change = change_of(incremental.state(), c);
                let delta = incremental.apply(change);
                let full = plan(incremental.state(), &cfg);
                prop_assert_eq!(incremental.plan(), &full);
                let mut expected = herald_core::planner::incremental::diff(&before, &full);
                let mut got = delta;
                expected.upserted.sort_by_key(|r| r.prefix);
                got.upserted.sort_by_key(|r| r.prefix);
                expected.removed.sort();
                got.removed.sort();
                prop_assert_eq!(got, expected);
            }
        }
    }
}

/// Batches of changes, as `herald run` gives them to the planner: a cluster state's changes at once.
mod batches_equal_full {
    use proptest::prelude::*;

    use super::properties::CONFIG;
    use super::properties::arb_state_for_tests as arb_state;
    use super::*;
    use herald_core::planner::incremental::IncrementalPlanner;

    /// One change to a state: a node's readiness, a label herald does not read, a node deleted, an
    /// endpoint's readiness.
    fn change(state: &mut ClusterState, (what, which): (u8, usize)) {
        let nodes: Vec<String> = state.nodes.keys().cloned().collect();
        let slices: Vec<ObjectKey> = state.endpoint_slices.keys().cloned().collect();
        match what % 4 {
            0 if !nodes.is_empty() => {
                let mut node = Node::clone(&state.nodes[&nodes[which % nodes.len()]]);
                node.ready = !node.ready;
                state.insert_node(node);
            }
            1 if !nodes.is_empty() => {
                let mut node = Node::clone(&state.nodes[&nodes[which % nodes.len()]]);
                node.labels
                    .insert("rack-audit".to_string(), which.to_string());
                state.insert_node(node);
            }
            2 if !nodes.is_empty() => {
                state.nodes.remove(&nodes[which % nodes.len()]);
            }
            _ if !slices.is_empty() => {
                let mut slice =
                    EndpointSlice::clone(&state.endpoint_slices[&slices[which % slices.len()]]);
                slice
                    .endpoints
                    .iter_mut()
                    .for_each(|e| e.ready = Some(!e.is_ready()));
                state.insert_endpoint_slice(slice);
            }
            _ => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// However changes are grouped into batches, the plan equals a full plan of the same state.
        #[test]
        fn batched_plan_equals_full_recompute(
            state in arb_state(),
            batches in proptest::collection::vec(proptest::collection::vec((any::<u8>(), any::<usize>()), 1..12), 1..6),
        ) {
            let cfg = config(CONFIG);
            let mut planner = IncrementalPlanner::new(state.clone(), cfg.clone());
            let mut current = state;
            for batch in batches {
                let before = current.clone();
                let plan_before = planner.plan().clone();
                for c in batch {
                    change(&mut current, c);
                }
                let delta = planner.apply_batch(before.changes_to(&current));
                let full = plan(&current, &cfg);
                prop_assert_eq!(planner.plan(), &full);
                prop_assert_eq!(delta, herald_core::planner::incremental::diff(&plan_before, &full));
            }
        }
    }

    /// Labels herald does not read, on every node at once: nothing is planned again (the plan's
    /// node table is the very same), and the plan is the same.
    #[test]
    fn a_relabel_with_a_label_herald_does_not_read_plans_nothing() {
        let scale = herald_testkit::scale::Scale::small(200, 400);
        let state = herald_testkit::scale::cluster(scale);
        let cfg = herald_testkit::scale::config();
        let mut planner = IncrementalPlanner::new(state.clone(), cfg.clone());
        let before = planner.plan().clone();
        let mut relabelled = state.clone();
        for node in state.nodes.values() {
            let mut node = Node::clone(node);
            node.labels.insert("team".to_string(), "blue".to_string());
            relabelled.insert_node(node);
        }
        let changes = state.changes_to(&relabelled);
        assert_eq!(changes.len(), 200);
        assert!(planner.apply_batch(changes).is_empty());
        assert!(
            std::sync::Arc::ptr_eq(&before.nodes, &planner.plan().nodes),
            "planned again"
        );
        assert_eq!(planner.plan(), &before);
        assert_eq!(planner.state(), &relabelled);
        // The exclusion label on every node does change the plan, in one go.
        let mut excluded = relabelled.clone();
        for node in relabelled.nodes.values() {
            let mut node = Node::clone(node);
            node.labels.insert(EXCLUDE_LABEL.to_string(), String::new());
            excluded.insert_node(node);
        }
        let delta = planner.apply_batch(relabelled.changes_to(&excluded));
        assert!(!delta.removed.is_empty());
        assert_eq!(planner.plan(), &plan(&excluded, &cfg));
    }
}

/// An EndpointSlice that moves from one Service to another re-plans both; a host route both share
/// is in the delta once (it was listed as removed by the first and upserted by the second), and
/// the delta is the one between the plans before and after.
#[test]
fn a_slice_moving_between_services_that_share_an_ip_lists_the_ip_once() {
    let cfg = config(LAB);
    let a = with_external(svc("a", &["198.19.32.1"], true), &["198.19.48.10"]);
    let b = with_external(svc("b", &["198.19.32.2"], true), &["198.19.48.10"]);
    let on_node1 = slice("a", "1", &[READY("node1")]);
    let mut incremental = herald_core::planner::incremental::IncrementalPlanner::new(
        state(lab_nodes(), vec![a, b], vec![on_node1.clone()]),
        cfg.clone(),
    );
    let shared: IpNet = "198.19.48.10/32".parse().unwrap();
    assert!(
        incremental.plan().routes.contains_key(&shared),
        "{:?}",
        incremental.plan().routes.keys().collect::<Vec<_>>()
    );
    let before = incremental.plan().clone();
    let moved = EndpointSlice {
        service_name: Some("b".to_string()),
        ..on_node1
    };
    let delta = incremental.apply(herald_core::planner::incremental::Change::EndpointSlice(
        moved.into(),
    ));
    let removed_and_upserted: Vec<&IpNet> = delta
        .removed
        .iter()
        .filter(|p| delta.upserted.iter().any(|r| r.prefix == **p))
        .collect();
    assert!(
        removed_and_upserted.is_empty(),
        "both removed and upserted: {removed_and_upserted:?}"
    );
    assert!(incremental.plan().routes.contains_key(&shared));
    let mut expected = herald_core::planner::incremental::diff(&before, incremental.plan());
    let mut got = delta;
    expected.upserted.sort_by_key(|r| r.prefix);
    got.upserted.sort_by_key(|r| r.prefix);
    expected.removed.sort();
    got.removed.sort();
    assert_eq!(got, expected);
}

/// What `heraldctl explain` says of each of the new cases: families per endpoint node, FQDN slices,
/// the policy behind a host route, another pool's IP.
#[test]
fn explanations_name_families_policies_and_pools() {
    let cfg = config(
        "pool: pool-a\nserviceClusterIPs: [{cidr: 198.19.32.0/20}]\nserviceExternalIPs: [{cidr: 198.19.48.0/21}]\notherPools: [{name: pool-b, ranges: [198.19.56.0/21]}]",
    );
    let s = state(
        lab_nodes(),
        vec![
            svc("families", &["198.19.34.1"], true),
            svc("fqdn", &["198.19.34.2"], true),
            itp_local(with_external(
                svc("itp", &["198.19.34.3"], false),
                &["198.19.48.3", "198.19.56.3"],
            )),
        ],
        vec![
            v6_slice("families", "v6", &[READY("node1")]),
            slice("families", "v4", &[READY("node2"), NOT_READY("node1")]),
            typed_slice(AddressType::Fqdn, "fqdn", "1", &[READY("node1")]),
            slice("itp", "1", &[READY("node2")]),
        ],
    );
    let p = plan(&s, &cfg);
    let explain = |name: &str| p.services.get(&ObjectKey::new("ns", name)).unwrap();

    let families = explain("families");
    assert_eq!(
        families.endpoint_nodes["node1"],
        "IPv4: endpoint not ready; IPv6: ready endpoint"
    );
    assert_eq!(families.endpoint_nodes["node2"], "IPv4: ready endpoint");
    let host = &p.routes[&"198.19.34.1/32".parse::<IpNet>().unwrap()];
    assert_eq!(
        host.reason,
        "externalTrafficPolicy: Local; IPv4 ready endpoints on node2"
    );

    let fqdn = explain("fqdn");
    assert_eq!(
        fqdn.ips[0].outcome,
        IpOutcome::CoveredByRange("198.19.32.0/20".parse().unwrap())
    );
    assert!(
        fqdn.notes
            .iter()
            .any(|n| n.contains("addressType FQDN) ignored")),
        "{:?}",
        fqdn.notes
    );
    assert!(fqdn.endpoint_nodes.is_empty(), "{:?}", fqdn.endpoint_nodes);

    let itp = explain("itp");
    assert_eq!(itp.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(
        itp.ips[0].outcome,
        IpOutcome::HostRoute("198.19.34.3/32".parse().unwrap())
    );
    assert_eq!(
        p.routes[&"198.19.34.3/32".parse::<IpNet>().unwrap()].reason,
        "internalTrafficPolicy: Local; IPv4 ready endpoints on node2"
    );
    // externalTrafficPolicy: Cluster: the external IP rides its range.
    assert_eq!(
        itp.ips[1].outcome,
        IpOutcome::CoveredByRange("198.19.48.0/21".parse().unwrap())
    );
    assert_eq!(
        itp.ips[2].outcome,
        IpOutcome::OtherPool {
            pool: "pool-b".parse().unwrap(),
            range: "198.19.56.0/21".parse().unwrap()
        }
    );
    assert!(p.refusals.is_empty(), "{:?}", p.refusals);
}

/// Refusals name the one pool that records their Event: this pool inside its own ranges, else
/// the first pool by name.
#[test]
fn each_refusal_names_the_pool_that_records_its_event() {
    let cfg = config(
        "pool: pool-b\nserviceExternalIPs: [{cidr: 198.19.56.0/21}]\ndenyPrefixes: [198.19.57.0/24]\notherPools: [{name: pool-a, ranges: [198.19.48.0/21]}]",
    );
    let s = state(
        lab_nodes(),
        vec![with_external(
            svc("a", &[], false),
            &["8.8.8.8", "198.19.57.1", "bad"],
        )],
        vec![],
    );
    let p = plan(&s, &cfg);
    let by_ip: BTreeMap<&str, &str> = p
        .refusals
        .iter()
        .map(|r| (r.ip.as_str(), r.event_pool.0.as_str()))
        .collect();
    assert_eq!(
        by_ip,
        BTreeMap::from([
            ("8.8.8.8", "pool-a"),
            ("198.19.57.1", "pool-b"),
            ("bad", "pool-a")
        ])
    );
    assert!(
        p.refusals
            .iter()
            .find(|r| r.ip == "8.8.8.8")
            .unwrap()
            .reason
            .contains("nor inside a range of the other pools (pool-a)")
    );
}

/// `ecmp.maxPaths`: ranges and host routes fitted to the routers' ECMP width.
mod ecmp {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// `n` Ready nodes, `node-0` .. at 198.19.1.1 ...
    fn pool(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| {
                node(
                    &format!("node-{i}"),
                    &[&format!("198.19.{}.{}", 1 + i / 250, 1 + i % 250)],
                )
            })
            .collect()
    }

    /// The nodes of a route.
    fn nodes_of(route: &Route) -> BTreeSet<String> {
        route.next_hops.iter().map(|h| h.node.clone()).collect()
    }

    /// The parts of `range` in a plan, in address order.
    fn parts_of<'a>(plan: &'a Plan, range: &str) -> Vec<&'a Route> {
        let range: IpNet = range.parse().unwrap();
        plan.routes
            .values()
            .filter(|r| r.part_of == Some(range))
            .map(|r| &**r)
            .collect()
    }

    #[test]
    fn a_range_of_a_pool_wider_than_max_paths_is_spread_over_every_node() {
        let cfg = config("ecmp: {maxPaths: 16}\nserviceClusterIPs: [{cidr: 198.19.32.0/20}]");
        let p = plan(&state(pool(40), vec![], vec![]), &cfg);
        let parts = parts_of(&p, "198.19.32.0/20");
        assert_eq!(
            parts
                .iter()
                .map(|r| r.prefix.to_string())
                .collect::<Vec<_>>(),
            [
                "198.19.32.0/22",
                "198.19.36.0/22",
                "198.19.40.0/22",
                "198.19.44.0/22"
            ]
        );
        assert!(
            parts
                .iter()
                .all(|r| r.next_hops.len() == 16 && r.kind == RouteKind::ClusterRangePart)
        );
        let carried: BTreeSet<String> = parts.iter().flat_map(|r| nodes_of(r)).collect();
        assert_eq!(carried.len(), 40, "every node carries a part");
        let aggregate = &p.routes[&"198.19.32.0/20".parse::<IpNet>().unwrap()];
        assert_eq!(aggregate.kind, RouteKind::ClusterRange);
        assert_eq!(aggregate.next_hops.len(), 16);
        assert!(aggregate.left_out.is_empty());
        assert_eq!(
            parts[0].reason,
            "part 1 of 4 of the cluster range 198.19.32.0/20: from 16 of 40 eligible nodes (ecmp.maxPaths 16)"
        );
        assert_eq!(
            aggregate.reason,
            "cluster range, the aggregate of its 4 parts: from 16 of 40 eligible nodes (ecmp.maxPaths 16)"
        );
        // No limit, or a pool no wider than it: as before, one route from every node.
        for yaml in [
            "serviceClusterIPs: [{cidr: 198.19.32.0/20}]",
            "ecmp: {maxPaths: 40}\nserviceClusterIPs: [{cidr: 198.19.32.0/20}]",
        ] {
            let p = plan(&state(pool(40), vec![], vec![]), &config(yaml));
            assert_eq!(p.routes.len(), 1);
            assert_eq!(p.routes.values().next().unwrap().next_hops.len(), 40);
        }
    }

    #[test]
    fn a_range_that_cannot_be_cut_enough_says_who_is_left_out() {
        // 40 nodes, 2 paths a prefix, parts no longer than /28: a /27 gives 2 parts, 4 nodes.
        let cfg = config("ecmp: {maxPaths: 2}\nserviceExternalIPs: [{cidr: 198.19.48.0/27}]");
        let p = plan(&state(pool(40), vec![], vec![]), &cfg);
        let parts = parts_of(&p, "198.19.48.0/27");
        assert_eq!(parts.len(), 2);
        let aggregate = &p.routes[&"198.19.48.0/27".parse::<IpNet>().unwrap()];
        assert_eq!(aggregate.left_out.len(), 40 - 4, "{:?}", aggregate.left_out);
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("36 of 40 eligible nodes carry none of it")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn per_range_max_paths_and_the_narrower_of_two_lists() {
        let cfg = config(
            "ecmp: {maxPaths: 16}\nserviceClusterIPs: [{cidr: 198.19.32.0/20, maxPaths: 8}]\n\
             serviceExternalIPs: [{cidr: 198.19.48.0/20, maxPaths: 0}, {cidr: 198.19.64.0/24}]\nserviceLoadBalancerIPs: [{cidr: 198.19.64.0/24, maxPaths: 4}]",
        );
        let p = plan(&state(pool(40), vec![], vec![]), &cfg);
        assert!(
            parts_of(&p, "198.19.32.0/20")
                .iter()
                .all(|r| r.next_hops.len() == 8)
        );
        assert_eq!(parts_of(&p, "198.19.32.0/20").len(), 8);
        // maxPaths 0 on the range: no limit for it.
        assert!(parts_of(&p, "198.19.48.0/20").is_empty());
        assert_eq!(
            p.routes[&"198.19.48.0/20".parse::<IpNet>().unwrap()]
                .next_hops
                .len(),
            40
        );
        // In two lists with 16 and 4: 4.
        assert!(
            parts_of(&p, "198.19.64.0/24")
                .iter()
                .all(|r| r.next_hops.len() == 4)
        );
    }

    #[test]
    fn host_routes_keep_to_max_paths_and_say_who_is_left_out() {
        let cfg = config("ecmp: {maxPaths: 16}\nserviceClusterIPs: [{cidr: 198.19.32.0/20}]");
        let nodes = pool(40);
        let endpoints: Vec<Ep> = (0..20)
            .map(|i| READY(Box::leak(format!("node-{i}").into_boxed_str())))
            .collect();
        let s = state(
            nodes,
            vec![
                svc("a", &["198.19.38.11"], true),
                svc("b", &["198.19.38.11"], true),
            ],
            vec![
                slice("a", "1", &endpoints[..18]),
                slice("b", "1", &endpoints[8..]),
            ],
        );
        let p = plan(&s, &cfg);
        let host = &p.routes[&"198.19.38.11/32".parse::<IpNet>().unwrap()];
        assert_eq!(host.next_hops.len(), 16);
        assert_eq!(host.left_out.len(), 4);
        assert!(
            host.reason
                .ends_with("(16 of 20 endpoint nodes: ecmp.maxPaths 16)"),
            "{}",
            host.reason
        );
        // The same 16 whichever Service's endpoints they are: the best 16 of all 20.
        let keys: Vec<u64> = (0..20)
            .map(|i| herald_core::planner::spread::node_key(&format!("node-{i}")))
            .collect();
        let best: BTreeSet<String> = herald_core::planner::spread::top(&host.prefix, 16, &keys)
            .into_iter()
            .map(|i| format!("node-{i}"))
            .collect();
        assert_eq!(nodes_of(host), best);
        let a = &p.services.get(&ObjectKey::new("ns", "a")).unwrap();
        assert!(
            a.notes
                .iter()
                .any(|n| n.starts_with("198.19.38.11: announced from ")
                    && n.contains("(ecmp.maxPaths 16); left out: ")),
            "{:?}",
            a.notes
        );
        // Incrementally, the same.
        let incremental =
            herald_core::planner::incremental::IncrementalPlanner::new(s.clone(), cfg.clone());
        assert_eq!(incremental.plan(), &p);
    }

    /// An IP in an external range of width 2 and a load-balancer range without a limit, listed
    /// under both roles by several Services (found by the planner fuzzer: merged in key order, a
    /// later Service's wider role undid an earlier one's limit).
    #[test]
    fn a_host_route_in_two_roles_keeps_to_the_stricter_width() {
        let cfg = config(
            "serviceExternalIPs: [{cidr: 198.19.48.0/24, maxPaths: 2}]\n\
             serviceLoadBalancerIPs: [{cidr: 198.19.48.0/20}]",
        );
        let ip = "198.19.48.10";
        let endpoints: Vec<Ep> = (0..9)
            .map(|i| READY(Box::leak(format!("node-{i}").into_boxed_str())))
            .collect();
        // Key order a, b, c, d: external, load-balancer, external, and one Service with both.
        let services = vec![
            with_external(svc("a", &[], true), &[ip]),
            with_lb(svc("b", &[], true), &[ip]),
            with_external(svc("c", &[], true), &[ip]),
            with_lb(with_external(svc("d", &[], true), &[ip]), &[ip]),
        ];
        let slices = [
            slice("a", "1", &endpoints[0..2]),
            slice("b", "1", &endpoints[2..5]),
            slice("c", "1", &endpoints[5..7]),
            slice("d", "1", &endpoints[7..9]),
        ];
        // Every order of the roles among the Services: the same two of all nine nodes.
        let keys: Vec<u64> = (0..9)
            .map(|i| herald_core::planner::spread::node_key(&format!("node-{i}")))
            .collect();
        let prefix: IpNet = format!("{ip}/32").parse().unwrap();
        let best: BTreeSet<String> = herald_core::planner::spread::top(&prefix, 2, &keys)
            .into_iter()
            .map(|i| format!("node-{i}"))
            .collect();
        for first in 0..services.len() {
            let mut rotated = services.clone();
            rotated.rotate_left(first);
            // Renamed so that key order follows the rotation; the slices follow their Services.
            let names = ["a", "b", "c", "d"];
            let mut renamed_slices = Vec::new();
            for (i, service) in rotated.iter_mut().enumerate() {
                let old = services.iter().position(|s| s.key == service.key).unwrap();
                let mut sl = slices[old].clone();
                service.key = ObjectKey::new("ns", names[i]);
                sl.key = ObjectKey::new("ns", format!("{}-1", names[i]));
                sl.service_name = Some(names[i].to_string());
                renamed_slices.push(sl);
            }
            let s = state(pool(9), rotated, renamed_slices);
            let p = plan(&s, &cfg);
            let host = &p.routes[&prefix];
            assert_eq!(nodes_of(host), best, "rotation {first}: {}", host.reason);
            assert_eq!(host.left_out.len(), 7, "rotation {first}");
            let incremental =
                herald_core::planner::incremental::IncrementalPlanner::new(s.clone(), cfg.clone());
            assert_eq!(incremental.plan(), &p, "rotation {first}");
        }
        // Only in the load-balancer range (outside the /24): no limit.
        let wide = "198.19.49.10";
        let s = state(
            pool(9),
            vec![with_lb(svc("e", &[], true), &[wide])],
            vec![slice("e", "1", &endpoints)],
        );
        let p = plan(&s, &cfg);
        assert_eq!(
            p.routes[&format!("{wide}/32").parse::<IpNet>().unwrap()]
                .next_hops
                .len(),
            9
        );
    }

    #[test]
    fn config_rejects_what_gobgpd_cannot_honour() {
        for (yaml, needle) in [
            ("ecmp: {maxPaths: 256}", "ecmp.maxPaths 256"),
            ("ecmp: {maxPaths: -1}", "maxPaths"),
            (
                "serviceClusterIPs: [{cidr: 10.0.0.0/8, maxPaths: 1000}]",
                "serviceClusterIPs[0].maxPaths 1000",
            ),
            (
                "ecmp: {longestPrefix: {ipv4: 32}}",
                "ecmp.longestPrefix.ipv4 32",
            ),
            (
                "ecmp: {longestPrefix: {ipv6: 128}}",
                "ecmp.longestPrefix.ipv6 128",
            ),
            (
                "ecmp: {longestPrefix: {ipv4: 0}}",
                "ecmp.longestPrefix.ipv4 0",
            ),
            ("ecmp: {maxPath: 16}", "maxPath"),
        ] {
            let e = Config::parse(yaml).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
        assert_eq!(
            Config::parse("ecmp: {maxPaths: 255}")
                .unwrap()
                .ecmp
                .max_paths,
            255
        );
    }

    /// A pool of `size` nodes, those in `not_ready` not Ready, and one /20 range with maxPaths `k`.
    fn spread_case(size: usize, k: usize, not_ready: &BTreeSet<usize>) -> (ClusterState, Config) {
        let mut nodes = pool(size);
        for i in not_ready {
            nodes[*i].ready = false;
        }
        let mut cfg = config("serviceClusterIPs: [{cidr: 198.19.32.0/20}]");
        // Set here, not parsed: the planner takes any width; the config check stops at what
        // gobgpd's send-max can say (255), and the properties are drawn up to 256.
        cfg.ecmp.max_paths = k as u32;
        (state(nodes, vec![], vec![]), cfg)
    }

    /// (prefix, node) of every path of the range and its parts.
    fn range_paths(p: &Plan) -> BTreeSet<(IpNet, String)> {
        p.routes
            .values()
            .filter(|r| r.kind.is_range())
            .flat_map(|r| r.next_hops.iter().map(|h| (r.prefix, h.node.clone())))
            .collect()
    }

    fn arb_pool() -> impl Strategy<Value = (usize, usize, BTreeSet<usize>)> {
        // 1 to 2,000 nodes (mostly fewer, where the corner cases are), K 1 to 256, a few NotReady.
        (
            prop_oneof![1usize..64, 1usize..400, 1usize..2001],
            1usize..=256,
        )
            .prop_flat_map(|(n, k)| {
                (
                    Just(n),
                    Just(k),
                    proptest::collection::btree_set(0..n, 0..n.min(8)),
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// No route above K; every eligible node in some part when parts × K ≥ N; no node in more
        /// than ⌈parts·K/N⌉ + 1 parts; the plan the same for the nodes in any order.
        #[test]
        fn spread_plans_are_bounded_covering_and_balanced((size, k, not_ready) in arb_pool()) {
            let (s, cfg) = spread_case(size, k, &not_ready);
            let p = plan(&s, &cfg);
            let eligible = size - not_ready.len();
            prop_assert!(p.routes.values().all(|r| r.next_hops.len() <= k), "a route above maxPaths {k}");
            let parts = parts_of(&p, "198.19.32.0/20");
            let mut load: BTreeMap<String, usize> = BTreeMap::new();
            for part in &parts {
                for hop in &part.next_hops {
                    *load.entry(hop.node.clone()).or_default() += 1;
                }
            }
            let count = parts.len().max(1);
            if eligible > 0 && count * k >= eligible && size > k {
                prop_assert_eq!(load.len(), eligible, "eligible nodes without a part");
            }
            if !parts.is_empty() && eligible > 0 {
                let bound = (count * k).div_ceil(eligible) + 1;
                prop_assert!(load.values().all(|l| *l <= bound), "a node above {} parts", bound);
            }
            let mut reversed = ClusterState::default();
            s.nodes.values().rev().for_each(|n| reversed.insert_node(Node::clone(n)));
            prop_assert_eq!(&plan(&reversed, &cfg), &p);
            if eligible > 0 {
                if let Err(v) = herald_testkit::invariants::check_plan_invariants(&s, &cfg, &p) {
                    prop_assert!(false, "{v}");
                }
            }
        }

        /// A node going NotReady or Ready again changes at most 2 × its own paths + a few (see
        /// spread::STABILITY_SLACK; the part count follows the pool, not readiness); a
        /// Service changes no range route.
        #[test]
        fn one_node_moves_few_paths_and_services_none((size, k, not_ready) in arb_pool(), which in any::<prop::sample::Index>()) {
            let (s, cfg) = spread_case(size, k, &not_ready);
            let before = plan(&s, &cfg);
            let flipped = which.index(size);
            let mut after_not_ready = not_ready.clone();
            if !after_not_ready.remove(&flipped) {
                after_not_ready.insert(flipped);
            }
            let (s2, _) = spread_case(size, k, &after_not_ready);
            let after = plan(&s2, &cfg);
            let (a, b) = (range_paths(&before), range_paths(&after));
            let name = format!("node-{flipped}");
            let own = a.iter().chain(&b).filter(|(_, n)| *n == name).count();
            let changed = a.symmetric_difference(&b).count();
            let slack = spread::STABILITY_SLACK;
            prop_assert!(changed <= 2 * own + slack, "{} paths changed for a node of {} paths", changed, own);

            let mut with_service = s.clone();
            with_service.insert_service(svc("new", &["198.19.38.11"], true));
            with_service.insert_endpoint_slice(slice("new", "1", &[READY("node-0")]));
            prop_assert_eq!(range_paths(&plan(&with_service, &cfg)), range_paths(&before));
        }
    }
}

/// A plan's explanations are made when asked: each is the one the planner makes with the Service's
/// routes (`plan_service`), and two plans compare equal exactly when their explanations do, found
/// without making those of the Services that did not change.
#[test]
fn explanations_made_when_asked_are_the_planners() {
    let state = scale::cluster(scale::Scale::small(40, 400));
    let config = scale::config();
    let full = plan(&state, &config);
    let context = PlanContext::new(&state, &config);
    let mut slices: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in state.endpoint_slices.values() {
        slices
            .entry(slice.service_key().unwrap())
            .or_default()
            .push(slice);
    }
    assert_eq!(full.services.len(), state.services.len());
    assert!(full.services.keys().eq(state.services.keys()));
    let mut explained = 0;
    for (key, explanation) in full.services.iter() {
        let service = &state.services[key];
        let planned = plan_service(
            &context,
            service,
            slices.get(key).map(Vec::as_slice).unwrap_or_default(),
        )
        .explanation;
        assert_eq!(explanation, planned, "{key}");
        assert_eq!(full.services.get(key), Some(planned), "{key}");
        explained += usize::from(!explanation.endpoint_nodes.is_empty());
    }
    assert!(
        explained > 10,
        "only {explained} Services with endpoint nodes"
    );
    assert_eq!(
        full.services
            .get(&ObjectKey::new("ns-0", "no-such-service")),
        None
    );
    assert!(Plan::default().services.is_empty());

    let mut planner = incremental::IncrementalPlanner::new(state.clone(), config.clone());
    assert_eq!(planner.plan(), &full);
    let policy = |p: TrafficPolicy| {
        state
            .services
            .values()
            .find(|s| s.external_traffic_policy == p && slices.contains_key(&s.key))
            .unwrap()
            .key
            .clone()
    };
    // An endpoint more for a Cluster Service, on a node it had none on: no route and no
    // explanation changes (a Cluster Service's IPs are the ranges'), so the plans are equal.
    let (cluster, local) = (policy(TrafficPolicy::Cluster), policy(TrafficPolicy::Local));
    let on_new_node = |key: &ObjectKey| {
        let mut slice = EndpointSlice::clone(slices[key][0]);
        let used: Vec<String> = slice
            .endpoints
            .iter()
            .filter_map(|e| e.node_name.clone())
            .collect();
        let node = state
            .nodes
            .keys()
            .find(|n| !used.contains(n))
            .unwrap()
            .clone();
        slice.endpoints.push(Endpoint {
            node_name: Some(node),
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        });
        slice
    };
    planner.apply(incremental::Change::EndpointSlice(
        on_new_node(&cluster).into(),
    ));
    assert_eq!(
        planner.plan(),
        &full,
        "a Cluster Service's new endpoint changes nothing planned"
    );
    assert_ne!(planner.plan().services.get(&cluster), None);
    // The same for a Local Service: a new endpoint node, in its explanation (and its host routes).
    planner.apply(incremental::Change::EndpointSlice(
        on_new_node(&local).into(),
    ));
    assert_ne!(planner.plan(), &full);
    let (before, after) = (
        full.services.get(&local).unwrap(),
        planner.plan().services.get(&local).unwrap(),
    );
    assert_eq!(after.endpoint_nodes.len(), before.endpoint_nodes.len() + 1);
    assert_eq!(planner.plan(), &plan(planner.state(), &config));
}
