/*
 * http_proxy: the listener, client connections and the life of a request
 * (see http_proxy.h for the contract, http_conn.h for the objects).
 *
 * A client connection is driven by one function, hp_client_drive(), from
 * its state (enum hp_cstate):
 *
 *   CS_IDLE --first byte--> CS_HEAD --head parsed, routed--> CS_PROXY
 *   CS_PROXY --response and request complete--> CS_IDLE (keep-alive)
 *                                            or CS_LINGER (close)
 *   CS_PROXY --101 from upstream--> CS_TUNNEL
 *   any --error, timeout, EOF--> CS_CLOSING (uv_close; freed in its callback)
 *
 * Input is read into the worker's shared buffer and consumed before the read
 * callback returns; bytes that cannot be consumed yet (the rest of a read
 * after a request head, a pipelined request while the current one is
 * served) are copied to c->in and reading stops until they are consumed.
 * The request parser pauses at the end of the head and at the end of the
 * message, so body bytes are forwarded to the upstream as the spans of the
 * read buffer they arrived in, without copies when the upstream's socket
 * takes them at once.
 *
 * Each client waits for at most one deadline (enum hp_dl_kind); deadlines of
 * one kind all have the same duration, so each kind's list is sorted by
 * appending and one timer per worker serves every connection.
 */
#include "http_proxy.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <strings.h>
#include <unistd.h>

#include "http_conn.h"
#include "log.h"
#include "netaddr.h"
#include "tls.h"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static void client_close_cb(uv_handle_t *h);
static void client_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void client_write_cb(uv_write_t *w, int status);
static void answer_local(struct hp_client *c, int status, const char *json_msg, bool close);
static void dl_set(struct hp_client *c, int kind);
static void drain_timer_cb(uv_timer_t *t);

/* ---- the request parser ---- */

static int head_rc(struct hp_req *r, int rc)
{
    if (rc == HP_HEAD_OK)
        return 0;
    if (rc == HP_HEAD_TOO_BIG && r->head.n == 0)
        r->status = 414; /* the request line alone: nginx's 414 */
    else
        r->status = rc == HP_HEAD_BAD ? 400 : rc == HP_HEAD_NOMEM ? 500 : 431;
    return HPE_USER;
}

static int rq_on_url(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    return head_rc(r, hp_head_add(&r->head, HP_PART_FIRST, at, len));
}

static int rq_on_url_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    return head_rc(r, hp_head_end(&r->head, HP_PART_FIRST));
}

static int rq_on_field(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    return head_rc(r, hp_head_add(&r->head, HP_PART_NAME, at, len));
}

static int rq_on_field_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    return head_rc(r, hp_head_end(&r->head, HP_PART_NAME));
}

static int rq_on_value(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    return head_rc(r, hp_head_add(&r->head, HP_PART_VALUE, at, len));
}

static int rq_on_value_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    return head_rc(r, hp_head_end(&r->head, HP_PART_VALUE));
}

static int rq_on_headers_complete(llhttp_t *hp)
{
    (void)hp;
    return HPE_PAUSED; /* routed and connected before the body is read */
}

static int rq_on_body(llhttp_t *hp, const char *at, size_t len)
{
    struct hp_req *r = hp->data;
    r->body_in += len;
    uint64_t max = r->c->p->o.max_body_bytes;
    if (max && r->body_in > max) {
        r->status = 413;
        return HPE_USER;
    }
    if (r->flags & RQ_PBODY) {
        int st = hp_plugin_body_chunk(r, at, len);
        if (st) {
            r->status = st;
            return HPE_USER;
        }
    }
    return 0;
}

static int rq_on_message_complete(llhttp_t *hp)
{
    struct hp_req *r = hp->data;
    r->flags |= RQ_BODY_DONE;
    return HPE_PAUSED; /* the next pipelined request waits for this response */
}

static const llhttp_settings_t req_settings = {
    .on_url = rq_on_url,
    .on_url_complete = rq_on_url_complete,
    .on_header_field = rq_on_field,
    .on_header_field_complete = rq_on_field_complete,
    .on_header_value = rq_on_value,
    .on_header_value_complete = rq_on_value_complete,
    .on_headers_complete = rq_on_headers_complete,
    .on_body = rq_on_body,
    .on_message_complete = rq_on_message_complete,
};

/* ---- deadlines ---- */

static uint32_t dl_duration(const struct http_proxy *p, int kind)
{
    switch (kind) {
    case DL_HEADER:
        return p->o.client_header_timeout_ms;
    case DL_BODY:
        return p->o.client_body_timeout_ms;
    case DL_KEEPALIVE:
        return p->o.keepalive_timeout_ms;
    case DL_SEND:
        return p->o.send_timeout_ms;
    case DL_LINGER:
        return HP_LINGER_MS;
    default:
        return 0;
    }
}

static void dl_timer_cb(uv_timer_t *t);

static void dl_rearm(struct http_proxy *p)
{
    uint64_t min = 0;
    for (int k = 1; k < DL_COUNT; k++) {
        struct hp_deadline *d = p->dl[k].next;
        if (d != &p->dl[k] && (min == 0 || d->at < min))
            min = d->at;
    }
    if (min == 0) {
        if (p->dl_armed)
            uv_timer_stop(&p->dl_timer);
        p->dl_armed = 0;
        return;
    }
    if (p->dl_armed == min)
        return;
    uint64_t now = uv_now(p->loop);
    uv_timer_start(&p->dl_timer, dl_timer_cb, min > now ? min - now : 0, 0);
    p->dl_armed = min;
}

static void dl_unlink(struct hp_client *c)
{
    if (c->dl_kind == DL_NONE)
        return;
    c->dl.prev->next = c->dl.next;
    c->dl.next->prev = c->dl.prev;
    c->dl.prev = c->dl.next = NULL;
    c->dl_kind = DL_NONE;
}

