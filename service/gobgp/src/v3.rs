//! The GoBGP v3 client (`apipb.GobgpApi`): herald's paths to and from apipb messages.
//!
//! Paths go out as `google.protobuf.Any` NLRI and attributes with type URLs
//! `type.googleapis.com/apipb.<Message>`: an `IPAddressPrefix` NLRI, `OriginAttribute`, the next hop
//! as a `NextHopAttribute` (IPv4 prefix, IPv4 next hop) or else an `MpReachNLRIAttribute` carrying
//! next hop and NLRI, `CommunitiesAttribute`, `LargeCommunitiesAttribute` and `LocalPrefAttribute`
//! when set. Additions and withdrawals (`is_withdraw`, with the full path) go through
//! `AddPathStream`; herald never calls `DeletePath`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_api::gobgp::v3 as api;
use herald_api::gobgp::v3::gobgp_api_client::GobgpApiClient;
use ipnet::IpNet;
use pbjson_types::Any;
use prost::Message;
use tonic::transport::Channel;

use super::endpoint::{Connect, GobgpAddress, GobgpEndpoint};

mod messages;
pub use messages::{PathMessage, PathWriter};

use super::paths::{Family, HERALD_SOURCE_ASN, Op, PathAttrs, PathKey, is_herald_identifier};
use super::reconciler::{ClientError, ErrorKind, FamilyCounts, GobgpClient, RibView};
use super::restart::PeerRestart;
use crate::config::LargeCommunity;

const PREFIX_URL: &str = "type.googleapis.com/apipb.IPAddressPrefix";
const ORIGIN_URL: &str = "type.googleapis.com/apipb.OriginAttribute";
const NEXT_HOP_URL: &str = "type.googleapis.com/apipb.NextHopAttribute";
const MP_REACH_URL: &str = "type.googleapis.com/apipb.MpReachNLRIAttribute";
const COMMUNITIES_URL: &str = "type.googleapis.com/apipb.CommunitiesAttribute";
const LARGE_COMMUNITIES_URL: &str = "type.googleapis.com/apipb.LargeCommunitiesAttribute";
const LOCAL_PREF_URL: &str = "type.googleapis.com/apipb.LocalPrefAttribute";
const GRACEFUL_RESTART_CAP_URL: &str = "type.googleapis.com/apipb.GracefulRestartCapability";

/// The least time gobgpd gets to start answering ListPath (it gathers the whole table first).
const LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Paths in the first message of a call of several: gobgpd takes a message only once it has all of
/// it, and a call starts with gobgpd idle (BENCHMARKS.md, figures behind choices).
const FIRST_MESSAGE_PATHS: usize = 100;

/// gobgpd (gRPC-Go) refuses messages over 4 MiB; herald keeps its messages well below.
const MAX_MESSAGE_BYTES: usize = 2 << 20;

fn family(f: Family) -> api::Family {
    let afi = match f {
        Family::Ipv4 => api::family::Afi::Ip,
        Family::Ipv6 => api::family::Afi::Ip6,
    };
    api::Family {
        afi: afi as i32,
        safi: api::family::Safi::Unicast as i32,
    }
}

/// The client of one gobgpd, over one HTTP/2 connection that tonic re-establishes as needed.
#[derive(Clone)]
pub struct V3Client {
    endpoint: GobgpEndpoint,
    client: GobgpApiClient<Channel>,
    /// The same connection, for AddPathStream's messages written as bytes ([`PathWriter`]).
    channel: Channel,
    /// How long one call (or one message of a streamed answer) may take.
    timeout: Duration,
    /// How long gobgpd may take to start answering ListPath: it gathers the whole table first.
    list_timeout: Duration,
    batch_size: usize,
}

/// `ops` as AddPathStream messages of at most `batch_size` paths and about 2 MiB each.
pub fn encode_batches(ops: &[Op], batch_size: usize) -> Vec<PathMessage> {
    PathWriter::default().messages(ops, batch_size)
}

/// What a path read from gobgpd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// One of herald's paths.
    Own(PathKey, PathAttrs),
    /// Someone else's (an operator's, a peer's).
    Other,
}

/// Whether gobgpd's path is one of herald's: local (not from a peer), with herald's source AS and
/// an identifier in herald's space.
pub fn is_own(path: &api::Path) -> bool {
    path.source_asn == HERALD_SOURCE_ASN
        && is_herald_identifier(path.identifier)
        && (path.neighbor_ip.is_empty() || path.neighbor_ip == "<nil>")
}

