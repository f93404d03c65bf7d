/*
 * Unit tests for common/jsonschema.c: every keyword, the exact APISIX
 * (lua-resty-jsonschema) wording of each error, nested paths, default
 * injection (and its absence from branches that did not match), $ref, the
 * regex cache and PCRE translation, and the bounds (depth, step budget, error
 * buffer size). Messages are compared exactly, so a wording change fails here.
 */
#include "check.h"
#include "jsonschema.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static char msg[4096];

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &e);
    if (!j)
        fprintf(stderr, "  bad test JSON: %s: %s\n", text, e.text);
    return j;
}

/* Validates doc against schema (and registry when given). Returns "ok" or the
 * error message; *out, when not NULL, receives the (defaulted) document. */
static const char *validate_full(const char *schema_text, const char *doc_text,
                                 const char *registry_text, json_t **out)
{
    json_t *schema = parse(schema_text), *doc = parse(doc_text);
    json_t *registry = registry_text ? parse(registry_text) : NULL;
    if (out)
        *out = NULL;
    if (!schema || !doc || (registry_text && !registry)) {
        snprintf(msg, sizeof(msg), "<bad test json>");
    } else {
        memset(msg, 'X', sizeof(msg));
        int rc = jsonschema_validate(schema, doc, registry, msg, sizeof(msg));
        if (rc == 0) {
            if (msg[0] != '\0')
                snprintf(msg, sizeof(msg), "<rc 0 but err set>");
            else
                snprintf(msg, sizeof(msg), "ok");
        } else if (rc != -EINVAL) {
            snprintf(msg, sizeof(msg), "<rc %d>", rc);
        }
        if (out) {
            *out = doc;
            doc = NULL;
        }
    }
    json_decref(schema);
    json_decref(doc);
    json_decref(registry);
    return msg;
}

static const char *v(const char *schema, const char *doc)
{
    return validate_full(schema, doc, NULL, NULL);
}

/* True when the pattern compiled and did not match. */
static int no_match(const char *schema, const char *doc)
{
    return strncmp(v(schema, doc), "failed to match pattern", 23) == 0;
}

static const char *vr(const char *schema, const char *doc, const char *registry)
{
    return validate_full(schema, doc, registry, NULL);
}

/* Validates and compares the resulting document with expect_doc. */
static int doc_after(const char *schema, const char *doc, const char *expect_doc,
                     const char *expect_msg)
{
    json_t *out, *want = parse(expect_doc);
    const char *m = validate_full(schema, doc, NULL, &out);
    int ok = strcmp(m, expect_msg) == 0 && out && want && json_equal(out, want);
    if (!ok) {
        char *s = out ? json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY) : NULL;
        fprintf(stderr, "  got doc %s msg \"%s\", want doc %s msg \"%s\"\n", s ? s : "(null)", m,
                expect_doc, expect_msg);
        free(s);
    }
    json_decref(out);
    json_decref(want);
    return ok;
}

/* ---- type ---------------------------------------------------------------- */

static void test_type_single(void)
{
    CHECK_STREQ(v("{\"type\":\"string\"}", "\"a\""), "ok");
    CHECK_STREQ(v("{\"type\":\"string\"}", "1"), "wrong type: expected string, got number");
    CHECK_STREQ(v("{\"type\":\"string\"}", "1.5"), "wrong type: expected string, got number");
    CHECK_STREQ(v("{\"type\":\"string\"}", "true"), "wrong type: expected string, got boolean");
    CHECK_STREQ(v("{\"type\":\"string\"}", "false"), "wrong type: expected string, got boolean");
    CHECK_STREQ(v("{\"type\":\"string\"}", "[]"), "wrong type: expected string, got array");
    CHECK_STREQ(v("{\"type\":\"string\"}", "{}"), "wrong type: expected string, got object");
    CHECK_STREQ(v("{\"type\":\"string\"}", "null"), "wrong type: expected string, got null");
    CHECK_STREQ(v("{\"type\":\"object\"}", "[]"), "wrong type: expected object, got array");
    CHECK_STREQ(v("{\"type\":\"array\"}", "{}"), "wrong type: expected array, got object");
    CHECK_STREQ(v("{\"type\":\"number\"}", "3"), "ok");
    CHECK_STREQ(v("{\"type\":\"number\"}", "3.25"), "ok");
    CHECK_STREQ(v("{\"type\":\"boolean\"}", "false"), "ok");
    CHECK_STREQ(v("{\"type\":\"null\"}", "null"), "ok");
    CHECK_STREQ(v("{\"type\":\"null\"}", "0"), "wrong type: expected null, got number");
}

static void test_type_integer(void)
{
    CHECK_STREQ(v("{\"type\":\"integer\"}", "3"), "ok");
    CHECK_STREQ(v("{\"type\":\"integer\"}", "3.0"), "ok"); /* whole-valued real */
    CHECK_STREQ(v("{\"type\":\"integer\"}", "-0.0"), "ok");
    CHECK_STREQ(v("{\"type\":\"integer\"}", "3.5"), "wrong type: expected integer, got number");
    CHECK_STREQ(v("{\"type\":\"integer\"}", "\"3\""), "wrong type: expected integer, got string");
}

static void test_type_array_of_names(void)
{
    const char *s = "{\"type\":[\"string\",\"integer\"]}";
    CHECK_STREQ(v(s, "\"x\""), "ok");
    CHECK_STREQ(v(s, "7"), "ok");
    CHECK_STREQ(v(s, "7.5"), "wrong type: expected one of string, integer, got number");
    CHECK_STREQ(v(s, "true"), "wrong type: expected one of string, integer, got boolean");
    /* Unknown type names never match but do not crash. */
    CHECK_STREQ(v("{\"type\":\"table\"}", "{}"), "wrong type: expected table, got object");
}

/* ---- enum / const ---------------------------------------------------------- */

static void test_enum(void)
{
    const char *s = "{\"enum\":[\"GET\",\"POST\",1,{\"a\":[1,2]},null,true]}";
    CHECK_STREQ(v(s, "\"GET\""), "ok");
    CHECK_STREQ(v(s, "\"get\""), "matches none of the enum values");
    CHECK_STREQ(v(s, "1"), "ok");
    CHECK_STREQ(v(s, "1.0"), "ok"); /* Lua compares numbers, 1 == 1.0 */
    CHECK_STREQ(v(s, "2"), "matches none of the enum values");
    CHECK_STREQ(v(s, "{\"a\":[1,2]}"), "ok");
    CHECK_STREQ(v(s, "{\"a\":[2,1]}"), "matches none of the enum values");
    CHECK_STREQ(v(s, "{\"a\":[1,2],\"b\":1}"), "matches none of the enum values");
    CHECK_STREQ(v(s, "null"), "ok");
    CHECK_STREQ(v(s, "true"), "ok");
    CHECK_STREQ(v(s, "false"), "matches none of the enum values");
    CHECK_STREQ(v("{\"enum\":[]}", "1"), "matches none of the enum values");
}

static void test_const(void)
{
    CHECK_STREQ(v("{\"const\":\"x\"}", "\"x\""), "ok");
    CHECK_STREQ(v("{\"const\":\"x\"}", "\"y\""), "failed to check const value");
    CHECK_STREQ(v("{\"const\":{\"a\":1}}", "{\"a\":1.0}"), "ok");
    CHECK_STREQ(v("{\"const\":null}", "null"), "ok");
    CHECK_STREQ(v("{\"const\":null}", "0"), "failed to check const value");
}

