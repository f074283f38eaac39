/* fuzz_config.c — fuzz target for the broker's settings: the config-file
 * parser, the per-key setters behind it (flags, topic create/alter, and the
 * topic.conf reader use the same ones) and the value parsers they share.
 *
 * The input is a config file's text. If it holds a NUL byte, the bytes
 * before the first NUL are also a key and those after it (up to the next
 * NUL) a value, given straight to the setters as a flag or a request would.
 *
 * What must hold, beyond not crashing:
 * - every outcome is 0 or -EINVAL, and -EINVAL comes with a one-line reason
 *   that a short buffer merely truncates;
 * - whatever was accepted lies in the ranges docs/operations.md gives (the
 *   table below is written from the docs, not from config.c);
 * - a refused setting changes nothing, and a failing file stops at the line
 *   it names, with everything before that line accepted;
 * - what was accepted can be written back out (as topic.conf is) and read
 *   to the same settings;
 * - parse_u64, parse_host_port and topic_name_valid agree with independent
 *   readings of their contracts.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "broker/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* abort() rather than assert(): the checks must hold in every build. */
#define CHECK(cond)                     \
	do {                            \
		if (!(cond))            \
			abort();        \
	} while (0)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* What the broker gives for a reason (main.c, topics.c use 256..512). */
#define WHY_CAP 512
/* Small enough that nearly every reason is cut short by it. */
#define WHY_SHORT 7
/* Inputs per one that also goes through broker_config_load. */
#define LOAD_EVERY 8
/* Lines of a file whose values also go through the value oracles. */
#define ORACLE_LINES 64

/* ---- the documented ranges ---- */

struct range {
	const char *key;
	size_t off;
	bool is64;
	uint64_t min, max;
	bool zero_ok; /* 0 is the default and means "built in", outside the range */
};

#define R32(k, f, lo, hi) { k, offsetof(struct broker_config, f), false, lo, hi, false }
#define R64(k, f, lo, hi, z) { k, offsetof(struct broker_config, f), true, lo, hi, z }

static const struct range broker_ranges[] = {
	R32("max.frame.bytes", max_frame_bytes, 4u << 10, 64u << 20),
	R32("max.topics", max_topics, 1, 100000),
	R32("max.partitions.per.topic", max_partitions_per_topic, 1, 10000),
	R32("max.connections", max_connections, 1, 1000000),
	R32("max.inflight.requests", max_inflight_requests, 1, 4096),
	R64("max.buffered.bytes", max_buffered_bytes, 64u << 10, 16ull << 30, false),
	R64("staging.bytes", staging_bytes, 1u << 20, 16ull << 30, false),
	R32("recv.buffers", recv_buffers, 8, 32768),
	R32("recv.buffer.bytes", recv_buffer_bytes, 4u << 10, 1u << 20),
	R32("max.wait.ms", max_wait_ms_limit, 0, 3600000),
	R32("http.max.connections", http_max_connections, 1, 10000),
	R32("http.timeout.ms", http_timeout_ms, 100, 3600000),
	R32("shutdown.timeout.ms", shutdown_timeout_ms, 0, 3600000),
	R32("test.fsync.delay.ms", test_fsync_delay_ms, 0, 10000),
	R32("test.drop.after.append", test_drop_after_append, 0, 1000000),
	R64("test.offsets.compact.bytes", test_offsets_compact_bytes, 4u << 20, 16ull << 30, true),
};

static const char *const level_names[] = { "error", "warn", "info", "debug" };

static uint64_t range_get(const struct broker_config *cfg, const struct range *r)
{
	const char *p = (const char *)cfg + r->off;
	if (r->is64)
		return *(const uint64_t *)(const void *)p;
	return *(const uint32_t *)(const void *)p;
}

