/* say.c — leveled log lines on stderr (see say.h). */
#include "common/say.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static enum say_level level_max = SAY_INFO;

static const char *const level_names[] = {
	[SAY_ERROR] = "error",
	[SAY_WARN] = "warn",
	[SAY_INFO] = "info",
	[SAY_DEBUG] = "debug",
};

void say_set_level(enum say_level level)
{
	level_max = level;
}

enum say_level say_get_level(void)
{
	return level_max;
}

int say_parse_level(const char *name, enum say_level *level)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			*level = (enum say_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

void say(enum say_level level, const char *fmt, ...)
{
	if (level > level_max)
		return;

	char line[1024];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = (int)strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	n += snprintf(line + n, sizeof(line) - (size_t)n, ".%03ldZ %-5s ",
		      ts.tv_nsec / 1000000, level_names[level]);

	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += m;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2; /* truncated: keep the newline */
	line[n++] = '\n';

	ssize_t w = write(STDERR_FILENO, line, (size_t)n);
	(void)w; /* nowhere left to report a failed log write */
}
