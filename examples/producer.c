/* producer.c — a complete libringmq producer: creates a topic if it is
 * missing, sends COUNT keyed messages, and exits 0 only if every one of them
 * was reported stored.
 *
 *   producer [BROKERS [TOPIC [COUNT]]]
 *
 * BROKERS is HOST:PORT[,HOST:PORT...]; without it $RINGMQ_BROKERS, else
 * 127.0.0.1:9400. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ringmq.h>

struct counts {
	atomic_ulong ok;
	atomic_ulong failed;
};

/* Runs on the producer's I/O thread, once per message: keep it short. */
static void on_delivery(const struct ringmq_delivery *d, void *opaque)
{
	struct counts *c = opaque;
	if (d->err == RINGMQ_OK) {
		atomic_fetch_add(&c->ok, 1);
		return;
	}
	if (atomic_fetch_add(&c->failed, 1) == 0)
		fprintf(stderr, "producer: %s[%d]: %s\n", d->topic, (int)d->partition,
			d->errstr);
}

static int set(struct ringmq_config *cfg, const char *key, const char *value)
{
	char err[256];
	if (ringmq_config_set(cfg, key, value, err, sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "producer: %s\n", err);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *brokers = argc > 1 ? argv[1] : NULL;
	const char *topic = argc > 2 ? argv[2] : "example";
	long count = argc > 3 ? strtol(argv[3], NULL, 10) : 1000;
	char err[256];

	struct ringmq_config *cfg = ringmq_config_new();
	if (cfg == NULL || (brokers != NULL && set(cfg, "bootstrap.servers", brokers) != 0)) {
		ringmq_config_free(cfg);
		return 2;
	}

	/* The topic: three partitions, unless it exists already. */
	struct ringmq_admin *admin = ringmq_admin_new(cfg, err, sizeof(err));
	if (admin == NULL) {
		fprintf(stderr, "producer: %s\n", err);
		ringmq_config_free(cfg);
		return 1;
	}
	int ret = ringmq_topic_create(admin, topic, 3, NULL, 0, err, sizeof(err));
	ringmq_admin_free(admin);
	if (ret != RINGMQ_OK && ret != RINGMQ_ERR_TOPIC_EXISTS) {
		fprintf(stderr, "producer: creating topic '%s': %s\n", topic, err);
		ringmq_config_free(cfg);
		return 1;
	}

	/* Stored on disk before the reply (on a flush=always topic), and
	 * retries never store a message twice. */
	struct counts counts = { 0, 0 };
	if (set(cfg, "acks", "all") != 0 || set(cfg, "enable.idempotence", "true") != 0 ||
	    set(cfg, "linger.ms", "5") != 0) {
		ringmq_config_free(cfg);
		return 2;
	}
	ringmq_config_set_delivery_cb(cfg, on_delivery, &counts);
	struct ringmq_producer *p = ringmq_producer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg); /* the producer keeps its own copy */
	if (p == NULL) {
		fprintf(stderr, "producer: %s\n", err);
		return 1;
	}

	long sent = 0;
	for (long i = 0; i < count; i++) {
		char key[32], value[64];
		int key_len = snprintf(key, sizeof(key), "user-%ld", i % 10);
		int value_len = snprintf(value, sizeof(value), "message %ld", i);
		struct ringmq_header h = { "source", "example", 7 };
		/* Copied before the call returns: the buffers are ours again. */
		ret = ringmq_produce(p, topic, RINGMQ_PARTITION_ANY, key, (size_t)key_len, value,
				     (size_t)value_len, &h, 1, 0, NULL);
		if (ret != RINGMQ_OK) {
			fprintf(stderr, "producer: message %ld: %s\n", i, ringmq_strerror(ret));
			break;
		}
		sent++;
	}

	/* Wait for every report, then stop the I/O thread. */
	ret = ringmq_producer_flush(p, 30000);
	if (ret != RINGMQ_OK)
		fprintf(stderr, "producer: flush: %s\n", ringmq_strerror(ret));
	ringmq_producer_free(p);

	unsigned long ok = atomic_load(&counts.ok), failed = atomic_load(&counts.failed);
	printf("%lu delivered, %lu failed\n", ok, failed);
	return sent == count && ok == (unsigned long)count && failed == 0 ? 0 : 1;
}
