#!/usr/bin/env bash
# Build the images of the compose lab (deploy/compose/docker-compose.yaml):
#
#   debian:bookworm-slim   only when missing (scripts/docker-base-image.sh; no registry needed)
#   herald-gobgpd:dev      deploy/docker/gobgpd.Dockerfile, context deploy/docker (Dockerfiles and
#                          gobgpd-start, its entrypoint)
#   herald-bird:dev        deploy/docker/bird.Dockerfile,   context deploy/docker
#   herald-pause:dev       deploy/docker/pause.Dockerfile,  context deploy/docker (owns the pod's
#                          network namespace in the Compose lab)
#   herald-prometheus:dev  deploy/docker/prometheus.Dockerfile, context deploy/docker (Debian's
#                          prometheus: the lab's Prometheus, with herald's alerting rules)
#   herald:dev             deploy/docker/herald.Dockerfile, context: a temporary directory under
#                          /tmp holding the stripped host-built binaries (bin/herald, bin/heraldctl)
#
# Usage: deploy/docker/build-images.sh [--cargo] [--no-herald]
#   --cargo      run `cargo build --release -p herald [-p heraldctl]` first
#   --no-herald  build only the base, gobgpd, bird and pause images (the network half of the lab:
#                no herald, no Prometheus)
# Environment:
#   HERALD_BIN     herald binary to package      (default target/release/herald)
#   HERALDCTL_BIN  heraldctl binary, optional    (default target/release/heraldctl if present)
#   HERALD_IMAGE, HERALD_GOBGPD_IMAGE, HERALD_BIRD_IMAGE, HERALD_PAUSE_IMAGE,
#   HERALD_PROMETHEUS_IMAGE   image names (defaults above)
# Nothing is written inside the repository.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DOCKER_DIR=$REPO/deploy/docker
HERALD_IMAGE=${HERALD_IMAGE:-herald:dev}
HERALD_GOBGPD_IMAGE=${HERALD_GOBGPD_IMAGE:-herald-gobgpd:dev}
HERALD_BIRD_IMAGE=${HERALD_BIRD_IMAGE:-herald-bird:dev}
HERALD_PAUSE_IMAGE=${HERALD_PAUSE_IMAGE:-herald-pause:dev}
HERALD_PROMETHEUS_IMAGE=${HERALD_PROMETHEUS_IMAGE:-herald-prometheus:dev}

CARGO=0 HERALD=1
for arg; do
  case $arg in
    --cargo) CARGO=1 ;;
    --no-herald) HERALD=0 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--cargo] [--no-herald]" >&2; exit 2 ;;
  esac
done

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# The legacy builder prints a deprecation banner on every build when buildx is absent; keep the
# output readable but show everything when a build fails.
build() {
  local out
  if ! out=$(docker build "$@" 2>&1); then
    printf '%s\n' "$out" >&2
    die "docker build $* failed"
  fi
}
size() { docker image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.1f MB", $1 / 1e6 }'; }

start=$SECONDS
"$REPO/scripts/docker-base-image.sh"

t=$SECONDS
build -f "$DOCKER_DIR/gobgpd.Dockerfile" -t "$HERALD_GOBGPD_IMAGE" "$DOCKER_DIR"
log "$HERALD_GOBGPD_IMAGE: $(size "$HERALD_GOBGPD_IMAGE") ($((SECONDS - t))s)"
t=$SECONDS
build -f "$DOCKER_DIR/bird.Dockerfile" -t "$HERALD_BIRD_IMAGE" "$DOCKER_DIR"
log "$HERALD_BIRD_IMAGE: $(size "$HERALD_BIRD_IMAGE") ($((SECONDS - t))s)"
t=$SECONDS
build -f "$DOCKER_DIR/pause.Dockerfile" -t "$HERALD_PAUSE_IMAGE" "$DOCKER_DIR"
log "$HERALD_PAUSE_IMAGE: $(size "$HERALD_PAUSE_IMAGE") ($((SECONDS - t))s)"

if [[ $HERALD -eq 1 ]]; then
  t=$SECONDS
  build -f "$DOCKER_DIR/prometheus.Dockerfile" -t "$HERALD_PROMETHEUS_IMAGE" "$DOCKER_DIR"
  log "$HERALD_PROMETHEUS_IMAGE: $(size "$HERALD_PROMETHEUS_IMAGE") ($((SECONDS - t))s)"

  if [[ $CARGO -eq 1 ]]; then
    t=$SECONDS
    pkgs=(-p herald)
    # heraldctl is optional: package it when the workspace has it.
    if (cd "$REPO" && cargo metadata --no-deps --format-version 1 2>/dev/null | grep -q '"name":"heraldctl"'); then
      pkgs+=(-p heraldctl)
    fi
    (cd "$REPO" && cargo build --release --locked "${pkgs[@]}") || die "cargo build failed"
    log "cargo build ${pkgs[*]} ($((SECONDS - t))s)"
  fi
  target_dir=${CARGO_TARGET_DIR:-$REPO/target}
  HERALD_BIN=${HERALD_BIN:-$target_dir/release/herald}
  HERALDCTL_BIN=${HERALDCTL_BIN:-$target_dir/release/heraldctl}
  [[ -x $HERALD_BIN ]] || die "no herald binary at $HERALD_BIN: run with --cargo, set HERALD_BIN, or use --no-herald"

  t=$SECONDS
  ctx=$(mktemp -d /tmp/herald-image-ctx.XXXXXX)
  trap 'rm -rf "$ctx"' EXIT
  mkdir "$ctx/bin"
  strip -o "$ctx/bin/herald" "$HERALD_BIN"
  if [[ -x $HERALDCTL_BIN ]]; then strip -o "$ctx/bin/heraldctl" "$HERALDCTL_BIN"; fi
  chmod 0755 "$ctx"/bin/*
  old=$(docker image inspect -f '{{.Id}}' "$HERALD_IMAGE" 2>/dev/null || true)
  build -f "$DOCKER_DIR/herald.Dockerfile" -t "$HERALD_IMAGE" "$ctx"
  rm -rf "$ctx"
  # Every new binary makes a new image; drop the one it replaces (if no container uses it) so
  # repeated runs do not pile up dangling images.
  new=$(docker image inspect -f '{{.Id}}' "$HERALD_IMAGE")
  if [[ -n $old && $old != "$new" ]]; then docker image rm "$old" >/dev/null 2>&1 || true; fi
  # Catch a binary the runtime image cannot run (e.g. linked against a newer glibc than bookworm's).
  docker run --rm --network none "$HERALD_IMAGE" --version >/dev/null ||
    die "$HERALD_IMAGE cannot run herald (built against a newer glibc than bookworm's 2.36?)"
  contents=herald; [[ -x $HERALDCTL_BIN ]] && contents+=" + heraldctl"
  log "$HERALD_IMAGE: $(size "$HERALD_IMAGE") ($contents; $((SECONDS - t))s)"
fi
log "done in $((SECONDS - start))s"
