/* admin.c — topic administration, offsets and broker status: synchronous
 * calls over one connection (see ringmq.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/internal.h"

#define ADMIN_ARENA (1u << 20)

struct ringmq_admin {
	struct ringmq_config cfg;
	struct rc_conn conn;
	struct arena arena;
	uint8_t *arena_buf;
};

struct ringmq_admin *ringmq_admin_new(const struct ringmq_config *cfg, char *errstr,
				      size_t errlen)
{
	struct ringmq_admin *a = calloc(1, sizeof(*a));
	if (a != NULL)
		a->arena_buf = malloc(ADMIN_ARENA);
	if (a == NULL || a->arena_buf == NULL) {
		free(a);
		rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
		return NULL;
	}
	if (cfg)
		a->cfg = *cfg;
	else
		rc_config_default(&a->cfg);
	arena_init(&a->arena, a->arena_buf, ADMIN_ARENA);
	rc_conn_init(&a->conn, &a->cfg);
	return a;
}

void ringmq_admin_free(struct ringmq_admin *a)
{
	if (a == NULL)
		return;
	rc_conn_free(&a->conn);
	free(a->arena_buf);
	free(a);
}

/* One call; turns transport and broker failures into an error and a reason. */
static int call(struct ringmq_admin *a, uint16_t api, const union proto_request *req,
		union proto_response *resp, char *errstr, size_t errlen)
{
	struct proto_resp_hdr h;
	int ret = rc_conn_call(&a->conn, api, req, a->cfg.request_timeout_ms, &h, resp, &a->arena);
	if (ret != 0)
		return rc_fail(errstr, errlen, ret, "%s", a->conn.err[0] ? a->conn.err
									: ringmq_strerror(ret));
	if (h.err != ERR_NONE)
		return rc_fail(errstr, errlen, rc_err_from_broker(h.err), "%.*s", (int)h.msg.len,
			       h.msg.p);
	return 0;
}

static struct proto_kv *kvs(const struct ringmq_kv *configs, size_t n)
{
	struct proto_kv *kv = calloc(n ? n : 1, sizeof(*kv));
	for (size_t i = 0; kv && i < n; i++)
		kv[i] = (struct proto_kv){ pstr_c(configs[i].key), pstr_c(configs[i].value) };
	return kv;
}

