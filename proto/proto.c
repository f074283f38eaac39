/* proto.c — the ringmq wire protocol: the writer and reader, frames, and the
 * encoder and decoder of every request and response (docs/protocol.md). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/endian.h"
#include "proto/proto.h"
#include "proto/proto_impl.h"

/* ---- names ---- */

static const char *const err_names[ERR_COUNT] = {
	[ERR_NONE] = "NONE",
	[ERR_UNKNOWN] = "UNKNOWN",
	[ERR_INVALID_REQUEST] = "INVALID_REQUEST",
	[ERR_UNSUPPORTED_API] = "UNSUPPORTED_API",
	[ERR_UNSUPPORTED_VERSION] = "UNSUPPORTED_VERSION",
	[ERR_CORRUPT_BATCH] = "CORRUPT_BATCH",
	[ERR_BATCH_TOO_LARGE] = "BATCH_TOO_LARGE",
	[ERR_INVALID_TOPIC_NAME] = "INVALID_TOPIC_NAME",
	[ERR_UNKNOWN_TOPIC] = "UNKNOWN_TOPIC",
	[ERR_UNKNOWN_PARTITION] = "UNKNOWN_PARTITION",
	[ERR_TOPIC_EXISTS] = "TOPIC_EXISTS",
	[ERR_INVALID_CONFIG] = "INVALID_CONFIG",
	[ERR_INVALID_PARTITIONS] = "INVALID_PARTITIONS",
	[ERR_OFFSET_OUT_OF_RANGE] = "OFFSET_OUT_OF_RANGE",
	[ERR_LIMIT_EXCEEDED] = "LIMIT_EXCEEDED",
	[ERR_STORAGE] = "STORAGE",
	[ERR_DISK_FULL] = "DISK_FULL",
	[ERR_TIMEOUT] = "TIMEOUT",
	[ERR_SHUTTING_DOWN] = "SHUTTING_DOWN",
	[ERR_BUSY] = "BUSY",
	[ERR_INVALID_ACKS] = "INVALID_ACKS",
	[ERR_OUT_OF_ORDER_SEQUENCE] = "OUT_OF_ORDER_SEQUENCE",
	[ERR_INVALID_GROUP] = "INVALID_GROUP",
	[ERR_UNKNOWN_MEMBER] = "UNKNOWN_MEMBER",
	[ERR_FENCED_MEMBER] = "FENCED_MEMBER",
	[ERR_NOT_OWNER] = "NOT_OWNER",
	[ERR_GROUP_NOT_EMPTY] = "GROUP_NOT_EMPTY",
	[ERR_UNKNOWN_GROUP] = "UNKNOWN_GROUP",
};

static const char *const api_names[API_COUNT] = {
	[API_HANDSHAKE] = "HANDSHAKE",
	[API_METADATA] = "METADATA",
	[API_CREATE_TOPIC] = "CREATE_TOPIC",
	[API_DELETE_TOPIC] = "DELETE_TOPIC",
	[API_ALTER_TOPIC] = "ALTER_TOPIC",
	[API_LIST_TOPICS] = "LIST_TOPICS",
	[API_DESCRIBE_TOPIC] = "DESCRIBE_TOPIC",
	[API_PRODUCE] = "PRODUCE",
	[API_FETCH] = "FETCH",
	[API_LIST_OFFSETS] = "LIST_OFFSETS",
	[API_BROKER_STATUS] = "BROKER_STATUS",
	[API_JOIN_GROUP] = "JOIN_GROUP",
	[API_HEARTBEAT] = "HEARTBEAT",
	[API_LEAVE_GROUP] = "LEAVE_GROUP",
	[API_COMMIT_OFFSETS] = "COMMIT_OFFSETS",
	[API_FETCH_OFFSETS] = "FETCH_OFFSETS",
	[API_LIST_GROUPS] = "LIST_GROUPS",
	[API_DESCRIBE_GROUP] = "DESCRIBE_GROUP",
	[API_DELETE_GROUP] = "DELETE_GROUP",
	[API_RESET_OFFSETS] = "RESET_OFFSETS",
};

const char *proto_err_name(uint16_t err)
{
	/* A hole in the table (a code added without a name) reads as unknown. */
	if (err >= ERR_COUNT || err_names[err] == NULL)
		return "UNKNOWN";
	return err_names[err];
}

const char *proto_api_name(uint16_t api)
{
	if (api >= API_COUNT || api_names[api] == NULL)
		return "UNKNOWN";
	return api_names[api];
}

bool proto_err_retriable(uint16_t err)
{
	switch (err) {
	case ERR_TIMEOUT:
	case ERR_BUSY:
	case ERR_SHUTTING_DOWN:
	/* The disk may recover (space freed, a transient I/O error): the same
	 * request can succeed later, so clients back off and retry. */
	case ERR_STORAGE:
	case ERR_DISK_FULL:
		return true;
	default:
		return false;
	}
}

bool proto_api_supported(uint16_t api, uint16_t version)
{
	return api < API_COUNT && version == 0;
}

/* ---- writer ---- */

