/*
 * cfgfile: see cfgfile.h.
 */
#include "cfgfile.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netaddr.h"

int cfg_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

int cfg_only_keys(const json_t *obj, const char *where, const char *const *allowed, char *err,
                  size_t errlen)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, k) == 0;
        if (!ok)
            return cfg_fail(err, errlen, "config: unknown key \"%s.%s\"", where, k);
    }
    return 0;
}

int cfg_want(const json_t *v, json_type type, const char *path, const char *tname, char *err,
             size_t errlen)
{
    if (!v || json_typeof(v) != type)
        return cfg_fail(err, errlen, "config: \"%s\" must be %s", path, tname);
    return 0;
}

int cfg_addr(const json_t *v, const char *path, struct sockaddr_storage *out, char *err,
             size_t errlen)
{
    char why[200];
    if (!json_is_string(v))
        return cfg_fail(err, errlen, "config: \"%s\" must be an ADDR:PORT string", path);
    if (netaddr_parse(json_string_value(v), out, why, sizeof(why)) < 0)
        return cfg_fail(err, errlen, "config: %s: %s", path, why);
    return 0;
}

int cfg_seconds(const json_t *v, const char *path, double min, double max, unsigned *ms,
                char *err, size_t errlen)
{
    double d = json_number_value(v);
    if (!json_is_number(v) || !(d >= min && d <= max))
        return cfg_fail(err, errlen, "config: \"%s\" must be a number of seconds from %g to %g",
                        path, min, max);
    *ms = (unsigned)(d * 1000.0 + 0.5);
    return 0;
}

int cfg_int(const json_t *v, const char *path, long long min, long long max, long long *out,
            char *err, size_t errlen)
{
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return cfg_fail(err, errlen, "config: \"%s\" must be an integer from %lld to %lld", path,
                        min, max);
    *out = json_integer_value(v);
    return 0;
}

int cfg_str(const json_t *v, const char *path, char **dst, char *err, size_t errlen)
{
    if (!json_is_string(v))
        return cfg_fail(err, errlen, "config: \"%s\" must be a string", path);
    free(*dst);
    *dst = strdup(json_string_value(v));
    return 0;
}
