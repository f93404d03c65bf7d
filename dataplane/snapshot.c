/*
 * snapshot: see snapshot.h.
 */
#include "snapshot.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>

#include "balancer.h"
#include "health.h"
#include "log.h"
#include "plugin.h"
#include "router.h"

#define DEFAULT_TIMEOUT_MS 60000

/* The process's health table (per-process context, set once at start). */
static struct health_table *health;

void snapshot_set_health(struct health_table *ht)
{
    health = ht;
}

static int64_t ms_of(const json_t *v, int64_t dflt)
{
    if (!json_is_number(v))
        return dflt;
    double d = json_number_value(v) * 1000.0;
    return d < 1 ? 1 : d > 86400000.0 ? 86400000 : (int64_t)d;
}

static void read_timeouts(const json_t *t, struct timeouts *out)
{
    if (!json_is_object(t))
        return;
    out->connect_ms = (uint32_t)ms_of(json_object_get(t, "connect"), out->connect_ms);
    out->send_ms = (uint32_t)ms_of(json_object_get(t, "send"), out->send_ms);
    out->read_ms = (uint32_t)ms_of(json_object_get(t, "read"), out->read_ms);
}

static enum up_scheme scheme_of(const char *s)
{
    static const char *names[] = {"http", "https", "grpc", "grpcs", "tcp", "tls", "udp"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (s && strcmp(s, names[i]) == 0)
            return (enum up_scheme)i;
    return UP_HTTP;
}

static void upstream_free(struct upstream_rt *up)
{
    if (!up)
        return;
    balancer_free(up->bal);
    free(up->upstream_host);
    free(up->key);
    free(up);
}

static struct upstream_rt *upstream_build(const char *id, json_t *conf)
{
    char err[256];
    struct balancer *bal = balancer_new(conf, err, sizeof(err));
    if (!bal) {
        log_warn("upstream %s skipped: %s", id, err);
        return NULL;
    }
    struct upstream_rt *up = calloc(1, sizeof(*up));
    if (!up) {
        balancer_free(bal);
        return NULL;
    }
    snprintf(up->id, sizeof(up->id), "%s", id);
    up->bal = bal;
    up->conf = conf;
    up->checks = json_object_get(conf, "checks");
    if (!json_is_object(up->checks))
        up->checks = NULL;
    else
        balancer_set_fail_open(bal, true); /* APISIX: all unhealthy -> use them all */
    up->health_gen = (uint64_t)-1;
    up->scheme = scheme_of(json_string_value(json_object_get(conf, "scheme")));
    const char *ph = json_string_value(json_object_get(conf, "pass_host"));
    up->pass_host = ph && strcmp(ph, "node") == 0      ? PASS_HOST_NODE
                    : ph && strcmp(ph, "rewrite") == 0 ? PASS_HOST_REWRITE
                                                       : PASS_HOST_PASS;
    const char *uh = json_string_value(json_object_get(conf, "upstream_host"));
    up->upstream_host = uh ? strdup(uh) : NULL;
    switch (balancer_hash_on(bal)) {
    case BALANCER_HASH_HEADER:
        up->hash_on = HASH_HEADER;
        break;
    case BALANCER_HASH_COOKIE:
        up->hash_on = HASH_COOKIE;
        break;
    case BALANCER_HASH_CONSUMER:
        up->hash_on = HASH_CONSUMER;
        break;
    case BALANCER_HASH_VARS_COMBINATIONS:
        up->hash_on = HASH_VARS_COMBINATIONS;
        break;
    default:
        up->hash_on = HASH_VARS;
    }
    const char *key = balancer_hash_key(bal);
    up->key = key ? strdup(key) : NULL;
    json_t *retries = json_object_get(conf, "retries");
    up->retries = json_is_integer(retries) ? (int)json_integer_value(retries) : -1;
    up->retry_timeout_ms = (uint32_t)ms_of(json_object_get(conf, "retry_timeout"), 0);
    up->timeout = (struct timeouts){DEFAULT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS};
    read_timeouts(json_object_get(conf, "timeout"), &up->timeout);
    json_t *ka = json_object_get(conf, "keepalive_pool");
    json_t *v;
    up->keepalive_size = 320;
    up->keepalive_idle_ms = 60000;
    up->keepalive_requests = 1000;
    if ((v = json_object_get(ka, "size")) && json_is_integer(v))
        up->keepalive_size = (int)json_integer_value(v);
    if ((v = json_object_get(ka, "idle_timeout")))
        up->keepalive_idle_ms = (uint32_t)ms_of(v, up->keepalive_idle_ms);
    if ((v = json_object_get(ka, "requests")) && json_is_integer(v))
        up->keepalive_requests = (int)json_integer_value(v);
    return up;
}

/* Arrays of a snapshot grow by doubling (to 4, 8, 16, ... when n is 0 or
 * a power of two), so n appends cost O(n) in all. Returns the array with
 * room for item n: a itself, or a larger copy; NULL when out of memory (a
 * is kept). */
static void *grow(void *a, size_t n, size_t size)
{
    if (n != 0 && (n < 4 || (n & (n - 1)) != 0))
        return a;
    return realloc(a, (n ? 2 * n : 4) * size);
}

/* Upstreams by id while a snapshot is compiled, so that resolving every
 * route's upstream_id is not a scan of every upstream (open addressing,
 * FNV-1a; the first upstream registered under an id wins, as a scan in
 * registration order would). Per thread: compiles on different threads do
 * not share it. */
static _Thread_local struct {
    struct upstream_rt **slot;
    size_t mask, n;
} up_index;

static uint64_t id_hash(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211ull;
    return h;
}

static void up_index_put(struct upstream_rt **slot, size_t mask, struct upstream_rt *up)
{
    size_t i = (size_t)id_hash(up->id) & mask;
    while (slot[i]) {
        if (strcmp(slot[i]->id, up->id) == 0)
            return; /* the first one stays */
        i = (i + 1) & mask;
    }
    slot[i] = up;
}

static int up_index_add(struct upstream_rt *up)
{
    if (2 * (up_index.n + 1) > up_index.mask + 1) {
        size_t cap = up_index.slot ? 2 * (up_index.mask + 1) : 64;
        struct upstream_rt **ns = calloc(cap, sizeof(*ns));
        if (!ns)
            return -ENOMEM;
        for (size_t i = 0; up_index.slot && i <= up_index.mask; i++)
            if (up_index.slot[i])
                up_index_put(ns, cap - 1, up_index.slot[i]);
        free(up_index.slot);
        up_index.slot = ns;
        up_index.mask = cap - 1;
    }
    up_index_put(up_index.slot, up_index.mask, up);
    up_index.n++;
    return 0;
}

static void up_index_clear(void)
{
    free(up_index.slot);
    memset(&up_index, 0, sizeof(up_index));
}

static int add_upstream(struct snapshot *s, struct upstream_rt *up)
{
    struct upstream_rt **a = grow(s->upstreams, s->nupstreams, sizeof(*a));
    if (!a)
        return -ENOMEM;
    s->upstreams = a;
    if (up_index_add(up) < 0)
        return -ENOMEM;
    a[s->nupstreams++] = up;
    return 0;
}

/* Builds an upstream owned by one route and registers it with the snapshot.
 * NULL when it cannot be built (logged) or out of memory. */
static struct upstream_rt *find_upstream(const struct snapshot *s, const char *id);
static const char *id_str(const json_t *v, char *buf, size_t len);

static struct upstream_rt *add_inline_upstream(struct snapshot *s, const char *id, json_t *conf)
{
    struct upstream_rt *up = upstream_build(id, conf);
    if (up && add_upstream(s, up) < 0) {
        upstream_free(up);
        return NULL;
    }
    return up;
}

/* The upstream a route names: inline (registered under own_id), else by
 * upstream_id (shared), else NULL. kind and rid are for the log. */
static struct upstream_rt *route_upstream(struct snapshot *s, const json_t *m, const char *own_id,
                                          const char *kind, const char *rid)
{
    json_t *inl = json_object_get(m, "upstream");
    char buf[32];
    const char *uid = id_str(json_object_get(m, "upstream_id"), buf, sizeof(buf));
    if (json_is_object(inl))
        return add_inline_upstream(s, own_id, inl);
    if (!uid)
        return NULL;
    struct upstream_rt *up = find_upstream(s, uid);
    if (!up)
        log_warn("%s %s: upstream %s does not exist", kind, rid, uid);
    return up;
}

static struct upstream_rt *find_upstream(const struct snapshot *s, const char *id)
{
    (void)s; /* up_index holds s's upstreams while s is compiled */
    if (!up_index.slot)
        return NULL;
    for (size_t i = (size_t)id_hash(id) & up_index.mask; up_index.slot[i];
         i = (i + 1) & up_index.mask)
        if (strcmp(up_index.slot[i]->id, id) == 0)
            return up_index.slot[i];
    return NULL;
}

static const char *id_str(const json_t *v, char *buf, size_t len)
{
    if (json_is_string(v))
        return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
        return buf;
    }
    return NULL;
}

