/*
 * snapshot: one revision of the configuration, compiled for serving.
 *
 * A worker holds the current snapshot; a request takes a reference when it
 * starts and keeps that snapshot to its end, so a request sees one revision
 * from start to end while new revisions are swapped in between requests.
 * Snapshots are immutable after snapshot_build() except for balancer state
 * (round-robin position, connection counts, health) which only the owning
 * worker's thread touches.
 *
 * Compilation follows APISIX: a route is merged with its service (service
 * plugins, hosts and upstream fill what the route leaves out) and with its
 * plugin_config (route plugins win); the upstream is the route's inline one,
 * else upstream_id, else the service's.
 */
#ifndef AIRGW_DP_SNAPSHOT_H
#define AIRGW_DP_SNAPSHOT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "cidr.h"

enum up_scheme { UP_HTTP = 0, UP_HTTPS, UP_GRPC, UP_GRPCS, UP_TCP, UP_TLS, UP_UDP };
enum pass_host { PASS_HOST_PASS = 0, PASS_HOST_NODE, PASS_HOST_REWRITE };
enum hash_on { HASH_VARS = 0, HASH_HEADER, HASH_COOKIE, HASH_CONSUMER, HASH_VARS_COMBINATIONS };

struct balancer;     /* dataplane/balancer.h */
struct plugin_chain; /* dataplane/plugin.h */
struct consumer_rt;  /* dataplane/plugin.h */

/* Timeouts in milliseconds. */
struct timeouts {
    uint32_t connect_ms; /* default 60000, as nginx/APISIX */
    uint32_t send_ms;    /* default 60000 */
    uint32_t read_ms;    /* default 60000 */
};

/* A compiled upstream. Shared by every route that names it. */
struct upstream_rt {
    char id[80];               /* "1" for upstreams/1; "route/7" for an inline one */
    struct balancer *bal;      /* node choice; per worker */
    enum up_scheme scheme;     /* http by default */
    enum pass_host pass_host;  /* pass by default */
    char *upstream_host;       /* for PASS_HOST_REWRITE, else NULL */
    enum hash_on hash_on;      /* for chash */
    char *key;                 /* chash key: a var name, header name, cookie name */
    int retries;               /* -1: as many as there are other nodes */
    uint32_t retry_timeout_ms; /* 0: no bound on the time spent retrying */
    struct timeouts timeout;   /* the upstream's own timeouts */
    int keepalive_size;        /* idle connections kept per node (default 320) */
    uint32_t keepalive_idle_ms;/* default 60000 */
    int keepalive_requests;    /* requests per connection before closing (default 1000) */
    json_t *conf;              /* the upstream as stored (borrowed from the snapshot) */
    const json_t *checks;      /* conf's "checks", or NULL: health applies */
    uint64_t health_gen;       /* health table generation the down flags reflect */
};

/* A compiled, merged route. */
struct route_rt {
    char id[80];               /* route id */
    const char *name;          /* route name or NULL */
    struct upstream_rt *up;    /* NULL: no upstream configured (answer 502) */
    struct timeouts timeout;   /* route.timeout over upstream.timeout over defaults */
    bool enable_websocket;     /* pass Upgrade: websocket through */
    json_t *plugins;           /* merged plugins object (never NULL; may be empty) */
    json_t *conf;              /* the merged route (owned by the snapshot) */
    struct plugin_chain *chain;/* its plugins ("route/<id>"), or NULL: none, or not a worker */
};

/* One node chosen for one attempt. */
struct upstream_node {
    int index;                 /* node index inside the balancer (for tried masks, reports) */
    const char *host;          /* host as configured (name or address) */
    uint16_t port;             /* port */
    const char *addr;          /* "host:port" as configured, for logs and Host with pass_host node */
};

/* What the router needs from a request. */
struct route_query {
    const char *method;        /* "GET" */
    const char *host;          /* Host header (may have ":port"), or NULL */
    const char *path;          /* path without the query string */
    size_t path_len;
    const struct sockaddr *remote; /* client address */
    /* Looks up a request variable for route `vars` and chash keys: uri, host,
     * remote_addr, remote_port, server_port, request_method, scheme, args,
     * arg_NAME, http_NAME (header, lowercase, '-' as '_'), cookie_NAME.
     * Returns NULL when absent; *len gets the length. */
    const char *(*var)(void *ud, const char *name, size_t *len);
    void *var_ud;
};

