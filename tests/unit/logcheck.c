/* logcheck.c — model of appended batches and read-back checks (see logcheck.h). */
#include "tests/unit/logcheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/batch.h"
#include "tests/unit/testutil.h"

void model_add(struct model *m, uint64_t base, uint32_t count, uint32_t value_len, uint64_t seed,
	       int64_t ts0)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 64;
		m->b = realloc(m->b, m->cap * sizeof(*m->b));
		if (m->b == NULL)
			abort();
	}
	m->b[m->n++] = (struct mbatch){ base, count, value_len, seed, ts0 };
}

void model_cut(struct model *m, uint64_t end)
{
	while (m->n > 0 && m->b[m->n - 1].base >= end)
		m->n--;
}

const struct mbatch *model_find(const struct model *m, uint64_t offset)
{
	uint32_t lo = 0, hi = m->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct mbatch *b = &m->b[mid];
		if (offset < b->base)
			hi = mid;
		else if (offset >= b->base + b->count)
			lo = mid + 1;
		else
			return b;
	}
	return NULL;
}

void model_free(struct model *m)
{
	free(m->b);
	memset(m, 0, sizeof(*m));
}

static int check_record(const struct batch_record *rec, const struct model *m)
{
	const struct mbatch *b = model_find(m, rec->offset);
	if (b == NULL) {
		printf("offset %llu: not in the model\n", (unsigned long long)rec->offset);
		return -1;
	}
	uint32_t i = (uint32_t)(rec->offset - b->base);
	char key[24];
	int kl = snprintf(key, sizeof(key), "k%u", i);
	if (rec->key_len != (uint32_t)kl || memcmp(rec->key, key, (size_t)kl) != 0) {
		printf("offset %llu: wrong key\n", (unsigned long long)rec->offset);
		return -2;
	}
	if (rec->timestamp != b->ts0 + i) {
		printf("offset %llu: timestamp %lld, want %lld\n", (unsigned long long)rec->offset,
		       (long long)rec->timestamp, (long long)(b->ts0 + i));
		return -3;
	}
	uint8_t *want = malloc(b->value_len + 1);
	tu_value(want, b->value_len, b->seed, i);
	int bad = rec->value_len != b->value_len || memcmp(rec->value, want, b->value_len) != 0;
	free(want);
	if (bad) {
		printf("offset %llu: wrong value\n", (unsigned long long)rec->offset);
		return -4;
	}
	return 0;
}

/* Reads the slice at offset; calls fn for each record of its whole batches. */
static long read_at(struct log *log, const struct model *m, uint64_t offset, bool only_one,
		    uint64_t *next)
{
	uint32_t cap = 1u << 20;
	uint8_t *buf = malloc(cap);
	uint64_t base;
	ssize_t n = log_read_copy(log, offset, buf, cap, &base);
	if (n <= 0) {
		printf("read at %llu: %zd\n", (unsigned long long)offset, n);
		free(buf);
		return -1;
	}
	long seen = 0;
	size_t pos = 0;
	bool found = false;
	void *scratch = NULL;
	*next = offset;
	while (pos < (size_t)n) {
		struct batch_hdr h;
		int ret = batch_verify(buf + pos, (size_t)n - pos, &h);
		if (ret == -ENODATA && pos > 0)
			break; /* a cut trailing batch: readers drop it */
		if (ret != 0) {
			printf("read at %llu: batch at +%zu: %d\n", (unsigned long long)offset, pos,
			       ret);
			seen = -1;
			break;
		}
		scratch = realloc(scratch, h.records_size);
		struct batch_iter it;
		struct batch_record rec;
		if (batch_iter_init(&it, buf + pos, scratch, h.records_size) != 0) {
			seen = -1;
			break;
		}
		while ((ret = batch_iter_next(&it, &rec)) == 1) {
			if (rec.offset < offset)
				continue;
			if (only_one && rec.offset != offset)
				continue;
			if (check_record(&rec, m) != 0) {
				seen = -1;
				goto out;
			}
			found = true;
			seen++;
		}
		if (ret != 0) {
			seen = -1;
			break;
		}
		*next = h.base_offset + h.record_count;
		pos += h.length;
		if (only_one)
			break;
	}
out:
	if (seen >= 0 && !found) {
		printf("read at %llu: record not found\n", (unsigned long long)offset);
		seen = -1;
	}
	free(scratch);
	free(buf);
	return seen;
}

int check_offset(struct log *log, const struct model *m, uint64_t offset)
{
	uint64_t next;
	return read_at(log, m, offset, true, &next) == 1 ? 0 : -1;
}

long check_all(struct log *log, const struct model *m, uint64_t from)
{
	long total = 0;
	uint64_t off = from, end = log_visible_end(log);
	while (off < end) {
		uint64_t next;
		long n = read_at(log, m, off, false, &next);
		if (n < 0 || next <= off)
			return -1;
		total += n;
		off = next;
	}
	return total;
}
