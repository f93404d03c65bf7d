/*
 * config: the one validation path of airgw's configuration (see config.h).
 *
 * Schemas. The JSON files of common/schemas/ are compiled in (schemas_embedded.h)
 * and parsed on first use into one registry document,
 *   {"definitions": {<members of definitions.json>, "route": <route.json>, ...}},
 * against which every "$ref": "#/definitions/NAME" resolves. A plugin file reads
 *   {"http": bool, "stream": bool, "schema": {...}, "consumer_schema": {...}}
 * "http": the plugin may be configured on routes, services, consumers, global
 * rules and plugin configs; "stream": on stream routes (a plugin outside its
 * subsystem is an "unknown plugin", as in APISIX). "consumer_schema", when
 * present, replaces "schema" for the plugin's configuration inside a consumer
 * (APISIX's check_schema(conf, TYPE_CONSUMER)). Every "schema" gets APISIX's
 * injected "_meta" property at load time.
 *
 * Checking. config_check() runs the kind's schema (which inserts defaults into
 * the document) and then the rules APISIX applies in code (apisix/admin/ handlers,
 * apisix/upstream.lua, apisix/ssl.lua, the plugins' check_schema), in the
 * order APISIX applies them, so that a document with several faults gets the
 * message APISIX would give. On failure the document may already carry some
 * inserted defaults: callers discard it.
 *
 * State. The registry is process-wide, built once, read-only afterwards and
 * freed by config_cleanup(). Like jsonschema's regex cache it assumes one
 * validating thread per process.
 */
#include "config.h"

#include "cidr.h"
#include "jsonschema.h"
#include "log.h"
#include "schemas_embedded.h"

#include <errno.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MSG_MAX 2048      /* one validator message */
#define EXPR_MAX_DEPTH 32 /* nesting of lua-resty-expr rules we follow */
#define REF_ID_BUF 24     /* idbuf bytes per reference (config.h) */
#define PLUGIN_PREFIX "plugin/"

static const char *const kind_collections[GW_KIND__COUNT] = {
    "routes", "services",  "upstreams",    "stream_routes",
    "ssls",   "consumers", "global_rules", "plugin_configs",
};

/* Also the schema names in the registry (route.json -> "route"). */
static const char *const kind_names[GW_KIND__COUNT] = {
    "route", "service",  "upstream",    "stream_route",
    "ssl",   "consumer", "global_rule", "plugin_config",
};

static struct {
    json_t *root;                        /* {"definitions": {...}}: the $ref registry */
    json_t *plugins;                     /* plugin name -> its file's document */
    json_t *names;                       /* sorted array of plugin names */
    const json_t *kinds[GW_KIND__COUNT]; /* the resource schemas, borrowed from root */
} reg;

/* ---- registry ------------------------------------------------------------ */

/* Adds APISIX's injected "_meta" property to a plugin schema. */
static int inject_meta(json_t *schema)
{
    json_t *props = json_object_get(schema, "properties");
    if (!props) {
        props = json_object();
        if (!props || json_object_set_new(schema, "properties", props) < 0)
            return -1;
    }
    if (!json_is_object(props))
        return -1;
    if (json_object_get(props, "_meta"))
        return 0;
    return json_object_set_new(props, "_meta",
                               json_pack("{s:s}", "$ref", "#/definitions/plugin_meta"));
}

