/* config.c — libringmq configuration, error strings and small helpers. */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/internal.h"

int64_t rc_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int rc_fail(char *errstr, size_t errlen, int err, const char *fmt, ...)
{
	if (errstr != NULL && errlen > 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(errstr, errlen, fmt, ap);
		va_end(ap);
	}
	return err;
}

const char *ringmq_strerror(int err)
{
	switch (err) {
	case RINGMQ_OK: return "success";
	case RINGMQ_ERR_BROKER_UNKNOWN: return "the broker failed unexpectedly";
	case RINGMQ_ERR_INVALID_REQUEST: return "the broker rejected a malformed request";
	case RINGMQ_ERR_UNSUPPORTED_API: return "the broker does not support this request";
	case RINGMQ_ERR_UNSUPPORTED_VERSION: return "no protocol version in common with the broker";
	case RINGMQ_ERR_CORRUPT_BATCH: return "the broker rejected a corrupt batch";
	case RINGMQ_ERR_BATCH_TOO_LARGE: return "batch larger than the topic's max.message.bytes";
	case RINGMQ_ERR_INVALID_TOPIC_NAME: return "invalid topic name";
	case RINGMQ_ERR_UNKNOWN_TOPIC: return "unknown topic";
	case RINGMQ_ERR_UNKNOWN_PARTITION: return "unknown partition";
	case RINGMQ_ERR_TOPIC_EXISTS: return "topic already exists";
	case RINGMQ_ERR_INVALID_CONFIG: return "invalid topic setting";
	case RINGMQ_ERR_INVALID_PARTITIONS: return "invalid partition count";
	case RINGMQ_ERR_OFFSET_OUT_OF_RANGE: return "offset out of range";
	case RINGMQ_ERR_LIMIT_EXCEEDED: return "a broker limit was exceeded";
	case RINGMQ_ERR_STORAGE: return "storage error on the broker";
	case RINGMQ_ERR_DISK_FULL: return "the broker's disk is full";
	case RINGMQ_ERR_BROKER_TIMEOUT: return "the broker timed out";
	case RINGMQ_ERR_SHUTTING_DOWN: return "the broker is shutting down";
	case RINGMQ_ERR_BUSY: return "the broker is busy";
	case RINGMQ_ERR_INVALID_ACKS: return "invalid acks";
	case RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE: return "producer sequence out of order";
	case RINGMQ_ERR_INVALID_GROUP: return "invalid group name";
	case RINGMQ_ERR_UNKNOWN_MEMBER: return "not a member of the group (session expired)";
	case RINGMQ_ERR_FENCED_MEMBER: return "stale member epoch";
	case RINGMQ_ERR_NOT_OWNER: return "the member does not own the partition";
	case RINGMQ_ERR_GROUP_NOT_EMPTY: return "the group has live members";
	case RINGMQ_ERR_UNKNOWN_GROUP: return "unknown group";
	case RINGMQ_ERR_TIMEOUT: return "timed out";
	case RINGMQ_ERR_TRANSPORT: return "cannot reach the broker";
	case RINGMQ_ERR_INVALID_ARG: return "invalid argument";
	case RINGMQ_ERR_QUEUE_FULL: return "producer buffer full";
	case RINGMQ_ERR_NO_MEMORY: return "out of memory";
	case RINGMQ_ERR_CLOSED: return "handle closed";
	case RINGMQ_ERR_CORRUPT_MESSAGE: return "fetched data failed its checksum";
	case RINGMQ_ERR_MSG_TOO_LARGE: return "message too large";
	case RINGMQ_ERR_PROTOCOL: return "protocol error";
	case RINGMQ_ERR_UNKNOWN_CONFIG: return "unknown configuration key";
	}
	return "unknown error";
}

int rc_err_from_broker(uint16_t err)
{
	if (err == ERR_TIMEOUT)
		return RINGMQ_ERR_BROKER_TIMEOUT;
	return err < ERR_COUNT ? (int)err : RINGMQ_ERR_PROTOCOL;
}

bool rc_err_retriable(int err)
{
	switch (err) {
	case RINGMQ_ERR_TRANSPORT:
	case RINGMQ_ERR_BROKER_TIMEOUT:
	case RINGMQ_ERR_BUSY:
	case RINGMQ_ERR_SHUTTING_DOWN:
	case RINGMQ_ERR_STORAGE:
	case RINGMQ_ERR_DISK_FULL:
	case RINGMQ_ERR_TIMEOUT:
		return true;
	default:
		return false;
	}
}

