/*
 * standalone: see standalone.h.
 */
#include "standalone.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "yaml_json.h"

#define STANDALONE_MAX_BYTES (64u << 20)

/* True when the last non-blank line is "#END". */
static int has_end_marker(const char *text, size_t len)
{
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' ' ||
                       text[len - 1] == '\t'))
        len--;
    return len >= 4 && memcmp(text + len - 4, "#END", 4) == 0 &&
           (len == 4 || text[len - 5] == '\n');
}

static int id_of(enum gw_kind kind, const json_t *item, char *buf, size_t len)
{
    const json_t *v = json_object_get(item, kind == GW_KIND_CONSUMER ? "username" : "id");
    if (json_is_string(v))
        snprintf(buf, len, "%s", json_string_value(v));
    else if (json_is_integer(v) && kind != GW_KIND_CONSUMER)
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else
        return -1;
    return config_id_valid(buf) ? 0 : -1;
}

int standalone_parse(const char *text, size_t len, const char *name, int is_json, json_t **out,
                     char *err, size_t errlen)
{
    char why[1024];
    *out = NULL;
    if (!is_json && !has_end_marker(text, len)) {
        snprintf(err, errlen, "%s: no \"#END\" line at the end (the file may be incomplete)",
                 name);
        return -EINVAL;
    }
    json_t *doc = yaml_json_parse(text, len, why, sizeof(why));
    if (!doc) {
        snprintf(err, errlen, "%s: %s", name, why);
        return -EINVAL;
    }
    int rc = -EINVAL;
    json_t *res = json_object();
    if (!json_is_object(doc)) {
        snprintf(err, errlen, "%s: the top level must be a mapping", name);
        goto out;
    }
    const char *coll;
    json_t *list;
    json_object_foreach(doc, coll, list) {
        int kind = config_kind_from_collection(coll);
        if (kind < 0) {
            if (strcmp(coll, "plugin_metadata") == 0 || strcmp(coll, "protos") == 0 ||
                strcmp(coll, "secrets") == 0 || strcmp(coll, "consumer_groups") == 0 ||
                strcmp(coll, "plugins") == 0 || strcmp(coll, "stream_plugins") == 0) {
                log_warn("%s: \"%s\" is not supported by airgw; ignored", name, coll);
                continue;
            }
            snprintf(err, errlen, "%s: unknown section \"%s\"", name, coll);
            goto out;
        }
        if (json_is_null(list))
            continue;
        if (!json_is_array(list)) {
            snprintf(err, errlen, "%s: \"%s\" must be a list", name, coll);
            goto out;
        }
        size_t i;
        json_t *item;
        json_array_foreach(list, i, item) {
            char id[80], key[160];
            if (!json_is_object(item)) {
                snprintf(err, errlen, "%s: %s[%zu] must be a mapping", name, coll, i);
                goto out;
            }
            if (id_of(kind, item, id, sizeof(id)) < 0) {
                snprintf(err, errlen, "%s: %s[%zu] needs a valid %s (1 to 64 of [a-zA-Z0-9-_.])",
                         name, coll, i, kind == GW_KIND_CONSUMER ? "username" : "id");
                goto out;
            }
            json_t *conf = json_deep_copy(item);
            if (kind != GW_KIND_CONSUMER)
                json_object_set_new(conf, "id", json_string(id));
            if (config_check(kind, conf, why, sizeof(why)) < 0) {
                snprintf(err, errlen, "%s: %s %s: %s", name, config_kind_name(kind), id, why);
                json_decref(conf);
                goto out;
            }
            snprintf(key, sizeof(key), "/apisix/%s/%s", coll, id);
            if (json_object_get(res, key)) {
                snprintf(err, errlen, "%s: %s id %s appears twice", name, config_kind_name(kind),
                         id);
                json_decref(conf);
                goto out;
            }
            json_object_set_new(res, key, conf);
        }
    }
    /* References must resolve inside the file. */
    const char *key;
    json_t *conf;
    json_object_foreach(res, key, conf) {
        char coll_buf[64];
        const char *c0 = key + strlen("/apisix/");
        const char *slash = strchr(c0, '/');
        snprintf(coll_buf, sizeof(coll_buf), "%.*s", (int)(slash - c0), c0);
        int kind = config_kind_from_collection(coll_buf);
        struct config_ref refs[8];
        char idbuf[8 * 24];
        int n = config_refs(kind, conf, refs, 8, idbuf);
        for (int i = 0; i < n; i++) {
            char target[160];
            snprintf(target, sizeof(target), "/apisix/%s/%s", config_kind_collection(refs[i].kind),
                     refs[i].id);
            if (!json_object_get(res, target)) {
                snprintf(err, errlen, "%s: %s %s: %s \"%s\" does not exist in the file", name,
                         config_kind_name(kind), slash + 1, refs[i].field, refs[i].id);
                goto out;
            }
        }
    }
    *out = res;
    res = NULL;
    rc = 0;
out:
    json_decref(res);
    json_decref(doc);
    return rc;
}

int standalone_load(const char *path, json_t **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            if (cap > STANDALONE_MAX_BYTES + 1) {
                snprintf(err, errlen, "%s: larger than %u MiB", path,
                         STANDALONE_MAX_BYTES >> 20);
                rc = -EFBIG;
                goto out;
            }
            char *b = realloc(buf, cap);
            if (!b) {
                rc = -ENOMEM;
                snprintf(err, errlen, "%s: out of memory", path);
                goto out;
            }
            buf = b;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    size_t plen = strlen(path);
    int is_json = plen > 5 && strcmp(path + plen - 5, ".json") == 0;
    rc = standalone_parse(buf, len, path, is_json, out, err, errlen);
out:
    free(buf);
    fclose(f);
    return rc;
}
