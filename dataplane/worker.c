/*
 * worker: see worker.h.
 */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "cfg_state.h"
#include "cfgs_uv.h"
#include "cfgstream.h"
#include "config.h"
#include "dp_settings.h"
#include "http_proxy.h"
#include "jsonschema.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "plugin.h"
#include "shm_limits.h"
#include "snapshot.h"
#include "stream_proxy.h"
#include "tls.h"

#define CHANNEL_FD 3
#define FIRST_LISTEN_FD 4

struct worker {
    struct dp_settings s;            /* this worker's settings */
    uv_loop_t loop;                  /* the one loop */
    uv_pipe_t chan;                  /* config from the master */
    struct cfgs_decoder dec;         /* its frames */
    struct cfg_state st;             /* resources as the master sent them */
    struct snapshot *snap;           /* what new requests are served with (one ref) */
    struct http_proxy *proxies[2 * DP_MAX_LISTEN]; /* one per inherited http(s) listener */
    size_t nproxies;
    int nfds;                        /* inherited listeners (fds 4..) */
    struct stream_proxy *streams[DP_MAX_LISTEN]; /* stream listeners */
    size_t nstreams;
    int sfds[DP_MAX_LISTEN];         /* their inherited fds */
    int stls[DP_MAX_LISTEN];         /* 1: TLS listener */
    int nsfds;
    int hfds[DP_MAX_LISTEN];         /* inherited https listeners */
    int nhfds;
    struct http_proxy_opts hpo;      /* their options: po with https */
    struct tls_ctx_store *tls;       /* certificates of the current revision (one ref), or
                                      * NULL until the first TLS use (current_tls) */
    struct stream_proxy_opts so;     /* their options */
    int serving;                     /* proxies started: a first snapshot is compiled */
    struct http_proxy_opts po;       /* their options */
    int draining_left;               /* proxies still draining */
    uv_signal_t sig_term, sig_int, sig_hup, sig_quit;
    uv_timer_t drain_timer;          /* bounds a drain */
    int stopping;
    int finished;                    /* finish() ran: handles are closing */
    int access_log_fd;               /* -1: off */
    struct metrics *metrics;         /* node-wide counters, or NULL */
    struct health_table *health;     /* node verdicts, or NULL */
    struct shm_limits *limits;       /* limit plugins' node-wide counters, or NULL */
    struct tls_ticket_keys *tickets; /* the node's TLS ticket keys, or NULL (own keys) */
    uv_timer_t gauge_timer;          /* publishes connection gauges */
    uv_timer_t rebuild_timer;        /* armed: changes wait for a compile */
    struct cfg_pacer pacer;          /* how often compiles may run (cfg_state.h) */
    char rbuf[65536];
};

static struct snapshot *current_snapshot(void *ud)
{
    struct worker *w = ud;
    return w->snap;
}

/* The certificate store is built on the first TLS use (an HTTPS or TLS
 * stream accept, an upstream over TLS), not at start: a worker that never
 * speaks TLS does not initialise BoringSSL nor parse certificates. From then
 * on rebuild() keeps it current with each revision. */
static struct tls_ctx_store *current_tls(void *ud)
{
    struct worker *w = ud;
    if (!w->tls) {
        w->tls = tls_ctx_store_build(w->st.res, NULL, NULL);
        if (w->tls)
            log_debug("TLS: certificates of revision %lld built on first use",
                      (long long)w->st.revision);
    }
    return w->tls;
}

/* Accepting starts only once the master's first snapshot is compiled: until
 * then connections wait in the listen queue (an older worker on the same
 * socket keeps taking them), so nobody gets a 404 from a worker that does
 * not know the routes yet. */
