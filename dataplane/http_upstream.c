/*
 * http_upstream: the upstream side of the HTTP proxy (see http_conn.h).
 *
 * A request's attempts: upstream_pick a node not tried yet, take an idle
 * connection from the node's keep-alive pool ("host:port") or connect (IP
 * literals directly, names through uv_getaddrinfo) under the route's connect
 * timeout, queue the request head, stream the body as the client sends it,
 * then parse the response with llhttp (paused at the head and at the end),
 * pass the head on with hop-by-hop headers replaced and the body as it
 * comes. A failed connect (refused: 502, timed out: 504) is reported to the
 * balancer and the next node is tried within retries / retry_timeout; a
 * pooled connection found dead before any response byte is replaced once by
 * a fresh one to the same node. Once a response byte went to the client
 * nothing is retried: a failure then closes the client connection.
 *
 * An upstream connection's state (enum hp_ustate) says who may touch it:
 * US_ACTIVE/US_TUNNEL belong to uc->req, US_IDLE to its pool. Its timer
 * measures one thing at a time (UT_*): connect, send progress, read
 * progress or idle time in the pool.
 *
 * An https upstream passes through US_HANDSHAKE (TLS, under the connect
 * timeout) before US_ACTIVE. Its pool is "https://SNI@host:port#context",
 * so a pooled connection serves only requests with the same server name
 * and TLS settings; the pool keeps the newest TLS session for the next
 * connection to resume, and outlives its connections for that (at most
 * HP_SESSION_POOLS such pools).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_conn.h"
#include "log.h"
#include "netaddr.h"
#include "tls.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define DEFAULT_TIMEOUT_MS 60000

struct hp_resolve {
    uv_getaddrinfo_t gai; /* the request */
    struct hp_upconn *uc; /* waiting connection, NULL once it gave up */
    struct http_proxy *p; /* owner (counted in nhandles while pending) */
};

static void attempt(struct hp_req *r);
static void uc_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void up_write_cb(uv_write_t *w, int status);
static void uc_timer_cb(uv_timer_t *t);
static void upconn_close(struct hp_upconn *uc);

/* ---- pools ---- */

static uint32_t key_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static struct hp_pool *pool_get(struct http_proxy *p, const char *key)
{
    uint32_t b = key_hash(key) % HP_POOL_BUCKETS;
    for (struct hp_pool *pl = p->pools[b]; pl; pl = pl->next) {
        if (strcmp(pl->key, key) == 0) {
            if (pl->kept) {
                pl->kept = false;
                p->nkept--;
            }
            return pl;
        }
    }
    size_t kl = strlen(key);
    struct hp_pool *pl = calloc(1, sizeof(*pl) + kl + 1);
    if (!pl)
        return NULL;
    memcpy(pl->key, key, kl + 1);
    pl->next = p->pools[b];
    p->pools[b] = pl;
    return pl;
}

static void pool_unref(struct http_proxy *p, struct hp_pool *pl)
{
    if (--pl->refs > 0)
        return;
    if (pl->sess && !p->freeing && p->nkept < HP_SESSION_POOLS) {
        /* The next connection to this server resumes its TLS session. */
        pl->kept = true;
        p->nkept++;
        return;
    }
    if (pl->kept) {
        pl->kept = false;
        p->nkept--;
    }
    uint32_t b = key_hash(pl->key) % HP_POOL_BUCKETS;
    for (struct hp_pool **pp = &p->pools[b]; *pp; pp = &(*pp)->next) {
        if (*pp == pl) {
            *pp = pl->next;
            break;
        }
    }
    tls_session_free(pl->sess);
    free(pl);
}

/* Keeps the newest resumable session of a TLS connection in its pool. */
static void pool_keep_session(struct hp_upconn *uc)
{
    struct tls_session *s;
    if (!uc->tls || !tls_conn_handshake_done(uc->tls) || !(s = tls_conn_session(uc->tls)))
        return;
    tls_session_free(uc->pool->sess);
    uc->pool->sess = s;
}

static void idle_unlink(struct hp_upconn *uc)
{
    struct hp_pool *pl = uc->pool;
    if (uc->iprev)
        uc->iprev->inext = uc->inext;
    else
        pl->idle = uc->inext;
    if (uc->inext)
        uc->inext->iprev = uc->iprev;
    else
        pl->tail = uc->iprev;
    uc->iprev = uc->inext = NULL;
    pl->nidle--;
    uc->p->st.upstream_idle--;
}

/* ---- connections ---- */

static void uc_closed_cb(uv_handle_t *h)
{
    struct hp_upconn *uc = h->data;
    if (++uc->nclosed < 2)
        return;
    struct http_proxy *p = uc->p;
    if (uc->prev)
        uc->prev->next = uc->next;
    else
        p->upconns = uc->next;
    if (uc->next)
        uc->next->prev = uc->prev;
    pool_unref(p, uc->pool);
    tls_conn_free(uc->tls);
    free(uc);
    hp_handle_gone(p);
}

static void upconn_close(struct hp_upconn *uc)
{
    if (uc->state == US_CLOSING)
        return;
    if (uc->state == US_IDLE)
        idle_unlink(uc);
    else
        uc->p->st.upstream_active--;
    pool_keep_session(uc);
    if (uc->res) {
        uc->res->uc = NULL;
        uv_cancel((uv_req_t *)&uc->res->gai);
        uc->res = NULL;
    }
    uc->state = US_CLOSING;
    uc->req = NULL;
    uv_close((uv_handle_t *)&uc->tcp, uc_closed_cb);
    uv_close((uv_handle_t *)&uc->timer, uc_closed_cb);
}

static struct hp_upconn *upconn_new(struct http_proxy *p, struct hp_pool *pl)
{
    struct hp_upconn *uc = calloc(1, sizeof(*uc));
    if (!uc)
        return NULL;
    uc->p = p;
    uc->pool = pl;
    pl->refs++;
    uv_tcp_init(p->loop, &uc->tcp);
    uv_timer_init(p->loop, &uc->timer);
    uc->tcp.data = uc;
    uc->timer.data = uc;
    uc->next = p->upconns;
    if (p->upconns)
        p->upconns->prev = uc;
    p->upconns = uc;
    p->nhandles++;
    p->st.upstream_active++;
    p->st.upstream_connects++;
    uc->state = US_CONNECTING;
    return uc;
}

static void uc_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct hp_upconn *uc = h->data;
    *buf = uv_buf_init(uc->p->rbuf, sizeof(uc->p->rbuf));
}

/* Asks the kernel to acknowledge at once: an upstream that writes its head
 * and body apart without TCP_NODELAY (Python's http.server, many others)
 * otherwise waits for our delayed ACK (40 ms) before the body, on every
 * request of a pooled connection. Linux resets the flag by itself, so it
 * is set again after each read that leaves the response incomplete. */
