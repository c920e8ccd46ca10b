#!/bin/sh
# The latency workloads of issue 13 (bench/README.md, "Latency workloads"): herd, Zipf, tail.
# dotproxy (default, and with the feature each workload is about turned off), unbound and Knot
# Resolver, one after the other, against the same local upstream: bench/uprelay.c (DoT, counts
# every query, delays answers) in front of an unbound that answers from local data
# (bench/upstream.sh -latency). Client side: bench/dnsq.c (herd, load). Everything on 127.0.0.1,
# bounded in count and time.
#
# `make bench` runs it from bench/run.sh (BENCH_LATENCY=0 skips it). Alone: sh bench/latency.sh
# (writes only the "Latency workloads" section of bench/RESULTS.md, between its markers).
#
# Environment (all optional):
#   BENCH_LAT_PEERS='unbound kresd'   peers (each only if installed)
#   BENCH_HERD_CLIENTS=500  BENCH_HERD_BURSTS=20  BENCH_HERD_DELAY_MS=80  BENCH_HERD_SPREAD_MS=10
#   BENCH_HERD_GAP_MS=300
#   BENCH_ZIPF_NAMES=10000  BENCH_ZIPF_S=1  BENCH_ZIPF_QPS=1000  BENCH_ZIPF_SECONDS=120
#   BENCH_ZIPF_DELAY_MS=20  BENCH_ZIPF_CACHE=4m
#   BENCH_ZIPF_PREFETCH_ROWS='25 50'   more Zipf rows: dotproxy with --prefetch N (default none)
#   BENCH_TAIL_QPS=1000  BENCH_TAIL_SECONDS=30  BENCH_TAIL_PCT=2  BENCH_TAIL_MIN_MS=500
#   BENCH_TAIL_MAX_MS=2000
#   BENCH_LAT_WORKLOADS='herd zipf tail'   which ones to run
#   BENCH_LAT_SEED=13         the Zipf sequence and the relays' choice of slow names (A: SEED,
#                             B: SEED+1)
#   BENCH_LAT_PORT_BASE=N     use ports N..N+7 (default: a free random block)
#   BENCH_LAT_OUT=FILE        write the section to FILE instead of into BENCH_RESULTS
#   BENCH_RESULTS=FILE        the results file whose latency section is replaced
#                             (default bench/RESULTS.md)
#   BENCH_KEEP=1              keep the work directory (configs, logs, relay logs, raw results)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
peers=${BENCH_LAT_PEERS:-unbound kresd}
workloads=${BENCH_LAT_WORKLOADS:-herd zipf tail}
h_clients=${BENCH_HERD_CLIENTS:-500}
h_bursts=${BENCH_HERD_BURSTS:-20}
h_delay=${BENCH_HERD_DELAY_MS:-80}
h_spread=${BENCH_HERD_SPREAD_MS:-10}
h_gap=${BENCH_HERD_GAP_MS:-300}
z_names=${BENCH_ZIPF_NAMES:-10000}
z_s=${BENCH_ZIPF_S:-1}
z_qps=${BENCH_ZIPF_QPS:-1000}
z_secs=${BENCH_ZIPF_SECONDS:-120}
z_delay=${BENCH_ZIPF_DELAY_MS:-20}
z_cache=${BENCH_ZIPF_CACHE:-4m}
pfrows=""
for n in ${BENCH_ZIPF_PREFETCH_ROWS:-}; do
	case $n in *[!0-9]* | "") echo "latency: BENCH_ZIPF_PREFETCH_ROWS: not a number: $n" >&2; exit 2 ;; esac
	pfrows="$pfrows dp_pf$n"
done
t_qps=${BENCH_TAIL_QPS:-1000}
t_secs=${BENCH_TAIL_SECONDS:-30}
t_pct=${BENCH_TAIL_PCT:-2}
t_min=${BENCH_TAIL_MIN_MS:-500}
t_max=${BENCH_TAIL_MAX_MS:-2000}
seed=${BENCH_LAT_SEED:-13}
results=${BENCH_RESULTS:-$here/RESULTS.md}
out=${BENCH_LAT_OUT:-}
unset DOT_SERVER    # dotproxy's fallback upstream list; every start below passes -u anyway