int ringmq_topic_create(struct ringmq_admin *a, const char *name, uint32_t partitions,
			const struct ringmq_kv *configs, size_t nconfigs, char *errstr,
			size_t errlen)
{
	if (a == NULL || name == NULL || (nconfigs && configs == NULL))
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	struct proto_kv *kv = kvs(configs, nconfigs);
	if (kv == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	union proto_request req = { .create_topic = { pstr_c(name), partitions,
						      (uint32_t)nconfigs, kv } };
	int ret = call(a, API_CREATE_TOPIC, &req, NULL, errstr, errlen);
	free(kv);
	return ret;
}

int ringmq_topic_delete(struct ringmq_admin *a, const char *name, char *errstr, size_t errlen)
{
	if (a == NULL || name == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	union proto_request req = { .delete_topic = { pstr_c(name) } };
	return call(a, API_DELETE_TOPIC, &req, NULL, errstr, errlen);
}

int ringmq_topic_alter(struct ringmq_admin *a, const char *name, uint32_t partitions,
		       const struct ringmq_kv *configs, size_t nconfigs, char *errstr,
		       size_t errlen)
{
	if (a == NULL || name == NULL || (nconfigs && configs == NULL))
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	struct proto_kv *kv = kvs(configs, nconfigs);
	if (kv == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	union proto_request req = { .alter_topic = { pstr_c(name), partitions, (uint32_t)nconfigs,
						     kv } };
	int ret = call(a, API_ALTER_TOPIC, &req, NULL, errstr, errlen);
	free(kv);
	return ret;
}

static char *dupstr(struct pstr s)
{
	char *p = malloc((size_t)s.len + 1);
	if (p) {
		memcpy(p, s.p, s.len);
		p[s.len] = '\0';
	}
	return p;
}

void ringmq_topics_free(struct ringmq_topic_info *topics, size_t n)
{
	if (topics == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(topics[i].name);
		for (size_t k = 0; k < topics[i].nconfigs; k++) {
			free((char *)topics[i].configs[k].key);
			free((char *)topics[i].configs[k].value);
		}
		free(topics[i].configs);
		free(topics[i].parts);
	}
	free(topics);
}

int ringmq_topic_list(struct ringmq_admin *a, struct ringmq_topic_info **topics, size_t *n,
		      char *errstr, size_t errlen)
{
	if (a == NULL || topics == NULL || n == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	union proto_response resp;
	int ret = call(a, API_LIST_TOPICS, NULL, &resp, errstr, errlen);
	if (ret != 0)
		return ret;
	uint32_t k = resp.list_topics.ntopics;
	struct ringmq_topic_info *t = calloc(k ? k : 1, sizeof(*t));
	if (t == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	for (uint32_t i = 0; i < k; i++) {
		t[i].name = dupstr(resp.list_topics.topics[i].name);
		t[i].partitions = resp.list_topics.topics[i].partitions;
		if (t[i].name == NULL) {
			ringmq_topics_free(t, i + 1);
			return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
		}
	}
	*topics = t;
	*n = k;
	return 0;
}

int ringmq_topic_describe(struct ringmq_admin *a, const char *name,
			  struct ringmq_topic_info **topic, char *errstr, size_t errlen)
{
	if (a == NULL || name == NULL || topic == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	union proto_request req = { .describe_topic = { pstr_c(name) } };
	union proto_response resp;
	int ret = call(a, API_DESCRIBE_TOPIC, &req, &resp, errstr, errlen);
	if (ret != 0)
		return ret;
	const struct proto_describe_topic_resp *d = &resp.describe_topic;
	struct ringmq_topic_info *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	t->name = dupstr(d->name);
	t->partitions = d->partitions;
	t->configs = calloc(d->nconfigs ? d->nconfigs : 1, sizeof(*t->configs));
	t->parts = calloc(d->nparts ? d->nparts : 1, sizeof(*t->parts));
	bool oom = t->name == NULL || t->configs == NULL || t->parts == NULL;
	for (uint32_t i = 0; !oom && i < d->nconfigs; i++) {
		t->configs[i].key = dupstr(d->configs[i].key);
		t->configs[i].value = dupstr(d->configs[i].value);
		t->nconfigs = i + 1;
		oom = t->configs[i].key == NULL || t->configs[i].value == NULL;
	}
	if (oom) {
		ringmq_topics_free(t, 1);
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	}
	for (uint32_t i = 0; i < d->nparts; i++) {
		t->parts[i] = (struct ringmq_partition_info){
			.partition = (int32_t)d->parts[i].partition,
			.log_start = (int64_t)d->parts[i].log_start,
			.log_end = (int64_t)d->parts[i].log_end,
			.size_bytes = d->parts[i].size_bytes,
			.segments = d->parts[i].segments,
		};
	}
	*topic = t;
	return 0;
}

int ringmq_list_offset(struct ringmq_admin *a, const char *topic, int32_t partition,
		       int64_t spec, int64_t *offset, char *errstr, size_t errlen)
{
	if (a == NULL || topic == NULL || offset == NULL || partition < 0)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "invalid argument");
	struct proto_lo_part p = { (uint32_t)partition, spec };
	struct proto_lo_topic t = { pstr_c(topic), 1, &p };
	union proto_request req = { .list_offsets = { 1, &t } };
	union proto_response resp;
	int ret = call(a, API_LIST_OFFSETS, &req, &resp, errstr, errlen);
	if (ret != 0)
		return ret;
	if (resp.list_offsets.ntopics != 1 || resp.list_offsets.topics[0].nparts != 1)
		return rc_fail(errstr, errlen, RINGMQ_ERR_PROTOCOL, "unexpected list-offsets reply");
	const struct proto_lo_resp_part *rp = &resp.list_offsets.topics[0].parts[0];
	if (rp->err != ERR_NONE)
		return rc_fail(errstr, errlen, rc_err_from_broker(rp->err), "%.*s",
			       (int)rp->msg.len, rp->msg.p);
	*offset = (int64_t)rp->offset;
	return 0;
}

static void copy_pstr(char *dst, size_t cap, struct pstr s)
{
	size_t n = s.len < cap - 1 ? s.len : cap - 1;
	memcpy(dst, s.p, n);
	dst[n] = '\0';
}

int ringmq_broker_status(struct ringmq_admin *a, struct ringmq_broker_status *st, char *errstr,
			 size_t errlen)
{
	if (a == NULL || st == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	union proto_response resp;
	int ret = call(a, API_BROKER_STATUS, NULL, &resp, errstr, errlen);
	if (ret != 0)
		return ret;
	const struct proto_broker_status_resp *b = &resp.broker_status;
	memset(st, 0, sizeof(*st));
	copy_pstr(st->version, sizeof(st->version), b->version);
	copy_pstr(st->data_dir, sizeof(st->data_dir), b->data_dir);
	st->uptime_ms = b->uptime_ms;
	st->topics = b->topics;
	st->partitions = b->partitions;
	st->connections = b->connections;
	st->bytes_on_disk = b->bytes_on_disk;
	st->messages_in = b->messages_in;
	st->bytes_in = b->bytes_in;
	st->bytes_out = b->bytes_out;
	return 0;
}
