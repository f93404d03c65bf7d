/*
 * test_snapshot: compiling a configuration revision (dataplane/snapshot.c):
 * APISIX's merge of a route with its service and plugin_config, upstream
 * choice and sharing, timeouts, chash keys, and resilience to resources a
 * worker cannot compile.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "check.h"
#include "plugin.h"
#include "snapshot.h"

static json_t *res(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j)
        fprintf(stderr, "bad test JSON: %s\n", e.text);
    return j;
}

static const char *var(void *ud, const char *name, size_t *len)
{
    const char **kv = ud;
    for (; kv[0]; kv += 2)
        if (strcmp(kv[0], name) == 0) {
            *len = strlen(kv[1]);
            return kv[1];
        }
    return NULL;
}

static const struct route_rt *match(struct snapshot *s, const char *method, const char *host,
                                    const char *path, const char **vars)
{
    struct route_query q = {.method = method,
                            .host = host,
                            .path = path,
                            .path_len = strlen(path),
                            .var = var,
                            .var_ud = vars};
    return snapshot_match(s, &q);
}

static const char *novars[] = {NULL};

static void test_route_plugins_merge_over_service_and_plugin_config(void)
{
    json_t *r = res("{"
                    "\"/apisix/upstreams/u1\":{\"nodes\":{\"127.0.0.1:1\":1},\"type\":\"roundrobin\"},"
                    "\"/apisix/services/s1\":{\"upstream_id\":\"u1\",\"hosts\":[\"svc.test\"],"
                    "  \"plugins\":{\"limit-count\":{\"count\":1},\"cors\":{\"from\":\"service\"}}},"
                    "\"/apisix/plugin_configs/p1\":{\"plugins\":{\"proxy-rewrite\":{\"uri\":\"/pc\"},"
                    "  \"cors\":{\"from\":\"plugin_config\"}}},"
                    "\"/apisix/routes/r1\":{\"uri\":\"/a\",\"service_id\":\"s1\",\"plugin_config_id\":\"p1\","
                    "  \"plugins\":{\"cors\":{\"from\":\"route\"}}}}");
    REQUIRE(r);
    struct snapshot *s = snapshot_build(r, 7);
    json_decref(r);
    REQUIRE(s);
    CHECK(s->revision == 7);
    const struct route_rt *rt = match(s, "GET", "svc.test", "/a", novars);
    REQUIRE(rt);
    CHECK_STREQ(rt->id, "r1");
    /* The route wins over the plugin config, which wins over the service. */
    CHECK_STREQ(json_string_value(json_object_get(json_object_get(rt->plugins, "cors"), "from")),
                "route");
    CHECK(json_object_get(rt->plugins, "limit-count") != NULL);
    CHECK(json_object_get(rt->plugins, "proxy-rewrite") != NULL);
    /* Hosts and upstream come from the service. */
    REQUIRE(rt->up);
    CHECK_STREQ(rt->up->id, "u1");
    CHECK(match(s, "GET", "other.test", "/a", novars) == NULL);
    snapshot_unref(s);
}

static void test_route_fields_win_over_service(void)
{
    json_t *r = res("{"
                    "\"/apisix/services/s1\":{\"upstream\":{\"nodes\":{\"127.0.0.1:2\":1}},"
                    "  \"hosts\":[\"svc.test\"],\"enable_websocket\":true},"
                    "\"/apisix/routes/r1\":{\"uri\":\"/a\",\"service_id\":\"s1\",\"host\":\"own.test\","
                    "  \"upstream\":{\"nodes\":{\"127.0.0.1:3\":1}}},"
                    "\"/apisix/routes/r2\":{\"uri\":\"/b\",\"service_id\":\"s1\"}}");
    struct snapshot *s = snapshot_build(r, 1);
    json_decref(r);
    REQUIRE(s);
    const struct route_rt *a = match(s, "GET", "own.test", "/a", novars);
    REQUIRE(a);
    REQUIRE(a->up);
    struct upstream_node n;
    REQUIRE(upstream_pick(a->up, NULL, 0, NULL, &n) == 0);
    CHECK(n.port == 3);
    CHECK(a->enable_websocket); /* taken from the service when the route has none */
    CHECK(match(s, "GET", "svc.test", "/a", novars) == NULL);
    const struct route_rt *b = match(s, "GET", "svc.test", "/b", novars);
    REQUIRE(b);
    REQUIRE(upstream_pick(b->up, NULL, 0, NULL, &n) == 0);
    CHECK(n.port == 2); /* the service's inline upstream */
    snapshot_unref(s);
}