void pw_init_fixed(struct pw *w, void *buf, size_t cap)
{
	*w = (struct pw){ .buf = buf, .cap = buf != NULL ? cap : 0 };
}

void pw_init_dyn(struct pw *w, size_t initial, size_t max)
{
	/* max == 0 would read as a fixed writer, which pw_free never frees. */
	*w = (struct pw){ .max = max != 0 ? max : 1 };
	if (initial == 0)
		initial = 64;
	if (initial > w->max)
		initial = w->max;
	w->buf = malloc(initial);
	if (w->buf == NULL) {
		w->failed = true;
		return;
	}
	w->cap = initial;
}

void pw_free(struct pw *w)
{
	if (w->max != 0)
		free(w->buf);
	w->buf = NULL;
	w->len = 0;
	w->cap = 0;
}

uint8_t *pw_reserve(struct pw *w, size_t n)
{
	/* Zero bytes need a non-NULL answer even from a writer without a
	 * buffer, since NULL means failure. */
	static uint8_t nothing[1];

	if (w->failed)
		return NULL;
	if (n > w->cap - w->len) {
		if (w->max == 0 || w->len > w->max || n > w->max - w->len) {
			w->failed = true;
			return NULL;
		}
		size_t need = w->len + n;
		size_t cap = w->cap != 0 ? w->cap : 64;
		while (cap < need)
			cap = cap > w->max / 2 ? w->max : cap * 2;
		uint8_t *nb = realloc(w->buf, cap);
		if (nb == NULL) {
			w->failed = true;
			return NULL;
		}
		w->buf = nb;
		w->cap = cap;
	}
	if (w->buf == NULL)
		return nothing;
	uint8_t *p = w->buf + w->len;
	w->len += n;
	return p;
}

void pw_u8(struct pw *w, uint8_t v)
{
	uint8_t *p = pw_reserve(w, 1);
	if (p != NULL)
		*p = v;
}

void pw_u16(struct pw *w, uint16_t v)
{
	uint8_t *p = pw_reserve(w, 2);
	if (p != NULL)
		le16_store(p, v);
}

void pw_u32(struct pw *w, uint32_t v)
{
	uint8_t *p = pw_reserve(w, 4);
	if (p != NULL)
		le32_store(p, v);
}

void pw_u64(struct pw *w, uint64_t v)
{
	uint8_t *p = pw_reserve(w, 8);
	if (p != NULL)
		le64_store(p, v);
}

void pw_i64(struct pw *w, int64_t v)
{
	pw_u64(w, (uint64_t)v);
}

void pw_raw(struct pw *w, const void *p, size_t len)
{
	uint8_t *dst = pw_reserve(w, len);
	if (dst != NULL && len > 0)
		memcpy(dst, p, len);
}

void pw_str(struct pw *w, struct pstr s)
{
	if (s.len > UINT16_MAX) {
		w->failed = true;
		return;
	}
	pw_u16(w, (uint16_t)s.len);
	pw_raw(w, s.p, s.len);
}

void pw_bytes(struct pw *w, const void *p, uint32_t len)
{
	pw_u32(w, len);
	pw_raw(w, p, len);
}

void pw_patch_u32(struct pw *w, size_t at, uint32_t v)
{
	if (w->failed)
		return;
	if (at > w->len || w->len - at < 4) {
		w->failed = true;
		return;
	}
	le32_store(w->buf + at, v);
}

/* ---- reader ---- */

void pr_init(struct pr *r, const void *p, size_t len)
{
	static const uint8_t empty[1];

	r->failed = false;
	if (p == NULL) {
		/* Arithmetic on NULL is undefined even for +0. */
		r->p = r->end = empty;
		r->failed = len != 0;
		return;
	}
	r->p = p;
	r->end = r->p + len;
}

