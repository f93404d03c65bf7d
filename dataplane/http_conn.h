/*
 * http_conn: the HTTP proxy engine's internal objects, shared by
 * http_proxy.c (listener, client connections, request life), http_upstream.c
 * (upstream connections, keep-alive pool, responses, tunnels) and http_util.c
 * (header lists, path normalisation, request variables, error pages, access
 * log). Not a public interface: only http_proxy.h is.
 *
 * Ownership:
 *   http_proxy  owns every hp_client (list), every hp_upconn (list) and the
 *               pools; it is freed when its last handle's close callback ran.
 *   hp_client   owns its current hp_req (one at a time) and its unconsumed
 *               input (`in`); memory freed in the uv_close callback.
 *   hp_req      owns its snapshot reference, head buffers and scratch
 *               strings; it borrows the hp_upconn serving it (uc->req points
 *               back). A request is finished only from the client's driver,
 *               never from inside a parser callback.
 *   hp_upconn   two handles (tcp + timer): freed when both close callbacks
 *               ran. While idle it sits in its pool's idle list.
 *   TLS         an HTTPS client connection and an https upstream connection
 *               own a tls_conn (tls.h): ciphertext is read into the shared
 *               buffer, fed to it and decrypted back into that buffer, and
 *               the plaintext then takes the plain path; writes go through
 *               hp_send, which encrypts and hands the ciphertext to hp_write.
 *
 * Re-entrancy rule: parser callbacks only record and return codes (or write
 * through hp_write, which never calls back synchronously); state changes
 * that may close or free happen after llhttp_execute returned. Closing
 * calls uv_close and sets the state to *_CLOSING: memory stays valid until
 * the close callback, so code after a call that may close checks the state.
 */
#ifndef AIRGW_DP_HTTP_CONN_H
#define AIRGW_DP_HTTP_CONN_H

#include <llhttp.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http_proxy.h"
#include "snapshot.h"

struct tls_conn;
struct tls_ctx_store;
struct tls_session;

#define HP_READ_BUF_SIZE (64 * 1024) /* the shared per-worker read buffer */
#define HP_HIGH_WATER (64 * 1024)    /* peer write queue above this: stop reading */
#define HP_LOW_WATER (16 * 1024)     /* peer write queue at or below this: read again */
#define HP_LINGER_MS 5000            /* lingering close: wait this long for the client's FIN */
#define HP_MAX_ATTEMPTS 64           /* upstream attempts per request, retries included */
#define HP_RESP_HEAD_MAX (64 * 1024) /* upstream response head bytes; over: 502 */
#define HP_RESP_HEADERS_MAX 256      /* upstream response headers; over: 502 */
#define HP_POOL_BUCKETS 256          /* keep-alive pool hash buckets */
#define HP_LOG_FIELD_MAX 128         /* upstream_addr / upstream_status log fields */
#define HP_SESSION_POOLS 256         /* pools kept without connections for their TLS session */

/* ---- deadlines of client connections ---- */

/* A client connection waits for at most one thing at a time; each kind has
 * a fixed duration, so each kind's list stays sorted by appending. */
enum hp_dl_kind {
    DL_NONE = 0,
    DL_HEADER,    /* client_header_timeout: whole request head */
    DL_BODY,      /* client_body_timeout: between two body reads */
    DL_KEEPALIVE, /* keepalive_timeout: idle between requests */
    DL_SEND,      /* send_timeout: between two write completions */
    DL_LINGER,    /* lingering close */
    DL_COUNT
};

struct hp_deadline {
    struct hp_deadline *prev, *next; /* in http_proxy.dl[kind] (circular, sentinel) */
    uint64_t at;                     /* uv_now() value at which it expires */
};

union hp_sockaddr {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
};

/* ---- header lists ---- */

struct hp_hdr {
    uint32_t name;      /* offset of the NUL-terminated name in hp_head.buf */
    uint32_t name_len;  /* its length */
    uint32_t value;     /* offset of the NUL-terminated value (trailing OWS trimmed) */
    uint32_t value_len; /* its length */
};

/* Request line part (URL, or response reason) and headers as llhttp hands
 * them over, in one growing buffer bounded by max. */
