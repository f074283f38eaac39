#!/usr/bin/env bash
# ops_docs.sh BUILD — docs/operations.md lists every setting, flag and metric
# the real ringmqd has, and nothing it does not have:
#   - each broker key and topic key in broker/config.c is recognised by the
#     binary (so the extraction is right) and is in docs/operations.md;
#   - each key in the doc's Broker and Topics tables is recognised by the binary;
#   - each --flag in `ringmqd --help` is in the doc;
#   - each metric a running broker exports on /metrics (with a topic, a
#     message and a consumer group, so every family has series) is in the
#     doc's metrics table, and each metric of that table is exported.
set -euo pipefail

BUILD=$(cd "${1:?usage: ops_docs.sh BUILD}" && pwd)
# shellcheck source=tests/integration/lib/broker.sh
. "$(dirname "$0")/lib/broker.sh"
cd "$(dirname "$0")/../.."
DOC=docs/operations.md
RINGMQD=$BUILD/bin/ringmqd
MQADM=$BUILD/bin/mqadm
MQCAT=$BUILD/bin/mqcat
for b in "$RINGMQD" "$MQADM" "$MQCAT"; do
	[ -x "$b" ] || { echo "ops_docs.sh: $b is not built" >&2; exit 1; }
done
[ -f "$DOC" ] || { echo "ops_docs.sh: no $DOC" >&2; exit 1; }

T=$(mktemp -d "${TMPDIR:-/tmp}/ringmq-ops-docs.XXXXXX")
cleanup() {
	broker_cleanup
	rm -rf "$T"
}
trap cleanup EXIT

errors=0
bad() { echo "FAIL: $*" >&2; errors=$((errors + 1)); }
step() { echo "-- $* ($SECONDS s)"; }

# probe KEY...: asks the binary about each KEY, 8 at a time, leaving the
# answer in $T/probe/KEY. An empty value is refused by every key, so ringmqd
# exits 2 at once; what matters is whether the reason is "unknown setting".
mkdir -p "$T/probe"
probe() {
	printf '%s\n' "$@" | sort -u | RINGMQD=$RINGMQD P=$T/probe xargs -P 8 -I{} sh -c '
		printf "%s =\n" "$1" >"$P/$1.conf"
		timeout 5 "$RINGMQD" --config "$P/$1.conf" --data-dir "$P/data" \
			--listen 127.0.0.1:0 --http off >/dev/null 2>"$P/$1"
		echo "rc=$?" >>"$P/$1"' sh {}
}
# known KEY: after probe, the binary recognised KEY as a setting.
known() {
	[ -f "$T/probe/$1" ] || probe "$1"
	grep -qx 'rc=2' "$T/probe/$1" && ! grep -q 'unknown \(topic \)\?setting' "$T/probe/$1"
}
why() { head -1 "$T/probe/$1"; }

# in_doc TEXT: TEXT appears in the doc in backticks (alone or as `TEXT{...}`).
in_doc() { grep -qF -e "\`$1\`" -e "\`$1{" "$DOC"; }

step "the probe tells a known key from an unknown one"
probe max.topics no.such.key
known max.topics || bad "ringmqd does not recognise max.topics: $(why max.topics)"
known no.such.key && bad "ringmqd recognises no.such.key: the probe is broken"

step "broker and topic keys of broker/config.c"
broker_keys=$( {
	sed -n 's/.*UKEY("\([a-z.]*\)".*/\1/p' broker/config.c
	sed -n 's/.*strcmp(key, "\([a-z.]*\)").*/\1/p' broker/config.c
	sed -n 's/.*strcmp(tk, "\([a-z.]*\)").*/default.\1/p' broker/config.c
} | sort -u)
topic_keys=$(sed -n '/topic_config_keys\[\] = {/,/};/p' broker/config.c |
	grep -o '"[a-z.]*"' | tr -d '"' | sort -u)
[ "$(echo "$broker_keys" | wc -w)" -ge 15 ] || bad "found only: $broker_keys"
[ "$(echo "$topic_keys" | wc -w)" -ge 5 ] || bad "found only topic keys: $topic_keys"
for k in $topic_keys; do
	# topic_config_set's keys are matched by strcmp(key, ...) too: not broker keys.
	broker_keys=$(echo "$broker_keys" | grep -vxF "$k" || true)