/* Takes the reference to doc. */
static int add_plugin(json_t *plugins, const char *name, json_t *doc)
{
    json_t *schema = json_object_get(doc, "schema");
    json_t *cschema = json_object_get(doc, "consumer_schema");
    if (!json_is_object(doc) || !json_is_object(schema) || (cschema && !json_is_object(cschema)) ||
        inject_meta(schema) < 0) {
        log_error("config: plugin schema %s: needs an object \"schema\"", name);
        json_decref(doc);
        return -1;
    }
    return json_object_set_new(plugins, name, doc);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static json_t *sorted_names(const json_t *plugins)
{
    size_t n = json_object_size(plugins), i = 0;
    const char **v = calloc(n ? n : 1, sizeof(*v));
    json_t *arr = json_array();
    const char *k;
    json_t *val;
    if (!v || !arr)
        goto fail;
    json_object_foreach((json_t *)plugins, k, val)
    {
        v[i++] = k;
    }
    qsort(v, n, sizeof(*v), cmp_str);
    for (i = 0; i < n; i++)
        if (json_array_append_new(arr, json_string(v[i])) < 0)
            goto fail;
    free(v);
    return arr;
fail:
    free(v);
    json_decref(arr);
    return NULL;
}

/* Parses the embedded schemas once. 0, or -1 (logged) when a schema is broken
 * or memory ran out; a later call tries again. */
static int registry_load(void)
{
    if (reg.root)
        return 0;
    json_t *root = json_object(), *defs = json_object(), *plugins = json_object();
    if (!root || !defs || !plugins || json_object_set(root, "definitions", defs) < 0)
        goto fail;
    for (size_t i = 0; i < embedded_schemas_count; i++) {
        const struct embedded_schema *es = &embedded_schemas[i];
        json_error_t jerr;
        json_t *doc = json_loads(es->text, JSON_REJECT_DUPLICATES, &jerr);
        if (!doc) {
            log_error("config: schema %s: %s (line %d)", es->name, jerr.text, jerr.line);
            goto fail;
        }
        int rc;
        if (strcmp(es->name, "definitions") == 0) {
            rc = json_is_object(doc) ? json_object_update(defs, doc) : -1;
            json_decref(doc);
        } else if (strncmp(es->name, PLUGIN_PREFIX, strlen(PLUGIN_PREFIX)) == 0) {
            rc = add_plugin(plugins, es->name + strlen(PLUGIN_PREFIX), doc);
        } else {
            rc = json_object_set_new(defs, es->name, doc);
        }
        if (rc < 0) {
            log_error("config: schema %s: cannot be registered", es->name);
            goto fail;
        }
    }
    for (int k = 0; k < GW_KIND__COUNT; k++) {
        reg.kinds[k] = json_object_get(defs, kind_names[k]);
        if (!json_is_object(reg.kinds[k])) {
            log_error("config: no schema for %s", kind_names[k]);
            goto fail;
        }
    }
    if (!json_is_object(json_object_get(defs, "plugin_meta")) ||
        !(reg.names = sorted_names(plugins))) {
        log_error("config: schema registry incomplete");
        goto fail;
    }
    json_decref(defs);
    reg.root = root;
    reg.plugins = plugins;
    return 0;
fail:
    json_decref(root);
    json_decref(defs);
    json_decref(plugins);
    memset(&reg, 0, sizeof(reg));
    return -1;
}

void config_cleanup(void)
{
    json_decref(reg.root);
    json_decref(reg.plugins);
    json_decref(reg.names);
    memset(&reg, 0, sizeof(reg));
}

/* ---- kinds and ids -------------------------------------------------------- */

const char *config_kind_collection(enum gw_kind kind)
{
    return (unsigned)kind < GW_KIND__COUNT ? kind_collections[kind] : NULL;
}

const char *config_kind_name(enum gw_kind kind)
{
    return (unsigned)kind < GW_KIND__COUNT ? kind_names[kind] : NULL;
}

int config_kind_from_collection(const char *collection)
{
    if (!collection)
        return -1;
    for (int i = 0; i < GW_KIND__COUNT; i++)
        if (strcmp(collection, kind_collections[i]) == 0)
            return i;
    return -1;
}

bool config_id_valid(const char *id)
{
    if (!id)
        return false;
    size_t n = strlen(id);
    if (n < 1 || n > 64)
        return false;
    return strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}

const json_t *config_kind_schema(enum gw_kind kind)
{
    if ((unsigned)kind >= GW_KIND__COUNT || registry_load() < 0)
        return NULL;
    return reg.kinds[kind];
}

const json_t *config_plugin_names(void)
{
    return registry_load() < 0 ? NULL : reg.names;
}

static const json_t *plugin_def(const char *name)
{
    if (!name || registry_load() < 0)
        return NULL;
    return json_object_get(reg.plugins, name);
}

const json_t *config_plugin_schema(const char *name)
{
    return json_object_get(plugin_def(name), "schema");
}

bool config_plugin_is_stream(const char *name)
{
    return json_is_true(json_object_get(plugin_def(name), "stream"));
}

/* ---- messages ------------------------------------------------------------- */

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static const char *str_member(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

/* ---- lua-resty-expr rules (route "vars", plugin "_meta.filter") ------------ */

static bool expr_op_known(const char *op)
{
    static const char *const ops[] = {
        "==", "~=", ">", ">=", "<", "<=", "~~", "~*", "in", "has", "ipmatch", NULL};
    for (int i = 0; ops[i]; i++)
        if (strcasecmp(op, ops[i]) == 0)
            return true;
    return false;
}

static bool expr_logic_op(const json_t *v)
{
    const char *s = json_string_value(v);
    return s && (strcasecmp(s, "AND") == 0 || strcasecmp(s, "OR") == 0 ||
                 strcasecmp(s, "!AND") == 0 || strcasecmp(s, "!OR") == 0);
}

/* One comparison: [var, op, value], [var, "!", op, value], or the short
 * forms [var, value] (equality) and [var, op]. */
static int expr_compare(const json_t *e, char *msg, size_t n)
{
    size_t len = json_array_size(e);
    const json_t *op;
    if (len < 2 || len > 4 || !json_is_string(json_array_get(e, 0)))
        return fail(msg, n, "invalid expression");
    if (len == 4) {
        const char *neg = json_string_value(json_array_get(e, 1));
        if (!neg || strcmp(neg, "!") != 0)
            return fail(msg, n, "bad 'not' expression");
        op = json_array_get(e, 2);
    } else {
        op = json_array_get(e, 1);
    }
    if (len == 2)
        return 0; /* [var, value] compares for equality; [var, op] has no value */
    if (!json_is_string(op))
        return fail(msg, n, "invalid operator");
    if (!expr_op_known(json_string_value(op)))
        return fail(msg, n, "invalid operator '%s'", json_string_value(op));
    return 0;
}

/* A rule: a list of rules (AND), [logic_op, rule, rule, ...] or a comparison. */
static int expr_rule(const json_t *r, int depth, char *msg, size_t n)
{
    size_t len = json_array_size(r), i;
    if (!json_is_array(r))
        return fail(msg, n, "invalid expression");
    if (depth > EXPR_MAX_DEPTH)
        return fail(msg, n, "rule nested too deep");
    if (len == 0)
        return fail(msg, n, "rule too short");
    if (json_is_array(json_array_get(r, 0))) {
        for (i = 0; i < len; i++)
            if (expr_rule(json_array_get(r, i), depth + 1, msg, n) < 0)
                return -EINVAL;
        return 0;
    }
    if (expr_logic_op(json_array_get(r, 0))) {
        if (len <= 2)
            return fail(msg, n, "rule too short");
        for (i = 1; i < len; i++)
            if (expr_rule(json_array_get(r, i), depth + 1, msg, n) < 0)
                return -EINVAL;
        return 0;
    }
    return expr_compare(r, msg, n);
}

/* As lua-resty-expr's expr.new(): the outer list holds bracketed rules, or
 * is itself a logic expression. */
static int expr_check(const json_t *rule, char *msg, size_t n)
{
    if (!json_is_array(rule))
        return fail(msg, n, "rule should be an array");
    if (json_array_size(rule) == 0)
        return 0;
    const json_t *first = json_array_get(rule, 0);
    if (!json_is_array(first) && !expr_logic_op(first))
        return fail(msg, n, "rule should be wrapped inside brackets");
    return expr_rule(rule, 0, msg, n);
}

/* ---- plugins -------------------------------------------------------------- */

/* APISIX's validate_header_field: visible ASCII except ':'. */
static bool header_field_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char b = (unsigned char)*s;
        if (b <= 32 || b >= 127 || b == ':')
            return false;
    }
    return true;
}