/* Arms deadline kind (re-arms it from now when already of that kind). An
 * option of 0 means no timeout. */
static void dl_set(struct hp_client *c, int kind)
{
    struct http_proxy *p = c->p;
    dl_unlink(c);
    uint32_t ms = dl_duration(p, kind);
    if (kind == DL_NONE || ms == 0)
        return;
    struct hp_deadline *head = &p->dl[kind];
    c->dl.at = uv_now(p->loop) + ms;
    c->dl.prev = head->prev;
    c->dl.next = head;
    head->prev->next = &c->dl;
    head->prev = &c->dl;
    c->dl_kind = (uint8_t)kind;
    if (p->dl_armed == 0 || c->dl.at < p->dl_armed) {
        uv_timer_start(&p->dl_timer, dl_timer_cb, ms, 0);
        p->dl_armed = c->dl.at;
    }
}

static void client_timeout(struct hp_client *c, int kind)
{
    struct hp_req *r = c->req;
    switch (kind) {
    case DL_HEADER:
        if (r && c->state == CS_HEAD) {
            c->state = CS_PROXY;
            answer_local(c, 408, NULL, true);
            hp_client_drive(c);
        } else {
            hp_client_close(c);
        }
        break;
    case DL_BODY:
        if (r && !(r->flags & RQ_RESP_STARTED)) {
            hp_up_detach(r, false);
            answer_local(c, 408, NULL, true);
            hp_client_drive(c);
        } else {
            hp_client_close(c);
        }
        break;
    default: /* keep-alive, send, linger */
        hp_client_close(c);
        break;
    }
}

static void dl_timer_cb(uv_timer_t *t)
{
    struct http_proxy *p = t->data;
    uint64_t now = uv_now(p->loop);
    p->dl_armed = 0;
    for (int k = 1; k < DL_COUNT; k++) {
        for (;;) {
            struct hp_deadline *d = p->dl[k].next;
            if (d == &p->dl[k] || d->at > now)
                break;
            struct hp_client *c = container_of(d, struct hp_client, dl);
            dl_unlink(c);
            client_timeout(c, k);
        }
    }
    dl_rearm(p);
}

/* ---- requests ---- */

static struct hp_req *req_new(struct hp_client *c)
{
    struct http_proxy *p = c->p;
    struct hp_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->c = c;
    llhttp_init(&r->parser, HTTP_REQUEST, &req_settings);
    r->parser.data = r;
    hp_head_init(&r->head, p->o.max_header_bytes, p->o.max_headers);
    hp_head_init(&r->rhead, HP_RESP_HEAD_MAX, HP_RESP_HEADERS_MAX);
    r->h_host = -1;
    r->t_start = uv_hrtime();
    c->req = r;
    p->st.requests_active++;
    return r;
}

/* What routing and the chash key see of a request. */
static struct route_query req_query(struct hp_req *r)
{
    return (struct route_query){
        .method = r->method,
        .host = r->host,
        .path = r->path,
        .path_len = r->path_len,
        .remote = &r->c->peer.sa,
        .var = hp_req_var,
        .var_ud = r,
    };
}

void hp_req_info(struct hp_req *r, int status, uint64_t now, struct http_request_info *out)
{
    *out = (struct http_request_info){
        .route = r->route,
        .status = status,
        .latency_us = (now - r->t_start) / 1000,
        .upstream_latency_us = r->t_up_head ? (r->t_up_head - r->t_up_start) / 1000 : 0,
        .bytes_in = r->bytes_in,
        .bytes_out = r->bytes_out,
        .method = r->method,
        .host = r->host ? hp_req_var(r, "host", NULL) : NULL,
        .uri = r->path,
        .node_host = r->attempts ? r->node.host : NULL,
        .node_port = r->attempts ? r->node.port : 0,
        .upstream_status = r->up_last,
        .matched_uri = r->route ? r->matched_uri : NULL,
        .matched_host = r->route ? r->matched_host : NULL,
    };
}

/* Logs and reports a request, drops its references and frees it. Never
 * called from inside one of its parser callbacks. */
static void req_finish(struct hp_client *c)
{
    struct hp_req *r = c->req;
    struct http_proxy *p = c->p;
    if (r->uc || (r->flags & RQ_NODE_STARTED))
        hp_up_detach(r, false);
    if (r->status == 0 && (r->route || r->snap))
        r->status = 499; /* the client went away first (nginx's code) */
    /* The plugins' log phase: once, whatever happened (also when freeing). */
    if (r->pr)
        hp_plugin_end(r);
    /* A request is counted once its head was read or an answer was sent. */
    if (!p->freeing && (r->route || r->status || r->snap)) {
        uint64_t now = uv_hrtime();
        uint64_t lat = (now - r->t_start) / 1000;
        uint64_t ulat = r->t_up_head ? (r->t_up_head - r->t_up_start) / 1000 : 0;
        if (p->o.on_request_done)
            p->o.on_request_done(p->o.hook_ud, r->route, r->status, lat, ulat, r->bytes_in,
                                 r->bytes_out);
        if (p->o.on_request_info) {
            struct http_request_info info;
            hp_req_info(r, r->status, now, &info);
            p->o.on_request_info(p->o.hook_ud, &info);
        }
        hp_access_log(p, r);
        p->st.requests_total++;
    }
    if (r->snap)
        snapshot_unref(r->snap);
    hp_head_free(&r->head);
    hp_head_free(&r->rhead);
    hp_scratch_free(r);
    free(r->ohead);
    free(r->uhead);
    free(r);
    c->req = NULL;
    p->st.requests_active--;
}

/* A request is over when its response is complete and its body was read
 * (or will not be: the connection closes). */
static bool req_complete(const struct hp_req *r)
{
    return (r->flags & RQ_RESP_DONE) && (r->flags & (RQ_BODY_DONE | RQ_CLOSE));
}

/* ---- client output ---- */

