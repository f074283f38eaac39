/* fetch.c — the fetch request: a long poll that answers as soon as
 * min_bytes are readable or max_wait_ms passes, with the stored batch bytes
 * read from the segment files straight into the response buffer.
 *
 * A parked fetch sits on the wait list of every partition it reads and in
 * the loop's timer heap; the log's visible-end listener (partition_visible)
 * wakes it the moment an append becomes readable, so a waiting consumer
 * sees a new message within one loop iteration and an idle one costs
 * nothing. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "common/say.h"
#include "storage/batch.h"

#define MSG_MAX 120

struct fetch_part {
	struct fwait fw;       /* on waiting_on->waiters while parked */
	struct partition *waiting_on;
	struct fetch_req *fr;
	struct ioq_op read_op;
	struct log_slice slice;
	struct pstr topic_name;
	uint32_t index;        /* into rparts */
	uint64_t offset;
	uint32_t max_bytes;
	uint32_t read_done;
	char msg[MSG_MAX];
};

struct fetch_req {
	struct conn *c;
	struct fetch_req *cprev, *cnext; /* c->fetches, while parked */
	uint32_t corr;
	uint32_t min_bytes, max_bytes;
	int64_t deadline;
	uint32_t heap_idx;
	bool parked;
	uint32_t nparts;
	struct proto_fetch_resp resp;
	struct proto_fetch_resp_part *rparts;
	struct fetch_part *parts;
	struct pw w;
	uint64_t reserved;      /* of w, counted in c->building_bytes */
	uint32_t reads_pending;
	int read_err;
	/* a consumer-group member's identity, checked on every answer */
	struct pstr group, member;
	uint32_t member_epoch;
};

int64_t fetch_deadline(const struct fetch_req *fr)
{
	return fr->deadline;
}

uint32_t *fetch_heap_index(struct fetch_req *fr)
{
	return &fr->heap_idx;
}

static void part_err(struct fetch_req *fr, struct fetch_part *fp, uint16_t err, const char *fmt,
		     ...) __attribute__((format(printf, 4, 5)));

static void part_err(struct fetch_req *fr, struct fetch_part *fp, uint16_t err, const char *fmt,
		     ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(fp->msg, MSG_MAX, fmt, ap);
	va_end(ap);
	struct proto_fetch_resp_part *rp = &fr->rparts[fp->index];
	rp->err = err;
	rp->msg = (struct pstr){ fp->msg, (uint16_t)(n < 0 ? 0 : n >= MSG_MAX ? MSG_MAX - 1 : n) };
	fr->c->loop->api[API_FETCH].errors++;
}

/* Resolves each partition again (a topic may be gone since the request
 * came) and checks offsets. Returns true if any partition has an error. */
static bool check_parts(struct fetch_req *fr)
{
	bool any = false;
	for (uint32_t i = 0; i < fr->nparts; i++) {
		struct fetch_part *fp = &fr->parts[i];
		struct proto_fetch_resp_part *rp = &fr->rparts[i];
		if (rp->err != ERR_NONE) {
			any = true;
			continue;
		}
		uint16_t err;
		struct partition *p = partition_lookup(fr->c->loop, fp->topic_name, rp->partition,
						       &err);
		if (p == NULL) {
			part_err(fr, fp, err, err == ERR_UNKNOWN_TOPIC ? "topic '%.*s' does not exist"
								       : "topic '%.*s' has no such partition",
				 fp->topic_name.len, fp->topic_name.p);
			any = true;
			continue;
		}
		if (fr->group.len > 0) {
			uint16_t gerr = group_fetch_check(fr->c->loop, fr->group, fr->member,
							  fr->member_epoch, fp->topic_name,
							  rp->partition);
			if (gerr != ERR_NONE) {
				part_err(fr, fp, gerr, "%s",
					 gerr == ERR_UNKNOWN_MEMBER ? "not a member of the group"
					 : gerr == ERR_NOT_OWNER ? "the member does not own it"
								 : "stale member epoch");
				any = true;
				continue;
			}
		}
		rp->log_start = log_start(p->log);
		rp->log_end = log_visible_end(p->log);
		/* Offsets up to log_end() exist: past the visible end they are
		 * only not readable yet (a flush=always tail before its
		 * fdatasync), so the fetch waits for them like one at the end.
		 * Calling them out of range would send group members to
		 * auto.offset.reset, which then commits their offsets
		 * backwards. */
		uint64_t end = log_end(p->log);
		if (fp->offset < rp->log_start || fp->offset > end) {
			part_err(fr, fp, ERR_OFFSET_OUT_OF_RANGE,
				 "offset %" PRIu64 " is out of range [%" PRIu64 ", %" PRIu64 "]",
				 fp->offset, rp->log_start, end);
			any = true;
		}
	}
	return any;
}

