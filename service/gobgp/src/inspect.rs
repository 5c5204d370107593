//! A read-only look into gobgpd for operators: its BGP neighbors (session state, ADD-PATH
//! negotiated or not), the paths in its RIB (herald's and others'), and what it sent each neighbor
//! (adj-RIB-out). Used by `ExplainService`, `DiffRib` and the peer metrics; it never changes gobgpd.

use std::net::IpAddr;
use std::time::Duration;

use herald_api::gobgp::v3 as api;
use herald_api::gobgp::v3::gobgp_api_client::GobgpApiClient;
use ipnet::IpNet;
use pbjson_types::Any;
use prost::Message;
use tonic::transport::Channel;

use super::endpoint::{Connect, GobgpAddress};

use super::paths::Family;
use super::v3::is_own;

const NEXT_HOP_URL: &str = "type.googleapis.com/apipb.NextHopAttribute";
const MP_REACH_URL: &str = "type.googleapis.com/apipb.MpReachNLRIAttribute";
const ADD_PATH_URL: &str = "type.googleapis.com/apipb.AddPathCapability";
const GRACEFUL_RESTART_URL: &str = "type.googleapis.com/apipb.GracefulRestartCapability";

#[derive(Debug, thiserror::Error)]
#[error("gobgpd {call}: {message}")]
pub struct InspectError {
    call: &'static str,
    message: String,
}

/// A BGP neighbor of gobgpd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub address: String,
    pub description: String,
    /// `established`, `active`, `idle`, ... as gobgpd names it, lower case.
    pub state: String,
    /// Per family (IPv4, IPv6): both sides agreed that gobgpd may send several paths per prefix.
    /// Without it the neighbor learns one next hop per prefix, and ECMP over nodes is lost.
    pub add_path_send: [bool; 2],
    /// Graceful restart configured in gobgpd, and advertised by the neighbor: both are needed for
    /// the neighbor to keep herald's routes while gobgpd restarts.
    pub graceful_restart: (bool, bool),
}

impl Neighbor {
    pub fn is_established(&self) -> bool {
        self.state == "established"
    }
}

/// One path of gobgpd's RIB or of an adj-RIB-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WirePath {
    pub prefix: IpNet,
    pub next_hop: Option<IpAddr>,
    /// The path identifier herald (or the operator) gave the path.
    pub identifier: u32,
    /// The identifier gobgpd sends it with to ADD-PATH neighbors.
    pub local_identifier: u32,
    /// Added by herald (its source and identifier space), as opposed to an operator or a peer.
    pub herald: bool,
}

#[derive(Clone)]
pub struct Inspector {
    client: GobgpApiClient<Channel>,
    timeout: Duration,
}

fn api_family(prefix_v4: bool) -> api::Family {
    let afi = if prefix_v4 {
        api::family::Afi::Ip
    } else {
        api::family::Afi::Ip6
    };
    api::Family {
        afi: afi as i32,
        safi: api::family::Safi::Unicast as i32,
    }
}

fn next_hop(pattrs: &[Any]) -> Option<IpAddr> {
    pattrs.iter().find_map(|a| match a.type_url.as_str() {
        NEXT_HOP_URL => api::NextHopAttribute::decode(a.value.clone())
            .ok()?
            .next_hop
            .parse()
            .ok(),
        MP_REACH_URL => api::MpReachNlriAttribute::decode(a.value.clone())
            .ok()?
            .next_hops
            .first()?
            .parse()
            .ok(),
        _ => None,
    })
}

fn add_path_send(state: &api::PeerState) -> [bool; 2] {
    let modes = |caps: &[Any]| -> Vec<(i32, i32)> {
        caps.iter()
            .filter(|c| c.type_url == ADD_PATH_URL)
            .filter_map(|c| api::AddPathCapability::decode(c.value.clone()).ok())
            .flat_map(|c| c.tuples)
            .map(|t| (t.family.map(|f| f.afi).unwrap_or_default(), t.mode))
            .collect()
    };
    use api::add_path_capability_tuple::Mode;
    let local = modes(&state.local_cap);
    let remote = modes(&state.remote_cap);
    let has = |list: &[(i32, i32)], afi: api::family::Afi, wanted: Mode| {
        list.iter()
            .any(|(a, m)| *a == afi as i32 && (*m == wanted as i32 || *m == Mode::Both as i32))
    };
    [api::family::Afi::Ip, api::family::Afi::Ip6]
        .map(|afi| has(&local, afi, Mode::Send) && has(&remote, afi, Mode::Receive))
}

