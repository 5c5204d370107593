//! "Why is my service (not) reachable?": metrics scraped from a running herald, explanations down to
//! the wire, the RIB diff, and JSON logs, in the lab with real gobgpd and BIRD 2.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use herald_integration::lab::Lab;
use herald_integration::lab_herald::{LAB_RANGES, LabHerald, lab_final_table, write_atomically};
use herald_integration::process::{
    Herald, free_port, plan_only_config, repo_root, wait_until, workspace_bin,
};

const METRICS_PORT: u16 = 9180;

fn lab_state() -> String {
    std::fs::read_to_string(repo_root().join("examples/yaobank/cluster-state.yaml")).unwrap()
}

fn scrape(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.pool_ns(),
            "curl",
            "-sf",
            &format!("http://127.0.0.1:{METRICS_PORT}/metrics"),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of a sample line `name{labels} value` (labels written as in the exposition).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `herald_*` names in `text` (a dashboard, a rule file).
fn series_named(text: &str) -> BTreeSet<&str> {
    text.match_indices("herald_")
        .map(|(i, _)| {
            let rest = &text[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .filter(|name| !name.ends_with('_'))
        .collect()
}

/// The names `text` uses that the exposition `metrics` has no family of (a histogram's `_bucket`,
/// `_sum` and `_count`, and a counter's `_total`, belong to their family's `# TYPE` line).
fn unexported(metrics: &str, text: &str) -> Vec<String> {
    let families: BTreeSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    series_named(text)
        .into_iter()
        .filter(|name| {
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !families.contains(name) && !families.contains(family)
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_explain_and_diff_answer_from_the_wire() {
    let lab = Lab::start().expect("lab");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("cluster-state.yaml");
    // The lab, plus a Service asking for an IP outside the ranges.
    let hostile = lab_state().replace(
        "    - 198.19.48.10\n",
        "    - 198.19.48.10\n    - 8.8.8.8\n",
    );
    write_atomically(&state, &hostile).unwrap();
    let herald = LabHerald::start(
        &lab,
        dir.path(),
        &state,
        LAB_RANGES,
        &format!("metrics: {{listen: '127.0.0.1:{METRICS_PORT}'}}\n"),
    )
    .unwrap();
    herald.wait_table(
        &lab,
        &lab_final_table("198.19.0.2"),
        Duration::from_secs(15),
        "lab routes",
    );

    // Metrics: names and labels as documented, values matching what host1 has.
    // The metrics follow herald's status on a task of their own: wait for the peer and the push.
    let metrics = wait_until(
        Duration::from_secs(10),
        "metrics with the BGP peer and the push",
        || {
            let m = scrape(&lab);
            (m.contains("herald_bgp_peer_state{")
                && sample(&m, "herald_gobgp_paths_applied") == Some(8.0)
                && sample(&m, "herald_push_duration_seconds_count") == Some(1.0))
            .then_some(m)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", scrape(&lab)));
    let expectations: &[(&str, f64)] = &[
        ("herald_routes_planned{kind=\"cluster-range\"}", 1.0),
        ("herald_routes_planned{kind=\"cluster-ip\"}", 1.0),
        ("herald_routes_planned{kind=\"external-ip\"}", 1.0),
        ("herald_routes_planned{kind=\"load-balancer-ip\"}", 0.0),
        ("herald_routes_applied{kind=\"external-range\"}", 1.0),
        ("herald_next_hops_planned", 8.0),
        ("herald_plan_generation", 1.0),
        ("herald_refused_ips{cause=\"outside-ranges\"}", 1.0),
        ("herald_source_synced", 1.0),
        ("herald_source_up", 1.0),
        ("herald_gobgp_up", 1.0),
        ("herald_gobgp_paths_applied", 8.0),
        ("herald_gobgp_pending_operations", 0.0),
        ("herald_gobgp_applied_generation", 1.0),
        ("herald_reconcile_operations_total{operation=\"add\"}", 8.0),
        (
            "herald_reconcile_operations_total{operation=\"withdraw\"}",
            0.0,
        ),
        ("herald_reconcile_errors_total", 0.0),
        ("herald_push_duration_seconds_count", 1.0),
        (
            "herald_bgp_peer_state{peer=\"198.19.15.254\",state=\"established\"}",
            1.0,
        ),
        ("herald_max_routes_refused", 0.0),
    ];
    for (series, value) in expectations {
        assert_eq!(
            sample(&metrics, series),
            Some(*value),
            "{series} in\n{metrics}\n{}",
            herald.herald.log_text()
        );
    }
    // Every series the Grafana dashboard draws and the alerting rules read is exported, and the
    // check would see one that is not.
    let rules =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/herald-alerts.yaml")).unwrap();
    let rule_exprs: String = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let dashboard =
        std::fs::read_to_string(repo_root().join("deploy/grafana/herald-dashboard.json")).unwrap();
    for (file, text) in [
        ("the dashboard", dashboard),
        ("the rules' exprs", rule_exprs),
    ] {
        assert!(
            series_named(&text).len() >= 8,
            "{file}: {:?}",
            series_named(&text)
        );
        assert_eq!(
            unexported(&metrics, &text),
            Vec::<String>::new(),
            "{file} uses series herald does not export:\n{metrics}"
        );
    }
    assert_eq!(
        unexported(&metrics, "rate(herald_no_such_series_total[5m])"),
        ["herald_no_such_series_total"]
    );

    // Explain, down to the wire: gobgpd holds the path and sent it to host1 over ADD-PATH.
    let explain = herald.ctl(&["explain", "yaobank/customer"]);
    assert!(explain.contains("198.19.48.10/32 on the wire"), "{explain}");
    assert!(
        explain.contains("sent to 198.19.15.254 (established): 198.19.0.2"),
        "{explain}"
    );
    assert!(
        explain.contains("8.8.8.8")
            && explain.contains("outside every range of serviceExternalIPs"),
        "{explain}"
    );
    let status = herald.ctl(&["status"]);
    assert!(
        status.contains("peer:    198.19.15.254 established (ADD-PATH ipv4+ipv6)"),
        "{status}"
    );

    // The RIB diff: all in sync, and an operator's path marked foreign.
    lab.gobgp(&[
        "global",
        "rib",
        "add",
        "198.19.99.0/24",
        "nexthop",
        "198.19.0.3",
        "-a",
        "ipv4",
    ])
    .unwrap();
    let diff = herald.ctl(&["diff"]);
    assert!(
        diff.contains("foreign  198.19.99.0/24  198.19.0.3"),
        "{diff}"
    );
    assert!(
        diff.contains("8 in sync, 0 missing, 0 unexpected") && diff.contains("1 foreign"),
        "{diff}"
    );

    // A router that does not take ADD-PATH: herald says it sees one next hop only.
    let conf = lab.dir().join("bird.conf");
    let without = std::fs::read_to_string(&conf)
        .unwrap()
        .replace(" add paths rx;", "");
    std::fs::write(&conf, without).unwrap();
    lab.birdc(&["configure"]).unwrap();
    let explain = wait_until(Duration::from_secs(20), "the ADD-PATH note", || {
        let e = herald.ctl(&["explain", "yaobank/customer"]);
        e.contains("ADD-PATH send not negotiated for IPv4")
            .then_some(e)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            herald.ctl(&["explain", "yaobank/customer"]),
            herald.ctl(&["status"])
        )
    });
    assert!(explain.contains("one next hop per prefix"), "{explain}");
    let status = herald.ctl(&["status"]);
    assert!(
        status.contains("no ADD-PATH")
            && status.contains("alarm:   BGP neighbor 198.19.15.254: ADD-PATH"),
        "{status}"
    );
}

/// A plan-only herald (no gobgpd) over maxRoutes: the refused routes are counted for the
/// HeraldMaxRoutesReached alert, and no gobgpd series says "down" where there is no gobgpd.
#[test]
fn plan_only_metrics_count_max_routes_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let state = repo_root().join("examples/yaobank/cluster-state.yaml");
    let api_port = free_port();
    let metrics_port = free_port();
    let config = plan_only_config(dir.path(), &state, api_port);
    // The lab's plan has 4 routes (2 ranges, 2 host routes).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "metrics: {{listen: '127.0.0.1:{metrics_port}'}}\nguard: {{maxRoutes: 2}}\n"
    ));
    std::fs::write(&config, text).unwrap();
    let herald = Herald::start(&config, api_port, dir.path().join("herald.log"), &[]).unwrap();
    let scrape = || {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{metrics_port}/metrics")])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let metrics = wait_until(Duration::from_secs(10), "a plan in the metrics", || {
        let m = scrape();
        (sample(&m, "herald_plan_generation").unwrap_or(0.0) >= 1.0).then_some(m)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", scrape(), herald.log_text()));
    assert_eq!(
        sample(&metrics, "herald_max_routes_refused"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "herald_routes_planned{kind=\"cluster-range\"}"),
        Some(1.0),
        "{metrics}"
    );
    for absent in [
        "herald_gobgp_",
        "herald_routes_applied",
        "herald_bgp_peer_state",
        "herald_rib_repairs",
        "herald_reconcile_",
    ] {
        assert!(
            !metrics.contains(absent),
            "{absent} exported without gobgpd:\n{metrics}"
        );
    }
}

#[test]
fn json_logs_carry_fields() {
    let dir = tempfile::tempdir().unwrap();
    let state = repo_root().join("examples/yaobank/cluster-state.yaml");
    let config = plan_only_config(dir.path(), &state, free_port());
    let log = dir.path().join("herald.log");
    let mut child = Command::new(workspace_bin("herald"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let planned = wait_until(Duration::from_secs(10), "the plan's log line", || {
        read().contains("plan updated").then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = read();
    planned.unwrap_or_else(|e| panic!("{e}\n{text}"));
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let plan = lines
        .iter()
        .find(|l| l["message"] == "plan updated")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(plan["routes"], 4, "{plan}");
    assert_eq!(plan["generation"], 1, "{plan}");
    assert_eq!(plan["level"], "INFO");
}
