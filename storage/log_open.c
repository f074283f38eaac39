/* log_open.c — opening a partition log (recovery of the active segment's
 * tail) and closing it. Both block; they run at start-up and shutdown. */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/say.h"
#include "storage/log_impl.h"

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Reads a whole small file. Returns bytes read, or -errno. *out is malloc'd. */
static ssize_t read_small_file(int dirfd, const char *name, uint8_t **out, bool *missing)
{
	*out = NULL;
	*missing = false;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		*missing = errno == ENOENT;
		return *missing ? 0 : -errno;
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	size_t size = (size_t)st.st_size;
	uint8_t *buf = malloc(size ? size : 1);
	if (buf == NULL) {
		close(fd);
		return -ENOMEM;
	}
	size_t got = 0;
	while (got < size) {
		ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	*out = buf;
	return (ssize_t)got;
}

/* Loads a segment's index files into memory, keeping the longest prefix of
 * entries that is ordered and inside the data. Returns true if the files
 * were present and fully valid. */
bool seg_read_index_files(struct log *log, struct segment *seg, uint64_t data_end)
{
	uint8_t *buf;
	bool missing, clean = true;
	ssize_t n = read_small_file(log->dirfd, seg->name_idx, &buf, &missing);
	if (n < 0 || missing)
		clean = false;
	uint32_t count = n > 0 ? (uint32_t)((size_t)n / IDX_ENTRY_SIZE) : 0;
	if (n > 0 && (size_t)n % IDX_ENTRY_SIZE != 0)
		clean = false;
	seg->idx_n = 0;
	if (count > 0) {
		seg->idx = realloc(seg->idx, count * sizeof(*seg->idx));
		if (seg->idx == NULL)
			count = 0;
		seg->idx_cap = count;
	}
	for (uint32_t i = 0; i < count; i++) {
		struct idx_entry e;
		idx_decode(buf + (size_t)i * IDX_ENTRY_SIZE, &e);
		bool ok = e.pos < data_end &&
			  (i == 0 ? e.rel_offset == 0 && e.pos == 0
				  : e.rel_offset > seg->idx[i - 1].rel_offset &&
					    e.pos > seg->idx[i - 1].pos);
		if (!ok) {
			clean = false;
			break;
		}
		seg->idx[seg->idx_n++] = e;
	}
	free(buf);

	n = read_small_file(log->dirfd, seg->name_tix, &buf, &missing);
	if (n < 0 || missing)
		clean = false;
	count = n > 0 ? (uint32_t)((size_t)n / TIX_ENTRY_SIZE) : 0;
	if (n > 0 && (size_t)n % TIX_ENTRY_SIZE != 0)
		clean = false;
	seg->tix_n = 0;
	if (count > 0) {
		seg->tix = realloc(seg->tix, count * sizeof(*seg->tix));
		if (seg->tix == NULL)
			count = 0;
		seg->tix_cap = count;
	}
	uint32_t last_rel = seg->idx_n ? seg->idx[seg->idx_n - 1].rel_offset : 0;
	for (uint32_t i = 0; i < count; i++) {
		struct tix_entry e;
		tix_decode(buf + (size_t)i * TIX_ENTRY_SIZE, &e);
		bool ok = e.rel_offset <= last_rel &&
			  (i == 0 || (e.timestamp > seg->tix[i - 1].timestamp &&
				      e.rel_offset >= seg->tix[i - 1].rel_offset));
		if (!ok) {
			clean = false;
			break;
		}
		seg->tix[seg->tix_n++] = e;
	}
	free(buf);
	if (seg->tix_n > 0) {
		seg->max_ts = seg->tix[seg->tix_n - 1].timestamp;
		seg->max_ts_known = true;
		seg->last_tix_ts = seg->max_ts;
	}
	return clean;
}

/* Writes index entries [from, n) and cuts the file after them. */
static int rewrite_index(int fd, const struct segment *seg, bool tix, uint32_t from)
{
	uint32_t n = tix ? seg->tix_n : seg->idx_n;
	size_t esz = tix ? TIX_ENTRY_SIZE : IDX_ENTRY_SIZE;
	if (from < n) {
		size_t len = (size_t)(n - from) * esz;
		uint8_t *buf = malloc(len);
		if (buf == NULL)
			return -ENOMEM;
		for (uint32_t i = from; i < n; i++) {
			if (tix)
				tix_encode(buf + (i - from) * esz, &seg->tix[i]);
			else
				idx_encode(buf + (i - from) * esz, &seg->idx[i]);
		}
		ssize_t w = pwrite(fd, buf, len, (off_t)from * (off_t)esz);
		free(buf);
		if (w != (ssize_t)len)
			return w < 0 ? -errno : -EIO;
	}
	if (ftruncate(fd, (off_t)n * (off_t)esz) != 0)
		return -errno;
	return 0;
}

/* True if the batch at pos is whole, valid and holds base offset `base`. */
static bool batch_ok_at(int fd, uint64_t file_size, uint64_t pos, uint64_t base)
{
	struct seg_reader r;
	if (seg_reader_init(&r, fd, pos) != 0)
		return false;
	r.end = file_size;
	r.readahead = LOOKUP_READ_AHEAD;
	struct batch_hdr h;
	const uint8_t *data;
	bool ok = seg_reader_next(&r, &h, &data) == 1 && h.base_offset == base;
	seg_reader_free(&r);
	return ok;
}

/* How far non-zero bytes reach past `from`, for reporting a cut. Holes
 * (punched, or preallocated and never written) read as zeros and are
 * skipped, so the common all-zero tail costs no reads. */
static uint64_t nonzero_extent(int fd, uint64_t from, uint64_t file_size)
{
	uint8_t *buf = malloc(64 << 10);
	uint64_t last = from;
	for (uint64_t pos = from; buf != NULL && pos < file_size;) {
		off_t data = lseek(fd, (off_t)pos, SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break;
		off_t hole = data < 0 ? -1 : lseek(fd, data, SEEK_HOLE);
		uint64_t stop = hole < 0 || (uint64_t)hole > file_size ? file_size : (uint64_t)hole;
		for (pos = data < 0 ? pos : (uint64_t)data; pos < stop;) {
			size_t want = stop - pos < (64 << 10) ? (size_t)(stop - pos) : (64 << 10);
			ssize_t n = pread(fd, buf, want, (off_t)pos);
			if (n <= 0) {
				pos = file_size;
				break;
			}
			for (ssize_t i = n; i-- > 0;) {
				if (buf[i] != 0) {
					last = pos + (uint64_t)i + 1;
					break;
				}
			}
			pos += (uint64_t)n;
		}
	}
	free(buf);
	return last - from;
}

static const char *stop_reason(int ret)
{
	switch (ret) {
	case -ENODATA:
		return "torn batch (runs past the end of the file)";
	case -EBADMSG:
		return "corrupt batch (bad header or checksum)";
	case -ERANGE:
		return "batch out of sequence (wrong base offset)";
	default:
		return "unreadable batch";
	}
}

/* Recovers the last segment: from its last valid index entry, verify batches
 * until the first that is not whole and valid; cut there (S3). */
static int seg_recover(struct log *log, struct segment *seg, bool index_missing,
		       struct log_recovery *rep)
{
	struct stat st;
	if (fstat(seg->fd, &st) != 0)
		return -errno;
	seg->file_size = (uint64_t)st.st_size;

	bool clean_index = seg_read_index_files(log, seg, seg->file_size) && !index_missing;
	/* Walk back from the last entry to one that points at a valid batch:
	 * entries can run ahead of the data after a crash (S3). */
	while (seg->idx_n > 0) {
		const struct idx_entry *e = &seg->idx[seg->idx_n - 1];
		if (batch_ok_at(seg->fd, seg->file_size, e->pos, seg->base + e->rel_offset))
			break;
		seg->idx_n--;
		clean_index = false;
	}
	/* Restart from that entry E: keep the entries up to it, and the time
	 * entries up to E's batch; the scan derives the rest by the append
	 * rule (seg_index_batch). */
	uint64_t pos = 0, expect = seg->base;
	if (seg->idx_n > 0) {
		const struct idx_entry *e = &seg->idx[seg->idx_n - 1];
		pos = e->pos;
		expect = seg->base + e->rel_offset;
		seg->last_index_pos = pos;
		while (seg->tix_n > 0 && seg->tix[seg->tix_n - 1].rel_offset > e->rel_offset)
			seg->tix_n--;
	} else {
		seg->tix_n = 0;
	}
	seg->last_tix_ts = seg->tix_n ? seg->tix[seg->tix_n - 1].timestamp : INT64_MIN;
	seg->max_ts = seg->last_tix_ts;
	seg->max_ts_known = seg->tix_n > 0;
	uint32_t idx_keep = seg->idx_n, tix_keep = seg->tix_n;

	struct seg_reader r;
	int ret = seg_reader_init(&r, seg->fd, pos);
	if (ret != 0)
		return ret;
	struct batch_hdr h;
	const uint8_t *data;
	uint64_t scan_from = pos;
	while ((ret = seg_reader_next(&r, &h, &data)) == 1) {
		/* Index entries hold 32-bit relative offsets and appends roll
		 * long before a segment needs more, so a batch past that is
		 * not this log's: cut, or the index would wrap. */
		if (h.base_offset != expect || h.base_offset - seg->base > UINT32_MAX) {
			r.pos -= h.length;
			ret = -ERANGE;
			break;
		}
		ret = seg_index_batch(seg, &h, r.pos - h.length, log->cfg.index_interval_bytes);
		if (ret != 0)
			break;
		expect = h.base_offset + h.record_count;
	}
	uint64_t end = r.pos;
	seg_reader_free(&r);
	if (ret == -EIO || ret == -ENOMEM)
		return ret;

	rep->scanned_bytes += end - scan_from;
	/* A zero header ends the scan like the end of the file, but writes in
	 * flight reach the disk in any order: data may follow it, and the punch
	 * below discards it. Report that like any other cut. */
	uint64_t stray = nonzero_extent(seg->fd, end, seg->file_size);
	if (ret != 0 || stray > 0) {
		rep->truncated_at = end;
		rep->truncated_bytes = stray;
		rep->truncated_why = ret != 0 ? stop_reason(ret)
					      : "data after unwritten space (lost writes)";
		say_warn("log %s: %s: cut %" PRIu64 " bytes at position %" PRIu64
			 ": %s; the log ends at offset %" PRIu64,
			 log->dir, seg->name_log, rep->truncated_bytes, end, rep->truncated_why,
			 expect);
	}
	if (!clean_index && seg->base != expect)
		rep->index_rebuilt = true;

	/* (S3): nothing past the end may survive to be read after later
	 * appends. Only the non-zero bytes need to go (the rest reads as zeros
	 * already); punching is a metadata operation, and the preallocation it
	 * removes is then restored so fdatasyncs stay cheap. */
	if (stray > 0) {
		if (fallocate(seg->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)end,
			      (off_t)stray) != 0) {
			if (ftruncate(seg->fd, (off_t)end) != 0)
				return -errno;
			seg->file_size = end;
		}
	}
	uint64_t want = log->cfg.preallocate ? log->cfg.segment_bytes : 0;
	if (end < want && fallocate(seg->fd, 0, 0, (off_t)want) == 0 && seg->file_size < want)
		seg->file_size = want;

	/* The file keeps only the entries that were already there. The scan's
	 * entries cover batches that may exist only in the page cache (after a
	 * kill -9): the index writer writes them once the start-up fdatasync
	 * has made those batches durable, so an entry never outlives its data. */
	if (ftruncate(seg->idx_fd, (off_t)idx_keep * IDX_ENTRY_SIZE) != 0 ||
	    ftruncate(seg->tix_fd, (off_t)tix_keep * TIX_ENTRY_SIZE) != 0)
		return -errno;
	seg->idx_written = idx_keep;
	seg->tix_written = tix_keep;
	seg->idx_loaded = true;

	seg->end_pos = seg->submitted_pos = seg->written_pos = end;
	seg->synced_pos = 0; /* unknown: log_open asks for an fdatasync */
	seg->end_offset = expect;
	struct statx stx;
	seg->created_ms = log_wall_ms();
	if (statx(seg->fd, "", AT_EMPTY_PATH, STATX_BTIME, &stx) == 0 &&
	    (stx.stx_mask & STATX_BTIME))
		seg->created_ms = (int64_t)stx.stx_btime.tv_sec * 1000 + stx.stx_btime.tv_nsec / 1000000;
	return 0;
}

static int open_closed_segment(struct log *log, struct segment *seg)
{
	seg->fd = openat(log->dirfd, seg->name_log, O_RDONLY | O_CLOEXEC);
	if (seg->fd < 0)
		return -errno;
	struct stat st;
	if (fstat(seg->fd, &st) != 0)
		return -errno;
	seg->state = SEG_CLOSED;
	seg->file_size = seg->end_pos = seg->submitted_pos = seg->written_pos = seg->synced_pos =
		(uint64_t)st.st_size;
	/* The segment's newest timestamp, for retention, from the last time
	 * index entry (one small read); the file time if that is missing. */
	int fd = openat(log->dirfd, seg->name_tix, O_RDONLY | O_CLOEXEC);
	struct stat tst;
	if (fd >= 0 && fstat(fd, &tst) == 0 && tst.st_size >= (off_t)TIX_ENTRY_SIZE) {
		uint8_t b[TIX_ENTRY_SIZE];
		off_t at = (tst.st_size / TIX_ENTRY_SIZE - 1) * TIX_ENTRY_SIZE;
		if (pread(fd, b, sizeof(b), at) == (ssize_t)sizeof(b)) {
			struct tix_entry e;
			tix_decode(b, &e);
			seg->max_ts = e.timestamp;
			seg->max_ts_known = true;
		}
	}
	if (fd >= 0)
		close(fd);
	if (!seg->max_ts_known) {
		seg->max_ts = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
		seg->max_ts_known = true;
	}
	return 0;
}

/* *index_missing: an index file was not there (and is created empty now), so
 * recovery reports the index rebuilt rather than mistaking it for a clean one. */
static int open_active_files(struct log *log, struct segment *seg, bool create,
			     bool *index_missing)
{
	int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0);
	*index_missing = faccessat(log->dirfd, seg->name_idx, F_OK, 0) != 0 ||
			 faccessat(log->dirfd, seg->name_tix, F_OK, 0) != 0;
	seg->fd = openat(log->dirfd, seg->name_log, flags, 0644);
	if (seg->fd < 0)
		return -errno;
	seg->idx_fd = openat(log->dirfd, seg->name_idx, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (seg->idx_fd < 0)
		return -errno;
	seg->tix_fd = openat(log->dirfd, seg->name_tix, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (seg->tix_fd < 0)
		return -errno;
	if (create && fsync(log->dirfd) != 0)
		return -errno;
	return 0;
}

/* Lists segment base offsets; removes index files whose log is gone (left
 * by a crash in the middle of a retention delete). */
static int list_segments(struct log *log, uint64_t **bases, uint32_t *count)
{
	DIR *d = fdopendir(dup(log->dirfd));
	if (d == NULL)
		return -errno;
	uint64_t *logs = NULL, *orphans = NULL;
	uint32_t n = 0, cap = 0, no = 0, ocap = 0;
	int ret = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t base;
		const char *ext;
		if (de->d_name[0] == '.' || seg_parse_name(de->d_name, &base, &ext) != 0)
			continue;
		uint64_t **arr = strcmp(ext, ".log") == 0 ? &logs : &orphans;
		uint32_t *an = arr == &logs ? &n : &no, *acap = arr == &logs ? &cap : &ocap;
		if (*an == *acap) {
			*acap = *acap ? *acap * 2 : 16;
			uint64_t *na = realloc(*arr, *acap * sizeof(**arr));
			if (na == NULL) {
				ret = -ENOMEM;
				break;
			}
			*arr = na;
		}
		(*arr)[(*an)++] = base;
	}
	closedir(d);
	if (ret == 0 && n > 0)
		qsort(logs, n, sizeof(*logs), cmp_u64);
	for (uint32_t i = 0; ret == 0 && i < no; i++) {
		if (n > 0 && bsearch(&orphans[i], logs, n, sizeof(*logs), cmp_u64))
			continue;
		char name[SEG_NAME_MAX];
		for (int k = 0; k < 2; k++) {
			seg_name(name, orphans[i], k ? ".tix" : ".idx");
			if (unlinkat(log->dirfd, name, 0) == 0)
				say_info("log %s: removed %s, whose segment is gone", log->dir, name);
		}
	}
	free(orphans);
	*bases = logs;
	*count = n;
	return ret;
}

int log_open(struct log_env *env, const char *dir, const struct log_config *cfg,
	     struct log **out, struct log_recovery *report)
{
	struct log_recovery rep_local;
	struct log_recovery *rep = report ? report : &rep_local;
	memset(rep, 0, sizeof(*rep));
	const char *why;
	if (log_config_check(cfg, &why) != 0)
		return -EINVAL;

	struct log *log = calloc(1, sizeof(*log));
	if (log == NULL)
		return -ENOMEM;
	log->env = env;
	log->cfg = *cfg;
	log->dirfd = -1;
	log->last_sync_ms = log_wall_ms();
	log->dir = strdup(dir);
	int ret = -ENOMEM;
	if (log->dir == NULL)
		goto err_free_log;
	log->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (log->dirfd < 0) {
		ret = -errno;
		goto err_free_log;
	}

	uint64_t *bases = NULL;
	uint32_t count = 0;
	ret = list_segments(log, &bases, &count);
	if (ret != 0)
		goto err_free_log;
	bool fresh = count == 0;
	if (!fresh && bases[count - 1] >= BATCH_OFFSET_LIMIT) {
		say_error("log %s: segment base offset %" PRIu64 " is past the offset limit", dir,
			  bases[count - 1]);
		ret = -EINVAL;
		goto err_free_bases;
	}
	for (uint32_t i = 0; i < (fresh ? 1 : count); i++) {
		struct segment *seg = seg_new(log, fresh ? 0 : bases[i]);
		if (seg == NULL || segs_push(log, seg) != 0) {
			free(seg);
			ret = -ENOMEM;
			goto err_free_bases;
		}
	}
	free(bases);
	bases = NULL;
	rep->segments = log->nsegs;

	for (uint32_t i = 0; i + 1 < log->nsegs; i++) {
		struct segment *seg = log->segs[i];
		ret = open_closed_segment(log, seg);
		if (ret != 0) {
			say_error("log %s: cannot open %s: %s", dir, seg->name_log, strerror(-ret));
			goto err_free_bases;
		}
		seg->end_offset = log->segs[i + 1]->base;
	}
	struct segment *last = log->segs[log->nsegs - 1];
	last->io = calloc(1, sizeof(*last->io));
	if (last->io == NULL) {
		ret = -ENOMEM;
		goto err_free_bases;
	}
	bool index_missing;
	ret = open_active_files(log, last, fresh, &index_missing);
	if (ret == 0)
		ret = seg_recover(log, last, index_missing, rep);
	if (ret != 0) {
		say_error("log %s: cannot recover %s: %s", dir, last->name_log, strerror(-ret));
		goto err_free_bases;
	}
	last->state = SEG_ACTIVE;

	log->start = log->segs[0]->base;
	log->end = log->written_end = last->end_offset;
	/* Only the last segment may hold data that never reached stable
	 * storage (a kill -9 leaves it in the page cache): it becomes durable,
	 * and visible on flush-always logs, after the first fdatasync. */
	log->durable_end = last->end_pos > 0 ? last->base : log->end;
	last->synced_pos = last->end_pos > 0 ? 0 : last->end_pos;
	/* The first log_tick (or wait) on the env's thread starts it. */
	log->sync_wanted = log->durable_end < log->written_end;
	env->logs++;
	*out = log;
	return 0;

err_free_bases:
	free(bases);
	for (uint32_t i = 0; i < log->nsegs; i++)
		seg_free(log->segs[i]);
	free(log->segs);
err_free_log:
	if (log->dirfd >= 0)
		close(log->dirfd);
	free(log->dir);
	free(log);
	return ret;
}

int log_close(struct log *log)
{
	struct log_env *env = log->env;
	/* Finish what is staged and any roll underway. */
	for (;;) {
		log_env_flush(env);
		bool transitioning = false;
		for (uint32_t i = 0; i < log->nsegs; i++) {
			enum seg_state st = log->segs[i]->state;
			if (st == SEG_PENDING || st == SEG_CREATING || st == SEG_SEALING)
				transitioning = true;
		}
		bool staged = false;
		for (struct chunk *c = log->chunk_head; c != NULL; c = c->next)
			if (c->written != c->fill)
				staged = true;
		if (log->ops_inflight == 0 && (log->failed || (!transitioning && !staged)))
			break;
		if (log->ops_inflight == 0)
			continue; /* work became possible: flush submits it */
		int ret = ioq_wait(env->q, -1);
		if (ret < 0 && ret != -EINTR)
			break;
	}
	int ret = log->failed;
	struct segment *last = log->segs[log->nsegs - 1];
	if (ret == 0 && last->state == SEG_ACTIVE) {
		/* Everything synced, the data before the index entries that
		 * cover it, and the index files complete. */
		if (fdatasync(last->fd) != 0) {
			ret = -errno;
		} else {
			if (!last->index_broken) {
				int r1 = rewrite_index(last->idx_fd, last, false,
						       last->idx_written);
				int r2 = rewrite_index(last->tix_fd, last, true, last->tix_written);
				if (r1 || r2)
					say_warn("log %s: cannot write index on close; open "
						 "rebuilds it", log->dir);
			}
			if (fdatasync(last->idx_fd) != 0 || fdatasync(last->tix_fd) != 0)
				ret = -errno;
		}
		if (ret == 0 && log->durable_end < log->written_end)
			log_set_watermarks(log, log->written_end, log->written_end);
	}
	/* Waiters left now can never be satisfied. */
	log_drop_waiters(log, ret ? ret : -ESHUTDOWN);
	for (struct chunk *c = log->chunk_head, *n; c != NULL; c = n) {
		n = c->next;
		env->staged -= c->fill - c->written;
		free(c);
	}
	if (log->in_dirty_list) {
		for (struct log **p = &env->dirty; *p; p = &(*p)->next_dirty) {
			if (*p == log) {
				*p = log->next_dirty;
				break;
			}
		}
	}
	for (uint32_t i = 0; i < log->nsegs; i++) {
		assert(log->segs[i]->refs == 1); /* every slice released */
		seg_unref(log->segs[i]);
	}
	free(log->segs);
	free(log->recent);
	close(log->dirfd);
	free(log->dir);
	env->logs--;
	free(log);
	return ret;
}
