#!/bin/sh
# .ci/cross.sh: the musl cross toolchains that make cross builds dotproxy-<ARCH> with.
#
# Usage:
#   sh .ci/cross.sh source [ARCH...]   what building the toolchains of ARCH... needs: their cross
#                                      packages (.ci/deps.sh cross ARCH...; all of them when no
#                                      ARCH is given) unless every one is built
#                                      already, and musl's source in $CROSS_DIR/musl-src
#                                      (.ci/fetch.sh musl)
#   sh .ci/cross.sh toolchain ARCH...  source, then for each ARCH: musl built with Debian's cross
#                                      compiler (gcc-<triplet>) and installed into
#                                      $CROSS_DIR/musl-ARCH with its musl-gcc wrapper
#                                      (bin/musl-gcc: a gcc specs file pointing the cross gcc at
#                                      musl's headers, crt files and libc.a). Nothing is done
#                                      for an ARCH already built from the current source.
#   sh .ci/cross.sh triplet ARCH       print ARCH's GNU triplet, the prefix of its gcc and ar
#   sh .ci/cross.sh arches             print the ARCHes known here
#
# ARCH: aarch64, armhf (ARMv7 hard float), mips (32-bit big-endian), mipsel.
# make cross runs "source ARCH..." once, then "toolchain ARCH" for each target (side by side
# under make -j: musl's own make shares make's job slots), then builds BearSSL and dotproxy
# with $CROSS_DIR/musl-ARCH/bin/musl-gcc and <triplet>-ar.
#
# Environment:
#   CROSS_DIR     where musl-src/ and musl-ARCH/ go (default: build/ at the top of the repository)
#   MUSL_SRC, MUSL_TARBALL
#                 where musl's source comes from (see .ci/fetch.sh; default Debian's package)
#   MUSL_CFLAGS   musl's CFLAGS (default: -Os, no unwind tables)
#   MAKE          the make that builds musl (default: make)
set -eu

ci=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$ci")
CROSS_DIR=${CROSS_DIR:-$root/build}
MUSL_CFLAGS=${MUSL_CFLAGS:--Os -fno-asynchronous-unwind-tables -fno-unwind-tables}
MAKE=${MAKE:-make}
ARCHES="aarch64 armhf mips mipsel"

usage() {
	echo "usage: $0 source [ARCH...] | toolchain ARCH... | triplet ARCH | arches" >&2
	exit 2
}

triplet() {
	case $1 in
	aarch64) echo aarch64-linux-gnu ;;
	armhf) echo arm-linux-gnueabihf ;;
	mips) echo mips-linux-gnu ;;
	mipsel) echo mipsel-linux-gnu ;;
	*)
		echo "cross: unknown ARCH '$1' (known: $ARCHES)" >&2
		exit 2
		;;
	esac
}

# built ARCH: its musl is installed, from the musl source there now (its marker is newer than
# the source's .source).
built() {
	[ -f "$src/.source" ] && [ -x "$CROSS_DIR/musl-$1/bin/musl-gcc" ] &&
		[ -f "$CROSS_DIR/musl-$1/.installed" ] &&
		[ -z "$(find "$src/.source" -newer "$CROSS_DIR/musl-$1/.installed")" ]
}

# source ARCH...: the packages, when something is to be fetched or built, and musl's source.
source_() {
	todo=
	[ -f "$src/.source" ] || todo=1
	for a in "$@"; do
		built "$a" || todo=1
	done
	if [ -n "$todo" ]; then
		sh "$ci/deps.sh" cross "$@"
	fi
	if [ ! -f "$src/.source" ]; then
		sh "$ci/fetch.sh" musl "$src"
	fi
}

toolchain() {
	arch=$1
	t=$(triplet "$arch")
	prefix=$CROSS_DIR/musl-$arch
	obj=$CROSS_DIR/musl-$arch.obj
	log=$CROSS_DIR/musl-$arch.log
	if built "$arch"; then
		return 0
	fi
	rm -rf "$obj" "$prefix"
	mkdir -p "$obj"
	echo "  MUSL    $prefix ($t-gcc)"
	(cd "$obj" && "$src/configure" --target="$t" CC="$t-gcc" CROSS_COMPILE="$t-" \
		CFLAGS="$MUSL_CFLAGS" --prefix="$prefix" --disable-shared --enable-wrapper=gcc \
		>configure.log 2>&1) || {
		tail -n 30 "$obj/configure.log" >&2
		exit 1
	}
	"$MAKE" -C "$obj" -s install >"$log" 2>&1 || {
		tail -n 30 "$log" >&2
		exit 1
	}
	rm -rf "$obj" "$log"
	touch "$prefix/.installed"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
source | toolchain)
	if [ "$cmd" = toolchain ] && [ $# -eq 0 ]; then usage; fi
	for a in "$@"; do triplet "$a" >/dev/null; done
	mkdir -p "$CROSS_DIR"
	CROSS_DIR=$(cd "$CROSS_DIR" && pwd)
	src=$CROSS_DIR/musl-src
	# Only make's job-server flags reach musl's make, not the variables given to ours (a
	# CFLAGS=... for dotproxy would replace musl's own).
	case ${MAKEFLAGS:-} in
	'-- '* | --) MAKEFLAGS= ;;
	*' -- '*) MAKEFLAGS=${MAKEFLAGS%% -- *} ;;
	esac
	export MAKEFLAGS
	unset MAKEOVERRIDES 2>/dev/null || true
	source_ "$@"
	if [ "$cmd" = toolchain ]; then
		for a in "$@"; do toolchain "$a"; done
	fi
	;;
triplet)
	[ $# -eq 1 ] || usage
	triplet "$1"
	;;
arches)
	[ $# -eq 0 ] || usage
	echo "$ARCHES"
	;;
*) usage ;;
esac
