/* test_recovery.c — crash recovery of the partition log: torn, corrupt and stale tails, indexes. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

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
#include "storage/batch.h"
#include "storage/log.h"
#include "storage/segment.h"
#include "tests/unit/testutil.h"

#define MAX_BATCHES 64u
#define MAX_FILES (3u * MAX_BATCHES)
/* Reads take the batch holding an offset plus whatever follows, up to this. */
#define READ_CAP (64u << 10)

/* One batch as it was appended: enough to rebuild its records and to find its bytes. */
struct mb {
	uint64_t base;
	uint32_t count, value_len, len;
	uint64_t seed;
	int64_t ts0;
	bool lz4;
	uint64_t seg_base; /* the segment holding it */
	uint64_t pos;      /* its position in that segment's .log */
};

/* A file of the pristine log, kept in memory so that every case starts from the same bytes. */
struct img {
	char name[SEG_NAME_MAX];
	uint8_t *data;
	size_t len;
};

struct spec {
	bool prealloc;
	uint64_t segment_bytes;
	uint32_t interval;
	uint32_t batches;
	bool last_lz4;
	bool big; /* every batch 8 records of 60 bytes, uncompressed: one per 1 KiB segment */
};

struct fx {
	struct tu_env te;
	struct log_config cfg;
	struct spec sp;
	char *src, *work;
	struct mb b[MAX_BATCHES];
	uint32_t n;
	struct img files[MAX_FILES];
	uint32_t nfiles;
	uint64_t seg_bases[MAX_BATCHES];
	uint32_t nsegs;
	uint64_t rng;
	uint8_t *buf, *scratch;
};

/* Findings that should not stop the rest of a test from running: each is printed at once and
 * the test fails at its end (soft_check_end). */
static int soft_failures;
/* What the running case does to the log, for the findings' messages. */
static char case_name[160];

static void soft_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void soft_fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (soft_failures < 12)
		print_error("FINDING: %s\n", msg);
	else if (soft_failures == 12)
		print_error("FINDING: (more findings follow; only their count is shown)\n");
	soft_failures++;
}

static int soft_reset(void **state)
{
	(void)state;
	soft_failures = 0;
	return 0;
}

static void soft_check_end(void)
{
	int n = soft_failures;
	soft_failures = 0;
	if (n != 0)
		fail_msg("%d finding(s) above", n);
}

/* The directories of the running test's fixture, so that a failed assertion, which leaves the
 * test half way (and its fixture's stack frame gone), does not leave them behind either. Its
 * log may still be open: only the files go, the memory goes with the process. */
static char live_dirs[2][512];

static void dirs_keep(const char *src, const char *work)
{
	snprintf(live_dirs[0], sizeof(live_dirs[0]), "%s", src);
	snprintf(live_dirs[1], sizeof(live_dirs[1]), "%s", work);
}

static int remove_dirs(void **state)
{
	(void)state;
	for (int i = 0; i < 2; i++) {
		if (live_dirs[i][0] != '\0')
			tu_rmtree(live_dirs[i]);
		live_dirs[i][0] = '\0';
	}
	return 0;
}

/* ---- files ---- */

static void read_file(const char *path, uint8_t **data, size_t *len)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	*len = (size_t)st.st_size;
	*data = malloc(*len ? *len : 1);
	assert_non_null(*data);
	assert_int_equal(pread(fd, *data, *len, 0), (ssize_t)*len);
	close(fd);
}

