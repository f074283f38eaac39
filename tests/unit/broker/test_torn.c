/* test_torn.c — torn writes between runs, at the broker's level (issue 8).
 *
 * One broker data dir across a seeded loop of rounds (SEED=... replays a
 * run; 6 rounds, or 20 with RINGMQ_TORTURE=1). Each round produces a few
 * hundred numbered messages (libringmq, acks=all) to a flush=always topic
 * with 64 KiB segments, commits a group offset a few times, and stops the
 * broker (SIGTERM and SIGKILL in turn). Then the tail of the newest segment
 * of a partition, and/or of the offsets store (DATA_DIR/.offsets/), is
 * damaged at random: cut inside one of its last batches, overwritten with
 * junk over a range, or followed by junk. Which batches are still whole is
 * computed here from the damaged file with storage/batch.h, from position 0.
 *
 * After the restart: the broker is ready; it logged the cut ("cut N bytes at
 * position P", and the partition's or the offsets store's own line) for what
 * was damaged and for nothing else; every message of the surviving batches
 * is read back at its offset, byte for byte; the log ends right after the
 * last surviving batch and nothing past it is served; the next round's
 * messages get offsets from that end on; and the group's committed offset
 * is the newest acknowledged commit whose record survived (never garbage,
 * never newer than the last acknowledged one). The messages lost are
 * exactly those of the first damaged batch and of the batches after it
 * (recovery keeps offsets dense, so a whole batch after a damaged one goes
 * too). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/ringmq.h"
#include "common/endian.h"
#include "storage/batch.h"
#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

#define TOPIC "torn"
#define GROUP "torn-readers"
#define MAXP 2
#define MAX_MSGS 20000u   /* over the whole run: 21 rounds of at most 500 */
#define MAX_COMMITS 1024u
#define VALUE_MAX 640u
#define SEGMENT_BYTES "65536"

/* ---- numbered messages ---- */

static uint32_t value_len(uint32_t id)
{
	return 16 + (uint32_t)(((uint64_t)id * 2654435761u) >> 7) % (VALUE_MAX - 16);
}

/* "m<id, 10 digits>|" then bytes derived from id. */
static void make_value(uint8_t *v, uint32_t id)
{
	char head[16];
	snprintf(head, sizeof(head), "m%010u|", id);
	memcpy(v, head, 12);
	uint64_t x = 0x9E3779B97F4A7C15ull * ((uint64_t)id + 1);
	for (uint32_t k = 12; k < value_len(id); k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		v[k] = (uint8_t)x;
	}
}

static bool value_is(const uint8_t *v, uint32_t len, uint32_t id)
{
	uint8_t want[VALUE_MAX];
	if (len != value_len(id))
		return false;
	make_value(want, id);
	return memcmp(want, v, len) == 0;
}

/* ---- state: on the heap side of the test, not its stack ---- */

struct rep {
	int err;
	int32_t part;
	int64_t off;
	bool reported;
};

struct commit {
	uint32_t part;
	uint64_t value;
	uint32_t seq; /* order of acknowledgement, over the run */
};

static struct {
	struct tbroker b;
	bool started;
	struct tclient c;
	bool c_open;
	uint32_t nparts;
	/* What each partition's log holds: ids[offset] is a message id. */
	uint32_t *ids[MAXP];
	uint64_t n[MAXP];
	/* Delivery reports, by message id. */
	pthread_mutex_t mu;
	struct rep *r;
	uint32_t next_id;
	/* Acknowledged commits, in order; and those the offsets store holds. */
	struct commit acked[MAX_COMMITS];
	uint32_t nacked;
	struct commit stored[MAX_COMMITS];
	uint32_t nstored;
	off_t log_seen; /* how much of the broker's log earlier starts wrote */
	bool running;
} T;

static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	(void)opaque;
	uint32_t id = (uint32_t)(uintptr_t)d->opaque;
	pthread_mutex_lock(&T.mu);
	if (id < MAX_MSGS) {
		T.r[id].err = T.r[id].reported ? -1 : d->err; /* twice: an error */
		T.r[id].reported = true;
		T.r[id].part = d->partition;
		T.r[id].off = d->offset;
	}
	pthread_mutex_unlock(&T.mu);
}

/* ---- the broker ---- */

static void connect_client(void)
{
	assert_int_equal(tc_connect(&T.c, T.b.addr), 0);
	T.c_open = true;
}

static void start(bool fresh)
{
	struct stat st;
	T.log_seen = fresh || stat(T.b.log_path, &st) != 0 ? 0 : st.st_size;
	int tries = 0;
	while (tb_start(&T.b, fresh ? NULL : T.b.dir, NULL) != 0) {
		T.b.pid = 0;
		if (fresh || ++tries == 3)
			fail_msg("the broker did not start (log %s)", T.b.log_path);
	}
	T.started = true;
	connect_client();
}

/* Stops the broker: SIGTERM (must exit 0) or SIGKILL. */
static void stop(bool kill9)
{
	if (T.c_open)
		tc_close(&T.c);
	T.c_open = false;
	if (kill9) {
		tb_kill9(&T.b);
	} else {
		int rc = tb_stop(&T.b);
		if (rc != 0)
			fail_msg("the broker exited %d on SIGTERM", rc);
	}
}

