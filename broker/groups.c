/* groups.c — the consumer-group coordinator: membership, broker-side
 * incremental assignment, commits and the group admin requests.
 *
 * Every group receives every message of its topics (fan-out); inside a group
 * each partition belongs to one member at a time (load sharing).
 *
 * Assignment is computed here, not by a client leader, and is incremental:
 * when members come or go, only the partitions that must move, move
 * (rebalance()). A member learns what it may hold from each heartbeat reply
 * and reports what it holds in each heartbeat. Invariants:
 * (G1) a partition is granted to a member only when nobody owns it: its old
 *      owner released it (its heartbeat no longer lists it, after it
 *      committed) or its session expired; so two members never own one
 *      partition, and members keeping theirs never stop;
 * (G2) a member's epoch grows whenever its target assignment changes; a
 *      commit or fetch must come from the partition's owner with an epoch
 *      no older than the one the partition was granted at and no newer than
 *      the member's (else FENCED_MEMBER; an expired member gets
 *      UNKNOWN_MEMBER), so a zombie cannot commit or read;
 * (G3) committed offsets change only when the offsets store says the commit
 *      is durable.
 * Loop thread only.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "broker/broker.h"
#include "common/say.h"

#define SESSION_MIN_MS 1000u
#define SESSION_MAX_MS 300000u
#define SESSION_DEFAULT_MS 10000u
#define HEARTBEAT_FAST_MS 50u  /* while a handover involving the member is pending */
#define MEMBERS_MAX 1000u      /* per group */
#define GROUPS_MAX 10000u
#define SUBSCRIPTION_MAX 1000u /* topics per member */

struct gmember {
	struct gmember *next;
	char id[64];
	char client_id[64];
	uint32_t epoch;
	uint32_t session_ms;
	int64_t last_seen_ms;
	char **topics;
	uint32_t ntopics;
	uint32_t target_count; /* partitions targeted at it, for balancing */
};

struct gpart {
	char *topic;
	uint32_t partition;
	int64_t committed;       /* -1: nothing committed (G3) */
	struct gmember *owner;   /* (G1) */
	struct gmember *target;  /* who should own it */
	uint32_t grant_epoch;    /* owner's epoch when it was granted (G2) */
	bool subscribed;         /* some member reads its topic */
};

struct group {
	struct group *hnext;
	char name[TOPIC_NAME_MAX + 1];
	struct gmember *members;
	uint32_t nmembers;
	struct gpart *parts;
	uint32_t nparts, cap;
	uint64_t rebalances;
	bool dirty;              /* membership, subscriptions or topics changed */
	uint32_t pending_commits; /* commits in flight: keep the group */
	bool admin_pending;      /* a delete or reset waits for the store: no joins,
				    no member-less commits until it is done */
};

struct groups {
	struct group **slots;
	uint32_t nslots, count;
};

static uint32_t hash(const char *s, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)s[i];
		h *= 16777619u;
	}
	return h;
}

int groups_init(struct loop *l)
{
	struct groups *gs = calloc(1, sizeof(*gs));
	if (gs == NULL)
		return -ENOMEM;
	gs->nslots = 256;
	gs->slots = calloc(gs->nslots, sizeof(*gs->slots));
	if (gs->slots == NULL) {
		free(gs);
		return -ENOMEM;
	}
	l->groups = gs;
	return 0;
}

static void member_free(struct gmember *m)
{
	for (uint32_t i = 0; i < m->ntopics; i++)
		free(m->topics[i]);
	free(m->topics);
	free(m);
}

static void group_free(struct group *g)
{
	for (struct gmember *m = g->members, *n; m; m = n) {
		n = m->next;
		member_free(m);
	}
	for (uint32_t i = 0; i < g->nparts; i++)
		free(g->parts[i].topic);
	free(g->parts);
	free(g);
}

void groups_fini(struct loop *l)
{
	struct groups *gs = l->groups;
	if (gs == NULL)
		return;
	for (uint32_t s = 0; s < gs->nslots; s++)
		for (struct group *g = gs->slots[s], *n; g; g = n) {
			n = g->hnext;
			group_free(g);
		}
	free(gs->slots);
	free(gs);
	l->groups = NULL;
}

static struct group *group_find(struct groups *gs, const char *name, size_t len)
{
	for (struct group *g = gs->slots[hash(name, len) & (gs->nslots - 1)]; g; g = g->hnext)
		if (strlen(g->name) == len && memcmp(g->name, name, len) == 0)
			return g;
	return NULL;
}

static struct group *group_get(struct groups *gs, const char *name, size_t len)
{
	struct group *g = group_find(gs, name, len);
	if (g != NULL || gs->count >= GROUPS_MAX)
		return g;
	g = calloc(1, sizeof(*g));
	if (g == NULL)
		return NULL;
	memcpy(g->name, name, len);
	uint32_t b = hash(name, len) & (gs->nslots - 1);
	g->hnext = gs->slots[b];
	gs->slots[b] = g;
	gs->count++;
	return g;
}

static void group_remove(struct groups *gs, struct group *g)
{
	uint32_t b = hash(g->name, strlen(g->name)) & (gs->nslots - 1);
	for (struct group **p = &gs->slots[b]; *p; p = &(*p)->hnext) {
		if (*p == g) {
			*p = g->hnext;
			gs->count--;
			break;
		}
	}
	group_free(g);
}

