/* worker.c — the admin thread for blocking file-system work (see worker.h). */
#include "broker/worker.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "broker/broker.h"
#include "common/say.h"

struct worker {
	struct loop *loop;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *todo_head, *todo_tail; /* guarded by mu */
	struct job *done_head, *done_tail; /* guarded by mu */
	bool stop;                         /* guarded by mu */
	unsigned pending;                  /* loop thread: submitted, not reaped */
	int efd;
	struct ioq_op read_op, cancel_op;
	uint64_t efd_value;
	bool read_armed;
};

static void push(struct job **head, struct job **tail, struct job *j)
{
	j->next = NULL;
	if (*tail)
		(*tail)->next = j;
	else
		*head = j;
	*tail = j;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->todo_head == NULL && !w->stop)
			pthread_cond_wait(&w->cv, &w->mu);
		struct job *j = w->todo_head;
		if (j == NULL)
			break; /* stopping and nothing left */
		w->todo_head = j->next;
		if (w->todo_head == NULL)
			w->todo_tail = NULL;
		pthread_mutex_unlock(&w->mu);
		j->run(j);
		pthread_mutex_lock(&w->mu);
		push(&w->done_head, &w->done_tail, j);
		uint64_t one = 1;
		if (write(w->efd, &one, sizeof(one)) != sizeof(one))
			say_error("worker: cannot signal the loop: %s", "eventfd write failed");
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static void reap(struct worker *w)
{
	pthread_mutex_lock(&w->mu);
	struct job *j = w->done_head;
	w->done_head = w->done_tail = NULL;
	pthread_mutex_unlock(&w->mu);
	while (j != NULL) {
		struct job *next = j->next;
		w->pending--;
		j->done(w->loop, j);
		j = next;
	}
}

static void arm(struct worker *w);

static void read_done(struct ioq_op *op, int res, unsigned flags)
{
	struct worker *w = (struct worker *)((char *)op - offsetof(struct worker, read_op));
	(void)flags;
	w->read_armed = false;
	if (res < 0 && res != -EINTR && res != -ECANCELED)
		say_error("worker: eventfd read failed: %d", res);
	reap(w);
	if (res != -ECANCELED && !w->stop) /* stop: set before join, read after */
		arm(w);
}

static void arm(struct worker *w)
{
	if (w->read_armed)
		return;
	w->read_op.done = read_done;
	w->read_op.kind = IOQ_OTHER;
	struct io_uring_sqe *sqe = ioq_sqe(&w->loop->q, &w->read_op);
	io_uring_prep_read(sqe, w->efd, &w->efd_value, sizeof(w->efd_value), 0);
	w->read_armed = true;
}

static void cancel_done(struct ioq_op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;
	(void)flags;
}

struct worker *worker_start(struct loop *l)
{
	struct worker *w = calloc(1, sizeof(*w));
	if (w == NULL)
		return NULL;
	w->loop = l;
	w->efd = eventfd(0, EFD_CLOEXEC);
	if (w->efd < 0) {
		free(w);
		return NULL;
	}
	w->cancel_op.done = cancel_done;
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
		close(w->efd);
		free(w);
		return NULL;
	}
	arm(w);
	return w;
}

void worker_submit(struct worker *w, struct job *job)
{
	pthread_mutex_lock(&w->mu);
	push(&w->todo_head, &w->todo_tail, job);
	w->pending++;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

unsigned worker_pending(const struct worker *w)
{
	return w->pending;
}

void worker_stop(struct worker *w)
{
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	reap(w); /* jobs finished after the loop stopped reading */
	if (w->read_armed) {
		/* Cancel the eventfd read and wait for it, so neither the ring
		 * nor this struct is left with the other's pointer. */
		struct io_uring_sqe *sqe = ioq_sqe(&w->loop->q, &w->cancel_op);
		io_uring_prep_cancel(sqe, &w->read_op, 0);
		for (int i = 0; i < 1000 && w->read_armed; i++)
			ioq_wait(&w->loop->q, 10);
	}
	close(w->efd);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
}
