/* test_group.c — consumer groups through libringmq against a real broker:
 * fan-out to every group, load sharing inside a group with nothing lost or
 * duplicated as members join mid-stream, and a member killed with SIGKILL
 * whose partitions move to the others, which resume at its last commit;
 * a start from auto.offset.reset=latest is committed, and a committed
 * position the log no longer has falls back to auto.offset.reset. */
#include <errno.h>
#include <stdbool.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/ringmq.h"
#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

#define N 6000 /* messages, numbered 0..N-1 in their values */

struct fx {
	struct tbroker b;
	struct ringmq_config *cfg;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tb_start(&f->b, NULL, NULL), 0);
	f->cfg = ringmq_config_new();
	char err[256];
	assert_int_equal(ringmq_config_set(f->cfg, "bootstrap.servers", f->b.addr, err, sizeof(err)),
			 0);
	assert_int_equal(ringmq_config_set(f->cfg, "session.timeout.ms", "1500", err, sizeof(err)),
			 0);
	assert_int_equal(ringmq_config_set(f->cfg, "fetch.max.wait.ms", "50", err, sizeof(err)), 0);
	struct ringmq_admin *a = ringmq_admin_new(f->cfg, err, sizeof(err));
	assert_int_equal(ringmq_topic_create(a, "orders", 6, NULL, 0, err, sizeof(err)), 0);
	ringmq_admin_free(a);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	ringmq_config_free(f->cfg);
	assert_int_equal(tb_stop(&f->b), 0);
	tb_cleanup(&f->b);
	free(f);
	return 0;
}

static void produce(struct fx *f, int from, int to)
{
	char err[256];
	struct ringmq_producer *p = ringmq_producer_new(f->cfg, err, sizeof(err));
	assert_non_null(p);
	for (int i = from; i < to; i++) {
		char key[16], val[16];
		int kl = snprintf(key, sizeof(key), "k%d", i % 50);
		int vl = snprintf(val, sizeof(val), "%d", i);
		assert_int_equal(ringmq_produce(p, "orders", RINGMQ_PARTITION_ANY, key, (size_t)kl,
						val, (size_t)vl, NULL, 0, 0, NULL),
				 0);
	}
	assert_int_equal(ringmq_producer_flush(p, 30000), 0);
	ringmq_producer_free(p);
}

static struct ringmq_consumer *member(struct fx *f, const char *group)
{
	char err[256];
	struct ringmq_consumer *c = ringmq_consumer_new(f->cfg, err, sizeof(err));
	assert_non_null(c);
	const char *topics[] = { "orders" };
	assert_int_equal(ringmq_consumer_subscribe(c, group, topics, 1, err, sizeof(err)), 0);
	return c;
}

/* One poll; counts what arrived into seen[]. Returns messages. */
static size_t poll_count(struct ringmq_consumer *c, int *seen, int timeout_ms)
{
	struct ringmq_message m[512];
	size_t n;
	char err[256];
	int ret = ringmq_consumer_poll(c, timeout_ms, m, 512, &n, err, sizeof(err));
	if (ret != 0)
		fail_msg("poll: %s", err);
	for (size_t i = 0; i < n; i++) {
		char buf[16];
		size_t l = m[i].value_len < 15 ? m[i].value_len : 15;
		memcpy(buf, m[i].value, l);
		buf[l] = '\0';
		int v = atoi(buf);
		assert_true(v >= 0 && v < N);
		seen[v]++;
	}
	return n;
}

static int count_seen(const int *seen, int *dups)
{
	int got = 0;
	*dups = 0;
	for (int i = 0; i < N; i++) {
		got += seen[i] > 0;
		*dups += seen[i] > 1 ? seen[i] - 1 : 0;
	}
	return got;
}

