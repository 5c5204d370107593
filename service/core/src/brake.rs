//! The withdrawal brake, the guard's first stage: a sick control plane must not blackhole a healthy
//! fabric.
//!
//! When the API server or etcd is sick, or the control plane is cut off from the nodes, the node
//! lifecycle controller marks every node `Ready=Unknown`: the planner then has no eligible node and
//! withdraws every route, while the nodes and their pods still serve. The brake tells that from the
//! loss of a few nodes by its size:
//!
//! - **pool**: more than `sharePercent` of the pool's eligible nodes (and at least [`MIN_NODES`])
//!   lost for node-level reasons (Ready lost, the Node deleted) within `window`: every path those
//!   nodes announced just before each was lost stays announced, including the paths of the first
//!   nodes of the wave, withdrawn before the wave was big enough to tell (they come back);
//! - **prefix**: more than `sharePercent` of one prefix's next hops (and at least [`MIN_NODES`])
//!   vanish in one plan because their nodes were lost so: those next hops stay.
//!
//! Intended removals are never held: a node leaving the pool (nodeSelector) or excluded
//! (`node.kubernetes.io/exclude-from-external-load-balancers`) is not a loss; a node deleted or
//! failing on its own is below the threshold and withdrawn at once, as without the brake.
//!
//! A held path is let go when its node is eligible again (the planner decides for it again), when
//! what is still held is no longer above the threshold (the cluster recovered, the rest are single
//! failures, withdrawn then), when an operator releases the brake, and at the latest `maxHold`
//! after the brake engaged. Held paths are announced as they were; the rest of the plan follows the
//! planner as usual (an endpoint change on a healthy node goes through).
//!
//! Pure, like the planner: the caller passes the time. Costs nothing while no node is lost; while
//! it holds, in proportion to the routes that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

use crate::plan::{NextHop, NodeExplanation, Plan, Route};
use crate::planner::NOT_READY;

/// Fewer lost nodes than this never engage the brake, whatever the share: one node failing is
/// withdrawn at once, even in a pool of one or two.
pub const MIN_NODES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrakeConfig {
    /// More than this percentage of the eligible nodes (or of a prefix's next hops) lost engages it.
    pub share_percent: u32,
    /// How close together the losses must be to count as one event.
    pub window: Duration,
    /// The longest the brake holds a path: after that it lets go of everything it holds.
    pub max_hold: Duration,
}

impl Default for BrakeConfig {
    fn default() -> Self {
        BrakeConfig {
            share_percent: 50,
            window: Duration::from_secs(30),
            max_hold: Duration::from_secs(15 * 60),
        }
    }
}

/// What the brake holds and why: for the status, the metrics, the log and the Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrakeStatus {
    /// Counts engagements since herald started: tells one engagement from the next.
    pub engagement: u64,
    pub engaged_at: SystemTime,
    /// When the brake lets go at the latest (`maxHold` after it engaged).
    pub releases_at: SystemTime,
    pub reason: String,
    /// The nodes whose paths are held (lost, still held).
    pub nodes: BTreeSet<String>,
    pub paths: usize,
    pub prefixes: usize,
}

/// How the last engagement ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrakeRelease {
    pub engagement: u64,
    pub at: SystemTime,
    pub why: String,
}

/// The paths held for one prefix, and the route they were last announced with (for a prefix the
/// planner no longer has).
#[derive(Debug, Clone)]
struct Held {
    template: Arc<Route>,
    hops: BTreeSet<NextHop>,
}

#[derive(Debug)]
struct Engaged {
    number: u64,
    at: Instant,
    wall: SystemTime,
    reason: String,
}

#[derive(Debug, Default)]
pub struct Brake {
    config: BrakeConfig,
    /// The node table of the last plan (shared with it: unchanged tables are not walked again).
    nodes: Arc<BTreeMap<String, NodeExplanation>>,
    eligible: BTreeSet<String>,
    /// Nodes lost for node-level reasons within the window, and when.
    lost: BTreeMap<String, Instant>,
    /// The brake's output just before each loss: what those nodes announced.
    before_loss: BTreeMap<Instant, Plan>,
    held: BTreeMap<IpNet, Held>,
    engaged: Option<Engaged>,
    engagements: u64,
    last_release: Option<BrakeRelease>,
    last_raw: Plan,
    last_out: Plan,
}

