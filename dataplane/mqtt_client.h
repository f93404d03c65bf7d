/*
 * mqtt_client: a worker's MQTT 3.1.1 publisher, on the worker's libuv loop.
 *
 * One struct mqtt_client per worker holds connection pools, one per broker
 * node ("host:port") and connection settings (client id prefix, pool size,
 * keepalive, credentials). A pool keeps up to pool_size persistent
 * connections (clean session, client ids "<prefix><pid>-<worker>-<n>", unique
 * per process), connected on first use, kept alive with PINGREQ, and
 * reconnected with a backoff (200 ms doubling to 5 s) while the pool was
 * used in the last 5 minutes.
 *
 * A publish is QoS 0 (done when the packet is written to the socket) or
 * QoS 1 (done when the broker's PUBACK with its packet identifier arrives;
 * never before). Its callback runs exactly once, from the loop, never from
 * inside mqtt_client_publish, with:
 *   0              done (QoS 1: the broker acknowledged it)
 *   -ENOTCONN      never sent: no connection could be made (connect refused,
 *                  unreachable, DNS failure, CONNACK refusal) or the pool is
 *                  in its reconnect backoff. Safe to try another broker.
 *   -ECONNRESET    sent, but the connection was lost before the PUBACK: the
 *                  broker may or may not have it.
 *   -ETIMEDOUT     not done within the publish's timeout.
 *   -ECANCELED     the client is closing (worker stop).
 *   -EMSGSIZE      topic or payload too large for one MQTT packet.
 * mqtt_pub_cancel drops the callback (the publish itself goes on: a packet
 * already sent keeps its identifier until its PUBACK or the connection's
 * end, so identifiers are never reused while the broker may still answer).
 *
 * Ownership: the client owns pools, connections and publishes. Nothing here
 * is thread-safe; everything runs on the loop's thread. mqtt_client_close
 * fails what is pending with -ECANCELED, closes every handle, and frees the
 * client once the last handle's close callback ran, so the loop can end.
 */
#ifndef AIRGW_DP_MQTT_CLIENT_H
#define AIRGW_DP_MQTT_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define MQTT_CLIENT_MAX_INFLIGHT 1024 /* QoS 1 publishes in flight per connection */
#define MQTT_CLIENT_MAX_QUEUED 65536  /* publishes waiting for a connection, per pool */

struct mqtt_client;
struct mqtt_pub;

/* How a pool connects (strings are copied). */
struct mqtt_pool_opts {
    const char *client_id_prefix; /* NULL: "airgw-" */
    int pool_size;                /* connections per node, 1..64 (0: 2) */
    uint16_t keepalive_s;         /* CONNECT keepalive (0: 60) */
    const char *username;         /* NULL: none */
    const char *password;         /* NULL: none (needs a username) */
};

/* One publish (strings and payload are copied). */
struct mqtt_publish {
    const char *host;    /* broker host: an IP literal or a name (resolved) */
    uint16_t port;       /* broker port */
    const char *topic;   /* topic name (no wildcards) */
    const void *payload; /* payload bytes */
    size_t len;          /* payload length */
    int qos;             /* 0 or 1 */
    uint32_t timeout_ms; /* from now until the callback at the latest (0: 5000) */
};

typedef void (*mqtt_pub_cb)(void *ud, int status);

/* A client on loop for worker worker_id (part of the client ids). NULL when
 * out of memory. */
struct mqtt_client *mqtt_client_new(uv_loop_t *loop, int worker_id);

/* Starts a publish; cb(ud, status) runs later from the loop. *out (may be
 * NULL) gets a handle for mqtt_pub_cancel, valid until the callback ran or
 * the publish was cancelled. 0, or -ENOMEM / -EINVAL / -EMSGSIZE /
 * -ECANCELED (client closing): then cb never runs. */
int mqtt_client_publish(struct mqtt_client *c, const struct mqtt_pool_opts *po,
                        const struct mqtt_publish *p, mqtt_pub_cb cb, void *ud,
                        struct mqtt_pub **out);

/* The callback of p will not run. p must not be used afterwards. */
void mqtt_pub_cancel(struct mqtt_pub *p);

/* Fails every pending publish with -ECANCELED (callbacks run now), closes
 * every connection and timer, and frees c when their close callbacks ran.
 * c must not be used afterwards. NULL is fine. */
void mqtt_client_close(struct mqtt_client *c);

/* Counters for tests and logs. */
struct mqtt_client_stats {
    uint64_t connects;      /* CONNACKs accepted */
    uint64_t connect_fails; /* failed attempts (TCP, DNS, CONNACK refusal, timeout) */
    uint64_t published;     /* publishes done (callback status 0) */
    uint64_t failed;        /* publishes failed */
    size_t pools;           /* pools alive */
    size_t ready;           /* connections ready */
};
void mqtt_client_stats(const struct mqtt_client *c, struct mqtt_client_stats *st);

/* ---- the codec (pure; exposed for unit tests and the fuzz target) ---- */

/* Writes MQTT's variable byte integer for n (< 268435456) into out (4
 * bytes room); returns its length. */
size_t mqtt_client_varint(uint8_t *out, uint32_t n);

/* A 3.1.1 CONNECT with clean session, into a malloc'd buffer. */
int mqtt_client_encode_connect(const char *client_id, uint16_t keepalive_s, const char *username,
                               const char *password, uint8_t **out, size_t *len);

/* A PUBLISH (QoS 0: no packet identifier; QoS 1: identifier pid at
 * *pid_off, patchable later) into a malloc'd buffer. -EMSGSIZE when the
 * packet would exceed MQTT's limit, -EINVAL for a bad topic. */
int mqtt_client_encode_publish(const char *topic, const void *payload, size_t len, int qos,
                               uint16_t pid, uint8_t **out, size_t *outlen, size_t *pid_off);

/* Splits one packet off buf. Returns the packet's total length (and sets
 * *type = first byte, *body / *body_len = the variable part), 0 when more
 * bytes are needed, or -EPROTO for a malformed header or a packet longer
 * than max. */
long mqtt_client_parse(const uint8_t *buf, size_t len, size_t max, uint8_t *type,
                       const uint8_t **body, size_t *body_len);

/* A topic name a broker accepts in PUBLISH: 1..65535 bytes with no '+',
 * '#' or NUL (UTF-8 validity is the caller's: JSON strings are). */
int mqtt_client_topic_ok(const char *topic, size_t len);

#endif
