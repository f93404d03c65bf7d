/*
 * settings: see settings.h. Order: defaults, then the file, then flags.
 */
#include "settings.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cfgfile.h"
#include "log.h"
#include "netaddr.h"
#include "yaml_json.h"

static const char usage[] =
    "usage: airgw-controlplane [options]\n"
    "\n"
    "The airgw control plane: Admin API (APISIX v3 shape), configuration store,\n"
    "and the config stream that data planes subscribe to.\n"
    "\n"
    "  -c, --config FILE          YAML config file (flags override it)\n"
    "      --admin-listen A:P     Admin API address (default 127.0.0.1:9180)\n"
    "      --admin-key KEY        admin-role API key (default: generated on first start)\n"
    "      --store STORE          sqlite:PATH (default sqlite:STATE_DIR/airgw.db)\n"
    "                             or etcd:URL[,URL...]\n"
    "      --config-listen A:P    config stream address (default 127.0.0.1:9280)\n"
    "      --state-dir DIR        where state lives (default ./airgw-data)\n"
    "      --log-level LEVEL      error, warn, info (default) or debug\n"
    "  -h, --help                 this text\n"
    "  -V, --version              print the version\n";

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
}

int settings_add_key(struct cp_settings *s, const char *name, const char *key,
                     enum admin_role role)
{
    struct admin_key *k = realloc(s->keys, (s->nkeys + 1) * sizeof(*k));
    if (!k)
        return -ENOMEM;
    s->keys = k;
    k[s->nkeys].name = strdup(name);
    k[s->nkeys].key = strdup(key);
    k[s->nkeys].role = role;
    s->nkeys++;
    return 0;
}

static int set_addr(struct sockaddr_storage *dst, const char *what, const char *v, char *err,
                    size_t errlen)
{
    char why[200];
    if (netaddr_parse(v, dst, why, sizeof(why)) < 0)
        return cfg_fail(err, errlen, "%s: %s", what, why);
    return 0;
}

/* Every comma-separated element of list is an http:// or https:// URL. */
static int check_etcd_urls(const char *what, const char *list, char *err, size_t errlen)
{
    const char *p = list;
    int n = 0;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (!((len > 7 && strncmp(p, "http://", 7) == 0) ||
              (len > 8 && strncmp(p, "https://", 8) == 0)))
            return cfg_fail(err, errlen, "%s: \"%.*s\" is not an http:// or https:// URL", what,
                            (int)len, p);
        n++;
        p += len + (comma ? 1 : 0);
    }
    if (n == 0)
        return cfg_fail(err, errlen, "%s: no etcd endpoint", what);
    return 0;
}

static int check_store(const char *v, char *err, size_t errlen)
{
    if (strncmp(v, "sqlite:", 7) == 0 && v[7] != '\0')
        return 0;
    if (strncmp(v, "etcd:", 5) == 0 && v[5] != '\0')
        return check_etcd_urls("store", v + 5, err, errlen);
    return cfg_fail(err, errlen, "store: \"%s\" is not sqlite:PATH or etcd:URL[,URL...]", v);
}

/* deployment.etcd, in APISIX's names. Settings APISIX has that airgw does
 * not need are accepted with a warning, so an APISIX file loads. */