/* plugins = base overridden by top (both may be NULL). New reference. */
static json_t *merge_plugins(const json_t *base, const json_t *top)
{
    json_t *out = json_is_object(base) ? json_deep_copy(base) : json_object();
    if (json_is_object(top))
        json_object_update(out, (json_t *)top);
    return out;
}

static json_t *lookup(const json_t *res, const char *coll, const char *id)
{
    char key[200];
    if (!id)
        return NULL;
    snprintf(key, sizeof(key), "/apisix/%s/%s", coll, id);
    return json_object_get(res, key);
}

/* APISIX's merge of a route with its service and plugin_config. */
static json_t *merge_route(const json_t *res, const json_t *route, const char *rid)
{
    json_t *m = json_deep_copy(route);
    char b1[32], b2[32];
    const char *sid = id_str(json_object_get(route, "service_id"), b1, sizeof(b1));
    const char *pcid = id_str(json_object_get(route, "plugin_config_id"), b2, sizeof(b2));
    json_t *svc = lookup(res, "services", sid);
    if (sid && !svc)
        log_warn("route %s: service %s does not exist; serving the route without it", rid, sid);
    /* APISIX merges the plugin_config under the route first, then the
     * service under both: route > plugin_config > service. */
    json_t *pc = lookup(res, "plugin_configs", pcid);
    if (pc)
        json_object_set_new(m, "plugins", merge_plugins(json_object_get(pc, "plugins"),
                                                        json_object_get(route, "plugins")));
    if (svc) {
        json_object_set_new(m, "plugins", merge_plugins(json_object_get(svc, "plugins"),
                                                        json_object_get(m, "plugins")));
        if (!json_object_get(route, "host") && !json_object_get(route, "hosts") &&
            json_object_get(svc, "hosts"))
            json_object_set(m, "hosts", json_object_get(svc, "hosts"));
        if (!json_object_get(route, "upstream") && !json_object_get(route, "upstream_id")) {
            if (json_object_get(svc, "upstream"))
                json_object_set(m, "upstream", json_object_get(svc, "upstream"));
            else if (json_object_get(svc, "upstream_id"))
                json_object_set(m, "upstream_id", json_object_get(svc, "upstream_id"));
        }
        if (!json_object_get(route, "enable_websocket") &&
            json_object_get(svc, "enable_websocket"))
            json_object_set(m, "enable_websocket", json_object_get(svc, "enable_websocket"));
    }
    if (!json_is_object(json_object_get(m, "plugins")))
        json_object_set_new(m, "plugins", json_object());
    return m;
}

