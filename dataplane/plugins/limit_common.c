/*
 * limit_common: see limit_common.h.
 */
#include "limit_common.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../mqtt_codec.h"
#include "../shm_limits.h"
#include "log.h"
#include "netaddr.h"

int limit_key_parse(const json_t *conf, const char *def_key, struct limit_key *k, char *err,
                    size_t errlen)
{
    const char *key = json_string_value(json_object_get(conf, "key"));
    if (!key || !*key)
        key = def_key;
    if (!key) {
        snprintf(err, errlen, "key is required");
        return -1;
    }
    const char *t = json_string_value(json_object_get(conf, "key_type"));
    if (!t || strcmp(t, "var") == 0)
        k->type = LIMIT_KEY_VAR;
    else if (strcmp(t, "var_combination") == 0)
        k->type = LIMIT_KEY_COMBINATION;
    else if (strcmp(t, "constant") == 0)
        k->type = LIMIT_KEY_CONSTANT;
    else {
        snprintf(err, errlen, "unknown key_type %s", t);
        return -1;
    }
    k->key = strdup(key);
    if (!k->key) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void limit_key_free(struct limit_key *k)
{
    free(k->key);
    k->key = NULL;
}

/* A variable of a request or stream, by name. */
typedef const char *(*var_fn)(void *src, const char *name, size_t *len, char *tmp, size_t tmpcap);

static const char *req_var(void *src, const char *name, size_t *len, char *tmp, size_t tmpcap)
{
    (void)tmp;
    (void)tmpcap;
    return plugin_req_var(src, name, len);
}

static const char *addr_part(const struct sockaddr *sa, bool port, size_t *len, char *tmp,
                             size_t cap)
{
    if (!sa || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6))
        return NULL;
    if (port) {
        unsigned p = sa->sa_family == AF_INET ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
                                              : ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
        snprintf(tmp, cap, "%u", p);
    } else {
        netaddr_format_ip(sa, tmp, cap);
    }
    *len = strlen(tmp);
    return tmp;
}

static const char *stream_var(void *src, const char *name, size_t *len, char *tmp, size_t cap)
{
    struct plugin_stream *s = src;
    const char *v = NULL;
    if (strcmp(name, "remote_addr") == 0)
        return addr_part(plugin_stream_remote(s), false, len, tmp, cap);
    if (strcmp(name, "remote_port") == 0)
        return addr_part(plugin_stream_remote(s), true, len, tmp, cap);
    if (strcmp(name, "server_addr") == 0)
        return addr_part(plugin_stream_server(s), false, len, tmp, cap);
    if (strcmp(name, "server_port") == 0)
        return addr_part(plugin_stream_server(s), true, len, tmp, cap);
    if (strcmp(name, "route_id") == 0) {
        v = plugin_stream_route_id(s);
    } else if (strcmp(name, "consumer_name") == 0) {
        const struct consumer_rt *c = plugin_stream_consumer(s);
        v = c ? c->username : NULL;
    } else if (strcmp(name, "mqtt_client_id") == 0) {
        const struct mqtt_connect *m = plugin_stream_mqtt(s);
        if (!m || !m->client_id.ptr)
            return NULL;
        *len = m->client_id.len;
        return (const char *)m->client_id.ptr;
    }
    if (v)
        *len = strlen(v);
    return v;
}

static size_t put(char *buf, size_t cap, size_t at, const char *s, size_t n)
{
    if (at + 1 >= cap)
        return at;
    if (n > cap - 1 - at)
        n = cap - 1 - at;
    memcpy(buf + at, s, n);
    return at + n;
}

/* "$a-${b}": each variable's value, absent ones empty; "\$" is a '$'.
 * Returns how many variables had a value. */
static int combine(const char *tpl, var_fn get, void *src, char *buf, size_t cap, size_t *out_len)
{
    size_t n = 0;
    int resolved = 0;
    char tmp[INET6_ADDRSTRLEN + 8];
    for (const char *p = tpl; *p;) {
        if (p[0] == '\\' && p[1] == '$') {
            n = put(buf, cap, n, "$", 1);
            p += 2;
            continue;
        }
        if (*p != '$') {
            n = put(buf, cap, n, p, 1);
            p++;
            continue;
        }
        const char *q = p + 1;
        bool brace = *q == '{';
        if (brace)
            q++;
        const char *start = q;
        while (isalnum((unsigned char)*q) || *q == '_')
            q++;
        size_t nl = (size_t)(q - start);
        if (nl == 0 || nl >= 128 || (brace && *q != '}')) {
            n = put(buf, cap, n, p, 1);
            p++;
            continue;
        }
        char name[128];
        memcpy(name, start, nl);
        name[nl] = '\0';
        size_t vl = 0;
        const char *v = get(src, name, &vl, tmp, sizeof(tmp));
        if (v) {
            resolved++;
            n = put(buf, cap, n, v, vl);
        }
        p = q + (brace ? 1 : 0);
    }
    buf[n] = '\0';
    *out_len = n;
    return resolved;
}

static size_t resolve(const struct limit_key *k, var_fn get, void *src, char *buf, size_t cap)
{
    char tmp[INET6_ADDRSTRLEN + 8];
    size_t len = 0;
    const char *v = NULL;
    switch (k->type) {
    case LIMIT_KEY_CONSTANT:
        v = k->key;
        len = strlen(v);
        break;
    case LIMIT_KEY_COMBINATION:
        if (combine(k->key, get, src, buf, cap, &len) > 0)
            return len;
        break;
    case LIMIT_KEY_VAR:
        v = get(src, k->key, &len, tmp, sizeof(tmp));
        break;
    }
    if (!v) /* APISIX: an empty key counts by client address */
        v = get(src, "remote_addr", &len, tmp, sizeof(tmp));
    if (!v) {
        v = "";
        len = 0;
    }
    len = put(buf, cap, 0, v, len);
    buf[len] = '\0';
    return len;
}

