#!/bin/sh
# The data behind the latency workloads' upstream (bench/latency.sh): a real unbound answering
# plain DNS (UDP and TCP) on 127.0.0.1@PORT from local data only, never recursing. The DoT side,
# the counting and the delays are bench/uprelay.c's, in front of it.
#   *.herd.  A 192.0.2.2, TTL 300 (redirect: any name)        herd workload
#   *.tail.  A 192.0.2.3, TTL 300 (redirect: any name)        two-upstream (tail) workload
#   zN.zipf. A 192.0.2.x, N = 1..ZIPF_NAMES, TTL 10..60 s (a fixed function of N)   Zipf workload
#   anything else: answered from the static root zone (NXDOMAIN), never looked up elsewhere.
# remote-control on a unix socket (WORKDIR/control), no certificates: `unbound-control -c
# WORKDIR/upstream.conf stats_noreset` gives its own query count, a cross-check of uprelay's.
# usage: latency-upstream.sh WORKDIR PORT ZIPF_NAMES
# Writes WORKDIR/upstream.conf, then execs unbound in the foreground (so `$!` is its pid).
set -eu
w=$1 port=$2 nzipf=$3
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
  num-threads: 1
  do-daemonize: no
  interface: 127.0.0.1@$port
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
} > "$w/upstream.conf"
exec unbound -d -c "$w/upstream.conf"
