/* consumer.c — the consumer of assigned partitions (see ringmq.h).
 *
 * poll() hands out views into the last fetch response (and the buffers its
 * lz4 batches were decompressed into); they stay valid until the next poll.
 * As soon as a response is taken apart, the next fetch is sent, so it is on
 * its way while the application works on the messages (pipelining).
 *
 * Every batch is checksummed before its records are read (check.crcs), so a
 * consumer never hands out damaged bytes: it reports the topic, partition
 * and offsets instead and stops reading that partition until a seek.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client/consumer_impl.h"
#include "storage/batch.h"

static void fbuf_clear(struct fbuf *f)
{
	for (size_t i = 0; i < f->nscratch; i++)
		free(f->scratch[i]);
	f->nscratch = 0;
}

static void fbuf_free(struct fbuf *f)
{
	fbuf_clear(f);
	free(f->scratch);
	free(f->frame);
	memset(f, 0, sizeof(*f));
}

static void *fbuf_scratch(struct fbuf *f, size_t n)
{
	if (f->nscratch == f->scratch_cap) {
		size_t cap = f->scratch_cap ? f->scratch_cap * 2 : 16;
		void **s = realloc(f->scratch, cap * sizeof(*s));
		if (s == NULL)
			return NULL;
		f->scratch = s;
		f->scratch_cap = cap;
	}
	void *p = malloc(n ? n : 1);
	if (p)
		f->scratch[f->nscratch++] = p;
	return p;
}

struct ringmq_consumer *ringmq_consumer_new(const struct ringmq_config *cfg, char *errstr,
					    size_t errlen)
{
	struct ringmq_consumer *c = calloc(1, sizeof(*c));
	if (c != NULL)
		c->arena_buf = malloc(1u << 20);
	if (c == NULL || c->arena_buf == NULL) {
		free(c);
		rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
		return NULL;
	}
	if (cfg)
		c->cfg = *cfg;
	else
		rc_config_default(&c->cfg);
	arena_init(&c->arena, c->arena_buf, 1u << 20);
	rc_conn_init(&c->conn, &c->cfg);
	return c;
}

static void drop_parts(struct ringmq_consumer *c)
{
	for (size_t i = 0; i < c->nparts; i++)
		free(c->parts[i].topic);
	free(c->parts);
	free(c->fetch_epochs);
	c->parts = NULL;
	c->fetch_epochs = NULL;
	c->nparts = 0;
}

void ringmq_consumer_free(struct ringmq_consumer *c)
{
	if (c == NULL)
		return;
	if (c->grp)
		group_close(c);
	drop_parts(c);
	fbuf_free(&c->cur);
	free(c->pending);
	free(c->pending_part);
	rc_conn_free(&c->conn);
	free(c->arena_buf);
	free(c);
}

struct cpart *consumer_find_part(struct ringmq_consumer *c, const char *topic, size_t len,
				 uint32_t partition)
{
	for (size_t i = 0; i < c->nparts; i++)
		if (c->parts[i].partition == partition && strlen(c->parts[i].topic) == len &&
		    memcmp(c->parts[i].topic, topic, len) == 0)
			return &c->parts[i];
	return NULL;
}

int consumer_call(struct ringmq_consumer *c, uint16_t api, const union proto_request *req,
		  union proto_response *resp, char *errstr, size_t errlen)
{
	c->fetch_corr = 0;
	group_forget_inflight(c);
	struct proto_resp_hdr h;
	int ret = rc_conn_call(&c->conn, api, req, c->cfg.request_timeout_ms, &h, resp, &c->arena);
	if (ret != 0)
		return rc_fail(errstr, errlen, ret, "%s", c->conn.err[0] ? c->conn.err
									: ringmq_strerror(ret));
	if (h.err != ERR_NONE)
		return rc_fail(errstr, errlen, rc_err_from_broker(h.err), "%.*s", (int)h.msg.len,
			       h.msg.p);
	return 0;
}

/* Resolves an offset spec (BEGINNING, END, or a timestamp if by_time). */
static int resolve(struct ringmq_consumer *c, const char *topic, uint32_t partition, int64_t spec,
		   bool by_time, int64_t *out, char *errstr, size_t errlen)
{
	if (!by_time && spec >= 0) {
		*out = spec;
		return 0;
	}
	struct proto_lo_part p = { partition, spec };
	struct proto_lo_topic t = { pstr_c(topic), 1, &p };
	union proto_request req = { .list_offsets = { 1, &t } };
	union proto_response resp;
	int ret = consumer_call(c, API_LIST_OFFSETS, &req, &resp, errstr, errlen);
	if (ret != 0)
		return ret;
	if (resp.list_offsets.ntopics != 1 || resp.list_offsets.topics[0].nparts != 1)
		return rc_fail(errstr, errlen, RINGMQ_ERR_PROTOCOL, "unexpected list-offsets reply");
	const struct proto_lo_resp_part *rp = &resp.list_offsets.topics[0].parts[0];
	if (rp->err)
		return rc_fail(errstr, errlen, rc_err_from_broker(rp->err), "%s[%u]: %.*s", topic,
			       partition, (int)rp->msg.len, rp->msg.p);
	*out = (int64_t)rp->offset;
	return 0;
}

