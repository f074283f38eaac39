/* fuzz_recovery.c — fuzz target for log recovery and the segment scanner:
 * the input becomes a segment's files, which log_open() must recover to
 * exactly what a simple model of the recovery rules predicts.
 *
 * Input layout: inputs under 3 bytes are 00000000000000000000.log alone.
 * Otherwise
 *   byte 0       flags (FL_*)
 *   byte 1       bytes of .idx file that follow
 *   byte 2       bytes of .tix file that follow
 *   then the .idx bytes, the .tix bytes, and the rest is the .log file.
 * Each index file is written only if its flag is set. With FL_TWO_SEGS the
 * .log part starts with a little-endian u16 that splits the rest into a
 * closed segment 0 (no index files: reads rebuild them) and the active
 * segment, based at the offset after segment 0's batches; the index files
 * belong to the active segment.
 *
 * The model: restart at the last index entry that is ordered, inside the
 * data and points at a valid batch with its offset; from there take valid
 * batches with consecutive offsets; stop at the first that is not. It is a
 * cut unless only zeros follow. Then:
 * the log ends there, reads of every kept batch return the file's bytes,
 * nothing past the end is left to read, and an append after recovery
 * survives a clean close and reopen. Closed segments are not verified at
 * open; reads there must return the bytes if the segment is whole, and
 * otherwise fail cleanly.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/endian.h"
#include "common/ioq.h"
#include "common/say.h"
#include "storage/batch.h"
#include "storage/log.h"
#include "storage/segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                     \
	do {                            \
		if (!(cond))            \
			abort();        \
	} while (0)

enum {
	FL_IDX = 1 << 0,       /* write the .idx file */
	FL_TIX = 1 << 1,       /* write the .tix file */
	FL_APPEND = 1 << 2,    /* append after recovery, close, reopen */
	FL_LZ4 = 1 << 3,       /* ... an lz4 batch */
	FL_SHORT_END = 1 << 4, /* also scan with a lowered reader end */
	FL_TWO_SEGS = 1 << 5,  /* a closed segment before the active one */
	FL_GAP = 1 << 6,       /* ... with offsets missing between the two */
};

/* Batches checked one by one per input; a bound on the run time. */
#define MODEL_BATCHES_MAX 256

struct seg_files {
	const uint8_t *log, *idx, *tix; /* the active segment's files */
	size_t log_len, idx_len, tix_len;
	uint64_t base;                  /* the active segment's base offset */
	const uint8_t *closed;          /* segment 0 when there are two; else NULL */
	size_t closed_len;
	bool closed_whole;              /* its batches chain to a clean end */
	bool closed_valid;              /* ... and all verify and check out */
	uint8_t flags;
};

/* One ring and env for the whole process: setting up io_uring per input
 * would cost more than the recovery under test. */
static struct ioq ring;
static struct log_env *env;

static void setup_once(void)
{
	if (env != NULL)
		return;
	say_set_level(SAY_ERROR); /* every cut is reported; that is noise here */
	CHECK(ioq_init(&ring, 64) == 0);
	env = log_env_new(&ring, 8u << 20);
	CHECK(env != NULL);
}

/* What seg_reader_next (verify) or seg_reader_next_header (!verify) returns
 * at pos in a file of n bytes, from first principles. */
static int model_next(const uint8_t *f, uint64_t n, uint64_t pos, bool verify,
		      struct batch_hdr *h)
{
	if (pos >= n)
		return 0;
	if (n - pos < BATCH_HEADER_SIZE) {
		for (uint64_t i = pos; i < n; i++)
			if (f[i] != 0)
				return -ENODATA;
		return 0;
	}
	if (batch_header_is_zero(f + pos))
		return 0;
	int ret = batch_parse(f + pos, BATCH_HEADER_SIZE, h);
	if (ret != 0)
		return ret;
	if (h->length > n - pos)
		return -ENODATA;
	if (verify && (ret = batch_verify(f + pos, h->length, h)) != 0)
		return ret;
	return 1;
}

/* True if the verified batch at p has well-formed records. */
static bool records_ok(const uint8_t *p, const struct batch_hdr *h)
{
	uint8_t *scratch = NULL;
	if (batch_compression(h) == BATCH_COMPRESSION_LZ4) {
		scratch = malloc(h->records_size);
		CHECK(scratch != NULL);
	}
	int ret = batch_check_records(p, h, scratch, h->records_size);
	free(scratch);
	return ret == 0;
}

