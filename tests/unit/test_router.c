/*
 * Unit tests for dataplane/router.c and dataplane/expr.c: APISIX's route
 * matching order (exact, longest prefix, fallback, priority), hosts and
 * wildcards, methods, client ranges, every vars operator, status, uris lists,
 * 10,000 routes, and bad input reported without crashing.
 */
#include "check.h"
#include "expr.h"
#include "router.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ------------------------------------------------------------------ */

/* Request variables for the tests: name=value pairs; a NULL value is absent. */
struct vars {
    const char *kv[32]; /* name, value, name, value, ... NULL-terminated */
};

static const char *var_fn(void *ud, const char *name, size_t *len)
{
    const struct vars *v = ud;
    for (int i = 0; v && v->kv[i]; i += 2) {
        if (strcmp(v->kv[i], name) == 0) {
            if (v->kv[i + 1])
                *len = strlen(v->kv[i + 1]);
            return v->kv[i + 1];
        }
    }
    return NULL;
}

#define ID(i) ((void *)(intptr_t)(i))

/* Adds a route from JSON text; its payload is id. Returns router_add's result. */
static int add(struct router *r, int id, const char *json)
{
    json_error_t jerr;
    json_t *j = json_loads(json, 0, &jerr);
    if (!j) {
        fprintf(stderr, "    bad test JSON: %s: %s\n", json, jerr.text);
        return -999;
    }
    char err[256] = "";
    int rc = router_add(r, j, ID(id), err, sizeof(err));
    if (rc)
        fprintf(stderr, "    router_add(%s) = %d: %s\n", json, rc, err);
    json_decref(j);
    return rc;
}

/* Adds a route that must be refused; returns the error message (static buffer). */
static const char *add_err(struct router *r, const char *json, int *rc)
{
    static char err[256];
    err[0] = '\0';
    json_t *j = json ? json_loads(json, JSON_DECODE_ANY, NULL) : NULL;
    *rc = router_add(r, j, ID(1), err, sizeof(err));
    json_decref(j);
    return err;
}

/* Builds a router from routes; route i gets payload i + 1. */
static struct router *mk(const char *const *routes, int n)
{
    struct router *r = router_new();
    for (int i = 0; i < n; i++) {
        if (add(r, i + 1, routes[i]) != 0) {
            router_free(r);
            return NULL;
        }
    }
    if (router_build(r) != 0) {
        router_free(r);
        return NULL;
    }
    return r;
}

/* Matches and returns the payload id (0 = none). ip may be NULL; vars may be NULL. */
static int match_full(const struct router *r, const char *method, const char *host,
                      const char *path, const char *ip, struct vars *v)
{
    struct router_req req;
    router_req_init(&req, method, host, path);
    struct sockaddr_in s4;
    struct sockaddr_in6 s6;
    memset(&s4, 0, sizeof(s4));
    memset(&s6, 0, sizeof(s6));
    if (ip && inet_pton(AF_INET, ip, &s4.sin_addr) == 1) {
        s4.sin_family = AF_INET;
        req.remote = (struct sockaddr *)&s4;
    } else if (ip && inet_pton(AF_INET6, ip, &s6.sin6_addr) == 1) {
        s6.sin6_family = AF_INET6;
        req.remote = (struct sockaddr *)&s6;
    }
    req.var = var_fn;
    req.ud = v;
    return (int)(intptr_t)router_match(r, &req);
}

static int match(const struct router *r, const char *method, const char *host, const char *path)
{
    return match_full(r, method, host, path, "127.0.0.1", NULL);
}

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Compiles a vars rule from JSON text and evaluates it; -1 when it does not compile. */
static int eval(const char *rule, struct vars *v)
{
    json_t *j = json_loads(rule, 0, NULL);
    if (!j) {
        fprintf(stderr, "    bad test JSON: %s\n", rule);
        return -1;
    }
    struct expr *e;
    char err[256];
    int rc = expr_compile(j, &e, err, sizeof(err));
    json_decref(j);
    if (rc) {
        fprintf(stderr, "    expr_compile(%s): %s\n", rule, err);
        return -1;
    }
    int res = expr_eval(e, var_fn, v) ? 1 : 0;
    expr_free(e);
    return res;
}

/* Compiles a rule that must be refused; returns the message (static buffer). */
static const char *expr_err(const char *rule)
{
    static char err[256];
    err[0] = '\0';
    json_t *j = json_loads(rule, 0, NULL);
    struct expr *e = NULL;
    int rc = expr_compile(j, &e, err, sizeof(err));
    json_decref(j);
    if (rc != -EINVAL) {
        expr_free(e);
        snprintf(err, sizeof(err), "(compiled, rc %d)", rc);
    }
    return err;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_exact_vs_prefix(void)
{
    const char *routes[] = {
        "{\"uri\": \"/a/*\"}",
        "{\"uri\": \"/a/b\"}",
        "{\"uri\": \"/blog/bar*\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/a/b") == 2);
    CHECK(match(r, "GET", NULL, "/a/c") == 1);
    CHECK(match(r, "GET", NULL, "/a/b/c") == 1);
    CHECK(match(r, "GET", NULL, "/a/") == 1);
    CHECK(match(r, "GET", NULL, "/a") == 0); /* "/a/" is not a prefix of "/a" */
    CHECK(match(r, "GET", NULL, "/blog/bar") == 3);
    CHECK(match(r, "GET", NULL, "/blog/barbaz/x") == 3);
    CHECK(match(r, "GET", NULL, "/blog/ba") == 0);
    CHECK(match(r, "GET", NULL, "") == 0);
    router_free(r);
}