say() { printf 'latency: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# shellcheck source=SCRIPTDIR/lib.sh
. "$here/lib.sh"
need_tools "apt-get install unbound iproute2" unbound unbound-control awk ss od
# The bound on the relays' lives: the whole run with a wide margin.
life=$((600 + h_bursts * 4 + 6 * (z_secs + 15) + 4 * (t_secs + 15)))

# ---------------------------------------------------------------------------- clean-up
work_dir latency 30

# ---------------------------------------------------------------------------- ports
# BASE: the data unbound (plain DNS), +1 relay A, +2 relay B, +3 dotproxy, +4 unbound,
# +5 kresd. None may be in use (TCP or UDP, any state).
port_block BENCH_LAT_PORT_BASE
data_port=$base a_port=$((base + 1)) b_port=$((base + 2))
port_of() {
	case $1 in
	dp*) echo $((base + 3)) ;; unbound) echo $((base + 4)) ;; kresd) echo $((base + 5)) ;;
	esac
}
say "ports $base..$((base + 7)), work directory $work"

# ---------------------------------------------------------------------------- helpers
build_dnsq
$cc -O2 -o "$work/uprelay" "$here/uprelay.c" -lssl -lcrypto ||
	die "cannot compile bench/uprelay.c (needs the OpenSSL headers: apt-get install libssl-dev)"

# stop PID: SIGTERM, SIGKILL after 6 s (dotproxy drains queries in flight for up to 5 s).
stop() {
	stop_pids 60 "$1"
	np=""
	for p in $pids; do [ "$p" = "$1" ] || np="$np $p"; done
	pids=$np
}
# Queries dropped by the kernel at 127.0.0.1@PORT's UDP socket (receive buffer full), so far.
udp_drops() { awk -v p="$(printf ':%04X' "$1")" '$2 ~ p "$" { d += $NF } END { print d + 0 }' /proc/net/udp; }
lines() { wc -l < "$1" | tr -d ' '; }
# window FILE FROM TO: lines FROM+1..TO of a relay log
window() { awk -v a="$1" -v b="$2" 'NR > a && NR <= b' "$3"; }
up_total() { unbound-control -c "$work/up/upstream.conf" stats_noreset 2>/dev/null | awk -F= '$1 == "total.num.queries" { print $2 }'; }

# ---------------------------------------------------------------------------- upstream
sh "$here/pki.sh" "$work/pki" dns.test || die "pki.sh failed"
sh "$here/upstream.sh" -latency "$work/up" "$data_port" "$z_names" > "$work/up.out" 2>&1 &
uppid=$!
pids="$pids $uppid"
relay() {  # relay NAME PORT SEED
	"$work/uprelay" -l "$2" -u "$data_port" -c "$work/pki/chain.pem" -k "$work/pki/leaf.key" \
		-o "$work/relay-$1.log" -s "$3" -x "$life" -d "herd.=$h_delay" -d "zipf.=$z_delay" \
		-r "$t_pct,$t_min,$t_max,tail." > "$work/relay-$1.out" 2>&1 &
	pids="$pids $!"
}
relay A "$a_port" "$seed"
relay B "$b_port" $((seed + 1))
i=0
until [ -n "$(up_total)" ]; do
	i=$((i + 1))
	[ $i -lt 30 ] || { cat "$work/up.out" >&2; die "the upstream unbound does not start"; }
	sleep 0.5
done
say "upstream: unbound (plain DNS) on 127.0.0.1@$data_port, pid $uppid; relays A 127.0.0.1@$a_port, B 127.0.0.1@$b_port"

# ---------------------------------------------------------------------------- servers
servers=""
skipped=""
for s in $peers; do
	if command -v "$s" >/dev/null 2>&1; then servers="$servers $s"; else skipped="$skipped $s"; fi
done
[ -z "$skipped" ] || say "not installed, skipped:$skipped"

