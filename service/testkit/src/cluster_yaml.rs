//! The cluster as `kubectl get services,endpointslices,nodes -A -o yaml` prints it (a `List`, keys
//! sorted, the usual metadata and status fields): the file source's input at scale, for the
//! benchmarks that run `herald run`.

use std::fmt::Write as _;

use herald_core::cluster::{AddressType, ClusterState, TrafficPolicy};

fn uid(kind: u32, i: u32) -> String {
    format!(
        "{kind:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        i >> 16,
        i & 0xfff,
        (i >> 12) & 0xfff,
        u64::from(i) * 2654435761
    )
}

const CREATED: &str = "\"2025-03-14T09:26:53Z\"";

fn node_yaml(out: &mut String, i: u32, node: &herald_core::cluster::Node) {
    let name = &node.name;
    let _ = write!(
        out,
        "- apiVersion: v1\n  kind: Node\n  metadata:\n    annotations:\n      node.alpha.kubernetes.io/ttl: \"0\"\n      volumes.kubernetes.io/controller-managed-attach-detach: \"true\"\n    creationTimestamp: {CREATED}\n    labels:\n"
    );
    let mut labels = node.labels.clone();
    for (k, v) in [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/os", "linux"),
        (
            "topology.kubernetes.io/zone",
            ["zone-0", "zone-1", "zone-2"][i as usize % 3],
        ),
    ] {
        labels.entry(k.to_string()).or_insert_with(|| v.to_string());
    }
    for (k, v) in &labels {
        let _ = writeln!(out, "      {k}: {v}");
    }
    let _ = write!(
        out,
        "    name: {name}\n    resourceVersion: \"{}\"\n    uid: {}\n  spec:\n    podCIDR: 10.{}.{}.0/24\n    podCIDRs:\n    - 10.{}.{}.0/24\n  status:\n    addresses:\n",
        3_000_000 + i,
        uid(1, i),
        200 + i / 256,
        i % 256,
        200 + i / 256,
        i % 256
    );
    for ip in &node.internal_ips {
        let _ = write!(out, "    - address: {ip}\n      type: InternalIP\n");
    }
    let _ = write!(out, "    - address: {name}\n      type: Hostname\n");
    out.push_str(
        "    allocatable:\n      cpu: 31800m\n      ephemeral-storage: \"452107140114\"\n      hugepages-1Gi: \"0\"\n      hugepages-2Mi: \"0\"\n      memory: 129653368Ki\n      pods: \"110\"\n    capacity:\n      cpu: \"32\"\n      ephemeral-storage: 490563520Ki\n      hugepages-1Gi: \"0\"\n      hugepages-2Mi: \"0\"\n      memory: 131853432Ki\n      pods: \"110\"\n    conditions:\n",
    );
    for (type_, status, reason, message) in [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (
            "Ready",
            if node.ready { "\"True\"" } else { "\"False\"" },
            if node.ready {
                "KubeletReady"
            } else {
                "KubeletNotReady"
            },
            if node.ready {
                "kubelet is posting ready status"
            } else {
                "container runtime network not ready"
            },
        ),
    ] {
        let status = if status.starts_with('"') {
            status.to_string()
        } else {
            format!("\"{status}\"")
        };
        let _ = write!(
            out,
            "    - lastHeartbeatTime: \"2025-03-20T11:02:17Z\"\n      lastTransitionTime: {CREATED}\n      message: {message}\n      reason: {reason}\n      status: {status}\n      type: {type_}\n"
        );
    }
    let _ = write!(
        out,
        "    daemonEndpoints:\n      kubeletEndpoint:\n        Port: 10250\n    nodeInfo:\n      architecture: amd64\n      bootID: {}\n      containerRuntimeVersion: containerd://1.7.24\n      kernelVersion: 6.1.0-31-amd64\n      kubeProxyVersion: v1.31.4\n      kubeletVersion: v1.31.4\n      machineID: \"{:032x}\"\n      operatingSystem: linux\n      osImage: Debian GNU/Linux 12 (bookworm)\n      systemUUID: {}\n",
        uid(2, i),
        u128::from(i) * 0x9E37_79B9_7F4A_7C15,
        uid(3, i)
    );
}

