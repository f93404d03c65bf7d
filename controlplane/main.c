/*
 * airgw-controlplane: owns the configuration. Loads settings, opens the
 * store, makes sure an admin key exists, then serves the Admin API and the
 * config stream on one libuv loop until SIGTERM/SIGINT, when it closes
 * everything and exits 0.
 *
 * Exit codes: 0 after a clean stop, 1 when it cannot start (port taken,
 * store unusable), 2 for a bad flag or config file.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>
#include <uv.h>

#include "admin_http.h"
#include "api.h"
#include "auth.h"
#include "cp_tls.h"
#include "config.h"
#include "fsutil.h"
#include "jsonschema.h"
#include "log.h"
#include "settings.h"
#include "store.h"
#include "stream_server.h"

struct cp {
    struct cp_settings settings; /* immutable after start */
    uv_loop_t loop;              /* the one loop */
    store *st;                   /* configuration store */
    struct stream_server *ss;    /* config stream */
    struct admin_http *admin;    /* Admin API */
    struct api_ctx api;          /* what the API handlers see */
    uv_signal_t sigterm, sigint; /* stop requests */
    int lock_fd;                 /* flock on the SQLite store, -1 if none */
    struct cp_tls_ctx *stream_tls; /* config stream TLS, or NULL */
};

static void on_stop_signal(uv_signal_t *s, int signum)
{
    struct cp *cp = s->data;
    log_info("received %s; stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
    admin_http_stop(cp->admin);
    cp->admin = NULL;
    stream_server_stop(cp->ss);
    cp->ss = NULL;
    store_stop(cp->st); /* etcd: joins the watch thread, closes its handle */
    uv_close((uv_handle_t *)&cp->sigterm, NULL);
    uv_close((uv_handle_t *)&cp->sigint, NULL);
}

static int open_store(struct cp *cp, char *err, size_t errlen)
{
    const char *spec = cp->settings.store;
    if (strncmp(spec, "sqlite:", 7) == 0) {
        const char *path = spec + 7;
        /* The database lives in its own directory; make it like the state dir. */
        char dir[4096];
        snprintf(dir, sizeof(dir), "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            fs_mkdirs(dir, 0700);
        }
        /* One control plane per SQLite file: a second one would write revisions
         * the first never streams. The lock dies with the process. */
        char lock[4200];
        snprintf(lock, sizeof(lock), "%s.lock", path);
        cp->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (cp->lock_fd < 0 || flock(cp->lock_fd, LOCK_EX | LOCK_NB) < 0) {
            snprintf(err, errlen, "store %.900s is in use by another control plane (%s)", path,
                     strerror(errno));
            return -EBUSY;
        }
        return store_sqlite_open(path, cp->settings.history, &cp->st, err, errlen);
    }
    /* etcd: no lock, any number of control planes share one cluster. */
    const struct cp_settings *st = &cp->settings;
    struct store_etcd_opts eo = {
        .endpoints = spec + 5,
        .prefix = st->etcd_prefix,
        .user = st->etcd_user,
        .password = st->etcd_password,
        .timeout = st->etcd_timeout,
        .tls_cert = st->etcd_tls_cert,
        .tls_key = st->etcd_tls_key,
        .tls_ca = st->etcd_tls_ca,
        .tls_verify = st->etcd_tls_verify,
        .history = st->history,
    };
    return store_etcd_open(&eo, &cp->st, err, errlen);
}

int main(int argc, char **argv)
{
    static struct cp cp; /* large; static keeps it off the stack */
    char err[1024];
    int rc = settings_load(&cp.settings, argc, argv, err, sizeof(err));
    if (rc == SETTINGS_EXIT_OK) {
        settings_free(&cp.settings);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "airgw-controlplane: %s\n", err);
        settings_free(&cp.settings);
        return 2;
    }
    log_init("controlplane", cp.settings.log_level);
    signal(SIGPIPE, SIG_IGN);
    int exit_code = 1;
    cp.lock_fd = -1;

    const char *key;
    bool generated;
    if (auth_ensure_admin_key(&cp.settings, &key, &generated, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out_settings;
    }
    if (generated)
        log_info("admin key: %s (no key configured; kept in %s/admin.key)", key,
                 cp.settings.state_dir);
    else
        log_info("admin key: configured (%zu key%s)", cp.settings.nkeys,
                 cp.settings.nkeys == 1 ? "" : "s");

    if (open_store(&cp, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out_settings;
    }
    if (strncmp(cp.settings.store, "etcd:", 5) == 0)
        log_info("store: etcd %s prefix %s at revision %lld", cp.settings.store + 5,
                 cp.settings.etcd_prefix ? cp.settings.etcd_prefix : "/apisix",
                 (long long)store_revision(cp.st));
    else
        log_info("store: %s at revision %lld", cp.settings.store,
                 (long long)store_revision(cp.st));

    uv_loop_init(&cp.loop);
    if (cp.settings.stream_tls_cert &&
        cp_tls_ctx_new(cp.settings.stream_tls_cert, cp.settings.stream_tls_key,
                       cp.settings.stream_tls_client_ca, &cp.stream_tls, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out_loop;
    }
    if (cp.stream_tls)
        log_info("config stream: TLS%s", cp.settings.stream_tls_client_ca
                                              ? " with client certificates"
                                              : " (data planes are not authenticated: set "
                                                "deployment.config_stream.tls.client_ca)");
    struct stream_server_opts so = {
        .listen = (const struct sockaddr *)&cp.settings.config_listen,
        .heartbeat_interval = cp.settings.heartbeat_interval,
        .max_pending_bytes = cp.settings.max_pending_bytes,
        .tls = cp.stream_tls,
    };
    if (stream_server_start(&cp.loop, cp.st, &so, &cp.ss, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out_loop;
    }
    store_set_watch(cp.st, stream_server_publish, cp.ss);
    cp.api.st = cp.st;
    cp.api.ss = cp.ss;
    if (admin_http_start(&cp.loop, &cp.settings, &cp.api, &cp.admin, err, sizeof(err)) < 0) {
        log_error("%s", err);
        stream_server_stop(cp.ss);
        cp.ss = NULL;
        goto out_loop;
    }
    store_set_resync(cp.st, stream_server_resync, cp.ss);
    if (store_start(cp.st, &cp.loop, err, sizeof(err)) < 0) {
        log_error("%s", err);
        admin_http_stop(cp.admin);
        cp.admin = NULL;
        stream_server_stop(cp.ss);
        cp.ss = NULL;
        goto out_loop;
    }
    uv_signal_init(&cp.loop, &cp.sigterm);
    uv_signal_init(&cp.loop, &cp.sigint);
    cp.sigterm.data = cp.sigint.data = &cp;
    uv_signal_start(&cp.sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&cp.sigint, on_stop_signal, SIGINT);
    log_info("airgw-controlplane %s ready", AIRGW_VERSION);
    exit_code = 0;

out_loop:
    uv_run(&cp.loop, UV_RUN_DEFAULT);
    store_set_watch(cp.st, NULL, NULL);
    store_set_resync(cp.st, NULL, NULL);
    if (uv_loop_close(&cp.loop) != 0)
        log_warn("loop closed with handles still open");
    store_close(cp.st);
    cp_tls_ctx_free(cp.stream_tls);
out_settings:
    if (cp.lock_fd >= 0)
        close(cp.lock_fd);
    settings_free(&cp.settings);
    config_cleanup();
    jsonschema_cleanup();
    if (exit_code == 0)
        log_info("stopped");
    return exit_code;
}
