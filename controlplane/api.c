/*
 * api: see api.h. Mirrors APISIX 3.x apisix/admin/resource.lua: the same
 * order of checks and the same messages, so scripts written against APISIX
 * see the same answers.
 *
 * Every write is: parse -> APISIX's id/time checks -> config_check (schema,
 * plugins, defaults) -> reference checks against the store -> timestamps ->
 * one store_put with an expected mod revision and guards (so a concurrent
 * writer through another control plane is detected rather than overwritten):
 * each referenced upstream/service/plugin config must still have the
 * create revision it had when checked, and a delete of something routes may
 * use fails if any possible referrer changed since it was scanned. A failed
 * condition is 409; the client retries and gets the now-right answer.
 */
#include "api.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"

#define MAX_SEGMENTS 16
#define MAX_REFS 8

static json_t *errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static json_t *errmsg(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return json_pack("{s:s}", "error_msg", buf);
}

static int reply(json_t **out, int status, json_t *body)
{
    *out = body ? body : json_object();
    return status;
}

static int not_found(json_t **out)
{
    return reply(out, 404, json_pack("{s:s}", "message", "Key not found"));
}

static int store_error(store *st, json_t **out, int rc)
{
    if (rc == -EEXIST || rc == -ESTALE)
        return reply(out, 409,
                     errmsg("the resource was changed by another writer at the same time; "
                            "retry"));
    if (rc == -ENOTSUP)
        return reply(out, 400, errmsg("%s", st->errmsg[0] ? st->errmsg
                                                          : "not supported by this store"));
    return reply(out, 503, errmsg("store unavailable: %s", st->errmsg[0] ? st->errmsg
                                                                          : strerror(-rc)));
}

int api_json_too_deep(const char *s, size_t len, int max)
{
    int depth = 0, in_str = 0, esc = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '"')
            in_str = 1;
        else if (c == '{' || c == '[') {
            if (++depth > max)
                return 1;
        } else if (c == '}' || c == ']')
            depth--;
    }
    return 0;
}

/* Parses the body. any: sub-path PATCH bodies may be any JSON value. */
static int parse_body(const struct api_req *req, int any, json_t **conf, json_t **out)
{
    *conf = NULL;
    if (!req->body || req->body_len == 0)
        return reply(out, 400, errmsg("missing configurations"));
    if (api_json_too_deep(req->body, req->body_len, API_MAX_DEPTH))
        return reply(out, 400,
                     errmsg("invalid request body: JSON nested deeper than %d levels",
                            API_MAX_DEPTH));
    json_error_t e;
    json_t *j = json_loadb(req->body, req->body_len,
                           JSON_REJECT_DUPLICATES | (any ? JSON_DECODE_ANY : 0), &e);
    if (!j)
        return reply(out, 400,
                     errmsg("invalid request body: %s at line %d column %d", e.text, e.line,
                            e.column));
    if (!any && !json_is_object(j)) {
        json_decref(j);
        return reply(out, 400, errmsg("invalid request body: it must be a JSON object"));
    }
    *conf = j;
    return 0;
}

/* The id as a string: JSON strings as they are, integers in decimal. */
static int id_string(const json_t *v, char *buf, size_t len)
{
    if (json_is_string(v)) {
        snprintf(buf, len, "%s", json_string_value(v));
        return 0;
    }
    if (json_is_integer(v)) {
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
        return 0;
    }
    return -1;
}

static void strip_secrets(enum gw_kind kind, json_t *value)
{
    if (kind == GW_KIND_SSL && json_is_object(value)) {
        json_object_del(value, "key");
        json_object_del(value, "keys");
    }
}

/* {"key","value","createdIndex","modifiedIndex"} for a stored item. */
static json_t *item_json(enum gw_kind kind, const struct store_item *it)
{
    json_t *v = json_loads(it->value, 0, NULL);
    if (!v)
        v = json_null();
    strip_secrets(kind, v);
    return json_pack("{s:s, s:o, s:I, s:I}", "key", it->key, "value", v, "createdIndex",
                     (json_int_t)it->create_rev, "modifiedIndex", (json_int_t)it->mod_rev);
}

static void make_key(char *buf, size_t len, enum gw_kind kind, const char *id)
{
    snprintf(buf, len, "/apisix/%s/%s", config_kind_collection(kind), id);
}