/* What the broker printed since its last start. malloc'd, NUL-terminated. */
static char *new_log(void)
{
	int fd = open(T.b.log_path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	size_t len = st.st_size > T.log_seen ? (size_t)(st.st_size - T.log_seen) : 0;
	char *buf = malloc(len + 1);
	assert_non_null(buf);
	ssize_t n = pread(fd, buf, len, T.log_seen);
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

/* Lines of text holding every one of the (NULL-terminated) strings. */
static int count_lines(const char *text, const char *const *all)
{
	int n = 0;
	for (const char *line = text; *line;) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		char *copy = strndup(line, len);
		bool ok = true;
		for (int i = 0; all[i] && ok; i++)
			ok = strstr(copy, all[i]) != NULL;
		free(copy);
		n += ok;
		line += len + (nl != NULL);
	}
	return n;
}

static void print_lines(const char *text, const char *what)
{
	for (const char *line = text; *line;) {
		const char *nl = strchr(line, '\n');
		int len = nl ? (int)(nl - line) : (int)strlen(line);
		if (strstr(line, what) != NULL && (nl == NULL || strstr(line, what) < nl))
			printf("#   broker: %.*s\n", len, line);
		line += len + (nl != NULL);
	}
}

/* ---- protocol helpers ---- */

/* Commits vals[p] for every partition in one request; 0 or the error. */
static int commit(const uint64_t *vals)
{
	struct proto_commit_part parts[MAXP];
	for (uint32_t p = 0; p < T.nparts; p++)
		parts[p] = (struct proto_commit_part){ pstr_c(TOPIC), p, vals[p] };
	union proto_request req = {
		.commit_offsets = { pstr_c(GROUP), pstr_c(""), 0, T.nparts, parts }
	};
	struct proto_resp_hdr h;
	union proto_response resp;
	int ret = tc_call(&T.c, API_COMMIT_OFFSETS, &req, 15000, &h, &resp);
	if (ret != 0)
		return ret;
	if (h.err != ERR_NONE)
		return h.err;
	assert_int_equal(resp.commit_offsets.nparts, T.nparts);
	for (uint32_t p = 0; p < T.nparts; p++)
		if (resp.commit_offsets.parts[p].err != ERR_NONE)
			return resp.commit_offsets.parts[p].err;
	return 0;
}

static int64_t committed(uint32_t p)
{
	struct proto_tp tp = { pstr_c(TOPIC), p };
	union proto_request req = { .fetch_offsets = { pstr_c(GROUP), 1, &tp } };
	struct proto_resp_hdr h;
	union proto_response resp;
	assert_int_equal(tc_call(&T.c, API_FETCH_OFFSETS, &req, 10000, &h, &resp), 0);
	if (h.err != ERR_NONE)
		fail_msg("fetch offsets: %s %.*s", proto_err_name(h.err), (int)h.msg.len, h.msg.p);
	assert_int_equal(resp.fetch_offsets.nparts, 1);
	return resp.fetch_offsets.parts[0].offset;
}

/* Reads partition p from 0 to its end and checks every record against the
 * model; then that nothing is served at or past the end. */
static void read_back(uint32_t p)
{
	uint64_t end = T.n[p], off = 0, records = 0;
	/* Right after a start the log ends where it should: the start made the
	 * recovered tail durable, so a flush-always log shows all of it. */
	uint8_t *rec0 = NULL;
	uint32_t len0 = 0;
	uint64_t le0 = 0;
	int err0 = tc_fetch(&T.c, TOPIC, p, 0, 1024, 0, 0, &rec0, &len0, &le0);
	free(rec0);
	if (err0 != ERR_NONE)
		fail_msg("fetch %s[%u] at 0: error %d", TOPIC, p, err0);
	if (le0 != end)
		fail_msg("%s[%u]: right after the start the log ends at %" PRIu64 ", not %" PRIu64,
			 TOPIC, p, le0, end);
	void *scratch = NULL;
	size_t scratch_cap = 0;
	while (off < end) {
		uint8_t *rec = NULL;
		uint32_t len = 0;
		uint64_t le = 0;
		int err = tc_fetch(&T.c, TOPIC, p, off, 1u << 18, 0, 0, &rec, &len, &le);
		if (err != ERR_NONE)
			fail_msg("fetch %s[%u] at %" PRIu64 ": error %d", TOPIC, p, off, err);
		if (le != end)
			fail_msg("%s[%u]: the broker says the log ends at %" PRIu64 ", expected %" PRIu64,
				 TOPIC, p, le, end);
		uint64_t from = off;
		for (uint32_t at = 0; at < len;) {
			struct batch_hdr h;
			int r = batch_verify(rec + at, len - at, &h);
			if (r == -ENODATA && off > from)
				break; /* a batch cut by max_bytes: fetched again */
			if (r != 0)
				fail_msg("%s[%u]: fetch at %" PRIu64 " served a bad batch at byte %u: %d",
					 TOPIC, p, from, at, r);
			if (h.records_size > scratch_cap) {
				scratch_cap = h.records_size;
				scratch = realloc(scratch, scratch_cap);
				assert_non_null(scratch);
			}
			struct batch_iter it;
			struct batch_record br;
			assert_int_equal(batch_iter_init(&it, rec + at, scratch, scratch_cap), 0);
			while ((r = batch_iter_next(&it, &br)) == 1) {
				if (br.offset < off)
					continue;
				if (br.offset != off)
					fail_msg("%s[%u]: offset %" PRIu64 " served where %" PRIu64
						 " was due", TOPIC, p, br.offset, off);
				if (br.offset >= end)
					fail_msg("%s[%u]: offset %" PRIu64 " served past the end %" PRIu64,
						 TOPIC, p, br.offset, end);
				uint32_t id = T.ids[p][off];
				if (!value_is(br.value, br.value_len, id))
					fail_msg("%s[%u] offset %" PRIu64 ": not message %u (%u bytes: "
						 "%.12s)", TOPIC, p, off, id, br.value_len,
						 br.value_len >= 12 ? (const char *)br.value : "");
				off++;
				records++;
			}
			assert_int_equal(r, 0);
			at += h.length;
		}
		free(rec);
		if (off == from)
			fail_msg("%s[%u]: fetch at %" PRIu64 " made no progress", TOPIC, p, from);
	}
	free(scratch);
	/* At the end: nothing, and past it: out of range. */
	uint8_t *rec = NULL;
	uint32_t len = 0;
	uint64_t le = 0;
	int err = tc_fetch(&T.c, TOPIC, p, end, 1u << 18, 0, 0, &rec, &len, &le);
	assert_int_equal(err, ERR_NONE);
	assert_int_equal(le, end);
	if (len != 0)
		fail_msg("%s[%u]: %u bytes served at the end %" PRIu64, TOPIC, p, len, end);
	free(rec);
	err = tc_fetch(&T.c, TOPIC, p, end + 1, 1u << 18, 0, 0, &rec, &len, &le);
	assert_int_equal(err, ERR_OFFSET_OUT_OF_RANGE);
	free(rec);
	assert_int_equal(records, end);
}

/* ---- producing and committing ---- */

static void model_put(uint32_t p, uint64_t off, uint32_t id)
{
	static uint64_t cap[MAXP];
	if (off >= cap[p]) {
		uint64_t nc = cap[p] ? cap[p] * 2 : 4096;
		while (nc <= off)
			nc *= 2;
		T.ids[p] = realloc(T.ids[p], nc * sizeof(uint32_t));
		assert_non_null(T.ids[p]);
		cap[p] = nc;
	}
	T.ids[p][off] = id;
}

/* Produces `count` messages to random partitions with a fresh producer, in
 * `chunks` flushes, committing after each; checks every report and that
 * offsets go on densely from each partition's end. */
static void produce_round(uint64_t *rng, uint32_t count, uint32_t chunks, uint32_t *commits)
{
	static const char *const batch_sizes[] = { "1024", "4096", "16384" };
	char err[256];
	struct ringmq_config *cfg = ringmq_config_new();
	const char *kv[] = { "bootstrap.servers", T.b.addr, "acks", "all", "linger.ms", "1",
			     "batch.size", batch_sizes[tu_rand(rng) % 3], NULL };
	for (int i = 0; kv[i]; i += 2)
		if (ringmq_config_set(cfg, kv[i], kv[i + 1], err, sizeof(err)) != 0)
			fail_msg("%s: %s", kv[i], err);
	ringmq_config_set_delivery_cb(cfg, on_delivery, NULL);
	struct ringmq_producer *prod = ringmq_producer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	if (prod == NULL)
		fail_msg("producer: %s", err);
	uint32_t first = T.next_id, last = T.next_id + count;
	assert_true(last <= MAX_MSGS);
	uint8_t v[VALUE_MAX];
	*commits = 0;
	uint32_t chunk_from = first;
	for (uint32_t c = 0; c < chunks; c++) {
		uint32_t to = first + (uint32_t)((uint64_t)count * (c + 1) / chunks);
		for (; T.next_id < to; T.next_id++) {
			uint32_t id = T.next_id;
			make_value(v, id);
			int32_t p = (int32_t)(tu_rand(rng) % T.nparts);
			int ret = ringmq_produce(prod, TOPIC, p, NULL, 0, v, value_len(id), NULL, 0, 0,
						 (void *)(uintptr_t)id);
			if (ret != 0)
				fail_msg("ringmq_produce %u: %s", id, ringmq_strerror(ret));
		}
		int ret = ringmq_producer_flush(prod, 30000);
		if (ret != 0)
			fail_msg("flush: %s", ringmq_strerror(ret));
		/* Every message of this chunk stored, at offsets from its
		 * partition's end on, each once, with no gap. */
		uint64_t n0[MAXP], in[MAXP] = { 0 };
		memcpy(n0, T.n, sizeof(n0));
		pthread_mutex_lock(&T.mu);
		for (uint32_t id = chunk_from; id < to; id++) {
			struct rep *r = &T.r[id];
			if (!r->reported || r->err != 0 || r->part < 0 || (uint32_t)r->part >= T.nparts ||
			    r->off < (int64_t)n0[r->part]) {
				pthread_mutex_unlock(&T.mu);
				fail_msg("message %u: reported %d, error %d, partition %d, offset %" PRId64
					 " (that partition's log ended at %" PRIu64 " before)",
					 id, r->reported, r->err, r->part, r->off,
					 r->part >= 0 && r->part < MAXP ? n0[r->part] : 0);
			}
			in[r->part]++;
		}
		for (uint32_t p = 0; p < T.nparts; p++)
			for (uint64_t o = n0[p]; o < n0[p] + in[p]; o++)
				model_put(p, o, UINT32_MAX);
		for (uint32_t id = chunk_from; id < to; id++) {
			struct rep *r = &T.r[id];
			uint32_t p = (uint32_t)r->part;
			uint64_t o = (uint64_t)r->off;
			if (o >= n0[p] + in[p] || T.ids[p][o] != UINT32_MAX) {
				pthread_mutex_unlock(&T.mu);
				fail_msg("message %u at %s[%u] offset %" PRIu64 ": not dense from the end "
					 "%" PRIu64 " (%" PRIu64 " messages), or twice", id, TOPIC, p, o,
					 n0[p], in[p]);
			}
			T.ids[p][o] = id;
		}
		pthread_mutex_unlock(&T.mu);
		for (uint32_t p = 0; p < T.nparts; p++)
			T.n[p] = n0[p] + in[p];
		chunk_from = to;
		/* A commit: for each partition, an offset in its log, made unique
		 * over the run by going up with every commit. */
		uint64_t vals[MAXP];
		for (uint32_t p = 0; p < T.nparts; p++) {
			uint64_t prev = 0;
			for (uint32_t i = T.nacked; i-- > 0;)
				if (T.acked[i].part == p) {
					prev = T.acked[i].value + 1;
					break;
				}
			vals[p] = prev > T.n[p] ? prev : T.n[p] - tu_rand(rng) % (T.n[p] - prev + 1);
		}
		ret = commit(vals);
		if (ret != 0)
			fail_msg("commit: %d", ret);
		assert_true(T.nacked + T.nparts <= MAX_COMMITS);
		for (uint32_t p = 0; p < T.nparts; p++) {
			struct commit cm = { p, vals[p], T.nacked };
			T.acked[T.nacked++] = cm;
			T.stored[T.nstored++] = cm;
		}
		(*commits)++;
	}
	ringmq_producer_free(prod);
}

/* ---- files ---- */

static uint8_t *read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		*len = 0;
		return NULL;
	}
	struct stat st;
	assert_int_equal(fstat(fd, &st), 0);
	*len = (size_t)st.st_size;
	uint8_t *buf = malloc(*len + 1);
	assert_non_null(buf);
	size_t got = 0;
	while (got < *len) {
		ssize_t n = pread(fd, buf + got, *len - got, (off_t)got);
		assert_true(n > 0);
		got += (size_t)n;
	}
	close(fd);
	return buf;
}

