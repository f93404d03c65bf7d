/*
 * stream_proxy: see stream_proxy.h.
 *
 * Connection states:
 *   S_HANDSHAKE     TLS listener: the client's handshake (no route yet)
 *   S_CONNECT_WAIT  reading the client's MQTT CONNECT into c->buf
 *   S_UP_CONNECTING an attempt to a node is under way (c->up; with scheme
 *                   "tls" also its handshake)
 *   S_PROXYING      bytes flow both ways
 *   S_FLUSHING      a last answer (a CONNACK) is being written; then close
 *   S_CLOSING       handles are closing; freed when the last one has closed
 *
 * Plugins (plugin.h's stream phases). A route with a plugin chain runs its
 * preread phase once the route is known and, on an mqtt-proxy route, the
 * CONNECT was parsed and passed the version and client id checks; before an
 * upstream is picked. The connection then gets a struct plugin_stream (the
 * per-instance data, the consumer, the addresses), so a connection on a
 * route without plugins costs one pointer more. A deny is recorded and
 * acted on once the plugin returned (the refusal never closes the
 * connection under a running plugin). stream_log runs for every instance
 * when the connection is closed (conn_close), if preread ran.
 */
#include "stream_proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netdb.h>

#include "balancer.h"
#include "log.h"
#include "mqtt_codec.h"
#include "netaddr.h"
#include "plugin.h"
#include "snapshot.h"
#include "tls.h"

#define HIGH_WATER (64 * 1024) /* stop reading a side whose peer is this far behind */
#define SWEEP_MS 250
#define KEY_MAX 512

enum sstate { S_CONNECT_WAIT, S_UP_CONNECTING, S_PROXYING, S_FLUSHING, S_CLOSING, S_HANDSHAKE };

struct sconn;