static bool cut_by_conf_reader(const char *s)
{
	for (; *s; s++)
		if (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n' || *s == '#')
			return true;
	return false;
}

/* Everything topic_config_set can reach, and what topic.conf can carry. */
static void check_topic(const struct topic_config *tc, uint32_t partitions)
{
	const struct log_config *lc = &tc->log;
	struct log_config def;
	log_config_default(&def);
	CHECK(tc->partitions == partitions);
	CHECK(lc->retention_ms >= -1 && lc->retention_bytes >= -1 && lc->segment_ms >= -1);
	CHECK(lc->segment_bytes >= 1024 && lc->segment_bytes <= (2ull << 30));
	CHECK(lc->index_interval_bytes >= 64 && lc->index_interval_bytes <= (16u << 20));
	CHECK(tc->max_message_bytes >= 69 && tc->max_message_bytes <= (16u << 20));
	CHECK(lc->flush == LOG_FLUSH_ALWAYS || lc->flush == LOG_FLUSH_INTERVAL ||
	      lc->flush == LOG_FLUSH_NEVER);
	CHECK(lc->flush_interval_ms >= 1 && lc->flush_interval_ms <= 3600000);
	/* Not settable by any key. */
	CHECK(lc->preallocate == def.preallocate);
	CHECK(lc->max_writes_in_flight == def.max_writes_in_flight);

	/* The text form goes into topic.conf, whose reader ends a value at
	 * the first blank and a line at '#'; 64 bytes is what its writer and
	 * DESCRIBE_TOPIC give it. */
	for (size_t i = 0; topic_config_keys[i] != NULL; i++) {
		char v[64];
		CHECK(topic_config_get(tc, topic_config_keys[i], v, sizeof(v)) == 0);
		CHECK(v[0] != '\0' && !cut_by_conf_reader(v));
		struct topic_config back = *tc;
		char why[WHY_CAP];
		CHECK(topic_config_set(&back, topic_config_keys[i], v, why, sizeof(why)) == 0);
		char v2[64];
		CHECK(topic_config_get(&back, topic_config_keys[i], v2, sizeof(v2)) == 0);
		CHECK(strcmp(v, v2) == 0);
	}
	char v[64];
	CHECK(topic_config_get(tc, "partitions", v, sizeof(v)) == -EINVAL);
}

static void check_host_port_field(const char *s, size_t cap)
{
	CHECK(memchr(s, '\0', cap) != NULL);
	char host[256];
	uint16_t port;
	CHECK(s[0] != '\0' && parse_host_port(s, host, sizeof(host), &port) == 0);
}

static void check_broker(const struct broker_config *cfg)
{
	size_t n = strnlen(cfg->data_dir, sizeof(cfg->data_dir));
	CHECK(n >= 1 && n <= 3800);
	check_host_port_field(cfg->listen, sizeof(cfg->listen));
	/* An empty http is "off". */
	CHECK(memchr(cfg->http, '\0', sizeof(cfg->http)) != NULL);
	if (cfg->http[0] != '\0')
		check_host_port_field(cfg->http, sizeof(cfg->http));
	CHECK((unsigned)cfg->log_level < ARRAY_SIZE(level_names));
	for (size_t i = 0; i < ARRAY_SIZE(broker_ranges); i++) {
		const struct range *r = &broker_ranges[i];
		uint64_t v = range_get(cfg, r);
		CHECK((v >= r->min && v <= r->max) || (r->zero_ok && v == 0));
	}
	CHECK(cfg->topic_defaults.partitions >= 1 && cfg->topic_defaults.partitions <= 10000);
	check_topic(&cfg->topic_defaults, cfg->topic_defaults.partitions);
}

/* broker_config_check, read from the docs: a sum of its conditions. */
static void check_cross(const struct broker_config *cfg)
{
	char why[WHY_CAP];
	why[0] = '\0';
	int ret = broker_config_check(cfg, why, sizeof(why));
	const struct topic_config *tc = &cfg->topic_defaults;
	const char *lwhy;
	bool ok = cfg->max_frame_bytes >= (uint64_t)tc->max_message_bytes + 4096 &&
		  tc->partitions <= cfg->max_partitions_per_topic &&
		  tc->max_message_bytes <= tc->log.segment_bytes &&
		  log_config_check(&tc->log, &lwhy) == 0;
	CHECK(ret == 0 || ret == -EINVAL);
	CHECK((ret == 0) == ok);
	if (ret != 0)
		CHECK(why[0] != '\0' && strchr(why, '\n') == NULL);
	/* The topic check alone is what create and alter apply. */
	ret = topic_config_check(tc, why, sizeof(why));
	CHECK((ret == 0) == (tc->max_message_bytes <= tc->log.segment_bytes &&
			     log_config_check(&tc->log, &lwhy) == 0));
}

/* Writes the settings out as a config file. */
static char *serialize(const struct broker_config *cfg, size_t *len)
{
	char *text = NULL;
	size_t cap = 0;
	FILE *f = open_memstream(&text, &cap);
	CHECK(f != NULL);
	fprintf(f, "# written back by fuzz_config\ndata.dir = %s\nlisten = %s\n", cfg->data_dir,
		cfg->listen);
	fprintf(f, "http = %s\n", cfg->http[0] ? cfg->http : "off");
	fprintf(f, "log.level = %s\n", level_names[cfg->log_level]);
	for (size_t i = 0; i < ARRAY_SIZE(broker_ranges); i++) {
		const struct range *r = &broker_ranges[i];
		uint64_t v = range_get(cfg, r);
		if (r->zero_ok && v == 0)
			continue; /* not expressible: it is "unset" */
		fprintf(f, "%s = %" PRIu64 "\n", r->key, v);
	}
	fprintf(f, "default.partitions = %u\n", cfg->topic_defaults.partitions);
	for (size_t i = 0; topic_config_keys[i] != NULL; i++) {
		char v[64];
		CHECK(topic_config_get(&cfg->topic_defaults, topic_config_keys[i], v, sizeof(v)) == 0);
		fprintf(f, "default.%s = %s\n", topic_config_keys[i], v);
	}
	CHECK(fclose(f) == 0);
	*len = cap;
	return text;
}

static void same_settings(const struct broker_config *a, const struct broker_config *b)
{
	CHECK(strcmp(a->data_dir, b->data_dir) == 0);
	CHECK(strcmp(a->listen, b->listen) == 0);
	CHECK(strcmp(a->http, b->http) == 0);
	CHECK(a->log_level == b->log_level);
	for (size_t i = 0; i < ARRAY_SIZE(broker_ranges); i++)
		CHECK(range_get(a, &broker_ranges[i]) == range_get(b, &broker_ranges[i]));
	CHECK(a->topic_defaults.partitions == b->topic_defaults.partitions);
	/* Through the text form: segment.ms 0 and -1 both read "never". */
	for (size_t i = 0; topic_config_keys[i] != NULL; i++) {
		char va[64], vb[64];
		CHECK(topic_config_get(&a->topic_defaults, topic_config_keys[i], va, sizeof(va)) == 0);
		CHECK(topic_config_get(&b->topic_defaults, topic_config_keys[i], vb, sizeof(vb)) == 0);
		CHECK(strcmp(va, vb) == 0);
	}
}

/* ---- independent readings of the value parsers ---- */

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int u64_oracle(const char *s, bool bytes, uint64_t *out)
{
	uint64_t v = 0;
	size_t i = 0;
	if (!is_digit(s[0]))
		return -EINVAL;
	for (; is_digit(s[i]); i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	unsigned shift = 0;
	if (bytes) {
		switch (s[i]) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		default: break;
		}
		if (shift) {
			i++;
			if (s[i] == 'i' || s[i] == 'I')
				i++;
			if (s[i] == 'b' || s[i] == 'B')
				i++;
		}
	}
	if (s[i] != '\0' || v > (UINT64_MAX >> shift))
		return -EINVAL;
	*out = v << shift;
	return 0;
}

static bool name_oracle(const char *s, size_t len)
{
	if (len < 1 || len > 200 || s[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
			  c == '.' || c == '_' || c == '-';
		if (!ok)
			return false;
	}
	return true;
}

static void check_host_port(const char *s)
{
	char host[256];
	uint16_t port = 0;
	if (parse_host_port(s, host, sizeof(host), &port) != 0)
		return;
	size_t hlen = strnlen(host, sizeof(host));
	CHECK(hlen >= 1 && hlen < sizeof(host));
	/* The host is the text before the port, brackets removed. */
	const char *colon = strrchr(s, ':');
	CHECK(colon != NULL);
	uint64_t p;
	CHECK(u64_oracle(colon + 1, false, &p) == 0 && p == port);
	if (s[0] == '[') {
		CHECK(hlen + 2 == (size_t)(colon - s) && s[hlen + 1] == ']');
		CHECK(memcmp(s + 1, host, hlen) == 0 && memchr(host, ']', hlen) == NULL);
	} else {
		CHECK(hlen == (size_t)(colon - s) && memcmp(s, host, hlen) == 0);
	}
	/* A buffer of exactly the host's size is enough, one byte less is not;
	 * on the heap so that a write past either trips ASan. */
	char *exact = malloc(hlen + 1);
	CHECK(exact != NULL);
	uint16_t port2;
	CHECK(parse_host_port(s, exact, hlen + 1, &port2) == 0 && port2 == port);
	CHECK(memcmp(exact, host, hlen + 1) == 0);
	CHECK(parse_host_port(s, exact, hlen, &port2) == -EINVAL);
	free(exact);
}

static void value_oracles(const char *v)
{
	for (int bytes = 0; bytes < 2; bytes++) {
		uint64_t got = 0, want = 0;
		int ret = parse_u64(v, bytes, &got);
		CHECK(ret == 0 || ret == -EINVAL);
		CHECK(ret == u64_oracle(v, bytes, &want));
		CHECK(ret != 0 || got == want);
	}
	size_t len = strlen(v);
	CHECK(topic_name_valid(v, len) == name_oracle(v, len));
	check_host_port(v);
}

/* ---- passes ---- */

static char *dup_n(const void *p, size_t n)
{
	char *s = malloc(n + 1);
	CHECK(s != NULL);
	if (n)
		memcpy(s, p, n);
	s[n] = '\0';
	return s;
}

static void check_reason(int ret, const char *why)
{
	CHECK(ret == 0 || ret == -EINVAL);
	if (ret != 0)
		CHECK(why[0] != '\0');
}

/* Parses text over a default config; also with a short reason buffer,
 * which must give the same verdict and a prefix of the same reason. */
static int parse(struct broker_config *cfg, const char *text, size_t len, int *line, char *why)
{
	struct broker_config copy = *cfg;
	why[0] = '\0';
	int ret = broker_config_parse(cfg, text, len, line, why, WHY_CAP);
	check_reason(ret, why);

	char *s = malloc(WHY_SHORT);
	CHECK(s != NULL);
	int line2 = -1;
	CHECK(broker_config_parse(&copy, text, len, &line2, s, WHY_SHORT) == ret);
	CHECK(line2 == *line);
	if (ret != 0)
		CHECK(strncmp(s, why, WHY_SHORT - 1) == 0 && strlen(s) < WHY_SHORT);
	free(s);
	return ret;
}

/* Where each line starts; a file has as many lines as the parser counts. */
static size_t line_starts(const char *text, size_t len, size_t *starts, size_t max)
{
	size_t n = 0;
	for (size_t pos = 0; pos < len;) {
		if (n < max)
			starts[n] = pos;
		n++;
		const char *nl = memchr(text + pos, '\n', len - pos);
		pos = nl ? (size_t)(nl - text) + 1 : len;
	}
	return n;
}

/* The values on the first lines, split the way the docs describe. */
static void file_value_oracles(const char *text, size_t len, const size_t *starts, size_t n)
{
	for (size_t i = 0; i < n && i < ORACLE_LINES; i++) {
		const char *p = text + starts[i];
		const char *nl = memchr(p, '\n', len - starts[i]);
		size_t l = nl ? (size_t)(nl - p) : len - starts[i];
		const char *eq = memchr(p, '=', l);
		if (eq == NULL || memchr(p, '\0', l) != NULL)
			continue;
		const char *v = eq + 1, *e = p + l;
		const char *hash = memchr(v, '#', (size_t)(e - v));
		if (hash)
			e = hash;
		while (v < e && (*v == ' ' || *v == '\t'))
			v++;
		while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
			e--;
		char *s = dup_n(v, (size_t)(e - v));
		value_oracles(s);
		free(s);
	}
}

/* One input in LOAD_EVERY, picked by its bytes so that a failure there
 * replays: the loader's 1 MiB buffer costs ASan more than the rest of the
 * target together. */
static bool sampled(const char *text, size_t len)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (uint8_t)text[i]) * 16777619u;
	return h % LOAD_EVERY == 0;
}