/* ---- objects ---------------------------------------------------------------- */

static void test_properties_nested_path(void)
{
    const char *s = "{\"type\":\"object\",\"properties\":{\"upstream\":{\"type\":\"object\","
                    "\"properties\":{\"nodes\":{\"type\":\"object\"},\"retries\":{\"type\":"
                    "\"integer\",\"minimum\":0}}}}}";
    CHECK_STREQ(v(s, "{\"upstream\":{\"nodes\":{}}}"), "ok");
    CHECK_STREQ(v(s, "{\"upstream\":{\"nodes\":\"x\"}}"),
                "property \"upstream\" validation failed: property \"nodes\" validation failed: "
                "wrong type: expected object, got string");
    CHECK_STREQ(v(s, "{\"upstream\":{\"retries\":-1}}"),
                "property \"upstream\" validation failed: property \"retries\" validation "
                "failed: expected -1 to be at least 0");
    CHECK_STREQ(v(s, "{\"upstream\":5}"),
                "property \"upstream\" validation failed: wrong type: expected object, got number");
    /* Object keywords are skipped for non-objects when no type is given. */
    CHECK_STREQ(v("{\"properties\":{\"a\":{\"type\":\"string\"}},\"required\":[\"a\"]}", "5"),
                "ok");
    CHECK_STREQ(v("{\"properties\":{\"uri\":{\"type\":\"string\"}}}", "{\"uri\":1}"),
                "property \"uri\" validation failed: wrong type: expected string, got number");
}

static void test_property_name_quoting(void)
{
    /* Names are printed with Lua's %q: quotes and backslashes escaped. */
    CHECK_STREQ(v("{\"properties\":{\"a\\\"b\":{\"type\":\"string\"}}}", "{\"a\\\"b\":1}"),
                "property \"a\\\"b\" validation failed: wrong type: expected string, got number");
    CHECK_STREQ(v("{\"required\":[\"a\\\\b\"]}", "{}"), "property \"a\\\\b\" is required");
}

static void test_required(void)
{
    const char *s = "{\"type\":\"object\",\"properties\":{\"uri\":{\"type\":\"string\"},"
                    "\"count\":{\"type\":\"integer\",\"default\":1}},\"required\":[\"count\","
                    "\"other\"]}";
    CHECK_STREQ(v(s, "{\"count\":1,\"other\":true}"), "ok");
    /* A default does not satisfy "required" (APISIX checks before defaulting). */
    CHECK_STREQ(v(s, "{\"other\":true}"), "property \"count\" is required");
    CHECK_STREQ(v(s, "{\"count\":2}"), "property \"other\" is required");
    CHECK_STREQ(v("{\"required\":[\"a\",\"b\"]}", "{\"a\":1}"), "property \"b\" is required");
    /* A JSON null is a present value. */
    CHECK_STREQ(v("{\"required\":[\"a\"]}", "{\"a\":null}"), "ok");
}

static void test_additional_properties(void)
{
    const char *s = "{\"properties\":{\"a\":{}},\"additionalProperties\":false}";
    CHECK_STREQ(v(s, "{\"a\":1}"), "ok");
    CHECK_STREQ(v(s, "{\"a\":1,\"foo\":2}"), "additional properties forbidden, found foo");
    CHECK_STREQ(v("{\"additionalProperties\":true}", "{\"x\":1}"), "ok");
    const char *t = "{\"properties\":{\"a\":{}},\"additionalProperties\":{\"type\":\"integer\"}}";
    CHECK_STREQ(v(t, "{\"a\":\"s\",\"b\":2}"), "ok");
    CHECK_STREQ(v(t, "{\"a\":\"s\",\"b\":\"x\"}"),
                "failed to validate additional property b: wrong type: expected integer, got "
                "string");
}

static void test_pattern_properties(void)
{
    const char *s = "{\"patternProperties\":{\"^x-\":{\"type\":\"string\"}},"
                    "\"additionalProperties\":false}";
    CHECK_STREQ(v(s, "{\"x-a\":\"1\"}"), "ok");
    CHECK_STREQ(v(s, "{\"x-a\":1}"),
                "failed to validate x-a (matching \"^x-\"): wrong type: expected string, got "
                "number");
    CHECK_STREQ(v(s, "{\"y\":\"1\"}"), "additional properties forbidden, found y");
    /* Without additionalProperties unmatched names pass. */
    CHECK_STREQ(v("{\"patternProperties\":{\"^\\\\d+$\":{\"type\":\"integer\"}}}",
                  "{\"12\":3,\"ab\":\"x\"}"),
                "ok");
    CHECK_STREQ(
        v("{\"patternProperties\":{\"^\\\\d+$\":{\"type\":\"integer\"}}}", "{\"12\":\"x\"}"),
        "failed to validate 12 (matching \"^\\\\d+$\"): wrong type: expected integer, got "
        "string");
}

static void test_min_max_properties(void)
{
    CHECK_STREQ(v("{\"minProperties\":1}", "{}"), "expect object to have at least 1 properties");
    CHECK_STREQ(v("{\"minProperties\":1}", "{\"a\":1}"), "ok");
    CHECK_STREQ(v("{\"maxProperties\":1}", "{\"a\":1,\"b\":2}"),
                "expect object to have at most 1 properties");
    /* Counted after defaults are injected, as APISIX does. */
    CHECK_STREQ(v("{\"properties\":{\"a\":{\"default\":1}},\"minProperties\":1}", "{}"), "ok");
}

static void test_dependencies(void)
{
    const char *s = "{\"properties\":{\"a\":{\"type\":\"string\"}},\"dependencies\":{\"a\":["
                    "\"b\"],\"c\":[\"d\",\"e\"]}}";
    CHECK_STREQ(v(s, "{}"), "ok");
    CHECK_STREQ(v(s, "{\"a\":\"x\",\"b\":1}"), "ok");
    CHECK_STREQ(v(s, "{\"a\":\"x\"}"), "property \"b\" is required when \"a\" is set");
    CHECK_STREQ(v(s, "{\"c\":1,\"d\":1}"), "property \"e\" is required when \"c\" is set");
    /* Schema form, as APISIX's upstream schema uses it. */
    const char *t = "{\"dependencies\":{\"client_cert\":{\"required\":[\"client_key\"]},"
                    "\"k\":{\"not\":{\"required\":[\"j\"]}}}}";
    CHECK_STREQ(v(t, "{\"client_cert\":\"x\",\"client_key\":\"y\"}"), "ok");
    CHECK_STREQ(v(t, "{\"client_cert\":\"x\"}"),
                "failed to validate dependent schema for \"client_cert\": property "
                "\"client_key\" is required");
    CHECK_STREQ(v(t, "{\"k\":1,\"j\":1}"),
                "failed to validate dependent schema for \"k\": value wasn't supposed to match "
                "schema");
}

/* ---- arrays ------------------------------------------------------------------ */

