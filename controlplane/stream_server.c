/*
 * stream_server: see stream_server.h.
 *
 * Connection states: WAIT_HELLO (accepted; nothing sent yet) -> LIVE (sync
 * sent; live changes flow) -> CLOSING (uv_close issued; freed in its
 * callback). Only LIVE connections receive published changes; a connection
 * still waiting for its HELLO gets them through the snapshot or the history
 * it is sent when the HELLO arrives, because the store's watch runs after
 * commit and everything here runs on one thread.
 */
#include "stream_server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "cfgs_uv.h"
#include "cp_tls.h"
#include "cfgstream.h"
#include "config.h"
#include "log.h"
#include "netaddr.h"

enum dp_state { DP_WAIT_HELLO, DP_LIVE, DP_FLUSHING, DP_CLOSING };

struct dp_conn {
    uv_tcp_t tcp;                /* the connection; tcp.data points back here */
    struct stream_server *srv;   /* owner */
    struct dp_conn *prev, *next; /* srv->conns list */
    struct cfgs_decoder dec;     /* incoming frames */
    enum dp_state state;         /* see file comment */
    char node_id[128];           /* from HELLO */
    char hostname[128];          /* from HELLO, may be empty */
    char version[64];            /* from HELLO, may be empty */
    char addr[64];               /* peer address */
    int64_t acked_rev;           /* last revision the data plane ACKed */
    time_t connected_at;         /* wall clock at accept */
    uint64_t last_rx_ms;         /* loop time of the last byte received */
    uint64_t flush_deadline_ms;  /* DP_FLUSHING: close at this loop time at the latest */
    uv_shutdown_t shutdown_req;  /* DP_FLUSHING: sends FIN after the queued ERROR */
    struct cp_tls_conn *tls;     /* TLS engine when the stream is TLS, else NULL */
};

struct stream_server {
    uv_loop_t *loop;          /* the control plane's loop */
    store *st;                /* read for snapshots and history */
    uv_tcp_t listener;        /* accepting socket */
    uv_timer_t hb;            /* heartbeat timer */
    struct dp_conn *conns;    /* every connection not yet freed */
    uint64_t hb_ms;           /* heartbeat interval */
    size_t max_pending;       /* backlog bound per connection */
    int open_handles;         /* handles not yet closed, to free srv at the end */
    int stopping;             /* stream_server_stop was called */
    struct cp_tls_ctx *tls;   /* TLS (borrowed), or NULL for plain TCP */
    char rbuf[64 * 1024];     /* one read buffer: reads are consumed synchronously */
    char pbuf[16 * 1024];     /* TLS: decrypted plaintext, consumed synchronously */
};

static int64_t now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void maybe_free_server(struct stream_server *srv)
{
    if (srv->stopping && srv->open_handles == 0)
        free(srv);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct dp_conn *c = h->data;
    struct stream_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    cfgs_decoder_free(&c->dec);
    cp_tls_conn_free(c->tls);
    free(c);
    srv->open_handles--;
    maybe_free_server(srv);
}

static void conn_close(struct dp_conn *c)
{
    if (c->state == DP_CLOSING)
        return;
    c->state = DP_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn_close(req->handle->data);
}

/* Lets queued frames (an ERROR) reach the peer, then closes. The heartbeat
 * closes it anyway if the peer does not read them in time. */
static void conn_flush_close(struct dp_conn *c)
{
    if (c->state == DP_CLOSING || c->state == DP_FLUSHING)
        return;
    c->state = DP_FLUSHING;
    c->flush_deadline_ms = uv_now(c->srv->loop) + 2000;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        conn_close(c);
}

static void on_write_error(uv_stream_t *s, int status)
{
    struct dp_conn *c = s->data;
    if (c->state == DP_CLOSING)
        return;
    log_info("config stream: data plane %s (%s): write failed: %s", c->node_id, c->addr,
             uv_strerror(status));
    conn_close(c);
}

/* Queues f on c. check_backlog is off while a snapshot is being queued: a
 * snapshot is bounded by the configuration's size, not by a slow reader. */
