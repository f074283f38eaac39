/* ringmq.h — libringmq: the C client for ringmq. Producer, consumer and
 * admin calls over one small API.
 *
 * Conventions
 * - Every call that can fail returns an int: 0 (RINGMQ_OK) or a positive
 *   enum ringmq_err. Calls that take `char *errstr, size_t errlen` also write
 *   a one-line human-readable reason there (errstr may be NULL). Codes 1..99
 *   are the broker's own (docs/protocol.md), 100 and up the client's.
 * - Handles are opaque; each _new() pairs with a _free()/_close(). Strings
 *   and buffers passed in are copied before the call returns, unless a
 *   comment says otherwise. Results returned through pointers stay valid as
 *   documented per call.
 * - Thread-safety is stated per handle: a producer may be used from any
 *   number of threads at once; a consumer and an admin handle belong to one
 *   thread at a time.
 *
 * Configuration keys (ringmq_config_set; docs/client.md lists each with its
 * default): bootstrap.servers, client.id, request.timeout.ms,
 * reconnect.backoff.ms, reconnect.backoff.max.ms, acks, linger.ms,
 * batch.size, buffer.memory, block.on.buffer.full, max.block.ms,
 * compression, enable.idempotence, max.in.flight, delivery.timeout.ms,
 * fetch.max.bytes, fetch.partition.max.bytes, fetch.max.wait.ms,
 * fetch.min.bytes, check.crcs, session.timeout.ms, enable.auto.commit,
 * auto.commit.interval.ms, auto.offset.reset.
 */
#ifndef RINGMQ_CLIENT_H
#define RINGMQ_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The shared library exports these names and nothing else. */
#define RINGMQ_API __attribute__((visibility("default")))

enum ringmq_err {
	RINGMQ_OK = 0,
	/* From the broker (same numbers as docs/protocol.md). */
	RINGMQ_ERR_BROKER_UNKNOWN = 1,
	RINGMQ_ERR_INVALID_REQUEST = 2,
	RINGMQ_ERR_UNSUPPORTED_API = 3,
	RINGMQ_ERR_UNSUPPORTED_VERSION = 4,
	RINGMQ_ERR_CORRUPT_BATCH = 5,
	RINGMQ_ERR_BATCH_TOO_LARGE = 6,
	RINGMQ_ERR_INVALID_TOPIC_NAME = 7,
	RINGMQ_ERR_UNKNOWN_TOPIC = 8,
	RINGMQ_ERR_UNKNOWN_PARTITION = 9,
	RINGMQ_ERR_TOPIC_EXISTS = 10,
	RINGMQ_ERR_INVALID_CONFIG = 11,
	RINGMQ_ERR_INVALID_PARTITIONS = 12,
	RINGMQ_ERR_OFFSET_OUT_OF_RANGE = 13,
	RINGMQ_ERR_LIMIT_EXCEEDED = 14,
	RINGMQ_ERR_STORAGE = 15,
	RINGMQ_ERR_DISK_FULL = 16,
	RINGMQ_ERR_BROKER_TIMEOUT = 17,
	RINGMQ_ERR_SHUTTING_DOWN = 18,
	RINGMQ_ERR_BUSY = 19,
	RINGMQ_ERR_INVALID_ACKS = 20,
	RINGMQ_ERR_OUT_OF_ORDER_SEQUENCE = 21,
	RINGMQ_ERR_INVALID_GROUP = 22,
	RINGMQ_ERR_UNKNOWN_MEMBER = 23,  /* the session expired: the member rejoins */
	RINGMQ_ERR_FENCED_MEMBER = 24,   /* a stale member epoch (a zombie) */
	RINGMQ_ERR_NOT_OWNER = 25,       /* the member does not own that partition */
	RINGMQ_ERR_GROUP_NOT_EMPTY = 26,
	RINGMQ_ERR_UNKNOWN_GROUP = 27,
	/* From the client. */
	RINGMQ_ERR_TIMEOUT = 100,        /* the operation did not finish in time */
	RINGMQ_ERR_TRANSPORT = 101,      /* no broker could be reached */
	RINGMQ_ERR_INVALID_ARG = 102,
	RINGMQ_ERR_QUEUE_FULL = 103,     /* buffer.memory is used up */
	RINGMQ_ERR_NO_MEMORY = 104,
	RINGMQ_ERR_CLOSED = 105,         /* the handle is closing */
	RINGMQ_ERR_CORRUPT_MESSAGE = 106, /* a fetched batch failed its checksum */
	RINGMQ_ERR_MSG_TOO_LARGE = 107,  /* a message larger than batch.size allows */
	RINGMQ_ERR_PROTOCOL = 108,       /* the broker sent something unexpected */
	RINGMQ_ERR_UNKNOWN_CONFIG = 109,
};

