/* broker.h — ringmqd's internal structures, shared by the loop, connections,
 * request handlers, topic registry and HTTP server.
 *
 * Threads: everything here belongs to the loop thread ("Loop thread only"),
 * except struct job's run() step, which the admin worker thread executes
 * (worker.h). All mutable state lives in struct loop, so more loops can be
 * added later, each owning its connections and partitions.
 *
 * Ownership: a conn is freed when it is closed and nothing refers to it
 * (c->refs: its own ops in flight plus pending requests). A request object
 * holds a ref on its conn until its response is queued or dropped. Response
 * buffers belong to the conn's output queue once queued.
 */
#ifndef RINGMQ_BROKER_H
#define RINGMQ_BROKER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "broker/config.h"
#include "common/arena.h"
#include "common/ioq.h"
#include "common/limits.h"
#include "proto/proto.h"
#include "storage/log.h"

#define BROKER_VERSION "0.1.0"

struct loop;
struct conn;
struct topic;
struct fetch_req;

/* A parked fetch's membership in one partition's wait list. */
struct fwait {
	struct fwait *prev, *next;
	struct fetch_req *fr;
};

/* An idempotent producer's progress in one partition (produce.c): the next
 * sequence it must send and its last few batches, so a retry of one of them
 * is answered with the original offsets instead of being appended again. */
#define PSTATE_RECENT 8
#define PSTATES_PER_PARTITION 64

struct pstate {
	uint64_t producer_id;
	uint32_t next_seq;
	int64_t last_used_ms;
	uint32_t nrecent;
	struct {
		uint32_t base_seq, count;
		uint64_t base_offset;
	} recent[PSTATE_RECENT];
};

struct partition {
	struct topic *topic;
	uint32_t id;
	struct log *log;
	struct fwait waiters; /* list head: parked fetches reading this partition */
	struct pstate *producers;
	uint32_t nproducers;
};

enum topic_state { TOPIC_CREATING, TOPIC_LIVE, TOPIC_DELETING };

struct topic {
	char name[TOPIC_NAME_MAX + 1];
	uint16_t name_len;
	enum topic_state state;
	struct topic_config cfg;
	uint32_t nparts;
	struct partition **parts;
	bool busy; /* an alter or delete is underway: refuse another */
	/* metrics */
	uint64_t msgs_in, bytes_in, msgs_out, bytes_out;
	struct topic *hnext; /* registry hash chain */
};

/* Topic registry: a hash table by name. Loop thread only. */
struct registry {
	struct topic **slots;
	uint32_t nslots;
	uint32_t count;      /* topics in any state */
	uint32_t partitions; /* total, live topics */
};

struct obuf {
	struct obuf *next;
	uint8_t *data; /* malloc'd; freed once sent */
	uint32_t len, off;
};

#define CONN_IOV_MAX 32

struct conn {
	struct loop *loop;
	struct conn *prev, *next;      /* loop->conns */
	struct conn *blocked_next;     /* loop->blocked, waiting for staging room */
	bool on_blocked;
	int fd;
	uint64_t id;
	char peer[64];
	uint32_t refs;
	bool closed;                   /* no more input or output; waits for refs */
	bool closing;                  /* closes once the output queued so far is sent */
	bool recv_armed;
	bool recv_paused;              /* backpressure: not reading the socket */
	bool send_inflight;
	struct ioq_op recv_op, send_op;
	/* input: bytes of frames not yet processed (partial or held back) */
	uint8_t *in;
	size_t in_len, in_cap;
	int64_t partial_since_ms;      /* when `in` began holding a partial frame */
	/* output */
	struct obuf *out_head, *out_tail;
	uint64_t out_bytes;
	uint64_t building_bytes;       /* response buffers of fetches still reading the log */
	struct iovec iov[CONN_IOV_MAX];
	struct msghdr msg;
	/* requests received and not yet answered */
	uint32_t inflight;
	struct fetch_req *fetches;     /* parked long polls, to cancel on close */
};

/* Per-API request metrics. */
struct api_stats {
	uint64_t requests;
	uint64_t errors;
};

struct timer_heap {
	struct fetch_req **a;
	uint32_t n, cap;
};