/* APISIX's validate_header_value: no control characters. */
static bool header_value_ok(const json_t *v)
{
    const char *s = json_string_value(v);
    if (!s)
        return true; /* numbers */
    for (size_t i = 0; i < json_string_length(v); i++) {
        unsigned char b = (unsigned char)s[i];
        if (b < 32 || b >= 127)
            return false;
    }
    return true;
}

static int check_header_map(const json_t *map, char *msg, size_t n)
{
    const char *field;
    json_t *value;
    json_object_foreach((json_t *)map, field, value)
    {
        if (!json_is_string(value) && !json_is_number(value))
            return fail(msg, n, "invalid type as header value");
        if (field[0] == '\0')
            return fail(msg, n, "invalid field length in header");
        if (!header_field_ok(field))
            return fail(msg, n, "invalid field character in header");
        if (!header_value_ok(value))
            return fail(msg, n, "invalid value character in header");
    }
    return 0;
}

static int check_proxy_rewrite(const json_t *conf, char *msg, size_t n)
{
    const json_t *re = json_object_get(conf, "regex_uri");
    if (json_array_size(re) % 2 != 0)
        return fail(msg, n, "The length of regex_uri should be an even number");
    const json_t *h = json_object_get(conf, "headers");
    if (!json_is_object(h))
        return 0;
    const json_t *add = json_object_get(h, "add"), *set = json_object_get(h, "set");
    const json_t *rm = json_object_get(h, "remove");
    if (!json_is_object(add) && !json_is_object(set) && !json_is_array(rm))
        return check_header_map(h, msg, n); /* the 2.x form {"X-Name": "value"} */
    /* airgw also checks the 3.x form's names and values: they reach the wire. */
    if (json_is_object(add) && check_header_map(add, msg, n) < 0)
        return -EINVAL;
    if (json_is_object(set) && check_header_map(set, msg, n) < 0)
        return -EINVAL;
    size_t i;
    json_t *v;
    json_array_foreach(rm, i, v)
    {
        if (json_is_string(v) && !header_field_ok(json_string_value(v)))
            return fail(msg, n, "invalid field character in header");
    }
    return 0;
}

