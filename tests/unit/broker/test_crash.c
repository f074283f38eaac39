/* test_crash.c — kill -9 in a loop under load, and what must survive it.
 *
 * The crash loop: libringmq producers (acks=all, idempotent) write numbered
 * messages to a flush=always topic while a consumer group reads along and
 * commits; the broker is SIGKILLed at random moments (seeded PRNG: SEED=...
 * replays a run) and restarted on the same data dir and port, 5 times, or 20
 * with RINGMQ_TORTURE=1. After every restart, and at the end: every message
 * reported stored is at the partition and offset its report gave, nothing
 * that was never produced is in the log, offsets are dense, the group's
 * committed offsets never move back, and no message is stored twice.
 *
 * Around it, the broker's half of that promise on its own: a retry of a batch
 * whose acknowledgement a kill -9 took away is answered with the original
 * offsets (the broker rebuilds its idempotent-producer state from the log's
 * tail at start-up), and the storage walk that state is rebuilt from. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/ringmq.h"
#include "storage/batch.h"
#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

/* Restarts the broker on its data dir, with `conf` (a config file path) if
 * not NULL: on its old port if `same_port` (clients that know only that
 * address must find it again), else on a fresh one. The old port was free
 * for a moment, so another process may hold it briefly: tried again,
 * bounded. */
static void restart(struct tbroker *b, const char *conf, bool same_port)
{
	char listen[80];
	snprintf(listen, sizeof(listen), "%s", same_port ? b->addr : "127.0.0.1:0");
	const char *extra[] = { "--listen", listen, conf ? "--config" : NULL, conf, NULL };
	for (int tries = 0; tb_start(b, b->dir, extra) != 0; tries++) {
		if (tries == 20)
			fail_msg("the broker did not come back on %s", listen);
		tu_sleep_ms(100);
	}
	if (same_port)
		assert_string_equal(b->addr, listen);
}

/* ======================================================================
 * The crash loop
 * ====================================================================== */

#define TOPIC "crash"
#define GROUP "crash-readers"
#define NPARTS 3
#define NPRODUCERS 3
#define NCONSUMERS 2
#define MAX_MSGS (1u << 18) /* per producer: bounds the run whatever the timing */
#define VALUE_LEN 40
/* The whole test stops producing after this, even if kills are slow. */
#define RUN_LIMIT_MS 100000

/* "p<producer>-<seq, 10 digits>-" then letters derived from both, so a value
 * names its message and damage to it shows. */
static void make_value(char *v, unsigned pid, uint32_t seq)
{
	int n = snprintf(v, VALUE_LEN, "p%u-%010" PRIu32 "-", pid, seq);
	for (int k = n; k < VALUE_LEN; k++)
		v[k] = (char)('a' + (pid * 31u + seq * 7u + (unsigned)k) % 26u);
}

/* The (producer, seq) a value names, or false if it is not one of ours. */
static bool parse_value(const void *p, size_t len, unsigned *pid, uint32_t *seq)
{
	char buf[VALUE_LEN + 1], want[VALUE_LEN];
	if (len != VALUE_LEN)
		return false;
	memcpy(buf, p, len);
	buf[len] = '\0';
	unsigned a;
	unsigned long s;
	if (sscanf(buf, "p%u-%10lu-", &a, &s) != 2 || a >= NPRODUCERS || s >= MAX_MSGS)
		return false;
	make_value(want, a, (uint32_t)s);
	if (memcmp(want, p, len) != 0)
		return false;
	*pid = a;
	*seq = (uint32_t)s;
	return true;
}

/* What the delivery callback reported for one message. */
struct report {
	int64_t off;
	int32_t part;
	uint16_t reports;
	int16_t err;
};

struct cprod {
	unsigned id;
	struct ringmq_producer *p;
	pthread_t th;
	atomic_uint attempted;   /* messages handed to ringmq_produce (set before the call) */
	int produce_err;         /* a ringmq_produce failure, which ends the thread */
	struct report *r;        /* MAX_MSGS, under loop.mu */
};

struct ccons {
	unsigned id;
	bool manual;             /* commit after every poll; else auto-commit */
	pthread_t th;
	uint64_t consumed, foreign, poll_errors, commit_errors;
	int last_err;
	char last_errstr[256];
};

/* Everything the threads touch lives here, not on the test's stack: a failed
 * assertion leaves the test while they still run. */
static struct crash_loop {
	pthread_mutex_t mu;
	char addr[64];
	atomic_bool stop_producing, stop_consuming;
	int64_t deadline;
	struct cprod prod[NPRODUCERS];
	struct ccons cons[NCONSUMERS];
	uint64_t reports, report_errors, double_reports;
} loop = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	struct cprod *cp = opaque;
	uint32_t seq = (uint32_t)(uintptr_t)d->opaque;
	pthread_mutex_lock(&loop.mu);
	loop.reports++;
	if (seq < MAX_MSGS) {
		struct report *r = &cp->r[seq];
		if (r->reports++ > 0)
			loop.double_reports++;
		r->err = (int16_t)d->err;
		r->part = d->partition;
		r->off = d->offset;
	}
	if (d->err != 0)
		loop.report_errors++;
	pthread_mutex_unlock(&loop.mu);
}

static void *producer_main(void *arg)
{
	struct cprod *cp = arg;
	char v[VALUE_LEN];
	for (uint32_t seq = 0; seq < MAX_MSGS; seq++) {
		if (atomic_load(&loop.stop_producing) || tu_mono_ms() > loop.deadline)
			break;
		make_value(v, cp->id, seq);
		atomic_store(&cp->attempted, seq + 1);
		/* Explicit partitions: a report's partition can be checked. */
		int ret = ringmq_produce(cp->p, TOPIC, (int32_t)(seq % NPARTS), NULL, 0, v,
					 VALUE_LEN, NULL, 0, 0, (void *)(uintptr_t)seq);
		if (ret != 0) {
			atomic_store(&cp->attempted, seq);
			cp->produce_err = ret;
			break;
		}
		if (seq % 8 == 7)
			tu_sleep_ms(2); /* a few thousand messages a second each */
	}
	return NULL;
}

