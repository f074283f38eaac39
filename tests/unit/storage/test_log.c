/* test_log.c — the partition log: round trips across many rolls, lookups by
 * offset and time at every boundary, retention, reopen, flush policies. */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "storage/batch.h"
#include "storage/log.h"
#include "tests/unit/logcheck.h"
#include "tests/unit/testutil.h"

struct fixture {
	struct tu_env t;
	char *dir;
	struct log_config cfg;
	struct log *log;
	struct model m;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	tu_env_init(&f->t);
	f->dir = tu_tmpdir("log");
	tu_config(&f->cfg, 2048);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	if (f->log)
		log_close(f->log);
	tu_env_fini(&f->t);
	tu_rmtree(f->dir);
	free(f->dir);
	model_free(&f->m);
	free(f);
	return 0;
}

static void open_log(struct fixture *f)
{
	struct log_recovery rep;
	assert_int_equal(log_open(f->t.env, f->dir, &f->cfg, &f->log, &rep), 0);
	assert_null(rep.truncated_why);
}

/* After a reopen the last segment's data may be only in the page cache (a
 * kill -9 leaves it there): a flush-always log shows it once the first
 * fdatasync completes, so tests that read right away sync first. */
static void reopen(struct fixture *f)
{
	assert_int_equal(log_close(f->log), 0);
	f->log = NULL;
	open_log(f);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(log_visible_end(f->log), log_end(f->log));
}

/* Appends one batch and records it in the model. */
static uint64_t append(struct fixture *f, uint32_t count, uint32_t vlen, int64_t ts0, bool lz4,
		       bool durable)
{
	uint32_t len;
	uint64_t seed = f->m.n + 1, base;
	uint8_t *b = tu_batch(count, vlen, seed, ts0, lz4, &len);
	assert_int_equal(log_append_sync(f->log, b, len, durable, &base), 0);
	free(b);
	model_add(&f->m, base, count, vlen, seed, ts0);
	return base;
}

/* Many small batches of mixed sizes over 2 KiB segments: dozens of rolls. */
static void fill(struct fixture *f, uint32_t batches)
{
	uint64_t s = 7;
	for (uint32_t i = 0; i < batches; i++) {
		uint32_t count = 1 + (uint32_t)(tu_rand(&s) % 5);
		uint32_t vlen = (uint32_t)(tu_rand(&s) % 120);
		uint64_t base = append(f, count, vlen, 1000000 + (int64_t)log_end(f->log) * 10,
				       i % 3 == 0, i % 7 == 0);
		assert_int_equal(base, f->m.n == 1 ? 0 : f->m.b[f->m.n - 2].base + f->m.b[f->m.n - 2].count);
	}
}

static void test_round_trip_many_rolls(void **state)
{
	struct fixture *f = *state;
	open_log(f);
	fill(f, 600);
	assert_int_equal(log_sync(f->log), 0);
	assert_true(log_segment_count(f->log) > 30);
	uint64_t end = log_end(f->log);
	assert_int_equal(log_visible_end(f->log), end);
	assert_int_equal(check_all(f->log, &f->m, 0), (long)end);
	/* Every offset, so every segment and index boundary is a lookup. */
	for (uint64_t o = 0; o < end; o++)
		assert_int_equal(check_offset(f->log, &f->m, o), 0);

	reopen(f);
	assert_int_equal(log_end(f->log), end);
	assert_int_equal(log_start(f->log), 0);
	assert_int_equal(check_all(f->log, &f->m, 0), (long)end);
	for (uint64_t o = 0; o < end; o += 3)
		assert_int_equal(check_offset(f->log, &f->m, o), 0);
	/* Appends continue where the log ended. */
	assert_int_equal(append(f, 2, 10, 5, false, true), end);
	reopen(f);
	assert_int_equal(log_end(f->log), end + 2);
	assert_int_equal(check_offset(f->log, &f->m, end + 1), 0);
}

static void test_read_range(void **state)
{
	struct fixture *f = *state;
	open_log(f);
	fill(f, 20);
	assert_int_equal(log_sync(f->log), 0);
	uint64_t end = log_end(f->log);
	struct log_slice s;
	assert_int_equal(log_read(f->log, end + 1, 4096, &s), -ERANGE);
	assert_int_equal(log_read(f->log, end, 4096, &s), 0);
	assert_int_equal(s.len, 0);
	/* A slice holds at least the whole first batch, even past max_bytes. */
	assert_int_equal(log_read(f->log, 0, 1, &s), 0);
	struct batch_hdr h;
	uint8_t buf[64];
	assert_int_equal(pread(s.fd, buf, sizeof(buf), (off_t)s.pos), 64);
	assert_int_equal(batch_parse(buf, sizeof(buf), &h), 0);
	assert_int_equal(s.len, h.length);
	log_slice_release(f->log, &s);
}

