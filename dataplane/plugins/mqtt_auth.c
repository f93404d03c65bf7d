/*
 * mqtt-auth: authenticates an MQTT CONNECT against consumers, on stream
 * routes (airgw's own plugin; APISIX has none for MQTT).
 *
 * Runs in the preread phase, which stream_proxy.c enters on an mqtt-proxy
 * route once the whole CONNECT was parsed and passed the route's version
 * and client id checks, before a broker is picked. Modes:
 *   password     the CONNECT's user name and password against the consumers'
 *                basic-auth credential {username, password}
 *   certificate  the verified TLS client certificate: a consumer whose
 *                mqtt-auth credential has cert_subject equal to the
 *                certificate's subject (RFC 2253) or, failing that, cert_cn
 *                equal to its common name
 *   either       a certificate that names a consumer wins; else a user name
 *                or password given is checked as in password mode
 * Refusals (the CONNACK for the client's version, then close):
 *   credential missing, unknown user, wrong password: "bad user name or
 *   password" (3.1.1 0x04, 5.0 0x86) - the client is never told which;
 *   no verified certificate, or none naming a consumer: "not authorized"
 *   (0x05, 0x87).
 * allow_anonymous: a client that presents nothing (no user name, no
 * password, and in certificate mode no certificate) goes through without a
 * consumer; one that presents a credential must present a right one.
 *
 * On success the consumer is set on the connection (chash hash_on consumer,
 * limit plugins). The CONNECT is forwarded to the broker unchanged. Each
 * refusal is logged (warn) with the client address, client id and user
 * name, never the password. Passwords are compared in constant time, and an
 * unknown user costs the same compare as a known one.
 *
 * State: one of a few static configurations (create cannot fail, so a
 * configured mqtt-auth is never skipped, which would leave the route open).
 * No per-connection data.
 */
#include "plugin.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "mqtt_codec.h"
#include "netaddr.h"

enum mode { MODE_PASSWORD, MODE_CERTIFICATE, MODE_EITHER, MODE_UNKNOWN };

struct mqtt_auth {
    enum mode mode;       /* how clients prove who they are */
    bool allow_anonymous; /* a client presenting nothing passes, without a consumer */
};

static const struct mqtt_auth configs[4][2] = {
    {{MODE_PASSWORD, false}, {MODE_PASSWORD, true}},
    {{MODE_CERTIFICATE, false}, {MODE_CERTIFICATE, true}},
    {{MODE_EITHER, false}, {MODE_EITHER, true}},
    {{MODE_UNKNOWN, false}, {MODE_UNKNOWN, false}},
};

#define NAME_MAX_LEN 1024 /* longer user names cannot be a consumer's */

static int create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    const json_t *m = json_object_get(a->conf, "mode");
    enum mode mode = MODE_PASSWORD;
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        if (strcmp(s, "password") == 0)
            mode = MODE_PASSWORD;
        else if (strcmp(s, "certificate") == 0)
            mode = MODE_CERTIFICATE;
        else if (strcmp(s, "either") == 0)
            mode = MODE_EITHER;
        else
            mode = MODE_UNKNOWN;
    } else if (m) {
        mode = MODE_UNKNOWN;
    }
    if (mode == MODE_UNKNOWN)
        log_warn("%s: mqtt-auth: mode not understood by this data plane: every CONNECT is "
                 "refused",
                 a->owner);
    bool anon = json_is_true(json_object_get(a->conf, "allow_anonymous"));
    *state = (void *)&configs[mode][anon ? 1 : 0];
    return 0;
}

/* ---- logging ---- */

/* Copies at most 64 bytes of v for a log line: printable ASCII as is, other
 * bytes as \xNN, "(none)" when absent. */
