/* test_proto.c — the wire protocol: every request and response round trips,
 * and every truncated, padded, oversized or unknown input is refused with the
 * right error and without reading a byte past what it was given. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/endian.h"
#include "proto/proto.h"
#include "tests/unit/testutil.h"

/* Under ASan, the bytes past a truncated input are poisoned, so a decoder
 * that reads beyond its bound crashes instead of passing by luck. */
#if defined(__SANITIZE_ADDRESS__)
#define TP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TP_ASAN 1
#endif
#endif
#ifdef TP_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_STR 65535u

/* Arrays of pointers and 64-bit fields come from here: keep it aligned. */
static _Alignas(16) uint8_t arena_mem[1 << 20];

/* A string of the largest length the wire allows, and a blob longer than
 * any u16 could count. */
static char maxstr[MAX_STR + 1];
static uint8_t blob[70000];

static int setup(void **state)
{
	(void)state;
	for (size_t i = 0; i < MAX_STR; i++)
		maxstr[i] = (char)('a' + i % 26);
	maxstr[MAX_STR] = '\0';
	for (size_t i = 0; i < sizeof(blob); i++)
		blob[i] = (uint8_t)(i * 131 + 7);
	return 0;
}

static struct pstr S(const char *s)
{
	return pstr_c(s);
}

static struct pstr MAXS(void)
{
	return (struct pstr){ maxstr, MAX_STR };
}

/* ---- equality ---- */

static void eq_str(struct pstr a, struct pstr b)
{
	assert_int_equal(a.len, b.len);
	if (a.len > 0)
		assert_memory_equal(a.p, b.p, a.len);
}

static void eq_bytes(struct pbytes a, struct pbytes b)
{
	assert_int_equal(a.len, b.len);
	if (a.len > 0)
		assert_memory_equal(a.p, b.p, a.len);
}

static void eq_kvs(uint32_t na, const struct proto_kv *a, uint32_t nb, const struct proto_kv *b)
{
	assert_int_equal(na, nb);
	for (uint32_t i = 0; i < na; i++) {
		eq_str(a[i].key, b[i].key);
		eq_str(a[i].value, b[i].value);
	}
}

static void eq_produce_req(const struct proto_produce_req *a, const struct proto_produce_req *b)
{
	assert_int_equal(a->acks, b->acks);
	assert_int_equal(a->timeout_ms, b->timeout_ms);
	assert_int_equal(a->ntopics, b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_produce_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name);
		assert_int_equal(x->nparts, y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			assert_int_equal(x->parts[j].partition, y->parts[j].partition);
			eq_bytes(x->parts[j].batches, y->parts[j].batches);
		}
	}
}

static void eq_fetch_req(const struct proto_fetch_req *a, const struct proto_fetch_req *b)
{
	assert_int_equal(a->max_wait_ms, b->max_wait_ms);
	assert_int_equal(a->min_bytes, b->min_bytes);
	assert_int_equal(a->max_bytes, b->max_bytes);
	assert_int_equal(a->ntopics, b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_fetch_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name);
		assert_int_equal(x->nparts, y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			assert_int_equal(x->parts[j].partition, y->parts[j].partition);
			assert_int_equal(x->parts[j].offset, y->parts[j].offset);
			assert_int_equal(x->parts[j].max_bytes, y->parts[j].max_bytes);
		}
	}
	eq_str(a->group, b->group);
	eq_str(a->member_id, b->member_id);
	assert_int_equal(a->member_epoch, b->member_epoch);
}

static void eq_lo_req(const struct proto_list_offsets_req *a,
		      const struct proto_list_offsets_req *b)
{
	assert_int_equal(a->ntopics, b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_lo_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name);
		assert_int_equal(x->nparts, y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			assert_int_equal(x->parts[j].partition, y->parts[j].partition);
			assert_true(x->parts[j].spec == y->parts[j].spec);
		}
	}
}

static void eq_request(uint16_t api, const union proto_request *a, const union proto_request *b)
{
	switch (api) {
	case API_HANDSHAKE:
		eq_str(a->handshake.client_name, b->handshake.client_name);
		assert_int_equal(a->handshake.min_version, b->handshake.min_version);
		assert_int_equal(a->handshake.max_version, b->handshake.max_version);
		break;
	case API_METADATA:
		assert_int_equal(a->metadata.ntopics, b->metadata.ntopics);
		for (uint32_t i = 0; i < a->metadata.ntopics; i++)
			eq_str(a->metadata.topics[i], b->metadata.topics[i]);
		break;
	case API_CREATE_TOPIC:
		eq_str(a->create_topic.name, b->create_topic.name);
		assert_int_equal(a->create_topic.partitions, b->create_topic.partitions);
		eq_kvs(a->create_topic.nconfigs, a->create_topic.configs, b->create_topic.nconfigs,
		       b->create_topic.configs);
		break;
	case API_DELETE_TOPIC:
		eq_str(a->delete_topic.name, b->delete_topic.name);
		break;
	case API_ALTER_TOPIC:
		eq_str(a->alter_topic.name, b->alter_topic.name);
		assert_int_equal(a->alter_topic.partitions, b->alter_topic.partitions);
		eq_kvs(a->alter_topic.nconfigs, a->alter_topic.configs, b->alter_topic.nconfigs,
		       b->alter_topic.configs);
		break;
	case API_DESCRIBE_TOPIC:
		eq_str(a->describe_topic.name, b->describe_topic.name);
		break;
	case API_PRODUCE:
		eq_produce_req(&a->produce, &b->produce);
		break;
	case API_FETCH:
		eq_fetch_req(&a->fetch, &b->fetch);
		break;
	case API_LIST_OFFSETS:
		eq_lo_req(&a->list_offsets, &b->list_offsets);
		break;
	default:
		break; /* empty bodies */
	}
}

static void eq_md_resp(const struct proto_metadata_resp *a, const struct proto_metadata_resp *b)
{
	assert_int_equal(a->ntopics, b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_md_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name);
		assert_int_equal(x->err, y->err);
		eq_str(x->msg, y->msg);
		assert_int_equal(x->nparts, y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			assert_int_equal(x->parts[j].partition, y->parts[j].partition);
			assert_int_equal(x->parts[j].log_start, y->parts[j].log_start);
			assert_int_equal(x->parts[j].log_end, y->parts[j].log_end);
		}
	}
}

static void eq_describe_resp(const struct proto_describe_topic_resp *a,
			     const struct proto_describe_topic_resp *b)
{
	eq_str(a->name, b->name);
	assert_int_equal(a->partitions, b->partitions);
	eq_kvs(a->nconfigs, a->configs, b->nconfigs, b->configs);
	assert_int_equal(a->nparts, b->nparts);
	for (uint32_t i = 0; i < a->nparts; i++) {
		const struct proto_part_desc *x = &a->parts[i], *y = &b->parts[i];
		assert_int_equal(x->partition, y->partition);
		assert_int_equal(x->log_start, y->log_start);
		assert_int_equal(x->log_end, y->log_end);
		assert_int_equal(x->size_bytes, y->size_bytes);
		assert_int_equal(x->segments, y->segments);
	}
}

static void eq_produce_resp(const struct proto_produce_resp *a, const struct proto_produce_resp *b)
{
	assert_int_equal(a->ntopics, b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_produce_resp_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name);
		assert_int_equal(x->nparts, y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			const struct proto_produce_resp_part *p = &x->parts[j], *q = &y->parts[j];
			assert_int_equal(p->partition, q->partition);
			assert_int_equal(p->err, q->err);
			eq_str(p->msg, q->msg);
			assert_int_equal(p->base_offset, q->base_offset);
			assert_int_equal(p->log_start, q->log_start);
		}
	}
}

static void eq_fetch_resp(const struct proto_fetch_resp *a, const struct proto_fetch_resp *b)
{
	assert_int_equal(a->ntopics, b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_fetch_resp_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name);
		assert_int_equal(x->nparts, y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			const struct proto_fetch_resp_part *p = &x->parts[j], *q = &y->parts[j];
			assert_int_equal(p->partition, q->partition);
			assert_int_equal(p->err, q->err);
			eq_str(p->msg, q->msg);
			assert_int_equal(p->log_start, q->log_start);
			assert_int_equal(p->log_end, q->log_end);
			eq_bytes(p->records, q->records);
		}
	}
}

static void eq_lo_resp(const struct proto_list_offsets_resp *a,
		       const struct proto_list_offsets_resp *b)
{
	assert_int_equal(a->ntopics, b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_lo_resp_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name);
		assert_int_equal(x->nparts, y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			const struct proto_lo_resp_part *p = &x->parts[j], *q = &y->parts[j];
			assert_int_equal(p->partition, q->partition);
			assert_int_equal(p->err, q->err);
			eq_str(p->msg, q->msg);
			assert_int_equal(p->offset, q->offset);
		}
	}
}

