/* test_broker.c — a real ringmqd driven over the protocol: topics, produce
 * with every acks, fetch and long poll, restart and kill -9. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "storage/batch.h"
#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

struct fx {
	struct tbroker b;
	struct tclient c;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tb_start(&f->b, NULL, NULL), 0);
	assert_int_equal(tc_connect(&f->c, f->b.addr), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	tc_close(&f->c);
	if (f->b.pid > 0)
		assert_int_equal(tb_stop(&f->b), 0);
	tb_cleanup(&f->b);
	free(f);
	return 0;
}

/* Checks that records (fetched bytes) hold batch b's records from `from`. */
static uint32_t count_records(const uint8_t *p, uint32_t len, uint64_t from)
{
	uint32_t n = 0;
	for (uint32_t off = 0; off < len;) {
		struct batch_hdr h;
		if (batch_verify(p + off, len - off, &h) != 0)
			break;
		for (uint32_t i = 0; i < h.record_count; i++)
			if (h.base_offset + i >= from)
				n++;
		off += h.length;
	}
	return n;
}

static void test_topic_admin(void **state)
{
	struct fx *f = *state;
	assert_int_equal(tc_create_topic(&f->c, "orders", 3, NULL), ERR_NONE);
	assert_int_equal(tc_create_topic(&f->c, "orders", 3, NULL), ERR_TOPIC_EXISTS);
	assert_int_equal(tc_create_topic(&f->c, "bad/name", 1, NULL), ERR_INVALID_TOPIC_NAME);
	const char *bad[] = { "flush", "sometimes", NULL };
	assert_int_equal(tc_create_topic(&f->c, "x", 1, bad), ERR_INVALID_CONFIG);
	const char *good[] = { "flush", "never", "retention.ms", "60000", NULL };
	assert_int_equal(tc_create_topic(&f->c, "events", 2, good), ERR_NONE);

	struct proto_resp_hdr h;
	union proto_response resp;
	assert_int_equal(tc_call(&f->c, API_LIST_TOPICS, NULL, 5000, &h, &resp), 0);
	assert_int_equal(h.err, 0);
	assert_int_equal(resp.list_topics.ntopics, 2);

	union proto_request d = { .describe_topic = { pstr_c("events") } };
	assert_int_equal(tc_call(&f->c, API_DESCRIBE_TOPIC, &d, 5000, &h, &resp), 0);
	assert_int_equal(h.err, 0);
	assert_int_equal(resp.describe_topic.partitions, 2);
	bool saw = false;
	for (uint32_t i = 0; i < resp.describe_topic.nconfigs; i++)
		if (pstr_eq(resp.describe_topic.configs[i].key, "flush"))
			saw = pstr_eq(resp.describe_topic.configs[i].value, "never");
	assert_true(saw);

	struct proto_kv kv = { pstr_c("retention.bytes"), pstr_c("1M") };
	union proto_request a = { .alter_topic = { pstr_c("events"), 4, 1, &kv } };
	assert_int_equal(tc_call(&f->c, API_ALTER_TOPIC, &a, 5000, &h, NULL), 0);
	assert_int_equal(h.err, 0);
	a.alter_topic.partitions = 2;
	assert_int_equal(tc_call(&f->c, API_ALTER_TOPIC, &a, 5000, &h, NULL), 0);
	assert_int_equal(h.err, ERR_INVALID_PARTITIONS);

	union proto_request del = { .delete_topic = { pstr_c("events") } };
	assert_int_equal(tc_call(&f->c, API_DELETE_TOPIC, &del, 5000, &h, NULL), 0);
	assert_int_equal(h.err, 0);
	assert_int_equal(tc_call(&f->c, API_DELETE_TOPIC, &del, 5000, &h, NULL), 0);
	assert_int_equal(h.err, ERR_UNKNOWN_TOPIC);

	/* Settings and partitions survive a restart. */
	assert_int_equal(tb_stop(&f->b), 0);
	tc_close(&f->c);
	assert_int_equal(tb_start(&f->b, f->b.dir, NULL), 0);
	assert_int_equal(tc_connect(&f->c, f->b.addr), 0);
	d.describe_topic.name = pstr_c("orders");
	assert_int_equal(tc_call(&f->c, API_DESCRIBE_TOPIC, &d, 5000, &h, &resp), 0);
	assert_int_equal(h.err, 0);
	assert_int_equal(resp.describe_topic.partitions, 3);
	d.describe_topic.name = pstr_c("events");
	assert_int_equal(tc_call(&f->c, API_DESCRIBE_TOPIC, &d, 5000, &h, &resp), 0);
	assert_int_equal(h.err, ERR_UNKNOWN_TOPIC);
}

