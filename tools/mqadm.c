/* mqadm.c — the operator's tool: topics, consumer groups and broker status. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/ringmq.h"

/*
 * A thin program over libringmq's admin calls: it parses the command line,
 * makes one call and prints the answer as an aligned table or as JSON. The
 * broker is the authority on names and setting values, so they are passed
 * through as given and its reasons are printed when it refuses them.
 */

#define EXIT_FAIL 1
#define EXIT_USAGE 2

#define DEFAULT_BROKER "127.0.0.1:9400"
/* A broker that is down refuses the connection at once; this bounds the
 * wait for one that is up but does not answer. */
#define REQUEST_TIMEOUT_MS "10000"
#define SETTINGS_MAX 64
#define PARTITIONS_MAX 1000000u

static const char usage_text[] =
	"Usage: mqadm [-b HOST:PORT] [--json] COMMAND [ARGS]\n"
	"\n"
	"Administers a ringmq broker: its topics, consumer groups and status.\n"
	"\n"
	"Commands:\n"
	"  topic create NAME [--partitions N] [SETTINGS]\n"
	"                        create a topic; settings not given take the broker's\n"
	"                        defaults\n"
	"  topic list            every topic and its partition count\n"
	"  topic describe NAME   a topic's settings, then per partition: start and end\n"
	"                        offsets, messages, bytes on disk, segments\n"
	"  topic alter NAME [--partitions N] [SETTINGS]\n"
	"                        add partitions (the count can only grow) or change\n"
	"                        settings\n"
	"  topic delete NAME     delete a topic and all its data\n"
	"  group list            every consumer group, its state and member count\n"
	"  group describe GROUP  members and what they own, then per partition: the\n"
	"                        committed offset, the log end offset and the lag\n"
	"  group reset-offsets GROUP --topic T --to-earliest|--to-latest|\n"
	"                        --to-offset N|--to-time ISO8601\n"
	"                        move the group's committed offsets on every partition\n"
	"                        of T; refused while the group has live members\n"
	"  group delete GROUP    delete a group without live members, and its offsets\n"
	"  broker status         version, data dir, uptime, topics, connections, traffic\n"
	"\n"
	"Options:\n"
	"  -b HOST:PORT[,...]    the broker (default: $RINGMQ_BROKERS, else\n"
	"                        127.0.0.1:9400)\n"
	"  --json                print JSON on stdout instead of tables and messages\n"
	"  -h, --help            print this text\n"
	"\n"
	"Settings (topic create and topic alter; the broker checks every value):\n"
	"  --partitions N        number of partitions (create: default the broker's\n"
	"                        default.partitions; alter: the new, larger count)\n"
	"  --retention-ms MS     delete closed segments older than this (-1: never)\n"
	"  --retention-bytes N   per partition, delete the oldest closed segments\n"
	"                        beyond this many bytes (-1: no limit)\n"
	"  --segment-bytes N     roll a segment at this size (K, M, G suffixes)\n"
	"  --segment-ms MS       roll a segment at this age (-1: never)\n"
	"  --flush always|interval:MS|never\n"
	"                        when data is fdatasynced (docs/operations.md)\n"
	"  --max-message-bytes N largest batch a producer may send\n"
	"  --config KEY=VALUE    any topic setting by its name, e.g.\n"
	"                        index.interval.bytes=8192; may be repeated\n"
	"\n"
	"Exit status: 0 success; 1 the operation failed (broker unreachable, topic\n"
	"exists, unknown topic, setting refused...); 2 usage error. Errors are one\n"
	"line on stderr.\n";

static struct {
	const char *servers;  /* for messages */
	bool json;
} g = { .servers = DEFAULT_BROKER };

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void usage_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mqadm: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputs(" (see mqadm --help)\n", stderr);
	va_end(ap);
	exit(EXIT_USAGE);
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("mqadm: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(EXIT_FAIL);
}

/* Exits with a line saying why a library call failed. The library's reason
 * for an unreachable broker starts "cannot connect to HOST:PORT: ..."; it is
 * reworded to say plainly that the broker is what cannot be reached. */
static void fail_call(int err, const char *errstr) __attribute__((noreturn));

static void fail_call(int err, const char *errstr)
{
	static const char connect_prefix[] = "cannot connect to ";
	const char *why = errstr && errstr[0] ? errstr : ringmq_strerror(err);
	if (err == RINGMQ_ERR_TRANSPORT || err == RINGMQ_ERR_TIMEOUT) {
		if (strncmp(why, connect_prefix, sizeof(connect_prefix) - 1) == 0)
			fail("cannot reach the broker at %s", why + sizeof(connect_prefix) - 1);
		if (err == RINGMQ_ERR_TIMEOUT)
			fail("the broker at %s did not answer in time: %s", g.servers, why);
		fail("lost the connection to the broker at %s: %s", g.servers, why);
	}
	fail("%s", why);
}

