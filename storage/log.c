/* log.c — the write side of a partition log: staging, the io_uring write
 * pipeline, group commit, segment roll, failures and retention. Invariants
 * and the segment state machine are numbered in log_impl.h. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/say.h"
#include "storage/log_impl.h"

static void seal_step(struct segment *seg);
static void create_step(struct segment *seg);
static void rewind_step(struct log *log);
static void idx_flush(struct segment *seg, bool all);

int64_t log_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- config ---- */

void log_config_default(struct log_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->segment_bytes = 64ull << 20;
	cfg->segment_ms = 7ll * 24 * 3600 * 1000;
	cfg->index_interval_bytes = 4096;
	cfg->retention_ms = 7ll * 24 * 3600 * 1000;
	cfg->retention_bytes = -1;
	cfg->flush = LOG_FLUSH_ALWAYS;
	cfg->flush_interval_ms = 1000;
	/* Off: fallocated (unwritten) extents made fdatasync no cheaper on
	 * ext4 (docs/benchmarks.md), and reserved segment.bytes of disk for
	 * every partition, written to or not. */
	cfg->preallocate = false;
	cfg->max_writes_in_flight = 4;
}

int log_config_check(const struct log_config *cfg, const char **why)
{
	if (cfg->segment_bytes < SEGMENT_BYTES_MIN || cfg->segment_bytes > SEGMENT_BYTES_MAX) {
		*why = "segment.bytes must be between 1024 and 2147483648";
		return -EINVAL;
	}
	if (cfg->index_interval_bytes < INDEX_INTERVAL_BYTES_MIN ||
	    cfg->index_interval_bytes > INDEX_INTERVAL_BYTES_MAX) {
		*why = "index.interval.bytes must be between 64 and 16777216";
		return -EINVAL;
	}
	if (cfg->flush > LOG_FLUSH_NEVER) {
		*why = "flush must be always, interval:MS or never";
		return -EINVAL;
	}
	if (cfg->flush == LOG_FLUSH_INTERVAL && cfg->flush_interval_ms == 0) {
		*why = "flush interval must be at least 1 ms";
		return -EINVAL;
	}
	if (cfg->max_writes_in_flight == 0 || cfg->max_writes_in_flight > 1024) {
		*why = "writes in flight must be between 1 and 1024";
		return -EINVAL;
	}
	return 0;
}

const char *log_flush_name(enum log_flush flush)
{
	switch (flush) {
	case LOG_FLUSH_ALWAYS:
		return "always";
	case LOG_FLUSH_INTERVAL:
		return "interval";
	case LOG_FLUSH_NEVER:
		return "never";
	}
	return "?";
}

/* ---- env ---- */

struct log_env *log_env_new(struct ioq *q, size_t staging_max)
{
	struct log_env *env = calloc(1, sizeof(*env));
	if (env == NULL)
		return NULL;
	env->q = q;
	env->staging_max = staging_max;
	env->ftruncate_op = ioq_supports(q, RINGMQ_IORING_OP_FTRUNCATE);
	return env;
}

void log_env_free(struct log_env *env)
{
	if (env == NULL)
		return;
	assert(env->logs == 0);
	while (env->free_chunks != NULL) {
		struct chunk *c = env->free_chunks;
		env->free_chunks = c->next;
		free(c);
	}
	while (env->free_wops != NULL) {
		struct wop *w = env->free_wops;
		env->free_wops = w->next;
		free(w);
	}
	free(env);
}

size_t log_env_staged(const struct log_env *env)
{
	return env->staged;
}

void log_env_set_fsync_delay(struct log_env *env, uint32_t delay_ms)
{
	env->fsync_delay_ms = delay_ms;
}

size_t log_env_staging_max(const struct log_env *env)
{
	return env->staging_max;
}

const uint32_t log_fsync_buckets_us[LOG_FSYNC_BUCKETS - 1] = {
	50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000,
};

const struct log_env_stats *log_env_stats(const struct log_env *env)
{
	return &env->stats;
}

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static struct chunk *chunk_get(struct log_env *env, uint32_t need)
{
	struct chunk *c;
	if (need <= CHUNK_SIZE && env->free_chunks != NULL) {
		c = env->free_chunks;
		env->free_chunks = c->next;
		env->free_chunk_count--;
	} else {
		uint32_t cap = need > CHUNK_SIZE ? need : CHUNK_SIZE;
		c = malloc(sizeof(*c) + cap);
		if (c == NULL)
			return NULL;
		c->cap = cap;
	}
	c->next = NULL;
	c->seg = NULL;
	c->fill = c->submitted = c->written = 0;
	c->inflight = 0;
	return c;
}

static void chunk_put(struct log_env *env, struct chunk *c)
{
	assert(c->inflight == 0);
	if (c->cap == CHUNK_SIZE && env->free_chunk_count < CHUNK_FREE_MAX) {
		c->next = env->free_chunks;
		env->free_chunks = c;
		env->free_chunk_count++;
	} else {
		free(c);
	}
}

void log_mark_dirty(struct log *log)
{
	if (log->in_dirty_list)
		return;
	log->in_dirty_list = true;
	log->next_dirty = log->env->dirty;
	log->env->dirty = log;
}

/* ---- segments ---- */

struct segment *seg_new(struct log *log, uint64_t base)
{
	struct segment *seg = calloc(1, sizeof(*seg));
	if (seg == NULL)
		return NULL;
	seg->log = log;
	seg->base = base;
	seg->end_offset = base;
	seg->fd = seg->idx_fd = seg->tix_fd = -1;
	seg->max_ts = INT64_MIN;
	seg->last_tix_ts = INT64_MIN;
	seg->refs = 1;
	seg_name(seg->name_log, base, ".log");
	seg_name(seg->name_idx, base, ".idx");
	seg_name(seg->name_tix, base, ".tix");
	return seg;
}

void seg_free(struct segment *seg)
{
	assert(seg->ops_inflight == 0);
	if (seg->fd >= 0)
		close(seg->fd);
	if (seg->idx_fd >= 0)
		close(seg->idx_fd);
	if (seg->tix_fd >= 0)
		close(seg->tix_fd);
	free(seg->idx);
	free(seg->tix);
	free(seg->io);
	free(seg);
}

void seg_unref(struct segment *seg)
{
	assert(seg->refs > 0);
	if (--seg->refs == 0 && seg->ops_inflight == 0)
		seg_free(seg);
}

int segs_push(struct log *log, struct segment *seg)
{
	if (log->nsegs == log->segs_cap) {
		uint32_t cap = log->segs_cap ? log->segs_cap * 2 : 8;
		struct segment **n = realloc(log->segs, cap * sizeof(*n));
		if (n == NULL)
			return -ENOMEM;
		log->segs = n;
		log->segs_cap = cap;
	}
	log->segs[log->nsegs++] = seg;
	return 0;
}

static struct segment *log_last(const struct log *log)
{
	assert(log->nsegs > 0);
	return log->segs[log->nsegs - 1];
}