static void drop_pending_of(struct ringmq_consumer *c, const struct cpart *cp)
{
	size_t k = c->pending_pos;
	uint32_t idx = (uint32_t)(cp - c->parts);
	for (size_t i = c->pending_pos; i < c->npending; i++) {
		if (c->pending_part[i] == idx)
			continue;
		c->pending_part[k] = c->pending_part[i];
		c->pending[k++] = c->pending[i];
	}
	c->npending = k;
}

int consumer_add_part(struct ringmq_consumer *c, const char *topic, uint32_t partition,
		      int64_t next)
{
	struct cpart *parts = realloc(c->parts, (c->nparts + 1) * sizeof(*parts));
	if (parts == NULL)
		return RINGMQ_ERR_NO_MEMORY;
	c->parts = parts;
	uint32_t *ep = realloc(c->fetch_epochs, (c->nparts + 1) * sizeof(*ep));
	if (ep == NULL)
		return RINGMQ_ERR_NO_MEMORY;
	c->fetch_epochs = ep;
	struct cpart *cp = &c->parts[c->nparts];
	memset(cp, 0, sizeof(*cp));
	cp->topic = strdup(topic);
	if (cp->topic == NULL)
		return RINGMQ_ERR_NO_MEMORY;
	cp->partition = partition;
	cp->next = next;
	cp->returned = -1;
	cp->committed = -1;
	cp->log_end = -1;
	c->fetch_epochs[c->nparts] = 0;
	c->nparts++;
	c->fetch_corr = 0; /* the fetch in flight does not cover it: send anew */
	return 0;
}

void consumer_drop_part(struct ringmq_consumer *c, size_t index)
{
	struct cpart *cp = &c->parts[index];
	drop_pending_of(c, cp);
	free(cp->topic);
	memmove(cp, cp + 1, (c->nparts - index - 1) * sizeof(*cp));
	memmove(&c->fetch_epochs[index], &c->fetch_epochs[index + 1],
		(c->nparts - index - 1) * sizeof(*c->fetch_epochs));
	c->nparts--;
	for (size_t i = c->pending_pos; i < c->npending; i++)
		if (c->pending_part[i] > index)
			c->pending_part[i]--;
	c->fetch_corr = 0; /* its reply would name a partition no longer here */
}