bool hp_client_send(struct hp_client *c, const uv_buf_t *bufs, unsigned n)
{
    if (c->state == CS_CLOSING)
        return false;
    int rc = hp_send(c->p, (uv_stream_t *)&c->tcp, c->tls, bufs, n, client_write_cb, &c->wq);
    if (rc < 0) {
        hp_client_close(c);
        return false;
    }
    if (c->req)
        for (unsigned i = 0; i < n; i++)
            c->req->bytes_out += bufs[i].len;
    /* A client that stops reading must not hold the connection forever:
     * the send timeout runs while something is queued and no other
     * deadline does (the upstream may be paused for this very client). */
    if (c->tcp.write_queue_size > 0 && c->dl_kind == DL_NONE)
        dl_set(c, DL_SEND);
    return true;
}

static void client_write_cb(uv_write_t *w, int status)
{
    struct hp_client *c = w->data;
    hp_write_done(c->p, w);
    if (c->state == CS_CLOSING)
        return;
    if (status < 0) {
        hp_client_close(c);
        return;
    }
    if (c->dl_kind == DL_SEND)
        dl_set(c, DL_SEND); /* progress: the send timeout runs between writes */
    if (c->wq <= HP_LOW_WATER) {
        if (c->req)
            hp_up_client_drained(c->req);
        if (c->state != CS_CLOSING)
            hp_client_drive(c);
    }
}

/* Answers the current request locally. close: the connection closes after
 * the answer (framing errors, timeouts); otherwise an unread request body is
 * read and discarded when that is safe, so the connection can be kept. */
static void answer_local(struct hp_client *c, int status, const char *json_msg, bool close)
{
    struct hp_req *r = c->req;
    struct http_proxy *p = c->p;
    if (c->state == CS_CLOSING || !r)
        return;
    if (!(r->flags & RQ_BODY_DONE) && (r->flags & RQ_EXPECT) && !(r->flags & RQ_CONTINUE_SENT))
        close = true; /* the client waits for 100 Continue; it may never send the body */
    bool keep = !close && (r->flags & RQ_KEEPALIVE) && !p->draining;
    size_t len;
    char *buf = r->pr ? hp_plugin_local_response(r, status, json_msg, keep, &len)
                      : hp_local_response(p, status, json_msg, keep, &len);
    if (!buf) {
        hp_client_close(c);
        return;
    }
    r->status = status;
    r->flags |= RQ_RESP_DONE | RQ_RESP_STARTED;
    if (!keep)
        r->flags |= RQ_CLOSE;
    c->state = CS_PROXY;
    if (r->flags & RQ_HEAD) {
        /* HEAD: the head alone (a body would be read as the next response). */
        char *e = memmem(buf, len, "\r\n\r\n", 4);
        if (e)
            len = (size_t)(e + 4 - buf);
    }
    uv_buf_t b = uv_buf_init(buf, (unsigned)len);
    hp_client_send(c, &b, 1);
    free(buf);
}

void hp_req_answer(struct hp_req *r, int status, const char *json_msg)
{
    answer_local(r->c, status, json_msg, false);
}

void hp_req_answer_error(struct hp_req *r, int status)
{
    struct hp_client *c = r->c;
    if (c->state == CS_CLOSING)
        return;
    answer_local(c, status, NULL, false);
    hp_client_drive(c);
}

void hp_log_field_add(char *field, const char *s)
{
    size_t l = strlen(field);
    if (l)
        snprintf(field + l, HP_LOG_FIELD_MAX - l, ", %s", s);
    else
        snprintf(field, HP_LOG_FIELD_MAX, "%s", s);
}

/* ---- closing ---- */

void hp_client_close(struct hp_client *c)
{
    if (c->state == CS_CLOSING)
        return;
    c->state = CS_CLOSING;
    dl_unlink(c);
    if (c->req && c->req->uc)
        hp_up_detach(c->req, false);
    uv_close((uv_handle_t *)&c->tcp, client_close_cb);
}

static void drain_check(struct http_proxy *p)
{
    if (p->draining && p->drain_done && p->st.connections_active == 0 && !p->freeing)
        uv_timer_start(&p->drain_timer, drain_timer_cb, 0, 0);
}

static void client_close_cb(uv_handle_t *h)
{
    struct hp_client *c = h->data;
    struct http_proxy *p = c->p;
    if (c->req)
        req_finish(c);
    if (c->in) {
        hp_buffered_add(p, -(int64_t)c->in_len);
        free(c->in);
    }
    tls_conn_free(c->tls);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
    p->st.connections_active--;
    drain_check(p);
    hp_handle_gone(p);
}

/* After our FIN: when the response is out and the client has sent nothing
 * we have not read, there is nothing for a lingering read to protect, so the
 * connection closes now (as nginx does for a request it read completely);
 * otherwise it lingers until the client's FIN, so unread input cannot turn
 * into a reset that destroys the response. */
static void shutdown_cb(uv_shutdown_t *sr, int status)
{
    struct hp_client *c = sr->data;
    free(sr);
    if (c->state == CS_CLOSING)
        return;
    if (status < 0) {
        hp_client_close(c);
        return;
    }
    uv_os_fd_t fd;
    int pending = 1;
    if (c->state == CS_LINGER && c->in_len == 0 && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 &&
        ioctl(fd, FIONREAD, &pending) < 0)
        pending = 1;
    if (c->state == CS_LINGER && c->in_len == 0 && pending == 0)
        hp_client_close(c);
}

void hp_client_shutdown(struct hp_client *c)
{
    if (c->state == CS_CLOSING || (c->flags & CF_SHUT))
        return;
    if (c->tls &&
        (tls_conn_shutdown(c->tls) < 0 ||
         hp_tls_flush(c->p, (uv_stream_t *)&c->tcp, c->tls, client_write_cb, &c->wq) < 0)) {
        hp_client_close(c); /* close_notify first, then the FIN */
        return;
    }
    uv_shutdown_t *sr = malloc(sizeof(*sr));
    if (!sr) {
        hp_client_close(c);
        return;
    }
    sr->data = c;
    if (uv_shutdown(sr, (uv_stream_t *)&c->tcp, shutdown_cb) < 0) {
        free(sr);
        hp_client_close(c);
        return;
    }
    c->flags |= CF_SHUT;
}