static int conn_send(struct dp_conn *c, struct cfgs_frame *f, int check_backlog)
{
    if (c->state == DP_CLOSING || c->state == DP_FLUSHING)
        return -EPIPE;
    size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (check_backlog && queued + f->len > c->srv->max_pending) {
        log_warn("config stream: data plane %s (%s) is too slow: %zu bytes unsent; "
                 "disconnecting it (it will resync)",
                 c->node_id, c->addr, queued);
        /* A reset drops the kernel's buffers too, and the peer sees it at once
         * even though it is not reading. */
        c->state = DP_CLOSING;
        if (uv_tcp_close_reset(&c->tcp, on_conn_closed) < 0)
            uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
        return -ENOBUFS;
    }
    int rc;
    if (c->tls) {
        /* Encrypted per connection: the shared frame cannot be reused. */
        char *out;
        size_t n;
        rc = cp_tls_write(c->tls, f->data, f->len) < 0 ? UV_ENOMEM : 0;
        if (rc == 0 && (n = cp_tls_take_out(c->tls, &out)) > 0)
            rc = cfgs_write_buf((uv_stream_t *)&c->tcp, out, n, on_write_error);
    } else {
        rc = cfgs_frame_write((uv_stream_t *)&c->tcp, f, on_write_error);
    }
    if (rc < 0) {
        conn_close(c);
        return rc;
    }
    return 0;
}

/* Takes ownership of an encoder result and sends it to one connection. */
static int send_encoded(struct dp_conn *c, int enc_rc, char *data, size_t len, int check_backlog)
{
    if (enc_rc < 0) {
        log_error("config stream: encoding failed: %s", strerror(-enc_rc));
        conn_close(c);
        return enc_rc;
    }
    struct cfgs_frame *f = cfgs_frame_new(data, len);
    if (!f) {
        conn_close(c);
        return -ENOMEM;
    }
    int rc = conn_send(c, f, check_backlog);
    cfgs_frame_unref(f);
    return rc;
}

static void send_error(struct dp_conn *c, const char *msg)
{
    char *d;
    size_t n;
    log_warn("config stream: data plane %s (%s): %s", c->node_id[0] ? c->node_id : "?", c->addr,
             msg);
    int rc = cfgs_encode_error(msg, &d, &n);
    if (send_encoded(c, rc, d, n, 0) == 0)
        conn_flush_close(c);
}

struct snap_ctx {
    struct dp_conn *c; /* where to send */
    int64_t count;     /* resources sent */
};

static int snap_item(void *ud, const struct store_item *it)
{
    struct snap_ctx *sc = ud;
    char *d;
    size_t n;
    int rc = cfgs_encode_put_raw(it->mod_rev, it->key, it->value, it->create_rev, it->mod_rev,
                                 &d, &n);
    if (send_encoded(sc->c, rc, d, n, 0) < 0)
        return -EPIPE;
    sc->count++;
    return 0;
}

static int send_snapshot(struct dp_conn *c, int64_t rev)
{
    char *d;
    size_t n;
    int rc = cfgs_encode_rev(CFGS_SNAPSHOT_BEGIN, rev, &d, &n);
    if (send_encoded(c, rc, d, n, 0) < 0)
        return -EPIPE;
    struct snap_ctx sc = {c, 0};
    for (int k = 0; k < GW_KIND__COUNT; k++) {
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "/apisix/%s/", config_kind_collection(k));
        /* At rev exactly: the etcd store may already hold later changes,
         * which follow as live changes. */
        rc = store_list_at(c->srv->st, prefix, rev, snap_item, &sc, NULL);
        if (rc < 0) {
            send_error(c, "control plane store error while taking a snapshot");
            return rc;
        }
    }
    rc = cfgs_encode_snapshot_end(rev, sc.count, &d, &n);
    if (send_encoded(c, rc, d, n, 0) < 0)
        return -EPIPE;
    log_info("config stream: data plane %s (%s): sent snapshot at revision %lld (%lld "
             "resources)",
             c->node_id, c->addr, (long long)rev, (long long)sc.count);
    return 0;
}

/* History is collected first: the answer (RESUME or SNAPSHOT) depends on
 * whether all of it is still there. */