/* Readable bytes, up to what the request would take. */
static uint64_t available(struct fetch_req *fr, uint64_t enough)
{
	uint64_t total = 0;
	for (uint32_t i = 0; i < fr->nparts && total < enough; i++) {
		struct fetch_part *fp = &fr->parts[i];
		uint16_t err;
		struct partition *p = partition_lookup(fr->c->loop, fp->topic_name,
						       fr->rparts[i].partition, &err);
		if (p == NULL || fp->offset >= log_visible_end(p->log))
			continue;
		if (enough <= 1)
			return 1; /* the common case: any new data will do */
		struct log_slice s;
		if (log_read(p->log, fp->offset, fp->max_bytes, &s) == 0) {
			total += s.len;
			log_slice_release(p->log, &s);
		}
	}
	return total;
}

static void unpark(struct fetch_req *fr)
{
	struct loop *l = fr->c->loop;
	if (!fr->parked)
		return;
	fr->parked = false;
	for (uint32_t i = 0; i < fr->nparts; i++) {
		struct fetch_part *fp = &fr->parts[i];
		if (fp->waiting_on == NULL)
			continue;
		fp->fw.prev->next = fp->fw.next;
		fp->fw.next->prev = fp->fw.prev;
		fp->waiting_on = NULL;
	}
	timer_del(l, fr);
	struct conn *c = fr->c;
	if (fr->cprev)
		fr->cprev->cnext = fr->cnext;
	else
		c->fetches = fr->cnext;
	if (fr->cnext)
		fr->cnext->cprev = fr->cprev;
}

static void fetch_free(struct fetch_req *fr)
{
	struct conn *c = fr->c;
	pw_free(&fr->w);
	free(fr);
	conn_request_done(c);
	conn_unref(c);
}

static void read_done(struct ioq_op *op, int res, unsigned flags);

static void submit_read(struct fetch_req *fr, struct fetch_part *fp)
{
	struct proto_fetch_resp_part *rp = &fr->rparts[fp->index];
	fp->read_op.done = read_done;
	fp->read_op.kind = IOQ_READ;
	struct io_uring_sqe *sqe = ioq_sqe(&fr->c->loop->q, &fp->read_op);
	io_uring_prep_read(sqe, fp->slice.fd, fr->w.buf + rp->records_at + fp->read_done,
			   fp->slice.len - fp->read_done, fp->slice.pos + fp->read_done);
}

/* Messages in a fetched range: whole batches, from the offset asked for. */
static uint64_t count_messages(const uint8_t *p, uint32_t len, uint64_t from)
{
	uint64_t n = 0;
	for (uint32_t off = 0; len - off >= BATCH_HEADER_SIZE;) {
		struct batch_hdr h;
		if (batch_parse(p + off, len - off, &h) != 0 || h.length > len - off)
			break;
		uint64_t last = batch_last_offset(&h);
		if (last >= from)
			n += last - (h.base_offset > from ? h.base_offset : from) + 1;
		off += h.length;
	}
	return n;
}

