#!/usr/bin/env bash
# tools.sh BUILD — drives mqadm and mqcat against a real ringmqd as a user would.
set -euo pipefail

BUILD=$(cd "${1:?usage: tools.sh BUILD}" && pwd)
# shellcheck source=tests/integration/lib/broker.sh
. "$(dirname "$0")/lib/broker.sh"
MQADM=$BUILD/bin/mqadm
MQCAT=$BUILD/bin/mqcat
RINGMQD=$BUILD/bin/ringmqd
for b in "$MQADM" "$MQCAT" "$RINGMQD"; do
	[ -x "$b" ] || { echo "tools.sh: $b is not built" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "tools.sh: python3 is needed to check JSON" >&2; exit 1; }
# The interpreter itself: a version-manager shim can take a second per call.
PY=$(python3 -c 'import sys; print(sys.executable)')

T=$(mktemp -d "${TMPDIR:-/tmp}/ringmq-tools.XXXXXX")
# Stops only the broker this script started, and removes its files.
cleanup() {
	broker_cleanup
	rm -rf "$T"
}
trap cleanup EXIT

step() { echo "-- $* ($SECONDS s)"; }
fail() {
	echo "FAIL: $*" >&2
	[ -f "$T/broker.log" ] && tail -5 "$T/broker.log" | sed 's/^/  broker: /' >&2
	exit 1
}

# run CMD...: runs it (stdin as given), leaving its status in $rc and its
# output in $T/out and $T/err.
run() {
	set +e
	"$@" >"$T/out" 2>"$T/err"
	rc=$?
	set -e
}

# want RC CMD...: runs CMD and fails unless it exits with RC.
want() {
	local expect=$1
	shift
	run "$@"
	[ "$rc" -eq "$expect" ] || fail "'$*' exited $rc, expected $expect; stderr: $(cat "$T/err")"
	if [ "$expect" -ne 0 ]; then
		[ "$(wc -l <"$T/err")" -eq 1 ] ||
			fail "'$*' should print one error line, printed: $(cat "$T/err")"
	fi
}

# err_is TEXT: the error line of the last command is exactly TEXT.
err_is() {
	[ "$(cat "$T/err")" = "$1" ] || fail "stderr is '$(cat "$T/err")', expected '$1'"
}

# err_has TEXT: the error line of the last command contains TEXT.
err_has() {
	grep -qF -- "$1" "$T/err" || fail "stderr '$(cat "$T/err")' does not contain '$1'"
}

# out_is TEXT: the output of the last command (newlines as spaces) is TEXT.
out_is() {
	[ "$(tr '\n' ' ' <"$T/out")" = "$1" ] || fail "stdout is '$(cat "$T/out")', expected '$1'"
}

# json EXPR: evaluates a Python expression over the JSON on $T/out (as d).
json() {
	"$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2]) else 1)' "$T/out" "$1" ||
		fail "JSON check failed: $1; output: $(head -c 2000 "$T/out")"
}

broker_start 127.0.0.1:0 || fail "$BROKER_ERR"
B=(-b "$ADDR")
unset RINGMQ_BROKERS

step "help texts"
want 0 "$MQADM" --help
grep -q '^Usage: mqadm' "$T/out" || fail "mqadm --help prints no usage"
want 0 "$MQCAT" -h
grep -q '^Usage: mqcat' "$T/out" || fail "mqcat -h prints no usage"

