#!/bin/sh
# tests/initramfs/build.sh OUT.cpio.gz DOTPROXY CAFILE KERNEL-VERSION
#
# Builds an initramfs holding a static busybox, the static DOTPROXY binary (as /sbin/dotproxy),
# CAFILE (as /root.pem), tests/initramfs/init (as /init) and the kernel modules the network
# needs (virtio_net, virtio_pci and their dependencies, from /lib/modules/KERNEL-VERSION,
# unless built in). No root needed: cpio records every file as owned by 0:0.
set -eu

[ $# -eq 4 ] || { echo "usage: $0 OUT.cpio.gz DOTPROXY CAFILE KERNEL-VERSION" >&2; exit 2; }
out=$1 dotproxy=$2 ca=$3 kver=$4
here=$(cd "$(dirname "$0")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}
moddir=/lib/modules/$kver

# The busybox must be static: nothing else is in the image.
case $(od -An -tx1 -j16 -N2 "$busybox" | tr -d ' \n') in
0200) ;; # ET_EXEC, little-endian (not ET_DYN, which a dynamic or PIE busybox would be)
*) echo "build.sh: $busybox is not a static executable (install busybox-static)" >&2; exit 1 ;;
esac
[ -f "$moddir/modules.dep" ] || { echo "build.sh: no $moddir/modules.dep" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/sbin" "$stage/etc" "$stage/lib/modules" "$stage/proc" \
	"$stage/sys" "$stage/dev" "$stage/tmp"
cp "$busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
cp "$dotproxy" "$stage/sbin/dotproxy"
cp "$ca" "$stage/root.pem"
cp "$here/init" "$stage/init"
chmod 755 "$stage/init" "$stage/bin/busybox" "$stage/sbin/dotproxy"
: >"$stage/etc/modules"

# add MODULE: its dependencies first, then itself (once); nothing if it is built in.
# A subshell per call, so that the recursion has its own variables.
add() (
	name=$1
	grep -q "/$name\.ko[.a-z]*\$" "$moddir/modules.builtin" 2>/dev/null && return 0
	line=$(grep -E "(^|/)$name\.ko(\.[a-z]+)?:" "$moddir/modules.dep") ||
		{ echo "build.sh: module $name not found in $moddir" >&2; exit 1; }
	path=${line%%:*}
	for dep in ${line#*:}; do
		d=${dep##*/}
		add "${d%%.ko*}"
	done
	base=${path##*/}
	base=${base%%.ko*}.ko
	grep -qx "$base" "$stage/etc/modules" && return 0
	case $path in
	*.ko) cp "$moddir/$path" "$stage/lib/modules/$base" ;;
	*.ko.xz) xz -dc "$moddir/$path" >"$stage/lib/modules/$base" ;;
	*.ko.zst) zstd -qdc "$moddir/$path" >"$stage/lib/modules/$base" ;;
	*.ko.gz) gzip -dc "$moddir/$path" >"$stage/lib/modules/$base" ;;
	*) echo "build.sh: cannot unpack $path" >&2; exit 1 ;;
	esac
	echo "$base" >>"$stage/etc/modules"
)
add virtio_pci
add virtio_net

(cd "$stage" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -9 >"$out"
echo "build.sh: $out: $(wc -c <"$out") bytes ($(tr '\n' ' ' <"$stage/etc/modules"))"