static void test_items(void)
{
    const char *s = "{\"properties\":{\"methods\":{\"type\":\"array\",\"items\":{\"enum\":["
                    "\"GET\",\"POST\"]}}}}";
    CHECK_STREQ(v(s, "{\"methods\":[\"GET\",\"POST\"]}"), "ok");
    CHECK_STREQ(v(s, "{\"methods\":[\"PUT\"]}"),
                "property \"methods\" validation failed: failed to validate item 1: matches none "
                "of the enum values");
    CHECK_STREQ(v(s, "{\"methods\":[\"GET\",\"BAD\"]}"),
                "property \"methods\" validation failed: failed to validate item 2: matches none "
                "of the enum values");
    const char *n = "{\"items\":{\"properties\":{\"port\":{\"type\":\"integer\"}}}}";
    CHECK_STREQ(v(n, "[{\"port\":1},{\"port\":\"x\"}]"),
                "failed to validate item 2: property \"port\" validation failed: wrong type: "
                "expected integer, got string");
    CHECK_STREQ(v("{\"items\":false}", "[]"), "ok");
    CHECK_STREQ(v("{\"items\":false}", "[1]"), "failed to validate item 1: expect false always");
}

static void test_items_tuple(void)
{
    const char *s = "{\"items\":[{\"type\":\"string\"},{\"type\":\"integer\"}],"
                    "\"additionalItems\":false}";
    CHECK_STREQ(v(s, "[\"a\",1]"), "ok");
    CHECK_STREQ(v(s, "[\"a\"]"), "ok");
    CHECK_STREQ(v(s, "[\"a\",\"b\"]"),
                "failed to validate item 2: wrong type: expected integer, got string");
    CHECK_STREQ(v(s, "[\"a\",1,2]"), "found unexpected extra items in array");
    const char *t = "{\"items\":[{\"type\":\"string\"}],\"additionalItems\":{\"type\":\"null\"}}";
    CHECK_STREQ(v(t, "[\"a\",null,null]"), "ok");
    CHECK_STREQ(v(t, "[\"a\",null,1]"),
                "failed to validate additional item 3: wrong type: expected null, got number");
}

static void test_min_max_items(void)
{
    CHECK_STREQ(v("{\"minItems\":1}", "[]"), "expect array to have at least 1 items");
    CHECK_STREQ(v("{\"minItems\":1}", "[0]"), "ok");
    CHECK_STREQ(v("{\"maxItems\":2}", "[1,2,3]"), "expect array to have at most 2 items");
    CHECK_STREQ(v("{\"maxItems\":2}", "[1,2]"), "ok");
    /* Size checks come before item checks, as in APISIX. */
    CHECK_STREQ(v("{\"items\":{\"type\":\"string\"},\"maxItems\":1}", "[1,2]"),
                "expect array to have at most 1 items");
}

static void test_unique_items(void)
{
    const char *s = "{\"uniqueItems\":true}";
    CHECK_STREQ(v(s, "[1,2,3]"), "ok");
    CHECK_STREQ(v(s, "[1,2,1]"), "expected unique items but items 1 and 3 are equal");
    CHECK_STREQ(v(s, "[\"a\",\"b\",\"b\"]"), "expected unique items but items 2 and 3 are equal");
    CHECK_STREQ(v(s, "[1,1.0]"), "expected unique items but items 1 and 2 are equal");
    CHECK_STREQ(v(s, "[{\"a\":1},{\"a\":2},{\"a\":1}]"),
                "expected unique items but items 1 and 3 are equal");
    CHECK_STREQ(v(s, "[[1],[1,2]]"), "ok");
    CHECK_STREQ(v("{\"uniqueItems\":false}", "[1,1]"), "ok");
}

/* Long string arrays take the hashed path: same answer as the pairwise one. */
static void test_unique_items_long(void)
{
    const char *s = "{\"uniqueItems\":true}";
    size_t cap = 50000 * 12 + 16, len = 0;
    char *doc = malloc(cap);
    REQUIRE(doc);
    doc[len++] = '[';
    for (int i = 0; i < 50000; i++)
        len += (size_t)snprintf(doc + len, cap - len, "%s\"u%d\"", i ? "," : "", i);
    doc[len++] = ']';
    doc[len] = '\0';
    CHECK_STREQ(v(s, doc), "ok");
    /* A duplicate of item 7 at the very end. */
    memcpy(doc + len - 1, ",\"u6\"]", 7);
    CHECK_STREQ(v(s, doc), "expected unique items but items 7 and 50001 are equal");
    free(doc);
    /* Mixed types still work past the string fast path. */
    CHECK_STREQ(v(s, "[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\","
                     "\"l\",\"m\",\"n\",\"o\",\"p\",\"q\",1,1]"),
                "expected unique items but items 18 and 19 are equal");
}

/* ---- strings ---------------------------------------------------------------- */

static void test_string_length(void)
{
    CHECK_STREQ(v("{\"minLength\":2}", "\"a\""), "string too short, expected at least 2, got 1");
    CHECK_STREQ(v("{\"minLength\":2}", "\"ab\""), "ok");
    CHECK_STREQ(v("{\"maxLength\":3}", "\"abcd\""), "string too long, expected at most 3, got 4");
    /* Code points, not bytes: "héllo" is 5 code points, 6 bytes; "日本語" is 3. */
    CHECK_STREQ(v("{\"maxLength\":5}", "\"h\\u00e9llo\""), "ok");
    CHECK_STREQ(v("{\"maxLength\":4}", "\"h\\u00e9llo\""),
                "string too long, expected at most 4, got 5");
    CHECK_STREQ(v("{\"maxLength\":3}", "\"\\u65e5\\u672c\\u8a9e\""), "ok");
    CHECK_STREQ(v("{\"minLength\":2}", "\"\\ud83d\\ude00\""),
                "string too short, expected at least 2, got 1");
    /* Length keywords ignore non-strings. */
    CHECK_STREQ(v("{\"minLength\":2}", "1"), "ok");
}

static void test_pattern(void)
{
    CHECK_STREQ(v("{\"pattern\":\"^a+$\"}", "\"aaa\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^a+$\"}", "\"aab\""),
                "failed to match pattern \"^a+$\" with \"aab\"");
    /* Unanchored, as in JSON Schema. */
    CHECK_STREQ(v("{\"pattern\":\"b\"}", "\"abc\""), "ok");
    /* Pattern and value quoted as Lua's %q: backslash and quote escaped. */
    CHECK_STREQ(v("{\"pattern\":\"^\\\\d+$\"}", "\"1a\\\"\""),
                "failed to match pattern \"^\\\\d+$\" with \"1a\\\"\"");
    CHECK_STREQ(v("{\"pattern\":\"^x$\"}", "\"a\\nb\""),
                "failed to match pattern \"^x$\" with \"a\\\nb\"");
    /* Non-strings are not matched. */
    CHECK_STREQ(v("{\"pattern\":\"^x$\"}", "5"), "ok");
}