/* Consumes n bytes; NULL (and failed, for good) if fewer remain. */
static const uint8_t *pr_take(struct pr *r, size_t n)
{
	if (r->failed || n > pr_left(r)) {
		r->failed = true;
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	return p;
}

uint8_t pr_u8(struct pr *r)
{
	const uint8_t *p = pr_take(r, 1);
	return p != NULL ? *p : 0;
}

uint16_t pr_u16(struct pr *r)
{
	const uint8_t *p = pr_take(r, 2);
	return p != NULL ? le16_load(p) : 0;
}

uint32_t pr_u32(struct pr *r)
{
	const uint8_t *p = pr_take(r, 4);
	return p != NULL ? le32_load(p) : 0;
}

uint64_t pr_u64(struct pr *r)
{
	const uint8_t *p = pr_take(r, 8);
	return p != NULL ? le64_load(p) : 0;
}

int64_t pr_i64(struct pr *r)
{
	/* Two's complement on the wire; the conversion is what gcc and clang
	 * define for out-of-range values. */
	return (int64_t)pr_u64(r);
}

struct pstr pr_str(struct pr *r)
{
	uint16_t len = pr_u16(r);
	const uint8_t *p = pr_take(r, len);
	if (p == NULL)
		return (struct pstr){ "", 0 };
	return (struct pstr){ (const char *)p, len };
}

struct pbytes pr_bytes(struct pr *r)
{
	uint32_t len = pr_u32(r);
	const uint8_t *p = pr_take(r, len);
	if (p == NULL)
		return (struct pbytes){ NULL, 0 };
	return (struct pbytes){ p, len };
}

uint32_t pr_count(struct pr *r, size_t min_elem_size)
{
	uint32_t n = pr_u32(r);
	if (r->failed)
		return 0;
	if (min_elem_size != 0 && n > pr_left(r) / min_elem_size) {
		r->failed = true;
		return 0;
	}
	return n;
}

/* ---- frames ---- */

int proto_frame_peek(const void *p, size_t avail, uint32_t min_size, uint32_t max_frame,
		     uint32_t *frame_len)
{
	if (avail < FRAME_SIZE_FIELD)
		return -EAGAIN;
	uint32_t size = le32_load(p);
	if (size < min_size)
		return -EBADMSG;
	if (max_frame > FRAME_SIZE_HARD_MAX)
		max_frame = FRAME_SIZE_HARD_MAX;
	/* 64-bit sum: a size near 4 GiB must not wrap past the check. */
	if ((uint64_t)FRAME_SIZE_FIELD + size > max_frame)
		return -EMSGSIZE;
	if (avail < (size_t)FRAME_SIZE_FIELD + size)
		return -EAGAIN;
	*frame_len = FRAME_SIZE_FIELD + size;
	return 0;
}

size_t proto_req_begin(struct pw *w, uint16_t api, uint16_t version, uint32_t correlation_id)
{
	size_t start = w->len;
	pw_u32(w, 0); /* size: proto_frame_end */
	pw_u16(w, api);
	pw_u16(w, version);
	pw_u32(w, correlation_id);
	return start;
}

size_t proto_resp_begin(struct pw *w, uint32_t correlation_id, uint16_t err, const char *msg)
{
	size_t start = w->len;
	pw_u32(w, 0);
	pw_u32(w, correlation_id);
	pw_u16(w, err);
	pw_str(w, msg != NULL ? pstr_c(msg) : (struct pstr){ "", 0 });
	return start;
}

void proto_frame_end(struct pw *w, size_t start)
{
	if (w->failed)
		return;
	if (start > w->len || w->len - start < FRAME_SIZE_FIELD) {
		w->failed = true;
		return;
	}
	/* No peer may accept a larger frame, so sending one is a failure here
	 * rather than a dropped connection later. */
	if (w->len - start > FRAME_SIZE_HARD_MAX) {
		w->failed = true;
		return;
	}
	pw_patch_u32(w, start, (uint32_t)(w->len - start - FRAME_SIZE_FIELD));
}

int proto_req_header(const void *frame, uint32_t frame_len, struct proto_req_hdr *h,
		     struct pr *body)
{
	const uint8_t *f = frame;
	if (frame_len < FRAME_SIZE_FIELD + REQ_HEADER_SIZE)
		return -EBADMSG;
	if (le32_load(f) != frame_len - FRAME_SIZE_FIELD)
		return -EBADMSG;
	h->api = le16_load(f + 4);
	h->version = le16_load(f + 6);
	h->correlation_id = le32_load(f + 8);
	pr_init(body, f + FRAME_SIZE_FIELD + REQ_HEADER_SIZE,
		frame_len - FRAME_SIZE_FIELD - REQ_HEADER_SIZE);
	return 0;
}

int proto_resp_header(const void *frame, uint32_t frame_len, struct proto_resp_hdr *h,
		      struct pr *body)
{
	const uint8_t *f = frame;
	if (frame_len < FRAME_SIZE_FIELD + RESP_HEADER_SIZE)
		return -EBADMSG;
	if (le32_load(f) != frame_len - FRAME_SIZE_FIELD)
		return -EBADMSG;
	struct pr r;
	pr_init(&r, f + FRAME_SIZE_FIELD, frame_len - FRAME_SIZE_FIELD);
	h->correlation_id = pr_u32(&r);
	h->err = pr_u16(&r);
	h->msg = pr_str(&r);
	if (r.failed)
		return -EBADMSG;
	*body = r;
	return 0;
}

/* ---- decoding helpers ----
 *
 * Smallest encoding of each array element, for pr_count: a count can then
 * never promise more elements than the bytes left could hold, so a hostile
 * count fails before it costs any arena space.
 */
enum {
	MIN_STR = 2,
	MIN_KV = 2 * MIN_STR,
	MIN_API_RANGE = 6,
	MIN_TOPIC_HDR = MIN_STR + 4, /* name + count of partitions */
	MIN_MD_TOPIC = MIN_STR + 2 + MIN_STR + 4,
	MIN_MD_PART = 4 + 8 + 8,
	MIN_BRIEF = MIN_STR + 4,
	MIN_PART_DESC = 4 + 8 + 8 + 8 + 4,
	MIN_PRODUCE_PART = 4 + 4,
	MIN_PRODUCE_RESP_PART = 4 + 2 + MIN_STR + 8 + 8,
	MIN_FETCH_PART = 4 + 8 + 4,
	MIN_FETCH_RESP_PART = 4 + 2 + MIN_STR + 8 + 8 + 4,
	MIN_LO_PART = 4 + 8,
	MIN_LO_RESP_PART = 4 + 2 + MIN_STR + 8,
};

/* Reads an array's count and allocates its elements. Zero elements give
 * NULL without touching the arena. *err is 0, -EBADMSG or -ENOMEM. */
void *proto_dec_array(struct pr *r, struct arena *a, size_t min_size, size_t elem_size,
		      uint32_t *n, int *err)
{
	*n = pr_count(r, min_size);
	*err = 0;
	if (r->failed) {
		*err = -EBADMSG;
		return NULL;
	}
	if (*n == 0)
		return NULL;
	void *p = NULL;
	if (a != NULL && *n <= SIZE_MAX / elem_size)
		p = arena_alloc(a, (size_t)*n * elem_size);
	if (p == NULL) {
		*n = 0;
		*err = -ENOMEM;
	}
	return p;
}

static int dec_status(struct pr *r)
{
	return r->failed ? -EBADMSG : 0;
}

static int dec_kvs(struct pr *r, struct arena *a, uint32_t *n, struct proto_kv **out)
{
	int err;
	struct proto_kv *kv = proto_dec_array(r, a, MIN_KV, sizeof(*kv), n, &err);
	*out = kv;
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < *n; i++) {
		kv[i].key = pr_str(r);
		kv[i].value = pr_str(r);
	}
	return dec_status(r);
}

