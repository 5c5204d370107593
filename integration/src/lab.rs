//! A BGP lab in two network namespaces, reproducing the "Advertising Services" lab.
//!
//! ```text
//!  <p>pool                                          <p>host1
//!  gobgpd AS 64512 (API 127.0.0.1:50051)            BIRD 2 AS 64513
//!  eth0 198.19.0.10/20, fd00:198:19::10/64  <--->   eth0 198.19.15.254/20, fd00:198:19::fe/64
//!       nodes 198.19.0.1-3, fd00:198:19::1-3
//! ```
//!
//! The pool namespace stands for the whole cluster: it holds gobgpd (where herald runs too) and
//! the node addresses, so paths announced with a node as next hop are reachable from host1 over
//! the shared link. A lab may start a second speaker ([`Lab::add_speaker`]): a second gobgpd, from
//! 198.19.0.11 with its API on 127.0.0.1:50052, as the pool Deployment's second replica on another
//! node; BIRD peers with both. BIRD on host1 installs what it learns into host1's kernel, merging
//! paths of one prefix into an ECMP route, exactly like the router of the original lab. The gobgpd and BIRD
//! configs are in `integration/lab/`, shared with `scripts/lab.sh`.
//!
//! Needs root (`ip netns`) and `gobgpd`, `gobgp`, `bird`, `birdc` on `PATH`
//! (`scripts/install-deps.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tempfile::TempDir;
use tonic::transport::{Channel, Endpoint, Uri};

/// AS number of gobgpd, i.e. of the cluster.
pub const POOL_ASN: u32 = 64512;
/// AS number of BIRD on host1.
pub const HOST1_ASN: u32 = 64513;
/// gobgpd's BGP address (and router id) in the pool namespace.
pub const POOL_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// gobgpd's IPv6 address in the pool namespace.
pub const POOL_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x19, 0, 0, 0, 0, 0x10);
/// host1's address, BIRD's BGP address and router id.
pub const HOST1_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 15, 254);
/// host1's IPv6 address.
pub const HOST1_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x198, 0x19, 0, 0, 0, 0, 0xfe);

/// The daemons' configs, shared with `scripts/lab.sh`. They are the same for every lab: each lab
/// has namespaces of its own, so the addresses and ports never clash.
const GOBGPD_CONFIG: &str = include_str!("../lab/gobgpd.toml");
const BIRD_CONFIG: &str = include_str!("../lab/bird.conf");
/// BIRD's names for its sessions with the speakers, as in `BIRD_CONFIG`.
const BGP_PROTOCOLS: [&str; SPEAKERS] = ["pool", "pool2"];
/// The speakers a lab can run: the first, and a second replica.
pub const SPEAKERS: usize = 2;

const V4_PREFIX_LEN: u8 = 20;
const V6_PREFIX_LEN: u8 = 64;
/// The same in every lab, as each gobgpd listens inside its own pool namespace; the second speaker's
/// is the next port.
const GOBGP_API_PORT: u16 = 50051;
/// Both ends of the veth pair; each lives in its own namespace, so the name never clashes, and
/// `eth0` makes host1's `ip route` read exactly like the original lab's.
const IFACE: &str = "eth0";
/// Namespace names are `hl<pid>x<counter>pool` and `hl<pid>x<counter>host1`.
const NS_PREFIX: &str = "hl";
const NETNS_DIR: &str = "/run/netns";
/// Temporary directories are `herald-lab-<prefix>-XXXXXX`.
const DIR_PREFIX: &str = "herald-lab-";
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Bound for each start-up step; all of them take well under a second on a 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a child gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
const LOG_TAIL_LINES: usize = 30;

/// host1's routes learned over BGP: prefix -> next hops (one for a plain route, several for ECMP).
pub type RouteTable = BTreeMap<IpNet, BTreeSet<IpAddr>>;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);
/// `ip netns add` mounts `/run/netns` on first use, and concurrent first uses race with each
/// other; namespace creation and the sweep are serialised within the process.
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// A Kubernetes node of the lab: the next hop herald announces for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabNode {
    pub name: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl LabNode {
    pub fn new(name: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Self {
        Self {
            name: name.to_owned(),
            v4,
            v6,
        }
    }
}

/// What can vary between labs.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Addresses added to the pool side of the link, one pair per node.
    pub nodes: Vec<LabNode>,
    /// The first speaker's gobgpd API on a unix socket, as the shipped configs have it, instead of
    /// TCP on the namespace's loopback (the harness's default).
    pub api_socket: Option<ApiSocket>,
}

/// gobgpd's API on a unix socket, gobgpd running as `uid`:`gid` through the image's entrypoint
/// (deploy/docker/gobgpd-start, which makes the socket 0660). The socket is in a directory of mode
/// 0777, as a Kubernetes emptyDir is: the socket's own owner and mode are what keep others out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiSocket {
    pub uid: u32,
    pub gid: u32,
}

impl Default for LabOptions {
    /// The original lab's three nodes.
    fn default() -> Self {
        let v6 = |last| Ipv6Addr::new(0xfd00, 0x198, 0x19, 0, 0, 0, 0, last);
        Self {
            nodes: vec![
                LabNode::new("control", Ipv4Addr::new(198, 19, 0, 1), v6(1)),
                LabNode::new("node1", Ipv4Addr::new(198, 19, 0, 2), v6(2)),
                LabNode::new("node2", Ipv4Addr::new(198, 19, 0, 3), v6(3)),
            ],
            api_socket: None,
        }
    }
}