static void test_shared_upstream_is_one_balancer(void)
{
    json_t *r = res("{"
                    "\"/apisix/upstreams/1\":{\"nodes\":{\"127.0.0.1:1\":1,\"127.0.0.1:2\":1}},"
                    "\"/apisix/routes/a\":{\"uri\":\"/a\",\"upstream_id\":\"1\"},"
                    "\"/apisix/routes/b\":{\"uri\":\"/b\",\"upstream_id\":1}}");
    struct snapshot *s = snapshot_build(r, 1);
    json_decref(r);
    REQUIRE(s);
    const struct route_rt *a = match(s, "GET", NULL, "/a", novars);
    const struct route_rt *b = match(s, "GET", NULL, "/b", novars);
    REQUIRE(a && b);
    CHECK(a->up == b->up); /* round robin state is shared across routes, as nginx */
    struct upstream_node n1, n2;
    REQUIRE(upstream_pick(a->up, NULL, 0, NULL, &n1) == 0);
    REQUIRE(upstream_pick(b->up, NULL, 0, NULL, &n2) == 0);
    CHECK(n1.port != n2.port);
    snapshot_unref(s);
}

/* Many upstreams and routes (the index that resolves upstream_id, arrays
 * that grow while compiling): every route gets the upstream it names, an
 * inline upstream is its route's own, a missing id gives no upstream. */
static void test_many_routes_resolve_their_upstreams(void)
{
    enum { N = 3000 };
    json_t *r = json_object();
    char key[64], node[32], id[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "/apisix/upstreams/u%d", i);
        snprintf(node, sizeof(node), "127.0.0.1:%d", 1000 + i);
        json_object_set_new(r, key, json_pack("{s:s, s:{s:i}}", "type", "roundrobin", "nodes",
                                              node, 1));
    }
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "/apisix/routes/r%d", i);
        snprintf(node, sizeof(node), "/r%d", i);
        snprintf(id, sizeof(id), "u%d", N - 1 - i);
        json_object_set_new(r, key, json_pack("{s:s, s:s}", "uri", node, "upstream_id", id));
    }
    json_object_set_new(r, "/apisix/routes/inline",
                        json_pack("{s:s, s:{s:{s:i}}}", "uri", "/inline", "upstream", "nodes",
                                  "127.0.0.1:9", 1));
    json_object_set_new(r, "/apisix/routes/missing",
                        json_pack("{s:s, s:s}", "uri", "/missing", "upstream_id", "nope"));
    struct snapshot *s = snapshot_build(r, 7);
    json_decref(r);
    REQUIRE(s);
    CHECK(s->nroutes == N + 2);
    CHECK(s->nupstreams == N + 1);
    int wrong = 0;
    for (int i = 0; i < N; i++) {
        char path[32];
        snprintf(path, sizeof(path), "/r%d", i);
        const struct route_rt *rt = match(s, "GET", NULL, path, novars);
        struct upstream_node n;
        snprintf(id, sizeof(id), "u%d", N - 1 - i);
        if (!rt || !rt->up || strcmp(rt->up->id, id) != 0 ||
            upstream_pick(rt->up, NULL, 0, NULL, &n) != 0 || n.port != 1000 + N - 1 - i)
            wrong++;
    }
    CHECK(wrong == 0);
    const struct route_rt *in = match(s, "GET", NULL, "/inline", novars);
    REQUIRE(in && in->up);
    CHECK_STREQ(in->up->id, "route/inline");
    const struct route_rt *mi = match(s, "GET", NULL, "/missing", novars);
    REQUIRE(mi);
    CHECK(mi->up == NULL);
    snapshot_unref(s);
}

