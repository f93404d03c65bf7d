/*
 * standalone: APISIX's standalone configuration file (apisix.yaml, or JSON)
 * as a data plane's whole configuration, with no control plane.
 *
 * The file has top-level lists routes, services, upstreams, stream_routes,
 * ssls, consumers, global_rules, plugin_configs; a YAML file must end with a
 * line "#END" (APISIX's marker that the file was written completely). Every
 * resource goes through config_check(), the same validation as the Admin
 * API, and references must point at resources in the same file. Any error
 * rejects the whole file: the caller keeps its previous configuration.
 */
#ifndef AIRGW_DP_STANDALONE_H
#define AIRGW_DP_STANDALONE_H

#include <jansson.h>
#include <stddef.h>

/* Loads path. On success *out is an object "/apisix/<collection>/<id>" ->
 * validated value (with defaults), owned by the caller. Returns 0 or -EINVAL
 * / -errno with a one-line message naming the file and the resource. */
int standalone_load(const char *path, json_t **out, char *err, size_t errlen);

/* The same for text in memory (name is used in messages; is_json skips the
 * #END requirement). */
int standalone_parse(const char *text, size_t len, const char *name, int is_json, json_t **out,
                     char *err, size_t errlen);

#endif
