/*
 * mqtt_client: a worker's MQTT 3.1.1 publisher (see mqtt_client.h).
 *
 * Objects and who owns them:
 *   client   pools (list), the deadline tick timer, the list of publishes
 *            whose callback has not run yet (`waiting`).
 *   pool     one per (node, options): pool_size connection slots, a FIFO
 *            of publishes waiting for a ready connection, a reconnect timer.
 *   conn     one TCP connection (one attempt): its socket, its timer
 *            (connect deadline, then keepalive), the QoS 1 publishes sent on
 *            it and not yet acknowledged (`inflight`, in send order) with a
 *            bitmap of the packet identifiers they hold. A lost conn leaves
 *            its slot empty; the pool's timer starts a new one.
 *   pub      one publish: the PUBLISH packet (identifier patched when
 *            sent), its deadline, its callback. It is freed when nothing
 *            refers to it any more: not waiting, not queued, not in flight,
 *            not being written (pub_maybe_free).
 *
 * Handles: every open handle counts in client->handles; a conn is freed when
 * its own handles closed and its DNS request returned; the client, once
 * closing, when client->handles reaches 0.
 *
 * Deadlines: one client-wide timer ticks every TICK_MS while publishes wait;
 * a publish failed "at once" (pool in backoff) gets its deadline set to now
 * and a status, so callbacks never run inside mqtt_client_publish.
 */
#include "mqtt_client.h"

#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define TICK_MS 25
#define CONNECT_TIMEOUT_MS 5000
#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 3200
#define POOL_ACTIVE_MS (5 * 60 * 1000)     /* reconnect only while used this recently */
#define POOL_IDLE_FREE_MS (10 * 60 * 1000) /* an unused pool is closed after this */
#define SWEEP_MS 60000
#define MAX_IN_PACKET 4096 /* we expect CONNACK, PUBACK, PINGRESP only */
#define MAX_REMAINING 268435455u

struct pool;
struct conn;

enum pub_state { P_NEW, P_QUEUED, P_INFLIGHT, P_SENT0 };

struct mqtt_pub {
    struct mqtt_client *c;
    struct pool *pool; /* the pool it was published to (NULL once the pool is gone) */
    mqtt_pub_cb cb;    /* NULL: cancelled or already called */
    void *ud;
    bool waiting;                   /* on c->waiting (or c->due): the callback is still due */
    bool in_due;                    /* on c->due: past its deadline, being finished */
    int status_now;                 /* != 0: fail with it at the next tick */
    uint64_t deadline;              /* uv_now ms */
    struct mqtt_pub *wprev, *wnext; /* c->waiting */
    enum pub_state st;
    struct mqtt_pub *qprev, *qnext; /* pool queue or conn inflight */
    struct conn *conn;              /* P_INFLIGHT: the conn it was sent on */
    bool in_write;                  /* a uv_write of pkt is pending */
    uint16_t pid;                   /* QoS 1 identifier while in flight */
    int qos;
    uv_write_t wreq; /* wreq.data = pub */
    size_t pid_off;  /* where the identifier sits in pkt */
    size_t len;      /* packet length */
    uint8_t pkt[];   /* the whole PUBLISH packet */
};

struct pubq {
    struct mqtt_pub *head, *tail;
    size_t n;
};

enum conn_state { C_RESOLVING, C_CONNECTING, C_CONNACK, C_READY, C_CLOSING };

struct conn {
    struct pool *pool; /* NULL once detached (closing) */
    struct mqtt_client *c;
    int slot; /* index in pool->conns */
    enum conn_state st;
    uv_tcp_t tcp; /* tcp.data = conn; initialised when tcp_open */
    bool tcp_open;
    uv_timer_t timer; /* connect deadline, then keepalive ticks */
    uv_connect_t creq;
    uv_getaddrinfo_t dns; /* while C_RESOLVING */
    bool dns_pending;
    int refs;      /* open handles + pending DNS */
    uint8_t *rbuf; /* unparsed input */
    size_t rlen, rcap;
    struct pubq inflight; /* QoS 1 sent, waiting for PUBACK, in send order */
    uint16_t next_pid;
    uint8_t pids[8192]; /* bitmap of identifiers in use */
    uint64_t last_sent, last_recv;
    bool ping_out; /* a PINGREQ without PINGRESP yet */
    char client_id[128];
};

struct pool {
    struct pool *next;
    struct mqtt_client *c;
    char *key; /* options + node, for lookup */
    char *host;
    uint16_t port;
    char *prefix, *user, *pass;
    int size;
    uint16_t keepalive_s;
    unsigned no;         /* pool number in the client (client ids) */
    struct conn **conns; /* size slots, NULL: none */
    struct pubq queue;   /* waiting for a ready connection */
    uv_timer_t timer;    /* reconnects */
    bool closing;
    uint64_t last_used;  /* uv_now of the last publish */
    uint64_t down_until; /* connect failed: fail fast until then */
    uint32_t backoff_ms; /* current backoff, 0 after a success */
    bool failing;        /* a failed attempt was logged: repeats go to debug */
};