fn decode_prefix(nlri: &Any) -> Result<IpNet, String> {
    if nlri.type_url != PREFIX_URL {
        return Err(format!("unexpected NLRI type {}", nlri.type_url));
    }
    let p =
        api::IpAddressPrefix::decode(nlri.value.clone()).map_err(|e| format!("bad NLRI: {e}"))?;
    let address: IpAddr = p
        .prefix
        .parse()
        .map_err(|_| format!("bad NLRI address {:?}", p.prefix))?;
    let len =
        u8::try_from(p.prefix_len).map_err(|_| format!("bad prefix length {}", p.prefix_len))?;
    IpNet::new(address, len).map_err(|_| format!("bad prefix {}/{}", p.prefix, p.prefix_len))
}

/// Decodes a path from ListPath; `interner` shares community lists between paths that have the same.
pub fn decode_path(path: &api::Path, interner: &mut Interner) -> Result<Decoded, String> {
    if !is_own(path) {
        return Ok(Decoded::Other);
    }
    let nlri = path.nlri.as_ref().ok_or("path without NLRI")?;
    let prefix = decode_prefix(nlri)?;
    let mut next_hop: Option<IpAddr> = None;
    let mut origin: Option<u8> = None;
    let mut local_pref = None;
    let mut communities = interner.no_communities.clone();
    let mut large = interner.no_large.clone();
    let mut foreign_attributes = false;
    for attr in &path.pattrs {
        let value = attr.value.clone();
        let bad = |e: prost::DecodeError| format!("bad attribute {}: {e}", attr.type_url);
        match attr.type_url.as_str() {
            ORIGIN_URL => {
                let o = api::OriginAttribute::decode(value).map_err(bad)?.origin;
                match u8::try_from(o) {
                    Ok(o) if o <= 2 => origin = Some(o),
                    _ => foreign_attributes = true,
                }
            }
            NEXT_HOP_URL => {
                let hop = api::NextHopAttribute::decode(value).map_err(bad)?.next_hop;
                next_hop = Some(hop.parse().map_err(|_| format!("bad next hop {hop:?}"))?);
            }
            MP_REACH_URL => {
                let mp = api::MpReachNlriAttribute::decode(value).map_err(bad)?;
                let hop = mp
                    .next_hops
                    .first()
                    .ok_or("MP_REACH_NLRI without next hop")?;
                next_hop = Some(hop.parse().map_err(|_| format!("bad next hop {hop:?}"))?);
                if mp.next_hops.len() > 1 {
                    // A link-local second next hop: herald never sets one.
                    foreign_attributes = true;
                }
            }
            COMMUNITIES_URL => {
                let mut list = api::CommunitiesAttribute::decode(value)
                    .map_err(bad)?
                    .communities;
                list.sort_unstable();
                list.dedup();
                communities = interner.communities(list);
            }
            LARGE_COMMUNITIES_URL => {
                let mut list: Vec<LargeCommunity> = api::LargeCommunitiesAttribute::decode(value)
                    .map_err(bad)?
                    .communities
                    .into_iter()
                    .map(|c| LargeCommunity(c.global_admin, c.local_data1, c.local_data2))
                    .collect();
                list.sort_unstable();
                list.dedup();
                large = interner.large(list);
            }
            LOCAL_PREF_URL => {
                local_pref = Some(
                    api::LocalPrefAttribute::decode(value)
                        .map_err(bad)?
                        .local_pref,
                )
            }
            _ => foreign_attributes = true,
        }
    }
    let next_hop = next_hop.ok_or_else(|| format!("{prefix}: path without next hop"))?;
    Ok(Decoded::Own(
        PathKey {
            prefix,
            identifier: path.identifier,
        },
        PathAttrs {
            next_hop,
            origin: origin.unwrap_or_else(|| {
                foreign_attributes = true;
                0
            }),
            local_pref,
            communities,
            large_communities: large,
            foreign_attributes,
        },
    ))
}

/// Shares equal community lists between decoded paths.
pub struct Interner {
    no_communities: Arc<[u32]>,
    no_large: Arc<[LargeCommunity]>,
    communities: HashMap<Vec<u32>, Arc<[u32]>>,
    large: HashMap<Vec<LargeCommunity>, Arc<[LargeCommunity]>>,
}

impl Default for Interner {
    fn default() -> Self {
        Self {
            no_communities: Arc::from(Vec::new()),
            no_large: Arc::from(Vec::new()),
            communities: HashMap::new(),
            large: HashMap::new(),
        }
    }
}

