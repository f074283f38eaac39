/* test_consumer.c — the consumer against a real broker: every field of a
 * message, seeks by offset and time, views and pipelined fetches, end
 * detection, offsets out of range, damaged batches on disk, and bad
 * assignments. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/ringmq.h"
#include "storage/batch.h"
#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

#define T0 1700000000000LL /* record timestamps: 2023-11-14T22:13:20Z on */

struct fx {
	struct tbroker b;
	struct ringmq_config *cfg;
	struct ringmq_admin *admin;
};

static void connect_admin(struct fx *f)
{
	char err[256];
	ringmq_admin_free(f->admin);
	ringmq_config_free(f->cfg);
	f->cfg = ringmq_config_new();
	assert_int_equal(ringmq_config_set(f->cfg, "bootstrap.servers", f->b.addr, err,
					   sizeof(err)), 0);
	f->admin = ringmq_admin_new(f->cfg, err, sizeof(err));
	assert_non_null(f->admin);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tb_start(&f->b, NULL, NULL), 0);
	connect_admin(f);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	ringmq_admin_free(f->admin);
	ringmq_config_free(f->cfg);
	if (f->b.pid > 0)
		assert_int_equal(tb_stop(&f->b), 0);
	tb_cleanup(&f->b);
	free(f);
	return 0;
}

static void create_topic(struct fx *f, const char *name, uint32_t parts, const char *k,
			 const char *v)
{
	char err[256];
	struct ringmq_kv kv = { k, v };
	assert_int_equal(ringmq_topic_create(f->admin, name, parts, k ? &kv : NULL, k ? 1 : 0, err,
					     sizeof(err)), 0);
}

static struct ringmq_producer *producer(struct fx *f, const char *const *kv)
{
	char err[256];
	struct ringmq_config *pc = ringmq_config_dup(f->cfg);
	for (size_t i = 0; kv && kv[i]; i += 2)
		assert_int_equal(ringmq_config_set(pc, kv[i], kv[i + 1], err, sizeof(err)), 0);
	struct ringmq_producer *p = ringmq_producer_new(pc, err, sizeof(err));
	ringmq_config_free(pc);
	assert_non_null(p);
	return p;
}

static struct ringmq_consumer *consumer(struct fx *f, const char *const *kv)
{
	char err[256];
	struct ringmq_config *cc = ringmq_config_dup(f->cfg);
	assert_int_equal(ringmq_config_set(cc, "fetch.max.wait.ms", "100", err, sizeof(err)), 0);
	for (size_t i = 0; kv && kv[i]; i += 2)
		assert_int_equal(ringmq_config_set(cc, kv[i], kv[i + 1], err, sizeof(err)), 0);
	struct ringmq_consumer *c = ringmq_consumer_new(cc, err, sizeof(err));
	ringmq_config_free(cc);
	assert_non_null(c);
	return c;
}

/* ---- numbered messages: tu_make_value (testutil.h) ---- */

/* Produces messages [from, to) of 100 bytes to one partition, timestamps
 * T0 + 1000 * i, and waits for them. */
static void produce_range(struct fx *f, const char *topic, int32_t part, size_t from, size_t to,
			  const char *const *kv)
{
	struct ringmq_producer *p = producer(f, kv);
	for (size_t i = from; i < to; i++) {
		char v[100];
		tu_make_value(v, sizeof(v), i);
		assert_int_equal(ringmq_produce(p, topic, part, NULL, 0, v, sizeof(v), NULL, 0,
						T0 + 1000 * (int64_t)i, NULL), 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 20000), 0);
	assert_int_equal(ringmq_producer_outstanding(p), 0);
	ringmq_producer_free(p);
}

/* Polls once and checks that every message returned is ours; returns how
 * many, and the first offset in *first. */
