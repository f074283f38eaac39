/* test_hostile.c — real ringmqd brokers attacked the way broken or hostile clients would. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

/* The shared broker's limits: small, so that each is reached quickly. */
#define MAX_CONNS 200
#define MAX_FRAME (4u << 20)
#define MAX_BUFFERED (1u << 20)
#define MAX_INFLIGHT 8
#define HTTP_TIMEOUT_MS 2000
#define SHUTDOWN_TIMEOUT_MS 1500

#define MIB (1024 * 1024)
#define MAX_FDS 4096

/* Under ASan a broker's RSS also holds shadow memory and freed blocks in
 * quarantine (kept small by main), and its code runs a few times slower:
 * the bounds allow for both. */
#ifdef ASAN_BUILD
#define RSS_SLACK_KIB (48 * 1024)
#define LAT_SCALE 3
#else
#define RSS_SLACK_KIB 0
#define LAT_SCALE 1
#endif

struct rx;

/* Most tests attack one broker, so that damage one attack does is seen by the next. */
static struct {
	struct tbroker b;
	struct tbroker own; /* a test's own broker, stopped by the teardown if it fails */
	char *cfg_dir;
	char cfg_path[600];
	struct tclient c;   /* a well-behaved client, connected throughout */
	struct tclient oc;  /* another client of the running test */
	bool oc_open;
	int fds[MAX_FDS];   /* raw sockets of the running test, closed by its teardown */
	int nfds;
	void *held[256];    /* its heap buffers: an assertion that fails skips its frees */
	int nheld;
	struct rx *rxs[128]; /* its response streams, likewise */
	int nrxs;
	bool running;       /* a test body is running; still set in teardown means it failed */
} S;

/* ---- small helpers ---- */

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16;
}

static void fill_random(uint8_t *p, size_t n, uint64_t *rng)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)tu_rand(rng);
}

static int track(int fd)
{
	assert_true(S.nfds < MAX_FDS);
	S.fds[S.nfds++] = fd;
	return fd;
}

static void close_fd(int fd)
{
	for (int i = 0; i < S.nfds; i++) {
		if (S.fds[i] == fd) {
			S.fds[i] = S.fds[--S.nfds];
			break;
		}
	}
	close(fd);
}

static void close_all_fds(void)
{
	while (S.nfds > 0)
		close(S.fds[--S.nfds]);
}

/* Registers a buffer of the running test, for its teardown to free. */
static void *hold(void *p)
{
	assert_non_null(p);
	assert_true(S.nheld < 256);
	S.held[S.nheld++] = p;
	return p;
}

static void drop(void *p)
{
	for (int i = 0; i < S.nheld; i++) {
		if (S.held[i] == p) {
			S.held[i] = S.held[--S.nheld];
			break;
		}
	}
	free(p);
}

static struct tclient *other_client(const char *addr)
{
	assert_false(S.oc_open);
	assert_int_equal(tc_connect(&S.oc, addr), 0);
	S.oc_open = true;
	return &S.oc;
}

static void other_client_close(void)
{
	if (S.oc_open)
		tc_close(&S.oc);
	S.oc_open = false;
}

static void set_nonblock(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* A plain TCP connection, tracked for the teardown. rcvbuf > 0 shrinks the
 * socket's receive buffer, so a client that does not read stops the
 * broker's sends after a few KiB rather than after megabytes. */
static int raw_connect_buf(const char *hostport, int rcvbuf)
{
	char host[64];
	const char *colon = strrchr(hostport, ':');
	assert_non_null(colon);
	assert_true((size_t)(colon - hostport) < sizeof(host));
	memcpy(host, hostport, (size_t)(colon - hostport));
	host[colon - hostport] = '\0';
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)atoi(colon + 1)) };
	assert_int_equal(inet_pton(AF_INET, host, &sa.sin_addr), 1);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	track(fd);
	if (rcvbuf > 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	/* No test may hang on a send the broker never drains. */
	struct timeval tv = { .tv_sec = 2 };
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		printf("# connect to %s failed: %s\n", hostport, strerror(errno));
		fail();
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static int raw_connect(const char *hostport)
{
	return raw_connect_buf(hostport, 0);
}

/* Waits up to timeout_ms for the broker to close fd, discarding what it
 * sends. Returns true once recv reports end of stream or a reset. */
static bool wait_closed(int fd, int timeout_ms)
{
	int64_t deadline = tu_mono_ms() + timeout_ms;
	uint8_t buf[65536];
	for (;;) {
		int64_t left = deadline - tu_mono_ms();
		if (left <= 0)
			return false;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, (int)left);
		if (r <= 0)
			continue;
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE)))
			return true;
	}
}

/* True if the broker has not closed fd within ms (data it sent stays queued). */
static bool still_open(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
	if (poll(&p, 1, ms) <= 0)
		return true;
	if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
		return false;
	uint8_t b;
	ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
	return n > 0 || (n < 0 && errno == EAGAIN);
}

/* A request frame with any header and body, as a hostile client writes it. */
static size_t raw_frame(uint8_t *out, uint16_t api, uint16_t ver, uint32_t corr,
			const void *body, size_t blen)
{
	put32(out, (uint32_t)(REQ_HEADER_SIZE + blen));
	put16(out + 4, api);
	put16(out + 6, ver);
	put32(out + 8, corr);
	if (blen > 0)
		memcpy(out + 12, body, blen);
	return 12 + blen;
}

/* A well-formed request frame (malloc'd). */
static uint8_t *req_frame(uint16_t api, uint32_t corr, const union proto_request *req,
			  size_t *len)
{
	struct pw w;
	pw_init_dyn(&w, 256, FRAME_SIZE_HARD_MAX);
	size_t start = proto_req_begin(&w, api, 0, corr);
	if (req != NULL)
		proto_encode_request(&w, api, req);
	proto_frame_end(&w, start);
	assert_false(w.failed);
	*len = w.len;
	return w.buf;
}

/* ---- response streams read from raw sockets ---- */

struct rx {
	uint8_t *p;
	size_t off, len, cap;
	bool closed;
};

/* A response stream, registered for the teardown to free. */
static struct rx *rx_new(void)
{
	assert_true(S.nrxs < 128);
	struct rx *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	S.rxs[S.nrxs++] = r;
	return r;
}

static void rx_free(struct rx *r)
{
	for (int i = 0; i < S.nrxs; i++) {
		if (S.rxs[i] == r) {
			S.rxs[i] = S.rxs[--S.nrxs];
			break;
		}
	}
	free(r->p);
	free(r);
}