/* Server-side close after a response: FIN after the queued writes, then
 * read and drop until the client's FIN (or HP_LINGER_MS), so unread input
 * does not turn into a RST that destroys the response in flight. */
static void client_linger(struct hp_client *c)
{
    /* Pending input is dropped by client_feed in CS_LINGER (it may be the
     * buffer being fed right now). */
    c->state = CS_LINGER;
    hp_client_shutdown(c);
}

/* The current request is complete: next request, or close. */
static void request_end(struct hp_client *c)
{
    struct hp_req *r = c->req;
    bool keep = (r->flags & RQ_KEEPALIVE) && !(r->flags & RQ_CLOSE) && !c->p->draining;
    req_finish(c);
    if (keep) {
        c->state = CS_IDLE;
        c->flags |= CF_SERVED;
    } else {
        client_linger(c);
    }
}

/* ---- request head ---- */

/* A Host (or absolute-form authority) as nginx accepts it: a name or
 * address, an optional port; no path, whitespace, userinfo or backslash. */
static bool valid_host(const char *h)
{
    if (!*h || *h == '.')
        return false;
    for (const char *p = h; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= 0x20 || ch == 0x7f || ch == '/' || ch == '\\' || ch == '@' || ch == '?' ||
            ch == '#')
            return false;
    }
    return true;
}

/* Validates the parsed head, routes the request and starts the upstream
 * attempt (or answers locally). */
static void req_start(struct hp_client *c)
{
    struct hp_req *r = c->req;
    struct http_proxy *p = c->p;
    llhttp_t *hp = &r->parser;
    struct hp_head *h = &r->head;

    r->method = llhttp_method_name((llhttp_method_t)hp->method);
    if (hp->http_major != 1) {
        answer_local(c, hp->http_major > 1 ? 505 : 400, NULL, true);
        return;
    }
    if (hp->http_minor == 0)
        r->flags |= RQ_HTTP10;
    if (llhttp_should_keep_alive(hp))
        r->flags |= RQ_KEEPALIVE;
    if (hp->method == HTTP_CONNECT) {
        answer_local(c, 405, NULL, true);
        return;
    }
    if (hp->method == HTTP_HEAD)
        r->flags |= RQ_HEAD;

    /* Framing: llhttp already refused Content-Length with Transfer-Encoding,
     * several Content-Length, and codings after chunked. */
    if (hp->flags & F_TRANSFER_ENCODING) {
        if (!(hp->flags & F_CHUNKED) || (r->flags & RQ_HTTP10)) {
            answer_local(c, 400, NULL, true);
            return;
        }
        r->flags |= RQ_CHUNKED | RQ_HAS_BODY;
    } else if ((hp->flags & F_CONTENT_LENGTH) && hp->content_length > 0) {
        r->flags |= RQ_HAS_BODY;
        if (p->o.max_body_bytes && hp->content_length > p->o.max_body_bytes) {
            answer_local(c, 413, NULL, true);
            return;
        }
    }
    if (!(r->flags & RQ_HAS_BODY))
        r->flags |= RQ_BODY_DONE;

    /* Host: exactly one for HTTP/1.1, at most one for 1.0. */
    r->h_host = hp_hfind(h, "host", 0);
    if ((r->h_host >= 0 && hp_hfind(h, "host", (uint32_t)r->h_host + 1) >= 0) ||
        (r->h_host < 0 && !(r->flags & RQ_HTTP10)) ||
        (r->h_host >= 0 && h->h[r->h_host].value_len == 0)) {
        answer_local(c, 400, NULL, true);
        return;
    }
    if (r->h_host >= 0)
        r->host = hp_hvalue(h, (uint32_t)r->h_host);
    if (r->host && !valid_host(r->host)) {
        answer_local(c, 400, NULL, true);
        return;
    }

    /* Request-target: origin-form, or absolute-form whose authority wins. */
    const char *url = h->buf;
    size_t ulen = h->first_len;
    const char *target = url;
    size_t tlen = ulen;
    if (ulen == 0) {
        answer_local(c, 400, NULL, true);
        return;
    }
    if (url[0] != '/') {
        size_t sl = ulen > 7 && strncasecmp(url, "http://", 7) == 0    ? 7
                    : ulen > 8 && strncasecmp(url, "https://", 8) == 0 ? 8
                                                                       : 0;
        if (sl) {
            const char *a = url + sl, *e = url + ulen;
            const char *s = a;
            while (s < e && *s != '/' && *s != '?')
                s++;
            if (s == a) {
                answer_local(c, 400, NULL, true);
                return;
            }
            r->host = hp_scratch_strndup(r, a, (size_t)(s - a));
            if (!r->host || !valid_host(r->host)) {
                answer_local(c, 400, NULL, true);
                return;
            }
            if (s == e || *s == '?') {
                char *t = hp_scratch_alloc(r, (size_t)(e - s) + 2);
                if (!t) {
                    answer_local(c, 500, NULL, true);
                    return;
                }
                t[0] = '/';
                memcpy(t + 1, s, (size_t)(e - s));
                t[e - s + 1] = '\0';
                target = t;
                tlen = (size_t)(e - s) + 1;
            } else {
                target = s;
                tlen = (size_t)(e - s);
            }
        } else {
            answer_local(c, 400, NULL, true);
            return;
        }
    }
    r->target = target;
    const char *q = memchr(target, '?', tlen);
    size_t plen = q ? (size_t)(q - target) : tlen;
    if (q)
        r->args = hp_scratch_strndup(r, q + 1, tlen - plen - 1);
    char *path = hp_scratch_alloc(r, plen + 1);
    long nl = path ? hp_normalize_path(target, plen, path) : -1;
    if (nl < 0) {
        answer_local(c, 400, NULL, true);
        return;
    }
    r->path = path;
    r->path_len = (size_t)nl;

    if (r->flags & RQ_HAS_BODY) {
        int ei = hp_hfind(h, "expect", 0);
        if (ei >= 0 && !(r->flags & RQ_HTTP10) &&
            hp_has_token(hp_hvalue(h, (uint32_t)ei), h->h[ei].value_len, "100-continue"))
            r->flags |= RQ_EXPECT;
    }

    /* Route on the snapshot current now; the request keeps it to its end. */
    struct snapshot *s = p->current(p->current_ud);
    if (!s) {
        answer_local(c, 404, "404 Route Not Found", false);
        return;
    }
    r->snap = snapshot_ref(s);
    struct route_query rq = req_query(r);
    r->route = snapshot_match_ex(r->snap, &rq, &r->matched_uri, &r->matched_host);
    /* Plugins (global rules run also without a route) take the request
     * over when a chain applies; else it goes on at once. */
    if (hp_plugin_begin(r))
        return;
    if (hp_req_prepare(r))
        hp_up_start(r);
}

