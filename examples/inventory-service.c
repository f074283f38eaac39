/* inventory-service.c — consumer group `inventory`: takes the units of every
 * order.created event off the stock of its skus, exactly once, even when it
 * is killed and its events are delivered again.
 *
 *   inventory-service [-b BROKERS] [-t TOPIC] [-s STATE_FILE] [-X KEY=VALUE]...
 *
 *   -b  HOST:PORT[,...] (default $RINGMQ_BROKERS, else 127.0.0.1:9400)
 *   -t  topic (default orders)
 *   -s  the state file (default inventory.state)
 *   -X  any libringmq setting (docs/client.md), e.g. -X session.timeout.ms=3000
 *
 * Delivery is at-least-once: after a crash, the events handled since the
 * last commit come again. So the state file holds, next to the stock, the
 * next offset to apply in each partition, and is replaced as a whole (temp
 * file, fsync, rename): the stock and the offsets change together or not at
 * all. An event below its partition's offset was applied already and is
 * skipped. The group's committed offset only says where to resume reading:
 * it is committed after the state is saved, at most once a second, and any
 * event read again because of that is skipped. (This skips events read
 * twice, not events stored twice: after a broker crash a producer's retry
 * can store an order a second time, docs/client.md, Idempotence; to skip
 * those too, keep the order ids applied in the state.)
 *
 *   # inventory-service state: replaced as a whole, never edited in place
 *   next 0 1204          partition 0: events below offset 1204 are applied
 *   stock SKU-1007 99129 units left of SKU-1007
 *
 * Every sku starts with INITIAL_STOCK units. A state file belongs to one
 * topic and one instance: more instances sharing the group's partitions
 * would need a shared store (a database table updated in the same
 * transaction as the offsets).
 * Stops on SIGINT or SIGTERM: commits, leaves the group, exits 0. */
#define _POSIX_C_SOURCE 200809L /* sigaction, getopt, clock_gettime, fsync: POSIX */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ringmq.h>

#define INITIAL_STOCK 100000
#define MAX_PARTITIONS 1024
#define MAX_SKUS 1000
#define SKU_MAX_LEN 32
#define COMMIT_INTERVAL_MS 1000

struct state {
	int64_t next[MAX_PARTITIONS]; /* next offset to apply; 0 until one is */
	int nskus;
	struct {
		char sku[SKU_MAX_LEN];
		int64_t stock;
	} skus[MAX_SKUS];
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t *stock_of(struct state *st, const char *sku)
{
	for (int i = 0; i < st->nskus; i++)
		if (strcmp(st->skus[i].sku, sku) == 0)
			return &st->skus[i].stock;
	if (st->nskus == MAX_SKUS || strlen(sku) >= SKU_MAX_LEN)
		return NULL;
	strcpy(st->skus[st->nskus].sku, sku);
	st->skus[st->nskus].stock = INITIAL_STOCK;
	return &st->skus[st->nskus++].stock;
}

static int load_state(struct state *st, const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return errno == ENOENT ? 0 : -1; /* no file yet: nothing applied */
	char line[128], sku[SKU_MAX_LEN];
	int part;
	int64_t v, *stock;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, "next %d %" SCNd64, &part, &v) == 2 && part >= 0 &&
		    part < MAX_PARTITIONS)
			st->next[part] = v;
		else if (sscanf(line, "stock %31s %" SCNd64, sku, &v) == 2 &&
			 (stock = stock_of(st, sku)) != NULL)
			*stock = v;
		else if (line[0] != '#')
			fprintf(stderr, "inventory-service: %s: ignoring '%.*s'\n", path,
				(int)strcspn(line, "\n"), line);
	}
	fclose(f);
	return 0;
}

/* Replaces the state file as a whole: after a crash it is either the old
 * one or the new one, never a mix. */
