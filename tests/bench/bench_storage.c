/* bench_storage.c — measures the disk and the partition log on it in one run:
 * raw write bandwidth and fdatasync rates, log appends under each flush
 * policy (group commit with 1..64 appenders), and log_open after an unclean
 * exit. Cases run in rounds (each case once per round, the cases with a
 * target between two raw writes); every figure is the median over rounds,
 * with min and max.
 *
 * Usage: bench_storage [--dir BASE] [--bytes SIZE] [--seconds S] [--runs N]
 *                      [--only LIST] [--md FILE] [-v]   (--help for all)
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/ioq.h"
#include "common/say.h"
#include "storage/batch.h"
#include "storage/log.h"

#define MIB ((uint64_t)1 << 20)
#define RUNS_MAX 15
#define APPENDER_COUNTS_MAX 8
#define VALUE_SIZES_MAX 4
#define SYNC_SIZES_MAX 4
/* Producers send batches of about this size; 16 KiB is the usual client
 * linger batch, so it is what the log sees per append in practice. */
#define BATCH_TARGET (16u << 10)

struct opts {
	const char *base;          /* the data dir is made inside it */
	uint64_t bytes;            /* (a) raw write and (c) flush never */
	double seconds;            /* per flush-always case */
	double sync_seconds;       /* per raw fdatasync case */
	uint64_t sync_file_bytes;  /* file size for the raw fdatasync cases */
	unsigned sync_io[SYNC_SIZES_MAX]; /* write sizes for them */
	unsigned n_sync_io;
	uint64_t recovery_bytes;   /* (d) the large log; the small one is a tenth */
	uint64_t segment_bytes;
	uint64_t staging_bytes;
	uint32_t writes_in_flight; /* 0: the log's default */
	unsigned runs;
	unsigned appenders[APPENDER_COUNTS_MAX];
	unsigned n_appenders;
	uint32_t values[VALUE_SIZES_MAX];
	unsigned n_values;
	const char *only;          /* comma list: raw,sync,never,always,recovery */
	const char *md_path;
	bool verbose;
};

static char data_dir[PATH_MAX];
static pid_t main_pid;

static void die(const char *what, int err)
{
	fprintf(stderr, "bench_storage: %s: %s\n", what, strerror(err < 0 ? -err : err));
	if (getpid() != main_pid)
		_exit(1); /* a forked writer must not run the parent's clean-up */
	exit(1);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Incompressible bytes, so no layer below can shrink what we write. */
static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
	for (size_t i = 0; i < n; i++) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		p[i] = (uint8_t)(s >> 24);
	}
}

/* ---- files ---- */

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void rmtree(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Commits the journal after deleting a case's files, so the next case does
 * not pay for the previous one's frees and discards (mounted -o discard). */
static void settle(void)
{
	int fd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		syncfs(fd);
		close(fd);
	}
}

static void cleanup(void)
{
	if (getpid() == main_pid && data_dir[0] != '\0') {
		rmtree(data_dir);
		data_dir[0] = '\0';
	}
}

/* out (PATH_MAX bytes) = dir/name */
static void path_join(char *out, const char *dir, const char *name)
{
	int n = snprintf(out, PATH_MAX, "%s/%s", dir, name);
	if (n < 0 || n >= PATH_MAX)
		die("path too long", ENAMETOOLONG);
}

static void subdir(char *out, const char *name)
{
	path_join(out, data_dir, name);
	if (mkdir(out, 0755) != 0)
		die(out, errno);
}

static void pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("pwrite", n < 0 ? errno : EIO);
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
}

/* ---- statistics ---- */

struct samples {
	double v[RUNS_MAX];
	unsigned n;
};

static void add(struct samples *s, double x)
{
	if (s->n < RUNS_MAX)
		s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double s_med(const struct samples *s)
{
	if (s->n == 0)
		return 0;
	double v[RUNS_MAX];
	memcpy(v, s->v, s->n * sizeof(double));
	qsort(v, s->n, sizeof(double), cmp_double);
	return s->n % 2 ? v[s->n / 2] : (v[s->n / 2 - 1] + v[s->n / 2]) / 2;
}

static double s_min(const struct samples *s)
{
	double m = s->n ? s->v[0] : 0;
	for (unsigned i = 1; i < s->n; i++)
		m = s->v[i] < m ? s->v[i] : m;
	return m;
}

static double s_max(const struct samples *s)
{
	double m = s->n ? s->v[0] : 0;
	for (unsigned i = 1; i < s->n; i++)
		m = s->v[i] > m ? s->v[i] : m;
	return m;
}

/* "median (min–max)" with `dec` decimals. */
static const char *rng(char *buf, size_t cap, const struct samples *s, int dec)
{
	snprintf(buf, cap, "%.*f (%.*f–%.*f)", dec, s_med(s), dec, s_min(s), dec, s_max(s));
	return buf;
}

/* Per-op latencies of one run, for percentiles. */
struct lat {
	double *v;
	size_t n, cap;
};

static void lat_push(struct lat *l, double x)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 4096;
		l->v = realloc(l->v, l->cap * sizeof(double));
		if (l->v == NULL)
			die("realloc", ENOMEM);
	}
	l->v[l->n++] = x;
}

static double lat_pct(struct lat *l, double pct)
{
	if (l->n == 0)
		return 0;
	qsort(l->v, l->n, sizeof(double), cmp_double);
	size_t i = (size_t)(pct / 100.0 * (double)(l->n - 1) + 0.5);
	return l->v[i];
}

/* ---- (a) raw sequential write ---- */

