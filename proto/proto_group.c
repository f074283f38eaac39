/* proto_group.c — the wire codec of the consumer-group messages (join,
 * heartbeat, leave, commit and fetch offsets, list, describe, delete and
 * reset), with the same rules as proto.c: fields in declaration order,
 * every count bounded by the bytes left before anything is allocated. */
#include <errno.h>
#include <string.h>

#include "proto/proto_impl.h"

enum {
	MIN_TP = PROTO_MIN_STR + 4,
	MIN_COMMIT_PART = PROTO_MIN_STR + 4 + 8,
	MIN_TP_RESULT = PROTO_MIN_STR + 4 + 2 + PROTO_MIN_STR,
	MIN_COMMITTED = PROTO_MIN_STR + 4 + 8,
	MIN_GROUP_BRIEF = 2 * PROTO_MIN_STR + 4,
	MIN_MEMBER = 2 * PROTO_MIN_STR + 4 + 8 + 4,
	MIN_GROUP_PART = PROTO_MIN_STR + 4 + 8 + 8 + 8 + PROTO_MIN_STR,
};

static int status(const struct pr *r)
{
	return r->failed ? -EBADMSG : 0;
}

static int dec_tps(struct pr *r, struct arena *a, uint32_t *n, struct proto_tp **out)
{
	int err;
	struct proto_tp *tp = proto_dec_array(r, a, MIN_TP, sizeof(*tp), n, &err);
	*out = tp;
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < *n; i++) {
		tp[i].topic = pr_str(r);
		tp[i].partition = pr_u32(r);
	}
	return status(r);
}

static void enc_tps(struct pw *w, uint32_t n, const struct proto_tp *tp)
{
	pw_u32(w, n);
	for (uint32_t i = 0; i < n; i++) {
		pw_str(w, tp[i].topic);
		pw_u32(w, tp[i].partition);
	}
}

static int dec_committed(struct pr *r, struct arena *a, uint32_t *n,
			 struct proto_committed **out)
{
	int err;
	struct proto_committed *c = proto_dec_array(r, a, MIN_COMMITTED, sizeof(*c), n, &err);
	*out = c;
	if (err != 0)
		return err;
	for (uint32_t i = 0; i < *n; i++) {
		c[i].topic = pr_str(r);
		c[i].partition = pr_u32(r);
		c[i].offset = pr_i64(r);
	}
	return status(r);
}

static void enc_committed(struct pw *w, uint32_t n, const struct proto_committed *c)
{
	pw_u32(w, n);
	for (uint32_t i = 0; i < n; i++) {
		pw_str(w, c[i].topic);
		pw_u32(w, c[i].partition);
		pw_i64(w, c[i].offset);
	}
}

bool proto_is_group_api(uint16_t api)
{
	return api >= API_JOIN_GROUP && api <= API_RESET_OFFSETS;
}

/* ---- requests ---- */

int proto_group_decode_request(uint16_t api, struct pr *r, struct arena *a,
			       union proto_request *out)
{
	int err = 0;
	switch (api) {
	case API_JOIN_GROUP: {
		struct proto_join_group_req *m = &out->join_group;
		m->group = pr_str(r);
		m->member_id = pr_str(r);
		m->client_id = pr_str(r);
		m->session_timeout_ms = pr_u32(r);
		m->topics = proto_dec_array(r, a, PROTO_MIN_STR, sizeof(*m->topics), &m->ntopics,
					    &err);
		for (uint32_t i = 0; err == 0 && i < m->ntopics; i++)
			m->topics[i] = pr_str(r);
		break;
	}
	case API_HEARTBEAT: {
		struct proto_heartbeat_req *m = &out->heartbeat;
		m->group = pr_str(r);
		m->member_id = pr_str(r);
		m->member_epoch = pr_u32(r);
		err = dec_tps(r, a, &m->nowned, &m->owned);
		break;
	}
	case API_LEAVE_GROUP:
		out->leave_group.group = pr_str(r);
		out->leave_group.member_id = pr_str(r);
		break;
	case API_COMMIT_OFFSETS: {
		struct proto_commit_offsets_req *m = &out->commit_offsets;
		m->group = pr_str(r);
		m->member_id = pr_str(r);
		m->member_epoch = pr_u32(r);
		m->parts = proto_dec_array(r, a, MIN_COMMIT_PART, sizeof(*m->parts), &m->nparts,
					   &err);
		for (uint32_t i = 0; err == 0 && i < m->nparts; i++) {
			m->parts[i].topic = pr_str(r);
			m->parts[i].partition = pr_u32(r);
			m->parts[i].offset = pr_u64(r);
		}
		break;
	}
	case API_FETCH_OFFSETS:
		out->fetch_offsets.group = pr_str(r);
		err = dec_tps(r, a, &out->fetch_offsets.nparts, &out->fetch_offsets.parts);
		break;
	case API_LIST_GROUPS:
		break;
	case API_DESCRIBE_GROUP:
		out->describe_group.group = pr_str(r);
		break;
	case API_DELETE_GROUP:
		out->delete_group.group = pr_str(r);
		break;
	case API_RESET_OFFSETS:
		out->reset_offsets.group = pr_str(r);
		out->reset_offsets.topic = pr_str(r);
		out->reset_offsets.mode = pr_u8(r);
		out->reset_offsets.value = pr_i64(r);
		break;
	default:
		return -ENOTSUP;
	}
	return err != 0 ? err : status(r);
}