/* A TCP address without sockaddr_storage's 128 bytes. */
union tcp_addr {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* What stream plugins see of a connection (plugin.h); made when the
 * preread phase starts, freed after stream_log. */
struct plugin_stream {
    struct sconn *c;                    /* the connection */
    const struct plugin_chain *chain;   /* the route's (lives as long as c->snap) */
    const struct consumer_rt *consumer; /* set by an auth plugin (borrowed from c->snap) */
    const struct mqtt_connect *mc;      /* during preread on an mqtt-proxy route, else NULL */
    union tcp_addr remote;              /* client address */
    union tcp_addr server;              /* the address the client reached */
    char *subject, *cn;                 /* the client certificate's, once asked; NULL: none */
    int deny;                           /* enum mqtt_refusal from plugin_stream_deny, or -1 */
    unsigned subject_done : 1, cn_done : 1;
    void *data[];                       /* one per chain instance */
};

/* One upstream attempt; kept as the upstream side once connected. */
struct upconn {
    uv_tcp_t tcp;          /* tcp.data = upconn */
    uv_connect_t creq;     /* connect request */
    struct sconn *c;       /* owner, NULL once it let go */
    struct tls_conn *tls;  /* scheme "tls": the client side of TLS, else NULL */
};

/* A host name being resolved for one attempt. */
struct dnsreq {
    uv_getaddrinfo_t req;  /* req.data = dnsreq */
    struct sconn *c;       /* owner, NULL once it let go (closed or timed out) */
    uint16_t port;         /* node port */
};

struct sconn {
    uv_tcp_t client;                    /* client.data = sconn */
    struct dnsreq *dns;                 /* resolution under way, or NULL */
    struct tls_conn *tls;               /* TLS listener: the server side, else NULL */
    struct stream_proxy *p;             /* owner */
    struct sconn *prev, *next;          /* p->conns */
    struct snapshot *snap;              /* revision this connection was routed with */
    const struct stream_route_rt *route;
    struct upconn *up;                  /* upstream side, or NULL */
    struct plugin_stream *ps;           /* plugin view once preread ran, else NULL */
    int node;                           /* node index, -1 before a pick */
    uint64_t tried;                     /* nodes tried (bits 0..63) */
    int attempts;                       /* connect attempts made */
    uint64_t deadline;                  /* loop ms: CONNECT wait or connect attempt end */
    uint64_t last_active;               /* loop ms of the last byte either way */
    char *buf;                          /* CONNECT / early bytes, until forwarded */
    uint32_t buf_len, buf_cap;
    uint8_t state;                      /* enum sstate */
    uint8_t level;                      /* MQTT protocol level, 0 when not MQTT */
    uint8_t handles;                    /* open libuv handles owned (client, up) */
    unsigned client_eof : 1, up_eof : 1, client_paused : 1, up_paused : 1, counted : 1;
};

struct stream_proxy {
    uv_loop_t *loop;
    uv_tcp_t listener;                  /* listener.data = proxy */
    uv_timer_t sweep;                   /* timeouts; sweep.data = proxy */
    struct stream_proxy_opts o;
    struct snapshot *(*current)(void *ud);
    void *current_ud;
    struct sconn *conns;
    struct stream_proxy_stats st;
    void (*drain_done)(void *ud);
    void *drain_ud;
    int draining, freeing, open;        /* open: listener + sweep not yet closed */
    uint64_t tls_warned;                /* loop ms of the last TLS failure logged */
    struct tls_ctx_store *tls_own;      /* an empty store when the worker gives none */
    char rbuf[64 * 1024];               /* shared read buffer */
};

/* A write of bytes the peer could not take at once. */
struct wblock {
    uv_write_t req;
    struct sconn *c;
    size_t len;
    char data[];
};

static void conn_close(struct sconn *c);
static void try_next_node(struct sconn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void drop_buf(struct sconn *c);
static void start_proxying(struct sconn *c);

void stream_proxy_opts_init(struct stream_proxy_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->mqtt_connect_timeout_ms = 10000;
    o->mqtt_max_connect_bytes = 65536;
    o->connect_timeout_ms = 60000;
    o->idle_timeout_ms = 600000;
    o->max_connections = 100000;
}

static void maybe_drained(struct stream_proxy *p)
{
    if (p->draining && !p->freeing && !p->conns && p->drain_done) {
        void (*done)(void *) = p->drain_done;
        p->drain_done = NULL;
        done(p->drain_ud);
    }
}

static void maybe_free_proxy(struct stream_proxy *p)
{
    if (p->freeing && p->open == 0 && !p->conns) {
        tls_ctx_store_unref(p->tls_own);
        free(p);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    struct sconn *c = h->data;
    if (h != (uv_handle_t *)&c->client) {
        struct upconn *u = (struct upconn *)h;
        tls_conn_free(u->tls);
        free(u);
    }
    if (--c->handles > 0)
        return;
    struct stream_proxy *p = c->p;
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->node >= 0 && c->route && c->route->up && c->counted)
        upstream_conn_end(c->route->up, c->node);
    if (c->snap)
        snapshot_unref(c->snap);
    free(c->buf);
    tls_conn_free(c->tls);
    p->st.connections_active--;
    free(c);
    maybe_drained(p);
    maybe_free_proxy(p);
}

static void close_up(struct sconn *c)
{
    if (!c->up)
        return;
    struct upconn *u = c->up;
    c->up = NULL;
    u->tcp.data = c;
    if (!uv_is_closing((uv_handle_t *)&u->tcp))
        uv_close((uv_handle_t *)&u->tcp, on_handle_closed);
}

static void drop_dns(struct sconn *c)
{
    if (!c->dns)
        return;
    c->dns->c = NULL;
    uv_cancel((uv_req_t *)&c->dns->req);
    c->dns = NULL;
}

/* The stream_log phase, then the plugin view goes. */
static void run_stream_log(struct sconn *c)
{
    struct plugin_stream *ps = c->ps;
    if (!ps)
        return;
    for (size_t i = 0; i < ps->chain->n; i++) {
        const struct plugin_inst *in = &ps->chain->inst[i];
        if (in->def->stream_log)
            in->def->stream_log(ps, in->state, &ps->data[i]);
    }
    c->ps = NULL;
    free(ps->subject);
    free(ps->cn);
    free(ps);
}

static void conn_close(struct sconn *c)
{
    if (c->state == S_CLOSING)
        return;
    c->state = S_CLOSING;
    run_stream_log(c);
    drop_dns(c);
    close_up(c);
    if (!uv_is_closing((uv_handle_t *)&c->client))
        uv_close((uv_handle_t *)&c->client, on_handle_closed);
}

/* ---- writing with backpressure ---- */

static void resume_reading(struct sconn *c);

static void on_block_written(uv_write_t *req, int status)
{
    struct wblock *b = (struct wblock *)req;
    struct sconn *c = b->c;
    c->p->st.buffered_bytes -= b->len;
    free(b);
    if (status < 0) {
        if (status != UV_ECANCELED)
            conn_close(c);
        return;
    }
    if (c->state == S_FLUSHING)
        return; /* the FIN follows the queued bytes; the sweep bounds the rest */
    resume_reading(c);
}

/* Sends len bytes on s: what the kernel takes now is not copied. Returns 0
 * or a libuv error. */
static int send_bytes(struct sconn *c, uv_stream_t *s, const char *data, size_t len)
{
    size_t off = 0;
    if (uv_stream_get_write_queue_size(s) == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write(s, &b, 1);
        if (n < 0 && n != UV_EAGAIN)
            return n;
        off = n > 0 ? (size_t)n : 0;
    }
    if (off == len)
        return 0;
    struct wblock *b = malloc(sizeof(*b) + (len - off));
    if (!b)
        return UV_ENOMEM;
    b->c = c;
    b->len = len - off;
    memcpy(b->data, data + off, len - off);
    c->p->st.buffered_bytes += b->len;
    uv_buf_t ub = uv_buf_init(b->data, (unsigned)b->len);
    int rc = uv_write(&b->req, s, &ub, 1, on_block_written);
    if (rc < 0) {
        c->p->st.buffered_bytes -= b->len;
        free(b);
    }
    return rc;
}

/* Sends the ciphertext t produced on s (copying only what the kernel does
 * not take at once), so the engine's output buffer is freed at once. */
static int flush_tls(struct sconn *c, uv_stream_t *s, struct tls_conn *t)
{
    const char *d;
    size_t n = tls_conn_out(t, &d);
    if (n == 0)
        return 0;
    int rc = send_bytes(c, s, d, n);
    tls_conn_out_consume(t, n);
    return rc;
}

/* Sends plaintext on one side: as it is, or through its TLS connection. */
static int side_send(struct sconn *c, uv_stream_t *s, struct tls_conn *t, const char *data,
                     size_t len)
{
    if (!t)
        return send_bytes(c, s, data, len);
    int rc = tls_conn_write(t, data, len);
    if (rc < 0)
        return rc == -ENOMEM ? UV_ENOMEM : UV_EPROTO;
    return flush_tls(c, s, t);
}

static struct tls_ctx_store *proxy_tls_store(struct stream_proxy *p)
{
    struct tls_ctx_store *st = p->o.tls_current ? p->o.tls_current(p->current_ud) : NULL;
    if (st)
        return st;
    if (!p->tls_own)
        p->tls_own = tls_ctx_store_build(NULL, NULL, NULL);
    return p->tls_own;
}

/* ---- answers before the upstream ---- */

static void on_flush_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

/* Unread input while flushing is read and dropped: closing a socket with
 * unread bytes sends a reset, which can destroy the CONNACK in flight. */
static void on_discard(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct sconn *c = s->data;
    (void)buf;
    if (nread < 0 && c->state == S_FLUSHING)
        conn_close(c);
}

/* Sends a last answer (a CONNACK), then a FIN (on TLS: the CONNACK
 * encrypted, close_notify, then the FIN), then waits (bounded by the
 * sweep) for the client to close. */
static void answer_and_close(struct sconn *c, const uint8_t *bytes, size_t len)
{
    close_up(c);
    drop_dns(c);
    c->state = S_FLUSHING;
    c->deadline = uv_now(c->p->loop) + 2000;
    drop_buf(c);
    uv_read_stop((uv_stream_t *)&c->client);
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (side_send(c, (uv_stream_t *)&c->client, c->tls, (const char *)bytes, len) < 0 || !req ||
        (c->tls && (tls_conn_shutdown(c->tls) < 0 ||
                    flush_tls(c, (uv_stream_t *)&c->client, c->tls) < 0)) ||
        uv_shutdown(req, (uv_stream_t *)&c->client, on_flush_shutdown) < 0) {
        free(req);
        conn_close(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->client, on_alloc, on_discard);
}

static void refuse(struct sconn *c, enum mqtt_refusal why, const char *what)
{
    uint8_t out[256];
    c->p->st.refused_total++;
    log_debug("stream: route %s: %s", c->route ? c->route->id : "-", what);
    if (!c->level) {
        conn_close(c);
        return;
    }
    /* 5.0 clients also get the reason in words (a Reason String property). */
    size_t n = mqtt_connack_reason(c->level, mqtt_refusal_code(c->level, why), what, out,
                                   sizeof(out));
    if (n == 0) {
        conn_close(c);
        return;
    }
    answer_and_close(c, out, n);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct sconn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->p->rbuf, sizeof(c->p->rbuf));
}

static int buf_append(struct sconn *c, const char *data, size_t len, size_t limit)
{
    if (c->buf_len + len > limit)
        return -EMSGSIZE;
    if (c->buf_len + len > c->buf_cap) {
        size_t cap = c->buf_cap ? c->buf_cap : 512;
        while (cap < c->buf_len + len)
            cap *= 2;
        char *b = realloc(c->buf, cap);
        if (!b)
            return -ENOMEM;
        c->buf = b;
        c->buf_cap = (uint32_t)cap;
    }
    memcpy(c->buf + c->buf_len, data, len);
    c->buf_len += (uint32_t)len;
    c->p->st.buffered_bytes += len;
    return 0;
}

static void drop_buf(struct sconn *c)
{
    c->p->st.buffered_bytes -= c->buf_len;
    free(c->buf);
    c->buf = NULL;
    c->buf_len = c->buf_cap = 0;
}

/* The chash key and the variables it may name. */
struct keyvars {
    struct sconn *c;
    const char *client_id;
    size_t client_id_len;
    char remote[64], server[64], rport[8], sport[8];
};

static const char *stream_var(void *ud, const char *name, size_t *len)
{
    struct keyvars *kv = ud;
    const char *v = NULL;
    if (strcmp(name, "mqtt_client_id") == 0 && kv->client_id && kv->client_id_len) {
        *len = kv->client_id_len;
        return kv->client_id;
    }
    if (strcmp(name, "consumer_name") == 0 && kv->c->ps && kv->c->ps->consumer)
        v = kv->c->ps->consumer->username;
    else if (strcmp(name, "remote_addr") == 0)
        v = kv->remote;
    else if (strcmp(name, "server_addr") == 0)
        v = kv->server;
    else if (strcmp(name, "remote_port") == 0)
        v = kv->rport;
    else if (strcmp(name, "server_port") == 0)
        v = kv->sport;
    if (v && *v) {
        *len = strlen(v);
        return v;
    }
    return NULL;
}

static void fill_vars(struct sconn *c, struct keyvars *kv)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    kv->remote[0] = kv->server[0] = kv->rport[0] = kv->sport[0] = '\0';
    if (uv_tcp_getpeername(&c->client, (struct sockaddr *)&ss, &len) == 0) {
        netaddr_format_ip((struct sockaddr *)&ss, kv->remote, sizeof(kv->remote));
        snprintf(kv->rport, sizeof(kv->rport), "%u",
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
    len = sizeof(ss);
    if (uv_tcp_getsockname(&c->client, (struct sockaddr *)&ss, &len) == 0) {
        netaddr_format_ip((struct sockaddr *)&ss, kv->server, sizeof(kv->server));
        snprintf(kv->sport, sizeof(kv->sport), "%u",
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
}

static const char *node_addr(const struct upstream_rt *up, int idx)
{
    const struct balancer_node *n = balancer_node(up->bal, idx);
    return n ? n->addr : "?";
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

/* Milliseconds since the current attempt started. */
static uint32_t attempt_ms(const struct sconn *c)
{
    return (uint32_t)(uv_now(c->p->loop) - (c->deadline - c->route->up->timeout.connect_ms));
}

/* The upstream TLS handshake failed: a failed connect (next node). */
static void up_tls_failed(struct sconn *c, const char *why)
{
    log_info("stream: route %s: node %s: TLS handshake failed: %s", c->route->id,
             node_addr(c->route->up, c->node), why && *why ? why : "connection closed");
    upstream_report(c->route->up, c->node, false, attempt_ms(c));
    close_up(c);
    try_next_node(c);
}

/* TCP is up to a node of a scheme "tls" upstream: the ClientHello goes out;
 * the handshake runs under the same connect deadline (on_up_read). */
static void start_up_tls(struct sconn *c)
{
    struct upstream_rt *up = c->route->up;
    char err[256] = "out of memory";
    struct tls_ctx_store *st = proxy_tls_store(c->p);
    struct tls_client_ctx *cc =
        st ? tls_ctx_store_client(st, up->conf, c->snap ? c->snap->resources : NULL, err,
                                  sizeof(err))
           : NULL;
    if (!cc) {
        log_warn("stream: route %s: upstream %s: TLS: %s", c->route->id, up->id, err);
        refuse(c, MQTT_REFUSE_UNAVAILABLE, "upstream TLS not usable");
        return;
    }
    /* SNI (and the name verified): upstream_host with pass_host rewrite,
     * else the node's host; none for an IP literal. */
    const struct balancer_node *bn = balancer_node(up->bal, c->node);
    const char *name = up->pass_host == PASS_HOST_REWRITE && up->upstream_host
                           ? up->upstream_host
                           : (bn ? bn->host : NULL);
    if (!(c->up->tls = tls_conn_new_client(cc, name, NULL, NULL))) {
        conn_close(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->up->tcp, on_alloc, on_up_read);
    if (flush_tls(c, (uv_stream_t *)&c->up->tcp, c->up->tls) < 0)
        up_tls_failed(c, "cannot send");
}

static void on_up_connect(uv_connect_t *req, int status)
{
    struct upconn *u = req->data;
    struct sconn *c = u->c;
    if (!c || c->state != S_UP_CONNECTING || c->up != u)
        return;
    uint32_t took = attempt_ms(c);
    if (status < 0) {
        log_info("stream: route %s: node %s: %s", c->route->id,
                 node_addr(c->route->up, c->node), uv_strerror(status));
        upstream_report(c->route->up, c->node, false, took);
        close_up(c);
        try_next_node(c);
        return;
    }
    if (c->route->up->scheme == UP_TLS) {
        start_up_tls(c);
        return;
    }
    upstream_report(c->route->up, c->node, true, took);
    start_proxying(c);
}

static void connect_to(struct sconn *c, const struct sockaddr *sa);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct dnsreq *d = req->data;
    struct sconn *c = d->c;
    if (c)
        c->dns = NULL;
    if (!c || c->state != S_UP_CONNECTING) {
        uv_freeaddrinfo(res);
        free(d);
        return;
    }
    if (status < 0 || !res) {
        log_info("stream: route %s: node %s: cannot resolve: %s", c->route->id,
                 node_addr(c->route->up, c->node), uv_strerror(status));
        upstream_report(c->route->up, c->node, false, 0);
        uv_freeaddrinfo(res);
        free(d);
        try_next_node(c);
        return;
    }
    struct sockaddr_storage sa;
    memcpy(&sa, res->ai_addr, res->ai_addrlen);
    if (sa.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&sa)->sin6_port = htons(d->port);
    else
        ((struct sockaddr_in *)&sa)->sin_port = htons(d->port);
    uv_freeaddrinfo(res);
    free(d);
    connect_to(c, (struct sockaddr *)&sa);
}

static void try_next_node(struct sconn *c)
{
    struct upstream_rt *up = c->route->up;
    int retries = up->retries < 0 ? 64 : up->retries;
    if (c->attempts > retries) {
        refuse(c, MQTT_REFUSE_UNAVAILABLE, "no upstream node reachable");
        return;
    }
    struct keyvars kv = {.c = c};
    struct mqtt_connect mc;
    if (c->level && c->buf &&
        mqtt_parse_connect((const uint8_t *)c->buf, c->buf_len, c->p->o.mqtt_max_connect_bytes,
                           &mc) > 0) {
        kv.client_id = (const char *)mc.client_id.ptr;
        kv.client_id_len = mc.client_id.len;
    }
    fill_vars(c, &kv);
    struct route_query q = {.var = stream_var, .var_ud = &kv};
    char key[KEY_MAX];
    size_t klen = snapshot_hash_key(up, &q, key, sizeof(key));
    struct upstream_node n;
    if (upstream_pick(up, key, klen, &c->tried, &n) < 0) {
        refuse(c, MQTT_REFUSE_UNAVAILABLE, "no upstream node available");
        return;
    }
    if (c->node >= 0 && c->counted) {
        upstream_conn_end(up, c->node);
        c->counted = 0;
    }
    c->node = n.index;
    if (n.index < 64)
        c->tried |= 1ull << n.index;
    c->attempts++;
    c->state = S_UP_CONNECTING;
    c->deadline = uv_now(c->p->loop) + up->timeout.connect_ms;
    upstream_conn_start(up, n.index);
    c->counted = 1;
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof(sa));
    if (uv_ip4_addr(n.host, n.port, (struct sockaddr_in *)&sa) == 0 ||
        uv_ip6_addr(n.host, n.port, (struct sockaddr_in6 *)&sa) == 0) {
        connect_to(c, (struct sockaddr *)&sa);
        return;
    }
    /* A host name: resolve it (bounded by the same connect deadline). */
    struct dnsreq *d = calloc(1, sizeof(*d));
    if (!d) {
        conn_close(c);
        return;
    }
    d->c = c;
    d->port = n.port;
    d->req.data = d;
    c->dns = d;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    if (uv_getaddrinfo(c->p->loop, &d->req, on_resolved, n.host, NULL, &hints) < 0) {
        c->dns = NULL;
        free(d);
        try_next_node(c);
    }
}

static void connect_to(struct sconn *c, const struct sockaddr *sa)
{
    struct upconn *u = calloc(1, sizeof(*u));
    if (!u) {
        conn_close(c);
        return;
    }
    u->c = c;
    uv_tcp_init(c->p->loop, &u->tcp);
    u->tcp.data = c;
    u->creq.data = u;
    c->up = u;
    c->handles++;
    int rc = uv_tcp_connect(&u->creq, &u->tcp, sa, on_up_connect);
    if (rc < 0) {
        close_up(c);
        try_next_node(c);
    }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

/* Passes a FIN on to s once the bytes queued on it are out (on a TLS side
 * close_notify first). */
static void half_close(struct sconn *c, uv_stream_t *s, struct tls_conn *t)
{
    if (t && (tls_conn_shutdown(t) < 0 || flush_tls(c, s, t) < 0)) {
        conn_close(c);
        return;
    }
    uv_shutdown_t *req = malloc(sizeof(*req));
    if (!req || uv_shutdown(req, s, on_shutdown) < 0) {
        free(req);
        conn_close(c);
    }
}

static void start_proxying(struct sconn *c)
{
    c->state = S_PROXYING;
    c->p->st.proxied_total++;
    c->last_active = uv_now(c->p->loop);
    uv_tcp_nodelay(&c->up->tcp, 1);
    if (c->buf_len) {
        int rc = side_send(c, (uv_stream_t *)&c->up->tcp, c->up->tls, c->buf, c->buf_len);
        drop_buf(c);
        if (rc < 0) {
            conn_close(c);
            return;
        }
    } else {
        drop_buf(c);
    }
    uv_read_start((uv_stream_t *)&c->up->tcp, on_alloc, on_up_read);
    if (!c->client_eof) {
        uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read);
        return;
    }
    /* The client finished sending before the upstream answered. */
    half_close(c, (uv_stream_t *)&c->up->tcp, c->up->tls);
}

/* The words a 5.0 client gets (Reason String) for a plugin's refusal. */
static const char *deny_reason(int why)
{
    switch (why) {
    case MQTT_REFUSE_BAD_AUTH:
        return "bad user name or password";
    case MQTT_REFUSE_NOT_AUTHORIZED:
        return "not authorized";
    case MQTT_REFUSE_UNAVAILABLE:
        return "server unavailable";
    case MQTT_REFUSE_CLIENT_ID:
        return "client identifier not valid";
    default:
        return "refused by a plugin";
    }
}

/* The preread phase of the route's chain (mc: the parsed CONNECT of an
 * mqtt-proxy route, else NULL). Returns true when the connection goes on to
 * an upstream; false when a plugin refused it (the refusal is then under
 * way: a CONNACK and close, or a close). */
static bool run_preread(struct sconn *c, const struct mqtt_connect *mc)
{
    const struct plugin_chain *ch = c->route->chain;
    if (ch && ch->unavailable) {
        /* A plugin of the route cannot run (plugin.h "Failing closed"). */
        char why[200];
        if (ch->unavailable[0])
            snprintf(why, sizeof(why), "plugin %.128s is not available on this route",
                     ch->unavailable);
        else
            snprintf(why, sizeof(why), "plugins are not available on this route");
        refuse(c, MQTT_REFUSE_UNAVAILABLE, why);
        return false;
    }
    if (!ch || ch->n == 0)
        return true;
    struct plugin_stream *ps = calloc(1, sizeof(*ps) + ch->n * sizeof(void *));
    if (!ps) {
        refuse(c, MQTT_REFUSE_UNAVAILABLE, "out of memory");
        return false;
    }
    ps->c = c;
    ps->chain = ch;
    ps->deny = -1;
    int len = sizeof(ps->remote);
    uv_tcp_getpeername(&c->client, &ps->remote.sa, &len);
    len = sizeof(ps->server);
    uv_tcp_getsockname(&c->client, &ps->server.sa, &len);
    c->ps = ps;
    ps->mc = mc;
    const char *stopper = NULL;
    for (size_t i = 0; i < ch->n && ps->deny < 0; i++) {
        const struct plugin_inst *in = &ch->inst[i];
        if (!in->def->preread)
            continue;
        int rc = in->def->preread(ps, in->state, &ps->data[i]);
        if (rc == PLUGIN_CONTINUE)
            continue;
        stopper = in->def->name;
        if (rc != PLUGIN_STOP) {
            /* Streams have no suspension: a plugin bug, refused safely. */
            log_warn("stream: route %s: plugin %s returned %d from preread (only continue "
                     "or stop); refusing the connection",
                     c->route->id, in->def->name, rc);
            if (ps->deny < 0)
                ps->deny = MQTT_REFUSE_UNAVAILABLE;
        } else if (ps->deny < 0) {
            ps->deny = MQTT_REFUSE_NOT_AUTHORIZED; /* stop without a reason */
        }
        break;
    }
    ps->mc = NULL;
    if (ps->deny < 0)
        return true;
    log_debug("stream: route %s: refused by plugin %s", c->route->id, stopper ? stopper : "?");
    refuse(c, (enum mqtt_refusal)ps->deny, deny_reason(ps->deny));
    return false;
}

/* A whole CONNECT is in c->buf: check it against the route, then connect. */
static void on_connect_packet(struct sconn *c, const struct mqtt_connect *mc)
{
    const struct stream_route_rt *r = c->route;
    c->level = mc->level;
    if (r->mqtt_name && (mc->protocol_name.len != strlen(r->mqtt_name) ||
                         memcmp(mc->protocol_name.ptr, r->mqtt_name, mc->protocol_name.len))) {
        refuse(c, MQTT_REFUSE_VERSION, "protocol name not accepted by the route");
        return;
    }
    if (r->mqtt_level >= 0 && mc->level != r->mqtt_level) {
        refuse(c, MQTT_REFUSE_VERSION, "protocol level not accepted by the route");
        return;
    }
    if (!mqtt_client_id_acceptable(mc)) {
        refuse(c, MQTT_REFUSE_CLIENT_ID, "client identifier not valid for this version");
        return;
    }
    if (!run_preread(c, mc))
        return;
    if (!r->up) {
        refuse(c, MQTT_REFUSE_UNAVAILABLE, "route has no upstream");
        return;
    }
    try_next_node(c);
}

/* Bytes before the upstream is connected: the MQTT CONNECT (parsed as it
 * grows), or a plain TCP client's first bytes (kept until the connect). */
static void early_bytes(struct sconn *c, const char *data, size_t len)
{
    struct stream_proxy *p = c->p;
    if (!c->route->mqtt) {
        if (buf_append(c, data, len, (size_t)HIGH_WATER + sizeof(p->rbuf)) < 0) {
            conn_close(c);
            return;
        }
        if (c->buf_len >= HIGH_WATER)
            uv_read_stop((uv_stream_t *)&c->client); /* resumed by start_proxying */
        return;
    }
    if (c->state != S_CONNECT_WAIT) {
        /* Pipelined after the CONNECT while connecting: keep it, bounded. */
        if (buf_append(c, data, len, p->o.mqtt_max_connect_bytes + (size_t)HIGH_WATER) < 0)
            conn_close(c);
        return;
    }
    if (buf_append(c, data, len, p->o.mqtt_max_connect_bytes + 4096u) < 0) {
        uint8_t lvl = 0;
        if (mqtt_peek_level((const uint8_t *)c->buf, c->buf_len, &lvl) == 1)
            c->level = lvl;
        refuse(c, MQTT_REFUSE_TOO_LARGE, "CONNECT too large");
        return;
    }
    struct mqtt_connect mc;
    int n = mqtt_parse_connect((const uint8_t *)c->buf, c->buf_len, p->o.mqtt_max_connect_bytes,
                               &mc);
    if (n == 0)
        return;
    if (n > 0) {
        on_connect_packet(c, &mc);
        return;
    }
    uint8_t lvl = 0;
    if (mqtt_peek_level((const uint8_t *)c->buf, c->buf_len, &lvl) == 1)
        c->level = lvl;
    switch (n) {
    case MQTT_ERR_NOT_MQTT:
        c->level = 0; /* not MQTT at all: no reply */
        refuse(c, MQTT_REFUSE_MALFORMED, "not MQTT");
        break;
    case MQTT_ERR_PROTOCOL_NAME:
    case MQTT_ERR_PROTOCOL_LEVEL:
        refuse(c, MQTT_REFUSE_VERSION, "unsupported protocol");
        break;
    case MQTT_ERR_TOO_LARGE:
        refuse(c, MQTT_REFUSE_TOO_LARGE, "CONNECT too large");
        break;
    default:
        refuse(c, MQTT_REFUSE_MALFORMED, "malformed CONNECT");
    }
}

static void route_conn(struct sconn *c, const char *sni);

static void tls_log_failure(struct sconn *c, struct tls_conn *t, const char *what)
{
    /* Scanners and broken clients come in bursts: one line per second. */
    struct stream_proxy *p = c->p;
    uint64_t now = uv_now(p->loop);
    if (p->tls_warned && now - p->tls_warned < 1000)
        return;
    p->tls_warned = now;
    char ip[64] = "?";
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->client, (struct sockaddr *)&ss, &len) == 0)
        netaddr_format_ip((struct sockaddr *)&ss, ip, sizeof(ip));
    const char *sni = tls_conn_sni(t);
    log_info("worker %d: stream TLS %s with %s (server name %s): %s", p->o.worker_id, what, ip,
             sni ? sni : "none", tls_conn_error(t));
}

/* The client's EOF (a FIN, or close_notify on TLS). */
static void client_eof(struct sconn *c)
{
    c->client_eof = 1;
    uv_read_stop((uv_stream_t *)&c->client);
    if (c->state == S_HANDSHAKE || (c->state == S_CONNECT_WAIT && c->route->mqtt)) {
        conn_close(c); /* gone before a whole CONNECT */
        return;
    }
    if (c->state != S_PROXYING)
        return; /* start_proxying passes the FIN on */
    /* Half-close: pass the FIN on once the queued bytes are out. */
    if (c->up_eof) {
        conn_close(c);
        return;
    }
    half_close(c, (uv_stream_t *)&c->up->tcp, c->up->tls);
}

/* The upstream's EOF while proxying. */
static void up_eof(struct sconn *c)
{
    c->up_eof = 1;
    uv_read_stop((uv_stream_t *)&c->up->tcp);
    if (c->client_eof) {
        conn_close(c);
        return;
    }
    half_close(c, (uv_stream_t *)&c->client, c->tls);
}

/* Plaintext from the client. */
static void client_plain(struct sconn *c, const char *data, size_t len)
{
    if (c->state != S_PROXYING) {
        early_bytes(c, data, len);
        return;
    }
    uv_stream_t *peer = (uv_stream_t *)&c->up->tcp;
    if (side_send(c, peer, c->up->tls, data, len) < 0) {
        conn_close(c);
        return;
    }
    if (uv_stream_get_write_queue_size(peer) > HIGH_WATER) {
        uv_read_stop((uv_stream_t *)&c->client);
        c->client_paused = 1;
    }
}

/* Plaintext from the upstream. */
static void up_plain(struct sconn *c, const char *data, size_t len)
{
    uv_stream_t *peer = (uv_stream_t *)&c->client;
    if (side_send(c, peer, c->tls, data, len) < 0) {
        conn_close(c);
        return;
    }
    if (uv_stream_get_write_queue_size(peer) > HIGH_WATER) {
        uv_read_stop((uv_stream_t *)&c->up->tcp);
        c->up_paused = 1;
    }
}

/* The client's handshake advanced: once done, route with its server name.
 * Returns true when plaintext may follow. */
static bool client_handshake(struct sconn *c)
{
    struct stream_proxy *p = c->p;
    int rc = tls_conn_handshake(c->tls);
    if (flush_tls(c, (uv_stream_t *)&c->client, c->tls) < 0) {
        conn_close(c);
        return false;
    }
    if (rc == -EAGAIN)
        return false;
    if (rc < 0) {
        tls_log_failure(c, c->tls, "handshake failed");
        p->st.refused_total++;
        conn_close(c);
        return false;
    }
    char dn[512];
    if (tls_conn_peer_subject(c->tls, dn, sizeof(dn)) >= 0)
        log_debug("stream: TLS client certificate %s (server name %s)", dn,
                  tls_conn_sni(c->tls) ? tls_conn_sni(c->tls) : "none");
    route_conn(c, tls_conn_sni(c->tls));
    return c->state == S_CONNECT_WAIT || c->state == S_UP_CONNECTING || c->state == S_PROXYING;
}

/* Ciphertext read on a TLS side: fed to its engine (copied out of the
 * shared read buffer), then the plaintext is decrypted into the shared
 * buffer and handled as a plain read; the engine's buffers are drained
 * (and so freed) before returning. */
static void tls_input(struct sconn *c, bool client, const char *data, size_t n)
{
    struct stream_proxy *p = c->p;
    struct upconn *u = c->up;
    struct tls_conn *t = client ? c->tls : u->tls;
    uv_stream_t *s = client ? (uv_stream_t *)&c->client : (uv_stream_t *)&u->tcp;
    if (tls_conn_feed(t, data, n) < 0) {
        if (!client && c->state == S_UP_CONNECTING)
            up_tls_failed(c, "too much input");
        else
            conn_close(c);
        return;
    }
    if (client && c->state == S_HANDSHAKE && !client_handshake(c))
        return;
    if (!client && c->state == S_UP_CONNECTING) {
        int rc = tls_conn_handshake(t);
        if (flush_tls(c, s, t) < 0) {
            up_tls_failed(c, "cannot send");
            return;
        }
        if (rc == -EAGAIN)
            return;
        if (rc < 0) {
            up_tls_failed(c, tls_conn_error(t));
            return;
        }
        upstream_report(c->route->up, c->node, true, attempt_ms(c));
        start_proxying(c);
        if (c->state != S_PROXYING)
            return;
    }
    for (;;) {
        size_t got = 0;
        long k = 0;
        while (got < sizeof(p->rbuf) &&
               (k = tls_conn_read(t, p->rbuf + got, sizeof(p->rbuf) - got)) > 0)
            got += (size_t)k;
        if (got) {
            if (client)
                client_plain(c, p->rbuf, got);
            else
                up_plain(c, p->rbuf, got);
            if (c->state == S_CLOSING || c->state == S_FLUSHING || (!client && c->up != u))
                return;
            if (k > 0)
                continue; /* the buffer was full */
        }
        if (flush_tls(c, s, t) < 0) { /* tickets, key updates, alerts */
            conn_close(c);
            return;
        }
        if (k == -EAGAIN)
            return;
        if (k == 0) { /* close_notify: the side's EOF */
            if (client)
                client_eof(c);
            else if (c->state == S_PROXYING)
                up_eof(c);
            return;
        }
        if (client)
            tls_log_failure(c, t, "error");
        else
            log_info("stream: route %s: node %s: TLS error: %s", c->route->id,
                     node_addr(c->route->up, c->node), tls_conn_error(t));
        conn_close(c);
        return;
    }
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct sconn *c = s->data;
    if (c->state == S_CLOSING || c->state == S_FLUSHING)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            conn_close(c);
            return;
        }
        /* On TLS, a FIN without close_notify (a truncation) is taken as
         * the EOF too: MQTT frames its own packets. */
        client_eof(c);
        return;
    }
    if (nread == 0)
        return;
    c->last_active = uv_now(c->p->loop);
    if (c->tls) {
        tls_input(c, true, buf->base, (size_t)nread);
        return;
    }
    client_plain(c, buf->base, (size_t)nread);
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct sconn *c = s->data;
    if (!c->up || s != (uv_stream_t *)&c->up->tcp)
        return;
    bool handshaking = c->state == S_UP_CONNECTING && c->up->tls;
    if (c->state != S_PROXYING && !handshaking)
        return;
    if (nread < 0) {
        if (handshaking) {
            up_tls_failed(c, nread == UV_EOF ? NULL : uv_strerror((int)nread));
            return;
        }
        if (nread != UV_EOF) {
            conn_close(c);
            return;
        }
        up_eof(c);
        return;
    }
    if (nread == 0)
        return;
    c->last_active = uv_now(c->p->loop);
    if (c->up->tls) {
        tls_input(c, false, buf->base, (size_t)nread);
        return;
    }
    up_plain(c, buf->base, (size_t)nread);
}

static void resume_reading(struct sconn *c)
{
    if (c->state != S_PROXYING || !c->up)
        return;
    if (c->client_paused && !c->client_eof &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->up->tcp) <= HIGH_WATER / 2) {
        c->client_paused = 0;
        uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read);
    }
    if (c->up_paused && !c->up_eof &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->client) <= HIGH_WATER / 2) {
        c->up_paused = 0;
        uv_read_start((uv_stream_t *)&c->up->tcp, on_alloc, on_up_read);
    }
}