int ringmq_consumer_assign(struct ringmq_consumer *c, const struct ringmq_topic_partition *tps,
			   size_t n, char *errstr, size_t errlen)
{
	if (c == NULL || (n && tps == NULL))
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	if (c->grp != NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
			       "subscribed to a group: the group assigns partitions");
	/* Every partition must exist: one metadata call for all topics. */
	struct pstr *names = calloc(n ? n : 1, sizeof(*names));
	if (names == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	for (size_t i = 0; i < n; i++) {
		if (tps[i].topic == NULL || tps[i].partition < 0) {
			free(names);
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG,
				       "assignment %zu: no topic or a negative partition", i);
		}
		names[i] = pstr_c(tps[i].topic);
	}
	union proto_request req = { .metadata = { (uint32_t)n, names } };
	union proto_response resp;
	int ret = n ? consumer_call(c, API_METADATA, &req, &resp, errstr, errlen) : 0;
	free(names);
	if (ret != 0)
		return ret;
	for (size_t i = 0; i < n; i++) {
		const struct proto_md_topic *mt = NULL;
		for (uint32_t k = 0; k < resp.metadata.ntopics; k++)
			if (pstr_eq(resp.metadata.topics[k].name, tps[i].topic))
				mt = &resp.metadata.topics[k];
		if (mt == NULL || mt->err)
			return rc_fail(errstr, errlen, RINGMQ_ERR_UNKNOWN_TOPIC,
				       "topic '%s' does not exist", tps[i].topic);
		if ((uint32_t)tps[i].partition >= mt->nparts)
			return rc_fail(errstr, errlen, RINGMQ_ERR_UNKNOWN_PARTITION,
				       "topic '%s' has no partition %d (it has %u)", tps[i].topic,
				       tps[i].partition, mt->nparts);
	}
	struct cpart *parts = calloc(n ? n : 1, sizeof(*parts));
	uint32_t *epochs = calloc(n ? n : 1, sizeof(*epochs));
	if (parts == NULL || epochs == NULL) {
		free(parts);
		free(epochs);
		return rc_fail(errstr, errlen, RINGMQ_ERR_NO_MEMORY, "out of memory");
	}
	for (size_t i = 0; i < n; i++) {
		parts[i].topic = strdup(tps[i].topic);
		parts[i].partition = (uint32_t)tps[i].partition;
		parts[i].log_end = -1;
		parts[i].returned = -1;
		parts[i].committed = -1;
		ret = parts[i].topic ? resolve(c, tps[i].topic, (uint32_t)tps[i].partition,
					       tps[i].offset, false, &parts[i].next, errstr, errlen)
				     : RINGMQ_ERR_NO_MEMORY;
		if (ret != 0) {
			for (size_t k = 0; k <= i; k++)
				free(parts[k].topic);
			free(parts);
			free(epochs);
			return ret;
		}
	}
	drop_parts(c);
	c->parts = parts;
	c->fetch_epochs = epochs;
	c->nparts = n;
	c->npending = c->pending_pos = 0;
	c->fetch_corr = 0;
	return 0;
}

static int seek(struct ringmq_consumer *c, const char *topic, int32_t partition, int64_t spec,
		bool by_time, char *errstr, size_t errlen)
{
	if (c == NULL || topic == NULL || partition < 0)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "invalid argument");
	struct cpart *cp = consumer_find_part(c, topic, strlen(topic), (uint32_t)partition);
	if (cp == NULL)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "%s[%d] is not assigned",
			       topic, partition);
	int64_t off;
	int ret = resolve(c, topic, (uint32_t)partition, spec, by_time, &off, errstr, errlen);
	if (ret != 0)
		return ret;
	cp->next = off;
	if (c->grp != NULL)
		cp->returned = off; /* the group's position: the next commit stores it */
	cp->epoch++;
	cp->stopped = false;
	cp->err = 0;
	drop_pending_of(c, cp);
	return 0;
}

int ringmq_consumer_seek(struct ringmq_consumer *c, const char *topic, int32_t partition,
			 int64_t offset, char *errstr, size_t errlen)
{
	if (offset < RINGMQ_OFFSET_BEGINNING)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "invalid offset %" PRId64,
			       offset);
	return seek(c, topic, partition, offset, false, errstr, errlen);
}

int ringmq_consumer_seek_time(struct ringmq_consumer *c, const char *topic, int32_t partition,
			      int64_t ts_ms, char *errstr, size_t errlen)
{
	if (ts_ms < 0)
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "negative timestamp");
	return seek(c, topic, partition, ts_ms, true, errstr, errlen);
}

