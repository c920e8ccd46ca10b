#!/bin/sh
# Start ONE peer for the latency workloads (bench/latency.sh) in the foreground (exec: `$!` is
# the server's own pid), listening on 127.0.0.1@PORT and forwarding over DNS-over-TLS only to
# the local upstream(s) 127.0.0.1@UPPORT [and 127.0.0.1@UPPORT2] (bench/uprelay.c; certificate
# name dns.test, signed by PKIDIR/root.pem). Never any other upstream.
# usage: latency-peers.sh unbound|kresd PKIDIR WORKDIR PORT UPPORT [UPPORT2]
#
# Configured as bench/peers.sh (the throughput bench), plus what a user who wants the lowest
# latency would turn on (bench/README.md, "How the peers are configured", says why each):
#   unbound  prefetch: yes (refresh an entry asked for in the last 10 % of its TTL);
#            wait-limit: 0 (all the bench's clients share 127.0.0.1; unbound would drop a
#            client address's queries beyond 1,000 waiting); with two upstreams both are
#            forward-addr of the zone: unbound picks one by its measured round trip and asks the
#            other when one times out; infra-cache-min-rtt: LAT_UNBOUND_MIN_RTT (default 20;
#            unbound's own default is 50): its shortest time out.
#   kresd    the predict module with prediction off (period 0): only its refresh of expiring
#            records (less than 5 s + 1 % of the TTL left) when they are asked for;
#            net.tcp_pipeline(1000) (with the default 100 it answers SERVFAIL to queries beyond
#            100 in flight on its upstream connection); both upstreams in one TLS_FORWARD
#            (kresd's server selection picks by measured round trip, retries another after a
#            time out).
set -eu
name=$1 pki=$2 w=$3 port=$4 up=$5 up2=${6:-}
mkdir -p "$w"
case $name in
unbound)
	{
		cat <<C
server:
  username: ""
  chroot: ""
  directory: "$w"
  pidfile: ""
  use-syslog: no
  logfile: "$w/unbound-fwd.log"
  num-threads: 1
  do-daemonize: no
  interface: 127.0.0.1@$port
  access-control: 127.0.0.0/8 allow
  do-ip6: no
  module-config: "iterator"
  tls-cert-bundle: "$pki/root.pem"
  do-not-query-localhost: no
  prefetch: yes
  wait-limit: 0
  infra-cache-min-rtt: ${LAT_UNBOUND_MIN_RTT:-20}
forward-zone:
  name: "."
  forward-tls-upstream: yes
  forward-addr: 127.0.0.1@$up#dns.test
C
		[ -z "$up2" ] || echo "  forward-addr: 127.0.0.1@$up2#dns.test"
		cat <<C
remote-control:
  control-enable: no
C
	} > "$w/unbound-fwd.conf"
	exec unbound -d -c "$w/unbound-fwd.conf" ;;
kresd)
	t2=""
	[ -z "$up2" ] || t2=", {'127.0.0.1@$up2', hostname='dns.test', ca_file='$pki/root.pem'}"
	cat > "$w/kresd.conf" <<C
net.listen('127.0.0.1', $port, { kind = 'dns' })
modules.unload('ta_update')
modules.unload('detect_time_jump')
trust_anchors.remove('.')
net.tcp_pipeline(1000)
modules.load('predict')
predict.config({ period = 0 })
policy.add(policy.all(policy.TLS_FORWARD({{'127.0.0.1@$up', hostname='dns.test', ca_file='$pki/root.pem'}$t2})))
C
	mkdir -p "$w/kres"
	exec kresd -n -c "$w/kresd.conf" "$w/kres" </dev/null ;;
*)
	echo "latency-peers.sh: unknown peer '$name'" >&2; exit 2 ;;
esac