/* ---- accepting and timeouts ---- */

static void on_connection(uv_stream_t *server, int status)
{
    struct stream_proxy *p = server->data;
    if (status < 0 || p->draining)
        return;
    struct sconn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->p = p;
    c->node = -1;
    uv_tcp_init(p->loop, &c->client);
    c->client.data = c;
    c->handles = 1;
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->st.connections_active++;
    p->st.connections_total++;
    if (uv_accept(server, (uv_stream_t *)&c->client) < 0 ||
        p->st.connections_active > p->o.max_connections) {
        conn_close(c);
        return;
    }
    if (!p->o.tls) {
        route_conn(c, NULL);
        return;
    }
    /* TLS: the handshake first (its server name routes), all within the
     * CONNECT timeout. No ALPN, or "mqtt" when the client offers it. */
    struct tls_ctx_store *st = proxy_tls_store(p);
    if (!st || !(c->tls = tls_conn_new_server(st, "\x04mqtt"))) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->client, 1);
    c->state = S_HANDSHAKE;
    c->last_active = uv_now(p->loop);
    c->deadline = c->last_active + p->o.mqtt_connect_timeout_ms;
    uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read);
}

/* Matches the accepted (and, on TLS, handshaken) connection to a stream
 * route and starts on it: wait for the CONNECT, or connect at once. */