static int check_ip_list(const json_t *list, char *msg, size_t n)
{
    size_t i;
    json_t *v;
    struct cidr c;
    json_array_foreach(list, i, v)
    {
        const char *s = json_string_value(v);
        if (s && cidr_parse(s, &c) != 0)
            return fail(msg, n, "invalid ip address: %s", s);
    }
    return 0;
}

static int check_cors(const json_t *conf, char *msg, size_t n)
{
    static const char *const star_fields[] = {"allow_origins", "allow_methods", "allow_headers",
                                              "expose_headers", NULL};
    if (json_is_true(json_object_get(conf, "allow_credential"))) {
        for (int i = 0; star_fields[i]; i++) {
            const char *v = str_member(conf, star_fields[i]);
            if (v && strcmp(v, "*") == 0)
                return fail(msg, n,
                            "you can not set '*' for other option when 'allow_credential' is true");
        }
    }
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(conf, "allow_origins_by_regex"), i, v)
    {
        regex_t re;
        int rc;
        if (!json_is_string(v))
            continue;
        rc = regcomp(&re, json_string_value(v), REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char why[128];
            regerror(rc, &re, why, sizeof(why));
            return fail(msg, n, "invalid allow_origins_by_regex %s: %s", json_string_value(v), why);
        }
        regfree(&re);
    }
    return 0;
}

/* The checks a plugin's check_schema makes after its schema passed. */
static int plugin_code_check(const char *name, const json_t *conf, char *msg, size_t n)
{
    if (strcmp(name, "ip-restriction") == 0) {
        if (check_ip_list(json_object_get(conf, "whitelist"), msg, n) < 0 ||
            check_ip_list(json_object_get(conf, "blacklist"), msg, n) < 0)
            return -EINVAL;
    } else if (strcmp(name, "proxy-rewrite") == 0) {
        return check_proxy_rewrite(conf, msg, n);
    } else if (strcmp(name, "cors") == 0) {
        return check_cors(conf, msg, n);
    }
    return 0;
}

/* APISIX's plugin.check_schema / stream_check_schema over a "plugins" object.
 * Under a consumer, messages carry APISIX's "invalid plugins configuration: ". */