static int save_state(const struct state *st, const char *path)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (f == NULL)
		return -1;
	fprintf(f, "# inventory-service state: replaced as a whole, never edited in place\n");
	for (int p = 0; p < MAX_PARTITIONS; p++)
		if (st->next[p] > 0)
			fprintf(f, "next %d %" PRId64 "\n", p, st->next[p]);
	for (int i = 0; i < st->nskus; i++)
		fprintf(f, "stock %s %" PRId64 "\n", st->skus[i].sku, st->skus[i].stock);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		fclose(f);
		return -1;
	}
	if (fclose(f) != 0 || rename(tmp, path) != 0)
		return -1;
	/* The rename is durable once the directory is. */
	snprintf(dir, sizeof(dir), "%s", path);
	int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		return -1;
	int ret = fsync(dfd);
	close(dfd);
	return ret;
}

/* Applies one event to the stock (in memory). Returns 0, or -1 if it is not
 * an order.created event we can read (then nothing is changed). The JSON is
 * the order service's own, so finding the fields is enough. */
static int apply(struct state *st, const char *json)
{
	struct {
		char sku[SKU_MAX_LEN];
		long quantity;
	} items[16];
	int n = 0;
	if (strstr(json, "\"type\":\"order.created\"") == NULL)
		return -1;
	for (const char *p = json; (p = strstr(p, "\"sku\":\"")) != NULL;) {
		p += strlen("\"sku\":\"");
		size_t len = strcspn(p, "\"");
		const char *q = strstr(p, "\"quantity\":");
		if (n == 16 || len == 0 || len >= SKU_MAX_LEN || p[len] != '"' || q == NULL)
			return -1;
		memcpy(items[n].sku, p, len);
		items[n].sku[len] = '\0';
		items[n].quantity = strtol(q + strlen("\"quantity\":"), NULL, 10);
		if (items[n].quantity <= 0)
			return -1;
		n++;
		p = q;
	}
	if (n == 0)
		return -1;
	/* All items or none. */
	int64_t *stock[16];
	for (int i = 0; i < n; i++)
		if ((stock[i] = stock_of(st, items[i].sku)) == NULL)
			return -1;
	for (int i = 0; i < n; i++)
		*stock[i] -= items[i].quantity;
	return 0;
}

/* Called from poll() when partitions come and go. */
static void on_rebalance(int event, const struct ringmq_topic_partition *tps, size_t n,
			 void *opaque)
{
	const struct state *st = opaque;
	for (size_t i = 0; i < n; i++) {
		if (event != RINGMQ_ASSIGNED) {
			fprintf(stderr, "inventory-service: %s[%d] %s\n", tps[i].topic,
				(int)tps[i].partition, event == RINGMQ_REVOKED ? "revoked" : "lost");
			continue;
		}
		int64_t applied = tps[i].partition < MAX_PARTITIONS ? st->next[tps[i].partition] : 0;
		fprintf(stderr, "inventory-service: %s[%d] assigned at offset %" PRId64, tps[i].topic,
			(int)tps[i].partition, tps[i].offset);
		if (applied > tps[i].offset)
			fprintf(stderr, "; events up to %" PRId64 " were applied already and are skipped",
				applied);
		else if (applied < tps[i].offset) /* a new state file for an old group? */
			fprintf(stderr, "; warning: events %" PRId64 " to %" PRId64
					" were never applied to this state file", applied, tps[i].offset - 1);
		fputc('\n', stderr);
	}
}

static int set(struct ringmq_config *cfg, const char *key, const char *value)
{
	char err[256];
	if (ringmq_config_set(cfg, key, value, err, sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "inventory-service: %s\n", err);
		return -1;
	}
	return 0;
}

static const char usage[] =
	"usage: inventory-service [-b BROKERS] [-t TOPIC] [-s STATE_FILE] "
	"[-X KEY=VALUE]...\n";

