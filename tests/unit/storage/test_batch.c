/* test_batch.c — the batch format and varints: builder round trips, and that
 * every torn, flipped or malformed batch is refused rather than misread. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/endian.h"
#include "common/varint.h"
#include "storage/batch.h"
#include "tests/unit/testutil.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* One record as a test wants it; key == NULL means no key. */
struct rec {
	int64_t ts;
	const void *key;
	uint32_t key_len;
	const void *value;
	uint32_t value_len;
	const struct batch_kv *hdrs;
	uint32_t nh;
};

/* Copies into a buffer of exactly len bytes, so that ASan sees any read past
 * the end of a batch. */
static uint8_t *exact_copy(const void *p, size_t len)
{
	uint8_t *c = malloc(len ? len : 1);
	assert_non_null(c);
	if (len > 0)
		memcpy(c, p, len);
	return c;
}

static void add_all(struct batch_builder *b, const struct rec *r, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(batch_add(b, r[i].ts, r[i].key, r[i].key_len, r[i].value,
					   r[i].value_len, r[i].hdrs, r[i].nh),
				 0);
}

/* Builds and seals a batch of the records. Returns an exact-size copy. */
static uint8_t *build(const struct rec *r, uint32_t n, bool lz4, uint64_t pid, uint32_t seq,
		      uint32_t *len)
{
	size_t cap = BATCH_HEADER_SIZE;
	for (uint32_t i = 0; i < n; i++)
		cap += batch_record_size(r[i].key_len, r[i].value_len, r[i].hdrs, r[i].nh);
	uint8_t *buf = malloc(cap);
	assert_non_null(buf);
	struct batch_builder b;
	batch_builder_init(&b, buf, cap);
	add_all(&b, r, n);
	assert_int_equal(b.count, n);

	uint8_t *out;
	if (lz4) {
		size_t ocap = batch_lz4_bound(b.len);
		uint8_t *tmp = malloc(ocap);
		assert_non_null(tmp);
		ssize_t got = batch_seal_lz4(&b, tmp, ocap, pid, seq);
		assert_true(got > (ssize_t)BATCH_HEADER_SIZE);
		*len = (uint32_t)got;
		out = exact_copy(tmp, (size_t)got);
		free(tmp);
	} else {
		*len = batch_seal(&b, pid, seq);
		assert_int_equal(*len, b.len);
		out = exact_copy(buf, *len);
	}
	free(buf);
	return out;
}

/* Iterates the batch and checks it holds exactly the records, from `base`. */
static void expect_records(const uint8_t *batch, uint32_t len, const struct rec *r, uint32_t n,
			   uint64_t base)
{
	struct batch_hdr h;
	assert_int_equal(batch_verify(batch, len, &h), 0);
	assert_int_equal(h.length, len);
	assert_int_equal(h.record_count, n);
	assert_int_equal(h.base_offset, base);
	assert_int_equal(batch_last_offset(&h), base + n - 1);
	int64_t max = r[0].ts;
	for (uint32_t i = 1; i < n; i++)
		if (r[i].ts > max)
			max = r[i].ts;
	assert_true(h.first_timestamp == r[0].ts);
	assert_true(h.max_timestamp == max);

	uint8_t *scratch = malloc(h.records_size);
	assert_non_null(scratch);
	assert_int_equal(batch_check_records(batch, &h, scratch, h.records_size), 0);

	struct batch_iter it;
	struct batch_record rec;
	assert_int_equal(batch_iter_init(&it, batch, scratch, h.records_size), 0);
	for (uint32_t i = 0; i < n; i++) {
		assert_int_equal(batch_iter_next(&it, &rec), 1);
		assert_int_equal(rec.offset, base + i);
		assert_true(rec.timestamp == r[i].ts);
		assert_int_equal(rec.key_len, r[i].key_len);
		if (r[i].key_len == 0)
			assert_null(rec.key);
		else
			assert_memory_equal(rec.key, r[i].key, r[i].key_len);
		assert_int_equal(rec.value_len, r[i].value_len);
		if (r[i].value_len > 0)
			assert_memory_equal(rec.value, r[i].value, r[i].value_len);
		assert_int_equal(rec.header_count, r[i].nh);

		const uint8_t *p = rec.headers, *end = rec.headers + rec.headers_len;
		struct batch_kv kv;
		for (uint32_t k = 0; k < r[i].nh; k++) {
			const struct batch_kv *want = &r[i].hdrs[k];
			assert_int_equal(batch_kv_next(&p, end, &kv), 1);
			assert_int_equal(kv.name_len, want->name_len);
			assert_int_equal(kv.value_len, want->value_len);
			if (want->name_len > 0)
				assert_memory_equal(kv.name, want->name, want->name_len);
			if (want->value_len > 0)
				assert_memory_equal(kv.value, want->value, want->value_len);
		}
		assert_int_equal(batch_kv_next(&p, end, &kv), 0);
	}
	/* The end is sticky. */
	assert_int_equal(batch_iter_next(&it, &rec), 0);
	assert_int_equal(batch_iter_next(&it, &rec), 0);
	free(scratch);
}

/* Wraps a hand-written record section in a header with a valid checksum. */
static uint8_t *raw_batch(const uint8_t *recs, uint32_t recs_len, uint32_t count, int64_t first,
			  int64_t max, uint32_t *len)
{
	*len = BATCH_HEADER_SIZE + recs_len;
	uint8_t *b = calloc(1, *len);
	assert_non_null(b);
	b[BATCH_OFF_MAGIC] = BATCH_MAGIC;
	le32_store(b + BATCH_OFF_LENGTH, *len);
	le32_store(b + BATCH_OFF_RECORD_COUNT, count);
	le32_store(b + BATCH_OFF_RECORDS_SIZE, recs_len);
	le64_store(b + BATCH_OFF_FIRST_TIMESTAMP, (uint64_t)first);
	le64_store(b + BATCH_OFF_MAX_TIMESTAMP, (uint64_t)max);
	memcpy(b + BATCH_HEADER_SIZE, recs, recs_len);
	batch_set_base_offset(b, 0);
	return b;
}

/* batch_check_records on a batch, with a scratch buffer of the size it asks. */
static int check_records(const uint8_t *batch, uint32_t len)
{
	struct batch_hdr h;
	int ret = batch_verify(batch, len, &h);
	assert_int_equal(ret, 0);
	uint8_t *scratch = malloc(h.records_size);
	assert_non_null(scratch);
	ret = batch_check_records(batch, &h, scratch, h.records_size);
	free(scratch);
	return ret;
}

/* A typical batch: keys, a null key, an empty value, headers, timestamps
 * that go back and forth. Values are letters so that a misparsed length
 * byte read from them is too large to fit. */
static const struct batch_kv hdrs_a[] = {
	{ .name = "trace", .name_len = 5, .value = "abc123", .value_len = 6 },
	{ .name = "", .name_len = 0, .value = "", .value_len = 0 },
	{ .name = "route", .name_len = 5, .value = "", .value_len = 0 },
};
static const struct batch_kv hdrs_b[] = {
	{ .name = "h", .name_len = 1, .value = "v", .value_len = 1 },
};
static const struct rec sample[] = {
	{ 1000, "key", 3, "value", 5, hdrs_b, 1 },
	{ 1005, NULL, 0, "no key here", 11, NULL, 0 },
	{ 990, "k2", 2, "", 0, hdrs_a, 3 },
	{ 1005, "k3", 2, "xyz", 3, NULL, 0 },
	{ -5, "neg", 3, "past", 4, hdrs_b, 1 },
	{ 2000, NULL, 0, "", 0, NULL, 0 },
	{ 1999, "last", 4, "zz", 2, hdrs_a, 2 },
};

/* ---- varints ---- */

