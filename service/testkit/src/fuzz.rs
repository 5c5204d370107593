//! The bodies of herald's fuzz targets, one function per target: bytes in, `Err` with a readable
//! account of a broken property out (the target turns it into a panic, which libFuzzer reports as a
//! crash). A panic inside herald is a crash too.
//!
//! This file is shared: the targets in `fuzz_targets/` call it, and `service/tests/hostile_input.rs`
//! includes it (`#[path]`) to replay every input kept in `fuzz/regressions/<target>/` through exactly
//! the same checks, on the stable toolchain and without libFuzzer.
//!
//! What a target checks beyond "no panic":
//! - `cluster_state`: `parse_manifest` gives a state or an error with a message; a state is planned
//!   under two configs and the plan keeps [`check_plan_invariants`]; a List that reads in parts
//!   (as a large one is read) reads the same whole.
//! - `config`: `Config::parse` gives a config or an error with a message; every range it accepts is a
//!   canonical CIDR; a config is planned against the yaobank cluster and the plan keeps the invariants.
//! - `selector`: `LabelSelector` parses or says why; one that parses prints (Display) as text that
//!   parses to the same selector, and matching any labels does not panic and agrees between the two.
//! - `planner`: a small cluster and config built from the bytes (`arbitrary`), with IPs drawn from a few
//!   shared ranges so that Services, nodes, ranges and deny prefixes collide, and spelled in hostile ways
//!   (leading zeros, zone ids, v4-mapped, padded, with a prefix length, junk); the plan keeps the
//!   invariants, is deterministic, and [`Guard::apply`] only ever takes routes or next hops away.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::invariants::{check_guarded, check_plan_invariants};
use arbitrary::{Arbitrary, Unstructured};
use herald_core::cluster::{
    AddressType, ClusterState, Endpoint, EndpointSlice, Node, ObjectKey, Service, TrafficPolicy,
};
use herald_core::config::{
    Cidr, Community, Config, EcmpConfig, LargeCommunity, LongestPrefix, OtherPool, PoolName,
    RangeConfig,
};
use herald_core::guard::{Guard, GuardConfig};
use herald_core::planner::{
    COMMUNITIES_ANNOTATION, EXCLUDE_LABEL, LARGE_COMMUNITIES_ANNOTATION, plan,
};
use herald_core::selector::LabelSelector;
use herald_k8s::{parse_manifest, parse_manifest_in_parts};
use ipnet::IpNet;

/// The yaobank lab's config and cluster, the realistic pair.
const YAOBANK_CONFIG: &str = include_str!("../../../examples/yaobank/herald.yaml");
const YAOBANK_STATE: &str = include_str!("../../../examples/yaobank/cluster-state.yaml");

/// A config with wide, overlapping ranges of both families and deny prefixes inside them, so that
/// whatever IPs a fuzzed cluster holds, most rules of the planner are reached.
pub const WIDE_CONFIG: &str = "\
nodeSelector: '!no-bgp'
serviceClusterIPs:
  - cidr: 10.0.0.0/8
  - cidr: 198.19.32.0/20
  - cidr: fd00::/8
  - cidr: 10.96.0.1/32
serviceExternalIPs:
  - cidr: 198.19.48.0/20
  - cidr: 192.168.0.0/16
  - cidr: 8.0.0.0/8
  - cidr: 2001:db8::/32
serviceLoadBalancerIPs:
  - cidr: 198.19.0.0/16
  - cidr: 10.0.0.0/16
denyPrefixes:
  - 10.255.0.0/16
  - 198.19.0.0/24
  - fd00:ff::/32
allowedCommunities: ['65000:1']
";

fn yaobank_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::parse(YAOBANK_CONFIG).expect("examples/yaobank/herald.yaml parses"))
}

fn wide_config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| Config::parse(WIDE_CONFIG).expect("WIDE_CONFIG parses"))
}

fn yaobank_state() -> &'static ClusterState {
    static S: OnceLock<ClusterState> = OnceLock::new();
    S.get_or_init(|| {
        parse_manifest(YAOBANK_STATE).expect("examples/yaobank/cluster-state.yaml parses")
    })
}

