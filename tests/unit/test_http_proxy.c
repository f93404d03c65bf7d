/*
 * test_http_proxy: the HTTP proxy engine (dataplane/http_proxy.c and its
 * http_*.c helpers) against real sockets on 127.0.0.1.
 *
 * Each test starts the proxy on its own libuv loop in a thread, upstream
 * servers in threads (blocking sockets, llhttp for parsing, behaviour chosen
 * by the request path), and talks to the proxy with blocking client
 * sockets. snapshot.h is served by a small fake below (routes by path
 * prefix and optional host, round-robin over up to 8 nodes), so the engine is
 * tested on its own.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <llhttp.h>
#include <uv.h>

#include "check.h"
#include "http_conn.h"
#include "http_proxy.h"
#include "log.h"
#include "plugin.h"
#include "snapshot.h"

/* ------------------------------------------------------------------ */
/* Fake snapshot                                                       */
/* ------------------------------------------------------------------ */

#define MAXN 8

struct balancer {
    int n;
    struct {
        char host[64];
        uint16_t port;
        char addr[80];
    } nodes[MAXN];
    int rr;
    atomic_int starts, ends, fails, oks;
};

struct fake_route {
    char prefix[64];
    char host[64]; /* "" = any */
    char var[32];  /* "" = none; else var must equal val */
    char val[64];
    struct route_rt rt;
};

static struct {
    struct snapshot snap;
    struct fake_route routes[16];
    int nroutes;
    struct upstream_rt ups[16];
    struct balancer bals[16];
    int nups;
    atomic_int match_calls;
    char last_key[128]; /* chash key of the last pick */
} fk;

void snapshot_unref(struct snapshot *s)
{
    s->refs--;
}

const struct route_rt *snapshot_match_ex(const struct snapshot *s, const struct route_query *q,
                                         const char **mu, const char **mh)
{
    if (mu)
        *mu = NULL;
    if (mh)
        *mh = NULL;
    return snapshot_match(s, q);
}

const struct route_rt *snapshot_match(const struct snapshot *s, const struct route_query *q)
{
    (void)s;
    fk.match_calls++;
    for (int i = 0; i < fk.nroutes; i++) {
        struct fake_route *r = &fk.routes[i];
        if (strncmp(q->path, r->prefix, strlen(r->prefix)) != 0)
            continue;
        if (r->host[0]) {
            if (!q->host)
                continue;
            size_t hl = strcspn(q->host, ":");
            if (hl != strlen(r->host) || strncasecmp(q->host, r->host, hl) != 0)
                continue;
        }
        if (r->var[0]) {
            size_t vl = 0;
            const char *v = q->var(q->var_ud, r->var, &vl);
            if (!v || vl != strlen(r->val) || memcmp(v, r->val, vl) != 0)
                continue;
        }
        return &r->rt;
    }
    return NULL;
}

int upstream_pick(struct upstream_rt *up, const char *key, size_t keylen, const uint64_t *tried,
                  struct upstream_node *out)
{
    snprintf(fk.last_key, sizeof(fk.last_key), "%.*s", (int)keylen, key ? key : "");
    struct balancer *b = up->bal;
    for (int i = 0; i < b->n; i++) {
        int idx = (b->rr + i) % b->n;
        if (tried && (*tried & (1ull << idx)))
            continue;
        b->rr = idx + 1;
        out->index = idx;
        out->host = b->nodes[idx].host;
        out->port = b->nodes[idx].port;
        out->addr = b->nodes[idx].addr;
        return 0;
    }
    return -EAGAIN;
}

size_t snapshot_hash_key(const struct upstream_rt *up, const struct route_query *q, char *buf,
                         size_t buflen)
{
    size_t l = 0;
    const char *v = q->var(q->var_ud, up->key ? up->key : "remote_addr", &l);
    if (!v)
        return 0;
    if (l >= buflen)
        l = buflen - 1;
    memcpy(buf, v, l);
    return l;
}

void upstream_conn_start(struct upstream_rt *up, int index)
{
    (void)index;
    up->bal->starts++;
}

void upstream_conn_end(struct upstream_rt *up, int index)
{
    (void)index;
    up->bal->ends++;
}

void upstream_report(struct upstream_rt *up, int index, bool ok, uint32_t latency_ms)
{
    (void)index;
    (void)latency_ms;
    if (ok)
        up->bal->oks++;
    else
        up->bal->fails++;
}

static void fk_reset(void)
{
    memset(&fk, 0, sizeof(fk));
    fk.snap.refs = 1;
}

static struct upstream_rt *fk_up(int n, const char *host, const int *ports)
{
    int i = fk.nups++;
    struct upstream_rt *u = &fk.ups[i];
    struct balancer *b = &fk.bals[i];
    snprintf(u->id, sizeof(u->id), "%d", i + 1);
    u->bal = b;
    u->scheme = UP_HTTP;
    u->pass_host = PASS_HOST_PASS;
    u->retries = -1;
    u->timeout = (struct timeouts){1000, 2000, 2000};
    u->keepalive_size = 8;
    u->keepalive_idle_ms = 10000;
    u->keepalive_requests = 1000;
    b->n = n;
    for (int k = 0; k < n; k++) {
        snprintf(b->nodes[k].host, sizeof(b->nodes[k].host), "%s", host);
        b->nodes[k].port = (uint16_t)ports[k];
        snprintf(b->nodes[k].addr, sizeof(b->nodes[k].addr), "%s:%d", host, ports[k]);
    }
    return u;
}

static struct route_rt *fk_route(const char *prefix, const char *host, struct upstream_rt *up)
{
    struct fake_route *r = &fk.routes[fk.nroutes++];
    snprintf(r->prefix, sizeof(r->prefix), "%s", prefix);
    snprintf(r->host, sizeof(r->host), "%s", host ? host : "");
    snprintf(r->rt.id, sizeof(r->rt.id), "r%d", fk.nroutes);
    r->rt.up = up;
    r->rt.timeout = up ? up->timeout : (struct timeouts){1000, 2000, 2000};
    return &r->rt;
}

static struct snapshot *fk_current(void *ud)
{
    (void)ud;
    return &fk.snap;
}

/* ------------------------------------------------------------------ */
/* Proxy in a thread                                                   */
/* ------------------------------------------------------------------ */

struct reqlog {
    int status;
    char route[80];
    uint64_t bytes_in, bytes_out;
};

static struct {
    uv_loop_t loop;
    uv_async_t stop;
    uv_async_t drain;
    struct http_proxy *p;
    pthread_t th;
    int lfd;
    int port;
    struct http_proxy_opts opts;
    struct http_proxy_stats final;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready;
    atomic_int drained;
    atomic_int nlog;
    struct reqlog log[64];
    int start_ok;
    int running; /* a failed REQUIRE may leave it running: px_start stops it */
    int race_fd; /* >= 0: px_drain_cb sends a request on it just before draining */
} px;

static void on_done(void *ud, const struct route_rt *route, int status, uint64_t lat, uint64_t ulat,
                    uint64_t in, uint64_t out)
{
    (void)ud;
    (void)lat;
    (void)ulat;
    int i = px.nlog;
    if (i < 64) {
        px.log[i].status = status;
        snprintf(px.log[i].route, sizeof(px.log[i].route), "%s", route ? route->id : "-");
        px.log[i].bytes_in = in;
        px.log[i].bytes_out = out;
    }
    px.nlog++;
}

static struct {
    char host[64], uri[64], node[64], method[16];
    int node_port, up_status, status;
} lastinfo;

static void on_info(void *ud, const struct http_request_info *in)
{
    (void)ud;
    snprintf(lastinfo.host, sizeof(lastinfo.host), "%s", in->host ? in->host : "-");
    snprintf(lastinfo.uri, sizeof(lastinfo.uri), "%s", in->uri ? in->uri : "-");
    snprintf(lastinfo.node, sizeof(lastinfo.node), "%s", in->node_host ? in->node_host : "-");
    snprintf(lastinfo.method, sizeof(lastinfo.method), "%s", in->method ? in->method : "-");
    lastinfo.node_port = in->node_port;
    lastinfo.up_status = in->upstream_status;
    lastinfo.status = in->status;
}

static void px_stop_cb(uv_async_t *a)
{
    http_proxy_get_stats(px.p, &px.final);
    http_proxy_free(px.p);
    px.p = NULL;
    uv_close((uv_handle_t *)a, NULL);
    uv_close((uv_handle_t *)&px.drain, NULL);
}

static void px_drained(void *ud)
{
    (void)ud;
    px.drained = 1;
}

static void px_drain_cb(uv_async_t *a)
{
    (void)a;
    if (px.race_fd >= 0) {
        /* On loopback the bytes are in the proxy's socket when send returns:
         * a request the proxy has not read yet when the drain starts. */
        static const char req[] = "GET /r2 HTTP/1.1\r\nHost: h\r\n\r\n";
        if (send(px.race_fd, req, sizeof(req) - 1, 0) < 0)
            perror("send");
        px.race_fd = -1;
    }
    http_proxy_drain(px.p, px_drained, NULL);
}

static void *px_thread(void *arg)
{
    (void)arg;
    char err[256];
    uv_loop_init(&px.loop);
    uv_async_init(&px.loop, &px.stop, px_stop_cb);
    uv_async_init(&px.loop, &px.drain, px_drain_cb);
    px.p = http_proxy_start(&px.loop, px.lfd, &px.opts, fk_current, NULL, err, sizeof(err));
    pthread_mutex_lock(&px.mu);
    px.start_ok = px.p != NULL;
    px.ready = 1;
    pthread_cond_signal(&px.cv);
    pthread_mutex_unlock(&px.mu);
    if (!px.p) {
        fprintf(stderr, "http_proxy_start: %s\n", err);
        uv_close((uv_handle_t *)&px.stop, NULL);
        uv_close((uv_handle_t *)&px.drain, NULL);
    }
    uv_run(&px.loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&px.loop);
    if (rc != 0)
        fprintf(stderr, "uv_loop_close: %s\n", uv_strerror(rc));
    return (void *)(intptr_t)rc;
}

static int listen_any(int *port, int backlog)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, backlog) < 0) {
        close(fd);
        return -1;
    }
    socklen_t sl = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &sl);
    *port = ntohs(a.sin_port);
    return fd;
}

static void opts_default(struct http_proxy_opts *o)
{
    http_proxy_opts_init(o);
    o->client_header_timeout_ms = 3000;
    o->client_body_timeout_ms = 3000;
    o->keepalive_timeout_ms = 3000;
    o->send_timeout_ms = 5000;
    o->on_request_done = on_done;
    o->on_request_info = on_info;
}

static int px_stop(void);

static int px_start(const struct http_proxy_opts *o)
{
    if (px.running)
        px_stop();
    px.running = 1;
    px.opts = *o;
    px.ready = 0;
    px.race_fd = -1;
    px.nlog = 0;
    px.drained = 0;
    px.lfd = listen_any(&px.port, 128);
    if (px.lfd < 0)
        return -1;
    pthread_mutex_init(&px.mu, NULL);
    pthread_cond_init(&px.cv, NULL);
    pthread_create(&px.th, NULL, px_thread, NULL);
    pthread_mutex_lock(&px.mu);
    while (!px.ready)
        pthread_cond_wait(&px.cv, &px.mu);
    pthread_mutex_unlock(&px.mu);
    return px.start_ok ? 0 : -1;
}