static void route_conn(struct sconn *c, const char *sni)
{
    struct stream_proxy *p = c->p;
    struct snapshot *snap = p->current(p->current_ud);
    struct sockaddr_storage local, remote;
    int l1 = sizeof(local), l2 = sizeof(remote);
    if (!snap || uv_tcp_getsockname(&c->client, (struct sockaddr *)&local, &l1) < 0 ||
        uv_tcp_getpeername(&c->client, (struct sockaddr *)&remote, &l2) < 0) {
        conn_close(c);
        return;
    }
    c->route = snapshot_stream_match(snap, (struct sockaddr *)&local, (struct sockaddr *)&remote,
                                     sni);
    if (!c->route) {
        if (c->tls)
            log_debug("stream: no stream route for server name %s; closing",
                      sni ? sni : "(none)");
        p->st.refused_total++;
        conn_close(c);
        return;
    }
    c->snap = snapshot_ref(snap);
    c->last_active = uv_now(p->loop);
    if (!c->tls)
        uv_tcp_nodelay(&c->client, 1);
    if (c->route->mqtt) {
        c->state = S_CONNECT_WAIT;
        /* On TLS the handshake's deadline goes on: one bound for both. */
        if (!c->tls) {
            c->deadline = c->last_active + p->o.mqtt_connect_timeout_ms;
            uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read);
        }
        return;
    }
    if (!run_preread(c, NULL))
        return;
    if (!c->route->up) {
        p->st.refused_total++;
        conn_close(c);
        return;
    }
    /* Plain TCP: connect now; early client bytes wait in c->buf. */
    c->state = S_CONNECT_WAIT;
    if (!c->tls)
        uv_read_start((uv_stream_t *)&c->client, on_alloc, on_client_read);
    try_next_node(c);
}