static struct gpart *part_find(struct group *g, const char *topic, size_t len, uint32_t part)
{
	for (uint32_t i = 0; i < g->nparts; i++)
		if (g->parts[i].partition == part && strlen(g->parts[i].topic) == len &&
		    memcmp(g->parts[i].topic, topic, len) == 0)
			return &g->parts[i];
	return NULL;
}

static struct gpart *part_get(struct group *g, const char *topic, size_t len, uint32_t part)
{
	struct gpart *p = part_find(g, topic, len, part);
	if (p != NULL)
		return p;
	if (g->nparts == g->cap) {
		uint32_t cap = g->cap ? g->cap * 2 : 16;
		struct gpart *n = realloc(g->parts, cap * sizeof(*n));
		if (n == NULL)
			return NULL;
		g->parts = n;
		g->cap = cap;
	}
	p = &g->parts[g->nparts];
	memset(p, 0, sizeof(*p));
	p->topic = strndup(topic, len);
	if (p->topic == NULL)
		return NULL;
	p->partition = part;
	p->committed = -1;
	g->nparts++;
	return p;
}

static struct gmember *member_find(struct group *g, struct pstr id)
{
	for (struct gmember *m = g->members; m; m = m->next)
		if (pstr_eq(id, m->id))
			return m;
	return NULL;
}

static bool subscribes(const struct gmember *m, const char *topic)
{
	for (uint32_t i = 0; i < m->ntopics; i++)
		if (strcmp(m->topics[i], topic) == 0)
			return true;
	return false;
}

/* ---- assignment ---- */

/* Recomputes targets: keep what can be kept, take from members over their
 * share, give unowned partitions to the least loaded eligible member.
 * Bumps the epoch of every member whose target changed (G2). */
static void rebalance(struct loop *l, struct group *g)
{
	g->dirty = false;
	/* Partitions of every subscribed topic that exists now. */
	for (uint32_t i = 0; i < g->nparts; i++)
		g->parts[i].subscribed = false;
	uint32_t total = 0;
	for (struct gmember *m = g->members; m; m = m->next) {
		for (uint32_t k = 0; k < m->ntopics; k++) {
			struct topic *t = registry_find(&l->reg, m->topics[k], strlen(m->topics[k]));
			if (t == NULL || t->state != TOPIC_LIVE)
				continue;
			for (uint32_t i = 0; i < t->nparts; i++) {
				struct gpart *p = part_get(g, t->name, t->name_len, i);
				if (p != NULL && !p->subscribed) {
					p->subscribed = true;
					total++;
				}
			}
		}
	}
	if (g->nmembers == 0)
		return;
	uint32_t share = (total + g->nmembers - 1) / g->nmembers;
	uint32_t nm = 0;
	struct gmember **before = calloc(g->nparts ? g->nparts : 1, sizeof(*before));
	if (before == NULL)
		return;
	for (struct gmember *m = g->members; m; m = m->next) {
		m->target_count = 0;
		nm++;
	}
	/* Keep: a target (or, failing that, the owner) that may still have it. */
	for (uint32_t i = 0; i < g->nparts; i++) {
		struct gpart *p = &g->parts[i];
		before[i] = p->target;
		if (p->target == NULL && p->owner != NULL)
			p->target = p->owner;
		if (p->target != NULL && (!p->subscribed || !subscribes(p->target, p->topic)))
			p->target = NULL;
		if (p->target != NULL && p->target->target_count < share)
			p->target->target_count++;
		else if (p->target != NULL)
			p->target = NULL; /* over its share: it moves */
	}
	/* Give the rest to the least loaded member that reads the topic. */
	for (uint32_t i = 0; i < g->nparts; i++) {
		struct gpart *p = &g->parts[i];
		if (!p->subscribed || p->target != NULL)
			continue;
		struct gmember *best = NULL;
		for (struct gmember *m = g->members; m; m = m->next)
			if (subscribes(m, p->topic) &&
			    (best == NULL || m->target_count < best->target_count))
				best = m;
		if (best != NULL) {
			p->target = best;
			best->target_count++;
		}
	}
	bool changed = false;
	for (struct gmember *m = g->members; m; m = m->next) {
		bool mine = false;
		for (uint32_t i = 0; i < g->nparts && !mine; i++)
			mine = (before[i] == m) != (g->parts[i].target == m);
		if (mine) {
			m->epoch++;
			changed = true;
		}
	}
	free(before);
	if (changed) {
		g->rebalances++;
		say_info("group %s: rebalanced %u partitions over %u members", g->name, total, nm);
	}
}

/* Drops a member; what it owned becomes free at once (G1). */
static void member_remove(struct group *g, struct gmember *m, const char *why)
{
	for (struct gmember **pm = &g->members; *pm; pm = &(*pm)->next) {
		if (*pm == m) {
			*pm = m->next;
			break;
		}
	}
	g->nmembers--;
	for (uint32_t i = 0; i < g->nparts; i++) {
		if (g->parts[i].owner == m)
			g->parts[i].owner = NULL;
		if (g->parts[i].target == m)
			g->parts[i].target = NULL;
	}
	say_info("group %s: member %s %s", g->name, m->id, why);
	member_free(m);
	g->dirty = true;
}

/* True if some handover in the group still waits on a member. */
static bool handover_pending(const struct group *g, const struct gmember *m)
{
	for (uint32_t i = 0; i < g->nparts; i++) {
		const struct gpart *p = &g->parts[i];
		if (p->target != p->owner && (p->owner == m || p->target == m))
			return true;
	}
	return false;
}

