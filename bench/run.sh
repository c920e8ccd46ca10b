#!/bin/sh
# make bench: dotproxy side by side with its peers and the ceiling, in one run, on loopback.
# See bench/README.md. Writes bench/RESULTS.md and prints the tables.
#
# Environment (all optional):
#   BENCH_SECONDS=8           length of each dnsperf load run (dnsperf -l)
#   BENCH_OUTSTANDING=200     queries in flight (dnsperf -q), the same for every server
#   BENCH_P99_SECONDS=3       length of the separate dnsperf -v run that gives the p99
#   BENCH_CEILING_ARGS='-c 1 -q 1000'   dnsperf args of the ceiling run (see README)
#   BENCH_UPSTREAM_THREADS=1  num-threads of the upstream unbound
#   BENCH_NAMES=1000000       distinct names in the miss workload
#   BENCH_HIT=1               also run the hit workload (0: skip it)
#   BENCH_COLD_STARTS=5       cold starts per server for the time to first answer
#   BENCH_WARM_QUERIES=200    sequential queries for the warm latency
#   BENCH_PEERS='kresd unbound dnsdist stubby'   peers to try (each only if installed)
#   BENCH_PORT_BASE=N         use ports N..N+7 (default: a free random block in 20000-59999)
#   BENCH_KEEP=1              keep the work directory (configs, logs, raw dnsperf output)
#   BENCH_RESULTS=FILE        where to write the report (default bench/RESULTS.md)
#   BENCH_LATENCY=1           also run the latency workloads (bench/latency.sh, its own BENCH_HERD_*,
#                             BENCH_ZIPF_*, BENCH_TAIL_*, BENCH_LAT_* settings); 0 skips them and
#                             keeps the latency section RESULTS.md already has
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
secs=${BENCH_SECONDS:-8}
outst=${BENCH_OUTSTANDING:-200}
p99secs=${BENCH_P99_SECONDS:-3}
ceiling_args=${BENCH_CEILING_ARGS:--c 1 -q 1000}
upthreads=${BENCH_UPSTREAM_THREADS:-1}
nnames=${BENCH_NAMES:-1000000}
dohit=${BENCH_HIT:-1}
colds=${BENCH_COLD_STARTS:-5}
warmq=${BENCH_WARM_QUERIES:-200}
peers=${BENCH_PEERS:-kresd unbound dnsdist stubby}
results=${BENCH_RESULTS:-$here/RESULTS.md}
unset DOT_SERVER    # dotproxy's fallback upstream list; every start below passes -u anyway

say() { printf 'bench: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for t in dnsperf unbound kdig openssl awk ss; do
	command -v "$t" >/dev/null 2>&1 || die "$t is not installed (apt-get install dnsperf unbound knot-dnsutils openssl iproute2)"
done
[ -x "$top/dotproxy" ] || die "$top/dotproxy is not built (make)"

# ---------------------------------------------------------------------------- clean-up
work=$(mktemp -d "${TMPDIR:-/tmp}/dotproxy-bench.XXXXXX")
pids=""
cleanup() {
	st=$?
	trap - EXIT INT TERM HUP
	for p in $pids; do kill "$p" 2>/dev/null || :; done
	for p in $pids; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$p" 2>/dev/null || :
	done
	if [ "${BENCH_KEEP:-0}" = 1 ]; then say "work directory kept: $work"; else rm -rf "$work"; fi
	exit "$st"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---------------------------------------------------------------------------- ports
# A block of 8 consecutive ports, none of them in use (TCP or UDP, any state).
port_used() { ss -Htuan | awk -v p=":$1" '{ n = split($5, a, ":"); if (":" a[n] == p) f = 1 } END { exit !f }'; }
block_free() {
	i=0
	while [ $i -lt 8 ]; do port_used $(($1 + i)) && return 1; i=$((i + 1)); done
	return 0
}
if [ -n "${BENCH_PORT_BASE:-}" ]; then
	base=$BENCH_PORT_BASE
	block_free "$base" || die "a port in $base..$((base + 7)) is in use (BENCH_PORT_BASE)"
else
	tries=0
	while :; do
		r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
		base=$((20000 + (r % 4000) * 10))
		block_free "$base" && break
		tries=$((tries + 1))
		[ $tries -lt 50 ] || die "no free block of 8 ports found"
	done
fi
up_port=$base limit_port=$((base + 1)) cold_port=$((base + 7))
port_of() {
	case $1 in
	dotproxy) echo $((base + 2)) ;; kresd) echo $((base + 3)) ;; unbound) echo $((base + 4)) ;;
	dnsdist) echo $((base + 5)) ;; stubby) echo $((base + 6)) ;;
	esac
}
say "ports $base..$((base + 7)), work directory $work"

