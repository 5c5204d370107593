# herald runtime image: debian:bookworm-slim + a herald binary built on the host.
#
# Build it with deploy/docker/build-images.sh, which strips target/release/herald (and
# target/release/heraldctl, when it exists) into a throw-away directory under /tmp laid out as
#     bin/herald  bin/heraldctl
# and uses that directory as the whole build context (a few MB, nothing from the repository is
# sent). By hand:
#     cargo build --release -p herald -p heraldctl
#     ctx=$(mktemp -d) && mkdir "$ctx/bin" && strip -o "$ctx/bin/herald" target/release/herald
#     docker build -f deploy/docker/herald.Dockerfile -t herald:dev "$ctx" && rm -rf "$ctx"
#
# The binary links glibc dynamically: build it on Debian bookworm (glibc 2.36) or older, or with a
# bookworm toolchain; build-images.sh runs `herald --version` in the image to catch a mismatch.
#
# Why not multi-stage: the machine this was written on has no registry, so no Rust toolchain image
# can be pulled. Where a registry is reachable, this variant builds from source (context: the
# repository root, which then needs a .dockerignore excluding target/ and .git/):
#
#     # syntax=docker/dockerfile:1
#     ARG RUST_VERSION=1.85          # workspace rust-version; any newer stable works too
#     FROM rust:${RUST_VERSION}-bookworm AS build
#     ARG CARGO_PROFILE=release      # build arg: cargo profile (target dir name = profile)
#     WORKDIR /src
#     COPY . .
#     RUN --mount=type=cache,target=/usr/local/cargo/registry \
#         --mount=type=cache,target=/src/target \
#         cargo build --locked --profile "$CARGO_PROFILE" -p herald -p heraldctl && \
#         mkdir /out && strip -o /out/herald "target/$CARGO_PROFILE/herald" && \
#         strip -o /out/heraldctl "target/$CARGO_PROFILE/heraldctl"
#     FROM debian:bookworm-slim
#     ... the RUN/USER/ENTRYPOINT lines below, with
#     COPY --from=build /out/ /usr/local/bin/
#   docker build -f deploy/docker/herald.Dockerfile --build-arg CARGO_PROFILE=release -t herald:dev .
FROM debian:bookworm-slim

# Fixed ids so Kubernetes' runAsNonRoot can check them and file ownership on mounts is predictable.
ARG HERALD_UID=10151
ARG HERALD_GID=10151

RUN set -eux; \
    groupadd --system --gid "$HERALD_GID" herald; \
    useradd --system --uid "$HERALD_UID" --gid herald --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin herald; \
    install -d -m 0755 /etc/herald /var/lib/herald

# herald, and heraldctl when the context has it.
COPY bin/ /usr/local/bin/

# herald's read-only gRPC API (api.listen in the config; 127.0.0.1:50151 unless configured).
EXPOSE 50151/tcp

USER ${HERALD_UID}:${HERALD_GID}

ENTRYPOINT ["herald"]
CMD ["run", "--config", "/etc/herald/config.yaml"]
