#!/usr/bin/env bash
# run_bench.sh BUILD — runs ringmq's benchmarks and prints their figures, as
# Markdown for docs/benchmarks.md at the end; writes the Markdown and every
# figure as JSON next to each other. Called by `make bench`.
#
# Parts (BENCH_PARTS, default all four, in this order):
#   storage    the storage benchmark (bench_storage)
#   broker     a real ringmqd measured with mqbench in rounds, next to the raw
#              limits of the same machine taken in the same rounds: loopback
#              TCP bandwidth, disk write bandwidth and the 4 KiB write +
#              fdatasync rate. Workloads W1-W8 of issue 7, and more
#   restart    W9, once: 1,000 partitions filled to BENCH_W9_GIB, kill -9,
#              time from start to the ready line
#   callgrind  instructions per message on the broker's side for W1 and W3
#              (valgrind --tool=callgrind, fixed message counts; untimed)
#
# Output: BUILD/bench/results.md and BUILD/bench/results.json. When every part
# ran and BENCH_DOCS is not 0, also docs/benchmarks.json, and the generated
# sections of docs/benchmarks.md (between its "run_bench.sh" markers) are
# replaced; the explanatory text around them is left alone.
#
# Environment:
#   BENCH_DIR           where data dirs go (default BUILD): it must be on the
#                       disk you mean to measure, which is why not /tmp
#   BENCH_PARTS         which parts run (default "storage broker restart callgrind")
#   BENCH_DOCS          0: do not touch docs/ (default 1)
#   BENCH_STORAGE_ARGS  bench_storage options (default "--seconds 1")
#   BENCH_DD_MIB        size of the dd reference write (default 1024; 0: skip)
#   BENCH_ROUNDS        broker rounds (default 3); figures are median (min–max)
#   BENCH_PRODUCE_S     seconds per produce run, W6 and W7 (default 5)
#   BENCH_BATCH         producer batch.size for W1, W2 and W6 (default 1048576)
#   BENCH_ACKS1_S       seconds of the acks=1 produce runs (default 2; 0: none)
#   BENCH_COMMITS_S     seconds of the consumer-group commit run (default 2)
#   BENCH_E2E_S         seconds of the flush-always latency run, W4 (default 30)
#   BENCH_E2E_NEVER_S   seconds of the flush-never latency run, W5 (default 10)
#   BENCH_E2E_RATE      messages/s of those runs (default 20000)
#   BENCH_LOG_MIB       size of the 100 B log W3 reads (default 2048)
#   BENCH_LOG1K_MIB     size of the 1 KiB log the other consume run reads (default
#                       1024; 0: no such log and no such run)
#   BENCH_W9_GIB        W9's total log size (default 10; scaled down when the
#                       disk has less than twice that free)
#   BENCH_W9_RESTARTS   W9's kill -9 + restarts, for a median (default 3)
#   BENCH_W9_UNSYNCED   1: W9 also kills the broker right after a flush=never
#                       fill, before anything is fdatasynced (default 0: slow)
#   BENCH_CG_W1         W1 messages under callgrind (default 500000)
#   BENCH_CG_W3         W3 messages under callgrind (default 4000000)
#
# Every load is bounded in count and time (mqbench --count/--duration and
# --timeout, bench_* --seconds); the defaults keep the whole run under ten
# minutes on the 2-core development VM (see docs/benchmarks.md, This run).
set -euo pipefail
build=${1:?usage: run_bench.sh BUILD}
cd "$(dirname "$0")/../.."
t_begin=$(date +%s)

parts=${BENCH_PARTS:-storage broker restart callgrind}
want() {
	case " $parts " in
	*" $1 "*) return 0 ;;
	esac
	return 1
}

base=${BENCH_DIR:-$build}
mkdir -p "$base" "$build/bench"
# Everything a run writes lives here, so an interrupted run leaves nothing.
work=$(mktemp -d "$base/bench.XXXXXX")
bpid=
# The broker goes first (by its PID, with SIGTERM, then SIGKILL after 10 s,
# or after BROKER_STOP_S), then its data.
stop_broker() {
	[ -n "$bpid" ] || return 0
	kill -TERM "$bpid" 2>/dev/null || true
	local i
	for ((i = 0; i < ${BROKER_STOP_S:-10} * 10; i++)); do
		kill -0 "$bpid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$bpid" 2>/dev/null || true
	wait "$bpid" 2>/dev/null || true
	bpid=
}
trap 'stop_broker; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
md=$work/storage.md   # bench_storage's tables
res=$work/results     # every figure: NAME.FIELD, one line per round
meta=$work/meta       # KEY<TAB>text, for the JSON
mkdir -p "$res"
: >"$meta"

