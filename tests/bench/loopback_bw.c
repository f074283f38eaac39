/* loopback_bw.c — the raw limit a broker's network path is compared with:
 * the bandwidth of one TCP connection over 127.0.0.1, large writes on one
 * thread, large reads on another, nothing else.
 *
 * Usage: loopback_bw [--seconds S] [--chunk BYTES]
 * Prints "loopback_bw: N MB/s (...)" with MB = 10^6 bytes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

struct side {
	int fd;
	size_t chunk;
	double seconds;
	uint64_t bytes;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "loopback_bw: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Writes until the time is up, then closes: the reader sees the end. */
static void *writer(void *arg)
{
	struct side *w = arg;
	char *buf = malloc(w->chunk);
	if (buf == NULL)
		die("malloc");
	/* Not zeros: nothing on the path may treat the data specially. */
	for (size_t i = 0; i < w->chunk; i++)
		buf[i] = (char)(i * 131 + 7);
	double end = now_s() + w->seconds;
	while (now_s() < end) {
		size_t off = 0;
		while (off < w->chunk) {
			ssize_t n = send(w->fd, buf + off, w->chunk - off, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				die("send");
			}
			off += (size_t)n;
			w->bytes += (uint64_t)n;
		}
	}
	shutdown(w->fd, SHUT_WR);
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "seconds", required_argument, NULL, 's' },
		{ "chunk", required_argument, NULL, 'c' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	double seconds = 2;
	size_t chunk = 1u << 20;
	int c;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (c) {
		case 's':
			seconds = atof(optarg);
			break;
		case 'c':
			chunk = (size_t)strtoull(optarg, NULL, 10);
			break;
		case 'h':
			puts("usage: loopback_bw [--seconds S (default 2)] [--chunk BYTES "
			     "(default 1048576)]");
			return 0;
		default:
			return 2;
		}
	}
	if (!(seconds > 0 && seconds <= 600) || chunk < 1 || chunk > (256u << 20)) {
		fprintf(stderr, "loopback_bw: --seconds must be in (0, 600], --chunk in "
			"1..256M\n");
		return 2;
	}

	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(ls, 1) != 0 ||
	    getsockname(ls, (struct sockaddr *)&a, &al) != 0)
		die("listen on 127.0.0.1");
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&a, sizeof(a)) != 0)
		die("connect");
	int sfd = accept(ls, NULL, NULL);
	if (sfd < 0)
		die("accept");
	close(ls);

	struct side w = { .fd = cfd, .chunk = chunk, .seconds = seconds };
	char *buf = malloc(chunk);
	if (buf == NULL)
		die("malloc");
	struct rusage r0, r1;
	getrusage(RUSAGE_SELF, &r0);
	double t0 = now_s();
	pthread_t th;
	if (pthread_create(&th, NULL, writer, &w) != 0)
		die("pthread_create");
	uint64_t got = 0;
	for (;;) {
		ssize_t n = recv(sfd, buf, chunk, 0);
		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("recv");
		}
		got += (uint64_t)n;
	}
	double t = now_s() - t0;
	pthread_join(th, NULL);
	getrusage(RUSAGE_SELF, &r1);
	double cpu = (double)(r1.ru_utime.tv_sec - r0.ru_utime.tv_sec + r1.ru_stime.tv_sec -
			      r0.ru_stime.tv_sec) +
		     (double)(r1.ru_utime.tv_usec - r0.ru_utime.tv_usec + r1.ru_stime.tv_usec -
			      r0.ru_stime.tv_usec) / 1e6;
	printf("loopback_bw: %.0f MB/s (%llu bytes in %.3f s, one connection, %zu-byte writes, "
	       "%.2f CPU-seconds)\n", (double)got / t / 1e6, (unsigned long long)got, t, chunk,
	       cpu);
	free(buf);
	close(sfd);
	close(cfd);
	return got == w.bytes ? 0 : 1;
}
