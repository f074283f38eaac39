/* mqbench.c — measures a ringmq broker through libringmq: produce and consume
 * throughput, and produce or produce→fetch latency under an open-loop load.
 *
 * At a target --rate every message has a scheduled send time (start + i/rate)
 * and its latency is measured from that time, not from when produce() was
 * finally called, so a stall of the client, the broker or the disk shows up
 * as latency of every message it delayed instead of silently lowering the
 * rate (coordinated omission). Latencies go into a log-linear histogram
 * with buckets of at most 1/128 of their value; no sample is stored.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "client/ringmq.h"

#define NS_PER_S 1000000000ll
#define THREADS_MAX 64
#define XCONF_MAX 32
/* Bounds on how long anything may run: a benchmark must end by itself. */
#define DURATION_MAX_S 3600.0
#define DEFAULT_DURATION_S 10.0
#define DEFAULT_CAP_S 300.0
#define DEFAULT_TIMEOUT_S 30.0
#define POLL_MAX 4096
/* Values are cut from a pool this much larger than one value, at varying
 * offsets, so consecutive values differ without a generator per message. */
#define POOL_SLACK 65536u
/* e2e values start with the scheduled send time; stamps further than this
 * from the run's start belong to someone else's messages. */
#define STAMP_SLACK_NS (10 * NS_PER_S)

enum mode { MODE_PRODUCE, MODE_CONSUME, MODE_E2E };
static const char *const mode_name[] = { "produce", "consume", "e2e" };

struct opts {
	enum mode mode;
	const char *brokers;
	const char *topic;
	uint32_t size;
	uint64_t count;         /* 0: run for the duration (consume: to the end) */
	double duration;        /* load time, or the cap with --count */
	bool duration_set;
	double rate;            /* messages/s over all producers; 0: unthrottled */
	const char *acks;
	unsigned producers;
	unsigned consumers;
	bool consumers_set;
	unsigned groups;        /* e2e: consumers are members of this many groups, one each */
	uint32_t partitions;    /* for a topic mqbench creates; 0: the broker's default */
	const char *flush;      /* the same */
	uint32_t keys;
	const char *compression;
	const char *batch_size; /* NULL: the library's default */
	const char *linger_ms;
	double warmup;
	double timeout;
	bool text;
	bool json;
	const char *xconf[XCONF_MAX][2];
	unsigned nxconf;
};

/* ---- time ---- */

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void sleep_until(int64_t t)
{
	struct timespec ts = { (time_t)(t / NS_PER_S), (long)(t % NS_PER_S) };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* ---- histogram ----
 *
 * Values below 256 have a bucket each; above, each power of two [2^e, 2^e+1)
 * is cut into 128 equal buckets, so a bucket is at most 1/128 (0.8%) of the
 * values in it wide. 7424 buckets of 8 bytes cover all of uint64_t.
 *
 * One thread writes a histogram (a producer's I/O thread or a consumer);
 * the progress line reads it meanwhile. Relaxed atomic stores and loads make
 * those reads well-defined and cost nothing extra on x86 or arm64.
 */
#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_LINEAR (2 * HIST_SUB)
#define HIST_BUCKETS (HIST_LINEAR + (64 - HIST_SUB_BITS - 1) * HIST_SUB)

struct hist {
	uint64_t c[HIST_BUCKETS];
	uint64_t n, max, sum;
};

static unsigned hist_index(uint64_t v)
{
	if (v < HIST_LINEAR)
		return (unsigned)v;
	unsigned e = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = e - HIST_SUB_BITS;
	return HIST_LINEAR + (e - HIST_SUB_BITS - 1) * HIST_SUB +
	       (unsigned)((v >> shift) - HIST_SUB);
}

/* The middle of bucket i: within half a bucket (0.4%) of any value in it. */
static double hist_mid(unsigned i)
{
	if (i < HIST_LINEAR)
		return i;
	unsigned k = i - HIST_LINEAR;
	unsigned e = HIST_SUB_BITS + 1 + k / HIST_SUB;
	uint64_t width = 1ull << (e - HIST_SUB_BITS);
	uint64_t low = (uint64_t)(HIST_SUB + k % HIST_SUB) << (e - HIST_SUB_BITS);
	return (double)low + (double)(width - 1) / 2;
}

static void hist_add(struct hist *h, uint64_t v)
{
	unsigned i = hist_index(v);
	__atomic_store_n(&h->c[i], h->c[i] + 1, __ATOMIC_RELAXED);
	__atomic_store_n(&h->sum, h->sum + v, __ATOMIC_RELAXED);
	if (v > h->max)
		__atomic_store_n(&h->max, v, __ATOMIC_RELAXED);
	__atomic_store_n(&h->n, h->n + 1, __ATOMIC_RELAXED);
}

static void hist_merge(struct hist *to, const struct hist *from)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		to->c[i] += __atomic_load_n(&from->c[i], __ATOMIC_RELAXED);
	to->n += __atomic_load_n(&from->n, __ATOMIC_RELAXED);
	to->sum += __atomic_load_n(&from->sum, __ATOMIC_RELAXED);
	uint64_t m = __atomic_load_n(&from->max, __ATOMIC_RELAXED);
	if (m > to->max)
		to->max = m;
}

/* The value at percentile q (0 < q <= 100), or 0 for an empty histogram.
 * Taken over the bucket counts, not h->n: a concurrent snapshot may see a
 * bucket's increment before or after the total's. */
static double hist_pct(const struct hist *h, double q)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		n += h->c[i];
	if (n == 0)
		return 0;
	uint64_t rank = (uint64_t)ceil(q / 100.0 * (double)n);
	if (rank < 1)
		rank = 1;
	if (rank >= n)
		return (double)h->max;
	uint64_t seen = 0;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->c[i];
		if (seen >= rank) {
			double v = hist_mid(i);
			return v > (double)h->max ? (double)h->max : v;
		}
	}
	return (double)h->max;
}

/* ---- the run ---- */

struct producer {
	pthread_t th;
	unsigned idx;
	struct ringmq_producer *p;
	struct hist ack;        /* delivery time - scheduled time, ns */
	uint64_t sent;          /* produce() calls that took a message */
	uint64_t acked;         /* delivered: I/O thread, read atomically */
	uint64_t failed;        /* delivery errors: I/O thread */
	uint64_t refused;       /* produce() errors: this thread */
	int64_t last_ack_ns;
	int first_err;
	bool flush_timed_out;
};

struct consumer {
	pthread_t th;
	unsigned idx;
	struct ringmq_consumer *c;
	struct ringmq_topic_partition *tps;
	int64_t *end;           /* consume: stop at this offset, per assigned partition */
	int64_t *next;
	size_t ntps;
	struct hist e2e;
	uint64_t msgs, bytes;   /* read atomically by the progress line */
	uint64_t foreign;       /* e2e: values without a stamp of this run */
	int64_t last_ns;
	int err;
	char errstr[256];
	char group[256];        /* --groups: the group this consumer is the member of */
};

