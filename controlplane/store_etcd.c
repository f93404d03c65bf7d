/*
 * store_etcd: the store (store.h) kept in an etcd v3 cluster, spoken to
 * through etcd's JSON gateway (/v3/kv/range, /v3/kv/txn, /v3/watch,
 * /v3/lease/grant, /v3/auth/authenticate) with libcurl. Keys and values are
 * base64 in that JSON, int64 are JSON strings.
 *
 * Keys: the store's keys are "/apisix/..." everywhere in airgw; in etcd they
 * live under the configured prefix ("<prefix>/routes/1"), so with the default
 * prefix "/apisix" `etcdctl get --prefix /apisix` shows APISIX's layout. Only
 * keys under "<prefix>/" are ours.
 *
 * Two threads, each with its own curl handles:
 *  - the loop thread makes every get/list/put/delete synchronously (one easy
 *    handle, kept alive between calls). Every call is bounded by the timeout;
 *    between store_request_begin/end all calls together are (one admin
 *    request's store work). A call that cannot reach an endpoint tries the
 *    next one in the list within the same budget; each endpoint gets a share
 *    of what is left (at least ATTEMPT_MIN_MS), so one that takes the
 *    connection and then hangs leaves time for the others.
 *  - the watch thread runs the streaming /v3/watch on the whole prefix with a
 *    curl multi handle (so store_stop can wake it at once), parses its
 *    newline-separated JSON messages and queues the events; a uv_async hands
 *    them to the loop thread, which appends them to the history ring, moves
 *    `applied` on and calls s->watch, in revision order. put/delete never
 *    call s->watch with their own change: the watch delivers our own writes
 *    like anyone else's. They do wait (bounded, while a watch is up) until
 *    the watch has queued their revision and deliver the queue then, so that
 *    as with SQLite a write has reached s->watch when it returns.
 *
 * Revisions are etcd's. store_revision() is `applied`: the last revision the
 * loop thread handed to s->watch. The history ring keeps the last `history`
 * changes; changes_since(r) works for floor <= r <= applied, where floor is
 * the highest revision evicted (or the revision the store started or last
 * reloaded at). A broken watch reconnects from the last queued revision + 1,
 * with backoff (100 ms doubling to 2 s), trying the next endpoint; so does a
 * watch whose member went silent (liveness checks, see watch_once). When etcd
 * says that revision was compacted (or etcd's revision went backwards, a new
 * cluster), the watch thread reads etcd's current revision R and queues a
 * RESYNC: the loop empties the ring, sets applied = floor = R and calls
 * s->resync, whose listener resends snapshots read with store_list_at(R).
 *
 * Conditional writes are one /v3/kv/txn each: the expected mod_rev
 * (create_revision == 0 for create-only) and every guard as compares, the
 * write plus a read-back of the key on success, a read of the key on failure
 * (to tell -EEXIST, -ENOENT and -ESTALE apart). A ttl is a lease granted first.
 *
 * Authentication: with a user, /v3/auth/authenticate gives a token that goes
 * in the Authorization header; a call refused for its token authenticates
 * again once and retries. The token is shared by both threads (mutex).
 *
 * Ownership: the store owns everything here; items and changes passed to
 * callbacks are borrowed for the call. Thread-shared state (the event queue,
 * the stop flag, the token) is under `mu`.
 */
#include "store.h"

#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "base64.h"
#include "log.h"

#define MAX_ENDPOINTS 16
#define MAX_RESPONSE (256u << 20) /* one gateway response */
#define LIST_PAGE 1000            /* keys per range request when listing */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define ATTEMPT_MIN_MS 500 /* least time one endpoint gets within a call */
#define PROBE_EVERY_MIN_MS 500
#define PROBE_EVERY_MAX_MS 5000 /* a quiet watch is checked at least this often */
#define MAX_TTL 9000000000LL    /* etcd's MaxLeaseTTL */

/* An event from the watch thread to the loop. */
enum wev_type { WEV_CHANGE, WEV_RESYNC };

struct wev {
    struct wev *next;   /* queue link */
    enum wev_type type; /* what it is */
    int64_t rev;        /* CHANGE: its revision; RESYNC: the reload revision */
    char *key;          /* CHANGE: store key ("/apisix/..."), owned */
    char *value;        /* CHANGE: value, NULL for a delete, owned */
    int64_t create_rev; /* CHANGE: for puts */
};

/* One kept change (the history ring). */
struct hent {
    int64_t rev;        /* revision */
    char *key;          /* owned */
    char *value;        /* owned, NULL for a delete */
    int64_t create_rev; /* for puts */
};

/* A thread's way to etcd: its own easy handle and preferred endpoint. */
struct conn {
    struct etcd_store *e; /* owner */
    CURL *h;              /* easy handle, reused (keep-alive) */
    size_t ep;            /* endpoint to try first */
    char *buf;            /* response body */
    size_t len, cap;      /* its length and allocation */
    bool too_big;         /* the response passed MAX_RESPONSE */
    bool watch_thread;    /* aborts when the store is stopping */
};

struct etcd_store {
    store base;               /* must be first: store * is cast to this */
    char *eps[MAX_ENDPOINTS]; /* endpoint URLs, without trailing '/' */
    size_t neps;              /* how many */
    char *endpoints;          /* as given, for messages */
    char *prefix;             /* etcd key prefix, no trailing '/' ("" for "/") */
    char *user, *password;    /* NULL: no auth */
    char *cert, *key, *ca;    /* TLS files, may be NULL */
    bool verify;              /* verify etcd's certificate */
    uint64_t timeout_ms;      /* per call, and per request when bracketed */
    int history;              /* ring capacity */

    /* loop thread */
    struct conn lc;             /* loop thread's connection */
    uint64_t deadline_ms;       /* end of the current request's budget, 0: none */
    int64_t applied;            /* last revision handed to s->watch */
    int64_t floor;              /* changes_since works from here */
    struct hent *ring;          /* history, capacity history */
    size_t ring_head, ring_len; /* oldest entry, count */
    uv_async_t async;           /* wakes the loop for queued events */
    bool started;               /* async initialized, thread running */

    /* watch thread */
    pthread_t thread;  /* runs watch_main */
    CURLM *multi;      /* its multi handle (woken by store_stop) */
    struct conn wc;    /* its connection for ranges and auth */
    int64_t w_next;    /* next revision to watch from (0: unknown) */
    char *wbuf;        /* partial watch message */
    size_t wlen, wcap; /* its length and allocation */
    int w_state;       /* see enum wstate */
    bool w_created;    /* current watch was acknowledged */
    bool w_down;       /* a failure was logged; log the recovery */
    int w_backoff;     /* ms before the next attempt */
    char w_err[512];   /* why the current watch ended */
    uint64_t w_rx_ms;  /* when the current watch last sent something */

    /* shared, under mu */
    pthread_mutex_t mu;        /* guards the fields below */
    struct wev *qhead, *qtail; /* events for the loop, in order */
    pthread_cond_t cv;         /* signalled when q_rev or live changes */
    int64_t q_rev;             /* every change up to here has been queued */
    bool live;                 /* a watch is established */
    int64_t expect_rev;        /* our latest write the watch has to bring */
    uint64_t expect_ms;        /* when it became due (0: nothing due) */
    bool stop;                 /* the watch thread must end */
    char *token;               /* auth token, or NULL */
};

enum wstate { WS_OK, WS_COMPACTED, WS_BACKWARDS, WS_ERROR };