static int arr_reserve(void **arr, uint32_t *cap, uint32_t need, size_t elem)
{
	if (need <= *cap)
		return 0;
	uint32_t ncap = *cap ? *cap * 2 : 64;
	while (ncap < need)
		ncap *= 2;
	void *n = realloc(*arr, (size_t)ncap * elem);
	if (n == NULL)
		return -ENOMEM;
	*arr = n;
	*cap = ncap;
	return 0;
}

/* Adds index entries for the batch at pos. Appends and recovery both use
 * this rule, so a rebuilt index equals the one appends wrote. */
int seg_index_batch(struct segment *seg, const struct batch_hdr *h, uint64_t pos,
		    uint32_t interval)
{
	if (arr_reserve((void **)&seg->idx, &seg->idx_cap, seg->idx_n + 1, sizeof(*seg->idx)) ||
	    arr_reserve((void **)&seg->tix, &seg->tix_cap, seg->tix_n + 1, sizeof(*seg->tix)))
		return -ENOMEM;
	if (!seg->max_ts_known || h->max_timestamp > seg->max_ts) {
		seg->max_ts = h->max_timestamp;
		seg->max_ts_known = true;
	}
	if (seg->idx_n > 0 && pos - seg->last_index_pos < interval)
		return 0;
	uint32_t rel = (uint32_t)(h->base_offset - seg->base);
	seg->idx[seg->idx_n++] = (struct idx_entry){ .rel_offset = rel, .pos = (uint32_t)pos };
	seg->last_index_pos = pos;
	if (seg->max_ts > seg->last_tix_ts) {
		seg->tix[seg->tix_n++] =
			(struct tix_entry){ .timestamp = seg->max_ts, .rel_offset = rel };
		seg->last_tix_ts = seg->max_ts;
	}
	return 0;
}

/* A final time index entry, so that a sealed segment's max timestamp is on
 * disk: open_closed_segment() and retention take it from the last entry. The
 * seal and an index rebuilt for a closed segment both add it. Without memory
 * it is left out; lookups stay correct, only retention sees an older max. */
void seg_index_final(struct segment *seg)
{
	if (!seg->max_ts_known || seg->max_ts <= seg->last_tix_ts || seg->idx_n == 0)
		return;
	if (arr_reserve((void **)&seg->tix, &seg->tix_cap, seg->tix_n + 1, sizeof(*seg->tix)))
		return;
	seg->tix[seg->tix_n++] = (struct tix_entry){
		.timestamp = seg->max_ts,
		.rel_offset = seg->idx[seg->idx_n - 1].rel_offset,
	};
	seg->last_tix_ts = seg->max_ts;
}

/* Every SQE a log submits goes through here, so log_close() and segment
 * teardown know when the kernel is done with their memory. */
static struct io_uring_sqe *seg_sqe(struct segment *seg, struct seg_op *o,
				    void (*done)(struct ioq_op *, int, unsigned), int which,
				    enum ioq_kind kind)
{
	o->op.done = done;
	o->op.kind = kind;
	o->seg = seg;
	o->which = which;
	seg->ops_inflight++;
	seg->log->ops_inflight++;
	return ioq_sqe(seg->log->env->q, &o->op);
}

/* Called first by every segment op completion. Returns false if the segment
 * was dropped meanwhile (freed here), so the handler must stop. */
static bool seg_op_finish(struct segment *seg)
{
	assert(seg->ops_inflight > 0);
	seg->ops_inflight--;
	seg->log->ops_inflight--;
	if (seg->refs == 0) {
		if (seg->ops_inflight == 0)
			seg_free(seg);
		return false;
	}
	return true;
}

/* ftruncate through io_uring where the kernel has it; a plain call before
 * Linux 6.9 (once per segment roll, and the file is already in cache). */
static void prep_ftruncate(struct segment *seg, struct seg_op *o, int fd, uint64_t len,
			   void (*done)(struct ioq_op *, int, unsigned), int which)
{
	struct io_uring_sqe *sqe = seg_sqe(seg, o, done, which, IOQ_TRUNCATE);
	if (seg->log->env->ftruncate_op) {
		io_uring_prep_rw(RINGMQ_IORING_OP_FTRUNCATE, sqe, fd, NULL, 0, len);
	} else {
		int ret = ftruncate(fd, (off_t)len) == 0 ? 0 : -errno;
		/* Complete through the ring all the same, so both paths run the
		 * same handler: a NOP whose result the handler reads as ret. */
		io_uring_prep_nop(sqe);
		o->which = which | (ret != 0 ? 0x100 : 0);
	}
}

static int step_result(struct seg_op *o, int res)
{
	/* See prep_ftruncate: a NOP standing in for a failed ftruncate. */
	if (o->which & 0x100)
		return -EIO;
	return res;
}

/* ---- waiters ---- */

static void wq_push(struct log_waiter **head, struct log_waiter **tail, struct log_waiter *w)
{
	w->next = NULL;
	if (*tail)
		(*tail)->next = w;
	else
		*head = w;
	*tail = w;
}

/* Runs the waiters at the head whose offset is below `below`. */
static void wq_fire(struct log_waiter **head, struct log_waiter **tail, uint64_t below)
{
	while (*head != NULL && (*head)->offset < below) {
		struct log_waiter *w = *head;
		*head = w->next;
		if (*head == NULL)
			*tail = NULL;
		w->next = NULL;
		w->fn(w, 0);
	}
}

/* Fails every waiter whose offset is >= from. */
static void wq_fail_from(struct log_waiter **head, struct log_waiter **tail, uint64_t from,
			 int err)
{
	struct log_waiter *keep = NULL, *keep_tail = NULL, *fail = NULL, *fail_tail = NULL;
	for (struct log_waiter *w = *head, *n; w != NULL; w = n) {
		n = w->next;
		if (w->offset >= from)
			wq_push(&fail, &fail_tail, w);
		else
			wq_push(&keep, &keep_tail, w);
	}
	*head = keep;
	*tail = keep_tail;
	while (fail != NULL) {
		struct log_waiter *w = fail;
		fail = w->next;
		w->next = NULL;
		w->fn(w, err);
	}
}

void log_wait_written(struct log *log, struct log_waiter *w)
{
	assert(w->offset < log->end || log->failed || log->wfail);
	if (w->offset < log->written_end) {
		w->fn(w, 0);
		return;
	}
	if (log->failed || log->wfail) {
		w->fn(w, log->failed ? log->failed : log->wfail);
		return;
	}
	wq_push(&log->wq_head, &log->wq_tail, w);
}

void log_wait_durable(struct log *log, struct log_waiter *w)
{
	assert(w->offset < log->end || log->failed || log->wfail);
	if (w->offset < log->durable_end) {
		w->fn(w, 0);
		return;
	}
	if (log->failed || (log->wfail && w->offset >= log->written_end)) {
		w->fn(w, log->failed ? log->failed : log->wfail);
		return;
	}
	wq_push(&log->dq_head, &log->dq_tail, w);
	log_mark_dirty(log);
}

