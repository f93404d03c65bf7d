/*
 * cfg_client: see cfg_client.h.
 *
 * States: IDLE (waiting for the reconnect timer) -> CONNECTING -> SYNCING
 * (HELLO sent, snapshot or resume under way) -> SYNCED (live changes).
 * Each TCP attempt has its own heap-allocated handle so an old handle can be
 * closing while a new one connects.
 */
#include "cfg_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "log.h"
#include "netaddr.h"
#include "tls.h"

enum cc_state { CC_IDLE, CC_CONNECTING, CC_SYNCING, CC_SYNCED };

struct link {
    uv_tcp_t tcp;             /* the attempt's socket; tcp.data = link */
    uv_connect_t creq;        /* connect request */
    struct cfg_client *c;     /* owner; NULL once the owner let go of it */
    struct cfgs_decoder dec;  /* incoming frames */
    struct tls_conn *tls;     /* TLS engine, or NULL for plain TCP */
    const struct sockaddr *dialled; /* the control plane's address (in the options) */
    char rbuf[65536];         /* read buffer */
    char pbuf[16384];         /* TLS: decrypted plaintext */
};

struct cfg_client {
    uv_loop_t *loop;
    struct cfg_state *st;     /* what we keep in sync */
    struct cfg_client_opts o; /* copied options */
    enum cc_state state;
    struct link *link;        /* current attempt, or NULL */
    size_t next_cp;           /* index of the next address to try */
    unsigned backoff_ms;      /* next reconnect delay */
    uint64_t last_rx_ms;      /* loop time of the last frame */
    uv_timer_t retry;         /* reconnect timer */
    uv_timer_t hb;            /* heartbeat timer */
    int open_handles;         /* retry + hb */
    int stopping;
    char where[80];           /* address of the current attempt */
};

struct wreq {
    uv_write_t req;
    char *buf;
};

static void connect_next(struct cfg_client *c);

static void on_retry(uv_timer_t *t)
{
    connect_next(t->data);
}

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void on_link_closed(uv_handle_t *h)
{
    struct link *l = h->data;
    cfgs_decoder_free(&l->dec);
    tls_conn_free(l->tls);
    free(l);
}

/* Drops the current link and schedules the next attempt. */
static void link_fail(struct cfg_client *c, const char *why)
{
    struct link *l = c->link;
    if (!l)
        return;
    if (c->state == CC_SYNCED || c->state == CC_SYNCING)
        log_warn("config stream: lost control plane %s: %s", c->where, why);
    else
        log_info("config stream: cannot reach control plane %s: %s", c->where, why);
    c->link = NULL;
    l->c = NULL;
    if (!uv_is_closing((uv_handle_t *)&l->tcp))
        uv_close((uv_handle_t *)&l->tcp, on_link_closed);
    c->state = CC_IDLE;
    if (c->stopping)
        return;
    uv_timer_start(&c->retry, on_retry, c->backoff_ms, 0);
    c->backoff_ms = c->backoff_ms * 2 > 5000 ? 5000 : c->backoff_ms * 2;
}

static void on_written(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    (void)status; /* a failed write shows up as a read error */
    free(w->buf);
    free(w);
}

/* Writes buf (taken over) to the link as it is. */
static void write_raw(struct cfg_client *c, char *buf, size_t len)
{
    struct wreq *w = malloc(sizeof(*w));
    if (!w) {
        free(buf);
        return;
    }
    w->buf = buf;
    uv_buf_t b = uv_buf_init(buf, (unsigned)len);
    if (uv_write(&w->req, (uv_stream_t *)&c->link->tcp, &b, 1, on_written) < 0) {
        free(buf);
        free(w);
    }
}

/* Sends the ciphertext the TLS engine produced. */
static void tls_flush(struct cfg_client *c)
{
    const char *d;
    size_t n = tls_conn_out(c->link->tls, &d);
    if (!n)
        return;
    char *copy = malloc(n);
    if (copy) {
        memcpy(copy, d, n);
        write_raw(c, copy, n);
    }
    tls_conn_out_consume(c->link->tls, n);
}

static void send_frame(struct cfg_client *c, int rc, char *buf, size_t len)
{
    if (rc < 0 || !c->link) {
        if (rc == 0)
            free(buf);
        return;
    }
    if (c->link->tls) {
        int wrc = tls_conn_write(c->link->tls, buf, len);
        free(buf);
        if (wrc == 0)
            tls_flush(c);
        return;
    }
    write_raw(c, buf, len);
}

