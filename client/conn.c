/* conn.c — one client connection to a ringmq broker: bootstrap failover,
 * reconnect backoff, handshake, and non-blocking frame I/O (see internal.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client/internal.h"

/* Responses are read into one buffer; a fetch response is at most a frame. */
#define IN_INITIAL (64u << 10)

void rc_conn_init(struct rc_conn *c, const struct ringmq_config *cfg)
{
	memset(c, 0, sizeof(*c));
	c->cfg = cfg;
	c->fd = -1;
	c->next_corr = 1;
	c->backoff_ms = cfg->backoff_ms;
}

bool rc_conn_up(const struct rc_conn *c)
{
	return c->fd >= 0;
}

void rc_conn_close(struct rc_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->in_len = c->in_used = 0;
	c->out_len = c->out_off = 0;
	c->peer_closed = false;
}

void rc_conn_free(struct rc_conn *c)
{
	rc_conn_close(c);
	free(c->in);
	free(c->out);
	c->in = c->out = NULL;
}

int rc_poll(int fd, bool want_write, int extra_fd, int timeout_ms)
{
	struct pollfd p[2] = { { .fd = fd, .events = POLLIN | (want_write ? POLLOUT : 0) },
			       { .fd = extra_fd, .events = POLLIN } };
	int n = poll(p, extra_fd >= 0 ? 2 : 1, timeout_ms);
	return n < 0 && errno == EINTR ? 0 : n;
}

static int set_err(struct rc_conn *c, int err, const char *what, int e)
{
	snprintf(c->err, sizeof(c->err), "%s %s: %s", what,
		 c->cfg->servers[c->server % c->cfg->nservers], strerror(e));
	return err;
}

/* Opens a TCP connection to host:port within timeout_ms. */
static int dial(const char *hostport, int timeout_ms, int *out)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	size_t hl = (size_t)(colon - hostport);
	if (hl >= sizeof(host))
		return EINVAL;
	memcpy(host, hostport, hl);
	host[hl] = '\0';
	if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
		memmove(host, host + 1, hl - 2);
		host[hl - 2] = '\0';
	}
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	struct addrinfo *res;
	if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
		return EHOSTUNREACH;
	int err = ECONNREFUSED;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
			err = errno;
			close(fd);
			continue;
		}
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int n = poll(&p, 1, timeout_ms);
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (n <= 0) {
			err = n == 0 ? ETIMEDOUT : errno;
			close(fd);
			continue;
		}
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
		if (soerr != 0) {
			err = soerr;
			close(fd);
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		freeaddrinfo(res);
		*out = fd;
		return 0;
	}
	freeaddrinfo(res);
	return err;
}

static int handshake(struct rc_conn *c, int timeout_ms)
{
	union proto_request req = { .handshake = { pstr_c(c->cfg->client_id), PROTO_VERSION_MIN,
						   PROTO_VERSION_MAX } };
	struct proto_resp_hdr h;
	uint8_t abuf[4096];
	struct arena a;
	arena_init(&a, abuf, sizeof(abuf));
	union proto_response resp;
	uint32_t corr = rc_conn_queue(c, API_HANDSHAKE, &req);
	int64_t deadline = rc_now_ms() + timeout_ms;
	while (corr != 0) {
		if (rc_conn_send_some(c) != 0 || rc_conn_recv_some(c) != 0)
			return set_err(c, RINGMQ_ERR_TRANSPORT, "handshake with", ECONNRESET);
		uint32_t len;
		const uint8_t *f = rc_conn_next_frame(c, &len);
		if (f != NULL) {
			struct pr body;
			if (proto_resp_header(f, len, &h, &body) != 0 || h.correlation_id != corr)
				return set_err(c, RINGMQ_ERR_PROTOCOL, "bad handshake from", EPROTO);
			if (h.err != ERR_NONE) {
				snprintf(c->err, sizeof(c->err), "broker refused the handshake: %.*s",
					 (int)h.msg.len, h.msg.p);
				return rc_err_from_broker(h.err);
			}
			if (proto_decode_response(API_HANDSHAKE, 0, &body, &a, &resp) != 0)
				return set_err(c, RINGMQ_ERR_PROTOCOL, "bad handshake from", EPROTO);
			return 0;
		}
		int left = (int)(deadline - rc_now_ms());
		if (left <= 0)
			return set_err(c, RINGMQ_ERR_TIMEOUT, "handshake with", ETIMEDOUT);
		rc_poll(c->fd, rc_conn_want_send(c), -1, left);
	}
	return RINGMQ_ERR_PROTOCOL;
}

