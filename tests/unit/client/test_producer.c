/* test_producer.c — the producer against real brokers: batching, partitioning,
 * acks, idempotent retries through lost replies and refused batches, batches
 * split to fit a topic's max.message.bytes, many
 * threads at once, the buffer.memory bound, delivery.timeout.ms, and brokers
 * killed or stopped and restarted under it. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmocka.h>

#include "client/ringmq.h"
#include "common/arena.h"
#include "proto/proto.h"
#include "storage/batch.h"
#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

#define VALUE_LEN 100

struct fx {
	struct tbroker b;
	char *conf_dir;      /* holds the broker's config file, if any */
	struct ringmq_config *cfg;
	struct ringmq_admin *admin;
};

static void connect_admin(struct fx *f)
{
	char err[256];
	ringmq_config_free(f->cfg);
	ringmq_admin_free(f->admin);
	f->cfg = ringmq_config_new();
	assert_int_equal(ringmq_config_set(f->cfg, "bootstrap.servers", f->b.addr, err,
					   sizeof(err)), 0);
	f->admin = ringmq_admin_new(f->cfg, err, sizeof(err));
	assert_non_null(f->admin);
}

/* Starts a broker, with `conf` as its config file's text if not NULL. */
static struct fx *start(const char *conf)
{
	struct fx *f = calloc(1, sizeof(*f));
	const char *extra[3] = { NULL };
	char path[600];
	if (conf != NULL) {
		f->conf_dir = tu_tmpdir("pconf");
		snprintf(path, sizeof(path), "%s/ringmqd.conf", f->conf_dir);
		FILE *fp = fopen(path, "w");
		assert_non_null(fp);
		fputs(conf, fp);
		fclose(fp);
		extra[0] = "--config";
		extra[1] = path;
	}
	assert_int_equal(tb_start(&f->b, NULL, extra), 0);
	connect_admin(f);
	return f;
}

static int setup(void **state)
{
	*state = start(NULL);
	return 0;
}

/* Every third produce request is appended, then its reply is lost. */
static int setup_drop(void **state)
{
	*state = start("test.drop.after.append = 3\n");
	return 0;
}

/* Every produce request is appended, and its reply lost. */
static int setup_drop_all(void **state)
{
	*state = start("test.drop.after.append = 1\n");
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
	if (f->conf_dir) {
		tu_rmtree(f->conf_dir);
		free(f->conf_dir);
	}
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

/* ---- delivery reports ---- */

/* What the delivery callback saw, by message index (the opaque). The
 * callback runs on the I/O thread, so it only records; tests assert. */
struct track {
	pthread_mutex_t mu;
	size_t n;
	uint32_t *reports;
	int *err;
	int32_t *part;
	int64_t *off;
	size_t total, errors, bad_opaque;
	int64_t first_ms, last_ms;
	char errstr[256];    /* the first failed report's errstr */
	/* If gate: the report of message gate_at holds the I/O thread until
	 * gate_open (gate_hit tells the test it is there). */
	pthread_cond_t cv;
	bool gate, gate_hit, gate_open;
	size_t gate_at;
};

/* On the heap: a test that fails with a producer still running leaves
 * both behind, and the callback must not write into a dead stack frame. */
static struct track *track_new(size_t n)
{
	struct track *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	pthread_mutex_init(&t->mu, NULL);
	pthread_cond_init(&t->cv, NULL);
	t->n = n;
	t->reports = calloc(n, sizeof(*t->reports));
	t->err = calloc(n, sizeof(*t->err));
	t->part = calloc(n, sizeof(*t->part));
	t->off = calloc(n, sizeof(*t->off));
	assert_non_null(t->off);
	return t;
}

static void track_free(struct track *t)
{
	free(t->reports);
	free(t->err);
	free(t->part);
	free(t->off);
	pthread_mutex_destroy(&t->mu);
	pthread_cond_destroy(&t->cv);
	free(t);
}

static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	struct track *t = opaque;
	size_t i = (size_t)(uintptr_t)d->opaque;
	pthread_mutex_lock(&t->mu);
	int64_t now = tu_mono_ms();
	if (t->total++ == 0)
		t->first_ms = now;
	t->last_ms = now;
	if (i >= t->n) {
		t->bad_opaque++;
	} else {
		t->reports[i]++;
		t->err[i] = d->err;
		t->part[i] = d->partition;
		t->off[i] = d->offset;
	}
	if (d->err != 0 && t->errors++ == 0)
		snprintf(t->errstr, sizeof(t->errstr), "%s", d->errstr ? d->errstr : "(null)");
	if ((d->err == 0) != (d->errstr == NULL))
		t->bad_opaque++; /* errstr with every error, and only then */
	if (t->gate && i == t->gate_at) {
		t->gate_hit = true;
		pthread_cond_broadcast(&t->cv);
		while (!t->gate_open)
			pthread_cond_wait(&t->cv, &t->mu);
	}
	pthread_mutex_unlock(&t->mu);
}

static size_t track_total(struct track *t)
{
	pthread_mutex_lock(&t->mu);
	size_t n = t->total;
	pthread_mutex_unlock(&t->mu);
	return n;
}

/* Every message in [from, to) was reported exactly once, without error. */
static void assert_delivered_once(struct track *t, size_t from, size_t to)
{
	size_t missing = 0, twice = 0, failed = 0;
	int an_err = 0;
	for (size_t i = from; i < to; i++) {
		missing += t->reports[i] == 0;
		twice += t->reports[i] > 1;
		if (t->reports[i] && t->err[i]) {
			failed++;
			an_err = t->err[i];
		}
	}
	if (missing || twice || failed || t->bad_opaque)
		fail_msg("reports for [%zu, %zu): %zu missing, %zu twice, %zu failed (e.g. %s), "
			 "%zu foreign", from, to, missing, twice, failed, ringmq_strerror(an_err),
			 t->bad_opaque);
}

static struct ringmq_producer *producer(struct fx *f, struct track *t, const char *const *kv)
{
	char err[256];
	struct ringmq_config *pc = ringmq_config_dup(f->cfg);
	for (size_t i = 0; kv && kv[i]; i += 2)
		if (ringmq_config_set(pc, kv[i], kv[i + 1], err, sizeof(err)) != 0)
			fail_msg("config %s=%s: %s", kv[i], kv[i + 1], err);
	if (t)
		ringmq_config_set_delivery_cb(pc, on_delivery, t);
	struct ringmq_producer *p = ringmq_producer_new(pc, err, sizeof(err));
	ringmq_config_free(pc);
	if (p == NULL)
		fail_msg("producer: %s", err);
	return p;
}

/* ---- message bodies: tu_make_value (testutil.h) ---- */

static int produce_n(struct ringmq_producer *p, const char *topic, int32_t part, size_t i,
		     const char *key)
{
	char v[VALUE_LEN];
	tu_make_value(v, sizeof(v), i);
	return ringmq_produce(p, topic, part, key, key ? strlen(key) : 0, v, sizeof(v), NULL, 0, 0,
			      (void *)(uintptr_t)i);
}

/* ---- reading back ---- */

#define MAXP 8
#define MAX_STREAMS 16

/* What a consumer found in a topic, by message index. */
struct seen {
	size_t n;
	uint32_t *count;
	int32_t *part;
	int64_t *off;
	size_t total, foreign, dups;
};

/* Reads every partition of a topic from the beginning to its end (as the
 * broker reports it now) and checks that offsets are dense. If stream_size
 * is not 0, message indexes of each stream (index / stream_size) must rise
 * within a partition: what one producing thread sent to one partition stays
 * in order. */
static void read_back(struct fx *f, const char *topic, uint32_t nparts, struct seen *s, size_t n,
		      size_t stream_size)
{
	char err[256];
	memset(s, 0, sizeof(*s));
	s->n = n;
	s->count = calloc(n, sizeof(*s->count));
	s->part = calloc(n, sizeof(*s->part));
	s->off = calloc(n, sizeof(*s->off));
	int64_t end[MAXP], next[MAXP];
	size_t last[MAXP][MAX_STREAMS];
	struct ringmq_topic_partition tps[MAXP];
	assert_true(nparts <= MAXP);
	for (uint32_t i = 0; i < nparts; i++) {
		assert_int_equal(ringmq_list_offset(f->admin, topic, (int32_t)i, RINGMQ_OFFSET_END,
						    &end[i], err, sizeof(err)), 0);
		tps[i] = (struct ringmq_topic_partition){ topic, (int32_t)i,
							  RINGMQ_OFFSET_BEGINNING };
		next[i] = 0;
		for (int k = 0; k < MAX_STREAMS; k++)
			last[i][k] = SIZE_MAX;
	}
	struct ringmq_config *cc = ringmq_config_dup(f->cfg);
	assert_int_equal(ringmq_config_set(cc, "fetch.max.wait.ms", "100", err, sizeof(err)), 0);
	struct ringmq_consumer *c = ringmq_consumer_new(cc, err, sizeof(err));
	assert_non_null(c);
	assert_int_equal(ringmq_consumer_assign(c, tps, nparts, err, sizeof(err)), 0);
	int64_t deadline = tu_mono_ms() + 30000;
	for (;;) {
		bool done = true;
		for (uint32_t i = 0; i < nparts; i++)
			done &= next[i] >= end[i];
		if (done)
			break;
		if (tu_mono_ms() > deadline)
			fail_msg("reading %s back: no end after 30 s", topic);
		struct ringmq_message m[512];
		size_t k;
		int ret = ringmq_consumer_poll(c, 200, m, 512, &k, err, sizeof(err));
		if (ret != 0)
			fail_msg("poll: %s: %s", ringmq_strerror(ret), err);
		for (size_t j = 0; j < k; j++) {
			uint32_t p = (uint32_t)m[j].partition;
			assert_string_equal(m[j].topic, topic);
			assert_true(p < nparts);
			if (m[j].offset != next[p])
				fail_msg("%s[%u]: offset %" PRId64 " after %" PRId64, topic, p,
					 m[j].offset, next[p] - 1);
			next[p]++;
			s->total++;
			size_t i = tu_value_index(m[j].value, m[j].value_len);
			if (i >= n) {
				s->foreign++;
				continue;
			}
			if (s->count[i]++ > 0)
				s->dups++;
			s->part[i] = (int32_t)p;
			s->off[i] = m[j].offset;
			if (stream_size != 0) {
				size_t st = i / stream_size;
				assert_true(st < MAX_STREAMS);
				if (last[p][st] != SIZE_MAX && i <= last[p][st])
					fail_msg("%s[%u]: message %zu after %zu", topic, p, i,
						 last[p][st]);
				last[p][st] = i;
			}
		}
	}
	ringmq_consumer_free(c);
	ringmq_config_free(cc);
}

