#!/bin/sh
# tests/openwrt/harness.sh INIT-SCRIPT UCI-CONFIG [ACTION [ARG...]]
#
# Runs an OpenWrt procd init script's functions outside OpenWrt: stand-ins for the functions
# rc.common, /lib/functions.sh and /lib/functions/procd.sh give it, reading UCI-CONFIG (a
# file in /etc/config syntax, which is shell: 'config', 'option' and 'list' are functions
# here, as they are in OpenWrt's uci_load). uci_load_validate is OpenWrt's own; the
# validate_data it calls is tests/openwrt/ucistub.py validate. ACTION:
#   start_service (default; also 'start_service_only'): what procd would be told
#   start       rc.common's start: start_service, then service_started
#   stop [NAME] rc.common's stop as far as the script goes: stop_service
#   restart, shutdown, disable: the script's own (rc.common's stop and start as above)
#   triggers    service_triggers
#   validate    the script's validate function without a section (procd_add_validation)
# procd's part is printed, one line per value:
#   INSTANCE command ARG        (each argument of the command line, in order)
#   INSTANCE PARAM VALUE...     (every other procd_set_param)
#   INSTANCE jail NAME FLAG...  (procd_add_jail), INSTANCE jail_mount PATH...
#   trigger reload CONFIG       (service_triggers), validation FUNCTION
# HARNESS_PROG, HARNESS_HANDOFF and HARNESS_IF_INET6 replace the script's PROG, HANDOFF and
# IF_INET6 (the binary, /usr/libexec/dotproxy-dnsmasq and /proc/net/if_inet6).
# shellcheck disable=SC2034 # PROG, HANDOFF, IF_INET6, initscript: read by the init script
# shellcheck disable=SC3043 # local: as OpenWrt's procd.sh (busybox ash and dash have it)
set -eu

[ $# -ge 2 ] || { echo "usage: $0 INIT-SCRIPT UCI-CONFIG [ACTION [ARG...]]" >&2; exit 2; }
init=$1
uci_file=$2
action=${3:-start_service}
[ $# -lt 3 ] || shift 3
here=$(cd "$(dirname "$0")" && pwd)
initscript=$init

# ---------------------------------------------------------------- UCI (functions.sh)
_sections=
_nsec=0
_cur=

# UCI names are [A-Za-z0-9_]; a section name or option name outside that would break eval.
_check_name() {
	case $1 in
	'' | *[!A-Za-z0-9_]*) echo "harness: bad UCI name '$1'" >&2; exit 1 ;;
	esac
}

package() { :; }

# As OpenWrt's: an unnamed section is cfg<N>, N counting every section so far.
config() {
	_nsec=$((_nsec + 1))
	_cur=${2:-cfg$_nsec}
	_check_name "$_cur"
	_sections="$_sections $_cur"
	eval "CONFIG_${_cur}_TYPE=\$1"
}

option() {
	_check_name "$1"
	eval "CONFIG_${_cur}_$1=\$2"
}

# As OpenWrt's: items in CONFIG_<s>_<o>_ITEM<n>, and the plain value is the items joined
# by spaces.
list() {
	_check_name "$1"
	eval "_n=\${CONFIG_${_cur}_$1_LENGTH:-0}"
	_n=$((_n + 1))
	eval "CONFIG_${_cur}_$1_ITEM$_n=\$2"
	eval "CONFIG_${_cur}_$1_LENGTH=$_n"
	eval "CONFIG_${_cur}_$1=\"\${CONFIG_${_cur}_$1:+\$CONFIG_${_cur}_$1 }\$2\""
}

config_load() {
	[ "$1" = dotproxy ] || { echo "harness: config_load $1 (want dotproxy)" >&2; exit 1; }
	# shellcheck disable=SC1090 # the fixture, given on the command line
	. "$uci_file"
}

# config_get VAR SECTION OPTION [DEFAULT]
config_get() {
	_check_name "$2"
	_check_name "$3"
	eval "_isset=\${CONFIG_$2_$3+x}"
	if [ -n "$_isset" ]; then
		eval "$1=\$CONFIG_$2_$3"
	else
		eval "$1=\${4-}"
	fi
}

# config_get_bool VAR SECTION OPTION [DEFAULT]: 1 or 0 (OpenWrt's spellings).
config_get_bool() {
	config_get _b "$2" "$3" "${4-}"
	case $_b in
	1 | on | true | yes | enabled) _b=1 ;;
	0 | off | false | no | disabled) _b=0 ;;
	*) _b=${4-} ;;
	esac
	eval "$1=\$_b"
}

