/*
 * stream_server: the control plane's side of the config stream
 * (proto/PROTOCOL.md). Accepts data planes, answers each HELLO with a
 * snapshot or a resume from the store's history, then pushes every committed
 * change in revision order.
 *
 * Each change is encoded once and the same frame is queued to every data
 * plane (refcounted). A data plane whose unsent backlog passes
 * max_pending_bytes is cut off (it reconnects and resyncs), so a slow reader
 * never makes the control plane buffer without bound. A heartbeat timer pings
 * every interval and drops peers silent for three intervals.
 *
 * Runs on the control plane's libuv loop; not thread-safe.
 */
#ifndef AIRGW_CP_STREAM_SERVER_H
#define AIRGW_CP_STREAM_SERVER_H

#include <jansson.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

#include "store.h"

struct cp_tls_ctx;

struct stream_server;

struct stream_server_opts {
    const struct sockaddr *listen; /* where to listen */
    double heartbeat_interval;     /* seconds */
    size_t max_pending_bytes;      /* backlog bound per data plane */
    struct cp_tls_ctx *tls;        /* TLS with data planes (borrowed, outlives the
                                      server), or NULL for plain TCP */
};

/* Starts listening. On success *out owns the server. Returns 0 or a negative
 * errno (message in err). The bound address is logged. */
int stream_server_start(uv_loop_t *loop, store *st, const struct stream_server_opts *opts,
                        struct stream_server **out, char *err, size_t errlen);

/* Sends one committed change to every live data plane. Matches store_watch_fn
 * so it can be the store's watch directly (ud is the server). */
void stream_server_publish(void *ud, const struct store_change *ch);

/* Sends every live data plane a fresh snapshot at the store's revision (the
 * store lost track of some changes: etcd compaction). Matches
 * store_resync_fn (ud is the server). */
void stream_server_resync(void *ud);

/* The connected data planes as a JSON array (new reference):
 * [{"node_id","address","revision","connected_at","hostname","version"}]. */
json_t *stream_server_list(struct stream_server *srv);

/* Closes every connection and the listener; frees srv once libuv has
 * released the handles (run the loop afterwards). */
void stream_server_stop(struct stream_server *srv);

#endif