static void test_longest_prefix(void)
{
    /* The table of APISIX's doc/router-radixtree.md. */
    const char *routes[] = {
        "{\"uri\": \"/blog/foo/*\"}",
        "{\"uri\": \"/blog/foo/a/*\"}",
        "{\"uri\": \"/blog/foo/c/*\"}",
        "{\"uri\": \"/blog/foo/bar\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/blog/foo/bar") == 4);
    CHECK(match(r, "GET", NULL, "/blog/foo/a/b/c") == 2);
    CHECK(match(r, "GET", NULL, "/blog/foo/c/d") == 3);
    CHECK(match(r, "GET", NULL, "/blog/foo/gloo") == 1);
    CHECK(match(r, "GET", NULL, "/blog/foo/bar/x") == 1);
    CHECK(match(r, "GET", NULL, "/blog/bar") == 0);
    router_free(r);

    const char *catchall[] = {"{\"uri\": \"/*\"}", "{\"uri\": \"/x/*\"}", "{\"uri\": \"*\"}"};
    r = mk(catchall, COUNT(catchall));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/") == 1);
    CHECK(match(r, "GET", NULL, "/anything/at/all") == 1);
    CHECK(match(r, "GET", NULL, "/x/y") == 2);
    CHECK(match(r, "GET", NULL, "nothing-slash") == 3);
    router_free(r);
}

static void test_fallback(void)
{
    const char *routes[] = {
        "{\"uri\": \"/a/b\", \"methods\": [\"POST\"]}",
        "{\"uri\": \"/a/*\", \"remote_addrs\": [\"10.0.0.0/8\"]}",
        "{\"uri\": \"/a/*\", \"vars\": [[\"arg_v\", \"==\", \"2\"]]}",
        "{\"uri\": \"/*\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match_full(r, "POST", NULL, "/a/b", "127.0.0.1", NULL) == 1);
    /* exact fails on method -> same-length prefix list -> shorter prefix */
    CHECK(match_full(r, "GET", NULL, "/a/b", "10.1.2.3", NULL) == 2);
    struct vars v = {{"arg_v", "2", NULL}};
    CHECK(match_full(r, "GET", NULL, "/a/b", "127.0.0.1", &v) == 3);
    CHECK(match_full(r, "GET", NULL, "/a/b", "127.0.0.1", NULL) == 4);
    CHECK(match_full(r, "GET", NULL, "/a/b", NULL, NULL) == 4);
    router_free(r);
}

static void test_priority(void)
{
    const char *routes[] = {
        "{\"uri\": \"/p\", \"priority\": 0}",
        "{\"uri\": \"/p\", \"priority\": 10, \"methods\": [\"POST\"]}",
        "{\"uri\": \"/p\", \"priority\": 5}",
        "{\"uri\": \"/p\", \"priority\": 5}",
        "{\"uri\": \"/q/*\", \"priority\": 0}",
        "{\"uri\": \"/*\", \"priority\": 100}",
        "{\"uri\": \"/p\", \"priority\": -1}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "POST", NULL, "/p") == 2);
    CHECK(match(r, "GET", NULL, "/p") == 3); /* 5 before 0; 3 before 4: order added */
    /* priority only orders routes on the same uri: the longer prefix still wins */
    CHECK(match(r, "GET", NULL, "/q/x") == 5);
    router_free(r);

    /* Same prefix key, same priority: the longer uri as written goes first. */
    const char *same_key[] = {
        "{\"uri\": \"/g/*\"}",
        "{\"uri\": \"/g/*/edit\"}",
    };
    r = mk(same_key, COUNT(same_key));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/g/1/edit") == 2);
    CHECK(match(r, "GET", NULL, "/g/1/view") == 1);
    router_free(r);
}

static void test_glob_uris(void)
{
    const char *routes[] = {
        "{\"uri\": \"/a/*/b\"}",
        "{\"uri\": \"/u/*/:op\"}",
        "{\"uri\": \"/d/*/x.y\"}",
        "{\"uri\": \"/user/:id\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/a/x/b") == 1);
    CHECK(match(r, "GET", NULL, "/a/x/y/b") == 1);
    CHECK(match(r, "GET", NULL, "/a/x/c") == 0);
    CHECK(match(r, "GET", NULL, "/a/x/bb") == 0);
    CHECK(match(r, "GET", NULL, "/u/1/2/edit") == 2);
    CHECK(match(r, "GET", NULL, "/u/1/") == 0);
    CHECK(match(r, "GET", NULL, "/d/q/x.y") == 3);
    CHECK(match(r, "GET", NULL, "/d/q/xzy") == 0); /* '.' is literal */
    /* without a '*' a ':' is literal, as with APISIX's no_param_match */
    CHECK(match(r, "GET", NULL, "/user/:id") == 4);
    CHECK(match(r, "GET", NULL, "/user/42") == 0);
    router_free(r);
}

static void test_hosts(void)
{
    const char *routes[] = {
        "{\"uri\": \"/h\", \"host\": \"Foo.com\"}",
        "{\"uri\": \"/h\", \"hosts\": [\"*.bar.com\", \"baz.com\"]}",
        "{\"uri\": \"/h\", \"priority\": 100}",
        "{\"uri\": \"/w/*\", \"host\": \"*.com\"}",
        "{\"uri\": \"/w/*\", \"host\": \"*.x.com\", \"methods\": [\"POST\"]}",
        "{\"uri\": \"/w/*\", \"host\": \"a.x.com\", \"methods\": [\"PUT\"]}",
        "{\"uri\": \"/*\", \"host\": \"any.org\"}",
        "{\"uri\": \"/v6\", \"host\": \"[::1]\"}",
        "{\"uri\": \"/h\", \"host\": \"foo.com:8080\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "GET", "foo.com", "/h") == 1);
    CHECK(match(r, "GET", "FOO.COM", "/h") == 1);
    CHECK(match(r, "GET", "foo.com:9080", "/h") == 1); /* port stripped */
    CHECK(match(r, "GET", "foo.com.", "/h") == 1);     /* trailing dot, as nginx's $host */
    CHECK(match(r, "GET", "foo.com:8080", "/h") == 9); /* port-qualified host first */
    CHECK(match(r, "GET", "a.bar.com", "/h") == 2);
    CHECK(match(r, "GET", "a.b.bar.com", "/h") == 2);
    CHECK(match(r, "GET", "bar.com", "/h") == 3); /* "*.bar.com" needs the dot */
    CHECK(match(r, "GET", "baz.com:80", "/h") == 2);
    CHECK(match(r, "GET", "other.org", "/h") == 3);
    CHECK(match(r, "GET", NULL, "/h") == 3);
    /* exact host, then the longest wildcard, then shorter ones, falling back */
    CHECK(match(r, "PUT", "a.x.com", "/w/1") == 6);
    CHECK(match(r, "POST", "a.x.com", "/w/1") == 5);
    CHECK(match(r, "GET", "a.x.com", "/w/1") == 4);
    /* a host route with a prefix beats a host-less exact route of higher priority */
    CHECK(match(r, "GET", "any.org", "/h") == 7);
    CHECK(match(r, "GET", "[::1]:9080", "/v6") == 8);
    CHECK(match(r, "GET", "[::1]", "/v6") == 8);

    struct router_req req;
    struct router_match m;
    router_req_init(&req, "GET", "q.x.com", "/w/zz");
    REQUIRE(router_match_ex(r, &req, &m) == 0);
    CHECK(m.payload == ID(4));
    CHECK_STREQ(m.uri, "/w/*");
    CHECK_STREQ(m.host, "*.com");
    router_req_init(&req, "GET", "nowhere.net", "/h");
    REQUIRE(router_match_ex(r, &req, &m) == 0);
    CHECK(m.host == NULL);
    router_free(r);

    const char *star[] = {"{\"uri\": \"/s\", \"host\": \"*\"}", "{\"uri\": \"/s\"}"};
    r = mk(star, COUNT(star));
    REQUIRE(r);
    CHECK(match(r, "GET", "whatever.example", "/s") == 1);
    CHECK(match(r, "GET", NULL, "/s") == 2);
    router_free(r);
}

static void test_methods(void)
{
    const char *routes[] = {
        "{\"uri\": \"/m\", \"methods\": [\"GET\", \"POST\"]}",
        "{\"uri\": \"/m\", \"methods\": [\"PURGE\"]}",
        "{\"uri\": \"/n\", \"methods\": []}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/m") == 1);
    CHECK(match(r, "POST", NULL, "/m") == 1);
    CHECK(match(r, "PURGE", NULL, "/m") == 2);
    CHECK(match(r, "PUT", NULL, "/m") == 0);
    CHECK(match(r, "get", NULL, "/m") == 0);
    CHECK(match(r, "BREW", NULL, "/m") == 0);
    CHECK(match(r, "BREW", NULL, "/n") == 3);
    CHECK(match(r, NULL, NULL, "/n") == 3);

    router_free(r);

    r = router_new();
    int rc;
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/m\", \"methods\": [\"get\"]}", &rc), "unknown method");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/m\", \"methods\": \"GET\"}", &rc), "array");
    CHECK(rc == -EINVAL);
    router_free(r);
}

