#!/bin/sh
# .ci/deps.sh build|test|cross|initramfs|chaos|image: install what building and testing dotproxy need.
#
# Checks that what building (build) or building and testing (test) dotproxy needs is
# installed. As root on a machine with apt-get, installs what is missing; otherwise prints
# the apt-get command to run and exits 1. Quiet when nothing is missing. make runs it
# (build: make, make deps; test: make test; cross: make cross), and so does the Dockerfile.
#
#   build: musl-gcc (musl-tools), make, gcc + libc headers (for the host tool brssl), ar
#          (binutils); while bearssl/ is not fetched yet (.ci/fetch.sh), dpkg-dev when
#          BearSSL may come from Debian, or curl and ca-certificates when BEARSSL_FROM=tarball
#          is to download it.
#   test:  build's, plus unbound, dig (dnsutils), kdig (knot-dnsutils), openssl, ps (procps), ip (iproute2),
#          /usr/bin/python3 with the modules dns (python3-dnspython), pytest (python3-pytest),
#          yaml (python3-yaml) and cryptography (python3-cryptography: tests/test_differential.py
#          signs a DNSSEC zone with dnspython; tests/tlsattack.py, the scripted TLS attacker of
#          tests/test_attack_tls.py, uses its AEAD ciphers); shellcheck, systemd-analyze (systemd) for the deployment files;
#          clang with its sanitizer and libFuzzer runtimes (clang, libclang-rt-dev) for make fuzz
#          and make test-asan, and valgrind (tests/test_valgrind.py); the Prometheus parser
#          (python3-prometheus-client) and promtool (prometheus) for tests/test_observe.py;
#          capsh (libcap2-bin), conntrack, nft (nftables), dnsmasq (dnsmasq-base) and the
#          Kubernetes models (python3-kubernetes) for tests/test_kubernetes.py; bwrap
#          (bubblewrap), seccomp (python3-seccomp) and busybox (busybox-static) for
#          tests/test_openwrt.py.
#   cross: (make cross, make test-cross) build's, plus Debian's cross compilers for aarch64,
#          armhf, mips and mipsel, dpkg-dev (musl's source), qemu-user-static.
#          "cross ARCH..." (what .ci/cross.sh asks for, and the Dockerfile for its one target):
#          only the cross compilers of those ARCHes (.ci/cross.sh arches) and dpkg-dev, what
#          building their musl needs; no qemu-user-static.
#   chaos: (make chaos) Knot Resolver (knot-resolver), to run side by side with dotproxy and
#          unbound; its service is kept from starting, as unbound's.
#   initramfs: (make test-initramfs) a static busybox (busybox-static), qemu-system-x86_64
#          (qemu-system-x86) and a Debian kernel with its modules (linux-image-cloud-amd64,
#          unless /boot already has a vmlinuz whose /lib/modules tree exists).
#   image: (make test-image) buildah and skopeo (the multi-architecture image and its manifest
#          list), mmdebstrap (the build stage's Debian base, made from Debian's archive), file,
#          qemu-user-static (the arm64 and arm/v7 binaries run).
set -eu

mode=${1:-build}
case $mode in
build | test | cross | initramfs | chaos | image) ;;
*)
	echo "usage: $0 build|test|cross|initramfs|chaos|image" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
missing=

# The cross compilers (GNU triplets) that cross checks, and whether it wants qemu-user-static.
cross_triplets="aarch64-linux-gnu arm-linux-gnueabihf mips-linux-gnu mipsel-linux-gnu"
cross_qemu=1
if [ "$mode" = cross ] && [ $# -gt 1 ]; then
	shift
	cross_triplets=
	for a in "$@"; do
		t=$(sh "$root/.ci/cross.sh" triplet "$a") || exit 2
		cross_triplets="$cross_triplets $t"
	done
	cross_qemu=
fi

have() {
	command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}

# need PACKAGE COMMAND...: PACKAGE is missing unless COMMAND succeeds.
need() {
	pkg=$1
	shift
	if ! "$@" >/dev/null 2>&1; then
		case " $missing " in
		*" $pkg "*) ;;
		*) missing="${missing:+$missing }$pkg" ;;
		esac
	fi
}