/* A static string naming the error: "unknown topic", "timed out", ... */
RINGMQ_API
const char *ringmq_strerror(int err);

/* ---- configuration ---- */

struct ringmq_config;

RINGMQ_API
struct ringmq_config *ringmq_config_new(void);
/* Copies the config. */
RINGMQ_API
struct ringmq_config *ringmq_config_dup(const struct ringmq_config *cfg);
RINGMQ_API
void ringmq_config_free(struct ringmq_config *cfg);
/* Sets a key; RINGMQ_ERR_UNKNOWN_CONFIG or RINGMQ_ERR_INVALID_ARG with a
 * reason in errstr. Not thread-safe (configure, then create handles). */
RINGMQ_API
int ringmq_config_set(struct ringmq_config *cfg, const char *key, const char *value,
		      char *errstr, size_t errlen);

/* ---- messages ---- */

struct ringmq_header {
	const char *name;  /* NUL-terminated */
	const void *value;
	size_t value_len;
};

/* What a delivery callback gets for each produced message. */
struct ringmq_delivery {
	int err;             /* 0, or why the message was not stored */
	const char *topic;
	int32_t partition;
	int64_t offset;      /* -1 unless err == 0 and acks != 0 */
	void *opaque;        /* as passed to ringmq_produce */
	/* NULL if err == 0; else a one-line reason, e.g. the broker's or, for
	 * RINGMQ_ERR_BATCH_TOO_LARGE, the topic's max.message.bytes the
	 * message exceeds. Valid during the callback only. */
	const char *errstr;
};

/* Called once per message, on the producer's I/O thread: keep it short and
 * do not call ringmq_producer_flush() or _free() from it. */
typedef void ringmq_delivery_cb(const struct ringmq_delivery *d, void *cb_opaque);
RINGMQ_API
void ringmq_config_set_delivery_cb(struct ringmq_config *cfg, ringmq_delivery_cb *cb,
				   void *cb_opaque);

/* ---- producer (thread-safe) ---- */

#define RINGMQ_PARTITION_ANY (-1)

struct ringmq_producer;

/* Creates a producer and its I/O thread; connects in the background. */
RINGMQ_API
struct ringmq_producer *ringmq_producer_new(const struct ringmq_config *cfg, char *errstr,
					    size_t errlen);

/* Queues one message; returns as soon as it is copied into a batch. The
 * partition is `partition`, or with RINGMQ_PARTITION_ANY the key's hash
 * (xxhash) modulo the partition count, or a sticky partition for messages
 * without a key. The delivery callback reports its offset or error later.
 * Errors now: RINGMQ_ERR_QUEUE_FULL (buffer.memory used up and
 * block.on.buffer.full is false, or still full after max.block.ms),
 * RINGMQ_ERR_MSG_TOO_LARGE, RINGMQ_ERR_INVALID_ARG, RINGMQ_ERR_CLOSED.
 * timestamp_ms 0 means now. */
RINGMQ_API
int ringmq_produce(struct ringmq_producer *p, const char *topic, int32_t partition,
		   const void *key, size_t key_len, const void *value, size_t value_len,
		   const struct ringmq_header *headers, size_t header_count, int64_t timestamp_ms,
		   void *opaque);

