//! Faults, restarts and hostile input, with real processes: gobgpd and BIRD 2 in network namespaces
//! the tests make, herald as the user runs it. host1's kernel table is the judge: an operator trusts
//! herald only if its failures never show there.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_integration::lab::{Lab, RouteTable};
use herald_integration::lab_herald::{lab_final_table, ALL_NODES, table, write_atomically, LabHerald, LAB_RANGES};
use herald_integration::process::{repo_root, wait_until};

const ALL: &[&str] = ALL_NODES;
const NODES: [(&str, &str); 3] = [("control", "198.19.0.1"), ("node1", "198.19.0.2"), ("node2", "198.19.0.3")];

fn lab_state() -> String {
    std::fs::read_to_string(repo_root().join("examples/yaobank/cluster-state.yaml")).unwrap()
}

/// A cluster of the lab's three nodes and `services` Local Services, each with an external IP in
/// 198.19.48.0/20 and one endpoint on each of `per_service` nodes.
fn big_state(services: u32, per_service: usize) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for (name, ip) in NODES {
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Node\n  metadata: {{name: {name}}}\n  status:\n    addresses: [{{type: InternalIP, address: {ip}}}]\n    conditions: [{{type: Ready, status: \"True\"}}]\n"
        );
    }
    for i in 0..services {
        let external = format!("198.19.{}.{}", 48 + (i + 1) / 256, (i + 1) % 256);
        let cluster = format!("198.19.{}.{}", 33 + i / 256, i % 256);
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: s{i}, namespace: big}}\n  spec:\n    type: ClusterIP\n    clusterIPs: [{cluster}]\n    externalIPs: [{external}]\n    externalTrafficPolicy: Local\n"
        );
        let endpoints: Vec<String> = NODES
            .iter()
            .cycle()
            .skip(i as usize % 3)
            .take(per_service)
            .map(|(n, _)| format!("{{addresses: [10.0.0.1], conditions: {{ready: true}}, nodeName: {n}}}"))
            .collect();
        let _ = write!(
            y,
            "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: s{i}-1, namespace: big, labels: {{kubernetes.io/service-name: s{i}}}}}\n  addressType: IPv4\n  endpoints: [{}]\n",
            endpoints.join(", ")
        );
    }
    y
}

/// Samples host1's table every 50 ms on a thread until stopped; returns the samples that differ
/// from `expected`.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, Vec<RouteTable>)>,
}

impl Sampler {
    fn start(host1_ns: String, expected: RouteTable) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = 0;
            let mut wrong = Vec::new();
            // Bounded: at most 10 minutes of samples, whatever the caller does.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let out = std::process::Command::new("ip").args(["-n", &host1_ns, "route"]).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let bird: String = text
                    .split_inclusive('\n')
                    .fold((String::new(), false), |(mut acc, in_bird), line| {
                        let keep = line.contains("proto bird") || (in_bird && line.starts_with(char::is_whitespace));
                        if keep {
                            acc.push_str(line);
                        }
                        (acc, keep)
                    })
                    .0;
                let t = herald_integration::lab::parse_routes(&bird).unwrap_or_default();
                samples += 1;
                if t != expected {
                    wrong.push(t);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (samples, wrong)
        });
        Sampler { stop, handle }
    }

    fn finish(self) -> (usize, Vec<RouteTable>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// BIRD's count of withdrawals received from gobgpd.
fn withdrawals_received(lab: &Lab) -> u64 {
    let text = lab.birdc(&["show", "protocols", "all", "pool"]).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("Import withdraws:"))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

fn start(lab: &Lab, dir: &Path, state_text: &str, extra: &str) -> (LabHerald, std::path::PathBuf) {
    let state = dir.join("cluster-state.yaml");
    write_atomically(&state, state_text).unwrap();
    let herald = LabHerald::start(lab, dir, &state, LAB_RANGES, extra).unwrap();
    (herald, state)
}

#[test]
fn gobgpd_killed_mid_push_gets_the_whole_plan_back_within_5s() {
    let mut lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    // 3,400 Local services × 3 next hops: ~10,000 paths.
    let (herald, _state) = start(&lab, dir.path(), &big_state(3400, 3), "");
    let plan = wait_until(Duration::from_secs(20), "herald's plan", || {
        herald.planned_table().filter(|t| t.len() > 3000)
    })
    .unwrap_or_else(|e| panic!("{e}: {}\n{}", &herald.ctl(&["status"]), herald.herald.log_text()));
    let paths: usize = plan.values().map(BTreeSet::len).sum();
    assert!(paths > 10_000, "{paths} paths");
    // Kill gobgpd while the RIB is still filling.
    wait_until(Duration::from_secs(20), "the push to start", || {
        let summary = lab.gobgp(&["global", "rib", "summary", "-a", "ipv4"]).ok()?;
        let n: u64 = summary.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).max()?;
        (n > 0).then_some(())
    })
    .unwrap();
    lab.kill_gobgpd(libc::SIGKILL).unwrap();
    let restarted = Instant::now();
    lab.start_gobgpd().unwrap();
    let took = herald.wait_table(&lab, &plan, Duration::from_secs(5).saturating_sub(restarted.elapsed()), "plan back after gobgpd restart");
    eprintln!("{paths} paths back on host1 {:?} after gobgpd restarted", restarted.elapsed());
    let _ = took;
}

