/* config.h — ringmqd's settings: command-line flags, the config file, and
 * per-topic settings, each parsed, defaulted and checked against the hard
 * bounds of common/limits.h.
 *
 * Contract: parsers take text from users and disk, so every value is checked
 * and every failure comes back as -EINVAL with a one-line reason in `why`
 * (a static string or the caller's buffer). Nothing here keeps pointers to
 * its inputs. Not thread-safe (plain data, owned by the caller).
 *
 * Config file: lines of `key = value`; `#` starts a comment; blank lines are
 * ignored. Flags override the file. docs/operations.md lists every key.
 */
#ifndef RINGMQ_BROKER_CONFIG_H
#define RINGMQ_BROKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/say.h"
#include "storage/log.h"

/* Per-topic settings, persisted in <data-dir>/<topic>/topic.conf. */
struct topic_config {
	uint32_t partitions;
	struct log_config log;      /* retention, segments, flush */
	uint32_t max_message_bytes; /* largest batch a producer may send */
};

/* Topic setting keys, for listing and validation. */
extern const char *const topic_config_keys[];

/* Sets one topic key ("retention.ms", "flush", ...) from text. Returns 0 or
 * -EINVAL with a reason (written to why, cap bytes). "partitions" is not a
 * topic key here: it is part of create/alter requests. */
int topic_config_set(struct topic_config *tc, const char *key, const char *value, char *why,
		     size_t cap);

/* Writes the text form of a key's value (as topic_config_set reads it). */
int topic_config_get(const struct topic_config *tc, const char *key, char *out, size_t cap);

/* Checks the whole config (limits across fields). */
int topic_config_check(const struct topic_config *tc, char *why, size_t cap);

struct broker_config {
	char data_dir[4096];
	char listen[256];      /* HOST:PORT */
	char http[256];        /* HOST:PORT; "" disables HTTP */
	enum say_level log_level;
	/* limits (docs/operations.md) */
	uint32_t max_frame_bytes;
	uint32_t max_topics;
	uint32_t max_partitions_per_topic;
	uint32_t max_connections;
	uint32_t max_inflight_requests;  /* per connection */
	uint64_t max_buffered_bytes;     /* unsent response bytes per connection */
	uint64_t staging_bytes;          /* appended, not yet written, all partitions */
	uint32_t recv_buffers;           /* provided receive buffers, shared */
	uint32_t recv_buffer_bytes;
	uint32_t max_wait_ms_limit;      /* longest fetch long poll allowed */
	uint32_t http_max_connections;
	uint32_t http_timeout_ms;        /* an HTTP client's whole exchange */
	uint32_t shutdown_timeout_ms;    /* longest a stop waits for clients to read */
	uint32_t test_fsync_delay_ms;    /* tests only: delay every fdatasync */
	uint32_t test_drop_after_append; /* tests only: every Nth produce is appended,
					    then its connection closed unanswered */
	uint64_t test_offsets_compact_bytes; /* tests only: compact the offsets store sooner */
	/* defaults for new topics */
	struct topic_config topic_defaults;
};

void broker_config_default(struct broker_config *cfg);

/* Sets one broker key (a file key, or a "default.<topic key>"). */
int broker_config_set(struct broker_config *cfg, const char *key, const char *value, char *why,
		      size_t cap);

/* Parses a config file's text; the line number of an error is in *line. */
int broker_config_parse(struct broker_config *cfg, const char *text, size_t len, int *line,
			char *why, size_t cap);

/* Reads and parses a config file. */
int broker_config_load(struct broker_config *cfg, const char *path, char *why, size_t cap);

/* Cross-field checks after everything is set. */
int broker_config_check(const struct broker_config *cfg, char *why, size_t cap);

/* Splits "HOST:PORT" (port 0..65535; "[v6]:port" too). */
int parse_host_port(const char *s, char *host, size_t host_cap, uint16_t *port);

/* Parses a non-negative integer with optional K/M/G (binary) suffix for byte
 * sizes when `bytes` is true. Returns 0 or -EINVAL. */
int parse_u64(const char *s, bool bytes, uint64_t *out);

/* Topic and group names: [A-Za-z0-9._-]{1,200}, not starting with a dot. */
bool topic_name_valid(const char *name, size_t len);

#endif