static void eq_status_resp(const struct proto_broker_status_resp *a,
			   const struct proto_broker_status_resp *b)
{
	eq_str(a->version, b->version);
	assert_int_equal(a->uptime_ms, b->uptime_ms);
	assert_int_equal(a->topics, b->topics);
	assert_int_equal(a->partitions, b->partitions);
	assert_int_equal(a->connections, b->connections);
	assert_int_equal(a->bytes_on_disk, b->bytes_on_disk);
	eq_str(a->data_dir, b->data_dir);
	assert_int_equal(a->messages_in, b->messages_in);
	assert_int_equal(a->bytes_in, b->bytes_in);
	assert_int_equal(a->bytes_out, b->bytes_out);
}

static void eq_response(uint16_t api, const union proto_response *a, const union proto_response *b)
{
	switch (api) {
	case API_HANDSHAKE:
		assert_int_equal(a->handshake.version, b->handshake.version);
		eq_str(a->handshake.broker, b->handshake.broker);
		assert_int_equal(a->handshake.napis, b->handshake.napis);
		for (uint32_t i = 0; i < a->handshake.napis; i++) {
			assert_int_equal(a->handshake.apis[i].api, b->handshake.apis[i].api);
			assert_int_equal(a->handshake.apis[i].min_version,
					 b->handshake.apis[i].min_version);
			assert_int_equal(a->handshake.apis[i].max_version,
					 b->handshake.apis[i].max_version);
		}
		break;
	case API_METADATA:
		eq_md_resp(&a->metadata, &b->metadata);
		break;
	case API_LIST_TOPICS:
		assert_int_equal(a->list_topics.ntopics, b->list_topics.ntopics);
		for (uint32_t i = 0; i < a->list_topics.ntopics; i++) {
			eq_str(a->list_topics.topics[i].name, b->list_topics.topics[i].name);
			assert_int_equal(a->list_topics.topics[i].partitions,
					 b->list_topics.topics[i].partitions);
		}
		break;
	case API_DESCRIBE_TOPIC:
		eq_describe_resp(&a->describe_topic, &b->describe_topic);
		break;
	case API_PRODUCE:
		eq_produce_resp(&a->produce, &b->produce);
		break;
	case API_FETCH:
		eq_fetch_resp(&a->fetch, &b->fetch);
		break;
	case API_LIST_OFFSETS:
		eq_lo_resp(&a->list_offsets, &b->list_offsets);
		break;
	case API_BROKER_STATUS:
		eq_status_resp(&a->broker_status, &b->broker_status);
		break;
	default:
		break; /* header-only responses */
	}
}

/* ---- the round-trip harness ---- */

static int decode_body(bool resp, uint16_t api, uint16_t version, const void *p, size_t len,
		       struct arena *a, union proto_request *rq, union proto_response *rs)
{
	struct pr r;
	pr_init(&r, p, len);
	if (resp)
		return proto_decode_response(api, version, &r, a, rs);
	return proto_decode_request(api, version, &r, a, rq);
}

/* Every prefix of the body must be refused. An empty response body is the
 * one exception: it is what an error response carries. The bytes past the
 * prefix are poisoned, so the decoder cannot even peek at them. */
static void sweep_truncations(bool resp, uint16_t api, const uint8_t *body, size_t len)
{
	if (len == 0)
		return;
	uint8_t *b = malloc(len);
	assert_non_null(b);
	memcpy(b, body, len);
	union proto_request rq;
	union proto_response rs;
	struct arena a;
	for (size_t k = len; k-- > 0;) {
		POISON(b + k, len - k);
		arena_init(&a, arena_mem, sizeof(arena_mem));
		int ret = decode_body(resp, api, 0, b, k, &a, &rq, &rs);
		if (resp && k == 0)
			assert_int_equal(ret, 0);
		else if (ret != -EBADMSG)
			fail_msg("%s %s: prefix %zu of %zu decoded to %d",
				 resp ? "response" : "request", proto_api_name(api), k, len, ret);
	}
	UNPOISON(b, len);
	free(b);
}

/* Arenas of every size below what the message needs give -ENOMEM; the exact
 * size works. */
static void sweep_arenas(bool resp, uint16_t api, const uint8_t *body, size_t len, size_t used)
{
	union proto_request rq;
	union proto_response rs;
	struct arena a;
	for (size_t cap = 0; cap < used; cap++) {
		arena_init(&a, arena_mem, cap);
		assert_int_equal(decode_body(resp, api, 0, body, len, &a, &rq, &rs), -ENOMEM);
	}
	arena_init(&a, arena_mem, used);
	assert_int_equal(decode_body(resp, api, 0, body, len, &a, &rq, &rs), 0);
}

/* Everything one message must survive; returns the arena bytes its decode
 * took. */
static size_t check_message(bool resp, uint16_t api, const union proto_request *req,
			    union proto_response *rsp)
{
	const uint32_t cid = 0xC0FFEE00u + api;
	struct pw w;
	pw_init_dyn(&w, 16, FRAME_SIZE_HARD_MAX);
	size_t start = resp ? proto_resp_begin(&w, cid, ERR_NONE, NULL)
			    : proto_req_begin(&w, api, 0, cid);
	size_t body_at = w.len;
	if (resp)
		proto_encode_response(&w, api, rsp);
	else
		proto_encode_request(&w, api, req);
	proto_frame_end(&w, start);
	assert_false(w.failed);

	/* The frame as a receiver sees it. */
	uint32_t flen = 0;
	uint32_t min = resp ? FRAME_SIZE_MIN_RESP : FRAME_SIZE_MIN_REQ;
	assert_int_equal(proto_frame_peek(w.buf, w.len, min, FRAME_SIZE_HARD_MAX, &flen), 0);
	assert_int_equal(flen, w.len);
	struct pr body;
	if (resp) {
		struct proto_resp_hdr h;
		assert_int_equal(proto_resp_header(w.buf, flen, &h, &body), 0);
		assert_int_equal(h.correlation_id, cid);
		assert_int_equal(h.err, ERR_NONE);
		assert_int_equal(h.msg.len, 0);
	} else {
		struct proto_req_hdr h;
		assert_int_equal(proto_req_header(w.buf, flen, &h, &body), 0);
		assert_int_equal(h.api, api);
		assert_int_equal(h.version, 0);
		assert_int_equal(h.correlation_id, cid);
	}
	assert_int_equal(pr_left(&body), w.len - body_at);
	assert_ptr_equal(body.p, w.buf + body_at);

	union proto_request rq;
	union proto_response rs;
	struct arena a;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	int ret = resp ? proto_decode_response(api, 0, &body, &a, &rs)
		       : proto_decode_request(api, 0, &body, &a, &rq);
	assert_int_equal(ret, 0);
	assert_int_equal(pr_left(&body), 0);
	if (resp)
		eq_response(api, rsp, &rs);
	else
		eq_request(api, req, &rq);
	size_t used = a.used;

	/* The decoded message encodes to the same bytes: nothing is dropped
	 * or defaulted on the way through. */
	size_t blen = w.len - body_at;
	struct pw w2;
	pw_init_dyn(&w2, 16, FRAME_SIZE_HARD_MAX);
	if (resp)
		proto_encode_response(&w2, api, &rs);
	else
		proto_encode_request(&w2, api, &rq);
	assert_false(w2.failed);
	assert_int_equal(w2.len, blen);
	if (blen > 0)
		assert_memory_equal(w2.buf, w.buf + body_at, blen);
	pw_free(&w2);

	uint8_t *b = malloc(blen + 1);
	assert_non_null(b);
	if (blen > 0)
		memcpy(b, w.buf + body_at, blen);

	sweep_truncations(resp, api, b, blen);

	/* One trailing byte, whatever its value. */
	b[blen] = 0;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	assert_int_equal(decode_body(resp, api, 0, b, blen + 1, &a, &rq, &rs), -EBADMSG);
	b[blen] = 0xff;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	assert_int_equal(decode_body(resp, api, 0, b, blen + 1, &a, &rq, &rs), -EBADMSG);

	sweep_arenas(resp, api, b, blen, used);

	/* No other version exists yet. */
	arena_init(&a, arena_mem, sizeof(arena_mem));
	assert_int_equal(decode_body(resp, api, 1, b, blen, &a, &rq, &rs), -ENOTSUP);
	assert_int_equal(a.used, 0);

	free(b);
	pw_free(&w);
	return used;
}

static size_t check_request(uint16_t api, const union proto_request *req)
{
	return check_message(false, api, req, NULL);
}

