# The set-up bench/run.sh and bench/latency.sh share (POSIX sh), sourced after the caller has
# set $here (bench/) and $top, and defined say and die: tools, work directory and clean-up,
# a free block of 8 ports, the dnsq client, readiness, stopping, versions.
# shellcheck shell=sh disable=SC2154 # $here and $top are the caller's

# need_tools HINT TOOL...: die unless every TOOL is installed (HINT: how to install them).
need_tools() {
	nt_hint=$1
	shift
	for nt in "$@"; do
		command -v "$nt" >/dev/null 2>&1 || die "$nt is not installed ($nt_hint)"
	done
	[ -x "$top/dotproxy" ] || die "$top/dotproxy is not built (make)"
}

# stop_pids TICKS PID...: SIGTERM to each PID, then SIGKILL to any still running after TICKS
# tenths of a second (per PID, one after the other).
stop_pids() {
	sp_ticks=$1
	shift
	for sp in "$@"; do kill "$sp" 2>/dev/null || :; done
	for sp in "$@"; do
		sp_i=0
		while kill -0 "$sp" 2>/dev/null && [ $sp_i -lt "$sp_ticks" ]; do
			sleep 0.1
			sp_i=$((sp_i + 1))
		done
		kill -9 "$sp" 2>/dev/null || :
		wait "$sp" 2>/dev/null || :
	done
}

# work_dir NAME TICKS: makes $work (TMPDIR/dotproxy-NAME.XXXXXX) and arms the clean-up on exit:
# every pid in $pids stopped (stop_pids TICKS), $work removed unless BENCH_KEEP=1.
work_dir() {
	work=$(mktemp -d "${TMPDIR:-/tmp}/dotproxy-$1.XXXXXX")
	cleanup_ticks=$2
	pids=""
	trap cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP
}
# shellcheck disable=SC2317 # called through the trap above
cleanup() {
	st=$?
	trap - EXIT INT TERM HUP
	# shellcheck disable=SC2086 # a list of pids
	stop_pids "$cleanup_ticks" $pids
	if [ "${BENCH_KEEP:-0}" = 1 ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
	exit "$st"
}

# port_block VAR: sets $base to the first of 8 consecutive ports, none in use (TCP or UDP, any
# state): $VAR's value if set (the environment variable that names it), else a free random
# block in 20000-59999.
port_used() { ss -Htuan | awk -v p=":$1" '{ n = split($5, a, ":"); if (":" a[n] == p) f = 1 } END { exit !f }'; }
block_free() {
	i=0
	while [ $i -lt 8 ]; do port_used $(($1 + i)) && return 1; i=$((i + 1)); done
	return 0
}
port_block() {
	eval "base=\${$1:-}"
	if [ -n "$base" ]; then
		block_free "$base" || die "a port in $base..$((base + 7)) is in use ($1)"
		return 0
	fi
	tries=0
	while :; do
		r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
		base=$((20000 + (r % 4000) * 10))
		block_free "$base" && break
		tries=$((tries + 1))
		[ $tries -lt 50 ] || die "no free block of 8 ports found"
	done
}

# build_dnsq: compiles the latency client to $work/dnsq; sets $cc (HOSTCC, default cc).
build_dnsq() {
	cc=${HOSTCC:-cc}
	$cc -O2 -o "$work/dnsq" "$here/dnsq.c" -lm || die "cannot compile bench/dnsq.c"
}

# wait_ready PORT NAME: until one plain-DNS query for NAME is answered (at most 15 s).
wait_ready() {
	i=0
	until "$work/dnsq" warm "$1" "$2" 1 0 >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 30 ] || return 1
		sleep 0.5
	done
}

# ver SERVER: its version, one line (dp is dotproxy too).
ver() {
	case $1 in
	dotproxy | dp) "$top/dotproxy" -V 2>&1 | head -n 1 ;;
	kresd) kresd --version 2>&1 | head -n 1 ;;
	unbound) unbound -V 2>&1 | head -n 1 | sed 's/^Version/unbound/' ;;
	dnsdist) dnsdist --version 2>&1 | head -n 1 ;;
	stubby) echo "$(stubby -V 2>&1 | head -n 1) (package $(dpkg-query -W -f '${Version}' stubby 2>/dev/null || echo '?'))" ;;
	esac
}
