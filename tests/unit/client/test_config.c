/* test_config.c — libringmq configuration: every key parsed and range-checked,
 * bootstrap lists, the RINGMQ_BROKERS default, and ringmq_strerror. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/internal.h"
#include "client/ringmq.h"

/* The parsed values are read through internal.h: the public API has no
 * getters, and "parsed" means the number landed in the right field. */
struct int_key {
	const char *key;
	size_t off, size;
	long long lo, hi;
};

#define IK(k, f, lo, hi) { k, offsetof(struct ringmq_config, f), \
			   sizeof(((struct ringmq_config *)0)->f), lo, hi }

static const struct int_key int_keys[] = {
	IK("request.timeout.ms", request_timeout_ms, 1, 3600000),
	IK("reconnect.backoff.ms", backoff_ms, 1, 600000),
	IK("reconnect.backoff.max.ms", backoff_max_ms, 1, 600000),
	IK("linger.ms", linger_ms, 0, 600000),
	IK("batch.size", batch_size, 128, 16 << 20),
	IK("buffer.memory", buffer_memory, 1 << 16, 1ll << 40),
	IK("max.block.ms", max_block_ms, 0, 3600000),
	IK("max.in.flight", max_in_flight, 1, 64),
	IK("delivery.timeout.ms", delivery_timeout_ms, 1, 3600000),
	IK("message.max.bytes", message_max_bytes, 128, 16 << 20),
	IK("fetch.max.bytes", fetch_max_bytes, 1024, 64 << 20),
	IK("fetch.partition.max.bytes", fetch_partition_max_bytes, 1024, 64 << 20),
	IK("fetch.max.wait.ms", fetch_max_wait_ms, 0, 3600000),
	IK("fetch.min.bytes", fetch_min_bytes, 0, 64 << 20),
	IK("session.timeout.ms", session_timeout_ms, 1000, 300000),
	IK("auto.commit.interval.ms", auto_commit_interval_ms, 1, 3600000),
};

static long long field(const struct ringmq_config *cfg, const struct int_key *k)
{
	const char *p = (const char *)cfg + k->off;
	if (k->size == 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		return (long long)v;
	}
	uint32_t v; /* int and uint32_t fields: every valid value is >= 0 */
	memcpy(&v, p, 4);
	return (long long)v;
}

static int set(struct ringmq_config *cfg, const char *key, const char *value, char *err,
	       size_t errlen)
{
	err[0] = '\0';
	return ringmq_config_set(cfg, key, value, err, errlen);
}

static void test_int_keys(void **state)
{
	(void)state;
	struct ringmq_config *cfg = ringmq_config_new();
	assert_non_null(cfg);
	char err[256], v[64];
	for (size_t i = 0; i < sizeof(int_keys) / sizeof(int_keys[0]); i++) {
		const struct int_key *k = &int_keys[i];
		/* Both bounds are accepted and stored. */
		snprintf(v, sizeof(v), "%lld", k->lo);
		assert_int_equal(set(cfg, k->key, v, err, sizeof(err)), 0);
		assert_true(field(cfg, k) == k->lo);
		snprintf(v, sizeof(v), "%lld", k->hi);
		assert_int_equal(set(cfg, k->key, v, err, sizeof(err)), 0);
		assert_true(field(cfg, k) == k->hi);
		long long mid = k->lo + (k->hi - k->lo) / 3;
		snprintf(v, sizeof(v), "%lld", mid);
		assert_int_equal(set(cfg, k->key, v, err, sizeof(err)), 0);
		assert_true(field(cfg, k) == mid);

		/* Out of range or not a number: rejected, the key named, the
		 * old value kept. */
		const char *bad[] = { "", "abc", "12abc", "1.5", "0x10", "-",
				      "99999999999999999999", NULL, NULL };
		char below[64], above[64];
		snprintf(below, sizeof(below), "%lld", k->lo - 1);
		snprintf(above, sizeof(above), "%lld", k->hi + 1);
		bad[7] = below;
		bad[8] = above;
		for (size_t b = 0; b < sizeof(bad) / sizeof(bad[0]); b++) {
			assert_int_equal(set(cfg, k->key, bad[b], err, sizeof(err)),
					 RINGMQ_ERR_INVALID_ARG);
			assert_non_null(strstr(err, k->key));
			assert_true(field(cfg, k) == mid);
		}
	}
	ringmq_config_free(cfg);
}

