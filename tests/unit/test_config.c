/*
 * test_config: config_check() against the request bodies of APISIX's
 * documentation (they must pass, with APISIX's defaults inserted), one case per
 * class of error with APISIX's exact message, references, the plugin registry,
 * and a self-check that every pattern and $ref of the embedded schemas works.
 */
#include "check.h"

#include "config.h"
#include "jsonschema.h"
#include "schemas_embedded.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define UP "\"upstream\":{\"type\":\"roundrobin\",\"nodes\":{\"127.0.0.1:1980\":1}}"

/* Marker-valid PEM texts, long enough for the schemas' minLength 128. */
#define CERT                                                                                       \
    "-----BEGIN CERTIFICATE-----\\n"                                                               \
    "MIIDSjCCAjKgAwIBAgIUbq1uP4wbQk9yjqKzQLT0zc9sAv0wDQYJKoZIhvcNAQELBQAwVjELMAkGA1UEBhMCQ04x"     \
    "EjAQBgNVBAgMCUd1YW5nRG9uZzEPMA0GA1UEBwwGWmh1SGFpMQ8wDQYDVQQKDAZpcmVzdHkx\\n"                  \
    "-----END CERTIFICATE-----\\n"
#define KEY                                                                                        \
    "-----BEGIN PRIVATE KEY-----\\n"                                                               \
    "MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC9Ihn4q7uVHhTnbAaYgOrl0ePxzyLGYjU6oQWr"     \
    "EjAQBgNVBAgMCUd1YW5nRG9uZzEPMA0GA1UEBwwGWmh1SGFpMQ8wDQYDVQQKDAZpcmVzdHkx\\n"                  \
    "-----END PRIVATE KEY-----\\n"

static char err[4096];

/* Parses text and checks it as kind. Returns the checked document (caller
 * decrefs) or NULL when the JSON itself is bad; *rc gets config_check's result. */
static json_t *run(enum gw_kind kind, const char *text, int *rc)
{
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    if (!doc) {
        fprintf(stderr, "  bad test JSON: %s: %s\n", jerr.text, text);
        *rc = -999;
        return NULL;
    }
    err[0] = '\0';
    *rc = config_check(kind, doc, err, sizeof(err));
    return doc;
}

static bool ok(enum gw_kind kind, const char *text)
{
    int rc;
    json_t *doc = run(kind, text, &rc);
    json_decref(doc);
    if (rc != 0)
        fprintf(stderr, "  rejected: %s\n    %s\n", err, text);
    return rc == 0;
}

/* Returns the message (in err) of a rejected document, "" if accepted. */
static const char *bad(enum gw_kind kind, const char *text)
{
    int rc;
    json_t *doc = run(kind, text, &rc);
    json_decref(doc);
    if (rc == 0) {
        fprintf(stderr, "  accepted: %s\n", text);
        return "";
    }
    if (rc != -EINVAL)
        return "(wrong return code)";
    return err;
}

/* ---- the documented bodies ------------------------------------------------ */

static void test_doc_route_minimal(void)
{
    int rc;
    json_t *r = run(GW_KIND_ROUTE, "{\"uri\":\"/index.html\"," UP "}", &rc);
    REQUIRE(r && rc == 0);
    CHECK(json_integer_value(json_object_get(r, "priority")) == 0);
    CHECK(json_integer_value(json_object_get(r, "status")) == 1);
    json_t *up = json_object_get(r, "upstream");
    CHECK_STREQ(json_string_value(json_object_get(up, "scheme")), "http");
    CHECK_STREQ(json_string_value(json_object_get(up, "pass_host")), "pass");
    CHECK_STREQ(json_string_value(json_object_get(up, "hash_on")), "vars");
    CHECK_STREQ(json_string_value(json_object_get(up, "type")), "roundrobin");
    CHECK(json_object_get(r, "enable_websocket") == NULL);
    json_decref(r);
}

static void test_doc_routes(void)
{
    CHECK(ok(GW_KIND_ROUTE,
             "{\"methods\":[\"GET\"],\"host\":\"example.com\",\"uri\":\"/index.html\","
             "\"plugins\":{\"limit-count\":{\"count\":2,\"time_window\":60,"
             "\"rejected_code\":503,\"key_type\":\"var\",\"key\":\"remote_addr\"}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uris\":[\"/a\",\"/b/*\"],\"hosts\":[\"*.example.com\",\"foo.com\"],"
                            "\"methods\":[\"GET\",\"POST\",\"PURGE\"],\"priority\":10,"
                            "\"remote_addrs\":[\"127.0.0.1\",\"10.0.0.0/8\",\"::1\",\"fe80::/10\"],"
                            "\"enable_websocket\":true,\"name\":\"r1\",\"desc\":\"d\","
                            "\"labels\":{\"env\":\"prod\",\"version\":\"v1\"},"
                            "\"timeout\":{\"connect\":3,\"send\":3,\"read\":3.5}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/index.html\",\"vars\":[[\"arg_name\",\"==\",\"json\"],"
                            "[\"arg_age\",\">\",\"18\"],[\"http_x\",\"~~\",\"^a\"],"
                            "[\"arg_a\",\"!\",\"in\",[\"1\",\"2\"]]]," UP "}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"vars\":[\"OR\",[\"arg_a\",\"==\",\"1\"],"
                            "[\"AND\",[\"arg_b\",\"==\",\"2\"],[\"arg_c\",\"3\"]]]," UP "}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"upstream_id\":\"1\"}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"service_id\":1}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"plugins\":{}}"));
    CHECK(ok(GW_KIND_ROUTE,
             "{\"uris\":[\"/index.html\"],\"plugin_config_id\":1," UP ",\"id\":\"r1\","
             "\"create_time\":1700000000,\"update_time\":1700000001}"));
    /* APISIX accepts upstream and upstream_id together (upstream wins). */
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"upstream_id\":\"u\"," UP "}"));
}

