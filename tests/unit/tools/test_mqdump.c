/* test_mqdump.c — runs the mqdump binary on clean and damaged logs made with the storage API. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "storage/batch.h"
#include "storage/log.h"
#include "storage/segment.h"
#include "tests/unit/testutil.h"

#define NBATCHES 24
#define MAX_SEGS 16

static char mqdump[PATH_MAX];

struct fixture {
	char *dir;
	uint64_t base[NBATCHES];
	uint32_t count[NBATCHES];
	bool lz4[NBATCHES];
	uint64_t records;
	uint32_t nsegs;
	char *seg[MAX_SEGS]; /* .log paths, oldest first */
};

/* One batch as the test finds it in a segment file. */
struct found {
	uint64_t pos;
	uint32_t len;
	uint64_t base;
};

/* The test binary is BUILD/tests/tools/test_mqdump; mqdump is BUILD/bin/mqdump. */
static int find_mqdump(void **state)
{
	(void)state;
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -1;
	self[n] = '\0';
	for (int up = 0; up < 3; up++) {
		char *slash = strrchr(self, '/');
		if (slash == NULL)
			return -1;
		*slash = '\0';
	}
	if (snprintf(mqdump, sizeof(mqdump), "%s/bin/mqdump", self) >= (int)sizeof(mqdump))
		return -1;
	if (access(mqdump, X_OK) != 0) {
		fprintf(stderr, "test_mqdump: %s is missing: build it first (make)\n", mqdump);
		return -1;
	}
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A log of NBATCHES batches over several 2 KiB segments, every third one
 * lz4-compressed; the last segment keeps its preallocated tail. */
static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct tu_env t;
	struct log_config cfg;
	struct log *log;
	tu_env_init(&t);
	f->dir = tu_tmpdir("mqdump");
	tu_config(&cfg, 2048);
	cfg.preallocate = true; /* mqdump must tell unwritten space from data */
	if (log_open(t.env, f->dir, &cfg, &log, NULL) != 0)
		return -1;
	for (uint32_t i = 0; i < NBATCHES; i++) {
		uint32_t len;
		f->count[i] = 1 + i % 5;
		f->lz4[i] = i % 3 == 1;
		uint8_t *b = tu_batch(f->count[i], 40, i + 1, 1700000000000 + 100 * i, f->lz4[i],
				      &len);
		int ret = log_append_sync(log, b, len, true, &f->base[i]);
		free(b);
		if (ret != 0)
			return -1;
		f->records += f->count[i];
	}
	if (log_close(log) != 0)
		return -1;
	tu_env_fini(&t);

	DIR *d = opendir(f->dir);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);
		if (n > 4 && strcmp(de->d_name + n - 4, ".log") == 0 && f->nsegs < MAX_SEGS) {
			if (asprintf(&f->seg[f->nsegs++], "%s/%s", f->dir, de->d_name) < 0)
				return -1;
		}
	}
	closedir(d);
	qsort(f->seg, f->nsegs, sizeof(f->seg[0]), cmp_str);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	tu_rmtree(f->dir);
	free(f->dir);
	for (uint32_t i = 0; i < f->nsegs; i++)
		free(f->seg[i]);
	free(f);
	return 0;
}

/* Runs `mqdump ARGS` through the shell with stderr dropped (or, if
 * want_stderr, captured instead of stdout). Returns the exit status and the
 * output in *out (malloc'd). */
static int run(char **out, bool want_stderr, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int run(char **out, bool want_stderr, const char *fmt, ...)
{
	char args[2048], cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	int n = snprintf(cmd, sizeof(cmd), "'%s' %s %s", mqdump, args,
			 want_stderr ? "2>&1 >/dev/null" : "2>/dev/null");
	assert_true(n > 0 && (size_t)n < sizeof(cmd));
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	size_t got;
	while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
		len += got;
		if (cap - len < 4096)
			buf = realloc(buf, cap *= 2);
	}
	buf[len] = '\0';
	int status = pclose(p);
	*out = buf;
	assert_true(WIFEXITED(status));
	return WEXITSTATUS(status);
}

