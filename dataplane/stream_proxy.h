/*
 * stream_proxy: a worker's TCP stream proxy with the mqtt-proxy plugin
 * (APISIX's stream_routes), on the worker's libuv loop.
 *
 * A connection is matched against the snapshot's stream routes (server
 * address and port, client address, TLS server name). On a route with
 * mqtt-proxy the whole CONNECT packet is read first (bounded in size and
 * time) and checked against protocol_name/protocol_level; its client id is
 * the chash key mqtt_client_id (an empty id falls back to the client
 * address). A refused or malformed CONNECT gets the CONNACK the client's
 * version expects; bytes that are not MQTT at all are closed without a
 * reply. Then a node is picked and connected (retrying the next node on
 * failure; none reachable: CONNACK "server unavailable"), the CONNECT is
 * forwarded unchanged and bytes pass both ways.
 *
 * Memory: an established connection holds its two libuv handles and a few
 * words; reads go through one per-worker buffer and are written on at once
 * (uv_try_write), so only bytes the peer cannot take yet are ever copied,
 * and a side whose peer is behind by more than 64 KiB stops being read.
 * Timeouts (CONNECT wait, upstream connect, idle) are checked by one sweep
 * timer per listener, not a timer per connection.
 *
 * TLS: on a TLS listener (opts.tls) the handshake runs first (within the
 * CONNECT timeout), the route is matched with its server name, and the
 * CONNECT logic runs on the decrypted bytes. An upstream with scheme "tls"
 * gets a TLS client connection after the TCP connect (within the connect
 * timeout; a failed handshake is a failed connect). Either side may be TLS
 * or plain; backpressure counts ciphertext, and a TLS side half-closes with
 * close_notify then FIN (a peer's close_notify is its EOF).
 *
 * Plugins: a stream route's plugin chain (plugin.h) runs its preread phase
 * once the route is known (on an mqtt-proxy route: once the CONNECT passed
 * the version and client id checks), before a node is picked; a
 * plugin_stream_deny becomes the refusal CONNACK for the client's version
 * (or a close on plain TCP). The consumer a plugin sets is the chash key of
 * upstreams with hash_on "consumer" (none: the client address). stream_log
 * runs for every instance of the chain when the connection closes, if
 * preread ran. This file implements plugin.h's plugin_stream_* functions;
 * plugin_stream_mqtt is non-NULL during preread only (its views point into
 * the CONNECT buffer, which is gone once forwarded).
 */
#ifndef AIRGW_DP_STREAM_PROXY_H
#define AIRGW_DP_STREAM_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct snapshot;
struct tls_ctx_store;

struct stream_proxy_opts {
    uint32_t mqtt_connect_timeout_ms; /* whole CONNECT within this (default 10000) */
    uint32_t mqtt_max_connect_bytes;  /* CONNECT size limit (default 65536) */
    uint32_t connect_timeout_ms;      /* upstream connect, unless the upstream sets one (60000) */
    uint32_t idle_timeout_ms;         /* no byte either way (default 600000, nginx's 10m) */
    uint32_t max_connections;         /* per listener; over: closed at once (default 100000) */
    int worker_id;                    /* for logs */
    bool tls;                         /* a TLS listener: clients speak TLS (SNI routing) */
    /* The worker's current certificate store (ud: stream_proxy_start's); for
     * TLS listeners and upstream scheme "tls". NULL: an empty store. */
    struct tls_ctx_store *(*tls_current)(void *ud);
};

void stream_proxy_opts_init(struct stream_proxy_opts *o);

struct stream_proxy_stats {
    uint64_t connections_active;   /* client connections open */
    uint64_t connections_total;    /* accepted */
    uint64_t proxied_total;        /* reached an upstream */
    uint64_t refused_total;        /* closed before reaching an upstream */
    uint64_t buffered_bytes;       /* bytes held in user space now */
};

struct stream_proxy;

/* Serves a listening socket (owned from now on: closed when the proxy is
 * freed or drained). current(ud) is the worker's current snapshot. */
struct stream_proxy *stream_proxy_start(uv_loop_t *loop, int listen_fd,
                                        const struct stream_proxy_opts *o,
                                        struct snapshot *(*current)(void *ud), void *ud,
                                        char *err, size_t errlen);

/* Stops accepting; done(ud) is called once every connection has ended. */
void stream_proxy_drain(struct stream_proxy *p, void (*done)(void *ud), void *ud);

/* Closes everything; memory goes in close callbacks (run the loop after). */
void stream_proxy_free(struct stream_proxy *p);

void stream_proxy_get_stats(const struct stream_proxy *p, struct stream_proxy_stats *out);

#endif