struct hp_head {
    char *buf;              /* [first NUL][name NUL value NUL]... */
    uint32_t len;           /* bytes used */
    uint32_t cap;           /* bytes allocated */
    uint32_t max;           /* bound on len: over is an error */
    struct hp_hdr *h;       /* headers */
    uint32_t n;             /* headers used */
    uint32_t hcap;          /* headers allocated */
    uint32_t maxn;          /* bound on n */
    uint32_t first_len;     /* length of the first string (URL or reason) */
    uint8_t part;           /* HP_PART_*: what the last callback appended */
    uint8_t vpieces;        /* value pieces of the current header so far */
    const char *exec_start; /* buffer of the llhttp_execute running (obs-fold check) */
};

enum { HP_PART_NONE = 0, HP_PART_FIRST, HP_PART_FIRST_DONE, HP_PART_NAME, HP_PART_VALUE };

/* Errors the head accumulators return (as llhttp HPE_USER with this set). */
enum hp_head_err { HP_HEAD_OK = 0, HP_HEAD_TOO_BIG, HP_HEAD_TOO_MANY, HP_HEAD_BAD, HP_HEAD_NOMEM };

/* ---- requests ---- */

enum hp_body_mode {
    BM_NONE = 0, /* no body */
    BM_RAW,      /* bytes pass unchanged (Content-Length, chunked to 1.1, until-close to 1.0) */
    BM_CHUNK,    /* until-close upstream body to an HTTP/1.1 client: wrapped in chunks */
    BM_DECHUNK,  /* chunked upstream body to an HTTP/1.0 client: chunk framing removed */
};

enum hp_req_flag {
    RQ_KEEPALIVE = 1u << 0,     /* the client wants the connection kept */
    RQ_HAS_BODY = 1u << 1,      /* the request has a body (Content-Length > 0 or chunked) */
    RQ_CHUNKED = 1u << 2,       /* ... chunked */
    RQ_EXPECT = 1u << 3,        /* Expect: 100-continue */
    RQ_WS = 1u << 4,            /* forwarding a WebSocket upgrade */
    RQ_HEAD = 1u << 5,          /* HEAD: no response body */
    RQ_BODY_DONE = 1u << 6,     /* the whole request was read from the client */
    RQ_CONTINUE_SENT = 1u << 7, /* "100 Continue" went to the client */
    RQ_BODY_FWD = 1u << 8,      /* request body bytes were consumed (no retry now) */
    RQ_RESP_STARTED = 1u << 9,  /* response bytes went to the client (no retry, no error page) */
    RQ_RESP_DONE = 1u << 10,    /* the response is complete */
    RQ_CLOSE = 1u << 11,        /* close the client connection after this response */
    RQ_UP_BYTES = 1u << 12,     /* the upstream sent something for this attempt */
    RQ_FRESH_RETRY = 1u << 13,  /* the one retry after a dead pooled connection was used */
    RQ_HTTP10 = 1u << 14,       /* HTTP/1.0 client */
    RQ_NODE_STARTED = 1u << 15, /* upstream_conn_start called for node, conn_end pending */
    RQ_REQ_SENT = 1u << 16,     /* the request (head and body) is queued to the upstream */
    RQ_UP_KEEP = 1u << 17,      /* the upstream response allows reusing its connection */
    RQ_HEAD_QUEUED = 1u << 18,  /* the request head is queued on uc (body may follow) */
    RQ_FINISHED = 1u << 19,     /* hooks and log done */
    RQ_PBODY = 1u << 20,        /* a plugin reads the request body (plugin_req_read_body) */
};

struct hp_scratch;
struct hp_client;
struct hp_upconn;
struct plugin_req;