static void test_doc_plugins_on_routes(void)
{
    int rc;
    json_t *r = run(GW_KIND_ROUTE,
                    "{\"methods\":[\"GET\"],\"uri\":\"/index.html\","
                    "\"plugins\":{\"key-auth\":{},\"prometheus\":{},\"cors\":{}}," UP "}",
                    &rc);
    REQUIRE(r && rc == 0);
    json_t *ka = json_object_get(json_object_get(r, "plugins"), "key-auth");
    CHECK_STREQ(json_string_value(json_object_get(ka, "header")), "apikey");
    CHECK_STREQ(json_string_value(json_object_get(ka, "query")), "apikey");
    CHECK(json_is_false(json_object_get(ka, "hide_credentials")));
    json_t *cors = json_object_get(json_object_get(r, "plugins"), "cors");
    CHECK_STREQ(json_string_value(json_object_get(cors, "allow_origins")), "*");
    CHECK(json_integer_value(json_object_get(cors, "max_age")) == 5);
    json_t *pm = json_object_get(json_object_get(r, "plugins"), "prometheus");
    CHECK(json_is_false(json_object_get(pm, "prefer_name")));
    json_decref(r);

    CHECK(ok(GW_KIND_ROUTE,
             "{\"uri\":\"/index.html\",\"plugins\":{\"ip-restriction\":"
             "{\"whitelist\":[\"127.0.0.1\",\"113.74.26.106/24\",\"::1\"]}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE,
             "{\"uri\":\"/x\",\"plugins\":{\"ip-restriction\":{\"blacklist\":"
             "[\"127.0.0.1\"],\"message\":\"Do you want to do something bad?\"}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE,
             "{\"methods\":[\"GET\"],\"uri\":\"/test/index.html\",\"plugins\":{\"proxy-rewrite\":"
             "{\"uri\":\"/test/home.html\",\"host\":\"iresty.com\",\"headers\":{\"set\":"
             "{\"X-Api-Version\":\"v1\",\"X-Api-Engine\":\"apisix\",\"X-Api-useless\":\"\"},"
             "\"add\":{\"X-Request-ID\":\"112233\"},\"remove\":[\"X-test\"]}}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"plugins\":{\"proxy-rewrite\":{\"regex_uri\":"
                            "[\"^/iresty/(.*)/(.*)/(.*)\",\"/$1_$2_$3\"],"
                            "\"headers\":{\"X-Api\":\"v2\",\"X-Num\":3}}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"plugins\":{\"cors\":{\"allow_origins\":"
                            "\"http://a.com,https://b.com:8443\",\"allow_methods\":\"GET,POST\","
                            "\"allow_headers\":\"X-A\",\"expose_headers\":\"X-B\","
                            "\"allow_credential\":true,\"allow_origins_by_regex\":"
                            "[\".*\\\\.test\\\\.com\"]}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE,
             "{\"uri\":\"/x\",\"plugins\":{\"limit-req\":{\"rate\":1,\"burst\":2,"
             "\"rejected_code\":503,\"key_type\":\"var\",\"key\":\"remote_addr\"}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/x\",\"plugins\":{\"limit-conn\":{\"conn\":1,\"burst\":0,"
                            "\"default_conn_delay\":0.1,\"rejected_code\":503,\"key_type\":\"var\","
                            "\"key\":\"remote_addr\"}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE,
             "{\"uri\":\"/x\",\"plugins\":{\"limit-count\":{\"count\":2,"
             "\"time_window\":60,\"policy\":\"redis\",\"redis_host\":\"127.0.0.1\"}}," UP "}"));
    CHECK(ok(GW_KIND_ROUTE,
             "{\"uri\":\"/x\",\"plugins\":{\"key-auth\":{\"_meta\":{\"disable\":true,"
             "\"priority\":3,\"filter\":[[\"arg_v\",\"==\",\"1\"]]}}}," UP "}"));
}

static void test_doc_limit_defaults(void)
{
    int rc;
    json_t *r = run(
        GW_KIND_ROUTE,
        "{\"uri\":\"/x\",\"plugins\":{\"limit-count\":{\"count\":2,\"time_window\":60}}," UP "}",
        &rc);
    REQUIRE(r && rc == 0);
    json_t *lc = json_object_get(json_object_get(r, "plugins"), "limit-count");
    CHECK_STREQ(json_string_value(json_object_get(lc, "key")), "remote_addr");
    CHECK_STREQ(json_string_value(json_object_get(lc, "key_type")), "var");
    CHECK_STREQ(json_string_value(json_object_get(lc, "policy")), "local");
    CHECK(json_integer_value(json_object_get(lc, "rejected_code")) == 503);
    CHECK(json_is_true(json_object_get(lc, "show_limit_quota_header")));
    CHECK(json_object_get(lc, "redis_port") == NULL);
    json_decref(r);

    r = run(GW_KIND_ROUTE,
            "{\"uri\":\"/x\",\"plugins\":{\"limit-count\":{\"count\":2,\"time_window\":60,"
            "\"policy\":\"redis\",\"redis_host\":\"10.0.0.1\"}}," UP "}",
            &rc);
    REQUIRE(r && rc == 0);
    lc = json_object_get(json_object_get(r, "plugins"), "limit-count");
    CHECK(json_integer_value(json_object_get(lc, "redis_port")) == 6379);
    json_decref(r);
}

