//! herald running in the lab's pool namespace, beside its gobgpd, as in a pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::lab::{Lab, RouteTable};
use crate::process::{heraldctl, Herald};

/// herald's API port inside the pool namespace (each lab has its own namespace: no clash).
pub const API_PORT: u16 = 50151;
/// The seed lab's ranges.
pub const LAB_RANGES: &str = "serviceClusterIPs: [{cidr: 198.19.32.0/20}]\nserviceExternalIPs: [{cidr: 198.19.48.0/20}]\n";

/// herald in `lab`'s pool namespace, reading a cluster-state file, driving the lab's gobgpd.
pub struct LabHerald {
    pub herald: Herald,
    pub config: PathBuf,
    pool_ns: String,
    dir: PathBuf,
    starts: u32,
}

impl LabHerald {
    /// Writes herald's config (`ranges` plus `extra` YAML) and starts herald.
    pub fn start(lab: &Lab, dir: &Path, state: &Path, ranges: &str, extra: &str) -> Result<LabHerald> {
        let config = dir.join("herald.yaml");
        std::fs::write(
            &config,
            format!(
                "{ranges}source: {{file: {}}}\ngobgp: {{address: '127.0.0.1:{}', antiEntropyInterval: 2s}}\n\
                 api: {{listen: '127.0.0.1:{API_PORT}'}}\n{extra}",
                state.display(),
                lab.gobgp_api_port()
            ),
        )?;
        let pool_ns = lab.pool_ns().to_string();
        let herald = Herald::start(&config, API_PORT, dir.join("herald-0.log"), &["ip", "netns", "exec", &pool_ns])?;
        Ok(LabHerald { herald, config, pool_ns, dir: dir.to_path_buf(), starts: 1 })
    }

    /// Starts herald again with the same config (after `stop`), logging to a new file.
    pub fn restart(&mut self) -> Result<()> {
        let log = self.dir.join(format!("herald-{}.log", self.starts));
        self.starts += 1;
        self.herald = Herald::start(&self.config, API_PORT, log, &["ip", "netns", "exec", &self.pool_ns])?;
        Ok(())
    }

    /// heraldctl inside the pool namespace; stdout and stderr together.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = heraldctl(&self.herald.api, args, &["ip", "netns", "exec", &self.pool_ns]);
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// What herald plans, as a route table (to compare with host1's); None before the first plan or
    /// while herald does not answer.
    pub fn planned_table(&self) -> Option<RouteTable> {
        let json: serde_json::Value = serde_json::from_str(&self.ctl(&["routes", "-o", "json"])).ok()?;
        // proto3 JSON omits an empty list: no "routes" before the first plan.
        json["routes"]
            .as_array()?
            .iter()
            .map(|r| {
                let prefix: ipnet::IpNet = r["prefix"].as_str()?.parse().ok()?;
                let hops = r["nextHops"].as_array()?.iter().map(|h| h["address"].as_str()?.parse().ok()).collect::<Option<_>>()?;
                Some((prefix, hops))
            })
            .collect()
    }

    /// Waits until host1's table is `expected`; panics with the lab's and herald's logs otherwise.
    pub fn wait_table(&self, lab: &Lab, expected: &RouteTable, timeout: Duration, what: &str) -> Duration {
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
        .map(|(prefix, hops)| (prefix.parse().expect("prefix"), hops.iter().map(|h| h.parse().expect("next hop")).collect()))
        .collect()
}

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
