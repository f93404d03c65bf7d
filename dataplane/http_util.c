/*
 * http_util: the HTTP proxy engine's pure helpers (see http_conn.h): header
 * lists filled from llhttp callbacks, path normalisation, request variables
 * for routing and chash keys, local answers, dates, the access log line and
 * the write helper that copies only what the kernel did not take at once.
 */
#include "http_conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "netaddr.h"
#include "plugin.h"
#include "tls.h"

/* ---- header lists ---- */

void hp_head_init(struct hp_head *h, uint32_t max, uint32_t maxn)
{
    memset(h, 0, sizeof(*h));
    h->max = max;
    h->maxn = maxn;
}

void hp_head_free(struct hp_head *h)
{
    free(h->buf);
    free(h->h);
    h->buf = NULL;
    h->h = NULL;
    h->len = h->cap = h->n = h->hcap = 0;
}

static int head_reserve(struct hp_head *h, size_t add)
{
    /* +1 for the NUL every part ends with. */
    if ((size_t)h->len + add + 1 > (size_t)h->max + 1)
        return HP_HEAD_TOO_BIG;
    if (h->len + add + 1 <= h->cap)
        return HP_HEAD_OK;
    size_t cap = h->cap ? h->cap : 512;
    while (cap < h->len + add + 1)
        cap *= 2;
    if (cap > (size_t)h->max + 1)
        cap = (size_t)h->max + 1;
    char *nb = realloc(h->buf, cap);
    if (!nb)
        return HP_HEAD_NOMEM;
    h->buf = nb;
    h->cap = (uint32_t)cap;
    return HP_HEAD_OK;
}

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char ch)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
        return true;
    return ch && strchr(extra, ch) != NULL;
}

int hp_head_add(struct hp_head *h, int part, const char *at, size_t len)
{
    if (part == HP_PART_NAME) {
        if (h->part != HP_PART_NAME) {
            if (h->n >= h->maxn)
                return HP_HEAD_TOO_MANY;
            if (h->n == h->hcap) {
                uint32_t nc = h->hcap ? h->hcap * 2 : 16;
                if (nc > h->maxn)
                    nc = h->maxn;
                struct hp_hdr *nh = realloc(h->h, nc * sizeof(*nh));
                if (!nh)
                    return HP_HEAD_NOMEM;
                h->h = nh;
                h->hcap = nc;
            }
            h->h[h->n].name = h->len;
            h->h[h->n].name_len = 0;
            h->h[h->n].value = 0;
            h->h[h->n].value_len = 0;
            h->n++;
        }
        for (size_t i = 0; i < len; i++)
            if (!is_tchar((unsigned char)at[i]))
                return HP_HEAD_BAD;
        h->h[h->n - 1].name_len += (uint32_t)len;
    } else if (part == HP_PART_VALUE) {
        /* llhttp hands an obs-fold continuation over as a second piece of
         * the value within one buffer (a value split by a read boundary
         * starts a new buffer): refused, as nginx does. */
        if (h->n == 0 || h->part != HP_PART_VALUE)
            return HP_HEAD_BAD;
        if (h->vpieces++ > 0 && at != h->exec_start)
            return HP_HEAD_BAD;
        for (size_t i = 0; i < len; i++) {
            unsigned char ch = (unsigned char)at[i];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return HP_HEAD_BAD;
        }
        h->h[h->n - 1].value_len += (uint32_t)len;
    } else {
        if (h->part == HP_PART_FIRST_DONE || h->n)
            return HP_HEAD_BAD;
        h->first_len += (uint32_t)len;
    }
    int rc = head_reserve(h, len);
    if (rc)
        return rc;
    memcpy(h->buf + h->len, at, len);
    h->len += (uint32_t)len;
    h->part = (uint8_t)part;
    return HP_HEAD_OK;
}

