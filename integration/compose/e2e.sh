#!/usr/bin/env bash
# End-to-end test of the compose lab (deploy/compose/docker-compose.yaml): the Advertising
# Services lab, checked on host1's kernel routing table.
#
#   integration/compose/e2e.sh                 # full: network half, then herald
#   integration/compose/e2e.sh --network-only  # gobgpd + BIRD only (paths added with the gobgp CLI)
#   options: --no-cargo  use the existing target/release binaries instead of `cargo build`
#            --keep      leave the project running at the end (for debugging; prints how to remove it)
#
# Phase 1, network (always): gobgpd and host1 up; paths added with `gobgp global rib add` inside the
#   gobgpd container must appear in host1's `ip route` exactly as in the lab (ECMP over the nodes
#   198.19.0.1-3 for 198.19.32.0/20 and 198.19.48.0/20; 198.19.38.11 and 198.19.48.10 via
#   198.19.0.2); withdrawing one path must remove exactly that next hop; withdrawing all, all.
# Phase 2, herald: herald starts and the state file (a copy under /tmp, mounted as
#   /var/lib/herald) walks the lab's stages with examples/yaobank/: stage1-cluster-range.yaml
#   (both ranges, ECMP), stage2-local-policy.yaml (+ 198.19.38.11 via node1 198.19.0.2),
#   cluster-state.yaml (+ 198.19.48.10 via node1: the lab's final table); host1 must follow
#   exactly each time. herald's API is queried from the host with heraldctl (target/*/heraldctl)
#   when it exists. Then back to stage 1 (the /32s are withdrawn) and to stage 3 again, written in
#   place this time instead of renamed over.
# Phase 3, crashes: gobgpd's processes SIGKILLed (as the kernel's OOM killer would: Docker's restart
#   policy brings the container back), then herald's; then `docker kill gobgpd` (which Docker counts
#   as a stop by hand: no restart) and `docker start gobgpd`. Each time host1 is polled for 30 s and
#   no poll may miss a route of the lab's table (graceful restart, and the pod container keeping the
#   namespace), the container must be back in the pod, herald's API must answer from the host with
#   gobgpd in sync, and a restarted gobgpd must have run with -r and sent its End-of-RIB.
# Phase 4, monitoring: the lab's Prometheus (started with herald in phase 2) scrapes herald with
#   herald's alerting rules (deploy/prometheus/herald-alerts.yaml). Asked through its HTTP API:
#   herald's series are there (every one the rules and the Grafana dashboard read), every rule is
#   loaded and evaluates, every dashboard query runs and returns data, and no herald alert is firing;
#   then host1's BGP session is disabled (birdc disable pool) and HeraldBgpPeerNotEstablished must
#   go pending for peer 198.19.15.254 (its `for:` is 2m: pending is the state to see within seconds).
#
# The project is named herald-e2e-$$ and always torn down (trap), then checked to be gone. Runs are
# serialised with a lock: the lab's addresses (198.19.0.0/20) are fixed, so two cannot coexist;
# under the lock, leftovers of earlier runs (killed with SIGKILL, or kept with --keep) are removed.
# Images are built first (deploy/docker/build-images.sh, which builds debian:bookworm-slim with
# debootstrap when it is missing) and kept afterwards as a cache.
# Exit status: 0 pass, 1 test failure (with logs), 2 usage.
set -euo pipefail
export LC_ALL=C   # byte-order sorting of route lists

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
COMPOSE_FILE=$REPO/deploy/compose/docker-compose.yaml
WAIT=${E2E_WAIT_SECONDS:-60}   # bound of every wait
GOBGP_API=unix:///run/gobgp/api.sock   # gobgpd's API: a unix socket, no TCP port

NETWORK_ONLY=0 CARGO=1 KEEP=0
for arg; do
  case $arg in
    --network-only) NETWORK_ONLY=1 ;;
    --no-cargo) CARGO=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--network-only] [--no-cargo] [--keep]" >&2; exit 2 ;;
  esac
done

