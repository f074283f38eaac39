/* gen_corpus.c — writes the seed corpora of fuzz_batch and fuzz_recovery.
 * Not part of the build; rerun by hand when the batch format changes:
 *
 *   cc -std=gnu11 -D_GNU_SOURCE -I. tests/fuzz/gen_corpus.c storage/batch.c \
 *      storage/segment.c -o /tmp/gen_corpus -llz4 -lxxhash
 *   /tmp/gen_corpus tests/fuzz/corpus
 *
 * Seeds are valid batches and segments plus the damage recovery must
 * handle (torn, flipped, out of sequence, zero tails, stale index entries),
 * so the fuzzers start from inputs that pass the checksum.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/endian.h"
#include "storage/batch.h"
#include "storage/segment.h"

/* Recovery input prefix flags: see fuzz_recovery.c. */
enum {
	FL_IDX = 1 << 0,
	FL_TIX = 1 << 1,
	FL_APPEND = 1 << 2,
	FL_LZ4 = 1 << 3,
	FL_SHORT_END = 1 << 4,
	FL_TWO_SEGS = 1 << 5,
	FL_GAP = 1 << 6,
};

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void put(struct buf *b, const void *p, size_t len)
{
	if (b->len + len > b->cap) {
		b->cap = (b->len + len) * 2 + 256;
		b->p = realloc(b->p, b->cap);
		if (b->p == NULL)
			die("realloc");
	}
	if (len > 0)
		memcpy(b->p + b->len, p, len);
	b->len += len;
}

static void write_seed(const char *dir, const char *name, const void *p, size_t len)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, p, len) != (ssize_t)len)
		die(path);
	close(fd);
}

/* A batch of `count` records shaped by `kind`, with the given base offset. */
static void make_batch(struct buf *out, int kind, uint32_t count, int64_t ts0, bool lz4,
		       uint64_t base)
{
	static const struct batch_kv hdrs[] = {
		{ .name = "trace", .name_len = 5, .value = "0af7651916cd43dd", .value_len = 16 },
		{ .name = "", .name_len = 0, .value = "", .value_len = 0 },
	};
	static const char text[] = "the quick brown fox jumps over the lazy dog";
	size_t cap = 1 << 16;
	uint8_t *raw = malloc(cap);
	if (raw == NULL)
		die("malloc");
	struct batch_builder b;
	batch_builder_init(&b, raw, cap);
	for (uint32_t i = 0; i < count; i++) {
		char key[16];
		int kl = snprintf(key, sizeof(key), "key-%u", i);
		/* Timestamps step back now and then, as producers' clocks do. */
		int64_t ts = ts0 + (int64_t)(i * 10) - (i % 3 == 2 ? 25 : 0);
		int ret;
		switch (kind) {
		case 0: /* keys, values, headers */
			ret = batch_add(&b, ts, key, (uint32_t)kl, text, (uint32_t)(i * 7 % 40),
					hdrs, i % 3);
			break;
		case 1: /* no keys, empty values */
			ret = batch_add(&b, ts, NULL, 0, NULL, 0, NULL, 0);
			break;
		default: /* repetitive: compresses well */
			ret = batch_add(&b, ts0, "k", 1, text, 32, NULL, 0);
			break;
		}
		if (ret != 0) {
			fprintf(stderr, "batch_add: %d\n", ret);
			exit(1);
		}
	}
	if (lz4) {
		size_t zcap = batch_lz4_bound(b.len);
		uint8_t *z = malloc(zcap);
		ssize_t zl = z ? batch_seal_lz4(&b, z, zcap, 0, 0) : -1;
		if (zl < 0)
			die("batch_seal_lz4");
		batch_set_base_offset(z, base);
		put(out, z, (size_t)zl);
		free(z);
	} else {
		uint32_t len = batch_seal(&b, 7, 100);
		batch_set_base_offset(raw, base);
		put(out, raw, len);
	}
	free(raw);
}

