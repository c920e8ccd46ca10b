# dotproxy container image: a static musl binary on an empty base.
#
#   docker build -t dotproxy .
#   docker run -p 53:53/udp -p 53:53/tcp dotproxy [options]
#
# Multi-architecture (linux/amd64, linux/arm64, linux/arm/v7), pushed as one manifest list:
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t REPO/dotproxy --push .
# or with buildah/podman, one platform at a time into a manifest list (README; make test-image
# does it offline): buildah build --platform linux/arm64 --format docker --manifest LIST ...
# --format docker keeps the HEALTHCHECK, which the OCI image format has no field for; buildah
# 1.28 (Debian bookworm's) leaves BUILDPLATFORM unset: --build-arg BUILDPLATFORM=linux/amd64.
# The build stage runs on the build machine's own platform (BUILDPLATFORM), never under
# emulation: for its own platform it builds ./dotproxy as make does; for another one it
# cross-compiles with make cross (arm64: aarch64, arm/v7: armhf; .ci/cross.sh builds musl for
# it with Debian's cross compiler, from Debian's musl source package or MUSL_TARBALL). Only that
# target's cross compiler is installed. Any other target platform stops the build with an error.
#
# Build stage: .ci/deps.sh installs the build tools, .ci/fetch.sh downloads the BearSSL 0.6
# release tarball and checks its SHA-256 before unpacking, make builds with musl-gcc.
# Without access to bearssl.org, either
#   - put bearssl-0.6.tar.gz in the build context (next to this file; the same SHA-256 check):
#       docker build --build-arg BEARSSL_TARBALL=bearssl-0.6.tar.gz -t dotproxy .
#   - or take Debian's source package (through a Debian mirror):
#       docker build --build-arg BEARSSL_FROM=debian -t dotproxy .
# The same for musl when cross-compiling: musl-1.2.3.tar.gz in the build context and
# --build-arg MUSL_TARBALL=musl-1.2.3.tar.gz (checked against its pinned SHA-256), else Debian's
# source package. DEBIAN_IMAGE: the build stage's base (any Debian bookworm image, e.g. a local
# one where Docker Hub is out of reach).
# Pass --build-arg SOURCE_DATE_EPOCH=... for a reproducible build time stamp (without it, the
# mtime of dotproxy.c/anchors.pem is used).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM --platform=$BUILDPLATFORM $DEBIAN_IMAGE AS build
WORKDIR /src
# tarball | debian (see .ci/fetch.sh); BEARSSL_TARBALL and MUSL_TARBALL are paths in /src, the
# build context.
ARG BEARSSL_FROM=tarball
ARG BEARSSL_TARBALL
ARG BEARSSL_URL
ARG MUSL_TARBALL
COPY .ci/deps.sh .ci/fetch.sh .ci/cross.sh .ci/
# The build tools and BearSSL's source: the same layers for every target platform (the target's
# ARGs come after them) and for every change of dotproxy.c. bearssl-0.6.tar.g[z] matches the
# tarball if it is in the context, and nothing otherwise (anchors.pem is there so that the COPY
# always has a file to copy).
RUN sh .ci/deps.sh build
COPY anchors.pem bearssl-0.6.tar.g[z] ./
RUN sh .ci/fetch.sh bearssl
ARG BUILDPLATFORM
ARG TARGETPLATFORM
# What to build, written to .arch: "native" (make: ./dotproxy) when the target is the platform
# this stage runs on (its Debian architecture: BUILDPLATFORM, or TARGETPLATFORM itself under
# emulation when a builder leaves BUILDPLATFORM unset), else make cross's name of the target
# (dotproxy-<arch>), whose cross compiler is installed here. arm64/v8 is arm64, arm is arm/v7.
RUN set -eu; \
    case $(dpkg --print-architecture) in \
    amd64) here=linux/amd64 ;; arm64) here=linux/arm64 ;; armhf) here=linux/arm/v7 ;; \
    *) here=unknown ;; \
    esac; \
    target=${TARGETPLATFORM:-$here}; target=${target%/v8}; \
    [ "$target" != linux/arm ] || target=linux/arm/v7; \
    case $target in \
    "$here") arch=native ;; \
    linux/arm64) arch=aarch64 ;; \
    linux/arm/v7) arch=armhf ;; \
    *) echo "dotproxy: cannot build for $target on $here: only linux/arm64 and linux/arm/v7" \
            "are cross-compiled (the image is built for linux/amd64, linux/arm64 and" \
            "linux/arm/v7, on linux/amd64)" >&2; \
       exit 1 ;; \
    esac; \
    echo "dotproxy: building for $target on $here (BUILDPLATFORM ${BUILDPLATFORM:-unset}): $arch"; \
    [ "$arch" = native ] || sh .ci/deps.sh cross "$arch"; \
    echo "$arch" > .arch
# Only what the build needs (.dockerignore: a bearssl/ or a binary lying in the context is not
# sent); musl-1.2.3.tar.g[z] as BearSSL's tarball above.
COPY Makefile dotproxy.c musl-1.2.3.tar.g[z] ./
ARG SOURCE_DATE_EPOCH
# The binary is ./dotproxy either way.
RUN arch=$(cat .arch); if [ "$arch" = native ]; then make -j"$(nproc)"; \
    else make -j"$(nproc)" cross CROSS_ARCHES="$arch" && cp "dotproxy-$arch" dotproxy; fi

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