# start ROW UPSTREAMS: starts the server of ROW (fresh: empty cache, nothing learnt) on its
# port, forwarding to relay A (UPSTREAMS=1) or A and B (2); sets $spid and $sport.
#   dp            dotproxy, defaults          dp_nocoal    --no-coalesce
#   dp_nopf       --prefetch 0                dp_nohedge   --hedge-percent 0
#   dp_cache      (Zipf: every dp row but this one gets --cache-size BENCH_ZIPF_CACHE)
start() {
	row=$1 nup=$2
	sport=$(port_of "$row")
	d=$work/run-$wl-$row
	mkdir -p "$d"
	case $row in
	dp*)
		set -- -q -l "127.0.0.1@$sport" -u "127.0.0.1@$a_port#dns.test"
		[ "$nup" = 1 ] || set -- "$@" -u "127.0.0.1@$b_port#dns.test"
		set -- "$@" -c "$work/pki/root.pem"
		[ "$wl" != zipf ] || [ "$row" = dp_cache ] || set -- "$@" --cache-size "$z_cache"
		case $row in
		dp_nocoal) set -- "$@" --no-coalesce ;;
		dp_nopf) set -- "$@" --prefetch 0 ;;
		dp_nohedge) set -- "$@" --hedge-percent 0 ;;
		dp_pf*) set -- "$@" --prefetch "${row#dp_pf}" ;;
		esac
		echo "$top/dotproxy $*" > "$d/cmdline"
		"$top/dotproxy" "$@" > "$d/server.log" 2>&1 &
		;;
	*)
		set -- "$a_port"
		[ "$nup" = 1 ] || set -- "$a_port" "$b_port"
		sh "$here/peers.sh" -latency "$row" "$work/pki" "$d" "$sport" "$@" > "$d/server.log" 2>&1 &
		;;
	esac
	spid=$!
	pids="$pids $spid"
	# the name is outside every workload's zone (the upstream answers NXDOMAIN): no count has it
	if ! wait_ready "$sport" ready-; then
		tail -n 20 "$d/server.log" >&2
		die "$row does not answer on 127.0.0.1@$sport"
	fi
	# the upstream connection(s) up before anything is measured
	"$work/dnsq" warm "$sport" "warmup-" 3 0 >/dev/null 2>&1 || :
}
# dotproxy's counters (SIGUSR1: one stats line on stderr) as key=value words, prefixed dp_.
dp_stats() {
	kill -USR1 "$spid"
	i=0
	while ! grep -q 'stats:' "$d/server.log" && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
	grep 'stats:' "$d/server.log" | tail -n 1 | awk '{
		gsub(/;/, " ")
		for (i = 1; i <= NF; i++) {
			j = index($i, "="); k = substr($i, 1, j - 1)
			if (k ~ /^(hits|misses|evictions|prefetches|coalesced|hedged|hedges_capped|servfail)$/ && !seen[k]++)
				printf " dp_%s=%s", k, substr($i, j + 1)
		}
	}'
}
# wants WL: sets $wl; true if the workload WL is to run (BENCH_LAT_WORKLOADS).
wants() {
	wl=$1
	case " $workloads " in *" $1 "*) return 0 ;; esac
	return 1
}
# client ARGS...: one run of `dnsq ARGS` against the server (output: $d/client.out), with relay
# A's log length, the upstream's own count and the drops at the server's socket before (la u0
# dr0) and after it (lb u1 dr1).
client() {
	la=$(lines "$work/relay-A.log") u0=$(up_total) dr0=$(udp_drops "$sport")
	"$work/dnsq" "$@" > "$d/client.out" || die "$wl client failed on $row"
	sleep 0.3
	lb=$(lines "$work/relay-A.log") u1=$(up_total) dr1=$(udp_drops "$sport")
}
# record FIGURES: the result line "$wl $row FIGURES drops= upstream_own= [dotproxy's counters]"
# into $res, then the server stopped.
record() {
	extra=""
	case $row in dp*) extra=$(dp_stats) ;; esac
	line="$1 drops=$((dr1 - dr0)) upstream_own=$((u1 - u0))$extra"
	echo "$wl $row $line" >> "$res"
	say "$wl $row: $line"
	stop "$spid"
}
# tail_counts R FROM TO: relay R's queries and held-back answers for t<i>.tail. names, log lines
# FROM+1..TO: "upR=N slowR=N".
tail_counts() {
	window "$2" "$3" "$work/relay-$1.log" | awk -v r="$1" '$5 ~ /^t[0-9]+\.tail\.$/ { if ($1 == "Q") q++; else if ($1 == "D") d++ }
		END { printf "up%s=%d slow%s=%d", r, q, r, d }'
}
label_rows() {  # the rows of one workload: dotproxy, its feature off, (default cache), peers
	case $1 in
	herd) echo "dp dp_nocoal$servers" ;;
	zipf) echo "dp dp_nopf dp_cache$pfrows$servers" ;;
	tail) echo "dp dp_nohedge$servers" ;;
	esac
}

res=$work/res
: > "$res"
t_start=$(date +%s)

