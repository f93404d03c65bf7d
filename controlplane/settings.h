/*
 * settings: the control plane's settings, from its YAML config file (-c)
 * with command-line flags on top. Loaded once at start; immutable after.
 *
 * The file is APISIX's conf/config.yaml in spirit: everything lives under
 * "deployment" (admin, config_stream, store, state_dir, log_level, etcd).
 * Unknown keys under deployment are errors (a typo must not silently fall
 * back to a default); APISIX's own top-level sections are ignored with a
 * warning so an operator can start from their APISIX file.
 */
#ifndef AIRGW_CP_SETTINGS_H
#define AIRGW_CP_SETTINGS_H

#include <stddef.h>
#include <sys/socket.h>

#include "cidr.h"

enum admin_role { ROLE_ADMIN = 0, ROLE_VIEWER = 1 };

struct admin_key {
    char *name;          /* for logs only */
    char *key;           /* the secret */
    enum admin_role role;
};

struct cp_settings {
    char *config_file;                    /* -c FILE, or NULL */
    struct sockaddr_storage admin_listen; /* default 127.0.0.1:9180 */
    struct sockaddr_storage config_listen;/* default 127.0.0.1:9280 */
    char *store;                          /* "sqlite:PATH" or "etcd:URL,..." */
    char *etcd_hosts;                     /* deployment.etcd.host, joined with ',' */
    char *etcd_prefix;                    /* deployment.etcd.prefix, default "/apisix" */
    char *etcd_user, *etcd_password;      /* deployment.etcd.user/password, or NULL */
    double etcd_timeout;                  /* deployment.etcd.timeout, seconds, default 5 */
    char *etcd_tls_cert, *etcd_tls_key;   /* deployment.etcd.tls.cert/key, or NULL */
    char *etcd_tls_ca;                    /* deployment.etcd.tls.ca, or NULL */
    int etcd_tls_verify;                  /* deployment.etcd.tls.verify, default 1 */
    char *state_dir;                      /* default ./airgw-data */
    int log_level;                        /* enum log_level */
    struct admin_key *keys;               /* configured keys */
    size_t nkeys;
    struct cidr *allow_admin;             /* default 127.0.0.0/24 */
    size_t nallow;
    double heartbeat_interval;            /* seconds, default 5 */
    size_t max_pending_bytes;             /* per data plane, default 64 MiB */
    int history;                          /* changes kept for resume, default 10000 */
    char *stream_tls_cert;                /* config stream TLS certificate (PEM file), or NULL */
    char *stream_tls_key;                 /* its key */
    char *stream_tls_client_ca;           /* CAs data plane certificates must chain to, or NULL */
};

/* Result of settings_load besides success. */
#define SETTINGS_EXIT_OK 1 /* --help or --version was printed: exit 0 */

/* Fills s from argv (and the file -c names). Returns 0, SETTINGS_EXIT_OK, or
 * -EINVAL with a one-line message in err (the caller prints it, exits 2). */
int settings_load(struct cp_settings *s, int argc, char **argv, char *err, size_t errlen);

/* Adds an admin-role key (the generated one). Takes a copy. */
int settings_add_key(struct cp_settings *s, const char *name, const char *key,
                     enum admin_role role);

void settings_free(struct cp_settings *s);

#endif