static void sroute_free(struct stream_route_rt *r)
{
    if (!r)
        return;
    plugin_chain_free(r->chain);
    json_decref(r->conf);
    free(r);
}

static void route_free(struct route_rt *r)
{
    if (!r)
        return;
    plugin_chain_free(r->chain);
    json_decref(r->conf);
    free(r);
}

static int collection_of(const char *key, char *coll, size_t len, const char **id)
{
    if (strncmp(key, "/apisix/", 8) != 0)
        return -1;
    const char *c = key + 8, *slash = strchr(c, '/');
    if (!slash || (size_t)(slash - c) >= len)
        return -1;
    memcpy(coll, c, (size_t)(slash - c));
    coll[slash - c] = '\0';
    *id = slash + 1;
    return 0;
}

static int compile_route(struct snapshot *s, const char *rid, const json_t *route)
{
    json_t *m = merge_route(s->resources, route, rid);
    struct route_rt *r = calloc(1, sizeof(*r));
    if (!r) {
        json_decref(m);
        return -ENOMEM;
    }
    snprintf(r->id, sizeof(r->id), "%s", rid);
    r->conf = m;
    r->name = json_string_value(json_object_get(m, "name"));
    r->plugins = json_object_get(m, "plugins");
    r->enable_websocket = json_is_true(json_object_get(m, "enable_websocket"));
    char own[96];
    snprintf(own, sizeof(own), "route/%s", rid);
    r->up = route_upstream(s, m, own, "route", rid);
    r->timeout = r->up ? r->up->timeout
                       : (struct timeouts){DEFAULT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS,
                                           DEFAULT_TIMEOUT_MS};
    read_timeouts(json_object_get(m, "timeout"), &r->timeout);
    char err[256];
    int rc = router_add(s->router, m, r, err, sizeof(err));
    if (rc < 0) {
        log_warn("route %s skipped: %s", rid, err);
        route_free(r);
        return rc == -ENOMEM ? rc : 0;
    }
    struct route_rt **a = grow(s->routes, s->nroutes, sizeof(*a));
    if (!a) {
        route_free(r);
        return -ENOMEM;
    }
    s->routes = a;
    a[s->nroutes++] = r;
    /* Plugin code runs only in workers (see plugin.h). */
    if (plugin_env())
        r->chain = plugin_chain_build(r->plugins, own, false);
    return 0;
}

