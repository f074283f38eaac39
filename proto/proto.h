/* proto.h — the ringmq wire protocol: frames, API keys, error codes, and the
 * encoder and decoder of every request and response. docs/protocol.md
 * specifies the bytes; the broker and the client library both use this
 * module, so the two sides cannot drift.
 *
 * Contract
 * - Decoders never allocate: strings and byte fields are views (struct pstr,
 *   struct pbytes) into the frame being decoded, and arrays come from the
 *   caller's arena. A decoded message is valid while both live.
 * - Decoders treat input as hostile: every length and count is checked
 *   against the bytes that remain before anything is read or allocated, and
 *   a body must be consumed exactly (trailing bytes are an error).
 * - Errors: -EBADMSG (truncated or malformed), -ENOMEM (arena exhausted: the
 *   request has more elements than the caller allows), -ENOTSUP (unknown API
 *   key or version), -EMSGSIZE (a frame larger than the limit).
 * - Encoders append to a struct pw; a writer that runs out of room (fixed
 *   buffer, or past its growth limit) records it in pw.failed and ignores
 *   further writes, so callers check once at the end.
 * - Thread-safe: no shared state.
 */
#ifndef RINGMQ_PROTO_H
#define RINGMQ_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"

/* The protocol version a handshake agrees on. Each API also has its own
 * version in every request header; all are 0 today. */
#define PROTO_VERSION_MIN 1
#define PROTO_VERSION_MAX 1

#define FRAME_SIZE_FIELD 4u     /* u32 size of what follows */
#define REQ_HEADER_SIZE 8u      /* u16 api, u16 version, u32 correlation id */
#define FRAME_SIZE_MIN_REQ REQ_HEADER_SIZE
#define RESP_HEADER_SIZE 8u     /* u32 correlation id, u16 error, u16 message length */
#define FRAME_SIZE_MIN_RESP RESP_HEADER_SIZE
#define FRAME_SIZE_HARD_MAX (64u << 20) /* no configuration may allow more */

enum proto_api {
	API_HANDSHAKE = 0,
	API_METADATA = 1,
	API_CREATE_TOPIC = 2,
	API_DELETE_TOPIC = 3,
	API_ALTER_TOPIC = 4,
	API_LIST_TOPICS = 5,
	API_DESCRIBE_TOPIC = 6,
	API_PRODUCE = 7,
	API_FETCH = 8,
	API_LIST_OFFSETS = 9,
	API_BROKER_STATUS = 10,
	API_JOIN_GROUP = 11,
	API_HEARTBEAT = 12,
	API_LEAVE_GROUP = 13,
	API_COMMIT_OFFSETS = 14,
	API_FETCH_OFFSETS = 15,
	API_LIST_GROUPS = 16,
	API_DESCRIBE_GROUP = 17,
	API_DELETE_GROUP = 18,
	API_RESET_OFFSETS = 19,
	API_COUNT
};

enum proto_err {
	ERR_NONE = 0,
	ERR_UNKNOWN = 1,              /* the broker failed in a way it did not expect */
	ERR_INVALID_REQUEST = 2,      /* malformed body */
	ERR_UNSUPPORTED_API = 3,
	ERR_UNSUPPORTED_VERSION = 4,
	ERR_CORRUPT_BATCH = 5,        /* checksum or framing of a batch */
	ERR_BATCH_TOO_LARGE = 6,
	ERR_INVALID_TOPIC_NAME = 7,
	ERR_UNKNOWN_TOPIC = 8,
	ERR_UNKNOWN_PARTITION = 9,
	ERR_TOPIC_EXISTS = 10,
	ERR_INVALID_CONFIG = 11,
	ERR_INVALID_PARTITIONS = 12,
	ERR_OFFSET_OUT_OF_RANGE = 13,
	ERR_LIMIT_EXCEEDED = 14,      /* too many topics, partitions, connections... */
	ERR_STORAGE = 15,             /* an I/O error on the broker's disk */
	ERR_DISK_FULL = 16,
	ERR_TIMEOUT = 17,
	ERR_SHUTTING_DOWN = 18,
	ERR_BUSY = 19,                /* the broker is overloaded: retry later */
	ERR_INVALID_ACKS = 20,
	ERR_OUT_OF_ORDER_SEQUENCE = 21, /* an idempotent producer skipped or reused a sequence */
	ERR_INVALID_GROUP = 22,       /* a bad group name */
	ERR_UNKNOWN_MEMBER = 23,      /* the member left or its session expired: join again */
	ERR_FENCED_MEMBER = 24,       /* a stale member epoch: a zombie's request */
	ERR_NOT_OWNER = 25,           /* the member does not own that partition */
	ERR_GROUP_NOT_EMPTY = 26,     /* the operation needs a group without live members */
	ERR_UNKNOWN_GROUP = 27,
	ERR_COUNT
};

