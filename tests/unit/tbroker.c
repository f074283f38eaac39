/* tbroker.c — start/stop a real ringmqd and talk to it (see tbroker.h). */
#include "tests/unit/tbroker.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/testutil.h"

void tb_small_asan_quarantine(void)
{
#ifdef ASAN_BUILD
	const char *old = getenv("ASAN_OPTIONS");
	char opts[1024];
	snprintf(opts, sizeof(opts), "%s%squarantine_size_mb=16", old ? old : "",
		 old && *old ? ":" : "");
	setenv("ASAN_OPTIONS", opts, 1);
#endif
}

void tb_bin_path(char *out, size_t cap, const char *name)
{
	char self[1024];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0)
		n = 0;
	self[n] = '\0';
	/* BUILD/tests/<dir>/<test> -> BUILD/bin/<name> */
	for (int up = 0; up < 3; up++) {
		char *slash = strrchr(self, '/');
		if (slash)
			*slash = '\0';
	}
	snprintf(out, cap, "%s/bin/%s", self, name);
}

static int start(struct tbroker *b, const char *dir, const char *const *extra, long nofile)
{
	char bin[1100];
	tb_bin_path(bin, sizeof(bin), "ringmqd");
	if (dir == NULL) {
		memset(b, 0, sizeof(*b));
		b->dir = tu_tmpdir("broker");
		b->own_dir = true;
	}
	snprintf(b->log_path, sizeof(b->log_path), "%s.log", b->dir);
	int pfd[2];
	if (pipe(pfd) != 0)
		return -1;
	const char *argv[32] = { bin, "--data-dir", b->dir, "--listen", "127.0.0.1:0",
				 "--http", "127.0.0.1:0" };
	int argc = 7;
	for (int i = 0; extra && extra[i] && argc < 30; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		if (nofile > 0) {
			struct rlimit rl = { (rlim_t)nofile, (rlim_t)nofile };
			if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
				_exit(126);
		}
		dup2(pfd[1], STDERR_FILENO);
		close(pfd[0]);
		close(pfd[1]);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	b->pid = pid;
	b->err_fd = pfd[0];
	int logfd = open(b->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	char buf[8192];
	size_t len = 0;
	int64_t deadline = tu_mono_ms() + 10000;
	while (tu_mono_ms() < deadline) {
		struct pollfd p = { .fd = pfd[0], .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = read(pfd[0], buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)
			break;
		if (logfd >= 0 && write(logfd, buf + len, (size_t)n) < 0)
			n = n + 0;
		len += (size_t)n;
		buf[len] = '\0';
		char *r = strstr(buf, "ringmqd: ready on ");
		if (r && strchr(r, '\n')) {
			if (sscanf(r, "ringmqd: ready on %63s (http %63[^)])", b->addr, b->http) >= 1) {
				if (logfd >= 0)
					close(logfd);
				/* Drain its stderr from now on, so it never blocks. */
				pid_t drain = fork();
				if (drain == 0) {
					/* Hold no other descriptor (client sockets, say) open. */
					for (int fd = 3; fd < 1024; fd++)
						if (fd != pfd[0])
							close(fd);
					int fd = open(b->log_path, O_WRONLY | O_APPEND);
					char d[4096];
					ssize_t k;
					while ((k = read(pfd[0], d, sizeof(d))) > 0)
						if (fd >= 0 && write(fd, d, (size_t)k) < 0)
							break;
					_exit(0);
				}
				close(pfd[0]);
				b->err_fd = -1;
				return 0;
			}
		}
		if (len >= sizeof(buf) - 1)
			len = 0;
	}
	if (logfd >= 0)
		close(logfd);
	fprintf(stderr, "tb_start: no ready line; output:\n%s\n", buf);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(pfd[0]);
	return -1;
}

int tb_start(struct tbroker *b, const char *dir, const char *const *extra)
{
	return start(b, dir, extra, 0);
}

int tb_start_nofile(struct tbroker *b, const char *dir, const char *const *extra, long nofile)
{
	return start(b, dir, extra, nofile);
}

static int wait_exit(pid_t pid, int timeout_ms)
{
	int64_t deadline = tu_mono_ms() + timeout_ms;
	int status;
	while (tu_mono_ms() < deadline) {
		pid_t r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		usleep(10000);
	}
	return -1;
}

int tb_stop(struct tbroker *b)
{
	if (b->pid <= 0)
		return -1;
	kill(b->pid, SIGTERM);
	int rc = wait_exit(b->pid, 15000);
	if (rc < 0) {
		kill(b->pid, SIGKILL);
		waitpid(b->pid, NULL, 0);
	}
	b->pid = 0;
	return rc;
}

void tb_kill9(struct tbroker *b)
{
	if (b->pid <= 0)
		return;
	kill(b->pid, SIGKILL);
	waitpid(b->pid, NULL, 0);
	b->pid = 0;
}

void tb_cleanup(struct tbroker *b)
{
	if (b->pid > 0)
		tb_kill9(b);
	if (b->own_dir && b->dir) {
		tu_rmtree(b->dir);
		unlink(b->log_path);
		free(b->dir);
	}
	b->dir = NULL;
}

long tb_rss_kib(const struct tbroker *b)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)b->pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return -1;
	long kib = -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

int tb_fd_count(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	if (d == NULL)
		return -1;
	int n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

bool tb_alive(struct tbroker *b)
{
	int status;
	if (b->pid <= 0)
		return false;
	if (waitpid(b->pid, &status, WNOHANG) == 0)
		return true;
	printf("# broker %d exited: %s %d\n", (int)b->pid,
	       WIFSIGNALED(status) ? "signal" : "status",
	       WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
	b->pid = 0;
	return false;
}

/* Lines of the broker's log holding any of pats (NULL-terminated); the
 * first `show` are printed. */
static int log_scan(const struct tbroker *b, const char *const *pats, int show)
{
	FILE *f = fopen(b->log_path, "r");
	if (f == NULL)
		return 0;
	char line[1024];
	int n = 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		for (int i = 0; pats[i] != NULL; i++) {
			if (strstr(line, pats[i]) != NULL) {
				if (n++ < show)
					printf("# broker log: %s", line);
				break;
			}
		}
	}
	fclose(f);
	return n;
}

int tb_log_count(const struct tbroker *b, const char *what, int show)
{
	const char *const pats[] = { what, NULL };
	return log_scan(b, pats, show);
}

int tb_log_problems(const struct tbroker *b)
{
	static const char *const bad[] = { "AddressSanitizer", "LeakSanitizer", "runtime error:",
					   "UndefinedBehaviorSanitizer", "Assertion", NULL };
	return log_scan(b, bad, 20);
}

void tb_print_log_tail(const struct tbroker *b)
{
	enum { NLINES = 30, LINE = 512 };
	FILE *f = fopen(b->log_path, "r");
	if (f == NULL)
		return;
	char (*lines)[LINE] = malloc(NLINES * sizeof(*lines));
	if (lines == NULL) {
		fclose(f);
		return;
	}
	int n = 0;
	while (fgets(lines[n % NLINES], LINE, f) != NULL)
		n++;
	fclose(f);
	printf("# broker log %s (last lines of %d):\n", b->log_path, n);
	for (int i = n > NLINES ? n - NLINES : 0; i < n; i++)
		printf("#   %s", lines[i % NLINES]);
	free(lines);
}

/* ---- HTTP ---- */

int tb_connect(const char *hostport, int rcvbuf, int timeout_s)
{
	char host[64];
	const char *colon = strrchr(hostport, ':');
	if (colon == NULL || (size_t)(colon - hostport) >= sizeof(host))
		return -EINVAL;
	memcpy(host, hostport, (size_t)(colon - hostport));
	host[colon - hostport] = '\0';
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1)) };
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		return -EINVAL;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (rcvbuf > 0)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (timeout_s > 0) {
		struct timeval tv = { .tv_sec = timeout_s };
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

int tb_send_all(int fd, const void *p, size_t len)
{
	const uint8_t *b = p;
	while (len > 0) {
		ssize_t n = send(fd, b, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		b += n;
		len -= (size_t)n;
	}
	return 0;
}

int tb_http_get(const char *hostport, const char *path, char **body)
{
	*body = NULL;
	/* No test may hang on a send the broker never drains. */
	int fd = tb_connect(hostport, 0, 5);
	if (fd < 0) {
		printf("# connect to %s failed: %s\n", hostport, strerror(-fd));
		return -1;
	}
	char req[256];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, hostport);
	size_t len = 0, cap = 1 << 16;
	char *buf = malloc(cap + 1);
	if (buf == NULL || tb_send_all(fd, req, (size_t)n) != 0) {
		close(fd);
		free(buf);
		return -1;
	}
	int64_t deadline = tu_mono_ms() + 5000;
	while (tu_mono_ms() < deadline) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 100) <= 0)
			continue;
		if (len == cap) {
			char *nb = realloc(buf, cap * 2 + 1);
			if (nb == NULL)
				break;
			buf = nb;
			cap *= 2;
		}
		ssize_t k = recv(fd, buf + len, cap - len, 0);
		if (k <= 0)
			break; /* Connection: close ends every response */
		len += (size_t)k;
	}
	close(fd);
	buf[len] = '\0';
	int status = -1;
	char *end = strstr(buf, "\r\n\r\n");
	if (sscanf(buf, "HTTP/1.%*c %d", &status) != 1 || end == NULL) {
		free(buf);
		return -1;
	}
	memmove(buf, end + 4, len - (size_t)(end + 4 - buf) + 1);
	*body = buf;
	return status;
}

