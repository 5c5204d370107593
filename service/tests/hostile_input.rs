//! Hostile input: every bad cluster state, config or selector gets an error that says what is wrong,
//! never a panic, and whatever is accepted is planned without breaking the planner's invariants
//! (`herald_testkit::invariants`).
//!
//! Two sources of inputs, through the same checks as the fuzz targets (`herald_testkit::fuzz`, the
//! targets' bodies):
//! - every input the fuzzers ever crashed on, kept in `fuzz/regressions/<target>/` by `scripts/fuzz.sh`;
//! - a hand-written table of known-nasty inputs: deep nesting, alias bombs, huge numbers and lines,
//!   NUL bytes, duplicate keys, wrong types at every level, IPs spelled to fool a lenient parser.

use herald_testkit::fuzz;

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_core::cluster::{
    AddressType, ClusterState, Endpoint, EndpointSlice, Node, ObjectKey, Service, ServiceType,
    TrafficPolicy,
};
use herald_core::config::Config;
use herald_core::guard::{Guard, GuardConfig};
use herald_core::plan::{IpOutcome, Plan, RefusalCause, Route};
use herald_core::planner::plan;
use herald_core::selector::LabelSelector;
use herald_k8s::parse_manifest;
use herald_testkit::invariants::check_plan_invariants;

/// No input may take longer than this to be read (they are all small or bounded by the parser's budget).
const SLOW: Duration = Duration::from_secs(10);

type Target = fn(&[u8]) -> Result<(), String>;
const TARGETS: [(&str, Target); 4] = [
    ("cluster_state", fuzz::cluster_state),
    ("config", fuzz::config),
    ("planner", fuzz::planner),
    ("selector", fuzz::selector),
];

fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target)
}

/// Runs `f`, turning a panic into an `Err` with its message.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic with a non-string payload".to_string())
    })
}

fn run_target(name: &str, target: Target, input: &[u8]) -> Result<(), String> {
    let started = Instant::now();
    let result = no_panic(|| target(input))
        .map_err(|p| format!("panicked: {p}"))
        .and_then(|r| r);
    let took = started.elapsed();
    result?;
    if took > SLOW {
        return Err(format!("{name} took {took:?}"));
    }
    Ok(())
}

#[test]
fn every_kept_fuzz_regression_passes() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let Ok(dir) = std::fs::read_dir(regressions_dir(name)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = dir
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            if file.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            replayed += 1;
            if let Err(e) = run_target(name, target, &bytes) {
                failures.push(format!("{}: {e}", file.display()));
            }
        }
    }
    // fuzz/regressions/ holds at least the config crash found once; none replayed means the
    // directory moved or the names changed, and this test would pass reading nothing.
    assert!(
        replayed > 0,
        "no fuzz regression replayed: is {} still where the fuzz targets keep them?",
        regressions_dir("config").display()
    );
    assert!(
        failures.is_empty(),
        "{} of {replayed} fuzz regression(s) fail:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---- cluster state ----

/// The error `parse_manifest` gives for `input`, after checking it is an error, through the fuzz
/// target's checks too; each fragment must appear in the message, which must stay readable in size.
fn manifest_error(input: &str, fragments: &[&str]) -> String {
    run_target("cluster_state", fuzz::cluster_state, input.as_bytes()).unwrap();
    let started = Instant::now();
    let message = match no_panic(|| parse_manifest(input)) {
        Err(p) => panic!("parse_manifest panicked on {:?}: {p}", preview(input)),
        Ok(Ok(state)) => panic!("parse_manifest accepted {:?} as {state:?}", preview(input)),
        Ok(Err(e)) => e.to_string(),
    };
    assert!(
        started.elapsed() < SLOW,
        "{:?} took {:?}",
        preview(input),
        started.elapsed()
    );
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "error for {:?} should mention {fragment:?}: {message}",
            preview(input)
        );
    }
    assert!(
        message.len() < 4096,
        "error for {:?} is {} bytes long: {}",
        preview(input),
        message.len(),
        preview(&message)
    );
    message
}

/// Like [`manifest_error`], where the message may name the place either way: the YAML reader by line
/// and column, the object reader by kind and name.
fn manifest_error_at(input: &str, line: usize, object: &str) -> String {
    let message = manifest_error(input, &[]);
    assert!(
        message.contains(&format!("line {line} ")) || message.contains(object),
        "error for {:?} names neither line {line} nor {object}: {message}",
        preview(input)
    );
    message
}

/// The state `parse_manifest` reads from `input`, after checking it plans within the invariants.
fn manifest_ok(input: &str) -> ClusterState {
    run_target("cluster_state", fuzz::cluster_state, input.as_bytes()).unwrap();
    match parse_manifest(input) {
        Ok(state) => state,
        Err(e) => panic!("parse_manifest refused {:?}: {e}", preview(input)),
    }
}

fn preview(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_string();
    }
    let cut = (0..=200)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}... ({} bytes)", &s[..cut], s.len())
}

fn service_yaml(spec: &str) -> String {
    format!("kind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n{spec}")
}

