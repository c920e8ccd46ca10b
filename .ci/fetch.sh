#!/bin/sh
# .ci/fetch.sh: fetch BearSSL's or musl's source, checked against pinned SHA-256 sums.
#
# Usage:
#   sh .ci/fetch.sh bearssl [DEST]   BearSSL 0.6 into DEST (default: bearssl/ at the top of
#                                    the repository), for make and the Docker build
#   sh .ci/fetch.sh musl [DEST]      musl 1.2.3 into DEST (default: build/musl-src/), for
#                                    make cross (.ci/cross.sh)
#
# DEST/.source records where the tree came from; it is written last, so a DEST with a .source
# is complete. When it is there already, nothing is fetched (exit 0). A BearSSL DEST without
# one (an interrupted fetch?) is an error; a musl one is replaced.
#
# BearSSL, one of three ways:
#   tarball  the release tarball, downloaded from BEARSSL_URL with curl or wget, or the file
#            BEARSSL_TARBALL; its SHA-256 must be BEARSSL_SHA256 below (a mismatch stops
#            everything, never falls back to another way)
#   debian   Debian's source package (apt-get source bearssl), whose orig tarball must be
#            BEARSSL_DEBIAN_SHA256 below. apt-get runs with a temporary deb-src list derived
#            from the machine's own apt sources (one-line .list and deb822 .sources) and with
#            private lists and cache, passed as -o Dir::Etc::... options: the system's apt
#            configuration and package lists are never touched, and no mirror is named here
#   dir      a copy of the unpacked tree BEARSSL_SRC
# musl: the tree MUSL_SRC, else the release tarball MUSL_TARBALL, else Debian's source package
# (its orig tarball is the release tarball), always checked against MUSL_SHA256 below.
#
# Environment:
#   BEARSSL_FROM     tarball | debian | dir: force one way (default: dir if BEARSSL_SRC is set,
#                    else tarball, else debian)
#   BEARSSL_SRC      an unpacked BearSSL 0.6 tree
#   BEARSSL_TARBALL  an already downloaded bearssl-0.6.tar.gz
#   BEARSSL_URL      where to download it (default: https://bearssl.org/bearssl-0.6.tar.gz)
#   MUSL_SRC         an unpacked musl 1.2.3 tree
#   MUSL_TARBALL     an already downloaded musl-1.2.3.tar.gz
set -eu

# The pins (not taken from the environment).
BEARSSL_VERSION=0.6
BEARSSL_SHA256=6705bba1714961b41a728dfc5debbe348d2966c117649392f8c8139efc83ff14
# Debian's repacked upstream tarball (0.6 minus the prebuilt T0Comp.exe); apt checks it against
# the signed Sources index, and it is pinned too so every way of fetching gives the same code.
BEARSSL_DEBIAN_ORIG=bearssl_0.6+dfsg.1.orig.tar.xz
BEARSSL_DEBIAN_SHA256=102a625bd8f6155260867a50c508df8d8c3f796985dd744df1a68e5cd1a79004
MUSL_VERSION=1.2.3
# musl-1.2.3.tar.gz from musl.libc.org; Debian's musl_1.2.3.orig.tar.gz is the same file.
MUSL_SHA256=7d5b0b6062521e4627e099e4c9dc8248d32a30285e959b7eecaa780cf8cfd4a4

BEARSSL_FROM=${BEARSSL_FROM:-}
BEARSSL_SRC=${BEARSSL_SRC:-}
BEARSSL_TARBALL=${BEARSSL_TARBALL:-}
BEARSSL_URL=${BEARSSL_URL:-https://bearssl.org/bearssl-$BEARSSL_VERSION.tar.gz}
MUSL_SRC=${MUSL_SRC:-}
MUSL_TARBALL=${MUSL_TARBALL:-}

usage() {
	echo "usage: $0 bearssl|musl [DEST]" >&2
	exit 2
}

root=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-}
case $what in
bearssl) dest=${2:-$root/bearssl} ;;
musl) dest=${2:-$root/build/musl-src} ;;
*) usage ;;
esac
[ $# -le 2 ] || usage

if [ -f "$dest/.source" ]; then
	echo "$what: $dest already fetched (from $(cat "$dest/.source"))"
	exit 0
fi

# The work directory, next to DEST (same file system: the last step is a rename).
mkdir -p "$(dirname "$dest")"
work="$(cd "$(dirname "$dest")" && pwd)/$(basename "$dest").tmp.$$"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' HUP INT TERM

# apt_private_setup makes $work/apt: a deb-src list derived from the machine's own apt sources
# and private lists and cache. apt_private runs apt-get with it.
apt_private_setup() {
	apt="$work/apt"
	mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" || return 1
	: >"$apt/sources.list" || return 1
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -f "$f" ] || continue
		sed -n -E 's/^[[:space:]]*deb[[:space:]]+/deb-src /p' "$f" >"$apt/sources.list.d/$(basename "$f" | tr / _).list"
	done
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		sed -E 's/^Types:.*/Types: deb-src/' "$f" >"$apt/sources.list.d/$(basename "$f")"
	done
}

