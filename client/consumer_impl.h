/* consumer_impl.h — the consumer's internal state, shared by consumer.c
 * (assignment, fetching, poll) and group.c (consumer-group membership and
 * commits). Not installed; ringmq.h is the contract. One thread at a time. */
#ifndef RINGMQ_CLIENT_CONSUMER_IMPL_H
#define RINGMQ_CLIENT_CONSUMER_IMPL_H

#include "client/internal.h"

struct cgroup;

struct cpart {
	char *topic;
	uint32_t partition;
	int64_t next;      /* the next offset to fetch */
	int64_t returned;  /* the offset after the last message poll returned; -1 none */
	int64_t committed; /* as last committed by this consumer; -1 none */
	int64_t log_end;   /* as last reported by the broker; -1 unknown */
	uint32_t epoch;    /* bumped by a seek: older fetch replies are ignored */
	bool stopped;      /* after an error, until a seek */
	int err;           /* to report from the next poll */
	char errmsg[256];
};

/* The memory behind a set of handed-out messages. */
struct fbuf {
	uint8_t *frame;
	size_t cap;
	void **scratch;   /* lz4 outputs */
	size_t nscratch, scratch_cap;
};

struct ringmq_consumer {
	struct ringmq_config cfg;
	struct rc_conn conn;
	struct cpart *parts;
	size_t nparts;
	struct ringmq_message *pending;
	uint32_t *pending_part;    /* index in parts of each pending message */
	size_t npending, pending_pos, pending_cap;
	struct fbuf cur;
	uint32_t fetch_corr;       /* 0: no fetch in flight */
	uint32_t *fetch_epochs;    /* each partition's epoch when it was sent */
	uint8_t *arena_buf;
	struct arena arena;
	struct cgroup *grp;        /* NULL unless subscribed to a group */
};


/* consumer.c */
struct cpart *consumer_find_part(struct ringmq_consumer *c, const char *topic, size_t len,
				 uint32_t partition);
/* A synchronous request; abandons what is in flight (its replies are
 * skipped). */
int consumer_call(struct ringmq_consumer *c, uint16_t api, const union proto_request *req,
		  union proto_response *resp, char *errstr, size_t errlen);
/* Replaces the partition set; new ones start at the offsets given. */
int consumer_set_parts(struct ringmq_consumer *c, const struct ringmq_topic_partition *tps,
		       size_t n);
/* Forgets one partition (and its pending messages). */
void consumer_drop_part(struct ringmq_consumer *c, size_t index);
int consumer_add_part(struct ringmq_consumer *c, const char *topic, uint32_t partition,
		      int64_t next);

/* group.c */
int group_subscribe(struct ringmq_consumer *c, const char *group, const char *const *topics,
		    size_t n, char *errstr, size_t errlen);
/* Heartbeats and auto-commits when due, applies assignment changes.
 * Returns an error to report from poll, or 0. */
int group_poll(struct ringmq_consumer *c, char *errstr, size_t errlen);
/* Takes a reply meant for the group (heartbeat, async commit). Returns
 * true if it was one. */
bool group_take_reply(struct ringmq_consumer *c, const struct proto_resp_hdr *h,
		      struct pr *body);
/* What fetches must say about the member, if subscribed. */
void group_fetch_identity(struct ringmq_consumer *c, struct pstr *group, struct pstr *member,
			  uint32_t *epoch);
/* Requests in flight are abandoned (a synchronous call is about to run). */
void group_forget_inflight(struct ringmq_consumer *c);
/* Commits and leaves; frees the group state. */
void group_close(struct ringmq_consumer *c);
/* True while a heartbeat or commit reply is awaited. */
bool group_waiting(struct ringmq_consumer *c);
/* The wait before the next heartbeat or auto-commit is due, in ms. */
int group_next_due(struct ringmq_consumer *c);

#endif