static void write_file(const char *path, const uint8_t *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void zero_range(const char *path, uint64_t from, uint64_t to)
{
	static const uint8_t zeros[4096];
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	while (from < to) {
		size_t n = to - from < sizeof(zeros) ? (size_t)(to - from) : sizeof(zeros);
		assert_int_equal(pwrite(fd, zeros, n, (off_t)from), (ssize_t)n);
		from += n;
	}
	close(fd);
}

/* A path by value, so that several can be alive at once. */
struct fpath {
	char s[512];
};

static struct fpath fx_path(const struct fx *f, uint64_t seg_base, const char *ext)
{
	struct fpath p;
	char name[SEG_NAME_MAX];
	seg_name(name, seg_base, ext);
	int n = snprintf(p.s, sizeof(p.s), "%s/%s", f->work, name);
	assert_true(n > 0 && (size_t)n < sizeof(p.s));
	return p;
}

static const struct img *fx_img(const struct fx *f, uint64_t seg_base, const char *ext)
{
	char name[SEG_NAME_MAX];
	seg_name(name, seg_base, ext);
	for (uint32_t i = 0; i < f->nfiles; i++)
		if (strcmp(f->files[i].name, name) == 0)
			return &f->files[i];
	fail_msg("no file %s in the image", name);
	return NULL;
}

/* Puts the pristine log back into the work directory, nothing else in it. */
static void fx_restore(struct fx *f)
{
	tu_rmtree(f->work);
	assert_int_equal(mkdir(f->work, 0755), 0);
	for (uint32_t i = 0; i < f->nfiles; i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", f->work, f->files[i].name);
		write_file(path, f->files[i].data, f->files[i].len);
	}
}

/* Keeps the first index entries of a segment whose relative offset is below rel, as a crash
 * leaves them when index writes lagged behind data writes. */
static void keep_index_below(struct fx *f, uint64_t seg_base, uint64_t rel)
{
	for (int k = 0; k < 2; k++) {
		const char *ext = k ? ".tix" : ".idx";
		size_t esz = k ? TIX_ENTRY_SIZE : IDX_ENTRY_SIZE;
		const struct img *im = fx_img(f, seg_base, ext);
		size_t keep = 0;
		while ((keep + 1) * esz <= im->len) {
			uint32_t r;
			if (k) {
				struct tix_entry e;
				tix_decode(im->data + keep * esz, &e);
				r = e.rel_offset;
			} else {
				struct idx_entry e;
				idx_decode(im->data + keep * esz, &e);
				r = e.rel_offset;
			}
			if (r >= rel)
				break;
			keep++;
		}
		assert_int_equal(tu_truncate(fx_path(f, seg_base, ext).s, keep * esz), 0);
	}
}

/* ---- building the log ---- */

static uint8_t *mb_bytes(const struct mb *m, uint32_t *len)
{
	return tu_batch(m->count, m->value_len, m->seed, m->ts0, m->lz4, len);
}

static struct log *open_in(struct fx *f, const char *dir, struct log_recovery *rep)
{
	struct log *log = NULL;
	int ret = log_open(f->te.env, dir, &f->cfg, &log, rep);
	assert_int_equal(ret, 0);
	/* Flush-always logs show the recovered tail only once an fdatasync covers it. */
	assert_int_equal(log_sync(log), 0);
	assert_int_equal(log_visible_end(log), log_end(log));
	return log;
}

static struct log *fx_open(struct fx *f, struct log_recovery *rep)
{
	return open_in(f, f->work, rep);
}

static void fx_append(struct log *log, struct mb *m, uint64_t want_base)
{
	uint32_t len;
	uint8_t *bytes = mb_bytes(m, &len);
	uint64_t base = UINT64_MAX;
	assert_int_equal(log_append_sync(log, bytes, len, true, &base), 0);
	assert_int_equal(base, want_base);
	m->base = base;
	m->len = len;
	free(bytes);
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(((const struct img *)a)->name, ((const struct img *)b)->name);
}

static void fx_build(struct fx *f, const struct spec *sp, const char *tag)
{
	memset(f, 0, sizeof(*f));
	f->sp = *sp;
	snprintf(case_name, sizeof(case_name), "%s", tag);
	f->rng = tu_seed(tag);
	tu_env_init(&f->te);
	tu_config(&f->cfg, sp->segment_bytes);
	f->cfg.preallocate = sp->prealloc;
	f->cfg.index_interval_bytes = sp->interval;
	f->src = tu_tmpdir("recovery-src");
	f->work = tu_tmpdir("recovery");
	f->buf = malloc(READ_CAP);
	f->scratch = malloc(READ_CAP);
	assert_non_null(f->buf);
	assert_non_null(f->scratch);
	assert_true(sp->batches <= MAX_BATCHES);

	dirs_keep(f->src, f->work);
	struct log_recovery rep;
	struct log *log = open_in(f, f->src, &rep);
	uint64_t seg_base = 0, seg_pos = 0;
	for (uint32_t j = 0; j < sp->batches; j++) {
		struct mb *m = &f->b[j];
		bool last = j + 1 == sp->batches;
		m->count = sp->big ? 8 : 3 + (uint32_t)(tu_rand(&f->rng) % 6);
		m->value_len = sp->big ? 60 : 20 + (uint32_t)(tu_rand(&f->rng) % 41);
		m->lz4 = last ? sp->last_lz4 : !sp->big && tu_rand(&f->rng) % 3 == 0;
		m->seed = tu_rand(&f->rng);
		/* Strictly increasing timestamps, with a gap after each batch for
		 * lookups that fall between batches. */
		m->ts0 = 1000 * (int64_t)(j + 1);
		uint64_t base = j ? f->b[j - 1].base + f->b[j - 1].count : 0;
		fx_append(log, m, base);
		/* The roll rule of log_append: a batch that would pass segment_bytes
		 * starts a new segment, unless the segment is still empty. */
		if (seg_pos > 0 && seg_pos + m->len > sp->segment_bytes) {
			seg_base = m->base;
			seg_pos = 0;
		}
		if (seg_pos == 0)
			f->seg_bases[f->nsegs++] = seg_base;
		m->seg_base = seg_base;
		m->pos = seg_pos;
		seg_pos += m->len;
	}
	f->n = sp->batches;
	assert_int_equal(log_segment_count(log), f->nsegs);
	assert_int_equal(log_close(log), 0);

	DIR *d = opendir(f->src);
	assert_non_null(d);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		assert_true(f->nfiles < MAX_FILES);
		struct img *im = &f->files[f->nfiles++];
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", f->src, de->d_name);
		assert_true(strlen(de->d_name) < sizeof(im->name));
		memcpy(im->name, de->d_name, strlen(de->d_name) + 1);
		read_file(path, &im->data, &im->len);
	}
	closedir(d);
	qsort(f->files, f->nfiles, sizeof(f->files[0]), cmp_name);
	assert_int_equal(f->nfiles, 3 * f->nsegs);

	/* The model must agree with the files: each batch is where we think. */
	for (uint32_t j = 0; j < f->n; j++) {
		const struct mb *m = &f->b[j];
		const struct img *im = fx_img(f, m->seg_base, ".log");
		struct batch_hdr h;
		assert_true(m->pos + m->len <= im->len);
		assert_int_equal(batch_verify(im->data + m->pos, m->len, &h), 0);
		assert_int_equal(h.base_offset, m->base);
		assert_int_equal(h.length, m->len);
	}
	/* Zeroing a cut-off tail must change the batch: its last byte is data. */
	const struct mb *B = &f->b[f->n - 1];
	assert_int_not_equal(fx_img(f, B->seg_base, ".log")->data[B->pos + B->len - 1], 0);
	/* Closed segments hold exactly their data; the active one keeps its preallocation. */
	for (uint32_t s = 0; s < f->nsegs; s++) {
		size_t data = 0;
		for (uint32_t j = 0; j < f->n; j++)
			if (f->b[j].seg_base == f->seg_bases[s])
				data += f->b[j].len;
		size_t want = s + 1 == f->nsegs && sp->prealloc ? sp->segment_bytes : data;
		assert_int_equal(fx_img(f, f->seg_bases[s], ".log")->len, want);
	}
	fx_restore(f);
}