static int load_etcd(struct cp_settings *s, const json_t *etcd, char *err, size_t errlen)
{
    static const char *const keys[] = {"host", "prefix", "user", "password", "timeout", "tls",
                                       "watch_timeout", "startup_retry", "resync_delay",
                                       "health_check_timeout", NULL};
    static const char *const tls_keys[] = {"cert", "key", "verify", "ca", "sni", NULL};
    int rc;
    if ((rc = cfg_want(etcd, JSON_OBJECT, "deployment.etcd", "a mapping", err, errlen)))
        return rc;
    if ((rc = cfg_only_keys(etcd, "deployment.etcd", keys, err, errlen)))
        return rc;
    json_t *v;
    if ((v = json_object_get(etcd, "host"))) {
        if (json_is_string(v))
            v = json_pack("[O]", v);
        else
            json_incref(v);
        size_t i, len = 0;
        json_t *h;
        if (!json_is_array(v) || json_array_size(v) == 0) {
            json_decref(v);
            return cfg_fail(err, errlen,
                            "config: deployment.etcd.host must be a list of http(s):// URLs");
        }
        json_array_foreach(v, i, h) {
            if (!json_is_string(h) || json_string_length(h) == 0 ||
                strchr(json_string_value(h), ',')) {
                json_decref(v);
                return cfg_fail(err, errlen,
                                "config: deployment.etcd.host[%zu] must be an http(s):// URL",
                                i + 1);
            }
            len += json_string_length(h) + 1;
        }
        char *joined = calloc(1, len + 1);
        if (!joined) {
            json_decref(v);
            return cfg_fail(err, errlen, "config: out of memory");
        }
        json_array_foreach(v, i, h) {
            if (i)
                strcat(joined, ",");
            strcat(joined, json_string_value(h));
        }
        json_decref(v);
        free(s->etcd_hosts);
        s->etcd_hosts = joined;
        if ((rc = check_etcd_urls("config: deployment.etcd.host", joined, err, errlen)))
            return rc;
    }
    if ((v = json_object_get(etcd, "prefix"))) {
        if (!json_is_string(v) || json_string_value(v)[0] != '/')
            return cfg_fail(err, errlen,
                            "config: deployment.etcd.prefix must be a string starting with /");
        set_str(&s->etcd_prefix, json_string_value(v));
    }
    if ((v = json_object_get(etcd, "user"))) {
        if ((rc = cfg_want(v, JSON_STRING, "deployment.etcd.user", "a string", err, errlen)))
            return rc;
        set_str(&s->etcd_user, json_string_value(v));
    }
    if ((v = json_object_get(etcd, "password"))) {
        if ((rc = cfg_want(v, JSON_STRING, "deployment.etcd.password", "a string", err, errlen)))
            return rc;
        set_str(&s->etcd_password, json_string_value(v));
    }
    if ((v = json_object_get(etcd, "timeout"))) {
        double d = json_number_value(v);
        if (!json_is_number(v) || !(d >= 0.1 && d <= 600))
            return cfg_fail(err, errlen,
                            "config: deployment.etcd.timeout must be a number of seconds from "
                            "0.1 to 600");
        s->etcd_timeout = d;
    }
    const char *ignored[] = {"watch_timeout", "startup_retry", "resync_delay",
                             "health_check_timeout"};
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
        if (json_object_get(etcd, ignored[i]))
            log_warn("config: deployment.etcd.%s is not used by airgw; ignored", ignored[i]);
    json_t *tls = json_object_get(etcd, "tls");
    if (tls) {
        if ((rc = cfg_want(tls, JSON_OBJECT, "deployment.etcd.tls", "a mapping", err, errlen)))
            return rc;
        if ((rc = cfg_only_keys(tls, "deployment.etcd.tls", tls_keys, err, errlen)))
            return rc;
        static const char *const files[] = {"cert", "key", "ca"};
        char **dst[] = {&s->etcd_tls_cert, &s->etcd_tls_key, &s->etcd_tls_ca};
        for (int i = 0; i < 3; i++) {
            if (!(v = json_object_get(tls, files[i])))
                continue;
            if (!json_is_string(v) || json_string_length(v) == 0)
                return cfg_fail(err, errlen, "config: deployment.etcd.tls.%s must be a file path",
                                files[i]);
            set_str(dst[i], json_string_value(v));
        }
        if (!s->etcd_tls_cert != !s->etcd_tls_key)
            return cfg_fail(err, errlen,
                            "config: deployment.etcd.tls: cert and key must be set together");
        if ((v = json_object_get(tls, "verify"))) {
            if (!json_is_boolean(v))
                return cfg_fail(err, errlen, "config: deployment.etcd.tls.verify must be true "
                                             "or false");
            s->etcd_tls_verify = json_is_true(v);
        }
        if (json_object_get(tls, "sni"))
            log_warn("config: deployment.etcd.tls.sni is not used by airgw; ignored");
    }
    return 0;
}