static void test_varint_roundtrip(void **state)
{
	(void)state;
	static const uint64_t vals[] = {
		0, 1, 127, 128, 255, 300, 16383, 16384, (1u << 21) - 1, 1u << 21,
		UINT32_MAX, (uint64_t)UINT32_MAX + 1, INT64_MAX, (uint64_t)INT64_MAX + 1,
		UINT64_MAX - 1, UINT64_MAX,
	};
	for (size_t i = 0; i < ARRAY_SIZE(vals); i++) {
		uint8_t buf[VARINT_MAX_BYTES];
		size_t n = varint_put(buf, vals[i]);
		assert_int_equal(n, varint_len(vals[i]));
		assert_in_range(n, 1, VARINT_MAX_BYTES);
		const uint8_t *p = buf;
		uint64_t v = 0;
		assert_int_equal(varint_get(&p, buf + n, &v), 0);
		assert_true(v == vals[i]);
		assert_ptr_equal(p, buf + n);

		/* Every shorter prefix is truncated, and leaves p alone. */
		for (size_t k = 0; k < n; k++) {
			p = buf;
			assert_int_equal(varint_get(&p, buf + k, &v), -1);
			assert_ptr_equal(p, buf);
		}
		uint32_t v32 = 0;
		p = buf;
		if (vals[i] <= UINT32_MAX) {
			assert_int_equal(varint_get32(&p, buf + n, &v32), 0);
			assert_int_equal(v32, vals[i]);
			assert_ptr_equal(p, buf + n);
		} else {
			assert_int_equal(varint_get32(&p, buf + n, &v32), -1);
			assert_ptr_equal(p, buf);
		}
	}
	uint8_t buf[VARINT_MAX_BYTES];
	assert_int_equal(varint_put(buf, UINT64_MAX), VARINT_MAX_BYTES);
	assert_int_equal(buf[VARINT_MAX_BYTES - 1], 0x01);
	assert_int_equal(varint_len(UINT32_MAX), 5);
}

static void test_varint_rejects(void **state)
{
	(void)state;
	const uint8_t *p;
	uint64_t v = 0;

	/* Empty input. */
	static const uint8_t one[] = { 0 };
	p = one;
	assert_int_equal(varint_get(&p, one, &v), -1);
	assert_ptr_equal(p, one);

	/* Eleven bytes: longer than any 64-bit value needs. */
	static const uint8_t eleven[] = { 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
					  0x80, 0x80, 0x80, 0x80, 0x00 };
	p = eleven;
	assert_int_equal(varint_get(&p, eleven + sizeof(eleven), &v), -1);
	assert_ptr_equal(p, eleven);

	/* Ten bytes whose last carries bits past bit 63. */
	uint8_t ten[10];
	memset(ten, 0xff, 9);
	for (unsigned last = 2; last < 0x100; last++) {
		ten[9] = (uint8_t)last;
		p = ten;
		assert_int_equal(varint_get(&p, ten + 10, &v), -1);
		assert_ptr_equal(p, ten);
	}
	/* ... but a last byte of 1 is exactly UINT64_MAX, and 0 is 2^63 - 1. */
	ten[9] = 1;
	p = ten;
	assert_int_equal(varint_get(&p, ten + 10, &v), 0);
	assert_true(v == UINT64_MAX);
	ten[9] = 0;
	p = ten;
	assert_int_equal(varint_get(&p, ten + 10, &v), 0);
	assert_true(v == (uint64_t)INT64_MAX);

	/* All continuation bytes: runs off the end at every length. */
	uint8_t cont[12];
	memset(cont, 0x80, sizeof(cont));
	for (size_t n = 0; n <= sizeof(cont); n++) {
		p = cont;
		assert_int_equal(varint_get(&p, cont + n, &v), -1);
		assert_ptr_equal(p, cont);
	}

	/* 32-bit reads: 2^32 and anything a 64-bit read refuses. */
	uint8_t big[VARINT_MAX_BYTES];
	size_t n = varint_put(big, (uint64_t)UINT32_MAX + 1);
	uint32_t v32 = 7;
	p = big;
	assert_int_equal(varint_get32(&p, big + n, &v32), -1);
	assert_ptr_equal(p, big);
	assert_int_equal(v32, 7);
	p = eleven;
	assert_int_equal(varint_get32(&p, eleven + sizeof(eleven), &v32), -1);
	assert_ptr_equal(p, eleven);
}

static void test_zigzag(void **state)
{
	(void)state;
	assert_true(zigzag_encode(0) == 0);
	assert_true(zigzag_encode(-1) == 1);
	assert_true(zigzag_encode(1) == 2);
	assert_true(zigzag_encode(-2) == 3);
	assert_true(zigzag_encode(INT64_MAX) == UINT64_MAX - 1);
	assert_true(zigzag_encode(INT64_MIN) == UINT64_MAX);
	static const int64_t vals[] = {
		0, 1, -1, 63, -64, 64, -65, INT32_MAX, INT32_MIN, INT64_MAX, INT64_MIN,
		INT64_MAX - 1, INT64_MIN + 1,
	};
	for (size_t i = 0; i < ARRAY_SIZE(vals); i++) {
		uint64_t z = zigzag_encode(vals[i]);
		assert_true(zigzag_decode(z) == vals[i]);
		/* Small magnitudes stay short on the wire. */
		if (vals[i] >= -64 && vals[i] <= 63)
			assert_int_equal(varint_len(z), 1);
		uint8_t buf[VARINT_MAX_BYTES];
		size_t n = varint_put(buf, z);
		const uint8_t *p = buf;
		uint64_t back = 0;
		assert_int_equal(varint_get(&p, buf + n, &back), 0);
		assert_true(zigzag_decode(back) == vals[i]);
	}
	/* Every u64 decodes to something that encodes back to it. */
	static const uint64_t zs[] = { 0, 1, 2, 3, UINT64_MAX, UINT64_MAX - 1, 1ull << 63,
				       (1ull << 63) + 1 };
	for (size_t i = 0; i < ARRAY_SIZE(zs); i++)
		assert_true(zigzag_encode(zigzag_decode(zs[i])) == zs[i]);
}

/* ---- round trips ---- */

static void roundtrip(bool lz4)
{
	uint32_t len;
	uint8_t *b = build(sample, ARRAY_SIZE(sample), lz4, 0x1234567890ull, 77, &len);
	struct batch_hdr h;
	assert_int_equal(batch_verify(b, len, &h), 0);
	assert_int_equal(batch_compression(&h),
			 lz4 ? BATCH_COMPRESSION_LZ4 : BATCH_COMPRESSION_NONE);
	assert_true(h.producer_id == 0x1234567890ull);
	assert_int_equal(h.base_sequence, 77);
	if (!lz4)
		assert_int_equal(h.records_size, len - BATCH_HEADER_SIZE);
	assert_int_equal(batch_checksum(b, len), h.checksum);
	expect_records(b, len, sample, ARRAY_SIZE(sample), 0);

	/* A single record, and the same record with every field empty. */
	for (size_t i = 0; i < ARRAY_SIZE(sample); i++) {
		uint8_t *one = build(&sample[i], 1, lz4, 0, 0, &len);
		expect_records(one, len, &sample[i], 1, 0);
		free(one);
	}
	free(b);
}

static void test_roundtrip_plain(void **state)
{
	(void)state;
	roundtrip(false);
}

static void test_roundtrip_lz4(void **state)
{
	(void)state;
	roundtrip(true);
}