static void test_timeouts_route_over_upstream_over_default(void)
{
    json_t *r = res("{"
                    "\"/apisix/upstreams/1\":{\"nodes\":{\"127.0.0.1:1\":1},"
                    "  \"timeout\":{\"connect\":2,\"send\":3,\"read\":4}},"
                    "\"/apisix/routes/a\":{\"uri\":\"/a\",\"upstream_id\":\"1\",\"timeout\":{\"read\":0.5}},"
                    "\"/apisix/routes/b\":{\"uri\":\"/b\",\"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}}}");
    struct snapshot *s = snapshot_build(r, 1);
    json_decref(r);
    REQUIRE(s);
    const struct route_rt *a = match(s, "GET", NULL, "/a", novars);
    const struct route_rt *b = match(s, "GET", NULL, "/b", novars);
    REQUIRE(a && b);
    CHECK(a->timeout.connect_ms == 2000);
    CHECK(a->timeout.send_ms == 3000);
    CHECK(a->timeout.read_ms == 500);
    CHECK(b->timeout.connect_ms == 60000 && b->timeout.read_ms == 60000);
    snapshot_unref(s);
}

static void test_chash_keys(void)
{
    json_t *r = res("{"
                    "\"/apisix/routes/v\":{\"uri\":\"/v\",\"upstream\":{\"type\":\"chash\",\"key\":\"arg_device\","
                    "  \"nodes\":{\"127.0.0.1:1\":1}}},"
                    "\"/apisix/routes/h\":{\"uri\":\"/h\",\"upstream\":{\"type\":\"chash\",\"hash_on\":\"header\","
                    "  \"key\":\"X-Device\",\"nodes\":{\"127.0.0.1:1\":1}}},"
                    "\"/apisix/routes/c\":{\"uri\":\"/c\",\"upstream\":{\"type\":\"chash\","
                    "  \"hash_on\":\"vars_combinations\",\"key\":\"$host-$arg_device\","
                    "  \"nodes\":{\"127.0.0.1:1\":1}}}}");
    struct snapshot *s = snapshot_build(r, 1);
    json_decref(r);
    REQUIRE(s);
    const char *vars[] = {"arg_device", "d42", "http_x_device", "hdr7", "host", "h.test",
                          "remote_addr", "10.1.2.3", NULL};
    struct route_query q = {.method = "GET", .path = "/v", .path_len = 2, .var = var,
                            .var_ud = vars};
    char buf[128];
    const struct route_rt *v = snapshot_match(s, &q);
    REQUIRE(v);
    size_t n = snapshot_hash_key(v->up, &q, buf, sizeof(buf));
    CHECK(n == 3 && memcmp(buf, "d42", 3) == 0);
    q.path = "/h";
    const struct route_rt *h = snapshot_match(s, &q);
    REQUIRE(h);
    n = snapshot_hash_key(h->up, &q, buf, sizeof(buf));
    CHECK(n == 4 && memcmp(buf, "hdr7", 4) == 0);
    q.path = "/c";
    const struct route_rt *c = snapshot_match(s, &q);
    REQUIRE(c);
    n = snapshot_hash_key(c->up, &q, buf, sizeof(buf));
    buf[n] = '\0';
    CHECK_STREQ(buf, "h.test-d42");
    /* An empty key falls back to remote_addr, as APISIX. */
    const char *none[] = {"remote_addr", "10.1.2.3", NULL};
    q.var_ud = none;
    q.path = "/v";
    n = snapshot_hash_key(v->up, &q, buf, sizeof(buf));
    buf[n] = '\0';
    CHECK_STREQ(buf, "10.1.2.3");
    snapshot_unref(s);
}

