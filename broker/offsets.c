/* offsets.c — the committed-offsets store: durable, cheap and compacted.
 *
 * Commits are records in a log of their own (<data-dir>/.offsets/), kept
 * with flush "always", so an acknowledged commit survives kill -9 and a
 * machine crash exactly like an acks=all message, and concurrent commits
 * share fdatasyncs (group commit): that is what makes tens of thousands of
 * commits a second cheap.
 *
 * Record (the batch format's key and value):
 *   key 'C' u16 group-len group u16 topic-len topic u32 partition,
 *       value u64 offset                   a commit
 *   key 'D' u16 group-len group, no value  the group was deleted
 *   key 'T' u16 topic-len topic, no value  the topic was deleted: every
 *                                           group forgets its offsets
 *   key 'S', value u64 base                a snapshot starting at base is whole
 * Start-up replays the log in order. Compaction appends a snapshot of every
 * current offset, then a marker; once the marker is durable, the segments
 * wholly before the snapshot are deleted. A crash in between leaves the old
 * segments, whose replay ends in the same state.
 *
 * The groups see a record only once it is durable (G3), so a snapshot of
 * their state taken while records are in flight would miss those records,
 * and would be replayed after them: a commit would go back, a deleted group
 * return. So compaction is a barrier: new records queue while the ones in
 * flight become durable, the snapshot is taken when none are, and the queue
 * is appended after it.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "broker/broker.h"
#include "common/endian.h"
#include "common/say.h"
#include "storage/batch.h"

#define OFFSETS_DIR ".offsets"
/* Compact when the log is this large (default) and four times the live state. */
#define COMPACT_MIN_BYTES (64ull << 20)

/* Records that arrived during a compaction barrier, appended after it. */
struct queued {
	struct queued *next;
	struct offset_rec *recs;
	size_t n;
	void (*done)(void *arg, int err);
	void *arg;
};

struct offsets {
	struct log *log;
	uint64_t compact_bytes;
	uint64_t snapshot_batch_bytes; /* well inside a segment */
	uint32_t inflight;        /* appends not yet durable */
	bool barrier;             /* a compaction waits for inflight to reach 0 */
	bool compacting;          /* its snapshot is not yet durable */
	uint64_t snapshot_base;
	struct queued *queue, **queue_tail;
};

struct append_wait {
	struct log_waiter w;
	struct loop *l;
	void (*done)(void *arg, int err);
	void *arg;
};

static void compact(struct loop *l);

static size_t rec_key_len(const struct offset_rec *r)
{
	size_t n = 1 + 2;
	if (r->group)
		n += strlen(r->group);
	if (r->topic)
		n += 2 + strlen(r->topic) + 4;
	return n;
}

static size_t rec_encode_key(uint8_t *k, const struct offset_rec *r)
{
	size_t n = 0;
	if (r->group == NULL) {
		size_t tl = strlen(r->topic);
		k[n++] = 'T';
		le16_store(k + n, (uint16_t)tl);
		n += 2;
		memcpy(k + n, r->topic, tl);
		return n + tl;
	}
	size_t gl = strlen(r->group);
	k[n++] = r->topic ? 'C' : 'D';
	le16_store(k + n, (uint16_t)gl);
	n += 2;
	memcpy(k + n, r->group, gl);
	n += gl;
	if (r->topic) {
		size_t tl = strlen(r->topic);
		le16_store(k + n, (uint16_t)tl);
		n += 2;
		memcpy(k + n, r->topic, tl);
		n += tl;
		le32_store(k + n, r->partition);
		n += 4;
	}
	return n;
}

/* Decodes a record key and value into names copied to buf. Returns 0, 1 for
 * a snapshot marker (ignored on replay), or -1 if malformed. */
