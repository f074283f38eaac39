/* log_read.c — reads and lookups: by offset (for fetch) and by time (for
 * list-offsets), and the newest-first walk of the tail's batch headers (for
 * state rebuilt at start-up). Blocking preads of batch headers and lazily
 * loaded indexes; see log.h. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/say.h"
#include "storage/log_impl.h"

/* Last segment whose base is <= offset. The caller ensures offset >= start. */
static uint32_t seg_find(const struct log *log, uint64_t offset)
{
	uint32_t lo = 0, hi = log->nsegs;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (log->segs[mid]->base <= offset)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

uint32_t seg_idx_lookup(const struct segment *seg, uint64_t offset)
{
	assert(offset >= seg->base);
	uint64_t rel = offset - seg->base;
	uint32_t lo = 0, hi = seg->idx_n;
	if (hi == 0 || seg->idx[0].rel_offset > rel)
		return 0;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (seg->idx[mid].rel_offset <= rel)
			lo = mid;
		else
			hi = mid;
	}
	return seg->idx[lo].pos;
}

/* Rebuilds a segment's index in memory from its batch headers and, for a
 * closed segment, writes it back so the next open finds it whole. */
static int seg_rebuild_index(struct log *log, struct segment *seg)
{
	seg->idx_n = seg->tix_n = 0;
	seg->last_index_pos = 0;
	seg->last_tix_ts = INT64_MIN;
	seg->max_ts_known = false;
	struct seg_reader r;
	int ret = seg_reader_init(&r, seg->fd, 0);
	if (ret != 0)
		return ret;
	r.end = seg->written_pos;
	struct batch_hdr h;
	uint64_t expect = seg->base;
	while ((ret = seg_reader_next_header(&r, &h)) == 1) {
		if (h.base_offset != expect || h.base_offset - seg->base > UINT32_MAX) {
			ret = -EBADMSG;
			break;
		}
		ret = seg_index_batch(seg, &h, r.pos - h.length, log->cfg.index_interval_bytes);
		if (ret != 0)
			break;
		expect = h.base_offset + h.record_count;
	}
	seg_reader_free(&r);
	if (ret != 0) {
		say_error("log %s: %s: cannot rebuild index: %s at position %" PRIu64, log->dir,
			  seg->name_log, ret == -EBADMSG ? "damaged batch" : strerror(-ret), r.pos);
		return ret == -ENODATA ? -EBADMSG : ret;
	}
	say_warn("log %s: index of %s was damaged or missing; rebuilt from the log (%u entries)",
		 log->dir, seg->name_log, seg->idx_n);
	if (seg->state != SEG_CLOSED)
		return 0;
	seg_index_final(seg); /* as the seal wrote it */
	for (int k = 0; k < 2; k++) {
		const char *name = k ? seg->name_tix : seg->name_idx;
		size_t esz = k ? TIX_ENTRY_SIZE : IDX_ENTRY_SIZE;
		uint32_t n = k ? seg->tix_n : seg->idx_n;
		uint8_t *buf = malloc((size_t)n * esz + 1);
		int fd = openat(log->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (buf != NULL && fd >= 0) {
			for (uint32_t i = 0; i < n; i++) {
				if (k)
					tix_encode(buf + i * esz, &seg->tix[i]);
				else
					idx_encode(buf + i * esz, &seg->idx[i]);
			}
			if (write(fd, buf, (size_t)n * esz) != (ssize_t)((size_t)n * esz))
				say_warn("log %s: cannot write back %s", log->dir, name);
		}
		if (fd >= 0)
			close(fd);
		free(buf);
	}
	return 0;
}

int seg_load_index(struct log *log, struct segment *seg)
{
	if (seg->idx_loaded)
		return 0;
	bool clean = seg_read_index_files(log, seg, seg->written_pos);
	if (!clean || (seg->idx_n == 0 && seg->written_pos > 0)) {
		int ret = seg_rebuild_index(log, seg);
		if (ret != 0)
			return ret;
	}
	seg->idx_loaded = true;
	return 0;
}

/* Bytes of seg that readers may see. */
static uint64_t seg_visible_pos(const struct log *log, uint32_t i, uint64_t vis)
{
	const struct segment *seg = log->segs[i];
	if (i + 1 < log->nsegs && log->segs[i + 1]->base <= vis)
		return seg->written_pos;
	return log->cfg.flush == LOG_FLUSH_ALWAYS ? seg->synced_pos : seg->written_pos;
}

/* The batch holding `offset` from the ring of recent batch positions: its
 * position and length, with no I/O. Returns false if the ring does not
 * cover the offset. */
static bool recent_locate(const struct log *log, const struct segment *seg, uint64_t offset,
			  uint64_t limit, uint64_t *pos, uint32_t *len, uint64_t *base)
{
	if (log->recent_seg != seg || log->recent_n == 0)
		return false;
	const struct recent_batch *r = log->recent;
	uint32_t first = log->recent_first, n = log->recent_n;
	if (offset < r[first].base)
		return false;
	/* The last entry whose base is <= offset. */
	uint32_t lo = 0, hi = n;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (r[(first + mid) % RECENT_BATCHES].base <= offset)
			lo = mid;
		else
			hi = mid;
	}
	uint64_t p = r[(first + lo) % RECENT_BATCHES].pos;
	uint64_t end = lo + 1 < n ? r[(first + lo + 1) % RECENT_BATCHES].pos : seg->end_pos;
	if (end > limit)
		return false; /* not all visible: the caller's limit rules */
	*pos = p;
	*len = (uint32_t)(end - p);
	*base = r[(first + lo) % RECENT_BATCHES].base;
	return true;
}