static const char *ref_kind_label(enum gw_kind kind)
{
    switch (kind) {
    case GW_KIND_UPSTREAM:
        return "upstream";
    case GW_KIND_SERVICE:
        return "service";
    case GW_KIND_PLUGIN_CONFIG:
        return "plugin config";
    default:
        return config_kind_name(kind);
    }
}

/* What a write checks along with itself: one guard per reference. */
struct ref_guards {
    struct store_guard g[MAX_REFS]; /* STORE_GUARD_CREATED on each referenced key */
    char keys[MAX_REFS][256];       /* their keys */
    size_t n;                       /* how many */
};

/* Every upstream_id/service_id/plugin_config_id must exist; rg gets a guard
 * that each still exists (the same one) when the write commits. */
static int check_refs(struct api_ctx *ctx, enum gw_kind kind, const json_t *conf,
                      struct ref_guards *rg, json_t **out)
{
    struct config_ref refs[MAX_REFS];
    char idbuf[MAX_REFS * 24];
    int n = config_refs(kind, conf, refs, MAX_REFS, idbuf);
    rg->n = 0;
    for (int i = 0; i < n; i++) {
        char *key = rg->keys[rg->n];
        struct store_item it = {0};
        make_key(key, sizeof(rg->keys[0]), refs[i].kind, refs[i].id);
        int rc = store_get(ctx->st, key, &it);
        if (rc == 0) {
            rg->g[rg->n] = (struct store_guard){STORE_GUARD_CREATED, key, it.create_rev};
            rg->n++;
        }
        store_item_clear(&it);
        if (rc == -ENOENT) {
            const char *label = ref_kind_label(refs[i].kind);
            return reply(out, 400,
                         errmsg("failed to fetch %s info by %s id [%s], response code: 404", label,
                                label, refs[i].id));
        }
        if (rc < 0)
            return store_error(ctx->st, out, rc);
    }
    return 0;
}

/* Validates conf (owned) and stores it under id. existing is the current
 * item or NULL. ttl: seconds the resource lives (0: for ever). Sets
 * create_time/update_time as APISIX does. */
static int write_resource(struct api_ctx *ctx, enum gw_kind kind, const char *id, json_t *conf,
                          const struct store_item *existing, int64_t ttl, json_t **out)
{
    char err[1024];
    int status;
    struct ref_guards rg;
    if (config_check(kind, conf, err, sizeof(err)) < 0) {
        status = reply(out, 400, errmsg("%s", err));
        goto done;
    }
    if ((status = check_refs(ctx, kind, conf, &rg, out)))
        goto done;
    json_int_t now = (json_int_t)time(NULL), created = now;
    if (existing) {
        json_t *old = json_loads(existing->value, 0, NULL);
        json_t *ct = old ? json_object_get(old, "create_time") : NULL;
        if (json_is_integer(ct))
            created = json_integer_value(ct);
        json_decref(old);
    }
    json_object_set_new(conf, "create_time", json_integer(created));
    json_object_set_new(conf, "update_time", json_integer(now));
    char *text = json_dumps(conf, JSON_COMPACT);
    if (!text) {
        status = reply(out, 500, errmsg("out of memory"));
        goto done;
    }
    char key[256];
    make_key(key, sizeof(key), kind, id);
    struct store_item it = {0};
    struct store_write w = {
        .expect_mod_rev = existing ? existing->mod_rev : STORE_ABSENT,
        .guards = rg.g,
        .nguards = rg.n,
        .ttl = ttl,
    };
    int rc = store_put_ex(ctx->st, key, text, &w, &it);
    free(text);
    if (rc < 0) {
        status = store_error(ctx->st, out, rc);
        goto done;
    }
    if (it.mod_rev > ctx->last_write_rev)
        ctx->last_write_rev = it.mod_rev;
    status = reply(out, existing ? 200 : 201, item_json(kind, &it));
    store_item_clear(&it);
done:
    json_decref(conf);
    return status;
}