static unsigned count_lines(const char *s, const char *prefix)
{
	unsigned n = 0;
	size_t plen = strlen(prefix);
	for (const char *line = s; *line; ) {
		if (strncmp(line, prefix, plen) == 0)
			n++;
		const char *nl = strchr(line, '\n');
		if (nl == NULL)
			break;
		line = nl + 1;
	}
	return n;
}

/* The batches of one segment file, found with the storage reader. */
static uint32_t segment_batches(const char *path, struct found *out, uint32_t max)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	struct seg_reader r;
	assert_int_equal(seg_reader_init(&r, fd, 0), 0);
	struct batch_hdr h;
	const uint8_t *data;
	uint32_t n = 0;
	uint64_t pos = 0;
	while (n < max && seg_reader_next(&r, &h, &data) == 1) {
		out[n++] = (struct found){ .pos = pos, .len = h.length, .base = h.base_offset };
		pos = r.pos;
	}
	seg_reader_free(&r);
	close(fd);
	return n;
}

/* Finds "PATH: bytes S-E:" in out and returns S and E. */
static void problem_range(const char *out, const char *path, uint64_t *start, uint64_t *end)
{
	char key[PATH_MAX + 16];
	snprintf(key, sizeof(key), "%s: bytes ", path);
	const char *p = strstr(out, key);
	if (p == NULL)
		fail_msg("no problem named for %s in:\n%s", path, out);
	assert_int_equal(sscanf(p + strlen(key), "%" SCNu64 "-%" SCNu64 ":", start, end), 2);
}

static void test_dump_lists_batches(void **state)
{
	struct fixture *f = *state;
	char *out;
	assert_true(f->nsegs >= 3);
	assert_int_equal(run(&out, false, "'%s'", f->dir), 0);
	assert_int_equal(count_lines(out, "batch "), NBATCHES);
	unsigned lz4 = 0;
	for (uint32_t i = 0; i < NBATCHES; i++) {
		char want[128];
		snprintf(want, sizeof(want), " base=%" PRIu64 " last=%" PRIu64 " count=%u ",
			 f->base[i], f->base[i] + f->count[i] - 1, f->count[i]);
		if (strstr(out, want) == NULL)
			fail_msg("missing '%s' in:\n%s", want, out);
		lz4 += f->lz4[i];
		if (i > 0)
			assert_int_equal(f->base[i], f->base[i - 1] + f->count[i - 1]);
	}
	assert_int_equal(count_lines(out, "== "), f->nsegs);
	assert_int_equal(count_lines(out, "segment "), f->nsegs);
	unsigned seen_lz4 = 0;
	for (const char *p = out; (p = strstr(p, "compression=lz4")) != NULL; p++)
		seen_lz4++;
	assert_int_equal(seen_lz4, lz4);
	assert_null(strstr(out, "checksum=BAD"));
	/* Closed segments are cut to their data; the last one is not. */
	assert_int_equal(count_lines(out, "end of data at"), f->nsegs);
	assert_non_null(strstr(out, "bytes of preallocated space"));
	char total[160];
	snprintf(total, sizeof(total), "total: %u segments, %u batches, %" PRIu64
		 " records, offsets 0-%" PRIu64 "; 0 problems, 0 warnings\n", f->nsegs, NBATCHES,
		 f->records, f->records - 1);
	if (strstr(out, total) == NULL)
		fail_msg("missing '%s' in:\n%s", total, out);
	/* Every index entry is checked against the batches. */
	assert_int_equal(count_lines(out, "index "), 2 * f->nsegs);
	free(out);
}

static void test_records(void **state)
{
	struct fixture *f = *state;
	char *out;
	assert_int_equal(run(&out, false, "--records '%s'", f->dir), 0);
	assert_int_equal(count_lines(out, "  record offset="), f->records);
	assert_non_null(strstr(out, "  record offset=0 ts=1700000000000 key_len=2 value_len=40 "
				    "headers=1 key=\"k0\"\n"));
	free(out);
}

static void test_verify_clean(void **state)
{
	struct fixture *f = *state;
	char *out, want[PATH_MAX + 128];
	assert_int_equal(run(&out, false, "--verify '%s'", f->dir), 0);
	snprintf(want, sizeof(want), "ok: %s: %u segments, %u batches, offsets 0-%" PRIu64 "\n",
		 f->dir, f->nsegs, NBATCHES, f->records - 1);
	assert_string_equal(out, want);
	free(out);
}