static void write_file(const char *path, const uint8_t *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, len, 0), (ssize_t)len);
	assert_int_equal(ftruncate(fd, (off_t)len), 0);
	close(fd);
}

/* The newest segment of a log directory: its base offset, or -1 if none. */
static int64_t newest_segment(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	int64_t best = -1;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name);
		if (l != 24 || strcmp(de->d_name + 20, ".log") != 0)
			continue;
		int64_t base = (int64_t)strtoull(de->d_name, NULL, 10);
		if (base > best)
			best = base;
	}
	closedir(d);
	return best;
}

struct bat {
	uint64_t pos, base;
	uint32_t len, count;
};

/* The whole batches of a segment from position 0, in sequence from `base`,
 * as recovery finds them; *end gets where they stop. Returns how many. */
static uint32_t whole_batches(const uint8_t *buf, size_t len, uint64_t base, struct bat *out,
			      uint32_t cap, uint64_t *end)
{
	uint64_t pos = 0, expect = base;
	uint32_t n = 0;
	while (pos < len) {
		size_t avail = len - pos;
		if (avail >= BATCH_HEADER_SIZE ? batch_header_is_zero(buf + pos) : false)
			break;
		struct batch_hdr h;
		if (batch_verify(buf + pos, avail, &h) != 0 || h.base_offset != expect)
			break;
		assert_true(n < cap);
		out[n++] = (struct bat){ pos, h.base_offset, h.length, h.record_count };
		pos += h.length;
		expect += h.record_count;
	}
	*end = pos;
	return n;
}

