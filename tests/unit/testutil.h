/* testutil.h — shared helpers for the unit tests: temp dirs, batch builders,
 * a private ring and log env, and a seeded PRNG whose seed every test prints. */
#ifndef RINGMQ_TESTUTIL_H
#define RINGMQ_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/ioq.h"
#include "storage/log.h"

/* CLOCK_MONOTONIC in microseconds and milliseconds, for deadlines and
 * latencies; and a sleep that is not cut short by the test's own signals. */
int64_t tu_mono_us(void);
int64_t tu_mono_ms(void);
void tu_sleep_ms(int ms);

/* Makes a fresh directory under $TMPDIR (or /tmp). Caller frees the string
 * and removes the tree with tu_rmtree. Aborts on failure. */
char *tu_tmpdir(const char *tag);
void tu_rmtree(const char *path);

/* Builds a sealed batch of `count` records; record i has key "k<i>", a value
 * of value_len bytes derived from (seed, i), and timestamp ts0 + i.
 * Returns a malloc'd buffer and its length. lz4 compresses if asked. */
uint8_t *tu_batch(uint32_t count, uint32_t value_len, uint64_t seed, int64_t ts0, bool lz4,
		  uint32_t *len);

/* The value tu_batch writes for record i. */
void tu_value(uint8_t *out, uint32_t len, uint64_t seed, uint32_t i);

/* Numbered message bodies: "%010zu:" (the index), then letters derived
 * from it; len may be anything (a short body is cut). */
void tu_make_value(char *v, size_t len, size_t i);

/* The index a body made by tu_make_value carries, or SIZE_MAX if it is not
 * one (every byte is checked). */
size_t tu_value_index(const void *p, size_t len);

struct tu_env {
	struct ioq q;
	struct log_env *env;
};
void tu_env_init(struct tu_env *t);
void tu_env_fini(struct tu_env *t);

/* A small config for tests: 1 KiB..segment_bytes segments, 256 B index. */
void tu_config(struct log_config *cfg, uint64_t segment_bytes);

/* xorshift64*; seeds from $SEED if set, else the clock; prints the seed. */
uint64_t tu_seed(const char *test);
uint64_t tu_rand(uint64_t *s);

/* Reads the whole log [from, visible_end) and checks every record against
 * what tu_batch would have written, given a map from batch base offset to
 * (seed, count, value_len). Returns records seen. */
size_t tu_file_size(const char *path);
int tu_truncate(const char *path, size_t len);
int tu_flip(const char *path, size_t pos, uint8_t xor_mask);
int tu_write_junk(const char *path, size_t len, uint64_t seed);

#endif
