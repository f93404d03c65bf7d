/*
 * plugin: the registry and chain building (see plugin.h).
 */
#include "plugin.h"

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

/* TODO(framework): plugin_chain_build, plugin_chain_free, plugin_env_set,
 * plugin_env, plugin_env_shutdown. */
