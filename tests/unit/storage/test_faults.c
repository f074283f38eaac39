/* test_faults.c — the append pipeline under injected faults: completions
 * held back and delivered out of order, short writes, failed writes and
 * fdatasyncs, a failed segment start, and group commit. Checks invariants
 * (W) and (D) of storage/log_impl.h from the outside and the inside. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "storage/batch.h"
#include "storage/log.h"
#include "storage/log_impl.h"
#include "tests/unit/logcheck.h"
#include "tests/unit/testutil.h"

struct waiter {
	struct log_waiter w;
	struct log *log;
	bool durable;
	bool fired;
	int err;
};

struct fx {
	struct tu_env t;
	char *dir;
	struct log_config cfg;
	struct log *log;
	struct model m;
	struct ioq_fault fault;
	uint64_t rng;
	/* fault plan */
	unsigned hold_pct;     /* hold this % of data write completions */
	unsigned short_pct;    /* shorten this % of delivered data writes */
	int fail_write_at;     /* fail the Nth data write completion (1-based), 0: never */
	int fail_kind;         /* IOQ_FSYNC or IOQ_FALLOCATE to fail once; 0: none */
	int fail_err;
	unsigned data_writes, fsyncs, shortened;
	/* checks */
	uint64_t last_written_fired;
	unsigned order_violations;
};

static struct fx *g; /* for waiter callbacks */

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	tu_env_init(&f->t);
	f->dir = tu_tmpdir("faults");
	tu_config(&f->cfg, 64u << 20);
	f->cfg.max_writes_in_flight = 64;
	f->rng = tu_seed("test_faults");
	f->fault.seed = f->rng | 1;
	f->fault.arg = f;
	f->t.q.fault = &f->fault;
	g = f;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	f->t.q.fault = NULL;
	if (f->log)
		log_close(f->log);
	tu_env_fini(&f->t);
	tu_rmtree(f->dir);
	free(f->dir);
	model_free(&f->m);
	free(f);
	return 0;
}

static bool is_data_write(const struct ioq_op *op)
{
	return op->kind == IOQ_WRITE;
}

static bool hold(void *arg, const struct ioq_op *op, int res)
{
	struct fx *f = arg;
	(void)res;
	return is_data_write(op) && f->hold_pct && tu_rand(&f->rng) % 100 < f->hold_pct;
}

static void hook(void *arg, const struct ioq_op *op, int *res)
{
	struct fx *f = arg;
	if (op->kind == IOQ_FSYNC)
		f->fsyncs++;
	if (f->fail_kind && (int)op->kind == f->fail_kind) {
		*res = f->fail_err;
		f->fail_kind = 0;
		return;
	}
	if (!is_data_write(op) || *res <= 0)
		return;
	const struct wop *w = (const struct wop *)op;
	if (w->done + (uint32_t)*res < w->len)
		return; /* already a partial delivery of a resubmission */
	f->data_writes++;
	if (f->fail_write_at && (int)f->data_writes == f->fail_write_at) {
		*res = f->fail_err;
		return;
	}
	if (*res > 1 && f->short_pct && tu_rand(&f->rng) % 100 < f->short_pct) {
		/* The kernel wrote it all; saying less makes the log write the
		 * rest again, which rewrites the same bytes. */
		*res = 1 + (int)(tu_rand(&f->rng) % (uint64_t)(*res - 1));
		f->shortened++;
	}
}

static struct segment *active(struct log *log)
{
	return log->segs[log->nsegs - 1];
}

/* (W) from the inside: nothing held back may be below the written mark. */
static void check_w(struct fx *f)
{
	struct log *log = f->log;
	for (unsigned i = 0; i < f->fault.nheld; i++) {
		const struct ioq_op *op = f->fault.held[i].op;
		if (!is_data_write(op))
			continue;
		const struct wop *w = (const struct wop *)op;
		if (w->chunk->seg == active(log))
			assert_true(active(log)->written_pos <= w->file_pos);
	}
	assert_true(log_durable_end(log) <= log_written_end(log));
	assert_true(log_written_end(log) <= log_end(log));
}