static void test_remote_addrs(void)
{
    const char *routes[] = {
        "{\"uri\": \"/r\", \"remote_addr\": \"192.168.1.10\"}",
        "{\"uri\": \"/r\", \"remote_addrs\": [\"10.0.0.0/8\", \"172.16.0.0/12\"]}",
        "{\"uri\": \"/r\", \"remote_addrs\": [\"::1\", \"fe80::/10\"]}",
        "{\"uri\": \"/r\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match_full(r, "GET", NULL, "/r", "192.168.1.10", NULL) == 1);
    CHECK(match_full(r, "GET", NULL, "/r", "192.168.1.11", NULL) == 4);
    CHECK(match_full(r, "GET", NULL, "/r", "10.200.0.1", NULL) == 2);
    CHECK(match_full(r, "GET", NULL, "/r", "172.31.255.255", NULL) == 2);
    CHECK(match_full(r, "GET", NULL, "/r", "172.32.0.1", NULL) == 4);
    CHECK(match_full(r, "GET", NULL, "/r", "::1", NULL) == 3);
    CHECK(match_full(r, "GET", NULL, "/r", "fe80::1234", NULL) == 3);
    CHECK(match_full(r, "GET", NULL, "/r", "2001:db8::1", NULL) == 4);
    CHECK(match_full(r, "GET", NULL, "/r", "::ffff:10.1.1.1", NULL) == 2); /* v4-mapped */
    CHECK(match_full(r, "GET", NULL, "/r", NULL, NULL) == 4);
    router_free(r);

    r = router_new();
    int rc;
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/r\", \"remote_addrs\": [\"10.0.0.0/33\"]}", &rc),
                   "10.0.0.0/33");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/r\", \"remote_addrs\": []}", &rc), "empty");
    CHECK(rc == -EINVAL);
    router_free(r);
}