static void test_bool_keys(void **state)
{
	(void)state;
	struct ringmq_config *cfg = ringmq_config_new();
	char err[256];
	static const char *const keys[] = { "block.on.buffer.full", "enable.idempotence",
					    "check.crcs", "enable.auto.commit" };
	bool *const fields[] = { &cfg->block_on_full, &cfg->idempotence, &cfg->check_crcs,
				 &cfg->auto_commit };
	for (size_t i = 0; i < 4; i++) {
		bool *fp = fields[i];
		static const char *const yes[] = { "true", "1", "yes" };
		static const char *const no[] = { "false", "0", "no" };
		for (size_t k = 0; k < 3; k++) {
			assert_int_equal(set(cfg, keys[i], no[k], err, sizeof(err)), 0);
			assert_false(*fp);
			assert_int_equal(set(cfg, keys[i], yes[k], err, sizeof(err)), 0);
			assert_true(*fp);
		}
		static const char *const bad[] = { "", "maybe", "2", "truee", "on" };
		for (size_t k = 0; k < 5; k++) {
			assert_int_equal(set(cfg, keys[i], bad[k], err, sizeof(err)),
					 RINGMQ_ERR_INVALID_ARG);
			assert_non_null(strstr(err, keys[i]));
			assert_true(*fp);
		}
	}
	ringmq_config_free(cfg);
}

static void test_enum_keys(void **state)
{
	(void)state;
	struct ringmq_config *cfg = ringmq_config_new();
	char err[256];
	assert_int_equal(set(cfg, "acks", "0", err, sizeof(err)), 0);
	assert_int_equal(cfg->acks, PROTO_ACKS_NONE);
	assert_int_equal(set(cfg, "acks", "1", err, sizeof(err)), 0);
	assert_int_equal(cfg->acks, PROTO_ACKS_LEADER);
	assert_int_equal(set(cfg, "acks", "all", err, sizeof(err)), 0);
	assert_int_equal(cfg->acks, PROTO_ACKS_ALL);
	assert_int_equal(set(cfg, "acks", "1", err, sizeof(err)), 0);
	assert_int_equal(set(cfg, "acks", "-1", err, sizeof(err)), 0);
	assert_int_equal(cfg->acks, PROTO_ACKS_ALL);
	static const char *const bad_acks[] = { "", "2", "ALL", "-2", "one" };
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(set(cfg, "acks", bad_acks[i], err, sizeof(err)),
				 RINGMQ_ERR_INVALID_ARG);
		assert_non_null(strstr(err, "acks"));
		assert_int_equal(cfg->acks, PROTO_ACKS_ALL);
	}

	assert_int_equal(set(cfg, "compression", "lz4", err, sizeof(err)), 0);
	assert_true(cfg->lz4);
	assert_int_equal(set(cfg, "compression", "none", err, sizeof(err)), 0);
	assert_false(cfg->lz4);
	static const char *const bad_comp[] = { "", "gzip", "LZ4", "zstd" };
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(set(cfg, "compression", bad_comp[i], err, sizeof(err)),
				 RINGMQ_ERR_INVALID_ARG);
		assert_non_null(strstr(err, "compression"));
		assert_false(cfg->lz4);
	}

	assert_int_equal(set(cfg, "auto.offset.reset", "latest", err, sizeof(err)), 0);
	assert_true(cfg->offset_reset_latest);
	assert_int_equal(set(cfg, "auto.offset.reset", "earliest", err, sizeof(err)), 0);
	assert_false(cfg->offset_reset_latest);
	static const char *const bad_reset[] = { "", "none", "Latest", "beginning" };
	for (size_t i = 0; i < 4; i++) {
		assert_int_equal(set(cfg, "auto.offset.reset", bad_reset[i], err, sizeof(err)),
				 RINGMQ_ERR_INVALID_ARG);
		assert_non_null(strstr(err, "auto.offset.reset"));
		assert_false(cfg->offset_reset_latest);
	}

	/* client.id: up to 127 bytes. */
	char id[200];
	memset(id, 'x', sizeof(id));
	id[127] = '\0';
	assert_int_equal(set(cfg, "client.id", id, err, sizeof(err)), 0);
	assert_string_equal(cfg->client_id, id);
	id[127] = 'x';
	id[128] = '\0';
	assert_int_equal(set(cfg, "client.id", id, err, sizeof(err)), RINGMQ_ERR_INVALID_ARG);
	assert_non_null(strstr(err, "client.id"));
	assert_int_equal(set(cfg, "client.id", "orders-service", err, sizeof(err)), 0);
	assert_string_equal(cfg->client_id, "orders-service");
	ringmq_config_free(cfg);
}