int64_t tb_metric(const struct tbroker *b, const char *name)
{
	char *body;
	int st = tb_http_get(b->http, "/metrics", &body);
	int64_t v = -1;
	size_t n = strlen(name);
	for (char *line = st == 200 ? body : NULL; line != NULL && *line != '\0';) {
		if (strncmp(line, name, n) == 0 && line[n] == ' ')
			v = strtoll(line + n + 1, NULL, 10);
		line = strchr(line, '\n');
		if (line != NULL)
			line++;
	}
	free(body);
	return v;
}

int tb_health(const struct tbroker *b)
{
	char *body;
	int st = tb_http_get(b->http, "/health", &body);
	free(body);
	return st;
}

/* ---- client ---- */

int tc_connect(struct tclient *c, const char *hostport)
{
	memset(c, 0, sizeof(c[0]));
	c->fd = tb_connect(hostport, 0, 0);
	if (c->fd < 0) {
		int err = c->fd;
		c->fd = -1;
		return err;
	}
	c->arena_buf = malloc(1u << 20);
	arena_init(&c->arena, c->arena_buf, 1u << 20);
	c->next_corr = 1;
	return 0;
}

void tc_close(struct tclient *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	free(c->in);
	free(c->arena_buf);
	c->in = NULL;
	c->arena_buf = NULL;
}

