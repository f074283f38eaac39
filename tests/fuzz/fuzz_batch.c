/* fuzz_batch.c — fuzz target for the batch parser, verifier, record iterator
 * and header pairs: any bytes must be judged without a crash, and whatever
 * iterates cleanly must survive a rebuild with batch_builder unchanged.
 *
 * The input is a run of batches back to back. A batch whose header parses
 * but whose checksum does not match has its checksum fixed up, so that the
 * record code is reached by inputs no fuzzer could checksum by itself.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/endian.h"
#include "storage/batch.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Batches looked at per input: enough for any interesting run. */
#define BATCHES_PER_INPUT 64

/* abort() rather than assert(): the checks must hold in every build. */
#define CHECK(cond)                     \
	do {                            \
		if (!(cond))            \
			abort();        \
	} while (0)

static bool within(const void *p, size_t len, const uint8_t *lo, const uint8_t *hi)
{
	const uint8_t *q = p;
	return len == 0 || (q >= lo && q <= hi && len <= (size_t)(hi - q));
}

/* Walks header pairs over arbitrary bytes: every pair inside, progress on
 * every step, and a clean end only at the end. */
static void walk_pairs(const uint8_t *p, const uint8_t *end, uint32_t want, bool exact)
{
	const uint8_t *start = p;
	struct batch_kv kv;
	uint32_t n = 0;
	int ret;
	while ((ret = batch_kv_next(&p, end, &kv)) == 1) {
		CHECK(within(kv.name, kv.name_len, start, end));
		CHECK(within(kv.value, kv.value_len, start, end));
		CHECK(p <= end);
		n++;
		CHECK(n <= (size_t)(end - start)); /* each pair takes two bytes at least */
	}
	CHECK(ret == 0 || ret == -EBADMSG);
	CHECK(ret != 0 || p == end);
	if (exact) {
		CHECK(ret == 0);
		CHECK(n == want);
	}
}

/* Scratch a batch's records need: only lz4 batches need any. */
static uint8_t *scratch_for(const struct batch_hdr *h, size_t *cap)
{
	*cap = 0;
	if (batch_compression(h) != BATCH_COMPRESSION_LZ4)
		return NULL;
	/* batch_parse bounds records_size by BATCH_RAW_SIZE_MAX. */
	CHECK(h->records_size <= BATCH_RAW_SIZE_MAX);
	uint8_t *s = malloc(h->records_size);
	CHECK(s != NULL);
	*cap = h->records_size;
	return s;
}

/* Records of two batches, in lock step, must be the same. */
static void compare_records(const uint8_t *a, uint8_t *sa, size_t ca, const uint8_t *b,
			    uint8_t *sb, size_t cb)
{
	struct batch_iter ia, ib;
	struct batch_record ra, rb;
	CHECK(batch_iter_init(&ia, a, sa, ca) == 0);
	CHECK(batch_iter_init(&ib, b, sb, cb) == 0);
	CHECK(ia.hdr.record_count == ib.hdr.record_count);
	CHECK(ia.hdr.first_timestamp == ib.hdr.first_timestamp);
	CHECK(ia.hdr.max_timestamp == ib.hdr.max_timestamp);
	int x, y;
	while ((x = batch_iter_next(&ia, &ra)) == 1) {
		y = batch_iter_next(&ib, &rb);
		CHECK(y == 1);
		CHECK(ra.offset == rb.offset && ra.timestamp == rb.timestamp);
		CHECK(ra.key_len == rb.key_len && ra.value_len == rb.value_len);
		CHECK(ra.key_len == 0 || memcmp(ra.key, rb.key, ra.key_len) == 0);
		CHECK(ra.value_len == 0 || memcmp(ra.value, rb.value, ra.value_len) == 0);
		CHECK(ra.header_count == rb.header_count);
		/* The encodings may differ (overlong varints); the pairs may not. */
		const uint8_t *pa = ra.headers, *pb = rb.headers;
		struct batch_kv ka, kb;
		for (uint32_t i = 0; i < ra.header_count; i++) {
			CHECK(batch_kv_next(&pa, ra.headers + ra.headers_len, &ka) == 1);
			CHECK(batch_kv_next(&pb, rb.headers + rb.headers_len, &kb) == 1);
			CHECK(ka.name_len == kb.name_len && ka.value_len == kb.value_len);
			CHECK(ka.name_len == 0 || memcmp(ka.name, kb.name, ka.name_len) == 0);
			CHECK(ka.value_len == 0 || memcmp(ka.value, kb.value, ka.value_len) == 0);
		}
	}
	CHECK(x == 0);
	CHECK(batch_iter_next(&ib, &rb) == 0);
}