static void waiter_fire(struct log_waiter *lw, int err)
{
	struct waiter *w = (struct waiter *)lw;
	assert_false(w->fired);
	w->fired = true;
	w->err = err;
	if (err != 0)
		return;
	if (w->durable) {
		/* (D): the fdatasync that completed was submitted after this
		 * batch was written (its target covers the batch). */
		assert_true(log_durable_end(w->log) > lw->offset);
		assert_true(w->log->sync_target > lw->offset);
	} else {
		assert_true(log_written_end(w->log) > lw->offset);
		if (lw->offset < g->last_written_fired)
			g->order_violations++;
		g->last_written_fired = lw->offset;
	}
}

static void open_log(struct fx *f)
{
	assert_int_equal(log_open(f->t.env, f->dir, &f->cfg, &f->log, NULL), 0);
}

/* One loop iteration: submit what is staged, reap completions, sometimes
 * release held completions. */
static void step(struct fx *f, bool release_all)
{
	log_env_flush(f->t.env);
	ioq_wait(&f->t.q, 0);
	check_w(f);
	if (release_all || tu_rand(&f->rng) % 4 == 0) {
		ioq_fault_release(&f->t.q, release_all ? IOQ_HELD_MAX
						      : 1 + (unsigned)(tu_rand(&f->rng) % 8));
		check_w(f);
	}
}

static void drain(struct fx *f)
{
	for (int i = 0; i < 100000 && (f->log->ops_inflight > 0 || f->fault.nheld > 0 ||
				       f->t.env->dirty != NULL); i++) {
		log_env_flush(f->t.env);
		ioq_fault_release(&f->t.q, IOQ_HELD_MAX);
		ioq_wait(&f->t.q, f->log->ops_inflight > f->fault.nheld ? 10 : 0);
		check_w(f);
	}
	assert_int_equal(f->log->ops_inflight, 0);
}

/* Appends n batches asynchronously, one write each, with written and
 * durable waiters; returns the waiters (2 per batch). */
static struct waiter *append_many(struct fx *f, int n, bool durable)
{
	struct waiter *ws = calloc((size_t)n * 2, sizeof(*ws));
	for (int i = 0; i < n; i++) {
		uint32_t len, count = 1 + (uint32_t)(tu_rand(&f->rng) % 4);
		uint32_t vlen = (uint32_t)(tu_rand(&f->rng) % 300);
		uint64_t seed = f->m.n + 1, base;
		uint8_t *b = tu_batch(count, vlen, seed, 1000 + i, i % 5 == 0, &len);
		int ret;
		while ((ret = log_append(f->log, b, len, &base)) == -ENOBUFS)
			step(f, true);
		assert_int_equal(ret, 0);
		free(b);
		model_add(&f->m, base, count, vlen, seed, 1000 + i);
		for (int k = 0; k < 2; k++) {
			struct waiter *w = &ws[2 * i + k];
			w->log = f->log;
			w->durable = k == 1;
			w->w.offset = base + count - 1;
			w->w.fn = waiter_fire;
			if (k == 0)
				log_wait_written(f->log, &w->w);
			else if (durable)
				log_wait_durable(f->log, &w->w);
			else
				w->fired = true;
		}
		/* Usually a write per append, so many are in flight at once. */
		if (tu_rand(&f->rng) % 8 != 0)
			step(f, false);
	}
	return ws;
}

static void test_out_of_order_and_short_writes(void **state)
{
	struct fx *f = *state;
	f->fault.hold = hold;
	f->fault.hook = hook;
	f->fault.shuffle = true;
	f->hold_pct = 50;
	f->short_pct = 30;
	open_log(f);
	int n = 3000;
	unsigned max_held = 0;
	struct waiter *ws = calloc((size_t)n * 2, sizeof(*ws));
	free(ws);
	ws = append_many(f, n, true);
	max_held = f->fault.nheld;
	drain(f);
	for (int i = 0; i < 2 * n; i++) {
		assert_true(ws[i].fired);
		assert_int_equal(ws[i].err, 0);
	}
	assert_int_equal(f->order_violations, 0);
	assert_true(f->shortened > 0);
	assert_int_equal(log_written_end(f->log), log_end(f->log));
	assert_int_equal(log_durable_end(f->log), log_end(f->log));
	long recs = check_all(f->log, &f->m, 0);
	assert_int_equal(recs, (long)log_end(f->log));
	printf("# %d appends, %u data writes, %u shortened, %u fdatasyncs, held %u at the end\n",
	       n, f->data_writes, f->shortened, f->fsyncs, max_held);
	free(ws);
	f->t.q.fault = NULL;
	assert_int_equal(log_close(f->log), 0);
	f->log = NULL;
	open_log(f);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(check_all(f->log, &f->m, 0), recs);
}

