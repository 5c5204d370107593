//! herald's configuration file (YAML, camelCase keys as in Calico's BGPConfiguration).
//!
//! Values are checked while they are read, so an error names the file, the line and the bad value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::selector::LabelSelector;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// This pool's name: the other pools' configs name it in their `otherPools`.
    #[serde(default)]
    pub pool: PoolName,
    /// Which nodes belong to this herald's pool (label-selector syntax; empty: all nodes).
    #[serde(default)]
    pub node_selector: LabelSelector,
    /// The other pools of the cluster and their ranges: a Service IP in one of them is that
    /// pool's to announce, not refused here.
    #[serde(default)]
    pub other_pools: Vec<OtherPool>,
    #[serde(default, rename = "serviceClusterIPs")]
    pub service_cluster_ips: Vec<RangeConfig>,
    #[serde(default, rename = "serviceExternalIPs")]
    pub service_external_ips: Vec<RangeConfig>,
    #[serde(default, rename = "serviceLoadBalancerIPs")]
    pub service_load_balancer_ips: Vec<RangeConfig>,
    /// The router's ECMP width, and how ranges are spread over more nodes than that.
    #[serde(default)]
    pub ecmp: EcmpConfig,
    /// Prefixes never announced, whatever else says so (infrastructure ranges). Default routes are
    /// never announced in any case.
    #[serde(default)]
    pub deny_prefixes: Vec<Cidr>,
    /// Communities a Service may ask for with the `herald.dev/communities` annotation.
    #[serde(default)]
    pub allowed_communities: Vec<Community>,
    /// Large communities a Service may ask for with `herald.dev/large-communities`.
    #[serde(default)]
    pub allowed_large_communities: Vec<LargeCommunity>,
    #[serde(default)]
    pub source: Option<SourceConfig>,
    #[serde(default)]
    pub gobgp: Option<GobgpConfig>,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub guard: GuardSettings,
    /// Prometheus metrics; not served when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub events: EventsConfig,
}

/// Kubernetes Events (`IPRefused`, with `source: {kubernetes: ...}`): recorded by one replica of
/// the pool, the holder of a `coordination.k8s.io` Lease.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsConfig {
    /// How long a holder that stopped renewing keeps the Lease: after the holder dies, another
    /// replica records within about this long. Whole seconds.
    #[serde(default = "default_lease_duration", deserialize_with = "whole_seconds")]
    pub lease_duration: Seconds,
    /// The Lease's name (default `herald-events-<pool>`).
    #[serde(default, deserialize_with = "object_name")]
    pub lease_name: Option<String>,
    /// The Lease's namespace (default: `$POD_NAMESPACE`, else the kubeconfig's namespace).
    #[serde(default, deserialize_with = "namespace_name")]
    pub lease_namespace: Option<String>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            lease_duration: default_lease_duration(),
            lease_name: None,
            lease_namespace: None,
        }
    }
}

fn default_lease_duration() -> Seconds {
    Seconds(Duration::from_secs(15))
}

fn whole_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
    let text = String::deserialize(d)?;
    let seconds: Seconds = text.parse().map_err(serde::de::Error::custom)?;
    let duration = seconds.0;
    if duration.subsec_nanos() != 0 || duration < Duration::from_secs(1) {
        return Err(serde::de::Error::custom(format!(
            "`{text}` is not a lease duration (whole seconds, at least 1s, e.g. 15s)"
        )));
    }
    Ok(seconds)
}

/// A Kubernetes object name (a DNS subdomain): lowercase letters, digits, `-` and `.`, starting
/// and ending with a letter or digit, at most 253 characters.
fn object_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    kubernetes_name(
        d,
        253,
        ".",
        "a Kubernetes name (lowercase letters, digits, `-` and `.`, e.g. herald-events)",
    )
}

/// A namespace's name (a DNS label): as an object name, without `.`, at most 63 characters.
fn namespace_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    kubernetes_name(
        d,
        63,
        "",
        "a Kubernetes namespace name (lowercase letters, digits and `-`, at most 63)",
    )
}

fn kubernetes_name<'de, D: Deserializer<'de>>(
    d: D,
    max: usize,
    also: &str,
    what: &str,
) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(d)?;
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = name.len() <= max
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
        && name
            .chars()
            .all(|c| alphanumeric(c) || c == '-' || also.contains(c));
    if !valid {
        return Err(serde::de::Error::custom(format!("`{name}` is not {what}")));
    }
    Ok(Some(name))
}