/* Bytes from `from` to the last non-zero byte (what recovery reports cut). */
static uint64_t nonzero_extent(const uint8_t *buf, size_t len, uint64_t from)
{
	for (size_t i = len; i > from; i--)
		if (buf[i - 1] != 0)
			return i - from;
	return 0;
}

/* The position of the last entry of the .idx's valid prefix (0 if none):
 * recovery scans from the last entry whose batch is whole, and trusts the
 * bytes before it, so the junk overwrites start at or after it. */
static uint64_t last_index_pos(const char *idx_path, uint64_t data_end)
{
	size_t len;
	uint8_t *buf = read_file(idx_path, &len);
	uint64_t last = 0, prev_rel = 0, prev_pos = 0;
	for (size_t i = 0; buf && i + 8 <= len; i += 8) {
		uint32_t rel = le32_load(buf + i), pos = le32_load(buf + i + 4);
		bool ok = pos < data_end &&
			  (i == 0 ? rel == 0 && pos == 0 : rel > prev_rel && pos > prev_pos);
		if (!ok)
			break;
		last = pos;
		prev_rel = rel;
		prev_pos = pos;
	}
	free(buf);
	return last;
}

enum kind { K_TRUNCATE, K_OVERWRITE, K_APPEND, K_NKINDS };
static const char *const kind_name[] = { "truncate", "overwrite", "append" };

