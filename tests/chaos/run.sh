#!/bin/sh
# make chaos: dotproxy, unbound and Knot Resolver side by side behind a fault-injecting TLS relay
# in front of the real local unbound DoT upstream, under the same bounded load and the same
# faults, every query classified. Writes the "Chaos run" section of bench/RESULTS.md (the rest of
# the file is kept) and prints it. See bench/README.md, "Chaos run".
#
# Exit status 1 if the dotproxy under test gave a wrong answer, left a query unanswered or died
# (in any of its configurations); the other goals are reported, not enforced. 2 if the run itself
# could not be made (a tool missing, a server that does not start, ...).
#
# Environment (all optional):
#   CHAOS_SECONDS=60        length of the faulty part of the load
#   CHAOS_QPS=2000          queries per second, per server and configuration
#   CHAOS_CALM_SECONDS=10   fault-free load first (the CPU/query reference), same qps
#   CHAOS_TIMEOUT_MS=1500   dotproxy --timeout (and unbound's discard-timeout)
#   CHAOS_WAIT_MS=12000     how long the client waits for an answer before "no answer"
#   CHAOS_FAULT_GAP_MS=3000 mean quiet time between two faults (uniform in [gap/2, 3 gap/2])
#   CHAOS_FAULTS=reset,cut,close_after,stall,delay,refuse,down   the kinds drawn from
#   CHAOS_SEED=N            seed of the fault schedule (default: random, printed and reported)
#   CHAOS_UDP_PERCENT=50    share of the queries sent over UDP (the rest: 4 TCP connections)
#   CHAOS_SERVERS='dotproxy kresd unbound'   what to run (peers only if installed)
#   CHAOS_UPSTREAMS='1 2'   configurations: one upstream (the faulty relay), two (the faulty
#                           relay first, then a healthy one)
#   CHAOS_PARALLEL=server   server: each server's configurations side by side, one server after
#                           the other (the same fault schedule each time); all: everything at once
#   CHAOS_OLD=PATH          also run an older dotproxy binary side by side (e.g. /tmp/dotproxy-9)
#   CHAOS_DOTPROXY=PATH     the dotproxy under test (default ./dotproxy)
#   CHAOS_UPSTREAM_THREADS=2  num-threads of the upstream unbound (it serves every relay)
#   CHAOS_KEEP=1            keep the work directory (logs, per-query outcomes, relay logs)
#   CHAOS_RESULTS=FILE      where the section goes (default bench/RESULTS.md)
# Per-configuration values live in variables named after it (kind_C, port_C, ...), set and read
# through eval.
# shellcheck disable=SC2154
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
bench=$top/bench
secs=${CHAOS_SECONDS:-60}
qps=${CHAOS_QPS:-2000}
calm=${CHAOS_CALM_SECONDS:-10}
tmo=${CHAOS_TIMEOUT_MS:-1500}
waitms=${CHAOS_WAIT_MS:-12000}
gap=${CHAOS_FAULT_GAP_MS:-3000}
faults=${CHAOS_FAULTS:-reset,cut,close_after,stall,delay,refuse,down}
seed=${CHAOS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
udp=${CHAOS_UDP_PERCENT:-50}
want_servers=${CHAOS_SERVERS:-dotproxy kresd unbound}
ups=${CHAOS_UPSTREAMS:-1 2}
old=${CHAOS_OLD:-}
dp=${CHAOS_DOTPROXY:-$top/dotproxy}
upthreads=${CHAOS_UPSTREAM_THREADS:-2}
results=${CHAOS_RESULTS:-$bench/RESULTS.md}
unset DOT_SERVER    # dotproxy's fallback upstream list; every start below passes -u anyway

say() { printf 'chaos: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

for t in unbound kdig openssl ss python3; do
	command -v "$t" >/dev/null 2>&1 || die "$t is not installed"
done
[ -x "$dp" ] || die "$dp is not built (make)"
[ -z "$old" ] || [ -x "$old" ] || die "CHAOS_OLD=$old is not an executable"

# ---------------------------------------------------------------------------- clean-up
work=$(mktemp -d "${TMPDIR:-/tmp}/dotproxy-chaos.XXXXXX")
pids=""
# shellcheck disable=SC2317 # called through the trap below
cleanup() {
	st=$?
	trap - EXIT INT TERM HUP
	for p in $pids; do kill "$p" 2>/dev/null || :; done
	for p in $pids; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ "$i" -lt 30 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$p" 2>/dev/null || :
	done
	if [ "${CHAOS_KEEP:-0}" = 1 ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
	exit "$st"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---------------------------------------------------------------------------- configurations
# Each configuration: NAME (server_N), the server kind, its binary, N upstreams.
configs=""
add() { configs="$configs $1"; eval "kind_$1=$2 bin_$1=\$3 nup_$1=$4"; }
for s in $want_servers; do
	case $s in
	dotproxy) for n in $ups; do add "dotproxy_$n" dotproxy "$dp" "$n"; done
	          if [ -n "$old" ]; then for n in $ups; do add "dotproxy_old_$n" dotproxy "$old" "$n"; done; fi ;;
	kresd|unbound)
		if command -v "$s" >/dev/null 2>&1; then
			for n in $ups; do add "${s}_$n" "$s" "$(command -v "$s")" "$n"; done
		else say "$s is not installed: skipped"; fi ;;
	*) die "unknown server '$s' in CHAOS_SERVERS" ;;
	esac
done
[ -n "$configs" ] || die "nothing to run"
ncfg=$(echo "$configs" | wc -w)

# ---------------------------------------------------------------------------- ports
# A block of 1 + 3 per configuration consecutive ports, none in use (TCP or UDP, any state):
# the upstream, then per configuration the server, relay A (faulty) and relay B (healthy).
need=$((1 + 3 * ncfg))
block_free() {
	used=$(ss -Htuan | awk '{ n = split($4, a, ":"); print a[n] }')
	i=0
	while [ $i -lt "$need" ]; do
		echo "$used" | grep -qx "$(($1 + i))" && return 1
		i=$((i + 1))
	done
	return 0
}
tries=0
while :; do
	r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
	base=$((20000 + (r % 400) * 100))
	block_free "$base" && break
	tries=$((tries + 1))
	[ $tries -lt 50 ] || die "no free block of $need ports found"
done
up_port=$base
say "ports $base..$((base + need - 1)), work directory $work, seed $seed"

# ---------------------------------------------------------------------------- helpers
cc=${HOSTCC:-cc}
$cc -O2 -o "$work/relay" "$here/relay.c" || die "cannot compile tests/chaos/relay.c"
$cc -O2 -o "$work/load" "$here/load.c" || die "cannot compile tests/chaos/load.c"
$cc -O2 -o "$work/dnsq" "$bench/dnsq.c" -lm || die "cannot compile bench/dnsq.c"

# ---------------------------------------------------------------------------- upstream
sh "$bench/pki.sh" "$work/pki" dns.test || die "pki.sh failed"
sh "$here/upstream.sh" "$work/pki" "$work/upstream" "$up_port" "$upthreads" > "$work/upstream.out" 2>&1 &
uppid=$!
pids="$pids $uppid"
i=0
until kdig +tls +tls-ca="$work/pki/root.pem" +tls-hostname=dns.test +timeout=1 +retry=0 +short \
	-p "$up_port" @127.0.0.1 ready.bench TXT 2>/dev/null | grep -qx '"dotproxy chaos ok"'; do
	i=$((i + 1))
	[ $i -lt 30 ] || { cat "$work/upstream.out" >&2; die "the DoT upstream does not answer"; }
	sleep 0.5
done
say "upstream: unbound DoT on 127.0.0.1@$up_port ($upthreads threads), pid $uppid"

# ---------------------------------------------------------------------------- relays, servers, load
# Timestamps on each server's log lines (dotproxy's own lines have none), for the report.
stamp='import sys, time
for l in sys.stdin:
    sys.stdout.write("%.3f %s" % (time.time(), l))
    sys.stdout.flush()'
now_ms() { date +%s%3N; }

# start_config NAME INDEX: relay A (the faults), relay B if two upstreams, then the server.
start_config() {
	c=$1
	eval "kind=\$kind_$c bin=\$bin_$c nup=\$nup_$c"
	sport=$((base + 1 + 3 * $2)) ra=$((base + 2 + 3 * $2)) rb=$((base + 3 + 3 * $2))
	eval "port_$c=$sport"
	mkdir -p "$work/$c"
	# Relay A: the faults; the same seed for every configuration, so the same faults at the
	# same instants of each run. Relay B: healthy (it only logs connections).
	"$work/relay" -n "$c.A" -l "$ra" -u "$up_port" -o "$work/$c/relay-A.log" -s "$seed" -g "$gap" \
		-k "$faults" -f "$work/$c/start" 2> "$work/$c/relay-A.err" &
	pids="$pids $!"
	set -- -u "127.0.0.1@$ra#dns.test"
	if [ "$nup" = 2 ]; then
		"$work/relay" -n "$c.B" -l "$rb" -u "$up_port" -o "$work/$c/relay-B.log" -f "$work/$c/start" \
			2> "$work/$c/relay-B.err" &
		pids="$pids $!"
		set -- "$@" -u "127.0.0.1@$rb#dns.test"
	fi
	mkfifo "$work/$c/server.fifo"
	python3 -u -c "$stamp" < "$work/$c/server.fifo" > "$work/$c/server.log" &
	pids="$pids $!"
	case $kind in
	dotproxy)
		# Explicit loopback listener and upstreams, always; default log level (warnings and
		# state changes, not every query).
		"$bin" -l "127.0.0.1@$sport" "$@" -c "$work/pki/root.pem" --timeout "$tmo" \
			> "$work/$c/server.fifo" 2>&1 &
		;;
	*)
		up2=""
		[ "$nup" = 1 ] || up2=$rb
		sh "$here/peers.sh" "$kind" "$work/pki" "$work/$c/conf" "$sport" "$tmo" "$ra" $up2 \
			> "$work/$c/server.fifo" 2>&1 &
		;;
	esac
	eval "pid_$c=$!"
	pids="$pids $!"
}

