/* segment.c — segment file names, index entries and the batch scanner (see segment.h). */
#include "storage/segment.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/endian.h"

/* Read-ahead for scans: large enough that walking 16 KiB batches costs one
 * pread per 64 of them, small enough to keep per-scan memory trivial. */
#define READ_AHEAD (1u << 20)

void seg_name(char *name, uint64_t base_offset, const char *ext)
{
	snprintf(name, SEG_NAME_MAX, "%020" PRIu64 "%s", base_offset, ext);
}

int seg_parse_name(const char *name, uint64_t *base_offset, const char **ext)
{
	uint64_t v = 0;
	for (int i = 0; i < SEG_NAME_DIGITS; i++) {
		if (name[i] < '0' || name[i] > '9')
			return -EINVAL;
		uint64_t d = (uint64_t)(name[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -EINVAL;
		v = v * 10 + d;
	}
	const char *e = name + SEG_NAME_DIGITS;
	if (strcmp(e, ".log") != 0 && strcmp(e, ".idx") != 0 && strcmp(e, ".tix") != 0)
		return -EINVAL;
	*base_offset = v;
	*ext = e;
	return 0;
}

void idx_encode(uint8_t out[IDX_ENTRY_SIZE], const struct idx_entry *e)
{
	le32_store(out, e->rel_offset);
	le32_store(out + 4, e->pos);
}

void idx_decode(const uint8_t in[IDX_ENTRY_SIZE], struct idx_entry *e)
{
	e->rel_offset = le32_load(in);
	e->pos = le32_load(in + 4);
}

void tix_encode(uint8_t out[TIX_ENTRY_SIZE], const struct tix_entry *e)
{
	le64_store(out, (uint64_t)e->timestamp);
	le32_store(out + 8, e->rel_offset);
}

void tix_decode(const uint8_t in[TIX_ENTRY_SIZE], struct tix_entry *e)
{
	e->timestamp = (int64_t)le64_load(in);
	e->rel_offset = le32_load(in + 8);
}

int seg_reader_init(struct seg_reader *r, int fd, uint64_t pos)
{
	struct stat st;
	memset(r, 0, sizeof(*r));
	if (fstat(fd, &st) != 0)
		return -errno;
	r->fd = fd;
	r->end = (uint64_t)st.st_size;
	r->pos = pos;
	return 0;
}

void seg_reader_free(struct seg_reader *r)
{
	free(r->buf);
	r->buf = NULL;
	r->cap = 0;
}

/* Makes [pos, pos + len) readable in the window. Returns a pointer to it, or
 * NULL with *err set (-ENOMEM, a pread errno, or -ENODATA at r->end). */
static const uint8_t *window(struct seg_reader *r, uint64_t pos, size_t len, int *err)
{
	if (pos >= r->buf_pos && pos + len <= r->buf_pos + r->buf_len)
		return r->buf + (pos - r->buf_pos);
	if (pos + len > r->end) {
		*err = -ENODATA;
		return NULL;
	}
	size_t ra = r->readahead ? r->readahead : READ_AHEAD;
	size_t want = len > ra ? len : ra;
	if (want > r->end - pos)
		want = (size_t)(r->end - pos);
	if (want > r->cap) {
		uint8_t *nb = realloc(r->buf, want);
		if (nb == NULL) {
			*err = -ENOMEM;
			return NULL;
		}
		r->buf = nb;
		r->cap = want;
	}
	size_t got = 0;
	while (got < want) {
		ssize_t n = pread(r->fd, r->buf + got, want - got, (off_t)(pos + got));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			*err = -errno;
			r->buf_len = 0;
			return NULL;
		}
		if (n == 0)
			break; /* the file shrank under us */
		got += (size_t)n;
	}
	r->buf_pos = pos;
	r->buf_len = got;
	if (got < len) {
		*err = -ENODATA;
		return NULL;
	}
	return r->buf;
}

static int next(struct seg_reader *r, struct batch_hdr *hdr, const uint8_t **data, bool verify)
{
	int err = 0;
	if (r->pos >= r->end)
		return 0;
	if (r->end - r->pos < BATCH_HEADER_SIZE) {
		/* Too short for a header: clean only if it is all zeros. */
		size_t n = (size_t)(r->end - r->pos);
		const uint8_t *p = window(r, r->pos, n, &err);
		if (p == NULL)
			return err;
		for (size_t i = 0; i < n; i++)
			if (p[i] != 0)
				return -ENODATA;
		return 0;
	}
	const uint8_t *p = window(r, r->pos, BATCH_HEADER_SIZE, &err);
	if (p == NULL)
		return err;
	if (batch_header_is_zero(p))
		return 0;
	int ret = batch_parse(p, BATCH_HEADER_SIZE, hdr);
	if (ret != 0)
		return ret;
	if (hdr->length > r->end - r->pos)
		return -ENODATA;
	if (verify) {
		p = window(r, r->pos, hdr->length, &err);
		if (p == NULL)
			return err;
		ret = batch_verify(p, hdr->length, hdr);
		if (ret != 0)
			return ret;
		*data = p;
	}
	r->pos += hdr->length;
	return 1;
}

int seg_reader_next(struct seg_reader *r, struct batch_hdr *hdr, const uint8_t **data)
{
	return next(r, hdr, data, true);
}

int seg_reader_next_header(struct seg_reader *r, struct batch_hdr *hdr)
{
	return next(r, hdr, NULL, false);
}
