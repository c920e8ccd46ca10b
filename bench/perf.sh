#!/bin/sh
# One dnsperf run against one server, with that server's CPU time per answered query and its
# peak RSS, and the DoT upstream's CPU use during the run.
# usage: perf.sh PORT PID UPPID QUERYFILE SECONDS OUTSTANDING [more dnsperf args...]
#   PID    the server process (its utime+stime from /proc/PID/stat, all threads included,
#          are read before and after; VmHWM from /proc/PID/status after)
#   UPPID  the upstream unbound (its CPU during the run, as % of one core)
# Env P99=1: add -v (one "> RCODE NAME TYPE SECONDS" line per answer) and also print the
#   99th-percentile latency (nearest rank) over all answered queries.
# Prints one line: qps= sent= completed= lost= avg_ms= p99_ms= cpu_us= rss_kb= up_pct=
set -eu
port=$1 pid=$2 uppid=$3 qf=$4 secs=$5 outst=$6
shift 6
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
[ -r "/proc/$pid/stat" ] || { echo "perf.sh: server pid $pid is gone" >&2; exit 1; }
tck=$(getconf CLK_TCK)
out=$(mktemp "${TMPDIR:-/tmp}/perf.XXXXXX")
trap 'rm -f "$out"' EXIT
if [ "${P99:-0}" = 1 ]; then set -- "$@" -v; fi
c0=$(ticks "$pid") u0=$(ticks "$uppid")
t0=$(cut -d " " -f 1 /proc/uptime)
dnsperf -s 127.0.0.1 -p "$port" -d "$qf" -l "$secs" -q "$outst" "$@" > "$out" 2>&1 || {
	echo "perf.sh: dnsperf failed:" >&2; tail -n 5 "$out" >&2; exit 1; }
t1=$(cut -d " " -f 1 /proc/uptime)
[ -r "/proc/$pid/stat" ] || { echo "perf.sh: server pid $pid died during the run" >&2; exit 1; }
c1=$(ticks "$pid") u1=$(ticks "$uppid")
rss=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
# p99: nearest rank over the per-answer latencies that -v printed (last field, seconds).
p99=-
if [ "${P99:-0}" = 1 ]; then
	p99=$(awk '/^> / { print $NF }' "$out" | sort -g |
		awk '{ v[NR] = $1 } END { if (NR) { k = int(0.99 * NR); if (k < 0.99 * NR) k++; printf "%.3f", v[k] * 1000 } else print "-" }')
fi
wall=$(echo "$t0 $t1" | awk '{ print $2 - $1 }')
awk -v c=$((c1 - c0)) -v u=$((u1 - u0)) -v t="$tck" -v rss="$rss" -v wall="$wall" -v p99="$p99" '
/Queries sent:/ { sent = $3 }
/Queries completed:/ { done = $3 }
/Queries lost:/ { lost = $3 }
/Queries per second:/ { qps = $4 }
/Average Latency \(s\):/ && avg == "" { avg = $4 * 1000 }
END {
	if (done == "") { print "perf.sh: no statistics in the dnsperf output" > "/dev/stderr"; exit 1 }
	printf "qps=%.0f sent=%d completed=%d lost=%d avg_ms=%.3f p99_ms=%s cpu_us=%.2f rss_kb=%d up_pct=%.0f\n",
		qps, sent, done, lost, avg, p99, (done > 0 ? c / t * 1e6 / done : 0), rss, (wall > 0 ? u / t / wall * 100 : 0)
}' "$out"
