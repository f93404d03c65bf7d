/*
 * metrics_server: the master's tiny HTTP endpoint for Prometheus scrapes:
 * GET /apisix/prometheus/metrics -> 200 text/plain (version 0.0.4); other
 * paths 404; other methods 405. One request per connection (Connection:
 * close); a request head over 8 KiB or slower than 10 s is dropped.
 */
#ifndef AIRGW_DP_METRICS_SERVER_H
#define AIRGW_DP_METRICS_SERVER_H

#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

struct metrics_server;

/* render returns a malloc'd body (the server frees it) or NULL (503). */
typedef char *(*metrics_render_fn)(void *ud, size_t *len);

struct metrics_server *metrics_server_start(uv_loop_t *loop, const struct sockaddr *addr,
                                            metrics_render_fn render, void *ud, char *err,
                                            size_t errlen);

/* Closes the listener and every connection; memory goes in close callbacks. */
void metrics_server_stop(struct metrics_server *ms);

#endif
