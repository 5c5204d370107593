# The Compose lab's "pod": a container that only owns the network namespace herald and gobgpd
# share (Compose `network_mode: service:pod`), as a Kubernetes pod's pause container does. When
# gobgpd or herald crashes and Docker's restart policy brings it back, it joins this namespace
# again: same addresses, same published ports, and herald reaches gobgpd on 127.0.0.1 as before.
#
#   docker build -f deploy/docker/pause.Dockerfile -t herald-pause:dev deploy/docker
#
# It runs `sleep infinity` as nobody, with no capabilities; Compose's `init: true` puts an init in
# front of it that ends it on SIGTERM and reaps nothing else (there is nothing else).
FROM debian:bookworm-slim

USER 65534:65534

ENTRYPOINT ["sleep", "infinity"]