impl Interner {
    fn communities(&mut self, list: Vec<u32>) -> Arc<[u32]> {
        if list.is_empty() {
            return self.no_communities.clone();
        }
        if let Some(shared) = self.communities.get(&list) {
            return shared.clone();
        }
        let shared: Arc<[u32]> = Arc::from(list.clone());
        self.communities.insert(list, shared.clone());
        shared
    }

    fn large(&mut self, list: Vec<LargeCommunity>) -> Arc<[LargeCommunity]> {
        if list.is_empty() {
            return self.no_large.clone();
        }
        if let Some(shared) = self.large.get(&list) {
            return shared.clone();
        }
        let shared: Arc<[LargeCommunity]> = Arc::from(list.clone());
        self.large.insert(list, shared.clone());
        shared
    }
}

fn status_error(call: &str, status: tonic::Status) -> ClientError {
    use tonic::Code;
    let unreachable = matches!(status.code(), Code::Unavailable | Code::Cancelled)
        || status.message().starts_with("Service was not ready");
    let kind = if unreachable {
        ErrorKind::Unreachable
    } else if status.code() == Code::DeadlineExceeded {
        ErrorKind::Timeout
    } else {
        ErrorKind::Rejected
    };
    let mut message = format!("{call}: {}", status.message());
    if let Some(source) = std::error::Error::source(&status) {
        message = format!("{message} ({source})");
    }
    ClientError { kind, message }
}

/// gobgpd's answer for a family that is not among its global afi-safis.
fn is_absent_family(e: &ClientError) -> bool {
    e.kind == ErrorKind::Rejected
        && e.message.contains("address family")
        && e.message.contains("not supported")
}

fn timeout_error(call: &str, after: Duration) -> ClientError {
    ClientError {
        kind: ErrorKind::Timeout,
        message: format!("{call}: no answer from gobgpd in {after:?}"),
    }
}

impl V3Client {
    /// A client of gobgpd's API at `address` (`host:port` or `unix:///path`). Connects lazily:
    /// gobgpd need not be up yet.
    pub fn new(address: &str, batch_size: usize, timeout: Duration) -> Result<Self, ClientError> {
        let rejected = |message: String| ClientError {
            kind: ErrorKind::Rejected,
            message,
        };
        let endpoint = GobgpAddress::parse(address)
            .and_then(|a| a.endpoint())
            .map_err(rejected)?
            .map(|e| {
                e.connect_timeout(timeout.min(Duration::from_secs(3)))
                    .tcp_nodelay(true)
                    .http2_adaptive_window(true)
            });
        let (client, channel) = Self::connect(&endpoint);
        Ok(Self {
            endpoint,
            client,
            channel,
            timeout,
            list_timeout: timeout.max(LIST_TIMEOUT),
            batch_size: batch_size.max(1),
        })
    }

    fn connect(endpoint: &GobgpEndpoint) -> (GobgpApiClient<Channel>, Channel) {
        let channel = endpoint.connect_lazy();
        let client = GobgpApiClient::new(channel.clone()).max_decoding_message_size(256 << 20);
        (client, channel)
    }

    /// After a timeout the connection may be dead without TCP noticing (a hung or partitioned
    /// gobgpd): the next call gets a new one.
    fn after<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(e) = &result {
            if e.kind == ErrorKind::Timeout {
                (self.client, self.channel) = Self::connect(&self.endpoint);
            }
        }
        result
    }

    async fn call<T>(
        &self,
        name: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        Self::call_within(self.timeout, name, fut).await
    }

    async fn call_within<T>(
        timeout: Duration,
        name: &str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status_error(name, status)),
            Err(_) => Err(timeout_error(name, timeout)),
        }
    }

    /// Every path gobgpd holds for a family, herald's decoded.
    async fn list_family(
        &mut self,
        fam: Family,
        view: &mut RibView,
        interner: &mut Interner,
    ) -> Result<(), ClientError> {
        let request = api::ListPathRequest {
            table_type: api::TableType::Global as i32,
            family: Some(family(fam)),
            ..Default::default()
        };
        let mut client = self.client.clone();
        let mut stream =
            Self::call_within(self.list_timeout, "ListPath", client.list_path(request)).await?;
        loop {
            let message = match tokio::time::timeout(self.timeout, stream.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(status)) => return Err(status_error("ListPath", status)),
                Err(_) => return Err(timeout_error("ListPath", self.timeout)),
            };
            let Some(destination) = message.destination else {
                continue;
            };
            for path in &destination.paths {
                match decode_path(path, interner) {
                    Ok(Decoded::Own(key, attrs)) => {
                        if view.own.insert(key, attrs).is_some() {
                            // Two of herald's paths with one key cannot be: gobgpd replaces.
                            view.undecodable += 1;
                        }
                    }
                    Ok(Decoded::Other) => view.others += 1,
                    Err(e) => {
                        tracing::warn!(prefix = %destination.prefix, error = %e, "cannot read a path of herald's in gobgpd");
                        view.undecodable += 1;
                    }
                }
            }
        }
    }
}

