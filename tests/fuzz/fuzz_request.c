/* fuzz_request.c — fuzz target for the broker's request path: frames are
 * peeked, headers read and bodies decoded as the broker would, and whatever
 * decodes must re-encode to the very same bytes and decode again to the same
 * message. The same bytes then go through every response decoder, which the
 * client library runs on what a broker sends.
 *
 * The input is a run of request frames back to back (a pipelined connection).
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/endian.h"
#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A limit below the hard maximum, so that -EMSGSIZE is reachable with
 * inputs a fuzzer produces. */
#define FUZZ_MAX_FRAME (1u << 20)
#define FRAMES_PER_INPUT 16

/* abort() rather than assert(): the checks must hold in every build. */
#define CHECK(cond)                     \
	do {                            \
		if (!(cond))            \
			abort();        \
	} while (0)

/* What the broker gives the decoder for one request. */
static _Alignas(16) uint8_t arena_mem[64 << 10];
static _Alignas(16) uint8_t arena_mem2[64 << 10];

/* ---- views and equality ---- */

struct span {
	const uint8_t *lo, *hi;
};

static void in_span(const void *p, size_t len, struct span s)
{
	const uint8_t *q = p;
	if (len == 0)
		return;
	CHECK(q >= s.lo && q <= s.hi && len <= (size_t)(s.hi - q));
}

