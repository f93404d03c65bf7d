/*
 * Unit tests for common/yaml_json.c: YAML and JSON text to jansson trees.
 */
#include "check.h"
#include "yaml_json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char err[512];

static json_t *parse(const char *text)
{
    err[0] = '\0';
    return yaml_json_parse(text, strlen(text), err, sizeof(err));
}

/* Parses text and compares it with the expected JSON. */
static int same(const char *yaml, const char *expect_json)
{
    json_t *got = parse(yaml);
    json_t *want = json_loads(expect_json, JSON_DECODE_ANY, NULL);
    int ok = got && want && json_equal(got, want);
    if (!ok) {
        char *g = got ? json_dumps(got, JSON_ENCODE_ANY | JSON_SORT_KEYS) : NULL;
        fprintf(stderr, "    yaml: %s\n    got:  %s\n    want: %s\n    err: %s\n", yaml,
                g ? g : "(null)", expect_json, err);
        free(g);
    }
    json_decref(got);
    json_decref(want);
    return ok;
}

/* Parsing must fail, and the message must contain what is given. */
static int fails(const char *yaml, const char *msg_part)
{
    json_t *got = parse(yaml);
    if (got) {
        char *g = json_dumps(got, JSON_ENCODE_ANY);
        fprintf(stderr, "    yaml: %s\n    parsed as %s, expected an error\n", yaml, g);
        free(g);
        json_decref(got);
        return 0;
    }
    if (!strstr(err, msg_part)) {
        fprintf(stderr, "    yaml: %s\n    error \"%s\" lacks \"%s\"\n", yaml, err, msg_part);
        return 0;
    }
    return 1;
}

static void test_empty_inputs(void)
{
    CHECK(same("", "{}"));
    CHECK(same("# just a comment\n\n", "{}"));
    CHECK(same("---\n", "{}"));
    CHECK(same("---\n...\n", "{}"));
    json_t *j = yaml_json_parse(NULL, 0, err, sizeof(err));
    CHECK(json_is_object(j) && json_object_size(j) == 0);
    json_decref(j);
}

static void test_scalars_core_schema(void)
{
    CHECK(same("a: null\nb: Null\nc: NULL\nd: ~\ne:\n", "{\"a\":null,\"b\":null,\"c\":null,"
                                                        "\"d\":null,\"e\":null}"));
    CHECK(same("[true, True, TRUE, false, False, FALSE]", "[true,true,true,false,false,false]"));
    /* YAML 1.1 booleans are strings under the 1.2 core schema. */
    CHECK(same("[yes, no, on, off, y, n, tRUE]",
               "[\"yes\",\"no\",\"on\",\"off\",\"y\",\"n\",\"tRUE\"]"));
    CHECK(same("[0, -1, +7, 010, 9223372036854775807, -9223372036854775808]",
               "[0,-1,7,10,9223372036854775807,-9223372036854775808]"));
    CHECK(same("[0o17, 0x1F, 0xff, 0o0, 0x0]", "[15,31,255,0,0]"));
    /* Not numbers in the core schema. */
    CHECK(same("[0o18, 0xG, -0x1F, 0b101, 1_000, 0x, 0o, 1.2.3, 127.0.0.1, 1e, .e5]",
               "[\"0o18\",\"0xG\",\"-0x1F\",\"0b101\",\"1_000\",\"0x\",\"0o\",\"1.2.3\","
               "\"127.0.0.1\",\"1e\",\".e5\"]"));
    CHECK(
        same("[1.5, -0.25, .5, 5., 1e3, 1E-2, +2.5e+2]", "[1.5,-0.25,0.5,5.0,1000.0,0.01,250.0]"));
    /* Quoted scalars stay strings. */
    CHECK(same("['1', \"true\", 'null', \"0x1F\", '']", "[\"1\",\"true\",\"null\",\"0x1F\",\"\"]"));
    CHECK(same("s: hello world\nt: 'it''s'\nu: \"tab\\tnew\\nline\\u00e9\"",
               "{\"s\":\"hello world\",\"t\":\"it's\",\"u\":\"tab\\tnew\\nline\\u00e9\"}"));
}

