/* test_groups.c — the consumer-group coordinator over the wire, against a
 * real ringmqd: assignment and handover, session expiry, zombie fencing,
 * durable commits across kill -9, reset and delete, new partitions, deleted
 * topics, and compaction of the offsets store. */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/tbroker.h"
#include "tests/unit/testutil.h"

struct member {
	struct tclient c;
	char id[64];
	uint32_t epoch;
	struct proto_tp owned[64];
	char topics[64][32];
	uint32_t nowned;
};

struct fx {
	struct tbroker b;
	struct tclient admin;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tb_start(&f->b, NULL, NULL), 0);
	assert_int_equal(tc_connect(&f->admin, f->b.addr), 0);
	assert_int_equal(tc_create_topic(&f->admin, "orders", 6, NULL), ERR_NONE);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	tc_close(&f->admin);
	if (f->b.pid > 0)
		assert_int_equal(tb_stop(&f->b), 0);
	tb_cleanup(&f->b);
	free(f);
	return 0;
}

static void join(struct fx *f, struct member *m, const char *group, uint32_t session_ms)
{
	memset(m, 0, sizeof(*m));
	assert_int_equal(tc_connect(&m->c, f->b.addr), 0);
	struct pstr topics[] = { pstr_c("orders") };
	union proto_request req = { .join_group = { pstr_c(group), pstr_c(""), pstr_c("test"),
						    session_ms, 1, topics } };
	struct proto_resp_hdr h;
	union proto_response r;
	assert_int_equal(tc_call(&m->c, API_JOIN_GROUP, &req, 5000, &h, &r), 0);
	assert_int_equal(h.err, 0);
	snprintf(m->id, sizeof(m->id), "%.*s", (int)r.join_group.member_id.len,
		 r.join_group.member_id.p);
	m->epoch = r.join_group.member_epoch;
}

/* One heartbeat; the member then holds exactly what it was assigned.
 * Returns the response error. */
static int heartbeat(struct member *m, const char *group)
{
	union proto_request req = { .heartbeat = { pstr_c(group), pstr_c(m->id), m->epoch,
						   m->nowned, m->owned } };
	struct proto_resp_hdr h;
	union proto_response r;
	assert_int_equal(tc_call(&m->c, API_HEARTBEAT, &req, 5000, &h, &r), 0);
	if (h.err)
		return h.err;
	m->epoch = r.heartbeat.member_epoch;
	m->nowned = r.heartbeat.nassigned;
	for (uint32_t i = 0; i < m->nowned; i++) {
		snprintf(m->topics[i], sizeof(m->topics[i]), "%.*s",
			 (int)r.heartbeat.assigned[i].topic.len, r.heartbeat.assigned[i].topic.p);
		m->owned[i] = (struct proto_tp){ pstr_c(m->topics[i]),
						 r.heartbeat.assigned[i].partition };
	}
	return 0;
}

static bool owns(const struct member *m, uint32_t p)
{
	for (uint32_t i = 0; i < m->nowned; i++)
		if (m->owned[i].partition == p)
			return true;
	return false;
}

/* Heartbeats all members until their holdings settle. */
static void settle(struct member **ms, int n, const char *group)
{
	for (int round = 0; round < 20; round++)
		for (int i = 0; i < n; i++)
			assert_int_equal(heartbeat(ms[i], group), 0);
}

static int commit(struct member *m, const char *group, uint32_t part, uint64_t off,
		  uint16_t *perr)
{
	struct proto_commit_part cp = { pstr_c("orders"), part, off };
	union proto_request req = { .commit_offsets = { pstr_c(group), pstr_c(m->id), m->epoch, 1,
							&cp } };
	struct proto_resp_hdr h;
	union proto_response r;
	assert_int_equal(tc_call(&m->c, API_COMMIT_OFFSETS, &req, 5000, &h, &r), 0);
	if (h.err == 0)
		*perr = r.commit_offsets.parts[0].err;
	return h.err;
}

static int64_t committed(struct tclient *c, const char *group, uint32_t part)
{
	struct proto_tp tp = { pstr_c("orders"), part };
	union proto_request req = { .fetch_offsets = { pstr_c(group), 1, &tp } };
	struct proto_resp_hdr h;
	union proto_response r;
	assert_int_equal(tc_call(c, API_FETCH_OFFSETS, &req, 5000, &h, &r), 0);
	assert_int_equal(h.err, 0);
	return r.fetch_offsets.parts[0].offset;
}

