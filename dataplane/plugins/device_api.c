/*
 * device-api: ThingsBoard's HTTP device API, published to MQTT brokers.
 *
 * A route with this plugin answers
 *   POST .../api/v1/{token}/telemetry | .../api/v1/{token}/attributes
 *   POST .../api/v1/telemetry         | .../api/v1/attributes
 * The token is a device credential: the consumer whose key-auth "key" it is
 * (401 when none); the device is that consumer. Without a token the device
 * is the consumer an auth plugin (key-auth) already set, else the
 * configured default_device (401 when neither).
 *
 * Phases. rewrite: the path, the method and the token (so the consumer is
 * known to limit-count and prometheus, which run before the access phase
 * of this plugin). access: reads the body (max_body_size, 413 over it),
 * checks it (400 naming the problem), publishes it to a node of the route's
 * upstream (any balancer; a node that cannot be reached is skipped for the
 * next one, as the balancer's retries allow) and answers 200 only once the
 * publish is done: for QoS 1 after the broker's PUBACK. Broker unavailable,
 * connection lost before the PUBACK, or no PUBACK within "timeout": 503.
 *
 * What is published (device_api_telemetry): telemetry whose every entry has
 * "ts" goes out as sent, byte for byte; otherwise each entry without "ts" is
 * wrapped as {"ts":<server ms>,"values":<the entry's bytes as sent>}.
 * Attributes go out as sent.
 *
 * The MQTT connections belong to the worker (one mqtt_client per process,
 * made on first use, closed by worker_stop), not to a configuration
 * revision: a new revision keeps using them.
 */
#include "device_api.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balancer.h"
#include "log.h"
#include "mqtt_client.h"
#include "plugin.h"
#include "snapshot.h"

/* ------------------------------------------------------------- paths */

enum device_api_kind device_api_path(const char *uri, const char **token, size_t *token_len)
{
    static const char marker[] = "/api/v1/";
    const char *p = NULL;
    /* The last "/api/v1/" in the path (a prefix may hold one too). */
    for (const char *q = strstr(uri, marker); q; q = strstr(q + 1, marker))
        p = q;
    *token = NULL;
    *token_len = 0;
    if (!p)
        return DEVICE_API_NONE;
    const char *rest = p + sizeof(marker) - 1;
    const char *slash = strchr(rest, '/');
    const char *res = rest;
    if (slash) {
        if (slash == rest || strchr(slash + 1, '/'))
            return DEVICE_API_NONE;
        *token = rest;
        *token_len = (size_t)(slash - rest);
        res = slash + 1;
    }
    if (strcmp(res, "telemetry") == 0)
        return DEVICE_API_TELEMETRY;
    if (strcmp(res, "attributes") == 0)
        return DEVICE_API_ATTRIBUTES;
    *token = NULL;
    *token_len = 0;
    return DEVICE_API_NONE;
}