#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    manifest_error(&"[".repeat(100_000), &["malformed YAML"]);
    manifest_error(
        &format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000)),
        &["malformed YAML"],
    );
    manifest_error(&"{a: ".repeat(5_000), &["malformed YAML"]);
    let block: String = (0..5_000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect();
    manifest_error(&block, &["malformed YAML"]);
    let lists: String = (0..5_000)
        .map(|i| format!("{}- \n", "  ".repeat(i)))
        .collect();
    manifest_error(&lists, &["malformed YAML"]);
    // Nesting the YAML budget allows, where a string is expected: refused by the object reader.
    let deep_value = format!("{}x{}", "[".repeat(40), "]".repeat(40));
    manifest_error(
        &service_yaml(&format!("  clusterIP: {deep_value}\n")),
        &["Service web", "invalid type"],
    );
}

#[test]
fn alias_bombs_are_refused_quickly() {
    // Billion laughs: 9 levels of 10 aliases each.
    let mut bomb = String::from(
        "a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 10].join(",");
        bomb.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    manifest_error(&bomb, &["malformed YAML"]);
    // The same bomb inside a Service's labels.
    let mut labels =
        String::from("kind: Service\nmetadata:\n  name: web\n  x0: &x0 [a,a,a,a,a,a,a,a,a,a]\n");
    for level in 1..10 {
        let refs = vec![format!("*x{}", level - 1); 10].join(",");
        labels.push_str(&format!("  x{level}: &x{level} [{refs}]\n"));
    }
    manifest_error(&labels, &["malformed YAML"]);
    // Many aliases of a large anchor.
    let big = format!(
        "big: &big \"{}\"\nrefs: [{}]\n",
        "x".repeat(100_000),
        vec!["*big"; 2_000].join(",")
    );
    manifest_error(&big, &["malformed YAML"]);
    // An alias of an anchor not (yet) defined, and a self-referencing one.
    manifest_error("kind: Service\nmetadata: *m\n", &["malformed YAML"]);
    manifest_error("a: &a [*a]\n", &["malformed YAML"]);
}

#[test]
fn huge_numbers_are_type_errors_not_overflows() {
    for value in [
        "99999999999999999999999999999999",
        "-99999999999999999999",
        "1e400",
        "-1e400",
        ".inf",
        ".nan",
        "0x7fffffffffffffffff",
        "1e30",
        "2147483648",
    ] {
        manifest_error_at(
            &service_yaml(&format!("  ports:\n  - port: {value}\n")),
            7,
            "Service web",
        );
        // A number where an IP string is expected: an error, or (too big for a number) a string that
        // the planner refuses as malformed.
        let yaml = service_yaml(&format!("  clusterIP: {value}\n"));
        if parse_manifest(&yaml).is_err() {
            manifest_error_at(&yaml, 6, "Service web");
        } else {
            let state = cluster(
                manifest_ok(&yaml)
                    .services
                    .values()
                    .map(|s| Service::clone(s))
                    .collect(),
            );
            let plan = planned(&state);
            assert!(
                plan.refusals
                    .iter()
                    .all(|r| r.cause == RefusalCause::Malformed),
                "{value}: {:?}",
                plan.refusals
            );
            assert!(plan.routes.values().all(|r| r.kind.is_range()), "{value}");
        }
    }
    manifest_error(
        &service_yaml("  clusterIP: 167772161\n"),
        &["Service web", "expected a string"],
    );
    manifest_error(
        &service_yaml("  clusterIPs: [0x0a000001]\n"),
        &["Service web", "expected a string"],
    );
}

#[test]
fn a_ten_megabyte_line_is_read_or_refused_with_a_short_message() {
    let huge = "x".repeat(10 * 1024 * 1024);
    // As a scalar document: not an object.
    manifest_error(
        &huge,
        &["document 1", "expected a Kubernetes object, found a string"],
    );
    // As an IP: read, then refused by the planner as malformed, and never announced.
    let state = manifest_ok(&service_yaml(&format!(
        "  externalIPs: [\"{huge}\"]\n  externalTrafficPolicy: Local\n"
    )));
    let config = Config::parse(fuzz::WIDE_CONFIG).unwrap();
    let planned = plan(&state, &config);
    check_plan_invariants(&state, &config, &planned).unwrap();
    assert!(
        planned
            .refusals
            .iter()
            .all(|r| r.cause == RefusalCause::Malformed)
    );
    // As an annotation and a name; as a plain key it is beyond YAML's 1024-character limit for keys.
    manifest_ok(&format!(
        "kind: Service\nmetadata:\n  name: web\n  annotations:\n    a: \"{huge}\"\n"
    ));
    manifest_ok(&format!("kind: Node\nmetadata:\n  name: \"{huge}\"\n"));
    manifest_error(
        &format!("kind: Service\nmetadata:\n  name: web\n  annotations:\n    {huge}: a\n"),
        &["line 5"],
    );
    // Where a number or a list is expected: the message must not carry the 10 MB back, and still
    // say what was expected.
    manifest_error(
        &service_yaml(&format!("  ports:\n  - port: \"{huge}\"\n")),
        &["Service web", "invalid type: string", "expected i32"],
    );
    manifest_error(
        &service_yaml(&format!("  clusterIPs: \"{huge}\"\n")),
        &["Service web", "expected a sequence"],
    );
    // As one long line of flow YAML that never closes.
    manifest_error(
        &format!("[{}", "1,".repeat(5 * 1024 * 1024)),
        &["malformed YAML"],
    );
}

#[test]
fn nul_bytes_and_control_characters_are_errors_or_data() {
    for input in [
        "kind: Service\0\nmetadata: {name: web}\n",
        "\0",
        "kind: \"Serv\0ice\"\nmetadata: {name: web}\n",
        "kind: Service\nmetadata: {name: \"we\\0b\"}\nspec: {clusterIP: \"10.96.0.1\\0\"}\n",
        "kind: Service\nmetadata: {name: web}\nspec: {clusterIP: \"10.96.0.1\u{7}\"}\n",
        "\u{feff}kind: Service\nmetadata: {name: web}\n",
        "kind: Service\r\nmetadata:\r\n  name: web\r\n",
        "kind: Service\nmetadata:\n\tname: web\n",
    ] {
        run_target("cluster_state", fuzz::cluster_state, input.as_bytes()).unwrap();
    }
    manifest_error("\0", &["malformed YAML"]);
    // A NUL inside a quoted IP reads as data and is refused by the planner, never announced.
    let state = manifest_ok(
        "kind: Service\nmetadata: {name: web}\nspec: {clusterIP: \"10.96.0.1\\0\", externalTrafficPolicy: Local}\n",
    );
    let config = Config::parse(fuzz::WIDE_CONFIG).unwrap();
    let planned = plan(&state, &config);
    assert!(
        planned.routes.keys().all(|p| p.prefix_len() < 32),
        "{:?}",
        planned.routes.keys().collect::<Vec<_>>()
    );
    assert!(
        planned
            .refusals
            .iter()
            .any(|r| r.cause == RefusalCause::Malformed)
    );
}

#[test]
fn duplicate_keys_are_errors() {
    manifest_error(
        "kind: Service\nkind: Node\nmetadata: {name: web}\n",
        &["duplicate"],
    );
    manifest_error(
        &service_yaml("  clusterIP: 10.96.0.1\n  clusterIP: 10.96.0.2\n"),
        &["duplicate"],
    );
    manifest_error(
        "kind: Node\nmetadata:\n  name: a\n  name: b\n",
        &["duplicate"],
    );
    manifest_error(
        "kind: Node\nmetadata:\n  name: n1\n  labels:\n    pool: a\n    pool: b\n",
        &["duplicate"],
    );
}

#[test]
fn wrong_types_at_every_level_of_a_service_are_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            "- kind: Service\n",
            &["document 1", "expected a Kubernetes object, found a list"],
        ),
        (
            "kind: Service\nmetadata: 5\n",
            &["Service", "`metadata.name` is missing"],
        ),
        (
            "kind: Service\nmetadata: [web]\n",
            &["Service", "`metadata.name` is missing"],
        ),
        (
            "kind: Service\nmetadata: {name: [web]}\n",
            &["Service", "`metadata.name` must be a string, found a list"],
        ),
        (
            "kind: Service\nmetadata: {name: \"\", namespace: ns}\n",
            &["Service", "`metadata.name` is empty"],
        ),
        (
            "kind: Node\nmetadata: {name: ''}\n",
            &["Node", "`metadata.name` is empty"],
        ),
        (
            "kind: EndpointSlice\nmetadata: {name: \"\"}\naddressType: IPv4\nendpoints: []\n",
            &["EndpointSlice", "`metadata.name` is empty"],
        ),
        (
            "kind: Service\nmetadata: {name: web, namespace: [a]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web, labels: [a]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web, annotations: {a: [b]}}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: 5\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: [a]\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {type: [a]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {clusterIP: [a]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {clusterIPs: 10.96.0.1}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {clusterIPs: [[10.96.0.1]]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {clusterIPs: [~]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {externalIPs: {a: b}}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {externalTrafficPolicy: [Local]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {ports: {port: 80}}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: eighty}]}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nstatus: [a]\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nstatus: {loadBalancer: 5}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nstatus: {loadBalancer: {ingress: 198.19.48.1}}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\nstatus: {loadBalancer: {ingress: [{ip: [a]}]}}\n",
            &["Service web", "invalid type"],
        ),
        (
            "kind: [Service]\nmetadata: {name: web}\n",
            &["an object needs `kind`"],
        ),
        (
            "kind: List\nitems: {a: b}\n",
            &["document 1", "`items` must be a list, found an object"],
        ),
        (
            "kind: List\nitems: [5]\n",
            &["document 1, item 0", "an object needs `kind`"],
        ),
        (
            "kind: List\nitems: [{kind: List, items: []}]\n",
            &["item 0", "a List inside a List"],
        ),
        (
            "kind: ServiceList\nitems: [{metadata: {name: web}, spec: 5}]\n",
            &["item 0 (Service web)", "invalid type"],
        ),
        (
            "kind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: [{addresses: [a], conditions: {ready: yes please}}]\n",
            &["EndpointSlice s", "invalid type"],
        ),
        (
            "kind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: 5\n",
            &["EndpointSlice s", "invalid type"],
        ),
        (
            "kind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: [10.0.0.1]}]}\n",
            &["Node n1", "invalid type"],
        ),
        (
            "kind: Node\nmetadata: {name: n1}\nstatus: {conditions: [{type: Ready, status: [True]}]}\n",
            &["Node n1", "invalid type"],
        ),
        // YAML 1.1 reads `n`, `no`, `off` as false and `0123` as a number.
        (
            "kind: Node\nmetadata: {name: n}\n",
            &[
                "Node <unnamed>",
                "`metadata.name` must be a string, found a boolean",
            ],
        ),
        (
            "kind: Service\nmetadata: {name: no}\n",
            &["`metadata.name` must be a string, found a boolean"],
        ),
        (
            "kind: Service\nmetadata: {name: 0123}\n",
            &["`metadata.name` must be a string, found a number"],
        ),
        (
            "kind: Service\nmetadata: {name: ~}\n",
            &["`metadata.name` is missing"],
        ),
        (
            "kind: Service\nmetadata: {name: web, namespace: off}\n",
            &["Service web", "invalid type: boolean"],
        ),
        (
            "kind: Service\n",
            &["Service <unnamed>", "`metadata.name` is missing"],
        ),
        (
            "kind: Service\nmetadata: {name: web}\n---\n5\n",
            &["document 2", "found a number"],
        ),
        ("", &["no objects"]),
        ("# only a comment\n---\n...\n", &["no objects"]),
    ];
    for (input, fragments) in cases {
        manifest_error(input, fragments);
    }
    // An address without a type is no InternalIP: read, and not a next hop.
    let state = manifest_ok(
        "kind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{address: 10.0.0.1}]}\n",
    );
    assert!(state.nodes["n1"].internal_ips.is_empty());
}

