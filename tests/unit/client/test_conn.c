/* test_conn.c — the client connection's receive path over a socketpair:
 * frames split across reads, buffer compaction, and rc_conn_take_in, which
 * hands a received fetch response to the consumer without copying it (the
 * frames after it must carry on in the connection's new buffer). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "client/internal.h"
#include "client/ringmq.h"

struct fx {
	struct ringmq_config cfg;
	struct rc_conn c;
	int peer;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	rc_config_default(&f->cfg);
	rc_conn_init(&f->c, &f->cfg);
	f->c.fd = sv[0];
	f->peer = sv[1];
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	rc_conn_free(&f->c);
	close(f->peer);
	free(f);
	return 0;
}

/* A response frame for correlation id `corr` whose body is `len` bytes,
 * each (corr + i) & 0xff. */
static uint8_t *frame(uint32_t corr, size_t len, size_t *flen)
{
	struct pw w;
	pw_init_dyn(&w, 64, FRAME_SIZE_HARD_MAX);
	size_t start = proto_resp_begin(&w, corr, 0, NULL);
	uint8_t *p = pw_reserve(&w, len);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(corr + i);
	proto_frame_end(&w, start);
	assert_false(w.failed);
	*flen = w.len;
	return w.buf;
}

/* Writes to the connection's peer; when the socket is full, the connection
 * reads what is there (taking no frame), so that tests need not depend on
 * socket buffer sizes. */
static void put(struct fx *f, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = write(f->peer, p, len);
		if (n < 0 && errno == EAGAIN) {
			assert_int_equal(rc_conn_recv_some(&f->c), 0);
			continue;
		}
		assert_true(n > 0);
		p += n;
		len -= (size_t)n;
	}
}

/* Writes a whole frame, or its [from, to) bytes. */
static void put_frame(struct fx *f, uint32_t corr, size_t body, size_t from, size_t to)
{
	size_t len;
	uint8_t *b = frame(corr, body, &len);
	if (to > len)
		to = len;
	put(f, b + from, to - from);
	free(b);
}

/* The next frame must be `corr`'s with a body of `body` bytes, intact. */
static const uint8_t *expect(struct fx *f, uint32_t corr, size_t body)
{
	uint32_t len;
	const uint8_t *p = rc_conn_next_frame(&f->c, &len);
	assert_non_null(p);
	struct proto_resp_hdr h;
	struct pr r;
	assert_int_equal(proto_resp_header(p, len, &h, &r), 0);
	assert_int_equal(h.correlation_id, corr);
	size_t want;
	uint8_t *w = frame(corr, body, &want);
	assert_int_equal(len, want);
	assert_memory_equal(p, w, want);
	free(w);
	return p;
}

static void check_body(const uint8_t *p, uint32_t corr, size_t body, size_t hdr)
{
	for (size_t i = 0; i < body; i++)
		if (p[hdr + i] != (uint8_t)(corr + i))
			fail_msg("frame %u: byte %zu changed", corr, i);
}

/* A fetch response between other replies, all in one read: the consumer
 * takes the buffer; the reply after it comes out of the connection's new
 * one, and the taken bytes stay as they were while more arrives. */
static void test_take_in_between_frames(void **state)
{
	struct fx *f = *state;
	size_t hdr_len;
	free(frame(0, 0, &hdr_len)); /* a frame's size with an empty body */
	put_frame(f, 1, 10, 0, SIZE_MAX);
	put_frame(f, 2, 300000, 0, SIZE_MAX);
	put_frame(f, 3, 20, 0, SIZE_MAX);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	expect(f, 1, 10);
	const uint8_t *big = expect(f, 2, 300000);
	size_t cap;
	uint8_t *taken = rc_conn_take_in(&f->c, NULL, 0, &cap);
	assert_non_null(taken);
	assert_true(big >= taken && big + 300000 <= taken + cap);
	expect(f, 3, 20);
	assert_null(rc_conn_next_frame(&f->c, &(uint32_t){ 0 }));
	/* More traffic into the connection's buffer leaves `big` alone. */
	for (uint32_t k = 4; k < 40; k++)
		put_frame(f, k, 50000, 0, SIZE_MAX);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	for (uint32_t k = 4; k < 40; k++)
		expect(f, k, 50000);
	check_body(big, 2, 300000, hdr_len);
	/* The taken buffer goes back as the next spare. */
	put_frame(f, 40, 100, 0, SIZE_MAX);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	expect(f, 40, 100);
	size_t cap2;
	uint8_t *taken2 = rc_conn_take_in(&f->c, taken, cap, &cap2);
	assert_non_null(taken2);
	assert_ptr_equal(f->c.in, taken);
	free(taken2);
}

/* The connection's new buffer receives the rest of a frame that had only
 * begun when the buffer before it was taken. */
static void test_take_in_partial_tail(void **state)
{
	struct fx *f = *state;
	size_t len;
	free(frame(6, 200000, &len));
	put_frame(f, 5, 100000, 0, SIZE_MAX);
	put_frame(f, 6, 200000, 0, 1000);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	expect(f, 5, 100000);
	assert_null(rc_conn_next_frame(&f->c, &(uint32_t){ 0 }));
	/* A spare too small for what follows is grown. */
	size_t cap;
	uint8_t *spare = malloc(16);
	uint8_t *taken = rc_conn_take_in(&f->c, spare, 16, &cap);
	assert_non_null(taken);
	put_frame(f, 6, 200000, 1000, 150000);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	assert_null(rc_conn_next_frame(&f->c, &(uint32_t){ 0 }));
	put_frame(f, 6, 200000, 150000, SIZE_MAX);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	expect(f, 6, 200000);
	free(taken);
}

/* Small replies taken while a large one has begun to arrive: its bytes
 * move to the front of the buffer only when the room behind them runs
 * out, and it comes out whole after many reads. */
static void test_compaction_under_a_large_frame(void **state)
{
	struct fx *f = *state;
	size_t big_len;
	free(frame(1000, 3u << 20, &big_len));
	for (uint32_t k = 1; k <= 15; k++)
		put_frame(f, k, 3000, 0, SIZE_MAX);
	size_t sent = 10000;
	put_frame(f, 1000, 3u << 20, 0, sent);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	for (uint32_t k = 1; k <= 15; k++)
		expect(f, k, 3000);
	while (sent < big_len) {
		assert_null(rc_conn_next_frame(&f->c, &(uint32_t){ 0 }));
		put_frame(f, 1000, 3u << 20, sent, sent + 70000);
		sent += 70000;
		assert_int_equal(rc_conn_recv_some(&f->c), 0);
	}
	expect(f, 1000, 3u << 20);
	put_frame(f, 2000, 10, 0, SIZE_MAX);
	assert_int_equal(rc_conn_recv_some(&f->c), 0);
	expect(f, 2000, 10);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_take_in_between_frames, setup, teardown),
		cmocka_unit_test_setup_teardown(test_take_in_partial_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compaction_under_a_large_frame, setup,
						teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