static struct etcd_store *es(store *s)
{
    return (struct etcd_store *)s;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void set_err(struct etcd_store *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(struct etcd_store *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->base.errmsg, sizeof(e->base.errmsg), fmt, ap);
    va_end(ap);
}

/* ---- base64 ------------------------------------------------------------ */

/* Decodes into a NUL-terminated malloc'd string; NULL on bad input. */
static char *b64_decode(const char *src, size_t *outlen)
{
    size_t n = strlen(src);
    unsigned char *out = malloc(BASE64_DECODED_MAX(n));
    if (!out)
        return NULL;
    long o = base64_decode(src, n, out, BASE64_LENIENT);
    if (o < 0) {
        free(out);
        return NULL;
    }
    out[o] = '\0';
    if (outlen)
        *outlen = (size_t)o;
    return (char *)out;
}

/* ---- keys ---------------------------------------------------------------- */

/* "/apisix/x" -> "<prefix>/x". NULL (with a message) for a key outside
 * "/apisix". An internal prefix "" or "/apisix" means all of ours. */
static char *to_etcd(struct etcd_store *e, const char *key, bool is_prefix)
{
    const char *rest;
    if (is_prefix && (key[0] == '\0' || strcmp(key, "/apisix") == 0))
        rest = "/";
    else if (strncmp(key, "/apisix/", 8) == 0)
        rest = key + 7;
    else {
        set_err(e, "etcd: key %.200s is not under /apisix/", key);
        return NULL;
    }
    size_t pl = strlen(e->prefix), rl = strlen(rest);
    char *k = malloc(pl + rl + 1);
    if (!k)
        return NULL;
    memcpy(k, e->prefix, pl);
    memcpy(k + pl, rest, rl + 1);
    return k;
}

/* "<prefix>/x" -> "/apisix/x"; NULL when not ours. */
static char *from_etcd(struct etcd_store *e, const char *ekey)
{
    size_t pl = strlen(e->prefix);
    if (strncmp(ekey, e->prefix, pl) != 0 || ekey[pl] != '/')
        return NULL;
    size_t rl = strlen(ekey + pl);
    char *k = malloc(7 + rl + 1);
    if (!k)
        return NULL;
    memcpy(k, "/apisix", 7);
    memcpy(k + 7, ekey + pl, rl + 1);
    return k;
}

/* etcd's range_end for a prefix (the prefix with its last byte bumped),
 * base64. "\0" (everything) when the prefix is all 0xff. */
static char *b64_range_end(const char *prefix)
{
    size_t n = strlen(prefix);
    char *u = malloc(n + 1);
    if (!u)
        return NULL;
    memcpy(u, prefix, n + 1);
    while (n > 0 && (unsigned char)u[n - 1] == 0xff)
        n--;
    char *r;
    if (n == 0) {
        r = base64_encode("", 1);
    } else {
        u[n - 1] = (char)((unsigned char)u[n - 1] + 1);
        r = base64_encode(u, n);
    }
    free(u);
    return r;
}

/* ---- JSON helpers ---------------------------------------------------------- */

/* etcd's int64: a JSON string (or, to be lenient, an integer); 0 if absent. */
static int64_t jint(const json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    return 0;
}

static json_t *jstr_i64(int64_t v)
{
    char b[32];
    snprintf(b, sizeof(b), "%" PRId64, v);
    return json_string(b);
}

/* A base64 field as a NUL-terminated string (absent: ""). */
static char *jb64(const json_t *o, const char *name)
{
    json_t *v = json_object_get(o, name);
    return b64_decode(json_is_string(v) ? json_string_value(v) : "", NULL);
}

static json_t *jb64_new(const char *s)
{
    char *b = base64_encode(s, strlen(s));
    json_t *j = b ? json_string(b) : NULL;
    free(b);
    return j;
}

/* ---- HTTP ------------------------------------------------------------------ */

/* Forgets the auth token: the next call authenticates again. */
static void drop_token(struct etcd_store *e)
{
    pthread_mutex_lock(&e->mu);
    free(e->token);
    e->token = NULL;
    pthread_mutex_unlock(&e->mu);
}

static bool stopping(struct etcd_store *e)
{
    pthread_mutex_lock(&e->mu);
    bool s = e->stop;
    pthread_mutex_unlock(&e->mu);
    return s;
}

/* Grows *buf (of *cap bytes, doubling from first) to hold need bytes;
 * -1 when out of memory or that would pass MAX_RESPONSE. */
static int buf_reserve(char **buf, size_t *cap, size_t need, size_t first)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : first;
    while (c < need)
        c *= 2;
    if (c > MAX_RESPONSE)
        return -1;
    char *b = realloc(*buf, c);
    if (!b)
        return -1;
    *buf = b;
    *cap = c;
    return 0;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    struct conn *c = ud;
    size_t len = sz * n;
    if (c->len + len + 1 > MAX_RESPONSE) {
        c->too_big = true;
        return 0;
    }
    if (buf_reserve(&c->buf, &c->cap, c->len + len + 1, 4096) < 0)
        return 0;
    memcpy(c->buf + c->len, p, len);
    c->len += len;
    c->buf[c->len] = '\0';
    return len;
}

static int on_progress(void *ud, curl_off_t a, curl_off_t b, curl_off_t c2, curl_off_t d)
{
    struct conn *c = ud;
    (void)a, (void)b, (void)c2, (void)d;
    return c->watch_thread && stopping(c->e);
}

/* Options shared by every request to endpoint ep. */
static void setup_handle(struct etcd_store *e, CURL *h, const char *url)
{
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 10L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 5L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (e->cert)
        curl_easy_setopt(h, CURLOPT_SSLCERT, e->cert);
    if (e->key)
        curl_easy_setopt(h, CURLOPT_SSLKEY, e->key);
    if (e->ca)
        curl_easy_setopt(h, CURLOPT_CAINFO, e->ca);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, e->verify ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, e->verify ? 2L : 0L);
}

static struct curl_slist *make_headers(struct etcd_store *e, bool with_token)
{
    struct curl_slist *hd = curl_slist_append(NULL, "Content-Type: application/json");
    hd = curl_slist_append(hd, "Expect:");
    if (with_token) {
        pthread_mutex_lock(&e->mu);
        if (e->token) {
            char *line = malloc(strlen(e->token) + 32);
            if (line) {
                sprintf(line, "Authorization: %s", e->token);
                hd = curl_slist_append(hd, line);
                free(line);
            }
        }
        pthread_mutex_unlock(&e->mu);
    }
    return hd;
}

enum call_result {
    CALL_OK,        /* 200 with a JSON body */
    CALL_TRANSPORT, /* could not talk to this endpoint: try the next */
    CALL_BUSY,      /* etcd answered "not now" (no leader, an election, overloaded):
                       try the next, and again while the budget lasts */
    CALL_AUTH,      /* the token was refused */
    CALL_ETCD,      /* etcd answered with an error */
};

/* One POST to one endpoint. err gets a short reason. */
static enum call_result post_once(struct conn *c, size_t ep, const char *path, const char *body,
                                  uint64_t budget_ms, bool with_token, json_t **out, char *err,
                                  size_t errlen, int *grpc_code)
{
    struct etcd_store *e = c->e;
    char url[1024];
    snprintf(url, sizeof(url), "%s%s", e->eps[ep], path);
    curl_easy_reset(c->h);
    setup_handle(e, c->h, url);
    struct curl_slist *hd = make_headers(e, with_token);
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->h, CURLOPT_TIMEOUT_MS, (long)(budget_ms ? budget_ms : 1));
    curl_easy_setopt(c->h, CURLOPT_CONNECTTIMEOUT_MS, (long)(budget_ms ? budget_ms : 1));
    if (c->watch_thread) {
        curl_easy_setopt(c->h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(c->h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(c->h, CURLOPT_XFERINFODATA, c);
    }
    c->len = 0;
    c->too_big = false;
    if (c->buf)
        c->buf[0] = '\0';
    CURLcode rc = curl_easy_perform(c->h);
    curl_slist_free_all(hd);
    *out = NULL;
    *grpc_code = 0;
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "%s: %s", e->eps[ep],
                 c->too_big ? "response too large" : curl_easy_strerror(rc));
        return c->too_big ? CALL_ETCD : CALL_TRANSPORT;
    }
    long status = 0;
    curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    json_t *j = c->len ? json_loadb(c->buf, c->len, 0, NULL) : NULL;
    if (status == 200 && json_is_object(j)) {
        *out = j;
        return CALL_OK;
    }
    const char *msg = NULL;
    if (json_is_object(j)) {
        msg = json_string_value(json_object_get(j, "message"));
        if (!msg)
            msg = json_string_value(json_object_get(j, "error"));
        *grpc_code = (int)jint(j, "code");
    }
    snprintf(err, errlen, "%s: %s (HTTP %ld)", e->eps[ep],
             msg ? msg : (status == 200 ? "unreadable response" : "error"), status);
    enum call_result r = CALL_ETCD;
    if (*grpc_code == 16 ||
        (msg && (strstr(msg, "invalid auth token") || strstr(msg, "user name is empty") ||
                 strstr(msg, "auth: revision in header is old"))))
        r = CALL_AUTH;
    else if (status == 503 || status == 429 || status == 502 || status == 504 || *grpc_code == 14 ||
             *grpc_code == 8)
        r = CALL_BUSY; /* no leader, leader changed, not ready, a proxy in front */
    json_decref(j);
    return r;
}

