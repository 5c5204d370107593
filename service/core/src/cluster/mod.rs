//! The cluster model: the few facts about Nodes, Services and EndpointSlices that the planner needs,
//! independent of where they were read from (a file or the Kubernetes API).
//!
//! Values stay as the cluster wrote them (IPs as strings) so that the planner, not the reader, decides
//! what is malformed and reports it against the Service that carries it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// A namespaced object's identity, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Kubernetes Node as far as BGP announcements care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Condition `Ready` is `True`.
    pub ready: bool,
    /// `status.addresses` of type `InternalIP`, in the order the Node lists them. Unparseable ones
    /// are dropped: a node address is never taken from anything but a valid IP.
    pub internal_ips: Vec<IpAddr>,
}

/// `spec.externalTrafficPolicy` or `spec.internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

/// `spec.type` of a Service (ClusterIP when the Service leaves it out).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
    /// A type herald does not know, as the cluster wrote it (planned like ClusterIP: by its IPs).
    Other(String),
}

impl ServiceType {
    pub fn as_str(&self) -> &str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
            ServiceType::Other(other) => other,
        }
    }
}

impl From<&str> for ServiceType {
    fn from(text: &str) -> ServiceType {
        match text {
            "ClusterIP" => ServiceType::ClusterIP,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => ServiceType::ExternalName,
            other => ServiceType::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes Service as far as BGP announcements care.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub key: ObjectKey,
    /// `spec.type`.
    pub type_: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP` when the list is absent); `None` marks headless.
    pub cluster_ips: Vec<String>,
    pub external_ips: Vec<String>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<String>,
    pub external_traffic_policy: TrafficPolicy,
    /// Local: kube-proxy sends traffic for the cluster IPs only to endpoints on the node it
    /// arrives at, and drops it on nodes without one.
    pub internal_traffic_policy: TrafficPolicy,
    pub annotations: BTreeMap<String, String>,
}

impl Service {
    /// Headless (`clusterIP: None`) and ExternalName Services have no IP of their own to route.
    pub fn has_no_ips(&self) -> bool {
        self.type_ == ServiceType::ExternalName || self.cluster_ips.iter().any(|ip| ip == "None")
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    pub node_name: Option<String>,
    /// `conditions.ready`; unset means ready (the API's own convention).
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

impl Endpoint {
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    /// Serving while terminating: the Pod is draining and still takes traffic.
    pub fn is_draining(&self) -> bool {
        self.serving.unwrap_or(false) && self.terminating.unwrap_or(false)
    }
}

/// `addressType` of an EndpointSlice: the family of all its endpoints' addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum AddressType {
    /// The API requires the field; the default serves models built by hand (tests).
    #[default]
    Ipv4,
    Ipv6,
    /// Endpoints named by DNS: kube-proxy does not route to them.
    Fqdn,
    /// A value the API does not define, kept to be named in explanations.
    Other(String),
}

impl AddressType {
    pub fn parse(value: &str) -> AddressType {
        match value {
            "IPv4" => AddressType::Ipv4,
            "IPv6" => AddressType::Ipv6,
            "FQDN" => AddressType::Fqdn,
            other => AddressType::Other(other.to_string()),
        }
    }

    /// Whether these endpoints serve an IP of `ip`'s family.
    pub fn serves(&self, ip: &IpAddr) -> bool {
        match self {
            AddressType::Ipv4 => ip.is_ipv4(),
            AddressType::Ipv6 => ip.is_ipv6(),
            AddressType::Fqdn | AddressType::Other(_) => false,
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AddressType::Ipv4 => "IPv4",
            AddressType::Ipv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
            AddressType::Other(other) => other,
        }
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointSlice {
    pub key: ObjectKey,
    /// Label `kubernetes.io/service-name`; slices without it belong to no Service.
    pub service_name: Option<String>,
    pub address_type: AddressType,
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    pub fn service_key(&self) -> Option<ObjectKey> {
        self.service_name
            .as_ref()
            .map(|name| ObjectKey::new(self.key.namespace.clone(), name.clone()))
    }
}

/// Objects of one kind by key, shared: see [`ClusterState`].
pub type Objects<K, V> = imbl::OrdMap<K, Arc<V>>;

/// Everything the planner reads about the cluster.
///
/// Persistent maps of shared objects, as [`crate::plan::Plan`]: a source publishes a copy after
/// each change for nothing, and the planner finds what changed between two versions
/// ([`ClusterState::changes_to`]) in time proportional to the change, not to the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterState {
    pub nodes: Objects<String, Node>,
    pub services: Objects<ObjectKey, Service>,
    pub endpoint_slices: Objects<ObjectKey, EndpointSlice>,
}

/// One object change, as a watch of the Kubernetes API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Service(Arc<Service>),
    ServiceDeleted(ObjectKey),
    EndpointSlice(Arc<EndpointSlice>),
    EndpointSliceDeleted(ObjectKey),
    Node(Arc<Node>),
    NodeDeleted(String),
}

impl ClusterState {
    pub fn insert_node(&mut self, node: Node) {
        self.nodes.insert(node.name.clone(), Arc::new(node));
    }
    pub fn insert_service(&mut self, service: Service) {
        self.services.insert(service.key.clone(), Arc::new(service));
    }
    pub fn insert_endpoint_slice(&mut self, slice: EndpointSlice) {
        self.endpoint_slices
            .insert(slice.key.clone(), Arc::new(slice));
    }

    /// The object changes that turn `self` into `new`: Nodes first, then Services, then
    /// EndpointSlices, each in key order. Visits only what the two states do not share.
    pub fn changes_to(&self, new: &ClusterState) -> Vec<Change> {
        use imbl::ordmap::DiffItem;
        let mut changes = Vec::new();
        for item in self.nodes.diff(&new.nodes) {
            changes.push(match item {
                DiffItem::Add(_, node) | DiffItem::Update { new: (_, node), .. } => {
                    Change::Node(node.clone())
                }
                DiffItem::Remove(name, _) => Change::NodeDeleted(name.clone()),
            });
        }
        for item in self.services.diff(&new.services) {
            changes.push(match item {
                DiffItem::Add(_, service)
                | DiffItem::Update {
                    new: (_, service), ..
                } => Change::Service(service.clone()),
                DiffItem::Remove(key, _) => Change::ServiceDeleted(key.clone()),
            });
        }
        for item in self.endpoint_slices.diff(&new.endpoint_slices) {
            changes.push(match item {
                DiffItem::Add(_, slice)
                | DiffItem::Update {
                    new: (_, slice), ..
                } => Change::EndpointSlice(slice.clone()),
                DiffItem::Remove(key, _) => Change::EndpointSliceDeleted(key.clone()),
            });
        }
        changes
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Service(service) => {
                self.services.insert(service.key.clone(), service.clone());
            }
            Change::ServiceDeleted(key) => {
                self.services.remove(key);
            }
            Change::EndpointSlice(slice) => {
                self.endpoint_slices
                    .insert(slice.key.clone(), slice.clone());
            }
            Change::EndpointSliceDeleted(key) => {
                self.endpoint_slices.remove(key);
            }
            Change::Node(node) => {
                self.nodes.insert(node.name.clone(), node.clone());
            }
            Change::NodeDeleted(name) => {
                self.nodes.remove(name);
            }
        }
    }
}
