//! Spreading a range over more nodes than the router's ECMP width: which nodes announce which part.
//!
//! A router installs at most K next hops per prefix (its `maximum-paths`; BIRD's `merge paths`
//! keeps 16 by default). A range announced from N > K nodes reaches the router as N paths of which
//! it silently keeps K of its own choosing (BIRD: the lowest addresses), so the range's traffic
//! lands on K nodes nobody chose. Instead, herald announces the range as P sub-prefixes of itself
//! ("parts"), each from K nodes, with P·K ≥ N so that every node carries a part: the router keeps
//! every path it is sent, and the range's traffic is spread over the whole pool.
//!
//! Who carries which part is a pure function of the range, the part count, K and the set of
//! eligible node names: the same on every replica and after every restart, whatever order the
//! nodes were read in. It is a rendezvous scheme with capacities:
//!
//! - every (part, node) pair has a score, a hash of the range, the part and the node's name;
//! - round 1 takes the pairs in descending score order, accepting a pair while the part has fewer
//!   than K nodes and the node has no part yet. As long as P·K ≥ N, every node gets exactly one part
//!   (whenever a node is left without one, some part still has room, and the pairs of that node
//!   with that part come by later): coverage;
//! - the next rounds take the pairs again in the same order, filling the parts up to K with nodes
//!   that have fewer than 3 parts, then 4, ..., up to ⌈P·K/N⌉ + 1: balance. The levels are fixed
//!   numbers, not functions of N, so that one node more or fewer changes no round's rule (only, at
//!   most, whether the last one is needed). They start at 3, not 2, although that lets a few nodes
//!   carry 3 parts where 2 would do: a node that takes the place of one that left has room for it
//!   and keeps its other parts, where a level of 2 would make it give one up, and the node taking
//!   that one another, and so on. One node leaving then changes its own parts and, in most pools,
//!   nothing else;
//! - in a small pool (N < 3K) the rounds can leave a part short, every node outside it being
//!   full. One exchange per missing node fixes it without breaking either bound: a full node m
//!   outside the part joins it, and leaves one of its other parts to a member u of the short part
//!   that is not full and not in that part (both exist: see [`repair`]).
//!
//! Why this and not plain rendezvous hashing (each part takes its K best-scoring nodes): that is
//! perfectly stable, but a node's part count is then binomial: with P·K close to N about a third of
//! the nodes would carry nothing and some would carry three or four parts. Rank-based schemes
//! (nodes sorted by hash, parts taking K consecutive ones) are perfectly balanced but unstable: a
//! node leaving shifts every part after it, up to 2·P path changes. Here, a node leaving frees its
//! parts; each is taken by the next pair in score order, which moves one other node only when that
//! node's later part becomes free in turn: changes stay within twice the node's own paths plus a few
//! (the property tests bound it over generated pools; the figures are at STABILITY_SLACK).
//!
//! The rounds cost O(P·N·log(P·N) + rounds·P·N); they run only when the nodes or the config change.

use std::net::IpAddr;

use ipnet::IpNet;

