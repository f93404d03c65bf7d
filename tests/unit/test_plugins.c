/*
 * Unit tests for the authentication and address plugins:
 * dataplane/plugins/key_auth.c, basic_auth.c and ip_restriction.c.
 *
 * The plugin sources are included (h2o style) to reach their static
 * helpers. The framework they call (plugin_req_*, plugin_stream_*,
 * snapshot_consumer_by) is mocked below at link time: these definitions
 * satisfy the plugins' references, so the linker never pulls the real
 * http_plugin.o / stream_proxy.o / snapshot.o out of the data plane
 * library. The end-to-end test tests/e2e/test_plugins_auth.py runs the
 * same plugins in a real data plane.
 */
#include "check.h"

#include "plugins/basic_auth.c"
#include "plugins/ip_restriction.c"
#include "plugins/key_auth.c"

#include <arpa/inet.h>
#include <netinet/in.h>

/* ---- mocks --------------------------------------------------------------- */

#define MOCK_MAX 8

struct snapshot {
    size_t n;
    struct consumer_rt c[MOCK_MAX];
    json_t *docs; /* owns the consumers' JSON */
};

struct plugin_req {
    struct snapshot *snap;
    const char *hname[MOCK_MAX], *hval[MOCK_MAX]; /* request headers */
    size_t nh;
    const char *args; /* query string, or NULL */
    struct sockaddr_storage remote;
    bool has_remote;
    /* what the plugin did */
    int status;                        /* plugin_respond_message status, 0 if none */
    char message[256];                 /* its message */
    char removed_header[64];           /* plugin_req_header_set(name, NULL) */
    char removed_arg[64];              /* plugin_req_arg_remove */
    char set_hname[64], set_hval[128]; /* plugin_req_header_set(name, value) */
    char resp_hname[64], resp_hval[128];
    const struct consumer_rt *consumer;
};

struct plugin_stream {
    struct sockaddr_storage remote;
    int denied; /* 1 + why, 0 if not denied */
};

const struct consumer_rt *snapshot_consumer_by(const struct snapshot *s, const char *plugin,
                                               const char *value)
{
    const char *field = strcmp(plugin, "key-auth") == 0 ? "key" : "username";
    for (size_t i = 0; s && i < s->n; i++) {
        const char *v =
            json_string_value(json_object_get(json_object_get(s->c[i].plugins, plugin), field));
        if (v && strcmp(v, value) == 0)
            return &s->c[i];
    }
    return NULL;
}

struct snapshot *plugin_req_snapshot(struct plugin_req *r)
{
    return r->snap;
}

const char *plugin_req_header(struct plugin_req *r, const char *name, size_t *len)
{
    for (size_t i = 0; i < r->nh; i++) {
        if (strcasecmp(r->hname[i], name) == 0) {
            *len = strlen(r->hval[i]);
            return r->hval[i];
        }
    }
    return NULL;
}

const char *plugin_req_arg(struct plugin_req *r, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = r->args; p && *p;) {
        const char *end = strchr(p, '&');
        size_t pl = end ? (size_t)(end - p) : strlen(p);
        if (pl >= nl && strncmp(p, name, nl) == 0 && (pl == nl || p[nl] == '=')) {
            const char *v = pl == nl ? p + nl : p + nl + 1;
            *len = pl == nl ? 0 : pl - nl - 1;
            return v;
        }
        p = end ? end + 1 : NULL;
    }
    return NULL;
}

const struct sockaddr *plugin_req_remote(struct plugin_req *r)
{
    return r->has_remote ? (const struct sockaddr *)&r->remote : NULL;
}

void plugin_req_set_consumer(struct plugin_req *r, const struct consumer_rt *c)
{
    r->consumer = c;
}

int plugin_req_header_set(struct plugin_req *r, const char *name, const char *value)
{
    if (!value) {
        snprintf(r->removed_header, sizeof(r->removed_header), "%s", name);
    } else {
        snprintf(r->set_hname, sizeof(r->set_hname), "%s", name);
        snprintf(r->set_hval, sizeof(r->set_hval), "%s", value);
    }
    return 0;
}

int plugin_req_arg_remove(struct plugin_req *r, const char *name)
{
    snprintf(r->removed_arg, sizeof(r->removed_arg), "%s", name);
    return 0;
}

int plugin_resp_header_set(struct plugin_req *r, const char *name, const char *value)
{
    snprintf(r->resp_hname, sizeof(r->resp_hname), "%s", name);
    snprintf(r->resp_hval, sizeof(r->resp_hval), "%s", value ? value : "");
    return 0;
}

