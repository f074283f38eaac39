/* conn.c — client connections: multishot receive into the loop's provided
 * buffers, frame assembly, backpressure, and the send queue.
 *
 * Backpressure: a connection stops reading its socket (its multishot receive
 * is cancelled and not re-armed) while it has max.inflight.requests requests
 * being served, more than max.buffered.bytes of responses unsent, or a
 * produce that waits for staging room. Whatever it had received stays in
 * c->in, bounded by one frame plus what the kernel delivered before the
 * cancel, and is processed when the condition clears. So a client that sends
 * faster than it reads is slowed down, and cannot grow the broker's memory.
 */
#include <errno.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/broker.h"
#include "common/say.h"

/* A frame begun but not finished within this long ends its connection: a
 * client cannot park half a frame's worth of broker memory forever. */
#define PARTIAL_FRAME_TIMEOUT_MS 60000

static void recv_done(struct ioq_op *op, int res, unsigned flags);
static void send_done(struct ioq_op *op, int res, unsigned flags);
static void process_held(struct conn *c);

static struct conn *conn_of(struct ioq_op *op, size_t off)
{
	return (struct conn *)((char *)op - off);
}

void conn_ref(struct conn *c)
{
	c->refs++;
}

static void conn_free(struct conn *c)
{
	struct loop *l = c->loop;
	close(c->fd);
	for (struct obuf *b = c->out_head, *n; b != NULL; b = n) {
		n = b->next;
		free(b->data);
		free(b);
	}
	free(c->in);
	c->prev->next = c->next;
	c->next->prev = c->prev;
	l->nconns--;
	free(c);
}

void conn_unref(struct conn *c)
{
	if (--c->refs == 0)
		conn_free(c);
}

static void arm_recv(struct conn *c)
{
	struct loop *l = c->loop;
	if (c->recv_armed || c->closed || c->recv_paused)
		return;
	c->recv_op.done = recv_done;
	c->recv_op.kind = IOQ_NET;
	struct io_uring_sqe *sqe = ioq_sqe(&l->q, &c->recv_op);
	io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = l->bgid;
	c->recv_armed = true;
	conn_ref(c);
}

static void noop_done(struct ioq_op *op, int res, unsigned flags)
{
	(void)op;
	(void)res;
	(void)flags;
}

static struct ioq_op cancel_op = { .done = noop_done, .kind = IOQ_NET };

static void pause_recv(struct conn *c)
{
	if (c->recv_paused)
		return;
	c->recv_paused = true;
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = ioq_sqe(&c->loop->q, &cancel_op);
		io_uring_prep_cancel(sqe, &c->recv_op, 0);
		/* Now, not at the next wait: until the kernel sees the cancel,
		 * the multishot receive keeps refilling buffers with this
		 * connection's data, all of which would have to be held. */
		ioq_submit(&c->loop->q);
	}
}

static bool must_hold(const struct conn *c)
{
	const struct broker_config *cfg = c->loop->cfg;
	return c->inflight >= cfg->max_inflight_requests ||
	       c->out_bytes + c->building_bytes > cfg->max_buffered_bytes;
}

static void blocked_add(struct conn *c)
{
	if (c->on_blocked)
		return;
	c->on_blocked = true;
	c->blocked_next = c->loop->blocked;
	c->loop->blocked = c;
	conn_ref(c);
}

/* Handles the whole frames in [p, p + len). Returns the bytes consumed; the
 * rest is a partial frame, or frames held back by backpressure. */
static size_t process(struct conn *c, const uint8_t *p, size_t len)
{
	const struct broker_config *cfg = c->loop->cfg;
	size_t off = 0;
	while (!c->closed && !c->closing && len - off >= FRAME_SIZE_FIELD) {
		uint32_t flen;
		int ret = proto_frame_peek(p + off, len - off, FRAME_SIZE_MIN_REQ,
					   cfg->max_frame_bytes, &flen);
		if (ret == -EAGAIN)
			break;
		if (ret == -EMSGSIZE) {
			c->loop->conns_closed_bad++;
			conn_close(c, "frame larger than max.frame.bytes");
			break;
		}
		if (ret != 0) {
			c->loop->conns_closed_bad++;
			conn_close(c, "frame too short to hold a request header");
			break;
		}
		if (must_hold(c)) {
			pause_recv(c);
			break;
		}
		if (handle_frame(c, p + off, flen) == -EAGAIN) {
			pause_recv(c);
			blocked_add(c);
			break;
		}
		off += flen;
	}
	return off;
}