/* The same text read from a file, as ringmqd --config does: the verdict of
 * the parse, with the reason prefixed by the file and the line. */
static void load_pass(const char *text, size_t len, int ret, int line, const char *why)
{
	int fd = memfd_create("fuzz_config", MFD_CLOEXEC);
	CHECK(fd >= 0);
	CHECK(len == 0 || write(fd, text, len) == (ssize_t)len);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	struct broker_config cfg;
	broker_config_default(&cfg);
	char lwhy[WHY_CAP];
	lwhy[0] = '\0';
	int lret = broker_config_load(&cfg, path, lwhy, sizeof(lwhy));
	close(fd);
	CHECK(lret == ret);
	if (ret != 0) {
		char want[WHY_CAP + 96];
		snprintf(want, sizeof(want), "%s:%d: %s", path, line, why);
		/* The file name in front can push a long reason's end out. */
		CHECK(strncmp(lwhy, want, strlen(lwhy)) == 0 && lwhy[0] != '\0');
	}
}

static void file_pass(const char *text, size_t len)
{
	struct broker_config cfg;
	broker_config_default(&cfg);
	check_broker(&cfg);
	check_cross(&cfg);

	size_t starts_cap = 4096;
	size_t *starts = malloc(starts_cap * sizeof(*starts));
	CHECK(starts != NULL);
	size_t nlines = line_starts(text, len, starts, starts_cap);
	file_value_oracles(text, len, starts, nlines);

	char why[WHY_CAP];
	int line = -1;
	int ret = parse(&cfg, text, len, &line, why);
	if (sampled(text, len))
		load_pass(text, len, ret, line, why);
	if (ret != 0) {
		CHECK(line >= 1 && (size_t)line <= nlines);
		CHECK(strchr(why, '\n') == NULL);
		/* Everything before the line it names is accepted, and that
		 * line alone, on top of it, fails the same way. */
		if ((size_t)line <= starts_cap) {
			size_t at = starts[line - 1];
			struct broker_config before;
			broker_config_default(&before);
			int l2 = -1;
			char why2[WHY_CAP];
			CHECK(parse(&before, text, at, &l2, why2) == 0 && l2 == line - 1);
			CHECK(parse(&before, text + at, len - at, &l2, why2) == ret && l2 == 1);
			CHECK(strcmp(why, why2) == 0);
		}
		free(starts);
		return;
	}
	CHECK((size_t)line == nlines);
	check_broker(&cfg);
	check_cross(&cfg);

	/* A file applied twice is the same as once. */
	struct broker_config again = cfg;
	CHECK(parse(&again, text, len, &line, why) == 0);
	CHECK(memcmp(&again, &cfg, sizeof(cfg)) == 0);

	/* Split anywhere between lines, the halves give the same result. */
	if (nlines >= 2 && nlines <= starts_cap) {
		size_t at = starts[nlines / 2];
		struct broker_config halves;
		broker_config_default(&halves);
		CHECK(parse(&halves, text, at, &line, why) == 0);
		CHECK(parse(&halves, text + at, len - at, &line, why) == 0);
		same_settings(&halves, &cfg);
	}

	/* Written out and read back: the same settings. */
	size_t olen;
	char *out = serialize(&cfg, &olen);
	struct broker_config back;
	broker_config_default(&back);
	if (parse(&back, out, olen, &line, why) != 0)
		abort(); /* what it accepted, it must read back */
	same_settings(&back, &cfg);
	free(out);
	free(starts);
}