/* Many records of random shape, plain and lz4, seeded for reproduction. */
static void test_roundtrip_many(void **state)
{
	(void)state;
	uint64_t s = tu_seed("test_roundtrip_many");
	enum { N = 3000, VMAX = 300, HMAX = 4 };
	struct rec *r = calloc(N, sizeof(*r));
	struct batch_kv *kv = calloc((size_t)N * HMAX, sizeof(*kv));
	uint8_t *pool = malloc(4096);
	assert_non_null(r);
	assert_non_null(kv);
	assert_non_null(pool);
	tu_value(pool, 4096, s, 0);
	int64_t ts = (int64_t)(tu_rand(&s) % 1000000);
	for (uint32_t i = 0; i < N; i++) {
		/* Timestamps wander both ways, sometimes by a lot. */
		int64_t step = (int64_t)(tu_rand(&s) % 2001) - 1000;
		if (tu_rand(&s) % 50 == 0)
			step *= 1000000;
		ts += step;
		r[i].ts = ts;
		r[i].key_len = (uint32_t)(tu_rand(&s) % 4 == 0 ? 0 : tu_rand(&s) % 40);
		r[i].key = r[i].key_len ? pool + tu_rand(&s) % 1024 : NULL;
		r[i].value_len = (uint32_t)(tu_rand(&s) % VMAX);
		r[i].value = pool + tu_rand(&s) % 2048;
		r[i].nh = (uint32_t)(tu_rand(&s) % (HMAX + 1));
		r[i].hdrs = kv + (size_t)i * HMAX;
		for (uint32_t k = 0; k < r[i].nh; k++) {
			struct batch_kv *h = kv + (size_t)i * HMAX + k;
			h->name_len = (uint32_t)(tu_rand(&s) % 16);
			h->name = pool + tu_rand(&s) % 1024;
			h->value_len = (uint32_t)(tu_rand(&s) % 64);
			h->value = pool + tu_rand(&s) % 1024;
		}
	}
	for (int lz4 = 0; lz4 < 2; lz4++) {
		uint32_t len;
		uint8_t *b = build(r, N, lz4, 1, 2, &len);
		expect_records(b, len, r, N, 0);
		batch_set_base_offset(b, 123456789);
		expect_records(b, len, r, N, 123456789);
		free(b);
	}
	/* Highly repetitive values compress: the lz4 batch is much smaller. */
	for (uint32_t i = 0; i < N; i++) {
		r[i].value = pool;
		r[i].value_len = 200;
		r[i].key = NULL;
		r[i].key_len = 0;
		r[i].nh = 0;
	}
	uint32_t plain_len, lz4_len;
	uint8_t *plain = build(r, N, false, 0, 0, &plain_len);
	uint8_t *packed = build(r, N, true, 0, 0, &lz4_len);
	assert_true(lz4_len < plain_len / 4);
	expect_records(packed, lz4_len, r, N, 0);
	free(plain);
	free(packed);
	free(pool);
	free(kv);
	free(r);
}

/* The smallest batch there is: one record of five one-byte varints. */
static void test_minimal_batch(void **state)
{
	(void)state;
	struct rec r = { 42, NULL, 0, NULL, 0, NULL, 0 };
	uint32_t len;
	uint8_t *b = build(&r, 1, false, 0, 0, &len);
	assert_int_equal(len, BATCH_HEADER_SIZE + RECORD_SIZE_MIN);
	assert_int_equal(batch_record_size(0, 0, NULL, 0) >= RECORD_SIZE_MIN, 1);
	expect_records(b, len, &r, 1, 0);
	free(b);
	b = build(&r, 1, true, 0, 0, &len);
	expect_records(b, len, &r, 1, 0);
	free(b);
}

static void test_timestamp_extremes(void **state)
{
	(void)state;
	/* Deltas up to the full int64 range in either direction. */
	struct rec up[] = {
		{ INT64_MIN, "a", 1, "b", 1, NULL, 0 },
		{ -1, "c", 1, "d", 1, NULL, 0 },
		{ INT64_MIN, NULL, 0, NULL, 0, NULL, 0 },
	};
	struct rec down[] = {
		{ INT64_MAX, "a", 1, "b", 1, NULL, 0 },
		{ 0, NULL, 0, "x", 1, NULL, 0 },
		{ INT64_MAX, NULL, 0, NULL, 0, NULL, 0 },
	};
	struct rec one_max = { INT64_MAX, NULL, 0, NULL, 0, NULL, 0 };
	for (int lz4 = 0; lz4 < 2; lz4++) {
		uint32_t len;
		uint8_t *b = build(up, ARRAY_SIZE(up), lz4, 0, 0, &len);
		expect_records(b, len, up, ARRAY_SIZE(up), 0);
		free(b);
		b = build(down, ARRAY_SIZE(down), lz4, 0, 0, &len);
		expect_records(b, len, down, ARRAY_SIZE(down), 0);
		free(b);
		b = build(&one_max, 1, lz4, 0, 0, &len);
		expect_records(b, len, &one_max, 1, 0);
		free(b);
	}

	/* A delta that overflows int64 cannot be encoded: refused, builder unchanged. */
	uint8_t buf[256];
	struct batch_builder b;
	batch_builder_init(&b, buf, sizeof(buf));
	assert_int_equal(batch_add(&b, INT64_MIN, NULL, 0, NULL, 0, NULL, 0), 0);
	size_t len0 = b.len;
	assert_int_equal(batch_add(&b, 0, NULL, 0, NULL, 0, NULL, 0), -EMSGSIZE);
	assert_int_equal(batch_add(&b, INT64_MAX, NULL, 0, NULL, 0, NULL, 0), -EMSGSIZE);
	assert_int_equal(b.len, len0);
	assert_int_equal(b.count, 1);
	assert_int_equal(batch_add(&b, -1, NULL, 0, NULL, 0, NULL, 0), 0);
	uint32_t len = batch_seal(&b, 0, 0);
	struct rec both[] = {
		{ INT64_MIN, NULL, 0, NULL, 0, NULL, 0 },
		{ -1, NULL, 0, NULL, 0, NULL, 0 },
	};
	expect_records(buf, len, both, 2, 0);
}

static void test_set_base_offset(void **state)
{
	(void)state;
	static const uint64_t bases[] = { 1, 1000, UINT32_MAX, (uint64_t)UINT32_MAX + 7,
					  (UINT64_C(1) << 62) - ARRAY_SIZE(sample) };
	for (int lz4 = 0; lz4 < 2; lz4++) {
		uint32_t len;
		uint8_t *b = build(sample, ARRAY_SIZE(sample), lz4, 9, 9, &len);
		uint8_t *orig = exact_copy(b, len);
		for (size_t i = 0; i < ARRAY_SIZE(bases); i++) {
			batch_set_base_offset(b, bases[i]);
			struct batch_hdr h;
			assert_int_equal(batch_verify(b, len, &h), 0);
			assert_true(h.base_offset == bases[i]);
			assert_true(h.checksum != le64_load(orig + BATCH_OFF_CHECKSUM));
			/* Only the offset and checksum change. */
			assert_memory_equal(b, orig, BATCH_OFF_CHECKSUM);
			size_t rest = BATCH_OFF_RECORD_COUNT;
			assert_memory_equal(b + rest, orig + rest, len - rest);
			expect_records(b, len, sample, ARRAY_SIZE(sample), bases[i]);
		}
		/* Back to 0 restores the original bytes exactly. */
		batch_set_base_offset(b, 0);
		assert_memory_equal(b, orig, len);
		/* A base offset written without fixing the checksum is caught. */
		le64_store(b + BATCH_OFF_BASE_OFFSET, 5);
		struct batch_hdr h;
		assert_int_equal(batch_verify(b, len, &h), -EBADMSG);
		free(orig);
		free(b);
	}
}

/* ---- damage ---- */

/* Every proper prefix of a valid batch is a torn batch, never a bad one. */
static void test_truncation(void **state)
{
	(void)state;
	for (int lz4 = 0; lz4 < 2; lz4++) {
		uint32_t len;
		uint8_t *b = build(sample, ARRAY_SIZE(sample), lz4, 3, 4, &len);
		for (uint32_t n = 0; n < len; n++) {
			uint8_t *cut = exact_copy(b, n);
			struct batch_hdr h;
			assert_int_equal(batch_verify(cut, n, &h), -ENODATA);
			if (n < BATCH_HEADER_SIZE) {
				assert_int_equal(batch_parse(cut, n, &h), -ENODATA);
			} else {
				/* The header alone is fine; it just claims more. */
				assert_int_equal(batch_parse(cut, n, &h), 0);
				assert_int_equal(h.length, len);
			}
			free(cut);
		}
		struct batch_hdr h;
		assert_int_equal(batch_verify(b, len, &h), 0);
		free(b);
	}
}

