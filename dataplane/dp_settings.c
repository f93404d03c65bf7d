/*
 * dp_settings: see dp_settings.h. Order: defaults, the file, the flags.
 */
#include "dp_settings.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cfgfile.h"
#include "log.h"
#include "netaddr.h"
#include "yaml_json.h"

static const char usage[] =
    "usage: airgw-dataplane [options]\n"
    "\n"
    "The airgw data plane: a master process and N workers carrying HTTP traffic,\n"
    "configured by a control plane's config stream or a standalone file.\n"
    "\n"
    "  -c, --config FILE            YAML config file (section \"dataplane\"; flags override)\n"
    "      --control-plane A:P[,..] control plane config stream(s), in failover order\n"
    "      --standalone FILE        serve APISIX standalone YAML/JSON (apisix.yaml) instead\n"
    "      --workers N              worker processes (default: one per core)\n"
    "      --http-listen A:P        HTTP listener, repeatable (default 0.0.0.0:9080)\n"
    "      --https-listen A:P|off   HTTPS listener, repeatable (default 0.0.0.0:9443)\n"
    "      --metrics-listen A:P     Prometheus metrics (default 127.0.0.1:9091)\n"
    "      --stream-listen A:P      stream (TCP, MQTT) listener, repeatable (default none)\n"
    "      --stream-tls-listen A:P  stream listener over TLS, repeatable\n"
    "      --state-dir DIR          last good configuration kept here\n"
    "                               (default ./airgw-data/dataplane)\n"
    "      --node-id ID             name shown to the control plane (default: host name)\n"
    "      --access-log PATH|-|off  access log (default off)\n"
    "      --access-log-format F    json (default) or combined\n"
    "      --log-level LEVEL        error, warn, info (default) or debug\n"
    "  -h, --help                   this text\n"
    "  -V, --version                print the version\n";

enum { OPT_CP = 256, OPT_STANDALONE, OPT_WORKERS, OPT_HTTP_LISTEN, OPT_METRICS_LISTEN,
       OPT_STATE_DIR, OPT_NODE_ID, OPT_LOG_LEVEL, OPT_ACCESS_LOG, OPT_ACCESS_LOG_FORMAT,
       OPT_WORKER, OPT_STREAM_LISTEN, OPT_STREAM_TLS_LISTEN, OPT_HTTPS_LISTEN };

static const struct option longopts[] = {
    {"config", required_argument, NULL, 'c'},
    {"control-plane", required_argument, NULL, OPT_CP},
    {"standalone", required_argument, NULL, OPT_STANDALONE},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"http-listen", required_argument, NULL, OPT_HTTP_LISTEN},
    {"metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN},
    {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"node-id", required_argument, NULL, OPT_NODE_ID},
    {"access-log", required_argument, NULL, OPT_ACCESS_LOG},
    {"access-log-format", required_argument, NULL, OPT_ACCESS_LOG_FORMAT},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"worker", required_argument, NULL, OPT_WORKER},
    {"stream-listen", required_argument, NULL, OPT_STREAM_LISTEN},
    {"stream-tls-listen", required_argument, NULL, OPT_STREAM_TLS_LISTEN},
    {"https-listen", required_argument, NULL, OPT_HTTPS_LISTEN},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static int parse_cp_list(struct dp_settings *s, const char *list, const char *what, char *err,
                         size_t errlen)
{
    char buf[1024], why[200];
    snprintf(buf, sizeof(buf), "%s", list);
    s->ncp = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (s->ncp == DP_MAX_CP)
            return cfg_fail(err, errlen, "%s: at most %d control planes", what, DP_MAX_CP);
        if (netaddr_parse(t, &s->cp[s->ncp], why, sizeof(why)) < 0)
            return cfg_fail(err, errlen, "%s: %s", what, why);
        s->ncp++;
    }
    if (s->ncp == 0)
        return cfg_fail(err, errlen, "%s: no address given", what);
    return 0;
}

static int add_listen(struct dp_settings *s, const char *v, const char *what, char *err,
                      size_t errlen)
{
    char why[200];
    if (s->nhttp == DP_MAX_LISTEN)
        return cfg_fail(err, errlen, "%s: at most %d listeners", what, DP_MAX_LISTEN);
    if (netaddr_parse(v, &s->http_listen[s->nhttp], why, sizeof(why)) < 0)
        return cfg_fail(err, errlen, "%s: %s", what, why);
    s->nhttp++;
    return 0;
}

