/* handlers.c — request dispatch, error responses, and the requests answered
 * at once: handshake, metadata, list/describe topics, list offsets, status.
 * Produce, fetch and topic administration live in their own files. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "common/say.h"

/* Responses start small and grow; none but fetch (sized exactly) is large. */
#define RESP_INITIAL 256

uint16_t err_from_errno(int err)
{
	switch (err) {
	case -ENOSPC:
	case -EDQUOT:
		return ERR_DISK_FULL;
	case -EIO:
	case -EROFS:
		return ERR_STORAGE;
	case -EBADMSG:
		return ERR_CORRUPT_BATCH;
	case -EMSGSIZE:
		return ERR_BATCH_TOO_LARGE;
	case -ERANGE:
		return ERR_OFFSET_OUT_OF_RANGE;
	case -ENOBUFS:
		return ERR_BUSY;
	case -ENOENT:
		return ERR_UNKNOWN_TOPIC;
	case -ESHUTDOWN:
		return ERR_SHUTTING_DOWN;
	default:
		return err < 0 ? ERR_STORAGE : ERR_UNKNOWN;
	}
}

void respond_error(struct conn *c, uint16_t api, uint32_t corr, uint16_t err, const char *fmt,
		   ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (api < API_COUNT)
		c->loop->api[api].errors++;
	struct pw w;
	pw_init_dyn(&w, RESP_INITIAL + strlen(msg), 1u << 16);
	size_t start = proto_resp_begin(&w, corr, err, msg);
	proto_frame_end(&w, start);
	conn_send_pw(c, &w);
}

void respond_ok(struct conn *c, uint32_t corr)
{
	struct pw w;
	pw_init_dyn(&w, 32, 64);
	size_t start = proto_resp_begin(&w, corr, ERR_NONE, NULL);
	proto_frame_end(&w, start);
	conn_send_pw(c, &w);
}

static void respond(struct conn *c, uint16_t api, uint32_t corr, union proto_response *resp,
		    size_t size_hint)
{
	struct pw w;
	pw_init_dyn(&w, size_hint ? size_hint : RESP_INITIAL, c->loop->cfg->max_frame_bytes);
	size_t start = proto_resp_begin(&w, corr, ERR_NONE, NULL);
	if (resp != NULL)
		proto_encode_response(&w, api, resp);
	proto_frame_end(&w, start);
	conn_send_pw(c, &w);
}

struct partition *partition_lookup(struct loop *l, struct pstr name, uint32_t id, uint16_t *err)
{
	struct topic *t = registry_find(&l->reg, name.p, name.len);
	if (t == NULL || t->state != TOPIC_LIVE) {
		*err = ERR_UNKNOWN_TOPIC;
		return NULL;
	}
	if (id >= t->nparts) {
		*err = ERR_UNKNOWN_PARTITION;
		return NULL;
	}
	*err = ERR_NONE;
	return t->parts[id];
}

static void handle_handshake(struct conn *c, uint32_t corr, const struct proto_handshake_req *req)
{
	if (req->min_version > PROTO_VERSION_MAX || req->max_version < PROTO_VERSION_MIN ||
	    req->min_version > req->max_version) {
		respond_error(c, API_HANDSHAKE, corr, ERR_UNSUPPORTED_VERSION,
			      "client speaks protocol versions %u..%u, broker speaks %u..%u",
			      req->min_version, req->max_version, PROTO_VERSION_MIN,
			      PROTO_VERSION_MAX);
		return;
	}
	struct proto_api_range apis[API_COUNT];
	for (uint16_t i = 0; i < API_COUNT; i++)
		apis[i] = (struct proto_api_range){ i, 0, 0 };
	union proto_response resp = { .handshake = {
		.version = req->max_version < PROTO_VERSION_MAX ? req->max_version
								 : PROTO_VERSION_MAX,
		.broker = pstr_c("ringmqd " BROKER_VERSION),
		.napis = API_COUNT,
		.apis = apis,
	} };
	say_debug("connection %s: handshake from '%.*s'", c->peer, req->client_name.len,
		  req->client_name.p);
	respond(c, API_HANDSHAKE, corr, &resp, 0);
}

