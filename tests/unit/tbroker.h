/* tbroker.h — integration-test helpers: start a real ringmqd (127.0.0.1,
 * port 0, fresh temp data dir), wait for its ready line, stop it by PID; and
 * a blocking protocol client built on proto/. */
#ifndef RINGMQ_TBROKER_H
#define RINGMQ_TBROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "proto/proto.h"

struct tbroker {
	pid_t pid;
	char *dir;          /* data dir (owned) */
	bool own_dir;
	char addr[64];      /* HOST:PORT of the protocol listener */
	char http[64];
	int err_fd;         /* the broker's stderr, after the ready line */
	char log_path[512]; /* everything it printed goes here too */
};

/* In an ASan build, makes the brokers this process starts (they inherit
 * ASAN_OPTIONS) keep a 16 MiB quarantine of freed memory instead of 256 MiB,
 * which would swamp the RSS bounds tests check. No-op otherwise. Call first
 * in main(). */
void tb_small_asan_quarantine(void);

/* ASAN_BUILD: defined when this test is built with AddressSanitizer, whose
 * shadow memory and slower code some bounds must allow for. */
#if defined(__SANITIZE_ADDRESS__)
#define ASAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN_BUILD 1
#endif
#endif

/* Starts ringmqd with a fresh data dir (or `dir` if not NULL, e.g. for a
 * restart) and extra arguments (NULL-terminated, may be NULL). Waits up to
 * 10 s for "ringmqd: ready on ...". Returns 0 or -1. */
int tb_start(struct tbroker *b, const char *dir, const char *const *extra);
/* As tb_start, with the broker's RLIMIT_NOFILE (soft and hard) set to
 * nofile, as on a host whose `ulimit -n` is that low. */
int tb_start_nofile(struct tbroker *b, const char *dir, const char *const *extra, long nofile);
/* SIGTERM, wait up to 15 s; returns the exit status (or -1). Keeps the dir. */
int tb_stop(struct tbroker *b);
/* SIGKILL, wait. Keeps the dir. */
void tb_kill9(struct tbroker *b);
/* Removes the data dir (after stop). */
void tb_cleanup(struct tbroker *b);
/* Path of a binary next to ringmqd (build/bin/NAME). */
void tb_bin_path(char *out, size_t cap, const char *name);
/* Resident set size of the broker in KiB (from /proc), or -1. */
long tb_rss_kib(const struct tbroker *b);
/* Descriptors open in process pid (from /proc/PID/fd), or -1. */
int tb_fd_count(pid_t pid);
/* True while the broker runs; false once it has exited (reaped here, its
 * exit status or signal printed, b->pid set to 0) or was never started. */
bool tb_alive(struct tbroker *b);
/* Lines of the broker's log holding `what`; the first `show` are printed.
 * Returns 0 if there is no log. */
int tb_log_count(const struct tbroker *b, const char *what, int show);
/* Lines of the broker's log reporting a sanitizer finding or a failed
 * assertion; the first 20 are printed. Returns how many. */
int tb_log_problems(const struct tbroker *b);
/* Prints the last 30 lines of the broker's log (and how many it has). */
void tb_print_log_tail(const struct tbroker *b);
/* A blocking TCP connection to HOST:PORT (IPv4, with TCP_NODELAY), or -errno.
 * rcvbuf > 0 shrinks its receive buffer (a client that does not read then
 * stops the broker's sends after a few KiB); timeout_s > 0 bounds each send
 * and receive (SO_SNDTIMEO, SO_RCVTIMEO). The caller closes it. */
int tb_connect(const char *hostport, int rcvbuf, int timeout_s);
/* Sends all len bytes on a blocking socket (retrying on EINTR, no SIGPIPE).
 * Returns 0 or -errno (e.g. -EPIPE for a peer that closed first). */
int tb_send_all(int fd, const void *p, size_t len);
/* GETs path from an HTTP listener (HOST:PORT), waiting up to 5 s for the
 * response. Returns the status code, or -1 (a failed connect is printed);
 * *body gets the body (malloc'd, NUL-terminated, caller frees), or NULL. */
int tb_http_get(const char *hostport, const char *path, char **body);
/* The value of a metric on the broker's /metrics, named as printed (with
 * its labels, e.g. "ringmq_requests_total{api=\"PRODUCE\"}"), or -1. */
int64_t tb_metric(const struct tbroker *b, const char *name);
/* The status code of the broker's /health, or -1. */
int tb_health(const struct tbroker *b);

struct tclient {
	int fd;
	uint32_t next_corr;
	uint8_t *in;        /* last response frame */
	size_t in_cap;
	uint8_t *arena_buf;
	struct arena arena;
	struct pw out;
};

int tc_connect(struct tclient *c, const char *hostport);
void tc_close(struct tclient *c);
/* Sends raw bytes. Returns 0 or -errno. */
int tc_send_raw(struct tclient *c, const void *p, size_t len);
/* Encodes and sends a request; *corr gets its correlation id. */
int tc_send(struct tclient *c, uint16_t api, const union proto_request *req, uint32_t *corr);
/* Receives one response frame within timeout_ms and decodes its header and
 * (for api, if no error) body. Views are valid until the next receive.
 * Returns 0, -ETIMEDOUT, -ECONNRESET (closed), or -EBADMSG. */
int tc_recv(struct tclient *c, uint16_t api, int timeout_ms, struct proto_resp_hdr *h,
	    union proto_response *resp);
/* Send + receive the matching response. */
int tc_call(struct tclient *c, uint16_t api, const union proto_request *req, int timeout_ms,
	    struct proto_resp_hdr *h, union proto_response *resp);

/* Convenience wrappers; return the response error code, or -errno. */
int tc_create_topic(struct tclient *c, const char *name, uint32_t partitions,
		    const char *const *kv /* key, value, ..., NULL */);
/* Produces one batch to topic/partition; *base gets its base offset. */
int tc_produce(struct tclient *c, const char *topic, uint32_t partition, int8_t acks,
	       const void *batch, uint32_t len, uint64_t *base);
/* Fetches from one partition; the records are copied into *records
 * (malloc'd, caller frees). */
int tc_fetch(struct tclient *c, const char *topic, uint32_t partition, uint64_t offset,
	     uint32_t max_bytes, uint32_t max_wait_ms, uint32_t min_bytes, uint8_t **records,
	     uint32_t *len, uint64_t *log_end);

#endif