static void *consumer_main(void *arg)
{
	struct ccons *cc = arg;
	char err[256];
	struct ringmq_config *cfg = ringmq_config_new();
	const char *kv[] = { "bootstrap.servers", loop.addr,
			     "enable.auto.commit", cc->manual ? "false" : "true",
			     "auto.commit.interval.ms", "100",
			     "fetch.max.wait.ms", "100",
			     "session.timeout.ms", "5000",
			     "reconnect.backoff.ms", "10",
			     "reconnect.backoff.max.ms", "100",
			     "request.timeout.ms", "5000",
			     NULL };
	for (int i = 0; kv[i]; i += 2)
		if (ringmq_config_set(cfg, kv[i], kv[i + 1], err, sizeof(err)) != 0)
			return NULL;
	struct ringmq_consumer *c = ringmq_consumer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	if (c == NULL)
		return NULL;
	const char *topics[] = { TOPIC };
	for (int tries = 0; ringmq_consumer_subscribe(c, GROUP, topics, 1, err, sizeof(err)) != 0;
	     tries++) {
		if (tries > 200 || atomic_load(&loop.stop_consuming)) {
			ringmq_consumer_free(c);
			return NULL;
		}
		tu_sleep_ms(50);
	}
	while (!atomic_load(&loop.stop_consuming) && tu_mono_ms() < loop.deadline + 30000) {
		struct ringmq_message m[256];
		size_t n = 0;
		int ret = ringmq_consumer_poll(c, 100, m, 256, &n, err, sizeof(err));
		if (ret != 0) {
			/* The broker is away or restarting: the consumer rejoins
			 * by itself. Kept for the report. */
			cc->poll_errors++;
			cc->last_err = ret;
			snprintf(cc->last_errstr, sizeof(cc->last_errstr), "%s", err);
			if (ret != RINGMQ_ERR_TRANSPORT)
				tu_sleep_ms(10);
			continue;
		}
		for (size_t i = 0; i < n; i++) {
			unsigned pid;
			uint32_t seq;
			if (!parse_value(m[i].value, m[i].value_len, &pid, &seq) ||
			    m[i].partition != (int32_t)(seq % NPARTS))
				cc->foreign++;
			else
				cc->consumed++;
		}
		if (cc->manual && n > 0 && ringmq_consumer_commit(c, err, sizeof(err)) != 0)
			cc->commit_errors++;
	}
	ringmq_consumer_close(c, err, sizeof(err));
	ringmq_consumer_free(c);
	return NULL;
}

/* ---- reading the log as stored, through the bare protocol ---- */

/* One partition's log: what each offset holds, as producer << 32 | seq, or
 * UINT64_MAX for a record that is not one of ours. */
struct plog {
	uint64_t *at;
	uint64_t n, cap;
};

/* Reads partition `part` from offset 0 until at least `want_end` (waiting,
 * bounded, for it to become visible: a flush=always log shows its tail after
 * the start-up fdatasync) and at least to the end seen by the first fetch.
 * Fails on a gap, a damaged batch, or a log that stays short. */
static void read_partition(const char *addr, uint32_t part, uint64_t want_end, struct plog *pl)
{
	struct tclient c;
	int64_t deadline = tu_mono_ms() + 15000;
	while (tc_connect(&c, addr) != 0) {
		if (tu_mono_ms() > deadline)
			fail_msg("cannot connect to %s", addr);
		tu_sleep_ms(20);
	}
	pl->n = 0;
	uint64_t end = 0;
	bool first = true;
	for (int rounds = 0;; rounds++) {
		if (!first && pl->n >= end && pl->n >= want_end)
			break;
		if (tu_mono_ms() > deadline || rounds > 1000000)
			fail_msg(TOPIC "[%u]: the log ends at %" PRIu64 ", but offsets up to %" PRIu64
				 " were acknowledged (lost after a kill -9?)",
				 part, pl->n, want_end);
		uint8_t *rec = NULL;
		uint32_t len = 0;
		uint64_t log_end = 0;
		int ret = tc_fetch(&c, TOPIC, part, pl->n, 1u << 20, 0, 0, &rec, &len, &log_end);
		if (ret != 0)
			fail_msg(TOPIC "[%u]: fetch at %" PRIu64 ": error %d", part, pl->n, ret);
		if (first)
			end = log_end;
		first = false;
		if (len == 0) {
			free(rec);
			if (pl->n >= end && pl->n < want_end)
				tu_sleep_ms(10); /* not visible yet */
			continue;
		}
		for (uint32_t pos = 0; pos < len;) {
			struct batch_hdr h;
			int v = batch_verify(rec + pos, len - pos, &h);
			if (v == -ENODATA)
				break; /* cut by max_bytes: fetched again */
			if (v != 0)
				fail_msg(TOPIC "[%u]: damaged batch at byte %u of a fetch at %" PRIu64,
					 part, pos, pl->n);
			struct batch_iter it;
			struct batch_record r;
			assert_int_equal(batch_iter_init(&it, rec + pos, NULL, 0), 0);
			while (batch_iter_next(&it, &r) == 1) {
				if (r.offset < pl->n)
					continue; /* before where this fetch began */
				if (r.offset != pl->n)
					fail_msg(TOPIC "[%u]: offset %" PRIu64 " follows %" PRIu64
						 " (offsets must be dense)", part, r.offset,
						 pl->n - 1);
				if (pl->n == pl->cap) {
					pl->cap = pl->cap ? pl->cap * 2 : 4096;
					pl->at = realloc(pl->at, pl->cap * sizeof(*pl->at));
					assert_non_null(pl->at);
				}
				unsigned pid;
				uint32_t seq;
				pl->at[pl->n++] = parse_value(r.value, r.value_len, &pid, &seq)
							  ? (uint64_t)pid << 32 | seq
							  : UINT64_MAX;
			}
			pos += h.length;
		}
		free(rec);
	}
	tc_close(&c);
}