static void test_fan_out(void **state)
{
	struct fx *f = *state;
	produce(f, 0, N);
	struct ringmq_consumer *inv = member(f, "inventory");
	struct ringmq_consumer *note = member(f, "notification");
	int *a = calloc(N, sizeof(int)), *b = calloc(N, sizeof(int)), dups;
	int64_t end = tu_mono_ms() + 20000;
	while (tu_mono_ms() < end && (count_seen(a, &dups) < N || count_seen(b, &dups) < N)) {
		poll_count(inv, a, 50);
		poll_count(note, b, 50);
	}
	assert_int_equal(count_seen(a, &dups), N);
	assert_int_equal(dups, 0);
	assert_int_equal(count_seen(b, &dups), N);
	assert_int_equal(dups, 0);
	ringmq_consumer_free(inv);
	ringmq_consumer_free(note);
	free(a);
	free(b);
}

static void test_share_join_midstream(void **state)
{
	struct fx *f = *state;
	produce(f, 0, N / 3);
	int *seen = calloc(N, sizeof(int)), dups;
	struct ringmq_consumer *m[3] = { member(f, "g"), NULL, NULL };
	int64_t end = tu_mono_ms() + 30000;
	int phase = 0;
	while (tu_mono_ms() < end && count_seen(seen, &dups) < N) {
		for (int i = 0; i < 3; i++)
			if (m[i])
				poll_count(m[i], seen, 20);
		int got = count_seen(seen, &dups);
		/* Members join while messages keep coming. */
		if (phase == 0 && got >= N / 6) {
			m[1] = member(f, "g");
			produce(f, N / 3, 2 * N / 3);
			phase = 1;
		} else if (phase == 1 && got >= N / 2) {
			m[2] = member(f, "g");
			produce(f, 2 * N / 3, N);
			phase = 2;
		}
	}
	assert_int_equal(count_seen(seen, &dups), N);
	printf("# 3 members: %d messages, %d delivered twice\n", N, dups);
	assert_int_equal(dups, 0); /* graceful rebalances commit before release */
	/* Six partitions over three members: two each, once stable. */
	for (int round = 0; round < 50; round++)
		for (int i = 0; i < 3; i++)
			poll_count(m[i], seen, 10);
	for (int i = 0; i < 3; i++) {
		struct ringmq_topic_partition *tps;
		size_t n;
		assert_int_equal(ringmq_consumer_assignment(m[i], &tps, &n), 0);
		assert_int_equal(n, 2);
		free(tps);
		ringmq_consumer_free(m[i]);
	}
	free(seen);
}

/* A member process that consumes some messages, commits exactly those, tells
 * the parent how many, then only heartbeats until it is killed. */
static pid_t child_member(struct fx *f, int pipe_w)
{
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid != 0)
		return pid;
	char err[256];
	struct ringmq_config *cfg = ringmq_config_dup(f->cfg);
	ringmq_config_set(cfg, "enable.auto.commit", "false", err, sizeof(err));
	struct ringmq_consumer *c = ringmq_consumer_new(cfg, err, sizeof(err));
	const char *topics[] = { "orders" };
	if (ringmq_consumer_subscribe(c, "k", topics, 1, err, sizeof(err)) != 0)
		_exit(2);
	int got = 0;
	bool told = false;
	int64_t end = tu_mono_ms() + 20000;
	while (tu_mono_ms() < end) {
		struct ringmq_message m[64];
		size_t n;
		/* After telling, poll for nothing: heartbeats only. */
		if (ringmq_consumer_poll(c, 50, m, told ? 0 : 64, &n, err, sizeof(err)) != 0)
			_exit(3);
		got += (int)n;
		if (!told && got > 0) {
			if (ringmq_consumer_commit(c, err, sizeof(err)) != 0)
				_exit(4);
			if (write(pipe_w, &got, sizeof(got)) != sizeof(got))
				_exit(5);
			told = true;
		}
	}
	_exit(0);
}