static size_t check_response(uint16_t api, union proto_response *rsp)
{
	return check_message(true, api, NULL, rsp);
}

/* ---- requests ---- */

static void test_req_handshake(void **state)
{
	(void)state;
	union proto_request r = { .handshake = { S("ringmq-client/0.1"), 1, 1 } };
	check_request(API_HANDSHAKE, &r);
	r.handshake = (struct proto_handshake_req){ MAXS(), 0, 65535 };
	check_request(API_HANDSHAKE, &r);
	r.handshake = (struct proto_handshake_req){ S(""), 65535, 0 };
	check_request(API_HANDSHAKE, &r);
}

static void test_req_metadata(void **state)
{
	(void)state;
	struct pstr topics[] = { S("orders"), S(""), MAXS(), S("a.b-c_d"), S("orders") };
	union proto_request r = { .metadata = { ARRAY_SIZE(topics), topics } };
	assert_true(check_request(API_METADATA, &r) > 0);
	r.metadata = (struct proto_metadata_req){ 0, NULL };
	assert_int_equal(check_request(API_METADATA, &r), 0);
}

static void test_req_create_topic(void **state)
{
	(void)state;
	struct proto_kv cfg[] = {
		{ S("retention.ms"), S("86400000") },
		{ S("flush"), S("always") },
		{ S(""), S("") },
		{ S("max.message.bytes"), MAXS() },
	};
	union proto_request r = { .create_topic = { S("orders"), 12, ARRAY_SIZE(cfg), cfg } };
	assert_true(check_request(API_CREATE_TOPIC, &r) > 0);
	r.create_topic = (struct proto_create_topic_req){ MAXS(), UINT32_MAX, 0, NULL };
	check_request(API_CREATE_TOPIC, &r);
	r.create_topic = (struct proto_create_topic_req){ S(""), 0, 0, NULL };
	check_request(API_CREATE_TOPIC, &r);
}

static void test_req_delete_topic(void **state)
{
	(void)state;
	union proto_request r = { .delete_topic = { S("orders") } };
	check_request(API_DELETE_TOPIC, &r);
	r.delete_topic.name = S("");
	check_request(API_DELETE_TOPIC, &r);
	r.delete_topic.name = MAXS();
	check_request(API_DELETE_TOPIC, &r);
}

static void test_req_alter_topic(void **state)
{
	(void)state;
	struct proto_kv cfg[] = {
		{ S("flush"), S("interval:1000") },
		{ MAXS(), S("") },
		{ S("segment.bytes"), S("1073741824") },
	};
	union proto_request r = { .alter_topic = { S("orders"), 0, ARRAY_SIZE(cfg), cfg } };
	assert_true(check_request(API_ALTER_TOPIC, &r) > 0);
	r.alter_topic = (struct proto_alter_topic_req){ S("x"), 24, 0, NULL };
	check_request(API_ALTER_TOPIC, &r);
}

static void test_req_empty_bodies(void **state)
{
	(void)state;
	union proto_request r;
	memset(&r, 0, sizeof(r));
	assert_int_equal(check_request(API_LIST_TOPICS, &r), 0);
	assert_int_equal(check_request(API_BROKER_STATUS, &r), 0);
}

static void test_req_describe_topic(void **state)
{
	(void)state;
	union proto_request r = { .describe_topic = { S("orders") } };
	check_request(API_DESCRIBE_TOPIC, &r);
	r.describe_topic.name = MAXS();
	check_request(API_DESCRIBE_TOPIC, &r);
	r.describe_topic.name = S("");
	check_request(API_DESCRIBE_TOPIC, &r);
}

static void test_req_produce(void **state)
{
	(void)state;
	uint32_t blen;
	uint8_t *batch = tu_batch(3, 20, 42, 1700000000000, false, &blen);
	struct proto_produce_part p1[] = {
		{ 0, { batch, blen } },
		{ 3, { NULL, 0 } },
		{ 0xFFFFFFFFu, { blob, sizeof(blob) } },
	};
	struct proto_produce_part p3[] = { { 7, { blob, 1 } } };
	struct proto_produce_topic topics[] = {
		{ S("orders"), ARRAY_SIZE(p1), p1 },
		{ S(""), 0, NULL },
		{ MAXS(), ARRAY_SIZE(p3), p3 },
	};
	union proto_request r = {
		.produce = { PROTO_ACKS_ALL, 30000, ARRAY_SIZE(topics), topics },
	};
	assert_true(check_request(API_PRODUCE, &r) > 0);
	r.produce.acks = PROTO_ACKS_NONE;
	r.produce.timeout_ms = UINT32_MAX;
	check_request(API_PRODUCE, &r);
	/* acks is not the decoder's business: any byte goes through. */
	r.produce.acks = INT8_MIN;
	check_request(API_PRODUCE, &r);
	r.produce = (struct proto_produce_req){ PROTO_ACKS_LEADER, 0, 0, NULL };
	check_request(API_PRODUCE, &r);
	free(batch);
}

static void test_req_fetch(void **state)
{
	(void)state;
	struct proto_fetch_part p1[] = {
		{ 0, 0, 1 << 20 },
		{ 1, UINT64_MAX, 0 },
		{ 2, 123456789012345ull, UINT32_MAX },
	};
	struct proto_fetch_part p2[] = { { 9, 5, 4096 } };
	struct proto_fetch_topic topics[] = {
		{ S("orders"), ARRAY_SIZE(p1), p1 },
		{ MAXS(), ARRAY_SIZE(p2), p2 },
		{ S(""), 0, NULL },
	};
	union proto_request r = { .fetch = { 500, 1, 16 << 20, ARRAY_SIZE(topics), topics,
					     S("inventory"), S("member-1"), 7 } };
	assert_true(check_request(API_FETCH, &r) > 0);
	r.fetch = (struct proto_fetch_req){ 0, 0, 0, 0, NULL, S(""), S(""), 0 };
	check_request(API_FETCH, &r);
}

static void test_req_list_offsets(void **state)
{
	(void)state;
	struct proto_lo_part p1[] = {
		{ 0, PROTO_OFFSET_EARLIEST },
		{ 1, PROTO_OFFSET_LATEST },
		{ 2, 1700000000000 },
		{ 3, INT64_MIN },
		{ 4, INT64_MAX },
	};
	struct proto_lo_topic topics[] = {
		{ S("orders"), ARRAY_SIZE(p1), p1 },
		{ S(""), 0, NULL },
		{ MAXS(), 1, p1 },
	};
	union proto_request r = { .list_offsets = { ARRAY_SIZE(topics), topics } };
	assert_true(check_request(API_LIST_OFFSETS, &r) > 0);
	r.list_offsets = (struct proto_list_offsets_req){ 0, NULL };
	check_request(API_LIST_OFFSETS, &r);
}

/* ---- responses ---- */

static void test_resp_handshake(void **state)
{
	(void)state;
	struct proto_api_range apis[API_COUNT];
	for (uint16_t i = 0; i < API_COUNT; i++)
		apis[i] = (struct proto_api_range){ i, 0, 0 };
	union proto_response r = {
		.handshake = { PROTO_VERSION_MAX, S("ringmq 0.1.0"), API_COUNT, apis },
	};
	assert_true(check_response(API_HANDSHAKE, &r) > 0);
	apis[0] = (struct proto_api_range){ 65535, 65535, 0 };
	r.handshake = (struct proto_handshake_resp){ 65535, MAXS(), 1, apis };
	check_response(API_HANDSHAKE, &r);
	r.handshake = (struct proto_handshake_resp){ 0, S(""), 0, NULL };
	check_response(API_HANDSHAKE, &r);
}

static void test_resp_metadata(void **state)
{
	(void)state;
	struct proto_md_part parts[] = {
		{ 0, 0, 100 },
		{ 1, 50, 50 },
		{ 2, UINT64_MAX - 1, UINT64_MAX },
	};
	struct proto_md_topic topics[] = {
		{ S("orders"), ERR_NONE, S(""), ARRAY_SIZE(parts), parts },
		{ S("missing"), ERR_UNKNOWN_TOPIC, S("unknown topic 'missing'"), 0, NULL },
		{ MAXS(), ERR_NONE, MAXS(), 1, parts },
		{ S(""), ERR_INVALID_TOPIC_NAME, S(""), 0, NULL },
	};
	union proto_response r = { .metadata = { ARRAY_SIZE(topics), topics } };
	assert_true(check_response(API_METADATA, &r) > 0);
	r.metadata = (struct proto_metadata_resp){ 0, NULL };
	check_response(API_METADATA, &r);
}

