/* limits.h — every hard bound in ringmq, each with the reason for its value.
 *
 * Configurable limits (topic and broker settings) are checked against these at
 * start-up and on every alter; nothing may be configured past a hard bound.
 */
#ifndef RINGMQ_LIMITS_H
#define RINGMQ_LIMITS_H

#include <assert.h>

/* A batch is the unit of append, fetch and checksum. 16 MiB keeps one batch
 * cheap to buffer in full on both ends while allowing messages far above any
 * sane event size. */
#define BATCH_SIZE_MAX (16u << 20)

/* The record section of an lz4 batch may expand up to this on decompression.
 * lz4 can reach ~255:1 on degenerate input; refusing more than 64 MiB bounds
 * what one hostile batch can make a reader allocate. */
#define BATCH_RAW_SIZE_MAX (64u << 20)

/* Fixed batch header (docs/format.md). */
#define BATCH_HEADER_SIZE 64u

/* A record needs at least five bytes: length, timestamp delta, key length,
 * value length and header count, one varint byte each. */
#define RECORD_SIZE_MIN 5u
#define BATCH_RECORDS_MAX (BATCH_RAW_SIZE_MAX / RECORD_SIZE_MIN)

/* Headers per record: enough for tracing and routing metadata, small enough
 * that a reader can keep them on its stack. */
#define RECORD_HEADERS_MAX 64u

/* Segment size bounds. The index stores 32-bit positions, so a segment must
 * stay under 4 GiB; the lower bound keeps tests able to roll every batch. */
#define SEGMENT_BYTES_MIN 1024ull
#define SEGMENT_BYTES_MAX (1ull << 31)

#define INDEX_INTERVAL_BYTES_MIN 64u
#define INDEX_INTERVAL_BYTES_MAX (1u << 24)

/* Topic names: [A-Za-z0-9._-]{1,200} (DESIGN.md). 200 keeps
 * "<data-dir>/<topic>/<partition>/<20 digits>.log" well inside PATH_MAX. */
#define TOPIC_NAME_MAX 200u
#define PARTITIONS_MAX 10000u

static_assert(BATCH_SIZE_MAX <= BATCH_RAW_SIZE_MAX,
	      "an uncompressed batch must always be decodable");
static_assert(SEGMENT_BYTES_MAX < (1ull << 32), "index positions are 32-bit");
static_assert(BATCH_SIZE_MAX < SEGMENT_BYTES_MAX, "a batch must fit a segment");

#endif
