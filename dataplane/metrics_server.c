/*
 * metrics_server: see metrics_server.h.
 */
#include "metrics_server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "netaddr.h"

#define HEAD_MAX 8192
#define CONN_TIMEOUT_MS 10000

struct mconn {
    uv_tcp_t tcp;                /* tcp.data = mconn */
    uv_timer_t timer;            /* timer.data = mconn */
    struct metrics_server *ms;   /* owner */
    struct mconn *prev, *next;   /* ms->conns */
    uv_write_t wreq;             /* the one response write */
    char *resp;                  /* response bytes being written */
    size_t len;                  /* bytes of head read */
    int responded, closing, handles_open;
    char head[HEAD_MAX];
};

struct metrics_server {
    uv_tcp_t listener;
    metrics_render_fn render;
    void *ud;
    struct mconn *conns;
    int stopping;
};

static void on_handle_closed(uv_handle_t *h)
{
    struct mconn *c = h->data;
    if (--c->handles_open > 0)
        return;
    struct metrics_server *ms = c->ms;
    if (c->prev)
        c->prev->next = c->next;
    else
        ms->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c->resp);
    free(c);
}

/* Connections are closed before the listener, so their callbacks run first. */
static void on_listener_closed(uv_handle_t *h)
{
    free(h->data);
}

static void conn_close(struct mconn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static void respond(struct mconn *c, int status, const char *reason, const char *ctype,
                    char *body, size_t blen)
{
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\nServer: airgw/" AIRGW_VERSION "\r\n\r\n",
                      status, reason, ctype, blen);
    c->resp = malloc((size_t)hl + blen);
    if (!c->resp) {
        free(body);
        conn_close(c);
        return;
    }
    memcpy(c->resp, head, (size_t)hl);
    if (blen)
        memcpy(c->resp + hl, body, blen);
    free(body);
    c->responded = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_buf_t b = uv_buf_init(c->resp, (unsigned)((size_t)hl + blen));
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0)
        conn_close(c);
}

static void handle(struct mconn *c)
{
    char method[16], path[512];
    if (sscanf(c->head, "%15s %511s", method, path) != 2) {
        respond(c, 400, "Bad Request", "text/plain", strdup("bad request\n"), 12);
        return;
    }
    char *q = strchr(path, '?');
    if (q)
        *q = '\0';
    if (strcmp(path, "/apisix/prometheus/metrics") != 0) {
        respond(c, 404, "Not Found", "text/plain", strdup("not found\n"), 10);
        return;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        respond(c, 405, "Method Not Allowed", "text/plain", strdup("method not allowed\n"), 19);
        return;
    }
    size_t len = 0;
    char *body = c->ms->render(c->ms->ud, &len);
    if (!body) {
        respond(c, 503, "Service Unavailable", "text/plain", strdup("metrics unavailable\n"), 20);
        return;
    }
    if (strcmp(method, "HEAD") == 0) {
        free(body);
        respond(c, 200, "OK", "text/plain; version=0.0.4", NULL, 0);
        return;
    }
    respond(c, 200, "OK", "text/plain; version=0.0.4", body, len);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct mconn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init(c->head + c->len, (unsigned)(HEAD_MAX - 1 - c->len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct mconn *c = s->data;
    (void)buf;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    c->head[c->len] = '\0';
    if (strstr(c->head, "\r\n\r\n") || strstr(c->head, "\n\n")) {
        handle(c);
        return;
    }
    if (c->len >= HEAD_MAX - 1)
        respond(c, 431, "Request Header Fields Too Large", "text/plain", strdup("too large\n"),
                10);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_conn(uv_stream_t *server, int status)
{
    struct metrics_server *ms = server->data;
    if (status < 0 || ms->stopping)
        return;
    struct mconn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->ms = ms;
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    c->next = ms->conns;
    if (ms->conns)
        ms->conns->prev = c;
    ms->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, CONN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

struct metrics_server *metrics_server_start(uv_loop_t *loop, const struct sockaddr *addr,
                                            metrics_render_fn render, void *ud, char *err,
                                            size_t errlen)
{
    struct metrics_server *ms = calloc(1, sizeof(*ms));
    if (!ms)
        return NULL;
    ms->render = render;
    ms->ud = ud;
    uv_tcp_init(loop, &ms->listener);
    ms->listener.data = ms;
    char where[80];
    netaddr_format(addr, where, sizeof(where));
    int rc = uv_tcp_bind(&ms->listener, addr, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&ms->listener, 64, on_conn);
    if (rc < 0) {
        snprintf(err, errlen, "metrics: cannot listen on %s: %s", where, uv_strerror(rc));
        ms->stopping = 1;
        uv_close((uv_handle_t *)&ms->listener, on_listener_closed);
        return NULL;
    }
    struct sockaddr_storage b;
    int bl = sizeof(b);
    if (uv_tcp_getsockname(&ms->listener, (struct sockaddr *)&b, &bl) == 0)
        netaddr_format((struct sockaddr *)&b, where, sizeof(where));
    log_info("metrics listening on %s", where);
    return ms;
}

void metrics_server_stop(struct metrics_server *ms)
{
    if (!ms)
        return;
    ms->stopping = 1;
    for (struct mconn *c = ms->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&ms->listener, on_listener_closed);
}