static int in_reserve(struct conn *c, size_t more)
{
	size_t need = c->in_len + more;
	if (need <= c->in_cap)
		return 0;
	/* Held input is one frame plus what the receive had delivered when
	 * the pause took effect: completions already posted, each holding a
	 * provided buffer of its own, so at most all of them (the cancel goes
	 * in at once: no buffer is refilled for this connection after it). */
	size_t limit = (size_t)c->loop->cfg->max_frame_bytes +
		       (size_t)c->loop->nbufs * c->loop->buf_size;
	if (need > limit)
		return -EMSGSIZE;
	size_t cap = c->in_cap ? c->in_cap : 4096;
	while (cap < need)
		cap *= 2;
	if (cap > limit)
		cap = limit;
	uint8_t *n = realloc(c->in, cap);
	if (n == NULL)
		return -ENOMEM;
	c->in = n;
	c->in_cap = cap;
	return 0;
}

static void in_consumed(struct conn *c, size_t used)
{
	c->in_len -= used;
	if (c->in_len > 0) {
		memmove(c->in, c->in + used, c->in_len);
		if (used > 0 || c->partial_since_ms == 0)
			c->partial_since_ms = now_ms();
	} else {
		/* Idle connections hold no input memory. */
		free(c->in);
		c->in = NULL;
		c->in_cap = 0;
		c->partial_since_ms = 0;
	}
}

static void conn_input(struct conn *c, const uint8_t *data, size_t n)
{
	if (c->in_len == 0 && !c->recv_paused) {
		/* Fast path: frames straight from the receive buffer. */
		size_t used = process(c, data, n);
		if (c->closed || used == n)
			return;
		data += used;
		n -= used;
	}
	if (in_reserve(c, n) != 0) {
		c->loop->conns_closed_bad++;
		conn_close(c, "too much input held back");
		return;
	}
	memcpy(c->in + c->in_len, data, n);
	c->in_len += n;
	if (!c->recv_paused && !c->on_blocked)
		in_consumed(c, process(c, c->in, c->in_len));
	else if (c->partial_since_ms == 0)
		c->partial_since_ms = now_ms();
}

static void recv_done(struct ioq_op *op, int res, unsigned flags)
{
	struct conn *c = conn_of(op, offsetof(struct conn, recv_op));
	struct loop *l = c->loop;
	if (!(flags & IORING_CQE_F_MORE))
		c->recv_armed = false;
	if (res > 0) {
		unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
		uint8_t *buf = l->bufs + (size_t)bid * l->buf_size;
		l->bytes_in += (uint64_t)res;
		if (!c->closed)
			conn_input(c, buf, (size_t)res);
		/* The data was handled or copied: the buffer goes back now. */
		io_uring_buf_ring_add(l->br, buf, l->buf_size, (unsigned short)bid,
				      io_uring_buf_ring_mask(l->nbufs), 0);
		io_uring_buf_ring_advance(l->br, 1);
	} else if (res == 0) {
		conn_close(c, NULL); /* the client closed */
	} else if (res != -ENOBUFS && res != -ECANCELED && res != -EINTR) {
		conn_close(c, res == -ECONNRESET ? NULL : "receive failed");
	}
	if (!c->recv_armed) {
		arm_recv(c); /* -ENOBUFS ends a multishot: buffers are back now */
		conn_unref(c);
	}
}

void conn_accept(struct loop *l, int fd)
{
	if (l->nconns >= l->cfg->max_connections) {
		l->conns_refused++;
		int64_t now = now_ms();
		if (now - l->last_refused_log_ms > 1000) {
			say_warn("refusing connections: max.connections (%u) reached",
				 l->cfg->max_connections);
			l->last_refused_log_ms = now;
		}
		close(fd);
		return;
	}
	struct conn *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->loop = l;
	c->fd = fd;
	c->id = ++l->next_conn_id;
	c->refs = 1; /* open */
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char ip[INET6_ADDRSTRLEN] = "?";
	uint16_t port = 0;
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
			port = ntohs(s6->sin6_port);
		} else {
			struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
			port = ntohs(s4->sin_port);
		}
	}
	snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, port);
	c->next = &l->conns;
	c->prev = l->conns.prev;
	l->conns.prev->next = c;
	l->conns.prev = c;
	l->nconns++;
	l->conns_accepted++;
	say_debug("connection %s: accepted", c->peer);
	arm_recv(c);
}

/* ---- output ---- */

static void kick_send(struct conn *c)
{
	if (c->send_inflight || c->out_head == NULL || c->closed)
		return;
	int n = 0;
	for (struct obuf *b = c->out_head; b != NULL && n < CONN_IOV_MAX; b = b->next) {
		c->iov[n].iov_base = b->data + b->off;
		c->iov[n].iov_len = b->len - b->off;
		n++;
	}
	memset(&c->msg, 0, sizeof(c->msg));
	c->msg.msg_iov = c->iov;
	c->msg.msg_iovlen = (size_t)n;
	c->send_op.done = send_done;
	c->send_op.kind = IOQ_NET;
	struct io_uring_sqe *sqe = ioq_sqe(&c->loop->q, &c->send_op);
	io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
	c->send_inflight = true;
	conn_ref(c);
}

