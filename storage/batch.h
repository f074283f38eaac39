/* batch.h — the batch format: the only code in ringmq that knows its bytes.
 *
 * A batch is a 64-byte header followed by records, optionally lz4-compressed
 * as one block. docs/format.md specifies every byte; this module encodes
 * (batch_builder), validates (batch_parse, batch_verify, batch_check_records)
 * and iterates (batch_iter) them.
 *
 * Contract:
 * - Nothing here allocates or keeps pointers past a call, except the views a
 *   batch_iter returns: those point into the batch bytes or the caller's
 *   scratch buffer and stay valid while both do.
 * - Errors: -ENODATA  fewer bytes than the header or its length claims
 *                     (a short read or a torn tail, not proof of damage);
 *           -EBADMSG  the bytes are not a valid batch (bad magic, field out of
 *                     range, checksum mismatch, malformed record);
 *           -ENOSPC   a builder's buffer is full;
 *           -EMSGSIZE a value exceeds a format bound.
 * - Thread-safe: all functions work only on what they are given.
 * - Every input is treated as hostile: parsers check bounds before reading.
 */
#ifndef RINGMQ_BATCH_H
#define RINGMQ_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/limits.h"

#define BATCH_MAGIC 0xB1u /* "batch, format version 1" */

/* Every offset of every batch stays below this, so that signed arithmetic
 * on offsets, here and in every client, can never overflow. */
#define BATCH_OFFSET_LIMIT (UINT64_C(1) << 62)

/* Attribute bits (header byte 1). */
#define BATCH_COMPRESSION_MASK 0x03u
#define BATCH_COMPRESSION_NONE 0x00u
#define BATCH_COMPRESSION_LZ4 0x01u

/* Byte offsets of the header fields (docs/format.md, "Batch header"). */
enum {
	BATCH_OFF_MAGIC = 0,
	BATCH_OFF_ATTRIBUTES = 1,
	BATCH_OFF_RESERVED16 = 2,
	BATCH_OFF_LENGTH = 4,
	BATCH_OFF_CHECKSUM = 8,
	BATCH_OFF_BASE_OFFSET = 16,
	BATCH_OFF_RECORD_COUNT = 24,
	BATCH_OFF_RECORDS_SIZE = 28,
	BATCH_OFF_FIRST_TIMESTAMP = 32,
	BATCH_OFF_MAX_TIMESTAMP = 40,
	BATCH_OFF_PRODUCER_ID = 48,
	BATCH_OFF_BASE_SEQUENCE = 56,
	BATCH_OFF_RESERVED32 = 60,
};

/* The decoded header. */
struct batch_hdr {
	uint8_t attributes;
	uint32_t length;       /* whole batch, header included */
	uint64_t checksum;
	uint64_t base_offset;
	uint32_t record_count;
	uint32_t records_size; /* record section before compression */
	int64_t first_timestamp;
	int64_t max_timestamp;
	uint64_t producer_id;  /* 0: not an idempotent producer */
	uint32_t base_sequence;
};

static inline uint64_t batch_last_offset(const struct batch_hdr *h)
{
	return h->base_offset + h->record_count - 1;
}

static inline unsigned batch_compression(const struct batch_hdr *h)
{
	return h->attributes & BATCH_COMPRESSION_MASK;
}

/* True if the 64 header bytes at p are all zero: the unwritten (preallocated)
 * end of a segment, as opposed to damage. p must have BATCH_HEADER_SIZE bytes. */
bool batch_header_is_zero(const void *p);

/* Decodes and range-checks the header at p, given `avail` readable bytes.
 * Checks everything but the checksum and records. Returns 0, -ENODATA if
 * avail < 64, or -EBADMSG. On 0, the batch is complete only if
 * hdr->length <= avail. */
int batch_parse(const void *p, size_t avail, struct batch_hdr *hdr);

/* The checksum the batch's bytes imply: XXH3-64 over [16, length) seeded with
 * the little-endian u64 of bytes [0, 8). p must hold `length` bytes. */