static uint32_t heartbeat_ms(const struct group *g, const struct gmember *m)
{
	uint32_t normal = m->session_ms / 3 < 1000 ? m->session_ms / 3 : 1000;
	return handover_pending(g, m) ? HEARTBEAT_FAST_MS : normal;
}

static const char *group_state(const struct group *g)
{
	if (g->nmembers == 0)
		return "empty";
	for (uint32_t i = 0; i < g->nparts; i++)
		if (g->parts[i].subscribed && g->parts[i].target != g->parts[i].owner)
			return "rebalancing";
	return "stable";
}

void groups_tick(struct loop *l, int64_t now)
{
	struct groups *gs = l->groups;
	for (uint32_t s = 0; s < gs->nslots; s++) {
		for (struct group *g = gs->slots[s]; g; g = g->hnext) {
			for (struct gmember *m = g->members, *n; m; m = n) {
				n = m->next;
				if (now - m->last_seen_ms > (int64_t)m->session_ms)
					member_remove(g, m, "left: its session expired");
			}
			if (g->dirty)
				rebalance(l, g);
		}
	}
	offsets_tick(l, now);
}

/* ---- store replay and snapshots ---- */

void groups_apply(struct loop *l, const struct offset_rec *rec)
{
	struct groups *gs = l->groups;
	if (rec->group == NULL) {
		/* The topic was deleted: a topic created later under its name
		 * starts afresh for every group. */
		for (uint32_t s = 0; s < gs->nslots; s++)
			for (struct group *g = gs->slots[s]; g; g = g->hnext)
				for (uint32_t i = 0; i < g->nparts; i++)
					if (strcmp(g->parts[i].topic, rec->topic) == 0)
						g->parts[i].committed = -1;
		return;
	}
	size_t gl = strlen(rec->group);
	if (rec->topic == NULL) {
		struct group *g = group_find(gs, rec->group, gl);
		if (g != NULL)
			group_remove(gs, g);
		return;
	}
	struct group *g = group_get(gs, rec->group, gl);
	struct gpart *p = g ? part_get(g, rec->topic, strlen(rec->topic), rec->partition) : NULL;
	if (p != NULL)
		p->committed = (int64_t)rec->offset;
}

void groups_topics_changed(struct loop *l)
{
	struct groups *gs = l->groups;
	for (uint32_t s = 0; s < gs->nslots; s++)
		for (struct group *g = gs->slots[s]; g; g = g->hnext)
			if (g->nmembers > 0)
				g->dirty = true;
}

void groups_each_offset(struct loop *l, void (*fn)(void *arg, const struct offset_rec *rec),
			void *arg)
{
	struct groups *gs = l->groups;
	for (uint32_t s = 0; s < gs->nslots; s++)
		for (struct group *g = gs->slots[s]; g; g = g->hnext)
			for (uint32_t i = 0; i < g->nparts; i++)
				if (g->parts[i].committed >= 0) {
					struct offset_rec r = { g->name, g->parts[i].topic,
								g->parts[i].partition,
								(uint64_t)g->parts[i].committed };
					fn(arg, &r);
				}
}

/* ---- requests ---- */

static bool group_name_ok(struct conn *c, uint16_t api, uint32_t corr, struct pstr name)
{
	if (topic_name_valid(name.p, name.len))
		return true;
	respond_error(c, api, corr, ERR_INVALID_GROUP,
		      "group name '%.*s' is invalid: use 1 to 200 of A-Z a-z 0-9 . _ -, "
		      "not starting with '.'",
		      (int)(name.len > 200 ? 200 : name.len), name.p);
	return false;
}

static void respond_body(struct conn *c, uint16_t api, uint32_t corr, union proto_response *r,
			 size_t hint)
{
	struct pw w;
	pw_init_dyn(&w, hint, c->loop->cfg->max_frame_bytes);
	size_t start = proto_resp_begin(&w, corr, ERR_NONE, NULL);
	proto_encode_response(&w, api, r);
	proto_frame_end(&w, start);
	conn_send_pw(c, &w);
}