static void fx_free(struct fx *f)
{
	dirs_keep("", "");
	for (uint32_t i = 0; i < f->nfiles; i++)
		free(f->files[i].data);
	tu_rmtree(f->src);
	tu_rmtree(f->work);
	free(f->src);
	free(f->work);
	free(f->buf);
	free(f->scratch);
	tu_env_fini(&f->te);
}

/* ---- checks ---- */

static uint64_t end_of(const struct fx *f, uint32_t n)
{
	return n ? f->b[n - 1].base + f->b[n - 1].count : 0;
}

/* Reads the batch holding `at` and compares every record with what was appended. */
static void check_batch(struct fx *f, struct log *log, const struct mb *m, uint64_t at)
{
	uint64_t base = UINT64_MAX;
	ssize_t got = log_read_copy(log, at, f->buf, READ_CAP, &base);
	if (got <= 0)
		fail_msg("read at offset %" PRIu64 ": %zd", at, got);
	assert_int_equal(base, m->base);
	struct batch_hdr h;
	assert_int_equal(batch_verify(f->buf, (size_t)got, &h), 0);
	assert_int_equal(h.base_offset, m->base);
	assert_int_equal(h.length, m->len);
	assert_int_equal(h.record_count, m->count);
	assert_int_equal(batch_compression(&h), m->lz4 ? BATCH_COMPRESSION_LZ4 : 0);

	struct batch_iter it;
	struct batch_record rec;
	uint8_t val[64];
	assert_int_equal(batch_iter_init(&it, f->buf, f->scratch, READ_CAP), 0);
	for (uint32_t i = 0; i < m->count; i++) {
		assert_int_equal(batch_iter_next(&it, &rec), 1);
		char key[24];
		int kl = snprintf(key, sizeof(key), "k%u", i);
		assert_int_equal(rec.offset, m->base + i);
		assert_int_equal(rec.timestamp, m->ts0 + i);
		assert_int_equal(rec.key_len, kl);
		assert_memory_equal(rec.key, key, (size_t)kl);
		tu_value(val, m->value_len, m->seed, i);
		assert_int_equal(rec.value_len, m->value_len);
		assert_memory_equal(rec.value, val, m->value_len);
		assert_int_equal(rec.header_count, 1);
		const uint8_t *hp = rec.headers;
		struct batch_kv kv;
		assert_int_equal(batch_kv_next(&hp, rec.headers + rec.headers_len, &kv), 1);
		assert_int_equal(kv.name_len, 1);
		assert_memory_equal(kv.name, "h", 1);
		assert_int_equal(kv.value_len, kl);
		assert_memory_equal(kv.value, key, (size_t)kl);
	}
	assert_int_equal(batch_iter_next(&it, &rec), 0);
}

/* The log holds exactly the first n batches, each as appended. */
static void check_prefix(struct fx *f, struct log *log, uint32_t n)
{
	assert_int_equal(log_start(log), 0);
	assert_int_equal(log_end(log), end_of(f, n));
	for (uint32_t j = 0; j < n; j++)
		check_batch(f, log, &f->b[j], f->b[j].base);
	uint64_t base;
	assert_int_equal(log_read_copy(log, end_of(f, n), f->buf, READ_CAP, &base), 0);
	assert_int_equal(log_read_copy(log, end_of(f, n) + 1, f->buf, READ_CAP, &base), -ERANGE);
}

static void check_time(struct log *log, int64_t ts, uint64_t want)
{
	uint64_t off = UINT64_MAX;
	int ret = log_offset_for_time(log, ts, &off);
	assert_int_equal(ret, 0);
	/* A wrong answer does not disturb the rest of the checks: note it and go on. */
	if (off != want)
		soft_fail("%s: offset for time %" PRId64 " is %" PRIu64 ", expected %" PRIu64,
			  case_name, ts, off, want);
}

/* Lookups by every offset, and by the time of every record and between batches. */
static void check_lookups(struct fx *f, struct log *log, uint32_t n)
{
	check_prefix(f, log, n);
	for (uint32_t j = 0; j < n; j++)
		for (uint32_t i = 1; i < f->b[j].count; i++)
			check_batch(f, log, &f->b[j], f->b[j].base + i);
	check_time(log, INT64_MIN, 0);
	check_time(log, 0, 0);
	for (uint32_t j = 0; j < n; j++) {
		const struct mb *m = &f->b[j];
		for (uint32_t i = 0; i < m->count; i++)
			check_time(log, m->ts0 + i, m->base + i);
		/* Between this batch's last record and the next batch's first. */
		check_time(log, m->ts0 + m->count, end_of(f, j + 1));
	}
	check_time(log, INT64_MAX, end_of(f, n));
}

/* Bytes the report should call cut: from `at` to the last non-zero byte of the file. */
static uint64_t nonzero_extent(const char *path, uint64_t at)
{
	uint8_t *data;
	size_t len;
	read_file(path, &data, &len);
	uint64_t ext = 0;
	for (size_t i = len; i-- > at;) {
		if (data[i] != 0) {
			ext = i + 1 - at;
			break;
		}
	}
	free(data);
	return ext;
}

static void expect_clean(const struct log_recovery *rep, const struct fx *f)
{
	assert_null(rep->truncated_why);
	assert_int_equal(rep->truncated_bytes, 0);
	assert_int_equal(rep->segments, f->nsegs);
}

/* A cut at `at` in the last segment, of the bytes from there to the last non-zero byte. */
static void expect_cut(const struct log_recovery *rep, const struct fx *f, uint64_t at,
		       uint64_t bytes)
{
	if (rep->truncated_why == NULL)
		fail_msg("no cut reported (expected %" PRIu64 " bytes at %" PRIu64 ")", bytes, at);
	assert_int_equal(rep->truncated_at, at);
	assert_int_equal(rep->truncated_bytes, bytes);
	assert_int_equal(rep->segments, f->nsegs);
}