void log_set_visible_listener(struct log *log, void (*fn)(void *arg), void *arg)
{
	log->visible_fn = fn;
	log->visible_arg = arg;
}

uint64_t log_start(const struct log *log)
{
	return log->start;
}

uint64_t log_end(const struct log *log)
{
	return log->end;
}

uint64_t log_written_end(const struct log *log)
{
	return log->written_end;
}

uint64_t log_failed_from(const struct log *log)
{
	return log->fail_from;
}

uint64_t log_durable_end(const struct log *log)
{
	return log->durable_end;
}

int log_error(const struct log *log)
{
	return log->failed;
}

uint64_t log_visible_end(const struct log *log)
{
	return log->cfg.flush == LOG_FLUSH_ALWAYS ? log->durable_end : log->written_end;
}

uint64_t log_size_bytes(const struct log *log)
{
	uint64_t n = 0;
	for (uint32_t i = 0; i < log->nsegs; i++)
		n += log->segs[i]->written_pos;
	return n;
}

uint32_t log_segment_count(const struct log *log)
{
	return log->nsegs;
}

const struct log_config *log_get_config(const struct log *log)
{
	return &log->cfg;
}

const char *log_dir(const struct log *log)
{
	return log->dir;
}

int log_set_config(struct log *log, const struct log_config *cfg)
{
	const char *why;
	if (log_config_check(cfg, &why) != 0)
		return -EINVAL;
	uint64_t vis = log_visible_end(log);
	log->cfg = *cfg;
	if (log_visible_end(log) != vis && log->visible_fn)
		log->visible_fn(log->visible_arg);
	log_mark_dirty(log);
	return 0;
}

void log_set_watermarks(struct log *log, uint64_t written, uint64_t durable)
{
	uint64_t vis = log_visible_end(log);
	assert(written >= log->written_end);
	assert(durable >= log->durable_end);
	assert(durable <= written);
	assert(written <= log->end);
	log->written_end = written;
	log->durable_end = durable;
	wq_fire(&log->wq_head, &log->wq_tail, written);
	wq_fire(&log->dq_head, &log->dq_tail, durable);
	if (log_visible_end(log) != vis && log->visible_fn)
		log->visible_fn(log->visible_arg);
}

void log_drop_waiters(struct log *log, int err)
{
	wq_fail_from(&log->wq_head, &log->wq_tail, 0, err);
	wq_fail_from(&log->dq_head, &log->dq_tail, 0, err);
}

void log_fail_permanently(struct log *log, int err, const char *what)
{
	if (log->failed == 0)
		say_error("log %s: %s failed: %s; refusing appends until reopened", log->dir, what,
			  strerror(err < 0 ? -err : EIO));
	log->failed = err < 0 ? err : -EIO;
	wq_fail_from(&log->wq_head, &log->wq_tail, 0, log->failed);
	wq_fail_from(&log->dq_head, &log->dq_tail, 0, log->failed);
}

/* ---- append ---- */

static void recent_add(struct log *log, struct segment *seg, uint64_t base, uint64_t pos)
{
	if (log->recent == NULL) {
		log->recent = malloc(RECENT_BATCHES * sizeof(*log->recent));
		if (log->recent == NULL)
			return; /* only an optimization */
	}
	if (log->recent_seg != seg) {
		log->recent_seg = seg;
		log->recent_first = log->recent_n = 0;
	}
	uint32_t i = (log->recent_first + log->recent_n) % RECENT_BATCHES;
	log->recent[i] = (struct recent_batch){ base, pos };
	if (log->recent_n < RECENT_BATCHES)
		log->recent_n++;
	else
		log->recent_first = (log->recent_first + 1) % RECENT_BATCHES;
}


/* ACTIVE -> SEALING [log_roll]: the current segment takes no more appends;
 * a PENDING one takes them and gets its files once the seal is done (S1). */
static int log_roll(struct log *log)
{
	struct segment *seg = log_last(log);
	struct segment *next = seg_new(log, log->end);
	if (next == NULL)
		return -ENOMEM;
	next->io = calloc(1, sizeof(*next->io));
	if (next->io == NULL || segs_push(log, next) != 0) {
		seg_free(next);
		return -ENOMEM;
	}
	next->state = SEG_PENDING;
	next->idx_loaded = true;
	if (seg->state == SEG_ACTIVE) {
		seg->state = SEG_SEALING;
		seal_step(seg);
	} else if (seg->state == SEG_CLOSED) {
		/* A create failed after the seal: start the new one now. */
		create_step(next);
	}
	/* A PENDING or CREATING segment is sealed as soon as it is live (see
	 * create_step), and then its successor is created: (S1) holds. */
	return 0;
}

static bool roll_due(const struct log *log, const struct segment *seg, uint32_t len,
		     int64_t now_ms)
{
	if (seg->state == SEG_CLOSED)
		return true;
	if (seg->end_pos == 0)
		return false; /* an empty segment takes any batch that fits a segment */
	if (seg->end_pos + len > log->cfg.segment_bytes)
		return true; /* also while it is not live yet: the next one queues behind it */
	if (seg->state != SEG_ACTIVE)
		return false;
	if (log->end - seg->base > (uint64_t)UINT32_MAX - BATCH_RECORDS_MAX)
		return true; /* relative offsets in the index are 32-bit */
	return log->cfg.segment_ms > 0 && now_ms - seg->created_ms >= log->cfg.segment_ms;
}

int log_append(struct log *log, const void *batch, uint32_t len, uint64_t *base_offset)
{
	struct log_env *env = log->env;
	if (log->failed)
		return log->failed;
	if (log->wfail)
		return log->wfail;
	if (len > log->cfg.segment_bytes)
		return -EMSGSIZE;
	if (env->staged > 0 && env->staged + len > env->staging_max)
		return -ENOBUFS;

	struct batch_hdr h;
	int ret = batch_parse(batch, len, &h);
	assert(ret == 0 && h.length == len); /* callers verify batches first */
	if (ret != 0 || h.length != len)
		return -EINVAL;
	if (h.record_count > BATCH_OFFSET_LIMIT - log->end)
		return -EOVERFLOW; /* the offsets would leave what a batch may carry */

	struct segment *seg = log_last(log);
	if (roll_due(log, seg, len, log_wall_ms())) {
		ret = log_roll(log);
		if (ret != 0)
			return ret;
		seg = log_last(log);
	}
	assert(seg->state == SEG_PENDING || seg->state == SEG_CREATING ||
	       seg->state == SEG_ACTIVE);

	struct chunk *c = log->chunk_tail;
	if (c == NULL || c->seg != seg || c->cap - c->fill < len) {
		struct chunk *nc = chunk_get(env, len);
		if (nc == NULL)
			return -ENOMEM;
		nc->seg = seg;
		nc->file_pos = seg->end_pos;
		nc->fill_end = log->end;
		if (c)
			c->next = nc;
		else
			log->chunk_head = nc;
		log->chunk_tail = nc;
		c = nc;
	}
	assert(c->file_pos + c->fill == seg->end_pos);

	uint8_t *dst = c->data + c->fill;
	memcpy(dst, batch, len);
	uint64_t base = log->end;
	batch_set_base_offset(dst, base);
	h.base_offset = base;
	if (seg->end_pos == 0)
		seg->created_ms = log_wall_ms();
	ret = seg_index_batch(seg, &h, seg->end_pos, log->cfg.index_interval_bytes);
	if (ret != 0)
		return ret; /* nothing is committed yet: the copy is dropped */

	recent_add(log, seg, base, seg->end_pos);
	c->fill += len;
	seg->end_pos += len;
	log->end = base + h.record_count;
	seg->end_offset = log->end;
	c->fill_end = log->end;
	env->staged += len;
	*base_offset = base;
	log_mark_dirty(log);
	return 0;
}

