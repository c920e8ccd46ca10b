#!/bin/sh
# The upstream of the benchmarks: a real unbound answering from local data (no recursion, no
# network). Writes WORKDIR/upstream.conf, then execs unbound in the foreground (so `$!` is its
# pid).
# usage: upstream.sh PKIDIR WORKDIR PORT [THREADS]
#   The DoT upstream of bench/run.sh: DNS-over-TLS on 127.0.0.1@PORT with the leaf of pki.sh
#   (name dns.test). Any *.bench. name -> A 192.0.2.1, so every distinct name is a fresh query
#   that unbound answers without a cache (local-zone redirect), and at a constant cost.
# usage: upstream.sh -latency WORKDIR PORT ZIPF_NAMES
#   The data behind the latency workloads' upstream (bench/latency.sh): plain DNS (UDP and
#   TCP) on 127.0.0.1@PORT. The DoT side, the counting and the delays are bench/uprelay.c's,
#   in front of it.
#     *.herd.  A 192.0.2.2, TTL 300 (redirect: any name)        herd workload
#     *.tail.  A 192.0.2.3, TTL 300 (redirect: any name)        two-upstream (tail) workload
#     zN.zipf. A 192.0.2.x, N = 1..ZIPF_NAMES, TTL 10..60 s (a fixed function of N)   Zipf workload
#     anything else: answered from the static root zone (NXDOMAIN), never looked up elsewhere.
#   remote-control on a unix socket (WORKDIR/control), no certificates: `unbound-control -c
#   WORKDIR/upstream.conf stats_noreset` gives its own query count, a cross-check of uprelay's.
set -eu
if [ "$1" = -latency ]; then
	lat=1 w=$2 port=$3 nzipf=$4 threads=1
else
	lat=0 pki=$1 w=$2 port=$3 threads=${4:-1}
fi
mkdir -p "$w"
{
	cat <<CONF
server:
  username: ""
  chroot: ""
  directory: "$w"
  pidfile: ""
  use-syslog: no
  logfile: "$w/upstream.log"
  verbosity: 0
  num-threads: $threads
  do-daemonize: no
  interface: 127.0.0.1@$port
CONF
	if [ $lat = 1 ]; then
		cat <<CONF
  incoming-num-tcp: 200
  tcp-idle-timeout: 120000
  so-rcvbuf: 4m
  access-control: 127.0.0.0/8 allow
  do-ip6: no
  module-config: "iterator"
  local-zone: "." static
  local-zone: "herd." redirect
  local-data: "herd. 300 IN A 192.0.2.2"
  local-zone: "tail." redirect
  local-data: "tail. 300 IN A 192.0.2.3"
  local-zone: "zipf." static
CONF
		awk -v n="$nzipf" 'BEGIN {
			for (r = 1; r <= n; r++)
				printf "  local-data: \"z%d.zipf. %d IN A 192.0.2.%d\"\n", r, 10 + (r * 7919) % 51, 10 + r % 240
		}'
		cat <<CONF
remote-control:
  control-enable: yes
  control-interface: "$w/control"
  control-use-cert: no
CONF
	else
		cat <<CONF
  tls-port: $port
  tls-service-key: "$pki/leaf.key"
  tls-service-pem: "$pki/chain.pem"
  incoming-num-tcp: 1000
  tcp-idle-timeout: 30000
  edns-tcp-keepalive: yes
  access-control: 127.0.0.0/8 allow
  do-ip6: no
  module-config: "iterator"
  local-zone: "bench." redirect
  local-data: "bench. 300 IN A 192.0.2.1"
  local-zone: "example.test." static
  local-data: "example.test. 60 IN A 192.0.2.10"
remote-control:
  control-enable: no
CONF
	fi
} > "$w/upstream.conf"
exec unbound -d -c "$w/upstream.conf"