/* Walks a closed segment's batch headers the way an index rebuild does. */
static void model_closed(struct seg_files *f)
{
	uint64_t pos = 0, off = 0;
	struct batch_hdr h;
	int ret;
	f->closed_valid = true;
	while ((ret = model_next(f->closed, f->closed_len, pos, false, &h)) == 1) {
		/* As in the active segment: no offset past 2^32 from the base. */
		if (h.base_offset != off || h.base_offset > UINT32_MAX) {
			ret = -ERANGE;
			break;
		}
		if (model_next(f->closed, f->closed_len, pos, true, &h) != 1 ||
		    !records_ok(f->closed + pos, &h))
			f->closed_valid = false;
		off += h.record_count;
		pos += h.length;
	}
	f->closed_whole = ret == 0;
	f->closed_valid = f->closed_valid && f->closed_whole;
	/* The active segment starts where the closed one ends, or where its
	 * first batch says, if that is later (a damaged closed segment ends
	 * early). Offsets stay far below 2^62, where appends must stop. */
	f->base = off + ((f->flags & FL_GAP) ? 5 : 0);
	if (f->log_len >= BATCH_HEADER_SIZE && batch_parse(f->log, f->log_len, &h) == 0 &&
	    h.base_offset > f->base && h.base_offset < (UINT64_C(1) << 40))
		f->base = h.base_offset;
	if (f->base == 0)
		f->base = 1; /* two segments cannot share a name */
}

static void split_input(const uint8_t *data, size_t size, struct seg_files *f)
{
	memset(f, 0, sizeof(*f));
	if (size < 3) {
		f->log = data;
		f->log_len = size;
		return;
	}
	f->flags = data[0];
	size_t pos = 3;
	f->idx_len = data[1] < size - pos ? data[1] : size - pos;
	f->idx = data + pos;
	pos += f->idx_len;
	f->tix_len = data[2] < size - pos ? data[2] : size - pos;
	f->tix = data + pos;
	pos += f->tix_len;
	if ((f->flags & FL_TWO_SEGS) && size - pos >= 2) {
		size_t split = le16_load(data + pos);
		pos += 2;
		if (split > size - pos)
			split = size - pos;
		f->closed = data + pos;
		f->closed_len = split;
		pos += split;
	}
	f->log = data + pos;
	f->log_len = size - pos;
	if (f->closed != NULL)
		model_closed(f);
}

static void write_file(const char *dir, uint64_t base, const char *ext, const uint8_t *p,
		       size_t len)
{
	char name[SEG_NAME_MAX], path[600];
	seg_name(name, base, ext);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0);
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		CHECK(n > 0);
		p += n;
		len -= (size_t)n;
	}
	close(fd);
}

static int open_log_fd(const char *dir, uint64_t base)
{
	char name[SEG_NAME_MAX], path[600];
	seg_name(name, base, ".log");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0);
	return fd;
}

static void remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	CHECK(d != NULL);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
	rmdir(dir);
}

struct model {
	uint64_t restart_pos, restart_off; /* where the recovery scan starts */
	uint64_t end_pos, end_off;
	bool restarted;                    /* from an index entry, not the start */
	bool cut;                          /* stopped at damage */
	uint64_t stray;                    /* non-zero bytes from the end on */
};