struct run {
	struct opts o;
	struct ringmq_config *cfg;
	uint32_t nparts;
	char flush[64];
	int64_t *log_start, *log_end; /* per partition, as described at start */
	uint32_t key_width;
	pthread_barrier_t go;
	int64_t start_ns, end_ns, warmup_end_ns;
	int stop;               /* set by a signal or the main thread */
	uint64_t expected;      /* e2e: consumers stop after this many; UINT64_MAX until known */
	int64_t drain_deadline; /* e2e: and at the latest at this time */
	uint64_t consumed;      /* consume --count: messages taken so far */
	struct producer *prod;
	struct consumer *cons;
};

/* One run per process; the delivery callback finds it here. */
static struct run R;

static volatile sig_atomic_t got_signal;

static void on_signal(int sig)
{
	(void)sig;
	got_signal = 1;
}

static bool stopping(struct run *r)
{
	return got_signal || __atomic_load_n(&r->stop, __ATOMIC_RELAXED);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mqbench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

/* Incompressible bytes, or word-like text that lz4 shrinks about 2x, so
 * --compression lz4 can be measured both ways. */
static void fill_pool(uint8_t *p, size_t n, uint64_t seed, bool text)
{
	static const char *const words[] = {
		"order", "created", "id", "customer", "total", "currency", "EUR", "item",
		"quantity", "price", "status", "shipped", "warehouse", "berlin", "lisbon",
		"true", "false", "null", "sku", "payment",
	};
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
	for (size_t i = 0; i < n;) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		if (!text) {
			p[i++] = (uint8_t)(s >> 24);
			continue;
		}
		const char *w = words[(s >> 20) % (sizeof(words) / sizeof(words[0]))];
		for (; *w != '\0' && i < n; w++)
			p[i++] = (uint8_t)*w;
		if (i < n)
			p[i++] = (s >> 40) % 3 ? ' ' : (uint8_t)('0' + (s >> 50) % 10);
	}
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* "k" and a fixed-width decimal number, so every key has the same length. */
static void make_key(char *k, uint32_t width, uint32_t n)
{
	k[0] = 'k';
	for (uint32_t i = width; i > 0; i--) {
		k[i] = (char)('0' + n % 10);
		n /= 10;
	}
}

/* ---- producers ---- */

/* The opaque of each message is its scheduled send time; 0 marks the
 * warm-up message, which is not measured. */
static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	struct producer *pr = opaque;
	int64_t now = mono_ns();
	int64_t sched = (int64_t)(intptr_t)d->opaque;
	if (d->err != 0) {
		if (pr->first_err == 0)
			pr->first_err = d->err;
		__atomic_store_n(&pr->failed, pr->failed + 1, __ATOMIC_RELAXED);
		return;
	}
	if (sched == 0)
		return;
	__atomic_store_n(&pr->acked, pr->acked + 1, __ATOMIC_RELAXED);
	__atomic_store_n(&pr->last_ack_ns, now, __ATOMIC_RELAXED);
	if (sched >= R.warmup_end_ns)
		hist_add(&pr->ack, now > sched ? (uint64_t)(now - sched) : 0);
}

static void *producer_main(void *arg)
{
	struct producer *pr = arg;
	struct run *r = &R;
	const struct opts *o = &r->o;
	/* Wake-ups on time matter more than the power the default 50 us of
	 * timer slack would save: oversleeping is counted as latency. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
	size_t pool_len = o->size + POOL_SLACK;
	uint8_t *pool = malloc(pool_len);
	if (pool == NULL)
		die("out of memory");
	fill_pool(pool, pool_len, pr->idx + 1, o->text);
	uint64_t rng = 0x2545F4914F6CDD1Dull * (pr->idx + 1);
	char key[16];
	uint32_t key_len = o->keys ? r->key_width + 1 : 0;
	unsigned P = o->producers;

	pthread_barrier_wait(&r->go);
	sleep_until(r->start_ns);
	for (uint64_t k = 0;; k++) {
		uint64_t g = k * P + pr->idx; /* the message's place in the whole run */
		if (o->count && g >= o->count)
			break;
		if (stopping(r))
			break;
		int64_t sched;
		if (o->rate > 0) {
			sched = r->start_ns + (int64_t)((double)g * 1e9 / o->rate);
			if (sched >= r->end_ns)
				break;
			if (mono_ns() < sched)
				sleep_until(sched);
		} else {
			sched = mono_ns();
			if (sched >= r->end_ns)
				break;
		}
		uint64_t x = xorshift(&rng);
		uint8_t *value = pool + x % POOL_SLACK;
		if (o->mode == MODE_E2E)
			memcpy(value, &sched, sizeof(sched));
		if (key_len)
			make_key(key, r->key_width, (uint32_t)((x >> 20) % o->keys));
		int ret = ringmq_produce(pr->p, o->topic, RINGMQ_PARTITION_ANY,
					 key_len ? key : NULL, key_len, value, o->size, NULL, 0, 0,
					 (void *)(intptr_t)sched);
		if (ret == 0) {
			pr->sent++;
			continue;
		}
		pr->refused++;
		if (pr->first_err == 0)
			pr->first_err = ret;
		if (ret != RINGMQ_ERR_QUEUE_FULL)
			break; /* closed, too large, invalid: every next call fails too */
	}
	if (ringmq_producer_flush(pr->p, (int)(o->timeout * 1000)) != 0)
		pr->flush_timed_out = true;
	free(pool);
	return NULL;
}

/* One message per producer, waited for, before the clock starts: it
 * connects, loads the topic's metadata and opens the first batch, none of
 * which belongs in the measured latency. */
static void producer_warm_up(struct run *r, struct producer *pr)
{
	const struct opts *o = &r->o;
	uint8_t *v = calloc(1, o->size > 8 ? o->size : 8);
	if (v == NULL)
		die("out of memory");
	char key[16] = "k";
	make_key(key, r->key_width, 0);
	int ret = ringmq_produce(pr->p, o->topic, RINGMQ_PARTITION_ANY, o->keys ? key : NULL,
				 o->keys ? r->key_width + 1 : 0, v, o->size, NULL, 0, 0, NULL);
	free(v);
	if (ret != 0)
		die("producer %u: %s", pr->idx, ringmq_strerror(ret));
	if (ringmq_producer_flush(pr->p, (int)(o->timeout * 1000)) != 0)
		die("producer %u: no acknowledgement within %.0f s (--timeout)", pr->idx,
		    o->timeout);
	if (pr->first_err != 0)
		die("producer %u: %s", pr->idx, ringmq_strerror(pr->first_err));
}

/* ---- consumers ---- */

static bool consumer_done(struct run *r, struct consumer *cs)
{
	const struct opts *o = &r->o;
	if (o->mode == MODE_E2E) {
		uint64_t got = 0;
		if (o->groups) /* every group gets every message */
			got = __atomic_load_n(&cs->msgs, __ATOMIC_RELAXED);
		for (unsigned i = 0; !o->groups && i < o->consumers; i++)
			got += __atomic_load_n(&r->cons[i].msgs, __ATOMIC_RELAXED);
		return got >= __atomic_load_n(&r->expected, __ATOMIC_ACQUIRE) ||
		       mono_ns() >= __atomic_load_n(&r->drain_deadline, __ATOMIC_RELAXED);
	}
	if (o->count && __atomic_load_n(&r->consumed, __ATOMIC_RELAXED) >= o->count)
		return true;
	for (size_t i = 0; i < cs->ntps; i++)
		if (cs->next[i] < cs->end[i])
			return false;
	return true;
}

