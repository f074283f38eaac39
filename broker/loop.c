/* loop.c — ringmqd's io_uring event loop: listeners, signals, provided
 * receive buffers, timers and the periodic tick. One loop owns its ring,
 * connections and partitions; nothing here blocks after start-up. */
#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "broker/broker.h"
#include "broker/worker.h"
#include "common/say.h"

/* Ring size: enough SQEs for a busy iteration (a recv re-arm, send and a
 * few disk ops per connection) without forcing mid-iteration submits. */
#define RING_ENTRIES 1024
#define TICK_MS 100
/* Decode arena per request: produce/fetch element arrays. A request whose
 * decoded arrays need more is refused with LIMIT_EXCEEDED. */
#define ARENA_BYTES (4u << 20)
#define BUF_GROUP 1

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- timers: a binary heap of parked fetches by deadline ---- */

static void heap_swap(struct timer_heap *h, uint32_t i, uint32_t j)
{
	struct fetch_req *t = h->a[i];
	h->a[i] = h->a[j];
	h->a[j] = t;
	*fetch_heap_index(h->a[i]) = i;
	*fetch_heap_index(h->a[j]) = j;
}

static void heap_up(struct timer_heap *h, uint32_t i)
{
	while (i > 0) {
		uint32_t p = (i - 1) / 2;
		if (fetch_deadline(h->a[p]) <= fetch_deadline(h->a[i]))
			break;
		heap_swap(h, i, p);
		i = p;
	}
}

static void heap_down(struct timer_heap *h, uint32_t i)
{
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < h->n && fetch_deadline(h->a[l]) < fetch_deadline(h->a[m]))
			m = l;
		if (r < h->n && fetch_deadline(h->a[r]) < fetch_deadline(h->a[m]))
			m = r;
		if (m == i)
			break;
		heap_swap(h, i, m);
		i = m;
	}
}

void timer_add(struct loop *l, struct fetch_req *fr)
{
	struct timer_heap *h = &l->timers;
	if (h->n == h->cap) {
		uint32_t cap = h->cap ? h->cap * 2 : 64;
		struct fetch_req **a = realloc(h->a, cap * sizeof(*a));
		if (a == NULL) {
			fetch_expire(l, fr); /* cannot park it: answer now */
			return;
		}
		h->a = a;
		h->cap = cap;
	}
	h->a[h->n] = fr;
	*fetch_heap_index(fr) = h->n;
	heap_up(h, h->n++);
}

void timer_del(struct loop *l, struct fetch_req *fr)
{
	struct timer_heap *h = &l->timers;
	uint32_t i = *fetch_heap_index(fr);
	if (i == UINT32_MAX)
		return;
	assert(i < h->n && h->a[i] == fr);
	*fetch_heap_index(fr) = UINT32_MAX;
	h->n--;
	if (i == h->n)
		return;
	h->a[i] = h->a[h->n];
	*fetch_heap_index(h->a[i]) = i;
	heap_down(h, i);
	heap_up(h, i);
}

static void timers_run(struct loop *l, int64_t now)
{
	struct timer_heap *h = &l->timers;
	while (h->n > 0 && fetch_deadline(h->a[0]) <= now) {
		struct fetch_req *fr = h->a[0];
		timer_del(l, fr);
		fetch_expire(l, fr);
	}
}

/* ---- listeners ---- */

static int listen_on(const char *hostport, char *bound, size_t cap)
{
	char host[256];
	uint16_t port;
	if (parse_host_port(hostport, host, sizeof(host), &port) != 0)
		return -EINVAL;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *res;
	char ports[8];
	snprintf(ports, sizeof(ports), "%u", port);
	int gai = getaddrinfo(host, ports, &hints, &res);
	if (gai != 0) {
		say_error("cannot resolve %s: %s", hostport, gai_strerror(gai));
		return -EINVAL;
	}
	int fd = -1, err = 0;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 1024) == 0)
			break;
		err = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		say_error("cannot listen on %s: %s", hostport, strerror(-err));
		return err ? err : -EINVAL;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	char ip[INET6_ADDRSTRLEN];
	uint16_t p;
	if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		p = ntohs(s6->sin6_port);
		snprintf(bound, cap, "[%s]:%u", ip, p);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		p = ntohs(s4->sin_port);
		snprintf(bound, cap, "%s:%u", ip, p);
	}
	return fd;
}