static void test_pattern_pcre_translation(void)
{
    /* APISIX's id pattern: a '-' after a range is literal in PCRE. */
    const char *id = "{\"pattern\":\"^[a-zA-Z0-9-_.]+$\"}";
    CHECK_STREQ(v(id, "\"route-1_a.b\""), "ok");
    CHECK_STREQ(v(id, "\"route 1\""),
                "failed to match pattern \"^[a-zA-Z0-9-_.]+$\" with \"route 1\"");
    CHECK_STREQ(v("{\"pattern\":\"^\\\\d{1,3}$\"}", "\"123\""), "ok");
    CHECK(no_match("{\"pattern\":\"^\\\\d{1,3}$\"}", "\"1234\""));
    CHECK_STREQ(v("{\"pattern\":\"^\\\\w+$\"}", "\"a_B9\""), "ok");
    CHECK(no_match("{\"pattern\":\"^\\\\w+$\"}", "\"a-b\""));
    CHECK_STREQ(v("{\"pattern\":\"^a\\\\sb$\"}", "\"a\\tb\""), "ok");
    CHECK(no_match("{\"pattern\":\"^\\\\S+$\"}", "\"a b\""));
    CHECK_STREQ(v("{\"pattern\":\"^\\\\D+$\"}", "\"ab\""), "ok");
    CHECK(no_match("{\"pattern\":\"^\\\\D+$\"}", "\"a1\""));
    CHECK_STREQ(v("{\"pattern\":\"^\\\\W$\"}", "\"-\""), "ok");
    /* Classes inside brackets, escaped punctuation inside and outside. */
    CHECK_STREQ(v("{\"pattern\":\"^[\\\\d.]+$\"}", "\"1.2.3\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^[\\\\w\\\\-]+$\"}", "\"a-b_c\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^[\\\\s]$\"}", "\" \""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^\\\\/api\\\\/v\\\\d$\"}", "\"/api/v2\""), "ok");
    CHECK(no_match("{\"pattern\":\"^a\\\\.b$\"}", "\"axb\""));
    CHECK_STREQ(v("{\"pattern\":\"^[\\\\]a]+$\"}", "\"]a]\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^[^\\\\]]+$\"}", "\"ab\""), "ok");
    CHECK(no_match("{\"pattern\":\"^[^\\\\]]+$\"}", "\"a]\""));
    CHECK_STREQ(v("{\"pattern\":\"^[\\\\^x]+$\"}", "\"^x\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^[\\\\^]$\"}", "\"^\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^[-^]$\"}", "\"-\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^[!--]$\"}", "\",\""), "ok"); /* range ending at '-' */
    CHECK_STREQ(v("{\"pattern\":\"^[[:alpha:]]+$\"}", "\"abc\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^[a[]+$\"}", "\"a[\""), "ok");
    /* Non-capturing groups and lazy quantifiers. */
    CHECK_STREQ(v("{\"pattern\":\"^(?:ab|cd)+?$\"}", "\"abcd\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^a*?b??$\"}", "\"aa\""), "ok");
    CHECK_STREQ(v("{\"pattern\":\"^a{2}?$\"}", "\"aa\""), "ok");
    /* APISIX's host pattern. */
    const char *host = "{\"pattern\":\"^\\\\*?[0-9a-zA-Z-._\\\\[\\\\]:]+$\"}";
    CHECK_STREQ(v(host, "\"*.example.com\""), "ok");
    CHECK_STREQ(v(host, "\"[::1]:80\""), "ok");
    CHECK(no_match(host, "\"a b\""));
}

static void test_pattern_bad(void)
{
    /* A pattern that does not compile is an error, not a crash, and is
     * reported even inside oneOf/not where failures are normally swallowed. */
    CHECK_CONTAINS(v("{\"pattern\":\"(\"}", "\"x\""), "failed to compile pattern \"(\": ");
    CHECK_CONTAINS(v("{\"pattern\":\"[a\"}", "\"x\""), "failed to compile pattern \"[a\": ");
    CHECK_STREQ(v("{\"pattern\":\"[\\\\D]\"}", "\"x\""),
                "failed to compile pattern \"[\\\\D]\": unsupported syntax");
    CHECK_STREQ(v("{\"pattern\":\"[z-a]\"}", "\"x\""),
                "failed to compile pattern \"[z-a]\": unsupported syntax");
    CHECK_CONTAINS(v("{\"oneOf\":[{\"pattern\":\"(\"},{\"type\":\"string\"}]}", "\"x\""),
                   "failed to compile pattern \"(\"");
    CHECK_CONTAINS(v("{\"not\":{\"pattern\":\"a{\"}}", "\"x\""), "failed to compile pattern");
    CHECK_CONTAINS(v("{\"patternProperties\":{\"(\":{}}}", "{\"a\":1}"),
                   "failed to compile pattern \"(\"");
    CHECK_CONTAINS(v("{\"pattern\":\"abc\\\\\"}", "\"x\""), "failed to compile pattern");
    /* The cached failure is reported the same way the second time. */
    CHECK_CONTAINS(v("{\"pattern\":\"(\"}", "\"y\""), "failed to compile pattern \"(\": ");
    /* Cleanup in the middle is fine: the cache refills. */
    jsonschema_cleanup();
    CHECK_CONTAINS(v("{\"pattern\":\"(\"}", "\"y\""), "failed to compile pattern \"(\": ");
    CHECK_STREQ(v("{\"pattern\":\"^y$\"}", "\"y\""), "ok");
}

static void test_pattern_cache_many(void)
{
    /* More distinct patterns than the cache holds: the rest are compiled per
     * use and must still be right (and not leak). */
    char schema[128], doc[64];
    int bad = 0;
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 400; i++) {
            snprintf(schema, sizeof(schema), "{\"pattern\":\"^p%d$\"}", i);
            snprintf(doc, sizeof(doc), "\"p%d\"", i);
            if (strcmp(v(schema, doc), "ok") != 0)
                bad++;
            snprintf(doc, sizeof(doc), "\"p%dx\"", i);
            if (strcmp(v(schema, doc), "ok") == 0)
                bad++;
        }
    }
    CHECK(bad == 0);
    jsonschema_cleanup();
    CHECK_STREQ(v("{\"pattern\":\"^p7$\"}", "\"p7\""), "ok");
}

/* ---- numbers ---------------------------------------------------------------- */

static void test_minimum_maximum(void)
{
    CHECK_STREQ(v("{\"minimum\":1}", "0"), "expected 0 to be at least 1");
    CHECK_STREQ(v("{\"minimum\":1}", "1"), "ok");
    CHECK_STREQ(v("{\"maximum\":65535}", "65536"), "expected 65536 to be at most 65535");
    CHECK_STREQ(v("{\"maximum\":65535}", "65535"), "ok");
    CHECK_STREQ(v("{\"exclusiveMinimum\":0}", "0"), "expected 0 to be greater than 0");
    CHECK_STREQ(v("{\"exclusiveMinimum\":0}", "0.001"), "ok");
    CHECK_STREQ(v("{\"exclusiveMaximum\":1}", "1"), "expected 1 to be smaller than 1");
    CHECK_STREQ(v("{\"exclusiveMaximum\":1}", "0.5"), "ok");
    /* Draft 4 boolean form. */
    CHECK_STREQ(v("{\"minimum\":0,\"exclusiveMinimum\":true}", "0"),
                "expected 0 to be greater than 0");
    CHECK_STREQ(v("{\"maximum\":5,\"exclusiveMaximum\":true}", "5"),
                "expected 5 to be smaller than 5");
    CHECK_STREQ(v("{\"minimum\":0,\"exclusiveMinimum\":false}", "0"), "ok");
    /* Numbers print like Lua's tostring. */
    CHECK_STREQ(v("{\"minimum\":0.5}", "0.25"), "expected 0.25 to be at least 0.5");
    CHECK_STREQ(v("{\"maximum\":1.0}", "2.0"), "expected 2 to be at most 1");
    CHECK_STREQ(v("{\"maximum\":1e20}", "1e21"), "expected 1e+21 to be at most 1e+20");
    /* Integers compare exactly. */
    CHECK_STREQ(v("{\"maximum\":9007199254740992}", "9007199254740993"),
                "expected 9.007199254741e+15 to be at most 9.007199254741e+15");
    /* Non-numbers are not range checked. */
    CHECK_STREQ(v("{\"minimum\":1}", "\"0\""), "ok");
}