/* Reads what is there without blocking. Returns bytes read (0: none or closed). */
static size_t rx_read(int fd, struct rx *r)
{
	size_t total = 0;
	for (;;) {
		if (r->off > 0 && r->off == r->len)
			r->off = r->len = 0;
		if (r->cap - r->len < 65536) {
			if (r->off > 0) {
				memmove(r->p, r->p + r->off, r->len - r->off);
				r->len -= r->off;
				r->off = 0;
			}
			if (r->cap - r->len < 65536) {
				r->cap = r->cap ? r->cap * 2 : 1 << 17;
				r->p = realloc(r->p, r->cap);
				assert_non_null(r->p);
			}
		}
		ssize_t n = recv(fd, r->p + r->len, r->cap - r->len, MSG_DONTWAIT);
		if (n > 0) {
			r->len += (size_t)n;
			total += (size_t)n;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			r->closed = true;
		return total;
	}
}

/* Takes the next whole response frame; returns its length or 0. A frame that
 * is not a valid response fails the test: the broker must never send one. */
static size_t rx_pop(struct rx *r, struct proto_resp_hdr *h)
{
	size_t avail = r->len - r->off;
	if (avail < 4)
		return 0;
	uint32_t size = get32(r->p + r->off);
	assert_true(size >= RESP_HEADER_SIZE && size <= FRAME_SIZE_HARD_MAX);
	if (avail < (size_t)size + 4)
		return 0;
	struct pr body;
	assert_int_equal(proto_resp_header(r->p + r->off, size + 4, h, &body), 0);
	r->off += (size_t)size + 4;
	return (size_t)size + 4;
}

/* ---- HTTP ---- */

/* Polls a metric until it equals want (connections come and go
 * asynchronously); returns the last value seen. */
static int64_t wait_metric(const struct tbroker *b, const char *name, int64_t want,
			   int timeout_ms)
{
	int64_t deadline = tu_mono_ms() + timeout_ms, v;
	while ((v = tb_metric(b, name)) != want && tu_mono_ms() < deadline)
		usleep(20000);
	return v;
}

/* ---- measurements ---- */

struct lat {
	int64_t us[1024];
	int n;
};

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

static void lat_add(struct lat *l, int64_t us)
{
	if (l->n < 1024)
		l->us[l->n++] = us;
}

/* Prints p50/p99/max of l; returns max, *p50 gets the median. */
static int64_t lat_report(const char *what, struct lat *l, int64_t *p50)
{
	assert_true(l->n > 0);
	qsort(l->us, (size_t)l->n, sizeof(l->us[0]), cmp_i64);
	int64_t med = l->us[l->n / 2], p99 = l->us[(l->n * 99) / 100], max = l->us[l->n - 1];
	printf("# %s: n=%d p50=%lld us p99=%lld us max=%lld us\n", what, l->n, (long long)med,
	       (long long)p99, (long long)max);
	if (p50 != NULL)
		*p50 = med;
	return max;
}

static int64_t metadata_rtt(struct tclient *c)
{
	union proto_request req = { .metadata = { 0, NULL } };
	struct proto_resp_hdr h;
	union proto_response resp;
	int64_t t0 = tu_mono_us();
	assert_int_equal(tc_call(c, API_METADATA, &req, 5000, &h, &resp), 0);
	assert_int_equal(h.err, ERR_NONE);
	return tu_mono_us() - t0;
}

/* One produce (acks=1) and the fetch of what it wrote: a consumer's view of
 * how quickly the broker serves a well-behaved client. */
static int64_t produce_fetch_rtt(struct tclient *c, const char *topic, const uint8_t *batch,
				 uint32_t len)
{
	uint64_t base;
	uint8_t *recs;
	uint32_t rlen;
	int64_t t0 = tu_mono_us();
	assert_int_equal(tc_produce(c, topic, 0, PROTO_ACKS_LEADER, batch, len, &base), 0);
	assert_int_equal(tc_fetch(c, topic, 0, base, 1 << 16, 0, 0, &recs, &rlen, NULL), 0);
	int64_t us = tu_mono_us() - t0;
	assert_true(rlen >= len);
	free(recs);
	return us;
}

/* ---- fixtures ---- */

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	S.cfg_dir = tu_tmpdir("hostile-cfg");
	snprintf(S.cfg_path, sizeof(S.cfg_path), "%s/ringmqd.conf", S.cfg_dir);
	FILE *f = fopen(S.cfg_path, "w");
	assert_non_null(f);
	fprintf(f, "# small limits, so hostile clients reach them quickly\n"
		   "max.connections = %d\nmax.buffered.bytes = %u\n"
		   "max.inflight.requests = %d\nmax.frame.bytes = %u\n"
		   "http.timeout.ms = %d\nshutdown.timeout.ms = %d\n", MAX_CONNS, MAX_BUFFERED,
		MAX_INFLIGHT, MAX_FRAME, HTTP_TIMEOUT_MS, SHUTDOWN_TIMEOUT_MS);
	fclose(f);
	const char *extra[] = { "--config", S.cfg_path, NULL };
	if (tb_start(&S.b, NULL, extra) != 0) {
		S.b.pid = 0; /* already reaped */
		return -1;
	}
	printf("# shared broker pid %d on %s (http %s), log %s\n", (int)S.b.pid, S.b.addr,
	       S.b.http, S.b.log_path);
	assert_int_equal(tc_connect(&S.c, S.b.addr), 0);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	close_all_fds();
	if (S.c.arena_buf != NULL)
		tc_close(&S.c);
	if (S.b.pid > 0) {
		printf("# shared broker still running at the end: killing it\n");
		tb_kill9(&S.b);
	}
	tb_cleanup(&S.b);
	tu_rmtree(S.cfg_dir);
	free(S.cfg_dir);
	return 0;
}

static int test_setup(void **state)
{
	(void)state;
	S.running = true;
	return 0;
}

/* Closes what the test left open and checks that the broker survived it. */
static int test_teardown(void **state)
{
	(void)state;
	bool failed = S.running;
	S.running = false;
	close_all_fds();
	other_client_close();
	while (S.nheld > 0)
		free(S.held[--S.nheld]);
	while (S.nrxs > 0)
		rx_free(S.rxs[0]);
	if (S.own.pid > 0) {
		/* A test that failed with its own broker running: stop it the
		 * usual way, so that sanitizer reports reach its log. */
		int rc = tb_alive(&S.own) ? tb_stop(&S.own) : -1;
		int problems = tb_log_problems(&S.own);
		printf("# its own broker: exit %d, %d sanitizer reports\n", rc, problems);
		tb_print_log_tail(&S.own);
		tb_cleanup(&S.own);
		failed = false; /* the shared broker's log would say nothing about it */
	}
	if (S.b.pid <= 0)
		return 0;
	if (!tb_alive(&S.b)) {
		printf("# the shared broker died\n");
		tb_print_log_tail(&S.b);
		return -1;
	}
	if (failed) {
		tb_print_log_tail(&S.b);
		/* The test may have left a response unread on the shared client. */
		tc_close(&S.c);
		if (tc_connect(&S.c, S.b.addr) != 0)
			return -1;
	}
	return 0;
}

#define TEST_DONE() (S.running = false)

/* ---- unknown APIs, malformed bodies, short frames ---- */

static void expect_error(struct tclient *c, const uint8_t *frame, size_t len, uint32_t corr,
			 uint16_t err)
{
	assert_int_equal(tc_send_raw(c, frame, len), 0);
	struct proto_resp_hdr h;
	assert_int_equal(tc_recv(c, API_METADATA, 5000, &h, NULL), 0);
	if (h.correlation_id != corr || h.err != err)
		printf("# got corr %u err %s, want corr %u err %s\n", h.correlation_id,
		       proto_err_name(h.err), corr, proto_err_name(err));
	assert_int_equal(h.correlation_id, corr);
	assert_int_equal(h.err, err);
	/* The connection serves the next valid request. */
	metadata_rtt(c);
}

