/* producer.c — the thread-safe producer (see ringmq.h).
 *
 * Application threads add messages to an open batch per partition under one
 * mutex; an I/O thread closes batches when they are full or linger.ms has
 * passed, seals them (checksum, lz4, producer id and sequence), sends them in
 * pipelined produce requests (up to max.in.flight), and reports each
 * message's offset or error to the delivery callback.
 *
 * Retries never duplicate: every batch carries this producer's random id and
 * a per-partition sequence, and the broker answers a batch it already holds
 * with the original offsets. After a lost connection, or a retriable error
 * for a partition, every unacknowledged batch of the affected partitions is
 * sent again in sequence order; replies to the superseded sends are ignored
 * (each send of a batch has a generation).
 *
 * Invariants: (P1) a partition's batches are sent in sequence order;
 * (P2) every message is reported exactly once; (P3) `mem` counts every byte
 * of batch buffers alive, and produce() never lets it pass buffer.memory.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "client/internal.h"
#include "common/limits.h"
#include "storage/batch.h"

/* A produce request carries at most this much batch data, so one slow
 * partition never builds a frame near the broker's limit. */
#define REQUEST_BYTES_MAX (4u << 20)

/* The broker recognises a retried batch among the last 8 it appended for a
 * producer and partition (PSTATE_RECENT). An idempotent producer keeps no
 * more unacknowledged batches of one partition on their way, whatever
 * max.in.flight says, so that a retry after a lost connection is always
 * recognised instead of refused as out of sequence. */
#define IDEMPOTENT_WINDOW 8

/* A request carries up to this many batches of one partition, when none of
 * them was sent before (see pick_request). Half the window: then one
 * request's batches wait for the broker's next fdatasync while the other's
 * is on its way to disk. Measured with acks=all, 100 B values, one
 * partition: 1, 2, 4 and 8 gave about 1.0, 1.7, 2.1 and 1.6 times the
 * unpacked throughput (8 sends the whole window at once, so nothing
 * overlaps an fdatasync). */
#define PACK_BATCHES_MAX (IDEMPOTENT_WINDOW / 2)

struct ptopic;

struct pbatch {
	struct pbatch *next;     /* in a partition's queue */
	struct ptopic *topic;
	uint32_t partition;
	struct batch_builder b;
	uint8_t *buf;
	size_t cap;              /* allocated, and what the builder may fill */
	size_t max_cap;          /* what it may grow to while open (batch_grow) */
	uint32_t count;
	void **opaques;
	uint32_t opq_cap;
	int64_t created_ms;
	uint8_t *wire;           /* sealed bytes: buf itself, or an lz4 copy */
	uint32_t wire_len;
	bool sealed;
	uint64_t pid;            /* once sealed: its producer id (0 if not idempotent) */
	uint32_t seq;            /* once sealed: its base sequence */
	char *errmsg;            /* NULL, or why it failed (for the delivery report) */
	bool sent;               /* was in a request before: the broker may hold it */
	uint32_t ord;            /* once sent: its place among its partition's batches */
	uint32_t gen;            /* bumped on every send, and once settled */
	size_t mem;              /* bytes counted in buffer.memory */
	/* Requests in flight that list it (I/O thread only). Replies may come
	 * in any order (protocol.md 2.4), so a batch settled by one reply can
	 * still be listed by an older request: it is freed when the last of
	 * those goes (preq_free), not when reported. */
	uint32_t refs;
	bool done;               /* reported: only refs keep it */
};

struct ppart {
	struct pbatch *open;             /* taking messages */
	struct pbatch *q_head, *q_tail;  /* closed, not acknowledged, in sequence order */
	struct pbatch *next_send;        /* first queued batch not yet sent (or NULL) */
	uint32_t next_seq;               /* for the next batch sealed */
	uint32_t next_ord;               /* for the next batch sent the first time */
	uint64_t pid;                    /* producer id of its batches; 0 until the first */
	/* After a retriable broker error (a full disk, say) the partition's
	 * batches go again no sooner than retry_at, with a back-off that
	 * doubles from reconnect.backoff.ms up to reconnect.backoff.max.ms:
	 * retrying at once would make thousands of requests a second, each a
	 * failed write and two log lines on the broker. */
	int64_t retry_at;
	int backoff_ms;
	int last_err;                    /* that error, until a batch is stored */
	/* The last DISK_FULL or STORAGE answer for the partition, and when: a
	 * batch that runs out of delivery.timeout.ms after one reports it,
	 * whatever its own last attempt got (OUT_OF_ORDER_SEQUENCE behind a
	 * batch that failed, no answer at all): the operator's cause. */
	int storage_err;
	int64_t storage_err_ms;
};

struct ptopic {
	struct ptopic *next;
	char *name;
	uint32_t nparts;        /* 0 until metadata arrives */
	struct ppart *parts;
	int md_err;             /* why metadata failed, if it did */
	char md_msg[160];
	bool md_wanted;
	uint32_t sticky;        /* partition for messages without a key */
	bool sticky_set;
	/* The topic's max.message.bytes, the largest batch it takes: from
	 * DESCRIBE_TOPIC, asked with the metadata, or learnt from a batch the
	 * broker refused as too large. 0 while unknown. New batches are no
	 * larger than this; larger ones already built are split. */
	uint32_t max_batch;
	uint32_t desc_corr;     /* DESCRIBE_TOPIC in flight (I/O thread), 0 if none */
	bool desc_wanted;       /* a produce() waits for it */
	bool desc_done;         /* answered (even with an error): do not ask again */
};

/* One batch of a produce request, as sent. */
struct pitem {
	struct pbatch *b;
	uint32_t gen;            /* which send of it */
	uint32_t delta;          /* records of its partition's batches before it here */
	bool packed;             /* its partition has other batches here */
};

/* A produce request in flight. A partition's batches are next to each
 * other, in sequence order. */
struct preq {
	struct preq *next;
	uint32_t corr;
	int64_t deadline;
	uint32_t n;
	struct pitem *items;
};

static void batch_release(struct pbatch *b);

/* I/O thread only (or after it ended). */
static void preq_free(struct preq *rq)
{
	for (uint32_t i = 0; i < rq->n; i++) {
		struct pbatch *b = rq->items[i].b;
		assert(b->refs > 0);
		if (--b->refs == 0 && b->done)
			batch_release(b);
	}
	free(rq->items);
	free(rq);
}

struct ringmq_producer {
	struct ringmq_config cfg;
	pthread_mutex_t mu;
	pthread_cond_t cv;           /* deliveries, metadata, memory */
	pthread_t thread;
	int efd;                     /* wakes the I/O thread */
	/* wake() bumps `wakes` after every change the I/O thread must act on,
	 * but writes to efd only while that thread is asleep or about to be
	 * (io_asleep): while it works it looks at the state again anyway,
	 * and two eventfd writes per batch, plus the loop rounds they caused,
	 * were a tenth of a small-message producer's time. */
	atomic_uint wakes;
	atomic_bool io_asleep;
	struct ptopic *topics;       /* mu */
	size_t mem;                  /* mu: (P3) */
	size_t outstanding;          /* mu: messages not yet reported */
	unsigned flushing;           /* mu: flush() calls waiting */
	bool closing;                /* mu */
	bool stop;                   /* mu: I/O thread must exit */
	bool conn_down;              /* mu: the last connection attempt failed */
	uint64_t producer_id;
	uint64_t rng;                /* xorshift state for sticky partitions; under mu */
	/* I/O thread only */
	struct rc_conn conn;
	struct preq *inflight;
	uint32_t ninflight;
	uint32_t md_corr;            /* metadata request in flight, 0 if none */
	uint8_t *arena_buf;
	struct arena arena;
};

/* Tells the I/O thread about a change (made before the call). Sequentially
 * consistent with io_sleep: either this sees io_asleep set and writes, or
 * io_sleep sees the new count and does not block. */