step "topic create"
want 0 "$MQADM" "${B[@]}" topic create orders --partitions 3 --flush never
out_is "created topic 'orders' (3 partitions) "
want 1 "$MQADM" "${B[@]}" topic create orders --partitions 3
err_is "mqadm: topic 'orders' already exists"
want 1 "$MQADM" "${B[@]}" topic create 'no spaces'
err_has "mqadm: topic name 'no spaces' is invalid"
want 1 "$MQADM" "${B[@]}" topic create other --retention-ms soon
err_is "mqadm: retention.ms must be -1 or milliseconds, not 'soon'"
want 1 "$MQADM" "${B[@]}" topic create other --config colour=blue
err_is "mqadm: unknown topic setting 'colour'"
want 2 "$MQADM" "${B[@]}" topic create other --partitions 0
err_has "--partitions must be a whole number"
want 2 "$MQADM" "${B[@]}" topic create other --partitions
err_has "--partitions needs a value"
want 2 "$MQADM" "${B[@]}" topic create other --colour blue
err_is "mqadm: unknown option '--colour' (see mqadm --help)"
want 2 "$MQADM" "${B[@]}" topic create
err_has "missing NAME"
want 2 "$MQADM" "${B[@]}" topic create a b
err_has "unexpected argument 'b'"
want 2 "$MQADM" "${B[@]}" topic create other --config novalue
err_has "--config takes KEY=VALUE"
want 2 "$MQADM" "${B[@]}" topic list --flush never
err_has "--flush applies only to topic create and topic alter"
want 2 "$MQADM" "${B[@]}" group frob
err_is "mqadm: unknown command 'group frob' (see mqadm --help)"
want 2 "$MQADM" "${B[@]}"
want 2 "$MQADM" -b nowhere topic list
err_has "'nowhere' is not HOST:PORT"
want 0 "$MQADM" "${B[@]}" topic create fmt --config segment.bytes=1M --max-message-bytes 4096
want 0 "$MQADM" "${B[@]}" --json topic create small --max-message-bytes 1024
json 'd == {"topic": "small", "result": "created"}'
# A batch that size would not fit a frame of max.frame.bytes (16 MiB).
want 1 "$MQADM" "${B[@]}" topic create huge --max-message-bytes 16777216
err_has "max.message.bytes 16777216 is too large for this broker: at most 16773120"

step "topic list and describe"
want 0 "$MQADM" "${B[@]}" topic list
[ "$(head -1 "$T/out" | tr -s ' ')" = "TOPIC PARTITIONS" ] || fail "list: $(cat "$T/out")"
grep -Eq '^orders +3$' "$T/out" || fail "list lacks orders: $(cat "$T/out")"
RINGMQ_BROKERS=$ADDR want 0 "$MQADM" --json topic list
json '[t["name"] for t in d["topics"]] == ["fmt", "orders", "small"]'
json '[t["partition_count"] for t in d["topics"]] == [1, 3, 1]'
want 0 "$MQADM" "${B[@]}" topic describe orders
grep -Eq '^flush +never$' "$T/out" || fail "describe lacks flush never: $(cat "$T/out")"
grep -Eq '^ *PARTITION +START +END +MESSAGES +BYTES +SEGMENTS$' "$T/out" ||
	fail "describe lacks the partition table: $(cat "$T/out")"
[ "$(grep -Ec '^ +[0-2] +0 +0 +0 ' "$T/out")" -eq 3 ] || fail "describe rows: $(cat "$T/out")"
want 0 "$MQADM" "${B[@]}" topic describe orders --json
json 'd["name"] == "orders" and d["partition_count"] == 3 and len(d["partitions"]) == 3'
json 'd["config"]["flush"] == "never" and d["config"]["retention.ms"] == "604800000"'
json '[p["partition"] for p in d["partitions"]] == [0, 1, 2]'
json 'all(p["log_start"] == 0 and p["log_end"] == 0 for p in d["partitions"])'
want 0 "$MQADM" "${B[@]}" --json topic describe fmt
json 'd["config"]["segment.bytes"] == "1048576" and d["config"]["max.message.bytes"] == "4096"'
want 1 "$MQADM" "${B[@]}" topic describe nope
err_is "mqadm: topic 'nope' does not exist"

step "mqcat -P: 100000 lines with keys"
# Most lines are KEY:SEQ payload; every tenth has no key (no ':').
"$PY" - "$T/lines" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    for i in range(100000):
        if i % 10 == 0:
            f.write("nokey-%d %s\n" % (i, "y" * (i % 50)))
        else:
            f.write("key%d:%d %s\n" % (i % 97, i, "x" * (i % 70)))