static void test_bad_requests(void **state)
{
	(void)state;
	struct tclient *c = &S.c;
	uint8_t f[256], body[64];
	memset(body, 0xAB, sizeof(body));

	/* Unknown API keys, with and without a body. */
	expect_error(c, f, raw_frame(f, 999, 0, 0xC0FFEE01, body, 10), 0xC0FFEE01,
		     ERR_UNSUPPORTED_API);
	expect_error(c, f, raw_frame(f, 0xFFFF, 0, 0xFFFFFFFF, NULL, 0), 0xFFFFFFFF,
		     ERR_UNSUPPORTED_API);
	expect_error(c, f, raw_frame(f, API_COUNT, 0, 7, body, 3), 7, ERR_UNSUPPORTED_API);
	/* A known API at a version nobody speaks. */
	expect_error(c, f, raw_frame(f, API_FETCH, 7, 8, body, 20), 8, ERR_UNSUPPORTED_VERSION);

	/* Known APIs with malformed bodies. */
	uint8_t b[64] = { 0 };
	put32(b, 1000); /* metadata: 1000 topic names, none sent */
	expect_error(c, f, raw_frame(f, API_METADATA, 0, 100, b, 4), 100, ERR_INVALID_REQUEST);
	expect_error(c, f, raw_frame(f, API_LIST_TOPICS, 0, 101, body, 5), 101,
		     ERR_INVALID_REQUEST); /* a body where there is none */
	expect_error(c, f, raw_frame(f, API_PRODUCE, 0, 102, b, 3), 102, ERR_INVALID_REQUEST);
	memset(b, 0xFF, sizeof(b)); /* fetch: counts near 4 G */
	expect_error(c, f, raw_frame(f, API_FETCH, 0, 103, b, 20), 103, ERR_INVALID_REQUEST);
	put16(b, 60000); /* create topic: a name longer than the body */
	expect_error(c, f, raw_frame(f, API_CREATE_TOPIC, 0, 104, b, 30), 104,
		     ERR_INVALID_REQUEST);
	expect_error(c, f, raw_frame(f, API_HANDSHAKE, 0, 105, NULL, 0), 105,
		     ERR_INVALID_REQUEST);

	/* Several bad frames in one write, then a good one: all answered in order. */
	size_t n = raw_frame(f, 4242, 0, 201, NULL, 0);
	n += raw_frame(f + n, API_METADATA, 0, 202, b, 2);
	n += raw_frame(f + n, API_LIST_TOPICS, 0, 203, NULL, 0);
	assert_int_equal(tc_send_raw(c, f, n), 0);
	static const uint16_t want[] = { ERR_UNSUPPORTED_API, ERR_INVALID_REQUEST, ERR_NONE };
	for (int i = 0; i < 3; i++) {
		struct proto_resp_hdr h;
		assert_int_equal(tc_recv(c, API_LIST_TOPICS, 5000, &h, NULL), 0);
		assert_int_equal(h.correlation_id, 201 + i);
		assert_int_equal(h.err, want[i]);
	}

	/* Frames too short to hold a request header close their connection. */
	int64_t bad0 = tb_metric(&S.b, "ringmq_connections_closed_bad_total");
	static const uint32_t sizes[] = { 0, 1, 4, 7 };
	for (int i = 0; i < 4; i++) {
		int fd = raw_connect(S.b.addr);
		uint8_t s[12] = { 0 };
		put32(s, sizes[i]);
		tb_send_all(fd, s, 4 + sizes[i]);
		int64_t t0 = tu_mono_us();
		assert_true(wait_closed(fd, 2000));
		printf("# size prefix %u: closed after %lld us\n", sizes[i],
		       (long long)(tu_mono_us() - t0));
		close_fd(fd);
	}
	/* The same after a good request on the same connection. */
	int fd = raw_connect(S.b.addr);
	n = raw_frame(f, API_LIST_TOPICS, 0, 300, NULL, 0);
	put32(f + n, 3);
	assert_int_equal(tb_send_all(fd, f, n + 7), 0);
	assert_true(wait_closed(fd, 2000));
	close_fd(fd);
	assert_int_equal(tb_metric(&S.b, "ringmq_connections_closed_bad_total") - bad0, 5);
	metadata_rtt(c);
	TEST_DONE();
}

/* ---- size prefixes past the limit ---- */

static void test_huge_length(void **state)
{
	(void)state;
	int64_t bad0 = tb_metric(&S.b, "ringmq_connections_closed_bad_total");
	/* 4 GiB: must be refused before anything is allocated for it. */
	int fd = raw_connect(S.b.addr);
	uint8_t f[64];
	memset(f, 0xFF, sizeof(f));
	int64_t t0 = tu_mono_us();
	tb_send_all(fd, f, 12);
	assert_true(wait_closed(fd, 1000));
	int64_t us = tu_mono_us() - t0;
	printf("# size prefix 0xFFFFFFFF: closed after %lld us\n", (long long)us);
	assert_true(us < 1000000);
	close_fd(fd);

	/* Just the prefix, nothing after it. */
	fd = raw_connect(S.b.addr);
	tb_send_all(fd, f, 4);
	assert_true(wait_closed(fd, 1000));
	close_fd(fd);

	/* Exactly one byte over max.frame.bytes closes; exactly at it waits for
	 * the rest of the frame. */
	int over = raw_connect(S.b.addr), at = raw_connect(S.b.addr);
	put32(f, MAX_FRAME - FRAME_SIZE_FIELD + 1);
	tb_send_all(over, f, 4);
	put32(f, MAX_FRAME - FRAME_SIZE_FIELD);
	tb_send_all(at, f, 4);
	assert_true(wait_closed(over, 1000));
	assert_true(still_open(at, 200));

	/* A 4 GiB prefix after a valid request: the request may or may not be
	 * answered, but the connection ends. */
	fd = raw_connect(S.b.addr);
	size_t n = raw_frame(f, API_LIST_TOPICS, 0, 1, NULL, 0);
	memset(f + n, 0xFF, 4);
	tb_send_all(fd, f, n + 4);
	assert_true(wait_closed(fd, 1000));
	close_fd(fd);

	/* Others were not disturbed. */
	metadata_rtt(&S.c);
	assert_true(still_open(at, 0));
	close_fd(at);
	close_fd(over);
	assert_int_equal(tb_metric(&S.b, "ringmq_connections_closed_bad_total") - bad0, 4);
	TEST_DONE();
}

/* ---- half a frame, then silence ---- */

static void test_half_frame(void **state)
{
	(void)state;
	/* A metadata request naming four 200-byte topics, sent up to its middle. */
	char names[4][201];
	struct pstr topics[4];
	for (int i = 0; i < 4; i++) {
		memset(names[i], 'a' + i, 200);
		names[i][200] = '\0';
		topics[i] = pstr_c(names[i]);
	}
	union proto_request req = { .metadata = { 4, topics } };
	size_t len;
	uint8_t *frame = hold(req_frame(API_METADATA, 4711, &req, &len));
	int half = raw_connect(S.b.addr);
	assert_int_equal(tb_send_all(half, frame, len / 2), 0);
	/* Only two bytes of a size prefix. */
	int two = raw_connect(S.b.addr);
	assert_int_equal(tb_send_all(two, frame, 2), 0);
	/* Eight connections each parking 3 of a claimed 4 MiB: memory the
	 * broker must hold until the frame completes or its timeout. */
	long rss0 = tb_rss_kib(&S.b);
	int64_t in0 = tb_metric(&S.b, "ringmq_network_bytes_in_total");
	enum { NBIG = 8 };
	int big[NBIG];
	uint8_t *junk = hold(malloc(3 * MIB));
	memset(junk, 0x5A, 3 * MIB);
	put32(junk, MAX_FRAME - FRAME_SIZE_FIELD);
	for (int i = 0; i < NBIG; i++) {
		big[i] = raw_connect(S.b.addr);
		assert_int_equal(tb_send_all(big[i], junk, 3 * MIB), 0);
	}
	drop(junk);
	/* Taking in 24 MiB costs the loop some time; measure once it has. */
	int64_t settle = tu_mono_ms() + 5000;
	while (tb_metric(&S.b, "ringmq_network_bytes_in_total") - in0 < NBIG * 3 * MIB &&
	       tu_mono_ms() < settle)
		usleep(10000);
	long rss1 = tb_rss_kib(&S.b);

	/* While they hang there, a well-behaved client is served as usual. */
	struct lat l = { .n = 0 };
	int64_t end = tu_mono_ms() + 500;
	while (tu_mono_ms() < end && l.n < 1000)
		lat_add(&l, metadata_rtt(&S.c));
	printf("# %d connections holding 3 MiB partial frames: broker RSS %ld -> %ld KiB\n",
	       NBIG, rss0, rss1);
	assert_true(lat_report("metadata while half frames hang", &l, NULL) < 100000 * LAT_SCALE);
	assert_true(still_open(half, 0));
	assert_true(still_open(two, 0));
	for (int i = 0; i < NBIG; i++)
		assert_true(still_open(big[i], 0));
	/* About one frame's worth each, no more. */
	assert_true(rss1 - rss0 < NBIG * 5 * 1024 + RSS_SLACK_KIB);

	/* The rest of the frame arrives late: it is answered as if nothing happened. */
	assert_int_equal(tb_send_all(half, frame + len / 2, len - len / 2), 0);
	struct rx *r = rx_new();
	struct proto_resp_hdr h = { 0 };
	int64_t deadline = tu_mono_ms() + 5000;
	while (rx_pop(r, &h) == 0 && !r->closed && tu_mono_ms() < deadline) {
		struct pollfd p = { .fd = half, .events = POLLIN };
		poll(&p, 1, 100);
		rx_read(half, r);
	}
	assert_int_equal(h.correlation_id, 4711);
	assert_int_equal(h.err, ERR_NONE);
	rx_free(r);
	drop(frame);
	for (int i = 0; i < NBIG; i++)
		close_fd(big[i]);
	close_fd(two);
	close_fd(half);
	TEST_DONE();
}