static void enc_kvs(struct pw *w, uint32_t n, const struct proto_kv *kv)
{
	pw_u32(w, n);
	for (uint32_t i = 0; i < n; i++) {
		pw_str(w, kv[i].key);
		pw_str(w, kv[i].value);
	}
}

/* ---- requests ---- */

static int dec_handshake_req(struct pr *r, struct proto_handshake_req *m)
{
	m->client_name = pr_str(r);
	m->min_version = pr_u16(r);
	m->max_version = pr_u16(r);
	return dec_status(r);
}

static void enc_handshake_req(struct pw *w, const struct proto_handshake_req *m)
{
	pw_str(w, m->client_name);
	pw_u16(w, m->min_version);
	pw_u16(w, m->max_version);
}

static int dec_metadata_req(struct pr *r, struct arena *a, struct proto_metadata_req *m)
{
	int err;
	m->topics = proto_dec_array(r, a, MIN_STR, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++)
		m->topics[i] = pr_str(r);
	return dec_status(r);
}

static void enc_metadata_req(struct pw *w, const struct proto_metadata_req *m)
{
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++)
		pw_str(w, m->topics[i]);
}

static int dec_create_topic_req(struct pr *r, struct arena *a, struct proto_create_topic_req *m)
{
	m->name = pr_str(r);
	m->partitions = pr_u32(r);
	return dec_kvs(r, a, &m->nconfigs, &m->configs);
}

static void enc_create_topic_req(struct pw *w, const struct proto_create_topic_req *m)
{
	pw_str(w, m->name);
	pw_u32(w, m->partitions);
	enc_kvs(w, m->nconfigs, m->configs);
}

static int dec_alter_topic_req(struct pr *r, struct arena *a, struct proto_alter_topic_req *m)
{
	m->name = pr_str(r);
	m->partitions = pr_u32(r);
	return dec_kvs(r, a, &m->nconfigs, &m->configs);
}

static void enc_alter_topic_req(struct pw *w, const struct proto_alter_topic_req *m)
{
	pw_str(w, m->name);
	pw_u32(w, m->partitions);
	enc_kvs(w, m->nconfigs, m->configs);
}

static int dec_produce_req(struct pr *r, struct arena *a, struct proto_produce_req *m)
{
	int err;
	m->acks = (int8_t)pr_u8(r);
	m->timeout_ms = pr_u32(r);
	m->topics = proto_dec_array(r, a, MIN_TOPIC_HDR, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_produce_topic *t = &m->topics[i];
		t->name = pr_str(r);
		t->parts = proto_dec_array(r, a, MIN_PRODUCE_PART, sizeof(*t->parts), &t->nparts, &err);
		if (err != 0)
			return err;
		for (uint32_t j = 0; j < t->nparts; j++) {
			t->parts[j].partition = pr_u32(r);
			t->parts[j].batches = pr_bytes(r);
		}
	}
	return dec_status(r);
}

static void enc_produce_req(struct pw *w, const struct proto_produce_req *m)
{
	pw_u8(w, (uint8_t)m->acks);
	pw_u32(w, m->timeout_ms);
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		const struct proto_produce_topic *t = &m->topics[i];
		pw_str(w, t->name);
		pw_u32(w, t->nparts);
		for (uint32_t j = 0; j < t->nparts; j++) {
			pw_u32(w, t->parts[j].partition);
			pw_bytes(w, t->parts[j].batches.p, t->parts[j].batches.len);
		}
	}
}