static void send_done(struct ioq_op *op, int res, unsigned flags)
{
	struct conn *c = conn_of(op, offsetof(struct conn, send_op));
	(void)flags;
	c->send_inflight = false;
	if (res < 0) {
		if (res != -EPIPE && res != -ECONNRESET && res != -ECANCELED)
			say_info("connection %s: send failed: %s", c->peer, strerror(-res));
		conn_close(c, NULL);
		conn_unref(c);
		return;
	}
	bool was_held = must_hold(c);
	size_t left = (size_t)res;
	c->loop->bytes_out += (uint64_t)res;
	c->out_bytes -= (uint64_t)res;
	while (left > 0) {
		struct obuf *b = c->out_head;
		size_t avail = b->len - b->off;
		if (left < avail) {
			b->off += (uint32_t)left;
			break;
		}
		left -= avail;
		c->out_head = b->next;
		if (c->out_head == NULL)
			c->out_tail = NULL;
		free(b->data);
		free(b);
	}
	kick_send(c);
	if (c->closing && c->out_head == NULL)
		conn_close(c, NULL);
	else if (was_held && !must_hold(c))
		process_held(c);
	conn_unref(c);
}

void conn_send(struct conn *c, uint8_t *data, uint32_t len)
{
	if (c->closed || c->closing) {
		free(data);
		return;
	}
	struct obuf *b = malloc(sizeof(*b));
	if (b == NULL) {
		free(data);
		conn_close(c, "out of memory for a response");
		return;
	}
	b->next = NULL;
	b->data = data;
	b->len = len;
	b->off = 0;
	if (c->out_tail)
		c->out_tail->next = b;
	else
		c->out_head = b;
	c->out_tail = b;
	c->out_bytes += len;
	kick_send(c);
}

void conn_send_pw(struct conn *c, struct pw *w)
{
	if (w->failed) {
		pw_free(w);
		conn_close(c, "out of memory encoding a response");
		return;
	}
	conn_send(c, w->buf, (uint32_t)w->len);
	w->buf = NULL;
	w->len = w->cap = 0;
}

/* ---- lifecycle ---- */

/* Runs input held back by backpressure, then reads the socket again. */
static void process_held(struct conn *c)
{
	if (c->closed || c->closing || c->on_blocked || must_hold(c))
		return;
	if (c->in_len > 0)
		in_consumed(c, process(c, c->in, c->in_len));
	if (!c->closed && !c->on_blocked && !must_hold(c) && c->recv_paused) {
		c->recv_paused = false;
		arm_recv(c);
	}
}

void conn_request_done(struct conn *c)
{
	bool was_held = must_hold(c);
	c->inflight--;
	if (was_held && !must_hold(c))
		process_held(c);
}

void conn_reserve(struct conn *c, uint64_t bytes)
{
	c->building_bytes += bytes;
}

void conn_unreserve(struct conn *c, uint64_t bytes)
{
	bool was_held = must_hold(c);
	c->building_bytes -= bytes;
	if (was_held && !must_hold(c))
		process_held(c);
}

void conn_retry_blocked(struct loop *l)
{
	struct conn *list = l->blocked;
	l->blocked = NULL;
	while (list != NULL) {
		struct conn *c = list;
		list = c->blocked_next;
		c->on_blocked = false;
		process_held(c);
		conn_unref(c);
	}
}

void conn_close(struct conn *c, const char *why)
{
	if (c->closed)
		return;
	c->closed = true;
	if (why != NULL)
		say_info("connection %s: %s; closing it", c->peer, why);
	fetch_cancel_conn(c);
	/* Wakes the receive and send in flight; they drop their refs. */
	shutdown(c->fd, SHUT_RDWR);
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = ioq_sqe(&c->loop->q, &cancel_op);
		io_uring_prep_cancel(sqe, &c->recv_op, 0);
	}
	conn_unref(c);
}

void conn_close_after_send(struct conn *c, const char *why)
{
	if (c->closed || c->closing)
		return;
	if (why != NULL)
		say_info("connection %s: %s; closing it", c->peer, why);
	c->closing = true;
	pause_recv(c);
	if (c->out_head == NULL && !c->send_inflight)
		conn_close(c, NULL);
}

void conn_check_idle(struct loop *l, int64_t now)
{
	for (struct conn *c = l->conns.next, *n; c != &l->conns; c = n) {
		n = c->next;
		if (c->closed || c->partial_since_ms == 0 || c->recv_paused || c->on_blocked)
			continue;
		if (now - c->partial_since_ms > PARTIAL_FRAME_TIMEOUT_MS) {
			l->conns_closed_bad++;
			conn_close(c, "a frame was left unfinished for 60 s");
		}
	}
}