int hp_head_end(struct hp_head *h, int part)
{
    int rc = head_reserve(h, 0);
    if (rc)
        return rc;
    if (part == HP_PART_NAME) {
        if (h->part != HP_PART_NAME || h->n == 0)
            return HP_HEAD_BAD; /* empty field name */
        h->buf[h->len++] = '\0';
        /* The value starts here even when llhttp reports no value bytes. */
        h->h[h->n - 1].value = h->len;
        h->part = HP_PART_VALUE;
        h->vpieces = 0;
        h->h[h->n - 1].value_len = 0;
        /* Mark that no value byte was appended yet: part VALUE with len 0. */
    } else if (part == HP_PART_VALUE) {
        if (h->n == 0)
            return HP_HEAD_BAD;
        struct hp_hdr *e = &h->h[h->n - 1];
        while (e->value_len && (h->buf[e->value + e->value_len - 1] == ' ' ||
                                h->buf[e->value + e->value_len - 1] == '\t'))
            e->value_len--;
        h->len = e->value + e->value_len;
        h->buf[h->len++] = '\0';
        h->part = HP_PART_NONE;
    } else {
        if (h->part == HP_PART_FIRST_DONE)
            return HP_HEAD_BAD;
        h->buf[h->len++] = '\0';
        h->part = HP_PART_FIRST_DONE;
    }
    return HP_HEAD_OK;
}

bool hp_hname_is(const struct hp_head *h, uint32_t i, const char *name)
{
    return strcasecmp(h->buf + h->h[i].name, name) == 0;
}

int hp_hfind(const struct hp_head *h, const char *name, uint32_t from)
{
    for (uint32_t i = from; i < h->n; i++)
        if (hp_hname_is(h, i, name))
            return (int)i;
    return -1;
}

bool hp_has_token(const char *v, size_t len, const char *tok)
{
    size_t tl = strlen(tok);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, tok, tl) == 0)
            return true;
    }
    return false;
}

/* ---- paths ---- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

long hp_normalize_path(const char *in, size_t len, char *out)
{
    size_t o = 0;
    /* Decode first, then resolve segments on the decoded form, as nginx
     * does, so "/a/%2e%2e/b" is "/b". */
    for (size_t i = 0; i < len; i++) {
        char ch = in[i];
        if (ch == '%' && i + 2 < len && hexval(in[i + 1]) >= 0 && hexval(in[i + 2]) >= 0) {
            ch = (char)(hexval(in[i + 1]) * 16 + hexval(in[i + 2]));
            i += 2;
            if (ch == '\0')
                return -1;
        }
        out[o++] = ch;
    }
    out[o] = '\0';
    if (o == 0 || out[0] != '/')
        return -1;
    /* Resolve in place: w is the write position, segments start after '/'. */
    size_t w = 0, r = 0;
    while (r < o) {
        /* out[r] == '/' here */
        size_t s = r + 1;
        while (s < o && out[s] == '/')
            s++; /* merge slashes */
        size_t e = s;
        while (e < o && out[e] != '/')
            e++;
        size_t sl = e - s;
        if (sl == 1 && out[s] == '.') {
            if (e == o)
                out[w++] = '/';
        } else if (sl == 2 && out[s] == '.' && out[s + 1] == '.') {
            if (w == 0)
                return -1;
            while (w > 0 && out[w - 1] != '/')
                w--;
            if (w > 0)
                w--; /* drop the '/' too */
            if (e == o)
                out[w++] = '/';
        } else {
            out[w++] = '/';
            memmove(out + w, out + s, sl);
            w += sl;
        }
        r = e;
    }
    if (w == 0)
        out[w++] = '/';
    out[w] = '\0';
    return (long)w;
}

/* ---- scratch strings ---- */

struct hp_scratch {
    struct hp_scratch *next;
    size_t used, cap;
    char data[];
};