static void test_doc_upstreams(void)
{
    CHECK(ok(GW_KIND_UPSTREAM,
             "{\"type\":\"chash\",\"key\":\"remote_addr\",\"nodes\":{\"127.0.0.1:80\":1,"
             "\"foo.com:80\":2}}"));
    CHECK(ok(GW_KIND_UPSTREAM, "{\"type\":\"chash\",\"hash_on\":\"header\",\"key\":\"X-Dev\","
                               "\"nodes\":{\"127.0.0.1:80\":1}}"));
    CHECK(ok(GW_KIND_UPSTREAM, "{\"type\":\"chash\",\"hash_on\":\"consumer\","
                               "\"nodes\":{\"127.0.0.1:80\":1}}"));
    CHECK(ok(GW_KIND_UPSTREAM, "{\"type\":\"chash\",\"hash_on\":\"vars_combinations\","
                               "\"key\":\"$remote_addr$arg_x\",\"nodes\":{\"127.0.0.1:80\":1}}"));
    CHECK(ok(GW_KIND_UPSTREAM, "{\"type\":\"least_conn\",\"nodes\":[{\"host\":\"10.0.0.1\","
                               "\"port\":80,\"weight\":1,\"priority\":-1,\"metadata\":{}}],"
                               "\"retries\":2,\"retry_timeout\":5,\"scheme\":\"https\","
                               "\"pass_host\":\"rewrite\",\"upstream_host\":\"example.com\","
                               "\"tls\":{\"client_cert\":\"" CERT "\",\"client_key\":\"" KEY "\","
                               "\"verify\":true},\"name\":\"up\",\"desc\":\"d\","
                               "\"labels\":{\"a\":\"b\"},\"timeout\":{\"connect\":1,"
                               "\"send\":1,\"read\":1}}"));
    CHECK(ok(GW_KIND_UPSTREAM, "{\"type\":\"ewma\",\"service_name\":\"svc\","
                               "\"discovery_type\":\"dns\"}"));
    /* type defaults to roundrobin (APISIX 3.x) */
    CHECK(ok(GW_KIND_UPSTREAM, "{\"nodes\":{\"127.0.0.1:80\":1}}"));
}

static void test_doc_upstream_checks_defaults(void)
{
    int rc;
    json_t *u = run(GW_KIND_UPSTREAM,
                    "{\"nodes\":{\"127.0.0.1:1980\":1},\"type\":\"roundrobin\",\"retries\":2,"
                    "\"checks\":{\"active\":{\"http_path\":\"/status\",\"host\":\"foo.com\","
                    "\"healthy\":{\"interval\":2,\"successes\":1},\"unhealthy\":{\"interval\":1,"
                    "\"http_failures\":2}},\"passive\":{\"healthy\":{},\"unhealthy\":{}}},"
                    "\"keepalive_pool\":{}}",
                    &rc);
    REQUIRE(u && rc == 0);
    json_t *act = json_object_get(json_object_get(u, "checks"), "active");
    CHECK_STREQ(json_string_value(json_object_get(act, "type")), "http");
    CHECK(json_number_value(json_object_get(act, "timeout")) == 1);
    CHECK(json_integer_value(json_object_get(act, "concurrency")) == 10);
    CHECK(json_is_true(json_object_get(act, "https_verify_certificate")));
    json_t *h = json_object_get(act, "healthy"), *uh = json_object_get(act, "unhealthy");
    CHECK(json_array_size(json_object_get(h, "http_statuses")) == 2);
    CHECK(json_integer_value(json_object_get(h, "successes")) == 1);
    CHECK(json_array_size(json_object_get(uh, "http_statuses")) == 8);
    CHECK(json_integer_value(json_object_get(uh, "tcp_failures")) == 2);
    CHECK(json_integer_value(json_object_get(uh, "timeouts")) == 3);
    json_t *pas = json_object_get(json_object_get(u, "checks"), "passive");
    CHECK(json_integer_value(json_object_get(json_object_get(pas, "unhealthy"), "timeouts")) == 7);
    CHECK(json_array_size(json_object_get(json_object_get(pas, "healthy"), "http_statuses")) == 19);
    json_t *kp = json_object_get(u, "keepalive_pool");
    CHECK(json_integer_value(json_object_get(kp, "size")) == 320);
    CHECK(json_number_value(json_object_get(kp, "idle_timeout")) == 60);
    CHECK(json_integer_value(json_object_get(kp, "requests")) == 1000);
    json_decref(u);
}

static void test_doc_stream_routes(void)
{
    /* docs/en/latest/plugins/mqtt-proxy.md */
    CHECK(ok(GW_KIND_STREAM_ROUTE,
             "{\"plugins\":{\"mqtt-proxy\":{\"protocol_name\":\"MQTT\",\"protocol_level\":4}},"
             "\"upstream\":{\"type\":\"chash\",\"key\":\"mqtt_client_id\",\"nodes\":["
             "{\"host\":\"127.0.0.1\",\"port\":1980,\"weight\":1},"
             "{\"host\":\"127.0.0.2\",\"port\":1980,\"weight\":1}]}}"));
    CHECK(ok(GW_KIND_STREAM_ROUTE,
             "{\"server_port\":9100,\"server_addr\":\"127.0.0.1\",\"remote_addr\":\"10.0.0.0/8\","
             "\"sni\":\"a.test.com\",\"plugins\":{\"mqtt-proxy\":{\"protocol_name\":\"MQTT\","
             "\"protocol_level\":5}},\"upstream\":{\"type\":\"roundrobin\","
             "\"nodes\":{\"127.0.0.1:1883\":1}}}"));
    /* airgw: no protocol_level means 3.1.1 and 5.0 alike */
    CHECK(ok(GW_KIND_STREAM_ROUTE, "{\"plugins\":{\"mqtt-proxy\":{}},\"upstream_id\":\"1\"}"));
    /* APISIX 2.x form */
    CHECK(ok(GW_KIND_STREAM_ROUTE,
             "{\"remote_addr\":\"127.0.0.1\",\"plugins\":{\"mqtt-proxy\":{\"protocol_name\":"
             "\"MQTT\",\"protocol_level\":4,\"upstream\":{\"ip\":\"127.0.0.1\",\"port\":1980}}}}"));
    CHECK(ok(GW_KIND_STREAM_ROUTE, "{\"plugins\":{\"mqtt-proxy\":{\"protocol_level\":4,"
                                   "\"upstream\":{\"host\":\"broker\",\"port\":1883}}}}"));
    CHECK(ok(GW_KIND_STREAM_ROUTE,
             "{\"plugins\":{\"ip-restriction\":{\"whitelist\":[\"10.0.0.0/8\"]},"
             "\"limit-conn\":{\"conn\":100,\"burst\":0,\"default_conn_delay\":0.1,"
             "\"key\":\"remote_addr\"},\"prometheus\":{}},\"service_id\":\"s\"}"));
}