# ---------------------------------------------------------------------------- helpers
cc=${HOSTCC:-cc}
$cc -O2 -o "$work/dnsq" "$here/dnsq.c" -lm || die "cannot compile bench/dnsq.c"
$cc -O2 -o "$work/limit" "$here/limit.c" || die "cannot compile bench/limit.c"

# wait_ready PORT NAME: until one plain-DNS query for NAME is answered (at most 15 s).
wait_ready() {
	i=0
	until "$work/dnsq" warm "$1" "$2" 1 0 >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 30 ] || return 1
		sleep 0.5
	done
}

# Workloads, generated once: distinct names (miss, p99 and warm use disjoint prefixes, so a
# cache never sees a name twice), and 100 names repeated (hit).
awk -v n="$nnames" 'BEGIN { for (i = 0; i < n; i++) printf "q%d.bench A\n", i }' > "$work/miss.txt"
awk -v n="$nnames" 'BEGIN { for (i = 0; i < n; i++) printf "p%d.bench A\n", i }' > "$work/p99.txt"
awk 'BEGIN { for (i = 0; i < 100; i++) printf "h%d.bench A\n", i }' > "$work/hit.txt"

# ---------------------------------------------------------------------------- upstream
sh "$here/pki.sh" "$work/pki" dns.test || die "pki.sh failed"
sh "$here/upstream.sh" "$work/pki" "$work/upstream" "$up_port" "$upthreads" > "$work/upstream.out" 2>&1 &
uppid=$!
pids="$pids $uppid"
i=0
until kdig +tls +tls-ca="$work/pki/root.pem" +tls-hostname=dns.test +timeout=1 +retry=0 +short \
	-p "$up_port" @127.0.0.1 ready.bench A 2>/dev/null | grep -qx 192.0.2.1; do
	i=$((i + 1))
	[ $i -lt 30 ] || { cat "$work/upstream.out" >&2; die "the DoT upstream does not answer"; }
	sleep 0.5
done
say "upstream: unbound DoT on 127.0.0.1@$up_port ($upthreads thread(s)), pid $uppid"

# ---------------------------------------------------------------------------- servers
# start_server NAME: starts it on its port against the upstream; sets $spid.
start_server() {
	p=$(port_of "$1")
	if [ "$1" = dotproxy ]; then
		"$top/dotproxy" -q -l "127.0.0.1@$p" -u "127.0.0.1@$up_port#dns.test" -c "$work/pki/root.pem" \
			> "$work/dotproxy.log" 2>&1 &
	else
		sh "$here/peers.sh" "$1" "$work/pki" "$work/$1" "$p" "$up_port" > "$work/$1.log" 2>&1 &
	fi
	spid=$!
	pids="$pids $spid"
}

servers=dotproxy
skipped=""
for s in $peers; do
	if command -v "$s" >/dev/null 2>&1; then servers="$servers $s"; else skipped="$skipped $s"; fi
done
for s in $servers; do
	start_server "$s"
	eval "pid_$s=$spid"