impl Inspector {
    pub fn new(address: &str, timeout: Duration) -> Result<Self, InspectError> {
        let endpoint = GobgpAddress::parse(address)
            .and_then(|a| a.endpoint())
            .map_err(|message| InspectError {
                call: "connect",
                message,
            })?
            .map(|e| e.connect_timeout(timeout.min(Duration::from_secs(3))));
        Ok(Inspector {
            client: GobgpApiClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(256 << 20),
            timeout,
        })
    }

    async fn within<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, InspectError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(InspectError {
                call,
                message: status.message().to_string(),
            }),
            Err(_) => Err(InspectError {
                call,
                message: format!("no answer in {:?}", self.timeout),
            }),
        }
    }

    /// The next message of a streamed answer, each within the timeout.
    async fn next<T>(
        &self,
        call: &'static str,
        stream: &mut tonic::Streaming<T>,
    ) -> Result<Option<T>, InspectError> {
        tokio::time::timeout(self.timeout, stream.message())
            .await
            .map_err(|_| InspectError {
                call,
                message: "stream stalled".to_string(),
            })?
            .map_err(|s| InspectError {
                call,
                message: s.message().to_string(),
            })
    }

    pub async fn neighbors(&self) -> Result<Vec<Neighbor>, InspectError> {
        let mut client = self.client.clone();
        let mut stream = self
            .within(
                "ListPeer",
                client.list_peer(api::ListPeerRequest::default()),
            )
            .await?;
        let mut out = Vec::new();
        loop {
            let Some(response) = self.next("ListPeer", &mut stream).await? else {
                break;
            };
            let Some(peer) = response.peer else { continue };
            let state = peer.state.unwrap_or_default();
            let conf = peer.conf.unwrap_or_default();
            let graceful_restart = (
                peer.graceful_restart.is_some_and(|g| g.enabled),
                state
                    .remote_cap
                    .iter()
                    .any(|c| c.type_url == GRACEFUL_RESTART_URL),
            );
            let session = api::peer_state::SessionState::try_from(state.session_state)
                .map(|s| s.as_str_name().to_lowercase())
                .unwrap_or_else(|_| "unknown".to_string());
            out.push(Neighbor {
                address: if conf.neighbor_address.is_empty() {
                    state.neighbor_address.clone()
                } else {
                    conf.neighbor_address
                },
                description: conf.description,
                state: session,
                add_path_send: add_path_send(&state),
                graceful_restart,
            });
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    /// Paths of a table (global RIB, or a neighbor's adj-RIB-out), for one prefix or all.
    async fn paths(
        &self,
        table: api::TableType,
        neighbor: &str,
        family: Family,
        prefix: Option<IpNet>,
    ) -> Result<Vec<WirePath>, InspectError> {
        let request = api::ListPathRequest {
            table_type: table as i32,
            name: neighbor.to_string(),
            family: Some(api_family(family == Family::Ipv4)),
            prefixes: prefix
                .map(|p| {
                    vec![api::TableLookupPrefix {
                        prefix: p.to_string(),
                        r#type: api::table_lookup_prefix::Type::Exact as i32,
                    }]
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let mut stream = self.within("ListPath", client.list_path(request)).await?;
        let mut out = Vec::new();
        loop {
            let Some(response) = self.next("ListPath", &mut stream).await? else {
                break;
            };
            let Some(destination) = response.destination else {
                continue;
            };
            let Ok(prefix) = destination.prefix.parse::<IpNet>() else {
                continue;
            };
            for path in &destination.paths {
                out.push(WirePath {
                    prefix,
                    next_hop: next_hop(&path.pattrs),
                    identifier: path.identifier,
                    local_identifier: path.local_identifier,
                    herald: is_own(path),
                });
            }
        }
        Ok(out)
    }

    /// gobgpd's RIB (both families), or its paths for one prefix.
    pub async fn rib(&self, prefix: Option<IpNet>) -> Result<Vec<WirePath>, InspectError> {
        let mut out = Vec::new();
        for family in Family::ALL {
            if prefix.is_some_and(|p| Family::of(&p) != family) {
                continue;
            }
            match self.paths(api::TableType::Global, "", family, prefix).await {
                Ok(paths) => out.extend(paths),
                // A gobgpd without a table for the family has nothing of it.
                Err(e) if e.message.contains("family") || e.message.contains("not supported") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// What gobgpd sent `neighbor` for `prefix` (its adj-RIB-out).
    pub async fn adj_out(
        &self,
        neighbor: &str,
        prefix: IpNet,
    ) -> Result<Vec<WirePath>, InspectError> {
        self.paths(
            api::TableType::AdjOut,
            neighbor,
            Family::of(&prefix),
            Some(prefix),
        )
        .await
    }
}