int rc_conn_connect(struct rc_conn *c, int timeout_ms)
{
	if (c->fd >= 0)
		return 0;
	int64_t now = rc_now_ms();
	if (now < c->next_attempt_ms) {
		int wait = (int)(c->next_attempt_ms - now);
		if (wait > timeout_ms)
			return RINGMQ_ERR_TIMEOUT;
		struct timespec ts = { wait / 1000, (long)(wait % 1000) * 1000000 };
		nanosleep(&ts, NULL);
	}
	int64_t deadline = rc_now_ms() + timeout_ms;
	int ret = RINGMQ_ERR_TRANSPORT;
	/* Each bootstrap server once, starting with the one used last. */
	for (unsigned tries = 0; tries < c->cfg->nservers; tries++) {
		const char *server = c->cfg->servers[c->server % c->cfg->nservers];
		int left = (int)(deadline - rc_now_ms());
		if (left <= 0) {
			ret = RINGMQ_ERR_TIMEOUT;
			break;
		}
		int fd, e = dial(server, left, &fd);
		if (e != 0) {
			set_err(c, RINGMQ_ERR_TRANSPORT, "cannot connect to", e);
			c->server++;
			continue;
		}
		c->fd = fd;
		c->in_len = c->in_used = 0;
		c->out_len = c->out_off = 0;
		left = (int)(deadline - rc_now_ms());
		ret = handshake(c, left > 0 ? left : 1);
		if (ret == 0) {
			c->backoff_ms = c->cfg->backoff_ms;
			return 0;
		}
		rc_conn_close(c);
		c->server++;
	}
	/* Exponential backoff before the next round. */
	c->next_attempt_ms = rc_now_ms() + c->backoff_ms;
	c->backoff_ms = c->backoff_ms * 2 > c->cfg->backoff_max_ms ? c->cfg->backoff_max_ms
								  : c->backoff_ms * 2;
	return ret;
}

uint32_t rc_conn_queue_with(struct rc_conn *c, uint16_t api,
			    void (*encode)(struct pw *w, const void *arg), const void *arg)
{
	uint32_t corr = c->next_corr++;
	if (corr == 0)
		corr = c->next_corr++;
	/* Compact what was sent, then encode straight onto the end of the
	 * send buffer: a produce request carries whole batches, and building
	 * it elsewhere first cost a second copy of each, and reallocs as
	 * that buffer grew (a fifth of a small-message producer's work). */
	if (c->out_off > 0) {
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	/* A dynamic writer over the buffer: it reallocs it as needed, up to
	 * one largest frame more than is queued. */
	struct pw w = { .buf = c->out, .len = c->out_len, .cap = c->out_cap,
			.max = c->out_len + FRAME_SIZE_HARD_MAX };
	size_t start = proto_req_begin(&w, api, 0, corr);
	if (encode != NULL)
		encode(&w, arg);
	proto_frame_end(&w, start);
	/* Grown or not, w.buf is the buffer now (a failed realloc leaves it
	 * as it was); on failure the frame's partial bytes are dropped. */
	c->out = w.buf;
	c->out_cap = w.cap;
	if (w.failed)
		return 0;
	c->out_len = w.len;
	return corr;
}

struct queue_arg {
	uint16_t api;
	const union proto_request *req;
};

static void encode_req(struct pw *w, const void *arg)
{
	const struct queue_arg *q = arg;
	proto_encode_request(w, q->api, q->req);
}

uint32_t rc_conn_queue(struct rc_conn *c, uint16_t api, const union proto_request *req)
{
	struct queue_arg q = { api, req };
	return rc_conn_queue_with(c, api, req != NULL ? encode_req : NULL, &q);
}

bool rc_conn_want_send(const struct rc_conn *c)
{
	return c->out_off < c->out_len;
}

int rc_conn_send_some(struct rc_conn *c)
{
	if (c->fd < 0)
		return RINGMQ_ERR_TRANSPORT;
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			if (errno == EINTR)
				continue;
			set_err(c, RINGMQ_ERR_TRANSPORT, "send to", errno);
			rc_conn_close(c);
			return RINGMQ_ERR_TRANSPORT;
		}
		c->out_off += (size_t)n;
	}
	c->out_off = c->out_len = 0;
	return 0;
}