/// Bytes as text, the way herald's callers read files: they reject invalid UTF-8 before parsing
/// (`read_to_string`), so the parsers only ever see `&str`; such bytes are skipped here.
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// An error is for a person: it must say something.
pub fn check_error_message(what: &str, message: &str) -> Result<(), String> {
    if message.trim().is_empty() {
        return Err(format!("{what} failed with an empty error message"));
    }
    Ok(())
}

/// Plans `state` under `config` and checks the invariants, naming the config on failure.
pub fn check_planned(
    state: &ClusterState,
    config: &Config,
    config_name: &str,
) -> Result<(), String> {
    let planned = plan(state, config);
    check_plan_invariants(state, config, &planned)
        .map_err(|e| format!("under {config_name}: {e}"))?;
    if plan(state, config) != planned {
        return Err(format!(
            "under {config_name}: planning the same input twice gave two plans"
        ));
    }
    Ok(())
}

/// Target `cluster_state`: the cluster-state YAML parser, then the planner on what it read.
pub fn cluster_state(data: &[u8]) -> Result<(), String> {
    let Some(text) = text(data) else {
        return Ok(());
    };
    let parsed = parse_manifest(text);
    // A large List is read in parts (one per core): whatever it reads so must read so whole. The
    // parts have budgets of their own (aliases, nesting), so a text over the whole's may read in
    // parts: that alone is not a difference.
    if let Some(in_parts) = parse_manifest_in_parts(text, 3) {
        match &parsed {
            Ok(whole) if *whole == in_parts => {}
            Err(herald_k8s::ManifestError::Yaml(e)) if e.contains("budget") => {}
            other => {
                return Err(format!(
                    "the List read in parts differs from the List read whole: {other:?}"
                ));
            }
        }
    }
    match parsed {
        Err(e) => check_error_message("parse_manifest", &e.to_string()),
        Ok(state) => {
            for node in state.nodes.values() {
                if node.name.is_empty() {
                    return Err("parse_manifest accepted a Node without a name".to_string());
                }
            }
            for key in state.services.keys() {
                if key.name.is_empty() {
                    return Err("parse_manifest accepted a Service without a name".to_string());
                }
            }
            check_planned(&state, yaobank_config(), "examples/yaobank/herald.yaml")?;
            check_planned(&state, wide_config(), "WIDE_CONFIG")
        }
    }
}

/// Target `config`: the config parser, then the planner with the config it read.
pub fn config(data: &[u8]) -> Result<(), String> {
    let Some(text) = text(data) else {
        return Ok(());
    };
    match Config::parse(text) {
        Err(e) => check_error_message("Config::parse", &e),
        Ok(config) => {
            let ranges = config
                .service_cluster_ips
                .iter()
                .chain(&config.service_external_ips)
                .chain(&config.service_load_balancer_ips)
                .map(|r| &r.cidr)
                .chain(&config.deny_prefixes);
            for cidr in ranges {
                if cidr.0.trunc() != cidr.0 {
                    return Err(format!(
                        "Config::parse accepted {cidr}, which has host bits set"
                    ));
                }
            }
            if config
                .gobgp
                .as_ref()
                .is_some_and(|g| g.batch_size == 0 || g.anti_entropy_interval.0.is_zero())
            {
                return Err(
                    "Config::parse accepted a zero gobgp.batchSize or antiEntropyInterval"
                        .to_string(),
                );
            }
            // The reconciler schedules `now + antiEntropyInterval`; Instant + Duration panics on overflow.
            let interval = config.gobgp.as_ref().map(|g| g.anti_entropy_interval.0);
            if let Some(interval) = interval.filter(|i| Instant::now().checked_add(*i).is_none()) {
                return Err(format!(
                    "Config::parse accepted gobgp.antiEntropyInterval {interval:?}, which overflows the clock"
                ));
            }
            check_planned(yaobank_state(), &config, "the fuzzed config")?;
            // The guard as `run` sets it up from the config, on a flapping node, with the plans of this
            // config and (whose ranges surely give routes) of the yaobank one.
            // With its withdrawal brake: one node gone is never a wave, so the guard only takes away.
            let guard_config = GuardConfig {
                hold_down: config.guard.hold_down.0,
                max_routes: config.guard.max_routes,
                brake: config.guard.withdrawal_brake.brake(),
            };
            let mut fewer_state = yaobank_state().clone();
            fewer_state.nodes.remove("node1");
            for ranges in [&config, yaobank_config()] {
                let full = plan(yaobank_state(), ranges);
                let fewer = plan(&fewer_state, ranges);
                let mut guard = Guard::new(guard_config);
                let t0 = Instant::now();
                for (step, raw) in [&full, &fewer, &full].into_iter().enumerate() {
                    let guarded = guard.apply(raw, t0 + Duration::from_millis(step as u64));
                    check_guarded(raw, &guarded.plan, guard_config.max_routes)
                        .map_err(|e| format!("guard step {step} with {guard_config:?}: {e}"))?;
                }
            }
            Ok(())
        }
    }
}