/* No single flipped bit anywhere in a batch gets past batch_verify. */
static void test_bitflips(void **state)
{
	(void)state;
	for (int lz4 = 0; lz4 < 2; lz4++) {
		uint32_t len;
		uint8_t *b = build(sample, ARRAY_SIZE(sample), lz4, 3, 4, &len);
		for (uint32_t pos = 0; pos < len; pos++) {
			for (int bit = 0; bit < 8; bit++) {
				b[pos] ^= (uint8_t)(1u << bit);
				struct batch_hdr h;
				int ret = batch_verify(b, len, &h);
				if (ret != -EBADMSG && ret != -ENODATA)
					fail_msg("lz4=%d: flip of bit %d at byte %u gave %d", lz4,
						 bit, pos, ret);
				b[pos] ^= (uint8_t)(1u << bit);
			}
		}
		struct batch_hdr h;
		assert_int_equal(batch_verify(b, len, &h), 0);
		free(b);
	}
}

/* A header field rewritten; parse sees it whatever the checksum says. */
static int parse_with(const uint8_t *orig, uint32_t len, size_t off, uint64_t v, int width)
{
	uint8_t *b = exact_copy(orig, len);
	switch (width) {
	case 1:
		b[off] = (uint8_t)v;
		break;
	case 2:
		le16_store(b + off, (uint16_t)v);
		break;
	case 4:
		le32_store(b + off, (uint32_t)v);
		break;
	default:
		le64_store(b + off, v);
		break;
	}
	struct batch_hdr h;
	int ret = batch_parse(b, len, &h);
	/* batch_verify agrees with batch_parse on anything parse refuses. */
	if (ret != 0)
		assert_int_equal(batch_verify(b, len, &h), ret);
	free(b);
	return ret;
}

static void test_parse_rejects(void **state)
{
	(void)state;
	uint32_t len, zlen;
	uint8_t *b = build(sample, ARRAY_SIZE(sample), false, 0, 0, &len);
	uint8_t *z = build(sample, ARRAY_SIZE(sample), true, 0, 0, &zlen);
	struct batch_hdr h;
	assert_int_equal(batch_parse(b, len, &h), 0);
	uint32_t rsize = h.records_size;

	/* Magic. */
	static const uint8_t magics[] = { 0x00, 0xB0, 0xB2, 0x31, 0xFF };
	for (size_t i = 0; i < ARRAY_SIZE(magics); i++)
		assert_int_equal(parse_with(b, len, BATCH_OFF_MAGIC, magics[i], 1), -EBADMSG);

	/* Attributes: unknown compression codecs and every reserved bit. */
	assert_int_equal(parse_with(b, len, BATCH_OFF_ATTRIBUTES, 0x02, 1), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_ATTRIBUTES, 0x03, 1), -EBADMSG);
	for (int bit = 2; bit < 8; bit++)
		assert_int_equal(parse_with(b, len, BATCH_OFF_ATTRIBUTES, 1u << bit, 1), -EBADMSG);

	/* Reserved fields must be zero. */
	assert_int_equal(parse_with(b, len, BATCH_OFF_RESERVED16, 1, 2), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RESERVED16, 0x8000, 2), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RESERVED32, 1, 4), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RESERVED32, 0x80000000u, 4), -EBADMSG);

	/* Length: below the smallest batch, above the largest. */
	static const uint32_t bad_lengths[] = { 0, 1, BATCH_HEADER_SIZE,
						BATCH_HEADER_SIZE + RECORD_SIZE_MIN - 1,
						BATCH_SIZE_MAX + 1, UINT32_MAX };
	for (size_t i = 0; i < ARRAY_SIZE(bad_lengths); i++)
		assert_int_equal(parse_with(b, len, BATCH_OFF_LENGTH, bad_lengths[i], 4), -EBADMSG);
	/* lz4 batches have no records_size to agree with: the length bound
	 * alone must hold. */
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_LENGTH, BATCH_SIZE_MAX, 4), 0);
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_LENGTH, BATCH_SIZE_MAX + 1, 4), -EBADMSG);
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_LENGTH, UINT32_MAX, 4), -EBADMSG);
	/* Nor does a plain batch whose records_size agrees with a length too large. */
	uint8_t *big = exact_copy(b, len);
	le32_store(big + BATCH_OFF_LENGTH, BATCH_SIZE_MAX + 1);
	le32_store(big + BATCH_OFF_RECORDS_SIZE, BATCH_SIZE_MAX + 1 - BATCH_HEADER_SIZE);
	assert_int_equal(batch_parse(big, len, &h), -EBADMSG);
	le32_store(big + BATCH_OFF_LENGTH, BATCH_SIZE_MAX);
	le32_store(big + BATCH_OFF_RECORDS_SIZE, BATCH_SIZE_MAX - BATCH_HEADER_SIZE);
	assert_int_equal(batch_parse(big, len, &h), 0);
	assert_int_equal(batch_verify(big, len, &h), -ENODATA);
	free(big);
	assert_int_equal(batch_parse(b, len, &h), 0);

	/* An uncompressed batch's records_size is its stored size, exactly. */
	assert_int_equal(parse_with(b, len, BATCH_OFF_LENGTH, len + 1, 4), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_LENGTH, len - 1, 4), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RECORDS_SIZE, rsize + 1, 4), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RECORDS_SIZE, rsize - 1, 4), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RECORDS_SIZE, 0, 4), -EBADMSG);
	/* lz4: records_size bounded on both sides. */
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_RECORDS_SIZE, 0, 4), -EBADMSG);
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_RECORDS_SIZE, RECORD_SIZE_MIN - 1, 4),
			 -EBADMSG);
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_RECORDS_SIZE, BATCH_RAW_SIZE_MAX + 1, 4),
			 -EBADMSG);
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_RECORDS_SIZE, UINT32_MAX, 4), -EBADMSG);
	/* ... but inside the bounds it is the decompressor's business. */
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_RECORDS_SIZE, BATCH_RAW_SIZE_MAX, 4), 0);

	/* Record count: zero, or more records than the section could hold. */
	assert_int_equal(parse_with(b, len, BATCH_OFF_RECORD_COUNT, 0, 4), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RECORD_COUNT, rsize / RECORD_SIZE_MIN, 4), 0);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RECORD_COUNT, rsize / RECORD_SIZE_MIN + 1, 4),
			 -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_RECORD_COUNT, UINT32_MAX, 4), -EBADMSG);
	assert_int_equal(parse_with(z, zlen, BATCH_OFF_RECORD_COUNT, 0, 4), -EBADMSG);

	/* Base offsets stay below 2^62. */
	assert_int_equal(parse_with(b, len, BATCH_OFF_BASE_OFFSET,
				    (UINT64_C(1) << 62) - ARRAY_SIZE(sample), 8),
			 0);
	assert_int_equal(parse_with(b, len, BATCH_OFF_BASE_OFFSET, UINT64_C(1) << 62, 8), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_BASE_OFFSET, UINT64_MAX, 8), -EBADMSG);

	/* max_timestamp < first_timestamp. */
	uint64_t first = (uint64_t)h.first_timestamp, max = (uint64_t)h.max_timestamp;
	assert_int_equal(parse_with(b, len, BATCH_OFF_MAX_TIMESTAMP, first - 1, 8), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_FIRST_TIMESTAMP, max + 1, 8), -EBADMSG);
	assert_int_equal(parse_with(b, len, BATCH_OFF_MAX_TIMESTAMP, (uint64_t)INT64_MIN, 8),
			 -EBADMSG);
	/* Equal is fine (for parse). */
	assert_int_equal(parse_with(b, len, BATCH_OFF_MAX_TIMESTAMP, first, 8), 0);

	/* Fields parse never judges. */
	assert_int_equal(parse_with(b, len, BATCH_OFF_PRODUCER_ID, UINT64_MAX, 8), 0);
	assert_int_equal(parse_with(b, len, BATCH_OFF_BASE_SEQUENCE, UINT32_MAX, 4), 0);
	assert_int_equal(parse_with(b, len, BATCH_OFF_CHECKSUM, 0, 8), 0);

	/* An all-zero header (unwritten space) is not a batch. */
	uint8_t zero[BATCH_HEADER_SIZE] = { 0 };
	assert_int_equal(batch_parse(zero, sizeof(zero), &h), -EBADMSG);
	assert_int_equal(batch_parse(b, BATCH_HEADER_SIZE - 1, &h), -ENODATA);
	assert_int_equal(batch_parse(b, 0, &h), -ENODATA);
	free(z);
	free(b);
}