static void test_vars_compare(void)
{
    struct vars v = {{"arg_name", "json", "arg_n", "10.0", "arg_hex", "0x10", "arg_empty", "",
                      "arg_word", "abc", "arg_sp", " 7 ", NULL}};
    /* == and ~= with strings, numbers and null (absent) */
    CHECK(eval("[[\"arg_name\", \"==\", \"json\"]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"==\", \"JSON\"]]", &v) == 0);
    CHECK(eval("[[\"arg_n\", \"==\", 10]]", &v) == 1);     /* tonumber("10.0") == 10 */
    CHECK(eval("[[\"arg_n\", \"==\", \"10\"]]", &v) == 0); /* string compare */
    CHECK(eval("[[\"arg_word\", \"==\", 10]]", &v) == 0);
    CHECK(eval("[[\"arg_none\", \"==\", null]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"==\", null]]", &v) == 0);
    CHECK(eval("[[\"arg_empty\", \"==\", \"\"]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"==\", true]]", &v) == 0);
    CHECK(eval("[[\"arg_name\", \"~=\", \"xml\"]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"~=\", \"json\"]]", &v) == 0);
    CHECK(eval("[[\"arg_none\", \"~=\", \"json\"]]", &v) == 1);
    CHECK(eval("[[\"arg_word\", \"~=\", 5]]", &v) == 1);
    CHECK(eval("[[\"arg_n\", \"~=\", 10]]", &v) == 0);
    /* ordering: both sides through tonumber, false when either is not a number */
    CHECK(eval("[[\"arg_n\", \">\", 9]]", &v) == 1);
    CHECK(eval("[[\"arg_n\", \">\", \"9.5\"]]", &v) == 1);
    CHECK(eval("[[\"arg_n\", \">\", 10]]", &v) == 0);
    CHECK(eval("[[\"arg_n\", \">=\", 10]]", &v) == 1);
    CHECK(eval("[[\"arg_n\", \"<\", 11]]", &v) == 1);
    CHECK(eval("[[\"arg_n\", \"<=\", 9]]", &v) == 0);
    CHECK(eval("[[\"arg_hex\", \">\", 15]]", &v) == 1); /* 0x10 = 16 */
    CHECK(eval("[[\"arg_sp\", \"==\", 7]]", &v) == 1);  /* whitespace allowed */
    CHECK(eval("[[\"arg_word\", \">\", 1]]", &v) == 0);
    CHECK(eval("[[\"arg_word\", \"<\", 1]]", &v) == 0);
    CHECK(eval("[[\"arg_none\", \"<\", 1]]", &v) == 0);
    CHECK(eval("[[\"arg_n\", \">\", \"x\"]]", &v) == 0);
    CHECK(eval("[[\"arg_n\", \">\", true]]", &v) == 0);
    /* [var, value] is [var, "==", value]; operators are case-insensitive */
    CHECK(eval("[[\"arg_name\", \"json\"]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"IN\", [\"json\"]]]", &v) == 1);
}

static void test_vars_regex_in_has_ip(void)
{
    struct vars v = {{"arg_name", "Json-v2", "http_x_list", "a, b,c ,d", "remote_addr",
                      "192.168.5.7", "arg_v6", "[::1]", "arg_num", "1", NULL}};
    CHECK(eval("[[\"arg_name\", \"~~\", \"^J[a-z]+-v\\\\d$\"]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"~~\", \"son\"]]", &v) == 1); /* search, not anchored */
    CHECK(eval("[[\"arg_name\", \"~~\", \"^json\"]]", &v) == 0);
    CHECK(eval("[[\"arg_name\", \"~*\", \"^json\"]]", &v) == 1);
    CHECK(eval("[[\"arg_none\", \"~~\", \".*\"]]", &v) == 0);
    CHECK(eval("[[\"arg_name\", \"!\", \"~~\", \"^J\"]]", &v) == 0);
    CHECK(eval("[[\"arg_name\", \"!\", \"~~\", \"^a\"]]", &v) == 1);
    CHECK(eval("[[\"arg_none\", \"!\", \"~~\", \"^a\"]]", &v) == 1);
    /* in: string elements only, as Lua compares "1" and 1 as different */
    CHECK(eval("[[\"arg_name\", \"in\", [\"x\", \"Json-v2\"]]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"in\", [\"x\", \"y\"]]]", &v) == 0);
    CHECK(eval("[[\"arg_num\", \"in\", [1, 2]]]", &v) == 0);
    CHECK(eval("[[\"arg_num\", \"in\", \"1\"]]", &v) == 0);
    CHECK(eval("[[\"arg_none\", \"in\", [\"x\"]]]", &v) == 0);
    CHECK(eval("[[\"arg_name\", \"!\", \"in\", [\"x\"]]]", &v) == 1);
    /* has: the variable as a comma-separated list */
    CHECK(eval("[[\"http_x_list\", \"has\", \"b\"]]", &v) == 1);
    CHECK(eval("[[\"http_x_list\", \"has\", \"c\"]]", &v) == 1);
    CHECK(eval("[[\"http_x_list\", \"has\", \"e\"]]", &v) == 0);
    CHECK(eval("[[\"arg_none\", \"has\", \"a\"]]", &v) == 0);
    /* ipmatch */
    CHECK(eval("[[\"remote_addr\", \"ipmatch\", [\"10.0.0.0/8\", \"192.168.0.0/16\"]]]", &v) == 1);
    CHECK(eval("[[\"remote_addr\", \"ipmatch\", \"192.168.5.7\"]]", &v) == 1);
    CHECK(eval("[[\"remote_addr\", \"ipmatch\", [\"10.0.0.0/8\"]]]", &v) == 0);
    CHECK(eval("[[\"remote_addr\", \"!\", \"ipmatch\", [\"10.0.0.0/8\"]]]", &v) == 1);
    CHECK(eval("[[\"arg_v6\", \"ipmatch\", [\"::1\"]]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"ipmatch\", [\"::1\"]]]", &v) == 0);
    CHECK(eval("[[\"arg_none\", \"ipmatch\", [\"::1\"]]]", &v) == 0);
}

