/*
 * cfgstream: the one encoder and incremental decoder of the control plane ->
 * data plane configuration stream (contract: cfgstream.h, spec: PROTOCOL.md).
 *
 * Encoding. A frame is a 4-byte big-endian length L, a type byte and a compact
 * JSON object. Encoders write straight into the frame buffer (the header is
 * reserved first and filled in last), so a body is serialised exactly once and
 * never copied. cfgs_encode_put_raw splices an already-serialised value without
 * parsing it: the control plane stores values as text and must not pay a parse
 * per subscriber. cfgs_encode_put writes the same bytes for the same value.
 *
 * Decoding. The decoder holds one buffer; buf[off, len) are bytes fed but not
 * yet taken. A taken frame only advances off; bytes move to the front lazily,
 * when a feed would not fit otherwise, so each byte is copied once on feed plus
 * on rare compactions. The buffer grows geometrically, never past one maximal
 * frame plus the last feed (as long as the caller drains with
 * cfgs_decoder_next between feeds). When everything is taken the offsets reset,
 * and a buffer grown beyond KEEP_CAP for one large frame is released or shrunk
 * so an idle connection holds little memory. The decoder never allocates ahead
 * of bytes actually received: a peer announcing a 16 MiB frame and sending
 * nothing costs nothing.
 *
 * Errors are sticky: after the first bad frame the decoder frees its buffer,
 * drops whatever is fed later and every next call returns the same errno.
 */
#include "cfgstream.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef AIRGW_VERSION
#define AIRGW_VERSION "unknown"
#endif

#define FRAME_HDR (CFGS_HEADER_LEN + 1) /* length + type byte */
#define MIN_CAP 4096                    /* first decoder allocation */
#define KEEP_CAP (64 * 1024)            /* decoder memory kept while idle */
#define FRAME_MAX_TOTAL ((size_t)CFGS_HEADER_LEN + CFGS_MAX_FRAME)

static const char *const type_names[] = {
    [CFGS_HELLO] = "HELLO",
    [CFGS_SNAPSHOT_BEGIN] = "SNAPSHOT_BEGIN",
    [CFGS_PUT] = "PUT",
    [CFGS_DELETE] = "DELETE",
    [CFGS_SNAPSHOT_END] = "SNAPSHOT_END",
    [CFGS_RESUME] = "RESUME",
    [CFGS_PING] = "PING",
    [CFGS_PONG] = "PONG",
    [CFGS_ACK] = "ACK",
    [CFGS_ERROR] = "ERROR",
};

static int type_known(unsigned t)
{
    return t >= CFGS_HELLO && t <= CFGS_ERROR;
}

const char *cfgs_type_name(enum cfgs_type type)
{
    return type_known((unsigned)type) ? type_names[type] : "UNKNOWN";
}

/* ------------------------------------------------------------------------ */
/* Encoding                                                                 */
/* ------------------------------------------------------------------------ */

/* A frame under construction. err is sticky: once set, appends do nothing. */
struct wbuf {
    char *p;    /* frame bytes, header included */
    size_t len; /* bytes written */
    size_t cap; /* allocated */
    int err;    /* 0, -ENOMEM, -EMSGSIZE or -EINVAL */
};

static void w_append(struct wbuf *w, const char *s, size_t n)
{
    if (w->err)
        return;
    if (n > FRAME_MAX_TOTAL - w->len) {
        w->err = -EMSGSIZE;
        return;
    }
    if (w->cap - w->len < n) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap - w->len < n)
            cap = cap > FRAME_MAX_TOTAL / 2 ? FRAME_MAX_TOTAL : cap * 2;
        char *p = realloc(w->p, cap);
        if (!p) {
            w->err = -ENOMEM;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
}

static void w_lit(struct wbuf *w, const char *s)
{
    w_append(w, s, strlen(s));
}

static void w_int(struct wbuf *w, int64_t v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%" JSON_INTEGER_FORMAT, (json_int_t)v);
    w_append(w, tmp, (size_t)n);
}