# ---------------------------------------------------------------------------- herd
if wants herd; then
for row in $(label_rows herd); do
	start "$row" 1
	tag="$row-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
	# one upstream round trip as this server's client sees it: one client, 5 fresh names
	solo=$("$work/dnsq" herd "$sport" "solo-$tag" 1 5 20 3000 0 | awk '/^all / { for (i = 2; i <= NF; i++) if ($i ~ /^p50_ms=/) print substr($i, 8) }')
	client herd "$sport" "$tag" "$h_clients" "$h_bursts" "$h_gap" 3000 "$h_spread"
	# upstream queries per burst: relay A's log lines for each burst's name
	per=$(window "$la" "$lb" "$work/relay-A.log" | awk -v tag="$tag" -v n="$h_bursts" '
		$1 == "Q" && $5 ~ ("^b[0-9]+-" tag "\\.herd\\.$") { c[$5]++ }
		END {
			min = -1
			for (b = 0; b < n; b++) { k = c["b" b "-" tag ".herd."] + 0; t += k; if (k > max) max = k; if (min < 0 || k < min) min = k; if (k == 1) one++ }
			printf "up_total=%d up_mean=%.2f up_min=%d up_max=%d bursts_one=%d", t, t / n, min, max, one
		}')
	# the median over the bursts of each burst's p99 (a lost query: -1, the slowest): one burst
	# that a stall of the machine slowed as a whole moves the overall p99, not this
	bmed=$(awk '/^burst=/ { for (i = 2; i <= NF; i++) if ($i ~ /^p99_ms=/) { x = substr($i, 8) + 0; print (x < 0 ? 1e9 : x) } }' "$d/client.out" |
		sort -g | awk '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)]; print (m >= 1e9 ? -1 : m) }')
	record "$(tail -n 1 "$d/client.out" | sed 's/^all //') burst_p99_med=$bmed solo_ms=$solo $per"
done
fi

# ---------------------------------------------------------------------------- Zipf
if wants zipf; then
for row in $(label_rows zipf); do
	start "$row" 1
	client load "$sport" "$z_qps" "$z_secs" 3000 "$z_delay" "zipf:$z_names:$z_s:$seed:zipf"
	up=$(window "$la" "$lb" "$work/relay-A.log" | awk '$1 == "Q" && $5 ~ /\.zipf\.$/ { n++ } END { print n + 0 }')
	record "$(tail -n 1 "$d/client.out") up=$up"
done
fi

# ---------------------------------------------------------------------------- tail
if wants tail; then
for row in $(label_rows tail); do
	start "$row" 2
	lb0=$(lines "$work/relay-B.log")
	# the same names for every server (so the same ones are slow): t<i>.tail.
	client load "$sport" "$t_qps" "$t_secs" 5000 "$t_min" "seq:t:tail"
	lb1=$(lines "$work/relay-B.log")
	record "$(tail -n 1 "$d/client.out") $(tail_counts A "$la" "$lb") $(tail_counts B "$lb0" "$lb1")"
done
fi

# ---------------------------------------------------------------------------- report
{
	echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "minutes=$(( ($(date +%s) - t_start + 59) / 60 ))"
	echo "nproc=$(nproc)"
	echo "load=$(cut -d ' ' -f 1-3 /proc/loadavg)"
	echo "servers=$servers"
	echo "skipped=$skipped"
	for s in dp $servers; do echo "version_$s=$(ver "$s")"; done
	echo "h_clients=$h_clients"; echo "h_bursts=$h_bursts"; echo "h_delay=$h_delay"
	echo "h_spread=$h_spread"; echo "h_gap=$h_gap"
	echo "z_names=$z_names"; echo "z_s=$z_s"; echo "z_qps=$z_qps"; echo "z_secs=$z_secs"
	echo "z_delay=$z_delay"; echo "z_cache=$z_cache"; echo "z_pfrows=$pfrows"
	echo "t_qps=$t_qps"; echo "t_secs=$t_secs"; echo "t_pct=$t_pct"; echo "t_min=$t_min"; echo "t_max=$t_max"
	echo "seed=$seed"
	echo "workloads=$workloads"
	# the settings changed from the defaults (BENCH_LAT_OUT only says where the section goes)
	echo "env=$(env | grep -E '^BENCH_(HERD|ZIPF|TAIL|LAT)_' | grep -v '^BENCH_LAT_OUT=' | sort | tr '\n' ' ' | sed 's/ $//')"
} > "$work/meta"
sh "$here/latency-report.sh" "$work/meta" "$res" > "$work/latency.md" || die "latency-report.sh failed"
if [ -n "$out" ]; then
	cp "$work/latency.md" "$out"
else
	# Replace the section between its markers (or put it before the chaos section, or at the end).
	touch "$results"
	awk -v sec="$work/latency.md" '
		function put() { while ((getline l < sec) > 0) print l; done = 1 }
		/^<!-- latency: begin/ { skip = 1; put(); next }
		skip && /^<!-- latency: end -->/ { skip = 0; next }
		skip { next }
		/^<!-- chaos: begin/ && !done { put(); print "" }
		{ print }
		END { if (!done) { print ""; put() } }' "$results" > "$work/RESULTS.new"
	cp "$work/RESULTS.new" "$results"
	cat "$work/latency.md"
	say "written: $results"
fi