# run_group CONFIGS: their servers and relays side by side, the same load on each, then stop
# them all. Load from T0 for CALM + SECONDS s; faults from T0 + CALM until 3 s before the load
# ends (the last seconds show the recovery); relays exit by themselves 60 s after the end.
run_group() {
	gpids=$pids
	for c in $1; do start_config "$c" "$(idx "$c")"; done
	for c in $1; do
		eval "p=\$pid_$c port=\$port_$c"
		i=0
		until "$work/dnsq" warm "$port" "ready-" 1 0 >/dev/null 2>&1; do
			i=$((i + 1))
			[ $i -lt 30 ] || { tail -n 20 "$work/$c/server.log" >&2; die "$c does not answer on 127.0.0.1@$port"; }
			sleep 0.5
		done
		say "$c: 127.0.0.1@$port, pid $p ($(cat "/proc/$p/comm"))"
	done
	t0=$(($(now_ms) + 500))
	fstart=$((t0 + calm * 1000))
	fend=$((t0 + (calm + secs) * 1000 - 3000))
	tend=$((t0 + (calm + secs) * 1000))
	for c in $1; do
		echo "$fstart $fend $((tend + waitms + 60000))" > "$work/$c/start.tmp"
		mv "$work/$c/start.tmp" "$work/$c/start"
		printf 't0_%s=%s\nfault_start_%s=%s\nfault_end_%s=%s\nload_end_%s=%s\n' \
			"$c" "$t0" "$c" "$fstart" "$c" "$fend" "$c" "$tend" >> "$work/times"
	done
	while [ "$(now_ms)" -lt "$t0" ]; do sleep 0.05; done
	say "load: $qps qps each, $calm s calm + $secs s with faults, side by side:$1"
	lpids=""
	for c in $1; do
		eval "p=\$pid_$c port=\$port_$c"
		"$work/load" -p "$port" -r "$qps" -d $((calm + secs)) -w "$waitms" -U "$udp" -t 4 -u 4 \
			-o "$work/$c/queries.txt" -P "$p" -S "$work/$c/samples.txt" 2> "$work/$c/load.err" &
		lpids="$lpids $!"
		pids="$pids $!"
	done
	# Polled rather than waited for: dash does not run the INT/TERM trap while it sits in
	# `wait` here, and the clean-up must run on Ctrl-C.
	for p in $lpids; do
		while kill -0 "$p" 2>/dev/null; do sleep 0.5; done
		wait "$p" || die "a load generator failed (see $work/*/load.err)"
	done
	# Which servers are still alive (a crash is a finding), then stop everything of the group.
	for c in $1; do
		eval "p=\$pid_$c"
		if kill -0 "$p" 2>/dev/null; then echo "alive" > "$work/$c/status"
		else wait "$p" 2>/dev/null && st=0 || st=$?; echo "exited status=$st" > "$work/$c/status"; fi
	done
	for p in $pids; do
		case " $gpids " in *" $p "*) continue ;; esac
		kill "$p" 2>/dev/null || :
	done
	for p in $pids; do
		case " $gpids " in *" $p "*) continue ;; esac
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 60 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$p" 2>/dev/null || :
		wait "$p" 2>/dev/null || :
	done
	pids=$gpids
}
idx() { k=0; for x in $configs; do [ "$x" = "$1" ] && { echo $k; return; }; k=$((k + 1)); done; }

