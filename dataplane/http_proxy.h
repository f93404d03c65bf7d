/*
 * http_proxy: a worker's HTTP/1.1 reverse proxy engine (nginx proxy_pass /
 * APISIX semantics), on the worker's libuv loop.
 *
 * One http_proxy serves one listening socket. Each accepted connection is a
 * small struct (its uv_tcp_t, a deadline and a few words); requests are
 * parsed with llhttp, routed with snapshot_match on the snapshot the worker
 * currently holds (each request keeps its own reference to the end), and
 * proxied to a node chosen with upstream_pick, over a per-worker keep-alive
 * pool of upstream connections keyed by "host:port". Bodies stream both ways
 * and are never buffered whole: a side whose peer's write queue is above a
 * high-water mark (64 KiB) stops reading until it drains.
 *
 * Requests on one connection are served in order: the next pipelined request
 * is parsed only once the current response is complete. Error answers
 * follow nginx (HTML pages for 400/408/413/431/502/504) and APISIX (JSON
 * {"error_msg": ...} for 404 and a route without upstream).
 *
 * Everything is freed on close; nothing here is thread-safe (one loop, one
 * thread, as the rest of the worker).
 */
#ifndef AIRGW_DP_HTTP_PROXY_H
#define AIRGW_DP_HTTP_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct snapshot;
struct route_rt;

enum http_access_log_format {
    HTTP_LOG_JSON = 0, /* one JSON object a line (the default) */
    HTTP_LOG_COMBINED, /* nginx's "combined" format */
};

/* Called once per finished request (also for local answers and aborted
 * requests: status 499 when the client went away first, as nginx logs it).
 * route is NULL when no route matched; it is valid only during the call.
 * latency_us runs from the first byte of the request to the end of the
 * response; upstream_latency_us from the first connect attempt to the
 * upstream response header (0 when no upstream answered). bytes_in/out count
 * bytes read from / written to the client for this request. */
typedef void (*http_proxy_request_done_fn)(void *ud, const struct route_rt *route, int status,
                                           uint64_t latency_us, uint64_t upstream_latency_us,
                                           uint64_t bytes_in, uint64_t bytes_out);

struct http_proxy_opts {
    uint32_t max_header_bytes;         /* request line + headers; over: 431 (default 32768) */
    uint32_t max_headers;              /* over: 431 (default 100) */
    uint64_t max_body_bytes;           /* 0 = unlimited (default); over: 413 */
    uint32_t client_header_timeout_ms; /* whole head; over: 408 (default 60000) */
    uint32_t client_body_timeout_ms;   /* between two body reads; over: 408 (default 60000) */
    uint32_t keepalive_timeout_ms;     /* idle keep-alive connection (default 60000) */
    uint32_t send_timeout_ms;          /* between two successful writes to a client (60000) */
    uint32_t max_connections;          /* client connections; over: closed at once (10240) */
    int access_log;                    /* fd for the access log, -1 = off (default) */
    enum http_access_log_format access_log_format; /* json (default) or combined */
    int worker_id;                     /* for log lines */
    http_proxy_request_done_fn on_request_done; /* metrics hook, or NULL */
    void *hook_ud;                              /* passed to on_request_done */
};

/* Fills o with the defaults above (access_log -1, no hook). */
void http_proxy_opts_init(struct http_proxy_opts *o);

struct http_proxy_stats {
    uint64_t connections_active;    /* client connections open now */
    uint64_t connections_total;     /* client connections accepted */
    uint64_t connections_rejected;  /* closed at once: over max_connections */
    uint64_t requests_active;       /* requests in flight */
    uint64_t requests_total;        /* requests finished */
    uint64_t upstream_active;       /* upstream connections serving a request */
    uint64_t upstream_idle;         /* upstream connections idle in the keep-alive pool */
    uint64_t upstream_connects;     /* upstream connections opened */
    uint64_t buffered_bytes;        /* bytes held in user space: write queues + pending input */
    uint64_t buffered_bytes_peak;   /* the highest buffered_bytes seen */
};

struct http_proxy;

/*
 * Starts serving listen_fd (a listening TCP socket, not owned: it is not
 * closed by http_proxy_free) on loop. o may be NULL for the defaults.
 * current(ud) returns the worker's current snapshot (borrowed); each request
 * takes its own reference. Returns NULL with a message in err on failure.
 */
struct http_proxy *http_proxy_start(uv_loop_t *loop, int listen_fd,
                                    const struct http_proxy_opts *o,
                                    struct snapshot *(*current)(void *ud), void *ud, char *err,
                                    size_t errlen);

/*
 * Graceful stop: stops accepting, closes idle keep-alive connections, lets
 * requests in flight finish (their connections close after the response),
 * then calls done(ud) from the loop (never from inside this call). The caller
 * bounds the wait with its own timer and then calls http_proxy_free.
 */
void http_proxy_drain(struct http_proxy *p, void (*done)(void *ud), void *ud);

/*
 * Closes every connection and handle, aborting requests in flight. The
 * memory is released from the handles' close callbacks: the caller must run
 * the loop (uv_run) until it has no active handles left before closing it.
 * p must not be used after this call; a pending drain callback is not called.
 */
void http_proxy_free(struct http_proxy *p);

/* Copies the current counters into *out. */
void http_proxy_get_stats(const struct http_proxy *p, struct http_proxy_stats *out);

#endif