static void on_sweep(uv_timer_t *t)
{
    struct stream_proxy *p = t->data;
    uint64_t now = uv_now(p->loop);
    for (struct sconn *c = p->conns, *next; c; c = next) {
        next = c->next;
        switch (c->state) {
        case S_HANDSHAKE:
            if (now >= c->deadline) {
                tls_log_failure(c, c->tls, "handshake timed out");
                p->st.refused_total++;
                conn_close(c);
            }
            break;
        case S_CONNECT_WAIT:
            if (c->route && c->route->mqtt && now >= c->deadline) {
                log_debug("stream: no whole CONNECT within %u ms; closing",
                          p->o.mqtt_connect_timeout_ms);
                p->st.refused_total++;
                conn_close(c);
            }
            break;
        case S_UP_CONNECTING:
            if (now >= c->deadline) {
                log_info("stream: route %s: node %s: connect timed out", c->route->id,
                         node_addr(c->route->up, c->node));
                upstream_report(c->route->up, c->node, false, c->route->up->timeout.connect_ms);
                drop_dns(c);
                close_up(c);
                try_next_node(c);
            }
            break;
        case S_PROXYING:
            if (now - c->last_active >= p->o.idle_timeout_ms)
                conn_close(c);
            break;
        case S_FLUSHING:
            if (now >= c->deadline)
                conn_close(c);
            break;
        default:
            break;
        }
    }
}

