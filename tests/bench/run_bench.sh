#!/usr/bin/env bash
# run_bench.sh BUILD — runs ringmq's benchmarks and prints their figures, as
# Markdown for docs/benchmarks.md at the end. Called by `make bench`.
#
# Environment:
#   BENCH_DIR           where data dirs go (default BUILD): it must be on the
#                       disk you mean to measure, which is why not /tmp
#   BENCH_STORAGE_ARGS  extra bench_storage options, e.g. "--runs 5 --seconds 5"
#   BENCH_DD_MIB        size of the dd reference write (default 1024; 0: skip)
set -euo pipefail
build=${1:?usage: run_bench.sh BUILD}
cd "$(dirname "$0")/../.."

base=${BENCH_DIR:-$build}
mkdir -p "$base"
# Everything a run writes lives here, so an interrupted run leaves nothing.
work=$(mktemp -d "$base/bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
md=$work/results.md

echo "== machine"
echo "tree: $(git describe --always --dirty 2>/dev/null || echo "not a git checkout")"
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
echo "kernel $(uname -r), $(nproc) cores, $mem RAM"
# Other work on the machine skews every figure: say how busy it was.
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
dev() { df -P "$1" | awk 'NR == 2 {print $1}'; }
echo "data: $base on $(dev "$base") ($(stat -f -c %T "$base")); /tmp on $(dev /tmp)"

echo
echo "== storage"
dd_mib=${BENCH_DD_MIB:-1024}
dd_lines=()
if [ "$dd_mib" -gt 0 ]; then
	# dd's own figure, as a cross-check of bench_storage's raw writer.
	for i in 1 2 3; do
		line=$(dd if=/dev/zero of="$work/dd" bs=1M count="$dd_mib" conv=fdatasync 2>&1 |
			tail -n 1)
		rm -f "$work/dd"
		sync -f "$work"
		echo "dd bs=1M count=$dd_mib conv=fdatasync, run $i: $line"
		dd_lines+=("${line##*, }")
	done
fi
# shellcheck disable=SC2086 # BENCH_STORAGE_ARGS is a list of options
"$build/bench/bench_storage" --dir "$work" --md "$md" ${BENCH_STORAGE_ARGS:-}

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
echo "== Markdown for docs/benchmarks.md"
echo
echo "### Results"
echo
if [ ${#dd_lines[@]} -gt 0 ]; then
	echo "\`dd if=/dev/zero bs=1M count=$dd_mib conv=fdatasync\`, 3 runs: ${dd_lines[*]}."
	echo
fi
cat "$md"