static void model_recover(const struct seg_files *f, struct model *m)
{
	memset(m, 0, sizeof(*m));
	struct idx_entry e[256 / IDX_ENTRY_SIZE];
	uint32_t n = 0;
	if (f->flags & FL_IDX) {
		for (size_t i = 0; i + IDX_ENTRY_SIZE <= f->idx_len; i += IDX_ENTRY_SIZE) {
			struct idx_entry x;
			idx_decode(f->idx + i, &x);
			bool ok;
			if (n == 0)
				ok = x.rel_offset == 0 && x.pos == 0;
			else
				ok = x.rel_offset > e[n - 1].rel_offset && x.pos > e[n - 1].pos;
			if (x.pos >= f->log_len || !ok)
				break;
			e[n++] = x;
		}
	}
	for (; n > 0; n--) {
		struct batch_hdr h;
		if (model_next(f->log, f->log_len, e[n - 1].pos, true, &h) == 1 &&
		    h.base_offset == f->base + e[n - 1].rel_offset)
			break;
	}
	m->restart_off = f->base;
	if (n > 0) {
		m->restarted = true;
		m->restart_pos = e[n - 1].pos;
		m->restart_off = f->base + e[n - 1].rel_offset;
	}
	uint64_t pos = m->restart_pos, off = m->restart_off;
	int ret;
	struct batch_hdr h;
	while ((ret = model_next(f->log, f->log_len, pos, true, &h)) == 1) {
		/* Index entries hold 32-bit relative offsets, and appends roll
		 * long before a segment needs more: a batch past that is not
		 * the log's. */
		if (h.base_offset != off || h.base_offset - f->base > UINT32_MAX) {
			ret = -ERANGE;
			break;
		}
		off += h.record_count;
		pos += h.length;
	}
	/* A zero header ends the scan, but data after it is writes that
	 * landed out of order: cut like any other damage. */
	uint64_t last = pos;
	for (uint64_t i = pos; i < f->log_len; i++)
		if (f->log[i] != 0)
			last = i + 1;
	m->cut = ret != 0 || last > pos;
	m->stray = last - pos;
	m->end_pos = pos;
	m->end_off = off;
}

static int reader_next(struct seg_reader *r, struct batch_hdr *h, const uint8_t **d, bool verify)
{
	return verify ? seg_reader_next(r, h, d) : seg_reader_next_header(r, h);
}

/* seg_reader against the model over [0, end) of the file. */
static void scan_compare(int fd, const uint8_t *f, uint64_t end, size_t readahead, bool verify)
{
	struct seg_reader r;
	CHECK(seg_reader_init(&r, fd, 0) == 0);
	CHECK(end <= r.end);
	r.end = end;
	r.readahead = readahead;
	uint64_t pos = 0;
	for (int i = 0; i < 4 * MODEL_BATCHES_MAX; i++) {
		struct batch_hdr h, mh;
		const uint8_t *d = NULL;
		int got = reader_next(&r, &h, &d, verify);
		int want = model_next(f, end, pos, verify, &mh);
		CHECK(got == want);
		if (got != 1) {
			CHECK(r.pos == pos);
			/* Nothing moves on a stop: asking again gives the same. */
			CHECK(reader_next(&r, &h, &d, verify) == got && r.pos == pos);
			break;
		}
		CHECK(h.length == mh.length && h.base_offset == mh.base_offset);
		CHECK(h.checksum == mh.checksum && h.record_count == mh.record_count);
		if (verify)
			CHECK(memcmp(d, f + pos, h.length) == 0);
		pos += h.length;
		CHECK(r.pos == pos);
	}
	seg_reader_free(&r);
}

/* Reading `off` must return the stored run from the batch at `pos` of file
 * f through `end_pos`, byte for byte. */
static void expect_read(struct log *log, uint64_t off, const uint8_t *f, uint64_t pos,
			uint64_t end_pos, uint64_t base, uint8_t *buf, uint32_t cap, bool verify)
{
	uint64_t got_base = UINT64_MAX;
	ssize_t n = log_read_copy(log, off, buf, cap, &got_base);
	CHECK(n >= 0);
	CHECK(got_base == base);
	CHECK((uint64_t)n == end_pos - pos);
	CHECK(memcmp(buf, f + pos, (size_t)n) == 0);
	struct batch_hdr h;
	CHECK((verify ? batch_verify(buf, (size_t)n, &h) : batch_parse(buf, (size_t)n, &h)) == 0);
	CHECK(h.base_offset <= off && off <= batch_last_offset(&h));
}

/* Reads off, where damage may be found: success with a batch holding
 * off, or -EBADMSG. */
static void maybe_read(struct log *log, uint64_t off, uint8_t *buf, uint32_t cap)
{
	uint64_t base = UINT64_MAX;
	ssize_t n = log_read_copy(log, off, buf, cap, &base);
	CHECK(n > 0 || n == -EBADMSG);
	if (n > 0) {
		struct batch_hdr h;
		CHECK(batch_parse(buf, (size_t)n, &h) == 0);
		CHECK(h.base_offset == base && base <= off && off <= batch_last_offset(&h));
	}
}

