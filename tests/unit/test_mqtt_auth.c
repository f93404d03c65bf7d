/*
 * Unit tests for dataplane/plugins/mqtt_auth.c: the mode x credential
 * decision table, the CONNACK refusal each case gets, the constant-time
 * compare, and that a CN spelled like another consumer's subject does not
 * stand for it.
 *
 * The plugin source is included (h2o style) to reach its static helpers.
 * The framework it calls (plugin_stream_*, snapshot_consumer_by) is mocked
 * here at link time, so the linker never pulls the real stream_proxy.o or
 * snapshot.o out of the data plane library. CONNECTs are real bytes parsed
 * by the real mqtt_codec. tests/e2e/test_mqtt_auth.py runs the plugin in a
 * real data plane with real brokers and clients.
 */
#include "check.h"

#include "plugins/mqtt_auth.c"

#include <arpa/inet.h>
#include <netinet/in.h>

/* ---- mocks --------------------------------------------------------------- */

#define MOCK_MAX 8

struct snapshot {
    size_t n;
    struct consumer_rt c[MOCK_MAX];
    json_t *docs; /* owns the consumers' JSON */
};

struct plugin_stream {
    struct snapshot *snap;
    struct sockaddr_storage remote;
    struct mqtt_connect mc;
    bool has_mc;
    const char *subject, *cn; /* the client certificate's, or NULL */
    int denied;               /* 1 + why, 0 if not denied */
    const struct consumer_rt *consumer;
    uint8_t pkt[512];         /* the CONNECT mc points into */
};

/* As the snapshot's index: basic-auth by username; mqtt-auth by either of
 * its fields (both in one namespace, as (plugin, value) keys). */
const struct consumer_rt *snapshot_consumer_by(const struct snapshot *s, const char *plugin,
                                               const char *value)
{
    static const char *const mqtt_fields[] = {"cert_subject", "cert_cn", NULL};
    static const char *const basic_fields[] = {"username", NULL};
    const char *const *fields = strcmp(plugin, "mqtt-auth") == 0 ? mqtt_fields : basic_fields;
    for (size_t i = 0; s && i < s->n; i++) {
        for (const char *const *f = fields; *f; f++) {
            const char *v = json_string_value(
                json_object_get(json_object_get(s->c[i].plugins, plugin), *f));
            if (v && strcmp(v, value) == 0)
                return &s->c[i];
        }
    }
    return NULL;
}

const struct sockaddr *plugin_stream_remote(struct plugin_stream *s)
{
    return (const struct sockaddr *)&s->remote;
}

const char *plugin_stream_route_id(struct plugin_stream *s)
{
    (void)s;
    return "r1";
}

struct snapshot *plugin_stream_snapshot(struct plugin_stream *s)
{
    return s->snap;
}

const struct mqtt_connect *plugin_stream_mqtt(struct plugin_stream *s)
{
    return s->has_mc ? &s->mc : NULL;
}

const char *plugin_stream_peer_subject(struct plugin_stream *s)
{
    return s->subject;
}

const char *plugin_stream_peer_cn(struct plugin_stream *s)
{
    return s->cn;
}

void plugin_stream_set_consumer(struct plugin_stream *s, const struct consumer_rt *c)
{
    s->consumer = c;
}

void plugin_stream_deny(struct plugin_stream *s, int why)
{
    s->denied = 1 + why;
}

/* ---- helpers ------------------------------------------------------------- */

static struct snapshot snap;

static void snap_load(const char *consumers)
{
    json_decref(snap.docs);
    memset(&snap, 0, sizeof(snap));
    snap.docs = json_loads(consumers, 0, NULL);
    size_t i;
    json_t *c;
    json_array_foreach(snap.docs, i, c)
    {
        snap.c[snap.n].username = json_string_value(json_object_get(c, "username"));
        snap.c[snap.n].conf = c;
        snap.c[snap.n].plugins = json_object_get(c, "plugins");
        snap.n++;
    }
}