int tc_send_raw(struct tclient *c, const void *p, size_t len)
{
	const uint8_t *b = p;
	while (len > 0) {
		ssize_t n = send(c->fd, b, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		b += n;
		len -= (size_t)n;
	}
	return 0;
}

int tc_send(struct tclient *c, uint16_t api, const union proto_request *req, uint32_t *corr)
{
	struct pw w;
	pw_init_dyn(&w, 256, FRAME_SIZE_HARD_MAX);
	uint32_t id = c->next_corr++;
	size_t start = proto_req_begin(&w, api, 0, id);
	if (req)
		proto_encode_request(&w, api, req);
	proto_frame_end(&w, start);
	int ret = w.failed ? -ENOMEM : tc_send_raw(c, w.buf, w.len);
	pw_free(&w);
	if (corr)
		*corr = id;
	return ret;
}

static int read_full(int fd, uint8_t *p, size_t len, int64_t deadline)
{
	while (len > 0) {
		int64_t left = deadline - tu_mono_ms();
		if (left <= 0)
			return -ETIMEDOUT;
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int r = poll(&pf, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			continue;
		ssize_t n = recv(fd, p, len, 0);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int tc_recv(struct tclient *c, uint16_t api, int timeout_ms, struct proto_resp_hdr *h,
	    union proto_response *resp)
{
	int64_t deadline = tu_mono_ms() + timeout_ms;
	uint8_t sz[4];
	int ret = read_full(c->fd, sz, 4, deadline);
	if (ret != 0)
		return ret;
	uint32_t size = (uint32_t)sz[0] | (uint32_t)sz[1] << 8 | (uint32_t)sz[2] << 16 |
			(uint32_t)sz[3] << 24;
	if (size > FRAME_SIZE_HARD_MAX)
		return -EBADMSG;
	if (c->in_cap < size + 4) {
		free(c->in);
		c->in_cap = size + 4;
		c->in = malloc(c->in_cap);
	}
	memcpy(c->in, sz, 4);
	ret = read_full(c->fd, c->in + 4, size, deadline);
	if (ret != 0)
		return ret;
	struct pr body;
	if (proto_resp_header(c->in, size + 4, h, &body) != 0)
		return -EBADMSG;
	if (h->err != ERR_NONE || resp == NULL)
		return 0;
	arena_reset(&c->arena);
	return proto_decode_response(api, 0, &body, &c->arena, resp) == 0 ? 0 : -EBADMSG;
}

int tc_call(struct tclient *c, uint16_t api, const union proto_request *req, int timeout_ms,
	    struct proto_resp_hdr *h, union proto_response *resp)
{
	uint32_t corr;
	int ret = tc_send(c, api, req, &corr);
	if (ret != 0)
		return ret;
	ret = tc_recv(c, api, timeout_ms, h, resp);
	if (ret == 0 && h->correlation_id != corr)
		return -EPROTO;
	return ret;
}

int tc_create_topic(struct tclient *c, const char *name, uint32_t partitions,
		    const char *const *kv)
{
	struct proto_kv cfg[32];
	uint32_t n = 0;
	for (; kv && kv[2 * n] && n < 32; n++)
		cfg[n] = (struct proto_kv){ pstr_c(kv[2 * n]), pstr_c(kv[2 * n + 1]) };
	union proto_request req = { .create_topic = { pstr_c(name), partitions, n, cfg } };
	struct proto_resp_hdr h;
	int ret = tc_call(c, API_CREATE_TOPIC, &req, 10000, &h, NULL);
	return ret != 0 ? ret : h.err;
}

int tc_produce(struct tclient *c, const char *topic, uint32_t partition, int8_t acks,
	       const void *batch, uint32_t len, uint64_t *base)
{
	struct proto_produce_part part = { partition, { batch, len } };
	struct proto_produce_topic t = { pstr_c(topic), 1, &part };
	union proto_request req = { .produce = { acks, 10000, 1, &t } };
	if (acks == PROTO_ACKS_NONE)
		return tc_send(c, API_PRODUCE, &req, NULL);
	struct proto_resp_hdr h;
	union proto_response resp;
	int ret = tc_call(c, API_PRODUCE, &req, 15000, &h, &resp);
	if (ret != 0)
		return ret;
	if (h.err != ERR_NONE)
		return h.err;
	const struct proto_produce_resp_part *rp = &resp.produce.topics[0].parts[0];
	if (base)
		*base = rp->base_offset;
	return rp->err;
}

int tc_fetch(struct tclient *c, const char *topic, uint32_t partition, uint64_t offset,
	     uint32_t max_bytes, uint32_t max_wait_ms, uint32_t min_bytes, uint8_t **records,
	     uint32_t *len, uint64_t *log_end)
{
	struct proto_fetch_part part = { partition, offset, max_bytes };
	struct proto_fetch_topic t = { pstr_c(topic), 1, &part };
	union proto_request req = { .fetch = { .max_wait_ms = max_wait_ms, .min_bytes = min_bytes,
					       .max_bytes = max_bytes, .ntopics = 1, .topics = &t } };
	struct proto_resp_hdr h;
	union proto_response resp;
	int ret = tc_call(c, API_FETCH, &req, (int)max_wait_ms + 10000, &h, &resp);
	if (ret != 0)
		return ret;
	if (h.err != ERR_NONE)
		return h.err;
	const struct proto_fetch_resp_part *rp = &resp.fetch.topics[0].parts[0];
	if (log_end)
		*log_end = rp->log_end;
	if (records) {
		*records = NULL;
		*len = 0;
	}
	if (records && rp->err == ERR_NONE) {
		*records = malloc(rp->records.len + 1);
		memcpy(*records, rp->records.p, rp->records.len);
		*len = rp->records.len;
	}
	return rp->err;
}
