/*
 * config: airgw's configuration model, shared by the control plane (admin
 * API writes) and the data plane (standalone files, the config stream).
 *
 * A resource is one JSON object of a kind (route, upstream, ...) in the shape
 * of Apache APISIX 3.x. There is exactly one validation path, config_check(),
 * which both daemons use: schema (the JSON files in common/schemas, embedded at build
 * time), plugin schemas, and the cross-field rules APISIX applies in code.
 * References to other resources (upstream_id, service_id, plugin_config_id)
 * need a store and are checked separately by config_check_refs().
 */
#ifndef AIRGW_CONFIG_H
#define AIRGW_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

enum gw_kind {
    GW_KIND_ROUTE = 0,
    GW_KIND_SERVICE,
    GW_KIND_UPSTREAM,
    GW_KIND_STREAM_ROUTE,
    GW_KIND_SSL,
    GW_KIND_CONSUMER,
    GW_KIND_GLOBAL_RULE,
    GW_KIND_PLUGIN_CONFIG,
    GW_KIND__COUNT
};

/* "routes", "services", ... (the admin API path segment and key prefix). */
const char *config_kind_collection(enum gw_kind kind);
/* "route", "service", ... (used in APISIX's messages: "missing route id"). */
const char *config_kind_name(enum gw_kind kind);
/* Inverse of config_kind_collection; -1 when unknown. */
int config_kind_from_collection(const char *collection);

/* True when id is 1..64 chars of [a-zA-Z0-9-_.]. */
bool config_id_valid(const char *id);

/* Validates conf as a resource of kind, in place: inserts schema defaults,
 * checks every plugin named in "plugins" against its schema (unknown plugin ->
 * "unknown plugin [name]"), and applies APISIX's code-level rules (e.g. chash
 * needs key; a route needs uri or uris; ssl cert/key pairs). conf must be an
 * object. Returns 0 or -EINVAL with an APISIX-style message in err:
 *   "invalid configuration: property \"uri\" validation failed: ..."
 *   "unknown plugin [foo]"
 *   "failed to check the configuration of plugin limit-count err: ..."
 * Fields id, create_time, update_time are allowed (the admin layer sets
 * them). */
int config_check(enum gw_kind kind, json_t *conf, char *err, size_t errlen);

/* One reference from a resource to another. */
struct config_ref {
    enum gw_kind kind; /* kind referred to */
    const char *id;    /* its id (points into the resource's JSON) */
    const char *field; /* "upstream_id", "service_id", "plugin_config_id" */
};

/* Lists the references conf makes (at most max; returns how many). Ids given
 * as JSON integers are not listed (APISIX ids in refs are strings or ints:
 * ints are rendered into idbuf, a caller buffer of max*24 bytes). */
int config_refs(enum gw_kind kind, const json_t *conf, struct config_ref *out, int max,
                char *idbuf);

/* The plugin names airgw knows, sorted. Borrowed array (do not decref). */
const json_t *config_plugin_names(void);
/* A plugin's JSON schema, or NULL. Borrowed. */
const json_t *config_plugin_schema(const char *name);
/* True when the plugin runs on stream routes (mqtt-proxy, ip-restriction, ...). */
bool config_plugin_is_stream(const char *name);
/* A resource kind's JSON schema (borrowed). */
const json_t *config_kind_schema(enum gw_kind kind);

/* Releases the parsed schema registry (at exit, for leak checkers). */
void config_cleanup(void);

#endif