size_t limit_key_req(const struct limit_key *k, struct plugin_req *r, char *buf, size_t cap)
{
    return resolve(k, req_var, r, buf, cap);
}

size_t limit_key_stream(const struct limit_key *k, struct plugin_stream *s, char *buf, size_t cap)
{
    return resolve(k, stream_var, s, buf, cap);
}

char *limit_owner(const json_t *conf, const char *owner, const char *group)
{
    char *out = NULL;
    if (group && *group) {
        if (asprintf(&out, "GROUP:%s", group) < 0)
            return NULL;
        return out;
    }
    char *dump = json_dumps(conf, JSON_COMPACT | JSON_SORT_KEYS);
    uint64_t h = 1469598103934665603ull;
    for (const char *p = dump ? dump : ""; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    free(dump);
    if (asprintf(&out, "%s#%016llx", owner ? owner : "", (unsigned long long)h) < 0)
        return NULL;
    return out;
}

/* A table of this worker's own, when the master has none to share. */
static struct shm_limits *own_table;
static bool own_failed;

struct shm_limits *limit_table(void)
{
    const struct plugin_env *env = plugin_env();
    if (env && env->limits)
        return env->limits;
    if (own_table || own_failed)
        return own_table;
    own_table = shm_limits_create(1);
    if (own_table)
        log_warn("limit plugins count in this worker alone: no node-wide table");
    else
        log_error("limit plugins have no counters: cannot create a table");
    own_failed = !own_table;
    return own_table;
}

int limit_worker(void)
{
    const struct plugin_env *env = plugin_env();
    return env && env->limits ? env->worker_id : 0;
}

void limit_common_stop(void)
{
    shm_limits_free(own_table);
    own_table = NULL;
    own_failed = true; /* late releases find no table rather than a new one */
}

/* nginx's reason phrases for the statuses a refusal is likely to use. */
static const struct {
    int code;
    const char *text;
} reasons[] = {
    {400, "Bad Request"},      {401, "Unauthorized"},      {403, "Forbidden"},
    {404, "Not Found"},        {405, "Not Allowed"},       {406, "Not Acceptable"},
    {408, "Request Time-out"}, {409, "Conflict"},          {410, "Gone"},
    {418, "I'm a teapot"},     {429, "Too Many Requests"}, {500, "Internal Server Error"},
    {501, "Not Implemented"},  {502, "Bad Gateway"},       {503, "Service Temporarily Unavailable"},
    {504, "Gateway Time-out"},
};

static const char *reason(int code)
{
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (reasons[i].code == code)
            return reasons[i].text;
    return code < 400 ? "OK" : code < 500 ? "Client Error" : "Server Error";
}

void limit_reject(struct plugin_req *r, int code, const char *msg)
{
    if (msg) {
        json_t *o = json_pack("{s:s}", "error_msg", msg);
        char *b = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (b) {
            size_t n = strlen(b);
            char *bl = realloc(b, n + 2);
            if (bl) {
                b = bl;
                b[n++] = '\n';
            }
            plugin_respond(r, code, "application/json", b, n);
            free(b);
            return;
        }
    }
    char page[512];
    const char *why = reason(code);
    int n = snprintf(page, sizeof(page),
                     "<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n"
                     "<center><h1>%d %s</h1></center>\r\n<hr><center>airgw</center>\r\n"
                     "</body>\r\n</html>\r\n",
                     code, why, code, why);
    plugin_respond(r, code, "text/html; charset=utf-8", page, n > 0 ? (size_t)n : 0);
}

void limit_warn_full(const char *plugin)
{
    static bool warned[3];
    int i = strcmp(plugin, "limit-count") == 0 ? 0 : strcmp(plugin, "limit-req") == 0 ? 1 : 2;
    if (warned[i])
        return;
    warned[i] = true;
    log_error("%s: the node-wide limit table is full (%d keys); new keys are refused with 500 "
              "unless allow_degradation is set (said once)",
              plugin, SHM_LIMITS_SLOTS);
}

void limit_check_policy(const json_t *conf, const char *plugin, const char *owner)
{
    const char *p = json_string_value(json_object_get(conf, "policy"));
    if (p && strcmp(p, "local") != 0)
        log_warn("%s: %s: policy %s is not supported; counting for this node in shared memory "
                 "(policy local)",
                 owner, plugin, p);
}

int limit_conf_parse(const json_t *conf, const char *plugin, const char *owner, const char *group,
                     const char *def_key, struct limit_conf *lc, char *err, size_t errlen)
{
    json_t *code = json_object_get(conf, "rejected_code");
    lc->rejected_code = code ? (int)json_integer_value(code) : 503;
    const char *msg = json_string_value(json_object_get(conf, "rejected_msg"));
    lc->rejected_msg = msg ? strdup(msg) : NULL;
    lc->allow_degradation = json_is_true(json_object_get(conf, "allow_degradation"));
    lc->owner = limit_owner(conf, owner, group);
    if (limit_key_parse(conf, def_key, &lc->key, err, errlen) < 0 || !lc->owner ||
        (msg && !lc->rejected_msg)) {
        if (!err[0])
            snprintf(err, errlen, "out of memory");
        return -1;
    }
    limit_check_policy(conf, plugin, owner);
    return 0;
}

void limit_conf_free(struct limit_conf *lc)
{
    limit_key_free(&lc->key);
    free(lc->owner);
    lc->owner = NULL;
    free(lc->rejected_msg);
    lc->rejected_msg = NULL;
}
