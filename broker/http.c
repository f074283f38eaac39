/* http.c — GET /health and GET /metrics (Prometheus text format), served by
 * the broker's own loop: one request per connection, then close. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker/broker.h"
#include "broker/http.h"
#include "common/say.h"

struct http_conn {
	struct loop *l;
	struct http_conn *prev, *next; /* l->https */
	int64_t deadline_ms;
	bool timed_out;
	int fd;
	struct ioq_op op;
	char in[HTTP_REQUEST_MAX];
	size_t in_len;
	struct pw out;
	size_t sent;
	bool sending;
};

static void http_done(struct ioq_op *op, int res, unsigned flags);

static void http_free(struct http_conn *h)
{
	if (h->prev != NULL)
		h->prev->next = h->next;
	else
		h->l->https = h->next;
	if (h->next != NULL)
		h->next->prev = h->prev;
	h->l->nhttp--;
	close(h->fd);
	pw_free(&h->out);
	free(h);
}

static void arm(struct http_conn *h)
{
	h->op.done = http_done;
	h->op.kind = IOQ_NET;
	struct io_uring_sqe *sqe = ioq_sqe(&h->l->q, &h->op);
	if (h->sending)
		io_uring_prep_send(sqe, h->fd, h->out.buf + h->sent, h->out.len - h->sent,
				   MSG_NOSIGNAL);
	else
		io_uring_prep_recv(sqe, h->fd, h->in + h->in_len, sizeof(h->in) - h->in_len, 0);
}

static void printf_pw(struct pw *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void printf_pw(struct pw *w, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0)
		pw_raw(w, line, (size_t)(n < (int)sizeof(line) ? n : (int)sizeof(line) - 1));
}