struct hist {
    struct cfgs_frame **frames; /* encoded changes, in order */
    size_t n, cap;         /* used, allocated */
};

static int hist_add(void *ud, const struct store_change *ch)
{
    struct hist *h = ud;
    char *d;
    size_t n;
    int rc = ch->value ? cfgs_encode_put_raw(ch->rev, ch->key, ch->value, ch->create_rev,
                                             ch->rev, &d, &n)
                       : cfgs_encode_delete(ch->rev, ch->key, &d, &n);
    if (rc < 0)
        return rc;
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        struct cfgs_frame **f = realloc(h->frames, cap * sizeof(*f));
        if (!f) {
            free(d);
            return -ENOMEM;
        }
        h->frames = f;
        h->cap = cap;
    }
    struct cfgs_frame *f = cfgs_frame_new(d, n);
    if (!f)
        return -ENOMEM;
    h->frames[h->n++] = f;
    return 0;
}

static void on_hello(struct dp_conn *c, const struct cfgs_msg *m)
{
    if (m->proto != CFGS_PROTO_VERSION) {
        char msg[128];
        snprintf(msg, sizeof(msg), "unsupported protocol version %d (this control plane speaks %d)",
                 m->proto, CFGS_PROTO_VERSION);
        send_error(c, msg);
        return;
    }
    snprintf(c->node_id, sizeof(c->node_id), "%s", m->node_id);
    snprintf(c->hostname, sizeof(c->hostname), "%s", m->hostname ? m->hostname : "");
    snprintf(c->version, sizeof(c->version), "%s", m->version ? m->version : "");
    c->acked_rev = m->revision;
    int64_t cur = store_revision(c->srv->st);
    c->state = DP_LIVE;

    if (m->revision > 0 && m->revision <= cur) {
        struct hist h = {0};
        int rc = store_changes_since(c->srv->st, m->revision, hist_add, &h);
        if (rc == 0) {
            char *d;
            size_t n;
            rc = cfgs_encode_rev(CFGS_RESUME, m->revision, &d, &n);
            if (send_encoded(c, rc, d, n, 0) == 0)
                for (size_t i = 0; i < h.n; i++)
                    if (conn_send(c, h.frames[i], 0) < 0)
                        break;
            log_info("config stream: data plane %s (%s) resumed from revision %lld (%zu "
                     "changes)",
                     c->node_id, c->addr, (long long)m->revision, h.n);
        }
        for (size_t i = 0; i < h.n; i++)
            cfgs_frame_unref(h.frames[i]);
        free(h.frames);
        if (rc == 0 || c->state == DP_CLOSING || c->state == DP_FLUSHING)
            return;
        if (rc != -ERANGE) {
            send_error(c, "control plane store error while reading history");
            return;
        }
        log_info("config stream: data plane %s (%s): revision %lld is past the kept history; "
                 "sending a snapshot",
                 c->node_id, c->addr, (long long)m->revision);
    }
    send_snapshot(c, cur);
}

static void on_message(struct dp_conn *c, const struct cfgs_msg *m)
{
    if (c->state == DP_WAIT_HELLO) {
        if (m->type != CFGS_HELLO) {
            send_error(c, "expected HELLO");
            return;
        }
        on_hello(c, m);
        return;
    }
    char *d;
    size_t n;
    switch (m->type) {
    case CFGS_ACK:
        if (m->revision > c->acked_rev)
            c->acked_rev = m->revision;
        break;
    case CFGS_PING: {
        int rc = cfgs_encode_ping(CFGS_PONG, m->ts, &d, &n);
        send_encoded(c, rc, d, n, 1);
        break;
    }
    case CFGS_PONG:
        break;
    case CFGS_ERROR:
        log_warn("config stream: data plane %s (%s) reported: %s", c->node_id, c->addr,
                 m->message ? m->message : "");
        conn_close(c);
        break;
    default: {
        char msg[96];
        snprintf(msg, sizeof(msg), "unexpected %s from a data plane", cfgs_type_name(m->type));
        send_error(c, msg);
    }
    }
}

