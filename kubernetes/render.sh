#!/bin/sh
# render.sh: writes kubernetes/dotproxy.yaml with your parameters to standard output.
#   kubernetes/render.sh --image registry.example/dotproxy:0.1.0 \
#       --agent-image registry.example/dotproxy-netutils:0.1.0 \
#       --kube-dns-ip "$(kubectl -n kube-system get svc kube-dns -o jsonpath='{.spec.clusterIP}')" \
#       >dotproxy-mine.yaml
# Options (each left out keeps dotproxy.yaml's value):
#   --image REF           dotproxy's image (the repository's Dockerfile)
#   --agent-image REF     the setup and node-agent containers' image (netutils/Dockerfile)
#   --kube-dns-ip IP      the kube-dns Service's ClusterIP (default 10.96.0.10)
#   --cluster-domain DOM  the kubelet's clusterDomain (default cluster.local)
#   --link-local-ip IP    the node-local address (default 169.254.20.10)
#   --upstream SPEC,...   the DNS-over-TLS upstreams, dotproxy's --upstream syntax
#   --link-local          link-local mode: no interception of the kube-dns ClusterIP (point
#                         the kubelets' clusterDNS at the link-local address)
#   --notrack             (link-local mode) no conntrack for queries to the link-local address
#   --force-tcp           the cluster zones to kube-dns over TCP only (CoreDNS's force_tcp)
# It only replaces values in dotproxy.yaml (sed): what it writes is that file, with them.
set -eu

die() {
	echo "render.sh: $*" >&2
	exit 2
}

# check NAME VALUE PATTERN: VALUE is made only of the characters PATTERN (a bracket
# expression's inside) allows, so that it cannot break the YAML or the sed command.
check() {
	case $2 in
	'' | *[!$3]*) die "bad $1 '$2'" ;;
	esac
}

src=$(dirname "$0")/dotproxy.yaml
edits=
# set KEY VALUE: the ConfigMap dotproxy-config's line "  KEY: ..." gets "VALUE".
set_key() {
	edits="$edits
s|^  $1: \".*\"\$|  $1: \"$2\"|"
}
line="# Rendered by kubernetes/render.sh"

while [ $# -gt 0 ]; do
	opt=$1
	case $opt in
	--link-local | --notrack | --force-tcp) val= ;;
	--image | --agent-image | --kube-dns-ip | --cluster-domain | --link-local-ip | --upstream)
		[ $# -ge 2 ] || die "$opt needs a value"
		val=$2
		shift
		;;
	-h | --help)
		sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown option '$opt' (--help)" ;;
	esac
	shift
	line="$line $opt${val:+ $val}"
	case $opt in
	--image)
		check "$opt" "$val" 'A-Za-z0-9./:@_-'
		edits="$edits
s|^          image: ghcr.io/OWNER/dotproxy:0.1.0\$|          image: $val|"
		;;
	--agent-image)
		check "$opt" "$val" 'A-Za-z0-9./:@_-'
		edits="$edits
s|^          image: ghcr.io/OWNER/dotproxy-netutils:0.1.0\$|          image: $val|"
		;;
	--kube-dns-ip)
		check "$opt" "$val" '0-9A-Fa-f.:'
		set_key KUBE_DNS_IP "$val"
		;;
	--link-local-ip)
		check "$opt" "$val" '0-9A-Fa-f.:'
		set_key LINK_LOCAL_IP "$val"
		;;
	--cluster-domain)
		check "$opt" "$val" 'A-Za-z0-9.-'
		set_key CLUSTER_DOMAIN "$val"
		;;
	--upstream)
		check "$opt" "$val" 'A-Za-z0-9.:@#^/+=,_-'
		set_key DOT_SERVER "$val"
		;;
	--link-local)
		link_local=1
		;;
	--notrack) set_key NOTRACK 1 ;;
	--force-tcp) set_key FORWARD_TRANSPORT ,tcp ;;
	esac
done
if [ -n "${link_local:-}" ]; then
	# after any --kube-dns-ip: the ClusterIP is not held, dotproxy does not listen on it
	set_key KUBE_DNS_IP ""
	edits="$edits
/^            - --listen=\$(KUBE_DNS_IP)@53 /d"
fi

echo "$line"
sed -e "$edits" "$src"