# config_list_foreach SECTION OPTION FUNCTION [ARGS...]
config_list_foreach() {
	_s=$1 _o=$2 _f=$3
	shift 3
	_len=0
	eval "_len=\${CONFIG_${_s}_${_o}_LENGTH:-0}"
	_i=0
	while [ "$_i" -lt "$_len" ]; do
		_i=$((_i + 1))
		eval "_item=\$CONFIG_${_s}_${_o}_ITEM$_i"
		# shellcheck disable=SC2154 # set by the eval above
		"$_f" "$_item" "$@"
	done
}

# config_foreach FUNCTION [TYPE [ARGS...]]: FUNCTION SECTION ARGS... for each section
config_foreach() {
	_fe_f=$1
	_fe_t=${2-}
	[ $# -lt 2 ] || shift 2
	for _fe_s in $_sections; do
		eval "_fe_type=\$CONFIG_${_fe_s}_TYPE"
		# shellcheck disable=SC2154 # set by the eval above
		if [ -z "$_fe_t" ] || [ "$_fe_type" = "$_fe_t" ]; then
			"$_fe_f" "$_fe_s" "$@" || true  # as OpenWrt's: a failure does not stop the loop
		fi
	done
}

# ---------------------------------------------------------------- procd (procd.sh)
_inst=

procd_open_instance() {
	[ -z "$_inst" ] || { echo "harness: procd_open_instance inside an instance" >&2; exit 1; }
	_inst=${1:-instance1}
}

procd_close_instance() {
	[ -n "$_inst" ] || { echo "harness: procd_close_instance without an instance" >&2; exit 1; }
	_inst=
}

_param() {
	[ -n "$_inst" ] || { echo "harness: procd_*_param outside an instance" >&2; exit 1; }
	_k=$1
	shift
	if [ "$_k" = command ]; then
		for _a in "$@"; do printf '%s command %s\n' "$_inst" "$_a"; done
	else
		printf '%s %s' "$_inst" "$_k"
		printf ' %s' "$@"
		printf '\n'
	fi
}

procd_set_param() { _param "$@"; }
procd_append_param() { _param "$@"; }

procd_add_reload_trigger() {
	for _c in "$@"; do printf 'trigger reload %s\n' "$_c"; done
}

procd_add_validation() {
	printf 'validation %s\n' "$1"
}

procd_add_jail() {
	_param jail "$@"
}

procd_add_jail_mount() {
	_param jail_mount "$@"
}

# ---------------------------------------------------------------- validation (procd.sh)
validate_data() { # PACKAGE TYPE SECTION SPEC...
	_vt=$2 _vn=$3
	shift 3
	/usr/bin/python3 "$here/ucistub.py" validate "$uci_file" "$_vt" "$_vn" "$@"
}

# As OpenWrt's (procd.sh), with validate_data for /sbin/validate_data.
uci_validate_section() {
	local _package="$1"
	local _type="$2"
	local _name="$3"
	local _result
	local _error
	shift; shift; shift
	_result=$(validate_data "$_package" "$_type" "$_name" "$@" 2>/dev/null) && _error=0 || _error=$?
	eval "$_result"
	[ "$_error" = "0" ] || validate_data "$_package" "$_type" "$_name" "$@" >/dev/null || true
	return $_error
}

uci_load_validate() {
	local _package="$1"
	local _type="$2"
	local _name="$3"
	local _function="$4"
	local _option
	local _result
	shift; shift; shift; shift
	for _option in "$@"; do
		eval "local ${_option%%:*}"
	done
	uci_validate_section "$_package" "$_type" "$_name" "$@" && _result=0 || _result=$?
	[ -n "$_function" ] || return $_result
	eval "$_function \"\$_name\" \"\$_result\""
}

# ---------------------------------------------------------------- rc.common
start() {
	start_service "$@"
	service_started "$@"
}

stop() {
	stop_service "$@"
}

# ---------------------------------------------------------------- the script
# shellcheck disable=SC1090 # the init script under test
. "$init"
[ -z "${HARNESS_PROG-}" ] || PROG=$HARNESS_PROG
[ -z "${HARNESS_HANDOFF-}" ] || HANDOFF=$HARNESS_HANDOFF
[ -z "${HARNESS_IF_INET6-}" ] || IF_INET6=$HARNESS_IF_INET6

case $action in
start_service)
	start_service "$@"
	[ -z "$_inst" ] || { echo "harness: instance '$_inst' left open" >&2; exit 1; }
	;;
start | stop | restart | shutdown | disable) "$action" "$@" ;;
triggers) service_triggers ;;
validate) validate_dotproxy_section "" "" ;;
*) echo "harness: unknown action $action" >&2; exit 2 ;;
esac