bool hp_req_prepare(struct hp_req *r)
{
    struct hp_client *c = r->c;
    struct http_proxy *p = c->p;
    llhttp_t *hp = &r->parser;
    struct hp_head *h = &r->head;
    if (!r->route) {
        answer_local(c, 404, "404 Route Not Found", false);
        return false;
    }
    r->up = r->route->up;
    if (!r->up) {
        answer_local(c, 502, "missing upstream configuration in Route or Service", false);
        return false;
    }
    if (r->up->scheme != UP_HTTP && r->up->scheme != UP_HTTPS) {
        static const char *names[] = {"http", "https", "grpc", "grpcs", "tcp", "tls", "udp"};
        unsigned sc = (unsigned)r->up->scheme;
        log_warn("worker %d: route %s: upstream scheme %s is not supported yet", p->o.worker_id,
                 r->route->id, sc < 7 ? names[sc] : "?");
        answer_local(c, 502, NULL, false);
        return false;
    }

    /* Upgrade: passed through only for websocket on a route that allows it;
     * otherwise it is dropped and the request is an ordinary one. */
    if (hp->upgrade) {
        int ui = hp_hfind(h, "upgrade", 0);
        if (r->route->enable_websocket && ui >= 0 && !(r->flags & RQ_HAS_BODY) &&
            hp_has_token(hp_hvalue(h, (uint32_t)ui), h->h[ui].value_len, "websocket"))
            r->flags |= RQ_WS;
        else
            hp->upgrade = 0;
    }

    /* The chash key, computed once for every attempt (after the plugins:
     * hash_on consumer needs the consumer they found). */
    const char *type = json_string_value(json_object_get(r->up->conf, "type"));
    if (type && strcmp(type, "chash") == 0) {
        struct route_query rq = req_query(r);
        char kb[512];
        size_t kl = snapshot_hash_key(r->up, &rq, kb, sizeof(kb));
        if (kl >= sizeof(kb))
            kl = sizeof(kb) - 1;
        r->hashkey = hp_scratch_strndup(r, kb, kl);
        r->hashkey_len = r->hashkey ? kl : 0;
    }
    return true;
}

/* Consumes head bytes. Returns how many were consumed. */
static size_t feed_head(struct hp_client *c, const char *data, size_t n)
{
    struct hp_req *r = c->req;
    struct http_proxy *p = c->p;
    r->head.exec_start = data;
    llhttp_errno_t e = llhttp_execute(&r->parser, data, n);
    size_t k = n;
    if (e != HPE_OK) {
        const char *pos = llhttp_get_error_pos(&r->parser);
        if (pos && pos >= data && pos <= data + n)
            k = (size_t)(pos - data);
    }
    r->bytes_in += k;
    if (e != HPE_OK && e != HPE_PAUSED) {
        int status = e == HPE_USER && r->status ? r->status : 400;
        r->status = 0;
        c->state = CS_PROXY;
        answer_local(c, status, NULL, true);
        return n;
    }
    if (r->bytes_in > p->o.max_header_bytes) {
        c->state = CS_PROXY;
        answer_local(c, r->head.n == 0 && r->head.part != HP_PART_FIRST_DONE ? 414 : 431, NULL,
                     true);
        return n;
    }
    if (e == HPE_PAUSED) {
        llhttp_resume(&r->parser);
        c->state = CS_PROXY;
        req_start(c);
    }
    return k;
}

/* Consumes request body bytes (forwarding them, or dropping them after a
 * local answer). Returns how many were consumed. */
static size_t feed_body(struct hp_client *c, const char *data, size_t n)
{
    struct hp_req *r = c->req;
    llhttp_errno_t e = llhttp_execute(&r->parser, data, n);
    size_t k = n;
    if (e == HPE_PAUSED) {
        k = (size_t)(llhttp_get_error_pos(&r->parser) - data);
        llhttp_resume(&r->parser);
    } else if (e != HPE_OK) {
        int status = e == HPE_USER && r->status ? r->status : 400;
        r->status = 0;
        if (r->flags & RQ_RESP_DONE) {
            hp_client_close(c); /* while discarding: just close */
        } else if (!(r->flags & RQ_RESP_STARTED)) {
            hp_up_detach(r, false);
            answer_local(c, status, NULL, true);
        } else {
            hp_client_close(c);
        }
        return n;
    }
    r->bytes_in += k;
    if (r->flags & RQ_RESP_DONE)
        return k; /* discarding after a local answer */
    if (r->flags & RQ_PBODY) {
        /* A plugin reads the body (rq_on_body copied it). */
        if (r->flags & RQ_BODY_DONE)
            hp_plugin_body_done(r);
        return k;
    }
    if (k) {
        r->flags |= RQ_BODY_FWD;
        if (!hp_up_send(r, data, k))
            return c->state == CS_CLOSING ? n : k;
    }
    if (r->flags & RQ_BODY_DONE)
        hp_up_request_done(r);
    return k;
}