static void seen_free(struct seen *s)
{
	free(s->count);
	free(s->part);
	free(s->off);
}

/* Each message in [0, n) is in the log exactly once, where its delivery
 * report said. */
static void assert_exactly_once(struct seen *s, struct track *t)
{
	size_t missing = 0, twice = 0, moved = 0;
	for (size_t i = 0; i < s->n; i++) {
		missing += s->count[i] == 0;
		twice += s->count[i] > 1;
		if (s->count[i] == 1 && t && t->off[i] >= 0 &&
		    (s->part[i] != t->part[i] || s->off[i] != t->off[i]))
			moved++;
	}
	if (missing || twice || moved || s->foreign)
		fail_msg("in the log: %zu missing, %zu duplicated, %zu not where reported, "
			 "%zu foreign (of %zu)", missing, twice, moved, s->foreign, s->n);
}

/* ---- raw views of the log: batches as stored ---- */

struct batches {
	size_t count, records;
	uint32_t min_len, max_len, max_records;
};

static void count_batches(struct fx *f, const char *topic, uint32_t part, struct batches *bs)
{
	struct tclient c;
	memset(bs, 0, sizeof(*bs));
	bs->min_len = UINT32_MAX;
	assert_int_equal(tc_connect(&c, f->b.addr), 0);
	uint64_t off = 0, end = 1;
	for (int rounds = 0; off < end && rounds < 100000; rounds++) {
		uint8_t *rec;
		uint32_t len;
		assert_int_equal(tc_fetch(&c, topic, part, off, 1u << 20, 0, 0, &rec, &len, &end),
				 0);
		for (uint32_t pos = 0; pos < len;) {
			struct batch_hdr h;
			if (batch_verify(rec + pos, len - pos, &h) != 0)
				break; /* cut short: fetched again from here */
			if (batch_last_offset(&h) >= off) {
				bs->count++;
				bs->records += h.record_count;
				if (h.length < bs->min_len)
					bs->min_len = h.length;
				if (h.length > bs->max_len)
					bs->max_len = h.length;
				if (h.record_count > bs->max_records)
					bs->max_records = h.record_count;
				off = batch_last_offset(&h) + 1;
			}
			pos += h.length;
		}
		free(rec);
	}
	tc_close(&c);
}

