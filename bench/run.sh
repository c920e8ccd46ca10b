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

# shellcheck source=SCRIPTDIR/lib.sh
. "$here/lib.sh"
need_tools "apt-get install dnsperf unbound knot-dnsutils openssl iproute2" dnsperf unbound kdig openssl awk ss

# ---------------------------------------------------------------------------- clean-up
work_dir bench 20

# ---------------------------------------------------------------------------- ports
port_block BENCH_PORT_BASE
up_port=$base limit_port=$((base + 1)) cold_port=$((base + 7))
port_of() {
	case $1 in
	dotproxy) echo $((base + 2)) ;; kresd) echo $((base + 3)) ;; unbound) echo $((base + 4)) ;;
	dnsdist) echo $((base + 5)) ;; stubby) echo $((base + 6)) ;;
	esac
}
say "ports $base..$((base + 7)), work directory $work"

# ---------------------------------------------------------------------------- helpers
build_dnsq
$cc -O2 -o "$work/limit" "$here/limit.c" || die "cannot compile bench/limit.c"

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
	# shellcheck disable=SC2086 # a list of pids
	stop_pids 20 $pids
	pids=""
	say "latency workloads: bench/latency.sh"
	BENCH_LAT_OUT="$work/latency.md" sh "$here/latency.sh" || die "latency.sh failed"
fi

# ---------------------------------------------------------------------------- report
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