/* Reads every batch of [pos, end_pos) of file f, up to a zero header;
 * they must all be there. */
static void expect_batches(struct log *log, const uint8_t *f, uint64_t pos, uint64_t end_pos,
			   uint8_t *buf, uint32_t cap, bool verify)
{
	for (int i = 0; i < MODEL_BATCHES_MAX && pos < end_pos; i++) {
		struct batch_hdr h;
		int ret = model_next(f, end_pos, pos, verify, &h);
		if (ret == 0)
			break; /* a zero header: the written end of a closed segment */
		CHECK(ret == 1);
		uint64_t first = h.base_offset, last = batch_last_offset(&h);
		expect_read(log, first, f, pos, end_pos, first, buf, cap, verify);
		if (last != first)
			expect_read(log, last, f, pos, end_pos, first, buf, cap, verify);
		uint64_t mid = first + h.record_count / 2;
		if (mid != first && mid != last)
			expect_read(log, mid, f, pos, end_pos, first, buf, cap, verify);
		pos += h.length;
	}
}

/* First offset in file f's batches [pos, end_pos) with a timestamp >= ts.
 * Returns 1 with *out, 0 if none. */
static int model_time_in(const uint8_t *f, uint64_t pos, uint64_t end_pos, int64_t ts,
			 uint64_t *out)
{
	struct batch_hdr h;
	while (pos < end_pos && model_next(f, end_pos, pos, true, &h) == 1) {
		uint8_t *scratch = NULL;
		if (batch_compression(&h) == BATCH_COMPRESSION_LZ4) {
			scratch = malloc(h.records_size);
			CHECK(scratch != NULL);
		}
		struct batch_iter it;
		struct batch_record rec;
		CHECK(batch_iter_init(&it, f + pos, scratch, h.records_size) == 0);
		while (batch_iter_next(&it, &rec) == 1) {
			if (rec.timestamp >= ts) {
				*out = rec.offset;
				free(scratch);
				return 1;
			}
		}
		free(scratch);
		pos += h.length;
	}
	return 0;
}

/* True if every batch of the active segment has well-formed records. */
static bool active_records_ok(const struct seg_files *f, const struct model *m)
{
	uint64_t pos = m->restart_pos;
	struct batch_hdr h;
	while (pos < m->end_pos) {
		CHECK(model_next(f->log, m->end_pos, pos, true, &h) == 1);
		if (!records_ok(f->log + pos, &h))
			return false;
		pos += h.length;
	}
	return true;
}

static void check_time_lookups(struct log *log, const struct seg_files *f, const struct model *m)
{
	int64_t probes[7] = { INT64_MIN, INT64_MAX, 0, -1, 1, 1000, 1700000000000 };
	struct batch_hdr h;
	if (m->end_pos > 0 && model_next(f->log, m->end_pos, 0, true, &h) == 1) {
		probes[2] = h.first_timestamp;
		probes[3] = h.max_timestamp;
		probes[4] = h.max_timestamp == INT64_MAX ? INT64_MAX : h.max_timestamp + 1;
	}
	for (int i = 0; i < 7; i++) {
		uint64_t want = m->end_off, got;
		if (!(f->closed != NULL &&
		      model_time_in(f->closed, 0, f->closed_len, probes[i], &want) == 1))
			model_time_in(f->log, 0, m->end_pos, probes[i], &want);
		CHECK(log_offset_for_time(log, probes[i], &got) == 0);
		CHECK(got == want);
	}
}