/* "OFFSET_OUT_OF_RANGE" etc.; "UNKNOWN_ERROR_<n>" style text for unknown codes
 * is not returned: unknown codes give "UNKNOWN". */
const char *proto_err_name(uint16_t err);

/* True for errors a client may retry as they are (timeouts, busy, ...). */
bool proto_err_retriable(uint16_t err);

/* ---- views ---- */

/* len is wider than the wire's u16 so that an over-long string reaches
 * pw_str, which fails, instead of being cut short silently. */
struct pstr {
	const char *p;
	uint32_t len;
};

struct pbytes {
	const uint8_t *p;
	uint32_t len;
};

static inline struct pstr pstr_c(const char *s);

/* ---- writer and reader ---- */

struct pw {
	uint8_t *buf;
	size_t len, cap;
	size_t max;   /* growth limit for a dynamic writer; 0: fixed buffer */
	bool failed;
};

/* A writer over a fixed buffer. */
void pw_init_fixed(struct pw *w, void *buf, size_t cap);
/* A writer that reallocs its own buffer, up to max bytes. Free with pw_free. */
void pw_init_dyn(struct pw *w, size_t initial, size_t max);
void pw_free(struct pw *w);
/* Makes room for n more bytes; returns a pointer to them or NULL (failed). */
uint8_t *pw_reserve(struct pw *w, size_t n);
void pw_u8(struct pw *w, uint8_t v);
void pw_u16(struct pw *w, uint16_t v);
void pw_u32(struct pw *w, uint32_t v);
void pw_u64(struct pw *w, uint64_t v);
void pw_i64(struct pw *w, int64_t v);
void pw_str(struct pw *w, struct pstr s);   /* u16 length + bytes; fails past 65535 */
void pw_bytes(struct pw *w, const void *p, uint32_t len); /* u32 length + bytes */
void pw_raw(struct pw *w, const void *p, size_t len);
void pw_patch_u32(struct pw *w, size_t at, uint32_t v);

struct pr {
	const uint8_t *p, *end;
	bool failed;
};

void pr_init(struct pr *r, const void *p, size_t len);
uint8_t pr_u8(struct pr *r);
uint16_t pr_u16(struct pr *r);
uint32_t pr_u32(struct pr *r);
uint64_t pr_u64(struct pr *r);
int64_t pr_i64(struct pr *r);
struct pstr pr_str(struct pr *r);
struct pbytes pr_bytes(struct pr *r);
/* Reads an array count and checks that `count * min_elem_size` bytes remain. */
uint32_t pr_count(struct pr *r, size_t min_elem_size);
static inline size_t pr_left(const struct pr *r)
{
	return (size_t)(r->end - r->p);
}

/* ---- frames ---- */

/* Looks at the bytes received so far. Returns 0 with *frame_len (size field
 * included) when a whole frame is there; -EAGAIN if more bytes are needed;
 * -EMSGSIZE if the frame is larger than max_frame; -EBADMSG if its size is
 * below min_size. */
int proto_frame_peek(const void *p, size_t avail, uint32_t min_size, uint32_t max_frame,
		     uint32_t *frame_len);

struct proto_req_hdr {
	uint16_t api;
	uint16_t version;
	uint32_t correlation_id;
};

/* Starts a request frame; returns the frame's start for proto_frame_end. */
size_t proto_req_begin(struct pw *w, uint16_t api, uint16_t version, uint32_t correlation_id);
/* Starts a response frame with its header. msg may be NULL (empty). */
size_t proto_resp_begin(struct pw *w, uint32_t correlation_id, uint16_t err, const char *msg);
/* Fills in the size field of the frame that starts at `start`. */
void proto_frame_end(struct pw *w, size_t start);