static void uc_quickack(struct hp_upconn *uc)
{
#ifdef TCP_QUICKACK
    uv_os_fd_t fd;
    int one = 1;
    if (uv_fileno((uv_handle_t *)&uc->tcp, &fd) == 0)
        setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
#else
    (void)uc;
#endif
}

static void uc_read(struct hp_upconn *uc, bool on)
{
    if (on && !(uc->flags & UF_READING)) {
        if (uv_read_start((uv_stream_t *)&uc->tcp, uc_alloc_cb, uc_read_cb) == 0)
            uc->flags |= UF_READING;
    } else if (!on && (uc->flags & UF_READING)) {
        uv_read_stop((uv_stream_t *)&uc->tcp);
        uc->flags &= (uint8_t)~UF_READING;
    }
}

static uint32_t tmo(uint32_t ms)
{
    return ms ? ms : DEFAULT_TIMEOUT_MS;
}

/* Re-arms the timer of an active or tunnelling connection from its state. */
static void uc_rearm(struct hp_upconn *uc)
{
    struct hp_req *r = uc->req;
    int kind = UT_NONE;
    uint32_t ms = 0;
    if (!r)
        return;
    if (uc->state == US_ACTIVE) {
        if (uc->tcp.write_queue_size > 0) {
            kind = UT_SEND;
            ms = tmo(r->route->timeout.send_ms);
        } else if ((r->flags & RQ_REQ_SENT) && !(uc->flags & UF_PAUSED)) {
            kind = UT_READ;
            ms = tmo(r->route->timeout.read_ms);
        }
    } else if (uc->state == US_TUNNEL) {
        kind = UT_READ;
        ms = tmo(r->route->timeout.read_ms);
    } else {
        return;
    }
    uc->timer_kind = (uint8_t)kind;
    if (kind == UT_NONE)
        uv_timer_stop(&uc->timer);
    else
        uv_timer_start(&uc->timer, uc_timer_cb, ms, 0);
}

static void pool_put(struct hp_upconn *uc, const struct upstream_rt *up)
{
    struct http_proxy *p = uc->p;
    struct hp_pool *pl = uc->pool;
    if (up->keepalive_size <= 0 || p->draining || p->freeing ||
        (up->keepalive_requests > 0 && uc->nreq >= (uint32_t)up->keepalive_requests)) {
        upconn_close(uc);
        return;
    }
    while (pl->nidle >= (uint32_t)up->keepalive_size && pl->tail)
        upconn_close(pl->tail);
    uc->iprev = NULL;
    uc->inext = pl->idle;
    if (pl->idle)
        pl->idle->iprev = uc;
    else
        pl->tail = uc;
    pl->idle = uc;
    pl->nidle++;
    p->st.upstream_idle++;
    p->st.upstream_active--;
    pool_keep_session(uc);
    uc->state = US_IDLE;
    uc->flags &= (uint8_t) ~(UF_REUSED | UF_PAUSED);
    uc_read(uc, true); /* a close or stray byte while idle retires it */
    uc->timer_kind = UT_IDLE;
    uv_timer_start(&uc->timer, uc_timer_cb, tmo(up->keepalive_idle_ms), 0);
}

static struct hp_upconn *pool_take(struct hp_pool *pl)
{
    struct hp_upconn *uc = pl->idle;
    idle_unlink(uc);
    uc->p->st.upstream_active++;
    uc->state = US_ACTIVE;
    uc->flags |= UF_REUSED;
    uv_timer_stop(&uc->timer);
    uc->timer_kind = UT_NONE;
    return uc;
}

void hp_up_detach(struct hp_req *r, bool reusable)
{
    struct hp_upconn *uc = r->uc;
    if (r->flags & RQ_NODE_STARTED) {
        r->flags &= ~RQ_NODE_STARTED;
        upstream_conn_end(r->up, r->node.index);
    }
    if (!uc)
        return;
    r->uc = NULL;
    uc->req = NULL;
    if (reusable && uc->state == US_ACTIVE && uc->wq == 0)
        pool_put(uc, r->up);
    else
        upconn_close(uc);
}

void hp_up_close_all(struct http_proxy *p)
{
    for (struct hp_upconn *uc = p->upconns; uc; uc = uc->next) {
        if (uc->req) {
            uc->req->uc = NULL;
            uc->req = NULL;
        }
        upconn_close(uc);
    }
}

void hp_up_free_pools(struct http_proxy *p)
{
    for (int b = 0; b < HP_POOL_BUCKETS; b++) {
        while (p->pools[b]) {
            struct hp_pool *pl = p->pools[b];
            p->pools[b] = pl->next;
            tls_session_free(pl->sess);
            free(pl);
        }
    }
    p->nkept = 0;
}

void hp_up_close_idle(struct http_proxy *p)
{
    for (struct hp_upconn *uc = p->upconns; uc; uc = uc->next)
        if (uc->state == US_IDLE)
            upconn_close(uc);
}

/* ---- the request head sent upstream ---- */

struct sbuf {
    char *b;
    size_t len, cap;
};

static void sb_add(struct sbuf *s, const char *d, size_t n)
{
    if (s->len + n > s->cap)
        n = s->cap - s->len; /* cannot happen: cap is computed; never overflow */
    memcpy(s->b + s->len, d, n);
    s->len += n;
}

static void sb_str(struct sbuf *s, const char *d)
{
    sb_add(s, d, strlen(d));
}

static bool req_hop_header(const char *n)
{
    static const char *const hop[] = {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "expect",
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
    };
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (strcasecmp(n, hop[i]) == 0)
            return true;
    return false;
}

/* "host" or "[v6]" plus ":port" unless 80. */
static void node_host(const struct upstream_node *nd, char *out, size_t len)
{
    bool v6 = strchr(nd->host, ':') != NULL && nd->host[0] != '[';
    if (nd->port == 80)
        snprintf(out, len, v6 ? "[%s]" : "%s", nd->host);
    else
        snprintf(out, len, v6 ? "[%s]:%u" : "%s:%u", nd->host, (unsigned)nd->port);
}

/* The Host of the client's request as sent upstream: a plugin's (e.g.
 * proxy-rewrite's host) with pass_host "pass", as APISIX; else r->host. */
static const char *client_host(const struct hp_req *r)
{
    if (r->pr && r->pr->host && r->up->pass_host == PASS_HOST_PASS)
        return r->pr->host;
    return r->host;
}

/* Removes from the lines in b (len bytes, "Name: value\r\n" each) those
 * whose name a plugin's set replaced. Returns the new length. */
static size_t drop_replaced(char *b, size_t len, const struct hp_edit *ed)
{
    size_t o = 0, i = 0;
    while (i < len) {
        char *eol = memchr(b + i, '\n', len - i);
        size_t ll = eol ? (size_t)(eol - (b + i)) + 1 : len - i;
        char name[64];
        char *colon = memchr(b + i, ':', ll);
        size_t nl = colon ? (size_t)(colon - (b + i)) : 0;
        bool drop = false;
        if (nl && nl < sizeof(name)) {
            memcpy(name, b + i, nl);
            name[nl] = '\0';
            drop = hp_plugin_replaced(ed, name);
        }
        if (!drop) {
            memmove(b + o, b + i, ll);
            o += ll;
        }
        i += ll;
    }
    return o;
}

