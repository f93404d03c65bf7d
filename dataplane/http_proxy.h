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
 * and are never buffered whole: a side whose peer holds more than 64 KiB of
 * queued output stops reading until it drains below 16 KiB, so a
 * connection holds at most 64 KiB + one 64 KiB read of a fast peer's data.
 *
 * Requests on one connection are served in order: the next pipelined request
 * is parsed only once the current response is complete. Error answers
 * follow nginx (HTML pages for 400/405/408/413/431/502/504/505) and APISIX
 * (JSON {"error_msg": ...}).
 *
 * Choices where nginx/APISIX left room:
 *  - no route: 404 {"error_msg":"404 Route Not Found"}; a route without an
 *    upstream: 502 {"error_msg":"missing upstream configuration in Route or
 *    Service"}; upstream scheme other than http and https: 502 page and a
 *    warning "upstream scheme grpc is not supported yet".
 *  - HTTPS (o.https): the listener speaks TLS through tls.h (certificates
 *    by SNI from o.tls_current's store, ALPN http/1.1); the TLS handshake
 *    runs under client_header_timeout; $scheme and X-Forwarded-Proto are
 *    "https". Upstreams with scheme https are reached over TLS: SNI and
 *    the verified name (tls.verify) are the Host sent upstream without its
 *    port (nginx's proxy_ssl_name $upstream_host in APISIX); the handshake
 *    runs under the connect timeout and its failure is retried as a
 *    connect failure; the keep-alive pool is keyed by scheme, SNI, node and
 *    TLS settings, and a pool keeps its newest session for resumption.
 *  - Refused: Content-Length with Transfer-Encoding, several Content-Length,
 *    a coding after chunked (all by llhttp), Transfer-Encoding on HTTP/1.0,
 *    obs-fold lines, space before a header colon, a missing (1.1), empty,
 *    repeated or malformed Host, a path escaping "/": 400 and close.
 *    HTTP/2+ request lines: 505; CONNECT: 405.
 *  - Routing sees the path normalised as nginx's $uri (%XX decoded, "//",
 *    "." and ".." resolved); the upstream gets the request-target unchanged.
 *    An absolute-form target's authority is the host.
 *  - X-Forwarded-For gets the client appended; X-Real-IP, X-Forwarded-Proto,
 *    -Host and -Port are set by the proxy (client values dropped). Headers
 *    named in Connection are not removed (as nginx).
 *  - Expect: 100-continue is answered by the proxy when it starts reading
 *    the body (not forwarded); interim 1xx from the upstream are dropped.
 *  - An until-close upstream body is re-chunked for HTTP/1.1 clients; a
 *    chunked one is de-chunked for HTTP/1.0 clients (then close).
 *  - A local answer to a request whose body was not read drops the body and
 *    keeps the connection, unless the client still waits for 100 Continue.
 *  - 408 only when part of a request arrived; an idle or empty connection
 *    is closed quietly. A client closing while its request is served: 499,
 *    the upstream connection is closed (as nginx).
 *  - Retries (within retries / retry_timeout): connect failures and
 *    timeouts only, and one fresh connection when a pooled one is found
 *    dead before any response byte and before any request body byte left.
 *    A read timeout (504) or an upstream closing early (502) is not retried
 *    (the request may not be idempotent); after a response byte went to the
 *    client, a failure closes the client connection.
 *  - upstream_report: ok = status < 500 with the time to the response head,
 *    at the head; ok = false on connect failure or timeout, on a bad or
 *    missing response head. upstream_conn_start/end bracket each attempt.
 *
 * Everything is freed on close; nothing here is thread-safe (one loop, one
 * thread, as the rest of the worker).
 */
#ifndef AIRGW_DP_HTTP_PROXY_H
#define AIRGW_DP_HTTP_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct snapshot;
struct route_rt;
struct tls_ctx_store;

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

/* What on_request_info reports about one finished request. Pointers are
 * valid only during the call; absent values are NULL / 0. */
struct http_request_info {
    const struct route_rt *route; /* matched route, or NULL */
    int status;                   /* sent to the client; 499: the client went away first */
    uint64_t latency_us;          /* as for on_request_done */
    uint64_t upstream_latency_us; /* as for on_request_done */
    uint64_t bytes_in;            /* read from the client */
    uint64_t bytes_out;           /* written to the client */
    const char *method;           /* "GET"; NULL when the request line was not read */
    const char *host;             /* $host: Host without port, lowercase */
    const char *uri;              /* $uri: the normalised path routing saw */
    const char *node_host;        /* node of the last upstream attempt, as configured */
    uint16_t node_port;           /* its port */
    int upstream_status;          /* the last upstream status, 0 when none answered */
    const char *matched_uri;      /* the route uri pattern that matched, or NULL */
    const char *matched_host;     /* the route host pattern that matched, or NULL */
};

typedef void (*http_proxy_request_info_fn)(void *ud, const struct http_request_info *info);

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
    int worker_id;                                 /* for log lines */
    http_proxy_request_done_fn on_request_done;    /* metrics hook, or NULL */
    http_proxy_request_info_fn on_request_info;    /* the same with labels, or NULL */
    void *hook_ud; /* passed to on_request_done and on_request_info */
    bool https;    /* the listener speaks TLS (needs tls_current) */
    /* The current certificates (borrowed; called with the ud given to
     * http_proxy_start), for the HTTPS listener and upstream TLS; NULL:
     * upstream TLS uses a store of the proxy's own (no ssls). */
    struct tls_ctx_store *(*tls_current)(void *ud);
};

/* Fills o with the defaults above (access_log -1, no hook). */
void http_proxy_opts_init(struct http_proxy_opts *o);

struct http_proxy_stats {
    uint64_t connections_active;   /* client connections open now */
    uint64_t connections_total;    /* client connections accepted */
    uint64_t connections_rejected; /* closed at once: over max_connections */
    uint64_t requests_active;      /* requests in flight */
    uint64_t requests_total;       /* requests finished */
    uint64_t upstream_active;      /* upstream connections serving a request */
    uint64_t upstream_idle;        /* upstream connections idle in the keep-alive pool */
    uint64_t upstream_connects;    /* upstream connections opened */
    uint64_t buffered_bytes;       /* bytes held in user space: write queues + pending input */
    uint64_t buffered_bytes_peak;  /* the highest buffered_bytes seen */
};

struct http_proxy;

/*
 * Starts serving listen_fd (a listening TCP socket) on loop. The proxy takes
 * the descriptor over, success or failure: it is closed when the proxy stops
 * listening (http_proxy_drain or http_proxy_free); the calling process must
 * not close it. (Another process, such as a master keeping the socket for a
 * replacement worker, may hold its own copy: connections queued meanwhile
 * wait for that worker.) o may be NULL for the defaults. current(ud)
 * returns the worker's current snapshot (borrowed); each request takes its
 * own reference. Returns NULL with a message in err on failure (the loop
 * must then still run to release what was set up).
 */
struct http_proxy *http_proxy_start(uv_loop_t *loop, int listen_fd, const struct http_proxy_opts *o,
                                    struct snapshot *(*current)(void *ud), void *ud, char *err,
                                    size_t errlen);

/*
 * Graceful stop: stops accepting and closes idle keep-alive connections,
 * except those whose next request already waits in the socket; requests in
 * flight or waiting finish, and their connections close after the response
 * (Connection: close). A connection accepted but silent gets 5 s for its
 * first request. Then done(ud) is called from the loop (never from inside
 * this call). The caller bounds the wait with its own timer and then calls
 * http_proxy_free.
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