int ringmq_consumer_position(struct ringmq_consumer *c, const char *topic, int32_t partition,
			     int64_t *next_offset, int64_t *log_end)
{
	if (c == NULL || topic == NULL || partition < 0)
		return RINGMQ_ERR_INVALID_ARG;
	struct cpart *cp = consumer_find_part(c, topic, strlen(topic), (uint32_t)partition);
	if (cp == NULL)
		return RINGMQ_ERR_INVALID_ARG;
	if (next_offset) {
		/* Messages fetched but not yet handed out by poll come first
		 * (each partition's messages point at its own topic string). */
		*next_offset = cp->next;
		for (size_t i = c->pending_pos; i < c->npending; i++) {
			if (c->pending[i].topic == cp->topic) {
				*next_offset = c->pending[i].offset;
				break;
			}
		}
	}
	if (log_end)
		*log_end = cp->log_end;
	return 0;
}

int ringmq_message_header(const struct ringmq_message *m, size_t i, const char **name,
			  size_t *name_len, const void **value, size_t *value_len)
{
	if (m == NULL || i >= m->header_count)
		return RINGMQ_ERR_INVALID_ARG;
	const uint8_t *p = m->headers_raw, *end = p + m->headers_len;
	struct batch_kv kv;
	for (size_t k = 0; k <= i; k++)
		if (batch_kv_next(&p, end, &kv) != 1)
			return RINGMQ_ERR_CORRUPT_MESSAGE;
	*name = kv.name;
	*name_len = kv.name_len;
	*value = kv.value;
	*value_len = kv.value_len;
	return 0;
}

/* ---- fetching ---- */

static int send_fetch(struct ringmq_consumer *c)
{
	if (c->fetch_corr != 0)
		return 0;
	size_t n = 0;
	for (size_t i = 0; i < c->nparts; i++)
		n += !c->parts[i].stopped;
	if (n == 0)
		return 0;
	struct proto_fetch_part *fp = calloc(n, sizeof(*fp));
	struct proto_fetch_topic *ft = calloc(n, sizeof(*ft));
	if (fp == NULL || ft == NULL) {
		free(fp);
		free(ft);
		return RINGMQ_ERR_NO_MEMORY;
	}
	/* One topic entry per partition keeps this simple; the broker takes
	 * repeated topic names. */
	size_t k = 0;
	for (size_t i = 0; i < c->nparts; i++) {
		struct cpart *cp = &c->parts[i];
		if (cp->stopped)
			continue;
		c->fetch_epochs[i] = cp->epoch;
		fp[k] = (struct proto_fetch_part){ cp->partition, (uint64_t)cp->next,
						   c->cfg.fetch_partition_max_bytes };
		ft[k] = (struct proto_fetch_topic){ pstr_c(cp->topic), 1, &fp[k] };
		k++;
	}
	union proto_request req = { .fetch = { c->cfg.fetch_max_wait_ms, c->cfg.fetch_min_bytes,
					       c->cfg.fetch_max_bytes, (uint32_t)k, ft } };
	group_fetch_identity(c, &req.fetch.group, &req.fetch.member_id, &req.fetch.member_epoch);
	c->fetch_corr = rc_conn_queue(&c->conn, API_FETCH, &req);
	free(fp);
	free(ft);
	if (c->fetch_corr == 0)
		return RINGMQ_ERR_NO_MEMORY;
	return rc_conn_send_some(&c->conn);
}

static int push_msg(struct ringmq_consumer *c, const struct ringmq_message *m, uint32_t part)
{
	if (c->npending == c->pending_cap) {
		size_t cap = c->pending_cap ? c->pending_cap * 2 : 1024;
		struct ringmq_message *n = realloc(c->pending, cap * sizeof(*n));
		if (n == NULL)
			return RINGMQ_ERR_NO_MEMORY;
		c->pending = n;
		uint32_t *pp = realloc(c->pending_part, cap * sizeof(*pp));
		if (pp == NULL)
			return RINGMQ_ERR_NO_MEMORY;
		c->pending_part = pp;
		c->pending_cap = cap;
	}
	c->pending_part[c->npending] = part;
	c->pending[c->npending++] = *m;
	return 0;
}