static void handle_join(struct conn *c, uint32_t corr, const struct proto_join_group_req *req)
{
	struct loop *l = c->loop;
	if (!group_name_ok(c, API_JOIN_GROUP, corr, req->group))
		return;
	if (req->ntopics == 0 || req->ntopics > SUBSCRIPTION_MAX) {
		respond_error(c, API_JOIN_GROUP, corr, ERR_INVALID_REQUEST,
			      "a member subscribes to 1 to %u topics", SUBSCRIPTION_MAX);
		return;
	}
	for (uint32_t i = 0; i < req->ntopics; i++) {
		if (!topic_name_valid(req->topics[i].p, req->topics[i].len)) {
			respond_error(c, API_JOIN_GROUP, corr, ERR_INVALID_TOPIC_NAME,
				      "subscription has an invalid topic name");
			return;
		}
	}
	struct group *g = group_get(l->groups, req->group.p, req->group.len);
	if (g == NULL) {
		respond_error(c, API_JOIN_GROUP, corr, ERR_LIMIT_EXCEEDED, "too many groups");
		return;
	}
	if (g->admin_pending) {
		respond_error(c, API_JOIN_GROUP, corr, ERR_BUSY,
			      "group %s is being deleted or reset; try again", g->name);
		return;
	}
	struct gmember *m = req->member_id.len ? member_find(g, req->member_id) : NULL;
	if (req->member_id.len && m == NULL) {
		respond_error(c, API_JOIN_GROUP, corr, ERR_UNKNOWN_MEMBER,
			      "member %.*s is not in group %s (its session expired): join anew",
			      (int)req->member_id.len, req->member_id.p, g->name);
		return;
	}
	if (m == NULL) {
		if (g->nmembers >= MEMBERS_MAX) {
			respond_error(c, API_JOIN_GROUP, corr, ERR_LIMIT_EXCEEDED,
				      "group %s has %u members already", g->name, MEMBERS_MAX);
			return;
		}
		m = calloc(1, sizeof(*m));
		if (m == NULL) {
			respond_error(c, API_JOIN_GROUP, corr, ERR_BUSY, "out of memory");
			return;
		}
		uint64_t rnd = 0;
		if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
			rnd = (uint64_t)now_ms() * 2654435761u + (uint64_t)(uintptr_t)m;
		int cl = (int)(req->client_id.len > 32 ? 32 : req->client_id.len);
		snprintf(m->id, sizeof(m->id), "%.*s%s%016" PRIx64, cl, req->client_id.p,
			 cl ? "-" : "", rnd);
		snprintf(m->client_id, sizeof(m->client_id), "%.*s",
			 (int)(req->client_id.len > 63 ? 63 : req->client_id.len), req->client_id.p);
		m->epoch = 1;
		m->next = g->members;
		g->members = m;
		g->nmembers++;
		say_info("group %s: member %s joined", g->name, m->id);
	}
	/* The subscription, new or changed. */
	for (uint32_t i = 0; i < m->ntopics; i++)
		free(m->topics[i]);
	free(m->topics);
	m->topics = calloc(req->ntopics, sizeof(*m->topics));
	m->ntopics = 0;
	for (uint32_t i = 0; m->topics && i < req->ntopics; i++)
		if ((m->topics[i] = strndup(req->topics[i].p, req->topics[i].len)) != NULL)
			m->ntopics++;
	uint32_t s = req->session_timeout_ms ? req->session_timeout_ms : SESSION_DEFAULT_MS;
	m->session_ms = s < SESSION_MIN_MS ? SESSION_MIN_MS : s > SESSION_MAX_MS ? SESSION_MAX_MS : s;
	m->last_seen_ms = now_ms();
	rebalance(l, g);
	union proto_response r = { .join_group = { pstr_c(m->id), m->epoch, HEARTBEAT_FAST_MS } };
	respond_body(c, API_JOIN_GROUP, corr, &r, 128);
}

static void handle_heartbeat(struct conn *c, uint32_t corr, const struct proto_heartbeat_req *req)
{
	struct loop *l = c->loop;
	struct group *g = group_find(l->groups, req->group.p, req->group.len);
	struct gmember *m = g ? member_find(g, req->member_id) : NULL;
	if (m == NULL) {
		respond_error(c, API_HEARTBEAT, corr, ERR_UNKNOWN_MEMBER,
			      "member %.*s is not in group %.*s (its session expired): join anew",
			      (int)req->member_id.len, req->member_id.p, (int)req->group.len,
			      req->group.p);
		return;
	}
	m->last_seen_ms = now_ms();
	if (g->dirty)
		rebalance(l, g);
	/* What it holds now: releases and confirmations (G1). */
	for (uint32_t i = 0; i < g->nparts; i++) {
		struct gpart *p = &g->parts[i];
		if (p->owner != m)
			continue;
		bool held = false;
		for (uint32_t k = 0; k < req->nowned && !held; k++)
			held = req->owned[k].partition == p->partition &&
			       pstr_eq(req->owned[k].topic, p->topic);
		if (!held)
			p->owner = NULL; /* released, after committing what it read */
	}
	/* Grant what is targeted at it and free. */
	uint32_t n = 0;
	for (uint32_t i = 0; i < g->nparts; i++) {
		struct gpart *p = &g->parts[i];
		if (p->target == m && (p->owner == NULL || p->owner == m)) {
			if (p->owner == NULL) {
				p->owner = m;
				p->grant_epoch = m->epoch;
			}
			n++;
		}
	}
	struct proto_tp *tps = calloc(n ? n : 1, sizeof(*tps));
	if (tps == NULL) {
		respond_error(c, API_HEARTBEAT, corr, ERR_BUSY, "out of memory");
		return;
	}
	uint32_t k = 0;
	for (uint32_t i = 0; i < g->nparts; i++) {
		struct gpart *p = &g->parts[i];
		if (p->target == m && p->owner == m)
			tps[k++] = (struct proto_tp){ pstr_c(p->topic), p->partition };
	}
	union proto_response r = { .heartbeat = { m->epoch, heartbeat_ms(g, m), k, tps } };
	respond_body(c, API_HEARTBEAT, corr, &r, 64 + 210u * k);
	free(tps);
}

static void handle_leave(struct conn *c, uint32_t corr, const struct proto_leave_group_req *req)
{
	struct group *g = group_find(c->loop->groups, req->group.p, req->group.len);
	struct gmember *m = g ? member_find(g, req->member_id) : NULL;
	if (m == NULL) {
		respond_error(c, API_LEAVE_GROUP, corr, ERR_UNKNOWN_MEMBER,
			      "no member %.*s in group %.*s", (int)req->member_id.len,
			      req->member_id.p, (int)req->group.len, req->group.p);
		return;
	}
	member_remove(g, m, "left");
	rebalance(c->loop, g);
	respond_ok(c, corr);
}

