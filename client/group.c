/* group.c — a consumer as a member of a consumer group: join, heartbeats,
 * applying the broker's assignment, and commits (see ringmq.h).
 *
 * Everything runs inside poll() on the consumer's one connection: a
 * heartbeat goes out when due and its reply says which partitions the member
 * may hold. Partitions taken away are committed (what poll returned) and
 * released before the next heartbeat tells the broker so, which is what
 * lets the broker hand them to another member: a graceful rebalance
 * delivers nothing twice. New partitions start at the group's committed
 * offset, or per auto.offset.reset when there is none.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/consumer_impl.h"

struct gtp {
	char *topic;
	uint32_t partition;
};

struct cgroup {
	char name[256];
	char member_id[64];
	uint32_t epoch;
	char **topics;
	size_t ntopics;
	uint32_t hb_ms;
	int64_t next_hb_ms;
	uint32_t hb_corr;          /* heartbeat in flight, 0 if none */
	uint32_t commit_corr;      /* async commit in flight, 0 if none */
	struct gtp *committing;    /* what that commit covers */
	int64_t *committing_off;
	size_t ncommitting;
	int64_t next_autocommit_ms;
	bool commit_wanted;   /* commit_async while one was in flight */
	struct gtp *target;        /* the broker's latest word, not applied yet */
	size_t ntarget;
	bool have_target;
	bool rejoin;               /* membership lost: join anew */
	int err;                   /* to report from the next poll */
	char errmsg[256];
};

static void gtps_free(struct gtp *t, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(t[i].topic);
	free(t);
}

