/* order-service.c — publishes order.created events to the topic `orders`,
 * keyed by order id, at a steady rate, with acks=all.
 *
 *   order-service [-b BROKERS] [-t TOPIC] [-r RATE] [-n COUNT] [-s SEED]
 *                 [-T TOTALS_FILE] [-X KEY=VALUE]...
 *
 *   -b  HOST:PORT[,...] (default $RINGMQ_BROKERS, else 127.0.0.1:9400)
 *   -t  topic (default orders; create it first: mqadm topic create orders)
 *   -r  orders per second (default 10)
 *   -n  stop after this many orders (default 0: until SIGINT or SIGTERM)
 *   -s  seed: order N's customer and items depend only on (seed, N)
 *   -T  when done, write the units ordered per sku of every order the
 *       broker acknowledged ("SKU-1007 42" lines): what inventory-service
 *       should end up with
 *   -X  any libringmq setting (docs/client.md), e.g. -X linger.ms=20
 *
 * An event, one line of JSON (the message value; the key is the order id,
 * so all events of one order land in one partition, in order):
 *   {"type":"order.created","order_id":1042,"customer_id":17,
 *    "items":[{"sku":"SKU-1003","quantity":2},{"sku":"SKU-1011","quantity":1}],
 *    "total":59.90,"created_at":"2026-11-29T20:51:59.123Z"}
 *
 * Order ids count from 1 on every start: a real service would take them
 * from its database. Prints a progress line to stderr every second; exits 0
 * once every order produced was acknowledged, 1 if any was not. */
#define _POSIX_C_SOURCE 200809L /* sigaction, getopt, clock_gettime, fsync: POSIX */
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ringmq.h>

#define SKUS 20 /* the catalogue: SKU-1001 .. SKU-1020 */
#define MAX_ITEMS 3

struct order {
	long id;
	int customer;
	int nitems;
	struct {
		int sku; /* 1 .. SKUS */
		int quantity;
	} items[MAX_ITEMS];
	long total_cents;
};

struct stats {
	uint64_t seed;
	atomic_long delivered, failed;
	long units[SKUS + 1]; /* per sku, of the orders delivered */
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* splitmix64: a tiny, well-mixed pseudo-random step. */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static long price_cents(int sku)
{
	return 250 + 175 * sku;
}

/* Order `id` of a run with `seed`: the same every time, on any thread. */
static void make_order(uint64_t seed, long id, struct order *o)
{
	uint64_t r = mix(seed) ^ (uint64_t)id;
	o->id = id;
	o->customer = 1 + (int)((r = mix(r)) % 500);
	o->nitems = 1 + (int)((r = mix(r)) % MAX_ITEMS);
	o->total_cents = 0;
	for (int i = 0; i < o->nitems; i++) {
		int sku, seen;
		do { /* each sku once per order */
			sku = 1 + (int)((r = mix(r)) % SKUS);
			seen = 0;
			for (int j = 0; j < i; j++)
				seen |= o->items[j].sku == sku;
		} while (seen);
		o->items[i].sku = sku;
		o->items[i].quantity = 1 + (int)((r = mix(r)) % 4);
		o->total_cents += o->items[i].quantity * price_cents(o->items[i].sku);
	}
}

/* The event as JSON: hand-written, since we control every field. */
static int order_json(const struct order *o, char *buf, size_t cap)
{
	struct timespec now;
	struct tm tm;
	char when[32];
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);

	size_t n = (size_t)snprintf(buf, cap,
				    "{\"type\":\"order.created\",\"order_id\":%ld,"
				    "\"customer_id\":%d,\"items\":[",
				    o->id, o->customer);
	for (int i = 0; i < o->nitems && n < cap; i++)
		n += (size_t)snprintf(buf + n, cap - n, "%s{\"sku\":\"SKU-%d\",\"quantity\":%d}",
				      i > 0 ? "," : "", 1000 + o->items[i].sku,
				      o->items[i].quantity);
	if (n < cap)
		n += (size_t)snprintf(buf + n, cap - n,
				      "],\"total\":%ld.%02ld,\"created_at\":\"%s.%03ldZ\"}",
				      o->total_cents / 100, o->total_cents % 100, when,
				      now.tv_nsec / 1000000);
	return n < cap ? (int)n : -1;
}

/* Runs on the producer's I/O thread, once per order: keep it short. The
 * opaque of each message is its order id, so the order can be made again. */
static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	struct stats *s = opaque;
	if (d->err != RINGMQ_OK) {
		if (atomic_fetch_add(&s->failed, 1) == 0)
			fprintf(stderr, "order-service: order %ld: %s\n", (long)(intptr_t)d->opaque,
				ringmq_strerror(d->err));
		return;
	}
	struct order o;
	make_order(s->seed, (long)(intptr_t)d->opaque, &o);
	for (int i = 0; i < o.nitems; i++)
		s->units[o.items[i].sku] += o.items[i].quantity; /* only this thread writes */
	atomic_fetch_add(&s->delivered, 1);
}