static void reads_finished(struct fetch_req *fr)
{
	struct conn *c = fr->c;
	struct loop *l = c->loop;
	for (uint32_t i = 0; i < fr->nparts; i++) {
		struct fetch_part *fp = &fr->parts[i];
		if (fp->slice.seg == NULL)
			continue;
		log_slice_release(NULL, &fp->slice);
		/* The topic may have been deleted while the read ran. */
		struct topic *t = registry_find(&l->reg, fp->topic_name.p, fp->topic_name.len);
		if (t == NULL || fr->read_err != 0)
			continue;
		t->bytes_out += fp->slice.len;
		t->msgs_out += count_messages(fr->w.buf + fr->rparts[i].records_at, fp->slice.len,
					      fp->offset);
	}
	if (fr->read_err != 0)
		respond_error(c, API_FETCH, fr->corr, ERR_STORAGE, "reading the log failed: %s",
			      strerror(-fr->read_err));
	else
		conn_send_pw(c, &fr->w);
	/* Queued (now in out_bytes) or dropped: no longer being built. */
	conn_unreserve(c, fr->reserved);
	fr->reserved = 0;
	fetch_free(fr);
}

static void read_done(struct ioq_op *op, int res, unsigned flags)
{
	struct fetch_part *fp = (struct fetch_part *)((char *)op - offsetof(struct fetch_part,
									       read_op));
	struct fetch_req *fr = fp->fr;
	(void)flags;
	if (res > 0) {
		fp->read_done += (uint32_t)res;
		if (fp->read_done < fp->slice.len) {
			submit_read(fr, fp); /* short read: the rest */
			return;
		}
	} else if (res == -EINTR || res == -EAGAIN) {
		submit_read(fr, fp);
		return;
	} else if (fr->read_err == 0) {
		fr->read_err = res < 0 ? res : -EIO; /* 0: the file ended early */
	}
	if (--fr->reads_pending == 0)
		reads_finished(fr);
}

/* Builds the response: slices from the logs, a buffer laid out around them,
 * and a read per slice into its place. */
static void respond(struct fetch_req *fr)
{
	struct loop *l = fr->c->loop;
	check_parts(fr);
	uint64_t total = 0;
	size_t size = 64;
	for (uint32_t i = 0; i < fr->nparts; i++) {
		struct fetch_part *fp = &fr->parts[i];
		struct proto_fetch_resp_part *rp = &fr->rparts[i];
		size += 48 + fp->topic_name.len + rp->msg.len;
		rp->records = (struct pbytes){ NULL, 0 };
		if (rp->err != ERR_NONE || fp->offset >= rp->log_end)
			continue;
		if (total > 0 && total >= fr->max_bytes)
			continue; /* the request's budget is spent */
		uint64_t budget = fr->max_bytes - (total < fr->max_bytes ? total : fr->max_bytes);
		uint32_t want = fp->max_bytes < budget ? fp->max_bytes : (uint32_t)budget;
		uint16_t err;
		struct partition *p = partition_lookup(l, fp->topic_name, rp->partition, &err);
		int ret = log_read(p->log, fp->offset, want, &fp->slice);
		if (ret != 0) {
			if (ret == -EBADMSG)
				part_err(fr, fp, ERR_CORRUPT_BATCH,
					 "stored batches near offset %" PRIu64 " are damaged",
					 fp->offset);
			else
				part_err(fr, fp, err_from_errno(ret), "reading offset %" PRIu64
					 " failed: %s", fp->offset, strerror(-ret));
			continue;
		}
		rp->records.len = fp->slice.len;
		total += fp->slice.len;
		size += fp->slice.len;
	}
	pw_init_dyn(&fr->w, size, (size_t)l->cfg->max_frame_bytes + total + size);
	size_t start = proto_resp_begin(&fr->w, fr->corr, ERR_NONE, NULL);
	proto_encode_response(&fr->w, API_FETCH, (union proto_response *)&fr->resp);
	proto_frame_end(&fr->w, start);
	if (fr->w.failed) {
		fr->read_err = -ENOMEM;
		fr->reads_pending = 1;
		read_done(&fr->parts[0].read_op, -ENOMEM, 0);
		return;
	}
	fr->reserved = fr->w.cap;
	conn_reserve(fr->c, fr->reserved);
	fr->reads_pending = 1; /* held while submitting */
	for (uint32_t i = 0; i < fr->nparts; i++) {
		struct fetch_part *fp = &fr->parts[i];
		if (fp->slice.seg == NULL || fp->slice.len == 0)
			continue;
		fr->reads_pending++;
		submit_read(fr, fp);
	}
	if (--fr->reads_pending == 0)
		reads_finished(fr);
}