static void test_doc_other_kinds(void)
{
    CHECK(ok(GW_KIND_SERVICE,
             "{\"plugins\":{\"limit-count\":{\"count\":2,\"time_window\":60,\"rejected_code\":503,"
             "\"key\":\"remote_addr\"}}," UP ",\"enable_websocket\":true,\"name\":\"s\","
             "\"hosts\":[\"a.com\"]}"));
    CHECK(ok(GW_KIND_SERVICE, "{\"upstream_id\":\"1\"}"));
    CHECK(ok(GW_KIND_GLOBAL_RULE, "{\"plugins\":{\"prometheus\":{}}}"));
    CHECK(ok(GW_KIND_PLUGIN_CONFIG,
             "{\"desc\":\"blah\",\"plugins\":{\"limit-count\":{\"count\":2,\"time_window\":60,"
             "\"rejected_code\":503}},\"labels\":{\"k\":\"v\"}}"));
    CHECK(ok(GW_KIND_SSL, "{\"cert\":\"" CERT "\",\"key\":\"" KEY "\",\"snis\":[\"test.com\","
                          "\"*.test.com\"]}"));
    CHECK(ok(GW_KIND_SSL, "{\"cert\":\"" CERT "\",\"key\":\"" KEY "\",\"sni\":\"test.com\","
                          "\"certs\":[\"" CERT "\"],\"keys\":[\"" KEY "\"],"
                          "\"client\":{\"ca\":\"" CERT "\",\"depth\":2}}"));
    CHECK(ok(GW_KIND_SSL, "{\"type\":\"client\",\"cert\":\"" CERT "\",\"key\":\"" KEY "\"}"));
}

static void test_doc_consumer(void)
{
    int rc;
    json_t *c =
        run(GW_KIND_CONSUMER,
            "{\"username\":\"jack\",\"plugins\":{\"key-auth\":{\"key\":\"auth-one\"}}}", &rc);
    REQUIRE(c && rc == 0);
    /* the consumer schema has no header default */
    json_t *ka = json_object_get(json_object_get(c, "plugins"), "key-auth");
    CHECK(json_object_get(ka, "header") == NULL);
    json_decref(c);
    CHECK(ok(GW_KIND_CONSUMER, "{\"username\":\"jack-2_x\",\"desc\":\"d\",\"labels\":{\"a\":\"b\"},"
                               "\"plugins\":{\"limit-count\":{\"count\":2,\"time_window\":60}}}"));
    CHECK(ok(GW_KIND_CONSUMER, "{\"username\":\"jack\"}"));
}

static void test_ssl_defaults(void)
{
    int rc;
    json_t *s = run(GW_KIND_SSL,
                    "{\"cert\":\"" CERT "\",\"key\":\"" KEY "\",\"snis\":[\"a.com\"],"
                    "\"client\":{\"ca\":\"" CERT "\"}}",
                    &rc);
    REQUIRE(s && rc == 0);
    CHECK_STREQ(json_string_value(json_object_get(s, "type")), "server");
    CHECK(json_integer_value(json_object_get(s, "status")) == 1);
    CHECK(json_integer_value(json_object_get(json_object_get(s, "client"), "depth")) == 1);
    json_decref(s);
}

/* ---- errors: APISIX's messages ------------------------------------------- */

static void test_err_route_schema(void)
{
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{" UP "}"),
                "invalid configuration: object matches none of the required: [\"uri\"] or "
                "[\"uris\"]");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":1," UP "}"),
                "invalid configuration: property \"uri\" validation failed: wrong type: expected "
                "string, got number");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"methods\":[\"GET\",\"FOO\"]," UP "}"),
                "invalid configuration: property \"methods\" validation failed: failed to "
                "validate item 2: matches none of the enum values");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"foo\":1," UP "}"),
                "invalid configuration: additional properties forbidden, found foo");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"filter_func\":\"function(vars) return "
                                   "true end\"," UP "}"),
                "invalid configuration: additional properties forbidden, found filter_func");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"status\":2," UP "}"),
                "invalid configuration: property \"status\" validation failed: matches none of "
                "the enum values");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"timeout\":{\"connect\":1,\"send\":1}," UP "}"),
                "invalid configuration: property \"timeout\" validation failed: property \"read\" "
                "is required");
    CHECK_STREQ(bad(GW_KIND_ROUTE,
                    "{\"uri\":\"/\",\"timeout\":{\"connect\":0,\"send\":1,\"read\":1}," UP "}"),
                "invalid configuration: property \"timeout\" validation failed: property "
                "\"connect\" validation failed: expected 0 to be greater than 0");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"uris\":[\"/a\"]," UP "}"),
                "invalid configuration: value should match only one schema, but matches both "
                "schemas 1 and 2");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"name\":\"\"," UP "}"),
                "invalid configuration: property \"name\" validation failed: string too short, "
                "expected at least 1, got 0");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"id\":\"a b\"," UP "}"),
                "invalid configuration: property \"id\" validation failed: object matches none of "
                "the required");
    CHECK_CONTAINS(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"labels\":{\"k\":\"a b\"}," UP "}"),
                   "invalid configuration: property \"labels\" validation failed: failed to "
                   "validate k (matching \".*\"): failed to match pattern");
    CHECK_CONTAINS(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"host\":\"a b\"," UP "}"),
                   "invalid configuration: property \"host\" validation failed: failed to match "
                   "pattern");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"remote_addr\":\"300.1.1.1\"," UP "}"),
                "invalid configuration: property \"remote_addr\" validation failed: object "
                "matches none of the required");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"remote_addrs\":[\"::1/200\"]," UP "}"),
                "invalid configuration: invalid ip address: ::1/200");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"upstream\":{\"type\":\"roundrobin\"}}"),
                "invalid configuration: property \"upstream\" validation failed: value should "
                "match only one schema, but matches none");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "[1]"), "invalid configuration: wrong type: expected object, "
                                           "got array");
}

