/* mqcat.c — ringmq at a terminal: stdin lines become messages, or a topic goes to stdout. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/ringmq.h"

/*
 * A thin program over libringmq. Before producing or consuming it describes
 * the topic once through the admin API: that makes an unreachable broker or
 * an unknown topic fail at once with a clear line (the producer would wait
 * max.block.ms for metadata), gives the partition count for "every
 * partition", and gives each partition's log end for -e.
 *
 * Producing reads stdin in large blocks and hands each line to
 * ringmq_produce(), which only copies it into a batch: the library's I/O
 * thread batches, pipelines and retries, so there is no system call per
 * message. Failures are counted in the delivery callback and reported once
 * at the end.
 */

#define EXIT_FAIL 1
#define EXIT_USAGE 2

#define DEFAULT_BROKER "127.0.0.1:9400"
/* Bounds that make a broker that is down or stuck fail the tool in
 * reasonable time (the library's defaults suit services, not a terminal).
 * -X overrides each. */
#define REQUEST_TIMEOUT_MS 10000
#define DELIVERY_TIMEOUT_MS 30000
#define MAX_BLOCK_MS 30000
/* Larger batches than the library's default: mqcat is mostly used to move
 * many small lines, and the topic default max.message.bytes is 1 MiB. */
#define PRODUCE_BATCH_SIZE "262144"

#define READ_CHUNK (1u << 20)
/* A line longer than this cannot be a message (batches are at most 16 MiB);
 * stop instead of buffering an endless line. */
#define LINE_MAX_BYTES (64u << 20)
#define POLL_MAX 4096
#define POLL_TIMEOUT_MS 200

static const char usage_text[] =
	"Usage: mqcat [-b HOST:PORT] -P -t TOPIC [-p PARTITION] [-K DELIM]\n"
	"             [--acks 0|1|all] [-X KEY=VALUE]...\n"
	"       mqcat [-b HOST:PORT] -C -t TOPIC [-p PARTITION | -G GROUP] [-o OFFSET] [-e]\n"
	"             [-c COUNT] [-f FORMAT] [-K DELIM] [-X KEY=VALUE]...\n"
	"\n"
	"Produce (-P): every line of stdin becomes one message (without its newline;\n"
	"a last line without a newline counts too). Messages with a key go to the\n"
	"partition of the key's hash, others to any partition, unless -p is given.\n"
	"Exits once every message is acknowledged (with --acks 0: sent); non-zero\n"
	"if any was not.\n"
	"\n"
	"Consume (-C): prints the messages of every partition of TOPIC (or of one\n"
	"with -p) to stdout, in order within each partition, until interrupted.\n"
	"\n"
	"Options:\n"
	"  -b HOST:PORT[,...]  the broker (default: $RINGMQ_BROKERS, else 127.0.0.1:9400)\n"
	"  -t TOPIC            the topic (required)\n"
	"  -p PARTITION        only this partition\n"
	"  -G GROUP            -C: consume as a member of consumer group GROUP: the\n"
	"                      group shares the partitions among its members and\n"
	"                      remembers what was read (committed as it goes and on\n"
	"                      exit); -o beginning|end says where a new group starts\n"
	"                      (default beginning); with -e, exit once every partition\n"
	"                      it holds is read to its end\n"
	"  -K DELIM            -P: the part of a line before the first DELIM is the key,\n"
	"                      the rest the value; lines without DELIM have no key.\n"
	"                      -C (without -f): print KEY DELIM VALUE, or VALUE alone\n"
	"                      for a message without a key, so -C -K prints what -P -K\n"
	"                      read (an empty key counts as no key)\n"
	"  --acks 0|1|all      -P: what the broker confirms before a message counts as\n"
	"                      delivered (default all; docs/operations.md, Durability)\n"
	"  -o OFFSET           -C: where to start in each partition: beginning (default),\n"
	"                      end (only new messages), N (offset N), -N (N before the\n"
	"                      end), s@MS (first message at or after MS ms since 1970)\n"
	"  -e                  -C: exit once every partition is read to its end\n"
	"  -c COUNT            -C: exit after COUNT messages\n"
	"  -f FORMAT           -C: print each message as FORMAT (default \"%s\\n\"):\n"
	"                        %t topic  %p partition  %o offset  %T timestamp (ms)\n"
	"                        %k key  %s value  %K key length (-1: none)\n"
	"                        %S value length  %h headers (name=value,...)  %% a %\n"
	"                        \\n newline  \\t tab  \\r return  \\0 NUL  \\\\ backslash\n"
	"  -X KEY=VALUE        set any libringmq setting (the keys in client/ringmq.h),\n"
	"                      e.g. -X linger.ms=20 -X compression=lz4; may be repeated\n"
	"  -h, --help          print this text\n"
	"\n"
	"mqcat sets request.timeout.ms=10000, delivery.timeout.ms=30000 and\n"
	"max.block.ms=30000, so a broker that is down makes it fail in bounded time.\n"
	"\n"
	"Exit status: 0 success (-C: also when interrupted); 1 the broker could not be\n"
	"reached, the topic or partition does not exist, a message was not delivered,\n"
	"or a read failed; 2 usage error. Errors are one line on stderr.\n";

