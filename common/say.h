/* say.h — leveled, timestamped log lines on stderr.
 *
 * One line per notable event (start, stop, recovery cuts, errors), never one
 * per message. Each line is written with a single write(2), so lines from
 * several threads never interleave. Thread-safe. The level is process-wide
 * configuration, set once at start-up.
 */
#ifndef RINGMQ_SAY_H
#define RINGMQ_SAY_H

enum say_level { SAY_ERROR, SAY_WARN, SAY_INFO, SAY_DEBUG };

/* Lines above this level are dropped. Default SAY_INFO. */
void say_set_level(enum say_level level);
enum say_level say_get_level(void);

/* Parses "error", "warn", "info", "debug". Returns 0 or -EINVAL. */
int say_parse_level(const char *name, enum say_level *level);

/* Prints "2026-11-29T20:51:59.123Z INFO  <message>\n" to stderr. */
void say(enum say_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define say_error(...) say(SAY_ERROR, __VA_ARGS__)
#define say_warn(...) say(SAY_WARN, __VA_ARGS__)
#define say_info(...) say(SAY_INFO, __VA_ARGS__)
#define say_debug(...) say(SAY_DEBUG, __VA_ARGS__)

#endif