/// A running lab. Dropping it stops gobgpd and BIRD, kills whatever else still runs in its
/// namespaces, deletes them and removes its temporary directory.
pub struct Lab {
    pool_ns: String,
    host1_ns: String,
    nodes: Vec<LabNode>,
    dir: TempDir,
    bird: Option<Child>,
    /// Per speaker; a second speaker exists once [`Lab::add_speaker`] made it.
    gobgpd: Vec<Option<Child>>,
    /// The first speaker's API socket, when it has one.
    api_socket: Option<ApiSocket>,
}

/// gobgpd's BGP address (and router id) as speaker `speaker`.
pub fn speaker_v4(speaker: usize) -> Ipv4Addr {
    let [a, b, c, d] = POOL_V4.octets();
    Ipv4Addr::new(a, b, c, d + speaker as u8)
}

fn speaker_v6(speaker: usize) -> Ipv6Addr {
    let mut segments = POOL_V6.segments();
    segments[7] += speaker as u16;
    Ipv6Addr::from(segments)
}

/// How gobgpd starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GobgpdStart {
    /// As on a first start.
    Fresh,
    /// With `-r`: graceful restart's restarting mode, as the sidecar restarts in a pod.
    Restarting,
}

impl Lab {
    /// Starts a lab with the original lab's nodes; see [`Lab::start_with`].
    pub fn start() -> Result<Self> {
        Self::start_with(LabOptions::default())
    }