static void test_multiple_of(void)
{
    CHECK_STREQ(v("{\"multipleOf\":3}", "9"), "ok");
    CHECK_STREQ(v("{\"multipleOf\":3}", "10"), "expected 10 to be a multiple of 3");
    CHECK_STREQ(v("{\"multipleOf\":0.5}", "1.5"), "ok");
    CHECK_STREQ(v("{\"multipleOf\":0.5}", "1.25"), "expected 1.25 to be a multiple of 0.5");
    CHECK_STREQ(v("{\"multipleOf\":0}", "1"), "ok"); /* nonsense limit ignored */
}

/* ---- combinators ---------------------------------------------------------- */

static void test_one_of(void)
{
    const char *s = "{\"oneOf\":[{\"type\":\"string\"},{\"type\":\"integer\"},{\"type\":"
                    "\"number\",\"minimum\":5}]}";
    CHECK_STREQ(v(s, "\"a\""), "ok");
    CHECK_STREQ(v(s, "3"), "ok");
    CHECK_STREQ(v(s, "7.5"), "ok");
    CHECK_STREQ(v(s, "true"), "value should match only one schema, but matches none");
    /* Without a type, minimum ignores strings: both branches match. */
    CHECK_STREQ(v("{\"oneOf\":[{\"type\":\"string\"},{\"minimum\":5}]}", "\"a\""),
                "value should match only one schema, but matches both schemas 1 and 2");
    CHECK_STREQ(v(s, "7"), "value should match only one schema, but matches both schemas 2 and 3");
    CHECK_STREQ(v(s, "1.5"), "value should match only one schema, but matches none");
    CHECK_STREQ(
        v("{\"oneOf\":[{\"required\":[\"a\"]},{\"required\":[\"b\"]}]}", "{\"a\":1,\"b\":2}"),
        "value should match only one schema, but matches both schemas 1 and 2");
    CHECK_STREQ(v("{\"properties\":{\"x\":{\"oneOf\":[{\"type\":\"string\"},{\"type\":"
                  "\"array\"}]}}}",
                  "{\"x\":1}"),
                "property \"x\" validation failed: value should match only one schema, but "
                "matches none");
}

static void test_any_of(void)
{
    /* APISIX's route rule. */
    const char *route = "{\"anyOf\":[{\"required\":[\"uri\"]},{\"required\":[\"uris\"]}]}";
    CHECK_STREQ(v(route, "{\"uri\":\"/a\"}"), "ok");
    CHECK_STREQ(v(route, "{\"uri\":\"/a\",\"uris\":[]}"), "ok");
    CHECK_STREQ(v(route, "{\"host\":\"x\"}"),
                "object matches none of the required: [\"uri\"] or [\"uris\"]");
    const char *multi = "{\"anyOf\":[{\"required\":[\"a\",\"b\"]},{\"required\":[\"c\"]}]}";
    CHECK_STREQ(v(multi, "{\"a\":1}"),
                "object matches none of the required: [\"a\",\"b\"] or [\"c\"]");
    /* No branch has "required": the bare wording APISIX prints. */
    const char *types = "{\"anyOf\":[{\"type\":\"array\"},{\"enum\":[\"*\"]}]}";
    CHECK_STREQ(v(types, "[]"), "ok");
    CHECK_STREQ(v(types, "\"*\""), "ok");
    CHECK_STREQ(v(types, "\"x\""), "object matches none of the required");
    /* Only the branches that have "required" are listed. */
    CHECK_STREQ(v("{\"anyOf\":[{\"type\":\"string\"},{\"required\":[\"x\"]}]}", "{}"),
                "object matches none of the required: [\"x\"]");
}

static void test_all_of(void)
{
    const char *s = "{\"allOf\":[{\"type\":\"integer\"},{\"minimum\":3}]}";
    CHECK_STREQ(v(s, "4"), "ok");
    CHECK_STREQ(v(s, "\"4\""), "allOf 1 failed: wrong type: expected integer, got string");
    CHECK_STREQ(v(s, "2"), "allOf 2 failed: expected 2 to be at least 3");
}

static void test_not(void)
{
    CHECK_STREQ(v("{\"not\":{\"type\":\"string\"}}", "1"), "ok");
    CHECK_STREQ(v("{\"not\":{\"type\":\"string\"}}", "\"a\""),
                "value wasn't supposed to match schema");
    CHECK_STREQ(v("{\"not\":{\"required\":[\"a\"]}}", "{\"a\":1}"),
                "value wasn't supposed to match schema");
}

static void test_if_then_else(void)
{
    const char *s = "{\"if\":{\"properties\":{\"policy\":{\"const\":\"redis\"}}},"
                    "\"then\":{\"required\":[\"redis_host\"]},\"else\":{\"properties\":{"
                    "\"redis_host\":{\"type\":\"null\"}}}}";
    CHECK_STREQ(v(s, "{\"policy\":\"redis\",\"redis_host\":\"h\"}"), "ok");
    CHECK_STREQ(v(s, "{\"policy\":\"redis\"}"), "then clause did not match");
    CHECK_STREQ(v(s, "{\"policy\":\"local\"}"), "ok");
    CHECK_STREQ(v(s, "{\"policy\":\"local\",\"redis_host\":\"h\"}"), "else clause did not match");
    CHECK_STREQ(v("{\"if\":{\"type\":\"string\"}}", "1"), "ok");
    CHECK_STREQ(v("{\"then\":false}", "1"), "ok"); /* then without if is ignored */
}

static void test_boolean_and_invalid_schemas(void)
{
    CHECK_STREQ(v("true", "{\"a\":1}"), "ok");
    CHECK_STREQ(v("false", "1"), "expect false always");
    CHECK_STREQ(v("{\"properties\":{\"a\":false}}", "{\"a\":1}"),
                "property \"a\" validation failed: expect false always");
    CHECK_STREQ(v("{\"properties\":{\"a\":5}}", "{\"a\":1}"),
                "property \"a\" validation failed: invalid schema: expected an object or a "
                "boolean, got number");
    /* Malformed keyword values are ignored, not dereferenced. */
    CHECK_STREQ(v("{\"properties\":5,\"required\":\"a\",\"items\":null,\"enum\":{},"
                  "\"minLength\":\"x\",\"type\":5,\"oneOf\":{},\"dependencies\":[]}",
                  "{}"),
                "ok");
    CHECK_STREQ(v("{\"description\":\"x\",\"title\":\"y\",\"unknownKeyword\":{}}", "1"), "ok");
    /* NULL arguments. */
    char err[64];
    json_t *doc = json_integer(1);
    CHECK(jsonschema_validate(NULL, doc, NULL, err, sizeof(err)) == -EINVAL);
    CHECK_CONTAINS(err, "invalid schema");
    json_t *schema = json_object();
    CHECK(jsonschema_validate(schema, NULL, NULL, err, sizeof(err)) == -EINVAL);
    CHECK_STREQ(err, "no document to validate");
    CHECK(jsonschema_validate(schema, doc, NULL, NULL, 0) == 0);
    json_decref(schema);
    json_decref(doc);
}

