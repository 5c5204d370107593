//! A standalone gobgpd for tests: no BGP listener (`port = -1`), its gRPC API on a free port of
//! 127.0.0.1, config and log in a temporary directory, killed when dropped.
//!
//! Also a small, independent reader of gobgpd's RIB (`ListPath`), so that tests do not check
//! herald's decoder with itself, and a runner for the `gobgp` CLI.

use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_api::gobgp::v3 as api;
use herald_api::gobgp::v3::gobgp_api_client::GobgpApiClient;
use ipnet::IpNet;
use prost::Message;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint};

pub const GOBGPD: &str = "/usr/bin/gobgpd";
pub const GOBGP: &str = "gobgp";
/// How long gobgpd may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Gobgpd {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gobgpd {
    /// Starts gobgpd on a free port and waits until its API answers.
    pub async fn start() -> Gobgpd {
        Gobgpd::start_with("").await
    }

    /// Like [`Gobgpd::start`], with more TOML after the `[global.config]` table.
    pub async fn start_with(extra_config: &str) -> Gobgpd {
        let mut last = String::new();
        for _ in 0..5 {
            let mut g = Gobgpd::new_with(free_port(), extra_config);
            match g.spawn_and_wait().await {
                Ok(()) => return g,
                Err(e) => last = e,
            }
        }
        panic!("cannot start gobgpd: {last}");
    }

    /// A gobgpd for `port`, not started yet.
    pub fn new(port: u16) -> Gobgpd {
        Gobgpd::new_with(port, "")
    }

    pub fn new_with(port: u16, extra_config: &str) -> Gobgpd {
        Gobgpd::with_config(
            port,
            &format!(
                "[global.config]\n  as = 64512\n  router-id = \"192.0.2.1\"\n  port = -1\n{extra_config}"
            ),
        )
    }

    /// A gobgpd with API port `port` and a config of one's own (TOML), not started yet.
    pub fn with_config(port: u16, config: &str) -> Gobgpd {
        let dir = tempfile::Builder::new()
            .prefix("herald-gobgpd-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("gobgpd.toml"), config).unwrap();
        Gobgpd {
            dir,
            port,
            child: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the API, as herald's config has it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gobgpd.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts (or restarts) gobgpd on its port and waits until its API answers.
    pub async fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(GOBGPD)
            .arg("-f")
            .arg(self.dir.path().join("gobgpd.toml"))
            .arg(format!("--api-hosts=127.0.0.1:{}", self.port))
            .arg("--pprof-disable")
            .arg("--log-plain")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {GOBGPD}: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("gobgpd exited with {status}: {}", self.log()));
            }
            if let Ok(mut client) = self.try_client().await {
                if client.get_bgp(api::GetBgpRequest {}).await.is_ok() {
                    // A free port found by binding and releasing it can be taken again meanwhile,
                    // by another test's gobgpd: then that one answered, and this one cannot bind.
                    let pid = self.pid().expect("spawned above");
                    if listens_on(pid, self.port) {
                        return Ok(());
                    }
                    self.kill();
                    return Err(format!(
                        "another process answers on port {}: not this gobgpd (pid {pid})",
                        self.port
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "gobgpd's API on port {} did not answer: {}",
                    self.port,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills gobgpd (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (e.g. "STOP", "CONT") to gobgpd.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("gobgpd runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[text
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= start)
            .unwrap_or(0)..]
            .to_string()
    }

    async fn try_client(&self) -> Result<GobgpApiClient<Channel>, tonic::transport::Error> {
        let channel = Endpoint::from_shared(format!("http://{}", self.address()))
            .unwrap()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(20))
            .connect()
            .await?;
        Ok(GobgpApiClient::new(channel).max_decoding_message_size(256 << 20))
    }

    pub async fn client(&self) -> GobgpApiClient<Channel> {
        self.try_client().await.expect("gobgpd's API answers")
    }

    /// Runs the gobgp CLI against this gobgpd; panics unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(GOBGP)
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run gobgp: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "gobgp {} failed: {}{}",
            args.join(" "),
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Every path in the global RIB of both unicast families, sorted.
    pub async fn paths(&self) -> Vec<Listed> {
        let mut client = self.client().await;
        let mut out = Vec::new();
        for afi in [api::family::Afi::Ip, api::family::Afi::Ip6] {
            let request = api::ListPathRequest {
                table_type: api::TableType::Global as i32,
                family: Some(api::Family {
                    afi: afi as i32,
                    safi: api::family::Safi::Unicast as i32,
                }),
                ..Default::default()
            };
            let mut stream = client.list_path(request).await.unwrap().into_inner();
            while let Some(response) = stream.message().await.unwrap() {
                for path in response.destination.unwrap().paths {
                    out.push(Listed::from_api(&path));
                }
            }
        }
        out.sort();
        out
    }

    /// The number of paths gobgpd holds (IPv4 + IPv6), from GetTable.
    pub async fn path_count(&self) -> u64 {
        let mut client = self.client().await;
        let mut total = 0;
        for afi in [api::family::Afi::Ip, api::family::Afi::Ip6] {
            let request = api::GetTableRequest {
                table_type: api::TableType::Global as i32,
                family: Some(api::Family {
                    afi: afi as i32,
                    safi: api::family::Safi::Unicast as i32,
                }),
                name: String::new(),
            };
            total += client
                .get_table(request)
                .await
                .unwrap()
                .into_inner()
                .num_path;
        }
        total
    }
}

impl Drop for Gobgpd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A path as gobgpd lists it, decoded independently of herald.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub prefix: IpNet,
    pub next_hop: IpAddr,
    pub identifier: u32,
    pub source_asn: u32,
    pub origin: u32,
    pub communities: Vec<u32>,
    pub large_communities: Vec<(u32, u32, u32)>,
    pub local_pref: Option<u32>,
    /// Type URLs of the attributes, in gobgpd's order.
    pub attribute_types: Vec<String>,
    /// When gobgpd took the path (seconds since the epoch).
    pub age: i64,
}

impl Listed {
    fn from_api(path: &api::Path) -> Listed {
        let nlri = path.nlri.as_ref().unwrap();
        assert_eq!(nlri.type_url, "type.googleapis.com/apipb.IPAddressPrefix");
        let p = api::IpAddressPrefix::decode(nlri.value.clone()).unwrap();
        let prefix = IpNet::new(p.prefix.parse().unwrap(), p.prefix_len as u8).unwrap();
        let mut listed = Listed {
            prefix,
            next_hop: IpAddr::from([0, 0, 0, 0]),
            identifier: path.identifier,
            source_asn: path.source_asn,
            origin: u32::MAX,
            communities: vec![],
            large_communities: vec![],
            local_pref: None,
            attribute_types: vec![],
            age: path.age.as_ref().map(|t| t.seconds).unwrap_or_default(),
        };
        for attr in &path.pattrs {
            let name = attr
                .type_url
                .trim_start_matches("type.googleapis.com/apipb.")
                .to_string();
            let value = attr.value.clone();
            match name.as_str() {
                "OriginAttribute" => {
                    listed.origin = api::OriginAttribute::decode(value).unwrap().origin
                }
                "NextHopAttribute" => {
                    listed.next_hop = api::NextHopAttribute::decode(value)
                        .unwrap()
                        .next_hop
                        .parse()
                        .unwrap()
                }
                "MpReachNLRIAttribute" => {
                    let mp = api::MpReachNlriAttribute::decode(value).unwrap();
                    listed.next_hop = mp.next_hops[0].parse().unwrap();
                }
                "CommunitiesAttribute" => {
                    listed.communities = api::CommunitiesAttribute::decode(value)
                        .unwrap()
                        .communities
                }
                "LargeCommunitiesAttribute" => {
                    listed.large_communities = api::LargeCommunitiesAttribute::decode(value)
                        .unwrap()
                        .communities
                        .into_iter()
                        .map(|c| (c.global_admin, c.local_data1, c.local_data2))
                        .collect()
                }
                "LocalPrefAttribute" => {
                    listed.local_pref =
                        Some(api::LocalPrefAttribute::decode(value).unwrap().local_pref)
                }
                _ => {}
            }
            listed.attribute_types.push(name);
        }
        listed
    }
}

/// Whether process `pid` holds the TCP socket listening on `port` (IPv4, in its own network
/// namespace): its socket inodes against the listening sockets of `/proc/<pid>/net/tcp`.
fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    // "sl local_address rem_address st ... uid timeout inode": st 0A is LISTEN.
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields
            .get(1)
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        fields.len() > 9
            && fields[3] == "0A"
            && local_port == Some(port)
            && inodes.contains(fields[9])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second gobgpd given the port of a running one does not take the first one's answers for
    /// its own.
    #[tokio::test]
    async fn a_port_taken_by_another_gobgpd_is_not_taken_for_this_one() {
        let first = Gobgpd::start().await;
        assert!(listens_on(first.pid().unwrap(), first.port()));
        let mut second = Gobgpd::new(first.port());
        let error = second
            .spawn_and_wait()
            .await
            .expect_err("the port answers, but not for the second gobgpd");
        assert!(error.contains("another process answers"), "{error}");
        assert!(second.pid().is_none(), "the second gobgpd was stopped");
    }
}