setmeta() { printf '%s\t%s\n' "$1" "$2" >>"$meta"; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

echo "== machine"
tree=$(git describe --always --dirty 2>/dev/null || echo "not a git checkout")
# Uncommitted changes outside the benchmark's own files change what is measured.
# Named by top-level directory, with the number of files.
dirty=$(git status --porcelain 2>/dev/null | awk '{ print $NF }' |
	grep -v -E '^(docs/benchmarks\.(md|json)|tests/bench/|tools/mqbench\.c|build)' |
	awk -F/ '{ n[NF > 1 ? $1 "/" : $1]++; t++ }
		END { for (d in n) s = s (s ? ", " : "") d " " n[d]; if (t) print t " files: " s }' || true)
echo "tree: $tree${dirty:+ (uncommitted changes in: $dirty)}"
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
machine="kernel $(uname -r), $(nproc) cores ($cpu), $mem RAM"
echo "$machine"
# Other work on the machine skews every figure: say how busy it was.
echo "load average at start: $(loadavg)"
dev() { df -P "$1" | awk 'NR == 2 {print $1}'; }
data_on="$base on $(dev "$base") ($(stat -f -c %T "$base")); /tmp on $(dev /tmp)"
echo "data: $data_on"
setmeta tree "$tree"
setmeta uncommitted "$dirty"
setmeta machine "$machine"
# The peers issue 7 quotes figures for. This suite has no harness for them; it
# says whether they are installed, and gives no figures for them either way.
peer_state() {
	if command -v "$1" >/dev/null; then
		echo "installed, $("$1" --version 2>&1 | head -n 1), not run"
	else
		echo "not installed"
	fi
}
peers="Redis Streams (redis-server: $(peer_state redis-server)), NATS JetStream (nats-server: $(peer_state nats-server))"
echo "peers: $peers: this suite measures ringmq only, no peer figures"
setmeta peers "$peers"
setmeta data "$data_on"
setmeta parts "$parts"
setmeta load_start "$(loadavg)"
setmeta started "$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# ---- figures ----

# put NAME FIELD VALUE: one more round's value of a figure.
put() {
	[ -n "$3" ] || return 0
	echo "$3" >>"$res/$1.$2"
}

# last NAME FIELD: the latest round's value (empty if none).
last() { [ -s "$res/$1.$2" ] && tail -n 1 "$res/$1.$2" || true; }

# Median, min, max and count of every figure, computed in one awk once the
# parts are done (stats_load), so the tables cost no fork per cell.
declare -A S_MED S_MIN S_MAX S_N
stats_loaded=0
stats_load() {
	local k m lo hi n
	S_MED=() S_MIN=() S_MAX=() S_N=()
	while read -r k m lo hi n; do
		S_MED[$k]=$m S_MIN[$k]=$lo S_MAX[$k]=$hi S_N[$k]=$n
	done < <(figure_stats)
	stats_loaded=1
}

# figure_stats: "NAME.FIELD median min max count" for every figure file.
figure_stats() {
	local fs=("$res"/*)
	[ -e "${fs[0]}" ] || return 0
	awk '
	function out(   i, j, t, m, name) {
		for (i = 2; i <= n; i++)
			for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
		m = n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
		name = f
		sub(/.*\//, "", name)
		printf "%s %.10g %.10g %.10g %d\n", name, m, v[1], v[n], n
	}
	FNR == 1 { if (f != "") out(); f = FILENAME; n = 0 }
	{ v[++n] = $1 + 0 }
	END { if (f != "") out() }' "${fs[@]}"
}

# med NAME FIELD: the median over rounds, unformatted (empty if none).
med() {
	if [ "$stats_loaded" = 1 ]; then
		echo "${S_MED[$1.$2]:-}"
		return
	fi
	figure_stats | awk -v k="$1.$2" '$1 == k { print $2 }'
}

# rng NAME FIELD DECIMALS [SCALE]: "median (min–max)" over the rounds.
rng() {
	local k=$1.$2 d=$3
	[ "$stats_loaded" = 1 ] || stats_load
	[ -n "${S_N[$k]:-}" ] || { echo "–"; return; }
	if [ -n "${4:-}" ]; then
		awk -v d="$d" -v s="$4" -v m="${S_MED[$k]}" -v lo="${S_MIN[$k]}" -v hi="${S_MAX[$k]}" \
			-v n="${S_N[$k]}" 'BEGIN {
			if (n == 1) printf "%.*f", d, m * s
			else printf "%.*f (%.*f–%.*f)", d, m * s, d, lo * s, d, hi * s }'
	elif [ "${S_N[$k]}" = 1 ]; then
		LC_ALL=C printf '%.*f' "$d" "${S_MED[$k]}"
	else
		LC_ALL=C printf '%.*f (%.*f–%.*f)' "$d" "${S_MED[$k]}" "$d" "${S_MIN[$k]}" "$d" "${S_MAX[$k]}"
	fi
}

# div A B: A / B, or nothing when either is missing or B is not positive.
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.4f", a / b }'; }

# ---- storage ----

dd_lines=()
dd_mib=${BENCH_DD_MIB:-1024}
storage_args=${BENCH_STORAGE_ARGS:---seconds 1}
if want storage; then
	echo
	echo "== storage"
	setmeta load_storage_start "$(loadavg)"
	t0=$(date +%s)
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
	"$build/bench/bench_storage" --dir "$work" --md "$md" $storage_args
	setmeta load_storage_end "$(loadavg)"
	setmeta storage_seconds "$(($(date +%s) - t0))"
	setmeta storage_args "$storage_args"
	echo "load average at end of storage: $(loadavg)"
fi

# ---- brokers ----

tck=$(getconf CLK_TCK)
incomplete=()
round=0
addr=
http=
blog=

# start_broker DIR [LIMIT_S [WRAPPER...]]: starts ringmqd on 127.0.0.1, port
# 0, data in DIR/data, stderr to DIR/ringmqd.N.log, and waits for its ready
# line (LIMIT_S, default 10); sets bpid, addr, http, blog and ready_ms (from
# the exec to the ready line, polled every 10 ms). WRAPPER runs it (valgrind).
start_broker() {
	local dir=$1 limit=${2:-10}
	shift 2 || shift $#
	mkdir -p "$dir"
	local n=1
	while [ -e "$dir/ringmqd.$n.log" ]; do n=$((n + 1)); done
	blog=$dir/ringmqd.$n.log
	local t0 t1 ready=
	t0=$(date +%s%N)
	"$@" "$build/bin/ringmqd" --data-dir "$dir/data" --listen 127.0.0.1:0 \
		--http 127.0.0.1:0 2>"$blog" &
	bpid=$!
	while :; do
		ready=$(grep -m1 '^ringmqd: ready on ' "$blog" || true)
		[ -n "$ready" ] && break
		if ! kill -0 "$bpid" 2>/dev/null; then
			cat "$blog" >&2
			echo "run_bench.sh: ringmqd exited before it was ready" >&2
			exit 1
		fi
		if [ $((($(date +%s%N) - t0) / 1000000000)) -ge "$limit" ]; then
			echo "run_bench.sh: no ready line from ringmqd within $limit s" >&2
			exit 1
		fi
		sleep 0.01
	done
	t1=$(date +%s%N)
	ready_ms=$(((t1 - t0) / 1000000))
	# "ringmqd: ready on HOST:PORT (http HOST:PORT)"
	addr=${ready#ringmqd: ready on }
	addr=${addr%% *}
	http=${ready##*(http }
	http=${http%)}
	echo "ringmqd (pid $bpid) ready on $addr, http $http, data in $dir/data ($ready_ms ms)"
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

# The broker's user + system CPU time in clock ticks, without a fork.
broker_ticks() {
	local st
	read -r -a st <"/proc/$bpid/stat"
	echo $((st[13] + st[14]))
}

# secs T0 T1: seconds from one $EPOCHREALTIME to another, one decimal.
secs() {
	local a=${1/./} b=${2/./}
	local d=$(((10#$b - 10#$a) / 100000))
	echo "$((d / 10)).$((d % 10))"
}

# status_kib FIELD: a field of /proc/PID/status (VmRSS, VmHWM, RssAnon...), KiB.
status_kib() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$bpid/status"; }
kib_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# A number from mqbench's one-line JSON: jnum JSON KEY, or jnum JSON OBJECT KEY.
# Per-group results (e2e --groups) are left out: these are the run's figures.
# The JSON is parsed once (one awk) into J; lookups fork nothing, which
# matters on a loaded 2-core machine where every fork costs tens of ms.
declare -A J
J_src=
# jload JSON: parse it into J, in this shell (not in a $(...)).
jload() {
	[ "$1" != "$J_src" ] || return 0
	J=()
	local k v
	while read -r k v; do
		J[$k]=$v
	done < <(awk '
	function emit(pre, body,   n, a, i, kv, q) {
		n = split(body, a, ",")
		for (i = 1; i <= n; i++) {
			kv = a[i]
			gsub(/[{}]/, "", kv)
			if (kv !~ /^"[A-Za-z0-9_]+":[-0-9.e+]+$/)
				continue
			gsub(/"/, "", kv)
			split(kv, q, ":")
			print pre q[1], q[2]
		}
	}
	{
		s = $0
		sub(/,"group_results":\[.*\]/, "", s)
		while (match(s, /"[A-Za-z0-9_]+":\{[^}]*\}/)) {
			blk = substr(s, RSTART, RLENGTH)
			s = substr(s, 1, RSTART - 1) substr(s, RSTART + RLENGTH)
			name = blk
			sub(/":.*/, "", name)
			sub(/^"/, "", name)
			body = blk
			sub(/^[^{]*\{/, "", body)
			emit(name ".", body)
		}
		emit("", s)
	}' <<<"$1")
	J_src=$1
}

jnum() {
	jload "$1"
	if [ $# -eq 2 ]; then
		echo "${J[$2]:-}"
	else
		echo "${J[$2.$3]:-}"
	fi
}

# groups_json JSON FIELD: that number of each group, one a line.
groups_json() {
	local j=${1#*\"group_results\":\[}
	[ "$j" != "$1" ] || return 0
	sed 's/{"group":/\n/g' <<<"$j" | sed -n "s/^[^{]*\"$2\":\([-0-9.e+]*\).*/\1/p"
}

# ---- broker part ----

# W6's figures of one round, from the run's JSON in $out; W1 of the round in $w1.
fanout_round() {
	put fanout acked "$(jnum "$out" acked_per_s)"
	put fanout x_w1 "$(div "$(last fanout msgs)" "$w1")"
	put fanout acked_x_w1 "$(div "$(last fanout acked)" "$w1")"
	put fanout x_producer "$(div "$(last fanout msgs)" "$(last fanout acked)")"
	put fanout lag_ms "$(groups_json "$out" last_after_last_ack_ms | sort -g | tail -n 1)"
	# Groups that received every acknowledged message.
	put fanout groups_complete "$(sed -n 's/.*"group_results":\[\([^]]*\)\].*/\1/p' <<<"$out" |
		grep -o '"complete":true' | wc -l)"
	local g=0 v
	while read -r v; do
		g=$((g + 1))
		put fanout "g$g" "$v"
	done < <(groups_json "$out" msgs_per_s)
}

rounds=${BENCH_ROUNDS:-3}
produce_s=${BENCH_PRODUCE_S:-5}
commits_s=${BENCH_COMMITS_S:-2}
acks1_s=${BENCH_ACKS1_S:-2}
e2e_s=${BENCH_E2E_S:-30}
e2e_never_s=${BENCH_E2E_NEVER_S:-10}
e2e_rate=${BENCH_E2E_RATE:-20000}
log_mib=${BENCH_LOG_MIB:-2048}
log1k_mib=${BENCH_LOG1K_MIB:-1024}
w7_parts=1000
w7_keys=100000
w6_groups=4
# W1, W2 and W6's producer batch with batch.size 1 MiB (the library's default
# is 64 KiB), as issue 7's peer figures use each peer's best batching. With
# acks=all and flush always, one producer has at most its in-flight window
# of batches waiting on an fdatasync: bigger batches carry more per fdatasync
# (measured here: W1 1.5 M msgs/s at 64 KiB, 2.2-3.3 M at 1 MiB).
best_batch=${BENCH_BATCH:-1048576}
bwork=$work/broker

# One round's raw limits, measured right before its workloads.
raw_limits() {
	local out mb t0
	t0=$(date +%s)
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
	put raw wall_s "$(($(date +%s) - t0))"
	echo "raw limits: $(last raw wall_s) s"
}

# run NAME MQBENCH-ARGS...: one mqbench run with the broker's CPU time, its
# fdatasync and request counters and its peak RSS around it. Dirty pages of
# earlier runs are written back first, so their writeback does not land on
# this run. Leaves mqbench's JSON in $out, and ok=1 when it recorded figures
# (ok=0: mqbench printed nothing, and this round has none for NAME).
run() {
	local name=$1 rc=0 w0 w1 m0 m1 t0 t1
	shift
	ok=0
	w0=$EPOCHREALTIME
	sync -f "$bwork"
	w1=$EPOCHREALTIME
	metrics >"$bwork/m0"
	t0=$(broker_ticks)
	m0=$EPOCHREALTIME
	out=$("$build/bin/mqbench" "$@" -b "$addr" --json 2>"$bwork/mqbench.err") || rc=$?
	m1=$EPOCHREALTIME
	t1=$(broker_ticks)
	metrics >"$bwork/m1"
	if [ "$rc" -ne 0 ] || [ -z "$out" ]; then
		echo "run_bench.sh: $name: mqbench exited $rc:" >&2
		cat "$bwork/mqbench.err" >&2
		incomplete+=("$name (round $round)")
		[ -n "$out" ] || return 0
	fi
	ok=1
	jload "$out"
	# Every derived figure in one awk (forks are dear on a loaded machine):
	# NAME VALUE lines, in the order of the summary line below.
	local f v fig
	fig=$(awk -v el="${J[elapsed_s]}" -v msgs="${J[msgs_per_s]}" -v mb="${J[mb_per_s]}" \
		-v t0="$t0" -v t1="$t1" -v tck="$tck" -v u="${J[cpu_user_s]}" -v s="${J[cpu_sys_s]}" \
		-v loop="$loop_mb" -v disk="$disk_mb" -v fops="$fsync_ops" \
		-v hwm="$(status_kib VmHWM)" '
		function val(f, n) { return (n in f) ? f[n] : 0 }
		FNR == NR { a[$1] = $2; next }
		{ b[$1] = $2 }
		function r(x, y) { return y > 0 ? sprintf("%.4f", x / y) : "" }
		END {
			fs = val(b, "ringmq_fdatasync_seconds_count") - val(a, "ringmq_fdatasync_seconds_count")
			fsum = val(b, "ringmq_fdatasync_seconds_sum") - val(a, "ringmq_fdatasync_seconds_sum")
			n = "ringmq_requests_total{api=\"PRODUCE\"}"
			reqs = val(b, n) - val(a, n)
			print "msgs", msgs
			print "mb", mb
			print "bcpu", sprintf("%.2f", (t1 - t0) / tck / el)
			print "mcpu", sprintf("%.2f", (u + s) / el)
			print "fsyncs", r(fs, el)
			print "x_loop", r(mb, loop)
			print "x_disk", r(mb, disk)
			print "x_fsync", r(fs / el, fops)
			print "produce_reqs", r(reqs, el)
			print "hwm_mib", sprintf("%.1f", hwm / 1024)
			print "fsync_ms", r(fsum * 1000, fs)
			print "reqs_per_fsync", r(reqs, fs)
			print "fs_count", fs
		}' "$bwork/m0" "$bwork/m1")
	while read -r f v; do
		[ "$f" = fs_count ] || put "$name" "$f" "$v"
	done <<<"$fig"
	local k
	for k in p50 p90 p99 p99_9 p99_99 max; do
		put "$name" "lat_$k" "${J[latency_us.$k]:-}"
		put "$name" "ack_$k" "${J[ack_latency_us.$k]:-}"
	done
	local now=$EPOCHREALTIME
	put "$name" wall_s "$(secs "$w0" "$now")"
	printf '%-14s %9.0f msgs/s %8.1f MB/s  broker %s CPU, mqbench %s CPU, %s fdatasyncs' \
		"$name" "${J[msgs_per_s]}" "${J[mb_per_s]}" "$(last "$name" bcpu)" "$(last "$name" mcpu)" \
		"$(sed -n 's/^fs_count //p' <<<"$fig")"
	if [ -n "${J[latency_us.p50]:-}" ]; then
		printf ', latency p50 %s p99 %s p99.9 %s max %s us' "${J[latency_us.p50]}" \
			"${J[latency_us.p99]}" "${J[latency_us.p99_9]}" "${J[latency_us.max]}"
	fi
	printf ', broker peak RSS %s MiB; %s s: sync -f %s s, mqbench %s s\n' "$(last "$name" hwm_mib)" \
		"$(last "$name" wall_s)" "$(secs "$w0" "$w1")" "$(secs "$m0" "$m1")"
}

broker_part() {
	echo
	echo "== broker"
	load_before=$(loadavg)
	setmeta load_broker_start "$load_before"
	echo "load average: $load_before"
	local t0
	t0=$(date +%s)
	start_broker "$bwork"
	# W8, idle: an empty data dir, a second after the ready line.
	sleep 1
	put w8 idle_rss_kib "$(status_kib VmRSS)"
	put w8 idle_anon_kib "$(status_kib RssAnon)"
	put w8 idle_file_kib "$(status_kib RssFile)"
	echo "W8 idle: VmRSS $(last w8 idle_rss_kib) KiB (anon $(last w8 idle_anon_kib), file $(last w8 idle_file_kib))"
	# The logs the consume runs read: written once, flush never, acks=1.
	local s n
	for s in 100 1024; do
		if [ "$s" = 100 ]; then n=$((log_mib * 1048576 / s)); else n=$((log1k_mib * 1048576 / s)); fi
		[ "$n" -gt 0 ] || continue
		echo "filling log-$s: $n messages of $s B"
		local f0=$SECONDS
		if ! "$build/bin/mqbench" produce -b "$addr" -t "log-$s" --flush never --acks 1 \
			--size "$s" --count "$n" --duration 120 >/dev/null 2>"$bwork/fill.err"; then
			cat "$bwork/fill.err" >&2
			incomplete+=("the fill of log-$s")
		fi
		echo "filled log-$s in $((SECONDS - f0)) s"
	done
	local r
	for round in $(seq "$rounds"); do
		r=$round
		echo "-- round $r of $rounds (load average $(loadavg))"
		put load round_start "$(cut -d' ' -f1 /proc/loadavg)"
		raw_limits
		if [ "$acks1_s" != 0 ]; then
			run p100-acks1 produce -t "r$r-p100-acks1" --flush always --acks 1 --size 100 \
				--duration "$acks1_s"
			run p1k-acks1 produce -t "r$r-p1k-acks1" --flush always --acks 1 --size 1024 \
				--duration "$acks1_s"
		fi
		# W1, W2
		run p100-acksall produce -t "r$r-p100-acksall" --flush always --acks all --size 100 \
			--batch-size "$best_batch" --duration "$produce_s"
		# W6 and W7 are compared with this round's W1, or with nothing.
		local w1=
		[ "$ok" = 0 ] || w1=$(last p100-acksall msgs)
		run p1k-acksall produce -t "r$r-p1k-acksall" --flush always --acks all --size 1024 \
			--batch-size "$best_batch" --duration "$produce_s"
		# W3
		run c100 consume -t log-100 --duration 60
		[ "$log1k_mib" = 0 ] || run c1k consume -t log-1024 --duration 60
		# W4, W5
		run e2e-always e2e -t "r$r-e2e-always" --flush always --acks all --size 100 \
			--rate "$e2e_rate" --duration "$e2e_s" --linger-ms 0
		# e2e p50 against one raw fdatasync's time (1 / its rate).
		[ "$ok" = 0 ] || put e2e-always x_p50_fsync \
			"$(div "$(last e2e-always lat_p50)" "$(div 1000000 "$fsync_ops")")"
		run e2e-never e2e -t "r$r-e2e-never" --flush never --acks all --size 100 \
			--rate "$e2e_rate" --duration "$e2e_never_s" --linger-ms 0
		# W6: W1's producer, and 4 groups of one member each reading the tail.
		run fanout e2e -t "r$r-fanout" --flush always --acks all --size 100 \
			--batch-size "$best_batch" --groups "$w6_groups" --duration "$produce_s"
		[ "$ok" = 1 ] && fanout_round
		# W7: 1,000 partitions (one topic for every round), keyed.
		run keyed produce -t w7-keyed --partitions "$w7_parts" --keys "$w7_keys" \
			--flush always --acks all --size 100 --duration "$produce_s"
		[ "$ok" = 0 ] || put keyed x_w1 "$(div "$(last keyed msgs)" "$w1")"
		# Consumer-group commits: each answered once on disk, so the rate
		# is commits per fdatasync of the offsets store x its fdatasyncs.
		local c0=$SECONDS
		out=$("$build/bench/bench_commits" --broker "$addr" --connections 16 --inflight 16 \
			--seconds "$commits_s")
		echo "commits        $out ($((SECONDS - c0)) s)"
		put commits rate "$(sed -n 's/.*= \([0-9]*\) commits\/s.*/\1/p' <<<"$out")"
		put commits p99 "$(sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p' <<<"$out")"
		put commits x_fsync "$(div "$(last commits rate)" "$fsync_ops")"
	done
	# W8, peak: the broker's high-water mark over everything above.
	put w8 peak_hwm_kib "$(status_kib VmHWM)"
	put w8 end_rss_kib "$(status_kib VmRSS)"
	put w8 end_anon_kib "$(status_kib RssAnon)"
	put w8 end_file_kib "$(status_kib RssFile)"
	echo "W8 peak: VmHWM $(last w8 peak_hwm_kib) KiB; at the end VmRSS $(last w8 end_rss_kib) KiB"
	stop_broker
	rm -rf "$bwork/data"
	load_after=$(loadavg)
	setmeta load_broker_end "$load_after"
	setmeta broker_seconds "$(($(date +%s) - t0))"
	echo "load average at end: $load_after"
}

# ---- W9: restart after kill -9 ----

w9_parts=1000
w9_restarts=${BENCH_W9_RESTARTS:-3}
restart_part() {
	echo
	echo "== restart (W9)"
	setmeta load_restart_start "$(loadavg)"
	local t0 gib=${BENCH_W9_GIB:-10} want_gib avail_kib note=""
	t0=$(date +%s)
	want_gib=$gib
	mkdir -p "$work/w9"
	# Room for twice the log (the log, and headroom for everything else).
	avail_kib=$(df -P -k "$work" | awk 'NR == 2 { print $4 }')
	if [ $((avail_kib / 1048576)) -lt $((2 * gib)) ]; then
		gib=$((avail_kib / 1048576 / 2))
		note="scaled down from $want_gib GiB to $gib GiB: only $((avail_kib / 1048576)) GiB free on $(dev "$work")"
		echo "W9: $note"
	fi
	setmeta w9_note "$note"
	if [ "$gib" -lt 1 ]; then
		echo "W9: skipped, not enough free disk"
		return 0
	fi
	local w9=$work/w9 n=$((gib * 1048576)) out
	start_broker "$w9"
	echo "filling w9: $n messages of 1 KiB over $w9_parts partitions (flush never, acks=1)"
	out=$("$build/bin/mqbench" produce -b "$addr" -t w9 --partitions "$w9_parts" --flush never \
		--acks 1 --size 1024 --producers 2 --count "$n" --duration 90 --json 2>"$w9/fill.err") || {
		cat "$w9/fill.err" >&2
		incomplete+=("the W9 fill")
	}
	put w9 gib "$gib"
	put w9 fill_mb "$(jnum "$out" mb_per_s)"
	put w9 fill_s "$(jnum "$out" elapsed_s)"
	put w9 log_mib "$(du -sm "$w9/data" | cut -f1)"
	echo "filled $(last w9 log_mib) MiB at $(last w9 fill_mb) MB/s"
	if [ "${BENCH_W9_UNSYNCED:-0}" = 1 ]; then
		# kill -9 right after the last acknowledgement: nothing was
		# fdatasynced, so no index entry of the active segments is on
		# disk and every partition scans its whole active segment.
		kill -KILL "$bpid"
		wait "$bpid" 2>/dev/null || true
		bpid=
		start_broker "$w9" 300
		put w9 restart_unsynced_ms "$ready_ms"
		put w9 cuts_unsynced "$(grep -c ': cut ' "$blog" || true)"
		sleep 1
		put w9 rss_after_mib "$(kib_mib "$(status_kib VmRSS)")"
	fi
	# A clean stop fdatasyncs every partition and writes its index entries.
	local s0
	s0=$(date +%s%N)
	BROKER_STOP_S=120 stop_broker
	put w9 stop_ms "$((($(date +%s%N) - s0) / 1000000))"
	start_broker "$w9" 120
	put w9 restart_clean_ms "$ready_ms"
	sleep 1
	# kill -9 with everything durable and indexed, as a flush=always topic
	# is between appends: each partition scans from its last index entry.
	# W9_RESTARTS times (a restart takes about a second), for a median.
	local i
	for ((i = 1; i <= w9_restarts; i++)); do
		kill -KILL "$bpid"
		wait "$bpid" 2>/dev/null || true
		bpid=
		start_broker "$w9" 120
		put w9 restart_ms "$ready_ms"
		put w9 cuts "$(grep -c ': cut ' "$blog" || true)"
		sleep 1
	done
	put w9 rss_idle_mib "$(kib_mib "$(status_kib VmRSS)")"
	stop_broker
	rm -rf "$w9"
	echo "W9: restart after kill -9: $(tr '\n' ' ' <"$res/w9.restart_ms")ms; clean restart $(last w9 restart_clean_ms) ms$([ -z "$(last w9 restart_unsynced_ms)" ] || echo "; unsynced $(last w9 restart_unsynced_ms) ms")"
	setmeta load_restart_end "$(loadavg)"
	setmeta restart_seconds "$(($(date +%s) - t0))"
}

# ---- callgrind: instructions per message on the broker's side ----

# cg_top FILE: exclusive Ir per function of a callgrind dump, "Ir<TAB>name",
# largest first (positions: line; cost lines after calls= are inclusive
# costs of the call and are skipped).
cg_top() {
	awk '
	function nm(s,   id, rest) {
		if (match(s, /^\([0-9]+\)/)) {
			id = substr(s, 2, RLENGTH - 2)
			rest = substr(s, RLENGTH + 1)
			sub(/^ /, "", rest)
			if (rest != "")
				names[id] = rest
			return names[id]
		}
		return s
	}
	/^fn=/ { cur = nm(substr($0, 4)); next }
	/^cfn=/ { nm(substr($0, 5)); next }
	/^calls=/ { skip = 1; next }
	/^([+-]?[0-9]+|\*) [0-9]/ { if (skip) { skip = 0; next } ex[cur] += $2; next }
	END { for (f in ex) printf "%.0f\t%s\n", ex[f], f }' "$1" | sort -rn
}

cg_available() { command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; }

callgrind_part() {
	echo
	echo "== callgrind"
	if ! cg_available; then
		echo "callgrind: valgrind is not installed (apt-get install valgrind); skipped"
		setmeta callgrind "skipped: valgrind not installed"
		return 0
	fi
	setmeta load_callgrind_start "$(loadavg)"
	local t0 cg=$work/cg n1=${BENCH_CG_W1:-500000} n3=${BENCH_CG_W3:-4000000}
	t0=$(date +%s)
	setmeta valgrind "$(valgrind --version)"
	# Topics are made by a native broker first: under valgrind the broker's
	# admin thread (topic creation) gets no CPU while the event loop waits in
	# io_uring_enter, so a CREATE_TOPIC would not be answered.
	start_broker "$cg"
	"$build/bin/mqbench" produce -b "$addr" -t cg-w1 --flush always --acks all --size 100 \
		--count 1 >/dev/null 2>"$cg/fill.err"
	"$build/bin/mqbench" produce -b "$addr" -t cg-w3 --flush never --acks 1 --size 100 \
		--count "$n3" --duration 200 >/dev/null 2>>"$cg/fill.err"
	stop_broker
	start_broker "$cg" 120 valgrind --tool=callgrind --dump-instr=no \
		--callgrind-out-file="$cg/callgrind.out.%p"
	local w args n api
	for w in w1 w3; do
		if [ "$w" = w1 ]; then
			n=$n1
			api=PRODUCE
			args=(produce -t cg-w1 --acks all --size 100 --count "$n1" --duration 300)
		else
			n=$n3
			api=FETCH
			args=(consume -t cg-w3 --count "$n3")
		fi
		# /metrics outside the counted window: serving it costs Ir too.
		metrics >"$cg/m0"
		callgrind_control -z "$bpid" >/dev/null
		out=$("$build/bin/mqbench" "${args[@]}" -b "$addr" --json 2>"$cg/mqbench.err")
		callgrind_control -d "$w" "$bpid" >/dev/null
		metrics >"$cg/m1"
		local f
		f=$(ls -t "$cg"/callgrind.out.*.* | head -n 1)
		local ir reqs fs
		ir=$(sed -n 's/^summary: //p' "$f")
		reqs=$(($(metric "$cg/m1" "ringmq_requests_total{api=\"$api\"}") -
			$(metric "$cg/m0" "ringmq_requests_total{api=\"$api\"}")))
		fs=$(($(metric "$cg/m1" ringmq_fdatasync_seconds_count) -
			$(metric "$cg/m0" ringmq_fdatasync_seconds_count)))
		put "cg-$w" msgs "$n"
		put "cg-$w" ir "$ir"
		put "cg-$w" ir_per_msg "$(div "$ir" "$n")"
		put "cg-$w" requests "$reqs"
		put "cg-$w" ir_per_request "$(div "$ir" "$reqs")"
		put "cg-$w" msgs_per_request "$(div "$n" "$reqs")"
		put "cg-$w" fsyncs "$fs"
		put "cg-$w" msgs_per_s_under_valgrind "$(jnum "$out" msgs_per_s)"
		cg_top "$f" | head -n 10 >"$work/cg-$w.top"
		echo "callgrind $w: $n messages, $ir Ir: $(last "cg-$w" ir_per_msg) Ir/message, $reqs $api requests ($(last "cg-$w" ir_per_request) Ir each), $fs fdatasyncs"
		head -n 5 "$work/cg-$w.top"
	done
	BROKER_STOP_S=60 stop_broker
	rm -rf "$cg"
	setmeta load_callgrind_end "$(loadavg)"
	setmeta callgrind_seconds "$(($(date +%s) - t0))"
}

want broker && broker_part
want restart && restart_part
want callgrind && callgrind_part
t_total=$(($(date +%s) - t_begin))
setmeta load_end "$(loadavg)"
setmeta total_seconds "$t_total"

# ---- Markdown ----

# verdict VALUE OP LIMIT: "met" or "**missed**" (OP: le or ge); "–" without a value.
verdict() {
	[ -n "$1" ] || { echo "–"; return; }
	awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
		ok = op == "le" ? v <= l : v >= l
		print ok ? "met" : "**missed**" }'
}

fmt() { [ -n "$2" ] && awk -v v="$2" -v d="$1" 'BEGIN { printf "%.*f", d, v }' || echo "–"; }

# target ID WORKLOAD TARGET RESULT RATIO VERDICT [VALUE LIMIT UNIT]: one row of
# the targets table, and the same as a JSON object.
target() {
	echo "| $1 | $2 | $3 | $4 | $5 | $6 |" >>"$work/targets.md"
	local met=null
	case $6 in
	met) met=true ;;
	*missed*) met=false ;;
	esac
	printf '{"id":%s,"workload":%s,"target":%s,"result":%s,"ratio":%s,"met":%s,"value":%s,"limit":%s,"unit":%s}\n' \
		"$(jstr "$1")" "$(jstr "$2")" "$(jstr "$3")" "$(jstr "$4")" "$(jstr "$5")" "$met" \
		"${7:-null}" "${8:-null}" "$(jstr "${9:-}")" >>"$work/targets.jsonl"
}

# jstr TEXT: TEXT as a JSON string (Markdown emphasis left out).
jstr() {
	local s=${1//\*\*/}
	s=${s//\\/\\\\}
	s=${s//\"/\\\"}
	s=${s//$'\t'/ }
	printf '"%s"' "$s"
}

targets_md() {
	: >"$work/targets.md"
	: >"$work/targets.jsonl"
	local v r
	if want broker; then
		v=$(med p100-acksall msgs)
		target W1 "produce 100 B, 1 connection, acks=all, flush always" "≥ 2,000,000 msgs/s" \
			"$(rng p100-acksall msgs 0) msgs/s" \
			"$(fmt 2 "$(div "$v" 2000000)") × target; $(rng p100-acksall x_loop 3) × loopback, $(rng p100-acksall x_disk 2) × disk write, $(rng p100-acksall x_fsync 2) × raw 4 KiB fdatasync rate (in fdatasyncs/s)" \
			"$(verdict "$v" ge 2000000)" "$v" 2000000 msgs/s
		v=$(med p1k-acksall x_disk)
		target W2 "produce 1 KiB, acks=all, flush always" "≥ 0.8 × raw write + fdatasync bandwidth" \
			"$(rng p1k-acksall mb 1) MB/s" \
			"$(rng p1k-acksall x_disk 2) × disk write (1 GiB + fdatasync, same round)" \
			"$(verdict "$v" ge 0.8)" "$v" 0.8 "× disk write"
		v=$(med c100 msgs)
		target W3 "consume 100 B from the start of a $log_mib MiB log" "≥ 5,000,000 msgs/s" \
			"$(rng c100 msgs 0) msgs/s" \
			"$(fmt 2 "$(div "$v" 5000000)") × target; $(rng c100 x_loop 3) × loopback, $(rng c100 x_disk 2) × disk write" \
			"$(verdict "$v" ge 5000000)" "$v" 5000000 msgs/s
		local p50 p99 p999 ok
		p50=$(med e2e-always lat_p50)
		p99=$(med e2e-always lat_p99)
		p999=$(med e2e-always lat_p99_9)
		ok=met
		for r in "$(verdict "$p50" le 250)" "$(verdict "$p99" le 1000)" "$(verdict "$p999" le 2000)"; do
			[ "$r" = met ] || ok=$r
		done
		target W4 "e2e 100 B at $e2e_rate msgs/s for $e2e_s s, acks=all, flush always" \
			"p50 ≤ 0.25 ms, p99 ≤ 1 ms, p99.9 ≤ 2 ms" \
			"p50 $(rng e2e-always lat_p50 2 0.001), p99 $(rng e2e-always lat_p99 2 0.001), p99.9 $(rng e2e-always lat_p99_9 2 0.001) ms" \
			"p50 $(fmt 1 "$(div "$p50" 250)"), p99 $(fmt 1 "$(div "$p99" 1000)"), p99.9 $(fmt 1 "$(div "$p999" 2000)") × target; p50 $(rng e2e-always x_p50_fsync 2) × one raw 4 KiB write + fdatasync" \
			"$ok" "$p99" 1000 "µs (p99)"
		v=$(med e2e-never lat_p99)
		target W5 "e2e 100 B at $e2e_rate msgs/s for $e2e_never_s s, acks=all, flush never" "p99 ≤ 0.2 ms" \
			"p99 $(rng e2e-never lat_p99 2 0.001) ms (p50 $(rng e2e-never lat_p50 2 0.001))" \
			"$(fmt 1 "$(div "$v" 200)") × target" "$(verdict "$v" le 200)" "$v" 200 µs
		v=$(med fanout x_w1)
		target W6 "1 producer (as W1), $w6_groups consumer groups reading the tail" \
			"every group keeps up with W1's rate" \
			"slowest group $(rng fanout msgs 0) msgs/s; producer $(rng fanout acked 0) msgs/s; last message $(rng fanout lag_ms 1) ms after the last ack" \
			"slowest group $(rng fanout x_w1 2) × W1 (same round); producer $(rng fanout acked_x_w1 2) × W1" \
			"$(verdict "$v" ge 1)" "$v" 1 "× W1"
		v=$(med keyed x_w1)
		target W7 "$w7_parts partitions, keyed 100 B messages ($w7_keys keys), acks=all, flush always" \
			"≥ 0.5 × W1" "$(rng keyed msgs 0) msgs/s" "$(rng keyed x_w1 3) × W1 (same round)" \
			"$(verdict "$v" ge 0.5)" "$v" 0.5 "× W1"
		v=$(kib_mib "$(last w8 idle_rss_kib)")
		target "W8 idle" "broker RSS (VmRSS), empty data dir, 1 s after ready" "≤ 16 MiB" \
			"$v MiB" "$(fmt 2 "$(div "$v" 16)") × target" "$(verdict "$v" le 16)" "$v" 16 MiB
		v=$(kib_mib "$(last w8 peak_hwm_kib)")
		target "W8 peak" "broker peak RSS (VmHWM) over the whole broker part (W1–W7 and the rest)" \
			"≤ 128 MiB" "$v MiB" "$(fmt 2 "$(div "$v" 128)") × target" "$(verdict "$v" le 128)" \
			"$v" 128 MiB
	fi
	if want restart && [ -s "$res/w9.restart_ms" ]; then
		v=$(med w9 restart_ms)
		target W9 "restart to ready, $w9_parts partitions, $(last w9 log_mib) MiB on disk (asked: $(last w9 gib) GiB of values), kill -9 with the data durable (as flush=always between appends)" \
			"≤ 1 s" "$(rng w9 restart_ms 0) ms (median of $w9_restarts restarts)" "$(fmt 2 "$(div "$v" 1000)") × target" "$(verdict "$v" le 1000)" "$v" 1000 ms
		v=$(last w9 restart_unsynced_ms)
		[ -z "$v" ] || target "W9 unsynced" "the same, kill -9 right after a flush=never fill (nothing fdatasynced)" \
			"≤ 1 s" "$v ms" "$(fmt 2 "$(div "$v" 1000)") × target" "$(verdict "$v" le 1000)" "$v" 1000 ms
	fi
	[ -s "$work/targets.md" ] || return 0
	echo "Issue 7's workloads on this machine: median (min–max) of $rounds rounds for W1–W7,"
	echo "one measurement for W8, the median of $w9_restarts restarts for W9; a target is met when the median meets it. Ratios"
	echo "to raw limits are per round, against that round's measurement."
	echo
	echo "| | Workload | Target | Result | Ratio | Target met? |"
	echo "|---|---|---|---|---|---|"
	cat "$work/targets.md"
	echo
	echo "Peers: $peers. This suite measures ringmq only and gives no figures for them;"
	echo "the Redis and NATS figures in issue 7 are the issue's, not measured here."
	echo
}

broker_md() {
	local mq="mqbench"
	echo "Broker: ringmqd on 127.0.0.1, data dir on $(dev "$work"); $rounds rounds, each"
	echo "measuring the raw limits and then every workload once; median (min–max) of the"
	echo "rounds; ratios are per round, to that round's raw limit. MB = 10^6 bytes of keys"
	echo "and values (mqbench's count; records add a few bytes each on the wire and in the log,"
	echo "batches a 64-byte header)."
	echo "Load average: $load_before before the broker part, $load_after after; 1-minute"
	echo "load at the start of each round: $(tr '\n' ' ' <"$res/load.round_start" | sed 's/ $//')."
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
	for n in p100-acks1 p1k-acks1 p100-acksall p1k-acksall c100 c1k fanout keyed; do
		[ -s "$res/$n.msgs" ] || continue
		case $n in
		p100-acks1) label="produce 100 B, acks=1, flush always (${acks1_s} s)" ;;
		p1k-acks1) label="produce 1 KiB, acks=1, flush always (${acks1_s} s)" ;;
		p100-acksall) label="W1: produce 100 B, acks=all, flush always" ;;
		p1k-acksall) label="W2: produce 1 KiB, acks=all, flush always" ;;
		c100) label="W3: consume 100 B from the start of a $log_mib MiB log" ;;
		c1k) label="consume 1 KiB from the start of a $log1k_mib MiB log" ;;
		fanout) label="W6: W1's producer + $w6_groups groups reading the tail (the slowest group's rate)" ;;
		keyed) label="W7: produce 100 B keyed over $w7_parts partitions, acks=all, flush always" ;;
		esac
		local fsc="–" xfs="–" rpf="–"
		case $n in
		p* | fanout | keyed)
			fsc=$(rng "$n" fsyncs 0)
			xfs=$(rng "$n" x_fsync 2)
			rpf=$(rng "$n" reqs_per_fsync 1)
			;;
		esac
		echo "| $label | $(rng "$n" msgs 0) | $(rng "$n" mb 1) | $(rng "$n" x_loop 3) | $(rng "$n" x_disk 2) | $fsc | $xfs | $rpf | $(rng "$n" bcpu 2) / $(rng "$n" mcpu 2) |"
	done
	echo
	echo "Produce→fetch latency, 100 B values, open loop at $e2e_rate msgs/s for $e2e_s s (W4,"
	echo "flush always) and $e2e_never_s s (W5, flush never), latency from each message's"
	echo "scheduled send time, acks=all, linger.ms 0; ms:"
	echo
	echo "| Flush | Received msgs/s | e2e p50 | p90 | p99 | p99.9 | p99.99 | max | ack p50 / p99 / p99.9 | fdatasyncs/s | mean fdatasync ms | e2e p50 ÷ raw 4 KiB fdatasync time | CPU cores: broker / $mq |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for n in e2e-always e2e-never; do
		local x="–"
		[ "$n" = e2e-always ] && x=$(rng "$n" x_p50_fsync 2)
		echo "| ${n#e2e-} | $(rng "$n" msgs 0) | $(rng "$n" lat_p50 2 0.001) | $(rng "$n" lat_p90 2 0.001) | $(rng "$n" lat_p99 2 0.001) | $(rng "$n" lat_p99_9 2 0.001) | $(rng "$n" lat_p99_99 2 0.001) | $(rng "$n" lat_max 1 0.001) | $(rng "$n" ack_p50 2 0.001) / $(rng "$n" ack_p99 2 0.001) / $(rng "$n" ack_p99_9 2 0.001) | $(rng "$n" fsyncs 0) | $(rng "$n" fsync_ms 2) | $x | $(rng "$n" bcpu 2) / $(rng "$n" mcpu 2) |"
	done
	echo
	echo "W6 in detail: one producer as in W1 (unthrottled, acks=all, flush always, 1"
	echo "partition) for $produce_s s, and $w6_groups consumer groups of one member each"
	echo "(\`mqbench e2e --groups $w6_groups\`), each starting at the log's end; a group's rate"
	echo "is its messages over the time from the start to its last message."
	echo
	local gh="" gs="" g
	for ((g = 1; g <= w6_groups; g++)); do
		gh+=" group $g msgs/s |"
		gs+="---|"
	done
	echo "| Producer acked msgs/s |$gh slowest ÷ producer | slowest ÷ W1 (same round) | producer ÷ W1 | groups with every message | last message after the last ack, ms |"
	echo "|---|$gs---|---|---|---|---|"
	local gv=""
	for ((g = 1; g <= w6_groups; g++)); do gv+=" $(rng fanout "g$g" 0) |"; done
	echo "| $(rng fanout acked 0) |$gv $(rng fanout x_producer 3) | $(rng fanout x_w1 2) | $(rng fanout acked_x_w1 2) | $(rng fanout groups_complete 0) of $w6_groups | $(rng fanout lag_ms 1) |"
	echo
	echo "W8, the broker's memory (\`/proc/PID/status\`; page cache is not in RSS: the broker"
	echo "reads and writes its logs with io_uring into its own buffers and maps no log file):"
	echo
	echo "| Broker memory | RSS | anon / file-backed |"
	echo "|---|---|---|"
	echo "| idle: empty data dir, 1 s after the ready line (VmRSS) | $(kib_mib "$(last w8 idle_rss_kib)") MiB | $(kib_mib "$(last w8 idle_anon_kib)") / $(kib_mib "$(last w8 idle_file_kib)") MiB |"
	echo "| peak over the broker part (VmHWM) | $(kib_mib "$(last w8 peak_hwm_kib)") MiB | – |"
	echo "| at the end of the broker part (VmRSS) | $(kib_mib "$(last w8 end_rss_kib)") MiB | $(kib_mib "$(last w8 end_anon_kib)") / $(kib_mib "$(last w8 end_file_kib)") MiB |"
	echo
	local hw=""
	for n in p100-acks1 p1k-acks1 p100-acksall p1k-acksall c100 c1k e2e-always e2e-never fanout keyed; do
		[ -s "$res/$n.hwm_mib" ] && hw+="$n $(head -n 1 "$res/$n.hwm_mib"), "
	done
	echo "VmHWM after each run of round 1, in order (MiB): ${hw%, }."
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