static void on_proxy_handle_closed(uv_handle_t *h);

struct stream_proxy *stream_proxy_start(uv_loop_t *loop, int listen_fd,
                                        const struct stream_proxy_opts *o,
                                        struct snapshot *(*current)(void *ud), void *ud,
                                        char *err, size_t errlen)
{
    struct stream_proxy *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->loop = loop;
    if (o)
        p->o = *o;
    else
        stream_proxy_opts_init(&p->o);
    p->current = current;
    p->current_ud = ud;
    uv_tcp_init(loop, &p->listener);
    p->listener.data = p;
    int rc = uv_tcp_open(&p->listener, listen_fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&p->listener, 511, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "stream listener: %s", uv_strerror(rc));
        p->freeing = 1;
        p->open = 1; /* freed by the listener's close callback */
        uv_close((uv_handle_t *)&p->listener, on_proxy_handle_closed);
        return NULL;
    }
    uv_timer_init(loop, &p->sweep);
    p->sweep.data = p;
    uv_timer_start(&p->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    p->open = 2;
    return p;
}

static void on_proxy_handle_closed(uv_handle_t *h)
{
    struct stream_proxy *p = h->data;
    p->open--;
    maybe_free_proxy(p);
}

void stream_proxy_drain(struct stream_proxy *p, void (*done)(void *ud), void *ud)
{
    p->draining = 1;
    p->drain_done = done;
    p->drain_ud = ud;
    uv_close((uv_handle_t *)&p->listener, on_proxy_handle_closed);
    /* Connections still waiting for their CONNECT are not sessions yet. */
    for (struct sconn *c = p->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == S_CONNECT_WAIT || c->state == S_HANDSHAKE)
            conn_close(c);
    }
    if (!p->conns) {
        p->drain_done = NULL;
        done(ud);
    }
}

