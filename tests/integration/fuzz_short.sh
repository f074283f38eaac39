#!/usr/bin/env bash
# fuzz_short.sh BUILD — a short libFuzzer run of every fuzz target, so that a
# change which makes a parser crash on a mutation of its corpus fails `make
# test`, not only `make fuzz`.
#
# Each tests/fuzz/fuzz_*.c is built as `make fuzz` builds it (the flags and
# sources are read from the Makefile) into BUILD/fuzz-short/, and run for
# FUZZ_SHORT_SECONDS (default 10) over a copy of its corpus, as many at once
# as there are CPUs. Any crash, sanitizer report or hang fails the script;
# the input that did it is left in BUILD/fuzz-short/artifacts/. Without
# clang (or its libFuzzer runtime) it says so and passes: the replays in
# run_tests.sh still cover the checked-in corpora with any compiler.
set -euo pipefail

BUILD=$(cd "${1:?usage: fuzz_short.sh BUILD}" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SECS=${FUZZ_SHORT_SECONDS:-10}
CLANG=${CLANG:-clang}
OUT=$BUILD/fuzz-short

if ! command -v "$CLANG" >/dev/null 2>&1; then
	echo "fuzz_short.sh: skipped: $CLANG is not installed (tools/deps.sh --fuzz installs it)"
	exit 0
fi

# A make variable's value. The parent make's flags (its jobserver among them)
# mean nothing to this one.
mkvar() {
	# shellcheck disable=SC2016 # $($*) is for make to expand
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory -C "$ROOT" \
		--eval 'fuzz-short-var-%: ; @echo $($*)' "fuzz-short-var-$1"
}
FLAGS=$(mkvar FUZZ_CFLAGS)
LIBS=$(mkvar LIBS)
read -r -a SRCS <<<"$(mkvar COMMON_SRC) $(mkvar STORAGE_SRC) $(mkvar PROTO_SRC) $(mkvar PARSER_SRC)"
read -r -a TARGETS <<<"$(mkvar FUZZ_TARGETS)"
if [ -z "$FLAGS" ] || [ ${#SRCS[@]} -eq 0 ] || [ ${#TARGETS[@]} -eq 0 ]; then
	echo "fuzz_short.sh: cannot read the fuzz build from the Makefile" >&2
	exit 1
fi

rm -rf "$OUT"
mkdir -p "$OUT/obj" "$OUT/artifacts" "$OUT/logs"

# clang may be there without the libFuzzer runtime (libclang-rt-*-dev).
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' \
	>"$OUT/probe.c"
# shellcheck disable=SC2086 # FLAGS is a list of words
if ! "$CLANG" $FLAGS "$OUT/probe.c" -o "$OUT/probe" >"$OUT/logs/probe.log" 2>&1; then
	echo "fuzz_short.sh: skipped: $CLANG cannot link libFuzzer programs" \
		"(tools/deps.sh --fuzz installs its runtime): $(head -1 "$OUT/logs/probe.log")"
	exit 0
fi

JOBS=$(nproc 2>/dev/null || echo 2)
start=$SECONDS

# The shared sources once, then each target; compiles run JOBS at a time.
compile_all() {
	local src obj n=0
	for src in "$@"; do
		obj=$OUT/obj/$(echo "${src%.c}" | tr / _).o
		# shellcheck disable=SC2086
		"$CLANG" $FLAGS -c "$src" -o "$obj" 2>"$obj.log" || { echo "$src" >>"$OUT/compile-failed"; } &
		n=$((n + 1))
		if [ "$n" -ge "$JOBS" ]; then
			wait -n || true
			n=$((n - 1))
		fi
	done
	wait
}
TSRCS=()
for t in "${TARGETS[@]}"; do TSRCS+=("tests/fuzz/$t.c"); done
compile_all "${SRCS[@]}" "${TSRCS[@]}"
if [ -e "$OUT/compile-failed" ]; then
	while read -r src; do
		echo "fuzz_short.sh: $src does not compile:" >&2
		head -20 "$OUT/obj/$(echo "${src%.c}" | tr / _).o.log" >&2
	done <"$OUT/compile-failed"
	exit 1
fi
COMMON_OBJS=()
for src in "${SRCS[@]}"; do COMMON_OBJS+=("$OUT/obj/$(echo "${src%.c}" | tr / _).o"); done
for t in "${TARGETS[@]}"; do
	# shellcheck disable=SC2086
	"$CLANG" $FLAGS "$OUT/obj/tests_fuzz_$t.o" "${COMMON_OBJS[@]}" -o "$OUT/$t" $LIBS ||
		{ echo "fuzz_short.sh: cannot link $t" >&2; exit 1; }
done
echo "   built ${#TARGETS[@]} targets in $((SECONDS - start)) s"

# One target over a copy of its corpus: libFuzzer adds what it finds to
# the first directory it is given, which must not be the checked-in one.
fuzz_one() {
	local t=$1 rc=0
	mkdir -p "$OUT/corpus/$t" "$OUT/work/$t"
	if [ -d "tests/fuzz/corpus/$t" ]; then
		cp -R "tests/fuzz/corpus/$t/." "$OUT/corpus/$t/"
	fi
	# -timeout: one input running that long is a hang; the outer timeout
	# is for libFuzzer itself getting stuck.
	(cd "$OUT/work/$t" && timeout --kill-after=10 $((SECS + 120)) "$OUT/$t" \
		-max_total_time="$SECS" -max_len=65536 -timeout=60 -print_final_stats=1 \
		-artifact_prefix="$OUT/artifacts/$t-" "$OUT/corpus/$t") \
		>"$OUT/logs/$t.log" 2>&1 || rc=$?
	echo "$rc" >"$OUT/logs/$t.rc"
}

start=$SECONDS
n=0
for t in "${TARGETS[@]}"; do
	fuzz_one "$t" &
	n=$((n + 1))
	if [ "$n" -ge "$JOBS" ]; then
		wait -n || true
		n=$((n - 1))
	fi
done
wait

failed=0
for t in "${TARGETS[@]}"; do
	rc=$(cat "$OUT/logs/$t.rc" 2>/dev/null || echo "?")
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/logs/$t.log" | tail -1)
	if [ "$rc" = 0 ]; then
		echo "   ok    $t: ${runs:-?} runs"
	else
		failed=1
		echo "   FAIL  $t (exit $rc); log: $OUT/logs/$t.log"
		grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|artifact_prefix|Test unit written)' \
			"$OUT/logs/$t.log" | head -8 | sed 's/^/         /'
	fi
done
echo "   fuzzed for $((SECONDS - start)) s, $JOBS at a time"
[ "$failed" -eq 0 ] || { echo "fuzz_short.sh: a fuzz target failed" >&2; exit 1; }
echo "fuzz_short.sh: all passed"
