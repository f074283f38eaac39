#!/usr/bin/env bash
# run_bench.sh BUILD — runs ringmq's benchmarks and prints their figures, as
# Markdown for docs/benchmarks.md at the end. Called by `make bench`.
#
# Two parts: the storage benchmark (bench_storage), then a real ringmqd
# measured with mqbench next to the raw limits of the same machine, taken in
# the same rounds: loopback TCP bandwidth, disk write bandwidth and the 4 KiB
# write + fdatasync rate.
#
# Environment:
#   BENCH_DIR           where data dirs go (default BUILD): it must be on the
#                       disk you mean to measure, which is why not /tmp
#   BENCH_PARTS         which parts run (default "storage broker")
#   BENCH_STORAGE_ARGS  extra bench_storage options, e.g. "--runs 5 --seconds 5"
#   BENCH_DD_MIB        size of the dd reference write (default 1024; 0: skip)
#   BENCH_ROUNDS        broker rounds (default 3); figures are median (min–max)
#   BENCH_PRODUCE_S     seconds per produce run (default 5)
#   BENCH_E2E_S         seconds per produce→fetch latency run (default 20)
#   BENCH_E2E_RATE      messages/s of those runs (default 20000)
#   BENCH_LOG_MIB       size of each log the consume runs read (default 1024)
set -euo pipefail
build=${1:?usage: run_bench.sh BUILD}
cd "$(dirname "$0")/../.."

want() {
	case " ${BENCH_PARTS:-storage broker} " in
	*" $1 "*) return 0 ;;
	esac
	return 1
}

base=${BENCH_DIR:-$build}
mkdir -p "$base"
# Everything a run writes lives here, so an interrupted run leaves nothing.
work=$(mktemp -d "$base/bench.XXXXXX")
bpid=
# The broker goes first (by its PID, with SIGTERM, then SIGKILL after 10 s),
# then its data.
stop_broker() {
	[ -n "$bpid" ] || return 0
	kill -TERM "$bpid" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "$bpid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$bpid" 2>/dev/null || true
	wait "$bpid" 2>/dev/null || true
	bpid=
}
trap 'stop_broker; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
md=$work/results.md

echo "== machine"
echo "tree: $(git describe --always --dirty 2>/dev/null || echo "not a git checkout")"
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
echo "kernel $(uname -r), $(nproc) cores, $mem RAM"
# Other work on the machine skews every figure: say how busy it was.
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
dev() { df -P "$1" | awk 'NR == 2 {print $1}'; }
echo "data: $base on $(dev "$base") ($(stat -f -c %T "$base")); /tmp on $(dev /tmp)"

dd_lines=()
dd_mib=${BENCH_DD_MIB:-1024}
if want storage; then
	echo
	echo "== storage"
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
	echo "load average at end of storage: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

# ---- broker ----

rounds=${BENCH_ROUNDS:-3}
produce_s=${BENCH_PRODUCE_S:-5}
e2e_s=${BENCH_E2E_S:-20}
e2e_rate=${BENCH_E2E_RATE:-20000}
log_mib=${BENCH_LOG_MIB:-1024}
bwork=$work/broker
res=$work/broker-results
bmd=$work/broker.md
tck=$(getconf CLK_TCK)
incomplete=()
round=0
addr=
http=

