# BIRD 2 router image: plays "host1", the upstream router of the Advertising Services lab.
# Debian bookworm's bird2 (2.0.12) and iproute2 (for `ip route` in the checks).
#
#   docker build -f deploy/docker/bird.Dockerfile -t herald-bird:dev deploy/docker
#
# The configuration is not baked in: mount it at /etc/bird/bird.conf (deploy/compose/host1/).
#
# BIRD installs routes into the container's kernel table, so the container needs CAP_NET_ADMIN
# (compose: cap_add), and CAP_NET_BIND_SERVICE for port 179. Decision: BIRD runs as the
# container's root but with only those two capabilities (compose: cap_drop ALL, no-new-privileges),
# not with `-u bird`: dropping to the bird user needs CHOWN, FOWNER, SETUID and SETGID in the
# bounding set as well (BIRD chowns/chmods its control socket), and leaves a socket root without
# DAC_OVERRIDE cannot open, so `birdc` (health check, `docker exec`) would fail.
FROM debian:bookworm-slim

ARG BIRD2_VERSION=

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends "bird2${BIRD2_VERSION}" iproute2; \
    rm -rf /var/lib/apt/lists/*; \
    # The package makes /etc/bird bird:bird 0750; root without CAP_DAC_OVERRIDE could not read it.
    rm -f /etc/bird/bird.conf; \
    dpkg-statoverride --remove /etc/bird/bird.conf; \
    dpkg-statoverride --remove /etc/bird; \
    chown root:root /etc/bird; chmod 0755 /etc/bird; \
    install -d -m 0755 /run/bird; \
    bird --version

EXPOSE 179/tcp

HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["birdc", "-s", "/run/bird/bird.ctl", "show", "status"]

ENTRYPOINT ["bird", "-f", "-s", "/run/bird/bird.ctl"]
CMD ["-c", "/etc/bird/bird.conf"]