void plugin_respond_message(struct plugin_req *r, int status, const char *message)
{
    r->status = status;
    snprintf(r->message, sizeof(r->message), "%s", message);
}

const struct sockaddr *plugin_stream_remote(struct plugin_stream *s)
{
    return (const struct sockaddr *)&s->remote;
}

void plugin_stream_deny(struct plugin_stream *s, int why)
{
    s->denied = 1 + why;
}

/* ---- helpers ------------------------------------------------------------- */

/* A snapshot with the consumers of a JSON array [{"username":..,"plugins":{..}}]. */
static struct snapshot *snap_new(const char *consumers)
{
    static struct snapshot s;
    json_decref(s.docs);
    memset(&s, 0, sizeof(s));
    s.docs = json_loads(consumers, 0, NULL);
    size_t i;
    json_t *c;
    json_array_foreach(s.docs, i, c)
    {
        s.c[s.n].username = json_string_value(json_object_get(c, "username"));
        s.c[s.n].conf = c;
        s.c[s.n].plugins = json_object_get(c, "plugins");
        s.n++;
    }
    return &s;
}

static const char *const CONSUMERS =
    "[{\"username\":\"jack\",\"plugins\":{\"key-auth\":{\"key\":\"auth-one\"},"
    "\"basic-auth\":{\"username\":\"jack\",\"password\":\"pa:ss word\"}}},"
    "{\"username\":\"rose\",\"plugins\":{\"key-auth\":{\"key\":\"a+b c\"},"
    "\"basic-auth\":{\"username\":\"rose\",\"password\":\"secret\"}}}]";

static void req_init(struct plugin_req *r)
{
    memset(r, 0, sizeof(*r));
    r->snap = snap_new(CONSUMERS);
}

static void req_header(struct plugin_req *r, const char *name, const char *value)
{
    r->hname[r->nh] = name;
    r->hval[r->nh++] = value;
}

static void set_addr(struct sockaddr_storage *ss, const char *ip)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
    } else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
    }
}

/* An instance of def made from conf (JSON text); NULL when create failed
 * (then err holds the reason). The conf is kept in *confp. */
static void *make(const struct plugin_def *def, const char *conf, json_t **confp, char *err,
                  size_t errlen)
{
    *confp = json_loads(conf, 0, NULL);
    if (!*confp)
        return NULL;
    struct plugin_create_args a = {.conf = *confp, .owner = "route/1", .plugin = def->name};
    void *state = NULL;
    err[0] = '\0';
    if (def->create(&a, &state, err, errlen) != 0)
        return NULL;
    return state;
}

/* ---- key-auth ------------------------------------------------------------ */

/* Runs key-auth with conf on the request; returns the plugin's rc. */
static int run_key_auth(const char *conf, struct plugin_req *r)
{
    json_t *c;
    char err[128];
    void *st = make(&plugin_def_key_auth, conf, &c, err, sizeof(err));
    if (!st) {
        json_decref(c);
        return -1;
    }
    void *data = NULL;
    int rc = plugin_def_key_auth.rewrite(r, st, &data);
    plugin_def_key_auth.destroy(st);
    json_decref(c);
    return rc;
}

static void test_key_auth_header(void)
{
    struct plugin_req r;
    req_init(&r);
    req_header(&r, "ApiKey", "auth-one");
    CHECK(run_key_auth("{}", &r) == PLUGIN_CONTINUE);
    CHECK(r.status == 0);
    REQUIRE(r.consumer != NULL);
    CHECK_STREQ(r.consumer->username, "jack");
    CHECK(r.removed_header[0] == '\0'); /* hide_credentials off */
    CHECK_STREQ(r.set_hname, "X-Consumer-Username");
    CHECK_STREQ(r.set_hval, "jack");
}

static void test_key_auth_query(void)
{
    struct plugin_req r;
    req_init(&r);
    r.args = "x=1&apikey=auth-one&y=2";
    CHECK(run_key_auth("{}", &r) == PLUGIN_CONTINUE);
    REQUIRE(r.consumer != NULL);
    CHECK_STREQ(r.consumer->username, "jack");

    /* %-decoded as nginx's get_uri_args: "a%2Bb+c" is "a+b c". */
    req_init(&r);
    r.args = "apikey=a%2Bb+c";
    CHECK(run_key_auth("{}", &r) == PLUGIN_CONTINUE);
    REQUIRE(r.consumer != NULL);
    CHECK_STREQ(r.consumer->username, "rose");

    /* A prefix of the name is another argument. */
    req_init(&r);
    r.args = "apikeyx=auth-one";
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK(r.status == 401);
    CHECK_STREQ(r.message, "Missing API key in request");
}