/* One key and value, as a flag or a create/alter request gives them. */
static void setter_pass(const char *key, const char *value)
{
	struct broker_config cfg, before;
	broker_config_default(&cfg);
	before = cfg;
	char why[WHY_CAP];
	why[0] = '\0';
	int ret = broker_config_set(&cfg, key, value, why, sizeof(why));
	check_reason(ret, why);
	value_oracles(value);
	if (ret != 0) {
		CHECK(memcmp(&cfg, &before, sizeof(cfg)) == 0);
	} else {
		check_broker(&cfg);
		check_cross(&cfg);
		struct broker_config again = cfg;
		CHECK(broker_config_set(&again, key, value, why, sizeof(why)) == 0);
		CHECK(memcmp(&again, &cfg, sizeof(cfg)) == 0);
	}
	char *s = malloc(WHY_SHORT);
	CHECK(s != NULL);
	struct broker_config other = before;
	CHECK(broker_config_set(&other, key, value, s, WHY_SHORT) == ret);
	if (ret != 0)
		CHECK(strncmp(s, why, WHY_SHORT - 1) == 0);
	free(s);

	/* A topic key straight, and as the broker's default for new topics. */
	struct topic_config tc = before.topic_defaults;
	char twhy[WHY_CAP];
	twhy[0] = '\0';
	int tret = topic_config_set(&tc, key, value, twhy, sizeof(twhy));
	check_reason(tret, twhy);
	if (tret != 0) {
		CHECK(memcmp(&tc, &before.topic_defaults, sizeof(tc)) == 0);
	} else {
		check_topic(&tc, before.topic_defaults.partitions);
		bool listed = false;
		for (size_t i = 0; topic_config_keys[i] != NULL; i++)
			listed |= strcmp(key, topic_config_keys[i]) == 0;
		CHECK(listed);
	}
	size_t klen = strlen(key);
	char *dkey = malloc(klen + 9);
	CHECK(dkey != NULL);
	memcpy(dkey, "default.", 8);
	memcpy(dkey + 8, key, klen + 1);
	struct broker_config dcfg = before;
	int dret = broker_config_set(&dcfg, dkey, value, why, sizeof(why));
	if (strcmp(key, "partitions") != 0) {
		CHECK(dret == tret);
		CHECK(memcmp(&dcfg.topic_defaults, tret == 0 ? &tc : &before.topic_defaults,
			     sizeof(tc)) == 0);
	}
	free(dkey);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	file_pass(text, size);

	const char *nul = memchr(text, '\0', size);
	if (nul == NULL)
		return 0;
	size_t klen = (size_t)(nul - text);
	const char *v = nul + 1;
	size_t vmax = size - klen - 1;
	const char *vend = memchr(v, '\0', vmax);
	size_t vlen = vend ? (size_t)(vend - v) : vmax;
	/* Exact-size copies, so that reading past either trips ASan. */
	char *key = dup_n(text, klen);
	char *value = dup_n(v, vlen);
	setter_pass(key, value);
	free(key);
	free(value);
	return 0;
}
