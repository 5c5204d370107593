//! The planner, incrementally: one object changes, and only what depends on it is planned again.
//!
//! A Service's part of the plan depends on the Service, its EndpointSlices and the [`PlanContext`]
//! (config and nodes). So a Service or EndpointSlice change re-plans that one Service and re-merges
//! the host routes it touches; a Node change re-plans everything (nodes change rarely, and every
//! range route depends on all of them). The result equals [`super::plan`] of the same state: the
//! property tests check it.
//!
//! A batch of changes ([`IncrementalPlanner::apply_batch`], what `herald run` gives it: everything
//! between two cluster states) re-plans everything at most once, however many Nodes it changes, and
//! not at all when no Node change touches what the plan reads of a node (its pool membership,
//! eligibility and InternalIPs): a relabel with a label herald does not read, or a kubelet status
//! report the source did not already drop, costs a comparison per node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use ipnet::IpNet;

use super::{Explanations, PlanContext, ServicePlan, merge_host_route, plan_service_routes};
use crate::cluster::{ClusterState, EndpointSlice, Node, ObjectKey, Service};
use crate::config::Config;
use crate::plan::{Plan, Route};

pub use crate::cluster::Change;

/// The routes a change touched: the new routes of changed prefixes, and the prefixes now gone; a
/// prefix is in one list at most, and only if its route differs from the one before the change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanDelta {
    pub upserted: Vec<Arc<Route>>,
    pub removed: Vec<IpNet>,
}

impl PlanDelta {
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}

/// The routes before a change of the prefixes it touched (None: no route), so that the delta is
/// worked out once the change is through: a prefix that two re-plans touch (an EndpointSlice moved
/// from one Service to another) is listed once, or not at all if it ends as it began.
type Before = BTreeMap<IpNet, Option<Arc<Route>>>;

pub struct IncrementalPlanner {
    config: Config,
    state: ClusterState,
    context: Arc<PlanContext>,
    parts: HashMap<ObjectKey, ServicePlan>,
    /// Services contributing to each host route, in key order (the merge order of the full planner).
    contributors: HashMap<IpNet, BTreeSet<ObjectKey>>,
    slices_by_service: HashMap<ObjectKey, BTreeSet<ObjectKey>>,
    plan: Plan,
}

