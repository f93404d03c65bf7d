/*
 * log: the one logging sink of every airgw process.
 *
 * Lines go to stderr as "2026-11-22T08:00:00.123Z level [component] message".
 * The level is process-wide, set once at start; logging is safe from any
 * thread (one fprintf per line, stderr is unbuffered).
 */
#ifndef AIRGW_LOG_H
#define AIRGW_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* Sets the process-wide level and the component name put on every line. */
void log_init(const char *component, enum log_level level);

/* Parses "error" | "warn" | "info" | "debug"; returns the level or -1. */
int log_level_parse(const char *s);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