restart_md() {
	if [ ! -s "$res/w9.restart_ms" ]; then
		echo "W9 did not run: $(sed -n 's/^w9_note\t//p' "$meta") (see the run's output)."
		echo
		return
	fi
	echo "W9: a fresh broker, one topic of $w9_parts partitions (flush never), filled by"
	echo "\`mqbench produce --producers 2 --size 1024 --acks 1\` (keyless: each 64 KiB batch"
	echo "to a random partition), asked for $(last w9 gib) GiB of values within 90 s: $(last w9 log_mib) MiB"
	echo "on disk, all in the partitions' active segments, written at $(last w9 fill_mb) MB/s; a clean stop"
	echo "(SIGTERM: every partition fdatasynced and indexed), a start, then \`kill -9\`, and the"
	echo "time from starting ringmqd to its ready line (polled every 10 ms). Once per"
	echo "\`make bench\`. Load average $(sed -n 's/^load_restart_start\t//p' "$meta") before, $(sed -n 's/^load_restart_end\t//p' "$meta") after."
	[ -z "$(sed -n 's/^w9_note\t//p' "$meta")" ] || echo "**Note**: $(sed -n 's/^w9_note\t//p' "$meta")."
	echo
	echo "| Restart, $w9_parts partitions, $(last w9 gib) GiB | Time |"
	echo "|---|---|"
	[ -z "$(last w9 restart_unsynced_ms)" ] ||
		echo "| kill -9 right after the fill, nothing fdatasynced: every partition scans its whole active segment (\`BENCH_W9_UNSYNCED=1\`) | $(last w9 restart_unsynced_ms) ms to ready |"
	echo "| clean stop (SIGTERM: fdatasync and index every partition) | $(last w9 stop_ms) ms to exit |"
	echo "| clean restart | $(last w9 restart_clean_ms) ms to ready |"
	echo "| **W9**: kill -9 with everything durable and indexed (as a flush=always topic between appends), restart; $w9_restarts times | $(rng w9 restart_ms 0) ms to ready (each: $(paste -sd ' ' "$res/w9.restart_ms")) |"
	echo
	echo "Broker RSS 1 s after that restart: $(last w9 rss_idle_mib) MiB."
	echo
}

