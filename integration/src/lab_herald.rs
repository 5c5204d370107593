//! herald running in the lab's pool namespace, beside its gobgpd, as in a pod.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::lab::{Lab, RouteTable};
use crate::process::{Herald, heraldctl};

/// herald's API port inside the pool namespace (each lab has its own namespace: no clash); the
/// herald of the lab's second speaker has the next port.
pub const API_PORT: u16 = 50151;
/// The seed lab's ranges.
pub const LAB_RANGES: &str =
    "serviceClusterIPs: [{cidr: 198.19.32.0/20}]\nserviceExternalIPs: [{cidr: 198.19.48.0/20}]\n";

/// herald in `lab`'s pool namespace, reading a cluster-state file, driving the lab's gobgpd.
pub struct LabHerald {
    pub herald: Herald,
    pub config: PathBuf,
    pool_ns: String,
    dir: PathBuf,
    starts: u32,
    api_port: u16,
}

impl LabHerald {
    /// Writes herald's config (`ranges` plus `extra` YAML) and starts herald.
    pub fn start(
        lab: &Lab,
        dir: &Path,
        state: &Path,
        ranges: &str,
        extra: &str,
    ) -> Result<LabHerald> {
        Self::start_on(lab, 0, dir, state, ranges, extra)
    }

    /// Starts herald beside speaker `speaker`'s gobgpd (see [`Lab::add_speaker`]).
    pub fn start_on(
        lab: &Lab,
        speaker: usize,
        dir: &Path,
        state: &Path,
        ranges: &str,
        extra: &str,
    ) -> Result<LabHerald> {
        let api_port = API_PORT + speaker as u16;
        let config = dir.join("herald.yaml");
        std::fs::write(
            &config,
            format!(
                "{ranges}source: {{file: {}}}\ngobgp: {{address: '{}', antiEntropyInterval: 2s}}\n\
                 api: {{listen: '127.0.0.1:{api_port}'}}\n{extra}",
                state.display(),
                lab.gobgp_address_of(speaker)
            ),
        )?;
        let pool_ns = lab.pool_ns().to_string();
        let herald = Herald::start(
            &config,
            api_port,
            dir.join("herald-0.log"),
            &["ip", "netns", "exec", &pool_ns],
        )?;
        Ok(LabHerald {
            herald,
            config,
            pool_ns,
            dir: dir.to_path_buf(),
            starts: 1,
            api_port,
        })
    }

    /// Starts herald again with the same config (after `stop`), logging to a new file.
    pub fn restart(&mut self) -> Result<()> {
        let log = self.dir.join(format!("herald-{}.log", self.starts));
        self.starts += 1;
        self.herald = Herald::start(
            &self.config,
            self.api_port,
            log,
            &["ip", "netns", "exec", &self.pool_ns],
        )?;
        Ok(())
    }

    /// heraldctl inside the pool namespace; stdout and stderr together.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = heraldctl(
            &self.herald.api,
            args,
            &["ip", "netns", "exec", &self.pool_ns],
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// What herald plans, as a route table (to compare with host1's); None before the first plan or
    /// while herald does not answer.
    pub fn planned_table(&self) -> Option<RouteTable> {
        let json: serde_json::Value =
            serde_json::from_str(&self.ctl(&["routes", "-o", "json"])).ok()?;
        // proto3 JSON omits an empty list: no "routes" before the first plan.
        json["routes"]
            .as_array()?
            .iter()
            .map(|r| {
                let prefix: ipnet::IpNet = r["prefix"].as_str()?.parse().ok()?;
                let hops = r["nextHops"]
                    .as_array()?
                    .iter()
                    .map(|h| h["address"].as_str()?.parse().ok())
                    .collect::<Option<_>>()?;
                Some((prefix, hops))
            })
            .collect()
    }

    /// Waits until `heraldctl status` contains `needle` and returns that status; panics with the
    /// last status and herald's log otherwise.
    pub fn wait_status(&self, needle: &str, timeout: Duration, what: &str) -> String {
        crate::process::wait_until(timeout, what, || {
            let status = self.ctl(&["status"]);
            status.contains(needle).then_some(status)
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", self.ctl(&["status"]), self.herald.log_text()))
    }

    /// Waits until host1's table is `expected`; panics with the lab's and herald's logs otherwise.
    pub fn wait_table(
        &self,
        lab: &Lab,
        expected: &RouteTable,
        timeout: Duration,
        what: &str,
    ) -> Duration {
        let started = Instant::now();
        match lab.wait_for_table(|t| t == expected, timeout) {
            Ok(_) => started.elapsed(),
            Err(e) => panic!(
                "{what}: {e}\nhost1 has {:?}\nexpected {expected:?}\n{}\n--- herald log ---\n{}",
                lab.host1_table().ok(),
                lab.diagnostics(),
                self.herald.log_text()
            ),
        }
    }
}

/// Samples host1's table every 50 ms on a thread until stopped; returns the samples that differ
/// from `expected`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<(usize, Vec<RouteTable>)>,
}

impl Sampler {
    pub fn start(host1_ns: String, expected: RouteTable) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = 0;
            let mut wrong = Vec::new();
            // Bounded: at most 10 minutes of samples, whatever the caller does.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let out = std::process::Command::new("ip")
                    .args(["-n", &host1_ns, "route"])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let t =
                    crate::lab::parse_routes(&crate::lab::bird_routes(&text)).unwrap_or_default();
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

