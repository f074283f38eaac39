/* gen_request_corpus.c — writes the seed corpus of fuzz_request: one valid
 * request frame per API, the same frames pipelined in one input, and one
 * response frame per API; with --doc, prints the hex of the METADATA example
 * in docs/protocol.md instead. Not built by the Makefile; run it by hand
 * whenever proto/proto.h gains an API or a field:
 *
 *   cc -std=gnu11 -D_GNU_SOURCE -I. tests/fuzz/gen_request_corpus.c proto/proto.c \
 *      proto/proto_group.c storage/batch.c -o /tmp/gen -llz4 -lxxhash
 *   /tmp/gen tests/fuzz/corpus/fuzz_request
 *
 * It overwrites only the files it writes; the corpus also keeps inputs from
 * older runs (req_fetch_pre_groups, resp_handshake_11_apis) and from fuzzing.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"
#include "storage/batch.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static void die(const char *what)
{
	fprintf(stderr, "gen_request_corpus: %s\n", what);
	exit(1);
}

static void write_file(const char *dir, const char *name, const void *p, size_t len)
{
	char path[4096];
	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		die("path too long");
	FILE *f = fopen(path, "wb");
	if (f == NULL || fwrite(p, 1, len, f) != len || fclose(f) != 0)
		die(path);
}

/* A real two-record batch, so the produce seed looks like what clients send. */
static uint32_t make_batch(uint8_t *buf, size_t cap)
{
	struct batch_builder b;
	batch_builder_init(&b, buf, cap);
	struct batch_kv h = { "trace", 5, "abc", 3 };
	if (batch_add(&b, 1700000000000, "k0", 2, "hello", 5, &h, 1) != 0 ||
	    batch_add(&b, 1700000000001, NULL, 0, "world", 5, NULL, 0) != 0)
		die("batch_add");
	return batch_seal(&b, 0, 0);
}

static void request(struct pw *w, uint16_t api, uint32_t cid, const union proto_request *r)
{
	size_t start = proto_req_begin(w, api, 0, cid);
	proto_encode_request(w, api, r);
	proto_frame_end(w, start);
}

/* A non-empty body of zeros: an API nobody filled in here. */
static bool body_all_zeros(const struct pr *body)
{
	size_t n = pr_left(body);
	for (size_t i = 0; i < n; i++)
		if (body->p[i] != 0)
			return false;
	return n > 0;
}

/* The corpus must hold a valid example of every API: each frame written
 * decodes, and one whose body is all zeros is an API nobody filled in here. */
static void check_request(const struct pw *w, const char *name)
{
	static _Alignas(16) uint8_t mem[64 << 10];
	struct proto_req_hdr h;
	struct pr body;
	struct arena a;
	union proto_request rq;
	if (w->failed || proto_req_header(w->buf, (uint32_t)w->len, &h, &body) != 0)
		die(name);
	arena_init(&a, mem, sizeof(mem));
	if (body_all_zeros(&body) || proto_decode_request(h.api, h.version, &body, &a, &rq) != 0) {
		fprintf(stderr, "gen_request_corpus: %s: not a valid, filled-in request\n", name);
		exit(1);
	}
}

static void check_response(const struct pw *w, uint16_t api, const char *name)
{
	static _Alignas(16) uint8_t mem[64 << 10];
	struct proto_resp_hdr h;
	struct pr body;
	struct arena a;
	union proto_response rs;
	if (w->failed || proto_resp_header(w->buf, (uint32_t)w->len, &h, &body) != 0)
		die(name);
	arena_init(&a, mem, sizeof(mem));
	if (body_all_zeros(&body) || proto_decode_response(api, 0, &body, &a, &rs) != 0) {
		fprintf(stderr, "gen_request_corpus: %s: not a valid, filled-in response\n", name);
		exit(1);
	}
}

