/*
 * plugin: APISIX-style plugins in the data plane's workers.
 *
 * A plugin is a struct plugin_def (name, priority, callbacks per phase). The
 * registry (plugin.c) lists every def; the schemas live in
 * common/schemas/plugins/NAME.json and the control plane has already
 * validated each configuration (defaults filled) before a worker sees it.
 *
 * Instances. When a worker compiles a snapshot, each route (merged with its
 * service and plugin_config), each global rule and each stream route gets a
 * plugin_chain: one plugin_inst per configured plugin, made by def->create
 * from its configuration and sorted by priority, highest first (APISIX's
 * order). The instance lives as long as the snapshot; def->destroy frees it.
 * Chains are built only in processes that called plugin_env_set (workers):
 * the master compiles snapshots too (for health checks) and must not run
 * plugin code.
 *
 * Failing closed. A configured plugin that cannot run (airgw has no code for
 * it, its create failed, memory ran out) never fails the snapshot, but the
 * chain then has no instances and names it in `unavailable`: the route or
 * global rule answers every request 503 {"error_msg":"plugin NAME is not
 * available on this route"}, the stream route refuses every connection
 * (MQTT: CONNACK "server unavailable"). A route meant to be protected by
 * key-auth or a limit never serves without it. The build logs which plugin
 * and why, once per snapshot (per worker). Not refusing: plugins turned off
 * with _meta.disable, plugins without code on purpose (mqtt-proxy, done by
 * stream_proxy.c), and HTTP plugins on a stream route (from a service shared
 * with HTTP routes), which are ignored with a warning.
 *
 * HTTP phases, in this order for each request (APISIX's):
 *   rewrite   global rules' chains, then the route's
 *   access    global rules' chains, then the route's
 *   before_proxy  route's, right before the first upstream attempt
 *   header_filter on the response head to the client (proxied or local)
 *   body_filter   on each response body chunk to the client (observe only)
 *   log       once when the request ends, whatever happened (also after
 *             a local answer, an abort, a 499); free per-request data here.
 * Global rules run also when no route matched (then with no route chain),
 * as APISIX 3.x does, before the 404.
 *
 * Return codes of rewrite/access/before_proxy:
 *   PLUGIN_CONTINUE  next plugin (or next phase)
 *   PLUGIN_STOP      the plugin called plugin_respond(): the chain stops, the
 *                    response goes out, header_filter and log still run
 *   PLUGIN_ASYNC     the plugin will call plugin_resume() later from the
 *                    worker's loop (after a timer, a broker's PUBACK, the
 *                    request body); until then the request waits. If the
 *                    request ends meanwhile (client gone, worker stopping),
 *                    the abort callback set with plugin_set_abort runs
 *                    first, and the plugin must not touch r afterwards.
 *
 * Stream phases (stream routes; MQTT after the CONNECT packet was parsed):
 *   preread   after the route matched and before an upstream is picked;
 *             PLUGIN_CONTINUE or PLUGIN_STOP (after plugin_stream_deny)
 *   stream_log  when the connection closes (free per-connection data)
 *
 * `data` is one pointer per (request or connection, plugin instance),
 * NULL at the start, for the plugin's own use across phases.
 *
 * Everything here runs on a worker's one loop thread. Node-wide state (the
 * limit counters) lives in shared memory (shm_limits.h).
 */
#ifndef AIRGW_DP_PLUGIN_H
#define AIRGW_DP_PLUGIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct snapshot;
struct metrics;
struct shm_limits;
struct mqtt_connect;

enum plugin_rc {
    PLUGIN_CONTINUE = 0,
    PLUGIN_STOP = 1,
    PLUGIN_ASYNC = 2,
};

enum plugin_flags {
    PLUGIN_HTTP = 1u << 0,   /* runs on routes, services, plugin configs, global rules */
    PLUGIN_STREAM = 1u << 1, /* runs on stream routes */
};

struct plugin_req;    /* one HTTP request as plugins see it (opaque) */
struct plugin_stream; /* one stream connection as plugins see it (opaque) */

/* A consumer, compiled with the snapshot. */
struct consumer_rt {
    const char *username; /* the consumer's name */
    const json_t *conf;   /* the consumer as stored (borrowed from the snapshot) */
    const json_t *plugins;/* its "plugins" object (credentials), never NULL */
};

struct plugin_create_args {
    const json_t *conf;    /* the plugin's configuration (borrowed; lives as long as the instance) */
    const char *owner;     /* "route/1", "global_rule/2", "stream_route/3": stable across
                              revisions, so shared counters survive a config change */
    const char *plugin;    /* the plugin's name */
};

