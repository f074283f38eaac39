/* consumer.c — a complete libringmq consumer: reads every partition of a
 * topic from the beginning to its current end, prints one line per message
 * (partition, offset, key, value), and exits.
 *
 *   consumer [BROKERS [TOPIC]]
 *
 * BROKERS is HOST:PORT[,HOST:PORT...]; without it $RINGMQ_BROKERS, else
 * 127.0.0.1:9400. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <ringmq.h>

#define MAX_PARTITIONS 1024

int main(int argc, char **argv)
{
	const char *brokers = argc > 1 ? argv[1] : NULL;
	const char *topic = argc > 2 ? argv[2] : "example";
	char err[256];

	struct ringmq_config *cfg = ringmq_config_new();
	if (cfg == NULL)
		return 2;
	if (brokers != NULL &&
	    ringmq_config_set(cfg, "bootstrap.servers", brokers, err, sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "consumer: %s\n", err);
		return 2;
	}

	/* How many partitions the topic has. */
	struct ringmq_admin *admin = ringmq_admin_new(cfg, err, sizeof(err));
	struct ringmq_topic_info *info = NULL;
	int ret = admin ? ringmq_topic_describe(admin, topic, &info, err, sizeof(err))
			: RINGMQ_ERR_NO_MEMORY;
	ringmq_admin_free(admin);
	if (ret != RINGMQ_OK) {
		fprintf(stderr, "consumer: topic '%s': %s\n", topic, err);
		ringmq_config_free(cfg);
		return 1;
	}
	uint32_t nparts = info->partitions < MAX_PARTITIONS ? info->partitions : MAX_PARTITIONS;
	ringmq_topics_free(info, 1);

	struct ringmq_consumer *c = ringmq_consumer_new(cfg, err, sizeof(err));
	ringmq_config_free(cfg);
	if (c == NULL) {
		fprintf(stderr, "consumer: %s\n", err);
		return 1;
	}
	static struct ringmq_topic_partition tps[MAX_PARTITIONS];
	for (uint32_t i = 0; i < nparts; i++)
		tps[i] = (struct ringmq_topic_partition){ topic, (int32_t)i,
							  RINGMQ_OFFSET_BEGINNING };
	if (ringmq_consumer_assign(c, tps, nparts, err, sizeof(err)) != RINGMQ_OK) {
		fprintf(stderr, "consumer: %s\n", err);
		ringmq_consumer_free(c);
		return 1;
	}

	uint64_t total = 0;
	int status = 0;
	for (;;) {
		struct ringmq_message msgs[256];
		size_t n;
		ret = ringmq_consumer_poll(c, 1000, msgs, 256, &n, err, sizeof(err));
		if (ret == RINGMQ_ERR_TRANSPORT)
			continue; /* the broker is away: poll again, nothing is lost */
		if (ret != RINGMQ_OK) {
			fprintf(stderr, "consumer: %s\n", err);
			status = 1;
			break;
		}
		/* The views are valid until the next poll: use or copy them now. */
		for (size_t i = 0; i < n; i++) {
			const struct ringmq_message *m = &msgs[i];
			printf("%d %" PRId64 " %.*s %.*s\n", (int)m->partition, m->offset,
			       (int)m->key_len, m->key ? (const char *)m->key : "",
			       (int)m->value_len, m->value ? (const char *)m->value : "");
		}
		total += n;

		/* At the end of every partition (as of the last fetch)? */
		bool done = true;
		for (uint32_t i = 0; i < nparts && done; i++) {
			int64_t next, end;
			ringmq_consumer_position(c, topic, (int32_t)i, &next, &end);
			done = end >= 0 && next >= end;
		}
		if (done)
			break;
	}
	ringmq_consumer_free(c);
	fprintf(stderr, "consumer: %" PRIu64 " messages\n", total);
	return status;
}
