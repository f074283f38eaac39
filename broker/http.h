/* http.h — the smallest HTTP/1.x request parser the broker needs for
 * GET /health and GET /metrics. Pure function over bytes from a socket:
 * bounded, no allocation, thread-safe; fuzzed by tests/fuzz/fuzz_http.c. */
#ifndef RINGMQ_HTTP_H
#define RINGMQ_HTTP_H

#include <stddef.h>

#define HTTP_REQUEST_MAX 4096 /* request line and headers */

struct http_request {
	char method[16];
	char path[256];
};

/* Returns 1 when buf holds a whole request head (through the blank line)
 * and fills *req; 0 if more bytes are needed; -1 if it is not a valid
 * HTTP/1.x request head (or is longer than HTTP_REQUEST_MAX). */
int http_parse(const char *buf, size_t len, struct http_request *req);

#endif