/// A 64-bit hash, fixed forever: the choice of nodes must not change with a Rust release (as
/// `std`'s `DefaultHasher` may) or differ between two replicas built differently.
fn hash_bytes(bytes: &[u8]) -> u64 {
    // FNV-1a, then a finalizer: FNV alone mixes the last bytes of similar names poorly.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// splitmix64's finalizer: every input bit flips each output bit with probability about 1/2.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The score of a pair from the hashes of its two sides.
fn score(side: u64, node: u64) -> u64 {
    mix(side ^ node.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// What a part's side of the scores is keyed on: the range and the part's index.
fn part_key(range: &IpNet, part: usize) -> u64 {
    hash_bytes(format!("{range}#{part}").as_bytes())
}

/// The hash of a node's name, the node's side of every score.
pub fn node_key(name: &str) -> u64 {
    hash_bytes(name.as_bytes())
}

/// How many parts a range of prefix length `len` is split into, for a pool of `pool` nodes and
/// ECMP width `k`: the fewest (a power of two, so that the parts are equal halves of halves) with
/// parts·k ≥ pool, but none longer than `longest`. 1 means no split.
///
/// `pool` is the size of the pool (the nodes the node selector picks, Ready or not), not the
/// number of eligible nodes: a node that flaps between Ready and NotReady must not re-cut every
/// range. The parts change only when nodes join or leave the pool across a multiple of k·2^j.
pub fn part_count(len: u8, longest: u8, pool: usize, k: usize) -> usize {
    if k == 0 || pool <= k {
        return 1;
    }
    let mut bits = 0u8;
    while len + bits < longest && (k << bits) < pool {
        bits += 1;
    }
    1 << bits
}

/// The parts of `range`: its `count` equal sub-prefixes (a power of two), in address order.
pub fn parts(range: &IpNet, count: usize) -> Vec<IpNet> {
    let bits = count.trailing_zeros() as u8;
    match range.subnets(range.prefix_len() + bits) {
        Ok(subnets) => subnets.collect(),
        // Only when the length overflows, which part_count never asks for.
        Err(_) => vec![*range],
    }
}

/// The part of `range` (split in `count`) that holds `ip`.
pub fn part_holding(range: &IpNet, count: usize, ip: &IpAddr) -> Option<IpNet> {
    let len = range.prefix_len() + count.trailing_zeros() as u8;
    range
        .contains(ip)
        .then(|| IpNet::new(*ip, len).ok().map(|n| n.trunc()))
        .flatten()
}

/// Which nodes carry each part: for each of `count` parts of `range`, the indices (into `nodes`,
/// ascending) of its min(k, N) nodes. `nodes` are the eligible nodes' [`node_key`]s, unique.
pub fn assign(range: &IpNet, count: usize, k: usize, nodes: &[u64]) -> Vec<Vec<usize>> {
    let n = nodes.len();
    let k = k.min(n);
    let mut members: Vec<Vec<usize>> = vec![Vec::with_capacity(k); count];
    if n == 0 || k == 0 {
        return members;
    }
    let mut pairs: Vec<(u64, u32, u32)> = Vec::with_capacity(count * n);
    for part in 0..count {
        let side = part_key(range, part);
        for (node, key) in nodes.iter().enumerate() {
            pairs.push((score(side, *key), part as u32, node as u32));
        }
    }
    // Descending score; ties (rare: 64-bit scores) by part, then by node key, never by input order.
    pairs.sort_unstable_by(|a, b| {
        b.0.cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(nodes[a.2 as usize].cmp(&nodes[b.2 as usize]))
    });
    let mut load = vec![0usize; n];
    let mut missing = count * k;
    let cap = (count * k).div_ceil(n) + 1;
    // Round r takes nodes with fewer than r parts: every node's first part, then up to 3, 4, ...
    // (see the module's documentation for why not 2).
    let rounds = std::iter::once(1).chain(3.min(cap)..=cap);
    for round in rounds {
        for &(_, part, node) in &pairs {
            let (part, node) = (part as usize, node as usize);
            if members[part].len() < k && load[node] < round && !members[part].contains(&node) {
                members[part].push(node);
                load[node] += 1;
                missing -= 1;
            }
        }
        if missing == 0 {
            break;
        }
    }
    repair(&mut members, &mut load, k, cap, &pairs);
    for m in &mut members {
        m.sort_unstable();
    }
    members
}

/// Fills the parts the rounds left short (see the module's documentation). For a short part p, every
/// node outside p is full (at `cap`): otherwise its pair with p would have been taken. Some member
/// u of p is not full, or all N nodes would be full and hold N·cap > P·k parts. A full node m
/// outside p is in `cap` parts and u in fewer, so one part q of m's lacks u. m joins p, u takes m's
/// place in q: m's count is unchanged, u's grows by one and stays within `cap`.
fn repair(
    members: &mut [Vec<usize>],
    load: &mut [usize],
    k: usize,
    cap: usize,
    pairs: &[(u64, u32, u32)],
) {
    for p in 0..members.len() {
        while members[p].len() < k {
            // The first pairs in score order, as everywhere else.
            let Some(m) = pairs
                .iter()
                .filter(|(_, part, _)| *part as usize == p)
                .map(|(_, _, n)| *n as usize)
                .find(|n| !members[p].contains(n))
            else {
                return;
            };
            let Some(u) = members[p]
                .iter()
                .copied()
                .filter(|u| load[*u] < cap)
                .min_by_key(|u| load[*u])
            else {
                return;
            };
            let Some(q) = (0..members.len())
                .find(|q| *q != p && members[*q].contains(&m) && !members[*q].contains(&u))
            else {
                return;
            };
            members[q].retain(|x| *x != m);
            members[q].push(u);
            members[p].push(m);
            load[u] += 1;
        }
    }
}

/// The `k` of `nodes` that score highest for `key` (plain rendezvous hashing), as indices into
/// `nodes`, ascending: for a range's aggregate and for a Service IP with endpoints on more than k
/// nodes. A node leaving or joining changes at most one member.
pub fn top(key: &IpNet, k: usize, nodes: &[u64]) -> Vec<usize> {
    let side = hash_bytes(format!("{key}#top").as_bytes());
    let mut ranked: Vec<(u64, u64, usize)> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (score(side, *n), *n, i))
        .collect();
    ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen: Vec<usize> = ranked.into_iter().take(k).map(|(_, _, i)| i).collect();
    chosen.sort_unstable();
    chosen
}

/// How many paths beyond 2 × its own one node leaving or joining may move, in the property tests
/// (here and in herald-core's tests/planner.rs). A node leaving frees its parts; each is taken by
/// the next pair in score order, which moves another node only if that node's later part becomes
/// free in turn. How far such a chain runs is not bounded by a theorem but, over 30,000 random
/// pools (`stress` below), 82% of the changes moved nothing beyond the node's own paths, all but 3
/// at most 8 more, the worst 10. The bound leaves that worst case a margin.
pub const STABILITY_SLACK: usize = 16;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn range() -> IpNet {
        "198.19.32.0/20".parse().unwrap()
    }

    /// node name -> the parts it carries.
    fn by_node(names: &[String], members: &[Vec<usize>]) -> BTreeMap<String, BTreeSet<usize>> {
        let mut out: BTreeMap<String, BTreeSet<usize>> =
            names.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
        for (part, m) in members.iter().enumerate() {
            for &i in m {
                out.get_mut(&names[i]).unwrap().insert(part);
            }
        }
        out
    }

    /// The (part, node) paths of an assignment.
    fn paths(names: &[String], members: &[Vec<usize>]) -> BTreeSet<(usize, String)> {
        members
            .iter()
            .enumerate()
            .flat_map(|(p, m)| m.iter().map(move |&i| (p, names[i].clone())))
            .collect()
    }

    fn spread(names: &[String], count: usize, k: usize) -> Vec<Vec<usize>> {
        let keys: Vec<u64> = names.iter().map(|n| node_key(n)).collect();
        assign(&range(), count, k, &keys)
    }

    #[test]
    fn part_counts() {
        // 40 nodes, K = 16: 4 parts (64 slots); the pool decides, a /28 is the limit.
        assert_eq!(part_count(20, 28, 40, 16), 4);
        assert_eq!(part_count(20, 28, 16, 16), 1);
        assert_eq!(part_count(20, 28, 17, 16), 2);
        assert_eq!(part_count(20, 28, 1000, 64), 16);
        assert_eq!(part_count(20, 28, 2000, 1), 256);
        assert_eq!(part_count(28, 28, 2000, 1), 1);
        assert_eq!(part_count(20, 28, 40, 0), 1);
        assert_eq!(
            parts(&range(), 4)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "198.19.32.0/22",
                "198.19.36.0/22",
                "198.19.40.0/22",
                "198.19.44.0/22"
            ]
        );
        assert_eq!(
            part_holding(&range(), 4, &"198.19.41.7".parse().unwrap()),
            Some("198.19.40.0/22".parse().unwrap())
        );
        assert_eq!(
            part_holding(&range(), 4, &"198.19.48.1".parse().unwrap()),
            None
        );
    }

    /// A small pool where pass 2 leaves parts short: the repair fills them within the bounds.
    #[test]
    fn small_pools_are_filled_exactly() {
        for n in 2..48usize {
            for k in 1..n {
                let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
                let count = part_count(20, 28, n, k);
                let members = spread(&names, count, k);
                let loads = by_node(&names, &members);
                assert!(
                    members.iter().all(|m| m.len() == k),
                    "n {n} k {k}: {members:?}"
                );
                assert!(
                    loads.values().all(|p| !p.is_empty()),
                    "n {n} k {k}: a node without a part"
                );
                let bound = (count * k).div_ceil(n) + 1;
                assert!(
                    loads.values().all(|p| p.len() <= bound),
                    "n {n} k {k}: a node above {bound}"
                );
            }
        }
    }

    fn arb_pool() -> impl Strategy<Value = (Vec<String>, usize, usize)> {
        // Pools of 1 to 2,000 nodes (mostly small ones, where the corner cases are), K 1 to 256,
        // and the longest prefix the parts may have.
        let size = prop_oneof![1usize..64, 1usize..400, 1usize..2001];
        (
            size,
            1usize..=256,
            prop_oneof![Just(28u8), 21u8..=31],
            any::<u16>(),
        )
            .prop_map(|(n, k, longest, salt)| {
                let names = (0..n).map(|i| format!("node-{salt}-{i}")).collect();
                (names, k, part_count(20, longest, n, k))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// No part above K; every node carries a part when parts × K ≥ N; no node more than
        /// ⌈parts·K/N⌉ + 1 parts; the same choice whatever order the nodes come in.
        #[test]
        fn bounded_covering_balanced_and_order_free((names, k, count) in arb_pool()) {
            let n = names.len();
            let members = spread(&names, count, k);
            prop_assert!(members.iter().all(|m| m.len() == k.min(n)), "a part without exactly min(K, N) nodes");
            let loads = by_node(&names, &members);
            if count * k >= n {
                prop_assert!(loads.values().all(|p| !p.is_empty()), "a node carries no part");
            }
            let bound = (count * k).div_ceil(n) + 1;
            let max = loads.values().map(BTreeSet::len).max().unwrap_or(0);
            prop_assert!(max <= bound, "a node carries {max} parts, above {bound}");
            let mut reversed = names.clone();
            reversed.reverse();
            prop_assert_eq!(paths(&names, &members), paths(&reversed, &spread(&reversed, count, k)));
        }

        /// One node leaving or joining changes at most 2 × that node's paths + STABILITY_SLACK (the
        /// part count being the same: it follows the pool's size, see part_count).
        #[test]
        fn one_node_changes_little((names, k, count) in arb_pool(), which in any::<prop::sample::Index>(), join in any::<bool>()) {
            let before = paths(&names, &spread(&names, count, k));
            let (after, node) = if join {
                let mut more = names.clone();
                more.push("joining-node".to_string());
                (paths(&more, &spread(&more, count, k)), "joining-node".to_string())
            } else {
                let gone = which.index(names.len());
                let mut fewer = names.clone();
                let node = fewer.remove(gone);
                (paths(&fewer, &spread(&fewer, count, k)), node)
            };
            let own = before.iter().chain(&after).filter(|(_, n)| *n == node).count();
            let changed = before.symmetric_difference(&after).count();
            // The node's own paths are counted once (they are either before or after): each of
            // them is one change, and the path that takes or leaves its place another.
            prop_assert!(changed <= 2 * own + STABILITY_SLACK, "{changed} paths changed for a node of {own} paths");
        }

        /// Rendezvous top-k: a node leaving changes at most one member.
        #[test]
        fn top_k_is_stable(n in 1usize..300, k in 1usize..64, gone in any::<prop::sample::Index>()) {
            let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let keys: Vec<u64> = names.iter().map(|n| node_key(n)).collect();
            let key: IpNet = "198.19.38.11/32".parse().unwrap();
            let chosen: BTreeSet<&String> = top(&key, k, &keys).into_iter().map(|i| &names[i]).collect();
            prop_assert_eq!(chosen.len(), k.min(n));
            let gone = gone.index(n);
            let mut fewer_keys = keys.clone();
            fewer_keys.remove(gone);
            let fewer_names: Vec<&String> = names.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, n)| n).collect();
            let after: BTreeSet<&String> = top(&key, k, &fewer_keys).into_iter().map(|i| fewer_names[i]).collect();
            prop_assert!(chosen.difference(&after).count() <= 1);
        }
    }
}