impl GobgpClient for V3Client {
    async fn path_counts(&mut self) -> Result<FamilyCounts, ClientError> {
        let result = self.get_counts().await;
        self.after(result)
    }

    async fn list(&mut self) -> Result<RibView, ClientError> {
        let result = self.list_all().await;
        self.after(result)
    }

    async fn push(&mut self, ops: &[Op]) -> Result<(), ClientError> {
        let result = self.push_ops(ops).await;
        self.after(result)
    }

    async fn peers(&mut self) -> Result<Vec<PeerRestart>, ClientError> {
        let result = self.list_peers().await;
        self.after(result)
    }

    async fn resend(&mut self, peer: &str) -> Result<(), ClientError> {
        // Soft, out, one named peer: never the hard reset or the "all" of the same call.
        let request = api::ResetPeerRequest {
            address: peer.to_string(),
            communication: String::new(),
            soft: true,
            direction: api::reset_peer_request::SoftResetDirection::Out as i32,
        };
        let mut client = self.client.clone();
        let result = self
            .call("ResetPeer", client.reset_peer(request))
            .await
            .map(drop);
        self.after(result)
    }
}

/// A neighbor of ListPeer, as graceful restart sees it.
fn peer_restart(peer: api::Peer) -> PeerRestart {
    let state = peer.state.unwrap_or_default();
    let conf = peer.conf.unwrap_or_default();
    let gr = peer.graceful_restart.unwrap_or_default();
    let up_since_secs = peer
        .timers
        .and_then(|t| t.state)
        .and_then(|s| s.uptime)
        .map(|t| u64::try_from(t.seconds).unwrap_or(0))
        .unwrap_or(0);
    PeerRestart {
        address: if conf.neighbor_address.is_empty() {
            state.neighbor_address.clone()
        } else {
            conf.neighbor_address
        },
        established: state.session_state == api::peer_state::SessionState::Established as i32,
        up_since_secs,
        enabled: gr.enabled,
        peer_capable: state
            .remote_cap
            .iter()
            .any(|c| c.type_url == GRACEFUL_RESTART_CAP_URL),
        local_restarting: gr.local_restarting,
        restart_time: gr.restart_time,
        deferral_time: gr.deferral_time,
    }
}

impl V3Client {
    async fn list_peers(&mut self) -> Result<Vec<PeerRestart>, ClientError> {
        let mut client = self.client.clone();
        let mut stream = self
            .call(
                "ListPeer",
                client.list_peer(api::ListPeerRequest::default()),
            )
            .await?;
        let mut peers = Vec::new();
        loop {
            match tokio::time::timeout(self.timeout, stream.message()).await {
                Ok(Ok(Some(response))) => peers.extend(response.peer.map(peer_restart)),
                Ok(Ok(None)) => return Ok(peers),
                Ok(Err(status)) => return Err(status_error("ListPeer", status)),
                Err(_) => return Err(timeout_error("ListPeer", self.timeout)),
            }
        }
    }

    async fn get_counts(&mut self) -> Result<FamilyCounts, ClientError> {
        let mut counts = [None; 2];
        for (i, fam) in Family::ALL.into_iter().enumerate() {
            let request = api::GetTableRequest {
                table_type: api::TableType::Global as i32,
                family: Some(family(fam)),
                name: String::new(),
            };
            let mut client = self.client.clone();
            counts[i] = match self.call("GetTable", client.get_table(request)).await {
                Ok(table) => Some(table.num_path),
                Err(e) if is_absent_family(&e) => None,
                Err(e) => return Err(e),
            };
        }
        Ok(counts)
    }