/* Decodes a request header from a whole frame (size field included) and sets
 * *body to what follows it. Returns 0 or -EBADMSG. */
int proto_req_header(const void *frame, uint32_t frame_len, struct proto_req_hdr *h,
		     struct pr *body);

struct proto_resp_hdr {
	uint32_t correlation_id;
	uint16_t err;
	struct pstr msg;
};

int proto_resp_header(const void *frame, uint32_t frame_len, struct proto_resp_hdr *h,
		      struct pr *body);

/* ---- messages ---- */

struct proto_kv {
	struct pstr key, value;
};

struct proto_api_range {
	uint16_t api, min_version, max_version;
};

struct proto_handshake_req {
	struct pstr client_name;
	uint16_t min_version, max_version;
};

struct proto_handshake_resp {
	uint16_t version;
	struct pstr broker;
	uint32_t napis;
	struct proto_api_range *apis;
};

struct proto_metadata_req {
	uint32_t ntopics; /* 0: every topic */
	struct pstr *topics;
};

struct proto_md_part {
	uint32_t partition;
	uint64_t log_start, log_end;
};

struct proto_md_topic {
	struct pstr name;
	uint16_t err;
	struct pstr msg;
	uint32_t nparts;
	struct proto_md_part *parts;
};

struct proto_metadata_resp {
	uint32_t ntopics;
	struct proto_md_topic *topics;
};

struct proto_create_topic_req {
	struct pstr name;
	uint32_t partitions;
	uint32_t nconfigs;
	struct proto_kv *configs;
};

struct proto_delete_topic_req {
	struct pstr name;
};

struct proto_alter_topic_req {
	struct pstr name;
	uint32_t partitions; /* 0: unchanged; otherwise may only grow */
	uint32_t nconfigs;
	struct proto_kv *configs;
};

struct proto_topic_brief {
	struct pstr name;
	uint32_t partitions;
};

struct proto_list_topics_resp {
	uint32_t ntopics;
	struct proto_topic_brief *topics;
};

struct proto_describe_topic_req {
	struct pstr name;
};

struct proto_part_desc {
	uint32_t partition;
	uint64_t log_start, log_end;
	uint64_t size_bytes;
	uint32_t segments;
};

struct proto_describe_topic_resp {
	struct pstr name;
	uint32_t partitions;
	uint32_t nconfigs;
	struct proto_kv *configs;
	uint32_t nparts;
	struct proto_part_desc *parts;
};

#define PROTO_ACKS_NONE 0
#define PROTO_ACKS_LEADER 1
#define PROTO_ACKS_ALL (-1)

struct proto_produce_part {
	uint32_t partition;
	struct pbytes batches; /* one or more whole batches back to back */
};

struct proto_produce_topic {
	struct pstr name;
	uint32_t nparts;
	struct proto_produce_part *parts;
};

struct proto_produce_req {
	int8_t acks;
	uint32_t timeout_ms;
	uint32_t ntopics;
	struct proto_produce_topic *topics;
};

struct proto_produce_resp_part {
	uint32_t partition;
	uint16_t err;
	struct pstr msg;
	uint64_t base_offset; /* of the first batch */
	uint64_t log_start;
};

struct proto_produce_resp_topic {
	struct pstr name;
	uint32_t nparts;
	struct proto_produce_resp_part *parts;
};

struct proto_produce_resp {
	uint32_t ntopics;
	struct proto_produce_resp_topic *topics;
};

struct proto_fetch_part {
	uint32_t partition;
	uint64_t offset;
	uint32_t max_bytes;
};

struct proto_fetch_topic {
	struct pstr name;
	uint32_t nparts;
	struct proto_fetch_part *parts;
};

struct proto_fetch_req {
	uint32_t max_wait_ms;
	uint32_t min_bytes;
	uint32_t max_bytes;
	uint32_t ntopics;
	struct proto_fetch_topic *topics;
	/* A consumer-group member fetching its partitions says who it is, so a
	 * zombie (stale epoch, expired session) is refused; empty group: none. */
	struct pstr group;
	struct pstr member_id;
	uint32_t member_epoch;
};

struct proto_fetch_resp_part {
	uint32_t partition;
	uint16_t err;
	struct pstr msg;
	uint64_t log_start, log_end;
	/* Encoding: if records.p is NULL, records.len bytes are reserved and
	 * their position in the writer is stored in records_at, for the caller
	 * to fill (the broker reads stored batches straight into place). */
	struct pbytes records;
	size_t records_at;
};