static struct proto_md_topic md_topic(struct loop *l, struct topic *t, struct arena *a)
{
	struct proto_md_topic mt = { .name = { t->name, t->name_len } };
	mt.parts = arena_alloc(a, t->nparts * sizeof(*mt.parts));
	if (mt.parts == NULL) {
		mt.err = ERR_LIMIT_EXCEEDED;
		mt.msg = pstr_c("too many partitions for one response");
		return mt;
	}
	(void)l;
	mt.nparts = t->nparts;
	for (uint32_t i = 0; i < t->nparts; i++) {
		struct log *log = t->parts[i]->log;
		mt.parts[i] = (struct proto_md_part){ i, log_start(log), log_visible_end(log) };
	}
	return mt;
}

static void handle_metadata(struct conn *c, uint32_t corr, const struct proto_metadata_req *req,
			    struct arena *a)
{
	struct loop *l = c->loop;
	struct registry *r = &l->reg;
	uint32_t n = req->ntopics ? req->ntopics : r->count;
	struct proto_md_topic *ts = arena_alloc(a, (n ? n : 1) * sizeof(*ts));
	if (ts == NULL) {
		respond_error(c, API_METADATA, corr, ERR_LIMIT_EXCEEDED, "request too large");
		return;
	}
	uint32_t k = 0;
	size_t size = RESP_INITIAL;
	if (req->ntopics == 0) {
		for (uint32_t s = 0; s < r->nslots; s++)
			for (struct topic *t = r->slots[s]; t != NULL; t = t->hnext)
				if (t->state == TOPIC_LIVE && k < n) {
					ts[k++] = md_topic(l, t, a);
					size += 32 + t->name_len + 20u * t->nparts;
				}
	} else {
		for (uint32_t i = 0; i < n; i++) {
			struct topic *t = registry_find(r, req->topics[i].p, req->topics[i].len);
			if (t == NULL || t->state != TOPIC_LIVE) {
				ts[k++] = (struct proto_md_topic){
					.name = req->topics[i],
					.err = ERR_UNKNOWN_TOPIC,
					.msg = pstr_c("no such topic"),
				};
				size += 32 + req->topics[i].len;
				continue;
			}
			ts[k++] = md_topic(l, t, a);
			size += 32 + t->name_len + 20u * t->nparts;
		}
	}
	union proto_response resp = { .metadata = { .ntopics = k, .topics = ts } };
	respond(c, API_METADATA, corr, &resp, size);
}

static void handle_list_topics(struct conn *c, uint32_t corr, struct arena *a)
{
	struct registry *r = &c->loop->reg;
	struct proto_topic_brief *ts = arena_alloc(a, (r->count ? r->count : 1) * sizeof(*ts));
	if (ts == NULL) {
		respond_error(c, API_LIST_TOPICS, corr, ERR_LIMIT_EXCEEDED, "too many topics");
		return;
	}
	uint32_t k = 0;
	size_t size = RESP_INITIAL;
	for (uint32_t s = 0; s < r->nslots; s++)
		for (struct topic *t = r->slots[s]; t != NULL; t = t->hnext)
			if (t->state == TOPIC_LIVE) {
				ts[k++] = (struct proto_topic_brief){ { t->name, t->name_len },
								      t->nparts };
				size += 8 + t->name_len;
			}
	union proto_response resp = { .list_topics = { .ntopics = k, .topics = ts } };
	respond(c, API_LIST_TOPICS, corr, &resp, size);
}

