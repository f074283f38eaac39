/* arena.h — a bump allocator over a caller's buffer, for decoding one
 * request's arrays without malloc. Header-only; not thread-safe; the caller
 * owns the buffer and resets the arena between requests. */
#ifndef RINGMQ_ARENA_H
#define RINGMQ_ARENA_H

#include <stddef.h>
#include <stdint.h>

struct arena {
	uint8_t *base;
	size_t used, cap;
};

static inline void arena_init(struct arena *a, void *buf, size_t cap)
{
	a->base = buf;
	a->used = 0;
	a->cap = cap;
}

static inline void arena_reset(struct arena *a)
{
	a->used = 0;
}

/* Returns n bytes aligned to 8, or NULL when the arena is exhausted. */
static inline void *arena_alloc(struct arena *a, size_t n)
{
	size_t at = (a->used + 7) & ~(size_t)7;
	if (at > a->cap || n > a->cap - at)
		return NULL;
	a->used = at + n;
	return a->base + at;
}

#endif