static void test_integer_types(void)
{
    json_t *j = parse("[1, 1.0, 18446744073709551616, 9223372036854775808, "
                      "-9223372036854775809, 0xFFFFFFFFFFFFFFFF, 0o7777777777777777777777]");
    REQUIRE(j);
    CHECK(json_is_integer(json_array_get(j, 0)));
    CHECK(json_is_real(json_array_get(j, 1)));
    /* Past int64: reals, not wrapped integers. */
    for (size_t i = 2; i < 7; i++)
        CHECK(json_is_real(json_array_get(j, i)));
    CHECK(json_real_value(json_array_get(j, 2)) == 18446744073709551616.0);
    CHECK(json_real_value(json_array_get(j, 3)) == 9223372036854775808.0);
    CHECK(json_real_value(json_array_get(j, 4)) == -9223372036854775808.0);
    CHECK(json_real_value(json_array_get(j, 5)) == 18446744073709551615.0);
    json_decref(j);

    j = parse("[0x7FFFFFFFFFFFFFFF, 0x8000000000000000]");
    REQUIRE(j);
    CHECK(json_is_integer(json_array_get(j, 0)) &&
          json_integer_value(json_array_get(j, 0)) == INT64_MAX);
    CHECK(json_is_real(json_array_get(j, 1)));
    json_decref(j);
}

static void test_inf_nan_rejected(void)
{
    CHECK(fails("a: .inf", "1:4:"));
    CHECK(fails("a: -.Inf", "no JSON representation"));
    CHECK(fails("a: .NaN", "no JSON representation"));
    CHECK(fails("x: 1e999", "out of range"));
    /* Quoted, they are just strings. */
    CHECK(same("a: '.inf'", "{\"a\":\".inf\"}"));
}

static void test_tags(void)
{
    CHECK(same("[!!str 123, !!str true, !!int \"42\", !!float 1, !!bool \"false\", !!null '']",
               "[\"123\",\"true\",42,1.0,false,null]"));
    CHECK(same("! 12", "\"12\""));
    CHECK(same("!!map {a: 1}", "{\"a\":1}"));
    CHECK(same("!!seq [1]", "[1]"));
    CHECK(fails("a: !!int abc", "does not match its tag"));
    CHECK(fails("a: !!int 1.5", "does not match its tag"));
    CHECK(fails("a: !!bool yes", "does not match its tag"));
    CHECK(fails("a: !custom x", "unsupported tag"));
    CHECK(fails("a: !!binary aGVsbG8=", "unsupported tag"));
    CHECK(fails("a: !!seq {b: 1}", "unsupported tag"));
}

static void test_block_and_flow(void)
{
    CHECK(same("a:\n  b:\n    - 1\n    - x: y\n      z: [1, {q: r}]\n  c: {d: e, f: [g]}\n",
               "{\"a\":{\"b\":[1,{\"x\":\"y\",\"z\":[1,{\"q\":\"r\"}]}],"
               "\"c\":{\"d\":\"e\",\"f\":[\"g\"]}}}"));
    CHECK(same("- a\n- - b\n  - c\n-\n  d: 1\n", "[\"a\",[\"b\",\"c\"],{\"d\":1}]"));
    CHECK(same("text: |\n  line 1\n  line 2\nfold: >\n  a\n  b\n",
               "{\"text\":\"line 1\\nline 2\\n\",\"fold\":\"a b\\n\"}"));
    /* JSON is YAML. */
    CHECK(same("{\"a\": [1, 2.5, \"x\", true, null, {\"b\": {}}], \"c\": []}",
               "{\"a\":[1,2.5,\"x\",true,null,{\"b\":{}}],\"c\":[]}"));
    CHECK(same("\"just a string\"", "\"just a string\""));
    CHECK(same("42", "42"));
    /* Keys are the scalar's text. */
    CHECK(same("1: a\ntrue: b\nnull: c\n0x10: d\n", "{\"1\":\"a\",\"true\":\"b\","
                                                    "\"null\":\"c\",\"0x10\":\"d\"}"));
    /* Unicode, and a UTF-8 byte order mark. */
    CHECK(same("\xef\xbb\xbfname: \xc3\xa9t\xc3\xa9\n", "{\"name\":\"\\u00e9t\\u00e9\"}"));
}