struct mqtt_client {
    uv_loop_t *loop;
    int worker_id;
    char rnd[9]; /* 8 random hex digits: ids unique across nodes */
    unsigned next_pool_no;
    struct pool *pools;
    struct mqtt_pub *waiting; /* publishes whose callback is due, any order */
    struct mqtt_pub *due;     /* on_tick: those past their deadline */
    uv_timer_t tick;          /* deadlines */
    uv_timer_t sweep;         /* closes idle pools */
    bool closing;
    int handles; /* open handles (client, pools, conns) */
    struct mqtt_client_stats st;
};

static void conn_close(struct conn *cn, int status_inflight);
static void pool_kick(struct pool *p);
static void conn_start(struct pool *p, int slot);
static void on_pool_timer(uv_timer_t *t);
static void on_conn_timer(uv_timer_t *t);

/* ---------------------------------------------------------------- codec */

size_t mqtt_client_varint(uint8_t *out, uint32_t n)
{
    size_t i = 0;
    do {
        uint8_t b = n % 128;
        n /= 128;
        out[i++] = (uint8_t)(b | (n ? 0x80 : 0));
    } while (n && i < 4);
    return i;
}

static uint8_t *put_str(uint8_t *o, const char *s, size_t n)
{
    *o++ = (uint8_t)(n >> 8);
    *o++ = (uint8_t)n;
    memcpy(o, s, n);
    return o + n;
}

int mqtt_client_encode_connect(const char *client_id, uint16_t keepalive_s, const char *username,
                               const char *password, uint8_t **out, size_t *len)
{
    size_t idl = strlen(client_id);
    size_t ul = username ? strlen(username) : 0, pl = password ? strlen(password) : 0;
    if (idl > 65535 || ul > 65535 || pl > 65535 || (password && !username))
        return -EINVAL;
    size_t rem = 10 + 2 + idl + (username ? 2 + ul : 0) + (password ? 2 + pl : 0);
    uint8_t *b = malloc(rem + 5);
    if (!b)
        return -ENOMEM;
    uint8_t *o = b;
    *o++ = 0x10;
    o += mqtt_client_varint(o, (uint32_t)rem);
    o = put_str(o, "MQTT", 4);
    *o++ = 4; /* 3.1.1 */
    *o++ = (uint8_t)(0x02 | (username ? 0x80 : 0) | (password ? 0x40 : 0));
    *o++ = (uint8_t)(keepalive_s >> 8);
    *o++ = (uint8_t)keepalive_s;
    o = put_str(o, client_id, idl);
    if (username)
        o = put_str(o, username, ul);
    if (password)
        o = put_str(o, password, pl);
    *out = b;
    *len = (size_t)(o - b);
    return 0;
}

int mqtt_client_topic_ok(const char *topic, size_t len)
{
    if (len == 0 || len > 65535)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (topic[i] == '+' || topic[i] == '#' || topic[i] == '\0')
            return 0;
    return 1;
}

/* Writes a PUBLISH into b (room for the whole packet); returns its length. */
static size_t write_publish(uint8_t *b, const char *topic, size_t tl, const void *payload,
                            size_t len, int qos, uint16_t pid, size_t *pid_off)
{
    size_t rem = 2 + tl + (qos ? 2 : 0) + len;
    uint8_t *o = b;
    *o++ = (uint8_t)(0x30 | (qos << 1));
    o += mqtt_client_varint(o, (uint32_t)rem);
    o = put_str(o, topic, tl);
    *pid_off = (size_t)(o - b);
    if (qos) {
        *o++ = (uint8_t)(pid >> 8);
        *o++ = (uint8_t)pid;
    }
    if (len)
        memcpy(o, payload, len);
    return (size_t)(o - b) + len;
}

static int publish_size(const char *topic, size_t len, int qos, size_t *total)
{
    size_t tl = strlen(topic);
    if (!mqtt_client_topic_ok(topic, tl) || (qos != 0 && qos != 1))
        return -EINVAL;
    if (len > MAX_REMAINING || 2 + tl + 2 + len > MAX_REMAINING)
        return -EMSGSIZE;
    *total = 5 + 2 + tl + (qos ? 2 : 0) + len;
    return 0;
}

int mqtt_client_encode_publish(const char *topic, const void *payload, size_t len, int qos,
                               uint16_t pid, uint8_t **out, size_t *outlen, size_t *pid_off)
{
    size_t total;
    int rc = publish_size(topic, len, qos, &total);
    if (rc < 0)
        return rc;
    uint8_t *b = malloc(total);
    if (!b)
        return -ENOMEM;
    *outlen = write_publish(b, topic, strlen(topic), payload, len, qos, pid, pid_off);
    *out = b;
    return 0;
}

