/* batch.c — encode, validate and iterate batches (see batch.h, docs/format.md). */
#include "storage/batch.h"

#include <assert.h>
#include <errno.h>
#include <lz4.h>
#include <string.h>
#include <xxhash.h>

#include "common/endian.h"
#include "common/varint.h"

static_assert(BATCH_OFF_RESERVED32 + 4 == BATCH_HEADER_SIZE, "header layout");
static_assert(BATCH_HEADER_SIZE % 8 == 0, "header keeps records 8-aligned");

#define OFFSET_LIMIT BATCH_OFFSET_LIMIT

bool batch_header_is_zero(const void *p)
{
	static const uint8_t zero[BATCH_HEADER_SIZE];
	return memcmp(p, zero, BATCH_HEADER_SIZE) == 0;
}

int batch_parse(const void *p, size_t avail, struct batch_hdr *hdr)
{
	const uint8_t *b = p;
	if (avail < BATCH_HEADER_SIZE)
		return -ENODATA;
	if (b[BATCH_OFF_MAGIC] != BATCH_MAGIC)
		return -EBADMSG;

	hdr->attributes = b[BATCH_OFF_ATTRIBUTES];
	hdr->length = le32_load(b + BATCH_OFF_LENGTH);
	hdr->checksum = le64_load(b + BATCH_OFF_CHECKSUM);
	hdr->base_offset = le64_load(b + BATCH_OFF_BASE_OFFSET);
	hdr->record_count = le32_load(b + BATCH_OFF_RECORD_COUNT);
	hdr->records_size = le32_load(b + BATCH_OFF_RECORDS_SIZE);
	hdr->first_timestamp = (int64_t)le64_load(b + BATCH_OFF_FIRST_TIMESTAMP);
	hdr->max_timestamp = (int64_t)le64_load(b + BATCH_OFF_MAX_TIMESTAMP);
	hdr->producer_id = le64_load(b + BATCH_OFF_PRODUCER_ID);
	hdr->base_sequence = le32_load(b + BATCH_OFF_BASE_SEQUENCE);

	if ((hdr->attributes & ~BATCH_COMPRESSION_MASK) != 0)
		return -EBADMSG;
	if (le16_load(b + BATCH_OFF_RESERVED16) != 0 || le32_load(b + BATCH_OFF_RESERVED32) != 0)
		return -EBADMSG;
	if (hdr->length < BATCH_HEADER_SIZE + RECORD_SIZE_MIN || hdr->length > BATCH_SIZE_MAX)
		return -EBADMSG;

	uint32_t stored = hdr->length - BATCH_HEADER_SIZE;
	switch (batch_compression(hdr)) {
	case BATCH_COMPRESSION_NONE:
		if (hdr->records_size != stored)
			return -EBADMSG;
		break;
	case BATCH_COMPRESSION_LZ4:
		if (hdr->records_size < RECORD_SIZE_MIN || hdr->records_size > BATCH_RAW_SIZE_MAX)
			return -EBADMSG;
		break;
	default:
		return -EBADMSG;
	}
	if (hdr->record_count == 0 || hdr->record_count > hdr->records_size / RECORD_SIZE_MIN)
		return -EBADMSG;
	if (hdr->base_offset >= OFFSET_LIMIT || hdr->record_count > OFFSET_LIMIT - hdr->base_offset)
		return -EBADMSG;
	if (hdr->max_timestamp < hdr->first_timestamp)
		return -EBADMSG;
	return 0;
}

uint64_t batch_checksum(const void *p, uint32_t length)
{
	assert(length >= BATCH_HEADER_SIZE);
	const uint8_t *b = p;
	/* The seed folds magic, attributes and length into the hash, so every
	 * byte of the batch but the checksum itself is covered. */
	return XXH3_64bits_withSeed(b + BATCH_OFF_BASE_OFFSET, length - BATCH_OFF_BASE_OFFSET,
				    le64_load(b));
}

int batch_verify(const void *p, size_t len, struct batch_hdr *hdr)
{
	int ret = batch_parse(p, len, hdr);
	if (ret != 0)
		return ret;
	if (hdr->length > len)
		return -ENODATA;
	if (batch_checksum(p, hdr->length) != hdr->checksum)
		return -EBADMSG;
	return 0;
}

void batch_set_base_offset(void *p, uint64_t base_offset)
{
	uint8_t *b = p;
	assert(base_offset < OFFSET_LIMIT);
	le64_store(b + BATCH_OFF_BASE_OFFSET, base_offset);
	le64_store(b + BATCH_OFF_CHECKSUM, batch_checksum(b, le32_load(b + BATCH_OFF_LENGTH)));
}

/* ---- records ---- */

static int get_bytes(const uint8_t **p, const uint8_t *end, const uint8_t **out, uint32_t *len)
{
	if (varint_get32(p, end, len) != 0)
		return -1;
	if (*len > (size_t)(end - *p))
		return -1;
	*out = *p;
	*p += *len;
	return 0;
}