static int dec_fetch_req(struct pr *r, struct arena *a, struct proto_fetch_req *m)
{
	int err;
	m->max_wait_ms = pr_u32(r);
	m->min_bytes = pr_u32(r);
	m->max_bytes = pr_u32(r);
	m->topics = proto_dec_array(r, a, MIN_TOPIC_HDR, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_fetch_topic *t = &m->topics[i];
		t->name = pr_str(r);
		t->parts = proto_dec_array(r, a, MIN_FETCH_PART, sizeof(*t->parts), &t->nparts, &err);
		if (err != 0)
			return err;
		for (uint32_t j = 0; j < t->nparts; j++) {
			t->parts[j].partition = pr_u32(r);
			t->parts[j].offset = pr_u64(r);
			t->parts[j].max_bytes = pr_u32(r);
		}
	}
	m->group = pr_str(r);
	m->member_id = pr_str(r);
	m->member_epoch = pr_u32(r);
	return dec_status(r);
}

static void enc_fetch_req(struct pw *w, const struct proto_fetch_req *m)
{
	pw_u32(w, m->max_wait_ms);
	pw_u32(w, m->min_bytes);
	pw_u32(w, m->max_bytes);
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		const struct proto_fetch_topic *t = &m->topics[i];
		pw_str(w, t->name);
		pw_u32(w, t->nparts);
		for (uint32_t j = 0; j < t->nparts; j++) {
			pw_u32(w, t->parts[j].partition);
			pw_u64(w, t->parts[j].offset);
			pw_u32(w, t->parts[j].max_bytes);
		}
	}
	pw_str(w, m->group);
	pw_str(w, m->member_id);
	pw_u32(w, m->member_epoch);
}

static int dec_list_offsets_req(struct pr *r, struct arena *a, struct proto_list_offsets_req *m)
{
	int err;
	m->topics = proto_dec_array(r, a, MIN_TOPIC_HDR, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_lo_topic *t = &m->topics[i];
		t->name = pr_str(r);
		t->parts = proto_dec_array(r, a, MIN_LO_PART, sizeof(*t->parts), &t->nparts, &err);
		if (err != 0)
			return err;
		for (uint32_t j = 0; j < t->nparts; j++) {
			t->parts[j].partition = pr_u32(r);
			t->parts[j].spec = pr_i64(r);
		}
	}
	return dec_status(r);
}

static void enc_list_offsets_req(struct pw *w, const struct proto_list_offsets_req *m)
{
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		const struct proto_lo_topic *t = &m->topics[i];
		pw_str(w, t->name);
		pw_u32(w, t->nparts);
		for (uint32_t j = 0; j < t->nparts; j++) {
			pw_u32(w, t->parts[j].partition);
			pw_i64(w, t->parts[j].spec);
		}
	}
}

int proto_decode_request(uint16_t api, uint16_t version, struct pr *body, struct arena *a,
			 union proto_request *out)
{
	if (!proto_api_supported(api, version))
		return -ENOTSUP;
	if (body->failed)
		return -EBADMSG;
	memset(out, 0, sizeof(*out));
	int ret = 0;
	switch ((enum proto_api)api) {
	case API_HANDSHAKE:
		ret = dec_handshake_req(body, &out->handshake);
		break;
	case API_METADATA:
		ret = dec_metadata_req(body, a, &out->metadata);
		break;
	case API_CREATE_TOPIC:
		ret = dec_create_topic_req(body, a, &out->create_topic);
		break;
	case API_DELETE_TOPIC:
		out->delete_topic.name = pr_str(body);
		break;
	case API_ALTER_TOPIC:
		ret = dec_alter_topic_req(body, a, &out->alter_topic);
		break;
	case API_DESCRIBE_TOPIC:
		out->describe_topic.name = pr_str(body);
		break;
	case API_PRODUCE:
		ret = dec_produce_req(body, a, &out->produce);
		break;
	case API_FETCH:
		ret = dec_fetch_req(body, a, &out->fetch);
		break;
	case API_LIST_OFFSETS:
		ret = dec_list_offsets_req(body, a, &out->list_offsets);
		break;
	case API_LIST_TOPICS:
	case API_BROKER_STATUS:
		break; /* empty body */
	case API_JOIN_GROUP:
	case API_HEARTBEAT:
	case API_LEAVE_GROUP:
	case API_COMMIT_OFFSETS:
	case API_FETCH_OFFSETS:
	case API_LIST_GROUPS:
	case API_DESCRIBE_GROUP:
	case API_DELETE_GROUP:
	case API_RESET_OFFSETS:
		ret = proto_group_decode_request(api, body, a, out);
		break;
	case API_COUNT:
		return -ENOTSUP;
	}
	if (ret != 0)
		return ret;
	if (body->failed || pr_left(body) != 0)
		return -EBADMSG;
	return 0;
}

