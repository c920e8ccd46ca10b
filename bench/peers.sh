#!/bin/sh
# Start ONE peer DoT forwarder in the foreground (exec, so `$!` of `sh peers.sh ... &` is the
# server's own pid: the process whose CPU time and peak RSS the bench reads), configured to
# listen on 127.0.0.1@PORT and to forward only to the local DoT upstream 127.0.0.1@UPPORT
# (certificate name dns.test, signed by PKIDIR/root.pem). Never any other upstream.
# usage: peers.sh stubby|unbound|dnsdist|kresd PKIDIR WORKDIR PORT UPPORT
set -eu
name=$1 pki=$2 w=$3 port=$4 up=$5
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
	cat > "$w/unbound-fwd.conf" <<C
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
  local-zone: "test." nodefault
  do-not-query-localhost: no
forward-zone:
  name: "."
  forward-tls-upstream: yes
  forward-addr: 127.0.0.1@$up#dns.test
remote-control:
  control-enable: no
C
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
	# time-jump probes (they would query the root), everything TLS_FORWARDed to the upstream.
	cat > "$w/kresd.conf" <<C
net.listen('127.0.0.1', $port, { kind = 'dns' })
modules.unload('ta_update')
modules.unload('detect_time_jump')
trust_anchors.remove('.')
policy.add(policy.all(policy.TLS_FORWARD({{'127.0.0.1@$up', hostname='dns.test', ca_file='$pki/root.pem'}})))
C
	mkdir -p "$w/kres"
	exec kresd -n -c "$w/kresd.conf" "$w/kres" </dev/null ;;
*)
	echo "peers.sh: unknown peer '$name'" >&2; exit 2 ;;
esac