static void test_share_and_handover(void **state)
{
	struct fx *f = *state;
	struct member a, b, c;
	join(f, &a, "g", 10000);
	struct member *ms[3] = { &a, &b, &c };
	settle(ms, 1, "g");
	assert_int_equal(a.nowned, 6);
	/* A second member: half move, and only after a releases them. */
	join(f, &b, "g", 10000);
	assert_int_equal(heartbeat(&b, "g"), 0);
	assert_int_equal(b.nowned, 0); /* a still holds everything */
	settle(ms, 2, "g");
	assert_int_equal(a.nowned, 3);
	assert_int_equal(b.nowned, 3);
	join(f, &c, "g", 10000);
	settle(ms, 3, "g");
	for (uint32_t p = 0; p < 6; p++) /* (G1): exactly one owner each */
		assert_int_equal(owns(&a, p) + owns(&b, p) + owns(&c, p), 1);
	assert_int_equal(a.nowned + b.nowned + c.nowned, 6);
	assert_true(a.nowned == 2 && b.nowned == 2 && c.nowned == 2);
	for (int i = 0; i < 3; i++)
		tc_close(&ms[i]->c);
}

static void test_expiry_zombie_and_durable_commits(void **state)
{
	struct fx *f = *state;
	struct member a, b;
	join(f, &a, "g", 1000);
	join(f, &b, "g", 10000);
	struct member *ms[2] = { &a, &b };
	settle(ms, 2, "g");
	assert_int_equal(a.nowned, 3);
	uint32_t pa = a.owned[0].partition;
	uint16_t perr;
	assert_int_equal(commit(&a, "g", pa, 42, &perr), 0);
	assert_int_equal(perr, ERR_NONE);
	assert_int_equal(committed(&f->admin, "g", pa), 42);
	/* b may not commit a's partition. */
	assert_int_equal(commit(&b, "g", pa, 7, &perr), 0);
	assert_int_equal(perr, ERR_NOT_OWNER);
	/* a stops heartbeating: after its 1 s session b gets everything. */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 100 && b.nowned < 6; i++) {
		usleep(50000);
		assert_int_equal(heartbeat(&b, "g"), 0);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms_moved = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	printf("# partitions moved %ld ms after the member stopped (session 1000 ms)\n",
	       ms_moved);
	assert_int_equal(b.nowned, 6);
	/* The zombie wakes up: its commit and heartbeat are refused. */
	assert_int_equal(commit(&a, "g", pa, 99, &perr), ERR_UNKNOWN_MEMBER);
	assert_int_equal(heartbeat(&a, "g"), ERR_UNKNOWN_MEMBER);
	assert_int_equal(committed(&f->admin, "g", pa), 42);
	/* b resumes at a's last commit and commits on. */
	assert_int_equal(commit(&b, "g", pa, 50, &perr), 0);
	assert_int_equal(perr, ERR_NONE);
	/* Acknowledged commits survive kill -9. */
	tc_close(&a.c);
	tc_close(&b.c);
	tc_close(&f->admin);
	tb_kill9(&f->b);
	assert_int_equal(tb_start(&f->b, f->b.dir, NULL), 0);
	assert_int_equal(tc_connect(&f->admin, f->b.addr), 0);
	assert_int_equal(committed(&f->admin, "g", pa), 50);
}

