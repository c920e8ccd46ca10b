# dotproxy container image: a static musl binary on an empty base.
#
#   docker build -t dotproxy .
#   docker run -p 53:53/udp -p 53:53/tcp dotproxy [options]
#
# Build stage: .ci/deps.sh installs the build tools, .ci/fetch.sh downloads the BearSSL 0.6
# release tarball and checks its SHA-256 before unpacking, make builds with musl-gcc.
# Without access to bearssl.org, either
#   - put bearssl-0.6.tar.gz in the build context (next to this file; the same SHA-256 check):
#       docker build --build-arg BEARSSL_TARBALL=bearssl-0.6.tar.gz -t dotproxy .
#   - or take Debian's source package (through a Debian mirror):
#       docker build --build-arg BEARSSL_FROM=debian -t dotproxy .
# Pass --build-arg SOURCE_DATE_EPOCH=... for a reproducible build time stamp (without it, the
# mtime of dotproxy.c/anchors.pem is used).
FROM debian:bookworm-slim AS build
WORKDIR /src
# tarball | debian (see .ci/fetch.sh); BEARSSL_TARBALL is a path in /src, the build context.
ARG BEARSSL_FROM=tarball
ARG BEARSSL_TARBALL
ARG BEARSSL_URL
COPY .ci/deps.sh .ci/fetch.sh .ci/
RUN sh .ci/deps.sh build
# Only what the build needs (.dockerignore: a bearssl/ or a binary lying in the context is not
# sent). bearssl-0.6.tar.g[z] matches the tarball if it is there, and nothing otherwise.
COPY Makefile dotproxy.c anchors.pem bearssl-0.6.tar.g[z] ./
RUN sh .ci/fetch.sh bearssl
ARG SOURCE_DATE_EPOCH
RUN make

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
# The image has no shell: the health check is the binary itself, in exec form. --probe asks
# 127.0.0.1@53 for localhost. (answered by dotproxy itself, so a frozen loop fails it and a
# slow upstream does not). Listening elsewhere: docker run --health-cmd '["/dotproxy",
# "--probe", "127.0.0.1@5353"]' (or --no-healthcheck).
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/dotproxy", "--probe"]
LABEL org.opencontainers.image.title="dotproxy" \
      org.opencontainers.image.description="DNS-over-TLS forwarder: plain DNS on port 53, every query over TLS (RFC 7858)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0"
# SIGTERM (docker stop) makes dotproxy exit 0; it handles signals itself as PID 1.
ENTRYPOINT ["/dotproxy"]