/* ---- writes ---- */

static void wop_done(struct ioq_op *op, int res, unsigned flags);

static void wop_submit(struct log *log, struct wop *w)
{
	struct segment *seg = w->chunk->seg;
	seg->ops_inflight++;
	log->ops_inflight++;
	struct io_uring_sqe *sqe = ioq_sqe(log->env->q, &w->op);
	io_uring_prep_write(sqe, seg->fd, w->chunk->data + w->off + w->done, w->len - w->done,
			    w->file_pos + w->done);
}

static void writes_submit(struct log *log)
{
	struct log_env *env = log->env;
	if (log->wfail || log->failed)
		return;
	for (struct chunk *c = log->chunk_head; c != NULL; c = c->next) {
		if (c->submitted == c->fill)
			continue;
		enum seg_state st = c->seg->state;
		if (st != SEG_ACTIVE && st != SEG_SEALING)
			break; /* (S2) */
		if (log->wops_inflight >= log->cfg.max_writes_in_flight)
			break;
		struct wop *w = env->free_wops;
		if (w != NULL)
			env->free_wops = w->next;
		else if ((w = malloc(sizeof(*w))) == NULL)
			break; /* retried at the next flush */
		memset(w, 0, sizeof(*w));
		w->op.done = wop_done;
		w->op.kind = IOQ_WRITE;
		w->log = log;
		w->chunk = c;
		w->off = c->submitted;
		w->len = c->fill - c->submitted;
		w->file_pos = c->file_pos + c->submitted;
		w->end_offset = c->fill_end; /* writes always end on a batch boundary */
		w->flush_gen = env->flush_gen;
		c->submitted = c->fill;
		c->inflight++;
		c->seg->submitted_pos = w->file_pos + w->len;
		if (log->wop_tail)
			log->wop_tail->next = w;
		else
			log->wop_head = w;
		log->wop_tail = w;
		log->wops_inflight++;
		wop_submit(log, w);
	}
}

static void log_advance(struct log *log);

static void wop_done(struct ioq_op *op, int res, unsigned flags)
{
	struct wop *w = (struct wop *)op;
	struct log *log = w->log;
	(void)flags;
	w->chunk->seg->ops_inflight--;
	log->ops_inflight--;
	if (res == -EINTR || res == -EAGAIN) {
		wop_submit(log, w); /* transient: the same bytes again */
		return;
	}
	if (res < 0) {
		w->err = res;
	} else if (res == 0) {
		w->err = -EIO; /* no progress: an error, never a loop */
	} else {
		w->done += (uint32_t)res;
		assert(w->done <= w->len);
		if (w->done < w->len) {
			wop_submit(log, w); /* short write: the rest, same op (W) */
			return;
		}
	}
	w->complete = true;
	log_advance(log);
}

static void chunks_reclaim(struct log *log)
{
	struct log_env *env = log->env;
	while (log->chunk_head != NULL) {
		struct chunk *c = log->chunk_head;
		if (c->inflight != 0 || c->written != c->fill)
			break;
		if (c != log->chunk_tail) {
			log->chunk_head = c->next;
			chunk_put(env, c);
			continue;
		}
		/* An idle, fully written tail is reused in place. */
		c->file_pos += c->fill;
		c->fill = c->submitted = c->written = 0;
		break;
	}
}

/* Pops completed writes in submission order and moves written_end (W). */
static void log_advance(struct log *log)
{
	struct log_env *env = log->env;
	uint64_t written = log->written_end;
	int failed = 0;
	while (log->wop_head != NULL && log->wop_head->complete) {
		struct wop *w = log->wop_head;
		struct chunk *c = w->chunk;
		struct segment *seg = c->seg;
		log->wop_head = w->next;
		if (log->wop_head == NULL)
			log->wop_tail = NULL;
		log->wops_inflight--;
		c->inflight--;
		if (w->err && !log->wfail) {
			int64_t now = log_wall_ms();
			log->wfail_logged = now - log->wfail_log_ms >= 10000;
			if (!log->wfail_logged) {
				log->wfail_unlogged++;
			} else if (log->wfail_unlogged > 0) {
				say_error("log %s: write of %u bytes at %s:%" PRIu64 " failed: %s "
					  "(and %" PRIu64 " more failed writes since the last report)",
					  log->dir, w->len, seg->name_log, w->file_pos,
					  strerror(-w->err), log->wfail_unlogged);
			} else {
				say_error("log %s: write of %u bytes at %s:%" PRIu64 " failed: %s",
					  log->dir, w->len, seg->name_log, w->file_pos,
					  strerror(-w->err));
			}
			if (log->wfail_logged) {
				log->wfail_log_ms = now;
				log->wfail_unlogged = 0;
			}
			log->wfail = w->err;
			failed = w->err; /* its waiters are told below, after the writes before it */
		}
		if (!log->wfail) {
			assert(w->file_pos == seg->written_pos);
			seg->written_pos = w->file_pos + w->len;
			c->written += w->len;
			written = w->end_offset;
			log->done_gen = w->flush_gen;
			env->stats.bytes_written += w->len;
			env->stats.writes++;
			assert(env->staged >= w->len);
			env->staged -= w->len;
		}
		w->next = env->free_wops;
		env->free_wops = w;
	}
	/* Before a rewind too: writes that completed ahead of the failed one
	 * (completions may come out of order, and then arrive in one pass) are
	 * in the file, and the rewind keeps the log up to written_end. Left
	 * out, the log would end before them while their bytes stay in the
	 * file, and the next appends would reuse their offsets. */
	if (written > log->written_end) {
		log_set_watermarks(log, written, log->durable_end);
		/* flush "always": every write is fdatasynced (group-committed),
		 * whether or not anyone waits, or readers would never see it. */
		if (log->cfg.flush == LOG_FLUSH_ALWAYS)
			log->sync_wanted = true;
	}
	if (failed) {
		/* Everything from the failed write on is gone: its waiters and
		 * those after it fail, with written_end at the first of them. */
		log->fail_from = written;
		wq_fail_from(&log->wq_head, &log->wq_tail, written, failed);
		wq_fail_from(&log->dq_head, &log->dq_tail, written, failed);
	}
	if (log->wfail) {
		rewind_step(log);
		return;
	}
	chunks_reclaim(log);
	for (uint32_t i = log->nsegs; i-- > 0;) {
		struct segment *seg = log->segs[i];
		if (seg->state == SEG_SEALING)
			seal_step(seg);
		else if (seg->state == SEG_ACTIVE)
			idx_flush(seg, false);
		else if (seg->state == SEG_CLOSED)
			break;
	}
	log_mark_dirty(log);
}