/* A hand-written record section behind a valid header. */
static void raw_batch(struct buf *out, const uint8_t *recs, uint32_t n, uint32_t count,
		      int64_t first, int64_t max)
{
	uint8_t h[BATCH_HEADER_SIZE];
	memset(h, 0, sizeof(h));
	h[BATCH_OFF_MAGIC] = BATCH_MAGIC;
	le32_store(h + BATCH_OFF_LENGTH, BATCH_HEADER_SIZE + n);
	le32_store(h + BATCH_OFF_RECORD_COUNT, count);
	le32_store(h + BATCH_OFF_RECORDS_SIZE, n);
	le64_store(h + BATCH_OFF_FIRST_TIMESTAMP, (uint64_t)first);
	le64_store(h + BATCH_OFF_MAX_TIMESTAMP, (uint64_t)max);
	size_t at = out->len;
	put(out, h, sizeof(h));
	put(out, recs, n);
	batch_set_base_offset(out->p + at, 0);
}

static void gen_batch_seeds(const char *dir)
{
	struct buf b = { 0 };

	make_batch(&b, 0, 1, 1000, false, 0);
	write_seed(dir, "plain-one", b.p, b.len);
	b.len = 0;
	make_batch(&b, 0, 12, 1700000000000, false, 42);
	write_seed(dir, "plain-mixed", b.p, b.len);
	b.len = 0;
	make_batch(&b, 0, 12, 1700000000000, true, 42);
	write_seed(dir, "lz4-mixed", b.p, b.len);
	b.len = 0;
	make_batch(&b, 2, 200, 5, true, 0);
	write_seed(dir, "lz4-repetitive", b.p, b.len);
	b.len = 0;
	make_batch(&b, 1, 1, -3, false, 0);
	write_seed(dir, "minimal", b.p, b.len);

	/* Three batches back to back, plain and lz4. */
	b.len = 0;
	make_batch(&b, 0, 3, 10, false, 0);
	make_batch(&b, 1, 5, 20, true, 3);
	make_batch(&b, 2, 4, 30, false, 8);
	write_seed(dir, "concat", b.p, b.len);
	/* The same, torn inside the last batch. */
	write_seed(dir, "concat-torn", b.p, b.len - 9);
	/* A header alone. */
	write_seed(dir, "header-only", b.p, BATCH_HEADER_SIZE);

	/* Overlong varints: valid, but not what a builder writes. */
	static const uint8_t overlong[] = { 0x8a, 0x00, 0x80, 0x00, 0x81, 0x00, 'k',
					    0x80, 0x00, 0x80, 0x80, 0x00 };
	b.len = 0;
	raw_batch(&b, overlong, sizeof(overlong), 1, 9, 9);
	write_seed(dir, "overlong-varints", b.p, b.len);

	/* 64 empty headers: the most a record may have. */
	uint8_t many[4 + 2 * RECORD_HEADERS_MAX + 2];
	size_t n = 0;
	many[n++] = 0x80 | ((4 + 2 * RECORD_HEADERS_MAX) & 0x7f);
	many[n++] = (4 + 2 * RECORD_HEADERS_MAX) >> 7;
	many[n++] = 0;
	many[n++] = 0;
	many[n++] = 0;
	many[n++] = RECORD_HEADERS_MAX;
	memset(many + n, 0, 2 * RECORD_HEADERS_MAX);
	n += 2 * RECORD_HEADERS_MAX;
	b.len = 0;
	raw_batch(&b, many, (uint32_t)n, 1, 0, 0);
	write_seed(dir, "headers-64", b.p, b.len);

	/* Valid checksum, broken framing: a body length one too long. */
	static const uint8_t framing[] = { 5, 0, 0, 0, 0, 4, 0, 0, 0, 0 };
	b.len = 0;
	raw_batch(&b, framing, sizeof(framing), 2, 1, 1);
	write_seed(dir, "bad-framing", b.p, b.len);

	/* An lz4 batch whose block is garbage (checksum fixed up). */
	b.len = 0;
	make_batch(&b, 0, 6, 100, true, 0);
	for (size_t i = BATCH_HEADER_SIZE + 4; i < b.len; i += 5)
		b.p[i] ^= 0x5a;
	batch_set_base_offset(b.p, 0);
	write_seed(dir, "lz4-garbage", b.p, b.len);

	uint8_t zeros[128] = { 0 };
	write_seed(dir, "zeros", zeros, sizeof(zeros));
	free(b.p);
}

/* A segment of `nb` batches with consecutive offsets from 0; positions and
 * offsets of each batch are returned for building index entries. */