static void part_fail(struct cpart *cp, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void part_fail(struct cpart *cp, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cp->errmsg, sizeof(cp->errmsg), fmt, ap);
	va_end(ap);
	cp->err = err;
	cp->stopped = true;
}

/* Turns one partition's fetched bytes into messages. */
static void take_records(struct ringmq_consumer *c, struct cpart *cp, const uint8_t *p,
			 uint32_t len)
{
	for (uint32_t off = 0; off < len;) {
		struct batch_hdr h;
		int ret = c->cfg.check_crcs ? batch_verify(p + off, len - off, &h)
					    : batch_parse(p + off, len - off, &h);
		if (ret == 0 && h.length > len - off)
			ret = -ENODATA;
		if (ret == -ENODATA)
			return; /* the last batch was cut short: fetch again from it */
		if (ret != 0) {
			struct batch_hdr hh;
			if (batch_parse(p + off, len - off, &hh) == 0)
				part_fail(cp, RINGMQ_ERR_CORRUPT_MESSAGE,
					  "%s[%u]: batch with offsets %" PRIu64 "-%" PRIu64
					  " is damaged (checksum mismatch)",
					  cp->topic, cp->partition, hh.base_offset,
					  batch_last_offset(&hh));
			else
				part_fail(cp, RINGMQ_ERR_CORRUPT_MESSAGE,
					  "%s[%u]: damaged batch after offset %" PRId64, cp->topic,
					  cp->partition, cp->next - 1);
			return;
		}
		if (h.base_offset > (uint64_t)cp->next) {
			part_fail(cp, RINGMQ_ERR_PROTOCOL,
				  "%s[%u]: expected offset %" PRId64 ", got a batch from %" PRIu64,
				  cp->topic, cp->partition, cp->next, h.base_offset);
			return;
		}
		if (batch_last_offset(&h) >= (uint64_t)cp->next) {
			void *scratch = NULL;
			if (batch_compression(&h) != BATCH_COMPRESSION_NONE &&
			    (scratch = fbuf_scratch(&c->cur, h.records_size)) == NULL) {
				part_fail(cp, RINGMQ_ERR_NO_MEMORY, "out of memory decompressing");
				return;
			}
			struct batch_iter it;
			struct batch_record rec;
			ret = batch_iter_init(&it, p + off, scratch, h.records_size);
			while (ret == 0 && (ret = batch_iter_next(&it, &rec)) == 1) {
				ret = 0; /* 1: a record; the loop runs until 0 or an error */
				if (rec.offset < (uint64_t)cp->next)
					continue;
				struct ringmq_message m = {
					.topic = cp->topic,
					.partition = (int32_t)cp->partition,
					.offset = (int64_t)rec.offset,
					.timestamp_ms = rec.timestamp,
					.key = rec.key,
					.key_len = rec.key_len,
					.value = rec.value,
					.value_len = rec.value_len,
					.header_count = rec.header_count,
					.headers_raw = rec.headers,
					.headers_len = rec.headers_len,
				};
				if (push_msg(c, &m, (uint32_t)(cp - c->parts)) != 0) {
					part_fail(cp, RINGMQ_ERR_NO_MEMORY, "out of memory");
					return;
				}
			}
			if (ret < 0) {
				part_fail(cp, RINGMQ_ERR_CORRUPT_MESSAGE,
					  "%s[%u]: batch with offsets %" PRIu64 "-%" PRIu64
					  " has malformed records",
					  cp->topic, cp->partition, h.base_offset, batch_last_offset(&h));
				return;
			}
			cp->next = (int64_t)batch_last_offset(&h) + 1;
		}
		off += h.length;
	}
}

/* Takes a fetch response apart. Called only with nothing handed out
 * pending, so the buffer behind the last poll's views is free again. */