/// A pool's name. It appears in Event notes, Lease names and metrics labels: a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PoolName(pub String);

impl Default for PoolName {
    fn default() -> Self {
        PoolName("default".to_string())
    }
}

impl FromStr for PoolName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let label = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-');
        if label {
            Ok(PoolName(s.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a pool name (a DNS label: lowercase letters, digits and '-', at most 63)"
            ))
        }
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Another pool's herald, as far as this one needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OtherPool {
    pub name: PoolName,
    /// Every CIDR the other pool announces Service IPs from (its three lists together).
    pub ranges: Vec<Cidr>,
}

/// How many next hops the routers use per prefix, and how herald fits its announcements to that.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EcmpConfig {
    /// The most next hops herald announces for one prefix: the routers' `maximum-paths` (BIRD's
    /// `merge paths ... limit`). 0: no limit. A range of a pool larger than this is announced as
    /// parts of itself, each from this many nodes, so that every node carries some of it.
    #[serde(default)]
    pub max_paths: u32,
    /// The longest prefix a range is cut into.
    #[serde(default)]
    pub longest_prefix: LongestPrefix,
}

/// The longest prefix length of a range's parts, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LongestPrefix {
    #[serde(default = "default_longest_v4")]
    pub ipv4: u8,
    #[serde(default = "default_longest_v6")]
    pub ipv6: u8,
}

/// Parts of 16 addresses: fine-grained enough for any pool (a /20 in 256 parts), short enough to
/// stay clear of the /32 and /128 host routes and of fabrics that drop the longest prefixes.
fn default_longest_v4() -> u8 {
    28
}
fn default_longest_v6() -> u8 {
    124
}

impl Default for LongestPrefix {
    fn default() -> Self {
        LongestPrefix {
            ipv4: default_longest_v4(),
            ipv6: default_longest_v6(),
        }
    }
}

impl LongestPrefix {
    pub fn of(&self, net: &IpNet) -> u8 {
        match net {
            IpNet::V4(_) => self.ipv4,
            IpNet::V6(_) => self.ipv6,
        }
    }
}

/// The most paths per prefix gobgpd can be told to send: its `add-paths send-max` is 8-bit.
pub const MAX_PATHS_LIMIT: u32 = 255;

/// Safety limits between the planner and the fabric (see `guard`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardSettings {
    /// A path that went away is re-announced only after it has been back this long (0s: off).
    #[serde(default = "zero")]
    pub hold_down: Seconds,
    /// The most routes herald announces; above it, new routes are refused.
    #[serde(default)]
    pub max_routes: Option<usize>,
    /// Holds the paths of a wave of nodes lost at once (a sick control plane marking every node
    /// `Unknown`) instead of withdrawing them; see `brake`.
    #[serde(default)]
    pub withdrawal_brake: WithdrawalBrakeSettings,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            hold_down: zero(),
            max_routes: None,
            withdrawal_brake: WithdrawalBrakeSettings::default(),
        }
    }
}

/// `guard.withdrawalBrake`: on by default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WithdrawalBrakeSettings {
    /// `false` turns the brake off: every lost node is withdrawn at once, however many.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// More than this percentage of the pool's eligible nodes (or of one prefix's next hops) lost
    /// for node-level reasons engages the brake (1-99; at least 2 nodes in any case).
    #[serde(default = "default_brake_share")]
    pub share_percent: u32,
    /// Losses this close together count as one wave.
    #[serde(default = "default_brake_window")]
    pub window: Seconds,
    /// The longest the brake holds anything: then every held path is withdrawn.
    #[serde(default = "default_brake_max_hold")]
    pub max_hold: Seconds,
}

impl Default for WithdrawalBrakeSettings {
    fn default() -> Self {
        WithdrawalBrakeSettings {
            enabled: true,
            share_percent: default_brake_share(),
            window: default_brake_window(),
            max_hold: default_brake_max_hold(),
        }
    }
}

impl WithdrawalBrakeSettings {
    /// The guard's brake config; `None` when turned off.
    pub fn brake(&self) -> Option<crate::brake::BrakeConfig> {
        self.enabled.then_some(crate::brake::BrakeConfig {
            share_percent: self.share_percent,
            window: self.window.0,
            max_hold: self.max_hold.0,
        })
    }
}

fn yes() -> bool {
    true
}
fn default_brake_share() -> u32 {
    crate::brake::BrakeConfig::default().share_percent
}
fn default_brake_window() -> Seconds {
    Seconds(crate::brake::BrakeConfig::default().window)
}
fn default_brake_max_hold() -> Seconds {
    Seconds(crate::brake::BrakeConfig::default().max_hold)
}