static size_t poll_some(struct ringmq_consumer *c, int timeout_ms, int64_t *first, int64_t *last)
{
	struct ringmq_message m[512];
	size_t n;
	char err[256];
	int ret = ringmq_consumer_poll(c, timeout_ms, m, 512, &n, err, sizeof(err));
	if (ret != 0)
		fail_msg("poll: %s: %s", ringmq_strerror(ret), err);
	for (size_t i = 0; i < n; i++) {
		size_t idx = tu_value_index(m[i].value, m[i].value_len);
		if (idx == SIZE_MAX || (int64_t)idx != m[i].offset)
			fail_msg("offset %" PRId64 " holds the wrong value", m[i].offset);
		if (i > 0 && m[i].offset != m[i - 1].offset + 1)
			fail_msg("offset %" PRId64 " after %" PRId64, m[i].offset, m[i - 1].offset);
	}
	if (n > 0 && first)
		*first = m[0].offset;
	if (n > 0 && last)
		*last = m[n - 1].offset;
	return n;
}

/* The first message a poll returns (within a few seconds). */
static int64_t next_offset_polled(struct ringmq_consumer *c)
{
	int64_t first = -1;
	for (int i = 0; i < 50; i++)
		if (poll_some(c, 100, &first, NULL) > 0)
			return first;
	fail_msg("no message within 5 s");
	return -1;
}

/* ---- every field ---- */

struct sent {
	char key[32];
	size_t key_len;
	char value[64];
	size_t value_len;
	size_t nh;
	int64_t ts;
};

static void make_sent(struct sent *s, int32_t p, size_t i)
{
	memset(s, 0, sizeof(*s));
	if (i % 5 != 0)
		s->key_len = (size_t)snprintf(s->key, sizeof(s->key), "key-%d-%zu", p, i);
	if (i % 7 != 3) {
		s->value_len = (size_t)snprintf(s->value, sizeof(s->value), "value %d/%zu", p, i);
		s->value[s->value_len++] = '\0'; /* binary: a NUL inside */
		s->value[s->value_len++] = (char)0xff;
	}
	s->nh = i % 4;
	s->ts = T0 + (int64_t)p * 1000000 + (int64_t)i * 10 - (i % 3 == 2 ? 5000 : 0);
}

static void make_headers(struct ringmq_header *h, char (*vals)[32], size_t nh, size_t i)
{
	static const char *const names[] = { "trace-id", "empty", "bin" };
	for (size_t k = 0; k < nh; k++) {
		size_t vl = k == 1 ? 0 : (size_t)snprintf(vals[k], 32, "h%zu-%zu", k, i);
		if (k == 2)
			vals[k][1] = '\0';
		h[k] = (struct ringmq_header){ names[k], k == 1 ? NULL : vals[k], vl };
	}
}