/// Target `selector`: the label-selector parser, Display round trip and matching.
pub fn selector(data: &[u8]) -> Result<(), String> {
    let Some(text) = text(data) else {
        return Ok(());
    };
    let selector = match text.parse::<LabelSelector>() {
        Err(e) => return check_error_message("LabelSelector::from_str", &e),
        Ok(selector) => selector,
    };
    let printed = selector.to_string();
    let reparsed = printed.parse::<LabelSelector>().map_err(|e| {
        format!("selector {text:?} printed as {printed:?}, which does not parse: {e}")
    })?;
    if reparsed != selector {
        return Err(format!(
            "selector {text:?} printed as {printed:?}, which parses to another selector"
        ));
    }
    if selector.is_empty() != text.trim().is_empty() {
        return Err(format!(
            "selector {text:?}: is_empty() is {}",
            selector.is_empty()
        ));
    }
    // Label sets made of the selector's own words, so that keys and values actually meet.
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .filter(|w| !w.is_empty())
        .take(16)
        .collect();
    let mut label_sets: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    label_sets.push(
        words
            .iter()
            .map(|w| (w.to_string(), String::new()))
            .collect(),
    );
    label_sets.push(
        words
            .windows(2)
            .map(|w| (w[0].to_string(), w[1].to_string()))
            .collect(),
    );
    label_sets.push(
        words
            .iter()
            .skip(1)
            .step_by(2)
            .zip(words.iter().skip(2).step_by(2))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    for labels in &label_sets {
        let matched = selector.matches(labels);
        if matched != reparsed.matches(labels) {
            return Err(format!(
                "selector {text:?} and its reprint {printed:?} disagree on {labels:?}"
            ));
        }
        if selector.is_empty() && !matched {
            return Err(format!("empty selector {text:?} does not match {labels:?}"));
        }
    }
    Ok(())
}

/// Target `planner`: a cluster and config made from the bytes, planned and guarded.
pub fn planner(data: &[u8]) -> Result<(), String> {
    let Ok(input) = PlannerInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return Ok(());
    };
    let (state, config) = input.build();
    check_planned(&state, &config, "the fuzzed config")
        .map_err(|e| format!("{e}\n{}", describe(&state, &config)))?;

    // The guard on a sequence of plans: the full one, one without the first node, the full one again.
    let guard_config = GuardConfig {
        hold_down: Duration::from_millis(u64::from(input.guard.hold_down_ms) * 10),
        max_routes: input.guard.max_routes.map(usize::from),
        // One node gone is never a wave: the brake holds nothing, and the guard only takes away.
        brake: Some(herald_core::brake::BrakeConfig::default()),
    };
    let mut fewer = state.clone();
    if let Some(first) = fewer.nodes.keys().next().cloned() {
        fewer.nodes.remove(&first);
    }
    let full_plan = plan(&state, &config);
    let fewer_plan = plan(&fewer, &config);
    let mut guard = Guard::new(guard_config);
    let t0 = Instant::now();
    let mut at = t0;
    for (step, raw) in [&full_plan, &fewer_plan, &full_plan, &full_plan]
        .into_iter()
        .enumerate()
    {
        at += Duration::from_millis(
            u64::from(input.guard.steps_ms[step % input.guard.steps_ms.len()]) * 5,
        );
        let guarded = guard.apply(raw, at);
        check_guarded(raw, &guarded.plan, guard_config.max_routes).map_err(|e| {
            format!(
                "guard step {step} ({guard_config:?}): {e}\n{}",
                describe(&state, &config)
            )
        })?;
        if let Some(wake) = guarded.wake_at.filter(|wake| *wake <= at) {
            return Err(format!(
                "guard step {step}: asks to wake at {wake:?}, not after now {at:?}"
            ));
        }
    }
    Ok(())
}

