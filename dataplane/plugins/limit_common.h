/*
 * limit_common: what limit-count, limit-req and limit-conn share: the key
 * of a request or connection (APISIX's key / key_type), the counters' owner
 * (route or group, with the configuration's version), the table
 * (plugin_env()->limits, or a table of the worker's own when the master
 * could not make one), and APISIX's rejection answer.
 */
#ifndef AIRGW_DP_LIMIT_COMMON_H
#define AIRGW_DP_LIMIT_COMMON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "../plugin.h"

#define LIMIT_KEY_MAX 512 /* a resolved key longer than this is cut */

enum limit_key_type { LIMIT_KEY_VAR, LIMIT_KEY_COMBINATION, LIMIT_KEY_CONSTANT };

struct limit_key {
    enum limit_key_type type; /* key_type */
    char *key;                /* key (malloc), never NULL */
};

/* Reads key (default def_key when absent; NULL: required) and key_type.
 * 0, or -1 with err. */
int limit_key_parse(const json_t *conf, const char *def_key, struct limit_key *k, char *err,
                    size_t errlen);
void limit_key_free(struct limit_key *k);

/* The key's value for a request, as APISIX resolves it: a variable, a
 * "$a $b" combination (absent variables are empty; none present: the
 * client address), or the constant. Writes at most cap - 1 bytes and a 0;
 * returns the length. */
size_t limit_key_req(const struct limit_key *k, struct plugin_req *r, char *buf, size_t cap);
/* The same for a stream connection: remote_addr, remote_port,
 * server_addr, server_port, route_id, consumer_name, mqtt_client_id. */
size_t limit_key_stream(const struct limit_key *k, struct plugin_stream *s, char *buf, size_t cap);

/* The owner of an instance's counters: "GROUP:<group>" for a group, else
 * "<owner>#<hash of the plugin's configuration>", so that changing the
 * plugin's configuration starts its counters afresh while other edits of
 * the route keep them (APISIX's conf_version of the plugin). malloc'd. */
char *limit_owner(const json_t *conf, const char *owner, const char *group);

/* The node-wide table, or a table of this process's own (then limits are
 * per worker, said once in the log). NULL when not even that exists. */
struct shm_limits *limit_table(void);

/* The worker ends (the limit plugins' worker_stop): frees the worker's
 * own table, if any. */
void limit_common_stop(void);

/* This worker's index (0 outside workers). */
int limit_worker(void);

/* APISIX's rejection: {"error_msg": msg} as JSON when msg is set, else the
 * status's default page. */
void limit_reject(struct plugin_req *r, int code, const char *msg);

/* Warns (once per process and plugin) that its table is full. */
void limit_warn_full(const char *plugin);

/* Reads policy: a Redis policy is not supported; says so once and counts
 * in the node's shared memory instead. */
void limit_check_policy(const json_t *conf, const char *plugin, const char *owner);

/* What the three plugins' configurations share. */
struct limit_conf {
    struct limit_key key;   /* key, key_type */
    char *owner;            /* the counters' owner (limit_owner) */
    int rejected_code;      /* default 503 */
    char *rejected_msg;     /* or NULL */
    bool allow_degradation; /* let requests through when the limiter fails */
};

/* Reads rejected_code, rejected_msg, allow_degradation, the owner (of
 * owner and group, see limit_owner) and the key (default def_key, see
 * limit_key_parse), then checks policy for plugin. 0, or -1 with err
 * (free what was read with limit_conf_free). */
int limit_conf_parse(const json_t *conf, const char *plugin, const char *owner, const char *group,
                     const char *def_key, struct limit_conf *lc, char *err, size_t errlen);
void limit_conf_free(struct limit_conf *lc);

#endif