static double raw_seq_write(uint64_t bytes)
{
	char path[PATH_MAX];
	path_join(path, data_dir, "raw-seq");
	uint8_t *buf = aligned_alloc(4096, MIB);
	if (buf == NULL)
		die("aligned_alloc", ENOMEM);
	fill_random(buf, MIB, 1);
	double t0 = now_s();
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die(path, errno);
	for (uint64_t off = 0; off < bytes; off += MIB) {
		/* A different first word per MiB: no two chunks identical. */
		memcpy(buf, &off, sizeof(off));
		pwrite_full(fd, buf, bytes - off < MIB ? bytes - off : MIB, off);
	}
	if (fdatasync(fd) != 0)
		die("fdatasync", errno);
	double t = now_s() - t0;
	close(fd);
	unlink(path);
	free(buf);
	settle();
	return (double)bytes / t / 1e6;
}

/* ---- (b) raw 4 KiB write + fdatasync ---- */

enum sync_mode { SYNC_GROW, SYNC_PREALLOC, SYNC_ZERO, SYNC_MODES };

static const char *const sync_mode_name[SYNC_MODES] = {
	"growing file",
	"preallocated (fallocate)",
	"zero-filled file",
};

struct sync_res {
	double ops_s, us_mean, us_p50, us_p99;
};

static void raw_sync(enum sync_mode mode, uint32_t io_size, double seconds,
		     uint64_t file_bytes, struct sync_res *r)
{
	char path[PATH_MAX];
	path_join(path, data_dir, "raw-sync");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die(path, errno);
	if (mode == SYNC_PREALLOC) {
		int ret = fallocate(fd, 0, 0, (off_t)file_bytes);
		if (ret != 0)
			die("fallocate", errno);
	} else if (mode == SYNC_ZERO) {
		uint8_t *z = calloc(1, MIB);
		if (z == NULL)
			die("calloc", ENOMEM);
		for (uint64_t off = 0; off < file_bytes; off += MIB)
			pwrite_full(fd, z, file_bytes - off < MIB ? file_bytes - off : MIB, off);
		free(z);
	}
	/* The file's creation and layout are settled before the clock starts. */
	if (fsync(fd) != 0)
		die("fsync", errno);
	settle();

	uint8_t *buf = malloc(io_size);
	if (buf == NULL)
		die("malloc", ENOMEM);
	fill_random(buf, io_size, 2);
	struct lat l = { 0 };
	uint64_t off = 0;
	double t0 = now_s(), t = t0;
	while (t - t0 < seconds && off + io_size <= file_bytes) {
		pwrite_full(fd, buf, io_size, off);
		if (fdatasync(fd) != 0)
			die("fdatasync", errno);
		double t1 = now_s();
		lat_push(&l, t1 - t);
		t = t1;
		off += io_size;
	}
	r->ops_s = (double)l.n / (t - t0);
	r->us_mean = (t - t0) / (double)l.n * 1e6;
	r->us_p50 = lat_pct(&l, 50) * 1e6;
	r->us_p99 = lat_pct(&l, 99) * 1e6;
	free(l.v);
	free(buf);
	close(fd);
	unlink(path);
	settle();
}

/* ---- the log under test ---- */

/* Counts completions by kind through the ioq fault hook (hook only, no
 * shuffle, results untouched): the only way to see fdatasyncs from outside
 * the log. */
struct io_count {
	uint64_t fsyncs, writes, write_bytes;
};

static void count_hook(void *arg, const struct ioq_op *op, int *res)
{
	struct io_count *c = arg;
	if (op->kind == IOQ_FSYNC) {
		c->fsyncs++;
	} else if (op->kind == IOQ_WRITE && *res > 0) {
		c->writes++;
		c->write_bytes += (uint64_t)*res;
	}
}

struct blog {
	struct ioq q;
	struct ioq_fault fault;
	struct io_count cnt;
	struct log_env *env;
	struct log *log;
	char dir[PATH_MAX];
};

static void blog_config(const struct opts *o, enum log_flush flush, struct log_config *cfg)
{
	log_config_default(cfg);
	cfg->flush = flush;
	cfg->segment_bytes = o->segment_bytes;
	if (o->writes_in_flight)
		cfg->max_writes_in_flight = o->writes_in_flight;
}

static void blog_env(struct blog *b, const struct opts *o)
{
	int ret = ioq_init(&b->q, 256);
	if (ret != 0)
		die("ioq_init", ret);
	memset(&b->cnt, 0, sizeof(b->cnt));
	b->fault = (struct ioq_fault){ .hook = count_hook, .arg = &b->cnt };
	b->q.fault = &b->fault;
	b->env = log_env_new(&b->q, o->staging_bytes);
	if (b->env == NULL)
		die("log_env_new", ENOMEM);
}

static void blog_env_free(struct blog *b)
{
	log_env_free(b->env);
	ioq_exit(&b->q);
}

static void blog_open(struct blog *b, const struct opts *o, const char *name,
		      enum log_flush flush)
{
	struct log_config cfg;
	blog_config(o, flush, &cfg);
	subdir(b->dir, name);
	blog_env(b, o);
	int ret = log_open(b->env, b->dir, &cfg, &b->log, NULL);
	if (ret != 0)
		die("log_open", ret);
}

static void blog_close(struct blog *b)
{
	int ret = log_close(b->log);
	if (ret != 0)
		die("log_close", ret);
	blog_env_free(b);
	rmtree(b->dir);
	settle();
}

struct bench_batch {
	uint8_t *buf;
	uint32_t len, records, value_len;
};

