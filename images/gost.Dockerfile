# syntax=docker/dockerfile:1
# The `gost` proxy: the sidecar and gateway image the operator runs, and the standalone proxy.
#
#   docker build -f images/gost.Dockerfile -t gost-rs/gost:0.1.0 .
#
# Multi-stage: the build stage has the Rust toolchain; the image is `scratch` with only the
# stripped binary and the glibc libraries it links (images/rootfs.sh): no shell, no package
# manager. It runs as uid 65532, the uid the operator's sidecars run as.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# No debug info and no symbols in the image: 12 MiB instead of 60.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gost-proxy --bin gost \
    && images/rootfs.sh target/release/gost /rootfs

FROM scratch
LABEL org.opencontainers.image.title="gost" \
      org.opencontainers.image.description="GOST's HTTP tunnels in Rust: HTTP and SOCKS5 proxies, relay over ws, h2, gRPC, pht and h3" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs /
USER 65532:65532
ENV HOME=/home/nonroot
# The sidecar's admin port (metrics, /healthz, /readyz); service ports come from the config.
EXPOSE 15300
# No shell for a HEALTHCHECK command; Kubernetes probes /healthz and /readyz on port 15300.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/gost"]