static void test_err_route_code_rules(void)
{
    CHECK_STREQ(
        bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"host\":\"a.com\",\"hosts\":[\"b.com\"]," UP "}"),
        "only one of host or hosts is allowed");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"remote_addr\":\"1.1.1.1\","
                                   "\"remote_addrs\":[\"1.1.1.1\"]," UP "}"),
                "only one of remote_addr or remote_addrs is allowed");
    CHECK_CONTAINS(bad(GW_KIND_ROUTE, "{\"uri\":\"/index.html\"}"),
                   "invalid configuration: object matches none of the required: "
                   "[\"plugins\",\"uri\"] or [\"upstream\",\"uri\"]");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"vars\":[[\"arg_x\",\"=*\",\"1\"]]," UP "}"),
                "failed to validate the 'vars' expression: invalid operator '=*'");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"vars\":[\"arg_x\",\"==\",\"1\"]," UP "}"),
                "failed to validate the 'vars' expression: rule should be wrapped inside brackets");
    CHECK_STREQ(
        bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"vars\":[[\"arg_x\",\"?\",\"==\",\"1\"]]," UP "}"),
        "failed to validate the 'vars' expression: bad 'not' expression");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"vars\":[[\"arg_x\"]]," UP "}"),
                "failed to validate the 'vars' expression: invalid expression");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"vars\":[[1,\"==\",\"1\"]]," UP "}"),
                "failed to validate the 'vars' expression: invalid expression");
    CHECK_STREQ(
        bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"vars\":[[\"OR\",[\"a\",\"==\",\"1\"]]]," UP "}"),
        "failed to validate the 'vars' expression: rule too short");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"vars\":[[]]," UP "}"),
                "failed to validate the 'vars' expression: rule too short");
}

static void test_err_upstream_rules(void)
{
    CHECK_STREQ(bad(GW_KIND_UPSTREAM, "{\"type\":\"chash\",\"nodes\":{\"127.0.0.1:80\":1}}"),
                "missing key");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"upstream\":{\"type\":\"chash\","
                                   "\"nodes\":{\"127.0.0.1:80\":1}}}"),
                "missing key");
    CHECK_STREQ(bad(GW_KIND_STREAM_ROUTE, "{\"upstream\":{\"type\":\"chash\","
                                          "\"nodes\":{\"127.0.0.1:80\":1}}}"),
                "missing key");
    CHECK_CONTAINS(bad(GW_KIND_UPSTREAM, "{\"type\":\"chash\",\"key\":\"foo\","
                                         "\"nodes\":{\"127.0.0.1:80\":1}}"),
                   "invalid configuration: failed to match pattern");
    CHECK_CONTAINS(bad(GW_KIND_UPSTREAM, "{\"type\":\"chash\",\"hash_on\":\"header\","
                                         "\"key\":\"a b\",\"nodes\":{\"127.0.0.1:80\":1}}"),
                   "with \"a b\"");
    CHECK_STREQ(bad(GW_KIND_UPSTREAM, "{\"pass_host\":\"rewrite\",\"nodes\":{\"127.0.0.1:80\":1}}"),
                "`upstream_host` can't be empty when `pass_host` is `rewrite`");
    CHECK_STREQ(bad(GW_KIND_UPSTREAM, "{\"type\":\"fastest\",\"nodes\":{\"127.0.0.1:80\":1}}"),
                "invalid configuration: property \"type\" validation failed: matches none of the "
                "enum values");
    CHECK_STREQ(bad(GW_KIND_UPSTREAM, "{\"nodes\":{\"127.0.0.1:80\":-1}}"),
                "invalid configuration: property \"nodes\" validation failed: object matches none "
                "of the required");
    CHECK_STREQ(bad(GW_KIND_UPSTREAM, "{\"nodes\":{\"a:1\":1},\"checks\":{\"passive\":{}}}"),
                "invalid configuration: property \"checks\" validation failed: object matches "
                "none of the required: [\"active\"] or [\"active\",\"passive\"]");
    CHECK_STREQ(
        bad(GW_KIND_UPSTREAM, "{\"nodes\":{\"a:1\":1},\"tls\":{\"client_cert\":\"" CERT "\"}}"),
        "invalid configuration: property \"tls\" validation failed: failed to validate "
        "dependent schema for \"client_cert\": property \"client_key\" is required");
    const char *fake = "\"-----BEGIN NOTHING-----0123456789012345678901234567890123456789012345"
                       "678901234567890123456789012345678901234567890123456789012345678901234567"
                       "89\"";
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"nodes\":{\"a:1\":1},\"tls\":{\"client_cert\":%s,\"client_key\":\"" KEY "\"}}",
             fake);
    CHECK_STREQ(bad(GW_KIND_UPSTREAM, body),
                "failed to parse cert: PEM_read_bio_X509_AUX() failed");
    CHECK_STREQ(bad(GW_KIND_UPSTREAM, "{\"nodes\":{\"a:1\":1},\"scheme\":\"ftp\"}"),
                "invalid configuration: property \"scheme\" validation failed: matches none of "
                "the enum values");
}

