#!/usr/bin/env bash
# client_docs.sh BUILD — the examples in docs/client.md are examples/*.c word
# for word, compile against the static libringmq, and work against a real
# ringmqd.
set -euo pipefail

BUILD=$(cd "${1:?usage: client_docs.sh BUILD}" && pwd)
# shellcheck source=tests/integration/lib/broker.sh
. "$(dirname "$0")/lib/broker.sh"
cd "$(dirname "$0")/../.."
DOC=docs/client.md
LIB=$BUILD/lib/libringmq.a
RINGMQD=$BUILD/bin/ringmqd
for f in "$LIB" "$RINGMQD" "$DOC"; do
	[ -e "$f" ] || { echo "client_docs.sh: $f is missing" >&2; exit 1; }
done
CC=${CC:-cc}

T=$(mktemp -d "${TMPDIR:-/tmp}/ringmq-client-docs.XXXXXX")
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

# extract FILE: prints the C block that follows "<!-- example: FILE -->" in
# the doc; fails if there is none or it is not closed.
extract() {
	awk -v marker="<!-- example: $1 -->" '
		state == 0 && $0 == marker { state = 1; next }
		state == 1 { if ($0 != "```c") exit 2; state = 2; next }
		state == 2 && $0 == "```" { state = 3; exit }
		state == 2 { print }
		END { if (state != 3) exit 1 }' "$DOC"
}

step "the examples in $DOC are examples/*.c"
marked=$(sed -n 's/^<!-- example: \(.*\) -->$/\1/p' "$DOC" | sort)
[ "$marked" = "$(printf 'examples/consumer.c\nexamples/producer.c')" ] ||
	fail "$DOC should mark exactly examples/consumer.c and examples/producer.c, marks: $marked"
for ex in producer consumer; do
	extract "examples/$ex.c" >"$T/$ex.doc.c" ||
		fail "$DOC has no complete \`\`\`c block after its examples/$ex.c marker"
	diff -u "examples/$ex.c" "$T/$ex.doc.c" >"$T/diff" ||
		fail "$DOC and examples/$ex.c differ:$(printf '\n')$(cat "$T/diff")"
done

step "they compile against $LIB, warnings as errors"
CFLAGS=(-std=c11 -O2 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
	-Wformat=2 -Wvla -Wpointer-arith)
# `make san` builds the library with sanitizers: programs linking it need them too.
if nm "$LIB" 2>/dev/null | grep -c __asan_ >/dev/null; then
	CFLAGS+=(-fsanitize=address,undefined)
fi
if command -v pkg-config >/dev/null; then
	INC=$(PKG_CONFIG_PATH=$BUILD/lib/pkgconfig pkg-config --cflags ringmq)
	[ -n "$INC" ] || fail "pkg-config --cflags ringmq printed nothing"
else
	INC="-I client"
fi
for ex in producer consumer; do
	# shellcheck disable=SC2086 # INC is a list of flags
	"$CC" "${CFLAGS[@]}" $INC "$T/$ex.doc.c" "$LIB" -llz4 -lxxhash -pthread -o "$T/$ex" \
		2>"$T/cc.err" || fail "examples/$ex.c does not compile: $(cat "$T/cc.err")"
done

step "start ringmqd"
broker_start off || fail "$BROKER_ERR"
unset RINGMQ_BROKERS

# run LIMIT CMD...: runs CMD with a time limit, status in $rc, output in
# $T/out and $T/err.
run() {
	local limit=$1
	shift
	set +e
	timeout "$limit" "$@" >"$T/out" 2>"$T/err"
	rc=$?
	set -e
}

# check_topic TOPIC N COPIES: the consumer example prints messages 0..N-1,
# each COPIES times ("PARTITION OFFSET user-K message I"), with dense offsets
# in each partition and each key in one partition only.
check_topic() {
	run 30 "$T/consumer" "$ADDR" "$1"
	[ "$rc" -eq 0 ] || fail "consumer exited $rc: $(cat "$T/err")"
	grep -qx "consumer: $(($2 * $3)) messages" "$T/err" || fail "consumer said: $(cat "$T/err")"
	awk -v n="$2" -v copies="$3" '
		NF != 5 || $4 != "message" || $5 !~ /^[0-9]+$/ || $3 != "user-" ($5 % 10) {
			print "bad line: " $0; bad = 1; exit
		}
		$2 != next_off[$1] + 0 {
			print "partition " $1 ": offset " $2 " after " next_off[$1] - 1; bad = 1; exit
		}
		part[$3] != "" && part[$3] != $1 {
			print "key " $3 " in partitions " part[$3] " and " $1; bad = 1; exit
		}
		{ next_off[$1] = $2 + 1; part[$3] = $1; seen[$5]++; count++ }
		END {
			if (bad)
				exit 1
			for (i = 0; i < n; i++)
				if (seen[i] != copies) {
					print "message " i " seen " seen[i] + 0 " times, not " copies
					exit 1
				}
			if (count != n * copies) {
				print count " lines, expected " n * copies
				exit 1
			}
		}' "$T/out" >"$T/check" || fail "consumer output of $1: $(cat "$T/check")"
}

step "producer: 500 messages to a new topic"
run 30 "$T/producer" "$ADDR" docs 500
[ "$rc" -eq 0 ] || fail "producer exited $rc: $(cat "$T/err")"
[ "$(cat "$T/out")" = "500 delivered, 0 failed" ] || fail "producer printed: $(cat "$T/out")"
check_topic docs 500 1

step "producer: to the topic that exists now, bootstrap from \$RINGMQ_BROKERS"
RINGMQ_BROKERS=$ADDR run 30 "$T/producer"
[ "$rc" -eq 0 ] || fail "producer exited $rc: $(cat "$T/err")"
[ "$(cat "$T/out")" = "1000 delivered, 0 failed" ] || fail "producer printed: $(cat "$T/out")"
RINGMQ_BROKERS=$ADDR run 30 "$T/producer" "$ADDR" example 1000
[ "$rc" -eq 0 ] || fail "producer exited $rc: $(cat "$T/err")"
check_topic example 1000 2

step "errors: an unknown topic, no broker"
run 30 "$T/consumer" "$ADDR" nothing-here
[ "$rc" -eq 1 ] || fail "consumer of an unknown topic exited $rc"
grep -q "nothing-here" "$T/err" || fail "consumer error does not name the topic: $(cat "$T/err")"
run 30 "$T/producer" 127.0.0.1:1 docs 10
[ "$rc" -eq 1 ] || fail "producer without a broker exited $rc"
grep -q "127.0.0.1:1" "$T/err" || fail "producer error does not name the broker: $(cat "$T/err")"
run 30 "$T/producer" "not a broker" docs 10
[ "$rc" -eq 2 ] || fail "producer with a malformed broker list exited $rc"

broker_stop || fail "ringmqd did not exit 0 on SIGTERM"
echo "client_docs.sh: ok ($SECONDS s)"