static int rec_decode(const struct batch_record *br, struct offset_rec *r, char *gbuf,
		      char *tbuf)
{
	const uint8_t *k = br->key, *end = br->key + br->key_len;
	if (br->key_len < 1)
		return -1;
	if (k[0] == 'S')
		return 1;
	if ((k[0] != 'C' && k[0] != 'D' && k[0] != 'T') || end - k < 3)
		return -1;
	uint16_t gl = le16_load(k + 1);
	if (k[0] == 'T') {
		if (gl == 0 || gl > TOPIC_NAME_MAX || (size_t)(end - k) != 3u + gl ||
		    br->value_len != 0)
			return -1;
		memcpy(tbuf, k + 3, gl);
		tbuf[gl] = '\0';
		*r = (struct offset_rec){ NULL, tbuf, 0, 0 };
		return 0;
	}
	if (gl == 0 || gl > TOPIC_NAME_MAX || (size_t)(end - k) < 3u + gl)
		return -1;
	memcpy(gbuf, k + 3, gl);
	gbuf[gl] = '\0';
	r->group = gbuf;
	r->topic = NULL;
	if (k[0] == 'D')
		return 0;
	const uint8_t *p = k + 3 + gl;
	if (end - p < 2)
		return -1;
	uint16_t tl = le16_load(p);
	if (tl == 0 || tl > TOPIC_NAME_MAX || (size_t)(end - p) != 2u + tl + 4 ||
	    br->value_len != 8)
		return -1;
	memcpy(tbuf, p + 2, tl);
	tbuf[tl] = '\0';
	r->topic = tbuf;
	r->partition = le32_load(p + 2 + tl);
	r->offset = le64_load(br->value);
	return 0;
}

static void append_done(struct log_waiter *w, int err)
{
	struct append_wait *aw = (struct append_wait *)w;
	struct loop *l = aw->l;
	struct offsets *o = l->offsets;
	if (aw->done)
		aw->done(aw->arg, err);
	free(aw);
	/* After done: the groups have seen the record when the snapshot is taken. */
	if (--o->inflight == 0 && o->barrier)
		compact(l);
}

/* Appends one batch of records (and, for a snapshot marker, a marker). */
static int append_batch(struct loop *l, const struct offset_rec *recs, size_t n, bool marker,
			uint64_t marker_value, void (*done)(void *, int), void *arg)
{
	struct offsets *o = l->offsets;
	size_t cap = BATCH_HEADER_SIZE + 64;
	for (size_t i = 0; i < n; i++)
		cap += rec_key_len(&recs[i]) + 8 + 32;
	uint8_t *buf = malloc(cap);
	uint8_t *key = malloc(1 + 2 + TOPIC_NAME_MAX + 2 + TOPIC_NAME_MAX + 4);
	struct append_wait *aw = calloc(1, sizeof(*aw));
	int ret = -ENOMEM;
	if (buf == NULL || key == NULL || aw == NULL)
		goto out;
	struct batch_builder b;
	batch_builder_init(&b, buf, cap);
	int64_t now = now_ms();
	for (size_t i = 0; i < n; i++) {
		uint8_t val[8];
		le64_store(val, recs[i].offset);
		size_t kl = rec_encode_key(key, &recs[i]);
		ret = batch_add(&b, now, key, (uint32_t)kl, val, recs[i].group && recs[i].topic ? 8 : 0, NULL, 0);
		if (ret != 0)
			goto out;
	}
	if (marker) {
		uint8_t val[8];
		le64_store(val, marker_value);
		ret = batch_add(&b, now, "S", 1, val, 8, NULL, 0);
		if (ret != 0)
			goto out;
	}
	uint32_t len = batch_seal(&b, 0, 0);
	uint64_t base;
	ret = log_append(o->log, buf, len, &base);
	if (ret != 0)
		goto out;
	aw->w.offset = base + b.count - 1;
	aw->w.fn = append_done;
	aw->l = l;
	aw->done = done;
	aw->arg = arg;
	o->inflight++;
	log_wait_durable(o->log, &aw->w);
	aw = NULL;
out:
	free(buf);
	free(key);
	free(aw);
	return ret;
}

static char *dup_or_null(const char *s, bool *failed)
{
	if (s == NULL)
		return NULL;
	char *d = strdup(s);
	*failed |= d == NULL;
	return d;
}

static void queued_free(struct queued *q)
{
	for (size_t i = 0; i < q->n; i++) {
		free((char *)q->recs[i].group);
		free((char *)q->recs[i].topic);
	}
	free(q->recs);
	free(q);
}

/* Copies the records (the caller's may not outlive this call) to the queue. */
static int enqueue(struct offsets *o, const struct offset_rec *recs, size_t n,
		   void (*done)(void *, int), void *arg)
{
	struct queued *q = calloc(1, sizeof(*q));
	if (q == NULL || (q->recs = calloc(n, sizeof(*q->recs))) == NULL) {
		free(q);
		return -ENOMEM;
	}
	bool failed = false;
	for (size_t i = 0; i < n; i++) {
		q->recs[i] = recs[i];
		q->recs[i].group = dup_or_null(recs[i].group, &failed);
		q->recs[i].topic = dup_or_null(recs[i].topic, &failed);
		q->n = i + 1;
	}
	if (failed) {
		queued_free(q);
		return -ENOMEM;
	}
	q->done = done;
	q->arg = arg;
	*o->queue_tail = q;
	o->queue_tail = &q->next;
	return 0;
}