static void set_err(struct cgroup *g, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(struct cgroup *g, int err, const char *fmt, ...)
{
	if (g->err != 0)
		return; /* the first one is the one to report */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(g->errmsg, sizeof(g->errmsg), fmt, ap);
	va_end(ap);
	g->err = err;
}

static void rebalance_cb(struct ringmq_consumer *c, int event, const struct gtp *tps, size_t n)
{
	if (c->cfg.rebalance_cb == NULL || n == 0)
		return;
	struct ringmq_topic_partition *out = calloc(n, sizeof(*out));
	if (out == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		struct cpart *cp = consumer_find_part(c, tps[i].topic, strlen(tps[i].topic),
						      tps[i].partition);
		out[i] = (struct ringmq_topic_partition){ tps[i].topic, (int32_t)tps[i].partition,
							  cp ? cp->next : -1 };
	}
	c->cfg.rebalance_cb(event, out, n, c->cfg.rebalance_opaque);
	free(out);
}

static int join(struct ringmq_consumer *c, char *errstr, size_t errlen)
{
	struct cgroup *g = c->grp;
	struct pstr *topics = calloc(g->ntopics, sizeof(*topics));
	if (topics == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	for (size_t i = 0; i < g->ntopics; i++)
		topics[i] = pstr_c(g->topics[i]);
	union proto_request req = { .join_group = { pstr_c(g->name), pstr_c(""),
						    pstr_c(c->cfg.client_id),
						    (uint32_t)c->cfg.session_timeout_ms,
						    (uint32_t)g->ntopics, topics } };
	union proto_response resp;
	int ret = consumer_call(c, API_JOIN_GROUP, &req, &resp, errstr, errlen);
	free(topics);
	if (ret != 0)
		return ret;
	snprintf(g->member_id, sizeof(g->member_id), "%.*s", (int)resp.join_group.member_id.len,
		 resp.join_group.member_id.p);
	g->epoch = resp.join_group.member_epoch;
	g->hb_ms = resp.join_group.heartbeat_ms ? resp.join_group.heartbeat_ms : 100;
	g->next_hb_ms = 0; /* at once: the first reply carries the assignment */
	g->rejoin = false;
	return 0;
}

int group_subscribe(struct ringmq_consumer *c, const char *group, const char *const *topics,
		    size_t n, char *errstr, size_t errlen)
{
	if (group == NULL || *group == '\0' || strlen(group) > 200 || n == 0 || topics == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
			       "a group name (1 to 200 characters) and at least one topic");
	if (c->grp != NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
			       "already subscribed to group %s", c->grp->name);
	struct cgroup *g = calloc(1, sizeof(*g));
	if (g == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	snprintf(g->name, sizeof(g->name), "%s", group);
	g->topics = calloc(n, sizeof(*g->topics));
	for (size_t i = 0; g->topics && i < n; i++) {
		if (topics[i] == NULL || (g->topics[i] = strdup(topics[i])) == NULL)
			break;
		g->ntopics++;
	}
	if (g->ntopics != n) {
		for (size_t i = 0; i < g->ntopics; i++)
			free(g->topics[i]);
		free(g->topics);
		free(g);
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "a topic is NULL");
	}
	while (c->nparts > 0)
		consumer_drop_part(c, c->nparts - 1); /* the group decides now */
	c->grp = g;
	g->next_autocommit_ms = rc_now_ms() + c->cfg.auto_commit_interval_ms;
	int ret = join(c, errstr, errlen);
	if (ret != 0) {
		c->grp = NULL;
		for (size_t i = 0; i < g->ntopics; i++)
			free(g->topics[i]);
		free(g->topics);
		free(g);
	}
	return ret;
}

void group_fetch_identity(struct ringmq_consumer *c, struct pstr *group, struct pstr *member,
			  uint32_t *epoch)
{
	if (c->grp == NULL)
		return;
	*group = pstr_c(c->grp->name);
	*member = pstr_c(c->grp->member_id);
	*epoch = c->grp->epoch;
}

void group_forget_inflight(struct ringmq_consumer *c)
{
	struct cgroup *g = c->grp;
	if (g == NULL)
		return;
	if (g->hb_corr != 0) {
		g->hb_corr = 0;
		g->next_hb_ms = 0;
	}
	g->commit_corr = 0; /* its partitions are simply committed again later */
}

bool group_waiting(struct ringmq_consumer *c)
{
	return c->grp->hb_corr != 0 || c->grp->commit_corr != 0;
}

int group_next_due(struct ringmq_consumer *c)
{
	struct cgroup *g = c->grp;
	if (g->rejoin || g->have_target)
		return 0;
	int64_t now = rc_now_ms(), due = INT64_MAX;
	if (g->hb_corr == 0)
		due = g->next_hb_ms;
	if (g->commit_corr == 0 && g->commit_wanted)
		return 0;
	if (c->cfg.auto_commit && g->commit_corr == 0 && g->next_autocommit_ms < due)
		due = g->next_autocommit_ms;
	if (due == INT64_MAX)
		return 100; /* replies pending: look again soon */
	return due <= now ? 0 : (int)(due - now);
}

/* ---- commits ---- */

/* The position moved (messages returned, a seek, a reset) since the last
 * commit: != rather than >, since a seek back is committed too. */
static bool moved(const struct cpart *cp)
{
	return cp->returned >= 0 && cp->returned != cp->committed;
}

/* The partitions whose position moved since they were last committed. */
static size_t uncommitted(struct ringmq_consumer *c, struct proto_commit_part **out)
{
	size_t n = 0;
	*out = calloc(c->nparts ? c->nparts : 1, sizeof(**out));
	if (*out == NULL)
		return 0;
	for (size_t i = 0; i < c->nparts; i++) {
		struct cpart *cp = &c->parts[i];
		if (moved(cp))
			(*out)[n++] = (struct proto_commit_part){ pstr_c(cp->topic), cp->partition,
								  (uint64_t)cp->returned };
	}
	return n;
}

static int commit_sync(struct ringmq_consumer *c, struct proto_commit_part *parts, size_t n,
		       char *errstr, size_t errlen)
{
	struct cgroup *g = c->grp;
	if (n == 0)
		return 0;
	union proto_request req = { .commit_offsets = { pstr_c(g->name), pstr_c(g->member_id),
							g->epoch, (uint32_t)n, parts } };
	union proto_response resp;
	int ret = consumer_call(c, API_COMMIT_OFFSETS, &req, &resp, errstr, errlen);
	if (ret != 0) {
		if (ret == RINGMQ_ERR_UNKNOWN_MEMBER || ret == RINGMQ_ERR_FENCED_MEMBER)
			g->rejoin = true;
		return ret;
	}
	for (uint32_t i = 0; i < resp.commit_offsets.nparts; i++) {
		const struct proto_tp_result *r = &resp.commit_offsets.parts[i];
		if (r->err != ERR_NONE) {
			if (ret == 0)
				ret = rc_fail(errstr, errlen, rc_err_from_broker(r->err),
					      "commit of %.*s[%u] refused: %.*s", (int)r->topic.len,
					      r->topic.p, r->partition, (int)r->msg.len, r->msg.p);
			continue;
		}
		struct cpart *cp = consumer_find_part(c, r->topic.p, r->topic.len, r->partition);
		for (size_t k = 0; cp && k < n; k++)
			if (parts[k].partition == r->partition && pstr_eq(r->topic, cp->topic))
				cp->committed = (int64_t)parts[k].offset;
	}
	return ret;
}

static void commit_async(struct ringmq_consumer *c)
{
	struct cgroup *g = c->grp;
	struct proto_commit_part *parts;
	size_t n = uncommitted(c, &parts);
	if (n == 0) {
		free(parts);
		return;
	}
	gtps_free(g->committing, g->ncommitting);
	free(g->committing_off);
	g->committing = calloc(n, sizeof(*g->committing));
	g->committing_off = calloc(n, sizeof(*g->committing_off));
	g->ncommitting = 0;
	for (size_t i = 0; g->committing && g->committing_off && i < n; i++) {
		g->committing[i].topic = strndup(parts[i].topic.p, parts[i].topic.len);
		g->committing[i].partition = parts[i].partition;
		g->committing_off[i] = (int64_t)parts[i].offset;
		g->ncommitting++;
	}
	union proto_request req = { .commit_offsets = { pstr_c(g->name), pstr_c(g->member_id),
							g->epoch, (uint32_t)g->ncommitting, parts } };
	g->commit_corr = rc_conn_queue(&c->conn, API_COMMIT_OFFSETS, &req);
	free(parts);
	rc_conn_send_some(&c->conn);
}

int ringmq_consumer_commit(struct ringmq_consumer *c, char *errstr, size_t errlen)
{
	if (c == NULL || c->grp == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "not subscribed to a group");
	struct proto_commit_part *parts;
	size_t n = uncommitted(c, &parts);
	int ret = commit_sync(c, parts, n, errstr, errlen);
	free(parts);
	return ret;
}

int ringmq_consumer_commit_offsets(struct ringmq_consumer *c,
				   const struct ringmq_topic_partition *tps, size_t n, char *errstr,
				   size_t errlen)
{
	if (c == NULL || c->grp == NULL || (n && tps == NULL))
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "not subscribed to a group");
	struct proto_commit_part *parts = calloc(n ? n : 1, sizeof(*parts));
	if (parts == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	for (size_t i = 0; i < n; i++) {
		if (tps[i].topic == NULL || tps[i].partition < 0 || tps[i].offset < 0) {
			free(parts);
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
				       "offset %zu: a topic, a partition and an offset >= 0", i);
		}
		parts[i] = (struct proto_commit_part){ pstr_c(tps[i].topic),
						       (uint32_t)tps[i].partition,
						       (uint64_t)tps[i].offset };
	}
	int ret = commit_sync(c, parts, n, errstr, errlen);
	free(parts);
	return ret;
}

int ringmq_consumer_commit_async(struct ringmq_consumer *c, char *errstr, size_t errlen)
{
	if (c == NULL || c->grp == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "not subscribed to a group");
	if (c->grp->commit_corr == 0 && rc_conn_up(&c->conn))
		commit_async(c);
	else
		c->grp->commit_wanted = true; /* as soon as poll can, auto-commit or not */
	return 0;
}

/* ---- replies ---- */

static bool same_as_parts(struct ringmq_consumer *c, const struct proto_heartbeat_resp *hb)
{
	if (hb->nassigned != c->nparts)
		return false;
	for (uint32_t i = 0; i < hb->nassigned; i++)
		if (consumer_find_part(c, hb->assigned[i].topic.p, hb->assigned[i].topic.len,
				       hb->assigned[i].partition) == NULL)
			return false;
	return true;
}

bool group_take_reply(struct ringmq_consumer *c, const struct proto_resp_hdr *h,
		      struct pr *body)
{
	struct cgroup *g = c->grp;
	if (g->hb_corr != 0 && h->correlation_id == g->hb_corr) {
		g->hb_corr = 0;
		g->next_hb_ms = rc_now_ms() + g->hb_ms;
		if (h->err == ERR_UNKNOWN_MEMBER || h->err == ERR_FENCED_MEMBER) {
			g->rejoin = true;
			return true;
		}
		union proto_response resp;
		arena_reset(&c->arena);
		if (h->err != ERR_NONE ||
		    proto_decode_response(API_HEARTBEAT, 0, body, &c->arena, &resp) != 0) {
			set_err(g, h->err ? rc_err_from_broker(h->err) : RINGMQ_ERR_PROTOCOL,
				"group %s: heartbeat failed: %.*s", g->name, (int)h->msg.len,
				h->msg.p);
			return true;
		}
		g->epoch = resp.heartbeat.member_epoch;
		g->hb_ms = resp.heartbeat.heartbeat_ms ? resp.heartbeat.heartbeat_ms : 1000;
		g->next_hb_ms = rc_now_ms() + g->hb_ms;
		if (same_as_parts(c, &resp.heartbeat))
			return true;
		/* Copy it: the frame is gone once more bytes are read. */
		gtps_free(g->target, g->ntarget);
		g->target = calloc(resp.heartbeat.nassigned ? resp.heartbeat.nassigned : 1,
				   sizeof(*g->target));
		g->ntarget = 0;
		for (uint32_t i = 0; g->target && i < resp.heartbeat.nassigned; i++) {
			const struct proto_tp *tp = &resp.heartbeat.assigned[i];
			g->target[i].topic = strndup(tp->topic.p, tp->topic.len);
			g->target[i].partition = tp->partition;
			if (g->target[i].topic == NULL)
				break;
			g->ntarget++;
		}
		g->have_target = g->ntarget == resp.heartbeat.nassigned;
		return true;
	}
	if (g->commit_corr != 0 && h->correlation_id == g->commit_corr) {
		g->commit_corr = 0;
		union proto_response resp;
		arena_reset(&c->arena);
		if (h->err == ERR_UNKNOWN_MEMBER || h->err == ERR_FENCED_MEMBER)
			g->rejoin = true;
		if (h->err != ERR_NONE ||
		    proto_decode_response(API_COMMIT_OFFSETS, 0, body, &c->arena, &resp) != 0) {
			set_err(g, h->err ? rc_err_from_broker(h->err) : RINGMQ_ERR_PROTOCOL,
				"group %s: commit failed: %.*s", g->name, (int)h->msg.len, h->msg.p);
			return true;
		}
		for (uint32_t i = 0; i < resp.commit_offsets.nparts; i++) {
			const struct proto_tp_result *r = &resp.commit_offsets.parts[i];
			if (r->err != ERR_NONE) {
				set_err(g, rc_err_from_broker(r->err),
					"commit of %.*s[%u] refused: %.*s", (int)r->topic.len,
					r->topic.p, r->partition, (int)r->msg.len, r->msg.p);
				continue;
			}
			struct cpart *cp = consumer_find_part(c, r->topic.p, r->topic.len,
							      r->partition);
			for (size_t k = 0; cp && k < g->ncommitting; k++)
				if (g->committing[k].partition == r->partition &&
				    strcmp(g->committing[k].topic, cp->topic) == 0 &&
				    g->committing_off[k] > cp->committed)
					cp->committed = g->committing_off[k];
		}
		return true;
	}
	return false;
}

/* ---- applying an assignment ---- */

static bool in_target(const struct cgroup *g, const char *topic, uint32_t partition)
{
	for (size_t i = 0; i < g->ntarget; i++)
		if (g->target[i].partition == partition && strcmp(g->target[i].topic, topic) == 0)
			return true;
	return false;
}

/* Where a newly assigned partition starts: the committed offset, else
 * auto.offset.reset. */
static int start_offsets(struct ringmq_consumer *c, struct gtp *add, size_t n, int64_t *out,
			 bool *from_commit, char *errstr, size_t errlen)
{
	struct cgroup *g = c->grp;
	struct proto_tp *tps = calloc(n, sizeof(*tps));
	if (tps == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	for (size_t i = 0; i < n; i++)
		tps[i] = (struct proto_tp){ pstr_c(add[i].topic), add[i].partition };
	union proto_request req = { .fetch_offsets = { pstr_c(g->name), (uint32_t)n, tps } };
	union proto_response resp;
	int ret = consumer_call(c, API_FETCH_OFFSETS, &req, &resp, errstr, errlen);
	free(tps);
	if (ret != 0)
		return ret;
	for (size_t i = 0; i < n; i++) {
		out[i] = -1;
		for (uint32_t k = 0; k < resp.fetch_offsets.nparts; k++) {
			const struct proto_committed *pc = &resp.fetch_offsets.parts[k];
			if (pc->partition == add[i].partition && pstr_eq(pc->topic, add[i].topic))
				out[i] = pc->offset;
		}
	}
	for (size_t i = 0; i < n; i++) {
		from_commit[i] = out[i] >= 0;
		if (out[i] >= 0)
			continue;
		struct proto_lo_part p = { add[i].partition,
					   c->cfg.offset_reset_latest ? PROTO_OFFSET_LATEST
								      : PROTO_OFFSET_EARLIEST };
		struct proto_lo_topic t = { pstr_c(add[i].topic), 1, &p };
		union proto_request lreq = { .list_offsets = { 1, &t } };
		ret = consumer_call(c, API_LIST_OFFSETS, &lreq, &resp, errstr, errlen);
		if (ret != 0)
			return ret;
		if (resp.list_offsets.ntopics != 1 || resp.list_offsets.topics[0].nparts != 1 ||
		    resp.list_offsets.topics[0].parts[0].err != ERR_NONE)
			return rc_fail(errstr, errlen, RINGMQ_ERR_PROTOCOL,
				       "cannot find where %s[%u] starts", add[i].topic,
				       add[i].partition);
		out[i] = (int64_t)resp.list_offsets.topics[0].parts[0].offset;
	}
	return 0;
}

static int apply_target(struct ringmq_consumer *c, char *errstr, size_t errlen)
{
	struct cgroup *g = c->grp;
	/* Taken away: commit what poll returned, tell the application, let go. */
	struct gtp *gone = calloc(c->nparts ? c->nparts : 1, sizeof(*gone));
	size_t ngone = 0;
	struct proto_commit_part *parts = calloc(c->nparts ? c->nparts : 1, sizeof(*parts));
	size_t nparts = 0;
	if (gone == NULL || parts == NULL) {
		free(gone);
		free(parts);
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	}
	for (size_t i = 0; i < c->nparts; i++) {
		struct cpart *cp = &c->parts[i];
		if (in_target(g, cp->topic, cp->partition))
			continue;
		gone[ngone++] = (struct gtp){ cp->topic, cp->partition };
		if (moved(cp))
			parts[nparts++] = (struct proto_commit_part){ pstr_c(cp->topic),
								      cp->partition,
								      (uint64_t)cp->returned };
	}
	int ret = commit_sync(c, parts, nparts, errstr, errlen);
	free(parts);
	if (ret != 0 && !g->rejoin) {
		free(gone);
		return ret; /* try again next poll, still holding them */
	}
	rebalance_cb(c, RINGMQ_REVOKED, gone, ngone);
	for (size_t k = 0; k < ngone; k++) {
		for (size_t i = 0; i < c->nparts; i++) {
			if (c->parts[i].partition == gone[k].partition &&
			    strcmp(c->parts[i].topic, gone[k].topic) == 0) {
				consumer_drop_part(c, i);
				break;
			}
		}
	}
	free(gone);
	/* Given: start at the committed offsets. */
	struct gtp *add = calloc(g->ntarget ? g->ntarget : 1, sizeof(*add));
	int64_t *off = calloc(g->ntarget ? g->ntarget : 1, sizeof(*off));
	bool *from_commit = calloc(g->ntarget ? g->ntarget : 1, sizeof(*from_commit));
	size_t nadd = 0;
	ret = add && off && from_commit ? 0 : RINGMQ_ERR_NO_MEMORY;
	for (size_t i = 0; ret == 0 && i < g->ntarget; i++)
		if (consumer_find_part(c, g->target[i].topic, strlen(g->target[i].topic),
				       g->target[i].partition) == NULL)
			add[nadd++] = g->target[i];
	if (ret == 0 && nadd > 0)
		ret = start_offsets(c, add, nadd, off, from_commit, errstr, errlen);
	for (size_t i = 0; ret == 0 && i < nadd; i++) {
		ret = consumer_add_part(c, add[i].topic, add[i].partition, off[i]);
		/* A start taken from auto.offset.reset is committed like any
		 * position: else a group that read nothing before stopping would
		 * start from the end again next time and skip what came between. */
		if (ret == 0 && from_commit[i])
			c->parts[c->nparts - 1].committed = off[i];
		else if (ret == 0)
			c->parts[c->nparts - 1].returned = off[i];
	}
	if (ret == 0)
		rebalance_cb(c, RINGMQ_ASSIGNED, add, nadd);
	free(add);
	free(off);
	free(from_commit);
	if (ret == 0) {
		g->have_target = false;
		g->next_hb_ms = 0; /* tell the broker what it holds now */
	}
	return ret;
}

static void lose_all(struct ringmq_consumer *c)
{
	/* Membership is gone: the partitions may already be another member's,
	 * so nothing can be committed; the application hears they are lost. */
	size_t n = c->nparts;
	struct gtp *lost = calloc(n ? n : 1, sizeof(*lost));
	for (size_t i = 0; lost && i < n; i++)
		lost[i] = (struct gtp){ c->parts[i].topic, c->parts[i].partition };
	if (lost)
		rebalance_cb(c, RINGMQ_LOST, lost, n);
	free(lost);
	while (c->nparts > 0)
		consumer_drop_part(c, c->nparts - 1);
}

int group_poll(struct ringmq_consumer *c, char *errstr, size_t errlen)
{
	struct cgroup *g = c->grp;
	if (g->err != 0) {
		int err = g->err;
		g->err = 0;
		return rc_fail(errstr, errlen, err, "%s", g->errmsg);
	}
	if (g->rejoin) {
		lose_all(c);
		g->have_target = false;
		int ret = join(c, errstr, errlen);
		if (ret != 0)
			return ret;
	}
	if (g->have_target) {
		int ret = apply_target(c, errstr, errlen);
		if (ret != 0)
			return ret;
	}
	if (!rc_conn_up(&c->conn))
		return 0;
	int64_t now = rc_now_ms();
	if (g->hb_corr == 0 && now >= g->next_hb_ms) {
		struct proto_tp *owned = calloc(c->nparts ? c->nparts : 1, sizeof(*owned));
		if (owned != NULL) {
			for (size_t i = 0; i < c->nparts; i++)
				owned[i] = (struct proto_tp){ pstr_c(c->parts[i].topic),
							      c->parts[i].partition };
			union proto_request req = { .heartbeat = { pstr_c(g->name),
								   pstr_c(g->member_id), g->epoch,
								   (uint32_t)c->nparts, owned } };
			g->hb_corr = rc_conn_queue(&c->conn, API_HEARTBEAT, &req);
			free(owned);
			rc_conn_send_some(&c->conn);
		}
	}
	if (g->commit_corr == 0 &&
	    (g->commit_wanted || (c->cfg.auto_commit && now >= g->next_autocommit_ms))) {
		g->commit_wanted = false;
		if (c->cfg.auto_commit)
			g->next_autocommit_ms = now + c->cfg.auto_commit_interval_ms;
		commit_async(c);
	}
	return 0;
}

void group_close(struct ringmq_consumer *c)
{
	struct cgroup *g = c->grp;
	if (!g->rejoin) {
		/* Commit what was consumed, then leave so the partitions move at
		 * once instead of after the session timeout. */
		struct proto_commit_part *parts;
		size_t n = uncommitted(c, &parts);
		commit_sync(c, parts, n, NULL, 0);
		free(parts);
		union proto_request req = { .leave_group = { pstr_c(g->name),
							     pstr_c(g->member_id) } };
		consumer_call(c, API_LEAVE_GROUP, &req, NULL, NULL, 0);
	}
	for (size_t i = 0; i < g->ntopics; i++)
		free(g->topics[i]);
	free(g->topics);
	gtps_free(g->target, g->ntarget);
	gtps_free(g->committing, g->ncommitting);
	free(g->committing_off);
	free(g);
	c->grp = NULL;
}

int ringmq_consumer_subscribe(struct ringmq_consumer *c, const char *group,
			      const char *const *topics, size_t n, char *errstr, size_t errlen)
{
	if (c == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL consumer");
	return group_subscribe(c, group, topics, n, errstr, errlen);
}

int ringmq_consumer_close(struct ringmq_consumer *c, char *errstr, size_t errlen)
{
	if (c == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL consumer");
	if (c->grp == NULL)
		return 0;
	struct proto_commit_part *parts;
	size_t n = uncommitted(c, &parts);
	int ret = commit_sync(c, parts, n, errstr, errlen);
	free(parts);
	group_close(c);
	return ret;
}

int ringmq_consumer_assignment(struct ringmq_consumer *c, struct ringmq_topic_partition **tps,
			       size_t *n)
{
	if (c == NULL || tps == NULL || n == NULL)
		return RINGMQ_ERR_INVALID_ARG;
	*tps = calloc(c->nparts ? c->nparts : 1, sizeof(**tps));
	if (*tps == NULL)
		return RINGMQ_ERR_NO_MEMORY;
	for (size_t i = 0; i < c->nparts; i++)
		(*tps)[i] = (struct ringmq_topic_partition){ c->parts[i].topic,
							     (int32_t)c->parts[i].partition,
							     c->parts[i].returned >= 0
								     ? c->parts[i].returned
								     : c->parts[i].next };
	*n = c->nparts;
	return 0;
}