static void tls_input(struct dp_conn *c, const char *data, size_t n);
static void decode(struct dp_conn *c);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct dp_conn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->srv->rbuf, sizeof(c->srv->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct dp_conn *c = s->data;
    if (nread < 0) {
        if (c->state == DP_WAIT_HELLO || c->state == DP_LIVE)
            log_info("config stream: data plane %s (%s) disconnected: %s",
                     c->node_id[0] ? c->node_id : "?", c->addr,
                     nread == UV_EOF ? "closed by peer" : uv_strerror((int)nread));
        conn_close(c);
        return;
    }
    if (nread == 0 || c->state == DP_FLUSHING)
        return;
    c->last_rx_ms = uv_now(c->srv->loop);
    if (c->tls) {
        tls_input(c, buf->base, (size_t)nread);
        return;
    }
    if (cfgs_decoder_feed(&c->dec, buf->base, (size_t)nread) < 0) {
        send_error(c, "out of memory");
        return;
    }
    decode(c);
}

/* Sends the ciphertext the TLS engine produced (handshake, alerts). */
static int tls_flush(struct dp_conn *c)
{
    char *out;
    size_t n = cp_tls_take_out(c->tls, &out);
    if (!n)
        return 0;
    return cfgs_write_buf((uv_stream_t *)&c->tcp, out, n, on_write_error);
}

static void tls_input(struct dp_conn *c, const char *data, size_t n)
{
    struct stream_server *srv = c->srv;
    int was_up = cp_tls_established(c->tls);
    if (cp_tls_feed(c->tls, data, n) < 0) {
        conn_close(c);
        return;
    }
    for (;;) {
        long k = cp_tls_read(c->tls, srv->pbuf, sizeof(srv->pbuf));
        if (!was_up && cp_tls_established(c->tls)) {
            was_up = 1;
            log_info("config stream: data plane at %s: TLS established, client certificate "
                     "\"%s\"", c->addr, cp_tls_peer_subject(c->tls));
        }
        if (k == -2)
            break;
        if (k <= 0) {
            if (k < 0)
                log_warn("config stream: data plane at %s: %s", c->addr, cp_tls_error(c->tls));
            tls_flush(c); /* the alert, if any */
            conn_flush_close(c);
            return;
        }
        if (cfgs_decoder_feed(&c->dec, srv->pbuf, (size_t)k) < 0) {
            send_error(c, "out of memory");
            return;
        }
        decode(c);
        if (c->state != DP_WAIT_HELLO && c->state != DP_LIVE)
            return;
    }
    if (tls_flush(c) < 0)
        conn_close(c);
}

/* Handles every complete frame received. */
static void decode(struct dp_conn *c)
{
    while (c->state == DP_WAIT_HELLO || c->state == DP_LIVE) {
        struct cfgs_msg m;
        char why[160];
        int rc = cfgs_decoder_next(&c->dec, &m, why, sizeof(why));
        if (rc == 0)
            break;
        if (rc < 0) {
            char msg[200];
            snprintf(msg, sizeof(msg), "protocol error: %s", why);
            send_error(c, msg);
            break;
        }
        on_message(c, &m);
        cfgs_msg_free(&m);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct stream_server *srv = server->data;
    if (status < 0) {
        log_warn("config stream: accept: %s", uv_strerror(status));
        return;
    }
    struct dp_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    srv->open_handles++;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    cfgs_decoder_init(&c->dec);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0)
        netaddr_format((struct sockaddr *)&ss, c->addr, sizeof(c->addr));
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, 30);
    c->connected_at = time(NULL);
    c->last_rx_ms = uv_now(srv->loop);
    if (srv->tls && !(c->tls = cp_tls_conn_new(srv->tls))) {
        conn_close(c);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_heartbeat(uv_timer_t *t)
{
    struct stream_server *srv = t->data;
    uint64_t now = uv_now(srv->loop);
    int64_t ts = now_ms();
    for (struct dp_conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == DP_CLOSING)
            continue;
        if (c->state == DP_FLUSHING) {
            if (now >= c->flush_deadline_ms)
                conn_close(c);
            continue;
        }
        if (now - c->last_rx_ms > 3 * srv->hb_ms) {
            log_warn("config stream: data plane %s (%s) silent for %.1f s; disconnecting",
                     c->node_id[0] ? c->node_id : "?", c->addr,
                     (double)(now - c->last_rx_ms) / 1000.0);
            conn_close(c);
            continue;
        }
        if (c->state == DP_LIVE) {
            char *d;
            size_t n;
            int rc = cfgs_encode_ping(CFGS_PING, ts, &d, &n);
            send_encoded(c, rc, d, n, 1);
        }
    }
}