/* ---- output ---- */

/* Writes s as a JSON string. Bytes that are not valid UTF-8 become U+FFFD,
 * so the output always parses. */
static void json_str(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	putchar('"');
	while (*p) {
		unsigned char c = *p;
		if (c < 0x80) {
			if (c == '"' || c == '\\')
				printf("\\%c", c);
			else if (c == '\n')
				fputs("\\n", stdout);
			else if (c == '\t')
				fputs("\\t", stdout);
			else if (c < 0x20 || c == 0x7f)
				printf("\\u%04x", c);
			else
				putchar(c);
			p++;
			continue;
		}
		/* Length of the sequence, and the range its second byte must be
		 * in (which rules out overlong forms and surrogates). */
		int len = 0;
		unsigned char lo = 0x80, hi = 0xbf;
		if (c >= 0xc2 && c <= 0xdf)
			len = 2;
		else if (c >= 0xe0 && c <= 0xef)
			len = 3;
		else if (c >= 0xf0 && c <= 0xf4)
			len = 4;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
		else if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
		bool ok = len > 0 && p[1] >= lo && p[1] <= hi;
		for (int i = 2; ok && i < len; i++)
			ok = p[i] >= 0x80 && p[i] <= 0xbf;
		if (ok) {
			fwrite(p, 1, (size_t)len, stdout);
			p += len;
		} else {
			fputs("\\ufffd", stdout);
			p++;
		}
	}
	putchar('"');
}

/* An aligned text table: columns separated by two spaces, numbers
 * right-aligned, no trailing blanks. */
struct table {
	size_t ncols;
	const bool *right;
	char **cells; /* row-major, the header first */
	size_t ncells, cap;
};

static void table_add(struct table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void table_add(struct table *t, const char *fmt, ...)
{
	if (t->ncells == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 64;
		t->cells = realloc(t->cells, t->cap * sizeof(*t->cells));
		if (t->cells == NULL)
			fail("out of memory");
	}
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(&t->cells[t->ncells], fmt, ap) < 0)
		fail("out of memory");
	va_end(ap);
	t->ncells++;
}

static void table_print(struct table *t)
{
	size_t width[16] = { 0 };
	for (size_t i = 0; i < t->ncells; i++) {
		size_t n = strlen(t->cells[i]);
		if (n > width[i % t->ncols])
			width[i % t->ncols] = n;
	}
	for (size_t i = 0; i < t->ncells; i++) {
		size_t col = i % t->ncols;
		bool last = col == t->ncols - 1;
		int w = (int)width[col];
		if (t->right[col])
			printf("%*s", w, t->cells[i]);
		else if (last)
			fputs(t->cells[i], stdout);
		else
			printf("%-*s", w, t->cells[i]);
		fputs(last ? "\n" : "  ", stdout);
		free(t->cells[i]);
	}
	free(t->cells);
	t->cells = NULL;
	t->ncells = t->cap = 0;
}

/* ---- commands ---- */

struct args {
	const char *words[8];   /* command words and NAME */
	int nwords;
	uint32_t partitions;    /* 0: not given */
	struct ringmq_kv settings[SETTINGS_MAX];
	size_t nsettings;
	const char *setting_flag; /* the first setting flag seen, for messages */
	const char *reset_topic;  /* group reset-offsets --topic */
	int reset_mode;           /* -1 none, else enum ringmq_reset */
	int64_t reset_value;
	const char *reset_flag;
};

static int cmp_topic(const void *a, const void *b)
{
	const struct ringmq_topic_info *x = a, *y = b;
	return strcmp(x->name, y->name);
}