static char *build_request_head(struct hp_req *r, size_t *out_len)
{
    const struct hp_head *h = &r->head;
    const struct upstream_rt *up = r->up;
    struct hp_client *c = r->c;
    const struct plugin_req *pr = r->pr;
    const struct hp_edit *ed = pr ? pr->req_edits : NULL;
    const char *method = pr && pr->method ? pr->method : r->method;
    const char *target = pr && pr->target ? pr->target : r->target;
    bool pbody = pr && (pr->flags & PF_BODY_READ); /* a plugin read the body: sent from there */
    char ip[64], nh[300], port[8], clen[32];
    netaddr_format_ip(&c->peer.sa, ip, sizeof(ip));
    snprintf(port, sizeof(port), "%u", (unsigned)c->p->server_port);
    const char *host = client_host(r);
    if (up->pass_host == PASS_HOST_NODE ||
        (up->pass_host == PASS_HOST_REWRITE && !(up->upstream_host && up->upstream_host[0])) ||
        !host) {
        node_host(&r->node, nh, sizeof(nh));
        host = nh;
    }
    if (up->pass_host == PASS_HOST_REWRITE && up->upstream_host && up->upstream_host[0])
        host = up->upstream_host;

    size_t cap = (size_t)h->len + (size_t)h->n * 4 + strlen(target) + strlen(host) +
                 strlen(method) + 512;
    if (r->host)
        cap += strlen(r->host);
    if (ed)
        cap += hp_plugin_emit(ed, NULL);
    if (pbody)
        cap += pr->body_len;
    struct sbuf s = {malloc(cap), 0, cap};
    if (!s.b)
        return NULL;
    sb_str(&s, method);
    sb_str(&s, " ");
    sb_str(&s, target);
    sb_str(&s, " HTTP/1.1\r\nHost: ");
    sb_str(&s, host);
    sb_str(&s, "\r\n");
    bool xff = false;
    for (uint32_t i = 0; i < h->n; i++) {
        const char *n = hp_hname(h, i);
        if (req_hop_header(n))
            continue;
        if (ed && hp_plugin_replaced(ed, n))
            continue;
        if (pbody && strcasecmp(n, "content-length") == 0)
            continue;
        sb_add(&s, n, h->h[i].name_len);
        sb_str(&s, ": ");
        sb_add(&s, hp_hvalue(h, i), h->h[i].value_len);
        sb_str(&s, "\r\n");
    }
    if (ed)
        s.len += hp_plugin_emit(ed, s.b + s.len);
    if (pbody) {
        snprintf(clen, sizeof(clen), "%zu", pr->body_len);
        sb_str(&s, "Content-Length: ");
        sb_str(&s, clen);
        sb_str(&s, "\r\n");
    }
    /* X-Forwarded-For: every value the client sent, then the client. A
     * plugin's set of one of these generated headers replaces it. */
    size_t xstart = s.len;
    sb_str(&s, "X-Forwarded-For: ");
    for (uint32_t i = 0; i < h->n; i++) {
        if (!hp_hname_is(h, i, "x-forwarded-for") || h->h[i].value_len == 0)
            continue;
        if (xff)
            sb_str(&s, ", ");
        sb_add(&s, hp_hvalue(h, i), h->h[i].value_len);
        xff = true;
    }
    if (xff)
        sb_str(&s, ", ");
    sb_str(&s, ip);
    sb_str(&s, "\r\nX-Real-IP: ");
    sb_str(&s, ip);
    sb_str(&s, c->tls ? "\r\nX-Forwarded-Proto: https\r\n" : "\r\nX-Forwarded-Proto: http\r\n");
    if (r->host) {
        sb_str(&s, "X-Forwarded-Host: ");
        sb_str(&s, r->host);
        sb_str(&s, "\r\n");
    }
    sb_str(&s, "X-Forwarded-Port: ");
    sb_str(&s, port);
    sb_str(&s, "\r\n");
    if (ed)
        s.len = xstart + drop_replaced(s.b + xstart, s.len - xstart, ed);
    if ((r->flags & RQ_CHUNKED) && !pbody)
        sb_str(&s, "Transfer-Encoding: chunked\r\n");
    if (r->flags & RQ_WS) {
        int ui = hp_hfind(h, "upgrade", 0);
        sb_str(&s, "Upgrade: ");
        sb_add(&s, hp_hvalue(h, (uint32_t)ui), h->h[ui].value_len);
        sb_str(&s, "\r\nConnection: upgrade\r\n\r\n");
    } else {
        sb_str(&s, up->keepalive_size > 0 ? "Connection: keep-alive\r\n\r\n"
                                          : "Connection: close\r\n\r\n");
    }
    if (pbody && pr->body_len)
        sb_add(&s, pr->body, pr->body_len);
    *out_len = s.len;
    return s.b;
}

/* ---- the response ---- */

static int rs_rc(struct hp_req *r, int rc)
{
    (void)r;
    return rc == HP_HEAD_OK ? 0 : HPE_USER;
}

static int rs_on_status(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    return rs_rc(r, hp_head_add(&r->rhead, HP_PART_FIRST, at, len));
}

static int rs_on_status_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    return rs_rc(r, hp_head_end(&r->rhead, HP_PART_FIRST));
}

static int rs_on_field(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    if (r->rhead.part == HP_PART_NONE && r->rhead.first_len == 0 && r->rhead.len == 0) {
        /* No reason phrase: keep the layout (first string, then headers). */
        int rc = hp_head_end(&r->rhead, HP_PART_FIRST);
        if (rc)
            return HPE_USER;
    }
    return rs_rc(r, hp_head_add(&r->rhead, HP_PART_NAME, at, len));
}

static int rs_on_field_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    return rs_rc(r, hp_head_end(&r->rhead, HP_PART_NAME));
}

static int rs_on_value(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    return rs_rc(r, hp_head_add(&r->rhead, HP_PART_VALUE, at, len));
}

static int rs_on_value_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    return rs_rc(r, hp_head_end(&r->rhead, HP_PART_VALUE));
}

static int rs_on_headers_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    int st = hp->status_code;
    r->rev = REV_HEAD;
    if ((r->flags & RQ_HEAD) || st == 204 || st == 304 || (st >= 100 && st < 200 && st != 101))
        hp->flags |= F_SKIPBODY;
    return HPE_PAUSED;
}

/* Writes response bytes to the client, the pending head first: head and
 * body leave in one writev. n <= 4. */