/* Finds the batch holding `offset` in seg, reading no further than limit. */
static int seg_locate(struct log *log, struct segment *seg, uint64_t offset, uint64_t limit,
		      uint64_t *pos, struct batch_hdr *h)
{
	uint32_t len;
	uint64_t base;
	if (recent_locate(log, seg, offset, limit, pos, &len, &base)) {
		h->length = len; /* all log_read needs from the header */
		h->base_offset = base;
		return 0;
	}
	int ret = seg_load_index(log, seg);
	if (ret != 0)
		return ret;
	struct seg_reader r = {
		.fd = seg->fd,
		.end = limit,
		.pos = seg_idx_lookup(seg, offset),
		.readahead = 4096, /* about one index interval of headers */
	};
	while ((ret = seg_reader_next_header(&r, h)) == 1) {
		if (batch_last_offset(h) >= offset)
			break;
	}
	seg_reader_free(&r);
	if (ret != 1)
		return ret == 0 || ret == -ENODATA ? -EBADMSG : ret;
	if (h->base_offset > offset)
		return -EBADMSG; /* the index pointed past it */
	*pos = r.pos - h->length;
	return 0;
}

int log_read(struct log *log, uint64_t offset, uint32_t max_bytes, struct log_slice *slice)
{
	memset(slice, 0, sizeof(*slice));
	slice->fd = -1;
	slice->base_offset = offset;
	uint64_t vis = log_visible_end(log);
	if (offset < log->start || offset > vis)
		return -ERANGE;
	if (offset == vis)
		return 0;
	uint32_t i = seg_find(log, offset);
	struct segment *seg = log->segs[i];
	uint64_t limit = seg_visible_pos(log, i, vis);
	uint64_t pos;
	struct batch_hdr h;
	int ret = seg_locate(log, seg, offset, limit, &pos, &h);
	if (ret == -EBADMSG && seg->state == SEG_CLOSED) {
		/* Perhaps the index, not the data: rebuild it and look again. */
		if (seg_rebuild_index(log, seg) == 0)
			ret = seg_locate(log, seg, offset, limit, &pos, &h);
	}
	if (ret != 0)
		return ret;
	uint64_t len = max_bytes < h.length ? h.length : max_bytes;
	if (len > limit - pos)
		len = limit - pos;
	slice->fd = seg->fd;
	slice->pos = pos;
	slice->len = (uint32_t)len;
	slice->base_offset = h.base_offset;
	slice->seg = seg;
	seg->refs++;
	return 0;
}

void log_slice_release(struct log *log, struct log_slice *slice)
{
	(void)log;
	if (slice->seg != NULL)
		seg_unref(slice->seg);
	slice->seg = NULL;
	slice->fd = -1;
}