static void test_reset_and_delete(void **state)
{
	struct fx *f = *state;
	uint32_t len;
	uint8_t *batch = tu_batch(10, 20, 1, 1000, false, &len);
	for (uint32_t p = 0; p < 6; p++)
		assert_int_equal(tc_produce(&f->admin, "orders", p, PROTO_ACKS_ALL, batch, len, NULL),
				 0);
	free(batch);
	struct member a;
	join(f, &a, "g", 10000);
	struct member *ms[1] = { &a };
	settle(ms, 1, "g");
	/* Reset refuses while the group has live members. */
	union proto_request req = { .reset_offsets = { pstr_c("g"), pstr_c("orders"),
						       PROTO_RESET_LATEST, 0 } };
	struct proto_resp_hdr h;
	union proto_response r;
	assert_int_equal(tc_call(&f->admin, API_RESET_OFFSETS, &req, 5000, &h, &r), 0);
	assert_int_equal(h.err, ERR_GROUP_NOT_EMPTY);
	union proto_request lv = { .leave_group = { pstr_c("g"), pstr_c(a.id) } };
	assert_int_equal(tc_call(&a.c, API_LEAVE_GROUP, &lv, 5000, &h, NULL), 0);
	assert_int_equal(h.err, 0);
	assert_int_equal(tc_call(&f->admin, API_RESET_OFFSETS, &req, 5000, &h, &r), 0);
	assert_int_equal(h.err, 0);
	assert_int_equal(committed(&f->admin, "g", 3), 10);
	req.reset_offsets.mode = PROTO_RESET_OFFSET;
	req.reset_offsets.value = 4;
	assert_int_equal(tc_call(&f->admin, API_RESET_OFFSETS, &req, 5000, &h, &r), 0);
	assert_int_equal(committed(&f->admin, "g", 0), 4);
	req.reset_offsets.mode = PROTO_RESET_TIME;
	req.reset_offsets.value = 1007;
	assert_int_equal(tc_call(&f->admin, API_RESET_OFFSETS, &req, 5000, &h, &r), 0);
	assert_int_equal(committed(&f->admin, "g", 0), 7);
	req.reset_offsets.mode = PROTO_RESET_EARLIEST;
	assert_int_equal(tc_call(&f->admin, API_RESET_OFFSETS, &req, 5000, &h, &r), 0);
	assert_int_equal(committed(&f->admin, "g", 5), 0);

	union proto_request d = { .describe_group = { pstr_c("g") } };
	assert_int_equal(tc_call(&f->admin, API_DESCRIBE_GROUP, &d, 5000, &h, &r), 0);
	assert_int_equal(h.err, 0);
	assert_true(pstr_eq(r.describe_group.state, "empty"));
	assert_int_equal(r.describe_group.nparts, 6);
	union proto_request del = { .delete_group = { pstr_c("g") } };
	assert_int_equal(tc_call(&f->admin, API_DELETE_GROUP, &del, 5000, &h, NULL), 0);
	assert_int_equal(h.err, 0);
	assert_int_equal(tc_call(&f->admin, API_DESCRIBE_GROUP, &d, 5000, &h, &r), 0);
	assert_int_equal(h.err, ERR_UNKNOWN_GROUP);
	/* The deletion is durable too. */
	assert_int_equal(tb_stop(&f->b), 0);
	tc_close(&f->admin);
	assert_int_equal(tb_start(&f->b, f->b.dir, NULL), 0);
	assert_int_equal(tc_connect(&f->admin, f->b.addr), 0);
	assert_int_equal(tc_call(&f->admin, API_DESCRIBE_GROUP, &d, 5000, &h, &r), 0);
	assert_int_equal(h.err, ERR_UNKNOWN_GROUP);
	tc_close(&a.c);
}

/* Restarts the fixture's broker on its data dir with extra config lines. */
static void restart_with(struct fx *f, const char *conf_text)
{
	tc_close(&f->admin);
	assert_int_equal(tb_stop(&f->b), 0);
	const char *args[] = { "--config", NULL, NULL };
	char conf[600];
	if (conf_text != NULL) {
		snprintf(conf, sizeof(conf), "%s/.test.conf", f->b.dir); /* not a topic */
		FILE *cf = fopen(conf, "w");
		assert_non_null(cf);
		fputs(conf_text, cf);
		fclose(cf);
		args[1] = conf;
	}
	assert_int_equal(tb_start(&f->b, f->b.dir, conf_text ? args : NULL), 0);
	assert_int_equal(tc_connect(&f->admin, f->b.addr), 0);
}

static int simple_call(struct tclient *c, uint16_t api, const union proto_request *req)
{
	struct proto_resp_hdr h;
	assert_int_equal(tc_call(c, api, req, 10000, &h, NULL), 0);
	return h.err;
}

/* Growing a topic, or creating one a member subscribes to, gives the new
 * partitions owners without any member coming or going. */