start_broker() {
	mkdir -p "$bwork"
	"$build/bin/ringmqd" --data-dir "$bwork/data" --listen 127.0.0.1:0 --http 127.0.0.1:0 \
		2>"$bwork/ringmqd.log" &
	bpid=$!
	local ready=
	for _ in $(seq 100); do
		ready=$(grep -m1 '^ringmqd: ready on ' "$bwork/ringmqd.log" || true)
		[ -n "$ready" ] && break
		if ! kill -0 "$bpid" 2>/dev/null; then
			cat "$bwork/ringmqd.log" >&2
			echo "run_bench.sh: ringmqd exited before it was ready" >&2
			exit 1
		fi
		sleep 0.1
	done
	if [ -z "$ready" ]; then
		echo "run_bench.sh: no ready line from ringmqd within 10 s" >&2
		exit 1
	fi
	# "ringmqd: ready on HOST:PORT (http HOST:PORT)"
	addr=${ready#ringmqd: ready on }
	addr=${addr%% *}
	http=${ready##*(http }
	http=${http%)}
	echo "ringmqd (pid $bpid) ready on $addr, http $http, data in $bwork/data"
}

# The broker's /metrics, without curl: bash's /dev/tcp.
metrics() {
	exec 3<>"/dev/tcp/${http%:*}/${http##*:}"
	printf 'GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n' >&3
	cat <&3
	exec 3<&-
}

# metric FILE NAME: a sample's value from a saved /metrics text (0 if absent).
metric() {
	awk -v n="$2" '$1 == n { v = $2 } END { print v + 0 }' "$1"
}

broker_cpu_s() {
	awk -v t="$tck" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$bpid/stat"
}

# A number from mqbench's one-line JSON: jnum JSON KEY, or jnum JSON OBJECT KEY.
jnum() {
	if [ $# -eq 2 ]; then
		sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"
	else
		sed -n "s/.*\"$2\":{[^}]*\"$3\":\([-0-9.e+]*\).*/\1/p" <<<"$1"
	fi
}

# put NAME FIELD VALUE: one more round's value of a figure.
put() {
	mkdir -p "$res"
	echo "$3" >>"$res/$1.$2"
}

# rng NAME FIELD DECIMALS [SCALE]: "median (min–max)" over the rounds.
rng() {
	local f=$res/$1.$2
	[ -s "$f" ] || { echo "–"; return; }
	sort -g "$f" | awk -v d="$3" -v s="${4:-1}" '
		{ v[NR] = $1 * s }
		END {
			m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			if (NR == 1)
				printf "%.*f", d, m
			else
				printf "%.*f (%.*f–%.*f)", d, m, d, v[1], d, v[NR]
		}'
}

div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.4f", a / b; else print 0 }'; }

# One round's raw limits, measured right before its workloads.
raw_limits() {
	local out mb
	out=$("$build/bench/loopback_bw" --seconds 2)
	echo "$out"
	mb=$(sed -n 's/^loopback_bw: \([0-9.]*\) MB\/s.*/\1/p' <<<"$out")
	put raw loop "$mb"
	loop_mb=$mb
	out=$("$build/bench/bench_storage" --dir "$bwork" --only raw,sync --sync-io 4K --runs 1)
	grep -E '^\((a|b)\) ' <<<"$out" | grep -v 'median' | head -n 5
	disk_mb=$(awk '/^\(a\) raw sequential write: / { s += $5; n++ } END { printf "%.0f", s / n }' \
		<<<"$out")
	put raw disk "$disk_mb"
	fsync_ops=$(sed -n 's/^(b) 4 KiB write+fdatasync, preallocated (fallocate): \([0-9.]*\) ops\/s$/\1/p' \
		<<<"$out")
	put raw fsync "$fsync_ops"
	put raw fsync_grow "$(sed -n 's/^(b) 4 KiB write+fdatasync, growing file: \([0-9.]*\) ops\/s$/\1/p' <<<"$out")"
	put raw fsync_zero "$(sed -n 's/^(b) 4 KiB write+fdatasync, zero-filled file: \([0-9.]*\) ops\/s$/\1/p' <<<"$out")"
}

# run NAME MQBENCH-ARGS...: one mqbench run with the broker's CPU time and
# fdatasync and request counters around it. Dirty pages of earlier runs are
# written back first, so their writeback does not land on this run.
run() {
	local name=$1 out rc=0
	shift
	sync -f "$bwork"
	metrics >"$bwork/m0"
	local c0 c1
	c0=$(broker_cpu_s)
	out=$("$build/bin/mqbench" "$@" -b "$addr" --json 2>"$bwork/mqbench.err") || rc=$?
	c1=$(broker_cpu_s)
	metrics >"$bwork/m1"
	if [ "$rc" -ne 0 ] || [ -z "$out" ]; then
		echo "run_bench.sh: $name: mqbench exited $rc:" >&2
		cat "$bwork/mqbench.err" >&2
		[ -n "$out" ] || return 0
		incomplete+=("$name (round $round)")
	fi
	local el msgs mb bcpu mcpu fs fsum reqs
	el=$(jnum "$out" elapsed_s)
	msgs=$(jnum "$out" msgs_per_s)
	mb=$(jnum "$out" mb_per_s)
	bcpu=$(awk -v a="$c0" -v b="$c1" -v e="$el" 'BEGIN { printf "%.2f", (b - a) / e }')
	mcpu=$(awk -v u="$(jnum "$out" cpu_user_s)" -v s="$(jnum "$out" cpu_sys_s)" -v e="$el" \
		'BEGIN { printf "%.2f", (u + s) / e }')
	fs=$(($(metric "$bwork/m1" ringmq_fdatasync_seconds_count) -
		$(metric "$bwork/m0" ringmq_fdatasync_seconds_count)))
	fsum=$(awk -v a="$(metric "$bwork/m0" ringmq_fdatasync_seconds_sum)" \
		-v b="$(metric "$bwork/m1" ringmq_fdatasync_seconds_sum)" 'BEGIN { print b - a }')
	reqs=$(($(metric "$bwork/m1" 'ringmq_requests_total{api="PRODUCE"}') -
		$(metric "$bwork/m0" 'ringmq_requests_total{api="PRODUCE"}')))
	put "$name" msgs "$msgs"
	put "$name" mb "$mb"
	put "$name" x_loop "$(div "$mb" "$loop_mb")"
	put "$name" x_disk "$(div "$mb" "$disk_mb")"
	put "$name" bcpu "$bcpu"
	put "$name" mcpu "$mcpu"
	put "$name" fsyncs "$(div "$fs" "$el")"
	put "$name" x_fsync "$(div "$(div "$fs" "$el")" "$fsync_ops")"
	if [ "$fs" -gt 0 ]; then
		put "$name" fsync_ms "$(div "$(awk -v s="$fsum" 'BEGIN { print s * 1000 }')" "$fs")"
		put "$name" reqs_per_fsync "$(div "$reqs" "$fs")"
	fi
	local k
	for k in p50 p90 p99 p99_9 p99_99 max; do
		local v
		v=$(jnum "$out" latency_us "$k")
		if [ -n "$v" ]; then put "$name" "lat_$k" "$v"; fi
		v=$(jnum "$out" ack_latency_us "$k")
		if [ -n "$v" ]; then put "$name" "ack_$k" "$v"; fi
	done
	printf '%-14s %9.0f msgs/s %8.1f MB/s  broker %s CPU, mqbench %s CPU, %s fdatasyncs' \
		"$name" "$msgs" "$mb" "$bcpu" "$mcpu" "$fs"
	if [ -n "$(jnum "$out" latency_us p50)" ]; then
		printf ', latency p50 %s p99 %s p99.9 %s max %s us' "$(jnum "$out" latency_us p50)" \
			"$(jnum "$out" latency_us p99)" "$(jnum "$out" latency_us p99_9)" \
			"$(jnum "$out" latency_us max)"
	fi
	echo
}

broker_md() {
	local mq="mqbench"
	echo "Broker: ringmqd on 127.0.0.1, data dir on $(dev "$bwork"); $rounds rounds, each"
	echo "measuring the raw limits and then every workload once; median (min–max) of the"
	echo "rounds; ratios are per round, to that round's raw limit. MB = 10^6 bytes of keys"
	echo "and values (mqbench's count; records add a few bytes each on the wire and in the log,"
	echo "batches a 64-byte header)."
	echo "Load average: $load_before before the broker part, $load_after after."
	if [ ${#incomplete[@]} -gt 0 ]; then
		echo
		echo "**Incomplete runs** (mqbench exited non-zero; their figures are included): ${incomplete[*]}."
	fi
	echo
	echo "| Raw limit (same rounds) | Result |"
	echo "|---|---|"
	echo "| Loopback TCP, one connection, 1 MiB writes (\`loopback_bw\`) | $(rng raw loop 0) MB/s |"
	echo "| Disk sequential write, 1 GiB + fdatasync (\`bench_storage\` (a), 2 per round) | $(rng raw disk 0) MB/s |"
	echo "| 4 KiB write + fdatasync, preallocated file (\`bench_storage\` (b)) | $(rng raw fsync 0) ops/s |"
	echo "| 4 KiB write + fdatasync, growing / zero-filled file | $(rng raw fsync_grow 0) / $(rng raw fsync_zero 0) ops/s |"
	echo
	echo "| Workload (1 producer or consumer connection) | Messages/s | MB/s | × loopback | × disk write | fdatasyncs/s | × raw 4 KiB fdatasync rate | produce requests / fdatasync | CPU cores: broker / $mq |"
	echo "|---|---|---|---|---|---|---|---|---|"
	local n label
	for n in p100-acks1 p1k-acks1 p100-acksall p1k-acksall c100 c1k; do
		case $n in
		p100-acks1) label="produce 100 B, acks=1, flush always" ;;
		p1k-acks1) label="produce 1 KiB, acks=1, flush always" ;;
		p100-acksall) label="produce 100 B, acks=all, flush always" ;;
		p1k-acksall) label="produce 1 KiB, acks=all, flush always" ;;
		c100) label="consume 100 B from the start of a $log_mib MiB log" ;;
		c1k) label="consume 1 KiB from the start of a $log_mib MiB log" ;;
		esac
		local fsc="–" xfs="–" rpf="–"
		case $n in
		p*)
			fsc=$(rng "$n" fsyncs 0)
			xfs=$(rng "$n" x_fsync 2)
			rpf=$(rng "$n" reqs_per_fsync 1)
			;;
		esac
		echo "| $label | $(rng "$n" msgs 0) | $(rng "$n" mb 1) | $(rng "$n" x_loop 3) | $(rng "$n" x_disk 2) | $fsc | $xfs | $rpf | $(rng "$n" bcpu 2) / $(rng "$n" mcpu 2) |"
	done
	echo
	echo "Produce→fetch latency, 100 B values, open loop at $e2e_rate msgs/s for $e2e_s s"
	echo "(latency from each message's scheduled send time), acks=all, linger.ms 0; ms:"
	echo
	echo "| Flush | Received msgs/s | e2e p50 | p90 | p99 | p99.9 | p99.99 | max | ack p50 / p99 / p99.9 | fdatasyncs/s | mean fdatasync ms | e2e p50 ÷ raw 4 KiB fdatasync time | CPU cores: broker / $mq |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for n in e2e-always e2e-never; do
		local x="–"
		[ "$n" = e2e-always ] && x=$(rng "$n" x_p50_fsync 2)
		echo "| ${n#e2e-} | $(rng "$n" msgs 0) | $(rng "$n" lat_p50 2 0.001) | $(rng "$n" lat_p90 2 0.001) | $(rng "$n" lat_p99 2 0.001) | $(rng "$n" lat_p99_9 2 0.001) | $(rng "$n" lat_p99_99 2 0.001) | $(rng "$n" lat_max 1 0.001) | $(rng "$n" ack_p50 2 0.001) / $(rng "$n" ack_p99 2 0.001) / $(rng "$n" ack_p99_9 2 0.001) | $(rng "$n" fsyncs 0) | $(rng "$n" fsync_ms 2) | $x | $(rng "$n" bcpu 2) / $(rng "$n" mcpu 2) |"
	done
	echo
	echo "Consumer-group commits (\`bench_commits --connections 16 --inflight 16\`: 16"
	echo "groups committing one partition each, 256 commits on the wire, each answered once"
	echo "it is on disk):"
	echo
	echo "| Commits/s | × raw 4 KiB fdatasync rate | reply p99 ms |"
	echo "|---|---|---|"
	echo "| $(rng commits rate 0) | $(rng commits x_fsync 1) | $(rng commits p99 2) |"
	echo
}