void *hp_scratch_alloc(struct hp_req *r, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    struct hp_scratch *s = r->scratch;
    if (!s || s->cap - s->used < n) {
        size_t cap = n > 1024 ? n : 1024;
        s = malloc(sizeof(*s) + cap);
        if (!s)
            return NULL;
        s->used = 0;
        s->cap = cap;
        s->next = r->scratch;
        r->scratch = s;
    }
    void *m = s->data + s->used;
    s->used += n;
    return m;
}

char *hp_scratch_strndup(struct hp_req *r, const char *src, size_t n)
{
    char *d = hp_scratch_alloc(r, n + 1);
    if (!d)
        return NULL;
    memcpy(d, src, n);
    d[n] = '\0';
    return d;
}

void hp_scratch_free(struct hp_req *r)
{
    while (r->scratch) {
        struct hp_scratch *n = r->scratch->next;
        free(r->scratch);
        r->scratch = n;
    }
}

/* ---- request variables ---- */

/* Header name equal to var suffix, with '_' matching '-'. */
static bool var_name_eq(const char *hname, const char *var)
{
    for (; *hname && *var; hname++, var++) {
        char a = *hname, b = *var;
        if (a == '-')
            a = '_';
        if (b == '-')
            b = '_';
        if ((a | 0x20) != (b | 0x20) && !(a == '_' && b == '_'))
            return false;
    }
    return *hname == '\0' && *var == '\0';
}

static const char *find_pair(const char *s, size_t len, const char *name, char sep, size_t *vlen)
{
    size_t nl = strlen(name);
    size_t i = 0;
    while (i < len) {
        while (i < len && (s[i] == ' ' || s[i] == sep))
            i++;
        size_t ks = i;
        while (i < len && s[i] != '=' && s[i] != sep)
            i++;
        size_t ke = i;
        const char *v = s + i;
        size_t vl = 0;
        if (i < len && s[i] == '=') {
            i++;
            v = s + i;
            while (i < len && s[i] != sep)
                i++;
            vl = (size_t)(s + i - v);
        }
        if (ke - ks == nl && memcmp(s + ks, name, nl) == 0) {
            *vlen = vl;
            return v;
        }
    }
    return NULL;
}