static bool resp_send(struct hp_req *r, const uv_buf_t *bufs, unsigned n)
{
    if (!r->ohead)
        return hp_client_send(r->c, bufs, n);
    uv_buf_t all[5];
    all[0] = uv_buf_init(r->ohead, (unsigned)r->ohead_len);
    for (unsigned i = 0; i < n && i < 4; i++)
        all[i + 1] = bufs[i];
    char *h = r->ohead;
    r->ohead = NULL;
    bool ok = hp_client_send(r->c, all, n + 1);
    free(h);
    return ok;
}

static bool resp_flush(struct hp_req *r)
{
    return r->ohead ? resp_send(r, NULL, 0) : true;
}

static int rs_on_body(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    r->body_out += len;
    if (r->pr)
        hp_plugin_body_filter(r, at, len); /* observe only: it cannot close anything */
    if (r->mode == BM_CHUNK) {
        char sz[24];
        int n = snprintf(sz, sizeof(sz), "%zx\r\n", len);
        uv_buf_t b[3] = {uv_buf_init(sz, (unsigned)n), uv_buf_init((char *)at, (unsigned)len),
                         uv_buf_init((char *)"\r\n", 2)};
        if (!resp_send(r, b, 3))
            return HPE_USER;
    } else if (r->mode == BM_DECHUNK) {
        uv_buf_t b = uv_buf_init((char *)at, (unsigned)len);
        if (!resp_send(r, &b, 1))
            return HPE_USER;
    }
    return 0;
}

static int rs_on_message_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    r->rev = REV_END;
    if (llhttp_should_keep_alive(hp))
        r->flags |= RQ_UP_KEEP;
    else
        r->flags &= ~RQ_UP_KEEP;
    return HPE_PAUSED;
}

static const llhttp_settings_t resp_settings = {
    .on_status = rs_on_status,
    .on_status_complete = rs_on_status_complete,
    .on_header_field = rs_on_field,
    .on_header_field_complete = rs_on_field_complete,
    .on_header_value = rs_on_value,
    .on_header_value_complete = rs_on_value_complete,
    .on_headers_complete = rs_on_headers_complete,
    .on_body = rs_on_body,
    .on_message_complete = rs_on_message_complete,
};

