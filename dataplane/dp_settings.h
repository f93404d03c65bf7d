/*
 * dp_settings: the data plane's settings, from its YAML file (-c, section
 * "dataplane") with flags on top. The master loads them at start and again
 * on SIGHUP; each worker loads the same argv at its start (the master passes
 * its own argv through), so master and workers agree.
 */
#ifndef AIRGW_DP_SETTINGS_H
#define AIRGW_DP_SETTINGS_H

#include <stddef.h>
#include <sys/socket.h>

#define DP_MAX_LISTEN 8
#define DP_MAX_CP 8

struct dp_limits {
    unsigned max_header_bytes;       /* 431 over it */
    unsigned max_headers;            /* 431 over it */
    unsigned long long max_body_bytes; /* 413 over it; 0 = unlimited */
    unsigned client_header_timeout_ms; /* 408 */
    unsigned client_body_timeout_ms;   /* 408 */
    unsigned keepalive_timeout_ms;     /* idle client connection */
    unsigned send_timeout_ms;          /* client not reading */
    unsigned max_connections;          /* per worker */
    unsigned mqtt_connect_timeout_ms;  /* whole MQTT CONNECT within this */
    unsigned mqtt_max_connect_bytes;   /* CONNECT size limit */
    unsigned stream_idle_timeout_ms;   /* stream connection with no byte either way */
};

struct dp_settings {
    char *config_file;                           /* -c FILE or NULL */
    struct sockaddr_storage cp[DP_MAX_CP];       /* --control-plane, in failover order */
    size_t ncp;
    char *standalone;                            /* --standalone FILE or NULL */
    int workers;                                 /* --workers, default one per core */
    struct sockaddr_storage http_listen[DP_MAX_LISTEN]; /* default 0.0.0.0:9080 */
    size_t nhttp;
    struct sockaddr_storage https_listen[DP_MAX_LISTEN]; /* default 0.0.0.0:9443; "off": none */
    size_t nhttps;
    int https_given;                             /* set by the file or a flag (maybe to none) */
    struct sockaddr_storage metrics_listen;      /* default 127.0.0.1:9091 */
    struct sockaddr_storage stream_listen[DP_MAX_LISTEN]; /* stream (TCP/MQTT) listeners */
    int stream_tls[DP_MAX_LISTEN];               /* 1: that stream listener speaks TLS */
    size_t nstream;
    char *state_dir;                             /* default ./airgw-data/dataplane */
    char *node_id;                               /* default hostname-pid-less stable id */
    int log_level;
    char *access_log;                            /* path, "-" for stdout, NULL = off */
    int access_log_json;                         /* 1 json, 0 nginx combined */
    unsigned drain_timeout_ms;                   /* SIGTERM/SIGHUP drain bound */
    struct dp_limits limits;
    int worker_index;                            /* --worker N: this process is worker N; -1 master */
    char *cp_tls_ca;                             /* config stream TLS: CA of the control planes */
    char *cp_tls_cert;                           /* our client certificate (PEM file), or NULL */
    char *cp_tls_key;                            /* its key */
    char *cp_tls_server_name;                    /* name to verify, NULL: the address */
};

#define DP_SETTINGS_EXIT_OK 1 /* --help/--version printed */

/* Fills s from argv. Returns 0, DP_SETTINGS_EXIT_OK, or -EINVAL (message in
 * err; the caller prints it and exits 2). */
int dp_settings_load(struct dp_settings *s, int argc, char **argv, char *err, size_t errlen);

void dp_settings_free(struct dp_settings *s);

#endif
