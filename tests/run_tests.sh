#!/usr/bin/env bash
# run_tests.sh BUILD [FUZZ_TARGET ...] — runs every test ringmq has:
#   1. each cmocka unit test binary under BUILD/tests/
#   2. each fuzz target replayed over its checked-in corpus
#   3. each integration script tests/integration/*.sh (given BUILD), except
#      those named in RINGMQ_SKIP_SCRIPTS (space-separated basenames)
# Every test runs under a timeout. Exits non-zero if any failed.
set -u
build=${1:?usage: run_tests.sh BUILD [FUZZ_TARGET ...]}
shift
cd "$(dirname "$0")/.."

failed=()
passed=0
run() {
	local name=$1 limit=$2
	shift 2
	local start=$SECONDS
	if timeout --kill-after=10 "$limit" "$@"; then
		passed=$((passed + 1))
		echo "ok    $name ($((SECONDS - start))s)"
	else
		local rc=$?
		failed+=("$name")
		echo "FAIL  $name (exit $rc, $((SECONDS - start))s)"
	fi
}

echo "== unit tests"
for t in $(find "$build/tests" -type f -perm -u+x 2>/dev/null | sort); do
	run "${t#"$build"/tests/}" 300 "$t"
done

echo "== fuzz corpus replay"
for f in "$@"; do
	corpus=tests/fuzz/corpus/$f
	[ -d "$corpus" ] || { failed+=("$f: no corpus at $corpus"); continue; }
	run "replay $f" 300 "$build/fuzz-replay/$f" "$corpus"
done

echo "== integration tests"
for s in tests/integration/*.sh; do
	[ -e "$s" ] || continue
	case " ${RINGMQ_SKIP_SCRIPTS:-} " in
	*" $(basename "$s") "*) echo "skip  $(basename "$s") (RINGMQ_SKIP_SCRIPTS)"; continue ;;
	esac
	run "$(basename "$s")" 600 bash "$s" "$build"
done

echo
echo "passed: $passed, failed: ${#failed[@]}"
for f in "${failed[@]}"; do echo "  failed: $f"; done
[ ${#failed[@]} -eq 0 ]
