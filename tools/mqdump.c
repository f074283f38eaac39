/* mqdump.c — operators' tool for after a crash: prints and checks a partition's segments. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "storage/batch.h"
#include "storage/segment.h"

/*
 * The byte format belongs to storage/: batches are read with seg_reader and
 * checked with batch_verify and batch_check_records, index entries decoded
 * with idx_decode and tix_decode. What this file adds is the judgement an
 * operator needs: where the data stops, why, and whether recovery will cut it
 * (only the last segment can be torn by a crash, see log_impl.h (S1)) or it
 * is damage that no crash explains.
 */

static const char usage_text[] =
	"Usage: mqdump [--records | --verify] PATH\n"
	"\n"
	"Prints and checks a ringmq partition log, e.g. after a crash. PATH is a\n"
	"segment file (NNNNNNNNNNNNNNNNNNNN.log) or a partition directory (all its\n"
	".log files, in base-offset order). Files are only ever opened read-only.\n"
	"\n"
	"  (default)    print every batch (position, offsets, record count,\n"
	"               timestamps, length, compression, producer, checksum), a\n"
	"               summary per segment and the state of its .idx/.tix files\n"
	"  --records    also print every record: offset, timestamp, key and value\n"
	"               sizes, header count\n"
	"  --verify     print only problems and warnings, or one \"ok\" line\n"
	"  -h, --help   print this text\n"
	"\n"
	"A problem reads \"FILE: bytes START-END: reason\" (END exclusive); it names\n"
	"the first bad batch of a segment, whose checking stops there. A crash can\n"
	"tear only the last segment's tail; log recovery cuts it when the broker\n"
	"starts. Warnings are things the broker repairs by itself (index files).\n"
	"Run it on a stopped broker: a live log's tail may look torn.\n"
	"\n"
	"Exit status: 0 intact (warnings allowed); 1 damaged, torn or\n"
	"out-of-sequence data, or an index the broker would trust wrongly;\n"
	"2 usage or I/O error.\n";

static struct {
	bool verify, records;
	unsigned problems, warnings, io_errors;
	uint8_t *scratch; /* decompressed records of lz4 batches */
	size_t scratch_cap;
} g;

/* ---- output ---- */

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
	if (g.verify)
		return;
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

