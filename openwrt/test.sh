#!/bin/sh
# test.sh PKG_NAME PKG_VERSION: the OpenWrt packages feed's CI runs this on the target (a
# container of the target's root file system, under qemu-user for foreign architectures)
# with the package just installed; PKG_VERSION comes without the release (0.1.0), or with it
# (0.1.0-1, 0.1.0-r1) as other versions of the CI give it. Nothing here leaves the machine:
# dotproxy is started on loopback with a loopback upstream that does not exist, and answers
# localhost. itself (its --probe). procd does not run in that container: the service itself
# is not started. IPKG_INSTROOT (empty on the target) prefixes the installed paths, for the
# project's own test of this script (tests/test_openwrt.py).
# shellcheck shell=sh

[ "$1" = dotproxy ] || exit 0

root=${IPKG_INSTROOT-}
bin=$root/usr/sbin/dotproxy
handoff=$root/usr/libexec/dotproxy-dnsmasq
version=${2%-r[0-9]*}
version=${version%-[0-9]*}
fails=0

fail() {
	echo "test.sh: $*" >&2
	fails=$((fails + 1))
}

# the version, and the option parser: a bad value is refused before anything is opened
out=$("$bin" --version 2>&1) || fail "dotproxy --version: exit $?"
case $out in
*"$version"*) ;;
*) fail "dotproxy --version says '$out', not $version" ;;
esac
"$bin" -l 127.0.0.1@5453 -u 127.0.0.1@1#x -t 99999999 >/dev/null 2>&1 &&
	fail "dotproxy took -t 99999999"

# the installed files: scripts parse, JSON files are there
for f in /etc/init.d/dotproxy /usr/libexec/dotproxy-dnsmasq; do
	[ -x "$root$f" ] || fail "$f is not installed executable"
	sh -n "$root$f" || fail "$f: syntax error"
done
for f in /etc/config/dotproxy /etc/capabilities/dotproxy.json /etc/seccomp/dotproxy.json \
	/lib/upgrade/keep.d/dotproxy; do
	[ -s "$root$f" ] || fail "$f is missing or empty"
done
grep -q '"CAP_NET_BIND_SERVICE"' "$root/etc/capabilities/dotproxy.json" ||
	fail "the capabilities file does not grant CAP_NET_BIND_SERVICE"

# the binary runs on this target: it starts, answers localhost. on loopback, and stops on
# SIGTERM with status 0 (TEST_PORT: another port for the project's own run)
port=${TEST_PORT:-45353}
"$bin" -q -l "127.0.0.1@$port" -u 127.0.0.1@1#dns.invalid -t 500 &
pid=$!
n=0
until "$bin" --probe "127.0.0.1@$port" >/dev/null 2>&1; do
	n=$((n + 1))
	if [ $n -ge 30 ] || ! kill -0 $pid 2>/dev/null; then
		fail "dotproxy does not answer on 127.0.0.1@$port"
		break
	fi
	sleep 1
done
kill $pid 2>/dev/null
wait $pid || fail "dotproxy exited with status $? on SIGTERM"

# the dnsmasq hand-off undoes itself: the dhcp config comes back as it was (options in
# any order: uci moves a list it rewrites to the end of its section; no dnsmasq
# restart here: DOTPROXY_DNSMASQ_INIT=true)
if command -v uci >/dev/null 2>&1 && uci -q show dhcp >/dev/null 2>&1; then
	before=$(uci -q show dhcp | sort)
	DOTPROXY_DNSMASQ_INIT=true DOTPROXY_GUARD=/tmp/dotproxy-test-guard \
		"$handoff" apply 127.0.0.1#5453 || fail "dotproxy-dnsmasq apply: exit $?"
	case " $(uci -q get 'dhcp.@dnsmasq[0].server') " in
	*" 127.0.0.1#5453 "*) ;;
	*) fail "dotproxy-dnsmasq apply: dnsmasq is not pointed at 127.0.0.1#5453" ;;
	esac
	[ "$(uci -q get 'dhcp.@dnsmasq[0].noresolv')" = 1 ] ||
		fail "dotproxy-dnsmasq apply: noresolv is not set"
	DOTPROXY_DNSMASQ_INIT=true DOTPROXY_GUARD=/tmp/dotproxy-test-guard \
		"$handoff" restore || fail "dotproxy-dnsmasq restore: exit $?"
	[ "$(uci -q show dhcp | sort)" = "$before" ] ||
		fail "dotproxy-dnsmasq restore: the dhcp config is not as it was"
	[ ! -e /tmp/dotproxy-test-guard ] || fail "the sysupgrade guard is left after restore"
fi

[ $fails = 0 ] || exit 1
echo "test.sh: dotproxy $version: ok"