/* ---- index files ---- */

static void idx_writer_done(struct ioq_op *op, int res, unsigned flags);

/* Writes index entries of batches that are already written (all of them
 * when sealing) to the index files, one write in flight per file. */
static void idx_writer_kick(struct segment *seg, struct idx_writer *w, bool tix, bool all)
{
	if (w->inflight || seg->index_broken)
		return;
	int fd = tix ? seg->tix_fd : seg->idx_fd;
	uint32_t done = tix ? seg->tix_written : seg->idx_written;
	uint32_t n = tix ? seg->tix_n : seg->idx_n;
	/* Only entries of durable batches may reach the file: recovery trusts
	 * every byte before the last valid entry, and a crash can lose unsynced
	 * pages in any order, not just a suffix. Sealing (all) syncs the data
	 * first. */
	uint64_t durable_off = seg->log->durable_end;
	uint32_t count = 0;
	size_t esz = tix ? TIX_ENTRY_SIZE : IDX_ENTRY_SIZE;
	while (done + count < n && count < IDXW_ENTRIES) {
		uint32_t k = done + count;
		uint32_t rel = tix ? seg->tix[k].rel_offset : seg->idx[k].rel_offset;
		if (!all && seg->base + rel >= durable_off)
			break;
		if (tix)
			tix_encode(w->buf + count * esz, &seg->tix[k]);
		else
			idx_encode(w->buf + count * esz, &seg->idx[k]);
		count++;
	}
	if (count == 0 || fd < 0)
		return;
	w->inflight = true;
	w->count = count;
	struct io_uring_sqe *sqe = seg_sqe(seg, &w->op, idx_writer_done, tix, IOQ_INDEX);
	io_uring_prep_write(sqe, fd, w->buf, (unsigned)(count * esz), (uint64_t)done * esz);
}

static void idx_flush(struct segment *seg, bool all)
{
	if (seg->io == NULL)
		return;
	idx_writer_kick(seg, &seg->io->idx_w, false, all);
	idx_writer_kick(seg, &seg->io->tix_w, true, all);
}

static void idx_writer_done(struct ioq_op *op, int res, unsigned flags)
{
	struct seg_op *o = (struct seg_op *)op;
	struct segment *seg = o->seg;
	bool tix = o->which != 0;
	struct idx_writer *w = tix ? &seg->io->tix_w : &seg->io->idx_w;
	(void)flags;
	if (!seg_op_finish(seg))
		return;
	w->inflight = false;
	size_t want = w->count * (tix ? TIX_ENTRY_SIZE : IDX_ENTRY_SIZE);
	if (res < 0 || (size_t)res != want) {
		/* The index is derived data: stop writing it and let the next
		 * open rebuild it from the log. */
		if (!seg->index_broken)
			say_warn("log %s: index write to %s failed (%s); it will be rebuilt on open",
				 seg->log->dir, tix ? seg->name_tix : seg->name_idx,
				 res < 0 ? strerror(-res) : "short write");
		seg->index_broken = true;
	} else if (tix) {
		seg->tix_written += w->count;
	} else {
		seg->idx_written += w->count;
	}
	struct log *log = seg->log;
	if (log->wfail) {
		rewind_step(log);
		return;
	}
	if (seg->state == SEG_SEALING)
		seal_step(seg);
	else if (seg->state == SEG_ACTIVE)
		idx_flush(seg, false);
}

/* ---- seal: SEALING -> CLOSED [seal_step] ---- */

static void seal_op_done(struct ioq_op *op, int res, unsigned flags)
{
	struct seg_op *o = (struct seg_op *)op;
	struct segment *seg = o->seg;
	(void)flags;
	if (!seg_op_finish(seg))
		return;
	res = step_result(o, res);
	if (res < 0 && seg->io->step_err == 0)
		seg->io->step_err = res;
	if (--seg->io->step_pending == 0)
		seal_step(seg);
}

static void seal_step(struct segment *seg)
{
	struct log *log = seg->log;
	struct seg_io *io = seg->io;
	assert(seg->state == SEG_SEALING);
	if (io->step_pending > 0)
		return;
	if (io->step_err) {
		log_fail_permanently(log, io->step_err, "sealing a segment");
		return;
	}
	switch (io->step_no) {
	case 0: /* wait until every staged byte is written */
		if (seg->written_pos != seg->end_pos || log->wfail)
			return;
		io->step_no = 1;
		if (seg->file_size > seg->end_pos) {
			/* Drop the preallocated tail so the size is the data. */
			io->step_pending = 1;
			prep_ftruncate(seg, &io->step[0], seg->fd, seg->end_pos, seal_op_done, 0);
			seg->file_size = seg->end_pos;
			return;
		}
		/* fallthrough */
	case 1:
		io->step_no = 2;
		seg_index_final(seg);
		/* fallthrough */
	case 2: /* the data is durable before the last index entries are written */
		io->step_no = 3;
		io->step_pending = 1;
		io_uring_prep_fsync(seg_sqe(seg, &io->step[0], seal_op_done, 0, IOQ_FSYNC), seg->fd,
				    IORING_FSYNC_DATASYNC);
		return;
	case 3: /* index files complete */
		idx_flush(seg, true);
		if (io->idx_w.inflight || io->tix_w.inflight)
			return;
		if (!seg->index_broken &&
		    (seg->idx_written < seg->idx_n || seg->tix_written < seg->tix_n))
			return;
		io->step_no = 4;
		io->step_pending = 2;
		io_uring_prep_fsync(seg_sqe(seg, &io->step[0], seal_op_done, 0, IOQ_FSYNC),
				    seg->idx_fd, IORING_FSYNC_DATASYNC);
		io_uring_prep_fsync(seg_sqe(seg, &io->step[1], seal_op_done, 1, IOQ_FSYNC),
				    seg->tix_fd, IORING_FSYNC_DATASYNC);
		return;
	case 4: /* synced: CLOSED */
		break;
	}
	seg->state = SEG_CLOSED;
	seg->synced_pos = seg->end_pos;
	free(seg->io);
	seg->io = NULL;
	/* Closed segments read their index from memory; the files are only
	 * needed again by a future open. */
	close(seg->idx_fd);
	close(seg->tix_fd);
	seg->idx_fd = seg->tix_fd = -1;
	say_debug("log %s: sealed %s (%" PRIu64 " bytes)", log->dir, seg->name_log, seg->end_pos);
	if (log->durable_end < seg->end_offset)
		log_set_watermarks(log, log->written_end, seg->end_offset); /* (D) */
	for (uint32_t i = 0; i + 1 < log->nsegs; i++) {
		if (log->segs[i] == seg && log->segs[i + 1]->state == SEG_PENDING) {
			create_step(log->segs[i + 1]);
			break;
		}
	}
	log_mark_dirty(log);
}