/* Bad data, or an index the broker would trust: exit status 1. */
static void problem(const char *file, uint64_t start, uint64_t end, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void problem(const char *file, uint64_t start, uint64_t end, const char *fmt, ...)
{
	va_list ap;
	g.problems++;
	printf("%s: bytes %" PRIu64 "-%" PRIu64 ": ", file, start, end);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

/* A problem that is not a byte range of one file (offsets between files). */
static void problem_file(const char *file, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void problem_file(const char *file, const char *fmt, ...)
{
	va_list ap;
	g.problems++;
	printf("%s: ", file);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

/* Something the broker notices and repairs on its own: exit status 0. */
static void warning(const char *file, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warning(const char *file, const char *fmt, ...)
{
	va_list ap;
	g.warnings++;
	printf("%s: warning: ", file);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
}

static void io_error(const char *file, int err, const char *what)
{
	g.io_errors++;
	fflush(stdout); /* keep stdout and stderr lines in order on a terminal */
	fprintf(stderr, "mqdump: %s: %s: %s\n", file, what, strerror(err));
}

static const char *plural(uint64_t n)
{
	return n == 1 ? "" : "s";
}

/* ---- segment files ---- */

struct seg_file {
	char *path;     /* as given, or DIR/NAME */
	char *idx_path; /* NULL if the name says nothing about index files */
	char *tix_path;
	uint64_t base;
	bool named;     /* the name is a segment name, so `base` is known */
	bool last;      /* the newest segment: the only one a crash can tear */
};

static char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (p == NULL) {
		perror("mqdump");
		exit(2);
	}
	return p;
}

static char *path_join(const char *dir, const char *name)
{
	char *p;
	size_t n = strlen(dir);
	if (asprintf(&p, "%s%s%s", dir, n > 0 && dir[n - 1] == '/' ? "" : "/", name) < 0) {
		perror("mqdump");
		exit(2);
	}
	return p;
}

/* Fills sf for a .log file `name` inside `dir` (dir may be NULL for a bare
 * file name): its index files are the same name with .idx and .tix. */
static void seg_file_init(struct seg_file *sf, const char *path, const char *dir,
			  const char *name)
{
	const char *ext;
	memset(sf, 0, sizeof(*sf));
	sf->path = xstrdup(path);
	sf->named = seg_parse_name(name, &sf->base, &ext) == 0 && strcmp(ext, ".log") == 0;
	size_t n = strlen(name);
	if (n > 4 && strcmp(name + n - 4, ".log") == 0) {
		char *stem = xstrdup(name);
		stem[n - 4] = '\0';
		char idx[NAME_MAX + 1], tix[NAME_MAX + 1];
		snprintf(idx, sizeof(idx), "%s.idx", stem);
		snprintf(tix, sizeof(tix), "%s.tix", stem);
		sf->idx_path = dir ? path_join(dir, idx) : xstrdup(idx);
		sf->tix_path = dir ? path_join(dir, tix) : xstrdup(tix);
		free(stem);
	}
}

static void seg_file_free(struct seg_file *sf)
{
	free(sf->path);
	free(sf->idx_path);
	free(sf->tix_path);
}

static int cmp_seg(const void *a, const void *b)
{
	const struct seg_file *x = a, *y = b;
	return x->base < y->base ? -1 : x->base > y->base;
}

/* The base offsets of the .log files in dir, and orphaned index files
 * (a crash in the middle of a retention delete leaves them; log_open removes
 * them). Returns the number of segments, or -errno. */
static int list_dir(const char *dir, struct seg_file **out)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return -errno;
	struct seg_file *segs = NULL;
	size_t n = 0, cap = 0;
	char **others = NULL;
	size_t no = 0, ocap = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t base;
		const char *ext;
		if (seg_parse_name(de->d_name, &base, &ext) != 0)
			continue;
		if (strcmp(ext, ".log") != 0) {
			if (no == ocap) {
				ocap = ocap ? ocap * 2 : 16;
				others = realloc(others, ocap * sizeof(*others));
				if (others == NULL)
					goto nomem;
			}
			others[no++] = xstrdup(de->d_name);
			continue;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			segs = realloc(segs, cap * sizeof(*segs));
			if (segs == NULL)
				goto nomem;
		}
		char *path = path_join(dir, de->d_name);
		seg_file_init(&segs[n++], path, dir, de->d_name);
		free(path);
	}
	closedir(d);
	if (n > 0)
		qsort(segs, n, sizeof(*segs), cmp_seg);
	for (size_t i = 0; i < no; i++) {
		char log_name[SEG_NAME_MAX];
		uint64_t base;
		const char *ext;
		seg_parse_name(others[i], &base, &ext);
		seg_name(log_name, base, ".log");
		bool found = false;
		for (size_t k = 0; k < n && !found; k++)
			found = segs[k].base == base;
		if (!found) {
			char *p = path_join(dir, others[i]);
			warning(p, "index file without %s (log_open removes it)", log_name);
			free(p);
		}
		free(others[i]);
	}
	free(others);
	*out = segs;
	return (int)n;
nomem:
	perror("mqdump");
	exit(2);
}

/* ---- index files ---- */

struct index {
	const char *path;
	bool tix;
	bool present;
	uint8_t *buf;
	size_t size;
	uint32_t n;       /* whole entries */
	uint32_t ordered; /* the prefix the broker accepts as ordered */
	uint32_t next;    /* entries matched against batches so far */
	uint32_t bad;     /* entries inside the data that mislead lookups */
	uint32_t first_bad;
	const char *bad_why;
	bool bad_ts;        /* the first bad entry is a time older than its data */
	int64_t bad_ts_max; /* the newest record before that entry's batch */
};

static void index_load(struct index *ix, const char *path, bool tix)
{
	memset(ix, 0, sizeof(*ix));
	ix->path = path;
	ix->tix = tix;
	if (path == NULL)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		if (errno != ENOENT)
			io_error(path, errno, "open");
		return;
	}
	struct stat st;
	if (fstat(fd, &st) != 0) {
		io_error(path, errno, "stat");
		close(fd);
		return;
	}
	ix->size = (size_t)st.st_size;
	ix->buf = malloc(ix->size ? ix->size : 1);
	if (ix->buf == NULL) {
		io_error(path, ENOMEM, "read");
		close(fd);
		return;
	}
	size_t got = 0;
	while (got < ix->size) {
		ssize_t r = pread(fd, ix->buf + got, ix->size - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			io_error(path, errno, "read");
			break;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	ix->size = got;
	ix->present = true;
	ix->n = (uint32_t)(got / (tix ? TIX_ENTRY_SIZE : IDX_ENTRY_SIZE));
}

static struct idx_entry idx_at(const struct index *ix, uint32_t i)
{
	struct idx_entry e;
	idx_decode(ix->buf + (size_t)i * IDX_ENTRY_SIZE, &e);
	return e;
}

static struct tix_entry tix_at(const struct index *ix, uint32_t i)
{
	struct tix_entry e;
	tix_decode(ix->buf + (size_t)i * TIX_ENTRY_SIZE, &e);
	return e;
}

/* The ordering rules of seg_read_index_files: the broker keeps the prefix
 * that follows them and rebuilds (or re-derives) the rest. */
static void index_order(struct index *idx, struct index *tix)
{
	for (uint32_t i = 0; i < idx->n; i++) {
		struct idx_entry e = idx_at(idx, i), p;
		bool ok = i == 0 ? e.rel_offset == 0 && e.pos == 0
				 : (p = idx_at(idx, i - 1), e.rel_offset > p.rel_offset &&
							    e.pos > p.pos);
		if (!ok)
			break;
		idx->ordered = i + 1;
	}
	uint32_t last_rel = idx->ordered ? idx_at(idx, idx->ordered - 1).rel_offset : 0;
	for (uint32_t i = 0; i < tix->n; i++) {
		struct tix_entry e = tix_at(tix, i), p;
		bool ok = e.rel_offset <= last_rel &&
			  (i == 0 || (p = tix_at(tix, i - 1), e.timestamp > p.timestamp &&
								  e.rel_offset >= p.rel_offset));
		if (!ok)
			break;
		tix->ordered = i + 1;
	}
}

static void index_bad(struct index *ix, const char *why)
{
	if (ix->bad++ == 0) {
		ix->first_bad = ix->next;
		ix->bad_why = why;
	}
}

/* Matches index entries against the batch at pos, in step with the walk:
 * an offset entry must name the start of a batch and that batch's base
 * offset; a time entry must name a batch's base offset and a timestamp no
 * older than any record before that batch, or a time lookup that trusts it
 * would skip those records. */
static void index_match(struct index *idx, struct index *tix, uint64_t seg_base, uint64_t pos,
			const struct batch_hdr *h, int64_t max_ts_before)
{
	while (idx->next < idx->ordered) {
		struct idx_entry e = idx_at(idx, idx->next);
		if (e.pos > pos)
			break;
		if (e.pos < pos)
			index_bad(idx, "points inside a batch");
		else if (seg_base + e.rel_offset != h->base_offset)
			index_bad(idx, "names the wrong offset for the batch it points at");
		idx->next++;
	}
	uint64_t rel = h->base_offset - seg_base;
	while (tix->next < tix->ordered) {
		struct tix_entry e = tix_at(tix, tix->next);
		if (e.rel_offset > rel)
			break;
		if (e.rel_offset < rel) {
			index_bad(tix, "names an offset inside a batch");
		} else if (e.timestamp < max_ts_before) {
			if (tix->bad == 0) {
				tix->bad_ts = true;
				tix->bad_ts_max = max_ts_before;
			}
			index_bad(tix, "is older than records before its batch");
		}
		tix->next++;
	}
}

/* ---- walking a segment ---- */

struct walk {
	const struct seg_file *sf;
	int fd;
	uint64_t size;
	uint64_t data_end; /* end of the batches that passed every check */
	bool complete;     /* the walk reached a clean end */
	uint64_t seg_base; /* from the name, or the first batch if unnamed */
	bool base_known;
	uint64_t next_offset; /* expected base of the next batch */
	uint64_t batches, lz4, records;
	int64_t first_ts, max_ts; /* of the first record, and the newest */
	struct index idx, tix;
};

/* Reads up to len bytes at pos; returns bytes read or -errno. */
static ssize_t read_at(int fd, void *buf, size_t len, uint64_t pos)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, (uint8_t *)buf + got, len - got, (off_t)(pos + got));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* Finds the non-zero bytes in [from, size): *first is the first of them and
 * *end is one past the last; both are `size` if there are none. Skips holes
 * (punched or never written), which read as zeros. Returns 0 or -errno. */
static int nonzero_span(int fd, uint64_t from, uint64_t size, uint64_t *first, uint64_t *end)
{
	static uint8_t buf[1 << 16];
	*first = *end = size;
	uint64_t pos = from;
	bool found = false;
	while (pos < size) {
		off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
		if (d < 0 && errno == ENXIO)
			break;
		uint64_t hole = size;
		if (d < 0) {
			d = (off_t)pos; /* no SEEK_DATA here: read everything */
		} else {
			off_t hl = lseek(fd, d, SEEK_HOLE);
			if (hl >= 0 && (uint64_t)hl < size)
				hole = (uint64_t)hl;
		}
		for (pos = (uint64_t)d; pos < hole;) {
			size_t want = hole - pos < sizeof(buf) ? (size_t)(hole - pos) : sizeof(buf);
			ssize_t n = read_at(fd, buf, want, pos);
			if (n < 0)
				return (int)n;
			if (n == 0)
				return 0; /* the file shrank under us */
			for (ssize_t i = 0; i < n; i++) {
				if (buf[i] == 0)
					continue;
				if (!found)
					*first = pos + (uint64_t)i;
				found = true;
				*end = pos + (uint64_t)i + 1;
			}
			pos += (uint64_t)n;
		}
	}
	if (!found)
		*first = *end = size;
	return 0;
}

static const char *compression_name(const struct batch_hdr *h)
{
	return batch_compression(h) == BATCH_COMPRESSION_LZ4 ? "lz4" : "none";
}

static void print_key(const uint8_t *key, uint32_t len)
{
	putchar('"');
	for (uint32_t i = 0; i < len && i < 32; i++) {
		if (key[i] >= 0x20 && key[i] < 0x7f && key[i] != '"' && key[i] != '\\')
			putchar(key[i]);
		else
			printf("\\x%02x", key[i]);
	}
	fputs(len > 32 ? "\"..." : "\"", stdout);
}

static void print_records(const uint8_t *data)
{
	struct batch_iter it;
	struct batch_record rec;
	if (batch_iter_init(&it, data, g.scratch, g.scratch_cap) != 0)
		return; /* batch_check_records already said why */
	while (batch_iter_next(&it, &rec) == 1) {
		printf("  record offset=%" PRIu64 " ts=%" PRId64
		       " key_len=%u value_len=%u headers=%u",
		       rec.offset, rec.timestamp, rec.key_len, rec.value_len, rec.header_count);
		if (rec.key_len > 0) {
			printf(" key=");
			print_key(rec.key, rec.key_len);
		}
		putchar('\n');
	}
}

/* Checks and prints one whole, checksummed batch. Returns false if the walk
 * must stop at it (it is out of sequence). */
static bool walk_batch(struct walk *w, uint64_t pos, const struct batch_hdr *h,
		       const uint8_t *data)
{
	const char *path = w->sf->path;
	if (!w->base_known) {
		w->seg_base = w->next_offset = h->base_offset;
		w->base_known = true;
	}
	bool in_seq = h->base_offset == w->next_offset;

	bool records_ok = true;
	if (in_seq) {
		if (h->records_size > g.scratch_cap) {
			free(g.scratch);
			g.scratch_cap = h->records_size;
			g.scratch = malloc(g.scratch_cap);
			if (g.scratch == NULL) {
				perror("mqdump");
				exit(2);
			}
		}
		records_ok = batch_check_records(data, h, g.scratch, g.scratch_cap) == 0;
	}

	out("batch pos=%" PRIu64 " len=%u base=%" PRIu64 " last=%" PRIu64 " count=%u"
	    " first_ts=%" PRId64 " max_ts=%" PRId64 " compression=%s producer=%" PRIu64
	    " seq=%u checksum=ok%s\n",
	    pos, h->length, h->base_offset, batch_last_offset(h), h->record_count,
	    h->first_timestamp, h->max_timestamp, compression_name(h), h->producer_id,
	    h->base_sequence, records_ok ? "" : " records=BAD");

	if (!in_seq) {
		const char *cut = w->sf->last ? "recovery cuts the log here"
					      : "readers of this segment are misled from here";
		if (w->batches == 0)
			problem(path, pos, pos + h->length,
				"first batch holds offsets %" PRIu64 "-%" PRIu64
				", but the file name says the segment starts at %" PRIu64 "; %s",
				h->base_offset, batch_last_offset(h), w->next_offset, cut);
		else
			problem(path, pos, pos + h->length,
				"batch holds offsets %" PRIu64 "-%" PRIu64 ", but %" PRIu64
				" follows the batch before it; %s",
				h->base_offset, batch_last_offset(h), w->next_offset, cut);
		return false;
	}
	if (!records_ok)
		problem(path, pos, pos + h->length,
			"records malformed although the checksum matches (stored as it was sent: "
			"a broker that skipped batch_check_records, or a bug)");
	else if (g.records)
		print_records(data);

	index_match(&w->idx, &w->tix, w->seg_base, pos, h, w->batches ? w->max_ts : INT64_MIN);
	if (w->batches == 0)
		w->first_ts = h->first_timestamp;
	if (w->batches == 0 || h->max_timestamp > w->max_ts)
		w->max_ts = h->max_timestamp;
	w->batches++;
	w->records += h->record_count;
	if (batch_compression(h) == BATCH_COMPRESSION_LZ4)
		w->lz4++;
	w->next_offset = h->base_offset + h->record_count;
	return true;
}

/* Where log recovery will start scanning the last segment, as seg_recover
 * does: at the last offset-index entry whose batch is whole, valid and holds
 * the entry's offset (0 without one). It keeps what lies before unchecked. */
static uint64_t recovery_start(const struct walk *w)
{
	if (!w->base_known)
		return 0;
	for (uint32_t i = w->idx.ordered; i-- > 0;) {
		struct idx_entry e = idx_at(&w->idx, i);
		struct seg_reader r;
		struct batch_hdr h;
		const uint8_t *data;
		if (seg_reader_init(&r, w->fd, e.pos) != 0)
			return 0;
		bool ok = seg_reader_next(&r, &h, &data) == 1 &&
			  h.base_offset == w->seg_base + e.rel_offset;
		seg_reader_free(&r);
		if (ok)
			return e.pos;
	}
	return 0;
}

/* What recovery will do about bad bytes at pos in the last segment. */
static const char *recovery_fate(const struct walk *w, uint64_t pos, char *buf, size_t len)
{
	uint64_t start = recovery_start(w);
	if (start <= pos)
		return "recovery cuts the log here";
	snprintf(buf, len,
		 "recovery will NOT cut it: it trusts everything before its last valid index "
		 "entry (position %" PRIu64 "), so these offsets stay unreadable",
		 start);
	return buf;
}

/* The reader stopped at pos with -ENODATA or -EBADMSG: says what is there
 * and whether a crash explains it. */
static void walk_bad(struct walk *w, uint64_t pos, int ret)
{
	const char *path = w->sf->path;
	uint8_t hb[BATCH_HEADER_SIZE];
	ssize_t n = read_at(w->fd, hb, sizeof(hb), pos);
	if (n < 0) {
		io_error(path, (int)-n, "read");
		return;
	}
	struct batch_hdr h;
	bool hdr_ok = batch_parse(hb, (size_t)n, &h) == 0;
	uint64_t end;
	char what[160], fate[200];

	if (ret == -ENODATA) {
		/* The batch (or its header) runs past the end of the file. */
		end = w->size;
		if (hdr_ok)
			snprintf(what, sizeof(what),
				 "batch header says %u bytes, the file ends %" PRIu64 " bytes in",
				 h.length, w->size - pos);
		else
			snprintf(what, sizeof(what),
				 "%" PRIu64
				 " non-zero bytes where a %u-byte batch header should be",
				 w->size - pos, BATCH_HEADER_SIZE);
		out("batch pos=%" PRIu64 " TORN\n", pos);
		if (w->sf->last)
			problem(path, pos, end,
				"torn batch: %s (a write the crash interrupted); %s", what,
				recovery_fate(w, pos, fate, sizeof(fate)));
		else
			problem(path, pos, end,
				"batch cut short: %s (not a crash: a closed segment is sealed "
				"before the next one starts, so the file was truncated or the "
				"length field is damaged)",
				what);
		return;
	}

	if (hdr_ok) {
		end = pos + h.length;
		snprintf(what, sizeof(what),
			 "checksum mismatch (batch of %u bytes, offsets %" PRIu64 "-%" PRIu64
			 " by its header)",
			 h.length, h.base_offset, batch_last_offset(&h));
		out("batch pos=%" PRIu64 " len=%u base=%" PRIu64 " last=%" PRIu64 " count=%u"
		    " compression=%s checksum=BAD\n",
		    pos, h.length, h.base_offset, batch_last_offset(&h), h.record_count,
		    compression_name(&h));
	} else {
		end = pos + ((uint64_t)n < BATCH_HEADER_SIZE ? (uint64_t)n : BATCH_HEADER_SIZE);
		if (n > 0 && hb[BATCH_OFF_MAGIC] != BATCH_MAGIC)
			snprintf(what, sizeof(what),
				 "not a batch header (byte 0 is 0x%02x, not the magic 0x%02x)",
				 hb[BATCH_OFF_MAGIC], BATCH_MAGIC);
		else
			snprintf(what, sizeof(what),
				 "invalid batch header (a field out of range)");
		out("batch pos=%" PRIu64 " header=BAD\n", pos);
	}

	uint64_t first, last_end;
	int err = nonzero_span(w->fd, end, w->size, &first, &last_end);
	if (err != 0) {
		io_error(path, -err, "read");
		return;
	}
	bool more = first < w->size;
	if (w->sf->last && !more)
		problem(path, pos, end,
			"%s, and only zeros follow: most likely a write the crash interrupted; %s",
			what, recovery_fate(w, pos, fate, sizeof(fate)));
	else if (w->sf->last)
		problem(path, pos, end,
			"%s; %" PRIu64 " more bytes follow, up to %" PRIu64
			": damage, not a torn write; %s",
			what, last_end - end, last_end, recovery_fate(w, pos, fate, sizeof(fate)));
	else
		problem(path, pos, end,
			"%s in a closed segment: damage, not a crash%s", what,
			more ? "; the data after it cannot be walked" : "");
}

/* The reader reported a clean end at pos: an all-zero header or the end of
 * the file. Zeros must run to the end of the file. */
static void walk_end(struct walk *w, uint64_t pos)
{
	const char *path = w->sf->path;
	char fate[200];
	w->complete = true;
	if (pos >= w->size) {
		out("end of data at %" PRIu64 " (end of file)\n", pos);
		return;
	}
	uint64_t first, last_end;
	int err = nonzero_span(w->fd, pos, w->size, &first, &last_end);
	if (err != 0) {
		io_error(path, -err, "read");
		w->complete = false;
		return;
	}
	if (first == w->size) {
		out("end of data at %" PRIu64 "; %" PRIu64 " bytes of preallocated space\n", pos,
		    w->size - pos);
		if (!w->sf->last)
			warning(path, "%" PRIu64 " zero bytes after the data at %" PRIu64
				" (a sealed segment is cut to its data; harmless to readers)",
				w->size - pos, pos);
		return;
	}
	w->complete = false;
	out("end of data at %" PRIu64 "; non-zero bytes at %" PRIu64 "-%" PRIu64 "\n", pos, first,
	    last_end);
	/* Writes in flight can reach the disk out of order, so a crash can
	 * lose one and keep a later one; neither was durable yet. */
	if (w->sf->last)
		problem(path, pos, last_end,
			"data after unwritten space: zeros from %" PRIu64 " to %" PRIu64
			", then bytes up to %" PRIu64 " (writes the crash kept out of order); %s",
			pos, first, last_end, recovery_fate(w, pos, fate, sizeof(fate)));
	else
		problem(path, pos, last_end,
			"zeros from %" PRIu64 " to %" PRIu64 " inside a closed segment hide %"
			PRIu64 " bytes of data after them: damage, not a crash",
			pos, first, last_end - first);
}

static void index_report(struct walk *w, struct index *ix)
{
	const char *path = ix->path;
	const char *kind = ix->tix ? "time index" : "offset index";
	if (path == NULL)
		return;
	if (!ix->present) {
		out("index %s: missing\n", path);
		if (w->sf->named && (w->batches > 0 || !w->sf->last))
			warning(path, "%s missing (the broker rebuilds it)", kind);
		return;
	}
	uint32_t esz = ix->tix ? TIX_ENTRY_SIZE : IDX_ENTRY_SIZE;
	uint32_t past = ix->ordered - ix->next; /* entries the walk did not reach */
	bool sealed = !w->sf->last && w->complete && w->batches > 0;
	bool empty = sealed && !ix->tix && ix->n == 0;
	/* Sealing writes a last time entry with the segment's newest
	 * timestamp; retention reads it from there. */
	bool stale_max = sealed && ix->tix && ix->ordered == ix->n &&
			 (ix->n == 0 || tix_at(ix, ix->n - 1).timestamp != w->max_ts);
	bool unreached = past > 0 && !w->complete; /* lie after damaged data */
	bool clean = ix->size % esz == 0 && ix->ordered == ix->n && ix->bad == 0 &&
		     (past == 0 || unreached) && !empty && !stale_max;
	if (clean && !unreached)
		out("index %s: %u entr%s, ordered, inside the data, each at a batch start%s\n",
		    path, ix->n, ix->n == 1 ? "y" : "ies", ix->tix ? ", times consistent" : "");
	else if (clean)
		out("index %s: %u entr%s, ordered; the %u before position %" PRIu64 " each at a "
		    "batch start, the other %u after the damage not checked\n",
		    path, ix->n, ix->n == 1 ? "y" : "ies", ix->next, w->data_end, past);
	else
		out("index %s: %u entr%s, not clean:\n", path, ix->n, ix->n == 1 ? "y" : "ies");
	if (ix->size % esz != 0)
		warning(path, "%zu stray bytes after the last whole entry (a partial write; the "
			"broker ignores them)", ix->size % esz);
	if (ix->ordered < ix->n)
		warning(path, "entry %u of %u is out of order%s; the broker keeps the %u before it "
			"and %s", ix->ordered, ix->n,
			ix->tix ? " or past the offset index" : "", ix->ordered,
			w->sf->last ? "recovery re-derives the rest" : "rebuilds the index");
	if (ix->bad > 0) {
		char detail[96] = "";
		if (ix->tix) {
			struct tix_entry e = tix_at(ix, ix->first_bad);
			snprintf(detail, sizeof(detail), " (timestamp %" PRId64 ", offset +%u",
				 e.timestamp, e.rel_offset);
			if (ix->bad_ts)
				snprintf(detail + strlen(detail), sizeof(detail) - strlen(detail),
					 "; records before it reach %" PRId64, ix->bad_ts_max);
			strcat(detail, ")");
		} else {
			struct idx_entry e = idx_at(ix, ix->first_bad);
			snprintf(detail, sizeof(detail), " (offset +%u, position %u)", e.rel_offset,
				 e.pos);
		}
		uint64_t at = (uint64_t)ix->first_bad * esz;
		problem(path, at, at + esz,
			"entry %u%s %s (%u such entr%s); lookups trust this index: remove the "
			"file to have it rebuilt",
			ix->first_bad, detail, ix->bad_why, ix->bad, ix->bad == 1 ? "y" : "ies");
	}
	if (past > 0 && w->complete)
		warning(path, "%u entr%s past the end of the data (%s)", past,
			past == 1 ? "y" : "ies",
			w->sf->last ? "left by the crash; recovery drops them"
				    : "the broker rebuilds the index");
	else if (past > 0 && !clean)
		out("index %s: %u entr%s after position %" PRIu64 " not checked (the data stops "
		    "being readable there)\n", path, past, past == 1 ? "y" : "ies", w->data_end);
	if (empty)
		warning(path, "no entries for %" PRIu64 " bytes of data (the broker rebuilds it)",
			w->data_end);
	if (stale_max && ix->n == 0)
		warning(path, "empty: retention falls back to the file's mtime");
	else if (stale_max)
		warning(path, "newest timestamp %" PRId64 " differs from the data's %" PRId64
			" (retention goes by the index)", tix_at(ix, ix->n - 1).timestamp,
			w->max_ts);
}

static void format_time(char *buf, size_t len, int64_t ms)
{
	time_t s = (time_t)(ms / 1000);
	struct tm tm;
	if (ms < 0 || gmtime_r(&s, &tm) == NULL || tm.tm_year > 9999 - 1900) {
		snprintf(buf, len, "?");
		return;
	}
	size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, len - n, ".%03dZ", (int)(ms % 1000));
}

struct totals {
	uint32_t segments;
	uint64_t batches, records;
	uint64_t first_offset, end_offset;
	bool any;
	bool prev_known;   /* the previous segment's end offset is trustworthy */
	uint64_t prev_end;
	const char *prev_path;
};

static void walk_segment(const struct seg_file *sf, struct totals *t)
{
	struct walk w = { .sf = sf, .fd = -1 };
	w.seg_base = w.next_offset = sf->base;
	w.base_known = sf->named;
	t->segments++;

	out("== %s (%s segment)\n", sf->path, sf->last ? "last" : "closed");
	if (sf->named && t->prev_known && sf->base != t->prev_end) {
		if (sf->base > t->prev_end)
			problem_file(sf->path,
				     "starts at offset %" PRIu64 " but %s ends at %" PRIu64
				     ": offsets %" PRIu64 "-%" PRIu64 " are missing",
				     sf->base, t->prev_path, t->prev_end, t->prev_end,
				     sf->base - 1);
		else
			problem_file(sf->path,
				     "starts at offset %" PRIu64 " but %s ends at %" PRIu64
				     ": the segments overlap",
				     sf->base, t->prev_path, t->prev_end);
	}

	w.fd = open(sf->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	struct stat st;
	if (w.fd < 0 || fstat(w.fd, &st) != 0) {
		io_error(sf->path, errno, "open");
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		io_error(sf->path, EINVAL, "not a regular file");
		goto out;
	}
	w.size = (uint64_t)st.st_size;
	if (!sf->named)
		out("(not a segment name: the base offset is taken from the first batch)\n");

	index_load(&w.idx, sf->idx_path, false);
	index_load(&w.tix, sf->tix_path, true);
	index_order(&w.idx, &w.tix);

	struct seg_reader r;
	int ret = seg_reader_init(&r, w.fd, 0);
	if (ret != 0) {
		io_error(sf->path, -ret, "stat");
		goto out;
	}
	for (;;) {
		uint64_t pos = r.pos;
		struct batch_hdr h;
		const uint8_t *data;
		ret = seg_reader_next(&r, &h, &data);
		if (ret == 1) {
			if (walk_batch(&w, pos, &h, data)) {
				w.data_end = r.pos;
				continue;
			}
		} else if (ret == 0) {
			walk_end(&w, pos);
		} else if (ret == -ENODATA || ret == -EBADMSG) {
			walk_bad(&w, pos, ret);
		} else {
			io_error(sf->path, -ret, "read");
		}
		break;
	}
	seg_reader_free(&r);

	char from[40], to[40];
	format_time(from, sizeof(from), w.first_ts);
	format_time(to, sizeof(to), w.max_ts);
	if (w.batches > 0)
		out("segment %s: %" PRIu64 " batch%s (%" PRIu64 " lz4), offsets %" PRIu64
		    "-%" PRIu64 " (%" PRIu64 " record%s), %" PRIu64
		    " bytes of data, first timestamp %" PRId64 " (%s), newest %" PRId64 " (%s)%s\n",
		    sf->path, w.batches, w.batches == 1 ? "" : "es", w.lz4, w.seg_base,
		    w.next_offset - 1, w.records, plural(w.records), w.data_end, w.first_ts, from,
		    w.max_ts, to, w.complete ? "" : ", then damaged");
	else
		out("segment %s: no batches%s\n", sf->path, w.complete ? "" : ", damaged");

	index_report(&w, &w.idx);
	index_report(&w, &w.tix);

	if (w.batches > 0) {
		if (!t->any)
			t->first_offset = w.seg_base;
		t->any = true;
		t->end_offset = w.next_offset;
	}
	t->batches += w.batches;
	t->records += w.records;
out:
	/* A damaged segment's end is unknown: do not judge the next one by it. */
	t->prev_known = w.complete && w.base_known;
	t->prev_end = w.next_offset;
	t->prev_path = sf->path;
	free(w.idx.buf);
	free(w.tix.buf);
	if (w.fd >= 0)
		close(w.fd);
}

/* In single-file mode: is there a newer segment next to this one? */
static bool newest_in_dir(const char *dir, uint64_t base)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		return true;
	bool newest = true;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		uint64_t b;
		const char *ext;
		if (seg_parse_name(de->d_name, &b, &ext) == 0 && strcmp(ext, ".log") == 0 &&
		    b > base)
			newest = false;
	}
	closedir(d);
	return newest;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;
	fputs("mqdump: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("; try 'mqdump --help'\n", stderr);
	return 2;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "verify", no_argument, NULL, 'V' },
		{ "records", no_argument, NULL, 'R' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	opterr = 0; /* one line of our own instead of getopt's */
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'V':
			g.verify = true;
			break;
		case 'R':
			g.records = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			return usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (g.verify && g.records)
		return usage_error("--records and --verify do not mix");
	if (optind == argc)
		return usage_error("missing PATH (a segment .log file or a partition directory)");
	if (optind + 1 < argc)
		return usage_error("one PATH only, not also '%s'", argv[optind + 1]);
	const char *path = argv[optind];

	struct stat st;
	if (stat(path, &st) != 0) {
		fprintf(stderr, "mqdump: %s: %s\n", path, strerror(errno));
		return 2;
	}
	struct seg_file *segs = NULL;
	int n;
	if (S_ISDIR(st.st_mode)) {
		n = list_dir(path, &segs);
		if (n < 0) {
			fprintf(stderr, "mqdump: %s: %s\n", path, strerror(-n));
			return 2;
		}
		if (n == 0) {
			fprintf(stderr,
				"mqdump: %s: no segment files (NNNNNNNNNNNNNNNNNNNN.log) here\n",
				path);
			free(segs);
			return 2;
		}
		segs[n - 1].last = true;
	} else {
		char *copy = xstrdup(path);
		char *slash = strrchr(copy, '/');
		const char *name = slash ? slash + 1 : copy;
		uint64_t base;
		const char *ext;
		if (seg_parse_name(name, &base, &ext) == 0 && strcmp(ext, ".log") != 0) {
			free(copy);
			return usage_error("'%s' is an index file: give its .log file", path);
		}
		segs = calloc(1, sizeof(*segs));
		if (segs == NULL) {
			perror("mqdump");
			return 2;
		}
		if (slash != NULL)
			*slash = '\0';
		const char *dir = slash == NULL ? NULL : slash == copy ? "/" : copy;
		seg_file_init(&segs[0], path, dir, name);
		/* A file that is not named like a segment cannot be placed in a
		 * log: judge it as the last one, where a torn tail is expected. */
		segs[0].last = !segs[0].named || newest_in_dir(dir ? dir : ".", segs[0].base);
		free(copy);
		n = 1;
	}

	struct totals t = { 0 };
	for (int i = 0; i < n; i++)
		walk_segment(&segs[i], &t);

	if (!g.verify) {
		printf("total: %u segment%s, %" PRIu64 " batch%s, %" PRIu64 " record%s", t.segments,
		       plural(t.segments), t.batches, t.batches == 1 ? "" : "es", t.records,
		       plural(t.records));
		if (t.any)
			printf(", offsets %" PRIu64 "-%" PRIu64, t.first_offset, t.end_offset - 1);
		printf("; %u problem%s, %u warning%s%s\n", g.problems, plural(g.problems),
		       g.warnings, plural(g.warnings), g.io_errors ? ", I/O errors" : "");
	} else if (g.problems == 0 && g.io_errors == 0) {
		printf("ok: %s: %u segment%s, %" PRIu64 " batch%s", path, t.segments,
		       plural(t.segments), t.batches, t.batches == 1 ? "" : "es");
		if (t.any)
			printf(", offsets %" PRIu64 "-%" PRIu64, t.first_offset, t.end_offset - 1);
		if (g.warnings)
			printf(" (%u warning%s)", g.warnings, plural(g.warnings));
		putchar('\n');
	}
	for (int i = 0; i < n; i++)
		seg_file_free(&segs[i]);
	free(segs);
	free(g.scratch);
	fflush(stdout);
	if (g.io_errors)
		return 2;
	return g.problems ? 1 : 0;
}