/* ---- random bytes on many connections ---- */

#define RFRAMES 64
#define WANT_ANY 0xFFFF

struct rconn {
	int fd;
	uint8_t *tx;
	size_t txlen;
	bool expect_close;     /* the broker must end it */
	bool uncheckable;      /* too many frames to track: only liveness counts */
	unsigned nframes;
	uint32_t corr[RFRAMES];
	uint16_t want[RFRAMES]; /* error code, or WANT_ANY */
	bool seen[RFRAMES];
	unsigned answered;
	struct rx *rx;
};

/* Walks the bytes as the broker will, to know what it must do with them. */
static void predict(struct rconn *rc)
{
	const uint8_t *p = rc->tx;
	size_t off = 0, len = rc->txlen;
	while (len - off >= FRAME_SIZE_FIELD) {
		uint32_t size = get32(p + off);
		if (size < REQ_HEADER_SIZE || (uint64_t)size + FRAME_SIZE_FIELD > MAX_FRAME) {
			rc->expect_close = true;
			return;
		}
		if (len - off < (size_t)size + FRAME_SIZE_FIELD)
			return; /* a partial frame: the connection waits */
		uint16_t api = get16(p + off + 4), ver = get16(p + off + 6);
		if (rc->nframes == RFRAMES) {
			rc->uncheckable = true;
		} else {
			rc->corr[rc->nframes] = get32(p + off + 8);
			rc->want[rc->nframes++] = api >= API_COUNT ? ERR_UNSUPPORTED_API
						  : ver != 0	   ? ERR_UNSUPPORTED_VERSION
								   : WANT_ANY;
		}
		off += (size_t)size + FRAME_SIZE_FIELD;
	}
}

/* Bytes for one hostile connection: pure noise, or frames with plausible
 * sizes but junk headers and bodies, perhaps followed by a bad tail. */
static void make_junk(struct rconn *rc, unsigned idx, uint64_t *rng)
{
	size_t cap = 64 * 1024;
	rc->tx = hold(malloc(cap));
	if (tu_rand(rng) % 3 == 0) {
		rc->txlen = 1 + tu_rand(rng) % 16384;
		fill_random(rc->tx, rc->txlen, rng);
		return;
	}
	size_t off = 0;
	unsigned nf = 1 + (unsigned)(tu_rand(rng) % 16);
	for (unsigned k = 0; k < nf; k++) {
		uint16_t api, ver = 0;
		switch (tu_rand(rng) % 3) {
		case 0:
			api = (uint16_t)(API_COUNT + tu_rand(rng) % (65536 - API_COUNT));
			break;
		case 1:
			api = (uint16_t)(tu_rand(rng) % API_COUNT);
			ver = (uint16_t)(1 + tu_rand(rng) % 65535);
			break;
		default:
			/* Known API, junk body: any answer will do, but one must come. */
			api = (uint16_t)(tu_rand(rng) % API_COUNT);
			break;
		}
		size_t blen = tu_rand(rng) % 2 ? tu_rand(rng) % 16 : tu_rand(rng) % 1024;
		uint8_t body[1024];
		fill_random(body, blen, rng);
		off += raw_frame(rc->tx + off, api, ver, idx << 16 | k, body, blen);
	}
	switch (tu_rand(rng) % 4) {
	case 0:
		break;
	case 1: { /* noise */
		size_t n = 1 + tu_rand(rng) % 256;
		fill_random(rc->tx + off, n, rng);
		off += n;
		break;
	}
	case 2: /* a size below the header */
		put32(rc->tx + off, (uint32_t)(tu_rand(rng) % REQ_HEADER_SIZE));
		off += 4;
		break;
	default: { /* a frame cut short */
		uint8_t body[100];
		fill_random(body, sizeof(body), rng);
		size_t n = raw_frame(rc->tx + off, 9999, 0, 1, body, sizeof(body));
		off += 1 + tu_rand(rng) % (n - 1);
		break;
	}
	}
	rc->txlen = off;
}

/* Matches one response against what rc sent; fails on anything unexpected. */
static void check_response(struct rconn *rc, const struct proto_resp_hdr *h,
			   unsigned errs[ERR_COUNT + 1])
{
	errs[h->err < ERR_COUNT ? h->err : ERR_COUNT]++;
	rc->answered++;
	if (rc->uncheckable)
		return;
	for (unsigned k = 0; k < rc->nframes; k++) {
		if (rc->seen[k] || rc->corr[k] != h->correlation_id)
			continue;
		if (rc->want[k] != WANT_ANY && rc->want[k] != h->err) {
			printf("# corr %u: got %s, want %s\n", h->correlation_id,
			       proto_err_name(h->err), proto_err_name(rc->want[k]));
			fail();
		}
		rc->seen[k] = true;
		return;
	}
	printf("# a response with correlation id %u that matches no request\n",
	       h->correlation_id);
	fail();
}

static bool rconn_done(const struct rconn *rc)
{
	if (rc->expect_close)
		return rc->rx->closed;
	return rc->uncheckable || rc->answered >= rc->nframes;
}

static void test_random_bytes(void **state)
{
	(void)state;
	uint64_t rng = tu_seed("test_random_bytes");
	enum { NCONN = 96 };
	struct rconn *rcs = hold(calloc(NCONN, sizeof(*rcs)));
	int64_t bad0 = tb_metric(&S.b, "ringmq_connections_closed_bad_total");
	unsigned closes = 0;
	for (unsigned i = 0; i < NCONN; i++) {
		struct rconn *rc = &rcs[i];
		make_junk(rc, i, &rng);
		predict(rc);
		closes += rc->expect_close;
		rc->fd = raw_connect(S.b.addr);
		rc->rx = rx_new();
	}
	/* All of it at once, so the broker juggles every connection together. */
	for (unsigned i = 0; i < NCONN; i++) {
		int ret = tb_send_all(rcs[i].fd, rcs[i].tx, rcs[i].txlen);
		assert_true(ret == 0 || (rcs[i].expect_close && (ret == -EPIPE ||
								  ret == -ECONNRESET)));
	}
	unsigned errs[ERR_COUNT + 1] = { 0 };
	int64_t deadline = tu_mono_ms() + 5000;
	for (;;) {
		struct pollfd pf[NCONN];
		unsigned idx[NCONN], n = 0;
		for (unsigned i = 0; i < NCONN; i++) {
			if (rcs[i].rx->closed || rconn_done(&rcs[i]))
				continue;
			pf[n] = (struct pollfd){ .fd = rcs[i].fd, .events = POLLIN };
			idx[n++] = i;
		}
		if (n == 0 || tu_mono_ms() > deadline)
			break;
		if (poll(pf, n, 100) <= 0)
			continue;
		for (unsigned k = 0; k < n; k++) {
			struct rconn *rc = &rcs[idx[k]];
			if (pf[k].revents == 0)
				continue;
			rx_read(rc->fd, rc->rx);
			struct proto_resp_hdr h;
			while (rx_pop(rc->rx, &h) > 0)
				check_response(rc, &h, errs);
		}
	}
	/* Give a wrong close a moment to show. */
	usleep(100000);
	unsigned open = 0, answered = 0;
	for (unsigned i = 0; i < NCONN; i++) {
		struct rconn *rc = &rcs[i];
		if (!rc->expect_close && !rc->rx->closed) {
			rx_read(rc->fd, rc->rx);
			struct proto_resp_hdr h;
			while (rx_pop(rc->rx, &h) > 0)
				check_response(rc, &h, errs);
		}
		answered += rc->answered;
		if (rc->expect_close != rc->rx->closed || !rconn_done(rc)) {
			printf("# connection %u (%zu bytes, %u frames): expected %s, saw %s, "
			       "%u of %u answered\n", i, rc->txlen, rc->nframes,
			       rc->expect_close ? "a close" : "it kept open",
			       rc->rx->closed ? "a close" : "it open", rc->answered, rc->nframes);
			fail();
		}
		open += !rc->rx->closed;
	}
	printf("# random bytes: %u connections: %u closed by the broker as predicted, %u kept "
	       "open; %u responses (%u UNSUPPORTED_API, %u UNSUPPORTED_VERSION, "
	       "%u INVALID_REQUEST, %u other)\n", NCONN, closes, open, answered,
	       errs[ERR_UNSUPPORTED_API], errs[ERR_UNSUPPORTED_VERSION], errs[ERR_INVALID_REQUEST],
	       answered - errs[ERR_UNSUPPORTED_API] - errs[ERR_UNSUPPORTED_VERSION] -
		       errs[ERR_INVALID_REQUEST]);
	assert_int_equal(tb_metric(&S.b, "ringmq_connections_closed_bad_total") - bad0, closes);
	for (unsigned i = 0; i < NCONN; i++) {
		close_fd(rcs[i].fd);
		drop(rcs[i].tx);
		rx_free(rcs[i].rx);
	}
	drop(rcs);
	metadata_rtt(&S.c);
	TEST_DONE();
}