static void test_killed_member(void **state)
{
	struct fx *f = *state;
	produce(f, 0, N);
	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	pid_t pid = child_member(f, pfd[1]);
	int committed_by_child = 0;
	assert_int_equal(read(pfd[0], &committed_by_child, sizeof(int)), sizeof(int));
	struct ringmq_consumer *c = member(f, "k");
	int *seen = calloc(N, sizeof(int)), dups;
	/* Both hold partitions for a while... */
	for (int i = 0; i < 40; i++)
		poll_count(c, seen, 20);
	struct ringmq_topic_partition *tps;
	size_t n;
	assert_int_equal(ringmq_consumer_assignment(c, &tps, &n), 0);
	free(tps);
	assert_true(n > 0 && n < 6);
	/* ...then the other is killed: its partitions come here within the
	 * session timeout, and reading resumes at its last commit. */
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	int64_t t0 = tu_mono_ms();
	int64_t moved = -1;
	while (tu_mono_ms() - t0 < 10000 && count_seen(seen, &dups) + committed_by_child < N) {
		poll_count(c, seen, 20);
		assert_int_equal(ringmq_consumer_assignment(c, &tps, &n), 0);
		free(tps);
		if (n == 6 && moved < 0)
			moved = tu_mono_ms() - t0;
	}
	printf("# partitions moved %lld ms after the SIGKILL (session 1500 ms); the dead member "
	       "had committed %d\n", (long long)moved, committed_by_child);
	assert_true(moved >= 0 && moved < 6000);
	/* Exactly what it had not committed is read here: nothing twice,
	 * nothing missing. */
	assert_int_equal(dups, 0);
	assert_int_equal(count_seen(seen, &dups) + committed_by_child, N);
	ringmq_consumer_free(c);
	close(pfd[0]);
	close(pfd[1]);
	free(seen);
}

/* Polls until the consumer holds all 6 partitions. */
static void await_assignment(struct ringmq_consumer *c, int *seen)
{
	int64_t end = tu_mono_ms() + 10000;
	size_t n = 0;
	while (n != 6 && tu_mono_ms() < end) {
		poll_count(c, seen, 50);
		struct ringmq_topic_partition *tps;
		assert_int_equal(ringmq_consumer_assignment(c, &tps, &n), 0);
		free(tps);
	}
	assert_int_equal(n, 6);
}

/* A group that starts at the end and reads nothing before it stops must
 * find, next time, what was produced meanwhile: the start is committed. */