/* Stream routes: the service fills what the route leaves out; the APISIX 2.x
 * form names a one-node upstream inside mqtt-proxy itself. */
static int compile_stream_route(struct snapshot *s, const char *rid, const json_t *route)
{
    json_t *m = json_deep_copy(route);
    char b1[32];
    const char *sid = id_str(json_object_get(route, "service_id"), b1, sizeof(b1));
    json_t *svc = lookup(s->resources, "services", sid);
    if (svc) {
        json_object_set_new(m, "plugins", merge_plugins(json_object_get(svc, "plugins"),
                                                        json_object_get(route, "plugins")));
        if (!json_object_get(route, "upstream") && !json_object_get(route, "upstream_id")) {
            if (json_object_get(svc, "upstream"))
                json_object_set(m, "upstream", json_object_get(svc, "upstream"));
            else if (json_object_get(svc, "upstream_id"))
                json_object_set(m, "upstream_id", json_object_get(svc, "upstream_id"));
        }
    }
    struct stream_route_rt *r = calloc(1, sizeof(*r));
    if (!r) {
        json_decref(m);
        return -ENOMEM;
    }
    snprintf(r->id, sizeof(r->id), "%s", rid);
    r->conf = m;
    const char *v;
    if ((v = json_string_value(json_object_get(m, "server_addr"))) &&
        cidr_parse(v, &r->server_addr) == 0)
        r->has_server_addr = true;
    if ((v = json_string_value(json_object_get(m, "remote_addr"))) &&
        cidr_parse(v, &r->remote) == 0)
        r->has_remote = true;
    json_t *port = json_object_get(m, "server_port");
    r->server_port = json_is_integer(port) ? (int)json_integer_value(port) : 0;
    r->sni = json_string_value(json_object_get(m, "sni"));
    json_t *mq = json_object_get(json_object_get(m, "plugins"), "mqtt-proxy");
    r->mqtt_level = -1;
    if (json_is_object(mq)) {
        r->mqtt = true;
        r->mqtt_name = json_string_value(json_object_get(mq, "protocol_name"));
        json_t *lvl = json_object_get(mq, "protocol_level");
        if (json_is_integer(lvl))
            r->mqtt_level = (int)json_integer_value(lvl);
    }
    json_t *legacy = json_object_get(mq, "upstream");
    char upid[96];
    snprintf(upid, sizeof(upid), "stream_route/%s", rid);
    r->up = route_upstream(s, m, upid, "stream route", rid);
    if (!r->up && !json_object_get(m, "upstream") && !json_object_get(m, "upstream_id") &&
        json_is_object(legacy)) {
        const char *host = json_string_value(json_object_get(legacy, "host"));
        if (!host)
            host = json_string_value(json_object_get(legacy, "ip"));
        json_int_t lport = json_integer_value(json_object_get(legacy, "port"));
        char node[300];
        snprintf(node, sizeof(node), strchr(host ? host : "", ':') ? "[%s]:%lld" : "%s:%lld",
                 host ? host : "", (long long)lport);
        json_t *u = json_pack("{s:s, s:{s:i}}", "type", "roundrobin", "nodes", node, 1);
        /* The snapshot owns the JSON the upstream points at. */
        json_object_set_new(r->conf, "upstream", u);
        r->up = add_inline_upstream(s, upid, u);
    }
    if (r->up && (r->up->scheme == UP_HTTP || r->up->scheme == UP_HTTPS))
        r->up->scheme = r->up->scheme == UP_HTTP ? UP_TCP : UP_TLS;
    if (plugin_env())
        r->chain = plugin_chain_build(json_object_get(m, "plugins"), upid, true);
    struct stream_route_rt **a = grow(s->sroutes, s->nsroutes, sizeof(*a));
    if (!a) {
        sroute_free(r);
        return -ENOMEM;
    }
    s->sroutes = a;
    a[s->nsroutes++] = r;
    return 0;
}