static struct {
	const char *servers;  /* for messages */
	const char *topic;
	int32_t partition;    /* -1: every partition */
	const char *key_delim;
	size_t key_delim_len;
	int request_timeout_ms;
	int delivery_timeout_ms;
} g = {
	.servers = DEFAULT_BROKER,
	.partition = -1,
	.request_timeout_ms = REQUEST_TIMEOUT_MS,
	.delivery_timeout_ms = DELIVERY_TIMEOUT_MS,
};

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mqcat: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs(" (see mqcat --help)\n", stderr);
	va_end(ap);
	exit(EXIT_USAGE);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mqcat: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	fflush(stdout);
	exit(EXIT_FAIL);
}

/* Why a library call failed, as a phrase. The library's reason for an
 * unreachable broker starts "cannot connect to HOST:PORT: ..."; it is
 * reworded to say plainly that the broker is what cannot be reached. */
static const char *call_error(int err, const char *errstr, char *buf, size_t cap)
{
	static const char connect_prefix[] = "cannot connect to ";
	const char *why = errstr && errstr[0] ? errstr : ringmq_strerror(err);
	if (err != RINGMQ_ERR_TRANSPORT && err != RINGMQ_ERR_TIMEOUT)
		return why;
	if (strncmp(why, connect_prefix, sizeof(connect_prefix) - 1) == 0)
		snprintf(buf, cap, "cannot reach the broker at %s", why + sizeof(connect_prefix) - 1);
	else if (err == RINGMQ_ERR_TIMEOUT)
		snprintf(buf, cap, "the broker at %s did not answer in time: %s", g.servers, why);
	else
		snprintf(buf, cap, "lost the connection to the broker at %s: %s", g.servers, why);
	return buf;
}

static void fail_call(int err, const char *errstr) __attribute__((noreturn));