done
for s in $servers; do
	eval "p=\$pid_$s"
	if ! wait_ready "$(port_of "$s")" "ready-$s-"; then
		tail -n 20 "$work/$s.log" >&2
		die "$s does not answer on 127.0.0.1@$(port_of "$s")"
	fi
	say "$s: 127.0.0.1@$(port_of "$s"), pid $p ($(cat "/proc/$p/comm"))"
done
[ -z "$skipped" ] || say "not installed, skipped:$skipped"

"$work/limit" "$limit_port" &
limitpid=$!
pids="$pids $limitpid"
wait_ready "$limit_port" "ready-limit-" || die "limit does not answer"

# ---------------------------------------------------------------------------- runs
# Results go to $work/res, one line per measurement: WORKLOAD SERVER key=value...
res=$work/res
: > "$res"
measure() {  # measure WORKLOAD SERVER PORT PID QUERYFILE [dnsperf args]
	wl=$1 sv=$2 mport=$3 mpid=$4 mqf=$5
	shift 5
	line=$(sh "$here/perf.sh" "$mport" "$mpid" "$uppid" "$mqf" "$secs" "$outst" "$@") || die "run $wl $sv failed"
	echo "$wl $sv $line" >> "$res"
	say "$wl $sv: $line"
	sleep 1
}
measure_p99() {  # measure_p99 SERVER PORT PID [dnsperf args]: the separate -v run
	sv=$1 mport=$2 mpid=$3
	shift 3
	line=$(P99=1 sh "$here/perf.sh" "$mport" "$mpid" "$uppid" "$work/p99.txt" "$p99secs" "$outst" -n 1 "$@") ||
		die "p99 run $sv failed"
	echo "p99 $sv $line" >> "$res"
	say "p99 $sv: $(echo "$line" | sed 's/.*\(p99_ms=[^ ]*\).*/\1/')"
	sleep 1
}

say "miss workload: ceiling (dnsperf -m dot $ceiling_args straight to the upstream)"
# shellcheck disable=SC2086  # ceiling_args is a list of words
line=$(sh "$here/perf.sh" "$up_port" "$uppid" "$uppid" "$work/miss.txt" "$secs" "$outst" -n 1 -m dot $ceiling_args) ||
	die "ceiling run failed"
echo "miss ceiling $line" >> "$res"
say "miss ceiling: $line"
sleep 1
# shellcheck disable=SC2086
line=$(P99=1 sh "$here/perf.sh" "$up_port" "$uppid" "$uppid" "$work/p99.txt" "$p99secs" "$outst" -n 1 -m dot $ceiling_args) ||
	die "ceiling p99 run failed"
echo "p99 ceiling $line" >> "$res"
sleep 1

for s in $servers; do
	eval "p=\$pid_$s"
	measure miss "$s" "$(port_of "$s")" "$p" "$work/miss.txt" -n 1
	measure_p99 "$s" "$(port_of "$s")" "$p"
done

if [ "$dohit" = 1 ]; then
	measure hit limit "$limit_port" "$limitpid" "$work/hit.txt"
	for s in $servers; do
		eval "p=\$pid_$s"
		measure hit "$s" "$(port_of "$s")" "$p" "$work/hit.txt"
	done
fi

# Warm single-query latency: sequential queries, 5 ms apart, distinct names, over the
# upstream connection the load runs left open (a first query warms it if it had closed).
for s in $servers; do
	p=$(port_of "$s")
	"$work/dnsq" warm "$p" "warmup-$s-" 3 0 >/dev/null || :
	line=$("$work/dnsq" warm "$p" "w-$s-" "$warmq" 5) || die "warm latency $s failed"
	echo "warm $s $line" >> "$res"
	say "warm $s: $line"
done