void stream_server_publish(void *ud, const struct store_change *ch)
{
    struct stream_server *srv = ud;
    if (!srv || srv->stopping)
        return;
    struct cfgs_frame *f = NULL;
    for (struct dp_conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->state != DP_LIVE)
            continue;
        if (!f) {
            char *d;
            size_t n;
            int rc = ch->value ? cfgs_encode_put_raw(ch->rev, ch->key, ch->value,
                                                     ch->create_rev, ch->rev, &d, &n)
                               : cfgs_encode_delete(ch->rev, ch->key, &d, &n);
            if (rc < 0) {
                log_error("config stream: cannot encode revision %lld: %s", (long long)ch->rev,
                          strerror(-rc));
                return;
            }
            if (!(f = cfgs_frame_new(d, n)))
                return;
        }
        conn_send(c, f, 1);
    }
    if (f)
        cfgs_frame_unref(f);
}

void stream_server_resync(void *ud)
{
    struct stream_server *srv = ud;
    if (!srv || srv->stopping)
        return;
    int64_t rev = store_revision(srv->st);
    for (struct dp_conn *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->state == DP_LIVE)
            send_snapshot(c, rev);
    }
}

json_t *stream_server_list(struct stream_server *srv)
{
    json_t *a = json_array();
    for (struct dp_conn *c = srv->conns; c; c = c->next) {
        if (c->state != DP_LIVE)
            continue;
        json_array_append_new(
            a, json_pack("{s:s, s:s, s:I, s:I, s:s, s:s}", "node_id", c->node_id, "address",
                         c->addr, "revision", (json_int_t)c->acked_rev, "connected_at",
                         (json_int_t)c->connected_at, "hostname", c->hostname, "version",
                         c->version));
    }
    return a;
}

static void on_server_handle_closed(uv_handle_t *h)
{
    struct stream_server *srv = h->data;
    srv->open_handles--;
    maybe_free_server(srv);
}

int stream_server_start(uv_loop_t *loop, store *st, const struct stream_server_opts *opts,
                        struct stream_server **out, char *err, size_t errlen)
{
    struct stream_server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return -ENOMEM;
    srv->loop = loop;
    srv->st = st;
    srv->hb_ms = (uint64_t)(opts->heartbeat_interval * 1000.0);
    if (srv->hb_ms < 10)
        srv->hb_ms = 10;
    srv->max_pending = opts->max_pending_bytes;
    srv->tls = opts->tls;
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    uv_timer_init(loop, &srv->hb);
    srv->hb.data = srv;
    srv->open_handles = 2;
    char where[80];
    netaddr_format(opts->listen, where, sizeof(where));
    int rc = uv_tcp_bind(&srv->listener, opts->listen, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "config stream: cannot listen on %s: %s", where, uv_strerror(rc));
        srv->stopping = 1;
        uv_close((uv_handle_t *)&srv->listener, on_server_handle_closed);
        uv_close((uv_handle_t *)&srv->hb, on_server_handle_closed);
        return rc;
    }
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    netaddr_format((struct sockaddr *)&ss, where, sizeof(where));
    log_info("config stream listening on %s", where);
    uv_timer_start(&srv->hb, on_heartbeat, srv->hb_ms, srv->hb_ms);
    *out = srv;
    return 0;
}

void stream_server_stop(struct stream_server *srv)
{
    if (!srv || srv->stopping)
        return;
    srv->stopping = 1;
    for (struct dp_conn *c = srv->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&srv->listener, on_server_handle_closed);
    uv_close((uv_handle_t *)&srv->hb, on_server_handle_closed);
}