struct plugin_def {
    const char *name;
    int priority;   /* APISIX's: higher runs first */
    unsigned flags; /* PLUGIN_HTTP | PLUGIN_STREAM */
    /* Makes an instance; NULL create: state is NULL. 0 or -1 with err. */
    int (*create)(const struct plugin_create_args *a, void **state, char *err, size_t errlen);
    void (*destroy)(void *state);
    /* HTTP. Any may be NULL. */
    int (*rewrite)(struct plugin_req *r, void *state, void **data);
    int (*access)(struct plugin_req *r, void *state, void **data);
    int (*before_proxy)(struct plugin_req *r, void *state, void **data);
    void (*header_filter)(struct plugin_req *r, void *state, void **data);
    void (*body_filter)(struct plugin_req *r, void *state, void **data, const char *chunk,
                        size_t len);
    void (*log)(struct plugin_req *r, void *state, void **data);
    /* Stream. Any may be NULL. */
    int (*preread)(struct plugin_stream *s, void *state, void **data);
    void (*stream_log)(struct plugin_stream *s, void *state, void **data);
    /* Worker: plugin_env_shutdown was called; release worker-wide resources
     * (connection pools, timers) so the loop can end. May be NULL. */
    void (*worker_stop)(void);
};

struct plugin_inst {
    const struct plugin_def *def;
    void *state;        /* from create */
    const json_t *conf; /* borrowed from the snapshot */
};

struct plugin_chain {
    size_t n;
    /* NULL, or the name of a configured plugin that could not be made
     * (borrowed from the plugins object; "" when memory ran out before any
     * was looked at): then n is 0 and the owner refuses all traffic. */
    const char *unavailable;
    struct plugin_inst inst[]; /* priority order, highest first */
};

/* ---- registry and chains (plugin.c) ---- */

/* The def of a plugin, or NULL when airgw has no code for it. */
const struct plugin_def *plugin_find(const char *name);

/* Builds a chain from a "plugins" object (may be NULL or empty: returns
 * NULL). stream picks PLUGIN_STREAM plugins, else PLUGIN_HTTP ones. owner
 * names the owner in logs. Returns NULL when no plugin has code (e.g. only
 * mqtt-proxy, which stream_proxy.c handles itself), and a chain with
 * `unavailable` set when a plugin cannot run (see "Failing closed"). The
 * chain borrows names and configurations from plugins, which must outlive
 * it. */
struct plugin_chain *plugin_chain_build(const json_t *plugins, const char *owner, bool stream);
void plugin_chain_free(struct plugin_chain *c);

/* What a worker gives plugins. Set once at start (before the first snapshot
 * is compiled) by worker.c; the master never sets it. */
struct plugin_env {
    uv_loop_t *loop;           /* the worker's loop */
    int worker_id;             /* 0.. */
    int nworkers;              /* workers in the node */
    struct metrics *metrics;   /* node-wide metrics, or NULL */
    struct shm_limits *limits; /* node-wide limit counters, or NULL (then per worker) */
};
void plugin_env_set(const struct plugin_env *e);
/* NULL outside workers. */
const struct plugin_env *plugin_env(void);
/* Called by the worker when it stops: calls every def's worker_stop, so
 * plugins release worker-wide resources (connection pools) and the loop can
 * end. */
void plugin_env_shutdown(void);

/* ---- consumers (snapshot.c) ---- */

/* The consumer whose credential plugin `plugin` has field `value`: key-auth
 * by "key", basic-auth by "username", mqtt-auth by "cert_subject" and
 * "cert_cn". NULL when none. */
const struct consumer_rt *snapshot_consumer_by(const struct snapshot *s, const char *plugin,
                                               const char *value);
/* By consumer name. */
const struct consumer_rt *snapshot_consumer(const struct snapshot *s, const char *username);

/* ---- what an HTTP plugin sees and does (http_plugin.c) ---- */

const char *plugin_req_method(struct plugin_req *r);
/* $uri: the normalised path routing saw. */
const char *plugin_req_uri(struct plugin_req *r);
/* The query string without '?', or NULL (after plugin edits). */
const char *plugin_req_args(struct plugin_req *r);
/* A query argument's value (first match, not %-decoded), or NULL. */
const char *plugin_req_arg(struct plugin_req *r, const char *name, size_t *len);
/* A request header as the client sent it (first one, case-insensitive), or
 * NULL. */
const char *plugin_req_header(struct plugin_req *r, const char *name, size_t *len);
/* APISIX variables: remote_addr, remote_port, server_port, host, uri,
 * request_uri, scheme, request_method, args, arg_NAME, http_NAME,
 * cookie_NAME, route_id, route_name, consumer_name. NULL when absent. */
const char *plugin_req_var(struct plugin_req *r, const char *name, size_t *len);
const struct sockaddr *plugin_req_remote(struct plugin_req *r);
/* NULL when no route matched (global rules only). */
const char *plugin_req_route_id(struct plugin_req *r);
struct snapshot *plugin_req_snapshot(struct plugin_req *r);
/* Declared length of the request body: -1 chunked, 0 none. */
int64_t plugin_req_content_length(struct plugin_req *r);