/// A short account of a fuzzed input, for the crash report.
pub fn describe(state: &ClusterState, config: &Config) -> String {
    let ranges = |list: &[RangeConfig]| {
        list.iter()
            .map(|r| r.cidr.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "config: nodeSelector {:?}; cluster [{}]; external [{}]; load balancer [{}]; deny [{}]\n",
        config.node_selector.to_string(),
        ranges(&config.service_cluster_ips),
        ranges(&config.service_external_ips),
        ranges(&config.service_load_balancer_ips),
        config
            .deny_prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    );
    for node in state.nodes.values() {
        out.push_str(&format!(
            "node {} ready={} labels={:?} ips={:?}\n",
            node.name, node.ready, node.labels, node.internal_ips
        ));
    }
    for s in state.services.values() {
        out.push_str(&format!(
            "service {} type={:?} {:?} cluster={:?} external={:?} lb={:?} annotations={:?}\n",
            s.key,
            s.type_,
            s.external_traffic_policy,
            s.cluster_ips,
            s.external_ips,
            s.load_balancer_ips,
            s.annotations
        ));
    }
    for slice in state.endpoint_slices.values() {
        out.push_str(&format!(
            "slice {} service={:?} endpoints={:?}\n",
            slice.key, slice.service_name, slice.endpoints
        ));
    }
    out
}

// ---- the planner's structured input ----

const V4_NETS: &[&str] = &[
    "10.0.0.",
    "10.96.0.",
    "198.19.48.",
    "198.19.0.",
    "192.168.1.",
    "8.0.0.",
    "0.0.0.",
    "255.255.255.",
];
const V6_NETS: &[&str] = &[
    "fd00::",
    "fd00:ff::",
    "2001:db8::",
    "fe80::",
    "::ffff:a00:",
    "::",
];
const SPECIAL_IPS: &[&str] = &[
    "None",
    "",
    " ",
    "0.0.0.0",
    "::",
    "255.255.255.255",
    "1.2.3",
    "1.2.3.4.5",
    "0x0a.0.0.1",
    "10.0.0.256",
    "10.0.0.-1",
    "010.0.0.1",
    "8.0.0.1",
    "10.0.0.1",
    "10.0.0.01",
    "0177.0.0.1",
    "10.1",
    "167772161",
    "::ffff:10.0.0.1",
    "fe80::1%eth0",
    "fd00::1%0",
    "[fd00::1]",
    "10.0.0.1:80",
    "10.0.0.1/32",
    "FD00::1",
    "fd00:0:0:0:0:0:0:1",
    "١٠.0.0.1",
    "10.0.0.1\0",
    "10.0.0.1\n",
    "\u{feff}10.0.0.1",
    "none",
    "None ",
];
const NODE_NAMES: &[&str] = &["n0", "n1", "n2", "n3", "ghost"];
const NAMESPACES: &[&str] = &["default", "ns", ""];
const SERVICE_NAMES: &[&str] = &["a", "b", "c", ""];
const SERVICE_TYPES: &[&str] = &[
    "LoadBalancer",
    "ClusterIP",
    "NodePort",
    "ExternalName",
    "",
    "clusterip",
];
const LABEL_KEYS: &[&str] = &["pool", "zone", "bgp", "no-bgp", EXCLUDE_LABEL];
const LABEL_VALUES: &[&str] = &["a", "b", "z1", ""];
const SELECTORS: &[&str] = &[
    "",
    "pool=a",
    "pool!=a",
    "zone in (z1,b)",
    "zone notin (z1)",
    "bgp",
    "!no-bgp",
    "pool=a,!bgp",
];
const COMMUNITY_TEXTS: &[&str] = &[
    "65000:1",
    "65000:1, 65000:2",
    "65000:1,,",
    "70000:1",
    "1:2:3",
    "-1:2",
    " : ",
    "65000:1:1",
];

fn pick<'a>(pool: &[&'a str], i: u8) -> &'a str {
    pool[usize::from(i) % pool.len()]
}