struct check_counts {
	uint64_t acked, stored, dups, foreign, wrong_partition;
};

/* The checks run after every restart and at the end; `final`: the producers
 * are done, so every message must be acknowledged. */
static void check_log(struct check_counts *cc, bool final)
{
	/* Acknowledged so far: where the reports say each message is. */
	static struct report snap[NPRODUCERS][MAX_MSGS];
	uint32_t attempted[NPRODUCERS];
	uint64_t want_end[NPARTS] = { 0 };
	memset(cc, 0, sizeof(*cc));
	pthread_mutex_lock(&loop.mu);
	for (unsigned p = 0; p < NPRODUCERS; p++) {
		attempted[p] = atomic_load(&loop.prod[p].attempted);
		memcpy(snap[p], loop.prod[p].r, attempted[p] * sizeof(struct report));
	}
	pthread_mutex_unlock(&loop.mu);
	for (unsigned p = 0; p < NPRODUCERS; p++) {
		for (uint32_t s = 0; s < attempted[p]; s++) {
			const struct report *r = &snap[p][s];
			if (r->reports != 1 || r->err != 0) {
				if (final)
					fail_msg("message p%u-%u: %u reports, error %s", p, s,
						 r->reports, ringmq_strerror(r->err));
				continue;
			}
			if (r->part != (int32_t)(s % NPARTS) || r->off < 0)
				fail_msg("message p%u-%u reported at %d/%" PRId64 ", sent to %u", p, s,
					 r->part, r->off, s % NPARTS);
			cc->acked++;
			if ((uint64_t)r->off + 1 > want_end[r->part])
				want_end[r->part] = (uint64_t)r->off + 1;
		}
	}

	/* The log as stored. */
	static uint8_t seen[NPRODUCERS][MAX_MSGS];
	memset(seen, 0, sizeof(seen));
	struct plog pl[NPARTS];
	memset(pl, 0, sizeof(pl));
	for (uint32_t part = 0; part < NPARTS; part++)
		read_partition(loop.addr, part, want_end[part], &pl[part]);
	/* Read after the log: a message in the log was attempted before. */
	uint32_t attempted_now[NPRODUCERS];
	for (unsigned p = 0; p < NPRODUCERS; p++)
		attempted_now[p] = atomic_load(&loop.prod[p].attempted);
	for (uint32_t part = 0; part < NPARTS; part++) {
		for (uint64_t o = 0; o < pl[part].n; o++) {
			uint64_t v = pl[part].at[o];
			unsigned p = (unsigned)(v >> 32);
			uint32_t s = (uint32_t)v;
			if (v == UINT64_MAX || s >= attempted_now[p]) {
				cc->foreign++;
				continue;
			}
			if (s % NPARTS != part)
				cc->wrong_partition++;
			cc->stored++;
			if (seen[p][s]++ > 0)
				cc->dups++;
		}
	}
	/* Every acknowledged message is exactly where its report said. */
	uint64_t lost = 0, moved = 0;
	for (unsigned p = 0; p < NPRODUCERS; p++) {
		for (uint32_t s = 0; s < attempted[p]; s++) {
			const struct report *r = &snap[p][s];
			if (r->reports != 1 || r->err != 0)
				continue;
			if (seen[p][s] == 0)
				lost++;
			else if ((uint64_t)r->off >= pl[r->part].n ||
				 pl[r->part].at[r->off] != ((uint64_t)p << 32 | s))
				moved++;
		}
	}
	for (uint32_t part = 0; part < NPARTS; part++)
		free(pl[part].at);
	if (lost || moved || cc->foreign || cc->wrong_partition)
		fail_msg("log check: %" PRIu64 " acknowledged messages lost, %" PRIu64
			 " not where reported, %" PRIu64 " never produced, %" PRIu64
			 " in the wrong partition",
			 lost, moved, cc->foreign, cc->wrong_partition);
}

/* The group's committed offsets, which must never move back. */
static void check_commits(int64_t last[NPARTS], int64_t *advanced)
{
	char err[256];
	struct ringmq_config *cfg = ringmq_config_new();
	assert_int_equal(ringmq_config_set(cfg, "bootstrap.servers", loop.addr, err, sizeof(err)),
			 0);
	struct ringmq_admin *a = ringmq_admin_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	assert_non_null(a);
	struct ringmq_group_info *gi = NULL;
	int ret;
	/* Right after a restart a partition's visible end (what describe
	 * reports) can lag its committed offset until the start-up fdatasync:
	 * ask again, briefly, before calling that a commit past the end. */
	for (int tries = 0;; tries++) {
		ret = ringmq_group_describe(a, GROUP, &gi, err, sizeof(err));
		bool behind = false;
		for (size_t i = 0; ret == 0 && i < gi->nparts; i++)
			behind |= gi->parts[i].committed > gi->parts[i].log_end;
		if (!behind || tries == 50)
			break;
		ringmq_groups_free(gi, 1);
		gi = NULL;
		tu_sleep_ms(20);
	}
	if (ret == RINGMQ_ERR_UNKNOWN_GROUP) {
		/* Nothing committed yet: then nothing was committed before. */
		for (int p = 0; p < NPARTS; p++)
			if (last[p] >= 0)
				fail_msg("group %s is gone; partition %d had committed %" PRId64,
					 GROUP, p, last[p]);
		ringmq_admin_free(a);
		return;
	}
	if (ret != 0)
		fail_msg("describing group %s: %s", GROUP, err);
	for (size_t i = 0; i < gi->nparts; i++) {
		const struct ringmq_group_partition *gp = &gi->parts[i];
		if (strcmp(gp->topic, TOPIC) != 0 || gp->partition < 0 || gp->partition >= NPARTS)
			continue;
		int64_t *l = &last[gp->partition];
		if (gp->committed < *l)
			fail_msg("group %s: partition %d's committed offset went back from %" PRId64
				 " to %" PRId64, GROUP, gp->partition, *l, gp->committed);
		if (gp->committed > gp->log_end)
			fail_msg("group %s: partition %d committed %" PRId64 " past the end %" PRId64,
				 GROUP, gp->partition, gp->committed, gp->log_end);
		if (gp->committed > *l)
			(*advanced)++;
		*l = gp->committed;
	}
	ringmq_groups_free(gi, 1);
	ringmq_admin_free(a);
}