/* ---- max.connections ---- */

static void test_max_connections(void **state)
{
	(void)state;
	/* Earlier tests' connections may still be closing. */
	int64_t open0 = wait_metric(&S.b, "ringmq_connections", 1, 3000);
	assert_int_equal(open0, 1);
	int fill[MAX_CONNS];
	int nfill = MAX_CONNS - 1;
	for (int i = 0; i < nfill; i++)
		fill[i] = raw_connect(S.b.addr);
	assert_int_equal(wait_metric(&S.b, "ringmq_connections", MAX_CONNS, 5000), MAX_CONNS);
	int64_t refused0 = tb_metric(&S.b, "ringmq_connections_refused_total");

	enum { NOVER = 20 };
	int over[NOVER];
	int64_t worst = 0;
	for (int i = 0; i < NOVER; i++) {
		over[i] = raw_connect(S.b.addr);
		int64_t t0 = tu_mono_us();
		assert_true(wait_closed(over[i], 2000));
		int64_t us = tu_mono_us() - t0;
		worst = us > worst ? us : worst;
	}
	printf("# %d connections past max.connections=%d: each closed within %lld us\n", NOVER,
	       MAX_CONNS, (long long)worst);
	int64_t refused = tb_metric(&S.b, "ringmq_connections_refused_total") - refused0;
	printf("# ringmq_connections_refused_total grew by %lld\n", (long long)refused);
	assert_int_equal(refused, NOVER);
	/* At the limit the broker still serves the connections it has. */
	metadata_rtt(&S.c);
	for (int i = 0; i < NOVER; i++)
		close_fd(over[i]);

	/* Room again once some leave. */
	for (int i = 0; i < 10; i++)
		close_fd(fill[--nfill]);
	assert_int_equal(wait_metric(&S.b, "ringmq_connections", MAX_CONNS - 10, 5000),
			 MAX_CONNS - 10);
	metadata_rtt(other_client(S.b.addr));
	other_client_close();
	while (nfill > 0)
		close_fd(fill[--nfill]);
	assert_int_equal(wait_metric(&S.b, "ringmq_connections", 1, 5000), 1);
	TEST_DONE();
}

/* ---- clients that never read ---- */

/* Writes up to count copies of a request (correlation ids 1..count) without
 * ever reading, until the socket stays full for 300 ms or 3 s pass. Returns
 * how many were sent whole. */
static unsigned flood(int fd, uint8_t *frame, size_t len, unsigned count)
{
	set_nonblock(fd, true);
	int64_t end = tu_mono_ms() + 3000, stuck_since = 0;
	unsigned sent = 0;
	size_t off = 0;
	while (sent < count && tu_mono_ms() < end) {
		if (off == 0)
			put32(frame + 8, sent + 1);
		ssize_t n = send(fd, frame + off, len - off, MSG_NOSIGNAL);
		if (n > 0) {
			stuck_since = 0;
			off += (size_t)n;
			if (off == len) {
				off = 0;
				sent++;
			}
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			break;
		if (stuck_since == 0)
			stuck_since = tu_mono_ms();
		else if (tu_mono_ms() - stuck_since > 300)
			break;
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		poll(&p, 1, 50);
	}
	if (off > 0) {
		/* Finish the frame cut in half, or the stream would be garbage. */
		set_nonblock(fd, false);
		if (tb_send_all(fd, frame + off, len - off) == 0)
			sent++;
	}
	return sent;
}

static uint8_t *fetch_frame(const char *topic, uint32_t max_bytes, size_t *len)
{
	struct proto_fetch_part part = { 0, 0, max_bytes };
	struct proto_fetch_topic t = { pstr_c(topic), 1, &part };
	union proto_request req = { .fetch = { .max_bytes = max_bytes, .ntopics = 1, .topics = &t } };
	return req_frame(API_FETCH, 1, &req, len);
}

static uint8_t *produce_frame(const char *topic, const uint8_t *batch, uint32_t blen,
			      size_t *len)
{
	struct proto_produce_part part = { 0, { batch, blen } };
	struct proto_produce_topic t = { pstr_c(topic), 1, &part };
	union proto_request req = { .produce = { PROTO_ACKS_LEADER, 10000, 1, &t } };
	return req_frame(API_PRODUCE, 1, &req, len);
}

static void test_never_reads(void **state)
{
	(void)state;
	struct tclient *c = &S.c;
	const char *never[] = { "flush", "never", NULL };
	assert_int_equal(tc_create_topic(c, "bp", 1, never), ERR_NONE);
	assert_int_equal(tc_create_topic(c, "bp-produce", 1, never), ERR_NONE);
	assert_int_equal(tc_create_topic(c, "wb", 1, never), ERR_NONE);
	uint32_t blen, slen, plen;
	uint8_t *big = hold(tu_batch(500, 1000, 7, 1, false, &blen));
	for (int i = 0; i < 8; i++)
		assert_int_equal(tc_produce(c, "bp", 0, PROTO_ACKS_LEADER, big, blen, NULL), 0);
	printf("# topic bp holds %.1f MiB in %u-byte batches\n", 8.0 * blen / MIB, blen);
	uint8_t *small = hold(tu_batch(10, 100, 8, 1, false, &slen));
	uint8_t *pbatch = hold(tu_batch(60, 1000, 9, 1, false, &plen));

	struct lat base = { .n = 0 };
	for (int i = 0; i < 50; i++)
		lat_add(&base, produce_fetch_rtt(c, "wb", small, slen));
	lat_report("produce+fetch before", &base, NULL);
	long rss0 = tb_rss_kib(&S.b);

	/* Fetchers that ask for 1 MiB again and again and never read a byte. */
	enum { NFETCH = 8, NREQ = 400 };
	size_t flen, prlen;
	uint8_t *ff = hold(fetch_frame("bp", MIB, &flen));
	uint8_t *pf = hold(produce_frame("bp-produce", pbatch, plen, &prlen));
	int fetchers[NFETCH];
	unsigned fsent[NFETCH];
	int64_t t0 = tu_mono_ms();
	for (int i = 0; i < NFETCH; i++) {
		fetchers[i] = raw_connect_buf(S.b.addr, 65536);
		fsent[i] = flood(fetchers[i], ff, flen, NREQ);
	}
	/* And a producer that never reads its acknowledgements. */
	int producer = raw_connect_buf(S.b.addr, 65536);
	unsigned psent = flood(producer, pf, prlen, NREQ);
	printf("# %d fetchers sent %u..%u requests for 1 MiB each, a producer %u of %u bytes, "
	       "in %lld ms; none reads\n", NFETCH, fsent[0], fsent[NFETCH - 1], psent,
	       (unsigned)prlen, (long long)(tu_mono_ms() - t0));

	/* The well-behaved client meanwhile. */
	struct lat during = { .n = 0 };
	long rss_max = 0;
	int64_t end = tu_mono_ms() + 20000;
	for (int i = 0; i < 200 && tu_mono_ms() < end; i++) {
		lat_add(&during, produce_fetch_rtt(c, "wb", small, slen));
		if (i % 10 == 0) {
			long rss = tb_rss_kib(&S.b);
			rss_max = rss > rss_max ? rss : rss_max;
		}
	}
	int64_t p50, max = lat_report("produce+fetch while 9 clients never read", &during, &p50);
	printf("# broker RSS: %ld KiB before, at most %ld KiB while they stall\n", rss0, rss_max);
	assert_int_equal(during.n, 200);
	assert_true(rss_max < 200 * 1024 + RSS_SLACK_KIB);
	assert_true(max < 100000 * LAT_SCALE);

	/* Stalled, not dropped: every one is still connected. */
	for (int i = 0; i < NFETCH; i++)
		assert_true(still_open(fetchers[i], 0));
	assert_true(still_open(producer, 0));

	/* A fetcher that starts reading gets every response it asked for. */
	set_nonblock(fetchers[0], false);
	struct rx *r = rx_new();
	unsigned got = 0;
	uint64_t bytes = 0;
	t0 = tu_mono_ms();
	while (got < fsent[0] && !r->closed && tu_mono_ms() - t0 < 20000) {
		struct pollfd p = { .fd = fetchers[0], .events = POLLIN };
		poll(&p, 1, 100);
		rx_read(fetchers[0], r);
		struct proto_resp_hdr h;
		size_t n;
		while ((n = rx_pop(r, &h)) > 0) {
			assert_int_equal(h.err, ERR_NONE);
			assert_true(h.correlation_id >= 1 && h.correlation_id <= fsent[0]);
			assert_true(n > MIB);
			got++;
			bytes += n;
		}
	}
	printf("# fetcher 0, reading at last: %u of %u responses (%llu MiB) in %lld ms\n", got,
	       fsent[0], (unsigned long long)(bytes / MIB), (long long)(tu_mono_ms() - t0));
	assert_int_equal(got, fsent[0]);
	rx_free(r);
	r = rx_new();
	/* So does the producer, all acknowledged. */
	set_nonblock(producer, false);
	got = 0;
	t0 = tu_mono_ms();
	while (got < psent && !r->closed && tu_mono_ms() - t0 < 20000) {
		struct pollfd p = { .fd = producer, .events = POLLIN };
		poll(&p, 1, 100);
		rx_read(producer, r);
		struct proto_resp_hdr h;
		while (rx_pop(r, &h) > 0) {
			assert_int_equal(h.err, ERR_NONE);
			got++;
		}
	}
	assert_int_equal(got, psent);
	rx_free(r);

	for (int i = 0; i < NFETCH; i++)
		close_fd(fetchers[i]);
	close_fd(producer);
	usleep(200000);
	printf("# broker RSS after they left: %ld KiB\n", tb_rss_kib(&S.b));
	metadata_rtt(c);
	drop(ff);
	drop(pf);
	drop(big);
	drop(small);
	drop(pbatch);
	TEST_DONE();
}

/* ---- a pipelining client that does read: backpressure must not lose or stall it ---- */

/* Writes tx while reading responses, until want responses came. Returns how
 * many came; calls check on each. */
static unsigned pump(int fd, const uint8_t *tx, size_t txlen, unsigned want, int timeout_ms,
		     void (*check)(const struct proto_resp_hdr *h, size_t len, void *arg),
		     void *arg)
{
	set_nonblock(fd, true);
	struct rx *r = rx_new();
	size_t off = 0;
	unsigned got = 0;
	int64_t deadline = tu_mono_ms() + timeout_ms;
	while (got < want && !r->closed && tu_mono_ms() < deadline) {
		struct pollfd p = { .fd = fd, .events = POLLIN | (off < txlen ? POLLOUT : 0) };
		if (poll(&p, 1, 100) <= 0)
			continue;
		if ((p.revents & POLLOUT) && off < txlen) {
			ssize_t n = send(fd, tx + off, txlen - off, MSG_NOSIGNAL);
			if (n > 0)
				off += (size_t)n;
		}
		if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
			rx_read(fd, r);
			struct proto_resp_hdr h;
			size_t n;
			while ((n = rx_pop(r, &h)) > 0) {
				check(&h, n, arg);
				got++;
			}
		}
	}
	rx_free(r);
	return got;
}