/* An HTTPS listener; "off" removes those given so far (none: no HTTPS). */
static int add_https(struct dp_settings *s, const char *v, const char *what, char *err,
                     size_t errlen)
{
    char why[200];
    s->https_given = 1;
    if (strcmp(v, "off") == 0) {
        s->nhttps = 0;
        return 0;
    }
    if (s->nhttps == DP_MAX_LISTEN)
        return cfg_fail(err, errlen, "%s: at most %d listeners", what, DP_MAX_LISTEN);
    if (netaddr_parse(v, &s->https_listen[s->nhttps], why, sizeof(why)) < 0)
        return cfg_fail(err, errlen, "%s: %s", what, why);
    s->nhttps++;
    return 0;
}

static int add_stream(struct dp_settings *s, const char *v, int tls, const char *what, char *err,
                      size_t errlen)
{
    char why[200];
    if (s->nstream == DP_MAX_LISTEN)
        return cfg_fail(err, errlen, "%s: at most %d stream listeners", what, DP_MAX_LISTEN);
    if (netaddr_parse(v, &s->stream_listen[s->nstream], why, sizeof(why)) < 0)
        return cfg_fail(err, errlen, "%s: %s", what, why);
    s->stream_tls[s->nstream++] = tls;
    return 0;
}

/* APISIX's stream_proxy.tcp: a list of "ADDR:PORT" (or port numbers) or
 * {addr, tls} mappings. */
/* dataplane.control_plane_tls: {ca, cert, key, server_name}: the config
 * stream over TLS, the control plane verified against ca, and our client
 * certificate for control planes that require one. */
static int load_cp_tls(struct dp_settings *s, const json_t *t, char *err, size_t errlen)
{
    static const char *const keys[] = {"ca", "cert", "key", "server_name", NULL};
    const char *what = "dataplane.control_plane_tls";
    int rc;
    if ((rc = cfg_want(t, JSON_OBJECT, what, "a mapping", err, errlen)) ||
        (rc = cfg_only_keys(t, what, keys, err, errlen)))
        return rc;
    const json_t *v;
    if ((v = json_object_get(t, "ca")) &&
        (rc = cfg_str(v, "dataplane.control_plane_tls.ca", &s->cp_tls_ca, err, errlen)))
        return rc;
    if ((v = json_object_get(t, "cert")) &&
        (rc = cfg_str(v, "dataplane.control_plane_tls.cert", &s->cp_tls_cert, err, errlen)))
        return rc;
    if ((v = json_object_get(t, "key")) &&
        (rc = cfg_str(v, "dataplane.control_plane_tls.key", &s->cp_tls_key, err, errlen)))
        return rc;
    if ((v = json_object_get(t, "server_name")) &&
        (rc = cfg_str(v, "dataplane.control_plane_tls.server_name", &s->cp_tls_server_name, err,
                      errlen)))
        return rc;
    if (!s->cp_tls_ca)
        return cfg_fail(err, errlen, "config: %s.ca is required (the CA that signed the control "
                                     "planes' certificates)", what);
    if (!s->cp_tls_cert != !s->cp_tls_key)
        return cfg_fail(err, errlen, "config: %s needs both cert and key, or neither", what);
    return 0;
}