static void test_time_lookup(void **state)
{
	struct fixture *f = *state;
	open_log(f);
	fill(f, 300);
	assert_int_equal(log_sync(f->log), 0);
	uint64_t end = log_end(f->log);
	/* Batch i's records are stamped ts0 + k with ts0 = 1e6 + base * 10,
	 * so every timestamp is distinct and increasing with the offset. */
	for (uint32_t i = 0; i < f->m.n; i++) {
		const struct mbatch *b = &f->m.b[i];
		for (uint32_t k = 0; k < b->count; k++) {
			uint64_t o;
			assert_int_equal(log_offset_for_time(f->log, b->ts0 + k, &o), 0);
			assert_int_equal(o, b->base + k);
		}
		uint64_t o;
		assert_int_equal(log_offset_for_time(f->log, b->ts0 - 1, &o), 0);
		assert_int_equal(o, b->base);
	}
	uint64_t o;
	assert_int_equal(log_offset_for_time(f->log, 0, &o), 0);
	assert_int_equal(o, 0);
	assert_int_equal(log_offset_for_time(f->log, INT64_MAX, &o), 0);
	assert_int_equal(o, end);
	reopen(f);
	const struct mbatch *mid = &f->m.b[f->m.n / 2];
	assert_int_equal(log_offset_for_time(f->log, mid->ts0, &o), 0);
	assert_int_equal(o, mid->base);
}

static void test_retention_bytes(void **state)
{
	struct fixture *f = *state;
	open_log(f);
	fill(f, 300);
	assert_int_equal(log_sync(f->log), 0);
	uint64_t end = log_end(f->log);
	uint32_t segs = log_segment_count(f->log);
	struct log_config c = f->cfg;
	c.retention_bytes = 8192;
	assert_int_equal(log_set_config(f->log, &c), 0);
	f->cfg = c;
	assert_int_equal(log_tick_sync(f->log, log_visible_end(f->log) ? 2000000000000 : 0), 0);
	assert_true(log_segment_count(f->log) < segs);
	assert_true(log_size_bytes(f->log) >= 8192);
	assert_true(log_size_bytes(f->log) < 8192 + 2048 + 2048);
	uint64_t start = log_start(f->log);
	assert_true(start > 0);
	struct log_slice s;
	assert_int_equal(log_read(f->log, start - 1, 100, &s), -ERANGE);
	assert_int_equal(check_all(f->log, &f->m, start), (long)(end - start));
	reopen(f);
	assert_int_equal(log_start(f->log), start);
	assert_int_equal(log_end(f->log), end);
}

static void test_retention_time(void **state)
{
	struct fixture *f = *state;
	open_log(f);
	int64_t now = 1700000000000;
	int64_t day = 24 * 3600 * 1000;
	for (int i = 0; i < 60; i++) /* old: about 10 segments */
		append(f, 3, 100, now - 3 * day + i, false, false);
	uint64_t fresh_from = log_end(f->log);
	for (int i = 0; i < 60; i++)
		append(f, 3, 100, now - day / 2 + i, false, false);
	assert_int_equal(log_sync(f->log), 0);
	struct log_config c = f->cfg;
	c.retention_ms = day;
	assert_int_equal(log_set_config(f->log, &c), 0);
	assert_int_equal(log_tick_sync(f->log, now), 0);
	/* Whole old segments go; the one holding the first fresh batch stays. */
	assert_true(log_start(f->log) > 0);
	assert_true(log_start(f->log) <= fresh_from);
	assert_true(fresh_from - log_start(f->log) < 60);
	/* Everything expired: only the active segment remains. */
	assert_int_equal(log_tick_sync(f->log, now + 10 * day), 0);
	assert_int_equal(log_segment_count(f->log), 1);
	assert_true(check_all(f->log, &f->m, log_start(f->log)) > 0);
}