struct worker;
struct groups;
struct offsets;
struct topic_job;

struct loop {
	struct ioq q;
	struct log_env *env;
	const struct broker_config *cfg;
	struct registry reg;
	struct worker *worker;
	int64_t start_ms;
	bool stopping;
	int exit_code;
	/* listeners */
	int listen_fd, http_fd;
	char listen_addr[128], http_addr[128];
	struct ioq_op accept_op, http_accept_op;
	bool accept_armed, http_accept_armed;
	/* accept failures (out of descriptors...): logged at most every 10 s */
	int64_t accept_err_log_ms;
	uint64_t accept_errs_unlogged;
	/* signals */
	int sig_fd;
	struct ioq_op sig_op;
	uint8_t siginfo[128];
	/* provided receive buffers */
	struct io_uring_buf_ring *br;
	uint8_t *bufs;
	uint32_t nbufs, buf_size;
	uint16_t bgid;
	/* connections */
	struct conn conns;     /* list head */
	uint32_t nconns;
	uint64_t next_conn_id;
	struct conn *blocked;  /* conns holding a produce until staging frees */
	uint32_t nhttp;
	struct http_conn *https; /* open HTTP connections, oldest last */
	/* timers */
	struct timer_heap timers;
	int64_t next_tick_ms;
	/* decode arena, reset per request */
	struct arena arena;
	uint8_t *arena_buf;
	/* pending topic deletions waiting for their logs to go idle */
	struct delete_req *deletes;
	struct topic_job *forgets; /* deleted topics whose group offsets wait to be dropped */
	/* consumer groups and their committed offsets */
	struct groups *groups;
	struct offsets *offsets;
	/* metrics */
	struct api_stats api[API_COUNT];
	uint64_t conns_accepted, conns_refused, conns_closed_bad;
	uint64_t bytes_in, bytes_out, msgs_in;
	uint64_t produce_requests; /* for test.drop.after.append */
	int64_t last_refused_log_ms;
};

/* ---- loop.c ---- */
int loop_init(struct loop *l, const struct broker_config *cfg);
int loop_run(struct loop *l);
void loop_fini(struct loop *l);
int64_t now_ms(void);
void timer_add(struct loop *l, struct fetch_req *fr);
void timer_del(struct loop *l, struct fetch_req *fr);

/* ---- conn.c ---- */
void conn_accept(struct loop *l, int fd);
/* Queues a response buffer (malloc'd, ownership passes to the conn). */
void conn_send(struct conn *c, uint8_t *data, uint32_t len);
/* Queues the frame in w (a dynamic writer whose buffer passes to the conn). */
void conn_send_pw(struct conn *c, struct pw *w);
void conn_close(struct conn *c, const char *why);
/* Reads no more, and closes once what is queued now has been sent; output
 * queued later is dropped. */
void conn_close_after_send(struct conn *c, const char *why);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
/* A request of c finished (answered or dropped): may unblock its input. */
void conn_request_done(struct conn *c);
/* Response bytes being built for c count against max.buffered.bytes. */
void conn_reserve(struct conn *c, uint64_t bytes);
void conn_unreserve(struct conn *c, uint64_t bytes);
/* Processes held-back input of conns waiting for staging room. */
void conn_retry_blocked(struct loop *l);
void conn_check_idle(struct loop *l, int64_t now);

/* ---- handlers.c ---- */
/* Handles one whole request frame. Returns 0, or -EAGAIN if it cannot be
 * handled now (no staging room): the caller keeps the frame and retries. */
int handle_frame(struct conn *c, const uint8_t *frame, uint32_t len);
/* Queues a header-only success response. */
void respond_ok(struct conn *c, uint32_t corr);
/* Queues an error response with a message. */
void respond_error(struct conn *c, uint16_t api, uint32_t corr, uint16_t err, const char *fmt,
		   ...) __attribute__((format(printf, 5, 6)));
uint16_t err_from_errno(int err);

/* ---- produce.c / fetch.c ---- */
void handle_produce(struct conn *c, uint32_t corr, const struct proto_produce_req *req);
/* Rebuilds a just-opened partition's idempotent-producer state from its
 * log's tail (start-up). Returns the producers restored, or -errno. */