int batch_kv_next(const uint8_t **p, const uint8_t *end, struct batch_kv *kv)
{
	if (*p == end)
		return 0;
	const uint8_t *q = *p, *name, *value;
	if (get_bytes(&q, end, &name, &kv->name_len) != 0 ||
	    get_bytes(&q, end, &value, &kv->value_len) != 0)
		return -EBADMSG;
	kv->name = name;
	kv->value = value;
	*p = q;
	return 1;
}

int batch_iter_init(struct batch_iter *it, const void *batch, void *scratch, size_t scratch_cap)
{
	const uint8_t *b = batch;
	int ret = batch_parse(b, BATCH_HEADER_SIZE, &it->hdr);
	assert(ret == 0); /* callers verify first */
	(void)ret;
	const uint8_t *records = b + BATCH_HEADER_SIZE;
	uint32_t stored = it->hdr.length - BATCH_HEADER_SIZE;

	if (batch_compression(&it->hdr) == BATCH_COMPRESSION_LZ4) {
		if (scratch_cap < it->hdr.records_size)
			return -ENOSPC;
		int n = LZ4_decompress_safe((const char *)records, scratch, (int)stored,
					    (int)it->hdr.records_size);
		if (n < 0 || (uint32_t)n != it->hdr.records_size)
			return -EBADMSG;
		records = scratch;
	}
	it->p = records;
	it->end = records + it->hdr.records_size;
	it->left = it->hdr.record_count;
	it->next_offset = it->hdr.base_offset;
	return 0;
}

static int record_decode(const uint8_t *p, const uint8_t *end, const struct batch_hdr *hdr,
			 bool first, struct batch_record *rec)
{
	uint64_t zz;
	uint32_t hcount;
	if (varint_get(&p, end, &zz) != 0)
		return -EBADMSG;
	int64_t delta = zigzag_decode(zz);
	if (first && delta != 0)
		return -EBADMSG;
	if (__builtin_add_overflow(hdr->first_timestamp, delta, &rec->timestamp) ||
	    rec->timestamp > hdr->max_timestamp)
		return -EBADMSG;
	if (get_bytes(&p, end, &rec->key, &rec->key_len) != 0 ||
	    get_bytes(&p, end, &rec->value, &rec->value_len) != 0)
		return -EBADMSG;
	if (rec->key_len == 0)
		rec->key = NULL;
	if (varint_get32(&p, end, &hcount) != 0 || hcount > RECORD_HEADERS_MAX)
		return -EBADMSG;
	rec->header_count = hcount;
	rec->headers = p;
	for (uint32_t i = 0; i < hcount; i++) {
		struct batch_kv kv;
		if (batch_kv_next(&p, end, &kv) != 1)
			return -EBADMSG;
	}
	if (p != end) /* the record's length must be exact */
		return -EBADMSG;
	rec->headers_len = (uint32_t)(p - rec->headers);
	return 0;
}

int batch_iter_next(struct batch_iter *it, struct batch_record *rec)
{
	if (it->left == 0)
		return it->p == it->end ? 0 : -EBADMSG;

	const uint8_t *p = it->p;
	uint32_t body_len;
	if (varint_get32(&p, it->end, &body_len) != 0 || body_len > (size_t)(it->end - p))
		return -EBADMSG;
	bool first = it->left == it->hdr.record_count;
	int ret = record_decode(p, p + body_len, &it->hdr, first, rec);
	if (ret != 0)
		return ret;
	rec->offset = it->next_offset++;
	it->p = p + body_len;
	it->left--;
	if (it->left == 0 && it->p != it->end)
		return -EBADMSG;
	return 1;
}

int batch_check_records(const void *p, const struct batch_hdr *hdr, void *scratch,
			size_t scratch_cap)
{
	struct batch_iter it;
	int ret = batch_iter_init(&it, p, scratch, scratch_cap);
	if (ret != 0)
		return ret == -ENOSPC ? -ENOSPC : -EBADMSG;
	struct batch_record rec;
	int64_t max_ts = INT64_MIN;
	while ((ret = batch_iter_next(&it, &rec)) == 1) {
		if (rec.timestamp > max_ts)
			max_ts = rec.timestamp;
	}
	if (ret != 0)
		return -EBADMSG;
	if (max_ts != hdr->max_timestamp)
		return -EBADMSG;
	return 0;
}

/* ---- building ---- */

static size_t record_body_size(uint64_t ts_zz, uint32_t key_len, uint32_t value_len,
			       const struct batch_kv *headers, uint32_t header_count)
{
	size_t n = varint_len(ts_zz) + varint_len(key_len) + key_len + varint_len(value_len) +
		   value_len + varint_len(header_count);
	for (uint32_t i = 0; i < header_count; i++) {
		n += varint_len(headers[i].name_len) + headers[i].name_len;
		n += varint_len(headers[i].value_len) + headers[i].value_len;
	}
	return n;
}

size_t batch_record_size(uint32_t key_len, uint32_t value_len, const struct batch_kv *headers,
			 uint32_t header_count)
{
	/* Upper bound: the timestamp delta is not known yet, so count its
	 * widest encoding. */
	size_t body = record_body_size(UINT64_MAX, key_len, value_len, headers, header_count);
	return varint_len(body) + body;
}

