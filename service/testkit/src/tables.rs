//! Plans as the tables the planner's tests are written in: `prefix -> sorted "node=address"`.

use std::collections::BTreeMap;

use crate::plan::Plan;

/// Every next hop of the seed lab's three nodes.
pub const ALL3: &[&str] = &["control=198.19.0.1", "node1=198.19.0.2", "node2=198.19.0.3"];

/// The plan as `prefix -> "node=address"` lines, in the plan's next-hop order.
pub fn routes(plan: &Plan) -> BTreeMap<String, Vec<String>> {
    plan.routes
        .iter()
        .map(|(p, r)| {
            let hops = r
                .next_hops
                .iter()
                .map(|h| format!("{}={}", h.node, h.address))
                .collect();
            (p.to_string(), hops)
        })
        .collect()
}

/// A table as a test writes it: `(prefix, ["node=address", ...])` pairs.
pub fn expect(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(p, hops)| (p.to_string(), hops.iter().map(|h| h.to_string()).collect()))
        .collect()
}
