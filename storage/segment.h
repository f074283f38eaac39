/* segment.h — a segment's files on disk: names, index entry formats, and the
 * read-only batch scanner that recovery, lookups and mqdump share.
 *
 * A segment is three files named by its base offset (20 digits):
 *   NNNNNNNNNNNNNNNNNNNN.log  batches back to back, then (while active)
 *                             preallocated zeros
 *   NNNNNNNNNNNNNNNNNNNN.idx  sparse offset index: 8-byte entries
 *   NNNNNNNNNNNNNNNNNNNN.tix  sparse time index: 12-byte entries
 * docs/format.md specifies each.
 *
 * Contract: the reader never writes to the file and never trusts it: every
 * batch is parsed and checksummed before it is returned. Returned pointers
 * stay valid until the next call on the same reader. Errors: -ENODATA (a
 * batch runs past the end of the file: torn), -EBADMSG (corrupt), or a
 * negative errno from pread. Not thread-safe per reader; readers of one file
 * are independent.
 */
#ifndef RINGMQ_SEGMENT_H
#define RINGMQ_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/batch.h"

#define SEG_NAME_DIGITS 20
#define SEG_NAME_MAX 32 /* 20 digits, ".log", NUL */

#define IDX_ENTRY_SIZE 8u  /* u32 relative offset, u32 position */
#define TIX_ENTRY_SIZE 12u /* i64 max timestamp so far, u32 relative offset */

struct idx_entry {
	uint32_t rel_offset;
	uint32_t pos;
};

struct tix_entry {
	int64_t timestamp;
	uint32_t rel_offset;
};

/* Writes "<20-digit base><ext>" into name (SEG_NAME_MAX bytes). */
void seg_name(char *name, uint64_t base_offset, const char *ext);

/* Parses a segment file name. Returns 0 and sets *base_offset and *ext
 * (".log", ".idx" or ".tix") if `name` is one; -EINVAL otherwise. */
int seg_parse_name(const char *name, uint64_t *base_offset, const char **ext);

void idx_encode(uint8_t out[IDX_ENTRY_SIZE], const struct idx_entry *e);
void idx_decode(const uint8_t in[IDX_ENTRY_SIZE], struct idx_entry *e);
void tix_encode(uint8_t out[TIX_ENTRY_SIZE], const struct tix_entry *e);
void tix_decode(const uint8_t in[TIX_ENTRY_SIZE], struct tix_entry *e);

/* Reads whole batches from a segment file, verifying each. */
struct seg_reader {
	int fd;
	uint64_t end;      /* reads stop here: the file size, or a log's end */
	uint64_t pos;      /* position of the next batch */
	uint8_t *buf;      /* read-ahead window over the file */
	size_t cap;
	uint64_t buf_pos;  /* file position of buf[0] */
	size_t buf_len;
	size_t readahead;  /* bytes per pread; 0: 1 MiB */
};

/* Prepares to read fd from pos up to the file's size (callers may lower
 * r->end). Does not take ownership of fd. Returns 0 or -errno. */
int seg_reader_init(struct seg_reader *r, int fd, uint64_t pos);
void seg_reader_free(struct seg_reader *r);

/* Reads the batch at r->pos and advances past it. Returns 1 with *hdr and
 * *data (the whole batch) filled; 0 at a clean end (end of file, or an
 * all-zero header: unwritten space); -ENODATA if the batch is cut short by
 * r->end; -EBADMSG if it is not a valid batch; or a pread errno.
 * On anything but 1 the position does not move. */
int seg_reader_next(struct seg_reader *r, struct batch_hdr *hdr, const uint8_t **data);

/* Like seg_reader_next, but reads only the header and skips the checksum:
 * for walking batch boundaries when the caller does not need the records. */
int seg_reader_next_header(struct seg_reader *r, struct batch_hdr *hdr);

#endif