static void wake(struct ringmq_producer *p)
{
	atomic_fetch_add(&p->wakes, 1);
	if (!atomic_load(&p->io_asleep))
		return;
	uint64_t one = 1;
	if (write(p->efd, &one, sizeof(one)) < 0)
		return; /* the counter is saturated: the thread is awake anyway */
}

static uint64_t random_id(void)
{
	uint64_t id = 0;
	while (id == 0) {
		if (getrandom(&id, sizeof(id), 0) != sizeof(id)) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			id = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
		}
	}
	return id;
}

/* ---- batches (caller holds mu) ---- */

static struct ptopic *topic_find(struct ringmq_producer *p, const char *name)
{
	for (struct ptopic *t = p->topics; t; t = t->next)
		if (strcmp(t->name, name) == 0)
			return t;
	return NULL;
}

/* Frees a batch's memory; buffer.memory is the caller's to update. */
static void batch_release(struct pbatch *b)
{
	if (b->wire != b->buf)
		free(b->wire);
	free(b->buf);
	free(b->opaques);
	free(b->errmsg);
	free(b);
}

/* A new open batch starts this small and doubles as records come, up to
 * batch.size: buffer.memory counts what is allocated, so a producer writing
 * to many partitions is not held to buffer.memory / batch.size open batches
 * (1,000 partitions at 64 KiB each would block it on half of them). */
#define BATCH_START_BYTES (16u << 10)

static struct pbatch *batch_new(struct ringmq_producer *p, struct ptopic *t, uint32_t part,
				size_t cap, size_t max_cap)
{
	struct pbatch *b = calloc(1, sizeof(*b));
	if (b == NULL)
		return NULL;
	b->buf = malloc(cap);
	if (b->buf == NULL) {
		free(b);
		return NULL;
	}
	b->cap = cap;
	b->max_cap = max_cap > cap ? max_cap : cap;
	b->topic = t;
	b->partition = part;
	b->created_ms = rc_now_ms();
	b->mem = cap + sizeof(*b);
	batch_builder_init(&b->b, b->buf, cap);
	p->mem += b->mem;
	return b;
}

/* Grows an open batch so that `need` more bytes fit, doubling, up to its
 * max_cap and only within buffer.memory. Caller holds mu. Returns false if
 * it cannot: the batch is then closed like a full one. */
static bool batch_grow(struct ringmq_producer *p, struct pbatch *b, size_t need)
{
	if (b->cap >= b->max_cap || b->sealed)
		return false;
	size_t want = b->b.len + need;
	size_t ncap = b->cap * 2 > want ? b->cap * 2 : want;
	if (ncap > b->max_cap)
		ncap = b->max_cap;
	if (ncap < want || p->mem + (ncap - b->cap) > p->cfg.buffer_memory)
		return false;
	uint8_t *nb = realloc(b->buf, ncap);
	if (nb == NULL)
		return false;
	p->mem += ncap - b->cap;
	b->mem += ncap - b->cap;
	b->buf = b->b.buf = nb;
	b->cap = b->b.cap = ncap;
	return true;
}

/* Moves the open batch of a partition to its send queue. */
static void batch_close(struct ptopic *t, uint32_t part)
{
	struct ppart *pp = &t->parts[part];
	struct pbatch *b = pp->open;
	if (b == NULL)
		return;
	pp->open = NULL;
	if (pp->q_tail)
		pp->q_tail->next = b;
	else
		pp->q_head = b;
	pp->q_tail = b;
	if (pp->next_send == NULL)
		pp->next_send = b;
	if (t->sticky_set && t->sticky == part)
		t->sticky_set = false; /* the next keyless message picks again */
}

static int add_opaque(struct pbatch *b, void *opaque)
{
	if (b->count == b->opq_cap) {
		uint32_t cap = b->opq_cap ? b->opq_cap * 2 : 16;
		void **n = realloc(b->opaques, cap * sizeof(*n));
		if (n == NULL)
			return -1;
		b->opaques = n;
		b->opq_cap = cap;
	}
	b->opaques[b->count] = opaque;
	return 0;
}

/* ---- produce (any thread) ---- */

/* Waits for the topic's partitions, and for its max.message.bytes
 * (DESCRIBE_TOPIC, asked at the same time) so that the first batches fit
 * it; without that answer by the deadline, batches go by batch.size and are
 * split if the broker refuses them. */
static int wait_metadata(struct ringmq_producer *p, struct ptopic *t, int64_t deadline)
{
	while ((t->nparts == 0 || !t->desc_done) && t->md_err == 0 && !p->closing) {
		t->md_wanted = true;
		t->desc_wanted = true;
		wake(p);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t left = deadline - rc_now_ms();
		if (left <= 0 && t->nparts > 0)
			break;
		if (left <= 0)
			return p->conn_down ? RINGMQ_ERR_TRANSPORT : RINGMQ_ERR_TIMEOUT;
		if (left > 200)
			left = 200;
		ts.tv_nsec += (long)(left % 1000) * 1000000;
		ts.tv_sec += left / 1000 + ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	}
	if (p->closing)
		return RINGMQ_ERR_CLOSED;
	if (t->nparts)
		return 0;
	int err = t->md_err;
	t->md_err = 0; /* the next call asks again: the topic may be created */
	return err;
}

/* Sticky partitions are re-picked once per closed batch: a getrandom call
 * each time showed in profiles, and they need to be spread, not secret. */
static uint64_t next_random(struct ringmq_producer *p)
{
	p->rng ^= p->rng << 13;
	p->rng ^= p->rng >> 7;
	p->rng ^= p->rng << 17;
	return p->rng;
}

static uint32_t pick_partition(struct ringmq_producer *p, struct ptopic *t, const void *key,
			       size_t key_len)
{
	if (key_len > 0)
		return (uint32_t)(XXH3_64bits(key, key_len) % t->nparts);
	if (!t->sticky_set) {
		t->sticky = (uint32_t)(next_random(p) % t->nparts);
		t->sticky_set = true;
	}
	return t->sticky;
}

static int64_t block_deadline(const struct ringmq_producer *p, int64_t deadline)
{
	return deadline >= 0 ? deadline : rc_now_ms() + p->cfg.max_block_ms;
}