void proto_encode_request(struct pw *w, uint16_t api, const union proto_request *req)
{
	switch ((enum proto_api)api) {
	case API_HANDSHAKE:
		enc_handshake_req(w, &req->handshake);
		return;
	case API_METADATA:
		enc_metadata_req(w, &req->metadata);
		return;
	case API_CREATE_TOPIC:
		enc_create_topic_req(w, &req->create_topic);
		return;
	case API_DELETE_TOPIC:
		pw_str(w, req->delete_topic.name);
		return;
	case API_ALTER_TOPIC:
		enc_alter_topic_req(w, &req->alter_topic);
		return;
	case API_DESCRIBE_TOPIC:
		pw_str(w, req->describe_topic.name);
		return;
	case API_PRODUCE:
		enc_produce_req(w, &req->produce);
		return;
	case API_FETCH:
		enc_fetch_req(w, &req->fetch);
		return;
	case API_LIST_OFFSETS:
		enc_list_offsets_req(w, &req->list_offsets);
		return;
	case API_LIST_TOPICS:
	case API_BROKER_STATUS:
		return;
	case API_JOIN_GROUP:
	case API_HEARTBEAT:
	case API_LEAVE_GROUP:
	case API_COMMIT_OFFSETS:
	case API_FETCH_OFFSETS:
	case API_LIST_GROUPS:
	case API_DESCRIBE_GROUP:
	case API_DELETE_GROUP:
	case API_RESET_OFFSETS:
		proto_group_encode_request(w, api, req);
		return;
	case API_COUNT:
		break;
	}
	/* An API this code does not know has no encoding to send. */
	w->failed = true;
}

/* ---- responses ---- */

static int dec_handshake_resp(struct pr *r, struct arena *a, struct proto_handshake_resp *m)
{
	int err;
	m->version = pr_u16(r);
	m->broker = pr_str(r);
	m->apis = proto_dec_array(r, a, MIN_API_RANGE, sizeof(*m->apis), &m->napis, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->napis; i++) {
		m->apis[i].api = pr_u16(r);
		m->apis[i].min_version = pr_u16(r);
		m->apis[i].max_version = pr_u16(r);
	}
	return dec_status(r);
}

static void enc_handshake_resp(struct pw *w, const struct proto_handshake_resp *m)
{
	pw_u16(w, m->version);
	pw_str(w, m->broker);
	pw_u32(w, m->napis);
	for (uint32_t i = 0; i < m->napis; i++) {
		pw_u16(w, m->apis[i].api);
		pw_u16(w, m->apis[i].min_version);
		pw_u16(w, m->apis[i].max_version);
	}
}

static int dec_metadata_resp(struct pr *r, struct arena *a, struct proto_metadata_resp *m)
{
	int err;
	m->topics = proto_dec_array(r, a, MIN_MD_TOPIC, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_md_topic *t = &m->topics[i];
		t->name = pr_str(r);
		t->err = pr_u16(r);
		t->msg = pr_str(r);
		t->parts = proto_dec_array(r, a, MIN_MD_PART, sizeof(*t->parts), &t->nparts, &err);
		if (err != 0)
			return err;
		for (uint32_t j = 0; j < t->nparts; j++) {
			t->parts[j].partition = pr_u32(r);
			t->parts[j].log_start = pr_u64(r);
			t->parts[j].log_end = pr_u64(r);
		}
	}
	return dec_status(r);
}

static void enc_metadata_resp(struct pw *w, const struct proto_metadata_resp *m)
{
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		const struct proto_md_topic *t = &m->topics[i];
		pw_str(w, t->name);
		pw_u16(w, t->err);
		pw_str(w, t->msg);
		pw_u32(w, t->nparts);
		for (uint32_t j = 0; j < t->nparts; j++) {
			pw_u32(w, t->parts[j].partition);
			pw_u64(w, t->parts[j].log_start);
			pw_u64(w, t->parts[j].log_end);
		}
	}
}

static int dec_list_topics_resp(struct pr *r, struct arena *a, struct proto_list_topics_resp *m)
{
	int err;
	m->topics = proto_dec_array(r, a, MIN_BRIEF, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		m->topics[i].name = pr_str(r);
		m->topics[i].partitions = pr_u32(r);
	}
	return dec_status(r);
}

static void enc_list_topics_resp(struct pw *w, const struct proto_list_topics_resp *m)
{
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		pw_str(w, m->topics[i].name);
		pw_u32(w, m->topics[i].partitions);
	}
}

static int dec_describe_topic_resp(struct pr *r, struct arena *a,
				   struct proto_describe_topic_resp *m)
{
	int err;
	m->name = pr_str(r);
	m->partitions = pr_u32(r);
	err = dec_kvs(r, a, &m->nconfigs, &m->configs);
	if (err != 0)
		return err;
	m->parts = proto_dec_array(r, a, MIN_PART_DESC, sizeof(*m->parts), &m->nparts, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->nparts; i++) {
		struct proto_part_desc *p = &m->parts[i];
		p->partition = pr_u32(r);
		p->log_start = pr_u64(r);
		p->log_end = pr_u64(r);
		p->size_bytes = pr_u64(r);
		p->segments = pr_u32(r);
	}
	return dec_status(r);
}