/* True once the group has committed every partition's end. */
static bool group_caught_up(void)
{
	char err[256];
	struct ringmq_config *cfg = ringmq_config_new();
	ringmq_config_set(cfg, "bootstrap.servers", loop.addr, err, sizeof(err));
	struct ringmq_admin *a = ringmq_admin_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	if (a == NULL)
		return false;
	struct ringmq_group_info *gi = NULL;
	bool done = false;
	if (ringmq_group_describe(a, GROUP, &gi, err, sizeof(err)) == 0) {
		int n = 0;
		for (size_t i = 0; i < gi->nparts; i++)
			n += strcmp(gi->parts[i].topic, TOPIC) == 0 &&
			     gi->parts[i].committed == gi->parts[i].log_end;
		done = n == NPARTS;
		ringmq_groups_free(gi, 1);
	}
	ringmq_admin_free(a);
	return done;
}

static struct ringmq_producer *crash_producer(struct cprod *cp)
{
	char err[256];
	struct ringmq_config *cfg = ringmq_config_new();
	const char *kv[] = { "bootstrap.servers", loop.addr,
			     "acks", "all",
			     "enable.idempotence", "true",
			     "linger.ms", "2",
			     "max.in.flight", "8",
			     "buffer.memory", "4194304",
			     "reconnect.backoff.ms", "10",
			     "reconnect.backoff.max.ms", "100",
			     "request.timeout.ms", "5000",
			     "delivery.timeout.ms", "120000",
			     NULL };
	for (int i = 0; kv[i]; i += 2)
		if (ringmq_config_set(cfg, kv[i], kv[i + 1], err, sizeof(err)) != 0)
			fail_msg("config %s: %s", kv[i], err);
	ringmq_config_set_delivery_cb(cfg, on_delivery, cp);
	struct ringmq_producer *p = ringmq_producer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	if (p == NULL)
		fail_msg("producer: %s", err);
	return p;
}

struct fx {
	struct tbroker b;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tb_start(&f->b, NULL, NULL), 0);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	if (f->b.pid > 0)
		assert_int_equal(tb_stop(&f->b), 0);
	tb_cleanup(&f->b);
	free(f);
	return 0;
}

static void test_crash_loop(void **state)
{
	struct fx *f = *state;
	const char *torture = getenv("RINGMQ_TORTURE");
	int kills = torture && strcmp(torture, "1") == 0 ? 20 : 5;
	uint64_t rng = tu_seed("test_crash_loop");
	int64_t t0 = tu_mono_ms();

	struct tclient admin;
	assert_int_equal(tc_connect(&admin, f->b.addr), 0);
	/* Small segments, so the tails the broker reads at start-up cross
	 * segment boundaries. */
	const char *kv[] = { "flush", "always", "segment.bytes", "262144",
			     "max.message.bytes", "65536", NULL };
	assert_int_equal(tc_create_topic(&admin, TOPIC, NPARTS, kv), ERR_NONE);
	tc_close(&admin);

	snprintf(loop.addr, sizeof(loop.addr), "%s", f->b.addr);
	atomic_store(&loop.stop_producing, false);
	atomic_store(&loop.stop_consuming, false);
	loop.deadline = t0 + RUN_LIMIT_MS;
	loop.reports = loop.report_errors = loop.double_reports = 0;
	for (unsigned i = 0; i < NPRODUCERS; i++) {
		struct cprod *cp = &loop.prod[i];
		free(cp->r);
		memset(cp, 0, sizeof(*cp));
		cp->id = i;
		cp->r = calloc(MAX_MSGS, sizeof(*cp->r));
		assert_non_null(cp->r);
		cp->p = crash_producer(cp);
	}
	for (unsigned i = 0; i < NCONSUMERS; i++) {
		memset(&loop.cons[i], 0, sizeof(loop.cons[i]));
		loop.cons[i].id = i;
		loop.cons[i].manual = i % 2 == 1;
		assert_int_equal(pthread_create(&loop.cons[i].th, NULL, consumer_main,
						&loop.cons[i]), 0);
	}
	for (unsigned i = 0; i < NPRODUCERS; i++)
		assert_int_equal(pthread_create(&loop.prod[i].th, NULL, producer_main,
						&loop.prod[i]), 0);

	int64_t committed[NPARTS] = { -1, -1, -1 };
	int64_t commit_moves = 0;
	char injected[1024];
	size_t ilen = 0;
	struct check_counts cc;
	int done = 0;
	for (; done < kills && tu_mono_ms() < loop.deadline - 5000; done++) {
		/* A random moment: right after the restart (before the start-up
		 * fdatasync, even) up to most of a second of traffic. */
		int delay = (int)(tu_rand(&rng) % 700);
		int down = (int)(tu_rand(&rng) % 100);
		tu_sleep_ms(delay);
		tb_kill9(&f->b);
		tu_sleep_ms(down);
		ilen += (size_t)snprintf(injected + ilen, sizeof(injected) - ilen, "%s%d+%d",
					 done ? ", " : "", delay, down);
		if (ilen >= sizeof(injected))
			ilen = sizeof(injected) - 1;
		int64_t r0 = tu_mono_ms();
		restart(&f->b, NULL, true);
		int64_t ready_ms = tu_mono_ms() - r0;
		check_log(&cc, false);
		check_commits(committed, &commit_moves);
		printf("# kill %d after %d ms (down %d ms): ready in %" PRId64 " ms; %" PRIu64
		       " acknowledged, %" PRIu64 " stored, %" PRIu64 " duplicates; committed"
		       " %" PRId64 "/%" PRId64 "/%" PRId64 "\n",
		       done + 1, delay, down, ready_ms, cc.acked, cc.stored, cc.dups, committed[0],
		       committed[1], committed[2]);
		fflush(stdout);
	}

	/* The end: everything produced gets its report, then the group reads
	 * to the end. */
	tu_sleep_ms(200);
	atomic_store(&loop.stop_producing, true);
	for (unsigned i = 0; i < NPRODUCERS; i++) {
		pthread_join(loop.prod[i].th, NULL);
		if (loop.prod[i].produce_err)
			fail_msg("producer %u: ringmq_produce: %s", i,
				 ringmq_strerror(loop.prod[i].produce_err));
		int ret = ringmq_producer_flush(loop.prod[i].p, 60000);
		if (ret != 0)
			fail_msg("producer %u: flush: %s, %zu outstanding", i, ringmq_strerror(ret),
				 ringmq_producer_outstanding(loop.prod[i].p));
		ringmq_producer_free(loop.prod[i].p);
		loop.prod[i].p = NULL;
	}
	int64_t catch_deadline = tu_mono_ms() + 30000;
	while (!group_caught_up() && tu_mono_ms() < catch_deadline)
		tu_sleep_ms(100);
	bool caught_up = group_caught_up();
	atomic_store(&loop.stop_consuming, true);
	for (unsigned i = 0; i < NCONSUMERS; i++)
		pthread_join(loop.cons[i].th, NULL);
	check_log(&cc, true);
	check_commits(committed, &commit_moves);

	uint64_t consumed = 0, foreign = 0, poll_errors = 0;
	for (unsigned i = 0; i < NCONSUMERS; i++) {
		consumed += loop.cons[i].consumed;
		foreign += loop.cons[i].foreign;
		poll_errors += loop.cons[i].poll_errors;
	}
	printf("# crash loop: SIGKILL %d times at (ms after the previous start + ms down) %s\n",
	       done, injected);
	/* check_log fails on any acknowledged message lost, hence lost=0. */
	printf("# crash loop: %" PRIu64 " messages acknowledged, %" PRIu64 " stored, lost=0,"
	       " %" PRIu64 " duplicates (the idempotent producers'), %" PRIu64
	       " delivery errors, %" PRIu64 " reported twice\n",
	       cc.acked, cc.stored, cc.dups, loop.report_errors, loop.double_reports);
	printf("# crash loop: the group consumed %" PRIu64 " (%" PRIu64 " foreign, %" PRIu64
	       " poll errors across restarts), committed %" PRId64 "/%" PRId64 "/%" PRId64
	       ", moving forward %" PRId64 " times; %.1f s\n",
	       consumed, foreign, poll_errors, committed[0], committed[1], committed[2],
	       commit_moves, (double)(tu_mono_ms() - t0) / 1000.0);
	fflush(stdout);
	assert_int_equal(loop.double_reports, 0);
	assert_int_equal(loop.report_errors, 0);
	assert_int_equal(foreign, 0);
	assert_true(done >= 1);
	if (!caught_up)
		fail_msg("the group did not commit every partition's end within 30 s");
	/* The requirement: the idempotent producers left nothing twice. */
	if (cc.dups != 0)
		fail_msg("%" PRIu64 " messages are stored twice", cc.dups);
	for (unsigned i = 0; i < NPRODUCERS; i++) {
		free(loop.prod[i].r);
		loop.prod[i].r = NULL;
	}
}