int ringmq_produce(struct ringmq_producer *p, const char *topic, int32_t partition,
		   const void *key, size_t key_len, const void *value, size_t value_len,
		   const struct ringmq_header *headers, size_t header_count, int64_t timestamp_ms,
		   void *opaque)
{
	if (p == NULL || topic == NULL || (key_len && key == NULL) || (value_len && value == NULL) ||
	    (header_count && headers == NULL) || header_count > RECORD_HEADERS_MAX ||
	    partition < RINGMQ_PARTITION_ANY || key_len > UINT32_MAX || value_len > UINT32_MAX)
		return RINGMQ_ERR_INVALID_ARG;
	struct batch_kv kv[RECORD_HEADERS_MAX];
	/* An upper bound of the record's size: its bytes, and a varint of at
	 * most 10 bytes for each number in it (its length, the timestamp
	 * delta, the key's and value's lengths, the header count and each
	 * header's two lengths). */
	size_t bound = key_len + value_len + 10 * (5 + 2 * header_count);
	for (size_t i = 0; i < header_count; i++) {
		size_t nl = headers[i].name ? strlen(headers[i].name) : 0;
		if (headers[i].name == NULL || (headers[i].value_len && headers[i].value == NULL) ||
		    nl > UINT32_MAX || headers[i].value_len > UINT32_MAX)
			return RINGMQ_ERR_INVALID_ARG;
		kv[i] = (struct batch_kv){ headers[i].name, (uint32_t)nl, headers[i].value,
					   (uint32_t)headers[i].value_len };
		bound += nl + headers[i].value_len;
	}
	/* The exact size (batch_record_size) only when the bound is too
	 * large to settle what it decides: whether the message fits, and
	 * whether it needs a batch larger than batch.size. For small
	 * messages it cost a sixth of ringmq_produce. */
	size_t need = bound;
	if (bound + BATCH_HEADER_SIZE > p->cfg.message_max_bytes ||
	    bound + BATCH_HEADER_SIZE > p->cfg.batch_size) {
		need = batch_record_size((uint32_t)key_len, (uint32_t)value_len, kv,
					 (uint32_t)header_count);
		if (need + BATCH_HEADER_SIZE > p->cfg.message_max_bytes)
			return RINGMQ_ERR_MSG_TOO_LARGE;
	}
	if (timestamp_ms == 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		timestamp_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	}
	/* Read the clock for max.block.ms only when about to wait: most calls never do. */
	int64_t deadline = -1;

	/* The I/O thread is told of changes after the mutex is released, or
	 * the thread it wakes would only wait for it. */
	bool woke = false;
	pthread_mutex_lock(&p->mu);
	int ret = 0;
	struct ptopic *t = topic_find(p, topic);
	if (t == NULL) {
		t = calloc(1, sizeof(*t));
		if (t == NULL || (t->name = strdup(topic)) == NULL) {
			free(t);
			ret = RINGMQ_ERR_NO_MEMORY;
			goto out;
		}
		t->next = p->topics;
		p->topics = t;
	}
	if (p->closing) {
		ret = RINGMQ_ERR_CLOSED;
		goto out;
	}
	if (t->nparts == 0) {
		deadline = block_deadline(p, deadline);
		ret = wait_metadata(p, t, deadline);
		if (ret != 0)
			goto out;
	}
	uint32_t part = partition == RINGMQ_PARTITION_ANY ? pick_partition(p, t, key, key_len)
							   : (uint32_t)partition;
	if (part >= t->nparts) {
		ret = RINGMQ_ERR_UNKNOWN_PARTITION;
		goto out;
	}
	struct ppart *pp = &t->parts[part];
	/* New batches are no larger than the topic takes. */
	size_t size = p->cfg.batch_size;
	if (t->max_batch != 0 && t->max_batch < size) {
		size = t->max_batch;
		if (need + BATCH_HEADER_SIZE > size)
			need = batch_record_size((uint32_t)key_len, (uint32_t)value_len, kv,
						 (uint32_t)header_count);
	}
	for (;;) {
		struct pbatch *b = pp->open;
		if (b != NULL) {
			int r = batch_add(&b->b, timestamp_ms, key, (uint32_t)key_len, value,
					  (uint32_t)value_len, kv, (uint32_t)header_count);
			if (r == 0) {
				if (add_opaque(b, opaque) != 0) {
					ret = RINGMQ_ERR_NO_MEMORY; /* the record stays: report it */
					b->b.count--;
					goto out;
				}
				b->count++;
				p->outstanding++;
				if (b->b.len + BATCH_HEADER_SIZE >= b->max_cap)
					woke = true;
				break;
			}
			if (r == -ENOSPC && batch_grow(p, b, need))
				continue;
			if (r != -ENOSPC || b->count == 0) {
				ret = RINGMQ_ERR_MSG_TOO_LARGE;
				goto out;
			}
			batch_close(t, part);
			woke = true;
		}
		size_t cap = size > need + BATCH_HEADER_SIZE ? size : need + BATCH_HEADER_SIZE;
		size_t first = cap;
		if (first > BATCH_START_BYTES)
			first = need + BATCH_HEADER_SIZE > BATCH_START_BYTES ? need + BATCH_HEADER_SIZE
									 : BATCH_START_BYTES;
		/* (P3): wait for room, or fail at once, per block.on.buffer.full. */
		while (p->mem + first > p->cfg.buffer_memory && p->mem > 0 && !p->closing) {
			deadline = block_deadline(p, deadline);
			if (!p->cfg.block_on_full || rc_now_ms() >= deadline) {
				ret = RINGMQ_ERR_QUEUE_FULL;
				goto out;
			}
			if (woke) {
				wake(p); /* what we closed must go, to make room */
				woke = false;
			}
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 50 * 1000000;
			ts.tv_sec += ts.tv_nsec / 1000000000;
			ts.tv_nsec %= 1000000000;
			pthread_cond_timedwait(&p->cv, &p->mu, &ts);
		}
		if (p->closing) {
			ret = RINGMQ_ERR_CLOSED;
			goto out;
		}
		if (pp->open != NULL)
			continue; /* another thread opened one while we waited */
		pp->open = batch_new(p, t, part, first, cap);
		if (pp->open == NULL) {
			ret = RINGMQ_ERR_NO_MEMORY;
			goto out;
		}
		/* The I/O thread may be asleep with a timeout computed before
		 * this batch existed (up to 1 s with nothing open): it must
		 * learn of the new linger deadline now. */
		woke = true;
	}
out:
	pthread_mutex_unlock(&p->mu);
	if (woke)
		wake(p);
	return ret;
}

size_t ringmq_producer_outstanding(struct ringmq_producer *p)
{
	pthread_mutex_lock(&p->mu);
	size_t n = p->outstanding;
	pthread_mutex_unlock(&p->mu);
	return n;
}