ssize_t log_read_copy(struct log *log, uint64_t offset, void *buf, uint32_t cap,
		      uint64_t *base_offset)
{
	struct log_slice s;
	int ret = log_read(log, offset, cap, &s);
	if (ret != 0)
		return ret;
	*base_offset = s.base_offset;
	if (s.len > cap) {
		log_slice_release(log, &s);
		return -ENOSPC;
	}
	size_t got = 0;
	while (got < s.len) {
		ssize_t n = pread(s.fd, (uint8_t *)buf + got, s.len - got, (off_t)(s.pos + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ret = n < 0 ? -errno : -EIO;
			break;
		}
		got += (size_t)n;
	}
	log_slice_release(log, &s);
	return ret != 0 ? ret : (ssize_t)got;
}

/* First record of a verified batch with timestamp >= ts and offset below
 * limit_off. Returns 1 with *offset, 0 if none, -EBADMSG or -ENOMEM. */
static int batch_time_find(const uint8_t *data, const struct batch_hdr *h, void **scratch,
			   uint64_t limit_off, int64_t ts, uint64_t *offset)
{
	void *ns = realloc(*scratch, h->records_size);
	if (ns == NULL)
		return -ENOMEM;
	*scratch = ns;
	struct batch_iter it;
	struct batch_record rec;
	int ret = batch_iter_init(&it, data, ns, h->records_size);
	if (ret != 0)
		return -EBADMSG;
	while ((ret = batch_iter_next(&it, &rec)) == 1) {
		if (rec.offset >= limit_off)
			return 0;
		if (rec.timestamp >= ts) {
			*offset = rec.offset;
			return 1;
		}
	}
	return ret;
}

/* First record at or after position `from` in seg with timestamp >= ts,
 * below the visible limits. Returns 1 with *offset, 0 if none, or -errno. */
static int seg_time_scan(struct segment *seg, uint64_t from, uint64_t limit_pos,
			 uint64_t limit_off, int64_t ts, uint64_t *offset)
{
	struct seg_reader r = { .fd = seg->fd, .end = limit_pos, .pos = from };
	struct batch_hdr h;
	const uint8_t *data;
	void *scratch = NULL;
	int ret;
	while ((ret = seg_reader_next(&r, &h, &data)) == 1) {
		if (h.base_offset >= limit_off) {
			ret = 0;
			break;
		}
		if (h.max_timestamp < ts)
			continue;
		ret = batch_time_find(data, &h, &scratch, limit_off, ts, offset);
		if (ret != 0)
			break;
	}
	seg_reader_free(&r);
	free(scratch);
	return ret == -ENODATA ? -EBADMSG : ret;
}

int log_offset_for_time(struct log *log, int64_t ts_ms, uint64_t *offset)
{
	uint64_t vis = log_visible_end(log);
	*offset = vis;
	for (uint32_t i = 0; i < log->nsegs && log->segs[i]->base < vis; i++) {
		struct segment *seg = log->segs[i];
		int ret = seg_load_index(log, seg);
		if (ret != 0)
			return ret;
		if (!seg->max_ts_known || seg->max_ts < ts_ms)
			continue;
		/* The last time entry below ts: everything up to its batch is
		 * older, so the answer lies at or after that batch. */
		uint64_t from_off = seg->base;
		for (uint32_t lo = 0, hi = seg->tix_n; lo < hi;) {
			uint32_t mid = lo + (hi - lo) / 2;
			if (seg->tix[mid].timestamp < ts_ms) {
				from_off = seg->base + seg->tix[mid].rel_offset;
				lo = mid + 1;
			} else {
				hi = mid;
			}
		}
		uint64_t limit = seg_visible_pos(log, i, vis);
		ret = seg_time_scan(seg, seg_idx_lookup(seg, from_off), limit, vis, ts_ms, offset);
		if (ret < 0)
			return ret;
		if (ret == 1)
			return 0;
		*offset = vis; /* none here after all (max_ts may overstate): go on */
	}
	return 0;
}

/* ---- the tail, newest first (start-up) ---- */

/* Steps of the tail walk start this far back and double up to the max, so
 * a caller that has seen enough after the newest few batches stops after
 * one small read, and a long walk still takes few reads. Reads and the
 * header array stay below glibc's 128 KiB mmap and trim thresholds: buffers
 * mapped and unmapped per partition (TLB flushes) cost more than the reads. */
#define TAIL_STEP_FIRST (16u << 10)
#define TAIL_STEP_MAX (64u << 10)
#define TAIL_READ_MAX (64u << 10)

/* The last index entry at or before file position `pos`. */
static uint32_t seg_idx_at_pos(const struct segment *seg, uint64_t pos)
{
	uint32_t lo = 0, hi = seg->idx_n;
	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (seg->idx[mid].pos <= pos)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* Reads the headers of the batches in [from, to) of seg into *hs; the first
 * must hold offset `base` and the last must end at offset `end_off`.
 * `entries`: index entries in the range, to tell small batches from large. */
static int tail_step(struct seg_reader *r, const struct segment *seg, uint64_t from, uint64_t to,
		     uint64_t base, uint64_t end_off, uint32_t entries, uint32_t interval,
		     struct batch_hdr **hs, uint32_t *n, uint32_t *cap)
{
	/* Entries are at least an index interval apart, one per batch when
	 * batches are larger. Small batches: one read brings every header of
	 * the step. Large ones: a page per header, not a copy of its body. */
	uint64_t span = to - from;
	bool large = entries > 0 && span / entries > 2u * (uint64_t)interval;
	r->fd = seg->fd;
	r->end = to;
	r->pos = from;
	r->buf_len = 0; /* the window may hold another segment's bytes */
	r->readahead = large ? 4096 : span < TAIL_READ_MAX ? (size_t)span : TAIL_READ_MAX;
	struct batch_hdr h;
	uint64_t expect = base;
	int ret;
	*n = 0;
	while ((ret = seg_reader_next_header(r, &h)) == 1) {
		if (h.base_offset != expect) {
			ret = -EBADMSG;
			break;
		}
		expect = h.base_offset + h.record_count;
		if (*n == *cap) {
			uint32_t ncap = *cap ? *cap * 2 : 64;
			struct batch_hdr *nh = realloc(*hs, ncap * sizeof(*nh));
			if (nh == NULL) {
				ret = -ENOMEM;
				break;
			}
			*hs = nh;
			*cap = ncap;
		}
		(*hs)[(*n)++] = h;
	}
	if (ret == 0 && (r->pos != to || expect != end_off))
		ret = -EBADMSG; /* a zero header, or a batch missing before `to` */
	return ret == -ENODATA ? -EBADMSG : ret;
}

int log_scan_tail(struct log *log, uint64_t max_bytes,
		  int (*fn)(void *arg, const struct batch_hdr *h), void *arg)
{
	if (log->end != log->written_end)
		return -EBUSY;
	/* One reader and one header array for the whole walk: buffers
	 * allocated and freed per step cost more than the reads. */
	struct seg_reader r;
	memset(&r, 0, sizeof(r));
	struct batch_hdr *hs = NULL;
	uint32_t n = 0, cap = 0;
	uint64_t walked = 0, step = TAIL_STEP_FIRST;
	int ret = 0;
	bool stop = false;
	for (uint32_t i = log->nsegs; i-- > 0 && !stop && ret == 0 && walked < max_bytes;) {
		struct segment *seg = log->segs[i];
		if (seg->fd < 0 || seg->written_pos == 0)
			continue; /* not created yet, or empty */
		ret = seg_load_index(log, seg);
		uint64_t cursor = seg->written_pos, end_off = seg->end_offset;
		uint32_t upto = seg->idx_n; /* entries below the cursor */
		while (ret == 0 && !stop && cursor > 0 && walked < max_bytes) {
			uint64_t back = max_bytes - walked < step ? max_bytes - walked : step;
			uint64_t want = cursor > back ? cursor - back : 0;
			uint64_t from = 0, base = seg->base;
			uint32_t k = 0;
			if (seg->idx_n > 0) {
				k = seg_idx_at_pos(seg, want);
				from = seg->idx[k].pos;
				base = seg->base + seg->idx[k].rel_offset;
			}
			ret = tail_step(&r, seg, from, cursor, base, end_off, upto - k,
					log->cfg.index_interval_bytes, &hs, &n, &cap);
			for (uint32_t b = n; ret == 0 && b-- > 0;) {
				if (fn(arg, &hs[b]) != 0) {
					stop = true;
					break;
				}
			}
			walked += cursor - from;
			cursor = from;
			end_off = base;
			upto = k;
			if (step < TAIL_STEP_MAX)
				step *= 2;
		}
	}
	seg_reader_free(&r);
	free(hs);
	return ret;
}