static void test_slice_outlives_retention(void **state)
{
	struct fixture *f = *state;
	open_log(f);
	fill(f, 100);
	assert_int_equal(log_sync(f->log), 0);
	struct log_slice s;
	assert_int_equal(log_read(f->log, 0, 512, &s), 0);
	struct log_config c = f->cfg;
	c.retention_bytes = 0;
	assert_int_equal(log_set_config(f->log, &c), 0);
	assert_int_equal(log_tick_sync(f->log, 0), 0);
	assert_true(log_start(f->log) > 0);
	/* The segment is unlinked, but the pinned fd still reads it. */
	uint8_t buf[64];
	struct batch_hdr h;
	assert_int_equal(pread(s.fd, buf, sizeof(buf), (off_t)s.pos), 64);
	assert_int_equal(batch_parse(buf, sizeof(buf), &h), 0);
	assert_int_equal(h.base_offset, 0);
	log_slice_release(f->log, &s);
}

static void test_segment_ms_roll(void **state)
{
	struct fixture *f = *state;
	f->cfg.segment_bytes = 1 << 20;
	f->cfg.segment_ms = 1;
	open_log(f);
	append(f, 1, 10, 1, false, true);
	assert_int_equal(log_segment_count(f->log), 1);
	usleep(3000);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	assert_int_equal(log_tick_sync(f->log, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000), 0);
	append(f, 1, 10, 2, false, true);
	assert_int_equal(log_segment_count(f->log), 2);
	assert_int_equal(check_all(f->log, &f->m, 0), 2);
}

static void test_flush_policies(void **state)
{
	struct fixture *f = *state;
	f->cfg.flush = LOG_FLUSH_ALWAYS;
	open_log(f);
	append(f, 2, 10, 1, false, false);
	/* Written, not yet fdatasynced: readers of a flush-always log wait. */
	assert_int_equal(log_written_end(f->log), 2);
	assert_true(log_visible_end(f->log) <= log_durable_end(f->log));
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(log_visible_end(f->log), 2);

	struct log_config c = f->cfg;
	c.flush = LOG_FLUSH_NEVER;
	assert_int_equal(log_set_config(f->log, &c), 0);
	append(f, 2, 10, 2, false, false);
	assert_int_equal(log_visible_end(f->log), 4);
	assert_int_equal(log_written_end(f->log), 4);

	/* Reopened as flush-always: the last segment is not yet known to be
	 * on stable storage, so it is hidden until the first fdatasync. */
	assert_int_equal(log_close(f->log), 0);
	c.flush = LOG_FLUSH_ALWAYS;
	f->cfg = c;
	assert_int_equal(log_open(f->t.env, f->dir, &f->cfg, &f->log, NULL), 0);
	assert_int_equal(log_end(f->log), 4);
	assert_int_equal(log_visible_end(f->log), 0);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(log_visible_end(f->log), 4);
}

static void test_limits(void **state)
{
	struct fixture *f = *state;
	open_log(f);
	uint32_t len;
	uint8_t *b = tu_batch(40, 100, 1, 1, false, &len); /* > 2 KiB segment */
	uint64_t base;
	assert_true(len > f->cfg.segment_bytes);
	assert_int_equal(log_append(f->log, b, len, &base), -EMSGSIZE);
	free(b);
	assert_int_equal(log_end(f->log), 0);
	struct log_config c = f->cfg;
	c.segment_bytes = 10;
	const char *why;
	assert_int_equal(log_config_check(&c, &why), -EINVAL);
	assert_non_null(why);
	assert_int_equal(log_set_config(f->log, &c), -EINVAL);
}

static void test_staging_full(void **state)
{
	struct fixture *f = *state;
	struct ioq q;
	assert_int_equal(ioq_init(&q, 64), 0);
	struct log_env *env = log_env_new(&q, 1000); /* room for one batch */
	struct log *log;
	assert_int_equal(log_open(env, f->dir, &f->cfg, &log, NULL), 0);
	uint32_t len;
	uint8_t *b = tu_batch(5, 100, 1, 1, false, &len);
	uint64_t base;
	assert_int_equal(log_append(log, b, len, &base), 0);
	assert_int_equal(log_append(log, b, len, &base), -ENOBUFS);
	/* Once written, the staging memory is free again. */
	assert_int_equal(log_append_sync(log, b, len, false, &base), 0);
	assert_int_equal(base, 5);
	free(b);
	assert_int_equal(log_close(log), 0);
	log_env_free(env);
	ioq_exit(&q);
}

/* A power loss can drop unsynced pages in any order. If an index entry of a
 * later batch survived while an earlier batch was lost, recovery would start
 * past the loss and keep a hole that no reader could ever cross. Index
 * entries are written only for durable batches, so recovery scans from
 * before the loss and cuts there. */
