#!/usr/bin/env bash
# demo.sh BUILD — the order, inventory and notification services of
# examples/ against a real ringmqd, with a crash in the middle:
#
#   1. start ringmqd (127.0.0.1, free ports, a temp data dir) and create the
#      topic `orders` with 4 partitions;
#   2. start inventory-service (group `inventory`) and notification-service
#      (group `notification`), then order-service: N orders at RATE a second;
#   3. halfway, kill -9 the inventory service and start it again;
#   4. once the order service is done, wait until both groups have
#      committed everything (lag 0), and stop the consumers with SIGTERM;
#   5. check: the log holds orders 1..N once each; the inventory's stock is
#      what those orders take off (the order service computes it from its
#      seed: -T); the notification file has one line per order, each line
#      what its event says.
#
# Run by `make demo` and `make test`. DEMO_ORDERS and DEMO_RATE change N and
# RATE. Exits non-zero if a check fails; stops only what it started.
set -euo pipefail

BUILD=$(cd "${1:?usage: demo.sh BUILD}" && pwd)
# shellcheck source=tests/integration/lib/broker.sh
. "$(dirname "$0")/lib/broker.sh"
cd "$(dirname "$0")/../.."
N=${DEMO_ORDERS:-3000}
RATE=${DEMO_RATE:-500}
SEED=42
RINGMQD=$BUILD/bin/ringmqd
MQADM=$BUILD/bin/mqadm
MQCAT=$BUILD/bin/mqcat
EX=$BUILD/examples
for b in "$RINGMQD" "$MQADM" "$MQCAT" "$EX/order-service" "$EX/inventory-service" \
	"$EX/notification-service"; do
	[ -x "$b" ] || { echo "demo.sh: $b is not built (make all)" >&2; exit 1; }
done
# Every sku starts with this many units in the inventory service.
INITIAL_STOCK=$(sed -n 's/^#define INITIAL_STOCK \([0-9]*\)$/\1/p' examples/inventory-service.c)
[ -n "$INITIAL_STOCK" ] || { echo "demo.sh: no INITIAL_STOCK in inventory-service.c" >&2; exit 1; }
unset RINGMQ_BROKERS

T=$(mktemp -d "${TMPDIR:-/tmp}/ringmq-demo.XXXXXX")
BROKER_PID='' ORDER_PID='' INVENTORY_PID='' NOTIFY_PID=''
# Stops only the processes this script started, and removes its files.
cleanup() {
	for pid in $ORDER_PID $INVENTORY_PID $NOTIFY_PID $BROKER_PID; do
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid"
			wait "$pid" || true
		fi
	done
	rm -rf "$T"
}
trap cleanup EXIT

step() { echo "-- $* ($SECONDS s)"; }
say() { echo "   $*"; }
fail() {
	echo "FAIL: $*" >&2
	for f in broker order inventory notification; do
		[ -s "$T/$f.log" ] && tail -5 "$T/$f.log" | sed "s/^/  $f: /" >&2
	done
	exit 1
}

# wait_for SECONDS WHAT CMD...: runs CMD every 0.1 s until it succeeds;
# fails after SECONDS.
wait_for() {
	local limit=$1 what=$2 i
	shift 2
	for ((i = 0; i < limit * 10; i++)); do
		"$@" && return 0
		sleep 0.1
	done
	fail "$what: not within $limit s"
}

# messages: how many messages the topic holds (all partitions).
messages() {
	"$MQADM" -b "$ADDR" topic describe orders |
		awk '/^ *PARTITION/ { t = 1; next } t && NF == 6 { s += $4 } END { print s + 0 }'
}

# group_field GROUP FIELD: a field of `mqadm group describe` (lag, members, state).
group_field() {
	"$MQADM" -b "$ADDR" group describe "$1" 2>/dev/null | awk -v f="$2" '$1 == f { print $2 }'
}
caught_up() {
	[ "$(group_field "$1" lag)" = 0 ] && [ "$(group_field "$1" members)" = 1 ]
}
both_joined() {
	[ "$(group_field inventory members)" = 1 ] && [ "$(group_field notification members)" = 1 ]
}
half_logged() {
	[ "$(messages)" -ge $((N / 2)) ]
}
order_service_done() {
	! kill -0 "$ORDER_PID" 2>/dev/null
}

# applied: events the inventory state file says are applied (the sum of its
# per-partition next offsets; every partition starts at 0).
applied() {
	awk '$1 == "next" { s += $3 } END { print s + 0 }' "$T/inventory.state" 2>/dev/null || echo 0
}

step "start ringmqd on 127.0.0.1, free ports, data in $T/data"
broker_start 127.0.0.1:0 || fail "$BROKER_ERR"
say "$(grep '^ringmqd: ready' "$T/broker.log")"

step "mqadm topic create orders --partitions 4"
say "$("$MQADM" -b "$ADDR" topic create orders --partitions 4)"

step "start inventory-service (group inventory) and notification-service (group notification)"
# A short session, so the broker gives the killed inventory member's
# partitions to its successor after 2 s instead of the default 10.
INVENTORY=("$EX/inventory-service" -b "$ADDR" -s "$T/inventory.state" -X session.timeout.ms=2000)
"${INVENTORY[@]}" 2>>"$T/inventory.log" &
INVENTORY_PID=$!
"$EX/notification-service" -b "$ADDR" -o "$T/notifications.txt" 2>"$T/notification.log" &
NOTIFY_PID=$!
say "inventory-service pid $INVENTORY_PID, notification-service pid $NOTIFY_PID"
wait_for 10 "both groups have a member" both_joined