/* Gets a token for the configured user on endpoint ep. */
static int authenticate(struct conn *c, size_t ep, uint64_t budget_ms, char *err, size_t errlen)
{
    struct etcd_store *e = c->e;
    json_t *req =
        json_pack("{s:s, s:s}", "name", e->user, "password", e->password ? e->password : "");
    char *body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!body) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    json_t *resp;
    int code;
    char why[400];
    enum call_result r = post_once(c, ep, "/v3/auth/authenticate", body, budget_ms, false, &resp,
                                   why, sizeof(why), &code);
    free(body);
    if (r != CALL_OK) {
        snprintf(err, errlen, "authenticating as %s: %s", e->user, why);
        return r == CALL_TRANSPORT ? -EAGAIN : r == CALL_BUSY ? -EBUSY : -EACCES;
    }
    const char *tok = json_string_value(json_object_get(resp, "token"));
    int rc = 0;
    pthread_mutex_lock(&e->mu);
    free(e->token);
    e->token = tok ? strdup(tok) : NULL;
    pthread_mutex_unlock(&e->mu);
    if (!tok) {
        snprintf(err, errlen, "authenticating as %s: %s: no token in the answer", e->user,
                 e->eps[ep]);
        rc = -EACCES;
    }
    json_decref(resp);
    return rc;
}

static bool have_token(struct etcd_store *e)
{
    pthread_mutex_lock(&e->mu);
    bool t = e->token != NULL;
    pthread_mutex_unlock(&e->mu);
    return t;
}

/* POSTs req (not consumed) to path on the first endpoint that answers,
 * within budget_ms. *out gets the parsed answer. Returns 0; -EIO with err set
 * (transport or etcd error); -ERANGE when etcd says the revision is
 * compacted; -EACCES for authentication failures. */
static int call(struct conn *c, const char *path, const json_t *req, uint64_t budget_ms,
                json_t **out, char *err, size_t errlen)
{
    struct etcd_store *e = c->e;
    *out = NULL;
    char *body = json_dumps(req, JSON_COMPACT);
    if (!body) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    uint64_t start = now_ms(), deadline = start + budget_ms;
    char tried[1024] = "";
    size_t tl = 0;
    int rc = -EIO;
    bool reauthed = false;
    unsigned pause_ms = 50;
again:;
    /* One pass over the endpoints. Only when some member said "not now" (an
     * election takes about a second) is there another pass, after a pause,
     * while the budget lasts; unreachable members fail the call at once. */
    bool busy = false;
    tl = 0;
    tried[0] = '\0';
    for (size_t i = 0; i < e->neps; i++) {
        size_t ep = (c->ep + i) % e->neps;
        uint64_t now = now_ms();
        if (now >= deadline) {
            if (tl < sizeof(tried))
                tl += (size_t)snprintf(tried + tl, sizeof(tried) - tl,
                                       "%s%s: not tried (%.1f s "
                                       "timeout spent)",
                                       tl ? "; " : "", e->eps[ep], (double)budget_ms / 1000.0);
            continue;
        }
        /* This endpoint's share of what is left, so that a member that
         * takes the connection and then answers nothing (a frozen process,
         * a black hole) leaves time for the ones after it. */
        uint64_t share = (deadline - now) / (e->neps - i);
        if (share < ATTEMPT_MIN_MS)
            share = deadline - now < ATTEMPT_MIN_MS ? deadline - now : ATTEMPT_MIN_MS;
        uint64_t adeadline = now + share;
        char why[512];
        int code = 0;
        enum call_result r;
        if (e->user && !have_token(e)) {
            int arc = authenticate(c, ep, share, why, sizeof(why));
            if (arc == -EAGAIN)
                r = CALL_TRANSPORT;
            else if (arc == -EBUSY)
                r = CALL_BUSY;
            else if (arc < 0) {
                snprintf(err, errlen, "%.440s", why);
                rc = -EACCES;
                goto out;
            } else {
                uint64_t t = now_ms();
                r = post_once(c, ep, path, body, adeadline > t ? adeadline - t : 1, true, out, why,
                              sizeof(why), &code);
            }
        } else {
            r = post_once(c, ep, path, body, share, true, out, why, sizeof(why), &code);
        }
        if (r == CALL_AUTH && e->user && !reauthed) {
            reauthed = true;
            drop_token(e);
            i--; /* the same endpoint again, with a new token */
            continue;
        }
        if (r == CALL_OK) {
            c->ep = ep;
            rc = 0;
            goto out;
        }
        if (r == CALL_AUTH || r == CALL_ETCD) {
            snprintf(err, errlen, "%.440s", why);
            rc = code == 11 || strstr(why, "compacted") ? -ERANGE : r == CALL_AUTH ? -EACCES : -EIO;
            goto out;
        }
        busy |= r == CALL_BUSY;
        if (tl < sizeof(tried))
            tl += (size_t)snprintf(tried + tl, sizeof(tried) - tl, "%s%s", tl ? "; " : "", why);
    }
    /* Next time start with the endpoint after the one that failed first. */
    c->ep = (c->ep + 1) % e->neps;
    uint64_t now = now_ms();
    if (busy && now + pause_ms + 20 < deadline && !(c->watch_thread && stopping(e))) {
        struct timespec ts = {0, (long)pause_ms * 1000000L};
        nanosleep(&ts, NULL);
        pause_ms = pause_ms * 2 > 400 ? 400 : pause_ms * 2;
        goto again;
    }
    snprintf(err, errlen, "no endpoint answered (timeout %.1f s): %s", (double)budget_ms / 1000.0,
             tried);
    rc = -EIO;
out:
    free(body);
    return rc;
}

/* The budget of the next call made from the loop thread. 0: spent. */
static uint64_t loop_budget(struct etcd_store *e)
{
    if (!e->deadline_ms)
        return e->timeout_ms;
    uint64_t now = now_ms();
    return now >= e->deadline_ms ? 0 : e->deadline_ms - now;
}

/* call() from the loop thread, errors into base.errmsg. */
static int lcall(struct etcd_store *e, const char *what, const char *path, const json_t *req,
                 json_t **out)
{
    uint64_t budget = loop_budget(e);
    if (budget == 0) {
        set_err(e, "etcd: %s: the request's %.1f s timeout is spent", what,
                (double)e->timeout_ms / 1000.0);
        return -EIO;
    }
    char err[sizeof(e->base.errmsg)];
    int rc = call(&e->lc, path, req, budget, out, err, sizeof(err));
    if (rc < 0)
        set_err(e, "etcd: %s: %s", what, err);
    return rc;
}

/* ---- kv ------------------------------------------------------------------------ */

/* Fills an item from an etcd kv (key mapped back). -EPROTO if not ours. */
static int item_from_kv(struct etcd_store *e, const json_t *kv, struct store_item *it)
{
    char *ek = jb64(kv, "key");
    it->key = ek ? from_etcd(e, ek) : NULL;
    free(ek);
    it->value = jb64(kv, "value");
    it->create_rev = jint(kv, "create_revision");
    it->mod_rev = jint(kv, "mod_revision");
    if (!it->key || !it->value) {
        store_item_clear(it);
        return -EPROTO;
    }
    return 0;
}

