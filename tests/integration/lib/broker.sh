# shellcheck shell=bash disable=SC2034 # ADDR, BROKER_HTTP, BROKER_ERR are for the caller
# lib/broker.sh — start and stop one ringmqd for an integration script.
# Sourced (never run) by tests/integration/*.sh, after they set RINGMQD (the
# binary) and T (a temp dir they own and remove). Sets BROKER_PID to '' here.
#
# Typical use:
#   cleanup() { broker_cleanup; rm -rf "$T"; }
#   trap cleanup EXIT
#   broker_start 127.0.0.1:0 || fail "$BROKER_ERR"
#   ... -b "$ADDR" ...
#   broker_stop || fail "ringmqd did not exit 0 on SIGTERM"

BROKER_PID=

# broker_start HTTP: starts $RINGMQD on 127.0.0.1 port 0, data in $T/data,
# with --http HTTP (e.g. 127.0.0.1:0 or off), its stderr in $T/broker.log,
# and waits up to 10 s for its "ringmqd: ready on ADDR (http HTTP)" line.
# Sets BROKER_PID, ADDR (the protocol listener) and BROKER_HTTP (the HTTP
# listener as printed). Returns 0, or 1 with the reason in BROKER_ERR (the
# broker, if it still runs, is left to the caller's cleanup).
broker_start() {
	"$RINGMQD" --data-dir "$T/data" --listen 127.0.0.1:0 --http "$1" 2>"$T/broker.log" &
	BROKER_PID=$!
	ADDR='' BROKER_HTTP='' BROKER_ERR=''
	for _ in $(seq 100); do
		ADDR=$(sed -n 's/^ringmqd: ready on \([^ ]*\) (http .*/\1/p' "$T/broker.log")
		if [ -n "$ADDR" ]; then
			BROKER_HTTP=$(sed -n 's/^ringmqd: ready on \([^ ]*\) (http \([^)]*\))$/\2/p' \
				"$T/broker.log")
			return 0
		fi
		if ! kill -0 "$BROKER_PID" 2>/dev/null; then
			BROKER_ERR="ringmqd exited: $(cat "$T/broker.log")"
			return 1
		fi
		sleep 0.1
	done
	BROKER_ERR="ringmqd printed no ready line within 10 s"
	return 1
}

# broker_stop: SIGTERM to the broker broker_start started; waits for it and
# clears BROKER_PID. Returns its exit status (0 for a clean stop).
broker_stop() {
	local rc=0
	kill -TERM "$BROKER_PID"
	wait "$BROKER_PID" || rc=$?
	BROKER_PID=
	return "$rc"
}

# broker_cleanup: for an EXIT trap; stops the broker if it still runs
# (only the one started here), ignoring its exit status.
broker_cleanup() {
	if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
		kill -TERM "$BROKER_PID"
		wait "$BROKER_PID" || true
	fi
}