static void accept_done(struct ioq_op *op, int res, unsigned flags);
static void http_accept_done(struct ioq_op *op, int res, unsigned flags);

static void arm_accept(struct loop *l, bool http)
{
	bool *armed = http ? &l->http_accept_armed : &l->accept_armed;
	int fd = http ? l->http_fd : l->listen_fd;
	if (*armed || fd < 0 || l->stopping)
		return;
	struct ioq_op *op = http ? &l->http_accept_op : &l->accept_op;
	op->done = http ? http_accept_done : accept_done;
	op->kind = IOQ_NET;
	struct io_uring_sqe *sqe = ioq_sqe(&l->q, op);
	io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	*armed = true;
}

/* A failed accept. Out of descriptors or memory, the connection stays in
 * the listen queue and the next accept fails the same way at once: the
 * listener is then left unarmed until the next tick re-arms it (TICK_MS),
 * instead of spinning, and the failure is logged once per 10 s, not once
 * per attempt. Returns true if the listener should be re-armed now. */
static bool accept_failed(struct loop *l, const char *what, int res)
{
	int64_t now = now_ms();
	if (now - l->accept_err_log_ms >= 10000) {
		if (l->accept_errs_unlogged > 0)
			say_warn("%s failed: %s (and %" PRIu64 " more failures since the last "
				 "report); waiting connections stay queued", what, strerror(-res),
				 l->accept_errs_unlogged);
		else
			say_warn("%s failed: %s", what, strerror(-res));
		l->accept_err_log_ms = now;
		l->accept_errs_unlogged = 0;
	} else {
		l->accept_errs_unlogged++;
	}
	return res != -EMFILE && res != -ENFILE && res != -ENOBUFS && res != -ENOMEM;
}

static void accept_done(struct ioq_op *op, int res, unsigned flags)
{
	struct loop *l = (struct loop *)((char *)op - offsetof(struct loop, accept_op));
	if (!(flags & IORING_CQE_F_MORE))
		l->accept_armed = false;
	if (res >= 0) {
		if (l->stopping)
			close(res);
		else
			conn_accept(l, res);
	} else if (res != -ECANCELED && res != -EINTR && !l->stopping) {
		/* (While stopping, the listener's shutdown ends the accept.) */
		if (!accept_failed(l, "accept", res))
			return; /* the tick re-arms it */
	}
	arm_accept(l, false);
}

static void http_accept_done(struct ioq_op *op, int res, unsigned flags)
{
	struct loop *l = (struct loop *)((char *)op - offsetof(struct loop, http_accept_op));
	if (!(flags & IORING_CQE_F_MORE))
		l->http_accept_armed = false;
	if (res >= 0) {
		if (l->stopping)
			close(res);
		else
			http_accept(l, res);
	} else if (res != -ECANCELED && res != -EINTR && !l->stopping) {
		/* (While stopping, the listener's shutdown ends the accept.) */
		if (!accept_failed(l, "http accept", res))
			return; /* the tick re-arms it */
	}
	arm_accept(l, true);
}

/* ---- signals ---- */

static void arm_signal(struct loop *l);