static void requests(union proto_request *r, uint8_t *batch, uint32_t blen)
{
	static struct pstr md_topics[2];
	static struct proto_kv cfg[2];
	static struct proto_produce_part pp[2];
	static struct proto_produce_topic pt[1];
	static struct proto_fetch_part fp[2];
	static struct proto_fetch_topic ft[1];
	static struct proto_lo_part lp[3];
	static struct proto_lo_topic lt[1];
	static struct pstr sub[2];
	static struct proto_tp owned[3];
	static struct proto_commit_part cp[2];

	memset(r, 0, sizeof(*r) * API_COUNT);
	r[API_HANDSHAKE].handshake =
		(struct proto_handshake_req){ pstr_c("seed-client"), PROTO_VERSION_MIN,
					      PROTO_VERSION_MAX };
	md_topics[0] = pstr_c("orders");
	md_topics[1] = pstr_c("logs");
	r[API_METADATA].metadata = (struct proto_metadata_req){ 2, md_topics };
	cfg[0] = (struct proto_kv){ pstr_c("retention.ms"), pstr_c("86400000") };
	cfg[1] = (struct proto_kv){ pstr_c("flush"), pstr_c("always") };
	r[API_CREATE_TOPIC].create_topic =
		(struct proto_create_topic_req){ pstr_c("orders"), 3, 2, cfg };
	r[API_DELETE_TOPIC].delete_topic = (struct proto_delete_topic_req){ pstr_c("old") };
	r[API_ALTER_TOPIC].alter_topic =
		(struct proto_alter_topic_req){ pstr_c("orders"), 6, 1, cfg + 1 };
	r[API_DESCRIBE_TOPIC].describe_topic =
		(struct proto_describe_topic_req){ pstr_c("orders") };
	pp[0] = (struct proto_produce_part){ 0, { batch, blen } };
	pp[1] = (struct proto_produce_part){ 2, { batch, blen } };
	pt[0] = (struct proto_produce_topic){ pstr_c("orders"), 2, pp };
	r[API_PRODUCE].produce = (struct proto_produce_req){ PROTO_ACKS_ALL, 5000, 1, pt };
	fp[0] = (struct proto_fetch_part){ 0, 0, 1 << 20 };
	fp[1] = (struct proto_fetch_part){ 2, 42, 65536 };
	ft[0] = (struct proto_fetch_topic){ pstr_c("orders"), 2, fp };
	/* A group member's fetch, which the broker checks against the group;
	 * a plain fetch leaves the three group fields empty. */
	r[API_FETCH].fetch = (struct proto_fetch_req){ 500, 1, 4 << 20, 1, ft, pstr_c("inventory"),
						       pstr_c("inventory-1-4f2a"), 3 };
	lp[0] = (struct proto_lo_part){ 0, PROTO_OFFSET_EARLIEST };
	lp[1] = (struct proto_lo_part){ 1, PROTO_OFFSET_LATEST };
	lp[2] = (struct proto_lo_part){ 2, 1700000000000 };
	lt[0] = (struct proto_lo_topic){ pstr_c("orders"), 3, lp };
	r[API_LIST_OFFSETS].list_offsets = (struct proto_list_offsets_req){ 1, lt };

	sub[0] = pstr_c("orders");
	sub[1] = pstr_c("returns");
	r[API_JOIN_GROUP].join_group = (struct proto_join_group_req){
		pstr_c("inventory"), pstr_c(""), pstr_c("inventory-service/1.0"), 10000, 2, sub,
	};
	owned[0] = (struct proto_tp){ pstr_c("orders"), 0 };
	owned[1] = (struct proto_tp){ pstr_c("orders"), 2 };
	owned[2] = (struct proto_tp){ pstr_c("returns"), 0 };
	r[API_HEARTBEAT].heartbeat = (struct proto_heartbeat_req){
		pstr_c("inventory"), pstr_c("inventory-1-4f2a"), 3, 3, owned,
	};
	r[API_LEAVE_GROUP].leave_group =
		(struct proto_leave_group_req){ pstr_c("inventory"), pstr_c("inventory-1-4f2a") };
	cp[0] = (struct proto_commit_part){ pstr_c("orders"), 0, 1042 };
	cp[1] = (struct proto_commit_part){ pstr_c("orders"), 2, 17 };
	r[API_COMMIT_OFFSETS].commit_offsets = (struct proto_commit_offsets_req){
		pstr_c("inventory"), pstr_c("inventory-1-4f2a"), 3, 2, cp,
	};
	r[API_FETCH_OFFSETS].fetch_offsets =
		(struct proto_fetch_offsets_req){ pstr_c("inventory"), 2, owned };
	r[API_DESCRIBE_GROUP].describe_group =
		(struct proto_describe_group_req){ pstr_c("inventory") };
	r[API_DELETE_GROUP].delete_group = (struct proto_delete_group_req){ pstr_c("old-group") };
	r[API_RESET_OFFSETS].reset_offsets = (struct proto_reset_offsets_req){
		pstr_c("inventory"), pstr_c("orders"), PROTO_RESET_TIME, 1700000000000,
	};
}