void proto_group_encode_request(struct pw *w, uint16_t api, const union proto_request *req)
{
	switch (api) {
	case API_JOIN_GROUP: {
		const struct proto_join_group_req *m = &req->join_group;
		pw_str(w, m->group);
		pw_str(w, m->member_id);
		pw_str(w, m->client_id);
		pw_u32(w, m->session_timeout_ms);
		pw_u32(w, m->ntopics);
		for (uint32_t i = 0; i < m->ntopics; i++)
			pw_str(w, m->topics[i]);
		return;
	}
	case API_HEARTBEAT:
		pw_str(w, req->heartbeat.group);
		pw_str(w, req->heartbeat.member_id);
		pw_u32(w, req->heartbeat.member_epoch);
		enc_tps(w, req->heartbeat.nowned, req->heartbeat.owned);
		return;
	case API_LEAVE_GROUP:
		pw_str(w, req->leave_group.group);
		pw_str(w, req->leave_group.member_id);
		return;
	case API_COMMIT_OFFSETS: {
		const struct proto_commit_offsets_req *m = &req->commit_offsets;
		pw_str(w, m->group);
		pw_str(w, m->member_id);
		pw_u32(w, m->member_epoch);
		pw_u32(w, m->nparts);
		for (uint32_t i = 0; i < m->nparts; i++) {
			pw_str(w, m->parts[i].topic);
			pw_u32(w, m->parts[i].partition);
			pw_u64(w, m->parts[i].offset);
		}
		return;
	}
	case API_FETCH_OFFSETS:
		pw_str(w, req->fetch_offsets.group);
		enc_tps(w, req->fetch_offsets.nparts, req->fetch_offsets.parts);
		return;
	case API_LIST_GROUPS:
		return;
	case API_DESCRIBE_GROUP:
		pw_str(w, req->describe_group.group);
		return;
	case API_DELETE_GROUP:
		pw_str(w, req->delete_group.group);
		return;
	case API_RESET_OFFSETS:
		pw_str(w, req->reset_offsets.group);
		pw_str(w, req->reset_offsets.topic);
		pw_u8(w, req->reset_offsets.mode);
		pw_i64(w, req->reset_offsets.value);
		return;
	default:
		w->failed = true;
	}
}

/* ---- responses ---- */