static void signal_done(struct ioq_op *op, int res, unsigned flags)
{
	struct loop *l = (struct loop *)((char *)op - offsetof(struct loop, sig_op));
	(void)flags;
	if (res == (int)sizeof(struct signalfd_siginfo)) {
		const struct signalfd_siginfo *si = (const void *)l->siginfo;
		if (!l->stopping)
			say_info("received %s: finishing in-flight work and stopping",
				 si->ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
		l->stopping = true;
		return;
	}
	arm_signal(l);
}

static void arm_signal(struct loop *l)
{
	static_assert(sizeof(l->siginfo) >= sizeof(struct signalfd_siginfo), "siginfo buffer");
	l->sig_op.done = signal_done;
	l->sig_op.kind = IOQ_OTHER;
	struct io_uring_sqe *sqe = ioq_sqe(&l->q, &l->sig_op);
	io_uring_prep_read(sqe, l->sig_fd, l->siginfo, sizeof(struct signalfd_siginfo), 0);
}

/* ---- provided buffers ---- */

static int bufs_init(struct loop *l)
{
	/* Rings of provided buffers must have a power-of-two size. */
	uint32_t n = 1;
	while (n < l->cfg->recv_buffers)
		n <<= 1;
	l->nbufs = n;
	l->buf_size = l->cfg->recv_buffer_bytes;
	l->bgid = BUF_GROUP;
	size_t ring_bytes = n * sizeof(struct io_uring_buf);
	l->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (l->br == MAP_FAILED) {
		l->br = NULL;
		return -ENOMEM;
	}
	/* Buffers are touched only as data arrives, so an idle broker's
	 * resident memory stays small even with many of them. */
	l->bufs = mmap(NULL, (size_t)n * l->buf_size, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (l->bufs == MAP_FAILED) {
		l->bufs = NULL;
		return -ENOMEM;
	}
	struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)l->br,
					.ring_entries = n,
					.bgid = l->bgid };
	int ret = io_uring_register_buf_ring(&l->q.ring, &reg, 0);
	if (ret != 0)
		return ret;
	io_uring_buf_ring_init(l->br);
	for (uint32_t i = 0; i < n; i++)
		io_uring_buf_ring_add(l->br, l->bufs + (size_t)i * l->buf_size, l->buf_size,
				      (unsigned short)i, io_uring_buf_ring_mask(n), (int)i);
	io_uring_buf_ring_advance(l->br, (int)n);
	return 0;
}

/* ---- init, run, fini ---- */

int loop_init(struct loop *l, const struct broker_config *cfg)
{
	memset(l, 0, sizeof(*l));
	l->cfg = cfg;
	l->listen_fd = l->http_fd = l->sig_fd = -1;
	l->conns.prev = l->conns.next = &l->conns;
	l->start_ms = now_ms();
	int ret = ioq_init(&l->q, RING_ENTRIES);
	if (ret != 0) {
		say_error("io_uring setup failed: %s", strerror(-ret));
		return ret;
	}
	l->env = log_env_new(&l->q, cfg->staging_bytes);
	if (l->env != NULL && cfg->test_fsync_delay_ms > 0) {
		log_env_set_fsync_delay(l->env, cfg->test_fsync_delay_ms);
		say_warn("test.fsync.delay.ms = %u: every fdatasync is delayed (tests only)",
			 cfg->test_fsync_delay_ms);
	}
	l->arena_buf = malloc(ARENA_BYTES);
	if (l->env == NULL || l->arena_buf == NULL || registry_init(&l->reg) != 0 ||
	    groups_init(l) != 0)
		return -ENOMEM;
	arena_init(&l->arena, l->arena_buf, ARENA_BYTES);
	ret = bufs_init(l);
	if (ret != 0) {
		say_error("cannot set up receive buffers: %s", strerror(-ret));
		return ret;
	}
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	l->sig_fd = signalfd(-1, &set, SFD_CLOEXEC);
	if (l->sig_fd < 0)
		return -errno;
	return 0;
}

/* Shows every partition whole, binds the listeners, starts the worker and
 * prints the ready line. */
static int loop_start(struct loop *l)
{
	topics_sync_at_start(l);
	l->listen_fd = listen_on(l->cfg->listen, l->listen_addr, sizeof(l->listen_addr));
	if (l->listen_fd < 0)
		return l->listen_fd;
	if (l->cfg->http[0] != '\0') {
		l->http_fd = listen_on(l->cfg->http, l->http_addr, sizeof(l->http_addr));
		if (l->http_fd < 0)
			return l->http_fd;
	}
	l->worker = worker_start(l);
	if (l->worker == NULL)
		return -ENOMEM;
	arm_accept(l, false);
	arm_accept(l, true);
	arm_signal(l);
	char line[400];
	int n = snprintf(line, sizeof(line), "ringmqd: ready on %s (http %s)\n", l->listen_addr,
			 l->http_fd >= 0 ? l->http_addr : "off");
	/* The one line scripts wait for; written whole so it never interleaves. */
	if (write(STDERR_FILENO, line, (size_t)n) != n)
		return -EIO;
	return 0;
}

