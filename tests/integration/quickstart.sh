#!/usr/bin/env bash
# quickstart.sh BUILD — runs every ```sh block of docs/quickstart.md, in
# order, as one bash script (set -euo pipefail), against the broker the doc
# itself starts. Fails if any command fails.
#
# How the doc's commands are made to run here:
#   - the blocks run in a temp directory that has `build` linked to BUILD,
#     so the doc's `$PWD/build/bin` is BUILD/bin, and its files (data dir,
#     logs) land in the temp directory;
#   - `make` is a function that runs make in the repository with BUILD=BUILD;
#   - BROKER and HTTP (the doc takes them as ${BROKER:-127.0.0.1:9400} and
#     ${HTTP:-...}) are free ports on 127.0.0.1 picked here;
#   - without curl, a stand-in does `curl -s http://HOST:PORT/PATH`;
#   - when the script ends, any background job it started and did not stop
#     is stopped (kill by PID).
# The doc's output goes to a file, shown (its end) only if a command fails;
# QUICKSTART_VERBOSE=1 shows all of it. Needs python3 (to pick free ports).
# QUICKSTART_KEEP=1 keeps the temp directory (its path is printed).
# QUICKSTART_BROKER and QUICKSTART_HTTP (HOST:PORT) replace the picked ports:
# with the doc's defaults (127.0.0.1:9400 and :9401, when free) the run's
# output is what the doc shows.
set -euo pipefail

BUILD=$(cd "${1:?usage: quickstart.sh BUILD}" && pwd)
REPO=$(cd "$(dirname "$0")/../.." && pwd)
DOC=$REPO/docs/quickstart.md
[ -f "$DOC" ] || { echo "quickstart.sh: $DOC is missing" >&2; exit 1; }
[ -x "$BUILD/bin/ringmqd" ] || { echo "quickstart.sh: $BUILD/bin/ringmqd is not built" >&2; exit 1; }

T=$(mktemp -d "${TMPDIR:-/tmp}/ringmq-quickstart.XXXXXX")
cleanup() {
	if [ "${QUICKSTART_KEEP:-}" = 1 ]; then
		echo "quickstart.sh: kept $T"
	else
		rm -rf "$T"
	fi
}
trap cleanup EXIT
mkdir "$T/work"
ln -s "$BUILD" "$T/work/build"

# Two free ports: bind port 0, note the port, let it go.
free_port() {
	python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
BROKER=${QUICKSTART_BROKER:-127.0.0.1:$(free_port)}
HTTP=${QUICKSTART_HTTP:-127.0.0.1:$(free_port)}
while [ "$HTTP" = "$BROKER" ]; do HTTP=127.0.0.1:$(free_port); done

# The blocks, each preceded by a line that says where it comes from.
awk '
	/^```sh[[:space:]]*$/ { inside = 1; blocks++; first = 1; next }
	inside && /^```[[:space:]]*$/ { inside = 0; next }
	inside && first { printf "echo %c-- docs/quickstart.md:%d%c\n", 39, NR, 39; first = 0 }
	inside { print }
	END {
		if (inside) { print "unclosed ```sh block" > "/dev/stderr"; exit 1 }
		if (!blocks) { print "no ```sh blocks" > "/dev/stderr"; exit 1 }
	}' "$DOC" >"$T/blocks.sh"

{
	cat <<EOF
set -euo pipefail
# Stop whatever the doc left running: only this script's own jobs.
stop_jobs() {
	local status=\$?
	for pid in \$(jobs -p); do
		kill -TERM "\$pid" 2>/dev/null && echo "quickstart.sh: stopped job \$pid the doc left running" >&2
	done
	wait || true
	exit \$status
}
trap stop_jobs EXIT
trap 'exit 143' TERM
make() { command make --no-print-directory -C "$REPO" BUILD="$BUILD" "\$@"; }
EOF
	if ! command -v curl >/dev/null; then
		cat <<'EOF'
curl() { # curl -s http://HOST:PORT/PATH, for machines without curl
	local url=${!#}
	url=${url#http://}
	local hostport=${url%%/*} path=/${url#*/}
	exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}"
	printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
	sed '1,/^\r$/d' <&3
	exec 3<&-
}
EOF
	fi
	cat "$T/blocks.sh"
} >"$T/run.sh"

echo "-- running the $(grep -c '^```sh' "$DOC") sh blocks of docs/quickstart.md" \
	"(broker $BROKER, http $HTTP)"
rc=0
(
	cd "$T/work"
	unset RINGMQ_BROKERS
	export BROKER HTTP
	exec timeout --kill-after=10 240 bash "$T/run.sh"
) >"$T/out" 2>&1 || rc=$?
if [ "${QUICKSTART_VERBOSE:-}" = 1 ]; then
	cat "$T/out"
else
	echo "   blocks run (at lines): $(sed -n 's/^-- docs\/quickstart.md:\([0-9]*\)$/\1/p' "$T/out" |
		tr '\n' ' ')"
fi
if [ "$rc" -ne 0 ]; then
	{
		echo "FAIL: docs/quickstart.md: a command failed (exit $rc); the end of the output:"
		tail -40 "$T/out" | sed 's/^/  /'
	} >&2
	exit 1
fi
echo "quickstart.sh: ok ($SECONDS s)"
