#!/usr/bin/env bash
# herald's BGP lab by hand: the "Advertising Services" lab in two network namespaces.
#
#   herald-pool:  gobgpd (AS 64512, API 127.0.0.1:50051), herald if built, and the node addresses
#                 control 198.19.0.1, node1 198.19.0.2, node2 198.19.0.3 (fd00:198:19::1-3)
#   herald-host1: BIRD 2 (AS 64513), the external router: 198.19.15.254/20, fd00:198:19::fe/64
#
# Usage (as root):
#   scripts/lab.sh up       create the lab; start herald too if target/{release,debug}/herald exists
#                           (the newer of the two)
#   scripts/lab.sh routes   host1's kernel routes (what the lab's `ip route` shows)
#   scripts/lab.sh down     stop everything and delete the namespaces
#
# The same lab as integration/src/lab.rs (with fixed names), using the same daemon configs
# (integration/lab/). State, logs and generated configs are in /run/herald-lab.
set -Eeuo pipefail

readonly POOL=herald-pool
readonly HOST1=herald-host1
readonly STATE=/run/herald-lab
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
readonly IFACE=eth0

die() {
    echo "lab.sh: $*" >&2
    exit 1
}

# Is the process in pidfile $1 alive and running program $2? (Guards against a reused pid.)
pidfile_alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -r /proc/$pid/comm && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]]
}