/* Why member m may not act on partition p with this epoch (G2), or 0. */
static uint16_t owner_check(const struct gmember *m, const struct gpart *p, uint32_t epoch)
{
	if (p == NULL || p->owner != m)
		return ERR_NOT_OWNER;
	if (epoch < p->grant_epoch || epoch > m->epoch)
		return ERR_FENCED_MEMBER;
	return ERR_NONE;
}

uint16_t group_fetch_check(struct loop *l, struct pstr group, struct pstr member, uint32_t epoch,
			   struct pstr topic, uint32_t partition)
{
	struct group *g = group_find(l->groups, group.p, group.len);
	struct gmember *m = g ? member_find(g, member) : NULL;
	if (m == NULL)
		return ERR_UNKNOWN_MEMBER;
	return owner_check(m, part_find(g, topic.p, topic.len, partition), epoch);
}

/* A commit waiting for the offsets store. */
struct commit_req {
	struct conn *c;
	uint32_t corr;
	char group[TOPIC_NAME_MAX + 1];
	uint32_t n;
	struct offset_rec *recs;    /* the valid ones, in the store */
	struct proto_tp_result *res;
	uint32_t *rec_of;           /* res index -> recs index, or UINT32_MAX */
	char *names;
};

static void commit_done(void *arg, int err)
{
	struct commit_req *cr = arg;
	struct conn *c = cr->c;
	struct loop *l = c->loop;
	struct group *g = group_find(l->groups, cr->group, strlen(cr->group));
	if (g != NULL)
		g->pending_commits--;
	for (uint32_t i = 0; i < cr->n; i++) {
		if (cr->rec_of[i] == UINT32_MAX)
			continue;
		const struct offset_rec *rec = &cr->recs[cr->rec_of[i]];
		if (err != 0) {
			cr->res[i].err = err_from_errno(err);
			cr->res[i].msg = pstr_c("the commit could not be stored");
			l->api[API_COMMIT_OFFSETS].errors++;
			continue;
		}
		/* (G3): durable now, so visible now. */
		struct gpart *p = g ? part_get(g, rec->topic, strlen(rec->topic), rec->partition)
				    : NULL;
		if (p != NULL)
			p->committed = (int64_t)rec->offset;
	}
	union proto_response r = { .commit_offsets = { cr->n, cr->res } };
	if (!c->closed)
		respond_body(c, API_COMMIT_OFFSETS, cr->corr, &r, 64 + 260u * cr->n);
	conn_request_done(c);
	conn_unref(c);
	free(cr);
}

static void handle_commit(struct conn *c, uint32_t corr, const struct proto_commit_offsets_req *req)
{
	struct loop *l = c->loop;
	if (!group_name_ok(c, API_COMMIT_OFFSETS, corr, req->group))
		return;
	struct group *g = group_find(l->groups, req->group.p, req->group.len);
	struct gmember *m = NULL;
	if (req->member_id.len > 0) {
		m = g ? member_find(g, req->member_id) : NULL;
		if (m == NULL) {
			respond_error(c, API_COMMIT_OFFSETS, corr, ERR_UNKNOWN_MEMBER,
				      "member %.*s is not in group %.*s: its commit is refused",
				      (int)req->member_id.len, req->member_id.p,
				      (int)req->group.len, req->group.p);
			return;
		}
	} else if (g != NULL && g->nmembers > 0) {
		respond_error(c, API_COMMIT_OFFSETS, corr, ERR_GROUP_NOT_EMPTY,
			      "group %s has %u live members: only they may commit", g->name,
			      g->nmembers);
		return;
	} else if (g != NULL && g->admin_pending) {
		respond_error(c, API_COMMIT_OFFSETS, corr, ERR_BUSY,
			      "group %s is being deleted or reset; try again", g->name);
		return;
	}
	uint32_t n = req->nparts;
	if (n > OFFSETS_APPEND_MAX) {
		respond_error(c, API_COMMIT_OFFSETS, corr, ERR_INVALID_REQUEST,
			      "a commit may name at most %u partitions, not %u", OFFSETS_APPEND_MAX,
			      n);
		return;
	}
	/* The group must exist before the commit is stored, or it would be
	 * answered and never seen. */
	g = group_get(l->groups, req->group.p, req->group.len);
	if (g == NULL) {
		respond_error(c, API_COMMIT_OFFSETS, corr, ERR_LIMIT_EXCEEDED,
			      "the broker holds %u groups, its limit", GROUPS_MAX);
		return;
	}
	size_t names = 0;
	for (uint32_t i = 0; i < n; i++)
		names += req->parts[i].topic.len + 1;
	struct commit_req *cr = calloc(1, sizeof(*cr) + n * (sizeof(struct offset_rec) +
							     sizeof(struct proto_tp_result) +
							     sizeof(uint32_t)) + names);
	if (cr == NULL) {
		respond_error(c, API_COMMIT_OFFSETS, corr, ERR_BUSY, "out of memory");
		return;
	}
	cr->c = c;
	cr->corr = corr;
	cr->n = n;
	snprintf(cr->group, sizeof(cr->group), "%.*s", (int)req->group.len, req->group.p);
	cr->recs = (struct offset_rec *)(cr + 1);
	cr->res = (struct proto_tp_result *)(cr->recs + n);
	cr->rec_of = (uint32_t *)(cr->res + n);
	cr->names = (char *)(cr->rec_of + n);
	char *np = cr->names;
	uint32_t nrec = 0;
	for (uint32_t i = 0; i < n; i++) {
		const struct proto_commit_part *cp = &req->parts[i];
		memcpy(np, cp->topic.p, cp->topic.len);
		np[cp->topic.len] = '\0';
		cr->res[i] = (struct proto_tp_result){ .topic = { np, cp->topic.len },
						       .partition = cp->partition };
		cr->rec_of[i] = UINT32_MAX;
		uint16_t err = ERR_NONE;
		const char *why = NULL;
		struct topic *t = registry_find(&l->reg, cp->topic.p, cp->topic.len);
		if (t == NULL || t->state != TOPIC_LIVE || cp->partition >= t->nparts) {
			err = t ? ERR_UNKNOWN_PARTITION : ERR_UNKNOWN_TOPIC;
			why = "no such topic or partition";
		} else if (m != NULL) {
			err = owner_check(m, part_find(g, cp->topic.p, cp->topic.len, cp->partition),
					  req->member_epoch);
			why = err == ERR_NOT_OWNER ? "the member does not own this partition"
						   : "stale member epoch: a zombie's commit";
		}
		if (err != ERR_NONE) {
			cr->res[i].err = err;
			cr->res[i].msg = pstr_c(why);
			l->api[API_COMMIT_OFFSETS].errors++;
		} else {
			cr->recs[nrec] = (struct offset_rec){ cr->group, np, cp->partition,
							      cp->offset };
			cr->rec_of[i] = nrec++;
		}
		np += cp->topic.len + 1;
	}
	c->inflight++;
	conn_ref(c);
	if (nrec == 0) {
		commit_done(cr, 0);
		return;
	}
	g->pending_commits++;
	int ret = offsets_append(l, cr->recs, nrec, commit_done, cr);
	if (ret != 0)
		commit_done(cr, ret);
}

