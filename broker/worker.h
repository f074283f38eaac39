/* worker.h — one admin thread that runs the blocking file-system work of
 * topic administration (mkdir, config files, fsync, log_open of new
 * partitions, recursive deletes), so the loop thread never blocks on it.
 *
 * Contract: worker_submit() hands a job to the worker (loop thread only);
 * the worker calls job->run() on its own thread, then the loop calls
 * job->done() on the loop thread from worker_reap(), which the loop runs
 * when the worker's eventfd completes. A job belongs to the worker between
 * submit and done; done() frees it. run() must touch only what the job owns.
 */
#ifndef RINGMQ_WORKER_H
#define RINGMQ_WORKER_H

#include "common/ioq.h"

struct loop;

struct job {
	struct job *next;
	void (*run)(struct job *job);                   /* worker thread */
	void (*done)(struct loop *l, struct job *job);  /* loop thread */
};

struct worker;

/* Starts the thread and arms a read of its eventfd on the loop's ring. */
struct worker *worker_start(struct loop *l);
/* Runs the jobs still queued, joins the thread. Loop thread, at shutdown. */
void worker_stop(struct worker *w);
void worker_submit(struct worker *w, struct job *job);
/* Jobs queued or running. */
unsigned worker_pending(const struct worker *w);

#endif