static void test_key_auth_header_first(void)
{
    /* The header wins over the query, even when only the query is right. */
    struct plugin_req r;
    req_init(&r);
    req_header(&r, "apikey", "wrong");
    r.args = "apikey=auth-one";
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK(r.status == 401);
    CHECK_STREQ(r.message, "Invalid API key in request");
    CHECK(r.consumer == NULL);
    CHECK(r.set_hname[0] == '\0'); /* nothing attached to a refused request */
}

static void test_key_auth_refusals(void)
{
    struct plugin_req r;
    req_init(&r);
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK(r.status == 401);
    CHECK_STREQ(r.message, "Missing API key in request");

    req_init(&r);
    req_header(&r, "apikey", "nobody");
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK(r.status == 401);
    CHECK_STREQ(r.message, "Invalid API key in request");

    /* Present but empty: invalid, not missing (as APISIX). */
    req_init(&r);
    req_header(&r, "apikey", "");
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK_STREQ(r.message, "Invalid API key in request");
    req_init(&r);
    r.args = "apikey=";
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK_STREQ(r.message, "Invalid API key in request");

    /* A %00 cannot smuggle a prefix match. */
    req_init(&r);
    r.args = "apikey=auth-one%00x";
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK_STREQ(r.message, "Invalid API key in request");

    /* An overlong key is refused, not overflowed. */
    static char big[KEY_AUTH_MAX_KEY + 100];
    memset(big, 'k', sizeof(big) - 1);
    req_init(&r);
    req_header(&r, "apikey", big);
    CHECK(run_key_auth("{}", &r) == PLUGIN_STOP);
    CHECK_STREQ(r.message, "Invalid API key in request");
}

static void test_key_auth_custom_names(void)
{
    struct plugin_req r;
    req_init(&r);
    req_header(&r, "apikey", "auth-one"); /* not the configured header */
    CHECK(run_key_auth("{\"header\":\"X-Token\",\"query\":\"token\"}", &r) == PLUGIN_STOP);
    CHECK_STREQ(r.message, "Missing API key in request");

    req_init(&r);
    req_header(&r, "x-token", "auth-one");
    CHECK(run_key_auth("{\"header\":\"X-Token\",\"query\":\"token\"}", &r) == PLUGIN_CONTINUE);

    req_init(&r);
    r.args = "token=auth-one";
    CHECK(run_key_auth("{\"header\":\"X-Token\",\"query\":\"token\"}", &r) == PLUGIN_CONTINUE);
    REQUIRE(r.consumer != NULL);
    CHECK_STREQ(r.consumer->username, "jack");
}

static void test_key_auth_hide_credentials(void)
{
    struct plugin_req r;
    req_init(&r);
    req_header(&r, "X-Token", "auth-one");
    r.args = "token=other";
    CHECK(run_key_auth("{\"header\":\"X-Token\",\"query\":\"token\",\"hide_credentials\":true}",
                       &r) == PLUGIN_CONTINUE);
    CHECK_STREQ(r.removed_header, "X-Token");
    CHECK(r.removed_arg[0] == '\0'); /* only the source of the key goes */

    req_init(&r);
    r.args = "a=1&apikey=auth-one";
    CHECK(run_key_auth("{\"hide_credentials\":true}", &r) == PLUGIN_CONTINUE);
    CHECK_STREQ(r.removed_arg, "apikey");
    CHECK(r.removed_header[0] == '\0');

    /* A refused request is not edited. */
    req_init(&r);
    r.args = "apikey=bad";
    CHECK(run_key_auth("{\"hide_credentials\":true}", &r) == PLUGIN_STOP);
    CHECK(r.removed_arg[0] == '\0');
}

/* ---- basic-auth ---------------------------------------------------------- */

static int run_basic_auth(const char *conf, struct plugin_req *r)
{
    json_t *c;
    char err[128];
    void *st = make(&plugin_def_basic_auth, conf, &c, err, sizeof(err));
    if (!st) {
        json_decref(c);
        return -1;
    }
    void *data = NULL;
    int rc = plugin_def_basic_auth.rewrite(r, st, &data);
    plugin_def_basic_auth.destroy(st);
    json_decref(c);
    return rc;
}