#[test]
fn herald_restarts_without_a_single_withdrawal() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (mut herald, _state) = start(&lab, dir.path(), &lab_state(), "");
    let expected = lab_final_table("198.19.0.2");
    herald.wait_table(&lab, &expected, Duration::from_secs(15), "initial routes");
    let withdrawals = withdrawals_received(&lab);
    let sampler = Sampler::start(lab.host1_ns().to_string(), expected.clone());
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        herald.herald.stop(signal).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        herald.restart().unwrap();
        // herald is back and has adopted its paths.
        wait_until(Duration::from_secs(10), "herald applied after restart", || {
            herald.ctl(&["status"]).contains("8 paths applied, 0 pending").then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", herald.ctl(&["status"]), herald.herald.log_text()));
        std::thread::sleep(Duration::from_millis(500));
    }
    let (samples, wrong) = sampler.finish();
    assert!(samples > 20, "{samples} samples");
    assert!(wrong.is_empty(), "{} of {samples} samples differed from the plan: {:?}", wrong.len(), wrong.first());
    assert_eq!(withdrawals_received(&lab), withdrawals, "BIRD received withdrawals during herald's restarts");
    eprintln!("{samples} samples of host1 across 2 restarts, none missing a route or next hop");
}

#[test]
fn a_lost_source_keeps_the_last_plan_and_says_so() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (herald, state) = start(&lab, dir.path(), &lab_state(), "");
    let expected = lab_final_table("198.19.0.2");
    herald.wait_table(&lab, &expected, Duration::from_secs(15), "initial routes");
    let sampler = Sampler::start(lab.host1_ns().to_string(), expected.clone());
    type Break = fn(&Path);
    let breakages: [(&str, Break); 4] = [
        ("deleted", |p| std::fs::remove_file(p).unwrap()),
        ("garbage", |p| std::fs::write(p, "kind: List\nitems: [{kind: Service, spec: 12}").unwrap()),
        ("empty", |p| std::fs::write(p, "").unwrap()),
        ("a directory", |p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap();
        }),
    ];
    for (what, break_it) in breakages {
        break_it(&state);
        let status = wait_until(Duration::from_secs(5), "the alarm", || {
            let s = herald.ctl(&["status"]);
            s.contains("keeping the last plan").then_some(s)
        })
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", herald.ctl(&["status"])));
        assert!(status.contains("4 routes"), "{what}: {status}");
        std::thread::sleep(Duration::from_millis(700));
        if state.is_dir() {
            std::fs::remove_dir(&state).unwrap();
        }
        write_atomically(&state, &lab_state()).unwrap();
        wait_until(Duration::from_secs(5), "the alarm to clear", || {
            (!herald.ctl(&["status"]).contains("alarm")).then_some(())
        })
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", herald.ctl(&["status"])));
    }
    let (samples, wrong) = sampler.finish();
    assert!(wrong.is_empty(), "host1 changed while the source was broken: {} of {samples}", wrong.len());
    eprintln!("{samples} samples of host1 through 4 broken sources, none changed");
}

