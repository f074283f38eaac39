/* produce.c — the produce request: validate every batch, append, and reply
 * per acks once the log says the batches are written or durable.
 *
 * A partition's batches are appended only if all of them are valid, so a
 * bad batch never leaves part of a request in the log. acks=0 gets no reply;
 * acks=1 a reply once written (page cache); acks=all once on stable storage
 * if the topic flushes "always", else once written (docs/protocol.md). */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "common/say.h"
#include "storage/batch.h"

#define MSG_MAX 120

struct pwait {
	struct log_waiter w;
	struct produce_req *pr;
	struct partition *part; /* valid until the waiter fires */
	uint32_t index;         /* into resp_parts */
};

struct produce_req {
	struct conn *c;
	uint32_t corr;
	int8_t acks;
	uint32_t pending; /* waiters outstanding, +1 while being set up */
	bool async;
	struct proto_produce_resp resp;
	struct proto_produce_resp_part *parts;
	struct pwait *waits;
	char *msgs; /* MSG_MAX bytes per partition */
};

static void produce_finish(struct produce_req *pr)
{
	struct conn *c = pr->c;
	uint32_t drop = c->loop->cfg->test_drop_after_append;
	if (drop > 0 && ++c->loop->produce_requests % drop == 0 && !c->closed) {
		/* Tests: the batches are in the log, this reply is lost;
		 * replies to earlier requests, already queued, still go out. */
		conn_close_after_send(c, "test.drop.after.append: dropping the reply");
	}
	if (pr->acks != PROTO_ACKS_NONE && !c->closed) {
		size_t size = 64;
		for (uint32_t i = 0; i < pr->resp.ntopics; i++) {
			size += 8 + pr->resp.topics[i].name.len;
			for (uint32_t k = 0; k < pr->resp.topics[i].nparts; k++)
				size += 32 + pr->resp.topics[i].parts[k].msg.len;
		}
		struct pw w;
		pw_init_dyn(&w, size, c->loop->cfg->max_frame_bytes);
		size_t start = proto_resp_begin(&w, pr->corr, ERR_NONE, NULL);
		proto_encode_response(&w, API_PRODUCE, (union proto_response *)&pr->resp);
		proto_frame_end(&w, start);
		conn_send_pw(c, &w);
	}
	if (pr->async) {
		conn_request_done(c);
		conn_unref(c);
	}
	free(pr);
}