/* ---- create: PENDING -> CREATING -> ACTIVE [create_step] ---- */

static void create_op_done(struct ioq_op *op, int res, unsigned flags)
{
	struct seg_op *o = (struct seg_op *)op;
	struct segment *seg = o->seg;
	(void)flags;
	if (!seg_op_finish(seg))
		return;
	if (res >= 0 && seg->io->step_no == 1) {
		int *fds[] = { &seg->fd, &seg->idx_fd, &seg->tix_fd };
		*fds[o->which] = res;
	}
	if (res < 0 && seg->io->step_err == 0)
		seg->io->step_err = res;
	if (--seg->io->step_pending == 0)
		create_step(seg);
}

/* CREATING -> removed [create_failed]: appends staged for this segment, and
 * for any PENDING ones queued behind it, get the error; the next append
 * tries a new segment at the same base. */
static void create_failed(struct segment *seg, int err)
{
	struct log *log = seg->log;
	say_error("log %s: cannot start segment %s: %s", log->dir, seg->name_log, strerror(-err));
	/* Leftover files are harmless: an empty last segment recovers as
	 * empty, and the retry opens them with O_TRUNC. */
	if (seg->fd >= 0)
		close(seg->fd);
	if (seg->idx_fd >= 0)
		close(seg->idx_fd);
	if (seg->tix_fd >= 0)
		close(seg->tix_fd);
	seg->fd = seg->idx_fd = seg->tix_fd = -1;
	for (struct chunk *c = log->chunk_head, *n; c != NULL; c = n) {
		n = c->next;
		/* The sealed segment's last chunk may still be listed, fully
		 * written; everything staged from this segment on was never sent. */
		assert(c->inflight == 0);
		assert(c->seg->base >= seg->base || c->written == c->fill);
		log->env->staged -= c->fill - c->written;
		chunk_put(log->env, c);
	}
	log->chunk_head = log->chunk_tail = NULL;
	uint64_t base = seg->base; /* seg is freed below */
	while (log->nsegs > 0) {
		struct segment *last = log_last(log);
		log->nsegs--;
		if (log->recent_seg == last)
			log->recent_seg = NULL;
		bool done = last == seg;
		assert(done || last->state == SEG_PENDING);
		seg_unref(last);
		if (done)
			break;
	}
	log->end = base;
	log->fail_from = base;
	wq_fail_from(&log->wq_head, &log->wq_tail, base, err);
	wq_fail_from(&log->dq_head, &log->dq_tail, base, err);
	log_mark_dirty(log);
}

static void create_step(struct segment *seg)
{
	struct log *log = seg->log;
	struct seg_io *io = seg->io;
	if (io->step_pending > 0)
		return;
	if (io->step_err) {
		int err = io->step_err;
		io->step_err = 0;
		create_failed(seg, err);
		return;
	}
	const int flags = O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC;
	switch (io->step_no) {
	case 0:
		assert(seg->state == SEG_PENDING);
		seg->state = SEG_CREATING;
		io->step_no = 1;
		io->step_pending = 3;
		io_uring_prep_openat(seg_sqe(seg, &io->step[0], create_op_done, 0, IOQ_OPEN),
				     log->dirfd, seg->name_log, flags, 0644);
		io_uring_prep_openat(seg_sqe(seg, &io->step[1], create_op_done, 1, IOQ_OPEN),
				     log->dirfd, seg->name_idx, flags, 0644);
		io_uring_prep_openat(seg_sqe(seg, &io->step[2], create_op_done, 2, IOQ_OPEN),
				     log->dirfd, seg->name_tix, flags, 0644);
		return;
	case 1: /* the new names must survive a crash before any data in them */
		io->step_no = 2;
		io->step_pending = 1;
		io_uring_prep_fsync(seg_sqe(seg, &io->step[0], create_op_done, 0, IOQ_FSYNC),
				    log->dirfd, 0);
		return;
	case 2:
		io->step_no = 3;
		if (log->cfg.preallocate) {
			io->step_pending = 1;
			io_uring_prep_fallocate(
				seg_sqe(seg, &io->step[0], create_op_done, 0, IOQ_FALLOCATE), seg->fd, 0,
				0, (off_t)log->cfg.segment_bytes);
			seg->file_size = log->cfg.segment_bytes;
			return;
		}
		/* fallthrough */
	case 3:
		break;
	}
	io->step_no = 0;
	seg->state = SEG_ACTIVE;
	say_debug("log %s: started %s", log->dir, seg->name_log);
	if (log_last(log) != seg) {
		/* It filled up while its files were being made: ACTIVE ->
		 * SEALING [log_roll] at once; its successor waits for the seal. */
		seg->state = SEG_SEALING;
		seal_step(seg);
	}
	log_mark_dirty(log);
}

/* ---- write failures [writes_rewind] ---- */

static void rewind_op_done(struct ioq_op *op, int res, unsigned flags)
{
	struct seg_op *o = (struct seg_op *)op;
	struct segment *seg = o->seg;
	(void)flags;
	if (!seg_op_finish(seg))
		return;
	res = step_result(o, res);
	if (res < 0 && seg->io->step_err == 0)
		seg->io->step_err = res;
	if (--seg->io->step_pending == 0)
		rewind_step(seg->log);
}

/* After a failed write: once nothing is in flight, drop what was staged past
 * written_end, punch out whatever reached the file past it (S3), and take
 * appends again. */