static void send_ack(struct cfg_client *c)
{
    char *buf;
    size_t len;
    int rc = cfgs_encode_rev(CFGS_ACK, c->st->revision, &buf, &len);
    send_frame(c, rc, buf, len);
}

static void on_message(struct cfg_client *c, const struct cfgs_msg *m)
{
    bool changed = false;
    char *buf;
    size_t len;
    switch (m->type) {
    case CFGS_PING: {
        int rc = cfgs_encode_ping(CFGS_PONG, m->ts, &buf, &len);
        send_frame(c, rc, buf, len);
        return;
    }
    case CFGS_PONG:
        return;
    case CFGS_ERROR:
        link_fail(c, m->message ? m->message : "error from control plane");
        return;
    case CFGS_SNAPSHOT_BEGIN:
    case CFGS_PUT:
    case CFGS_DELETE:
    case CFGS_SNAPSHOT_END:
    case CFGS_RESUME:
        if (cfg_state_apply(c->st, m, &changed) < 0) {
            link_fail(c, "control plane sent a message out of order");
            return;
        }
        if (m->type == CFGS_SNAPSHOT_END || m->type == CFGS_RESUME) {
            if (c->state != CC_SYNCED)
                log_info("config stream: synced with %s at revision %lld (%s)", c->where,
                         (long long)c->st->revision,
                         m->type == CFGS_RESUME ? "resumed" : "snapshot");
            c->state = CC_SYNCED;
            c->backoff_ms = 100;
        }
        if (changed && c->o.on_change)
            c->o.on_change(c->o.ud, m->type == CFGS_SNAPSHOT_END, m);
        if (m->type != CFGS_SNAPSHOT_BEGIN && !(m->type == CFGS_PUT && c->st->pending))
            send_ack(c);
        return;
    default:
        link_fail(c, "unexpected message from control plane");
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct link *l = h->data;
    (void)suggested;
    *buf = uv_buf_init(l->rbuf, sizeof(l->rbuf));
}

static void tls_input(struct cfg_client *c, struct link *l, const char *data, size_t n);
static void decode(struct cfg_client *c, struct link *l);

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct link *l = s->data;
    struct cfg_client *c = l->c;
    if (!c)
        return;
    if (nread < 0) {
        link_fail(c, nread == UV_EOF ? "closed" : uv_strerror((int)nread));
        return;
    }
    if (nread == 0)
        return;
    c->last_rx_ms = uv_now(c->loop);
    if (l->tls) {
        tls_input(c, l, buf->base, (size_t)nread);
        return;
    }
    if (cfgs_decoder_feed(&l->dec, buf->base, (size_t)nread) < 0) {
        link_fail(c, "out of memory");
        return;
    }
    decode(c, l);
}

/* Decrypts what was read and handles the frames in it. */
static void tls_input(struct cfg_client *c, struct link *l, const char *data, size_t n)
{
    if (tls_conn_feed(l->tls, data, n) < 0) {
        link_fail(c, "TLS: too much input");
        return;
    }
    while (c->link == l) {
        long k = tls_conn_read(l->tls, l->pbuf, sizeof(l->pbuf));
        if (k == -EAGAIN)
            break;
        if (k <= 0) {
            char why[300];
            snprintf(why, sizeof(why), "TLS: %s", k == 0 ? "closed" : tls_conn_error(l->tls));
            tls_flush(c);
            link_fail(c, why);
            return;
        }
        if (cfgs_decoder_feed(&l->dec, l->pbuf, (size_t)k) < 0) {
            link_fail(c, "out of memory");
            return;
        }
        decode(c, l);
    }
    if (c->link == l)
        tls_flush(c);
}