static bool resp_hop_header(const char *n, bool upgrade)
{
    static const char *const hop[] = {"connection", "keep-alive",        "proxy-connection", "te",
                                      "trailer",    "transfer-encoding", "upgrade"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (strcasecmp(n, hop[i]) == 0)
            return !(upgrade && i == 6);
    return false;
}

/* Builds the head for the client from the upstream's. */
static char *build_response_head(struct hp_req *r, int st, const char *te, bool keep, bool upgrade,
                                 size_t *out_len)
{
    const struct hp_head *h = &r->rhead;
    const struct hp_edit *ed = r->pr ? r->pr->resp_edits : NULL;
    size_t cap = (size_t)h->len + (size_t)h->n * 4 + 256;
    if (ed)
        cap += hp_plugin_emit(ed, NULL);
    struct sbuf s = {malloc(cap), 0, cap};
    if (!s.b)
        return NULL;
    char line[64];
    snprintf(line, sizeof(line), "HTTP/1.1 %d ", st);
    sb_str(&s, line);
    if (h->first_len)
        sb_add(&s, h->buf, h->first_len);
    else
        sb_str(&s, hp_status_reason(st));
    sb_str(&s, "\r\n");
    for (uint32_t i = 0; i < h->n; i++) {
        const char *n = hp_hname(h, i);
        if (resp_hop_header(n, upgrade))
            continue;
        if (te && strcasecmp(n, "content-length") == 0)
            continue; /* never both framings */
        if (ed && hp_plugin_replaced(ed, n))
            continue;
        sb_add(&s, n, h->h[i].name_len);
        sb_str(&s, ": ");
        sb_add(&s, hp_hvalue(h, i), h->h[i].value_len);
        sb_str(&s, "\r\n");
    }
    if (ed)
        s.len += hp_plugin_emit(ed, s.b + s.len);
    if (te) {
        sb_str(&s, "Transfer-Encoding: ");
        sb_str(&s, te);
        sb_str(&s, "\r\n");
    }
    sb_str(&s, upgrade ? "Connection: upgrade\r\n\r\n"
               : keep  ? "Connection: keep-alive\r\n\r\n"
                       : "Connection: close\r\n\r\n");
    *out_len = s.len;
    return s.b;
}

static void attempt_cleanup(struct hp_req *r, int status, bool report)
{
    struct hp_upconn *uc = r->uc;
    if (uc) {
        r->uc = NULL;
        uc->req = NULL;
        upconn_close(uc);
    }
    if (report)
        upstream_report(r->up, r->node.index, false, 0);
    if (r->flags & RQ_NODE_STARTED) {
        r->flags &= ~RQ_NODE_STARTED;
        upstream_conn_end(r->up, r->node.index);
    }
    hp_log_field_add(r->up_status, status == 504 ? "504" : "502");
    r->last_fail = status;
}

/* The current attempt failed before any response byte reached the client:
 * retry (when allowed and nothing of the body was consumed) or answer. */
static void attempt_failed(struct hp_req *r, int status, bool report, bool retry)
{
    attempt_cleanup(r, status, report);
    if (retry && !(r->flags & (RQ_BODY_FWD | RQ_RESP_STARTED)))
        attempt(r);
    else
        hp_req_answer_error(r, status);
}

/* Switches to a raw tunnel after a 101; rest is what followed the head. */
static void start_tunnel(struct hp_req *r, const char *rest, size_t restlen)
{
    struct hp_client *c = r->c;
    struct hp_upconn *uc = r->uc;
    size_t hl;
    if (r->pr)
        hp_plugin_header_filter(r, 101, true);
    char *head = build_response_head(r, 101, NULL, false, true, &hl);
    if (!head) {
        hp_client_close(c);
        return;
    }
    r->status = 101;
    r->flags |= RQ_RESP_STARTED;
    hp_head_free(&r->rhead);
    uv_buf_t b[2] = {uv_buf_init(head, (unsigned)hl), uv_buf_init((char *)rest, (unsigned)restlen)};
    bool ok = hp_client_send(c, b, restlen ? 2 : 1);
    free(head);
    if (!ok)
        return;
    c->state = CS_TUNNEL;
    uc->state = US_TUNNEL;
    if (c->wq > HP_HIGH_WATER) {
        uc_read(uc, false);
        uc->flags |= UF_PAUSED;
    }
    uc_rearm(uc);
    hp_client_drive(c);
}

/* The response head arrived (paused after it). Returns 0 to go on parsing,
 * -1 when the request no longer needs this data (answered, tunnelled,
 * closed). */
static int response_head(struct hp_req *r, const char *rest, size_t restlen)
{
    struct hp_client *c = r->c;
    struct http_proxy *p = c->p;
    llhttp_t *hp = &r->rparser;
    int st = hp->status_code;
    if (st >= 100 && st < 200 && st != 101) {
        /* Interim answers are dropped: "100 Continue" is ours to send. */
        hp_head_free(&r->rhead);
        hp_head_init(&r->rhead, HP_RESP_HEAD_MAX, HP_RESP_HEADERS_MAX);
        return 0;
    }
    r->t_up_head = uv_hrtime();
    r->up_last = st;
    upstream_report(r->up, r->node.index, st < 500,
                    (uint32_t)((r->t_up_head - r->t_try) / 1000000));
    char sb[16];
    snprintf(sb, sizeof(sb), "%d", st);
    hp_log_field_add(r->up_status, sb);
    free(r->uhead);
    r->uhead = NULL;
    if (st == 101) {
        if (!(r->flags & RQ_WS)) {
            log_warn("worker %d: upstream %s sent 101 to a request without upgrade", p->o.worker_id,
                     r->node.addr);
            attempt_failed(r, 502, false, false);
            return -1;
        }
        start_tunnel(r, rest, restlen);
        return -1;
    }
    if ((hp->flags & F_TRANSFER_ENCODING) && !(hp->flags & F_CHUNKED)) {
        log_warn("worker %d: upstream %s sent an unsupported Transfer-Encoding", p->o.worker_id,
                 r->node.addr);
        attempt_failed(r, 502, false, false);
        return -1;
    }
    bool http10 = r->flags & RQ_HTTP10;
    bool keep = (r->flags & RQ_KEEPALIVE) && !(r->flags & RQ_CLOSE) && !p->draining &&
                (r->flags & RQ_BODY_DONE);
    const char *te = NULL;
    bool nobody = (r->flags & RQ_HEAD) || st == 204 || st == 304;
    if (nobody) {
        r->mode = BM_NONE;
        if ((hp->flags & F_CHUNKED) && !http10)
            te = "chunked";
    } else if (hp->flags & F_CHUNKED) {
        if (http10) {
            r->mode = BM_DECHUNK;
            keep = false;
        } else {
            r->mode = BM_RAW;
            te = "chunked";
        }
    } else if (hp->flags & F_CONTENT_LENGTH) {
        r->mode = BM_RAW;
    } else if (http10) {
        r->mode = BM_RAW; /* until close, and the client's connection ends too */
        keep = false;
    } else {
        r->mode = BM_CHUNK;
        te = "chunked";
    }
    if (!keep)
        r->flags |= RQ_CLOSE;
    size_t hl;
    if (r->pr)
        hp_plugin_header_filter(r, st, true);
    char *head = build_response_head(r, st, te, keep, false, &hl);
    hp_head_free(&r->rhead);
    if (!head) {
        hp_client_close(c);
        return -1;
    }
    r->status = st;
    r->flags |= RQ_RESP_STARTED;
    r->rphase = RP_BODY;
    r->ohead = head; /* written with the first body bytes, or when this read ends */
    r->ohead_len = hl;
    return 0;
}

static void response_complete(struct hp_req *r)
{
    struct hp_client *c = r->c;
    struct hp_upconn *uc = r->uc;
    r->flags |= RQ_RESP_DONE;
    if (r->mode == BM_CHUNK) {
        uv_buf_t b = uv_buf_init((char *)"0\r\n\r\n", 5);
        if (!resp_send(r, &b, 1))
            return;
    } else if (!resp_flush(r)) {
        return;
    }
    if (!(r->flags & RQ_BODY_DONE))
        r->flags |= RQ_CLOSE; /* answered before the whole body: no reuse */
    bool reusable = (r->flags & RQ_UP_KEEP) && (r->flags & RQ_BODY_DONE) && uc && uc->wq == 0;
    hp_up_detach(r, reusable);
    hp_client_drive(c);
}

/* Feeds response bytes; forwards body spans in BM_RAW. */
static void resp_feed(struct hp_req *r, const char *data, size_t n)
{
    struct hp_upconn *uc = r->uc;
    struct hp_client *c = r->c;
    const char *cur = data, *end = data + n;
    r->flags |= RQ_UP_BYTES;
    /* Runs until llhttp consumed everything: after a pause at a head with
     * no body, a call with no bytes left still completes the message. */
    for (;;) {
        r->rev = REV_NONE;
        r->rhead.exec_start = cur;
        llhttp_errno_t e = llhttp_execute(&r->rparser, cur, (size_t)(end - cur));
        const char *pos = end;
        if (e != HPE_OK) {
            pos = llhttp_get_error_pos(&r->rparser);
            if (!pos || pos < cur || pos > end)
                pos = end;
        }
        if (r->rphase == RP_BODY && r->mode == BM_RAW && pos > cur && r->rev != REV_HEAD) {
            uv_buf_t b = uv_buf_init((char *)cur, (unsigned)(pos - cur));
            if (!resp_send(r, &b, 1))
                return;
        }
        if (c->state == CS_CLOSING || r->uc != uc)
            return;
        if (e == HPE_OK)
            break;
        if (e == HPE_PAUSED) {
            llhttp_resume(&r->rparser);
            cur = pos;
            if (r->rev == REV_HEAD) {
                if (response_head(r, cur, (size_t)(end - cur)) < 0)
                    return;
                continue;
            }
            if (r->rev == REV_END) {
                if (r->rphase == RP_HEAD)
                    continue; /* the end of an interim 1xx */
                if (cur < end)
                    r->flags &= ~RQ_UP_KEEP; /* bytes after the response */
                response_complete(r);
                return;
            }
            continue;
        }
        if (r->rphase == RP_HEAD) {
            log_warn("worker %d: upstream %s sent an invalid response: %s", c->p->o.worker_id,
                     r->node.addr, llhttp_get_error_reason(&r->rparser));
            attempt_failed(r, 502, true, false);
        } else {
            hp_client_close(c);
        }
        return;
    }
    if (!resp_flush(r))
        return;
    if (c->wq > HP_HIGH_WATER) {
        uc_read(uc, false);
        uc->flags |= UF_PAUSED;
    }
    uc_quickack(uc);
    uc_rearm(uc);
}

static int connect_node(struct hp_req *r, bool use_pool);

/* Replaces a dead pooled connection by a fresh one to the same node. */
static void fresh_retry(struct hp_req *r)
{
    struct hp_upconn *uc = r->uc;
    r->flags |= RQ_FRESH_RETRY;
    r->uc = NULL;
    uc->req = NULL;
    upconn_close(uc);
    if (connect_node(r, false) < 0)
        attempt_failed(r, 502, true, true);
}

static bool can_fresh_retry(const struct hp_req *r, const struct hp_upconn *uc)
{
    return (uc->flags & UF_REUSED) && !(r->flags & RQ_UP_BYTES) &&
           !(r->flags & (RQ_FRESH_RETRY | RQ_BODY_FWD | RQ_RESP_STARTED));
}

/* An error or EOF on an active connection. */
static void up_io_error(struct hp_upconn *uc, int err)
{
    struct hp_req *r = uc->req;
    struct hp_client *c = r->c;
    if (err == UV_EOF && r->rphase == RP_BODY) {
        r->rev = REV_NONE;
        llhttp_errno_t e = llhttp_finish(&r->rparser);
        if ((e == HPE_OK || e == HPE_PAUSED) && r->rev == REV_END) {
            r->flags &= ~RQ_UP_KEEP;
            response_complete(r);
            return;
        }
    }
    if (r->flags & RQ_RESP_STARTED) {
        /* Mid-body: the client must not take a truncated body for whole. */
        hp_client_close(c);
        return;
    }
    if (can_fresh_retry(r, uc)) {
        fresh_retry(r);
        return;
    }
    log_warn("worker %d: upstream %s: %s before the response header", c->p->o.worker_id,
             r->node.addr, err == UV_EOF ? "connection closed" : uv_strerror(err));
    attempt_failed(r, 502, true, false);
}

static void tunnel_from_upstream(struct hp_upconn *uc, ssize_t nread, const uv_buf_t *buf)
{
    struct hp_req *r = uc->req;
    struct hp_client *c = r->c;
    if (nread < 0) {
        if (nread == UV_EOF) {
            uc->flags |= UF_EOF;
            uc_read(uc, false);
            if (c->flags & CF_EOF)
                hp_client_close(c);
            else
                hp_client_shutdown(c);
            return;
        }
        hp_client_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)nread);
    if (!hp_client_send(c, &b, 1))
        return;
    if (c->wq > HP_HIGH_WATER) {
        uc_read(uc, false);
        uc->flags |= UF_PAUSED;
    }
    uc_rearm(uc);
}