struct hp_req {
    struct hp_client *c;              /* the client connection */
    llhttp_t parser;                  /* request parser (paused at head end and message end) */
    struct hp_head head;              /* URL and headers */
    struct snapshot *snap;            /* our reference, or NULL before routing */
    const struct route_rt *route;     /* matched route, or NULL */
    const char *matched_uri;          /* its uri pattern (owned by the snapshot) */
    const char *matched_host;         /* its host pattern, or NULL */
    struct upstream_rt *up;           /* route->up while proxying */
    struct hp_scratch *scratch;       /* strings made for routing and variables */
    const char *method;               /* "GET" (static) */
    const char *host;                 /* effective host, or NULL */
    const char *path;                 /* normalised path: $uri */
    size_t path_len;                  /* its length */
    const char *target;               /* request-target forwarded (origin-form) */
    const char *args;                 /* query string without '?', or NULL */
    const char *hashkey;              /* chash key, or NULL */
    size_t hashkey_len;               /* its length */
    int h_host;                       /* header index of Host, or -1 */
    uint32_t flags;                   /* RQ_* */
    uint64_t body_in;                 /* decoded request body bytes read */
    uint64_t bytes_in;                /* raw bytes read from the client */
    uint64_t bytes_out;               /* bytes written to the client */
    uint64_t body_out;                /* response body bytes written to the client */
    uint64_t t_start;                 /* uv_hrtime() at the first byte */
    uint64_t t_up_start;              /* uv_hrtime() at the first upstream attempt */
    uint64_t t_up_head;               /* uv_hrtime() at the upstream response head */
    uint64_t t_attempt_ms;            /* uv_now() at the first attempt (retry_timeout) */
    uint64_t tried;                   /* nodes tried (bit i: node index i < 64) */
    int tried_idx[HP_MAX_ATTEMPTS];   /* node indexes tried, any value */
    int attempts;                     /* upstream attempts made */
    int last_fail;                    /* 502 or 504: the last attempt's failure */
    struct upstream_node node;        /* the current attempt's node */
    struct hp_upconn *uc;             /* the connection serving the current attempt, or NULL */
    char *ohead;                      /* response head for the client not written yet: it
                                         goes out with the first body bytes (one writev) */
    size_t ohead_len;                 /* its length */
    char *uhead;                      /* request head for the upstream (kept for a retry) */
    size_t uhead_len;                 /* its length */
    llhttp_t rparser;                 /* response parser */
    struct hp_head rhead;             /* response reason and headers */
    uint8_t mode;                     /* enum hp_body_mode of the response body */
    uint8_t rphase;                   /* RP_HEAD: reading the response head, RP_BODY: its body */
    uint8_t rev;                      /* REV_*: what made the response parser pause */
    uint64_t t_try;                   /* uv_hrtime() at the current attempt's start */
    int status;                       /* status sent to the client (0: none yet) */
    int up_last;                      /* the last upstream status (0: none) */
    char up_addr[HP_LOG_FIELD_MAX];   /* "a:1, b:2" attempted nodes, for the log */
    char up_status[HP_LOG_FIELD_MAX]; /* "502, 200" their statuses, for the log */
    struct plugin_req *pr;            /* plugin state (http_plugin.c), or NULL: no chain
                                         applies to this request (nothing allocated) */
};

enum { RP_HEAD = 0, RP_BODY };
enum { REV_NONE = 0, REV_HEAD, REV_END };

/* ---- client connections ---- */

enum hp_cstate {
    CS_IDLE = 0, /* between requests (no req) */
    CS_HEAD,     /* reading a request head */
    CS_PROXY,    /* a request is being served */
    CS_TUNNEL,   /* WebSocket: raw bytes both ways */
    CS_LINGER,   /* writes shut down, discarding input until EOF or timeout */
    CS_CLOSING,  /* uv_close called */
};

enum hp_cflag {
    CF_READING = 1u << 0,  /* uv_read_start is in effect */
    CF_IN_DRIVE = 1u << 1, /* inside client_drive (re-entrancy guard) */
    CF_AGAIN = 1u << 2,    /* client_drive asked again while running */
    CF_EOF = 1u << 3,      /* tunnel: the client sent FIN */
    CF_SHUT = 1u << 4,     /* uv_shutdown issued */
    CF_SERVED = 1u << 5,   /* at least one request was read (keep-alive timeout applies) */
};

struct hp_client {
    uv_tcp_t tcp;           /* the connection; tcp.data = this */
    struct http_proxy *p;   /* owner */
    struct hp_client *prev; /* in p->clients */
    struct hp_client *next; /* in p->clients */
    struct hp_deadline dl;  /* in p->dl[dl_kind] when dl_kind != DL_NONE */
    uint8_t dl_kind;        /* enum hp_dl_kind */
    uint8_t state;          /* enum hp_cstate */
    uint8_t flags;          /* CF_* */
    struct hp_req *req;     /* the request being served, or NULL */
    char *in;               /* unconsumed input (pipelined bytes), or NULL */
    uint32_t in_off;        /* consumed part of in */
    uint32_t in_len;        /* bytes in in */
    uint32_t wq;            /* bytes held in write requests (backpressure) */
    union hp_sockaddr peer; /* client address */
    struct tls_conn *tls;   /* HTTPS: the TLS engine, else NULL */
};