static void tick(struct loop *l, int64_t now)
{
	topics_tick(l, now);
	groups_tick(l, now);
	conn_check_idle(l, now);
	http_check_idle(l, now);
	/* Re-arm listeners that stopped (e.g. out of file descriptors). */
	arm_accept(l, false);
	arm_accept(l, true);
}

/* Stops taking work, lets in-flight requests finish, then returns. */
static void drain(struct loop *l)
{
	if (l->listen_fd >= 0) {
		shutdown(l->listen_fd, SHUT_RDWR);
		close(l->listen_fd);
		l->listen_fd = -1;
	}
	if (l->http_fd >= 0) {
		shutdown(l->http_fd, SHUT_RDWR);
		close(l->http_fd);
		l->http_fd = -1;
	}
	/* Parked long polls answer now with what they have. */
	while (l->timers.n > 0) {
		struct fetch_req *fr = l->timers.a[0];
		timer_del(l, fr);
		fetch_expire(l, fr);
	}
	/* Appends and fdatasyncs always finish: what was staged is written
	 * and made durable whatever the clients do. Clients get up to
	 * shutdown.timeout.ms to take their answers; one that stopped reading
	 * must not hold the stop for ever. */
	int64_t deadline = now_ms() + l->cfg->shutdown_timeout_ms;
	for (;;) {
		log_env_flush(l->env);
		bool storage = log_env_staged(l->env) > 0 || worker_pending(l->worker) > 0;
		bool clients = false;
		for (struct conn *c = l->conns.next; c != &l->conns; c = c->next)
			if (c->inflight > 0 || c->out_bytes > 0)
				clients = true;
		if (!storage && (!clients || now_ms() > deadline))
			break;
		ioq_wait(&l->q, 50);
		topics_poll_deletes(l);
	}
}

int loop_run(struct loop *l)
{
	int ret = loop_start(l);
	if (ret != 0)
		return ret;
	l->next_tick_ms = now_ms() + TICK_MS;
	while (!l->stopping) {
		log_env_flush(l->env);
		int64_t now = now_ms();
		int64_t wake = l->next_tick_ms;
		if (l->timers.n > 0 && fetch_deadline(l->timers.a[0]) < wake)
			wake = fetch_deadline(l->timers.a[0]);
		int wait = wake > now ? (int)(wake - now) : 0;
		ret = ioq_wait(&l->q, wait);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			say_error("io_uring wait failed: %s", strerror(-ret));
			l->exit_code = 1;
			break;
		}
		now = now_ms();
		timers_run(l, now);
		if (l->blocked)
			conn_retry_blocked(l);
		if (l->deletes || l->forgets)
			topics_poll_deletes(l);
		if (now >= l->next_tick_ms) {
			tick(l, now);
			l->next_tick_ms = now + TICK_MS;
		}
	}
	drain(l);
	return l->exit_code;
}

void loop_fini(struct loop *l)
{
	for (struct conn *c = l->conns.next, *n; c != &l->conns; c = n) {
		n = c->next;
		conn_close(c, NULL);
	}
	/* Let closes and cancellations complete. */
	for (int i = 0; i < 100 && (l->nconns > 0 || l->nhttp > 0); i++)
		ioq_wait(&l->q, 10);
	worker_stop(l->worker);
	topics_close_all(l);
	offsets_close(l);
	groups_fini(l);
	registry_fini(&l->reg);
	if (l->sig_fd >= 0)
		close(l->sig_fd);
	log_env_free(l->env);
	ioq_exit(&l->q);
	if (l->bufs)
		munmap(l->bufs, (size_t)l->nbufs * l->buf_size);
	if (l->br)
		munmap(l->br, l->nbufs * sizeof(struct io_uring_buf));
	free(l->timers.a);
	free(l->arena_buf);
}