/* Second examples where a field's value sends the broker down another
 * path: a fetch outside any group, a rejoin with a member id, a commit
 * outside membership, a reset to an offset rather than a time. */
static void extra_requests(const char *dir, const union proto_request *r)
{
	static const struct {
		const char *name;
		uint16_t api;
	} extras[] = {
		{ "req_fetch_plain", API_FETCH },
		{ "req_join_rejoin", API_JOIN_GROUP },
		{ "req_commit_outside_group", API_COMMIT_OFFSETS },
		{ "req_reset_to_offset", API_RESET_OFFSETS },
	};
	union proto_request x[ARRAY_SIZE(extras)];
	x[0].fetch = r[API_FETCH].fetch;
	x[0].fetch.group = x[0].fetch.member_id = pstr_c("");
	x[0].fetch.member_epoch = 0;
	x[1].join_group = r[API_JOIN_GROUP].join_group;
	x[1].join_group.member_id = pstr_c("inventory-1-4f2a");
	x[2].commit_offsets = r[API_COMMIT_OFFSETS].commit_offsets;
	x[2].commit_offsets.member_id = pstr_c("");
	x[2].commit_offsets.member_epoch = 0;
	x[3].reset_offsets = r[API_RESET_OFFSETS].reset_offsets;
	x[3].reset_offsets.mode = PROTO_RESET_OFFSET;
	x[3].reset_offsets.value = 500;
	for (size_t i = 0; i < ARRAY_SIZE(extras); i++) {
		struct pw w;
		pw_init_dyn(&w, 256, 1 << 20);
		request(&w, extras[i].api, 400 + (uint32_t)i, &x[i]);
		check_request(&w, extras[i].name);
		write_file(dir, extras[i].name, w.buf, w.len);
		pw_free(&w);
	}
}

