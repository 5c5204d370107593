//! herald's paths as `AddPathStreamRequest` messages, written as bytes straight from the operations.
//!
//! A push of 100,000 paths repeats a few encoded pieces over and over: a route's NLRI for each of
//! its next hops, one ORIGIN, a few hundred nodes' next hops, a route's communities. Each piece is
//! encoded once, as the `apipb.Path` field it becomes, and a path is written as its fields one after
//! another: no message tree per path, no type-URL strings, no allocation but the message buffer.
//! gobgpd shares the machine's cores with herald during a push; what herald does not spend, gobgpd
//! gets (BENCHMARKS.md, push). The bytes are what prost writes for the same `apipb.Path` (fields in
//! number order, defaults left out): the tests decode them with the generated types.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use herald_api::gobgp::v3 as api;
use ipnet::IpNet;
use pbjson_types::Any;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

use super::{
    COMMUNITIES_URL, LARGE_COMMUNITIES_URL, LOCAL_PREF_URL, MAX_MESSAGE_BYTES, MP_REACH_URL,
    NEXT_HOP_URL, ORIGIN_URL, PREFIX_URL, family,
};
use crate::config::LargeCommunity;
use crate::paths::{Family, HERALD_SOURCE_ASN, Op, PathKey};

// Field numbers, from gobgp.proto.
const PATH_NLRI: u32 = 1;
const PATH_PATTRS: u32 = 2;
const PATH_IS_WITHDRAW: u32 = 5;
const PATH_FAMILY: u32 = 9;
const PATH_SOURCE_ASN: u32 = 10;
const PATH_IDENTIFIER: u32 = 18;
const REQUEST_PATHS: u32 = 3;
const ANY_TYPE_URL: u32 = 1;
const ANY_VALUE: u32 = 2;
const MP_REACH_FAMILY: u32 = 1;
const MP_REACH_NEXT_HOPS: u32 = 2;
const MP_REACH_NLRIS: u32 = 3;

/// One encoded `AddPathStreamRequest` (table GLOBAL, no VRF: both the defaults, so absent), sent
/// as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PathMessage {
    pub bytes: Bytes,
    pub paths: usize,
}

impl Message for PathMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent, never read.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        *self = PathMessage::default();
    }
}

/// `message` as field `tag` of its parent: key, length, bytes.
fn field(tag: u32, message: &impl Message) -> Bytes {
    let mut out = Vec::with_capacity(message.encoded_len() + 8);
    encoding::message::encode(tag, message, &mut out);
    out.into()
}

/// A `google.protobuf.Any` of `value` as field `tag`.
fn any_field(tag: u32, url: &str, value: &impl Message) -> Bytes {
    field(
        tag,
        &Any {
            type_url: url.to_string(),
            value: value.encode_to_vec().into(),
        },
    )
}

/// The length of a length-delimited field `tag` whose body is `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

fn put_delimited_head(tag: u32, len: usize, out: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, out);
    encoding::encode_varint(len as u64, out);
}

/// The NLRI of one prefix: as the path's field, and as the field of an MP_REACH_NLRI attribute.
struct Nlri {
    prefix: IpNet,
    path_field: Bytes,
    mp_reach_field: Bytes,
}

/// Writes paths; keeps the encoded pieces they share from one push to the next.
pub struct PathWriter {
    origin: HashMap<u8, Bytes>,
    local_pref: HashMap<u32, Bytes>,
    /// Keyed by the address of the route's shared community list, valid while the entry holds it.
    communities: HashMap<usize, (Arc<[u32]>, Bytes)>,
    large: HashMap<usize, (Arc<[LargeCommunity]>, Bytes)>,
    /// IPv4 next hops as NEXT_HOP attributes: a few hundred nodes' addresses over many paths.
    next_hops: HashMap<IpAddr, Bytes>,
    /// Other next hops as the next-hop field of an MP_REACH_NLRI attribute.
    mp_next_hops: HashMap<IpAddr, Bytes>,
    /// Per family: the path's family field, and MP_REACH_NLRI's.
    families: [(Bytes, Bytes); 2],
    mp_reach_url: Bytes,
    /// The last prefix's NLRI: the paths of one prefix come one after another.
    last_nlri: Option<Nlri>,
    /// One path's fields, before its length is known.
    path: Vec<u8>,
}

