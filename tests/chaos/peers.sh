#!/bin/sh
# One peer of the chaos run, in the foreground (exec: `$!` is the server's own pid), listening on
# 127.0.0.1@PORT and forwarding over TLS to the relay(s) on 127.0.0.1@UPPORT [and @UPPORT2], in
# that order of preference (certificate name dns.test, signed by PKIDIR/root.pem). The settings
# are bench/peers.sh's, plus what the chaos run needs (see bench/README.md, "Chaos run").
# usage: peers.sh unbound|kresd PKIDIR WORKDIR PORT TIMEOUT_MS UPPORT [UPPORT2]
set -eu
name=$1 pki=$2 w=$3 port=$4 tmo=$5 up=$6 up2=${7:-}
mkdir -p "$w"
case $name in
unbound)
	# discard-timeout: unbound 1.17.1 (Debian) drops a client query it could not answer within
	#   this many ms (default 1900); set to the run's timeout, its nearest equivalent of
	#   dotproxy's --timeout (it drops where dotproxy answers SERVFAIL).
	# wait-limit 0: the default (1000 replies waiting per client address) would drop queries of
	#   our single client address during a stall, a rate limit rather than availability.
	# infra-keep-probing: keep probing an upstream marked down (otherwise it can stay down for
	#   infra-host-ttl, 900 s).
	fwd2=""
	[ -z "$up2" ] || fwd2="  forward-addr: 127.0.0.1@$up2#dns.test"
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
  discard-timeout: $tmo
  wait-limit: 0
  infra-keep-probing: yes
forward-zone:
  name: "."
  forward-tls-upstream: yes
  forward-addr: 127.0.0.1@$up#dns.test
$fwd2
remote-control:
  control-enable: no
C
	exec unbound -d -c "$w/unbound-fwd.conf" ;;
kresd)
	# Knot Resolver 5.6 has no setting for the time it gives a query: its limit is built in
	# (KR_RESOLVE_TIME_LIMIT, 10 s), so TIMEOUT_MS is not used.
	t2=""
	[ -z "$up2" ] || t2=", {'127.0.0.1@$up2', hostname='dns.test', ca_file='$pki/root.pem'}"
	cat > "$w/kresd.conf" <<C
net.listen('127.0.0.1', $port, { kind = 'dns' })
modules.unload('ta_update')
modules.unload('detect_time_jump')
trust_anchors.remove('.')
policy.add(policy.all(policy.TLS_FORWARD({{'127.0.0.1@$up', hostname='dns.test', ca_file='$pki/root.pem'}$t2})))
C
	mkdir -p "$w/kres"
	exec kresd -n -c "$w/kresd.conf" "$w/kres" </dev/null ;;
*)
	echo "peers.sh: unknown peer '$name'" >&2; exit 2 ;;
esac