static void test_bad_resources_are_skipped_not_fatal(void)
{
    /* A worker must serve what it can: one route it cannot compile (a route
     * without uri, an upstream with a bad node) does not take the others down. */
    json_t *r = res("{"
                    "\"/apisix/upstreams/bad\":{\"nodes\":{\"not an address\":1}},"
                    "\"/apisix/routes/bad\":{\"upstream_id\":\"bad\"},"
                    "\"/apisix/routes/dangling\":{\"uri\":\"/d\",\"upstream_id\":\"missing\"},"
                    "\"/apisix/routes/ok\":{\"uri\":\"/ok\",\"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}}}");
    struct snapshot *s = snapshot_build(r, 3);
    json_decref(r);
    REQUIRE(s);
    CHECK(match(s, "GET", NULL, "/ok", novars) != NULL);
    const struct route_rt *d = match(s, "GET", NULL, "/d", novars);
    CHECK(d != NULL && d->up == NULL); /* served as 502, not dropped */
    snapshot_unref(s);
}

static void test_refcount_keeps_old_snapshot_alive(void)
{
    json_t *r = res("{\"/apisix/routes/a\":{\"uri\":\"/a\",\"upstream\":{\"nodes\":{\"127.0.0.1:1\":1}}}}");
    struct snapshot *s = snapshot_build(r, 1);
    json_decref(r);
    REQUIRE(s);
    struct snapshot *held = snapshot_ref(s); /* a request in flight */
    snapshot_unref(s);                       /* the worker swapped it out */
    const struct route_rt *a = match(held, "GET", NULL, "/a", novars);
    CHECK(a != NULL); /* still usable: under ASan a use-after-free would fail here */
    snapshot_unref(held);
}

static void test_plugin_config_wins_over_service(void)
{
    /* APISIX: route > plugin_config > service. */
    json_t *r = res("{"
                    "\"/apisix/services/s1\":{\"plugins\":{\"cors\":{\"from\":\"service\"},"
                    "  \"proxy-rewrite\":{\"uri\":\"/svc\"}}},"
                    "\"/apisix/plugin_configs/p1\":{\"plugins\":{\"cors\":{\"from\":\"pc\"}}},"
                    "\"/apisix/routes/r1\":{\"uri\":\"/a\",\"service_id\":\"s1\","
                    "  \"plugin_config_id\":\"p1\"}}");
    struct snapshot *s = snapshot_build(r, 1);
    json_decref(r);
    REQUIRE(s && s->nroutes == 1);
    const json_t *p = s->routes[0]->plugins;
    CHECK_STREQ(json_string_value(json_object_get(json_object_get(p, "cors"), "from")), "pc");
    CHECK_STREQ(json_string_value(json_object_get(json_object_get(p, "proxy-rewrite"), "uri")),
                "/svc");
    snapshot_unref(s);
}

static const char *chain_names(const struct plugin_chain *c, char *buf, size_t len)
{
    buf[0] = '\0';
    for (size_t i = 0; c && i < c->n; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, len - l, "%s%s", i ? "," : "", c->inst[i].def->name);
    }
    return buf;
}