static void enc_describe_topic_resp(struct pw *w, const struct proto_describe_topic_resp *m)
{
	pw_str(w, m->name);
	pw_u32(w, m->partitions);
	enc_kvs(w, m->nconfigs, m->configs);
	pw_u32(w, m->nparts);
	for (uint32_t i = 0; i < m->nparts; i++) {
		const struct proto_part_desc *p = &m->parts[i];
		pw_u32(w, p->partition);
		pw_u64(w, p->log_start);
		pw_u64(w, p->log_end);
		pw_u64(w, p->size_bytes);
		pw_u32(w, p->segments);
	}
}

static int dec_produce_resp(struct pr *r, struct arena *a, struct proto_produce_resp *m)
{
	int err;
	m->topics = proto_dec_array(r, a, MIN_TOPIC_HDR, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_produce_resp_topic *t = &m->topics[i];
		t->name = pr_str(r);
		t->parts = proto_dec_array(r, a, MIN_PRODUCE_RESP_PART, sizeof(*t->parts), &t->nparts,
				     &err);
		if (err != 0)
			return err;
		for (uint32_t j = 0; j < t->nparts; j++) {
			struct proto_produce_resp_part *p = &t->parts[j];
			p->partition = pr_u32(r);
			p->err = pr_u16(r);
			p->msg = pr_str(r);
			p->base_offset = pr_u64(r);
			p->log_start = pr_u64(r);
		}
	}
	return dec_status(r);
}

static void enc_produce_resp(struct pw *w, const struct proto_produce_resp *m)
{
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		const struct proto_produce_resp_topic *t = &m->topics[i];
		pw_str(w, t->name);
		pw_u32(w, t->nparts);
		for (uint32_t j = 0; j < t->nparts; j++) {
			const struct proto_produce_resp_part *p = &t->parts[j];
			pw_u32(w, p->partition);
			pw_u16(w, p->err);
			pw_str(w, p->msg);
			pw_u64(w, p->base_offset);
			pw_u64(w, p->log_start);
		}
	}
}

static int dec_fetch_resp(struct pr *r, struct arena *a, struct proto_fetch_resp *m)
{
	int err;
	m->topics = proto_dec_array(r, a, MIN_TOPIC_HDR, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_fetch_resp_topic *t = &m->topics[i];
		t->name = pr_str(r);
		t->parts = proto_dec_array(r, a, MIN_FETCH_RESP_PART, sizeof(*t->parts), &t->nparts,
				     &err);
		if (err != 0)
			return err;
		for (uint32_t j = 0; j < t->nparts; j++) {
			struct proto_fetch_resp_part *p = &t->parts[j];
			p->partition = pr_u32(r);
			p->err = pr_u16(r);
			p->msg = pr_str(r);
			p->log_start = pr_u64(r);
			p->log_end = pr_u64(r);
			p->records = pr_bytes(r);
			p->records_at = 0;
		}
	}
	return dec_status(r);
}

static void enc_fetch_resp(struct pw *w, struct proto_fetch_resp *m)
{
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_fetch_resp_topic *t = &m->topics[i];
		pw_str(w, t->name);
		pw_u32(w, t->nparts);
		for (uint32_t j = 0; j < t->nparts; j++) {
			struct proto_fetch_resp_part *p = &t->parts[j];
			pw_u32(w, p->partition);
			pw_u16(w, p->err);
			pw_str(w, p->msg);
			pw_u64(w, p->log_start);
			pw_u64(w, p->log_end);
			pw_u32(w, p->records.len);
			/* A position, not a pointer: the buffer may move as
			 * the writer grows. */
			p->records_at = w->len;
			if (p->records.p == NULL)
				pw_reserve(w, p->records.len);
			else
				pw_raw(w, p->records.p, p->records.len);
		}
	}
}

static int dec_list_offsets_resp(struct pr *r, struct arena *a,
				 struct proto_list_offsets_resp *m)
{
	int err;
	m->topics = proto_dec_array(r, a, MIN_TOPIC_HDR, sizeof(*m->topics), &m->ntopics, &err);
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < m->ntopics; i++) {
		struct proto_lo_resp_topic *t = &m->topics[i];
		t->name = pr_str(r);
		t->parts = proto_dec_array(r, a, MIN_LO_RESP_PART, sizeof(*t->parts), &t->nparts, &err);
		if (err != 0)
			return err;
		for (uint32_t j = 0; j < t->nparts; j++) {
			struct proto_lo_resp_part *p = &t->parts[j];
			p->partition = pr_u32(r);
			p->err = pr_u16(r);
			p->msg = pr_str(r);
			p->offset = pr_u64(r);
		}
	}
	return dec_status(r);
}

static void enc_list_offsets_resp(struct pw *w, const struct proto_list_offsets_resp *m)
{
	pw_u32(w, m->ntopics);
	for (uint32_t i = 0; i < m->ntopics; i++) {
		const struct proto_lo_resp_topic *t = &m->topics[i];
		pw_str(w, t->name);
		pw_u32(w, t->nparts);
		for (uint32_t j = 0; j < t->nparts; j++) {
			const struct proto_lo_resp_part *p = &t->parts[j];
			pw_u32(w, p->partition);
			pw_u16(w, p->err);
			pw_str(w, p->msg);
			pw_u64(w, p->offset);
		}
	}
}