static void test_fields(void **state)
{
	struct fx *f = *state;
	create_topic(f, "fields", 3, NULL, NULL);
	size_t per = 60;
	struct ringmq_producer *p = producer(f, NULL);
	for (int32_t part = 0; part < 3; part++) {
		for (size_t i = 0; i < per; i++) {
			struct sent s;
			make_sent(&s, part, i);
			struct ringmq_header h[3];
			char vals[3][32];
			make_headers(h, vals, s.nh, i);
			assert_int_equal(ringmq_produce(p, "fields", part, s.key_len ? s.key : NULL,
							s.key_len, s.value, s.value_len, h, s.nh,
							s.ts, NULL), 0);
		}
	}
	assert_int_equal(ringmq_producer_flush(p, 20000), 0);
	ringmq_producer_free(p);

	struct ringmq_consumer *c = consumer(f, NULL);
	struct ringmq_topic_partition tps[3];
	for (int32_t i = 0; i < 3; i++)
		tps[i] = (struct ringmq_topic_partition){ "fields", i, RINGMQ_OFFSET_BEGINNING };
	char err[256];
	assert_int_equal(ringmq_consumer_assign(c, tps, 3, err, sizeof(err)), 0);
	int64_t next[3] = { 0, 0, 0 };
	size_t seen = 0;
	for (int rounds = 0; seen < 3 * per && rounds < 100; rounds++) {
		struct ringmq_message m[64];
		size_t n;
		assert_int_equal(ringmq_consumer_poll(c, 200, m, 64, &n, err, sizeof(err)), 0);
		for (size_t j = 0; j < n; j++) {
			int32_t part = m[j].partition;
			assert_true(part >= 0 && part < 3);
			assert_string_equal(m[j].topic, "fields");
			assert_int_equal(m[j].offset, next[part]);
			size_t i = (size_t)next[part]++;
			struct sent s;
			make_sent(&s, part, i);
			assert_int_equal(m[j].timestamp_ms, s.ts);
			assert_int_equal(m[j].key_len, s.key_len);
			if (s.key_len == 0)
				assert_null(m[j].key);
			else
				assert_memory_equal(m[j].key, s.key, s.key_len);
			assert_int_equal(m[j].value_len, s.value_len);
			if (s.value_len)
				assert_memory_equal(m[j].value, s.value, s.value_len);
			assert_int_equal(m[j].header_count, s.nh);
			struct ringmq_header h[3];
			char vals[3][32];
			make_headers(h, vals, s.nh, i);
			for (size_t k = 0; k < s.nh; k++) {
				const char *name;
				size_t name_len, vl;
				const void *v;
				assert_int_equal(ringmq_message_header(&m[j], k, &name,
								       &name_len, &v, &vl), 0);
				assert_int_equal(name_len, strlen(h[k].name));
				assert_memory_equal(name, h[k].name, name_len);
				assert_int_equal(vl, h[k].value_len);
				if (vl)
					assert_memory_equal(v, h[k].value, vl);
			}
			const char *name;
			size_t name_len, vl;
			const void *v;
			assert_int_equal(ringmq_message_header(&m[j], s.nh, &name, &name_len, &v,
							       &vl), RINGMQ_ERR_INVALID_ARG);
			seen++;
		}
	}
	assert_int_equal(seen, 3 * per);
	int64_t pos, end;
	for (int32_t part = 0; part < 3; part++) {
		assert_int_equal(ringmq_consumer_position(c, "fields", part, &pos, &end), 0);
		assert_int_equal(pos, (int64_t)per);
		assert_int_equal(end, (int64_t)per);
	}
	ringmq_consumer_free(c);
}

/* ---- seeking ---- */