done
doc_keys() { # SECTION: first-column keys of the table under "### SECTION"
	awk -v s="### $1" '$0 == s {on = 1; next} on && /^#/ {exit}
		on && /^\| `/ {split($0, f, "`"); if (f[2] !~ /[< ]/) print f[2]}' "$DOC"
}
doc_broker=$(doc_keys Broker)
doc_topic=$(doc_keys Topics)
# shellcheck disable=SC2046
probe $broker_keys $(printf 'default.%s ' $topic_keys $doc_topic) $doc_broker
for k in $broker_keys; do
	known "$k" || bad "broker key $k (from broker/config.c) is not recognised: $(why "$k")"
	in_doc "$k" || bad "broker key $k is not in $DOC"
done
for k in $topic_keys; do
	known "default.$k" || bad "topic key $k is not recognised as default.$k: $(why "default.$k")"
	in_doc "$k" || bad "topic key $k is not in $DOC"
done

step "keys in the doc's settings tables"
n=0
for k in $doc_broker; do
	n=$((n + 1))
	known "$k" || bad "$DOC lists broker key $k, which ringmqd does not know: $(why "$k")"
done
[ "$n" -ge 15 ] || bad "found only $n keys in the doc's Broker table"
n=0
for k in $doc_topic; do
	n=$((n + 1))
	known "default.$k" || bad "$DOC lists topic key $k, which ringmqd does not know"
done
[ "$n" -ge 5 ] || bad "found only $n keys in the doc's Topics table"

step "flags of ringmqd --help"
flags=$(timeout 5 "$RINGMQD" --help | grep -o -- '--[a-z][a-z-]*' | sort -u)
[ "$(echo "$flags" | wc -w)" -ge 5 ] || bad "found only flags: $flags"
for f in $flags; do
	grep -qF -- "\`$f" "$DOC" || bad "flag $f is not in $DOC"
done

step "metrics of a running broker"
broker_start 127.0.0.1:0 || { echo "FAIL: $BROKER_ERR" >&2; exit 1; }
HTTP=$BROKER_HTTP
timeout 10 "$MQADM" -b "$ADDR" topic create opsdocs --partitions 2 >/dev/null
echo "k:v" | timeout 10 "$MQCAT" -b "$ADDR" -P -t opsdocs -K :
timeout 10 "$MQCAT" -b "$ADDR" -C -t opsdocs -G opsdocs -e >/dev/null

# GET /metrics over bash's /dev/tcp: no curl needed.
host=${HTTP%:*} port=${HTTP##*:}
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$HTTP" >&3
timeout 10 cat <&3 >"$T/metrics"
exec 3<&-
grep -q '^HTTP/1.1 200' "$T/metrics" || bad "GET /metrics: $(head -1 "$T/metrics")"
exported=$(sed -n 's/^# TYPE \(ringmq_[a-z_]*\) .*/\1/p' "$T/metrics" | sort -u)
[ "$(echo "$exported" | wc -w)" -ge 20 ] || bad "/metrics has only: $exported"
grep -q '^ringmq_group_lag{group="opsdocs"' "$T/metrics" || bad "no group series on /metrics"
for m in $exported; do
	in_doc "$m" || bad "metric $m (exported on /metrics) is not in $DOC"
done
documented=$(awk '/^## Metrics/ {on = 1; next} on && /^## / {exit}
	on && /^\| `ringmq_/ {split($0, f, "`"); sub(/\{.*/, "", f[2]); print f[2]}' "$DOC" | sort -u)
[ "$(echo "$documented" | wc -w)" -ge 20 ] || bad "the doc's metrics table has only: $documented"
for m in $documented; do
	echo "$exported" | grep -qxF "$m" || bad "$DOC lists metric $m, which /metrics does not export"
done

broker_stop || bad "ringmqd did not exit 0 on SIGTERM"

if [ "$errors" -ne 0 ]; then
	echo "ops_docs.sh: $errors problems" >&2
	exit 1
fi
echo "ops_docs.sh: ok: $(echo "$broker_keys" | wc -w) broker keys, $(echo "$topic_keys" | wc -w) topic keys, $(echo "$flags" | wc -w) flags, $(echo "$exported" | wc -w) metrics ($SECONDS s)"
