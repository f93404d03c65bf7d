/*
 * plugin: the registry and chain building (see plugin.h).
 */
#include "plugin.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* mqtt-proxy is handled by stream_proxy.c itself: a def with no callbacks. */
static const struct plugin_def plugin_def_mqtt_proxy = {
    .name = "mqtt-proxy",
    .priority = 1000,
    .flags = PLUGIN_STREAM,
};

extern const struct plugin_def plugin_def_key_auth;
extern const struct plugin_def plugin_def_basic_auth;
extern const struct plugin_def plugin_def_proxy_rewrite;
extern const struct plugin_def plugin_def_cors;
extern const struct plugin_def plugin_def_ip_restriction;
extern const struct plugin_def plugin_def_limit_count;
extern const struct plugin_def plugin_def_limit_req;
extern const struct plugin_def plugin_def_limit_conn;
extern const struct plugin_def plugin_def_prometheus;
extern const struct plugin_def plugin_def_mqtt_auth;
extern const struct plugin_def plugin_def_device_api;

static const struct plugin_def *const registry[] = {
    &plugin_def_mqtt_proxy,  &plugin_def_key_auth,    &plugin_def_basic_auth,
    &plugin_def_proxy_rewrite, &plugin_def_cors,      &plugin_def_ip_restriction,
    &plugin_def_limit_count, &plugin_def_limit_req,   &plugin_def_limit_conn,
    &plugin_def_prometheus,  &plugin_def_mqtt_auth,   &plugin_def_device_api,
};

const struct plugin_def *plugin_find(const char *name)
{
    for (size_t i = 0; i < sizeof(registry) / sizeof(registry[0]); i++)
        if (strcmp(registry[i]->name, name) == 0)
            return registry[i];
    return NULL;
}

/* ---- chains ---- */

static bool def_has_code(const struct plugin_def *d, bool stream)
{
    if (stream)
        return d->preread || d->stream_log;
    return d->rewrite || d->access || d->before_proxy || d->header_filter || d->body_filter ||
           d->log;
}

/* APISIX's "_meta": {"disable": true} turns a configured plugin off. */
static bool conf_disabled(const json_t *conf)
{
    return json_is_true(json_object_get(json_object_get(conf, "_meta"), "disable"));
}

static int inst_cmp(const void *a, const void *b)
{
    const struct plugin_inst *x = a, *y = b;
    if (x->def->priority != y->def->priority)
        return x->def->priority > y->def->priority ? -1 : 1;
    return strcmp(x->def->name, y->def->name);
}

/* What a chain that cannot be made at all (out of memory) becomes: no
 * instances, and its owner refuses traffic. Never freed. */
static struct plugin_chain chain_oom = {.n = 0, .unavailable = ""};

/* Frees the instances made so far and turns c into a refusing chain. */
static struct plugin_chain *chain_unavailable(struct plugin_chain *c, const char *owner,
                                              const char *name, const char *why, bool stream)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->inst[i].def->destroy)
            c->inst[i].def->destroy(c->inst[i].state);
    c->n = 0;
    c->unavailable = name;
    log_error("%s: plugin %s is not available: %s; %s", owner, name, why,
              stream ? "its connections are refused" : "its requests are answered 503");
    return c;
}

struct plugin_chain *plugin_chain_build(const json_t *plugins, const char *owner, bool stream)
{
    if (!json_is_object(plugins) || json_object_size(plugins) == 0)
        return NULL;
    size_t max = json_object_size(plugins);
    struct plugin_chain *c = malloc(sizeof(*c) + max * sizeof(c->inst[0]));
    if (!c) {
        log_error("%s: out of memory building its plugins; %s", owner,
                  stream ? "its connections are refused" : "its requests are answered 503");
        return &chain_oom;
    }
    c->n = 0;
    c->unavailable = NULL;
    const char *name;
    json_t *conf;
    json_object_foreach((json_t *)plugins, name, conf) {
        if (conf_disabled(conf))
            continue; /* off: not run, whether airgw knows it or not */
        const struct plugin_def *d = plugin_find(name);
        if (!d)
            return chain_unavailable(c, owner, name, "airgw has no code for it", stream);
        if (!(d->flags & (stream ? PLUGIN_STREAM : PLUGIN_HTTP))) {
            /* The control plane accepts a plugin only where it runs. On a
             * stream route an HTTP plugin comes from a service shared with
             * HTTP routes and means nothing there: ignored. On an HTTP
             * owner a stream plugin came from elsewhere (another control
             * plane, a direct store write): what it should do cannot be
             * done, so the owner refuses. */
            if (!stream)
                return chain_unavailable(c, owner, name, "it is not an HTTP plugin", stream);
            log_warn("%s: plugin %s ignored: it is not a stream plugin", owner, name);
            continue;
        }
        if (!def_has_code(d, stream))
            continue; /* mqtt-proxy: the stream proxy itself does its work */
        void *state = NULL;
        if (d->create) {
            char err[256] = "";
            struct plugin_create_args a = {.conf = conf, .owner = owner, .plugin = name};
            if (d->create(&a, &state, err, sizeof(err)) < 0)
                return chain_unavailable(c, owner, name, err[0] ? err : "invalid configuration",
                                         stream);
        }
        c->inst[c->n++] = (struct plugin_inst){.def = d, .state = state, .conf = conf};
    }
    if (c->n == 0) {
        free(c);
        return NULL;
    }
    qsort(c->inst, c->n, sizeof(c->inst[0]), inst_cmp);
    return c;
}

void plugin_chain_free(struct plugin_chain *c)
{
    if (!c || c == &chain_oom)
        return;
    for (size_t i = 0; i < c->n; i++)
        if (c->inst[i].def->destroy)
            c->inst[i].def->destroy(c->inst[i].state);
    free(c);
}

/* ---- the worker's environment ---- */

/* Set once per worker process before its first snapshot; the master never
 * sets it, so its snapshots carry no chains. */
static struct plugin_env env;
static bool env_set;

void plugin_env_set(const struct plugin_env *e)
{
    env = *e;
    env_set = true;
}

const struct plugin_env *plugin_env(void)
{
    return env_set ? &env : NULL;
}

void plugin_env_shutdown(void)
{
    for (size_t i = 0; i < sizeof(registry) / sizeof(registry[0]); i++)
        if (registry[i]->worker_stop)
            registry[i]->worker_stop();
}
