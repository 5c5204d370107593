//! Faults, restarts and hostile input, with real processes: gobgpd and BIRD 2 in network namespaces
//! the tests make, herald as the user runs it. host1's kernel table is the judge: an operator trusts
//! herald only if its failures never show there.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald_integration::lab::{Lab, RouteTable};
use herald_integration::lab_herald::{
    ALL_NODES, LabHerald, Sampler, big_state, lab_final_table, lab_state, start_with_state, table,
    withdrawals_received, write_atomically,
};
use herald_integration::process::{repo_root, wait_until};

const ALL: &[&str] = ALL_NODES;

fn start(lab: &Lab, dir: &Path, state_text: &str, extra: &str) -> (LabHerald, std::path::PathBuf) {
    start_with_state(lab, 0, dir, state_text, extra).unwrap()
}

#[test]
fn gobgpd_killed_mid_push_gets_the_whole_plan_back_within_5s() {
    let mut lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    // 3,400 Local services × 3 next hops: ~10,000 paths.
    let (herald, _state) = start(&lab, dir.path(), &big_state(3400, 3), "");
    // Kill gobgpd while the RIB is still filling: poll its count closely (a push of this size takes
    // a few hundred ms) and kill as soon as it holds some of the paths, then check below that it
    // held fewer than the plan's (paths only grow during a push, so the kill came mid-push).
    let in_rib_at_kill = wait_until(Duration::from_secs(20), "the push to start", || {
        let summary = lab
            .gobgp(&["global", "rib", "summary", "-a", "ipv4"])
            .ok()?;
        let n: u64 = summary
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .max()?;
        (n > 0).then_some(n)
    })
    .unwrap();
    lab.kill_gobgpd(libc::SIGKILL).unwrap();
    let plan = wait_until(Duration::from_secs(20), "herald's plan", || {
        herald.planned_table().filter(|t| t.len() > 3000)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            &herald.ctl(&["status"]),
            herald.herald.log_text()
        )
    });
    let paths: usize = plan.values().map(BTreeSet::len).sum();
    assert!(paths > 10_000, "{paths} paths");
    let ipv4_paths: usize = plan
        .iter()
        .filter(|(prefix, _)| matches!(prefix, ipnet::IpNet::V4(_)))
        .map(|(_, hops)| hops.len())
        .sum();
    assert!(
        (in_rib_at_kill as usize) < ipv4_paths,
        "gobgpd held {in_rib_at_kill} of {ipv4_paths} IPv4 paths when it was killed: the push had ended, this test proves nothing"
    );
    let restarted = Instant::now();
    lab.start_gobgpd().unwrap();
    let took = herald.wait_table(
        &lab,
        &plan,
        Duration::from_secs(5).saturating_sub(restarted.elapsed()),
        "plan back after gobgpd restart",
    );
    eprintln!(
        "killed with {in_rib_at_kill} of {paths} paths in gobgpd; all back on host1 {:?} after gobgpd restarted",
        restarted.elapsed()
    );
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
        wait_until(
            Duration::from_secs(10),
            "herald applied after restart",
            || {
                herald
                    .ctl(&["status"])
                    .contains("8 paths applied, 0 pending")
                    .then_some(())
            },
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}\n{}",
                herald.ctl(&["status"]),
                herald.herald.log_text()
            )
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    let (samples, wrong) = sampler.finish();
    assert!(samples > 20, "{samples} samples");
    assert!(
        wrong.is_empty(),
        "{} of {samples} samples differed from the plan: {:?}",
        wrong.len(),
        wrong.first()
    );
    assert_eq!(
        withdrawals_received(&lab),
        withdrawals,
        "BIRD received withdrawals during herald's restarts"
    );
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
        ("garbage", |p| {
            std::fs::write(p, "kind: List\nitems: [{kind: Service, spec: 12}").unwrap()
        }),
        ("empty", |p| std::fs::write(p, "").unwrap()),
        ("a directory", |p| {
            std::fs::remove_file(p).unwrap();
            std::fs::create_dir(p).unwrap();
        }),
    ];
    for (what, break_it) in breakages {
        break_it(&state);
        let status = herald.wait_status(
            "keeping the last plan",
            Duration::from_secs(5),
            &format!("the alarm ({what})"),
        );
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
    assert!(
        wrong.is_empty(),
        "host1 changed while the source was broken: {} of {samples}",
        wrong.len()
    );
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
    lab.gobgp(&["global", "rib", "del", "all", "-a", "ipv4"])
        .unwrap();
    let deleted = Instant::now();
    let rib = lab
        .gobgp(&["global", "rib", "-a", "ipv4"])
        .unwrap_or_default();
    // First herald's word that it repaired (host1's table may still be the one from before the
    // deletion when first looked at: BIRD withdraws after gobgpd), then the table.
    wait_until(Duration::from_secs(3), "herald to repair the drift", || {
        herald.herald.log_text().contains("repairing").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.herald.log_text()));
    herald.wait_table(
        &lab,
        &expected,
        Duration::from_secs(3).saturating_sub(deleted.elapsed()),
        "drift repaired",
    );
    eprintln!(
        "RIB emptied by hand ({} lines left right after); herald's paths back on host1 after {:?}",
        rib.lines().count(),
        deleted.elapsed()
    );

    // An operator's own paths, one on a prefix of its own and one on a prefix herald announces
    // (origin IGP like herald's, so that BIRD merges both into one ECMP route).
    lab.gobgp(&[
        "global",
        "rib",
        "add",
        "198.19.99.0/24",
        "nexthop",
        "198.19.0.3",
        "identifier",
        "7",
        "origin",
        "igp",
        "-a",
        "ipv4",
    ])
    .unwrap();
    lab.gobgp(&[
        "global",
        "rib",
        "add",
        "198.19.48.10/32",
        "nexthop",
        "198.19.0.1",
        "identifier",
        "1",
        "origin",
        "igp",
        "-a",
        "ipv4",
    ])
    .unwrap();
    let with_operator = |mut t: RouteTable| {
        t.insert(
            "198.19.99.0/24".parse().unwrap(),
            ["198.19.0.3".parse().unwrap()].into(),
        );
        t.entry("198.19.48.10/32".parse().unwrap())
            .or_default()
            .insert("198.19.0.1".parse().unwrap());
        t
    };
    herald.wait_table(
        &lab,
        &with_operator(expected.clone()),
        Duration::from_secs(3),
        "operator paths beside herald's",
    );

    // herald changes its own routes (the pod moves, then the policy goes back to Cluster): the
    // operator's paths stay, including the one on a prefix herald announces and then withdraws.
    write_atomically(
        &state,
        &lab_state().replace("nodeName: node1", "nodeName: node2"),
    )
    .unwrap();
    herald.wait_table(
        &lab,
        &with_operator(lab_final_table("198.19.0.3")),
        Duration::from_secs(3),
        "pod moved, operator paths kept",
    );
    write_atomically(
        &state,
        &lab_state().replace(
            "externalTrafficPolicy: Local",
            "externalTrafficPolicy: Cluster",
        ),
    )
    .unwrap();
    let operator_only = with_operator(table(&[("198.19.32.0/20", ALL), ("198.19.48.0/20", ALL)]));
    herald.wait_table(
        &lab,
        &operator_only,
        Duration::from_secs(3),
        "herald's host routes gone, the operator's kept",
    );
    // Past at least one anti-entropy pass, sampled: the operator's paths are never touched.
    let sampler = Sampler::start(lab.host1_ns().to_string(), operator_only.clone());
    std::thread::sleep(Duration::from_secs(5));
    let (samples, wrong) = sampler.finish();
    assert!(
        wrong.is_empty(),
        "{} of {samples} samples differed: {:?}",
        wrong.len(),
        wrong.first()
    );
}