/* Stops the proxy; returns the uv_loop_close result (0: nothing left). */
static int px_stop(void)
{
    px.running = 0;
    if (px.start_ok)
        uv_async_send(&px.stop);
    void *rv;
    pthread_join(px.th, &rv); /* the proxy owned and closed px.lfd */
    pthread_mutex_destroy(&px.mu);
    pthread_cond_destroy(&px.cv);
    return (int)(intptr_t)rv;
}

/* ------------------------------------------------------------------ */
/* Upstream servers                                                    */
/* ------------------------------------------------------------------ */

#define UP_MAXCONN 2048

struct upsrv {
    int lfd;
    int port;
    pthread_t th;
    atomic_int stop;
    atomic_int conns;
    atomic_int reqs;
    pthread_mutex_t mu;
    pthread_t cth[UP_MAXCONN];
    int cfd[UP_MAXCONN];
    int ncth;
    char last[65536]; /* last request as seen: "METHOD URL\nname: value\n...\n\nbody" */
    size_t last_len;
};

struct upc {
    struct upsrv *u;
    int fd;
    int id;
    int nreq;
    llhttp_t hp;
    char url[4096];
    size_t url_len;
    char hdr[32768];
    size_t hdr_len;
    int last_was_value;
    char *body;
    size_t body_len, body_cap;
    int complete;
};

static void ap(char *dst, size_t *len, size_t cap, const char *s, size_t n)
{
    if (*len + n >= cap)
        n = cap - *len - 1;
    memcpy(dst + *len, s, n);
    *len += n;
    dst[*len] = '\0';
}

static int u_on_url(llhttp_t *p, const char *at, size_t n)
{
    struct upc *c = p->data;
    ap(c->url, &c->url_len, sizeof(c->url), at, n);
    return 0;
}

static int u_on_field(llhttp_t *p, const char *at, size_t n)
{
    struct upc *c = p->data;
    if (c->last_was_value)
        ap(c->hdr, &c->hdr_len, sizeof(c->hdr), "\n", 1);
    c->last_was_value = 0;
    ap(c->hdr, &c->hdr_len, sizeof(c->hdr), at, n);
    return 0;
}

static int u_on_value(llhttp_t *p, const char *at, size_t n)
{
    struct upc *c = p->data;
    if (!c->last_was_value)
        ap(c->hdr, &c->hdr_len, sizeof(c->hdr), ": ", 2);
    c->last_was_value = 1;
    ap(c->hdr, &c->hdr_len, sizeof(c->hdr), at, n);
    return 0;
}

static int u_on_body(llhttp_t *p, const char *at, size_t n)
{
    struct upc *c = p->data;
    if (c->body_len + n > c->body_cap) {
        c->body_cap = (c->body_len + n) * 2;
        c->body = realloc(c->body, c->body_cap);
    }
    memcpy(c->body + c->body_len, at, n);
    c->body_len += n;
    return 0;
}

static int u_on_complete(llhttp_t *p)
{
    struct upc *c = p->data;
    c->complete = 1;
    return HPE_PAUSED;
}

static int u_on_headers_complete(llhttp_t *p)
{
    struct upc *c = p->data;
    if (strncmp(c->url, "/early", 6) == 0) {
        c->complete = 1; /* answer before reading the body */
        return HPE_PAUSED;
    }
    return 0;
}

static const llhttp_settings_t u_settings = {
    .on_url = u_on_url,
    .on_header_field = u_on_field,
    .on_header_value = u_on_value,
    .on_headers_complete = u_on_headers_complete,
    .on_body = u_on_body,
    .on_message_complete = u_on_complete,
};

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_str(int fd, const char *s)
{
    return write_all(fd, s, strlen(s));
}

/* Waits for fd to be readable, checking the stop flag. 1 readable, 0 stop. */
static int up_wait(struct upc *c)
{
    for (;;) {
        if (c->u->stop)
            return 0;
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        int r = poll(&pf, 1, 50);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return 0;
    }
}

static void echo_text(struct upc *c, char **out, size_t *olen)
{
    const char *m = llhttp_method_name((llhttp_method_t)c->hp.method);
    size_t cap = c->url_len + c->hdr_len + c->body_len + 256;
    char *b = malloc(cap);
    int n = snprintf(b, cap, "%s %s\n%s\n\n", m, c->url, c->hdr);
    if (c->body_len)
        memcpy(b + n, c->body, c->body_len);
    *out = b;
    *olen = (size_t)n + c->body_len;
}

