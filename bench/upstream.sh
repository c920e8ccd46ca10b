#!/bin/sh
# The DoT upstream for the benchmark: a real unbound answering from local data (no recursion,
# no network), serving DNS-over-TLS on 127.0.0.1@PORT with the leaf of pki.sh (name dns.test).
# Any *.bench. name -> A 192.0.2.1, so every distinct name is a fresh query that unbound
# answers without a cache (local-zone redirect), and at a constant cost.
# usage: upstream.sh PKIDIR WORKDIR PORT [THREADS]
# Writes WORKDIR/upstream.conf, then execs unbound in the foreground (so `$!` is its pid).
set -eu
pki=$1 w=$2 port=$3 threads=${4:-1}
mkdir -p "$w"
cat > "$w/upstream.conf" <<CONF
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
exec unbound -d -c "$w/upstream.conf"