static void test_failed_write_rewinds(void **state)
{
	struct fx *f = *state;
	f->fault.hook = hook;
	open_log(f);
	/* Three batches written and synced first: they must survive. */
	struct waiter *ws0 = append_many(f, 3, true);
	drain(f);
	free(ws0);
	uint64_t good = log_end(f->log);

	/* Batch A then B, in one write that fails although the kernel did
	 * write it: A's and B's bytes are in the file past written_end. */
	f->fail_write_at = (int)f->data_writes + 1;
	f->fail_err = -EIO;
	uint32_t la, lb;
	uint8_t *a = tu_batch(5, 40, 101, 1, false, &la);
	uint8_t *b = tu_batch(5, 40, 102, 2, false, &lb);
	uint64_t base_a, base_b;
	assert_int_equal(log_append(f->log, a, la, &base_a), 0);
	assert_int_equal(log_append(f->log, b, lb, &base_b), 0);
	struct waiter wa = { .w = { .offset = base_a, .fn = waiter_fire }, .log = f->log };
	struct waiter wb = { .w = { .offset = base_b, .fn = waiter_fire }, .log = f->log };
	log_wait_written(f->log, &wa.w);
	log_wait_written(f->log, &wb.w);
	drain(f);
	assert_true(wa.fired && wb.fired);
	assert_int_equal(wa.err, -EIO);
	assert_int_equal(wb.err, -EIO);
	assert_int_equal(log_end(f->log), good);

	/* The log takes appends again, at the same offsets. A batch C of A's
	 * exact size lands where A was: if the failed bytes had not been
	 * punched out, B would follow C in the file and come back on reopen
	 * as if acknowledged. */
	uint32_t lc;
	uint8_t *c = tu_batch(5, 40, 103, 3, false, &lc);
	assert_int_equal(lc, la);
	uint64_t base_c;
	assert_int_equal(log_append_sync(f->log, c, lc, true, &base_c), 0);
	assert_int_equal(base_c, good);
	model_add(&f->m, base_c, 5, 40, 103, 3);
	free(a);
	free(b);
	free(c);
	f->t.q.fault = NULL;
	assert_int_equal(log_close(f->log), 0);
	f->log = NULL;
	open_log(f);
	assert_int_equal(log_end(f->log), good + 5);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(check_all(f->log, &f->m, 0), (long)(good + 5));
}

static void test_failed_fsync_stops_log(void **state)
{
	struct fx *f = *state;
	f->fault.hook = hook;
	open_log(f);
	struct waiter *ws = append_many(f, 10, true);
	drain(f);
	free(ws);
	uint64_t good = log_end(f->log);
	f->fail_kind = IOQ_FSYNC;
	f->fail_err = -EIO;
	uint32_t len;
	uint8_t *b = tu_batch(3, 10, 9, 9, false, &len);
	uint64_t base;
	assert_int_equal(log_append_sync(f->log, b, len, true, &base), -EIO);
	/* The kernel may have dropped pages it could not write: refuse. */
	uint64_t base2;
	assert_int_equal(log_append(f->log, b, len, &base2), -EIO);
	free(b);
	assert_int_equal(log_close(f->log), -EIO);
	f->log = NULL;
	f->t.q.fault = NULL;
	/* The batch whose fdatasync failed was never acknowledged, but its
	 * write went through, so the file may well hold it: either is right. */
	open_log(f);
	assert_true(log_end(f->log) == good || log_end(f->log) == good + 3);
	if (log_end(f->log) == good + 3)
		model_add(&f->m, base, 3, 10, 9, 9);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(check_all(f->log, &f->m, 0), (long)log_end(f->log));
}