static void topic_list(struct ringmq_admin *a)
{
	struct ringmq_topic_info *topics;
	size_t n;
	char err[512];
	int ret = ringmq_topic_list(a, &topics, &n, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	qsort(topics, n, sizeof(*topics), cmp_topic);
	if (g.json) {
		fputs("{\"topics\":[", stdout);
		for (size_t i = 0; i < n; i++) {
			fputs(i ? ",{\"name\":" : "{\"name\":", stdout);
			json_str(topics[i].name);
			printf(",\"partition_count\":%" PRIu32 "}", topics[i].partitions);
		}
		fputs("]}\n", stdout);
	} else {
		static const bool right[] = { false, true };
		struct table t = { .ncols = 2, .right = right };
		table_add(&t, "TOPIC");
		table_add(&t, "PARTITIONS");
		for (size_t i = 0; i < n; i++) {
			table_add(&t, "%s", topics[i].name);
			table_add(&t, "%" PRIu32, topics[i].partitions);
		}
		table_print(&t);
	}
	ringmq_topics_free(topics, n);
}

static void topic_describe(struct ringmq_admin *a, const char *name)
{
	struct ringmq_topic_info *ti;
	char err[512];
	int ret = ringmq_topic_describe(a, name, &ti, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	if (g.json) {
		fputs("{\"name\":", stdout);
		json_str(ti->name);
		printf(",\"partition_count\":%" PRIu32 ",\"config\":{", ti->partitions);
		for (size_t i = 0; i < ti->nconfigs; i++) {
			if (i)
				putchar(',');
			json_str(ti->configs[i].key);
			putchar(':');
			json_str(ti->configs[i].value);
		}
		fputs("},\"partitions\":[", stdout);
		for (uint32_t i = 0; i < ti->partitions; i++) {
			const struct ringmq_partition_info *p = &ti->parts[i];
			printf("%s{\"partition\":%" PRId32 ",\"log_start\":%" PRId64
			       ",\"log_end\":%" PRId64 ",\"messages\":%" PRId64
			       ",\"size_bytes\":%" PRIu64 ",\"segments\":%" PRIu32 "}",
			       i ? "," : "", p->partition, p->log_start, p->log_end,
			       p->log_end - p->log_start, p->size_bytes, p->segments);
		}
		fputs("]}\n", stdout);
		ringmq_topics_free(ti, 1);
		return;
	}
	static const bool right2[] = { false, false };
	struct table t = { .ncols = 2, .right = right2 };
	table_add(&t, "topic");
	table_add(&t, "%s", ti->name);
	table_add(&t, "partitions");
	table_add(&t, "%" PRIu32, ti->partitions);
	table_print(&t);
	putchar('\n');
	table_add(&t, "SETTING");
	table_add(&t, "VALUE");
	for (size_t i = 0; i < ti->nconfigs; i++) {
		table_add(&t, "%s", ti->configs[i].key);
		table_add(&t, "%s", ti->configs[i].value);
	}
	table_print(&t);
	putchar('\n');
	static const bool right6[] = { true, true, true, true, true, true };
	struct table pt = { .ncols = 6, .right = right6 };
	const char *head[] = { "PARTITION", "START", "END", "MESSAGES", "BYTES", "SEGMENTS" };
	for (size_t i = 0; i < 6; i++)
		table_add(&pt, "%s", head[i]);
	for (uint32_t i = 0; i < ti->partitions; i++) {
		const struct ringmq_partition_info *p = &ti->parts[i];
		table_add(&pt, "%" PRId32, p->partition);
		table_add(&pt, "%" PRId64, p->log_start);
		table_add(&pt, "%" PRId64, p->log_end);
		table_add(&pt, "%" PRId64, p->log_end - p->log_start);
		table_add(&pt, "%" PRIu64, p->size_bytes);
		table_add(&pt, "%" PRIu32, p->segments);
	}
	table_print(&pt);
	ringmq_topics_free(ti, 1);
}

/* ---- groups ---- */

static int cmp_group(const void *a, const void *b)
{
	const struct ringmq_group_info *x = a, *y = b;
	return strcmp(x->name, y->name);
}

static void group_list(struct ringmq_admin *a)
{
	struct ringmq_group_info *gs;
	size_t n;
	char err[512];
	int ret = ringmq_group_list(a, &gs, &n, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	qsort(gs, n, sizeof(*gs), cmp_group);
	if (g.json) {
		fputs("{\"groups\":[", stdout);
		for (size_t i = 0; i < n; i++) {
			fputs(i ? ",{\"name\":" : "{\"name\":", stdout);
			json_str(gs[i].name);
			fputs(",\"state\":", stdout);
			json_str(gs[i].state);
			printf(",\"members\":%zu}", gs[i].nmembers);
		}
		fputs("]}\n", stdout);
	} else {
		static const bool right[] = { false, false, true };
		struct table t = { .ncols = 3, .right = right };
		table_add(&t, "GROUP");
		table_add(&t, "STATE");
		table_add(&t, "MEMBERS");
		for (size_t i = 0; i < n; i++) {
			table_add(&t, "%s", gs[i].name);
			table_add(&t, "%s", gs[i].state);
			table_add(&t, "%zu", gs[i].nmembers);
		}
		table_print(&t);
	}
	ringmq_groups_free(gs, n);
}

static void group_describe(struct ringmq_admin *a, const char *name)
{
	struct ringmq_group_info *gi;
	char err[512];
	int ret = ringmq_group_describe(a, name, &gi, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	int64_t total_lag = 0;
	for (size_t i = 0; i < gi->nparts; i++)
		total_lag += gi->parts[i].lag;
	if (g.json) {
		fputs("{\"group\":", stdout);
		json_str(gi->name);
		fputs(",\"state\":", stdout);
		json_str(gi->state);
		printf(",\"rebalances\":%" PRIu64 ",\"lag\":%" PRId64 ",\"members\":[",
		       gi->rebalances, total_lag);
		for (size_t i = 0; i < gi->nmembers; i++) {
			const struct ringmq_group_member *m = &gi->members[i];
			fputs(i ? ",{\"member_id\":" : "{\"member_id\":", stdout);
			json_str(m->member_id);
			fputs(",\"client_id\":", stdout);
			json_str(m->client_id);
			printf(",\"epoch\":%" PRIu32 ",\"last_seen_ms_ago\":%" PRIu64
			       ",\"partitions\":[", m->epoch, m->last_seen_ms_ago);
			for (size_t k = 0; k < m->nowned; k++) {
				fputs(k ? ",{\"topic\":" : "{\"topic\":", stdout);
				json_str(m->owned[k].topic);
				printf(",\"partition\":%" PRId32 "}", m->owned[k].partition);
			}
			fputs("]}", stdout);
		}
		fputs("],\"partitions\":[", stdout);
		for (size_t i = 0; i < gi->nparts; i++) {
			const struct ringmq_group_partition *p = &gi->parts[i];
			fputs(i ? ",{\"topic\":" : "{\"topic\":", stdout);
			json_str(p->topic);
			printf(",\"partition\":%" PRId32 ",\"committed\":%" PRId64
			       ",\"log_start\":%" PRId64 ",\"log_end\":%" PRId64 ",\"lag\":%" PRId64
			       ",\"owner\":",
			       p->partition, p->committed, p->log_start, p->log_end, p->lag);
			json_str(p->owner);
			putchar('}');
		}
		fputs("]}\n", stdout);
		ringmq_groups_free(gi, 1);
		return;
	}
	printf("group       %s\nstate       %s\nmembers     %zu\nrebalances  %" PRIu64
	       "\nlag         %" PRId64 "\n\n",
	       gi->name, gi->state, gi->nmembers, gi->rebalances, total_lag);
	if (gi->nmembers > 0) {
		static const bool rm[] = { false, false, true, true, false };
		struct table mt = { .ncols = 5, .right = rm };
		const char *head[] = { "MEMBER", "CLIENT", "EPOCH", "LAST SEEN MS", "PARTITIONS" };
		for (size_t i = 0; i < 5; i++)
			table_add(&mt, "%s", head[i]);
		for (size_t i = 0; i < gi->nmembers; i++) {
			const struct ringmq_group_member *m = &gi->members[i];
			table_add(&mt, "%s", m->member_id);
			table_add(&mt, "%s", m->client_id[0] ? m->client_id : "-");
			table_add(&mt, "%" PRIu32, m->epoch);
			table_add(&mt, "%" PRIu64, m->last_seen_ms_ago);
			char list[512] = "";
			size_t used = 0;
			for (size_t k = 0; k < m->nowned && used + 64 < sizeof(list); k++)
				used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s[%d]",
							 k ? " " : "", m->owned[k].topic,
							 m->owned[k].partition);
			table_add(&mt, "%s", m->nowned ? list : "-");
		}
		table_print(&mt);
		putchar('\n');
	}
	static const bool rp[] = { false, true, true, true, true, false };
	struct table pt = { .ncols = 6, .right = rp };
	const char *head[] = { "TOPIC", "PARTITION", "COMMITTED", "LOG END", "LAG", "OWNER" };
	for (size_t i = 0; i < 6; i++)
		table_add(&pt, "%s", head[i]);
	for (size_t i = 0; i < gi->nparts; i++) {
		const struct ringmq_group_partition *p = &gi->parts[i];
		table_add(&pt, "%s", p->topic);
		table_add(&pt, "%" PRId32, p->partition);
		if (p->committed >= 0)
			table_add(&pt, "%" PRId64, p->committed);
		else
			table_add(&pt, "-");
		table_add(&pt, "%" PRId64, p->log_end);
		table_add(&pt, "%" PRId64, p->lag);
		table_add(&pt, "%s", p->owner[0] ? p->owner : "-");
	}
	table_print(&pt);
	ringmq_groups_free(gi, 1);
}

static void group_reset(struct ringmq_admin *a, const char *name, const struct args *ar)
{
	struct ringmq_topic_partition *parts = NULL;
	size_t n = 0;
	char err[512];
	int ret = ringmq_group_reset_offsets(a, name, ar->reset_topic,
					     (enum ringmq_reset)ar->reset_mode, ar->reset_value,
					     &parts, &n, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	if (g.json) {
		fputs("{\"group\":", stdout);
		json_str(name);
		fputs(",\"offsets\":[", stdout);
		for (size_t i = 0; i < n; i++) {
			fputs(i ? ",{\"topic\":" : "{\"topic\":", stdout);
			json_str(parts[i].topic);
			printf(",\"partition\":%" PRId32 ",\"offset\":%" PRId64 "}",
			       parts[i].partition, parts[i].offset);
		}
		fputs("]}\n", stdout);
	} else {
		static const bool r3[] = { false, true, true };
		struct table t = { .ncols = 3, .right = r3 };
		table_add(&t, "TOPIC");
		table_add(&t, "PARTITION");
		table_add(&t, "NEW OFFSET");
		for (size_t i = 0; i < n; i++) {
			table_add(&t, "%s", parts[i].topic);
			table_add(&t, "%" PRId32, parts[i].partition);
			table_add(&t, "%" PRId64, parts[i].offset);
		}
		table_print(&t);
	}
	for (size_t i = 0; i < n; i++)
		free((char *)parts[i].topic);
	free(parts);
}

static void say_done(const char *action, const char *name, uint32_t partitions)
{
	if (g.json) {
		fputs("{\"topic\":", stdout);
		json_str(name);
		printf(",\"result\":\"%s\"}\n", action);
	} else if (partitions > 0) {
		printf("%s topic '%s' (%" PRIu32 " partition%s)\n", action, name, partitions,
		       partitions == 1 ? "" : "s");
	} else {
		printf("%s topic '%s'\n", action, name);
	}
}

static void print_uptime(uint64_t ms)
{
	uint64_t s = ms / 1000;
	if (s >= 86400)
		printf("%" PRIu64 "d ", s / 86400);
	if (s >= 3600)
		printf("%" PRIu64 "h ", s / 3600 % 24);
	if (s >= 60)
		printf("%" PRIu64 "m ", s / 60 % 60);
	printf("%" PRIu64 "s\n", s % 60);
}

static void broker_status(struct ringmq_admin *a)
{
	struct ringmq_broker_status st;
	char err[512];
	int ret = ringmq_broker_status(a, &st, err, sizeof(err));
	if (ret != 0)
		fail_call(ret, err);
	if (g.json) {
		fputs("{\"broker\":", stdout);
		json_str(g.servers);
		fputs(",\"version\":", stdout);
		json_str(st.version);
		fputs(",\"data_dir\":", stdout);
		json_str(st.data_dir);
		printf(",\"uptime_ms\":%" PRIu64 ",\"topics\":%" PRIu32 ",\"partitions\":%" PRIu32
		       ",\"connections\":%" PRIu32 ",\"bytes_on_disk\":%" PRIu64
		       ",\"messages_in\":%" PRIu64 ",\"bytes_in\":%" PRIu64 ",\"bytes_out\":%" PRIu64
		       "}\n",
		       st.uptime_ms, st.topics, st.partitions, st.connections, st.bytes_on_disk,
		       st.messages_in, st.bytes_in, st.bytes_out);
		return;
	}
	printf("broker         %s\n", g.servers);
	printf("version        %s\n", st.version);
	printf("data dir       %s\n", st.data_dir);
	printf("uptime         ");
	print_uptime(st.uptime_ms);
	printf("topics         %" PRIu32 "\n", st.topics);
	printf("partitions     %" PRIu32 "\n", st.partitions);
	printf("connections    %" PRIu32 "\n", st.connections);
	printf("bytes on disk  %" PRIu64 "\n", st.bytes_on_disk);
	printf("messages in    %" PRIu64 "\n", st.messages_in);
	printf("bytes in       %" PRIu64 "\n", st.bytes_in);
	printf("bytes out      %" PRIu64 "\n", st.bytes_out);
}

/* ---- the command line ---- */

/* Flags that set one topic setting, and the setting's name. */
static const struct {
	const char *flag;
	const char *key;
} setting_flags[] = {
	{ "--retention-ms", "retention.ms" },
	{ "--retention-bytes", "retention.bytes" },
	{ "--segment-bytes", "segment.bytes" },
	{ "--segment-ms", "segment.ms" },
	{ "--flush", "flush" },
	{ "--max-message-bytes", "max.message.bytes" },
};

static void set_reset(struct args *ar, const char *flag, int mode, int64_t value)
{
	if (ar->reset_flag != NULL)
		usage_error("give one of --to-earliest, --to-latest, --to-offset, --to-time "
			    "(got %s and %s)", ar->reset_flag, flag);
	ar->reset_flag = flag;
	ar->reset_mode = mode;
	ar->reset_value = value;
}

/* "2026-11-29T20:51:59Z", optionally with ".123" milliseconds, "+HH:MM" or
 * "-HH:MM" instead of Z, or a date alone (midnight UTC). Returns 0 with
 * *ms since 1970, or -1. */
static int parse_iso8601(const char *s, int64_t *ms)
{
	int y, mo, d, h = 0, mi = 0, sec = 0, n = 0;
	if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10)
		return -1;
	const char *p = s + n;
	long frac_ms = 0;
	int off_min = 0;
	if (*p == 'T' || *p == ' ') {
		int m = 0;
		if (sscanf(p + 1, "%2d:%2d:%2d%n", &h, &mi, &sec, &m) != 3 || m != 8)
			return -1;
		p += 1 + m;
		if (*p == '.') {
			int digits = 0;
			for (p++; *p >= '0' && *p <= '9'; p++, digits++)
				if (digits < 3)
					frac_ms = frac_ms * 10 + (*p - '0');
			if (digits == 0)
				return -1;
			for (; digits < 3; digits++)
				frac_ms *= 10;
		}
		if (*p == 'Z') {
			p++;
		} else if (*p == '+' || *p == '-') {
			int oh, om, k = 0;
			if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &k) != 2 || k != 5 || oh > 23 ||
			    om > 59)
				return -1;
			off_min = (oh * 60 + om) * (*p == '+' ? 1 : -1);
			p += 1 + k;
		} else {
			return -1; /* a time must say its zone */
		}
	}
	if (*p != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 ||
	    y < 1970)
		return -1;
	/* Days since 1970 by the civil calendar (no time zone involved). */
	int yy = mo <= 2 ? y - 1 : y;
	int era = yy / 400, yoe = yy - era * 400;
	int doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	int64_t days = (int64_t)era * 146097 + doe - 719468;
	int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - (int64_t)off_min * 60;
	*ms = secs * 1000 + frac_ms;
	return 0;
}

static void add_setting(struct args *ar, const char *flag, const char *key, const char *value)
{
	if (ar->nsettings == SETTINGS_MAX)
		usage_error("too many settings (at most %d)", SETTINGS_MAX);
	if (value[0] == '\0')
		usage_error("%s needs a value", flag);
	ar->settings[ar->nsettings++] = (struct ringmq_kv){ key, value };
	if (ar->setting_flag == NULL)
		ar->setting_flag = flag;
}

/* The value of option `opt` (given as "--opt=value" or "--opt value"). */
static const char *opt_value(int argc, char **argv, int *i, const char *opt)
{
	size_t n = strlen(opt);
	if (argv[*i][n] == '=')
		return argv[*i] + n + 1;
	if (opt[1] != '-' && argv[*i][n] != '\0')
		return argv[*i] + n; /* -bHOST:PORT */
	if (*i + 1 >= argc)
		usage_error("%s needs a value", opt);
	return argv[++*i];
}

/* Whether argv[i] is option `opt`, alone or with "=value" (or, for a short
 * option, the value glued on). */
static bool is_opt(const char *arg, const char *opt)
{
	size_t n = strlen(opt);
	if (strncmp(arg, opt, n) != 0)
		return false;
	return arg[n] == '\0' || arg[n] == '=' || opt[1] != '-';
}

static void parse_args(int argc, char **argv, struct args *ar, const char **brokers)
{
	bool opts_done = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (opts_done || a[0] != '-' || a[1] == '\0') {
			if (ar->nwords == (int)(sizeof(ar->words) / sizeof(ar->words[0])))
				usage_error("unexpected argument '%s'", a);
			ar->words[ar->nwords++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			opts_done = true;
			continue;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			fputs(usage_text, stdout);
			exit(0);
		}
		if (strcmp(a, "--json") == 0) {
			g.json = true;
			continue;
		}
		if (is_opt(a, "-b")) {
			*brokers = opt_value(argc, argv, &i, "-b");
			continue;
		}
		if (is_opt(a, "--partitions")) {
			const char *v = opt_value(argc, argv, &i, "--partitions");
			char *end;
			errno = 0;
			unsigned long long n = strtoull(v, &end, 10);
			if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || n == 0 ||
			    n > PARTITIONS_MAX)
				usage_error("--partitions must be a whole number from 1 to %u, not '%s'",
					    PARTITIONS_MAX, v);
			ar->partitions = (uint32_t)n;
			if (ar->setting_flag == NULL)
				ar->setting_flag = "--partitions";
			continue;
		}
		if (is_opt(a, "--topic")) {
			ar->reset_topic = opt_value(argc, argv, &i, "--topic");
			continue;
		}
		if (strcmp(a, "--to-earliest") == 0 || strcmp(a, "--to-latest") == 0) {
			set_reset(ar, a, a[5] == 'e' ? RINGMQ_RESET_EARLIEST : RINGMQ_RESET_LATEST,
				  0);
			continue;
		}
		if (is_opt(a, "--to-offset")) {
			const char *v = opt_value(argc, argv, &i, "--to-offset");
			char *end;
			errno = 0;
			long long n = strtoll(v, &end, 10);
			if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0)
				usage_error("--to-offset takes an offset (a whole number), not '%s'", v);
			set_reset(ar, "--to-offset", RINGMQ_RESET_OFFSET, n);
			continue;
		}
		if (is_opt(a, "--to-time")) {
			const char *v = opt_value(argc, argv, &i, "--to-time");
			int64_t ms;
			if (parse_iso8601(v, &ms) != 0)
				usage_error("--to-time takes an ISO 8601 time such as "
					    "2026-11-29T20:00:00Z, not '%s'", v);
			set_reset(ar, "--to-time", RINGMQ_RESET_TIME, ms);
			continue;
		}
		if (is_opt(a, "--config")) {
			const char *v = opt_value(argc, argv, &i, "--config");
			const char *eq = strchr(v, '=');
			if (eq == NULL || eq == v)
				usage_error("--config takes KEY=VALUE, not '%s'", v);
			char *key = strndup(v, (size_t)(eq - v));
			if (key == NULL)
				fail("out of memory");
			add_setting(ar, "--config", key, eq + 1);
			continue;
		}
		bool found = false;
		for (size_t k = 0; k < sizeof(setting_flags) / sizeof(setting_flags[0]); k++) {
			if (is_opt(a, setting_flags[k].flag)) {
				const char *v = opt_value(argc, argv, &i, setting_flags[k].flag);
				add_setting(ar, setting_flags[k].flag, setting_flags[k].key, v);
				found = true;
				break;
			}
		}
		if (!found)
			usage_error("unknown option '%s'", a);
	}
}