static void test_chains_only_in_workers_in_priority_order(void)
{
    json_t *r =
        res("{"
            "\"/apisix/routes/1\":{\"uri\":\"/a\",\"plugins\":{"
            "  \"proxy-rewrite\":{\"uri\":\"/x\"},\"cors\":{},"
            "  \"no-such-plugin\":{\"_meta\":{\"disable\":true}}}},"
            "\"/apisix/routes/2\":{\"uri\":\"/b\",\"plugins\":{"
            "  \"cors\":{\"_meta\":{\"disable\":true}},"
            "  \"proxy-rewrite\":{\"regex_uri\":[\"(\",\"/x\"]}}},"
            "\"/apisix/routes/3\":{\"uri\":\"/c\"},"
            "\"/apisix/global_rules/10\":{\"plugins\":{\"proxy-rewrite\":{\"uri\":\"/g10\"}}},"
            "\"/apisix/global_rules/2\":{\"plugins\":{\"proxy-rewrite\":{\"uri\":\"/g2\"}}},"
            "\"/apisix/global_rules/1\":{\"plugins\":{\"proxy-rewrite\":{\"uri\":\"/g1\"}}},"
            "\"/apisix/global_rules/9\":{\"plugins\":{}},"
            "\"/apisix/stream_routes/s1\":{\"server_port\":1883,\"plugins\":{"
            "  \"mqtt-proxy\":{\"protocol_name\":\"MQTT\",\"protocol_level\":4}},"
            "  \"upstream\":{\"nodes\":{\"127.0.0.1:1883\":1}}}}");
    REQUIRE(r);
    /* The master (no plugin_env): no plugin code runs, no chain is made. */
    CHECK(plugin_env() == NULL);
    struct snapshot *s = snapshot_build(r, 1);
    REQUIRE(s && s->nroutes == 3);
    for (size_t i = 0; i < s->nroutes; i++)
        CHECK(s->routes[i]->chain == NULL);
    CHECK(s->ngchains == 0);
    CHECK(json_array_size(s->global_rules) == 4);
    snapshot_unref(s);

    struct plugin_env env = {.worker_id = 0, .nworkers = 1};
    plugin_env_set(&env);
    CHECK(plugin_env() != NULL && plugin_env()->nworkers == 1);
    s = snapshot_build(r, 2);
    json_decref(r);
    REQUIRE(s);
    char b[256];
    for (size_t i = 0; i < s->nroutes; i++) {
        const struct route_rt *rt = s->routes[i];
        if (strcmp(rt->id, "1") == 0) {
            /* highest priority first; an unknown but disabled plugin is off */
            CHECK_STREQ(chain_names(rt->chain, b, sizeof(b)), "cors,proxy-rewrite");
            CHECK(rt->chain->unavailable == NULL);
            CHECK(rt->chain->inst[1].conf == json_object_get(rt->plugins, "proxy-rewrite"));
        } else if (strcmp(rt->id, "2") == 0) {
            /* cors disabled, proxy-rewrite fails to create: the route
             * refuses (fails closed), with no instance left */
            REQUIRE(rt->chain != NULL);
            CHECK_STREQ(rt->chain->unavailable, "proxy-rewrite");
            CHECK(rt->chain->n == 0);
        } else {
            CHECK(rt->chain == NULL); /* 3: no plugins */
        }
    }
    /* Global rules in id order (numeric), the empty one without a chain. */
    REQUIRE(s->ngchains == 3);
    const char *want[] = {"/g1", "/g2", "/g10"};
    for (size_t i = 0; i < 3; i++)
        CHECK_STREQ(json_string_value(json_object_get(s->gchains[i]->inst[0].conf, "uri")),
                    want[i]);
    /* A stream route with only mqtt-proxy (handled by the stream proxy): no chain. */
    REQUIRE(s->nsroutes == 1);
    CHECK(s->sroutes[0]->chain == NULL);
    snapshot_unref(s); /* the chains' destroy runs (ASan checks the frees) */
}

/* Failing closed (plugin.h): a plugin that cannot run makes its owner
 * refuse; plugins off or without code on purpose do not. Runs after
 * plugin_env_set (workers only build chains). */