static void take_fetch(struct ringmq_consumer *c, const uint8_t *frame, uint32_t len)
{
	/* Own the bytes, since views into them must outlive what the
	 * connection does next: take the receive buffer the response is in,
	 * and give the connection the last response's buffer instead. A
	 * fetch response is then written once, by recv, where poll's views
	 * point (copying it out cost a quarter of a small-message consumer's
	 * time). */
	size_t cap;
	uint8_t *buf = rc_conn_take_in(&c->conn, c->cur.frame, c->cur.cap, &cap);
	if (buf == NULL)
		return; /* out of memory: the next poll fetches it again */
	c->cur.frame = buf;
	c->cur.cap = cap;
	struct proto_resp_hdr h;
	struct pr body;
	if (proto_resp_header(frame, len, &h, &body) != 0)
		return;
	if (h.err != 0) {
		/* The whole request failed: say so once; the next poll fetches
		 * again. */
		struct cpart *cp = c->nparts ? &c->parts[0] : NULL;
		if (cp != NULL && cp->err == 0) {
			snprintf(cp->errmsg, sizeof(cp->errmsg), "fetch failed: %.*s",
				 (int)h.msg.len, h.msg.p);
			cp->err = rc_err_from_broker(h.err);
		}
		return;
	}
	arena_reset(&c->arena);
	union proto_response resp;
	if (proto_decode_response(API_FETCH, 0, &body, &c->arena, &resp) != 0)
		return;
	for (uint32_t t = 0; t < resp.fetch.ntopics; t++) {
		const struct proto_fetch_resp_topic *rt = &resp.fetch.topics[t];
		for (uint32_t k = 0; k < rt->nparts; k++) {
			const struct proto_fetch_resp_part *rp = &rt->parts[k];
			struct cpart *cp = consumer_find_part(c, rt->name.p, rt->name.len, rp->partition);
			if (cp == NULL || cp->stopped ||
			    c->fetch_epochs[cp - c->parts] != cp->epoch)
				continue; /* unassigned or sought since it was sent */
			if (rp->err == ERR_OFFSET_OUT_OF_RANGE && c->grp != NULL) {
				/* The group's position is gone (retention passed it,
				 * or the topic was made anew): auto.offset.reset
				 * says where to go on, and the next commit stores it. */
				cp->next = c->cfg.offset_reset_latest ? (int64_t)rp->log_end
								       : (int64_t)rp->log_start;
				cp->returned = cp->next;
				cp->epoch++;
				cp->log_end = (int64_t)rp->log_end;
				continue;
			}
			if (rp->err != 0) {
				part_fail(cp, rc_err_from_broker(rp->err), "%s[%u]: %.*s", cp->topic,
					  cp->partition, (int)rp->msg.len, rp->msg.p);
				cp->log_end = (int64_t)rp->log_end;
				continue;
			}
			cp->log_end = (int64_t)rp->log_end;
			take_records(c, cp, rp->records.p, rp->records.len);
		}
	}
}

static bool has_error(const struct ringmq_consumer *c)
{
	for (size_t i = 0; i < c->nparts; i++)
		if (c->parts[i].err != 0)
			return true;
	return false;
}

/* An error waiting to be reported, if any (cleared once reported). */
static int pending_error(struct ringmq_consumer *c, char *errstr, size_t errlen)
{
	for (size_t i = 0; i < c->nparts; i++) {
		if (c->parts[i].err != 0) {
			int err = c->parts[i].err;
			c->parts[i].err = 0;
			return rc_fail(errstr, errlen, err, "%s", c->parts[i].errmsg);
		}
	}
	return 0;
}

/* Takes every whole reply received: fetch replies become messages, group
 * replies go to group.c. */
static void dispatch(struct ringmq_consumer *c)
{
	uint32_t len;
	const uint8_t *f;
	while ((f = rc_conn_next_frame(&c->conn, &len)) != NULL) {
		struct proto_resp_hdr h;
		struct pr body;
		if (proto_resp_header(f, len, &h, &body) != 0)
			continue;
		if (c->fetch_corr != 0 && h.correlation_id == c->fetch_corr) {
			c->fetch_corr = 0;
			take_fetch(c, f, len);
		} else if (c->grp != NULL) {
			group_take_reply(c, &h, &body);
		}
	}
}