fn zero() -> Seconds {
    Seconds(Duration::ZERO)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `/metrics` is served, e.g. `0.0.0.0:9180`.
    pub listen: SocketAddr,
}

/// One CIDR of serviceClusterIPs / serviceExternalIPs / serviceLoadBalancerIPs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RangeConfig {
    pub cidr: Cidr,
    /// Communities attached to the range route and to host routes inside it.
    #[serde(default)]
    pub communities: Vec<Community>,
    #[serde(default)]
    pub large_communities: Vec<LargeCommunity>,
    /// This range's own `ecmp.maxPaths` (its routers' ECMP width), for the range and the host
    /// routes inside it.
    #[serde(default)]
    pub max_paths: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum SourceConfig {
    /// A file of cluster state, watched for changes.
    File(PathBuf),
    /// The Kubernetes API (in-cluster config, or a kubeconfig).
    Kubernetes(KubernetesSourceConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSourceConfig {
    /// A kubeconfig file; absent: in-cluster config, then `$KUBECONFIG` / `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GobgpConfig {
    /// gobgpd's gRPC API: `unix:///run/gobgp/api.sock` (a unix socket, as the shipped configs have
    /// it), or `host:port` over TCP.
    pub address: String,
    #[serde(default)]
    pub origin: Origin,
    /// LOCAL_PREF, for iBGP sessions.
    #[serde(default)]
    pub local_pref: Option<u32>,
    /// How often herald compares gobgpd's RIB with what it applied, and repairs drift.
    #[serde(default = "default_anti_entropy")]
    pub anti_entropy_interval: Seconds,
    /// Paths per AddPathStream message.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_anti_entropy() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_batch() -> usize {
    1000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Igp,
    Egp,
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiConfig {
    /// Where herald's read-only gRPC API listens. Localhost by default: exposing it is a choice.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve over TLS (and, with `clientCaFile`, only to clients with a certificate from that CA).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// A listener of its own for `grpc.health.v1` alone, plaintext, for the kubelet's probes
    /// (which connect to the pod's address: on the host network, the node's). Nothing else is
    /// served there, so the plan API can stay on the loopback or behind TLS.
    #[serde(default)]
    pub health_listen: Option<SocketAddr>,
    /// What one caller, and all of them together, may ask of the API.
    #[serde(default)]
    pub limits: ApiLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            tls: None,
            health_listen: None,
            limits: ApiLimits::default(),
        }
    }
}

/// Limits on the plan API. Above one, a call is refused at once with `RESOURCE_EXHAUSTED` and a
/// reason, rather than queued: a flood of calls costs herald the refusals, not its reconciler's
/// time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiLimits {
    /// Unary calls (ListRoutes, ExplainService, ...) being answered at once, by all callers.
    #[serde(default = "default_max_concurrent_calls")]
    pub max_concurrent_calls: usize,
    /// Open WatchPlan streams, all callers together.
    #[serde(default = "default_max_watch_streams")]
    pub max_watch_streams: usize,
    /// Open WatchPlan streams from one peer (one IP address).
    #[serde(default = "default_max_watch_streams_per_peer")]
    pub max_watch_streams_per_peer: usize,
    /// The largest request message, in bytes (herald's requests are a few names and filters).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// The largest answer, in bytes: a larger ListRoutes is refused with a hint to filter it.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// How long a unary call may take (a client's shorter `grpc-timeout` wins).
    #[serde(default = "default_call_timeout")]
    pub call_timeout: Seconds,
    /// HTTP/2 PING every this long on an idle connection; a peer that does not answer within
    /// `keepaliveTimeout` is dropped, with its streams.
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval: Seconds,
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Seconds,
    /// HTTP/2 streams one connection may have open at once.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_concurrent_calls: default_max_concurrent_calls(),
            max_watch_streams: default_max_watch_streams(),
            max_watch_streams_per_peer: default_max_watch_streams_per_peer(),
            max_request_bytes: default_max_request_bytes(),
            max_response_bytes: default_max_response_bytes(),
            call_timeout: default_call_timeout(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_timeout: default_keepalive_timeout(),
            max_streams_per_connection: default_max_streams_per_connection(),
        }
    }
}