#[test]
fn too_many_documents_are_refused() {
    let many = "---\nkind: Pod\nmetadata: {name: p}\n".repeat(5_000);
    manifest_error(&many, &["malformed YAML"]);
}

fn node(name: &str, ips: &[&str]) -> Node {
    Node {
        name: name.to_string(),
        labels: BTreeMap::new(),
        ready: true,
        internal_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
    }
}

fn local_service(name: &str, cluster: &[&str], external: &[&str], lb: &[&str]) -> Service {
    let strings = |ips: &[&str]| ips.iter().map(|s| s.to_string()).collect();
    Service {
        key: ObjectKey::new("shop", name),
        type_: ServiceType::LoadBalancer,
        cluster_ips: strings(cluster),
        external_ips: strings(external),
        load_balancer_ips: strings(lb),
        external_traffic_policy: TrafficPolicy::Local,
        internal_traffic_policy: TrafficPolicy::Cluster,
        annotations: BTreeMap::new(),
    }
}

/// A cluster of two nodes with a ready endpoint of every Service on both, in each family.
fn cluster(services: Vec<Service>) -> ClusterState {
    let mut state = ClusterState::default();
    state.insert_node(node("n1", &["10.0.0.1", "fd00::1"]));
    state.insert_node(node("n2", &["10.0.0.2", "fd00::2"]));
    for service in services {
        for address_type in [AddressType::Ipv4, AddressType::Ipv6] {
            state.insert_endpoint_slice(EndpointSlice {
                key: ObjectKey::new(
                    "shop",
                    format!("{}-{}", service.key.name, address_type.as_str()),
                ),
                service_name: Some(service.key.name.clone()),
                address_type,
                endpoints: ["n1", "n2"]
                    .into_iter()
                    .map(|n| Endpoint {
                        node_name: Some(n.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            });
        }
        state.insert_service(service);
    }
    state
}

/// Ranges that hold every reading of the tricky spellings below (8.0.0.1 and 10.0.0.1 for
/// `010.0.0.1`), so that only strict parsing keeps them out.
const TRAP_CONFIG: &str = "\
serviceClusterIPs: [{cidr: 10.96.0.0/12}, {cidr: fd00::/8}]
serviceExternalIPs: [{cidr: 8.0.0.0/8}, {cidr: 10.0.0.0/8}, {cidr: fe80::/10}, {cidr: 198.19.48.0/20}]
serviceLoadBalancerIPs: [{cidr: 0.0.0.0/1}, {cidr: ::ffff:0:0/96}]
";

fn planned(state: &ClusterState) -> Plan {
    let config = Config::parse(TRAP_CONFIG).unwrap();
    let plan = plan(state, &config);
    check_plan_invariants(state, &config, &plan).unwrap_or_else(|e| panic!("{e}"));
    plan
}

fn outcome(plan: &Plan, service: &str, ip: &str) -> IpOutcome {
    let explanation = plan
        .services
        .get(&ObjectKey::new("shop", service))
        .expect("the Service is explained");
    explanation
        .ips
        .iter()
        .find(|i| i.ip == ip)
        .unwrap_or_else(|| panic!("{ip} not explained"))
        .outcome
        .clone()
}

#[test]
fn ips_spelled_to_fool_a_lenient_parser_are_refused_as_malformed() {
    let tricky = [
        "010.0.0.1",
        "10.0.0.01",
        "0010.0.0.1",
        "0x0a.0.0.1",
        "0xa000001",
        "167772161",
        "10.1",
        "10.0.1",
        "012.0.0.1",
        "8.0.0.01",
        "10.0.0.1.",
        "10.0.0.1/32",
        "10.0.0.1:80",
        "10.0.0.256",
        "10.0.0.-1",
        "+10.0.0.1",
        "fe80::1%eth0",
        "fe80::1%0",
        "fd00::1%25eth0",
        "[fd00::1]",
        "fd00::1/128",
        "::ffff:010.0.0.1",
        "١٠.٠.٠.١",
        "10.0.0.1\u{0}",
        "10,0,0,1",
        "10 .0.0.1",
        "",
    ];
    let service = local_service("tricky", &[], &tricky, &[]);
    let state = cluster(vec![service]);
    let plan = planned(&state);
    for ip in tricky {
        match outcome(&plan, "tricky", ip) {
            IpOutcome::NotAnnounced(reason) => {
                assert!(reason.contains("is not an IP address"), "{ip:?}: {reason}")
            }
            other => panic!("{ip:?} is announced: {other:?}"),
        }
        assert!(
            plan.refusals
                .iter()
                .any(|r| r.ip == ip && r.cause == RefusalCause::Malformed),
            "{ip:?} not refused"
        );
    }
    assert!(
        plan.routes.is_empty() || plan.routes.values().all(|r| r.kind.is_range()),
        "{:?}",
        plan.routes.keys().collect::<Vec<_>>()
    );
    for never in ["8.0.0.1/32", "10.0.0.1/32", "10.0.0.10/32", "fe80::1/128"] {
        assert!(
            !plan
                .routes
                .contains_key(&never.parse::<ipnet::IpNet>().unwrap()),
            "{never} announced"
        );
    }
}

#[test]
fn spellings_that_are_the_same_ip_stay_in_their_family_and_range() {
    // Whitespace is trimmed, case and zero compression are v6 spelling: one route each, inside its range.
    let same = [
        "198.19.48.10",
        " 198.19.48.10",
        "198.19.48.10\n",
        "FD00::A",
        "fd00:0:0:0:0:0:0:a",
        "fd00::a",
    ];
    let state = cluster(vec![local_service("same", &["fd00::a"], &same[..3], &[])]);
    let plan = planned(&state);
    let hosts: Vec<String> = plan
        .routes
        .values()
        .filter(|r| !r.kind.is_range())
        .map(|r| r.prefix.to_string())
        .collect();
    assert_eq!(hosts, ["198.19.48.10/32", "fd00::a/128"]);
    // A v4-mapped v6 address is an IPv6 address: only an IPv6 range may hold it, with IPv6 next hops.
    let state = cluster(vec![local_service(
        "mapped",
        &[],
        &[],
        &["::ffff:10.0.0.5", "::ffff:198.19.48.10"],
    )]);
    let plan = planned(&state);
    for route in plan.routes.values().filter(|r| !r.kind.is_range()) {
        assert!(route.prefix.addr().is_ipv6(), "{route:?}");
        assert!(
            route.next_hops.iter().all(|h| h.address.is_ipv6()),
            "{route:?}"
        );
    }
    // The node addresses themselves, even spelled differently, are never announced as host routes.
    let state = cluster(vec![local_service(
        "nodes",
        &[],
        &["10.0.0.1", " 10.0.0.2 "],
        &["::ffff:10.0.0.1"],
    )]);
    let plan = planned(&state);
    for ip in ["10.0.0.1", " 10.0.0.2 "] {
        assert!(
            matches!(outcome(&plan, "nodes", ip), IpOutcome::NotAnnounced(_)),
            "{ip:?}"
        );
    }
}

#[test]
fn cluster_ips_none_is_headless_in_any_position() {
    for ips in [
        &["None"][..],
        &["None", "10.96.0.1"],
        &["10.96.0.1", "None"],
    ] {
        let yaml = service_yaml(&format!(
            "  clusterIPs: [{}]\n  externalIPs: [198.19.48.1]\n  externalTrafficPolicy: Local\n",
            ips.join(", ")
        ));
        let state = manifest_ok(&yaml);
        let plan = planned(&cluster(
            state.services.values().map(|s| Service::clone(s)).collect(),
        ));
        assert!(
            plan.routes.values().all(|r| r.kind.is_range()),
            "{ips:?}: {:?}",
            plan.routes.keys().collect::<Vec<_>>()
        );
        assert!(plan.services.values().all(|s| s.ips.is_empty()), "{ips:?}");
    }
    // `none`, `NONE`, `"None "` are not the headless marker: malformed IPs, refused.
    let state = cluster(vec![local_service(
        "odd",
        &["none", "NONE", "None "],
        &[],
        &[],
    )]);
    let plan = planned(&state);
    assert_eq!(
        plan.refusals
            .iter()
            .filter(|r| r.cause == RefusalCause::Malformed)
            .count(),
        3,
        "{:?}",
        plan.refusals
    );
}

#[test]
fn hostile_node_addresses_are_never_next_hops() {
    let yaml = "\
kind: Node
metadata: {name: n1}
status:
  conditions: [{type: Ready, status: \"True\"}]
  addresses:
  - {type: InternalIP, address: 010.0.0.1}
  - {type: InternalIP, address: fe80::1%eth0}
  - {type: InternalIP, address: \"10.0.0.1 \"}
  - {type: InternalIP, address: \"\"}
  - {type: ExternalIP, address: 10.0.0.9}
  - {type: InternalIP, address: 10.0.0.7}
";
    let state = manifest_ok(yaml);
    assert_eq!(
        state.nodes["n1"].internal_ips,
        ["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]
    );
    let config = Config::parse(TRAP_CONFIG).unwrap();
    let plan = plan(&state, &config);
    check_plan_invariants(&state, &config, &plan).unwrap();
    assert!(
        plan.routes
            .values()
            .flat_map(|r| &r.next_hops)
            .all(|h| h.address.to_string() == "10.0.0.7")
    );
}

// ---- config ----

fn config_error(input: &str, fragments: &[&str]) -> String {
    run_target("config", fuzz::config, input.as_bytes()).unwrap();
    let message = match no_panic(|| Config::parse(input)) {
        Err(p) => panic!("Config::parse panicked on {:?}: {p}", preview(input)),
        Ok(Ok(_)) => panic!("Config::parse accepted {:?}", preview(input)),
        Ok(Err(e)) => e,
    };
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "error for {:?} should mention {fragment:?}: {message}",
            preview(input)
        );
    }
    assert!(
        message.len() < 4096,
        "error for {:?} is {} bytes long",
        preview(input),
        message.len()
    );
    message
}

#[test]
fn hostile_configs_are_errors_that_name_the_value() {
    let cases: &[(&str, &[&str])] = &[
        ("serviceClusterIPs: [{cidr: 010.0.0.0/8}]", &["010.0.0.0/8"]),
        (
            "serviceClusterIPs: [{cidr: 10.0.0.01/32}]",
            &["10.0.0.01/32"],
        ),
        (
            "serviceClusterIPs: [{cidr: 10.0.0.1/8}]",
            &["host bits set", "10.0.0.0/8"],
        ),
        (
            "serviceClusterIPs: [{cidr: 10.0.0.0/33}]",
            &["10.0.0.0/33", "not a CIDR"],
        ),
        ("serviceClusterIPs: [{cidr: 10.0.0.0}]", &["not a CIDR"]),
        (
            "serviceClusterIPs: [{cidr: fe80::%eth0/64}]",
            &["not a CIDR"],
        ),
        (
            "serviceClusterIPs: [{cidr: 10.0.0.0/8, communities: ['65536:1']}]",
            &["65536:1", "community"],
        ),
        (
            "serviceClusterIPs: [{cidr: 10.0.0.0/8, largeCommunities: ['1:2']}]",
            &["1:2", "large community"],
        ),
        (
            "serviceClusterIPs: {cidr: 10.0.0.0/8}",
            &["serviceClusterIPs"],
        ),
        ("serviceClusterIPs: [10.0.0.0/8]", &["serviceClusterIPs"]),
        (
            "serviceClusterIPs: [{cidr: 10.0.0.0/8, cidrs: x}]",
            &["cidrs"],
        ),
        (
            "serviceClusterIPs: [{cidr: 10.0.0.0/8}]\nserviceClusterIPs: [{cidr: 11.0.0.0/8}]",
            &["duplicate"],
        ),
        ("denyPrefixes: [99999999999999999999]", &["denyPrefixes"]),
        (
            "nodeSelector: 'zone in (a'",
            &["invalid label selector", "zone in (a"],
        ),
        ("nodeSelector: [pool=a]", &["nodeSelector"]),
        ("allowedCommunities: ['1:2:3']", &["1:2:3"]),
        ("guard: {maxRoutes: -1}", &["maxRoutes"]),
        ("guard: {maxRoutes: 1e100}", &["maxRoutes"]),
        (
            "guard: {maxRoutes: 99999999999999999999999}",
            &["maxRoutes"],
        ),
        (
            "guard: {holdDown: 99999999999999999999s}",
            &["99999999999999999999s", "duration"],
        ),
        (
            "guard: {holdDown: 18446744073709551615m}",
            &["18446744073709551615m"],
        ),
        (
            "guard: {holdDown: 18446744073709551615s}",
            &["18446744073709551615s", "too long"],
        ),
        ("guard: {holdDown: 525601m}", &["525601m", "too long"]),
        (
            "gobgp: {address: '127.0.0.1:50051', antiEntropyInterval: 18446744073709551615s}",
            &["too long"],
        ),
        (
            "gobgp: {address: '127.0.0.1:50051', antiEntropyInterval: 18446744073709551615ms}",
            &["too long"],
        ),
        ("guard: {holdDown: 5h}", &["5h", "duration"]),
        ("guard: {holdDown: -1s}", &["-1s"]),
        ("guard: {holdDown: 5}", &["holdDown"]),
        (
            "gobgp: {address: '127.0.0.1:50051', batchSize: 0}",
            &["batchSize"],
        ),
        (
            "gobgp: {address: '127.0.0.1:50051', antiEntropyInterval: 0s}",
            &["antiEntropyInterval"],
        ),
        (
            "gobgp: {address: '127.0.0.1:50051', localPref: 4294967296}",
            &["localPref"],
        ),
        ("gobgp: {address: '127.0.0.1:50051', origin: bgp}", &["bgp"]),
        ("api: {listen: '10.0.0.1'}", &["listen"]),
        ("api: {listen: '010.0.0.1:80'}", &["listen"]),
        ("metrics: {listen: 'fe80::1%eth0:9180'}", &["listen"]),
        (
            "events: {leaseDuration: 1500ms}",
            &["1500ms", "whole seconds"],
        ),
        ("events: {leaseDuration: 0s}", &["0s", "lease duration"]),
        ("events: {leaseDuration: 15}", &["leaseDuration"]),
        (
            "events: {leaseName: Herald_Events}",
            &["Herald_Events", "Kubernetes name"],
        ),
        ("events: {leaseNamespace: ''}", &["Kubernetes name"]),
        ("events: {leaseNamespace: '-herald'}", &["-herald"]),
        (
            "events: {leaseNamespace: herald.pool}",
            &["herald.pool", "namespace"],
        ),
        ("source: {file: a, kubernetes: {}}", &["source"]),
        ("unknownKey: 1", &["unknownKey"]),
        ("pool: Pool_A", &["Pool_A", "pool name"]),
        ("pool: ''", &["pool name"]),
        (
            "pool: a\notherPools: [{name: a, ranges: [10.0.0.0/8]}]",
            &["otherPools[0]", "`a`", "must differ"],
        ),
        (
            "otherPools: [{name: b, ranges: [10.0.0.0/8]}, {name: b, ranges: [11.0.0.0/8]}]",
            &["otherPools[1]", "`b`"],
        ),
        (
            "otherPools: [{name: b, ranges: []}]",
            &["otherPools[0]", "no ranges"],
        ),
        (
            "otherPools: [{name: b, ranges: [10.0.0.1/8]}]",
            &["host bits set"],
        ),
        ("otherPools: [{name: b}]", &["ranges"]),
        ("- a\n- b", &["line 1", "expected mapping start"]),
        ("\0", &[""]),
        ("a: &a [*a]", &[""]),
    ];
    for (input, fragments) in cases {
        config_error(input, fragments);
    }
    let deep = format!(
        "serviceClusterIPs: {}{}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    config_error(&deep, &[]);
    let mut bomb = String::from("x0: &x0 [a,a,a,a,a,a,a,a,a,a]\n");
    for level in 1..10 {
        bomb.push_str(&format!(
            "x{level}: &x{level} [{}]\n",
            vec![format!("*x{}", level - 1); 10].join(",")
        ));
    }
    config_error(&bomb, &[]);
    // A 10 MB value where any string goes: read as it is.
    let huge = format!(
        "api: {{tls: {{certFile: \"{}\", keyFile: k.pem}}}}",
        "a".repeat(10 * 1024 * 1024)
    );
    run_target("config", fuzz::config, huge.as_bytes()).unwrap();
    assert!(Config::parse(&huge).is_ok());
}

/// Durations the config accepts must be usable: `Instant + Duration` panics on overflow, and both the
/// guard (`holdDown`) and the reconciler (`antiEntropyInterval`) add them to `Instant::now()`.
#[test]
fn accepted_durations_do_not_overflow_the_clock() {
    for text in [
        "18446744073709551615s",
        "307445734561825860m",
        "18446744073709551615ms",
    ] {
        let input = format!(
            "guard: {{holdDown: {text}}}\ngobgp: {{address: \"127.0.0.1:50051\", antiEntropyInterval: {text}}}\n"
        );
        let Ok(config) = Config::parse(&input) else {
            continue;
        };
        run_target("config", fuzz::config, input.as_bytes()).unwrap();
        let hold = config.guard.hold_down.0;
        let result = no_panic(|| {
            let mut guard = Guard::new(GuardConfig {
                hold_down: hold,
                max_routes: None,
                brake: None,
            });
            let state = cluster(vec![local_service("web", &[], &["198.19.48.1"], &[])]);
            let mut fewer = state.clone();
            fewer.nodes.remove("n1");
            let config = Config::parse(TRAP_CONFIG).unwrap();
            let (full, fewer) = (plan(&state, &config), plan(&fewer, &config));
            let t = Instant::now();
            guard.apply(&full, t);
            guard.apply(&fewer, t);
            guard.apply(&full, t);
        });
        assert!(
            result.is_ok(),
            "holdDown: {text} is accepted and then panics the guard: {}",
            result.unwrap_err()
        );
    }
}

#[test]
fn invalid_utf8_is_a_read_error_from_the_callers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.yaml");
    std::fs::write(&path, b"serviceClusterIPs: [{cidr: \xff\xfe10.0.0.0/8}]\n").unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert!(
        error.contains("cannot read config") && error.contains("UTF-8"),
        "{error}"
    );
    // The file source reads the cluster state the same way (`read_to_string`); the targets skip such bytes.
    assert!(std::fs::read_to_string(&path).is_err());
    for (name, target) in TARGETS {
        run_target(name, target, b"kind: Service\nmetadata: {name: \xc3\x28}\n").unwrap();
    }
}

// ---- selectors ----

#[test]
fn hostile_selectors_are_errors_or_round_trip() {
    let bad: &[(&str, &str)] = &[
        ("pool=a,", "``"),
        ("((a))", "nested parentheses"),
        ("a)", "`)` without `(`"),
        ("zone in (a", "`(` without `)`"),
        ("zone in (-a)", "not a valid label value"),
        ("=a", "not a valid label key"),
        ("a=b=c", "not a valid label value"),
        ("!", "not a valid label key"),
        ("!!a", "not a valid label key"),
        ("a\0=b", "not a valid label key"),
        ("ä=b", "not a valid label key"),
        ("/a=b", "not a valid label key"),
        ("a/=b", "not a valid label key"),
        ("zone in a", "expected a parenthesised set"),
        ("zone notin", "expected"),
        ("zone exists", "expected =, ==, !=, in or notin"),
    ];
    for (input, fragment) in bad {
        fuzz::selector(input.as_bytes()).unwrap();
        let error = input.parse::<LabelSelector>().expect_err(input);
        assert!(
            error.contains("invalid label selector") && error.contains(fragment),
            "{input:?}: {error}"
        );
    }
    let long_key = format!("{}=a", "a".repeat(64));
    assert!(long_key.parse::<LabelSelector>().is_err());
    let huge = format!("{}=a", "a".repeat(10 * 1024 * 1024));
    let error = huge.parse::<LabelSelector>().unwrap_err();
    assert!(error.contains("not a valid label key"));
    for input in [
        "  pool = a , zone in ( z1 , z2 ) ",
        "a==",
        "a!=",
        "a in (,)",
        "zone in ()",
        "zone in (a,,b)",
        "x notin (a)",
        "example.com/a",
        "\tbgp\n",
        "a=b,a=c",
    ] {
        fuzz::selector(input.as_bytes()).unwrap_or_else(|e| panic!("{input:?}: {e}"));
    }
    fuzz::selector(&vec![b'('; 100_000]).unwrap();
    fuzz::selector("a,".repeat(100_000).as_bytes()).unwrap();
}

// ---- the checks themselves ----

/// The invariants catch what they are for: a plan doctored in each way is refused.
#[test]
fn the_invariant_checker_catches_doctored_plans() {
    let state = cluster(vec![local_service(
        "web",
        &["10.96.0.10"],
        &["198.19.48.1", "99.0.0.1"],
        &[],
    )]);
    let config = Config::parse(TRAP_CONFIG).unwrap();
    let good = plan(&state, &config);
    check_plan_invariants(&state, &config, &good).unwrap();
    let host: ipnet::IpNet = "198.19.48.1/32".parse().unwrap();
    assert!(
        good.routes.contains_key(&host),
        "{:?}",
        good.routes.keys().collect::<Vec<_>>()
    );

    let mut doctored: Vec<(&str, Plan)> = Vec::new();
    let mut p = good.clone();
    let mut outside = Route::clone(&p.routes[&host]);
    outside.prefix = "99.0.0.1/32".parse().unwrap();
    p.insert_route(outside);
    doctored.push(("a refused IP outside every range announced", p));
    let mut p = good.clone();
    p.route_mut(&host)
        .unwrap()
        .next_hops
        .insert(herald_core::plan::NextHop {
            node: "n1".to_string(),
            address: "10.0.0.99".parse().unwrap(),
        });
    doctored.push(("a next hop that is no InternalIP", p));
    let mut p = good.clone();
    p.route_mut(&host)
        .unwrap()
        .next_hops
        .insert(herald_core::plan::NextHop {
            node: "ghost".to_string(),
            address: "10.0.0.1".parse().unwrap(),
        });
    doctored.push(("a next hop that is no node", p));
    let mut p = good.clone();
    let mut default = Route::clone(&p.routes[&host]);
    default.prefix = "0.0.0.0/0".parse().unwrap();
    p.insert_route(default);
    doctored.push(("a default route", p));
    let mut p = good.clone();
    p.route_mut(&host).unwrap().next_hops.clear();
    doctored.push(("a route without next hops", p));
    let mut p = good.clone();
    p.services = Default::default();
    doctored.push(("explanations missing", p));
    for (what, plan) in doctored {
        assert!(
            check_plan_invariants(&state, &config, &plan).is_err(),
            "{what} passed the checker"
        );
    }
    // A next hop on a node that is not Ready.
    let mut not_ready = state.clone();
    std::sync::Arc::make_mut(not_ready.nodes.get_mut("n2").unwrap()).ready = false;
    assert!(check_plan_invariants(&not_ready, &config, &good).is_err());
}

/// The planner target's input generator reaches every outcome, so the fuzzer is not stuck in one.
#[test]
fn the_planner_target_reaches_every_outcome() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut host_routes, mut ranges, mut parts, mut capped, mut causes) =
        (0, 0, 0, 0, std::collections::BTreeSet::new());
    for _ in 0..10_000 {
        let len = (next() % 1000) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        fuzz::planner(&bytes).unwrap();
        let Ok(input) = <fuzz::PlannerInput as arbitrary::Arbitrary>::arbitrary_take_rest(
            arbitrary::Unstructured::new(&bytes),
        ) else {
            continue;
        };
        let (state, config) = input.build();
        let plan = plan(&state, &config);
        host_routes += plan.routes.values().filter(|r| r.kind.is_host()).count();
        ranges += plan
            .routes
            .values()
            .filter(|r| r.kind.is_range() && !r.kind.is_part())
            .count();
        parts += plan.routes.values().filter(|r| r.kind.is_part()).count();
        capped += plan
            .routes
            .values()
            .filter(|r| !r.left_out.is_empty())
            .count();
        causes.extend(plan.refusals.iter().map(|r| r.cause));
    }
    eprintln!("host routes {host_routes}, ranges {ranges}, parts {parts}, capped {capped}");
    assert!(
        host_routes > 0 && ranges > 0 && parts > 0 && capped > 0,
        "host routes {host_routes}, ranges {ranges}, parts {parts}, routes with nodes left out {capped}"
    );
    assert_eq!(
        causes.len(),
        RefusalCause::ALL.len(),
        "refusal causes reached: {causes:?}"
    );
}