int ringmq_producer_flush(struct ringmq_producer *p, int timeout_ms)
{
	int64_t deadline = rc_now_ms() + timeout_ms;
	pthread_mutex_lock(&p->mu);
	p->flushing++;
	wake(p);
	int ret = 0;
	while (p->outstanding > 0) {
		if (timeout_ms >= 0 && rc_now_ms() >= deadline) {
			ret = RINGMQ_ERR_TIMEOUT;
			break;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20 * 1000000;
		ts.tv_sec += ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		pthread_cond_timedwait(&p->cv, &p->mu, &ts);
	}
	p->flushing--;
	pthread_mutex_unlock(&p->mu);
	return ret;
}

/* ---- deliveries ---- */

struct report {
	struct pbatch *b;
	int err;
	int64_t base;
};

/* Reports every message of the batches, then frees them (P2). Called
 * without mu; takes it to update the counters. */
static void report(struct ringmq_producer *p, struct report *r, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct pbatch *b = r[i].b;
		if (p->cfg.delivery_cb == NULL)
			continue;
		for (uint32_t k = 0; k < b->count; k++) {
			struct ringmq_delivery d = {
				.err = r[i].err,
				.topic = b->topic->name,
				.partition = (int32_t)b->partition,
				.offset = r[i].err == 0 && r[i].base >= 0 ? r[i].base + k : -1,
				.opaque = b->opaques ? b->opaques[k] : NULL,
				.errstr = r[i].err == 0 ? NULL
					  : b->errmsg ? b->errmsg : ringmq_strerror(r[i].err),
			};
			p->cfg.delivery_cb(&d, p->cfg.delivery_opaque);
		}
	}
	pthread_mutex_lock(&p->mu);
	for (size_t i = 0; i < n; i++) {
		struct pbatch *b = r[i].b;
		p->outstanding -= b->count;
		p->mem -= b->mem;
		if (b->refs == 0)
			batch_release(b);
		else
			b->done = true; /* an older request still lists it */
	}
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/* Removes batch b from its partition queue (it is acknowledged or failed).
 * Caller holds mu. */
static void dequeue(struct pbatch *b)
{
	struct ppart *pp = &b->topic->parts[b->partition];
	struct pbatch **pb = &pp->q_head, *prev = NULL;
	while (*pb != NULL && *pb != b) {
		prev = *pb;
		pb = &(*pb)->next;
	}
	if (*pb == NULL)
		return;
	*pb = b->next;
	if (pp->q_tail == b)
		pp->q_tail = prev;
	if (pp->next_send == b)
		pp->next_send = b->next;
	b->next = NULL;
	b->gen++; /* settled: no reply to an earlier send may touch it */
}

/* ---- the I/O thread ---- */

/* Seals a batch as producer `pid`, from sequence `seq`. */
static void seal_as(struct ringmq_producer *p, struct pbatch *b, uint64_t pid, uint32_t seq)
{
	b->pid = pid;
	b->seq = seq;
	b->wire = b->buf;
	b->wire_len = batch_seal(&b->b, pid, seq);
	if (p->cfg.lz4) {
		size_t bound = batch_lz4_bound(b->b.len);
		uint8_t *z = malloc(bound);
		ssize_t n = z ? batch_seal_lz4(&b->b, z, bound, pid, seq) : -1;
		if (n > 0 && (uint32_t)n < b->wire_len) {
			b->wire = z;
			b->wire_len = (uint32_t)n;
		} else {
			free(z);
		}
	}
	b->sealed = true;
}

/* Seals a batch with the next sequences of its partition. */
static void seal(struct ringmq_producer *p, struct pbatch *b)
{
	struct ppart *pp = &b->topic->parts[b->partition];
	if (pp->pid == 0)
		pp->pid = p->producer_id;
	uint64_t pid = p->cfg.idempotence ? pp->pid : 0;
	uint32_t seq = pp->next_seq;
	pp->next_seq += b->count;
	seal_as(p, b, pid, seq);
}

/* Splits a queued batch of more than one record into batches of at most
 * `limit` bytes (header included; a record larger than that alone gets a
 * batch of its own), re-encoding its records in order, and puts them where
 * it was in its partition's queue. A sealed batch's pieces are sealed at
 * once with its producer id and its run of sequences, so the sequences of
 * the partition's other batches stay as they are: the broker refused the
 * whole batch (and every one after it), so none of its sequences were
 * taken. The pieces count as never sent: they take their place in the
 * idempotence window (ord) when first sent, and may be packed together.
 * Returns 0, or -1 (no memory; nothing changed). Caller holds mu (I/O
 * thread). */
static int split_batch(struct ringmq_producer *p, struct pbatch *b, uint32_t limit)
{
	struct ptopic *t = b->topic;
	struct ppart *pp = &t->parts[b->partition];
	struct pbatch **at = &pp->q_head;
	while (*at != NULL && *at != b)
		at = &(*at)->next;
	if (*at == NULL || b->count < 2 || b->b.count != b->count)
		return -1;
	if (!b->sealed)
		batch_seal(&b->b, 0, 0); /* a header to read it back by; sealed again later */
	struct batch_iter it;
	if (batch_iter_init(&it, b->buf, NULL, 0) != 0)
		return -1;
	struct pbatch *head = NULL, *last = NULL;
	bool full = true; /* the last piece takes no more records (or there is none) */
	uint32_t k = 0;
	struct batch_record rec;
	int r;
	while ((r = batch_iter_next(&it, &rec)) == 1) {
		struct batch_kv kv[RECORD_HEADERS_MAX];
		uint32_t nh = 0;
		const uint8_t *hp = rec.headers, *he = rec.headers + rec.headers_len;
		while (nh < rec.header_count && nh < RECORD_HEADERS_MAX &&
		       batch_kv_next(&hp, he, &kv[nh]) == 1)
			nh++;
		for (;;) {
			if (full) {
				size_t need = BATCH_HEADER_SIZE +
					      batch_record_size(rec.key_len, rec.value_len, kv, nh);
				struct pbatch *n = batch_new(p, t, b->partition,
							     need > limit ? need : limit, 0);
				if (n == NULL)
					goto fail;
				n->created_ms = b->created_ms; /* delivery.timeout.ms runs on */
				if (last)
					last->next = n;
				else
					head = n;
				last = n;
				full = false;
			}
			int ret = batch_add(&last->b, rec.timestamp, rec.key, rec.key_len, rec.value,
					    rec.value_len, kv, nh);
			if (ret == 0)
				break;
			if (ret != -ENOSPC || last->b.count == 0)
				goto fail;
			full = true;
		}
		if (add_opaque(last, b->opaques ? b->opaques[k] : NULL) != 0)
			goto fail;
		last->count++;
		k++;
	}
	if (r != 0 || k != b->count || head == NULL || head == last)
		goto fail;
	if (b->sealed) {
		uint32_t seq = b->seq;
		for (struct pbatch *q = head; q; q = q->next) {
			seal_as(p, q, b->pid, seq);
			seq += q->count;
		}
	}
	last->next = b->next;
	*at = head;
	if (pp->q_tail == b)
		pp->q_tail = last;
	if (pp->next_send == b)
		pp->next_send = head;
	b->next = NULL;
	b->gen++; /* no reply to an earlier send may touch it */
	p->mem -= b->mem;
	if (b->refs == 0)
		batch_release(b);
	else
		b->done = true; /* freed with the last request that lists it */
	return 0;
fail:
	while (head) {
		struct pbatch *n = head->next;
		p->mem -= head->mem;
		batch_release(head);
		head = n;
	}
	return -1;
}

/* The limit a BATCH_TOO_LARGE message names ("... exceeds
 * max.message.bytes N"), or 0. */
static uint32_t limit_in(struct pstr msg)
{
	static const char key[] = "max.message.bytes ";
	char s[256];
	if (msg.len == 0 || msg.p == NULL)
		return 0;
	snprintf(s, sizeof(s), "%.*s", (int)msg.len, msg.p);
	const char *at = strstr(s, key);
	if (at == NULL)
		return 0;
	at += sizeof(key) - 1;
	char *end;
	unsigned long v = strtoul(at, &end, 10);
	if (end == at || v <= BATCH_HEADER_SIZE || v > UINT32_MAX)
		return 0;
	return (uint32_t)v;
}

/* Lowers the size of a topic's batches to `limit`: open batches take no
 * more than that (or are closed, to be split), and so are new ones. Caller
 * holds mu. */
static void topic_limit(struct ptopic *t, uint32_t limit)
{
	t->max_batch = limit;
	for (uint32_t i = 0; i < t->nparts; i++) {
		struct pbatch *o = t->parts[i].open;
		if (o == NULL || o->max_cap <= limit)
			continue;
		if (o->b.len <= limit) {
			o->max_cap = limit;
			if (o->cap > limit)
				o->cap = o->b.cap = limit; /* the allocation stays counted (mem) */
		} else {
			batch_close(t, i);
		}
	}
}

/* Batch b came back refused as larger than its topic's max.message.bytes.
 * Learns the limit, from the broker's message, or else as half of b (if
 * the halves are refused too, they are halved again), and splits b and
 * every later batch of its partition larger than that. Returns true if the
 * partition's batches are to go again (b was split, or was packed with
 * others and may not be the one too large), false if b fails for good:
 * one record, too large for the topic by itself, and `why` says so. Caller
 * holds mu. */
static bool too_large(struct ringmq_producer *p, struct pbatch *b, bool packed, struct pstr msg,
		      char *why, size_t whylen)
{
	struct ptopic *t = b->topic;
	uint32_t limit = limit_in(msg);
	if (limit == 0 && !packed && b->count > 1) {
		limit = (uint32_t)(b->b.len / 2);
		if (t->max_batch != 0 && t->max_batch < limit)
			limit = t->max_batch;
	}
	if (limit != 0 && limit > BATCH_HEADER_SIZE)
		topic_limit(t, limit);
	/* From b on only: those before it may be stored already (sent under
	 * an older, larger limit, their replies still to come), and split,
	 * their retries would not be recognised. Those after it cannot be:
	 * the broker takes no sequence past the gap b leaves. */
	bool split = false;
	for (struct pbatch *q = b, *n; limit != 0 && q != NULL; q = n) {
		n = q->next;
		if (q->count > 1 && q->b.len > limit && split_batch(p, q, limit) == 0)
			split |= q == b;
	}
	if (!split && !packed && b->count > 1)
		split = split_batch(p, b, (uint32_t)(b->b.len / 2)) == 0; /* the limit moved */
	if (split || packed)
		return true;
	if (limit != 0)
		snprintf(why, whylen,
			 "a message of %zu bytes (with its batch header) exceeds topic '%s' "
			 "max.message.bytes %u", b->b.len, t->name, limit);
	else
		snprintf(why, whylen, "%.*s", (int)msg.len, msg.p ? msg.p : "");
	return false;
}

/* True if an idempotent producer may not send the partition's next batch
 * yet: the oldest unacknowledged one (q_head) must stay among the last
 * IDEMPOTENT_WINDOW batches the broker appended, or its retry would not be
 * recognised. Counted in first sends (ord), not in queued batches: a batch
 * acknowledged out of order has left the queue but is still one of those
 * the broker remembers. Caller holds mu. */
static bool window_full(const struct ringmq_producer *p, const struct ppart *pp)
{
	const struct pbatch *head = pp->q_head, *b = pp->next_send;
	if (!p->cfg.idempotence || b == NULL || head == NULL || !head->sent)
		return false;
	uint32_t next = b->sent ? b->ord : pp->next_ord;
	return next - head->ord >= IDEMPOTENT_WINDOW;
}

/* True if the partition has a batch to send now: one is waiting, its retry
 * back-off is over and its window has room. Caller holds mu. */
static bool sendable(const struct ringmq_producer *p, const struct ppart *pp, int64_t now)
{
	return pp->next_send != NULL && now >= pp->retry_at && !window_full(p, pp);
}

/* Picks the next produce request: the next unsent batches of every
 * partition that has some, in queue order (P1), and marks them sent
 * (next_send, gen). Returns NULL if there is nothing to send, or no memory
 * (tried again on the next round). Caller holds mu; send_request does the
 * rest without it.
 *
 * Usually that is one batch per partition: the broker answers a partition
 * with the base offset of its first batch only, the others' following on
 * from it, which holds for batches it appends, but not for a retried one it
 * answers as a duplicate with its original offsets. So several batches of a
 * partition go together only if none of them was ever sent (nor may be
 * held by the broker), up to PACK_BATCHES_MAX. That is what lifts acks=all
 * throughput: the window is otherwise max.in.flight requests of one batch
 * each, and each fdatasync carries about half of it. */
static struct preq *pick_request(struct ringmq_producer *p)
{
	uint32_t nparts = 0;
	int64_t now = rc_now_ms();
	for (struct ptopic *t = p->topics; t; t = t->next)
		for (uint32_t i = 0; i < t->nparts; i++)
			if (sendable(p, &t->parts[i], now))
				nparts++;
	if (nparts == 0)
		return NULL;
	struct preq *rq = calloc(1, sizeof(*rq));
	if (rq)
		rq->items = calloc((size_t)nparts * PACK_BATCHES_MAX, sizeof(*rq->items));
	if (rq == NULL || rq->items == NULL) {
		free(rq);
		return NULL;
	}
	size_t bytes = 0;
	for (struct ptopic *t = p->topics; t && bytes < REQUEST_BYTES_MAX; t = t->next) {
		for (uint32_t i = 0; i < t->nparts && bytes < REQUEST_BYTES_MAX; i++) {
			struct ppart *pp = &t->parts[i];
			bool fresh = true; /* no batch of it in this request was sent before */
			uint32_t delta = 0;
			for (uint32_t k = 0; k < PACK_BATCHES_MAX; k++) {
				struct pbatch *b = pp->next_send;
				if (!sendable(p, pp, now))
					break;
				/* Built before the topic's limit was known. */
				if (!b->sent && !b->sealed && t->max_batch != 0 &&
				    b->b.len > t->max_batch && b->count > 1 &&
				    split_batch(p, b, t->max_batch) == 0)
					b = pp->next_send;
				/* Before sealing, its uncompressed size. */
				size_t len = b->sealed ? b->wire_len : b->b.len;
				if (k > 0 && (!fresh || b->sent || bytes + len > REQUEST_BYTES_MAX))
					break;
				fresh = fresh && !b->sent;
				pp->next_send = b->next;
				b->gen++;
				b->refs++;
				if (!b->sent)
					b->ord = pp->next_ord++;
				b->sent = true;
				if (k > 0)
					rq->items[rq->n - 1].packed = true;
				rq->items[rq->n++] = (struct pitem){ b, b->gen, delta, k > 0 };
				delta += b->count;
				bytes += len;
			}
		}
	}
	return rq;
}

struct produce_enc {
	const struct ringmq_producer *p;
	const struct preq *rq;
};

/* Encodes a PRODUCE body (docs/protocol.md 4.8, as proto_encode_request
 * would) from the request's batches, which pick_request listed topic by
 * topic and partition by partition. Written here because a partition's
 * batches go out back to back in one `batches` field, copied once, straight
 * from the batches into the send buffer. */
static void encode_produce(struct pw *w, const void *arg)
{
	const struct produce_enc *e = arg;
	const struct preq *rq = e->rq;
	pw_u8(w, (uint8_t)e->p->cfg.acks);
	pw_u32(w, (uint32_t)e->p->cfg.request_timeout_ms);
	size_t ntopics_at = w->len, nparts_at = 0, len_at = 0;
	uint32_t ntopics = 0, nparts = 0, len = 0;
	pw_u32(w, 0);
	for (uint32_t k = 0; k < rq->n; k++) {
		const struct pbatch *b = rq->items[k].b, *prev = k ? rq->items[k - 1].b : NULL;
		if (prev == NULL || prev->topic != b->topic) {
			if (prev != NULL)
				pw_patch_u32(w, nparts_at, nparts);
			pw_str(w, pstr_c(b->topic->name));
			nparts_at = w->len;
			pw_u32(w, 0);
			ntopics++;
			nparts = 0;
		}
		if (prev == NULL || prev->topic != b->topic || prev->partition != b->partition) {
			if (prev != NULL)
				pw_patch_u32(w, len_at, len);
			pw_u32(w, b->partition);
			len_at = w->len;
			pw_u32(w, 0);
			nparts++;
			len = 0;
		}
		pw_raw(w, b->wire, b->wire_len);
		len += b->wire_len;
	}
	if (rq->n > 0) {
		pw_patch_u32(w, nparts_at, nparts);
		pw_patch_u32(w, len_at, len);
	}
	pw_patch_u32(w, ntopics_at, ntopics);
}

/* Seals, encodes and lists a request pick_request made. Without mu: it
 * held the application threads off for too long (checksums, lz4 and a
 * copy of every batch; profiles showed them waiting on the mutex for much
 * of it). That is safe because everything it touches is the I/O thread's
 * alone: the batches are closed (no thread adds to them), only this thread
 * frees them, and pid, next_seq, wire, sealed and the request list are
 * written by this thread only. */
static void send_request(struct ringmq_producer *p, struct preq *rq)
{
	for (uint32_t k = 0; k < rq->n; k++)
		if (!rq->items[k].b->sealed)
			seal(p, rq->items[k].b);
	struct produce_enc e = { p, rq };
	rq->corr = rc_conn_queue_with(&p->conn, API_PRODUCE, encode_produce, &e);
	if (rq->corr == 0) {
		/* Not encoded (out of memory): the batches go back unsent, the
		 * first of each partition last so that it is where sending
		 * resumes. (They stay marked sent: that only means they will
		 * travel one per request.) */
		pthread_mutex_lock(&p->mu);
		for (uint32_t i = rq->n; i-- > 0;) {
			struct pbatch *b = rq->items[i].b;
			b->topic->parts[b->partition].next_send = b;
		}
		pthread_mutex_unlock(&p->mu);
		preq_free(rq);
		return;
	}
	rq->deadline = rc_now_ms() + p->cfg.request_timeout_ms;
	rq->next = p->inflight;
	p->inflight = rq;
	p->ninflight++;
}

/* Everything unacknowledged will be sent again, in order: after a lost
 * connection, or for one partition after a retriable error. */
static void resend_partition(struct ppart *pp)
{
	for (struct pbatch *b = pp->q_head; b; b = b->next)
		b->gen++; /* supersede replies to earlier sends */
	pp->next_send = pp->q_head;
}

static void resend_all(struct ringmq_producer *p)
{
	for (struct ptopic *t = p->topics; t; t = t->next)
		for (uint32_t i = 0; i < t->nparts; i++)
			resend_partition(&t->parts[i]);
	while (p->inflight) {
		struct preq *rq = p->inflight;
		p->inflight = rq->next;
		preq_free(rq);
	}
	p->ninflight = 0;
}

/* A new producer id for one partition: its unacknowledged batches are
 * sealed again with sequences from 0 and sent again. One partition only:
 * other partitions' batches in flight may be in the log already, and under
 * a new id they would be appended twice. This partition's later batches in
 * flight were refused as out of sequence, so sending them again is safe.
 * Caller holds mu. */
static void rebase_partition(struct ppart *pp)
{
	pp->pid = random_id();
	pp->next_seq = 0;
	for (struct pbatch *b = pp->q_head; b; b = b->next) {
		if (b->wire != b->buf)
			free(b->wire);
		b->wire = NULL;
		b->sealed = false;
	}
	resend_partition(pp);
}

/* What a batch that ran out of delivery.timeout.ms reports when its last
 * attempt got `err` (0: none was answered): a storage error seen on its
 * partition during its life, else err if that is one, else a time-out. */
static int expiry_err(const struct ppart *pp, const struct pbatch *b, int err)
{
	if (err == RINGMQ_ERR_DISK_FULL || err == RINGMQ_ERR_STORAGE)
		return err;
	if (pp->storage_err != 0 && pp->storage_err_ms >= b->created_ms)
		return pp->storage_err;
	return RINGMQ_ERR_TIMEOUT;
}

/* While no broker can be reached, batches older than delivery.timeout.ms
 * fail (none is in flight then). Caller holds mu. */
static void expire_unsent(struct ringmq_producer *p, int64_t now, struct report **reps,
			  size_t *nrep, size_t *cap)
{
	for (struct ptopic *t = p->topics; t; t = t->next) {
		for (uint32_t i = 0; i < t->nparts; i++) {
			struct ppart *pp = &t->parts[i];
			if (pp->open && now - pp->open->created_ms > p->cfg.delivery_timeout_ms)
				batch_close(t, i);
			while (pp->q_head && now - pp->q_head->created_ms > p->cfg.delivery_timeout_ms) {
				struct pbatch *b = pp->q_head;
				dequeue(b);
				if (*nrep == *cap) {
					*cap = *cap ? *cap * 2 : 16;
					*reps = realloc(*reps, *cap * sizeof(**reps));
				}
				(*reps)[(*nrep)++] = (struct report){ b, expiry_err(pp, b, 0), -1 };
			}
		}
	}
}

static struct preq *take_req(struct ringmq_producer *p, uint32_t corr)
{
	for (struct preq **pr = &p->inflight; *pr; pr = &(*pr)->next) {
		if ((*pr)->corr == corr) {
			struct preq *rq = *pr;
			*pr = rq->next;
			p->ninflight--;
			return rq;
		}
	}
	return NULL;
}

/* Applies a produce response. Caller holds mu; reports are collected. */
static void on_produce(struct ringmq_producer *p, struct preq *rq, const struct proto_resp_hdr *h,
		       const struct proto_produce_resp *resp, struct report **reps, size_t *nrep,
		       size_t *cap)
{
	for (uint32_t i = 0; i < rq->n; i++) {
		struct pbatch *b = rq->items[i].b;
		if (b->gen != rq->items[i].gen)
			continue; /* superseded by a later send */
		int err = h->err ? rc_err_from_broker(h->err) : RINGMQ_ERR_PROTOCOL;
		int64_t base = -1;
		const struct proto_produce_resp_part *rp = NULL;
		for (uint32_t ti = 0; h->err == 0 && ti < resp->ntopics && rp == NULL; ti++) {
			if (!pstr_eq(resp->topics[ti].name, b->topic->name))
				continue;
			for (uint32_t k = 0; k < resp->topics[ti].nparts; k++)
				if (resp->topics[ti].parts[k].partition == b->partition)
					rp = &resp->topics[ti].parts[k];
		}
		if (rp != NULL) {
			err = rp->err ? rc_err_from_broker(rp->err) : 0;
			/* The partition's batches here follow each other (pick_request). */
			base = (int64_t)(rp->base_offset + rq->items[i].delta);
		}
		struct ppart *pp = &b->topic->parts[b->partition];
		int64_t now = rc_now_ms();
		bool expired = now - b->created_ms > p->cfg.delivery_timeout_ms;
		if (err == RINGMQ_ERR_DISK_FULL || err == RINGMQ_ERR_STORAGE) {
			pp->storage_err = err;
			pp->storage_err_ms = now;
		}
		char reason[320] = "";
		if (err == RINGMQ_ERR_BATCH_TOO_LARGE && !expired &&
		    too_large(p, b, rq->items[i].packed, rp ? rp->msg : (struct pstr){ 0 }, reason,
			      sizeof(reason))) {
			/* Split, in the place of the original: this and every
			 * later batch of the partition go again. */
			resend_partition(pp);
			continue;
		}
		if (err == RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE && pp->q_head == b && !expired) {
			/* Nothing before it is pending, yet the broker expects
			 * another sequence: it lost or evicted this producer's
			 * state. Start over under a new producer id. */
			rebase_partition(pp);
			continue;
		}
		if (err != 0 && rc_err_retriable(err) && !expired) {
			/* Not before a back-off, nor after the batch expires: its
			 * last attempt then says why it failed. */
			pp->backoff_ms = pp->backoff_ms == 0 ? p->cfg.backoff_ms
				       : pp->backoff_ms * 2 > p->cfg.backoff_max_ms ? p->cfg.backoff_max_ms
				       : pp->backoff_ms * 2;
			int64_t expiry = b->created_ms + p->cfg.delivery_timeout_ms + 1;
			pp->retry_at = now + pp->backoff_ms < expiry ? now + pp->backoff_ms : expiry;
			pp->last_err = err;
		}
		/* The broker refuses all of a partition's batches if one is bad:
		 * sent together, they go again one by one (they are `sent` now),
		 * so that only a bad one fails. */
		bool packed = rq->items[i].packed;
		if (err != 0 &&
		    (rc_err_retriable(err) || err == RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE || packed) &&
		    !expired) {
			/* This batch and every later one of the partition go again;
			 * the broker drops those it already holds. */
			resend_partition(pp);
			continue;
		}
		if (err != 0 && expired &&
		    (rc_err_retriable(err) || err == RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE || packed)) {
			/* Out of time: say why it could not be stored. A full
			 * disk or a storage error is for the operator to fix,
			 * and reads differently from a broker that did not
			 * answer. An out-of-sequence answer then comes from the
			 * retries, not the cause; a packed batch's error may be
			 * another batch's. */
			int why = expiry_err(pp, b, err == RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE ? pp->last_err : err);
			if (why != RINGMQ_ERR_TIMEOUT || err != RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE)
				err = why;
		}
		if (err == 0) {
			pp->backoff_ms = 0;
			pp->last_err = 0;
		} else if (reason[0] != '\0') {
			b->errmsg = strdup(reason);
		} else if (rp != NULL && rp->err != 0 && rc_err_from_broker(rp->err) == err &&
			   rp->msg.len > 0) {
			b->errmsg = strndup((const char *)rp->msg.p, rp->msg.len);
		}
		dequeue(b);
		if (*nrep == *cap) {
			*cap = *cap ? *cap * 2 : 16;
			*reps = realloc(*reps, *cap * sizeof(**reps));
		}
		(*reps)[(*nrep)++] = (struct report){ b, err, base };
	}
}

static void on_metadata(struct ringmq_producer *p, const struct proto_resp_hdr *h,
			const struct proto_metadata_resp *md)
{
	for (struct ptopic *t = p->topics; t; t = t->next) {
		if (!t->md_wanted || t->nparts)
			continue;
		if (h->err != 0) {
			t->md_err = rc_err_from_broker(h->err);
			snprintf(t->md_msg, sizeof(t->md_msg), "%.*s", (int)h->msg.len, h->msg.p);
			t->md_wanted = false;
			continue;
		}
		for (uint32_t i = 0; i < md->ntopics; i++) {
			const struct proto_md_topic *mt = &md->topics[i];
			if (!pstr_eq(mt->name, t->name))
				continue;
			t->md_wanted = false;
			if (mt->err != 0 || mt->nparts == 0) {
				t->md_err = mt->err ? rc_err_from_broker(mt->err)
						    : RINGMQ_ERR_UNKNOWN_TOPIC;
				break;
			}
			t->parts = calloc(mt->nparts, sizeof(*t->parts));
			if (t->parts == NULL) {
				t->md_err = RINGMQ_ERR_NO_MEMORY;
				break;
			}
			t->nparts = mt->nparts;
		}
	}
	pthread_cond_broadcast(&p->cv);
}

/* A DESCRIBE_TOPIC answer, if the frame is one: the topic's
 * max.message.bytes bounds its batches. An error leaves it unknown (then
 * the broker's refusals teach it). Takes mu. */
static bool on_describe(struct ringmq_producer *p, const struct proto_resp_hdr *h,
			struct pr *body)
{
	pthread_mutex_lock(&p->mu);
	struct ptopic *t = p->topics;
	while (t != NULL && (t->desc_corr == 0 || t->desc_corr != h->correlation_id))
		t = t->next;
	if (t == NULL) {
		pthread_mutex_unlock(&p->mu);
		return false;
	}
	union proto_response resp;
	if (h->err == 0 &&
	    proto_decode_response(API_DESCRIBE_TOPIC, 0, body, &p->arena, &resp) == 0) {
		const struct proto_describe_topic_resp *d = &resp.describe_topic;
		for (uint32_t i = 0; i < d->nconfigs; i++) {
			if (!pstr_eq(d->configs[i].key, "max.message.bytes"))
				continue;
			char v[32];
			snprintf(v, sizeof(v), "%.*s", (int)d->configs[i].value.len,
				 d->configs[i].value.p ? d->configs[i].value.p : "");
			char *end;
			unsigned long long n = strtoull(v, &end, 10);
			if (*end == 'K' || *end == 'k')
				n <<= 10, end++;
			else if (*end == 'M' || *end == 'm')
				n <<= 20, end++;
			if (end != v && *end == '\0' && n > BATCH_HEADER_SIZE && n <= UINT32_MAX)
				topic_limit(t, (uint32_t)n);
		}
	}
	t->desc_corr = 0;
	t->desc_done = true;
	t->desc_wanted = false;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return true;
}

static void send_metadata(struct ringmq_producer *p)
{
	for (struct ptopic *t = p->topics; t; t = t->next) {
		if (t->desc_wanted && !t->desc_done && t->desc_corr == 0) {
			union proto_request dreq = { .describe_topic = { pstr_c(t->name) } };
			t->desc_corr = rc_conn_queue(&p->conn, API_DESCRIBE_TOPIC, &dreq);
		}
	}
	struct pstr names[64];
	uint32_t n = 0;
	for (struct ptopic *t = p->topics; t && n < 64; t = t->next)
		if (t->md_wanted && t->nparts == 0 && t->md_err == 0)
			names[n++] = pstr_c(t->name);
	if (n == 0 || p->md_corr != 0)
		return;
	union proto_request req = { .metadata = { n, names } };
	p->md_corr = rc_conn_queue(&p->conn, API_METADATA, &req);
}

/* True if a batch of the partition closed now could be sent at once: a
 * request slot is free, no batch of it waits to be sent, and its
 * idempotence window (see window_full) has room. Caller holds mu. */
static bool can_send_now(const struct ringmq_producer *p, const struct ppart *pp)
{
	if (p->ninflight >= p->cfg.max_in_flight || pp->next_send != NULL)
		return false;
	const struct pbatch *head = pp->q_head;
	if (!p->cfg.idempotence || head == NULL || !head->sent)
		return true;
	return pp->next_ord - head->ord < IDEMPOTENT_WINDOW;
}

/* Closes batches whose linger is over (all of them when flushing or
 * closing). Returns the ms until the next one is due. Caller holds mu. */
static int close_due(struct ringmq_producer *p, int64_t now)
{
	int next = 1000;
	bool all = p->flushing > 0 || p->closing;
	for (struct ptopic *t = p->topics; t; t = t->next) {
		for (uint32_t i = 0; i < t->nparts; i++) {
			struct pbatch *b = t->parts[i].open;
			if (b == NULL || b->count == 0)
				continue;
			int64_t due = b->created_ms + p->cfg.linger_ms;
			bool full = b->b.len + 64 >= b->max_cap;
			/* While it could not be sent at once (every request slot
			 * taken, or the partition's idempotence window full), a
			 * batch whose linger is over keeps filling instead: closed
			 * now, it would only wait in the queue, and many small
			 * batches cut throughput to a window of them per round
			 * trip (per fdatasync with acks=all). The reply that frees
			 * a slot wakes us; with acks=0 slots free as soon as
			 * requests are written. */
			bool slot = can_send_now(p, &t->parts[i]);
			if (all || full || (due <= now && slot))
				batch_close(t, i);
			else if (due > now && due - now < next)
				next = (int)(due - now);
		}
	}
	return next;
}

/* Milliseconds until a partition waiting for its retry back-off may send
 * (at most 1000). Caller holds mu. */
static int retry_due(const struct ringmq_producer *p, int64_t now)
{
	int next = 1000;
	for (const struct ptopic *t = p->topics; t; t = t->next) {
		for (uint32_t i = 0; i < t->nparts; i++) {
			const struct ppart *pp = &t->parts[i];
			if (pp->next_send != NULL && pp->retry_at > now && pp->retry_at - now < next)
				next = (int)(pp->retry_at - now);
		}
	}
	return next;
}

/* Fails every message still held: the producer is closing and could not
 * deliver them in time. Caller holds mu; the reports are collected. */
static void fail_all(struct ringmq_producer *p, int err, struct report **reps, size_t *nrep,
		     size_t *cap)
{
	for (struct ptopic *t = p->topics; t; t = t->next) {
		for (uint32_t i = 0; i < t->nparts; i++) {
			batch_close(t, i);
			struct ppart *pp = &t->parts[i];
			while (pp->q_head) {
				struct pbatch *b = pp->q_head;
				dequeue(b);
				if (*nrep == *cap) {
					*cap = *cap ? *cap * 2 : 16;
					*reps = realloc(*reps, *cap * sizeof(**reps));
				}
				(*reps)[(*nrep)++] = (struct report){ b, err, -1 };
			}
		}
	}
}

static void handle_frames(struct ringmq_producer *p, struct report **reps, size_t *nrep,
			  size_t *cap)
{
	uint32_t len;
	const uint8_t *f;
	while ((f = rc_conn_next_frame(&p->conn, &len)) != NULL) {
		struct proto_resp_hdr h;
		struct pr body;
		if (proto_resp_header(f, len, &h, &body) != 0)
			continue;
		arena_reset(&p->arena);
		union proto_response resp;
		if (h.correlation_id == p->md_corr) {
			p->md_corr = 0;
			int ok = h.err != 0 ||
				 proto_decode_response(API_METADATA, 0, &body, &p->arena, &resp) == 0;
			pthread_mutex_lock(&p->mu);
			if (ok)
				on_metadata(p, &h, &resp.metadata);
			pthread_mutex_unlock(&p->mu);
			continue;
		}
		if (on_describe(p, &h, &body))
			continue;
		struct preq *rq = take_req(p, h.correlation_id);
		if (rq == NULL)
			continue;
		if (h.err == 0 &&
		    proto_decode_response(API_PRODUCE, 0, &body, &p->arena, &resp) != 0)
			memset(&resp, 0, sizeof(resp));
		pthread_mutex_lock(&p->mu);
		on_produce(p, rq, &h, &resp.produce, reps, nrep, cap);
		pthread_mutex_unlock(&p->mu);
		preq_free(rq);
	}
}

/* acks=0: a request counts as delivered once it is written to the socket. */
static void settle_acks0(struct ringmq_producer *p, struct report **reps, size_t *nrep,
			 size_t *cap)
{
	if (p->cfg.acks != PROTO_ACKS_NONE || rc_conn_want_send(&p->conn))
		return;
	pthread_mutex_lock(&p->mu);
	while (p->inflight) {
		struct preq *rq = p->inflight;
		p->inflight = rq->next;
		p->ninflight--;
		for (uint32_t i = 0; i < rq->n; i++) {
			struct pbatch *b = rq->items[i].b;
			if (b->gen != rq->items[i].gen)
				continue;
			dequeue(b);
			if (*nrep == *cap) {
				*cap = *cap ? *cap * 2 : 16;
				*reps = realloc(*reps, *cap * sizeof(**reps));
			}
			(*reps)[(*nrep)++] = (struct report){ b, 0, -1 };
		}
		preq_free(rq);
	}
	pthread_mutex_unlock(&p->mu);
}

/* Waits up to wait_ms for the connection (fd, unless -1) or a wake(), unless
 * one came since `seen` (read before the state the wait was computed from). */
static void io_sleep(struct ringmq_producer *p, unsigned seen, int fd, bool want_write,
		     int wait_ms)
{
	atomic_store(&p->io_asleep, true);
	if (atomic_load(&p->wakes) != seen)
		wait_ms = 0;
	struct pollfd pf[2] = { { .fd = p->efd, .events = POLLIN },
				{ .fd = fd, .events = POLLIN | (want_write ? POLLOUT : 0) } };
	int n = poll(pf, fd >= 0 ? 2 : 1, wait_ms);
	atomic_store(&p->io_asleep, false);
	uint64_t v;
	if (n > 0 && (pf[0].revents & POLLIN) && read(p->efd, &v, sizeof(v)) < 0)
		v = 0; /* nonblocking: someone else's read emptied it */
}

static void *io_main(void *arg)
{
	struct ringmq_producer *p = arg;
	struct report *reps = NULL;
	size_t nrep = 0, cap = 0;
	int64_t close_deadline = 0;
	for (;;) {
		unsigned seen = atomic_load(&p->wakes);
		int64_t now = rc_now_ms();
		pthread_mutex_lock(&p->mu);
		if (p->closing && close_deadline == 0)
			close_deadline = now + p->cfg.delivery_timeout_ms;
		if (p->stop || (p->closing && (p->outstanding == 0 || now >= close_deadline))) {
			fail_all(p, RINGMQ_ERR_CLOSED, &reps, &nrep, &cap);
			pthread_mutex_unlock(&p->mu);
			break;
		}
		int wait = close_due(p, now);
		int retry = retry_due(p, now);
		if (retry < wait)
			wait = retry;
		bool want_md = false;
		for (struct ptopic *t = p->topics; t; t = t->next)
			want_md |= (t->md_wanted && t->nparts == 0 && t->md_err == 0) ||
				   (t->desc_wanted && !t->desc_done && t->desc_corr == 0);
		pthread_mutex_unlock(&p->mu);

		if (!rc_conn_up(&p->conn)) {
			int ret = rc_conn_connect(&p->conn, 1000);
			if (ret != 0) {
				pthread_mutex_lock(&p->mu);
				p->conn_down = true;
				expire_unsent(p, rc_now_ms(), &reps, &nrep, &cap);
				pthread_cond_broadcast(&p->cv);
				pthread_mutex_unlock(&p->mu);
				if (nrep > 0) {
					report(p, reps, nrep);
					nrep = 0;
				}
				io_sleep(p, seen, -1, false, 20);
				continue;
			}
			pthread_mutex_lock(&p->mu);
			resend_all(p); /* (P1) on the new connection */
			/* Nothing is in flight now: what has waited past
			 * delivery.timeout.ms fails here, or connections that
			 * open and are lost again would keep it for ever. */
			expire_unsent(p, rc_now_ms(), &reps, &nrep, &cap);
			p->md_corr = 0;
			for (struct ptopic *t = p->topics; t; t = t->next)
				t->desc_corr = 0; /* asked again if still wanted */
			p->conn_down = false;
			pthread_mutex_unlock(&p->mu);
		}
		pthread_mutex_lock(&p->mu);
		if (want_md)
			send_metadata(p);
		while (p->ninflight < p->cfg.max_in_flight) {
			struct preq *rq = pick_request(p);
			if (rq == NULL)
				break;
			pthread_mutex_unlock(&p->mu);
			send_request(p, rq);
			pthread_mutex_lock(&p->mu);
		}
		pthread_mutex_unlock(&p->mu);

		if (rc_conn_send_some(&p->conn) == 0)
			settle_acks0(p, &reps, &nrep, &cap);
		if (nrep > 0) {
			/* acks=0 deliveries: no reply will wake the poll below. */
			report(p, reps, nrep);
			nrep = 0;
		}
		int64_t oldest = INT64_MAX;
		for (struct preq *rq = p->inflight; rq; rq = rq->next)
			if (rq->deadline < oldest)
				oldest = rq->deadline;
		now = rc_now_ms();
		if (oldest != INT64_MAX && oldest - now < wait)
			wait = oldest > now ? (int)(oldest - now) : 0;
		if (rc_conn_up(&p->conn)) {
			io_sleep(p, seen, p->conn.fd, rc_conn_want_send(&p->conn), wait);
			if (rc_conn_recv_some(&p->conn) == 0)
				handle_frames(p, &reps, &nrep, &cap);
			if (oldest != INT64_MAX && rc_now_ms() > oldest) {
				snprintf(p->conn.err, sizeof(p->conn.err),
					 "no produce reply within request.timeout.ms");
				rc_conn_close(&p->conn);
			}
		}
		if (nrep > 0) {
			report(p, reps, nrep);
			nrep = 0;
		}
	}
	if (nrep > 0)
		report(p, reps, nrep);
	free(reps);
	return NULL;
}

struct ringmq_producer *ringmq_producer_new(const struct ringmq_config *cfg, char *errstr,
					    size_t errlen)
{
	struct ringmq_producer *p = calloc(1, sizeof(*p));
	if (p == NULL) {
		rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
		return NULL;
	}
	if (cfg)
		p->cfg = *cfg;
	else
		rc_config_default(&p->cfg);
	if (p->cfg.batch_size > p->cfg.message_max_bytes)
		p->cfg.batch_size = p->cfg.message_max_bytes;
	p->producer_id = random_id();
	p->rng = random_id(); /* never 0, which xorshift could not leave */
	p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	atomic_init(&p->wakes, 0);
	atomic_init(&p->io_asleep, false);
	p->arena_buf = malloc(1u << 20);
	if (p->efd < 0 || p->arena_buf == NULL) {
		if (p->efd >= 0)
			close(p->efd);
		free(p->arena_buf);
		free(p);
		rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "cannot set up the producer");
		return NULL;
	}
	arena_init(&p->arena, p->arena_buf, 1u << 20);
	rc_conn_init(&p->conn, &p->cfg);
	pthread_mutex_init(&p->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_cond_init(&p->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&p->thread, NULL, io_main, p) != 0) {
		close(p->efd);
		free(p->arena_buf);
		free(p);
		rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "cannot start the I/O thread");
		return NULL;
	}
	return p;
}

void ringmq_producer_free(struct ringmq_producer *p)
{
	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	p->closing = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	wake(p);
	pthread_join(p->thread, NULL);
	resend_all(p); /* frees requests still listed */
	for (struct ptopic *t = p->topics, *n; t; t = n) {
		n = t->next;
		free(t->parts);
		free(t->name);
		free(t);
	}
	rc_conn_free(&p->conn);
	close(p->efd);
	free(p->arena_buf);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}