# Time to first answer from a cold start: process start -> first answer (listener up,
# TCP + TLS handshake to the upstream, the query forwarded). On a port of its own.
for s in $servers; do
	i=0
	: > "$work/cold-$s"
	while [ $i -lt "$colds" ]; do
		if [ "$s" = dotproxy ]; then
			set -- "$top/dotproxy" -q -l "127.0.0.1@$cold_port" -u "127.0.0.1@$up_port#dns.test" -c "$work/pki/root.pem"
		else
			set -- sh "$here/peers.sh" "$s" "$work/pki" "$work/cold-$s.d" "$cold_port" "$up_port"
		fi
		"$work/dnsq" cold "$cold_port" "c$i-$s.bench" -- "$@" >> "$work/cold-$s" 2>> "$work/cold-$s.log" ||
			die "cold start $s failed (see $work/cold-$s.log)"
		i=$((i + 1))
		sleep 0.3
	done
	ms=$(sed 's/first_answer_ms=//' "$work/cold-$s" | sort -g |
		awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "cold_ms=%.1f cold_min=%.1f cold_max=%.1f", m, v[1], v[NR] }')
	echo "cold $s $ms" >> "$res"
	say "cold $s: $ms"
done

# ---------------------------------------------------------------------------- latency
# The latency workloads (issue 13) have their own upstream, relays and servers: this run's
# servers are stopped first, so that nothing idle competes with them.
if [ "${BENCH_LATENCY:-1}" = 1 ]; then
	for p in $pids; do kill "$p" 2>/dev/null || :; done
	for p in $pids; do
		i=0
		while kill -0 "$p" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
		kill -9 "$p" 2>/dev/null || :
		wait "$p" 2>/dev/null || :
	done
	pids=""
	say "latency workloads: bench/latency.sh"
	BENCH_LAT_OUT="$work/latency.md" sh "$here/latency.sh" || die "latency.sh failed"
fi

# ---------------------------------------------------------------------------- report
ver() {
	case $1 in
	dotproxy) "$top/dotproxy" -V 2>&1 | head -n 1 ;;
	kresd) kresd --version 2>&1 | head -n 1 ;;
	unbound) unbound -V 2>&1 | head -n 1 | sed 's/^Version/unbound/' ;;
	dnsdist) dnsdist --version 2>&1 | head -n 1 ;;
	stubby) echo "$(stubby -V 2>&1 | head -n 1) (package $(dpkg-query -W -f '${Version}' stubby 2>/dev/null || echo '?'))" ;;
	esac
}
{
	echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "nproc=$(nproc)"
	echo "cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
	echo "kernel=$(uname -sr)"
	echo "load=$(cut -d ' ' -f 1-3 /proc/loadavg)"
	echo "dnsperf=$(dnsperf -h 2>&1 | awk '/^Version/ { print $2 }')"
	for s in $servers; do echo "version_$s=$(ver "$s")"; done
	echo "upstream=$(ver unbound), num-threads $upthreads"
	echo "skipped=$skipped"
	echo "secs=$secs"
	echo "outst=$outst"
	echo "p99secs=$p99secs"
	echo "nnames=$nnames"
	echo "colds=$colds"
	echo "warmq=$warmq"
	echo "ceiling_args=$ceiling_args"
} > "$work/meta"
sh "$here/report.sh" "$work/meta" "$res" "$servers" > "$work/RESULTS.md" || die "report.sh failed"
# The latency section: this run's, or (BENCH_LATENCY=0) the one RESULTS.md has, if any.
if [ -f "$work/latency.md" ]; then
	{ echo; cat "$work/latency.md"; } >> "$work/RESULTS.md"
elif [ -f "$results" ] && grep -q '^<!-- latency: begin' "$results"; then
	{ echo; sed -n '/^<!-- latency: begin/,/^<!-- latency: end -->/p' "$results"; } >> "$work/RESULTS.md"
fi
# Keep the section the chaos run wrote (make chaos, tests/chaos/report.py), if there is one.
if [ -f "$results" ] && grep -q '^<!-- chaos: begin' "$results"; then
	{ echo; sed -n '/^<!-- chaos: begin/,/^<!-- chaos: end -->/p' "$results"; } >> "$work/RESULTS.md"
fi
cp "$work/RESULTS.md" "$results"
cat "$work/RESULTS.md"
say "written: $results"