/* Consumes as much input as the state allows; returns the count. */
static size_t client_feed(struct hp_client *c, const char *data, size_t n)
{
    size_t off = 0;
    while (off < n) {
        struct hp_req *r = c->req;
        switch (c->state) {
        case CS_IDLE:
            if (c->wq > HP_HIGH_WATER)
                return off;
            if (!req_new(c)) {
                hp_client_close(c);
                return n;
            }
            c->state = CS_HEAD;
            if (c->dl_kind != DL_HEADER)
                dl_set(c, DL_HEADER);
            break;
        case CS_HEAD:
            off += feed_head(c, data + off, n - off);
            break;
        case CS_PROXY:
            if (req_complete(r)) {
                request_end(c);
                break;
            }
            if (r->flags & RQ_BODY_DONE)
                return off;
            if (!(r->flags & (RQ_RESP_DONE | RQ_PBODY)) && !hp_up_writable(r))
                return off;
            {
                size_t k = feed_body(c, data + off, n - off);
                off += k;
                if (k == 0 && c->state == CS_PROXY && !(r->flags & RQ_BODY_DONE))
                    return off;
            }
            break;
        case CS_TUNNEL:
            if ((c->flags & CF_EOF) || !hp_up_writable(r))
                return off;
            r->bytes_in += n - off;
            if (!hp_up_send(r, data + off, n - off))
                return n;
            off = n;
            break;
        default: /* CS_LINGER drops input; CS_CLOSING ignores it */
            return n;
        }
    }
    return off;
}

static void save_input(struct hp_client *c, const char *data, size_t n)
{
    if (c->in && c->in_off == c->in_len) {
        hp_buffered_add(c->p, -(int64_t)c->in_len);
        free(c->in);
        c->in = NULL;
        c->in_off = c->in_len = 0;
    }
    size_t keep = c->in ? c->in_len - c->in_off : 0;
    char *nb = malloc(keep + n);
    if (!nb) {
        hp_client_close(c);
        return;
    }
    if (keep)
        memcpy(nb, c->in + c->in_off, keep);
    memcpy(nb + keep, data, n);
    if (c->in) {
        hp_buffered_add(c->p, -(int64_t)c->in_len);
        free(c->in);
    }
    c->in = nb;
    c->in_off = 0;
    c->in_len = (uint32_t)(keep + n);
    hp_buffered_add(c->p, (int64_t)c->in_len);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct hp_client *c = h->data;
    *buf = uv_buf_init(c->p->rbuf, sizeof(c->p->rbuf));
}

/* Decides reading and the deadline from the state. */
static void client_update_io(struct hp_client *c)
{
    struct hp_req *r = c->req;
    bool want = false;
    int dl = DL_NONE;
    bool pending = c->in != NULL;
    switch (c->state) {
    case CS_IDLE:
        want = !pending;
        if (pending || c->tcp.write_queue_size > 0)
            dl = DL_SEND; /* the last response is still being written */
        else if (c->p->draining)
            dl = DL_LINGER; /* a short grace for a request already on its way */
        else
            dl = (c->flags & CF_SERVED) ? DL_KEEPALIVE : DL_HEADER;
        break;
    case CS_HEAD:
        want = !pending;
        dl = DL_HEADER;
        break;
    case CS_PROXY:
        if (!(r->flags & RQ_BODY_DONE) &&
            ((r->flags & (RQ_RESP_DONE | RQ_PBODY)) || hp_up_writable(r))) {
            if ((r->flags & RQ_EXPECT) && !(r->flags & (RQ_CONTINUE_SENT | RQ_RESP_STARTED)) &&
                r->body_in == 0 && !pending) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                uv_buf_t b = uv_buf_init((char *)cont, sizeof(cont) - 1);
                r->flags |= RQ_CONTINUE_SENT;
                if (!hp_client_send(c, &b, 1))
                    return;
            }
            want = !pending;
            dl = DL_BODY;
        } else {
            /* Waiting for or relaying the response: a read stays armed to
             * notice the client leaving (499, upstream closed, as nginx);
             * a pipelined request read meanwhile is parked in c->in. */
            want = (r->flags & RQ_BODY_DONE) && !pending;
            if (c->tcp.write_queue_size > 0)
                dl = DL_SEND;
        }
        break;
    case CS_TUNNEL:
        want = !pending && !(c->flags & CF_EOF) && hp_up_writable(r);
        dl = c->tcp.write_queue_size > 0 ? DL_SEND : DL_NONE;
        break;
    case CS_LINGER:
        want = true;
        dl = DL_LINGER;
        break;
    default:
        return;
    }
    if (want && !(c->flags & CF_READING)) {
        if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, client_read_cb) < 0) {
            hp_client_close(c);
            return;
        }
        c->flags |= CF_READING;
    } else if (!want && (c->flags & CF_READING)) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->flags &= (uint8_t)~CF_READING;
    }
    /* Fixed deadlines (header, keep-alive, linger) are not pushed back by
     * later calls; body and send deadlines are re-armed by progress. */
    if (dl != c->dl_kind)
        dl_set(c, dl);
}