static const char *const CONSUMERS =
    "[{\"username\":\"dev_a\",\"plugins\":{\"basic-auth\":"
    "{\"username\":\"dev-a\",\"password\":\"pw-a\"}}},"
    "{\"username\":\"dev_b\",\"plugins\":{\"basic-auth\":"
    "{\"username\":\"dev-b\",\"password\":\"\\u00e9t\\u00e9 2\"}}},"
    "{\"username\":\"cert_1\",\"plugins\":{\"mqtt-auth\":{\"cert_subject\":\"CN=dev1,O=Acme\"}}},"
    "{\"username\":\"cert_2\",\"plugins\":{\"mqtt-auth\":{\"cert_cn\":\"dev2\"}}}]";

static size_t put_str(uint8_t *p, const char *s, size_t n)
{
    p[0] = (uint8_t)(n >> 8);
    p[1] = (uint8_t)n;
    memcpy(p + 2, s, n);
    return n + 2;
}

/* A stream with a CONNECT of that level; user / password NULL: flag off.
 * nolen: the lengths of user and password (for bytes with NULs), or 0. */
static void stream_init(struct plugin_stream *s, int level, const char *user, const char *pass,
                        size_t ulen, size_t plen)
{
    memset(s, 0, sizeof(*s));
    s->snap = &snap;
    struct sockaddr_in *in = (struct sockaddr_in *)&s->remote;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, "192.0.2.7", &in->sin_addr);
    if (level == 0)
        return; /* not an mqtt-proxy route */
    uint8_t body[400];
    size_t n = put_str(body, "MQTT", 4);
    body[n++] = (uint8_t)level;
    body[n++] = (uint8_t)(0x02 | (user ? 0x80 : 0) | (pass ? 0x40 : 0));
    body[n++] = 0;
    body[n++] = 60;
    if (level >= 5)
        body[n++] = 0; /* no properties */
    n += put_str(body + n, "cid-1", 5);
    if (user)
        n += put_str(body + n, user, ulen ? ulen : strlen(user));
    if (pass)
        n += put_str(body + n, pass, plen ? plen : strlen(pass));
    s->pkt[0] = 0x10;
    s->pkt[1] = (uint8_t)n; /* < 128 */
    memcpy(s->pkt + 2, body, n);
    int rc = mqtt_parse_connect(s->pkt, n + 2, 0, &s->mc);
    s->has_mc = rc > 0;
}

/* Runs the plugin made from conf: PLUGIN_CONTINUE or the refusal + 1 in
 * *denied. */
static int run(const char *conf, struct plugin_stream *s)
{
    json_t *j = json_loads(conf, 0, NULL);
    struct plugin_create_args a = {.conf = j, .owner = "stream_route/r1", .plugin = "mqtt-auth"};
    void *state = NULL, *data = NULL;
    char err[128];
    int rc = create(&a, &state, err, sizeof(err));
    if (rc == 0)
        rc = preread(s, state, &data);
    json_decref(j);
    return rc;
}

#define DENIED(why) (1 + (why))

/* ---- tests --------------------------------------------------------------- */

static void test_password_ok(void)
{
    struct plugin_stream s;
    stream_init(&s, 4, "dev-a", "pw-a", 0, 0);
    REQUIRE(s.has_mc);
    CHECK(run("{}", &s) == PLUGIN_CONTINUE);
    CHECK(s.denied == 0);
    REQUIRE(s.consumer != NULL);
    CHECK_STREQ(s.consumer->username, "dev_a");
    /* UTF-8 password, 5.0 */
    stream_init(&s, 5, "dev-b", "\xc3\xa9t\xc3\xa9 2", 0, 0);
    CHECK(run("{\"mode\":\"password\"}", &s) == PLUGIN_CONTINUE);
    CHECK(s.consumer && strcmp(s.consumer->username, "dev_b") == 0);
}