static void fail_call(int err, const char *errstr)
{
	char buf[768];
	fail("%s", call_error(err, errstr, buf, sizeof(buf)));
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Parses a whole decimal number in [lo, hi]. */
static bool parse_num(const char *s, long long lo, long long hi, long long *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (s[0] == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

/* ---- produce ---- */

static struct {
	atomic_ulong failed;
	atomic_int first_err;
	atomic_int first_partition;
	char first_why[256]; /* the first failure's reason; written once, read after flush */
} deliveries;

/* Runs on the producer's I/O thread: only counts. */
static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	(void)opaque;
	if (d->err == 0)
		return;
	if (atomic_fetch_add_explicit(&deliveries.failed, 1, memory_order_relaxed) == 0) {
		atomic_store_explicit(&deliveries.first_err, d->err, memory_order_relaxed);
		atomic_store_explicit(&deliveries.first_partition, d->partition,
				      memory_order_relaxed);
		snprintf(deliveries.first_why, sizeof(deliveries.first_why), "%s",
			 d->errstr ? d->errstr : ringmq_strerror(d->err));
	}
}

struct pstate {
	struct ringmq_producer *p;
	unsigned long lines;     /* handed to ringmq_produce */
	unsigned long rejected;  /* refused by ringmq_produce (too large) */
	unsigned long first_rejected_line;
	size_t first_rejected_len;
	int fatal;               /* an error that stops producing */
};

static void produce_line(struct pstate *ps, const char *line, size_t len)
{
	const char *key = NULL, *value = line;
	size_t key_len = 0, value_len = len;
	if (g.key_delim != NULL) {
		const char *d = memmem(line, len, g.key_delim, g.key_delim_len);
		if (d != NULL) {
			key = line;
			key_len = (size_t)(d - line);
			value = d + g.key_delim_len;
			value_len = len - key_len - g.key_delim_len;
		}
	}
	ps->lines++;
	int ret = ringmq_produce(ps->p, g.topic, g.partition, key, key_len, value, value_len,
				 NULL, 0, 0, NULL);
	if (ret == RINGMQ_ERR_MSG_TOO_LARGE) {
		if (ps->rejected++ == 0) {
			ps->first_rejected_line = ps->lines;
			ps->first_rejected_len = len;
		}
	} else if (ret != 0) {
		ps->fatal = ret;
	}
}

static int run_produce(struct ringmq_config *cfg)
{
	char err[512];
	ringmq_config_set_delivery_cb(cfg, on_delivery, NULL);
	struct pstate ps = { 0 };
	ps.p = ringmq_producer_new(cfg, err, sizeof(err));
	if (ps.p == NULL)
		fail("%s", err);

	size_t cap = 4 * READ_CHUNK, len = 0, scanned = 0;
	char *buf = malloc(cap);
	if (buf == NULL)
		fail("out of memory");
	bool eof = false;
	while (!eof && ps.fatal == 0) {
		if (cap - len < READ_CHUNK / 4) {
			if (cap >= LINE_MAX_BYTES) {
				ps.fatal = -1;
				break;
			}
			cap *= 2;
			char *nb = realloc(buf, cap);
			if (nb == NULL)
				fail("out of memory");
			buf = nb;
		}
		ssize_t n = read(STDIN_FILENO, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail("cannot read stdin: %s", strerror(errno));
		if (n == 0)
			eof = true;
		len += (size_t)n;
		/* Every whole line in the buffer; the partial one moves to the
		 * front (scanned remembers how much of it has no newline). */
		char *start = buf, *end = buf + len, *nl;
		char *from = buf + scanned;
		while (ps.fatal == 0 && (nl = memchr(from, '\n', (size_t)(end - from))) != NULL) {
			produce_line(&ps, start, (size_t)(nl - start));
			start = from = nl + 1;
		}
		if (eof && start < end && ps.fatal == 0) {
			produce_line(&ps, start, (size_t)(end - start));
			start = end;
		}
		len = (size_t)(end - start);
		if (start != buf && len > 0)
			memmove(buf, start, len);
		scanned = len;
	}
	free(buf);

	/* Deliver what was queued, even after a fatal error, so what
	 * reached the library is not lost for nothing. The library bounds each
	 * message by delivery.timeout.ms. */
	ringmq_producer_flush(ps.p, g.delivery_timeout_ms + 10000);
	ringmq_producer_free(ps.p);

	unsigned long failed = atomic_load(&deliveries.failed);
	if (ps.fatal == -1)
		fail("line %lu is longer than %u MiB; stopped there", ps.lines + 1,
		     LINE_MAX_BYTES >> 20);
	if (ps.fatal != 0) {
		char b[768];
		fail("cannot produce to '%s' (line %lu): %s", g.topic, ps.lines,
		     call_error(ps.fatal, NULL, b, sizeof(b)));
	}
	if (ps.rejected > 0)
		fail("%lu of %lu messages were too large to send, the first on line %lu "
		     "(%zu bytes; see the topic's max.message.bytes and -X message.max.bytes)",
		     ps.rejected, ps.lines, ps.first_rejected_line, ps.first_rejected_len);
	if (failed > 0) {
		int e = atomic_load(&deliveries.first_err);
		fail("%lu of %lu messages were not delivered; the first to %s[%d]: %s%s", failed,
		     ps.lines, g.topic, atomic_load(&deliveries.first_partition),
		     deliveries.first_why,
		     e == RINGMQ_ERR_TIMEOUT ? " (delivery.timeout.ms)" : "");
	}
	return 0;
}

/* ---- consume ---- */

enum fop { F_LIT, F_TOPIC, F_PART, F_OFFSET, F_TS, F_KEY, F_VALUE, F_KEYLEN, F_VALUELEN,
	   F_HEADERS, F_KEYDELIM };

struct fseg {
	enum fop op;
	const char *lit;  /* F_LIT, F_KEYDELIM */
	size_t len;
};

static struct fseg fsegs[256];
static size_t nfsegs;
static char *fmt_text; /* the unescaped literals the segments point into */

static void fseg_add(enum fop op, const char *lit, size_t len)
{
	if (nfsegs == sizeof(fsegs) / sizeof(fsegs[0]))
		usage_error("-f: the format is too long");
	fsegs[nfsegs++] = (struct fseg){ op, lit, len };
}

/* Turns a kcat-style format into segments; literal text is unescaped into
 * its own buffer. */
static void compile_format(const char *f)
{
	char *lit = fmt_text = malloc(strlen(f) + 1);
	if (lit == NULL)
		fail("out of memory");
	size_t n = 0, start = 0;
	for (const char *p = f; *p; p++) {
		if (*p == '\\' && p[1] != '\0') {
			static const char from[] = "ntr0\\", to[] = "\n\t\r\0\\";
			const char *k = strchr(from, p[1]);
			if (k != NULL) {
				lit[n++] = to[k - from];
				p++;
				continue;
			}
		}
		if (*p != '%') {
			lit[n++] = *p;
			continue;
		}
		p++;
		if (*p == '%') {
			lit[n++] = '%';
			continue;
		}
		static const char specs[] = "tpoTksKSh";
		static const enum fop ops[] = { F_TOPIC, F_PART, F_OFFSET, F_TS, F_KEY,
						F_VALUE, F_KEYLEN, F_VALUELEN, F_HEADERS };
		const char *k = *p ? strchr(specs, *p) : NULL;
		if (k == NULL)
			usage_error("-f: unknown format '%%%.1s' (known: %%t %%p %%o %%T %%k %%s %%K "
				    "%%S %%h %%%%)", p);
		if (n > start)
			fseg_add(F_LIT, lit + start, n - start);
		fseg_add(ops[k - specs], NULL, 0);
		start = n;
	}
	if (n > start)
		fseg_add(F_LIT, lit + start, n - start);
}

static void print_message(const struct ringmq_message *m)
{
	for (size_t i = 0; i < nfsegs; i++) {
		const struct fseg *s = &fsegs[i];
		switch (s->op) {
		case F_LIT:
			fwrite(s->lit, 1, s->len, stdout);
			break;
		case F_TOPIC:
			fputs(m->topic, stdout);
			break;
		case F_PART:
			printf("%" PRId32, m->partition);
			break;
		case F_OFFSET:
			printf("%" PRId64, m->offset);
			break;
		case F_TS:
			printf("%" PRId64, m->timestamp_ms);
			break;
		case F_KEY:
			if (m->key_len > 0)
				fwrite(m->key, 1, m->key_len, stdout);
			break;
		case F_VALUE:
			if (m->value_len > 0)
				fwrite(m->value, 1, m->value_len, stdout);
			break;
		case F_KEYLEN:
			printf("%lld", m->key ? (long long)m->key_len : -1LL);
			break;
		case F_VALUELEN:
			printf("%zu", m->value_len);
			break;
		case F_HEADERS:
			for (size_t h = 0; h < m->header_count; h++) {
				const char *name;
				const void *value;
				size_t nl, vl;
				if (ringmq_message_header(m, h, &name, &nl, &value, &vl) != 0)
					break;
				if (h > 0)
					putchar(',');
				fwrite(name, 1, nl, stdout);
				putchar('=');
				fwrite(value, 1, vl, stdout);
			}
			break;
		case F_KEYDELIM:
			if (m->key != NULL) {
				fwrite(m->key, 1, m->key_len, stdout);
				fwrite(s->lit, 1, s->len, stdout);
			}
			break;
		}
	}
}

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
	stop_signal = sig;
}

/* Where each assigned partition starts, and for -e where its log ends. */
struct cpart {
	int32_t partition;
	int64_t next;      /* after the last message printed */
	int64_t end_hint;  /* the log end described at start */
	bool done;
};

static struct ringmq_message msgs[POLL_MAX];

/* One poll into msgs, of at most what -c still allows. Returns false while
 * the broker cannot be reached: the library reconnects by itself, and mqcat
 * gives up only once it has stayed away for request.timeout.ms (tracked in
 * *failing_since, -1 while answered). Any other error ends mqcat. */
static bool poll_batch(struct ringmq_consumer *c, long long count, long long printed,
		       int64_t *failing_since, size_t *n)
{
	char err[512];
	size_t max = count >= 0 && count - printed < POLL_MAX ? (size_t)(count - printed)
							       : POLL_MAX;
	int ret = ringmq_consumer_poll(c, POLL_TIMEOUT_MS, msgs, max, n, err, sizeof(err));
	if (ret == RINGMQ_ERR_TRANSPORT || ret == RINGMQ_ERR_TIMEOUT) {
		int64_t now = mono_ms();
		if (*failing_since < 0)
			*failing_since = now;
		if (now - *failing_since >= g.request_timeout_ms)
			fail_call(ret, err);
		return false;
	}
	if (ret != 0)
		fail("%s", err[0] ? err : ringmq_strerror(ret));
	*failing_since = -1;
	return true;
}


static int run_consume(struct ringmq_config *cfg, const struct ringmq_topic_info *ti,
		       const char *offset, bool exit_at_end, long long count)
{
	char err[512];
	enum { O_SPEC, O_FROM_END, O_TIME } kind = O_SPEC;
	long long num = 0;
	int64_t spec = RINGMQ_OFFSET_BEGINNING;
	if (strcmp(offset, "beginning") == 0) {
		spec = RINGMQ_OFFSET_BEGINNING;
	} else if (strcmp(offset, "end") == 0) {
		spec = RINGMQ_OFFSET_END;
	} else if (offset[0] == '-' && parse_num(offset + 1, 0, INT64_MAX, &num)) {
		kind = O_FROM_END;
	} else if (strncmp(offset, "s@", 2) == 0 && parse_num(offset + 2, 0, INT64_MAX, &num)) {
		kind = O_TIME;
	} else if (parse_num(offset, 0, INT64_MAX, &num)) {
		spec = num;
	} else {
		usage_error("-o takes beginning, end, N, -N or s@MS, not '%s'", offset);
	}

	uint32_t first = g.partition >= 0 ? (uint32_t)g.partition : 0;
	uint32_t nparts = g.partition >= 0 ? 1 : ti->partitions;
	struct cpart *parts = calloc(nparts ? nparts : 1, sizeof(*parts));
	struct ringmq_topic_partition *tps = calloc(nparts ? nparts : 1, sizeof(*tps));
	if (parts == NULL || tps == NULL)
		fail("out of memory");
	for (uint32_t i = 0; i < nparts; i++) {
		const struct ringmq_partition_info *pi = &ti->parts[first + i];
		parts[i].partition = (int32_t)(first + i);
		parts[i].end_hint = pi->log_end;
		int64_t off = spec;
		if (kind == O_FROM_END)
			off = pi->log_end - num > pi->log_start ? pi->log_end - num : pi->log_start;
		else if (kind == O_TIME)
			off = RINGMQ_OFFSET_BEGINNING;
		tps[i] = (struct ringmq_topic_partition){ g.topic, parts[i].partition, off };
	}

	struct ringmq_consumer *c = ringmq_consumer_new(cfg, err, sizeof(err));
	if (c == NULL)
		fail("%s", err);
	int ret = ringmq_consumer_assign(c, tps, nparts, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	for (uint32_t i = 0; i < nparts; i++) {
		if (kind == O_TIME) {
			ret = ringmq_consumer_seek_time(c, g.topic, parts[i].partition, num, err,
							sizeof(err));
			if (ret != 0)
				fail_call(ret, err);
		}
		/* Before any poll this is where the partition starts. Later
		 * positions are not used: the library advances them when it
		 * buffers a fetch, before poll has returned those messages. */
		ringmq_consumer_position(c, g.topic, parts[i].partition, &parts[i].next, NULL);
	}

	/* Stop cleanly on SIGINT/SIGTERM, unless the caller chose to ignore
	 * them (a background job of a script ignores SIGINT). */
	struct sigaction sa = { .sa_handler = on_signal }, old;
	sigemptyset(&sa.sa_mask);
	int sigs[] = { SIGINT, SIGTERM };
	for (size_t i = 0; i < 2; i++)
		if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
			sigaction(sigs[i], &sa, NULL);
	/* Whole buffers, written after each poll: one write per batch of
	 * messages rather than per line, yet nothing waits in the buffer while
	 * the consumer idles. */
	setvbuf(stdout, NULL, _IOFBF, 1u << 20);

	long long printed = 0;
	int64_t failing_since = -1;
	while (!stop_signal && (count < 0 || printed < count)) {
		if (exit_at_end) {
			bool all = true;
			for (uint32_t i = 0; i < nparts; i++) {
				struct cpart *cp = &parts[i];
				int64_t log_end = -1;
				if (!cp->done) {
					ringmq_consumer_position(c, g.topic, cp->partition, NULL,
								 &log_end);
					cp->done = cp->next >= (log_end >= 0 ? log_end : cp->end_hint);
				}
				all &= cp->done;
			}
			if (all)
				break;
		}
		size_t n = 0;
		if (!poll_batch(c, count, printed, &failing_since, &n))
			continue;
		for (size_t i = 0; i < n; i++) {
			print_message(&msgs[i]);
			uint32_t k = (uint32_t)msgs[i].partition - first;
			if (k < nparts && msgs[i].offset >= parts[k].next)
				parts[k].next = msgs[i].offset + 1;
		}
		printed += (long long)n;
		if (n > 0 && fflush(stdout) != 0)
			fail("cannot write to stdout: %s", strerror(errno));
	}
	if (fflush(stdout) != 0)
		fail("cannot write to stdout: %s", strerror(errno));
	ringmq_consumer_free(c);
	free(parts);
	free(tps);
	return 0;
}

/* A group member: the group assigns partitions, and commits record what was
 * printed. With -e it stops once every partition it holds is read to its end
 * (or it held none for a few seconds: other members have them all). */
static int run_consume_group(struct ringmq_config *cfg, const char *group, const char *offset,
			     bool exit_at_end, long long count)
{
	char err[512];
	if (g.partition >= 0)
		usage_error("-p and -G do not go together: the group assigns partitions");
	if (offset != NULL && strcmp(offset, "beginning") != 0 && strcmp(offset, "end") != 0)
		usage_error("with -G, -o takes beginning or end (where a new group starts)");
	if (ringmq_config_set(cfg, "auto.offset.reset",
			      offset && strcmp(offset, "end") == 0 ? "latest" : "earliest", err,
			      sizeof(err)) != 0)
		fail("%s", err);
	struct ringmq_consumer *c = ringmq_consumer_new(cfg, err, sizeof(err));
	if (c == NULL)
		fail("%s", err);
	const char *topics[] = { g.topic };
	int ret = ringmq_consumer_subscribe(c, group, topics, 1, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	struct sigaction sa = { .sa_handler = on_signal }, old;
	sigemptyset(&sa.sa_mask);
	int sigs[] = { SIGINT, SIGTERM };
	for (size_t i = 0; i < 2; i++)
		if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler != SIG_IGN)
			sigaction(sigs[i], &sa, NULL);
	setvbuf(stdout, NULL, _IOFBF, 1u << 20);
	long long printed = 0;
	int64_t failing_since = -1, unassigned_since = mono_ms();
	while (!stop_signal && (count < 0 || printed < count)) {
		size_t n = 0;
		if (!poll_batch(c, count, printed, &failing_since, &n))
			continue;
		for (size_t i = 0; i < n; i++)
			print_message(&msgs[i]);
		printed += (long long)n;
		if (n > 0 && fflush(stdout) != 0)
			fail("cannot write to stdout: %s", strerror(errno));
		if (!exit_at_end || n > 0)
			continue;
		struct ringmq_topic_partition *tps;
		size_t np;
		if (ringmq_consumer_assignment(c, &tps, &np) != 0)
			fail("out of memory");
		bool all = np > 0;
		for (size_t i = 0; all && i < np; i++) {
			int64_t next = -1, log_end = -1;
			ringmq_consumer_position(c, tps[i].topic, tps[i].partition, &next, &log_end);
			all = log_end >= 0 && next >= log_end;
		}
		free(tps);
		if (np > 0)
			unassigned_since = mono_ms();
		if (all || (np == 0 && mono_ms() - unassigned_since > 5000))
			break;
	}
	if (fflush(stdout) != 0)
		fail("cannot write to stdout: %s", strerror(errno));
	/* Commit what was printed and leave, so the partitions move at once. */
	ret = ringmq_consumer_close(c, err, sizeof(err));
	ringmq_consumer_free(c);
	if (ret != 0)
		fail("commit on exit failed: %s", err[0] ? err : ringmq_strerror(ret));
	return 0;
}

/* ---- the command line ---- */

struct xset {
	const char *key, *value;
};

/* The -X settings (global: they live until exit, whichever way it comes). */
static struct xset *xs;
static size_t nxs;

int main(int argc, char **argv)
{
	enum { LONG_ACKS = 256 };
	static const struct option longopts[] = {
		{ "acks", required_argument, NULL, LONG_ACKS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char mode = 0;
	const char *brokers = NULL, *acks = NULL, *offset = NULL, *format = NULL;
	bool exit_at_end = false;
	long long count = -1, num;
	const char *consume_only = NULL;
	const char *group = NULL;
	xs = calloc((size_t)argc, sizeof(*xs));
	if (xs == NULL)
		fail("out of memory");

	opterr = 0;
	int opt;
	while ((opt = getopt_long(argc, argv, ":b:PCt:p:K:o:ec:f:X:G:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'b':
			brokers = optarg;
			break;
		case 'P':
		case 'C':
			if (mode != 0 && mode != opt)
				usage_error("give either -P or -C, not both");
			mode = (char)opt;
			break;
		case 't':
			g.topic = optarg;
			break;
		case 'p':
			if (!parse_num(optarg, 0, INT32_MAX, &num))
				usage_error("-p takes a partition number, not '%s'", optarg);
			g.partition = (int32_t)num;
			break;
		case 'K':
			if (optarg[0] == '\0')
				usage_error("-K needs a non-empty delimiter");
			g.key_delim = optarg;
			g.key_delim_len = strlen(optarg);
			break;
		case LONG_ACKS:
			acks = optarg;
			break;
		case 'o':
			offset = optarg;
			consume_only = "-o";
			break;
		case 'e':
			exit_at_end = true;
			consume_only = "-e";
			break;
		case 'c':
			if (!parse_num(optarg, 1, INT64_MAX, &count))
				usage_error("-c takes a count of at least 1, not '%s'", optarg);
			consume_only = "-c";
			break;
		case 'f':
			format = optarg;
			consume_only = "-f";
			break;
		case 'X': {
			const char *eq = strchr(optarg, '=');
			if (eq == NULL || eq == optarg)
				usage_error("-X takes KEY=VALUE, not '%s'", optarg);
			char *key = strndup(optarg, (size_t)(eq - optarg));
			if (key == NULL)
				fail("out of memory");
			xs[nxs++] = (struct xset){ key, eq + 1 };
			break;
		}
		case 'G':
			group = optarg;
			consume_only = "-G";
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case ':':
			usage_error("%s needs a value", argv[optind - 1]);
		default:
			if (optopt != 0)
				usage_error("unknown option '-%c'", optopt);
			usage_error("unknown option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("unexpected argument '%s'", argv[optind]);
	if (mode == 0)
		usage_error("give -P to produce or -C to consume");
	if (g.topic == NULL)
		usage_error("-t TOPIC is required");
	if (mode == 'P' && consume_only != NULL)
		usage_error("%s applies only to -C (consume)", consume_only);
	if (mode == 'C' && acks != NULL)
		usage_error("--acks applies only to -P (produce)");

	/* Settings: the tool's bounds first, then -X in order, then the
	 * dedicated flags, which say the most specific thing. */
	/* Static, like xs: still reachable when fail() exits, so LeakSanitizer
	 * does not report what the exit releases anyway. */
	static struct ringmq_config *cfg;
	cfg = ringmq_config_new();
	if (cfg == NULL)
		fail("out of memory");
	char err[512], v[32];
	struct xset base[] = {
		{ "client.id", "mqcat" },
		{ "request.timeout.ms", NULL },
		{ "delivery.timeout.ms", NULL },
		{ "max.block.ms", NULL },
		{ "batch.size", PRODUCE_BATCH_SIZE },
	};
	for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++) {
		int x = i == 1 ? REQUEST_TIMEOUT_MS : i == 2 ? DELIVERY_TIMEOUT_MS : MAX_BLOCK_MS;
		snprintf(v, sizeof(v), "%d", x);
		if (ringmq_config_set(cfg, base[i].key, base[i].value ? base[i].value : v, err,
				      sizeof(err)) != 0)
			fail("%s", err);
	}
	for (size_t i = 0; i < nxs; i++) {
		if (ringmq_config_set(cfg, xs[i].key, xs[i].value, err, sizeof(err)) != 0)
			usage_error("-X %s: %s", xs[i].key, err);
		/* The tool's own waits follow these two. */
		if (strcmp(xs[i].key, "request.timeout.ms") == 0)
			g.request_timeout_ms = atoi(xs[i].value);
		else if (strcmp(xs[i].key, "delivery.timeout.ms") == 0)
			g.delivery_timeout_ms = atoi(xs[i].value);
	}
	if (acks != NULL && ringmq_config_set(cfg, "acks", acks, err, sizeof(err)) != 0)
		usage_error("--acks: %s", err);
	const char *from = "-b";
	if (brokers == NULL) {
		/* The library falls back to the default on a bad
		 * $RINGMQ_BROKERS; a tool should say so instead. */
		const char *env = getenv("RINGMQ_BROKERS");
		if (env != NULL && env[0] != '\0') {
			brokers = env;
			from = "RINGMQ_BROKERS";
		}
	}
	if (brokers != NULL) {
		if (ringmq_config_set(cfg, "bootstrap.servers", brokers, err, sizeof(err)) != 0)
			usage_error("%s: %s", from, err);
		g.servers = brokers;
	}
	if (mode == 'C')
		compile_format(format ? format : g.key_delim ? "" : "%s\\n");
	if (mode == 'C' && format == NULL && g.key_delim != NULL) {
		fseg_add(F_KEYDELIM, g.key_delim, g.key_delim_len);
		fseg_add(F_VALUE, NULL, 0);
		fseg_add(F_LIT, "\n", 1);
	}

	/* The broker and the topic, checked once (see the top of the file). */
	struct ringmq_admin *a = ringmq_admin_new(cfg, err, sizeof(err));
	if (a == NULL)
		fail("%s", err);
	static struct ringmq_topic_info *ti; /* static: as cfg */
	int ret = ringmq_topic_describe(a, g.topic, &ti, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	ringmq_admin_free(a);
	if (g.partition >= 0 && (uint32_t)g.partition >= ti->partitions)
		fail("topic '%s' has no partition %" PRId32 " (it has %" PRIu32 ")", g.topic,
		     g.partition, ti->partitions);

	if (mode == 'P')
		ret = run_produce(cfg);
	else if (group != NULL)
		ret = run_consume_group(cfg, group, offset, exit_at_end, count);
	else
		ret = run_consume(cfg, ti, offset ? offset : "beginning", exit_at_end, count);
	ringmq_topics_free(ti, 1);
	ringmq_config_free(cfg);
	for (size_t i = 0; i < nxs; i++)
		free((char *)xs[i].key);
	free(xs);
	free(fmt_text);
	return ret;
}