/* Sends everything queued and waits until every message so far has been
 * delivered or failed. Returns 0, or RINGMQ_ERR_TIMEOUT. timeout_ms < 0:
 * wait forever. */
RINGMQ_API
int ringmq_producer_flush(struct ringmq_producer *p, int timeout_ms);

/* Messages queued or in flight. */
RINGMQ_API
size_t ringmq_producer_outstanding(struct ringmq_producer *p);

/* Flushes (up to delivery.timeout.ms), stops the I/O thread and frees. Messages
 * still undelivered get RINGMQ_ERR_CLOSED in their callbacks. */
RINGMQ_API
void ringmq_producer_free(struct ringmq_producer *p);

/* ---- consumer (one thread at a time) ---- */

#define RINGMQ_OFFSET_BEGINNING (-2)
#define RINGMQ_OFFSET_END (-1)

struct ringmq_topic_partition {
	const char *topic;
	int32_t partition;
	int64_t offset; /* an offset, RINGMQ_OFFSET_BEGINNING or RINGMQ_OFFSET_END */
};

/* A consumed message: views into the consumer's buffers, valid until the
 * next ringmq_consumer_poll() or _free() on the same consumer. */
struct ringmq_message {
	const char *topic;
	int32_t partition;
	int64_t offset;
	int64_t timestamp_ms;
	const void *key;   /* NULL if it has none */
	size_t key_len;
	const void *value;
	size_t value_len;
	size_t header_count;
	const void *headers_raw; /* read with ringmq_message_header() */
	size_t headers_len;
};

/* The i-th header of a message (name is not NUL-terminated: name_len). */
RINGMQ_API
int ringmq_message_header(const struct ringmq_message *m, size_t i, const char **name,
			  size_t *name_len, const void **value, size_t *value_len);

struct ringmq_consumer;

RINGMQ_API
struct ringmq_consumer *ringmq_consumer_new(const struct ringmq_config *cfg, char *errstr,
					    size_t errlen);

/* Replaces the assignment with these partitions, each starting at its
 * offset. Unknown topics or partitions fail the call. */
RINGMQ_API
int ringmq_consumer_assign(struct ringmq_consumer *c, const struct ringmq_topic_partition *tps,
			   size_t n, char *errstr, size_t errlen);

/* Moves an assigned partition to an offset (or BEGINNING/END). */
RINGMQ_API
int ringmq_consumer_seek(struct ringmq_consumer *c, const char *topic, int32_t partition,
			 int64_t offset, char *errstr, size_t errlen);

/* Moves an assigned partition to the first message at or after ts_ms. */
RINGMQ_API
int ringmq_consumer_seek_time(struct ringmq_consumer *c, const char *topic, int32_t partition,
			      int64_t ts_ms, char *errstr, size_t errlen);

/* Waits up to timeout_ms for messages and fills msgs[0..*n). Returns 0 (with
 * *n == 0 on timeout), or an error: RINGMQ_ERR_CORRUPT_MESSAGE (errstr names
 * topic, partition and offsets; the partition stops there),
 * RINGMQ_ERR_OFFSET_OUT_OF_RANGE, RINGMQ_ERR_TRANSPORT... The next fetch is
 * already on its way while the caller works on these. */
RINGMQ_API
int ringmq_consumer_poll(struct ringmq_consumer *c, int timeout_ms, struct ringmq_message *msgs,
			 size_t max, size_t *n, char *errstr, size_t errlen);

/* The next offset poll would return for a partition, and the log end the
 * broker last reported (-1 if unknown). */
RINGMQ_API
int ringmq_consumer_position(struct ringmq_consumer *c, const char *topic, int32_t partition,
			     int64_t *next_offset, int64_t *log_end);