/* Recovery reads only the active segment: never more than its surviving bytes. */
static void expect_scan_bounded(const struct log_recovery *rep, uint64_t upto)
{
	if (rep->scanned_bytes > upto)
		fail_msg("scanned %" PRIu64 " bytes; the last segment keeps %" PRIu64,
			 rep->scanned_bytes, upto);
}

/* After recovery ended the log at B's base: a new batch takes B's offsets, and after another
 * close and open the log is exactly the prefix plus the new batch, with no cut: nothing of
 * the old tail may come back (S3). */
static void append_after_cut(struct fx *f, struct log *log, uint32_t keep, uint64_t salt)
{
	const struct mb *B = &f->b[keep];
	struct mb nb = {
		.count = 3,
		.value_len = 21,
		.seed = salt * 7919 + 1,
		.ts0 = B->ts0,
		.lz4 = false,
	};
	fx_append(log, &nb, B->base);
	assert_int_equal(log_end(log), B->base + nb.count);
	check_batch(f, log, &nb, nb.base);
	assert_int_equal(log_close(log), 0);

	struct log_recovery rep;
	log = fx_open(f, &rep);
	expect_clean(&rep, f);
	assert_int_equal(log_end(log), B->base + nb.count);
	for (uint32_t j = 0; j < keep; j++)
		check_batch(f, log, &f->b[j], f->b[j].base);
	check_batch(f, log, &nb, nb.base);
	uint64_t off;
	assert_int_equal(log_offset_for_time(log, INT64_MAX, &off), 0);
	assert_int_equal(off, B->base + nb.count);
	assert_int_equal(log_close(log), 0);
}

/* ---- fixtures ---- */

static const struct spec spec_pre_idx = {
	.prealloc = true, .segment_bytes = 16384, .interval = 64, .batches = 6,
	.last_lz4 = false,
};
static const struct spec spec_pre_noidx = {
	.prealloc = true, .segment_bytes = 16384, .interval = 1u << 20, .batches = 6,
	.last_lz4 = true,
};
static const struct spec spec_flat_idx = {
	.prealloc = false, .segment_bytes = 16384, .interval = 64, .batches = 6,
	.last_lz4 = true,
};
static const struct spec spec_flat_noidx = {
	.prealloc = false, .segment_bytes = 16384, .interval = 1u << 20, .batches = 6,
	.last_lz4 = false,
};
static const struct spec spec_multi_pre = {
	.prealloc = true, .segment_bytes = 2048, .interval = 256, .batches = 24,
	.last_lz4 = false,
};
static const struct spec spec_multi_flat = {
	.prealloc = false, .segment_bytes = 2048, .interval = 256, .batches = 24,
	.last_lz4 = true,
};
static const struct spec spec_multi_noidx = {
	.prealloc = false, .segment_bytes = 2048, .interval = 1u << 20, .batches = 24,
	.last_lz4 = false,
};
static const struct spec spec_one_per_seg = {
	.prealloc = true, .segment_bytes = 1024, .interval = 256, .batches = 6, .big = true,
};

static const char *spec_name(const struct spec *sp)
{
	static char name[96];
	snprintf(name, sizeof(name), "%s,seg=%" PRIu64 ",interval=%u,last=%s",
		 sp->prealloc ? "prealloc" : "no-prealloc", sp->segment_bytes, sp->interval,
		 sp->last_lz4 ? "lz4" : "plain");
	return name;
}

/* ---- intact logs ---- */

static void intact_case(const struct spec *sp)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	uint64_t last_data = 0;
	uint32_t max_len = 0;
	for (uint32_t j = 0; j < f.n; j++) {
		if (f.b[j].seg_base == f.seg_bases[f.nsegs - 1])
			last_data += f.b[j].len;
		if (f.b[j].len > max_len)
			max_len = f.b[j].len;
	}
	for (int round = 0; round < 3; round++) {
		struct log_recovery rep;
		struct log *log = fx_open(&f, &rep);
		expect_clean(&rep, &f);
		assert_false(rep.index_rebuilt);
		/* A whole index lets recovery start at its last entry. */
		expect_scan_bounded(&rep, last_data);
		expect_scan_bounded(&rep, sp->interval + max_len);
		assert_int_equal(log_segment_count(log), f.nsegs);
		check_lookups(&f, log, f.n);
		assert_int_equal(log_close(log), 0);
	}
	fx_free(&f);
}

static void test_intact_reopen(void **state)
{
	(void)state;
	intact_case(&spec_pre_idx);
	intact_case(&spec_pre_noidx);
	intact_case(&spec_flat_idx);
	intact_case(&spec_flat_noidx);
	intact_case(&spec_multi_pre);
	intact_case(&spec_multi_flat);
	intact_case(&spec_one_per_seg);
}

/* ---- torn last batch ---- */

enum tear { TEAR_TRUNCATE, TEAR_ZERO };

/* The last batch B written only up to c: the file cut there, or (preallocated) the rest of B
 * still zeros. */
static void tear_case(struct fx *f, uint64_t c, enum tear how, bool reopen_twice)
{
	const struct mb *B = &f->b[f->n - 1];
	fx_restore(f);
	struct fpath fp = fx_path(f, B->seg_base, ".log");
	const char *path = fp.s;
	if (how == TEAR_TRUNCATE)
		assert_int_equal(tu_truncate(path, c), 0);
	else
		zero_range(path, c, B->pos + B->len);
	uint64_t ext = nonzero_extent(path, B->pos);

	struct log_recovery rep;
	struct log *log = fx_open(f, &rep);
	/* c == P: the file ends where B would start, or B's header is all zeros. The scanner
	 * reads either as the clean end of the data (EOF, or batch_header_is_zero: unwritten
	 * space), and nothing that had reached the file is dropped, so no cut is reported and
	 * the log ends at P. Any byte of B that did reach the file is a cut at P: a header
	 * shorter than 64 bytes or a length past the end (torn), or a zeroed rest of the batch
	 * (bad header or checksum). */
	if (c == B->pos)
		expect_clean(&rep, f);
	else
		expect_cut(&rep, f, B->pos, ext);
	expect_scan_bounded(&rep, B->pos);
	check_prefix(f, log, f->n - 1);
	if (reopen_twice) {
		assert_int_equal(log_close(log), 0);
		log = fx_open(f, &rep);
		expect_clean(&rep, f);
		assert_false(rep.index_rebuilt);
		check_lookups(f, log, f->n - 1);
	}
	append_after_cut(f, log, f->n - 1, c);
}

