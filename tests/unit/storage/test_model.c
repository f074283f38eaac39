/* test_model.c — thousands of random appends, reads, time lookups, rolls,
 * retention passes, config changes, reopens and reopen-after-truncate,
 * checked against an in-memory model. Reproduce a failure with SEED=<n>. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>

#include "storage/batch.h"
#include "storage/log.h"
#include "storage/segment.h"
#include "tests/unit/logcheck.h"
#include "tests/unit/testutil.h"

#define OPS 4000

struct sim {
	struct tu_env t;
	char *dir;
	struct log_config cfg;
	struct log *log;
	struct model m;
	uint32_t *lens; /* batch lengths, parallel to m.b */
	uint32_t lens_cap;
	uint64_t rng;
	int64_t clock_ms;
	uint64_t end; /* what log_end must be: retention may empty the model */
	unsigned counts[8];
};

static void reopen(struct sim *s, struct log_recovery *rep)
{
	if (s->log)
		assert_int_equal(log_close(s->log), 0);
	assert_int_equal(log_open(s->t.env, s->dir, &s->cfg, &s->log, rep), 0);
	assert_int_equal(log_sync(s->log), 0);
}

static void check_marks(struct sim *s)
{
	struct log *log = s->log;
	assert_true(log_start(log) <= log_visible_end(log));
	assert_true(log_durable_end(log) <= log_written_end(log));
	assert_true(log_written_end(log) <= log_end(log));
	assert_int_equal(log_end(log), s->end);
	if (s->m.n > 0)
		assert_int_equal(s->end, s->m.b[s->m.n - 1].base + s->m.b[s->m.n - 1].count);
}

static void op_append(struct sim *s)
{
	uint32_t count = 1 + (uint32_t)(tu_rand(&s->rng) % 8);
	uint32_t vlen = (uint32_t)(tu_rand(&s->rng) % 200);
	bool lz4 = tu_rand(&s->rng) % 3 == 0;
	bool durable = tu_rand(&s->rng) % 2 == 0;
	uint64_t seed = tu_rand(&s->rng);
	/* Mostly increasing timestamps, sometimes a step back. */
	s->clock_ms += (int64_t)(tu_rand(&s->rng) % 50) - 5;
	uint32_t len;
	uint8_t *b = tu_batch(count, vlen, seed, s->clock_ms, lz4, &len);
	uint64_t base;
	int ret = log_append_sync(s->log, b, len, durable, &base);
	free(b);
	if (len > s->cfg.segment_bytes) {
		assert_int_equal(ret, -EMSGSIZE);
		return;
	}
	assert_int_equal(ret, 0);
	if (s->m.n == s->lens_cap) {
		s->lens_cap = s->lens_cap ? s->lens_cap * 2 : 256;
		s->lens = realloc(s->lens, s->lens_cap * sizeof(*s->lens));
	}
	s->lens[s->m.n] = len;
	model_add(&s->m, base, count, vlen, seed, s->clock_ms);
	assert_int_equal(base, s->end);
	s->end = base + count;
}

static void op_read(struct sim *s)
{
	assert_int_equal(log_sync(s->log), 0);
	uint64_t start = log_start(s->log), end = log_visible_end(s->log);
	if (end == start)
		return;
	uint64_t o = start + tu_rand(&s->rng) % (end - start);
	assert_int_equal(check_offset(s->log, &s->m, o), 0);
}

/* The answer the model gives: first record at or after the first batch
 * still in the log whose timestamp is >= ts. */
static uint64_t model_time(const struct sim *s, int64_t ts, uint64_t start, uint64_t end)
{
	for (uint32_t i = 0; i < s->m.n; i++) {
		const struct mbatch *b = &s->m.b[i];
		for (uint32_t k = 0; k < b->count; k++)
			if (b->base + k >= start && b->ts0 + (int64_t)k >= ts)
				return b->base + k;
	}
	return end;
}

static void op_time(struct sim *s)
{
	assert_int_equal(log_sync(s->log), 0);
	if (s->m.n == 0)
		return;
	const struct mbatch *b = &s->m.b[tu_rand(&s->rng) % s->m.n];
	int64_t ts = b->ts0 + (int64_t)(tu_rand(&s->rng) % 20) - 10;
	uint64_t got;
	assert_int_equal(log_offset_for_time(s->log, ts, &got), 0);
	uint64_t start = log_start(s->log);
	uint64_t want = model_time(s, ts, start, log_end(s->log));
	/* Timestamps may step back, so the log answers from the first
	 * segment (and index entry) whose newest record reaches ts: never
	 * later than the first such record, never before a record < ts that
	 * the index proves older. Check the strong property: got holds a
	 * record >= ts, and nothing between the model's answer and got is. */
	if (got < log_end(s->log)) {
		const struct mbatch *gb = model_find(&s->m, got);
		assert_non_null(gb);
		assert_true(gb->ts0 + (int64_t)(got - gb->base) >= ts);
	}
	assert_true(got >= want);
	for (uint64_t o = want; o < got; o++) {
		const struct mbatch *mb = model_find(&s->m, o);
		assert_non_null(mb);
		assert_true(mb->ts0 + (int64_t)(o - mb->base) < ts || o < start);
	}
}

