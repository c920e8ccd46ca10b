#!/bin/sh
# .ci/fuzz.sh: the fuzz campaign of make fuzz, over libFuzzer harnesses already built.
#
# Usage: sh .ci/fuzz.sh HARNESS...     (make fuzz: the harnesses of FUZZ_HARNESSES)
#
# For each HARNESS (fuzz_query, fuzz_tcp, ...), built as $FUZZ_DIR/HARNESS (make fuzz-build):
#   1. replays tests/fuzz/regress/HARNESS-* (known crashes, fixed or not) and fails on any;
#   2. fuzzes for FUZZ_SECONDS from the seeds tests/fuzz/corpus/HARNESS/, new inputs going to
#      $FUZZ_DIR/work/HARNESS/ and a crashing one to $FUZZ_DIR/HARNESS-crash-*; fails on a crash,
#      else prints libFuzzer's final statistics.
# The logs are $FUZZ_DIR/HARNESS.regress.log and $FUZZ_DIR/HARNESS.log. Paths are relative to
# the top of the repository, where it runs.
#
# Environment:
#   FUZZ_SECONDS  seconds of fuzzing per harness (default: 60)
#   FUZZ_DIR      where the harnesses are and the results go (default: build/fuzz)
set -eu

cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_DIR=${FUZZ_DIR:-build/fuzz}

if [ $# -eq 0 ]; then
	echo "usage: $0 HARNESS..." >&2
	exit 2
fi

# Inputs longer than a harness can see are wasted: the longest each one reads.
max_len() {
	case $1 in
	fuzz_answer) echo -max_len=16384 ;;
	fuzz_cert) echo -max_len=8192 ;;
	fuzz_http) echo -max_len=1024 ;;
	fuzz_tcp) echo -max_len=70000 ;;
	esac
}

# replay HARNESS: run the harness on each of its regression inputs, if it has any.
replay() {
	h=$1
	set --
	for f in tests/fuzz/regress/"$h"-*; do
		if [ -f "$f" ]; then set -- "$@" "$f"; fi
	done
	[ $# -gt 0 ] || return 0
	echo "fuzz: $h: replaying $# regression input(s)"
	"$FUZZ_DIR/$h" "$@" >"$FUZZ_DIR/$h.regress.log" 2>&1 || {
		tail -n 40 "$FUZZ_DIR/$h.regress.log"
		echo "fuzz: $h FAILED on a regression input (log: $FUZZ_DIR/$h.regress.log)"
		exit 1
	}
}

# campaign HARNESS: FUZZ_SECONDS of fuzzing from its corpus.
campaign() {
	h=$1
	mkdir -p "$FUZZ_DIR/work/$h"
	echo "fuzz: $h for $FUZZ_SECONDS s"
	# shellcheck disable=SC2046 # max_len prints nothing or one word
	"$FUZZ_DIR/$h" -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 $(max_len "$h") \
		-artifact_prefix="$FUZZ_DIR/$h-crash-" \
		"$FUZZ_DIR/work/$h" "tests/fuzz/corpus/$h" >"$FUZZ_DIR/$h.log" 2>&1 || {
		tail -n 60 "$FUZZ_DIR/$h.log"
		echo "fuzz: $h FAILED (input: $FUZZ_DIR/$h-crash-*)"
		exit 1
	}
	grep -E '^#[0-9]+[[:space:]]+DONE' "$FUZZ_DIR/$h.log" | sed "s/^/fuzz: $h: /"
	grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec' "$FUZZ_DIR/$h.log" |
		sed "s/^/fuzz: $h: /"
}

for h in "$@"; do
	if [ ! -x "$FUZZ_DIR/$h" ]; then
		echo "fuzz: $FUZZ_DIR/$h is not built (make fuzz-build)" >&2
		exit 1
	fi
	replay "$h"
	campaign "$h"
done