static void handle_fetch_offsets(struct conn *c, uint32_t corr,
				 const struct proto_fetch_offsets_req *req)
{
	struct group *g = group_find(c->loop->groups, req->group.p, req->group.len);
	struct proto_committed *out = calloc(req->nparts ? req->nparts : 1, sizeof(*out));
	if (out == NULL) {
		respond_error(c, API_FETCH_OFFSETS, corr, ERR_BUSY, "out of memory");
		return;
	}
	for (uint32_t i = 0; i < req->nparts; i++) {
		const struct proto_tp *tp = &req->parts[i];
		struct gpart *p = g ? part_find(g, tp->topic.p, tp->topic.len, tp->partition) : NULL;
		out[i] = (struct proto_committed){ tp->topic, tp->partition, p ? p->committed : -1 };
	}
	union proto_response r = { .fetch_offsets = { req->nparts, out } };
	respond_body(c, API_FETCH_OFFSETS, corr, &r, 64 + 220u * req->nparts);
	free(out);
}

static void handle_list_groups(struct conn *c, uint32_t corr)
{
	struct groups *gs = c->loop->groups;
	struct proto_group_brief *b = calloc(gs->count ? gs->count : 1, sizeof(*b));
	if (b == NULL) {
		respond_error(c, API_LIST_GROUPS, corr, ERR_BUSY, "out of memory");
		return;
	}
	uint32_t n = 0;
	for (uint32_t s = 0; s < gs->nslots; s++)
		for (struct group *g = gs->slots[s]; g && n < gs->count; g = g->hnext)
			b[n++] = (struct proto_group_brief){ pstr_c(g->name),
							     pstr_c(group_state(g)), g->nmembers };
	union proto_response r = { .list_groups = { n, b } };
	respond_body(c, API_LIST_GROUPS, corr, &r, 64 + 230u * n);
	free(b);
}

static void handle_describe_group(struct conn *c, uint32_t corr,
				  const struct proto_describe_group_req *req)
{
	struct loop *l = c->loop;
	struct group *g = group_find(l->groups, req->group.p, req->group.len);
	if (g == NULL) {
		respond_error(c, API_DESCRIBE_GROUP, corr, ERR_UNKNOWN_GROUP,
			      "group '%.*s' does not exist", (int)req->group.len, req->group.p);
		return;
	}
	if (g->dirty)
		rebalance(l, g);
	/* Every partition of every topic the group knows, committed or not. */
	for (uint32_t i = 0, n = g->nparts; i < n; i++) {
		struct topic *t = registry_find(&l->reg, g->parts[i].topic,
						strlen(g->parts[i].topic));
		for (uint32_t k = 0; t != NULL && t->state == TOPIC_LIVE && k < t->nparts; k++)
			part_get(g, t->name, t->name_len, k);
	}
	struct proto_group_member *gm = calloc(g->nmembers ? g->nmembers : 1, sizeof(*gm));
	struct proto_tp *tps = calloc(g->nparts ? g->nparts : 1, sizeof(*tps));
	struct proto_group_part *gp = calloc(g->nparts ? g->nparts : 1, sizeof(*gp));
	if (gm == NULL || tps == NULL || gp == NULL) {
		free(gm);
		free(tps);
		free(gp);
		respond_error(c, API_DESCRIBE_GROUP, corr, ERR_BUSY, "out of memory");
		return;
	}
	int64_t now = now_ms();
	uint32_t k = 0, t = 0;
	for (struct gmember *m = g->members; m; m = m->next, k++) {
		gm[k] = (struct proto_group_member){ pstr_c(m->id), pstr_c(m->client_id), m->epoch,
						     (uint64_t)(now - m->last_seen_ms), 0, &tps[t] };
		for (uint32_t i = 0; i < g->nparts; i++)
			if (g->parts[i].owner == m) {
				tps[t++] = (struct proto_tp){ pstr_c(g->parts[i].topic),
							      g->parts[i].partition };
				gm[k].nowned++;
			}
	}
	uint32_t np = 0;
	for (uint32_t i = 0; i < g->nparts; i++) {
		struct gpart *p = &g->parts[i];
		uint16_t err;
		struct partition *pp = partition_lookup(l, pstr_c(p->topic), p->partition, &err);
		if (pp == NULL && p->committed < 0)
			continue; /* a partition of a deleted topic, never committed */
		gp[np++] = (struct proto_group_part){
			pstr_c(p->topic), p->partition, p->committed,
			pp ? log_start(pp->log) : 0, pp ? log_visible_end(pp->log) : 0,
			p->owner ? pstr_c(p->owner->id) : pstr_c(""),
		};
	}
	union proto_response r = { .describe_group = { pstr_c(g->name), pstr_c(group_state(g)),
						       g->rebalances, k, gm, np, gp } };
	respond_body(c, API_DESCRIBE_GROUP, corr, &r, 256 + 300u * k + 300u * np);
	free(gm);
	free(tps);
	free(gp);
}