static void check_recovered(struct log *log, const struct seg_files *f, const struct model *m,
			    const struct log_recovery *rep)
{
	uint32_t nsegs = f->closed ? 2 : 1;
	CHECK(log_start(log) == 0);
	CHECK(log_end(log) == m->end_off);
	CHECK(log_visible_end(log) == m->end_off); /* flush "never": written is visible */
	CHECK(log_size_bytes(log) == f->closed_len + m->end_pos);
	CHECK(log_segment_count(log) == nsegs);
	CHECK(rep->segments == nsegs);
	CHECK((rep->truncated_why != NULL) == m->cut);
	CHECK(rep->scanned_bytes == m->end_pos - m->restart_pos);
	if (m->cut) {
		CHECK(rep->truncated_at == m->end_pos);
		CHECK(rep->truncated_bytes == m->stray);
	}

	uint32_t cap = (uint32_t)(f->closed_len + f->log_len) + BATCH_HEADER_SIZE;
	uint8_t *buf = malloc(cap);
	CHECK(buf != NULL);
	/* Every batch from the restart point reads back as stored. */
	expect_batches(log, f->log, m->restart_pos, m->end_pos, buf, cap, true);
	/* Before the restart point the index was trusted unchecked: a read
	 * there may find damage, but must say so rather than misread. */
	if (m->restart_off > f->base) {
		maybe_read(log, f->base, buf, cap);
		maybe_read(log, m->restart_off - 1, buf, cap);
	}
	/* A closed segment is read as it is: whole, or refused. */
	if (f->closed != NULL) {
		if (f->closed_whole)
			expect_batches(log, f->closed, 0, f->closed_len, buf, cap, false);
		maybe_read(log, 0, buf, cap);
		uint64_t base;
		ssize_t n = log_read_copy(log, f->base - 1, buf, cap, &base);
		if (f->closed_whole && (f->flags & FL_GAP))
			CHECK(n == -EBADMSG); /* an offset no batch holds */
		else
			maybe_read(log, f->base - 1, buf, cap);
	}
	/* At the end: nothing; past it: out of range. */
	uint64_t base;
	CHECK(log_read_copy(log, m->end_off, buf, cap, &base) == 0);
	CHECK(log_read_copy(log, m->end_off + 1, buf, cap, &base) == -ERANGE);

	/* Lookups by time, when every batch was checked (no index trusted)
	 * and has well-formed records. */
	if (!m->restarted && (f->closed == NULL || f->closed_valid) && active_records_ok(f, m))
		check_time_lookups(log, f, m);
	free(buf);
}

/* A small batch to append after recovery, shaped by the input. */
static uint8_t *make_batch(const struct seg_files *f, uint32_t *len)
{
	uint8_t raw[512];
	struct batch_builder b;
	batch_builder_init(&b, raw, sizeof(raw));
	uint32_t n = 1 + (f->log_len % 3);
	for (uint32_t i = 0; i < n; i++) {
		int64_t ts = (int64_t)(f->log_len * 7 + i * 3) - 5;
		uint32_t vl = (uint32_t)(f->log_len < 40 ? f->log_len : 40);
		CHECK(batch_add(&b, ts, "key", 3, f->log, vl, NULL, 0) == 0);
	}
	uint8_t *out;
	if (f->flags & FL_LZ4) {
		size_t cap = batch_lz4_bound(b.len);
		out = malloc(cap);
		CHECK(out != NULL);
		ssize_t zl = batch_seal_lz4(&b, out, cap, 0, 0);
		CHECK(zl > 0);
		*len = (uint32_t)zl;
	} else {
		*len = batch_seal(&b, 0, 0);
		out = malloc(*len);
		CHECK(out != NULL);
		memcpy(out, raw, *len);
	}
	return out;
}