static void test_vars_logic(void)
{
    struct vars v = {{"arg_name", "json", "arg_weight", "20", "arg_height", "10", NULL}};
    CHECK(eval("[]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"==\", \"json\"], [\"arg_weight\", \">\", 10]]", &v) == 1);
    CHECK(eval("[[\"arg_name\", \"==\", \"json\"], [\"arg_weight\", \">\", 30]]", &v) == 0);
    CHECK(eval("[\"OR\", [\"arg_name\", \"==\", \"x\"], [\"arg_weight\", \">\", 10]]", &v) == 1);
    CHECK(eval("[\"or\", [\"arg_name\", \"==\", \"x\"], [\"arg_weight\", \">\", 30]]", &v) == 0);
    CHECK(eval("[\"!AND\", [\"arg_name\", \"==\", \"json\"], [\"arg_weight\", \">\", 10]]", &v) ==
          0);
    CHECK(eval("[\"!OR\", [\"arg_name\", \"==\", \"x\"], [\"arg_weight\", \">\", 30]]", &v) == 1);
    /* README example: not (name == json and (weight > 10 or not height > 15)) */
    CHECK(eval("[\"!AND\", [\"arg_name\", \"==\", \"json\"], [\"OR\", [\"arg_weight\", \">\", "
               "10], [\"arg_height\", \"!\", \">\", 15]]]",
               &v) == 0);
    CHECK(eval("[\"AND\", [\"arg_name\", \"==\", \"json\"], [[\"arg_weight\", \">\", 10], "
               "[\"arg_height\", \"<\", 15]]]",
               &v) == 1);
    CHECK(eval("[[\"arg_name\", \"==\", \"json\"]]", NULL) == 0); /* no variables at all */
}

static void test_vars_errors(void)
{
    CHECK_CONTAINS(expr_err("[\"arg_name\", \"==\", \"json\"]"), "wrapped inside brackets");
    CHECK_CONTAINS(expr_err("[[\"arg_name\", \"=~\", \"json\"]]"), "invalid operator '=~'");
    CHECK_CONTAINS(expr_err("[\"OR\", [\"a\", \"==\", \"b\"]]"), "rule too short");
    CHECK_CONTAINS(expr_err("[[]]"), "rule too short");
    CHECK_CONTAINS(expr_err("[[\"a\", \"?\", \"==\", \"b\"]]"), "bad 'not' expression");
    CHECK_CONTAINS(expr_err("[[\"a\"]]"), "invalid expression");
    CHECK_CONTAINS(expr_err("[[1, \"==\", \"b\"]]"), "invalid expression");
    CHECK_CONTAINS(expr_err("[[\"a\", \"~~\", \"([a-z\"]]"), "failed to compile regex");
    CHECK_CONTAINS(expr_err("[[\"a\", \"~*\", 5]]"), "regex");
    CHECK_CONTAINS(expr_err("[[\"a\", \"ipmatch\", \"300.1.1.1\"]]"), "invalid ip address");
    CHECK_CONTAINS(expr_err("[[\"a\", \"ipmatch\", []]]"), "invalid ip address");
    CHECK_CONTAINS(expr_err("[[\"a\", \"ipmatch\", null]]"), "invalid ip address");
    CHECK_CONTAINS(expr_err("{\"a\": 1}"), "array");
    CHECK_CONTAINS(expr_err("[\"AND\", [\"a\", \"==\", \"b\"], \"oops\"]"), "array");

    /* 16 levels compile, 17 do not */
    char deep[1024] = "", tail[256] = "";
    for (int depth = 16; depth <= 17; depth++) {
        deep[0] = tail[0] = '\0';
        for (int i = 1; i < depth; i++) {
            strcat(deep, "[\"AND\", [\"a\", \"==\", \"b\"], ");
            strcat(tail, "]");
        }
        strcat(deep, "[\"a\", \"==\", \"b\"]");
        strcat(deep, tail);
        struct vars v = {{"a", "b", NULL}};
        if (depth == 16)
            CHECK(eval(deep, &v) == 1);
        else
            CHECK_CONTAINS(expr_err(deep), "nested deeper");
    }
}

static void test_route_vars(void)
{
    const char *routes[] = {
        "{\"uri\": \"/v\", \"vars\": [[\"http_x_env\", \"==\", \"canary\"]], \"priority\": 1}",
        "{\"uri\": \"/v\", \"vars\": [[\"arg_x\", \"!\", \"~~\", \"^a\"]]}",
        "{\"uri\": \"/v\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    struct vars canary = {{"http_x_env", "canary", NULL}};
    struct vars ax = {{"arg_x", "abc", NULL}};
    struct vars bx = {{"arg_x", "bcd", NULL}};
    CHECK(match_full(r, "GET", NULL, "/v", NULL, &canary) == 1);
    CHECK(match_full(r, "GET", NULL, "/v", NULL, &ax) == 3);
    CHECK(match_full(r, "GET", NULL, "/v", NULL, &bx) == 2);
    router_free(r);
}

static void test_status(void)
{
    const char *routes[] = {
        "{\"uri\": \"/s\", \"status\": 0, \"priority\": 9}",
        "{\"uri\": \"/s\", \"status\": 1}",
        "{\"uri\": \"/off\", \"status\": 0}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/s") == 2);
    CHECK(match(r, "GET", NULL, "/off") == 0);
    CHECK(router_count(r) == 3);
    router_free(r);
}

