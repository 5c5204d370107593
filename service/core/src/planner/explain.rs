//! A plan's explanations, made when asked: why each Service's IPs are announced as they are.
//!
//! A Service's explanation depends on what its routes depend on: the [`PlanContext`] (config and
//! nodes), the Service and its EndpointSlices. A plan keeps those (shared with the cluster state it
//! was made from, so they cost nothing) and explains a Service with [`plan_service`], the planner's
//! own function: the answer is the one an explanation made with the plan would have been. Making
//! all of them with every full plan cost it a quarter of its time, for answers rarely asked for
//! (`ExplainService`, one Service at a time).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use super::{PlanContext, plan_service};
use crate::cluster::{ClusterState, EndpointSlice, ObjectKey, Objects, Service};
use crate::plan::ServiceExplanation;

/// The explanations of a plan, by Service ([`crate::plan::Plan::services`]).
#[derive(Clone, Default)]
pub struct Explanations {
    /// None: a plan of no Services (a default plan, one made of routes alone).
    inputs: Option<Arc<Inputs>>,
}

/// What the plan was made of.
struct Inputs {
    context: Arc<PlanContext>,
    services: Objects<ObjectKey, Service>,
    endpoint_slices: Objects<ObjectKey, EndpointSlice>,
}

impl Inputs {
    /// The EndpointSlices of `service`, in key order (as the planner takes them): those of its
    /// namespace that name it.
    fn slices_of(&self, service: &ObjectKey) -> Vec<&EndpointSlice> {
        let from = ObjectKey::new(service.namespace.clone(), String::new());
        self.endpoint_slices
            .range(from..)
            .take_while(|(key, _)| key.namespace == service.namespace)
            .filter(|(_, slice)| slice.service_name.as_deref() == Some(service.name.as_str()))
            .map(|(_, slice)| &**slice)
            .collect()
    }

    fn explain(&self, key: &ObjectKey) -> Option<ServiceExplanation> {
        let service = self.services.get(key)?;
        Some(plan_service(&self.context, service, &self.slices_of(key)).explanation)
    }
}

impl Explanations {
    /// The explanations of the Services of `state`, planned in `context`.
    pub fn new(context: Arc<PlanContext>, state: &ClusterState) -> Explanations {
        Explanations {
            inputs: Some(Arc::new(Inputs {
                context,
                services: state.services.clone(),
                endpoint_slices: state.endpoint_slices.clone(),
            })),
        }
    }

    /// Whether both were made from the very same Services (no explanation is made): false means
    /// a Service may have changed.
    pub fn ptr_eq(&self, other: &Explanations) -> bool {
        match (&self.inputs, &other.inputs) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.services.ptr_eq(&b.services),
            _ => false,
        }
    }

    /// The number of Services explained.
    pub fn len(&self) -> usize {
        self.inputs.as_ref().map_or(0, |i| i.services.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains_key(&self, key: &ObjectKey) -> bool {
        self.inputs
            .as_ref()
            .is_some_and(|i| i.services.contains_key(key))
    }

    /// The Services explained, in key order.
    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.inputs.iter().flat_map(|i| i.services.keys())
    }

    /// The explanation of one Service, made now; None for a Service not in the plan.
    pub fn get(&self, key: &ObjectKey) -> Option<ServiceExplanation> {
        self.inputs.as_ref()?.explain(key)
    }

    /// Every explanation, in key order, each made as it is reached (tests and tools; a full plan's
    /// worth of work).
    pub fn iter(&self) -> impl Iterator<Item = (&ObjectKey, ServiceExplanation)> {
        self.inputs.iter().flat_map(|inputs| {
            // Slices by Service, once, rather than a scan of a namespace per Service.
            let mut slices: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::default();
            for slice in inputs.endpoint_slices.values() {
                if let Some(service) = slice.service_key() {
                    slices.entry(service).or_default().push(slice);
                }
            }
            inputs.services.iter().map(move |(key, service)| {
                let of = slices.get(key).map(Vec::as_slice).unwrap_or_default();
                (key, plan_service(&inputs.context, service, of).explanation)
            })
        })
    }

    /// Every explanation, in key order.
    pub fn values(&self) -> impl Iterator<Item = ServiceExplanation> + '_ {
        self.iter().map(|(_, e)| e)
    }
}

/// Two plans' explanations are equal when every Service's are. Made from contexts that plan alike,
/// only the Services that differ, or whose EndpointSlices do, can differ: those are explained and
/// compared (the maps share their structure, so finding them visits only what changed). From
/// contexts that do not plan alike (other nodes, other ranges: the plans' nodes or range routes
/// differ as well), the explanations are taken as different without making them.
impl PartialEq for Explanations {
    fn eq(&self, other: &Explanations) -> bool {
        let (a, b) = match (&self.inputs, &other.inputs) {
            (None, None) => return true,
            (Some(a), None) | (None, Some(a)) => return a.services.is_empty(),
            (Some(a), Some(b)) => (a, b),
        };
        if Arc::ptr_eq(a, b) {
            return true;
        }
        if a.services.len() != b.services.len() {
            return false;
        }
        if !Arc::ptr_eq(&a.context, &b.context) && !a.context.plans_alike(&b.context) {
            return false;
        }
        let mut changed: BTreeSet<ObjectKey> = BTreeSet::new();
        for item in a.services.diff(&b.services) {
            let key = match item {
                imbl::ordmap::DiffItem::Add(key, _) | imbl::ordmap::DiffItem::Remove(key, _) => key,
                imbl::ordmap::DiffItem::Update { old: (key, _), .. } => key,
            };
            changed.insert(key.clone());
        }
        for item in a.endpoint_slices.diff(&b.endpoint_slices) {
            let slices: [Option<&Arc<EndpointSlice>>; 2] = match item {
                imbl::ordmap::DiffItem::Add(_, slice)
                | imbl::ordmap::DiffItem::Remove(_, slice) => [Some(slice), None],
                imbl::ordmap::DiffItem::Update {
                    old: (_, old),
                    new: (_, new),
                } => [Some(old), Some(new)],
            };
            changed.extend(slices.into_iter().flatten().filter_map(|s| s.service_key()));
        }
        changed.iter().all(|key| a.explain(key) == b.explain(key))
    }
}

impl Eq for Explanations {}

impl fmt::Debug for Explanations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Explanations")
            .field("services", &self.len())
            .finish_non_exhaustive()
    }
}