/* APISIX's check_conf: id agreement and the forbidden timestamps. */
static int precheck(enum gw_kind kind, json_t *conf, const char *id, int need_id, int allow_time,
                    json_t **out)
{
    const char *kn = config_kind_name(kind);
    if (kind == GW_KIND_CONSUMER)
        return 0;
    json_t *body_id = json_object_get(conf, "id");
    char bid[80];
    if (!need_id && body_id)
        return reply(out, 400, errmsg("wrong %s id, do not need it", kn));
    if (need_id && body_id && (id_string(body_id, bid, sizeof(bid)) < 0 || strcmp(bid, id)))
        return reply(out, 400, errmsg("wrong %s id", kn));
    if (!allow_time) {
        if (json_object_get(conf, "create_time"))
            return reply(out, 400, errmsg("the property is forbidden: create_time"));
        if (json_object_get(conf, "update_time"))
            return reply(out, 400, errmsg("the property is forbidden: update_time"));
    }
    json_object_set_new(conf, "id", json_string(id));
    return 0;
}

static int bad_id(const char *id, json_t **out)
{
    return reply(out, 400,
                 errmsg("invalid id \"%.80s\": it must be 1 to 64 characters of "
                        "[a-zA-Z0-9-_.]",
                        id));
}

static int do_get(struct api_ctx *ctx, enum gw_kind kind, const char *id, json_t **out)
{
    char key[256];
    struct store_item it = {0};
    make_key(key, sizeof(key), kind, id);
    int rc = store_get(ctx->st, key, &it);
    if (rc == -ENOENT)
        return not_found(out);
    if (rc < 0)
        return store_error(ctx->st, out, rc);
    int status = reply(out, 200, item_json(kind, &it));
    store_item_clear(&it);
    return status;
}

struct list_ctx {
    enum gw_kind kind;    /* what is listed */
    const char *name;     /* filter: substring of value.name */
    const char *label_k;  /* filter: labels has this key */
    const char *label_v;  /* ... with this value, if not NULL */
    const char *uri;      /* filter: substring of uri or one of uris */
    long skip, take;      /* page window (take < 0: all) */
    long total;           /* items that passed the filters */
    json_t *list;         /* the page */
};

static int list_item(void *ud, const struct store_item *it)
{
    struct list_ctx *lc = ud;
    if (lc->name || lc->label_k || lc->uri) {
        json_t *v = json_loads(it->value, 0, NULL);
        int keep = v != NULL;
        if (keep && lc->name) {
            const char *n = json_string_value(json_object_get(v, "name"));
            keep = n && strstr(n, lc->name);
        }
        if (keep && lc->label_k) {
            json_t *lv = json_object_get(json_object_get(v, "labels"), lc->label_k);
            keep = lv && (!lc->label_v ||
                          (json_is_string(lv) && strcmp(json_string_value(lv), lc->label_v) == 0));
        }
        if (keep && lc->uri) {
            const char *u = json_string_value(json_object_get(v, "uri"));
            keep = u && strstr(u, lc->uri);
            size_t i;
            json_t *e;
            json_array_foreach(json_object_get(v, "uris"), i, e) {
                if (json_is_string(e) && strstr(json_string_value(e), lc->uri))
                    keep = 1;
            }
        }
        json_decref(v);
        if (!keep)
            return 0;
    }
    lc->total++;
    if (lc->total > lc->skip && (lc->take < 0 || lc->total <= lc->skip + lc->take))
        json_array_append_new(lc->list, item_json(lc->kind, it));
    return 0;
}

static int parse_long(const char *s, long *v)
{
    char *end;
    if (!s || !*s)
        return -1;
    *v = strtol(s, &end, 10);
    return *end ? -1 : 0;
}

static int do_list(struct api_ctx *ctx, enum gw_kind kind, const struct api_req *req,
                   json_t **out)
{
    struct list_ctx lc = {.kind = kind, .take = -1};
    const char *page_s = req->arg(req->arg_ud, "page");
    const char *size_s = req->arg(req->arg_ud, "page_size");
    if (page_s || size_s) {
        long page = 1, size = 10;
        if (page_s && (parse_long(page_s, &page) < 0 || page < 1))
            return reply(out, 400, errmsg("page must be an integer >= 1"));
        if (size_s && (parse_long(size_s, &size) < 0 || size < 10 || size > 500))
            return reply(out, 400, errmsg("page_size must be an integer from 10 to 500"));
        lc.skip = (page - 1) * size;
        lc.take = size;
    }
    lc.name = req->arg(req->arg_ud, "name");
    lc.uri = req->arg(req->arg_ud, "uri");
    char label[256];
    const char *l = req->arg(req->arg_ud, "label");
    if (l) {
        snprintf(label, sizeof(label), "%s", l);
        char *colon = strchr(label, ':');
        if (colon)
            *colon = '\0';
        lc.label_k = label;
        lc.label_v = colon ? colon + 1 : NULL;
    }
    lc.list = json_array();
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "/apisix/%s/", config_kind_collection(kind));
    int rc = store_list(ctx->st, prefix, list_item, &lc);
    if (rc < 0) {
        json_decref(lc.list);
        return store_error(ctx->st, out, rc);
    }
    return reply(out, 200, json_pack("{s:o, s:I}", "list", lc.list, "total",
                                     (json_int_t)lc.total));
}