static void test_uris_list(void)
{
    const char *routes[] = {
        "{\"uris\": [\"/one\", \"/two/*\", \"/three\"], \"uri\": \"/ignored\"}",
        "{\"uri\": \"/two/x\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    CHECK(match(r, "GET", NULL, "/one") == 1);
    CHECK(match(r, "GET", NULL, "/two/y") == 1);
    CHECK(match(r, "GET", NULL, "/two/x") == 2);
    CHECK(match(r, "GET", NULL, "/three") == 1);
    CHECK(match(r, "GET", NULL, "/ignored") == 0);
    struct router_req req;
    struct router_match m;
    router_req_init(&req, "GET", NULL, "/two/zzz");
    REQUIRE(router_match_ex(r, &req, &m) == 0);
    CHECK_STREQ(m.uri, "/two/*");
    router_free(r);
}

static void test_many_routes(void)
{
    enum { N = 10000 };
    static const char *resources[] = {"users", "devices", "orders", "sensors", "alerts"};
    struct router *r = router_new();
    REQUIRE(r);
    char json[512];
    int rc = 0;
    /* ids 1..N: exact /api/v1/<res>/<n> on alternating hosts or none */
    for (int i = 0; i < N && rc == 0; i++) {
        const char *res = resources[i % 5];
        if (i % 3 == 0)
            snprintf(json, sizeof(json), "{\"uri\": \"/api/v1/%s/%d\"}", res, i);
        else
            snprintf(json, sizeof(json),
                     "{\"uri\": \"/api/v1/%s/%d\", \"host\": \"h%d.example.com\"}", res, i, i % 7);
        rc = add(r, i + 1, json);
    }
    /* prefixes per resource, and a catch-all */
    for (int k = 0; k < 5 && rc == 0; k++) {
        snprintf(json, sizeof(json), "{\"uri\": \"/api/v1/%s/*\"}", resources[k]);
        rc = add(r, N + 1 + k, json);
    }
    if (rc == 0)
        rc = add(r, N + 10, "{\"uri\": \"/*\"}");
    REQUIRE(rc == 0);
    REQUIRE(router_build(r) == 0);
    CHECK(router_count(r) == N + 6);

    int bad = 0;
    char path[128], host[64];
    for (int i = 0; i < N; i++) {
        snprintf(path, sizeof(path), "/api/v1/%s/%d", resources[i % 5], i);
        snprintf(host, sizeof(host), "h%d.example.com", i % 7);
        int want = i + 1;
        if (match(r, "GET", host, path) != want)
            bad++;
        /* with a wrong host, a host route falls back to its resource prefix */
        int want_other = i % 3 == 0 ? i + 1 : N + 1 + i % 5;
        if (match(r, "GET", "nope.example.com", path) != want_other)
            bad++;
        snprintf(path, sizeof(path), "/api/v1/%s/%d/sub", resources[i % 5], i);
        if (match(r, "GET", host, path) != N + 1 + i % 5)
            bad++;
    }
    CHECK(bad == 0);
    CHECK(match(r, "GET", NULL, "/api/v2/x") == N + 10);
    CHECK(match(r, "GET", NULL, "/api/v1/users") == N + 10);
    router_free(r);
}

static void test_bad_input(void)
{
    struct router *r = router_new();
    REQUIRE(r);
    int rc;
    CHECK_CONTAINS(
        add_err(r, "{\"uri\": \"/v\", \"vars\": [[\"arg_x\", \"~~\", \"(unclosed\"]]}", &rc),
        "failed to compile regex");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/v\", \"vars\": {\"a\": 1}}", &rc), "vars");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"host\": \"a.com\"}", &rc), "uri");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": 5}", &rc), "uri");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"\"}", &rc), "uri");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uris\": []}", &rc), "uris");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uris\": [\"/a\", 7]}", &rc), "uris[1]");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/a\", \"host\": \"a.*.com\"}", &rc), "'*'");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/a\", \"hosts\": \"a.com\"}", &rc), "hosts");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/a\", \"priority\": 1.5}", &rc), "priority");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/a\", \"status\": \"on\"}", &rc), "status");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "[1, 2]", &rc), "object");
    CHECK(rc == -EINVAL);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/a\", \"remote_addr\": \"nope\"}", &rc), "nope");
    CHECK(rc == -EINVAL);

    char *big = malloc(ROUTER_MAX_PATH + 64);
    REQUIRE(big);
    strcpy(big, "{\"uri\": \"/");
    memset(big + 10, 'a', ROUTER_MAX_PATH);
    strcpy(big + 10 + ROUTER_MAX_PATH, "\"}");
    CHECK_CONTAINS(add_err(r, big, &rc), "uri");
    CHECK(rc == -EINVAL);
    free(big);
    CHECK_CONTAINS(add_err(r, NULL, &rc), "object");
    CHECK(rc == -EINVAL);

    /* nothing was added; an empty router matches nothing */
    CHECK(router_count(r) == 0);
    struct router_req req;
    router_req_init(&req, "GET", "a.com", "/a");
    CHECK(router_match(r, &req) == NULL); /* not built yet */
    REQUIRE(router_build(r) == 0);
    CHECK(router_match(r, &req) == NULL);
    CHECK(router_build(r) == -EBUSY);
    CHECK_CONTAINS(add_err(r, "{\"uri\": \"/a\"}", &rc), "built");
    CHECK(rc == -EBUSY);

    /* odd requests do not crash */
    req.path = NULL;
    req.path_len = 0;
    req.host = "[::1";
    req.host_len = 4;
    CHECK(router_match(r, &req) == NULL);
    router_free(r);
    router_free(NULL);
}