static void start_serving(struct worker *w)
{
    char err[256];
    w->serving = 1;
    for (int i = 0; i < w->nfds; i++) {
        struct http_proxy *p = http_proxy_start(&w->loop, FIRST_LISTEN_FD + i, &w->po,
                                                current_snapshot, w, err, sizeof(err));
        if (!p) {
            log_error("cannot serve listener %d: %s", i, err);
            continue;
        }
        w->proxies[w->nproxies++] = p;
    }
    for (int i = 0; i < w->nhfds; i++) {
        struct http_proxy *p = http_proxy_start(&w->loop, w->hfds[i], &w->hpo, current_snapshot,
                                                w, err, sizeof(err));
        if (!p) {
            log_error("cannot serve https listener %d: %s", i, err);
            continue;
        }
        w->proxies[w->nproxies++] = p;
    }
    for (int i = 0; i < w->nsfds; i++) {
        struct stream_proxy_opts so = w->so;
        so.tls = w->stls[i] != 0;
        struct stream_proxy *sp = stream_proxy_start(&w->loop, w->sfds[i], &so,
                                                     current_snapshot, w, err, sizeof(err));
        if (!sp) {
            log_error("cannot serve stream listener %d: %s", i, err);
            continue;
        }
        w->streams[w->nstreams++] = sp;
    }
}

/* Compiles the current resources and swaps the snapshot in; requests in
 * flight keep theirs. ACKs the revision compiled. */
static void rebuild(struct worker *w)
{
    cfg_pacer_start(&w->pacer, uv_hrtime());
    struct snapshot *s = snapshot_build(w->st.res, w->st.revision);
    if (!s) {
        cfg_pacer_done(&w->pacer, uv_hrtime());
        log_error("cannot compile revision %lld; still serving %lld", (long long)w->st.revision,
                  (long long)(w->snap ? w->snap->revision : 0));
        return;
    }
    struct snapshot *old = w->snap;
    w->snap = s;
    if (old)
        snapshot_unref(old);
    /* Certificates: unchanged ssls keep their contexts (and sessions).
     * Not built yet: current_tls() will on first use. */
    struct tls_ctx_store *t = w->tls ? tls_ctx_store_build(w->st.res, w->tls, NULL) : NULL;
    if (t) {
        tls_ctx_store_unref(w->tls);
        w->tls = t;
    } else if (w->tls) {
        log_error("cannot build the certificates of revision %lld; keeping the previous ones",
                  (long long)w->st.revision);
    }
    log_debug("serving revision %lld (%zu routes)", (long long)s->revision, s->nroutes);
    if (!w->serving && !w->stopping)
        start_serving(w);
    char *buf;
    size_t len;
    if (!uv_is_closing((uv_handle_t *)&w->chan) &&
        cfgs_encode_rev(CFGS_ACK, s->revision, &buf, &len) == 0)
        cfgs_write_buf((uv_stream_t *)&w->chan, buf, len, NULL);
    cfg_pacer_done(&w->pacer, uv_hrtime()); /* the certificates count too */
}

static void on_rebuild_timer(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (!w->finished)
        rebuild(w);
}

/* Changes arrived: one compile soon, for them and whatever follows before
 * it runs. At once (next loop turn) while compiles are cheap; under a burst
 * of changes to a large configuration, compiles take at most about a
 * quarter of the worker's time, the rest goes to traffic and to reading the
 * channel.
 * Signals are handled between compiles. */
static void schedule_rebuild(struct worker *w)
{
    if (w->finished || uv_is_active((uv_handle_t *)&w->rebuild_timer))
        return;
    uv_timer_start(&w->rebuild_timer, on_rebuild_timer,
                   cfg_pacer_delay_ms(&w->pacer, uv_hrtime()), 0);
}