/* ---- format ------------------------------------------------------------------ */

static void test_format(void)
{
    CHECK_STREQ(v("{\"format\":\"ipv4\"}", "\"10.0.0.1\""), "ok");
    CHECK_STREQ(v("{\"format\":\"ipv4\"}", "\"10.0.0.256\""),
                "expect valid ipv4 address but got: 10.0.0.256");
    CHECK_STREQ(v("{\"format\":\"ipv4\"}", "\"::1\""), "expect valid ipv4 address but got: ::1");
    CHECK_STREQ(v("{\"format\":\"ipv6\"}", "\"::1\""), "ok");
    CHECK_STREQ(v("{\"format\":\"ipv6\"}", "\"fe80::1:2\""), "ok");
    CHECK_STREQ(v("{\"format\":\"ipv6\"}", "\"1.2.3.4\""),
                "expect valid ipv6 address but got: 1.2.3.4");
    CHECK_STREQ(v("{\"format\":\"cidr\"}", "\"10.0.0.0/8\""), "ok");
    CHECK_STREQ(v("{\"format\":\"cidr\"}", "\"10.0.0.1\""), "ok");
    CHECK_STREQ(v("{\"format\":\"cidr\"}", "\"2001:db8::/32\""), "ok");
    CHECK_STREQ(v("{\"format\":\"cidr\"}", "\"10.0.0.0/33\""),
                "expect valid cidr but got: 10.0.0.0/33");
    CHECK_STREQ(v("{\"format\":\"cidr\"}", "\"nope\""), "expect valid cidr but got: nope");
    CHECK_STREQ(v("{\"format\":\"ipv4\"}", "5"), "ok");        /* strings only */
    CHECK_STREQ(v("{\"format\":\"email\"}", "\"zzz\""), "ok"); /* unknown formats ignored */
    CHECK_STREQ(v("{\"items\":{\"format\":\"cidr\"}}", "[\"1.2.3.4/24\",\"x\"]"),
                "failed to validate item 2: expect valid cidr but got: x");
}

/* ---- $ref -------------------------------------------------------------------- */

static const char *registry = "{\"definitions\":{\"id_schema\":{\"anyOf\":[{\"type\":\"string\","
                              "\"minLength\":1},{\"type\":\"integer\",\"minimum\":1}]},"
                              "\"node\":{\"type\":\"object\",\"properties\":{\"host\":{\"type\":"
                              "\"string\"},\"next\":{\"$ref\":\"#/definitions/node\"}}},"
                              "\"a~b/c\":{\"type\":\"null\"},"
                              "\"loop\":{\"$ref\":\"#/definitions/loop\"}}}";

static void test_ref(void)
{
    const char *s = "{\"properties\":{\"id\":{\"$ref\":\"#/definitions/id_schema\"}}}";
    CHECK_STREQ(vr(s, "{\"id\":\"r1\"}", registry), "ok");
    CHECK_STREQ(vr(s, "{\"id\":5}", registry), "ok");
    CHECK_STREQ(vr(s, "{\"id\":0}", registry),
                "property \"id\" validation failed: object matches none of the required");
    /* $ref replaces its siblings (draft 4/7). */
    CHECK_STREQ(vr("{\"$ref\":\"#/definitions/a~0b~1c\",\"type\":\"string\"}", "null", registry),
                "ok");
    /* Recursive definitions follow the data. */
    CHECK_STREQ(vr("{\"$ref\":\"#/definitions/node\"}",
                   "{\"host\":\"a\",\"next\":{\"host\":\"b\",\"next\":{\"host\":3}}}", registry),
                "property \"next\" validation failed: property \"next\" validation failed: "
                "property \"host\" validation failed: wrong type: expected string, got number");
    /* Unknown refs, refs without registry, non-string refs: errors naming them. */
    CHECK_STREQ(
        vr("{\"properties\":{\"x\":{\"$ref\":\"#/definitions/nope\"}}}", "{\"x\":1}", registry),
        "property \"x\" validation failed: failed to resolve $ref \"#/definitions/nope\"");
    CHECK_STREQ(v("{\"$ref\":\"#/definitions/id_schema\"}", "1"),
                "failed to resolve $ref \"#/definitions/id_schema\"");
    CHECK_STREQ(vr("{\"$ref\":\"http://x/y\"}", "1", registry),
                "failed to resolve $ref \"http://x/y\"");
    CHECK_STREQ(vr("{\"$ref\":5}", "1", registry), "failed to resolve $ref (not a string)");
    /* An unresolvable ref inside oneOf is reported, not read as "matches none". */
    CHECK_STREQ(vr("{\"oneOf\":[{\"$ref\":\"#/definitions/nope\"},{\"type\":\"string\"}]}", "\"s\"",
                   registry),
                "failed to resolve $ref \"#/definitions/nope\"");
    /* A self-referencing definition stops at the depth bound. */
    CHECK_STREQ(vr("{\"$ref\":\"#/definitions/loop\"}", "1", registry), "schema nesting too deep");
}

/* ---- defaults ----------------------------------------------------------------- */

static void test_defaults_basic(void)
{
    const char *s = "{\"properties\":{\"scheme\":{\"type\":\"string\",\"default\":\"http\"},"
                    "\"timeout\":{\"type\":\"object\",\"default\":{\"connect\":6,\"send\":6}},"
                    "\"retries\":{\"default\":0},\"pass_host\":{\"enum\":[\"pass\",\"node\"],"
                    "\"default\":\"pass\"},\"nil\":{\"default\":null},"
                    "\"flag\":{\"default\":false}}}";
    CHECK(doc_after(s, "{}",
                    "{\"scheme\":\"http\",\"timeout\":{\"connect\":6,\"send\":6},\"retries\":0,"
                    "\"pass_host\":\"pass\",\"flag\":false}",
                    "ok"));
    /* Present values are kept, even when they are null. */
    CHECK(doc_after(s, "{\"scheme\":\"https\",\"retries\":3,\"flag\":true}",
                    "{\"scheme\":\"https\",\"timeout\":{\"connect\":6,\"send\":6},\"retries\":3,"
                    "\"pass_host\":\"pass\",\"flag\":true}",
                    "ok"));
    /* Nested objects get their own defaults. */
    const char *n = "{\"properties\":{\"upstream\":{\"properties\":{\"type\":{\"default\":"
                    "\"roundrobin\"}}}}}";
    CHECK(doc_after(n, "{\"upstream\":{}}", "{\"upstream\":{\"type\":\"roundrobin\"}}", "ok"));
    CHECK(doc_after(n, "{}", "{}", "ok"));
    /* Defaults inside array items. */
    CHECK(doc_after("{\"items\":{\"properties\":{\"w\":{\"default\":1}}}}", "[{},{\"w\":5}]",
                    "[{\"w\":1},{\"w\":5}]", "ok"));
}