static void check_in_order(const struct proto_resp_hdr *h, size_t len, void *arg)
{
	uint32_t *next = arg;
	(void)len;
	assert_int_equal(h->err, ERR_NONE);
	assert_int_equal(h->correlation_id, *next);
	(*next)++;
}

static void check_fetch(const struct proto_resp_hdr *h, size_t len, void *arg)
{
	bool *seen = arg;
	assert_int_equal(h->err, ERR_NONE);
	assert_true(h->correlation_id >= 1 && h->correlation_id <= 200);
	assert_false(seen[h->correlation_id]);
	seen[h->correlation_id] = true;
	assert_true(len > MIB);
}

static void test_pipelining_reader(void **state)
{
	(void)state;
	/* 20000 metadata requests in one stream: more response bytes than
	 * max.buffered.bytes, so the broker pauses and resumes the connection. */
	enum { NMETA = 20000, NFETCH = 200 };
	size_t one;
	union proto_request mreq = { .metadata = { 0, NULL } };
	uint8_t *m = hold(req_frame(API_METADATA, 0, &mreq, &one));
	uint8_t *tx = hold(malloc(one * NMETA));
	for (unsigned i = 0; i < NMETA; i++) {
		memcpy(tx + i * one, m, one);
		put32(tx + i * one + 8, i + 1);
	}
	int fd = raw_connect(S.b.addr);
	uint32_t next = 1;
	int64_t t0 = tu_mono_ms();
	unsigned got = pump(fd, tx, one * NMETA, NMETA, 20000, check_in_order, &next);
	printf("# %u of %u pipelined metadata requests answered in order in %lld ms\n", got,
	       NMETA, (long long)(tu_mono_ms() - t0));
	assert_int_equal(got, NMETA);
	drop(tx);
	drop(m);

	/* 200 fetches of 1 MiB: paused by max.inflight.requests and by
	 * max.buffered.bytes in turn, and every one answered. */
	size_t flen;
	uint8_t *ff = hold(fetch_frame("bp", MIB, &flen));
	tx = hold(malloc(flen * NFETCH));
	for (unsigned i = 0; i < NFETCH; i++) {
		memcpy(tx + i * flen, ff, flen);
		put32(tx + i * flen + 8, i + 1);
	}
	bool seen[NFETCH + 1] = { false };
	t0 = tu_mono_ms();
	got = pump(fd, tx, flen * NFETCH, NFETCH, 20000, check_fetch, seen);
	printf("# %u of %u pipelined 1 MiB fetches answered in %lld ms\n", got, NFETCH,
	       (long long)(tu_mono_ms() - t0));
	assert_int_equal(got, NFETCH);
	drop(tx);
	drop(ff);
	close_fd(fd);
	TEST_DONE();
}

/* A producer that pipelines as fast as TCP lets it, reading its acks as they
 * come, against a broker with small frames (64 KiB, a valid setting). When
 * max.inflight.requests pauses the connection, input the kernel had already
 * handed over must be held, not taken as a client "outrunning the limits":
 * the docs promise that such a connection is slowed down, not closed. */
static void check_produce(const struct proto_resp_hdr *h, size_t len, void *arg)
{
	bool *seen = arg;
	(void)len;
	assert_int_equal(h->err, ERR_NONE);
	assert_true(h->correlation_id >= 1 && h->correlation_id <= 2000);
	assert_false(seen[h->correlation_id]);
	seen[h->correlation_id] = true;
}