char *device_api_topic(const char *tmpl, const char *device)
{
    static const char ph[] = "{device}";
    size_t n = 0, dl = strlen(device);
    for (const char *q = strstr(tmpl, ph); q; q = strstr(q + 1, ph))
        n++;
    size_t len = strlen(tmpl) + n * dl + 1;
    char *out = malloc(len), *o = out;
    if (!out)
        return NULL;
    for (const char *s = tmpl; *s;) {
        if (strncmp(s, ph, sizeof(ph) - 1) == 0) {
            memcpy(o, device, dl);
            o += dl;
            s += sizeof(ph) - 1;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    return out;
}

/* -------------------------------------------------------------- bodies */

/* Where the JSON text of one value ends (the text was validated by jansson,
 * so only strings need care). */
static size_t skip_ws(const char *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static size_t string_end(const char *s, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n;
}

static size_t value_end(const char *s, size_t i, size_t n)
{
    if (i >= n)
        return n;
    if (s[i] == '"')
        return string_end(s, i, n);
    if (s[i] == '{' || s[i] == '[') {
        int depth = 0;
        while (i < n) {
            char ch = s[i];
            if (ch == '"') {
                i = string_end(s, i, n);
                continue;
            }
            if (ch == '{' || ch == '[')
                depth++;
            else if (ch == '}' || ch == ']')
                depth--;
            i++;
            if (depth == 0)
                return i;
        }
        return n;
    }
    while (i < n && s[i] != ',' && s[i] != ']' && s[i] != '}' && s[i] != ' ' && s[i] != '\t' &&
           s[i] != '\n' && s[i] != '\r')
        i++;
    return i;
}

static json_t *load(const char *body, size_t len, const char *what, char *err, size_t errlen)
{
    json_error_t e;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &e);
    if (!root) {
        snprintf(err, errlen, "%s: invalid JSON: %s (line %d, column %d)", what, e.text, e.line,
                 e.column);
        return NULL;
    }
    return root;
}

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

/* Keys to values: string, boolean, number, object, array; at least one. */
static int check_kv(const json_t *o, const char *where, char *err, size_t errlen)
{
    if (json_object_size(o) == 0) {
        snprintf(err, errlen, "%s: no values", where);
        return -EINVAL;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        if (!*k) {
            snprintf(err, errlen, "%s: empty key", where);
            return -EINVAL;
        }
        if (json_is_null(v)) {
            snprintf(err, errlen,
                     "%s: \"%.100s\" is null (values are strings, booleans, "
                     "numbers or JSON)",
                     where, k);
            return -EINVAL;
        }
    }
    return 0;
}

/* One telemetry entry; *has_ts says which form it is. */
static int check_entry(const json_t *o, const char *where, bool *has_ts, char *err, size_t errlen)
{
    if (!json_is_object(o)) {
        snprintf(err, errlen, "%s: must be a JSON object, not %s", where, type_name(o));
        return -EINVAL;
    }
    const json_t *ts = json_object_get(o, "ts");
    *has_ts = ts != NULL;
    if (!ts)
        return check_kv(o, where, err, errlen);
    if (!json_is_integer(ts) || json_integer_value(ts) < 0) {
        snprintf(err, errlen, "%s: \"ts\" must be an integer (milliseconds since 1970), not %s",
                 where, json_is_integer(ts) ? "negative" : type_name(ts));
        return -EINVAL;
    }
    const json_t *vals = json_object_get(o, "values");
    if (!vals) {
        snprintf(err, errlen, "%s: \"ts\" without \"values\"", where);
        return -EINVAL;
    }
    if (!json_is_object(vals)) {
        snprintf(err, errlen, "%s: \"values\" must be a JSON object, not %s", where,
                 type_name(vals));
        return -EINVAL;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        if (strcmp(k, "ts") != 0 && strcmp(k, "values") != 0) {
            snprintf(err, errlen, "%s: unexpected key \"%.100s\" beside \"ts\" and \"values\"",
                     where, k);
            return -EINVAL;
        }
    }
    char w[96];
    snprintf(w, sizeof(w), "%s: values", where);
    return check_kv(vals, w, err, errlen);
}

/* Appends to a growing buffer. */
struct sbuf {
    char *b;
    size_t len, cap;
    bool oom;
};

static void sb_add(struct sbuf *s, const char *p, size_t n)
{
    if (s->oom)
        return;
    if (s->len + n + 1 > s->cap) {
        size_t nc = s->cap ? s->cap : 256;
        while (nc < s->len + n + 1)
            nc *= 2;
        char *nb = realloc(s->b, nc);
        if (!nb) {
            s->oom = true;
            return;
        }
        s->b = nb;
        s->cap = nc;
    }
    memcpy(s->b + s->len, p, n);
    s->len += n;
    s->b[s->len] = '\0';
}

static void sb_wrap(struct sbuf *s, int64_t now_ms, const char *raw, size_t n)
{
    char head[64];
    int hl = snprintf(head, sizeof(head), "{\"ts\":%" PRId64 ",\"values\":", now_ms);
    sb_add(s, head, (size_t)hl);
    sb_add(s, raw, n);
    sb_add(s, "}", 1);
}

int device_api_telemetry(const char *body, size_t len, int64_t now_ms, char **out, size_t *out_len,
                         char *err, size_t errlen)
{
    json_t *root = load(body, len, "telemetry", err, errlen);
    if (!root)
        return -EINVAL;
    int rc = 0;
    size_t n = json_is_array(root) ? json_array_size(root) : 1;
    bool all_ts = true;
    bool *has = calloc(n ? n : 1, sizeof(bool));
    if (!has) {
        json_decref(root);
        return -ENOMEM;
    }
    if (json_is_array(root)) {
        if (n == 0) {
            snprintf(err, errlen, "telemetry: empty array");
            rc = -EINVAL;
        }
        for (size_t i = 0; i < n && rc == 0; i++) {
            char where[48];
            snprintf(where, sizeof(where), "telemetry entry %zu", i);
            rc = check_entry(json_array_get(root, i), where, &has[i], err, errlen);
            all_ts = all_ts && has[i];
        }
    } else {
        rc = check_entry(root, "telemetry", &has[0], err, errlen);
        all_ts = has[0];
    }
    bool is_array = json_is_array(root);
    json_decref(root);
    if (rc < 0) {
        free(has);
        return rc;
    }
    struct sbuf s = {0};
    if (all_ts) {
        sb_add(&s, body, len);
    } else {
        size_t i = skip_ws(body, 0, len);
        if (!is_array) {
            size_t e = value_end(body, i, len);
            sb_wrap(&s, now_ms, body + i, e - i);
        } else {
            sb_add(&s, "[", 1);
            i = skip_ws(body, i + 1, len);
            for (size_t k = 0; k < n; k++) {
                size_t e = value_end(body, i, len);
                if (k)
                    sb_add(&s, ",", 1);
                if (has[k])
                    sb_add(&s, body + i, e - i);
                else
                    sb_wrap(&s, now_ms, body + i, e - i);
                i = skip_ws(body, e, len);
                if (i < len && body[i] == ',')
                    i = skip_ws(body, i + 1, len);
            }
            sb_add(&s, "]", 1);
        }
    }
    free(has);
    if (s.oom || !s.b) {
        free(s.b);
        return -ENOMEM;
    }
    *out = s.b;
    *out_len = s.len;
    return 0;
}

int device_api_attributes(const char *body, size_t len, char *err, size_t errlen)
{
    json_t *root = load(body, len, "attributes", err, errlen);
    if (!root)
        return -EINVAL;
    int rc = 0;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "attributes: must be a JSON object, not %s", type_name(root));
        rc = -EINVAL;
    } else {
        rc = check_kv(root, "attributes", err, errlen);
    }
    json_decref(root);
    return rc;
}