if want broker; then
	echo
	echo "== broker"
	load_before=$(cut -d' ' -f1-3 /proc/loadavg)
	echo "load average: $load_before"
	start_broker
	# The logs the consume runs read: written once, flush never, acks=1.
	for s in 100 1024; do
		n=$((log_mib * 1048576 / s))
		echo "filling log-$s: $n messages of $s B"
		"$build/bin/mqbench" produce -b "$addr" -t "log-$s" --flush never --acks 1 \
			--size "$s" --count "$n" --duration 120 >/dev/null
	done
	for round in $(seq "$rounds"); do
		r=$round
		echo "-- round $r of $rounds (load average $(cut -d' ' -f1-3 /proc/loadavg))"
		raw_limits
		run p100-acks1 produce -t "r$r-p100-acks1" --flush always --acks 1 --size 100 \
			--duration "$produce_s"
		run p1k-acks1 produce -t "r$r-p1k-acks1" --flush always --acks 1 --size 1024 \
			--duration "$produce_s"
		run p100-acksall produce -t "r$r-p100-acksall" --flush always --acks all --size 100 \
			--duration "$produce_s"
		run p1k-acksall produce -t "r$r-p1k-acksall" --flush always --acks all --size 1024 \
			--duration "$produce_s"
		run c100 consume -t log-100
		run c1k consume -t log-1024
		for f in always never; do
			run "e2e-$f" e2e -t "r$r-e2e-$f" --flush "$f" --acks all --size 100 \
				--rate "$e2e_rate" --duration "$e2e_s" --linger-ms 0
		done
		# Consumer-group commits: each answered once on disk, so the rate
		# is commits per fdatasync of the offsets store x its fdatasyncs.
		out=$("$build/bench/bench_commits" --broker "$addr" --connections 16 --inflight 16 \
			--seconds "$produce_s")
		echo "commits        $out"
		put commits rate "$(sed -n 's/.*= \([0-9]*\) commits\/s.*/\1/p' <<<"$out")"
		put commits p99 "$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<<"$out")"
		put commits x_fsync "$(div "$(tail -n 1 "$res/commits.rate")" "$fsync_ops")"
		# e2e p50 against one raw fdatasync's time (1 / its rate).
		p50=$(tail -n 1 "$res/e2e-always.lat_p50")
		put e2e-always x_p50_fsync "$(div "$p50" "$(div 1000000 "$fsync_ops")")"
	done
	stop_broker
	load_after=$(cut -d' ' -f1-3 /proc/loadavg)
	echo "load average at end: $load_after"
	broker_md >"$bmd"
fi

echo
echo "== Markdown for docs/benchmarks.md"
if want storage; then
	echo
	echo "### Results"
	echo
	if [ ${#dd_lines[@]} -gt 0 ]; then
		echo "\`dd if=/dev/zero bs=1M count=$dd_mib conv=fdatasync\`, 3 runs: ${dd_lines[*]}."
		echo
	fi
	cat "$md"
fi
if want broker; then
	echo
	echo "### Broker results"
	echo
	cat "$bmd"
fi
