#!/bin/sh
# The chaos run's DoT upstream: bench/upstream.sh's unbound (local data, no recursion, DoT on
# 127.0.0.1@PORT with the leaf of bench/pki.sh), with an AAAA and a TXT record next to the A, so
# that the load can check three kinds of answers:
#   any *.bench. A 192.0.2.1, AAAA 2001:db8::1, TXT "dotproxy chaos ok" (local-zone redirect:
#   every name is answered from the zone's apex, no cache involved).
# usage: upstream.sh PKIDIR WORKDIR PORT [THREADS]   (execs unbound in the foreground)
set -eu
pki=$1 w=$2 port=$3 threads=${4:-2}
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
  wait-limit: 0
  local-zone: "bench." redirect
  local-data: "bench. 300 IN A 192.0.2.1"
  local-data: "bench. 300 IN AAAA 2001:db8::1"
  local-data: 'bench. 300 IN TXT "dotproxy chaos ok"'
remote-control:
  control-enable: no
CONF
exec unbound -d -c "$w/upstream.conf"