struct group_admin {
	struct conn *c;
	uint32_t corr;
	uint16_t api;
	char group[TOPIC_NAME_MAX + 1];
	uint32_t n;
	struct offset_rec *recs;
	struct proto_committed *out;
};

static void admin_done(void *arg, int err)
{
	struct group_admin *ga = arg;
	struct conn *c = ga->c;
	struct loop *l = c->loop;
	struct group *g = group_find(l->groups, ga->group, strlen(ga->group));
	if (g != NULL)
		g->admin_pending = false;
	if (err != 0) {
		respond_error(c, ga->api, ga->corr, err_from_errno(err),
			      "the change could not be stored: %s", strerror(-err));
	} else if (ga->api == API_DELETE_GROUP) {
		if (g != NULL && g->nmembers == 0) {
			say_info("deleted group %s", g->name);
			group_remove(l->groups, g);
		}
		respond_ok(c, ga->corr);
	} else {
		for (uint32_t i = 0; g && i < ga->n; i++) {
			struct gpart *p = part_get(g, ga->recs[i].topic, strlen(ga->recs[i].topic),
						   ga->recs[i].partition);
			if (p != NULL)
				p->committed = (int64_t)ga->recs[i].offset;
		}
		union proto_response r = { .reset_offsets = { ga->n, ga->out } };
		respond_body(c, ga->api, ga->corr, &r, 64 + 220u * ga->n);
	}
	conn_request_done(c);
	conn_unref(c);
	free(ga->recs);
	free(ga->out);
	free(ga);
}

static struct group *idle_group(struct conn *c, uint16_t api, uint32_t corr, struct pstr name)
{
	struct group *g = group_find(c->loop->groups, name.p, name.len);
	if (g == NULL) {
		respond_error(c, api, corr, ERR_UNKNOWN_GROUP, "group '%.*s' does not exist",
			      (int)name.len, name.p);
		return NULL;
	}
	if (g->nmembers > 0) {
		respond_error(c, api, corr, ERR_GROUP_NOT_EMPTY,
			      "group '%s' has %u live members; stop them first", g->name,
			      g->nmembers);
		return NULL;
	}
	if (g->pending_commits > 0 || g->admin_pending) {
		respond_error(c, api, corr, ERR_BUSY,
			      "group '%s' has commits or changes in flight; try again", g->name);
		return NULL;
	}
	return g;
}

static void handle_delete_group(struct conn *c, uint32_t corr,
				const struct proto_delete_group_req *req)
{
	struct group *g = idle_group(c, API_DELETE_GROUP, corr, req->group);
	if (g == NULL)
		return;
	struct group_admin *ga = calloc(1, sizeof(*ga));
	if (ga == NULL) {
		respond_error(c, API_DELETE_GROUP, corr, ERR_BUSY, "out of memory");
		return;
	}
	ga->c = c;
	ga->corr = corr;
	ga->api = API_DELETE_GROUP;
	snprintf(ga->group, sizeof(ga->group), "%s", g->name);
	c->inflight++;
	conn_ref(c);
	struct offset_rec rec = { ga->group, NULL, 0, 0 };
	g->admin_pending = true;
	int ret = offsets_append(c->loop, &rec, 1, admin_done, ga);
	if (ret != 0)
		admin_done(ga, ret);
}