static int et_get(store *s, const char *key, struct store_item *out)
{
    struct etcd_store *e = es(s);
    char *ek = to_etcd(e, key, false);
    if (!ek)
        return -EINVAL;
    json_t *req = json_pack("{s:o}", "key", jb64_new(ek)), *resp;
    free(ek);
    int rc = lcall(e, "get", "/v3/kv/range", req, &resp);
    json_decref(req);
    if (rc < 0)
        return rc == -ERANGE ? -EIO : rc;
    json_t *kv = json_array_get(json_object_get(resp, "kvs"), 0);
    if (!kv)
        rc = -ENOENT;
    else if (item_from_kv(e, kv, out) < 0) {
        set_err(e, "etcd: unreadable key in a range answer");
        rc = -EIO;
    }
    json_decref(resp);
    return rc;
}

static int et_list(store *s, const char *prefix, int64_t at_rev, store_item_fn fn, void *ud,
                   int64_t *read_rev)
{
    struct etcd_store *e = es(s);
    char *ep = to_etcd(e, prefix ? prefix : "", true);
    if (!ep)
        return -EINVAL;
    char *end = b64_range_end(ep);
    char *from = base64_encode(ep, strlen(ep)); /* base64 of the next page's first key */
    free(ep);
    int64_t rev = at_rev;
    int ret = (end && from) ? 0 : -ENOMEM;
    while (ret == 0) {
        json_t *req = json_pack("{s:s, s:s, s:o}", "key", from, "range_end", end, "limit",
                                jstr_i64(LIST_PAGE));
        if (rev > 0)
            json_object_set_new(req, "revision", jstr_i64(rev));
        json_t *resp;
        int rc = lcall(e, "list", "/v3/kv/range", req, &resp);
        json_decref(req);
        if (rc < 0) {
            ret = rc;
            break;
        }
        /* Later pages read at the first page's revision: one consistent view. */
        if (rev <= 0)
            rev = jint(json_object_get(resp, "header"), "revision");
        size_t i;
        json_t *kv;
        char *last = NULL;
        size_t last_len = 0;
        json_array_foreach(json_object_get(resp, "kvs"), i, kv)
        {
            free(last);
            json_t *k = json_object_get(kv, "key");
            last = b64_decode(json_is_string(k) ? json_string_value(k) : "", &last_len);
            struct store_item it = {0};
            if (item_from_kv(e, kv, &it) < 0)
                continue; /* "<prefix>" itself or garbage: not ours */
            ret = fn(ud, &it);
            store_item_clear(&it);
            if (ret != 0)
                break;
        }
        bool more = json_is_true(json_object_get(resp, "more")) && last && ret == 0;
        json_decref(resp);
        free(from);
        from = NULL;
        if (more) /* from just after the last key: the key with a NUL appended */
            from = base64_encode(last, last_len + 1);
        free(last);
        if (!more)
            break;
        if (!from)
            ret = -ENOMEM;
    }
    free(from);
    free(end);
    if (ret == -ERANGE)
        set_err(e, "etcd: revision %" PRId64 " is compacted", at_rev);
    if (ret == -ENOMEM)
        set_err(e, "etcd: out of memory");
    if (ret >= 0 && read_rev)
        *read_rev = rev;
    return ret;
}

/* The compares of a write: the expected mod_rev and the guards. */
static int add_compares(struct etcd_store *e, json_t *cmp, const char *ekey, int64_t expect)
{
    if (expect == STORE_ABSENT)
        json_array_append_new(cmp,
                              json_pack("{s:s, s:s, s:o, s:s}", "result", "EQUAL", "target",
                                        "CREATE", "key", jb64_new(ekey), "create_revision", "0"));
    else if (expect > 0)
        json_array_append_new(cmp,
                              json_pack("{s:s, s:s, s:o, s:o}", "result", "EQUAL", "target", "MOD",
                                        "key", jb64_new(ekey), "mod_revision", jstr_i64(expect)));
    (void)e;
    return 0;
}

static int add_guards(struct etcd_store *e, json_t *cmp, const struct store_write *w)
{
    for (size_t i = 0; i < w->nguards; i++) {
        const struct store_guard *g = &w->guards[i];
        char *gk = to_etcd(e, g->key, g->type == STORE_GUARD_UNCHANGED);
        if (!gk)
            return -EINVAL;
        if (g->type == STORE_GUARD_CREATED) {
            json_array_append_new(cmp, json_pack("{s:s, s:s, s:o, s:o}", "result", "EQUAL",
                                                 "target", "CREATE", "key", jb64_new(gk),
                                                 "create_revision", jstr_i64(g->rev)));
        } else {
            char *end = b64_range_end(gk);
            json_array_append_new(cmp, json_pack("{s:s, s:s, s:o, s:s, s:o}", "result", "LESS",
                                                 "target", "MOD", "key", jb64_new(gk), "range_end",
                                                 end, "mod_revision", jstr_i64(g->rev + 1)));
            free(end);
        }
        free(gk);
    }
    return 0;
}

static int check_write(struct etcd_store *e, const char *key, const struct store_write *w)
{
    if (!key || !*key) {
        set_err(e, "empty key");
        return -EINVAL;
    }
    if (w->expect_mod_rev < STORE_ANY) {
        set_err(e, "bad expected mod_rev %" PRId64, w->expect_mod_rev);
        return -EINVAL;
    }
    if (w->nguards && !w->guards) {
        set_err(e, "guards missing");
        return -EINVAL;
    }
    for (size_t i = 0; i < w->nguards; i++)
        if (!w->guards[i].key) {
            set_err(e, "guard without a key");
            return -EINVAL;
        }
    if (w->ttl < 0 || w->ttl > MAX_TTL) {
        set_err(e, "ttl must be from 1 to %lld seconds", MAX_TTL);
        return -EINVAL;
    }
    return 0;
}

/* After a failed txn: why. cur is the key's kv in the failure range (or
 * NULL when absent). */
static int classify_failure(struct etcd_store *e, const char *key, int64_t expect,
                            const json_t *cur, bool is_delete)
{
    int64_t mod = cur ? jint(cur, "mod_revision") : 0;
    if (!cur && (is_delete || expect > 0)) {
        set_err(e, "key %s does not exist", key);
        return -ENOENT;
    }
    if (expect == STORE_ABSENT && cur && !is_delete) {
        set_err(e, "key %s already exists", key);
        return -EEXIST;
    }
    if (expect != STORE_ANY && mod != expect) {
        set_err(e, "key %s was modified (mod_rev %" PRId64 ", expected %" PRId64 ")", key, mod,
                expect);
        return -ESTALE;
    }
    set_err(e, "a resource %s depends on was changed by another writer", key);
    return -ESTALE;
}

static void wait_delivered(struct etcd_store *e, int64_t rev);

/* The first kv of a txn's i-th response, a range (NULL when it has none). */
static json_t *txn_range_kv(const json_t *resp, size_t i)
{
    json_t *r = json_array_get(json_object_get(resp, "responses"), i);
    return json_array_get(json_object_get(json_object_get(r, "response_range"), "kvs"), 0);
}

/* Runs a write's txn; req (taken) holds the compares, the write on
 * success and a range of the key on failure. 0 with *rev, or why the
 * write failed. *resp is the answer in either case (the caller frees it). */
static int run_write_txn(struct etcd_store *e, const char *what, json_t *req, const char *key,
                         const struct store_write *w, bool is_delete, json_t **resp, int64_t *rev)
{
    int rc = lcall(e, what, "/v3/kv/txn", req, resp);
    json_decref(req);
    if (rc < 0)
        return rc == -ERANGE ? -EIO : rc;
    if (!json_is_true(json_object_get(*resp, "succeeded")))
        return classify_failure(e, key, w->expect_mod_rev, txn_range_kv(*resp, 0), is_delete);
    *rev = jint(json_object_get(*resp, "header"), "revision");
    return 0;
}