fn service_yaml(out: &mut String, i: u32, s: &herald_core::cluster::Service) {
    let (ns, name) = (&s.key.namespace, &s.key.name);
    let _ = write!(
        out,
        "- apiVersion: v1\n  kind: Service\n  metadata:\n    creationTimestamp: {CREATED}\n    labels:\n      app: {name}\n    name: {name}\n    namespace: {ns}\n    resourceVersion: \"{}\"\n    uid: {}\n  spec:\n    clusterIP: {}\n    clusterIPs:\n",
        1_000_000 + i,
        uid(4, i),
        s.cluster_ips[0]
    );
    for ip in &s.cluster_ips {
        let _ = writeln!(out, "    - {ip}");
    }
    if !s.external_ips.is_empty() {
        out.push_str("    externalIPs:\n");
        for ip in &s.external_ips {
            let _ = writeln!(out, "    - {ip}");
        }
    }
    match (s.external_traffic_policy, s.type_.as_str()) {
        (TrafficPolicy::Local, _) => out.push_str("    externalTrafficPolicy: Local\n"),
        (TrafficPolicy::Cluster, "LoadBalancer") => {
            out.push_str("    externalTrafficPolicy: Cluster\n")
        }
        _ => {}
    }
    let _ = write!(
        out,
        "    internalTrafficPolicy: {}\n    ipFamilies:\n",
        s.internal_traffic_policy.as_str()
    );
    for ip in &s.cluster_ips {
        out.push_str(if ip.contains(':') {
            "    - IPv6\n"
        } else {
            "    - IPv4\n"
        });
    }
    let _ = write!(
        out,
        "    ipFamilyPolicy: {}\n    ports:\n    - name: http\n      port: 80\n      protocol: TCP\n      targetPort: 8080\n    selector:\n      app: {name}\n    sessionAffinity: None\n    type: {}\n  status:\n",
        if s.cluster_ips.len() > 1 {
            "PreferDualStack"
        } else {
            "SingleStack"
        },
        s.type_
    );
    if s.load_balancer_ips.is_empty() {
        out.push_str("    loadBalancer: {}\n");
    } else {
        out.push_str("    loadBalancer:\n      ingress:\n");
        for ip in &s.load_balancer_ips {
            let _ = write!(out, "      - ip: {ip}\n        ipMode: VIP\n");
        }
    }
}

fn slice_yaml(out: &mut String, i: u32, slice: &herald_core::cluster::EndpointSlice) {
    let (ns, name) = (&slice.key.namespace, &slice.key.name);
    let service = slice.service_name.as_deref().unwrap_or_default();
    let v6 = slice.address_type == AddressType::Ipv6;
    let _ = write!(
        out,
        "- addressType: {}\n  apiVersion: discovery.k8s.io/v1\n  endpoints:\n",
        slice.address_type.as_str()
    );
    for (e, endpoint) in slice.endpoints.iter().enumerate() {
        let pod = (i * 16 + e as u32) as u64;
        let address = if v6 {
            format!("fd00:10:{:x}::{:x}", 64 + (pod >> 16) % 64, pod & 0xffff)
        } else {
            format!(
                "10.{}.{}.{}",
                64 + (pod >> 16) % 64,
                (pod >> 8) & 255,
                pod & 255
            )
        };
        let _ = write!(
            out,
            "  - addresses:\n    - {address}\n    conditions:\n      ready: {}\n      serving: {}\n      terminating: {}\n",
            endpoint.ready.unwrap_or(true),
            endpoint.serving.unwrap_or(true),
            endpoint.terminating.unwrap_or(false)
        );
        if let Some(node) = &endpoint.node_name {
            let _ = writeln!(out, "    nodeName: {node}");
        }
        let _ = write!(
            out,
            "    targetRef:\n      kind: Pod\n      name: {service}-7c9f8d6b5-{pod:05x}\n      namespace: {ns}\n      uid: {}\n    zone: zone-{}\n",
            uid(5, pod as u32),
            pod % 3
        );
    }
    let _ = write!(
        out,
        "  kind: EndpointSlice\n  metadata:\n    annotations:\n      endpoints.kubernetes.io/last-change-trigger-time: \"2025-03-20T10:41:07Z\"\n    creationTimestamp: {CREATED}\n    generateName: {service}-\n    generation: 7\n    labels:\n      endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n      kubernetes.io/service-name: {service}\n    name: {name}\n    namespace: {ns}\n    ownerReferences:\n    - apiVersion: v1\n      blockOwnerDeletion: true\n      controller: true\n      kind: Service\n      name: {service}\n      uid: {}\n    resourceVersion: \"{}\"\n    uid: {}\n  ports:\n  - name: http\n    port: 8080\n    protocol: TCP\n",
        uid(4, i),
        2_000_000 + i,
        uid(6, i)
    );
}

/// The cluster as one `List`, keys in kubectl's (sorted) order: `items` before `kind`.
pub fn cluster_yaml(state: &ClusterState) -> String {
    let mut out = String::with_capacity(128 << 20);
    out.push_str("apiVersion: v1\nitems:\n");
    for (i, s) in state.services.values().enumerate() {
        service_yaml(&mut out, i as u32, s);
    }
    for (i, s) in state.endpoint_slices.values().enumerate() {
        slice_yaml(&mut out, i as u32, s);
    }
    for (i, n) in state.nodes.values().enumerate() {
        node_yaml(&mut out, i as u32, n);
    }
    out.push_str("kind: List\nmetadata:\n  resourceVersion: \"\"\n");
    out
}