static int load_stream_proxy(struct dp_settings *s, const json_t *sp, char *err, size_t errlen)
{
    static const char *const keys[] = {"tcp", NULL};
    int rc;
    if ((rc = cfg_want(sp, JSON_OBJECT, "dataplane.stream_proxy", "a mapping", err, errlen)) ||
        (rc = cfg_only_keys(sp, "dataplane.stream_proxy", keys, err, errlen)))
        return rc;
    json_t *tcp = json_object_get(sp, "tcp");
    if (!tcp)
        return 0;
    if ((rc = cfg_want(tcp, JSON_ARRAY, "dataplane.stream_proxy.tcp", "a list", err, errlen)))
        return rc;
    s->nstream = 0;
    size_t i;
    json_t *e;
    json_array_foreach(tcp, i, e) {
        char buf[128];
        const json_t *addr = json_is_object(e) ? json_object_get(e, "addr") : e;
        int tls = json_is_object(e) && json_is_true(json_object_get(e, "tls"));
        if (json_is_integer(addr))
            snprintf(buf, sizeof(buf), "0.0.0.0:%lld", (long long)json_integer_value(addr));
        else if (json_is_string(addr))
            snprintf(buf, sizeof(buf), "%s", json_string_value(addr));
        else
            return cfg_fail(err, errlen,
                            "config: dataplane.stream_proxy.tcp[%zu] needs addr (ADDR:PORT)",
                            i + 1);
        if ((rc = add_stream(s, buf, tls, "dataplane.stream_proxy.tcp", err, errlen)))
            return rc;
    }
    return 0;
}

static int set_access_log(struct dp_settings *s, const char *v)
{
    free(s->access_log);
    s->access_log = strcmp(v, "off") == 0 ? NULL : strdup(v);
    return 0;
}

static int set_format(struct dp_settings *s, const char *v, const char *what, char *err,
                      size_t errlen)
{
    if (strcmp(v, "json") == 0)
        s->access_log_json = 1;
    else if (strcmp(v, "combined") == 0)
        s->access_log_json = 0;
    else
        return cfg_fail(err, errlen, "%s: must be json or combined", what);
    return 0;
}

static int load_limits(struct dp_limits *l, const json_t *o, char *err, size_t errlen)
{
    static const char *const keys[] = {"max_header_bytes", "max_headers", "max_body_bytes",
                                       "client_header_timeout", "client_body_timeout",
                                       "keepalive_timeout", "send_timeout", "max_connections",
                                       "mqtt_connect_timeout", "mqtt_max_connect_bytes",
                                       "stream_idle_timeout", NULL};
    int rc;
    long long n;
    json_t *v;
    if ((rc = cfg_want(o, JSON_OBJECT, "dataplane.limits", "a mapping", err, errlen)) ||
        (rc = cfg_only_keys(o, "dataplane.limits", keys, err, errlen)))
        return rc;
    if ((v = json_object_get(o, "max_header_bytes"))) {
        if ((rc = cfg_int(v, "dataplane.limits.max_header_bytes", 1024, 1 << 20, &n, err,
                          errlen)))
            return rc;
        l->max_header_bytes = (unsigned)n;
    }
    if ((v = json_object_get(o, "max_headers"))) {
        if ((rc = cfg_int(v, "dataplane.limits.max_headers", 8, 10000, &n, err, errlen)))
            return rc;
        l->max_headers = (unsigned)n;
    }
    if ((v = json_object_get(o, "max_body_bytes"))) {
        if ((rc = cfg_int(v, "dataplane.limits.max_body_bytes", 0, (long long)1 << 50, &n, err,
                          errlen)))
            return rc;
        l->max_body_bytes = (unsigned long long)n;
    }
    if ((v = json_object_get(o, "mqtt_max_connect_bytes"))) {
        if ((rc = cfg_int(v, "dataplane.limits.mqtt_max_connect_bytes", 64, 268435455, &n, err,
                          errlen)))
            return rc;
        l->mqtt_max_connect_bytes = (unsigned)n;
    }
    if ((v = json_object_get(o, "max_connections"))) {
        if ((rc = cfg_int(v, "dataplane.limits.max_connections", 1, 10000000, &n, err, errlen)))
            return rc;
        l->max_connections = (unsigned)n;
    }
    struct {
        const char *name;
        unsigned *dst;
    } t[] = {{"client_header_timeout", &l->client_header_timeout_ms},
             {"client_body_timeout", &l->client_body_timeout_ms},
             {"keepalive_timeout", &l->keepalive_timeout_ms},
             {"send_timeout", &l->send_timeout_ms},
             {"mqtt_connect_timeout", &l->mqtt_connect_timeout_ms},
             {"stream_idle_timeout", &l->stream_idle_timeout_ms}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if ((v = json_object_get(o, t[i].name))) {
            char path[64];
            snprintf(path, sizeof(path), "dataplane.limits.%s", t[i].name);
            if ((rc = cfg_seconds(v, path, 0.01, 86400, t[i].dst, err, errlen)))
                return rc;
        }
    }
    return 0;
}