static void make_segment(struct buf *seg, int nb, bool lz4, uint32_t *pos, uint32_t *off)
{
	uint64_t base = 0;
	for (int i = 0; i < nb; i++) {
		uint32_t count = 1 + (uint32_t)(i % 4);
		pos[i] = (uint32_t)seg->len;
		off[i] = (uint32_t)base;
		make_batch(seg, i % 3 == 1 ? 1 : 0, count, 1000 + i * 100, lz4 && i % 2 == 0, base);
		base += count;
	}
}

/* prefix + idx + tix + [split + closed] + log, as fuzz_recovery splits its
 * input; the closed segment only with FL_TWO_SEGS. */
static void write_two(const char *dir, const char *name, uint8_t flags, const struct buf *idx,
		      const struct buf *tix, const uint8_t *closed, size_t closed_len,
		      const uint8_t *log, size_t log_len)
{
	struct buf out = { 0 };
	uint8_t pre[3] = { flags, (uint8_t)(idx ? idx->len : 0), (uint8_t)(tix ? tix->len : 0) };
	if ((idx && idx->len > 255) || (tix && tix->len > 255) || closed_len > UINT16_MAX) {
		fprintf(stderr, "%s: too long for the prefix\n", name);
		exit(1);
	}
	put(&out, pre, sizeof(pre));
	if (idx)
		put(&out, idx->p, idx->len);
	if (tix)
		put(&out, tix->p, tix->len);
	if (flags & FL_TWO_SEGS) {
		uint8_t split[2];
		le16_store(split, (uint16_t)closed_len);
		put(&out, split, sizeof(split));
		put(&out, closed, closed_len);
	}
	put(&out, log, log_len);
	write_seed(dir, name, out.p, out.len);
	free(out.p);
}

static void write_recovery(const char *dir, const char *name, uint8_t flags, const struct buf *idx,
			   const struct buf *tix, const uint8_t *log, size_t log_len)
{
	write_two(dir, name, flags, idx, tix, NULL, 0, log, log_len);
}

static void put_idx(struct buf *b, uint32_t rel, uint32_t pos)
{
	uint8_t e[IDX_ENTRY_SIZE];
	idx_encode(e, &(struct idx_entry){ .rel_offset = rel, .pos = pos });
	put(b, e, sizeof(e));
}

static void put_tix(struct buf *b, int64_t ts, uint32_t rel)
{
	uint8_t e[TIX_ENTRY_SIZE];
	tix_encode(e, &(struct tix_entry){ .timestamp = ts, .rel_offset = rel });
	put(b, e, sizeof(e));
}