static void *consumer_main(void *arg)
{
	struct consumer *cs = arg;
	struct run *r = &R;
	const struct opts *o = &r->o;
	struct ringmq_message *msgs = calloc(POLL_MAX, sizeof(*msgs));
	if (msgs == NULL)
		die("out of memory");
	pthread_barrier_wait(&r->go);
	while (!stopping(r) && !consumer_done(r, cs)) {
		size_t n;
		int ret = ringmq_consumer_poll(cs->c, 100, msgs, POLL_MAX, &n, cs->errstr,
					       sizeof(cs->errstr));
		int64_t now = mono_ns();
		if (ret != 0) {
			cs->err = ret;
			break;
		}
		if (n == 0)
			continue;
		size_t take = n;
		if (o->mode == MODE_CONSUME && o->count) {
			uint64_t before = __atomic_fetch_add(&r->consumed, n, __ATOMIC_RELAXED);
			take = before >= o->count ? 0
			       : o->count - before < n ? (size_t)(o->count - before) : n;
		}
		uint64_t bytes = 0, got = 0;
		for (size_t i = 0; i < take; i++) {
			const struct ringmq_message *m = &msgs[i];
			if (o->mode == MODE_CONSUME) {
				for (size_t k = 0; k < cs->ntps; k++)
					if (cs->tps[k].partition == m->partition)
						cs->next[k] = m->offset + 1;
				bytes += m->key_len + m->value_len;
				got++;
				continue;
			}
			/* Only this run's messages count: not the warm-up ones
			 * (stamp 0), nor another writer's. */
			int64_t stamp;
			if (m->value_len < sizeof(stamp)) {
				cs->foreign++;
				continue;
			}
			memcpy(&stamp, m->value, sizeof(stamp));
			if (stamp < r->start_ns - STAMP_SLACK_NS || stamp > now) {
				cs->foreign++;
				continue;
			}
			bytes += m->key_len + m->value_len;
			got++;
			if (stamp >= r->warmup_end_ns)
				hist_add(&cs->e2e, (uint64_t)(now - stamp));
		}
		__atomic_store_n(&cs->bytes, cs->bytes + bytes, __ATOMIC_RELAXED);
		__atomic_store_n(&cs->msgs, cs->msgs + got, __ATOMIC_RELAXED);
		if (got)
			__atomic_store_n(&cs->last_ns, now, __ATOMIC_RELAXED);
	}
	free(msgs);
	return NULL;
}

/* ---- set-up ---- */

static const char *topic_config(const struct ringmq_topic_info *t, const char *key)
{
	for (size_t i = 0; i < t->nconfigs; i++)
		if (strcmp(t->configs[i].key, key) == 0)
			return t->configs[i].value;
	return NULL;
}

/* Finds the topic, creating it (produce and e2e) if it does not exist. */
static void ensure_topic(struct run *r)
{
	const struct opts *o = &r->o;
	char err[256];
	struct ringmq_admin *a = ringmq_admin_new(r->cfg, err, sizeof(err));
	if (a == NULL)
		die("%s", err);
	struct ringmq_topic_info *t = NULL;
	int ret = ringmq_topic_describe(a, o->topic, &t, err, sizeof(err));
	if (ret == RINGMQ_ERR_UNKNOWN_TOPIC && o->mode != MODE_CONSUME) {
		struct ringmq_kv kv[1];
		size_t nkv = 0;
		if (o->flush)
			kv[nkv++] = (struct ringmq_kv){ "flush", o->flush };
		ret = ringmq_topic_create(a, o->topic, o->partitions, kv, nkv, err, sizeof(err));
		if (ret != 0 && ret != RINGMQ_ERR_TOPIC_EXISTS)
			die("cannot create topic '%s': %s", o->topic, err);
		ret = ringmq_topic_describe(a, o->topic, &t, err, sizeof(err));
	}
	if (ret == RINGMQ_ERR_UNKNOWN_TOPIC)
		die("topic '%s' does not exist", o->topic);
	if (ret != 0)
		die("topic '%s': %s", o->topic, err);
	r->nparts = t->partitions;
	const char *fl = topic_config(t, "flush");
	snprintf(r->flush, sizeof(r->flush), "%s", fl ? fl : "?");
	if (o->partitions && o->partitions != t->partitions)
		fprintf(stderr,
			"mqbench: topic '%s' exists with %u partitions; using it as it is\n",
			o->topic, t->partitions);
	if (o->flush && fl && strcmp(o->flush, fl) != 0)
		fprintf(stderr, "mqbench: topic '%s' exists with flush %s; using it as it is\n",
			o->topic, fl);
	r->log_start = calloc(r->nparts, sizeof(*r->log_start));
	r->log_end = calloc(r->nparts, sizeof(*r->log_end));
	if (r->log_start == NULL || r->log_end == NULL)
		die("out of memory");
	for (uint32_t i = 0; i < r->nparts && t->parts; i++) {
		int32_t p = t->parts[i].partition;
		if (p >= 0 && (uint32_t)p < r->nparts) {
			r->log_start[p] = t->parts[i].log_start;
			r->log_end[p] = t->parts[i].log_end;
		}
	}
	ringmq_topics_free(t, 1);
	ringmq_admin_free(a);
}

static void set_conf(struct ringmq_config *cfg, const char *key, const char *value)
{
	char err[256];
	if (ringmq_config_set(cfg, key, value, err, sizeof(err)) != 0)
		die("%s", err);
}

static void make_config(struct run *r)
{
	const struct opts *o = &r->o;
	char buf[32];
	r->cfg = ringmq_config_new();
	if (r->cfg == NULL)
		die("out of memory");
	set_conf(r->cfg, "client.id", "mqbench");
	if (o->brokers)
		set_conf(r->cfg, "bootstrap.servers", o->brokers);
	set_conf(r->cfg, "acks", o->acks);
	set_conf(r->cfg, "compression", o->compression);
	if (o->batch_size)
		set_conf(r->cfg, "batch.size", o->batch_size);
	if (o->linger_ms)
		set_conf(r->cfg, "linger.ms", o->linger_ms);
	/* Nothing may wait past --timeout: not produce() on a full buffer,
	 * not a message the broker never acknowledges. */
	snprintf(buf, sizeof(buf), "%d", (int)(o->timeout * 1000));
	set_conf(r->cfg, "max.block.ms", buf);
	set_conf(r->cfg, "delivery.timeout.ms", buf);
	for (unsigned i = 0; i < o->nxconf; i++)
		set_conf(r->cfg, o->xconf[i][0], o->xconf[i][1]);
}