static void handle_describe_topic(struct conn *c, uint32_t corr,
				  const struct proto_describe_topic_req *req, struct arena *a)
{
	struct topic *t = registry_find(&c->loop->reg, req->name.p, req->name.len);
	if (t == NULL || t->state != TOPIC_LIVE) {
		respond_error(c, API_DESCRIBE_TOPIC, corr, ERR_UNKNOWN_TOPIC, "topic '%.*s' does not exist",
			      req->name.len, req->name.p);
		return;
	}
	uint32_t nkeys = 0;
	while (topic_config_keys[nkeys] != NULL)
		nkeys++;
	struct proto_kv *kv = arena_alloc(a, nkeys * sizeof(*kv));
	char *vals = arena_alloc(a, (size_t)nkeys * 64);
	struct proto_part_desc *pd = arena_alloc(a, t->nparts * sizeof(*pd));
	if (kv == NULL || vals == NULL || pd == NULL) {
		respond_error(c, API_DESCRIBE_TOPIC, corr, ERR_LIMIT_EXCEEDED, "response too large");
		return;
	}
	for (uint32_t i = 0; i < nkeys; i++) {
		char *v = vals + (size_t)i * 64;
		topic_config_get(&t->cfg, topic_config_keys[i], v, 64);
		kv[i] = (struct proto_kv){ pstr_c(topic_config_keys[i]), pstr_c(v) };
	}
	for (uint32_t i = 0; i < t->nparts; i++) {
		struct log *log = t->parts[i]->log;
		pd[i] = (struct proto_part_desc){
			.partition = i,
			.log_start = log_start(log),
			.log_end = log_visible_end(log),
			.size_bytes = log_size_bytes(log),
			.segments = log_segment_count(log),
		};
	}
	union proto_response resp = { .describe_topic = {
		.name = { t->name, t->name_len },
		.partitions = t->nparts,
		.nconfigs = nkeys,
		.configs = kv,
		.nparts = t->nparts,
		.parts = pd,
	} };
	respond(c, API_DESCRIBE_TOPIC, corr, &resp, RESP_INITIAL + 64u * nkeys + 40u * t->nparts);
}

static void handle_list_offsets(struct conn *c, uint32_t corr,
				const struct proto_list_offsets_req *req, struct arena *a)
{
	struct proto_lo_resp_topic *rt = arena_alloc(a, (req->ntopics ? req->ntopics : 1) *
							    sizeof(*rt));
	if (rt == NULL) {
		respond_error(c, API_LIST_OFFSETS, corr, ERR_LIMIT_EXCEEDED, "request too large");
		return;
	}
	size_t size = RESP_INITIAL;
	for (uint32_t i = 0; i < req->ntopics; i++) {
		const struct proto_lo_topic *qt = &req->topics[i];
		rt[i].name = qt->name;
		rt[i].nparts = qt->nparts;
		rt[i].parts = arena_alloc(a, (qt->nparts ? qt->nparts : 1) * sizeof(*rt[i].parts));
		if (rt[i].parts == NULL) {
			respond_error(c, API_LIST_OFFSETS, corr, ERR_LIMIT_EXCEEDED,
				      "request too large");
			return;
		}
		size += 8 + qt->name.len;
		for (uint32_t k = 0; k < qt->nparts; k++) {
			struct proto_lo_resp_part *rp = &rt[i].parts[k];
			const struct proto_lo_part *qp = &qt->parts[k];
			memset(rp, 0, sizeof(*rp));
			rp->partition = qp->partition;
			size += 64;
			struct partition *p = partition_lookup(c->loop, qt->name, qp->partition,
							       &rp->err);
			if (p == NULL) {
				rp->msg = pstr_c(rp->err == ERR_UNKNOWN_TOPIC ? "no such topic"
									      : "no such partition");
				continue;
			}
			if (qp->spec == PROTO_OFFSET_EARLIEST) {
				rp->offset = log_start(p->log);
			} else if (qp->spec == PROTO_OFFSET_LATEST) {
				rp->offset = log_visible_end(p->log);
			} else if (qp->spec < 0) {
				rp->err = ERR_INVALID_REQUEST;
				rp->msg = pstr_c("spec must be -2 (earliest), -1 (latest) or a timestamp");
			} else {
				int ret = log_offset_for_time(p->log, qp->spec, &rp->offset);
				if (ret != 0) {
					rp->err = err_from_errno(ret);
					rp->msg = pstr_c("cannot search the log by time");
				}
			}
		}
	}
	union proto_response resp = { .list_offsets = { .ntopics = req->ntopics, .topics = rt } };
	respond(c, API_LIST_OFFSETS, corr, &resp, size);
}