static void test_apisix_config_yaml(void)
{
    const char *text = "apisix:\n"
                       "  node_listen: 9080              # APISIX listening port\n"
                       "  enable_ipv6: false\n"
                       "  enable_admin: true\n"
                       "  ssl:\n"
                       "    enable: true\n"
                       "    listen:\n"
                       "      - port: 9443\n"
                       "        enable_http2: true\n"
                       "deployment:\n"
                       "  role: traditional\n"
                       "  role_traditional:\n"
                       "    config_provider: etcd\n"
                       "  admin:\n"
                       "    admin_key:\n"
                       "      - name: admin\n"
                       "        key: edd1c9f034335f136f87ad84b625c8f1\n"
                       "        role: admin\n"
                       "    allow_admin:\n"
                       "      - 127.0.0.0/24\n"
                       "      - 0.0.0.0/0\n"
                       "  etcd:\n"
                       "    host:\n"
                       "      - \"http://127.0.0.1:2379\"\n"
                       "    prefix: /apisix\n"
                       "    timeout: 30\n"
                       "plugin_attr:\n"
                       "  prometheus:\n"
                       "    export_addr:\n"
                       "      ip: 127.0.0.1\n"
                       "      port: 9091\n";
    json_t *j = parse(text);
    REQUIRE(j);
    CHECK(json_integer_value(json_object_get(json_object_get(j, "apisix"), "node_listen")) == 9080);
    CHECK(json_is_false(json_object_get(json_object_get(j, "apisix"), "enable_ipv6")));
    json_t *admin = json_object_get(json_object_get(j, "deployment"), "admin");
    json_t *key0 = json_array_get(json_object_get(admin, "admin_key"), 0);
    CHECK_STREQ(json_string_value(json_object_get(key0, "key")),
                "edd1c9f034335f136f87ad84b625c8f1");
    CHECK_STREQ(json_string_value(json_array_get(json_object_get(admin, "allow_admin"), 1)),
                "0.0.0.0/0");
    json_t *etcd = json_object_get(json_object_get(j, "deployment"), "etcd");
    CHECK_STREQ(json_string_value(json_array_get(json_object_get(etcd, "host"), 0)),
                "http://127.0.0.1:2379");
    CHECK_STREQ(
        json_string_value(json_object_get(
            json_object_get(json_object_get(json_object_get(j, "plugin_attr"), "prometheus"),
                            "export_addr"),
            "ip")),
        "127.0.0.1");
    json_decref(j);
}

static void test_apisix_standalone_end_marker(void)
{
    const char *text = "routes:\n"
                       "  -\n"
                       "    id: 1\n"
                       "    uri: /hello\n"
                       "    upstream:\n"
                       "      nodes:\n"
                       "        \"127.0.0.1:1980\": 1\n"
                       "      type: roundrobin\n"
                       "upstreams:\n"
                       "  - id: 1\n"
                       "    nodes:\n"
                       "      \"127.0.0.1:1980\": 1\n"
                       "    type: chash\n"
                       "    key: remote_addr\n"
                       "#END\n";
    json_t *j = parse(text);
    REQUIRE(j);
    json_t *r = json_array_get(json_object_get(j, "routes"), 0);
    CHECK(json_integer_value(json_object_get(r, "id")) == 1);
    CHECK_STREQ(json_string_value(json_object_get(r, "uri")), "/hello");
    CHECK(json_integer_value(json_object_get(
              json_object_get(json_object_get(r, "upstream"), "nodes"), "127.0.0.1:1980")) == 1);
    CHECK(json_array_size(json_object_get(j, "upstreams")) == 1);
    CHECK(json_object_size(j) == 2);
    json_decref(j);

    /* Without a final newline, and with content after it (still a comment). */
    CHECK(same("routes: []\n#END", "{\"routes\":[]}"));
    CHECK(same("routes: []\n#END\n# trailing\n", "{\"routes\":[]}"));
}