static void responses(union proto_response *r, uint8_t *batch, uint32_t blen)
{
	static struct proto_api_range apis[API_COUNT];
	static struct proto_md_part mp[2];
	static struct proto_md_topic mt[2];
	static struct proto_topic_brief tb[2];
	static struct proto_kv cfg[1];
	static struct proto_part_desc pd[1];
	static struct proto_produce_resp_part prp[2];
	static struct proto_produce_resp_topic prt[1];
	static struct proto_fetch_resp_part frp[2];
	static struct proto_fetch_resp_topic frt[1];
	static struct proto_lo_resp_part lrp[1];
	static struct proto_lo_resp_topic lrt[1];
	static struct proto_tp assigned[2];
	static struct proto_tp_result cres[2];
	static struct proto_committed committed[3];
	static struct proto_group_brief gb[2];
	static struct proto_group_member gm[2];
	static struct proto_group_part gp[3];

	memset(r, 0, sizeof(*r) * API_COUNT);
	for (uint16_t i = 0; i < API_COUNT; i++)
		apis[i] = (struct proto_api_range){ i, 0, 0 };
	r[API_HANDSHAKE].handshake = (struct proto_handshake_resp){
		PROTO_VERSION_MAX, pstr_c("ringmq"), API_COUNT, apis,
	};
	mp[0] = (struct proto_md_part){ 0, 0, 10 };
	mp[1] = (struct proto_md_part){ 1, 5, 7 };
	mt[0] = (struct proto_md_topic){ pstr_c("orders"), ERR_NONE, pstr_c(""), 2, mp };
	mt[1] = (struct proto_md_topic){ pstr_c("nope"), ERR_UNKNOWN_TOPIC,
					 pstr_c("unknown topic 'nope'"), 0, NULL };
	r[API_METADATA].metadata = (struct proto_metadata_resp){ 2, mt };
	tb[0] = (struct proto_topic_brief){ pstr_c("orders"), 3 };
	tb[1] = (struct proto_topic_brief){ pstr_c("logs"), 1 };
	r[API_LIST_TOPICS].list_topics = (struct proto_list_topics_resp){ 2, tb };
	cfg[0] = (struct proto_kv){ pstr_c("flush"), pstr_c("always") };
	pd[0] = (struct proto_part_desc){ 0, 0, 10, 4096, 1 };
	r[API_DESCRIBE_TOPIC].describe_topic =
		(struct proto_describe_topic_resp){ pstr_c("orders"), 1, 1, cfg, 1, pd };
	prp[0] = (struct proto_produce_resp_part){ 0, ERR_NONE, pstr_c(""), 10, 0 };
	prp[1] = (struct proto_produce_resp_part){ 2, ERR_CORRUPT_BATCH, pstr_c("bad checksum"),
						   0, 0 };
	prt[0] = (struct proto_produce_resp_topic){ pstr_c("orders"), 2, prp };
	r[API_PRODUCE].produce = (struct proto_produce_resp){ 1, prt };
	frp[0] = (struct proto_fetch_resp_part){ 0, ERR_NONE, pstr_c(""), 0, 2, { batch, blen },
						 0 };
	frp[1] = (struct proto_fetch_resp_part){ 2, ERR_OFFSET_OUT_OF_RANGE,
						 pstr_c("offset 42 is out of range [0, 2)"), 0, 2,
						 { batch, 0 }, 0 };
	frt[0] = (struct proto_fetch_resp_topic){ pstr_c("orders"), 2, frp };
	r[API_FETCH].fetch = (struct proto_fetch_resp){ 1, frt };
	lrp[0] = (struct proto_lo_resp_part){ 0, ERR_NONE, pstr_c(""), 0 };
	lrt[0] = (struct proto_lo_resp_topic){ pstr_c("orders"), 1, lrp };
	r[API_LIST_OFFSETS].list_offsets = (struct proto_list_offsets_resp){ 1, lrt };
	r[API_BROKER_STATUS].broker_status = (struct proto_broker_status_resp){
		pstr_c("0.1.0"), 60000, 2, 4, 1, 1 << 20, pstr_c("./ringmq-data"), 100, 6400, 3200,
	};

	r[API_JOIN_GROUP].join_group =
		(struct proto_join_group_resp){ pstr_c("inventory-1-4f2a"), 3, 3000 };
	assigned[0] = (struct proto_tp){ pstr_c("orders"), 0 };
	assigned[1] = (struct proto_tp){ pstr_c("returns"), 0 };
	r[API_HEARTBEAT].heartbeat = (struct proto_heartbeat_resp){ 4, 3000, 2, assigned };
	cres[0] = (struct proto_tp_result){ pstr_c("orders"), 0, ERR_NONE, pstr_c("") };
	cres[1] = (struct proto_tp_result){ pstr_c("orders"), 2, ERR_NOT_OWNER,
					    pstr_c("partition 2 is owned by another member") };
	r[API_COMMIT_OFFSETS].commit_offsets = (struct proto_commit_offsets_resp){ 2, cres };
	committed[0] = (struct proto_committed){ pstr_c("orders"), 0, 1042 };
	committed[1] = (struct proto_committed){ pstr_c("orders"), 2, -1 };
	committed[2] = (struct proto_committed){ pstr_c("returns"), 0, 0 };
	r[API_FETCH_OFFSETS].fetch_offsets = (struct proto_fetch_offsets_resp){ 3, committed };
	gb[0] = (struct proto_group_brief){ pstr_c("inventory"), pstr_c("stable"), 2 };
	gb[1] = (struct proto_group_brief){ pstr_c("notification"), pstr_c("empty"), 0 };
	r[API_LIST_GROUPS].list_groups = (struct proto_list_groups_resp){ 2, gb };
	gm[0] = (struct proto_group_member){ pstr_c("inventory-1-4f2a"),
					     pstr_c("inventory-service/1.0"), 4, 120, 2, assigned };
	gm[1] = (struct proto_group_member){ pstr_c("inventory-2-9c1d"),
					     pstr_c("inventory-service/1.0"), 4, 2900, 0, NULL };
	gp[0] = (struct proto_group_part){ pstr_c("orders"), 0, 1042, 0, 1100,
					   pstr_c("inventory-1-4f2a") };
	gp[1] = (struct proto_group_part){ pstr_c("orders"), 1, -1, 0, 0, pstr_c("") };
	gp[2] = (struct proto_group_part){ pstr_c("gone"), 0, 77, 0, 0, pstr_c("") };
	r[API_DESCRIBE_GROUP].describe_group = (struct proto_describe_group_resp){
		pstr_c("inventory"), pstr_c("rebalancing"), 9, 2, gm, 3, gp,
	};
	r[API_RESET_OFFSETS].reset_offsets = (struct proto_reset_offsets_resp){ 2, committed };
}