static void rewind_step(struct log *log)
{
	struct log_env *env = log->env;
	if (log->wops_inflight > 0)
		return;
	struct segment *seg = NULL;
	for (uint32_t i = log->nsegs; i-- > 0;) {
		if (log->segs[i]->state == SEG_ACTIVE || log->segs[i]->state == SEG_SEALING) {
			seg = log->segs[i];
			break;
		}
	}
	assert(seg != NULL && seg->io != NULL);
	struct seg_io *io = seg->io;
	if (io->idx_w.inflight || io->tix_w.inflight || io->step_pending > 0)
		return;

	if (!log->rewinding) {
		log->rewinding = true;
		for (struct chunk *c = log->chunk_head, *n; c != NULL; c = n) {
			n = c->next;
			env->staged -= c->fill - c->written;
			chunk_put(env, c);
		}
		log->chunk_head = log->chunk_tail = NULL;
		while (log_last(log) != seg) { /* PENDING -> removed */
			struct segment *p = log_last(log);
			assert(p->state == SEG_PENDING);
			log->nsegs--;
			seg_unref(p);
		}
		log->end = log->written_end;
		log->recent_n = 0; /* positions past the end may be listed */
		seg->end_pos = seg->written_pos;
		seg->end_offset = log->written_end;
		while (seg->idx_n > 0 && seg->idx[seg->idx_n - 1].pos >= seg->written_pos)
			seg->idx_n--;
		while (seg->tix_n > 0 &&
		       seg->base + seg->tix[seg->tix_n - 1].rel_offset >= log->written_end)
			seg->tix_n--;
		if (seg->idx_written > seg->idx_n)
			seg->idx_written = seg->idx_n;
		if (seg->tix_written > seg->tix_n)
			seg->tix_written = seg->tix_n;
		seg->last_index_pos = seg->idx_n ? seg->idx[seg->idx_n - 1].pos : 0;
		seg->last_tix_ts = seg->tix_n ? seg->tix[seg->tix_n - 1].timestamp : INT64_MIN;
		if (seg->state == SEG_SEALING) /* SEALING -> ACTIVE [writes_rewind] */
			seg->state = SEG_ACTIVE;
		io->step_no = 0;
		io->step_pending = 3;
		struct io_uring_sqe *sqe =
			seg_sqe(seg, &io->step[0], rewind_op_done, 0, IOQ_FALLOCATE);
		if (seg->submitted_pos > seg->written_pos)
			io_uring_prep_fallocate(sqe, seg->fd,
						FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
						(off_t)seg->written_pos,
						(off_t)(seg->submitted_pos - seg->written_pos));
		else
			io_uring_prep_nop(sqe);
		seg->submitted_pos = seg->written_pos;
		prep_ftruncate(seg, &io->step[1], seg->idx_fd, (uint64_t)seg->idx_n * IDX_ENTRY_SIZE,
			       rewind_op_done, 1);
		prep_ftruncate(seg, &io->step[2], seg->tix_fd, (uint64_t)seg->tix_n * TIX_ENTRY_SIZE,
			       rewind_op_done, 2);
		return;
	}

	log->rewinding = false;
	if (io->step_err) {
		int err = io->step_err;
		io->step_err = 0;
		log->wfail = 0;
		log_fail_permanently(log, err, "cleaning up after a failed write");
		return;
	}
	if (log->wfail_logged)
		say_warn("log %s: recovered from a failed write (%s); appending again at offset %"
			 PRIu64, log->dir, strerror(-log->wfail), log->end);
	log->wfail = 0;
	log_mark_dirty(log);
}

/* ---- group commit ---- */

static void sync_done(struct ioq_op *op, int res, unsigned flags)
{
	struct seg_op *o = (struct seg_op *)op;
	struct segment *seg = o->seg;
	struct log *log = seg->log;
	(void)flags;
	bool alive = seg_op_finish(seg);
	log->sync_inflight = false;
	log->last_sync_ms = log_wall_ms();
	struct log_env_stats *st = &log->env->stats;
	uint64_t us = (uint64_t)(mono_us() - log->sync_started_us);
	unsigned b = 0;
	while (b < LOG_FSYNC_BUCKETS - 1 && us > log_fsync_buckets_us[b])
		b++;
	st->fsync_hist[b]++;
	st->fsyncs++;
	st->fsync_us_total += us;
	if (res < 0) {
		/* After a failed fdatasync the kernel may have dropped the dirty
		 * pages: nothing written since the last good one can be trusted. */
		log_fail_permanently(log, res, "fdatasync");
		return;
	}
	if (alive && seg->synced_pos < log->sync_pos)
		seg->synced_pos = log->sync_pos;
	if (log->sync_target > log->durable_end)
		log_set_watermarks(log, log->written_end, log->sync_target); /* (D) */
	if (alive && seg->state == SEG_ACTIVE)
		idx_flush(seg, false); /* the entries this sync made safe to write */
	log_mark_dirty(log);
}

/* Tests: the delay before an fdatasync is over; (D) still holds, since the
 * target was captured before and the fdatasync is submitted only now. */
static void sync_delay_done(struct ioq_op *op, int res, unsigned flags)
{
	struct seg_op *o = (struct seg_op *)op;
	struct segment *seg = o->seg;
	(void)res;
	(void)flags;
	if (!seg_op_finish(seg))
		return;
	io_uring_prep_fsync(seg_sqe(seg, &seg->log->sync_op, sync_done, 0, IOQ_FSYNC), seg->fd,
			    IORING_FSYNC_DATASYNC);
}

static void sync_start(struct log *log)
{
	if (log->sync_inflight || log->failed)
		return;
	log->sync_wanted = false;
	if (log->durable_end == log->written_end)
		return;
	/* (S1): only the ACTIVE or SEALING segment can hold unsynced data. */
	struct segment *seg = NULL;
	for (uint32_t i = log->nsegs; i-- > 0;) {
		struct segment *s = log->segs[i];
		if (s->state == SEG_ACTIVE || s->state == SEG_SEALING) {
			seg = s;
			break;
		}
		if (s->state == SEG_CLOSED)
			break;
	}
	if (seg == NULL || seg->synced_pos >= seg->written_pos) {
		log_set_watermarks(log, log->written_end, log->written_end);
		return;
	}
	log->sync_inflight = true;
	log->sync_started_us = mono_us();
	log->sync_target = log->written_end;
	log->sync_pos = seg->written_pos;
	if (log->env->fsync_delay_ms > 0) {
		uint32_t ms = log->env->fsync_delay_ms;
		log->sync_delay_ts.tv_sec = ms / 1000;
		log->sync_delay_ts.tv_nsec = (long long)(ms % 1000) * 1000000;
		io_uring_prep_timeout(seg_sqe(seg, &log->sync_delay_op, sync_delay_done, 0,
					      IOQ_OTHER),
				      &log->sync_delay_ts, 0, 0);
		return;
	}
	io_uring_prep_fsync(seg_sqe(seg, &log->sync_op, sync_done, 0, IOQ_FSYNC), seg->fd,
			    IORING_FSYNC_DATASYNC);
}

/* Group commit: an fdatasync waits for the other writes submitted by the
 * same flush as the last one that completed (they finish within microseconds
 * of each other), so it covers all of them instead of the first only. */
static bool sync_due(const struct log *log)
{
	if (!log->sync_wanted && !(log->dq_head && log->dq_head->offset < log->written_end))
		return false;
	return log->wop_head == NULL || log->wop_head->flush_gen > log->done_gen;
}

void log_env_flush(struct log_env *env)
{
	env->flush_gen++;
	while (env->dirty != NULL) {
		struct log *log = env->dirty;
		env->dirty = log->next_dirty;
		log->in_dirty_list = false;
		writes_submit(log);
		if (sync_due(log))
			sync_start(log);
	}
}

/* ---- retention ---- */

static void delete_op_done(struct ioq_op *op, int res, unsigned flags)
{
	struct seg_op *o = (struct seg_op *)op;
	struct segment *seg = o->seg;
	(void)flags;
	if (res < 0 && res != -ENOENT)
		say_warn("log %s: cannot delete %s: %s", seg->log->dir,
			 o->which == 0 ? seg->name_log : o->which == 1 ? seg->name_idx : seg->name_tix,
			 strerror(-res));
	seg_op_finish(seg);
}