T0=$SECONDS
log() { printf '[e2e %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null; then COMPOSE_CMD=(docker-compose)
else fail "neither 'docker compose' nor 'docker-compose' is installed"; fi

# --- one run at a time ---------------------------------------------------------------------------
exec 8>/var/tmp/herald-compose-e2e.lock
if ! flock -w "${E2E_LOCK_WAIT_SECONDS:-900}" 8; then fail "another e2e run holds /var/tmp/herald-compose-e2e.lock"; fi

# Holding the lock, any other herald-e2e-* project is stale (a run killed with SIGKILL, or left by
# --keep): remove it, or its network would hold the lab's subnet.
stale=$( { docker ps -a --format '{{.Label "com.docker.compose.project"}}'
           docker network ls --format '{{.Label "com.docker.compose.project"}}'; } 2>/dev/null |
         grep '^herald-e2e-[0-9]*$' | sort -u || true)
for p in $stale; do
  log "removing stale project $p"
  ids=$(docker ps -aq --filter "label=com.docker.compose.project=$p")
  [[ -n $ids ]] && docker rm -f -v $ids >/dev/null
  ids=$(docker network ls -q --filter "label=com.docker.compose.project=$p")
  [[ -n $ids ]] && docker network rm $ids >/dev/null
done
for d in /tmp/herald-e2e.??????; do [[ -d $d ]] && { log "removing stale $d"; rm -rf "$d"; }; done

# Full mode walks the lab's stages with the yaobank example states (examples/yaobank/).
EXAMPLES=${E2E_EXAMPLES:-$REPO/examples/yaobank}
STAGE1=$EXAMPLES/stage1-cluster-range.yaml    # customer externalTrafficPolicy: Cluster
STAGE2=$EXAMPLES/stage2-local-policy.yaml     # customer Local
STAGE3=$EXAMPLES/cluster-state.yaml           # customer Local + external IP 198.19.48.10
if [[ $NETWORK_ONLY -eq 0 ]]; then
  for f in "$STAGE1" "$STAGE2" "$STAGE3"; do
    [[ -r $f ]] || fail "missing $f (the yaobank example states); use --network-only to test without herald"
  done
fi

# --- build ---------------------------------------------------------------------------------------
build_args=()
[[ $NETWORK_ONLY -eq 1 ]] && build_args+=(--no-herald)
[[ $NETWORK_ONLY -eq 0 && $CARGO -eq 1 ]] && build_args+=(--cargo)
tb=$SECONDS
"$REPO/deploy/docker/build-images.sh" "${build_args[@]}" || fail "building the images failed"
BUILD_SECONDS=$((SECONDS - tb))

# --- project -------------------------------------------------------------------------------------
PROJECT=herald-e2e-$$
WORK=$(mktemp -d /tmp/herald-e2e.XXXXXX)
chmod 0755 "$WORK"
mkdir -m 0755 "$WORK/state"
STATE=$WORK/state/cluster-state.yaml
if [[ $NETWORK_ONLY -eq 0 ]]; then cp "$STAGE1" "$STATE"; else cp "$REPO/deploy/compose/state/cluster-state.yaml" "$STATE"; fi
chmod 0644 "$STATE"
export HERALD_STATE_DIR=$WORK/state
export HERALD_API_PORT=        # empty: an ephemeral host port, looked up below
export HERALD_PROMETHEUS_PORT= # likewise
export HERALD_LOG=${HERALD_LOG:-info}
compose() { "${COMPOSE_CMD[@]}" -f "$COMPOSE_FILE" -p "$PROJECT" "$@"; }

leftovers() {
  local f="label=com.docker.compose.project=$PROJECT"
  { docker ps -aq --filter "$f"; docker network ls -q --filter "$f"; docker volume ls -q --filter "$f"; } 2>/dev/null
}

FAILED=1 STARTED=0 WATCHER=
cleanup() {
  local status=$? left
  trap - EXIT INT TERM
  # A watch of host1 still running (phase 3 failed midway): stop it before the project goes.
  if [[ -n ${WATCHER:-} ]]; then kill "$WATCHER" 2>/dev/null || true; wait "$WATCHER" 2>/dev/null || true; fi
  if [[ $FAILED -ne 0 || $status -ne 0 ]]; then
    status=$(( status == 0 ? 1 : status ))
  fi
  if [[ $status -ne 0 && $STARTED -eq 1 ]]; then
    log "---- diagnostics for project $PROJECT ----"
    compose ps >&2 || true
    if [[ -n ${H1:-} ]]; then
      log "host1 ip route:"; docker exec "$H1" ip route >&2 || true
      log "host1 birdc show protocols all pool:"; docker exec "$H1" birdc -s /run/bird/bird.ctl show protocols all pool >&2 || true
    fi
    if [[ -n ${GB:-} ]]; then
      log "gobgp neighbor / global rib:"; docker exec "$GB" gobgp --target "$GOBGP_API" neighbor >&2 || true
      docker exec "$GB" gobgp --target "$GOBGP_API" global rib -a ipv4 >&2 || true
    fi
    log "docker-compose logs:"; compose logs --no-color --tail=200 >&2 || true
  fi
  if [[ $KEEP -eq 1 ]]; then
    log "--keep: project left running; remove with:"
    log "  HERALD_STATE_DIR=$WORK/state ${COMPOSE_CMD[*]} -f $COMPOSE_FILE -p $PROJECT down -v && rm -rf $WORK"
    exit "$status"
  fi
  compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || compose down -v --remove-orphans --timeout 5 >&2 || true
  rm -rf "$WORK"
  left=$(leftovers)
  if [[ -n $left ]]; then
    log "FAIL: teardown left resources of $PROJECT behind: $(echo $left)"
    status=1
  elif [[ -e $WORK ]]; then
    log "FAIL: $WORK not removed"; status=1
  else
    log "teardown: no container, network or volume of $PROJECT left, $WORK removed"
  fi
  if [[ $status -eq 0 ]]; then log "PASS (build ${BUILD_SECONDS}s, total $((SECONDS - T0))s)"
  else log "FAILED (exit $status)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; STARTED=0; exit 130' INT
trap 'log "terminated"; STARTED=0; exit 143' TERM

# The lab's subnet must be free (a running `-p herald` lab, or a crashed run's leftovers, hold it).
while read -r net; do
  [[ -z $net ]] && continue
  if docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$net" 2>/dev/null | grep -qw '198.19.0.0/20'; then
    fail "docker network $(docker network inspect -f '{{.Name}}' "$net") already uses 198.19.0.0/20: stop that lab first (e.g. ${COMPOSE_CMD[*]} -f $COMPOSE_FILE -p herald down)"
  fi
done < <(docker network ls -q)

# --- helpers -------------------------------------------------------------------------------------
# host1's BIRD routes, one line each, next hops sorted: "PREFIX via NH@DEV[,NH@DEV...]"
bird_routes() {
  local raw
  raw=$(docker exec "$H1" ip -4 route show proto bird) || return 1
  # One "PREFIX NH@DEV" line per next hop (POSIX awk: mawk has no asort), sorted, then joined.
  awk '
    /^[0-9]/ { p = $1; for (i = 2; i < NF; i++) if ($i == "via") print p, $(i+1) "@" $(i+3); next }
    /nexthop/ { for (i = 1; i < NF; i++) if ($i == "via") print p, $(i+1) "@" $(i+3) }
  ' <<<"$raw" | sort -t' ' -k1,1 -k2,2 |
    awk '$1 != p { if (p != "") print p " via " nh; p = $1; nh = $2; next } { nh = nh "," $2 }
         END { if (p != "") print p " via " nh }'
}
ECMP="198.19.0.1@eth0,198.19.0.2@eth0,198.19.0.3@eth0"
RANGE_ROUTES="198.19.32.0/20 via $ECMP
198.19.48.0/20 via $ECMP"                                                  # lab: after serviceClusterIPs/ExternalIPs
STAGE2_ROUTES=$(printf '%s\n%s\n' "$RANGE_ROUTES" "198.19.38.11 via 198.19.0.2@eth0" | sort)   # + customer Local
LAB_ROUTES=$(printf '%s\n%s\n' "$STAGE2_ROUTES" "198.19.48.10 via 198.19.0.2@eth0" | sort)     # + external IP

# wait_routes WHAT EXPECTED: poll host1 until its BIRD routes are exactly EXPECTED.
wait_routes() {
  local what=$1 want=$2 got="" deadline=$((SECONDS + WAIT))
  while :; do
    got=$(bird_routes 2>/dev/null || true)
    [[ $got == "$want" ]] && { log "ok: $what"; return 0; }
    if (( SECONDS >= deadline )); then
      log "host1 routes after ${WAIT}s (want | got):"
      diff <(printf '%s\n' "$want") <(printf '%s\n' "$got") >&2 || true
      fail "$what: host1's routes are not as expected"
    fi
    sleep 0.5
  done
}
wait_for() {  # wait_for WHAT COMMAND...
  local what=$1 deadline=$((SECONDS + WAIT)); shift
  until "$@" >/dev/null 2>&1; do
    (( SECONDS >= deadline )) && fail "$what: not reached in ${WAIT}s"
    sleep 0.5
  done
  log "ok: $what"
}
gobgp() { docker exec "$GB" gobgp --target "$GOBGP_API" "$@"; }
rib() {  # rib add|del PREFIX NEXTHOP ID
  gobgp global rib "$1" "$2" nexthop "$3" identifier "$4" -a ipv4 || fail "gobgp global rib $*"
}

# --- phase 1: gobgpd + BIRD ------------------------------------------------------------------------
tu=$SECONDS
STARTED=1
compose up -d gobgpd host1 >/dev/null 2>&1 || { compose up -d gobgpd host1 >&2 || true; fail "compose up gobgpd host1"; }
GB=$(compose ps -q gobgpd); H1=$(compose ps -q host1)
[[ -n $GB && -n $H1 ]] || fail "containers gobgpd/host1 not created"
log "project $PROJECT up (gobgpd ${GB:0:12}, host1 ${H1:0:12})"
wait_for "BGP session gobgpd <-> host1 Established" \
  sh -c "docker exec $H1 birdc -s /run/bird/bird.ctl show protocols pool | grep -q Established"
log "session up $((SECONDS - tu))s after compose up"
# gobgpd's API: on its socket only. No TCP socket listens in the pod's namespace on gobgpd's old
# port 50051 (/proc/net/tcp*: local port C383, state 0A = LISTEN); the socket is gobgpd's and its
# group's only, and a process of another uid in the same container (nobody) is refused.
listeners=$(docker exec "$GB" sh -c 'cat /proc/net/tcp /proc/net/tcp6' | awk '$4 == "0A" { print $2 }')
grep -qi ':C383$' <<<"$listeners" && fail "something listens on TCP port 50051 in the pod: $listeners"
sock=$(docker exec "$GB" stat -c '%a %u %g %F' /run/gobgp/api.sock) || fail "no gobgpd API socket"
[[ $sock == "660 10179 10179 socket" ]] || fail "gobgpd's API socket is '$sock', want mode 660, owner and group 10179"
docker exec "$GB" gobgp --target "$GOBGP_API" global >/dev/null || fail "the gobgp CLI as gobgpd cannot use the socket"
if out=$(docker exec -u 65534:65534 "$GB" gobgp --target "$GOBGP_API" global 2>&1); then
  fail "a process of uid 65534 reached gobgpd's API: $out"
fi
log "ok: gobgpd's API on $GOBGP_API only (mode $sock), refused to uid 65534 ($(tr -d '\n' <<<"$out" | cut -c1-80))"
[[ $(docker logs "$GB" 2>&1 | grep -c 'restarting mode (-r)') -eq 0 ]] ||
  fail "gobgpd's first start was in graceful-restart restarting mode (-r)"

# The bridge gateway is not on a node address, and the nodes are free on-link addresses.
gw=$(docker exec "$H1" ip -4 route show default | awk '{ print $3 }')
[[ $gw == 198.19.15.253 ]] || fail "host1's default gateway is '$gw', want 198.19.15.253"
docker exec "$H1" ip -4 route show 198.19.0.0/20 | grep -q 'dev eth0 proto kernel scope link src 198.19.15.254' ||
  fail "host1 has no connected route 198.19.0.0/20 from 198.19.15.254"

for n in 1 2 3; do
  rib add 198.19.32.0/20 198.19.0.$n $n
  rib add 198.19.48.0/20 198.19.0.$n $n
done
rib add 198.19.38.11/32 198.19.0.2 2
rib add 198.19.48.10/32 198.19.0.2 2
wait_routes "network: the lab's routes, ECMP over 198.19.0.1-3 (paths from the gobgp CLI)" "$LAB_ROUTES"

rib del 198.19.32.0/20 198.19.0.1 1
wait_routes "network: withdrawing one path removes exactly its next hop" \
  "$(printf '%s\n' "$LAB_ROUTES" | sed 's|^198.19.32.0/20 via .*|198.19.32.0/20 via 198.19.0.2@eth0,198.19.0.3@eth0|')"

for n in 2 3; do rib del 198.19.32.0/20 198.19.0.$n $n; done
for n in 1 2 3; do rib del 198.19.48.0/20 198.19.0.$n $n; done
rib del 198.19.38.11/32 198.19.0.2 2
rib del 198.19.48.10/32 198.19.0.2 2
wait_routes "network: withdrawing all paths empties host1" ""
[[ -z $(gobgp global rib -a ipv4 2>/dev/null | grep -v 'Network not in table') ]] || fail "gobgpd's RIB is not empty after the withdrawals"

if [[ $NETWORK_ONLY -eq 1 ]]; then
  FAILED=0
  log "network-only run: herald not tested"
  exit 0
fi

# --- phase 2: herald -------------------------------------------------------------------------------
# replace_state FILE: write the new state next to the old one and rename it over (what most
# editors do: a new inode, which is why the directory, not the file, is mounted).
replace_state() {
  cp "$1" "$WORK/state/.cluster-state.yaml.new" && chmod 0644 "$WORK/state/.cluster-state.yaml.new" &&
    mv -f "$WORK/state/.cluster-state.yaml.new" "$STATE"
}

th=$SECONDS
# Prometheus with herald: it has scraped for the length of phases 2 and 3 when phase 4 asks it.
compose up -d herald prometheus >/dev/null 2>&1 || { compose up -d herald prometheus >&2 || true; fail "compose up herald prometheus"; }
HR=$(compose ps -q herald)
[[ -n $HR ]] || fail "herald container not created"
wait_routes "herald, stage 1 (customer Cluster): both ranges, ECMP over the 3 nodes" "$RANGE_ROUTES"
log "herald converged $((SECONDS - th))s after compose up"

replace_state "$STAGE2"
wait_routes "herald, stage 2 (customer Local): + 198.19.38.11 via node1" "$STAGE2_ROUTES"
replace_state "$STAGE3"
wait_routes "herald, stage 3 (+ external IP): + 198.19.48.10 via node1 (the lab's final table)" "$LAB_ROUTES"

API_PORT=$(compose port pod 50151 | awk -F: '{ print $NF }')
[[ $API_PORT =~ ^[0-9]+$ ]] || fail "herald's API port is not published (compose port pod 50151: '$API_PORT')"
# The release build (made with the image's herald) first, else the newest target/*/heraldctl.
if [[ -z ${HERALDCTL:-} ]]; then
  if [[ -x $REPO/target/release/heraldctl ]]; then HERALDCTL=$REPO/target/release/heraldctl
  else HERALDCTL=$(ls -t "$REPO"/target/*/heraldctl 2>/dev/null | head -n1 || true); fi
fi
if [[ -n $HERALDCTL && -x $HERALDCTL ]]; then
  out=$("$HERALDCTL" --server "http://127.0.0.1:$API_PORT" routes 2>&1) ||
    { printf '%s\n' "$out" >&2; fail "heraldctl routes against 127.0.0.1:$API_PORT"; }
  for want in 198.19.32.0/20 198.19.48.0/20 198.19.38.11 198.19.48.10; do
    grep -qF "$want" <<<"$out" || { printf '%s\n' "$out" >&2; fail "heraldctl routes does not list $want"; }
  done
  log "ok: herald API on 127.0.0.1:$API_PORT answers ($HERALDCTL routes lists the 4 routes)"
else
  timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$API_PORT" ||
    fail "nothing accepts connections on herald's API port 127.0.0.1:$API_PORT"
  log "ok: herald API port 127.0.0.1:$API_PORT accepts connections (no target/*/heraldctl: gRPC not checked)"
fi

replace_state "$STAGE1"
wait_routes "herald, back to stage 1: both /32 routes withdrawn" "$RANGE_ROUTES"
# And an in-place rewrite (same inode), the other way editors save.
cat "$STAGE3" >"$STATE"
wait_routes "herald, stage 3 again (file rewritten in place)" "$LAB_ROUTES"

restarts=$(docker inspect -f '{{.RestartCount}}' "$HR")
[[ $restarts -eq 0 ]] || fail "herald restarted $restarts time(s)"
[[ $(docker inspect -f '{{.State.Running}}' "$HR") == true ]] || fail "herald is not running"
# Prometheus (phase 4) too, now rather than after phase 3's minute and a half.
PR=$(compose ps -q prometheus)
[[ -n $PR && $(docker inspect -f '{{.State.Running}} {{.RestartCount}}' "$PR") == "true 0" ]] ||
  fail "Prometheus is not running, or restarted (docker-compose logs prometheus, below)"

# --- phase 3: crashes ------------------------------------------------------------------------------
WATCH_SECONDS=${E2E_WATCH_SECONDS:-30}
# watch_host1 FILE: polls host1's routes for WATCH_SECONDS, one line per poll in FILE: "ok", or
# "differs: <what host1 had>".
watch_host1() {
  local end=$((SECONDS + WATCH_SECONDS)) got
  : >"$1"
  while (( SECONDS < end )); do
    got=$(bird_routes 2>/dev/null || echo "(cannot read host1's routes)")
    if [[ $got == "$LAB_ROUTES" ]]; then echo ok; else echo "differs: ${got//$'\n'/; }"; fi >>"$1"
    sleep 0.1
  done
}
# crash CONTAINER: every process of the container dies at once (SIGKILL of its init from the host).
crash() {
  local pid
  pid=$(docker inspect -f '{{.State.Pid}}' "$1")
  [[ $pid -gt 0 ]] || fail "container $1 has no process to crash"
  kill -KILL "$pid"
}
kill_and_start() { docker kill "$1" >/dev/null && docker start "$1" >/dev/null; }
# in_sync: herald's API answers from the host, gobgpd holds the plan, the session is up, no alarm.
in_sync() {
  local out
  out=$("$HERALDCTL" --server "http://127.0.0.1:$API_PORT" status 2>&1) || return 1
  [[ $out == *"(reachable)"*"8 paths applied, 0 pending"* && $out == *"peer:    198.19.15.254 established"* && $out != *"alarm:"* ]]
}
syncs() { docker logs "$GB" 2>&1 | grep -c 'sync finished' || true; }
restarting_starts() { docker logs "$GB" 2>&1 | grep -c 'restarting mode (-r)' || true; }
# survive WHAT CONTAINER ACTION: does ACTION to CONTAINER while host1 is watched, then checks that
# the container is back, herald in sync, no poll missed a route (and, for gobgpd, that it restarted
# with -r and sent its End-of-RIB).
survive() {
  local what=$1 ctr=$2 action=$3 started restarts syncs0 r0 t watcher polls bad
  started=$(docker inspect -f '{{.State.StartedAt}}' "$ctr")
  restarts=$(docker inspect -f '{{.RestartCount}}' "$ctr")
  syncs0=$(syncs)
  r0=$(restarting_starts)
  watch_host1 "$WORK/watch" & watcher=$!
  WATCHER=$watcher
  sleep 1
  t=$SECONDS
  "$action" "$ctr"
  wait_for "$what: back in the pod" sh -c "[ \"\$(docker inspect -f '{{.State.Running}} {{.State.StartedAt}}' $ctr)\" != 'true $started' ] &&
    [ \"\$(docker inspect -f '{{.State.Running}}' $ctr)\" = true ]"
  local back=$((SECONDS - t))
  if [[ $action == crash && $(docker inspect -f '{{.RestartCount}}' "$ctr") -le $restarts ]]; then
    fail "$what: the container is back, but not by its restart policy"
  fi
  if [[ -n ${HERALDCTL:-} && -x $HERALDCTL ]]; then
    wait_for "$what: herald's API answers from the host, gobgpd in sync" in_sync
  else
    wait_for "$what: herald's API port accepts connections" timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$API_PORT"
  fi
  local synced=$((SECONDS - t))
  if [[ $ctr == "$GB" ]]; then
    wait_for "$what: gobgpd restarted in restarting mode (-r) and sent host1 its End-of-RIB" \
      sh -c "[ \$(docker logs $GB 2>&1 | grep -c 'sync finished') -gt $syncs0 ]"
    (( $(restarting_starts) > r0 )) || fail "$what: gobgpd-start did not pass -r"
  fi
  wait "$watcher"
  WATCHER=
  polls=$(wc -l <"$WORK/watch")
  bad=$(grep -c -v '^ok$' "$WORK/watch" || true)
  if (( bad > 0 )); then
    grep -v '^ok$' "$WORK/watch" | head -n 5 >&2
    fail "$what: $bad of $polls polls of host1 missed routes of the lab's table"
  fi
  (( polls >= 20 )) || fail "$what: only $polls polls of host1 in ${WATCH_SECONDS}s"
  log "ok: $what: $polls polls of host1 in ${WATCH_SECONDS}s, 0 missing a route; back in ${back}s, in sync in ${synced}s"
}
[[ -n ${HERALDCTL:-} && -x $HERALDCTL ]] || log "no heraldctl: phase 3 checks herald's port only, not its status"
survive "gobgpd crashed" "$GB" crash
survive "herald crashed" "$HR" crash
survive "docker kill + docker start gobgpd" "$GB" kill_and_start

# --- phase 4: Prometheus, herald's alerting rules and the dashboard's queries ------------------------
RULES=$REPO/deploy/prometheus/herald-alerts.yaml
DASHBOARD=$REPO/deploy/grafana/herald-dashboard.json
PROM_PORT=$(compose port prometheus 9090 | awk -F: '{ print $NF }')
[[ $PROM_PORT =~ ^[0-9]+$ ]] || fail "Prometheus's port is not published (compose port prometheus 9090: '$PROM_PORT')"
PROM=http://127.0.0.1:$PROM_PORT
# prom_query QUERY: the API's JSON answer to an instant query; fails unless its status is success.
prom_query() {
  local out
  out=$(curl -sS --max-time 10 -G --data-urlencode "query=$1" "$PROM/api/v1/query") || return 1
  [[ $(jq -r .status <<<"$out") == success ]] || { printf '%s\n' "$out" >&2; return 1; }
  printf '%s\n' "$out"
}
wait_for "Prometheus ready, scraping herald (up{job=\"herald\"} == 1)" \
  sh -c "curl -sf --max-time 5 -G --data-urlencode 'query=up{job=\"herald\"} == 1' $PROM/api/v1/query | jq -e '.data.result | length == 1'"

# herald's series, as Prometheus scraped them.
series=$(prom_query 'count by (__name__) ({job="herald",__name__=~"herald_.+"})' |
  jq -r '.data.result[] | "\(.metric.__name__) \(.value[1])"' | sort) || fail "asking Prometheus for herald's series"
log "Prometheus: count by (__name__) ({job=\"herald\",__name__=~\"herald_.+\"}): $(wc -l <<<"$series") names; the first:"
head -n 6 <<<"$series" | sed 's/^/    /' >&2
peer=$(prom_query 'herald_bgp_peer_state{job="herald"} == 1' | jq -c '.data.result[] | [.metric.peer, .metric.state, .value[1]]')
log "Prometheus: herald_bgp_peer_state == 1: $peer"
[[ $peer == '["198.19.15.254","established","1"]' ]] || fail "Prometheus does not see herald's BGP peer established: $peer"
# Every series the rules and the dashboard read (a histogram by its _bucket series).
wanted=$( { grep '^ *expr:' "$RULES"; jq -r '.. | .expr? // empty, .query? // empty' "$DASHBOARD"; } |
  grep -o 'herald_[a-z_]*' | sort -u)
for name in $wanted; do
  grep -q "^$name " <<<"$series" || fail "Prometheus has no series $name, which the rules or the dashboard read"
done
log "ok: Prometheus scraped every herald series the rules and the dashboard read ($(wc -w <<<"$wanted") names)"

# The rules: all loaded, all evaluating without error.
rules=$(curl -sS --max-time 10 "$PROM/api/v1/rules?type=alert") || fail "asking Prometheus for its rules"
loaded=$(jq '[.data.groups[].rules[]] | length' <<<"$rules")
in_file=$(grep -c '^ *- alert:' "$RULES")
[[ $loaded -eq $in_file ]] || fail "Prometheus loaded $loaded alerting rules, $RULES has $in_file"
bad=$(jq -r '.data.groups[].rules[] | select(.health != "ok") | "\(.name): \(.health) \(.lastError)"' <<<"$rules")
[[ -z $bad ]] || fail "rules that do not evaluate: $bad"
log "ok: Prometheus loaded herald's $loaded alerting rules, all evaluating (health ok)"

# The dashboard's queries ($job: every job), each valid and returning data.
n=0
while IFS= read -r query; do
  n=$((n + 1))
  out=$(prom_query "${query//\$job/.+}") || fail "dashboard query $n does not run: $query"
  [[ $(jq '.data.result | length' <<<"$out") -gt 0 ]] || fail "dashboard query $n returns nothing: $query"
done < <(jq -r '.panels[] | select(.targets) | .targets[] | .expr' "$DASHBOARD")
(( n >= 10 )) || fail "only $n dashboard queries found"
log "ok: the $n queries of the Grafana dashboard run on Prometheus and return data"

# Nothing firing on a healthy lab; then host1 stops the BGP session.
active=$(prom_query 'ALERTS{alertname=~"Herald.+"}' | jq -r '.data.result[] | "\(.metric.alertname) \(.metric.alertstate)"')
log "herald alerts before host1's session stops: ${active:-none}"
grep -q firing <<<"$active" && fail "herald alerts firing on a healthy lab: $active"
grep -q HeraldBgpPeerNotEstablished <<<"$active" && fail "the peer alert is active before the session stopped"
tp=$SECONDS
docker exec "$H1" birdc -s /run/bird/bird.ctl disable pool >/dev/null || fail "birdc disable pool"
log "host1: BGP session to gobgpd disabled (birdc disable pool)"
wait_for "HeraldBgpPeerNotEstablished pending for peer 198.19.15.254" \
  sh -c "curl -sf --max-time 5 -G --data-urlencode 'query=ALERTS{alertname=\"HeraldBgpPeerNotEstablished\",alertstate=\"pending\",peer=\"198.19.15.254\"}' $PROM/api/v1/query | jq -e '.data.result | length == 1'"
alert=$(prom_query 'ALERTS{alertname="HeraldBgpPeerNotEstablished"}' | jq -c '.data.result[].metric')
state=$(prom_query 'herald_bgp_peer_state{job="herald"} == 1' | jq -c '.data.result[] | [.metric.peer, .metric.state, .value[1]]')
log "Prometheus: herald_bgp_peer_state == 1: $state"
log "Prometheus: ALERTS: $alert"
log "ok: the peer alert went pending $((SECONDS - tp))s after host1 stopped the session"
FAILED=0