void hp_client_drive(struct hp_client *c)
{
    if (c->flags & CF_IN_DRIVE) {
        c->flags |= CF_AGAIN;
        return;
    }
    c->flags |= CF_IN_DRIVE;
    do {
        c->flags &= (uint8_t)~CF_AGAIN;
        if (c->state == CS_CLOSING)
            break;
        if (c->state == CS_PROXY && req_complete(c->req)) {
            request_end(c);
            c->flags |= CF_AGAIN;
            continue;
        }
        if (c->in) {
            size_t k = client_feed(c, c->in + c->in_off, c->in_len - c->in_off);
            if (c->state == CS_CLOSING)
                break;
            c->in_off += (uint32_t)k;
            if (c->in_off == c->in_len) {
                hp_buffered_add(c->p, -(int64_t)c->in_len);
                free(c->in);
                c->in = NULL;
                c->in_off = c->in_len = 0;
            }
            if (k)
                c->flags |= CF_AGAIN;
        }
    } while (c->flags & CF_AGAIN);
    if (c->state != CS_CLOSING)
        client_update_io(c);
    c->flags &= (uint8_t)~CF_IN_DRIVE;
    if (c->state != CS_CLOSING && (c->flags & CF_AGAIN)) {
        c->flags &= (uint8_t)~CF_AGAIN;
        hp_client_drive(c);
    }
}

/* The client sent FIN (or close_notify), or its connection failed. */
static void client_eof(struct hp_client *c, ssize_t err)
{
    if (c->state == CS_TUNNEL && err == UV_EOF) {
        c->flags |= CF_EOF;
        hp_up_client_eof(c->req);
        if (c->state != CS_CLOSING)
            hp_client_drive(c);
        return;
    }
    /* Idle, a partial head, a body cut short, a lingering close: all
     * end the connection (an unfinished request is logged as 499). */
    hp_client_close(c);
}

/* Plaintext from the client: one read, or one decrypted piece of it. The
 * caller drives the connection afterwards unless it is closing. */
static void client_input(struct hp_client *c, const char *data, size_t n)
{
    if (c->in && c->state != CS_LINGER) {
        save_input(c, data, n); /* behind input already parked (TLS: a later record) */
        return;
    }
    c->flags |= CF_IN_DRIVE;
    size_t k = client_feed(c, data, n);
    if (c->state == CS_CLOSING)
        return;
    if (k < n)
        save_input(c, data + k, n - k);
    if (c->state == CS_CLOSING)
        return;
    if (c->state == CS_PROXY && c->dl_kind == DL_BODY)
        dl_set(c, DL_BODY); /* body timeout runs between two reads */
    c->flags &= (uint8_t)~CF_IN_DRIVE;
}

static bool client_tls_flush(struct hp_client *c)
{
    if (hp_tls_flush(c->p, (uv_stream_t *)&c->tcp, c->tls, client_write_cb, &c->wq) < 0) {
        hp_client_close(c);
        return false;
    }
    return true;
}

static void tls_log_failure(struct http_proxy *p, const struct hp_client *c, const char *what)
{
    /* Scanners and broken clients come in bursts: one line per second. */
    uint64_t now = uv_now(p->loop);
    if (p->tls_warned && now - p->tls_warned < 1000)
        return;
    p->tls_warned = now;
    char ip[64];
    netaddr_format_ip(&c->peer.sa, ip, sizeof(ip));
    const char *sni = tls_conn_sni(c->tls);
    log_info("worker %d: TLS %s with %s (server name %s): %s", p->o.worker_id, what, ip,
             sni ? sni : "none", tls_conn_error(c->tls));
}

/* Ciphertext from an HTTPS client: the handshake, then plaintext records
 * decrypted into the shared buffer (the ciphertext was copied out of it
 * first) and consumed like a plain read. */
static void client_tls_read(struct hp_client *c, const char *data, size_t n)
{
    struct http_proxy *p = c->p;
    if (tls_conn_feed(c->tls, data, n) < 0) {
        hp_client_close(c);
        return;
    }
    bool was_done = tls_conn_handshake_done(c->tls);
    for (;;) {
        /* Every record of this read at once, as one plain read would be. */
        size_t got = 0;
        long k = 0;
        while (got < sizeof(p->rbuf) &&
               (k = tls_conn_read(c->tls, p->rbuf + got, sizeof(p->rbuf) - got)) > 0)
            got += (size_t)k;
        if (got) {
            client_input(c, p->rbuf, got);
            if (c->state == CS_CLOSING)
                return;
            if (k > 0)
                continue; /* the buffer was full */
        }
        if (!client_tls_flush(c)) /* handshake messages, tickets, alerts */
            return;
        if (k == -EAGAIN)
            break;
        if (k == 0) {
            client_eof(c, UV_EOF); /* close_notify */
            return;
        }
        tls_log_failure(p, c, was_done ? "error" : "handshake failed");
        hp_client_close(c);
        return;
    }
    hp_client_drive(c);
}

static void client_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct hp_client *c = s->data;
    if (nread == 0 || c->state == CS_CLOSING)
        return;
    if (nread < 0) {
        client_eof(c, nread);
        return;
    }
    if (c->tls) {
        client_tls_read(c, buf->base, (size_t)nread);
        return;
    }
    client_input(c, buf->base, (size_t)nread);
    if (c->state != CS_CLOSING)
        hp_client_drive(c);
}

/* ---- listener ---- */

static void free_handle_cb(uv_handle_t *h)
{
    struct http_proxy *p = h->data;
    free(h);
    hp_handle_gone(p);
}

static void static_handle_cb(uv_handle_t *h)
{
    hp_handle_gone(h->data);
}

void hp_handle_gone(struct http_proxy *p)
{
    if (--p->nhandles == 0 && p->freeing) {
        hp_up_free_pools(p);
        tls_ctx_store_unref(p->tls_own);
        free(p);
    }
}