EOF
start=$(date +%s%N)
want 0 "$MQCAT" "${B[@]}" -P -t orders -K : <"$T/lines"
echo "   produced 100000 lines in $(( ($(date +%s%N) - start) / 1000000 )) ms"
{ [ ! -s "$T/out" ] && [ ! -s "$T/err" ]; } || fail "mqcat -P printed: $(cat "$T/out" "$T/err")"
want 0 "$MQADM" "${B[@]}" --json topic describe orders
json 'sum(p["messages"] for p in d["partitions"]) == 100000'
json 'all(p["messages"] > 20000 for p in d["partitions"])'
"$PY" -c 'import json, sys
print(" ".join(str(p["log_end"]) for p in json.load(open(sys.argv[1]))["partitions"]))' \
	"$T/out" >"$T/ends"
read -r END0 END1 END2 <"$T/ends"

step "mqcat -C: read them back"
start=$(date +%s%N)
want 0 "$MQCAT" "${B[@]}" -C -t orders -K : -e
echo "   consumed 100000 lines in $(( ($(date +%s%N) - start) / 1000000 )) ms"
[ "$(wc -l <"$T/out")" -eq 100000 ] || fail "-C -e printed $(wc -l <"$T/out") lines"
sort "$T/lines" >"$T/want.sorted"
sort "$T/out" >"$T/got.sorted"
cmp -s "$T/want.sorted" "$T/got.sorted" || fail "the lines read back differ from those produced"
# Per-key order: a key's messages come back in the order they were produced.
want 0 "$MQCAT" "${B[@]}" -C -t orders -e -f '%k %s\n'
"$PY" - "$T/out" <<'EOF'
import sys
last = {}
for line in open(sys.argv[1]):
    key, rest = line.split(" ", 1)
    if not key:
        continue
    seq = int(rest.split(" ")[0])
    if seq <= last.get(key, -1):
        sys.exit("key %s: %d after %d" % (key, seq, last[key]))
    last[key] = seq
if len(last) != 97:
    sys.exit("%d keys" % len(last))
EOF
want 0 "$MQCAT" "${B[@]}" -C -t orders -c 500
[ "$(wc -l <"$T/out")" -eq 500 ] || fail "-c 500 printed $(wc -l <"$T/out") lines"
want 0 "$MQCAT" "${B[@]}" -C -t orders -p 1 -e -f '%p\n'
[ "$(wc -l <"$T/out")" -eq "$END1" ] || fail "-p 1 -e printed $(wc -l <"$T/out"), want $END1"
[ "$(sort -u "$T/out")" = 1 ] || fail "-p 1 printed other partitions"

step "mqcat -o"
want 0 "$MQCAT" "${B[@]}" -C -t orders -o end -e
[ ! -s "$T/out" ] || fail "-o end -e printed messages"
want 0 "$MQCAT" "${B[@]}" -C -t orders -p 2 -o $((END2 - 5)) -e -f '%o\n'
out_is "$((END2 - 5)) $((END2 - 4)) $((END2 - 3)) $((END2 - 2)) $((END2 - 1)) "
want 0 "$MQCAT" "${B[@]}" -C -t orders -o -2 -e -f '%p %o\n'
sort -o "$T/out" "$T/out"
out_is "0 $((END0 - 2)) 0 $((END0 - 1)) 1 $((END1 - 2)) 1 $((END1 - 1)) $(
	)2 $((END2 - 2)) 2 $((END2 - 1)) "
want 0 "$MQCAT" "${B[@]}" -C -t orders -o s@0 -e -f '.'
[ "$(wc -c <"$T/out")" -eq 100000 ] || fail "-o s@0 read $(wc -c <"$T/out") messages"
want 0 "$MQCAT" "${B[@]}" -C -t orders -o "s@$(( $(date +%s) * 1000 + 3600000 ))" -e
[ ! -s "$T/out" ] || fail "-o s@(in an hour) printed messages"
want 1 "$MQCAT" "${B[@]}" -C -t orders -p 0 -o $((END0 + 10)) -c 1
err_is "mqcat: orders[0]: offset $((END0 + 10)) is out of range [0, $END0]"
want 2 "$MQCAT" "${B[@]}" -C -t orders -o middle
err_has "-o takes beginning, end, N, -N or s@MS, not 'middle'"