/* Handles every complete frame received on l. */
static void decode(struct cfg_client *c, struct link *l)
{
    /* on_message may drop the link: re-check it every round. */
    while (c->link == l) {
        struct cfgs_msg m;
        char why[160];
        int rc = cfgs_decoder_next(&l->dec, &m, why, sizeof(why));
        if (rc == 0)
            break;
        if (rc < 0) {
            link_fail(c, why);
            break;
        }
        on_message(c, &m);
        cfgs_msg_free(&m);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    struct link *l = req->data;
    struct cfg_client *c = l->c;
    if (!c)
        return;
    if (status < 0) {
        link_fail(c, uv_strerror(status));
        return;
    }
    c->state = CC_SYNCING;
    c->last_rx_ms = uv_now(c->loop);
    uv_tcp_nodelay(&l->tcp, 1);
    uv_tcp_keepalive(&l->tcp, 1, 30);
    if (c->o.tls) {
        /* Verify the name configured, else the address we dialled. */
        char ip[64];
        netaddr_format_ip(l->dialled, ip, sizeof(ip));
        l->tls = tls_conn_new_client(c->o.tls, c->o.server_name ? c->o.server_name : ip, NULL,
                                     NULL);
        if (!l->tls) {
            link_fail(c, "TLS: out of memory");
            return;
        }
    }
    char host[256] = "";
    gethostname(host, sizeof(host) - 1);
    char *buf;
    size_t len;
    int rc = cfgs_encode_hello(c->o.node_id, c->st->revision, host, &buf, &len);
    send_frame(c, rc, buf, len); /* with TLS: sends the ClientHello, HELLO waits */
    uv_read_start((uv_stream_t *)&l->tcp, on_alloc, on_read);
}

static void connect_next(struct cfg_client *c)
{
    if (c->stopping || c->link)
        return;
    const struct sockaddr *sa = (const struct sockaddr *)&c->o.cps[c->next_cp];
    c->next_cp = (c->next_cp + 1) % c->o.ncp;
    netaddr_format(sa, c->where, sizeof(c->where));
    struct link *l = calloc(1, sizeof(*l));
    if (!l)
        return;
    l->c = c;
    l->dialled = sa;
    cfgs_decoder_init(&l->dec);
    uv_tcp_init(c->loop, &l->tcp);
    l->tcp.data = l;
    l->creq.data = l;
    c->link = l;
    c->state = CC_CONNECTING;
    c->last_rx_ms = uv_now(c->loop);
    int rc = uv_tcp_connect(&l->creq, &l->tcp, sa, on_connect);
    if (rc < 0)
        link_fail(c, uv_strerror(rc));
}

static void on_heartbeat(uv_timer_t *t)
{
    struct cfg_client *c = t->data;
    if (!c->link || c->state == CC_IDLE)
        return;
    uint64_t silent = uv_now(c->loop) - c->last_rx_ms;
    if (silent > 3ull * c->o.heartbeat_ms) {
        char why[64];
        snprintf(why, sizeof(why), "silent for %.1f s", (double)silent / 1000.0);
        link_fail(c, why);
        return;
    }
    if (c->state == CC_SYNCING || c->state == CC_SYNCED) {
        char *buf;
        size_t len;
        int rc = cfgs_encode_ping(CFGS_PING, wall_ms(), &buf, &len);
        send_frame(c, rc, buf, len);
    }
}

int cfg_client_start(uv_loop_t *loop, struct cfg_state *st, const struct cfg_client_opts *o,
                     struct cfg_client **out)
{
    if (o->ncp == 0)
        return -EINVAL;
    struct cfg_client *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->loop = loop;
    c->st = st;
    c->o = *o;
    if (c->o.heartbeat_ms == 0)
        c->o.heartbeat_ms = 5000;
    c->backoff_ms = 100;
    uv_timer_init(loop, &c->retry);
    uv_timer_init(loop, &c->hb);
    c->retry.data = c->hb.data = c;
    c->open_handles = 2;
    uv_timer_start(&c->hb, on_heartbeat, c->o.heartbeat_ms, c->o.heartbeat_ms);
    connect_next(c);
    *out = c;
    return 0;
}

bool cfg_client_synced(const struct cfg_client *c)
{
    return c && c->state == CC_SYNCED;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct cfg_client *c = h->data;
    if (--c->open_handles == 0)
        free(c);
}

void cfg_client_stop(struct cfg_client *c)
{
    if (!c || c->stopping)
        return;
    c->stopping = 1;
    if (c->link) {
        struct link *l = c->link;
        c->link = NULL;
        l->c = NULL;
        uv_close((uv_handle_t *)&l->tcp, on_link_closed);
    }
    uv_close((uv_handle_t *)&c->retry, on_timer_closed);
    uv_close((uv_handle_t *)&c->hb, on_timer_closed);
}