const char *hp_req_var(void *ud, const char *name, size_t *len)
{
    struct hp_req *r = ud;
    const struct hp_client *c = r->c;
    const char *v = NULL;
    size_t vl = 0;
    char tmp[64];
    if (strcmp(name, "uri") == 0) {
        v = r->path;
        vl = r->path_len;
    } else if (strcmp(name, "request_uri") == 0) {
        v = r->head.buf;
        vl = r->head.first_len;
    } else if (strcmp(name, "host") == 0) {
        if (r->host) {
            /* $host: without the port, lowercase. */
            const char *h = r->host;
            size_t hl = strlen(h);
            if (h[0] == '[') {
                const char *e = memchr(h, ']', hl);
                hl = e ? (size_t)(e - h + 1) : hl;
            } else {
                const char *e = memchr(h, ':', hl);
                hl = e ? (size_t)(e - h) : hl;
            }
            char *d = hp_scratch_strndup(r, h, hl);
            if (!d)
                return NULL;
            for (char *q = d; *q; q++)
                if (*q >= 'A' && *q <= 'Z')
                    *q = (char)(*q + 32);
            v = d;
            vl = hl;
        }
    } else if (strcmp(name, "remote_addr") == 0) {
        netaddr_format_ip(&c->peer.sa, tmp, sizeof(tmp));
        v = hp_scratch_strndup(r, tmp, strlen(tmp));
        vl = v ? strlen(v) : 0;
    } else if (strcmp(name, "remote_port") == 0) {
        unsigned port = c->peer.sa.sa_family == AF_INET6 ? ntohs(c->peer.in6.sin6_port)
                                                         : ntohs(c->peer.in4.sin_port);
        snprintf(tmp, sizeof(tmp), "%u", port);
        v = hp_scratch_strndup(r, tmp, strlen(tmp));
        vl = v ? strlen(v) : 0;
    } else if (strcmp(name, "server_port") == 0) {
        snprintf(tmp, sizeof(tmp), "%u", (unsigned)c->p->server_port);
        v = hp_scratch_strndup(r, tmp, strlen(tmp));
        vl = v ? strlen(v) : 0;
    } else if (strcmp(name, "request_method") == 0) {
        v = r->method;
        vl = v ? strlen(v) : 0;
    } else if (strcmp(name, "scheme") == 0) {
        v = c->tls ? "https" : "http";
        vl = strlen(v);
    } else if (strcmp(name, "ssl_server_name") == 0) {
        v = c->tls ? tls_conn_sni(c->tls) : NULL;
        vl = v ? strlen(v) : 0;
    } else if (strcmp(name, "ssl_client_s_dn") == 0) {
        char dn[512];
        if (c->tls && tls_conn_peer_subject(c->tls, dn, sizeof(dn)) >= 0) {
            v = hp_scratch_strndup(r, dn, strlen(dn));
            vl = v ? strlen(v) : 0;
        }
    } else if (strcmp(name, "args") == 0 || strcmp(name, "query_string") == 0) {
        v = r->args;
        vl = v ? strlen(v) : 0;
    } else if (strncmp(name, "arg_", 4) == 0) {
        if (r->args) {
            v = find_pair(r->args, strlen(r->args), name + 4, '&', &vl);
            if (v)
                v = hp_scratch_strndup(r, v, vl);
        }
    } else if (strncmp(name, "http_", 5) == 0) {
        for (uint32_t i = 0; i < r->head.n; i++) {
            if (var_name_eq(hp_hname(&r->head, i), name + 5)) {
                v = hp_hvalue(&r->head, i);
                vl = r->head.h[i].value_len;
                break;
            }
        }
    } else if (strcmp(name, "route_id") == 0) {
        v = r->route ? r->route->id : NULL;
        vl = v ? strlen(v) : 0;
    } else if (strcmp(name, "route_name") == 0) {
        v = r->route ? r->route->name : NULL;
        vl = v ? strlen(v) : 0;
    } else if (strcmp(name, "consumer_name") == 0) {
        v = r->pr && r->pr->consumer ? r->pr->consumer->username : NULL;
        vl = v ? strlen(v) : 0;
    } else if (strncmp(name, "cookie_", 7) == 0) {
        for (int i = hp_hfind(&r->head, "cookie", 0); i >= 0 && !v;
             i = hp_hfind(&r->head, "cookie", (uint32_t)i + 1)) {
            v = find_pair(hp_hvalue(&r->head, (uint32_t)i), r->head.h[i].value_len, name + 7, ';',
                          &vl);
            if (v)
                v = hp_scratch_strndup(r, v, vl);
        }
    }
    if (v && len)
        *len = vl;
    return v;
}

/* ---- answers ---- */