/* ?ttl=N (APISIX: the resource expires after N seconds). 0 when absent. */
static int parse_ttl(const struct api_req *req, int64_t *ttl, json_t **out)
{
    const char *s = req->arg(req->arg_ud, "ttl");
    long v;
    *ttl = 0;
    if (!s)
        return 0;
    if (parse_long(s, &v) < 0 || v < 1 || v > 9000000000L)
        return reply(out, 400, errmsg("ttl must be an integer number of seconds from 1 to "
                                      "9000000000"));
    *ttl = v;
    return 0;
}

static int do_put(struct api_ctx *ctx, enum gw_kind kind, const char *id,
                  const struct api_req *req, json_t **out)
{
    json_t *conf;
    int status;
    int64_t ttl;
    if ((status = parse_ttl(req, &ttl, out)))
        return status;
    if ((status = parse_body(req, 0, &conf, out)))
        return status;
    char cid[80];
    if (kind == GW_KIND_CONSUMER) {
        /* Consumers are keyed by username: PUT /consumers or /consumers/NAME. */
        json_t *u = json_object_get(conf, "username");
        if (id && u && (!json_is_string(u) || strcmp(json_string_value(u), id) != 0)) {
            json_decref(conf);
            return reply(out, 400, errmsg("wrong consumer username"));
        }
        if (id && !u)
            json_object_set_new(conf, "username", json_string(id));
        if (!id && !json_is_string(u)) {
            json_decref(conf);
            return reply(out, 400, errmsg("invalid configuration: property \"username\" is "
                                          "required"));
        }
        snprintf(cid, sizeof(cid), "%s", id ? id : json_string_value(u));
        if (!config_id_valid(cid)) {
            json_decref(conf);
            return bad_id(cid, out);
        }
        if (json_object_get(conf, "create_time") || json_object_get(conf, "update_time")) {
            json_decref(conf);
            return reply(out, 400, errmsg("the property is forbidden: %s",
                                          json_object_get(conf, "create_time") ? "create_time"
                                                                               : "update_time"));
        }
        id = cid;
    } else if (!id) {
        json_t *bid = json_object_get(conf, "id");
        if (!bid || id_string(bid, cid, sizeof(cid)) < 0) {
            json_decref(conf);
            return reply(out, 400, errmsg("missing %s id", config_kind_name(kind)));
        }
        if (!config_id_valid(cid)) {
            json_decref(conf);
            return bad_id(cid, out);
        }
        id = cid;
    }
    if ((status = precheck(kind, conf, id, 1, 0, out))) {
        json_decref(conf);
        return status;
    }
    char key[256];
    make_key(key, sizeof(key), kind, id);
    struct store_item existing = {0};
    int rc = store_get(ctx->st, key, &existing);
    if (rc < 0 && rc != -ENOENT) {
        json_decref(conf);
        return store_error(ctx->st, out, rc);
    }
    status = write_resource(ctx, kind, id, conf, rc == 0 ? &existing : NULL, ttl, out);
    store_item_clear(&existing);
    return status;
}