/* ---- consumer groups (one thread at a time, like the consumer) ----
 *
 * A subscribed consumer is a member of a group: every group receives every
 * message of its topics, and inside a group each partition belongs to one
 * member at a time. poll() heartbeats (call it at least every
 * session.timeout.ms) and applies the broker's assignment: partitions taken
 * away are committed (what poll returned) before they are released, so a
 * graceful rebalance delivers nothing twice; new ones start at the group's
 * committed offset, or per auto.offset.reset (earliest or latest) if there
 * is none. With enable.auto.commit, what poll returned is committed every
 * auto.commit.interval.ms.
 */
enum ringmq_rebalance_event {
	RINGMQ_ASSIGNED = 1, /* the partitions are now this member's */
	RINGMQ_REVOKED = 2,  /* taken away; what poll returned was committed first */
	RINGMQ_LOST = 3,     /* membership expired: taken away without a commit */
};

/* Called from poll() on the consumer's thread; tps[i].offset is where the
 * partition starts (assigned) or stood (revoked). */
typedef void ringmq_rebalance_cb(int event, const struct ringmq_topic_partition *tps, size_t n,
				 void *cb_opaque);
RINGMQ_API
void ringmq_config_set_rebalance_cb(struct ringmq_config *cfg, ringmq_rebalance_cb *cb,
				    void *cb_opaque);

/* Joins `group` reading `topics` (replacing any assign()). Blocks for the
 * join itself; partitions arrive with the following polls. */
RINGMQ_API
int ringmq_consumer_subscribe(struct ringmq_consumer *c, const char *group,
			      const char *const *topics, size_t n, char *errstr, size_t errlen);

/* Commits what poll has returned so far, and waits for it to be durable. */
RINGMQ_API
int ringmq_consumer_commit(struct ringmq_consumer *c, char *errstr, size_t errlen);

/* Commits these offsets (the next offset to consume, per partition) and waits. */
RINGMQ_API
int ringmq_consumer_commit_offsets(struct ringmq_consumer *c,
				   const struct ringmq_topic_partition *tps, size_t n, char *errstr,
				   size_t errlen);

/* Starts a commit of what poll returned; a failure is reported by a later poll. */
RINGMQ_API
int ringmq_consumer_commit_async(struct ringmq_consumer *c, char *errstr, size_t errlen);

/* The partitions the consumer holds now, with the next offset poll would
 * return. *tps is malloc'd (free it); the topic strings live until the next
 * poll. */
RINGMQ_API
int ringmq_consumer_assignment(struct ringmq_consumer *c, struct ringmq_topic_partition **tps,
			       size_t *n);

/* Commits and leaves the group, so its partitions move at once. _free() does
 * the same when it was not called. */
RINGMQ_API
int ringmq_consumer_close(struct ringmq_consumer *c, char *errstr, size_t errlen);

RINGMQ_API
void ringmq_consumer_free(struct ringmq_consumer *c);

/* ---- admin (one thread at a time) ---- */

struct ringmq_admin;

RINGMQ_API
struct ringmq_admin *ringmq_admin_new(const struct ringmq_config *cfg, char *errstr,
				      size_t errlen);
RINGMQ_API
void ringmq_admin_free(struct ringmq_admin *a);

struct ringmq_kv {
	const char *key;
	const char *value;
};

RINGMQ_API
int ringmq_topic_create(struct ringmq_admin *a, const char *name, uint32_t partitions,
			const struct ringmq_kv *configs, size_t nconfigs, char *errstr,
			size_t errlen);
RINGMQ_API
int ringmq_topic_delete(struct ringmq_admin *a, const char *name, char *errstr, size_t errlen);
/* partitions 0 keeps the count; otherwise it may only grow. */
RINGMQ_API
int ringmq_topic_alter(struct ringmq_admin *a, const char *name, uint32_t partitions,
		       const struct ringmq_kv *configs, size_t nconfigs, char *errstr,
		       size_t errlen);

struct ringmq_partition_info {
	int32_t partition;
	int64_t log_start;
	int64_t log_end;
	uint64_t size_bytes;
	uint32_t segments;
};

struct ringmq_topic_info {
	char *name;
	uint32_t partitions;
	size_t nconfigs;
	struct ringmq_kv *configs;            /* every setting, effective values */
	struct ringmq_partition_info *parts;  /* partitions entries (describe only) */
};