static void test_password_refusals(void)
{
    struct {
        const char *user, *pass;
    } bad[] = {
        {"dev-a", "pw-b"},  /* wrong */
        {"dev-a", "pw-a "}, /* longer */
        {"dev-a", "pw-"},   /* prefix */
        {"dev-a", ""},      /* empty */
        {"dev-a", NULL},    /* no password */
        {NULL, NULL},       /* nothing */
        {"", ""},           /* empty both */
        {NULL, "pw-a"},     /* password without a user (3.1.1 forbids; 5.0 allows) */
        {"nobody", "pw-a"}, /* unknown user */
        {"dev_a", "pw-a"},  /* the consumer's name is not its basic-auth user name */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct plugin_stream s;
        stream_init(&s, 5, bad[i].user, bad[i].pass, 0, 0);
        if (!s.has_mc)
            continue;
        CHECK(run("{}", &s) == PLUGIN_STOP);
        if (s.denied != DENIED(MQTT_REFUSE_BAD_AUTH))
            fprintf(stderr, "  case %zu: denied %d\n", i, s.denied);
        CHECK(s.denied == DENIED(MQTT_REFUSE_BAD_AUTH));
        CHECK(s.consumer == NULL);
    }
    /* a NUL inside the user name cannot reach a shorter consumer name */
    struct plugin_stream s;
    stream_init(&s, 5, "dev-a\0x", "pw-a", 7, 0);
    if (s.has_mc) {
        CHECK(run("{}", &s) == PLUGIN_STOP);
        CHECK(s.denied == DENIED(MQTT_REFUSE_BAD_AUTH));
    }
}