/* What a round did to one file, and what recovery must make of it. */
struct damage {
	bool done;
	enum kind kind;
	char dir[512], seg[40];
	uint64_t seg_base;
	uint32_t nbatches, hit_first, hit_count; /* batches before damage; which it touched */
	uint64_t range_from, range_len;          /* bytes changed (truncate: cut off) */
	uint64_t old_size, new_size, data_end;    /* data_end: where the batches ended */
	uint64_t end_pos, end_offset;            /* where the whole batches stop */
	uint64_t cut_bytes;                      /* what recovery must report */
	uint32_t surviving;
	uint64_t lost_records, lost_whole_after; /* records cut; of which in whole batches */
};

#define MAX_BATCHES 65536u

/* Damages the newest segment of dir at random; fills d. */
static void damage(uint64_t *rng, const char *dir, struct damage *d)
{
	memset(d, 0, sizeof(*d));
	d->done = true;
	snprintf(d->dir, sizeof(d->dir), "%s", dir);
	int64_t base = newest_segment(dir);
	assert_true(base >= 0);
	d->seg_base = (uint64_t)base;
	char path[1024], idx[1024];
	snprintf(d->seg, sizeof(d->seg), "%020" PRIu64 ".log", d->seg_base);
	snprintf(path, sizeof(path), "%s/%s", dir, d->seg);
	snprintf(idx, sizeof(idx), "%s/%020" PRIu64 ".idx", dir, d->seg_base);
	size_t len;
	uint8_t *buf = read_file(path, &len);
	assert_non_null(buf);
	d->old_size = len;
	struct bat *b = calloc(MAX_BATCHES, sizeof(*b));
	assert_non_null(b);
	uint64_t end;
	uint32_t n = whole_batches(buf, len, d->seg_base, b, MAX_BATCHES, &end);
	/* Before the damage, the file is whole batches, then nothing but zeros
	 * (an earlier cut punched its range out and kept the file's size). */
	if (nonzero_extent(buf, len, end) != 0)
		fail_msg("%s: before the damage, whole batches end at %" PRIu64 " of %zu bytes, "
			 "and non-zero bytes follow", path, end, len);
	d->nbatches = n;
	d->data_end = end;
	d->kind = n == 0 ? K_APPEND : (enum kind)(tu_rand(rng) % K_NKINDS);
	uint32_t few = n < 4 ? n : 4;
	size_t nlen = len;
	uint8_t *nbuf;
	if (d->kind == K_TRUNCATE) {
		/* Strictly inside one of the last few batches. */
		uint32_t k = n - 1 - (uint32_t)(tu_rand(rng) % few);
		uint64_t at = b[k].pos + 1 + tu_rand(rng) % (b[k].len - 1);
		d->range_from = at;
		d->range_len = len - at;
		nlen = at;
		nbuf = malloc(nlen + 1);
		memcpy(nbuf, buf, nlen);
	} else if (d->kind == K_OVERWRITE) {
		uint64_t from_pos = last_index_pos(idx, len);
		uint32_t lo = n - few;
		while (lo < n && b[lo].pos < from_pos)
			lo++;
		if (lo == n)
			lo = n - 1; /* the batch at the last entry */
		uint32_t k = lo + (uint32_t)(tu_rand(rng) % (n - lo));
		uint64_t at = b[k].pos + tu_rand(rng) % b[k].len;
		uint64_t room = len - at, want = 1 + tu_rand(rng) % 256;
		d->range_from = at;
		d->range_len = want < room ? want : room;
		nbuf = malloc(nlen + 1);
		memcpy(nbuf, buf, nlen);
		for (uint64_t i = 0; i < d->range_len; i++) /* every byte changes */
			nbuf[at + i] ^= (uint8_t)(1 + tu_rand(rng) % 255);
	} else {
		uint64_t add = 1 + tu_rand(rng) % 300;
		d->range_from = len;
		d->range_len = add;
		nlen = len + add;
		nbuf = malloc(nlen + 1);
		memcpy(nbuf, buf, len);
		for (uint64_t i = 0; i < add; i++)
			nbuf[len + i] = (uint8_t)tu_rand(rng);
		nbuf[len] |= 1; /* not the zeros of unwritten space */
	}
	assert_non_null(nbuf);
	d->new_size = nlen;
	write_file(path, nbuf, nlen);

	/* Which batches the damage touched: the first of them and all after it
	 * go (offsets stay dense); those before it stay. */
	d->hit_first = n;
	for (uint32_t k = 0; k < n; k++) {
		bool hit = b[k].pos + b[k].len > d->range_from &&
			   b[k].pos < d->range_from + d->range_len;
		if (hit) {
			if (d->hit_first == n)
				d->hit_first = k;
			d->hit_count++;
		}
	}
	for (uint32_t k = d->hit_first; k < n; k++) {
		d->lost_records += b[k].count;
		bool hit = b[k].pos + b[k].len > d->range_from &&
			   b[k].pos < d->range_from + d->range_len;
		if (!hit)
			d->lost_whole_after += b[k].count;
	}

	/* What recovery must find, from the damaged bytes alone. */
	struct bat *nb = calloc(MAX_BATCHES, sizeof(*nb));
	assert_non_null(nb);
	uint32_t m = whole_batches(nbuf, nlen, d->seg_base, nb, MAX_BATCHES, &d->end_pos);
	d->surviving = m;
	d->end_offset = m ? nb[m - 1].base + nb[m - 1].count : d->seg_base;
	d->cut_bytes = nonzero_extent(nbuf, nlen, d->end_pos);
	/* The two views agree: whole batches are exactly those before the
	 * first damaged one, unchanged. */
	if (m != d->hit_first)
		fail_msg("%s: %u batches still whole, but the damage started in batch %u", path, m,
			 d->hit_first);
	for (uint32_t k = 0; k < m; k++)
		assert_memory_equal(&nb[k], &b[k], sizeof(nb[k]));
	assert_true(d->cut_bytes > 0); /* every kind leaves something to cut */
	free(b);
	free(nb);
	free(buf);
	free(nbuf);
}