static void test_single_file(void **state)
{
	struct fixture *f = *state;
	struct found b[NBATCHES];
	char *out;
	for (uint32_t s = 0; s < f->nsegs; s++) {
		uint32_t n = segment_batches(f->seg[s], b, NBATCHES);
		assert_true(n > 0);
		assert_int_equal(run(&out, false, "'%s'", f->seg[s]), 0);
		assert_int_equal(count_lines(out, "batch "), n);
		const char *role = s + 1 < f->nsegs ? "(closed segment)" : "(last segment)";
		assert_non_null(strstr(out, role));
		char want[64];
		snprintf(want, sizeof(want), "batch pos=0 len=%u base=%" PRIu64 " ", b[0].len,
			 b[0].base);
		assert_non_null(strstr(out, want));
		free(out);
		assert_int_equal(run(&out, false, "--verify '%s'", f->seg[s]), 0);
		assert_int_equal(strncmp(out, "ok: ", 4), 0);
		free(out);
	}
}

/* One flipped bit anywhere in a closed segment's batch: header, body or last
 * byte. mqdump names that segment and a range holding the byte. */
static void test_flip_closed(void **state)
{
	struct fixture *f = *state;
	struct found b[NBATCHES];
	uint32_t n = segment_batches(f->seg[0], b, NBATCHES);
	assert_true(n >= 3);
	const struct found *v = &b[1];
	const uint32_t where[] = { 0, 5, 16, 33, v->len / 2, v->len - 1 };
	for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
		uint64_t flip = v->pos + where[i], start, end;
		char *out;
		assert_int_equal(tu_flip(f->seg[0], flip, 0x10), 0);
		assert_int_equal(run(&out, false, "--verify '%s'", f->dir), 1);
		problem_range(out, f->seg[0], &start, &end);
		if (!(start <= flip && flip < end))
			fail_msg("flip at %" PRIu64 " not in %" PRIu64 "-%" PRIu64 ":\n%s", flip,
				 start, end, out);
		assert_int_equal(start, v->pos);
		assert_int_equal(count_lines(out, f->seg[0]), 1);
		assert_null(strstr(out, "ok: "));
		free(out);
		/* The dump shows the earlier batch, then stops at this one. */
		assert_int_equal(run(&out, false, "'%s'", f->seg[0]), 1);
		assert_int_equal(count_lines(out, "batch pos="), 2);
		free(out);
		assert_int_equal(tu_flip(f->seg[0], flip, 0x10), 0);
	}
}

static void test_torn_last(void **state)
{
	struct fixture *f = *state;
	const char *last = f->seg[f->nsegs - 1];
	struct found b[NBATCHES];
	uint32_t n = segment_batches(last, b, NBATCHES);
	assert_true(n >= 2);
	uint64_t cut = b[n - 1].pos + b[n - 1].len / 2, start, end;
	assert_int_equal(tu_truncate(last, cut), 0);
	char *out;
	assert_int_equal(run(&out, false, "--verify '%s'", f->dir), 1);
	problem_range(out, last, &start, &end);
	assert_int_equal(start, b[n - 1].pos);
	assert_int_equal(end, cut);
	assert_non_null(strstr(out, "torn batch"));
	assert_non_null(strstr(out, "recovery cuts the log here"));
	free(out);
	assert_int_equal(run(&out, false, "--verify '%s'", last), 1);
	problem_range(out, last, &start, &end);
	assert_int_equal(start, b[n - 1].pos);
	free(out);
}

/* A write lost before a later one reached the disk (the zeros of the
 * preallocated file) is data after unwritten space, not a clean end. */