static void park(struct fetch_req *fr)
{
	struct conn *c = fr->c;
	struct loop *l = c->loop;
	for (uint32_t i = 0; i < fr->nparts; i++) {
		struct fetch_part *fp = &fr->parts[i];
		uint16_t err;
		struct partition *p = partition_lookup(l, fp->topic_name, fr->rparts[i].partition,
						       &err);
		if (p == NULL)
			continue;
		fp->waiting_on = p;
		fp->fw.fr = fr;
		fp->fw.next = p->waiters.next;
		fp->fw.prev = &p->waiters;
		p->waiters.next->prev = &fp->fw;
		p->waiters.next = &fp->fw;
	}
	fr->parked = true;
	fr->cprev = NULL;
	fr->cnext = c->fetches;
	if (c->fetches)
		c->fetches->cprev = fr;
	c->fetches = fr;
	timer_add(l, fr);
}

void fetch_wake(struct partition *p)
{
	/* Responding unlinks entries: collect the ready ones first. */
	struct fetch_req *ready[64];
	for (;;) {
		unsigned n = 0;
		for (struct fwait *w = p->waiters.next; w != &p->waiters && n < 64; w = w->next) {
			struct fetch_req *fr = w->fr;
			if (available(fr, fr->min_bytes) >= (fr->min_bytes ? fr->min_bytes : 1))
				ready[n++] = fr;
		}
		for (unsigned i = 0; i < n; i++) {
			unpark(ready[i]);
			respond(ready[i]);
		}
		if (n < 64)
			break;
	}
}

void partition_visible(void *arg)
{
	struct partition *p = arg;
	if (p->waiters.next != &p->waiters)
		fetch_wake(p);
}

void fetch_expire(struct loop *l, struct fetch_req *fr)
{
	(void)l;
	unpark(fr);
	respond(fr);
}

void fetch_cancel_conn(struct conn *c)
{
	while (c->fetches != NULL) {
		struct fetch_req *fr = c->fetches;
		unpark(fr);
		fetch_free(fr);
	}
}

struct pkey {
	const char *name;
	uint32_t len, partition;
};

static int pkey_cmp(const void *a, const void *b)
{
	const struct pkey *x = a, *y = b;
	if (x->partition != y->partition)
		return x->partition < y->partition ? -1 : 1;
	if (x->len != y->len)
		return x->len < y->len ? -1 : 1;
	return memcmp(x->name, y->name, x->len);
}

/* 1 if the request names a partition twice, 0 if not, -ENOMEM. A repeated
 * partition would be read and counted towards min_bytes once per mention,
 * and a parked request would sit on its wait list once per mention: every
 * append would then cost mentions x parts, which a hostile client can make
 * quadratic in the size of one request. */
static int has_duplicates(const struct proto_fetch_req *req, uint32_t nparts)
{
	if (nparts < 2)
		return 0;
	struct pkey *k = malloc(nparts * sizeof(*k));
	if (k == NULL)
		return -ENOMEM;
	uint32_t n = 0;
	for (uint32_t ti = 0; ti < req->ntopics; ti++)
		for (uint32_t pi = 0; pi < req->topics[ti].nparts; pi++)
			k[n++] = (struct pkey){ req->topics[ti].name.p, req->topics[ti].name.len,
						req->topics[ti].parts[pi].partition };
	qsort(k, n, sizeof(*k), pkey_cmp);
	int dup = 0;
	for (uint32_t i = 1; i < n && !dup; i++)
		dup = pkey_cmp(&k[i - 1], &k[i]) == 0;
	free(k);
	return dup;
}