/* The commits of GROUP that the (damaged) offsets store still holds in its
 * whole batches, in order; checked against T.stored, which then shrinks to
 * them. */
static void offsets_survivors(const char *dir)
{
	DIR *dd = opendir(dir);
	assert_non_null(dd);
	uint64_t bases[64];
	uint32_t nb = 0;
	struct dirent *de;
	while ((de = readdir(dd)) != NULL)
		if (strlen(de->d_name) == 24 && strcmp(de->d_name + 20, ".log") == 0 && nb < 64)
			bases[nb++] = strtoull(de->d_name, NULL, 10);
	closedir(dd);
	assert_true(nb == 1); /* 16 MiB segments: this test never fills one */
	char path[1024];
	snprintf(path, sizeof(path), "%s/%020" PRIu64 ".log", dir, bases[0]);
	size_t len;
	uint8_t *buf = read_file(path, &len);
	struct bat *b = calloc(MAX_BATCHES, sizeof(*b));
	assert_non_null(b);
	uint64_t end;
	uint32_t n = whole_batches(buf, len, bases[0], b, MAX_BATCHES, &end);
	uint32_t got = 0;
	uint8_t *scratch = malloc(1u << 20);
	for (uint32_t k = 0; k < n; k++) {
		struct batch_iter it;
		struct batch_record br;
		assert_int_equal(batch_iter_init(&it, buf + b[k].pos, scratch, 1u << 20), 0);
		int r;
		while ((r = batch_iter_next(&it, &br)) == 1) {
			const uint8_t *kp = br.key;
			size_t gl = strlen(GROUP), tl = strlen(TOPIC);
			if (br.key_len != 1 + 2 + gl + 2 + tl + 4 || kp[0] != 'C' ||
			    le16_load(kp + 1) != gl || memcmp(kp + 3, GROUP, gl) != 0 ||
			    le16_load(kp + 3 + gl) != tl || memcmp(kp + 5 + gl, TOPIC, tl) != 0 ||
			    br.value_len != 8)
				fail_msg("offsets store, offset %" PRIu64 ": a record this test did "
					 "not make (key %u bytes, '%c')", br.offset, br.key_len,
					 br.key_len ? kp[0] : '?');
			uint32_t part = le32_load(kp + 5 + gl + tl);
			uint64_t value = le64_load(br.value);
			if (got >= T.nstored || T.stored[got].part != part || T.stored[got].value != value)
				fail_msg("offsets store record %u: partition %u offset %" PRIu64
					 ", expected commit %u of %u", got, part, value, got, T.nstored);
			got++;
		}
		assert_int_equal(r, 0);
	}
	T.nstored = got;
	free(scratch);
	free(b);
	free(buf);
}

/* Checks the lines recovery logs for one log: `d` damaged it, or nothing
 * may be cut. `name` is the log's own line ("topic torn partition 1:" or
 * "offsets store:"). */