callgrind_md() {
	if [ ! -s "$res/cg-w1.ir" ]; then
		echo "Callgrind did not run: $(sed -n 's/^callgrind\t//p' "$meta")"
		echo
		return
	fi
	echo "Broker-side instructions (\`valgrind --tool=callgrind\`, $(sed -n 's/^valgrind\t//p' "$meta");"
	echo "Ir = instructions executed in user space by every broker thread, counted from"
	echo "\`callgrind_control -z\` to \`-d\` around one mqbench run with a fixed message count;"
	echo "the kernel's share, io_uring and its workers, copies, fdatasync, is not in Ir). Not"
	echo "timed and not affected by machine noise, except through how messages group into"
	echo "requests, shown as messages/request."
	echo
	echo "| Workload | Messages | Broker Ir | Ir/message | Requests | Ir/request | Messages/request | fdatasyncs |"
	echo "|---|---|---|---|---|---|---|---|"
	echo "| W1: produce 100 B, acks=all, flush always | $(last cg-w1 msgs) | $(last cg-w1 ir) | $(fmt 0 "$(last cg-w1 ir_per_msg)") | $(last cg-w1 requests) PRODUCE | $(fmt 0 "$(last cg-w1 ir_per_request)") | $(fmt 0 "$(last cg-w1 msgs_per_request)") | $(last cg-w1 fsyncs) |"
	echo "| W3: consume 100 B from the start of a log | $(last cg-w3 msgs) | $(last cg-w3 ir) | $(fmt 2 "$(last cg-w3 ir_per_msg)") | $(last cg-w3 requests) FETCH | $(fmt 0 "$(last cg-w3 ir_per_request)") | $(fmt 0 "$(last cg-w3 msgs_per_request)") | $(last cg-w3 fsyncs) |"
	echo
	local w
	for w in w1 w3; do
		echo "Top functions by exclusive Ir, ${w^^}:"
		echo
		echo "| Function | Ir | Share | Ir/message |"
		echo "|---|---|---|---|"
		awk -F'\t' -v t="$(last "cg-$w" ir)" -v n="$(last "cg-$w" msgs)" 'NR <= 8 {
			printf "| `%s` | %.0f | %.1f%% | %.2f |\n", $2, $1, 100 * $1 / t, $1 / n }' "$work/cg-$w.top"
		echo
	done
}

