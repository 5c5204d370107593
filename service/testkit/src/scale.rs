//! A deterministic large cluster for benchmarks and scale tests: nodes, Services and EndpointSlices
//! in the proportions of a big bare-metal cluster, the same every run.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cluster::{
    AddressType, ClusterState, Endpoint, EndpointSlice, Node, ObjectKey, Service, ServiceType,
    TrafficPolicy,
};
use crate::config::Config;

#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub nodes: u32,
    pub services: u32,
    pub endpoints_per_service: u32,
    /// Per mille of Services with externalTrafficPolicy: Local.
    pub local_permille: u32,
    pub external_permille: u32,
    pub load_balancer_permille: u32,
    pub dual_stack_permille: u32,
}

impl Scale {
    /// The scale scenario of the benchmarks: 1,000 nodes, 20,000 Services, 200,000 endpoints;
    /// 10% Local, 10% with external IPs, 5% LoadBalancer, 10% dual stack.
    pub const LARGE: Scale = Scale {
        nodes: 1000,
        services: 20_000,
        endpoints_per_service: 10,
        local_permille: 100,
        external_permille: 100,
        load_balancer_permille: 50,
        dual_stack_permille: 100,
    };

    /// The largest cluster Kubernetes supports (5,000 nodes), in the same mix: 50,000 Services,
    /// 500,000 endpoints. The benchmarks' `--scale large` (or `HERALD_SCALE=large`).
    pub const KUBERNETES_LIMIT: Scale = Scale {
        nodes: 5000,
        services: 50_000,
        ..Scale::LARGE
    };

    /// The scenario a benchmark was asked for: `--scale large` (or `--scale=large`) among its
    /// arguments, else the environment's `HERALD_SCALE`; `large` is [`Scale::KUBERNETES_LIMIT`],
    /// `default` (or nothing) [`Scale::LARGE`]. Other arguments are left alone (cargo passes
    /// `--bench`).
    pub fn selected() -> Result<Scale, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut asked = None;
        for (i, arg) in args.iter().enumerate() {
            if let Some(value) = arg.strip_prefix("--scale=") {
                asked = Some(value.to_string());
            } else if arg == "--scale" {
                asked = Some(
                    args.get(i + 1)
                        .cloned()
                        .ok_or("--scale needs a value: default or large")?,
                );
            }
        }
        let asked = asked
            .or_else(|| std::env::var("HERALD_SCALE").ok())
            .unwrap_or_default();
        match asked.as_str() {
            "" | "default" => Ok(Scale::LARGE),
            "large" => Ok(Scale::KUBERNETES_LIMIT),
            other => Err(format!(
                "unknown scale `{other}`: default (1,000 nodes) or large (5,000 nodes)"
            )),
        }
    }

    /// [`Scale::selected`], or the reason on stderr and exit status 2.
    pub fn selected_or_exit() -> Scale {
        Scale::selected().unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        })
    }

    /// "1,000 nodes, 20,000 Services, 200,000 endpoints".
    pub fn describe(&self) -> String {
        fn thousands(n: u64) -> String {
            let digits = n.to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        format!(
            "{} nodes, {} Services, {} endpoints",
            thousands(self.nodes.into()),
            thousands(self.services.into()),
            thousands(u64::from(self.services) * u64::from(self.endpoints_per_service))
        )
    }

    pub const fn small(nodes: u32, services: u32) -> Scale {
        Scale {
            nodes,
            services,
            endpoints_per_service: 3,
            ..Scale::LARGE
        }
    }
}

/// A small deterministic generator (SplitMix64): no dependency, same numbers on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }
}

pub const CONFIG: &str = "\
serviceClusterIPs: [{cidr: 10.96.0.0/12}, {cidr: 'fd00:96::/108'}]
serviceExternalIPs: [{cidr: 100.64.0.0/16}, {cidr: 'fd00:64::/112'}]
serviceLoadBalancerIPs: [{cidr: 100.65.0.0/16}, {cidr: 'fd00:65::/112'}]
";

/// Added to [`CONFIG`] by the benches that push the plan into gobgpd: at 5,000 nodes, `ecmp:
/// {maxPaths: 64}` (without a limit, a range is a prefix of ~5,000 next hops, which gobgpd takes at
/// a few hundred paths a second: minutes).
pub fn ecmp_config(scale: Scale) -> &'static str {
    if scale.nodes > Scale::LARGE.nodes {
        "ecmp: {maxPaths: 64}\n"
    } else {
        ""
    }
}