static void test_err_plugins(void)
{
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"foo\":{}}," UP "}"),
                "unknown plugin [foo]");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"mqtt-proxy\":"
                                   "{\"protocol_level\":4}}," UP "}"),
                "unknown plugin [mqtt-proxy]");
    CHECK_STREQ(bad(GW_KIND_STREAM_ROUTE, "{\"plugins\":{\"key-auth\":{}}}"),
                "unknown plugin [key-auth]");
    CHECK_STREQ(bad(GW_KIND_GLOBAL_RULE, "{\"plugins\":{\"mqtt-proxy\":{}}}"),
                "unknown plugin [mqtt-proxy]");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"key-auth\":\"blah\"}," UP "}"),
                "invalid plugin conf \"blah\" for plugin [key-auth]");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"limit-count\":"
                                   "{\"time_window\":60}}," UP "}"),
                "failed to check the configuration of plugin limit-count err: property \"count\" "
                "is required");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"limit-req\":{\"rate\":-1,"
                                   "\"burst\":1,\"key\":\"remote_addr\"}}," UP "}"),
                "failed to check the configuration of plugin limit-req err: property \"rate\" "
                "validation failed: expected -1 to be greater than 0");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"limit-count\":{\"count\":2,"
                                   "\"time_window\":60,\"policy\":\"redis\"}}," UP "}"),
                "failed to check the configuration of plugin limit-count err: then clause did not "
                "match");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"ip-restriction\":{}}," UP "}"),
                "failed to check the configuration of plugin ip-restriction err: value should "
                "match only one schema, but matches none");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"ip-restriction\":"
                                   "{\"whitelist\":[\"::1/200\"]}}," UP "}"),
                "failed to check the configuration of plugin ip-restriction err: invalid ip "
                "address: ::1/200");
    /* {} passes: the inserted default counts toward minProperties, as in APISIX */
    CHECK(ok(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"proxy-rewrite\":{}}," UP "}"));
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"proxy-rewrite\":{\"uri\":"
                                   "\"x\"}}," UP "}"),
                "failed to check the configuration of plugin proxy-rewrite err: property \"uri\" "
                "validation failed: failed to match pattern \"^\\\\/.*\" with \"x\"");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"proxy-rewrite\":{\"regex_uri\":"
                                   "[\"^/a\",\"/b\",\"^/c\"]}}," UP "}"),
                "failed to check the configuration of plugin proxy-rewrite err: The length of "
                "regex_uri should be an even number");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"proxy-rewrite\":{\"headers\":"
                                   "{\"X-A\":\"a\\r\\nX-B: b\"}}}," UP "}"),
                "failed to check the configuration of plugin proxy-rewrite err: invalid value "
                "character in header");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"cors\":{\"allow_credential\":"
                                   "true}}," UP "}"),
                "failed to check the configuration of plugin cors err: you can not set '*' for "
                "other option when 'allow_credential' is true");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"key-auth\":{\"_meta\":"
                                   "{\"foo\":1}}}," UP "}"),
                "failed to check the configuration of plugin key-auth err: property \"_meta\" "
                "validation failed: additional properties forbidden, found foo");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":{\"key-auth\":{\"_meta\":"
                                   "{\"filter\":[[\"a\",\"bad\",\"1\"]]}}}," UP "}"),
                "failed to validate the 'vars' expression: invalid operator 'bad'");
    CHECK_STREQ(bad(GW_KIND_STREAM_ROUTE, "{\"plugins\":{\"mqtt-proxy\":{\"protocol_level\":"
                                          "\"4\"}}}"),
                "failed to check the configuration of plugin mqtt-proxy err: property "
                "\"protocol_level\" validation failed: wrong type: expected integer, got string");
    CHECK_STREQ(bad(GW_KIND_STREAM_ROUTE, "{\"plugins\":{\"mqtt-proxy\":{\"upstream\":"
                                          "{\"host\":\"a\"}}}}"),
                "failed to check the configuration of plugin mqtt-proxy err: property "
                "\"upstream\" validation failed: property \"port\" is required");
    CHECK_STREQ(bad(GW_KIND_ROUTE, "{\"uri\":\"/\",\"plugins\":[]," UP "}"),
                "invalid configuration: property \"plugins\" validation failed: wrong type: "
                "expected object, got array");
}

static void test_err_consumer(void)
{
    CHECK_STREQ(bad(GW_KIND_CONSUMER, "{\"username\":\"jack\",\"plugins\":{\"key-auth\":{}}}"),
                "invalid plugins configuration: failed to check the configuration of plugin "
                "key-auth err: property \"key\" is required");
    CHECK_STREQ(bad(GW_KIND_CONSUMER, "{\"username\":\"jack\",\"plugins\":{\"key-auth\":\"x\"}}"),
                "invalid plugins configuration: invalid plugin conf \"x\" for plugin [key-auth]");
    CHECK_STREQ(bad(GW_KIND_CONSUMER, "{\"username\":\"jack\",\"plugins\":{\"nope\":{}}}"),
                "invalid plugins configuration: unknown plugin [nope]");
    CHECK_STREQ(bad(GW_KIND_CONSUMER, "{\"plugins\":{}}"),
                "invalid configuration: property \"username\" is required");
    CHECK_CONTAINS(bad(GW_KIND_CONSUMER, "{\"username\":\"ja ck\"}"),
                   "invalid configuration: property \"username\" validation failed: failed to "
                   "match pattern");
}