void rc_config_default(struct ringmq_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	const char *env = getenv("RINGMQ_BROKERS");
	char one[] = "127.0.0.1:9400";
	char errbuf[64];
	if (env == NULL || *env == '\0' ||
	    ringmq_config_set(cfg, "bootstrap.servers", env, errbuf, sizeof(errbuf)) != 0) {
		snprintf(cfg->servers[0], sizeof(cfg->servers[0]), "%s", one);
		cfg->nservers = 1;
	}
	snprintf(cfg->client_id, sizeof(cfg->client_id), "libringmq");
	cfg->request_timeout_ms = 30000;
	cfg->backoff_ms = 100;
	cfg->backoff_max_ms = 10000;
	cfg->acks = PROTO_ACKS_ALL;
	cfg->linger_ms = 5;
	cfg->batch_size = 64 * 1024;
	cfg->buffer_memory = 64ull << 20;
	cfg->block_on_full = true;
	cfg->max_block_ms = 60000;
	cfg->lz4 = false;
	cfg->idempotence = true;
	cfg->max_in_flight = 5;
	cfg->delivery_timeout_ms = 120000;
	cfg->message_max_bytes = 1u << 20;
	cfg->fetch_max_bytes = 8u << 20;
	cfg->fetch_partition_max_bytes = 1u << 20;
	cfg->fetch_max_wait_ms = 500;
	cfg->fetch_min_bytes = 1;
	cfg->check_crcs = true;
	cfg->session_timeout_ms = 10000;
	cfg->auto_commit = true;
	cfg->auto_commit_interval_ms = 5000;
	cfg->offset_reset_latest = false;
}

struct ringmq_config *ringmq_config_new(void)
{
	struct ringmq_config *cfg = malloc(sizeof(*cfg));
	if (cfg)
		rc_config_default(cfg);
	return cfg;
}

struct ringmq_config *ringmq_config_dup(const struct ringmq_config *cfg)
{
	struct ringmq_config *c = malloc(sizeof(*c));
	if (c)
		*c = *cfg;
	return c;
}

void ringmq_config_free(struct ringmq_config *cfg)
{
	free(cfg);
}

void ringmq_config_set_rebalance_cb(struct ringmq_config *cfg, ringmq_rebalance_cb *cb,
				    void *cb_opaque)
{
	cfg->rebalance_cb = cb;
	cfg->rebalance_opaque = cb_opaque;
}

void ringmq_config_set_delivery_cb(struct ringmq_config *cfg, ringmq_delivery_cb *cb,
				   void *cb_opaque)
{
	cfg->delivery_cb = cb;
	cfg->delivery_opaque = cb_opaque;
}

static int parse_int(const char *v, long long lo, long long hi, long long *out)
{
	if (v == NULL || *v == '\0')
		return -1;
	char *end;
	errno = 0;
	long long x = strtoll(v, &end, 10);
	if (errno != 0 || *end != '\0' || x < lo || x > hi)
		return -1;
	*out = x;
	return 0;
}

static int parse_bool(const char *v, bool *out)
{
	if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0 || strcmp(v, "yes") == 0) {
		*out = true;
		return 0;
	}
	if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0 || strcmp(v, "no") == 0) {
		*out = false;
		return 0;
	}
	return -1;
}

static int set_servers(struct ringmq_config *cfg, const char *v, char *errstr, size_t errlen)
{
	unsigned n = 0;
	const char *p = v;
	char list[RC_SERVERS_MAX][256];
	while (*p != '\0') {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		while (len > 0 && isspace((unsigned char)*p)) {
			p++;
			len--;
		}
		while (len > 0 && isspace((unsigned char)p[len - 1]))
			len--;
		if (len == 0 || len >= sizeof(list[0]) || n == RC_SERVERS_MAX)
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
				       "bootstrap.servers: '%s' is not a list of HOST:PORT", v);
		memcpy(list[n], p, len);
		list[n][len] = '\0';
		const char *colon = strrchr(list[n], ':');
		long long port;
		if (colon == NULL || colon == list[n] || parse_int(colon + 1, 1, 65535, &port) != 0)
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
				       "bootstrap.servers: '%s' is not HOST:PORT", list[n]);
		n++;
		p = comma ? comma + 1 : p + len;
	}
	if (n == 0)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "bootstrap.servers is empty");
	memcpy(cfg->servers, list, sizeof(list));
	cfg->nservers = n;
	return 0;
}