static void op_retention(struct sim *s)
{
	struct log_config c = s->cfg;
	c.retention_bytes = (int64_t)(tu_rand(&s->rng) % 40000);
	c.retention_ms = -1;
	assert_int_equal(log_set_config(s->log, &c), 0);
	assert_int_equal(log_tick_sync(s->log, s->clock_ms), 0);
	c.retention_bytes = -1;
	assert_int_equal(log_set_config(s->log, &c), 0);
	uint64_t start = log_start(s->log);
	/* Drop whole batches below start from the model's front. */
	uint32_t drop = 0;
	while (drop < s->m.n && s->m.b[drop].base < start)
		drop++;
	if (drop > 0 && s->m.n > 0) {
		assert_true(s->m.b[drop < s->m.n ? drop : s->m.n - 1].base >= start ||
			    drop == s->m.n);
		memmove(s->m.b, s->m.b + drop, (s->m.n - drop) * sizeof(*s->m.b));
		memmove(s->lens, s->lens + drop, (s->m.n - drop) * sizeof(*s->lens));
		s->m.n -= drop;
	}
	assert_true(s->m.n == 0 || s->m.b[0].base == start);
}

static void op_config(struct sim *s)
{
	s->cfg.segment_bytes = 1024 + tu_rand(&s->rng) % 8192;
	s->cfg.index_interval_bytes = 64 + (uint32_t)(tu_rand(&s->rng) % 1024);
	s->cfg.preallocate = tu_rand(&s->rng) % 2;
	s->cfg.flush = (enum log_flush)(tu_rand(&s->rng) % 3);
	assert_int_equal(log_set_config(s->log, &s->cfg), 0);
}

/* The last segment of the directory: base offset and path. */
static uint64_t last_segment(struct sim *s, char *path, size_t cap)
{
	uint64_t last = 0;
	DIR *d = opendir(s->dir);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t base;
		const char *ext;
		if (seg_parse_name(de->d_name, &base, &ext) == 0 && strcmp(ext, ".log") == 0 &&
		    base >= last)
			last = base;
	}
	closedir(d);
	char name[SEG_NAME_MAX];
	seg_name(name, last, ".log");
	snprintf(path, cap, "%s/%s", s->dir, name);
	return last;
}

/* Close, cut the last segment at a random byte, reopen: exactly the batches
 * wholly before the cut survive. */
static void op_truncate(struct sim *s)
{
	assert_int_equal(log_close(s->log), 0);
	s->log = NULL;
	char path[512];
	uint64_t seg_base = last_segment(s, path, sizeof(path));
	uint32_t first = 0;
	while (first < s->m.n && s->m.b[first].base < seg_base)
		first++;
	uint64_t data = 0;
	for (uint32_t i = first; i < s->m.n; i++)
		data += s->lens[i];
	if (data == 0) {
		reopen(s, NULL);
		return;
	}
	uint64_t cut = tu_rand(&s->rng) % (data + 1);
	assert_int_equal(tu_truncate(path, cut), 0);
	uint64_t pos = 0;
	uint32_t keep = first;
	while (keep < s->m.n && pos + s->lens[keep] <= cut)
		pos += s->lens[keep++];
	s->m.n = keep;
	s->end = keep > first ? s->m.b[keep - 1].base + s->m.b[keep - 1].count : seg_base;
	struct log_recovery rep;
	reopen(s, &rep);
	if ((rep.truncated_why != NULL) != (pos != cut)) {
		printf("cut %s at %llu (batches end at %llu), seg base %llu, report: %s\n", path,
		       (unsigned long long)cut, (unsigned long long)pos,
		       (unsigned long long)seg_base, rep.truncated_why ? rep.truncated_why : "clean");
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "ls -l %s | tail -5", s->dir);
		if (system(cmd) != 0)
			printf("ls failed\n");
	}
	assert_int_equal(rep.truncated_why != NULL, pos != cut);
}

static void test_model(void **state)
{
	(void)state;
	struct sim s;
	memset(&s, 0, sizeof(s));
	s.rng = tu_seed("test_model");
	tu_env_init(&s.t);
	s.dir = tu_tmpdir("model");
	tu_config(&s.cfg, 4096);
	s.cfg.index_interval_bytes = 200;
	s.clock_ms = 1600000000000;
	reopen(&s, NULL);
	for (int i = 0; i < OPS; i++) {
		unsigned r = (unsigned)(tu_rand(&s.rng) % 100);
		unsigned kind = r < 55 ? 0 : r < 75 ? 1 : r < 85 ? 2 : r < 90 ? 3 : r < 94 ? 4 : r < 97 ? 5 : 6;
		s.counts[kind]++;
		switch (kind) {
		case 0: op_append(&s); break;
		case 1: op_read(&s); break;
		case 2: op_time(&s); break;
		case 3: op_retention(&s); break;
		case 4: op_config(&s); break;
		case 5: reopen(&s, NULL); break;
		case 6: op_truncate(&s); break;
		}
		check_marks(&s);
	}
	assert_int_equal(log_sync(s.log), 0);
	long n = check_all(s.log, &s.m, log_start(s.log));
	assert_int_equal(n, (long)(log_end(s.log) - log_start(s.log)));
	printf("# %d ops: %u appends, %u reads, %u time lookups, %u retention, %u config, "
	       "%u reopens, %u truncations; %u segments, offsets %llu..%llu\n",
	       OPS, s.counts[0], s.counts[1], s.counts[2], s.counts[3], s.counts[4], s.counts[5],
	       s.counts[6], log_segment_count(s.log), (unsigned long long)log_start(s.log),
	       (unsigned long long)log_end(s.log));
	assert_int_equal(log_close(s.log), 0);
	tu_env_fini(&s.t);
	tu_rmtree(s.dir);
	free(s.dir);
	free(s.lens);
	model_free(&s.m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