int rc_conn_recv_some(struct rc_conn *c)
{
	if (c->fd < 0)
		return RINGMQ_ERR_TRANSPORT;
	if (c->peer_closed) {
		set_err(c, RINGMQ_ERR_TRANSPORT, "connection closed by", ECONNRESET);
		rc_conn_close(c);
		return RINGMQ_ERR_TRANSPORT;
	}
	/* Drop frames already handed out. What follows them (part of a
	 * frame, possibly a large fetch response) moves to the front only
	 * when the room behind it runs out, not on every call. */
	if (c->in_used == c->in_len)
		c->in_len = c->in_used = 0;
	for (;;) {
		if (c->in_cap - c->in_len < 4096 && c->in_used > 0) {
			memmove(c->in, c->in + c->in_used, c->in_len - c->in_used);
			c->in_len -= c->in_used;
			c->in_used = 0;
		}
		if (c->in_cap - c->in_len < 4096) {
			size_t cap = c->in_cap ? c->in_cap * 2 : IN_INITIAL;
			if (cap > (size_t)FRAME_SIZE_HARD_MAX * 2)
				return 0; /* a whole frame fits already; let it be taken */
			uint8_t *n = realloc(c->in, cap);
			if (n == NULL)
				return RINGMQ_ERR_NO_MEMORY;
			c->in = n;
			c->in_cap = cap;
		}
		ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
		if (n > 0) {
			c->in_len += (size_t)n;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (c->in_len > c->in_used) {
			/* Replies that came before the close are answers all
			 * the same (a broker acknowledges, then closes): let
			 * the caller take them; the next call fails. */
			c->peer_closed = true;
			return 0;
		}
		set_err(c, RINGMQ_ERR_TRANSPORT, n == 0 ? "connection closed by" : "receive from",
			n == 0 ? ECONNRESET : errno);
		rc_conn_close(c);
		return RINGMQ_ERR_TRANSPORT;
	}
}

uint8_t *rc_conn_take_in(struct rc_conn *c, uint8_t *spare, size_t spare_cap, size_t *cap)
{
	size_t tail = c->in_len - c->in_used;
	if (spare == NULL || spare_cap < tail || spare_cap < IN_INITIAL) {
		size_t n = tail > IN_INITIAL ? tail : IN_INITIAL;
		uint8_t *s = realloc(spare, n);
		if (s == NULL)
			return NULL;
		spare = s;
		spare_cap = n;
	}
	if (tail > 0)
		memcpy(spare, c->in + c->in_used, tail);
	uint8_t *taken = c->in;
	*cap = c->in_cap;
	c->in = spare;
	c->in_cap = spare_cap;
	c->in_len = tail;
	c->in_used = 0;
	return taken;
}

const uint8_t *rc_conn_next_frame(struct rc_conn *c, uint32_t *len)
{
	uint32_t flen;
	int ret = proto_frame_peek(c->in + c->in_used, c->in_len - c->in_used, FRAME_SIZE_MIN_RESP,
				   FRAME_SIZE_HARD_MAX, &flen);
	if (ret != 0) {
		if (ret != -EAGAIN) {
			snprintf(c->err, sizeof(c->err), "malformed response frame from the broker");
			rc_conn_close(c);
		}
		return NULL;
	}
	const uint8_t *f = c->in + c->in_used;
	c->in_used += flen;
	*len = flen;
	return f;
}

int rc_conn_call(struct rc_conn *c, uint16_t api, const union proto_request *req, int timeout_ms,
		 struct proto_resp_hdr *h, union proto_response *resp, struct arena *a)
{
	int64_t deadline = rc_now_ms() + timeout_ms;
	for (int attempt = 0; attempt < 2; attempt++) {
		int ret = rc_conn_connect(c, (int)(deadline - rc_now_ms()));
		if (ret != 0)
			return ret;
		uint32_t corr = rc_conn_queue(c, api, req);
		if (corr == 0)
			return RINGMQ_ERR_MSG_TOO_LARGE;
		for (;;) {
			if (rc_conn_send_some(c) != 0 || rc_conn_recv_some(c) != 0)
				break; /* connection lost: reconnect once */
			uint32_t len;
			const uint8_t *f = rc_conn_next_frame(c, &len);
			if (f != NULL) {
				struct pr body;
				if (proto_resp_header(f, len, h, &body) != 0)
					return RINGMQ_ERR_PROTOCOL;
				if (h->correlation_id != corr)
					continue; /* a stale reply to an abandoned request */
				if (h->err != ERR_NONE || resp == NULL)
					return 0;
				arena_reset(a);
				return proto_decode_response(api, 0, &body, a, resp) == 0
					       ? 0
					       : RINGMQ_ERR_PROTOCOL;
			}
			if (c->fd < 0)
				break;
			int left = (int)(deadline - rc_now_ms());
			if (left <= 0) {
				/* The reply may still come: drop the connection so it
				 * cannot be taken for the next request's. */
				rc_conn_close(c);
				snprintf(c->err, sizeof(c->err), "no reply within %d ms", timeout_ms);
				return RINGMQ_ERR_TIMEOUT;
			}
			rc_poll(c->fd, rc_conn_want_send(c), -1, left);
		}
		c->next_attempt_ms = 0; /* reconnect at once, once */
	}
	return RINGMQ_ERR_TRANSPORT;
}
