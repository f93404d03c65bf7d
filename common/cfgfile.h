/*
 * cfgfile: small helpers for reading the daemons' YAML settings files, so
 * both daemons report a bad file the same way: one line, the dotted path of
 * the key, what was expected. Every function returns 0 or -EINVAL with the
 * message in err.
 */
#ifndef AIRGW_CFGFILE_H
#define AIRGW_CFGFILE_H

#include <jansson.h>
#include <stddef.h>
#include <sys/socket.h>

/* Formats into err and returns -EINVAL. */
int cfg_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Rejects members of obj not in the NULL-terminated allowed list. */
int cfg_only_keys(const json_t *obj, const char *where, const char *const *allowed, char *err,
                  size_t errlen);

/* v must have JSON type type; tname is said in the message ("a mapping"). */
int cfg_want(const json_t *v, json_type type, const char *path, const char *tname, char *err,
             size_t errlen);

/* Reads an "ADDR:PORT" string member into *out. */
int cfg_addr(const json_t *v, const char *path, struct sockaddr_storage *out, char *err,
             size_t errlen);

/* Reads a number of seconds in [min, max] into *ms (milliseconds). */
int cfg_seconds(const json_t *v, const char *path, double min, double max, unsigned *ms,
                char *err, size_t errlen);

/* Reads an integer in [min, max]. */
int cfg_int(const json_t *v, const char *path, long long min, long long max, long long *out,
            char *err, size_t errlen);

/* Replaces *dst with a copy of the string member v. */
int cfg_str(const json_t *v, const char *path, char **dst, char *err, size_t errlen);

#endif