/* ---- upstream connections ---- */

enum hp_ustate {
    US_RESOLVING = 0, /* waiting for getaddrinfo */
    US_CONNECTING,    /* uv_tcp_connect in progress */
    US_HANDSHAKE,     /* https: TLS handshake in progress (under the connect timeout) */
    US_ACTIVE,        /* serving req */
    US_TUNNEL,        /* WebSocket tunnel for req */
    US_IDLE,          /* in its pool's idle list */
    US_CLOSING,       /* uv_close called on both handles */
};

enum hp_uflag {
    UF_READING = 1u << 0, /* uv_read_start is in effect */
    UF_REUSED = 1u << 1,  /* taken from the pool for this request */
    UF_EOF = 1u << 2,     /* tunnel: the upstream sent FIN */
    UF_SHUT = 1u << 3,    /* uv_shutdown issued */
    UF_PAUSED = 1u << 4,  /* reading stopped for the client's backpressure */
};

struct hp_pool;
struct hp_resolve;

struct hp_upconn {
    uv_tcp_t tcp;            /* tcp.data = this */
    uv_timer_t timer;        /* connect / send / read / idle timeout; timer.data = this */
    struct http_proxy *p;    /* owner */
    struct hp_pool *pool;    /* its "host:port" pool (reference held) */
    struct hp_upconn *prev;  /* in p->upconns */
    struct hp_upconn *next;  /* in p->upconns */
    struct hp_upconn *iprev; /* in pool->idle when US_IDLE */
    struct hp_upconn *inext; /* in pool->idle when US_IDLE */
    struct hp_req *req;      /* request served, or NULL */
    struct hp_resolve *res;  /* getaddrinfo in flight, or NULL */
    uv_connect_t creq;       /* connect request */
    uint32_t nreq;           /* requests sent on this connection */
    uint32_t wq;             /* bytes held in write requests (backpressure) */
    uint8_t state;           /* enum hp_ustate */
    uint8_t flags;           /* UF_* */
    uint8_t nclosed;         /* close callbacks run (2: free) */
    uint8_t timer_kind;      /* what the timer measures (UT_*) */
    struct tls_conn *tls;    /* https: the TLS engine, else NULL */
};

enum { UT_NONE = 0, UT_CONNECT, UT_SEND, UT_READ, UT_IDLE };

struct hp_pool {
    struct hp_pool *next;   /* hash chain */
    struct hp_upconn *idle; /* most recently used first */
    struct hp_upconn *tail; /* least recently used */
    uint32_t nidle;         /* connections in idle */
    uint32_t refs;          /* connections pointing here */
    struct tls_session *sess; /* https: the newest session, to resume the next one, or NULL */
    bool kept;                /* no connection left: kept for sess (counted in nkept) */
    char key[];               /* "host:port"; https: "https://SNI@host:port#context" */
};

/* ---- the proxy ---- */

struct http_proxy {
    uv_loop_t *loop;                        /* the worker's loop */
    uv_tcp_t listener;                      /* wraps listen_fd */
    uv_timer_t dl_timer;                    /* fires at the earliest client deadline */
    uv_timer_t drain_timer;                 /* calls drain_done from the loop */
    struct http_proxy_opts o;               /* options, defaults filled */
    struct snapshot *(*current)(void *ud);  /* the worker's snapshot */
    void *current_ud;                       /* for current */
    struct hp_client *clients;              /* every client connection */
    struct hp_upconn *upconns;              /* every upstream connection */
    struct hp_deadline dl[DL_COUNT];        /* sentinels of the deadline lists */
    uint64_t dl_armed;                      /* when dl_timer fires (0: stopped) */
    struct hp_pool *pools[HP_POOL_BUCKETS]; /* keep-alive pools by "host:port" */
    struct tls_ctx_store *tls_own;          /* upstream TLS contexts without o.tls_current */
    uint32_t nkept;                         /* pools kept only for their session */
    uint64_t tls_warned;                    /* uv_now() of the last handshake failure logged */
    struct http_proxy_stats st;             /* counters */
    uint16_t server_port;                   /* the listener's port */
    bool listening;                         /* listener not closed yet */
    bool draining;                          /* http_proxy_drain called */
    bool freeing;                           /* http_proxy_free called */
    void (*drain_done)(void *ud);           /* drain callback, or NULL once called */
    void *drain_ud;                         /* for drain_done */
    int nhandles;                           /* handles and requests whose callbacks are due */
    uint64_t accept_warned;                 /* uv_now() of the last accept error logged */
    time_t date_sec;                        /* second of the cached dates */
    char date_http[32];                     /* "Sun, 22 Nov 2026 08:00:00 GMT" */
    char date_iso[48];                      /* "2026-11-22T08:00:00+00:00" */
    char date_clf[48];                      /* "22/Nov/2026:08:00:00 +0000" */
    char rbuf[HP_READ_BUF_SIZE]; /* shared read buffer: consumed before read_cb returns */
};