impl Default for PathWriter {
    fn default() -> Self {
        let families = Family::ALL.map(|f| {
            let family = family(f);
            (field(PATH_FAMILY, &family), field(MP_REACH_FAMILY, &family))
        });
        let mut mp_reach_url = Vec::new();
        encoding::string::encode(ANY_TYPE_URL, &MP_REACH_URL.to_string(), &mut mp_reach_url);
        PathWriter {
            origin: HashMap::new(),
            local_pref: HashMap::new(),
            communities: HashMap::new(),
            large: HashMap::new(),
            next_hops: HashMap::new(),
            mp_next_hops: HashMap::new(),
            families,
            mp_reach_url: mp_reach_url.into(),
            last_nlri: None,
            path: Vec::with_capacity(512),
        }
    }
}

impl PathWriter {
    /// `ops` as messages of at most `batch_size` paths and about [`MAX_MESSAGE_BYTES`] each.
    pub fn messages(&mut self, ops: &[Op], batch_size: usize) -> Vec<PathMessage> {
        let batch_size = batch_size.max(1);
        let mut messages = Vec::with_capacity(ops.len().div_ceil(batch_size));
        let mut out = Vec::new();
        let mut paths = 0;
        for op in ops {
            if out.capacity() == 0 {
                // ~150 bytes a path of a route with communities.
                out.reserve((batch_size.min(ops.len()) * 160).min(MAX_MESSAGE_BYTES + 4096));
            }
            self.write_path(op, &mut out);
            paths += 1;
            if paths >= batch_size || out.len() >= MAX_MESSAGE_BYTES {
                messages.push(PathMessage {
                    bytes: std::mem::take(&mut out).into(),
                    paths,
                });
                paths = 0;
            }
        }
        if paths > 0 {
            messages.push(PathMessage {
                bytes: out.into(),
                paths,
            });
        }
        self.trim();
        messages
    }

    /// Appends one path (an addition, or a withdrawal with the full path) as a `paths` field.
    fn write_path(&mut self, op: &Op, out: &mut Vec<u8>) {
        let PathKey { prefix, identifier } = op.key;
        let attrs = &op.attrs;
        let fam = Family::of(&prefix) as usize;
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let nlri = self.nlri(prefix);
        path.extend_from_slice(&nlri.path_field);
        path.extend_from_slice(self.origin(attrs.origin));
        match (prefix, attrs.next_hop) {
            (IpNet::V4(_), hop @ IpAddr::V4(_)) => path.extend_from_slice(self.next_hop(hop)),
            // IPv6, or an IPv4 prefix with an IPv6 next hop: the next hop goes with the NLRI.
            (_, hop) => {
                let nlri = self.last_nlri.as_ref().map(|n| n.mp_reach_field.clone());
                let nlri = nlri.unwrap_or_default();
                let family = self.families[fam].1.clone();
                let hop = self.mp_next_hop(hop).clone();
                let value_len = family.len() + hop.len() + nlri.len();
                let any_len = self.mp_reach_url.len() + delimited_len(ANY_VALUE, value_len);
                put_delimited_head(PATH_PATTRS, any_len, &mut path);
                path.extend_from_slice(&self.mp_reach_url);
                put_delimited_head(ANY_VALUE, value_len, &mut path);
                path.extend_from_slice(&family);
                path.extend_from_slice(&hop);
                path.extend_from_slice(&nlri);
            }
        }
        if !attrs.communities.is_empty() {
            path.extend_from_slice(self.communities(&attrs.communities));
        }
        if !attrs.large_communities.is_empty() {
            path.extend_from_slice(self.large(&attrs.large_communities));
        }
        if let Some(value) = attrs.local_pref {
            path.extend_from_slice(self.local_pref(value));
        }
        if op.withdraw {
            encoding::bool::encode(PATH_IS_WITHDRAW, &true, &mut path);
        }
        path.extend_from_slice(&self.families[fam].0);
        encoding::uint32::encode(PATH_SOURCE_ASN, &HERALD_SOURCE_ASN, &mut path);
        if identifier != 0 {
            encoding::uint32::encode(PATH_IDENTIFIER, &identifier, &mut path);
        }
        put_delimited_head(REQUEST_PATHS, path.len(), out);
        out.extend_from_slice(&path);
        self.path = path;
    }