run_md() {
	echo "Run: started $(sed -n 's/^started\t//p' "$meta"), \`make bench\` (\`tests/bench/run_bench.sh build\`);"
	echo "tree $tree${dirty:+ with uncommitted changes (\`git status\`: $dirty)}; $machine;"
	echo "data: $data_on. \`BENCH_PARTS=\"$parts\"\`, rounds $rounds, W1/W2/W6/W7 ${produce_s} s, acks=1 ${acks1_s} s,"
	echo "W4 ${e2e_s} s, W5 ${e2e_never_s} s, logs $log_mib / $log1k_mib MiB, bench_storage \`$storage_args\`."
	local p s times=""
	for p in storage broker restart callgrind; do
		s=$(sed -n "s/^${p}_seconds\t//p" "$meta")
		[ -n "$s" ] && times+="$p $((s / 60)) min $((s % 60)) s, "
	done
	echo "Time: ${times}total $((t_total / 60)) min $((t_total % 60)) s (run_bench.sh alone, without \`make all\`)."
	echo "Load average: $(sed -n 's/^load_start\t//p' "$meta") at the start, $(sed -n 's/^load_end\t//p' "$meta") at the end."
	echo
}

gen_md() {
	local sec
	for sec in summary storage broker restart callgrind run; do
		case $sec in
		summary) want broker || want restart || continue ;;
		storage) want storage || continue ;;
		broker) want broker || continue ;;
		restart) want restart || continue ;;
		callgrind) want callgrind || continue ;;
		esac
		{
			case $sec in
			summary) targets_md ;;
			storage)
				if [ ${#dd_lines[@]} -gt 0 ]; then
					echo "\`dd if=/dev/zero bs=1M count=$dd_mib conv=fdatasync\`, 3 runs: ${dd_lines[*]}."
					echo
				fi
				cat "$md"
				;;
			broker) broker_md ;;
			restart) restart_md ;;
			callgrind) callgrind_md ;;
			run) run_md ;;
			esac
		} >"$work/sec.$sec.md"
	done
}