static int do_post(struct api_ctx *ctx, enum gw_kind kind, const struct api_req *req,
                   json_t **out)
{
    json_t *conf;
    int status;
    int64_t ttl;
    if ((status = parse_ttl(req, &ttl, out)))
        return status;
    if ((status = parse_body(req, 0, &conf, out)))
        return status;
    /* Ids are the store revision at creation, zero-padded as etcd-era APISIX
     * did; a clash (another writer took it) moves on to the next number. */
    int64_t base = store_revision(ctx->st);
    if (ctx->last_write_rev > base)
        base = ctx->last_write_rev;
    for (int attempt = 0; attempt < 8; attempt++) {
        char id[32];
        snprintf(id, sizeof(id), "%020lld", (long long)base + 1 + attempt);
        json_t *c = json_deep_copy(conf);
        if ((status = precheck(kind, c, id, 0, 0, out))) {
            json_decref(c);
            break;
        }
        status = write_resource(ctx, kind, id, c, NULL, ttl, out);
        if (status != 409)
            break;
        json_decref(*out);
        *out = NULL;
    }
    json_decref(conf);
    if (!*out)
        return reply(out, 409, errmsg("could not allocate an id; retry"));
    return status;
}

/* RFC 7386 merge patch: null deletes, objects merge, anything else replaces. */
static json_t *merge_patch(json_t *target, json_t *patch)
{
    if (!json_is_object(patch))
        return json_incref(patch);
    if (!json_is_object(target))
        target = json_object();
    else
        json_incref(target);
    const char *k;
    json_t *v;
    json_object_foreach(patch, k, v) {
        if (json_is_null(v))
            json_object_del(target, k);
        else
            json_object_set_new(target, k, merge_patch(json_object_get(target, k), v));
    }
    return target;
}

static int do_patch(struct api_ctx *ctx, enum gw_kind kind, const char *id, char **sub, int nsub,
                    const struct api_req *req, json_t **out)
{
    json_t *patch;
    int status;
    if ((status = parse_body(req, nsub > 0, &patch, out)))
        return status;
    char key[256];
    make_key(key, sizeof(key), kind, id);
    struct store_item existing = {0};
    int rc = store_get(ctx->st, key, &existing);
    if (rc == -ENOENT) {
        json_decref(patch);
        return not_found(out);
    }
    if (rc < 0) {
        json_decref(patch);
        return store_error(ctx->st, out, rc);
    }
    json_t *conf = json_loads(existing.value, 0, NULL);
    if (!json_is_object(conf)) {
        json_decref(conf);
        conf = json_object();
    }
    if (nsub > 0) {
        json_t *node = conf;
        for (int i = 0; i < nsub - 1; i++) {
            json_t *next = json_object_get(node, sub[i]);
            if (!json_is_object(next)) {
                next = json_object();
                json_object_set_new(node, sub[i], next);
            }
            node = next;
        }
        json_object_set_new(node, sub[nsub - 1], patch);
    } else {
        json_t *merged = merge_patch(conf, patch);
        json_decref(conf);
        json_decref(patch);
        conf = merged;
    }
    if ((status = precheck(kind, conf, id, 1, 1, out))) {
        json_decref(conf);
        store_item_clear(&existing);
        return status;
    }
    status = write_resource(ctx, kind, id, conf, &existing, 0, out);
    store_item_clear(&existing);
    return status;
}

/* Who may refer to a kind, for delete protection. */
static const enum gw_kind referrers[][4] = {
    [GW_KIND_UPSTREAM] = {GW_KIND_ROUTE, GW_KIND_SERVICE, GW_KIND_STREAM_ROUTE, GW_KIND__COUNT},
    [GW_KIND_SERVICE] = {GW_KIND_ROUTE, GW_KIND_STREAM_ROUTE, GW_KIND__COUNT},
    [GW_KIND_PLUGIN_CONFIG] = {GW_KIND_ROUTE, GW_KIND__COUNT},
};

struct user_scan {
    enum gw_kind scanned; /* kind being listed */
    enum gw_kind target;  /* kind being deleted */
    const char *id;       /* id being deleted */
    char user[80];        /* first referrer found */
};

static int scan_user(void *ud, const struct store_item *it)
{
    struct user_scan *us = ud;
    json_t *v = json_loads(it->value, 0, NULL);
    if (!v)
        return 0;
    struct config_ref refs[MAX_REFS];
    char idbuf[MAX_REFS * 24];
    int n = config_refs(us->scanned, v, refs, MAX_REFS, idbuf);
    int found = 0;
    for (int i = 0; i < n && !found; i++)
        found = refs[i].kind == us->target && strcmp(refs[i].id, us->id) == 0;
    if (found) {
        const char *slash = strrchr(it->key, '/');
        snprintf(us->user, sizeof(us->user), "%s", slash ? slash + 1 : it->key);
    }
    json_decref(v);
    return found;
}