static void test_produce_fetch(void **state)
{
	struct fx *f = *state;
	assert_int_equal(tc_create_topic(&f->c, "t", 2, NULL), ERR_NONE);
	uint32_t len;
	uint8_t *b = tu_batch(10, 100, 1, 1000, false, &len);
	uint64_t base;
	assert_int_equal(tc_produce(&f->c, "t", 0, PROTO_ACKS_ALL, b, len, &base), 0);
	assert_int_equal(base, 0);
	assert_int_equal(tc_produce(&f->c, "t", 0, PROTO_ACKS_LEADER, b, len, &base), 0);
	assert_int_equal(base, 10);
	assert_int_equal(tc_produce(&f->c, "t", 5, PROTO_ACKS_ALL, b, len, &base),
			 ERR_UNKNOWN_PARTITION);
	assert_int_equal(tc_produce(&f->c, "nope", 0, PROTO_ACKS_ALL, b, len, &base),
			 ERR_UNKNOWN_TOPIC);
	/* A corrupt batch is refused and nothing of it is appended. */
	b[len - 1] ^= 1;
	assert_int_equal(tc_produce(&f->c, "t", 0, PROTO_ACKS_ALL, b, len, &base),
			 ERR_CORRUPT_BATCH);
	b[len - 1] ^= 1;
	assert_int_equal(tc_produce(&f->c, "t", 0, PROTO_ACKS_ALL, b, len, &base), 0);
	assert_int_equal(base, 20);

	uint8_t *recs;
	uint32_t rlen;
	uint64_t end;
	assert_int_equal(tc_fetch(&f->c, "t", 0, 0, 1 << 20, 0, 0, &recs, &rlen, &end), 0);
	assert_int_equal(end, 30);
	assert_int_equal(count_records(recs, rlen, 0), 30);
	free(recs);
	assert_int_equal(tc_fetch(&f->c, "t", 0, 15, 1 << 20, 0, 0, &recs, &rlen, &end), 0);
	assert_int_equal(count_records(recs, rlen, 15), 15);
	free(recs);
	assert_int_equal(tc_fetch(&f->c, "t", 0, 31, 1 << 20, 0, 0, &recs, &rlen, &end),
			 ERR_OFFSET_OUT_OF_RANGE);
	free(b);
}

/* acks=1 on a flush-always topic: the broker still fdatasyncs and the data
 * becomes readable without any acks=all produce. */
static void test_acks1_becomes_visible(void **state)
{
	struct fx *f = *state;
	assert_int_equal(tc_create_topic(&f->c, "vis", 1, NULL), ERR_NONE);
	uint32_t len;
	uint8_t *b = tu_batch(5, 10, 1, 1, false, &len);
	assert_int_equal(tc_produce(&f->c, "vis", 0, PROTO_ACKS_LEADER, b, len, NULL), 0);
	free(b);
	uint8_t *recs;
	uint32_t rlen;
	uint64_t end = 0;
	assert_int_equal(tc_fetch(&f->c, "vis", 0, 0, 1 << 20, 2000, 1, &recs, &rlen, &end), 0);
	assert_int_equal(end, 5);
	assert_int_equal(count_records(recs, rlen, 0), 5);
	free(recs);
}

static void test_long_poll_wakes(void **state)
{
	struct fx *f = *state;
	assert_int_equal(tc_create_topic(&f->c, "lp", 1, NULL), ERR_NONE);
	struct tclient p;
	assert_int_equal(tc_connect(&p, f->b.addr), 0);
	/* A fetch at the end waits; an append wakes it at once. */
	struct proto_fetch_part part = { 0, 0, 1 << 20 };
	struct proto_fetch_topic t = { pstr_c("lp"), 1, &part };
	union proto_request req = { .fetch = { .max_wait_ms = 10000, .min_bytes = 1,
					       .max_bytes = 1 << 20, .ntopics = 1, .topics = &t } };
	uint32_t corr;
	assert_int_equal(tc_send(&f->c, API_FETCH, &req, &corr), 0);
	struct proto_resp_hdr h;
	union proto_response resp;
	assert_int_equal(tc_recv(&f->c, API_FETCH, 200, &h, &resp), -ETIMEDOUT);
	uint32_t len;
	uint8_t *b = tu_batch(1, 10, 1, 1, false, &len);
	int64_t t0 = tu_mono_us();
	assert_int_equal(tc_produce(&p, "lp", 0, PROTO_ACKS_ALL, b, len, NULL), 0);
	assert_int_equal(tc_recv(&f->c, API_FETCH, 5000, &h, &resp), 0);
	int64_t waited = tu_mono_us() - t0;
	assert_int_equal(h.correlation_id, corr);
	assert_int_equal(count_records(resp.fetch.topics[0].parts[0].records.p,
				       resp.fetch.topics[0].parts[0].records.len, 0), 1);
	printf("# long poll answered %lld us after the produce started\n", (long long)waited);
	assert_true(waited < 2000000);
	/* With nothing new, it times out after max_wait with no records. */
	part.offset = 1;
	req.fetch.max_wait_ms = 300;
	t0 = tu_mono_us();
	assert_int_equal(tc_call(&f->c, API_FETCH, &req, 5000, &h, &resp), 0);
	assert_true(tu_mono_us() - t0 >= 290000);
	assert_int_equal(resp.fetch.topics[0].parts[0].records.len, 0);
	free(b);
	tc_close(&p);
}

