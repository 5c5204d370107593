//! The one conversion from Kubernetes API objects (k8s-openapi types) into the cluster model, shared by
//! the file source and the Kubernetes source so that the same objects always give the same plan.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use crate::cluster::{
    AddressType, Endpoint, EndpointSlice, Node, ObjectKey, Service, ServiceType, TrafficPolicy,
};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        meta.name.clone().unwrap_or_default(),
    )
}

pub fn from_node(node: &core::Node) -> Node {
    let status = node.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let internal_ips = status
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    Node {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        ready,
        internal_ips,
    }
}

pub fn from_service(service: &core::Service) -> Service {
    let spec = service.spec.clone().unwrap_or_default();
    let cluster_ips = match (spec.cluster_ips, spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips,
        (_, Some(ip)) if !ip.is_empty() => vec![ip],
        _ => Vec::new(),
    };
    let load_balancer_ips = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ingress| ingress.ip.clone())
        .collect();
    Service {
        key: key(&service.metadata),
        type_: spec
            .type_
            .as_deref()
            .map(ServiceType::from)
            .unwrap_or_default(),
        cluster_ips,
        external_ips: spec.external_ips.unwrap_or_default(),
        load_balancer_ips,
        external_traffic_policy: traffic_policy(spec.external_traffic_policy.as_deref()),
        internal_traffic_policy: traffic_policy(spec.internal_traffic_policy.as_deref()),
        annotations: service.metadata.annotations.clone().unwrap_or_default(),
    }
}

/// Anything but `Local` is the API's default, `Cluster`.
fn traffic_policy(value: Option<&str>) -> TrafficPolicy {
    match value {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

pub fn from_endpoint_slice(slice: &discovery::EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        key: key(&slice.metadata),
        service_name: slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned(),
        address_type: AddressType::parse(&slice.address_type),
        endpoints: slice
            .endpoints
            .iter()
            .map(|e| {
                let conditions = e.conditions.clone().unwrap_or_default();
                Endpoint {
                    node_name: e.node_name.clone(),
                    ready: conditions.ready,
                    serving: conditions.serving,
                    terminating: conditions.terminating,
                }
            })
            .collect(),
    }
}