static void check_cut_lines(const char *log, const char *dir, const char *name,
			    const struct damage *d)
{
	char where[1024], what[160], own[160];
	snprintf(where, sizeof(where), "%s: ", dir);
	if (!d->done) {
		const char *any[] = { where, " cut ", NULL };
		const char *own_any[] = { name, "recovery cut", NULL };
		if (count_lines(log, any) + count_lines(log, own_any) != 0) {
			print_lines(log, " cut ");
			fail_msg("%s was not damaged, yet recovery cut it", dir);
		}
		return;
	}
	snprintf(what, sizeof(what), "%s: cut %" PRIu64 " bytes at position %" PRIu64 ": ", d->seg,
		 d->cut_bytes, d->end_pos);
	const char *lines[] = { where, what, NULL };
	if (strcmp(name, "offsets store:") == 0)
		snprintf(own, sizeof(own), "offsets store: recovery cut %" PRIu64 " bytes (",
			 d->cut_bytes);
	else
		snprintf(own, sizeof(own), "%s recovery cut %" PRIu64 " bytes at %" PRIu64 " (", name,
			 d->cut_bytes, d->end_pos);
	const char *own_lines[] = { own, NULL };
	int n1 = count_lines(log, lines), n2 = count_lines(log, own_lines);
	if (n1 != 1 || n2 != 1) {
		printf("# recovery's lines about %s:\n", dir);
		print_lines(log, " cut ");
		fail_msg("expected one \"%s\" line in %s and one \"%s\" line; found %d and %d", what,
			 dir, own, n1, n2);
	}
}

/* ---- the test ---- */

static int setup(void **state)
{
	(void)state;
	memset(&T, 0, sizeof(T));
	pthread_mutex_init(&T.mu, NULL);
	T.r = calloc(MAX_MSGS, sizeof(*T.r));
	T.running = true;
	return T.r ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	if (T.c_open)
		tc_close(&T.c);
	T.c_open = false;
	if (T.started && T.b.pid > 0)
		tb_stop(&T.b);
	if (T.running && T.b.log_path[0] != '\0') {
		printf("# the broker's log of the failed run: %s (kept, with its data dir %s)\n",
		       T.b.log_path, T.b.dir ? T.b.dir : "?");
	} else if (T.started) {
		tb_cleanup(&T.b);
	}
	for (int p = 0; p < MAXP; p++)
		free(T.ids[p]);
	free(T.r);
	pthread_mutex_destroy(&T.mu);
	return 0;
}