/* The TLS handshake with an https upstream failed (or its connection
 * did): retried as a connect failure. */
static void handshake_failed(struct hp_upconn *uc, const char *why)
{
    struct hp_req *r = uc->req;
    log_warn("worker %d: upstream %s: TLS handshake failed: %s", r->c->p->o.worker_id, r->node.addr,
             why);
    attempt_failed(r, 502, true, true);
}

/* Plaintext (or an error or EOF) from an upstream connection. */
static void uc_input(struct hp_upconn *uc, ssize_t nread, const uv_buf_t *buf)
{
    if (uc->state == US_IDLE || !uc->req) {
        upconn_close(uc); /* closed by the upstream, or a stray byte */
        return;
    }
    if (uc->state == US_HANDSHAKE) {
        handshake_failed(uc, nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
        return;
    }
    if (uc->state == US_TUNNEL) {
        tunnel_from_upstream(uc, nread, buf);
        return;
    }
    if (nread < 0) {
        up_io_error(uc, (int)nread);
        return;
    }
    resp_feed(uc->req, buf->base, (size_t)nread);
}

static bool uc_tls_flush(struct hp_upconn *uc)
{
    int rc = hp_tls_flush(uc->p, (uv_stream_t *)&uc->tcp, uc->tls, up_write_cb, &uc->wq);
    if (rc < 0) {
        uv_buf_t none = uv_buf_init(NULL, 0);
        uc_input(uc, rc, &none);
        return false;
    }
    return true;
}

static int send_head(struct hp_req *r);

/* Ciphertext from an https upstream: the handshake (then the request head
 * goes out), then records decrypted into the shared buffer (the ciphertext
 * was copied out of it first) and handled as a plain read each. */
static void uc_tls_read(struct hp_upconn *uc, const char *data, size_t n)
{
    struct http_proxy *p = uc->p;
    uv_buf_t none = uv_buf_init(NULL, 0);
    if (tls_conn_feed(uc->tls, data, n) < 0) {
        uc_input(uc, UV_EPROTO, &none);
        return;
    }
    if (uc->state == US_HANDSHAKE) {
        int rc = tls_conn_handshake(uc->tls);
        if (!uc_tls_flush(uc))
            return;
        if (rc == -EAGAIN)
            return;
        if (rc < 0) {
            handshake_failed(uc, tls_conn_error(uc->tls));
            return;
        }
        uc->state = US_ACTIVE;
        uv_timer_stop(&uc->timer);
        uc->timer_kind = UT_NONE;
        struct hp_req *r = uc->req;
        if (send_head(r) < 0) {
            attempt_failed(r, 502, false, true);
            return;
        }
        if (uc->state != US_ACTIVE || uc->req != r)
            return;
    }
    for (;;) {
        /* Every record of this read at once, as one plain read would be:
         * bytes after a response then make its connection not reusable. */
        size_t got = 0;
        long k = 0;
        while (got < sizeof(p->rbuf) &&
               (k = tls_conn_read(uc->tls, p->rbuf + got, sizeof(p->rbuf) - got)) > 0)
            got += (size_t)k;
        if (got) {
            uv_buf_t b = uv_buf_init(p->rbuf, (unsigned)got);
            uc_input(uc, (ssize_t)got, &b);
            if (uc->state == US_CLOSING)
                return;
            if (k > 0)
                continue; /* the buffer was full */
        }
        if (!uc_tls_flush(uc))
            return;
        if (k == -EAGAIN)
            return;
        if (k != 0)
            log_warn("worker %d: upstream connection: TLS error: %s", p->o.worker_id,
                     tls_conn_error(uc->tls));
        uc_input(uc, k == 0 ? UV_EOF : UV_EPROTO, &none);
        return;
    }
}

static void uc_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct hp_upconn *uc = s->data;
    if (nread == 0 || uc->state == US_CLOSING)
        return;
    if (uc->tls && nread > 0)
        uc_tls_read(uc, buf->base, (size_t)nread);
    else
        uc_input(uc, nread, buf);
}

static void up_write_cb(uv_write_t *w, int status)
{
    struct hp_upconn *uc = w->data;
    hp_write_done(uc->p, w);
    if (uc->state == US_CLOSING)
        return;
    struct hp_req *r = uc->req;
    if (!r) {
        if (status < 0)
            upconn_close(uc);
        return;
    }
    if (status < 0) {
        if (uc->state == US_HANDSHAKE)
            handshake_failed(uc, uv_strerror(status));
        else if (uc->state == US_TUNNEL || (r->flags & RQ_RESP_STARTED))
            hp_client_close(r->c);
        else
            up_io_error(uc, status);
        return;
    }
    if (uc->state == US_HANDSHAKE)
        return; /* the connect timer runs until the handshake ends */
    uc_rearm(uc);
    if (uc->wq <= HP_LOW_WATER)
        hp_client_drive(r->c);
}