static int load_admin(struct cp_settings *s, const json_t *admin, char *err, size_t errlen)
{
    static const char *const keys[] = {"admin_listen", "admin_key", "allow_admin",
                                       "admin_key_required", "enable_admin_cors", NULL};
    int rc;
    if ((rc = cfg_want(admin, JSON_OBJECT, "deployment.admin", "a mapping", err, errlen)))
        return rc;
    if ((rc = cfg_only_keys(admin, "deployment.admin", keys, err, errlen)))
        return rc;
    json_t *listen = json_object_get(admin, "admin_listen");
    if (listen) {
        char buf[128];
        if (json_is_string(listen)) {
            snprintf(buf, sizeof(buf), "%s", json_string_value(listen));
        } else if (json_is_object(listen)) {
            json_t *ip = json_object_get(listen, "ip"), *port = json_object_get(listen, "port");
            if (!json_is_integer(port) || (ip && !json_is_string(ip)))
                return cfg_fail(err, errlen,
                            "config: deployment.admin.admin_listen needs ip (string) and "
                            "port (integer)");
            const char *ips = ip ? json_string_value(ip) : "127.0.0.1";
            snprintf(buf, sizeof(buf), strchr(ips, ':') ? "[%s]:%lld" : "%s:%lld", ips,
                     (long long)json_integer_value(port));
        } else {
            return cfg_fail(err, errlen, "config: deployment.admin.admin_listen must be a mapping");
        }
        if ((rc = set_addr(&s->admin_listen, "deployment.admin.admin_listen", buf, err, errlen)))
            return rc;
    }
    json_t *akeys = json_object_get(admin, "admin_key");
    if (akeys) {
        if ((rc = cfg_want(akeys, JSON_ARRAY, "deployment.admin.admin_key", "a list", err,
                            errlen)))
            return rc;
        size_t i;
        json_t *k;
        json_array_foreach(akeys, i, k) {
            json_t *key = json_object_get(k, "key"), *role = json_object_get(k, "role");
            json_t *name = json_object_get(k, "name");
            if (!json_is_object(k) || !json_is_string(key) || json_string_length(key) == 0)
                return cfg_fail(err, errlen,
                            "config: deployment.admin.admin_key[%zu] needs a non-empty key",
                            i + 1);
            enum admin_role r = ROLE_ADMIN;
            if (role) {
                if (json_is_string(role) && strcmp(json_string_value(role), "admin") == 0)
                    r = ROLE_ADMIN;
                else if (json_is_string(role) && strcmp(json_string_value(role), "viewer") == 0)
                    r = ROLE_VIEWER;
                else
                    return cfg_fail(err, errlen,
                                "config: deployment.admin.admin_key[%zu].role must be admin "
                                "or viewer",
                                i + 1);
            }
            settings_add_key(s, json_is_string(name) ? json_string_value(name) : "key",
                             json_string_value(key), r);
        }
    }
    json_t *allow = json_object_get(admin, "allow_admin");
    if (allow) {
        if ((rc = cfg_want(allow, JSON_ARRAY, "deployment.admin.allow_admin", "a list", err,
                            errlen)))
            return rc;
        free(s->allow_admin);
        s->nallow = 0;
        s->allow_admin = calloc(json_array_size(allow) + 1, sizeof(struct cidr));
        size_t i;
        json_t *c;
        json_array_foreach(allow, i, c) {
            if (!json_is_string(c) || cidr_parse(json_string_value(c), &s->allow_admin[i]) < 0)
                return cfg_fail(err, errlen,
                            "config: deployment.admin.allow_admin[%zu] is not an address or "
                            "CIDR",
                            i + 1);
            s->nallow++;
        }
    }
    return 0;
}

/* deployment.config_stream.tls: {cert, key, client_ca}. cert and key make
 * the stream TLS; client_ca makes data planes prove who they are. */
static int load_stream_tls(struct cp_settings *s, const json_t *t, char *err, size_t errlen)
{
    static const char *const keys[] = {"cert", "key", "client_ca", NULL};
    const char *what = "deployment.config_stream.tls";
    int rc;
    if ((rc = cfg_want(t, JSON_OBJECT, what, "a mapping", err, errlen)) ||
        (rc = cfg_only_keys(t, what, keys, err, errlen)))
        return rc;
    json_t *v;
    if ((v = json_object_get(t, "cert")) &&
        (rc = cfg_str(v, "deployment.config_stream.tls.cert", &s->stream_tls_cert, err, errlen)))
        return rc;
    if ((v = json_object_get(t, "key")) &&
        (rc = cfg_str(v, "deployment.config_stream.tls.key", &s->stream_tls_key, err, errlen)))
        return rc;
    if ((v = json_object_get(t, "client_ca")) &&
        (rc = cfg_str(v, "deployment.config_stream.tls.client_ca", &s->stream_tls_client_ca, err,
                      errlen)))
        return rc;
    if (!s->stream_tls_cert || !s->stream_tls_key)
        return cfg_fail(err, errlen, "config: %s needs both cert and key", what);
    return 0;
}

