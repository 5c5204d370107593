#!/usr/bin/env bash
# herald's test command: everything a change must pass, on a fresh Debian machine, as root.
#
#   scripts/test.sh            all tests
#   scripts/test.sh --quick    unit and CLI tests only (no network namespaces, no Docker)
#
# It installs what the tests need (gobgpd, BIRD 2, grpcurl, promtool, ...), builds the workspace,
# checks the alerting rules and the dashboard's queries (scripts/check-monitoring.sh), runs
# `cargo test` (which includes the network-namespace labs with real gobgpd and BIRD 2), validates the
# Kubernetes manifests and runs the Docker Compose end-to-end test. CI also fuzzes (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[[ ${1:-} == --quick ]] && quick=true

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "dependencies"
scripts/install-deps.sh

step "build"
# The integration tests run the binaries the user runs: build them first.
cargo build --workspace --bins --quiet

step "alerting rules and dashboard (promtool)"
scripts/check-monitoring.sh

if $quick; then
    step "unit and CLI tests"
    cargo test --workspace --no-fail-fast --lib --bins --test plan_cli
    exit 0
fi

step "cargo test"
cargo test --workspace --no-fail-fast

# A step's script that lost its exec bit (a checkout on a filesystem without it, a bad chmod) must
# fail the run, not skip the step silently.
require_executable() {
    [[ -x $1 ]] || { echo "error: $1 is not executable (git update-index --chmod=+x $1)" >&2; exit 1; }
}

step "Kubernetes manifests"
require_executable scripts/validate-manifests.sh
scripts/validate-manifests.sh

step "Docker Compose end to end"
require_executable integration/compose/e2e.sh
# With the binaries built above: a release build would add ~9 minutes on 2 cores to what is a test
# of the images and the Compose wiring. `deploy/docker/build-images.sh --cargo` builds the release
# images.
target=${CARGO_TARGET_DIR:-$PWD/target}
HERALD_BIN=$target/debug/herald HERALDCTL_BIN=$target/debug/heraldctl HERALDCTL=$target/debug/heraldctl \
    integration/compose/e2e.sh --no-cargo
step "done"