/* -------------------------------------------------------- the plugin */

struct dapi_conf {
    char *topic_telemetry;      /* template */
    char *topic_attributes;     /* template */
    int qos;                    /* 0 or 1 */
    size_t max_body;            /* bytes */
    uint32_t timeout_ms;        /* from the body's arrival to the answer */
    char *prefix, *user, *pass; /* pool options (owned) */
    struct mqtt_pool_opts po;   /* points at the strings above */
    char *default_device;       /* NULL: none */
    /* The route's upstream, found on the first request of this instance's
     * snapshot (an instance lives as long as its snapshot). */
    const struct snapshot *cached_snap;
    char cached_route[80];
    struct upstream_rt *cached_up;
};

/* The worker's MQTT client (the process's one context for this plugin). */
static struct mqtt_client *client;
static bool worker_stopped;

struct dreq {
    struct plugin_req *r; /* NULL once the request ended (abort) */
    struct dapi_conf *cf;
    enum device_api_kind kind;
    bool token;       /* the path named a token */
    char device[260]; /* the device name for topics */
    char *topic;      /* owned */
    char *payload;    /* owned */
    size_t plen;
    struct upstream_rt *up; /* the route's upstream */
    struct mqtt_pub *pub;   /* pending publish, or NULL */
    int node;               /* node of the pending publish */
    uint64_t tried;         /* nodes tried (bit per index < 64) */
    int attempts;
    uint64_t deadline;  /* uv_now ms */
    uint64_t started;   /* uv_now ms of the current attempt */
    char last_err[160]; /* why the last attempt failed */
};

static char *conf_str(const json_t *c, const char *k, const char *def)
{
    const json_t *v = json_object_get(c, k);
    const char *s = json_is_string(v) ? json_string_value(v) : def;
    return s ? strdup(s) : NULL;
}

static void dapi_destroy(void *state)
{
    struct dapi_conf *cf = state;
    if (!cf)
        return;
    free(cf->topic_telemetry);
    free(cf->topic_attributes);
    free(cf->prefix);
    free(cf->user);
    free(cf->pass);
    free(cf->default_device);
    free(cf);
}

