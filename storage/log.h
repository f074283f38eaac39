/* log.h — one partition's log: segments, indexes, the io_uring append
 * pipeline with group commit, recovery and retention.
 *
 * Ownership
 * - A log_env belongs to one thread (a broker loop, or a tool's main) and
 *   borrows that thread's ioq; it owns the staging memory its logs append
 *   into. Every log opened on an env, and every call on those logs, belongs
 *   to the same thread. Nothing here is thread-safe.
 * - log_append() copies the batch; the caller's buffer is free on return.
 * - A log_waiter belongs to the caller; the log holds it (intrusively) from
 *   log_wait_*() until its fn runs, exactly once.
 * - A log_slice pins its segment's file: the fd stays open, even if
 *   retention deletes the segment, until log_slice_release().
 *
 * Offsets and watermarks (all "end" values are exclusive):
 *   start <= durable_end <= written_end <= end
 *   end          next offset log_append() will assign (includes staged bytes)
 *   written_end  every batch below it is fully written to the file: the
 *                order of io_uring completions and short writes never let
 *                it pass a byte that is not in the file (invariant W)
 *   durable_end  every batch below it was covered by a completed fdatasync
 *                that was submitted after those writes completed (invariant D)
 *   visible_end  what readers may see: durable_end under flush "always",
 *                written_end otherwise
 *
 * I/O
 * - Appends are staged in memory and turned into write SQEs by
 *   log_env_flush(), which the owning loop calls once per iteration (before
 *   it submits): all appends of one iteration to one log become one write.
 * - Durability waiters share fdatasyncs: at most one is in flight per log, and
 *   it covers everything written when it was submitted (group commit).
 * - Segment roll, index writes, retention deletes and error clean-up are
 *   io_uring operations too; only log_open(), log_close(), log_read(),
 *   log_offset_for_time() and the *_sync() wrappers block.
 *
 * Errors are negative errno values:
 *   -ENOBUFS   the env's staging memory is full: retry after completions
 *   -EMSGSIZE  a batch larger than the log will take
 *   -ERANGE    an offset outside [start, visible_end]
 *   -EIO, -ENOSPC, ...  a write or fdatasync failed. Waiters whose batches
 *              were not written get the error; the log zeroes whatever may
 *              have reached the file past written_end and then takes
 *              appends again. After a failed fdatasync the log refuses
 *              appends (-EIO) until it is reopened, because the kernel may
 *              have dropped the dirty pages it could not write.
 */
#ifndef RINGMQ_LOG_H
#define RINGMQ_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/ioq.h"
#include "storage/batch.h"

enum log_flush {
	LOG_FLUSH_ALWAYS,   /* fdatasync before acks=all replies; readers see durable data only */
	LOG_FLUSH_INTERVAL, /* fdatasync every flush_interval_ms */
	LOG_FLUSH_NEVER,    /* leave it to the kernel */
};

struct log_config {
	uint64_t segment_bytes;        /* roll when the next batch would pass this */
	int64_t segment_ms;            /* roll when the first batch is older; <= 0: never */
	uint32_t index_interval_bytes; /* bytes between offset index entries */
	int64_t retention_ms;          /* delete closed segments older; < 0: keep */
	int64_t retention_bytes;       /* delete oldest closed segments beyond; < 0: keep */
	enum log_flush flush;
	uint32_t flush_interval_ms;    /* for LOG_FLUSH_INTERVAL */
	bool preallocate;              /* fallocate segment_bytes when a segment starts */
	uint32_t max_writes_in_flight; /* per log; >= 1 */
};

/* Defaults: 64 MiB segments, 7-day segment.ms and retention, no byte limit,
 * 4096-byte index interval, flush always, preallocation on, 4 writes in flight. */
void log_config_default(struct log_config *cfg);

/* Returns 0 or -EINVAL with a reason in *why if a value is out of range. */
int log_config_check(const struct log_config *cfg, const char **why);

const char *log_flush_name(enum log_flush flush);

struct log_env;
struct log;

/* staging_max: bytes of appended-but-not-yet-written data all logs of this
 * env may hold at once; appends past it get -ENOBUFS. */
struct log_env *log_env_new(struct ioq *q, size_t staging_max);
/* All logs of the env must be closed first. */
void log_env_free(struct log_env *env);