/* Offsets of the length fields of the record at `pos` in a plain batch:
 * body length, key and value lengths, header count and the first header's
 * two lengths. Only the timestamp delta may take more than one byte. */
static unsigned record_framing(const uint8_t *b, uint32_t len, uint32_t pos, uint32_t out[6])
{
	unsigned n = 0;
	const uint8_t *p = b + pos, *end = b + len;
	uint64_t v;
	out[n++] = (uint32_t)(p++ - b); /* body length */
	assert_int_equal(varint_get(&p, end, &v), 0);
	out[n++] = (uint32_t)(p - b); /* key length */
	p += 1 + *p;
	out[n++] = (uint32_t)(p - b); /* value length */
	p += 1 + *p;
	out[n++] = (uint32_t)(p - b); /* header count */
	uint8_t hc = *p++;
	if (hc > 0) {
		out[n++] = (uint32_t)(p - b); /* first header's name length */
		p += 1 + *p;
		out[n++] = (uint32_t)(p - b); /* first header's value length */
	}
	return n;
}

/* Damage inside the records that the checksum was made to cover: only
 * batch_check_records can see it. */
static void test_check_records_framing(void **state)
{
	(void)state;
	uint32_t len;
	uint8_t *orig = build(sample, ARRAY_SIZE(sample), false, 0, 0, &len);
	assert_int_equal(check_records(orig, len), 0);

	/* Record 0 and the last record, located by walking body lengths. */
	uint32_t starts[2] = { BATCH_HEADER_SIZE, 0 };
	for (uint32_t p = BATCH_HEADER_SIZE; p < len; p += 1 + orig[p])
		starts[1] = p;

	for (int which = 0; which < 2; which++) {
		uint32_t fr[6];
		unsigned nf = record_framing(orig, len, starts[which], fr);
		for (unsigned f = 0; f < nf; f++) {
			static const int deltas[] = { 1, -1, 0x80, 0x7f, 0xff };
			for (size_t d = 0; d < ARRAY_SIZE(deltas); d++) {
				uint8_t *b = exact_copy(orig, len);
				if (deltas[d] == 0x80)
					b[fr[f]] |= 0x80; /* unterminated varint */
				else if (deltas[d] == 0x7f || deltas[d] == 0xff)
					b[fr[f]] = (uint8_t)deltas[d];
				else
					b[fr[f]] = (uint8_t)(b[fr[f]] + deltas[d]);
				if (b[fr[f]] == orig[fr[f]]) {
					free(b);
					continue;
				}
				batch_set_base_offset(b, 0);
				struct batch_hdr h;
				assert_int_equal(batch_verify(b, len, &h), 0);
				int ret = check_records(b, len);
				if (ret != -EBADMSG)
					fail_msg("record %d framing byte %u (pos %u) set to %u: %d",
						 which, f, fr[f], b[fr[f]], ret);
				free(b);
			}
		}
	}

	/* A timestamp delta on the first record: the first must be 0. */
	uint8_t *b = exact_copy(orig, len);
	b[BATCH_HEADER_SIZE + 1] = 2; /* zigzag(+1) */
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), -EBADMSG);
	free(b);
	free(orig);
}

/* Any single-byte change in the records with the checksum fixed up: never a
 * crash, and if accepted, the records still iterate within bounds. */
static void test_check_records_sweep(void **state)
{
	(void)state;
	for (int lz4 = 0; lz4 < 2; lz4++) {
		uint32_t len;
		uint8_t *orig = build(sample, ARRAY_SIZE(sample), lz4, 0, 0, &len);
		static const uint8_t xors[] = { 0x01, 0x02, 0x40, 0x80, 0xff };
		for (uint32_t pos = BATCH_HEADER_SIZE; pos < len; pos++) {
			for (size_t x = 0; x < ARRAY_SIZE(xors); x++) {
				uint8_t *b = exact_copy(orig, len);
				b[pos] ^= xors[x];
				batch_set_base_offset(b, 0);
				struct batch_hdr h;
				assert_int_equal(batch_verify(b, len, &h), 0);
				uint8_t *scratch = malloc(h.records_size);
				assert_non_null(scratch);
				int ret = batch_check_records(b, &h, scratch, h.records_size);
				assert_true(ret == 0 || ret == -EBADMSG);
				if (ret == 0) {
					struct batch_iter it;
					struct batch_record rec;
					const uint8_t *lo = lz4 ? scratch : b + BATCH_HEADER_SIZE;
					const uint8_t *hi = lo + h.records_size;
					uint32_t seen = 0;
					assert_int_equal(batch_iter_init(&it, b, scratch,
									 h.records_size),
							 0);
					while (batch_iter_next(&it, &rec) == 1) {
						seen++;
						assert_true(rec.value >= lo &&
							    rec.value + rec.value_len <= hi);
						assert_true(rec.headers >= lo &&
							    rec.headers + rec.headers_len <= hi);
					}
					assert_int_equal(seen, h.record_count);
				}
				free(scratch);
				free(b);
			}
		}
		free(orig);
	}
}

static void test_check_records_count(void **state)
{
	(void)state;
	uint32_t len;
	uint8_t *b = build(sample, ARRAY_SIZE(sample), false, 0, 0, &len);
	static const uint32_t counts[] = { ARRAY_SIZE(sample) - 1, ARRAY_SIZE(sample) + 1, 1,
					   ARRAY_SIZE(sample) * 2 };
	for (size_t i = 0; i < ARRAY_SIZE(counts); i++) {
		le32_store(b + BATCH_OFF_RECORD_COUNT, counts[i]);
		batch_set_base_offset(b, 0);
		assert_int_equal(check_records(b, len), -EBADMSG);
	}
	le32_store(b + BATCH_OFF_RECORD_COUNT, ARRAY_SIZE(sample));
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), 0);
	free(b);

	/* The same for lz4, where the count is outside the compressed block. */
	b = build(sample, ARRAY_SIZE(sample), true, 0, 0, &len);
	le32_store(b + BATCH_OFF_RECORD_COUNT, ARRAY_SIZE(sample) + 1);
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), -EBADMSG);
	le32_store(b + BATCH_OFF_RECORD_COUNT, ARRAY_SIZE(sample) - 1);
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), -EBADMSG);
	free(b);
}

/* Bytes after the last record, covered by length and checksum. */
static void test_check_records_trailing(void **state)
{
	(void)state;
	uint32_t len;
	uint8_t *orig = build(sample, ARRAY_SIZE(sample), false, 0, 0, &len);
	for (uint32_t extra = 1; extra <= 8; extra++) {
		for (int fill = 0; fill < 2; fill++) {
			uint32_t nlen = len + extra;
			uint8_t *b = calloc(1, nlen);
			assert_non_null(b);
			memcpy(b, orig, len);
			if (fill)
				memset(b + len, 0x01, extra);
			le32_store(b + BATCH_OFF_LENGTH, nlen);
			le32_store(b + BATCH_OFF_RECORDS_SIZE, nlen - BATCH_HEADER_SIZE);
			batch_set_base_offset(b, 0);
			assert_int_equal(check_records(b, nlen), -EBADMSG);
			free(b);
		}
	}
	free(orig);

	/* lz4: the trailing bytes inside the compressed section. */
	size_t cap = 4096;
	uint8_t *buf = malloc(cap);
	assert_non_null(buf);
	struct batch_builder bb;
	batch_builder_init(&bb, buf, cap);
	add_all(&bb, sample, ARRAY_SIZE(sample));
	memset(buf + bb.len, 0, 3);
	bb.len += 3;
	size_t ocap = batch_lz4_bound(bb.len);
	uint8_t *z = malloc(ocap);
	assert_non_null(z);
	ssize_t zl = batch_seal_lz4(&bb, z, ocap, 0, 0);
	assert_true(zl > 0);
	assert_int_equal(check_records(z, (uint32_t)zl), -EBADMSG);
	free(z);
	free(buf);
}