static void handle_reset(struct conn *c, uint32_t corr, const struct proto_reset_offsets_req *req)
{
	struct loop *l = c->loop;
	struct group *g = idle_group(c, API_RESET_OFFSETS, corr, req->group);
	if (g == NULL)
		return;
	struct topic *t = registry_find(&l->reg, req->topic.p, req->topic.len);
	if (t == NULL || t->state != TOPIC_LIVE) {
		respond_error(c, API_RESET_OFFSETS, corr, ERR_UNKNOWN_TOPIC,
			      "topic '%.*s' does not exist", (int)req->topic.len, req->topic.p);
		return;
	}
	if (req->mode > PROTO_RESET_TIME || (req->mode >= PROTO_RESET_OFFSET && req->value < 0)) {
		respond_error(c, API_RESET_OFFSETS, corr, ERR_INVALID_REQUEST,
			      "reset mode must be earliest, latest, an offset or a time >= 0");
		return;
	}
	struct group_admin *ga = calloc(1, sizeof(*ga));
	if (ga != NULL) {
		ga->recs = calloc(t->nparts, sizeof(*ga->recs));
		ga->out = calloc(t->nparts, sizeof(*ga->out));
	}
	if (ga == NULL || ga->recs == NULL || ga->out == NULL) {
		if (ga) {
			free(ga->recs);
			free(ga->out);
		}
		free(ga);
		respond_error(c, API_RESET_OFFSETS, corr, ERR_BUSY, "out of memory");
		return;
	}
	ga->c = c;
	ga->corr = corr;
	ga->api = API_RESET_OFFSETS;
	ga->n = t->nparts;
	snprintf(ga->group, sizeof(ga->group), "%s", g->name);
	for (uint32_t i = 0; i < t->nparts; i++) {
		struct log *log = t->parts[i]->log;
		uint64_t start = log_start(log), end = log_visible_end(log), off;
		switch (req->mode) {
		case PROTO_RESET_EARLIEST:
			off = start;
			break;
		case PROTO_RESET_LATEST:
			off = end;
			break;
		case PROTO_RESET_OFFSET:
			off = (uint64_t)req->value < start ? start
			      : (uint64_t)req->value > end ? end : (uint64_t)req->value;
			break;
		default:
			if (log_offset_for_time(log, req->value, &off) != 0)
				off = end;
			break;
		}
		ga->recs[i] = (struct offset_rec){ ga->group, t->name, i, off };
		ga->out[i] = (struct proto_committed){ { t->name, t->name_len }, i, (int64_t)off };
	}
	c->inflight++;
	conn_ref(c);
	g->admin_pending = true;
	int ret = offsets_append(l, ga->recs, ga->n, admin_done, ga);
	if (ret != 0)
		admin_done(ga, ret);
}

void handle_group_request(struct conn *c, uint16_t api, uint32_t corr,
			  const union proto_request *req)
{
	switch (api) {
	case API_JOIN_GROUP:
		handle_join(c, corr, &req->join_group);
		break;
	case API_HEARTBEAT:
		handle_heartbeat(c, corr, &req->heartbeat);
		break;
	case API_LEAVE_GROUP:
		handle_leave(c, corr, &req->leave_group);
		break;
	case API_COMMIT_OFFSETS:
		handle_commit(c, corr, &req->commit_offsets);
		break;
	case API_FETCH_OFFSETS:
		handle_fetch_offsets(c, corr, &req->fetch_offsets);
		break;
	case API_LIST_GROUPS:
		handle_list_groups(c, corr);
		break;
	case API_DESCRIBE_GROUP:
		handle_describe_group(c, corr, &req->describe_group);
		break;
	case API_DELETE_GROUP:
		handle_delete_group(c, corr, &req->delete_group);
		break;
	case API_RESET_OFFSETS:
		handle_reset(c, corr, &req->reset_offsets);
		break;
	}
}

/* ---- metrics ---- */

void groups_metrics(struct loop *l, struct pw *w)
{
	struct groups *gs = l->groups;
	char line[700];
	int n;
#define EMIT(...)                                                                   \
	do {                                                                        \
		n = snprintf(line, sizeof(line), __VA_ARGS__);                      \
		if (n > 0)                                                          \
			pw_raw(w, line, (size_t)(n < (int)sizeof(line) ? n : 0));   \
	} while (0)
	EMIT("# HELP ringmq_group_lag Messages a group has yet to commit, by partition.\n"
	     "# TYPE ringmq_group_lag gauge\n");
	for (uint32_t s = 0; s < gs->nslots; s++)
		for (struct group *g = gs->slots[s]; g; g = g->hnext)
			for (uint32_t i = 0; i < g->nparts; i++) {
				struct gpart *p = &g->parts[i];
				uint16_t err;
				struct partition *pp = partition_lookup(l, pstr_c(p->topic),
									p->partition, &err);
				if (pp == NULL)
					continue;
				uint64_t end = log_visible_end(pp->log);
				/* Messages retention deleted cannot be consumed: not lag. */
				uint64_t from = log_start(pp->log);
				if (p->committed > (int64_t)from)
					from = (uint64_t)p->committed;
				EMIT("ringmq_group_lag{group=\"%s\",topic=\"%s\",partition=\"%u\"} "
				     "%" PRIu64 "\n", g->name, p->topic, p->partition,
				     end > from ? end - from : 0);
			}
	EMIT("# HELP ringmq_group_members Live members, by group.\n"
	     "# TYPE ringmq_group_members gauge\n");
	for (uint32_t s = 0; s < gs->nslots; s++)
		for (struct group *g = gs->slots[s]; g; g = g->hnext)
			EMIT("ringmq_group_members{group=\"%s\"} %u\n", g->name, g->nmembers);
	EMIT("# HELP ringmq_group_rebalances_total Assignment changes, by group.\n"
	     "# TYPE ringmq_group_rebalances_total counter\n");
	for (uint32_t s = 0; s < gs->nslots; s++)
		for (struct group *g = gs->slots[s]; g; g = g->hnext)
			EMIT("ringmq_group_rebalances_total{group=\"%s\"} %" PRIu64 "\n", g->name,
			     g->rebalances);
#undef EMIT
}