static int do_delete(struct api_ctx *ctx, enum gw_kind kind, const char *id,
                     const struct api_req *req, json_t **out)
{
    char key[256];
    make_key(key, sizeof(key), kind, id);
    struct store_item existing = {0};
    int rc = store_get(ctx->st, key, &existing);
    if (rc == -ENOENT)
        return not_found(out);
    if (rc < 0)
        return store_error(ctx->st, out, rc);
    const char *force = req->arg(req->arg_ud, "force");
    /* No referrer may appear between the scan and the delete: each scanned
     * collection must be unchanged since the revision it was read at. */
    struct store_guard guards[4];
    char prefixes[4][64];
    size_t nguards = 0;
    if (!(force && strcmp(force, "true") == 0) &&
        (kind == GW_KIND_UPSTREAM || kind == GW_KIND_SERVICE || kind == GW_KIND_PLUGIN_CONFIG)) {
        for (int i = 0; referrers[kind][i] != GW_KIND__COUNT; i++) {
            struct user_scan us = {.scanned = referrers[kind][i], .target = kind, .id = id};
            char *prefix = prefixes[nguards];
            int64_t read_rev = 0;
            snprintf(prefix, sizeof(prefixes[0]), "/apisix/%s/",
                     config_kind_collection(us.scanned));
            rc = store_list_at(ctx->st, prefix, 0, scan_user, &us, &read_rev);
            if (rc == 0) {
                guards[nguards] = (struct store_guard){STORE_GUARD_UNCHANGED, prefix, read_rev};
                nguards++;
            }
            if (rc < 0) {
                store_item_clear(&existing);
                return store_error(ctx->st, out, rc);
            }
            if (rc > 0) {
                store_item_clear(&existing);
                return reply(out, 400,
                             errmsg("can not delete this %s, %s [%s] is still using it now",
                                    ref_kind_label(kind), config_kind_name(us.scanned),
                                    us.user));
            }
        }
    }
    struct store_write w = {.expect_mod_rev = existing.mod_rev, .guards = guards,
                            .nguards = nguards};
    rc = store_delete_ex(ctx->st, key, &w, NULL);
    store_item_clear(&existing);
    if (rc == -ENOENT)
        return not_found(out);
    if (rc < 0)
        return store_error(ctx->st, out, rc);
    return reply(out, 200, json_pack("{s:s, s:s}", "deleted", "1", "key", key));
}

static int method_not_allowed(const char *method, const char *what, json_t **out)
{
    return reply(out, 405, errmsg("not supported `%s` method for %s", method, what));
}

static int handle_plugins(char **seg, int nseg, const struct api_req *req, json_t **out)
{
    if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0)
        return method_not_allowed(req->method, "plugins", out);
    if (nseg == 2 && strcmp(seg[1], "list") == 0) {
        const char *sub = req->arg(req->arg_ud, "subsystem");
        json_t *all = json_array();
        size_t i;
        json_t *n;
        json_array_foreach(config_plugin_names(), i, n) {
            if (!sub || strcmp(sub, "http") == 0 ||
                (strcmp(sub, "stream") == 0 && config_plugin_is_stream(json_string_value(n))))
                json_array_append(all, n);
        }
        return reply(out, 200, all);
    }
    if (nseg == 2) {
        const json_t *schema = config_plugin_schema(seg[1]);
        if (!schema)
            return reply(out, 404, errmsg("plugin not found: %s", seg[1]));
        return reply(out, 200, json_deep_copy(schema));
    }
    if (nseg == 1) {
        const char *all = req->arg(req->arg_ud, "all");
        if (!all || strcmp(all, "true") != 0)
            return reply(out, 400, errmsg("use /apisix/admin/plugins/list or ?all=true"));
        json_t *o = json_object();
        size_t i;
        json_t *n;
        json_array_foreach(config_plugin_names(), i, n) {
            const json_t *schema = config_plugin_schema(json_string_value(n));
            json_object_set_new(o, json_string_value(n),
                                schema ? json_deep_copy(schema) : json_object());
        }
        return reply(out, 200, o);
    }
    return reply(out, 404, errmsg("not found"));
}

