/* test_client.c — libringmq against a real ringmqd: admin calls, a keyed
 * producer over several partitions, and a consumer reading it all back. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/ringmq.h"
#include "tests/unit/tbroker.h"

struct fx {
	struct tbroker b;
	struct ringmq_config *cfg;
	struct ringmq_admin *admin;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tb_start(&f->b, NULL, NULL), 0);
	f->cfg = ringmq_config_new();
	char err[256];
	assert_int_equal(ringmq_config_set(f->cfg, "bootstrap.servers", f->b.addr, err, sizeof(err)), 0);
	f->admin = ringmq_admin_new(f->cfg, err, sizeof(err));
	assert_non_null(f->admin);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	ringmq_admin_free(f->admin);
	ringmq_config_free(f->cfg);
	assert_int_equal(tb_stop(&f->b), 0);
	tb_cleanup(&f->b);
	free(f);
	return 0;
}

struct dstats {
	pthread_mutex_t mu;
	uint64_t ok, failed;
	int64_t *offsets; /* by message index */
	int32_t *parts;
};

static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	struct dstats *s = opaque;
	size_t i = (size_t)(uintptr_t)d->opaque;
	pthread_mutex_lock(&s->mu);
	if (d->err == 0) {
		s->ok++;
		s->offsets[i] = d->offset;
		s->parts[i] = d->partition;
	} else {
		s->failed++;
	}
	pthread_mutex_unlock(&s->mu);
}

static void round_trip(struct fx *f, const char *topic, bool lz4, size_t n)
{
	char err[256];
	assert_int_equal(ringmq_topic_create(f->admin, topic, 3, NULL, 0, err, sizeof(err)), 0);
	struct dstats s = { .mu = PTHREAD_MUTEX_INITIALIZER };
	s.offsets = calloc(n, sizeof(*s.offsets));
	s.parts = calloc(n, sizeof(*s.parts));
	struct ringmq_config *pc = ringmq_config_dup(f->cfg);
	ringmq_config_set_delivery_cb(pc, on_delivery, &s);
	if (lz4)
		assert_int_equal(ringmq_config_set(pc, "compression", "lz4", err, sizeof(err)), 0);
	struct ringmq_producer *p = ringmq_producer_new(pc, err, sizeof(err));
	assert_non_null(p);
	for (size_t i = 0; i < n; i++) {
		char key[32], val[64];
		int kl = snprintf(key, sizeof(key), "key-%zu", i % 97);
		int vl = snprintf(val, sizeof(val), "value %zu for key %zu", i, i % 97);
		struct ringmq_header h = { "seq", &i, sizeof(i) };
		assert_int_equal(ringmq_produce(p, topic, RINGMQ_PARTITION_ANY, key, (size_t)kl, val,
						(size_t)vl, &h, 1, 0, (void *)(uintptr_t)i),
				 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 30000), 0);
	assert_int_equal(s.ok, n);
	assert_int_equal(s.failed, 0);
	ringmq_producer_free(p);
	ringmq_config_free(pc);

	struct ringmq_consumer *c = ringmq_consumer_new(f->cfg, err, sizeof(err));
	assert_non_null(c);
	struct ringmq_topic_partition tps[3];
	for (int i = 0; i < 3; i++)
		tps[i] = (struct ringmq_topic_partition){ topic, i, RINGMQ_OFFSET_BEGINNING };
	assert_int_equal(ringmq_consumer_assign(c, tps, 3, err, sizeof(err)), 0);
	size_t seen = 0;
	bool *got = calloc(n, 1);
	for (int rounds = 0; seen < n && rounds < 1000; rounds++) {
		struct ringmq_message m[256];
		size_t k;
		int ret = ringmq_consumer_poll(c, 1000, m, 256, &k, err, sizeof(err));
		assert_int_equal(ret, 0);
		for (size_t j = 0; j < k; j++) {
			size_t i;
			const char *hn;
			size_t hl, vl;
			const void *hv;
			assert_int_equal(m[j].header_count, 1);
			assert_int_equal(ringmq_message_header(&m[j], 0, &hn, &hl, &hv, &vl), 0);
			assert_int_equal(vl, sizeof(i));
			memcpy(&i, hv, sizeof(i));
			assert_true(i < n);
			assert_false(got[i]);
			got[i] = true;
			/* Where the delivery report said it went. */
			assert_int_equal(m[j].offset, s.offsets[i]);
			assert_int_equal(m[j].partition, s.parts[i]);
			char val[64];
			int vlen = snprintf(val, sizeof(val), "value %zu for key %zu", i, i % 97);
			assert_int_equal(m[j].value_len, (size_t)vlen);
			assert_memory_equal(m[j].value, val, (size_t)vlen);
			seen++;
		}
	}
	assert_int_equal(seen, n);
	ringmq_consumer_free(c);
	free(got);
	free(s.offsets);
	free(s.parts);
}

static void test_round_trip(void **state)
{
	round_trip(*state, "plain", false, 20000);
}

static void test_round_trip_lz4(void **state)
{
	round_trip(*state, "packed", true, 20000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_round_trip_lz4, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
