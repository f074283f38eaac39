/* ioq.c — io_uring setup and completion dispatch (see ioq.h). */
#include "common/ioq.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

int ioq_init(struct ioq *q, unsigned entries)
{
	memset(q, 0, sizeof(*q));
	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	/* A completion queue four times the SQ: multishot recv and many
	 * in-flight writes can complete in bursts larger than one submission. */
	p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL |
		  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
		  IORING_SETUP_DEFER_TASKRUN;
	p.cq_entries = entries * 4;
	int ret = io_uring_queue_init_params(entries, &q->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = entries * 4;
		ret = io_uring_queue_init_params(entries, &q->ring, &p);
	}
	return ret;
}

void ioq_exit(struct ioq *q)
{
	io_uring_queue_exit(&q->ring);
}

struct io_uring_sqe *ioq_sqe(struct ioq *q, struct ioq_op *op)
{
	assert(op != NULL);
	assert(op->done != NULL);
	struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
	while (sqe == NULL) {
		/* The SQ is full: hand it to the kernel. With SUBMIT_ALL the
		 * kernel takes every SQE, so one submit frees the whole ring. */
		int ret = io_uring_submit(&q->ring);
		assert(ret >= 0 || ret == -EINTR || ret == -EAGAIN || ret == -EBUSY);
		if (ret > 0)
			q->submits_total++;
		sqe = io_uring_get_sqe(&q->ring);
	}
	io_uring_sqe_set_data(sqe, op);
	q->sqes_total++;
	return sqe;
}

int ioq_submit(struct ioq *q)
{
	int ret = io_uring_submit(&q->ring);
	if (ret > 0)
		q->submits_total++;
	return ret < 0 ? ret : 0;
}

struct harvested {
	struct ioq_op *op;
	int res;
	unsigned flags;
};

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

unsigned ioq_dispatch(struct ioq *q)
{
	unsigned total = 0;
	for (;;) {
		/* Copy completions out and release their CQ slots before
		 * running handlers, so a handler that queues work never
		 * finds the CQ holding stale entries. */
		struct io_uring_cqe *cqes[64];
		struct harvested h[64];
		unsigned n = io_uring_peek_batch_cqe(&q->ring, cqes, 64);
		if (n == 0)
			break;
		for (unsigned i = 0; i < n; i++) {
			h[i].op = io_uring_cqe_get_data(cqes[i]);
			h[i].res = cqes[i]->res;
			h[i].flags = cqes[i]->flags;
		}
		io_uring_cq_advance(&q->ring, n);

		struct ioq_fault *f = q->fault;
		if (f != NULL && f->shuffle) {
			for (unsigned i = n; i > 1; i--) {
				unsigned j = (unsigned)(xorshift(&f->seed) % i);
				struct harvested t = h[i - 1];
				h[i - 1] = h[j];
				h[j] = t;
			}
		}
		for (unsigned i = 0; i < n; i++) {
			assert(h[i].op != NULL);
			if (f != NULL && f->hold != NULL && f->nheld < IOQ_HELD_MAX &&
			    f->hold(f->arg, h[i].op, h[i].res)) {
				f->held[f->nheld].op = h[i].op;
				f->held[f->nheld].res = h[i].res;
				f->held[f->nheld].flags = h[i].flags;
				f->nheld++;
				continue;
			}
			if (f != NULL && f->hook != NULL)
				f->hook(f->arg, h[i].op, &h[i].res);
			h[i].op->done(h[i].op, h[i].res, h[i].flags);
		}
		q->cqes_total += n;
		total += n;
	}
	return total;
}

unsigned ioq_fault_release(struct ioq *q, unsigned max)
{
	struct ioq_fault *f = q->fault;
	if (f == NULL || f->nheld == 0)
		return 0;
	if (f->shuffle) {
		for (unsigned i = f->nheld; i > 1; i--) {
			unsigned j = (unsigned)(xorshift(&f->seed) % i);
			struct ioq_held t = f->held[i - 1];
			f->held[i - 1] = f->held[j];
			f->held[j] = t;
		}
	}
	unsigned n = max < f->nheld ? max : f->nheld;
	/* Deliver from the end, so a handler that holds again appends
	 * safely behind what is still to be delivered. */
	for (unsigned i = 0; i < n; i++) {
		struct ioq_held h = f->held[--f->nheld];
		h.op->done(h.op, h.res, h.flags);
	}
	return n;
}

int ioq_wait(struct ioq *q, int timeout_ms)
{
	struct io_uring_cqe *cqe;
	int ret;
	if (timeout_ms < 0) {
		ret = io_uring_submit_and_wait(&q->ring, 1);
	} else {
		struct __kernel_timespec ts = {
			.tv_sec = timeout_ms / 1000,
			.tv_nsec = (long long)(timeout_ms % 1000) * 1000000,
		};
		ret = io_uring_submit_and_wait_timeout(&q->ring, &cqe, 1, &ts, NULL);
	}
	if (ret < 0 && ret != -ETIME && ret != -EINTR)
		return ret;
	return (int)ioq_dispatch(q);
}

bool ioq_supports(struct ioq *q, int opcode)
{
	struct io_uring_probe *probe = io_uring_get_probe_ring(&q->ring);
	if (probe == NULL)
		return false;
	bool ok = io_uring_opcode_supported(probe, opcode) != 0;
	io_uring_free_probe(probe);
	return ok;
}
