/* main.c — ringmqd: flags and config file, start-up, and the exit status. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "broker/broker.h"
#include "common/say.h"

static const char usage[] =
	"usage: ringmqd [--config FILE] [--data-dir DIR] [--listen HOST:PORT]\n"
	"               [--http HOST:PORT|off] [--log-level LEVEL]\n"
	"\n"
	"ringmq's broker: appends every message to a segmented log on disk and\n"
	"serves producers and consumers over one io_uring event loop.\n"
	"\n"
	"  --config FILE       read settings (key = value lines) from FILE first;\n"
	"                      flags override it. Keys: docs/operations.md\n"
	"  --data-dir DIR      where topics live (default ./ringmq-data)\n"
	"  --listen HOST:PORT  client protocol (default 127.0.0.1:9400; port 0 picks one)\n"
	"  --http HOST:PORT    GET /health and /metrics (default 127.0.0.1:9401; off disables)\n"
	"  --log-level LEVEL   error, warn, info (default) or debug\n"
	"  -h, --help          this text\n"
	"  -V, --version       print the version\n"
	"\n"
	"Once serving it prints one line to stderr:\n"
	"  ringmqd: ready on HOST:PORT (http HOST:PORT)\n"
	"SIGTERM or SIGINT: stop accepting, finish in-flight appends, fdatasync, exit 0.\n";

/* Every connection is a descriptor, and so is every partition directory
 * and segment file (docs/operations.md, Sizing): a soft RLIMIT_NOFILE of
 * 1024, a common default, would stop the broker long before max.connections
 * or a few hundred partitions. The soft limit goes up to the hard one (the
 * soft limit exists for select(), which the broker does not use), and a hard
 * limit below what max.connections alone needs is reported. */
static void raise_nofile(const struct broker_config *cfg)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur != rl.rlim_max) {
		rlim_t old = rl.rlim_cur;
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			rl.rlim_cur = old;
	}
	rlim_t want = (rlim_t)cfg->max_connections + cfg->http_max_connections + 1024;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
		say_warn("only %llu file descriptors are allowed (RLIMIT_NOFILE, hard limit %llu): "
			 "fewer than max.connections (%u) and the partitions' files need; "
			 "connections beyond the limit wait in the listen queue",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
			 cfg->max_connections);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "data-dir", required_argument, NULL, 'd' },
		{ "listen", required_argument, NULL, 'l' },
		{ "http", required_argument, NULL, 'H' },
		{ "log-level", required_argument, NULL, 'L' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct broker_config cfg;
	broker_config_default(&cfg);
	char why[600];

	/* The config file first, wherever --config appears, then the flags. */
	for (int i = 1; i < argc; i++) {
		const char *path = NULL;
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
			path = argv[i + 1];
		else if (strncmp(argv[i], "--config=", 9) == 0)
			path = argv[i] + 9;
		if (path && broker_config_load(&cfg, path, why, sizeof(why)) != 0) {
			fprintf(stderr, "ringmqd: %s\n", why);
			return 2;
		}
	}
	int ch;
	while ((ch = getopt_long(argc, argv, "hV", opts, NULL)) != -1) {
		const char *key = NULL;
		switch (ch) {
		case 'c':
			continue;
		case 'd':
			key = "data.dir";
			break;
		case 'l':
			key = "listen";
			break;
		case 'H':
			key = "http";
			break;
		case 'L':
			key = "log.level";
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		case 'V':
			puts("ringmqd " BROKER_VERSION);
			return 0;
		default:
			fputs(usage, stderr);
			return 2;
		}
		if (broker_config_set(&cfg, key, optarg, why, sizeof(why)) != 0) {
			fprintf(stderr, "ringmqd: %s\n", why);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ringmqd: unexpected argument '%s'\n%s", argv[optind], usage);
		return 2;
	}
	if (broker_config_check(&cfg, why, sizeof(why)) != 0) {
		fprintf(stderr, "ringmqd: %s\n", why);
		return 2;
	}
	say_set_level(cfg.log_level);
	raise_nofile(&cfg);

	struct loop *l = calloc(1, sizeof(*l));
	if (l == NULL)
		return 1;
	int ret = loop_init(l, &cfg);
	if (ret == 0)
		ret = topics_load(l);
	if (ret == 0)
		ret = offsets_open(l);
	if (ret == 0) {
		say_info("ringmqd %s starting: data dir %s", BROKER_VERSION, cfg.data_dir);
		ret = loop_run(l);
	}
	loop_fini(l);
	free(l);
	if (ret != 0)
		return 1;
	say_info("ringmqd stopped cleanly");
	return 0;
}