static void test_pipelined(void **state)
{
	struct fx *f = *state;
	assert_int_equal(tc_create_topic(&f->c, "pipe", 1, NULL), ERR_NONE);
	uint32_t len;
	uint8_t *b = tu_batch(5, 50, 3, 1, false, &len);
	enum { N = 200 };
	uint32_t corr[N];
	struct proto_produce_part part = { 0, { b, len } };
	struct proto_produce_topic t = { pstr_c("pipe"), 1, &part };
	union proto_request req = { .produce = { PROTO_ACKS_ALL, 10000, 1, &t } };
	for (int i = 0; i < N; i++)
		assert_int_equal(tc_send(&f->c, API_PRODUCE, &req, &corr[i]), 0);
	bool seen[N] = { false };
	for (int i = 0; i < N; i++) {
		struct proto_resp_hdr h;
		union proto_response resp;
		assert_int_equal(tc_recv(&f->c, API_PRODUCE, 10000, &h, &resp), 0);
		assert_int_equal(h.err, 0);
		uint32_t k = h.correlation_id - corr[0];
		assert_true(k < N && !seen[k]);
		seen[k] = true;
		assert_int_equal(resp.produce.topics[0].parts[0].err, 0);
		assert_int_equal(resp.produce.topics[0].parts[0].base_offset, (uint64_t)k * 5);
	}
	free(b);
}

static void test_kill9_keeps_acked(void **state)
{
	struct fx *f = *state;
	assert_int_equal(tc_create_topic(&f->c, "durable", 1, NULL), ERR_NONE);
	uint32_t len;
	uint8_t *b = tu_batch(4, 64, 9, 1, true, &len);
	uint64_t acked = 0;
	for (int i = 0; i < 300; i++) {
		uint64_t base;
		assert_int_equal(tc_produce(&f->c, "durable", 0, PROTO_ACKS_ALL, b, len, &base), 0);
		acked = base + 4;
	}
	tb_kill9(&f->b);
	tc_close(&f->c);
	assert_int_equal(tb_start(&f->b, f->b.dir, NULL), 0);
	assert_int_equal(tc_connect(&f->c, f->b.addr), 0);
	uint8_t *recs;
	uint32_t rlen;
	uint64_t end = 0;
	/* Ready means whole: the first fetch sees everything acknowledged. */
	assert_int_equal(tc_fetch(&f->c, "durable", 0, 0, 1 << 24, 0, 0, &recs, &rlen, &end), 0);
	free(recs);
	assert_true(end >= acked);
	uint64_t seen = 0;
	for (uint64_t off = 0; off < acked;) {
		assert_int_equal(tc_fetch(&f->c, "durable", 0, off, 1 << 20, 0, 0, &recs, &rlen, NULL),
				 0);
		uint32_t n = count_records(recs, rlen, off);
		free(recs);
		assert_true(n > 0);
		seen += n;
		off += n;
	}
	assert_int_equal(seen, acked);
	free(b);
}

/* The end of a flush-always partition a client sees right after a restart
 * (clean, or kill -9 with a tail only in the page cache) is the end it had:
 * the start makes the tail durable before it says it is ready. With every
 * fdatasync through the ring delayed by 1 s, a start that left it to the
 * first one would show the partition ending at its last segment's base. */