static int dec_broker_status_resp(struct pr *r, struct proto_broker_status_resp *m)
{
	m->version = pr_str(r);
	m->uptime_ms = pr_u64(r);
	m->topics = pr_u32(r);
	m->partitions = pr_u32(r);
	m->connections = pr_u32(r);
	m->bytes_on_disk = pr_u64(r);
	m->data_dir = pr_str(r);
	m->messages_in = pr_u64(r);
	m->bytes_in = pr_u64(r);
	m->bytes_out = pr_u64(r);
	return dec_status(r);
}

static void enc_broker_status_resp(struct pw *w, const struct proto_broker_status_resp *m)
{
	pw_str(w, m->version);
	pw_u64(w, m->uptime_ms);
	pw_u32(w, m->topics);
	pw_u32(w, m->partitions);
	pw_u32(w, m->connections);
	pw_u64(w, m->bytes_on_disk);
	pw_str(w, m->data_dir);
	pw_u64(w, m->messages_in);
	pw_u64(w, m->bytes_in);
	pw_u64(w, m->bytes_out);
}

int proto_decode_response(uint16_t api, uint16_t version, struct pr *body, struct arena *a,
			  union proto_response *out)
{
	if (!proto_api_supported(api, version))
		return -ENOTSUP;
	if (body->failed)
		return -EBADMSG;
	memset(out, 0, sizeof(*out));
	/* The decoder cannot see the header's error code, and an error
	 * response has no body; a body that is there is never empty. */
	if (pr_left(body) == 0)
		return 0;
	int ret = 0;
	switch ((enum proto_api)api) {
	case API_HANDSHAKE:
		ret = dec_handshake_resp(body, a, &out->handshake);
		break;
	case API_METADATA:
		ret = dec_metadata_resp(body, a, &out->metadata);
		break;
	case API_LIST_TOPICS:
		ret = dec_list_topics_resp(body, a, &out->list_topics);
		break;
	case API_DESCRIBE_TOPIC:
		ret = dec_describe_topic_resp(body, a, &out->describe_topic);
		break;
	case API_PRODUCE:
		ret = dec_produce_resp(body, a, &out->produce);
		break;
	case API_FETCH:
		ret = dec_fetch_resp(body, a, &out->fetch);
		break;
	case API_LIST_OFFSETS:
		ret = dec_list_offsets_resp(body, a, &out->list_offsets);
		break;
	case API_BROKER_STATUS:
		ret = dec_broker_status_resp(body, &out->broker_status);
		break;
	case API_CREATE_TOPIC:
	case API_DELETE_TOPIC:
	case API_ALTER_TOPIC:
		break; /* header only: any byte is one too many */
	case API_JOIN_GROUP:
	case API_HEARTBEAT:
	case API_LEAVE_GROUP:
	case API_COMMIT_OFFSETS:
	case API_FETCH_OFFSETS:
	case API_LIST_GROUPS:
	case API_DESCRIBE_GROUP:
	case API_DELETE_GROUP:
	case API_RESET_OFFSETS:
		ret = proto_group_decode_response(api, body, a, out);
		break;
	case API_COUNT:
		return -ENOTSUP;
	}
	if (ret != 0)
		return ret;
	if (body->failed || pr_left(body) != 0)
		return -EBADMSG;
	return 0;
}

void proto_encode_response(struct pw *w, uint16_t api, union proto_response *resp)
{
	switch ((enum proto_api)api) {
	case API_HANDSHAKE:
		enc_handshake_resp(w, &resp->handshake);
		return;
	case API_METADATA:
		enc_metadata_resp(w, &resp->metadata);
		return;
	case API_LIST_TOPICS:
		enc_list_topics_resp(w, &resp->list_topics);
		return;
	case API_DESCRIBE_TOPIC:
		enc_describe_topic_resp(w, &resp->describe_topic);
		return;
	case API_PRODUCE:
		enc_produce_resp(w, &resp->produce);
		return;
	case API_FETCH:
		enc_fetch_resp(w, &resp->fetch);
		return;
	case API_LIST_OFFSETS:
		enc_list_offsets_resp(w, &resp->list_offsets);
		return;
	case API_BROKER_STATUS:
		enc_broker_status_resp(w, &resp->broker_status);
		return;
	case API_CREATE_TOPIC:
	case API_DELETE_TOPIC:
	case API_ALTER_TOPIC:
		return;
	case API_JOIN_GROUP:
	case API_HEARTBEAT:
	case API_LEAVE_GROUP:
	case API_COMMIT_OFFSETS:
	case API_FETCH_OFFSETS:
	case API_LIST_GROUPS:
	case API_DESCRIBE_GROUP:
	case API_DELETE_GROUP:
	case API_RESET_OFFSETS:
		proto_group_encode_response(w, api, resp);
		return;
	case API_COUNT:
		break;
	}
	w->failed = true;
}