static void test_check_records_timestamps(void **state)
{
	(void)state;
	uint32_t len;
	uint8_t *b = build(sample, ARRAY_SIZE(sample), false, 0, 0, &len);
	struct batch_hdr h;
	assert_int_equal(batch_verify(b, len, &h), 0);
	int64_t first = h.first_timestamp, max = h.max_timestamp;

	/* max_timestamp claims more than any record has. */
	le64_store(b + BATCH_OFF_MAX_TIMESTAMP, (uint64_t)(max + 1));
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), -EBADMSG);
	/* ... or less than a record has. */
	le64_store(b + BATCH_OFF_MAX_TIMESTAMP, (uint64_t)(max - 1));
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), -EBADMSG);
	/* first_timestamp moved: every record moves with it, past max. */
	le64_store(b + BATCH_OFF_MAX_TIMESTAMP, (uint64_t)max);
	le64_store(b + BATCH_OFF_FIRST_TIMESTAMP, (uint64_t)(first + 1));
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), -EBADMSG);
	le64_store(b + BATCH_OFF_FIRST_TIMESTAMP, (uint64_t)first);
	batch_set_base_offset(b, 0);
	assert_int_equal(check_records(b, len), 0);
	free(b);

	/* A delta that overflows int64 from the first timestamp. */
	static const uint8_t ovf[] = { 4, 0, 0, 0, 0, 4, 2, 0, 0, 0 };
	b = raw_batch(ovf, sizeof(ovf), 2, INT64_MAX, INT64_MAX, &len);
	assert_int_equal(check_records(b, len), -EBADMSG);
	free(b);
	/* The same bytes with room above the first timestamp are fine. */
	b = raw_batch(ovf, sizeof(ovf), 2, 10, 11, &len);
	assert_int_equal(check_records(b, len), 0);
	free(b);
	/* Backwards past INT64_MIN: zigzag(-1) = 1. */
	static const uint8_t under[] = { 4, 0, 0, 0, 0, 4, 1, 0, 0, 0 };
	b = raw_batch(under, sizeof(under), 2, INT64_MIN, INT64_MIN, &len);
	assert_int_equal(check_records(b, len), -EBADMSG);
	free(b);
}

/* Hand-written records at the format's bounds. */
static void test_check_records_handmade(void **state)
{
	(void)state;
	uint8_t recs[512];
	uint32_t len;
	for (uint32_t hc = RECORD_HEADERS_MAX - 1; hc <= RECORD_HEADERS_MAX + 1; hc++) {
		/* hc empty header pairs: two zero bytes each. */
		uint32_t body = 4 + 2 * hc;
		uint32_t n = 0;
		n += (uint32_t)varint_put(recs + n, body);
		recs[n++] = 0;  /* timestamp delta */
		recs[n++] = 0;  /* key length */
		recs[n++] = 0;  /* value length */
		n += (uint32_t)varint_put(recs + n, hc);
		memset(recs + n, 0, 2 * hc);
		n += 2 * hc;
		uint8_t *b = raw_batch(recs, n, 1, 5, 5, &len);
		assert_int_equal(check_records(b, len), hc <= RECORD_HEADERS_MAX ? 0 : -EBADMSG);
		free(b);
	}

	/* A record body length beyond the section. */
	static const uint8_t longer[] = { 0x85, 0x01, 0, 0, 0, 0 };
	uint8_t *b = raw_batch(longer, sizeof(longer), 1, 0, 0, &len);
	assert_int_equal(check_records(b, len), -EBADMSG);
	free(b);
	/* A body length that overflows 32 bits. */
	static const uint8_t huge[] = { 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0 };
	b = raw_batch(huge, sizeof(huge), 1, 0, 0, &len);
	assert_int_equal(check_records(b, len), -EBADMSG);
	free(b);
	/* A key length past the record body, though inside the batch. */
	static const uint8_t key_past[] = { 4, 0, 3, 0, 0, 'a', 'b', 'c' };
	b = raw_batch(key_past, sizeof(key_past), 1, 0, 0, &len);
	assert_int_equal(check_records(b, len), -EBADMSG);
	free(b);
	/* The smallest valid record, written by hand. */
	static const uint8_t tiny[] = { 4, 0, 0, 0, 0 };
	b = raw_batch(tiny, sizeof(tiny), 1, 7, 7, &len);
	assert_int_equal(check_records(b, len), 0);
	free(b);
}

static void test_check_records_lz4(void **state)
{
	(void)state;
	uint32_t len;
	uint8_t *orig = build(sample, ARRAY_SIZE(sample), true, 0, 0, &len);
	struct batch_hdr h;
	assert_int_equal(batch_verify(orig, len, &h), 0);
	uint32_t raw = h.records_size;

	/* records_size disagreeing with what the block decompresses to. */
	static const int64_t deltas[] = { -1, 1, 1000 };
	for (size_t i = 0; i < ARRAY_SIZE(deltas); i++) {
		uint8_t *b = exact_copy(orig, len);
		le32_store(b + BATCH_OFF_RECORDS_SIZE, (uint32_t)(raw + deltas[i]));
		batch_set_base_offset(b, 0);
		assert_int_equal(check_records(b, len), -EBADMSG);
		free(b);
	}
	/* A cut compressed block (length shortened, checksum fixed). */
	for (uint32_t cut = 1; cut < 8 && len - cut > BATCH_HEADER_SIZE + RECORD_SIZE_MIN; cut++) {
		uint8_t *b = exact_copy(orig, len - cut);
		le32_store(b + BATCH_OFF_LENGTH, len - cut);
		batch_set_base_offset(b, 0);
		assert_int_equal(check_records(b, len - cut), -EBADMSG);
		free(b);
	}
	/* Scratch smaller than records_size: refused up front. */
	uint8_t *scratch = malloc(raw);
	assert_non_null(scratch);
	struct batch_iter it;
	assert_int_equal(batch_iter_init(&it, orig, scratch, raw - 1), -ENOSPC);
	assert_int_equal(batch_check_records(orig, &h, scratch, raw - 1), -ENOSPC);
	assert_int_equal(batch_check_records(orig, &h, scratch, raw), 0);
	free(scratch);
	free(orig);
}

/* After an error the iterator stays there. */
static void test_iter_stays_at_error(void **state)
{
	(void)state;
	uint32_t len;
	uint8_t *b = build(sample, ARRAY_SIZE(sample), false, 0, 0, &len);
	/* Break the third record's body length. */
	uint32_t p = BATCH_HEADER_SIZE;
	p += 1 + b[p];
	p += 1 + b[p];
	b[p] = (uint8_t)(b[p] + 1);
	batch_set_base_offset(b, 0);
	struct batch_hdr h;
	assert_int_equal(batch_verify(b, len, &h), 0);
	struct batch_iter it;
	struct batch_record rec;
	assert_int_equal(batch_iter_init(&it, b, NULL, 0), 0);
	assert_int_equal(batch_iter_next(&it, &rec), 1);
	assert_int_equal(batch_iter_next(&it, &rec), 1);
	assert_int_equal(rec.offset, 1);
	for (int i = 0; i < 3; i++)
		assert_int_equal(batch_iter_next(&it, &rec), -EBADMSG);
	free(b);
}

/* ---- building ---- */