/// `part` is more than `share` percent of `whole`, and at least [`MIN_NODES`].
fn above(config: &BrakeConfig, part: usize, whole: usize) -> bool {
    part >= MIN_NODES && part * 100 > config.share_percent as usize * whole
}

impl Brake {
    pub fn new(config: BrakeConfig) -> Self {
        Brake {
            config,
            ..Default::default()
        }
    }

    /// The planner's plan with the held paths put back. The flag says whether what is held changed
    /// (the caller forgets its own record of those paths having gone away).
    pub fn apply(&mut self, raw: &Plan, now: Instant) -> (Plan, bool) {
        let mut held_changed = false;
        let mut newly_lost = false;
        if !Arc::ptr_eq(&self.nodes, &raw.nodes) {
            let eligible: BTreeSet<String> = raw
                .nodes
                .iter()
                .filter(|(_, n)| n.ineligible.is_none())
                .map(|(name, _)| name.clone())
                .collect();
            for name in self.eligible.difference(&eligible) {
                // Deleted, or Ready lost: node-level. Out of the pool or excluded: intended.
                let node_level = raw
                    .nodes
                    .get(name)
                    .is_none_or(|n| n.ineligible.as_deref() == Some(NOT_READY));
                if node_level {
                    self.lost.insert(name.clone(), now);
                    newly_lost = true;
                }
            }
            if newly_lost {
                self.before_loss.insert(now, self.last_out.clone());
            }
            // Back, or removed on purpose since (excluded, out of the pool): the planner decides for
            // it again.
            let still_lost = |name: &str| {
                raw.nodes
                    .get(name)
                    .is_none_or(|n| n.ineligible.as_deref() == Some(NOT_READY))
            };
            self.lost.retain(|name, _| still_lost(name));
            let paths = self.paths();
            for held in self.held.values_mut() {
                held.hops.retain(|h| still_lost(&h.node));
            }
            self.held.retain(|_, h| !h.hops.is_empty());
            held_changed |= self.paths() != paths;
            self.eligible = eligible;
            self.nodes = raw.nodes.clone();
        }
        let window = self.config.window;
        self.lost.retain(|_, at| now.duration_since(*at) < window);
        let lost = &self.lost;
        self.before_loss
            .retain(|at, _| lost.values().any(|l| l == at));

        // Pool: a wave of lost nodes.
        let lost_count = self.lost.len();
        if newly_lost && above(&self.config, lost_count, self.eligible.len() + lost_count) {
            for (at, plan) in &self.before_loss {
                let nodes: BTreeSet<&String> = self
                    .lost
                    .iter()
                    .filter(|(_, l)| *l == at)
                    .map(|(n, _)| n)
                    .collect();
                for (prefix, route) in plan.routes.iter() {
                    for hop in route.next_hops.iter().filter(|h| nodes.contains(&h.node)) {
                        self.held
                            .entry(*prefix)
                            .or_insert_with(|| Held {
                                template: route.clone(),
                                hops: BTreeSet::new(),
                            })
                            .hops
                            .insert(hop.clone());
                    }
                }
            }
            let reason = format!(
                "{lost_count} of the pool's {} eligible nodes lost within {window:?} (Ready lost or Node deleted)",
                self.eligible.len() + lost_count
            );
            self.engage(now, reason);
            held_changed = true;
        }
        // Prefix: most of one prefix's next hops gone at once with their nodes.
        if newly_lost {
            let mut prefixes = 0usize;
            for (prefix, before, after) in self.last_raw.route_changes(raw) {
                let Some(before) = before else { continue };
                let vanished: Vec<&NextHop> = before
                    .next_hops
                    .iter()
                    .filter(|h| {
                        self.lost.contains_key(&h.node)
                            && !after.is_some_and(|a| a.next_hops.contains(*h))
                    })
                    .collect();
                if above(&self.config, vanished.len(), before.next_hops.len()) {
                    let template = self.last_out.routes.get(&prefix).unwrap_or(before).clone();
                    let held = self.held.entry(prefix).or_insert_with(|| Held {
                        template,
                        hops: BTreeSet::new(),
                    });
                    let count = held.hops.len();
                    held.hops.extend(vanished.into_iter().cloned());
                    if held.hops.len() != count {
                        prefixes += 1;
                    }
                }
            }
            if prefixes > 0 {
                held_changed = true;
                if self.engaged.is_none() {
                    self.engage(now, format!("{prefixes} prefix(es) lost most of their next hops at once (their nodes lost Ready or were deleted)"));
                }
            }
        }
        // Let go: at maxHold, or once what is held is no longer above the threshold.
        if let Some(engaged_at) = self.engaged.as_ref().map(|e| e.at) {
            if now.duration_since(engaged_at) >= self.config.max_hold {
                let why = format!(
                    "held for maxHold ({:?}): every held path withdrawn",
                    self.config.max_hold
                );
                self.release(why);
                held_changed = true;
            } else if held_changed || !Arc::ptr_eq(&self.last_raw.nodes, &raw.nodes) {
                let nodes: BTreeSet<&str> = self
                    .held
                    .values()
                    .flat_map(|h| h.hops.iter().map(|n| n.node.as_str()))
                    .collect();
                if !above(&self.config, nodes.len(), self.eligible.len() + nodes.len()) {
                    let config = self.config;
                    let before = self.paths();
                    self.held.retain(|prefix, held| {
                        let planned = raw.routes.get(prefix).map_or(0, |r| r.next_hops.len());
                        above(&config, held.hops.len(), planned + held.hops.len())
                    });
                    held_changed |= self.paths() != before;
                }
                if self.held.is_empty() {
                    self.release(
                        "the cluster recovered: nothing left above the threshold".to_string(),
                    );
                }
            }
        }

        let out = if self.held.is_empty() {
            raw.clone()
        } else {
            let mut out =
                if held_changed {
                    let mut out = raw.clone();
                    for (prefix, held) in &self.held {
                        put(
                            &mut out,
                            *prefix,
                            with_held(raw.routes.get(prefix), held, raw),
                        );
                    }
                    out
                } else {
                    // Only the routes the planner changed: the rest stays shared with the last output.
                    let mut out = self.last_out.clone();
                    for (prefix, _, route) in self.last_raw.route_changes(raw) {
                        let route = match self.held.get(&prefix) {
                            Some(held) => with_held(route, held, raw),
                            None => route.cloned(),
                        };
                        put(&mut out, prefix, route);
                    }
                    if !raw.services.ptr_eq(&self.last_raw.services) {
                        // A Service deleted (or changed) while its host route is only held: see with_held.
                        for (prefix, held) in self.held.iter().filter(|(p, h)| {
                            h.template.kind.is_host() && !raw.routes.contains_key(*p)
                        }) {
                            put(&mut out, *prefix, with_held(None, held, raw));
                        }
                    }
                    out.refusals = raw.refusals.clone();
                    out.services = raw.services.clone();
                    out.nodes = raw.nodes.clone();
                    out.notes = raw.notes.clone();
                    out
                };
            if let Some(status) = self.status() {
                out.notes.push(format!(
                    "withdrawal brake engaged: {}; holding {} path(s) of {} node(s) for {} prefix(es) until they recover, \
                     an operator releases it (heraldctl brake release) or maxHold ({:?}) has passed",
                    status.reason,
                    status.paths,
                    status.nodes.len(),
                    status.prefixes,
                    self.config.max_hold
                ));
            }
            out
        };
        self.last_raw = raw.clone();
        self.last_out = out.clone();
        (out, held_changed)
    }