static int sroute_cmp(const void *a, const void *b)
{
    const struct stream_route_rt *x = *(const struct stream_route_rt *const *)a;
    const struct stream_route_rt *y = *(const struct stream_route_rt *const *)b;
    if ((x->sni != NULL) != (y->sni != NULL))
        return x->sni ? -1 : 1;
    return strcmp(x->id, y->id);
}

static bool sni_matches(const char *pattern, const char *sni)
{
    if (!sni)
        return false;
    if (strcmp(pattern, "*") == 0)
        return true;
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(sni, '.');
        return dot && strcasecmp(dot, pattern + 1) == 0;
    }
    return strcasecmp(pattern, sni) == 0;
}

static int port_of(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

const struct stream_route_rt *snapshot_stream_match(const struct snapshot *s,
                                                    const struct sockaddr *server,
                                                    const struct sockaddr *remote,
                                                    const char *sni)
{
    for (size_t i = 0; i < s->nsroutes; i++) {
        const struct stream_route_rt *r = s->sroutes[i];
        if (r->sni && !sni_matches(r->sni, sni))
            continue;
        if (r->server_port && (!server || port_of(server) != r->server_port))
            continue;
        if (r->has_server_addr && (!server || !cidr_match(&r->server_addr, server)))
            continue;
        if (r->has_remote && (!remote || !cidr_match(&r->remote, remote)))
            continue;
        return r;
    }
    return NULL;
}

/* Ids in APISIX's order: numeric ids by value, then the others by bytes. */
static int id_cmp(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    bool na = la && strspn(a, "0123456789") == la, nb = lb && strspn(b, "0123456789") == lb;
    if (na != nb)
        return na ? -1 : 1;
    if (na && la != lb)
        return la < lb ? -1 : 1;
    return strcmp(a, b);
}

struct idval {
    const char *id;
    json_t *v;
};

static int idval_cmp(const void *a, const void *b)
{
    return id_cmp(((const struct idval *)a)->id, ((const struct idval *)b)->id);
}

/* The global rules' chains, in id order (APISIX runs them so). */
static int compile_global_rules(struct snapshot *s)
{
    size_t n = 0, cap = 0;
    struct idval *g = NULL;
    const char *key;
    json_t *v;
    char coll[32];
    const char *id;
    json_object_foreach(s->resources, key, v) {
        if (collection_of(key, coll, sizeof(coll), &id) < 0 || strcmp(coll, "global_rules") != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            struct idval *ng = realloc(g, cap * sizeof(*ng));
            if (!ng) {
                free(g);
                return -ENOMEM;
            }
            g = ng;
        }
        g[n++] = (struct idval){id, v};
    }
    if (n > 1)
        qsort(g, n, sizeof(*g), idval_cmp);
    for (size_t i = 0; i < n; i++)
        json_array_append(s->global_rules, g[i].v);
    if (plugin_env() && n) {
        s->gchains = calloc(n, sizeof(*s->gchains));
        if (!s->gchains) {
            free(g);
            return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            char own[96];
            snprintf(own, sizeof(own), "global_rule/%s", g[i].id);
            struct plugin_chain *c =
                plugin_chain_build(json_object_get(g[i].v, "plugins"), own, false);
            if (c)
                s->gchains[s->ngchains++] = c;
        }
    }
    free(g);
    return 0;
}

static int consumer_cmp(const void *a, const void *b)
{
    return strcmp(((const struct consumer_rt *)a)->username,
                  ((const struct consumer_rt *)b)->username);
}

static int ckey_cmp(const void *a, const void *b)
{
    const struct consumer_key *x = a, *y = b;
    int c = strcmp(x->plugin, y->plugin);
    return c ? c : strcmp(x->value, y->value);
}

/* Credential fields indexed for snapshot_consumer_by. */
static const struct {
    const char *plugin, *field;
} cred_fields[] = {
    {"key-auth", "key"},
    {"basic-auth", "username"},
    {"mqtt-auth", "cert_subject"},
    {"mqtt-auth", "cert_cn"},
};
#define NCRED (sizeof(cred_fields) / sizeof(cred_fields[0]))

/* Consumers, sorted by name, and the index of their credentials. */
static int compile_consumers(struct snapshot *s)
{
    const char *key;
    json_t *v;
    char coll[32];
    const char *id;
    size_t n = 0;
    json_object_foreach(s->resources, key, v) {
        if (collection_of(key, coll, sizeof(coll), &id) == 0 && strcmp(coll, "consumers") == 0 &&
            json_is_object(v))
            n++;
    }
    if (n == 0)
        return 0;
    s->consumers = calloc(n, sizeof(*s->consumers));
    s->ckeys = calloc(n * NCRED, sizeof(*s->ckeys));
    if (!s->consumers || !s->ckeys)
        return -ENOMEM;
    json_object_foreach(s->resources, key, v) {
        if (collection_of(key, coll, sizeof(coll), &id) < 0 || strcmp(coll, "consumers") != 0 ||
            !json_is_object(v))
            continue;
        struct consumer_rt *c = &s->consumers[s->nconsumers++];
        const char *un = json_string_value(json_object_get(v, "username"));
        c->username = un ? un : id;
        c->conf = v;
        c->plugins = json_object_get(v, "plugins");
        if (!json_is_object(c->plugins))
            c->plugins = s->no_plugins;
    }
    qsort(s->consumers, s->nconsumers, sizeof(*s->consumers), consumer_cmp);
    for (size_t i = 0; i < s->nconsumers; i++) {
        const struct consumer_rt *c = &s->consumers[i];
        for (size_t k = 0; k < NCRED; k++) {
            const char *val = json_string_value(
                json_object_get(json_object_get(c->plugins, cred_fields[k].plugin),
                                cred_fields[k].field));
            if (val)
                s->ckeys[s->nckeys++] =
                    (struct consumer_key){.plugin = cred_fields[k].plugin, .value = val, .c = c};
        }
    }
    if (s->nckeys > 1)
        qsort(s->ckeys, s->nckeys, sizeof(*s->ckeys), ckey_cmp);
    for (size_t i = 1; i < s->nckeys; i++)
        if (ckey_cmp(&s->ckeys[i - 1], &s->ckeys[i]) == 0)
            log_warn("consumers %s and %s share a %s credential; %s is used",
                     s->ckeys[i - 1].c->username, s->ckeys[i].c->username, s->ckeys[i].plugin,
                     s->ckeys[i - 1].c->username);
    return 0;
}

const struct consumer_rt *snapshot_consumer_by(const struct snapshot *s, const char *plugin,
                                               const char *value)
{
    if (!s || !plugin || !value || s->nckeys == 0)
        return NULL;
    /* The first of equal keys: lower bound. */
    size_t lo = 0, hi = s->nckeys;
    struct consumer_key k = {.plugin = plugin, .value = value};
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ckey_cmp(&s->ckeys[mid], &k) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < s->nckeys && ckey_cmp(&s->ckeys[lo], &k) == 0)
        return s->ckeys[lo].c;
    return NULL;
}