apt_private() {
	set -- -o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/sources.list.d" \
		-o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o "APT::Sandbox::User=root" "$@"
	if [ "$(id -u)" != 0 ]; then
		set -- -o "Debug::NoLocking=1" "$@"
	fi
	apt-get "$@"
}

# sha256 FILE: its SHA-256 in hex (nothing if it cannot be read).
sha256() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1"
	else
		shasum -a 256 "$1" # macOS, BSDs
	fi 2>/dev/null | cut -d ' ' -f 1
}

have_apt_source() {
	command -v apt-get >/dev/null 2>&1 && command -v dpkg-source >/dev/null 2>&1
}

# ------------------------------------------------------------------------------- BearSSL
# Each fetch_* leaves an unpacked tree in $work/tree and the description in $work/source,
# or returns non-zero having said why.
fetch_dir() {
	if [ ! -f "$BEARSSL_SRC/inc/bearssl.h" ] || [ ! -d "$BEARSSL_SRC/src" ]; then
		echo "bearssl: BEARSSL_SRC=$BEARSSL_SRC is not a BearSSL source tree" >&2
		return 1
	fi
	mkdir "$work/tree" || return 1
	(cd "$BEARSSL_SRC" && tar cf - --exclude=./build --exclude=./.git .) | (cd "$work/tree" && tar xf -) || return 1
	echo "dir $(cd "$BEARSSL_SRC" && pwd)" >"$work/source"
}

fetch_tarball() {
	tgz="$work/bearssl-$BEARSSL_VERSION.tar.gz"
	if [ -n "$BEARSSL_TARBALL" ]; then
		cp "$BEARSSL_TARBALL" "$tgz" || return 1
		from="$BEARSSL_TARBALL"
	else
		echo "bearssl: downloading $BEARSSL_URL"
		if command -v curl >/dev/null 2>&1; then
			curl -fsSL --proto =https --connect-timeout 10 --max-time 120 -o "$tgz" "$BEARSSL_URL" || return 1
		elif command -v wget >/dev/null 2>&1; then
			wget -q --timeout=10 --tries=2 -O "$tgz" "$BEARSSL_URL" || return 1
		else
			echo "bearssl: neither curl nor wget is installed" >&2
			return 1
		fi
		from="$BEARSSL_URL"
	fi
	got=$(sha256 "$tgz")
	if [ "$got" != "$BEARSSL_SHA256" ]; then
		echo "bearssl: CHECKSUM MISMATCH for $from" >&2
		echo "bearssl:   expected sha256 $BEARSSL_SHA256" >&2
		echo "bearssl:   got      sha256 $got" >&2
		exit 1 # never fall back silently after a bad download
	fi
	mkdir "$work/x" || return 1
	tar xzf "$tgz" -C "$work/x" || return 1
	mv "$work/x/bearssl-$BEARSSL_VERSION" "$work/tree" || return 1
	echo "tarball $from sha256=$got" >"$work/source"
}