    fn engage(&mut self, now: Instant, reason: String) {
        if self.engaged.is_none() {
            self.engagements += 1;
            self.engaged = Some(Engaged {
                number: self.engagements,
                at: now,
                wall: SystemTime::now(),
                reason,
            });
        }
    }

    fn release(&mut self, why: String) {
        if let Some(engaged) = self.engaged.take() {
            self.last_release = Some(BrakeRelease {
                engagement: engaged.number,
                at: SystemTime::now(),
                why,
            });
        }
        self.held.clear();
        // What was lost is accepted: it does not count towards the next wave.
        self.lost.clear();
        self.before_loss.clear();
    }

    /// An operator's release: every held path goes (at the next [`Brake::apply`]). Whether the
    /// brake was engaged.
    pub fn release_now(&mut self, by: &str) -> bool {
        let engaged = self.engaged.is_some();
        self.release(format!("released by {by}"));
        engaged
    }

    fn paths(&self) -> usize {
        self.held.values().map(|h| h.hops.len()).sum()
    }

    /// When the brake must look again on its own (maxHold), if it holds something.
    pub fn wake_at(&self) -> Option<Instant> {
        self.engaged.as_ref().map(|e| e.at + self.config.max_hold)
    }

    /// The held paths, by prefix.
    pub fn held_paths(&self) -> impl Iterator<Item = (IpNet, &NextHop)> {
        self.held
            .iter()
            .flat_map(|(prefix, held)| held.hops.iter().map(move |hop| (*prefix, hop)))
    }

