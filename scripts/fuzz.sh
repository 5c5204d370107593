#!/usr/bin/env bash
# Fuzzes herald's hostile-input surfaces for a bounded time, on the STABLE toolchain:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 20 s; all targets)
#
# Targets (fuzz/fuzz_targets/, bodies in service/testkit/src/fuzz.rs): cluster_state, config, planner, selector.
#
# Stable works because the targets are built with `--sanitizer none`: cargo-fuzz then passes only
# stable rustc flags (SanitizerCoverage through `-Cpasses=sancov-module` and `-Cllvm-args`, plus
# `--cfg fuzzing`, debug assertions and overflow checks); AddressSanitizer (`-Zsanitizer`) is the one
# part that needs nightly, and safe Rust does not need it to find panics, overflows, hangs and OOMs.
#
# Seed corpora are written to fuzz/corpus/<target>/ (git-ignored, grown by libFuzzer, kept between
# runs on one machine). Inputs kept in fuzz/regressions/<target>/ are replayed first. A crash, hang
# (timeout) or out-of-memory input is copied to fuzz/regressions/<target>/ (commit it: the test
# service/tests/hostile_input.rs replays it from then on), shown with its panic message, and the
# script exits non-zero after the remaining targets ran.
#
# Settings (environment): FUZZ_RSS_LIMIT_MB (2048), FUZZ_TIMEOUT_S per input (10),
# FUZZ_MAX_LEN bytes per input (16384), CARGO_FUZZ_VERSION to install (0.13.2).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${1:-20}
[[ $# -gt 0 ]] && shift
all_targets=(cluster_state config planner selector)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all_targets[@]}")
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2; }

rss_limit=${FUZZ_RSS_LIMIT_MB:-2048}
timeout_s=${FUZZ_TIMEOUT_S:-10}
max_len=${FUZZ_MAX_LEN:-16384}
cargo_fuzz_version=${CARGO_FUZZ_VERSION:-0.13.2}
# The flags of every build and run: the same ones, or cargo rebuilds everything.
build_flags=(--sanitizer none)

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
started=$SECONDS

step "cargo-fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing cargo-fuzz $cargo_fuzz_version from crates.io"
    install_started=$SECONDS
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
    echo "installed in $((SECONDS - install_started)) s"
fi
cargo fuzz --version

step "seed corpora"
# Small, and written by this script only: corpora are never committed.
seed() { # seed TARGET NAME CONTENT
    printf '%s' "$3" >"fuzz/corpus/$1/seed-$2"
}
for t in "${all_targets[@]}"; do mkdir -p "fuzz/corpus/$t"; done
for f in examples/yaobank/*.yaml; do
    case $f in
        */herald.yaml) cp "$f" fuzz/corpus/config/seed-yaobank-herald.yaml ;;
        *) cp "$f" "fuzz/corpus/cluster_state/seed-yaobank-$(basename "$f")" ;;
    esac
done
seed cluster_state multi-doc $'kind: Service\nmetadata: {name: a, namespace: ns}\nspec:\n  type: LoadBalancer\n  clusterIPs: [10.96.0.10, fd00::10]\n  externalTrafficPolicy: Local\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.19.48.1}]\n---\nkind: EndpointSlice\nmetadata:\n  name: a-1\n  namespace: ns\n  labels: {kubernetes.io/service-name: a}\naddressType: IPv4\nendpoints:\n- addresses: [10.1.0.1]\n  nodeName: n1\n  conditions: {ready: false, serving: true, terminating: true}\n---\nkind: Node\nmetadata: {name: n1, labels: {zone: z1}}\nstatus:\n  addresses: [{type: InternalIP, address: 10.0.0.1}, {type: InternalIP, address: "fd00::1"}]\n  conditions: [{type: Ready, status: "True"}]\n'
seed cluster_state typed-list $'apiVersion: v1\nkind: ServiceList\nitems:\n- metadata: {name: h}\n  spec: {clusterIP: None}\n- metadata: {name: x}\n  spec: {type: ExternalName, externalName: example.com}\n'
seed cluster_state empty-list $'kind: List\nitems: []\n'
seed config wide $'nodeSelector: "zone in (z1,z2),!no-bgp"\nserviceClusterIPs:\n  - cidr: 10.96.0.0/12\n    communities: ["65000:1"]\n  - cidr: fd00::/108\nserviceExternalIPs:\n  - cidr: 198.19.48.0/20\n    largeCommunities: ["65000:1:2"]\nserviceLoadBalancerIPs:\n  - cidr: 198.19.64.0/24\ndenyPrefixes: [198.19.64.128/25]\nallowedCommunities: ["65000:100"]\nallowedLargeCommunities: ["65000:0:1"]\nsource:\n  kubernetes: {kubeconfig: /etc/kubeconfig}\ngobgp: {address: "127.0.0.1:50051", origin: egp, localPref: 100, antiEntropyInterval: 1m, batchSize: 10}\napi:\n  listen: "[::1]:50151"\n  tls: {certFile: a.pem, keyFile: b.pem, clientCaFile: ca.pem}\nguard: {holdDown: 500ms, maxRoutes: 100}\nmetrics: {listen: "0.0.0.0:9180"}\n'
seed config empty ''
seed selector simple 'pool=a'
seed selector full 'pool=a,zone in (z1, z2),!tainted,tier!=db,example.com/role notin (x),bgp'
seed selector equals 'a==b'
# Structured input: any bytes decode; a few fixed patterns start it off.
head -c 256 /dev/zero >fuzz/corpus/planner/seed-zeros
printf '\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10%.0s' $(seq 16) >fuzz/corpus/planner/seed-counting
head -c 512 /dev/zero | tr '\0' '\377' >fuzz/corpus/planner/seed-ones