step "mqcat -f and odd lines"
before=$(( $(date +%s) * 1000 - 1000 ))
# An empty line, a tab, a carriage return, a second delimiter, and a last
# line without a newline.
printf 'k1:v1\nv2\n\nk3:a\tb\r\nk4:x:y\nlast' >"$T/odd"
want 0 "$MQCAT" "${B[@]}" -P -t fmt -K : <"$T/odd"
want 0 "$MQCAT" "${B[@]}" -C -t fmt -e -f '%t %p %o [%k] [%s] %K %S%%\n'
printf '%s\n' 'fmt 0 0 [k1] [v1] 2 2%' 'fmt 0 1 [] [v2] -1 2%' 'fmt 0 2 [] [] -1 0%' \
	"fmt 0 3 [k3] [a$(printf '\tb\r')] 2 4%" 'fmt 0 4 [k4] [x:y] 2 3%' 'fmt 0 5 [] [last] -1 4%' \
	>"$T/odd.want"
cmp -s "$T/odd.want" "$T/out" || fail "-f output: $(od -c "$T/out" | head -20)"
want 0 "$MQCAT" "${B[@]}" -C -t fmt -e -K :
printf 'k1:v1\nv2\n\nk3:a\tb\r\nk4:x:y\nlast\n' | cmp -s - "$T/out" ||
	fail "-K round trip: $(od -c "$T/out")"
want 0 "$MQCAT" "${B[@]}" -C -t fmt -o 1 -c 1 -f '%T\t%s\n'
ts=$(cut -f1 "$T/out")
{ [ "$ts" -ge "$before" ] && [ "$ts" -le $(( $(date +%s) * 1000 + 1000 )) ]; } || fail "%T is $ts"
[ "$(cut -f2 "$T/out")" = "v2" ] || fail "-f '%T\\t%s\\n' printed: $(cat "$T/out")"
want 2 "$MQCAT" "${B[@]}" -C -t fmt -f '%q'
err_has "-f: unknown format '%q'"

step "mqcat errors"
want 1 "$MQCAT" "${B[@]}" -C -t nope
err_is "mqcat: topic 'nope' does not exist"
want 1 "$MQCAT" "${B[@]}" -P -t nope </dev/null
err_is "mqcat: topic 'nope' does not exist"
want 1 "$MQCAT" "${B[@]}" -C -t orders -p 3
err_is "mqcat: topic 'orders' has no partition 3 (it has 3)"
want 2 "$MQCAT" "${B[@]}" -C -t orders -G inventory -p 1
err_has "-p and -G do not go together"
want 2 "$MQCAT" "${B[@]}" -t orders
err_has "give -P to produce or -C to consume"
want 2 "$MQCAT" "${B[@]}" -P -C -t orders
want 2 "$MQCAT" "${B[@]}" -C
err_has "-t TOPIC is required"
want 2 "$MQCAT" "${B[@]}" -P -t orders -e
err_has "-e applies only to -C"
want 2 "$MQCAT" "${B[@]}" -P -t orders --acks 2
err_has "acks must be 0, 1 or all"
want 2 "$MQCAT" "${B[@]}" -C -t orders -X no.such.key=1
err_has "unknown configuration key 'no.such.key'"
want 2 "$MQCAT" "${B[@]}" -C -t orders -c 0
# The broker refuses a batch over the topic's max.message.bytes: the
# delivery fails, and mqcat says so and exits 1.
head -c 2000 /dev/zero | tr '\0' z >"$T/big"
want 1 "$MQCAT" "${B[@]}" -P -t small <"$T/big"
err_has "mqcat: 1 of 1 messages were not delivered; the first to small[0]: a message of "
err_has "exceeds topic 'small' max.message.bytes 1024"
head -c 2000000 /dev/zero | tr '\0' z >"$T/huge"
want 1 "$MQCAT" "${B[@]}" -P -t small <"$T/huge"
err_has "1 of 1 messages were too large to send, the first on line 1"
for acks in 0 1 all; do
	seq 1 1000 | want 0 "$MQCAT" "${B[@]}" -P -t orders -p 0 --acks "$acks" -X linger.ms=1