/* ======================================================================
 * The broker on its own: retries after kill -9, over the bare protocol
 * ====================================================================== */

/* An idempotent batch as a producer sends it, and where it was stored. */
struct rbatch {
	uint64_t pid;
	uint32_t seq, count;
	uint8_t *buf;
	uint32_t len;
	int64_t base; /* -1 until a reply said */
};

static struct rbatch rbatch_new(uint64_t pid, uint32_t seq, uint32_t count)
{
	struct rbatch rb = { pid, seq, count, NULL, 0, -1 };
	size_t cap = BATCH_HEADER_SIZE + count * 128u;
	rb.buf = malloc(cap);
	assert_non_null(rb.buf);
	struct batch_builder b;
	batch_builder_init(&b, rb.buf, cap);
	for (uint32_t i = 0; i < count; i++) {
		char v[64];
		int n = snprintf(v, sizeof(v), "producer %" PRIu64 " record %" PRIu32, pid, seq + i);
		/* Now: old timestamps would let retention delete closed segments. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
		assert_int_equal(batch_add(&b, now, NULL, 0, v, (uint32_t)n, NULL, 0), 0);
	}
	rb.len = batch_seal(&b, pid, seq);
	return rb;
}

/* Produces one batch with acks=all; a reply lost to a dropped connection
 * (test.drop.after.append) is asked for again, as a client would. Returns
 * the partition's error code; *base gets the offset. */
static int produce_retrying(struct tclient *c, const char *addr, const char *topic,
			    const struct rbatch *rb, uint64_t *base, int *lost)
{
	for (int tries = 0; tries < 10; tries++) {
		int ret = tc_produce(c, topic, 0, PROTO_ACKS_ALL, rb->buf, rb->len, base);
		if (ret != -ECONNRESET && ret != -EPIPE)
			return ret;
		if (lost)
			(*lost)++;
		tc_close(c);
		assert_int_equal(tc_connect(c, addr), 0);
	}
	fail_msg("no reply to a produce after 10 tries");
	return -1;
}

/* The visible end of partition 0, once it reaches `want` (bounded wait: a
 * batch whose produce reply was lost shows once its fdatasync is done;
 * after a restart the whole log shows at once). */
static uint64_t visible_end(struct tclient *c, const char *topic, uint64_t want)
{
	int64_t deadline = tu_mono_ms() + 5000;
	for (;;) {
		uint64_t end = 0;
		int ret = tc_fetch(c, topic, 0, 0, 64, 0, 0, NULL, NULL, &end);
		if (ret != 0)
			fail_msg("%s: fetch: error %d (end %" PRIu64 ", want %" PRIu64 ")", topic, ret,
				 end, want);
		if (end >= want || tu_mono_ms() > deadline)
			return end;
		tu_sleep_ms(5);
	}
}

/* Every idempotent batch in partition 0 once: no (producer, sequence) twice,
 * offsets dense. Returns the records read. */
static uint64_t assert_stored_once(struct tclient *c, const char *topic)
{
	uint64_t off = 0, end = 1;
	uint64_t seen_pid[512];
	uint32_t seen_seq[512], nseen = 0;
	for (int rounds = 0; off < end && rounds < 10000; rounds++) {
		uint8_t *rec;
		uint32_t len;
		assert_int_equal(tc_fetch(c, topic, 0, off, 1u << 20, 0, 0, &rec, &len, &end), 0);
		for (uint32_t pos = 0; pos < len;) {
			struct batch_hdr h;
			if (batch_verify(rec + pos, len - pos, &h) != 0)
				break;
			if (h.base_offset >= off) {
				if (h.base_offset != off)
					fail_msg("%s: batch at %" PRIu64 " after offset %" PRIu64, topic,
						 h.base_offset, off - 1);
				for (uint32_t i = 0; h.producer_id != 0 && i < nseen; i++)
					if (seen_pid[i] == h.producer_id && seen_seq[i] == h.base_sequence)
						fail_msg("%s: producer %" PRIu64 " sequence %u is stored "
							 "twice", topic, h.producer_id, h.base_sequence);
				if (h.producer_id != 0 && nseen < 512) {
					seen_pid[nseen] = h.producer_id;
					seen_seq[nseen++] = h.base_sequence;
				}
				off = batch_last_offset(&h) + 1;
			}
			pos += h.length;
		}
		free(rec);
	}
	return off;
}

/* The stored batch at `base` is this one (producer and sequence). */
static void assert_batch_at(struct tclient *c, const char *topic, uint64_t base,
			    const struct rbatch *rb)
{
	uint8_t *rec;
	uint32_t len;
	uint64_t end;
	assert_int_equal(tc_fetch(c, topic, 0, base, 4096, 0, 0, &rec, &len, &end), 0);
	struct batch_hdr h;
	assert_int_equal(batch_verify(rec, len, &h), 0);
	if (h.base_offset != base || h.producer_id != rb->pid || h.base_sequence != rb->seq)
		fail_msg("%s: at %" PRIu64 " is producer %" PRIu64 " sequence %u (base %" PRIu64
			 "), not producer %" PRIu64 " sequence %u",
			 topic, base, h.producer_id, h.base_sequence, h.base_offset, rb->pid, rb->seq);
	free(rec);
}

struct rfx {
	struct tbroker b;
	char *conf_dir;
};

static int rsetup(void **state)
{
	struct rfx *f = calloc(1, sizeof(*f));
	f->conf_dir = tu_tmpdir("crashconf");
	*state = f;
	return 0;
}

static int rteardown(void **state)
{
	struct rfx *f = *state;
	if (f->b.pid > 0)
		assert_int_equal(tb_stop(&f->b), 0);
	tb_cleanup(&f->b);
	tu_rmtree(f->conf_dir);
	free(f->conf_dir);
	free(f);
	return 0;
}

static char *conf_file(struct rfx *f, const char *name, const char *text)
{
	char *path = malloc(strlen(f->conf_dir) + strlen(name) + 2);
	sprintf(path, "%s/%s", f->conf_dir, name);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	fclose(fp);
	return path;
}

#define RTOPIC "dedup"
#define RB_MAX 256

/* A batch whose reply a kill -9 took away is retried after the restart:
 * the broker answers with the original offset and stores nothing again.
 * Two ways to lose the reply: the broker appended, fdatasynced and dropped
 * the connection (test.drop.after.append), then was killed; or it was
 * killed with the batch written but its fdatasync not yet done
 * (test.fsync.delay.ms), so the batch survives in the page cache only.
 * Small segments, so the batches to recognise span several of them. */
static void test_retry_after_kill9_is_deduplicated(void **state)
{
	struct rfx *f = *state;
	char *drop = conf_file(f, "drop.conf", "test.drop.after.append = 3\n");
	char *slow = conf_file(f, "slow.conf", "test.fsync.delay.ms = 1500\n");
	const char *extra[] = { "--config", drop, NULL };
	assert_int_equal(tb_start(&f->b, NULL, extra), 0);
	struct tclient c;
	assert_int_equal(tc_connect(&c, f->b.addr), 0);
	const char *kv[] = { "segment.bytes", "4096", "max.message.bytes", "4096",
			     "index.interval.bytes", "256", NULL };
	assert_int_equal(tc_create_topic(&c, RTOPIC, 1, kv), ERR_NONE);

	static struct rbatch a[RB_MAX], bb[RB_MAX], z[RB_MAX];
	uint32_t na = 0, nb = 0, nz = 0, aseq = 0, bseq = 0;
	uint64_t records = 0, base;
	int lost = 0;
	/* Two idempotent producers and a plain one, interleaved; the hook
	 * drops every third reply, and the retries are answered from memory. */
	for (int round = 0; round < 20; round++) {
		a[na] = rbatch_new(0xA1, aseq, 3);
		assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &a[na], &base, &lost), 0);
		a[na++].base = (int64_t)base;
		aseq += 3;
		bb[nb] = rbatch_new(0xB2, bseq, 2);
		assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &bb[nb], &base, &lost), 0);
		bb[nb++].base = (int64_t)base;
		bseq += 2;
		/* Without a producer id a retry would be stored again: sent
		 * once, and the hook appends before it drops the reply. */
		z[nz] = rbatch_new(0, 0, 1);
		int ret = tc_produce(&c, RTOPIC, 0, PROTO_ACKS_ALL, z[nz].buf, z[nz].len, &base);
		if (ret == -ECONNRESET) {
			lost++;
			tc_close(&c);
			assert_int_equal(tc_connect(&c, f->b.addr), 0);
		} else {
			assert_int_equal(ret, 0);
		}
		nz++;
		records += 6;
	}
	assert_true(lost > 0);
	assert_int_equal(visible_end(&c, RTOPIC, records), records);

	/* Producer A's next batch: appended and made durable, its reply
	 * dropped; then the broker dies before A can ask again. */
	int tries = 0;
	for (;;) {
		a[na] = rbatch_new(0xA1, aseq, 3);
		int ret = tc_produce(&c, RTOPIC, 0, PROTO_ACKS_ALL, a[na].buf, a[na].len, &base);
		records += 3;
		aseq += 3;
		if (ret == -ECONNRESET)
			break;
		assert_int_equal(ret, 0);
		a[na++].base = (int64_t)base;
		assert_true(++tries < 5);
	}
	struct rbatch *unacked = &a[na++];
	tc_close(&c);
	tb_kill9(&f->b);
	restart(&f->b, NULL, false);
	assert_int_equal(tc_connect(&c, f->b.addr), 0);
	assert_int_equal(visible_end(&c, RTOPIC, records), records);

	/* The retry: the original offset (the last batch of the log), and
	 * nothing appended. */
	assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, unacked, &base, NULL), 0);
	assert_int_equal(base, records - unacked->count);
	unacked->base = (int64_t)base;
	/* Retries of each producer's last 8 batches (a client's window) too. */
	for (uint32_t i = na - 8; i < na; i++) {
		assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &a[i], &base, NULL), 0);
		assert_int_equal(base, a[i].base);
	}
	for (uint32_t i = nb - 8; i < nb; i++) {
		assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &bb[i], &base, NULL), 0);
		assert_int_equal(base, bb[i].base);
	}
	/* Older than that: refused, as by a broker that never restarted. */
	assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &a[na - 9], &base, NULL),
			 ERR_OUT_OF_ORDER_SEQUENCE);
	assert_int_equal(visible_end(&c, RTOPIC, records), records);

	/* Killed before the fdatasync: written (page cache), not durable, not
	 * acknowledged. Three batches in one pipeline. */
	tc_close(&c);
	assert_int_equal(tb_stop(&f->b), 0);
	restart(&f->b, slow, false);
	assert_int_equal(tc_connect(&c, f->b.addr), 0);
	struct rbatch *pipe_[3];
	for (int i = 0; i < 3; i++) {
		bool is_a = i != 1;
		struct rbatch *rb = is_a ? &a[na++] : &bb[nb++];
		*rb = is_a ? rbatch_new(0xA1, aseq, 3) : rbatch_new(0xB2, bseq, 2);
		if (is_a)
			aseq += 3;
		else
			bseq += 2;
		records += rb->count;
		struct proto_produce_part part = { 0, { rb->buf, rb->len } };
		struct proto_produce_topic t = { pstr_c(RTOPIC), 1, &part };
		union proto_request req = { .produce = { PROTO_ACKS_ALL, 10000, 1, &t } };
		assert_int_equal(tc_send(&c, API_PRODUCE, &req, NULL), 0);
		pipe_[i] = rb;
	}
	tu_sleep_ms(300); /* written long since; the fdatasync waits 1.5 s */
	struct proto_resp_hdr h;
	assert_int_equal(tc_recv(&c, API_PRODUCE, 50, &h, NULL), -ETIMEDOUT); /* no reply yet */
	tc_close(&c);
	tb_kill9(&f->b);
	restart(&f->b, NULL, false);
	assert_int_equal(tc_connect(&c, f->b.addr), 0);
	/* The page cache kept them: the log holds them once already. */
	assert_int_equal(visible_end(&c, RTOPIC, records), records);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, pipe_[i], &base, NULL), 0);
		assert_batch_at(&c, RTOPIC, base, pipe_[i]);
	}
	assert_int_equal(visible_end(&c, RTOPIC, records), records);

	/* The numbering goes on from the log: the next sequence is appended, a
	 * gap is refused. */
	a[na] = rbatch_new(0xA1, aseq, 3);
	assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &a[na], &base, NULL), 0);
	assert_int_equal(base, records);
	records += 3;
	aseq += 3;
	na++;
	a[na] = rbatch_new(0xA1, aseq + 3, 3);
	assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &a[na], &base, NULL),
			 ERR_OUT_OF_ORDER_SEQUENCE);
	na++;
	assert_int_equal(assert_stored_once(&c, RTOPIC), records);
	printf("# %d replies dropped and retried in one broker life; after two kill -9s, %u "
	       "retries answered with their original offsets, %" PRIu64 " records stored once\n",
	       lost, 1u + 8u + 8u + 3u, records);
	tc_close(&c);
	for (uint32_t i = 0; i < na; i++)
		free(a[i].buf);
	for (uint32_t i = 0; i < nb; i++)
		free(bb[i].buf);
	for (uint32_t i = 0; i < nz; i++)
		free(z[i].buf);
	free(drop);
	free(slow);
}