static void test_anchors_and_aliases(void)
{
    CHECK(same("base: &b {type: roundrobin, nodes: {\"a:1\": 1}}\n"
               "u1: *b\n"
               "list: [&x 5, *x, *x]\n",
               "{\"base\":{\"type\":\"roundrobin\",\"nodes\":{\"a:1\":1}},"
               "\"u1\":{\"type\":\"roundrobin\",\"nodes\":{\"a:1\":1}},\"list\":[5,5,5]}"));
    /* An alias is a copy: changing one does not change the other. */
    json_t *j = parse("a: &a {x: 1}\nb: *a\n");
    REQUIRE(j);
    json_object_set_new(json_object_get(j, "b"), "x", json_integer(2));
    CHECK(json_integer_value(json_object_get(json_object_get(j, "a"), "x")) == 1);
    json_decref(j);
    /* Anchors may be redefined; an alias sees the latest. */
    CHECK(same("- &a 1\n- *a\n- &a 2\n- *a\n", "[1,1,2,2]"));
    /* Scalar aliases as keys. */
    CHECK(same("k: &k name\n*k : v\n", "{\"k\":\"name\",\"name\":\"v\"}"));
    CHECK(fails("a: *nope", "unknown anchor \"nope\""));
    /* A node cannot refer to itself. */
    CHECK(fails("a: &a [1, *a]", "unknown anchor"));
    CHECK(fails("a: &a [1]\n*a : 2\n", "cannot be a key"));
}

static void test_merge_keys(void)
{
    CHECK(same("base: &base {type: roundrobin, timeout: 5}\n"
               "up:\n"
               "  <<: *base\n"
               "  timeout: 9\n"
               "  id: 1\n",
               "{\"base\":{\"type\":\"roundrobin\",\"timeout\":5},"
               "\"up\":{\"type\":\"roundrobin\",\"timeout\":9,\"id\":1}}"));
    /* Explicit keys win even before the merge; earlier merges win. */
    CHECK(same("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc: {x: 0, <<: [*a, *b]}\n",
               "{\"a\":{\"x\":1,\"y\":1},\"b\":{\"y\":2,\"z\":2},"
               "\"c\":{\"x\":0,\"y\":1,\"z\":2}}"));
    CHECK(fails("a: {<<: 5}", "merge key"));
    CHECK(fails("a: {<<: [{x: 1}, 3]}", "merge key"));
    /* A merged key overridden twice is still a duplicate. */
    CHECK(fails("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n  x: 3\n", "duplicate key \"x\""));
    /* Quoted "<<" is an ordinary key. */
    CHECK(same("\"<<\": 1", "{\"<<\":1}"));
}

static void test_alias_bomb(void)
{
    const char *bomb =
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
        "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
        "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
        "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
        "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
        "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
        "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
    CHECK(fails(bomb, "more than 1000000 nodes"));
    /* The error names where the limit was hit (line 7 or 8). */
    CHECK(err[0] == '7' || err[0] == '8');

    /* Aliases that would nest too deep. */
    char deep[1024];
    size_t n = 0;
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "a: &a ");
    for (int i = 0; i < 40; i++)
        deep[n++] = '[';
    for (int i = 0; i < 40; i++)
        deep[n++] = ']';
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "\nb: ");
    for (int i = 0; i < 30; i++)
        deep[n++] = '[';
    n += (size_t)snprintf(deep + n, sizeof(deep) - n, "*a");
    for (int i = 0; i < 30; i++)
        deep[n++] = ']';
    deep[n] = '\0';
    CHECK(fails(deep, "nests deeper than 64"));
}

static void test_depth_limit(void)
{
    char buf[512];
    /* 64 levels in all (the root object counts) is fine, 65 is not. */
    for (int levels = 64; levels <= 65; levels++) {
        size_t n = 0;
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "a: ");
        for (int i = 0; i < levels - 1; i++)
            buf[n++] = '[';
        for (int i = 0; i < levels - 1; i++)
            buf[n++] = ']';
        buf[n] = '\0';
        json_t *j = parse(buf);
        if (levels == 64)
            CHECK(j != NULL);
        else
            CHECK(j == NULL && strstr(err, "deeper than 64"));
        json_decref(j);
    }
    /* Very deep input fails fast and cleanly. */
    size_t big = 100000;
    char *deep = malloc(big + 1);
    REQUIRE(deep);
    memset(deep, '[', big);
    deep[big] = '\0';
    json_t *j = yaml_json_parse(deep, big, err, sizeof(err));
    CHECK(j == NULL);
    CHECK_CONTAINS(err, "deeper than 64");
    free(deep);
}