static void test_odd_requests(void)
{
    const char *routes[] = {
        "{\"uri\": \"/*\", \"host\": \"*.a.com\"}",
        "{\"uri\": \"/x\", \"host\": \"[::1]:80\"}",
        "{\"uri\": \"/x\"}",
    };
    struct router *r = mk(routes, COUNT(routes));
    REQUIRE(r);
    char longhost[ROUTER_MAX_HOST + 10];
    memset(longhost, 'b', sizeof(longhost) - 7);
    strcpy(longhost + sizeof(longhost) - 7, ".a.com");
    CHECK(match(r, "GET", longhost, "/x") == 3); /* too long to be any route's host */
    CHECK(match(r, "GET", ":80", "/x") == 3);
    CHECK(match(r, "GET", "[", "/x") == 3);
    CHECK(match(r, "GET", ".", "/x") == 3);
    CHECK(match(r, "GET", "[::1]:80", "/x") == 2);
    CHECK(match(r, "GET", "q.a.com", "/x") == 1);

    /* a path with a NUL byte inside and no terminator */
    struct router_req req;
    router_req_init(&req, "GET", NULL, NULL);
    char p[3] = {'/', 'x', '\0'};
    req.path = p;
    req.path_len = 3;
    CHECK(router_match(r, &req) == NULL);
    req.path_len = 2;
    CHECK(router_match(r, &req) == ID(3));
    router_free(r);
}