const struct consumer_rt *snapshot_consumer(const struct snapshot *s, const char *username)
{
    if (!s || !username || s->nconsumers == 0)
        return NULL;
    struct consumer_rt k = {.username = username};
    return bsearch(&k, s->consumers, s->nconsumers, sizeof(k), consumer_cmp);
}

struct snapshot *snapshot_build(json_t *resources, int64_t revision)
{
    struct snapshot *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->refs = 1;
    s->revision = revision;
    s->resources = json_incref(resources);
    s->global_rules = json_array();
    s->stream_routes = json_array();
    s->no_plugins = json_object();
    s->router = router_new();
    if (!s->router || !s->global_rules || !s->stream_routes || !s->no_plugins)
        goto fail;
    const char *key;
    json_t *v;
    char coll[32];
    const char *id;
    /* Shared upstreams first: routes refer to them. */
    json_object_foreach(resources, key, v) {
        if (collection_of(key, coll, sizeof(coll), &id) == 0 && strcmp(coll, "upstreams") == 0) {
            struct upstream_rt *up = upstream_build(id, v);
            if (up && add_upstream(s, up) < 0) {
                upstream_free(up);
                goto fail;
            }
        }
    }
    json_object_foreach(resources, key, v) {
        if (collection_of(key, coll, sizeof(coll), &id) < 0)
            continue;
        if (strcmp(coll, "routes") == 0) {
            if (compile_route(s, id, v) < 0)
                goto fail;
        } else if (strcmp(coll, "stream_routes") == 0) {
            json_array_append(s->stream_routes, v);
            if (compile_stream_route(s, id, v) < 0)
                goto fail;
        }
    }
    if (s->nsroutes > 1)
        qsort(s->sroutes, s->nsroutes, sizeof(*s->sroutes), sroute_cmp);
    if (compile_global_rules(s) < 0 || compile_consumers(s) < 0)
        goto fail;
    if (router_build(s->router) < 0)
        goto fail;
    up_index_clear();
    return s;
fail:
    up_index_clear();
    log_error("out of memory compiling revision %lld", (long long)revision);
    snapshot_unref(s);
    return NULL;
}