pub fn config() -> Config {
    Config::parse(CONFIG).expect("scale config")
}

fn v4(base: u32, index: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(base + index))
}

fn v6(base: u128, index: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(base + u128::from(index)))
}

pub fn node_name(i: u32) -> String {
    format!("node-{i:04}")
}

/// Builds the cluster.
pub fn cluster(scale: Scale) -> ClusterState {
    let mut rng = Rng::new(0x6865_7261_6c64);
    let mut state = ClusterState::default();
    for i in 0..scale.nodes {
        let mut addresses = vec![v4(0x0A00_0000, i + 10)];
        if i % 10 < 9 || scale.dual_stack_permille > 0 {
            addresses.push(v6(0xfd00_0010_0000_0000_0000_0000_0000_0000, i + 10));
        }
        state.insert_node(Node {
            name: node_name(i),
            labels: BTreeMap::from([("kubernetes.io/hostname".to_string(), node_name(i))]),
            ready: i % 200 != 7,
            internal_ips: addresses,
        });
    }
    for s in 0..scale.services {
        let namespace = format!("ns-{}", s % 100);
        let name = format!("svc-{s:05}");
        let dual = rng.below(1000) < scale.dual_stack_permille;
        let local = rng.below(1000) < scale.local_permille;
        let external = rng.below(1000) < scale.external_permille;
        let lb = rng.below(1000) < scale.load_balancer_permille;
        let mut cluster_ips = vec![v4(0x0A60_0000, s + 1).to_string()];
        if dual {
            cluster_ips.push(v6(0xfd00_0096_0000_0000_0000_0000_0000_0000, s + 1).to_string());
        }
        let mut external_ips = Vec::new();
        if external {
            external_ips.push(v4(0x6440_0000, s + 1).to_string());
            if dual {
                external_ips.push(v6(0xfd00_0064_0000_0000_0000_0000_0000_0000, s + 1).to_string());
            }
        }
        let load_balancer_ips = if lb {
            vec![v4(0x6441_0000, s + 1).to_string()]
        } else {
            Vec::new()
        };
        state.insert_service(Service {
            key: ObjectKey::new(namespace.clone(), name.clone()),
            type_: if lb {
                ServiceType::LoadBalancer
            } else {
                ServiceType::ClusterIP
            },
            cluster_ips,
            external_ips,
            load_balancer_ips,
            external_traffic_policy: if local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            internal_traffic_policy: TrafficPolicy::Cluster,
            annotations: BTreeMap::new(),
        });
        let endpoints: Vec<Endpoint> = (0..scale.endpoints_per_service)
            .map(|_| Endpoint {
                node_name: Some(node_name(rng.below(scale.nodes))),
                ready: Some(rng.below(20) != 0),
                serving: Some(true),
                terminating: Some(false),
            })
            .collect();
        // A dual-stack Service's endpoints are in two slices, one per family, as the
        // EndpointSlice controller makes them.
        if dual {
            state.insert_endpoint_slice(EndpointSlice {
                key: ObjectKey::new(namespace.clone(), format!("{name}-v6abc")),
                service_name: Some(name.clone()),
                address_type: AddressType::Ipv6,
                endpoints: Vec::clone(&endpoints),
            });
        }
        state.insert_endpoint_slice(EndpointSlice {
            key: ObjectKey::new(namespace, format!("{name}-abcde")),
            service_name: Some(name),
            address_type: AddressType::Ipv4,
            endpoints,
        });
    }
    state
}

/// A change to one EndpointSlice of the cluster: an endpoint flips readiness or moves node.
pub fn endpoint_change(state: &ClusterState, scale: Scale, rng: &mut Rng) -> EndpointSlice {
    let s = rng.below(scale.services);
    let key = ObjectKey::new(format!("ns-{}", s % 100), format!("svc-{s:05}-abcde"));
    let mut slice = EndpointSlice::clone(state.endpoint_slices.get(&key).expect("generated slice"));
    if !slice.endpoints.is_empty() {
        let e = rng.below(slice.endpoints.len() as u32) as usize;
        let endpoint = &mut slice.endpoints[e];
        if rng.below(2) == 0 {
            endpoint.ready = Some(!endpoint.is_ready());
        } else {
            endpoint.node_name = Some(node_name(rng.below(scale.nodes)));
        }
    }
    slice
}