done

step "consumer groups"
want 0 "$MQADM" "${B[@]}" topic create events --partitions 3 --flush never
seq 1 3000 | sed 's/^/e/' | want 0 "$MQCAT" "${B[@]}" -P -t events
# Two groups: each reads every message (fan-out).
want 0 "$MQCAT" "${B[@]}" -C -t events -G inventory -e
[ "$(sort "$T/out" | uniq | wc -l)" -eq 3000 ] || fail "inventory read $(wc -l <"$T/out") lines"
want 0 "$MQCAT" "${B[@]}" -C -t events -G notification -e
[ "$(wc -l <"$T/out")" -eq 3000 ] || fail "notification read $(wc -l <"$T/out") lines"
# A group resumes where it committed: only new messages.
seq 1 10 | sed 's/^/n/' | want 0 "$MQCAT" "${B[@]}" -P -t events
want 0 "$MQCAT" "${B[@]}" -C -t events -G inventory -e
[ "$(sort "$T/out" | tr '\n' ' ')" = "n1 n10 n2 n3 n4 n5 n6 n7 n8 n9 " ] ||
	fail "inventory resumed with: $(cat "$T/out")"
want 0 "$MQADM" "${B[@]}" group list
grep -Eq '^inventory +empty +0$' "$T/out" || fail "group list: $(cat "$T/out")"
want 0 "$MQADM" "${B[@]}" --json group describe inventory
json 'd["state"] == "empty" and d["lag"] == 0 and len(d["partitions"]) == 3'
json 'all(p["committed"] == p["log_end"] or p["log_end"] == 0 for p in d["partitions"])'
# With a live member, reset is refused; once it left, it works.
"$MQCAT" "${B[@]}" -C -t events -G inventory >/dev/null 2>"$T/member.err" &
MEMBER=$!
for _ in $(seq 50); do
	run "$MQADM" "${B[@]}" --json group describe inventory
	"$PY" -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["members"] else 1)' \
		"$T/out" && break
	sleep 0.1
done
want 0 "$MQADM" "${B[@]}" group describe inventory
grep -Eq '^members +1$' "$T/out" || fail "describe with a member: $(cat "$T/out")"
want 1 "$MQADM" "${B[@]}" group reset-offsets inventory --topic events --to-earliest
err_is "mqadm: group 'inventory' has 1 live members; stop them first"
want 1 "$MQADM" "${B[@]}" group delete inventory
err_has "live members"
kill -TERM "$MEMBER"
wait "$MEMBER" || fail "mqcat -G did not exit 0 on SIGTERM: $(cat "$T/member.err")"
want 0 "$MQADM" "${B[@]}" group reset-offsets inventory --topic events --to-earliest
want 0 "$MQADM" "${B[@]}" --json group describe inventory
json 'd["lag"] == 3010 and all(p["committed"] == 0 for p in d["partitions"])'
want 0 "$MQADM" "${B[@]}" group reset-offsets inventory --topic events --to-latest
want 0 "$MQADM" "${B[@]}" --json group describe inventory
json 'd["lag"] == 0'
# Offsets are clamped to each partition's range; keyless messages went to
# whichever partitions the producer picked, so expect from the ends.
want 0 "$MQADM" "${B[@]}" --json topic describe events
ENDS=$("$PY" -c 'import json,sys; print(" ".join(str(p["log_end"]) for p in json.load(open(sys.argv[1]))["partitions"]))' "$T/out")
want 0 "$MQADM" "${B[@]}" --json group reset-offsets inventory --topic events --to-offset 5
json '[o["offset"] for o in d["offsets"]] == [min(5, int(e)) for e in "'"$ENDS"'".split()]'
want 0 "$MQCAT" "${B[@]}" -C -t events -G inventory -e
WANT=$("$PY" -c 'import sys; print(sum(max(0, int(e) - 5) for e in sys.argv[1:]))' $ENDS)
[ "$(wc -l <"$T/out")" -eq "$WANT" ] || fail "after --to-offset 5 read $(wc -l <"$T/out"), want $WANT"
want 0 "$MQADM" "${B[@]}" group reset-offsets inventory --topic events \
	--to-time 2000-01-01T00:00:00Z