/* A clean restart rebuilds the same state: the 64 producers a partition
 * remembers (PSTATES_PER_PARTITION), the newest ones, each recognised. */
static void test_restart_remembers_64_producers(void **state)
{
	struct rfx *f = *state;
	assert_int_equal(tb_start(&f->b, NULL, NULL), 0);
	struct tclient c;
	assert_int_equal(tc_connect(&c, f->b.addr), 0);
	assert_int_equal(tc_create_topic(&c, RTOPIC, 1, NULL), ERR_NONE);
	enum { N = 70, KEPT = 64 };
	static struct rbatch rb[N];
	uint64_t base;
	for (int i = 0; i < N; i++) {
		rb[i] = rbatch_new(1000 + (uint64_t)i, 0, 2);
		assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &rb[i], &base, NULL), 0);
		rb[i].base = (int64_t)base;
	}
	tc_close(&c);
	assert_int_equal(tb_stop(&f->b), 0);
	restart(&f->b, NULL, false);
	assert_int_equal(tc_connect(&c, f->b.addr), 0);
	/* The newest first: retrying the old ones first would make them the
	 * most recently used and evict newer ones. */
	for (int i = N - 1; i >= N - KEPT; i--) {
		assert_int_equal(produce_retrying(&c, f->b.addr, RTOPIC, &rb[i], &base, NULL), 0);
		if (base != (uint64_t)rb[i].base)
			fail_msg("producer %d of %d: retry stored at %" PRIu64 ", first at %" PRId64,
				 i, N, base, rb[i].base);
	}
	assert_int_equal(visible_end(&c, RTOPIC, 2 * N), 2 * N);
	tc_close(&c);
	for (int i = 0; i < N; i++)
		free(rb[i].buf);
}