static void hex(const char *title, const uint8_t *p, size_t len)
{
	printf("%s (%zu bytes):\n", title, len);
	for (size_t i = 0; i < len; i++)
		printf("%02x%s", p[i], (i + 1) % 16 == 0 || i + 1 == len ? "\n" : " ");
}

/* The example of docs/protocol.md: METADATA for "orders" and "nope". */
static void doc_example(void)
{
	struct pstr topics[] = { pstr_c("orders"), pstr_c("nope") };
	union proto_request rq = { .metadata = { 2, topics } };
	struct pw w;
	pw_init_dyn(&w, 64, 4096);
	request(&w, API_METADATA, 7, &rq);
	if (w.failed)
		die("encoding failed");
	hex("request", w.buf, w.len);
	pw_free(&w);

	struct proto_md_part parts[] = { { 0, 0, 120 }, { 1, 30, 95 } };
	struct proto_md_topic mt[] = {
		{ pstr_c("orders"), ERR_NONE, pstr_c(""), 2, parts },
		{ pstr_c("nope"), ERR_UNKNOWN_TOPIC, pstr_c("no such topic"), 0, NULL },
	};
	union proto_response rs = { .metadata = { 2, mt } };
	pw_init_dyn(&w, 64, 4096);
	size_t start = proto_resp_begin(&w, 7, ERR_NONE, NULL);
	proto_encode_response(&w, API_METADATA, &rs);
	proto_frame_end(&w, start);
	if (w.failed)
		die("encoding failed");
	hex("response", w.buf, w.len);
	pw_free(&w);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DIR | --doc\n", argv[0]);
		return 2;
	}
	if (strcmp(argv[1], "--doc") == 0) {
		doc_example();
		return 0;
	}
	const char *dir = argv[1];
	static uint8_t batch[256];
	uint32_t blen = make_batch(batch, sizeof(batch));

	static union proto_request rq[API_COUNT];
	requests(rq, batch, blen);
	struct pw all;
	pw_init_dyn(&all, 1024, 1 << 20);
	for (uint16_t api = 0; api < API_COUNT; api++) {
		struct pw w;
		char name[64];
		pw_init_dyn(&w, 256, 1 << 20);
		request(&w, api, 100 + api, &rq[api]);
		request(&all, api, 200 + api, &rq[api]);
		snprintf(name, sizeof(name), "req_%02u_%s", api, proto_api_name(api));
		check_request(&w, name);
		write_file(dir, name, w.buf, w.len);
		pw_free(&w);
	}
	if (all.failed)
		die("encoding failed");
	write_file(dir, "req_pipelined", all.buf, all.len);
	pw_free(&all);
	extra_requests(dir, rq);

	/* More topic names than a 64 KiB arena holds: the broker's -ENOMEM
	 * (LIMIT_EXCEEDED) path, which random mutation rarely grows into. */
	static struct pstr many[5000];
	for (size_t i = 0; i < ARRAY_SIZE(many); i++)
		many[i] = pstr_c(i % 2 ? "t" : "");
	union proto_request big = { .metadata = { ARRAY_SIZE(many), many } };
	pw_init_dyn(&all, 1024, 1 << 20);
	request(&all, API_METADATA, 1, &big);
	if (all.failed)
		die("encoding failed");
	write_file(dir, "req_many_topics", all.buf, all.len);
	pw_free(&all);

	static union proto_response rs[API_COUNT];
	responses(rs, batch, blen);
	for (uint16_t api = 0; api < API_COUNT; api++) {
		struct pw w;
		char name[64];
		pw_init_dyn(&w, 256, 1 << 20);
		size_t start = proto_resp_begin(&w, 300 + api, ERR_NONE, NULL);
		proto_encode_response(&w, api, &rs[api]);
		proto_frame_end(&w, start);
		snprintf(name, sizeof(name), "resp_%02u_%s", api, proto_api_name(api));
		check_response(&w, api, name);
		write_file(dir, name, w.buf, w.len);
		pw_free(&w);
	}

	/* An error response: header only. */
	struct pw w;
	pw_init_dyn(&w, 64, 4096);
	size_t start = proto_resp_begin(&w, 9, ERR_UNKNOWN_TOPIC, "unknown topic 'nope'");
	proto_frame_end(&w, start);
	if (w.failed)
		die("encoding failed");
	write_file(dir, "resp_error", w.buf, w.len);
	pw_free(&w);
	return 0;
}