/* Checks the number of words after "topic VERB" and that settings are only
 * given where they apply. */
static void expect(const struct args *ar, int nwords, const char *what, bool settings)
{
	if (ar->nwords < nwords)
		usage_error("%s %s: missing %s", ar->words[0], ar->words[1], what);
	if (ar->nwords > nwords)
		usage_error("unexpected argument '%s'", ar->words[nwords]);
	if (!settings && ar->setting_flag != NULL)
		usage_error("%s applies only to topic create and topic alter", ar->setting_flag);
}

int main(int argc, char **argv)
{
	/* Static: the --config keys it holds live until exit. */
	static struct args ar;
	const char *brokers = NULL;
	parse_args(argc, argv, &ar, &brokers);
	if (ar.nwords == 0)
		usage_error("no command given");

	/* Check the command before connecting anywhere. */
	const char *w0 = ar.words[0], *w1 = ar.nwords > 1 ? ar.words[1] : NULL;
	enum { CREATE, LIST, DESCRIBE, ALTER, DELETE, STATUS, G_LIST, G_DESCRIBE, G_RESET,
	       G_DELETE } cmd;
	if (strcmp(w0, "topic") == 0) {
		if (w1 == NULL)
			usage_error("topic: missing a subcommand (create, list, describe, alter, "
				    "delete)");
		if (strcmp(w1, "create") == 0) {
			cmd = CREATE;
			expect(&ar, 3, "NAME", true);
		} else if (strcmp(w1, "list") == 0) {
			cmd = LIST;
			expect(&ar, 2, "", false);
		} else if (strcmp(w1, "describe") == 0) {
			cmd = DESCRIBE;
			expect(&ar, 3, "NAME", false);
		} else if (strcmp(w1, "alter") == 0) {
			cmd = ALTER;
			expect(&ar, 3, "NAME", true);
			if (ar.setting_flag == NULL)
				usage_error("topic alter: nothing to change: give --partitions or a "
					    "setting");
		} else if (strcmp(w1, "delete") == 0) {
			cmd = DELETE;
			expect(&ar, 3, "NAME", false);
		} else {
			usage_error("unknown command 'topic %s'", w1);
		}
	} else if (strcmp(w0, "group") == 0) {
		if (w1 == NULL)
			usage_error("group: missing a subcommand (list, describe, reset-offsets, "
				    "delete)");
		if (strcmp(w1, "list") == 0) {
			cmd = G_LIST;
			expect(&ar, 2, "", false);
		} else if (strcmp(w1, "describe") == 0) {
			cmd = G_DESCRIBE;
			expect(&ar, 3, "GROUP", false);
		} else if (strcmp(w1, "delete") == 0) {
			cmd = G_DELETE;
			expect(&ar, 3, "GROUP", false);
		} else if (strcmp(w1, "reset-offsets") == 0) {
			cmd = G_RESET;
			expect(&ar, 3, "GROUP", false);
			if (ar.reset_topic == NULL)
				usage_error("group reset-offsets: missing --topic T");
			if (ar.reset_flag == NULL)
				usage_error("group reset-offsets: missing --to-earliest, --to-latest, "
					    "--to-offset N or --to-time ISO8601");
		} else {
			usage_error("unknown command 'group %s'", w1);
		}
	} else if (strcmp(w0, "broker") == 0) {
		if (w1 == NULL || strcmp(w1, "status") != 0)
			usage_error("unknown command 'broker%s%s'", w1 ? " " : "", w1 ? w1 : "");
		cmd = STATUS;
		expect(&ar, 2, "", false);
	} else {
		usage_error("unknown command '%s'", w0);
	}
	if (cmd != G_RESET && (ar.reset_flag != NULL || ar.reset_topic != NULL))
		usage_error("%s applies only to group reset-offsets",
			    ar.reset_flag ? ar.reset_flag : "--topic");

	/* Static: still reachable when fail() exits, so LeakSanitizer does not
	 * report what the exit releases anyway. */
	static struct ringmq_config *cfg;
	static struct ringmq_admin *a;
	cfg = ringmq_config_new();
	if (cfg == NULL)
		fail("out of memory");
	char err[512];
	const char *from = "-b";
	if (brokers == NULL) {
		/* The library falls back to the default on a bad
		 * $RINGMQ_BROKERS; a tool should say so instead. */
		const char *env = getenv("RINGMQ_BROKERS");
		if (env != NULL && env[0] != '\0') {
			brokers = env;
			from = "RINGMQ_BROKERS";
		}
	}
	if (brokers != NULL) {
		if (ringmq_config_set(cfg, "bootstrap.servers", brokers, err, sizeof(err)) != 0)
			usage_error("%s: %s", from, err);
		g.servers = brokers;
	}
	if (ringmq_config_set(cfg, "request.timeout.ms", REQUEST_TIMEOUT_MS, err, sizeof(err)) != 0 ||
	    ringmq_config_set(cfg, "client.id", "mqadm", err, sizeof(err)) != 0)
		fail("%s", err);
	a = ringmq_admin_new(cfg, err, sizeof(err));
	if (a == NULL)
		fail("%s", err);
	ringmq_config_free(cfg);

	const char *name = ar.nwords > 2 ? ar.words[2] : NULL;
	int ret = 0;
	switch (cmd) {
	case CREATE:
		ret = ringmq_topic_create(a, name, ar.partitions, ar.settings, ar.nsettings, err,
					  sizeof(err));
		if (ret != 0)
			fail_call(ret, err);
		say_done("created", name, ar.partitions);
		break;
	case ALTER:
		ret = ringmq_topic_alter(a, name, ar.partitions, ar.settings, ar.nsettings, err,
					 sizeof(err));
		if (ret != 0)
			fail_call(ret, err);
		say_done("altered", name, ar.partitions);
		break;
	case DELETE:
		ret = ringmq_topic_delete(a, name, err, sizeof(err));
		if (ret != 0)
			fail_call(ret, err);
		say_done("deleted", name, 0);
		break;
	case LIST:
		topic_list(a);
		break;
	case DESCRIBE:
		topic_describe(a, name);
		break;
	case STATUS:
		broker_status(a);
		break;
	case G_LIST:
		group_list(a);
		break;
	case G_DESCRIBE:
		group_describe(a, name);
		break;
	case G_DELETE:
		ret = ringmq_group_delete(a, name, err, sizeof(err));
		if (ret != 0)
			fail_call(ret, err);
		if (g.json) {
			fputs("{\"group\":", stdout);
			json_str(name);
			fputs(",\"result\":\"deleted\"}\n", stdout);
		} else {
			printf("deleted group '%s'\n", name);
		}
		break;
	case G_RESET:
		group_reset(a, name, &ar);
		break;
	}
	ringmq_admin_free(a);
	if (fflush(stdout) != 0 || ferror(stdout))
		fail("cannot write the output: %s", strerror(errno));
	return 0;
}