static void tear_all(const struct spec *sp)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	const struct mb *B = &f.b[f.n - 1];
	for (uint64_t c = B->pos; c < B->pos + B->len; c++) {
		bool twice = c == B->pos || c == B->pos + 1 || c == B->pos + B->len - 1;
		tear_case(&f, c, TEAR_TRUNCATE, twice);
		if (sp->prealloc)
			tear_case(&f, c, TEAR_ZERO, twice);
	}
	fx_free(&f);
}

static void test_tear_prealloc(void **state)
{
	(void)state;
	tear_all(&spec_pre_idx);
	tear_all(&spec_pre_noidx);
}

static void test_tear_no_prealloc(void **state)
{
	(void)state;
	tear_all(&spec_flat_idx);
	tear_all(&spec_flat_noidx);
}

/* ---- one flipped byte in the last batch ---- */

static void flip_all(const struct spec *sp)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	const struct mb *B = &f.b[f.n - 1];
	static const uint8_t masks[] = { 0xFF, 0x01 };
	for (uint64_t i = B->pos; i < B->pos + B->len; i++) {
		for (size_t k = 0; k < sizeof(masks); k++) {
			fx_restore(&f);
			struct fpath fp = fx_path(&f, B->seg_base, ".log");
			const char *path = fp.s;
			assert_int_equal(tu_flip(path, i, masks[k]), 0);
			uint64_t ext = nonzero_extent(path, B->pos);
			struct log_recovery rep;
			struct log *log = fx_open(&f, &rep);
			if (log_end(log) != B->base)
				fail_msg("flip 0x%02x at %" PRIu64 " (byte %" PRIu64
					 " of B) went unnoticed: log ends at %" PRIu64
					 ", B starts at %" PRIu64,
					 masks[k], i, i - B->pos, log_end(log), B->base);
			expect_cut(&rep, &f, B->pos, ext);
			expect_scan_bounded(&rep, B->pos);
			check_prefix(&f, log, f.n - 1);
			assert_int_equal(log_close(log), 0);
		}
	}
	fx_free(&f);
}

static void test_flip_every_byte(void **state)
{
	(void)state;
	flip_all(&spec_pre_idx);
	flip_all(&spec_pre_noidx);
	flip_all(&spec_flat_idx);
	flip_all(&spec_flat_noidx);
}

/* ---- damaged indexes ---- */

enum idx_damage {
	IDX_DELETED,
	IDX_AND_TIX_DELETED,
	IDX_JUNK,
	IDX_JUNK_ODD, /* not a whole number of entries */
	TIX_JUNK,
	BOTH_JUNK,
	IDX_JUNK_AND_TORN, /* and B torn in half */
	INDEX_TORN_ENTRY,  /* the last entry of each file cut short, as a torn index write */
	DAMAGE_COUNT,
};

static const char *const damage_names[] = {
	"idx deleted", "idx and tix deleted", "idx junk", "idx junk (odd size)", "tix junk",
	"idx and tix junk", "idx junk and last batch torn", "last index entries torn",
};

static void damage_segment(struct fx *f, uint64_t seg_base, enum idx_damage d, uint64_t seed)
{
	struct fpath fp = fx_path(f, seg_base, ".idx");
	const char *path = fp.s;
	switch (d) {
	case IDX_DELETED:
	case IDX_AND_TIX_DELETED:
		assert_int_equal(unlink(path), 0);
		if (d == IDX_AND_TIX_DELETED)
			assert_int_equal(unlink(fx_path(f, seg_base, ".tix").s), 0);
		break;
	case IDX_JUNK:
	case IDX_JUNK_AND_TORN:
		assert_int_equal(tu_write_junk(path, 96, seed), 0);
		break;
	case IDX_JUNK_ODD:
		assert_int_equal(tu_write_junk(path, 61, seed), 0);
		break;
	case TIX_JUNK:
		assert_int_equal(tu_write_junk(fx_path(f, seg_base, ".tix").s, 96, seed), 0);
		break;
	case BOTH_JUNK:
		assert_int_equal(tu_write_junk(path, 96, seed), 0);
		assert_int_equal(tu_write_junk(fx_path(f, seg_base, ".tix").s, 120, seed + 1), 0);
		break;
	case INDEX_TORN_ENTRY: {
		const struct img *im = fx_img(f, seg_base, ".idx");
		assert_true(im->len >= IDX_ENTRY_SIZE);
		assert_int_equal(tu_truncate(path, im->len - 3), 0);
		im = fx_img(f, seg_base, ".tix");
		assert_true(im->len >= TIX_ENTRY_SIZE);
		assert_int_equal(tu_truncate(fx_path(f, seg_base, ".tix").s, im->len - 5), 0);
		break;
	}
	case DAMAGE_COUNT:
		break;
	}
}