int offsets_append(struct loop *l, const struct offset_rec *recs, size_t n,
		   void (*done)(void *arg, int err), void *arg)
{
	if (n == 0 || n > OFFSETS_APPEND_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		size_t gl = recs[i].group ? strlen(recs[i].group) : 1;
		size_t tl = recs[i].topic ? strlen(recs[i].topic) : 1;
		if (gl == 0 || gl > TOPIC_NAME_MAX || tl == 0 || tl > TOPIC_NAME_MAX ||
		    (recs[i].group == NULL && recs[i].topic == NULL))
			return -EINVAL;
	}
	struct offsets *o = l->offsets;
	if (o->barrier)
		return enqueue(o, recs, n, done, arg);
	return append_batch(l, recs, n, false, 0, done, arg);
}

/* ---- compaction ---- */

struct snap {
	struct loop *l;
	struct offset_rec *recs;
	size_t n, cap, bytes;
	int err;
};

static void snap_flush(struct snap *s)
{
	if (s->n == 0 || s->err)
		return;
	s->err = append_batch(s->l, s->recs, s->n, false, 0, NULL, NULL);
	s->n = 0;
	s->bytes = 0;
}

static void snap_add(void *arg, const struct offset_rec *rec)
{
	struct snap *s = arg;
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 256;
		struct offset_rec *r = realloc(s->recs, cap * sizeof(*r));
		if (r == NULL) {
			s->err = -ENOMEM;
			return;
		}
		s->recs = r;
		s->cap = cap;
	}
	s->recs[s->n++] = *rec;
	s->bytes += rec_key_len(rec) + 16;
	if (s->bytes >= s->l->offsets->snapshot_batch_bytes)
		snap_flush(s);
}

static void snapshot_done(void *arg, int err)
{
	struct loop *l = arg;
	struct offsets *o = l->offsets;
	o->compacting = false;
	if (err != 0) {
		say_warn("offsets store: snapshot failed (%s); will retry", strerror(-err));
		return;
	}
	log_delete_before(o->log, o->snapshot_base);
	say_info("offsets store: compacted; the log now starts at the snapshot at %" PRIu64,
		 o->snapshot_base);
}

/* Runs when the barrier is up and nothing is in flight: the groups' state
 * is then exactly what a replay of the log gives. */
static void compact(struct loop *l)
{
	struct offsets *o = l->offsets;
	struct snap s = { .l = l };
	o->barrier = false;
	o->compacting = true;
	o->snapshot_base = log_end(o->log);
	groups_each_offset(l, snap_add, &s);
	snap_flush(&s);
	if (s.err == 0)
		s.err = append_batch(l, NULL, 0, true, o->snapshot_base, snapshot_done, l);
	if (s.err != 0) {
		o->compacting = false;
		say_warn("offsets store: cannot write a snapshot: %s", strerror(-s.err));
	}
	free(s.recs);
	/* What waited goes in after the snapshot, in the order it came. */
	struct queued *q = o->queue;
	o->queue = NULL;
	o->queue_tail = &o->queue;
	while (q != NULL) {
		struct queued *next = q->next;
		int err = append_batch(l, q->recs, q->n, false, 0, q->done, q->arg);
		if (err != 0 && q->done)
			q->done(q->arg, err);
		queued_free(q);
		q = next;
	}
}

static void count_live(void *arg, const struct offset_rec *rec)
{
	*(uint64_t *)arg += rec_key_len(rec) + 16;
}

void offsets_tick(struct loop *l, int64_t now)
{
	struct offsets *o = l->offsets;
	log_tick(o->log, now);
	uint64_t size = log_size_bytes(o->log);
	if (o->compacting || o->barrier || size < o->compact_bytes)
		return;
	uint64_t live = 0;
	groups_each_offset(l, count_live, &live);
	if (size <= 4 * live)
		return;
	o->barrier = true;
	if (o->inflight == 0)
		compact(l);
}

/* ---- open, replay, close ---- */

