#!/bin/sh
# Start ONE peer DoT forwarder in the foreground (exec, so `$!` of `sh peers.sh ... &` is the
# server's own pid: the process whose CPU time and peak RSS the bench reads), configured to
# listen on 127.0.0.1@PORT and to forward only to the local DoT upstream 127.0.0.1@UPPORT
# (certificate name dns.test, signed by PKIDIR/root.pem). Never any other upstream.
# usage: peers.sh stubby|unbound|dnsdist|kresd PKIDIR WORKDIR PORT UPPORT
#        peers.sh -latency unbound|kresd PKIDIR WORKDIR PORT UPPORT [UPPORT2]
#
# -latency: for the latency workloads (bench/latency.sh), forwarding to the relay(s)
# 127.0.0.1@UPPORT [and @UPPORT2] (bench/uprelay.c), plus what a user who wants the lowest
# latency would turn on (bench/README.md, "How the peers are configured", says why each):
#   unbound  prefetch: yes (refresh an entry asked for in the last 10 % of its TTL);
#            wait-limit: 0 (all the bench's clients share 127.0.0.1; unbound would drop a
#            client address's queries beyond 1,000 waiting); with two upstreams both are
#            forward-addr of the zone: unbound picks one by its measured round trip and asks the
#            other when one times out; infra-cache-min-rtt: LAT_UNBOUND_MIN_RTT (default 20;
#            unbound's own default is 50): its shortest time out. (Without the throughput
#            bench's local-zone "test." nodefault: no latency workload asks a name in test.)
#   kresd    the predict module with prediction off (period 0): only its refresh of expiring
#            records (less than 5 s + 1 % of the TTL left) when they are asked for;
#            net.tcp_pipeline(1000) (with the default 100 it answers SERVFAIL to queries beyond
#            100 in flight on its upstream connection); both upstreams in one TLS_FORWARD
#            (kresd's server selection picks by measured round trip, retries another after a
#            time out).
set -eu
lat=0
[ "$1" != -latency ] || { lat=1; shift; }
name=$1 pki=$2 w=$3 port=$4 up=$5 up2=${6:-}
mkdir -p "$w"
case $name in
stubby)
	# getdns stub over TLS, no cache; strict authentication against our root.
	cat > "$w/stubby.yml" <<C
resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list: [ GETDNS_TRANSPORT_TLS ]
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_query_padding_blocksize: 128
edns_client_subnet_private: 1
round_robin_upstreams: 1
idle_timeout: 10000
tls_ca_file: "$pki/root.pem"
listen_addresses: [ 127.0.0.1@$port ]
limit_outstanding_queries: 1000
upstream_recursive_servers:
  - address_data: 127.0.0.1
    tls_port: $up
    tls_auth_name: "dns.test"
C
	exec stubby -C "$w/stubby.yml" ;;
unbound)
	# Caching forwarder over TLS. On loopback it needs do-not-query-localhost: no, and
	# local-zone "test." nodefault (test. is a default-blocked zone; the health name is in it).
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
C
		if [ $lat = 1 ]; then
			echo '  do-not-query-localhost: no'
			echo '  prefetch: yes'
			echo '  wait-limit: 0'
			echo "  infra-cache-min-rtt: ${LAT_UNBOUND_MIN_RTT:-20}"
		else
			echo '  local-zone: "test." nodefault'
			echo '  do-not-query-localhost: no'
		fi
		cat <<C
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
dnsdist)
	# DoT backend with certificate validation and a packet cache. setUp() because its health
	# check would otherwise keep the backend "down" at start; no security polling (that would
	# be a query to the public internet).
	cat > "$w/dnsdist.conf" <<C
setLocal("127.0.0.1:$port")
setSecurityPollSuffix("")
srv = newServer({address="127.0.0.1:$up", tls="openssl", subjectName="dns.test", caStore="$pki/root.pem", validateCertificates=true, checkName="example.test."})
srv:setUp()
pc = newPacketCache(100000)
getPool(""):setCache(pc)
C
	# --supervised: stays in the foreground, no console; this pid is the server.
	exec dnsdist --supervised --disable-syslog -C "$w/dnsdist.conf" ;;
kresd)
	# One kresd process (-n: non-interactive, no forking); no trust-anchor updates or
	# time-jump probes (they would query the root), everything TLS_FORWARDed to the upstream(s).
	t2="" more=""
	[ -z "$up2" ] || t2=", {'127.0.0.1@$up2', hostname='dns.test', ca_file='$pki/root.pem'}"
	[ $lat = 0 ] || more="net.tcp_pipeline(1000)
modules.load('predict')
predict.config({ period = 0 })
"
	cat > "$w/kresd.conf" <<C
net.listen('127.0.0.1', $port, { kind = 'dns' })
modules.unload('ta_update')
modules.unload('detect_time_jump')
trust_anchors.remove('.')
${more}policy.add(policy.all(policy.TLS_FORWARD({{'127.0.0.1@$up', hostname='dns.test', ca_file='$pki/root.pem'}$t2})))
C
	mkdir -p "$w/kres"
	exec kresd -n -c "$w/kresd.conf" "$w/kres" </dev/null ;;
*)
	echo "peers.sh: unknown peer '$name'" >&2; exit 2 ;;
esac