static int dapi_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    struct dapi_conf *cf = calloc(1, sizeof(*cf));
    if (!cf)
        goto fail_oom;
    const json_t *c = a->conf;
    cf->topic_telemetry = conf_str(c, "topic_telemetry", "devices/{device}/telemetry");
    cf->topic_attributes = conf_str(c, "topic_attributes", "devices/{device}/attributes");
    cf->prefix = conf_str(c, "client_id_prefix", "airgw-");
    cf->user = conf_str(c, "username", NULL);
    cf->pass = conf_str(c, "password", NULL);
    cf->default_device = conf_str(c, "default_device", NULL);
    if (!cf->topic_telemetry || !cf->topic_attributes || !cf->prefix ||
        (json_object_get(c, "username") && !cf->user) ||
        (json_object_get(c, "password") && !cf->pass) ||
        (json_object_get(c, "default_device") && !cf->default_device))
        goto fail_oom;
    const json_t *v = json_object_get(c, "qos");
    cf->qos = json_is_integer(v) ? (int)json_integer_value(v) : 1;
    v = json_object_get(c, "max_body_size");
    cf->max_body = json_is_integer(v) ? (size_t)json_integer_value(v) : 65536;
    v = json_object_get(c, "timeout");
    double t = json_is_number(v) ? json_number_value(v) : 5;
    cf->timeout_ms = t <= 0 ? 1 : (uint32_t)(t * 1000 + 0.5);
    v = json_object_get(c, "pool_size");
    cf->po.pool_size = json_is_integer(v) ? (int)json_integer_value(v) : 2;
    v = json_object_get(c, "keepalive");
    cf->po.keepalive_s = json_is_integer(v) ? (uint16_t)json_integer_value(v) : 60;
    cf->po.client_id_prefix = cf->prefix;
    cf->po.username = cf->user;
    cf->po.password = cf->user ? cf->pass : NULL;
    if (cf->qos != 0 && cf->qos != 1) {
        snprintf(err, errlen, "qos must be 0 or 1");
        dapi_destroy(cf);
        return -1;
    }
    *state = cf;
    return 0;
fail_oom:
    dapi_destroy(cf);
    snprintf(err, errlen, "out of memory");
    return -1;
}

static void respond_err(struct plugin_req *r, int status, const char *msg)
{
    json_t *j = json_pack("{s:s}", "error_msg", msg);
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (body)
        plugin_respond(r, status, "application/json", body, strlen(body));
    else
        plugin_respond(r, status, NULL, "", 0);
    free(body);
    json_decref(j);
}

static int dapi_rewrite(struct plugin_req *r, void *state, void **data)
{
    struct dapi_conf *cf = state;
    const char *tok;
    size_t tl;
    enum device_api_kind kind = device_api_path(plugin_req_uri(r), &tok, &tl);
    if (kind == DEVICE_API_NONE) {
        respond_err(r, 404,
                    "not found: the device API serves POST /api/v1/{token}/telemetry "
                    "and /api/v1/{token}/attributes");
        return PLUGIN_STOP;
    }
    if (strcmp(plugin_req_method(r), "POST") != 0) {
        plugin_resp_header_set(r, "Allow", "POST");
        respond_err(r, 405, "method not allowed: use POST");
        return PLUGIN_STOP;
    }
    struct dreq *d = calloc(1, sizeof(*d));
    if (!d) {
        respond_err(r, 500, "out of memory");
        return PLUGIN_STOP;
    }
    d->r = r;
    d->cf = cf;
    d->kind = kind;
    d->node = -1;
    *data = d;
    if (tok) {
        char token[512];
        const struct consumer_rt *c = NULL;
        if (tl < sizeof(token)) {
            memcpy(token, tok, tl);
            token[tl] = '\0';
            c = snapshot_consumer_by(plugin_req_snapshot(r), "key-auth", token);
        }
        if (!c) {
            respond_err(r, 401, "invalid access token");
            return PLUGIN_STOP;
        }
        d->token = true;
        plugin_req_set_consumer(r, c);
    }
    return PLUGIN_CONTINUE;
}