/* One sealed batch of as many value_len records as fit in BATCH_TARGET;
 * log_append copies it and stamps offsets and checksum, so one is enough. */
static void make_batch(struct bench_batch *bb, uint32_t value_len)
{
	bb->buf = malloc(BATCH_TARGET);
	uint8_t *val = malloc(value_len ? value_len : 1);
	if (bb->buf == NULL || val == NULL)
		die("malloc", ENOMEM);
	fill_random(val, value_len, value_len);
	struct batch_builder b;
	batch_builder_init(&b, bb->buf, BATCH_TARGET);
	int64_t ts = wall_ms();
	while (batch_add(&b, ts, val, 0, val, value_len, NULL, 0) == 0)
		;
	if (b.count == 0)
		die("value larger than a batch", EMSGSIZE);
	bb->len = batch_seal(&b, 0, 0);
	bb->records = b.count;
	bb->value_len = value_len;
	free(val);
	struct batch_hdr h;
	int ret = batch_verify(bb->buf, bb->len, &h);
	if (ret != 0)
		die("batch_verify", ret);
}

/* Appends `bytes` worth of batches as fast as the env takes them: append
 * until staging is full, then submit and reap completions. */
static uint64_t append_free_running(struct blog *b, const struct bench_batch *bb,
				    uint64_t bytes)
{
	uint64_t done = 0, batches = 0, base;
	while (done < bytes) {
		int ret = log_append(b->log, bb->buf, bb->len, &base);
		if (ret == 0) {
			done += bb->len;
			batches++;
			continue;
		}
		if (ret != -ENOBUFS)
			die("log_append", ret);
		log_env_flush(b->env);
		ret = ioq_wait(&b->q, -1);
		if (ret < 0)
			die("ioq_wait", ret);
	}
	int ret = log_sync(b->log);
	if (ret != 0)
		die("log_sync", ret);
	return batches;
}

/* One case of (c): a flush policy, value size and appender count. */
struct app_case {
	uint32_t value_len, records, batch_len;
	enum log_flush flush;
	unsigned appenders; /* 0: free-running (flush never) */
	const struct bench_batch *batch;
	struct samples msgs_s, mb_s, syncs_s, per_sync, p50_ms, p99_ms;
	struct samples ratio; /* to (a), per round */
};

struct run_res {
	double secs, cpu_user, cpu_sys; /* all threads, io_uring workers included */
	uint64_t batches, rolls;
	struct io_count cnt;
	double p50, p99;
};

static double tv_s(const struct timeval *tv)
{
	return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

/* CPU seconds used by the process so far, split in user and system. */
static void cpu_now(double *user, double *sys)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	*user = tv_s(&ru.ru_utime);
	*sys = tv_s(&ru.ru_stime);
}

static void run_never(const struct opts *o, const struct bench_batch *bb, struct run_res *r)
{
	struct blog b;
	blog_open(&b, o, "never", LOG_FLUSH_NEVER);
	uint32_t segs = log_segment_count(b.log);
	double u0, s0, u1, s1;
	cpu_now(&u0, &s0);
	double t0 = now_s();
	r->batches = append_free_running(&b, bb, o->bytes);
	r->secs = now_s() - t0;
	cpu_now(&u1, &s1);
	r->cpu_user = u1 - u0;
	r->cpu_sys = s1 - s0;
	r->rolls = log_segment_count(b.log) - segs;
	r->cnt = b.cnt;
	r->p50 = r->p99 = 0;
	blog_close(&b);
}

/* A producer connection in miniature: append a batch, wait until it is
 * durable, then append the next. Acks are handled in the next loop
 * iteration, the way a broker answers and then reads the next request. */
struct appender {
	struct log_waiter w; /* first: the waiter callback casts back */
	struct always_run *run;
	struct appender *next;
	double t_append;
};

struct always_run {
	struct appender *ready;
	unsigned inflight;
	uint64_t acked;
	int err;
	struct lat lat;
};

static void appender_acked(struct log_waiter *w, int err)
{
	struct appender *a = (struct appender *)w;
	struct always_run *r = a->run;
	if (err != 0 && r->err == 0)
		r->err = err;
	r->inflight--;
	r->acked++;
	lat_push(&r->lat, now_s() - a->t_append);
	a->next = r->ready;
	r->ready = a;
}

static void run_always(const struct opts *o, const struct bench_batch *bb, unsigned n,
		       struct run_res *r)
{
	struct blog b;
	blog_open(&b, o, "always", LOG_FLUSH_ALWAYS);
	struct appender *ap = calloc(n, sizeof(*ap));
	if (ap == NULL)
		die("calloc", ENOMEM);
	struct always_run run = { 0 };
	for (unsigned i = 0; i < n; i++) {
		ap[i].run = &run;
		ap[i].w.fn = appender_acked;
		ap[i].next = run.ready;
		run.ready = &ap[i];
	}
	uint32_t segs = log_segment_count(b.log);
	double u0, s0, u1, s1;
	cpu_now(&u0, &s0);
	double t0 = now_s(), deadline = t0 + o->seconds;
	bool stop = false;
	for (;;) {
		double t = now_s();
		stop = stop || t >= deadline;
		while (!stop && run.ready != NULL) {
			struct appender *a = run.ready;
			uint64_t base;
			int ret = log_append(b.log, bb->buf, bb->len, &base);
			if (ret == -ENOBUFS)
				break;
			if (ret != 0)
				die("log_append", ret);
			run.ready = a->next;
			a->t_append = t;
			a->w.offset = base;
			run.inflight++;
			log_wait_durable(b.log, &a->w);
		}
		if (run.err != 0)
			die("durable wait", run.err);
		if (run.inflight == 0 && stop)
			break;
		if (t - t0 > o->seconds + 120)
			die("appenders stuck", ETIMEDOUT);
		log_env_flush(b.env);
		int ret = ioq_wait(&b.q, 1000);
		if (ret < 0)
			die("ioq_wait", ret);
	}
	r->secs = now_s() - t0;
	cpu_now(&u1, &s1);
	r->cpu_user = u1 - u0;
	r->cpu_sys = s1 - s0;
	r->batches = run.acked;
	r->rolls = log_segment_count(b.log) - segs;
	r->cnt = b.cnt;
	r->p50 = lat_pct(&run.lat, 50);
	r->p99 = lat_pct(&run.lat, 99);
	free(run.lat.v);
	free(ap);
	blog_close(&b);
}

