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
