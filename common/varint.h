/* varint.h — unsigned LEB128 and zigzag varints, as used in record bodies and
 * protocol bodies. Header-only; no state; thread-safe.
 *
 * Decoders never read past `end` and reject encodings longer than the type
 * allows, so they are safe on hostile input.
 */
#ifndef RINGMQ_VARINT_H
#define RINGMQ_VARINT_H

#include <stddef.h>
#include <stdint.h>

#define VARINT_MAX_BYTES 10u

/* Writes v at p (which must have VARINT_MAX_BYTES of room). Returns bytes written. */
static inline size_t varint_put(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

static inline size_t varint_len(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* Reads a varint from [*p, end). On success advances *p and returns 0;
 * returns -1 if the input ends first or the value overflows 64 bits. */
static inline int varint_get(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	const uint8_t *q = *p;
	uint64_t r = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (q >= end)
			return -1;
		uint8_t b = *q++;
		if (shift == 63 && b > 1)
			return -1;
		r |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*p = q;
			*v = r;
			return 0;
		}
	}
	return -1;
}

/* Like varint_get, but the value must fit 32 bits. */
static inline int varint_get32(const uint8_t **p, const uint8_t *end, uint32_t *v)
{
	uint64_t w;
	const uint8_t *q = *p;
	if (varint_get(&q, end, &w) != 0 || w > UINT32_MAX)
		return -1;
	*p = q;
	*v = (uint32_t)w;
	return 0;
}

static inline uint64_t zigzag_encode(int64_t v)
{
	return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int64_t zigzag_decode(uint64_t v)
{
	return (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
}

#endif