static int load_file(struct dp_settings *s, const char *path, char *err, size_t errlen)
{
    char why[512];
    json_t *root = yaml_json_load_file(path, why, sizeof(why));
    if (!root)
        return cfg_fail(err, errlen, "config: %s", why);
    int rc = 0;
    const char *k;
    json_t *v;
    if (!json_is_object(root)) {
        rc = cfg_fail(err, errlen, "config: %s: the top level must be a mapping", path);
        goto out;
    }
    json_object_foreach(root, k, v) {
        if (strcmp(k, "dataplane") == 0)
            continue;
        if (strcmp(k, "apisix") == 0 || strcmp(k, "nginx_config") == 0 ||
            strcmp(k, "plugins") == 0 || strcmp(k, "stream_plugins") == 0 ||
            strcmp(k, "plugin_attr") == 0 || strcmp(k, "deployment") == 0) {
            log_warn("config: section \"%s\" is not used by the data plane; ignored", k);
            continue;
        }
        rc = cfg_fail(err, errlen, "config: %s: unknown top-level key \"%s\"", path, k);
        goto out;
    }
    json_t *d = json_object_get(root, "dataplane");
    if (!d)
        goto out;
    static const char *const keys[] = {"control_plane", "standalone", "workers", "http_listen",
                                       "metrics_listen", "state_dir", "node_id", "log_level",
                                       "access_log", "access_log_format", "drain_timeout",
                                       "limits", "stream_proxy", "https_listen",
                                       "control_plane_tls", NULL};
    if ((rc = cfg_want(d, JSON_OBJECT, "dataplane", "a mapping", err, errlen)) ||
        (rc = cfg_only_keys(d, "dataplane", keys, err, errlen)))
        goto out;
    if ((v = json_object_get(d, "control_plane"))) {
        if (json_is_string(v)) {
            rc = parse_cp_list(s, json_string_value(v), "dataplane.control_plane", err, errlen);
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            s->ncp = 0;
            json_array_foreach(v, i, e) {
                if (s->ncp == DP_MAX_CP) {
                    rc = cfg_fail(err, errlen, "dataplane.control_plane: at most %d", DP_MAX_CP);
                    break;
                }
                if ((rc = cfg_addr(e, "dataplane.control_plane[]", &s->cp[s->ncp], err, errlen)))
                    break;
                s->ncp++;
            }
        } else {
            rc = cfg_fail(err, errlen, "config: \"dataplane.control_plane\" must be a list of "
                                       "ADDR:PORT");
        }
        if (rc)
            goto out;
    }
    if ((v = json_object_get(d, "standalone")) &&
        (rc = cfg_str(v, "dataplane.standalone", &s->standalone, err, errlen)))
        goto out;
    if ((v = json_object_get(d, "workers"))) {
        long long n;
        if ((rc = cfg_int(v, "dataplane.workers", 1, 256, &n, err, errlen)))
            goto out;
        s->workers = (int)n;
    }
    if ((v = json_object_get(d, "http_listen"))) {
        s->nhttp = 0;
        if (json_is_string(v)) {
            rc = add_listen(s, json_string_value(v), "dataplane.http_listen", err, errlen);
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                if (!json_is_string(e)) {
                    rc = cfg_fail(err, errlen, "config: dataplane.http_listen[%zu] must be "
                                               "ADDR:PORT", i + 1);
                    break;
                }
                if ((rc = add_listen(s, json_string_value(e), "dataplane.http_listen", err,
                                     errlen)))
                    break;
            }
        } else {
            rc = cfg_fail(err, errlen, "config: \"dataplane.http_listen\" must be a list");
        }
        if (rc)
            goto out;
    }
    if ((v = json_object_get(d, "https_listen"))) {
        s->nhttps = 0;
        s->https_given = 1;
        if (json_is_string(v)) {
            rc = add_https(s, json_string_value(v), "dataplane.https_listen", err, errlen);
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                if (!json_is_string(e)) {
                    rc = cfg_fail(err, errlen, "config: dataplane.https_listen[%zu] must be "
                                               "ADDR:PORT", i + 1);
                    break;
                }
                if ((rc = add_https(s, json_string_value(e), "dataplane.https_listen", err,
                                    errlen)))
                    break;
            }
        } else {
            rc = cfg_fail(err, errlen, "config: \"dataplane.https_listen\" must be a list");
        }
        if (rc)
            goto out;
    }
    if ((v = json_object_get(d, "metrics_listen")) &&
        (rc = cfg_addr(v, "dataplane.metrics_listen", &s->metrics_listen, err, errlen)))
        goto out;
    if ((v = json_object_get(d, "state_dir")) &&
        (rc = cfg_str(v, "dataplane.state_dir", &s->state_dir, err, errlen)))
        goto out;
    if ((v = json_object_get(d, "node_id")) &&
        (rc = cfg_str(v, "dataplane.node_id", &s->node_id, err, errlen)))
        goto out;
    if ((v = json_object_get(d, "log_level"))) {
        int lvl = json_is_string(v) ? log_level_parse(json_string_value(v)) : -1;
        if (lvl < 0) {
            rc = cfg_fail(err, errlen, "config: dataplane.log_level must be error, warn, info "
                                       "or debug");
            goto out;
        }
        s->log_level = lvl;
    }
    if ((v = json_object_get(d, "access_log"))) {
        if (!json_is_string(v)) {
            rc = cfg_fail(err, errlen, "config: dataplane.access_log must be a path, - or off");
            goto out;
        }
        set_access_log(s, json_string_value(v));
    }
    if ((v = json_object_get(d, "access_log_format"))) {
        if (!json_is_string(v)) {
            rc = cfg_fail(err, errlen, "config: dataplane.access_log_format must be json or "
                                       "combined");
            goto out;
        }
        if ((rc = set_format(s, json_string_value(v), "dataplane.access_log_format", err,
                             errlen)))
            goto out;
    }
    if ((v = json_object_get(d, "drain_timeout")) &&
        (rc = cfg_seconds(v, "dataplane.drain_timeout", 0, 3600, &s->drain_timeout_ms, err,
                          errlen)))
        goto out;
    if ((v = json_object_get(d, "limits")) && (rc = load_limits(&s->limits, v, err, errlen)))
        goto out;
    if ((v = json_object_get(d, "control_plane_tls")) && (rc = load_cp_tls(s, v, err, errlen)))
        goto out;
    if ((v = json_object_get(d, "stream_proxy")) && (rc = load_stream_proxy(s, v, err, errlen)))
        goto out;
