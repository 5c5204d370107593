# BIRD 2 router image: plays "host1", the upstream router of the Advertising Services lab.
# Debian bookworm's bird2 (2.0.12) and iproute2 (for `ip route` in the checks).
#
#   docker build -f deploy/docker/bird.Dockerfile -t herald-bird:dev deploy/docker
#
# The configuration is not baked in: mount it at /etc/bird/bird.conf (deploy/compose/host1/).
#
# BIRD installs routes into the container's kernel table, so the container needs CAP_NET_ADMIN
# (compose: cap_add). It starts as root only to drop to the user `bird` at once (`-u bird -g bird`),
# keeping just the capabilities it asks for: NET_ADMIN, NET_BIND_SERVICE (port 179),
# NET_BROADCAST and NET_RAW. All four must therefore be in the container's bounding set, nothing
# else is needed (compose: cap_drop ALL + cap_add those four).
FROM debian:bookworm-slim

ARG BIRD2_VERSION=

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends "bird2${BIRD2_VERSION}" iproute2; \
    rm -rf /var/lib/apt/lists/*; \
    rm -f /etc/bird/bird.conf; \
    install -d -o root -g bird -m 0750 /run/bird; \
    bird --version

EXPOSE 179/tcp

HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["birdc", "-s", "/run/bird/bird.ctl", "show", "status"]

ENTRYPOINT ["bird", "-f", "-u", "bird", "-g", "bird", "-s", "/run/bird/bird.ctl"]
CMD ["-c", "/etc/bird/bird.conf"]