/* ---- plugins (http_plugin.c) ---- */

/* One header edit a plugin made (request or response). */
struct hp_edit {
    struct hp_edit *next; /* in edit order */
    const char *name;     /* header name (request scratch) */
    const char *value;    /* value, or NULL: removed */
    bool add;             /* add (append) rather than set (replace every one of the name) */
    bool dead;            /* replaced by a later set of the same name */
};

/* A plugin instance as one request runs it. */
struct hp_pentry {
    const struct plugin_inst *inst; /* in a chain of the request's snapshot */
    void *data;                     /* the plugin's per-request pointer */
};

enum hp_phase { PH_REWRITE = 0, PH_ACCESS, PH_BEFORE_PROXY, PH_DONE };

enum hp_pflag {
    PF_RUNNING = 1u << 0,   /* the phase runner is on the stack */
    PF_SUSPENDED = 1u << 1, /* a plugin returned PLUGIN_ASYNC; waiting for plugin_resume */
    PF_RESUMED = 1u << 2,   /* plugin_resume came while the runner was on the stack */
    PF_RESPONDED = 1u << 3, /* plugin_respond was called: the answer is resp_* */
    PF_HF_DONE = 1u << 4,   /* header_filter ran */
    PF_UP_HEAD = 1u << 5,   /* inside header_filter of an upstream response (rhead valid) */
    PF_BODY_READY = 1u << 6,/* the body a plugin asked for is complete, cb not called yet */
    PF_BODY_OVER = 1u << 7, /* the declared body is over the plugin's max: 413 */
    PF_BODY_READ = 1u << 8, /* a plugin read the body: it is in body, sent upstream from there */
    PF_BODY_WANT = 1u << 9, /* plugin_req_read_body was called */
};

/* The per-request plugin state; "struct plugin_req" is what plugins see
 * (opaque to them). Allocated only when a chain applies. */
struct plugin_req {
    struct hp_req *r;                   /* the request */
    size_t n;                           /* entries: global rules' instances, then the route's */
    size_t nglobal;                     /* how many of them are global rules' */
    uint8_t phase;                      /* enum hp_phase */
    size_t idx;                         /* next entry of the phase */
    uint32_t flags;                     /* PF_* */
    int status;                         /* status to the client (set before header_filter) */
    int resp_status;                    /* plugin_respond's answer */
    char *resp_ctype;                   /* its Content-Type (malloc), or NULL */
    char *resp_body;                    /* its body (malloc), or NULL */
    size_t resp_len;                    /* its length */
    void (*abort_fn)(void *ud);         /* plugin_set_abort, for the current suspension */
    void *abort_ud;                     /* its argument */
    const struct consumer_rt *consumer; /* plugin_req_set_consumer */
    const char *method;                 /* method sent upstream, or NULL: the client's */
    const char *target;                 /* request-target sent upstream, or NULL: r->target */
    const char *args;                   /* its query (after edits) when target is set */
    const char *host;                   /* Host sent upstream, or NULL */
    struct hp_edit *req_edits;          /* request header edits */
    struct hp_edit **req_tail;          /* where the next one goes */
    struct hp_edit *resp_edits;         /* response header edits */
    struct hp_edit **resp_tail;         /* where the next one goes */
    int64_t content_length;             /* declared request body length (-1 chunked) */
    void (*body_cb)(struct plugin_req *, void *, const char *, size_t); /* read_body */
    void *body_ud;                      /* its argument */
    size_t body_max;                    /* its bound */
    char *body;                         /* the body read so far (malloc) */
    size_t body_len;                    /* bytes in body */
    size_t body_cap;                    /* bytes allocated */
    struct hp_pentry e[];               /* the instances */
};

