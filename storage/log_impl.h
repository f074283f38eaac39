/* log_impl.h — the log's internal structures, shared by log.c (append,
 * writes, group commit, roll, retention), log_open.c (open, recovery,
 * close) and log_read.c (reads and lookups). Not part of the storage API:
 * only storage/ includes it. log.h states the contract.
 *
 * Invariants (cited in code as (W), (D), (S1) ...):
 * (W)  written_end only advances over a contiguous prefix of writes that
 *      completed in full: completions are popped from the write FIFO in
 *      submission order, and a short write is resubmitted before its op
 *      counts as complete.
 * (D)  durable_end only advances to the written_end captured when an
 *      fdatasync was submitted, once that fdatasync completes (or when the
 *      seal of the segment holding those batches completes).
 * (S1) At most one segment has files and is not CLOSED (the ACTIVE or
 *      SEALING one): a new segment's files are created only after the
 *      previous segment is sealed (truncated to its data and fdatasynced).
 *      So after a crash only the last segment can have a torn tail, and
 *      recovery scans only it; and at most one segment ever needs an
 *      fdatasync for group commit.
 * (S2) Staged bytes of a segment are written only while it is ACTIVE or
 *      SEALING; a SEALING segment takes no new appends.
 * (S3) Bytes past written_pos in the file may exist only while writes are in
 *      flight or after a failure; the failure path and recovery punch them
 *      out before anything else is appended there, so no stale batch can be
 *      read back as if it followed newer ones.
 *
 * Segment states and the function behind each transition:
 *   PENDING  -> CREATING  [seg_create_start]  the previous segment is CLOSED
 *   CREATING -> ACTIVE    [create_step]       files opened, dir synced, space reserved
 *   CREATING -> removed   [create_failed]     its staged appends get the error
 *   ACTIVE   -> SEALING   [log_roll]          next batch does not fit, or segment.ms
 *   SEALING  -> CLOSED    [seal_step]         writes done, truncated, synced
 *   SEALING  -> ACTIVE    [writes_rewind]     a write failed: the roll is undone
 *   PENDING  -> removed   [writes_rewind]
 *   CLOSED   -> deleted   [retention_delete]
 */
#ifndef RINGMQ_LOG_IMPL_H
#define RINGMQ_LOG_IMPL_H

#include "storage/log.h"
#include "storage/segment.h"

/* Staged appends live in chunks. 256 KiB turns a burst of small appends into
 * few large writes; a batch larger than that gets a chunk of its own. */
#define CHUNK_SIZE (256u << 10)
/* Fully written chunks kept for reuse, per env, so a busy log never pays
 * for a fresh mmap per write. */
#define CHUNK_FREE_MAX 64u
/* Index entries encoded per index-file write. */
#define IDXW_ENTRIES 512u
/* Read window for lookups: a walk from an index entry covers about one
 * index interval, so a small window avoids copying megabytes per lookup. */
#define LOOKUP_READ_AHEAD (32u << 10)

/* Positions of the newest batches of the last segment, so reads at the tail
 * (where consumers usually are) find their batch without reading headers. */
#define RECENT_BATCHES 128u

/* IORING_OP_FTRUNCATE arrived in Linux 6.9, after the liburing Debian
 * ships; its number is fixed by the kernel ABI. */
#define RINGMQ_IORING_OP_FTRUNCATE 55

enum seg_state { SEG_PENDING, SEG_CREATING, SEG_ACTIVE, SEG_SEALING, SEG_CLOSED };

struct segment;

/* One io_uring op on behalf of a segment; `which` tells the handler which. */
struct seg_op {
	struct ioq_op op;
	struct segment *seg;
	int which;
};

/* Writes a segment's in-memory index entries out to an index file. */
struct idx_writer {
	struct seg_op op;
	bool inflight;
	uint32_t count; /* entries in the write in flight */
	uint8_t buf[IDXW_ENTRIES * TIX_ENTRY_SIZE];
};

/* State that only a segment being created, written or sealed needs. */
struct seg_io {
	struct idx_writer idx_w, tix_w;
	struct seg_op step[3]; /* create, seal, rewind, delete: up to three ops at once */
	int step_no;
	int step_pending;
	int step_err;
};