static void test_err_other_kinds(void)
{
    CHECK_STREQ(bad(GW_KIND_GLOBAL_RULE, "{}"),
                "invalid configuration: property \"plugins\" is required");
    CHECK_STREQ(bad(GW_KIND_PLUGIN_CONFIG, "{\"desc\":\"x\"}"),
                "invalid configuration: property \"plugins\" is required");
    CHECK_STREQ(bad(GW_KIND_SERVICE, "{\"uri\":\"/\"}"),
                "invalid configuration: additional properties forbidden, found uri");
    CHECK_STREQ(bad(GW_KIND_SERVICE, "{\"upstream\":{\"type\":\"chash\",\"nodes\":{\"a:1\":1}}}"),
                "missing key");
    CHECK_STREQ(bad(GW_KIND_STREAM_ROUTE, "{\"server_port\":70000}"),
                "invalid configuration: property \"server_port\" validation failed: expected "
                "70000 to be at most 65535");
    CHECK_STREQ(bad(GW_KIND_STREAM_ROUTE, "{\"uri\":\"/\"}"),
                "invalid configuration: additional properties forbidden, found uri");
}

static void test_err_ssl(void)
{
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"cert\":\"" CERT "\",\"key\":\"" KEY "\"}"),
                "invalid configuration: then clause did not match");
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"cert\":\"" CERT "\",\"key\":\"" KEY "\",\"snis\":[\"a.com\"],"
                                 "\"certs\":[\"" CERT "\"]}"),
                "mismatched number of certs and keys");
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"cert\":\"" CERT "\",\"key\":\"" CERT "\",\"sni\":\"a.com\"}"),
                "failed to parse key: PEM_read_bio_PrivateKey() failed");
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"cert\":\"" KEY "\",\"key\":\"" KEY "\",\"sni\":\"a.com\"}"),
                "failed to parse cert: PEM_read_bio_X509_AUX() failed");
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"cert\":\"" CERT "\",\"key\":\"" KEY "\",\"sni\":\"a.com\","
                                 "\"certs\":[\"" CERT "\"],\"keys\":[\"" CERT "\"]}"),
                "failed to handle cert-key pair[1]: failed to parse key: "
                "PEM_read_bio_PrivateKey() failed");
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"cert\":\"" CERT "\",\"key\":\"" KEY "\",\"sni\":\"a.com\","
                                 "\"client\":{\"ca\":\"" KEY "\"}}"),
                "failed to validate client_cert: failed to parse cert: "
                "PEM_read_bio_X509_AUX() failed");
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"cert\":\"short\",\"key\":\"" KEY "\",\"sni\":\"a.com\"}"),
                "invalid configuration: property \"cert\" validation failed: string too short, "
                "expected at least 128, got 5");
    CHECK_STREQ(bad(GW_KIND_SSL, "{\"type\":\"client\",\"cert\":\"" CERT "\"}"),
                "invalid configuration: else clause did not match");
}

static void test_err_args(void)
{
    char small[8];
    CHECK(config_check(GW_KIND_ROUTE, NULL, err, sizeof(err)) == -EINVAL);
    CHECK(config_check((enum gw_kind)99, NULL, err, sizeof(err)) == -EINVAL);
    json_t *doc = json_loads("{\"uri\":1}", 0, NULL);
    REQUIRE(doc);
    CHECK(config_check(GW_KIND_ROUTE, doc, small, sizeof(small)) == -EINVAL);
    CHECK(strlen(small) == sizeof(small) - 1);
    CHECK(config_check(GW_KIND_ROUTE, doc, NULL, 0) == -EINVAL);
    json_decref(doc);
}

/* ---- references ----------------------------------------------------------- */

static void test_refs(void)
{
    struct config_ref refs[4];
    char idbuf[4 * 24];
    json_t *r = json_loads("{\"uri\":\"/\",\"upstream_id\":\"u1\",\"service_id\":2,"
                           "\"plugin_config_id\":\"pc\"}",
                           0, NULL);
    REQUIRE(r);
    int n = config_refs(GW_KIND_ROUTE, r, refs, 4, idbuf);
    REQUIRE(n == 3);
    CHECK(refs[0].kind == GW_KIND_UPSTREAM);
    CHECK_STREQ(refs[0].id, "u1");
    CHECK_STREQ(refs[0].field, "upstream_id");
    CHECK(refs[1].kind == GW_KIND_SERVICE);
    CHECK_STREQ(refs[1].id, "2");
    CHECK_STREQ(refs[1].field, "service_id");
    CHECK(refs[2].kind == GW_KIND_PLUGIN_CONFIG);
    CHECK_STREQ(refs[2].id, "pc");
    CHECK(config_refs(GW_KIND_ROUTE, r, refs, 1, idbuf) == 1);
    CHECK(config_refs(GW_KIND_ROUTE, r, refs, 0, idbuf) == 0);
    CHECK(config_refs(GW_KIND_UPSTREAM, r, refs, 4, idbuf) == 0);
    CHECK(config_refs(GW_KIND_CONSUMER, r, refs, 4, idbuf) == 0);
    /* a service takes upstream_id only; a stream route upstream and service */
    CHECK(config_refs(GW_KIND_SERVICE, r, refs, 4, idbuf) == 1);
    CHECK(config_refs(GW_KIND_STREAM_ROUTE, r, refs, 4, idbuf) == 2);
    CHECK(refs[1].kind == GW_KIND_SERVICE);
    CHECK_STREQ(refs[1].id, "2");
    json_decref(r);

    r = json_loads("{\"upstream_id\":9223372036854775807,\"service_id\":1.5}", 0, NULL);
    REQUIRE(r);
    n = config_refs(GW_KIND_STREAM_ROUTE, r, refs, 4, idbuf);
    CHECK(n == 1);
    CHECK_STREQ(refs[0].id, "9223372036854775807");
    CHECK(config_refs(GW_KIND_STREAM_ROUTE, r, refs, 4, NULL) == 0);
    json_decref(r);

    /* 2.0 passes the schema's "integer", so it must be listed */
    r = json_loads("{\"uri\":\"/\",\"upstream_id\":2.0}", 0, NULL);
    REQUIRE(r);
    CHECK(config_check(GW_KIND_ROUTE, r, err, sizeof(err)) == 0);
    n = config_refs(GW_KIND_ROUTE, r, refs, 4, idbuf);
    CHECK(n == 1);
    CHECK_STREQ(refs[0].id, "2");
    json_decref(r);
}