struct proto_fetch_resp_topic {
	struct pstr name;
	uint32_t nparts;
	struct proto_fetch_resp_part *parts;
};

struct proto_fetch_resp {
	uint32_t ntopics;
	struct proto_fetch_resp_topic *topics;
};

#define PROTO_OFFSET_EARLIEST (-2)
#define PROTO_OFFSET_LATEST (-1)

struct proto_lo_part {
	uint32_t partition;
	int64_t spec; /* PROTO_OFFSET_EARLIEST, PROTO_OFFSET_LATEST, or a timestamp in ms */
};

struct proto_lo_topic {
	struct pstr name;
	uint32_t nparts;
	struct proto_lo_part *parts;
};

struct proto_list_offsets_req {
	uint32_t ntopics;
	struct proto_lo_topic *topics;
};

struct proto_lo_resp_part {
	uint32_t partition;
	uint16_t err;
	struct pstr msg;
	uint64_t offset;
};

struct proto_lo_resp_topic {
	struct pstr name;
	uint32_t nparts;
	struct proto_lo_resp_part *parts;
};

struct proto_list_offsets_resp {
	uint32_t ntopics;
	struct proto_lo_resp_topic *topics;
};

struct proto_broker_status_resp {
	struct pstr version;
	uint64_t uptime_ms;
	uint32_t topics;
	uint32_t partitions;
	uint32_t connections;
	uint64_t bytes_on_disk;
	struct pstr data_dir;
	uint64_t messages_in;
	uint64_t bytes_in;
	uint64_t bytes_out;
};

/* ---- consumer groups ---- */

struct proto_tp {
	struct pstr topic;
	uint32_t partition;
};

struct proto_join_group_req {
	struct pstr group;
	struct pstr member_id;   /* empty on the first join */
	struct pstr client_id;
	uint32_t session_timeout_ms;
	uint32_t ntopics;
	struct pstr *topics;     /* subscription */
};

struct proto_join_group_resp {
	struct pstr member_id;
	uint32_t member_epoch;
	uint32_t heartbeat_ms;   /* how often to heartbeat */
};

struct proto_heartbeat_req {
	struct pstr group;
	struct pstr member_id;
	uint32_t member_epoch;
	uint32_t nowned;
	struct proto_tp *owned;  /* partitions the member holds right now */
};

struct proto_heartbeat_resp {
	uint32_t member_epoch;
	uint32_t heartbeat_ms;
	uint32_t nassigned;
	struct proto_tp *assigned; /* what it may hold now; owned - assigned: release */
};

struct proto_leave_group_req {
	struct pstr group;
	struct pstr member_id;
};

struct proto_commit_part {
	struct pstr topic;
	uint32_t partition;
	uint64_t offset;         /* the next offset to consume */
};

struct proto_commit_offsets_req {
	struct pstr group;
	struct pstr member_id;   /* empty: a commit outside group membership */
	uint32_t member_epoch;
	uint32_t nparts;
	struct proto_commit_part *parts;
};

struct proto_tp_result {
	struct pstr topic;
	uint32_t partition;
	uint16_t err;
	struct pstr msg;
};

struct proto_commit_offsets_resp {
	uint32_t nparts;
	struct proto_tp_result *parts;
};

struct proto_fetch_offsets_req {
	struct pstr group;
	uint32_t nparts;
	struct proto_tp *parts;
};

struct proto_committed {
	struct pstr topic;
	uint32_t partition;
	int64_t offset;          /* -1: nothing committed */
};

struct proto_fetch_offsets_resp {
	uint32_t nparts;
	struct proto_committed *parts;
};

struct proto_group_brief {
	struct pstr group;
	struct pstr state;       /* "stable", "rebalancing", "empty" */
	uint32_t members;
};

struct proto_list_groups_resp {
	uint32_t ngroups;
	struct proto_group_brief *groups;
};

struct proto_describe_group_req {
	struct pstr group;
};

struct proto_group_member {
	struct pstr member_id;
	struct pstr client_id;
	uint32_t member_epoch;
	uint64_t last_seen_ms_ago;
	uint32_t nowned;
	struct proto_tp *owned;
};