    async fn list_all(&mut self) -> Result<RibView, ClientError> {
        let mut view = RibView::default();
        let mut interner = Interner::default();
        for fam in Family::ALL {
            match self.list_family(fam, &mut view, &mut interner).await {
                Ok(()) => {}
                Err(e) if is_absent_family(&e) => view.absent[fam as usize] = true,
                Err(e) => return Err(e),
            }
        }
        Ok(view)
    }

    async fn push_ops(&mut self, ops: &[Op]) -> Result<(), ClientError> {
        if ops.is_empty() {
            return Ok(());
        }
        let batch_size = self.batch_size;
        if ops.len() <= batch_size {
            let messages = encode_batches(ops, batch_size);
            self.call(
                "AddPathStream",
                add_path_stream(self.channel.clone(), tokio_stream::iter(messages)),
            )
            .await?;
            return Ok(());
        }
        // Several messages in one call, each encoded here (from the caller's operations, nothing
        // copied) while gobgpd works on the one before: at most two messages ahead of gobgpd.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        // When gobgpd last took a message (the transport's flow control holds the next one back
        // until it does). A long call is not a hung gobgpd: gobgpd takes paths of a prefix with a
        // thousand next hops at a few hundred a second, so a call of 8,000 of them outlasts any
        // fixed deadline worth having. What times out is a call that stops moving.
        let progress = std::sync::Mutex::new(tokio::time::Instant::now());
        let moved =
            || *progress.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        let feed = async {
            let mut writer = PathWriter::default();
            // A short first message: gobgpd, idle since the previous call, starts on it sooner.
            let (head, rest) = ops.split_at(ops.len().min(batch_size).min(FIRST_MESSAGE_PATHS));
            for chunk in std::iter::once(head).chain(rest.chunks(batch_size)) {
                for message in writer.messages(chunk, batch_size) {
                    if tx.send(message).await.is_err() {
                        return; // The call is over (gobgpd refused it).
                    }
                    moved();
                }
            }
            drop(tx);
        };
        let call = add_path_stream(
            self.channel.clone(),
            tokio_stream::wrappers::ReceiverStream::new(rx),
        );
        tokio::pin!(call, feed);
        let mut fed = false;
        loop {
            let stalled_at = *progress.lock().unwrap_or_else(|e| e.into_inner()) + self.timeout;
            tokio::select! {
                // The call ends after the last message, or early on an error: either way it
                // decides, and whatever is left to feed is dropped with it.
                result = &mut call => return match result {
                    Ok(_) => Ok(()),
                    Err(status) => Err(status_error("AddPathStream", status)),
                },
                // Fed: gobgpd has what is left in flight to apply, within one timeout.
                () = &mut feed, if !fed => {
                    fed = true;
                    moved();
                }
                () = tokio::time::sleep_until(stalled_at) => {
                    if *progress.lock().unwrap_or_else(|e| e.into_inner()) + self.timeout <= tokio::time::Instant::now() {
                        return Err(timeout_error("AddPathStream", self.timeout));
                    }
                }
            }
        }
    }
}