static void handle_broker_status(struct conn *c, uint32_t corr)
{
	struct loop *l = c->loop;
	uint64_t disk = 0;
	for (uint32_t s = 0; s < l->reg.nslots; s++)
		for (struct topic *t = l->reg.slots[s]; t != NULL; t = t->hnext)
			if (t->state == TOPIC_LIVE)
				for (uint32_t i = 0; i < t->nparts; i++)
					disk += log_size_bytes(t->parts[i]->log);
	union proto_response resp = { .broker_status = {
		.version = pstr_c("ringmqd " BROKER_VERSION),
		.uptime_ms = (uint64_t)(now_ms() - l->start_ms),
		.topics = l->reg.count,
		.partitions = l->reg.partitions,
		.connections = l->nconns,
		.bytes_on_disk = disk,
		.data_dir = pstr_c(l->cfg->data_dir),
		.messages_in = l->msgs_in,
		.bytes_in = l->bytes_in,
		.bytes_out = l->bytes_out,
	} };
	respond(c, API_BROKER_STATUS, corr, &resp, 0);
}

int handle_frame(struct conn *c, const uint8_t *frame, uint32_t len)
{
	struct loop *l = c->loop;
	struct proto_req_hdr h;
	struct pr body;
	if (proto_req_header(frame, len, &h, &body) != 0) {
		conn_close(c, "malformed request header");
		return 0;
	}
	if (h.api >= API_COUNT) {
		respond_error(c, h.api, h.correlation_id, ERR_UNSUPPORTED_API,
			      "unknown API key %u", h.api);
		return 0;
	}
	if (!proto_api_supported(h.api, h.version)) {
		respond_error(c, h.api, h.correlation_id, ERR_UNSUPPORTED_VERSION,
			      "%s version %u is not supported", proto_api_name(h.api), h.version);
		return 0;
	}
	/* A produce is only taken when all its batches fit in the staging
	 * memory, so no append can fail for room half way through. */
	if (h.api == API_PRODUCE && log_env_staged(l->env) > 0 &&
	    log_env_staged(l->env) + len > log_env_staging_max(l->env))
		return -EAGAIN;

	l->api[h.api].requests++;
	arena_reset(&l->arena);
	union proto_request req;
	int ret = proto_decode_request(h.api, h.version, &body, &l->arena, &req);
	if (ret == -ENOMEM) {
		respond_error(c, h.api, h.correlation_id, ERR_LIMIT_EXCEEDED,
			      "%s request has more elements than the broker accepts at once",
			      proto_api_name(h.api));
		return 0;
	}
	if (ret != 0) {
		respond_error(c, h.api, h.correlation_id, ERR_INVALID_REQUEST,
			      "malformed %s request body", proto_api_name(h.api));
		return 0;
	}
	uint32_t corr = h.correlation_id;
	switch (h.api) {
	case API_HANDSHAKE:
		handle_handshake(c, corr, &req.handshake);
		break;
	case API_METADATA:
		handle_metadata(c, corr, &req.metadata, &l->arena);
		break;
	case API_CREATE_TOPIC:
		handle_create_topic(c, corr, &req.create_topic);
		break;
	case API_DELETE_TOPIC:
		handle_delete_topic(c, corr, &req.delete_topic);
		break;
	case API_ALTER_TOPIC:
		handle_alter_topic(c, corr, &req.alter_topic);
		break;
	case API_LIST_TOPICS:
		handle_list_topics(c, corr, &l->arena);
		break;
	case API_DESCRIBE_TOPIC:
		handle_describe_topic(c, corr, &req.describe_topic, &l->arena);
		break;
	case API_PRODUCE:
		handle_produce(c, corr, &req.produce);
		break;
	case API_FETCH:
		handle_fetch(c, corr, &req.fetch);
		break;
	case API_LIST_OFFSETS:
		handle_list_offsets(c, corr, &req.list_offsets, &l->arena);
		break;
	case API_BROKER_STATUS:
		handle_broker_status(c, corr);
		break;
	default:
		handle_group_request(c, h.api, corr, &req);
		break;
	}
	return 0;
}