static void metric_head(struct pw *w, const char *name, const char *type, const char *help)
{
	printf_pw(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void render_metrics(struct loop *l, struct pw *w)
{
	struct registry *r = &l->reg;
	static const struct {
		const char *name, *help;
		size_t off;
	} per_topic[] = {
		{ "ringmq_messages_in_total", "Messages appended, by topic.",
		  offsetof(struct topic, msgs_in) },
		{ "ringmq_bytes_in_total", "Batch bytes appended, by topic.",
		  offsetof(struct topic, bytes_in) },
		{ "ringmq_messages_out_total", "Messages sent to consumers, by topic.",
		  offsetof(struct topic, msgs_out) },
		{ "ringmq_bytes_out_total", "Batch bytes sent to consumers, by topic.",
		  offsetof(struct topic, bytes_out) },
	};
	for (size_t m = 0; m < sizeof(per_topic) / sizeof(per_topic[0]); m++) {
		metric_head(w, per_topic[m].name, "counter", per_topic[m].help);
		for (uint32_t s = 0; s < r->nslots; s++)
			for (struct topic *t = r->slots[s]; t; t = t->hnext)
				if (t->state == TOPIC_LIVE)
					printf_pw(w, "%s{topic=\"%s\"} %" PRIu64 "\n", per_topic[m].name,
						  t->name,
						  *(const uint64_t *)((const char *)t + per_topic[m].off));
	}
	static const char *const part_metrics[][2] = {
		{ "ringmq_log_end_offset", "Offset after the last message consumers may read." },
		{ "ringmq_log_start_offset", "First offset still in the log." },
		{ "ringmq_log_size_bytes", "Bytes of log data on disk." },
	};
	for (int m = 0; m < 3; m++) {
		metric_head(w, part_metrics[m][0], "gauge", part_metrics[m][1]);
		for (uint32_t s = 0; s < r->nslots; s++)
			for (struct topic *t = r->slots[s]; t; t = t->hnext) {
				if (t->state != TOPIC_LIVE)
					continue;
				for (uint32_t i = 0; i < t->nparts; i++) {
					struct log *log = t->parts[i]->log;
					uint64_t v = m == 0 ? log_visible_end(log)
						   : m == 1 ? log_start(log)
							    : log_size_bytes(log);
					printf_pw(w, "%s{topic=\"%s\",partition=\"%u\"} %" PRIu64 "\n",
						  part_metrics[m][0], t->name, i, v);
				}
			}
	}
	metric_head(w, "ringmq_requests_total", "counter", "Requests received, by API.");
	for (int a = 0; a < API_COUNT; a++)
		printf_pw(w, "ringmq_requests_total{api=\"%s\"} %" PRIu64 "\n", proto_api_name((uint16_t)a),
			  l->api[a].requests);
	metric_head(w, "ringmq_request_errors_total", "counter",
		    "Error responses (per partition for produce and fetch), by API.");
	for (int a = 0; a < API_COUNT; a++)
		printf_pw(w, "ringmq_request_errors_total{api=\"%s\"} %" PRIu64 "\n",
			  proto_api_name((uint16_t)a), l->api[a].errors);

	const struct log_env_stats *st = log_env_stats(l->env);
	metric_head(w, "ringmq_fdatasync_seconds", "histogram",
		    "Latency of the fdatasyncs behind acks=all (group commit).");
	uint64_t cum = 0;
	for (int b = 0; b < LOG_FSYNC_BUCKETS - 1; b++) {
		cum += st->fsync_hist[b];
		printf_pw(w, "ringmq_fdatasync_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
			  log_fsync_buckets_us[b] / 1e6, cum);
	}
	cum += st->fsync_hist[LOG_FSYNC_BUCKETS - 1];
	printf_pw(w, "ringmq_fdatasync_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
	printf_pw(w, "ringmq_fdatasync_seconds_sum %g\n", (double)st->fsync_us_total / 1e6);
	printf_pw(w, "ringmq_fdatasync_seconds_count %" PRIu64 "\n", st->fsyncs);

	metric_head(w, "ringmq_disk_bytes_written_total", "counter", "Log bytes written.");
	printf_pw(w, "ringmq_disk_bytes_written_total %" PRIu64 "\n", st->bytes_written);
	metric_head(w, "ringmq_staged_bytes", "gauge", "Appended bytes not yet written.");
	printf_pw(w, "ringmq_staged_bytes %zu\n", log_env_staged(l->env));
	metric_head(w, "ringmq_connections", "gauge", "Open client connections.");
	printf_pw(w, "ringmq_connections %u\n", l->nconns);
	metric_head(w, "ringmq_connections_accepted_total", "counter", "Client connections accepted.");
	printf_pw(w, "ringmq_connections_accepted_total %" PRIu64 "\n", l->conns_accepted);
	metric_head(w, "ringmq_connections_refused_total", "counter",
		    "Connections refused at max.connections.");
	printf_pw(w, "ringmq_connections_refused_total %" PRIu64 "\n", l->conns_refused);
	metric_head(w, "ringmq_connections_closed_bad_total", "counter",
		    "Connections closed for bad or oversized input.");
	printf_pw(w, "ringmq_connections_closed_bad_total %" PRIu64 "\n", l->conns_closed_bad);
	metric_head(w, "ringmq_network_bytes_in_total", "counter", "Bytes received from clients.");
	printf_pw(w, "ringmq_network_bytes_in_total %" PRIu64 "\n", l->bytes_in);
	metric_head(w, "ringmq_network_bytes_out_total", "counter", "Bytes sent to clients.");
	printf_pw(w, "ringmq_network_bytes_out_total %" PRIu64 "\n", l->bytes_out);
	metric_head(w, "ringmq_io_uring_sqes_total", "counter", "Submission queue entries.");
	printf_pw(w, "ringmq_io_uring_sqes_total %" PRIu64 "\n", l->q.sqes_total);
	metric_head(w, "ringmq_io_uring_cqes_total", "counter", "Completions handled.");
	printf_pw(w, "ringmq_io_uring_cqes_total %" PRIu64 "\n", l->q.cqes_total);
	metric_head(w, "ringmq_io_uring_submits_total", "counter", "io_uring_enter calls that submitted.");
	printf_pw(w, "ringmq_io_uring_submits_total %" PRIu64 "\n", l->q.submits_total);
	groups_metrics(l, w);
	metric_head(w, "ringmq_topics", "gauge", "Topics.");
	printf_pw(w, "ringmq_topics %u\n", r->count);
	metric_head(w, "ringmq_uptime_seconds", "gauge", "Seconds since start.");
	printf_pw(w, "ringmq_uptime_seconds %" PRId64 "\n", (now_ms() - l->start_ms) / 1000);
}

static void respond(struct http_conn *h, const char *status, const char *ctype, const char *body,
		    size_t body_len)
{
	struct pw w;
	pw_init_dyn(&w, 256 + body_len, 64u << 20);
	printf_pw(&w, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		      "Connection: close\r\n\r\n", status, ctype, body_len);
	pw_raw(&w, body, body_len);
	h->out = w;
	h->sending = true;
	h->sent = 0;
	arm(h);
}

static void handle(struct http_conn *h, const struct http_request *req)
{
	if (strcmp(req->method, "GET") != 0) {
		const char *b = "only GET is served\n";
		respond(h, "405 Method Not Allowed", "text/plain", b, strlen(b));
	} else if (strcmp(req->path, "/health") == 0) {
		const char *b = h->l->stopping ? "stopping\n" : "ok\n";
		respond(h, h->l->stopping ? "503 Service Unavailable" : "200 OK", "text/plain", b,
			strlen(b));
	} else if (strcmp(req->path, "/metrics") == 0) {
		struct pw body;
		pw_init_dyn(&body, 16384, 64u << 20);
		render_metrics(h->l, &body);
		respond(h, "200 OK", "text/plain; version=0.0.4", (const char *)body.buf, body.len);
		pw_free(&body);
	} else {
		const char *b = "not found: try /health or /metrics\n";
		respond(h, "404 Not Found", "text/plain", b, strlen(b));
	}
}

static void http_done(struct ioq_op *op, int res, unsigned flags)
{
	struct http_conn *h = (struct http_conn *)((char *)op - offsetof(struct http_conn, op));
	(void)flags;
	if (res <= 0) {
		http_free(h);
		return;
	}
	if (h->sending) {
		h->sent += (size_t)res;
		if (h->sent < h->out.len)
			arm(h);
		else
			http_free(h);
		return;
	}
	h->in_len += (size_t)res;
	struct http_request req;
	int ret = http_parse(h->in, h->in_len, &req);
	if (ret == 0 && h->in_len < sizeof(h->in)) {
		arm(h);
		return;
	}
	if (ret <= 0) {
		const char *b = "bad request\n";
		respond(h, "400 Bad Request", "text/plain", b, strlen(b));
		return;
	}
	handle(h, &req);
}

void http_check_idle(struct loop *l, int64_t now)
{
	for (struct http_conn *h = l->https; h != NULL; h = h->next) {
		if (h->timed_out || now < h->deadline_ms)
			continue;
		/* Wakes its receive (0) or send (EPIPE); http_done frees it. */
		h->timed_out = true;
		shutdown(h->fd, SHUT_RDWR);
	}
}

void http_accept(struct loop *l, int fd)
{
	if (l->nhttp >= l->cfg->http_max_connections) {
		close(fd);
		return;
	}
	struct http_conn *h = calloc(1, sizeof(*h));
	if (h == NULL) {
		close(fd);
		return;
	}
	/* A slow client cannot hold a slot for long: http_check_idle ends it
	 * after http.timeout.ms. (SO_RCVTIMEO would not: io_uring waits for
	 * socket readiness by polling and never sleeps in the receive.) */
	h->l = l;
	h->fd = fd;
	h->deadline_ms = now_ms() + l->cfg->http_timeout_ms;
	h->next = l->https;
	if (l->https != NULL)
		l->https->prev = h;
	l->https = h;
	l->nhttp++;
	arm(h);
}
