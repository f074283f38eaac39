/* bench_commits.c — consumer-group commit throughput of a running ringmqd.
 *
 *   bench_commits --broker HOST:PORT [--connections 8] [--inflight 8]
 *                 [--entries 1] [--seconds 5] [--topic bench-commits-ENTRIES]
 *
 * Each connection commits for a group of its own (member-less commits, as an
 * administrative tool or a self-assigning consumer makes them), keeping
 * --inflight COMMIT_OFFSETS requests on the wire, each naming --entries
 * partitions. Every commit is answered only once it is on disk, so the rate
 * is how many commits share each fdatasync of the offsets store. Prints
 * commits/s, entries/s and the reply latency percentiles; exits 1 if any
 * commit failed.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
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

#include "common/arena.h"
#include "proto/proto.h"

#define MAX_CONNS 256
#define SLOTS 65536 /* send times by correlation id; > connections x in flight */

struct bconn {
	int fd;
	uint8_t *in;
	size_t in_len, in_cap;
	uint32_t next_corr;
	uint32_t inflight;
	char group[32];
};

static struct {
	const char *broker;
	const char *topic;
	uint32_t conns, inflight, entries;
	double seconds;
} opt = { NULL, NULL, 8, 8, 1, 5.0 };

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *msg)
{
	fprintf(stderr, "bench_commits: %s\n", msg);
	exit(1);
}

static int dial(const char *hostport)
{
	char host[256];
	const char *colon = strrchr(hostport, ':');
	if (colon == NULL || (size_t)(colon - hostport) >= sizeof(host))
		die("--broker must be HOST:PORT");
	memcpy(host, hostport, (size_t)(colon - hostport));
	host[colon - hostport] = '\0';
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		die("cannot resolve the broker's address");
	int fd = socket(ai->ai_family, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0)
		die("cannot connect to the broker");
	freeaddrinfo(ai);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

static void send_all(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("send to the broker failed");
		p += n;
		len -= (size_t)n;
	}
}

static void send_request(struct bconn *c, uint16_t api, const union proto_request *req)
{
	struct pw w;
	pw_init_dyn(&w, 512, FRAME_SIZE_HARD_MAX);
	size_t start = proto_req_begin(&w, api, 0, c->next_corr++);
	proto_encode_request(&w, api, req);
	proto_frame_end(&w, start);
	if (w.failed)
		die("out of memory");
	send_all(c->fd, w.buf, w.len);
	pw_free(&w);
}