static int check_plugins(enum gw_kind kind, json_t *plugins, char *err, size_t errlen)
{
    const bool stream = kind == GW_KIND_STREAM_ROUTE, consumer = kind == GW_KIND_CONSUMER;
    const char *pre = consumer ? "invalid plugins configuration: " : "";
    char msg[MSG_MAX];
    const char *name;
    json_t *conf;

    json_object_foreach(plugins, name, conf)
    {
        if (!json_is_object(conf)) {
            char *s = json_dumps(conf, JSON_COMPACT | JSON_ENCODE_ANY);
            int rc = fail(err, errlen, "%sinvalid plugin conf %s for plugin [%s]", pre,
                          s ? s : "null", name);
            free(s);
            return rc;
        }
        const json_t *def = json_object_get(reg.plugins, name);
        /* A consumer also holds stream plugins' credentials (mqtt-auth). */
        if (!def || (!json_is_true(json_object_get(def, stream ? "stream" : "http")) &&
                     !(consumer && json_object_get(def, "consumer_schema"))))
            return fail(err, errlen, "%sunknown plugin [%s]", pre, name);
        const json_t *schema = json_object_get(def, "schema");
        const json_t *cschema = json_object_get(def, "consumer_schema");
        if (consumer && cschema)
            schema = cschema;
        if (jsonschema_validate(schema, conf, reg.root, msg, sizeof(msg)) < 0 ||
            plugin_code_check(name, conf, msg, sizeof(msg)) < 0)
            return fail(err, errlen, "%sfailed to check the configuration of plugin %s err: %s",
                        pre, name, msg);
        const json_t *filter = json_object_get(json_object_get(conf, "_meta"), "filter");
        if (filter && expr_check(filter, msg, sizeof(msg)) < 0)
            return fail(err, errlen, "%sfailed to validate the 'vars' expression: %s", pre, msg);
    }
    return 0;
}

/* ---- resources ------------------------------------------------------------ */

static int schema_check(enum gw_kind kind, json_t *conf, char *err, size_t errlen)
{
    char msg[MSG_MAX];
    if (jsonschema_validate(reg.kinds[kind], conf, reg.root, msg, sizeof(msg)) < 0)
        return fail(err, errlen, "invalid configuration: %s", msg);
    return 0;
}

static bool pem_cert_ok(const char *s)
{
    const char *b = s ? strstr(s, "-----BEGIN CERTIFICATE-----") : NULL;
    return b && strstr(b, "-----END CERTIFICATE-----");
}

/* "-----BEGIN [RSA |EC ]PRIVATE KEY-----", not passphrase-protected (nothing
 * could ask for the passphrase). */
static bool pem_key_ok(const char *s)
{
    const char *b = s ? strstr(s, "-----BEGIN ") : NULL;
    if (!b || !strstr(b, "PRIVATE KEY-----") || strstr(s, "ENCRYPTED PRIVATE KEY-----") ||
        strstr(s, "Proc-Type: 4,ENCRYPTED"))
        return false;
    return strstr(b, "-----END ") != NULL;
}

/* apisix/ssl.lua validate(): a certificate, and a key unless key is NULL.
 * Messages are what APISIX's OpenSSL parsers say. */
static int pem_pair(const char *cert, const char *key, bool with_key, char *msg, size_t n)
{
    if (!pem_cert_ok(cert))
        return fail(msg, n, "failed to parse cert: PEM_read_bio_X509_AUX() failed");
    if (with_key && !pem_key_ok(key))
        return fail(msg, n, "failed to parse key: PEM_read_bio_PrivateKey() failed");
    return 0;
}

/* apisix/upstream.lua check_upstream_conf() after its schema check. */
static int check_upstream(const json_t *up, char *err, size_t errlen)
{
    char msg[MSG_MAX];
    const char *pass_host = str_member(up, "pass_host");
    const char *up_host = str_member(up, "upstream_host");
    if (pass_host && strcmp(pass_host, "rewrite") == 0 && (!up_host || !up_host[0]))
        return fail(err, errlen, "`upstream_host` can't be empty when `pass_host` is `rewrite`");

    const json_t *tls = json_object_get(up, "tls");
    if (json_object_get(tls, "client_cert") &&
        pem_pair(str_member(tls, "client_cert"), str_member(tls, "client_key"), true, msg,
                 sizeof(msg)) < 0)
        return fail(err, errlen, "%s", msg);

    const char *type = str_member(up, "type");
    if (!type || strcmp(type, "chash") != 0)
        return 0;
    const char *hash_on = str_member(up, "hash_on");
    json_t *key = json_object_get(up, "key");
    if (!hash_on)
        hash_on = "vars";
    if (strcmp(hash_on, "consumer") != 0 && !key)
        return fail(err, errlen, "missing key");
    const char *key_schema = NULL;
    if (strcmp(hash_on, "vars") == 0)
        key_schema = "upstream_hash_vars_schema";
    else if (strcmp(hash_on, "header") == 0 || strcmp(hash_on, "cookie") == 0)
        key_schema = "upstream_hash_header_schema";
    else if (strcmp(hash_on, "vars_combinations") == 0)
        key_schema = "upstream_hash_vars_combinations_schema";
    if (!key_schema || !key)
        return 0;
    const json_t *schema = json_object_get(json_object_get(reg.root, "definitions"), key_schema);
    if (jsonschema_validate(schema, key, reg.root, msg, sizeof(msg)) < 0)
        return fail(err, errlen, "invalid configuration: %s", msg);
    return 0;
}