    /// Creates the namespaces and the link, starts BIRD and gobgpd and waits until their BGP
    /// session is established. Namespaces left by crashed test processes are swept first.
    pub fn start_with(options: LabOptions) -> Result<Self> {
        ensure!(!options.nodes.is_empty(), "a lab needs at least one node");
        sweep_stale_namespaces().context("cannot sweep stale lab namespaces")?;

        let prefix = format!(
            "{NS_PREFIX}{}x{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{prefix}-"))
            .tempdir()
            .context("cannot create the lab's temporary directory")?;
        // From here on, a failure drops `lab`, which removes whatever was already set up.
        let mut lab = Lab {
            pool_ns: format!("{prefix}pool"),
            host1_ns: format!("{prefix}host1"),
            nodes: options.nodes,
            dir,
            bird: None,
            gobgpd: vec![None],
            api_socket: options.api_socket,
        };
        if lab.api_socket.is_some() {
            // Other users must get through the lab's directory to the socket's (as they get to
            // a pod's emptyDir): traversable, not listable.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(lab.dir(), fs::Permissions::from_mode(0o711))?;
            let socket_dir = lab.api_socket_dir();
            fs::create_dir(&socket_dir)?;
            fs::set_permissions(&socket_dir, fs::Permissions::from_mode(0o777))?;
        }
        lab.create_network()?;
        if lab.api_socket.is_some() {
            // gobgpd runs as a user of its own then, which may bind BGP's port 179 in the
            // namespace as Docker lets it (the image's Dockerfile says why).
            run(lab
                .pool_cmd("sysctl")
                .args(["-qw", "net.ipv4.ip_unprivileged_port_start=179"]))?;
        }
        // Copies in the lab's directory, so that everything of a failed run is in one place.
        fs::write(lab.gobgpd_config_path(0), GOBGPD_CONFIG)
            .context("cannot write gobgpd's config")?;
        fs::write(lab.bird_config_path(), BIRD_CONFIG).context("cannot write BIRD's config")?;
        lab.start_bird()?;
        lab.start_gobgpd()?;
        lab.wait_established(START_TIMEOUT)?;
        Ok(lab)
    }

    /// Name of the namespace holding gobgpd and the node addresses.
    pub fn pool_ns(&self) -> &str {
        &self.pool_ns
    }

    /// Name of the namespace of host1, the external router running BIRD.
    pub fn host1_ns(&self) -> &str {
        &self.host1_ns
    }

    /// The nodes whose addresses the pool side has.
    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// The lab's temporary directory (configs, logs, BIRD's socket), removed on drop; tests may
    /// put their own files (e.g. herald's config) there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Port of gobgpd's gRPC API on 127.0.0.1 inside the pool namespace.
    pub fn gobgp_api_port(&self) -> u16 {
        GOBGP_API_PORT
    }

    /// Port of speaker `speaker`'s gobgpd API on 127.0.0.1 inside the pool namespace.
    pub fn gobgp_api_port_of(&self, speaker: usize) -> u16 {
        GOBGP_API_PORT + speaker as u16
    }

    /// Speaker `speaker`'s gobgpd API as herald's `gobgp.address` says it: `unix:///...` or
    /// `127.0.0.1:PORT`.
    pub fn gobgp_address_of(&self, speaker: usize) -> String {
        match self.api_socket_of(speaker) {
            Some(socket) => format!("unix://{}", socket.display()),
            None => format!("127.0.0.1:{}", self.gobgp_api_port_of(speaker)),
        }
    }

    /// The first speaker's API socket, when the lab has one ([`LabOptions::api_socket`]).
    pub fn api_socket_of(&self, speaker: usize) -> Option<PathBuf> {
        (speaker == 0 && self.api_socket.is_some()).then(|| self.api_socket_dir().join("api.sock"))
    }

    fn api_socket_dir(&self) -> PathBuf {
        self.dir().join("gobgp-api")
    }

    /// A command that runs `program` inside the pool namespace (where herald belongs).
    pub fn pool_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.pool_ns]).arg(program);
        command
    }

    /// Runs the gobgp CLI against this lab's gobgpd and returns its output,
    /// e.g. `lab.gobgp(&["global", "rib", "-a", "ipv4"])`.
    pub fn gobgp(&self, args: &[&str]) -> Result<String> {
        self.gobgp_of(0, args)
    }

    /// The gobgp CLI against speaker `speaker`'s gobgpd.
    pub fn gobgp_of(&self, speaker: usize, args: &[&str]) -> Result<String> {
        let mut command = self.pool_cmd("gobgp");
        match self.api_socket_of(speaker) {
            Some(socket) => command
                .arg("--target")
                .arg(format!("unix://{}", socket.display())),
            None => command.args([
                "-u",
                "127.0.0.1",
                "-p",
                &self.gobgp_api_port_of(speaker).to_string(),
            ]),
        };
        run(command.args(args))
    }

    /// Runs birdc against host1's BIRD and returns its output, e.g. `lab.birdc(&["show", "route"])`.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        run(Command::new("birdc")
            .arg("-s")
            .arg(self.bird_socket_path())
            .args(args))
    }

    /// A gRPC channel to `127.0.0.1:port` inside the pool namespace, e.g. to gobgpd's API
    /// ([`Lab::gobgp_api_port`]) or herald's. The test process itself stays in its own namespace;
    /// only the connections are made from inside the pool.
    pub async fn pool_channel(&self, port: u16) -> Result<Channel> {
        let netns = self.pool_netns_path();
        let connector = tower::service_fn(move |_: Uri| {
            let netns = netns.clone();
            async move {
                let (tx, rx) = tokio::sync::oneshot::channel();
                // A thread of its own, never a pooled one: setns changes the calling thread's
                // namespace for good, and this thread ends right after connecting.
                thread::spawn(move || tx.send(connect_in_netns(&netns, port)));
                let stream = rx
                    .await
                    .map_err(|_| io::Error::other("netns connect thread died"))??;
                stream.set_nonblocking(true)?;
                io::Result::Ok(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
            }
        });
        Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(connector)
            .await
            .with_context(|| format!("cannot connect to 127.0.0.1:{port} in {}", self.pool_ns))
    }

    /// Starts gobgpd in the pool namespace and waits until its API answers with the configured
    /// global settings (the BGP session comes up later: see [`Lab::wait_established`]).
    /// Its output is appended to `gobgpd.log` in [`Lab::dir`].
    pub fn start_gobgpd(&mut self) -> Result<()> {
        self.start_gobgpd_of(0, GobgpdStart::Fresh)
    }

    /// Starts speaker `speaker`'s gobgpd (`gobgpd.log`, `gobgpd2.log` in [`Lab::dir`]).
    pub fn start_gobgpd_of(&mut self, speaker: usize, start: GobgpdStart) -> Result<()> {
        ensure!(
            self.gobgpd.get(speaker).is_some_and(Option::is_none),
            "speaker {speaker}'s gobgpd is already running, or the lab has no such speaker"
        );
        let log = self.open_log(&speaker_file("gobgpd", speaker, "log"))?;
        let mut command = match (self.api_socket, self.api_socket_of(speaker)) {
            (Some(user), Some(socket)) => {
                // As in the pod: gobgpd's own user, through the image's entrypoint (umask 0117, a
                // stale socket removed), its API on the socket only. A state directory it cannot
                // write: gobgpd-start then never adds -r by itself (GobgpdStart says when).
                let mut command = self.pool_cmd("setpriv");
                command
                    .args([
                        format!("--reuid={}", user.uid),
                        format!("--regid={}", user.gid),
                        "--clear-groups".to_string(),
                    ])
                    .args(["env", "GOBGPD_STATE_DIR=/nonexistent"])
                    .arg(crate::process::repo_root().join("deploy/docker/gobgpd-start"))
                    .arg(format!("--api-hosts=unix://{}", socket.display()));
                command
            }
            _ => {
                let mut command = self.pool_cmd("gobgpd");
                command.args([
                    "--api-hosts",
                    &format!("127.0.0.1:{}", self.gobgp_api_port_of(speaker)),
                ]);
                command
            }
        };
        command
            .arg("-f")
            .arg(self.gobgpd_config_path(speaker))
            // Plain-text logs at info level show session state changes and are readable in a
            // failure message; pprof is off because nothing uses it.
            .args(["--log-plain", "--log-level", "info", "--pprof-disable"]);
        if start == GobgpdStart::Restarting {
            command.arg("-r");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot spawn gobgpd (is it installed? see scripts/install-deps.sh)")?;
        // `gobgp global` fails until gobgpd has both opened its API and applied its config.
        let child = self.await_ready(child, "gobgpd", || self.gobgp_of(speaker, &["global"]))?;
        self.gobgpd[speaker] = Some(child);
        Ok(())
    }

    /// Sends `signal` to gobgpd without waiting for anything (SIGSTOP / SIGCONT to hang it).
    pub fn signal_gobgpd(&self, signal: i32) -> Result<()> {
        let child = self.gobgpd[0].as_ref().context("gobgpd is not running")?;
        send_signal(child, signal).context("cannot signal gobgpd")
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`, `libc::SIGKILL`) to gobgpd, waits for it to exit and
    /// for BIRD to notice that the session is down (so that a following [`Lab::wait_established`]
    /// sees the next session, not this one). gobgpd exits on SIGTERM after telling BIRD it is
    /// going (a Cease: BIRD drops its routes at once); on SIGKILL, BIRD only sees the TCP
    /// connection close, and keeps the routes for gobgpd's graceful-restart time.
    pub fn kill_gobgpd(&mut self, signal: i32) -> Result<ExitStatus> {
        self.kill_gobgpd_of(0, signal)
    }

    /// [`Lab::kill_gobgpd`] for speaker `speaker`.
    pub fn kill_gobgpd_of(&mut self, speaker: usize, signal: i32) -> Result<ExitStatus> {
        let mut child = self
            .gobgpd
            .get_mut(speaker)
            .and_then(Option::take)
            .with_context(|| format!("speaker {speaker}'s gobgpd is not running"))?;
        send_signal(&child, signal).context("cannot signal gobgpd")?;
        let Some(status) = wait_timeout(&mut child, STOP_GRACE)? else {
            child.kill()?;
            child.wait()?;
            bail!("gobgpd did not exit within {STOP_GRACE:?} of signal {signal}; killed it");
        };
        poll(STOP_GRACE, || {
            let state = self
                .birdc(&["show", "protocols", BGP_PROTOCOLS[speaker]])
                .map_err(|e| format!("{e:#}"))?;
            if state.contains("Established") {
                Err(state)
            } else {
                Ok(())
            }
        })
        .map_err(|last| {
            anyhow!("BIRD still reports the session up after gobgpd exited:\n{last}")
        })?;
        Ok(status)
    }

    /// Stops gobgpd with SIGTERM, if it runs, and starts it again with an empty RIB.
    pub fn restart_gobgpd(&mut self) -> Result<()> {
        if self.gobgpd[0].is_some() {
            self.kill_gobgpd(libc::SIGTERM)?;
        }
        self.start_gobgpd()
    }

    /// Starts the pool's second speaker: the address 198.19.0.11 (and fd00:198:19::11) on the pool
    /// side of the link, a gobgpd from it with the lab's config, and BIRD's session with it; waits
    /// until that session is established. Returns the speaker's number (1).
    pub fn add_speaker(&mut self) -> Result<usize> {
        let speaker = self.gobgpd.len();
        ensure!(
            speaker < SPEAKERS,
            "the lab has all its {SPEAKERS} speakers"
        );
        for addr in [
            format!("{}/{V4_PREFIX_LEN}", speaker_v4(speaker)),
            format!("{}/{V6_PREFIX_LEN}", speaker_v6(speaker)),
        ] {
            let mut args = vec![
                "-n",
                self.pool_ns.as_str(),
                "addr",
                "add",
                addr.as_str(),
                "dev",
                IFACE,
            ];
            if addr.contains(':') {
                args.push("nodad");
            }
            ip(&args)?;
        }
        let first = POOL_V4.to_string();
        ensure!(
            GOBGPD_CONFIG.contains(&first),
            "gobgpd.toml does not name {first}"
        );
        fs::write(
            self.gobgpd_config_path(speaker),
            GOBGPD_CONFIG.replace(&first, &speaker_v4(speaker).to_string()),
        )
        .context("cannot write the second speaker's gobgpd config")?;
        self.gobgpd.push(None);
        self.start_gobgpd_of(speaker, GobgpdStart::Fresh)?;
        self.birdc(&["enable", BGP_PROTOCOLS[speaker]])?;
        self.wait_established_of(speaker, START_TIMEOUT)?;
        Ok(speaker)
    }

    /// Speaker `speaker`'s gobgpd log so far (every start of it, appended).
    pub fn gobgpd_log(&self, speaker: usize) -> String {
        fs::read_to_string(self.dir().join(speaker_file("gobgpd", speaker, "log")))
            .unwrap_or_default()
    }

    /// Replaces speaker `speaker`'s gobgpd config by `edit` of it, for gobgpd's next start.
    pub fn edit_gobgpd_config(
        &self,
        speaker: usize,
        edit: impl FnOnce(&str) -> String,
    ) -> Result<()> {
        let path = self.gobgpd_config_path(speaker);
        let text = fs::read_to_string(&path).context("cannot read gobgpd's config")?;
        fs::write(&path, edit(&text)).context("cannot write gobgpd's config")
    }

    /// Replaces BIRD's config by `edit` of it and has BIRD load it (`birdc configure`); BIRD
    /// restarts the sessions whose settings changed.
    pub fn reconfigure_bird(&self, edit: impl FnOnce(&str) -> String) -> Result<()> {
        let path = self.bird_config_path();
        let text = fs::read_to_string(&path).context("cannot read BIRD's config")?;
        fs::write(&path, edit(&text)).context("cannot write BIRD's config")?;
        let out = self.birdc(&["configure"])?;
        ensure!(
            out.contains("Reconfigured") || out.contains("Reconfiguration in progress"),
            "birdc configure: {out}"
        );
        Ok(())
    }

    /// How many routes BIRD holds from speaker `speaker` (both families, stale ones included).
    pub fn routes_from(&self, speaker: usize) -> Result<usize> {
        let out = self.birdc(&["show", "route", "protocol", BGP_PROTOCOLS[speaker], "count"])?;
        // "N of M routes for K networks in table master4", one line per table.
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
            .sum())
    }

    /// Waits until BIRD reports the session with gobgpd established; returns how long it took.
    pub fn wait_established(&self, timeout: Duration) -> Result<Duration> {
        self.wait_established_of(0, timeout)
    }

    /// [`Lab::wait_established`] for speaker `speaker`.
    pub fn wait_established_of(&self, speaker: usize, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        poll(timeout, || {
            let status = self
                .birdc(&["show", "protocols", BGP_PROTOCOLS[speaker]])
                .map_err(|e| format!("{e:#}"))?;
            if status.contains("Established") {
                Ok(())
            } else {
                Err(status)
            }
        })
        .map_err(|last| {
            anyhow!(
                "BGP session not established within {timeout:?}; BIRD says:\n{last}\n{}",
                self.diagnostics()
            )
        })?;
        Ok(start.elapsed())
    }

    /// host1's IPv4 routes learned over BGP, normalised: `proto bird` routes only (with their
    /// `nexthop` lines, indented by four spaces), without `metric`, so that it reads like the
    /// original lab's `ip route`.
    pub fn host1_routes_v4(&self) -> Result<String> {
        Ok(bird_routes(&ip(&["-n", &self.host1_ns, "-4", "route"])?))
    }

    /// host1's IPv6 routes learned over BGP, normalised like [`Lab::host1_routes_v4`]
    /// (also without `pref`).
    pub fn host1_routes_v6(&self) -> Result<String> {
        Ok(bird_routes(&ip(&["-n", &self.host1_ns, "-6", "route"])?))
    }

    /// host1's IPv4 and IPv6 routes learned over BGP, as a table.
    pub fn host1_table(&self) -> Result<RouteTable> {
        parse_routes(&self.host1_routes()?)
    }

    /// Polls [`Lab::host1_routes_v4`] followed by [`Lab::host1_routes_v6`] every 50 ms until
    /// `pred` accepts the text, for at most `timeout`; returns the accepted text.
    pub fn wait_for_routes(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        poll(timeout, || {
            let routes = self.host1_routes().map_err(|e| format!("{e:#}"))?;
            if pred(&routes) {
                Ok(routes)
            } else {
                Err(routes)
            }
        })
        .map_err(|last| self.routes_timeout(timeout, &last))
    }

    /// Polls [`Lab::host1_table`] every 50 ms until `pred` accepts it, for at most `timeout`;
    /// returns the accepted table.
    pub fn wait_for_table(
        &self,
        pred: impl Fn(&RouteTable) -> bool,
        timeout: Duration,
    ) -> Result<RouteTable> {
        poll(timeout, || {
            let table = self.host1_table().map_err(|e| format!("{e:#}"))?;
            if pred(&table) {
                Ok(table)
            } else {
                Err(format!("{table:#?}"))
            }
        })
        .map_err(|last| self.routes_timeout(timeout, &last))
    }

    /// What to print when something in the lab fails: BIRD's view of the session and the tails of
    /// the gobgpd and BIRD logs.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (speaker, protocol) in BGP_PROTOCOLS.iter().enumerate().take(self.gobgpd.len()) {
            let session = self
                .birdc(&["show", "protocols", "all", protocol])
                .unwrap_or_else(|e| format!("{e:#}"));
            let log = speaker_file("gobgpd", speaker, "log");
            out += &format!(
                "--- birdc show protocols all {protocol} ---\n{}\n\
                 --- {log} (last {LOG_TAIL_LINES} lines) ---\n{}\n",
                session.trim_end(),
                log_tail(&self.dir().join(&log)),
            );
        }
        out + &format!(
            "--- bird.log (last {LOG_TAIL_LINES} lines) ---\n{}",
            log_tail(&self.dir().join("bird.log")),
        )
    }

    fn host1_routes(&self) -> Result<String> {
        Ok(self.host1_routes_v4()? + &self.host1_routes_v6()?)
    }

    fn routes_timeout(&self, timeout: Duration, last: &str) -> anyhow::Error {
        anyhow!(
            "host1's routes did not reach the expected state within {timeout:?}; last seen:\n{last}\n{}",
            self.diagnostics()
        )
    }

    fn create_network(&self) -> Result<()> {
        let (pool, host1) = (self.pool_ns.as_str(), self.host1_ns.as_str());
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
            ip(&["netns", "add", pool])?;
            ip(&["netns", "add", host1])?;
        }
        // Creating each end directly in its namespace keeps the root namespace free of lab
        // interfaces, so parallel labs cannot clash on interface names.
        ip(&[
            "link", "add", IFACE, "netns", pool, "type", "veth", "peer", "name", IFACE, "netns",
            host1,
        ])?;

        let mut pool_addrs = vec![
            format!("{POOL_V4}/{V4_PREFIX_LEN}"),
            format!("{POOL_V6}/{V6_PREFIX_LEN}"),
        ];
        for node in &self.nodes {
            pool_addrs.push(format!("{}/{V4_PREFIX_LEN}", node.v4));
            pool_addrs.push(format!("{}/{V6_PREFIX_LEN}", node.v6));
        }
        let host1_addrs = [
            format!("{HOST1_V4}/{V4_PREFIX_LEN}"),
            format!("{HOST1_V6}/{V6_PREFIX_LEN}"),
        ];
        for (ns, addrs) in [(pool, &pool_addrs[..]), (host1, &host1_addrs[..])] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            for addr in addrs {
                // `nodad`: IPv6 addresses are usable at once instead of after duplicate address
                // detection; nothing else is on this link.
                let mut args = vec!["-n", ns, "addr", "add", addr.as_str(), "dev", IFACE];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip(&args)?;
            }
            ip(&["-n", ns, "link", "set", IFACE, "up"])?;
        }
        Ok(())
    }

    fn start_bird(&mut self) -> Result<()> {
        let log = self.open_log("bird.log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host1_ns, "bird", "-f", "-s"])
            .arg(self.bird_socket_path())
            .arg("-c")
            .arg(self.bird_config_path())
            .arg("-P")
            .arg(self.dir().join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot spawn bird (is bird2 installed? see scripts/install-deps.sh)")?;
        self.bird = Some(self.await_ready(child, "BIRD", || self.birdc(&["show", "status"]))?);
        Ok(())
    }

    /// Polls `probe` until it succeeds, for at most [`START_TIMEOUT`], and returns `child`; if
    /// `child` exits or the time runs out, stops it and fails with the lab's diagnostics.
    fn await_ready(
        &self,
        mut child: Child,
        name: &str,
        probe: impl Fn() -> Result<String>,
    ) -> Result<Child> {
        let ready = poll(START_TIMEOUT, || match child.try_wait() {
            Ok(Some(status)) => Ok(Err(format!("{name} exited ({status}) while starting"))),
            Ok(None) => probe().map(Ok).map_err(|e| format!("{e:#}")),
            Err(e) => Ok(Err(format!("cannot wait for {name}: {e}"))),
        });
        let failure = match ready {
            Ok(Ok(_)) => return Ok(child),
            Ok(Err(failure)) => failure,
            Err(last) => format!("{name} not ready within {START_TIMEOUT:?}: {last}"),
        };
        if let Err(e) = stop(&mut child) {
            eprintln!("lab: cannot stop {name}: {e}");
        }
        bail!("{failure}\n{}", self.diagnostics())
    }

    fn gobgpd_config_path(&self, speaker: usize) -> PathBuf {
        self.dir().join(speaker_file("gobgpd", speaker, "toml"))
    }

    fn bird_config_path(&self) -> PathBuf {
        self.dir().join("bird.conf")
    }

    fn bird_socket_path(&self) -> PathBuf {
        self.dir().join("bird.ctl")
    }

    fn pool_netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.pool_ns)
    }

    fn open_log(&self, name: &str) -> Result<File> {
        let path = self.dir().join(name);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }
}

/// `gobgpd.log` for the first speaker, `gobgpd2.log` for the second.
fn speaker_file(stem: &str, speaker: usize, extension: &str) -> String {
    match speaker {
        0 => format!("{stem}.{extension}"),
        n => format!("{stem}{}.{extension}", n + 1),
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let gobgpds = self.gobgpd.iter_mut().map(|child| ("gobgpd", child.take()));
        let children: Vec<(&str, Option<Child>)> =
            gobgpds.chain([("bird", self.bird.take())]).collect();
        for (name, child) in children {
            if let Some(Err(e)) = child.map(|mut child| stop(&mut child)) {
                eprintln!("lab cleanup: cannot stop {name}: {e}");
            }
        }
        for ns in [&self.pool_ns, &self.host1_ns] {
            if let Err(e) = delete_namespace(ns) {
                eprintln!("lab cleanup: {e:#}");
            }
        }
        // `dir` is removed when the TempDir field drops, after this.
    }
}

/// Deletes lab namespaces (and temporary directories) whose test process no longer exists,
/// killing what still runs in them: a test process killed outright leaves its gobgpd and BIRD
/// running. Returns the names of the namespaces deleted. [`Lab::start_with`] calls it.
pub fn sweep_stale_namespaces() -> Result<Vec<String>> {
    let _guard = NETNS_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let mut swept = Vec::new();
    for name in dir_names(Path::new(NETNS_DIR))? {
        let owner = name
            .strip_suffix("pool")
            .or_else(|| name.strip_suffix("host1"))
            .and_then(lab_owner);
        if owner.is_some_and(is_dead) {
            delete_namespace(&name)?;
            swept.push(name);
        }
    }
    let tmp = std::env::temp_dir();
    for name in dir_names(&tmp)? {
        let owner = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(prefix, _)| lab_owner(prefix));
        if owner.is_some_and(is_dead) {
            let path = tmp.join(&name);
            fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(swept)
}

/// Parses `ip route` output into a table. Understands single-path routes
/// (`198.19.38.11 via 198.19.0.2 dev eth0 ...`), multipath routes (a line without `via` followed
/// by indented `nexthop via ...` lines), routes without a gateway (empty next hop set) and route
/// types such as `blackhole`. A prefix listed several times collects all their next hops.
pub fn parse_routes(text: &str) -> Result<RouteTable> {
    let mut table = RouteTable::new();
    let mut current = None;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(char::is_whitespace) {
            let prefix =
                current.with_context(|| format!("next hop line before any route: {line:?}"))?;
            if let Some(via) = gateway(&words, line)? {
                table.entry(prefix).or_default().insert(via);
            }
            continue;
        }
        let words = match words.as_slice() {
            [kind, rest @ ..] if ROUTE_TYPES.contains(kind) => rest,
            all => all,
        };
        let destination = words
            .first()
            .with_context(|| format!("empty route: {line:?}"))?;
        let prefix = match destination.parse::<IpNet>() {
            Ok(net) => net,
            Err(_) => destination
                .parse::<IpAddr>()
                .map(IpNet::from)
                .with_context(|| {
                    format!("unsupported route destination {destination:?} in {line:?}")
                })?,
        };
        let hops = table.entry(prefix).or_default();
        if let Some(via) = gateway(words, line)? {
            hops.insert(via);
        }
        current = Some(prefix);
    }
    Ok(table)
}

/// Route types `ip route` may print before the destination.
const ROUTE_TYPES: &[&str] = &[
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "anycast",
];

/// The address after `via` (skipping a family word, as in `via inet6 fd00::1`), if any.
fn gateway(words: &[&str], line: &str) -> Result<Option<IpAddr>> {
    let Some(at) = words.iter().position(|word| *word == "via") else {
        return Ok(None);
    };
    let mut rest = words[at + 1..]
        .iter()
        .filter(|word| !matches!(**word, "inet" | "inet6"));
    let addr = rest
        .next()
        .with_context(|| format!("`via` without an address in {line:?}"))?;
    addr.parse()
        .map(Some)
        .with_context(|| format!("bad next hop {addr:?} in {line:?}"))
}

/// Keeps the `proto bird` routes of `ip route` output, with their continuation lines, dropping
/// `metric` and `pref` and indenting continuation lines by four spaces.
pub fn bird_routes(text: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in text.lines() {
        let indented = line.starts_with(char::is_whitespace);
        let mut words = Vec::new();
        let mut iter = line.split_whitespace();
        while let Some(word) = iter.next() {
            if matches!(word, "metric" | "pref") {
                iter.next();
            } else {
                words.push(word);
            }
        }
        if !indented {
            keep = words.windows(2).any(|pair| pair == ["proto", "bird"]);
        }
        if keep && !words.is_empty() {
            out.push_str(if indented { "    " } else { "" });
            out.push_str(&words.join(" "));
            out.push('\n');
        }
    }
    out
}

/// Calls `probe` every [`POLL_INTERVAL`] until it succeeds or `timeout` has passed; on timeout,
/// returns the last failure's description.
fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => thread::sleep(POLL_INTERVAL),
        }
    }
}

/// Runs a command to completion; fails with its output if it exits non-zero (the gobgp CLI, for
/// one, reports errors on stdout).
fn run(command: &mut Command) -> Result<String> {
    let shown = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    ensure!(
        output.status.success(),
        "`{shown}` failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout).trim_end()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Connects to `127.0.0.1:port` in the namespace bound at `netns`. Must run on a thread of its
/// own that ends afterwards: it moves the calling thread into that namespace.
fn connect_in_netns(netns: &Path, port: u16) -> io::Result<TcpStream> {
    let ns = File::open(netns)?;
    // SAFETY: setns(2) on a valid descriptor only changes this thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(5),
    )
}

fn send_signal(child: &Child, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: kill(2) has no memory effects; `child` is not reaped yet, so `pid` is still ours.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM, then SIGKILL if the child is still there after [`STOP_GRACE`].
fn stop(child: &mut Child) -> io::Result<()> {
    if child.try_wait()?.is_some() {
        return Ok(());
    }
    send_signal(child, libc::SIGTERM)?;
    if wait_timeout(child, STOP_GRACE)?.is_none() {
        child.kill()?;
        child.wait()?;
    }
    Ok(())
}

/// Kills every process left in the namespace, then deletes it. A namespace lives on as long as
/// a process is in it, so without the kill a leaked process would keep it, and its addresses,
/// alive.
fn delete_namespace(name: &str) -> Result<()> {
    if !Path::new(NETNS_DIR).join(name).exists() {
        return Ok(());
    }
    for pid in ip(&["netns", "pids", name])?.split_whitespace() {
        let pid: libc::pid_t = pid
            .parse()
            .with_context(|| format!("bad pid {pid:?} from ip netns pids"))?;
        // SAFETY: kill(2) has no memory effects. ESRCH (already gone) is fine.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    ip(&["netns", "del", name]).map(drop)
}

/// The pid in a lab prefix `hl<pid>x<counter>`.
fn lab_owner(prefix: &str) -> Option<u32> {
    let (pid, counter) = prefix.strip_prefix(NS_PREFIX)?.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(counter))
        .then(|| pid.parse().ok())
        .flatten()
}

fn is_dead(pid: u32) -> bool {
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

fn dir_names(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot list {}", dir.display())),
    }
}

fn log_tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip route` on host1 with the original lab's routes, as the kernel prints it.
    const IP_ROUTE: &str = "\
198.19.0.0/20 dev eth0 proto kernel scope link src 198.19.15.254 \n\
198.19.32.0/20 proto bird metric 32 \n\
\tnexthop via 198.19.0.1 dev eth0 weight 1 \n\
\tnexthop via 198.19.0.2 dev eth0 weight 1 \n\
\tnexthop via 198.19.0.3 dev eth0 weight 1 \n\
198.19.38.11 via 198.19.0.2 dev eth0 proto bird metric 32 \n";

    fn hops(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn bird_routes_keeps_bird_routes_in_the_labs_format() {
        assert_eq!(
            bird_routes(IP_ROUTE),
            "198.19.32.0/20 proto bird\n    nexthop via 198.19.0.1 dev eth0 weight 1\n    \
             nexthop via 198.19.0.2 dev eth0 weight 1\n    nexthop via 198.19.0.3 dev eth0 weight 1\n\
             198.19.38.11 via 198.19.0.2 dev eth0 proto bird\n"
        );
    }

    #[test]
    fn bird_routes_drops_continuation_lines_of_other_routes() {
        let text = "10.0.0.0/8 proto static metric 5\n\tnexthop via 10.0.0.1 dev eth0 weight 1\n\
                    fd00:198:19:32::/64 via fd00:198:19::2 dev eth0 proto bird metric 32 pref medium\n";
        assert_eq!(
            bird_routes(text),
            "fd00:198:19:32::/64 via fd00:198:19::2 dev eth0 proto bird\n"
        );
    }

    #[test]
    fn parse_routes_reads_single_and_multipath_routes() {
        let table = parse_routes(&bird_routes(IP_ROUTE)).unwrap();
        let expected = RouteTable::from([
            (
                "198.19.32.0/20".parse().unwrap(),
                hops(&["198.19.0.3", "198.19.0.1", "198.19.0.2"]),
            ),
            ("198.19.38.11/32".parse().unwrap(), hops(&["198.19.0.2"])),
        ]);
        assert_eq!(table, expected);
    }

    #[test]
    fn parse_routes_merges_repeated_prefixes_and_reads_route_types() {
        let text = "fd00:198:19:32::/64 via fd00:198:19::1 dev eth0 proto bird\n\
                    fd00:198:19:32::/64 via fd00:198:19::2 dev eth0 proto bird\n\
                    blackhole 198.19.48.0/20 proto bird\n\
                    198.19.64.0/20 via inet6 fd00:198:19::3 dev eth0 proto bird\n\
                    198.19.0.0/20 dev eth0 proto kernel scope link src 198.19.15.254\n";
        let expected = RouteTable::from([
            (
                "fd00:198:19:32::/64".parse().unwrap(),
                hops(&["fd00:198:19::1", "fd00:198:19::2"]),
            ),
            ("198.19.48.0/20".parse().unwrap(), hops(&[])),
            ("198.19.64.0/20".parse().unwrap(), hops(&["fd00:198:19::3"])),
            ("198.19.0.0/20".parse().unwrap(), hops(&[])),
        ]);
        assert_eq!(parse_routes(text).unwrap(), expected);
    }

    #[test]
    fn parse_routes_rejects_what_it_cannot_read() {
        assert!(parse_routes("\tnexthop via 198.19.0.1 dev eth0\n").is_err());
        assert!(parse_routes("default via 198.19.0.1 dev eth0\n").is_err());
        assert!(parse_routes("198.19.32.0/20 via nonsense dev eth0\n").is_err());
    }

    #[test]
    fn configs_agree_with_the_constants() {
        for needle in [
            format!("as = {POOL_ASN}"),
            format!("router-id = \"{POOL_V4}\""),
            format!("neighbor-address = \"{HOST1_V4}\""),
            format!("peer-as = {HOST1_ASN}"),
        ] {
            assert!(
                GOBGPD_CONFIG.contains(&needle),
                "gobgpd.toml lacks {needle}"
            );
        }
        for needle in [
            format!("protocol bgp {} from speaker {{", BGP_PROTOCOLS[0]),
            format!("protocol bgp {} from speaker {{", BGP_PROTOCOLS[1]),
            format!("local {HOST1_V4} as {HOST1_ASN};"),
            format!("neighbor {POOL_V4} as {POOL_ASN};"),
            format!("neighbor {} as {POOL_ASN};", speaker_v4(1)),
        ] {
            assert!(BIRD_CONFIG.contains(&needle), "bird.conf lacks {needle}");
        }
    }

    #[test]
    fn lab_owner_reads_only_lab_prefixes() {
        assert_eq!(lab_owner("hl1234x0"), Some(1234));
        assert_eq!(lab_owner("hl1234x"), None);
        assert_eq!(lab_owner("herald-"), None);
        assert_eq!(lab_owner("hlx1"), None);
    }
}