static void on_connection(uv_stream_t *server, int status)
{
    struct http_proxy *p = server->data;
    if (status < 0) {
        /* EMFILE and friends come in storms: one line per second. */
        uint64_t now = uv_now(p->loop);
        if (now - p->accept_warned >= 1000 || p->accept_warned == 0) {
            p->accept_warned = now;
            log_warn("worker %d: accept: %s", p->o.worker_id, uv_strerror(status));
        }
        return;
    }
    if (p->st.connections_active >= p->o.max_connections) {
        uv_tcp_t *t = malloc(sizeof(*t));
        if (!t)
            return;
        uv_tcp_init(p->loop, t);
        t->data = p;
        p->nhandles++;
        uv_accept(server, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, free_handle_cb);
        p->st.connections_rejected++;
        return;
    }
    struct hp_client *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->p = p;
    uv_tcp_init(p->loop, &c->tcp);
    c->tcp.data = c;
    c->next = p->clients;
    if (p->clients)
        p->clients->prev = c;
    p->clients = c;
    p->nhandles++;
    p->st.connections_active++;
    p->st.connections_total++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        hp_client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    int nl = sizeof(c->peer);
    if (uv_tcp_getpeername(&c->tcp, &c->peer.sa, &nl) < 0)
        memset(&c->peer, 0, sizeof(c->peer));
    if (p->o.https) {
        struct tls_ctx_store *st = p->o.tls_current ? p->o.tls_current(p->current_ud) : NULL;
        if (!st || !(c->tls = tls_conn_new_server(st, TLS_ALPN_HTTP1))) {
            hp_client_close(c);
            return;
        }
    }
    c->state = CS_IDLE;
    hp_client_drive(c);
}

void http_proxy_opts_init(struct http_proxy_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->max_header_bytes = 32768;
    o->max_headers = 100;
    o->max_body_bytes = 0;
    o->client_header_timeout_ms = 60000;
    o->client_body_timeout_ms = 60000;
    o->keepalive_timeout_ms = 60000;
    o->send_timeout_ms = 60000;
    o->max_connections = 10240;
    o->access_log = -1;
    o->access_log_format = HTTP_LOG_JSON;
}

struct http_proxy *http_proxy_start(uv_loop_t *loop, int listen_fd, const struct http_proxy_opts *o,
                                    struct snapshot *(*current)(void *ud), void *ud, char *err,
                                    size_t errlen)
{
    struct http_proxy *p = calloc(1, sizeof(*p));
    if (!p) {
        snprintf(err, errlen, "out of memory");
        close(listen_fd);
        return NULL;
    }
    if (o)
        p->o = *o;
    else
        http_proxy_opts_init(&p->o);
    if (p->o.max_header_bytes == 0)
        p->o.max_header_bytes = 32768;
    if (p->o.max_headers == 0)
        p->o.max_headers = 100;
    if (p->o.max_connections == 0)
        p->o.max_connections = 10240;
    p->loop = loop;
    p->current = current;
    p->current_ud = ud;
    for (int k = 0; k < DL_COUNT; k++)
        p->dl[k].prev = p->dl[k].next = &p->dl[k];

    /* The proxy owns the socket from here: closing it on drain takes this
     * worker out of the SO_REUSEPORT group at once. */
    int fd = listen_fd;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            p->server_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            p->server_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    uv_tcp_init(loop, &p->listener);
    p->listener.data = p;
    uv_timer_init(loop, &p->dl_timer);
    p->dl_timer.data = p;
    uv_timer_init(loop, &p->drain_timer);
    p->drain_timer.data = p;
    p->nhandles = 3;
    int rc = uv_tcp_open(&p->listener, fd);
    bool opened = rc == 0;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&p->listener, 511, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "listen: %s", uv_strerror(rc));
        if (!opened)
            close(fd);
        p->freeing = true;
        uv_close((uv_handle_t *)&p->listener, static_handle_cb);
        uv_close((uv_handle_t *)&p->dl_timer, static_handle_cb);
        uv_close((uv_handle_t *)&p->drain_timer, static_handle_cb);
        return NULL;
    }
    p->listening = true;
    hp_update_dates(p);
    return p;
}

/* True when bytes (or a FIN) wait in the client's socket. */
static bool socket_has_input(struct hp_client *c)
{
    uv_os_fd_t fd;
    char b;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
        return false;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) >= 0;
}

static void drain_timer_cb(uv_timer_t *t)
{
    struct http_proxy *p = t->data;
    void (*done)(void *) = p->drain_done;
    p->drain_done = NULL;
    if (done && !p->freeing)
        done(p->drain_ud);
}

void http_proxy_drain(struct http_proxy *p, void (*done)(void *ud), void *ud)
{
    p->draining = true;
    p->drain_done = done;
    p->drain_ud = ud;
    if (p->listening) {
        p->listening = false;
        uv_close((uv_handle_t *)&p->listener, static_handle_cb);
    }
    /* Idle keep-alive connections close now, unless a request is already
     * waiting in the socket (it is served, with Connection: close); a new
     * connection that sent nothing yet gets HP_LINGER_MS for its first
     * request (client_update_io keeps that deadline while draining). */
    for (struct hp_client *c = p->clients; c; c = c->next) {
        if (c->state != CS_IDLE || c->in || socket_has_input(c))
            continue;
        if (c->flags & CF_SERVED)
            hp_client_close(c);
        else
            dl_set(c, DL_LINGER);
    }
    hp_up_close_idle(p);
    if (p->st.connections_active == 0 && done)
        uv_timer_start(&p->drain_timer, drain_timer_cb, 0, 0);
}

void http_proxy_free(struct http_proxy *p)
{
    if (!p)
        return;
    p->freeing = true;
    p->drain_done = NULL;
    if (p->listening) {
        p->listening = false;
        uv_close((uv_handle_t *)&p->listener, static_handle_cb);
    }
    for (struct hp_client *c = p->clients; c; c = c->next)
        hp_client_close(c);
    hp_up_close_all(p);
    uv_close((uv_handle_t *)&p->dl_timer, static_handle_cb);
    uv_close((uv_handle_t *)&p->drain_timer, static_handle_cb);
}

void http_proxy_get_stats(const struct http_proxy *p, struct http_proxy_stats *out)
{
    *out = p->st;
}