    pub fn status(&self) -> Option<BrakeStatus> {
        self.engaged.as_ref().map(|engaged| BrakeStatus {
            engagement: engaged.number,
            engaged_at: engaged.wall,
            releases_at: engaged.wall + self.config.max_hold,
            reason: engaged.reason.clone(),
            nodes: self
                .held
                .values()
                .flat_map(|h| h.hops.iter().map(|n| n.node.clone()))
                .collect(),
            paths: self.paths(),
            prefixes: self.held.len(),
        })
    }

    pub fn last_release(&self) -> Option<&BrakeRelease> {
        self.last_release.as_ref()
    }
}

/// The planner's route of a prefix (or the held one's, if the planner has none) with the held next
/// hops added. A host route the planner dropped stays only while a Service of it still has its IP:
/// a Service deleted, or its IP changed, is not a node's loss.
fn with_held(route: Option<&Arc<Route>>, held: &Held, raw: &Plan) -> Option<Arc<Route>> {
    match route {
        Some(route) if held.hops.is_subset(&route.next_hops) => Some(route.clone()),
        Some(route) => {
            let mut route = Route::clone(route);
            let planned = route.next_hops.len();
            route.next_hops.extend(held.hops.iter().cloned());
            route.reason = format!(
                "{}; and {} lost node(s) the withdrawal brake holds",
                route.reason,
                route.next_hops.len() - planned
            );
            Some(Arc::new(route))
        }
        None if held.template.kind.is_host() && !still_asked_for(&held.template, raw) => None,
        None => {
            let mut route = Route::clone(&held.template);
            route.next_hops = held.hops.clone();
            route.reason = format!(
                "held by the withdrawal brake: {} lost node(s) announced it; was: {}",
                held.hops.len(),
                route.reason
            );
            Some(Arc::new(route))
        }
    }
}

/// Whether a Service of a host route (its sources, `namespace/name`) still has the route's IP.
fn still_asked_for(route: &Route, raw: &Plan) -> bool {
    route
        .sources
        .iter()
        .filter_map(|source| source.split_once('/'))
        .any(|(namespace, name)| {
            raw.services
                .get(&crate::cluster::ObjectKey::new(namespace, name))
                .is_some_and(|e| {
                    e.ips.iter().any(|ip| {
                        ip.ip
                            .trim()
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip == route.prefix.addr())
                    })
                })
        })
}

/// Puts `route` (or its absence) in `out` at `prefix`.
fn put(out: &mut Plan, prefix: IpNet, route: Option<Arc<Route>>) {
    match route {
        Some(route) => {
            out.routes.insert(prefix, route);
        }
        None => {
            out.routes.remove(&prefix);
        }
    }
}

#[cfg(test)]
mod tests;
