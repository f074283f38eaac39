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

/* ---- groups ---- */

void ringmq_groups_free(struct ringmq_group_info *groups, size_t n)
{
	if (groups == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		struct ringmq_group_info *g = &groups[i];
		free(g->name);
		free(g->state);
		/* A listing gives only the member count: members is NULL. */
		for (size_t k = 0; g->members != NULL && k < g->nmembers; k++) {
			free(g->members[k].member_id);
			free(g->members[k].client_id);
			for (size_t j = 0; j < g->members[k].nowned; j++)
				free((char *)g->members[k].owned[j].topic);
			free(g->members[k].owned);
		}
		free(g->members);
		for (size_t k = 0; k < g->nparts; k++) {
			free(g->parts[k].topic);
			free(g->parts[k].owner);
		}
		free(g->parts);
	}
	free(groups);
}

int ringmq_group_list(struct ringmq_admin *a, struct ringmq_group_info **groups, size_t *n,
		      char *errstr, size_t errlen)
{
	if (a == NULL || groups == NULL || n == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	union proto_response resp;
	int ret = call(a, API_LIST_GROUPS, NULL, &resp, errstr, errlen);
	if (ret != 0)
		return ret;
	uint32_t k = resp.list_groups.ngroups;
	struct ringmq_group_info *g = calloc(k ? k : 1, sizeof(*g));
	if (g == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	for (uint32_t i = 0; i < k; i++) {
		g[i].name = dupstr(resp.list_groups.groups[i].group);
		g[i].state = dupstr(resp.list_groups.groups[i].state);
		g[i].nmembers = resp.list_groups.groups[i].members; /* a count: no array */
		if (g[i].name == NULL || g[i].state == NULL) {
			ringmq_groups_free(g, i + 1);
			return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
		}
	}
	*groups = g;
	*n = k;
	return 0;
}

int ringmq_group_describe(struct ringmq_admin *a, const char *group,
			  struct ringmq_group_info **info, char *errstr, size_t errlen)
{
	if (a == NULL || group == NULL || info == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	union proto_request req = { .describe_group = { pstr_c(group) } };
	union proto_response resp;
	int ret = call(a, API_DESCRIBE_GROUP, &req, &resp, errstr, errlen);
	if (ret != 0)
		return ret;
	const struct proto_describe_group_resp *d = &resp.describe_group;
	struct ringmq_group_info *g = calloc(1, sizeof(*g));
	if (g == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	g->name = dupstr(d->group);
	g->state = dupstr(d->state);
	g->rebalances = d->rebalances;
	g->members = calloc(d->nmembers ? d->nmembers : 1, sizeof(*g->members));
	g->parts = calloc(d->nparts ? d->nparts : 1, sizeof(*g->parts));
	bool oom = !g->name || !g->state || !g->members || !g->parts;
	for (uint32_t i = 0; !oom && i < d->nmembers; i++) {
		struct ringmq_group_member *m = &g->members[i];
		m->member_id = dupstr(d->members[i].member_id);
		m->client_id = dupstr(d->members[i].client_id);
		m->epoch = d->members[i].member_epoch;
		m->last_seen_ms_ago = d->members[i].last_seen_ms_ago;
		m->owned = calloc(d->members[i].nowned ? d->members[i].nowned : 1,
				  sizeof(*m->owned));
		g->nmembers = i + 1;
		oom = !m->member_id || !m->client_id || !m->owned;
		for (uint32_t j = 0; !oom && j < d->members[i].nowned; j++) {
			char *t = dupstr(d->members[i].owned[j].topic);
			m->owned[j] = (struct ringmq_topic_partition){
				t, (int32_t)d->members[i].owned[j].partition, -1 };
			m->nowned = j + 1;
			oom = t == NULL;
		}
	}
	for (uint32_t i = 0; !oom && i < d->nparts; i++) {
		const struct proto_group_part *p = &d->parts[i];
		struct ringmq_group_partition *gp = &g->parts[i];
		gp->topic = dupstr(p->topic);
		gp->owner = dupstr(p->owner);
		gp->partition = (int32_t)p->partition;
		gp->committed = p->committed;
		gp->log_start = (int64_t)p->log_start;
		gp->log_end = (int64_t)p->log_end;
		/* Messages retention deleted cannot be consumed: not lag. */
		int64_t from = p->committed > gp->log_start ? p->committed : gp->log_start;
		gp->lag = gp->log_end > from ? gp->log_end - from : 0;
		g->nparts = i + 1;
		oom = !gp->topic || !gp->owner;
	}
	if (oom) {
		ringmq_groups_free(g, 1);
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	}
	*info = g;
	return 0;
}

int ringmq_group_delete(struct ringmq_admin *a, const char *group, char *errstr, size_t errlen)
{
	if (a == NULL || group == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	union proto_request req = { .delete_group = { pstr_c(group) } };
	return call(a, API_DELETE_GROUP, &req, NULL, errstr, errlen);
}

int ringmq_group_reset_offsets(struct ringmq_admin *a, const char *group, const char *topic,
			       enum ringmq_reset mode, int64_t value,
			       struct ringmq_topic_partition **parts, size_t *n, char *errstr,
			       size_t errlen)
{
	if (a == NULL || group == NULL || topic == NULL || mode > RINGMQ_RESET_TIME ||
	    (mode >= RINGMQ_RESET_OFFSET && value < 0))
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "invalid argument");
	static const uint8_t modes[] = { PROTO_RESET_EARLIEST, PROTO_RESET_LATEST,
					 PROTO_RESET_OFFSET, PROTO_RESET_TIME };
	union proto_request req = { .reset_offsets = { pstr_c(group), pstr_c(topic), modes[mode],
						       value } };
	union proto_response resp;
	int ret = call(a, API_RESET_OFFSETS, &req, &resp, errstr, errlen);
	if (ret != 0 || parts == NULL)
		return ret;
	uint32_t k = resp.reset_offsets.nparts;
	*parts = calloc(k ? k : 1, sizeof(**parts));
	if (*parts == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	for (uint32_t i = 0; i < k; i++)
		(*parts)[i] = (struct ringmq_topic_partition){
			dupstr(resp.reset_offsets.parts[i].topic),
			(int32_t)resp.reset_offsets.parts[i].partition,
			resp.reset_offsets.parts[i].offset };
	if (n)
		*n = k;
	return 0;
}