# ---- JSON ----

# figures_json: every figure as "NAME":{"FIELD":{"median":..,"min":..,"max":..,
# "values":[..]},...},... in one awk (values in round order), and the closing }.
figures_json() {
	local fs=("$res"/*)
	if [ ! -e "${fs[0]}" ]; then
		printf '}'
		return
	fi
	awk '
	function out(   i, j, t, m, name, key, field, vals) {
		vals = ""
		for (i = 1; i <= n; i++) {
			vals = vals (i > 1 ? "," : "") sprintf("%.10g", v[i])
			w[i] = v[i]
		}
		for (i = 2; i <= n; i++)
			for (j = i; j > 1 && w[j - 1] > w[j]; j--) { t = w[j]; w[j] = w[j - 1]; w[j - 1] = t }
		m = n % 2 ? w[(n + 1) / 2] : (w[n / 2] + w[n / 2 + 1]) / 2
		name = f
		sub(/.*\//, "", name)
		key = name
		sub(/\.[^.]*$/, "", key)
		field = substr(name, length(key) + 2)
		if (key != prev) {
			printf "%s\"%s\":{", prev == "" ? "" : "},", key
			prev = key
		} else
			printf ","
		printf "\"%s\":{\"median\":%.10g,\"min\":%.10g,\"max\":%.10g,\"values\":[%s]}", field, m, w[1], w[n], vals
	}
	FNR == 1 { if (f != "") out(); f = FILENAME; n = 0 }
	{ v[++n] = $1 + 0 }
	END { if (f != "") out(); printf "%s}", prev == "" ? "" : "}" }' "${fs[@]}"
}

# md_tables_json FILE: every Markdown table in FILE as {"columns":[..],"rows":[[..]]}.
md_tables_json() {
	awk '
	function cells(line,   n, a, i, out) {
		sub(/^\|/, "", line); sub(/\|[ \t]*$/, "", line)
		n = split(line, a, "|")
		out = ""
		for (i = 1; i <= n; i++) {
			gsub(/^[ \t]+|[ \t]+$/, "", a[i]); gsub(/\\/, "\\\\", a[i]); gsub(/"/, "\\\"", a[i])
			gsub(/\*\*/, "", a[i])
			out = out (i > 1 ? "," : "") "\"" a[i] "\""
		}
		return "[" out "]"
	}
	/^\|/ {
		if (!intable) { printf "%s{\"columns\":%s,\"rows\":[", nt++ ? "," : "", cells($0); intable = 1; nr = 0; next }
		if ($0 ~ /^\|[-| :]+\|?[ \t]*$/) next
		printf "%s%s", nr++ ? "," : "", cells($0); next
	}
	{ if (intable) { printf "]}"; intable = 0 } }
	END { if (intable) printf "]}" }' "$1"
}

