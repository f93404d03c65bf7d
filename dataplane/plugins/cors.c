/*
 * cors: Cross-Origin Resource Sharing, as APISIX's plugin of that name
 * (priority 4000: before the authentication plugins, so a preflight needs
 * no credentials).
 *
 * rewrite: an OPTIONS request (a preflight) is answered 200 with an empty
 * body by the plugin itself.
 * header_filter (proxied and local answers, the preflight's too): the
 * allowed origin is worked out from the request's Origin:
 *   allow_origins "*"      -> "*" (every request gets the headers)
 *   allow_origins "**"     -> the request's Origin (or "*" without one)
 *   "a://x,b://y"          -> the Origin when it is one of them, else none
 *   allow_origins_by_regex -> (when set, instead of allow_origins) the
 *                             Origin when a pattern matches it, else none
 * and when one is allowed, Access-Control-Allow-Origin, -Allow-Methods
 * ("**": every method), -Max-Age, -Expose-Headers, -Allow-Headers ("**":
 * the request's Access-Control-Request-Headers) and, with allow_credential,
 * -Allow-Credentials: true are set; Vary: Origin is added when the allowed
 * origin is not "*".
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"
#include "plugin_common.h"

#define CORS_MAX_REGEX 32

struct cors {
    const char *allow_origins;         /* borrowed from the configuration */
    const char *allow_methods;         /* "**" resolved to the list */
    const char *allow_headers;         /* "**": the request's */
    const char *expose_headers;        /* NULL or "": not sent */
    char max_age[24];                  /* seconds, as text */
    bool allow_credential;
    pcre2_code *re[CORS_MAX_REGEX];    /* allow_origins_by_regex */
    size_t nre;
};

static void cors_free(struct cors *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nre; i++)
        pcre2_code_free(c->re[i]);
    free(c);
}

static const char *str_or(const json_t *conf, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(conf, key));
    return s ? s : dflt;
}

static int cors_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    const json_t *conf = a->conf;
    struct cors *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    c->allow_origins = str_or(conf, "allow_origins", "*");
    c->allow_methods = str_or(conf, "allow_methods", "*");
    if (strcmp(c->allow_methods, "**") == 0)
        c->allow_methods = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";
    c->allow_headers = str_or(conf, "allow_headers", "*");
    c->expose_headers = str_or(conf, "expose_headers", "*");
    json_t *ma = json_object_get(conf, "max_age");
    snprintf(c->max_age, sizeof(c->max_age), "%lld",
             json_is_integer(ma) ? (long long)json_integer_value(ma) : 5LL);
    c->allow_credential = json_is_true(json_object_get(conf, "allow_credential"));
    if (c->allow_credential &&
        (strcmp(c->allow_origins, "*") == 0 || strcmp(c->allow_methods, "*") == 0 ||
         strcmp(c->allow_headers, "*") == 0 || strcmp(c->expose_headers, "*") == 0)) {
        /* APISIX's check: browsers refuse "*" with credentials. */
        snprintf(err, errlen,
                 "you can not set '*' for other option when 'allow_credential' is true");
        cors_free(c);
        return -1;
    }
    const json_t *rx = json_object_get(conf, "allow_origins_by_regex");
    size_t i;
    json_t *v;
    json_array_foreach(rx, i, v) {
        const char *pat = json_string_value(v);
        if (!pat || c->nre >= CORS_MAX_REGEX)
            continue;
        pcre2_code *re = plugin_regex_compile(pat, "allow_origins_by_regex", err, errlen);
        if (!re) {
            cors_free(c);
            return -1;
        }
        c->re[c->nre++] = re;
    }
    *state = c;
    return 0;
}

static void cors_destroy(void *state)
{
    cors_free(state);
}

static int cors_rewrite(struct plugin_req *r, void *state, void **data)
{
    (void)state;
    (void)data;
    if (strcmp(plugin_req_method(r), "OPTIONS") == 0) {
        plugin_respond(r, 200, NULL, NULL, 0);
        return PLUGIN_STOP;
    }
    return PLUGIN_CONTINUE;
}

/* True when origin (len bytes) is one of the comma-separated list. */
static bool in_list(const char *list, const char *origin, size_t len)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        while (n && p[n - 1] == ' ')
            n--;
        if (n == len && memcmp(p, origin, len) == 0)
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

static bool regex_allows(const struct cors *c, const char *origin, size_t len)
{
    for (size_t i = 0; i < c->nre; i++) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(c->re[i], NULL);
        if (!md)
            return false;
        int rc = pcre2_match(c->re[i], (PCRE2_SPTR)origin, len, 0, 0, md, NULL);
        pcre2_match_data_free(md);
        if (rc > 0)
            return true;
    }
    return false;
}

static void cors_header_filter(struct plugin_req *r, void *state, void **data)
{
    (void)data;
    const struct cors *c = state;
    size_t olen = 0;
    const char *origin = plugin_req_header(r, "Origin", &olen);
    char *allow = NULL; /* the allowed origin, NUL-terminated */
    if (c->nre) {
        if (origin && regex_allows(c, origin, olen))
            allow = strndup(origin, olen);
    } else if (strcmp(c->allow_origins, "*") == 0) {
        allow = strdup("*");
    } else if (strcmp(c->allow_origins, "**") == 0) {
        allow = origin ? strndup(origin, olen) : strdup("*");
    } else if (origin && in_list(c->allow_origins, origin, olen)) {
        allow = strndup(origin, olen);
    }
    if (!allow)
        return;
    plugin_resp_header_set(r, "Access-Control-Allow-Origin", allow);
    plugin_resp_header_set(r, "Access-Control-Allow-Methods", c->allow_methods);
    plugin_resp_header_set(r, "Access-Control-Max-Age", c->max_age);
    if (c->expose_headers && c->expose_headers[0])
        plugin_resp_header_set(r, "Access-Control-Expose-Headers", c->expose_headers);
    if (strcmp(c->allow_headers, "**") == 0) {
        size_t hl = 0;
        const char *h = plugin_req_header(r, "Access-Control-Request-Headers", &hl);
        if (h) {
            char *v = strndup(h, hl);
            if (v)
                plugin_resp_header_set(r, "Access-Control-Allow-Headers", v);
            free(v);
        }
    } else {
        plugin_resp_header_set(r, "Access-Control-Allow-Headers", c->allow_headers);
    }
    if (c->allow_credential)
        plugin_resp_header_set(r, "Access-Control-Allow-Credentials", "true");
    if (strcmp(allow, "*") != 0)
        plugin_resp_header_add(r, "Vary", "Origin");
    free(allow);
}

const struct plugin_def plugin_def_cors = {
    .name = "cors",
    .priority = 4000,
    .flags = PLUGIN_HTTP,
    .create = cors_create,
    .destroy = cors_destroy,
    .rewrite = cors_rewrite,
    .header_filter = cors_header_filter,
};
