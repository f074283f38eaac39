/* http_parse.c — parsing of an HTTP/1.x request head (see http.h). */
#include "broker/http.h"

#include <string.h>

static const char *find_crlfcrlf(const char *buf, size_t len)
{
	for (size_t i = 0; i + 3 < len; i++)
		if (buf[i] == '\r' && buf[i + 1] == '\n' && buf[i + 2] == '\r' && buf[i + 3] == '\n')
			return buf + i;
	return NULL;
}

/* Copies the token [p, end) up to the next space into out. */
static const char *token(const char *p, const char *end, char *out, size_t cap)
{
	size_t n = 0;
	while (p < end && *p != ' ') {
		unsigned char ch = (unsigned char)*p;
		if (ch <= 0x20 || ch == 0x7f || n + 1 >= cap)
			return NULL;
		out[n++] = *p++;
	}
	if (n == 0)
		return NULL;
	out[n] = '\0';
	return p;
}

int http_parse(const char *buf, size_t len, struct http_request *req)
{
	const char *head_end = find_crlfcrlf(buf, len);
	if (head_end == NULL)
		return len >= HTTP_REQUEST_MAX ? -1 : 0;
	if ((size_t)(head_end - buf) + 4 > HTTP_REQUEST_MAX)
		return -1;
	const char *eol = memchr(buf, '\r', (size_t)(head_end - buf) + 1);
	/* A bare CR does not end the request line (RFC 9112 2.2): taken as
	 * the end, "GET / HTTP/1.1\rjunk" would pass for a request line. */
	if (eol[1] != '\n')
		return -1;
	const char *p = token(buf, eol, req->method, sizeof(req->method));
	if (p == NULL || p >= eol || *p != ' ')
		return -1;
	p = token(p + 1, eol, req->path, sizeof(req->path));
	if (p == NULL || p >= eol || *p != ' ' || req->path[0] != '/')
		return -1;
	p++;
	if ((size_t)(eol - p) != 8 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
		return -1;
	return 1;
}