void stream_proxy_free(struct stream_proxy *p)
{
    if (!p)
        return;
    p->freeing = 1;
    p->drain_done = NULL;
    if (!uv_is_closing((uv_handle_t *)&p->listener))
        uv_close((uv_handle_t *)&p->listener, on_proxy_handle_closed);
    uv_close((uv_handle_t *)&p->sweep, on_proxy_handle_closed);
    for (struct sconn *c = p->conns; c; c = c->next)
        conn_close(c);
}

void stream_proxy_get_stats(const struct stream_proxy *p, struct stream_proxy_stats *out)
{
    *out = p->st;
}

/* ---- what a stream plugin sees and does (plugin.h) ---- */

const struct sockaddr *plugin_stream_remote(struct plugin_stream *s)
{
    return s->remote.sa.sa_family ? &s->remote.sa : NULL;
}

const struct sockaddr *plugin_stream_server(struct plugin_stream *s)
{
    return s->server.sa.sa_family ? &s->server.sa : NULL;
}

const char *plugin_stream_route_id(struct plugin_stream *s)
{
    return s->c->route->id;
}

struct snapshot *plugin_stream_snapshot(struct plugin_stream *s)
{
    return s->c->snap;
}

const struct mqtt_connect *plugin_stream_mqtt(struct plugin_stream *s)
{
    return s->mc;
}