static int et_put(store *s, const char *key, const char *value, const struct store_write *w,
                  struct store_item *out)
{
    struct etcd_store *e = es(s);
    int rc = check_write(e, key, w);
    if (rc < 0)
        return rc;
    if (!value) {
        set_err(e, "NULL value");
        return -EINVAL;
    }
    char *ek = to_etcd(e, key, false);
    if (!ek)
        return -EINVAL;
    int64_t lease = 0;
    json_t *resp = NULL, *req = NULL;
    if (w->ttl > 0) {
        req = json_pack("{s:o}", "TTL", jstr_i64(w->ttl));
        rc = lcall(e, "lease grant", "/v3/lease/grant", req, &resp);
        json_decref(req);
        if (rc < 0)
            goto out;
        lease = jint(resp, "ID");
        json_decref(resp);
        resp = NULL;
        if (lease == 0) {
            set_err(e, "etcd: lease grant answered no lease ID");
            rc = -EIO;
            goto out;
        }
    }
    json_t *cmp = json_array();
    add_compares(e, cmp, ek, w->expect_mod_rev);
    if ((rc = add_guards(e, cmp, w)) < 0) {
        json_decref(cmp);
        goto out;
    }
    json_t *put = json_pack("{s:o, s:o}", "key", jb64_new(ek), "value", jb64_new(value));
    if (lease)
        json_object_set_new(put, "lease", jstr_i64(lease));
    req = json_pack("{s:o, s:[{s:o}, {s:{s:o}}], s:[{s:{s:o}}]}", "compare", cmp, "success",
                    "request_put", put, "request_range", "key", jb64_new(ek), "failure",
                    "request_range", "key", jb64_new(ek));
    int64_t rev = 0;
    if ((rc = run_write_txn(e, "put", req, key, w, false, &resp, &rev)) < 0)
        goto out;
    json_t *kv = txn_range_kv(resp, 1);
    if (out) {
        out->key = strdup(key);
        out->value = strdup(value);
        out->create_rev = kv ? jint(kv, "create_revision") : rev;
        out->mod_rev = rev;
        if (!out->key || !out->value) {
            store_item_clear(out);
            /* Written all the same: report it, the caller reads it back. */
        }
    }
    wait_delivered(e, rev);
    rc = 0;
out:
    json_decref(resp);
    free(ek);
    return rc;
}

static int et_del(store *s, const char *key, const struct store_write *w, int64_t *out_rev)
{
    struct etcd_store *e = es(s);
    int rc = check_write(e, key, w);
    if (rc < 0)
        return rc;
    char *ek = to_etcd(e, key, false);
    if (!ek)
        return -EINVAL;
    json_t *cmp = json_array(), *resp = NULL;
    if (w->expect_mod_rev == STORE_ANY || w->expect_mod_rev == STORE_ABSENT)
        /* The key must exist (a delete of nothing is -ENOENT, and ABSENT
         * can never hold for an existing key: classified on failure). */
        json_array_append_new(cmp, json_pack("{s:s, s:s, s:o, s:s}", "result",
                                             w->expect_mod_rev == STORE_ANY ? "GREATER" : "LESS",
                                             "target", "CREATE", "key", jb64_new(ek),
                                             "create_revision", "0"));
    else
        add_compares(e, cmp, ek, w->expect_mod_rev);
    if ((rc = add_guards(e, cmp, w)) < 0) {
        json_decref(cmp);
        goto out;
    }
    json_t *req = json_pack("{s:o, s:[{s:{s:o}}], s:[{s:{s:o}}]}", "compare", cmp, "success",
                            "request_delete_range", "key", jb64_new(ek), "failure", "request_range",
                            "key", jb64_new(ek));
    int64_t rev = 0;
    if ((rc = run_write_txn(e, "delete", req, key, w, true, &resp, &rev)) < 0)
        goto out;
    if (out_rev)
        *out_rev = rev;
    wait_delivered(e, rev);
    rc = 0;
out:
    json_decref(resp);
    free(ek);
    return rc;
}

/* ---- history ------------------------------------------------------------------- */

static void hent_free(struct hent *h)
{
    free(h->key);
    free(h->value);
    memset(h, 0, sizeof(*h));
}

static void ring_clear(struct etcd_store *e)
{
    for (size_t i = 0; i < e->ring_len; i++)
        hent_free(&e->ring[(e->ring_head + i) % (size_t)e->history]);
    e->ring_head = e->ring_len = 0;
}

/* Takes ownership of key and value. */
static void ring_push(struct etcd_store *e, int64_t rev, char *key, char *value, int64_t create_rev)
{
    size_t cap = (size_t)e->history;
    if (cap == 0) {
        free(key);
        free(value);
        e->floor = rev;
        return;
    }
    if (e->ring_len == cap) {
        struct hent *old = &e->ring[e->ring_head];
        if (old->rev > e->floor)
            e->floor = old->rev;
        hent_free(old);
        e->ring_head = (e->ring_head + 1) % cap;
        e->ring_len--;
    }
    struct hent *h = &e->ring[(e->ring_head + e->ring_len) % cap];
    h->rev = rev;
    h->key = key;
    h->value = value;
    h->create_rev = create_rev;
    e->ring_len++;
}

static int64_t et_revision(store *s)
{
    return es(s)->applied;
}