const char *hp_status_reason(int s)
{
    switch (s) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Not Allowed";
    case 408:
        return "Request Time-out";
    case 413:
        return "Request Entity Too Large";
    case 414:
        return "Request-URI Too Large";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Temporarily Unavailable";
    case 504:
        return "Gateway Time-out";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

void hp_update_dates(struct http_proxy *p)
{
    time_t now = time(NULL);
    if (now == p->date_sec)
        return;
    p->date_sec = now;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(p->date_http, sizeof(p->date_http), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    localtime_r(&now, &tm);
    char z[8];
    strftime(z, sizeof(z), "%z", &tm); /* "+0100" */
    char tmp[32];
    strftime(tmp, sizeof(tmp), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(p->date_iso, sizeof(p->date_iso), "%s%.3s:%.2s", tmp, z, z + 3);
    strftime(tmp, sizeof(tmp), "%d/%b/%Y:%H:%M:%S", &tm);
    snprintf(p->date_clf, sizeof(p->date_clf), "%s %s", tmp, z);
}

size_t hp_default_body(int status, const char *json_msg, char *body, size_t cap,
                       const char **ctype)
{
    const char *reason = hp_status_reason(status);
    int bl;
    if (json_msg) {
        *ctype = "application/json";
        bl = snprintf(body, cap, "{\"error_msg\":\"%s\"}\n", json_msg);
    } else {
        *ctype = "text/html; charset=utf-8";
        bl = snprintf(body, cap,
                      "<html>\r\n<head><title>%d %s</title></head>\r\n<body>\r\n"
                      "<center><h1>%d %s</h1></center>\r\n<hr><center>airgw</center>\r\n"
                      "</body>\r\n</html>\r\n",
                      status, reason, status, reason);
    }
    if (bl < 0 || (size_t)bl >= cap)
        bl = 0;
    return (size_t)bl;
}

char *hp_format_response(struct http_proxy *p, int status, const char *ctype, const char *body,
                         size_t blen, bool keepalive, const struct hp_edit *edits, size_t *len)
{
    hp_update_dates(p);
    size_t extra = edits ? hp_plugin_emit(edits, NULL) : 0;
    size_t cap = blen + extra + (ctype ? strlen(ctype) : 0) + 512;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    size_t hl = 0;
    int k = snprintf(out, cap, "HTTP/1.1 %d %s\r\n", status, hp_status_reason(status));
    hl += (size_t)k;
    if (!hp_plugin_replaced(edits, "date"))
        hl += (size_t)snprintf(out + hl, cap - hl, "Date: %s\r\n", p->date_http);
    if (ctype && !hp_plugin_replaced(edits, "content-type"))
        hl += (size_t)snprintf(out + hl, cap - hl, "Content-Type: %s\r\n", ctype);
    hl += (size_t)snprintf(out + hl, cap - hl, "Content-Length: %zu\r\nConnection: %s\r\n", blen,
                           keepalive ? "keep-alive" : "close");
    if (!hp_plugin_replaced(edits, "server"))
        hl += (size_t)snprintf(out + hl, cap - hl, "Server: airgw\r\n");
    if (extra)
        hl += hp_plugin_emit(edits, out + hl);
    if (hl + 2 + blen > cap) {
        free(out);
        return NULL;
    }
    memcpy(out + hl, "\r\n", 2);
    hl += 2;
    if (blen)
        memcpy(out + hl, body, blen);
    *len = hl + blen;
    return out;
}

char *hp_local_response(struct http_proxy *p, int status, const char *json_msg, bool keepalive,
                        size_t *len)
{
    char body[512];
    const char *ctype;
    size_t bl = hp_default_body(status, json_msg, body, sizeof(body), &ctype);
    return hp_format_response(p, status, ctype, body, bl, keepalive, NULL, len);
}

/* ---- access log ---- */

struct lbuf {
    char *b;
    size_t len, cap;
};

static void lb_raw(struct lbuf *l, const char *s, size_t n)
{
    if (l->len + n > l->cap)
        n = l->cap - l->len;
    memcpy(l->b + l->len, s, n);
    l->len += n;
}

static void lb_str(struct lbuf *l, const char *s)
{
    lb_raw(l, s, strlen(s));
}

static void lb_fmt(struct lbuf *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lb_fmt(struct lbuf *l, const char *fmt, ...)
{
    if (l->len + 1 >= l->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(l->b + l->len, l->cap - l->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    l->len += (size_t)n < l->cap - l->len ? (size_t)n : l->cap - l->len - 1;
}

/* A string field: JSON-escaped (json) or nginx-escaped (\xHH for '"', '\\'
 * and non-printables); at most 1024 input bytes; "-" (combined) or "" (json)
 * when NULL. */
static void lb_esc(struct lbuf *l, const char *s, size_t n, bool json)
{
    if (!s) {
        if (!json)
            lb_raw(l, "-", 1);
        return;
    }
    if (n > 1024)
        n = 1024;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[8];
        if (json) {
            if (ch == '"' || ch == '\\') {
                tmp[0] = '\\';
                tmp[1] = (char)ch;
                lb_raw(l, tmp, 2);
            } else if (ch < 0x20 || ch == 0x7f) {
                snprintf(tmp, sizeof(tmp), "\\u%04x", ch);
                lb_raw(l, tmp, 6);
            } else {
                lb_raw(l, (const char *)&ch, 1);
            }
        } else {
            if (ch == '"' || ch == '\\' || ch < 0x20 || ch >= 0x7f) {
                snprintf(tmp, sizeof(tmp), "\\x%02X", ch);
                lb_raw(l, tmp, 4);
            } else {
                lb_raw(l, (const char *)&ch, 1);
            }
        }
    }
}

static const char *hdr_or_null(const struct hp_req *r, const char *name, size_t *len)
{
    int i = hp_hfind(&r->head, name, 0);
    if (i < 0)
        return NULL;
    *len = r->head.h[i].value_len;
    return hp_hvalue(&r->head, (uint32_t)i);
}

void hp_access_log(struct http_proxy *p, const struct hp_req *r)
{
    if (p->o.access_log < 0)
        return;
    hp_update_dates(p);
    char buf[8192];
    struct lbuf l = {buf, 0, sizeof(buf) - 1};
    char addr[64];
    netaddr_format_ip(&r->c->peer.sa, addr, sizeof(addr));
    const char *uri = r->head.first_len ? r->head.buf : NULL;
    size_t ual = 0, hl = 0, rl = 0;
    const char *ua = hdr_or_null(r, "user-agent", &ual);
    const char *host = r->host;
    hl = host ? strlen(host) : 0;
    const char *ref = hdr_or_null(r, "referer", &rl);
    double rt = (double)(uv_hrtime() - r->t_start) / 1e9;
    double urt = r->t_up_head ? (double)(r->t_up_head - r->t_up_start) / 1e9 : -1;
    if (p->o.access_log_format == HTTP_LOG_COMBINED) {
        lb_fmt(&l, "%s - - [%s] \"", addr, p->date_clf);
        if (r->method && uri) {
            lb_str(&l, r->method);
            lb_raw(&l, " ", 1);
            lb_esc(&l, uri, r->head.first_len, false);
            lb_str(&l, (r->flags & RQ_HTTP10) ? " HTTP/1.0" : " HTTP/1.1");
        } else {
            lb_raw(&l, "-", 1);
        }
        lb_fmt(&l, "\" %d %llu \"", r->status, (unsigned long long)r->body_out);
        lb_esc(&l, ref, rl, false);
        lb_raw(&l, "\" \"", 3);
        lb_esc(&l, ua, ual, false);
        lb_raw(&l, "\"", 1);
    } else {
        lb_fmt(&l, "{\"time\":\"%s\",\"remote_addr\":\"%s\",\"method\":\"", p->date_iso, addr);
        lb_esc(&l, r->method, r->method ? strlen(r->method) : 0, true);
        lb_str(&l, "\",\"uri\":\"");
        lb_esc(&l, uri, r->head.first_len, true);
        lb_fmt(&l, "\",\"status\":%d,\"bytes_sent\":%llu,\"request_time\":%.3f,", r->status,
               (unsigned long long)r->bytes_out, rt);
        lb_str(&l, "\"upstream_addr\":\"");
        lb_esc(&l, r->up_addr, strlen(r->up_addr), true);
        lb_str(&l, "\",\"upstream_status\":\"");
        lb_esc(&l, r->up_status, strlen(r->up_status), true);
        lb_str(&l, "\",\"upstream_response_time\":\"");
        if (urt >= 0)
            lb_fmt(&l, "%.3f", urt);
        lb_str(&l, "\",\"route_id\":\"");
        lb_esc(&l, r->route ? r->route->id : NULL, r->route ? strlen(r->route->id) : 0, true);
        lb_str(&l, "\",\"user_agent\":\"");
        lb_esc(&l, ua, ual, true);
        lb_str(&l, "\",\"host\":\"");
        lb_esc(&l, host, hl, true);
        lb_str(&l, "\"}");
    }
    buf[l.len++] = '\n';
    /* One write per line (O_APPEND files keep lines whole across workers). */
    ssize_t w;
    do {
        w = write(p->o.access_log, buf, l.len);
    } while (w < 0 && errno == EINTR);
}

/* ---- writes ---- */

struct hp_wreq {
    uv_write_t w;   /* w.data = the stream's owner */
    size_t len;     /* bytes in data */
    uint32_t *held; /* the owner's count of held bytes */
    char data[];
};

void hp_buffered_add(struct http_proxy *p, int64_t delta)
{
    p->st.buffered_bytes = (uint64_t)((int64_t)p->st.buffered_bytes + delta);
    if (p->st.buffered_bytes > p->st.buffered_bytes_peak)
        p->st.buffered_bytes_peak = p->st.buffered_bytes;
}

int hp_write(struct http_proxy *p, uv_stream_t *s, const uv_buf_t *bufs, unsigned n, uv_write_cb cb,
             uint32_t *held)
{
    size_t total = 0, done = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (total == 0)
        return 0;
    if (s->write_queue_size == 0) {
        int r = uv_try_write(s, bufs, n);
        if (r > 0)
            done = (size_t)r;
        /* Errors other than EAGAIN show again in uv_write's callback. */
    }
    if (done == total)
        return 0;
    size_t rest = total - done;
    struct hp_wreq *wr = malloc(sizeof(*wr) + rest);
    if (!wr)
        return UV_ENOMEM;
    size_t skip = done, o = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t l = bufs[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(wr->data + o, bufs[i].base + skip, l - skip);
        o += l - skip;
        skip = 0;
    }
    wr->len = rest;
    wr->w.data = s->data;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)rest);
    int r = uv_write(&wr->w, s, &b, 1, cb);
    if (r < 0) {
        free(wr);
        return r;
    }
    wr->held = held;
    *held += (uint32_t)rest;
    hp_buffered_add(p, (int64_t)rest);
    return 0;
}

void hp_write_done(struct http_proxy *p, uv_write_t *w)
{
    struct hp_wreq *wr = (struct hp_wreq *)w;
    *wr->held -= (uint32_t)wr->len;
    hp_buffered_add(p, -(int64_t)wr->len);
    free(wr);
}

int hp_tls_flush(struct http_proxy *p, uv_stream_t *s, struct tls_conn *tls, uv_write_cb cb,
                 uint32_t *held)
{
    const char *d;
    size_t n = tls_conn_out(tls, &d);
    if (n == 0)
        return 0;
    uv_buf_t b = uv_buf_init((char *)d, (unsigned)n);
    int rc = hp_write(p, s, &b, 1, cb, held);
    tls_conn_out_consume(tls, n); /* hp_write copied what the socket did not take */
    return rc;
}

int hp_send(struct http_proxy *p, uv_stream_t *s, struct tls_conn *tls, const uv_buf_t *bufs,
            unsigned n, uv_write_cb cb, uint32_t *held)
{
    if (!tls)
        return hp_write(p, s, bufs, n, cb, held);
    int rc = tls_conn_writev(tls, bufs, n);
    if (rc < 0)
        return rc == -ENOMEM ? UV_ENOMEM : UV_EPROTO;
    return hp_tls_flush(p, s, tls, cb, held);
}

struct tls_ctx_store *hp_tls_store(struct http_proxy *p)
{
    struct tls_ctx_store *st = p->o.tls_current ? p->o.tls_current(p->current_ud) : NULL;
    if (st)
        return st;
    if (!p->tls_own)
        p->tls_own = tls_ctx_store_build(NULL, NULL, NULL);
    return p->tls_own;
}
