# dotproxy container image: a static musl binary on an empty base.
#
#   docker build -t dotproxy .
#   docker run -p 53:53/udp -p 53:53/tcp dotproxy [options]
#
# Build stage: fetches the BearSSL 0.6 release tarball (SHA-256 verified by the Makefile
# before unpacking) and builds with musl-gcc. Pass --build-arg SOURCE_DATE_EPOCH=... for a
# reproducible build time stamp (without it, the mtime of dotproxy.c/anchors.pem is used).
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      musl-tools make gcc libc6-dev binutils curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build needs: a bearssl/ or a binary lying in the build context is not used.
COPY Makefile dotproxy.c anchors.pem ./
COPY tests/deps.sh tests/deps.sh
ARG SOURCE_DATE_EPOCH
RUN make BEARSSL_FROM=tarball

FROM scratch
COPY --from=build /src/dotproxy /dotproxy
# Runs as nobody. Binding port 53 as non-root needs either NET_BIND_SERVICE or
# net.ipv4.ip_unprivileged_port_start=0; Docker 20.10 and later sets that sysctl to 0 in
# each container's own network namespace, so this works unchanged. On an engine that does
# not, add --sysctl net.ipv4.ip_unprivileged_port_start=0. With --network=host the host's
# setting applies instead: lower it there, or run with --user 0:0 (NET_BIND_SERVICE is in
# Docker's default capability set; a --cap-add alone does not reach a non-root process).
USER 65534:65534
EXPOSE 53/udp 53/tcp
# No HEALTHCHECK: the image has no shell and no tool to run one (HEALTHCHECK CMD runs inside
# the container). Check from outside instead (dig @host, or an orchestrator's TCP probe on 53).
# SIGTERM (docker stop) makes dotproxy exit 0; it handles signals itself as PID 1.
ENTRYPOINT ["/dotproxy"]