static int et_changes_since(store *s, int64_t rev, store_change_fn fn, void *ud)
{
    struct etcd_store *e = es(s);
    if (rev > e->applied || rev < e->floor) {
        set_err(e,
                "revision %" PRId64 " is outside the history (%" PRId64 "..%" PRId64 " can resume)",
                rev, e->floor, e->applied);
        return -ERANGE;
    }
    /* Entries are in revision order; a callback cannot add to the ring (only
     * the loop's async callback does, and it is not re-entered from here). */
    size_t cap = (size_t)e->history;
    for (size_t i = 0; i < e->ring_len; i++) {
        const struct hent *h = &e->ring[(e->ring_head + i) % cap];
        if (h->rev <= rev)
            continue;
        struct store_change ch = {h->rev, h->key, h->value, h->create_rev};
        int rc = fn(ud, &ch);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- the loop side of the watch ----------------------------------------------------- */

/* Hands every queued event to the ring and the watch, in order. */
static void drain(struct etcd_store *e)
{
    pthread_mutex_lock(&e->mu);
    struct wev *q = e->qhead;
    e->qhead = e->qtail = NULL;
    pthread_mutex_unlock(&e->mu);
    while (q) {
        struct wev *next = q->next;
        if (q->type == WEV_RESYNC) {
            ring_clear(e);
            int64_t was = e->applied;
            e->applied = e->floor = q->rev;
            log_info("store: etcd: reloaded at revision %" PRId64 " (was at %" PRId64
                     "); resending every data plane a snapshot",
                     q->rev, was);
            /* The snapshots it sends are not the current admin request's
             * work (when drained from a put): they get their own timeouts. */
            uint64_t deadline = e->deadline_ms;
            e->deadline_ms = 0;
            if (e->base.resync)
                e->base.resync(e->base.resync_ud);
            e->deadline_ms = deadline;
        } else {
            struct store_change ch = {q->rev, q->key, q->value, q->create_rev};
            if (q->rev > e->applied)
                e->applied = q->rev;
            if (e->base.watch)
                e->base.watch(e->base.watch_ud, &ch);
            ring_push(e, q->rev, q->key, q->value, q->create_rev);
            q->key = q->value = NULL;
        }
        free(q->key);
        free(q->value);
        free(q);
        q = next;
    }
}

static void on_async(uv_async_t *a)
{
    drain(a->data);
}

/* After our own write at rev: waits (bounded, and only while a watch is
 * established) until the watch thread has queued it, then delivers the
 * queue. So, as with SQLite, a write has been handed to the watch (and from
 * there to the data planes) when it returns, and a data plane that connects
 * right after gets it in its snapshot. The events still come from the watch,
 * in etcd's order, so nothing is delivered twice or out of order. */
static void wait_delivered(struct etcd_store *e, int64_t rev)
{
    if (e->applied >= rev || !e->started)
        return;
    uint64_t bound = loop_budget(e);
    if (bound > 2000)
        bound = 2000;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(bound / 1000);
    ts.tv_nsec += (long)(bound % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->mu);
    /* Tell the watch thread what it owes us: a watch that does not bring
     * our own write in time is on a member that stopped answering, and it
     * moves on (see watch_once). */
    if (e->q_rev < rev) {
        if (e->expect_rev <= e->q_rev || !e->expect_ms)
            e->expect_ms = now_ms();
        if (rev > e->expect_rev)
            e->expect_rev = rev;
    }
    pthread_mutex_unlock(&e->mu);
    curl_multi_wakeup(e->multi);
    pthread_mutex_lock(&e->mu);
    while (e->q_rev < rev && e->live && !e->stop)
        if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&e->mu);
    drain(e);
}

/* ---- the watch thread ----------------------------------------------------------------- */

static void post(struct etcd_store *e, struct wev *head, struct wev *tail)
{
    if (!head)
        return;
    pthread_mutex_lock(&e->mu);
    if (e->qtail)
        e->qtail->next = head;
    else
        e->qhead = head;
    e->qtail = tail;
    if (tail->rev > e->q_rev || tail->type == WEV_RESYNC) /* a new cluster may be behind */
        e->q_rev = tail->rev;
    if (tail->type == WEV_RESYNC)
        e->expect_rev = 0; /* nothing older is owed by a reloaded watch */
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    uv_async_send(&e->async);
}

/* Waits ms, or until store_stop. */
static void nap(struct etcd_store *e, int ms)
{
    if (!stopping(e))
        curl_multi_poll(e->multi, NULL, 0, ms, NULL);
}

/* Reads etcd's current revision and queues a RESYNC at it. */
static int reload(struct etcd_store *e)
{
    char prefix[8] = "/apisix";
    char *ep = to_etcd(e, prefix, true);
    char *end = ep ? b64_range_end(ep) : NULL;
    json_t *req = json_pack("{s:o, s:s, s:b}", "key", jb64_new(ep ? ep : "/"), "range_end",
                            end ? end : "AA==", "count_only", 1);
    free(ep);
    free(end);
    json_t *resp;
    char err[512];
    int rc = call(&e->wc, "/v3/kv/range", req, e->timeout_ms, &resp, err, sizeof(err));
    json_decref(req);
    if (rc < 0) {
        snprintf(e->w_err, sizeof(e->w_err), "%s", err);
        return rc;
    }
    int64_t rev = jint(json_object_get(resp, "header"), "revision");
    json_decref(resp);
    struct wev *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return -ENOMEM;
    ev->type = WEV_RESYNC;
    ev->rev = rev;
    post(e, ev, ev);
    e->w_next = rev + 1;
    return 0;
}

/* One watch message (a line of the stream). */
static void watch_message(struct etcd_store *e, const char *line, size_t len)
{
    json_t *j = json_loadb(line, len, 0, NULL);
    if (!j)
        return; /* blank line or noise */
    json_t *err = json_object_get(j, "error");
    if (err) {
        const char *m = json_string_value(json_object_get(err, "message"));
        snprintf(e->w_err, sizeof(e->w_err), "watch error: %s", m ? m : "unknown");
        if (jint(err, "grpc_code") == 16 || (m && strstr(m, "auth"))) {
            drop_token(e);
        }
        e->w_state = WS_ERROR;
        json_decref(j);
        return;
    }
    json_t *res = json_object_get(j, "result");
    int64_t hdr_rev = jint(json_object_get(res, "header"), "revision");
    int64_t compact = jint(res, "compact_revision");
    if (compact > 0) {
        snprintf(e->w_err, sizeof(e->w_err),
                 "revision %" PRId64 " was compacted (etcd kept from %" PRId64 ")", e->w_next,
                 compact);
        e->w_state = WS_COMPACTED;
        json_decref(j);
        return;
    }
    if (json_is_true(json_object_get(res, "created"))) {
        e->w_created = true;
        e->w_backoff = BACKOFF_MIN_MS;
        if (hdr_rev >= e->w_next - 1) {
            /* Everything before the start revision was queued before. */
            pthread_mutex_lock(&e->mu);
            e->live = true;
            if (e->w_next - 1 > e->q_rev)
                e->q_rev = e->w_next - 1;
            pthread_cond_broadcast(&e->cv);
            pthread_mutex_unlock(&e->mu);
        }
        if (e->w_down)
            log_info("store: etcd watch: watching again from revision %" PRId64, e->w_next);
        e->w_down = false;
        if (hdr_rev > 0 && hdr_rev < e->w_next - 1) {
            snprintf(e->w_err, sizeof(e->w_err),
                     "etcd is at revision %" PRId64 ", behind ours (%" PRId64
                     "): a new or restored cluster",
                     hdr_rev, e->w_next - 1);
            e->w_state = WS_BACKWARDS;
            json_decref(j);
            return;
        }
    }
    if (json_is_true(json_object_get(res, "canceled"))) {
        const char *why = json_string_value(json_object_get(res, "cancel_reason"));
        snprintf(e->w_err, sizeof(e->w_err), "watch canceled by etcd: %s",
                 why && *why ? why : "no reason given");
        if (why && (strstr(why, "auth") || strstr(why, "permission"))) {
            drop_token(e);
        }
        e->w_state = WS_ERROR;
        json_decref(j);
        return;
    }
    struct wev *head = NULL, *tail = NULL;
    size_t i;
    json_t *ev;
    json_array_foreach(json_object_get(res, "events"), i, ev)
    {
        json_t *kv = json_object_get(ev, "kv");
        int64_t rev = jint(kv, "mod_revision");
        if (rev < e->w_next)
            continue; /* already queued */
        char *ek = jb64(kv, "key");
        char *key = ek ? from_etcd(e, ek) : NULL;
        free(ek);
        if (!key)
            continue;
        struct wev *w = calloc(1, sizeof(*w));
        if (!w) {
            free(key);
            continue;
        }
        const char *type = json_string_value(json_object_get(ev, "type"));
        w->type = WEV_CHANGE;
        w->rev = rev;
        w->key = key;
        if (!type || strcmp(type, "DELETE") != 0) {
            w->value = jb64(kv, "value");
            w->create_rev = jint(kv, "create_revision");
        }
        if (tail)
            tail->next = w;
        else
            head = w;
        tail = w;
    }
    /* Several events may share a revision (a txn): the whole batch is one
     * message, so next moves past all of them at once. */
    if (tail)
        e->w_next = tail->rev + 1;
    post(e, head, tail);
    json_decref(j);
}

static size_t on_watch_data(char *p, size_t sz, size_t n, void *ud)
{
    struct etcd_store *e = ud;
    size_t len = sz * n;
    e->w_rx_ms = now_ms();
    if (buf_reserve(&e->wbuf, &e->wcap, e->wlen + len + 1, 8192) < 0)
        return 0;
    memcpy(e->wbuf + e->wlen, p, len);
    e->wlen += len;
    size_t start = 0;
    for (size_t i = 0; i < e->wlen; i++) {
        if (e->wbuf[i] != '\n')
            continue;
        watch_message(e, e->wbuf + start, i - start);
        start = i + 1;
        if (e->w_state != WS_OK)
            return 0; /* ends the transfer */
    }
    memmove(e->wbuf, e->wbuf + start, e->wlen - start);
    e->wlen -= start;
    return len;
}

static size_t discard(char *p, size_t sz, size_t n, void *ud)
{
    (void)p, (void)ud;
    return sz * n;
}

/* Starts a liveness check of endpoint ep on the multi handle: a
 * linearizable read of one key (so the member must be running and in touch
 * with its leader to answer). */
static void probe_start(struct etcd_store *e, CURL *p, size_t ep, struct curl_slist **hd,
                        const char *body)
{
    char url[1024];
    snprintf(url, sizeof(url), "%s/v3/kv/range", e->eps[ep]);
    curl_easy_reset(p);
    setup_handle(e, p, url);
    curl_slist_free_all(*hd);
    *hd = make_headers(e, true);
    curl_easy_setopt(p, CURLOPT_HTTPHEADER, *hd);
    curl_easy_setopt(p, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(p, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(p, CURLOPT_TIMEOUT_MS, (long)e->timeout_ms);
    curl_easy_setopt(p, CURLOPT_CONNECTTIMEOUT_MS, (long)e->timeout_ms);
    curl_multi_add_handle(e->multi, p);
}

/* Runs one watch on endpoint ep until it breaks or the store stops.
 *
 * A member can stop answering without closing its connections (a frozen
 * process or VM, a black-holed network): the watch then just stays quiet.
 * So the watch also ends, and the caller moves to the next endpoint, when
 *  - etcd does not acknowledge it within the timeout;
 *  - a liveness check fails: after every quiet spell of `every` ms (the
 *    timeout, from 0.5 to 5 s) a one-key read goes to the same endpoint, on
 *    the same multi handle, and must be answered (any status below 500)
 *    within the timeout;
 *  - a write of our own (expect_rev, from wait_delivered) has not come
 *    through within the timeout of being made.
 * Resuming from w_next loses nothing, so a false alarm costs a reconnect. */
static void watch_once(struct etcd_store *e, size_t ep)
{
    char *pfx = to_etcd(e, "", true);
    char *end = pfx ? b64_range_end(pfx) : NULL;
    json_t *req =
        json_pack("{s:{s:o, s:s, s:o}}", "create_request", "key", jb64_new(pfx ? pfx : "/"),
                  "range_end", end ? end : "AA==", "start_revision", jstr_i64(e->w_next));
    json_t *preq = json_pack("{s:o}", "key", jb64_new(pfx ? pfx : "/"));
    free(pfx);
    free(end);
    char *body = json_dumps(req, JSON_COMPACT);
    char *pbody = json_dumps(preq, JSON_COMPACT);
    json_decref(req);
    json_decref(preq);
    char url[1024];
    snprintf(url, sizeof(url), "%s/v3/watch", e->eps[ep]);
    CURL *h = body && pbody ? curl_easy_init() : NULL;
    CURL *p = h ? curl_easy_init() : NULL;
    if (!p) {
        snprintf(e->w_err, sizeof(e->w_err), "out of memory");
        e->w_state = WS_ERROR;
        if (h)
            curl_easy_cleanup(h);
        free(body);
        free(pbody);
        return;
    }
    setup_handle(e, h, url);
    struct curl_slist *hd = make_headers(e, true), *phd = NULL;
    /* etcd's "require leader" (gRPC metadata through the gateway): a member
     * cut off from its cluster cancels the watch instead of going quiet, and
     * we move on to another endpoint. */
    hd = curl_slist_append(hd, "Grpc-Metadata-hasleader: true");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_watch_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, e);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)e->timeout_ms);
    e->wlen = 0;
    e->w_state = WS_OK;
    e->w_created = false;
    e->w_err[0] = '\0';
    uint64_t t0 = now_ms(), to = e->timeout_ms;
    uint64_t every = to < PROBE_EVERY_MIN_MS   ? PROBE_EVERY_MIN_MS
                     : to > PROBE_EVERY_MAX_MS ? PROBE_EVERY_MAX_MS
                                               : to;
    uint64_t heard = t0;    /* the endpoint last showed it is alive */
    uint64_t probe_t = 0;   /* when the check in flight started (0: none) */
    uint64_t created_t = 0; /* when etcd acknowledged the watch */
    e->w_rx_ms = t0;
    pthread_mutex_lock(&e->mu);
    if (e->expect_ms)
        e->expect_ms = t0; /* what is owed is owed by this watch from now */
    pthread_mutex_unlock(&e->mu);
    curl_multi_add_handle(e->multi, h);
    bool done = false;
    while (!done && e->w_state == WS_OK && !stopping(e)) {
        int running;
        curl_multi_perform(e->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(e->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            long status = 0;
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            if (m->easy_handle == p) {
                CURLcode res = m->data.result;
                curl_multi_remove_handle(e->multi, p);
                probe_t = 0;
                if (res == CURLE_OK && status > 0 && status < 500) {
                    heard = now_ms();
                } else if (e->w_state == WS_OK) {
                    e->w_state = WS_ERROR;
                    if (res != CURLE_OK)
                        snprintf(e->w_err, sizeof(e->w_err),
                                 "%s: no answer to a liveness check (%s)", e->eps[ep],
                                 curl_easy_strerror(res));
                    else
                        snprintf(e->w_err, sizeof(e->w_err),
                                 "%s: a liveness check failed (HTTP %ld)", e->eps[ep], status);
                }
                continue;
            }
            done = true;
            if (e->w_state == WS_OK) {
                e->w_state = WS_ERROR;
                if (m->data.result != CURLE_OK)
                    snprintf(e->w_err, sizeof(e->w_err), "%s: %s", e->eps[ep],
                             curl_easy_strerror(m->data.result));
                else
                    snprintf(e->w_err, sizeof(e->w_err), "%s: the watch ended (HTTP %ld)",
                             e->eps[ep], status);
                if (status == 401) {
                    drop_token(e);
                }
            }
        }
        if (done || e->w_state != WS_OK)
            break;
        uint64_t now = now_ms();
        if (e->w_created && !created_t)
            created_t = now;
        if (e->w_rx_ms > heard)
            heard = e->w_rx_ms;
        pthread_mutex_lock(&e->mu);
        int64_t owed = e->expect_rev > e->q_rev ? e->expect_rev : 0;
        uint64_t owed_since = e->expect_ms;
        pthread_mutex_unlock(&e->mu);
        uint64_t wake = now + 1000;
        if (!e->w_created) {
            if (now - t0 >= to) {
                snprintf(e->w_err, sizeof(e->w_err),
                         "%s: the watch was not acknowledged within %.1f s", e->eps[ep],
                         (double)to / 1000.0);
                e->w_state = WS_ERROR;
                break;
            }
            if (t0 + to < wake)
                wake = t0 + to;
        } else if (owed) {
            uint64_t since = owed_since > created_t ? owed_since : created_t;
            if (now - since >= to) {
                snprintf(e->w_err, sizeof(e->w_err),
                         "%s: revision %" PRId64 ", written by this control plane, did not "
                         "come through the watch within %.1f s",
                         e->eps[ep], owed, (double)to / 1000.0);
                e->w_state = WS_ERROR;
                break;
            }
            if (since + to < wake)
                wake = since + to;
        }
        if (!probe_t && now - heard >= every) {
            probe_start(e, p, ep, &phd, pbody);
            probe_t = now;
            continue; /* let curl start it before polling */
        }
        if (!probe_t && heard + every < wake)
            wake = heard + every;
        curl_multi_poll(e->multi, NULL, 0, (int)(wake > now ? wake - now : 0), NULL);
    }
    pthread_mutex_lock(&e->mu);
    e->live = false;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (probe_t)
        curl_multi_remove_handle(e->multi, p);
    curl_multi_remove_handle(e->multi, h);
    curl_easy_cleanup(p);
    curl_easy_cleanup(h);
    curl_slist_free_all(hd);
    curl_slist_free_all(phd);
    free(body);
    free(pbody);
}

/* After a failure: log it once per outage, wait, back off. */
static void watch_failed(struct etcd_store *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void watch_failed(struct etcd_store *e, const char *fmt, ...)
{
    if (!e->w_down) {
        char msg[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_warn("store: etcd watch: %s; retrying", msg);
    }
    e->w_down = true;
    nap(e, e->w_backoff);
    e->w_backoff = e->w_backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : e->w_backoff * 2;
}

static void *watch_main(void *arg)
{
    struct etcd_store *e = arg;
    size_t ep = 0;
    e->w_backoff = BACKOFF_MIN_MS;
    while (!stopping(e)) {
        if (e->w_next <= 0 && reload(e) < 0) {
            watch_failed(e, "cannot read the current revision: %s", e->w_err);
            continue;
        }
        if (e->user && !have_token(e)) {
            char err[512];
            if (authenticate(&e->wc, ep, e->timeout_ms, err, sizeof(err)) < 0) {
                ep = (ep + 1) % e->neps;
                watch_failed(e, "%s", err);
                continue;
            }
        }
        watch_once(e, ep);
        if (stopping(e))
            break;
        if (e->w_state == WS_COMPACTED || e->w_state == WS_BACKWARDS) {
            log_warn("store: etcd watch: %s; reloading", e->w_err);
            e->w_next = 0; /* reload at the top */
            continue;
        }
        ep = (ep + 1) % e->neps;
        watch_failed(e, "%s (will resume from revision %" PRId64 ")", e->w_err, e->w_next);
    }
    return NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------- */

static int et_start(store *s, uv_loop_t *loop, char *err, size_t errlen)
{
    struct etcd_store *e = es(s);
    if (e->started) {
        snprintf(err, errlen, "etcd store: already started");
        return -EALREADY;
    }
    int rc = uv_async_init(loop, &e->async, on_async);
    if (rc < 0) {
        snprintf(err, errlen, "etcd store: %s", uv_strerror(rc));
        return rc;
    }
    e->async.data = e;
    e->w_next = e->applied > 0 ? e->applied + 1 : 0;
    e->stop = false;
    if ((rc = pthread_create(&e->thread, NULL, watch_main, e)) != 0) {
        snprintf(err, errlen, "etcd store: cannot start the watch thread: %s", strerror(rc));
        uv_close((uv_handle_t *)&e->async, NULL);
        return -rc;
    }
    e->started = true;
    return 0;
}

static void et_stop(store *s)
{
    struct etcd_store *e = es(s);
    if (!e->started)
        return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    curl_multi_wakeup(e->multi);
    pthread_join(e->thread, NULL);
    uv_close((uv_handle_t *)&e->async, NULL);
    e->started = false;
}

static void et_request(store *s, int begin)
{
    struct etcd_store *e = es(s);
    e->deadline_ms = begin ? now_ms() + e->timeout_ms : 0;
}

static void conn_free(struct conn *c)
{
    if (c->h)
        curl_easy_cleanup(c->h);
    free(c->buf);
    memset(c, 0, sizeof(*c));
}

static void et_close(store *s)
{
    struct etcd_store *e = es(s);
    if (!e)
        return;
    et_stop(s);
    for (struct wev *q = e->qhead, *n; q; q = n) {
        n = q->next;
        free(q->key);
        free(q->value);
        free(q);
    }
    ring_clear(e);
    free(e->ring);
    conn_free(&e->lc);
    conn_free(&e->wc);
    if (e->multi)
        curl_multi_cleanup(e->multi);
    for (size_t i = 0; i < e->neps; i++)
        free(e->eps[i]);
    free(e->endpoints);
    free(e->prefix);
    free(e->user);
    free(e->password);
    free(e->cert);
    free(e->key);
    free(e->ca);
    free(e->token);
    free(e->wbuf);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
    curl_global_cleanup();
}

static const struct store_ops etcd_ops = {
    .name = "etcd",
    .get = et_get,
    .list = et_list,
    .put = et_put,
    .del = et_del,
    .revision = et_revision,
    .changes_since = et_changes_since,
    .start = et_start,
    .stop = et_stop,
    .request = et_request,
    .close = et_close,
};

static char *dup_or_null(const char *s)
{
    return s && *s ? strdup(s) : NULL;
}

int store_etcd_open(const struct store_etcd_opts *o, store **out, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    *out = NULL;
    if (!o || !o->endpoints || !*o->endpoints || o->history < 0) {
        snprintf(err, errlen, "etcd store: no endpoints");
        return -EINVAL;
    }
    const char *prefix = o->prefix && *o->prefix ? o->prefix : "/apisix";
    if (prefix[0] != '/') {
        snprintf(err, errlen, "etcd store: prefix \"%s\" must start with /", prefix);
        return -EINVAL;
    }
    if (o->timeout < 0 || o->timeout > 3600) {
        snprintf(err, errlen, "etcd store: timeout must be from 0.001 to 3600 seconds");
        return -EINVAL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "etcd store: cannot initialise libcurl");
        return -EIO;
    }
    struct etcd_store *e = calloc(1, sizeof(*e));
    if (!e) {
        curl_global_cleanup();
        snprintf(err, errlen, "etcd store: out of memory");
        return -ENOMEM;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    e->base.ops = &etcd_ops;
    e->endpoints = strdup(o->endpoints);
    e->timeout_ms = o->timeout > 0 ? (uint64_t)(o->timeout * 1000.0) : 5000;
    if (e->timeout_ms == 0)
        e->timeout_ms = 1;
    e->history = o->history;
    e->verify = o->tls_verify != 0;
    e->user = dup_or_null(o->user);
    e->password = o->password ? strdup(o->password) : NULL;
    e->cert = dup_or_null(o->tls_cert);
    e->key = dup_or_null(o->tls_key);
    e->ca = dup_or_null(o->tls_ca);
    e->prefix = strdup(prefix);
    size_t pl = strlen(e->prefix);
    while (pl > 0 && e->prefix[pl - 1] == '/')
        e->prefix[--pl] = '\0';
    int rc = -EINVAL;
    char *list = strdup(o->endpoints), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n > 0 && (t[n - 1] == '/' || t[n - 1] == ' '))
            t[--n] = '\0';
        if (n == 0)
            continue;
        if (strncmp(t, "http://", 7) != 0 && strncmp(t, "https://", 8) != 0) {
            snprintf(err, errlen, "etcd store: endpoint \"%s\" must be an http:// or https:// URL",
                     t);
            free(list);
            goto fail;
        }
        if (e->neps == MAX_ENDPOINTS) {
            snprintf(err, errlen, "etcd store: more than %d endpoints", MAX_ENDPOINTS);
            free(list);
            goto fail;
        }
        e->eps[e->neps++] = strdup(t);
    }
    free(list);
    if (e->neps == 0) {
        snprintf(err, errlen, "etcd store: no endpoints in \"%s\"", o->endpoints);
        goto fail;
    }
    if ((e->key && !e->cert) || (e->cert && !e->key)) {
        snprintf(err, errlen, "etcd store: tls cert and key go together");
        goto fail;
    }
    e->ring = calloc((size_t)(e->history > 0 ? e->history : 1), sizeof(*e->ring));
    e->lc.e = e->wc.e = e;
    e->lc.h = curl_easy_init();
    e->wc.h = curl_easy_init();
    e->wc.watch_thread = true;
    e->multi = curl_multi_init();
    if (!e->ring || !e->lc.h || !e->wc.h || !e->multi) {
        snprintf(err, errlen, "etcd store: out of memory");
        rc = -ENOMEM;
        goto fail;
    }

    /* Where etcd is now. Unreachable is not fatal: the watch keeps trying. */
    char *ep = to_etcd(e, "", true);
    char *end = ep ? b64_range_end(ep) : NULL;
    json_t *req = json_pack("{s:o, s:s, s:b}", "key", jb64_new(ep ? ep : "/"), "range_end",
                            end ? end : "AA==", "count_only", 1);
    free(ep);
    free(end);
    json_t *resp;
    rc = lcall(e, "reading the revision", "/v3/kv/range", req, &resp);
    json_decref(req);
    if (rc == -EACCES) {
        snprintf(err, errlen, "%s", e->base.errmsg);
        goto fail;
    }
    if (rc == 0) {
        e->applied = e->floor = jint(json_object_get(resp, "header"), "revision");
        json_decref(resp);
    } else {
        log_warn("store: %s; starting at revision 0, the watch keeps trying", e->base.errmsg);
    }
    e->base.errmsg[0] = '\0';
    *out = &e->base;
    return 0;

fail:
    et_close(&e->base);
    return rc;
}
