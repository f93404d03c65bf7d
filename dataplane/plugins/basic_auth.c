/*
 * basic-auth: HTTP Basic authentication (RFC 7617) against consumers
 * (APISIX 3.x's basic-auth, priority 2520, rewrite phase).
 *
 * The request's "Authorization: Basic base64(user:password)" names a
 * consumer by its basic-auth credential's "username"
 * (snapshot_consumer_by); the password must equal the credential's
 * "password" (compared in constant time). Answers, each with
 * WWW-Authenticate: Basic realm="basic" (RFC 7235 wants one on every 401):
 *   no Authorization header         401 {"message":"Missing authorization in request"}
 *   not "Basic <base64 of u:p>"     401 {"message":"Invalid authorization in request"}
 *   unknown user or wrong password  401 {"message":"Invalid user authorization"}
 * The scheme name is case-insensitive (RFC 7235). The user-id ends at the
 * first ':' and the password may hold ':' and spaces (RFC 7617; APISIX
 * splits at every ':' and strips blanks, which loses such passwords).
 * On success the consumer is attached to the request, the upstream gets
 * its name in X-Consumer-Username (replacing a client's own) and, with
 * hide_credentials, Authorization is not sent upstream.
 *
 * The same consumers' credentials authenticate MQTT CONNECTs (mqtt-auth).
 *
 * State: none beyond the flag; no per-request data.
 */
#include "plugin.h"
#include "plugin_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base64.h"
#include "log.h"

#define BASIC_AUTH_MAX 4096 /* longest Authorization value we decode */
#define BASIC_AUTH_CHALLENGE "Basic realm=\"basic\""

struct basic_auth {
    bool hide_credentials; /* strip Authorization before proxying */
};

static int basic_auth_create(const struct plugin_create_args *a, void **state, char *err,
                             size_t errlen)
{
    struct basic_auth *b = calloc(1, sizeof(*b));
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    b->hide_credentials = json_is_true(json_object_get(a->conf, "hide_credentials"));
    *state = b;
    return 0;
}

static void basic_auth_destroy(void *state)
{
    free(state);
}

/*
 * Splits an Authorization value "Basic <b64>" into user and password
 * (NUL-terminated, inside buf of BASIC_AUTH_MAX bytes). 0, or -1 when the
 * value is not a well-formed Basic credential.
 */
static int basic_auth_parse(const char *v, size_t len, char *buf, const char **user,
                            const char **pass)
{
    while (len > 0 && (*v == ' ' || *v == '\t'))
        v++, len--;
    if (len < 6 || strncasecmp(v, "basic", 5) != 0 || (v[5] != ' ' && v[5] != '\t'))
        return -1;
    v += 6, len -= 6;
    while (len > 0 && (*v == ' ' || *v == '\t'))
        v++, len--;
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    /* '=' padding is optional, as many clients omit it (RFC 4648 s. 4). */
    if (len == 0 || BASE64_DECODED_MAX(len) >= BASIC_AUTH_MAX)
        return -1;
    long n = base64_decode(v, len, (unsigned char *)buf, BASE64_STRICT);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    if (strlen(buf) != (size_t)n)
        return -1; /* a NUL inside: no stored credential can match */
    char *colon = strchr(buf, ':');
    if (!colon || colon == buf)
        return -1;
    *colon = '\0';
    *user = buf;
    *pass = colon + 1;
    return 0;
}

/* Equal strings, in time that depends on the lengths only. */
static bool basic_auth_ct_equal(const char *given, const char *stored)
{
    size_t gl = strlen(given), sl = strlen(stored);
    unsigned char diff = gl != sl;
    for (size_t i = 0; i < sl; i++)
        diff |= (unsigned char)stored[i] ^ (unsigned char)(i < gl ? given[i] : 0);
    return diff == 0;
}

static int basic_auth_deny(struct plugin_req *r, const char *message)
{
    plugin_resp_header_set(r, "WWW-Authenticate", BASIC_AUTH_CHALLENGE);
    plugin_respond_message(r, 401, message);
    return PLUGIN_STOP;
}

static int basic_auth_rewrite(struct plugin_req *r, void *state, void **data)
{
    const struct basic_auth *b = state;
    (void)data;
    size_t len = 0;
    const char *hv = plugin_req_header(r, "Authorization", &len);
    if (!hv)
        return basic_auth_deny(r, "Missing authorization in request");

    char buf[BASIC_AUTH_MAX];
    const char *user, *pass;
    if (basic_auth_parse(hv, len, buf, &user, &pass) < 0)
        return basic_auth_deny(r, "Invalid authorization in request");

    const struct consumer_rt *c = snapshot_consumer_by(plugin_req_snapshot(r), "basic-auth", user);
    const char *stored = c ? json_string_value(json_object_get(
                                 json_object_get(c->plugins, "basic-auth"), "password"))
                           : NULL;
    /* Compare against something even for an unknown user, so that the
     * time taken does not tell which user names exist. */
    bool ok = basic_auth_ct_equal(pass, stored ? stored : "\x01-no-such-user-\x01");
    if (!c || !stored || !ok)
        return basic_auth_deny(r, "Invalid user authorization");

    int rc = b->hide_credentials ? plugin_req_header_set(r, "Authorization", NULL) : 0;
    return auth_accept_consumer(r, c, "basic-auth", rc);
}

const struct plugin_def plugin_def_basic_auth = {
    .name = "basic-auth",
    .priority = 2520,
    .flags = PLUGIN_HTTP,
    .create = basic_auth_create,
    .destroy = basic_auth_destroy,
    .rewrite = basic_auth_rewrite,
};
