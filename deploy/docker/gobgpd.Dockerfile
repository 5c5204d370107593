# gobgpd sidecar image: Debian bookworm's gobgpd (GoBGP 3.10, API package `apipb`, which is what
# herald speaks; GoBGP v4 changed the API incompatibly), plus the `gobgp` CLI for health checks and
# debugging (`docker exec <ctr> gobgp neighbor`, `gobgp global rib`).
#
#   docker build -f deploy/docker/gobgpd.Dockerfile -t herald-gobgpd:dev deploy/docker
#
# The configuration is not baked in: mount it at /etc/gobgp/gobgpd.toml (deploy/compose/gobgpd/).
# The entrypoint is gobgpd-start (beside this file), which adds -r on a restart.
#
# Runs as the unprivileged user gobgpd (uid 10179) with no capabilities at all. BGP's port 179 is
# below 1024, which a non-root process may bind only when the network namespace's sysctl
# net.ipv4.ip_unprivileged_port_start allows it. Decision: set that namespaced sysctl in the
# runtime (compose: `sysctls: net.ipv4.ip_unprivileged_port_start: 179`; Kubernetes: pod
# securityContext.sysctls, a "safe" sysctl since 1.22; Docker >= 20.10 already defaults it to 0)
# rather than `setcap cap_net_bind_service+ep /usr/bin/gobgpd`. A file capability makes execve
# fail with EPERM whenever the capability is not in the bounding set, i.e. under
# `cap_drop: [ALL]` or a restricted PodSecurity profile, and is lost by layer tools that drop
# xattrs; the sysctl works with no capability and no privilege escalation.
# Where neither is possible, give gobgpd a port >= 1024 in [global.config] (port = 1179) and
# point the peer at it (BIRD: `neighbor 198.19.0.10 port 1179 as 64512`).
FROM debian:bookworm-slim

# Empty: the suite's current version. Pin with e.g. --build-arg GOBGPD_VERSION==3.10.0-1+b4
ARG GOBGPD_VERSION=

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends "gobgpd${GOBGPD_VERSION}"; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10179 gobgpd; \
    useradd --system --uid 10179 --gid gobgpd --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin gobgpd; \
    mkdir -p /etc/gobgp; \
    # gobgpd-start's state: tells a restart from a first start (see there).
    install -d -o 10179 -g 10179 -m 0755 /run/gobgpd; \
    # gobgpd's API socket: the directory is gobgpd's, and its group's (herald's container has it as
    # a supplementary group), nobody else's. A Docker volume mounted here starts as a copy of it.
    install -d -o 10179 -g 10179 -m 0750 /run/gobgp; \
    gobgpd --version

# Executable in the repository (mode 0755); the legacy builder, which has no --chmod, keeps it.
COPY gobgpd-start /usr/local/bin/gobgpd-start

# BGP. gobgpd's gRPC API is on a unix socket (/run/gobgp/api.sock, mode 0660, owner and group
# gobgpd), not on any TCP port: a port on the loopback would be open to every process of the
# network namespace, i.e. of the node with hostNetwork.
EXPOSE 179/tcp

USER 10179:10179

# The API answers on its socket.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["gobgp", "--target", "unix:///run/gobgp/api.sock", "global"]

# gobgpd, with -r (graceful restart's restarting mode) when it restarts in the same pod: see
# gobgpd-start. Its state directory must outlive the container's restarts (a volume, an emptyDir).
ENTRYPOINT ["gobgpd-start"]
CMD ["--config-file=/etc/gobgp/gobgpd.toml", "--api-hosts=unix:///run/gobgp/api.sock", "--log-plain", "--pprof-disable"]