static void test_latest_start_is_committed(void **state)
{
	struct fx *f = *state;
	char err[256];
	assert_int_equal(ringmq_config_set(f->cfg, "auto.offset.reset", "latest", err, sizeof(err)),
			 0);
	produce(f, 0, 100);
	int *seen = calloc(N, sizeof(int)), dups;
	struct ringmq_consumer *c = member(f, "late");
	await_assignment(c, seen);
	assert_int_equal(count_seen(seen, &dups), 0);
	assert_int_equal(ringmq_consumer_close(c, err, sizeof(err)), 0);
	ringmq_consumer_free(c);
	produce(f, 100, 300);
	c = member(f, "late");
	int64_t end = tu_mono_ms() + 15000;
	while (count_seen(seen, &dups) < 200 && tu_mono_ms() < end)
		poll_count(c, seen, 50);
	assert_int_equal(count_seen(seen, &dups), 200);
	assert_int_equal(dups, 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(seen[i], 0);
	ringmq_consumer_free(c);
	free(seen);
}

/* A committed offset past the log's end (as after the topic was made
 * anew, or retention passed a slow group) is not a dead end: the member
 * goes on from auto.offset.reset (earliest here) and commits that. */
static void test_lost_position_resets(void **state)
{
	struct fx *f = *state;
	produce(f, 0, 60);
	struct tclient tc;
	assert_int_equal(tc_connect(&tc, f->b.addr), 0);
	struct proto_commit_part cp[6];
	for (uint32_t p = 0; p < 6; p++)
		cp[p] = (struct proto_commit_part){ pstr_c("orders"), p, 1000 };
	union proto_request req = { .commit_offsets = { pstr_c("gone"), pstr_c(""), 0, 6, cp } };
	struct proto_resp_hdr h;
	union proto_response r;
	assert_int_equal(tc_call(&tc, API_COMMIT_OFFSETS, &req, 5000, &h, &r), 0);
	assert_int_equal(h.err, 0);
	tc_close(&tc);
	int *seen = calloc(N, sizeof(int)), dups;
	struct ringmq_consumer *c = member(f, "gone");
	int64_t end = tu_mono_ms() + 15000;
	while (count_seen(seen, &dups) < 60 && tu_mono_ms() < end)
		poll_count(c, seen, 50);
	assert_int_equal(count_seen(seen, &dups), 60);
	assert_int_equal(dups, 0);
	char err[256];
	assert_int_equal(ringmq_consumer_close(c, err, sizeof(err)), 0);
	ringmq_consumer_free(c);
	struct ringmq_admin *a = ringmq_admin_new(f->cfg, err, sizeof(err));
	struct ringmq_group_info *gi;
	assert_int_equal(ringmq_group_describe(a, "gone", &gi, err, sizeof(err)), 0);
	assert_int_equal(gi->nparts, 6);
	for (size_t i = 0; i < gi->nparts; i++) {
		assert_int_equal(gi->parts[i].committed, gi->parts[i].log_end);
		assert_int_equal(gi->parts[i].lag, 0);
	}
	ringmq_groups_free(gi, 1);
	ringmq_admin_free(a);
	free(seen);
}

/* With auto-commit off, a commit_async made while another is in flight
 * is sent once that one is answered, not dropped. */
static void test_commit_async_queued(void **state)
{
	struct fx *f = *state;
	char err[256];
	assert_int_equal(ringmq_config_set(f->cfg, "enable.auto.commit", "false", err,
					   sizeof(err)), 0);
	produce(f, 0, 200);
	int *seen = calloc(N, sizeof(int)), dups;
	struct ringmq_consumer *c = member(f, "manual");
	int64_t end = tu_mono_ms() + 15000;
	while (count_seen(seen, &dups) < 200 && tu_mono_ms() < end) {
		/* Few messages a poll, so that commits overlap. */
		struct ringmq_message m[10];
		size_t n;
		assert_int_equal(ringmq_consumer_poll(c, 50, m, 10, &n, err, sizeof(err)), 0);
		for (size_t i = 0; i < n; i++) {
			char v[16];
			size_t l = m[i].value_len < 15 ? m[i].value_len : 15;
			memcpy(v, m[i].value, l);
			v[l] = '\0';
			seen[atoi(v)]++;
		}
		/* Twice: the second finds the first in flight. */
		assert_int_equal(ringmq_consumer_commit_async(c, err, sizeof(err)), 0);
		assert_int_equal(ringmq_consumer_commit_async(c, err, sizeof(err)), 0);
	}
	assert_int_equal(count_seen(seen, &dups), 200);
	struct ringmq_admin *a = ringmq_admin_new(f->cfg, err, sizeof(err));
	int64_t lag = -1;
	end = tu_mono_ms() + 5000;
	while (lag != 0 && tu_mono_ms() < end) {
		poll_count(c, seen, 50);
		struct ringmq_group_info *gi;
		assert_int_equal(ringmq_group_describe(a, "manual", &gi, err, sizeof(err)), 0);
		lag = 0;
		for (size_t i = 0; i < gi->nparts; i++)
			lag += gi->parts[i].committed == gi->parts[i].log_end ? 0 : 1;
		ringmq_groups_free(gi, 1);
	}
	assert_int_equal(lag, 0);
	ringmq_admin_free(a);
	ringmq_consumer_free(c);
	free(seen);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fan_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_share_join_midstream, setup, teardown),
		cmocka_unit_test_setup_teardown(test_killed_member, setup, teardown),
		cmocka_unit_test_setup_teardown(test_latest_start_is_committed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lost_position_resets, setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_async_queued, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