static void start_producers(struct run *r)
{
	const struct opts *o = &r->o;
	r->prod = calloc(o->producers, sizeof(*r->prod));
	if (r->prod == NULL)
		die("out of memory");
	for (unsigned i = 0; i < o->producers; i++) {
		struct producer *pr = &r->prod[i];
		char err[256];
		pr->idx = i;
		struct ringmq_config *cfg = ringmq_config_dup(r->cfg);
		if (cfg == NULL)
			die("out of memory");
		ringmq_config_set_delivery_cb(cfg, on_delivery, pr);
		pr->p = ringmq_producer_new(cfg, err, sizeof(err));
		ringmq_config_free(cfg);
		if (pr->p == NULL)
			die("producer %u: %s", i, err);
		producer_warm_up(r, pr);
	}
}

/* --groups: consumer i is the only member of a group of its own, new to the
 * broker (so it starts at the log's end: auto.offset.reset latest), and
 * holds every partition. Each waits until the broker has assigned it all of
 * them, so none misses a message the producers send once the clock starts. */
static void start_group_members(struct run *r)
{
	const struct opts *o = &r->o;
	int64_t deadline = mono_ns() + (int64_t)(o->timeout * 1e9);
	struct ringmq_config *cfg = ringmq_config_dup(r->cfg);
	if (cfg == NULL)
		die("out of memory");
	set_conf(cfg, "auto.offset.reset", "latest");
	struct ringmq_message *msgs = calloc(POLL_MAX, sizeof(*msgs));
	if (msgs == NULL)
		die("out of memory");
	for (unsigned i = 0; i < o->groups; i++) {
		struct consumer *cs = &r->cons[i];
		char err[256];
		const char *topics[] = { o->topic };
		cs->idx = i;
		/* Unique per run, so the group has no committed offsets. */
		snprintf(cs->group, sizeof(cs->group), "mqbench-%.150s-%ld-g%u", o->topic,
			 (long)getpid(), i + 1);
		cs->c = ringmq_consumer_new(cfg, err, sizeof(err));
		if (cs->c == NULL)
			die("consumer %u: %s", i, err);
		if (ringmq_consumer_subscribe(cs->c, cs->group, topics, 1, err, sizeof(err)) != 0)
			die("group %s: %s", cs->group, err);
	}
	for (unsigned i = 0; i < o->groups; i++) {
		struct consumer *cs = &r->cons[i];
		for (;;) {
			char err[256];
			size_t n = 0;
			int ret = ringmq_consumer_poll(cs->c, 50, msgs, POLL_MAX, &n, err,
						       sizeof(err));
			if (ret != 0)
				die("group %s: %s", cs->group, err);
			/* Anything polled now was there before the clock started:
			 * the e2e stamps would mark it foreign anyway. */
			struct ringmq_topic_partition *tps;
			size_t np = 0;
			if (ringmq_consumer_assignment(cs->c, &tps, &np) != 0)
				die("out of memory");
			free(tps);
			if (np >= r->nparts)
				break;
			if (mono_ns() >= deadline)
				die("group %s: assigned %zu of %u partitions within --timeout %.0f s",
				    cs->group, np, r->nparts, o->timeout);
		}
	}
	free(msgs);
	ringmq_config_free(cfg);
}

/* Partition p goes to consumer p % consumers. */
static void start_consumers(struct run *r)
{
	const struct opts *o = &r->o;
	r->cons = calloc(o->consumers, sizeof(*r->cons));
	if (r->cons == NULL)
		die("out of memory");
	if (o->groups) {
		start_group_members(r);
		return;
	}
	for (unsigned i = 0; i < o->consumers; i++) {
		struct consumer *cs = &r->cons[i];
		char err[256];
		cs->idx = i;
		size_t n = (r->nparts - i + o->consumers - 1) / o->consumers;
		cs->tps = calloc(n, sizeof(*cs->tps));
		cs->end = calloc(n, sizeof(*cs->end));
		cs->next = calloc(n, sizeof(*cs->next));
		if (cs->tps == NULL || cs->end == NULL || cs->next == NULL)
			die("out of memory");
		for (uint32_t p = i; p < r->nparts; p += o->consumers) {
			int64_t from = o->mode == MODE_CONSUME ? RINGMQ_OFFSET_BEGINNING
							       : RINGMQ_OFFSET_END;
			cs->tps[cs->ntps] = (struct ringmq_topic_partition){ o->topic, (int32_t)p,
									      from };
			cs->next[cs->ntps] = r->log_start[p];
			cs->end[cs->ntps] = r->log_end[p];
			cs->ntps++;
		}
		cs->c = ringmq_consumer_new(r->cfg, err, sizeof(err));
		if (cs->c == NULL)
			die("consumer %u: %s", i, err);
		if (ringmq_consumer_assign(cs->c, cs->tps, cs->ntps, err, sizeof(err)) != 0)
			die("consumer %u: %s", i, err);
	}
}

/* ---- output ---- */

struct totals {
	uint64_t sent, acked, failed, refused, msgs, bytes, foreign;
	struct hist lat;        /* what the mode measures: ack or e2e latency */
	struct hist ack;        /* e2e: the producers' ack latency too */
	int64_t last_ns;
	int64_t last_ack_ns;    /* the producers' last acknowledgement */
	int first_err;
};

static void sum_up(struct run *r, struct totals *t)
{
	const struct opts *o = &r->o;
	uint32_t key_len = o->keys ? r->key_width + 1 : 0;
	memset(t, 0, sizeof(*t));
	for (unsigned i = 0; r->prod && i < o->producers; i++) {
		struct producer *pr = &r->prod[i];
		t->sent += pr->sent;
		t->acked += __atomic_load_n(&pr->acked, __ATOMIC_RELAXED);
		t->failed += __atomic_load_n(&pr->failed, __ATOMIC_RELAXED);
		t->refused += pr->refused;
		hist_merge(o->mode == MODE_PRODUCE ? &t->lat : &t->ack, &pr->ack);
		int64_t last = __atomic_load_n(&pr->last_ack_ns, __ATOMIC_RELAXED);
		if (o->mode == MODE_PRODUCE && last > t->last_ns)
			t->last_ns = last;
		if (last > t->last_ack_ns)
			t->last_ack_ns = last;
		if (t->first_err == 0)
			t->first_err = pr->first_err;
	}
	if (o->mode == MODE_PRODUCE)
		t->bytes = t->acked * (o->size + key_len);
	for (unsigned i = 0; r->cons && i < o->consumers; i++) {
		struct consumer *cs = &r->cons[i];
		t->msgs += __atomic_load_n(&cs->msgs, __ATOMIC_RELAXED);
		t->bytes += __atomic_load_n(&cs->bytes, __ATOMIC_RELAXED);
		t->foreign += cs->foreign;
		hist_merge(&t->lat, &cs->e2e);
		int64_t last = __atomic_load_n(&cs->last_ns, __ATOMIC_RELAXED);
		if (last > t->last_ns)
			t->last_ns = last;
	}
	if (o->mode == MODE_PRODUCE)
		t->msgs = t->acked;
}