# Stops the process of pidfile $1 (program $2): SIGTERM, then SIGKILL after 5 s.
stop_pidfile() {
    local pid i
    pidfile_alive "$1" "$2" || return 0
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        pidfile_alive "$1" "$2" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

session_established() {
    birdc -s "$STATE/bird.ctl" show protocols pool 2>/dev/null | grep -q Established
}

# Starts program $1 (arguments follow) in namespace $POOL/$HOST1 in the background, appending its
# output to $STATE/<name>.log and its pid to $STATE/<name>.pid. `ip netns exec` execs the program,
# so $! is the daemon's own pid; nohup keeps it alive when the user's terminal goes away.
start_in() {
    local ns=$1 name=$2
    shift 2
    nohup ip netns exec "$ns" "$@" </dev/null >>"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

log_tail() {
    echo "--- $STATE/$1 ---" >&2
    tail -n 20 "$STATE/$1" >&2 || true
}

up() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
    for command in ip gobgpd gobgp bird birdc; do
        command -v "$command" >/dev/null || die "$command not found; run scripts/install-deps.sh"
    done
    if [[ -e /run/netns/$POOL || -e /run/netns/$HOST1 ]]; then
        die "the lab is already up (scripts/lab.sh down first)"
    fi
    # Leave nothing half-built behind.
    trap 'echo "lab.sh: up failed; removing the lab" >&2; down' ERR

    mkdir -p "$STATE"
    ip netns add "$POOL"
    ip netns add "$HOST1"
    # Each veth end is created directly in its namespace: no lab interface ever exists in the
    # root namespace, and both can be called eth0 like in the lab.
    ip link add "$IFACE" netns "$POOL" type veth peer name "$IFACE" netns "$HOST1"
    ip -n "$POOL" addr add 198.19.0.10/20 dev "$IFACE"
    ip -n "$POOL" addr add fd00:198:19::10/64 dev "$IFACE" nodad
    for n in 1 2 3; do
        ip -n "$POOL" addr add "198.19.0.$n/20" dev "$IFACE"
        ip -n "$POOL" addr add "fd00:198:19::$n/64" dev "$IFACE" nodad
    done
    ip -n "$HOST1" addr add 198.19.15.254/20 dev "$IFACE"
    ip -n "$HOST1" addr add fd00:198:19::fe/64 dev "$IFACE" nodad
    for ns in "$POOL" "$HOST1"; do
        ip -n "$ns" link set lo up
        ip -n "$ns" link set "$IFACE" up
    done

    # Foreground BIRD (-f) logs to stderr, i.e. to bird.log, like gobgpd.
    start_in "$HOST1" bird bird -f -s "$STATE/bird.ctl" -c "$REPO/integration/lab/bird.conf"
    start_in "$POOL" gobgpd gobgpd -f "$REPO/integration/lab/gobgpd.toml" \
        --api-hosts 127.0.0.1:50051 --log-plain --log-level info --pprof-disable

    local i
    for ((i = 0; i < 200; i++)); do # 10 s, or until a daemon dies
        session_established && break
        pidfile_alive "$STATE/gobgpd.pid" gobgpd && pidfile_alive "$STATE/bird.pid" bird || break
        sleep 0.05
    done
    if ! session_established; then
        log_tail gobgpd.log
        log_tail bird.log
        false # the ERR trap removes the lab
    fi
    echo "lab up: gobgpd in $POOL and BIRD in $HOST1 established their BGP session"
    trap - ERR

    start_herald
    cat <<EOF

Add a path the way herald does, e.g. the cluster IP range from the three nodes:
  for n in 1 2 3; do ip netns exec $POOL gobgp global rib add 198.19.32.0/20 nexthop 198.19.0.\$n identifier \$n -a ipv4; done
See host1's routes:  scripts/lab.sh routes
Logs:                $STATE/*.log
Remove the lab:      scripts/lab.sh down
EOF
}

# Runs herald in the pool namespace if it has been built. A herald that fails to start leaves the
# lab up (gobgp CLI paths still work) and says why.
start_herald() {
    # The most recently built of the release and debug binaries.
    local herald="" candidate
    for candidate in "$REPO/target/release/herald" "$REPO/target/debug/herald"; do
        if [[ -x $candidate && ( -z $herald || $candidate -nt $herald ) ]]; then
            herald=$candidate
        fi
    done
    if [[ -z $herald ]]; then
        echo "herald not started: build it first (cargo build -p herald), then down and up again"
        return 0
    fi
    cat >"$STATE/herald.yaml" <<EOF
# Generated by scripts/lab.sh: Calico's BGPConfiguration of the lab, and the yaobank cluster.
serviceClusterIPs: [{cidr: 198.19.32.0/20}]
serviceExternalIPs: [{cidr: 198.19.48.0/20}]
source: {file: $REPO/examples/yaobank/cluster-state.yaml}
gobgp: {address: "127.0.0.1:50051"}
api: {listen: "127.0.0.1:50151"}
EOF
    # NO_COLOR: plain text in herald.log rather than terminal colour codes.
    NO_COLOR=1 start_in "$POOL" herald "$herald" run --config "$STATE/herald.yaml"
    sleep 1 # long enough for a bad config or a failed gobgpd connection to end it
    if pidfile_alive "$STATE/herald.pid" herald; then
        echo "herald running in $POOL: $herald run --config $STATE/herald.yaml (API 127.0.0.1:50151)"
    else
        echo "lab.sh: herald exited at once; the lab stays up without it" >&2
        log_tail herald.log
    fi
}

routes() {
    [[ -e /run/netns/$HOST1 ]] || die "the lab is not up (scripts/lab.sh up)"
    ip -n "$HOST1" route
    ip -n "$HOST1" -6 route
}

# Idempotent: removes whatever part of the lab exists.
down() {
    stop_pidfile "$STATE/herald.pid" herald
    stop_pidfile "$STATE/gobgpd.pid" gobgpd
    stop_pidfile "$STATE/bird.pid" bird
    for ns in "$POOL" "$HOST1"; do
        [[ -e /run/netns/$ns ]] || continue
        # Anything still inside (e.g. a process a user started there) would keep the namespace alive.
        local pids
        pids=$(ip netns pids "$ns")
        [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
        ip netns del "$ns"
    done
    rm -rf "$STATE"
}

case ${1:-} in
    up) up ;;
    routes) routes ;;
    down) down ;;
    *)
        echo "usage: $0 up|routes|down" >&2
        exit 2
        ;;
esac