static void expect_same_builder(const struct batch_builder *a, const struct batch_builder *b)
{
	assert_ptr_equal(a->buf, b->buf);
	assert_int_equal(a->cap, b->cap);
	assert_int_equal(a->len, b->len);
	assert_int_equal(a->count, b->count);
	assert_true(a->first_timestamp == b->first_timestamp);
	assert_true(a->max_timestamp == b->max_timestamp);
}

static void test_add_enospc(void **state)
{
	(void)state;
	static const char val[] = "abcdefghijklmnopqrstuvwxyz0123456789";
	/* Measure one record, then give room for three and ten bytes more. */
	uint8_t probe[512];
	struct batch_builder b;
	batch_builder_init(&b, probe, sizeof(probe));
	assert_int_equal(batch_add(&b, 100, "key", 3, val, 36, hdrs_b, 1), 0);
	size_t rsize = b.len - BATCH_HEADER_SIZE;
	assert_true(rsize > 10);
	assert_true(batch_record_size(3, 36, hdrs_b, 1) >= rsize);

	size_t cap = BATCH_HEADER_SIZE + 3 * rsize + 10;
	uint8_t *buf = malloc(cap);
	uint8_t *snap = malloc(cap);
	assert_non_null(buf);
	assert_non_null(snap);
	batch_builder_init(&b, buf, cap);
	for (int i = 0; i < 3; i++)
		assert_int_equal(batch_add(&b, 100, "key", 3, val, 36, hdrs_b, 1), 0);
	memcpy(snap, buf, b.len);
	struct batch_builder saved = b;
	assert_int_equal(batch_add(&b, 100, "key", 3, val, 36, hdrs_b, 1), -ENOSPC);
	expect_same_builder(&b, &saved);
	assert_memory_equal(buf, snap, b.len);

	/* Still usable: two minimal records fit the ten bytes, a third does not. */
	assert_int_equal(batch_add(&b, 100, NULL, 0, NULL, 0, NULL, 0), 0);
	assert_int_equal(batch_add(&b, 100, NULL, 0, NULL, 0, NULL, 0), 0);
	assert_int_equal(b.len, cap);
	assert_int_equal(batch_add(&b, 100, NULL, 0, NULL, 0, NULL, 0), -ENOSPC);
	assert_int_equal(b.count, 5);
	uint32_t len = batch_seal(&b, 0, 0);
	struct rec want[5] = {
		{ 100, "key", 3, val, 36, hdrs_b, 1 },
		{ 100, "key", 3, val, 36, hdrs_b, 1 },
		{ 100, "key", 3, val, 36, hdrs_b, 1 },
		{ 100, NULL, 0, NULL, 0, NULL, 0 },
		{ 100, NULL, 0, NULL, 0, NULL, 0 },
	};
	expect_records(buf, len, want, 5, 0);

	/* A builder with no room past the header takes nothing. */
	uint8_t hdr_only[BATCH_HEADER_SIZE];
	batch_builder_init(&b, hdr_only, sizeof(hdr_only));
	assert_int_equal(batch_add(&b, 0, NULL, 0, NULL, 0, NULL, 0), -ENOSPC);
	assert_int_equal(b.count, 0);
	assert_int_equal(b.len, BATCH_HEADER_SIZE);

	/* Exactly full fits; one byte less does not. */
	for (size_t c = BATCH_HEADER_SIZE + rsize - 1; c <= BATCH_HEADER_SIZE + rsize; c++) {
		batch_builder_init(&b, buf, c);
		int ret = batch_add(&b, 100, "key", 3, val, 36, hdrs_b, 1);
		assert_int_equal(ret, c == BATCH_HEADER_SIZE + rsize ? 0 : -ENOSPC);
	}
	free(snap);
	free(buf);
}

static void test_add_emsgsize(void **state)
{
	(void)state;
	struct batch_kv kv[RECORD_HEADERS_MAX + 1];
	char names[RECORD_HEADERS_MAX + 1][4];
	for (uint32_t i = 0; i <= RECORD_HEADERS_MAX; i++) {
		snprintf(names[i], sizeof(names[i]), "%u", i);
		kv[i] = (struct batch_kv){ .name = names[i], .name_len = (uint32_t)strlen(names[i]),
					   .value = "v", .value_len = 1 };
	}
	size_t cap = 8192;
	uint8_t *buf = malloc(cap);
	assert_non_null(buf);
	struct batch_builder b;
	batch_builder_init(&b, buf, cap);
	assert_int_equal(batch_add(&b, 1, "k", 1, "v", 1, kv, RECORD_HEADERS_MAX + 1), -EMSGSIZE);
	assert_int_equal(batch_add(&b, 1, "k", 1, "v", 1, kv, UINT32_MAX), -EMSGSIZE);
	assert_int_equal(b.count, 0);
	assert_int_equal(b.len, BATCH_HEADER_SIZE);
	assert_int_equal(batch_add(&b, 1, "k", 1, "v", 1, kv, RECORD_HEADERS_MAX), 0);
	uint32_t len = batch_seal(&b, 0, 0);
	struct rec want = { 1, "k", 1, "v", 1, kv, RECORD_HEADERS_MAX };
	expect_records(buf, len, &want, 1, 0);

	/* A record no batch can hold is -EMSGSIZE, not -ENOSPC, whatever the
	 * buffer; the bytes are never read. */
	batch_builder_init(&b, buf, cap);
	assert_int_equal(batch_add(&b, 1, NULL, 0, buf, BATCH_SIZE_MAX, NULL, 0), -EMSGSIZE);
	assert_int_equal(batch_add(&b, 1, buf, UINT32_MAX, NULL, 0, NULL, 0), -EMSGSIZE);
	assert_int_equal(b.len, BATCH_HEADER_SIZE);
	free(buf);
}

/* The largest record and the largest batch. */
static void test_batch_size_max(void **state)
{
	(void)state;
	size_t cap = BATCH_SIZE_MAX + (1u << 20);
	uint8_t *buf = malloc(cap);
	uint8_t *val = calloc(1, BATCH_SIZE_MAX);
	assert_non_null(buf);
	assert_non_null(val);
	memset(val, 'q', BATCH_SIZE_MAX);

	/* One record filling a batch to exactly BATCH_SIZE_MAX: the body is
	 * the value plus 7 bytes (ts, key length, 4-byte value length, header
	 * count), behind a 4-byte body length. */
	uint32_t vmax = BATCH_SIZE_MAX - BATCH_HEADER_SIZE - 11;
	struct batch_builder b;
	batch_builder_init(&b, buf, cap);
	assert_int_equal(batch_add(&b, 1, NULL, 0, val, vmax + 1, NULL, 0), -EMSGSIZE);
	assert_int_equal(batch_add(&b, 1, NULL, 0, val, vmax, NULL, 0), 0);
	assert_int_equal(batch_add(&b, 1, NULL, 0, NULL, 0, NULL, 0), -ENOSPC);
	uint32_t len = batch_seal(&b, 0, 0);
	assert_int_equal(len, BATCH_SIZE_MAX);
	struct rec one = { 1, NULL, 0, val, vmax, NULL, 0 };
	expect_records(buf, len, &one, 1, 0);

	/* Many records: the builder stops at BATCH_SIZE_MAX even with more room. */
	batch_builder_init(&b, buf, cap);
	uint32_t n = 0;
	int ret;
	while ((ret = batch_add(&b, n, "k", 1, val, 1u << 20, NULL, 0)) == 0)
		n++;
	assert_int_equal(ret, -ENOSPC);
	assert_true(b.len <= BATCH_SIZE_MAX);
	assert_int_equal(n, 15);
	len = batch_seal(&b, 0, 0);
	struct batch_hdr h;
	assert_int_equal(batch_verify(buf, len, &h), 0);
	assert_int_equal(h.record_count, 15);
	assert_int_equal(check_records(buf, len), 0);

	/* lz4 of it round-trips and decompresses to the full section. */
	size_t ocap = batch_lz4_bound(b.len);
	uint8_t *z = malloc(ocap);
	assert_non_null(z);
	ssize_t zl = batch_seal_lz4(&b, z, ocap, 0, 0);
	assert_true(zl > 0 && (size_t)zl < b.len);
	assert_int_equal(check_records(z, (uint32_t)zl), 0);
	free(z);
	free(val);
	free(buf);
}