static void test_new_partitions_get_owners(void **state)
{
	struct fx *f = *state;
	struct member a;
	join(f, &a, "grow", 10000);
	struct member *ms[1] = { &a };
	settle(ms, 1, "grow");
	assert_int_equal(a.nowned, 6);
	union proto_request alter = { .alter_topic = { pstr_c("orders"), 9, 0, NULL } };
	assert_int_equal(simple_call(&f->admin, API_ALTER_TOPIC, &alter), ERR_NONE);
	for (int i = 0; i < 100 && a.nowned != 9; i++) {
		assert_int_equal(heartbeat(&a, "grow"), 0);
		usleep(20000);
	}
	assert_int_equal(a.nowned, 9);
	assert_true(owns(&a, 8));
	tc_close(&a.c);
}

/* Deleting a topic drops every group's offsets for it, durably: a topic
 * created later under the name is read from its start, not from offsets
 * that belonged to another log. */
static void test_deleted_topic_forgets_offsets(void **state)
{
	struct fx *f = *state;
	struct proto_commit_part cp = { pstr_c("orders"), 2, 5 };
	union proto_request c = { .commit_offsets = { pstr_c("old"), pstr_c(""), 0, 1, &cp } };
	assert_int_equal(simple_call(&f->admin, API_COMMIT_OFFSETS, &c), ERR_NONE);
	cp.topic = pstr_c("orders");
	union proto_request c2 = { .commit_offsets = { pstr_c("other"), pstr_c(""), 0, 1, &cp } };
	assert_int_equal(simple_call(&f->admin, API_COMMIT_OFFSETS, &c2), ERR_NONE);
	assert_int_equal(committed(&f->admin, "old", 2), 5);
	union proto_request del = { .delete_topic = { pstr_c("orders") } };
	assert_int_equal(simple_call(&f->admin, API_DELETE_TOPIC, &del), ERR_NONE);
	assert_int_equal(committed(&f->admin, "old", 2), -1);
	assert_int_equal(tc_create_topic(&f->admin, "orders", 6, NULL), ERR_NONE);
	assert_int_equal(committed(&f->admin, "old", 2), -1);
	assert_int_equal(committed(&f->admin, "other", 2), -1);
	/* A commit to the new topic counts, and the deletion survives a restart. */
	cp.offset = 1;
	assert_int_equal(simple_call(&f->admin, API_COMMIT_OFFSETS, &c2), ERR_NONE);
	restart_with(f, NULL);
	assert_int_equal(committed(&f->admin, "old", 2), -1);
	assert_int_equal(committed(&f->admin, "other", 2), 1);
}

/* A delete waiting for its fdatasync keeps the group closed: a member that
 * joined then would be dropped by the acknowledged delete. */
static void test_admin_in_flight_refuses_joins(void **state)
{
	struct fx *f = *state;
	restart_with(f, "test.fsync.delay.ms = 300\n");
	struct proto_commit_part cp = { pstr_c("orders"), 0, 3 };
	union proto_request c = { .commit_offsets = { pstr_c("busy"), pstr_c(""), 0, 1, &cp } };
	assert_int_equal(simple_call(&f->admin, API_COMMIT_OFFSETS, &c), ERR_NONE);
	union proto_request del = { .delete_group = { pstr_c("busy") } };
	uint32_t corr;
	assert_int_equal(tc_send(&f->admin, API_DELETE_GROUP, &del, &corr), 0);
	usleep(50000);
	struct tclient other;
	assert_int_equal(tc_connect(&other, f->b.addr), 0);
	struct pstr topics[] = { pstr_c("orders") };
	union proto_request jr = { .join_group = { pstr_c("busy"), pstr_c(""), pstr_c("t"), 10000,
						   1, topics } };
	assert_int_equal(simple_call(&other, API_JOIN_GROUP, &jr), ERR_BUSY);
	assert_int_equal(simple_call(&other, API_COMMIT_OFFSETS, &c), ERR_BUSY);
	struct proto_resp_hdr h;
	assert_int_equal(tc_recv(&f->admin, API_DELETE_GROUP, 5000, &h, NULL), 0);
	assert_int_equal(h.correlation_id, corr);
	assert_int_equal(h.err, ERR_NONE);
	assert_int_equal(committed(&f->admin, "busy", 0), -1);
	/* Afterwards the name is free again. */
	assert_int_equal(simple_call(&other, API_JOIN_GROUP, &jr), ERR_NONE);
	tc_close(&other);
}

/* A commit larger than one store append is refused with a reason, not
 * failed as a storage error. */