check() {
	need musl-tools have musl-gcc
	need make have make
	need gcc have gcc
	need libc6-dev test -f /usr/include/stdio.h
	need binutils have ar
	# BearSSL is fetched from Debian's source package unless it is already in bearssl/,
	# or another way is forced (BEARSSL_FROM=tarball|dir, BEARSSL_SRC=dir); BEARSSL_FROM=tarball
	# without BEARSSL_TARBALL downloads it.
	if [ ! -f "$root/bearssl/.source" ] && [ -z "${BEARSSL_SRC:-}" ]; then
		case ${BEARSSL_FROM:-} in
		tarball)
			if [ -z "${BEARSSL_TARBALL:-}" ]; then
				need curl downloader
				need ca-certificates test -f /etc/ssl/certs/ca-certificates.crt
			fi
			;;
		dir) ;;
		*) if have apt-get; then need dpkg-dev have dpkg-source; fi ;;
		esac
	fi
	if [ "$mode" = test ]; then
		need unbound have unbound
		need dnsutils have dig
		need knot-dnsutils have kdig
		need openssl have openssl
		need procps have ps
		need iproute2 have ip
		need python3 test -x /usr/bin/python3
		need python3-dnspython /usr/bin/python3 -c 'import dns.message'
		need python3-pytest /usr/bin/python3 -c 'import pytest'
		need python3-yaml /usr/bin/python3 -c 'import yaml'
		need python3-cryptography /usr/bin/python3 -c 'import cryptography.hazmat.primitives.ciphers.aead'
		need python3-prometheus-client /usr/bin/python3 -c 'import prometheus_client.parser'
		need prometheus have promtool
		need shellcheck have shellcheck
		# tests/test_kubernetes.py: capsh, conntrack, nft, dnsmasq (the binary, no service),
		# the Kubernetes API models (schema of the manifest)
		need libcap2-bin have capsh
		need conntrack have conntrack
		need nftables have nft
		need dnsmasq-base have dnsmasq
		need python3-kubernetes /usr/bin/python3 -c 'import kubernetes.client'
		need systemd have systemd-analyze
		need clang have clang
		need libclang-rt-dev clang_fuzzer_runtime
		need valgrind have valgrind
		# tests/test_openwrt.py: a real dnsmasq in front of dotproxy, bwrap's empty root,
		# the seccomp list loaded by libseccomp, busybox ash (OpenWrt's shell)
		need dnsmasq-base have dnsmasq
		need bubblewrap have bwrap
		need python3-seccomp /usr/bin/python3 -c 'import seccomp'
		need busybox-static have busybox
	fi
	if [ "$mode" = cross ]; then
		for t in $cross_triplets; do
			need "gcc-$t" have "$t-gcc"
		done
		need dpkg-dev have dpkg-source
		if [ -n "$cross_qemu" ]; then
			need qemu-user-static have qemu-mips-static
		fi
	fi
	if [ "$mode" = chaos ]; then
		need knot-resolver have kresd
	fi
	if [ "$mode" = image ]; then
		need buildah have buildah
		need skopeo have skopeo
		need mmdebstrap have mmdebstrap
		need file have file
		need qemu-user-static have qemu-aarch64-static
	fi
	if [ "$mode" = initramfs ]; then
		need busybox-static busybox_static
		need qemu-system-x86 have qemu-system-x86_64
		need linux-image-cloud-amd64 kernel_with_modules
	fi
}

# curl or wget, for the BearSSL download.
downloader() {
	have curl || have wget
}

# clang's libFuzzer and ASan runtimes (libclang-rt-dev pulls in the current version's).
clang_fuzzer_runtime() {
	for f in /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
		/usr/lib/llvm-*/lib/clang/*/lib/*/libclang_rt.fuzzer*.a; do
		[ -f "$f" ] && return 0
	done
	return 1
}

# A statically linked /bin/busybox (the busybox package's is dynamic).
busybox_static() {
	[ -x /bin/busybox ] && dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'
}

# Some /boot/vmlinuz-VERSION with /lib/modules/VERSION/modules.dep.
kernel_with_modules() {
	for k in /boot/vmlinuz-*; do
		[ -f "/lib/modules/${k#/boot/vmlinuz-}/modules.dep" ] && return 0
	done
	return 1
}

check
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "deps.sh: missing: $missing" >&2
	echo "install them with: sudo apt-get install $missing"
	exit 1
fi

echo "deps.sh: installing: $missing"
export DEBIAN_FRONTEND=noninteractive

# unbound is only a test peer here: keep its service from starting (and, on Debian, from
# taking over port 53 or resolv.conf) while it is installed. policy-rc.d denies service
# starts from maintainer scripts; one the machine already has is left alone.
policy=
case " $missing " in
*" unbound "* | *" knot-resolver "*)
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		policy=/usr/sbin/policy-rc.d
		printf '#!/bin/sh\n# temporary, from dotproxy .ci/deps.sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	;;
esac

apt-get update -qq
# shellcheck disable=SC2086 # $missing is a space-separated list of package names
apt-get install -y -qq --no-install-recommends $missing </dev/null

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
	case " $missing " in
	*" unbound "*)
		systemctl disable --now unbound.service unbound-resolvconf.service >/dev/null 2>&1 || true
		;;
	esac
	case " $missing " in
	*" knot-resolver "*)
		systemctl disable --now kresd@1.service >/dev/null 2>&1 || true
		;;
	esac
fi
if [ -n "$policy" ]; then
	rm -f "$policy"
	trap - EXIT
fi

missing=
check
if [ -n "$missing" ]; then
	echo "deps.sh: still missing after apt-get install: $missing" >&2
	exit 1
fi
