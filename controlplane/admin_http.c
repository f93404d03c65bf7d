/*
 * admin_http: see admin_http.h.
 */
#include "admin_http.h"

#include <errno.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "log.h"
#include "netaddr.h"

#define ADMIN_PREFIX "/apisix/admin"

struct admin_http {
    uv_loop_t *loop;                   /* the control plane's loop */
    const struct cp_settings *settings;/* keys, allow_admin */
    struct api_ctx *ctx;               /* the API's state */
    struct MHD_Daemon *mhd;            /* libmicrohttpd, external epoll mode */
    uv_poll_t poll;                    /* watches MHD's epoll fd */
    uv_timer_t timer;                  /* follows MHD_get_timeout */
    int open_handles;                  /* poll + timer not yet closed */
};

/* One request's state across MHD's calls of the access handler. */
struct req {
    char *body;    /* collected body */
    size_t len;    /* bytes in body */
    size_t cap;    /* allocated */
    int too_large; /* body passed API_MAX_BODY: drained, then 413 */
};

static void run_mhd(struct admin_http *a);

static enum MHD_Result send_json(struct MHD_Connection *conn, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text)
        return MHD_NO;
    size_t n = strlen(text);
    /* A trailing newline, as APISIX's responses have, keeps shells tidy. */
    char *withnl = realloc(text, n + 2);
    if (withnl) {
        text = withnl;
        text[n++] = '\n';
        text[n] = '\0';
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(n, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "X-API-VERSION", "v3");
    MHD_add_response_header(r, "Server", "airgw/" AIRGW_VERSION);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static json_t *err_body(const char *msg, const char *description)
{
    if (description)
        return json_pack("{s:s, s:s}", "error_msg", msg, "description", description);
    return json_pack("{s:s}", "error_msg", msg);
}

static const char *arg_lookup(void *ud, const char *name)
{
    return MHD_lookup_connection_value(ud, MHD_GET_ARGUMENT_KIND, name);
}

static int client_allowed(const struct admin_http *a, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return 0;
    for (size_t i = 0; i < a->settings->nallow; i++)
        if (cidr_match(&a->settings->allow_admin[i], ci->client_addr))
            return 1;
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct admin_http *a = cls;
    struct req *r = *con_cls;
    (void)version;

    if (!r) {
        /* First call: headers only. Refuse early what needs no body. */
        r = calloc(1, sizeof(*r));
        if (!r)
            return MHD_NO;
        *con_cls = r;
        if (!client_allowed(a, conn))
            return send_json(conn, 403,
                             err_body("forbidden: the client address is not in allow_admin",
                                      NULL));
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > API_MAX_BODY)
            return send_json(conn, 413, err_body("request body too large: the limit is 1.5 MiB",
                                                 NULL));
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->too_large || r->len + n > API_MAX_BODY) {
            r->too_large = 1;
            return MHD_YES;
        }
        if (r->len + n > r->cap) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < r->len + n)
                cap *= 2;
            char *b = realloc(r->body, cap);
            if (!b)
                return MHD_NO;
            r->body = b;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        return MHD_YES;
    }

    /* The whole request is in. */
    if (strcmp(url, "/healthz") == 0)
        return send_json(conn, 200, json_pack("{s:s}", "status", "ok"));
    size_t plen = strlen(ADMIN_PREFIX);
    if (strncmp(url, ADMIN_PREFIX, plen) != 0 || (url[plen] != '/' && url[plen] != '\0'))
        return send_json(conn, 404, err_body("404 Route Not Found", NULL));

    const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-API-KEY");
    if (!key)
        key = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "api_key");
    if (!key || !*key)
        return send_json(conn, 401, err_body("failed to check token", "missing apikey"));
    int role = auth_check_key(a->settings, key);
    if (role < 0)
        return send_json(conn, 401, err_body("failed to check token", "wrong apikey"));
    if (role == ROLE_VIEWER && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_json(conn, 401,
                         err_body("failed to check token", "invalid method for role viewer"));
    if (r->too_large)
        return send_json(conn, 413, err_body("request body too large: the limit is 1.5 MiB",
                                             NULL));

    struct api_req ar = {
        .method = method,
        .path = url + plen,
        .arg = arg_lookup,
        .arg_ud = conn,
        .body = r->body,
        .body_len = r->len,
    };
    json_t *body = NULL;
    int status = api_handle(a->ctx, &ar, &body);
    if (status >= 500)
        log_warn("admin: %s %s -> %d", method, url, status);
    else
        log_debug("admin: %s %s -> %d", method, url, status);
    return send_json(conn, status, body);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct req *r = *con_cls;
    (void)cls;
    (void)conn;
    (void)toe;
    if (r) {
        free(r->body);
        free(r);
        *con_cls = NULL;
    }
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    (void)cls;
    vsnprintf(buf, sizeof(buf), fmt, ap);
    size_t n = strlen(buf);
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    log_debug("admin http: %s", buf);
}

static void on_timer(uv_timer_t *t)
{
    run_mhd(t->data);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    run_mhd(p->data);
}

/* Lets MHD do all it can now, then sleeps until its next deadline or until
 * its epoll fd has events. */
static void run_mhd(struct admin_http *a)
{
    if (!a->mhd)
        return;
    MHD_run(a->mhd);
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(a->mhd, &to) == MHD_YES)
        uv_timer_start(&a->timer, on_timer, to, 0);
    else
        uv_timer_stop(&a->timer);
}

int admin_http_start(uv_loop_t *loop, const struct cp_settings *settings, struct api_ctx *ctx,
                     struct admin_http **out, char *err, size_t errlen)
{
    struct admin_http *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->loop = loop;
    a->settings = settings;
    a->ctx = ctx;
    const struct sockaddr *sa = (const struct sockaddr *)&settings->admin_listen;
    unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (sa->sa_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, a,
                              MHD_OPTION_SOCK_ADDR, sa,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)512,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                              MHD_OPTION_EXTERNAL_LOGGER, mhd_log, a,
                              MHD_OPTION_END);
    char where[80];
    netaddr_format(sa, where, sizeof(where));
    if (!a->mhd) {
        int e = errno ? errno : EADDRINUSE;
        snprintf(err, errlen, "admin API: cannot listen on %s: %s", where, strerror(e));
        free(a);
        return -e;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    const union MHD_DaemonInfo *li = MHD_get_daemon_info(a->mhd, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    if (li && getsockname(li->listen_fd, (struct sockaddr *)&bound, &blen) == 0)
        netaddr_format((struct sockaddr *)&bound, where, sizeof(where));
    uv_poll_init(loop, &a->poll, di->epoll_fd);
    a->poll.data = a;
    uv_timer_init(loop, &a->timer);
    a->timer.data = a;
    a->open_handles = 2;
    uv_poll_start(&a->poll, UV_READABLE, on_poll);
    run_mhd(a);
    log_info("admin API listening on %s", where);
    *out = a;
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct admin_http *a = h->data;
    if (--a->open_handles == 0)
        free(a);
}

void admin_http_stop(struct admin_http *a)
{
    if (!a)
        return;
    uv_poll_stop(&a->poll);
    uv_close((uv_handle_t *)&a->poll, on_handle_closed);
    uv_close((uv_handle_t *)&a->timer, on_handle_closed);
    MHD_stop_daemon(a->mhd);
    a->mhd = NULL;
}
