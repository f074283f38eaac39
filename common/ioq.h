/* ioq.h — one io_uring shared by the modules of one thread, and the dispatch
 * of its completions.
 *
 * Contract:
 * - Every SQE carries a pointer to a struct ioq_op as user_data. ioq_dispatch()
 *   calls op->done(op, res, cqe_flags) once per completion. The op, and every
 *   buffer its SQE points to, belongs to the kernel from ioq_sqe() until done()
 *   runs (for multishot ops: until a completion without IORING_CQE_F_MORE).
 * - done() may queue new SQEs; it must not call ioq_dispatch() or ioq_wait().
 * - Errors are negative errno values, as io_uring reports them.
 * - Not thread-safe: one thread owns an ioq and everything submitted on it.
 *
 * Tests install a fault hook to rewrite completion results (short writes,
 * injected errors) and to deliver each harvested group of completions in a
 * shuffled order. Shuffling is only sound for independent disk ops: never for
 * multishot network ops, whose completions carry a byte stream in order.
 */
#ifndef RINGMQ_IOQ_H
#define RINGMQ_IOQ_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>

enum ioq_kind {
	IOQ_OTHER = 0,
	IOQ_WRITE,     /* a write of log data: res is bytes written */
	IOQ_INDEX,     /* a write to an index file */
	IOQ_FSYNC,
	IOQ_READ,
	IOQ_NET,
	IOQ_OPEN,      /* res is a file descriptor */
	IOQ_FALLOCATE, /* fallocate: reserve, punch */
	IOQ_TRUNCATE,
	IOQ_UNLINK,
};

#define IOQ_HELD_MAX 1024

struct ioq_op {
	void (*done)(struct ioq_op *op, int res, unsigned cqe_flags);
	enum ioq_kind kind;
};

struct ioq_held {
	struct ioq_op *op;
	int res;
	unsigned flags;
};

struct ioq_fault {
	/* Sees every completion before done(); may rewrite *res. */
	void (*hook)(void *arg, const struct ioq_op *op, int *res);
	/* Returns true to hold a completion back until ioq_fault_release():
	 * the kernel is done with it, but its owner does not know yet, as if
	 * the kernel had completed it later. Held completions skip `hook`. */
	bool (*hold)(void *arg, const struct ioq_op *op, int res);
	void *arg;
	bool shuffle;
	uint64_t seed; /* xorshift state for the shuffle; nonzero */
	struct ioq_held held[IOQ_HELD_MAX];
	unsigned nheld;
};

struct ioq {
	struct io_uring ring;
	struct ioq_fault *fault; /* NULL outside tests */
	uint64_t sqes_total;     /* SQEs handed out, for metrics */
	uint64_t cqes_total;     /* completions dispatched */
	uint64_t submits_total;  /* io_uring_enter calls that submitted */
};

/* Sets up a ring with at least `entries` SQEs. Tries the single-issuer
 * task-run flags first (cheaper completions) and falls back for older
 * kernels. Returns 0 or -errno. */
int ioq_init(struct ioq *q, unsigned entries);
void ioq_exit(struct ioq *q);

/* Returns an SQE whose user_data is `op`. If the submission queue is full it
 * submits what is queued to make room, so it never fails. */
struct io_uring_sqe *ioq_sqe(struct ioq *q, struct ioq_op *op);

/* Submits queued SQEs without waiting. Returns 0 or -errno. */
int ioq_submit(struct ioq *q);

/* Dispatches every completion that is ready, without waiting. Returns how many. */
unsigned ioq_dispatch(struct ioq *q);

/* Submits, waits until at least one completion is ready or timeout_ms passes
 * (-1: no timeout), then dispatches. Returns completions dispatched, or -errno
 * (-ETIME on timeout is reported as 0). */
int ioq_wait(struct ioq *q, int timeout_ms);

/* Tests: delivers up to `max` held completions (in a shuffled order if the
 * fault says so). Returns how many. */
unsigned ioq_fault_release(struct ioq *q, unsigned max);

/* True if the running kernel supports io_uring opcode `opcode`. */
bool ioq_supports(struct ioq *q, int opcode);

#endif