# Groups: every configuration of one server side by side (CHAOS_PARALLEL=server, the default:
# this 2-core machine cannot serve 8 x 2,000 qps with relays and clients at once without the
# overload itself causing SERVFAILs), or all at once (CHAOS_PARALLEL=all).
: > "$work/times"
case ${CHAOS_PARALLEL:-server} in
all) run_group "$configs" ;;
server)
	for kd in dotproxy dotproxy_old kresd unbound; do
		g=""
		for c in $configs; do case $c in "$kd"_[0-9]) g="$g $c" ;; esac; done
		[ -z "$g" ] || run_group "$g"
	done ;;
*) die "CHAOS_PARALLEL must be server or all" ;;
esac
upcpu=$(awk '{ print $14 + $15 }' "/proc/$uppid/stat" 2>/dev/null || echo 0)

# ---------------------------------------------------------------------------- report
ver() {
	case $1 in
	dotproxy) "$2" -V 2>&1 | head -n 1 ;;
	kresd) kresd --version 2>&1 | head -n 1 ;;
	unbound) unbound -V 2>&1 | head -n 1 | sed 's/^Version/unbound/' ;;
	esac
}
{
	echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "nproc=$(nproc)"
	echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "kernel=$(uname -sr)"
	echo "load=$(cut -d ' ' -f 1-3 /proc/loadavg)"
	echo "clk_tck=$(getconf CLK_TCK)"
	echo "secs=$secs"
	echo "calm=$calm"
	echo "qps=$qps"
	echo "timeout_ms=$tmo"
	echo "wait_ms=$waitms"
	echo "gap_ms=$gap"
	echo "faults=$faults"
	echo "seed=$seed"
	echo "udp_percent=$udp"
	echo "parallel=${CHAOS_PARALLEL:-server}"
	cat "$work/times"
	echo "upstream=$(ver unbound), num-threads $upthreads"
	echo "upstream_cpu_ticks=$upcpu"
	echo "configs=$configs"
	for c in $configs; do
		eval "kind=\$kind_$c bin=\$bin_$c nup=\$nup_$c"
		echo "kind_$c=$kind"
		echo "nup_$c=$nup"
		echo "bin_$c=$bin"
		if [ "$kind" = dotproxy ]; then
			echo "version_$c=$(ver "$kind" "$bin"), $bin, $(wc -c < "$bin") bytes, sha256 $(sha256sum "$bin" | cut -c1-12)"
		else
			echo "version_$c=$(ver "$kind" "$bin")"
		fi
		echo "status_$c=$(cat "$work/$c/status")"
	done
} > "$work/meta"
rc=0
python3 "$here/report.py" "$work" "$results" || rc=$?
case $rc in
0) say "written: $results" ;;
1) say "written: $results"; say "FAIL: dotproxy gave a wrong answer or left a query unanswered (see the report)" ;;
*) die "report.py failed" ;;
esac
exit $rc