/* Starts the plugin phases of a request after routing (route may be NULL:
 * global rules only). false: no chain applies, the caller goes on itself
 * (hp_req_prepare, then hp_up_start); true: the runner took the request
 * over and goes on (or answers) itself. */
bool hp_plugin_begin(struct hp_req *r);
/* The response head to the client is about to be built: records status and
 * runs header_filter (once). upstream: r->rhead holds the upstream's head. */
void hp_plugin_header_filter(struct hp_req *r, int status, bool upstream);
/* A response body chunk to the client (decoded). */
void hp_plugin_body_filter(struct hp_req *r, const char *chunk, size_t len);
/* The framework answers locally while a plugin waits: its abort runs and
 * the phases end. */
void hp_plugin_cancel_wait(struct hp_req *r);
/* The request ends: abort when waiting, log phase, free. */
void hp_plugin_end(struct hp_req *r);
/* Request body bytes for a plugin reading it. 0, or 413 / 500 as the
 * status to answer. */
int hp_plugin_body_chunk(struct hp_req *r, const char *at, size_t len);
/* The body a plugin reads is complete: its callback runs. */
void hp_plugin_body_done(struct hp_req *r);
/* True when a plugin's "set" replaced header name (request or response). */
bool hp_plugin_replaced(const struct hp_edit *edits, const char *name);
/* Writes the edits' "Name: value\r\n" lines to out (NULL: only measures).
 * Returns the length. */
size_t hp_plugin_emit(const struct hp_edit *edits, char *out);
/* The complete local answer of a request with plugins: the plugin's own
 * (plugin_respond) when status is its status, else the default page;
 * header_filter ran first and response edits are applied. */
char *hp_plugin_local_response(struct hp_req *r, int status, const char *json_msg, bool keepalive,
                               size_t *len);

/* ---- http_util.c ---- */

void hp_head_init(struct hp_head *h, uint32_t max, uint32_t maxn);
void hp_head_free(struct hp_head *h);
/* Appends callback data; part is HP_PART_FIRST, _NAME or _VALUE. Returns
 * an hp_head_err. Names must be tokens, values free of CTLs. */
int hp_head_add(struct hp_head *h, int part, const char *at, size_t len);
/* Ends the current part (adds its NUL, trims a value). */
int hp_head_end(struct hp_head *h, int part);
static inline const char *hp_hname(const struct hp_head *h, uint32_t i)
{
    return h->buf + h->h[i].name;
}
static inline const char *hp_hvalue(const struct hp_head *h, uint32_t i)
{
    return h->buf + h->h[i].value;
}
/* Case-insensitive name comparison. */
bool hp_hname_is(const struct hp_head *h, uint32_t i, const char *name);
/* Index of the first header named name at or after from, or -1. */
int hp_hfind(const struct hp_head *h, const char *name, uint32_t from);
/* True when the comma-separated value has token tok (case-insensitive). */
bool hp_has_token(const char *value, size_t len, const char *tok);

/* Normalises a path as nginx does for $uri: %XX decoded, "//" merged, "."
 * and ".." resolved. Writes at most len + 1 bytes to out (NUL added).
 * Returns the length, or -1 for a path escaping the root or decoding to NUL. */
long hp_normalize_path(const char *in, size_t len, char *out);

/* Small strings that live as long as the request. */
void *hp_scratch_alloc(struct hp_req *r, size_t n);
char *hp_scratch_strndup(struct hp_req *r, const char *s, size_t n);
void hp_scratch_free(struct hp_req *r);

/* route_query.var for a request. */
const char *hp_req_var(void *ud, const char *name, size_t *len);
/* What on_request_info and the plugins' log phase see of a request (with
 * this status; latency up to now, a uv_hrtime). */
void hp_req_info(struct hp_req *r, int status, uint64_t now, struct http_request_info *out);

const char *hp_status_reason(int status);
/* Formats a complete local response (head and body) into a malloc'd buffer;
 * NULL when out of memory. json_msg: APISIX {"error_msg":json_msg} body,
 * else nginx's HTML page. */
char *hp_local_response(struct http_proxy *p, int status, const char *json_msg, bool keepalive,
                        size_t *len);
/* The default body of a local answer (as hp_local_response makes it) into
 * body (cap bytes); *ctype gets its type. Returns its length. */
size_t hp_default_body(int status, const char *json_msg, char *body, size_t cap,
                       const char **ctype);
/* A complete local response with that body; edits (may be NULL) are the
 * plugins' response header edits. NULL when out of memory. */