/* Append, read back, close cleanly, reopen: nothing may be lost or cut. */
static void append_and_reopen(struct log **logp, const char *dir, const struct log_config *cfg,
			      const struct seg_files *f, const struct model *m)
{
	uint32_t nsegs = log_segment_count(*logp);
	uint32_t len;
	uint8_t *batch = make_batch(f, &len);
	struct batch_hdr h;
	CHECK(batch_verify(batch, len, &h) == 0);
	uint64_t base = UINT64_MAX;
	CHECK(log_append_sync(*logp, batch, len, false, &base) == 0);
	CHECK(base == m->end_off);
	uint64_t end = base + h.record_count;
	CHECK(log_end(*logp) == end);
	batch_set_base_offset(batch, base);

	uint32_t cap = (uint32_t)(f->closed_len + f->log_len) + len + BATCH_HEADER_SIZE;
	uint8_t *buf = malloc(cap);
	CHECK(buf != NULL);
	uint64_t got;
	CHECK(log_read_copy(*logp, base, buf, cap, &got) == (ssize_t)len);
	CHECK(got == base && memcmp(buf, batch, len) == 0);

	/* The new batch sits right after the kept ones, and only zeros
	 * after it: the cut tail cannot come back. (Unless offsets near 2^32
	 * made the append roll to a new segment.) */
	bool rolled = log_segment_count(*logp) != nsegs;
	if (!rolled) {
		int fd = open_log_fd(dir, f->base);
		struct seg_reader r;
		CHECK(seg_reader_init(&r, fd, m->end_pos) == 0);
		const uint8_t *d;
		CHECK(seg_reader_next(&r, &h, &d) == 1);
		CHECK(memcmp(d, batch, len) == 0);
		CHECK(seg_reader_next(&r, &h, &d) == 0);
		seg_reader_free(&r);
		close(fd);
	}

	CHECK(log_close(*logp) == 0);
	*logp = NULL;
	struct log_recovery rep;
	CHECK(log_open(env, dir, cfg, logp, &rep) == 0);
	CHECK(rep.truncated_why == NULL);
	CHECK(log_end(*logp) == end);
	CHECK(log_read_copy(*logp, base, buf, cap, &got) == (ssize_t)len);
	CHECK(got == base && memcmp(buf, batch, len) == 0);
	if (!rolled && m->restart_off < base) {
		/* A kept batch still reads back after the reopen. */
		CHECK(log_read_copy(*logp, m->restart_off, buf, cap, &got) ==
		      (ssize_t)(m->end_pos - m->restart_pos + len));
		CHECK(got == m->restart_off);
		CHECK(memcmp(buf, f->log + m->restart_pos, m->end_pos - m->restart_pos) == 0);
	}
	free(buf);
	free(batch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	setup_once();
	struct seg_files f;
	split_input(data, size, &f);

	/* $TMPDIR may point at a tmpfs: the fdatasyncs of close dominate
	 * the run time on a disk. */
	const char *tmp = getenv("TMPDIR");
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/ringmq-fuzz-recovery-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	CHECK(mkdtemp(dir) != NULL);
	if (f.closed != NULL)
		write_file(dir, 0, ".log", f.closed, f.closed_len);
	write_file(dir, f.base, ".log", f.log, f.log_len);
	if (f.flags & FL_IDX)
		write_file(dir, f.base, ".idx", f.idx, f.idx_len);
	if (f.flags & FL_TIX)
		write_file(dir, f.base, ".tix", f.tix, f.tix_len);

	/* The scanner on its own, before recovery changes the file: with the
	 * default and a tiny read-ahead, and with its end lowered. */
	int fd = open_log_fd(dir, f.base);
	size_t ra = BATCH_HEADER_SIZE + (f.log_len % 97);
	scan_compare(fd, f.log, f.log_len, 0, true);
	scan_compare(fd, f.log, f.log_len, ra, true);
	scan_compare(fd, f.log, f.log_len, ra, false);
	if ((f.flags & FL_SHORT_END) && f.log_len > 0) {
		uint64_t cut = (f.log_len * 31 + 7) % 128 + 1;
		scan_compare(fd, f.log, cut < f.log_len ? f.log_len - cut : 0, ra, true);
	}
	close(fd);

	struct model m;
	model_recover(&f, &m);

	struct log_config cfg;
	log_config_default(&cfg);
	cfg.segment_bytes = f.log_len + 4096; /* no roll on the append */
	if (cfg.segment_bytes < SEGMENT_BYTES_MIN)
		cfg.segment_bytes = SEGMENT_BYTES_MIN;
	cfg.index_interval_bytes = INDEX_INTERVAL_BYTES_MIN;
	cfg.segment_ms = -1;
	cfg.retention_ms = -1;
	cfg.flush = LOG_FLUSH_NEVER;
	cfg.preallocate = false;

	struct log *log = NULL;
	struct log_recovery rep;
	CHECK(log_open(env, dir, &cfg, &log, &rep) == 0);
	check_recovered(log, &f, &m, &rep);

	/* After recovery only zeros follow the kept batches. */
	fd = open_log_fd(dir, f.base);
	struct seg_reader r;
	CHECK(seg_reader_init(&r, fd, m.end_pos) == 0);
	struct batch_hdr h;
	const uint8_t *d;
	CHECK(seg_reader_next(&r, &h, &d) == 0);
	seg_reader_free(&r);
	close(fd);

	if (f.flags & FL_APPEND)
		append_and_reopen(&log, dir, &cfg, &f, &m);
	CHECK(log_close(log) == 0);
	remove_dir(dir);
	return 0;
}