static void test_lost_write_last(void **state)
{
	struct fixture *f = *state;
	const char *last = f->seg[f->nsegs - 1];
	struct found b[NBATCHES];
	uint32_t n = segment_batches(last, b, NBATCHES);
	assert_true(n >= 2);
	int fd = open(last, O_WRONLY);
	assert_true(fd >= 0);
	uint8_t zero[BATCH_HEADER_SIZE] = { 0 };
	assert_int_equal(pwrite(fd, zero, sizeof(zero), (off_t)b[n - 2].pos), sizeof(zero));
	close(fd);
	char *out;
	uint64_t start, end;
	assert_int_equal(run(&out, false, "--verify '%s'", f->dir), 1);
	problem_range(out, last, &start, &end);
	assert_int_equal(start, b[n - 2].pos);
	assert_int_equal(end, b[n - 1].pos + b[n - 1].len);
	assert_non_null(strstr(out, "data after unwritten space"));
	free(out);
}

static void test_segment_gap(void **state)
{
	struct fixture *f = *state;
	char *out;
	assert_int_equal(remove(f->seg[1]), 0);
	assert_int_equal(run(&out, false, "--verify '%s'", f->dir), 1);
	char want[PATH_MAX + 32];
	snprintf(want, sizeof(want), "%s: starts at offset ", f->seg[2]);
	assert_non_null(strstr(out, want));
	assert_non_null(strstr(out, "are missing"));
	free(out);
}

static void index_path(const struct fixture *f, uint32_t s, const char *ext, char *out)
{
	size_t n = strlen(f->seg[s]);
	snprintf(out, PATH_MAX, "%.*s%s", (int)(n - 4), f->seg[s], ext);
}

static void test_index_damage(void **state)
{
	struct fixture *f = *state;
	char idx[PATH_MAX], tix[PATH_MAX], *out;

	/* Missing or ragged index files are rebuilt by the broker: warnings. */
	index_path(f, 0, ".tix", tix);
	assert_int_equal(remove(tix), 0);
	assert_int_equal(run(&out, false, "--verify '%s'", f->dir), 0);
	assert_int_equal(count_lines(out, tix), 1);
	assert_non_null(strstr(out, "warning: time index missing"));
	assert_non_null(strstr(out, "ok: "));
	free(out);

	/* An entry that points inside a batch passes the broker's checks and
	 * misleads lookups: a problem, named by the entry's bytes. */
	index_path(f, 0, ".idx", idx);
	assert_true(tu_file_size(idx) >= 2 * IDX_ENTRY_SIZE);
	assert_int_equal(tu_flip(idx, IDX_ENTRY_SIZE + 4, 0x01), 0);
	assert_int_equal(run(&out, false, "--verify '%s'", f->dir), 1);
	uint64_t start, end;
	problem_range(out, idx, &start, &end);
	assert_int_equal(start, IDX_ENTRY_SIZE);
	assert_int_equal(end, 2 * IDX_ENTRY_SIZE);
	assert_non_null(strstr(out, "points inside a batch"));
	free(out);
}

static void test_usage(void **state)
{
	struct fixture *f = *state;
	char *out;
	const char *bad[] = { "", "--bogus x", "-q x", "--verify --records x", "a b" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(run(&out, true, "%s", bad[i]), 2);
		assert_int_equal(strncmp(out, "mqdump: ", 8), 0);
		assert_int_equal(count_lines(out, ""), 1);
		assert_int_equal(out[strlen(out) - 1], '\n');
		free(out);
	}
	assert_int_equal(run(&out, true, "'%s/nope'", f->dir), 2);
	assert_int_equal(count_lines(out, ""), 1);
	assert_non_null(strstr(out, "No such file or directory"));
	free(out);
	/* A directory without segments is not a partition log. */
	char *empty = tu_tmpdir("mqdump-empty");
	assert_int_equal(run(&out, true, "--verify '%s'", empty), 2);
	assert_int_equal(count_lines(out, ""), 1);
	free(out);
	tu_rmtree(empty);
	free(empty);
	assert_int_equal(run(&out, false, "--help"), 0);
	assert_int_equal(strncmp(out, "Usage: mqdump", 13), 0);
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_dump_lists_batches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_clean, setup, teardown),
		cmocka_unit_test_setup_teardown(test_single_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flip_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_last, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lost_write_last, setup, teardown),
		cmocka_unit_test_setup_teardown(test_segment_gap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_damage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
	};
	return cmocka_run_group_tests(tests, find_mqdump, NULL);
}