void handle_fetch(struct conn *c, uint32_t corr, const struct proto_fetch_req *req)
{
	struct loop *l = c->loop;
	uint32_t nparts = 0;
	size_t names = 0;
	for (uint32_t i = 0; i < req->ntopics; i++) {
		nparts += req->topics[i].nparts;
		names += req->topics[i].name.len;
	}
	size_t size = sizeof(struct fetch_req) +
		      req->ntopics * sizeof(struct proto_fetch_resp_topic) +
		      nparts * (sizeof(struct proto_fetch_resp_part) + sizeof(struct fetch_part)) +
		      names + req->group.len + req->member_id.len + 16;
	int dup = has_duplicates(req, nparts);
	if (dup != 0) {
		respond_error(c, API_FETCH, corr, dup > 0 ? ERR_INVALID_REQUEST : ERR_BUSY,
			      dup > 0 ? "a partition is named twice" : "out of memory");
		return;
	}
	struct fetch_req *fr = calloc(1, size);
	if (fr == NULL) {
		respond_error(c, API_FETCH, corr, ERR_BUSY, "out of memory");
		return;
	}
	fr->c = c;
	fr->corr = corr;
	fr->min_bytes = req->min_bytes;
	/* No response may outgrow what one connection may buffer (nor the
	 * frame size): a few bytes of request must not pin 64 MiB. A fetch
	 * still returns at least one whole batch, so consumers progress. */
	uint64_t cap = l->cfg->max_buffered_bytes < l->cfg->max_frame_bytes
			       ? l->cfg->max_buffered_bytes
			       : l->cfg->max_frame_bytes;
	fr->max_bytes = req->max_bytes == 0 ? 1 : req->max_bytes < cap ? req->max_bytes
								     : (uint32_t)cap;
	fr->heap_idx = UINT32_MAX;
	uint32_t wait = req->max_wait_ms < l->cfg->max_wait_ms_limit ? req->max_wait_ms
								      : l->cfg->max_wait_ms_limit;
	fr->deadline = now_ms() + wait;
	fr->nparts = nparts;
	fr->resp.ntopics = req->ntopics;
	fr->resp.topics = (void *)(fr + 1);
	fr->rparts = (void *)(fr->resp.topics + req->ntopics);
	fr->parts = (void *)(fr->rparts + nparts);
	char *namebuf = (char *)(fr->parts + nparts);
	uint32_t i = 0;
	for (uint32_t ti = 0; ti < req->ntopics; ti++) {
		const struct proto_fetch_topic *qt = &req->topics[ti];
		struct proto_fetch_resp_topic *rt = &fr->resp.topics[ti];
		memcpy(namebuf, qt->name.p, qt->name.len);
		rt->name = (struct pstr){ namebuf, qt->name.len };
		namebuf += qt->name.len;
		rt->nparts = qt->nparts;
		rt->parts = &fr->rparts[i];
		for (uint32_t k = 0; k < qt->nparts; k++, i++) {
			struct fetch_part *fp = &fr->parts[i];
			fp->fr = fr;
			fp->index = i;
			fp->topic_name = rt->name;
			fp->offset = qt->parts[k].offset;
			fp->max_bytes = qt->parts[k].max_bytes ? qt->parts[k].max_bytes : 1;
			fp->slice.fd = -1;
			fr->rparts[i].partition = qt->parts[k].partition;
		}
	}
	memcpy(namebuf, req->group.p, req->group.len);
	fr->group = (struct pstr){ namebuf, req->group.len };
	namebuf += req->group.len;
	memcpy(namebuf, req->member_id.p, req->member_id.len);
	fr->member = (struct pstr){ namebuf, req->member_id.len };
	fr->member_epoch = req->member_epoch;
	c->inflight++;
	conn_ref(c);
	bool errors = check_parts(fr);
	if (errors || wait == 0 || nparts == 0 ||
	    available(fr, fr->min_bytes) >= (fr->min_bytes ? fr->min_bytes : 1)) {
		respond(fr);
		return;
	}
	park(fr);
}