static void index_case(struct fx *f, enum idx_damage d, bool all_segments)
{
	const struct mb *B = &f->b[f->n - 1];
	uint64_t last = f->seg_bases[f->nsegs - 1];
	fx_restore(f);
	for (uint32_t s = all_segments ? 0 : f->nsegs - 1; s < f->nsegs; s++)
		damage_segment(f, f->seg_bases[s], d, f->rng + s * 31 + (uint64_t)d);
	uint32_t keep = f->n;
	if (d == IDX_JUNK_AND_TORN) {
		keep = f->n - 1;
		struct fpath fp = fx_path(f, B->seg_base, ".log");
		assert_int_equal(tu_truncate(fp.s, B->pos + B->len / 2), 0);
	}
	snprintf(case_name, sizeof(case_name), "%s, %s%s", spec_name(&f->sp), damage_names[d],
		 all_segments ? " (every segment)" : "");
	print_message("# index: %s\n", case_name);

	struct log_recovery rep;
	struct log *log = fx_open(f, &rep);
	if (d == IDX_JUNK_AND_TORN)
		assert_non_null(rep.truncated_why);
	else
		expect_clean(&rep, f);
	/* The active segment's index was missing or damaged and recovery rebuilt it. */
	bool active_has_data = end_of(f, keep) > last;
	if (active_has_data && !rep.index_rebuilt)
		soft_fail("%s: the active index was rebuilt but index_rebuilt is false",
			  case_name);
	check_lookups(f, log, keep);
	assert_int_equal(log_close(log), 0);

	/* Every index, rebuilt on open (active) or on first read (closed), is whole now. */
	for (uint32_t s = 0; s < f->nsegs; s++) {
		struct stat st;
		assert_int_equal(stat(fx_path(f, f->seg_bases[s], ".idx").s, &st), 0);
		assert_int_equal(st.st_size % IDX_ENTRY_SIZE, 0);
		if (f->seg_bases[s] < end_of(f, keep))
			assert_true(st.st_size >= (off_t)IDX_ENTRY_SIZE);
		assert_int_equal(stat(fx_path(f, f->seg_bases[s], ".tix").s, &st), 0);
		assert_int_equal(st.st_size % TIX_ENTRY_SIZE, 0);
	}
	log = fx_open(f, &rep);
	expect_clean(&rep, f);
	assert_false(rep.index_rebuilt);
	check_lookups(f, log, keep);
	assert_int_equal(log_close(log), 0);
}

static void index_all(const struct spec *sp, bool all_segments)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	if (all_segments)
		assert_true(f.nsegs > 1);
	for (int d = 0; d < DAMAGE_COUNT; d++)
		index_case(&f, (enum idx_damage)d, all_segments);
	fx_free(&f);
}

/* The active segment's indexes: recovery rebuilds them at open. */
static void test_index_damage(void **state)
{
	(void)state;
	index_all(&spec_pre_idx, false);
	index_all(&spec_flat_idx, false);
	index_all(&spec_pre_noidx, false);
	index_all(&spec_multi_pre, false);
	index_all(&spec_multi_flat, false);
	soft_check_end();
}

/* Every segment's indexes: closed ones are rebuilt at their first lookup and written back, and
 * must then serve the next open as the seal's indexes did. With one index entry per segment
 * (interval past the segment size) the last batches of a segment are never indexed. */
static void test_index_damage_closed(void **state)
{
	(void)state;
	index_all(&spec_multi_pre, true);
	index_all(&spec_multi_flat, true);
	index_all(&spec_multi_noidx, true);
	soft_check_end();
}

/* ---- several segments, only the last one damaged ---- */

static void multi_all(const struct spec *sp)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	assert_true(f.nsegs >= 3);
	const struct mb *B = &f.b[f.n - 1];
	uint64_t P = B->pos, L = B->len;
	const uint64_t cuts[] = { P, P + 1, P + 8, P + 63, P + 64, P + 65, P + L / 2, P + L - 1 };
	for (size_t k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
		tear_case(&f, cuts[k], TEAR_TRUNCATE, k == 1);
		if (sp->prealloc)
			tear_case(&f, cuts[k], TEAR_ZERO, false);
	}
	/* Flips, sampled: the exhaustive ones are in test_flip_every_byte. */
	for (uint64_t i = P; i < P + L; i += 7) {
		fx_restore(&f);
		struct fpath fp = fx_path(&f, B->seg_base, ".log");
		const char *path = fp.s;
		assert_int_equal(tu_flip(path, i, 0x40), 0);
		uint64_t ext = nonzero_extent(path, P);
		struct log_recovery rep;
		struct log *log = fx_open(&f, &rep);
		expect_cut(&rep, &f, P, ext);
		expect_scan_bounded(&rep, P);
		check_prefix(&f, log, f.n - 1);
		assert_int_equal(log_close(log), 0);
	}
	fx_free(&f);
}

static void test_multi_segment_tail(void **state)
{
	(void)state;
	multi_all(&spec_multi_pre);
	multi_all(&spec_multi_flat);
	/* B alone in its segment: recovery can empty the segment. */
	multi_all(&spec_one_per_seg);
}

/* Recovery trusts closed segments (S1: they were sealed and synced): damage there is not
 * scanned for at open, and shows up where a reader verifies the batch. */
static void test_closed_segments_not_scanned(void **state)
{
	(void)state;
	struct fx f;
	fx_build(&f, &spec_multi_pre, "closed segments not scanned");
	const struct mb *m = &f.b[0];
	assert_true(m->seg_base != f.seg_bases[f.nsegs - 1]);
	struct fpath fp = fx_path(&f, m->seg_base, ".log");
	assert_int_equal(tu_flip(fp.s, m->pos + m->len - 3, 0x01), 0);
	uint64_t last_data = 0;
	for (uint32_t j = 0; j < f.n; j++)
		if (f.b[j].seg_base == f.seg_bases[f.nsegs - 1])
			last_data += f.b[j].len;
	struct log_recovery rep;
	struct log *log = fx_open(&f, &rep);
	expect_clean(&rep, &f);
	expect_scan_bounded(&rep, last_data);
	assert_int_equal(log_end(log), end_of(&f, f.n));
	for (uint32_t j = 1; j < f.n; j++)
		check_batch(&f, log, &f.b[j], f.b[j].base);
	uint64_t base;
	ssize_t got = log_read_copy(log, 0, f.buf, READ_CAP, &base);
	assert_true(got >= (ssize_t)m->len);
	struct batch_hdr h;
	assert_int_equal(batch_verify(f.buf, (size_t)got, &h), -EBADMSG);
	assert_int_equal(log_close(log), 0);
	fx_free(&f);
}