void batch_builder_init(struct batch_builder *b, void *buf, size_t cap)
{
	assert(cap >= BATCH_HEADER_SIZE);
	b->buf = buf;
	b->cap = cap;
	b->len = BATCH_HEADER_SIZE;
	b->count = 0;
	b->first_timestamp = 0;
	b->max_timestamp = 0;
}

static uint8_t *put_bytes(uint8_t *p, const void *data, uint32_t len)
{
	p += varint_put(p, len);
	if (len > 0)
		memcpy(p, data, len);
	return p + len;
}

int batch_add(struct batch_builder *b, int64_t timestamp, const void *key, uint32_t key_len,
	      const void *value, uint32_t value_len, const struct batch_kv *headers,
	      uint32_t header_count)
{
	if (header_count > RECORD_HEADERS_MAX)
		return -EMSGSIZE;
	int64_t first = b->count == 0 ? timestamp : b->first_timestamp;
	int64_t delta;
	if (__builtin_sub_overflow(timestamp, first, &delta))
		return -EMSGSIZE;
	uint64_t zz = zigzag_encode(delta);
	size_t body = record_body_size(zz, key_len, value_len, headers, header_count);
	size_t need = varint_len(body) + body;
	if (need > BATCH_SIZE_MAX - BATCH_HEADER_SIZE)
		return -EMSGSIZE;
	if (need > b->cap - b->len || b->len + need > BATCH_SIZE_MAX)
		return -ENOSPC;

	uint8_t *p = b->buf + b->len;
	p += varint_put(p, body);
	p += varint_put(p, zz);
	p = put_bytes(p, key, key_len);
	p = put_bytes(p, value, value_len);
	p += varint_put(p, header_count);
	for (uint32_t i = 0; i < header_count; i++) {
		p = put_bytes(p, headers[i].name, headers[i].name_len);
		p = put_bytes(p, headers[i].value, headers[i].value_len);
	}
	assert((size_t)(p - (b->buf + b->len)) == need);
	b->len += need;

	if (b->count == 0) {
		b->first_timestamp = timestamp;
		b->max_timestamp = timestamp;
	} else if (timestamp > b->max_timestamp) {
		b->max_timestamp = timestamp;
	}
	b->count++;
	return 0;
}

static void write_header(uint8_t *out, const struct batch_builder *b, uint8_t attributes,
			 uint32_t length, uint32_t records_size, uint64_t producer_id,
			 uint32_t base_sequence)
{
	memset(out, 0, BATCH_HEADER_SIZE);
	out[BATCH_OFF_MAGIC] = BATCH_MAGIC;
	out[BATCH_OFF_ATTRIBUTES] = attributes;
	le32_store(out + BATCH_OFF_LENGTH, length);
	le32_store(out + BATCH_OFF_RECORD_COUNT, b->count);
	le32_store(out + BATCH_OFF_RECORDS_SIZE, records_size);
	le64_store(out + BATCH_OFF_FIRST_TIMESTAMP, (uint64_t)b->first_timestamp);
	le64_store(out + BATCH_OFF_MAX_TIMESTAMP, (uint64_t)b->max_timestamp);
	le64_store(out + BATCH_OFF_PRODUCER_ID, producer_id);
	le32_store(out + BATCH_OFF_BASE_SEQUENCE, base_sequence);
	le64_store(out + BATCH_OFF_CHECKSUM, batch_checksum(out, length));
}

uint32_t batch_seal(struct batch_builder *b, uint64_t producer_id, uint32_t base_sequence)
{
	assert(b->count > 0);
	assert(b->len <= BATCH_SIZE_MAX);
	uint32_t len = (uint32_t)b->len;
	write_header(b->buf, b, BATCH_COMPRESSION_NONE, len, len - BATCH_HEADER_SIZE, producer_id,
		     base_sequence);
	return len;
}

size_t batch_lz4_bound(size_t len)
{
	assert(len >= BATCH_HEADER_SIZE);
	return BATCH_HEADER_SIZE + (size_t)LZ4_compressBound((int)(len - BATCH_HEADER_SIZE));
}

ssize_t batch_seal_lz4(const struct batch_builder *b, void *out, size_t out_cap,
		       uint64_t producer_id, uint32_t base_sequence)
{
	assert(b->count > 0);
	if (out_cap <= BATCH_HEADER_SIZE)
		return -ENOSPC;
	uint32_t raw = (uint32_t)(b->len - BATCH_HEADER_SIZE);
	size_t room = out_cap - BATCH_HEADER_SIZE;
	if (room > BATCH_SIZE_MAX - BATCH_HEADER_SIZE)
		room = BATCH_SIZE_MAX - BATCH_HEADER_SIZE;
	uint8_t *o = out;
	int n = LZ4_compress_default((const char *)b->buf + BATCH_HEADER_SIZE,
				     (char *)o + BATCH_HEADER_SIZE, (int)raw, (int)room);
	if (n <= 0)
		return -ENOSPC;
	uint32_t len = BATCH_HEADER_SIZE + (uint32_t)n;
	write_header(o, b, BATCH_COMPRESSION_LZ4, len, raw, producer_id, base_sequence);
	return len;
}