/* Next whole response frame of c, reading if need be; NULL at EOF. */
static const uint8_t *next_frame(struct bconn *c, size_t *used, uint32_t *len, bool block)
{
	for (;;) {
		size_t have = c->in_len - *used;
		if (have >= 4) {
			const uint8_t *p = c->in + *used;
			uint32_t size = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
					(uint32_t)p[3] << 24;
			if (size > FRAME_SIZE_HARD_MAX)
				die("bad frame from the broker");
			if (have >= 4u + size) {
				*used += 4u + size;
				*len = 4u + size;
				return p;
			}
		}
		if (!block)
			return NULL;
		/* Compact, grow, read. */
		memmove(c->in, c->in + *used, c->in_len - *used);
		c->in_len -= *used;
		*used = 0;
		if (c->in_cap - c->in_len < 65536) {
			c->in_cap = c->in_cap ? c->in_cap * 2 : 1 << 20;
			c->in = realloc(c->in, c->in_cap);
			if (c->in == NULL)
				die("out of memory");
		}
		ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("the broker closed the connection");
		c->in_len += (size_t)n;
		block = false; /* one read per call: the caller polls the rest */
	}
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

static void usage(FILE *f)
{
	fputs("usage: bench_commits --broker HOST:PORT [--connections N] [--inflight N]\n"
	      "                     [--entries N] [--seconds S] [--topic NAME]\n", f);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "broker", required_argument, NULL, 'b' },
		{ "connections", required_argument, NULL, 'c' },
		{ "inflight", required_argument, NULL, 'i' },
		{ "entries", required_argument, NULL, 'e' },
		{ "seconds", required_argument, NULL, 's' },
		{ "topic", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "b:c:i:e:s:t:h", lo, NULL)) != -1) {
		switch (ch) {
		case 'b': opt.broker = optarg; break;
		case 'c': opt.conns = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'i': opt.inflight = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 'e': opt.entries = (uint32_t)strtoul(optarg, NULL, 10); break;
		case 's': opt.seconds = strtod(optarg, NULL); break;
		case 't': opt.topic = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (opt.broker == NULL || opt.conns < 1 || opt.conns > MAX_CONNS || opt.inflight < 1 ||
	    opt.conns * opt.inflight >= SLOTS || opt.entries < 1 || opt.entries > 1000 ||
	    !(opt.seconds > 0 && opt.seconds <= 3600)) {
		usage(stderr);
		return 2;
	}
	char topic[64];
	if (opt.topic == NULL) {
		snprintf(topic, sizeof(topic), "bench-commits-%u", opt.entries);
		opt.topic = topic;
	}
	static struct bconn cs[MAX_CONNS];
	static uint8_t arena_buf[1 << 20];
	struct arena arena;
	arena_init(&arena, arena_buf, sizeof(arena_buf));
	for (uint32_t i = 0; i < opt.conns; i++) {
		cs[i].fd = dial(opt.broker);
		snprintf(cs[i].group, sizeof(cs[i].group), "bench-commits-%u", i);
	}
	/* The topic, with a partition per entry (it may exist from a last run). */
	union proto_request cr = { .create_topic = { pstr_c(opt.topic), opt.entries, 0, NULL } };
	send_request(&cs[0], API_CREATE_TOPIC, &cr);
	size_t used = 0;
	uint32_t flen;
	const uint8_t *f = next_frame(&cs[0], &used, &flen, true);
	while (f == NULL)
		f = next_frame(&cs[0], &used, &flen, true);
	struct proto_resp_hdr h;
	struct pr body;
	if (proto_resp_header(f, flen, &h, &body) != 0 ||
	    (h.err != ERR_NONE && h.err != ERR_TOPIC_EXISTS))
		die("cannot create the topic");
	memmove(cs[0].in, cs[0].in + used, cs[0].in_len - used);
	cs[0].in_len -= used;
	/* Let creation finish: commits to a topic being created are refused. */
	usleep(200000);

	struct proto_commit_part *parts = calloc(opt.entries, sizeof(*parts));
	int64_t *sent_at = calloc(SLOTS, sizeof(*sent_at));
	size_t lat_cap = 1 << 20, nlat = 0;
	int64_t *lat = malloc(lat_cap * sizeof(*lat));
	if (parts == NULL || sent_at == NULL || lat == NULL)
		die("out of memory");
	uint64_t seq = 0, commits = 0, failed = 0;
	int64_t t0 = now_us(), end = t0 + (int64_t)(opt.seconds * 1e6);
	struct pollfd pfs[MAX_CONNS];
	bool stopping = false;
	for (;;) {
		int64_t now = now_us();
		stopping = now >= end;
		uint32_t outstanding = 0;
		for (uint32_t i = 0; i < opt.conns; i++) {
			struct bconn *c = &cs[i];
			while (!stopping && c->inflight < opt.inflight) {
				for (uint32_t p = 0; p < opt.entries; p++)
					parts[p] = (struct proto_commit_part){ pstr_c(opt.topic), p,
									       ++seq };
				union proto_request req = { .commit_offsets = {
					pstr_c(c->group), pstr_c(""), 0, opt.entries, parts } };
				sent_at[c->next_corr % SLOTS] = now_us();
				send_request(c, API_COMMIT_OFFSETS, &req);
				c->inflight++;
			}
			outstanding += c->inflight;
			pfs[i] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
		}
		if (stopping && outstanding == 0)
			break;
		if (poll(pfs, opt.conns, 1000) < 0 && errno != EINTR)
			die("poll failed");
		for (uint32_t i = 0; i < opt.conns; i++) {
			if (!(pfs[i].revents & (POLLIN | POLLERR | POLLHUP)))
				continue;
			struct bconn *c = &cs[i];
			size_t u = 0;
			bool first = true;
			while ((f = next_frame(c, &u, &flen, first)) != NULL || first) {
				first = false;
				if (f == NULL)
					continue;
				int64_t t = now_us();
				union proto_response r;
				arena_reset(&arena);
				if (proto_resp_header(f, flen, &h, &body) != 0)
					die("bad response");
				bool ok = h.err == ERR_NONE &&
					  proto_decode_response(API_COMMIT_OFFSETS, 0, &body, &arena,
								&r) == 0;
				for (uint32_t k = 0; ok && k < r.commit_offsets.nparts; k++)
					ok = r.commit_offsets.parts[k].err == ERR_NONE;
				if (!ok && failed++ == 0)
					fprintf(stderr, "bench_commits: a commit failed: %.*s\n",
						(int)h.msg.len, h.msg.p);
				commits++;
				c->inflight--;
				if (nlat == lat_cap) {
					lat_cap *= 2;
					lat = realloc(lat, lat_cap * sizeof(*lat));
					if (lat == NULL)
						die("out of memory");
				}
				lat[nlat++] = t - sent_at[h.correlation_id % SLOTS];
			}
			memmove(c->in, c->in + u, c->in_len - u);
			c->in_len -= u;
		}
	}
	double secs = (double)(now_us() - t0) / 1e6;
	qsort(lat, nlat, sizeof(*lat), cmp_i64);
	printf("commits: %" PRIu64 " in %.2f s = %.0f commits/s, %.0f entries/s; "
	       "%u connections x %u in flight, %u entries each; latency p50 %.2f ms, "
	       "p99 %.2f ms, max %.2f ms; failed %" PRIu64 "\n",
	       commits, secs, (double)commits / secs, (double)commits * opt.entries / secs,
	       opt.conns, opt.inflight, opt.entries, nlat ? (double)lat[nlat / 2] / 1000 : 0,
	       nlat ? (double)lat[nlat * 99 / 100] / 1000 : 0,
	       nlat ? (double)lat[nlat - 1] / 1000 : 0, failed);
	for (uint32_t i = 0; i < opt.conns; i++) {
		close(cs[i].fd);
		free(cs[i].in);
	}
	free(parts);
	free(sent_at);
	free(lat);
	return failed ? 1 : 0;
}