static void test_keys_errors(void)
{
    CHECK(fails("a: 1\nb: 2\na: 3\n", "3:1: duplicate key \"a\""));
    CHECK(fails("{x: 1, 'x': 2}", "duplicate key \"x\""));
    CHECK(fails("? [a, b]\n: 1\n", "1:3: a mapping key must be a scalar, not a sequence"));
    CHECK(fails("? {a: b}\n: 1\n", "must be a scalar, not a mapping"));
    CHECK(fails("{[1]: 2}", "must be a scalar"));
    CHECK(fails("\"a\\0b\": 1", "NUL"));
    /* A NUL inside a value is fine. */
    json_t *j = parse("a: \"x\\0y\"");
    REQUIRE(j);
    CHECK(json_string_length(json_object_get(j, "a")) == 3);
    json_decref(j);
}

static void test_multi_document(void)
{
    CHECK(fails("a: 1\n---\nb: 2\n", "2:1: a second YAML document"));
    CHECK(fails("--- 1\n--- 2\n", "second YAML document"));
    /* One document with explicit markers is fine. */
    CHECK(same("---\na: 1\n...\n", "{\"a\":1}"));
    CHECK(same("%YAML 1.2\n---\na: 1\n", "{\"a\":1}"));
}

static void test_syntax_errors_have_position(void)
{
    CHECK(fails("a: 1\n b: 2\n", "2:3:"));
    CHECK(fails("a: [1, 2\nb: 3\n", ":"));
    CHECK(fails("key: \"unterminated\n", "quoted scalar at 1:6)"));
    CHECK(fails("a:\n\t- b\n", "2:1:"));
    /* Invalid UTF-8: the reader's byte offset turned into line:column. */
    CHECK(fails("a: 1\nb: \xff\n", "2:4:"));
    CHECK(fails("a: 1\nb: \xc3\n", "2:"));
}

static void test_error_buffer_edges(void)
{
    char small[8];
    json_t *j = yaml_json_parse("a: [", 4, small, sizeof(small));
    CHECK(j == NULL);
    CHECK(strlen(small) < sizeof(small));
    j = yaml_json_parse("a: [", 4, NULL, 0);
    CHECK(j == NULL);
    /* Length is honoured: no reading past len. */
    j = yaml_json_parse("a: 1garbage: [", 4, err, sizeof(err));
    CHECK(j && json_integer_value(json_object_get(j, "a")) == 1);
    json_decref(j);
}

static void test_load_file(void)
{
    char path[] = "/tmp/airgw-test-yaml-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    const char *text = "routes:\n  - uri: /x\n    id: r1\n#END\n";
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    close(fd);
    json_t *j = yaml_json_load_file(path, err, sizeof(err));
    CHECK(j && json_array_size(json_object_get(j, "routes")) == 1);
    json_decref(j);

    FILE *f = fopen(path, "w");
    REQUIRE(f);
    fputs("a: 1\na: 2\n", f);
    fclose(f);
    j = yaml_json_load_file(path, err, sizeof(err));
    CHECK(j == NULL);
    char want[128];
    snprintf(want, sizeof(want), "%s:2:1: duplicate key", path);
    CHECK_CONTAINS(err, want);
    unlink(path);

    j = yaml_json_load_file(path, err, sizeof(err));
    CHECK(j == NULL);
    CHECK_CONTAINS(err, path);
    CHECK_CONTAINS(err, "No such file");
}

int main(void)
{
    RUN(test_empty_inputs);
    RUN(test_scalars_core_schema);
    RUN(test_integer_types);
    RUN(test_inf_nan_rejected);
    RUN(test_tags);
    RUN(test_block_and_flow);
    RUN(test_apisix_config_yaml);
    RUN(test_apisix_standalone_end_marker);
    RUN(test_anchors_and_aliases);
    RUN(test_merge_keys);
    RUN(test_alias_bomb);
    RUN(test_depth_limit);
    RUN(test_keys_errors);
    RUN(test_multi_document);
    RUN(test_syntax_errors_have_position);
    RUN(test_error_buffer_edges);
    RUN(test_load_file);
    return check_summary();
}