step "start order-service: $N orders at $RATE a second, seed $SEED, acks=all"
"$EX/order-service" -b "$ADDR" -r "$RATE" -n "$N" -s "$SEED" -T "$T/expected" \
	2>"$T/order.log" &
ORDER_PID=$!

wait_for 60 "half the orders in the log" half_logged
wait_for 10 "the inventory state file" test -s "$T/inventory.state"
step "kill -9 inventory-service at $(messages) orders in the log"
kill -KILL "$INVENTORY_PID"
wait "$INVENTORY_PID" 2>/dev/null || true
INVENTORY_PID=
say "its state file says $(applied) events were applied"
say "$(grep 'events applied' "$T/inventory.log" | tail -1)"
sleep 0.5

step "start inventory-service again, on the same state file"
echo "---- restarted" >>"$T/inventory.log"
"${INVENTORY[@]}" 2>>"$T/inventory.log" &
INVENTORY_PID=$!
say "inventory-service pid $INVENTORY_PID; it gets the partitions once the killed member's session expires"

step "wait for order-service to finish"
wait_for $((N / RATE + 60)) "order-service to exit" order_service_done
rc=0
wait "$ORDER_PID" || rc=$?
ORDER_PID=''
[ "$rc" -eq 0 ] || fail "order-service exited $rc"
say "$(tail -1 "$T/order.log")"
grep -qx "order-service: done: $N sent, $N delivered, 0 failed" "$T/order.log" ||
	fail "order-service did not deliver $N orders"
[ "$(messages)" -eq "$N" ] || fail "the topic holds $(messages) messages, not $N"

step "wait until both groups have committed every order (lag 0)"
wait_for 30 "inventory to catch up" caught_up inventory
wait_for 30 "notification to catch up" caught_up notification
"$MQADM" -b "$ADDR" group list | sed 's/^/   /'
"$MQADM" -b "$ADDR" group describe inventory | sed -n '/^TOPIC/,$p' | sed 's/^/   /'

step "stop both services with SIGTERM"
for pid in $INVENTORY_PID $NOTIFY_PID; do
	kill -TERM "$pid"
	rc=0
	wait "$pid" || rc=$?
	[ "$rc" -eq 0 ] || fail "pid $pid exited $rc on SIGTERM"
done
INVENTORY_PID='' NOTIFY_PID=''
say "$(tail -1 "$T/inventory.log")"
say "$(tail -1 "$T/notification.log")"

step "check the log: orders 1..$N, once each"
"$MQCAT" -b "$ADDR" -C -t orders -e -f '%k %s\n' >"$T/log.txt"
# From each event: "ID CUSTOMER UNITS TOTAL" in events.txt and "SKU UNITS"
# per item in items.txt.
awk -v events="$T/events.txt" -v items="$T/items.txt" '
	function num(key,   s) {
		if (!match($0, "\"" key "\":[0-9.]+"))
			return ""
		s = substr($0, RSTART, RLENGTH)
		return substr(s, index(s, ":") + 1)
	}
	{
		id = num("order_id")
		if (id != $1) { print "key " $1 " holds order " id; exit 1 }
		rest = $0
		units = 0
		while (match(rest, /"sku":"[^"]*","quantity":[0-9]+/)) {
			split(substr(rest, RSTART, RLENGTH), f, "\"")
			q = substr(f[7], 2)
			print f[4], q > items
			units += q
			rest = substr(rest, RSTART + RLENGTH)
		}
		print id, num("customer_id"), units, num("total") > events
	}' "$T/log.txt" || fail "an event is not what order-service writes"
cut -d' ' -f1 "$T/events.txt" | sort -n >"$T/ids"
seq 1 "$N" | cmp -s - "$T/ids" || fail "the log does not hold orders 1..$N once each"
say "$(wc -l <"$T/events.txt") events, orders 1..$N once each"

step "check the inventory: stock taken = units ordered, per sku"
awk '{ u[$1] += $2 } END { for (s in u) print s, u[s] }' "$T/items.txt" | sort >"$T/log-units"
sort "$T/expected" >"$T/expected-units"
cmp -s "$T/log-units" "$T/expected-units" ||
	fail "the units in the log differ from what order-service computed from its seed"
awk -v init="$INITIAL_STOCK" '$1 == "stock" { print $2, init - $3 }' "$T/inventory.state" |
	sort >"$T/taken"
diff "$T/expected-units" "$T/taken" >"$T/diff" ||
	fail "inventory stock differs from the orders (expected < > inventory): $(cat "$T/diff")"
[ "$(applied)" -eq "$N" ] || fail "the inventory state applied $(applied) events, not $N"
say "$(wc -l <"$T/taken") skus, $(awk '{ s += $2 } END { print s }' "$T/taken") units: $(
	)exactly what the $N orders take"
skipped=$(sed -n 's/.*stopped: [0-9]* events applied, \([0-9]*\) skipped.*/\1/p' "$T/inventory.log")
say "after the restart, ${skipped:-0} events delivered again were skipped as already applied"

step "check the notifications: one line per order, as its event says"
awk '{ printf "order %s for customer %s confirmed: %s item%s, %s\n",
	$1, $2, $3, $3 == 1 ? "" : "s", $4 }' "$T/events.txt" | sort >"$T/want-notes"
sort "$T/notifications.txt" >"$T/got-notes"
diff "$T/want-notes" "$T/got-notes" >"$T/diff" ||
	fail "notifications differ (expected < > written): $(head -20 "$T/diff")"
say "$(wc -l <"$T/notifications.txt") lines, e.g.: $(head -1 "$T/notifications.txt")"

broker_stop || fail "ringmqd did not exit 0 on SIGTERM"
echo "demo.sh: all checks passed ($SECONDS s)"