static void test_commit_too_large(void **state)
{
	struct fx *f = *state;
	enum { N = 20001 };
	struct proto_commit_part *cp = calloc(N, sizeof(*cp));
	assert_non_null(cp);
	for (uint32_t i = 0; i < N; i++)
		cp[i] = (struct proto_commit_part){ pstr_c("orders"), i % 6, i };
	union proto_request c = { .commit_offsets = { pstr_c("big"), pstr_c(""), 0, N, cp } };
	assert_int_equal(simple_call(&f->admin, API_COMMIT_OFFSETS, &c), ERR_INVALID_REQUEST);
	c.commit_offsets.nparts = 6;
	assert_int_equal(simple_call(&f->admin, API_COMMIT_OFFSETS, &c), ERR_NONE);
	free(cp);
}

static uint64_t dir_bytes(const char *path)
{
	DIR *d = opendir(path);
	uint64_t total = 0;
	struct dirent *e;
	while (d && (e = readdir(d)) != NULL) {
		char p[1024];
		struct stat st;
		snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
		if (e->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode))
			total += (uint64_t)st.st_blocks * 512;
	}
	if (d)
		closedir(d);
	return total;
}

/* Compaction of the offsets store while commits wait for their fdatasync:
 * the last acknowledged commit must be what a restart finds (a snapshot
 * taken without the commits in flight, replayed after them, would take them
 * back). */
static void test_compaction_keeps_acked_commits(void **state)
{
	struct fx *f = *state;
	restart_with(f, "test.offsets.compact.bytes = 4M\ntest.fsync.delay.ms = 20\n");
	enum { NP = 200 };
	char topic[201], group[201];
	memset(topic, 't', 200);
	topic[200] = '\0';
	memset(group, 'g', 200);
	group[200] = '\0';
	assert_int_equal(tc_create_topic(&f->admin, topic, NP, NULL), ERR_NONE);
	struct proto_commit_part cp[NP];
	union proto_request c = { .commit_offsets = { pstr_c(group), pstr_c(""), 0, NP, cp } };
	uint64_t acked = 0;
	bool compacted = false;
	int64_t t0 = tu_mono_ms();
	for (uint64_t round = 1; round <= 400 && !compacted && tu_mono_ms() - t0 < 60000; round++) {
		for (uint32_t i = 0; i < NP; i++)
			cp[i] = (struct proto_commit_part){ pstr_c(topic), i, round * 10 + i % 7 };
		struct proto_resp_hdr h;
		union proto_response r;
		assert_int_equal(tc_call(&f->admin, API_COMMIT_OFFSETS, &c, 10000, &h, &r), 0);
		assert_int_equal(h.err, 0);
		for (uint32_t i = 0; i < NP; i++)
			assert_int_equal(r.commit_offsets.parts[i].err, 0);
		acked = round;
		compacted = tb_log_count(&f->b, "offsets store: compacted", 0) > 0;
	}
	printf("# compacted after %" PRIu64 " commits of %d partitions\n", acked, NP);
	assert_true(compacted);
	char odir[700];
	snprintf(odir, sizeof(odir), "%s/.offsets", f->b.dir);
	/* Segments before the snapshot go at the store's next tick. */
	uint64_t bytes = dir_bytes(odir);
	for (int i = 0; i < 100 && bytes >= (3u << 20); i++) {
		usleep(20000);
		bytes = dir_bytes(odir);
	}
	printf("# offsets store after compaction: %" PRIu64 " KiB on disk\n", bytes >> 10);
	assert_true(bytes < (3u << 20));
	restart_with(f, NULL);
	struct proto_tp tp[NP];
	for (uint32_t i = 0; i < NP; i++)
		tp[i] = (struct proto_tp){ pstr_c(topic), i };
	union proto_request fo = { .fetch_offsets = { pstr_c(group), NP, tp } };
	struct proto_resp_hdr h;
	union proto_response r;
	assert_int_equal(tc_call(&f->admin, API_FETCH_OFFSETS, &fo, 10000, &h, &r), 0);
	assert_int_equal(h.err, 0);
	for (uint32_t i = 0; i < NP; i++)
		assert_int_equal(r.fetch_offsets.parts[i].offset, (int64_t)(acked * 10 + i % 7));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_share_and_handover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expiry_zombie_and_durable_commits, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reset_and_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_new_partitions_get_owners, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deleted_topic_forgets_offsets, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_admin_in_flight_refuses_joins, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_commit_too_large, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compaction_keeps_acked_commits, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