/* airgw beyond APISIX: an address that passed the schema's loose IPv6/CIDR
 * patterns must also parse, or the data plane could not use the route. */
static int check_addr(const json_t *v, char *err, size_t errlen)
{
    struct cidr c;
    const char *s = json_string_value(v);
    if (s && cidr_parse(s, &c) != 0)
        return fail(err, errlen, "invalid configuration: invalid ip address: %s", s);
    return 0;
}

static int check_route(json_t *conf, char *err, size_t errlen)
{
    char msg[MSG_MAX];
    if (json_object_get(conf, "host") && json_object_get(conf, "hosts"))
        return fail(err, errlen, "only one of host or hosts is allowed");
    if (json_object_get(conf, "remote_addr") && json_object_get(conf, "remote_addrs"))
        return fail(err, errlen, "only one of remote_addr or remote_addrs is allowed");
    if (schema_check(GW_KIND_ROUTE, conf, err, errlen) < 0)
        return -EINVAL;
    /* APISIX's route schema anyOf, kept here so that a missing uri is reported
     * alone: something must handle the request. */
    if (!json_object_get(conf, "plugins") && !json_object_get(conf, "upstream") &&
        !json_object_get(conf, "upstream_id") && !json_object_get(conf, "service_id"))
        return fail(err, errlen,
                    "invalid configuration: object matches none of the required: "
                    "[\"plugins\",\"uri\"] or [\"upstream\",\"uri\"] or [\"upstream_id\",\"uri\"] "
                    "or [\"service_id\",\"uri\"] or [\"plugins\",\"uris\"] or "
                    "[\"upstream\",\"uris\"] or [\"upstream_id\",\"uris\"] or "
                    "[\"service_id\",\"uris\"]");
    if (check_addr(json_object_get(conf, "remote_addr"), err, errlen) < 0)
        return -EINVAL;
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(conf, "remote_addrs"), i, v)
    {
        if (check_addr(v, err, errlen) < 0)
            return -EINVAL;
    }
    json_t *up = json_object_get(conf, "upstream");
    if (up && check_upstream(up, err, errlen) < 0)
        return -EINVAL;
    json_t *plugins = json_object_get(conf, "plugins");
    if (plugins && check_plugins(GW_KIND_ROUTE, plugins, err, errlen) < 0)
        return -EINVAL;
    const json_t *vars = json_object_get(conf, "vars");
    if (vars && expr_check(vars, msg, sizeof(msg)) < 0)
        return fail(err, errlen, "failed to validate the 'vars' expression: %s", msg);
    return 0;
}

static int check_stream_route(json_t *conf, char *err, size_t errlen)
{
    if (schema_check(GW_KIND_STREAM_ROUTE, conf, err, errlen) < 0 ||
        check_addr(json_object_get(conf, "remote_addr"), err, errlen) < 0 ||
        check_addr(json_object_get(conf, "server_addr"), err, errlen) < 0)
        return -EINVAL;
    /* APISIX checks an inline stream upstream by its schema only; airgw also
     * applies the upstream rules (a chash on mqtt_client_id needs its key). */
    json_t *up = json_object_get(conf, "upstream");
    if (up && check_upstream(up, err, errlen) < 0)
        return -EINVAL;
    json_t *plugins = json_object_get(conf, "plugins");
    if (plugins && check_plugins(GW_KIND_STREAM_ROUTE, plugins, err, errlen) < 0)
        return -EINVAL;
    return 0;
}