static void test_defaults_deep_copy(void)
{
    json_t *schema = parse("{\"properties\":{\"t\":{\"default\":{\"k\":[1,2]}}}}");
    json_t *d1 = json_object(), *d2 = json_object();
    REQUIRE(schema && d1 && d2);
    CHECK(jsonschema_validate(schema, d1, NULL, msg, sizeof(msg)) == 0);
    CHECK(jsonschema_validate(schema, d2, NULL, msg, sizeof(msg)) == 0);
    json_t *def =
        json_object_get(json_object_get(json_object_get(schema, "properties"), "t"), "default");
    json_t *t1 = json_object_get(d1, "t");
    REQUIRE(def && t1);
    CHECK(t1 != def && json_object_get(t1, "k") != json_object_get(def, "k"));
    CHECK(json_object_get(d2, "t") != t1);
    json_array_append_new(json_object_get(t1, "k"), json_integer(3));
    CHECK(json_array_size(json_object_get(def, "k")) == 2);
    CHECK(json_array_size(json_object_get(json_object_get(d2, "t"), "k")) == 2);
    json_decref(schema);
    json_decref(d1);
    json_decref(d2);
}

static void test_defaults_one_of_branches(void)
{
    /* Branch 1 injects "x" before failing on "a"; only branch 2's "y" may
     * reach the document. */
    const char *s = "{\"oneOf\":[{\"properties\":{\"x\":{\"default\":1},\"a\":{\"type\":"
                    "\"string\"}},\"required\":[\"a\"]},{\"properties\":{\"y\":{\"default\":2},"
                    "\"b\":{\"type\":\"string\"}},\"required\":[\"b\"]}]}";
    CHECK(doc_after(s, "{\"b\":\"s\"}", "{\"b\":\"s\",\"y\":2}", "ok"));
    CHECK(doc_after(s, "{\"a\":\"s\"}", "{\"a\":\"s\",\"x\":1}", "ok"));
    /* No branch matches: no defaults at all. */
    CHECK(doc_after(s, "{\"c\":1}", "{\"c\":1}",
                    "value should match only one schema, but matches none"));
    /* Both match: no defaults either. */
    CHECK(doc_after(s, "{\"a\":\"s\",\"b\":\"t\"}", "{\"a\":\"s\",\"b\":\"t\"}",
                    "value should match only one schema, but matches both schemas 1 and 2"));
    /* Defaults deep inside the matched branch reach existing nested objects. */
    const char *n = "{\"oneOf\":[{\"properties\":{\"u\":{\"type\":\"object\",\"properties\":{"
                    "\"nodes\":{\"type\":\"object\"},\"type\":{\"default\":\"roundrobin\"}},"
                    "\"required\":[\"nodes\"]}},\"required\":[\"u\"]},{\"required\":[\"id\"],"
                    "\"properties\":{\"u\":{\"properties\":{\"type\":{\"default\":\"chash\"}}}}}]}";
    CHECK(doc_after(n, "{\"u\":{\"nodes\":{}}}", "{\"u\":{\"nodes\":{},\"type\":\"roundrobin\"}}",
                    "ok"));
    CHECK(doc_after(n, "{\"id\":1,\"u\":{}}", "{\"id\":1,\"u\":{\"type\":\"chash\"}}", "ok"));
}

static void test_defaults_any_of_if_not(void)
{
    /* anyOf: the first matching branch's defaults only. */
    const char *a = "{\"anyOf\":[{\"properties\":{\"x\":{\"default\":1}},\"required\":[\"a\"]},"
                    "{\"properties\":{\"y\":{\"default\":2}},\"required\":[\"b\"]},"
                    "{\"properties\":{\"z\":{\"default\":3}}}]}";
    CHECK(doc_after(a, "{\"b\":0}", "{\"b\":0,\"y\":2}", "ok"));
    CHECK(doc_after(a, "{\"a\":0,\"b\":0}", "{\"a\":0,\"b\":0,\"x\":1}", "ok"));
    CHECK(doc_after(a, "{}", "{\"z\":3}", "ok"));
    /* "if" and "not" are probes: no defaults; "then" applies its own. */
    const char *i = "{\"if\":{\"properties\":{\"p\":{\"default\":9}}},\"then\":{\"properties\":{"
                    "\"q\":{\"default\":8}}}}";
    CHECK(doc_after(i, "{}", "{\"q\":8}", "ok"));
    CHECK(doc_after("{\"not\":{\"properties\":{\"p\":{\"default\":9}},\"required\":[\"zz\"]}}",
                    "{}", "{}", "ok"));
    /* allOf applies in place. */
    CHECK(doc_after("{\"allOf\":[{\"properties\":{\"p\":{\"default\":9}}}]}", "{}", "{\"p\":9}",
                    "ok"));
}

/* ---- bounds -------------------------------------------------------------------- */

/* {"properties":{"a": ... {"type":"integer"} ...}} nested n deep, and the doc
 * {"a":{"a": ... "x"}} to match it. */
static void nested(int n, char **schema, char **doc)
{
    size_t cap = (size_t)n * 32 + 64;
    char *s = malloc(cap), *d = malloc(cap);
    size_t sl = 0, dl = 0;
    for (int i = 0; i < n; i++) {
        sl += (size_t)snprintf(s + sl, cap - sl, "{\"properties\":{\"a\":");
        dl += (size_t)snprintf(d + dl, cap - dl, "{\"a\":");
    }
    sl += (size_t)snprintf(s + sl, cap - sl, "{\"type\":\"integer\"}");
    dl += (size_t)snprintf(d + dl, cap - dl, "\"x\"");
    for (int i = 0; i < n; i++) {
        sl += (size_t)snprintf(s + sl, cap - sl, "}}");
        dl += (size_t)snprintf(d + dl, cap - dl, "}");
    }
    *schema = s;
    *doc = d;
}

static void test_depth_guard(void)
{
    char *s, *d;
    nested(40, &s, &d);
    const char *m = v(s, d);
    CHECK_CONTAINS(m, "validation failed: wrong type: expected integer, got string");
    const char *head = "property \"a\" validation failed: property \"a\" validation failed: ";
    CHECK(strncmp(m, head, strlen(head)) == 0);
    free(s);
    free(d);
    nested(63, &s, &d);
    CHECK_CONTAINS(v(s, d), "wrong type: expected integer, got string");
    free(s);
    free(d);
    nested(64, &s, &d);
    m = v(s, d);
    CHECK_CONTAINS(m, "property \"a\" validation failed: schema nesting too deep");
    CHECK(strstr(m, "wrong type") == NULL);
    free(s);
    free(d);
    nested(500, &s, &d);
    m = v(s, d);
    size_t len = strlen(m);
    const char *tail = "schema nesting too deep";
    CHECK(len > strlen(tail) && strcmp(m + len - strlen(tail), tail) == 0);
    free(s);
    free(d);
    /* A depth failure inside a branch is not swallowed as "matches none". */
    CHECK_STREQ(vr("{\"oneOf\":[{\"$ref\":\"#/definitions/loop\"},true]}", "1", registry),
                "schema nesting too deep");
}

static void test_step_budget(void)
{
    /* l20 = anyOf of three refs to l19 ... l0 = false: 3^20 paths, stopped by
     * the step budget instead of running for hours. */
    char buf[8192];
    size_t n = (size_t)snprintf(buf, sizeof(buf), "{\"definitions\":{\"l0\":false");
    for (int i = 1; i <= 20; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n,
                              ",\"l%d\":{\"anyOf\":[{\"$ref\":\"#/definitions/l%d\"},{\"$ref\":"
                              "\"#/definitions/l%d\"},{\"$ref\":\"#/definitions/l%d\"}]}",
                              i, i - 1, i - 1, i - 1);
    snprintf(buf + n, sizeof(buf) - n, "}}");
    CHECK_STREQ(vr("{\"$ref\":\"#/definitions/l20\"}", "1", buf), "schema too complex to validate");
    /* A small one of the same shape is fine. */
    CHECK_STREQ(vr("{\"$ref\":\"#/definitions/l3\"}", "1", buf),
                "object matches none of the required");
}