char *hp_format_response(struct http_proxy *p, int status, const char *ctype, const char *body,
                         size_t blen, bool keepalive, const struct hp_edit *edits, size_t *len);
void hp_update_dates(struct http_proxy *p);

/* Writes the access log line of a finished request. */
void hp_access_log(struct http_proxy *p, const struct hp_req *r);

/* Queues bufs on s: written at once when possible, the rest copied and
 * written with uv_write (cb gets the uv_write_t whose data is s->data).
 * *held counts the copied bytes until their write callback released them
 * (memory, unlike s->write_queue_size, which drops as soon as the kernel
 * took the bytes): backpressure decisions use it. Never calls back
 * synchronously. 0 or a negative libuv error. */
int hp_write(struct http_proxy *p, uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb,
             uint32_t *held);
/* Releases a write request handed to a write callback. */
void hp_write_done(struct http_proxy *p, uv_write_t *w);
/* hp_write through tls when it is not NULL: the plaintext is encrypted and
 * the ciphertext written (bufs may be reused at once either way). */
int hp_send(struct http_proxy *p, uv_stream_t *s, struct tls_conn *tls, const uv_buf_t *bufs,
            unsigned n, uv_write_cb cb, uint32_t *held);
/* Writes the ciphertext tls produced (handshake messages, alerts). */
int hp_tls_flush(struct http_proxy *p, uv_stream_t *s, struct tls_conn *tls, uv_write_cb cb,
                 uint32_t *held);
/* The certificate store for upstream TLS: o.tls_current's, else the
 * proxy's own (made on first use). NULL when out of memory. */
struct tls_ctx_store *hp_tls_store(struct http_proxy *p);
void hp_buffered_add(struct http_proxy *p, int64_t delta);

/* ---- http_proxy.c (client side), for http_upstream.c ---- */

/* Runs the client's state machine: finishes a complete request, consumes
 * pending input, starts or stops reading, re-arms deadlines. */
void hp_client_drive(struct hp_client *c);
/* Writes to the client; false when the write failed (the client is closing). */
bool hp_client_send(struct hp_client *c, const uv_buf_t *bufs, unsigned n);
/* The upstream attempt ended in failure and nothing went to the client:
 * answers status (502/504) locally. */
void hp_req_answer_error(struct hp_req *r, int status);
/* Closes the client connection at once (aborting its request). */
void hp_client_close(struct hp_client *c);
/* Shuts the client's write side down after queued writes (tunnel). */
void hp_client_shutdown(struct hp_client *c);
/* Appends to a ", "-separated log field. */
void hp_log_field_add(char *field, const char *s);
/* After the rewrite and access phases: answers routing failures (404, no
 * upstream: 502, unsupported scheme) and computes the chash key. true: go
 * on to the upstream; false: answered. */
bool hp_req_prepare(struct hp_req *r);
/* Answers the request locally (no drive: the caller drives). */
void hp_req_answer(struct hp_req *r, int status, const char *json_msg);

/* ---- http_upstream.c ---- */

/* Starts (or continues) the upstream attempts of a routed request. */
void hp_up_start(struct hp_req *r);
/* Sends request body bytes to the upstream; false when it failed (the
 * request was answered or the client closed). */
bool hp_up_send(struct hp_req *r, const char *data, size_t n);
/* The request's body is complete (arms the read timeout). */
void hp_up_request_done(struct hp_req *r);
/* True when the request's upstream can take body bytes now. */
bool hp_up_writable(const struct hp_req *r);
/* Ends the request's use of its upstream connection: back to the pool when
 * clean and reusable, else closed. Calls upstream_conn_end. */
void hp_up_detach(struct hp_req *r, bool reusable);
/* Re-evaluates the upstream's reading after the client's write queue
 * drained (backpressure). */
void hp_up_client_drained(struct hp_req *r);
/* Tunnel: the client sent FIN. */
void hp_up_client_eof(struct hp_req *r);
/* Closes every upstream connection (free). */
void hp_up_close_all(struct http_proxy *p);
/* Closes idle pooled connections (drain). */
void hp_up_close_idle(struct http_proxy *p);
/* Frees the pools left (kept for their sessions) when the proxy ends. */
void hp_up_free_pools(struct http_proxy *p);
/* Handle close bookkeeping shared with http_proxy.c. */
void hp_handle_gone(struct http_proxy *p);

#endif