static void test_tree_shapes(void)
{
    /* Prefix nodes with 1..40 children (inline first bytes up to 12, memchr past 16). */
    static const int fanouts[] = {1, 2, 11, 12, 13, 16, 17, 40};
    static const char chars[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP";
    struct router *r = router_new();
    REQUIRE(r);
    char json[256], path[128];
    int id = 1;
    for (int f = 0; f < COUNT(fanouts); f++) {
        for (int c = 0; c < fanouts[f]; c++) {
            snprintf(json, sizeof(json), "{\"uri\": \"/s%d/%c*\"}", fanouts[f], chars[c]);
            REQUIRE(add(r, id++, json) == 0);
        }
    }
    /* long labels: past the 16-byte compare loop and the 28-byte inline label */
    const char *longs[] = {
        "{\"uri\": \"/long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/*\"}",
        "{\"uri\": \"/long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/b/*\"}",
        "{\"uri\": \"/long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/b/c\"}",
        "{\"uri\": \"/long/abcdefghijklmnop/*\"}",
    };
    int long_id = id;
    for (int i = 0; i < COUNT(longs); i++)
        REQUIRE(add(r, id++, longs[i]) == 0);
    REQUIRE(router_build(r) == 0);

    id = 1;
    int bad = 0;
    for (int f = 0; f < COUNT(fanouts); f++) {
        for (int c = 0; c < fanouts[f]; c++) {
            snprintf(path, sizeof(path), "/s%d/%cxyz", fanouts[f], chars[c]);
            if (match(r, "GET", NULL, path) != id)
                bad++;
            id++;
        }
        snprintf(path, sizeof(path), "/s%d/%c", fanouts[f], chars[fanouts[f]]);
        if (match(r, "GET", NULL, path) != 0)
            bad++;
    }
    CHECK(bad == 0);
    const char *a61 = "/long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    snprintf(path, sizeof(path), "%s/x", a61);
    CHECK(match(r, "GET", NULL, path) == long_id);
    snprintf(path, sizeof(path), "%s/b/x", a61);
    CHECK(match(r, "GET", NULL, path) == long_id + 1);
    snprintf(path, sizeof(path), "%s/b/c", a61);
    CHECK(match(r, "GET", NULL, path) == long_id + 2);
    snprintf(path, sizeof(path), "%s/b/cc", a61);
    CHECK(match(r, "GET", NULL, path) == long_id + 1);
    CHECK(match(r, "GET", NULL, "/long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab/x") == 0);
    CHECK(match(r, "GET", NULL, "/long/abcdefghijklmnop/") == long_id + 3);
    CHECK(match(r, "GET", NULL, "/long/abcdefghijklmnoq/") == 0);
    router_free(r);
}

/*
 * A naive reference matcher for the differential test: the rules of
 * router.h applied by scanning every route. Routes use one host (or none),
 * one uri (exact, or a prefix ending in '*'), methods and priority.
 */
struct ref_route {
    char host[32]; /* "" = none; may start with '*' */
    char uri[48];  /* the uri */
    int methods;   /* 1 = GET only, 2 = POST only, 0 = any */
    int prio;      /* priority */
};

static bool ref_path_ok(const struct ref_route *rt, const char *path, size_t *keylen, bool *exact)
{
    size_t n = strlen(rt->uri);
    if (rt->uri[n - 1] != '*') {
        *exact = true;
        *keylen = n;
        return strcmp(rt->uri, path) == 0;
    }
    *exact = false;
    *keylen = n - 1;
    return strncmp(rt->uri, path, n - 1) == 0;
}

/* Best route of those on host pattern `host` ("" = host-less); -1 if none. */
static int ref_path_match(const struct ref_route *rts, int n, const char *host, const char *path,
                          int method)
{
    int best = -1;
    size_t best_key = 0;
    bool best_exact = false;
    for (int i = 0; i < n; i++) {
        const struct ref_route *rt = &rts[i];
        size_t key;
        bool exact;
        if (strcmp(rt->host, host) != 0 || !ref_path_ok(rt, path, &key, &exact))
            continue;
        if (rt->methods && rt->methods != method)
            continue;
        if (best >= 0) {
            const struct ref_route *b = &rts[best];
            /* exact beats prefix, longer key beats shorter, then priority, then uri length */
            if (best_exact != exact) {
                if (best_exact)
                    continue;
            } else if (best_key != key) {
                if (best_key > key)
                    continue;
            } else if (b->prio != rt->prio) {
                if (b->prio > rt->prio)
                    continue;
            } else if (strlen(b->uri) >= strlen(rt->uri)) {
                continue; /* equal: the earlier one stays */
            }
        }
        best = i;
        best_key = key;
        best_exact = exact;
    }
    return best;
}

static int ref_match(const struct ref_route *rts, int n, const char *host, const char *path,
                     int method)
{
    if (host && *host) {
        /* host entries: the exact host, then wildcards by longer suffix */
        int i = ref_path_match(rts, n, host, path, method);
        if (i >= 0)
            return i;
        for (size_t suffix = strlen(host) + 1; suffix-- > 0;) {
            char pat[40];
            snprintf(pat, sizeof(pat), "*%s", host + strlen(host) - suffix);
            if ((i = ref_path_match(rts, n, pat, path, method)) >= 0)
                return i;
        }
    }
    return ref_path_match(rts, n, "", path, method);
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;

static unsigned rnd(unsigned n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (unsigned)(rng_state % n);
}

/* A random path over a small alphabet, so that routes share keys and prefixes. */
static void rnd_path(char *buf, size_t cap)
{
    static const char *parts[] = {
        "/", "a", "b", "/x", "/api", "/v1", "c", "/segment-with-a-long-name-over-thirty-bytes"};
    size_t o = 0;
    int n = 1 + (int)rnd(5);
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        const char *p = parts[rnd(8)];
        if (o + strlen(p) + 1 >= cap)
            break;
        strcpy(buf + o, p);
        o += strlen(p);
    }
    if (rnd(4) == 0 && o + 2 < cap) { /* many siblings: one of 40 first bytes */
        buf[o++] = (char)('0' + rnd(40));
        buf[o] = '\0';
    }
}

static void test_differential(void)
{
    enum { NR = 1500, NQ = 30000 };
    static const char *hosts[] = {"",        "",      "",         "a.com",   "*.a.com",
                                  "b.a.com", "*.com", "*b.a.com", "c.d.com", "*"};
    static struct ref_route rts[NR];
    struct router *r = router_new();
    REQUIRE(r);
    char json[256];
    for (int i = 0; i < NR; i++) {
        struct ref_route *rt = &rts[i];
        snprintf(rt->host, sizeof(rt->host), "%s", hosts[rnd(10)]);
        rnd_path(rt->uri, sizeof(rt->uri) - 1);
        if (rnd(2))
            strcat(rt->uri, "*");
        rt->methods = (int)rnd(3);
        rt->prio = (int)rnd(3);
        int o =
            snprintf(json, sizeof(json), "{\"uri\": \"%s\", \"priority\": %d", rt->uri, rt->prio);
        if (rt->host[0])
            o += snprintf(json + o, sizeof(json) - (size_t)o, ", \"host\": \"%s\"", rt->host);
        if (rt->methods)
            o += snprintf(json + o, sizeof(json) - (size_t)o, ", \"methods\": [\"%s\"]",
                          rt->methods == 1 ? "GET" : "POST");
        snprintf(json + o, sizeof(json) - (size_t)o, "}");
        REQUIRE(add(r, i + 1, json) == 0);
    }
    REQUIRE(router_build(r) == 0);

    static const char *req_hosts[] = {NULL,    "a.com", "x.a.com",    "b.a.com", "xb.a.com",
                                      "q.com", "com",   "c.d.com:80", "B.A.COM", "zzz.org"};
    int bad = 0;
    for (int q = 0; q < NQ; q++) {
        char path[64];
        rnd_path(path, sizeof(path));
        if (rnd(3) == 0 && strlen(path) + 8 < sizeof(path))
            strcat(path, rnd(2) ? "/tail" : "b");
        const char *host = req_hosts[rnd(10)];
        int method = 1 + (int)rnd(2);
        char lower[32] = "";
        if (host) {
            size_t k = 0;
            for (; host[k] && host[k] != ':'; k++)
                lower[k] = (char)tolower((unsigned char)host[k]);
            lower[k] = '\0';
        }
        int want = ref_match(rts, NR, lower, path, method) + 1;
        int got = match(r, method == 1 ? "GET" : "POST", host, path);
        if (got != want && bad++ < 5)
            fprintf(stderr, "    %s %s %s: got %d (%s), want %d (%s)\n",
                    method == 1 ? "GET" : "POST", host ? host : "-", path, got,
                    got ? rts[got - 1].uri : "-", want, want ? rts[want - 1].uri : "-");
    }
    CHECK(bad == 0);
    router_free(r);
}

int main(void)
{
    RUN(test_exact_vs_prefix);
    RUN(test_longest_prefix);
    RUN(test_fallback);
    RUN(test_priority);
    RUN(test_glob_uris);
    RUN(test_hosts);
    RUN(test_methods);
    RUN(test_remote_addrs);
    RUN(test_vars_compare);
    RUN(test_vars_regex_in_has_ip);
    RUN(test_vars_logic);
    RUN(test_vars_errors);
    RUN(test_route_vars);
    RUN(test_status);
    RUN(test_uris_list);
    RUN(test_many_routes);
    RUN(test_bad_input);
    RUN(test_odd_requests);
    RUN(test_tree_shapes);
    RUN(test_differential);
    return check_summary();
}
