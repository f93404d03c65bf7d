/*
 * balancer: picks an upstream node for a request or an MQTT connection, the
 * way Apache APISIX 3.x does (apisix/balancer*.lua) with nginx's algorithms.
 * A pure module: no sockets, no DNS, no clock unless ewma asks for one.
 *
 * A balancer is built from one upstream JSON object as APISIX stores it
 * ("nodes" as {"host:port": weight} or [{host, port, weight, priority}],
 * "type", "hash_on", "key", "retries", "scheme"). Node indexes follow the
 * order of "nodes" and never change for the life of the balancer; a new
 * configuration revision means a new balancer (use balancer_find to carry
 * health state across by address).
 *
 * Types:
 *   roundrobin  nginx's smooth weighted round robin (5,1,1 gives a a b a c a a)
 *   chash       ketama ring, weight x 160 points per node, on a key the caller
 *               computes from hash_on/key (an MQTT client id, a header, ...)
 *   least_conn  fewest (active + 1) / weight, as APISIX; ties go to the node
 *               picked least recently
 *   ewma        APISIX's decaying EWMA of response time, best of two random
 *               available nodes
 *
 * Priority (APISIX semantics): only nodes of the highest priority are used;
 * a lower priority only when every node above it is down or tried. Nodes of
 * weight 0 are never picked.
 *
 * State is per process (each worker builds its own balancer): nothing here
 * locks, and a balancer must not be shared between threads.
 */
#ifndef AIRGW_BALANCER_H
#define AIRGW_BALANCER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BALANCER_MAX_NODES 10000
#define BALANCER_MAX_WEIGHT 100000

enum balancer_type {
    BALANCER_ROUNDROBIN,
    BALANCER_CHASH,
    BALANCER_LEAST_CONN,
    BALANCER_EWMA,
};

/* What the chash key is computed from; the caller computes it. */
enum balancer_hash_on {
    BALANCER_HASH_VARS,              /* nginx variable named by key (mqtt_client_id, uri, ...) */
    BALANCER_HASH_HEADER,            /* request header named by key */
    BALANCER_HASH_COOKIE,            /* cookie named by key */
    BALANCER_HASH_CONSUMER,          /* the authenticated consumer's name; key unused */
    BALANCER_HASH_VARS_COMBINATIONS, /* key is a template such as "$host$uri" */
};

/* One node as balancer_node shows it; valid for the life of the balancer. */
struct balancer_node {
    const char *host; /* host name or IP; IPv6 without brackets ("::1") */
    const char *addr; /* "host:port", "[::1]:80" for IPv6 */
    uint16_t port;    /* from the node, else 80 (http, grpc) or 443 (https, grpcs) */
    int family;       /* AF_INET, AF_INET6, or AF_UNSPEC for a name to resolve */
    uint32_t weight;  /* 0 .. BALANCER_MAX_WEIGHT; 0 is never picked */
    int32_t priority; /* higher is preferred; 0 by default */
    bool down;        /* set by balancer_set_down */
    uint32_t active;  /* connections between conn_start and conn_end */
};

struct balancer;

/* Milliseconds from any fixed origin, never going back (uv_now fits). */
typedef uint64_t (*balancer_clock_fn)(void *ud);

/*
 * Builds a balancer from an upstream object. Returns NULL with a message in
 * err on bad input (unknown type, bad address or weight, a node without port
 * when the scheme has no default, more than BALANCER_MAX_NODES nodes, no
 * "nodes" at all). An empty "nodes" is valid: every pick returns -1.
 * The balancer keeps no reference to upstream.
 */
struct balancer *balancer_new(const json_t *upstream, char *err, size_t errlen);

/* Frees b and everything it owns; NULL is fine. */
void balancer_free(struct balancer *b);

/*
 * Picks a node and returns its index, or -1 when no node is available.
 * key/keylen is the chash key (ignored by the other types; NULL is the empty
 * key). tried_mask, if not NULL, points to one 64-bit word: bit i set means
 * node i (i < 64) was already tried by this request and must be skipped. For
 * upstreams of more than 64 nodes use balancer_pick_ex. Down nodes are
 * skipped. O(1) for roundrobin (see balancer.c for the O(n) cases), O(log
 * points) for chash, O(log n) for least_conn, O(1) for ewma, plus O(tried).
 */
int balancer_pick(struct balancer *b, const char *key, size_t keylen, const uint64_t *tried_mask);

/* As balancer_pick, also skipping the ntried node indexes in tried (any
 * index, duplicates and out-of-range values are ignored). */
int balancer_pick_ex(struct balancer *b, const char *key, size_t keylen, const uint64_t *tried_mask,
                     const int *tried, size_t ntried);

/* Marks node idx down (never picked) or up again. 0 or -EINVAL. */
int balancer_set_down(struct balancer *b, int idx, bool down);

/*
 * APISIX's behaviour when every node is unhealthy ("use default"): if no
 * node of weight > 0 is up, pick among the down ones as if they were up
 * (tried ones still skipped). Off by default: a pick then returns -1.
 */
void balancer_set_fail_open(struct balancer *b, bool on);

/* least_conn bookkeeping (counted for every type): call conn_start right
 * after a pick that opens a connection and conn_end once it is closed.
 * 0 or -EINVAL. */
int balancer_conn_start(struct balancer *b, int idx);
int balancer_conn_end(struct balancer *b, int idx);

/* ewma: reports the response time (connect + response) of a request sent
 * to node idx. 0, or -EINVAL for a bad index or a negative/NaN time. */
int balancer_report_latency(struct balancer *b, int idx, double ms);

/* ewma: the clock used for decay; default CLOCK_MONOTONIC. */
void balancer_set_clock(struct balancer *b, balancer_clock_fn fn, void *ud);

/* Seeds the random source of ewma's two choices (seeded from the clock and
 * pid by default); for reproducible tests and benchmarks. */
void balancer_seed(struct balancer *b, uint64_t seed);

/* Node idx, or NULL if idx is out of range. */
const struct balancer_node *balancer_node(const struct balancer *b, int idx);

/* Index of the node whose addr is addr ("host:port"), or -1. O(n). */
int balancer_find(const struct balancer *b, const char *addr);

int balancer_count(const struct balancer *b);
enum balancer_type balancer_type(const struct balancer *b);
enum balancer_hash_on balancer_hash_on(const struct balancer *b);
/* The upstream's "key" (NULL if absent): what the chash key is made of. */
const char *balancer_hash_key(const struct balancer *b);
/* The upstream's "retries", or (count - 1, at least 0) when absent, as APISIX. */
int balancer_retries(const struct balancer *b);
/* The upstream's "scheme" ("http" when absent). */
const char *balancer_scheme(const struct balancer *b);

/* The 64-bit hash chash uses; stable across hosts and byte orders, so every
 * data plane sends a key to the same node. */
uint64_t balancer_hash(const void *data, size_t len);

#endif