want 0 "$MQADM" "${B[@]}" --json group describe inventory
json 'd["lag"] == 3010'
want 2 "$MQADM" "${B[@]}" group reset-offsets inventory --topic events --to-time yesterday
err_has "--to-time takes an ISO 8601 time"
want 2 "$MQADM" "${B[@]}" group reset-offsets inventory --topic events
err_has "missing --to-earliest"
want 0 "$MQADM" "${B[@]}" group delete inventory
want 1 "$MQADM" "${B[@]}" group describe inventory
err_is "mqadm: group 'inventory' does not exist"
want 0 "$MQADM" "${B[@]}" topic delete events

step "topic alter"
want 0 "$MQADM" "${B[@]}" topic alter orders --partitions 4 --retention-ms 3600000 \
	--config index.interval.bytes=8192
out_is "altered topic 'orders' (4 partitions) "
want 0 "$MQADM" "${B[@]}" --json topic describe orders
json 'd["partition_count"] == 4 and len(d["partitions"]) == 4'
json 'd["partitions"][3]["log_end"] == 0'
json 'd["config"]["retention.ms"] == "3600000" and d["config"]["index.interval.bytes"] == "8192"'
json 'd["config"]["flush"] == "never"'
want 1 "$MQADM" "${B[@]}" topic alter orders --partitions 2
err_is "mqadm: partitions can only grow: topic 'orders' has 4"
want 2 "$MQADM" "${B[@]}" topic alter orders
err_has "nothing to change"
want 1 "$MQADM" "${B[@]}" topic alter nope --flush always
err_is "mqadm: topic 'nope' does not exist"
echo "to the new partition" | want 0 "$MQCAT" "${B[@]}" -P -t orders -p 3
want 0 "$MQCAT" "${B[@]}" -C -t orders -p 3 -e
out_is "to the new partition "

step "broker status"
want 0 "$MQADM" "${B[@]}" broker status
grep -Eq '^topics +3$' "$T/out" || fail "status: $(cat "$T/out")"
grep -Eq "^data dir +$T/data\$" "$T/out" || fail "status: $(cat "$T/out")"
want 0 "$MQADM" "${B[@]}" --json broker status
json 'd["topics"] == 3 and d["partitions"] == 6 and d["version"].startswith("ringmqd")'
json 'd["messages_in"] >= 103000 and d["connections"] >= 1 and d["uptime_ms"] > 0'

step "topic delete"
want 0 "$MQADM" "${B[@]}" topic delete orders
out_is "deleted topic 'orders' "
want 1 "$MQADM" "${B[@]}" topic delete orders
err_is "mqadm: topic 'orders' does not exist"
want 0 "$MQADM" "${B[@]}" --json topic list
json '[t["name"] for t in d["topics"]] == ["fmt", "small"]'
want 1 "$MQCAT" "${B[@]}" -C -t orders -e
err_is "mqcat: topic 'orders' does not exist"

step "the broker is down"
broker_stop || fail "ringmqd did not exit 0 on SIGTERM"
for cmd in "$MQADM ${B[*]} topic list" "$MQADM ${B[*]} --json broker status" \
	"$MQCAT ${B[*]} -C -t fmt -e" "$MQCAT ${B[*]} -P -t fmt"; do
	start=$SECONDS
	# shellcheck disable=SC2086 # the words are split on purpose
	echo "a line" | want 1 timeout 30 $cmd
	[ $((SECONDS - start)) -le 12 ] || fail "'$cmd' took $((SECONDS - start)) s"
	tool=$(basename "${cmd%% *}")
	err_is "$tool: cannot reach the broker at $ADDR: Connection refused"
done
RINGMQ_BROKERS=$ADDR want 1 timeout 30 "$MQADM" topic list
err_is "mqadm: cannot reach the broker at $ADDR: Connection refused"

echo "tools.sh: all passed"