/* apisix/ssl.lua check_ssl_conf() after its schema check. */
static int check_ssl(json_t *conf, char *err, size_t errlen)
{
    char msg[MSG_MAX];
    if (schema_check(GW_KIND_SSL, conf, err, errlen) < 0)
        return -EINVAL;
    if (pem_pair(str_member(conf, "cert"), str_member(conf, "key"), true, msg, sizeof(msg)) < 0)
        return fail(err, errlen, "%s", msg);
    const char *type = str_member(conf, "type");
    if (type && strcmp(type, "client") == 0)
        return 0;
    const json_t *certs = json_object_get(conf, "certs"), *keys = json_object_get(conf, "keys");
    size_t ncerts = json_array_size(certs);
    if (ncerts != json_array_size(keys))
        return fail(err, errlen, "mismatched number of certs and keys");
    for (size_t i = 0; i < ncerts; i++) {
        if (pem_pair(json_string_value(json_array_get(certs, i)),
                     json_string_value(json_array_get(keys, i)), true, msg, sizeof(msg)) < 0)
            return fail(err, errlen, "failed to handle cert-key pair[%zu]: %s", i + 1, msg);
    }
    const json_t *client = json_object_get(conf, "client");
    if (client && pem_pair(str_member(client, "ca"), NULL, false, msg, sizeof(msg)) < 0)
        return fail(err, errlen, "failed to validate client_cert: %s", msg);
    return 0;
}

int config_check(enum gw_kind kind, json_t *conf, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if ((unsigned)kind >= GW_KIND__COUNT)
        return fail(err, errlen, "unknown resource kind");
    if (!conf)
        return fail(err, errlen, "missing configurations");
    if (registry_load() < 0)
        return fail(err, errlen, "failed to load the configuration schemas");

    json_t *v;
    switch (kind) {
    case GW_KIND_ROUTE:
        return check_route(conf, err, errlen);
    case GW_KIND_STREAM_ROUTE:
        return check_stream_route(conf, err, errlen);
    case GW_KIND_SSL:
        return check_ssl(conf, err, errlen);
    case GW_KIND_UPSTREAM:
        if (schema_check(kind, conf, err, errlen) < 0)
            return -EINVAL;
        return check_upstream(conf, err, errlen);
    case GW_KIND_SERVICE:
        if (schema_check(kind, conf, err, errlen) < 0)
            return -EINVAL;
        if ((v = json_object_get(conf, "upstream")) && check_upstream(v, err, errlen) < 0)
            return -EINVAL;
        break;
    default: /* consumer, global_rule, plugin_config */
        if (schema_check(kind, conf, err, errlen) < 0)
            return -EINVAL;
        break;
    }
    if ((v = json_object_get(conf, "plugins")) && check_plugins(kind, v, err, errlen) < 0)
        return -EINVAL;
    return 0;
}

/* ---- references ----------------------------------------------------------- */

int config_refs(enum gw_kind kind, const json_t *conf, struct config_ref *out, int max, char *idbuf)
{
    static const struct {
        enum gw_kind from; /* the referring kind */
        const char *field; /* its member holding the id */
        enum gw_kind to;   /* the kind referred to */
    } fields[] = {
        {GW_KIND_ROUTE, "upstream_id", GW_KIND_UPSTREAM},
        {GW_KIND_ROUTE, "service_id", GW_KIND_SERVICE},
        {GW_KIND_ROUTE, "plugin_config_id", GW_KIND_PLUGIN_CONFIG},
        {GW_KIND_SERVICE, "upstream_id", GW_KIND_UPSTREAM},
        {GW_KIND_STREAM_ROUTE, "upstream_id", GW_KIND_UPSTREAM},
        {GW_KIND_STREAM_ROUTE, "service_id", GW_KIND_SERVICE},
    };
    int n = 0;
    if (!json_is_object(conf) || !out)
        return 0;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]) && n < max; i++) {
        if (fields[i].from != kind)
            continue;
        const json_t *v = json_object_get(conf, fields[i].field);
        const char *id;
        if (json_is_string(v)) {
            id = json_string_value(v);
        } else if (json_is_number(v) && idbuf) {
            /* The schema's "integer" takes whole reals too (1.0): render them
             * as the integer, as Lua's tostring does, so none escapes a check. */
            json_int_t iv = json_integer_value(v);
            if (json_is_real(v)) {
                double d = json_real_value(v);
                if (!(d > -9.2e18 && d < 9.2e18) || d != (double)(json_int_t)d)
                    continue;
                iv = (json_int_t)d;
            }
            char *slot = idbuf + (size_t)n * REF_ID_BUF;
            snprintf(slot, REF_ID_BUF, "%" JSON_INTEGER_FORMAT, iv);
            id = slot;
        } else {
            continue;
        }
        out[n].kind = fields[i].to;
        out[n].id = id;
        out[n].field = fields[i].field;
        n++;
    }
    return n;
}
