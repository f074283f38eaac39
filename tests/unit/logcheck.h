/* logcheck.h — a model of what was appended to a log, and checks of what the
 * log reads back against it; shared by the log, fault and model tests. */
#ifndef RINGMQ_TEST_LOGCHECK_H
#define RINGMQ_TEST_LOGCHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/log.h"

struct mbatch {
	uint64_t base;
	uint32_t count, value_len;
	uint64_t seed;
	int64_t ts0;
};

struct model {
	struct mbatch *b;
	uint32_t n, cap;
};

void model_add(struct model *m, uint64_t base, uint32_t count, uint32_t value_len, uint64_t seed,
	       int64_t ts0);
/* Drops batches with base >= end (they were never acknowledged). */
void model_cut(struct model *m, uint64_t end);
/* Drops batches entirely below start (retention). */
const struct mbatch *model_find(const struct model *m, uint64_t offset);
void model_free(struct model *m);

/* Reads the record at `offset` through log_read_copy and compares it with the
 * model. Returns 0 or a negative code saying what differed (and prints it). */
int check_offset(struct log *log, const struct model *m, uint64_t offset);

/* Reads everything in [from, visible_end) batch by batch and checks every
 * record. Returns records checked, or -1. */
long check_all(struct log *log, const struct model *m, uint64_t from);

#endif