static uint64_t now_ms(void)
{
    return uv_now(plugin_env()->loop);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct upstream_rt *route_upstream(struct dapi_conf *cf, struct plugin_req *r)
{
    struct snapshot *s = plugin_req_snapshot(r);
    const char *rid = plugin_req_route_id(r);
    if (!s || !rid)
        return NULL;
    if (cf->cached_snap == s && strcmp(cf->cached_route, rid) == 0)
        return cf->cached_up;
    for (size_t i = 0; i < s->nroutes; i++)
        if (strcmp(s->routes[i]->id, rid) == 0) {
            cf->cached_snap = s;
            snprintf(cf->cached_route, sizeof(cf->cached_route), "%s", rid);
            cf->cached_up = s->routes[i]->up;
            return cf->cached_up;
        }
    return NULL;
}

static void finish(struct dreq *d, int status, const char *msg)
{
    struct plugin_req *r = d->r;
    if (!r)
        return;
    if (status == 200)
        plugin_respond(r, 200, NULL, "", 0);
    else
        respond_err(r, status, msg);
    plugin_resume(r);
}

static void publish_next(struct dreq *d);

static void on_published(void *ud, int status)
{
    struct dreq *d = ud;
    d->pub = NULL;
    uint32_t took = (uint32_t)(now_ms() - d->started);
    upstream_conn_end(d->up, d->node);
    if (status == 0) {
        upstream_report(d->up, d->node, true, took);
        finish(d, 200, NULL);
        return;
    }
    const struct balancer_node *bn = balancer_node(d->up->bal, d->node);
    const char *addr = bn ? bn->addr : "?";
    switch (status) {
    case -ENOTCONN:
        /* Never sent: another node may take it. */
        upstream_report(d->up, d->node, false, took);
        snprintf(d->last_err, sizeof(d->last_err), "MQTT broker %s unavailable", addr);
        publish_next(d);
        return;
    case -ECONNRESET:
        upstream_report(d->up, d->node, false, took);
        snprintf(d->last_err, sizeof(d->last_err),
                 "MQTT broker %s: connection lost before the broker acknowledged the publish",
                 addr);
        break;
    case -ETIMEDOUT:
        snprintf(d->last_err, sizeof(d->last_err),
                 "MQTT broker %s: publish not acknowledged within the timeout", addr);
        break;
    case -ECANCELED:
        snprintf(d->last_err, sizeof(d->last_err), "the gateway is shutting down");
        break;
    default:
        snprintf(d->last_err, sizeof(d->last_err), "MQTT broker %s: %s", addr, strerror(-status));
        break;
    }
    finish(d, 503, d->last_err);
}

static const char *req_var(void *ud, const char *name, size_t *len)
{
    return plugin_req_var(ud, name, len);
}

/* Publishes d's payload to the next node of the upstream. */
static void publish_next(struct dreq *d)
{
    struct upstream_rt *up = d->up;
    int retries = up->retries < 0 ? 64 : up->retries;
    uint64_t now = now_ms();
    if (d->attempts > retries || now >= d->deadline) {
        finish(d, 503, d->last_err[0] ? d->last_err : "MQTT broker unavailable");
        return;
    }
    if (worker_stopped) {
        finish(d, 503, "the gateway is shutting down");
        return;
    }
    if (!client && !(client = mqtt_client_new(plugin_env()->loop, plugin_env()->worker_id))) {
        finish(d, 500, "out of memory");
        return;
    }
    char key[256];
    size_t klen = 0;
    if (balancer_type(up->bal) == BALANCER_CHASH) {
        struct route_query q = {.var = req_var, .var_ud = d->r};
        klen = snapshot_hash_key(up, &q, key, sizeof(key));
    }
    struct upstream_node n;
    if (upstream_pick(up, key, klen, &d->tried, &n) < 0) {
        finish(d, 503, d->last_err[0] ? d->last_err : "no MQTT broker available");
        return;
    }
    d->attempts++;
    d->node = n.index;
    if (n.index < 64)
        d->tried |= 1ull << n.index;
    d->started = now;
    struct mqtt_publish m = {
        .host = n.host,
        .port = n.port,
        .topic = d->topic,
        .payload = d->payload,
        .len = d->plen,
        .qos = d->cf->qos,
        .timeout_ms = (uint32_t)(d->deadline - now),
    };
    upstream_conn_start(up, n.index);
    int rc = mqtt_client_publish(client, &d->cf->po, &m, on_published, d, &d->pub);
    if (rc < 0) {
        upstream_conn_end(up, n.index);
        d->pub = NULL;
        snprintf(d->last_err, sizeof(d->last_err), "cannot publish to %s: %s", n.addr,
                 strerror(-rc));
        finish(d, rc == -ENOMEM ? 500 : 503, d->last_err);
    }
}

static void on_abort(void *ud)
{
    struct dreq *d = ud;
    d->r = NULL;
    if (d->pub) {
        mqtt_pub_cancel(d->pub);
        d->pub = NULL;
        upstream_conn_end(d->up, d->node);
    }
}

static void on_body(struct plugin_req *r, void *ud, const char *body, size_t len)
{
    struct dreq *d = ud;
    char err[256];
    int rc;
    if (d->kind == DEVICE_API_TELEMETRY) {
        rc = device_api_telemetry(body, len, wall_ms(), &d->payload, &d->plen, err, sizeof(err));
    } else {
        rc = device_api_attributes(body, len, err, sizeof(err));
        if (rc == 0 && (d->payload = malloc(len ? len : 1))) {
            memcpy(d->payload, body, len);
            d->plen = len;
        } else if (rc == 0) {
            rc = -ENOMEM;
        }
    }
    if (rc < 0) {
        finish(d, rc == -EINVAL ? 400 : 500, rc == -EINVAL ? err : "out of memory");
        return;
    }
    d->topic = device_api_topic(d->kind == DEVICE_API_TELEMETRY ? d->cf->topic_telemetry
                                                                : d->cf->topic_attributes,
                                d->device);
    if (!d->topic) {
        finish(d, 500, "out of memory");
        return;
    }
    if (!mqtt_client_topic_ok(d->topic, strlen(d->topic))) {
        finish(d, 500, "the configured topic is not a valid MQTT topic name");
        return;
    }
    (void)r;
    d->deadline = now_ms() + d->cf->timeout_ms;
    publish_next(d);
}

static int dapi_access(struct plugin_req *r, void *state, void **data)
{
    struct dapi_conf *cf = state;
    struct dreq *d = *data;
    if (!d)
        return PLUGIN_CONTINUE; /* rewrite answered already */
    const struct consumer_rt *c = plugin_req_consumer(r);
    const char *dev = c ? c->username : cf->default_device;
    if (!dev) {
        respond_err(r, 401,
                    "no device: post to /api/v1/{token}/..., authenticate with key-auth, "
                    "or configure default_device");
        return PLUGIN_STOP;
    }
    snprintf(d->device, sizeof(d->device), "%s", dev);
    d->up = route_upstream(cf, r);
    if (!d->up) {
        respond_err(r, 503, "no MQTT broker configured for this route (it has no upstream)");
        return PLUGIN_STOP;
    }
    int64_t cl = plugin_req_content_length(r);
    if (cl > 0 && (uint64_t)cl > cf->max_body) {
        char msg[96];
        snprintf(msg, sizeof(msg), "body too large: more than %zu bytes", cf->max_body);
        respond_err(r, 413, msg);
        return PLUGIN_STOP;
    }
    if (plugin_req_read_body(r, cf->max_body, on_body, d) < 0) {
        respond_err(r, 500, "cannot read the request body");
        return PLUGIN_STOP;
    }
    plugin_set_abort(r, on_abort, d);
    return PLUGIN_ASYNC;
}

static void dapi_log(struct plugin_req *r, void *state, void **data)
{
    struct dreq *d = *data;
    (void)r;
    (void)state;
    if (!d)
        return;
    if (d->pub) {
        mqtt_pub_cancel(d->pub);
        upstream_conn_end(d->up, d->node);
    }
    free(d->topic);
    free(d->payload);
    free(d);
    *data = NULL;
}

static void dapi_worker_stop(void)
{
    worker_stopped = true;
    struct mqtt_client *c = client;
    client = NULL;
    mqtt_client_close(c);
}

const struct plugin_def plugin_def_device_api = {
    .name = "device-api",
    .priority = 410,
    .flags = PLUGIN_HTTP,
    .create = dapi_create,
    .destroy = dapi_destroy,
    .rewrite = dapi_rewrite,
    .access = dapi_access,
    .log = dapi_log,
    .worker_stop = dapi_worker_stop,
};