static void test_resp_list_topics(void **state)
{
	(void)state;
	struct proto_topic_brief topics[] = {
		{ S("a"), 1 },
		{ S("orders"), 12 },
		{ MAXS(), PARTITIONS_MAX },
		{ S(""), 0 },
	};
	union proto_response r = { .list_topics = { ARRAY_SIZE(topics), topics } };
	assert_true(check_response(API_LIST_TOPICS, &r) > 0);
	r.list_topics = (struct proto_list_topics_resp){ 0, NULL };
	check_response(API_LIST_TOPICS, &r);
}

static void test_resp_describe_topic(void **state)
{
	(void)state;
	struct proto_kv cfg[] = {
		{ S("retention.ms"), S("604800000") },
		{ S("flush"), S("always") },
		{ S("empty"), S("") },
		{ S("big"), MAXS() },
	};
	struct proto_part_desc parts[] = {
		{ 0, 0, 1000, 65536, 1 },
		{ 1, 10, 20, 0, 0 },
		{ 2, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT32_MAX },
	};
	union proto_response r = { .describe_topic = {
		S("orders"), 3, ARRAY_SIZE(cfg), cfg, ARRAY_SIZE(parts), parts,
	} };
	assert_true(check_response(API_DESCRIBE_TOPIC, &r) > 0);
	r.describe_topic = (struct proto_describe_topic_resp){ MAXS(), 0, 0, NULL, 0, NULL };
	check_response(API_DESCRIBE_TOPIC, &r);
	r.describe_topic = (struct proto_describe_topic_resp){ S("x"), 2, 0, NULL, 2, parts };
	check_response(API_DESCRIBE_TOPIC, &r);
}

static void test_resp_header_only(void **state)
{
	(void)state;
	union proto_response r;
	memset(&r, 0, sizeof(r));
	assert_int_equal(check_response(API_CREATE_TOPIC, &r), 0);
	assert_int_equal(check_response(API_DELETE_TOPIC, &r), 0);
	assert_int_equal(check_response(API_ALTER_TOPIC, &r), 0);
}

static void test_resp_produce(void **state)
{
	(void)state;
	struct proto_produce_resp_part p1[] = {
		{ 0, ERR_NONE, S(""), 1000, 0 },
		{ 1, ERR_CORRUPT_BATCH, S("batch 2: checksum mismatch"), 0, 7 },
		{ 2, ERR_UNKNOWN_PARTITION, MAXS(), UINT64_MAX, UINT64_MAX },
	};
	struct proto_produce_resp_topic topics[] = {
		{ S("orders"), ARRAY_SIZE(p1), p1 },
		{ S("nope"), 1, p1 + 2 },
		{ S(""), 0, NULL },
	};
	union proto_response r = { .produce = { ARRAY_SIZE(topics), topics } };
	assert_true(check_response(API_PRODUCE, &r) > 0);
	r.produce = (struct proto_produce_resp){ 0, NULL };
	check_response(API_PRODUCE, &r);
}

static void test_resp_fetch(void **state)
{
	(void)state;
	uint32_t blen;
	uint8_t *batch = tu_batch(5, 100, 7, 1, true, &blen);
	struct proto_fetch_resp_part p1[] = {
		{ 0, ERR_NONE, S(""), 0, 5, { batch, blen }, 0 },
		{ 1, ERR_OFFSET_OUT_OF_RANGE, S("offset 5 is out of range [10, 20)"), 10, 20,
		  { blob, 0 }, 0 },
		{ 2, ERR_NONE, S(""), 0, 0, { blob, sizeof(blob) }, 0 },
	};
	struct proto_fetch_resp_part p2[] = {
		{ 3, ERR_UNKNOWN_TOPIC, MAXS(), 0, 0, { blob, 0 }, 0 },
	};
	struct proto_fetch_resp_topic topics[] = {
		{ S("orders"), ARRAY_SIZE(p1), p1 },
		{ MAXS(), ARRAY_SIZE(p2), p2 },
		{ S(""), 0, NULL },
	};
	union proto_response r = { .fetch = { ARRAY_SIZE(topics), topics } };
	assert_true(check_response(API_FETCH, &r) > 0);
	r.fetch = (struct proto_fetch_resp){ 0, NULL };
	check_response(API_FETCH, &r);
	free(batch);
}

static void test_resp_list_offsets(void **state)
{
	(void)state;
	struct proto_lo_resp_part p1[] = {
		{ 0, ERR_NONE, S(""), 0 },
		{ 1, ERR_NONE, S(""), UINT64_MAX },
		{ 2, ERR_UNKNOWN_PARTITION, S("partition 2 of 2"), 0 },
	};
	struct proto_lo_resp_topic topics[] = {
		{ S("orders"), ARRAY_SIZE(p1), p1 },
		{ MAXS(), 1, p1 + 2 },
		{ S(""), 0, NULL },
	};
	union proto_response r = { .list_offsets = { ARRAY_SIZE(topics), topics } };
	assert_true(check_response(API_LIST_OFFSETS, &r) > 0);
	r.list_offsets = (struct proto_list_offsets_resp){ 0, NULL };
	check_response(API_LIST_OFFSETS, &r);
}

static void test_resp_broker_status(void **state)
{
	(void)state;
	union proto_response r = {
		.broker_status = { S("0.1.0"), 123456, 3, 36, 7, 1ull << 40, S("/var/lib/ringmq"),
				   1000000, 1ull << 33, 1ull << 34 },
	};
	assert_int_equal(check_response(API_BROKER_STATUS, &r), 0);
	r.broker_status = (struct proto_broker_status_resp){
		MAXS(), UINT64_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT64_MAX, MAXS(),
		UINT64_MAX, UINT64_MAX, UINT64_MAX,
	};
	check_response(API_BROKER_STATUS, &r);
}

/* All-zero messages (no elements, empty strings) are valid for every API. */
/* Consumer-group messages: a round trip with content, every truncation,
 * trailing bytes and arena sizes (check_message); the re-encoded bytes must
 * equal the original, so no field is dropped. */
static void test_group_requests(void **state)
{
	(void)state;
	struct pstr topics[] = { S("orders"), S(""), MAXS() };
	union proto_request r = { .join_group = { S("inventory"), S(""), S("svc-1"), 10000,
						  ARRAY_SIZE(topics), topics } };
	assert_true(check_request(API_JOIN_GROUP, &r) > 0);
	struct proto_tp owned[] = { { S("orders"), 0 }, { S("orders"), 5 }, { MAXS(), 9 } };
	r.heartbeat = (struct proto_heartbeat_req){ S("inventory"), S("m-1"), 42,
						    ARRAY_SIZE(owned), owned };
	assert_true(check_request(API_HEARTBEAT, &r) > 0);
	r.leave_group = (struct proto_leave_group_req){ S("inventory"), S("m-1") };
	check_request(API_LEAVE_GROUP, &r);
	struct proto_commit_part cp[] = { { S("orders"), 1, 1042 }, { S("x"), 0, UINT64_MAX } };
	r.commit_offsets = (struct proto_commit_offsets_req){ S("inventory"), S("m-1"), 3,
							      ARRAY_SIZE(cp), cp };
	assert_true(check_request(API_COMMIT_OFFSETS, &r) > 0);
	r.fetch_offsets = (struct proto_fetch_offsets_req){ S("inventory"), ARRAY_SIZE(owned),
							    owned };
	assert_true(check_request(API_FETCH_OFFSETS, &r) > 0);
	r.describe_group = (struct proto_describe_group_req){ S("inventory") };
	check_request(API_DESCRIBE_GROUP, &r);
	r.delete_group = (struct proto_delete_group_req){ S("inventory") };
	check_request(API_DELETE_GROUP, &r);
	r.reset_offsets = (struct proto_reset_offsets_req){ S("inventory"), S("orders"),
							    PROTO_RESET_TIME, -5 };
	check_request(API_RESET_OFFSETS, &r);
	memset(&r, 0, sizeof(r));
	check_request(API_LIST_GROUPS, &r);
}