static void test_plugin_that_cannot_run_fails_closed(void)
{
    json_t *r = res("{"
                    /* create fails (limit-conn with conn 0, which its schema forbids:
                     * a configuration from elsewhere), beside plugins that work */
                    "\"/apisix/routes/c\":{\"uri\":\"/c\",\"plugins\":{"
                    "  \"key-auth\":{},\"limit-conn\":{\"conn\":0,\"burst\":0,"
                    "  \"default_conn_delay\":0.1,\"key\":\"remote_addr\"},\"prometheus\":{}}},"
                    /* unknown (a newer control plane) */
                    "\"/apisix/routes/u\":{\"uri\":\"/u\",\"plugins\":{"
                    "  \"key-auth\":{},\"jwt-auth-v9\":{}}},"
                    /* a stream-only plugin on an HTTP route: cannot run there */
                    "\"/apisix/routes/s\":{\"uri\":\"/s\",\"plugins\":{\"mqtt-auth\":{}}},"
                    /* the plugin comes from the service: the route refuses too */
                    "\"/apisix/services/sv\":{\"plugins\":{\"ip-restriction\":{}}},"
                    "\"/apisix/routes/v\":{\"uri\":\"/v\",\"service_id\":\"sv\"},"
                    "\"/apisix/routes/ok\":{\"uri\":\"/ok\",\"plugins\":{\"prometheus\":{}}},"
                    "\"/apisix/global_rules/1\":{\"plugins\":{\"prometheus\":{}}},"
                    "\"/apisix/global_rules/2\":{\"plugins\":{\"limit-count\":{\"count\":0,"
                    "  \"time_window\":60,\"key\":\"remote_addr\"}}},"
                    /* stream: create fails -> refuses; mqtt-proxy alone (no code on
                     * purpose) and an HTTP plugin from a service are fine */
                    "\"/apisix/stream_routes/bad\":{\"server_port\":1883,\"plugins\":{"
                    "  \"mqtt-proxy\":{},\"limit-conn\":{\"conn\":-1,\"burst\":0,"
                    "  \"default_conn_delay\":0.1,\"key\":\"remote_addr\"}},"
                    "  \"upstream\":{\"nodes\":{\"127.0.0.1:1883\":1}}},"
                    "\"/apisix/stream_routes/unk\":{\"server_port\":1884,\"plugins\":{"
                    "  \"mqtt-proxy\":{},\"mqtt-acl\":{}},"
                    "  \"upstream\":{\"nodes\":{\"127.0.0.1:1883\":1}}},"
                    "\"/apisix/services/hs\":{\"plugins\":{\"key-auth\":{}}},"
                    "\"/apisix/stream_routes/good\":{\"server_port\":1885,\"service_id\":\"hs\","
                    "  \"plugins\":{\"mqtt-proxy\":{}},"
                    "  \"upstream\":{\"nodes\":{\"127.0.0.1:1883\":1}}}"
                    "}");
    REQUIRE(r);
    REQUIRE(plugin_env() != NULL);
    struct snapshot *s = snapshot_build(r, 3);
    json_decref(r);
    REQUIRE(s);
    int seen = 0;
    for (size_t i = 0; i < s->nroutes; i++) {
        const struct route_rt *rt = s->routes[i];
        const char *want = strcmp(rt->id, "c") == 0   ? "limit-conn"
                           : strcmp(rt->id, "u") == 0 ? "jwt-auth-v9"
                           : strcmp(rt->id, "s") == 0 ? "mqtt-auth"
                           : strcmp(rt->id, "v") == 0 ? "ip-restriction"
                                                      : NULL;
        REQUIRE(rt->chain != NULL);
        if (want) {
            CHECK_STREQ(rt->chain->unavailable ? rt->chain->unavailable : "(none)", want);
            CHECK(rt->chain->n == 0); /* key-auth, prometheus made and freed (ASan) */
        } else {
            CHECK(rt->chain->unavailable == NULL);
            CHECK(rt->chain->n == 1);
        }
        seen++;
    }
    CHECK(seen == 5);
    /* both global rules have a chain; the second refuses */
    REQUIRE(s->ngchains == 2);
    CHECK(s->gchains[0]->unavailable == NULL && s->gchains[0]->n == 1);
    CHECK_STREQ(s->gchains[1]->unavailable ? s->gchains[1]->unavailable : "(none)", "limit-count");
    REQUIRE(s->nsroutes == 3);
    for (size_t i = 0; i < s->nsroutes; i++) {
        const struct stream_route_rt *sr = s->sroutes[i];
        if (strcmp(sr->id, "bad") == 0) {
            REQUIRE(sr->chain != NULL);
            CHECK_STREQ(sr->chain->unavailable, "limit-conn");
        } else if (strcmp(sr->id, "unk") == 0) {
            REQUIRE(sr->chain != NULL);
            CHECK_STREQ(sr->chain->unavailable, "mqtt-acl");
        } else {
            CHECK_STREQ(sr->id, "good");
            CHECK(sr->chain == NULL); /* mqtt-proxy only; key-auth ignored */
        }
    }
    snapshot_unref(s);
}

