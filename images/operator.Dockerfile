# syntax=docker/dockerfile:1
# The `gost-operator` control plane.
#
#   docker build -f images/operator.Dockerfile -t gost-rs/gost-operator:0.1.0 .
#
# Same shape as gost.Dockerfile: a build stage with the toolchain, then `scratch` with only the
# stripped binary and the libraries it links (images/rootfs.sh), as the non-root uid 65532.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gost-operator --bin gost-operator \
    && images/rootfs.sh target/release/gost-operator /rootfs

FROM scratch
LABEL org.opencontainers.image.title="gost-operator" \
      org.opencontainers.image.description="Kubernetes operator for gost-rs: GostService and GostChain, sidecar injection, gateways" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rootfs /
USER 65532:65532
ENV HOME=/home/nonroot
# 8080: /metrics, /healthz, /readyz (plain HTTP); 9443: the injection webhook (HTTPS).
EXPOSE 8080 9443
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/gost-operator"]