static void test_anonymous(void)
{
    struct plugin_stream s;
    stream_init(&s, 4, NULL, NULL, 0, 0);
    CHECK(run("{\"allow_anonymous\":true}", &s) == PLUGIN_CONTINUE);
    CHECK(s.denied == 0 && s.consumer == NULL);
    stream_init(&s, 4, "", "", 0, 0);
    CHECK(run("{\"allow_anonymous\":true}", &s) == PLUGIN_CONTINUE);
    stream_init(&s, 4, "dev-a", "nope", 0, 0);
    CHECK(run("{\"allow_anonymous\":true}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_BAD_AUTH));
    stream_init(&s, 4, NULL, NULL, 0, 0);
    CHECK(run("{\"allow_anonymous\":true,\"mode\":\"certificate\"}", &s) == PLUGIN_CONTINUE);
    stream_init(&s, 4, NULL, NULL, 0, 0);
    s.cn = "dev9";
    CHECK(run("{\"allow_anonymous\":true,\"mode\":\"certificate\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_NOT_AUTHORIZED));
}

static void test_certificate(void)
{
    struct plugin_stream s;
    stream_init(&s, 4, NULL, NULL, 0, 0);
    s.subject = "CN=dev1,O=Acme";
    s.cn = "dev1";
    CHECK(run("{\"mode\":\"certificate\"}", &s) == PLUGIN_CONTINUE);
    CHECK(s.consumer && strcmp(s.consumer->username, "cert_1") == 0);
    /* by CN */
    stream_init(&s, 5, NULL, NULL, 0, 0);
    s.subject = "OU=fleet,CN=dev2";
    s.cn = "dev2";
    CHECK(run("{\"mode\":\"certificate\"}", &s) == PLUGIN_CONTINUE);
    CHECK(s.consumer && strcmp(s.consumer->username, "cert_2") == 0);
    /* no consumer */
    stream_init(&s, 5, "dev-a", "pw-a", 0, 0);
    s.subject = "CN=dev3";
    s.cn = "dev3";
    CHECK(run("{\"mode\":\"certificate\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_NOT_AUTHORIZED));
    CHECK(s.consumer == NULL);
    /* no certificate */
    stream_init(&s, 4, "dev-a", "pw-a", 0, 0);
    CHECK(run("{\"mode\":\"certificate\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_NOT_AUTHORIZED));
    /* a CN spelled like cert_1's subject is not cert_1, nor is a subject
     * equal to cert_2's CN */
    stream_init(&s, 4, NULL, NULL, 0, 0);
    s.subject = "CN=CN=dev1\\,O=Acme";
    s.cn = "CN=dev1,O=Acme";
    CHECK(run("{\"mode\":\"certificate\"}", &s) == PLUGIN_STOP);
    CHECK(s.consumer == NULL);
    stream_init(&s, 4, NULL, NULL, 0, 0);
    s.subject = "dev2";
    s.cn = "x";
    CHECK(run("{\"mode\":\"certificate\"}", &s) == PLUGIN_STOP);
    /* a plain TCP (non-MQTT) route: a certificate still works */
    stream_init(&s, 0, NULL, NULL, 0, 0);
    s.cn = "dev2";
    CHECK(run("{\"mode\":\"certificate\"}", &s) == PLUGIN_CONTINUE);
    stream_init(&s, 0, NULL, NULL, 0, 0);
    CHECK(run("{\"mode\":\"password\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_NOT_AUTHORIZED));
}

static void test_either(void)
{
    struct plugin_stream s;
    stream_init(&s, 4, "dev-a", "wrong", 0, 0);
    s.cn = "dev2";
    CHECK(run("{\"mode\":\"either\"}", &s) == PLUGIN_CONTINUE); /* the certificate wins */
    CHECK(s.consumer && strcmp(s.consumer->username, "cert_2") == 0);
    stream_init(&s, 4, "dev-a", "pw-a", 0, 0);
    s.cn = "dev9";
    CHECK(run("{\"mode\":\"either\"}", &s) == PLUGIN_CONTINUE);
    CHECK(s.consumer && strcmp(s.consumer->username, "dev_a") == 0);
    stream_init(&s, 4, "dev-a", "wrong", 0, 0);
    s.cn = "dev9";
    CHECK(run("{\"mode\":\"either\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_BAD_AUTH));
    stream_init(&s, 4, NULL, NULL, 0, 0);
    s.cn = "dev9";
    CHECK(run("{\"mode\":\"either\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_NOT_AUTHORIZED));
    stream_init(&s, 4, NULL, NULL, 0, 0);
    CHECK(run("{\"mode\":\"either\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_BAD_AUTH));
}

static void test_unknown_mode_refuses(void)
{
    struct plugin_stream s;
    stream_init(&s, 4, "dev-a", "pw-a", 0, 0);
    CHECK(run("{\"mode\":\"telepathy\"}", &s) == PLUGIN_STOP);
    CHECK(s.denied == DENIED(MQTT_REFUSE_NOT_AUTHORIZED));
}

static void test_ct_compare(void)
{
    CHECK(ct_compare((const uint8_t *)"abc", 3, (const uint8_t *)"abc", 3) == 0);
    CHECK(ct_compare((const uint8_t *)"abc", 3, (const uint8_t *)"abd", 3) != 0);
    CHECK(ct_compare((const uint8_t *)"abc", 3, (const uint8_t *)"ab", 2) != 0);
    CHECK(ct_compare((const uint8_t *)"ab", 2, (const uint8_t *)"ab\0", 3) != 0);
    CHECK(ct_compare((const uint8_t *)"", 0, (const uint8_t *)"", 0) == 0);
}

static void test_printable(void)
{
    char out[300];
    struct mqtt_bytes b = {(const uint8_t *)"a\n\\b", 4};
    printable(&b, out, sizeof(out));
    CHECK_STREQ(out, "a\\x0a\\x5cb");
    printable(NULL, out, sizeof(out));
    CHECK_STREQ(out, "(none)");
    char big[100];
    memset(big, 'x', sizeof(big));
    struct mqtt_bytes l = {(const uint8_t *)big, sizeof(big)};
    printable(&l, out, sizeof(out));
    CHECK(strlen(out) == 67);
}

int main(void)
{
    log_init("test", LOG_ERROR);
    snap_load(CONSUMERS);
    RUN(test_password_ok);
    RUN(test_password_refusals);
    RUN(test_anonymous);
    RUN(test_certificate);
    RUN(test_either);
    RUN(test_unknown_mode_refuses);
    RUN(test_ct_compare);
    RUN(test_printable);
    json_decref(snap.docs);
    return check_summary();
}
