/* fuzz_http.c — fuzz target for the HTTP request-head parser behind
 * GET /health and GET /metrics. The input is what a client sends on one
 * connection.
 *
 * The verdict is checked against an independent reading of http.h's
 * contract: a head is whole at the first CRLFCRLF; it must fit in
 * HTTP_REQUEST_MAX; its request line is METHOD SP PATH SP HTTP/1.0|1.1
 * CRLF, where METHOD (at most 15 bytes) and PATH (at most 255, starting
 * with '/') are visible bytes. Header lines are not looked at: the broker
 * answers one GET and closes, whatever they say.
 *
 * The broker calls the parser again on every receive, over all the bytes
 * so far, so the verdict must not depend on where the bytes were split:
 * a prefix may only say "more" or what the whole input says.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* abort() rather than assert(): the checks must hold in every build. */
#define CHECK(cond)                     \
	do {                            \
		if (!(cond))            \
			abort();        \
	} while (0)

#define METHOD_MAX 15
#define PATH_MAX_LEN 255

struct verdict {
	int ret;
	struct http_request req;
};

static bool visible(uint8_t c)
{
	return c > 0x20 && c != 0x7f;
}

/* A run of visible bytes, 1..max long, ending at a space. */
static size_t word(const uint8_t *p, size_t n, size_t max)
{
	size_t i = 0;
	while (i < n && p[i] != ' ') {
		if (!visible(p[i]) || i == max)
			return 0;
		i++;
	}
	return i < n ? i : 0;
}

static struct verdict oracle(const uint8_t *p, size_t len)
{
	struct verdict v = { .ret = -1 };
	size_t head = 0;
	bool found = false;
	for (size_t i = 0; i + 4 <= len && !found; i++)
		if (memcmp(p + i, "\r\n\r\n", 4) == 0) {
			head = i + 4;
			found = true;
		}
	if (!found) {
		v.ret = len >= HTTP_REQUEST_MAX ? -1 : 0;
		return v;
	}
	if (head > HTTP_REQUEST_MAX)
		return v;
	/* The request line ends at the first CRLF, which the head has. */
	size_t eol = 0;
	while (!(p[eol] == '\r' && p[eol + 1] == '\n'))
		eol++;
	size_t m = word(p, eol, METHOD_MAX);
	if (m == 0)
		return v;
	const uint8_t *t = p + m + 1;
	size_t tn = eol - m - 1;
	size_t pl = word(t, tn, PATH_MAX_LEN);
	if (pl == 0 || t[0] != '/')
		return v;
	const uint8_t *ver = t + pl + 1;
	if ((size_t)(p + eol - ver) != 8 ||
	    (memcmp(ver, "HTTP/1.0", 8) != 0 && memcmp(ver, "HTTP/1.1", 8) != 0))
		return v;
	v.ret = 1;
	memcpy(v.req.method, p, m);
	v.req.method[m] = '\0';
	memcpy(v.req.path, t, pl);
	v.req.path[pl] = '\0';
	return v;
}

/* The parser over an exact copy, so that a read past len trips ASan. */
static struct verdict run(const uint8_t *data, size_t len)
{
	char *buf = malloc(len ? len : 1);
	CHECK(buf != NULL);
	if (len)
		memcpy(buf, data, len);
	struct verdict v;
	/* Poisoned, so that a 1 with fields left unset shows. */
	memset(&v.req, 0xa5, sizeof(v.req));
	v.ret = http_parse(buf, len, &v.req);
	free(buf);
	CHECK(v.ret == -1 || v.ret == 0 || v.ret == 1);
	if (v.ret == 1) {
		CHECK(memchr(v.req.method, '\0', sizeof(v.req.method)) != NULL);
		CHECK(memchr(v.req.path, '\0', sizeof(v.req.path)) != NULL);
	}
	return v;
}

static bool same(const struct verdict *a, const struct verdict *b)
{
	if (a->ret != b->ret)
		return false;
	return a->ret != 1 || (strcmp(a->req.method, b->req.method) == 0 &&
			       strcmp(a->req.path, b->req.path) == 0);
}

static void prefix(const uint8_t *data, size_t k, const struct verdict *whole)
{
	struct verdict v = run(data, k);
	CHECK(v.ret == 0 || same(&v, whole));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct verdict got = run(data, size);
	struct verdict want = oracle(data, size);
	CHECK(same(&got, &want));

	if (size == 0)
		return 0;
	prefix(data, 0, &got);
	prefix(data, size - 1, &got);
	prefix(data, size / 2, &got);
	/* Right at the end of the head, where the verdict is made. */
	const uint8_t *end = memmem(data, size, "\r\n\r\n", 4);
	if (end != NULL) {
		size_t at = (size_t)(end - data) + 4;
		prefix(data, at - 1, &got);
		struct verdict v = run(data, at);
		CHECK(same(&v, &got));
	}
	/* What the broker's 4096-byte buffer holds of a longer input. */
	if (size > HTTP_REQUEST_MAX) {
		struct verdict v = run(data, HTTP_REQUEST_MAX);
		CHECK(v.ret != 0);
		prefix(data, HTTP_REQUEST_MAX, &got);
	}
	return 0;
}