static void uc_timer_cb(uv_timer_t *t)
{
    struct hp_upconn *uc = t->data;
    if (uc->state == US_CLOSING)
        return;
    struct hp_req *r = uc->req;
    if (uc->state == US_IDLE || !r) {
        upconn_close(uc);
        return;
    }
    struct hp_client *c = r->c;
    int wid = c->p->o.worker_id;
    switch (uc->timer_kind) {
    case UT_CONNECT:
        log_warn("worker %d: upstream %s: %s timed out", wid, r->node.addr,
                 uc->state == US_HANDSHAKE ? "TLS handshake" : "connect");
        attempt_failed(r, 504, true, true);
        return;
    case UT_SEND:
    case UT_READ:
        if (uc->state == US_TUNNEL || (r->flags & RQ_RESP_STARTED)) {
            hp_client_close(c);
            return;
        }
        log_warn("worker %d: upstream %s: timed out %s", wid, r->node.addr,
                 uc->timer_kind == UT_SEND ? "sending the request" : "reading the response header");
        attempt_failed(r, 504, true, false);
        return;
    default:
        return;
    }
}

/* Queues the request head on r->uc (connected) and lets the body flow. */
static int send_head(struct hp_req *r)
{
    struct hp_upconn *uc = r->uc;
    struct http_proxy *p = uc->p;
    free(r->uhead);
    r->uhead = build_request_head(r, &r->uhead_len);
    if (!r->uhead)
        return UV_ENOMEM;
    llhttp_init(&r->rparser, HTTP_RESPONSE, &resp_settings);
    r->rparser.data = r;
    hp_head_free(&r->rhead);
    hp_head_init(&r->rhead, HP_RESP_HEAD_MAX, HP_RESP_HEADERS_MAX);
    r->rphase = RP_HEAD;
    r->flags &= ~(RQ_UP_BYTES | RQ_UP_KEEP | RQ_REQ_SENT | RQ_HEAD_QUEUED);
    uc->nreq++;
    uv_buf_t b = uv_buf_init(r->uhead, (unsigned)r->uhead_len);
    int rc = hp_send(p, (uv_stream_t *)&uc->tcp, uc->tls, &b, 1, up_write_cb, &uc->wq);
    if (rc < 0)
        return rc;
    r->flags |= RQ_HEAD_QUEUED;
    if (r->flags & RQ_BODY_DONE)
        r->flags |= RQ_REQ_SENT;
    uc_read(uc, true);
    uc_rearm(uc);
    hp_client_drive(r->c);
    return 0;
}

static void connect_cb(uv_connect_t *cr, int status)
{
    struct hp_upconn *uc = cr->handle->data;
    if (uc->state == US_CLOSING || status == UV_ECANCELED)
        return;
    struct hp_req *r = uc->req;
    if (!r) {
        upconn_close(uc);
        return;
    }
    if (status < 0) {
        log_warn("worker %d: upstream %s: connect: %s", r->c->p->o.worker_id, r->node.addr,
                 uv_strerror(status));
        attempt_failed(r, 502, true, true);
        return;
    }
    uv_tcp_nodelay(&uc->tcp, 1);
    if (uc->tls) {
        /* The ClientHello is ready; the connect timer keeps running. */
        uc->state = US_HANDSHAKE;
        uc_read(uc, true);
        uc_tls_flush(uc);
        return;
    }
    uc->state = US_ACTIVE;
    uv_timer_stop(&uc->timer);
    uc->timer_kind = UT_NONE;
    if (send_head(r) < 0)
        attempt_failed(r, 502, false, true);
}

static int tcp_connect(struct hp_upconn *uc, const struct sockaddr *sa)
{
    uc->state = US_CONNECTING;
    return uv_tcp_connect(&uc->creq, &uc->tcp, sa, connect_cb);
}

static void resolve_cb(uv_getaddrinfo_t *gai, int status, struct addrinfo *res)
{
    struct hp_resolve *rs = container_of(gai, struct hp_resolve, gai);
    struct hp_upconn *uc = rs->uc;
    struct http_proxy *p = rs->p;
    free(rs);
    if (!uc) {
        if (res)
            uv_freeaddrinfo(res);
        hp_handle_gone(p);
        return;
    }
    uc->res = NULL;
    struct hp_req *r = uc->req;
    int rc = status;
    if (rc == 0 && res) {
        /* One address per attempt: IPv4 first ("localhost" resolves to ::1
         * first on many hosts while services often listen on 127.0.0.1). */
        const struct addrinfo *ai = res;
        for (const struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == AF_INET) {
                ai = a;
                break;
            }
        union hp_sockaddr sa;
        memset(&sa, 0, sizeof(sa));
        memcpy(&sa, ai->ai_addr, ai->ai_addrlen < sizeof(sa) ? ai->ai_addrlen : sizeof(sa));
        if (sa.sa.sa_family == AF_INET)
            sa.in4.sin_port = htons(r->node.port);
        else
            sa.in6.sin6_port = htons(r->node.port);
        rc = tcp_connect(uc, &sa.sa);
    } else if (rc == 0) {
        rc = UV_EAI_NONAME;
    }
    if (res)
        uv_freeaddrinfo(res);
    if (rc < 0) {
        log_warn("worker %d: upstream %s: resolve/connect: %s", p->o.worker_id, r->node.addr,
                 uv_strerror(rc));
        attempt_failed(r, 502, true, true);
    }
    hp_handle_gone(p);
}

/* Starts the current attempt on r->node. 0: under way (or head queued on a
 * pooled connection); < 0: failed at once (r->uc left for the caller). */
/* The name an https upstream is asked for (SNI) and verified against: the
 * Host sent upstream, without its port (APISIX: proxy_ssl_name
 * $upstream_host), lowercase. */
static void upstream_server_name(const struct hp_req *r, char *out, size_t len)
{
    const struct upstream_rt *up = r->up;
    const char *h = client_host(r);
    if (up->pass_host == PASS_HOST_REWRITE && up->upstream_host && up->upstream_host[0])
        h = up->upstream_host;
    else if (up->pass_host != PASS_HOST_PASS || !h)
        h = r->node.host;
    size_t n = strlen(h);
    if (h[0] == '[') {
        const char *e = memchr(h, ']', n);
        if (e) {
            h++;
            n = (size_t)(e - h);
        }
    } else {
        const char *colon = memchr(h, ':', n);
        if (colon && !strchr(colon + 1, ':'))
            n = (size_t)(colon - h); /* "name:port"; a bare IPv6 address stays whole */
    }
    if (n >= len)
        n = len - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)(h[i] >= 'A' && h[i] <= 'Z' ? h[i] + 32 : h[i]);
    out[n] = '\0';
}