static void test_pipelined_producer_small_frames(void **state)
{
	(void)state;
	enum { NPROD = 2000 };
	char path[700];
	snprintf(path, sizeof(path), "%s/small-frames.conf", S.cfg_dir);
	FILE *cf = fopen(path, "w");
	assert_non_null(cf);
	fprintf(cf, "max.frame.bytes = 64K\ndefault.max.message.bytes = 32K\n"
		    "max.inflight.requests = %d\n", MAX_INFLIGHT);
	fclose(cf);
	const char *extra[] = { "--config", path, NULL };
	if (tb_start(&S.own, NULL, extra) != 0) {
		S.own.pid = 0;
		fail();
	}
	struct tclient *c = other_client(S.own.addr);
	const char *never[] = { "flush", "never", NULL };
	assert_int_equal(tc_create_topic(c, "pipe", 1, never), ERR_NONE);
	uint32_t blen;
	uint8_t *batch = hold(tu_batch(60, 200, 5, 1, false, &blen));
	size_t flen;
	uint8_t *f = hold(produce_frame("pipe", batch, blen, &flen));
	uint8_t *tx = hold(malloc(flen * NPROD));
	for (unsigned i = 0; i < NPROD; i++) {
		memcpy(tx + i * flen, f, flen);
		put32(tx + i * flen + 8, i + 1);
	}
	int64_t bad0 = tb_metric(&S.own, "ringmq_connections_closed_bad_total");
	int fd = raw_connect(S.own.addr);
	bool *seen = hold(calloc(NPROD + 1, sizeof(bool)));
	int64_t t0 = tu_mono_ms();
	unsigned got = pump(fd, tx, flen * NPROD, NPROD, 20000, check_produce, seen);
	int64_t bad = tb_metric(&S.own, "ringmq_connections_closed_bad_total") - bad0;
	printf("# pipelined producer, %zu-byte frames: %u of %u acknowledged in %lld ms; "
	       "connections closed for bad input: %lld\n", flen, got, NPROD,
	       (long long)(tu_mono_ms() - t0), (long long)bad);
	assert_int_equal(bad, 0);
	assert_int_equal(got, NPROD);
	close_fd(fd);
	drop(seen);
	drop(tx);
	drop(f);
	drop(batch);
	other_client_close();
	assert_int_equal(tb_stop(&S.own), 0);
	assert_int_equal(tb_log_problems(&S.own), 0);
	tb_cleanup(&S.own);
	unlink(path);
	TEST_DONE();
}

/* ---- a thousand idle connections (a broker of its own, default limits) ---- */

static void test_many_idle(void **state)
{
	(void)state;
	enum { NIDLE = 1000 };
	struct rlimit rl;
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur < 2 * NIDLE + 200) {
		rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
		assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	}
	assert_true(rl.rlim_cur >= NIDLE + 100);

	struct tbroker *b = &S.own;
	if (tb_start(b, NULL, NULL) != 0) {
		b->pid = 0;
		fail();
	}
	struct tclient *c = other_client(b->addr);
	const char *never[] = { "flush", "never", NULL };
	assert_int_equal(tc_create_topic(c, "lat", 1, never), ERR_NONE);
	uint32_t slen;
	uint8_t *small = hold(tu_batch(10, 100, 8, 1, false, &slen));
	for (int i = 0; i < 10; i++) /* warm up */
		metadata_rtt(c);

	int fd0 = tb_fd_count(b->pid);
	long rss0 = tb_rss_kib(b);
	struct lat md0 = { .n = 0 }, pf0 = { .n = 0 };
	for (int i = 0; i < 100; i++) {
		lat_add(&md0, metadata_rtt(c));
		lat_add(&pf0, produce_fetch_rtt(c, "lat", small, slen));
	}
	lat_report("metadata, 1 connection", &md0, NULL);
	lat_report("produce+fetch, 1 connection", &pf0, NULL);

	static int idle[NIDLE];
	int64_t t0 = tu_mono_ms();
	for (int i = 0; i < NIDLE; i++)
		idle[i] = raw_connect(b->addr);
	int64_t conns = wait_metric(b, "ringmq_connections", NIDLE + 1, 10000);
	printf("# %d idle connections accepted in %lld ms (ringmq_connections %lld)\n", NIDLE,
	       (long long)(tu_mono_ms() - t0), (long long)conns);
	assert_int_equal(conns, NIDLE + 1);
	int fd1 = tb_fd_count(b->pid);

	struct lat md1 = { .n = 0 }, pf1 = { .n = 0 };
	for (int i = 0; i < 100; i++) {
		lat_add(&md1, metadata_rtt(c));
		lat_add(&pf1, produce_fetch_rtt(c, "lat", small, slen));
	}
	long rss1 = tb_rss_kib(b);
	int64_t md_p50, md_max = lat_report("metadata, 1001 connections", &md1, &md_p50);
	int64_t pf_p50, pf_max = lat_report("produce+fetch, 1001 connections", &pf1, &pf_p50);
	printf("# broker RSS %ld KiB -> %ld KiB; open fds %d -> %d\n", rss0, rss1, fd0, fd1);
	assert_true(fd1 >= fd0 + NIDLE);
	assert_true(md_max < 50000 * LAT_SCALE);
	assert_true(pf_max < 100000 * LAT_SCALE);
	assert_true(rss1 < 64 * 1024 + RSS_SLACK_KIB);

	for (int i = 0; i < NIDLE; i++)
		close_fd(idle[i]);
	int fd2 = tb_fd_count(b->pid);
	int64_t deadline = tu_mono_ms() + 5000;
	while (fd2 > fd0 + 2 && tu_mono_ms() < deadline) {
		usleep(20000);
		fd2 = tb_fd_count(b->pid);
	}
	printf("# open fds after they closed: %d (baseline %d)\n", fd2, fd0);
	assert_true(fd2 <= fd0 + 2);
	metadata_rtt(c);
	assert_int_equal(tb_health(b), 200);
	other_client_close();
	drop(small);
	int rc = tb_stop(b);
	int problems = tb_log_problems(b);
	if (rc != 0 || problems != 0)
		tb_print_log_tail(b);
	assert_int_equal(rc, 0);
	assert_int_equal(problems, 0);
	tb_cleanup(b);
	TEST_DONE();
}

/* ---- fetches that make the broker allocate far more than they cost ---- */

/* Starts S.own with the shared broker's small limits and a topic holding
 * `batches` batches of ~500 KiB in one segment. Returns the offset after them. */
static uint64_t own_broker_with_data(const char *topic, int batches)
{
	const char *extra[] = { "--config", S.cfg_path, NULL };
	if (tb_start(&S.own, NULL, extra) != 0) {
		S.own.pid = 0;
		fail();
	}
	struct tclient *c = other_client(S.own.addr);
	const char *never[] = { "flush", "never", NULL };
	assert_int_equal(tc_create_topic(c, topic, 1, never), ERR_NONE);
	uint32_t blen;
	uint8_t *big = hold(tu_batch(500, 1000, 7, 1, false, &blen));
	uint64_t base = 0;
	for (int i = 0; i < batches; i++)
		assert_int_equal(tc_produce(c, topic, 0, PROTO_ACKS_LEADER, big, blen, &base), 0);
	drop(big);
	return base + 500;
}

/* A fetch request naming one partition `copies` times. */
static uint8_t *dup_fetch_frame(const char *topic, uint32_t copies, uint64_t offset,
				uint32_t part_max, uint32_t max_wait, uint32_t min_bytes,
				size_t *len)
{
	struct proto_fetch_part *parts = hold(calloc(copies, sizeof(*parts)));
	for (uint32_t i = 0; i < copies; i++)
		parts[i] = (struct proto_fetch_part){ 0, offset, part_max };
	struct proto_fetch_topic t = { pstr_c(topic), copies, parts };
	union proto_request req = { .fetch = { .max_wait_ms = max_wait, .min_bytes = min_bytes,
					       .max_bytes = UINT32_MAX, .ntopics = 1, .topics = &t } };
	uint8_t *f = req_frame(API_FETCH, 1, &req, len);
	drop(parts);
	return f;
}

/* Eight small fetch requests for everything in a 46 MiB partition (max_bytes
 * 4 GiB), from a client that never reads. The docs promise that a
 * connection costs at most one frame of input plus max.buffered.bytes
 * (1 MiB) of output; allow one oversized response on top, but not eight. */