static void gen_recovery_seeds(const char *dir)
{
	struct buf seg = { 0 }, idx = { 0 }, tix = { 0 };
	uint32_t pos[8], off[8];
	make_segment(&seg, 6, false, pos, off);

	write_recovery(dir, "empty", FL_APPEND, NULL, NULL, NULL, 0);
	write_seed(dir, "tiny", "\xb1", 1);
	write_recovery(dir, "clean", FL_APPEND, NULL, NULL, seg.p, seg.len);
	write_recovery(dir, "clean-short-end", FL_SHORT_END, NULL, NULL, seg.p, seg.len);

	/* A valid index: entries at batches 0, 2 and 4, time entries too. */
	put_idx(&idx, off[0], pos[0]);
	put_idx(&idx, off[2], pos[2]);
	put_idx(&idx, off[4], pos[4]);
	put_tix(&tix, 1000, off[0]);
	put_tix(&tix, 1300, off[2]);
	put_tix(&tix, 1500, off[4]);
	write_recovery(dir, "indexed", FL_IDX | FL_TIX | FL_APPEND, &idx, &tix, seg.p, seg.len);

	/* Torn in the last batch; and a tail of zeros (preallocated space). */
	write_recovery(dir, "torn", FL_IDX | FL_APPEND, &idx, NULL, seg.p, seg.len - 11);
	struct buf z = { 0 };
	put(&z, seg.p, seg.len);
	uint8_t zeros[300] = { 0 };
	put(&z, zeros, sizeof(zeros));
	write_recovery(dir, "zero-tail", FL_APPEND | FL_LZ4, NULL, NULL, z.p, z.len);
	/* Fewer than a header's worth of non-zero bytes at the end. */
	z.len = seg.len;
	put(&z, "\x01\x02\x03", 3);
	write_recovery(dir, "short-tail", FL_APPEND, NULL, NULL, z.p, z.len);

	/* A flipped bit in batch 3; the index runs ahead of the damage. */
	z.len = 0;
	put(&z, seg.p, seg.len);
	z.p[pos[3] + BATCH_HEADER_SIZE + 2] ^= 0x10;
	write_recovery(dir, "flipped", FL_IDX | FL_TIX | FL_APPEND, &idx, &tix, z.p, z.len);
	/* A flipped bit in the last batch, which recovery scans. */
	z.len = 0;
	put(&z, seg.p, seg.len);
	z.p[pos[5] + BATCH_HEADER_SIZE + 3] ^= 0x01;
	write_recovery(dir, "flipped-tail", FL_IDX | FL_APPEND, &idx, NULL, z.p, z.len);
	/* Garbage before an indexed batch: recovery restarts past it. */
	z.len = 0;
	put(&z, seg.p, seg.len);
	memset(z.p + pos[1], 0xee, pos[2] - pos[1]);
	write_recovery(dir, "garbage-before-index", FL_IDX | FL_APPEND, &idx, NULL, z.p, z.len);

	/* Batch 4 out of sequence (its base offset stamped wrong). */
	z.len = 0;
	put(&z, seg.p, seg.len);
	batch_set_base_offset(z.p + pos[4], off[4] + 1);
	write_recovery(dir, "out-of-sequence", FL_APPEND, NULL, NULL, z.p, z.len);

	/* Stale index: entries past the data and out of order. */
	struct buf bad = { 0 };
	put_idx(&bad, 0, 0);
	put_idx(&bad, off[3], pos[3] + 1);
	put_idx(&bad, off[5] + 50, (uint32_t)seg.len + 100);
	write_recovery(dir, "stale-index", FL_IDX | FL_TIX | FL_APPEND, &bad, &tix, seg.p,
		       seg.len);

	/* lz4 batches throughout. */
	struct buf zs = { 0 };
	make_segment(&zs, 5, true, pos, off);
	write_recovery(dir, "lz4", FL_APPEND | FL_LZ4, NULL, NULL, zs.p, zs.len);
	write_recovery(dir, "lz4-torn", 0, NULL, NULL, zs.p, zs.len - 40);

	/* Two segments split after batch 3: the active one's offsets go on
	 * from the closed one's, and its index is relative to its base. */
	seg.len = 0;
	make_segment(&seg, 6, false, pos, off);
	idx.len = 0;
	put_idx(&idx, 0, 0);
	put_idx(&idx, off[5] - off[3], pos[5] - pos[3]);
	write_two(dir, "two-segments", FL_TWO_SEGS | FL_IDX | FL_APPEND, &idx, NULL, seg.p, pos[3],
		  seg.p + pos[3], seg.len - pos[3]);
	/* Five offsets missing between them. */
	z.len = 0;
	put(&z, seg.p, seg.len);
	for (int i = 3; i < 6; i++)
		batch_set_base_offset(z.p + pos[i], off[i] + 5);
	write_two(dir, "two-segments-gap", FL_TWO_SEGS | FL_GAP | FL_APPEND, NULL, NULL, z.p,
		  pos[3], z.p + pos[3], z.len - pos[3]);
	/* The closed segment damaged in its middle: reads there must refuse. */
	z.len = 0;
	put(&z, seg.p, seg.len);
	z.p[pos[1] + 5] ^= 0x40;
	write_two(dir, "two-segments-damaged", FL_TWO_SEGS | FL_APPEND, NULL, NULL, z.p, pos[3],
		  z.p + pos[3], z.len - pos[3]);

	free(zs.p);
	free(bad.p);
	free(z.p);
	free(idx.p);
	free(tix.p);
	free(seg.p);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	char path[1024];
	snprintf(path, sizeof(path), "%s/fuzz_batch", argv[1]);
	if (mkdir(path, 0755) != 0 && errno != EEXIST)
		die(path);
	gen_batch_seeds(path);
	snprintf(path, sizeof(path), "%s/fuzz_recovery", argv[1]);
	if (mkdir(path, 0755) != 0 && errno != EEXIST)
		die(path);
	gen_recovery_seeds(path);
	return 0;
}