static int set(struct ringmq_config *cfg, const char *key, const char *value)
{
	char err[256];
	if (ringmq_config_set(cfg, key, value, err, sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "order-service: %s\n", err);
		return -1;
	}
	return 0;
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void progress(long sent, struct stats *s, const char *what)
{
	fprintf(stderr, "order-service: %s%ld sent, %ld delivered, %ld failed\n", what, sent,
		atomic_load(&s->delivered), atomic_load(&s->failed));
}

/* A progress line once a second. */
static void tick(int64_t *next_progress, long sent, struct stats *s)
{
	if (now_ns() >= *next_progress) {
		progress(sent, s, "");
		*next_progress += 1000000000;
	}
}

static const char usage[] =
	"usage: order-service [-b BROKERS] [-t TOPIC] [-r RATE] [-n COUNT] "
	"[-s SEED] [-T TOTALS_FILE] [-X KEY=VALUE]...\n";

int main(int argc, char **argv)
{
	const char *topic = "orders", *totals = NULL;
	double rate = 10;
	long count = 0;
	static struct stats stats = { .seed = 1 };
	struct ringmq_config *cfg = ringmq_config_new();
	if (cfg == NULL || set(cfg, "client.id", "order-service") != 0)
		return 2;
	int opt;
	while ((opt = getopt(argc, argv, "b:t:r:n:s:T:X:")) != -1) {
		char *eq;
		switch (opt) {
		case 'b':
			if (set(cfg, "bootstrap.servers", optarg) != 0)
				return 2;
			break;
		case 't': topic = optarg; break;
		case 'r': rate = strtod(optarg, NULL); break;
		case 'n': count = strtol(optarg, NULL, 10); break;
		case 's': stats.seed = strtoull(optarg, NULL, 10); break;
		case 'T': totals = optarg; break;
		case 'X':
			if ((eq = strchr(optarg, '=')) == NULL) {
				fprintf(stderr, "order-service: -X takes KEY=VALUE\n");
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
	if (rate <= 0 || count < 0 || optind != argc) {
		fprintf(stderr, "%s", usage);
		return 2;
	}

	/* acks=all: on a flush=always topic (the default) an order counts as
	 * published only once it is on the broker's disk. Idempotence (on by
	 * default) makes the producer's retries store each order once. */
	char err[256];
	if (set(cfg, "acks", "all") != 0)
		return 2;
	ringmq_config_set_delivery_cb(cfg, on_delivery, &stats);
	struct ringmq_producer *p = ringmq_producer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	if (p == NULL) {
		fprintf(stderr, "order-service: %s\n", err);
		return 1;
	}

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	/* Order id is due at start + (id - 1) / rate: a steady pace that
	 * catches up after a stall instead of drifting. */
	int64_t start = now_ns(), next_progress = start + 1000000000;
	long sent = 0;
	int status = 0;
	for (long id = 1; !stop && (count == 0 || id <= count); id++) {
		int64_t due = start + (int64_t)((double)(id - 1) * 1e9 / rate);
		for (int64_t now; !stop && (now = now_ns()) < due;) {
			int64_t nap = due - now < 100000000 ? due - now : 100000000;
			nanosleep(&(struct timespec){ 0, (long)nap }, NULL);
			tick(&next_progress, sent, &stats);
		}
		if (stop)
			break;

		struct order o;
		char key[24], value[512];
		make_order(stats.seed, id, &o);
		int key_len = snprintf(key, sizeof(key), "%ld", id);
		int value_len = order_json(&o, value, sizeof(value));
		/* Copied into a batch before the call returns; the delivery
		 * callback reports the outcome later. */
		int ret = value_len < 0 ? RINGMQ_ERR_MSG_TOO_LARGE
			: ringmq_produce(p, topic, RINGMQ_PARTITION_ANY, key, (size_t)key_len,
					 value, (size_t)value_len, NULL, 0, 0, (void *)(intptr_t)id);
		if (ret != RINGMQ_OK) {
			fprintf(stderr, "order-service: order %ld to '%s': %s\n", id, topic,
				ringmq_strerror(ret));
			if (ret == RINGMQ_ERR_UNKNOWN_TOPIC)
				fprintf(stderr, "order-service: create it first: mqadm topic create %s "
						"--partitions 4\n", topic);
			status = 1;
			break;
		}
		sent++;
		tick(&next_progress, sent, &stats);
	}

	/* Wait for every acknowledgement, then stop the I/O thread. */
	if (ringmq_producer_flush(p, 30000) != RINGMQ_OK)
		fprintf(stderr, "order-service: some orders were not acknowledged within 30 s\n");
	ringmq_producer_free(p); /* reports whatever is left as failed */
	progress(sent, &stats, "done: ");

	if (totals != NULL) {
		FILE *f = fopen(totals, "w");
		for (int sku = 1; f != NULL && sku <= SKUS; sku++)
			if (stats.units[sku] > 0)
				fprintf(f, "SKU-%d %ld\n", 1000 + sku, stats.units[sku]);
		if (f == NULL || fclose(f) != 0) {
			perror(totals);
			status = 1;
		}
	}
	if (atomic_load(&stats.failed) > 0 || atomic_load(&stats.delivered) != sent)
		status = 1;
	return status;
}