static int dump_cb(const char *buf, size_t size, void *data)
{
    struct wbuf *w = data;
    w_append(w, buf, size);
    return w->err ? -1 : 0;
}

/* Serialises json into the frame with jansson, compactly. */
static void w_json(struct wbuf *w, const json_t *json, size_t flags)
{
    if (w->err)
        return;
    if (json_dump_callback(json, dump_cb, w, JSON_COMPACT | flags) != 0 && !w->err)
        w->err = -EINVAL; /* jansson refused: a reference loop */
}

/* A JSON string literal, escaped exactly as jansson escapes it, so hand-built
 * bodies match the ones cfgs_encode produces. */
static void w_str(struct wbuf *w, const char *s)
{
    if (w->err)
        return;
    json_t *js = json_string(s);
    if (!js) {
        w->err = -EINVAL; /* not UTF-8 (or out of memory, not told apart) */
        return;
    }
    w_json(w, js, JSON_ENCODE_ANY);
    json_decref(js);
}

static void w_begin(struct wbuf *w, enum cfgs_type type)
{
    static const char hdr[FRAME_HDR];
    memset(w, 0, sizeof(*w));
    w_append(w, hdr, sizeof(hdr));
    if (!w->err)
        w->p[CFGS_HEADER_LEN] = (char)type;
}

static int w_finish(struct wbuf *w, char **out, size_t *outlen)
{
    if (!w->err && w->len - CFGS_HEADER_LEN > CFGS_MAX_FRAME)
        w->err = -EMSGSIZE;
    if (w->err) {
        free(w->p);
        return w->err;
    }
    uint32_t l = (uint32_t)(w->len - CFGS_HEADER_LEN);
    unsigned char *h = (unsigned char *)w->p;
    h[0] = (unsigned char)(l >> 24);
    h[1] = (unsigned char)(l >> 16);
    h[2] = (unsigned char)(l >> 8);
    h[3] = (unsigned char)l;
    if (w->cap > w->len) { /* give back the slack of geometric growth */
        char *p = realloc(w->p, w->len);
        if (p)
            w->p = p;
    }
    *out = w->p;
    *outlen = w->len;
    return 0;
}

int cfgs_encode(enum cfgs_type type, const json_t *body, char **out, size_t *outlen)
{
    struct wbuf w;
    if (!type_known((unsigned)type) || !json_is_object(body))
        return -EINVAL;
    w_begin(&w, type);
    w_json(&w, body, 0);
    return w_finish(&w, out, outlen);
}