static void finish(struct worker *w)
{
    if (w->finished)
        return;
    w->finished = 1;
    uv_close((uv_handle_t *)&w->gauge_timer, NULL);
    uv_close((uv_handle_t *)&w->rebuild_timer, NULL);
    metrics_worker_conns(w->metrics, w->s.worker_index, 0, 0, 0);
    for (size_t i = 0; i < w->nproxies; i++)
        http_proxy_free(w->proxies[i]);
    w->nproxies = 0;
    for (size_t i = 0; i < w->nstreams; i++)
        stream_proxy_free(w->streams[i]);
    w->nstreams = 0;
    plugin_env_shutdown();
    if (!uv_is_closing((uv_handle_t *)&w->chan))
        uv_close((uv_handle_t *)&w->chan, NULL);
    uv_close((uv_handle_t *)&w->sig_term, NULL);
    uv_close((uv_handle_t *)&w->sig_int, NULL);
    uv_close((uv_handle_t *)&w->sig_hup, NULL);
    uv_close((uv_handle_t *)&w->sig_quit, NULL);
    uv_close((uv_handle_t *)&w->drain_timer, NULL);
}

static void on_drained(void *ud)
{
    struct worker *w = ud;
    if (--w->draining_left == 0) {
        uv_timer_stop(&w->drain_timer);
        finish(w);
    }
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct worker *w = t->data;
    log_warn("drain timeout: closing %d listener(s) with requests still in flight",
             w->draining_left);
    finish(w);
}

/* bounded: a stop (SIGTERM), cut at the drain timeout. Unbounded: a reload
 * (SIGQUIT from the master), which lets stream sessions run to their end. */
static void drain(struct worker *w, const char *why, int bounded)
{
    if (bounded && !uv_is_active((uv_handle_t *)&w->drain_timer) && !w->finished)
        uv_timer_start(&w->drain_timer, on_drain_timeout, w->s.drain_timeout_ms, 0);
    if (w->stopping)
        return;
    w->stopping = 1;
    log_info("%s: draining", why);
    w->draining_left = (int)(w->nproxies + w->nstreams);
    if (w->draining_left == 0) {
        finish(w);
        return;
    }
    for (size_t i = 0; i < w->nproxies; i++)
        http_proxy_drain(w->proxies[i], on_drained, w);
    for (size_t i = 0; i < w->nstreams; i++)
        stream_proxy_drain(w->streams[i], on_drained, w);
}

static void on_stop_signal(uv_signal_t *sig, int signum)
{
    if (signum == SIGQUIT)
        drain(sig->data, "SIGQUIT (replaced)", 0);
    else
        drain(sig->data, signum == SIGTERM ? "SIGTERM" : "SIGINT", 1);
}

static void on_ignore(uv_signal_t *sig, int signum)
{
    /* SIGHUP goes to the whole process group from a terminal: the master
     * handles it by replacing workers; a worker has nothing to do. */
    (void)sig;
    (void)signum;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct worker *w = h->data;
    (void)suggested;
    *buf = uv_buf_init(w->rbuf, sizeof(w->rbuf));
}

static void on_chan_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct worker *w = s->data;
    if (nread < 0) {
        uv_close((uv_handle_t *)&w->chan, NULL);
        drain(w, "the master went away", 1);
        return;
    }
    if (cfgs_decoder_feed(&w->dec, buf->base, (size_t)nread) < 0)
        return;
    bool any = false;
    struct cfgs_msg m;
    char why[160];
    int rc;
    while ((rc = cfgs_decoder_next(&w->dec, &m, why, sizeof(why))) > 0) {
        bool changed = false;
        if (cfg_state_apply(&w->st, &m, &changed) < 0)
            log_error("config from the master out of order (%s)", cfgs_type_name(m.type));
        any = any || changed;
        cfgs_msg_free(&m);
    }
    if (rc < 0) {
        log_error("config channel: %s", why);
        uv_close((uv_handle_t *)&w->chan, NULL);
        drain(w, "config channel broken", 1);
        return;
    }
    /* One compile for a batch: a snapshot's many PUTs or a burst of changes. */
    if (any)
        schedule_rebuild(w);
}