static void test_err_buffer(void)
{
    json_t *schema = parse("{\"properties\":{\"upstream\":{\"type\":\"object\"}}}");
    json_t *doc = parse("{\"upstream\":1}");
    REQUIRE(schema && doc);
    char small[16];
    memset(small, 'X', sizeof(small));
    CHECK(jsonschema_validate(schema, doc, NULL, small, sizeof(small)) == -EINVAL);
    CHECK(strlen(small) == sizeof(small) - 1);
    CHECK(strncmp(small, "property \"upstr", 15) == 0);
    char one[1] = {'X'};
    CHECK(jsonschema_validate(schema, doc, NULL, one, 1) == -EINVAL);
    CHECK(one[0] == '\0');
    char untouched[4] = "abc";
    CHECK(jsonschema_validate(schema, doc, NULL, untouched, 0) == -EINVAL);
    CHECK_STREQ(untouched, "abc");
    CHECK(jsonschema_validate(schema, doc, NULL, NULL, 100) == -EINVAL);
    /* Success clears the buffer. */
    json_object_set_new(doc, "upstream", json_object());
    char ok[8] = "junk";
    CHECK(jsonschema_validate(schema, doc, NULL, ok, sizeof(ok)) == 0);
    CHECK_STREQ(ok, "");
    json_decref(schema);
    json_decref(doc);
    /* Huge values are cut, never overflow. */
    size_t big = 20000;
    char *s = malloc(big + 3);
    REQUIRE(s);
    s[0] = '"';
    memset(s + 1, 'a', big);
    s[big + 1] = '"';
    s[big + 2] = '\0';
    const char *m = v("{\"pattern\":\"^b\"}", s);
    CHECK(strncmp(m, "failed to match pattern \"^b\" with \"aaa", 38) == 0);
    CHECK(strlen(m) < sizeof(msg));
    free(s);
}

/* A tiny deterministic generator of JSON values, to throw odd documents at an
 * APISIX-shaped schema: nothing may crash or leak (run under ASan/UBSan). */
static unsigned rng = 12345;
static unsigned next_rand(void)
{
    rng = rng * 1103515245u + 12345u;
    return (rng >> 16) & 0x7fff;
}

static json_t *random_value(int depth)
{
    static const char *keys[] = {"uri",     "uris", "upstream", "nodes", "type",   "host",
                                 "methods", "id",   "timeout",  "x",     "scheme", "retries"};
    static const char *strs[] = {"",    "GET",        "/a",        "roundrobin", "10.0.0.1",
                                 "::1", "1.2.3.0/24", "h\xc3\xa9", "[",          "*"};
    unsigned k = next_rand() % (depth > 3 ? 6 : 8);
    switch (k) {
    case 0:
        return json_null();
    case 1:
        return json_boolean(next_rand() & 1);
    case 2:
        return json_integer((json_int_t)next_rand() - 100);
    case 3:
        return json_real((double)next_rand() / 7.0);
    case 4:
    case 5:
        return json_string(strs[next_rand() % 10]);
    case 6: {
        json_t *a = json_array();
        for (unsigned i = next_rand() % 4; i > 0; i--)
            json_array_append_new(a, random_value(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (unsigned i = next_rand() % 5; i > 0; i--)
            json_object_set_new(o, keys[next_rand() % 12], random_value(depth + 1));
        return o;
    }
    }
}

static void test_random_documents(void)
{
    json_t *schema = parse(
        "{\"type\":\"object\",\"properties\":{\"uri\":{\"type\":\"string\",\"pattern\":\"^/\"},"
        "\"uris\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"uniqueItems\":true,"
        "\"minItems\":1},\"methods\":{\"type\":\"array\",\"items\":{\"enum\":[\"GET\","
        "\"POST\"]}},\"id\":{\"$ref\":\"#/definitions/id_schema\"},\"host\":{\"format\":"
        "\"ipv4\"},\"upstream\":{\"type\":\"object\",\"properties\":{\"nodes\":{\"oneOf\":[{"
        "\"type\":\"object\",\"patternProperties\":{\".*\":{\"type\":\"integer\"}}},{\"type\":"
        "\"array\",\"items\":{\"properties\":{\"host\":{\"format\":\"cidr\"},\"x\":{\"default\":"
        "1}}}}]},\"type\":{\"enum\":[\"roundrobin\",\"chash\"],\"default\":\"roundrobin\"},"
        "\"timeout\":{\"properties\":{\"x\":{\"exclusiveMinimum\":0}}},\"scheme\":{\"default\":"
        "\"http\"}},\"dependencies\":{\"retries\":[\"timeout\"]},\"anyOf\":[{\"required\":["
        "\"nodes\"]},{\"required\":[\"id\"]}]}},\"anyOf\":[{\"required\":[\"uri\"]},{"
        "\"required\":[\"uris\"]}],\"not\":{\"required\":[\"x\"]},\"if\":{\"required\":["
        "\"host\"]},\"then\":{\"maxProperties\":4}}");
    json_t *reg = parse(registry);
    REQUIRE(schema && reg);
    int passed = 0;
    for (int i = 0; i < 3000; i++) {
        json_t *doc = random_value(0);
        char err[256];
        if (jsonschema_validate(schema, doc, reg, err, sizeof(err)) == 0)
            passed++;
        else
            CHECK(err[0] != '\0' && strlen(err) < sizeof(err));
        json_decref(doc);
    }
    CHECK(passed >= 0);
    json_decref(schema);
    json_decref(reg);
}

int main(void)
{
    RUN(test_type_single);
    RUN(test_type_integer);
    RUN(test_type_array_of_names);
    RUN(test_enum);
    RUN(test_const);
    RUN(test_properties_nested_path);
    RUN(test_property_name_quoting);
    RUN(test_required);
    RUN(test_additional_properties);
    RUN(test_pattern_properties);
    RUN(test_min_max_properties);
    RUN(test_dependencies);
    RUN(test_items);
    RUN(test_items_tuple);
    RUN(test_min_max_items);
    RUN(test_unique_items);
    RUN(test_unique_items_long);
    RUN(test_string_length);
    RUN(test_pattern);
    RUN(test_pattern_pcre_translation);
    RUN(test_pattern_bad);
    RUN(test_pattern_cache_many);
    RUN(test_minimum_maximum);
    RUN(test_multiple_of);
    RUN(test_one_of);
    RUN(test_any_of);
    RUN(test_all_of);
    RUN(test_not);
    RUN(test_if_then_else);
    RUN(test_boolean_and_invalid_schemas);
    RUN(test_format);
    RUN(test_ref);
    RUN(test_defaults_basic);
    RUN(test_defaults_deep_copy);
    RUN(test_defaults_one_of_branches);
    RUN(test_defaults_any_of_if_not);
    RUN(test_depth_guard);
    RUN(test_step_budget);
    RUN(test_err_buffer);
    RUN(test_random_documents);
    jsonschema_cleanup();
    return check_summary();
}