/* Two strings are equal, and each lies inside the frame it came from. */
static void eq_str(struct pstr a, struct pstr b, struct span sa, struct span sb)
{
	in_span(a.p, a.len, sa);
	in_span(b.p, b.len, sb);
	CHECK(a.len == b.len && a.len <= UINT16_MAX);
	CHECK(a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static void eq_bytes(struct pbytes a, struct pbytes b, struct span sa, struct span sb)
{
	in_span(a.p, a.len, sa);
	in_span(b.p, b.len, sb);
	CHECK(a.len == b.len);
	CHECK(a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static void eq_kvs(uint32_t na, const struct proto_kv *a, uint32_t nb, const struct proto_kv *b,
		   struct span sa, struct span sb)
{
	CHECK(na == nb);
	CHECK((na == 0) == (a == NULL) && (nb == 0) == (b == NULL));
	for (uint32_t i = 0; i < na; i++) {
		eq_str(a[i].key, b[i].key, sa, sb);
		eq_str(a[i].value, b[i].value, sa, sb);
	}
}

static void eq_produce(const struct proto_produce_req *a, const struct proto_produce_req *b,
		       struct span sa, struct span sb)
{
	CHECK(a->acks == b->acks && a->timeout_ms == b->timeout_ms);
	CHECK(a->ntopics == b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_produce_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name, sa, sb);
		CHECK(x->nparts == y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			CHECK(x->parts[j].partition == y->parts[j].partition);
			eq_bytes(x->parts[j].batches, y->parts[j].batches, sa, sb);
		}
	}
}

static void eq_fetch(const struct proto_fetch_req *a, const struct proto_fetch_req *b,
		     struct span sa, struct span sb)
{
	CHECK(a->max_wait_ms == b->max_wait_ms && a->min_bytes == b->min_bytes);
	CHECK(a->max_bytes == b->max_bytes && a->ntopics == b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_fetch_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name, sa, sb);
		CHECK(x->nparts == y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			CHECK(x->parts[j].partition == y->parts[j].partition);
			CHECK(x->parts[j].offset == y->parts[j].offset);
			CHECK(x->parts[j].max_bytes == y->parts[j].max_bytes);
		}
	}
	eq_str(a->group, b->group, sa, sb);
	eq_str(a->member_id, b->member_id, sa, sb);
	CHECK(a->member_epoch == b->member_epoch);
}

static void eq_tps(uint32_t na, const struct proto_tp *a, uint32_t nb, const struct proto_tp *b,
		   struct span sa, struct span sb)
{
	CHECK(na == nb);
	CHECK((na == 0) == (a == NULL) && (nb == 0) == (b == NULL));
	for (uint32_t i = 0; i < na; i++) {
		eq_str(a[i].topic, b[i].topic, sa, sb);
		CHECK(a[i].partition == b[i].partition);
	}
}

static void eq_group_request(uint16_t api, const union proto_request *a,
			     const union proto_request *b, struct span sa, struct span sb)
{
	switch (api) {
	case API_JOIN_GROUP: {
		const struct proto_join_group_req *x = &a->join_group, *y = &b->join_group;
		eq_str(x->group, y->group, sa, sb);
		eq_str(x->member_id, y->member_id, sa, sb);
		eq_str(x->client_id, y->client_id, sa, sb);
		CHECK(x->session_timeout_ms == y->session_timeout_ms);
		CHECK(x->ntopics == y->ntopics);
		for (uint32_t i = 0; i < x->ntopics; i++)
			eq_str(x->topics[i], y->topics[i], sa, sb);
		break;
	}
	case API_HEARTBEAT:
		eq_str(a->heartbeat.group, b->heartbeat.group, sa, sb);
		eq_str(a->heartbeat.member_id, b->heartbeat.member_id, sa, sb);
		CHECK(a->heartbeat.member_epoch == b->heartbeat.member_epoch);
		eq_tps(a->heartbeat.nowned, a->heartbeat.owned, b->heartbeat.nowned,
		       b->heartbeat.owned, sa, sb);
		break;
	case API_LEAVE_GROUP:
		eq_str(a->leave_group.group, b->leave_group.group, sa, sb);
		eq_str(a->leave_group.member_id, b->leave_group.member_id, sa, sb);
		break;
	case API_COMMIT_OFFSETS: {
		const struct proto_commit_offsets_req *x = &a->commit_offsets, *y = &b->commit_offsets;
		eq_str(x->group, y->group, sa, sb);
		eq_str(x->member_id, y->member_id, sa, sb);
		CHECK(x->member_epoch == y->member_epoch && x->nparts == y->nparts);
		for (uint32_t i = 0; i < x->nparts; i++) {
			eq_str(x->parts[i].topic, y->parts[i].topic, sa, sb);
			CHECK(x->parts[i].partition == y->parts[i].partition);
			CHECK(x->parts[i].offset == y->parts[i].offset);
		}
		break;
	}
	case API_FETCH_OFFSETS:
		eq_str(a->fetch_offsets.group, b->fetch_offsets.group, sa, sb);
		eq_tps(a->fetch_offsets.nparts, a->fetch_offsets.parts, b->fetch_offsets.nparts,
		       b->fetch_offsets.parts, sa, sb);
		break;
	case API_DESCRIBE_GROUP:
		eq_str(a->describe_group.group, b->describe_group.group, sa, sb);
		break;
	case API_DELETE_GROUP:
		eq_str(a->delete_group.group, b->delete_group.group, sa, sb);
		break;
	case API_RESET_OFFSETS:
		eq_str(a->reset_offsets.group, b->reset_offsets.group, sa, sb);
		eq_str(a->reset_offsets.topic, b->reset_offsets.topic, sa, sb);
		CHECK(a->reset_offsets.mode == b->reset_offsets.mode);
		CHECK(a->reset_offsets.value == b->reset_offsets.value);
		break;
	default:
		break; /* LIST_GROUPS: an empty body */
	}
}

static void eq_list_offsets(const struct proto_list_offsets_req *a,
			    const struct proto_list_offsets_req *b, struct span sa, struct span sb)
{
	CHECK(a->ntopics == b->ntopics);
	for (uint32_t i = 0; i < a->ntopics; i++) {
		const struct proto_lo_topic *x = &a->topics[i], *y = &b->topics[i];
		eq_str(x->name, y->name, sa, sb);
		CHECK(x->nparts == y->nparts);
		for (uint32_t j = 0; j < x->nparts; j++) {
			CHECK(x->parts[j].partition == y->parts[j].partition);
			CHECK(x->parts[j].spec == y->parts[j].spec);
		}
	}
}

static void eq_request(uint16_t api, const union proto_request *a, const union proto_request *b,
		       struct span sa, struct span sb)
{
	switch (api) {
	case API_HANDSHAKE:
		eq_str(a->handshake.client_name, b->handshake.client_name, sa, sb);
		CHECK(a->handshake.min_version == b->handshake.min_version);
		CHECK(a->handshake.max_version == b->handshake.max_version);
		break;
	case API_METADATA:
		CHECK(a->metadata.ntopics == b->metadata.ntopics);
		for (uint32_t i = 0; i < a->metadata.ntopics; i++)
			eq_str(a->metadata.topics[i], b->metadata.topics[i], sa, sb);
		break;
	case API_CREATE_TOPIC:
		eq_str(a->create_topic.name, b->create_topic.name, sa, sb);
		CHECK(a->create_topic.partitions == b->create_topic.partitions);
		eq_kvs(a->create_topic.nconfigs, a->create_topic.configs, b->create_topic.nconfigs,
		       b->create_topic.configs, sa, sb);
		break;
	case API_DELETE_TOPIC:
		eq_str(a->delete_topic.name, b->delete_topic.name, sa, sb);
		break;
	case API_ALTER_TOPIC:
		eq_str(a->alter_topic.name, b->alter_topic.name, sa, sb);
		CHECK(a->alter_topic.partitions == b->alter_topic.partitions);
		eq_kvs(a->alter_topic.nconfigs, a->alter_topic.configs, b->alter_topic.nconfigs,
		       b->alter_topic.configs, sa, sb);
		break;
	case API_DESCRIBE_TOPIC:
		eq_str(a->describe_topic.name, b->describe_topic.name, sa, sb);
		break;
	case API_PRODUCE:
		eq_produce(&a->produce, &b->produce, sa, sb);
		break;
	case API_FETCH:
		eq_fetch(&a->fetch, &b->fetch, sa, sb);
		break;
	case API_LIST_OFFSETS:
		eq_list_offsets(&a->list_offsets, &b->list_offsets, sa, sb);
		break;
	case API_LIST_TOPICS:
	case API_BROKER_STATUS:
		break; /* empty bodies */
	default:
		eq_group_request(api, a, b, sa, sb);
		break;
	}
}

/* ---- requests ---- */

/* proto_frame_peek's verdict, worked out independently. */
static int peek_oracle(const uint8_t *p, size_t avail, uint32_t min, uint32_t max,
		       uint32_t *len)
{
	if (avail < 4)
		return -EAGAIN;
	uint64_t size = (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 |
			(uint64_t)p[3] << 24;
	if (size < min)
		return -EBADMSG;
	if (size + 4 > max)
		return -EMSGSIZE;
	if (avail < size + 4)
		return -EAGAIN;
	*len = (uint32_t)(size + 4);
	return 0;
}

/* An arena of -ENOMEM must be the only reason: with room for the worst
 * case (an element's struct is at most 8 times its smallest encoding, plus
 * alignment per array), the same body decodes or is refused as malformed. */
static void check_enomem(uint16_t api, uint16_t version, const uint8_t *body, size_t len)
{
	size_t cap = 16 * len + 64;
	uint8_t *big = malloc(cap);
	CHECK(big != NULL);
	struct arena a;
	arena_init(&a, big, cap);
	struct pr r;
	pr_init(&r, body, len);
	union proto_request rq;
	int ret = proto_decode_request(api, version, &r, &a, &rq);
	CHECK(ret == 0 || ret == -EBADMSG);
	CHECK(ret != 0 || a.used > sizeof(arena_mem));
	free(big);
}

/* One whole frame, as the broker handles it. */
static void request_frame(const uint8_t *f, uint32_t flen)
{
	struct proto_req_hdr h;
	struct pr body;
	CHECK(proto_req_header(f, flen, &h, &body) == 0);
	CHECK(body.p == f + FRAME_SIZE_FIELD + REQ_HEADER_SIZE);
	CHECK(pr_left(&body) == flen - FRAME_SIZE_FIELD - REQ_HEADER_SIZE);
	/* A length that disagrees with the size field is refused. */
	struct proto_req_hdr hx;
	struct pr bx;
	CHECK(proto_req_header(f, flen - 1, &hx, &bx) == -EBADMSG);

	const uint8_t *bp = body.p;
	size_t blen = pr_left(&body);
	struct arena a;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	union proto_request rq;
	int ret = proto_decode_request(h.api, h.version, &body, &a, &rq);
	CHECK(ret == 0 || ret == -EBADMSG || ret == -ENOMEM || ret == -ENOTSUP);
	CHECK((ret == -ENOTSUP) == !proto_api_supported(h.api, h.version));
	CHECK(a.used <= a.cap);
	if (ret == -ENOTSUP)
		CHECK(a.used == 0);
	if (ret == -ENOMEM)
		check_enomem(h.api, h.version, bp, blen);
	if (ret != 0)
		return;
	CHECK(pr_left(&body) == 0 && !body.failed);

	/* Re-encode: the encoding has no choices, so it must be the input. */
	struct pw w;
	pw_init_dyn(&w, 64, FUZZ_MAX_FRAME);
	size_t start = proto_req_begin(&w, h.api, h.version, h.correlation_id);
	proto_encode_request(&w, h.api, &rq);
	proto_frame_end(&w, start);
	CHECK(!w.failed);
	CHECK(w.len == flen && memcmp(w.buf, f, flen) == 0);

	/* And back again, into another arena. */
	struct proto_req_hdr h2;
	struct pr body2;
	CHECK(proto_req_header(w.buf, (uint32_t)w.len, &h2, &body2) == 0);
	CHECK(h2.api == h.api && h2.version == h.version);
	CHECK(h2.correlation_id == h.correlation_id);
	struct arena a2;
	arena_init(&a2, arena_mem2, sizeof(arena_mem2));
	union proto_request rq2;
	CHECK(proto_decode_request(h2.api, h2.version, &body2, &a2, &rq2) == 0);
	CHECK(a2.used == a.used);
	eq_request(h.api, &rq, &rq2, (struct span){ bp, bp + blen },
		   (struct span){ w.buf, w.buf + w.len });
	pw_free(&w);
}

static void request_pass(const uint8_t *data, size_t size)
{
	size_t pos = 0;
	for (int n = 0; n < FRAMES_PER_INPUT; n++) {
		const uint8_t *p = data + pos;
		size_t avail = size - pos;
		uint32_t flen = 0, want = 0;
		int rc = proto_frame_peek(p, avail, FRAME_SIZE_MIN_REQ, FUZZ_MAX_FRAME, &flen);
		CHECK(rc == peek_oracle(p, avail, FRAME_SIZE_MIN_REQ, FUZZ_MAX_FRAME, &want));
		if (rc != 0)
			return;
		CHECK(flen == want && flen <= avail && flen >= FRAME_SIZE_FIELD + REQ_HEADER_SIZE);
		/* One byte less is incomplete, never malformed. */
		CHECK(proto_frame_peek(p, flen - 1, FRAME_SIZE_MIN_REQ, FUZZ_MAX_FRAME, &want) ==
		      -EAGAIN);
		/* A tighter limit turns it away as too large. */
		CHECK(proto_frame_peek(p, avail, FRAME_SIZE_MIN_REQ, flen - 1, &want) == -EMSGSIZE);

		/* An exact copy, so reads past the frame trip ASan. */
		uint8_t *f = malloc(flen);
		CHECK(f != NULL);
		memcpy(f, p, flen);
		request_frame(f, flen);
		free(f);
		pos += flen;
	}
}

/* ---- responses ---- */

/* A response body for one API: refused, or re-encoded to the same bytes. */
static void response_body(uint16_t api, const uint8_t *p, size_t len)
{
	struct arena a;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	struct pr r;
	pr_init(&r, p, len);
	union proto_response rs;
	int ret = proto_decode_response(api, 0, &r, &a, &rs);
	CHECK(ret == 0 || ret == -EBADMSG || ret == -ENOMEM);
	CHECK(a.used <= a.cap);
	if (ret != 0 || len == 0)
		return; /* an empty body is an error response's: nothing to encode */

	struct pw w;
	pw_init_dyn(&w, 64, FRAME_SIZE_HARD_MAX);
	proto_encode_response(&w, api, &rs);
	CHECK(!w.failed);
	CHECK(w.len == len && memcmp(w.buf, p, len) == 0);

	/* Decoded again, it must encode the same once more. */
	struct arena a2;
	arena_init(&a2, arena_mem2, sizeof(arena_mem2));
	struct pr r2;
	pr_init(&r2, w.buf, w.len);
	union proto_response rs2;
	CHECK(proto_decode_response(api, 0, &r2, &a2, &rs2) == 0);
	CHECK(a2.used == a.used);
	struct pw w2;
	pw_init_dyn(&w2, 64, FRAME_SIZE_HARD_MAX);
	proto_encode_response(&w2, api, &rs2);
	CHECK(!w2.failed && w2.len == w.len && memcmp(w2.buf, w.buf, w.len) == 0);
	pw_free(&w2);
	pw_free(&w);
}

static void response_pass(const uint8_t *data, size_t size)
{
	/* The whole input as a body of every API... */
	for (uint16_t api = 0; api < API_COUNT; api++)
		response_body(api, data, size);
	/* ...and no API other than those, nor any other version. */
	struct arena a;
	arena_init(&a, arena_mem, sizeof(arena_mem));
	struct pr r;
	pr_init(&r, data, size);
	union proto_response rs;
	uint16_t api = size >= 2 ? le16_load(data) : 0;
	if (!proto_api_supported(api, 0))
		CHECK(proto_decode_response(api, 0, &r, &a, &rs) == -ENOTSUP);
	CHECK(proto_decode_response(API_METADATA, 1, &r, &a, &rs) == -ENOTSUP);

	/* ...then as a response frame: its header and body. */
	uint32_t flen = 0;
	if (proto_frame_peek(data, size, FRAME_SIZE_MIN_RESP, FUZZ_MAX_FRAME, &flen) != 0)
		return;
	uint8_t *f = malloc(flen);
	CHECK(f != NULL);
	memcpy(f, data, flen);
	struct proto_resp_hdr h;
	struct pr body;
	int ret = proto_resp_header(f, flen, &h, &body);
	CHECK(ret == 0 || ret == -EBADMSG);
	if (ret == 0) {
		in_span(h.msg.p, h.msg.len, (struct span){ f, f + flen });
		in_span(body.p, pr_left(&body), (struct span){ f, f + flen });
		CHECK(body.p + pr_left(&body) == f + flen);
		for (uint16_t i = 0; i < API_COUNT; i++)
			response_body(i, body.p, pr_left(&body));
	}
	free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	request_pass(data, size);
	response_pass(data, size);
	return 0;
}