/* A segment roll adds fdatasyncs of its own: the sealed segment's data and
 * two index files, and the directory for the new names (log.c seal_step,
 * create_step). Group commit is what is left. */
#define FSYNCS_PER_ROLL 4

static void record_run(struct app_case *c, const struct run_res *r, const struct opts *o)
{
	double bytes = (double)r->batches * c->batch_len;
	add(&c->msgs_s, (double)r->batches * c->records / r->secs);
	add(&c->mb_s, bytes / r->secs / 1e6);
	uint64_t roll_syncs = r->rolls * FSYNCS_PER_ROLL;
	uint64_t gc = r->cnt.fsyncs > roll_syncs ? r->cnt.fsyncs - roll_syncs : 0;
	add(&c->syncs_s, (double)gc / r->secs);
	add(&c->per_sync, gc ? (double)r->batches / (double)gc : 0);
	add(&c->p50_ms, r->p50 * 1e3);
	add(&c->p99_ms, r->p99 * 1e3);
	printf("(c) %u B values, flush %s, appenders %u: %.0f MB/s\n", c->value_len,
	       log_flush_name(c->flush), c->appenders, bytes / r->secs / 1e6);
	if (o->verbose)
		printf("    %.3f s (cpu %.2f user %.2f sys), %" PRIu64 " batches, %" PRIu64
		       " fsyncs (%" PRIu64 " rolls), %" PRIu64 " writes of %.1f KiB avg\n",
		       r->secs, r->cpu_user, r->cpu_sys, r->batches, r->cnt.fsyncs, r->rolls,
		       r->cnt.writes,
		       r->cnt.writes ? (double)r->cnt.write_bytes / r->cnt.writes / 1024 : 0.0);
}

/* ---- (d) recovery ---- */

struct rec_case {
	uint64_t bytes;
	bool index_settled; /* the writer let its index writes finish */
	struct samples open_ms, scanned, segments;
};

/* Appends `bytes` to the log in dir (new or not) in a child that exits
 * without log_close, as a crashed broker would: the active segment keeps
 * its preallocated tail, and its index file holds what the log had written
 * of it. With settle_index the child first lets in-flight and pending index
 * writes finish (log_tick_sync), as a broker that crashed while idle. */
static void recovery_write(const struct opts *o, const char *dir, uint64_t bytes,
			   bool settle_index)
{
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork", errno);
	if (pid == 0) {
		struct blog b;
		struct log_config cfg;
		blog_config(o, LOG_FLUSH_NEVER, &cfg);
		blog_env(&b, o);
		int ret = log_open(b.env, dir, &cfg, &b.log, NULL);
		if (ret != 0)
			die("log_open", ret);
		struct bench_batch bb;
		make_batch(&bb, 1024);
		append_free_running(&b, &bb, bytes);
		if (settle_index && (ret = log_tick_sync(b.log, wall_ms())) != 0)
			die("log_tick_sync", ret);
		_exit(0);
	}
	int st;
	if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("recovery writer failed", EIO);
}

/* Drops the log's pages from the page cache, so log_open reads from the
 * disk as after a reboot (dentries and inodes stay cached). */
static void evict(const char *dir)
{
	DIR *d = opendir(dir);
	if (d == NULL)
		die(dir, errno);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		int fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		fdatasync(fd); /* dirty pages cannot be dropped */
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
	closedir(d);
}

static void timed_open(const struct opts *o, const char *dir, struct rec_case *c)
{
	struct blog b;
	struct log_config cfg;
	struct log_recovery rep;
	blog_config(o, LOG_FLUSH_ALWAYS, &cfg);
	blog_env(&b, o);
	evict(dir);
	double t0 = now_s();
	int ret = log_open(b.env, dir, &cfg, &b.log, &rep);
	double t = now_s() - t0;
	if (ret != 0)
		die("log_open", ret);
	add(&c->open_ms, t * 1e3);
	add(&c->scanned, (double)rep.scanned_bytes);
	add(&c->segments, rep.segments);
	if (o->verbose)
		printf("    open: %.2f ms, %u segments, scanned %" PRIu64 " bytes, cut %" PRIu64
		       " (%s)\n",
		       t * 1e3, rep.segments, rep.scanned_bytes, rep.truncated_bytes,
		       rep.truncated_why ? rep.truncated_why : "clean");
	ret = log_close(b.log);
	if (ret != 0)
		die("log_close", ret);
	blog_env_free(&b);
}

/* One run of a log size: open after an unclean exit right after log_sync,
 * then append a little more and open after an unclean exit with the index
 * writes drained. */