static void progress(struct run *r, int64_t now, uint64_t *prev_msgs, uint64_t *prev_bytes,
		     int64_t *prev_ns)
{
	static struct totals t;
	sum_up(r, &t);
	double dt = (double)(now - *prev_ns) / 1e9;
	const char *what = r->o.mode == MODE_PRODUCE ? "acked" : "received";
	fprintf(stderr, "mqbench: %5.0f s  %s %9.0f msgs/s %8.1f MB/s",
		(double)(now - r->start_ns) / 1e9, what, (double)(t.msgs - *prev_msgs) / dt,
		(double)(t.bytes - *prev_bytes) / dt / 1e6);
	if (r->o.mode != MODE_CONSUME)
		fprintf(stderr, "  p99 so far %.3f ms", hist_pct(&t.lat, 99) / 1e6);
	fputc('\n', stderr);
	*prev_msgs = t.msgs;
	*prev_bytes = t.bytes;
	*prev_ns = now;
}

static const double pcts[] = { 50, 90, 99, 99.9, 99.99 };
static const char *const pct_names[] = { "p50", "p90", "p99", "p99_9", "p99_99" };

static void print_lat_human(const char *label, const struct hist *h)
{
	printf("  %-10s", label);
	if (h->n == 0) {
		printf(" no samples\n");
		return;
	}
	for (size_t i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
		printf(" p%g %.3f", pcts[i], hist_pct(h, pcts[i]) / 1e6);
	printf(" max %.3f ms (%" PRIu64 " samples)\n", (double)h->max / 1e6, h->n);
}

static void print_lat_json(const char *name, const struct hist *h)
{
	printf(",\"%s\":{\"samples\":%" PRIu64, name, h->n);
	for (size_t i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
		printf(",\"%s\":%.1f", pct_names[i], hist_pct(h, pcts[i]) / 1e3);
	printf(",\"max\":%.1f,\"mean\":%.1f}", (double)h->max / 1e3,
	       h->n ? (double)h->sum / (double)h->n / 1e3 : 0.0);
}

/* --groups: one group's messages/s and MB/s, from the clock's start to the
 * last message it received. */
static double group_elapsed(const struct run *r, const struct consumer *cs)
{
	return cs->last_ns > r->start_ns ? (double)(cs->last_ns - r->start_ns) / 1e9 : 0;
}

static double group_rate(const struct run *r, const struct consumer *cs)
{
	double el = group_elapsed(r, cs);
	return el > 0 ? (double)cs->msgs / el : 0;
}

/* The group that received least per second. */
static const struct consumer *slowest_group(const struct run *r)
{
	const struct consumer *min = &r->cons[0];
	for (unsigned i = 1; i < r->o.groups; i++)
		if (group_rate(r, &r->cons[i]) < group_rate(r, min))
			min = &r->cons[i];
	return min;
}

/* Topic names are [A-Za-z0-9._-]: nothing in them needs escaping in JSON. */
static void report(struct run *r, const struct totals *t, double elapsed, double cpu_user,
		   double cpu_sys, bool complete)
{
	const struct opts *o = &r->o;
	double msgs_s = elapsed > 0 ? (double)t->msgs / elapsed : 0;
	double mb_s = elapsed > 0 ? (double)t->bytes / elapsed / 1e6 : 0;
	uint64_t msgs = t->msgs, bytes = t->bytes;
	if (o->groups) {
		/* Every group reads every message: the headline is the slowest. */
		const struct consumer *g = slowest_group(r);
		double el = group_elapsed(r, g);
		msgs = g->msgs;
		bytes = g->bytes;
		msgs_s = group_rate(r, g);
		mb_s = el > 0 ? (double)g->bytes / el / 1e6 : 0;
	}
	double ack_el = t->last_ack_ns > r->start_ns ? (double)(t->last_ack_ns - r->start_ns) / 1e9
						     : 0;
	double acked_s = ack_el > 0 ? (double)t->acked / ack_el : 0;
	const char *bs = o->batch_size ? o->batch_size : "default";
	const char *lg = o->linger_ms ? o->linger_ms : "default";
	if (o->json) {
		printf("{\"mode\":\"%s\",\"topic\":\"%s\",\"partitions\":%u,\"flush\":\"%s\","
		       "\"producers\":%u,\"consumers\":%u,\"groups\":%u,\"size\":%u,"
		       "\"keys\":%u,\"acks\":\"%s\",\"compression\":\"%s\","
		       "\"batch_size\":\"%s\",\"linger_ms\":\"%s\",\"rate\":%g,"
		       "\"warmup_s\":%g",
		       mode_name[o->mode], o->topic, r->nparts, r->flush,
		       o->mode == MODE_CONSUME ? 0 : o->producers,
		       o->mode == MODE_PRODUCE ? 0 : o->consumers, o->groups, o->size, o->keys,
		       o->acks, o->compression, bs, lg, o->rate, o->warmup);
		printf(",\"messages\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"sent\":%" PRIu64
		       ",\"failed\":%" PRIu64 ",\"refused\":%" PRIu64 ",\"foreign\":%" PRIu64
		       ",\"elapsed_s\":%.3f,\"msgs_per_s\":%.0f,\"mb_per_s\":%.2f",
		       msgs, bytes, t->sent, t->failed,
		       t->refused, t->foreign, elapsed, msgs_s, mb_s);
		if (o->mode == MODE_E2E)
			printf(",\"acked\":%" PRIu64 ",\"acked_per_s\":%.0f", t->acked, acked_s);
		if (o->mode != MODE_CONSUME)
			print_lat_json("latency_us", &t->lat);
		if (o->mode == MODE_E2E)
			print_lat_json("ack_latency_us", &t->ack);
		for (unsigned i = 0; i < o->groups; i++) {
			const struct consumer *cs = &r->cons[i];
			double el = group_elapsed(r, cs);
			printf("%s{\"group\":\"%s\",\"messages\":%" PRIu64 ",\"msgs_per_s\":%.0f,"
			       "\"mb_per_s\":%.2f,\"last_after_last_ack_ms\":%.1f",
			       i == 0 ? ",\"group_results\":[" : ",", cs->group, cs->msgs,
			       group_rate(r, cs), el > 0 ? (double)cs->bytes / el / 1e6 : 0,
			       cs->last_ns && t->last_ack_ns
				       ? (double)(cs->last_ns - t->last_ack_ns) / 1e6 : 0.0);
			print_lat_json("latency_us", &cs->e2e);
			printf(",\"complete\":%s}%s", cs->msgs >= t->acked && !cs->err ? "true"
											 : "false",
			       i + 1 == o->groups ? "]" : "");
		}
		printf(",\"cpu_user_s\":%.2f,\"cpu_sys_s\":%.2f,\"complete\":%s}\n", cpu_user,
		       cpu_sys, complete ? "true" : "false");
		return;
	}
	printf("mqbench %s: topic %s (%u partitions, flush %s)", mode_name[o->mode], o->topic,
	       r->nparts, r->flush);
	if (o->mode != MODE_CONSUME)
		printf(", %u producer%s, acks=%s, %u B values, %s, compression %s, "
		       "batch.size %s, linger.ms %s", o->producers, o->producers == 1 ? "" : "s",
		       o->acks, o->size, o->keys ? "keyed" : "no keys", o->compression, bs, lg);
	if (o->groups)
		printf(", %u groups of one member each", o->groups);
	else if (o->mode != MODE_PRODUCE)
		printf(", %u consumer%s", o->consumers, o->consumers == 1 ? "" : "s");
	printf("\n");
	if (o->rate > 0)
		printf("  load       open loop at %.0f msgs/s: latency counts from each "
		       "message's scheduled send time\n", o->rate);
	else if (o->mode != MODE_CONSUME)
		printf("  load       unthrottled: latency counts from the produce() call\n");
	if (o->groups)
		printf("  produced   %" PRIu64 " acknowledged, %.0f msgs/s\n", t->acked, acked_s);
	printf("  messages   %" PRIu64 " in %.3f s%s", msgs, elapsed,
	       o->groups ? " (the slowest group)" : "");
	if (o->mode != MODE_CONSUME)
		printf(" (%" PRIu64 " sent, %" PRIu64 " failed, %" PRIu64 " refused)", t->sent,
		       t->failed, t->refused);
	if (t->foreign)
		printf(", %" PRIu64 " not from this run", t->foreign);
	printf("\n  throughput %.0f msgs/s, %.2f MB/s of keys and values (MB = 10^6 bytes)\n",
	       msgs_s, mb_s);
	if (o->mode == MODE_PRODUCE)
		print_lat_human("ack ms", &t->lat);
	if (o->mode == MODE_E2E) {
		print_lat_human("e2e ms", &t->lat);
		print_lat_human("ack ms", &t->ack);
	}
	for (unsigned i = 0; i < o->groups; i++) {
		const struct consumer *cs = &r->cons[i];
		printf("  group %-3u %s: %" PRIu64 " messages, %.0f msgs/s, last one %.1f ms after "
		       "the last ack\n", i + 1, cs->group, cs->msgs, group_rate(r, cs),
		       cs->last_ns && t->last_ack_ns ? (double)(cs->last_ns - t->last_ack_ns) / 1e6
						     : 0.0);
		print_lat_human("  e2e ms", &cs->e2e);
	}
	printf("  cpu        mqbench %.2f s user, %.2f s sys\n", cpu_user, cpu_sys);
	if (!complete)
		printf("  INCOMPLETE: see the line on stderr\n");
}

static double tv_s(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fputs("usage: mqbench produce|consume|e2e -b HOST:PORT -t TOPIC [options]\n"
	      "\n"
	      "Measures a ringmq broker through libringmq.\n"
	      "  produce  producers send messages; throughput and acknowledgement latency\n"
	      "           (delivery callback time - scheduled send time)\n"
	      "  consume  consumers read the topic from the beginning of its partitions\n"
	      "           until --count messages, or with --count 0 to the end each\n"
	      "           partition had at start; throughput\n"
	      "  e2e      producers stamp each value's first 8 bytes with its scheduled\n"
	      "           send time (CLOCK_MONOTONIC ns); consumers, starting at the end\n"
	      "           of the log, measure receive time - scheduled time\n"
	      "\n"
	      "  -b, --broker HOST:PORT  bootstrap broker(s), comma-separated\n"
	      "                          (default $RINGMQ_BROKERS, else 127.0.0.1:9400)\n"
	      "  -t, --topic TOPIC       topic; produce and e2e create it if it does not exist\n"
	      "  --size B                value size in bytes (default 100; e2e: at least 8)\n"
	      "  --count N               messages in all (produce, e2e); consume: stop after\n"
	      "                          N, 0 = to the end (default)\n"
	      "  --duration S            seconds of load when there is no --count (default\n"
	      "                          10); with --count, a cap (default 300). At most 3600\n"
	      "  --rate R                messages/s over all producers, open loop: message i\n"
	      "                          is due at start + i/R and its latency counts from\n"
	      "                          then. 0 (default): as fast as produce() takes them,\n"
	      "                          latency from the produce() call\n"
	      "  --acks 0|1|all          (default all)\n"
	      "  --producers N           producer threads, each with its own producer and\n"
	      "                          connection (default 1; 1..64)\n"
	      "  --consumers N           consumer threads, each with its own connection;\n"
	      "                          partition p goes to consumer p % N (default 1)\n"
	      "  --groups N              e2e: instead, N consumer threads each join a consumer\n"
	      "                          group of its own (new, so it starts at the log's\n"
	      "                          end) and read every partition; each group must see\n"
	      "                          every message. Per-group results; the headline\n"
	      "                          msgs/s is the slowest group's (1..64)\n"
	      "  --partitions N          partitions of a topic mqbench creates (default: the\n"
	      "                          broker's); an existing topic is used as it is\n"
	      "  --flush always|interval:MS|never  flush policy of a topic mqbench creates\n"
	      "                          (default: the broker's)\n"
	      "  --keys K                each message gets one of K keys at random, so the\n"
	      "                          key's hash picks the partition (default 0: no keys,\n"
	      "                          the producer's sticky partition)\n"
	      "  --compression none|lz4  (default none)\n"
	      "  --payload random|text   value bytes: incompressible (default) or word-like\n"
	      "                          text that lz4 shrinks\n"
	      "  --batch-size B          producer batch.size (default: the library's, 64 KiB)\n"
	      "  --linger-ms MS          producer linger.ms (default: the library's, 5)\n"
	      "  -X KEY=VALUE            any other client setting (docs/client.md), repeatable\n"
	      "  --warmup S              leave messages due in the first S seconds out of the\n"
	      "                          latency figures (default 0)\n"
	      "  --timeout S             longest wait after the load for acknowledgements and,\n"
	      "                          in e2e, for consumers to see every acknowledged\n"
	      "                          message; also max.block.ms and delivery.timeout.ms\n"
	      "                          (default 30)\n"
	      "  --json                  print the summary as one JSON object (latencies in\n"
	      "                          microseconds)\n"
	      "  -h, --help              this text\n"
	      "\n"
	      "A progress line goes to stderr every second when stderr is a terminal. The\n"
	      "summary gives messages, msgs/s, MB/s (keys and values; MB = 10^6 bytes) and\n"
	      "latency p50, p90, p99, p99.9, p99.99 and max from a histogram with 0.8%\n"
	      "buckets. Before the clock starts each producer sends one unmeasured message\n"
	      "and waits for it. Exit status: 0; 1 when a message failed, was refused or\n"
	      "(e2e) never arrived, or the run was cut short; 2 on bad usage.\n", f);
}

static void bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void bad_usage(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mqbench: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs(" (mqbench --help)\n", stderr);
	va_end(ap);
	exit(2);
}

static uint64_t parse_u64(const char *opt, const char *v, uint64_t lo, uint64_t hi)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (errno != 0 || end == v || *end != '\0' || *v == '-' || x < lo || x > hi)
		bad_usage("%s must be a whole number in %" PRIu64 "..%" PRIu64 ", not '%s'", opt,
			  lo, hi, v);
	return x;
}

static double parse_dbl(const char *opt, const char *v, double lo, double hi)
{
	char *end;
	errno = 0;
	double x = strtod(v, &end);
	if (errno != 0 || end == v || *end != '\0' || !(x >= lo && x <= hi))
		bad_usage("%s must be a number in %g..%g, not '%s'", opt, lo, hi, v);
	return x;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
	enum {
		O_SIZE = 256, O_COUNT, O_DURATION, O_RATE, O_ACKS, O_PRODUCERS, O_CONSUMERS,
		O_PARTITIONS, O_FLUSH, O_KEYS, O_COMPRESSION, O_PAYLOAD, O_BATCH, O_LINGER,
		O_WARMUP, O_TIMEOUT, O_JSON, O_GROUPS,
	};
	static const struct option lo[] = {
		{ "broker", required_argument, NULL, 'b' },
		{ "topic", required_argument, NULL, 't' },
		{ "size", required_argument, NULL, O_SIZE },
		{ "count", required_argument, NULL, O_COUNT },
		{ "duration", required_argument, NULL, O_DURATION },
		{ "rate", required_argument, NULL, O_RATE },
		{ "acks", required_argument, NULL, O_ACKS },
		{ "producers", required_argument, NULL, O_PRODUCERS },
		{ "consumers", required_argument, NULL, O_CONSUMERS },
		{ "groups", required_argument, NULL, O_GROUPS },
		{ "partitions", required_argument, NULL, O_PARTITIONS },
		{ "flush", required_argument, NULL, O_FLUSH },
		{ "keys", required_argument, NULL, O_KEYS },
		{ "compression", required_argument, NULL, O_COMPRESSION },
		{ "payload", required_argument, NULL, O_PAYLOAD },
		{ "batch-size", required_argument, NULL, O_BATCH },
		{ "linger-ms", required_argument, NULL, O_LINGER },
		{ "warmup", required_argument, NULL, O_WARMUP },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "json", no_argument, NULL, O_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	*o = (struct opts){
		.size = 100,
		.acks = "all",
		.producers = 1,
		.consumers = 1,
		.compression = "none",
		.timeout = DEFAULT_TIMEOUT_S,
	};
	int c;
	while ((c = getopt_long(argc, argv, "b:t:X:h", lo, NULL)) != -1) {
		switch (c) {
		case 'b':
			o->brokers = optarg;
			break;
		case 't':
			o->topic = optarg;
			break;
		case 'X': {
			char *eq = strchr(optarg, '=');
			if (eq == NULL || eq == optarg)
				bad_usage("-X takes KEY=VALUE, not '%s'", optarg);
			if (o->nxconf == XCONF_MAX)
				bad_usage("at most %d -X settings", XCONF_MAX);
			*eq = '\0';
			o->xconf[o->nxconf][0] = optarg;
			o->xconf[o->nxconf++][1] = eq + 1;
			break;
		}
		case O_SIZE:
			o->size = (uint32_t)parse_u64("--size", optarg, 0, 16u << 20);
			break;
		case O_COUNT:
			o->count = parse_u64("--count", optarg, 0, UINT64_MAX / 2);
			break;
		case O_DURATION:
			o->duration = parse_dbl("--duration", optarg, 0.001, DURATION_MAX_S);
			o->duration_set = true;
			break;
		case O_RATE:
			o->rate = parse_dbl("--rate", optarg, 0, 1e9);
			break;
		case O_ACKS:
			if (strcmp(optarg, "0") != 0 && strcmp(optarg, "1") != 0 &&
			    strcmp(optarg, "all") != 0)
				bad_usage("--acks must be 0, 1 or all, not '%s'", optarg);
			o->acks = optarg;
			break;
		case O_PRODUCERS:
			o->producers = (unsigned)parse_u64("--producers", optarg, 1, THREADS_MAX);
			break;
		case O_CONSUMERS:
			o->consumers = (unsigned)parse_u64("--consumers", optarg, 1, THREADS_MAX);
			o->consumers_set = true;
			break;
		case O_GROUPS:
			o->groups = (unsigned)parse_u64("--groups", optarg, 1, THREADS_MAX);
			break;
		case O_PARTITIONS:
			o->partitions = (uint32_t)parse_u64("--partitions", optarg, 1, 10000);
			break;
		case O_FLUSH:
			o->flush = optarg;
			break;
		case O_KEYS:
			o->keys = (uint32_t)parse_u64("--keys", optarg, 0, 1000000000);
			break;
		case O_COMPRESSION:
			if (strcmp(optarg, "none") != 0 && strcmp(optarg, "lz4") != 0)
				bad_usage("--compression must be none or lz4, not '%s'", optarg);
			o->compression = optarg;
			break;
		case O_PAYLOAD:
			if (strcmp(optarg, "random") != 0 && strcmp(optarg, "text") != 0)
				bad_usage("--payload must be random or text, not '%s'", optarg);
			o->text = strcmp(optarg, "text") == 0;
			break;
		case O_BATCH:
			o->batch_size = optarg;
			break;
		case O_LINGER:
			o->linger_ms = optarg;
			break;
		case O_WARMUP:
			o->warmup = parse_dbl("--warmup", optarg, 0, DURATION_MAX_S);
			break;
		case O_TIMEOUT:
			o->timeout = parse_dbl("--timeout", optarg, 0.1, DURATION_MAX_S);
			break;
		case O_JSON:
			o->json = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			fputs("(mqbench --help for the options)\n", stderr);
			exit(2);
		}
	}
	if (optind >= argc)
		bad_usage("which mode: produce, consume or e2e?");
	if (optind + 1 < argc)
		bad_usage("unexpected argument '%s'", argv[optind + 1]);
	const char *m = argv[optind];
	if (strcmp(m, "produce") == 0)
		o->mode = MODE_PRODUCE;
	else if (strcmp(m, "consume") == 0)
		o->mode = MODE_CONSUME;
	else if (strcmp(m, "e2e") == 0)
		o->mode = MODE_E2E;
	else
		bad_usage("unknown mode '%s': produce, consume or e2e", m);
	if (o->topic == NULL)
		bad_usage("no topic: -t TOPIC");
	if (o->mode == MODE_E2E && o->size < 8)
		bad_usage("e2e needs --size of at least 8: the send time goes in the value");
	if (o->groups && o->mode != MODE_E2E)
		bad_usage("--groups goes with e2e");
	if (o->groups && o->consumers_set)
		bad_usage("--groups and --consumers do not go together: each group has one member");
	if (o->groups)
		o->consumers = o->groups;
	if (!o->duration_set)
		o->duration = o->count || o->mode == MODE_CONSUME ? DEFAULT_CAP_S
								  : DEFAULT_DURATION_S;
	if (o->warmup >= o->duration)
		bad_usage("--warmup must be shorter than --duration");
	if (o->brokers == NULL) {
		const char *env = getenv("RINGMQ_BROKERS");
		o->brokers = env && *env ? env : "127.0.0.1:9400";
	}
}

/* ---- main ---- */

static uint32_t digits(uint32_t n)
{
	uint32_t d = 1;
	while (n >= 10) {
		n /= 10;
		d++;
	}
	return d;
}

int main(int argc, char **argv)
{
	struct run *r = &R;
	parse_opts(argc, argv, &r->o);
	const struct opts *o = &r->o;
	r->key_width = o->keys ? digits(o->keys - 1) : 0;
	r->expected = UINT64_MAX;
	r->drain_deadline = INT64_MAX;
	r->start_ns = r->end_ns = r->warmup_end_ns = INT64_MAX;

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	make_config(r);
	ensure_topic(r);
	unsigned np = o->mode == MODE_CONSUME ? 0 : o->producers;
	unsigned nc = o->mode == MODE_PRODUCE ? 0 : o->consumers;
	if (nc > r->nparts && !o->groups) {
		fprintf(stderr, "mqbench: %u consumers for %u partitions: using %u\n", nc,
			r->nparts, r->nparts);
		nc = r->nparts;
		r->o.consumers = nc;
	}
	if (np)
		start_producers(r);
	/* After the producers' warm-up messages, so consumers starting at the
	 * end do not see them. */
	if (nc)
		start_consumers(r);
	if (pthread_barrier_init(&r->go, NULL, np + nc + 1) != 0)
		die("cannot set up threads");
	for (unsigned i = 0; i < np; i++)
		if (pthread_create(&r->prod[i].th, NULL, producer_main, &r->prod[i]) != 0)
			die("cannot start a producer thread");
	for (unsigned i = 0; i < nc; i++)
		if (pthread_create(&r->cons[i].th, NULL, consumer_main, &r->cons[i]) != 0)
			die("cannot start a consumer thread");

	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	/* A little ahead, so every thread is waiting when the schedule starts. */
	int64_t dur_ns = (int64_t)(o->duration * 1e9);
	r->start_ns = mono_ns() + 20 * 1000000;
	r->warmup_end_ns = r->start_ns + (int64_t)(o->warmup * 1e9);
	r->end_ns = r->start_ns + dur_ns;
	if (o->mode == MODE_CONSUME)
		r->start_ns = mono_ns(); /* consumers start at once */
	pthread_barrier_wait(&r->go);

	/* Progress, and the caps: the load ends at end_ns; the producers' final
	 * flush and then the consumers' drain get --timeout each. Past that, or
	 * on a signal, threads are told to stop and get two seconds. */
	bool tty = isatty(STDERR_FILENO);
	uint64_t prev_msgs = 0, prev_bytes = 0;
	int64_t prev_ns = r->start_ns;
	int64_t hard_end = r->end_ns + (int64_t)(2 * o->timeout * 1e9) + NS_PER_S;
	int64_t give_up = INT64_MAX;
	bool joined[2 * THREADS_MAX] = { false };
	unsigned prod_left = np, cons_left = nc;
	bool cut = false;
	for (int64_t tick = r->start_ns + NS_PER_S; prod_left + cons_left > 0; tick += NS_PER_S) {
		while (prod_left + cons_left > 0 && mono_ns() < tick) {
			struct timespec ts = { 0, 20 * 1000000 };
			nanosleep(&ts, NULL);
			for (unsigned i = 0; i < np; i++) {
				if (joined[i] || pthread_tryjoin_np(r->prod[i].th, NULL) != 0)
					continue;
				joined[i] = true;
				if (--prod_left == 0 && nc) {
					struct totals *t = malloc(sizeof(*t));
					if (t == NULL)
						die("out of memory");
					sum_up(r, t);
					__atomic_store_n(&r->drain_deadline,
							 mono_ns() + (int64_t)(o->timeout * 1e9),
							 __ATOMIC_RELAXED);
					__atomic_store_n(&r->expected, t->acked, __ATOMIC_RELEASE);
					free(t);
				}
			}
			for (unsigned i = 0; i < nc; i++) {
				if (joined[THREADS_MAX + i] ||
				    pthread_tryjoin_np(r->cons[i].th, NULL) != 0)
					continue;
				joined[THREADS_MAX + i] = true;
				cons_left--;
			}
			int64_t now = mono_ns();
			if (!cut && (got_signal || now >= hard_end)) {
				cut = true;
				__atomic_store_n(&r->stop, 1, __ATOMIC_RELAXED);
				give_up = now + 2 * NS_PER_S;
			}
			if (now >= give_up)
				goto done;
		}
		if (tty && prod_left + cons_left > 0)
			progress(r, mono_ns(), &prev_msgs, &prev_bytes, &prev_ns);
	}
done:
	getrusage(RUSAGE_SELF, &ru1);
	/* Every message a joined producer sent was reported to its callback
	 * before its ringmq_producer_flush() returned. */
	static struct totals t;
	sum_up(r, &t);
	double elapsed = (double)((t.last_ns > r->start_ns ? t.last_ns : mono_ns()) - r->start_ns) /
			 1e9;
	bool complete = !cut;
	for (unsigned i = 0; i < np; i++)
		if (joined[i] && r->prod[i].flush_timed_out) {
			fprintf(stderr, "mqbench: producer %u: messages still unacknowledged after "
				"--timeout %.0f s\n", i, o->timeout);
			complete = false;
		}
	if (t.failed || t.refused) {
		fprintf(stderr, "mqbench: %" PRIu64 " messages failed, %" PRIu64
			" refused: %s\n", t.failed, t.refused, ringmq_strerror(t.first_err));
		complete = false;
	}
	for (unsigned i = 0; i < nc; i++)
		if (joined[THREADS_MAX + i] && r->cons[i].err) {
			fprintf(stderr, "mqbench: consumer %u: %s\n", i, r->cons[i].errstr);
			complete = false;
		}
	if (o->mode == MODE_E2E && !o->groups && t.msgs < t.acked) {
		fprintf(stderr, "mqbench: consumers received %" PRIu64 " of %" PRIu64
			" acknowledged messages within --timeout\n", t.msgs, t.acked);
		complete = false;
	}
	for (unsigned i = 0; o->groups && i < nc; i++)
		if (r->cons[i].msgs < t.acked) {
			fprintf(stderr, "mqbench: group %s received %" PRIu64 " of %" PRIu64
				" acknowledged messages within --timeout\n", r->cons[i].group,
				r->cons[i].msgs, t.acked);
			complete = false;
		}
	if (o->mode == MODE_CONSUME && o->count && t.msgs < o->count) {
		fprintf(stderr, "mqbench: read %" PRIu64 " of --count %" PRIu64
			" messages: the log ended first\n", t.msgs, o->count);
		complete = false;
	}
	if (o->mode != MODE_CONSUME && o->count && t.sent < o->count) {
		fprintf(stderr, "mqbench: sent %" PRIu64 " of --count %" PRIu64
			" messages before --duration %.0f s ended\n", t.sent, o->count,
			o->duration);
		complete = false;
	}
	if (cut)
		fprintf(stderr, "mqbench: %s\n", got_signal ? "interrupted"
			: "stopped: the run went past --duration plus --timeout");
	report(r, &t, elapsed, tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime),
	       tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime), complete);
	fflush(stdout);
	/* Threads cut short may still use their handles: exit without freeing. */
	if (prod_left + cons_left > 0)
		_exit(1);
	for (unsigned i = 0; i < np; i++)
		ringmq_producer_free(r->prod[i].p);
	for (unsigned i = 0; i < nc; i++)
		ringmq_consumer_free(r->cons[i].c);
	ringmq_config_free(r->cfg);
	return complete ? 0 : 1;
}