    pub fn finish(self) -> (usize, Vec<RouteTable>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Whether `table` lacks a route or a next hop of `expected` (it may have more).
pub fn misses(expected: &RouteTable, table: &RouteTable) -> bool {
    expected
        .iter()
        .any(|(prefix, hops)| !table.get(prefix).is_some_and(|have| hops.is_subset(have)))
}

/// BIRD's count of withdrawals received from gobgpd, summed over the session's channels. Panics
/// when BIRD's output has no such count (a BIRD that words it differently must not read as zero).
pub fn withdrawals_received(lab: &Lab) -> u64 {
    let text = lab.birdc(&["show", "protocols", "all", "pool"]).unwrap();
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("Import withdraws:"))
        .map(|l| {
            l.split_whitespace()
                .nth(2)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("BIRD's withdrawal count unreadable: {l:?}"))
        })
        .collect();
    assert!(
        !counts.is_empty(),
        "BIRD's `show protocols all pool` has no \"Import withdraws:\" line:\n{text}"
    );
    counts.iter().sum()
}

/// A cluster of the lab's three nodes and `services` Local Services, each with an external IP in
/// 198.19.48.0/20 and one endpoint on each of `per_service` nodes.
pub fn big_state(services: u32, per_service: usize) -> String {
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
            .map(|(n, _)| {
                format!("{{addresses: [10.0.0.1], conditions: {{ready: true}}, nodeName: {n}}}")
            })
            .collect();
        let _ = write!(
            y,
            "- apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: s{i}-1, namespace: big, labels: {{kubernetes.io/service-name: s{i}}}}}\n  addressType: IPv4\n  endpoints: [{}]\n",
            endpoints.join(", ")
        );
    }
    y
}

/// The seed lab's cluster state (examples/yaobank/cluster-state.yaml).
pub fn lab_state() -> String {
    std::fs::read_to_string(crate::process::repo_root().join("examples/yaobank/cluster-state.yaml"))
        .expect("the lab's state")
}

/// Writes `state_text` as `cluster-state.yaml` in `dir` and starts herald beside speaker `speaker`
/// with the lab's ranges and `extra` config; returns herald and the state file.
pub fn start_with_state(
    lab: &Lab,
    speaker: usize,
    dir: &Path,
    state_text: &str,
    extra: &str,
) -> Result<(LabHerald, PathBuf)> {
    let state = dir.join("cluster-state.yaml");
    write_atomically(&state, state_text)?;
    Ok((
        LabHerald::start_on(lab, speaker, dir, &state, LAB_RANGES, extra)?,
        state,
    ))
}

/// Writes a file by rename, as editors do: a reader never sees half of it.
pub fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// A route table from `(prefix, next hops)` rows.
pub fn table(rows: &[(&str, &[&str])]) -> RouteTable {
    rows.iter()
        .map(|(prefix, hops)| {
            (
                prefix.parse().expect("prefix"),
                hops.iter().map(|h| h.parse().expect("next hop")).collect(),
            )
        })
        .collect()
}

/// The lab's nodes: name and address.
pub const NODES: [(&str, &str); 3] = [
    ("control", "198.19.0.1"),
    ("node1", "198.19.0.2"),
    ("node2", "198.19.0.3"),
];

/// The three nodes' addresses, next hops of the range routes.
pub const ALL_NODES: &[&str] = &["198.19.0.1", "198.19.0.2", "198.19.0.3"];

/// host1's table at the end of the seed lab, with the customer pod on `local_node`: both /20s over
/// the three nodes, the customer's two /32s via its node.
pub fn lab_final_table(local_node: &str) -> RouteTable {
    table(&[
        ("198.19.32.0/20", ALL_NODES),
        ("198.19.38.11/32", &[local_node]),
        ("198.19.48.0/20", ALL_NODES),
        ("198.19.48.10/32", &[local_node]),
    ])
}