const struct consumer_rt *plugin_req_consumer(struct plugin_req *r);
void plugin_req_set_consumer(struct plugin_req *r, const struct consumer_rt *c);

/* Edits of what goes upstream. Strings are copied. 0 or -ENOMEM. */
int plugin_req_set_target(struct plugin_req *r, const char *target); /* path[?query] */
int plugin_req_set_host(struct plugin_req *r, const char *host);     /* Host sent upstream */
int plugin_req_set_method(struct plugin_req *r, const char *method);
/* Replaces every header of that name (value NULL: removes them). */
int plugin_req_header_set(struct plugin_req *r, const char *name, const char *value);
int plugin_req_header_add(struct plugin_req *r, const char *name, const char *value);
/* Removes a query argument from what goes upstream (hide_credentials). */
int plugin_req_arg_remove(struct plugin_req *r, const char *name);

/* Response headers to the client, proxied or local; set in any phase up to
 * header_filter. set replaces (value NULL removes), add appends. */
int plugin_resp_header_set(struct plugin_req *r, const char *name, const char *value);
int plugin_resp_header_add(struct plugin_req *r, const char *name, const char *value);
/* In header_filter and log: the status to the client (0 before). */
int plugin_resp_status(struct plugin_req *r);
/* In header_filter: a header of the upstream's response, or NULL. */
const char *plugin_resp_header(struct plugin_req *r, const char *name, size_t *len);
/* In log: the finished request as the engine reports it to its
 * on_request_info hook (http_proxy.h's struct http_request_info: status,
 * latencies so far, bytes, matched uri and host, upstream node). Pointers
 * in *out live until the log phase returns. */
struct http_request_info;
void plugin_req_info(struct plugin_req *r, struct http_request_info *out);

/* Answers the request locally (body copied; content_type NULL: none). Then
 * return PLUGIN_STOP, or, when suspended, call plugin_resume. */
void plugin_respond(struct plugin_req *r, int status, const char *content_type, const char *body,
                    size_t len);
/* APISIX's {"message":"..."} body with application/json. */
void plugin_respond_message(struct plugin_req *r, int status, const char *message);

/* Ends a PLUGIN_ASYNC suspension: the chain goes on (or, after
 * plugin_respond, the answer goes out). Must be called from the loop, not
 * from inside the phase callback that returned PLUGIN_ASYNC. */
void plugin_resume(struct plugin_req *r);
/* While suspended: fn(ud) runs if the request ends before plugin_resume. */
void plugin_set_abort(struct plugin_req *r, void (*fn)(void *ud), void *ud);

/* Reads the whole request body (up to max bytes), then calls
 * cb(r, ud, body, len) from the loop. Call it from a phase callback and
 * return PLUGIN_ASYNC; the cb later calls plugin_respond and/or
 * plugin_resume. Over max: the framework answers 413 itself (cb is not
 * called, the abort callback is). The body is not forwarded upstream
 * afterwards: a plugin that reads it answers locally. 0 or -ENOMEM. */
int plugin_req_read_body(struct plugin_req *r, size_t max,
                         void (*cb)(struct plugin_req *r, void *ud, const char *body, size_t len),
                         void *ud);

/* ---- what a stream plugin sees and does (stream_proxy.c) ---- */

const struct sockaddr *plugin_stream_remote(struct plugin_stream *s);
const struct sockaddr *plugin_stream_server(struct plugin_stream *s);
const char *plugin_stream_route_id(struct plugin_stream *s);
struct snapshot *plugin_stream_snapshot(struct plugin_stream *s);
/* The parsed CONNECT for an mqtt-proxy route, else NULL. */
const struct mqtt_connect *plugin_stream_mqtt(struct plugin_stream *s);
/* TLS: the server name the client asked for, the verified client
 * certificate's subject ("CN=dev1,O=Acme", RFC 2253 order) and CN; NULL
 * when absent. */
const char *plugin_stream_sni(struct plugin_stream *s);
const char *plugin_stream_peer_subject(struct plugin_stream *s);
const char *plugin_stream_peer_cn(struct plugin_stream *s);
const struct consumer_rt *plugin_stream_consumer(struct plugin_stream *s);
void plugin_stream_set_consumer(struct plugin_stream *s, const struct consumer_rt *c);
/* Refuses the connection: MQTT gets a CONNACK with the code for the
 * client's version for `why` (enum mqtt_refusal in mqtt_codec.h) and is
 * closed; other streams are closed. Then return PLUGIN_STOP. */
void plugin_stream_deny(struct plugin_stream *s, int why);

#endif