/* Tests only: every fdatasync starts this long after it is asked for, so a
 * test can observe that acknowledgements wait for it. */
void log_env_set_fsync_delay(struct log_env *env, uint32_t delay_ms);

/* Turns staged appends into writes and starts wanted fdatasyncs. Call before
 * submitting the ring, once per loop iteration. */
void log_env_flush(struct log_env *env);

/* Bytes currently staged across the env's logs. */
size_t log_env_staged(const struct log_env *env);
size_t log_env_staging_max(const struct log_env *env);

/* fdatasync latency, for metrics. Bucket i counts syncs that took at most
 * log_fsync_buckets_us[i] microseconds; the last bucket is unbounded. */
#define LOG_FSYNC_BUCKETS 14
extern const uint32_t log_fsync_buckets_us[LOG_FSYNC_BUCKETS - 1];
struct log_env_stats {
	uint64_t fsyncs;
	uint64_t fsync_us_total;
	uint64_t fsync_hist[LOG_FSYNC_BUCKETS];
	uint64_t bytes_written;
	uint64_t writes;
};
const struct log_env_stats *log_env_stats(const struct log_env *env);

/* What log_open() found and repaired. */
struct log_recovery {
	uint32_t segments;
	uint64_t scanned_bytes;   /* read from the active segment's tail */
	uint64_t truncated_at;    /* position of the cut in the active segment */
	uint64_t truncated_bytes; /* bytes cut (0: clean); from the cut to the
				     last non-zero byte the scan saw */
	const char *truncated_why; /* static string, NULL if clean */
	bool index_rebuilt;
};

/* Opens (creating if needed) the log in `dir`, which must exist. Scans only
 * the active segment from its last valid index entry, cuts a torn or corrupt
 * tail, and rebuilds a missing or damaged active index. The active segment
 * is durable (and shown by a flush-always log) only after the first
 * fdatasync, which the first log_tick asks for: a kill -9 may have left it
 * in the page cache only. Blocking; for
 * start-up and admin threads: it may run on any thread, since it changes
 * nothing in the env; the log belongs to the env's thread from its first
 * other call. Returns 0 with *out, or -errno. `report` may be NULL. */
int log_open(struct log_env *env, const char *dir, const struct log_config *cfg,
	     struct log **out, struct log_recovery *report);

/* Writes out everything staged, waits for all I/O, fdatasyncs data and
 * indexes, closes the files and frees the log. Blocking; pending waiters get
 * their results before it returns. Returns 0 or the first I/O error. */
int log_close(struct log *log);

/* True while the log has I/O in flight or staged bytes. */
bool log_busy(const struct log *log);

/* Frees a log whose files are being deleted: no fdatasync, no index
 * writes. The log must not be busy. Waiters get -ENOENT. Slices still
 * pinned stay readable until released. */
void log_discard(struct log *log);

/* Applies a new config (retention, flush, segment sizes) from now on. */
int log_set_config(struct log *log, const struct log_config *cfg);
const struct log_config *log_get_config(const struct log *log);
const char *log_dir(const struct log *log);

uint64_t log_start(const struct log *log);
uint64_t log_end(const struct log *log);
uint64_t log_written_end(const struct log *log);
/* In the callback of a waiter that a failed write or segment start fails:
 * the first offset that failed. Every append from there on is gone; the
 * ones before it stay. */
uint64_t log_failed_from(const struct log *log);
uint64_t log_durable_end(const struct log *log);
uint64_t log_visible_end(const struct log *log);
/* 0, or the error that stopped the log for good (a failed fdatasync, or a
 * failed clean-up after a failed write): it takes no appends until reopened. */
int log_error(const struct log *log);
/* Bytes on disk in all segments (data, not preallocation). */
uint64_t log_size_bytes(const struct log *log);
uint32_t log_segment_count(const struct log *log);

/* Appends one batch that the caller has verified (batch_verify). The log
 * stamps its base offset and checksum in its own copy. Returns 0 with
 * *base_offset set, or -ENOBUFS / -EMSGSIZE / the log's failure errno.
 * Never blocks; the write starts at the next log_env_flush(). */
int log_append(struct log *log, const void *batch, uint32_t len, uint64_t *base_offset);