/* ======================================================================
 * log_scan_tail, the walk the broker rebuilds that state from
 * ====================================================================== */

struct visit {
	uint64_t base[4096];
	uint64_t pid[4096];
	uint32_t n, stop_after;
};

static int visit_fn(void *arg, const struct batch_hdr *h)
{
	struct visit *v = arg;
	if (v->n < 4096) {
		v->base[v->n] = h->base_offset;
		v->pid[v->n] = h->producer_id;
	}
	v->n++;
	return v->stop_after != 0 && v->n >= v->stop_after;
}

static void test_scan_tail(void **state)
{
	(void)state;
	uint64_t rng = tu_seed("test_scan_tail");
	char *dir = tu_tmpdir("tail");
	struct tu_env te;
	tu_env_init(&te);
	struct log_config cfg;
	tu_config(&cfg, 8192); /* many segments, an index entry every 256 bytes */
	struct log *log;
	assert_int_equal(log_open(te.env, dir, &cfg, &log, NULL), 0);

	/* Batches of random sizes; producer id = index + 1, to check order. */
	enum { N = 600 };
	static uint64_t base[N], end[N];
	static uint32_t len[N];
	uint64_t pos_total = 0;
	for (uint32_t i = 0; i < N; i++) {
		uint32_t count = 1 + (uint32_t)(tu_rand(&rng) % 4);
		uint32_t vlen = (uint32_t)(tu_rand(&rng) % 300);
		uint8_t buf[4096];
		struct batch_builder b;
		batch_builder_init(&b, buf, sizeof(buf));
		uint8_t v[300];
		memset(v, 'x', sizeof(v));
		for (uint32_t k = 0; k < count; k++)
			assert_int_equal(batch_add(&b, 1000 + i, NULL, 0, v, vlen, NULL, 0), 0);
		len[i] = batch_seal(&b, i + 1, 0);
		assert_int_equal(log_append_sync(log, buf, len[i], false, &base[i]), 0);
		end[i] = base[i] + count;
		pos_total += len[i];
	}
	assert_true(log_segment_count(log) > 10);

	/* Something staged: refused (the walk covers written batches only). */
	{
		uint8_t buf[256];
		struct batch_builder b;
		batch_builder_init(&b, buf, sizeof(buf));
		assert_int_equal(batch_add(&b, 1, NULL, 0, "x", 1, NULL, 0), 0);
		uint32_t l = batch_seal(&b, 0, 0);
		uint64_t bo;
		assert_int_equal(log_append(log, buf, l, &bo), 0);
		struct visit v = { .n = 0 };
		assert_int_equal(log_scan_tail(log, 1 << 20, visit_fn, &v), -EBUSY);
		assert_int_equal(log_sync(log), 0);
	}
	assert_int_equal(log_close(log), 0);
	assert_int_equal(log_open(te.env, dir, &cfg, &log, NULL), 0);

	/* Everything: newest first, dense, across every segment. */
	static struct visit v;
	memset(&v, 0, sizeof(v));
	assert_int_equal(log_scan_tail(log, UINT64_MAX, visit_fn, &v), 0);
	assert_int_equal(v.n, N + 1);
	assert_int_equal(v.pid[0], 0); /* the staged one, now written */
	for (uint32_t k = 1; k <= N; k++) {
		assert_int_equal(v.pid[k], N - k + 1);
		assert_int_equal(v.base[k], base[N - k]);
	}

	/* A byte budget: at least that much, and at most one index interval
	 * and one batch more (plus the batch appended last). */
	for (int round = 0; round < 20; round++) {
		uint64_t budget = 1 + tu_rand(&rng) % (pos_total / 2);
		memset(&v, 0, sizeof(v));
		assert_int_equal(log_scan_tail(log, budget, visit_fn, &v), 0);
		uint64_t bytes = 0;
		for (uint32_t k = 1; k < v.n; k++)
			bytes += len[N - k];
		if (bytes + 4096 < budget || bytes > budget + 256 + 4096 + 400)
			fail_msg("budget %" PRIu64 ": walked %" PRIu64 " bytes in %u batches",
				 budget, bytes, v.n);
		for (uint32_t k = 1; k < v.n; k++)
			assert_int_equal(v.base[k], base[N - k]);
	}

	/* The callback stops it. */
	memset(&v, 0, sizeof(v));
	v.stop_after = 17;
	assert_int_equal(log_scan_tail(log, UINT64_MAX, visit_fn, &v), 0);
	assert_int_equal(v.n, 17);
	assert_int_equal(v.base[16], base[N - 16]);
	assert_int_equal(log_close(log), 0);

	/* An empty log: nothing to visit. */
	char *dir2 = tu_tmpdir("tail-empty");
	assert_int_equal(log_open(te.env, dir2, &cfg, &log, NULL), 0);
	memset(&v, 0, sizeof(v));
	assert_int_equal(log_scan_tail(log, UINT64_MAX, visit_fn, &v), 0);
	assert_int_equal(v.n, 0);
	assert_int_equal(log_close(log), 0);
	tu_env_fini(&te);
	tu_rmtree(dir);
	tu_rmtree(dir2);
	free(dir);
	free(dir2);
	(void)end;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scan_tail),
		cmocka_unit_test_setup_teardown(test_retry_after_kill9_is_deduplicated, rsetup,
						rteardown),
		cmocka_unit_test_setup_teardown(test_restart_remembers_64_producers, rsetup,
						rteardown),
		cmocka_unit_test_setup_teardown(test_crash_loop, setup, teardown),
	};
	if (getenv("TEST_FILTER"))
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
