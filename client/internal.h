/* internal.h — libringmq's internals shared by its files: the parsed
 * configuration, error mapping, and one broker connection (rc_conn) with
 * bootstrap failover, reconnect backoff and request framing. Not installed;
 * ringmq.h is the contract. */
#ifndef RINGMQ_CLIENT_INTERNAL_H
#define RINGMQ_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/ringmq.h"
#include "proto/proto.h"

#define RC_SERVERS_MAX 16
#define RC_CLIENT_ID_MAX 128

struct ringmq_config {
	char servers[RC_SERVERS_MAX][256];
	unsigned nservers;
	char client_id[RC_CLIENT_ID_MAX];
	int request_timeout_ms;
	int backoff_ms, backoff_max_ms;
	/* producer */
	int8_t acks;
	int linger_ms;
	uint32_t batch_size;
	uint64_t buffer_memory;
	bool block_on_full;
	int max_block_ms;
	bool lz4;
	bool idempotence;
	uint32_t max_in_flight;
	int delivery_timeout_ms;
	uint32_t message_max_bytes;
	ringmq_delivery_cb *delivery_cb;
	void *delivery_opaque;
	/* consumer */
	uint32_t fetch_max_bytes, fetch_partition_max_bytes;
	uint32_t fetch_max_wait_ms, fetch_min_bytes;
	bool check_crcs;
	/* consumer groups */
	int session_timeout_ms;
	bool auto_commit;
	int auto_commit_interval_ms;
	bool offset_reset_latest;
	ringmq_rebalance_cb *rebalance_cb;
	void *rebalance_opaque;
};

void rc_config_default(struct ringmq_config *cfg);

/* Maps a broker error code to enum ringmq_err (the same numbers). */
int rc_err_from_broker(uint16_t err);
/* True for errors worth retrying on the same message. */
bool rc_err_retriable(int err);

/* Writes "fmt" into errstr if it is not NULL. Returns err. */
int rc_fail(char *errstr, size_t errlen, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

int64_t rc_now_ms(void);

/* One connection to one of the bootstrap brokers. Not thread-safe. */
struct rc_conn {
	const struct ringmq_config *cfg;
	int fd;                 /* -1: not connected */
	unsigned server;        /* index of the server tried next / in use */
	uint32_t next_corr;
	int backoff_ms;         /* current reconnect backoff */
	int64_t next_attempt_ms;
	uint8_t *in;            /* received bytes */
	size_t in_len, in_cap;
	size_t in_used;         /* bytes of frames already returned */
	bool peer_closed;       /* EOF seen; the frames before it are handed out first */
	uint8_t *out;           /* encoded, not yet sent */
	size_t out_len, out_off, out_cap;
	char err[256];          /* why the last connect or I/O failed */
};

void rc_conn_init(struct rc_conn *c, const struct ringmq_config *cfg);
void rc_conn_close(struct rc_conn *c);
void rc_conn_free(struct rc_conn *c);
bool rc_conn_up(const struct rc_conn *c);

/* Connects to the next broker that answers (handshake included), waiting at
 * most timeout_ms. Honors the backoff after failures unless `now` is set.
 * Returns 0 or RINGMQ_ERR_TRANSPORT / RINGMQ_ERR_TIMEOUT (c->err says why). */
int rc_conn_connect(struct rc_conn *c, int timeout_ms);

/* Encodes a request into the send buffer. Returns its correlation id, or 0
 * if it could not be encoded (too large). */
uint32_t rc_conn_queue(struct rc_conn *c, uint16_t api, const union proto_request *req);
/* The same for a body the caller encodes: encode(w, arg) appends it to w
 * (between proto_req_begin and proto_frame_end). */
uint32_t rc_conn_queue_with(struct rc_conn *c, uint16_t api,
			    void (*encode)(struct pw *w, const void *arg), const void *arg);
/* Sends what it can without blocking. Returns 0, or RINGMQ_ERR_TRANSPORT. */
int rc_conn_send_some(struct rc_conn *c);
bool rc_conn_want_send(const struct rc_conn *c);
/* Receives what is there without blocking. Returns 0 or RINGMQ_ERR_TRANSPORT. */
int rc_conn_recv_some(struct rc_conn *c);
/* The next whole response frame received, or NULL. Valid until the next
 * rc_conn_recv_some/rc_conn_next_frame. */
const uint8_t *rc_conn_next_frame(struct rc_conn *c, uint32_t *len);
/* Hands over the receive buffer, with the frames rc_conn_next_frame returned
 * from it, to the caller, who keeps them valid as long as it likes and frees
 * the buffer (*cap: its size); the connection goes on in `spare` (spare_cap
 * bytes, or NULL), grown if need be, into which it moves what came after
 * those frames. A consumer thus keeps a fetch response where recv put it,
 * instead of copying it. Returns NULL, changing nothing, if out of memory
 * (spare is then still the caller's). */
uint8_t *rc_conn_take_in(struct rc_conn *c, uint8_t *spare, size_t spare_cap, size_t *cap);

/* Sends a request and waits for its response (no other request may be in
 * flight on c). Decodes the header into *h and, unless it carries an error,
 * the body into *resp using the arena. Reconnects once if the connection was
 * down. Returns 0 or a client error; broker errors come back in h->err. */
int rc_conn_call(struct rc_conn *c, uint16_t api, const union proto_request *req, int timeout_ms,
		 struct proto_resp_hdr *h, union proto_response *resp, struct arena *a);

/* Waits until fd is readable (and writable if want_write) or timeout. */
int rc_poll(int fd, bool want_write, int extra_fd, int timeout_ms);

#endif