    fn nlri(&mut self, prefix: IpNet) -> &Nlri {
        if self.last_nlri.as_ref().is_none_or(|n| n.prefix != prefix) {
            let message = api::IpAddressPrefix {
                prefix_len: prefix.prefix_len().into(),
                prefix: prefix.network().to_string(),
            };
            self.last_nlri = Some(Nlri {
                prefix,
                path_field: any_field(PATH_NLRI, PREFIX_URL, &message),
                mp_reach_field: any_field(MP_REACH_NLRIS, PREFIX_URL, &message),
            });
        }
        self.last_nlri.as_ref().expect("set above")
    }

    fn origin(&mut self, origin: u8) -> &Bytes {
        self.origin.entry(origin).or_insert_with(|| {
            let value = api::OriginAttribute {
                origin: origin.into(),
            };
            any_field(PATH_PATTRS, ORIGIN_URL, &value)
        })
    }

    fn next_hop(&mut self, hop: IpAddr) -> &Bytes {
        self.next_hops.entry(hop).or_insert_with(|| {
            let value = api::NextHopAttribute {
                next_hop: hop.to_string(),
            };
            any_field(PATH_PATTRS, NEXT_HOP_URL, &value)
        })
    }

    fn mp_next_hop(&mut self, hop: IpAddr) -> &Bytes {
        self.mp_next_hops.entry(hop).or_insert_with(|| {
            let mut out = Vec::new();
            encoding::string::encode(MP_REACH_NEXT_HOPS, &hop.to_string(), &mut out);
            out.into()
        })
    }

    fn local_pref(&mut self, value: u32) -> &Bytes {
        self.local_pref.entry(value).or_insert_with(|| {
            any_field(
                PATH_PATTRS,
                LOCAL_PREF_URL,
                &api::LocalPrefAttribute { local_pref: value },
            )
        })
    }

    fn communities(&mut self, list: &Arc<[u32]>) -> &Bytes {
        shared_field(&mut self.communities, list, communities_field)
    }

    fn large(&mut self, list: &Arc<[LargeCommunity]>) -> &Bytes {
        shared_field(&mut self.large, list, large_field)
    }

    /// Forgets everything once it grows past what one plan needs, so memory stays bounded.
    fn trim(&mut self) {
        if self.communities.len() > 4096 {
            self.communities.clear();
        }
        if self.large.len() > 4096 {
            self.large.clear();
        }
        if self.local_pref.len() > 16 {
            self.local_pref.clear();
        }
        if self.next_hops.len() > 4096 {
            self.next_hops.clear();
        }
        if self.mp_next_hops.len() > 4096 {
            self.mp_next_hops.clear();
        }
    }
}

/// The field of a route's shared list, kept by the list's address while the entry holds the list
/// (an address seen again after its list was freed is another list: encoded again).
fn shared_field<'a, T>(
    kept: &'a mut HashMap<usize, (Arc<[T]>, Bytes)>,
    list: &Arc<[T]>,
    encode: fn(&[T]) -> Bytes,
) -> &'a Bytes {
    let entry = kept
        .entry(Arc::as_ptr(list) as *const T as usize)
        .and_modify(|entry| {
            if !Arc::ptr_eq(&entry.0, list) {
                *entry = (list.clone(), encode(list));
            }
        })
        .or_insert_with(|| (list.clone(), encode(list)));
    &entry.1
}

fn communities_field(list: &[u32]) -> Bytes {
    let value = api::CommunitiesAttribute {
        communities: list.to_vec(),
    };
    any_field(PATH_PATTRS, COMMUNITIES_URL, &value)
}

fn large_field(list: &[LargeCommunity]) -> Bytes {
    let value = api::LargeCommunitiesAttribute {
        communities: list
            .iter()
            .map(|c| api::LargeCommunity {
                global_admin: c.0,
                local_data1: c.1,
                local_data2: c.2,
            })
            .collect(),
    };
    any_field(PATH_PATTRS, LARGE_COMMUNITIES_URL, &value)
}