static int handle_validate(char **seg, int nseg, const struct api_req *req, json_t **out)
{
    if (nseg != 3 || strcmp(seg[1], "validate") != 0)
        return reply(out, 404, errmsg("not found"));
    int kind = config_kind_from_collection(seg[2]);
    if (kind < 0)
        return reply(out, 404, errmsg("unsupported resource type: %s", seg[2]));
    if (strcmp(req->method, "POST") != 0)
        return method_not_allowed(req->method, "schema validation", out);
    json_t *conf;
    int status;
    if ((status = parse_body(req, 0, &conf, out)))
        return status;
    char err[1024];
    int rc = config_check(kind, conf, err, sizeof(err));
    json_decref(conf);
    if (rc < 0)
        return reply(out, 400, errmsg("%s", err));
    return reply(out, 200, json_object());
}

/* Which methods each kind takes, after APISIX's unsupported_methods. */
static int method_supported(enum gw_kind kind, const char *m)
{
    if (strcmp(m, "POST") == 0)
        return kind != GW_KIND_CONSUMER && kind != GW_KIND_GLOBAL_RULE &&
               kind != GW_KIND_PLUGIN_CONFIG;
    if (strcmp(m, "PATCH") == 0)
        return kind != GW_KIND_CONSUMER && kind != GW_KIND_STREAM_ROUTE;
    return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "PUT") == 0 ||
           strcmp(m, "DELETE") == 0;
}

static int api_route(struct api_ctx *ctx, const struct api_req *req, json_t **out);

int api_handle(struct api_ctx *ctx, const struct api_req *req, json_t **out)
{
    /* One timeout for all the store work of a request (etcd). */
    store_request_begin(ctx->st);
    int status = api_route(ctx, req, out);
    store_request_end(ctx->st);
    return status;
}

static int api_route(struct api_ctx *ctx, const struct api_req *req, json_t **out)
{
    /* Split the path; segments point into a local copy. */
    char path[1024];
    char *seg[MAX_SEGMENTS];
    int nseg = 0;
    *out = NULL;
    if (strlen(req->path) >= sizeof(path))
        return reply(out, 414, errmsg("path too long"));
    snprintf(path, sizeof(path), "%s", req->path);
    for (char *save = NULL, *t = strtok_r(path, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        if (nseg == MAX_SEGMENTS)
            return reply(out, 404, errmsg("path has too many segments"));
        seg[nseg++] = t;
    }
    if (nseg == 0)
        return reply(out, 404, errmsg("not found: use /apisix/admin/<resource>"));
    if (strcmp(seg[0], "plugins") == 0)
        return handle_plugins(seg, nseg, req, out);
    if (strcmp(seg[0], "schema") == 0)
        return handle_validate(seg, nseg, req, out);
    if (strcmp(seg[0], "dataplanes") == 0) {
        if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "HEAD") != 0)
            return method_not_allowed(req->method, "dataplanes", out);
        json_t *l = ctx->ss ? stream_server_list(ctx->ss) : json_array();
        return reply(out, 200,
                     json_pack("{s:o, s:I}", "list", l, "total", (json_int_t)json_array_size(l)));
    }
    int kind = config_kind_from_collection(seg[0]);
    if (kind < 0)
        return reply(out, 404, errmsg("unsupported resource type: %.64s", seg[0]));
    const char *m = req->method;
    if (!method_supported(kind, m))
        return method_not_allowed(m, config_kind_name(kind), out);
    const char *id = nseg > 1 ? seg[1] : NULL;
    if (id && !config_id_valid(id))
        return bad_id(id, out);
    if (nseg > 2 && strcmp(m, "PATCH") != 0)
        return reply(out, 404, errmsg("not found: sub-paths are for PATCH only"));

    if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0)
        return id ? do_get(ctx, kind, id, out) : do_list(ctx, kind, req, out);
    if (strcmp(m, "PUT") == 0)
        return do_put(ctx, kind, id, req, out);
    if (strcmp(m, "POST") == 0) {
        if (id)
            return reply(out, 400, errmsg("wrong %s id, do not need it", config_kind_name(kind)));
        return do_post(ctx, kind, req, out);
    }
    if (!id)
        return reply(out, 400, errmsg("missing %s id", config_kind_name(kind)));
    if (strcmp(m, "PATCH") == 0)
        return do_patch(ctx, kind, id, seg + 2, nseg - 2, req, out);
    return do_delete(ctx, kind, id, req, out);
}