#[cfg(test)]
mod stress {
    use std::collections::BTreeSet;

    use super::*;

    /// The largest change beyond 2 × the node's own paths over many random pools:
    /// `cargo test --release -p herald --lib spread::stress -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn largest_extra_change() {
        let range: IpNet = "198.19.32.0/20".parse().unwrap();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed = mix(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
            seed
        };
        let mut worst = (0usize, 0usize, 0usize, 0usize);
        let mut histogram = [0usize; 32];
        let trials: usize = std::env::var("TRIALS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(2000);
        for trial in 0..trials {
            let n = match next() % 3 {
                0 => 2 + next() as usize % 62,
                1 => 2 + next() as usize % 398,
                _ => 2 + next() as usize % 1999,
            };
            let k =
                [1, 2, 4, 8, 16, 32, 64, 128, 256, 1 + next() as usize % 256][next() as usize % 10];
            let longest = [28u8, 24, 31][next() as usize % 3];
            let count = part_count(20, longest, n, k);
            let keys: Vec<u64> = (0..n).map(|i| node_key(&format!("t{trial}-{i}"))).collect();
            let paths = |keys: &[u64]| -> BTreeSet<(usize, u64)> {
                assign(&range, count, k, keys)
                    .into_iter()
                    .enumerate()
                    .flat_map(|(p, m)| m.into_iter().map(move |i| (p, keys[i])))
                    .collect::<BTreeSet<_>>()
            };
            let before = paths(&keys);
            let (after, node) = if next() % 2 == 0 {
                let mut more = keys.clone();
                let joiner = node_key(&format!("t{trial}-joiner"));
                more.push(joiner);
                (paths(&more), joiner)
            } else {
                let mut fewer = keys.clone();
                let gone = fewer.remove(next() as usize % n);
                (paths(&fewer), gone)
            };
            let own = before
                .iter()
                .chain(&after)
                .filter(|(_, x)| *x == node)
                .count();
            let extra = before
                .symmetric_difference(&after)
                .count()
                .saturating_sub(2 * own);
            histogram[extra.min(31)] += 1;
            if extra > worst.0 {
                worst = (extra, n, k, count);
            }
        }
        println!(
            "trials {trials}: worst extra {} (n {}, k {}, parts {}); histogram {:?}",
            worst.0, worst.1, worst.2, worst.3, histogram
        );
    }
}
