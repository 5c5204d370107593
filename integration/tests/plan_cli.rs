//! `herald plan` and `herald run` + heraldctl + grpcurl, as a user runs them (no gobgpd).

use std::process::Command;
use std::time::Duration;

use herald_integration::process::{
    Herald, free_port, heraldctl, plan_only_config, repo_root, wait_until, workspace_bin,
};

fn herald(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("herald"))
        .current_dir(repo_root())
        .args(args)
        .output()
        .expect("run herald")
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const LAB_CONFIG: &str = "examples/yaobank/herald.yaml";

#[test]
fn plan_prints_exactly_the_lab_routes_for_each_stage() {
    let expected = [
        (
            "stage1-cluster-range.yaml",
            vec!["198.19.32.0/20", "198.19.48.0/20"],
        ),
        (
            "stage2-local-policy.yaml",
            vec!["198.19.32.0/20", "198.19.38.11/32", "198.19.48.0/20"],
        ),
        (
            "cluster-state.yaml",
            vec![
                "198.19.32.0/20",
                "198.19.38.11/32",
                "198.19.48.0/20",
                "198.19.48.10/32",
            ],
        ),
    ];
    for (file, prefixes) in expected {
        let state = format!("examples/yaobank/{file}");
        let out = herald(&[
            "plan",
            "--config",
            LAB_CONFIG,
            "--cluster-state",
            &state,
            "-o",
            "json",
        ]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let routes = json["routes"].as_array().unwrap();
        let got: Vec<&str> = routes
            .iter()
            .map(|r| r["prefix"].as_str().unwrap())
            .collect();
        assert_eq!(got, prefixes, "{file}");
        for route in routes {
            let hops: Vec<(&str, &str)> = route["nextHops"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h["node"].as_str().unwrap(), h["address"].as_str().unwrap()))
                .collect();
            if route["prefix"].as_str().unwrap().ends_with("/20") {
                assert_eq!(
                    hops,
                    [
                        ("control", "198.19.0.1"),
                        ("node1", "198.19.0.2"),
                        ("node2", "198.19.0.3")
                    ]
                );
            } else {
                assert_eq!(hops, [("node1", "198.19.0.2")]);
            }
        }
    }
}

#[test]
fn plan_table_and_builtin_example() {
    let out = herald(&["plan"]);
    assert!(out.status.success());
    let table = stdout(&out);
    let expected = "\
PREFIX           KIND            NEXT HOPS                                                     SOURCES
198.19.32.0/20   cluster-range   198.19.0.1 (control), 198.19.0.2 (node1), 198.19.0.3 (node2)  config:serviceClusterIPs[0]
198.19.38.11/32  cluster-ip      198.19.0.2 (node1)                                            yaobank/customer
198.19.48.0/20   external-range  198.19.0.1 (control), 198.19.0.2 (node1), 198.19.0.3 (node2)  config:serviceExternalIPs[0]
198.19.48.10/32  external-ip     198.19.0.2 (node1)                                            yaobank/customer
";
    assert_eq!(table, expected);
}