const char *plugin_stream_sni(struct plugin_stream *s)
{
    return s->c->tls ? tls_conn_sni(s->c->tls) : NULL;
}

/* A certificate field as a string, asked once per connection: NULL without
 * a verified client certificate, and also when it cannot be read whole (a
 * truncated subject must never match a consumer). */
static char *peer_field(struct sconn *c, int (*get)(const struct tls_conn *, char *, size_t))
{
    char buf[2048];
    int n = c->tls ? get(c->tls, buf, sizeof(buf)) : -ENOENT;
    /* A NUL inside ("dev1\0x") would make it read as a shorter name. */
    if (n <= 0 || strlen(buf) != (size_t)n)
        return NULL;
    return strdup(buf);
}

const char *plugin_stream_peer_subject(struct plugin_stream *s)
{
    if (!s->subject_done) {
        s->subject_done = 1;
        s->subject = peer_field(s->c, tls_conn_peer_subject);
    }
    return s->subject;
}

const char *plugin_stream_peer_cn(struct plugin_stream *s)
{
    if (!s->cn_done) {
        s->cn_done = 1;
        s->cn = peer_field(s->c, tls_conn_peer_cn);
    }
    return s->cn;
}

const struct consumer_rt *plugin_stream_consumer(struct plugin_stream *s)
{
    return s->consumer;
}

void plugin_stream_set_consumer(struct plugin_stream *s, const struct consumer_rt *c)
{
    s->consumer = c;
}

void plugin_stream_deny(struct plugin_stream *s, int why)
{
    if (why < MQTT_REFUSE_VERSION || why > MQTT_REFUSE_PROTOCOL_ERROR)
        why = MQTT_REFUSE_NOT_AUTHORIZED;
    if (s->deny < 0)
        s->deny = why;
}
