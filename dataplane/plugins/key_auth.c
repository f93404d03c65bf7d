/*
 * key-auth: authenticates a request by an API key that names a consumer
 * (APISIX 3.x's key-auth, priority 2500, rewrite phase).
 *
 * The key is read from the request header conf.header (default "apikey")
 * and, when the request has no such header, from the query argument
 * conf.query (default "apikey"; %-decoded as nginx's get_uri_args does).
 * The consumer is the one whose key-auth credential has that "key"
 * (snapshot_consumer_by). Answers:
 *   no key           401 {"message":"Missing API key in request"}
 *   no such consumer 401 {"message":"Invalid API key in request"}
 * A present but empty key is an invalid key, as in APISIX. On success the
 * consumer is attached to the request (consumer_name, chash hash_on
 * consumer, the limit plugins' consumer_name key), the upstream gets its
 * name in X-Consumer-Username (as APISIX 3.x; a client's own header of
 * that name is replaced) and, with hide_credentials, the header or
 * argument the key came from is not sent upstream.
 *
 * State: the instance borrows its strings from the configuration, which
 * lives as long as the instance. No per-request data.
 */
#include "plugin.h"
#include "plugin_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define KEY_AUTH_MAX_KEY 4096 /* longer keys are refused as invalid (no consumer has one) */

struct key_auth {
    const char *header;    /* request header holding the key */
    const char *query;     /* query argument holding the key */
    bool hide_credentials; /* strip the key before proxying */
};

static int key_auth_create(const struct plugin_create_args *a, void **state, char *err,
                           size_t errlen)
{
    struct key_auth *k = calloc(1, sizeof(*k));
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const char *h = json_string_value(json_object_get(a->conf, "header"));
    const char *q = json_string_value(json_object_get(a->conf, "query"));
    k->header = h && h[0] ? h : "apikey";
    k->query = q && q[0] ? q : "apikey";
    k->hide_credentials = json_is_true(json_object_get(a->conf, "hide_credentials"));
    *state = k;
    return 0;
}

static void key_auth_destroy(void *state)
{
    free(state);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Decodes a query argument's value as nginx's ngx.req.get_uri_args does:
 * "%XX" becomes the byte, '+' a space, a broken escape stays as it is.
 * out needs len + 1 bytes; the result is NUL-terminated. Returns its length.
 */
static size_t key_auth_arg_decode(const char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (in[i] == '%' && i + 2 < len && (hi = hexval(in[i + 1])) >= 0 &&
            (lo = hexval(in[i + 2])) >= 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (in[i] == '+') {
            out[o++] = ' ';
        } else {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
    return o;
}

static int key_auth_rewrite(struct plugin_req *r, void *state, void **data)
{
    const struct key_auth *k = state;
    (void)data;
    size_t len = 0;
    bool from_header = true;
    const char *raw = plugin_req_header(r, k->header, &len);
    if (!raw) {
        raw = plugin_req_arg(r, k->query, &len);
        from_header = false;
    }
    if (!raw) {
        plugin_respond_message(r, 401, "Missing API key in request");
        return PLUGIN_STOP;
    }

    const struct consumer_rt *c = NULL;
    if (len <= KEY_AUTH_MAX_KEY) {
        char key[KEY_AUTH_MAX_KEY + 1];
        if (from_header) {
            memcpy(key, raw, len);
            key[len] = '\0';
        } else {
            len = key_auth_arg_decode(raw, len, key);
        }
        /* A NUL inside the key (from %00) can match no stored key. */
        if (len > 0 && strlen(key) == len)
            c = snapshot_consumer_by(plugin_req_snapshot(r), "key-auth", key);
    }
    if (!c) {
        plugin_respond_message(r, 401, "Invalid API key in request");
        return PLUGIN_STOP;
    }

    int rc = 0;
    if (k->hide_credentials)
        rc = from_header ? plugin_req_header_set(r, k->header, NULL)
                         : plugin_req_arg_remove(r, k->query);
    return auth_accept_consumer(r, c, "key-auth", rc);
}

const struct plugin_def plugin_def_key_auth = {
    .name = "key-auth",
    .priority = 2500,
    .flags = PLUGIN_HTTP,
    .create = key_auth_create,
    .destroy = key_auth_destroy,
    .rewrite = key_auth_rewrite,
};