static void test_torn_tails(void **state)
{
	(void)state;
	const char *torture = getenv("RINGMQ_TORTURE");
	int rounds = torture && strcmp(torture, "1") == 0 ? 20 : 6;
	uint64_t rng = tu_seed("test_torn_tails");
	int64_t t0 = tu_mono_ms();
	T.nparts = 1 + (uint32_t)(tu_rand(&rng) % MAXP);

	start(true);
	const char *kv[] = { "flush", "always", "segment.bytes", SEGMENT_BYTES,
			     "max.message.bytes", SEGMENT_BYTES, NULL };
	assert_int_equal(tc_create_topic(&T.c, TOPIC, T.nparts, kv), ERR_NONE);
	printf("# topic %s: %u partition(s), segment.bytes %s, flush always; data %s\n", TOPIC,
	       T.nparts, SEGMENT_BYTES, T.b.dir);

	unsigned kinds[2][K_NKINDS] = { { 0 } }; /* [partition, offsets][kind] */
	uint64_t total_lost = 0, total_cut = 0, total_msgs = 0;
	for (int round = 0; round < rounds; round++) {
		uint32_t count = 200 + (uint32_t)(tu_rand(&rng) % 301);
		uint32_t chunks = 2 + (uint32_t)(tu_rand(&rng) % 3), commits;
		uint64_t before[MAXP];
		memcpy(before, T.n, sizeof(before));
		produce_round(&rng, count, chunks, &commits);
		total_msgs += count;
		bool kill9 = round % 2 == 1;
		stop(kill9);

		/* What to damage: a partition, the offsets store, or both. */
		unsigned pick = (unsigned)(tu_rand(&rng) % 10);
		bool hit_part = pick < 8, hit_offsets = pick >= 5;
		uint32_t victim = (uint32_t)(tu_rand(&rng) % T.nparts);
		struct damage dp[MAXP], doff;
		memset(dp, 0, sizeof(dp));
		memset(&doff, 0, sizeof(doff));
		char dir[512];
		uint64_t had[MAXP];
		memcpy(had, T.n, sizeof(had));
		if (hit_part) {
			snprintf(dir, sizeof(dir), "%s/%s/%u", T.b.dir, TOPIC, victim);
			damage(&rng, dir, &dp[victim]);
			struct damage *d = &dp[victim];
			kinds[0][d->kind]++;
			/* The surviving batches hold what the model says; the rest goes. */
			assert_true(d->end_offset <= T.n[victim]);
			assert_int_equal(T.n[victim] - d->end_offset, d->lost_records);
			T.n[victim] = d->end_offset;
			total_lost += d->lost_records;
			total_cut += d->cut_bytes;
		}
		uint32_t stored_before = T.nstored;
		if (hit_offsets) {
			snprintf(dir, sizeof(dir), "%s/.offsets", T.b.dir);
			damage(&rng, dir, &doff);
			kinds[1][doff.kind]++;
			total_cut += doff.cut_bytes;
			offsets_survivors(dir);
		}

		printf("# round %d: %u messages (%u partition(s): ", round, count, T.nparts);
		for (uint32_t p = 0; p < T.nparts; p++)
			printf("%s%" PRIu64 "..%" PRIu64, p ? ", " : "", before[p], had[p]);
		printf("), %u commits, %s\n", commits, kill9 ? "SIGKILL" : "SIGTERM");
		for (int w = 0; w < 2; w++) {
			const struct damage *d = w == 0 ? (hit_part ? &dp[victim] : NULL)
							: (hit_offsets ? &doff : NULL);
			if (d == NULL)
				continue;
			if (w == 0)
				printf("#   partition %u", victim);
			else
				printf("#   offsets store");
			printf(" %s (%u batches, %" PRIu64 " bytes", d->seg, d->nbatches, d->data_end);
			if (d->old_size != d->data_end)
				printf(", then zeros to %" PRIu64, d->old_size);
			printf("): %s", kind_name[d->kind]);
			if (d->kind == K_TRUNCATE)
				printf(" at %" PRIu64, d->range_from);
			else if (d->kind == K_OVERWRITE)
				printf(" %" PRIu64 " bytes at %" PRIu64, d->range_len, d->range_from);
			else
				printf(" %" PRIu64 " bytes", d->range_len);
			printf("; %u batch(es) hit, %u survive; must cut %" PRIu64 " bytes at %" PRIu64,
			       d->hit_count, d->surviving, d->cut_bytes, d->end_pos);
			if (w == 0)
				printf("; lost %" PRIu64 " messages = expected %" PRIu64
				       " (%" PRIu64 " in damaged batches, %" PRIu64
				       " in whole batches after them); end %" PRIu64 "\n",
				       had[victim] - T.n[victim], d->lost_records,
				       d->lost_records - d->lost_whole_after, d->lost_whole_after,
				       d->end_offset);
			else
				printf("; commit records %u -> %u (of %u acknowledged)\n",
				       stored_before, T.nstored, T.nacked);
		}

		/* Restart and check. */
		start(false);
		char *log = new_log();
		for (uint32_t p = 0; p < T.nparts; p++) {
			char name[64];
			snprintf(dir, sizeof(dir), "%s/%s/%u", T.b.dir, TOPIC, p);
			snprintf(name, sizeof(name), "topic %s partition %u:", TOPIC, p);
			check_cut_lines(log, dir, name, &dp[p]);
		}
		snprintf(dir, sizeof(dir), "%s/.offsets", T.b.dir);
		check_cut_lines(log, dir, "offsets store:", &doff);
		const char *bad[] = { "AddressSanitizer", "runtime error:", "Assertion", NULL };
		for (int i = 0; bad[i]; i++)
			assert_int_equal(count_lines(log, (const char *[]){ bad[i], NULL }), 0);
		free(log);
		for (uint32_t p = 0; p < T.nparts; p++)
			read_back(p);
		for (uint32_t p = 0; p < T.nparts; p++) {
			int64_t want = -1;
			for (uint32_t i = T.nstored; i-- > 0;)
				if (T.stored[i].part == p) {
					want = (int64_t)T.stored[i].value;
					break;
				}
			int64_t got = committed(p);
			/* Never garbage, never newer than the last acknowledged:
			 * one of the acknowledged commits, and the newest that
			 * survived. */
			bool known = got == -1;
			for (uint32_t i = 0; i < T.nacked && !known; i++)
				known = T.acked[i].part == p && (int64_t)T.acked[i].value == got;
			if (!known || got != want)
				fail_msg("partition %u: committed offset %" PRId64 " after the restart; "
					 "the newest surviving commit is %" PRId64 " (%s)", p, got, want,
					 known ? "an older or newer acknowledged one" : "never acknowledged");
		}
		/* The next round (or the last produce below) checks that offsets
		 * go on from these ends. */
	}
	/* One more batch of messages after the last damage, read back. */
	uint32_t commits;
	produce_round(&rng, 50, 1, &commits);
	for (uint32_t p = 0; p < T.nparts; p++)
		read_back(p);
	stop(false);
	printf("# %d rounds in %" PRId64 " ms: %" PRIu64 " messages produced, %" PRIu64
	       " lost with damaged batches, %" PRIu64 " bytes cut\n", rounds, tu_mono_ms() - t0,
	       total_msgs + 50, total_lost, total_cut);
	printf("# damage: partitions truncate %u, overwrite %u, append %u; offsets store "
	       "truncate %u, overwrite %u, append %u\n", kinds[0][0], kinds[0][1], kinds[0][2],
	       kinds[1][0], kinds[1][1], kinds[1][2]);
	T.running = false;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_torn_tails, setup, teardown),
	};
	if (getenv("TEST_FILTER"))
		cmocka_set_test_filter(getenv("TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