static int replay(struct loop *l)
{
	struct offsets *o = l->offsets;
	uint32_t cap = 1u << 20;
	uint8_t *buf = malloc(cap);
	void *scratch = NULL;
	char *g = malloc(TOPIC_NAME_MAX + 1), *t = malloc(TOPIC_NAME_MAX + 1);
	int ret = buf && g && t ? 0 : -ENOMEM;
	uint64_t off = log_start(o->log), records = 0, bad = 0;
	while (ret == 0 && off < log_visible_end(o->log)) {
		uint64_t base;
		ssize_t n = log_read_copy(o->log, off, buf, cap, &base);
		if (n == -ENOSPC) {
			cap *= 2;
			uint8_t *nb = realloc(buf, cap);
			if (nb == NULL || cap > BATCH_SIZE_MAX * 2u) {
				ret = -ENOMEM;
				break;
			}
			buf = nb;
			continue;
		}
		if (n <= 0) {
			ret = n < 0 ? (int)n : -EIO;
			break;
		}
		uint64_t next = off;
		for (uint32_t at = 0; at < (uint32_t)n;) {
			struct batch_hdr h;
			if (batch_verify(buf + at, (size_t)n - at, &h) != 0)
				break; /* a cut last batch: read again from it */
			void *ns = realloc(scratch, h.records_size);
			if (ns == NULL) {
				ret = -ENOMEM;
				break;
			}
			scratch = ns;
			struct batch_iter it;
			struct batch_record br;
			int r = batch_iter_init(&it, buf + at, scratch, h.records_size);
			while (r == 0 && (r = batch_iter_next(&it, &br)) == 1) {
				r = 0;
				if (br.offset < off)
					continue;
				struct offset_rec rec;
				int d = rec_decode(&br, &rec, g, t);
				if (d == 0)
					groups_apply(l, &rec);
				bad += d < 0;
				records++;
			}
			next = batch_last_offset(&h) + 1;
			at += h.length;
		}
		if (next == off && ret == 0) {
			ret = -EBADMSG;
			break;
		}
		off = next;
	}
	free(buf);
	free(scratch);
	free(g);
	free(t);
	if (ret == 0)
		say_info("offsets store: replayed %" PRIu64 " records%s", records,
			 bad ? " (some malformed, skipped)" : "");
	return ret;
}

int offsets_open(struct loop *l)
{
	struct offsets *o = calloc(1, sizeof(*o));
	if (o == NULL)
		return -ENOMEM;
	l->offsets = o;
	o->queue_tail = &o->queue;
	o->compact_bytes = l->cfg->test_offsets_compact_bytes ? l->cfg->test_offsets_compact_bytes
							       : COMPACT_MIN_BYTES;
	char dir[PATH_MAX];
	if (snprintf(dir, sizeof(dir), "%s/%s", l->cfg->data_dir, OFFSETS_DIR) >= (int)sizeof(dir))
		return -ENAMETOOLONG;
	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		say_error("cannot create %s: %s", dir, strerror(errno));
		return -errno;
	}
	struct log_config cfg;
	log_config_default(&cfg);
	cfg.flush = LOG_FLUSH_ALWAYS;
	/* Small enough that a compaction frees whole segments. */
	cfg.segment_bytes = o->compact_bytes / 4;
	o->snapshot_batch_bytes = cfg.segment_bytes / 4;
	cfg.retention_ms = -1;
	cfg.segment_ms = -1;
	struct log_recovery rep;
	int ret = log_open(l->env, dir, &cfg, &o->log, &rep);
	if (ret != 0) {
		say_error("cannot open the offsets store in %s: %s", dir, strerror(-ret));
		return ret;
	}
	if (rep.truncated_why)
		say_warn("offsets store: recovery cut %" PRIu64 " bytes (%s)", rep.truncated_bytes,
			 rep.truncated_why);
	/* Commits written before a kill -9 may be only in the page cache: one
	 * fdatasync makes them durable, and visible to the replay. */
	ret = log_sync(o->log);
	if (ret == 0)
		ret = replay(l);
	if (ret != 0)
		say_error("cannot replay the offsets store: %s", strerror(-ret));
	return ret;
}

void offsets_close(struct loop *l)
{
	struct offsets *o = l->offsets;
	if (o == NULL)
		return;
	/* Only a failed store leaves records queued at exit: their commits fail. */
	for (struct queued *q = o->queue, *next; q != NULL; q = next) {
		next = q->next;
		if (q->done)
			q->done(q->arg, -ESHUTDOWN);
		queued_free(q);
	}
	o->queue = NULL;
	if (o->log) {
		int ret = log_close(o->log);
		if (ret != 0)
			say_error("offsets store: close failed: %s", strerror(-ret));
	}
	free(o);
	l->offsets = NULL;
}
