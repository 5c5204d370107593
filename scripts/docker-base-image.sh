#!/usr/bin/env bash
# Build the base image the Dockerfiles in deploy/docker/ name, debian:bookworm-slim, locally,
# for machines where no registry can be reached (docker pull fails).
#
#   scripts/docker-base-image.sh            # build it when `docker image inspect` says it is missing
#   scripts/docker-base-image.sh --force    # rebuild and re-tag even if it exists
#
# How: `debootstrap --variant=minbase bookworm` into a temporary directory under /var/tmp (never
# inside the repository), trim docs/man pages/locales/apt lists, configure dpkg/apt the way the
# official slim image does (so later `apt-get install` stays slim and daemons are not started at
# build time), then `tar -C dir -c . | docker import - debian:bookworm-slim` and remove the directory.
#
# Mirror: the Debian mirror this machine's apt already uses (deb822 *.sources or one-line *.list in
# /etc/apt/sources.list{,.d}), read at run time. Override with DEBIAN_MIRROR=http://... and
# DEBIAN_SECURITY_MIRROR=http://... (empty string: no security suite in the image's sources).
#
# Needs: root, debootstrap (apt-get install debootstrap), docker. Where a registry is reachable,
# `docker pull debian:bookworm-slim` gives the official image and this script is not needed.
set -euo pipefail

IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
SUITE=bookworm
FORCE=0
case "${1:-}" in
  --force) FORCE=1 ;;
  "") ;;
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

log() { printf '[docker-base-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

start=$SECONDS
if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already present ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19)); nothing to do (0s)"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install debootstrap)"
command -v docker >/dev/null || die "docker not installed"

# Serialise concurrent callers (parallel CI jobs): the second one waits and then finds the image.
exec 9>/var/tmp/herald-docker-base-image.lock
flock 9
if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE was built by a concurrent run; nothing to do ($((SECONDS - start))s)"
  exit 0
fi

# --- find the mirror apt uses ------------------------------------------------------------------
# Prints "URI" for the first enabled deb source carrying suite $1 (exact match).
apt_mirror_for_suite() {
  local want=$1 f
  shopt -s nullglob
  for f in /etc/apt/sources.list.d/*.sources; do
    awk -v want="$want" '
      function flush() {
        if (uris != "" && suites != "" && (types == "" || types ~ /(^| )deb( |$)/) && enabled != "no") {
          n = split(suites, s, /[ \t]+/)
          for (i = 1; i <= n; i++) if (s[i] == want) { split(uris, u, /[ \t]+/); print u[1]; found = 1; exit }
        }
        uris = ""; suites = ""; types = ""; enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { line = $0; key = tolower(line); sub(/:.*/, "", key); val = line; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "uris") uris = val; else if (key == "suites") suites = val
        else if (key == "types") types = val; else if (key == "enabled") enabled = tolower(val) }
      END { if (!found) flush() }
    ' "$f" | head -n1 | grep . && return 0
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -r $f ]] || continue
    # deb [opts] URI suite comp...
    awk -v want="$want" '
      $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($(i+1) == want) { print $i; exit } }
    ' "$f" | head -n1 | grep . && return 0
  done
  return 1
}

if [[ -n ${DEBIAN_MIRROR:-} ]]; then
  MIRROR=$DEBIAN_MIRROR
else
  MIRROR=$(apt_mirror_for_suite "$SUITE") || die "no enabled 'deb' source for suite $SUITE in /etc/apt/sources.list{,.d}; set DEBIAN_MIRROR"
fi
if [[ -n ${DEBIAN_SECURITY_MIRROR+set} ]]; then
  SECURITY_MIRROR=$DEBIAN_SECURITY_MIRROR
else
  SECURITY_MIRROR=$(apt_mirror_for_suite "$SUITE-security" || true)
fi
MIRROR=${MIRROR%/}
SECURITY_MIRROR=${SECURITY_MIRROR%/}
log "building $IMAGE from $MIRROR ($SUITE, minbase)${SECURITY_MIRROR:+, security: $SECURITY_MIRROR}"

# --- debootstrap into a scratch dir under /var/tmp ---------------------------------------------
ROOT=$(mktemp -d /var/tmp/herald-rootfs.XXXXXX)
cleanup() {
  local m
  # debootstrap mounts proc/sys inside the target; an interrupted run may leave them mounted.
  for m in $(awk -v r="$ROOT" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$ROOT"
}
trap cleanup EXIT

t0=$SECONDS
debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || {
  tail -n 30 "$ROOT.log" >&2; rm -f "$ROOT.log"; die "debootstrap failed"; }
rm -f "$ROOT.log"
log "debootstrap done in $((SECONDS - t0))s"

# --- configure like the official slim image ----------------------------------------------------
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" "$SUITE" "$SUITE"
  if [[ -n $SECURITY_MIRROR ]]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$SECURITY_MIRROR" "$SUITE"
  fi
} >"$ROOT/etc/apt/sources.list.d/debian.sources"
rm -f "$ROOT/etc/apt/sources.list"

# Keep later package installs slim.
cat >"$ROOT/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# Installed by herald's scripts/docker-base-image.sh (mirrors the official slim image).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
cat >"$ROOT/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
echo 'Acquire::Languages "none";' >"$ROOT/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' >"$ROOT/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'APT::AutoRemove::SuggestsImportant "false";' >"$ROOT/etc/apt/apt.conf.d/docker-autoremove-suggests"
# Never start daemons from maintainer scripts during `docker build` (gobgpd, bird2 ship init scripts).
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
# The host's name/resolver do not belong in the image; docker bind-mounts its own.
: >"$ROOT/etc/resolv.conf"
echo localhost >"$ROOT/etc/hostname"

# --- trim ---------------------------------------------------------------------------------------
find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOT/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOT"/usr/share/{man,info,groff,lintian,linda}/* "$ROOT"/usr/share/locale/* \
       "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old "$ROOT"/var/log/* \
       "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/root/.bash_history
mkdir -p "$ROOT/var/lib/apt/lists/partial"

# --- import --------------------------------------------------------------------------------------
t0=$SECONDS
tar --numeric-owner --xattrs -C "$ROOT" \
    --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR (herald scripts/docker-base-image.sh)" \
    - "$IMAGE" >/dev/null
log "imported in $((SECONDS - t0))s"

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
log "built $IMAGE: $((size / 1024 / 1024)) MiB, total time $((SECONDS - start))s"