static void test_consumer_index(void)
{
    json_t *r = res("{"
                    "\"/apisix/consumers/jack\":{\"username\":\"jack\",\"plugins\":{"
                    "  \"key-auth\":{\"key\":\"k-jack\"},"
                    "  \"basic-auth\":{\"username\":\"jb\",\"password\":\"pw\"}}},"
                    "\"/apisix/consumers/rose\":{\"username\":\"rose\",\"plugins\":{"
                    "  \"key-auth\":{\"key\":\"k-rose\"},"
                    "  \"mqtt-auth\":{\"cert_cn\":\"dev1\",\"cert_subject\":\"CN=dev1,O=Acme\"}}},"
                    "\"/apisix/consumers/bob\":{\"username\":\"bob\"},"
                    "\"/apisix/routes/1\":{\"uri\":\"/a\"}}");
    struct snapshot *s = snapshot_build(r, 1);
    json_decref(r);
    REQUIRE(s && s->nconsumers == 3);
    const struct consumer_rt *c = snapshot_consumer_by(s, "key-auth", "k-jack");
    REQUIRE(c);
    CHECK_STREQ(c->username, "jack");
    c = snapshot_consumer_by(s, "key-auth", "k-rose");
    CHECK(c && strcmp(c->username, "rose") == 0);
    c = snapshot_consumer_by(s, "basic-auth", "jb");
    CHECK(c && strcmp(c->username, "jack") == 0);
    c = snapshot_consumer_by(s, "mqtt-auth", "dev1");
    CHECK(c && strcmp(c->username, "rose") == 0);
    c = snapshot_consumer_by(s, "mqtt-auth", "CN=dev1,O=Acme");
    CHECK(c && strcmp(c->username, "rose") == 0);
    CHECK(snapshot_consumer_by(s, "key-auth", "jb") == NULL);    /* other plugin's field */
    CHECK(snapshot_consumer_by(s, "basic-auth", "pw") == NULL);  /* passwords not indexed */
    CHECK(snapshot_consumer_by(s, "key-auth", "k-nobody") == NULL);
    CHECK(snapshot_consumer_by(s, "key-auth", NULL) == NULL);
    c = snapshot_consumer(s, "bob");
    REQUIRE(c);
    CHECK(json_is_object(c->plugins) && json_object_size(c->plugins) == 0);
    CHECK(c->conf && json_is_object(c->conf));
    CHECK(snapshot_consumer(s, "nobody") == NULL);
    c = snapshot_consumer(s, "jack");
    CHECK(c && json_is_object(json_object_get(c->plugins, "key-auth")));
    snapshot_unref(s);
    /* No consumers at all. */
    r = res("{\"/apisix/routes/1\":{\"uri\":\"/a\"}}");
    s = snapshot_build(r, 2);
    json_decref(r);
    REQUIRE(s);
    CHECK(snapshot_consumer(s, "jack") == NULL);
    CHECK(snapshot_consumer_by(s, "key-auth", "k-jack") == NULL);
    snapshot_unref(s);
}

int main(void)
{
    RUN(test_route_plugins_merge_over_service_and_plugin_config);
    RUN(test_route_fields_win_over_service);
    RUN(test_shared_upstream_is_one_balancer);
    RUN(test_many_routes_resolve_their_upstreams);
    RUN(test_timeouts_route_over_upstream_over_default);
    RUN(test_chash_keys);
    RUN(test_bad_resources_are_skipped_not_fatal);
    RUN(test_refcount_keeps_old_snapshot_alive);
    RUN(test_plugin_config_wins_over_service);
    RUN(test_consumer_index);
    RUN(test_chains_only_in_workers_in_priority_order); /* sets plugin_env */
    RUN(test_plugin_that_cannot_run_fails_closed);      /* needs plugin_env */
    return check_summary();
}