static void test_seek(void **state)
{
	struct fx *f = *state;
	create_topic(f, "seek", 2, NULL, NULL);
	produce_range(f, "seek", 0, 0, 100, NULL);
	struct ringmq_consumer *c = consumer(f, NULL);
	char err[256];
	struct ringmq_topic_partition tp = { "seek", 0, 10 };
	assert_int_equal(ringmq_consumer_assign(c, &tp, 1, err, sizeof(err)), 0);
	int64_t pos, end;
	assert_int_equal(ringmq_consumer_position(c, "seek", 0, &pos, &end), 0);
	assert_int_equal(pos, 10);
	assert_int_equal(end, -1); /* nothing fetched yet */
	assert_int_equal(next_offset_polled(c), 10);

	assert_int_equal(ringmq_consumer_seek(c, "seek", 0, RINGMQ_OFFSET_BEGINNING, err,
					      sizeof(err)), 0);
	assert_int_equal(ringmq_consumer_position(c, "seek", 0, &pos, NULL), 0);
	assert_int_equal(pos, 0);
	/* Only part of a fetch handed out: the rest is dropped by a seek. */
	struct ringmq_message m[4];
	size_t n;
	assert_int_equal(ringmq_consumer_poll(c, 2000, m, 4, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 4);
	assert_int_equal(m[0].offset, 0);
	assert_int_equal(ringmq_consumer_seek(c, "seek", 0, 40, err, sizeof(err)), 0);
	assert_int_equal(next_offset_polled(c), 40);

	/* By time: the first message at or after it. */
	assert_int_equal(ringmq_consumer_seek_time(c, "seek", 0, T0 + 25500, err, sizeof(err)), 0);
	assert_int_equal(ringmq_consumer_position(c, "seek", 0, &pos, NULL), 0);
	assert_int_equal(pos, 26);
	assert_int_equal(next_offset_polled(c), 26);
	assert_int_equal(ringmq_consumer_seek_time(c, "seek", 0, T0 + 25000, err, sizeof(err)), 0);
	assert_int_equal(next_offset_polled(c), 25);
	assert_int_equal(ringmq_consumer_seek_time(c, "seek", 0, 0, err, sizeof(err)), 0);
	assert_int_equal(next_offset_polled(c), 0);
	assert_int_equal(ringmq_consumer_seek_time(c, "seek", 0, T0 + 10000000, err, sizeof(err)),
			 0);
	assert_int_equal(ringmq_consumer_position(c, "seek", 0, &pos, NULL), 0);
	assert_int_equal(pos, 100);

	/* The end: nothing now, then what comes after. */
	assert_int_equal(ringmq_consumer_seek(c, "seek", 0, RINGMQ_OFFSET_END, err, sizeof(err)),
			 0);
	assert_int_equal(ringmq_consumer_position(c, "seek", 0, &pos, NULL), 0);
	assert_int_equal(pos, 100);
	assert_int_equal(poll_some(c, 300, NULL, NULL), 0);
	produce_range(f, "seek", 0, 100, 105, NULL);
	assert_int_equal(next_offset_polled(c), 100);

	/* Mistakes. */
	assert_int_equal(ringmq_consumer_seek(c, "seek", 1, 0, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	assert_non_null(strstr(err, "seek[1]"));
	assert_int_equal(ringmq_consumer_seek(c, "other", 0, 0, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_consumer_seek(c, "seek", 0, -3, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_consumer_seek_time(c, "seek", 0, -1, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_consumer_position(c, "seek", 1, &pos, &end),
			 RINGMQ_ERR_INVALID_ARG);
	ringmq_consumer_free(c);
}

/* ---- views and pipelining ---- */

struct copy {
	int64_t offset, ts;
	char topic[32];
	int32_t partition;
	size_t value_len;
	char value[128];
};

/* Each fetch costs max.wait (it can never gather fetch.min.bytes); a poll
 * after a slow application returns at once, because the next fetch left
 * when the previous poll returned. The views of a poll stay intact while
 * the application works, with that fetch on its way. */
static void test_views_and_pipelining(void **state)
{
	struct fx *f = *state;
	create_topic(f, "pipe", 1, NULL, NULL);
	const char *pk[] = { "batch.size", "512", NULL };
	produce_range(f, "pipe", 0, 0, 300, pk);
	const char *ck[] = { "fetch.min.bytes", "1000000", "fetch.max.wait.ms", "400",
			     "fetch.partition.max.bytes", "1024", "fetch.max.bytes", "1024", NULL };
	struct ringmq_consumer *c = consumer(f, ck);
	char err[256];
	struct ringmq_topic_partition tp = { "pipe", 0, RINGMQ_OFFSET_BEGINNING };
	assert_int_equal(ringmq_consumer_assign(c, &tp, 1, err, sizeof(err)), 0);

	struct ringmq_message m[256];
	size_t n;
	int64_t t0 = tu_mono_ms();
	assert_int_equal(ringmq_consumer_poll(c, 5000, m, 256, &n, err, sizeof(err)), 0);
	int64_t first = tu_mono_ms() - t0;
	assert_true(n > 0 && n < 50);
	assert_true(first >= 350);
	static struct copy cp[256];
	for (size_t i = 0; i < n; i++) {
		cp[i].offset = m[i].offset;
		cp[i].ts = m[i].timestamp_ms;
		cp[i].partition = m[i].partition;
		snprintf(cp[i].topic, sizeof(cp[i].topic), "%s", m[i].topic);
		cp[i].value_len = m[i].value_len;
		assert_true(m[i].value_len <= sizeof(cp[i].value));
		memcpy(cp[i].value, m[i].value, m[i].value_len);
	}
	/* The slow application; then its views are still what they were. */
	tu_sleep_ms(700);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(m[i].offset, cp[i].offset);
		assert_int_equal(m[i].timestamp_ms, cp[i].ts);
		assert_string_equal(m[i].topic, cp[i].topic);
		assert_int_equal(m[i].partition, cp[i].partition);
		assert_int_equal(m[i].value_len, cp[i].value_len);
		assert_memory_equal(m[i].value, cp[i].value, cp[i].value_len);
		assert_int_equal(tu_value_index(m[i].value, m[i].value_len), (size_t)m[i].offset);
	}
	int64_t last = m[n - 1].offset;

	t0 = tu_mono_ms();
	assert_int_equal(ringmq_consumer_poll(c, 5000, m, 256, &n, err, sizeof(err)), 0);
	int64_t second = tu_mono_ms() - t0;
	assert_true(n > 0);
	assert_int_equal(m[0].offset, last + 1);
	last = m[n - 1].offset;
	if (second > 200)
		fail_msg("the poll after a slow application took %" PRId64 " ms: the next fetch "
			 "was not on its way (a fetch takes %" PRId64 " ms)", second, first);
	/* Control: with no pause, a poll waits for a whole fetch. */
	t0 = tu_mono_ms();
	assert_int_equal(ringmq_consumer_poll(c, 5000, m, 256, &n, err, sizeof(err)), 0);
	assert_true(tu_mono_ms() - t0 >= 300);
	assert_true(n > 0);
	assert_int_equal(m[0].offset, last + 1);
	ringmq_consumer_free(c);
}

/* ---- the end of a partition, as `mqcat -e` finds it ---- */

static void test_end_detection(void **state)
{
	struct fx *f = *state;
	create_topic(f, "ends", 3, NULL, NULL);
	produce_range(f, "ends", 0, 0, 700, NULL);
	produce_range(f, "ends", 1, 0, 300, NULL);
	/* Partition 2 stays empty. */
	struct ringmq_consumer *c = consumer(f, NULL);
	char err[256];
	struct ringmq_topic_partition tps[3];
	for (int32_t i = 0; i < 3; i++)
		tps[i] = (struct ringmq_topic_partition){ "ends", i, RINGMQ_OFFSET_BEGINNING };
	assert_int_equal(ringmq_consumer_assign(c, tps, 3, err, sizeof(err)), 0);
	size_t got[3] = { 0, 0, 0 };
	int64_t t0 = tu_mono_ms();
	bool done = false;
	for (int rounds = 0; !done && rounds < 200; rounds++) {
		struct ringmq_message m[128];
		size_t n;
		assert_int_equal(ringmq_consumer_poll(c, 100, m, 128, &n, err, sizeof(err)), 0);
		for (size_t j = 0; j < n; j++)
			got[m[j].partition]++;
		done = true;
		for (int32_t i = 0; i < 3; i++) {
			int64_t pos, end;
			assert_int_equal(ringmq_consumer_position(c, "ends", i, &pos, &end), 0);
			done &= end >= 0 && pos >= end;
		}
	}
	assert_true(done);
	assert_true(tu_mono_ms() - t0 < 3000);
	assert_int_equal(got[0], 700);
	assert_int_equal(got[1], 300);
	assert_int_equal(got[2], 0);
	ringmq_consumer_free(c);
}

/* ---- offsets out of range ---- */

static void test_out_of_range(void **state)
{
	struct fx *f = *state;
	create_topic(f, "range", 1, NULL, NULL);
	produce_range(f, "range", 0, 0, 10, NULL);
	struct ringmq_consumer *c = consumer(f, NULL);
	char err[256];
	struct ringmq_topic_partition tp = { "range", 0, 1000 };
	assert_int_equal(ringmq_consumer_assign(c, &tp, 1, err, sizeof(err)), 0);
	struct ringmq_message m[16];
	size_t n = 99;
	err[0] = '\0';
	assert_int_equal(ringmq_consumer_poll(c, 2000, m, 16, &n, err, sizeof(err)),
			 RINGMQ_ERR_OFFSET_OUT_OF_RANGE);
	assert_int_equal(n, 0);
	assert_non_null(strstr(err, "range[0]"));
	assert_non_null(strstr(err, "1000"));
	/* The partition waits for a seek; then it reads again. */
	assert_int_equal(ringmq_consumer_poll(c, 200, m, 16, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	assert_int_equal(ringmq_consumer_seek(c, "range", 0, RINGMQ_OFFSET_BEGINNING, err,
					      sizeof(err)), 0);
	assert_int_equal(next_offset_polled(c), 0);

	/* The end itself is in range: nothing yet, then new messages. */
	assert_int_equal(ringmq_consumer_seek(c, "range", 0, 10, err, sizeof(err)), 0);
	assert_int_equal(poll_some(c, 300, NULL, NULL), 0);
	produce_range(f, "range", 0, 10, 12, NULL);
	assert_int_equal(next_offset_polled(c), 10);
	ringmq_consumer_free(c);
}

/* ---- a damaged batch on disk ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* CPU seconds this thread has used. */
static double thread_cpu(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_corrupt_batch(void **state)
{
	struct fx *f = *state;
	char err[256];
	/* Small segments, kept forever (the records are from 2023). */
	const struct ringmq_kv small[] = { { "segment.bytes", "4096" },
					   { "max.message.bytes", "4096" },
					   { "retention.ms", "-1" } };
	assert_int_equal(ringmq_topic_create(f->admin, "rot", 1, small, 3, err, sizeof(err)), 0);
	const char *pk[] = { "batch.size", "1024", NULL };
	size_t total = 200;
	produce_range(f, "rot", 0, 0, total, pk);
	assert_int_equal(tb_stop(&f->b), 0);

	/* The second segment file is closed: flip a byte in the records of
	 * its second batch, where only a checksum can notice. */
	char dir[4200];
	snprintf(dir, sizeof(dir), "%s/rot/0", f->b.dir);
	DIR *d = opendir(dir);
	assert_non_null(d);
	char *names[64];
	size_t nn = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL && nn < 64) {
		size_t l = strlen(de->d_name);
		if (l > 4 && strcmp(de->d_name + l - 4, ".log") == 0)
			names[nn++] = strdup(de->d_name);
	}
	closedir(d);
	assert_true(nn >= 3);
	qsort(names, nn, sizeof(names[0]), cmp_str);
	char path[4500];
	snprintf(path, sizeof(path), "%s/%s", dir, names[1]);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint8_t buf[8192];
	ssize_t len = pread(fd, buf, sizeof(buf), 0);
	assert_true(len > 128);
	struct batch_hdr h1, h2;
	assert_int_equal(batch_verify(buf, (size_t)len, &h1), 0);
	assert_int_equal(batch_verify(buf + h1.length, (size_t)len - h1.length, &h2), 0);
	off_t at = (off_t)h1.length + BATCH_HEADER_SIZE + 20;
	uint8_t byte = buf[at] ^ 0x20;
	assert_int_equal(pwrite(fd, &byte, 1, at), 1);
	close(fd);
	for (size_t i = 0; i < nn; i++)
		free(names[i]);
	uint64_t bad_lo = h2.base_offset, bad_hi = batch_last_offset(&h2);

	assert_int_equal(tb_start(&f->b, f->b.dir, NULL), 0);
	connect_admin(f);
	struct ringmq_consumer *c = consumer(f, NULL);
	struct ringmq_topic_partition tp = { "rot", 0, RINGMQ_OFFSET_BEGINNING };
	assert_int_equal(ringmq_consumer_assign(c, &tp, 1, err, sizeof(err)), 0);
	int64_t next = 0;
	int ret = 0;
	for (int rounds = 0; rounds < 100 && ret == 0; rounds++) {
		struct ringmq_message m[64];
		size_t n;
		err[0] = '\0';
		ret = ringmq_consumer_poll(c, 200, m, 64, &n, err, sizeof(err));
		if (ret != 0)
			assert_int_equal(n, 0);
		for (size_t j = 0; j < n; j++) {
			/* Never garbage: everything handed out is what was sent. */
			assert_int_equal(m[j].offset, next);
			assert_int_equal(tu_value_index(m[j].value, m[j].value_len), (size_t)next);
			next++;
		}
	}
	assert_int_equal(ret, RINGMQ_ERR_CORRUPT_MESSAGE);
	assert_int_equal(next, (int64_t)bad_lo);
	char range[64];
	snprintf(range, sizeof(range), "%" PRIu64 "-%" PRIu64, bad_lo, bad_hi);
	if (strstr(err, "rot[0]") == NULL || strstr(err, range) == NULL)
		fail_msg("errstr '%s' does not name rot[0] and offsets %s", err, range);

	/* The partition stops there (and poll does not spin meanwhile). */
	struct ringmq_message m[64];
	size_t n;
	int64_t t0 = tu_mono_ms();
	double cpu0 = thread_cpu();
	assert_int_equal(ringmq_consumer_poll(c, 500, m, 64, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	double cpu = thread_cpu() - cpu0;
	int64_t wall = tu_mono_ms() - t0;
	if (cpu > 0.25)
		fail_msg("poll with every partition stopped used %.0f ms of CPU in %" PRId64 " ms",
			 cpu * 1000, wall);
	/* A seek past the damage reads on, to the end. */
	assert_int_equal(ringmq_consumer_seek(c, "rot", 0, (int64_t)bad_hi + 1, err, sizeof(err)),
			 0);
	next = (int64_t)bad_hi + 1;
	for (int rounds = 0; rounds < 100 && next < (int64_t)total; rounds++) {
		int64_t first = -1, last = -1;
		if (poll_some(c, 200, &first, &last) == 0)
			continue;
		assert_int_equal(first, next);
		next = last + 1;
	}
	assert_int_equal(next, (int64_t)total);
	ringmq_consumer_free(c);
}

/* ---- assignments ---- */

static void test_assign_errors(void **state)
{
	struct fx *f = *state;
	create_topic(f, "real", 2, NULL, NULL);
	produce_range(f, "real", 1, 0, 20, NULL);
	struct ringmq_consumer *c = consumer(f, NULL);
	char err[256];
	struct ringmq_message m[8];
	size_t n;
	assert_int_equal(ringmq_consumer_poll(c, 100, m, 8, &n, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG); /* nothing assigned */

	struct ringmq_topic_partition ok = { "real", 1, 5 };
	assert_int_equal(ringmq_consumer_assign(c, &ok, 1, err, sizeof(err)), 0);
	struct ringmq_topic_partition ghost[2] = { { "real", 0, 0 }, { "ghost", 0, 0 } };
	assert_int_equal(ringmq_consumer_assign(c, ghost, 2, err, sizeof(err)),
			 RINGMQ_ERR_UNKNOWN_TOPIC);
	assert_non_null(strstr(err, "ghost"));
	struct ringmq_topic_partition far = { "real", 2, 0 };
	assert_int_equal(ringmq_consumer_assign(c, &far, 1, err, sizeof(err)),
			 RINGMQ_ERR_UNKNOWN_PARTITION);
	assert_non_null(strstr(err, "real"));
	struct ringmq_topic_partition neg = { "real", -1, 0 };
	assert_int_equal(ringmq_consumer_assign(c, &neg, 1, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	struct ringmq_topic_partition noname = { NULL, 0, 0 };
	assert_int_equal(ringmq_consumer_assign(c, &noname, 1, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	/* The failed calls left the assignment as it was. */
	int64_t pos;
	assert_int_equal(ringmq_consumer_position(c, "real", 1, &pos, NULL), 0);
	assert_int_equal(pos, 5);
	assert_int_equal(ringmq_consumer_position(c, "real", 0, &pos, NULL),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(next_offset_polled(c), 5);

	/* An empty assignment is allowed; polling it is not. */
	assert_int_equal(ringmq_consumer_assign(c, NULL, 0, err, sizeof(err)), 0);
	assert_int_equal(ringmq_consumer_poll(c, 100, m, 8, &n, err, sizeof(err)),
			 RINGMQ_ERR_INVALID_ARG);
	ringmq_consumer_free(c);
}

/* ---- a broker restarted under a reading consumer ---- */

static void test_survives_restart(void **state)
{
	struct fx *f = *state;
	create_topic(f, "again", 1, NULL, NULL);
	produce_range(f, "again", 0, 0, 100, NULL);
	const char *ck[] = { "reconnect.backoff.ms", "20", "reconnect.backoff.max.ms", "100",
			     "fetch.max.bytes", "2048", "fetch.partition.max.bytes", "2048", NULL };
	struct ringmq_consumer *c = consumer(f, ck);
	char err[256];
	struct ringmq_topic_partition tp = { "again", 0, RINGMQ_OFFSET_BEGINNING };
	assert_int_equal(ringmq_consumer_assign(c, &tp, 1, err, sizeof(err)), 0);
	int64_t next = 0, first, last;
	for (int rounds = 0; next < 30 && rounds < 50; rounds++) {
		if (poll_some(c, 200, &first, &last) > 0) {
			assert_int_equal(first, next);
			next = last + 1;
		}
	}
	char listen[80];
	snprintf(listen, sizeof(listen), "%s", f->b.addr);
	assert_int_equal(tb_stop(&f->b), 0);
	/* Down: polls fail or time out, and lose nothing. */
	struct ringmq_message m[64];
	size_t n;
	for (int i = 0; i < 3; i++) {
		int ret = ringmq_consumer_poll(c, 100, m, 64, &n, err, sizeof(err));
		if (ret == 0) {
			for (size_t j = 0; j < n; j++)
				assert_int_equal(m[j].offset, next++);
		} else {
			assert_int_equal(ret, RINGMQ_ERR_TRANSPORT);
		}
	}
	const char *extra[] = { "--listen", listen, NULL };
	assert_int_equal(tb_start(&f->b, f->b.dir, extra), 0);
	connect_admin(f);
	produce_range(f, "again", 0, 100, 150, NULL);
	int64_t deadline = tu_mono_ms() + 10000;
	while (next < 150 && tu_mono_ms() < deadline) {
		int ret = ringmq_consumer_poll(c, 200, m, 64, &n, err, sizeof(err));
		if (ret == RINGMQ_ERR_TRANSPORT)
			continue;
		assert_int_equal(ret, 0);
		for (size_t j = 0; j < n; j++) {
			assert_int_equal(m[j].offset, next);
			assert_int_equal(tu_value_index(m[j].value, m[j].value_len), (size_t)next);
			next++;
		}
	}
	assert_int_equal(next, 150);
	ringmq_consumer_free(c);
}

/* A poll that cannot reach the broker waits out its reconnect backoff; it
 * does not spin. */
static void test_no_spin_while_down(void **state)
{
	struct fx *f = *state;
	create_topic(f, "quiet", 1, NULL, NULL);
	const char *ck[] = { "reconnect.backoff.ms", "1000", "reconnect.backoff.max.ms", "1000",
			     NULL };
	struct ringmq_consumer *c = consumer(f, ck);
	char err[256];
	struct ringmq_topic_partition tp = { "quiet", 0, RINGMQ_OFFSET_BEGINNING };
	assert_int_equal(ringmq_consumer_assign(c, &tp, 1, err, sizeof(err)), 0);
	assert_int_equal(poll_some(c, 200, NULL, NULL), 0);
	assert_int_equal(tb_stop(&f->b), 0);
	double cpu0 = thread_cpu();
	int64_t t0 = tu_mono_ms();
	for (int i = 0; i < 3; i++) {
		struct ringmq_message m[8];
		size_t n;
		int ret = ringmq_consumer_poll(c, 400, m, 8, &n, err, sizeof(err));
		assert_true(ret == 0 || ret == RINGMQ_ERR_TRANSPORT);
		assert_int_equal(n, 0);
	}
	int64_t wall = tu_mono_ms() - t0;
	double cpu = thread_cpu() - cpu0;
	print_message("      3 polls: %" PRId64 " ms, %.0f ms CPU\n", wall, cpu * 1000);
	assert_true(wall >= 1100);
	if (cpu > 0.3)
		fail_msg("polls with the broker down used %.0f ms of CPU in %" PRId64 " ms",
			 cpu * 1000, wall);
	ringmq_consumer_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seek, setup, teardown),
		cmocka_unit_test_setup_teardown(test_views_and_pipelining, setup, teardown),
		cmocka_unit_test_setup_teardown(test_end_detection, setup, teardown),
		cmocka_unit_test_setup_teardown(test_out_of_range, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_assign_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_survives_restart, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_spin_while_down, setup, teardown),
	};
	/* TEST_FILTER=test_seek runs only the tests matching the pattern. */
	if (getenv("TEST_FILTER"))
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