static void test_seal_lz4_enospc(void **state)
{
	(void)state;
	uint8_t buf[1024];
	struct batch_builder b;
	batch_builder_init(&b, buf, sizeof(buf));
	add_all(&b, sample, ARRAY_SIZE(sample));
	struct batch_builder saved = b;
	uint8_t snap[1024];
	memcpy(snap, buf, b.len);
	uint8_t out[2048];
	assert_int_equal(batch_seal_lz4(&b, out, 0, 0, 0), -ENOSPC);
	assert_int_equal(batch_seal_lz4(&b, out, BATCH_HEADER_SIZE, 0, 0), -ENOSPC);
	assert_int_equal(batch_seal_lz4(&b, out, BATCH_HEADER_SIZE + 1, 0, 0), -ENOSPC);
	expect_same_builder(&b, &saved);
	assert_memory_equal(buf + BATCH_HEADER_SIZE, snap + BATCH_HEADER_SIZE,
			    b.len - BATCH_HEADER_SIZE);
	/* The builder can still seal either way. */
	size_t bound = batch_lz4_bound(b.len);
	assert_true(bound <= sizeof(out));
	ssize_t zl = batch_seal_lz4(&b, out, bound, 0, 0);
	assert_true(zl > 0);
	expect_records(out, (uint32_t)zl, sample, ARRAY_SIZE(sample), 0);
	uint32_t len = batch_seal(&b, 0, 0);
	expect_records(buf, len, sample, ARRAY_SIZE(sample), 0);
}

/* batch_record_size is an upper bound whatever the timestamp delta. */
static void test_record_size_bound(void **state)
{
	(void)state;
	static const int64_t ts[] = { 0, 1, -1, 1000000, INT64_MAX / 2, INT64_MIN / 2 };
	for (size_t i = 0; i < ARRAY_SIZE(sample); i++) {
		const struct rec *r = &sample[i];
		size_t bound = batch_record_size(r->key_len, r->value_len, r->hdrs, r->nh);
		for (size_t t = 0; t < ARRAY_SIZE(ts); t++) {
			uint8_t buf[512];
			struct batch_builder b;
			batch_builder_init(&b, buf, sizeof(buf));
			assert_int_equal(batch_add(&b, 0, NULL, 0, NULL, 0, NULL, 0), 0);
			size_t before = b.len;
			assert_int_equal(batch_add(&b, ts[t], r->key, r->key_len, r->value,
						   r->value_len, r->hdrs, r->nh),
					 0);
			assert_true(b.len - before <= bound);
		}
	}
}

/* ---- header pairs and zero headers ---- */

static void test_kv_next(void **state)
{
	(void)state;
	static const uint8_t enc[] = {
		1, 'a', 1, '1',           /* "a" = "1" */
		0, 0,                     /* "" = "" */
		4, 'n', 'a', 'm', 'e', 0, /* "name" = "" */
		0, 3, 'x', 'y', 'z',      /* "" = "xyz" */
	};
	const uint8_t *p = enc, *end = enc + sizeof(enc);
	struct batch_kv kv;
	assert_int_equal(batch_kv_next(&p, end, &kv), 1);
	assert_int_equal(kv.name_len, 1);
	assert_memory_equal(kv.name, "a", 1);
	assert_int_equal(kv.value_len, 1);
	assert_memory_equal(kv.value, "1", 1);
	assert_int_equal(batch_kv_next(&p, end, &kv), 1);
	assert_int_equal(kv.name_len, 0);
	assert_int_equal(kv.value_len, 0);
	assert_int_equal(batch_kv_next(&p, end, &kv), 1);
	assert_int_equal(kv.name_len, 4);
	assert_memory_equal(kv.name, "name", 4);
	assert_int_equal(kv.value_len, 0);
	assert_int_equal(batch_kv_next(&p, end, &kv), 1);
	assert_int_equal(kv.name_len, 0);
	assert_int_equal(kv.value_len, 3);
	assert_memory_equal(kv.value, "xyz", 3);
	assert_ptr_equal(p, end);
	assert_int_equal(batch_kv_next(&p, end, &kv), 0);
	assert_int_equal(batch_kv_next(&p, end, &kv), 0);

	/* Every cut that splits a pair is malformed and leaves p in place;
	 * cuts between pairs end cleanly. */
	static const size_t pair_ends[] = { 0, 4, 6, 12, 17 };
	for (size_t cut = 0; cut <= sizeof(enc); cut++) {
		const uint8_t *cend = enc + cut;
		size_t whole = 0;
		for (size_t k = 1; k < ARRAY_SIZE(pair_ends); k++)
			if (pair_ends[k] <= cut)
				whole = k;
		p = enc;
		for (size_t k = 0; k < whole; k++)
			assert_int_equal(batch_kv_next(&p, cend, &kv), 1);
		const uint8_t *at = p;
		int ret = batch_kv_next(&p, cend, &kv);
		if (pair_ends[whole] == cut)
			assert_int_equal(ret, 0);
		else
			assert_int_equal(ret, -EBADMSG);
		assert_ptr_equal(p, at);
	}

	/* A length over 32 bits, and an unterminated length. */
	static const uint8_t wide[] = { 0x80, 0x80, 0x80, 0x80, 0x10, 0 };
	p = wide;
	assert_int_equal(batch_kv_next(&p, wide + sizeof(wide), &kv), -EBADMSG);
	assert_ptr_equal(p, wide);
	static const uint8_t open[] = { 0x81 };
	p = open;
	assert_int_equal(batch_kv_next(&p, open + 1, &kv), -EBADMSG);
	assert_ptr_equal(p, open);
}

static void test_header_is_zero(void **state)
{
	(void)state;
	uint8_t h[BATCH_HEADER_SIZE];
	memset(h, 0, sizeof(h));
	assert_true(batch_header_is_zero(h));
	for (unsigned i = 0; i < BATCH_HEADER_SIZE; i++) {
		h[i] = 0x01;
		assert_false(batch_header_is_zero(h));
		h[i] = 0x80;
		assert_false(batch_header_is_zero(h));
		h[i] = 0;
	}
	assert_true(batch_header_is_zero(h));
	uint32_t len;
	uint8_t *b = build(sample, 1, false, 0, 0, &len);
	assert_false(batch_header_is_zero(b));
	free(b);
	/* tu_batch (shared by other tests) makes batches that check out too. */
	for (int lz4 = 0; lz4 < 2; lz4++) {
		b = tu_batch(20, 33, 5, 1000, lz4, &len);
		assert_false(batch_header_is_zero(b));
		assert_int_equal(check_records(b, len), 0);
		free(b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_varint_roundtrip),
		cmocka_unit_test(test_varint_rejects),
		cmocka_unit_test(test_zigzag),
		cmocka_unit_test(test_roundtrip_plain),
		cmocka_unit_test(test_roundtrip_lz4),
		cmocka_unit_test(test_roundtrip_many),
		cmocka_unit_test(test_minimal_batch),
		cmocka_unit_test(test_timestamp_extremes),
		cmocka_unit_test(test_set_base_offset),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_bitflips),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_check_records_framing),
		cmocka_unit_test(test_check_records_sweep),
		cmocka_unit_test(test_check_records_count),
		cmocka_unit_test(test_check_records_trailing),
		cmocka_unit_test(test_check_records_timestamps),
		cmocka_unit_test(test_check_records_handmade),
		cmocka_unit_test(test_check_records_lz4),
		cmocka_unit_test(test_iter_stays_at_error),
		cmocka_unit_test(test_add_enospc),
		cmocka_unit_test(test_add_emsgsize),
		cmocka_unit_test(test_batch_size_max),
		cmocka_unit_test(test_seal_lz4_enospc),
		cmocka_unit_test(test_record_size_bound),
		cmocka_unit_test(test_kv_next),
		cmocka_unit_test(test_header_is_zero),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