long mqtt_client_parse(const uint8_t *buf, size_t len, size_t max, uint8_t *type,
                       const uint8_t **body, size_t *body_len)
{
    if (len < 2)
        return 0;
    uint32_t rem = 0;
    size_t i = 1;
    for (int shift = 0;; shift += 7) {
        if (i >= len)
            return 0;
        if (i > 4)
            return -EPROTO;
        uint8_t b = buf[i++];
        rem |= (uint32_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            break;
        if (i == 5)
            return -EPROTO;
    }
    if (i + rem > max)
        return -EPROTO;
    if (len < i + rem)
        return 0;
    *type = buf[0];
    *body = buf + i;
    *body_len = rem;
    return (long)(i + rem);
}

/* ---------------------------------------------------------- publishes */

static void q_push(struct pubq *q, struct mqtt_pub *p)
{
    p->qnext = NULL;
    p->qprev = q->tail;
    if (q->tail)
        q->tail->qnext = p;
    else
        q->head = p;
    q->tail = p;
    q->n++;
}

static void q_remove(struct pubq *q, struct mqtt_pub *p)
{
    if (p->qprev)
        p->qprev->qnext = p->qnext;
    else
        q->head = p->qnext;
    if (p->qnext)
        p->qnext->qprev = p->qprev;
    else
        q->tail = p->qprev;
    p->qprev = p->qnext = NULL;
    q->n--;
}

static void pub_maybe_free(struct mqtt_pub *p)
{
    if (!p->waiting && !p->in_write && p->st == P_NEW)
        free(p);
}

static void wait_remove(struct mqtt_pub *p)
{
    struct mqtt_client *c = p->c;
    if (!p->waiting)
        return;
    struct mqtt_pub **head = p->in_due ? &c->due : &c->waiting;
    if (p->wprev)
        p->wprev->wnext = p->wnext;
    else
        *head = p->wnext;
    if (p->wnext)
        p->wnext->wprev = p->wprev;
    p->wprev = p->wnext = NULL;
    p->waiting = false;
    p->in_due = false;
}

/* The publish's outcome: runs its callback (once). A queued publish leaves
 * the queue; one in flight stays there (its identifier stays taken until
 * PUBACK or the connection's end). */
static void pub_finish(struct mqtt_pub *p, int status)
{
    if (!p->waiting)
        return;
    wait_remove(p);
    if (p->st == P_QUEUED) {
        q_remove(&p->pool->queue, p);
        p->st = P_NEW;
    }
    if (status == 0)
        p->c->st.published++;
    else
        p->c->st.failed++;
    mqtt_pub_cb cb = p->cb;
    void *ud = p->ud;
    p->cb = NULL;
    /* The callback may publish again or cancel others; p is not touched
     * after it unless still referenced. */
    bool keep = p->in_write || p->st != P_NEW;
    if (!keep)
        free(p);
    if (cb)
        cb(ud, status);
}

void mqtt_pub_cancel(struct mqtt_pub *p)
{
    if (p)
        p->cb = NULL;
}

/* ------------------------------------------------------------ writing */

struct ctl_write {
    uv_write_t req;
    struct conn *cn;
    size_t len;
    uint8_t buf[];
};

static void on_ctl_written(uv_write_t *req, int status)
{
    struct ctl_write *w = req->data;
    if (status < 0 && w->cn->st != C_CLOSING)
        conn_close(w->cn, -ECONNRESET);
    free(w);
}

/* Sends a small control packet (CONNECT, PINGREQ, DISCONNECT). */
static int send_ctl(struct conn *cn, const uint8_t *b, size_t len)
{
    struct ctl_write *w = malloc(sizeof(*w) + len);
    if (!w)
        return -ENOMEM;
    w->cn = cn;
    w->len = len;
    memcpy(w->buf, b, len);
    w->req.data = w;
    uv_buf_t ub = uv_buf_init((char *)w->buf, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&cn->tcp, &ub, 1, on_ctl_written);
    if (rc < 0) {
        free(w);
        return rc;
    }
    cn->last_sent = uv_now(cn->c->loop);
    return 0;
}

static void on_pub_written(uv_write_t *req, int status)
{
    struct mqtt_pub *p = req->data;
    p->in_write = false;
    if (p->qos == 0 && p->st == P_SENT0) {
        p->st = P_NEW;
        p->conn = NULL;
        if (p->waiting) {
            pub_finish(p, status < 0 ? -ECONNRESET : 0);
            return;
        }
    }
    pub_maybe_free(p);
    (void)status; /* a failed write also ends the read side: conn_close runs there */
}

static bool pid_used(const struct conn *cn, uint16_t pid)
{
    return cn->pids[pid >> 3] & (1u << (pid & 7));
}

static void pid_set(struct conn *cn, uint16_t pid, bool on)
{
    if (on)
        cn->pids[pid >> 3] |= (uint8_t)(1u << (pid & 7));
    else
        cn->pids[pid >> 3] &= (uint8_t) ~(1u << (pid & 7));
}

/* Sends p on cn (ready, room in flight). */
static void conn_send(struct conn *cn, struct mqtt_pub *p)
{
    if (p->qos == 1) {
        uint16_t pid = cn->next_pid;
        do {
            pid = (uint16_t)(pid + 1);
        } while (pid == 0 || pid_used(cn, pid));
        cn->next_pid = pid;
        pid_set(cn, pid, true);
        p->pid = pid;
        p->pkt[p->pid_off] = (uint8_t)(pid >> 8);
        p->pkt[p->pid_off + 1] = (uint8_t)pid;
        p->st = P_INFLIGHT;
        q_push(&cn->inflight, p);
    } else {
        p->st = P_SENT0;
    }
    p->conn = cn;
    p->wreq.data = p;
    uv_buf_t ub = uv_buf_init((char *)p->pkt, (unsigned)p->len);
    int rc = uv_write(&p->wreq, (uv_stream_t *)&cn->tcp, &ub, 1, on_pub_written);
    if (rc < 0) {
        /* Not sent at all: the conn is broken; the publish goes back to
         * being "never sent". */
        if (p->st == P_INFLIGHT) {
            q_remove(&cn->inflight, p);
            pid_set(cn, p->pid, false);
        }
        p->st = P_NEW;
        p->conn = NULL;
        pub_finish(p, -ENOTCONN);
        conn_close(cn, -ECONNRESET);
        return;
    }
    p->in_write = true;
    cn->last_sent = uv_now(cn->c->loop);
}

/* ------------------------------------------------------------ conns */

static void conn_unref(struct conn *cn)
{
    if (--cn->refs > 0)
        return;
    free(cn->rbuf);
    free(cn);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *cn = h->data;
    struct mqtt_client *c = cn->c;
    c->handles--;
    conn_unref(cn);
    if (c->closing && c->handles == 0)
        free(c);
}

static bool pool_active(const struct pool *p)
{
    uint64_t now = uv_now(p->c->loop);
    return !p->closing && !p->c->closing && (p->queue.n > 0 || now - p->last_used < POOL_ACTIVE_MS);
}

static bool pool_has_live(const struct pool *p)
{
    for (int i = 0; i < p->size; i++)
        if (p->conns[i])
            return true;
    return false;
}

static void pool_fail_queue(struct pool *p, int status)
{
    while (p->queue.head)
        pub_finish(p->queue.head, status);
}

/* Plans the next reconnect of p's empty slots. */
static void pool_schedule(struct pool *p, uint64_t delay)
{
    if (!pool_active(p))
        return;
    uint64_t now = uv_now(p->c->loop);
    if (p->down_until > now && p->down_until - now > delay)
        delay = p->down_until - now;
    uv_timer_start(&p->timer, on_pool_timer, delay, 0);
}

/* Closes cn: its in-flight publishes fail with status_inflight, its slot
 * frees up, handles close (cn is freed when they did). */
static void conn_close(struct conn *cn, int status_inflight)
{
    if (cn->st == C_CLOSING)
        return;
    bool was_ready = cn->st == C_READY;
    cn->st = C_CLOSING;
    struct pool *p = cn->pool;
    struct mqtt_client *c = cn->c;
    if (p && p->conns[cn->slot] == cn)
        p->conns[cn->slot] = NULL;
    cn->pool = NULL;
    while (cn->inflight.head) {
        struct mqtt_pub *x = cn->inflight.head;
        q_remove(&cn->inflight, x);
        pid_set(cn, x->pid, false);
        x->st = P_NEW;
        x->conn = NULL;
        if (x->waiting)
            pub_finish(x, status_inflight);
        else
            pub_maybe_free(x);
    }
    uv_timer_stop(&cn->timer);
    uv_close((uv_handle_t *)&cn->timer, on_handle_closed);
    if (cn->tcp_open)
        uv_close((uv_handle_t *)&cn->tcp, on_handle_closed);
    if (cn->dns_pending)
        uv_cancel((uv_req_t *)&cn->dns);
    if (!p || c->closing || p->closing)
        return;
    uint64_t now = uv_now(c->loop);
    if (!was_ready) {
        c->st.connect_fails++;
        if (now >= p->down_until) { /* one step per round of attempts */
            p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : BACKOFF_MIN_MS;
            if (p->backoff_ms > BACKOFF_MAX_MS)
                p->backoff_ms = BACKOFF_MAX_MS;
            p->down_until = now + p->backoff_ms;
        }
        if (!pool_has_live(p))
            pool_fail_queue(p, -ENOTCONN);
        pool_schedule(p, p->backoff_ms);
    } else {
        /* A ready connection was lost: try again at once; a failure then
         * starts the backoff. */
        pool_schedule(p, 0);
        pool_kick(p);
    }
}

static void conn_fail(struct conn *cn, const char *what, int err)
{
    struct pool *p = cn->pool;
    if (p) {
        /* Lost connections are news; failed attempts only the first time
         * (a broker down would log every backoff step of every slot). */
        bool quiet = cn->st != C_READY && p->failing;
        log_msg(quiet ? LOG_DEBUG : LOG_INFO, "mqtt client %s: broker %s:%u: %s%s%s", cn->client_id,
                p->host, p->port, what, err ? ": " : "", err ? uv_strerror(err) : "");
        if (cn->st != C_READY)
            p->failing = true;
    }
    conn_close(cn, -ECONNRESET);
}

static void conn_ready(struct conn *cn)
{
    struct pool *p = cn->pool;
    cn->st = C_READY;
    uint64_t tick = (uint64_t)p->keepalive_s * 1000 / 2;
    if (tick < 500)
        tick = 500;
    uv_timer_start(&cn->timer, on_conn_timer, tick, tick);
    p->backoff_ms = 0;
    p->down_until = 0;
    cn->c->st.connects++;
    log_msg(p->failing ? LOG_INFO : LOG_DEBUG, "mqtt client %s: connected to %s:%u", cn->client_id,
            p->host, p->port);
    p->failing = false;
    pool_kick(p);
}

static int handle_packet(struct conn *cn, uint8_t type, const uint8_t *b, size_t n)
{
    switch (type >> 4) {
    case 2: /* CONNACK */
        if (cn->st != C_CONNACK || n != 2)
            return -EPROTO;
        if (b[1] != 0) {
            log_warn("mqtt client %s: broker %s:%u refused the connection (CONNACK code %u)",
                     cn->client_id, cn->pool ? cn->pool->host : "?", cn->pool ? cn->pool->port : 0,
                     b[1]);
            conn_close(cn, -ECONNRESET);
            return 1;
        }
        conn_ready(cn);
        return 0;
    case 4: { /* PUBACK */
        if (cn->st != C_READY || n != 2)
            return -EPROTO;
        uint16_t pid = (uint16_t)(b[0] << 8 | b[1]);
        for (struct mqtt_pub *x = cn->inflight.head; x; x = x->qnext) {
            if (x->pid != pid)
                continue;
            q_remove(&cn->inflight, x);
            pid_set(cn, pid, false);
            x->st = P_NEW;
            x->conn = NULL;
            if (x->waiting)
                pub_finish(x, 0);
            else
                pub_maybe_free(x);
            break;
        }
        /* Room in flight again. */
        if (cn->pool && cn->pool->queue.n)
            pool_kick(cn->pool);
        return 0;
    }
    case 13: /* PINGRESP */
        cn->ping_out = false;
        return 0;
    default:
        return -EPROTO;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *cn = h->data;
    (void)suggested;
    if (cn->rcap - cn->rlen < 512) {
        size_t nc = cn->rcap ? cn->rcap * 2 : 1024;
        uint8_t *nb = realloc(cn->rbuf, nc);
        if (!nb) {
            *buf = uv_buf_init(NULL, 0);
            return;
        }
        cn->rbuf = nb;
        cn->rcap = nc;
    }
    *buf = uv_buf_init((char *)cn->rbuf + cn->rlen, (unsigned)(cn->rcap - cn->rlen));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *cn = s->data;
    (void)buf;
    if (cn->st == C_CLOSING)
        return;
    if (nread < 0) {
        conn_fail(cn, nread == UV_EOF ? "connection closed by the broker" : "read",
                  nread == UV_EOF ? 0 : (int)nread);
        return;
    }
    if (nread == 0)
        return;
    cn->rlen += (size_t)nread;
    cn->last_recv = uv_now(cn->c->loop);
    size_t off = 0;
    while (cn->st != C_CLOSING) {
        uint8_t type;
        const uint8_t *body;
        size_t blen;
        long n =
            mqtt_client_parse(cn->rbuf + off, cn->rlen - off, MAX_IN_PACKET, &type, &body, &blen);
        if (n == 0)
            break;
        if (n < 0 || handle_packet(cn, type, body, blen) < 0) {
            conn_fail(cn, "protocol error from the broker", 0);
            return;
        }
        off += (size_t)n;
    }
    if (cn->st == C_CLOSING)
        return;
    memmove(cn->rbuf, cn->rbuf + off, cn->rlen - off);
    cn->rlen -= off;
}

static void on_conn_timer(uv_timer_t *t)
{
    struct conn *cn = t->data;
    if (cn->st == C_CLOSING)
        return;
    if (cn->st != C_READY) {
        conn_fail(cn, "no CONNACK within the connect timeout", 0);
        return;
    }
    uint64_t now = uv_now(cn->c->loop);
    uint64_t ka = (uint64_t)cn->pool->keepalive_s * 1000;
    if (cn->ping_out && now - cn->last_recv >= ka) {
        conn_fail(cn, "no PINGRESP: the broker is not answering", 0);
        return;
    }
    if (now - cn->last_sent >= ka / 2 && !cn->ping_out) {
        static const uint8_t ping[2] = {0xC0, 0x00};
        if (send_ctl(cn, ping, 2) < 0) {
            conn_fail(cn, "cannot send PINGREQ", 0);
            return;
        }
        cn->ping_out = true;
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    struct conn *cn = req->data;
    if (cn->st != C_CONNECTING)
        return;
    if (status < 0) {
        conn_fail(cn, "connect", status);
        return;
    }
    struct pool *p = cn->pool;
    uint8_t *b;
    size_t len;
    if (mqtt_client_encode_connect(cn->client_id, p->keepalive_s, p->user, p->pass, &b, &len) < 0) {
        conn_fail(cn, "cannot encode CONNECT", 0);
        return;
    }
    cn->st = C_CONNACK;
    int rc = uv_read_start((uv_stream_t *)&cn->tcp, on_alloc, on_read);
    if (rc == 0)
        rc = send_ctl(cn, b, len);
    free(b);
    if (rc < 0)
        conn_fail(cn, "cannot send CONNECT", rc);
}

static void tcp_connect(struct conn *cn, const struct sockaddr *sa)
{
    struct mqtt_client *c = cn->c;
    uv_tcp_init(c->loop, &cn->tcp);
    cn->tcp.data = cn;
    cn->tcp_open = true;
    cn->refs++;
    c->handles++;
    uv_tcp_nodelay(&cn->tcp, 1);
    cn->st = C_CONNECTING;
    cn->creq.data = cn;
    int rc = uv_tcp_connect(&cn->creq, &cn->tcp, sa, on_connected);
    if (rc < 0)
        conn_fail(cn, "connect", rc);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct conn *cn = req->data;
    cn->dns_pending = false;
    if (cn->st != C_RESOLVING || status < 0 || !res) {
        if (cn->st == C_RESOLVING)
            conn_fail(cn, "cannot resolve", status < 0 ? status : UV_EAI_NONAME);
        uv_freeaddrinfo(res);
        conn_unref(cn);
        return;
    }
    struct sockaddr_storage sa;
    memcpy(&sa, res->ai_addr, res->ai_addrlen);
    uv_freeaddrinfo(res);
    uint16_t port = cn->pool->port;
    if (sa.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&sa)->sin6_port = htons(port);
    else
        ((struct sockaddr_in *)&sa)->sin_port = htons(port);
    tcp_connect(cn, (struct sockaddr *)&sa);
    conn_unref(cn);
}

/* Starts a connection in p's empty slot. */
static void conn_start(struct pool *p, int slot)
{
    struct mqtt_client *c = p->c;
    struct conn *cn = calloc(1, sizeof(*cn));
    if (!cn)
        return;
    cn->pool = p;
    cn->c = c;
    cn->slot = slot;
    cn->st = C_RESOLVING;
    snprintf(cn->client_id, sizeof(cn->client_id), "%s%s-w%d-%u-%d", p->prefix, c->rnd,
             c->worker_id, p->no, slot);
    cn->last_sent = cn->last_recv = uv_now(c->loop);
    uv_timer_init(c->loop, &cn->timer);
    cn->timer.data = cn;
    cn->refs = 1;
    c->handles++;
    p->conns[slot] = cn;
    uv_timer_start(&cn->timer, on_conn_timer, CONNECT_TIMEOUT_MS, 0);
    struct sockaddr_storage sa;
    memset(&sa, 0, sizeof(sa));
    if (uv_ip4_addr(p->host, p->port, (struct sockaddr_in *)&sa) == 0 ||
        uv_ip6_addr(p->host, p->port, (struct sockaddr_in6 *)&sa) == 0) {
        tcp_connect(cn, (struct sockaddr *)&sa);
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    cn->dns.data = cn;
    cn->refs++;
    cn->dns_pending = true;
    int rc = uv_getaddrinfo(c->loop, &cn->dns, on_resolved, p->host, NULL, &hints);
    if (rc < 0) {
        cn->dns_pending = false;
        cn->refs--;
        conn_fail(cn, "cannot resolve", rc);
    }
}

/* ------------------------------------------------------------ pools */

/* Sends what waits in p's queue on its ready connections (fewest in flight
 * first); starts connections when some slot is empty. */
static void pool_kick(struct pool *p)
{
    while (p->queue.head) {
        struct conn *best = NULL;
        for (int i = 0; i < p->size; i++) {
            struct conn *cn = p->conns[i];
            if (cn && cn->st == C_READY && cn->inflight.n < MQTT_CLIENT_MAX_INFLIGHT &&
                (!best || cn->inflight.n < best->inflight.n))
                best = cn;
        }
        if (!best)
            break;
        struct mqtt_pub *x = p->queue.head;
        q_remove(&p->queue, x);
        x->st = P_NEW;
        conn_send(best, x);
    }
}

static void on_pool_timer(uv_timer_t *t)
{
    struct pool *p = t->data;
    if (p->closing || p->c->closing)
        return;
    uint64_t now = uv_now(p->c->loop);
    if (now < p->down_until) {
        uv_timer_start(&p->timer, on_pool_timer, p->down_until - now, 0);
        return;
    }
    if (!pool_active(p))
        return;
    for (int i = 0; i < p->size; i++)
        if (!p->conns[i])
            conn_start(p, i);
}

static void on_pool_closed(uv_handle_t *h)
{
    struct pool *p = h->data;
    struct mqtt_client *c = p->c;
    free(p->conns);
    free(p->key);
    free(p->host);
    free(p->prefix);
    free(p->user);
    free(p->pass);
    free(p);
    c->handles--;
    if (c->closing && c->handles == 0)
        free(c);
}

/* Unlinks and closes p: queued publishes fail with status, connections
 * close (their in-flight ones fail with status too). */
static void pool_close(struct pool *p, int status)
{
    struct mqtt_client *c = p->c;
    for (struct pool **pp = &c->pools; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    p->closing = true;
    pool_fail_queue(p, status);
    for (int i = 0; i < p->size; i++)
        if (p->conns[i])
            conn_close(p->conns[i], status);
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, on_pool_closed);
}

static char *dupz(const char *s)
{
    return s ? strdup(s) : NULL;
}

static struct pool *pool_get(struct mqtt_client *c, const struct mqtt_pool_opts *o,
                             const char *host, uint16_t port)
{
    const char *prefix = o->client_id_prefix ? o->client_id_prefix : "airgw-";
    int size = o->pool_size > 0 ? (o->pool_size > 64 ? 64 : o->pool_size) : 2;
    uint16_t ka = o->keepalive_s ? o->keepalive_s : 60;
    size_t kl = strlen(prefix) + strlen(host) + (o->username ? strlen(o->username) : 0) +
                (o->password ? strlen(o->password) : 0) + 64;
    char *key = malloc(kl);
    if (!key)
        return NULL;
    snprintf(key, kl, "%s|%u|%d|%u|%s%s|%s%s|%s", host, port, size, ka, o->username ? "u" : "-",
             o->username ? o->username : "", o->password ? "p" : "-",
             o->password ? o->password : "", prefix);
    for (struct pool *p = c->pools; p; p = p->next)
        if (strcmp(p->key, key) == 0) {
            free(key);
            return p;
        }
    struct pool *p = calloc(1, sizeof(*p));
    if (!p)
        goto fail_key;
    p->c = c;
    p->key = key;
    p->host = strdup(host);
    p->prefix = strdup(prefix);
    p->user = dupz(o->username);
    p->pass = dupz(o->password);
    p->conns = calloc((size_t)size, sizeof(*p->conns));
    if (!p->host || !p->prefix || (o->username && !p->user) || (o->password && !p->pass) ||
        !p->conns)
        goto fail_pool;
    p->port = port;
    p->size = size;
    p->keepalive_s = ka;
    p->no = c->next_pool_no++;
    uv_timer_init(c->loop, &p->timer);
    p->timer.data = p;
    c->handles++;
    p->next = c->pools;
    c->pools = p;
    return p;
fail_pool:
    free(p->host);
    free(p->prefix);
    free(p->user);
    free(p->pass);
    free(p->conns);
    free(p);
fail_key:
    free(key);
    return NULL;
}

/* ------------------------------------------------------------ client */

static void on_tick(uv_timer_t *t)
{
    struct mqtt_client *c = t->data;
    uint64_t now = uv_now(c->loop);
    /* Move what is due to c->due in one pass, then finish those one by one:
     * a callback may publish (onto c->waiting) or finish others (which
     * leave either list). */
    struct mqtt_pub *x = c->waiting;
    while (x) {
        struct mqtt_pub *next = x->wnext;
        if (x->deadline <= now) {
            if (x->wprev)
                x->wprev->wnext = x->wnext;
            else
                c->waiting = x->wnext;
            if (x->wnext)
                x->wnext->wprev = x->wprev;
            x->wprev = NULL;
            x->wnext = c->due;
            if (c->due)
                c->due->wprev = x;
            c->due = x;
            x->in_due = true;
        }
        x = next;
    }
    while (c->due)
        pub_finish(c->due, c->due->status_now ? c->due->status_now : -ETIMEDOUT);
    if (c->waiting && !c->closing)
        uv_timer_start(&c->tick, on_tick, TICK_MS, 0);
}

static void on_sweep(uv_timer_t *t)
{
    struct mqtt_client *c = t->data;
    uint64_t now = uv_now(c->loop);
    struct pool *p = c->pools;
    while (p) {
        struct pool *next = p->next;
        bool busy = p->queue.n > 0;
        for (int i = 0; i < p->size && !busy; i++)
            busy = p->conns[i] && p->conns[i]->inflight.n > 0;
        if (!busy && now - p->last_used >= POOL_IDLE_FREE_MS)
            pool_close(p, -ECANCELED);
        p = next;
    }
}

static void on_client_timer_closed(uv_handle_t *h)
{
    struct mqtt_client *c = h->data;
    c->handles--;
    if (c->closing && c->handles == 0)
        free(c);
}

struct mqtt_client *mqtt_client_new(uv_loop_t *loop, int worker_id)
{
    struct mqtt_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->worker_id = worker_id;
    unsigned char r[4] = {0};
    if (uv_random(NULL, NULL, r, sizeof(r), 0, NULL) < 0) {
        uint64_t x = uv_hrtime() ^ (uint64_t)uv_os_getpid() << 20;
        memcpy(r, &x, sizeof(r));
    }
    snprintf(c->rnd, sizeof(c->rnd), "%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
    uv_timer_init(loop, &c->tick);
    c->tick.data = c;
    uv_timer_init(loop, &c->sweep);
    c->sweep.data = c;
    c->handles = 2;
    uv_timer_start(&c->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&c->sweep);
    return c;
}

int mqtt_client_publish(struct mqtt_client *c, const struct mqtt_pool_opts *po,
                        const struct mqtt_publish *m, mqtt_pub_cb cb, void *ud,
                        struct mqtt_pub **out)
{
    if (c->closing)
        return -ECANCELED;
    if (!m->host || !m->topic || (m->len && !m->payload))
        return -EINVAL;
    size_t total;
    int rc = publish_size(m->topic, m->len, m->qos, &total);
    if (rc < 0)
        return rc;
    struct pool *p = pool_get(c, po, m->host, m->port);
    if (!p)
        return -ENOMEM;
    struct mqtt_pub *x = calloc(1, sizeof(*x) + total);
    if (!x)
        return -ENOMEM;
    x->len = write_publish(x->pkt, m->topic, strlen(m->topic), m->payload, m->len, m->qos, 0,
                           &x->pid_off);
    x->c = c;
    x->pool = p;
    x->cb = cb;
    x->ud = ud;
    x->qos = m->qos;
    uint64_t now = uv_now(c->loop);
    x->deadline = now + (m->timeout_ms ? m->timeout_ms : 5000);
    x->waiting = true;
    x->wnext = c->waiting;
    if (c->waiting)
        c->waiting->wprev = x;
    c->waiting = x;
    p->last_used = now;
    if (out)
        *out = x;
    if (!pool_has_live(p) && now < p->down_until) {
        /* In backoff after failed connects: fail at once (from the loop). */
        x->status_now = -ENOTCONN;
        x->deadline = now;
        uv_timer_start(&c->tick, on_tick, 0, 0);
        return 0;
    }
    x->st = P_QUEUED;
    q_push(&p->queue, x);
    if (p->queue.n > MQTT_CLIENT_MAX_QUEUED) {
        x->status_now = -ENOTCONN;
        x->deadline = now;
        uv_timer_start(&c->tick, on_tick, 0, 0);
        return 0;
    }
    if (!uv_is_active((uv_handle_t *)&c->tick))
        uv_timer_start(&c->tick, on_tick, TICK_MS, 0);
    /* Empty slots: connect them now (a fresh pool, or after a loss) unless
     * the backoff holds them. */
    if (now >= p->down_until)
        for (int i = 0; i < p->size; i++)
            if (!p->conns[i])
                conn_start(p, i);
    pool_kick(p);
    return 0;
}

void mqtt_client_close(struct mqtt_client *c)
{
    if (!c || c->closing)
        return;
    c->closing = true;
    while (c->pools)
        pool_close(c->pools, -ECANCELED);
    while (c->waiting)
        pub_finish(c->waiting, -ECANCELED);
    while (c->due)
        pub_finish(c->due, -ECANCELED);
    uv_timer_stop(&c->tick);
    uv_timer_stop(&c->sweep);
    uv_close((uv_handle_t *)&c->tick, on_client_timer_closed);
    uv_close((uv_handle_t *)&c->sweep, on_client_timer_closed);
}

void mqtt_client_stats(const struct mqtt_client *c, struct mqtt_client_stats *st)
{
    *st = c->st;
    st->pools = 0;
    st->ready = 0;
    for (const struct pool *p = c->pools; p; p = p->next) {
        st->pools++;
        for (int i = 0; i < p->size; i++)
            if (p->conns[i] && p->conns[i]->st == C_READY)
                st->ready++;
    }
}