step "build (stable, ${build_flags[*]})"
build_started=$SECONDS
for t in "${targets[@]}"; do
    cargo fuzz build "${build_flags[@]}" "$t"
done
echo "built in $((SECONDS - build_started)) s"

failed=()
summary=()
for t in "${targets[@]}"; do
    step "fuzz $t for ${seconds}s"
    artifacts="fuzz/artifacts/$t"
    rm -rf "$artifacts"
    mkdir -p "$artifacts" "fuzz/corpus/$t"
    log="fuzz/artifacts/$t.log"
    corpora=("fuzz/corpus/$t")
    [[ -d fuzz/regressions/$t ]] && corpora+=("fuzz/regressions/$t")
    args=(-max_total_time="$seconds" -rss_limit_mb="$rss_limit" -timeout="$timeout_s"
        -max_len="$max_len" -print_final_stats=1)
    case $t in cluster_state | config) args+=(-dict=fuzz/dict/kubernetes-yaml.dict) ;; esac
    status=0
    # libFuzzer's progress goes to stderr; keep it in the log and show the tail.
    cargo fuzz run "${build_flags[@]}" "$t" "${corpora[@]}" -- "${args[@]}" >"$log" 2>&1 || status=$?
    tail -n 8 "$log"

    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    if [[ -z $runs ]]; then # killed by a crash: the last progress line (#N ...) is as far as it got
        runs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    fi
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    mapfile -t found < <(find "$artifacts" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort)
    summary+=("$(printf '%-14s runs %-10s exec/s %-7s corpus %-5s crashes %s' "$t" "${runs:-?}" "${rate:-?}" \
        "$(find "fuzz/corpus/$t" -type f | wc -l)" "${#found[@]}")")
    if [[ ${#found[@]} -eq 0 && $status -ne 0 ]]; then
        echo "cargo fuzz run $t failed (exit $status) without leaving an input: see $log" >&2
        failed+=("$t")
        continue
    fi
    if [[ ${#found[@]} -gt 0 ]]; then
        failed+=("$t")
        mkdir -p "fuzz/regressions/$t"
        for input in "${found[@]}"; do
            kept="fuzz/regressions/$t/$(basename "$input")"
            cp "$input" "$kept"
            printf '\n!! %s: %s (%s bytes), kept as %s\n' "$t" "$(basename "$input" | cut -d- -f1)" "$(wc -c <"$input")" "$kept"
            echo "-- input (first 2 KiB, escaped):"
            head -c 2048 "$input" | od -An -c | head -40
            echo "-- panic message:"
            grep -A 30 -m 1 "panicked at" "$log" | sed '/^==[0-9]*==/q' || grep -m 3 -E 'ERROR: libFuzzer|SUMMARY' "$log" || true
            echo "-- reproduce: cargo fuzz run ${build_flags[*]} $t $kept"
            echo "   or: cargo test -p herald --test hostile_input"
        done
    fi
done

step "summary (${seconds}s per target, $((SECONDS - started)) s in all)"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}: inputs kept under fuzz/regressions/ (commit them, then fix the bug)" >&2
    exit 1
fi
echo "no crash"