static void test_restart_shows_whole_log(void **state)
{
	struct fx *f = *state;
	assert_int_equal(tc_create_topic(&f->c, "whole", 1, NULL), ERR_NONE);
	uint32_t len;
	uint8_t *b = tu_batch(4, 64, 9, 1, true, &len);
	for (int i = 0; i < 50; i++)
		assert_int_equal(tc_produce(&f->c, "whole", 0, PROTO_ACKS_ALL, b, len, NULL), 0);
	tc_close(&f->c);
	assert_int_equal(tb_stop(&f->b), 0);

	char conf[600];
	snprintf(conf, sizeof(conf), "%s/test.conf", f->b.dir);
	FILE *cf = fopen(conf, "w");
	assert_non_null(cf);
	fputs("test.fsync.delay.ms = 1000\n", cf);
	fclose(cf);
	const char *args[] = { "--config", conf, NULL };
	assert_int_equal(tb_start(&f->b, f->b.dir, args), 0);
	assert_int_equal(tc_connect(&f->c, f->b.addr), 0);
	uint8_t *recs;
	uint32_t rlen;
	uint64_t end = 0;
	assert_int_equal(tc_fetch(&f->c, "whole", 0, 0, 1 << 24, 0, 0, &recs, &rlen, &end), 0);
	free(recs);
	printf("# after a clean restart the partition ends at %" PRIu64 " (200 acknowledged)\n",
	       end);
	assert_int_equal(end, 200);

	/* acks=1: written, not yet durable (the fdatasync waits 1 s), so not
	 * visible; the kill -9 leaves them in the page cache. */
	for (int i = 0; i < 10; i++)
		assert_int_equal(tc_produce(&f->c, "whole", 0, PROTO_ACKS_LEADER, b, len, NULL), 0);
	tb_kill9(&f->b);
	tc_close(&f->c);
	assert_int_equal(tb_start(&f->b, f->b.dir, args), 0);
	assert_int_equal(tc_connect(&f->c, f->b.addr), 0);
	assert_int_equal(tc_fetch(&f->c, "whole", 0, 0, 1 << 24, 0, 0, &recs, &rlen, &end), 0);
	free(recs);
	printf("# after a kill -9 and restart it ends at %" PRIu64 " (240 written)\n", end);
	assert_int_equal(end, 240);
	free(b);
}

/* With every fdatasync delayed by 300 ms, acks=all replies wait for it and
 * acks=1 replies do not; a flush-always topic shows nothing to consumers
 * before it is durable. */
static void test_acks_all_waits_for_fdatasync(void **state)
{
	struct fx *f = *state;
	tc_close(&f->c);
	assert_int_equal(tb_stop(&f->b), 0);
	char conf[600];
	snprintf(conf, sizeof(conf), "%s/test.conf", f->b.dir);
	FILE *cf = fopen(conf, "w");
	fputs("test.fsync.delay.ms = 300\n", cf);
	fclose(cf);
	const char *args[] = { "--config", conf, NULL };
	assert_int_equal(tb_start(&f->b, f->b.dir, args), 0);
	assert_int_equal(tc_connect(&f->c, f->b.addr), 0);
	assert_int_equal(tc_create_topic(&f->c, "slow", 1, NULL), ERR_NONE);
	uint32_t len;
	uint8_t *b = tu_batch(2, 10, 1, 1, false, &len);

	int64_t t0 = tu_mono_us();
	assert_int_equal(tc_produce(&f->c, "slow", 0, PROTO_ACKS_LEADER, b, len, NULL), 0);
	int64_t acks1 = tu_mono_us() - t0;
	uint8_t *recs;
	uint32_t rlen;
	uint64_t end;
	assert_int_equal(tc_fetch(&f->c, "slow", 0, 0, 1 << 20, 0, 0, &recs, &rlen, &end), 0);
	assert_int_equal(end, 0); /* written, not durable: not visible */
	assert_int_equal(rlen, 0);
	free(recs);

	t0 = tu_mono_us();
	assert_int_equal(tc_produce(&f->c, "slow", 0, PROTO_ACKS_ALL, b, len, NULL), 0);
	int64_t acksall = tu_mono_us() - t0;
	printf("# acks=1 reply after %lld us, acks=all after %lld us (fdatasync delayed 300 ms)\n",
	       (long long)acks1, (long long)acksall);
	assert_true(acks1 < 250000);
	assert_true(acksall >= 290000);
	assert_int_equal(tc_fetch(&f->c, "slow", 0, 0, 1 << 20, 0, 0, &recs, &rlen, &end), 0);
	assert_int_equal(end, 4);
	assert_int_equal(count_records(recs, rlen, 0), 4);
	free(recs);
	free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_topic_admin, setup, teardown),
		cmocka_unit_test_setup_teardown(test_produce_fetch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_acks1_becomes_visible, setup, teardown),
		cmocka_unit_test_setup_teardown(test_long_poll_wakes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kill9_keeps_acked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_shows_whole_log, setup, teardown),
		cmocka_unit_test_setup_teardown(test_acks_all_waits_for_fdatasync, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