static int connect_node(struct hp_req *r, bool use_pool)
{
    struct http_proxy *p = r->c->p;
    struct tls_client_ctx *cc = NULL;
    char sni[256], key[384];
    const char *pkey = r->node.addr;
    if (r->up->scheme == UP_HTTPS) {
        char err[256] = "out of memory";
        struct tls_ctx_store *st = hp_tls_store(p);
        if (st)
            cc = tls_ctx_store_client(st, r->up->conf, r->snap ? r->snap->resources : NULL, err,
                                      sizeof(err));
        if (!cc) {
            log_warn("worker %d: upstream %s: TLS: %s", p->o.worker_id, r->up->id, err);
            return UV_EINVAL;
        }
        upstream_server_name(r, sni, sizeof(sni));
        snprintf(key, sizeof(key), "https://%s@%s#%016llx", sni, r->node.addr,
                 (unsigned long long)tls_client_ctx_fingerprint(cc));
        pkey = key;
    }
    struct hp_pool *pl = pool_get(p, pkey);
    if (!pl)
        return UV_ENOMEM;
    if (use_pool && pl->idle) {
        struct hp_upconn *uc = pool_take(pl);
        r->uc = uc;
        uc->req = r;
        return send_head(r);
    }
    struct hp_upconn *uc = upconn_new(p, pl);
    if (!uc) {
        if (pl->refs == 0) {
            pl->refs = 1;
            pool_unref(p, pl);
        }
        return UV_ENOMEM;
    }
    r->uc = uc;
    uc->req = r;
    /* No ALPN is offered, as nginx's proxy_ssl does: HTTP/1.1 is implied. */
    if (cc && !(uc->tls = tls_conn_new_client(cc, sni[0] ? sni : NULL, NULL, pl->sess)))
        return UV_ENOMEM;
    uc->timer_kind = UT_CONNECT;
    uv_timer_start(&uc->timer, uc_timer_cb, tmo(r->route->timeout.connect_ms), 0);
    union hp_sockaddr sa;
    memset(&sa, 0, sizeof(sa));
    if (uv_ip4_addr(r->node.host, r->node.port, &sa.in4) == 0 ||
        uv_ip6_addr(r->node.host, r->node.port, &sa.in6) == 0)
        return tcp_connect(uc, &sa.sa);
    struct hp_resolve *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return UV_ENOMEM;
    rs->uc = uc;
    rs->p = p;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)r->node.port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(p->loop, &rs->gai, resolve_cb, r->node.host, port, &hints);
    if (rc < 0) {
        free(rs);
        return rc;
    }
    p->nhandles++;
    uc->res = rs;
    uc->state = US_RESOLVING;
    return 0;
}

/* Picks nodes and starts attempts until one is under way; answers the
 * client when none is left. */
static void attempt(struct hp_req *r)
{
    struct upstream_rt *up = r->up;
    struct http_proxy *p = r->c->p;
    for (;;) {
        if (r->attempts > 0) {
            if (up->retries >= 0 && r->attempts > up->retries)
                break;
            if (up->retry_timeout_ms && uv_now(p->loop) - r->t_attempt_ms >= up->retry_timeout_ms)
                break;
            if (r->attempts >= HP_MAX_ATTEMPTS)
                break;
        }
        struct upstream_node nd;
        if (upstream_pick(up, r->hashkey, r->hashkey_len, &r->tried, &nd) < 0) {
            if (r->attempts == 0)
                log_warn("worker %d: route %s: no valid upstream node", p->o.worker_id,
                         r->route->id);
            break;
        }
        bool dup = false;
        for (int i = 0; i < r->attempts; i++)
            dup |= r->tried_idx[i] == nd.index;
        if (dup)
            break; /* index >= 64 cannot be masked: stop rather than loop */
        r->tried_idx[r->attempts++] = nd.index;
        if (nd.index >= 0 && nd.index < 64)
            r->tried |= 1ull << nd.index;
        r->node = nd;
        r->t_try = uv_hrtime();
        upstream_conn_start(up, nd.index);
        r->flags |= RQ_NODE_STARTED;
        hp_log_field_add(r->up_addr, nd.addr);
        int rc = connect_node(r, true);
        if (rc == 0)
            return;
        if (rc == UV_EINVAL) { /* the upstream's TLS settings: no node does better */
            attempt_cleanup(r, 502, false);
            break;
        }
        log_warn("worker %d: upstream %s: %s", p->o.worker_id, nd.addr, uv_strerror(rc));
        attempt_cleanup(r, 502, true);
    }
    hp_req_answer_error(r, r->last_fail ? r->last_fail : 502);
}

void hp_up_start(struct hp_req *r)
{
    r->t_up_start = uv_hrtime();
    r->t_attempt_ms = uv_now(r->c->p->loop);
    attempt(r);
}

bool hp_up_writable(const struct hp_req *r)
{
    const struct hp_upconn *uc = r->uc;
    return uc && (uc->state == US_ACTIVE || uc->state == US_TUNNEL) &&
           (r->flags & RQ_HEAD_QUEUED) && !(uc->flags & UF_SHUT) && uc->wq <= HP_HIGH_WATER;
}

bool hp_up_send(struct hp_req *r, const char *data, size_t n)
{
    struct hp_upconn *uc = r->uc;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)n);
    int rc = hp_send(uc->p, (uv_stream_t *)&uc->tcp, uc->tls, &b, 1, up_write_cb, &uc->wq);
    if (rc < 0) {
        if (uc->state == US_TUNNEL || (r->flags & RQ_RESP_STARTED))
            hp_client_close(r->c);
        else
            attempt_failed(r, 502, true, false);
        return false;
    }
    uc_rearm(uc);
    return true;
}

void hp_up_request_done(struct hp_req *r)
{
    r->flags |= RQ_REQ_SENT;
    if (r->uc)
        uc_rearm(r->uc);
}

void hp_up_client_drained(struct hp_req *r)
{
    struct hp_upconn *uc = r->uc;
    if (!uc || !(uc->flags & UF_PAUSED) || uc->state == US_CLOSING)
        return;
    uc->flags &= (uint8_t)~UF_PAUSED;
    if (!(uc->flags & UF_EOF))
        uc_read(uc, true);
    uc_rearm(uc);
}

static void up_shutdown_cb(uv_shutdown_t *sr, int status)
{
    struct hp_upconn *uc = sr->data;
    free(sr);
    if (status < 0 && uc->state != US_CLOSING && uc->req)
        hp_client_close(uc->req->c);
}

void hp_up_client_eof(struct hp_req *r)
{
    struct hp_upconn *uc = r->uc;
    if (!uc || (uc->flags & UF_EOF)) {
        hp_client_close(r->c);
        return;
    }
    if (uc->flags & UF_SHUT)
        return;
    if (uc->tls &&
        (tls_conn_shutdown(uc->tls) < 0 ||
         hp_tls_flush(uc->p, (uv_stream_t *)&uc->tcp, uc->tls, up_write_cb, &uc->wq) < 0)) {
        hp_client_close(r->c); /* close_notify first, then the FIN */
        return;
    }
    uv_shutdown_t *sr = malloc(sizeof(*sr));
    if (!sr) {
        hp_client_close(r->c);
        return;
    }
    sr->data = uc;
    if (uv_shutdown(sr, (uv_stream_t *)&uc->tcp, up_shutdown_cb) < 0) {
        free(sr);
        hp_client_close(r->c);
        return;
    }
    uc->flags |= UF_SHUT;
}