/* A counter from the broker's /metrics, or -1. */
static long long metric(struct fx *f, const char *line_prefix)
{
	struct tclient c;
	if (tc_connect(&c, f->b.http) != 0)
		return -1;
	const char *req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
	tc_send_raw(&c, req, strlen(req));
	size_t cap = 1 << 20, len = 0;
	char *buf = malloc(cap);
	int64_t deadline = tu_mono_ms() + 5000;
	while (len < cap - 1 && tu_mono_ms() < deadline) {
		struct pollfd p = { .fd = c.fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = recv(c.fd, buf + len, cap - 1 - len, 0);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	tc_close(&c);
	long long v = -1;
	char *at = strstr(buf, line_prefix);
	if (at)
		v = strtoll(at + strlen(line_prefix), NULL, 10);
	free(buf);
	return v;
}

#define PRODUCE_REQUESTS "ringmq_requests_total{api=\"PRODUCE\"} "
#define PRODUCE_ERRORS "ringmq_request_errors_total{api=\"PRODUCE\"} "

/* Waits (bounded) until the producer has nothing outstanding. */
static void wait_idle(struct ringmq_producer *p, int timeout_ms)
{
	int64_t deadline = tu_mono_ms() + timeout_ms;
	while (ringmq_producer_outstanding(p) > 0) {
		if (tu_mono_ms() > deadline)
			fail_msg("%zu messages still outstanding after %d ms",
				 ringmq_producer_outstanding(p), timeout_ms);
		tu_sleep_ms(2);
	}
}

/* ---- batching ---- */

/* linger.ms holds a batch open: a quick burst becomes one or two batches,
 * sent after linger.ms, with no flush to force them out. */
static void test_linger_batches(void **state)
{
	struct fx *f = *state;
	create_topic(f, "linger", 1, NULL, NULL);
	size_t n = 1000;
	struct track *t = track_new(n);
	const char *kv[] = { "linger.ms", "50", "batch.size", "1048576", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	/* Metadata first, so the burst is not spread by the wait for it. */
	assert_int_equal(produce_n(p, "linger", 0, 0, NULL), 0);
	assert_int_equal(ringmq_producer_flush(p, 10000), 0);
	long long before = metric(f, PRODUCE_REQUESTS);
	assert_true(before >= 1);

	int64_t t0 = tu_mono_ms();
	for (size_t i = 1; i < n; i++)
		assert_int_equal(produce_n(p, "linger", 0, i, NULL), 0);
	int64_t burst = tu_mono_ms() - t0;
	wait_idle(p, 10000);
	assert_delivered_once(t, 0, n);
	/* Nothing was sent before linger.ms had passed. */
	assert_true(t->last_ms - t0 >= 45);

	struct batches bs;
	count_batches(f, "linger", 0, &bs);
	assert_int_equal(bs.records, n);
	size_t allowed = 2 + (size_t)(burst / 50); /* the priming batch, and one per linger */
	if (bs.count > allowed)
		fail_msg("%zu batches for a %" PRId64 " ms burst (expected <= %zu)", bs.count,
			 burst, allowed);
	long long reqs = metric(f, PRODUCE_REQUESTS) - before;
	assert_true(reqs >= 1 && (size_t)reqs <= bs.count);
	ringmq_producer_free(p);
	track_free(t);
}

/* A small batch.size splits a burst into many batches, none larger than it;
 * a message larger than batch.size still goes, alone in its batch. */
static void test_small_batches(void **state)
{
	struct fx *f = *state;
	create_topic(f, "small", 1, NULL, NULL);
	size_t n = 1000;
	struct track *t = track_new(n + 4);
	const char *kv[] = { "linger.ms", "20", "batch.size", "1024", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(produce_n(p, "small", 0, i, NULL), 0);
	assert_int_equal(ringmq_producer_flush(p, 10000), 0);
	assert_delivered_once(t, 0, n);
	struct batches bs;
	count_batches(f, "small", 0, &bs);
	assert_int_equal(bs.records, n);
	assert_true(bs.max_len <= 1024);
	/* About 106 bytes a record: at most 9 in 1024 - 64 bytes. */
	assert_true(bs.max_records <= 9);
	assert_true(bs.count >= n / 9);

	/* 5000 and 20000 bytes, each followed by a small one: the large ones
	 * go through, alone in their batches, in the order sent. */
	size_t sizes[] = { 5000, 20000 };
	for (size_t k = 0; k < 2; k++) {
		size_t i = n + 2 * k;
		char *big = malloc(sizes[k]);
		tu_make_value(big, sizes[k], i);
		assert_int_equal(ringmq_produce(p, "small", 0, NULL, 0, big, sizes[k], NULL, 0, 0,
						(void *)(uintptr_t)i), 0);
		free(big);
		assert_int_equal(produce_n(p, "small", 0, i + 1, NULL), 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 10000), 0);
	assert_delivered_once(t, n, n + 4);
	for (size_t i = n; i < n + 4; i++)
		assert_int_equal(t->off[i], t->off[i - 1] + 1);
	count_batches(f, "small", 0, &bs);
	assert_int_equal(bs.records, n + 4);
	assert_true(bs.max_len > 20000 && bs.max_len < 20200);
	ringmq_producer_free(p);

	struct seen s;
	read_back(f, "small", 1, &s, n + 4, n + 4);
	assert_exactly_once(&s, t);
	seen_free(&s);
	track_free(t);
}

/* message.max.bytes bounds one message (record and batch header); the
 * topic's max.message.bytes is the broker's bound, reported per message. */
static void test_message_size_limits(void **state)
{
	struct fx *f = *state;
	create_topic(f, "sizes", 1, NULL, NULL);
	create_topic(f, "tight", 1, "max.message.bytes", "4096");
	struct track *t = track_new(16);
	const char *kv[] = { "message.max.bytes", "8192", "batch.size", "1024", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	char *v = calloc(1, 20000);
	/* The largest value whose record (as the library sizes it, with the
	 * widest timestamp delta) fits in a batch of 8192 bytes. */
	size_t fits = 8192;
	while (batch_record_size(0, (uint32_t)fits, NULL, 0) + BATCH_HEADER_SIZE > 8192)
		fits--;
	assert_true(fits > 8000);
	assert_int_equal(ringmq_produce(p, "sizes", 0, NULL, 0, v, fits, NULL, 0, 0,
					(void *)(uintptr_t)0), 0);
	assert_int_equal(ringmq_produce(p, "sizes", 0, NULL, 0, v, fits + 1, NULL, 0, 0,
					(void *)(uintptr_t)1), RINGMQ_ERR_MSG_TOO_LARGE);
	assert_int_equal(ringmq_produce(p, "sizes", 0, NULL, 0, v, 20000, NULL, 0, 0,
					(void *)(uintptr_t)2), RINGMQ_ERR_MSG_TOO_LARGE);
	/* The key and headers count too. */
	struct ringmq_header h = { "h", v, 100 };
	assert_int_equal(ringmq_produce(p, "sizes", 0, v, 50, v, fits - 40, &h, 1, 0,
					(void *)(uintptr_t)3), RINGMQ_ERR_MSG_TOO_LARGE);
	/* With a key and headers, the same exact bound (the library first
	 * tries a cheaper, looser one, and must fall back on this one). */
	struct ringmq_header hs[2] = { { "first", v, 10 }, { "2nd", v, 0 } };
	struct batch_kv kvs[2] = { { "first", 5, v, 10 }, { "2nd", 3, v, 0 } };
	size_t fits_h = 8192;
	while (batch_record_size(20, (uint32_t)fits_h, kvs, 2) + BATCH_HEADER_SIZE > 8192)
		fits_h--;
	assert_int_equal(ringmq_produce(p, "sizes", 0, v, 20, v, fits_h, hs, 2, 0,
					(void *)(uintptr_t)6), 0);
	assert_int_equal(ringmq_produce(p, "sizes", 0, v, 20, v, fits_h + 1, hs, 2, 0,
					(void *)(uintptr_t)7), RINGMQ_ERR_MSG_TOO_LARGE);
	/* Over the topic's limit: the broker refuses, the report says so. */
	assert_int_equal(ringmq_produce(p, "tight", 0, NULL, 0, v, 6000, NULL, 0, 0,
					(void *)(uintptr_t)4), 0);
	assert_int_equal(ringmq_produce(p, "tight", 0, NULL, 0, v, 100, NULL, 0, 0,
					(void *)(uintptr_t)5), 0);
	assert_int_equal(ringmq_producer_flush(p, 10000), 0);
	assert_int_equal(t->reports[0], 1);
	assert_int_equal(t->err[0], 0);
	assert_int_equal(t->reports[1] + t->reports[2] + t->reports[3], 0);
	assert_int_equal(t->reports[4], 1);
	assert_int_equal(t->err[4], RINGMQ_ERR_BATCH_TOO_LARGE);
	assert_int_equal(t->off[4], -1);
	assert_int_equal(t->reports[5], 1);
	assert_int_equal(t->err[5], 0);
	assert_int_equal(t->reports[6], 1);
	assert_int_equal(t->err[6], 0);
	assert_int_equal(t->reports[7], 0);
	assert_int_equal(t->total, 4);
	ringmq_producer_free(p);
	free(v);
	track_free(t);
}

/* ---- partitioning ---- */

static void test_key_partitioning(void **state)
{
	struct fx *f = *state;
	create_topic(f, "keyed", 5, NULL, NULL);
	size_t n = 3000;
	struct track *t = track_new(n);
	struct ringmq_producer *p = producer(f, t, NULL);
	char (*keys)[32] = calloc(n, 32);
	for (size_t i = 0; i < n; i++) {
		snprintf(keys[i], 32, "user-%zu", i % 101);
		assert_int_equal(produce_n(p, "keyed", RINGMQ_PARTITION_ANY, i, keys[i]), 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 20000), 0);
	assert_delivered_once(t, 0, n);
	uint32_t used = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t want = (uint32_t)(XXH3_64bits(keys[i], strlen(keys[i])) % 5);
		if ((uint32_t)t->part[i] != want)
			fail_msg("key %s went to %d, its hash says %u", keys[i], t->part[i], want);
		used |= 1u << want;
	}
	assert_int_equal(used, 0x1f); /* 101 keys reach all 5 partitions */
	ringmq_producer_free(p);
	struct seen s;
	read_back(f, "keyed", 5, &s, n, n);
	assert_exactly_once(&s, t);
	seen_free(&s);
	free(keys);
	track_free(t);
}

/* Messages without a key share one partition until their batch closes, and
 * later batches spread over the partitions. */
static void test_sticky_keyless(void **state)
{
	struct fx *f = *state;
	create_topic(f, "sticky", 4, NULL, NULL);
	size_t rounds = 24, per = 10;
	struct track *t = track_new(rounds * per + 400);
	const char *kv[] = { "linger.ms", "10000", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	uint32_t used = 0;
	for (size_t r = 0; r < rounds; r++) {
		for (size_t k = 0; k < per; k++)
			assert_int_equal(produce_n(p, "sticky", RINGMQ_PARTITION_ANY, r * per + k,
						   NULL), 0);
		assert_int_equal(ringmq_producer_flush(p, 10000), 0);
		assert_delivered_once(t, r * per, r * per + per);
		for (size_t k = 1; k < per; k++) {
			assert_int_equal(t->part[r * per + k], t->part[r * per]);
			assert_int_equal(t->off[r * per + k], t->off[r * per] + (int64_t)k);
		}
		used |= 1u << t->part[r * per];
	}
	/* Random picks: 24 rounds in one partition would be 4^-23. */
	assert_true(__builtin_popcount(used) >= 2);
	ringmq_producer_free(p);

	/* With a full batch as the boundary (no flush): consecutive messages
	 * change partition only where a batch ended. */
	const char *kv2[] = { "linger.ms", "10000", "batch.size", "1024", NULL };
	p = producer(f, t, kv2);
	size_t base = rounds * per;
	for (size_t i = 0; i < 400; i++)
		assert_int_equal(produce_n(p, "sticky", RINGMQ_PARTITION_ANY, base + i, NULL), 0);
	assert_int_equal(ringmq_producer_flush(p, 10000), 0);
	assert_delivered_once(t, base, base + 400);
	used = 0;
	size_t switches = 0;
	for (size_t i = base + 1; i < base + 400; i++) {
		used |= 1u << t->part[i];
		if (t->part[i] == t->part[i - 1])
			assert_int_equal(t->off[i], t->off[i - 1] + 1);
		else
			switches++;
	}
	/* 400 messages of ~106 bytes fill about 45 batches of 1 KiB. */
	assert_true(switches >= 5);
	assert_true(__builtin_popcount(used) >= 2);
	ringmq_producer_free(p);
	/* One partition per batch: every batch is full (9 records fit in
	 * 1 KiB), except the last of each partition, sent by the flush. */
	size_t partial = 0, batches = 0;
	for (uint32_t part = 0; part < 4; part++) {
		struct tclient c;
		assert_int_equal(tc_connect(&c, f->b.addr), 0);
		uint8_t *rec;
		uint32_t len;
		uint64_t end;
		uint64_t from = 0;
		for (size_t r = 0; r < rounds; r++)
			if (t->part[r * per] == (int32_t)part)
				from = (uint64_t)t->off[r * per + per - 1] + 1;
		assert_int_equal(tc_fetch(&c, "sticky", part, from, 1u << 20, 0, 0, &rec, &len,
					  &end), 0);
		size_t here = 0, small = 0;
		for (uint32_t pos = 0; pos < len;) {
			struct batch_hdr h;
			assert_int_equal(batch_verify(rec + pos, len - pos, &h), 0);
			here++;
			small += h.record_count < 9;
			pos += h.length;
		}
		batches += here;
		if (small > 1) {
			print_message("      partition %u: %zu of %zu batches not full\n", part,
				      small, here);
			partial += small - 1;
		}
		free(rec);
		tc_close(&c);
	}
	if (partial > 0)
		fail_msg("%zu of %zu keyless batches were cut short by the sticky switch",
			 partial, batches);
	track_free(t);
}

static void test_partition_errors(void **state)
{
	struct fx *f = *state;
	create_topic(f, "parts", 3, NULL, NULL);
	struct track *t = track_new(16);
	struct ringmq_producer *p = producer(f, t, NULL);
	/* An explicit partition wins over the key. */
	for (int32_t part = 0; part < 3; part++)
		assert_int_equal(produce_n(p, "parts", part, (size_t)part, "same-key"), 0);
	assert_int_equal(produce_n(p, "parts", 3, 3, NULL), RINGMQ_ERR_UNKNOWN_PARTITION);
	assert_int_equal(produce_n(p, "parts", 1000, 3, "k"), RINGMQ_ERR_UNKNOWN_PARTITION);
	assert_int_equal(produce_n(p, "parts", -2, 3, NULL), RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_produce(p, NULL, 0, NULL, 0, "v", 1, NULL, 0, 0, NULL),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_produce(p, "parts", 0, NULL, 3, "v", 1, NULL, 0, 0, NULL),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_produce(p, "parts", 0, NULL, 0, NULL, 1, NULL, 0, 0, NULL),
			 RINGMQ_ERR_INVALID_ARG);
	struct ringmq_header bad = { NULL, "x", 1 };
	assert_int_equal(ringmq_produce(p, "parts", 0, NULL, 0, "v", 1, &bad, 1, 0, NULL),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_produce(p, "parts", 0, NULL, 0, "v", 1, NULL, 65, 0, NULL),
			 RINGMQ_ERR_INVALID_ARG);
	assert_int_equal(ringmq_producer_flush(p, 10000), 0);
	assert_delivered_once(t, 0, 3);
	for (int32_t part = 0; part < 3; part++)
		assert_int_equal(t->part[part], part);
	assert_int_equal(t->total, 3);

	/* An unknown topic fails at once (max.block.ms is 60 s), every time;
	 * once it exists, producing to it works. */
	for (int k = 0; k < 2; k++) {
		int64_t t0 = tu_mono_ms();
		assert_int_equal(produce_n(p, "ghost", RINGMQ_PARTITION_ANY, 4, NULL),
				 RINGMQ_ERR_UNKNOWN_TOPIC);
		assert_true(tu_mono_ms() - t0 < 2000);
	}
	create_topic(f, "ghost", 2, NULL, NULL);
	assert_int_equal(produce_n(p, "ghost", 1, 5, NULL), 0);
	assert_int_equal(ringmq_producer_flush(p, 10000), 0);
	assert_int_equal(t->reports[5], 1);
	assert_int_equal(t->err[5], 0);
	assert_int_equal(t->part[5], 1);
	assert_int_equal(t->off[5], 0);
	assert_int_equal(t->total, 4);
	ringmq_producer_free(p);
	track_free(t);
}

/* ---- acks ---- */

static void test_acks(void **state)
{
	struct fx *f = *state;
	create_topic(f, "acks", 2, NULL, NULL);
	size_t per = 4000;
	static const char *const acks[] = { "0", "1", "all" };
	struct track *t = track_new(3 * per);
	int64_t next[2] = { 0, 0 };
	for (size_t a = 0; a < 3; a++) {
		const char *kv[] = { "acks", acks[a], NULL };
		struct ringmq_producer *p = producer(f, t, kv);
		for (size_t i = a * per; i < (a + 1) * per; i++) {
			char key[16];
			snprintf(key, sizeof(key), "k%zu", i % 13);
			assert_int_equal(produce_n(p, "acks", RINGMQ_PARTITION_ANY, i, key), 0);
		}
		assert_int_equal(ringmq_producer_flush(p, 20000), 0);
		assert_int_equal(ringmq_producer_outstanding(p), 0);
		ringmq_producer_free(p);
		assert_delivered_once(t, a * per, (a + 1) * per);
		if (a == 0) {
			for (size_t i = 0; i < per; i++)
				assert_int_equal(t->off[i], -1);
			/* Where the acks=0 messages landed: wait for them. */
			int64_t deadline = tu_mono_ms() + 10000;
			for (int32_t part = 0; part < 2; part++) {
				char err[256];
				size_t want = 0;
				for (size_t i = 0; i < per; i++)
					want += t->part[i] == part;
				while (next[part] < (int64_t)want && tu_mono_ms() < deadline) {
					assert_int_equal(ringmq_list_offset(f->admin, "acks", part,
									    RINGMQ_OFFSET_END,
									    &next[part], err,
									    sizeof(err)), 0);
					if (next[part] < (int64_t)want)
						tu_sleep_ms(10);
				}
				assert_int_equal(next[part], (int64_t)want);
			}
			continue;
		}
		/* acks 1 and all: the offsets of each partition are dense and
		 * follow what was there before. */
		for (int32_t part = 0; part < 2; part++) {
			size_t cnt = 0;
			int64_t lo = INT64_MAX, hi = -1;
			for (size_t i = a * per; i < (a + 1) * per; i++) {
				if (t->part[i] != part)
					continue;
				cnt++;
				lo = t->off[i] < lo ? t->off[i] : lo;
				hi = t->off[i] > hi ? t->off[i] : hi;
			}
			assert_int_equal(lo, next[part]);
			assert_int_equal(hi - lo + 1, (int64_t)cnt);
			next[part] = hi + 1;
		}
	}
	struct seen s;
	read_back(f, "acks", 2, &s, 3 * per, per);
	assert_exactly_once(&s, t);
	seen_free(&s);
	track_free(t);
}

/* ---- idempotence ---- */

/* n numbered messages through a broker that loses every third reply. A
 * run that cannot finish fails its messages after delivery.timeout.ms; only
 * a strict run requires every one of them delivered. */
static struct track *drop_run(struct fx *f, const char *topic, uint32_t nparts,
			      bool idempotent, const char *in_flight, bool strict,
			      struct seen *s)
{
	size_t n = 30000;
	create_topic(f, topic, nparts, NULL, NULL);
	struct track *t = track_new(n);
	const char *kv[] = { "enable.idempotence", idempotent ? "true" : "false",
			     "max.in.flight", in_flight, "batch.size", "16384", "linger.ms", "2",
			     "reconnect.backoff.max.ms", "100", "delivery.timeout.ms",
			     strict ? "6000" : "2000", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	int64_t t0 = tu_mono_ms();
	for (size_t i = 0; i < n; i++) {
		char key[16];
		snprintf(key, sizeof(key), "%zu", i);
		int ret = produce_n(p, topic, RINGMQ_PARTITION_ANY, i, nparts > 1 ? key : NULL);
		if (ret != 0)
			fail_msg("produce %zu: %s", i, ringmq_strerror(ret));
	}
	int ret = ringmq_producer_flush(p, 8000);
	if (ret != 0) {
		/* Freeing would wait for delivery.timeout.ms again: the
		 * producer and its track are left behind (failing runs only). */
		fail_msg("flush: %s after %" PRId64 " ms, %zu of %zu outstanding, %zu delivered",
			 ringmq_strerror(ret), tu_mono_ms() - t0, ringmq_producer_outstanding(p), n,
			 track_total(t));
	}
	ringmq_producer_free(p);
	print_message("      %zu messages through lost replies in %" PRId64 " ms, %zu failed\n",
		      n, tu_mono_ms() - t0, t->errors);
	if (strict)
		assert_delivered_once(t, 0, n);
	read_back(f, topic, nparts, s, n, idempotent ? n : 0);
	return t;
}

static void test_idempotent_one_partition(void **state)
{
	struct fx *f = *state;
	struct seen s;
	struct track *t = drop_run(f, "idem1", 1, true, "5", true, &s);
	assert_exactly_once(&s, t);
	assert_int_equal(s.total, s.n);
	for (size_t i = 0; i < s.n; i++)
		assert_int_equal(s.off[i], (int64_t)i); /* one thread, one partition: in order */
	seen_free(&s);
	track_free(t);
}

static void test_idempotent_three_partitions(void **state)
{
	struct fx *f = *state;
	struct seen s;
	struct track *t = drop_run(f, "idem3", 3, true, "5", true, &s);
	assert_exactly_once(&s, t);
	assert_int_equal(s.total, s.n);
	seen_free(&s);
	track_free(t);
}

/* max.in.flight may be up to 64: a retry after a lost connection must
 * still be recognised however many batches were on their way. */
static void test_idempotent_many_in_flight(void **state)
{
	struct fx *f = *state;
	struct seen s;
	struct track *t = drop_run(f, "idem16", 1, true, "16", true, &s);
	assert_exactly_once(&s, t);
	seen_free(&s);
	track_free(t);
}

/* Connections that open and then lose every reply: each message still
 * gets its report, an error, within delivery.timeout.ms. */
static void test_delivery_timeout_without_replies(void **state)
{
	struct fx *f = *state;
	create_topic(f, "void", 1, NULL, NULL);
	size_t n = 200;
	struct track *t = track_new(n);
	const char *kv[] = { "delivery.timeout.ms", "1500", "reconnect.backoff.max.ms", "50",
			     NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	int64_t t0 = tu_mono_ms();
	for (size_t i = 0; i < n; i++)
		assert_int_equal(produce_n(p, "void", 0, i, NULL), 0);
	int ret = ringmq_producer_flush(p, 5000);
	int64_t took = tu_mono_ms() - t0;
	if (ret != 0)
		fail_msg("flush: %s after %" PRId64 " ms: %zu of %zu messages still unreported "
			 "with delivery.timeout.ms 1500", ringmq_strerror(ret), took,
			 ringmq_producer_outstanding(p), n);
	assert_true(took < 1500 + 2000);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(t->reports[i], 1);
		assert_int_equal(t->err[i], RINGMQ_ERR_TIMEOUT);
	}
	ringmq_producer_free(p);
	track_free(t);
}

/* The same runs without idempotence duplicate: the hook works, and the
 * tests above could fail. With five requests in flight, a run can lock into
 * losing the same replies over and over (the hook drops every third reply,
 * and each retry round is three requests): those messages fail after
 * delivery.timeout.ms, with a report each. */
static void not_idempotent(struct fx *f, const char *in_flight, bool strict)
{
	struct seen s;
	struct track *t = drop_run(f, "dups", 1, false, in_flight, strict, &s);
	size_t missing = 0, unreported = 0, other = 0;
	for (size_t i = 0; i < s.n; i++) {
		unreported += t->reports[i] != 1;
		other += t->reports[i] == 1 && t->err[i] != 0 && t->err[i] != RINGMQ_ERR_TIMEOUT;
		missing += s.count[i] == 0 && t->err[i] == 0;
	}
	assert_int_equal(unreported, 0);
	assert_int_equal(other, 0);
	assert_int_equal(missing, 0);
	assert_int_equal(s.foreign, 0);
	if (s.dups == 0)
		fail_msg("no duplicates without idempotence: the drop hook did not bite");
	print_message("      %zu duplicates in %zu messages without idempotence\n", s.dups,
		      s.total);
	seen_free(&s);
	track_free(t);
}

static void test_not_idempotent_duplicates(void **state)
{
	not_idempotent(*state, "5", false);
}

/* One request at a time: only the dropped request's reply is lost. */
static void test_not_idempotent_one_in_flight(void **state)
{
	not_idempotent(*state, "1", true);
}

/* A batch the broker refuses for good (too large for the topic) leaves a
 * gap in its partition's sequence, and the producer starts that partition
 * over. That must not send again what other partitions have in flight. */
static void test_rejected_batch_no_duplicates(void **state)
{
	struct fx *f = *state;
	create_topic(f, "gap", 2, "max.message.bytes", "4096");
	size_t n = 20000;
	struct track *t = track_new(n + 10);
	const char *kv[] = { "batch.size", "1024", "linger.ms", "0", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	char *big = malloc(6000);
	tu_make_value(big, 6000, n + 1);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(produce_n(p, "gap", 1, i, NULL), 0);
		if (i % 4000 != 2000)
			continue;
		/* A small one, one too large for the topic, then small ones. */
		size_t j = n + (i / 4000) * 2;
		assert_int_equal(produce_n(p, "gap", 0, j, NULL), 0);
		assert_int_equal(ringmq_produce(p, "gap", 0, NULL, 0, big, 6000, NULL, 0, 0,
						(void *)(uintptr_t)(j + 1)), 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 20000), 0);
	ringmq_producer_free(p);
	free(big);
	assert_delivered_once(t, 0, n);
	for (size_t k = 0; k < 5; k++) {
		size_t j = n + k * 2;
		assert_int_equal(t->reports[j], 1);
		assert_int_equal(t->err[j], 0);
		assert_int_equal(t->reports[j + 1], 1);
		assert_int_equal(t->err[j + 1], RINGMQ_ERR_BATCH_TOO_LARGE);
	}
	struct seen s;
	read_back(f, "gap", 2, &s, n + 10, 0);
	size_t missing = 0, twice = 0;
	for (size_t i = 0; i < n + 10; i++) {
		bool refused = i >= n && (i - n) % 2 == 1;
		missing += !refused && s.count[i] == 0;
		twice += s.count[i] > 1;
	}
	if (missing || twice)
		fail_msg("after refused batches: %zu missing, %zu duplicated", missing, twice);
	seen_free(&s);
	track_free(t);
}

/* Batches that queue up behind a full request window go out several to a
 * request (never sent before, one partition). The broker refuses all of a
 * partition's batches when one is bad, so a refused batch among them must
 * fail alone: the others are sent again and stored, once each, in order,
 * where their reports say. */
static void test_packed_batches_one_refused(void **state)
{
	struct fx *f = *state;
	create_topic(f, "packs", 1, "max.message.bytes", "4096");
	size_t n = 6000, nbig = 6;
	struct track *t = track_new(n + nbig);
	/* One request at a time, small batches: while it waits for its
	 * fdatasync, dozens of batches queue up behind it. */
	const char *kv[] = { "batch.size", "1024", "linger.ms", "0", "max.in.flight", "1", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	char *big = malloc(6000);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(produce_n(p, "packs", 0, i, NULL), 0);
		if (i % 1000 != 500)
			continue;
		/* Too large for the topic, in a batch of its own between
		 * small ones. */
		size_t j = n + i / 1000;
		tu_make_value(big, 6000, j);
		assert_int_equal(ringmq_produce(p, "packs", 0, NULL, 0, big, 6000, NULL, 0, 0,
						(void *)(uintptr_t)j), 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 20000), 0);
	ringmq_producer_free(p);
	free(big);
	assert_delivered_once(t, 0, n);
	for (size_t j = n; j < n + nbig; j++) {
		assert_int_equal(t->reports[j], 1);
		assert_int_equal(t->err[j], RINGMQ_ERR_BATCH_TOO_LARGE);
	}
	struct seen s;
	read_back(f, "packs", 1, &s, n + nbig, n + nbig); /* one stream: in order */
	size_t missing = 0, twice = 0, moved = 0;
	for (size_t i = 0; i < n + nbig; i++) {
		missing += i < n && s.count[i] == 0;
		twice += s.count[i] > 1 || (i >= n && s.count[i] > 0);
		moved += i < n && s.count[i] == 1 && s.off[i] != t->off[i];
	}
	if (missing || twice || moved || s.foreign)
		fail_msg("in the log: %zu missing, %zu duplicated or refused, %zu not where "
			 "reported, %zu foreign", missing, twice, moved, s.foreign);
	seen_free(&s);
	track_free(t);
}

/* ---- a fake broker that refuses produce requests ----
 *
 * Retriable broker errors (a full disk) cannot be had from a real broker
 * without filling a file system, so these tests talk to a stand-in that
 * speaks just enough of the protocol: a handshake, metadata for any topic
 * (one partition), and PRODUCE answered with `err` for its first `refuse`
 * requests, then stored. It notes when each PRODUCE came. */

#define FAKE_PRODUCES_MAX 4096

struct fake {
	int lfd;
	char addr[64];
	pthread_t thread;
	pthread_mutex_t mu;
	bool stop;                   /* mu */
	uint32_t refuse;
	uint16_t err;
	size_t nproduce;             /* mu */
	int64_t at[FAKE_PRODUCES_MAX]; /* mu: tu_mono_ms() of each PRODUCE */
};

static bool fake_stopping(struct fake *fk)
{
	pthread_mutex_lock(&fk->mu);
	bool stop = fk->stop;
	pthread_mutex_unlock(&fk->mu);
	return stop;
}

static void fake_write(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n <= 0)
			return; /* the client went away */
		p += n;
		len -= (size_t)n;
	}
}

/* Answers one request frame. */
static void fake_answer(struct fake *fk, int fd, const uint8_t *frame, uint32_t flen)
{
	struct proto_req_hdr h;
	struct pr body;
	assert_int_equal(proto_req_header(frame, flen, &h, &body), 0);
	static uint8_t abuf[1 << 16];
	struct arena a;
	arena_init(&a, abuf, sizeof(abuf));
	union proto_request req;
	assert_int_equal(proto_decode_request(h.api, h.version, &body, &a, &req), 0);
	union proto_response resp;
	memset(&resp, 0, sizeof(resp));
	struct proto_md_part mdp = { 0, 0, 0 };
	struct proto_md_topic mdt[8];
	struct proto_produce_resp_part pp[8];
	struct proto_produce_resp_topic pt[8];
	switch (h.api) {
	case API_HANDSHAKE:
		resp.handshake = (struct proto_handshake_resp){ PROTO_VERSION_MIN, pstr_c("fake"),
								 0, NULL };
		break;
	case API_METADATA:
		assert_true(req.metadata.ntopics <= 8);
		for (uint32_t i = 0; i < req.metadata.ntopics; i++)
			mdt[i] = (struct proto_md_topic){ req.metadata.topics[i], 0, pstr_c(""), 1,
							  &mdp };
		resp.metadata = (struct proto_metadata_resp){ req.metadata.ntopics, mdt };
		break;
	case API_DESCRIBE_TOPIC:
		/* No settings: the producer goes by batch.size. */
		resp.describe_topic = (struct proto_describe_topic_resp){ req.describe_topic.name, 1,
									   0, NULL, 0, NULL };
		break;
	case API_PRODUCE: {
		/* One topic, one partition: what these tests send. */
		assert_int_equal(req.produce.ntopics, 1);
		assert_int_equal(req.produce.topics[0].nparts, 1);
		pthread_mutex_lock(&fk->mu);
		size_t k = fk->nproduce++;
		if (k < FAKE_PRODUCES_MAX)
			fk->at[k] = tu_mono_ms();
		pthread_mutex_unlock(&fk->mu);
		uint16_t err = k < fk->refuse ? fk->err : 0;
		pp[0] = (struct proto_produce_resp_part){
			req.produce.topics[0].parts[0].partition, err,
			pstr_c(err ? "no space left on device" : ""), 0, 0 };
		pt[0] = (struct proto_produce_resp_topic){ req.produce.topics[0].name, 1, pp };
		resp.produce = (struct proto_produce_resp){ 1, pt };
		if (req.produce.acks == 0)
			return;
		break;
	}
	default:
		fail_msg("fake broker: API %u not expected", h.api);
	}
	struct pw w;
	pw_init_dyn(&w, 256, 1 << 20);
	size_t start = proto_resp_begin(&w, h.correlation_id, 0, NULL);
	proto_encode_response(&w, h.api, &resp);
	proto_frame_end(&w, start);
	assert_false(w.failed);
	fake_write(fd, w.buf, w.len);
	pw_free(&w);
}

static void *fake_main(void *arg)
{
	struct fake *fk = arg;
	size_t cap = 1 << 20, len = 0;
	uint8_t *buf = malloc(cap);
	int fd = -1;
	while (!fake_stopping(fk)) {
		struct pollfd pf = { fd >= 0 ? fd : fk->lfd, POLLIN, 0 };
		if (poll(&pf, 1, 20) <= 0)
			continue;
		if (fd < 0) {
			fd = accept(fk->lfd, NULL, NULL);
			len = 0;
			continue;
		}
		ssize_t n = read(fd, buf + len, cap - len);
		if (n <= 0) {
			close(fd);
			fd = -1;
			continue;
		}
		len += (size_t)n;
		uint32_t flen;
		size_t off = 0;
		while (proto_frame_peek(buf + off, len - off, FRAME_SIZE_MIN_REQ, FRAME_SIZE_HARD_MAX,
					&flen) == 0) {
			fake_answer(fk, fd, buf + off, flen);
			off += flen;
		}
		memmove(buf, buf + off, len - off);
		len -= off;
		assert_true(len < cap);
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static struct fake *fake_start(uint16_t err, uint32_t refuse)
{
	struct fake *fk = calloc(1, sizeof(*fk));
	assert_non_null(fk);
	pthread_mutex_init(&fk->mu, NULL);
	fk->err = err;
	fk->refuse = refuse;
	fk->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	assert_int_equal(bind(fk->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fk->lfd, 4), 0);
	assert_int_equal(getsockname(fk->lfd, (struct sockaddr *)&sa, &sl), 0);
	snprintf(fk->addr, sizeof(fk->addr), "127.0.0.1:%u", ntohs(sa.sin_port));
	assert_int_equal(pthread_create(&fk->thread, NULL, fake_main, fk), 0);
	return fk;
}

static void fake_stop(struct fake *fk)
{
	pthread_mutex_lock(&fk->mu);
	fk->stop = true;
	pthread_mutex_unlock(&fk->mu);
	pthread_join(fk->thread, NULL);
	close(fk->lfd);
	pthread_mutex_destroy(&fk->mu);
	free(fk);
}

/* A producer of the fake broker's, with the settings in kv. */
static struct ringmq_producer *fake_producer(struct fake *fk, struct track *t,
					     const char *const *kv)
{
	struct fx f = { .cfg = ringmq_config_new() };
	char err[256];
	assert_int_equal(ringmq_config_set(f.cfg, "bootstrap.servers", fk->addr, err,
					   sizeof(err)), 0);
	struct ringmq_producer *p = producer(&f, t, kv);
	ringmq_config_free(f.cfg);
	return p;
}

static bool wait_reports(struct track *t, size_t n, int timeout_ms)
{
	int64_t deadline = tu_mono_ms() + timeout_ms;
	while (track_total(t) < n && tu_mono_ms() < deadline)
		tu_sleep_ms(5);
	return track_total(t) >= n;
}

/* After a retriable error (a full disk) the producer sends the partition's
 * batches again only after a back-off that doubles from
 * reconnect.backoff.ms up to reconnect.backoff.max.ms, not at once. */
static void test_retry_backoff(void **state)
{
	(void)state;
	struct fake *fk = fake_start(ERR_DISK_FULL, 4);
	struct track *t = track_new(1);
	const char *kv[] = { "linger.ms", "0", "reconnect.backoff.ms", "100",
			     "reconnect.backoff.max.ms", "250", NULL };
	struct ringmq_producer *p = fake_producer(fk, t, kv);
	int64_t t0 = tu_mono_ms();
	assert_int_equal(produce_n(p, "bk", 0, 0, NULL), 0);
	assert_true(wait_reports(t, 1, 10000));
	int64_t took = tu_mono_ms() - t0;
	ringmq_producer_free(p);
	assert_int_equal(t->reports[0], 1);
	assert_int_equal(t->err[0], 0);
	pthread_mutex_lock(&fk->mu);
	size_t n = fk->nproduce;
	int64_t gap[4];
	for (size_t k = 0; k < 4 && k + 1 < n; k++)
		gap[k] = fk->at[k + 1] - fk->at[k];
	pthread_mutex_unlock(&fk->mu);
	/* Four refusals, then the one stored: no request in between. */
	assert_int_equal(n, 5);
	printf("      retries after %" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
	       " ms; delivered in %" PRId64 " ms\n", gap[0], gap[1], gap[2], gap[3], took);
	const int64_t want[4] = { 100, 200, 250, 250 };
	for (size_t k = 0; k < 4; k++)
		if (gap[k] < want[k] - 2) /* ms clocks: rounding */
			fail_msg("retry %zu came %" PRId64 " ms after the refusal, before its "
				 "%" PRId64 " ms back-off", k + 1, gap[k], want[k]);
	track_free(t);
	fake_stop(fk);
}

/* A disk that stays full: the producer retries at its back-off's pace (a few
 * requests, not thousands) until delivery.timeout.ms, and the report says
 * why the message was not stored, not merely that time ran out. */
static void test_disk_full_reported(void **state)
{
	(void)state;
	struct fake *fk = fake_start(ERR_DISK_FULL, UINT32_MAX);
	struct track *t = track_new(1);
	const char *kv[] = { "linger.ms", "0", "reconnect.backoff.ms", "100",
			     "reconnect.backoff.max.ms", "400", "delivery.timeout.ms", "1500",
			     NULL };
	struct ringmq_producer *p = fake_producer(fk, t, kv);
	assert_int_equal(produce_n(p, "bk", 0, 0, NULL), 0);
	assert_true(wait_reports(t, 1, 10000));
	ringmq_producer_free(p);
	assert_int_equal(t->reports[0], 1);
	if (t->err[0] != RINGMQ_ERR_DISK_FULL)
		fail_msg("reported \"%s\", not \"%s\"", ringmq_strerror(t->err[0]),
			 ringmq_strerror(RINGMQ_ERR_DISK_FULL));
	pthread_mutex_lock(&fk->mu);
	size_t n = fk->nproduce;
	pthread_mutex_unlock(&fk->mu);
	/* 0, 100, 300, 700, 1100, 1500 ms, and one at the expiry at most. */
	printf("      %zu produce requests in 1.5 s of a full disk\n", n);
	assert_true(n >= 4 && n <= 8);
	track_free(t);
	fake_stop(fk);
}

/* ---- many threads ---- */

#define THREADS 8
#define PER_THREAD 20000

struct sender {
	struct ringmq_producer *p;
	size_t id;
	int err;
	size_t at;
};

static void *send_main(void *arg)
{
	struct sender *sd = arg;
	for (size_t k = 0; k < PER_THREAD; k++) {
		size_t i = sd->id * PER_THREAD + k;
		char key[24];
		snprintf(key, sizeof(key), "t%zu-%zu", sd->id, k % 8);
		int ret = produce_n(sd->p, "threads", RINGMQ_PARTITION_ANY, i, key);
		if (ret != 0) {
			sd->err = ret;
			sd->at = k;
			break;
		}
	}
	return NULL;
}

static void test_many_threads(void **state)
{
	struct fx *f = *state;
	create_topic(f, "threads", 4, NULL, NULL);
	size_t n = THREADS * PER_THREAD;
	struct track *t = track_new(n);
	struct ringmq_producer *p = producer(f, t, NULL);
	pthread_t th[THREADS];
	struct sender sd[THREADS];
	for (size_t i = 0; i < THREADS; i++) {
		sd[i] = (struct sender){ p, i, 0, 0 };
		assert_int_equal(pthread_create(&th[i], NULL, send_main, &sd[i]), 0);
	}
	for (size_t i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	for (size_t i = 0; i < THREADS; i++)
		if (sd[i].err)
			fail_msg("thread %zu: message %zu: %s", i, sd[i].at,
				 ringmq_strerror(sd[i].err));
	assert_int_equal(ringmq_producer_flush(p, 30000), 0);
	ringmq_producer_free(p);
	assert_delivered_once(t, 0, n);
	struct seen s;
	read_back(f, "threads", 4, &s, n, PER_THREAD);
	assert_exactly_once(&s, t);
	assert_int_equal(s.total, n);
	seen_free(&s);
	track_free(t);
}

/* ---- the memory bound and an absent broker ---- */

/* Produces until QUEUE_FULL; returns how many were taken, *last_ms the time
 * the failing call took. */
static size_t fill(struct ringmq_producer *p, const char *topic, size_t first, int64_t *last_ms)
{
	for (size_t i = first; i < first + 100000; i++) {
		int64_t t0 = tu_mono_ms();
		int ret = produce_n(p, topic, 0, i, NULL);
		*last_ms = tu_mono_ms() - t0;
		if (ret == RINGMQ_ERR_QUEUE_FULL)
			return i - first;
		if (ret != 0)
			fail_msg("produce %zu: %s", i, ringmq_strerror(ret));
	}
	fail_msg("100000 messages taken with buffer.memory 64 KiB");
	return 0;
}

static void test_buffer_full(void **state)
{
	struct fx *f = *state;
	create_topic(f, "full", 1, NULL, NULL);
	struct track *ta = track_new(200000);
	struct track *tb = track_new(200000);
	const char *kva[] = { "buffer.memory", "65536", "batch.size", "8192", "linger.ms", "1000",
			      "block.on.buffer.full", "false", "delivery.timeout.ms", "3000",
			      "reconnect.backoff.max.ms", "200", NULL };
	const char *kvb[] = { "buffer.memory", "65536", "batch.size", "8192", "linger.ms", "1000",
			      "block.on.buffer.full", "true", "max.block.ms", "200",
			      "delivery.timeout.ms", "3000", "reconnect.backoff.max.ms", "200",
			      NULL };
	struct ringmq_producer *a = producer(f, ta, kva);
	struct ringmq_producer *b = producer(f, tb, kvb);
	/* Both know the topic; then the broker goes away. */
	assert_int_equal(produce_n(a, "full", 0, 0, NULL), 0);
	assert_int_equal(produce_n(b, "full", 0, 0, NULL), 0);
	assert_int_equal(ringmq_producer_flush(a, 10000), 0);
	assert_int_equal(ringmq_producer_flush(b, 10000), 0);
	assert_int_equal(tb_stop(&f->b), 0);

	int64_t took;
	int64_t t0 = tu_mono_ms();
	size_t na = fill(a, "full", 1, &took);
	assert_true(took < 100); /* not blocking */
	/* 64 KiB of 8 KiB batches: 7, with 76 messages each. */
	assert_true(na >= 7 * 70 && na <= 65536 / 100);
	assert_int_equal(ringmq_producer_outstanding(a), na);
	/* The queue stays full while nothing can be sent. */
	assert_int_equal(produce_n(a, "full", 0, 1 + na, NULL), RINGMQ_ERR_QUEUE_FULL);

	int64_t t1 = tu_mono_ms();
	assert_int_equal(ringmq_producer_flush(a, 300), RINGMQ_ERR_TIMEOUT);
	int64_t fl = tu_mono_ms() - t1;
	assert_true(fl >= 290 && fl < 2000);

	size_t nb = fill(b, "full", 1, &took);
	assert_true(nb >= 7 * 70 && nb <= 65536 / 100);
	if (took < 180 || took > 1500)
		fail_msg("blocking produce returned QUEUE_FULL after %" PRId64 " ms, not ~200",
			 took);
	assert_true(tu_mono_ms() - t0 < 2500); /* nothing has expired yet */
	assert_int_equal(ta->total, 1);
	assert_int_equal(tb->total, 1);

	/* delivery.timeout.ms (3 s) fails what could not be sent and frees
	 * the memory: producing works again (into the buffer). */
	int64_t deadline = tu_mono_ms() + 8000;
	while (track_total(ta) < na + 1 && tu_mono_ms() < deadline)
		tu_sleep_ms(10);
	assert_int_equal(track_total(ta), na + 1);
	for (size_t i = 1; i <= na; i++) {
		assert_int_equal(ta->reports[i], 1);
		assert_int_equal(ta->err[i], RINGMQ_ERR_TIMEOUT);
		assert_int_equal(ta->off[i], -1);
	}
	assert_int_equal(ringmq_producer_outstanding(a), 0);
	assert_int_equal(produce_n(a, "full", 0, 100000, NULL), 0);

	/* Freeing producers with undeliverable messages reports each of
	 * them, with an error, within delivery.timeout.ms. */
	int64_t t2 = tu_mono_ms();
	ringmq_producer_free(a);
	ringmq_producer_free(b);
	int64_t freed = tu_mono_ms() - t2;
	if (freed > 3000 + 1500)
		fail_msg("freeing took %" PRId64 " ms, delivery.timeout.ms is 3000", freed);
	assert_int_equal(ta->reports[100000], 1);
	assert_int_not_equal(ta->err[100000], 0);
	assert_int_equal(tb->total, nb + 1);
	for (size_t i = 1; i <= nb; i++) {
		assert_int_equal(tb->reports[i], 1);
		assert_int_not_equal(tb->err[i], 0);
	}
	track_free(ta);
	track_free(tb);
}

/* No broker at all: produce cannot learn the partitions and says so after
 * max.block.ms; flush and free do not hang. */
static void test_unreachable(void **state)
{
	(void)state;
	struct ringmq_config *cfg = ringmq_config_new();
	char err[256];
	struct track *t = track_new(4);
	assert_int_equal(ringmq_config_set(cfg, "bootstrap.servers", "127.0.0.1:1", err,
					   sizeof(err)), 0);
	assert_int_equal(ringmq_config_set(cfg, "max.block.ms", "300", err, sizeof(err)), 0);
	ringmq_config_set_delivery_cb(cfg, on_delivery, t);
	struct ringmq_producer *p = ringmq_producer_new(cfg, err, sizeof(err));
	assert_non_null(p);
	int64_t t0 = tu_mono_ms();
	int ret = produce_n(p, "anything", RINGMQ_PARTITION_ANY, 0, NULL);
	int64_t took = tu_mono_ms() - t0;
	assert_int_equal(ret, RINGMQ_ERR_TRANSPORT);
	assert_true(took >= 290 && took < 2000);
	assert_int_equal(ringmq_producer_outstanding(p), 0);
	assert_int_equal(ringmq_producer_flush(p, 100), 0);
	t0 = tu_mono_ms();
	ringmq_producer_free(p);
	assert_true(tu_mono_ms() - t0 < 2000);
	assert_int_equal(t->total, 0);
	ringmq_config_free(cfg);
	track_free(t);
}

/* ---- the topic's max.message.bytes ---- */

/* Produces messages [from, to) of VALUE_LEN bytes, keyless (sticky). */
static void produce_range(struct ringmq_producer *p, const char *topic, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		assert_int_equal(produce_n(p, topic, RINGMQ_PARTITION_ANY, i, NULL), 0);
}

/* No stored batch of the topic is larger than `limit`. */
static void assert_batches_within(struct fx *f, const char *topic, uint32_t nparts,
				  uint32_t limit)
{
	for (uint32_t i = 0; i < nparts; i++) {
		struct batches bs;
		count_batches(f, topic, i, &bs);
		if (bs.count > 0 && bs.max_len > limit)
			fail_msg("%s[%u]: a batch of %u bytes, over max.message.bytes %u", topic, i,
				 bs.max_len, limit);
	}
}

/* A topic whose max.message.bytes is far below batch.size: the producer
 * builds batches the topic takes (it asks for the setting with the
 * metadata), and every message is stored once, in order. */
static void test_topic_limit_small(void **state)
{
	struct fx *f = *state;
	const char *compressions[] = { "none", "lz4" };
	for (int c = 0; c < 2; c++) {
		char topic[32];
		snprintf(topic, sizeof(topic), "small-%s", compressions[c]);
		create_topic(f, topic, 2, "max.message.bytes", "4096");
		size_t n = 5000;
		struct track *t = track_new(n);
		const char *kv[] = { "batch.size", "262144", "linger.ms", "20", "compression",
				     compressions[c], NULL };
		struct ringmq_producer *p = producer(f, t, kv);
		produce_range(p, topic, 0, n);
		assert_int_equal(ringmq_producer_flush(p, 20000), 0);
		ringmq_producer_free(p);
		if (t->errors)
			fail_msg("%s: %zu of %zu failed, e.g. %s", topic, t->errors, n, t->errstr);
		assert_delivered_once(t, 0, n);
		struct seen s;
		read_back(f, topic, 2, &s, n, n); /* one stream: in order per partition */
		assert_exactly_once(&s, t);
		seen_free(&s);
		track_free(t);
		assert_batches_within(f, topic, 2, 4096);
	}
	/* Known up front: the broker refused nothing. */
	assert_int_equal(metric(f, PRODUCE_ERRORS), 0);
}

/* The topic's max.message.bytes is lowered under a running producer that
 * knows the old one: the broker refuses its large batches (many in flight,
 * idempotent), and the producer splits them, learns the new limit and sends
 * again: nothing lost, nothing twice, order kept, no error reported. */
static void test_topic_limit_lowered(void **state)
{
	struct fx *f = *state;
	const char *compressions[] = { "none", "lz4" };
	for (int c = 0; c < 2; c++) {
		char topic[32];
		snprintf(topic, sizeof(topic), "shrink-%s", compressions[c]);
		create_topic(f, topic, 1, NULL, NULL);
		size_t n = 8000, q = 1000;
		struct track *t = track_new(n);
		const char *kv[] = { "batch.size", "65536", "linger.ms", "5", "compression",
				     compressions[c], NULL };
		t->gate = true;
		t->gate_at = q - 1;
		struct ringmq_producer *p = producer(f, t, kv);
		produce_range(p, topic, 0, q);
		/* The I/O thread waits in the report of message q-1 while the
		 * limit is lowered and the rest queue up in full batches: then
		 * many go at once, several to a request, and all are refused. */
		ringmq_producer_flush(p, 0);
		pthread_mutex_lock(&t->mu);
		while (!t->gate_hit)
			pthread_cond_wait(&t->cv, &t->mu);
		pthread_mutex_unlock(&t->mu);
		char err[256];
		struct ringmq_kv cfg = { "max.message.bytes", "4096" };
		assert_int_equal(ringmq_topic_alter(f->admin, topic, 0, &cfg, 1, err, sizeof(err)),
				 0);
		long long refused = metric(f, PRODUCE_ERRORS);
		produce_range(p, topic, q, n);
		pthread_mutex_lock(&t->mu);
		t->gate_open = true;
		pthread_cond_broadcast(&t->cv);
		pthread_mutex_unlock(&t->mu);
		assert_int_equal(ringmq_producer_flush(p, 30000), 0);
		ringmq_producer_free(p);
		refused = metric(f, PRODUCE_ERRORS) - refused;
		print_message("      %s: %lld partition answers refused before the split\n", topic,
			      refused);
		assert_true(refused > 0); /* the path under test was taken */
		if (t->errors)
			fail_msg("%s: %zu of %zu failed, e.g. %s", topic, t->errors, n, t->errstr);
		assert_delivered_once(t, 0, n);
		struct seen s;
		read_back(f, topic, 1, &s, n, n);
		assert_exactly_once(&s, t);
		seen_free(&s);
		track_free(t);
	}
}

/* A broker that refuses batches as too large without naming its limit: the
 * producer halves them until they pass. */
static void test_too_large_halved(void **state)
{
	(void)state;
	struct fake *fk = fake_start(ERR_BATCH_TOO_LARGE, 5);
	size_t n = 400;
	struct track *t = track_new(n);
	const char *kv[] = { "linger.ms", "50", "batch.size", "262144", NULL };
	struct ringmq_producer *p = fake_producer(fk, t, kv);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(produce_n(p, "halves", 0, i, NULL), 0);
	assert_true(wait_reports(t, n, 20000));
	ringmq_producer_free(p);
	if (t->errors)
		fail_msg("%zu of %zu failed, e.g. %s", t->errors, n, t->errstr);
	assert_delivered_once(t, 0, n);
	pthread_mutex_lock(&fk->mu);
	assert_true(fk->nproduce > 5);
	pthread_mutex_unlock(&fk->mu);
	track_free(t);
	fake_stop(fk);
}

/* One message larger than the topic's max.message.bytes fails alone, with
 * BATCH_TOO_LARGE and a reason that names the limit; the small ones around
 * it are stored. */
static void test_record_too_large_for_topic(void **state)
{
	struct fx *f = *state;
	create_topic(f, "tiny", 1, "max.message.bytes", "4096");
	size_t n = 3000, big_at = 1500;
	struct track *t = track_new(n);
	const char *kv[] = { "batch.size", "262144", "linger.ms", "5", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	char *big = malloc(6000);
	tu_make_value(big, 6000, big_at);
	for (size_t i = 0; i < n; i++) {
		if (i == big_at)
			assert_int_equal(ringmq_produce(p, "tiny", 0, NULL, 0, big, 6000, NULL, 0, 0,
							(void *)(uintptr_t)i), 0);
		else
			assert_int_equal(produce_n(p, "tiny", 0, i, NULL), 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 20000), 0);
	ringmq_producer_free(p);
	free(big);
	assert_int_equal(t->errors, 1);
	assert_int_equal(t->reports[big_at], 1);
	assert_int_equal(t->err[big_at], RINGMQ_ERR_BATCH_TOO_LARGE);
	if (strstr(t->errstr, "max.message.bytes 4096") == NULL)
		fail_msg("the reason does not name the limit: %s", t->errstr);
	print_message("      %s\n", t->errstr);
	assert_delivered_once(t, 0, big_at);
	assert_delivered_once(t, big_at + 1, n);
	struct seen s;
	read_back(f, "tiny", 1, &s, n, n);
	size_t missing = 0, twice = 0;
	for (size_t i = 0; i < n; i++) {
		missing += i != big_at && s.count[i] == 0;
		twice += s.count[i] > 1 || (i == big_at && s.count[i] > 0);
	}
	if (missing || twice || s.foreign)
		fail_msg("in the log: %zu missing, %zu twice or refused, %zu foreign", missing,
			 twice, s.foreign);
	seen_free(&s);
	track_free(t);
}

/* ---- a broker killed and restarted ---- */

static void test_reconnect_after_kill9(void **state)
{
	struct fx *f = *state;
	create_topic(f, "phoenix", 2, NULL, NULL);
	size_t n = 20000, q = n / 4;
	struct track *t = track_new(n);
	const char *kv[] = { "reconnect.backoff.ms", "20", "reconnect.backoff.max.ms", "200",
			     "linger.ms", "2", NULL };
	struct ringmq_producer *p = producer(f, t, kv);
	for (size_t i = 0; i < q; i++)
		assert_int_equal(produce_n(p, "phoenix", RINGMQ_PARTITION_ANY, i, NULL), 0);
	assert_int_equal(ringmq_producer_flush(p, 20000), 0);
	assert_delivered_once(t, 0, q);

	/* Killed with messages in flight; more come while it is down. */
	for (size_t i = q; i < 2 * q; i++)
		assert_int_equal(produce_n(p, "phoenix", RINGMQ_PARTITION_ANY, i, NULL), 0);
	tb_kill9(&f->b);
	for (size_t i = 2 * q; i < 3 * q; i++)
		assert_int_equal(produce_n(p, "phoenix", RINGMQ_PARTITION_ANY, i, NULL), 0);
	tu_sleep_ms(300);
	assert_true(ringmq_producer_outstanding(p) > 0);

	/* Same data, same port: the producer finds it again by itself. */
	char listen[80];
	snprintf(listen, sizeof(listen), "%s", f->b.addr);
	const char *extra[] = { "--listen", listen, NULL };
	assert_int_equal(tb_start(&f->b, f->b.dir, extra), 0);
	assert_string_equal(f->b.addr, listen);
	for (size_t i = 3 * q; i < n; i++)
		assert_int_equal(produce_n(p, "phoenix", RINGMQ_PARTITION_ANY, i, NULL), 0);
	int ret = ringmq_producer_flush(p, 30000);
	if (ret != 0)
		fail_msg("flush after the restart: %s, %zu outstanding", ringmq_strerror(ret),
			 ringmq_producer_outstanding(p));
	ringmq_producer_free(p);
	assert_delivered_once(t, 0, n);

	/* Everything is there once, where it was reported: batches appended
	 * just before the kill but not acknowledged are sent again, and the
	 * restarted broker, which restores idempotent producers' state from
	 * its log, recognises them. */
	connect_admin(f);
	struct seen s;
	read_back(f, "phoenix", 2, &s, n, 0);
	assert_exactly_once(&s, t);
	seen_free(&s);
	track_free(t);
}

/* A clean broker restart: the broker acknowledges what it appended before
 * it closes, so an idempotent producer sends nothing twice. */
struct steady {
	struct ringmq_producer *p;
	size_t n;
	size_t sent; /* atomically read by the main thread */
	int err;
};

static void *steady_main(void *arg)
{
	struct steady *st = arg;
	for (size_t i = 0; i < st->n; i++) {
		int ret = produce_n(st->p, "calm", RINGMQ_PARTITION_ANY, i, NULL);
		if (ret != 0) {
			st->err = ret;
			break;
		}
		__atomic_store_n(&st->sent, i + 1, __ATOMIC_RELEASE);
		if (i % 50 == 49)
			tu_sleep_ms(1);
	}
	return NULL;
}

static void test_graceful_restart_no_duplicates(void **state)
{
	struct fx *f = *state;
	create_topic(f, "calm", 2, NULL, NULL);
	static struct steady st; /* the sender outlives a failed assertion */
	st = (struct steady){ .n = 30000 };
	struct track *t = track_new(st.n);
	const char *kv[] = { "reconnect.backoff.ms", "20", "reconnect.backoff.max.ms", "100",
			     "linger.ms", "1", NULL };
	st.p = producer(f, t, kv);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, steady_main, &st), 0);
	int64_t deadline = tu_mono_ms() + 20000;
	while (__atomic_load_n(&st.sent, __ATOMIC_ACQUIRE) < st.n / 3 && tu_mono_ms() < deadline)
		tu_sleep_ms(1);
	size_t before = track_total(t);
	assert_int_equal(tb_stop(&f->b), 0);
	char listen[80];
	snprintf(listen, sizeof(listen), "%s", f->b.addr);
	const char *extra[] = { "--listen", listen, NULL };
	assert_int_equal(tb_start(&f->b, f->b.dir, extra), 0);
	pthread_join(th, NULL);
	if (st.err)
		fail_msg("produce: %s", ringmq_strerror(st.err));
	assert_int_equal(ringmq_producer_flush(st.p, 30000), 0);
	ringmq_producer_free(st.p);
	assert_delivered_once(t, 0, st.n);
	assert_true(before > 0 && before < st.n);
	connect_admin(f);
	struct seen s;
	read_back(f, "calm", 2, &s, st.n, st.n);
	assert_exactly_once(&s, t);
	seen_free(&s);
	track_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_linger_batches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_small_batches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_message_size_limits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_key_partitioning, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sticky_keyless, setup, teardown),
		cmocka_unit_test_setup_teardown(test_partition_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_acks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idempotent_one_partition, setup_drop,
						teardown),
		cmocka_unit_test_setup_teardown(test_idempotent_three_partitions, setup_drop,
						teardown),
		cmocka_unit_test_setup_teardown(test_idempotent_many_in_flight, setup_drop,
						teardown),
		cmocka_unit_test_setup_teardown(test_delivery_timeout_without_replies,
						setup_drop_all, teardown),
		cmocka_unit_test_setup_teardown(test_not_idempotent_duplicates, setup_drop,
						teardown),
		cmocka_unit_test_setup_teardown(test_not_idempotent_one_in_flight, setup_drop,
						teardown),
		cmocka_unit_test_setup_teardown(test_rejected_batch_no_duplicates, setup, teardown),
		cmocka_unit_test_setup_teardown(test_packed_batches_one_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_topic_limit_small, setup, teardown),
		cmocka_unit_test_setup_teardown(test_topic_limit_lowered, setup, teardown),
		cmocka_unit_test(test_too_large_halved),
		cmocka_unit_test_setup_teardown(test_record_too_large_for_topic, setup, teardown),
		cmocka_unit_test(test_retry_backoff),
		cmocka_unit_test(test_disk_full_reported),
		cmocka_unit_test_setup_teardown(test_many_threads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_buffer_full, setup, teardown),
		cmocka_unit_test(test_unreachable),
		cmocka_unit_test_setup_teardown(test_reconnect_after_kill9, setup, teardown),
		cmocka_unit_test_setup_teardown(test_graceful_restart_no_duplicates, setup,
						teardown),
	};
	/* TEST_FILTER=test_acks runs only the tests matching the pattern. */
	if (getenv("TEST_FILTER"))
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
