#!/bin/sh
# tests/openwrt/cross-strace.sh [ARCH...]: the system calls the cross-built binaries (make
# cross: dotproxy-mips, -mipsel, -armhf, -aarch64) make under qemu-user -strace while they
# start, answer --probe, a UDP and a TCP query (upstream: a loopback port with nothing
# behind it), /metrics, SIGHUP, SIGUSR1 and SIGTERM; prints them per architecture and any
# that openwrt/files/dotproxy.seccomp lacks (exit 1 then). How the list's names for the
# OpenWrt targets were found (x86_64's: strace -f of the integration tests,
# seccomp_run.py strace). qemu 7.2 does not know recvmmsg_time64 (it logs "Unknown syscall
# 417"): the list has it for real kernels, and musl falls back to recvmmsg.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
list=$top/openwrt/files/dotproxy.seccomp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ $# -gt 0 ] || set -- mips mipsel armhf aarch64
missing=0
port=$((40000 + $$ % 20000))
for arch in "$@"; do
	case $arch in
	armhf) q=qemu-arm-static ;;
	*) q=qemu-$arch-static ;;
	esac
	bin=$top/dotproxy-$arch
	[ -x "$bin" ] || { echo "$bin: not built (make cross)" >&2; exit 2; }
	"$q" -strace "$bin" -l "127.0.0.1@$port" -u 127.0.0.1@1#dns.test -t 500 \
		--http "127.0.0.1@$((port + 1))" --serve-stale 60 2>"$tmp/$arch.log" &
	pid=$!
	n=0
	until "$top/dotproxy" --probe "127.0.0.1@$port" >/dev/null 2>&1; do
		n=$((n + 1))
		[ $n -lt 50 ] || { echo "$arch: no answer" >&2; exit 1; }
		sleep 0.2
	done
	/usr/bin/python3 - "$port" <<'EOF'
import socket, struct, sys, urllib.request
port = int(sys.argv[1])
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x04test\x00\x00\x01\x00\x01"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(q, ("127.0.0.1", port))
u.recv(4096)
t = socket.create_connection(("127.0.0.1", port), 3)
t.sendall(struct.pack("!H", len(q)) + q)
t.recv(4096)
t.close()
urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (port + 1), timeout=3).read()
EOF
	kill -HUP $pid
	sleep 0.3
	kill -USR1 $pid
	sleep 0.3
	kill -TERM $pid
	wait $pid
	names=$(sed -n 's/^[0-9]* \([a-z_0-9]*\)(.*/\1/p' "$tmp/$arch.log" | sort -u)
	echo "$arch: $(echo "$names" | tr '\n' ' ')"
	for n in $names; do
		grep -q "\"$n\"" "$list" || { echo "  not on the list: $n"; missing=1; }
	done
	port=$((port + 2))
done
exit $missing