static void publish_gauges(uv_timer_t *t)
{
    struct worker *w = t->data;
    uint64_t active = 0, accepted = 0;
    for (size_t i = 0; i < w->nproxies; i++) {
        struct http_proxy_stats st;
        http_proxy_get_stats(w->proxies[i], &st);
        active += st.connections_active;
        accepted += st.connections_total;
    }
    metrics_worker_conns(w->metrics, w->s.worker_index, active, accepted, accepted);
}

static int open_access_log(const struct dp_settings *s)
{
    if (!s->access_log)
        return -1;
    if (strcmp(s->access_log, "-") == 0)
        return dup(1);
    int fd = open(s->access_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        log_error("access log %s: %s", s->access_log, strerror(errno));
    return fd;
}

int worker_main(int argc, char **argv)
{
    static struct worker ws;
    struct worker *w = &ws;
    char err[1024];
    if (dp_settings_load(&w->s, argc, argv, err, sizeof(err)) != 0) {
        fprintf(stderr, "airgw-dataplane worker: %s\n", err);
        return 2;
    }
    char comp[32];
    snprintf(comp, sizeof(comp), "worker %d", w->s.worker_index);
    log_init(comp, w->s.log_level);
    signal(SIGPIPE, SIG_IGN);
    cfg_state_init(&w->st);
    cfgs_decoder_init(&w->dec);
    uv_loop_init(&w->loop);
    w->access_log_fd = open_access_log(&w->s);
    const char *mfd = getenv("AIRGW_METRICS_FD");
    if (mfd && atoi(mfd) > 0) {
        fcntl(atoi(mfd), F_SETFD, FD_CLOEXEC);
        w->metrics = metrics_attach(atoi(mfd));
    }
    const char *hfd = getenv("AIRGW_HEALTH_FD");
    if (hfd && atoi(hfd) > 0) {
        fcntl(atoi(hfd), F_SETFD, FD_CLOEXEC);
        w->health = health_table_attach(atoi(hfd));
        snapshot_set_health(w->health);
    }
    const char *lfd = getenv("AIRGW_LIMITS_FD");
    if (lfd && atoi(lfd) > 0) {
        fcntl(atoi(lfd), F_SETFD, FD_CLOEXEC);
        if (!(w->limits = shm_limits_attach(atoi(lfd))))
            log_warn("cannot map the node-wide limit counters: each worker counts alone");
    }

    const char *tfd = getenv("AIRGW_TLS_TICKETS_FD");
    if (tfd && atoi(tfd) > 0) {
        fcntl(atoi(tfd), F_SETFD, FD_CLOEXEC);
        if (!(w->tickets = tls_ticket_keys_attach(atoi(tfd))))
            log_warn("cannot map the node's TLS ticket keys: sessions resume on this worker only");
        tls_use_ticket_keys(w->tickets);
    }

    /* Plugins run in workers only, set up before the first snapshot. */
    struct plugin_env penv = {.loop = &w->loop, .worker_id = w->s.worker_index,
                              .nworkers = w->s.workers, .metrics = w->metrics, .limits = w->limits};
    plugin_env_set(&penv);

    /* An empty snapshot until the master's arrives: every request is a 404. */
    json_t *empty = json_object();
    w->snap = snapshot_build(empty, 0);
    json_decref(empty);

    const char *nfds_s = getenv("AIRGW_LISTEN_FDS");
    int nfds = nfds_s ? atoi(nfds_s) : 0;
    if (nfds < 0 || nfds > DP_MAX_LISTEN)
        nfds = 0;
    w->nfds = nfds;
    for (int i = 0; i < nfds; i++)
        fcntl(FIRST_LISTEN_FD + i, F_SETFD, FD_CLOEXEC);
    const char *sfds = getenv("AIRGW_STREAM_FDS");
    for (const char *q = sfds; q && *q && w->nsfds < DP_MAX_LISTEN;) {
        char *end;
        long fd = strtol(q, &end, 10);
        if (end == q || fd < 3)
            break;
        w->stls[w->nsfds] = *end == 't';
        w->sfds[w->nsfds++] = (int)fd;
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        q = end + (*end == 't');
        q += *q == ',';
    }
    const char *hfds = getenv("AIRGW_HTTPS_FDS");
    for (const char *q = hfds; q && *q && w->nhfds < DP_MAX_LISTEN;) {
        char *end;
        long fd = strtol(q, &end, 10);
        if (end == q || fd < 3)
            break;
        w->hfds[w->nhfds++] = (int)fd;
        fcntl((int)fd, F_SETFD, FD_CLOEXEC);
        q = end + (*end == ',');
    }
    stream_proxy_opts_init(&w->so);
    w->so.worker_id = w->s.worker_index;
    w->so.mqtt_connect_timeout_ms = w->s.limits.mqtt_connect_timeout_ms;
    w->so.mqtt_max_connect_bytes = w->s.limits.mqtt_max_connect_bytes;
    w->so.idle_timeout_ms = w->s.limits.stream_idle_timeout_ms;
    w->so.tls_current = current_tls;
    struct http_proxy_opts *po = &w->po;
    http_proxy_opts_init(po);
    po->max_header_bytes = w->s.limits.max_header_bytes;
    po->max_headers = w->s.limits.max_headers;
    po->max_body_bytes = w->s.limits.max_body_bytes;
    po->client_header_timeout_ms = w->s.limits.client_header_timeout_ms;
    po->client_body_timeout_ms = w->s.limits.client_body_timeout_ms;
    po->keepalive_timeout_ms = w->s.limits.keepalive_timeout_ms;
    po->send_timeout_ms = w->s.limits.send_timeout_ms;
    po->max_connections = w->s.limits.max_connections;
    po->access_log = w->access_log_fd;
    po->access_log_format = w->s.access_log_json ? HTTP_LOG_JSON : HTTP_LOG_COMBINED;
    po->worker_id = w->s.worker_index;
    /* Requests are recorded by the prometheus plugin (where it is
     * configured, as APISIX); the connection gauges below always. */
    po->hook_ud = w;
    po->tls_current = current_tls;
    w->hpo = *po;
    w->hpo.https = true;
    int exit_code = 0;

    uv_pipe_init(&w->loop, &w->chan, 0);
    w->chan.data = w;
    fcntl(CHANNEL_FD, F_SETFD, FD_CLOEXEC);
    uv_pipe_open(&w->chan, CHANNEL_FD);
    uv_read_start((uv_stream_t *)&w->chan, on_alloc, on_chan_read);
    uv_signal_init(&w->loop, &w->sig_term);
    uv_signal_init(&w->loop, &w->sig_int);
    uv_signal_init(&w->loop, &w->sig_hup);
    uv_signal_init(&w->loop, &w->sig_quit);
    w->sig_term.data = w->sig_int.data = w->sig_hup.data = w->sig_quit.data = w;
    uv_signal_start(&w->sig_quit, on_stop_signal, SIGQUIT);
    uv_signal_start(&w->sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&w->sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&w->sig_hup, on_ignore, SIGHUP);
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_timer_init(&w->loop, &w->gauge_timer);
    w->gauge_timer.data = w;
    uv_timer_start(&w->gauge_timer, publish_gauges, 200, 1000);
    uv_timer_init(&w->loop, &w->rebuild_timer);
    w->rebuild_timer.data = w;

    uv_run(&w->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&w->loop) != 0)
        log_warn("loop closed with handles still open");
    if (w->snap)
        snapshot_unref(w->snap);
    tls_ctx_store_unref(w->tls);
    tls_ticket_keys_free(w->tickets);
    cfgs_decoder_free(&w->dec);
    cfg_state_free(&w->st);
    if (w->access_log_fd >= 0)
        close(w->access_log_fd);
    metrics_free(w->metrics);
    snapshot_set_health(NULL);
    health_table_free(w->health);
    shm_limits_free(w->limits);
    dp_settings_free(&w->s);
    config_cleanup();
    jsonschema_cleanup();
    return exit_code;
}