struct proto_group_part {
	struct pstr topic;
	uint32_t partition;
	int64_t committed;       /* -1: nothing committed */
	uint64_t log_start, log_end; /* 0, 0 if its topic no longer exists */
	struct pstr owner;       /* member id, empty if none */
};

struct proto_describe_group_resp {
	struct pstr group;
	struct pstr state;
	uint64_t rebalances;
	uint32_t nmembers;
	struct proto_group_member *members;
	uint32_t nparts;
	struct proto_group_part *parts;
};

struct proto_delete_group_req {
	struct pstr group;
};

#define PROTO_RESET_EARLIEST 0
#define PROTO_RESET_LATEST 1
#define PROTO_RESET_OFFSET 2
#define PROTO_RESET_TIME 3

struct proto_reset_offsets_req {
	struct pstr group;
	struct pstr topic;
	uint8_t mode;            /* PROTO_RESET_* */
	int64_t value;           /* the offset, or a timestamp in ms */
};

struct proto_reset_offsets_resp {
	uint32_t nparts;
	struct proto_committed *parts; /* the new committed offsets */
};

/* Every request body, by API. APIs with an empty body use no member. */
union proto_request {
	struct proto_handshake_req handshake;
	struct proto_metadata_req metadata;
	struct proto_create_topic_req create_topic;
	struct proto_delete_topic_req delete_topic;
	struct proto_alter_topic_req alter_topic;
	struct proto_describe_topic_req describe_topic;
	struct proto_produce_req produce;
	struct proto_fetch_req fetch;
	struct proto_list_offsets_req list_offsets;
	struct proto_join_group_req join_group;
	struct proto_heartbeat_req heartbeat;
	struct proto_leave_group_req leave_group;
	struct proto_commit_offsets_req commit_offsets;
	struct proto_fetch_offsets_req fetch_offsets;
	struct proto_describe_group_req describe_group;
	struct proto_delete_group_req delete_group;
	struct proto_reset_offsets_req reset_offsets;
};

/* Every response body, by API. CREATE, DELETE, ALTER, LEAVE_GROUP and
 * DELETE_GROUP have only the response header. */
union proto_response {
	struct proto_handshake_resp handshake;
	struct proto_metadata_resp metadata;
	struct proto_list_topics_resp list_topics;
	struct proto_describe_topic_resp describe_topic;
	struct proto_produce_resp produce;
	struct proto_fetch_resp fetch;
	struct proto_list_offsets_resp list_offsets;
	struct proto_broker_status_resp broker_status;
	struct proto_join_group_resp join_group;
	struct proto_heartbeat_resp heartbeat;
	struct proto_commit_offsets_resp commit_offsets;
	struct proto_fetch_offsets_resp fetch_offsets;
	struct proto_list_groups_resp list_groups;
	struct proto_describe_group_resp describe_group;
	struct proto_reset_offsets_resp reset_offsets;
};

/* The API versions this code speaks (all 0 today). */
bool proto_api_supported(uint16_t api, uint16_t version);
const char *proto_api_name(uint16_t api);

/* Decodes the body of a request of the given API. Returns 0, -EBADMSG,
 * -ENOMEM or -ENOTSUP. */
int proto_decode_request(uint16_t api, uint16_t version, struct pr *body, struct arena *a,
			 union proto_request *out);
/* Encodes a request body (after proto_req_begin, before proto_frame_end). */
void proto_encode_request(struct pw *w, uint16_t api, const union proto_request *req);

/* Same for response bodies (after proto_resp_begin). A response whose header
 * carries an error has no body: an empty body decodes, for every API, to a
 * zeroed response. */
int proto_decode_response(uint16_t api, uint16_t version, struct pr *body, struct arena *a,
			  union proto_response *out);
void proto_encode_response(struct pw *w, uint16_t api, union proto_response *resp);

static inline struct pstr pstr_c(const char *s)
{
	size_t n = 0;
	while (s[n] != '\0')
		n++;
	return (struct pstr){ s, (uint32_t)(n > UINT32_MAX ? UINT32_MAX : n) };
}

static inline bool pstr_eq(struct pstr a, const char *s)
{
	size_t i = 0;
	for (; i < a.len; i++)
		if (s[i] != a.p[i] || s[i] == '\0')
			return false;
	return s[i] == '\0';
}

#endif