static void test_fetch_memory_bound(void **state)
{
	(void)state;
	own_broker_with_data("amp", 96);
	struct tclient *c = &S.oc;
	long rss0 = tb_rss_kib(&S.own);
	size_t flen;
	uint8_t *f = hold(dup_fetch_frame("amp", 1, 0, UINT32_MAX, 0, 0, &flen));
	/* In one write, so that the broker takes them in together, as it would
	 * from any client that pipelines. */
	uint8_t *tx = hold(malloc(flen * MAX_INFLIGHT));
	for (int i = 0; i < MAX_INFLIGHT; i++) {
		memcpy(tx + i * flen, f, flen);
		put32(tx + i * flen + 8, (uint32_t)i + 1);
	}
	int fd = raw_connect_buf(S.own.addr, 65536);
	int64_t t0 = tu_mono_ms();
	assert_int_equal(tb_send_all(fd, tx, flen * MAX_INFLIGHT), 0);
	drop(tx);
	long peak = rss0;
	while (tu_mono_ms() - t0 < 1500) {
		long rss = tb_rss_kib(&S.own);
		peak = rss > peak ? rss : peak;
		usleep(5000);
	}
	printf("# %d fetch requests of %zu bytes, never read: broker RSS %ld KiB -> peak %ld KiB "
	       "(+%ld MiB)\n", MAX_INFLIGHT, flen, rss0, peak, (peak - rss0) / 1024);
	/* The well-behaved client is still served, whatever happened. */
	metadata_rtt(c);
	assert_true(peak - rss0 < 100 * 1024 + RSS_SLACK_KIB);
	close_fd(fd);
	drop(f);
	other_client_close();
	assert_int_equal(tb_stop(&S.own), 0);
	assert_int_equal(tb_log_problems(&S.own), 0);
	tb_cleanup(&S.own);
	TEST_DONE();
}

/* A long poll that names one partition thousands of times and can never be
 * satisfied (min_bytes 4 GiB), parked while others produce to it. Each
 * produce wakes the partition's waiters; the broker must not spend time
 * quadratic in the request's size on it, stalling every client. */
static void test_fetch_duplicate_partitions(void **state)
{
	(void)state;
	enum { COPIES = 6000 };
	uint64_t end = own_broker_with_data("dup", 1);
	struct tclient *c = &S.oc;
	uint32_t slen;
	uint8_t *small = hold(tu_batch(10, 100, 8, 1, false, &slen));
	struct lat before = { .n = 0 };
	for (int i = 0; i < 20; i++)
		lat_add(&before, produce_fetch_rtt(c, "dup", small, slen));
	lat_report("produce+fetch before the long poll", &before, NULL);
	end += 20 * 10;

	size_t flen;
	uint8_t *f = hold(dup_fetch_frame("dup", COPIES, end, MIB, 10000, UINT32_MAX, &flen));
	int fd = raw_connect(S.own.addr);
	assert_int_equal(tb_send_all(fd, f, flen), 0);
	drop(f);
	/* Refusing it is fine too: then an error response comes back. */
	struct rx *r = rx_new();
	struct proto_resp_hdr h;
	int64_t t0 = tu_mono_ms();
	while (tu_mono_ms() - t0 < 300) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		poll(&p, 1, 50);
		rx_read(fd, r);
	}
	bool refused = rx_pop(r, &h) > 0;
	if (refused)
		printf("# the fetch naming one partition %d times was answered at once: %s\n",
		       COPIES, proto_err_name(h.err));
	rx_free(r);

	struct lat during = { .n = 0 };
	t0 = tu_mono_ms();
	while (during.n < 20 && tu_mono_ms() - t0 < 5000)
		lat_add(&during, produce_fetch_rtt(c, "dup", small, slen));
	char what[128];
	snprintf(what, sizeof(what), "produce+fetch while a long poll names the partition %d "
		 "times (%zu-byte request)", COPIES, flen);
	int64_t max = lat_report(what, &during, NULL);
	close_fd(fd);
	/* Its connection gone, the broker is quick again. */
	usleep(100000);
	int64_t after = produce_fetch_rtt(c, "dup", small, slen);
	printf("# produce+fetch after it left: %lld us\n", (long long)after);
	assert_true(max < 100000 * LAT_SCALE);
	drop(small);
	other_client_close();
	assert_int_equal(tb_stop(&S.own), 0);
	assert_int_equal(tb_log_problems(&S.own), 0);
	tb_cleanup(&S.own);
	TEST_DONE();
}

/* ---- HTTP clients that never finish their request ---- */

/* http.max.connections (64) clients each send half a request line and wait.
 * The broker promises that a slow HTTP client cannot hold a slot for long
 * (10 s); after that /health must answer again, or a health checker would
 * declare a working broker dead. */
static void test_http_slow_clients(void **state)
{
	(void)state;
	enum { NSLOW = 64 };
	assert_int_equal(tb_health(&S.b), 200);
	int slow[NSLOW];
	for (int i = 0; i < NSLOW; i++) {
		slow[i] = raw_connect(S.b.http);
		assert_int_equal(tb_send_all(slow[i], "GET /hea", 8), 0);
	}
	usleep(100000);
	int during = tb_health(&S.b);
	printf("# /health with %d slow HTTP clients: %d\n", NSLOW, during);
	/* The protocol port does not care. */
	metadata_rtt(&S.c);
	int64_t t0 = tu_mono_ms();
	int st = during;
	while (st != 200 && tu_mono_ms() - t0 < HTTP_TIMEOUT_MS + 3000) {
		usleep(250000);
		st = tb_health(&S.b);
	}
	printf("# /health answered %d after %lld ms more\n", st, (long long)(tu_mono_ms() - t0));
	assert_int_equal(st, 200);
	for (int i = 0; i < NSLOW; i++)
		close_fd(slow[i]);
	TEST_DONE();
}

/* ---- after all of that ---- */

static void test_still_healthy(void **state)
{
	(void)state;
	assert_true(tb_alive(&S.b));
	assert_int_equal(tb_health(&S.b), 200);
	metadata_rtt(&S.c);
	printf("# shared broker after every attack: RSS %ld KiB, %d open fds, "
	       "%lld connections closed for bad input\n", tb_rss_kib(&S.b), tb_fd_count(S.b.pid),
	       (long long)tb_metric(&S.b, "ringmq_connections_closed_bad_total"));
	tc_close(&S.c);
	/* A client that stopped reading must not keep the broker from stopping. */
	int fd = raw_connect_buf(S.b.addr, 65536);
	size_t flen;
	uint8_t *f = hold(fetch_frame("bp", MIB, &flen));
	unsigned sent = flood(fd, f, flen, 50);
	drop(f);
	usleep(200000);
	int64_t t0 = tu_mono_ms();
	int rc = tb_stop(&S.b);
	printf("# SIGTERM with a stalled reader (%u fetches unread): exit %d after %lld ms\n",
	       sent, rc, (long long)(tu_mono_ms() - t0));
	close_fd(fd);
	int problems = tb_log_problems(&S.b);
	if (rc != 0 || problems != 0)
		tb_print_log_tail(&S.b);
	assert_int_equal(rc, 0);
	assert_int_equal(problems, 0);
	/* It waited for the reader (shutdown.timeout.ms), but not for ever. */
	assert_true(tu_mono_ms() - t0 >= SHUTDOWN_TIMEOUT_MS - 100);
	assert_true(tu_mono_ms() - t0 < SHUTDOWN_TIMEOUT_MS + 5000);
	TEST_DONE();
}

int main(void)
{
	tb_small_asan_quarantine();
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_bad_requests, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_huge_length, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_half_frame, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_random_bytes, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_max_connections, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_never_reads, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_pipelining_reader, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_pipelined_producer_small_frames, test_setup,
						test_teardown),
		cmocka_unit_test_setup_teardown(test_many_idle, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_fetch_memory_bound, test_setup,
						test_teardown),
		cmocka_unit_test_setup_teardown(test_fetch_duplicate_partitions, test_setup,
						test_teardown),
		cmocka_unit_test_setup_teardown(test_http_slow_clients, test_setup, test_teardown),
		cmocka_unit_test_setup_teardown(test_still_healthy, test_setup, test_teardown),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