int cfgs_encode_hello(const char *node_id, int64_t revision, const char *hostname, char **out,
                      size_t *outlen)
{
    struct wbuf w;
    if (!node_id || !*node_id || revision < 0)
        return -EINVAL;
    w_begin(&w, CFGS_HELLO);
    w_lit(&w, "{\"proto\":");
    w_int(&w, CFGS_PROTO_VERSION);
    w_lit(&w, ",\"node_id\":");
    w_str(&w, node_id);
    w_lit(&w, ",\"revision\":");
    w_int(&w, revision);
    if (hostname) {
        w_lit(&w, ",\"hostname\":");
        w_str(&w, hostname);
    }
    w_lit(&w, ",\"version\":");
    w_str(&w, AIRGW_VERSION);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

/* Everything of a PUT body up to and including "value":. */
static void w_put_head(struct wbuf *w, int64_t revision, const char *key, int64_t create_rev,
                       int64_t mod_rev)
{
    w_begin(w, CFGS_PUT);
    w_lit(w, "{\"revision\":");
    w_int(w, revision);
    w_lit(w, ",\"key\":");
    w_str(w, key);
    w_lit(w, ",\"create_revision\":");
    w_int(w, create_rev);
    w_lit(w, ",\"mod_revision\":");
    w_int(w, mod_rev);
    w_lit(w, ",\"value\":");
}

static int put_args_ok(int64_t revision, const char *key, int64_t create_rev, int64_t mod_rev)
{
    return revision >= 0 && create_rev >= 0 && mod_rev >= 0 && key && key[0] == '/';
}

int cfgs_encode_put(int64_t revision, const char *key, const json_t *value, int64_t create_rev,
                    int64_t mod_rev, char **out, size_t *outlen)
{
    struct wbuf w;
    if (!put_args_ok(revision, key, create_rev, mod_rev) || !json_is_object(value))
        return -EINVAL;
    w_put_head(&w, revision, key, create_rev, mod_rev);
    w_json(&w, value, 0);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

int cfgs_encode_put_raw(int64_t revision, const char *key, const char *value_json,
                        int64_t create_rev, int64_t mod_rev, char **out, size_t *outlen)
{
    struct wbuf w;
    if (!put_args_ok(revision, key, create_rev, mod_rev) || !value_json)
        return -EINVAL;
    /* Not parsed, but at least shaped like an object: a cheap guard against
     * passing a key or a non-object where the stored text was meant. */
    size_t n = strlen(value_json);
    size_t a = 0, b = n;
    while (a < b && strchr(" \t\r\n", value_json[a]))
        a++;
    while (b > a && strchr(" \t\r\n", value_json[b - 1]))
        b--;
    if (b - a < 2 || value_json[a] != '{' || value_json[b - 1] != '}')
        return -EINVAL;
    if (n > CFGS_MAX_FRAME)
        return -EMSGSIZE;
    w_put_head(&w, revision, key, create_rev, mod_rev);
    w_append(&w, value_json, n);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

int cfgs_encode_delete(int64_t revision, const char *key, char **out, size_t *outlen)
{
    struct wbuf w;
    if (revision < 0 || !key || key[0] != '/')
        return -EINVAL;
    w_begin(&w, CFGS_DELETE);
    w_lit(&w, "{\"revision\":");
    w_int(&w, revision);
    w_lit(&w, ",\"key\":");
    w_str(&w, key);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

int cfgs_encode_rev(enum cfgs_type type, int64_t revision, char **out, size_t *outlen)
{
    struct wbuf w;
    if (revision < 0 || (type != CFGS_SNAPSHOT_BEGIN && type != CFGS_RESUME && type != CFGS_ACK))
        return -EINVAL;
    w_begin(&w, type);
    w_lit(&w, "{\"revision\":");
    w_int(&w, revision);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

int cfgs_encode_snapshot_end(int64_t revision, int64_t count, char **out, size_t *outlen)
{
    struct wbuf w;
    if (revision < 0 || count < 0)
        return -EINVAL;
    w_begin(&w, CFGS_SNAPSHOT_END);
    w_lit(&w, "{\"revision\":");
    w_int(&w, revision);
    w_lit(&w, ",\"count\":");
    w_int(&w, count);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

int cfgs_encode_ping(enum cfgs_type type, int64_t ts, char **out, size_t *outlen)
{
    struct wbuf w;
    if (ts < 0 || (type != CFGS_PING && type != CFGS_PONG))
        return -EINVAL;
    w_begin(&w, type);
    w_lit(&w, "{\"ts\":");
    w_int(&w, ts);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

int cfgs_encode_error(const char *message, char **out, size_t *outlen)
{
    struct wbuf w;
    if (!message)
        return -EINVAL;
    w_begin(&w, CFGS_ERROR);
    w_lit(&w, "{\"message\":");
    w_str(&w, message);
    w_lit(&w, "}");
    return w_finish(&w, out, outlen);
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

void cfgs_decoder_init(struct cfgs_decoder *d)
{
    memset(d, 0, sizeof(*d));
}

static void release_buf(struct cfgs_decoder *d)
{
    free(d->buf);
    d->buf = NULL;
    d->len = d->cap = d->off = 0;
}

void cfgs_decoder_free(struct cfgs_decoder *d)
{
    release_buf(d);
    d->error = 0;
}

/* Moves the pending bytes into a fresh buffer of cap bytes. */
static int rebuffer(struct cfgs_decoder *d, size_t cap)
{
    size_t pending = d->len - d->off;
    char *p = malloc(cap);
    if (!p)
        return -ENOMEM;
    if (pending)
        memcpy(p, d->buf + d->off, pending);
    free(d->buf);
    d->buf = p;
    d->cap = cap;
    d->off = 0;
    d->len = pending;
    return 0;
}

int cfgs_decoder_feed(struct cfgs_decoder *d, const char *data, size_t len)
{
    if (d->error || len == 0)
        return 0; /* a dead stream's bytes are dropped */
    if (d->cap - d->len < len) {
        size_t pending = d->len - d->off;
        if (len > SIZE_MAX - pending)
            return -ENOMEM;
        size_t need = pending + len;
        /* Smallest power-of-two multiple of MIN_CAP that fits, capped at
         * one maximal frame plus this feed. */
        size_t cap = MIN_CAP;
        while (cap < need && cap <= SIZE_MAX / 2)
            cap *= 2;
        size_t limit = FRAME_MAX_TOTAL + len;
        if (limit < need)
            limit = need; /* caller fed twice without draining */
        if (cap > limit)
            cap = limit;
        if (cap <= d->cap && !(d->cap > KEEP_CAP && cap <= d->cap / 4)) {
            /* The buffer is big enough once compacted. */
            memmove(d->buf, d->buf + d->off, pending);
            d->off = 0;
            d->len = pending;
        } else if (rebuffer(d, cap) < 0) {
            return -ENOMEM;
        }
    }
    memcpy(d->buf + d->len, data, len);
    d->len += len;
    return 0;
}

static int fail(struct cfgs_decoder *d, int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int fail(struct cfgs_decoder *d, int rc, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    d->error = rc;
    release_buf(d);
    return rc;
}

/* Member checks: each returns 0, or -EPROTO with a reason in why. */
static int need_uint(json_t *body, const char *name, int64_t *out, char *why, size_t whylen)
{
    json_t *v = json_object_get(body, name);
    if (!v) {
        snprintf(why, whylen, "missing member \"%s\"", name);
        return -EPROTO;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        snprintf(why, whylen, "member \"%s\" must be an integer >= 0", name);
        return -EPROTO;
    }
    *out = json_integer_value(v);
    return 0;
}

static int get_str(json_t *body, const char *name, int required, const char **out, char *why,
                   size_t whylen)
{
    json_t *v = json_object_get(body, name);
    if (!v) {
        if (!required)
            return 0;
        snprintf(why, whylen, "missing member \"%s\"", name);
        return -EPROTO;
    }
    if (!json_is_string(v)) {
        snprintf(why, whylen, "member \"%s\" must be a string", name);
        return -EPROTO;
    }
    *out = json_string_value(v);
    return 0;
}

static int need_key(json_t *body, const char **out, char *why, size_t whylen)
{
    int rc = get_str(body, "key", 1, out, why, whylen);
    if (rc == 0 && (*out)[0] != '/') {
        snprintf(why, whylen, "member \"key\" must start with \"/\"");
        rc = -EPROTO;
    }
    return rc;
}

/* Fills the typed members of m from m->body and checks that every member the
 * type requires is there with the right JSON type. */
static int check_members(struct cfgs_msg *m, char *why, size_t whylen)
{
    json_t *b = m->body;
    int64_t proto = 0;
    int rc = 0;

    switch (m->type) {
    case CFGS_HELLO:
        rc = need_uint(b, "proto", &proto, why, whylen);
        if (rc == 0 && proto > INT_MAX) {
            snprintf(why, whylen, "member \"proto\" out of range");
            rc = -EPROTO;
        }
        if (rc == 0)
            m->proto = (int)proto;
        if (rc == 0)
            rc = get_str(b, "node_id", 1, &m->node_id, why, whylen);
        if (rc == 0 && !m->node_id[0]) {
            snprintf(why, whylen, "member \"node_id\" must not be empty");
            rc = -EPROTO;
        }
        if (rc == 0)
            rc = need_uint(b, "revision", &m->revision, why, whylen);
        if (rc == 0)
            rc = get_str(b, "hostname", 0, &m->hostname, why, whylen);
        if (rc == 0)
            rc = get_str(b, "version", 0, &m->version, why, whylen);
        break;
    case CFGS_SNAPSHOT_BEGIN:
    case CFGS_RESUME:
    case CFGS_ACK:
        rc = need_uint(b, "revision", &m->revision, why, whylen);
        break;
    case CFGS_PUT:
        rc = need_uint(b, "revision", &m->revision, why, whylen);
        if (rc == 0)
            rc = need_key(b, &m->key, why, whylen);
        if (rc == 0)
            rc = need_uint(b, "create_revision", &m->create_revision, why, whylen);
        if (rc == 0)
            rc = need_uint(b, "mod_revision", &m->mod_revision, why, whylen);
        if (rc == 0) {
            m->value = json_object_get(b, "value");
            if (!m->value) {
                snprintf(why, whylen, "missing member \"value\"");
                rc = -EPROTO;
            } else if (!json_is_object(m->value)) {
                snprintf(why, whylen, "member \"value\" must be an object");
                rc = -EPROTO;
            }
        }
        break;
    case CFGS_DELETE:
        rc = need_uint(b, "revision", &m->revision, why, whylen);
        if (rc == 0)
            rc = need_key(b, &m->key, why, whylen);
        break;
    case CFGS_SNAPSHOT_END:
        rc = need_uint(b, "revision", &m->revision, why, whylen);
        if (rc == 0)
            rc = need_uint(b, "count", &m->count, why, whylen);
        break;
    case CFGS_PING:
    case CFGS_PONG:
        rc = need_uint(b, "ts", &m->ts, why, whylen);
        break;
    case CFGS_ERROR:
        rc = get_str(b, "message", 1, &m->message, why, whylen);
        break;
    }
    return rc;
}

int cfgs_decoder_next(struct cfgs_decoder *d, struct cfgs_msg *msg, char *err, size_t errlen)
{
    memset(msg, 0, sizeof(*msg));
    if (d->error) {
        if (err && errlen)
            snprintf(err, errlen, "stream already failed (%s)", strerror(-d->error));
        return d->error;
    }

    size_t avail = d->len - d->off;
    if (avail < CFGS_HEADER_LEN)
        return 0;
    const unsigned char *h = (const unsigned char *)d->buf + d->off;
    uint32_t flen = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    if (flen == 0 || flen > CFGS_MAX_FRAME)
        return fail(d, -EMSGSIZE, err, errlen, "frame length %u out of range 1..%u", flen,
                    CFGS_MAX_FRAME);
    if (avail - CFGS_HEADER_LEN < flen)
        return 0;

    unsigned type = h[CFGS_HEADER_LEN];
    const char *body = d->buf + d->off + FRAME_HDR;
    size_t blen = flen - 1;
    d->off += CFGS_HEADER_LEN + flen;
    if (!type_known(type))
        return fail(d, -EPROTO, err, errlen, "unknown message type %u", type);

    json_error_t jerr;
    json_t *root = json_loadb(body, blen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fail(d, -EPROTO, err, errlen, "%s: bad JSON body: %s (at byte %d)", type_names[type],
                    jerr.text, jerr.position);
    if (!json_is_object(root)) {
        json_decref(root);
        return fail(d, -EPROTO, err, errlen, "%s: body is not a JSON object", type_names[type]);
    }
    msg->type = (enum cfgs_type)type;
    msg->body = root;

    char why[128];
    if (check_members(msg, why, sizeof(why)) < 0) {
        cfgs_msg_free(msg);
        return fail(d, -EPROTO, err, errlen, "%s: %s", type_names[type], why);
    }

    if (d->off == d->len) { /* all taken: restart at the front, for free */
        d->off = d->len = 0;
        if (d->cap > KEEP_CAP)
            release_buf(d);
    }
    return 1;
}

void cfgs_msg_free(struct cfgs_msg *msg)
{
    if (!msg)
        return;
    json_decref(msg->body);
    memset(msg, 0, sizeof(*msg));
}