/* Rebuilds a batch that iterates cleanly from its records, plain and lz4,
 * and checks both hold the same records. */
static void rebuild(const uint8_t *b, const struct batch_hdr *h, uint8_t *scratch, size_t cap)
{
	/* A builder stops at BATCH_SIZE_MAX; an lz4 section may be larger. */
	if (h->records_size > BATCH_SIZE_MAX - BATCH_HEADER_SIZE)
		return;
	/* Canonical varints are never longer than what was read, so the
	 * original section size is room enough. */
	size_t cap_out = BATCH_HEADER_SIZE + h->records_size;
	uint8_t *out = malloc(cap_out);
	CHECK(out != NULL);
	struct batch_builder bb;
	batch_builder_init(&bb, out, cap_out);

	struct batch_iter it;
	struct batch_record rec;
	struct batch_kv kv[RECORD_HEADERS_MAX];
	CHECK(batch_iter_init(&it, b, scratch, cap) == 0);
	int ret;
	while ((ret = batch_iter_next(&it, &rec)) == 1) {
		const uint8_t *p = rec.headers;
		CHECK(rec.header_count <= RECORD_HEADERS_MAX);
		for (uint32_t i = 0; i < rec.header_count; i++)
			CHECK(batch_kv_next(&p, rec.headers + rec.headers_len, &kv[i]) == 1);
		CHECK(batch_add(&bb, rec.timestamp, rec.key, rec.key_len, rec.value, rec.value_len,
				kv, rec.header_count) == 0);
	}
	CHECK(ret == 0);
	CHECK(bb.count == h->record_count);
	CHECK(bb.len <= cap_out);
	bool same_size = bb.len == cap_out;

	/* lz4 first: batch_seal_lz4 leaves the builder as it is. */
	size_t zcap = batch_lz4_bound(bb.len);
	uint8_t *z = malloc(zcap);
	CHECK(z != NULL);
	ssize_t zl = batch_seal_lz4(&bb, z, zcap, h->producer_id, h->base_sequence);
	CHECK(zl > (ssize_t)BATCH_HEADER_SIZE);

	uint32_t len = batch_seal(&bb, h->producer_id, h->base_sequence);
	struct batch_hdr h2;
	CHECK(batch_verify(out, len, &h2) == 0);
	CHECK(h2.record_count == h->record_count);
	CHECK(h2.first_timestamp == h->first_timestamp);
	CHECK(h2.max_timestamp == h->max_timestamp);
	CHECK(h2.producer_id == h->producer_id && h2.base_sequence == h->base_sequence);
	CHECK(batch_check_records(out, &h2, NULL, 0) == 0);
	/* Equal size means every varint was canonical: the bytes must match. */
	if (same_size && batch_compression(h) == BATCH_COMPRESSION_NONE)
		CHECK(memcmp(out + BATCH_HEADER_SIZE, b + BATCH_HEADER_SIZE, h->records_size) == 0);

	/* Compare at the original's base offset. */
	batch_set_base_offset(out, h->base_offset);
	compare_records(b, scratch, cap, out, NULL, 0);

	struct batch_hdr hz;
	CHECK(batch_verify(z, (size_t)zl, &hz) == 0);
	CHECK(hz.records_size == len - BATCH_HEADER_SIZE);
	uint8_t *zs = malloc(hz.records_size);
	CHECK(zs != NULL);
	CHECK(batch_check_records(z, &hz, zs, hz.records_size) == 0);
	batch_set_base_offset(z, h->base_offset);
	compare_records(out, NULL, 0, z, zs, hz.records_size);
	free(zs);
	free(z);
	free(out);
}