#[test]
fn drift_is_repaired_and_operator_paths_are_never_touched() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (herald, state) = start(&lab, dir.path(), &lab_state(), "");
    let expected = lab_final_table("198.19.0.2");
    herald.wait_table(&lab, &expected, Duration::from_secs(15), "herald's routes");

    // Drift: someone empties gobgpd's RIB by hand (the CLI's `del all`, the very call herald never
    // makes). herald puts its paths back within its anti-entropy interval (2 s here).
    lab.gobgp(&["global", "rib", "del", "all", "-a", "ipv4"]).unwrap();
    let deleted = Instant::now();
    let rib = lab.gobgp(&["global", "rib", "-a", "ipv4"]).unwrap_or_default();
    herald.wait_table(&lab, &expected, Duration::from_secs(3), "drift repaired");
    eprintln!("RIB emptied by hand ({} lines left right after); herald's paths back on host1 after {:?}", rib.lines().count(), deleted.elapsed());
    assert!(herald.herald.log_text().contains("repairing"), "{}", herald.herald.log_text());

    // An operator's own paths, one on a prefix of its own and one on a prefix herald announces
    // (origin IGP like herald's, so that BIRD merges both into one ECMP route).
    lab.gobgp(&["global", "rib", "add", "198.19.99.0/24", "nexthop", "198.19.0.3", "identifier", "7", "origin", "igp", "-a", "ipv4"]).unwrap();
    lab.gobgp(&["global", "rib", "add", "198.19.48.10/32", "nexthop", "198.19.0.1", "identifier", "1", "origin", "igp", "-a", "ipv4"]).unwrap();
    let with_operator = |mut t: RouteTable| {
        t.insert("198.19.99.0/24".parse().unwrap(), ["198.19.0.3".parse().unwrap()].into());
        t.entry("198.19.48.10/32".parse().unwrap()).or_default().insert("198.19.0.1".parse().unwrap());
        t
    };
    herald.wait_table(&lab, &with_operator(expected.clone()), Duration::from_secs(3), "operator paths beside herald's");

    // herald changes its own routes (the pod moves, then the policy goes back to Cluster): the
    // operator's paths stay, including the one on a prefix herald announces and then withdraws.
    write_atomically(&state, &lab_state().replace("nodeName: node1", "nodeName: node2")).unwrap();
    herald.wait_table(&lab, &with_operator(lab_final_table("198.19.0.3")), Duration::from_secs(3), "pod moved, operator paths kept");
    write_atomically(&state, &lab_state().replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster")).unwrap();
    let operator_only = with_operator(table(&[("198.19.32.0/20", ALL), ("198.19.48.0/20", ALL)]));
    herald.wait_table(&lab, &operator_only, Duration::from_secs(3), "herald's host routes gone, the operator's kept");
    // Past at least one anti-entropy pass, sampled: the operator's paths are never touched.
    let sampler = Sampler::start(lab.host1_ns().to_string(), operator_only.clone());
    std::thread::sleep(Duration::from_secs(5));
    let (samples, wrong) = sampler.finish();
    assert!(wrong.is_empty(), "{} of {samples} samples differed: {:?}", wrong.len(), wrong.first());
}

#[test]
fn hung_gobgpd_under_churn_keeps_memory_bounded_and_converges() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (herald, state) = start(&lab, dir.path(), &lab_state(), "");
    herald.wait_table(&lab, &lab_final_table("198.19.0.2"), Duration::from_secs(15), "initial routes");
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
    };
    let before = rss(herald.herald.pid());
    lab.signal_gobgpd(libc::SIGSTOP).unwrap();
    // 30 s of churn, a change every 100 ms: the pod hops between node1 and node2.
    let started = Instant::now();
    let mut changes = 0;
    let mut peak = before;
    while started.elapsed() < Duration::from_secs(30) {
        let node = if changes % 2 == 0 { "node2" } else { "node1" };
        write_atomically(&state, &lab_state().replace("nodeName: node1", &format!("nodeName: {node}"))).unwrap();
        changes += 1;
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(rss(herald.herald.pid()));
    }
    let status = herald.ctl(&["status"]);
    lab.signal_gobgpd(libc::SIGCONT).unwrap();
    let resumed = Instant::now();
    // The last change put the pod on the node of the last write.
    let last = if (changes - 1) % 2 == 0 { "198.19.0.3" } else { "198.19.0.2" };
    herald.wait_table(&lab, &lab_final_table(last), Duration::from_secs(10), "convergence after SIGCONT");
    eprintln!(
        "{changes} changes while gobgpd hung 30 s: RSS {before} kB -> peak {peak} kB; converged {:?} after SIGCONT; status while hung:\n{status}",
        resumed.elapsed()
    );
    assert!(peak < before + 20_000, "herald's memory grew from {before} kB to {peak} kB while gobgpd hung");
}