/* ---- shapes a crash leaves when writes complete out of order ---- */

/* Batch k never reached the file (zeros: preallocated space or a hole) while the batches after
 * it did; the index lags behind k, since index entries are written only below written_end.
 * Recovery must end the log at k, and say that it threw away the bytes after the gap. */
static void gap_case(const struct spec *sp)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	uint32_t k = f.n - 3;
	const struct mb *m = &f.b[k];
	const struct mb *B = &f.b[f.n - 1];
	assert_true(m->seg_base == B->seg_base);
	struct fpath fp = fx_path(&f, m->seg_base, ".log");
	const char *path = fp.s;
	zero_range(path, m->pos, m->pos + m->len);
	keep_index_below(&f, m->seg_base, m->base - m->seg_base);
	uint64_t ext = nonzero_extent(path, m->pos);
	assert_int_equal(ext, B->pos + B->len - m->pos);

	struct log_recovery rep;
	struct log *log = fx_open(&f, &rep);
	assert_int_equal(log_end(log), m->base);
	check_prefix(&f, log, k);
	if (rep.truncated_why == NULL)
		soft_fail("%s: the %" PRIu64 " bytes from a zeroed batch at %" PRIu64
			  " on (%u valid batches) were dropped, and the report says the tail"
			  " was clean", spec_name(sp), ext, m->pos, f.n - 1 - k);
	else
		expect_cut(&rep, &f, m->pos, ext);
	append_after_cut(&f, log, k, 1);
	fx_free(&f);
}

static void test_zeroed_gap_before_tail(void **state)
{
	(void)state;
	gap_case(&spec_pre_idx);
	gap_case(&spec_flat_noidx);
	soft_check_end();
}

/* (S3) A batch in the middle of the last segment is damaged and the index lags behind it: the
 * log is cut there, but the valid batches after it are still in the file. The same batch is
 * appended again, so that if those bytes survived they would follow it in sequence (same
 * length, same offsets) and come back on the next open. */
static void stale_case(const struct spec *sp)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	uint32_t k = f.n - 3;
	struct mb m = f.b[k];
	struct fpath fp = fx_path(&f, m.seg_base, ".log");
	const char *path = fp.s;
	assert_int_equal(tu_flip(path, m.pos + 30, 0x10), 0);
	keep_index_below(&f, m.seg_base, m.base - m.seg_base);
	uint64_t ext = nonzero_extent(path, m.pos);

	struct log_recovery rep;
	struct log *log = fx_open(&f, &rep);
	expect_cut(&rep, &f, m.pos, ext);
	check_prefix(&f, log, k);
	fx_append(log, &m, f.b[k].base);
	assert_int_equal(m.len, f.b[k].len);
	assert_int_equal(log_close(log), 0);

	log = fx_open(&f, &rep);
	expect_clean(&rep, &f);
	assert_int_equal(log_end(log), m.base + m.count);
	check_prefix(&f, log, k + 1);
	assert_int_equal(log_close(log), 0);
	fx_free(&f);
}

static void test_stale_tail_not_resurrected(void **state)
{
	(void)state;
	stale_case(&spec_pre_idx);
	stale_case(&spec_pre_noidx);
	stale_case(&spec_flat_idx);
}

/* A crash while a segment was being created or deleted can leave index files without a log:
 * open removes them, and they are not mistaken for a segment. */
static void test_orphan_index_files(void **state)
{
	(void)state;
	struct fx f;
	fx_build(&f, &spec_multi_pre, "orphan index files");
	uint64_t after = end_of(&f, f.n) + 1000, before = 0;
	/* Past the end, and a deleted segment's leftovers in the middle. */
	assert_int_equal(tu_write_junk(fx_path(&f, after, ".idx").s, 16, 3), 0);
	assert_int_equal(tu_write_junk(fx_path(&f, after, ".tix").s, 24, 4), 0);
	before = f.seg_bases[1] - 1;
	assert_int_equal(tu_write_junk(fx_path(&f, before, ".tix").s, 24, 5), 0);
	struct log_recovery rep;
	struct log *log = fx_open(&f, &rep);
	expect_clean(&rep, &f);
	check_lookups(&f, log, f.n);
	assert_int_equal(log_close(log), 0);
	assert_int_equal(access(fx_path(&f, after, ".idx").s, F_OK), -1);
	assert_int_equal(access(fx_path(&f, after, ".tix").s, F_OK), -1);
	assert_int_equal(access(fx_path(&f, before, ".tix").s, F_OK), -1);
	fx_free(&f);
}

/* A whole, checksummed last batch whose base offset does not follow the one before it: a stale
 * batch from an earlier life of the file, as (S3) guards against. Recovery must not take it. */
static void sequence_case(const struct spec *sp)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	const struct mb *B = &f.b[f.n - 1];
	const struct img *im = fx_img(&f, B->seg_base, ".log");
	const uint64_t bases[] = { B->base + 1, B->base - 1, f.b[f.n - 2].base, 0, B->base + 1000 };
	uint8_t *copy = malloc(B->len);
	assert_non_null(copy);
	for (size_t k = 0; k < sizeof(bases) / sizeof(bases[0]); k++) {
		fx_restore(&f);
		memcpy(copy, im->data + B->pos, B->len);
		batch_set_base_offset(copy, bases[k]);
		struct batch_hdr h;
		assert_int_equal(batch_verify(copy, B->len, &h), 0);
		struct fpath fp = fx_path(&f, B->seg_base, ".log");
		int fd = open(fp.s, O_WRONLY);
		assert_true(fd >= 0);
		assert_int_equal(pwrite(fd, copy, B->len, (off_t)B->pos), (ssize_t)B->len);
		close(fd);
		uint64_t ext = nonzero_extent(fp.s, B->pos);

		struct log_recovery rep;
		struct log *log = fx_open(&f, &rep);
		if (log_end(log) != B->base)
			fail_msg("last batch stamped with base %" PRIu64 " (expected %" PRIu64
				 ") was kept: log ends at %" PRIu64, bases[k], B->base,
				 log_end(log));
		expect_cut(&rep, &f, B->pos, ext);
		check_prefix(&f, log, f.n - 1);
		if (k == 0)
			append_after_cut(&f, log, f.n - 1, 77);
		else
			assert_int_equal(log_close(log), 0);
	}
	free(copy);
	fx_free(&f);
}