write_json() {
	{
		printf '{"generator":"tests/bench/run_bench.sh","units":"MB = 10^6 bytes; latencies (lat_*, ack_*) in microseconds; *_kib in KiB; *_mib in MiB; *_ms in milliseconds; msgs = messages/s; cpu in cores"'
		printf ',"meta":{'
		awk -F'\t' '{
			v = $2; gsub(/\\/, "\\\\", v); gsub(/"/, "\\\"", v)
			printf "%s\"%s\":\"%s\"", (NR > 1 ? "," : ""), $1, v }' "$meta"
		printf '},"settings":{"rounds":%s,"produce_s":%s,"acks1_s":%s,"commits_s":%s,"e2e_s":%s,"e2e_never_s":%s,"e2e_rate":%s,"log_mib":%s,"log1k_mib":%s,"w6_groups":%s,"w7_partitions":%s,"w7_keys":%s,"w9_partitions":%s,"w9_restarts":%s}' \
			"$rounds" "$produce_s" "$acks1_s" "$commits_s" "$e2e_s" "$e2e_never_s" "$e2e_rate" "$log_mib" "$log1k_mib" "$w6_groups" \
			"$w7_parts" "$w7_keys" "$w9_parts" "$w9_restarts"
		printf ',"targets":['
		[ -s "$work/targets.jsonl" ] && paste -sd, "$work/targets.jsonl" | tr -d '\n'
		printf '],"figures":{'
		figures_json
		if want storage && [ -s "$md" ]; then
			printf ',"storage":{"dd":['
			local i
			for i in "${!dd_lines[@]}"; do
				printf '%s%s' "$([ "$i" -gt 0 ] && echo ,)" "$(jstr "${dd_lines[$i]}")"
			done
			printf '],"tables":['
			md_tables_json "$md"
			printf ']}'
		fi
		local w
		for w in w1 w3; do
			[ -s "$work/cg-$w.top" ] || continue
			printf ',"callgrind_top_%s":[' "$w"
			awk -F'\t' '{ n = $2; gsub(/\\/, "\\\\", n); gsub(/"/, "\\\"", n)
				printf "%s{\"function\":\"%s\",\"ir\":%.0f}", (NR > 1 ? "," : ""), n, $1 }' "$work/cg-$w.top"
			printf ']'
		done
		printf '}\n'
	} >"$1"
}