/// An IP as a Service or a Node might spell it: mostly plain addresses from a few shared networks (so
/// that they meet ranges, deny prefixes and each other), sometimes in a hostile spelling.
#[derive(Debug, Clone, Arbitrary)]
struct IpText {
    form: u8,
    net: u8,
    host: u8,
}

impl IpText {
    fn render(&self) -> String {
        let IpText { form, net, host } = *self;
        let v4 = || format!("{}{}", pick(V4_NETS, net), host % 16);
        let v6 = || format!("{}{:x}", pick(V6_NETS, net), host % 16);
        match form % 32 {
            0..=15 => v4(),
            16..=21 => v6(),
            22 => v4()
                .split('.')
                .map(|o| format!("{o:0>3}"))
                .collect::<Vec<_>>()
                .join("."),
            23 => format!("{}%{}", v6(), pick(&["eth0", "0", "", "lo%1"], host)),
            24 => {
                let p = pick(&[" ", "\t", "\n", "\r\n", "\u{a0}", "\0"], host / 16);
                format!("{p}{}{p}", v4())
            }
            25 => format!("{}/{}", v4(), host % 40),
            26 => format!("::ffff:{}", v4()),
            27 => v6().to_uppercase(),
            _ => pick(SPECIAL_IPS, host).to_string(),
        }
    }
}

/// A CIDR for the config; only what `Cidr`'s parser accepts is kept, as `Config::parse` would.
#[derive(Debug, Clone, Arbitrary)]
struct CidrInput {
    base: IpText,
    len: u8,
}

impl CidrInput {
    fn build(&self) -> Option<Cidr> {
        let addr: IpAddr = self.base.render().trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let net = IpNet::new(addr, self.len % (max + 1)).ok()?.trunc();
        net.to_string().parse().ok()
    }
}

#[derive(Debug, Clone, Arbitrary)]
struct RangeInput {
    cidr: CidrInput,
    communities: Vec<(u16, u16)>,
    large_communities: Vec<(u32, u32, u32)>,
    /// Small widths, where ranges are spread over few nodes each.
    max_paths: Option<u8>,
}

#[derive(Debug, Clone, Arbitrary)]
enum SelectorInput {
    Pool(u8),
    Text(String),
}

#[derive(Debug, Clone, Arbitrary)]
struct ConfigInput {
    node_selector: SelectorInput,
    cluster: Vec<RangeInput>,
    external: Vec<RangeInput>,
    load_balancer: Vec<RangeInput>,
    deny: Vec<CidrInput>,
    allowed_communities: Vec<(u16, u16)>,
    allowed_large_communities: Vec<(u32, u32, u32)>,
    /// This pool's name and the other pools' ranges (one other pool, "pool-m").
    pool: u8,
    other_pool: Vec<CidrInput>,
    /// ecmp.maxPaths (small: the fuzzed pools are small) and ecmp.longestPrefix.
    max_paths: u8,
    longest_prefix: (u8, u8),
}

#[derive(Debug, Clone, Arbitrary)]
struct NodeInput {
    name: u8,
    labels: Vec<(u8, u8)>,
    /// Not Ready when this is 0 mod 4.
    ready: u8,
    ips: Vec<IpText>,
}

#[derive(Debug, Clone, Arbitrary)]
enum AnnotationInput {
    Pool(u8),
    Junk(String),
}

#[derive(Debug, Clone, Arbitrary)]
struct ServiceInput {
    namespace: u8,
    name: u8,
    type_: u8,
    /// Cluster policy when this is 0 mod 4: Local is the policy with host routes.
    policy: u8,
    cluster_ips: Vec<IpText>,
    external_ips: Vec<IpText>,
    load_balancer_ips: Vec<IpText>,
    /// Any text, into the list picked by the number.
    junk_ip: Option<(u8, String)>,
    /// The Service's own EndpointSlice.
    endpoints: Vec<EndpointInput>,
    communities: Option<AnnotationInput>,
    large_communities: Option<AnnotationInput>,
    /// internalTrafficPolicy Local when odd.
    internal_policy: u8,
    /// The own slice's addressType ([`address_type`]).
    family: u8,
}