struct log_waiter {
	uint64_t offset; /* fire once written/durable_end > offset */
	void (*fn)(struct log_waiter *w, int err);
	struct log_waiter *next; /* owned by the log while queued */
};

/* Calls w->fn(w, 0) once the batch holding w->offset is written (or durable),
 * or w->fn(w, -err) if it never will be. May call fn before returning if it
 * already is. w->offset must be below log_end(). */
void log_wait_written(struct log *log, struct log_waiter *w);
void log_wait_durable(struct log *log, struct log_waiter *w);

/* fn(arg) runs whenever visible_end advances (for waking long-poll reads). */
void log_set_visible_listener(struct log *log, void (*fn)(void *arg), void *arg);

/* Lets retention delete every closed segment whose messages all lie below
 * `offset` (for logs compacted by their owner, such as the offsets store).
 * The deletes happen at the next log_tick. */
void log_delete_before(struct log *log, uint64_t offset);

/* Rolls the active segment on segment.ms, runs interval fdatasyncs, and
 * starts retention deletes. Call every few hundred ms with the wall clock. */
void log_tick(struct log *log, int64_t now_ms);

/* A run of stored batch bytes, for sending as they are. */
struct log_slice {
	int fd;
	uint64_t pos;          /* file position of the first batch */
	uint32_t len;          /* bytes; 0 when offset == visible_end */
	uint64_t base_offset;  /* of the first batch (<= the offset asked for) */
	void *seg;             /* pin; opaque */
};

/* Finds the batch holding `offset` and returns the bytes from it up to
 * max_bytes or the visible end, whichever comes first. The slice always
 * holds the whole first batch (even past max_bytes); it may end inside a
 * later batch, which readers drop. Reads batch headers with pread (page
 * cache in practice; the tail is found without I/O). Returns 0, -ERANGE if
 * offset is outside [start, visible_end], -EBADMSG if the stored bytes are
 * damaged where the lookup had to read them, or a read errno. */
int log_read(struct log *log, uint64_t offset, uint32_t max_bytes, struct log_slice *slice);
/* `log` may be NULL: a slice outlives its log (a deleted topic) safely. */
void log_slice_release(struct log *log, struct log_slice *slice);

/* The first offset whose record timestamp is >= ts_ms, or visible_end if
 * there is none. Reads indexes and at most a few batches. Returns 0 or -errno. */
int log_offset_for_time(struct log *log, int64_t ts_ms, uint64_t *offset);

/* Visits the headers of the log's newest batches, newest first, so that state
 * derived from the tail (a broker's idempotent producers) can be rebuilt at
 * start-up without reading the whole log. Meant for right after log_open(),
 * before any append (-EBUSY if something is staged).
 *
 * The walk goes back from the end in steps of 16 KiB growing to 64 KiB, each
 * starting at an index entry, across segment boundaries (an older segment's
 * index is loaded, as a read there would), reading batch headers only (no
 * checksums: log_open() verified the active segment's tail, and closed
 * segments are trusted as everywhere else). It stops when fn returns
 * non-zero, at the log's start, or once it has covered max_bytes: a step
 * begins at an index entry, so it may read up to one index interval and one
 * batch more. Reads stay near the end: cost follows how far fn wants to go,
 * bounded by max_bytes, not the log's size. Blocking.
 *
 * Returns 0, -EBUSY, -EBADMSG if the headers do not chain (a batch not where
 * the index or its neighbour says, offsets not dense), or a read errno. fn
 * has then seen every batch newer than the problem. */
int log_scan_tail(struct log *log, uint64_t max_bytes,
		  int (*fn)(void *arg, const struct batch_hdr *h), void *arg);

/* ---- synchronous wrappers, for tools and tests that own the env's ioq ---- */

/* Appends and waits until written (durable=false) or durable. */
int log_append_sync(struct log *log, const void *batch, uint32_t len, bool durable,
		    uint64_t *base_offset);

/* Waits until everything appended so far is durable. */
int log_sync(struct log *log);

/* Runs log_tick() and waits for the retention deletes and roll it started. */
int log_tick_sync(struct log *log, int64_t now_ms);

/* Copies up to cap bytes of log_read()'s slice into buf. Returns bytes
 * copied (0 at the end), or -errno. */
ssize_t log_read_copy(struct log *log, uint64_t offset, void *buf, uint32_t cap,
		      uint64_t *base_offset);

#endif
