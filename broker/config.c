/* config.c — parsing and checking of broker and topic settings (see config.h). */
#include "broker/config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/limits.h"
#include "proto/proto.h"

#define CONFIG_FILE_MAX (1u << 20) /* a config file is a few hundred bytes */
#define DATA_DIR_MAX 3800u

const char *const topic_config_keys[] = {
	"retention.ms", "retention.bytes", "segment.bytes", "segment.ms", "flush",
	"max.message.bytes", "index.interval.bytes", NULL,
};

static int fail(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *why, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, cap, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

int parse_u64(const char *s, bool bytes, uint64_t *out)
{
	if (s == NULL || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0)
		return -EINVAL;
	unsigned shift = 0;
	if (bytes && *end != '\0') {
		switch (*end) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		default: return -EINVAL;
		}
		end++;
		if (*end == 'i' || *end == 'I')
			end++;
		if (*end == 'b' || *end == 'B')
			end++;
	}
	if (*end != '\0')
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

/* A signed setting where -1 means "no limit". */
static int parse_limit(const char *s, bool bytes, int64_t *out)
{
	if (strcmp(s, "-1") == 0) {
		*out = -1;
		return 0;
	}
	uint64_t v;
	if (parse_u64(s, bytes, &v) != 0 || v > INT64_MAX)
		return -EINVAL;
	*out = (int64_t)v;
	return 0;
}

bool topic_name_valid(const char *name, size_t len)
{
	if (len == 0 || len > TOPIC_NAME_MAX)
		return false;
	if (name[0] == '.')
		return false; /* hidden names belong to the broker (.offsets, .trash-) */
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!(isalnum((unsigned char)c) || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

int topic_config_set(struct topic_config *tc, const char *key, const char *value, char *why,
		     size_t cap)
{
	uint64_t u;
	int64_t l;
	struct log_config *lc = &tc->log;
	if (strcmp(key, "retention.ms") == 0) {
		if (parse_limit(value, false, &l) != 0)
			return fail(why, cap, "%s must be -1 or milliseconds, not '%s'", key, value);
		lc->retention_ms = l;
	} else if (strcmp(key, "retention.bytes") == 0) {
		if (parse_limit(value, true, &l) != 0)
			return fail(why, cap, "%s must be -1 or a byte count, not '%s'", key, value);
		lc->retention_bytes = l;
	} else if (strcmp(key, "segment.bytes") == 0) {
		if (parse_u64(value, true, &u) != 0 || u < SEGMENT_BYTES_MIN || u > SEGMENT_BYTES_MAX)
			return fail(why, cap, "%s must be between 1024 and 2147483648, not '%s'",
				    key, value);
		lc->segment_bytes = u;
	} else if (strcmp(key, "segment.ms") == 0) {
		if (parse_limit(value, false, &l) != 0)
			return fail(why, cap, "%s must be -1 or milliseconds, not '%s'", key, value);
		lc->segment_ms = l;
	} else if (strcmp(key, "flush") == 0) {
		if (strcmp(value, "always") == 0) {
			lc->flush = LOG_FLUSH_ALWAYS;
		} else if (strcmp(value, "never") == 0) {
			lc->flush = LOG_FLUSH_NEVER;
		} else if (strncmp(value, "interval:", 9) == 0 && parse_u64(value + 9, false, &u) == 0 &&
			   u >= 1 && u <= 3600000) {
			lc->flush = LOG_FLUSH_INTERVAL;
			lc->flush_interval_ms = (uint32_t)u;
		} else {
			return fail(why, cap, "%s must be always, interval:MS (1..3600000) or never, "
				    "not '%s'", key, value);
		}
	} else if (strcmp(key, "max.message.bytes") == 0) {
		if (parse_u64(value, true, &u) != 0 || u < BATCH_HEADER_SIZE + RECORD_SIZE_MIN ||
		    u > BATCH_SIZE_MAX)
			return fail(why, cap, "%s must be between 69 and 16777216, not '%s'", key,
				    value);
		tc->max_message_bytes = (uint32_t)u;
	} else if (strcmp(key, "index.interval.bytes") == 0) {
		if (parse_u64(value, true, &u) != 0 || u < INDEX_INTERVAL_BYTES_MIN ||
		    u > INDEX_INTERVAL_BYTES_MAX)
			return fail(why, cap, "%s must be between 64 and 16777216, not '%s'", key,
				    value);
		lc->index_interval_bytes = (uint32_t)u;
	} else {
		return fail(why, cap, "unknown topic setting '%s'", key);
	}
	return 0;
}

int topic_config_get(const struct topic_config *tc, const char *key, char *out, size_t cap)
{
	const struct log_config *lc = &tc->log;
	int n;
	if (strcmp(key, "retention.ms") == 0)
		n = snprintf(out, cap, "%" PRId64, lc->retention_ms < 0 ? -1 : lc->retention_ms);
	else if (strcmp(key, "retention.bytes") == 0)
		n = snprintf(out, cap, "%" PRId64, lc->retention_bytes < 0 ? -1 : lc->retention_bytes);
	else if (strcmp(key, "segment.bytes") == 0)
		n = snprintf(out, cap, "%" PRIu64, lc->segment_bytes);
	else if (strcmp(key, "segment.ms") == 0)
		n = snprintf(out, cap, "%" PRId64, lc->segment_ms <= 0 ? -1 : lc->segment_ms);
	else if (strcmp(key, "flush") == 0 && lc->flush == LOG_FLUSH_INTERVAL)
		n = snprintf(out, cap, "interval:%u", lc->flush_interval_ms);
	else if (strcmp(key, "flush") == 0)
		n = snprintf(out, cap, "%s", log_flush_name(lc->flush));
	else if (strcmp(key, "max.message.bytes") == 0)
		n = snprintf(out, cap, "%u", tc->max_message_bytes);
	else if (strcmp(key, "index.interval.bytes") == 0)
		n = snprintf(out, cap, "%u", lc->index_interval_bytes);
	else
		return -EINVAL;
	return n < 0 || (size_t)n >= cap ? -ENOSPC : 0;
}

int topic_config_check(const struct topic_config *tc, char *why, size_t cap)
{
	const char *r;
	if (log_config_check(&tc->log, &r) != 0)
		return fail(why, cap, "%s", r);
	if (tc->max_message_bytes > tc->log.segment_bytes)
		return fail(why, cap, "max.message.bytes must not exceed segment.bytes");
	return 0;
}

void broker_config_default(struct broker_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	snprintf(cfg->data_dir, sizeof(cfg->data_dir), "./ringmq-data");
	snprintf(cfg->listen, sizeof(cfg->listen), "127.0.0.1:9400");
	snprintf(cfg->http, sizeof(cfg->http), "127.0.0.1:9401");
	cfg->log_level = SAY_INFO;
	cfg->max_frame_bytes = 16u << 20;
	cfg->max_topics = 10000;
	cfg->max_partitions_per_topic = 1000;
	cfg->max_connections = 10000;
	cfg->max_inflight_requests = 64;
	cfg->max_buffered_bytes = 64u << 20;
	cfg->staging_bytes = 64u << 20;
	cfg->recv_buffers = 256;
	cfg->recv_buffer_bytes = 16u << 10;
	cfg->max_wait_ms_limit = 60000;
	cfg->http_max_connections = 64;
	cfg->http_timeout_ms = 10000;
	cfg->shutdown_timeout_ms = 10000;
	struct topic_config *tc = &cfg->topic_defaults;
	tc->partitions = 1;
	log_config_default(&tc->log);
	tc->max_message_bytes = 1u << 20;
}

struct ukey {
	const char *key;
	size_t off;
	uint64_t min, max;
	bool bytes;
};

#define UKEY(k, field, lo, hi, b) { k, offsetof(struct broker_config, field), lo, hi, b }

static const struct ukey u32_keys[] = {
	UKEY("max.frame.bytes", max_frame_bytes, 4096, FRAME_SIZE_HARD_MAX, true),
	UKEY("max.topics", max_topics, 1, 100000, false),
	UKEY("max.partitions.per.topic", max_partitions_per_topic, 1, PARTITIONS_MAX, false),
	UKEY("max.connections", max_connections, 1, 1000000, false),
	UKEY("max.inflight.requests", max_inflight_requests, 1, 4096, false),
	UKEY("recv.buffers", recv_buffers, 8, 32768, false),
	UKEY("recv.buffer.bytes", recv_buffer_bytes, 4096, 1u << 20, true),
	UKEY("max.wait.ms", max_wait_ms_limit, 0, 3600000, false),
	UKEY("http.max.connections", http_max_connections, 1, 10000, false),
	UKEY("http.timeout.ms", http_timeout_ms, 100, 3600000, false),
	UKEY("shutdown.timeout.ms", shutdown_timeout_ms, 0, 3600000, false),
	UKEY("test.fsync.delay.ms", test_fsync_delay_ms, 0, 10000, false),
	UKEY("test.drop.after.append", test_drop_after_append, 0, 1000000, false),
};

static const struct ukey u64_keys[] = {
	UKEY("max.buffered.bytes", max_buffered_bytes, 65536, 1ull << 34, true),
	UKEY("staging.bytes", staging_bytes, 1u << 20, 1ull << 34, true),
	UKEY("test.offsets.compact.bytes", test_offsets_compact_bytes, 4u << 20, 1ull << 34, true),
};

static int set_string(char *dst, size_t cap, const char *key, const char *value, char *why,
		      size_t wcap)
{
	if (strlen(value) >= cap || value[0] == '\0')
		return fail(why, wcap, "%s: '%s' is empty or too long", key, value);
	snprintf(dst, cap, "%s", value);
	return 0;
}

int broker_config_set(struct broker_config *cfg, const char *key, const char *value, char *why,
		      size_t cap)
{
	char host[256];
	uint16_t port;
	if (strcmp(key, "data.dir") == 0) {
		/* Leaves room in PATH_MAX for "/<topic>/<partition>/<segment>". */
		if (strlen(value) > DATA_DIR_MAX)
			return fail(why, cap, "data.dir is longer than %u characters", DATA_DIR_MAX);
		return set_string(cfg->data_dir, sizeof(cfg->data_dir), key, value, why, cap);
	}
	if (strcmp(key, "listen") == 0 || strcmp(key, "http") == 0) {
		bool http = key[0] == 'h';
		if (http && strcmp(value, "off") == 0) {
			cfg->http[0] = '\0';
			return 0;
		}
		if (parse_host_port(value, host, sizeof(host), &port) != 0)
			return fail(why, cap, "%s must be HOST:PORT, not '%s'", key, value);
		return set_string(http ? cfg->http : cfg->listen, sizeof(cfg->listen), key, value,
				  why, cap);
	}
	if (strcmp(key, "log.level") == 0) {
		if (say_parse_level(value, &cfg->log_level) != 0)
			return fail(why, cap, "%s must be error, warn, info or debug, not '%s'", key,
				    value);
		return 0;
	}
	for (size_t i = 0; i < sizeof(u32_keys) / sizeof(u32_keys[0]); i++) {
		const struct ukey *k = &u32_keys[i];
		if (strcmp(key, k->key) != 0)
			continue;
		uint64_t v;
		if (parse_u64(value, k->bytes, &v) != 0 || v < k->min || v > k->max) {
			char range[64];
			snprintf(range, sizeof(range), "%" PRIu64 "..%" PRIu64, k->min, k->max);
			snprintf(why, cap, "%s must be in %s, not '%s'", key, range, value);
			return -EINVAL;
		}
		*(uint32_t *)((char *)cfg + k->off) = (uint32_t)v;
		return 0;
	}
	for (size_t i = 0; i < sizeof(u64_keys) / sizeof(u64_keys[0]); i++) {
		const struct ukey *k = &u64_keys[i];
		if (strcmp(key, k->key) != 0)
			continue;
		uint64_t v;
		if (parse_u64(value, k->bytes, &v) != 0 || v < k->min || v > k->max) {
			char range[64];
			snprintf(range, sizeof(range), "%" PRIu64 "..%" PRIu64, k->min, k->max);
			snprintf(why, cap, "%s must be in %s, not '%s'", key, range, value);
			return -EINVAL;
		}
		*(uint64_t *)((char *)cfg + k->off) = v;
		return 0;
	}
	if (strncmp(key, "default.", 8) == 0) {
		const char *tk = key + 8;
		if (strcmp(tk, "partitions") == 0) {
			uint64_t v;
			if (parse_u64(value, false, &v) != 0 || v < 1 || v > PARTITIONS_MAX)
				return fail(why, cap, "%s must be 1..10000, not '%s'", key, value);
			cfg->topic_defaults.partitions = (uint32_t)v;
			return 0;
		}
		return topic_config_set(&cfg->topic_defaults, tk, value, why, cap);
	}
	return fail(why, cap, "unknown setting '%s'", key);
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

int broker_config_parse(struct broker_config *cfg, const char *text, size_t len, int *line,
			char *why, size_t cap)
{
	*line = 0;
	size_t pos = 0;
	while (pos < len) {
		size_t eol = pos;
		while (eol < len && text[eol] != '\n')
			eol++;
		(*line)++;
		char buf[8192];
		size_t n = eol - pos;
		if (n >= sizeof(buf))
			return fail(why, cap, "line too long");
		memcpy(buf, text + pos, n);
		buf[n] = '\0';
		pos = eol + 1;
		if (memchr(buf, '\0', n) != NULL)
			return fail(why, cap, "NUL byte in line");
		char *hash = strchr(buf, '#');
		if (hash)
			*hash = '\0';
		char *s = trim(buf);
		if (*s == '\0')
			continue;
		char *eq = strchr(s, '=');
		if (eq == NULL)
			return fail(why, cap, "expected 'key = value', got '%s'", s);
		*eq = '\0';
		char *key = trim(s), *value = trim(eq + 1);
		if (*key == '\0')
			return fail(why, cap, "missing key before '='");
		int ret = broker_config_set(cfg, key, value, why, cap);
		if (ret != 0)
			return ret;
	}
	return 0;
}

int broker_config_load(struct broker_config *cfg, const char *path, char *why, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(why, cap, "cannot open config file %s: %s", path, strerror(errno));
		return -EINVAL;
	}
	char *text = malloc(CONFIG_FILE_MAX);
	size_t len = 0;
	ssize_t n = 0;
	while (text != NULL && len < CONFIG_FILE_MAX &&
	       (n = read(fd, text + len, CONFIG_FILE_MAX - len)) > 0)
		len += (size_t)n;
	close(fd);
	if (text == NULL || n < 0 || len >= CONFIG_FILE_MAX) {
		free(text);
		snprintf(why, cap, "cannot read config file %s (over 1 MiB or unreadable)", path);
		return -EINVAL;
	}
	int line;
	char inner[512];
	int ret = broker_config_parse(cfg, text, len, &line, inner, sizeof(inner));
	free(text);
	if (ret != 0)
		snprintf(why, cap, "%s:%d: %s", path, line, inner);
	return ret;
}

int broker_config_check(const struct broker_config *cfg, char *why, size_t cap)
{
	if (cfg->max_frame_bytes < cfg->topic_defaults.max_message_bytes + 4096u)
		return fail(why, cap, "max.frame.bytes must exceed default.max.message.bytes by "
			    "4096 (room for the request around a batch)");
	if (cfg->topic_defaults.partitions > cfg->max_partitions_per_topic)
		return fail(why, cap, "default.partitions exceeds max.partitions.per.topic");
	return topic_config_check(&cfg->topic_defaults, why, cap);
}

int parse_host_port(const char *s, char *host, size_t host_cap, uint16_t *port)
{
	const char *colon;
	const char *h = s;
	size_t hlen;
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (rb == NULL || rb[1] != ':')
			return -EINVAL;
		h = s + 1;
		hlen = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL)
			return -EINVAL;
		hlen = (size_t)(colon - s);
	}
	if (hlen == 0 || hlen >= host_cap)
		return -EINVAL;
	uint64_t p;
	if (parse_u64(colon + 1, false, &p) != 0 || p > 65535)
		return -EINVAL;
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	*port = (uint16_t)p;
	return 0;
}