#[derive(Debug, Clone, Arbitrary)]
struct EndpointInput {
    node: Option<u8>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

impl EndpointInput {
    fn build(&self) -> Endpoint {
        Endpoint {
            node_name: self.node.map(|n| pick(NODE_NAMES, n).to_string()),
            ready: self.ready,
            serving: self.serving,
            terminating: self.terminating,
        }
    }
}

/// An EndpointSlice of its own, which may belong to any Service or none.
#[derive(Debug, Clone, Arbitrary)]
struct SliceInput {
    namespace: u8,
    name: u8,
    service: Option<u8>,
    endpoints: Vec<EndpointInput>,
    family: u8,
}

/// An addressType: mostly IPv4 (as most of the IPs drawn), sometimes IPv6, FQDN or one the API
/// does not define.
fn address_type(n: u8) -> AddressType {
    match n % 16 {
        0..=11 => AddressType::Ipv4,
        12..=13 => AddressType::Ipv6,
        14 => AddressType::Fqdn,
        _ => AddressType::Other("ipv4".to_string()),
    }
}

#[derive(Debug, Clone, Arbitrary)]
struct GuardInput {
    hold_down_ms: u8,
    max_routes: Option<u8>,
    steps_ms: [u8; 4],
}

/// The planner target's input: a small cluster, a config and guard settings.
#[derive(Debug, Clone, Arbitrary)]
pub struct PlannerInput {
    config: ConfigInput,
    guard: GuardInput,
    nodes: Vec<NodeInput>,
    services: Vec<ServiceInput>,
    slices: Vec<SliceInput>,
}

fn annotation(input: &Option<AnnotationInput>) -> Option<String> {
    input.as_ref().map(|a| match a {
        AnnotationInput::Pool(i) => pick(COMMUNITY_TEXTS, *i).to_string(),
        AnnotationInput::Junk(s) => s.clone(),
    })
}

impl PlannerInput {
    /// The cluster state and config this input stands for.
    pub fn build(&self) -> (ClusterState, Config) {
        let c = &self.config;
        let ranges = |list: &[RangeInput]| -> Vec<RangeConfig> {
            list.iter()
                .filter_map(|r| {
                    Some(RangeConfig {
                        cidr: r.cidr.build()?,
                        communities: r
                            .communities
                            .iter()
                            .map(|(a, b)| Community(u32::from(*a) << 16 | u32::from(*b)))
                            .collect(),
                        large_communities: r
                            .large_communities
                            .iter()
                            .map(|(a, b, c)| LargeCommunity(*a, *b, *c))
                            .collect(),
                        max_paths: r.max_paths.map(|k| u32::from(k % 8)),
                    })
                })
                .collect()
        };
        let node_selector = match &c.node_selector {
            SelectorInput::Pool(i) => pick(SELECTORS, *i).parse().expect("pool selectors parse"),
            SelectorInput::Text(t) => t.parse().unwrap_or_default(),
        };
        let config = Config {
            node_selector,
            service_cluster_ips: ranges(&c.cluster),
            service_external_ips: ranges(&c.external),
            service_load_balancer_ips: ranges(&c.load_balancer),
            deny_prefixes: c.deny.iter().filter_map(CidrInput::build).collect(),
            allowed_communities: c
                .allowed_communities
                .iter()
                .map(|(a, b)| Community(u32::from(*a) << 16 | u32::from(*b)))
                .collect(),
            allowed_large_communities: c
                .allowed_large_communities
                .iter()
                .map(|(a, b, c)| LargeCommunity(*a, *b, *c))
                .collect(),
            pool: PoolName(pick(&["pool-a", "pool-z"], c.pool).to_string()),
            ecmp: EcmpConfig {
                max_paths: u32::from(c.max_paths % 6),
                // As the config check allows: 1..=31 and 1..=127.
                longest_prefix: LongestPrefix {
                    ipv4: 1 + c.longest_prefix.0 % 31,
                    ipv6: 1 + c.longest_prefix.1 % 127,
                },
            },
            other_pools: {
                let ranges: Vec<Cidr> = c.other_pool.iter().filter_map(CidrInput::build).collect();
                if ranges.is_empty() {
                    Vec::new()
                } else {
                    vec![OtherPool {
                        name: PoolName("pool-m".to_string()),
                        ranges,
                    }]
                }
            },
            ..Config::default()
        };

        let mut state = ClusterState::default();
        for n in &self.nodes {
            state.insert_node(Node {
                name: pick(NODE_NAMES, n.name).to_string(),
                labels: n
                    .labels
                    .iter()
                    .map(|(k, v)| {
                        (
                            pick(LABEL_KEYS, *k).to_string(),
                            pick(LABEL_VALUES, *v).to_string(),
                        )
                    })
                    .collect(),
                ready: n.ready % 4 != 0,
                // As `from_node` reads them: what does not parse is dropped.
                internal_ips: n
                    .ips
                    .iter()
                    .filter_map(|ip| ip.render().parse().ok())
                    .collect(),
            });
        }
        for s in &self.services {
            let mut annotations = BTreeMap::new();
            if let Some(v) = annotation(&s.communities) {
                annotations.insert(COMMUNITIES_ANNOTATION.to_string(), v);
            }
            if let Some(v) = annotation(&s.large_communities) {
                annotations.insert(LARGE_COMMUNITIES_ANNOTATION.to_string(), v);
            }
            let key = ObjectKey::new(pick(NAMESPACES, s.namespace), pick(SERVICE_NAMES, s.name));
            let mut lists = [&s.cluster_ips, &s.external_ips, &s.load_balancer_ips]
                .map(|ips| ips.iter().map(IpText::render).collect::<Vec<String>>());
            if let Some((list, junk)) = &s.junk_ip {
                lists[usize::from(*list) % 3].push(junk.clone());
            }
            let [cluster_ips, external_ips, load_balancer_ips] = lists;
            if !s.endpoints.is_empty() {
                state.insert_endpoint_slice(EndpointSlice {
                    key: ObjectKey::new(key.namespace.clone(), format!("{}-own", key.name)),
                    service_name: Some(key.name.clone()),
                    // Mostly the family of the Service's first IP, as the EndpointSlice controller
                    // makes them; sometimes anything.
                    address_type: match cluster_ips
                        .iter()
                        .chain(&external_ips)
                        .chain(&load_balancer_ips)
                        .next()
                    {
                        Some(ip) if s.family % 4 != 0 => {
                            if ip
                                .trim()
                                .parse::<std::net::IpAddr>()
                                .is_ok_and(|ip| ip.is_ipv6())
                            {
                                AddressType::Ipv6
                            } else {
                                AddressType::Ipv4
                            }
                        }
                        _ => address_type(s.family),
                    },
                    endpoints: s.endpoints.iter().map(EndpointInput::build).collect(),
                });
            }
            state.insert_service(Service {
                key,
                type_: pick(SERVICE_TYPES, s.type_).into(),
                cluster_ips,
                external_ips,
                load_balancer_ips,
                external_traffic_policy: if s.policy % 4 == 0 {
                    TrafficPolicy::Cluster
                } else {
                    TrafficPolicy::Local
                },
                internal_traffic_policy: if s.internal_policy % 2 == 0 {
                    TrafficPolicy::Cluster
                } else {
                    TrafficPolicy::Local
                },
                annotations,
            });
        }
        for (i, sl) in self.slices.iter().enumerate() {
            state.insert_endpoint_slice(EndpointSlice {
                key: ObjectKey::new(
                    pick(NAMESPACES, sl.namespace),
                    format!("{}-{i}", pick(SERVICE_NAMES, sl.name)),
                ),
                service_name: sl.service.map(|s| pick(SERVICE_NAMES, s).to_string()),
                address_type: address_type(sl.family),
                endpoints: sl.endpoints.iter().map(EndpointInput::build).collect(),
            });
        }
        (state, config)
    }
}