static void test_group_responses(void **state)
{
	(void)state;
	union proto_response r = { .join_group = { S("m-1"), 7, 1000 } };
	check_response(API_JOIN_GROUP, &r);
	struct proto_tp tps[] = { { S("orders"), 2 }, { S(""), 0 } };
	r.heartbeat = (struct proto_heartbeat_resp){ 8, 100, ARRAY_SIZE(tps), tps };
	assert_true(check_response(API_HEARTBEAT, &r) > 0);
	struct proto_tp_result res[] = { { S("orders"), 1, ERR_NONE, S("") },
					 { S("orders"), 2, ERR_NOT_OWNER, S("not yours") } };
	r.commit_offsets = (struct proto_commit_offsets_resp){ ARRAY_SIZE(res), res };
	assert_true(check_response(API_COMMIT_OFFSETS, &r) > 0);
	struct proto_committed cm[] = { { S("orders"), 0, -1 }, { S("orders"), 1, 99 } };
	r.fetch_offsets = (struct proto_fetch_offsets_resp){ ARRAY_SIZE(cm), cm };
	assert_true(check_response(API_FETCH_OFFSETS, &r) > 0);
	r.reset_offsets = (struct proto_reset_offsets_resp){ ARRAY_SIZE(cm), cm };
	assert_true(check_response(API_RESET_OFFSETS, &r) > 0);
	struct proto_group_brief gb[] = { { S("inventory"), S("stable"), 3 },
					  { S("notification"), S("empty"), 0 } };
	r.list_groups = (struct proto_list_groups_resp){ ARRAY_SIZE(gb), gb };
	assert_true(check_response(API_LIST_GROUPS, &r) > 0);
	struct proto_group_member gm[] = { { S("m-1"), S("svc"), 4, 120, ARRAY_SIZE(tps), tps },
					   { S("m-2"), S(""), 0, 0, 0, NULL } };
	struct proto_group_part gp[] = { { S("orders"), 0, 17, 3, 20, S("m-1") },
					 { S("orders"), 1, -1, 0, 0, S("") } };
	r.describe_group = (struct proto_describe_group_resp){ S("inventory"), S("rebalancing"),
							       5, ARRAY_SIZE(gm), gm,
							       ARRAY_SIZE(gp), gp };
	assert_true(check_response(API_DESCRIBE_GROUP, &r) > 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(check_response(API_LEAVE_GROUP, &r), 0);
	assert_int_equal(check_response(API_DELETE_GROUP, &r), 0);
}

static void test_zero_messages(void **state)
{
	(void)state;
	for (uint16_t api = 0; api < API_COUNT; api++) {
		union proto_request rq;
		union proto_response rs;
		memset(&rq, 0, sizeof(rq));
		memset(&rs, 0, sizeof(rs));
		assert_int_equal(check_request(api, &rq), 0);
		assert_int_equal(check_response(api, &rs), 0);
	}
}

/* ---- hostile counts, arenas, unknown APIs ---- */

/* A count far beyond the bytes that follow fails as malformed, before the
 * arena is touched, whatever the arena's size. */
static void test_huge_count(void **state)
{
	(void)state;
	struct arena a;
	union proto_request rq;
	union proto_response rs;
	uint8_t body[6] = { 0xff, 0xff, 0xff, 0xff, 0, 0 };
	for (uint16_t api = 0; api < API_COUNT; api++) {
		arena_init(&a, arena_mem, sizeof(arena_mem));
		int ret = decode_body(false, api, 0, body, sizeof(body), &a, &rq, &rs);
		assert_int_equal(ret, -EBADMSG);
		assert_int_equal(a.used, 0);
		arena_init(&a, arena_mem, sizeof(arena_mem));
		ret = decode_body(true, api, 0, body, sizeof(body), &a, &rq, &rs);
		assert_int_equal(ret, -EBADMSG);
	}

	/* Nested: a produce with one topic whose partition count lies. */
	struct pw w;
	uint8_t buf[64];
	pw_init_fixed(&w, buf, sizeof(buf));
	pw_u8(&w, 1);
	pw_u32(&w, 1000);
	pw_u32(&w, 1);
	pw_str(&w, S("t"));
	pw_u32(&w, 0x7fffffff);
	pw_u32(&w, 0);
	pw_u32(&w, 0);
	assert_false(w.failed);
	arena_init(&a, arena_mem, sizeof(arena_mem));
	assert_int_equal(decode_body(false, API_PRODUCE, 0, buf, w.len, &a, &rq, &rs), -EBADMSG);
	/* Only the one topic was allocated, not the claimed partitions. */
	assert_true(a.used <= sizeof(struct proto_produce_topic));

	/* A count exactly at the bound is fine: 3 empty strings in 6 bytes. */
	uint8_t ok[10] = { 3, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
	arena_init(&a, arena_mem, sizeof(arena_mem));
	assert_int_equal(decode_body(false, API_METADATA, 0, ok, sizeof(ok), &a, &rq, &rs), 0);
	assert_int_equal(rq.metadata.ntopics, 3);
	/* ... and one more is not. */
	ok[0] = 4;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	assert_int_equal(decode_body(false, API_METADATA, 0, ok, sizeof(ok), &a, &rq, &rs),
			 -EBADMSG);
	assert_int_equal(a.used, 0);
}

static void test_arena_too_small(void **state)
{
	(void)state;
	/* 1000 empty topic names: 4 + 2000 bytes of body, 16000 of arena. */
	uint8_t body[4 + 2000];
	memset(body, 0, sizeof(body));
	le32_store(body, 1000);
	struct arena a;
	union proto_request rq;
	uint8_t small[256];
	arena_init(&a, small, sizeof(small));
	assert_int_equal(decode_body(false, API_METADATA, 0, body, sizeof(body), &a, &rq, NULL),
			 -ENOMEM);
	/* No arena at all is the same as a full one. */
	assert_int_equal(decode_body(false, API_METADATA, 0, body, sizeof(body), NULL, &rq, NULL),
			 -ENOMEM);
	arena_init(&a, arena_mem, sizeof(arena_mem));
	assert_int_equal(decode_body(false, API_METADATA, 0, body, sizeof(body), &a, &rq, NULL), 0);
	assert_int_equal(rq.metadata.ntopics, 1000);
	assert_int_equal(a.used, 1000 * sizeof(struct pstr));
}

static void test_unknown_api_version(void **state)
{
	(void)state;
	struct arena a;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	union proto_request rq;
	union proto_response rs;
	uint16_t bad_apis[] = { API_COUNT, API_COUNT + 1, 0x7fff, 0xffff };
	for (size_t i = 0; i < ARRAY_SIZE(bad_apis); i++) {
		assert_false(proto_api_supported(bad_apis[i], 0));
		uint16_t api = bad_apis[i];
		assert_int_equal(decode_body(false, api, 0, NULL, 0, &a, &rq, &rs), -ENOTSUP);
		assert_int_equal(decode_body(true, api, 0, NULL, 0, &a, &rq, &rs), -ENOTSUP);
		assert_string_equal(proto_api_name(bad_apis[i]), "UNKNOWN");
		struct pw w;
		pw_init_dyn(&w, 16, 1024);
		memset(&rq, 0, sizeof(rq));
		memset(&rs, 0, sizeof(rs));
		proto_encode_request(&w, bad_apis[i], &rq);
		assert_true(w.failed);
		pw_free(&w);
		pw_init_dyn(&w, 16, 1024);
		proto_encode_response(&w, bad_apis[i], &rs);
		assert_true(w.failed);
		pw_free(&w);
	}
	/* A reader that already failed is refused, not decoded from. */
	struct pr broken;
	pr_init(&broken, NULL, 1);
	assert_int_equal(proto_decode_request(API_LIST_TOPICS, 0, &broken, &a, &rq), -EBADMSG);
	assert_int_equal(proto_decode_response(API_LIST_TOPICS, 0, &broken, &a, &rs), -EBADMSG);
	for (uint16_t api = 0; api < API_COUNT; api++) {
		assert_true(proto_api_supported(api, 0));
		assert_false(proto_api_supported(api, 1));
		assert_false(proto_api_supported(api, 0xffff));
		assert_int_equal(decode_body(false, api, 1, NULL, 0, &a, &rq, &rs), -ENOTSUP);
		assert_int_equal(decode_body(true, api, 0xffff, NULL, 0, &a, &rq, &rs), -ENOTSUP);
	}
	assert_int_equal(a.used, 0);
}

/* ---- writer and reader ---- */

static void test_pw_fixed_overflow(void **state)
{
	(void)state;
	uint8_t buf[16];
	memset(buf, 0xaa, sizeof(buf));
	struct pw w;
	pw_init_fixed(&w, buf, 10);
	pw_u64(&w, 0x0102030405060708ull);
	assert_false(w.failed);
	assert_int_equal(w.len, 8);
	pw_u32(&w, 1);
	assert_true(w.failed);
	assert_int_equal(w.len, 8);
	/* Failure is sticky: later writes that would fit are ignored too. */
	pw_u8(&w, 0x55);
	assert_int_equal(w.len, 8);
	assert_null(pw_reserve(&w, 0));
	assert_int_equal(buf[8], 0xaa);
	assert_int_equal(buf[10], 0xaa);
	pw_free(&w); /* a no-op for a fixed writer */

	/* Exactly full is not a failure. */
	pw_init_fixed(&w, buf, 10);
	pw_u64(&w, 1);
	pw_u16(&w, 2);
	assert_false(w.failed);
	assert_int_equal(w.len, 10);
	assert_non_null(pw_reserve(&w, 0));
	pw_u8(&w, 3);
	assert_true(w.failed);

	/* A writer over nothing fails on the first byte. */
	pw_init_fixed(&w, NULL, 0);
	assert_non_null(pw_reserve(&w, 0));
	assert_false(w.failed);
	pw_u8(&w, 1);
	assert_true(w.failed);
}

static void test_pw_dyn_growth(void **state)
{
	(void)state;
	struct pw w;
	pw_init_dyn(&w, 4, 64);
	assert_false(w.failed);
	assert_int_equal(w.cap, 4);
	size_t caps[] = { 4, 8, 16, 32, 64 };
	size_t next = 0;
	for (int i = 0; i < 64; i++) {
		pw_u8(&w, (uint8_t)i);
		assert_false(w.failed);
		while (next < ARRAY_SIZE(caps) && caps[next] < w.len)
			next++;
		assert_int_equal(w.cap, caps[next]);
	}
	for (int i = 0; i < 64; i++)
		assert_int_equal(w.buf[i], i);
	pw_u8(&w, 0);
	assert_true(w.failed);
	assert_int_equal(w.len, 64);
	pw_free(&w);

	/* Growth stops at max, not at the next power of two. */
	pw_init_dyn(&w, 16, 100);
	assert_non_null(pw_reserve(&w, 90));
	assert_int_equal(w.cap, 100);
	assert_non_null(pw_reserve(&w, 10));
	assert_null(pw_reserve(&w, 1));
	pw_free(&w);

	/* An initial size above max is cut to max; a big jump grows at once. */
	pw_init_dyn(&w, 1000, 50);
	assert_int_equal(w.cap, 50);
	pw_free(&w);
	pw_init_dyn(&w, 8, 1 << 20);
	assert_non_null(pw_reserve(&w, 100000));
	assert_int_equal(w.cap, 131072);
	assert_null(pw_reserve(&w, SIZE_MAX));
	assert_true(w.failed);
	pw_free(&w);
	assert_null(w.buf);
}

static void test_pw_encodings(void **state)
{
	(void)state;
	uint8_t buf[64];
	struct pw w;
	pw_init_fixed(&w, buf, sizeof(buf));
	pw_u8(&w, 0x81);
	pw_u16(&w, 0x1234);
	pw_u32(&w, 0xA1B2C3D4);
	pw_i64(&w, -2);
	pw_str(&w, S("hi"));
	pw_bytes(&w, "xyz", 3);
	pw_raw(&w, "!", 1);
	assert_false(w.failed);
	static const uint8_t want[] = {
		0x81, 0x34, 0x12, 0xD4, 0xC3, 0xB2, 0xA1, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
		0xFF, 0xFF, 0x02, 0x00, 'h', 'i', 0x03, 0x00, 0x00, 0x00, 'x', 'y', 'z', '!',
	};
	assert_int_equal(w.len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));

	pw_patch_u32(&w, 1, 0xDEADBEEF);
	assert_int_equal(le32_load(buf + 1), 0xDEADBEEF);
	pw_patch_u32(&w, w.len - 4, 7);
	assert_false(w.failed);
	pw_patch_u32(&w, w.len - 3, 7);
	assert_true(w.failed);

	struct pr r;
	pr_init(&r, want, sizeof(want));
	assert_int_equal(pr_u8(&r), 0x81);
	assert_int_equal(pr_u16(&r), 0x1234);
	assert_int_equal(pr_u32(&r), 0xA1B2C3D4);
	assert_true(pr_i64(&r) == -2);
	struct pstr s = pr_str(&r);
	assert_int_equal(s.len, 2);
	assert_memory_equal(s.p, "hi", 2);
	struct pbytes b = pr_bytes(&r);
	assert_int_equal(b.len, 3);
	assert_memory_equal(b.p, "xyz", 3);
	assert_int_equal(pr_left(&r), 1);
	assert_false(r.failed);
	/* A short read fails and returns zero, and the failure sticks even
	 * for reads that would fit. */
	assert_int_equal(pr_u16(&r), 0);
	assert_true(r.failed);
	assert_int_equal(pr_u8(&r), 0);
	assert_int_equal(pr_str(&r).len, 0);
	assert_null(pr_bytes(&r).p);

	/* A NULL reader is empty; NULL with a length is broken. */
	pr_init(&r, NULL, 0);
	assert_false(r.failed);
	assert_int_equal(pr_left(&r), 0);
	pr_init(&r, NULL, 5);
	assert_true(r.failed);
}

static void test_pw_str_limits(void **state)
{
	(void)state;
	char *s = malloc(65537);
	assert_non_null(s);
	memset(s, 'q', 65536);
	s[65536] = '\0';
	struct pw w;
	pw_init_dyn(&w, 16, 1 << 20);
	struct pstr p = pstr_c(s);
	assert_int_equal(p.len, 65536);
	pw_str(&w, p);
	assert_true(w.failed);
	assert_int_equal(w.len, 0);
	pw_free(&w);

	s[65535] = '\0';
	pw_init_dyn(&w, 16, 1 << 20);
	pw_str(&w, pstr_c(s));
	assert_false(w.failed);
	assert_int_equal(w.len, 2 + 65535);
	assert_int_equal(le16_load(w.buf), 65535);
	pw_free(&w);

	/* A response message too long for the wire fails the frame. */
	s[65535] = 'q';
	pw_init_dyn(&w, 16, 1 << 20);
	size_t start = proto_resp_begin(&w, 1, ERR_UNKNOWN, s);
	proto_frame_end(&w, start);
	assert_true(w.failed);
	pw_free(&w);
	free(s);
}

static void test_pr_count(void **state)
{
	(void)state;
	uint8_t buf[4 + 12];
	memset(buf, 0, sizeof(buf));
	struct pr r;

	le32_store(buf, 3);
	pr_init(&r, buf, sizeof(buf));
	assert_int_equal(pr_count(&r, 4), 3);
	assert_false(r.failed);
	pr_init(&r, buf, sizeof(buf) - 1);
	assert_int_equal(pr_count(&r, 4), 0);
	assert_true(r.failed);

	le32_store(buf, UINT32_MAX);
	pr_init(&r, buf, sizeof(buf));
	assert_int_equal(pr_count(&r, 1), 0);
	assert_true(r.failed);
	/* Elements of no minimum size are not bounded here. */
	pr_init(&r, buf, sizeof(buf));
	assert_int_equal(pr_count(&r, 0), UINT32_MAX);
	assert_false(r.failed);
	pr_init(&r, buf, 3);
	assert_int_equal(pr_count(&r, 1), 0);
	assert_true(r.failed);
}

/* ---- frames ---- */

static void test_frame_peek(void **state)
{
	(void)state;
	uint8_t buf[64];
	memset(buf, 0x5a, sizeof(buf));
	uint32_t len = 0xdead;
	const uint32_t max = 1024;

	/* A partial size field is never judged, even if it starts huge. */
	le32_store(buf, UINT32_MAX);
	for (size_t n = 0; n < 4; n++)
		assert_int_equal(proto_frame_peek(buf, n, FRAME_SIZE_MIN_REQ, max, &len), -EAGAIN);
	assert_int_equal(proto_frame_peek(buf, 4, FRAME_SIZE_MIN_REQ, max, &len), -EMSGSIZE);

	/* 4 GiB - 1: no wrap around when the size field is added. */
	le32_store(buf, UINT32_MAX - 3);
	assert_int_equal(proto_frame_peek(buf, 8, FRAME_SIZE_MIN_REQ, UINT32_MAX, &len),
			 -EMSGSIZE);
	/* The hard maximum caps whatever the caller allows. */
	le32_store(buf, FRAME_SIZE_HARD_MAX - 3);
	assert_int_equal(proto_frame_peek(buf, 8, FRAME_SIZE_MIN_REQ, UINT32_MAX, &len),
			 -EMSGSIZE);
	le32_store(buf, FRAME_SIZE_HARD_MAX - 4);
	assert_int_equal(proto_frame_peek(buf, 8, FRAME_SIZE_MIN_REQ, UINT32_MAX, &len), -EAGAIN);

	/* Below the minimum is malformed, with or without the rest. */
	le32_store(buf, FRAME_SIZE_MIN_REQ - 1);
	assert_int_equal(proto_frame_peek(buf, 4, FRAME_SIZE_MIN_REQ, max, &len), -EBADMSG);
	assert_int_equal(proto_frame_peek(buf, 64, FRAME_SIZE_MIN_REQ, max, &len), -EBADMSG);
	le32_store(buf, 0);
	assert_int_equal(proto_frame_peek(buf, 64, FRAME_SIZE_MIN_RESP, max, &len), -EBADMSG);

	/* At the limit exactly, and one past. */
	le32_store(buf, max - 4);
	assert_int_equal(proto_frame_peek(buf, 64, FRAME_SIZE_MIN_REQ, max, &len), -EAGAIN);
	le32_store(buf, max - 3);
	assert_int_equal(proto_frame_peek(buf, 64, FRAME_SIZE_MIN_REQ, max, &len), -EMSGSIZE);

	/* An exact frame, one byte short, and with more behind it. */
	le32_store(buf, 20);
	assert_int_equal(proto_frame_peek(buf, 23, FRAME_SIZE_MIN_REQ, max, &len), -EAGAIN);
	assert_int_equal(len, 0xdead);
	assert_int_equal(proto_frame_peek(buf, 24, FRAME_SIZE_MIN_REQ, max, &len), 0);
	assert_int_equal(len, 24);
	assert_int_equal(proto_frame_peek(buf, 64, FRAME_SIZE_MIN_REQ, max, &len), 0);
	assert_int_equal(len, 24);
	le32_store(buf, 8);
	assert_int_equal(proto_frame_peek(buf, 12, FRAME_SIZE_MIN_REQ, max, &len), 0);
	assert_int_equal(len, 12);
}

static void test_frame_back_to_back(void **state)
{
	(void)state;
	struct pw w;
	pw_init_dyn(&w, 16, 4096);
	size_t s1 = proto_req_begin(&w, API_LIST_TOPICS, 0, 1);
	proto_frame_end(&w, s1);
	union proto_request r = { .describe_topic = { S("orders") } };
	size_t s2 = proto_req_begin(&w, API_DESCRIBE_TOPIC, 0, 2);
	proto_encode_request(&w, API_DESCRIBE_TOPIC, &r);
	proto_frame_end(&w, s2);
	assert_false(w.failed);
	assert_int_equal(s2, 12);
	assert_int_equal(w.len, 12 + 12 + 8);

	uint32_t len;
	struct proto_req_hdr h;
	struct pr body;
	assert_int_equal(proto_frame_peek(w.buf, w.len, FRAME_SIZE_MIN_REQ, 4096, &len), 0);
	assert_int_equal(len, 12);
	assert_int_equal(proto_req_header(w.buf, len, &h, &body), 0);
	assert_int_equal(h.api, API_LIST_TOPICS);
	assert_int_equal(h.correlation_id, 1);
	assert_int_equal(pr_left(&body), 0);

	const uint8_t *p = w.buf + len;
	size_t left = w.len - len;
	for (size_t n = 0; n < left; n++)
		assert_int_equal(proto_frame_peek(p, n, FRAME_SIZE_MIN_REQ, 4096, &len), -EAGAIN);
	assert_int_equal(proto_frame_peek(p, left, FRAME_SIZE_MIN_REQ, 4096, &len), 0);
	assert_int_equal(len, left);
	assert_int_equal(proto_req_header(p, len, &h, &body), 0);
	assert_int_equal(h.api, API_DESCRIBE_TOPIC);
	assert_int_equal(h.correlation_id, 2);
	struct arena a;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	union proto_request out;
	assert_int_equal(proto_decode_request(h.api, h.version, &body, &a, &out), 0);
	assert_true(pstr_eq(out.describe_topic.name, "orders"));
	pw_free(&w);
}

static void test_req_header(void **state)
{
	(void)state;
	uint8_t buf[32];
	struct pw w;
	pw_init_fixed(&w, buf, sizeof(buf));
	size_t start = proto_req_begin(&w, 0xBEEF, 0x1234, 0xDEADBEEF);
	pw_raw(&w, "body", 4);
	proto_frame_end(&w, start);
	assert_false(w.failed);
	static const uint8_t want[] = {
		12, 0, 0, 0, 0xEF, 0xBE, 0x34, 0x12, 0xEF, 0xBE, 0xAD, 0xDE, 'b', 'o', 'd', 'y',
	};
	assert_int_equal(w.len, sizeof(want));
	assert_memory_equal(buf, want, sizeof(want));

	struct proto_req_hdr h;
	struct pr body;
	assert_int_equal(proto_req_header(buf, 16, &h, &body), 0);
	assert_int_equal(h.api, 0xBEEF);
	assert_int_equal(h.version, 0x1234);
	assert_int_equal(h.correlation_id, 0xDEADBEEF);
	assert_int_equal(pr_left(&body), 4);
	assert_memory_equal(body.p, "body", 4);

	/* The length given must be the one the size field claims. */
	assert_int_equal(proto_req_header(buf, 15, &h, &body), -EBADMSG);
	assert_int_equal(proto_req_header(buf, 17, &h, &body), -EBADMSG);
	/* Too short for a header at all. */
	le32_store(buf, 7);
	assert_int_equal(proto_req_header(buf, 11, &h, &body), -EBADMSG);
	le32_store(buf, 8);
	assert_int_equal(proto_req_header(buf, 12, &h, &body), 0);
	assert_int_equal(pr_left(&body), 0);

	/* A frame in a writer that already holds another one. */
	pw_init_fixed(&w, buf, sizeof(buf));
	pw_raw(&w, "xx", 2);
	start = proto_req_begin(&w, 1, 0, 9);
	proto_frame_end(&w, start);
	assert_int_equal(start, 2);
	assert_int_equal(le32_load(buf + 2), 8);
	/* A frame start past the end is a caller bug, caught. */
	proto_frame_end(&w, w.len - 3);
	assert_true(w.failed);
}

static void test_resp_header(void **state)
{
	(void)state;
	const char *msg = "offset 5 is out of range [10, 20)";
	struct pw w;
	pw_init_dyn(&w, 16, 4096);
	size_t start = proto_resp_begin(&w, 77, ERR_OFFSET_OUT_OF_RANGE, msg);
	proto_frame_end(&w, start);
	assert_false(w.failed);
	assert_int_equal(w.len, 4 + 4 + 2 + 2 + strlen(msg));
	assert_int_equal(le32_load(w.buf), w.len - 4);

	struct proto_resp_hdr h;
	struct pr body;
	assert_int_equal(proto_resp_header(w.buf, (uint32_t)w.len, &h, &body), 0);
	assert_int_equal(h.correlation_id, 77);
	assert_int_equal(h.err, ERR_OFFSET_OUT_OF_RANGE);
	assert_true(pstr_eq(h.msg, msg));
	assert_int_equal(pr_left(&body), 0);

	/* Every shorter frame (size field adjusted) is malformed. */
	uint8_t *b = malloc(w.len);
	assert_non_null(b);
	for (uint32_t n = 0; n < w.len; n++) {
		memcpy(b, w.buf, n);
		if (n >= 4)
			le32_store(b, n - 4);
		assert_int_equal(proto_resp_header(b, n, &h, &body), -EBADMSG);
	}
	free(b);
	pw_free(&w);

	/* No message. */
	uint8_t buf[12];
	pw_init_fixed(&w, buf, sizeof(buf));
	start = proto_resp_begin(&w, 5, ERR_NONE, NULL);
	proto_frame_end(&w, start);
	assert_false(w.failed);
	assert_int_equal(w.len, 12);
	assert_int_equal(proto_resp_header(buf, 12, &h, &body), 0);
	assert_int_equal(h.correlation_id, 5);
	assert_int_equal(h.err, 0);
	assert_int_equal(h.msg.len, 0);
	assert_int_equal(proto_resp_header(buf, 11, &h, &body), -EBADMSG);
	/* The length given must be the one the size field claims. */
	le32_store(buf, 9);
	assert_int_equal(proto_resp_header(buf, 12, &h, &body), -EBADMSG);
}

/* An error response carries only its header; its empty body decodes, for
 * every API, to an empty response. */
static void test_error_response_no_body(void **state)
{
	(void)state;
	for (uint16_t api = 0; api < API_COUNT; api++) {
		struct pw w;
		pw_init_dyn(&w, 16, 4096);
		size_t start = proto_resp_begin(&w, api, ERR_UNKNOWN_TOPIC, "unknown topic 'x'");
		proto_frame_end(&w, start);
		assert_false(w.failed);
		uint32_t len;
		int ret = proto_frame_peek(w.buf, w.len, FRAME_SIZE_MIN_RESP, 4096, &len);
		assert_int_equal(ret, 0);
		struct proto_resp_hdr h;
		struct pr body;
		assert_int_equal(proto_resp_header(w.buf, len, &h, &body), 0);
		assert_int_equal(h.err, ERR_UNKNOWN_TOPIC);
		assert_true(pstr_eq(h.msg, "unknown topic 'x'"));
		struct arena a;
		arena_init(&a, arena_mem, sizeof(arena_mem));
		union proto_response rs, zero;
		memset(&rs, 0xa5, sizeof(rs));
		memset(&zero, 0, sizeof(zero));
		assert_int_equal(proto_decode_response(api, 0, &body, &a, &rs), 0);
		assert_memory_equal(&rs, &zero, sizeof(rs));
		assert_int_equal(a.used, 0);
		pw_free(&w);
	}
}

/* Fetch records can be reserved and filled in place after encoding. */
static void test_fetch_records_at(void **state)
{
	(void)state;
	uint8_t small[5] = { 1, 2, 3, 4, 5 };
	struct proto_fetch_resp_part parts[] = {
		{ 0, ERR_NONE, S(""), 0, 100, { NULL, 100 }, 0 },
		{ 1, ERR_NONE, S(""), 0, 0, { NULL, 0 }, 0 },
		{ 2, ERR_NONE, S("m"), 0, 5, { small, 5 }, 0 },
		{ 3, ERR_NONE, S(""), 0, 7000, { NULL, 7000 }, 0 },
	};
	struct proto_fetch_resp_topic topics[] = { { S("orders"), ARRAY_SIZE(parts), parts } };
	union proto_response r = { .fetch = { 1, topics } };

	struct pw w;
	/* Small to start with, so the reservations move the buffer. */
	pw_init_dyn(&w, 8, 1 << 20);
	size_t start = proto_resp_begin(&w, 3, ERR_NONE, NULL);
	size_t body_at = w.len;
	proto_encode_response(&w, API_FETCH, &r);
	assert_false(w.failed);
	for (size_t i = 0; i < ARRAY_SIZE(parts); i++) {
		assert_true(parts[i].records_at >= body_at + 4);
		assert_true(parts[i].records_at + parts[i].records.len <= w.len);
		assert_int_equal(le32_load(w.buf + parts[i].records_at - 4), parts[i].records.len);
		if (parts[i].records.p == NULL)
			memset(w.buf + parts[i].records_at, 0x40 + (int)i, parts[i].records.len);
	}
	assert_int_equal(parts[3].records_at + 7000, w.len);
	proto_frame_end(&w, start);
	assert_false(w.failed);

	struct proto_resp_hdr h;
	struct pr body;
	assert_int_equal(proto_resp_header(w.buf, (uint32_t)w.len, &h, &body), 0);
	struct arena a;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	union proto_response out;
	assert_int_equal(proto_decode_response(API_FETCH, 0, &body, &a, &out), 0);
	assert_int_equal(out.fetch.ntopics, 1);
	assert_int_equal(out.fetch.topics[0].nparts, ARRAY_SIZE(parts));
	for (size_t i = 0; i < ARRAY_SIZE(parts); i++) {
		const struct proto_fetch_resp_part *p = &out.fetch.topics[0].parts[i];
		assert_int_equal(p->records.len, parts[i].records.len);
		assert_ptr_equal(p->records.p, w.buf + parts[i].records_at);
		assert_int_equal(p->records_at, 0);
		for (uint32_t k = 0; k < p->records.len; k++) {
			uint8_t want = parts[i].records.p ? parts[i].records.p[k]
							  : (uint8_t)(0x40 + i);
			if (p->records.p[k] != want)
				fail_msg("part %zu byte %u: %u != %u", i, k, p->records.p[k], want);
		}
	}
	pw_free(&w);

	/* A reservation that does not fit fails the writer. */
	uint8_t buf[128];
	pw_init_fixed(&w, buf, sizeof(buf));
	proto_encode_response(&w, API_FETCH, &r);
	assert_true(w.failed);
}

static void test_frame_too_large(void **state)
{
	(void)state;
	struct pw w;
	pw_init_dyn(&w, 16, (size_t)FRAME_SIZE_HARD_MAX + 64);
	size_t start = proto_req_begin(&w, API_PRODUCE, 0, 1);
	assert_non_null(pw_reserve(&w, FRAME_SIZE_HARD_MAX - 12));
	proto_frame_end(&w, start);
	assert_false(w.failed);
	assert_int_equal(w.len, FRAME_SIZE_HARD_MAX);
	pw_free(&w);

	pw_init_dyn(&w, 16, (size_t)FRAME_SIZE_HARD_MAX + 64);
	start = proto_req_begin(&w, API_PRODUCE, 0, 1);
	assert_non_null(pw_reserve(&w, FRAME_SIZE_HARD_MAX - 11));
	proto_frame_end(&w, start);
	assert_true(w.failed);
	pw_free(&w);
}

/* ---- names ---- */

static void test_names(void **state)
{
	(void)state;
	assert_string_equal(proto_err_name(ERR_OFFSET_OUT_OF_RANGE), "OFFSET_OUT_OF_RANGE");
	assert_string_equal(proto_err_name(ERR_NONE), "NONE");
	assert_string_equal(proto_err_name(ERR_INVALID_ACKS), "INVALID_ACKS");
	assert_string_equal(proto_err_name(ERR_COUNT), "UNKNOWN");
	assert_string_equal(proto_err_name(0xffff), "UNKNOWN");
	assert_string_equal(proto_api_name(API_PRODUCE), "PRODUCE");
	assert_string_equal(proto_api_name(API_HANDSHAKE), "HANDSHAKE");
	assert_string_equal(proto_api_name(API_BROKER_STATUS), "BROKER_STATUS");

	/* Every code has its own name. */
	for (uint16_t i = 0; i < ERR_COUNT; i++) {
		if (i != ERR_UNKNOWN)
			assert_string_not_equal(proto_err_name(i), "UNKNOWN");
		for (uint16_t j = 0; j < i; j++)
			assert_string_not_equal(proto_err_name(i), proto_err_name(j));
	}
	for (uint16_t i = 0; i < API_COUNT; i++) {
		assert_string_not_equal(proto_api_name(i), "UNKNOWN");
		for (uint16_t j = 0; j < i; j++)
			assert_string_not_equal(proto_api_name(i), proto_api_name(j));
	}
}

static void test_retriable(void **state)
{
	(void)state;
	static const uint16_t yes[] = {
		ERR_TIMEOUT, ERR_BUSY, ERR_SHUTTING_DOWN, ERR_STORAGE, ERR_DISK_FULL,
	};
	for (uint16_t e = 0; e < ERR_COUNT + 5; e++) {
		bool want = false;
		for (size_t i = 0; i < ARRAY_SIZE(yes); i++)
			want |= yes[i] == e;
		if (proto_err_retriable(e) != want)
			fail_msg("%s: retriable should be %d", proto_err_name(e), want);
	}
	assert_false(proto_err_retriable(ERR_UNKNOWN_TOPIC));
	assert_false(proto_err_retriable(ERR_UNKNOWN_PARTITION));
	assert_false(proto_err_retriable(0xffff));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_retriable),
		cmocka_unit_test(test_pw_fixed_overflow),
		cmocka_unit_test(test_pw_dyn_growth),
		cmocka_unit_test(test_pw_encodings),
		cmocka_unit_test(test_pw_str_limits),
		cmocka_unit_test(test_pr_count),
		cmocka_unit_test(test_frame_peek),
		cmocka_unit_test(test_frame_back_to_back),
		cmocka_unit_test(test_frame_too_large),
		cmocka_unit_test(test_req_header),
		cmocka_unit_test(test_resp_header),
		cmocka_unit_test(test_error_response_no_body),
		cmocka_unit_test(test_req_handshake),
		cmocka_unit_test(test_req_metadata),
		cmocka_unit_test(test_req_create_topic),
		cmocka_unit_test(test_req_delete_topic),
		cmocka_unit_test(test_req_alter_topic),
		cmocka_unit_test(test_req_empty_bodies),
		cmocka_unit_test(test_req_describe_topic),
		cmocka_unit_test(test_req_produce),
		cmocka_unit_test(test_req_fetch),
		cmocka_unit_test(test_req_list_offsets),
		cmocka_unit_test(test_resp_handshake),
		cmocka_unit_test(test_resp_metadata),
		cmocka_unit_test(test_resp_list_topics),
		cmocka_unit_test(test_resp_describe_topic),
		cmocka_unit_test(test_resp_header_only),
		cmocka_unit_test(test_resp_produce),
		cmocka_unit_test(test_resp_fetch),
		cmocka_unit_test(test_resp_list_offsets),
		cmocka_unit_test(test_resp_broker_status),
		cmocka_unit_test(test_group_requests),
		cmocka_unit_test(test_group_responses),
		cmocka_unit_test(test_zero_messages),
		cmocka_unit_test(test_huge_count),
		cmocka_unit_test(test_arena_too_small),
		cmocka_unit_test(test_unknown_api_version),
		cmocka_unit_test(test_fetch_records_at),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