static void run_recovery(const struct opts *o, struct rec_case *fresh, struct rec_case *settled)
{
	char dir[PATH_MAX];
	subdir(dir, "recovery");
	recovery_write(o, dir, fresh->bytes, false);
	timed_open(o, dir, fresh);
	recovery_write(o, dir, MIB, true);
	timed_open(o, dir, settled);
	rmtree(dir);
	settle();
}

/* Whole segments, less a sixteenth of the last, so the active segment is
 * nearly full: the most an index behind the data can make open scan. */
static uint64_t recovery_size(const struct opts *o, uint64_t bytes)
{
	uint64_t segs = bytes / o->segment_bytes;
	return (segs ? segs : 1) * o->segment_bytes - o->segment_bytes / 16;
}

/* ---- options ---- */

static uint64_t parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	uint64_t mul = 1;
	const char *units = "kmg", *u = *end ? strchr(units, *end | 0x20) : NULL;
	if (u != NULL) {
		mul = (uint64_t)1 << (10 * (u - units + 1));
		end++;
	}
	if (end == s || *end != '\0' || v <= 0) {
		fprintf(stderr, "bench_storage: bad size '%s'\n", s);
		exit(2);
	}
	return (uint64_t)(v * (double)mul);
}

static double parse_pos(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end != '\0' || v <= 0) {
		fprintf(stderr, "bench_storage: bad number '%s'\n", s);
		exit(2);
	}
	return v;
}

static unsigned parse_list(const char *s, unsigned *out, unsigned max)
{
	unsigned n = 0;
	char *copy = strdup(s), *save = NULL;
	for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
		if (n == max) {
			fprintf(stderr, "bench_storage: at most %u items in '%s'\n", max, s);
			exit(2);
		}
		out[n++] = (unsigned)parse_size(t);
	}
	free(copy);
	return n;
}