void snapshot_unref(struct snapshot *s)
{
    if (!s || --s->refs > 0)
        return;
    router_free(s->router);
    for (size_t i = 0; i < s->nroutes; i++)
        route_free(s->routes[i]);
    free(s->routes);
    for (size_t i = 0; i < s->nupstreams; i++)
        upstream_free(s->upstreams[i]);
    free(s->upstreams);
    for (size_t i = 0; i < s->nsroutes; i++)
        sroute_free(s->sroutes[i]);
    free(s->sroutes);
    for (size_t i = 0; i < s->ngchains; i++)
        plugin_chain_free(s->gchains[i]);
    free(s->gchains);
    free(s->consumers);
    free(s->ckeys);
    json_decref(s->no_plugins);
    json_decref(s->global_rules);
    json_decref(s->stream_routes);
    json_decref(s->resources);
    free(s);
}

const struct route_rt *snapshot_match(const struct snapshot *s, const struct route_query *q)
{
    return snapshot_match_ex(s, q, NULL, NULL);
}

const struct route_rt *snapshot_match_ex(const struct snapshot *s, const struct route_query *q,
                                         const char **matched_uri, const char **matched_host)
{
    struct router_req req;
    router_req_init(&req, q->method, q->host, NULL);
    req.path = q->path;
    req.path_len = q->path_len;
    req.remote = q->remote;
    req.var = q->var;
    req.ud = q->var_ud;
    struct router_match m;
    if (router_match_ex(s->router, &req, &m) < 0)
        return NULL;
    if (matched_uri)
        *matched_uri = m.uri;
    if (matched_host)
        *matched_host = m.host;
    return m.payload;
}