#[test]
fn flapping_endpoints_are_damped_by_the_hold_down() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let (herald, state) = start(&lab, dir.path(), &lab_state(), "guard: {holdDown: 1s}\n");
    let up = lab_final_table("198.19.0.2");
    herald.wait_table(&lab, &up, Duration::from_secs(15), "initial routes");
    let ready = lab_state();
    let not_ready = ready.replacen("      ready: true\n", "      ready: false\n", 1); // customer's endpoint
    assert_ne!(ready, not_ready);
    // Sample host1 while the endpoint flaps every 100 ms for 3 s, then settles ready.
    let host1 = lab.host1_ns().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut history: Vec<(Instant, bool)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            let out = std::process::Command::new("ip").args(["-n", &host1, "route", "show", "198.19.38.11"]).output().unwrap();
            let present = String::from_utf8_lossy(&out.stdout).contains("proto bird");
            if history.last().is_none_or(|(_, p)| *p != present) {
                history.push((Instant::now(), present));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        history
    });
    let flapping = Instant::now();
    let mut last_drop = flapping;
    for i in 0..30 {
        if i % 2 == 0 {
            write_atomically(&state, &not_ready).unwrap();
            last_drop = Instant::now();
        } else {
            write_atomically(&state, &ready).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    herald.wait_table(&lab, &up, Duration::from_secs(5), "settled after flapping");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let history = sampler.join().unwrap();
    let changes: Vec<(Duration, bool)> = history.iter().skip(1).map(|(t, p)| (t.duration_since(flapping), *p)).collect();
    // One withdrawal at the first drop, one re-announcement a hold-down after the last drop.
    assert_eq!(changes.len(), 2, "host1's /32 changed {} times: {changes:?}", changes.len());
    assert!(!changes[0].1 && changes[1].1, "{changes:?}");
    let back_after_last_drop = history[2].0.duration_since(last_drop);
    assert!(back_after_last_drop >= Duration::from_millis(900), "re-announced {back_after_last_drop:?} after the last drop");
    eprintln!("30 flaps: host1 changed twice; re-announced {back_after_last_drop:?} after the last drop");
}

#[test]
fn max_routes_keeps_what_is_announced_and_refuses_the_rest() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let stage2 = std::fs::read_to_string(repo_root().join("examples/yaobank/stage2-local-policy.yaml")).unwrap();
    let (herald, state) = start(&lab, dir.path(), &stage2, "guard: {maxRoutes: 3}\n");
    let three = table(&[("198.19.32.0/20", ALL), ("198.19.38.11/32", &["198.19.0.2"]), ("198.19.48.0/20", ALL)]);
    herald.wait_table(&lab, &three, Duration::from_secs(15), "stage 2 under maxRoutes");
    // A fourth route: refused, what is announced stays, and the alarm says so.
    write_atomically(&state, &lab_state()).unwrap();
    let status = wait_until(Duration::from_secs(5), "the maxRoutes alarm", || {
        let s = herald.ctl(&["status"]);
        s.contains("maxRoutes 3 exceeded").then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", herald.ctl(&["status"])));
    assert!(status.contains("alarm"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.host1_table().unwrap(), three);
    // Back under the limit: the alarm clears.
    write_atomically(&state, &stage2).unwrap();
    wait_until(Duration::from_secs(5), "the alarm to clear", || (!herald.ctl(&["status"]).contains("alarm")).then_some(()))
        .unwrap();
}

#[test]
fn denied_prefixes_and_hijack_attempts_never_reach_the_router() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let stage2 = std::fs::read_to_string(repo_root().join("examples/yaobank/stage2-local-policy.yaml")).unwrap();
    // The customer Service asks for a denied external IP, a public one (8.8.8.8) and a node's address.
    let hostile = stage2.replace(
        "externalTrafficPolicy: Local\n",
        "externalTrafficPolicy: Local\n    externalIPs:\n    - 198.19.48.200\n    - 8.8.8.8\n    - 198.19.0.3\n",
    );
    let (herald, _state) = start(&lab, dir.path(), &hostile, "denyPrefixes: [198.19.48.128/25]\n");
    // The external range overlaps the deny list, so it is not announced either.
    let expected = table(&[("198.19.32.0/20", ALL), ("198.19.38.11/32", &["198.19.0.2"])]);
    herald.wait_table(&lab, &expected, Duration::from_secs(15), "only allowed routes");
    let routes = herald.ctl(&["routes"]);
    for (ip, why) in [("198.19.48.200", "outside every range"), ("8.8.8.8", "outside every range"), ("198.19.0.3", "outside every range")] {
        let line = routes.lines().find(|l| l.contains(ip)).unwrap_or_else(|| panic!("{ip} not reported:\n{routes}"));
        assert!(line.contains(why) || line.contains("denyPrefixes") || line.contains("node"), "{line}");
    }
    let status = herald.ctl(&["status"]);
    assert!(status.contains("overlaps denyPrefixes entry 198.19.48.128/25"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.host1_table().unwrap(), expected);
}