/* ---- registry ------------------------------------------------------------- */

static void test_plugin_registry(void)
{
    const json_t *names = config_plugin_names();
    REQUIRE(json_is_array(names));
    CHECK(json_array_size(names) == 12);
    for (size_t i = 1; i < json_array_size(names); i++)
        CHECK(strcmp(json_string_value(json_array_get(names, i - 1)),
                     json_string_value(json_array_get(names, i))) < 0);
    CHECK_STREQ(json_string_value(json_array_get(names, 0)), "basic-auth");
    CHECK(config_plugin_is_stream("mqtt-proxy"));
    CHECK(config_plugin_is_stream("ip-restriction"));
    CHECK(config_plugin_is_stream("limit-conn"));
    CHECK(config_plugin_is_stream("prometheus"));
    CHECK(!config_plugin_is_stream("key-auth"));
    CHECK(!config_plugin_is_stream("nope"));
    CHECK(!config_plugin_is_stream(NULL));
    const json_t *ka = config_plugin_schema("key-auth");
    REQUIRE(json_is_object(ka));
    CHECK(json_object_get(json_object_get(ka, "properties"), "header") != NULL);
    CHECK(json_object_get(json_object_get(ka, "properties"), "_meta") != NULL);
    CHECK(config_plugin_schema("nope") == NULL);
    for (int k = 0; k < GW_KIND__COUNT; k++) {
        CHECK(json_is_object(config_kind_schema((enum gw_kind)k)));
        CHECK(config_kind_from_collection(config_kind_collection((enum gw_kind)k)) == k);
    }
    CHECK_STREQ(config_kind_name(GW_KIND_STREAM_ROUTE), "stream_route");
    CHECK_STREQ(config_kind_collection(GW_KIND_SSL), "ssls");
    CHECK(config_kind_from_collection("nope") == -1);
    CHECK(config_id_valid("a-b_c.1"));
    CHECK(!config_id_valid(""));
    CHECK(!config_id_valid("a/b"));
    CHECK(!config_id_valid("0123456789012345678901234567890123456789012345678901234567890123x"));
}

/* Every pattern, patternProperties key and $ref of every embedded schema must
 * work in the validator: a broken one is a fatal schema fault that would only
 * show when a document reaches it. */
static int walk_errors;

static void walk(const json_t *node, const json_t *registry, int depth)
{
    char msg[1024];
    if (depth > 64)
        return;
    if (json_is_array(node)) {
        size_t i;
        json_t *v;
        json_array_foreach(node, i, v)
        {
            walk(v, registry, depth + 1);
        }
        return;
    }
    if (!json_is_object(node))
        return;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)node, k, v)
    {
        json_t *probe = NULL, *doc = json_string("x");
        if (strcmp(k, "pattern") == 0 && json_is_string(v))
            probe = json_pack("{s:O}", "pattern", v);
        else if (strcmp(k, "$ref") == 0 && json_is_string(v))
            probe = json_pack("{s:O}", "$ref", v);
        if (probe) {
            jsonschema_validate(probe, doc, registry, msg, sizeof(msg));
            if (strstr(msg, "failed to compile") || strstr(msg, "failed to resolve")) {
                fprintf(stderr, "  schema fault: %s\n", msg);
                walk_errors++;
            }
        }
        if (strcmp(k, "patternProperties") == 0 && json_is_object(v)) {
            const char *pk;
            json_t *pv;
            json_object_foreach(v, pk, pv)
            {
                json_t *p = json_pack("{s:s}", "pattern", pk);
                jsonschema_validate(p, doc, registry, msg, sizeof(msg));
                if (strstr(msg, "failed to compile")) {
                    fprintf(stderr, "  schema fault: %s\n", msg);
                    walk_errors++;
                }
                json_decref(p);
            }
        }
        json_decref(probe);
        json_decref(doc);
        walk(v, registry, depth + 1);
    }
}

static void test_schema_self_check(void)
{
    /* the registry as config.c builds it, from the same embedded texts */
    json_t *registry = json_object(), *defs = json_object(), *docs = json_array();
    REQUIRE(registry && defs && docs);
    json_object_set_new(registry, "definitions", defs);
    for (size_t i = 0; i < embedded_schemas_count; i++) {
        json_t *doc = json_loads(embedded_schemas[i].text, JSON_REJECT_DUPLICATES, NULL);
        CHECK(json_is_object(doc));
        if (!doc)
            continue;
        if (strcmp(embedded_schemas[i].name, "definitions") == 0)
            json_object_update(defs, doc);
        else if (strncmp(embedded_schemas[i].name, "plugin/", 7) != 0)
            json_object_set(defs, embedded_schemas[i].name, doc);
        json_array_append_new(docs, doc);
    }
    walk_errors = 0;
    walk(docs, registry, 0);
    CHECK(walk_errors == 0);
    json_decref(docs);
    json_decref(registry);
}

int main(void)
{
    RUN(test_doc_route_minimal);
    RUN(test_doc_routes);
    RUN(test_doc_plugins_on_routes);
    RUN(test_doc_limit_defaults);
    RUN(test_doc_upstreams);
    RUN(test_doc_upstream_checks_defaults);
    RUN(test_doc_stream_routes);
    RUN(test_doc_other_kinds);
    RUN(test_doc_consumer);
    RUN(test_ssl_defaults);
    RUN(test_err_route_schema);
    RUN(test_err_route_code_rules);
    RUN(test_err_upstream_rules);
    RUN(test_err_plugins);
    RUN(test_err_consumer);
    RUN(test_err_other_kinds);
    RUN(test_err_ssl);
    RUN(test_err_args);
    RUN(test_refs);
    RUN(test_plugin_registry);
    RUN(test_schema_self_check);
    config_cleanup();
    jsonschema_cleanup();
    return check_summary();
}