uint64_t batch_checksum(const void *p, uint32_t length);

/* Parses and verifies the checksum of a complete batch of `len` bytes at p.
 * Returns 0, -ENODATA or -EBADMSG. Does not look inside the records. */
int batch_verify(const void *p, size_t len, struct batch_hdr *hdr);

/* Walks every record of a verified batch and checks its framing, record count
 * and timestamps. lz4 batches are decompressed into scratch, which must hold
 * hdr->records_size bytes. Returns 0 or -EBADMSG. */
int batch_check_records(const void *p, const struct batch_hdr *hdr, void *scratch,
			size_t scratch_cap);

/* Stamps a new base offset into a batch and recomputes its checksum. */
void batch_set_base_offset(void *p, uint64_t base_offset);

/* ---- records ---- */

struct batch_kv {
	const void *name;
	uint32_t name_len;
	const void *value;
	uint32_t value_len;
};

/* One record as a view: pointers into the batch or the iterator's scratch. */
struct batch_record {
	uint64_t offset;
	int64_t timestamp;
	const uint8_t *key;    /* NULL when key_len == 0 */
	uint32_t key_len;
	const uint8_t *value;
	uint32_t value_len;
	uint32_t header_count;
	const uint8_t *headers; /* header_count encoded pairs; see batch_kv_next */
	uint32_t headers_len;
};

/* Reads the next header pair from a record's encoded headers.
 * Returns 1 with *kv filled, 0 at the end, -EBADMSG if malformed. */
int batch_kv_next(const uint8_t **p, const uint8_t *end, struct batch_kv *kv);

struct batch_iter {
	struct batch_hdr hdr;
	const uint8_t *p, *end;
	uint32_t left;
	uint64_t next_offset;
};

/* Starts iterating a verified batch (batch_verify returned 0). For an lz4
 * batch, decompresses into scratch (at least hdr.records_size bytes).
 * Returns 0, or -EBADMSG if decompression fails, -ENOSPC if scratch is small. */
int batch_iter_init(struct batch_iter *it, const void *batch, void *scratch,
		    size_t scratch_cap);

/* Returns 1 with *rec filled, 0 after the last record, -EBADMSG if a record is
 * malformed (the iterator then stays at the error). */
int batch_iter_next(struct batch_iter *it, struct batch_record *rec);

/* ---- building ---- */

struct batch_builder {
	uint8_t *buf;
	size_t cap;
	size_t len; /* header + records so far */
	uint32_t count;
	int64_t first_timestamp;
	int64_t max_timestamp;
};

/* Bytes one record will take in the record section. */
size_t batch_record_size(uint32_t key_len, uint32_t value_len, const struct batch_kv *headers,
			 uint32_t header_count);

/* Starts a batch in buf (cap >= BATCH_HEADER_SIZE). */
void batch_builder_init(struct batch_builder *b, void *buf, size_t cap);

/* Appends one record. Returns 0, -ENOSPC (does not fit; the builder is
 * unchanged) or -EMSGSIZE (more than RECORD_HEADERS_MAX headers, or a record
 * no batch can hold). */
int batch_add(struct batch_builder *b, int64_t timestamp, const void *key, uint32_t key_len,
	      const void *value, uint32_t value_len, const struct batch_kv *headers,
	      uint32_t header_count);

/* Writes the header and checksum of an uncompressed batch in place.
 * Returns the batch length. The builder must hold at least one record. */
uint32_t batch_seal(struct batch_builder *b, uint64_t producer_id, uint32_t base_sequence);

/* Writes an lz4-compressed copy of the builder's records to out as a sealed
 * batch. Returns its length, or -ENOSPC if out_cap is too small (allow
 * batch_lz4_bound()). The builder is left untouched. */
ssize_t batch_seal_lz4(const struct batch_builder *b, void *out, size_t out_cap,
		       uint64_t producer_id, uint32_t base_sequence);

/* Worst-case size of an lz4 batch built from a builder of `len` bytes. */
size_t batch_lz4_bound(size_t len);

#endif