int produce_restore_producers(struct partition *p);
void handle_fetch(struct conn *c, uint32_t corr, const struct proto_fetch_req *req);
void fetch_wake(struct partition *p);
void fetch_expire(struct loop *l, struct fetch_req *fr);
void fetch_cancel_conn(struct conn *c);
int64_t fetch_deadline(const struct fetch_req *fr);
uint32_t *fetch_heap_index(struct fetch_req *fr);
void partition_visible(void *arg);

/* ---- topics.c ---- */
int registry_init(struct registry *r);
void registry_fini(struct registry *r);
struct topic *registry_find(struct registry *r, const char *name, size_t len);
/* Loads every topic under the data dir (start-up; blocking). */
int topics_load(struct loop *l);
void topics_close_all(struct loop *l);
void handle_create_topic(struct conn *c, uint32_t corr, const struct proto_create_topic_req *req);
void handle_delete_topic(struct conn *c, uint32_t corr, const struct proto_delete_topic_req *req);
void handle_alter_topic(struct conn *c, uint32_t corr, const struct proto_alter_topic_req *req);
void topics_poll_deletes(struct loop *l);
void topics_tick(struct loop *l, int64_t now);
/* Blocks until every partition shows all its log (see loop_start). */
void topics_sync_at_start(struct loop *l);
/* The live partition, or NULL with *err set (UNKNOWN_TOPIC/PARTITION). */
struct partition *partition_lookup(struct loop *l, struct pstr topic, uint32_t id,
				   uint16_t *err);

/* ---- offsets.c: the committed-offsets store ----
 * A flush-always log in <data-dir>/.offsets/ of commit and group-delete
 * records, replayed at start-up and compacted by writing a snapshot of the
 * current offsets and deleting the segments before it. */
struct offset_rec {
	const char *group; /* NULL: every group forgets the topic (it was deleted) */
	const char *topic; /* NULL: the group is deleted */
	uint32_t partition;
	uint64_t offset;
};
/* Opens the store and replays it through groups_apply(). Start-up only. */
int offsets_open(struct loop *l);
void offsets_close(struct loop *l);
/* Most records one append may carry: a reset of the largest topic fits,
 * and so does the batch in a segment. */
#define OFFSETS_APPEND_MAX 20000u
/* Appends records (copied: the caller's may go at once); done(arg, 0) once
 * durable, done(arg, -errno) if not (at once, inside this call, if the store
 * has failed). Returns -EINVAL (bad names, n out of 1..OFFSETS_APPEND_MAX)
 * or another -errno without calling done. Records appended in order become durable,
 * and are replayed, in that order. */
int offsets_append(struct loop *l, const struct offset_rec *recs, size_t n,
		   void (*done)(void *arg, int err), void *arg);
void offsets_tick(struct loop *l, int64_t now);

/* ---- groups.c: the consumer-group coordinator ---- */
int groups_init(struct loop *l);
void groups_fini(struct loop *l);
/* Applies one durable record of the store to the in-memory state: at
 * start-up, and when a topic deletion is stored. */
void groups_apply(struct loop *l, const struct offset_rec *rec);
/* Calls fn for every committed offset (for the store's snapshots). */
void groups_each_offset(struct loop *l, void (*fn)(void *arg, const struct offset_rec *rec),
			void *arg);
void groups_tick(struct loop *l, int64_t now);
/* A topic was created, grown or deleted: groups reading it rebalance. */
void groups_topics_changed(struct loop *l);
void handle_group_request(struct conn *c, uint16_t api, uint32_t corr,
			  const union proto_request *req);
/* ERR_NONE if the member may fetch that partition, else why not. */
uint16_t group_fetch_check(struct loop *l, struct pstr group, struct pstr member, uint32_t epoch,
			   struct pstr topic, uint32_t partition);
void groups_metrics(struct loop *l, struct pw *w);

/* ---- http.c ---- */
void http_accept(struct loop *l, int fd);
/* Ends HTTP connections that have had their time. */
void http_check_idle(struct loop *l, int64_t now);

#endif