/// `GobgpApi.AddPathStream` with messages written ahead as bytes (the generated client takes
/// `AddPathStreamRequest` trees; these are the same bytes without the trees).
async fn add_path_stream(
    channel: Channel,
    messages: impl tokio_stream::Stream<Item = PathMessage> + Send + 'static,
) -> Result<tonic::Response<pbjson_types::Empty>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("gobgpd's connection: {e}")))?;
    let codec = tonic_prost::ProstCodec::<PathMessage, pbjson_types::Empty>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/apipb.GobgpApi/AddPathStream");
    let mut request = tonic::Request::new(messages);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("apipb.GobgpApi", "AddPathStream"));
    grpc.client_streaming(request, path, codec).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn op(prefix: &str, hop: &str, withdraw: bool) -> Op {
        Op {
            key: PathKey {
                prefix: prefix.parse().unwrap(),
                identifier: 0xA000_0042,
            },
            attrs: PathAttrs {
                next_hop: hop.parse().unwrap(),
                origin: super::super::paths::origin_code(Origin::Incomplete),
                local_pref: Some(200),
                communities: Arc::from(vec![100 << 16 | 1, 100 << 16 | 2]),
                large_communities: Arc::from(vec![LargeCommunity(64512, 1, 2)]),
                foreign_attributes: false,
            },
            withdraw,
        }
    }

    /// What gobgpd would answer in ListPath for a path herald sent.
    fn as_listed(mut path: api::Path) -> api::Path {
        path.neighbor_ip = "<nil>".into();
        path.source_id = "<nil>".into();
        path
    }

    /// The paths of `ops` as gobgpd reads them: the written messages decoded with the generated
    /// types.
    fn sent(ops: &[Op], batch_size: usize) -> Vec<api::Path> {
        encode_batches(ops, batch_size)
            .into_iter()
            .flat_map(|m| {
                let request = api::AddPathStreamRequest::decode(m.bytes.clone()).unwrap();
                // Byte for byte what prost writes for the same request.
                assert_eq!(request.encode_to_vec(), m.bytes);
                assert_eq!(request.table_type, api::TableType::Global as i32);
                assert_eq!(request.paths.len(), m.paths);
                request.paths
            })
            .collect()
    }

    #[test]
    fn round_trips_ipv4_and_ipv6() {
        let cases = [
            ("198.19.32.0/20", "198.19.0.1"),
            ("2001:db8:1::/64", "2001:db8::1"),
            ("198.19.33.0/24", "2001:db8::2"),
        ];
        // Each alone, then all in one message with withdrawals and a second hop of one prefix
        // (the pieces kept from path to path must not leak into the next).
        let mut all = Vec::new();
        for (prefix, hop) in cases {
            let op = op(prefix, hop, false);
            let path = sent(std::slice::from_ref(&op), 10).remove(0);
            let urls: Vec<&str> = path.pattrs.iter().map(|a| a.type_url.as_str()).collect();
            if prefix.contains(':') || hop.contains(':') {
                assert_eq!(urls[1], MP_REACH_URL, "{urls:?}");
                let mp = api::MpReachNlriAttribute::decode(path.pattrs[1].value.clone()).unwrap();
                assert_eq!(mp.nlris, vec![path.nlri.clone().unwrap()]);
                assert_eq!(mp.family, path.family);
            } else {
                assert_eq!(urls[1], NEXT_HOP_URL, "{urls:?}");
            }
            assert_eq!(
                urls,
                [
                    ORIGIN_URL,
                    urls[1],
                    COMMUNITIES_URL,
                    LARGE_COMMUNITIES_URL,
                    LOCAL_PREF_URL
                ]
            );
            assert!(!path.is_withdraw);
            assert_eq!(path.source_asn, HERALD_SOURCE_ASN);
            let decoded = decode_path(&as_listed(path), &mut Interner::default()).unwrap();
            assert_eq!(decoded, Decoded::Own(op.key, op.attrs.clone()));
            all.push(op.clone());
            let mut second = op.clone();
            second.key.identifier += 1;
            second.withdraw = true;
            all.push(second);
        }
        let paths = sent(&all, 4);
        assert_eq!(paths.len(), all.len());
        for (path, op) in paths.into_iter().zip(&all) {
            assert_eq!(path.is_withdraw, op.withdraw);
            let expected_family = family(Family::of(&op.key.prefix));
            assert_eq!(path.family, Some(expected_family));
            let decoded = decode_path(&as_listed(path), &mut Interner::default()).unwrap();
            assert_eq!(decoded, Decoded::Own(op.key, op.attrs.clone()));
        }
    }

    #[test]
    fn other_paths_are_not_herald_s() {
        let mut path = as_listed(sent(&[op("198.19.32.0/20", "198.19.0.1", false)], 1).remove(0));
        path.source_asn = 0;
        assert_eq!(
            decode_path(&path, &mut Interner::default()).unwrap(),
            Decoded::Other
        );
        path.source_asn = HERALD_SOURCE_ASN;
        path.identifier = 7;
        assert_eq!(
            decode_path(&path, &mut Interner::default()).unwrap(),
            Decoded::Other
        );
        path.identifier = 0xA000_0042;
        path.neighbor_ip = "192.0.2.9".into();
        assert_eq!(
            decode_path(&path, &mut Interner::default()).unwrap(),
            Decoded::Other
        );
    }

    #[test]
    fn batches_respect_size() {
        let ops: Vec<Op> = (0..2500)
            .map(|i| {
                op(
                    &format!("10.{}.{}.0/24", i / 256, i % 256),
                    "198.19.0.1",
                    false,
                )
            })
            .collect();
        let messages = encode_batches(&ops, 1000);
        assert_eq!(
            messages.iter().map(|m| m.paths).collect::<Vec<_>>(),
            vec![1000, 1000, 500]
        );
        assert!(
            messages
                .iter()
                .all(|m| m.encoded_len() < MAX_MESSAGE_BYTES + 4096)
        );
    }
}