static void test_out_of_sequence_tail(void **state)
{
	(void)state;
	sequence_case(&spec_pre_idx);
	sequence_case(&spec_flat_noidx);
}

/* A crash in the middle of a roll: the old segment is sealed (S1), the new one's files exist
 * but hold nothing yet, or only its .log does. The new segment is the active one, empty. */
static void roll_case(const struct spec *sp, bool prealloc_zeros, bool with_index)
{
	struct fx f;
	fx_build(&f, sp, spec_name(sp));
	uint64_t end = end_of(&f, f.n);
	struct fpath fp = fx_path(&f, end, ".log");
	write_file(fp.s, NULL, 0);
	if (prealloc_zeros)
		assert_int_equal(tu_truncate(fp.s, sp->segment_bytes), 0);
	if (with_index) {
		write_file(fx_path(&f, end, ".idx").s, NULL, 0);
		write_file(fx_path(&f, end, ".tix").s, NULL, 0);
	}
	for (int round = 0; round < 2; round++) {
		struct log_recovery rep;
		struct log *log = fx_open(&f, &rep);
		assert_null(rep.truncated_why);
		assert_int_equal(rep.truncated_bytes, 0);
		assert_false(rep.index_rebuilt);
		assert_int_equal(rep.segments, f.nsegs + 1);
		if (round == 0)
			assert_int_equal(rep.scanned_bytes, 0);
		assert_int_equal(log_segment_count(log), f.nsegs + 1);
		check_lookups(&f, log, f.n);
		if (round == 0) {
			/* The empty segment takes the next batch: no second roll. */
			struct mb nb = { .count = 4, .value_len = 33, .seed = 5, .ts0 = 1 << 20 };
			fx_append(log, &nb, end);
			assert_int_equal(log_segment_count(log), f.nsegs + 1);
			f.b[f.n] = nb;
			f.b[f.n].seg_base = end;
			f.n++;
		}
		assert_int_equal(log_close(log), 0);
	}
	fx_free(&f);
}

static void test_roll_interrupted(void **state)
{
	(void)state;
	roll_case(&spec_multi_pre, false, false);
	roll_case(&spec_multi_pre, true, true);
	roll_case(&spec_multi_flat, false, true);
}

/* ---- preallocation across recovery ---- */

static uint64_t allocated(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return (uint64_t)st.st_blocks * 512;
}

/* Recovery punches out whatever lies past the end (S3) and, by its own comment, restores the
 * preallocation so fdatasyncs stay cheap. The active segment must still own segment_bytes of
 * disk after an open, clean or after a cut. */
static void test_prealloc_kept_by_recovery(void **state)
{
	(void)state;
	struct fx f;
	fx_build(&f, &spec_pre_idx, "prealloc kept");
	const struct mb *B = &f.b[f.n - 1];
	struct fpath fp = fx_path(&f, B->seg_base, ".log");
	const char *path = fp.s;
	if (allocated(path) < spec_pre_idx.segment_bytes) {
		print_message("# %s does not keep written zeros allocated; skipped\n", f.work);
		fx_free(&f);
		skip();
	}
	for (int cut = 0; cut < 2; cut++) {
		fx_restore(&f);
		if (cut)
			zero_range(path, B->pos + B->len / 2, B->pos + B->len);
		assert_true(allocated(path) >= spec_pre_idx.segment_bytes);
		struct log_recovery rep;
		struct log *log = fx_open(&f, &rep);
		assert_int_equal(rep.truncated_why != NULL, cut);
		uint64_t have = allocated(path);
		assert_int_equal(log_close(log), 0);
		if (have < spec_pre_idx.segment_bytes)
			soft_fail("%s open: the active segment keeps %" PRIu64 " of %" PRIu64
				  " preallocated bytes", cut ? "after a cut, an" : "a clean", have,
				  spec_pre_idx.segment_bytes);
	}
	fx_free(&f);
	soft_check_end();
}

int main(void)
{
	if (getenv("VERBOSE") == NULL)
		say_set_level(SAY_ERROR); /* recovery warns once per cut: thousands here */
	/* Every case copies a log and opens it, and opens and closes fdatasync: thousands of
	 * them. Recovery is about the bytes in the files, not the device, and on a shared disk
	 * the syncs alone took minutes; so tmpfs, unless TMPDIR says otherwise. */
	struct stat st;
	if (getenv("TMPDIR") == NULL && stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) &&
	    access("/dev/shm", W_OK) == 0)
		setenv("TMPDIR", "/dev/shm", 0);
#define T(fn) cmocka_unit_test_setup_teardown(fn, soft_reset, remove_dirs)
	const struct CMUnitTest tests[] = {
		T(test_intact_reopen),
		T(test_tear_prealloc),
		T(test_tear_no_prealloc),
		T(test_flip_every_byte),
		T(test_index_damage),
		T(test_index_damage_closed),
		T(test_multi_segment_tail),
		T(test_closed_segments_not_scanned),
		T(test_zeroed_gap_before_tail),
		T(test_stale_tail_not_resurrected),
		T(test_orphan_index_files),
		T(test_out_of_sequence_tail),
		T(test_roll_interrupted),
		T(test_prealloc_kept_by_recovery),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
