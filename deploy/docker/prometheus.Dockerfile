# Prometheus for the Compose lab: Debian bookworm's prometheus package (2.42), which scrapes herald
# and evaluates herald's alerting rules (deploy/prometheus/herald-alerts.yaml).
#
#   docker build -f deploy/docker/prometheus.Dockerfile -t herald-prometheus:dev deploy/docker
#
# The configuration and the rules are not baked in: mount prometheus.yml at
# /etc/prometheus/prometheus.yml (deploy/compose/prometheus/) and the rules under
# /etc/prometheus/rules/. The TSDB lives in /prometheus: mount a volume there (the root
# filesystem may be read-only). No registry: built on the debootstrapped debian:bookworm-slim like the others.
FROM debian:bookworm-slim

ARG PROMETHEUS_VERSION=

# The package creates the system user prometheus (adduser --system: it refuses a user made
# beforehand with a fixed uid above the system range). /prometheus is that user's: a volume
# mounted there (the compose lab's anonymous one) starts with its ownership.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends "prometheus${PROMETHEUS_VERSION}"; \
    rm -rf /var/lib/apt/lists/*; \
    install -d -o prometheus -g prometheus -m 0755 /prometheus /etc/prometheus/rules; \
    prometheus --version

EXPOSE 9090/tcp

USER prometheus

# Ready once the TSDB is open and the rules loaded: /-/ready answers 200. No curl or wget in the
# image (and promtool 2.42 has no `check ready`): bash's /dev/tcp asks.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /-/ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