/* All topics (name and partition count only). Free with ringmq_topics_free. */
RINGMQ_API
int ringmq_topic_list(struct ringmq_admin *a, struct ringmq_topic_info **topics, size_t *n,
		      char *errstr, size_t errlen);
/* One topic with settings and partitions. Free with ringmq_topics_free(t, 1). */
RINGMQ_API
int ringmq_topic_describe(struct ringmq_admin *a, const char *name,
			  struct ringmq_topic_info **topic, char *errstr, size_t errlen);
RINGMQ_API
void ringmq_topics_free(struct ringmq_topic_info *topics, size_t n);

/* Offsets: spec RINGMQ_OFFSET_BEGINNING, RINGMQ_OFFSET_END or a timestamp
 * (the first offset at or after it). */
RINGMQ_API
int ringmq_list_offset(struct ringmq_admin *a, const char *topic, int32_t partition,
		       int64_t spec, int64_t *offset, char *errstr, size_t errlen);

struct ringmq_broker_status {
	char version[64];
	char data_dir[4096];
	uint64_t uptime_ms;
	uint32_t topics, partitions, connections;
	uint64_t bytes_on_disk, messages_in, bytes_in, bytes_out;
};

RINGMQ_API
int ringmq_broker_status(struct ringmq_admin *a, struct ringmq_broker_status *st, char *errstr,
			 size_t errlen);

/* ---- group administration (on an admin handle) ---- */

struct ringmq_group_partition {
	char *topic;
	int32_t partition;
	int64_t committed;   /* -1: nothing committed */
	int64_t log_start;   /* the oldest offset the partition still keeps */
	int64_t log_end;
	int64_t lag;         /* log_end - committed, or - log_start if nothing is
				committed (never below 0) */
	char *owner;         /* member id, or "" */
};

struct ringmq_group_member {
	char *member_id;
	char *client_id;
	uint32_t epoch;
	uint64_t last_seen_ms_ago;
	size_t nowned;
	struct ringmq_topic_partition *owned; /* topic strings owned by the info */
};

struct ringmq_group_info {
	char *name;
	char *state;         /* "stable", "rebalancing", "empty" */
	uint64_t rebalances;
	size_t nmembers;
	struct ringmq_group_member *members; /* NULL in a listing (count only) */
	size_t nparts;
	struct ringmq_group_partition *parts;
};

/* Every group: name, state and member count only. Free with
 * ringmq_groups_free(groups, n). */
RINGMQ_API
int ringmq_group_list(struct ringmq_admin *a, struct ringmq_group_info **groups, size_t *n,
		      char *errstr, size_t errlen);
/* One group, with members and per-partition offsets and lag. Free with
 * ringmq_groups_free(g, 1). */
RINGMQ_API
int ringmq_group_describe(struct ringmq_admin *a, const char *group,
			  struct ringmq_group_info **info, char *errstr, size_t errlen);
RINGMQ_API
void ringmq_groups_free(struct ringmq_group_info *groups, size_t n);
/* Deletes a group without live members, with its committed offsets. */
RINGMQ_API
int ringmq_group_delete(struct ringmq_admin *a, const char *group, char *errstr, size_t errlen);

enum ringmq_reset { RINGMQ_RESET_EARLIEST, RINGMQ_RESET_LATEST, RINGMQ_RESET_OFFSET,
		    RINGMQ_RESET_TIME };

/* Moves a group's committed offsets on every partition of `topic` (the group
 * must have no live members). value: the offset, or a time in ms. The new
 * offsets come back in *parts (free with ringmq_groups_free-style free:
 * free(parts[i].topic) then free(parts)); parts may be NULL. */
RINGMQ_API
int ringmq_group_reset_offsets(struct ringmq_admin *a, const char *group, const char *topic,
			       enum ringmq_reset mode, int64_t value,
			       struct ringmq_topic_partition **parts, size_t *n, char *errstr,
			       size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