/// Operators and a dashboard or two: a handful of calls at once is plenty, and a ListRoutes of
/// 100,000 routes takes a core for ~100 ms.
fn default_max_concurrent_calls() -> usize {
    8
}
/// Each stream costs a task and a buffer of 4 messages; the deltas are shared between streams.
fn default_max_watch_streams() -> usize {
    128
}
fn default_max_watch_streams_per_peer() -> usize {
    16
}
fn default_max_request_bytes() -> usize {
    64 << 10
}
/// A ListRoutes of 100,000 routes is ~20 MB.
fn default_max_response_bytes() -> usize {
    64 << 20
}
fn default_call_timeout() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_keepalive_interval() -> Seconds {
    Seconds(Duration::from_secs(30))
}
fn default_keepalive_timeout() -> Seconds {
    Seconds(Duration::from_secs(10))
}
fn default_max_streams_per_connection() -> u32 {
    64
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate signed by one of them.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50151))
}

/// A CIDR with no host bits set: `198.19.32.0/20`, not `198.19.32.1/20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(pub IpNet);

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("`{s}` is not a CIDR (expected e.g. 198.19.32.0/20)"))?;
        if net.trunc() != net {
            return Err(format!(
                "`{s}` has host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        // ipnet accepts octets with leading zeros in some forms; insist on the canonical spelling.
        if net.to_string() != s && !matches!(net, IpNet::V6(_)) {
            return Err(format!(
                "`{s}` is not written canonically (did you mean {net}?)"
            ));
        }
        Ok(Cidr(net))
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A BGP community, `ASN:value` with both halves 16-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Community(pub u32);

impl FromStr for Community {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a BGP community (expected ASN:value, each 0-65535)");
        let (high, low) = s.trim().split_once(':').ok_or_else(bad)?;
        let high: u16 = high.parse().map_err(|_| bad())?;
        let low: u16 = low.parse().map_err(|_| bad())?;
        Ok(Community(u32::from(high) << 16 | u32::from(low)))
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff)
    }
}

/// A BGP large community, `global:local1:local2`, each 32-bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LargeCommunity(pub u32, pub u32, pub u32);

impl FromStr for LargeCommunity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a BGP large community (expected global:local1:local2)");
        let mut parts = s
            .trim()
            .split(':')
            .map(|p| p.parse::<u32>().map_err(|_| bad()));
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c), None) => Ok(LargeCommunity(a?, b?, c?)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.0, self.1, self.2)
    }
}

macro_rules! deserialize_from_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
deserialize_from_str!(Community, LargeCommunity, Seconds, PoolName);