static bool want(const struct opts *o, const char *what)
{
	if (o->only == NULL)
		return true;
	size_t n = strlen(what);
	for (const char *p = o->only; (p = strstr(p, what)) != NULL; p += n)
		if ((p == o->only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
			return true;
	return false;
}

static void usage(void)
{
	puts("usage: bench_storage [options]\n"
	     "  --dir BASE          make the data dir in BASE (default $BENCH_DIR, else build)\n"
	     "  --bytes SIZE        raw write and flush-never total (default 1G)\n"
	     "  --seconds S         per flush-always case (default 3)\n"
	     "  --sync-seconds S    per raw fdatasync case (default 1)\n"
	     "  --sync-file SIZE    file size for the fdatasync cases; a case stops\n"
	     "                      early when it reaches the end (default 256M)\n"
	     "  --sync-io LIST      write sizes for them (default 4K,1M)\n"
	     "  --recovery SIZE     recovery log size, and a tenth of it; rounded to\n"
	     "                      whole segments less 1/16 (default 2G)\n"
	     "  --segment SIZE      log segment size (default 64M)\n"
	     "  --staging SIZE      log env staging memory (default 32M)\n"
	     "  --writes-in-flight N  per log (default: the log's, 4)\n"
	     "  --appenders LIST    flush-always appender counts (default 1,8,64)\n"
	     "  --values LIST       value sizes in bytes (default 100,1024)\n"
	     "  --runs N            rounds, each running every case once; figures are\n"
	     "                      median, min and max over rounds (default 3)\n"
	     "  --only LIST         raw,sync,never,always,recovery (default all)\n"
	     "  --md FILE           also write the results as Markdown tables\n"
	     "  -v                  per-run details");
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option lo[] = {
		{ "dir", required_argument, NULL, 'd' },
		{ "bytes", required_argument, NULL, 'b' },
		{ "seconds", required_argument, NULL, 's' },
		{ "sync-seconds", required_argument, NULL, 'S' },
		{ "sync-file", required_argument, NULL, 'F' },
		{ "sync-io", required_argument, NULL, 'z' },
		{ "recovery", required_argument, NULL, 'r' },
		{ "segment", required_argument, NULL, 'g' },
		{ "staging", required_argument, NULL, 't' },
		{ "writes-in-flight", required_argument, NULL, 'w' },
		{ "appenders", required_argument, NULL, 'a' },
		{ "values", required_argument, NULL, 'V' },
		{ "runs", required_argument, NULL, 'n' },
		{ "only", required_argument, NULL, 'o' },
		{ "md", required_argument, NULL, 'm' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	*o = (struct opts){
		.base = getenv("BENCH_DIR") ? getenv("BENCH_DIR") : "build",
		.bytes = 1ull << 30,
		.seconds = 3,
		.sync_seconds = 1,
		.sync_file_bytes = 256 * MIB,
		.sync_io = { 4096, 1 << 20 },
		.n_sync_io = 2,
		.recovery_bytes = 2ull << 30,
		.segment_bytes = 64 * MIB,
		.staging_bytes = 32 * MIB,
		.runs = 3,
		.appenders = { 1, 8, 64 },
		.n_appenders = 3,
		.values = { 100, 1024 },
		.n_values = 2,
	};
	int c;
	while ((c = getopt_long(argc, argv, "vh", lo, NULL)) != -1) {
		switch (c) {
		case 'd':
			o->base = optarg;
			break;
		case 'b':
			o->bytes = parse_size(optarg);
			break;
		case 's':
			o->seconds = parse_pos(optarg);
			break;
		case 'S':
			o->sync_seconds = parse_pos(optarg);
			break;
		case 'F':
			o->sync_file_bytes = parse_size(optarg);
			break;
		case 'z':
			o->n_sync_io = parse_list(optarg, o->sync_io, SYNC_SIZES_MAX);
			break;
		case 'r':
			o->recovery_bytes = parse_size(optarg);
			break;
		case 'g':
			o->segment_bytes = parse_size(optarg);
			break;
		case 't':
			o->staging_bytes = parse_size(optarg);
			break;
		case 'w':
			o->writes_in_flight = (uint32_t)parse_size(optarg);
			break;
		case 'a':
			o->n_appenders = parse_list(optarg, o->appenders, APPENDER_COUNTS_MAX);
			break;
		case 'V':
			o->n_values = parse_list(optarg, o->values, VALUE_SIZES_MAX);
			break;
		case 'n':
			o->runs = (unsigned)parse_pos(optarg);
			break;
		case 'o':
			o->only = optarg;
			break;
		case 'm':
			o->md_path = optarg;
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'h':
			usage();
			exit(0);
		default:
			usage();
			exit(2);
		}
	}
	if (optind != argc || o->runs > RUNS_MAX || o->n_appenders == 0 || o->n_values == 0) {
		usage();
		exit(2);
	}
}

/* ---- output ---- */

static const char *appenders_label(char *buf, size_t cap, const struct app_case *c)
{
	if (c->appenders == 0)
		return "free-running";
	snprintf(buf, cap, "%u", c->appenders);
	return buf;
}

struct sync_case {
	struct samples ops_s, us_mean, us_p50, us_p99;
};

struct results {
	struct samples seq_mb_s; /* every raw write, two per round */
	struct samples ref_mb_s; /* v[i]: mean of round i's two raw writes */
	struct sync_case sync[SYNC_SIZES_MAX][SYNC_MODES];
	struct app_case app[VALUE_SIZES_MAX * (APPENDER_COUNTS_MAX + 1)];
	unsigned n_app;
	struct rec_case rec[4]; /* large, large settled, small, small settled */
	bool have_rec;
};

static const char *target_for(const struct app_case *c, double *ratio_min)
{
	if (c->flush == LOG_FLUSH_NEVER) {
		*ratio_min = 0.9;
		return "≥ 0.9";
	}
	if (c->appenders >= 64) {
		*ratio_min = 0.7;
		return "≥ 0.7";
	}
	*ratio_min = 0;
	return "";
}

/* Each round's MB/s over that round's raw reference (see main). */
static void paired_ratios(struct results *R)
{
	for (unsigned i = 0; i < R->n_app; i++) {
		struct app_case *c = &R->app[i];
		for (unsigned k = 0; k < c->mb_s.n && k < R->ref_mb_s.n; k++)
			add(&c->ratio, c->mb_s.v[k] / R->ref_mb_s.v[k]);
	}
}

static const char *verdict(const struct app_case *c, bool md)
{
	double rmin;
	const char *tgt = target_for(c, &rmin);
	if (*tgt == '\0' || c->ratio.n == 0)
		return "";
	if (s_med(&c->ratio) >= rmin)
		return "met";
	return md ? "**missed**" : "MISSED";
}

/* 4 KiB fdatasyncs per second on a preallocated file: what the log's
 * group commit (fdatasync into fallocated space) compares with. */
static double raw_prealloc_rate(const struct opts *o, const struct results *R)
{
	for (unsigned z = 0; z < o->n_sync_io; z++)
		if (o->sync_io[z] == 4096)
			return s_med(&R->sync[z][SYNC_PREALLOC].ops_s);
	return 0;
}

static void print_human(const struct opts *o, const struct results *R)
{
	char b1[96], b2[96], b3[96];
	printf("\n== results: median (min–max) of %u rounds; MB = 10^6 bytes\n", o->runs);
	if (R->seq_mb_s.n)
		printf("(a) raw sequential write, 1 MiB pwrites, %" PRIu64
		       " MiB + fdatasync (2 per round): %s MB/s\n",
		       o->bytes / MIB, rng(b1, sizeof(b1), &R->seq_mb_s, 0));
	for (unsigned z = 0; z < o->n_sync_io; z++) {
		for (int m = 0; m < SYNC_MODES; m++) {
			const struct sync_case *s = &R->sync[z][m];
			if (s->ops_s.n == 0)
				continue;
			printf("(b) %4u KiB write+fdatasync, %-24s %s ops/s = %.0f MB/s, "
			       "%s µs/op, p99 %.0f µs\n",
			       o->sync_io[z] >> 10, sync_mode_name[m],
			       rng(b1, sizeof(b1), &s->ops_s, 0),
			       s_med(&s->ops_s) * o->sync_io[z] / 1e6,
			       rng(b2, sizeof(b2), &s->us_mean, 0), s_med(&s->us_p99));
		}
	}
	if (R->n_app)
		printf("(c) log appends, %" PRIu64 " MiB segments, ~%u KiB batches; × raw: per "
		       "round, to the mean of the two (a) runs around it\n",
		       o->segment_bytes / MIB, BATCH_TARGET >> 10);
	double pre_ops = raw_prealloc_rate(o, R);
	for (unsigned i = 0; i < R->n_app; i++) {
		const struct app_case *c = &R->app[i];
		double rmin;
		const char *tgt = target_for(c, &rmin);
		printf("    %4u B x %3u/batch  flush %-6s appenders %-12s  %s msgs/s  %s MB/s",
		       c->value_len, c->records, log_flush_name(c->flush),
		       appenders_label(b3, sizeof(b3), c),
		       rng(b1, sizeof(b1), &c->msgs_s, 0), rng(b2, sizeof(b2), &c->mb_s, 0));
		if (c->ratio.n)
			printf("  = %s x raw", rng(b1, sizeof(b1), &c->ratio, 2));
		if (*tgt && c->ratio.n)
			printf(" (target %s: %s)", tgt, verdict(c, false));
		if (c->flush == LOG_FLUSH_ALWAYS) {
			printf("\n        %s fdatasyncs/s", rng(b1, sizeof(b1), &c->syncs_s, 0));
			if (pre_ops > 0)
				printf(" = %.2f x raw 4 KiB prealloc rate", s_med(&c->syncs_s) / pre_ops);
			printf(", %.1f batches/fdatasync, ack p50 %.2f ms p99 %.2f ms",
			       s_med(&c->per_sync), s_med(&c->p50_ms), s_med(&c->p99_ms));
		}
		printf("\n");
	}
	for (unsigned i = 0; i < 4 && R->have_rec; i++) {
		const struct rec_case *c = &R->rec[i];
		printf("(d) log_open, %5" PRIu64 " MiB log, %2.0f segments, unclean %-28s %s ms, "
		       "scanned %.2f MiB\n",
		       c->bytes / MIB, s_med(&c->segments),
		       c->index_settled ? "exit, index writes drained:" : "exit right after log_sync:",
		       rng(b1, sizeof(b1), &c->open_ms, 1), s_med(&c->scanned) / (double)MIB);
	}
}

static void print_md(FILE *f, const struct opts *o, const struct results *R)
{
	char b1[96], b2[96], b3[96], b4[96];
	double pre_ops = raw_prealloc_rate(o, R);
	fprintf(f, "Median (min–max) of %u rounds; MB = 10^6 bytes. Each round runs (a), the "
		   "cases with a target, (a) again, then the rest; \"× raw\" is per round, "
		   "to the mean of the two (a) runs around the case.\n\n", o->runs);
	if (R->seq_mb_s.n || R->sync[0][0].ops_s.n) {
		fprintf(f, "| Raw disk | Result |\n|---|---|\n");
		if (R->seq_mb_s.n)
			fprintf(f, "| (a) Sequential write: 1 MiB pwrites, %" PRIu64
				   " MiB, then fdatasync (2 per round) | %s MB/s |\n",
				o->bytes / MIB, rng(b1, sizeof(b1), &R->seq_mb_s, 0));
		for (unsigned z = 0; z < o->n_sync_io; z++) {
			for (int m = 0; m < SYNC_MODES; m++) {
				const struct sync_case *s = &R->sync[z][m];
				if (s->ops_s.n == 0)
					continue;
				fprintf(f, "| (b) %u KiB write + fdatasync, %s | %s ops/s (%.0f MB/s); "
					   "%s µs/op; p99 %.0f µs |\n",
					o->sync_io[z] >> 10, sync_mode_name[m],
					rng(b1, sizeof(b1), &s->ops_s, 0),
					s_med(&s->ops_s) * o->sync_io[z] / 1e6,
					rng(b2, sizeof(b2), &s->us_mean, 0), s_med(&s->us_p99));
			}
		}
		fprintf(f, "\n");
	}
	if (R->n_app) {
		fprintf(f, "| Values | Records/batch | Flush | Appenders | Messages/s | MB/s | "
			   "× raw write (a) | Target | fdatasyncs/s (× raw 4 KiB prealloc) | "
			   "Batches/fdatasync | Ack p50 / p99 ms |\n"
			   "|---|---|---|---|---|---|---|---|---|---|---|\n");
		for (unsigned i = 0; i < R->n_app; i++) {
			const struct app_case *c = &R->app[i];
			double rmin;
			const char *tgt = target_for(c, &rmin);
			fprintf(f, "| %u B | %u | %s | %s | %s | %s | %s | %s %s | ", c->value_len,
				c->records, log_flush_name(c->flush),
				appenders_label(b3, sizeof(b3), c),
				rng(b1, sizeof(b1), &c->msgs_s, 0), rng(b2, sizeof(b2), &c->mb_s, 0),
				c->ratio.n ? rng(b4, sizeof(b4), &c->ratio, 2) : "–", tgt,
				verdict(c, true));
			if (c->flush == LOG_FLUSH_ALWAYS)
				fprintf(f, "%.0f (%.2f) | %.1f | %.2f / %.2f |\n", s_med(&c->syncs_s),
					pre_ops > 0 ? s_med(&c->syncs_s) / pre_ops : 0.0,
					s_med(&c->per_sync), s_med(&c->p50_ms), s_med(&c->p99_ms));
			else
				fprintf(f, "– | – | – |\n");
		}
		fprintf(f, "\n");
	}
	if (R->have_rec) {
		fprintf(f, "| (d) Recovery | Log size | Segments | log_open ms | Scanned |\n"
			   "|---|---|---|---|---|\n");
		for (unsigned i = 0; i < 4; i++) {
			const struct rec_case *c = &R->rec[i];
			fprintf(f, "| %s | %" PRIu64 " MiB | %.0f | %s | %.2f MiB |\n",
				c->index_settled ? "unclean exit after index writes drained"
						 : "unclean exit right after log_sync",
				c->bytes / MIB, s_med(&c->segments),
				rng(b1, sizeof(b1), &c->open_ms, 1),
				s_med(&c->scanned) / (double)MIB);
		}
		fprintf(f, "\n");
	}
}

/* ---- rounds ---- */

static bool has_target(const struct app_case *c)
{
	double rmin;
	return *target_for(c, &rmin) != '\0';
}

static double raw_write_round(const struct opts *o, struct results *R)
{
	double mb_s = raw_seq_write(o->bytes);
	add(&R->seq_mb_s, mb_s);
	printf("(a) raw sequential write: %.0f MB/s\n", mb_s);
	return mb_s;
}

static void sync_round(const struct opts *o, struct results *R, unsigned z, enum sync_mode m)
{
	struct sync_res r;
	struct sync_case *sc = &R->sync[z][m];
	raw_sync(m, o->sync_io[z], o->sync_seconds, o->sync_file_bytes, &r);
	add(&sc->ops_s, r.ops_s);
	add(&sc->us_mean, r.us_mean);
	add(&sc->us_p50, r.us_p50);
	add(&sc->us_p99, r.us_p99);
	printf("(b) %u KiB write+fdatasync, %s: %.0f ops/s\n", o->sync_io[z] >> 10,
	       sync_mode_name[m], r.ops_s);
}

static void run_case(const struct opts *o, struct app_case *c)
{
	struct run_res r;
	if (c->flush == LOG_FLUSH_NEVER)
		run_never(o, c->batch, &r);
	else
		run_always(o, c->batch, c->appenders, &r);
	record_run(c, &r, o);
}

/* ---- main ---- */

static void describe_disk(void)
{
	struct stat st, tst;
	struct statfs sf;
	if (stat(data_dir, &st) != 0 || statfs(data_dir, &sf) != 0)
		die(data_dir, errno);
	printf("data dir %s: device %u:%u, fs magic 0x%lx", data_dir, major(st.st_dev),
	       minor(st.st_dev), (unsigned long)sf.f_type);
	if (stat("/tmp", &tst) == 0)
		printf(" (/tmp is %s)", tst.st_dev == st.st_dev ? "the same device" : "another device");
	printf("\n");
}

int main(int argc, char **argv)
{
	struct opts o;
	parse_opts(argc, argv, &o);
	main_pid = getpid();
	say_set_level(SAY_WARN);
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (mkdir(o.base, 0755) != 0 && errno != EEXIST)
		die(o.base, errno);
	if (snprintf(data_dir, sizeof(data_dir), "%s/ringmq-bench-XXXXXX", o.base) >=
	    (int)sizeof(data_dir))
		die("path too long", ENAMETOOLONG);
	if (mkdtemp(data_dir) == NULL)
		die("mkdtemp", errno);
	atexit(cleanup);
	describe_disk();

	static struct results R;
	struct bench_batch bb[VALUE_SIZES_MAX];
	for (unsigned v = 0; v < o.n_values; v++) {
		make_batch(&bb[v], o.values[v]);
		for (unsigned k = 0; k <= o.n_appenders; k++) {
			bool never = k == 0;
			if (!want(&o, never ? "never" : "always"))
				continue;
			struct app_case *c = &R.app[R.n_app++];
			c->value_len = bb[v].value_len;
			c->records = bb[v].records;
			c->batch_len = bb[v].len;
			c->flush = never ? LOG_FLUSH_NEVER : LOG_FLUSH_ALWAYS;
			c->appenders = never ? 0 : o.appenders[k - 1];
			c->batch = &bb[v];
		}
	}

	/* Rounds: each runs every case once. This disk's speed drifts by 2x
	 * and more within a minute, so runs of one case back to back would
	 * compare cases at different moments. Each round brackets the cases
	 * with a target between two raw writes, and their ratio is taken to
	 * the mean of those two. */
	double t_all = now_s();
	for (unsigned i = 0; i < o.runs; i++) {
		printf("== round %u of %u\n", i + 1, o.runs);
		double raw0 = want(&o, "raw") ? raw_write_round(&o, &R) : 0;
		for (unsigned k = 0; k < R.n_app; k++)
			if (has_target(&R.app[k]))
				run_case(&o, &R.app[k]);
		if (raw0 > 0)
			add(&R.ref_mb_s, (raw0 + raw_write_round(&o, &R)) / 2);
		for (unsigned z = 0; z < o.n_sync_io && want(&o, "sync"); z++)
			for (int m = 0; m < SYNC_MODES; m++)
				sync_round(&o, &R, z, (enum sync_mode)m);
		for (unsigned k = 0; k < R.n_app; k++)
			if (!has_target(&R.app[k]))
				run_case(&o, &R.app[k]);
	}
	for (unsigned v = 0; v < o.n_values; v++)
		free(bb[v].buf);
	if (want(&o, "recovery")) {
		R.have_rec = true;
		for (unsigned s = 0; s < 2; s++) {
			uint64_t bytes = recovery_size(&o, s == 0 ? o.recovery_bytes
								   : o.recovery_bytes / 10);
			R.rec[2 * s] = (struct rec_case){ .bytes = bytes };
			R.rec[2 * s + 1] = (struct rec_case){ .bytes = bytes + MIB,
							      .index_settled = true };
		}
		for (unsigned i = 0; i < o.runs; i++) {
			for (unsigned s = 0; s < 2; s++) {
				run_recovery(&o, &R.rec[2 * s], &R.rec[2 * s + 1]);
				printf("(d) recovery of a %" PRIu64 " MiB log: open %.1f ms, "
				       "with the index writes drained %.1f ms\n",
				       R.rec[2 * s].bytes / MIB,
				       R.rec[2 * s].open_ms.v[i], R.rec[2 * s + 1].open_ms.v[i]);
			}
		}
	}
	paired_ratios(&R);
	print_human(&o, &R);
	printf("total %.0f s\n", now_s() - t_all);
	if (o.md_path != NULL) {
		FILE *f = fopen(o.md_path, "w");
		if (f == NULL)
			die(o.md_path, errno);
		print_md(f, &o, &R);
		fclose(f);
	}
	return 0;
}