static int parse_ok(const char *hv, const char *user, const char *pass)
{
    char buf[BASIC_AUTH_MAX];
    const char *u, *p;
    if (basic_auth_parse(hv, strlen(hv), buf, &u, &p) != 0) {
        fprintf(stderr, "    basic_auth_parse(\"%s\") failed\n", hv);
        return 0;
    }
    if (strcmp(u, user) != 0 || strcmp(p, pass) != 0) {
        fprintf(stderr, "    basic_auth_parse(\"%s\") = \"%s\" \"%s\"\n", hv, u, p);
        return 0;
    }
    return 1;
}

static int parse_fails(const char *hv)
{
    char buf[BASIC_AUTH_MAX];
    const char *u, *p;
    return basic_auth_parse(hv, strlen(hv), buf, &u, &p) != 0;
}

static void test_basic_auth_parse(void)
{
    CHECK(parse_ok("Basic Zm9vOmJhcg==", "foo", "bar"));
    CHECK(parse_ok("basic Zm9vOmJhcg==", "foo", "bar")); /* scheme case-insensitive */
    CHECK(parse_ok("BASIC   Zm9vOmJhcg==  ", "foo", "bar"));
    CHECK(parse_ok("Basic Zm9vOmJhcg", "foo", "bar"));                   /* padding omitted */
    CHECK(parse_ok("Basic amFjazpwYTpzcyB3b3Jk", "jack", "pa:ss word")); /* "jack:pa:ss word" */
    CHECK(parse_ok("Basic dTo=", "u", ""));                              /* "u:" empty password */
    CHECK(parse_fails("Bearer Zm9vOmJhcg=="));
    CHECK(parse_fails("BasicZm9vOmJhcg=="));
    CHECK(parse_fails("Basic"));
    CHECK(parse_fails("Basic "));
    CHECK(parse_fails("Basic Zm9v"));          /* "foo": no colon */
    CHECK(parse_fails("Basic OmJhcg=="));      /* ":bar": no user */
    CHECK(parse_fails("Basic Zm9v*mJhcg=="));  /* outside the alphabet */
    CHECK(parse_fails("Basic Zm9vO=mJhcg==")); /* padding inside */
    CHECK(parse_fails("Basic Z"));             /* dangling 6 bits */
    CHECK(parse_fails("Basic Zm9vADpiYXI="));  /* "foo\0:bar" */
    static char big[BASIC_AUTH_MAX * 2];
    memcpy(big, "Basic ", 6);
    memset(big + 6, 'Q', sizeof(big) - 7);
    CHECK(parse_fails(big));
}

static void test_basic_auth_ct_equal(void)
{
    CHECK(basic_auth_ct_equal("secret", "secret"));
    CHECK(!basic_auth_ct_equal("secreT", "secret"));
    CHECK(!basic_auth_ct_equal("secret", "secret2"));
    CHECK(!basic_auth_ct_equal("secret2", "secret"));
    CHECK(!basic_auth_ct_equal("", "secret"));
    CHECK(basic_auth_ct_equal("", ""));
}

static void test_basic_auth_ok(void)
{
    struct plugin_req r;
    req_init(&r);
    req_header(&r, "authorization", "Basic cm9zZTpzZWNyZXQ="); /* rose:secret */
    CHECK(run_basic_auth("{}", &r) == PLUGIN_CONTINUE);
    CHECK(r.status == 0);
    REQUIRE(r.consumer != NULL);
    CHECK_STREQ(r.consumer->username, "rose");
    CHECK(r.removed_header[0] == '\0');
    CHECK_STREQ(r.set_hname, "X-Consumer-Username");
    CHECK_STREQ(r.set_hval, "rose");

    req_init(&r);
    req_header(&r, "Authorization", "Basic amFjazpwYTpzcyB3b3Jk"); /* jack:pa:ss word */
    CHECK(run_basic_auth("{\"hide_credentials\":true}", &r) == PLUGIN_CONTINUE);
    REQUIRE(r.consumer != NULL);
    CHECK_STREQ(r.consumer->username, "jack");
    CHECK_STREQ(r.removed_header, "Authorization");
}