/// A duration written `500ms`, `2s` or `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a duration (expected e.g. 500ms, 2s, 1m)");
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = s.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let duration = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        // Callers add it to `Instant::now()`, which panics on overflow (e.g. 18446744073709551615s).
        if duration > Duration::from_secs(365 * 24 * 3600) {
            return Err(format!("`{s}` is too long (at most 525600m, a year)"));
        }
        Ok(Seconds(duration))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// The name of the first of all pools (this one and `otherPools`) in name order: the one that
    /// speaks, in Events, for what no pool announces.
    pub fn first_pool(&self) -> &PoolName {
        self.other_pools
            .iter()
            .map(|p| &p.name)
            .chain([&self.pool])
            .min()
            .unwrap_or(&self.pool)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks a config; the error says where (line, column) and what is wrong.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let config: Config = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// Checks across fields, which serde cannot do while reading one value.
    fn check(&self) -> Result<(), String> {
        let max_paths = |what: String, value: u32| {
            if value > MAX_PATHS_LIMIT {
                Err(format!(
                    "{what} {value} is more than gobgpd can be told to send per prefix (its add-paths send-max is at most {MAX_PATHS_LIMIT})"
                ))
            } else {
                Ok(())
            }
        };
        max_paths("ecmp.maxPaths".to_string(), self.ecmp.max_paths)?;
        for (list, ranges) in [
            ("serviceClusterIPs", &self.service_cluster_ips),
            ("serviceExternalIPs", &self.service_external_ips),
            ("serviceLoadBalancerIPs", &self.service_load_balancer_ips),
        ] {
            for (i, range) in ranges.iter().enumerate() {
                if let Some(value) = range.max_paths {
                    max_paths(format!("{list}[{i}].maxPaths"), value)?;
                }
            }
        }
        // The parts must stay shorter than the host routes (/32, /128) they would otherwise clash with.
        let longest = self.ecmp.longest_prefix;
        if !(1..=31).contains(&longest.ipv4) {
            return Err(format!(
                "ecmp.longestPrefix.ipv4 {} must be between 1 and 31 (host routes are /32)",
                longest.ipv4
            ));
        }
        if !(1..=127).contains(&longest.ipv6) {
            return Err(format!(
                "ecmp.longestPrefix.ipv6 {} must be between 1 and 127 (host routes are /128)",
                longest.ipv6
            ));
        }
        let mut names = std::collections::BTreeSet::from([&self.pool]);
        for (i, other) in self.other_pools.iter().enumerate() {
            if !names.insert(&other.name) {
                return Err(format!(
                    "otherPools[{i}].name `{}` names this pool or another entry again: pool names must differ",
                    other.name
                ));
            }
            if other.ranges.is_empty() {
                return Err(format!("otherPools[{i}] ({}) has no ranges", other.name));
            }
        }
        let brake = &self.guard.withdrawal_brake;
        if !(1..=99).contains(&brake.share_percent) {
            return Err(format!(
                "guard.withdrawalBrake.sharePercent {} must be between 1 and 99",
                brake.share_percent
            ));
        }
        if brake.window.0.is_zero() || brake.max_hold.0.is_zero() {
            return Err("guard.withdrawalBrake.window and maxHold must be longer than 0 (enabled: false turns the brake off)".to_string());
        }
        let limits = &self.api.limits;
        for (name, value) in [
            ("maxConcurrentCalls", limits.max_concurrent_calls),
            ("maxWatchStreams", limits.max_watch_streams),
            ("maxWatchStreamsPerPeer", limits.max_watch_streams_per_peer),
            ("maxRequestBytes", limits.max_request_bytes),
            ("maxResponseBytes", limits.max_response_bytes),
            (
                "maxStreamsPerConnection",
                limits.max_streams_per_connection as usize,
            ),
        ] {
            if value == 0 {
                return Err(format!("api.limits.{name} must be at least 1"));
            }
        }
        // tokio's semaphores hold at most usize::MAX >> 3 permits.
        if limits.max_concurrent_calls > 1 << 20 || limits.max_watch_streams > 1 << 20 {
            return Err(
                "api.limits.maxConcurrentCalls and maxWatchStreams must be at most 1048576"
                    .to_string(),
            );
        }
        for (name, value) in [
            ("callTimeout", limits.call_timeout),
            ("keepaliveInterval", limits.keepalive_interval),
            ("keepaliveTimeout", limits.keepalive_timeout),
        ] {
            if value.0.is_zero() {
                return Err(format!("api.limits.{name} must be longer than 0"));
            }
        }
        if self.api.health_listen == Some(self.api.listen) {
            return Err(format!(
                "api.healthListen {} is api.listen too: give the health listener a port of its own",
                self.api.listen
            ));
        }
        if let Some(gobgp) = &self.gobgp {
            GobgpAddress::parse(&gobgp.address)?;
            if gobgp.batch_size == 0 {
                return Err("gobgp.batchSize must be at least 1".to_string());
            }
            if gobgp.anti_entropy_interval.0.is_zero() {
                return Err("gobgp.antiEntropyInterval must be longer than 0".to_string());
            }
        }
        Ok(())
    }
}

/// A parsed `gobgp.address`.
/// Where gobgpd's API is: `host:port` over TCP, or `unix:///path` over a unix socket (what the
/// shipped configs use: a socket in a directory only the pod's two containers share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GobgpAddress {
    /// `host:port`.
    Tcp(String),
    /// `unix:///absolute/path`.
    Unix(PathBuf),
}

/// The prefix of a unix socket address, as gobgpd's own `--api-hosts` and the gobgp CLI's
/// `--target` spell it.
pub const UNIX_SCHEME: &str = "unix://";

impl GobgpAddress {
    /// Parses `host:port` or `unix:///path`; the error says what was expected.
    pub fn parse(address: &str) -> Result<GobgpAddress, String> {
        if let Some(path) = address.strip_prefix(UNIX_SCHEME) {
            if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
                return Err(format!(
                    "gobgp.address `{address}` is not unix:// followed by an absolute socket path (e.g. unix:///run/gobgp/api.sock)"
                ));
            }
            return Ok(GobgpAddress::Unix(PathBuf::from(path)));
        }
        let port_ok = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok || address.contains("://") {
            return Err(format!(
                "gobgp.address `{address}` is neither host:port (e.g. 127.0.0.1:50051) nor unix:///path (e.g. unix:///run/gobgp/api.sock)"
            ));
        }
        Ok(GobgpAddress::Tcp(address.to_string()))
    }
}