impl IncrementalPlanner {
    pub fn new(state: ClusterState, config: Config) -> Self {
        let context = Arc::new(PlanContext::new(&state, &config));
        let mut planner = IncrementalPlanner {
            config,
            state,
            context,
            parts: HashMap::default(),
            contributors: HashMap::default(),
            slices_by_service: HashMap::default(),
            plan: Plan::default(),
        };
        for slice in planner.state.endpoint_slices.values() {
            if let Some(service) = slice.service_key() {
                planner
                    .slices_by_service
                    .entry(service)
                    .or_default()
                    .insert(slice.key.clone());
            }
        }
        planner.replan_all();
        planner
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    fn plan_part(&self, key: &ObjectKey) -> Option<ServicePlan> {
        self.state
            .services
            .get(key)
            .map(|service| self.plan_one(service))
    }

    fn plan_one(&self, service: &Service) -> ServicePlan {
        let slices: Vec<&EndpointSlice> = self
            .slices_by_service
            .get(&service.key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.state.endpoint_slices.get(k).map(|s| &**s))
            .collect();
        plan_service_routes(&self.context, service, &slices)
    }

    fn replan_all(&mut self) {
        self.context = Arc::new(PlanContext::new(&self.state, &self.config));
        self.parts.clear();
        self.contributors.clear();
        let services: Vec<&Service> = self.state.services.values().map(|s| &**s).collect();
        let parts = super::plan_each(&services, |service| self.plan_one(service));
        let keys: Vec<ObjectKey> = services.iter().map(|s| s.key.clone()).collect();
        for (key, part) in keys.into_iter().zip(parts) {
            for route in &part.host_routes {
                self.contributors
                    .entry(route.prefix)
                    .or_default()
                    .insert(key.clone());
            }
            self.parts.insert(key, part);
        }
        let mut plan = self.context.ranges_plan().clone();
        let mut prefixes: Vec<&IpNet> = self.contributors.keys().collect();
        prefixes.sort();
        for prefix in prefixes {
            if let Some(route) = self.merged(prefix) {
                plan.insert_route(route);
            }
        }
        for part in self.parts.values() {
            plan.refusals.extend(part.refusals.iter().cloned());
        }
        plan.services = Explanations::new(self.context.clone(), &self.state);
        self.plan = plan;
    }

    /// The host route of `prefix`, merged from its contributors in key order.
    fn merged(&self, prefix: &IpNet) -> Option<Route> {
        let mut routes = BTreeMap::new();
        for key in self.contributors.get(prefix).into_iter().flatten() {
            if let Some(part) = self.parts.get(key) {
                for route in part.host_routes.iter().filter(|r| r.prefix == *prefix) {
                    merge_host_route(&mut routes, route, self.context.host_max_paths(prefix));
                }
            }
        }
        routes.remove(prefix)
    }

    /// Re-plans one Service and re-merges the host routes it had or has; notes in `before` the
    /// routes it replaces.
    fn replan_service(&mut self, key: &ObjectKey, before: &mut Before) {
        let old = self.parts.remove(key);
        let new = self.plan_part(key);
        let mut touched: BTreeSet<IpNet> = BTreeSet::new();
        if let Some(old) = &old {
            for route in &old.host_routes {
                touched.insert(route.prefix);
                if let Some(set) = self.contributors.get_mut(&route.prefix) {
                    set.remove(key);
                    if set.is_empty() {
                        self.contributors.remove(&route.prefix);
                    }
                }
            }
            for refusal in &old.refusals {
                self.plan.refusals.remove(refusal);
            }
        }
        if let Some(new) = new {
            for route in &new.host_routes {
                touched.insert(route.prefix);
                self.contributors
                    .entry(route.prefix)
                    .or_default()
                    .insert(key.clone());
            }
            self.plan.refusals.extend(new.refusals.iter().cloned());
            self.parts.insert(key.clone(), new);
        }
        for prefix in touched {
            let route = self.merged(&prefix);
            let current = self.plan.routes.get(&prefix);
            match route {
                Some(route) if current.map(|r| &**r) != Some(&route) => {
                    before.entry(prefix).or_insert_with(|| current.cloned());
                    self.plan.routes.insert(prefix, Arc::new(route));
                }
                Some(_) => {}
                None => {
                    if let Some(old) = self.plan.routes.remove(&prefix) {
                        before.entry(prefix).or_insert(Some(old));
                    }
                }
            }
        }
    }

    /// The delta from the routes `before` a change to the plan now.
    fn delta_since(&self, before: Before) -> PlanDelta {
        let mut delta = PlanDelta::default();
        for (prefix, old) in before {
            match self.plan.routes.get(&prefix) {
                Some(now) if old.as_deref() != Some(&**now) => delta.upserted.push(now.clone()),
                Some(_) => {}
                None if old.is_some() => delta.removed.push(prefix),
                None => {}
            }
        }
        delta
    }

    /// Applies one change; returns the routes it changed.
    pub fn apply(&mut self, change: Change) -> PlanDelta {
        let delta = self.apply_to_routes(change);
        // The explanations follow the state (a copy that shares it: nothing is explained here).
        self.plan.services = Explanations::new(self.context.clone(), &self.state);
        delta
    }

    fn apply_to_routes(&mut self, change: Change) -> PlanDelta {
        let mut before = Before::new();
        match &change {
            Change::Service(service) => {
                let key = service.key.clone();
                self.state.apply(&change);
                self.replan_service(&key, &mut before);
            }
            Change::ServiceDeleted(key) => {
                self.state.apply(&change);
                self.replan_service(key, &mut before);
            }
            Change::EndpointSlice(slice) => {
                let previous = self
                    .state
                    .endpoint_slices
                    .get(&slice.key)
                    .and_then(|s| s.service_key());
                let current = slice.service_key();
                if let Some(previous) = &previous {
                    if let Some(set) = self.slices_by_service.get_mut(previous) {
                        set.remove(&slice.key);
                    }
                }
                if let Some(current) = &current {
                    self.slices_by_service
                        .entry(current.clone())
                        .or_default()
                        .insert(slice.key.clone());
                }
                self.state.apply(&change);
                for service in previous.into_iter().chain(current).collect::<BTreeSet<_>>() {
                    self.replan_service(&service, &mut before);
                }
            }
            Change::EndpointSliceDeleted(key) => {
                if let Some(service) = self
                    .state
                    .endpoint_slices
                    .remove(key)
                    .and_then(|slice| slice.service_key())
                {
                    if let Some(set) = self.slices_by_service.get_mut(&service) {
                        set.remove(key);
                    }
                    self.replan_service(&service, &mut before);
                }
            }
            Change::Node(_) | Change::NodeDeleted(_) => {
                self.state.apply(&change);
                return self.replan_everything();
            }
        }
        self.delta_since(before)
    }

    /// Applies every change of a batch (as [`ClusterState::changes_to`] gives them) and re-plans
    /// once: everything if some Node change touches what the plan reads of nodes, else only the
    /// Services the other changes touch. Returns the routes the batch changed.
    pub fn apply_batch(&mut self, changes: Vec<Change>) -> PlanDelta {
        let before = self.plan.clone();
        let mut nodes_changed = false;
        let mut others = Vec::with_capacity(changes.len());
        for change in changes {
            match &change {
                Change::Node(node) => {
                    let old = self.state.nodes.get(&node.name).cloned();
                    nodes_changed |= node_view(old.as_deref(), &self.config)
                        != node_view(Some(node), &self.config);
                    self.state.apply(&change);
                }
                Change::NodeDeleted(name) => {
                    nodes_changed |= self.state.nodes.contains_key(name);
                    self.state.apply(&change);
                }
                _ => others.push(change),
            }
        }
        if nodes_changed {
            // The full re-plan below plans every Service: the other changes only go into the state.
            for change in &others {
                self.record(change);
            }
            self.replan_all();
        } else {
            for change in others {
                self.apply(change);
            }
        }
        // Two versions of one plan: visits only what the batch changed.
        diff(&before, &self.plan)
    }

    /// Puts a Service or EndpointSlice change into the state and the slice index, planning nothing.
    fn record(&mut self, change: &Change) {
        match change {
            Change::EndpointSlice(slice) => {
                if let Some(previous) = self
                    .state
                    .endpoint_slices
                    .get(&slice.key)
                    .and_then(|s| s.service_key())
                {
                    if let Some(set) = self.slices_by_service.get_mut(&previous) {
                        set.remove(&slice.key);
                    }
                }
                if let Some(current) = slice.service_key() {
                    self.slices_by_service
                        .entry(current)
                        .or_default()
                        .insert(slice.key.clone());
                }
            }
            Change::EndpointSliceDeleted(key) => {
                if let Some(service) = self
                    .state
                    .endpoint_slices
                    .get(key)
                    .and_then(|s| s.service_key())
                {
                    if let Some(set) = self.slices_by_service.get_mut(&service) {
                        set.remove(key);
                    }
                }
            }
            Change::Service(_)
            | Change::ServiceDeleted(_)
            | Change::Node(_)
            | Change::NodeDeleted(_) => {}
        }
        self.state.apply(change);
    }

    fn replan_everything(&mut self) -> PlanDelta {
        let before = std::mem::take(&mut self.plan);
        self.replan_all();
        diff(&before, &self.plan)
    }
}

/// What the plan reads of a node (absent: `None`): whether the pool's nodeSelector picks it, why it
/// is not eligible, and its InternalIPs. Two versions of a node that agree on this give the same
/// plan: the rest of its labels, and whatever else of a Node changes, do not matter.
fn node_view<'a>(
    node: Option<&'a Node>,
    config: &Config,
) -> Option<(bool, Option<&'static str>, &'a [std::net::IpAddr])> {
    node.map(|node| {
        (
            config.node_selector.matches(&node.labels),
            super::ineligibility(node, config),
            node.internal_ips.as_slice(),
        )
    })
}

/// The delta between two plans.
pub fn diff(before: &Plan, after: &Plan) -> PlanDelta {
    let mut delta = PlanDelta::default();
    for (prefix, _, route) in before.route_changes(after) {
        match route {
            Some(route) => delta.upserted.push(route.clone()),
            None => delta.removed.push(prefix),
        }
    }
    delta
}