/* Everything about one verified batch b of exactly h->length bytes. */
static void check_batch(uint8_t *b, const struct batch_hdr *h)
{
	size_t cap;
	uint8_t *scratch = scratch_for(h, &cap);
	int rc = batch_check_records(b, h, scratch, cap);
	CHECK(rc == 0 || rc == -EBADMSG);

	struct batch_iter it;
	int ret = batch_iter_init(&it, b, scratch, cap);
	if (ret != 0) {
		/* Only decompression can fail up front. */
		CHECK(batch_compression(h) == BATCH_COMPRESSION_LZ4);
		CHECK(ret == -EBADMSG && rc == -EBADMSG);
		free(scratch);
		return;
	}
	if (scratch != NULL) {
		/* Scratch one byte short is refused before any decompression. */
		struct batch_iter small;
		CHECK(batch_iter_init(&small, b, scratch, cap - 1) == -ENOSPC);
	}
	const uint8_t *lo = scratch ? scratch : b + BATCH_HEADER_SIZE;
	const uint8_t *hi = lo + h->records_size;
	struct batch_record rec;
	uint32_t seen = 0;
	int64_t max = INT64_MIN;
	while ((ret = batch_iter_next(&it, &rec)) == 1) {
		CHECK(seen < h->record_count);
		CHECK(rec.offset == h->base_offset + seen);
		if (seen == 0)
			CHECK(rec.timestamp == h->first_timestamp);
		CHECK(rec.timestamp <= h->max_timestamp);
		if (rec.timestamp > max)
			max = rec.timestamp;
		CHECK((rec.key == NULL) == (rec.key_len == 0));
		CHECK(within(rec.key, rec.key_len, lo, hi));
		CHECK(within(rec.value, rec.value_len, lo, hi));
		CHECK(rec.headers_len == 0 || within(rec.headers, rec.headers_len, lo, hi));
		CHECK(rec.header_count <= RECORD_HEADERS_MAX);
		walk_pairs(rec.headers, rec.headers + rec.headers_len, rec.header_count, true);
		seen++;
	}
	CHECK(ret == 0 || ret == -EBADMSG);
	/* An error is sticky; so is the end. */
	CHECK(batch_iter_next(&it, &rec) == ret);
	if (ret == 0)
		CHECK(seen == h->record_count);
	bool clean = ret == 0 && max == h->max_timestamp;
	CHECK(clean == (rc == 0));
	if (clean)
		rebuild(b, h, scratch, cap);
	free(scratch);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The whole input as header pairs, too. */
	walk_pairs(data, data + size, 0, false);

	size_t pos = 0;
	for (int nb = 0; nb < BATCHES_PER_INPUT; nb++) {
		const uint8_t *p = data + pos;
		size_t avail = size - pos;
		struct batch_hdr h, hv;
		int pr = batch_parse(p, avail, &h);
		int vr = batch_verify(p, avail, &hv);
		CHECK(pr == 0 || pr == -ENODATA || pr == -EBADMSG);
		CHECK((avail < BATCH_HEADER_SIZE) == (pr == -ENODATA));
		if (avail >= BATCH_HEADER_SIZE && batch_header_is_zero(p))
			CHECK(pr == -EBADMSG);
		if (pr != 0) {
			CHECK(vr == pr);
			break;
		}
		CHECK(h.length >= BATCH_HEADER_SIZE + RECORD_SIZE_MIN);
		CHECK(h.length <= BATCH_SIZE_MAX);
		CHECK(h.record_count >= 1 && h.first_timestamp <= h.max_timestamp);
		if (h.length > avail) {
			CHECK(vr == -ENODATA);
			break;
		}
		CHECK(vr == 0 || vr == -EBADMSG);
		/* One byte short is torn, never bad. */
		CHECK(batch_verify(p, h.length - 1, &hv) == -ENODATA);

		/* An exact-size copy, so reads past the batch trip ASan. */
		uint8_t *b = malloc(h.length);
		CHECK(b != NULL);
		memcpy(b, p, h.length);
		if (vr != 0)
			le64_store(b + BATCH_OFF_CHECKSUM, batch_checksum(b, h.length));
		CHECK(batch_verify(b, h.length, &hv) == 0);
		check_batch(b, &hv);

		/* A new base offset keeps the batch valid. */
		uint64_t base = le64_load(b + BATCH_OFF_CHECKSUM) >> 2;
		batch_set_base_offset(b, base);
		CHECK(batch_verify(b, h.length, &hv) == 0 && hv.base_offset == base);
		free(b);
		pos += h.length;
	}
	return 0;
}