static void *up_conn_thread(void *arg)
{
    struct upc *c = arg;
    struct upsrv *u = c->u;
    char buf[65536];
    size_t blen = 0;
    int closing = 0;
    llhttp_init(&c->hp, HTTP_REQUEST, &u_settings);
    c->hp.data = c;
    while (!closing) {
        /* next request */
        c->url_len = c->hdr_len = c->body_len = 0;
        c->url[0] = c->hdr[0] = '\0';
        c->last_was_value = 0;
        c->complete = 0;
        while (!c->complete) {
            if (blen == 0) {
                if (!up_wait(c))
                    goto out;
                ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
                if (r <= 0)
                    goto out;
                blen = (size_t)r;
            }
            llhttp_errno_t e = llhttp_execute(&c->hp, buf, blen);
            if (e == HPE_OK) {
                blen = 0;
            } else if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
                size_t k = (size_t)(llhttp_get_error_pos(&c->hp) - buf);
                memmove(buf, buf + k, blen - k);
                blen -= k;
                if (e == HPE_PAUSED)
                    llhttp_resume(&c->hp);
            } else {
                goto out;
            }
        }
        c->nreq++;
        u->reqs++;
        pthread_mutex_lock(&u->mu);
        {
            char *t;
            size_t tl;
            echo_text(c, &t, &tl);
            if (tl >= sizeof(u->last))
                tl = sizeof(u->last) - 1;
            memcpy(u->last, t, tl);
            u->last[tl] = '\0';
            u->last_len = tl;
            free(t);
        }
        pthread_mutex_unlock(&u->mu);

        const char *path = c->url;
        char hdr[512];
        char *body;
        size_t blen2;
        echo_text(c, &body, &blen2);
        if (strncmp(path, "/silent", 7) == 0) {
            free(body);
            while (up_wait(c)) {
                ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
                if (r <= 0)
                    break;
            }
            goto out;
        } else if (strncmp(path, "/close", 6) == 0 && strncmp(path, "/closesecond", 12) != 0) {
            free(body);
            goto out;
        } else if (strncmp(path, "/closesecond", 12) == 0 && c->nreq > 1) {
            free(body);
            goto out;
        } else if (strncmp(path, "/chunked", 8) == 0) {
            snprintf(hdr, sizeof(hdr),
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Conn: %d\r\n\r\n", c->id);
            write_str(c->fd, hdr);
            size_t third = blen2 / 3;
            size_t parts[3] = {third, third, blen2 - 2 * third};
            size_t off = 0;
            for (int i = 0; i < 3; i++) {
                char sz[32];
                snprintf(sz, sizeof(sz), "%zx\r\n", parts[i]);
                if (parts[i] == 0)
                    continue;
                write_str(c->fd, sz);
                write_all(c->fd, body + off, parts[i]);
                write_str(c->fd, "\r\n");
                off += parts[i];
            }
            write_str(c->fd, "0\r\nX-Trailer: t\r\n\r\n");
        } else if (strncmp(path, "/eof", 4) == 0) {
            snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            write_str(c->fd, hdr);
            write_all(c->fd, body, blen2);
            closing = 1;
        } else if (strncmp(path, "/big", 4) == 0) {
            size_t total = 50u * 1024 * 1024;
            const char *q = strstr(path, "n=");
            if (q)
                total = strtoull(q + 2, NULL, 10);
            snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", total);
            write_str(c->fd, hdr);
            static char blk[65536];
            memset(blk, 'x', sizeof(blk));
            size_t sent = 0;
            while (sent < total) {
                size_t n = total - sent < sizeof(blk) ? total - sent : sizeof(blk);
                if (write_all(c->fd, blk, n) < 0)
                    break;
                sent += n;
            }
        } else if (strncmp(path, "/midclose", 9) == 0) {
            write_str(c->fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
            free(body);
            goto out;
        } else if (strncmp(path, "/early", 6) == 0) {
            write_str(c->fd, "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n"
                             "Connection: close\r\n\r\nnope");
            free(body);
            goto out;
        } else if (strncmp(path, "/noreason", 9) == 0) {
            write_str(c->fd, "HTTP/1.1 201\r\nContent-Length: 2\r\n\r\nok");
        } else if (strncmp(path, "/204", 4) == 0) {
            write_str(c->fd, "HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n");
        } else if (strncmp(path, "/304", 4) == 0) {
            write_str(c->fd,
                      "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\n");
        } else if (strncmp(path, "/continue", 9) == 0) {
            write_str(c->fd, "HTTP/1.1 100 Continue\r\n\r\n");
            snprintf(hdr, sizeof(hdr), "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", blen2);
            write_str(c->fd, hdr);
            write_all(c->fd, body, blen2);
        } else if (strncmp(path, "/ws", 3) == 0 && strcasestr(c->hdr, "upgrade: websocket")) {
            write_str(c->fd, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Accept: abc\r\n\r\n");
            if (blen)
                write_all(c->fd, buf, blen);
            free(body);
            for (;;) {
                if (!up_wait(c))
                    break;
                ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
                if (r <= 0)
                    break;
                write_all(c->fd, buf, (size_t)r);
            }
            goto out;
        } else {
            int head = c->hp.method == HTTP_HEAD;
            snprintf(hdr, sizeof(hdr),
                     "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nX-Conn: %d\r\nConnection: "
                     "keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
                     blen2, c->id);
            write_str(c->fd, hdr);
            if (!head)
                write_all(c->fd, body, blen2);
        }
        free(body);
    }
out:
    shutdown(c->fd, SHUT_WR);
    free(c->body);
    free(c);
    return NULL;
}

static void *up_accept_thread(void *arg)
{
    struct upsrv *u = arg;
    for (;;) {
        struct pollfd pf = {.fd = u->lfd, .events = POLLIN};
        int r = poll(&pf, 1, 50);
        if (u->stop)
            break;
        if (r <= 0)
            continue;
        int fd = accept(u->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        pthread_mutex_lock(&u->mu);
        if (u->ncth >= UP_MAXCONN) {
            pthread_mutex_unlock(&u->mu);
            close(fd);
            continue;
        }
        struct upc *c = calloc(1, sizeof(*c));
        c->u = u;
        c->fd = fd;
        c->id = ++u->conns;
        u->cfd[u->ncth] = fd;
        pthread_create(&u->cth[u->ncth], NULL, up_conn_thread, c);
        u->ncth++;
        pthread_mutex_unlock(&u->mu);
    }
    return NULL;
}

static struct upsrv *up_start(void)
{
    struct upsrv *u = calloc(1, sizeof(*u));
    u->lfd = listen_any(&u->port, 128);
    pthread_mutex_init(&u->mu, NULL);
    pthread_create(&u->th, NULL, up_accept_thread, u);
    return u;
}

static void up_stop(struct upsrv *u)
{
    u->stop = 1;
    pthread_join(u->th, NULL);
    for (int i = 0; i < u->ncth; i++) {
        pthread_join(u->cth[i], NULL);
        close(u->cfd[i]);
    }
    close(u->lfd);
    pthread_mutex_destroy(&u->mu);
    free(u);
}

/* A port nothing listens on. */
static int closed_port(void)
{
    int port;
    int fd = listen_any(&port, 1);
    close(fd);
    return port;
}

/* ------------------------------------------------------------------ */
/* Clients                                                             */
/* ------------------------------------------------------------------ */

struct cli {
    int fd;
    char buf[1 << 16];
    size_t len;
};

struct cresp {
    int status;
    char head[16384]; /* "name: value\n" lines */
    size_t head_len;
    char *body;
    size_t body_len, body_cap;
    int complete;
    int last_was_value;
    int skip_body;
    int keepalive;
    int chunked;
};

static int cli_connect(struct cli *c, int port)
{
    memset(c, 0, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {5, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return connect(c->fd, (struct sockaddr *)&a, sizeof(a));
}

static void cli_close(struct cli *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static int c_on_field(llhttp_t *p, const char *at, size_t n)
{
    struct cresp *r = p->data;
    if (r->last_was_value)
        ap(r->head, &r->head_len, sizeof(r->head), "\n", 1);
    r->last_was_value = 0;
    ap(r->head, &r->head_len, sizeof(r->head), at, n);
    return 0;
}

static int c_on_value(llhttp_t *p, const char *at, size_t n)
{
    struct cresp *r = p->data;
    if (!r->last_was_value)
        ap(r->head, &r->head_len, sizeof(r->head), ": ", 2);
    r->last_was_value = 1;
    ap(r->head, &r->head_len, sizeof(r->head), at, n);
    return 0;
}

static int c_on_headers(llhttp_t *p)
{
    struct cresp *r = p->data;
    r->status = p->status_code;
    r->chunked = (p->flags & F_CHUNKED) != 0;
    return r->skip_body ? 1 : 0;
}

static int c_on_body(llhttp_t *p, const char *at, size_t n)
{
    struct cresp *r = p->data;
    if (r->body_len + n + 1 > r->body_cap) {
        r->body_cap = (r->body_len + n + 1) * 2;
        r->body = realloc(r->body, r->body_cap);
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

static int c_on_complete(llhttp_t *p)
{
    struct cresp *r = p->data;
    r->complete = 1;
    r->keepalive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static const llhttp_settings_t c_settings = {
    .on_header_field = c_on_field,
    .on_header_value = c_on_value,
    .on_headers_complete = c_on_headers,
    .on_body = c_on_body,
    .on_message_complete = c_on_complete,
};

static void cresp_free(struct cresp *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Reads one response. 0, or -1 on EOF/timeout/parse error before its end. */
static int cli_read(struct cli *c, struct cresp *r, int head)
{
    cresp_free(r);
    r->skip_body = head;
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &c_settings);
    p.data = r;
    for (;;) {
        if (c->len) {
            llhttp_errno_t e = llhttp_execute(&p, c->buf, c->len);
            if (e == HPE_OK) {
                c->len = 0;
            } else if (e == HPE_PAUSED) {
                size_t k = (size_t)(llhttp_get_error_pos(&p) - c->buf);
                memmove(c->buf, c->buf + k, c->len - k);
                c->len -= k;
                if (r->status >= 100 && r->status < 200 && r->status != 101) {
                    /* interim: read the next */
                    r->complete = 0;
                    r->head_len = 0;
                    llhttp_resume(&p);
                    continue;
                }
                return 0;
            } else {
                return -1;
            }
        }
        ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
        if (n == 0) {
            llhttp_errno_t e = llhttp_finish(&p);
            return (e == HPE_OK || e == HPE_PAUSED) && r->complete ? 0 : -1;
        }
        if (n < 0)
            return -1;
        c->len += (size_t)n;
    }
}

/* True when the proxy closed the connection (EOF within ~5 s). */
static bool cli_eof(struct cli *c)
{
    char b[4096];
    for (;;) {
        ssize_t n = recv(c->fd, b, sizeof(b), 0);
        if (n == 0)
            return true;
        if (n < 0)
            return errno == ECONNRESET;
    }
}

static int cli_send(struct cli *c, const char *s)
{
    return write_str(c->fd, s);
}

/* One request on a new connection, one response. */
static int roundtrip(const char *req, struct cresp *r)
{
    struct cli c;
    if (cli_connect(&c, px.port) < 0)
        return -1;
    cli_send(&c, req);
    int rc = cli_read(&c, r, strncmp(req, "HEAD ", 5) == 0);
    cli_close(&c);
    return rc;
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Waits (up to 3 s) for px.nlog to reach n: the hook runs after the reply. */
static void wait_log(int n)
{
    for (int i = 0; i < 300 && px.nlog < n; i++)
        msleep(10);
}

/* ------------------------------------------------------------------ */
/* Tests                                                               */
/* ------------------------------------------------------------------ */

struct env {
    struct upsrv *u;
    struct upstream_rt *up;
    struct route_rt *rt;
};

/* One upstream, one route "/" to it, proxy started with o (or defaults). */
static int env_start(struct env *e, const struct http_proxy_opts *o)
{
    fk_reset();
    e->u = up_start();
    int ports[1] = {e->u->port};
    e->up = fk_up(1, "127.0.0.1", ports);
    e->rt = fk_route("/", NULL, e->up);
    struct http_proxy_opts d;
    opts_default(&d);
    return px_start(o ? o : &d);
}

static void env_stop(struct env *e)
{
    CHECK(px_stop() == 0);
    up_stop(e->u);
    CHECK(fk.snap.refs == 1);
    for (int i = 0; i < fk.nups; i++)
        CHECK(fk.bals[i].starts == fk.bals[i].ends);
}

static void test_get(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /echo/a?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n"
                      "Connection: close, X-Foo\r\nKeep-Alive: 5\r\nTE: trailers\r\n\r\n",
                      &r) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /echo/a?x=1&y=2\n");
    CHECK_CONTAINS(r.body, "Host: example.com\n");
    CHECK_CONTAINS(r.body, "X-Forwarded-For: 127.0.0.1\n");
    CHECK_CONTAINS(r.body, "X-Real-IP: 127.0.0.1\n");
    CHECK_CONTAINS(r.body, "X-Forwarded-Proto: http\n");
    CHECK_CONTAINS(r.body, "X-Forwarded-Host: example.com\n");
    CHECK_CONTAINS(r.body, "User-Agent: t\n");
    CHECK(strstr(r.body, "Keep-Alive") == NULL);
    CHECK(strcasestr(r.body, "\nTE:") == NULL);
    CHECK(strstr(r.body, "Connection: keep-alive") != NULL);
    CHECK(strstr(r.head, "Keep-Alive") == NULL); /* hop-by-hop from upstream removed */
    CHECK_CONTAINS(r.head, "X-Conn: 1");
    cresp_free(&r);
    wait_log(1);
    CHECK(px.nlog == 1 && px.log[0].status == 200);
    CHECK_STREQ(px.log[0].route, "r1");
    CHECK_STREQ(lastinfo.host, "example.com");
    CHECK_STREQ(lastinfo.uri, "/echo/a");
    CHECK_STREQ(lastinfo.node, "127.0.0.1");
    CHECK_STREQ(lastinfo.method, "GET");
    CHECK(lastinfo.node_port == e.u->port);
    CHECK(lastinfo.up_status == 200 && lastinfo.status == 200);
    env_stop(&e);
}

static void test_post_content_length(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world", &r) ==
            0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "Content-Length: 11\n");
    CHECK_CONTAINS(r.body, "\n\nhello world");
    cresp_free(&r);
    /* Body split over several writes, with pauses. */
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01");
    msleep(50);
    cli_send(&c, "2345");
    msleep(50);
    cli_send(&c, "6789");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "PUT /p\n");
    CHECK_CONTAINS(r.body, "\n\n0123456789");
    cresp_free(&r);
    cli_close(&c);
    env_stop(&e);
}

static void test_post_chunked(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    msleep(50);
    cli_send(&c, "6\r\n world\r\n0\r\n\r\n");
    struct cresp r = {0};
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "Transfer-Encoding: chunked\n");
    CHECK(strstr(r.body, "Content-Length") == NULL);
    CHECK_CONTAINS(r.body, "\n\nhello world");
    cresp_free(&r);
    /* The connection is still usable. */
    cli_send(&c, "GET /again HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK_CONTAINS(r.body, "GET /again\n");
    cresp_free(&r);
    cli_close(&c);
    env_stop(&e);
}

static void test_response_framings(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cresp r = {0};
    /* chunked from upstream, passed to an HTTP/1.1 client chunked */
    REQUIRE(roundtrip("GET /chunked HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK(r.chunked);
    CHECK_CONTAINS(r.body, "GET /chunked\n");
    CHECK_CONTAINS(r.body, "Host: h\n");
    cresp_free(&r);
    /* until-close from upstream: re-chunked for HTTP/1.1, connection kept */
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /eof HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK(r.chunked);
    CHECK(r.keepalive);
    CHECK_CONTAINS(r.body, "GET /eof\n");
    cresp_free(&r);
    cli_send(&c, "GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    cresp_free(&r);
    cli_close(&c);
    /* HTTP/1.0 client: chunked upstream body de-chunked, then close */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /chunked HTTP/1.0\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK(!r.chunked);
    CHECK_CONTAINS(r.body, "GET /chunked\n");
    CHECK(strstr(r.body, "\r\n0\r\n") == NULL);
    CHECK(cli_eof(&c));
    cresp_free(&r);
    cli_close(&c);
    /* HTTP/1.0 client, until-close upstream body */
    REQUIRE(roundtrip("GET /eof HTTP/1.0\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /eof\n");
    CHECK_CONTAINS(r.body, "Host: 127.0.0.1:"); /* no Host: the node's */
    cresp_free(&r);
    REQUIRE(roundtrip("GET /noreason HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 201);
    CHECK_STREQ(r.body, "ok");
    /* HEAD, 204, 304: no body */
    REQUIRE(roundtrip("HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.head, "Content-Length: ");
    CHECK(r.body_len == 0);
    cresp_free(&r);
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /204 HTTP/1.1\r\nHost: h\r\n\r\nGET /304 HTTP/1.1\r\nHost: h\r\n\r\n"
                 "GET /z HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 204);
    CHECK(r.body_len == 0);
    REQUIRE(cli_read(&c, &r, 1) == 0);
    CHECK(r.status == 304);
    CHECK_CONTAINS(r.head, "ETag: \"x\"");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /z\n");
    cresp_free(&r);
    cli_close(&c);
    env_stop(&e);
}

static void test_404_and_local_errors(void)
{
    fk_reset();
    struct upsrv *u = up_start();
    int ports[1] = {u->port};
    struct upstream_rt *up = fk_up(1, "127.0.0.1", ports);
    fk_route("/api", "api.example.com", up);
    fk_route("/noup", NULL, NULL);
    struct upstream_rt *tls = fk_up(1, "127.0.0.1", ports);
    tls->scheme = UP_HTTPS;
    fk_route("/tls", NULL, tls);
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 404);
    CHECK_STREQ(r.body, "{\"error_msg\":\"404 Route Not Found\"}\n");
    CHECK_CONTAINS(r.head, "Content-Type: application/json");
    /* host mismatch */
    REQUIRE(roundtrip("GET /api/x HTTP/1.1\r\nHost: other.com\r\n\r\n", &r) == 0);
    CHECK(r.status == 404);
    REQUIRE(roundtrip("GET /api/x HTTP/1.1\r\nHost: API.example.com:9080\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    /* absolute-form: its authority is the host */
    REQUIRE(roundtrip("GET http://api.example.com/api/y?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /api/y?q=1\n");
    CHECK_CONTAINS(r.body, "Host: api.example.com\n");
    /* normalised path for routing: /x/../api/ routes as /api/ */
    REQUIRE(roundtrip("GET /x/../%61pi/z HTTP/1.1\r\nHost: api.example.com\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /x/../%61pi/z\n"); /* forwarded unchanged */
    REQUIRE(roundtrip("GET /../etc HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 400);
    REQUIRE(roundtrip("GET /noup HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 502);
    CHECK_CONTAINS(r.body, "error_msg");
    REQUIRE(roundtrip("GET /tls HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 502);
    CHECK_CONTAINS(r.body, "502 Bad Gateway");
    /* no Host on HTTP/1.1, two Hosts */
    REQUIRE(roundtrip("GET /api HTTP/1.1\r\n\r\n", &r) == 0);
    CHECK(r.status == 400);
    REQUIRE(roundtrip("GET /api HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &r) == 0);
    CHECK(r.status == 400);
    REQUIRE(roundtrip("GET /api HTTP/1.1\r\nHost: a/b\r\n\r\n", &r) == 0);
    CHECK(r.status == 400);
    REQUIRE(roundtrip("GET http://u@a/api HTTP/1.1\r\nHost: a\r\n\r\n", &r) == 0);
    CHECK(r.status == 400);
    REQUIRE(roundtrip("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", &r) == 0);
    CHECK(r.status == 405);
    REQUIRE(roundtrip("GET / HTTP/2.0\r\nHost: a\r\n\r\n", &r) == 0);
    CHECK(r.status == 505);
    /* 404 on a POST: the body is read and dropped, the connection kept */
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST /nothing HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 404);
    CHECK(r.keepalive);
    cli_send(&c, "cdeGET /api/k HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /api/k\n");
    cli_close(&c);
    cresp_free(&r);
    CHECK(px_stop() == 0);
    up_stop(u);
    CHECK(fk.snap.refs == 1);
}

static void test_502_504(void)
{
    fk_reset();
    struct upsrv *u = up_start();
    int refused[1] = {closed_port()};
    struct upstream_rt *up1 = fk_up(1, "127.0.0.1", refused);
    fk_route("/refused", NULL, up1);
    int ports[1] = {u->port};
    struct upstream_rt *up2 = fk_up(1, "127.0.0.1", ports);
    up2->timeout.read_ms = 300;
    /* A listener with a full accept queue: SYNs are dropped, connect hangs. */
    int bport;
    int bfd = listen_any(&bport, 0);
    struct cli filler[4];
    for (int i = 0; i < 4; i++) {
        filler[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)bport),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        connect(filler[i].fd, (struct sockaddr *)&a, sizeof(a));
    }
    int bports[1] = {bport};
    struct upstream_rt *up3 = fk_up(1, "127.0.0.1", bports);
    fk_route("/blackhole", NULL, up3)->timeout.connect_ms = 300;
    int rtports[2] = {bport, u->port};
    struct upstream_rt *up4 = fk_up(2, "127.0.0.1", rtports);
    up4->retry_timeout_ms = 100; /* spent by the first attempt: no retry */
    fk_route("/retrytimeout", NULL, up4)->timeout.connect_ms = 300;
    fk_route("/", NULL, up2)->timeout.read_ms = 300;
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /refused HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 502);
    CHECK_CONTAINS(r.body, "<title>502 Bad Gateway</title>");
    CHECK(fk.bals[0].fails == 1);
    REQUIRE(roundtrip("GET /silent HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 504);
    REQUIRE(roundtrip("GET /close HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 502);
    uint64_t t0 = uv_hrtime();
    REQUIRE(roundtrip("GET /blackhole HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    if (r.status != 504)
        fprintf(stderr, "  blackhole: %d %s\n", r.status, r.body);
    CHECK(r.status == 504);
    CHECK((uv_hrtime() - t0) / 1000000 >= 250);
    REQUIRE(roundtrip("GET /retrytimeout HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 504);
    fk.ups[3].retry_timeout_ms = 0;
    fk.bals[3].rr = 0;
    REQUIRE(roundtrip("GET /retrytimeout HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    /* upstream dies mid-body: the client connection is closed */
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /midclose HTTP/1.1\r\nHost: h\r\n\r\n");
    CHECK(cli_read(&c, &r, 0) == -1);
    cli_close(&c);
    cresp_free(&r);
    CHECK(px_stop() == 0);
    for (int i = 0; i < 4; i++)
        close(filler[i].fd);
    close(bfd);
    up_stop(u);
    CHECK(fk.snap.refs == 1);
    for (int i = 0; i < fk.nups; i++)
        CHECK(fk.bals[i].starts == fk.bals[i].ends);
}

static void test_retry_next_node(void)
{
    fk_reset();
    struct upsrv *u = up_start();
    int ports[3] = {closed_port(), closed_port(), u->port};
    struct upstream_rt *up = fk_up(3, "127.0.0.1", ports);
    fk_route("/", NULL, up);
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /r HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK(fk.bals[0].fails == 2);
    CHECK(fk.bals[0].oks == 1);
    /* retries = 0: one attempt only */
    up->retries = 0;
    fk.bals[0].rr = 0;
    REQUIRE(roundtrip("GET /r HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 502);
    cresp_free(&r);
    CHECK(px_stop() == 0);
    up_stop(u);
    CHECK(fk.snap.refs == 1);
    CHECK(fk.bals[0].starts == fk.bals[0].ends);
}

static void test_keepalive_reuse(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cresp r = {0};
    /* three client connections, one upstream connection */
    for (int i = 0; i < 3; i++) {
        REQUIRE(roundtrip("GET /k HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
        CHECK(r.status == 200);
        CHECK_CONTAINS(r.head, "X-Conn: 1");
    }
    /* three requests on one client connection */
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    for (int i = 0; i < 3; i++) {
        cli_send(&c, "GET /k2 HTTP/1.1\r\nHost: h\r\n\r\n");
        REQUIRE(cli_read(&c, &r, 0) == 0);
        CHECK(r.status == 200);
        CHECK(r.keepalive);
    }
    cli_close(&c);
    CHECK(e.u->conns == 1);
    CHECK(e.u->reqs == 6);
    /* a pooled connection the upstream closed on reuse: one fresh retry */
    REQUIRE(roundtrip("GET /closesecond HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK(e.u->conns == 2);
    cresp_free(&r);
    env_stop(&e);
    CHECK(fk.bals[0].fails == 0);
}

static void test_pipelining(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /p1 HTTP/1.1\r\nHost: h\r\n\r\n"
                 "POST /p2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                 "GET /nothere-chunked HTTP/1.1\r\nHost: h\r\n\r\n"
                 "GET /p4 HTTP/1.1\r\nHost: h\r\n\r\n");
    struct cresp r = {0};
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK_CONTAINS(r.body, "GET /p1\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK_CONTAINS(r.body, "POST /p2\n");
    CHECK_CONTAINS(r.body, "\n\nabc");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK_CONTAINS(r.body, "GET /nothere-chunked\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK_CONTAINS(r.body, "GET /p4\n");
    cresp_free(&r);
    cli_close(&c);
    env_stop(&e);
}

static void test_limits(void)
{
    struct env e;
    struct http_proxy_opts o;
    opts_default(&o);
    o.max_header_bytes = 1024;
    o.max_headers = 10;
    o.max_body_bytes = 100;
    REQUIRE(env_start(&e, &o) == 0);
    struct cresp r = {0};
    char big[4096];
    snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: h\r\nX-Big: %02000d\r\n\r\n", 0);
    REQUIRE(roundtrip(big, &r) == 0);
    CHECK(r.status == 431);
    char many[2048] = "GET / HTTP/1.1\r\nHost: h\r\n";
    for (int i = 0; i < 12; i++) {
        char l[32];
        snprintf(l, sizeof(l), "X-H%d: v\r\n", i);
        strcat(many, l);
    }
    strcat(many, "\r\n");
    REQUIRE(roundtrip(many, &r) == 0);
    CHECK(r.status == 431);
    /* long request line: nginx's 414 */
    snprintf(big, sizeof(big), "GET /%02000d HTTP/1.1\r\nHost: h\r\n\r\n", 0);
    REQUIRE(roundtrip(big, &r) == 0);
    CHECK(r.status == 414);
    /* Content-Length over the limit: 413 at once */
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 413);
    CHECK(cli_eof(&c));
    cli_close(&c);
    /* chunked growing over the limit: 413 (before any response byte) */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST /silent HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n");
    msleep(50);
    cli_send(&c, "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 413);
    cli_close(&c);
    /* exactly at the limit is fine */
    char ok[512];
    snprintf(ok, sizeof(ok), "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n%0100d", 0);
    REQUIRE(roundtrip(ok, &r) == 0);
    CHECK(r.status == 200);
    cresp_free(&r);
    env_stop(&e);
}

static void test_smuggling(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    static const char *bad[] = {
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        "0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        "0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
        "GET / HTTP/1.1\nHost: h\n\n",
        "GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n",
        "GARBAGE\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cli c;
        REQUIRE(cli_connect(&c, px.port) == 0);
        cli_send(&c, bad[i]);
        struct cresp r = {0};
        int rc = cli_read(&c, &r, 0);
        if (rc != 0 || r.status != 400)
            fprintf(stderr, "  case %zu: rc %d status %d\n", i, rc, r.status);
        CHECK(rc == 0 && r.status == 400);
        CHECK(cli_eof(&c));
        cresp_free(&r);
        cli_close(&c);
    }
    CHECK(e.u->reqs == 0);
    env_stop(&e);
}

static void test_timeouts(void)
{
    struct env e;
    struct http_proxy_opts o;
    opts_default(&o);
    o.client_header_timeout_ms = 200;
    o.client_body_timeout_ms = 200;
    o.keepalive_timeout_ms = 200;
    REQUIRE(env_start(&e, &o) == 0);
    struct cresp r = {0};
    struct cli c;
    /* partial head */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET / HTTP/1.1\r\nHost:");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 408);
    CHECK(cli_eof(&c));
    cli_close(&c);
    /* a head trickled in slower than the whole-head timeout */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /");
    for (int i = 0; i < 6; i++) {
        cli_send(&c, "a");
        msleep(50);
    }
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 408);
    cli_close(&c);
    /* body stalls */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n123");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 408);
    cli_close(&c);
    /* idle keep-alive: closed quietly */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    uint64_t t0 = uv_hrtime();
    CHECK(cli_eof(&c));
    CHECK(c.len == 0);
    CHECK((uv_hrtime() - t0) / 1000000 >= 150);
    cli_close(&c);
    /* a new connection sending nothing: closed quietly after the header timeout */
    REQUIRE(cli_connect(&c, px.port) == 0);
    CHECK(cli_eof(&c));
    cli_close(&c);
    cresp_free(&r);
    env_stop(&e);
}

static void test_backpressure(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    int rcv = 32 * 1024;
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    cli_send(&c, "GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    /* read the head, then the body slowly */
    size_t total = 0, want = 50u * 1024 * 1024;
    char buf[65536];
    size_t headlen = 0;
    char head[4096];
    while (headlen < sizeof(head) - 1) {
        ssize_t n = recv(c.fd, head + headlen, 1, 0);
        if (n <= 0)
            break;
        headlen++;
        head[headlen] = '\0';
        if (headlen >= 4 && memcmp(head + headlen - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    CHECK_CONTAINS(head, "Content-Length: 52428800");
    int slow = 0;
    while (total < want) {
        ssize_t n = recv(c.fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        total += (size_t)n;
        if (slow < 40 && total > (size_t)slow * 256 * 1024) {
            slow++;
            msleep(10); /* a slow reader for the first ~10 MB */
        }
    }
    CHECK(total == want);
    cli_close(&c);
    env_stop(&e);
    fprintf(stderr, "  backpressure: peak buffered %llu bytes\n",
            (unsigned long long)px.final.buffered_bytes_peak);
    /* at most the high-water mark plus one read of the shared buffer */
    CHECK(px.final.buffered_bytes_peak <= HP_HIGH_WATER + HP_READ_BUF_SIZE + 1024);
    CHECK(px.final.buffered_bytes == 0);
}

/* Upload backpressure: a fast client, an upstream that reads slowly. */
static void test_upload_backpressure(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    size_t len = 8u * 1024 * 1024;
    char hdr[128];
    snprintf(hdr, sizeof(hdr), "POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n", len);
    cli_send(&c, hdr);
    char *blk = malloc(65536);
    memset(blk, 'u', 65536);
    for (size_t s = 0; s < len; s += 65536)
        write_all(c.fd, blk, 65536);
    free(blk);
    struct cresp r = {0};
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "Content-Length: 8388608\n");
    cresp_free(&r);
    cli_close(&c);
    env_stop(&e);
    CHECK(px.final.buffered_bytes_peak <= HP_HIGH_WATER + HP_READ_BUF_SIZE + 1024);
}

struct wargs {
    int fd;
    const char *b;
    size_t n;
};

static void *writer_thread(void *arg)
{
    struct wargs *w = arg;
    write_all(w->fd, w->b, w->n);
    return NULL;
}

static void test_websocket(void)
{
    fk_reset();
    struct upsrv *u = up_start();
    int ports[1] = {u->port};
    struct upstream_rt *up = fk_up(1, "127.0.0.1", ports);
    fk_route("/ws", NULL, up)->enable_websocket = true;
    fk_route("/nows", NULL, up);
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\nearly");
    struct cresp r = {0};
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 101);
    CHECK_CONTAINS(r.head, "Upgrade: websocket");
    CHECK_CONTAINS(r.head, "Sec-WebSocket-Accept: abc");
    char buf[256];
    size_t got = c.len;
    memcpy(buf, c.buf, c.len);
    while (got < 5) {
        ssize_t n = recv(c.fd, buf + got, sizeof(buf) - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    CHECK(got == 5 && memcmp(buf, "early", 5) == 0);
    cli_send(&c, "ping-pong");
    got = 0;
    while (got < 9) {
        ssize_t n = recv(c.fd, buf + got, sizeof(buf) - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    CHECK(got == 9 && memcmp(buf, "ping-pong", 9) == 0);
    /* a big message through the tunnel, written while the echo is read */
    size_t bl = 4u << 20;
    char *big = malloc(bl), *back = malloc(bl);
    for (size_t i = 0; i < bl; i++)
        big[i] = (char)('a' + i % 26);
    struct wargs wa = {c.fd, big, bl};
    pthread_t wt;
    pthread_create(&wt, NULL, writer_thread, &wa);
    got = 0;
    while (got < bl) {
        ssize_t n = recv(c.fd, back + got, bl - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    pthread_join(wt, NULL);
    CHECK(got == bl && memcmp(big, back, bl) == 0);
    free(big);
    free(back);
    shutdown(c.fd, SHUT_WR);
    CHECK(cli_eof(&c));
    cli_close(&c);
    /* without enable_websocket the upgrade is dropped */
    REQUIRE(roundtrip("GET /nows HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: "
                      "Upgrade\r\n\r\n",
                      &r) == 0);
    CHECK(r.status == 200);
    CHECK(strcasestr(r.body, "upgrade") == NULL);
    cresp_free(&r);
    CHECK(px_stop() == 0);
    up_stop(u);
    CHECK(fk.snap.refs == 1);
}

static void test_pass_host_and_xff(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /a HTTP/1.1\r\nHost: client.example\r\nX-Forwarded-For: 10.0.0.1\r\n"
                      "X-Forwarded-For: 10.0.0.2\r\nX-Real-IP: 6.6.6.6\r\n"
                      "X-Forwarded-Proto: https\r\n\r\n",
                      &r) == 0);
    CHECK_CONTAINS(r.body, "Host: client.example\n");
    CHECK_CONTAINS(r.body, "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 127.0.0.1\n");
    CHECK_CONTAINS(r.body, "X-Real-IP: 127.0.0.1\n");
    CHECK(strstr(r.body, "6.6.6.6") == NULL);
    CHECK(strstr(r.body, "https") == NULL);
    char port[32];
    snprintf(port, sizeof(port), "X-Forwarded-Port: %d\n", px.port);
    CHECK_CONTAINS(r.body, port);
    e.up->pass_host = PASS_HOST_NODE;
    REQUIRE(roundtrip("GET /a HTTP/1.1\r\nHost: client.example\r\n\r\n", &r) == 0);
    char nh[64];
    snprintf(nh, sizeof(nh), "Host: 127.0.0.1:%d\n", e.u->port);
    CHECK_CONTAINS(r.body, nh);
    CHECK_CONTAINS(r.body, "X-Forwarded-Host: client.example\n");
    e.up->pass_host = PASS_HOST_REWRITE;
    e.up->upstream_host = (char *)"rewritten.internal";
    REQUIRE(roundtrip("GET /a HTTP/1.1\r\nHost: client.example\r\n\r\n", &r) == 0);
    CHECK_CONTAINS(r.body, "Host: rewritten.internal\n");
    cresp_free(&r);
    env_stop(&e);
}

static void test_expect_continue(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST /continue HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                 "Expect: 100-continue\r\n\r\n");
    char buf[64] = {0};
    size_t got = 0;
    while (got < 25) {
        ssize_t n = recv(c.fd, buf + got, 25 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    CHECK(strcmp(buf, "HTTP/1.1 100 Continue\r\n\r\n") == 0);
    cli_send(&c, "data");
    struct cresp r = {0};
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200); /* the upstream's own 100 was not passed on twice */
    CHECK(strcasestr(r.body, "expect") == NULL);
    CHECK_CONTAINS(r.body, "\n\ndata");
    cresp_free(&r);
    cli_close(&c);
    env_stop(&e);
}

static void test_max_connections(void)
{
    struct env e;
    struct http_proxy_opts o;
    opts_default(&o);
    o.max_connections = 2;
    REQUIRE(env_start(&e, &o) == 0);
    struct cli a, b, c;
    REQUIRE(cli_connect(&a, px.port) == 0);
    REQUIRE(cli_connect(&b, px.port) == 0);
    msleep(100);
    REQUIRE(cli_connect(&c, px.port) == 0);
    CHECK(cli_eof(&c));
    cli_close(&c);
    struct cresp r = {0};
    cli_send(&a, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&a, &r, 0) == 0);
    CHECK(r.status == 200);
    cresp_free(&r);
    cli_close(&a);
    cli_close(&b);
    env_stop(&e);
    CHECK(px.final.connections_rejected == 1);
}

static void test_access_log(void)
{
    char path[] = "/tmp/test_http_proxy_logXXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    struct env e;
    struct http_proxy_opts o;
    opts_default(&o);
    o.access_log = fd;
    REQUIRE(env_start(&e, &o) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /logme?a=\"b\" HTTP/1.1\r\nHost: log.example\r\n"
                      "User-Agent: agent/1.0\r\n\r\n",
                      &r) == 0);
    REQUIRE(roundtrip("GET /logme2 HTTP/1.1\r\nHost: log.example\r\n\r\n", &r) == 0);
    cresp_free(&r);
    wait_log(2);
    int uport = e.u->port;
    env_stop(&e);
    char buf[4096] = {0};
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    CHECK(n > 0);
    CHECK_CONTAINS(buf, "\"remote_addr\":\"127.0.0.1\"");
    CHECK_CONTAINS(buf, "\"method\":\"GET\"");
    CHECK_CONTAINS(buf, "\"uri\":\"/logme?a=\\\"b\\\"\"");
    CHECK_CONTAINS(buf, "\"status\":200");
    CHECK_CONTAINS(buf, "\"user_agent\":\"agent/1.0\"");
    CHECK_CONTAINS(buf, "\"host\":\"log.example\"");
    CHECK_CONTAINS(buf, "\"route_id\":\"r1\"");
    CHECK_CONTAINS(buf, "\"upstream_status\":\"200\"");
    char ua[64];
    snprintf(ua, sizeof(ua), "\"upstream_addr\":\"127.0.0.1:%d\"", uport);
    CHECK_CONTAINS(buf, ua);
    int lines = 0;
    for (char *p = buf; *p; p++)
        lines += *p == '\n';
    CHECK(lines == 2);
    /* combined */
    CHECK(ftruncate(fd, 0) == 0);
    o.access_log_format = HTTP_LOG_COMBINED;
    lseek(fd, 0, SEEK_SET);
    REQUIRE(env_start(&e, &o) == 0);
    REQUIRE(roundtrip("GET /c HTTP/1.1\r\nHost: h\r\nUser-Agent: ua\r\nReferer: http://r/\r\n\r\n",
                      &r) == 0);
    cresp_free(&r);
    wait_log(1);
    env_stop(&e);
    memset(buf, 0, sizeof(buf));
    n = pread(fd, buf, sizeof(buf) - 1, 0);
    CHECK(n > 0);
    CHECK_CONTAINS(buf, "127.0.0.1 - - [");
    CHECK_CONTAINS(buf, "] \"GET /c HTTP/1.1\" 200 ");
    CHECK_CONTAINS(buf, " \"http://r/\" \"ua\"\n");
    close(fd);
    unlink(path);
}

static void test_drain(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    struct cli idle, busy;
    struct cresp r = {0};
    REQUIRE(cli_connect(&idle, px.port) == 0);
    cli_send(&idle, "GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&idle, &r, 0) == 0);
    REQUIRE(cli_connect(&busy, px.port) == 0);
    cli_send(&busy, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab");
    struct cli fresh, racing;
    REQUIRE(cli_connect(&fresh, px.port) == 0); /* accepted, nothing sent yet */
    REQUIRE(cli_connect(&racing, px.port) == 0);
    cli_send(&racing, "GET /r1 HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&racing, &r, 0) == 0);
    msleep(100);
    /* a keep-alive request the proxy has not read when the drain starts */
    px.race_fd = racing.fd;
    uv_async_send(&px.drain);
    CHECK(cli_eof(&idle)); /* idle keep-alive closed */
    /* the fresh connection's first request is still served, then closed */
    cli_send(&fresh, "GET /late HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&fresh, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK(!r.keepalive);
    CHECK(cli_eof(&fresh));
    cli_close(&fresh);
    /* the racing one: served (its request was waiting in the socket) */
    REQUIRE(cli_read(&racing, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /r2\n");
    CHECK(!r.keepalive);
    cli_close(&racing);
    msleep(50);
    CHECK(px.drained == 0);
    cli_send(&busy, "cd");
    REQUIRE(cli_read(&busy, &r, 0) == 0); /* in-flight request finishes */
    CHECK(r.status == 200);
    CHECK(!r.keepalive);
    CHECK(cli_eof(&busy));
    cli_close(&idle);
    cli_close(&busy); /* ends the lingering close */
    for (int i = 0; i < 200 && !px.drained; i++)
        msleep(10);
    CHECK(px.drained == 1);
    /* The proxy closed the listening socket: new connections are refused. */
    struct cli c;
    CHECK(cli_connect(&c, px.port) != 0);
    cli_close(&c);
    cresp_free(&r);
    env_stop(&e);
}

static void test_abort_and_early_response(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    /* the client goes away while the upstream thinks: 499, upstream closed */
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /silent HTTP/1.1\r\nHost: h\r\n\r\n");
    for (int i = 0; i < 100 && e.u->reqs == 0; i++)
        msleep(10);
    uint64_t t0 = uv_hrtime();
    cli_close(&c);
    wait_log(1);
    CHECK(px.nlog == 1);
    CHECK(px.log[0].status == 499);
    CHECK((uv_hrtime() - t0) / 1000000 < 1000); /* not at the 2 s read timeout */
    /* the client goes away mid-upload */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc");
    msleep(100);
    cli_close(&c);
    wait_log(2);
    CHECK(px.nlog == 2);
    CHECK(px.log[1].status == 499);
    /* the upstream answers before the whole body */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\nabc");
    struct cresp r = {0};
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 413);
    CHECK_STREQ(r.body, "nope");
    CHECK(!r.keepalive);
    cli_close(&c);
    wait_log(3);
    CHECK(px.nlog == 3 && px.log[2].status == 413);
    /* HTTP/1.0 keep-alive */
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK(r.keepalive);
    cli_send(&c, "GET /k2 HTTP/1.0\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "GET /k2\n");
    CHECK(cli_eof(&c));
    cli_close(&c);
    cresp_free(&r);
    env_stop(&e);
}

static void test_dns_and_pool_limits(void)
{
    fk_reset();
    struct upsrv *u = up_start();
    int ports[1] = {u->port};
    struct upstream_rt *up = fk_up(1, "localhost", ports);
    up->keepalive_requests = 2;
    struct upstream_rt *bad = fk_up(1, "no-such-host.invalid", ports);
    fk_route("/bad", NULL, bad);
    fk_route("/", NULL, up);
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    struct cresp r = {0};
    for (int i = 0; i < 3; i++) {
        REQUIRE(roundtrip("GET /n HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
        CHECK(r.status == 200);
    }
    CHECK(u->conns == 2); /* two requests per upstream connection */
    REQUIRE(roundtrip("GET /bad HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 502);
    /* keepalive_size 0: no pooling */
    up->keepalive_size = 0;
    int before = u->conns;
    for (int i = 0; i < 2; i++) {
        REQUIRE(roundtrip("GET /n HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
        CHECK(r.status == 200);
    }
    CHECK(u->conns >= before + 1);
    cresp_free(&r);
    CHECK(px_stop() == 0);
    up_stop(u);
    CHECK(fk.snap.refs == 1);
    CHECK(fk.bals[0].starts == fk.bals[0].ends);
    CHECK(fk.bals[1].starts == fk.bals[1].ends);
}

/* A client that never reads: the send timeout ends it; the upstream is
 * paused meanwhile, so the proxy holds little. */
static void test_send_timeout(void)
{
    struct env e;
    struct http_proxy_opts o;
    opts_default(&o);
    o.send_timeout_ms = 300;
    REQUIRE(env_start(&e, &o) == 0);
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    int rcv = 16 * 1024;
    setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    cli_send(&c, "GET /big HTTP/1.1\r\nHost: h\r\n\r\n");
    wait_log(1);
    CHECK(px.nlog == 1);
    CHECK(px.log[0].status == 200);
    CHECK(px.log[0].bytes_out < 50u * 1024 * 1024);
    cli_close(&c);
    env_stop(&e);
    CHECK(px.final.buffered_bytes_peak <= HP_HIGH_WATER + HP_READ_BUF_SIZE + 1024);
}

static void test_vars_and_chash(void)
{
    fk_reset();
    struct upsrv *u = up_start();
    int ports[1] = {u->port};
    struct upstream_rt *up = fk_up(1, "127.0.0.1", ports);
    json_t *conf = json_pack("{s:s}", "type", "chash");
    up->conf = conf;
    up->key = (char *)"arg_user";
    struct fake_route *fr;
    static const char *vars[][2] = {
        {"http_x_user_name", "alice"},
        {"cookie_session", "abc"},
        {"arg_id", "7"},
        {"uri", "/v/a/c"},
        {"host", "vars.example"},
        {"request_method", "PUT"},
        {"remote_addr", "127.0.0.1"},
        {"scheme", "http"},
    };
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        char prefix[32];
        snprintf(prefix, sizeof(prefix), "/v%zu/", i);
        fk_route(prefix, NULL, up);
        fr = &fk.routes[fk.nroutes - 1];
        snprintf(fr->var, sizeof(fr->var), "%s", vars[i][0]);
        snprintf(fr->val, sizeof(fr->val), "%s", vars[i][1]);
    }
    fk_route("/v/", NULL, up);
    fr = &fk.routes[fk.nroutes - 1];
    snprintf(fr->var, sizeof(fr->var), "uri");
    snprintf(fr->val, sizeof(fr->val), "/v/a/c");
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /v0/?user=bob HTTP/1.1\r\nHost: h\r\nX-User-Name: alice\r\n\r\n", &r) ==
            0);
    CHECK(r.status == 200);
    CHECK_STREQ(fk.last_key, "bob");
    REQUIRE(roundtrip("GET /v0/ HTTP/1.1\r\nHost: h\r\nX-User-Name: bob\r\n\r\n", &r) == 0);
    CHECK(r.status == 404);
    REQUIRE(roundtrip("GET /v1/ HTTP/1.1\r\nHost: h\r\nCookie: a=1; session=abc; z=2\r\n\r\n",
                      &r) == 0);
    CHECK(r.status == 200);
    REQUIRE(roundtrip("GET /v2/?x=1&id=7&y HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    REQUIRE(roundtrip("GET /v/./a//b/../c HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    REQUIRE(roundtrip("GET /v4/ HTTP/1.1\r\nHost: VARS.example:8080\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    REQUIRE(roundtrip("PUT /v5/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    REQUIRE(roundtrip("GET /v6/ HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    REQUIRE(roundtrip("GET /v7/ HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    cresp_free(&r);
    CHECK(px_stop() == 0);
    up_stop(u);
    json_decref(conf);
    CHECK(fk.snap.refs == 1);
}

static void test_normalize_path(void)
{
    static const char *cases[][2] = {
        {"/", "/"},          {"/a/b", "/a/b"},     {"//a///b/", "/a/b/"},
        {"/a/./b", "/a/b"},  {"/a/../b", "/b"},    {"/a/b/..", "/a/"},
        {"/a/b/.", "/a/b/"}, {"/%61%62c", "/abc"}, {"/a/%2e%2e/b", "/b"},
        {"/a%2fb", "/a/b"},  {"/%zz", "/%zz"},     {"/..", NULL},
        {"/a/../..", NULL},  {"/%00", NULL},       {"a", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[64];
        long n = hp_normalize_path(cases[i][0], strlen(cases[i][0]), out);
        if (!cases[i][1]) {
            CHECK(n < 0);
        } else {
            CHECK(n == (long)strlen(cases[i][1]));
            CHECK_STREQ(out, cases[i][1]);
        }
    }
    CHECK(hp_has_token("keep-alive, Upgrade", 19, "upgrade"));
    CHECK(!hp_has_token("keep-alive, Upgrades", 20, "upgrade"));
    CHECK(hp_has_token(" 100-continue ", 14, "100-continue"));
}

struct stress_arg {
    int id;
    int ok;
    int bad;
};

static void *stress_thread(void *arg)
{
    struct stress_arg *a = arg;
    unsigned seed = (unsigned)a->id * 7919u + 1;
    struct cresp r = {0};
    for (int i = 0; i < 40; i++) {
        seed = seed * 1103515245 + 12345;
        int kind = (int)((seed >> 16) % 7);
        struct cli c;
        if (cli_connect(&c, px.port) != 0) {
            a->bad++;
            continue;
        }
        int good = 1;
        switch (kind) {
        case 0: /* keep-alive GETs */
            for (int k = 0; k < 3 && good; k++) {
                cli_send(&c, "GET /s HTTP/1.1\r\nHost: h\r\n\r\n");
                good = cli_read(&c, &r, 0) == 0 && r.status == 200;
            }
            break;
        case 1: /* chunked upload */
            cli_send(&c, "POST /s HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "3\r\nabc\r\n0\r\n\r\n");
            good = cli_read(&c, &r, 0) == 0 && r.status == 200 && strstr(r.body, "\n\nabc");
            break;
        case 2: /* pipelined */
            cli_send(&c, "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /chunked HTTP/1.1\r\nHost: "
                         "h\r\n\r\nGET /nothing-404 HTTP/1.1\r\nHost: h\r\n\r\n");
            for (int k = 0; k < 3 && good; k++)
                good = cli_read(&c, &r, 0) == 0 && r.status == 200;
            break;
        case 3: /* abort mid-request and mid-response */
            cli_send(&c, "POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 50\r\n\r\nab");
            break;
        case 4: {
            cli_send(&c, "GET /big?n=1000000 HTTP/1.1\r\nHost: h\r\n\r\n");
            good = cli_read(&c, &r, 0) == 0 && r.status == 200 && r.body_len == 1000000;
            break;
        }
        case 5: /* abort while the response streams */
            cli_send(&c, "GET /big?n=5000000 HTTP/1.1\r\nHost: h\r\n\r\n");
            {
                char b[4096];
                (void)recv(c.fd, b, sizeof(b), 0);
            }
            break;
        default: { /* websocket */
            cli_send(&c, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: "
                         "Upgrade\r\n\r\n");
            good = cli_read(&c, &r, 0) == 0 && r.status == 101;
            if (good) {
                cli_send(&c, "hi!");
                char b[8];
                size_t got = c.len;
                memcpy(b, c.buf, c.len);
                while (got < 3) {
                    ssize_t n = recv(c.fd, b + got, sizeof(b) - got, 0);
                    if (n <= 0)
                        break;
                    got += (size_t)n;
                }
                good = got == 3 && memcmp(b, "hi!", 3) == 0;
            }
            break;
        }
        }
        if (good)
            a->ok++;
        else
            a->bad++;
        cli_close(&c);
    }
    cresp_free(&r);
    return NULL;
}

static void test_stress(void)
{
    fk_reset();
    struct upsrv *u = up_start();
    int ports[1] = {u->port};
    struct upstream_rt *up = fk_up(1, "127.0.0.1", ports);
    fk_route("/nothing-404", NULL, NULL)->up = up; /* a route, so 200 */
    fk_route("/", NULL, up)->enable_websocket = true;
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    enum { NT = 12 };
    pthread_t th[NT];
    struct stress_arg args[NT];
    for (int i = 0; i < NT; i++) {
        args[i] = (struct stress_arg){.id = i};
        pthread_create(&th[i], NULL, stress_thread, &args[i]);
    }
    int ok = 0, bad = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
        bad += args[i].bad;
    }
    fprintf(stderr, "  stress: %d ok, %d bad, %d upstream connections, %d requests\n", ok, bad,
            (int)u->conns, (int)u->reqs);
    CHECK(bad == 0);
    CHECK(ok == NT * 40);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /alive HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    cresp_free(&r);
    CHECK(px_stop() == 0);
    up_stop(u);
    CHECK(fk.snap.refs == 1);
    CHECK(fk.bals[0].starts == fk.bals[0].ends);
    CHECK(px.final.buffered_bytes == 0);
}

/* Random and truncated input must never crash the proxy. */
static void test_garbage(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    unsigned seed = 12345;
    static const char *seeds[] = {
        "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        "GET /chunked HTTP/1.1\r\nHost: h\r\n\r\nGET /eof HTTP/1.0\r\n\r\n",
        "POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n",
        "GET http://h/204 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /x HTTP/1.1\r\nHost: h\r\n\r\n",
    };
    int iters = getenv("GARBAGE_N") ? atoi(getenv("GARBAGE_N")) : 200;
    for (int i = 0; i < iters; i++) {
        char buf[512];
        const char *s = seeds[i % (int)(sizeof(seeds) / sizeof(seeds[0]))];
        size_t n = strlen(s);
        memcpy(buf, s, n);
        for (int k = 0; k < 3; k++) {
            seed = seed * 1103515245 + 12345;
            buf[(seed >> 8) % n] = (char)(seed >> 16);
        }
        seed = seed * 1103515245 + 12345;
        size_t cut = (seed >> 8) % (n + 1);
        struct cli c;
        if (cli_connect(&c, px.port) != 0)
            continue;
        write_all(c.fd, buf, cut);
        shutdown(c.fd, SHUT_WR);
        char tmp[4096];
        while (recv(c.fd, tmp, sizeof(tmp), 0) > 0) {
        }
        cli_close(&c);
    }
    /* still serving */
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /alive HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    cresp_free(&r);
    env_stop(&e);
}

static const char *only; /* run only tests whose name contains this */

#define T(fn)                                                                                      \
    do {                                                                                           \
        if (!only || strstr(only, #fn))                                                            \
            RUN(fn);                                                                               \
    } while (0)

/* ------------------------------------------------------------------ */
/* Plugins: the phase runner with test plugins                         */
/* ------------------------------------------------------------------ */

/* What the test plugins do, set by each test before its requests. */
static struct {
    pthread_mutex_t mu;
    char trace[2048];        /* "rw:A ac:A ..." */
    int stop_in;             /* 1: A's access answers 401 */
    int async;               /* 1: A's rewrite waits async_ms, then resumes */
    int async_ms;
    int async_answer;        /* with async: the timer answers 429 instead */
    int read_body;           /* 1: A's access reads the body (max body_max) */
    size_t body_max;
    int body_answer;         /* with read_body: answer "got:<body>", else go on */
    int consumer;            /* 1: A's access attaches consumer "jack" */
    atomic_int aborts;       /* abort callbacks run */
    atomic_int logs;         /* log phases run */
    int log_status;          /* the status the last log saw */
    char body_seen[256];     /* body_filter's bytes (first chunk) */
    uv_timer_t timer;        /* A's async timer */
    struct plugin_req *waiting;
} tp;

static void tp_trace(const char *what, const char *who)
{
    pthread_mutex_lock(&tp.mu);
    size_t l = strlen(tp.trace);
    snprintf(tp.trace + l, sizeof(tp.trace) - l, "%s%s:%s", l ? " " : "", what, who);
    pthread_mutex_unlock(&tp.mu);
}

static int tp_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    (void)a;
    (void)state;
    (void)err;
    (void)errlen;
    return 0;
}

static void tp_timer_closed(uv_handle_t *h)
{
    (void)h;
}

static void tp_timer_cb(uv_timer_t *t)
{
    (void)t;
    struct plugin_req *r = tp.waiting;
    tp.waiting = NULL;
    uv_close((uv_handle_t *)&tp.timer, tp_timer_closed);
    if (tp.async_answer)
        plugin_respond_message(r, 429, "slow down");
    plugin_resume(r);
}

static void tp_abort(void *ud)
{
    (void)ud;
    tp.aborts++;
    tp.waiting = NULL;
    uv_close((uv_handle_t *)&tp.timer, tp_timer_closed);
}

#define TP_NAME(s) ((const char *)(s))

static int tp_rewrite(struct plugin_req *r, void *state, void **data)
{
    tp_trace("rw", TP_NAME(state));
    if (strcmp(TP_NAME(state), "A") == 0) {
        *data = (void *)"A-data";
        plugin_req_set_target(r, "/new/path?k=v&secret=s");
        plugin_req_arg_remove(r, "secret");
        plugin_req_set_method(r, "PUT");
        plugin_req_set_host(r, "rewritten.example");
        plugin_req_header_set(r, "X-Set", "one");
        plugin_req_header_add(r, "X-Add", "two");
        plugin_req_header_set(r, "X-Drop", NULL);
        CHECK(plugin_req_header_set(r, "Content-Length", "1") == -EINVAL);
        plugin_resp_header_set(r, "X-Conn", NULL); /* the upstream's, removed */
        plugin_resp_header_add(r, "X-Plugin", "A");
        size_t l = 0;
        const char *v = plugin_req_var(r, "route_id", &l);
        CHECK(v && l == 2 && memcmp(v, "r1", 2) == 0);
        v = plugin_req_arg(r, "k", &l);
        CHECK(v && l == 1 && *v == 'v');
        CHECK(plugin_req_arg(r, "secret", NULL) == NULL);
        if (tp.async) {
            uv_timer_init(&px.loop, &tp.timer);
            tp.waiting = r;
            plugin_set_abort(r, tp_abort, NULL);
            uv_timer_start(&tp.timer, tp_timer_cb, (uint64_t)tp.async_ms, 0);
            return PLUGIN_ASYNC;
        }
    }
    return PLUGIN_CONTINUE;
}

static void tp_body_cb(struct plugin_req *r, void *ud, const char *body, size_t len)
{
    (void)ud;
    if (tp.body_answer) {
        char b[300];
        int n = snprintf(b, sizeof(b), "got:%.*s", (int)(len > 200 ? 200 : len), body);
        plugin_respond(r, 200, "text/plain", b, (size_t)n);
    }
    plugin_resume(r);
}

static void tp_body_abort(void *ud)
{
    (void)ud;
    tp.aborts++;
}

static const struct consumer_rt tp_jack = {.username = "jack"};

static int tp_access(struct plugin_req *r, void *state, void **data)
{
    tp_trace("ac", TP_NAME(state));
    if (strcmp(TP_NAME(state), "A") == 0) {
        CHECK(*data && strcmp(*data, "A-data") == 0);
        if (tp.consumer) {
            plugin_req_set_consumer(r, &tp_jack);
            CHECK(plugin_req_consumer(r) == &tp_jack);
        }
        if (tp.stop_in) {
            plugin_respond_message(r, 401, "Missing \"API\" key");
            return PLUGIN_STOP;
        }
        if (tp.read_body) {
            plugin_set_abort(r, tp_body_abort, NULL);
            CHECK(plugin_req_read_body(r, tp.body_max, tp_body_cb, NULL) == 0);
            return PLUGIN_ASYNC;
        }
    }
    return PLUGIN_CONTINUE;
}

static int tp_before_proxy(struct plugin_req *r, void *state, void **data)
{
    (void)r;
    (void)data;
    tp_trace("bp", TP_NAME(state));
    return PLUGIN_CONTINUE;
}

static void tp_header_filter(struct plugin_req *r, void *state, void **data)
{
    (void)data;
    char b[48];
    snprintf(b, sizeof(b), "%s%d", TP_NAME(state), plugin_resp_status(r));
    tp_trace("hf", b);
    plugin_resp_header_add(r, "X-HF", TP_NAME(state));
}

static void tp_body_filter(struct plugin_req *r, void *state, void **data, const char *chunk,
                           size_t len)
{
    (void)r;
    (void)data;
    if (strcmp(TP_NAME(state), "A") == 0 && !tp.body_seen[0])
        snprintf(tp.body_seen, sizeof(tp.body_seen), "%.*s", (int)(len > 200 ? 200 : len), chunk);
}

static void tp_log(struct plugin_req *r, void *state, void **data)
{
    (void)data;
    tp_trace("log", TP_NAME(state));
    if (strcmp(TP_NAME(state), "A") == 0) {
        tp.log_status = plugin_resp_status(r);
        tp.logs++;
    }
}

static const struct plugin_def tp_def_hi = {
    .name = "tp-hi", .priority = 2000, .flags = PLUGIN_HTTP, .create = tp_create,
    .rewrite = tp_rewrite, .access = tp_access, .before_proxy = tp_before_proxy,
    .header_filter = tp_header_filter, .body_filter = tp_body_filter, .log = tp_log,
};
static const struct plugin_def tp_def_lo = {
    .name = "tp-lo", .priority = 1000, .flags = PLUGIN_HTTP,
    .rewrite = tp_rewrite, .access = tp_access, .before_proxy = tp_before_proxy,
    .header_filter = tp_header_filter, .log = tp_log,
};

/* Chains live in static storage (struct plugin_chain ends in a flexible
 * array). */
static _Alignas(max_align_t) unsigned char
    tp_route_buf[sizeof(struct plugin_chain) + 2 * sizeof(struct plugin_inst)];
static _Alignas(max_align_t) unsigned char
    tp_global_buf[sizeof(struct plugin_chain) + sizeof(struct plugin_inst)];
static struct plugin_chain *tp_gchains[1];

/* Route r1 gets A (priority 2000) and B (1000); a global rule G (1000). */
static void tp_setup(struct route_rt *rt, bool global)
{
    memset(&tp.trace, 0, sizeof(tp.trace));
    tp.stop_in = tp.async = tp.async_answer = tp.read_body = tp.body_answer = tp.consumer = 0;
    tp.aborts = tp.logs = 0;
    tp.log_status = 0;
    tp.body_seen[0] = '\0';
    struct plugin_chain *rc = (struct plugin_chain *)tp_route_buf;
    rc->n = 2;
    rc->inst[0] = (struct plugin_inst){.def = &tp_def_hi, .state = (void *)"A"};
    rc->inst[1] = (struct plugin_inst){.def = &tp_def_lo, .state = (void *)"B"};
    rt->chain = rc;
    if (global) {
        struct plugin_chain *gc = (struct plugin_chain *)tp_global_buf;
        gc->n = 1;
        gc->inst[0] = (struct plugin_inst){.def = &tp_def_lo, .state = (void *)"G"};
        tp_gchains[0] = gc;
        fk.snap.gchains = tp_gchains;
        fk.snap.ngchains = 1;
    }
}

static void wait_logs(int n)
{
    for (int i = 0; i < 300 && tp.logs < n; i++)
        msleep(10);
}

static void test_plugin_phases_and_edits(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    tp_setup(e.rt, true);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /orig?k=v&secret=s HTTP/1.1\r\nHost: h\r\nX-Set: client\r\n"
                      "X-Add: client\r\nX-Drop: x\r\nContent-Length: 0\r\n\r\n",
                      &r) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "PUT /new/path?k=v\n");
    CHECK_CONTAINS(r.body, "Host: rewritten.example\n");
    CHECK_CONTAINS(r.body, "X-Forwarded-Host: h\n");
    CHECK_CONTAINS(r.body, "X-Set: one\n");
    CHECK(strstr(r.body, "X-Set: client") == NULL);
    CHECK_CONTAINS(r.body, "X-Add: client\n");
    CHECK_CONTAINS(r.body, "X-Add: two\n");
    CHECK(strstr(r.body, "X-Drop") == NULL);
    CHECK_CONTAINS(r.body, "Content-Length: 0\n");
    CHECK(strstr(r.head, "X-Conn") == NULL);
    CHECK_CONTAINS(r.head, "X-Plugin: A");
    CHECK_CONTAINS(r.head, "X-HF: G\nX-HF: A\nX-HF: B");
    CHECK(strncmp(tp.body_seen, "PUT /new/path", 13) == 0);
    wait_logs(1);
    msleep(20);
    CHECK_STREQ(tp.trace, "rw:G rw:A rw:B ac:G ac:A ac:B bp:A bp:B hf:G200 hf:A200 hf:B200 "
                          "log:G log:A log:B");
    CHECK(tp.log_status == 200);
    cresp_free(&r);
    env_stop(&e);
    fk.snap.gchains = NULL;
    fk.snap.ngchains = 0;
}

/* chash with hash_on consumer: the key is the consumer a plugin attached
 * in access (computed after the plugins), else remote_addr. */
static void test_plugin_consumer_chash(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    json_t *conf = json_pack("{s:s}", "type", "chash");
    e.up->conf = conf;
    e.up->key = (char *)"consumer_name";
    tp_setup(e.rt, false);
    tp.consumer = 1;
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /c HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK_STREQ(fk.last_key, "jack");
    cresp_free(&r);
    env_stop(&e);
    json_decref(conf);
}

static void test_plugin_global_rule_on_404(void)
{
    struct env e;
    fk_reset();
    e.u = up_start();
    int ports[1] = {e.u->port};
    e.up = fk_up(1, "127.0.0.1", ports);
    e.rt = fk_route("/api", NULL, e.up);
    struct http_proxy_opts o;
    opts_default(&o);
    REQUIRE(px_start(&o) == 0);
    tp_setup(e.rt, true);
    struct cresp r = {0};
    REQUIRE(roundtrip("GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 404);
    CHECK_CONTAINS(r.body, "404 Route Not Found");
    CHECK_CONTAINS(r.head, "X-HF: G");
    CHECK(strstr(r.head, "X-HF: A") == NULL);
    wait_log(1);
    msleep(20);
    CHECK_STREQ(tp.trace, "rw:G ac:G hf:G404 log:G");
    cresp_free(&r);
    env_stop(&e);
    fk.snap.gchains = NULL;
    fk.snap.ngchains = 0;
}

static void test_plugin_stop(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    tp_setup(e.rt, false);
    tp.stop_in = 1;
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
    struct cresp r = {0};
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 401);
    CHECK_STREQ(r.body, "{\"message\":\"Missing \\\"API\\\" key\"}\n");
    CHECK_CONTAINS(r.head, "Content-Type: application/json");
    CHECK_CONTAINS(r.head, "X-Plugin: A"); /* rewrite's response edit on a local answer */
    CHECK_CONTAINS(r.head, "X-HF: A\nX-HF: B");
    CHECK(r.keepalive);
    CHECK(e.u->reqs == 0);
    /* HEAD: the answer's head only, the connection stays usable */
    cli_send(&c, "HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 1) == 0);
    CHECK(r.status == 401);
    CHECK_CONTAINS(r.head, "Content-Length: 34");
    /* the connection goes on */
    tp.stop_in = 0;
    cli_send(&c, "GET /y HTTP/1.1\r\nHost: h\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    cli_close(&c);
    wait_logs(3);
    CHECK(tp.logs == 3);
    CHECK(strstr(tp.trace, "ac:A hf:A401 hf:B401 log:A log:B") != NULL);
    cresp_free(&r);
    env_stop(&e);
}

static void test_plugin_async(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    tp_setup(e.rt, false);
    tp.async = 1;
    tp.async_ms = 50;
    struct cresp r = {0};
    uint64_t t0 = uv_hrtime();
    REQUIRE(roundtrip("GET /a HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 200);
    CHECK((uv_hrtime() - t0) / 1000000 >= 45);
    CHECK_CONTAINS(r.body, "PUT /new/path?k=v\n");
    /* the timer answers instead */
    tp_setup(e.rt, false);
    tp.async = tp.async_answer = 1;
    tp.async_ms = 20;
    REQUIRE(roundtrip("GET /a HTTP/1.1\r\nHost: h\r\n\r\n", &r) == 0);
    CHECK(r.status == 429);
    CHECK_STREQ(r.body, "{\"message\":\"slow down\"}\n");
    CHECK(e.u->reqs == 1);
    cresp_free(&r);
    /* the client leaves while the plugin waits: abort, then log (499) */
    tp_setup(e.rt, false);
    tp.async = 1;
    tp.async_ms = 5000;
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    msleep(100);
    cli_close(&c);
    wait_logs(1);
    CHECK(tp.aborts == 1);
    CHECK(tp.log_status == 499);
    /* the proxy stops while the plugin waits: abort too */
    tp_setup(e.rt, false);
    tp.async = 1;
    tp.async_ms = 5000;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    msleep(100);
    env_stop(&e);
    CHECK(tp.aborts == 1);
    CHECK(tp.logs == 1);
    cli_close(&c);
}

static void test_plugin_read_body(void)
{
    struct env e;
    REQUIRE(env_start(&e, NULL) == 0);
    tp_setup(e.rt, false);
    tp.read_body = tp.body_answer = 1;
    tp.body_max = 100;
    struct cresp r = {0};
    struct cli c;
    REQUIRE(cli_connect(&c, px.port) == 0);
    cli_send(&c, "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello");
    msleep(50);
    cli_send(&c, " world");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_STREQ(r.body, "got:hello world");
    CHECK_CONTAINS(r.head, "Content-Type: text/plain");
    CHECK(r.keepalive);
    /* chunked, and with Expect: 100-continue */
    cli_send(&c, "POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                 "Expect: 100-continue\r\n\r\n");
    {
        /* the plugin asked for the body: the client is told to send it */
        char b[64] = {0};
        ssize_t n = recv(c.fd, b, 25, MSG_WAITALL);
        CHECK(n == 25 && strncmp(b, "HTTP/1.1 100 Continue\r\n\r\n", 25) == 0);
    }
    cli_send(&c, "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
    REQUIRE(cli_read(&c, &r, 0) == 0);
    CHECK(r.status == 200);
    CHECK_STREQ(r.body, "got:abcde");
    cli_close(&c);
    CHECK(e.u->reqs == 0);
    /* declared over max: 413 at once, the abort runs */
    tp_setup(e.rt, false);
    tp.read_body = tp.body_answer = 1;
    tp.body_max = 10;
    REQUIRE(roundtrip("POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
                      &r) == 0);
    CHECK(r.status == 413);
    CHECK(tp.aborts == 1);
    /* chunked over max: 413 while reading */
    tp_setup(e.rt, false);
    tp.read_body = tp.body_answer = 1;
    tp.body_max = 4;
    REQUIRE(roundtrip("POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
                      &r) == 0);
    CHECK(r.status == 413);
    wait_logs(1);
    CHECK(tp.aborts == 1);
    /* the plugin reads the body and lets the request go on: the body goes
     * upstream from its buffer */
    tp_setup(e.rt, false);
    tp.read_body = 1;
    tp.body_max = 100;
    REQUIRE(roundtrip("POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n",
                      &r) == 0);
    CHECK(r.status == 200);
    CHECK_CONTAINS(r.body, "Content-Length: 6\n");
    CHECK(strstr(r.body, "Transfer-Encoding") == NULL);
    CHECK_CONTAINS(r.body, "\n\nabcdef");
    CHECK(e.u->reqs == 1);
    cresp_free(&r);
    env_stop(&e);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        only = argv[1];
    signal(SIGPIPE, SIG_IGN);
    if (only && strcmp(only, "serve") == 0) {
        /* Manual debugging: a proxy and an upstream until killed. */
        log_init("test", LOG_DEBUG);
        struct env e;
        struct http_proxy_opts o;
        http_proxy_opts_init(&o);
        if (env_start(&e, &o) != 0)
            return 1;
        printf("proxy port %d upstream port %d\n", px.port, e.u->port);
        fflush(stdout);
        for (;;)
            sleep(60);
    }
    log_init("test", LOG_ERROR);
    T(test_get);
    T(test_post_content_length);
    T(test_post_chunked);
    T(test_response_framings);
    T(test_404_and_local_errors);
    T(test_502_504);
    T(test_retry_next_node);
    T(test_keepalive_reuse);
    T(test_pipelining);
    T(test_limits);
    T(test_smuggling);
    T(test_timeouts);
    T(test_backpressure);
    T(test_upload_backpressure);
    T(test_websocket);
    T(test_pass_host_and_xff);
    T(test_expect_continue);
    T(test_max_connections);
    T(test_access_log);
    T(test_drain);
    T(test_garbage);
    T(test_dns_and_pool_limits);
    T(test_send_timeout);
    T(test_vars_and_chash);
    T(test_normalize_path);
    T(test_abort_and_early_response);
    pthread_mutex_init(&tp.mu, NULL);
    T(test_plugin_phases_and_edits);
    T(test_plugin_global_rule_on_404);
    T(test_plugin_consumer_chash);
    T(test_plugin_stop);
    T(test_plugin_async);
    T(test_plugin_read_body);
    T(test_stress);
    return check_summary();
}