/* Copies the shared verdicts into the balancer when they changed. */
static void sync_health(struct upstream_rt *up)
{
    uint64_t gen = health_generation(health);
    if (gen == up->health_gen)
        return;
    up->health_gen = gen;
    for (int i = 0; i < balancer_count(up->bal); i++)
        balancer_set_down(up->bal, i,
                          health_is_down(health, up->id, balancer_node(up->bal, i)->addr));
}

int upstream_pick(struct upstream_rt *up, const char *key, size_t keylen, const uint64_t *tried,
                  struct upstream_node *out)
{
    if (health && up->checks)
        sync_health(up);
    int idx = balancer_pick(up->bal, key, keylen, tried);
    if (idx < 0)
        return -EAGAIN;
    const struct balancer_node *n = balancer_node(up->bal, idx);
    out->index = idx;
    out->host = n->host;
    out->port = n->port;
    out->addr = n->addr;
    return 0;
}

/* Appends var `name` (bytes) to buf; returns the new length. */
static size_t append_var(const struct route_query *q, const char *name, size_t nlen, char *buf,
                         size_t len, size_t cap)
{
    char nm[128];
    if (nlen == 0 || nlen >= sizeof(nm))
        return len;
    memcpy(nm, name, nlen);
    nm[nlen] = '\0';
    size_t vlen = 0;
    const char *v = q->var ? q->var(q->var_ud, nm, &vlen) : NULL;
    if (!v)
        return len;
    if (vlen > cap - len)
        vlen = cap - len;
    memcpy(buf + len, v, vlen);
    return len + vlen;
}

size_t snapshot_hash_key(const struct upstream_rt *up, const struct route_query *q, char *buf,
                         size_t buflen)
{
    size_t len = 0;
    char name[160];
    const char *key = up->key ? up->key : "remote_addr";
    switch (up->hash_on) {
    case HASH_VARS:
        len = append_var(q, key, strlen(key), buf, 0, buflen);
        break;
    case HASH_HEADER: {
        size_t n = (size_t)snprintf(name, sizeof(name), "http_%s", key);
        for (size_t i = 5; i < n && i < sizeof(name); i++)
            name[i] = name[i] == '-' ? '_' : (char)(name[i] | ((name[i] >= 'A' && name[i] <= 'Z') ? 0x20 : 0));
        len = append_var(q, name, strlen(name), buf, 0, buflen);
        break;
    }
    case HASH_COOKIE:
        snprintf(name, sizeof(name), "cookie_%s", key);
        len = append_var(q, name, strlen(name), buf, 0, buflen);
        break;
    case HASH_CONSUMER:
        len = append_var(q, "consumer_name", 13, buf, 0, buflen);
        break;
    case HASH_VARS_COMBINATIONS:
        /* "$host$uri": each $name is a var; other bytes are literal. */
        for (const char *p = key; *p && len < buflen;) {
            if (*p == '$') {
                const char *e = ++p;
                while ((*e >= 'a' && *e <= 'z') || (*e >= 'A' && *e <= 'Z') ||
                       (*e >= '0' && *e <= '9') || *e == '_')
                    e++;
                len = append_var(q, p, (size_t)(e - p), buf, len, buflen);
                p = e;
            } else {
                buf[len++] = *p++;
            }
        }
        break;
    }
    if (len == 0)
        len = append_var(q, "remote_addr", 11, buf, 0, buflen);
    return len;
}

void upstream_conn_start(struct upstream_rt *up, int index)
{
    balancer_conn_start(up->bal, index);
}

void upstream_conn_end(struct upstream_rt *up, int index)
{
    balancer_conn_end(up->bal, index);
}

void upstream_report(struct upstream_rt *up, int index, bool ok, uint32_t latency_ms)
{
    if (ok)
        balancer_report_latency(up->bal, index, (double)latency_ms);
    if (health && up->checks) {
        const struct balancer_node *n = balancer_node(up->bal, index);
        if (n)
            health_passive_report(health, up->id, n->addr, up->checks,
                                  ok ? HEALTH_OK : HEALTH_TCP_FAILURE);
    }
}