fetch_debian() {
	if ! have_apt_source; then
		echo "bearssl: the Debian way needs apt-get and dpkg-source (package dpkg-dev)" >&2
		return 1
	fi
	apt_private_setup && mkdir -p "$work/deb" || return 1
	echo "bearssl: apt-get source bearssl (temporary deb-src list, system apt state untouched)"
	apt_private -qq update || echo "bearssl: apt-get update reported errors, trying anyway" >&2
	(cd "$work/deb" && apt_private -q source bearssl) || return 1
	got=$(sha256 "$work/deb/$BEARSSL_DEBIAN_ORIG")
	if [ "$got" != "$BEARSSL_DEBIAN_SHA256" ]; then
		echo "bearssl: Debian's $BEARSSL_DEBIAN_ORIG is not the expected one" >&2
		echo "bearssl:   expected sha256 $BEARSSL_DEBIAN_SHA256" >&2
		echo "bearssl:   got      sha256 ${got:-(no such file)}" >&2
		ls "$work/deb" >&2
		exit 1
	fi
	for d in "$work/deb/bearssl-$BEARSSL_VERSION"*; do
		[ -d "$d" ] && mv "$d" "$work/tree"
	done
	[ -d "$work/tree" ] || return 1
	dsc=$(cd "$work/deb" && ls ./*.dsc)
	echo "debian ${dsc#./} ($BEARSSL_DEBIAN_ORIG sha256=$got)" >"$work/source"
}

fail_all() {
	cat >&2 <<EOF
bearssl: could not get BearSSL $BEARSSL_VERSION. Three ways:
  1. network: make bearssl BEARSSL_FROM=tarball
       (downloads $BEARSSL_URL, sha256 $BEARSSL_SHA256;
        or download it elsewhere and pass BEARSSL_TARBALL=/path/to/bearssl-$BEARSSL_VERSION.tar.gz)
  2. Debian:  make bearssl BEARSSL_FROM=debian
       (apt-get source bearssl through a temporary deb-src list; needs dpkg-dev and a Debian mirror)
  3. a local tree: make bearssl BEARSSL_SRC=/path/to/bearssl-$BEARSSL_VERSION
EOF
	exit 1
}

fetch_bearssl() {
	if [ -d "$dest" ]; then
		echo "bearssl: $dest/ exists but has no .source (an interrupted fetch?): remove it first" >&2
		exit 1
	fi
	mode=$BEARSSL_FROM
	if [ -z "$mode" ] && [ -n "$BEARSSL_SRC" ]; then mode=dir; fi
	case $mode in
	dir)
		[ -n "$BEARSSL_SRC" ] || {
			echo "bearssl: BEARSSL_FROM=dir needs BEARSSL_SRC=/path" >&2
			exit 1
		}
		fetch_dir || fail_all
		;;
	tarball)
		fetch_tarball || fail_all
		;;
	debian)
		fetch_debian || fail_all
		;;
	'')
		fetch_tarball || {
			echo "bearssl: tarball unavailable, trying Debian's source package" >&2
			fetch_debian
		} || fail_all
		;;
	*)
		echo "bearssl: BEARSSL_FROM must be tarball, debian or dir (got '$mode')" >&2
		exit 1
		;;
	esac

	tree="$work/tree"
	if [ ! -f "$tree/inc/bearssl.h" ] || [ ! -f "$tree/src/inner.h" ] || [ ! -f "$tree/tools/ta.c" ]; then
		echo "bearssl: the fetched tree does not look like BearSSL $BEARSSL_VERSION" >&2
		exit 1
	fi
	mkdir -p "$tree/build"
	mv "$work/source" "$tree/.source"
	mv "$tree" "$dest"
	echo "bearssl: fetched from $(cat "$dest/.source")"
}

# ------------------------------------------------------------------------------- musl
fetch_musl() {
	rm -rf "$dest"
	tgz="$work/musl-$MUSL_VERSION.tar.gz"
	if [ -n "$MUSL_SRC" ]; then
		if [ ! -f "$MUSL_SRC/configure" ] || [ ! -d "$MUSL_SRC/arch/mips" ]; then
			echo "musl: MUSL_SRC=$MUSL_SRC is not a musl tree" >&2
			exit 1
		fi
		mkdir "$work/tree"
		(cd "$MUSL_SRC" && tar cf - --exclude=./.git .) | (cd "$work/tree" && tar xf -)
		echo "dir $(cd "$MUSL_SRC" && pwd)" >"$work/tree/.source"
		mv "$work/tree" "$dest"
		echo "musl: $dest from $MUSL_SRC"
		return 0
	elif [ -n "$MUSL_TARBALL" ]; then
		cp "$MUSL_TARBALL" "$tgz"
		from=$MUSL_TARBALL
	else
		have_apt_source || {
			echo "musl: needs apt-get and dpkg-source (dpkg-dev), or MUSL_TARBALL=/path/to/musl-$MUSL_VERSION.tar.gz" >&2
			exit 1
		}
		apt_private_setup && mkdir -p "$work/deb" || exit 1
		echo "musl: apt-get source --download-only musl (temporary deb-src list, system apt state untouched)"
		apt_private -qq update || echo "musl: apt-get update reported errors, trying anyway" >&2
		(cd "$work/deb" && apt_private -q -qq source --download-only musl) || exit 1
		mv "$work/deb/musl_$MUSL_VERSION.orig.tar.gz" "$tgz" || exit 1
		from="Debian musl_$MUSL_VERSION.orig.tar.gz"
	fi
	got=$(sha256 "$tgz")
	if [ "$got" != "$MUSL_SHA256" ]; then
		echo "musl: CHECKSUM MISMATCH for $from" >&2
		echo "musl:   expected sha256 $MUSL_SHA256" >&2
		echo "musl:   got      sha256 $got" >&2
		exit 1
	fi
	mkdir "$work/x"
	tar xzf "$tgz" -C "$work/x"
	mv "$work/x/musl-$MUSL_VERSION" "$work/tree"
	echo "tarball $from sha256=$got" >"$work/tree/.source"
	mv "$work/tree" "$dest"
	echo "musl: $dest from $from"
}

"fetch_$what"