static void test_basic_auth_refusals(void)
{
    struct plugin_req r;
    req_init(&r);
    CHECK(run_basic_auth("{}", &r) == PLUGIN_STOP);
    CHECK(r.status == 401);
    CHECK_STREQ(r.message, "Missing authorization in request");
    CHECK_STREQ(r.resp_hname, "WWW-Authenticate");
    CHECK_STREQ(r.resp_hval, "Basic realm=\"basic\"");

    req_init(&r);
    req_header(&r, "Authorization", "Bearer abc");
    CHECK(run_basic_auth("{}", &r) == PLUGIN_STOP);
    CHECK(r.status == 401);
    CHECK_STREQ(r.message, "Invalid authorization in request");
    CHECK_STREQ(r.resp_hval, "Basic realm=\"basic\"");

    req_init(&r);
    req_header(&r, "Authorization", "Basic cm9zZTpTZWNyZXQ="); /* rose:Secret */
    CHECK(run_basic_auth("{\"hide_credentials\":true}", &r) == PLUGIN_STOP);
    CHECK(r.status == 401);
    CHECK_STREQ(r.message, "Invalid user authorization");
    CHECK(r.consumer == NULL);
    CHECK(r.removed_header[0] == '\0');

    req_init(&r);
    req_header(&r, "Authorization", "Basic bm9ib2R5OnNlY3JldA=="); /* nobody:secret */
    CHECK(run_basic_auth("{}", &r) == PLUGIN_STOP);
    CHECK_STREQ(r.message, "Invalid user authorization");

    /* jack's password is "pa:ss word": APISIX-style splitting would give "pa". */
    req_init(&r);
    req_header(&r, "Authorization", "Basic amFjazpwYQ=="); /* jack:pa */
    CHECK(run_basic_auth("{}", &r) == PLUGIN_STOP);
    CHECK_STREQ(r.message, "Invalid user authorization");
}

/* ---- ip-restriction ------------------------------------------------------ */

static const char *create_error(const char *conf)
{
    static char err[256];
    json_t *c;
    void *st = make(&plugin_def_ip_restriction, conf, &c, err, sizeof(err));
    if (st)
        plugin_def_ip_restriction.destroy(st);
    json_decref(c);
    return st ? NULL : err;
}

static void test_ip_restriction_create(void)
{
    CHECK(create_error("{\"whitelist\":[\"127.0.0.1\",\"10.0.0.0/8\",\"::1\",\"fe80::/10\"]}") ==
          NULL);
    CHECK(create_error("{\"blacklist\":[\"192.168.1.0/24\"]}") == NULL);
    CHECK_CONTAINS(create_error("{}"), "exactly one of whitelist or blacklist");
    CHECK_CONTAINS(create_error("{\"whitelist\":[\"1.1.1.1\"],\"blacklist\":[\"2.2.2.2\"]}"),
                   "exactly one");
    CHECK_STREQ(create_error("{\"whitelist\":[\"1.1.1.1\",\"1.2.3.4/33\"]}"),
                "invalid ip address: 1.2.3.4/33");
    CHECK_STREQ(create_error("{\"blacklist\":[\"localhost\"]}"), "invalid ip address: localhost");
    CHECK_CONTAINS(create_error("{\"blacklist\":[7]}"), "invalid ip address");
}

/* Runs the HTTP access phase for a client at ip; returns the status sent
 * (0: admitted). message gets the refusal's message. */
static int http_verdict(const char *conf, const char *ip, char *message)
{
    json_t *c;
    char err[128];
    void *st = make(&plugin_def_ip_restriction, conf, &c, err, sizeof(err));
    if (!st) {
        fprintf(stderr, "    create failed: %s\n", err);
        json_decref(c);
        return -1;
    }
    struct plugin_req r;
    req_init(&r);
    if (ip) {
        set_addr(&r.remote, ip);
        r.has_remote = true;
    }
    void *data = NULL;
    int rc = plugin_def_ip_restriction.access(&r, st, &data);
    plugin_def_ip_restriction.destroy(st);
    json_decref(c);
    if (message)
        strcpy(message, r.message);
    if ((rc == PLUGIN_CONTINUE) != (r.status == 0))
        return -2; /* STOP without an answer, or an answer with CONTINUE */
    return r.status;
}