out:
    json_decref(root);
    return rc;
}

int dp_settings_load(struct dp_settings *s, int argc, char **argv, char *err, size_t errlen)
{
    char dummy[8];
    memset(s, 0, sizeof(*s));
    s->worker_index = -1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    s->workers = cores > 0 ? (int)cores : 1;
    netaddr_parse("127.0.0.1:9091", &s->metrics_listen, dummy, sizeof(dummy));
    s->state_dir = strdup("./airgw-data/dataplane");
    s->log_level = LOG_INFO;
    s->access_log_json = 1;
    s->drain_timeout_ms = 10000;
    s->limits = (struct dp_limits){
        .max_header_bytes = 32768,
        .max_headers = 100,
        .max_body_bytes = 0,
        .client_header_timeout_ms = 60000,
        .client_body_timeout_ms = 60000,
        .keepalive_timeout_ms = 60000,
        .send_timeout_ms = 60000,
        .max_connections = 10240,
        .mqtt_connect_timeout_ms = 10000,
        .mqtt_max_connect_bytes = 65536,
        .stream_idle_timeout_ms = 600000,
    };

    opterr = 0;
    optind = 1;
    int c, rc;
    while ((c = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
        if (c == 'c') {
            free(s->config_file);
            s->config_file = strdup(optarg);
        } else if (c == 'h') {
            fputs(usage, stdout);
            return DP_SETTINGS_EXIT_OK;
        } else if (c == 'V') {
            printf("airgw-dataplane %s\n", AIRGW_VERSION);
            return DP_SETTINGS_EXIT_OK;
        } else if (c == '?') {
            if (optopt)
                return cfg_fail(err, errlen,
                                "option -%c: unknown or missing its value (see --help)", optopt);
            return cfg_fail(err, errlen, "unknown option \"%s\" or missing value (see --help)",
                            argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cfg_fail(err, errlen, "unexpected argument \"%s\" (see --help)", argv[optind]);
    if (s->config_file && (rc = load_file(s, s->config_file, err, errlen)))
        return rc;

    int listen_from_flags = 0, stream_from_flags = 0, https_from_flags = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:hV", longopts, NULL)) != -1) {
        char *end;
        long n;
        switch (c) {
        case OPT_CP:
            if ((rc = parse_cp_list(s, optarg, "--control-plane", err, errlen)))
                return rc;
            break;
        case OPT_STANDALONE:
            free(s->standalone);
            s->standalone = strdup(optarg);
            break;
        case OPT_WORKERS:
            n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 256)
                return cfg_fail(err, errlen, "--workers: must be an integer from 1 to 256");
            s->workers = (int)n;
            break;
        case OPT_HTTP_LISTEN:
            if (!listen_from_flags)
                s->nhttp = 0;
            listen_from_flags = 1;
            if ((rc = add_listen(s, optarg, "--http-listen", err, errlen)))
                return rc;
            break;
        case OPT_METRICS_LISTEN: {
            char why[200];
            if (netaddr_parse(optarg, &s->metrics_listen, why, sizeof(why)) < 0)
                return cfg_fail(err, errlen, "--metrics-listen: %s", why);
            break;
        }
        case OPT_STATE_DIR:
            free(s->state_dir);
            s->state_dir = strdup(optarg);
            break;
        case OPT_NODE_ID:
            if (!*optarg || strlen(optarg) > 100)
                return cfg_fail(err, errlen, "--node-id: 1 to 100 characters");
            free(s->node_id);
            s->node_id = strdup(optarg);
            break;
        case OPT_ACCESS_LOG:
            set_access_log(s, optarg);
            break;
        case OPT_ACCESS_LOG_FORMAT:
            if ((rc = set_format(s, optarg, "--access-log-format", err, errlen)))
                return rc;
            break;
        case OPT_LOG_LEVEL:
            if ((s->log_level = log_level_parse(optarg)) < 0)
                return cfg_fail(err, errlen, "--log-level: must be error, warn, info or debug");
            break;
        case OPT_STREAM_LISTEN:
        case OPT_STREAM_TLS_LISTEN:
            if (!stream_from_flags)
                s->nstream = 0;
            stream_from_flags = 1;
            if ((rc = add_stream(s, optarg, c == OPT_STREAM_TLS_LISTEN,
                                 c == OPT_STREAM_LISTEN ? "--stream-listen" : "--stream-tls-listen",
                                 err, errlen)))
                return rc;
            break;
        case OPT_HTTPS_LISTEN:
            if (!https_from_flags)
                s->nhttps = 0;
            https_from_flags = 1;
            if ((rc = add_https(s, optarg, "--https-listen", err, errlen)))
                return rc;
            break;
        case OPT_WORKER:
            n = strtol(optarg, &end, 10);
            if (*end || n < 0 || n > 255)
                return cfg_fail(err, errlen, "--worker: internal flag, 0 to 255");
            s->worker_index = (int)n;
            break;
        default:
            break;
        }
    }
    if (s->nhttp == 0)
        add_listen(s, "0.0.0.0:9080", "default", err, errlen);
    if (!s->https_given)
        add_https(s, "0.0.0.0:9443", "default", err, errlen);
    if (s->standalone && s->ncp)
        return cfg_fail(err, errlen, "--standalone and --control-plane exclude each other");
    if (!s->standalone && s->ncp == 0)
        parse_cp_list(s, "127.0.0.1:9280", "default", err, errlen);
    if (!s->node_id) {
        char host[256] = "dataplane";
        gethostname(host, sizeof(host) - 1);
        s->node_id = strdup(host);
    }
    return 0;
}

void dp_settings_free(struct dp_settings *s)
{
    free(s->config_file);
    free(s->standalone);
    free(s->state_dir);
    free(s->node_id);
    free(s->access_log);
    free(s->cp_tls_ca);
    free(s->cp_tls_cert);
    free(s->cp_tls_key);
    free(s->cp_tls_server_name);
    memset(s, 0, sizeof(*s));
}