static void test_unknown_keys(void **state)
{
	(void)state;
	struct ringmq_config *cfg = ringmq_config_new();
	char err[256];
	static const char *const unknown[] = { "no.such.key", "", "Acks", "acks ", "linger",
					       "batch.size.bytes", "bootstrap.server" };
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		assert_int_equal(set(cfg, unknown[i], "1", err, sizeof(err)),
				 RINGMQ_ERR_UNKNOWN_CONFIG);
		char quoted[64];
		snprintf(quoted, sizeof(quoted), "'%s'", unknown[i]);
		assert_non_null(strstr(err, quoted));
	}
	/* NULL arguments and a NULL or tiny errstr are safe. */
	assert_int_equal(ringmq_config_set(cfg, NULL, "1", err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_config_set(cfg, "acks", NULL, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_config_set(NULL, "acks", "1", err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_config_set(cfg, "no.such.key", "1", NULL, 0),
			 RINGMQ_ERR_UNKNOWN_CONFIG);
	assert_int_equal(ringmq_config_set(cfg, "linger.ms", "x", NULL, 0),
			 RINGMQ_ERR_INVALID_ARG);
	char tiny[8];
	memset(tiny, '#', sizeof(tiny));
	assert_int_equal(ringmq_config_set(cfg, "no.such.key", "1", tiny, 4),
			 RINGMQ_ERR_UNKNOWN_CONFIG);
	assert_int_equal(tiny[3], '\0');
	assert_int_equal(tiny[4], '#');
	ringmq_config_free(cfg);
}

/* The defaults docs/client.md documents. */
static void test_defaults(void **state)
{
	(void)state;
	unsetenv("RINGMQ_BROKERS");
	struct ringmq_config *cfg = ringmq_config_new();
	assert_int_equal(cfg->nservers, 1);
	assert_string_equal(cfg->servers[0], "127.0.0.1:9400");
	assert_string_equal(cfg->client_id, "libringmq");
	assert_int_equal(cfg->request_timeout_ms, 30000);
	assert_int_equal(cfg->backoff_ms, 100);
	assert_int_equal(cfg->backoff_max_ms, 10000);
	assert_int_equal(cfg->acks, PROTO_ACKS_ALL);
	assert_int_equal(cfg->linger_ms, 5);
	assert_int_equal(cfg->batch_size, 65536);
	assert_true(cfg->buffer_memory == 64ull << 20);
	assert_true(cfg->block_on_full);
	assert_int_equal(cfg->max_block_ms, 60000);
	assert_false(cfg->lz4);
	assert_true(cfg->idempotence);
	assert_int_equal(cfg->max_in_flight, 5);
	assert_int_equal(cfg->delivery_timeout_ms, 120000);
	assert_int_equal(cfg->message_max_bytes, 1u << 20);
	assert_int_equal(cfg->fetch_max_bytes, 8u << 20);
	assert_int_equal(cfg->fetch_partition_max_bytes, 1u << 20);
	assert_int_equal(cfg->fetch_max_wait_ms, 500);
	assert_int_equal(cfg->fetch_min_bytes, 1);
	assert_true(cfg->check_crcs);
	assert_int_equal(cfg->session_timeout_ms, 10000);
	assert_true(cfg->auto_commit);
	assert_int_equal(cfg->auto_commit_interval_ms, 5000);
	assert_false(cfg->offset_reset_latest);
	assert_null(cfg->delivery_cb);

	/* dup copies; the copy is independent. */
	char err[256];
	struct ringmq_config *d = ringmq_config_dup(cfg);
	assert_int_equal(set(d, "linger.ms", "77", err, sizeof(err)), 0);
	assert_int_equal(d->linger_ms, 77);
	assert_int_equal(cfg->linger_ms, 5);
	ringmq_config_free(d);
	ringmq_config_free(cfg);
	ringmq_config_free(NULL);
}

static void test_bootstrap_lists(void **state)
{
	(void)state;
	unsetenv("RINGMQ_BROKERS");
	struct ringmq_config *cfg = ringmq_config_new();
	char err[256];
	assert_int_equal(set(cfg, "bootstrap.servers", "a.example:9400", err, sizeof(err)), 0);
	assert_int_equal(cfg->nservers, 1);
	assert_string_equal(cfg->servers[0], "a.example:9400");

	assert_int_equal(set(cfg, "bootstrap.servers", " a:1 ,b:2,\t[::1]:65535 ,10.0.0.1:9400",
			     err, sizeof(err)),
			 0);
	assert_int_equal(cfg->nservers, 4);
	assert_string_equal(cfg->servers[0], "a:1");
	assert_string_equal(cfg->servers[1], "b:2");
	assert_string_equal(cfg->servers[2], "[::1]:65535");
	assert_string_equal(cfg->servers[3], "10.0.0.1:9400");

	/* Sixteen servers fit; seventeen do not. */
	char list[1024] = "";
	for (int i = 0; i < 17; i++) {
		char one[32];
		snprintf(one, sizeof(one), "%sh%d:%d", i ? "," : "", i, 1000 + i);
		strcat(list, one);
		int ret = set(cfg, "bootstrap.servers", list, err, sizeof(err));
		if (i < 16) {
			assert_int_equal(ret, 0);
			assert_int_equal(cfg->nservers, (unsigned)i + 1);
		} else {
			assert_int_equal(ret, RINGMQ_ERR_INVALID_ARG);
			assert_int_equal(cfg->nservers, 16);
		}
	}
	assert_string_equal(cfg->servers[15], "h15:1015");

	assert_int_equal(set(cfg, "bootstrap.servers", "x:1,y:2", err, sizeof(err)), 0);
	char longhost[400];
	memset(longhost, 'h', 300);
	strcpy(longhost + 300, ":9400");
	const char *bad[] = { "", " ", ",", "host", "host:", ":9400", "host:0", "host:65536",
			      "host:-1", "host:http", "host:94 00", "a:1,,b:2", "a:1, ,b:2", ",a:1",
			      longhost };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(set(cfg, "bootstrap.servers", bad[i], err, sizeof(err)),
				 RINGMQ_ERR_INVALID_ARG);
		assert_non_null(strstr(err, "bootstrap.servers"));
		/* A bad list leaves the old one in place. */
		assert_int_equal(cfg->nservers, 2);
		assert_string_equal(cfg->servers[0], "x:1");
		assert_string_equal(cfg->servers[1], "y:2");
	}
	ringmq_config_free(cfg);
}

static void test_env_default(void **state)
{
	(void)state;
	setenv("RINGMQ_BROKERS", "10.1.1.1:7000, 10.1.1.2:7001", 1);
	struct ringmq_config *cfg = ringmq_config_new();
	assert_int_equal(cfg->nservers, 2);
	assert_string_equal(cfg->servers[0], "10.1.1.1:7000");
	assert_string_equal(cfg->servers[1], "10.1.1.2:7001");
	/* An explicit setting wins over the environment. */
	char err[256];
	assert_int_equal(set(cfg, "bootstrap.servers", "h:1", err, sizeof(err)), 0);
	assert_int_equal(cfg->nservers, 1);
	ringmq_config_free(cfg);

	/* An unusable variable falls back to the built-in default. */
	const char *bad[] = { "", "nonsense", "h:0", "a:1,,b:2" };
	for (size_t i = 0; i < 4; i++) {
		setenv("RINGMQ_BROKERS", bad[i], 1);
		cfg = ringmq_config_new();
		assert_int_equal(cfg->nservers, 1);
		assert_string_equal(cfg->servers[0], "127.0.0.1:9400");
		ringmq_config_free(cfg);
	}
	unsetenv("RINGMQ_BROKERS");
	cfg = ringmq_config_new();
	assert_string_equal(cfg->servers[0], "127.0.0.1:9400");
	ringmq_config_free(cfg);
}

static void test_strerror(void **state)
{
	(void)state;
	/* The broker's codes keep the protocol's numbers. */
	assert_int_equal(RINGMQ_ERR_BROKER_UNKNOWN, ERR_UNKNOWN);
	assert_int_equal(RINGMQ_ERR_INVALID_REQUEST, ERR_INVALID_REQUEST);
	assert_int_equal(RINGMQ_ERR_UNSUPPORTED_API, ERR_UNSUPPORTED_API);
	assert_int_equal(RINGMQ_ERR_UNSUPPORTED_VERSION, ERR_UNSUPPORTED_VERSION);
	assert_int_equal(RINGMQ_ERR_CORRUPT_BATCH, ERR_CORRUPT_BATCH);
	assert_int_equal(RINGMQ_ERR_BATCH_TOO_LARGE, ERR_BATCH_TOO_LARGE);
	assert_int_equal(RINGMQ_ERR_INVALID_TOPIC_NAME, ERR_INVALID_TOPIC_NAME);
	assert_int_equal(RINGMQ_ERR_UNKNOWN_TOPIC, ERR_UNKNOWN_TOPIC);
	assert_int_equal(RINGMQ_ERR_UNKNOWN_PARTITION, ERR_UNKNOWN_PARTITION);
	assert_int_equal(RINGMQ_ERR_TOPIC_EXISTS, ERR_TOPIC_EXISTS);
	assert_int_equal(RINGMQ_ERR_INVALID_CONFIG, ERR_INVALID_CONFIG);
	assert_int_equal(RINGMQ_ERR_INVALID_PARTITIONS, ERR_INVALID_PARTITIONS);
	assert_int_equal(RINGMQ_ERR_OFFSET_OUT_OF_RANGE, ERR_OFFSET_OUT_OF_RANGE);
	assert_int_equal(RINGMQ_ERR_LIMIT_EXCEEDED, ERR_LIMIT_EXCEEDED);
	assert_int_equal(RINGMQ_ERR_STORAGE, ERR_STORAGE);
	assert_int_equal(RINGMQ_ERR_DISK_FULL, ERR_DISK_FULL);
	assert_int_equal(RINGMQ_ERR_BROKER_TIMEOUT, ERR_TIMEOUT);
	assert_int_equal(RINGMQ_ERR_SHUTTING_DOWN, ERR_SHUTTING_DOWN);
	assert_int_equal(RINGMQ_ERR_BUSY, ERR_BUSY);
	assert_int_equal(RINGMQ_ERR_INVALID_ACKS, ERR_INVALID_ACKS);
	assert_int_equal(RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE, ERR_OUT_OF_ORDER_SEQUENCE);
	for (uint16_t e = 1; e < ERR_COUNT; e++)
		assert_int_equal(rc_err_from_broker(e), e);
	assert_int_equal(rc_err_from_broker(ERR_COUNT), RINGMQ_ERR_PROTOCOL);
	assert_int_equal(rc_err_from_broker(999), RINGMQ_ERR_PROTOCOL);

	/* Every code has its own message; anything else is "unknown error". */
	int codes[128];
	size_t n = 0;
	for (int e = 0; e < ERR_COUNT; e++)
		codes[n++] = e;
	for (int e = RINGMQ_ERR_TIMEOUT; e <= RINGMQ_ERR_UNKNOWN_CONFIG; e++)
		codes[n++] = e;
	for (size_t i = 0; i < n; i++) {
		const char *s = ringmq_strerror(codes[i]);
		assert_non_null(s);
		if (strlen(s) <= 3 || strcmp(s, "unknown error") == 0)
			fail_msg("code %d has no message of its own: '%s'", codes[i], s);
		for (size_t k = 0; k < i; k++)
			if (strcmp(s, ringmq_strerror(codes[k])) == 0)
				fail_msg("codes %d and %d share '%s'", codes[k], codes[i], s);
	}
	assert_string_equal(ringmq_strerror(RINGMQ_OK), "success");
	const int others[] = { -1, ERR_COUNT, 99, 199, 1000, -100 };
	for (size_t i = 0; i < 6; i++)
		assert_string_equal(ringmq_strerror(others[i]), "unknown error");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_int_keys),
		cmocka_unit_test(test_bool_keys),
		cmocka_unit_test(test_enum_keys),
		cmocka_unit_test(test_unknown_keys),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_bootstrap_lists),
		cmocka_unit_test(test_env_default),
		cmocka_unit_test(test_strerror),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