/* CLOSED -> deleted [retention_delete]. The files are unlinked now; a
 * slice still reading the segment keeps its fd until released. */
static int retention_delete(struct log *log)
{
	struct segment *seg = log->segs[0];
	assert(seg->state == SEG_CLOSED && log->nsegs > 1);
	seg->io = calloc(1, sizeof(*seg->io));
	if (seg->io == NULL)
		return -ENOMEM;
	memmove(log->segs, log->segs + 1, (log->nsegs - 1) * sizeof(*log->segs));
	log->nsegs--;
	log->start = log->segs[0]->base;
	say_info("log %s: retention deleted %s (%" PRIu64 " bytes); log starts at %" PRIu64,
		 log->dir, seg->name_log, seg->end_pos, log->start);
	const char *names[] = { seg->name_log, seg->name_idx, seg->name_tix };
	for (int i = 0; i < 3; i++)
		io_uring_prep_unlinkat(seg_sqe(seg, &seg->io->step[i], delete_op_done, i, IOQ_UNLINK),
				       log->dirfd, names[i], 0);
	seg_unref(seg);
	return 0;
}

static void retention_run(struct log *log, int64_t now_ms)
{
	uint64_t total = log_size_bytes(log);
	while (log->nsegs > 1) {
		struct segment *seg = log->segs[0];
		if (seg->state != SEG_CLOSED)
			break;
		bool expired = log->cfg.retention_ms >= 0 && seg->max_ts_known &&
			       seg->max_ts < now_ms - log->cfg.retention_ms;
		bool over = log->cfg.retention_bytes >= 0 &&
			    total - seg->end_pos >= (uint64_t)log->cfg.retention_bytes;
		bool below = log->segs[1]->base <= log->delete_before;
		if (!expired && !over && !below)
			break;
		total -= seg->end_pos;
		if (retention_delete(log) != 0)
			break;
	}
}

void log_delete_before(struct log *log, uint64_t offset)
{
	if (offset > log->delete_before)
		log->delete_before = offset;
}

void log_tick(struct log *log, int64_t now_ms)
{
	if (log->sync_wanted)
		log_mark_dirty(log); /* e.g. the first fdatasync after log_open */
	if (log->failed || log->wfail)
		return;
	struct segment *seg = log_last(log);
	if (seg->state == SEG_ACTIVE && seg->end_pos > 0 && log->cfg.segment_ms > 0 &&
	    now_ms - seg->created_ms >= log->cfg.segment_ms) {
		if (log_roll(log) != 0)
			say_warn("log %s: segment.ms roll failed: out of memory", log->dir);
	}
	if (log->cfg.flush == LOG_FLUSH_INTERVAL && log->written_end > log->durable_end &&
	    now_ms - log->last_sync_ms >= log->cfg.flush_interval_ms) {
		log->sync_wanted = true;
		log_mark_dirty(log);
	}
	retention_run(log, now_ms);
}

bool log_busy(const struct log *log)
{
	if (log->ops_inflight > 0 || log->wops_inflight > 0)
		return true;
	for (struct chunk *c = log->chunk_head; c != NULL; c = c->next)
		if (c->written != c->fill)
			return true;
	return false;
}

void log_discard(struct log *log)
{
	struct log_env *env = log->env;
	assert(!log_busy(log));
	log_drop_waiters(log, -ENOENT);
	for (struct chunk *c = log->chunk_head, *n; c != NULL; c = n) {
		n = c->next;
		chunk_put(env, c);
	}
	if (log->in_dirty_list) {
		for (struct log **p = &env->dirty; *p; p = &(*p)->next_dirty) {
			if (*p == log) {
				*p = log->next_dirty;
				break;
			}
		}
	}
	for (uint32_t i = 0; i < log->nsegs; i++)
		seg_unref(log->segs[i]); /* pinned ones live on until released */
	free(log->segs);
	free(log->recent);
	close(log->dirfd);
	free(log->dir);
	env->logs--;
	free(log);
}

/* ---- synchronous wrappers ---- */

struct sync_waiter {
	struct log_waiter w;
	bool fired;
	int err;
};

static void sync_waiter_fire(struct log_waiter *w, int err)
{
	struct sync_waiter *sw = (struct sync_waiter *)w;
	sw->fired = true;
	sw->err = err;
}

/* Runs the env's ring once. Returns 0, or -EDEADLK if nothing is in flight
 * and nothing can be (a caller waiting on a condition that cannot happen). */
static int pump(struct log *log)
{
	log_env_flush(log->env);
	if (log->ops_inflight == 0 && log->env->dirty == NULL)
		return -EDEADLK;
	int ret = ioq_wait(log->env->q, -1);
	return ret < 0 ? ret : 0;
}

static void wq_remove(struct log_waiter **head, struct log_waiter **tail, struct log_waiter *w)
{
	struct log_waiter *prev = NULL;
	for (struct log_waiter *p = *head; p != NULL; prev = p, p = p->next) {
		if (p != w)
			continue;
		if (prev)
			prev->next = p->next;
		else
			*head = p->next;
		if (*tail == p)
			*tail = prev;
		return;
	}
}

static int wait_for(struct log *log, struct sync_waiter *sw, bool durable)
{
	if (durable)
		log_wait_durable(log, &sw->w);
	else
		log_wait_written(log, &sw->w);
	while (!sw->fired) {
		int ret = pump(log);
		if (ret != 0) {
			wq_remove(durable ? &log->dq_head : &log->wq_head,
				  durable ? &log->dq_tail : &log->wq_tail, &sw->w);
			return ret;
		}
	}
	return sw->err;
}

int log_append_sync(struct log *log, const void *batch, uint32_t len, bool durable,
		    uint64_t *base_offset)
{
	int ret;
	while ((ret = log_append(log, batch, len, base_offset)) == -ENOBUFS) {
		ret = pump(log);
		if (ret != 0)
			return ret;
	}
	if (ret != 0)
		return ret;
	struct sync_waiter *sw = calloc(1, sizeof(*sw));
	if (sw == NULL)
		return -ENOMEM;
	sw->w = (struct log_waiter){ .offset = *base_offset, .fn = sync_waiter_fire };
	ret = wait_for(log, sw, durable);
	free(sw);
	return ret;
}

int log_sync(struct log *log)
{
	if (log->failed)
		return log->failed;
	if (log->end == 0 || log->durable_end == log->end)
		return 0;
	struct sync_waiter *sw = calloc(1, sizeof(*sw));
	if (sw == NULL)
		return -ENOMEM;
	sw->w = (struct log_waiter){ .offset = log->end - 1, .fn = sync_waiter_fire };
	int ret = wait_for(log, sw, true);
	free(sw);
	return ret;
}

int log_tick_sync(struct log *log, int64_t now_ms)
{
	log_tick(log, now_ms);
	while (log->ops_inflight > 0 || log->env->dirty != NULL) {
		int ret = pump(log);
		if (ret == -EDEADLK)
			break;
		if (ret != 0)
			return ret;
	}
	return log->failed;
}