int main(int argc, char **argv)
{
	const char *topic = "orders", *path = "inventory.state";
	static struct state st;
	struct ringmq_config *cfg = ringmq_config_new();
	if (cfg == NULL || set(cfg, "client.id", "inventory-service") != 0)
		return 2;
	int opt;
	while ((opt = getopt(argc, argv, "b:t:s:X:")) != -1) {
		char *eq;
		switch (opt) {
		case 'b':
			if (set(cfg, "bootstrap.servers", optarg) != 0)
				return 2;
			break;
		case 't': topic = optarg; break;
		case 's': path = optarg; break;
		case 'X':
			if ((eq = strchr(optarg, '=')) == NULL) {
				fprintf(stderr, "inventory-service: -X takes KEY=VALUE\n");
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
	if (load_state(&st, path) != 0) {
		perror(path);
		return 1;
	}

	/* We commit ourselves, after the state is saved. */
	char err[256];
	if (set(cfg, "enable.auto.commit", "false") != 0)
		return 2;
	ringmq_config_set_rebalance_cb(cfg, on_rebalance, &st);
	struct ringmq_consumer *c = ringmq_consumer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	const char *topics[] = { topic };
	if (c == NULL || ringmq_consumer_subscribe(c, "inventory", topics, 1, err,
						   sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "inventory-service: %s\n", err);
		return 1;
	}
	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	long applied = 0, skipped = 0, bad = 0, reported = -1;
	int64_t last_commit = now_ms(), last_report = 0;
	int uncommitted = 0;
	while (!stop) {
		struct ringmq_message msgs[256];
		size_t n;
		int ret = ringmq_consumer_poll(c, 500, msgs, 256, &n, err, sizeof(err));
		if (ret != RINGMQ_OK && ret != RINGMQ_ERR_TRANSPORT) /* transport: it reconnects */
			fprintf(stderr, "inventory-service: %s\n", err);
		if (ret != RINGMQ_OK)
			continue;

		int changed = 0;
		for (size_t i = 0; i < n; i++) {
			const struct ringmq_message *m = &msgs[i];
			char json[4096];
			if (m->partition >= MAX_PARTITIONS) {
				fprintf(stderr, "inventory-service: partition %d is beyond %d\n",
					(int)m->partition, MAX_PARTITIONS);
				exit(1); /* without _close: it would commit what we did not apply */
			}
			uncommitted = 1;
			if (m->offset < st.next[m->partition]) {
				skipped++; /* applied before a crash, delivered again */
				continue;
			}
			/* The value is not NUL-terminated: copy it to read it as a string. */
			int ok = m->value_len < sizeof(json);
			if (ok) {
				memcpy(json, m->value, m->value_len);
				json[m->value_len] = '\0';
				ok = apply(&st, json) == 0;
			}
			if (!ok && bad++ == 0) /* a real service would send it to a dead-letter topic */
				fprintf(stderr, "inventory-service: %s[%d] offset %" PRId64
						": not an order.created event; skipped\n",
					m->topic, (int)m->partition, m->offset);
			applied += ok;
			st.next[m->partition] = m->offset + 1;
			changed = 1;
		}
		/* Saved before the next poll, which may commit what this one returned. */
		if (changed && save_state(&st, path) != 0) {
			perror(path);
			exit(1); /* without _close: it would commit what we could not save */
		}
		if (uncommitted && now_ms() - last_commit >= COMMIT_INTERVAL_MS) {
			/* Waits until the broker has it on disk. A failed commit is
			 * harmless: what is read again is skipped. */
			if (ringmq_consumer_commit(c, err, sizeof(err)) == RINGMQ_OK)
				uncommitted = 0;
			else
				fprintf(stderr, "inventory-service: commit: %s\n", err);
			last_commit = now_ms();
		}
		if (applied + skipped != reported && now_ms() - last_report >= 1000) {
			fprintf(stderr, "inventory-service: %ld events applied, %ld skipped as "
					"already applied\n", applied, skipped);
			reported = applied + skipped;
			last_report = now_ms();
		}
	}

	/* Commits what poll returned (all of it saved) and leaves the group, so
	 * its partitions move to another member at once. */
	if (ringmq_consumer_close(c, err, sizeof(err)) != RINGMQ_OK)
		fprintf(stderr, "inventory-service: closing: %s\n", err);
	ringmq_consumer_free(c);
	fprintf(stderr, "inventory-service: stopped: %ld events applied, %ld skipped as already "
			"applied, %ld not understood\n", applied, skipped, bad);
	return 0;
}