static void test_ip_restriction_whitelist(void)
{
    const char *wl = "{\"whitelist\":[\"127.0.0.1\",\"10.1.0.0/16\",\"2001:db8::/32\",\"::1\"]}";
    char msg[256];
    CHECK(http_verdict(wl, "127.0.0.1", NULL) == 0);
    CHECK(http_verdict(wl, "10.1.255.7", NULL) == 0);
    CHECK(http_verdict(wl, "2001:db8:1::5", NULL) == 0);
    CHECK(http_verdict(wl, "::1", NULL) == 0);
    CHECK(http_verdict(wl, "::ffff:10.1.2.3", NULL) == 0); /* mapped IPv4 */
    CHECK(http_verdict(wl, "127.0.0.2", msg) == 403);
    CHECK_STREQ(msg, "Your IP address is not allowed");
    CHECK(http_verdict(wl, "10.2.0.1", NULL) == 403);
    CHECK(http_verdict(wl, "2001:db9::1", NULL) == 403);
    CHECK(http_verdict(wl, "::2", NULL) == 403);
    CHECK(http_verdict(wl, NULL, NULL) == 403); /* unknown address: not listed */
}

static void test_ip_restriction_blacklist(void)
{
    const char *bl = "{\"blacklist\":[\"127.0.0.2\",\"192.168.0.0/16\",\"fd00::/8\"],"
                     "\"message\":\"go away\",\"response_code\":404}";
    char msg[256];
    CHECK(http_verdict(bl, "127.0.0.2", msg) == 404);
    CHECK_STREQ(msg, "go away");
    CHECK(http_verdict(bl, "192.168.44.1", NULL) == 404);
    CHECK(http_verdict(bl, "::ffff:192.168.0.1", NULL) == 404);
    CHECK(http_verdict(bl, "fd12::1", NULL) == 404);
    CHECK(http_verdict(bl, "127.0.0.1", NULL) == 0);
    CHECK(http_verdict(bl, "fe80::1", NULL) == 0);
    CHECK(http_verdict(bl, NULL, NULL) == 0);
    /* 0.0.0.0/0 and ::/0 hold everything of their family. */
    CHECK(http_verdict("{\"blacklist\":[\"0.0.0.0/0\"]}", "8.8.8.8", NULL) == 403);
    CHECK(http_verdict("{\"blacklist\":[\"0.0.0.0/0\"]}", "2001:db8::1", NULL) == 0);
    CHECK(http_verdict("{\"blacklist\":[\"::/0\"]}", "2001:db8::1", NULL) == 403);
}

static void test_ip_restriction_stream(void)
{
    json_t *c;
    char err[128];
    void *st = make(&plugin_def_ip_restriction, "{\"whitelist\":[\"127.0.0.0/24\"]}", &c, err,
                    sizeof(err));
    REQUIRE(st != NULL);
    struct plugin_stream s = {0};
    void *data = NULL;
    set_addr(&s.remote, "127.0.0.9");
    CHECK(plugin_def_ip_restriction.preread(&s, st, &data) == PLUGIN_CONTINUE);
    CHECK(s.denied == 0);
    set_addr(&s.remote, "127.0.1.9");
    CHECK(plugin_def_ip_restriction.preread(&s, st, &data) == PLUGIN_STOP);
    CHECK(s.denied == 1 + MQTT_REFUSE_NOT_AUTHORIZED);
    plugin_def_ip_restriction.destroy(st);
    json_decref(c);
}

static void test_defs(void)
{
    CHECK(plugin_def_key_auth.priority == 2500 && plugin_def_key_auth.flags == PLUGIN_HTTP);
    CHECK(plugin_def_basic_auth.priority == 2520 && plugin_def_basic_auth.flags == PLUGIN_HTTP);
    CHECK(plugin_def_ip_restriction.priority == 3000 &&
          plugin_def_ip_restriction.flags == (PLUGIN_HTTP | PLUGIN_STREAM));
    CHECK(plugin_def_key_auth.rewrite && !plugin_def_key_auth.access);
    CHECK(plugin_def_basic_auth.rewrite && !plugin_def_basic_auth.access);
    CHECK(plugin_def_ip_restriction.access && plugin_def_ip_restriction.preread);
}

int main(void)
{
    RUN(test_defs);
    RUN(test_key_auth_header);
    RUN(test_key_auth_query);
    RUN(test_key_auth_header_first);
    RUN(test_key_auth_refusals);
    RUN(test_key_auth_custom_names);
    RUN(test_key_auth_hide_credentials);
    RUN(test_basic_auth_parse);
    RUN(test_basic_auth_ct_equal);
    RUN(test_basic_auth_ok);
    RUN(test_basic_auth_refusals);
    RUN(test_ip_restriction_create);
    RUN(test_ip_restriction_whitelist);
    RUN(test_ip_restriction_blacklist);
    RUN(test_ip_restriction_stream);
    json_decref(snap_new("[]")->docs); /* no leak at exit */
    return check_summary();
}