int ringmq_consumer_poll(struct ringmq_consumer *c, int timeout_ms, struct ringmq_message *msgs,
			 size_t max, size_t *n, char *errstr, size_t errlen)
{
	if (c == NULL || n == NULL || (max && msgs == NULL))
		return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "NULL argument");
	*n = 0;
	int64_t deadline = rc_now_ms() + (timeout_ms < 0 ? 1000000000 : timeout_ms);
	for (;;) {
		/* Group duties first, even with messages buffered: a member that
		 * polls only for what it has must still heartbeat. */
		if (c->grp != NULL) {
			int err = group_poll(c, errstr, errlen);
			if (err != 0)
				return err;
		}
		if (c->pending_pos < c->npending && c->grp != NULL && group_waiting(c) &&
		    rc_conn_recv_some(&c->conn) == 0)
			dispatch(c); /* heartbeat and commit replies, without waiting */
		if (c->pending_pos < c->npending) {
			size_t k = c->npending - c->pending_pos;
			if (k > max)
				k = max;
			memcpy(msgs, c->pending + c->pending_pos, k * sizeof(*msgs));
			/* What poll returned is what a commit covers. */
			for (size_t i = 0; i < k; i++)
				c->parts[c->pending_part[c->pending_pos + i]].returned =
					msgs[i].offset + 1;
			c->pending_pos += k;
			*n = k;
			if (c->pending_pos == c->npending)
				send_fetch(c); /* the next one is on its way meanwhile */
			return 0;
		}
		/* Everything handed out before is released now. */
		c->npending = c->pending_pos = 0;
		fbuf_clear(&c->cur);
		int err = pending_error(c, errstr, errlen);
		if (err != 0)
			return err;
		if (c->grp == NULL && c->nparts == 0) {
			return rc_fail(errstr, errlen, RINGMQ_ERR_INVALID_ARG, "nothing is assigned");
		}
		int left = (int)(deadline - rc_now_ms());
		if (!rc_conn_up(&c->conn)) {
			c->fetch_corr = 0;
			group_forget_inflight(c);
			int ret = rc_conn_connect(&c->conn, left > 0 ? left : 0);
			if (ret != 0) {
				/* rc_conn_connect returns at once while a reconnect
				 * backoff is in force: wait it out (up to the
				 * deadline) rather than spin. */
				int64_t now = rc_now_ms();
				if (now < deadline) {
					int64_t until = c->conn.next_attempt_ms < deadline
								? c->conn.next_attempt_ms
								: deadline;
					if (until > now) {
						struct timespec ts = { (until - now) / 1000,
								       (long)((until - now) % 1000) *
									       1000000 };
						nanosleep(&ts, NULL);
					}
					continue;
				}
				return rc_fail(errstr, errlen, RINGMQ_ERR_TRANSPORT, "%s", c->conn.err);
			}
		}
		if (c->nparts > 0 && send_fetch(c) != 0 && !rc_conn_up(&c->conn))
			continue;
		dispatch(c);
		if (c->npending > 0 || has_error(c))
			continue; /* hand them out (or report it) from the top */
		left = (int)(deadline - rc_now_ms());
		if (left <= 0)
			return 0;
		if (c->grp != NULL) {
			int due = group_next_due(c);
			if (due <= 0)
				continue; /* a heartbeat or commit is due now */
			if (due < left)
				left = due;
		} else if (c->fetch_corr == 0) {
			/* No fetch could be sent: every partition is stopped (by
			 * an error, until a seek), so nothing can come. Wait out
			 * the timeout instead of spinning through it. */
			struct timespec ts = { left / 1000, (long)(left % 1000) * 1000000 };
			nanosleep(&ts, NULL);
			return 0;
		}
		rc_poll(c->conn.fd, rc_conn_want_send(&c->conn), -1, left);
		if (rc_conn_send_some(&c->conn) != 0 || rc_conn_recv_some(&c->conn) != 0) {
			c->fetch_corr = 0; /* lost: reconnect and fetch again */
			group_forget_inflight(c);
		}
	}
}