int proto_group_decode_response(uint16_t api, struct pr *r, struct arena *a,
				union proto_response *out)
{
	int err = 0;
	switch (api) {
	case API_JOIN_GROUP:
		out->join_group.member_id = pr_str(r);
		out->join_group.member_epoch = pr_u32(r);
		out->join_group.heartbeat_ms = pr_u32(r);
		break;
	case API_HEARTBEAT:
		out->heartbeat.member_epoch = pr_u32(r);
		out->heartbeat.heartbeat_ms = pr_u32(r);
		err = dec_tps(r, a, &out->heartbeat.nassigned, &out->heartbeat.assigned);
		break;
	case API_LEAVE_GROUP:
	case API_DELETE_GROUP:
		break;
	case API_COMMIT_OFFSETS: {
		struct proto_commit_offsets_resp *m = &out->commit_offsets;
		m->parts = proto_dec_array(r, a, MIN_TP_RESULT, sizeof(*m->parts), &m->nparts, &err);
		for (uint32_t i = 0; err == 0 && i < m->nparts; i++) {
			m->parts[i].topic = pr_str(r);
			m->parts[i].partition = pr_u32(r);
			m->parts[i].err = pr_u16(r);
			m->parts[i].msg = pr_str(r);
		}
		break;
	}
	case API_FETCH_OFFSETS:
		err = dec_committed(r, a, &out->fetch_offsets.nparts, &out->fetch_offsets.parts);
		break;
	case API_RESET_OFFSETS:
		err = dec_committed(r, a, &out->reset_offsets.nparts, &out->reset_offsets.parts);
		break;
	case API_LIST_GROUPS: {
		struct proto_list_groups_resp *m = &out->list_groups;
		m->groups = proto_dec_array(r, a, MIN_GROUP_BRIEF, sizeof(*m->groups), &m->ngroups,
					    &err);
		for (uint32_t i = 0; err == 0 && i < m->ngroups; i++) {
			m->groups[i].group = pr_str(r);
			m->groups[i].state = pr_str(r);
			m->groups[i].members = pr_u32(r);
		}
		break;
	}
	case API_DESCRIBE_GROUP: {
		struct proto_describe_group_resp *m = &out->describe_group;
		m->group = pr_str(r);
		m->state = pr_str(r);
		m->rebalances = pr_u64(r);
		m->members = proto_dec_array(r, a, MIN_MEMBER, sizeof(*m->members), &m->nmembers,
					     &err);
		for (uint32_t i = 0; err == 0 && i < m->nmembers; i++) {
			struct proto_group_member *gm = &m->members[i];
			gm->member_id = pr_str(r);
			gm->client_id = pr_str(r);
			gm->member_epoch = pr_u32(r);
			gm->last_seen_ms_ago = pr_u64(r);
			err = dec_tps(r, a, &gm->nowned, &gm->owned);
		}
		if (err == 0)
			m->parts = proto_dec_array(r, a, MIN_GROUP_PART, sizeof(*m->parts), &m->nparts,
						   &err);
		for (uint32_t i = 0; err == 0 && i < m->nparts; i++) {
			m->parts[i].topic = pr_str(r);
			m->parts[i].partition = pr_u32(r);
			m->parts[i].committed = pr_i64(r);
			m->parts[i].log_start = pr_u64(r);
			m->parts[i].log_end = pr_u64(r);
			m->parts[i].owner = pr_str(r);
		}
		break;
	}
	default:
		return -ENOTSUP;
	}
	return err != 0 ? err : status(r);
}

void proto_group_encode_response(struct pw *w, uint16_t api, const union proto_response *resp)
{
	switch (api) {
	case API_JOIN_GROUP:
		pw_str(w, resp->join_group.member_id);
		pw_u32(w, resp->join_group.member_epoch);
		pw_u32(w, resp->join_group.heartbeat_ms);
		return;
	case API_HEARTBEAT:
		pw_u32(w, resp->heartbeat.member_epoch);
		pw_u32(w, resp->heartbeat.heartbeat_ms);
		enc_tps(w, resp->heartbeat.nassigned, resp->heartbeat.assigned);
		return;
	case API_LEAVE_GROUP:
	case API_DELETE_GROUP:
		return;
	case API_COMMIT_OFFSETS: {
		const struct proto_commit_offsets_resp *m = &resp->commit_offsets;
		pw_u32(w, m->nparts);
		for (uint32_t i = 0; i < m->nparts; i++) {
			pw_str(w, m->parts[i].topic);
			pw_u32(w, m->parts[i].partition);
			pw_u16(w, m->parts[i].err);
			pw_str(w, m->parts[i].msg);
		}
		return;
	}
	case API_FETCH_OFFSETS:
		enc_committed(w, resp->fetch_offsets.nparts, resp->fetch_offsets.parts);
		return;
	case API_RESET_OFFSETS:
		enc_committed(w, resp->reset_offsets.nparts, resp->reset_offsets.parts);
		return;
	case API_LIST_GROUPS: {
		const struct proto_list_groups_resp *m = &resp->list_groups;
		pw_u32(w, m->ngroups);
		for (uint32_t i = 0; i < m->ngroups; i++) {
			pw_str(w, m->groups[i].group);
			pw_str(w, m->groups[i].state);
			pw_u32(w, m->groups[i].members);
		}
		return;
	}
	case API_DESCRIBE_GROUP: {
		const struct proto_describe_group_resp *m = &resp->describe_group;
		pw_str(w, m->group);
		pw_str(w, m->state);
		pw_u64(w, m->rebalances);
		pw_u32(w, m->nmembers);
		for (uint32_t i = 0; i < m->nmembers; i++) {
			const struct proto_group_member *gm = &m->members[i];
			pw_str(w, gm->member_id);
			pw_str(w, gm->client_id);
			pw_u32(w, gm->member_epoch);
			pw_u64(w, gm->last_seen_ms_ago);
			enc_tps(w, gm->nowned, gm->owned);
		}
		pw_u32(w, m->nparts);
		for (uint32_t i = 0; i < m->nparts; i++) {
			pw_str(w, m->parts[i].topic);
			pw_u32(w, m->parts[i].partition);
			pw_i64(w, m->parts[i].committed);
			pw_u64(w, m->parts[i].log_start);
			pw_u64(w, m->parts[i].log_end);
			pw_str(w, m->parts[i].owner);
		}
		return;
	}
	default:
		w->failed = true;
	}
}