#[test]
fn bad_input_exits_non_zero_naming_file_line_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "serviceClusterIPs:\n  - cidr: 198.19.32.1/20\n",
            "line 2",
            "198.19.32.1/20",
        ),
        (
            "serviceClusterIPs: [{cidr: 300.1.1.0/24}]\n",
            "line 1",
            "300.1.1.0/24",
        ),
        (
            "serviceClusterIPs: []\nunknownKey: 1\n",
            "line 2",
            "unknownKey",
        ),
        ("serviceClusterIPs: [\n", "line 1", "unclosed"),
        ("nodeSelector: 'zone in (a'\n", "line 1", "zone in (a"),
    ];
    for (i, (text, line, value)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("config{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let out = herald(&[
            "plan",
            "--config",
            path.to_str().unwrap(),
            "--cluster-state",
            "examples/yaobank/cluster-state.yaml",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(line) && err.contains(value),
            "{text}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let states = [
        ("", "no objects"),
        (
            "kind: List\nitems:\n- kind: Service\n  metadata: {name: a}\n  spec: {clusterIPs: 5}\n",
            "Service a",
        ),
        (
            "kind: List\nitems: [{metadata: {name: x}}]\n",
            "needs `kind`",
        ),
        ("kind: List\nitems: [\n", "line 2"),
        ("- 1\n- 2\n", "expected a Kubernetes object"),
    ];
    for (i, (text, needle)) in states.iter().enumerate() {
        let path = dir.path().join(format!("state{i}.yaml"));
        std::fs::write(&path, text).unwrap();
        let out = herald(&["plan", "--cluster-state", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(
            err.contains(path.to_str().unwrap()) && err.contains(needle),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn refused_ips_are_reported_not_announced() {
    let dir = tempfile::tempdir().unwrap();
    let state = std::fs::read_to_string(repo_root().join("examples/yaobank/cluster-state.yaml"))
        .unwrap()
        .replace("- 198.19.48.10\n", "- 198.19.48.10\n    - 8.8.8.8\n");
    let path = dir.path().join("state.yaml");
    std::fs::write(&path, state).unwrap();
    let out = herald(&[
        "plan",
        "--config",
        LAB_CONFIG,
        "--cluster-state",
        path.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!json.to_string().contains("8.8.8.8/32"));
    assert_eq!(json["refusals"][0]["ip"], "8.8.8.8");
    assert_eq!(json["refusals"][0]["service"], "yaobank/customer");
    assert!(
        json["refusals"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("serviceExternalIPs")
    );
}

/// herald run with the file source and no gobgpd: the API answers heraldctl and grpcurl, and a changed
/// file gives a new plan.
#[test]
fn run_serves_the_plan_and_follows_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.yaml");
    let lab_state =
        std::fs::read_to_string(repo_root().join("examples/yaobank/cluster-state.yaml")).unwrap();
    std::fs::write(&state, &lab_state).unwrap();
    let port = free_port();
    let config = plan_only_config(dir.path(), &state, port);
    let herald = Herald::start(&config, port, dir.path().join("herald.log"), &[]).unwrap();
    let routes = || {
        let out = heraldctl(&herald.api, &["routes", "-o", "json"], &[]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .flatten()
    };
    let first = wait_until(Duration::from_secs(10), "herald's API", || {
        routes().filter(|r| r["generation"] != serde_json::Value::Null)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.log_text()));
    assert_eq!(first["routes"].as_array().unwrap().len(), 4);

    // Table output, explain and status through the CLI.
    let table =
        String::from_utf8(heraldctl(&herald.api, &["routes", "--kind", "external-ip"], &[]).stdout)
            .unwrap();
    assert!(
        table.contains("198.19.48.10/32  external-ip  198.19.0.2 (node1)"),
        "{table}"
    );
    let explain =
        String::from_utf8(heraldctl(&herald.api, &["explain", "yaobank/customer"], &[]).stdout)
            .unwrap();
    assert!(
        explain.contains("externalTrafficPolicy Local")
            && explain.contains("node1: ready endpoint"),
        "{explain}"
    );
    let status = String::from_utf8(heraldctl(&herald.api, &["status"], &[]).stdout).unwrap();
    assert!(
        status.contains("(synced)") && status.contains("4 routes"),
        "{status}"
    );

    // The pod moves to node2: the host routes follow within a second.
    let started = std::time::Instant::now();
    std::fs::write(
        &state,
        lab_state.replace("nodeName: node1", "nodeName: node2"),
    )
    .unwrap();
    let host_route_nodes = |r: &serde_json::Value| -> Vec<String> {
        r["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|route| route["prefix"] == "198.19.38.11/32")
            .flat_map(|route| route["nextHops"].as_array().cloned().unwrap_or_default())
            .map(|h| h["node"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(host_route_nodes(&first), ["node1"]);
    let moved = wait_until(
        Duration::from_secs(1),
        "the plan to follow the file",
        || routes().filter(|r| host_route_nodes(r) == ["node2"]),
    );
    assert!(
        moved.is_ok(),
        "{:?} after {:?}\n{}",
        moved.err(),
        started.elapsed(),
        herald.log_text()
    );

    // A broken file keeps the last plan, and status says why.
    std::fs::write(&state, "kind: List\nitems: [\n").unwrap();
    let alarm = wait_until(Duration::from_secs(5), "the source error in status", || {
        let s = String::from_utf8(heraldctl(&herald.api, &["status"], &[]).stdout).unwrap();
        s.contains("alarm").then_some(s)
    })
    .unwrap();
    assert!(alarm.contains("keeping the last plan"), "{alarm}");
    assert_eq!(routes().unwrap()["routes"].as_array().unwrap().len(), 4);
}

/// grpcurl, the tool users point at herald: reflection lists the services, calls work, health answers.
#[test]
fn grpcurl_lists_describes_and_calls() {
    let Some(grpcurl) = ["grpcurl"]
        .iter()
        .find(|b| Command::new(b).arg("-version").output().is_ok())
    else {
        panic!("grpcurl is not installed: scripts/install-deps.sh installs it");
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = plan_only_config(
        dir.path(),
        &repo_root().join("examples/yaobank/cluster-state.yaml"),
        port,
    );
    let herald = Herald::start(&config, port, dir.path().join("herald.log"), &[]).unwrap();
    let target = format!("127.0.0.1:{port}");
    let run = |args: &[&str]| {
        let out = Command::new(grpcurl)
            .arg("-plaintext")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    wait_until(Duration::from_secs(10), "health SERVING", || {
        let (ok, text) = run(&[
            "-d",
            r#"{"service":"herald.v1.PlanService"}"#,
            &target,
            "grpc.health.v1.Health/Check",
        ]);
        (ok && text.contains("SERVING")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.log_text()));
    let (ok, list) = run(&[&target, "list"]);
    assert!(ok, "{list}");
    let services: Vec<&str> = list.lines().collect();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "herald.v1.ControlService",
            "herald.v1.PlanService"
        ]
    );
    let (ok, describe) = run(&[&target, "describe", "herald.v1.PlanService"]);
    assert!(
        ok && describe.contains("rpc ListRoutes") && describe.contains("rpc WatchPlan"),
        "{describe}"
    );
    let (ok, routes) = run(&[
        "-d",
        r#"{"prefix":"198.19.48.10"}"#,
        &target,
        "herald.v1.PlanService/ListRoutes",
    ]);
    assert!(ok, "{routes}");
    let json: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let prefixes: Vec<&str> = json["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["198.19.48.0/20", "198.19.48.10/32"]);
    let (ok, explain) = run(&[
        "-d",
        r#"{"namespace":"yaobank","name":"customer"}"#,
        &target,
        "herald.v1.PlanService/ExplainService",
    ]);
    assert!(ok && explain.contains("\"found\": true"), "{explain}");
}

/// Reflection v1 (what newer grpcurl and other tools speak) lists the same services as v1alpha.
#[test]
fn reflection_v1_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = plan_only_config(
        dir.path(),
        &repo_root().join("examples/yaobank/cluster-state.yaml"),
        port,
    );
    let herald = Herald::start(&config, port, dir.path().join("herald.log"), &[]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let services = runtime.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let channel = loop {
            match tonic::transport::Endpoint::from_shared(herald.api.clone())
                .unwrap()
                .connect()
                .await
            {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("{e}\n{}", herald.log_text())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let response = stream.message().await.unwrap().unwrap();
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("{other:?}"),
        }
    });
    for wanted in ["herald.v1.PlanService", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == wanted), "{services:?}");
    }
    assert!(
        !services.iter().any(|s| s.starts_with("apipb")),
        "gobgp's API is not herald's to serve: {services:?}"
    );
}

/// Whether `heraldctl status` shows a plan planned from a synced source (the source's status and
/// the plan are published apart: "synced" alone may come first).
fn planned(status: &str) -> bool {
    status.contains("(synced)") && !status.contains("plan:    generation 0,")
}

/// No gobgpd at the configured address: the plan is still served, status says gobgpd is
/// unreachable, and herald keeps retrying (it logs the failure once, not per retry).
#[test]
fn without_gobgpd_the_plan_is_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let closed = free_port();
    let config = plan_only_config(
        dir.path(),
        &repo_root().join("examples/yaobank/cluster-state.yaml"),
        port,
    );
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!("gobgp: {{address: '127.0.0.1:{closed}'}}\n");
    std::fs::write(&config, text).unwrap();
    let herald = Herald::start(&config, port, dir.path().join("herald.log"), &[]).unwrap();
    let status = wait_until(
        Duration::from_secs(10),
        "status with the plan and gobgpd unreachable",
        || {
            let out = heraldctl(&herald.api, &["status"], &[]);
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            // The file is read and the first call to gobgpd made concurrently: either may be
            // first, so wait for both.
            (s.contains("UNREACHABLE") && s.contains("4 routes")).then_some(s)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.log_text()));
    // The alarm names why (gobgpd's connection refused), not just that.
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("alarm:   gobgpd at") && l.contains("is unreachable: ListPath")),
        "{status}"
    );
    let routes = String::from_utf8(heraldctl(&herald.api, &["routes"], &[]).stdout).unwrap();
    assert_eq!(
        routes.lines().filter(|l| l.contains("  no  ")).count(),
        4,
        "{routes}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = herald.log_text();
    assert_eq!(
        log.matches("gobgpd unreachable; retrying").count(),
        1,
        "{log}"
    );
}

/// README's "What is announced when" quotes `herald plan` and `heraldctl explain` on
/// `examples/semantics/`: each quoted line is what herald prints.
#[test]
fn readme_semantics_examples_are_what_herald_says() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let (config, state) = (
        "examples/semantics/herald.yaml",
        "examples/semantics/cluster-state.yaml",
    );
    let plan = stdout(&herald(&[
        "plan",
        "--config",
        config,
        "--cluster-state",
        state,
    ]));
    let quoted_plan = readme
        .split("$ herald plan --config examples/semantics/herald.yaml --cluster-state examples/semantics/cluster-state.yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README quotes the plan of examples/semantics");
    assert_eq!(quoted_plan, plan);

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let run_config = dir.path().join("herald.yaml");
    let base = std::fs::read_to_string(repo_root().join(config)).unwrap();
    std::fs::write(
        &run_config,
        format!(
            "{base}source: {{file: {}}}\napi: {{listen: '127.0.0.1:{port}'}}\n",
            repo_root().join(state).display()
        ),
    )
    .unwrap();
    let herald = Herald::start(&run_config, port, dir.path().join("herald.log"), &[]).unwrap();
    wait_until(Duration::from_secs(10), "herald's plan", || {
        let out = heraldctl(&herald.api, &["status"], &[]);
        planned(&String::from_utf8_lossy(&out.stdout)).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.log_text()));
    let mut checked = 0;
    for block in readme.split("$ heraldctl explain demo/").skip(1) {
        let service = block.split_whitespace().next().unwrap();
        let out = String::from_utf8(
            heraldctl(&herald.api, &["explain", &format!("demo/{service}")], &[]).stdout,
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
        let quoted_lines = block
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("```") && !l.starts_with("$ "));
        for quoted in quoted_lines.filter(|l| !l.trim().is_empty()) {
            assert!(
                lines.contains(&quoted.trim_end()),
                "demo/{service}: README quotes\n{quoted}\nherald says\n{out}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} quoted lines checked");
}

/// README's "ECMP width" quotes heraldctl on `examples/ecmp/`: each quoted line is what it prints.
#[test]
fn readme_ecmp_examples_are_what_heraldctl_says() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let run_config = dir.path().join("herald.yaml");
    let base = std::fs::read_to_string(repo_root().join("examples/ecmp/herald.yaml")).unwrap();
    let state = repo_root().join("examples/ecmp/cluster-state.yaml");
    std::fs::write(
        &run_config,
        format!(
            "{base}source: {{file: {}}}\napi: {{listen: '127.0.0.1:{port}'}}\n",
            state.display()
        ),
    )
    .unwrap();
    let herald = Herald::start(&run_config, port, dir.path().join("herald.log"), &[]).unwrap();
    wait_until(Duration::from_secs(10), "herald's plan", || {
        planned(&String::from_utf8_lossy(
            &heraldctl(&herald.api, &["status"], &[]).stdout,
        ))
        .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", herald.log_text()));
    let section = readme
        .split("With `examples/ecmp/`")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("README's ECMP example");
    let mut checked = 0;
    for block in section.split("$ heraldctl ").skip(1) {
        let command = block
            .lines()
            .next()
            .unwrap()
            .split('#')
            .next()
            .unwrap()
            .trim();
        let out = String::from_utf8(
            heraldctl(
                &herald.api,
                &command.split_whitespace().collect::<Vec<_>>(),
                &[],
            )
            .stdout,
        )
        .unwrap();
        let lines: Vec<&str> = out.lines().map(str::trim_end).collect();
        for quoted in block
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty() && l.trim() != "...")
        {
            assert!(
                lines.contains(&quoted.trim_end()),
                "heraldctl {command}: README quotes\n{quoted}\nheraldctl says\n{out}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} quoted lines checked");
}
