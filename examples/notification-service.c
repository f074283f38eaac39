/* notification-service.c — consumer group `notification`: writes one line
 * per order.created event, as a stand-in for the e-mail a customer gets:
 *
 *   order 1042 for customer 17 confirmed: 3 items, 59.90
 *
 *   notification-service [-b BROKERS] [-t TOPIC] [-o FILE] [-X KEY=VALUE]...
 *
 *   -b  HOST:PORT[,...] (default $RINGMQ_BROKERS, else 127.0.0.1:9400)
 *   -t  topic (default orders)
 *   -o  append the lines to FILE (default: stdout)
 *   -X  any libringmq setting (docs/client.md), e.g. -X session.timeout.ms=3000
 *
 * Delivery is at-least-once. The consumer commits by itself, from poll(),
 * every second (auto-commit): a commit covers only what earlier polls
 * returned, and the lines of those are written (and flushed) before poll is
 * called again. So a crash never loses a notification, but one killed
 * between writing and committing writes up to a second's lines again when
 * it restarts; where that matters, remember the order ids notified. A stop
 * by SIGINT or SIGTERM commits everything written, leaves the group and
 * exits 0. */
#define _POSIX_C_SOURCE 200809L /* sigaction, getopt, clock_gettime, fsync: POSIX */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ringmq.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* Where the value of "key": starts in JSON we know the shape of, or NULL. */
static const char *field(const char *json, const char *key)
{
	char pattern[64];
	snprintf(pattern, sizeof(pattern), "\"%s\":", key);
	const char *p = strstr(json, pattern);
	return p ? p + strlen(pattern) : NULL;
}

/* Writes the notification for one event. Returns 0, or -1 if the event is
 * not an order.created event we can read. */
static int notify(FILE *out, const char *json)
{
	const char *id = field(json, "order_id"), *customer = field(json, "customer_id");
	const char *total = field(json, "total");
	if (strstr(json, "\"type\":\"order.created\"") == NULL || id == NULL || customer == NULL ||
	    total == NULL)
		return -1;
	long units = 0;
	for (const char *q = json; (q = field(q, "quantity")) != NULL;)
		units += strtol(q, NULL, 10);
	fprintf(out, "order %ld for customer %ld confirmed: %ld item%s, %.*s\n",
		strtol(id, NULL, 10), strtol(customer, NULL, 10), units, units == 1 ? "" : "s",
		(int)strcspn(total, ",}"), total);
	return 0;
}

static int set(struct ringmq_config *cfg, const char *key, const char *value)
{
	char err[256];
	if (ringmq_config_set(cfg, key, value, err, sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "notification-service: %s\n", err);
		return -1;
	}
	return 0;
}

static const char usage[] =
	"usage: notification-service [-b BROKERS] [-t TOPIC] [-o FILE] "
	"[-X KEY=VALUE]...\n";

int main(int argc, char **argv)
{
	const char *topic = "orders", *path = NULL;
	/* Commits every second rather than every five: see above. */
	struct ringmq_config *cfg = ringmq_config_new();
	if (cfg == NULL || set(cfg, "client.id", "notification-service") != 0 ||
	    set(cfg, "auto.commit.interval.ms", "1000") != 0)
		return 2;
	int opt;
	while ((opt = getopt(argc, argv, "b:t:o:X:")) != -1) {
		char *eq;
		switch (opt) {
		case 'b':
			if (set(cfg, "bootstrap.servers", optarg) != 0)
				return 2;
			break;
		case 't': topic = optarg; break;
		case 'o': path = optarg; break;
		case 'X':
			if ((eq = strchr(optarg, '=')) == NULL) {
				fprintf(stderr, "notification-service: -X takes KEY=VALUE\n");
				return 2;
			}
			*eq = '\0';
			if (set(cfg, optarg, eq + 1) != 0)
				return 2;
			break;
		default:
			fprintf(stderr, "%s", usage);
			return 2;
		}
	}
	if (optind != argc) {
		fprintf(stderr, "%s", usage);
		return 2;
	}
	FILE *out = path ? fopen(path, "a") : stdout;
	if (out == NULL) {
		perror(path);
		return 1;
	}

	char err[256];
	struct ringmq_consumer *c = ringmq_consumer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	const char *topics[] = { topic };
	if (c == NULL || ringmq_consumer_subscribe(c, "notification", topics, 1, err,
						   sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "notification-service: %s\n", err);
		return 1;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	long sent = 0, bad = 0;
	while (!stop) {
		struct ringmq_message msgs[256];
		size_t n;
		int ret = ringmq_consumer_poll(c, 500, msgs, 256, &n, err, sizeof(err));
		if (ret != RINGMQ_OK && ret != RINGMQ_ERR_TRANSPORT) /* transport: it reconnects */
			fprintf(stderr, "notification-service: %s\n", err);
		if (ret != RINGMQ_OK || n == 0)
			continue;
		for (size_t i = 0; i < n; i++) {
			const struct ringmq_message *m = &msgs[i];
			/* The value is not NUL-terminated: copy it to read it as a string. */
			char json[4096];
			int ok = m->value_len < sizeof(json);
			if (ok) {
				memcpy(json, m->value, m->value_len);
				json[m->value_len] = '\0';
				ok = notify(out, json) == 0;
			}
			if (!ok && bad++ == 0)
				fprintf(stderr, "notification-service: %s[%d] offset %" PRId64
						": not an order.created event; skipped\n",
					m->topic, (int)m->partition, m->offset);
			sent += ok;
		}
		/* Written before the next poll, which may commit them. */
		if (fflush(out) != 0 || ferror(out)) {
			perror(path ? path : "stdout");
			exit(1); /* without _close: it would commit lines that were not written */
		}
	}

	/* Commits what poll returned (all of it written) and leaves the group. */
	if (ringmq_consumer_close(c, err, sizeof(err)) != RINGMQ_OK)
		fprintf(stderr, "notification-service: closing: %s\n", err);
	ringmq_consumer_free(c);
	fprintf(stderr, "notification-service: stopped: %ld notifications written, %ld events "
			"not understood\n", sent, bad);
	return path && fclose(out) != 0 ? 1 : 0;
}
