#!/bin/sh
# openwrt/dist.sh: the release tarball the OpenWrt package downloads, made from a git ref.
#
#   sh openwrt/dist.sh [-u] [REF] [OUTDIR]
#
# Writes OUTDIR/dotproxy-VERSION.tar.gz (OUTDIR default: build/dist) with everything git
# tracks at REF (default HEAD) under dotproxy-VERSION/ but openwrt/ (the package recipe lives
# in the packages feed, and a tarball holding its own hash could never match it), VERSION
# being the top Makefile's at REF, and prints its SHA-256: upload it as the release asset
#   https://github.com/dotproxy/dotproxy/releases/download/vVERSION/dotproxy-VERSION.tar.gz
# and put the sum in openwrt/Makefile's PKG_HASH (-u does that, and PKG_VERSION).
#
# The same REF always gives the same bytes: names sorted, owner 0, every time stamp the
# commit's, gzip without name or time. The MIT licence's text goes in as LICENSE when REF
# has none (README.md says "MIT"; dotproxy.c has the copyright line): the package's
# PKG_LICENSE_FILES needs the file. Needs git, GNU tar, gzip and sha256sum.
set -eu

update=0
if [ "${1-}" = -u ]; then
	update=1
	shift
fi
ref=${1:-HEAD}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${2:-$top/build/dist}

cd "$top"
git rev-parse --verify -q "$ref^{commit}" >/dev/null || {
	echo "dist.sh: $ref is not a commit" >&2
	exit 1
}
version=$(git show "$ref:Makefile" | sed -n 's/^VERSION[[:space:]]*?=[[:space:]]*\([^[:space:]]*\).*/\1/p' | head -n 1)
[ -n "$version" ] || {
	echo "dist.sh: no VERSION in the Makefile at $ref" >&2
	exit 1
}
epoch=$(git log -1 --format=%ct "$ref")
name=dotproxy-$version

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' HUP INT TERM
git archive --format=tar --prefix="$name/" "$ref" | tar -x -C "$tmp"
rm -rf "${tmp:?}/$name/openwrt"

if [ ! -e "$tmp/$name/LICENSE" ]; then
	holder=$(git show "$ref:dotproxy.c" | sed -n 's/^ \* Copyright (c) \(.*\)\. MIT licen[cs]e.*/\1/p' | head -n 1)
	[ -n "$holder" ] || holder="the dotproxy authors"
	cat >"$tmp/$name/LICENSE" <<EOF
MIT License

Copyright (c) $holder

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
EOF
	chmod 644 "$tmp/$name/LICENSE"
	echo "dist.sh: $ref has no LICENSE: the MIT text was added (commit one to make this unnecessary)" >&2
fi

mkdir -p "$out"
tgz="$out/$name.tar.gz"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=gnu \
	-C "$tmp" -cf - "$name" | gzip -9 -n >"$tgz.tmp"
mv "$tgz.tmp" "$tgz"
sum=$(sha256sum "$tgz" | cut -d ' ' -f 1)
echo "$tgz"
echo "sha256 $sum"

if [ $update = 1 ]; then
	commit=$(git rev-parse "$ref^{commit}")
	sed -i -e "s/^PKG_VERSION:=.*/PKG_VERSION:=$version/" -e "s/^PKG_HASH:=.*/PKG_HASH:=$sum/" \
		-e "s/^# Release source: commit [0-9a-f]*/# Release source: commit $commit/" \
		"$here/Makefile"
	echo "openwrt/Makefile: PKG_VERSION $version, PKG_HASH $sum"
fi