static int load_stream(struct cp_settings *s, const json_t *cs, char *err, size_t errlen)
{
    static const char *const keys[] = {"listen", "heartbeat_interval", "max_pending_bytes",
                                       "history", "tls", NULL};
    int rc;
    if ((rc = cfg_want(cs, JSON_OBJECT, "deployment.config_stream", "a mapping", err, errlen)))
        return rc;
    if ((rc = cfg_only_keys(cs, "deployment.config_stream", keys, err, errlen)))
        return rc;
    json_t *v;
    if ((v = json_object_get(cs, "listen"))) {
        if ((rc = cfg_want(v, JSON_STRING, "deployment.config_stream.listen", "ADDR:PORT", err,
                            errlen)))
            return rc;
        if ((rc = set_addr(&s->config_listen, "deployment.config_stream.listen",
                           json_string_value(v), err, errlen)))
            return rc;
    }
    if ((v = json_object_get(cs, "heartbeat_interval"))) {
        double d = json_number_value(v);
        if (!json_is_number(v) || !(d >= 0.05 && d <= 3600))
            return cfg_fail(err, errlen,
                        "config: deployment.config_stream.heartbeat_interval must be a number "
                        "of seconds from 0.05 to 3600");
        s->heartbeat_interval = d;
    }
    if ((v = json_object_get(cs, "max_pending_bytes"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 65536)
            return cfg_fail(err, errlen,
                        "config: deployment.config_stream.max_pending_bytes must be an integer "
                        ">= 65536");
        s->max_pending_bytes = (size_t)json_integer_value(v);
    }
    if ((v = json_object_get(cs, "history"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > 10000000)
            return cfg_fail(err, errlen,
                        "config: deployment.config_stream.history must be an integer from 1 "
                        "to 10000000");
        s->history = (int)json_integer_value(v);
    }
    if ((v = json_object_get(cs, "tls")))
        return load_stream_tls(s, v, err, errlen);
    return 0;
}

static int load_file(struct cp_settings *s, const char *path, char *err, size_t errlen)
{
    char why[512];
    json_t *root = yaml_json_load_file(path, why, sizeof(why));
    if (!root)
        return cfg_fail(err, errlen, "config: %s", why);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = cfg_fail(err, errlen, "config: %s: the top level must be a mapping", path);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (strcmp(k, "deployment") == 0)
            continue;
        if (strcmp(k, "apisix") == 0 || strcmp(k, "nginx_config") == 0 ||
            strcmp(k, "plugins") == 0 || strcmp(k, "stream_plugins") == 0 ||
            strcmp(k, "plugin_attr") == 0 || strcmp(k, "dataplane") == 0) {
            log_warn("config: section \"%s\" is not used by the control plane; ignored", k);
            continue;
        }
        rc = cfg_fail(err, errlen, "config: %s: unknown top-level key \"%s\"", path, k);
        goto out;
    }
    json_t *dep = json_object_get(root, "deployment");
    if (!dep)
        goto out;
    static const char *const dkeys[] = {"admin", "config_stream", "store", "state_dir",
                                        "log_level", "etcd", "role", "role_control_plane",
                                        NULL};
    if ((rc = cfg_want(dep, JSON_OBJECT, "deployment", "a mapping", err, errlen)))
        goto out;
    if ((rc = cfg_only_keys(dep, "deployment", dkeys, err, errlen)))
        goto out;
    if ((v = json_object_get(dep, "admin")) && (rc = load_admin(s, v, err, errlen)))
        goto out;
    if ((v = json_object_get(dep, "config_stream")) && (rc = load_stream(s, v, err, errlen)))
        goto out;
    if ((v = json_object_get(dep, "etcd")) && (rc = load_etcd(s, v, err, errlen)))
        goto out;
    if ((v = json_object_get(dep, "store"))) {
        /* "etcd" alone: the endpoints are deployment.etcd.host. */
        if ((rc = cfg_want(v, JSON_STRING, "deployment.store", "a string", err, errlen)) ||
            (strcmp(json_string_value(v), "etcd") != 0 &&
             (rc = check_store(json_string_value(v), err, errlen))))
            goto out;
        set_str(&s->store, json_string_value(v));
    }
    if ((v = json_object_get(dep, "state_dir"))) {
        if ((rc = cfg_want(v, JSON_STRING, "deployment.state_dir", "a string", err, errlen)))
            goto out;
        set_str(&s->state_dir, json_string_value(v));
    }
    if ((v = json_object_get(dep, "log_level"))) {
        int lvl = json_is_string(v) ? log_level_parse(json_string_value(v)) : -1;
        if (lvl < 0) {
            rc = cfg_fail(err, errlen,
                      "config: deployment.log_level must be error, warn, info or debug");
            goto out;
        }
        s->log_level = lvl;
    }
out:
    json_decref(root);
    return rc;
}

enum { OPT_ADMIN_LISTEN = 256, OPT_ADMIN_KEY, OPT_STORE, OPT_CONFIG_LISTEN, OPT_STATE_DIR,
       OPT_LOG_LEVEL };

static const struct option longopts[] = {
    {"config", required_argument, NULL, 'c'},
    {"admin-listen", required_argument, NULL, OPT_ADMIN_LISTEN},
    {"admin-key", required_argument, NULL, OPT_ADMIN_KEY},
    {"store", required_argument, NULL, OPT_STORE},
    {"config-listen", required_argument, NULL, OPT_CONFIG_LISTEN},
    {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

int settings_load(struct cp_settings *s, int argc, char **argv, char *err, size_t errlen)
{
    char dummy[8];
    memset(s, 0, sizeof(*s));
    netaddr_parse("127.0.0.1:9180", &s->admin_listen, dummy, sizeof(dummy));
    netaddr_parse("127.0.0.1:9280", &s->config_listen, dummy, sizeof(dummy));
    s->state_dir = strdup("./airgw-data");
    s->log_level = LOG_INFO;
    s->heartbeat_interval = 5;
    s->max_pending_bytes = 64u << 20;
    s->history = 10000;
    s->etcd_timeout = 5;
    s->etcd_tls_verify = 1;
    s->allow_admin = calloc(1, sizeof(struct cidr));
    cidr_parse("127.0.0.0/24", &s->allow_admin[0]);
    s->nallow = 1;

    /* First pass: only -c, so the file loads before the flags override it. */
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
        if (c == 'c')
            set_str(&s->config_file, optarg);
        else if (c == 'h') {
            fputs(usage, stdout);
            return SETTINGS_EXIT_OK;
        } else if (c == 'V') {
            printf("airgw-controlplane %s\n", AIRGW_VERSION);
            return SETTINGS_EXIT_OK;
        } else if (c == '?') {
            if (optopt)
                return cfg_fail(err, errlen, "option -%c: unknown or missing its value (see --help)",
                            optopt);
            return cfg_fail(err, errlen, "unknown option \"%s\" or missing value (see --help)",
                        argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cfg_fail(err, errlen, "unexpected argument \"%s\" (see --help)", argv[optind]);
    int rc;
    if (s->config_file && (rc = load_file(s, s->config_file, err, errlen)))
        return rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_ADMIN_LISTEN:
            if ((rc = set_addr(&s->admin_listen, "--admin-listen", optarg, err, errlen)))
                return rc;
            break;
        case OPT_CONFIG_LISTEN:
            if ((rc = set_addr(&s->config_listen, "--config-listen", optarg, err, errlen)))
                return rc;
            break;
        case OPT_ADMIN_KEY:
            if (optarg[0] == '\0')
                return cfg_fail(err, errlen, "--admin-key: the key must not be empty");
            settings_add_key(s, "admin", optarg, ROLE_ADMIN);
            break;
        case OPT_STORE:
            if ((rc = check_store(optarg, err, errlen)))
                return rc;
            set_str(&s->store, optarg);
            break;
        case OPT_STATE_DIR:
            set_str(&s->state_dir, optarg);
            break;
        case OPT_LOG_LEVEL:
            if ((s->log_level = log_level_parse(optarg)) < 0)
                return cfg_fail(err, errlen, "--log-level: must be error, warn, info or debug");
            break;
        default:
            break;
        }
    }
    /* The store: --store, else deployment.store, else etcd when
     * deployment.etcd.host is set, else SQLite in the state directory. */
    if ((!s->store && s->etcd_hosts) || (s->store && strcmp(s->store, "etcd") == 0)) {
        if (!s->etcd_hosts)
            return cfg_fail(err, errlen,
                            "config: deployment.store is etcd but deployment.etcd.host is not set");
        size_t n = strlen(s->etcd_hosts) + 8;
        free(s->store);
        s->store = malloc(n);
        snprintf(s->store, n, "etcd:%s", s->etcd_hosts);
    }
    if (!s->store) {
        size_t n = strlen(s->state_dir) + 32;
        s->store = malloc(n);
        snprintf(s->store, n, "sqlite:%s/airgw.db", s->state_dir);
    }
    return 0;
}

void settings_free(struct cp_settings *s)
{
    for (size_t i = 0; i < s->nkeys; i++) {
        free(s->keys[i].name);
        free(s->keys[i].key);
    }
    free(s->keys);
    free(s->allow_admin);
    free(s->config_file);
    free(s->store);
    free(s->etcd_hosts);
    free(s->etcd_prefix);
    free(s->etcd_user);
    free(s->etcd_password);
    free(s->etcd_tls_cert);
    free(s->etcd_tls_key);
    free(s->etcd_tls_ca);
    free(s->state_dir);
    free(s->stream_tls_cert);
    free(s->stream_tls_key);
    free(s->stream_tls_client_ca);
    memset(s, 0, sizeof(*s));
}