static void test_power_loss_leaves_no_hole(void **state)
{
	struct fixture *f = *state;
	f->cfg.flush = LOG_FLUSH_NEVER;
	f->cfg.index_interval_bytes = 64; /* an entry per batch */
	f->cfg.segment_bytes = 1 << 20;  /* one active segment */
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The "machine": appends, lets the index writer run, dies. */
		struct tu_env t;
		tu_env_init(&t);
		struct log *log;
		if (log_open(t.env, f->dir, &f->cfg, &log, NULL) != 0)
			_exit(2);
		for (int i = 0; i < 8; i++) {
			uint32_t len;
			uint64_t base;
			uint8_t *b = tu_batch(4, 50, (uint64_t)i, i, false, &len);
			if (log_append_sync(log, b, len, false, &base) != 0)
				_exit(3);
			free(b);
		}
		if (log_tick_sync(log, 0) != 0)
			_exit(4);
		_exit(0);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* The page holding batch 0 never reached the disk. */
	char path[600];
	snprintf(path, sizeof(path), "%s/00000000000000000000.log", f->dir);
	uint32_t len;
	uint8_t *b = tu_batch(4, 50, 0, 0, false, &len);
	free(b);
	FILE *fp = fopen(path, "r+");
	assert_non_null(fp);
	uint8_t *zero = calloc(1, len);
	assert_int_equal(fwrite(zero, 1, len, fp), len);
	fclose(fp);
	free(zero);
	struct log_recovery rep;
	assert_int_equal(log_open(f->t.env, f->dir, &f->cfg, &f->log, &rep), 0);
	assert_int_equal(log_end(f->log), 0);
	assert_non_null(rep.truncated_why); /* the cut is reported, not silent */
}

/* Appends keep coming while a roll is underway: the segment being created
 * must still roll at segment.bytes instead of taking everything staged
 * meanwhile (which could also overflow the index's 32-bit positions). */
static void test_segments_bounded_during_roll(void **state)
{
	struct fixture *f = *state;
	f->cfg.segment_bytes = 4096;
	open_log(f);
	uint32_t len;
	uint8_t *b = tu_batch(4, 100, 1, 1, false, &len);
	for (int i = 0; i < 400; i++) { /* no waiting: all staged at once */
		uint64_t base;
		assert_int_equal(log_append(f->log, b, len, &base), 0);
		model_add(&f->m, base, 4, 100, 1, 1);
	}
	free(b);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(check_all(f->log, &f->m, 0), 1600);
	assert_int_equal(log_close(f->log), 0);
	f->log = NULL;
	DIR *d = opendir(f->dir);
	struct dirent *de;
	unsigned segments = 0;
	while ((de = readdir(d)) != NULL) {
		if (strstr(de->d_name, ".log") == NULL)
			continue;
		char path[600];
		snprintf(path, sizeof(path), "%s/%s", f->dir, de->d_name);
		segments++;
		/* The active segment stays preallocated at segment.bytes. */
		assert_true(tu_file_size(path) <= 4096);
	}
	closedir(d);
	assert_true(segments >= 400 * len / 4096);
	open_log(f);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(check_all(f->log, &f->m, 0), 1600);
}

/* On a flush-always log, data written without anyone waiting for durability
 * (acks=0/1) must still be fdatasynced and become visible. */
static void test_flush_always_syncs_unwaited_writes(void **state)
{
	struct fixture *f = *state;
	f->cfg.flush = LOG_FLUSH_ALWAYS;
	open_log(f);
	append(f, 3, 10, 1, false, false); /* waits for the write only */
	assert_int_equal(log_written_end(f->log), 3);
	assert_int_equal(log_tick_sync(f->log, 0), 0); /* runs what is due */
	assert_int_equal(log_durable_end(f->log), 3);
	assert_int_equal(log_visible_end(f->log), 3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip_many_rolls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_range, setup, teardown),
		cmocka_unit_test_setup_teardown(test_time_lookup, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retention_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_retention_time, setup, teardown),
		cmocka_unit_test_setup_teardown(test_slice_outlives_retention, setup, teardown),
		cmocka_unit_test_setup_teardown(test_segment_ms_roll, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_policies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_staging_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_power_loss_leaves_no_hole, setup, teardown),
		cmocka_unit_test_setup_teardown(test_segments_bounded_during_roll, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_always_syncs_unwaited_writes, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