/* A compiled stream route (TCP/TLS, MQTT). */
struct stream_route_rt {
    char id[80];                     /* stream route id */
    bool has_server_addr;            /* match server_addr */
    struct cidr server_addr;         /* the listener address the client reached */
    int server_port;                 /* 0: any */
    bool has_remote;                 /* match remote_addr */
    struct cidr remote;              /* client range */
    const char *sni;                 /* TLS server name ("*.x" wildcards), or NULL */
    bool mqtt;                       /* mqtt-proxy configured */
    const char *mqtt_name;           /* required protocol name, or NULL: any */
    int mqtt_level;                  /* required level, or -1: any supported */
    struct upstream_rt *up;          /* NULL: no upstream (connections are closed) */
    json_t *conf;                    /* the merged stream route (owned) */
    struct plugin_chain *chain;      /* stream plugins ("stream_route/<id>"), or NULL */
};

/* A credential of a consumer, for snapshot_consumer_by. */
struct consumer_key {
    const char *plugin;            /* "key-auth" */
    const char *value;             /* the consumer's plugins.<plugin>.<field> */
    const struct consumer_rt *c;   /* its consumer */
};

struct snapshot {
    int refs;                  /* holders: the worker's current pointer + requests in flight */
    int64_t revision;          /* store revision this snapshot reflects */
    struct router *router;     /* HTTP routes */
    struct route_rt **routes;  /* every compiled route (owned) */
    size_t nroutes;
    struct upstream_rt **upstreams; /* every compiled upstream, shared and inline (owned) */
    size_t nupstreams;
    json_t *resources;         /* the source: {"/apisix/routes/1": {...}, ...} (owned) */
    json_t *global_rules;      /* array of global_rule objects (owned) */
    json_t *stream_routes;     /* array of stream_route objects as stored (owned) */
    struct stream_route_rt **sroutes; /* compiled stream routes, SNI routes first */
    size_t nsroutes;
    struct plugin_chain **gchains; /* global rules' chains in id order ("global_rule/<id>");
                                      only rules with a chain (workers only) */
    size_t ngchains;
    struct consumer_rt *consumers; /* compiled consumers, sorted by username */
    size_t nconsumers;
    struct consumer_key *ckeys;    /* credentials, sorted by (plugin, value) */
    size_t nckeys;
    json_t *no_plugins;            /* {} for consumers without plugins (owned) */
};

/* Compiles resources (an object of key -> resource value; a reference is
 * taken) at revision. Resources that fail to compile are skipped with a
 * warning naming them (the control plane validated them, so this only
 * happens for resources a newer control plane knows); never fails the whole
 * snapshot for one bad resource. Returns NULL only when out of memory. */
struct snapshot *snapshot_build(json_t *resources, int64_t revision);

static inline struct snapshot *snapshot_ref(struct snapshot *s)
{
    s->refs++;
    return s;
}

/* Drops a reference; frees the snapshot with the last one. */
void snapshot_unref(struct snapshot *s);

/* Finds the route for a request, or NULL (404). */
const struct route_rt *snapshot_match(const struct snapshot *s, const struct route_query *q);

/* As snapshot_match, also giving the route uri and host patterns that
 * selected it (e.g. "/api/" followed by a star, "*.example.com"; host NULL when
 * the route has none).
 * They stay valid as long as the snapshot. */
const struct route_rt *snapshot_match_ex(const struct snapshot *s, const struct route_query *q,
                                         const char **matched_uri, const char **matched_host);

/* Finds the stream route for a connection that reached server (the local
 * address) from remote, with TLS server name sni (NULL for plain TCP), as
 * APISIX's stream router: routes with an sni first (TLS only), then the
 * others, each in id order; every given condition must hold. NULL: close. */
const struct stream_route_rt *snapshot_stream_match(const struct snapshot *s,
                                                    const struct sockaddr *server,
                                                    const struct sockaddr *remote,
                                                    const char *sni);

/* Picks a node of up for one attempt. key is the chash key (NULL for other
 * balancer types; the caller computes it with snapshot_hash_key). tried has
 * bit i set for nodes already tried by this request. Returns 0, or -EAGAIN
 * when no node is left. */
int upstream_pick(struct upstream_rt *up, const char *key, size_t keylen, const uint64_t *tried,
                  struct upstream_node *out);

/* Computes the chash key of a request for up into buf (falls back to
 * remote_addr when the var is empty, as APISIX does). Returns its length. */
size_t snapshot_hash_key(const struct upstream_rt *up, const struct route_query *q, char *buf,
                         size_t buflen);

struct health_table;

/* Sets this process's health table (NULL: no health checks). Upstreams with
 * "checks" take their nodes' down flags from it. */
void snapshot_set_health(struct health_table *ht);

/* Reports the outcome of an attempt: connection start/end for least_conn,
 * latency for ewma, failures for passive health checks. */
void upstream_conn_start(struct upstream_rt *up, int index);
void upstream_conn_end(struct upstream_rt *up, int index);
void upstream_report(struct upstream_rt *up, int index, bool ok, uint32_t latency_ms);

#endif