static void test_failed_segment_start(void **state)
{
	struct fx *f = *state;
	f->fault.hook = hook;
	f->cfg.segment_bytes = 1024;
	f->cfg.preallocate = true; /* the failure injected is its fallocate */
	open_log(f);
	uint32_t len;
	uint8_t *b = tu_batch(3, 200, 5, 5, false, &len); /* one per segment */
	assert_true(len > 512 && len <= 1024);
	uint64_t base;
	assert_int_equal(log_append_sync(f->log, b, len, true, &base), 0);
	model_add(&f->m, base, 3, 200, 5, 5);
	/* The next batch needs a new segment; reserving its space fails. */
	f->fail_kind = IOQ_FALLOCATE;
	f->fail_err = -ENOSPC;
	assert_int_equal(log_append_sync(f->log, b, len, true, &base), -ENOSPC);
	assert_int_equal(log_end(f->log), 3);
	/* Space is back: the same append works, at the same offset. */
	assert_int_equal(log_append_sync(f->log, b, len, true, &base), 0);
	assert_int_equal(base, 3);
	model_add(&f->m, base, 3, 200, 5, 5);
	free(b);
	assert_int_equal(check_all(f->log, &f->m, 0), 6);
	f->t.q.fault = NULL;
	assert_int_equal(log_close(f->log), 0);
	f->log = NULL;
	open_log(f);
	assert_int_equal(log_end(f->log), 6);
	assert_int_equal(log_sync(f->log), 0);
	assert_int_equal(check_all(f->log, &f->m, 0), 6);
}

/* 64 appenders each waiting for durability: they share fdatasyncs. */
static void test_group_commit(void **state)
{
	struct fx *f = *state;
	f->fault.hook = hook;
	open_log(f);
	enum { APPENDERS = 64, ROUNDS = 20 };
	struct waiter ws[APPENDERS];
	uint32_t len;
	uint8_t *b = tu_batch(4, 100, 1, 1, false, &len);
	unsigned appended = 0;
	for (int r = 0; r < ROUNDS; r++) {
		for (int a = 0; a < APPENDERS; a++) {
			uint64_t base;
			assert_int_equal(log_append(f->log, b, len, &base), 0);
			ws[a] = (struct waiter){ .w = { .offset = base, .fn = waiter_fire },
						 .log = f->log, .durable = true };
			log_wait_durable(f->log, &ws[a].w);
			appended++;
		}
		while (!ws[APPENDERS - 1].fired)
			step(f, true);
		for (int a = 0; a < APPENDERS; a++)
			assert_int_equal(ws[a].err, 0);
	}
	free(b);
	printf("# %u durable appends, %u fdatasyncs\n", appended, f->fsyncs);
	assert_true(f->fsyncs * 16 <= appended);
}

static unsigned ooo_writes_seen;

/* A write that succeeded but is heard of after a later write of the same
 * log failed (io_uring completes independent writes in any order): its
 * waiter hears success, the log keeps it, and the next append goes after
 * it, before and after a reopen. Own environment: no fault plan of fx.
 * Holds the first data write back; fails the second. */
static bool ooo_hold(void *arg, const struct ioq_op *op, int res)
{
	(void)arg;
	(void)res;
	return op->kind == IOQ_WRITE && ++ooo_writes_seen == 1;
}

static void ooo_hook(void *arg, const struct ioq_op *op, int *res)
{
	(void)arg;
	if (op->kind == IOQ_WRITE && ooo_writes_seen == 2 && *res > 0)
		*res = -ENOSPC;
}

struct ooo_waiter {
	struct log_waiter w;
	bool fired;
	int err;
};

static void ooo_fire(struct log_waiter *lw, int err)
{
	struct ooo_waiter *w = (struct ooo_waiter *)lw;
	w->fired = true;
	w->err = err;
}