int ringmq_config_set(struct ringmq_config *cfg, const char *key, const char *value,
		      char *errstr, size_t errlen)
{
	long long x;
	bool b;
	if (cfg == NULL || key == NULL || value == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
#define INT_KEY(name, field, lo, hi)                                                         \
	if (strcmp(key, name) == 0) {                                                        \
		if (parse_int(value, lo, hi, &x) != 0)                                       \
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,               \
				       "%s must be an integer in %lld..%lld, not '%s'", key,  \
				       (long long)(lo), (long long)(hi), value);             \
		cfg->field = x;                                                              \
		return 0;                                                                    \
	}
#define BOOL_KEY(name, field)                                                                \
	if (strcmp(key, name) == 0) {                                                        \
		if (parse_bool(value, &b) != 0)                                              \
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,               \
				       "%s must be true or false, not '%s'", key, value);    \
		cfg->field = b;                                                              \
		return 0;                                                                    \
	}
	if (strcmp(key, "bootstrap.servers") == 0)
		return set_servers(cfg, value, errstr, errlen);
	if (strcmp(key, "client.id") == 0) {
		if (strlen(value) >= sizeof(cfg->client_id))
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "client.id too long");
		snprintf(cfg->client_id, sizeof(cfg->client_id), "%s", value);
		return 0;
	}
	if (strcmp(key, "acks") == 0) {
		if (strcmp(value, "all") == 0 || strcmp(value, "-1") == 0)
			cfg->acks = PROTO_ACKS_ALL;
		else if (strcmp(value, "1") == 0)
			cfg->acks = PROTO_ACKS_LEADER;
		else if (strcmp(value, "0") == 0)
			cfg->acks = PROTO_ACKS_NONE;
		else
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
				       "acks must be 0, 1 or all, not '%s'", value);
		return 0;
	}
	if (strcmp(key, "auto.offset.reset") == 0) {
		if (strcmp(value, "earliest") == 0)
			cfg->offset_reset_latest = false;
		else if (strcmp(value, "latest") == 0)
			cfg->offset_reset_latest = true;
		else
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
				       "auto.offset.reset must be earliest or latest, not '%s'",
				       value);
		return 0;
	}
	if (strcmp(key, "compression") == 0) {
		if (strcmp(value, "lz4") == 0)
			cfg->lz4 = true;
		else if (strcmp(value, "none") == 0)
			cfg->lz4 = false;
		else
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
				       "compression must be none or lz4, not '%s'", value);
		return 0;
	}
	INT_KEY("request.timeout.ms", request_timeout_ms, 1, 3600000)
	INT_KEY("reconnect.backoff.ms", backoff_ms, 1, 600000)
	INT_KEY("reconnect.backoff.max.ms", backoff_max_ms, 1, 600000)
	INT_KEY("linger.ms", linger_ms, 0, 600000)
	INT_KEY("batch.size", batch_size, 128, 16 << 20)
	INT_KEY("buffer.memory", buffer_memory, 1 << 16, 1ll << 40)
	BOOL_KEY("block.on.buffer.full", block_on_full)
	INT_KEY("max.block.ms", max_block_ms, 0, 3600000)
	BOOL_KEY("enable.idempotence", idempotence)
	INT_KEY("max.in.flight", max_in_flight, 1, 64)
	INT_KEY("delivery.timeout.ms", delivery_timeout_ms, 1, 3600000)
	INT_KEY("message.max.bytes", message_max_bytes, 128, 16 << 20)
	INT_KEY("fetch.max.bytes", fetch_max_bytes, 1024, 64 << 20)
	INT_KEY("fetch.partition.max.bytes", fetch_partition_max_bytes, 1024, 64 << 20)
	INT_KEY("fetch.max.wait.ms", fetch_max_wait_ms, 0, 3600000)
	INT_KEY("fetch.min.bytes", fetch_min_bytes, 0, 64 << 20)
	BOOL_KEY("check.crcs", check_crcs)
	INT_KEY("session.timeout.ms", session_timeout_ms, 1000, 300000)
	BOOL_KEY("enable.auto.commit", auto_commit)
	INT_KEY("auto.commit.interval.ms", auto_commit_interval_ms, 1, 3600000)
#undef INT_KEY
#undef BOOL_KEY
	return rc_fail(errstr, errlen, RINGMQ_ERR_UNKNOWN_CONFIG, "unknown configuration key '%s'",
		       key);
}