#[test]
fn hung_gobgpd_under_churn_keeps_memory_bounded_and_converges() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    // 1,000 Local Services whose endpoints go from one node to two and back with every change:
    // each change moves 2,000 routes (a cluster IP and an external IP per Service), so a herald
    // that kept each plan or each pending diff for the hung gobgpd (~0.5 MB a change) would grow
    // by far more than the bound below within the 30 s of churn.
    const SERVICES: u32 = 1000;
    let narrow = big_state(SERVICES, 1);
    let wide = big_state(SERVICES, 2);
    let (herald, state) = start(&lab, dir.path(), &narrow, "");
    let initial = wait_until(Duration::from_secs(20), "herald's plan", || {
        herald
            .planned_table()
            .filter(|t| t.len() > 2 * SERVICES as usize)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", herald.herald.log_text()));
    herald.wait_table(&lab, &initial, Duration::from_secs(20), "initial routes");
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let before = rss(herald.herald.pid());
    assert!(before > 0, "herald's RSS unreadable");
    lab.signal_gobgpd(libc::SIGSTOP).unwrap();
    // 30 s of churn, a change every 100 ms.
    let started = Instant::now();
    let mut changes = 0;
    // The peak in the first 10 s (the allocator's working set for planning states of this size)
    // and in the last 20 s: a leak grows with the number of changes, a working set does not.
    let (mut early_peak, mut late_peak) = (before, 0);
    while started.elapsed() < Duration::from_secs(30) {
        changes += 1;
        write_atomically(&state, if changes % 2 == 1 { &wide } else { &narrow }).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let now = rss(herald.herald.pid());
        if started.elapsed() < Duration::from_secs(10) {
            early_peak = early_peak.max(now);
        } else {
            late_peak = late_peak.max(now);
        }
    }
    let peak = early_peak.max(late_peak);
    // herald planned the churn while gobgpd hung (the plan it serves is the last state's).
    let last_wide = changes % 2 == 1;
    let planned = wait_until(
        Duration::from_secs(10),
        "herald's plan of the last state",
        || {
            herald
                .planned_table()
                .filter(|t| t.values().any(|hops| hops.len() == 2) == last_wide)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", herald.herald.log_text()));
    let status = herald.ctl(&["status"]);
    lab.signal_gobgpd(libc::SIGCONT).unwrap();
    let resumed = Instant::now();
    herald.wait_table(
        &lab,
        &planned,
        Duration::from_secs(20),
        "convergence after SIGCONT",
    );
    eprintln!(
        "{changes} changes of 2,000 routes while gobgpd hung 30 s: RSS {before} kB -> peak {early_peak} kB in the first 10 s, {late_peak} kB in the last 20 s; converged {:?} after SIGCONT; status while hung:\n{status}",
        resumed.elapsed()
    );
    assert!(
        peak < before + 50_000,
        "herald's memory grew from {before} kB to {peak} kB while gobgpd hung"
    );
    assert!(
        late_peak < early_peak + 10_000,
        "herald's memory kept growing while gobgpd hung: {early_peak} kB at most in the first 10 s, {late_peak} kB in the last 20 s"
    );
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
            let out = std::process::Command::new("ip")
                .args(["-n", &host1, "route", "show", "198.19.38.11"])
                .output()
                .unwrap();
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
        // The last drop lasts long enough that herald, however busy the machine, reads it (the
        // hold-down below is measured from it).
        let last = i == 28;
        std::thread::sleep(Duration::from_millis(if last { 400 } else { 100 }));
    }
    herald.wait_table(&lab, &up, Duration::from_secs(5), "settled after flapping");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let history = sampler.join().unwrap();
    let changes: Vec<(Duration, bool)> = history
        .iter()
        .skip(1)
        .map(|(t, p)| (t.duration_since(flapping), *p))
        .collect();
    // One withdrawal at the first drop, one re-announcement a hold-down after the last drop.
    assert_eq!(
        changes.len(),
        2,
        "host1's /32 changed {} times: {changes:?}",
        changes.len()
    );
    assert!(!changes[0].1 && changes[1].1, "{changes:?}");
    let back_after_last_drop = history[2].0.duration_since(last_drop);
    assert!(
        back_after_last_drop >= Duration::from_millis(900),
        "re-announced {back_after_last_drop:?} after the last drop"
    );
    eprintln!(
        "30 flaps: host1 changed twice; re-announced {back_after_last_drop:?} after the last drop"
    );
}

#[test]
fn max_routes_keeps_what_is_announced_and_refuses_the_rest() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let stage2 =
        std::fs::read_to_string(repo_root().join("examples/yaobank/stage2-local-policy.yaml"))
            .unwrap();
    let (herald, state) = start(&lab, dir.path(), &stage2, "guard: {maxRoutes: 3}\n");
    let three = table(&[
        ("198.19.32.0/20", ALL),
        ("198.19.38.11/32", &["198.19.0.2"]),
        ("198.19.48.0/20", ALL),
    ]);
    herald.wait_table(
        &lab,
        &three,
        Duration::from_secs(15),
        "stage 2 under maxRoutes",
    );
    // A fourth route: refused, what is announced stays, and the alarm says so.
    write_atomically(&state, &lab_state()).unwrap();
    let status = herald.wait_status(
        "maxRoutes 3 exceeded",
        Duration::from_secs(5),
        "the maxRoutes alarm",
    );
    assert!(status.contains("alarm"), "{status}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.host1_table().unwrap(), three);
    // Back under the limit: the alarm clears.
    write_atomically(&state, &stage2).unwrap();
    wait_until(Duration::from_secs(5), "the alarm to clear", || {
        (!herald.ctl(&["status"]).contains("alarm")).then_some(())
    })
    .unwrap();
}

#[test]
fn denied_prefixes_and_hijack_attempts_never_reach_the_router() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let stage2 =
        std::fs::read_to_string(repo_root().join("examples/yaobank/stage2-local-policy.yaml"))
            .unwrap();
    // The customer Service asks for a denied external IP, a public one (8.8.8.8) and a node's
    // address. That address is inside the external range (a fourth node, not Ready, whose address
    // an operator numbered from it), so only the node-address rule can refuse it.
    let hostile = stage2
        .replace(
            "externalTrafficPolicy: Local\n",
            "externalTrafficPolicy: Local\n    externalIPs:\n    - 198.19.48.200\n    - 8.8.8.8\n    - 198.19.48.50\n",
        )
        .replacen(
            "- apiVersion: v1\n  kind: Node\n",
            "- apiVersion: v1\n  kind: Node\n  metadata:\n    name: node3\n  status:\n    addresses:\n    - address: 198.19.48.50\n      type: InternalIP\n    conditions:\n    - type: Ready\n      status: \"False\"\n- apiVersion: v1\n  kind: Node\n",
            1,
        );
    assert!(
        hostile.contains("name: node3") && hostile.contains("- 198.19.48.50"),
        "the fixture changed: {hostile}"
    );
    let (herald, _state) = start(
        &lab,
        dir.path(),
        &hostile,
        "denyPrefixes: [198.19.48.128/25]\n",
    );
    // The external range overlaps the deny list, so it is not announced either.
    let expected = table(&[
        ("198.19.32.0/20", ALL),
        ("198.19.38.11/32", &["198.19.0.2"]),
    ]);
    herald.wait_table(
        &lab,
        &expected,
        Duration::from_secs(15),
        "only allowed routes",
    );
    let routes = herald.ctl(&["routes"]);
    let refused = routes
        .split_once("REFUSED")
        .unwrap_or_else(|| panic!("no refusals listed:\n{routes}"))
        .1;
    for (ip, why) in [
        (
            "198.19.48.200",
            "overlaps denyPrefixes entry 198.19.48.128/25",
        ),
        ("8.8.8.8", "outside every range of serviceExternalIPs"),
        ("198.19.48.50", "is a node's address"),
    ] {
        let line = refused
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == ip))
            .unwrap_or_else(|| panic!("{ip} not refused:\n{routes}"));
        assert!(
            line.trim_end().ends_with(why),
            "{ip}: expected the reason {why:?}, got {line:?}"
        );
    }
    let status = herald.ctl(&["status"]);
    assert!(
        status.contains("overlaps denyPrefixes entry 198.19.48.128/25"),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(lab.host1_table().unwrap(), expected);
}