# ---- output ----

stats_load
gen_md
out_md=$build/bench/results.md
out_json=$build/bench/results.json
{
	for sec in summary storage broker restart callgrind run; do
		[ -f "$work/sec.$sec.md" ] || continue
		case $sec in
		summary) echo "### Targets" ;;
		storage) echo "### Results" ;;
		broker) echo "### Broker results" ;;
		restart) echo "### Restart after kill -9 (W9)" ;;
		callgrind) echo "### Instructions per message (callgrind)" ;;
		run) echo "### This run" ;;
		esac
		echo
		cat "$work/sec.$sec.md"
	done
} >"$out_md"
write_json "$out_json"

echo
over=""
[ "$t_total" -le 600 ] || over=": OVER the ten-minute budget"
echo "run_bench.sh: the parts took $((t_total / 60)) min $((t_total % 60)) s$over"
echo
echo "== Markdown for docs/benchmarks.md (also in $out_md; every figure in $out_json)"
echo
cat "$out_md"

# docs/benchmarks.md: each generated section sits between
#   <!-- run_bench.sh: SECTION begin --> and <!-- run_bench.sh: SECTION end -->
# and is replaced by this run's; only after a run of every part.
all_parts=1
for p in storage broker restart callgrind; do want "$p" || all_parts=0; done
if [ "${BENCH_DOCS:-1}" != 0 ] && [ "$all_parts" = 1 ] && [ -f docs/benchmarks.md ]; then
	tmp=$(mktemp docs/.benchmarks.md.XXXXXX)
	awk -v dir="$work" '
		/^<!-- run_bench.sh: [a-z]+ begin -->$/ {
			print
			sec = $3
			f = dir "/sec." sec ".md"
			while ((getline line < f) > 0) print line
			close(f)
			skip = 1
			next
		}
		/^<!-- run_bench.sh: [a-z]+ end -->$/ { skip = 0 }
		!skip { print }' docs/benchmarks.md >"$tmp"
	cat "$tmp" >docs/benchmarks.md
	rm -f "$tmp"
	cp "$out_json" docs/benchmarks.json
	echo
	echo "docs/benchmarks.md (generated sections) and docs/benchmarks.json updated"
fi