static void printable(const struct mqtt_bytes *v, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (!v || !v->ptr) {
        snprintf(out, cap, "(none)");
        return;
    }
    for (size_t i = 0; i < v->len && i < 64 && o + 5 < cap; i++) {
        uint8_t ch = v->ptr[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            out[o++] = (char)ch;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    if (v->len > 64 && o + 4 < cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

static void refuse(struct plugin_stream *s, const struct mqtt_connect *mc, int why,
                   const char *detail)
{
    char ip[64] = "?", cid[300], user[300];
    const struct sockaddr *sa = plugin_stream_remote(s);
    if (sa)
        netaddr_format_ip(sa, ip, sizeof(ip));
    printable(mc ? &mc->client_id : NULL, cid, sizeof(cid));
    printable(mc ? &mc->username : NULL, user, sizeof(user));
    const char *subject = plugin_stream_peer_subject(s);
    log_warn("mqtt-auth: stream route %s: refused client %s (client id %s, user %s%s%s): %s: %s",
             plugin_stream_route_id(s), ip, cid, user, subject ? ", certificate " : "",
             subject ? subject : "",
             why == MQTT_REFUSE_BAD_AUTH ? "bad user name or password" : "not authorized", detail);
    plugin_stream_deny(s, why);
}

/* ---- checks ---- */

/* 0 when equal. Time depends on the lengths only, never on where the bytes
 * differ. */
static int ct_compare(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen > blen ? alen : blen;
    unsigned diff = alen != blen;
    for (size_t i = 0; i < n; i++) {
        uint8_t x = i < alen ? a[i] : 0, y = i < blen ? b[i] : 0;
        diff |= (unsigned)(x ^ y);
    }
    return diff != 0;
}

static const char *cred_field(const struct consumer_rt *c, const char *plugin, const char *field)
{
    return json_string_value(json_object_get(json_object_get(c->plugins, plugin), field));
}

/* The consumer whose mqtt-auth credential has `field` equal to value. */
static const struct consumer_rt *by_cert(struct snapshot *snap, const char *field,
                                         const char *value)
{
    if (!value || !*value)
        return NULL;
    const struct consumer_rt *c = snapshot_consumer_by(snap, "mqtt-auth", value);
    /* The index holds both fields: a CN spelled like another consumer's
     * subject must not stand for it. */
    const char *v = c ? cred_field(c, "mqtt-auth", field) : NULL;
    return v && strcmp(v, value) == 0 ? c : NULL;
}

static bool present(const struct mqtt_bytes *b)
{
    return b->ptr && b->len > 0;
}

/* Password mode's check. Returns the consumer, or NULL with *detail set. */
static const struct consumer_rt *by_password(struct snapshot *snap, const struct mqtt_connect *mc,
                                             const char **detail)
{
    static const char dummy[] = "airgw-mqtt-auth-no-such-user";
    char name[NAME_MAX_LEN + 1];
    const struct consumer_rt *c = NULL;
    if (!present(&mc->username) || !present(&mc->password)) {
        *detail = present(&mc->username) ? "no password" : "no user name";
        return NULL;
    }
    if (mc->username.len <= NAME_MAX_LEN && !memchr(mc->username.ptr, 0, mc->username.len)) {
        memcpy(name, mc->username.ptr, mc->username.len);
        name[mc->username.len] = '\0';
        c = snapshot_consumer_by(snap, "basic-auth", name);
    }
    const char *u = c ? cred_field(c, "basic-auth", "username") : NULL;
    const char *pw = c ? cred_field(c, "basic-auth", "password") : NULL;
    bool known = u && pw && strcmp(u, name) == 0;
    /* An unknown user costs the same compare: no timing tells them apart. */
    const char *want = known ? pw : dummy;
    int differ =
        ct_compare((const uint8_t *)want, strlen(want), mc->password.ptr, mc->password.len);
    if (!known || differ) {
        *detail = known ? "wrong password" : "unknown user";
        return NULL;
    }
    return c;
}

static int preread(struct plugin_stream *s, void *state, void **data)
{
    const struct mqtt_auth *cfg = state;
    const struct mqtt_connect *mc = plugin_stream_mqtt(s);
    struct snapshot *snap = plugin_stream_snapshot(s);
    (void)data;
    if (cfg->mode == MODE_UNKNOWN) {
        refuse(s, mc, MQTT_REFUSE_NOT_AUTHORIZED, "mode not understood by this data plane");
        return PLUGIN_STOP;
    }
    const char *subject = NULL, *cn = NULL;
    if (cfg->mode != MODE_PASSWORD) {
        subject = plugin_stream_peer_subject(s);
        cn = plugin_stream_peer_cn(s);
        const struct consumer_rt *c = by_cert(snap, "cert_subject", subject);
        if (!c)
            c = by_cert(snap, "cert_cn", cn);
        if (c) {
            plugin_stream_set_consumer(s, c);
            return PLUGIN_CONTINUE;
        }
    }
    bool has_cert = subject || cn;
    bool has_login = mc && (present(&mc->username) || present(&mc->password));
    if (cfg->mode == MODE_CERTIFICATE || (cfg->mode == MODE_EITHER && has_cert && !has_login)) {
        if (!has_cert && cfg->allow_anonymous)
            return PLUGIN_CONTINUE;
        refuse(s, mc, MQTT_REFUSE_NOT_AUTHORIZED,
               has_cert ? "no consumer for the client certificate"
                        : "no verified client certificate");
        return PLUGIN_STOP;
    }
    /* password, or either without a certificate naming a consumer */
    if (!has_login && cfg->allow_anonymous)
        return PLUGIN_CONTINUE;
    if (!mc) {
        refuse(s, mc, MQTT_REFUSE_NOT_AUTHORIZED,
               "a user name and password need an mqtt-proxy route");
        return PLUGIN_STOP;
    }
    const char *detail = "no credentials";
    const struct consumer_rt *c = has_login ? by_password(snap, mc, &detail) : NULL;
    if (!c) {
        refuse(s, mc, MQTT_REFUSE_BAD_AUTH, detail);
        return PLUGIN_STOP;
    }
    plugin_stream_set_consumer(s, c);
    return PLUGIN_CONTINUE;
}

const struct plugin_def plugin_def_mqtt_auth = {
    .name = "mqtt-auth",
    .priority = 2510,
    .flags = PLUGIN_STREAM,
    .create = create,
    .preread = preread,
};