static void test_ok_write_completing_after_a_failed_one(void **state)
{
	(void)state;
	struct tu_env t;
	tu_env_init(&t);
	char *dir = tu_tmpdir("faults-ooo");
	struct log_config cfg;
	tu_config(&cfg, 1u << 20);
	struct log *log;
	assert_int_equal(log_open(t.env, dir, &cfg, &log, NULL), 0);
	struct model m = { 0 };
	struct ioq_fault fault = { .hook = ooo_hook, .hold = ooo_hold, .seed = 1 };
	t.q.fault = &fault;

	uint32_t la, lb, lc;
	uint8_t *a = tu_batch(5, 40, 1, 1, false, &la);
	uint8_t *b = tu_batch(5, 40, 2, 2, false, &lb);
	uint8_t *c = tu_batch(5, 40, 3, 3, false, &lc);
	uint64_t ba, bb, bc;
	struct ooo_waiter wa = { .w = { .fn = ooo_fire } }, wb = { .w = { .fn = ooo_fire } };
	/* A: its own write, held back (the kernel wrote it; we hear later). */
	assert_int_equal(log_append(log, a, la, &ba), 0);
	wa.w.offset = ba + 4;
	log_wait_written(log, &wa.w);
	log_env_flush(t.env);
	ioq_wait(&t.q, 100);
	/* B: a second write, which fails (ENOSPC) and is heard of first. */
	assert_int_equal(log_append(log, b, lb, &bb), 0);
	wb.w.offset = bb + 4;
	log_wait_written(log, &wb.w);
	log_env_flush(t.env);
	for (int i = 0; i < 20 && !wb.fired; i++)
		ioq_wait(&t.q, 10);
	printf("# B failed first: fired %d err %d; held %u\n", wb.fired, wb.err, fault.nheld);
	/* Now A's success arrives. */
	ioq_fault_release(&t.q, IOQ_HELD_MAX);
	for (int i = 0; i < 50; i++) {
		log_env_flush(t.env);
		ioq_wait(&t.q, 5);
	}
	printf("# A: fired %d err %d; log end %llu, written end %llu (A is [%llu, %llu))\n",
	       wa.fired, wa.err, (unsigned long long)log_end(log),
	       (unsigned long long)log_written_end(log), (unsigned long long)ba,
	       (unsigned long long)bb);
	t.q.fault = NULL;
	/* C goes in after the recovery. */
	assert_int_equal(log_append_sync(log, c, lc, true, &bc), 0);
	printf("# C appended at %llu; A fired %d err %d\n", (unsigned long long)bc, wa.fired,
	       wa.err);
	/* A was written and its waiter was told so (now or later): it is in
	 * the log, and C follows it. */
	model_add(&m, ba, 5, 40, 1, 1);
	model_add(&m, bb, 5, 40, 3, 3); /* where C belongs */
	printf("# before reopening, reading the log back against A at %llu, C at %llu:\n",
	       (unsigned long long)ba, (unsigned long long)bb);
	long before = check_all(log, &m, 0);
	assert_int_equal(log_close(log), 0);
	struct log_recovery rep;
	assert_int_equal(log_open(t.env, dir, &cfg, &log, &rep), 0);
	assert_int_equal(log_sync(log), 0);
	printf("# reopened: log end %llu; recovery cut %llu bytes (%s)\n",
	       (unsigned long long)log_end(log), (unsigned long long)rep.truncated_bytes,
	       rep.truncated_why ? rep.truncated_why : "nothing");
	long after = check_all(log, &m, 0);
	printf("# records that read back right: %ld before the reopen, %ld after (10 expected)\n",
	       before, after);
	assert_true(wa.fired);
	assert_int_equal(wa.err, 0);
	assert_int_equal(bc, bb);
	assert_int_equal(before, 10);
	assert_int_equal(after, 10);
	log_close(log);
	tu_env_fini(&t);
	tu_rmtree(dir);
	free(dir);
	free(a);
	free(b);
	free(c);
	model_free(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_out_of_order_and_short_writes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_write_rewinds, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_fsync_stops_log, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_segment_start, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
		cmocka_unit_test(test_ok_write_completing_after_a_failed_one),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