struct segment {
	struct log *log;
	uint64_t base;
	enum seg_state state;
	int fd, idx_fd, tix_fd;
	uint64_t end_pos;       /* bytes assigned, staged included */
	uint64_t submitted_pos; /* bytes handed to write SQEs */
	uint64_t written_pos;   /* (W) */
	uint64_t synced_pos;    /* (D) */
	uint64_t end_offset;    /* offset after the last batch assigned here */
	uint64_t file_size;
	int64_t created_ms;     /* wall clock of the first append; drives segment.ms */
	int64_t max_ts;
	bool max_ts_known;
	struct idx_entry *idx;
	uint32_t idx_n, idx_cap, idx_written;
	struct tix_entry *tix;
	uint32_t tix_n, tix_cap, tix_written;
	bool idx_loaded;        /* closed segments load their index lazily */
	bool index_broken;      /* an index write failed: stop writing; open rebuilds */
	uint64_t last_index_pos;
	int64_t last_tix_ts;
	struct seg_io *io;      /* NULL while CLOSED and idle */
	uint32_t ops_inflight;  /* SQEs naming this segment */
	uint32_t refs;          /* 1 while listed, plus one per slice */
	char name_log[SEG_NAME_MAX], name_idx[SEG_NAME_MAX], name_tix[SEG_NAME_MAX];
};

struct chunk {
	struct chunk *next;
	struct segment *seg;
	uint64_t file_pos;     /* where data[0] goes in seg */
	uint64_t fill_end;     /* log offset after the last batch in data[0, fill) */
	uint32_t cap, fill, submitted, written;
	uint32_t inflight;     /* writes reading from this chunk */
	uint8_t data[];
};

struct wop {
	struct ioq_op op;
	struct log *log;
	struct chunk *chunk;
	struct wop *next;
	uint32_t off, len, done;
	uint64_t file_pos;
	uint64_t end_offset;   /* log offset after the last batch in this write */
	uint64_t flush_gen;    /* the log_env_flush that submitted it */
	int err;
	bool complete;
};

struct log_env {
	struct ioq *q;
	size_t staging_max;
	size_t staged;
	struct chunk *free_chunks;
	uint32_t free_chunk_count;
	struct wop *free_wops;
	struct log *dirty;      /* logs with work for log_env_flush */
	_Atomic uint32_t logs;  /* log_open may run on another thread */
	struct log_env_stats stats;
	bool ftruncate_op;      /* the kernel has IORING_OP_FTRUNCATE */
	uint64_t flush_gen;     /* log_env_flush calls so far */
	uint32_t fsync_delay_ms; /* tests: see log_env_set_fsync_delay */
};

struct log {
	struct log_env *env;
	struct log_config cfg;
	char *dir;
	int dirfd;
	struct segment **segs;
	uint32_t nsegs, segs_cap;
	uint64_t start, end, written_end, durable_end;
	/* staged and in-flight writes */
	struct chunk *chunk_head, *chunk_tail;
	struct wop *wop_head, *wop_tail;
	uint32_t wops_inflight;
	uint64_t done_gen;     /* flush_gen of the last write that completed */
	/* group commit */
	struct seg_op sync_op;
	bool sync_inflight, sync_wanted;
	uint64_t sync_target;
	uint64_t sync_pos;
	int64_t sync_started_us;
	struct seg_op sync_delay_op;
	struct __kernel_timespec sync_delay_ts;
	int64_t last_sync_ms;
	/* waiters */
	struct log_waiter *wq_head, *wq_tail; /* written */
	struct log_waiter *dq_head, *dq_tail; /* durable */
	void (*visible_fn)(void *);
	void *visible_arg;
	/* recent batch positions in the last segment: a ring, oldest first */
	struct recent_batch {
		uint64_t base;
		uint64_t pos;
	} *recent;
	uint32_t recent_first, recent_n;
	struct segment *recent_seg;
	uint64_t delete_before; /* log_delete_before */
	/* failures */
	int wfail;  /* a write failed: rewinding; appends refused meanwhile */
	int failed; /* permanent until reopened */
	bool rewinding;
	uint64_t fail_from; /* the first offset of the appends that failed last */
	/* Failed writes are logged at most every 10 s per log: a producer
	 * retrying into a full disk fails one write per retry. */
	int64_t wfail_log_ms;
	uint64_t wfail_unlogged;
	bool wfail_logged;  /* this failure was logged: so is its recovery */
	/* env bookkeeping */
	bool in_dirty_list;
	struct log *next_dirty;
	uint32_t ops_inflight; /* every SQE this log submitted */
};

/* log.c */
int64_t log_wall_ms(void);
struct segment *seg_new(struct log *log, uint64_t base);
void seg_free(struct segment *seg);
void seg_unref(struct segment *seg);
int segs_push(struct log *log, struct segment *seg);
int seg_index_batch(struct segment *seg, const struct batch_hdr *h, uint64_t pos,
		    uint32_t interval);
void seg_index_final(struct segment *seg);
void log_mark_dirty(struct log *log);
void log_fail_permanently(struct log *log, int err, const char *what);
void log_drop_waiters(struct log *log, int err);
void log_set_watermarks(struct log *log, uint64_t written, uint64_t durable);

/* log_open.c */
bool seg_read_index_files(struct log *log, struct segment *seg, uint64_t data_end);

/* log_read.c */
int seg_load_index(struct log *log, struct segment *seg);
uint32_t seg_idx_lookup(const struct segment *seg, uint64_t offset);

#endif