static void set_err(struct produce_req *pr, uint32_t i, uint16_t err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void set_err(struct produce_req *pr, uint32_t i, uint16_t err, const char *fmt, ...)
{
	char *m = pr->msgs + (size_t)i * MSG_MAX;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(m, MSG_MAX, fmt, ap);
	va_end(ap);
	pr->parts[i].err = err;
	pr->parts[i].msg = (struct pstr){ m, (uint16_t)(n < 0 ? 0 : n >= MSG_MAX ? MSG_MAX - 1 : n) };
	pr->c->loop->api[API_PRODUCE].errors++;
}

static void pstates_rollback(struct partition *p, uint64_t end);

static void wait_done(struct log_waiter *w, int err)
{
	struct pwait *pw = (struct pwait *)w;
	struct produce_req *pr = pw->pr;
	if (err != 0) {
		set_err(pr, pw->index, err_from_errno(err), "the batches could not be %s: %s",
			err == -ENOENT ? "kept (topic deleted)" : "stored", strerror(-err));
		/* The log rolled those batches back: a retry must be appended,
		 * not answered as a duplicate of what is no longer there. */
		if (err != -ENOENT)
			pstates_rollback(pw->part, log_failed_from(pw->part->log));
	}
	if (--pr->pending == 0)
		produce_finish(pr);
}

/* Checks every batch of one partition's data. Returns the record count, or
 * 0 with the partition's error set. */
static uint64_t validate(struct produce_req *pr, uint32_t i, const struct topic *t,
			 struct pbytes data)
{
	uint64_t records = 0;
	uint32_t max = t->cfg.max_message_bytes;
	if (data.len == 0) {
		set_err(pr, i, ERR_INVALID_REQUEST, "no batches for this partition");
		return 0;
	}
	for (uint32_t off = 0; off < data.len;) {
		struct batch_hdr h;
		int ret = batch_verify(data.p + off, data.len - off, &h);
		if (ret == -ENODATA) {
			set_err(pr, i, ERR_CORRUPT_BATCH, "batch at byte %u is cut short", off);
			return 0;
		}
		if (ret != 0) {
			set_err(pr, i, ERR_CORRUPT_BATCH,
				"batch at byte %u has a bad header or checksum", off);
			return 0;
		}
		if (h.length > max || h.records_size > max) {
			set_err(pr, i, ERR_BATCH_TOO_LARGE,
				"batch of %u bytes (%u uncompressed) exceeds max.message.bytes %u",
				h.length, h.records_size, max);
			return 0;
		}
		/* Record framing is checked for uncompressed batches; lz4
		 * batches are checked by consumers, to keep decompression off
		 * the broker's hot path. */
		if (batch_compression(&h) == BATCH_COMPRESSION_NONE &&
		    batch_check_records(data.p + off, &h, NULL, 0) != 0) {
			set_err(pr, i, ERR_CORRUPT_BATCH, "batch at byte %u has malformed records",
				off);
			return 0;
		}
		records += h.record_count;
		off += h.length;
	}
	return records;
}

/* ---- idempotent producers ---- */

static struct pstate *pstate_get(struct partition *p, uint64_t pid, int64_t now, bool create)
{
	for (uint32_t i = 0; i < p->nproducers; i++)
		if (p->producers[i].producer_id == pid)
			return &p->producers[i];
	if (!create)
		return NULL;
	if (p->producers == NULL) {
		p->producers = calloc(PSTATES_PER_PARTITION, sizeof(*p->producers));
		if (p->producers == NULL)
			return NULL;
	}
	struct pstate *st;
	if (p->nproducers < PSTATES_PER_PARTITION) {
		st = &p->producers[p->nproducers++];
	} else {
		/* Forget the producer idle longest: a retry from it after this
		 * long would be accepted as new. */
		st = &p->producers[0];
		for (uint32_t i = 1; i < p->nproducers; i++)
			if (p->producers[i].last_used_ms < st->last_used_ms)
				st = &p->producers[i];
	}
	memset(st, 0, sizeof(*st));
	st->producer_id = pid;
	st->last_used_ms = now;
	return st;
}

enum seq_verdict { SEQ_APPEND, SEQ_DUPLICATE, SEQ_BAD };

/* Decides what to do with an idempotent batch, given the sequence expected
 * next (*next, NULL for a producer not seen before). For a duplicate, *dup
 * gets the original base offset. */
static enum seq_verdict seq_check(const struct pstate *st, const uint32_t *next,
				  const struct batch_hdr *h, uint64_t *dup)
{
	if (next == NULL)
		return SEQ_APPEND; /* first batch we see from it: accept its numbering */
	int32_t d = (int32_t)(h->base_sequence - *next);
	if (d == 0)
		return SEQ_APPEND;
	if (d > 0 || st == NULL)
		return SEQ_BAD;
	for (uint32_t i = 0; i < st->nrecent; i++) {
		if (st->recent[i].base_seq == h->base_sequence &&
		    st->recent[i].count == h->record_count) {
			*dup = st->recent[i].base_offset;
			return SEQ_DUPLICATE;
		}
	}
	return SEQ_BAD;
}

static void pstate_record(struct pstate *st, const struct batch_hdr *h, uint64_t base,
			  int64_t now)
{
	if (st->nrecent == PSTATE_RECENT) {
		memmove(st->recent, st->recent + 1, (PSTATE_RECENT - 1) * sizeof(st->recent[0]));
		st->nrecent--;
	}
	st->recent[st->nrecent].base_seq = h->base_sequence;
	st->recent[st->nrecent].count = h->record_count;
	st->recent[st->nrecent].base_offset = base;
	st->nrecent++;
	st->next_seq = h->base_sequence + h->record_count;
	st->last_used_ms = now;
}

/* ---- idempotent producers after a restart ----
 *
 * The state above lives in memory, but every batch in the log carries its
 * producer id, base sequence, record count and base offset, so a partition
 * opened at start-up rebuilds it from the batch headers at its tail. What
 * must be recognised is a retry of a batch whose acknowledgement the crash
 * took away, and those are at the very end of the log:
 * - a producer sends a batch of a partition only once the batch
 *   PSTATE_RECENT before it is acknowledged (libringmq's window). So a
 *   batch followed in the log by PSTATE_RECENT more of its producer, in one
 *   unbroken run of sequences, was acknowledged before the crash;
 * - acknowledgements go out in log order (durability advances in offset
 *   order, and waiters fire in that order), so every batch before it was,
 *   too, but for replies that left out of order across connections.
 * The walk reads newest first and stops at whichever comes first:
 * - at the first such acknowledged batch, once it has walked as far again
 *   past it (the margin for replies sent out of order);
 * - the table full: PSTATES_PER_PARTITION producers, each with its last
 *   PSTATE_RECENT batches or its whole history (a batch with sequence 0);
 * - RESTORE_BATCHES batches (twice what 64 producers can have in flight)
 *   or RESTORE_BYTES of log: the bound when the tail proves nothing, for
 *   example when it holds only non-idempotent batches.
 * Start-up cost thus follows what producers had in flight, not the log's
 * size. A retry of a batch older than the walk is treated as after an
 * eviction: refused as out of sequence (libringmq then starts the partition
 * over under a new producer id, so that batch is stored twice), or, from a
 * producer not seen at all, accepted as new. */
#define RESTORE_BYTES (1u << 20)
#define RESTORE_BATCHES (2u * PSTATE_RECENT * PSTATES_PER_PARTITION)

struct restore {
	struct partition *p;
	int64_t now;
	uint32_t batches;                    /* visited so far */
	uint32_t stop_at;                    /* visited count to stop at; 0: not known yet */
	uint32_t complete;                   /* producers whose history is complete */
	bool done[PSTATES_PER_PARTITION];    /* by index in p->producers */
	bool full[PSTATES_PER_PARTITION];    /* done with PSTATE_RECENT batches in a run */
	int err;
};

/* One batch, newest first. Returns non-zero to stop the walk. */
static int restore_batch(void *arg, const struct batch_hdr *h)
{
	struct restore *r = arg;
	struct partition *p = r->p;
	if (++r->batches > RESTORE_BATCHES || (r->stop_at != 0 && r->batches > r->stop_at))
		return 1;
	if (h->producer_id == 0)
		return 0;
	uint32_t i = 0;
	while (i < p->nproducers && p->producers[i].producer_id != h->producer_id)
		i++;
	if (i == p->nproducers) {
		/* Producers are found newest first: once the table is full, the
		 * rest are the ones a running broker would have evicted. */
		if (i == PSTATES_PER_PARTITION)
			return 0;
		if (p->producers == NULL) {
			p->producers = calloc(PSTATES_PER_PARTITION, sizeof(*p->producers));
			if (p->producers == NULL) {
				r->err = -ENOMEM;
				return 1;
			}
		}
		struct pstate *st = &p->producers[p->nproducers++];
		memset(st, 0, sizeof(*st));
		st->producer_id = h->producer_id;
		st->next_seq = h->base_sequence + h->record_count; /* its newest batch */
		/* Eviction picks the smallest: restored producers rank below any
		 * that sends after the start, and among themselves by recency. */
		st->last_used_ms = r->now - 1 - (int64_t)i;
	}
	struct pstate *st = &p->producers[i];
	/* Collected at the back of recent[], since they come newest first.
	 * Does this batch end where the oldest one kept begins? */
	uint32_t n = st->nrecent;
	bool run = n == 0 ||
		   h->base_sequence + h->record_count == st->recent[PSTATE_RECENT - n].base_seq;
	if (r->done[i]) {
		if (r->full[i] && run && r->stop_at == 0)
			r->stop_at = 2 * r->batches; /* acknowledged: see above */
		r->full[i] = false;                  /* one proof per producer is enough */
		return 0;
	}
	if (!run) {
		/* The producer's numbering broke here (its state was lost
		 * before, or an older broker stored a retry twice): older
		 * batches are not retries of this run of sequences. */
		r->done[i] = true;
		r->complete++;
	} else {
		st->recent[PSTATE_RECENT - 1 - n].base_seq = h->base_sequence;
		st->recent[PSTATE_RECENT - 1 - n].count = h->record_count;
		st->recent[PSTATE_RECENT - 1 - n].base_offset = h->base_offset;
		st->nrecent++;
		if (st->nrecent == PSTATE_RECENT || h->base_sequence == 0) {
			/* All it could retry, or all it ever sent. */
			r->done[i] = true;
			r->full[i] = h->base_sequence != 0;
			r->complete++;
		}
	}
	return p->nproducers == PSTATES_PER_PARTITION && r->complete == PSTATES_PER_PARTITION;
}

/* Rebuilds a partition's idempotent-producer state from its log's tail. For
 * a partition whose log was just opened, before it takes appends. Returns
 * the producers restored, or -errno (the state then holds what was read
 * before the problem: retries of older batches may be stored again). */
int produce_restore_producers(struct partition *p)
{
	struct restore r;
	memset(&r, 0, sizeof(r));
	r.p = p;
	r.now = now_ms();
	p->nproducers = 0;
	int ret = log_scan_tail(p->log, RESTORE_BYTES, restore_batch, &r);
	for (uint32_t i = 0; i < p->nproducers; i++) {
		struct pstate *st = &p->producers[i];
		memmove(st->recent, st->recent + (PSTATE_RECENT - st->nrecent),
			st->nrecent * sizeof(st->recent[0]));
	}
	if (ret == 0)
		ret = r.err;
	return ret != 0 ? ret : (int)p->nproducers;
}

/* After a failed write the log ends at `end` again: every producer forgets
 * the batches it had appended from there on, and expects the first of them
 * next. Forgetting the producers instead would take a later batch of theirs
 * as the first one seen, ahead of the earlier one that failed: stored out
 * of order, the earlier one's retry refused as out of sequence, and stored
 * twice by a producer that then starts over under a new id. */
static void pstates_rollback(struct partition *p, uint64_t end)
{
	for (uint32_t i = 0; i < p->nproducers; i++) {
		struct pstate *st = &p->producers[i];
		while (st->nrecent > 0 && st->recent[st->nrecent - 1].base_offset >= end) {
			st->nrecent--;
			st->next_seq = st->recent[st->nrecent].base_seq;
		}
	}
}

/* Checks every idempotent batch of a partition's data before any is
 * appended. Returns false with the partition's error set. */
static bool seq_precheck(struct produce_req *pr, uint32_t i, struct partition *p,
			 struct pbytes data)
{
	/* Sequences advance batch by batch within the request too. */
	uint64_t pids[16];
	uint32_t nexts[16], n = 0;
	for (uint32_t off = 0; off < data.len;) {
		struct batch_hdr h;
		batch_parse(data.p + off, data.len - off, &h);
		off += h.length;
		if (h.producer_id == 0)
			continue;
		uint32_t k = 0;
		while (k < n && pids[k] != h.producer_id)
			k++;
		const struct pstate *st = pstate_get(p, h.producer_id, 0, false);
		const uint32_t *next = k < n ? &nexts[k] : st ? &st->next_seq : NULL;
		uint64_t dup;
		enum seq_verdict v = seq_check(st, next, &h, &dup);
		if (v == SEQ_BAD) {
			set_err(pr, i, ERR_OUT_OF_ORDER_SEQUENCE,
				"producer %" PRIu64 " sent sequence %u, expected %u", h.producer_id,
				h.base_sequence, next ? *next : 0);
			return false;
		}
		if (k == n && n < 16)
			pids[n++] = h.producer_id;
		if (k < 16)
			nexts[k] = v == SEQ_APPEND ? h.base_sequence + h.record_count
				   : next ? *next : 0;
	}
	return true;
}

static void produce_part(struct produce_req *pr, uint32_t i, struct pstr topic,
			 const struct proto_produce_part *pp)
{
	struct loop *l = pr->c->loop;
	uint16_t err;
	struct partition *p = partition_lookup(l, topic, pp->partition, &err);
	if (p == NULL) {
		set_err(pr, i, err, err == ERR_UNKNOWN_TOPIC ? "topic '%.*s' does not exist"
							     : "topic '%.*s' has no such partition",
			topic.len, topic.p);
		return;
	}
	struct topic *t = p->topic;
	uint64_t records = validate(pr, i, t, pp->batches);
	if (records == 0)
		return;
	if (!seq_precheck(pr, i, p, pp->batches))
		return;
	int64_t now = now_ms();
	uint64_t base = 0, last = 0;
	for (uint32_t off = 0; off < pp->batches.len;) {
		struct batch_hdr h;
		batch_parse(pp->batches.p + off, pp->batches.len - off, &h);
		uint64_t b;
		struct pstate *st = NULL;
		if (h.producer_id != 0) {
			st = pstate_get(p, h.producer_id, now, false);
			uint64_t dup;
			bool known = st != NULL;
			if (known && seq_check(st, &st->next_seq, &h, &dup) == SEQ_DUPLICATE) {
				/* A retry of a batch already in the log. */
				if (off == 0)
					base = dup;
				last = dup + h.record_count - 1;
				records -= h.record_count;
				off += h.length;
				continue;
			}
			if (!known)
				st = pstate_get(p, h.producer_id, now, true);
		}
		int ret = log_append(p->log, pp->batches.p + off, h.length, &b);
		if (ret == 0 && st != NULL)
			pstate_record(st, &h, b, now);
		if (ret != 0) {
			set_err(pr, i, err_from_errno(ret), "append failed: %s", strerror(-ret));
			if (off > 0)
				say_warn("topic %s partition %u: append failed part-way through a "
					 "request: %s", t->name, p->id, strerror(-ret));
			return;
		}
		if (off == 0)
			base = b;
		last = b + h.record_count - 1;
		off += h.length;
	}
	pr->parts[i].base_offset = base;
	pr->parts[i].log_start = log_start(p->log);
	t->msgs_in += records;
	t->bytes_in += pp->batches.len;
	l->msgs_in += records;
	if (pr->acks == PROTO_ACKS_NONE)
		return;
	struct pwait *w = &pr->waits[i];
	w->w.offset = last;
	w->w.fn = wait_done;
	w->pr = pr;
	w->part = p;
	w->index = i;
	pr->pending++;
	if (pr->acks == PROTO_ACKS_ALL && t->cfg.log.flush == LOG_FLUSH_ALWAYS)
		log_wait_durable(p->log, &w->w);
	else
		log_wait_written(p->log, &w->w);
}

void handle_produce(struct conn *c, uint32_t corr, const struct proto_produce_req *req)
{
	if (req->acks != PROTO_ACKS_NONE && req->acks != PROTO_ACKS_LEADER &&
	    req->acks != PROTO_ACKS_ALL) {
		respond_error(c, API_PRODUCE, corr, ERR_INVALID_ACKS,
			      "acks must be 0, 1 or -1 (all), not %d", req->acks);
		return;
	}
	uint32_t nparts = 0;
	size_t names = 0;
	for (uint32_t i = 0; i < req->ntopics; i++) {
		nparts += req->topics[i].nparts;
		names += req->topics[i].name.len;
	}
	size_t size = sizeof(struct produce_req) +
		      req->ntopics * sizeof(struct proto_produce_resp_topic) +
		      nparts * (sizeof(struct proto_produce_resp_part) + sizeof(struct pwait) +
				MSG_MAX) +
		      names + 16;
	struct produce_req *pr = calloc(1, size);
	if (pr == NULL) {
		respond_error(c, API_PRODUCE, corr, ERR_BUSY, "out of memory");
		return;
	}
	pr->c = c;
	pr->corr = corr;
	pr->acks = req->acks;
	pr->pending = 1;
	pr->resp.ntopics = req->ntopics;
	pr->resp.topics = (void *)(pr + 1);
	pr->parts = (void *)(pr->resp.topics + req->ntopics);
	pr->waits = (void *)(pr->parts + nparts);
	pr->msgs = (char *)(pr->waits + nparts);
	char *namebuf = pr->msgs + (size_t)nparts * MSG_MAX;

	uint32_t i = 0;
	for (uint32_t ti = 0; ti < req->ntopics; ti++) {
		const struct proto_produce_topic *qt = &req->topics[ti];
		struct proto_produce_resp_topic *rt = &pr->resp.topics[ti];
		memcpy(namebuf, qt->name.p, qt->name.len);
		rt->name = (struct pstr){ namebuf, qt->name.len };
		namebuf += qt->name.len;
		rt->nparts = qt->nparts;
		rt->parts = &pr->parts[i];
		for (uint32_t k = 0; k < qt->nparts; k++, i++) {
			pr->parts[i].partition = qt->parts[k].partition;
			produce_part(pr, i, qt->name, &qt->parts[k]);
		}
	}
	if (--pr->pending == 0) {
		produce_finish(pr);
		return;
	}
	/* Waiting for the log: the reply goes out from wait_done. */
	pr->async = true;
	c->inflight++;
	conn_ref(c);
}
