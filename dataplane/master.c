/*
 * master: see master.h.
 *
 * Worker lifecycle: STARTING (spawned, config sent) -> SERVING (ACKed the
 * master's revision once) -> RETIRING (SIGTERM sent: draining) -> exited.
 * A worker that exits while it should be serving is respawned into the same
 * slot after a backoff that doubles (100 ms .. 10 s) while it keeps dying
 * within 2 s of its start.
 */
#include "master.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "cfg_client.h"
#include "cfg_state.h"
#include "cfgs_uv.h"
#include "config.h"
#include "dp_settings.h"
#include "fsutil.h"
#include "jsonschema.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "metrics_server.h"
#include "shm_limits.h"
#include "netaddr.h"
#include "standalone.h"
#include "tls.h"

#define MAX_SLOTS 256
#define CHANNEL_MAX_BACKLOG (256u << 20) /* a worker this far behind is killed */

enum wstate { W_STARTING, W_SERVING, W_RETIRING };

struct master;

struct worker {
    struct master *m;          /* owner */
    struct worker *next;       /* m->workers list */
    int slot;                  /* listening socket set it serves */
    int generation;            /* settings generation it was started with */
    enum wstate state;
    uv_process_t proc;         /* the process; proc.data = worker */
    uv_pipe_t chan;            /* config channel; chan.data = worker */
    struct cfgs_decoder dec;   /* ACKs from the worker */
    int64_t acked;             /* last revision it serves */
    int64_t sent_rev;          /* revision of the snapshot it was sent at spawn */
    uint64_t started_ms;       /* loop time at spawn */
    int exited;                /* process gone */
    int chan_closed;           /* channel handle closed */
    int proc_closed;           /* process handle closed */
    char rbuf[4096];
};

struct slot {
    int fds[DP_MAX_LISTEN];    /* listening sockets, one per http listen address */
    size_t nfds;
    int sfds[DP_MAX_LISTEN];   /* stream listening sockets, one per stream address */
    size_t nsfds;
    int hfds[DP_MAX_LISTEN];   /* https listening sockets, one per https address */
    size_t nhfds;
    unsigned backoff_ms;       /* respawn delay */
    uv_timer_t respawn;        /* respawn timer; data = master */
    int respawn_pending;       /* timer armed */
    int timer_inited;
};

struct master {
    int argc;
    char **argv;
    struct dp_settings s;      /* current settings */
    int generation;            /* bumped on SIGHUP */
    uv_loop_t loop;
    struct cfg_state st;       /* the configuration */
    struct cfg_client *cc;     /* control plane link, or NULL (standalone) */
    struct tls_ctx_store *cp_tls_store; /* config stream TLS: owns cp_tls, or NULL */
    struct tls_client_ctx *cp_tls;      /* the client context for the control planes */
    char *cp_tls_name;                  /* the name to verify (settings reload on SIGHUP) */
    uv_fs_poll_t file_poll;    /* standalone file watch */
    int file_poll_on;
    int64_t standalone_rev;    /* revision counter for standalone loads */
    struct worker *workers;    /* every worker not yet reaped */
    struct slot slots[MAX_SLOTS];
    int nslots;
    uv_timer_t save_timer;     /* debounced state save */
    struct cfg_pacer save_pacer; /* its cost sets the debounce (cfg_state.h) */
    uv_timer_t health_timer;   /* armed: changes wait for a health target update */
    struct cfg_pacer health_pacer; /* how often that update may run */
    uv_timer_t drain_timer;    /* bound on a stop */
    uv_signal_t sig_term, sig_int, sig_hup;
    struct metrics *metrics;   /* shared with workers; NULL when unavailable */
    struct health_table *health; /* node verdicts shared with workers, or NULL */
    struct shm_limits *limits; /* limit plugins' node-wide counters, or NULL */
    struct tls_ticket_keys *tickets; /* TLS session ticket keys shared with workers, or NULL */
    uv_timer_t ticket_timer;   /* rotates them every TLS_TICKET_ROTATE_S */
    struct health_checker *hc; /* active checks */
    struct metrics_server *ms; /* /apisix/prometheus/metrics */
    int stopping;
    char state_path[4200];
};

static void spawn_worker(struct master *m, int slot);
static void master_finish(struct master *m);

/* ---- listening sockets ---- */

static int open_listener(const struct sockaddr_storage *ss, char *err, size_t errlen)
{
    const struct sockaddr *sa = (const struct sockaddr *)ss;
    char where[80];
    netaddr_format(sa, where, sizeof(where));
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        goto fail;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (sa->sa_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    socklen_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    if (bind(fd, sa, len) < 0 || listen(fd, 511) < 0)
        goto fail;
    return fd;
fail:
    snprintf(err, errlen, "cannot listen on %s: %s", where, strerror(errno));
    if (fd >= 0)
        close(fd);
    return -1;
}

/* Opens one socket per address of a set into fds. A port of 0 is resolved
 * by the first socket and written back into addrs, so every slot shares it. */
static int open_set(struct sockaddr_storage *addrs, size_t n, int *fds, size_t *nfds, char *err,
                    size_t errlen)
{
    *nfds = 0;
    for (size_t k = 0; k < n; k++) {
        int fd = open_listener(&addrs[k], err, errlen);
        if (fd < 0)
            return -1;
        fds[(*nfds)++] = fd;
        struct sockaddr_storage *ss = &addrs[k];
        uint16_t *port = ss->ss_family == AF_INET6 ? &((struct sockaddr_in6 *)ss)->sin6_port
                                                   : &((struct sockaddr_in *)ss)->sin_port;
        if (*port == 0) {
            struct sockaddr_storage b;
            socklen_t bl = sizeof(b);
            getsockname(fd, (struct sockaddr *)&b, &bl);
            *port = b.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&b)->sin6_port
                                            : ((struct sockaddr_in *)&b)->sin_port;
        }
    }
    return 0;
}

/* Opens every listening socket of a slot into *sl: http, stream, https. */
static int open_slot_into(struct master *m, struct slot *sl, char *err, size_t errlen)
{
    return open_set(m->s.http_listen, m->s.nhttp, sl->fds, &sl->nfds, err, errlen) < 0 ||
                   open_set(m->s.stream_listen, m->s.nstream, sl->sfds, &sl->nsfds, err,
                            errlen) < 0 ||
                   open_set(m->s.https_listen, m->s.nhttps, sl->hfds, &sl->nhfds, err, errlen) < 0
               ? -1
               : 0;
}

/* Hands src's sockets to dst (dst's timers and backoff stay). */
static void move_fds(struct slot *dst, struct slot *src)
{
    memcpy(dst->fds, src->fds, sizeof(src->fds));
    dst->nfds = src->nfds;
    memcpy(dst->sfds, src->sfds, sizeof(src->sfds));
    dst->nsfds = src->nsfds;
    memcpy(dst->hfds, src->hfds, sizeof(src->hfds));
    dst->nhfds = src->nhfds;
    src->nfds = src->nsfds = src->nhfds = 0;
}

static int open_slot(struct master *m, int i, char *err, size_t errlen)
{
    return open_slot_into(m, &m->slots[i], err, errlen);
}

static void close_slot_fds(struct slot *sl)
{
    for (size_t k = 0; k < sl->nfds; k++)
        close(sl->fds[k]);
    sl->nfds = 0;
    for (size_t k = 0; k < sl->nsfds; k++)
        close(sl->sfds[k]);
    sl->nsfds = 0;
    for (size_t k = 0; k < sl->nhfds; k++)
        close(sl->hfds[k]);
    sl->nhfds = 0;
}

/* ---- configuration to workers ---- */

static void on_chan_write_err(uv_stream_t *s, int status)
{
    struct worker *w = s->data;
    log_warn("worker %d (pid %d): config channel write failed: %s", w->slot, w->proc.pid,
             uv_strerror(status));
}

static int chan_usable(const struct worker *w)
{
    return !w->exited && !w->chan_closed && !uv_is_closing((const uv_handle_t *)&w->chan);
}

static void kill_if_behind(struct worker *w)
{
    if (uv_stream_get_write_queue_size((uv_stream_t *)&w->chan) > CHANNEL_MAX_BACKLOG) {
        log_error("worker %d (pid %d) does not read its configuration; killing it", w->slot,
                  w->proc.pid);
        uv_process_kill(&w->proc, SIGKILL);
    }
}

static void emit_to_worker(void *ud, char *buf, size_t len)
{
    struct worker *w = ud;
    if (chan_usable(w))
        cfgs_write_buf((uv_stream_t *)&w->chan, buf, len, on_chan_write_err);
    else
        free(buf);
}

static void send_snapshot(struct worker *w)
{
    if (!chan_usable(w))
        return;
    w->sent_rev = w->m->st.revision;
    int rc = cfg_state_encode(&w->m->st, emit_to_worker, w);
    if (rc < 0)
        log_error("cannot encode the configuration for worker %d: %s", w->slot, strerror(-rc));
    kill_if_behind(w);
}

static void broadcast_change(struct master *m, const struct cfgs_msg *msg)
{
    char *buf;
    size_t len;
    int rc = msg->type == CFGS_PUT
                 ? cfgs_encode_put(msg->revision, msg->key, msg->value, msg->create_revision,
                                   msg->mod_revision, &buf, &len)
                 : cfgs_encode_delete(msg->revision, msg->key, &buf, &len);
    if (rc < 0)
        return;
    struct cfgs_frame *f = cfgs_frame_new(buf, len);
    if (!f)
        return;
    for (struct worker *w = m->workers; w; w = w->next) {
        if (!chan_usable(w))
            continue;
        cfgs_frame_write((uv_stream_t *)&w->chan, f, on_chan_write_err);
        kill_if_behind(w);
    }
    cfgs_frame_unref(f);
}

static void on_save_timer(uv_timer_t *t)
{
    struct master *m = t->data;
    char err[512];
    cfg_pacer_start(&m->save_pacer, uv_hrtime());
    if (cfg_state_save(&m->st, m->state_path, err, sizeof(err)) < 0)
        log_error("cannot save the configuration: %s", err);
    cfg_pacer_done(&m->save_pacer, uv_hrtime());
}

static void on_health_timer(uv_timer_t *t)
{
    struct master *m = t->data;
    cfg_pacer_start(&m->health_pacer, uv_hrtime());
    health_checker_update(m->hc, m->st.res);
    cfg_pacer_done(&m->health_pacer, uv_hrtime());
}

/* Workers get every change at once (they pace their own compiles); what
 * costs the size of the configuration here runs once for many changes: the
 * health targets (at once while that is cheap, see cfg_state.h) and the
 * state file (at least 50 ms after the first unsaved change). */
static void on_config_change(void *ud, bool snapshot, const struct cfgs_msg *msg)
{
    struct master *m = ud;
    if (snapshot) {
        for (struct worker *w = m->workers; w; w = w->next)
            send_snapshot(w);
    } else {
        broadcast_change(m, msg);
    }
    uint64_t now = uv_hrtime();
    if (!m->stopping && !uv_is_active((uv_handle_t *)&m->health_timer))
        uv_timer_start(&m->health_timer, on_health_timer,
                       cfg_pacer_delay_ms(&m->health_pacer, now), 0);
    if (!uv_is_active((uv_handle_t *)&m->save_timer)) {
        uint64_t d = cfg_pacer_delay_ms(&m->save_pacer, now);
        uv_timer_start(&m->save_timer, on_save_timer, d > 50 ? d : 50, 0);
    }
}

/* ---- standalone ---- */

static void load_standalone(struct master *m, const char *why)
{
    char err[1024];
    json_t *res;
    if (standalone_load(m->s.standalone, &res, err, sizeof(err)) < 0) {
        log_error("standalone: %s; keeping the configuration at revision %lld", err,
                  (long long)m->st.revision);
        return;
    }
    if (json_equal(res, m->st.res) && m->st.revision > 0) {
        json_decref(res);
        return;
    }
    cfg_state_replace(&m->st, res, ++m->standalone_rev);
    log_info("standalone: loaded %s (%s): %zu resources, revision %lld", m->s.standalone, why,
             json_object_size(res), (long long)m->st.revision);
    on_config_change(m, true, NULL);
}

static void on_file_poll(uv_fs_poll_t *h, int status, const uv_stat_t *prev,
                         const uv_stat_t *curr)
{
    (void)prev;
    (void)curr;
    if (status == 0)
        load_standalone(h->data, "file changed");
}

/* ---- workers ---- */

static void free_worker_if_done(struct worker *w)
{
    if (!w->chan_closed || !w->proc_closed)
        return;
    struct master *m = w->m;
    for (struct worker **p = &m->workers; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    cfgs_decoder_free(&w->dec);
    free(w);
    if (m->stopping && !m->workers)
        master_finish(m);
}

static void on_chan_closed(uv_handle_t *h)
{
    struct worker *w = h->data;
    w->chan_closed = 1;
    free_worker_if_done(w);
}

static void on_proc_closed(uv_handle_t *h)
{
    struct worker *w = h->data;
    w->proc_closed = 1;
    free_worker_if_done(w);
}

/* SIGQUIT: a replaced worker finishes its requests and keeps its stream
 * (MQTT) connections until they end, so a reload drops no session. SIGTERM:
 * a stop, bounded by the drain timeout. */
static void retire_with(struct worker *w, int sig)
{
    if (w->exited || (w->state == W_RETIRING && sig == SIGQUIT))
        return;
    w->state = W_RETIRING;
    uv_process_kill(&w->proc, sig);
}

static void retire(struct worker *w)
{
    retire_with(w, w->m->stopping ? SIGTERM : SIGQUIT);
}

/* New workers serve: retire the older generation's worker of the same slot. */
static void on_worker_serving(struct worker *w)
{
    struct master *m = w->m;
    log_info("worker %d (pid %d) serving revision %lld", w->slot, w->proc.pid,
             (long long)w->acked);
    for (struct worker *o = m->workers; o; o = o->next)
        if (o != w && o->slot == w->slot && o->generation < w->generation)
            retire(o);
}

static void on_chan_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct worker *w = h->data;
    (void)suggested;
    *buf = uv_buf_init(w->rbuf, sizeof(w->rbuf));
}

static void on_chan_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct worker *w = s->data;
    if (nread < 0) {
        if (!uv_is_closing((uv_handle_t *)&w->chan))
            uv_close((uv_handle_t *)&w->chan, on_chan_closed);
        return;
    }
    if (cfgs_decoder_feed(&w->dec, buf->base, (size_t)nread) < 0)
        return;
    struct cfgs_msg msg;
    while (cfgs_decoder_next(&w->dec, &msg, NULL, 0) > 0) {
        if (msg.type == CFGS_ACK) {
            w->acked = msg.revision;
            /* Serving once it compiled what it was sent at spawn: during a
             * burst of changes the latest revision may keep moving on. */
            if (w->state == W_STARTING && w->acked >= w->sent_rev) {
                w->state = W_SERVING;
                on_worker_serving(w);
            }
        }
        cfgs_msg_free(&msg);
    }
}

static void on_respawn_timer(uv_timer_t *t);

static void on_worker_exit(uv_process_t *p, int64_t status, int term_signal)
{
    struct worker *w = p->data;
    struct master *m = w->m;
    w->exited = 1;
    metrics_worker_gone(m->metrics, w->slot);
    /* A worker that died mid-request never ran its limit-conn log phase. */
    if (status != 0 || term_signal)
        shm_limits_worker_gone(m->limits, w->slot);
    uint64_t lived = uv_now(&m->loop) - w->started_ms;
    if (w->state == W_RETIRING || m->stopping) {
        log_info("worker %d (pid %d) exited (%s)", w->slot, p->pid,
                 status == 0 && !term_signal ? "drained" : "stopped");
    } else if (term_signal) {
        log_error("worker %d (pid %d) was killed by signal %d (%s) after %.1f s; restarting it",
                  w->slot, p->pid, term_signal, strsignal(term_signal), (double)lived / 1000.0);
    } else {
        log_error("worker %d (pid %d) exited with status %lld after %.1f s; restarting it",
                  w->slot, p->pid, (long long)status, (double)lived / 1000.0);
    }
    int respawn = !m->stopping && w->state != W_RETIRING && w->generation == m->generation &&
                  w->slot < m->nslots;
    if (!uv_is_closing((uv_handle_t *)&w->chan))
        uv_close((uv_handle_t *)&w->chan, on_chan_closed);
    uv_close((uv_handle_t *)&w->proc, on_proc_closed);
    if (respawn) {
        struct slot *sl = &m->slots[w->slot];
        if (lived < 2000)
            sl->backoff_ms = sl->backoff_ms ? (sl->backoff_ms * 2 > 10000 ? 10000
                                                                           : sl->backoff_ms * 2)
                                            : 100;
        else
            sl->backoff_ms = 100;
        if (lived >= 2000 || sl->backoff_ms > 100)
            log_info("restarting worker %d in %u ms", w->slot, sl->backoff_ms);
        sl->respawn_pending = 1;
        uv_timer_start(&sl->respawn, on_respawn_timer, sl->backoff_ms, 0);
    }
}

static void on_respawn_timer(uv_timer_t *t)
{
    struct master *m = t->data;
    for (int i = 0; i < m->nslots; i++) {
        if (&m->slots[i].respawn == t) {
            m->slots[i].respawn_pending = 0;
            if (!m->stopping)
                spawn_worker(m, i);
        }
    }
}

static void spawn_worker(struct master *m, int slot)
{
    struct slot *sl = &m->slots[slot];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        log_error("socketpair: %s", strerror(errno));
        return;
    }
    struct worker *w = calloc(1, sizeof(*w));
    w->m = m;
    w->slot = slot;
    w->generation = m->generation;
    w->state = W_STARTING;
    w->acked = -1;
    cfgs_decoder_init(&w->dec);

    /* argv: ours, plus --worker N. */
    char **args = calloc((size_t)m->argc + 3, sizeof(char *));
    char idx[16];
    snprintf(idx, sizeof(idx), "%d", slot);
    args[0] = "/proc/self/exe";
    for (int i = 1; i < m->argc; i++)
        args[i] = m->argv[i];
    args[m->argc] = "--worker";
    args[m->argc + 1] = idx;

    /* env: ours plus how many listening fds follow fd 3. */
    extern char **environ;
    size_t nenv = 0;
    while (environ[nenv])
        nenv++;
    char **env = calloc(nenv + 8, sizeof(char *));
    char fdenv[64], menv[64], henv[64], lenv[64], tenv[64], senv[32 + 8 * DP_MAX_LISTEN];
    snprintf(fdenv, sizeof(fdenv), "AIRGW_LISTEN_FDS=%zu", sl->nfds);
    int next_fd = 4 + (int)sl->nfds;
    /* Stream sockets follow the http ones: "fd,fd" with a "t" on TLS ones. */
    size_t so = (size_t)snprintf(senv, sizeof(senv), "AIRGW_STREAM_FDS=");
    for (size_t k = 0; k < sl->nsfds; k++)
        so += (size_t)snprintf(senv + so, sizeof(senv) - so, "%s%d%s", k ? "," : "", next_fd++,
                               m->s.stream_tls[k] ? "t" : "");
    /* Then the https ones: "fd,fd". */
    char hsenv[32 + 8 * DP_MAX_LISTEN];
    size_t ho = (size_t)snprintf(hsenv, sizeof(hsenv), "AIRGW_HTTPS_FDS=");
    for (size_t k = 0; k < sl->nhfds; k++)
        ho += (size_t)snprintf(hsenv + ho, sizeof(hsenv) - ho, "%s%d", k ? "," : "", next_fd++);
    snprintf(menv, sizeof(menv), "AIRGW_METRICS_FD=%d", m->metrics ? next_fd++ : -1);
    snprintf(henv, sizeof(henv), "AIRGW_HEALTH_FD=%d", m->health ? next_fd++ : -1);
    snprintf(lenv, sizeof(lenv), "AIRGW_LIMITS_FD=%d", m->limits ? next_fd++ : -1);
    snprintf(tenv, sizeof(tenv), "AIRGW_TLS_TICKETS_FD=%d", m->tickets ? next_fd++ : -1);
    size_t e = 0;
    for (size_t i = 0; i < nenv; i++)
        if (strncmp(environ[i], "AIRGW_LISTEN_FDS=", 17) != 0 &&
            strncmp(environ[i], "AIRGW_METRICS_FD=", 17) != 0 &&
            strncmp(environ[i], "AIRGW_HEALTH_FD=", 16) != 0 &&
            strncmp(environ[i], "AIRGW_LIMITS_FD=", 16) != 0 &&
            strncmp(environ[i], "AIRGW_TLS_TICKETS_FD=", 21) != 0 &&
            strncmp(environ[i], "AIRGW_STREAM_FDS=", 17) != 0 &&
            strncmp(environ[i], "AIRGW_HTTPS_FDS=", 16) != 0)
            env[e++] = environ[i];
    env[e++] = fdenv;
    env[e++] = menv;
    env[e++] = henv;
    env[e++] = lenv;
    env[e++] = tenv;
    env[e++] = senv;
    env[e++] = hsenv;

    uv_stdio_container_t stdio[8 + 3 * DP_MAX_LISTEN];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 1;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = sv[1];
    for (size_t k = 0; k < sl->nfds; k++) {
        stdio[4 + k].flags = UV_INHERIT_FD;
        stdio[4 + k].data.fd = sl->fds[k];
    }
    int nstdio = 4 + (int)sl->nfds;
    for (size_t k = 0; k < sl->nsfds; k++) {
        stdio[nstdio].flags = UV_INHERIT_FD;
        stdio[nstdio].data.fd = sl->sfds[k];
        nstdio++;
    }
    for (size_t k = 0; k < sl->nhfds; k++) {
        stdio[nstdio].flags = UV_INHERIT_FD;
        stdio[nstdio].data.fd = sl->hfds[k];
        nstdio++;
    }
    if (m->metrics) {
        stdio[nstdio].flags = UV_INHERIT_FD;
        stdio[nstdio].data.fd = metrics_fd(m->metrics);
        nstdio++;
    }
    if (m->health) {
        stdio[nstdio].flags = UV_INHERIT_FD;
        stdio[nstdio].data.fd = health_table_fd(m->health);
        nstdio++;
    }
    if (m->limits) {
        stdio[nstdio].flags = UV_INHERIT_FD;
        stdio[nstdio].data.fd = shm_limits_fd(m->limits);
        nstdio++;
    }
    if (m->tickets) {
        stdio[nstdio].flags = UV_INHERIT_FD;
        stdio[nstdio].data.fd = tls_ticket_keys_fd(m->tickets);
        nstdio++;
    }
    uv_process_options_t po = {
        .exit_cb = on_worker_exit,
        .file = "/proc/self/exe",
        .args = args,
        .env = env,
        .stdio_count = nstdio,
        .stdio = stdio,
    };
    w->proc.data = w;
    int rc = uv_spawn(&m->loop, &w->proc, &po);
    free(args);
    free(env);
    close(sv[1]);
    if (rc < 0) {
        log_error("cannot start worker %d: %s", slot, uv_strerror(rc));
        close(sv[0]);
        cfgs_decoder_free(&w->dec);
        free(w);
        sl->respawn_pending = 1;
        uv_timer_start(&sl->respawn, on_respawn_timer, 1000, 0);
        return;
    }
    uv_pipe_init(&m->loop, &w->chan, 0);
    w->chan.data = w;
    uv_pipe_open(&w->chan, sv[0]);
    w->started_ms = uv_now(&m->loop);
    w->next = m->workers;
    m->workers = w;
    log_info("started worker %d (pid %d)", slot, w->proc.pid);
    uv_read_start((uv_stream_t *)&w->chan, on_chan_alloc, on_chan_read);
    send_snapshot(w);
}

/* ---- metrics ---- */

static char *render_metrics(void *ud, size_t *len)
{
    struct master *m = ud;
    return m->metrics ? metrics_render(m->metrics, m->s.node_id, m->st.revision, len) : NULL;
}

/* ---- start, reload, stop ---- */

static char *read_pem(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(256 * 1024);
    size_t n = buf ? fread(buf, 1, 256 * 1024 - 1, f) : 0;
    fclose(f);
    if (!buf || n == 0) {
        free(buf);
        snprintf(err, errlen, "cannot read %s: empty or too large", path);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

/* The config stream's TLS client context (dataplane.control_plane_tls). */
static int setup_cp_tls(struct master *m, char *err, size_t errlen)
{
    if (!m->s.cp_tls_ca || m->s.standalone)
        return 0;
    char *cert = NULL, *key = NULL;
    if (m->s.cp_tls_cert && (!(cert = read_pem(m->s.cp_tls_cert, err, errlen)) ||
                             !(key = read_pem(m->s.cp_tls_key, err, errlen)))) {
        free(cert);
        return -1;
    }
    json_t *none = json_object();
    json_t *conf = json_pack("{s:{s:b}}", "tls", "verify", 1);
    if (cert) {
        json_t *t = json_object_get(conf, "tls");
        json_object_set_new(t, "client_cert", json_string(cert));
        json_object_set_new(t, "client_key", json_string(key));
    }
    free(cert);
    free(key);
    if (m->s.cp_tls_server_name)
        m->cp_tls_name = strdup(m->s.cp_tls_server_name);
    int rc = -1;
    m->cp_tls_store = tls_ctx_store_build(none, NULL, m->s.cp_tls_ca);
    if (!m->cp_tls_store) {
        snprintf(err, errlen, "config stream TLS: out of memory");
    } else {
        char why[512];
        m->cp_tls = tls_ctx_store_client(m->cp_tls_store, conf, NULL, why, sizeof(why));
        if (m->cp_tls)
            rc = 0;
        else
            snprintf(err, errlen, "dataplane.control_plane_tls: %s", why);
    }
    json_decref(conf);
    json_decref(none);
    return rc;
}

static void start_source(struct master *m)
{
    if (m->s.standalone) {
        load_standalone(m, "start");
        uv_fs_poll_init(&m->loop, &m->file_poll);
        m->file_poll.data = m;
        uv_fs_poll_start(&m->file_poll, on_file_poll, m->s.standalone, 1000);
        m->file_poll_on = 1;
        return;
    }
    struct cfg_client_opts o = {
        .cps = m->s.cp,
        .ncp = m->s.ncp,
        .node_id = m->s.node_id,
        .heartbeat_ms = 5000,
        .on_change = on_config_change,
        .ud = m,
        .tls = m->cp_tls,
        .server_name = m->cp_tls_name,
    };
    cfg_client_start(&m->loop, &m->st, &o, &m->cc);
}

static int same_listen(const struct dp_settings *a, const struct dp_settings *b)
{
    if (a->nhttp != b->nhttp)
        return 0;
    for (size_t i = 0; i < a->nhttp; i++)
        if (memcmp(&a->http_listen[i], &b->http_listen[i], sizeof(a->http_listen[i])) != 0)
            return 0;
    if (a->nstream != b->nstream)
        return 0;
    for (size_t i = 0; i < a->nstream; i++)
        if (memcmp(&a->stream_listen[i], &b->stream_listen[i], sizeof(a->stream_listen[i])) ||
            a->stream_tls[i] != b->stream_tls[i])
            return 0;
    if (a->nhttps != b->nhttps)
        return 0;
    for (size_t i = 0; i < a->nhttps; i++)
        if (memcmp(&a->https_listen[i], &b->https_listen[i], sizeof(a->https_listen[i])) != 0)
            return 0;
    return 1;
}

static void on_sighup(uv_signal_t *sig, int signum)
{
    struct master *m = sig->data;
    (void)signum;
    struct dp_settings ns;
    char err[1024];
    if (dp_settings_load(&ns, m->argc, m->argv, err, sizeof(err)) != 0) {
        log_error("SIGHUP: %s; keeping the running settings", err);
        dp_settings_free(&ns);
        return;
    }
    log_info("SIGHUP: reloading settings and replacing workers");
    int new_sockets = !same_listen(&m->s, &ns);
    /* Keep resolved ports for listeners given as port 0. */
    if (!new_sockets) {
        memcpy(ns.http_listen, m->s.http_listen, sizeof(ns.http_listen));
        memcpy(ns.stream_listen, m->s.stream_listen, sizeof(ns.stream_listen));
        memcpy(ns.https_listen, m->s.https_listen, sizeof(ns.https_listen));
    }
    int nslots = ns.workers;
    if (nslots > MAX_SLOTS)
        nslots = MAX_SLOTS;
    struct dp_settings old = m->s;
    m->s = ns;
    if (new_sockets) {
        /* Open every new socket first: if one fails, nothing changes. The
         * old sockets stay open in the old workers until they drain. */
        static struct slot fresh[MAX_SLOTS];
        memset(fresh, 0, sizeof(fresh));
        int ok = 1;
        for (int i = 0; i < nslots && ok; i++)
            ok = open_slot_into(m, &fresh[i], err, sizeof(err)) == 0;
        if (!ok) {
            log_error("SIGHUP: %s; keeping the running settings", err);
            for (int i = 0; i < nslots; i++)
                close_slot_fds(&fresh[i]);
            dp_settings_free(&m->s);
            m->s = old;
            return;
        }
        for (int i = 0; i < MAX_SLOTS; i++) {
            close_slot_fds(&m->slots[i]);
            if (i < nslots)
                move_fds(&m->slots[i], &fresh[i]);
        }
    } else {
        for (int i = m->nslots; i < nslots; i++)
            if (open_slot(m, i, err, sizeof(err)) < 0)
                log_error("SIGHUP: %s", err);
    }
    for (int i = nslots; i < m->nslots; i++)
        close_slot_fds(&m->slots[i]);
    m->nslots = nslots;
    m->generation++;
    /* Workers of slots that no longer exist retire now; the others when
     * their replacement serves. */
    for (struct worker *w = m->workers; w; w = w->next)
        if (w->slot >= nslots)
            retire(w);
    int source_changed = (old.standalone == NULL) != (m->s.standalone == NULL) ||
                         (old.standalone && strcmp(old.standalone, m->s.standalone) != 0);
    if (m->s.standalone && !source_changed)
        load_standalone(m, "SIGHUP");
    dp_settings_free(&old);
    for (int i = 0; i < nslots; i++)
        spawn_worker(m, i);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct master *m = t->data;
    for (struct worker *w = m->workers; w; w = w->next)
        if (!w->exited) {
            log_warn("worker %d (pid %d) still draining after the drain timeout; killing it",
                     w->slot, w->proc.pid);
            uv_process_kill(&w->proc, SIGKILL);
        }
}

static void on_stop_signal(uv_signal_t *sig, int signum)
{
    struct master *m = sig->data;
    if (m->stopping) {
        log_info("%s again: stopping now", strsignal(signum));
        on_drain_timeout(&m->drain_timer);
        return;
    }
    m->stopping = 1;
    log_info("received %s; draining workers (up to %.1f s)", strsignal(signum),
             m->s.drain_timeout_ms / 1000.0);
    for (int i = 0; i < MAX_SLOTS; i++)
        if (m->slots[i].timer_inited)
            uv_timer_stop(&m->slots[i].respawn);
    for (struct worker *w = m->workers; w; w = w->next)
        retire(w);
    uv_timer_start(&m->drain_timer, on_drain_timeout, m->s.drain_timeout_ms + 500, 0);
    if (!m->workers)
        master_finish(m);
}

/* New ticket keys; the previous ones still open tickets until the next turn. */
static void on_ticket_timer(uv_timer_t *t)
{
    struct master *m = t->data;
    int rc = tls_ticket_keys_rotate(m->tickets);
    if (rc < 0)
        log_warn("TLS session ticket keys not rotated: %s", strerror(-rc));
    else
        log_info("TLS session ticket keys rotated");
}

/* Everything is drained: close the remaining handles so the loop ends. */
static void master_finish(struct master *m)
{
    if (m->cc) {
        cfg_client_stop(m->cc);
        m->cc = NULL;
    }
    metrics_server_stop(m->ms);
    m->ms = NULL;
    uv_timer_stop(&m->health_timer);
    uv_close((uv_handle_t *)&m->health_timer, NULL);
    health_checker_stop(m->hc);
    m->hc = NULL;
    if (m->file_poll_on) {
        uv_close((uv_handle_t *)&m->file_poll, NULL);
        m->file_poll_on = 0;
    }
    if (uv_is_active((uv_handle_t *)&m->save_timer)) {
        uv_timer_stop(&m->save_timer);
        on_save_timer(&m->save_timer);
    }
    uv_close((uv_handle_t *)&m->save_timer, NULL);
    uv_close((uv_handle_t *)&m->drain_timer, NULL);
    uv_close((uv_handle_t *)&m->ticket_timer, NULL);
    uv_close((uv_handle_t *)&m->sig_term, NULL);
    uv_close((uv_handle_t *)&m->sig_int, NULL);
    uv_close((uv_handle_t *)&m->sig_hup, NULL);
    for (int i = 0; i < MAX_SLOTS; i++) {
        close_slot_fds(&m->slots[i]);
        if (m->slots[i].timer_inited)
            uv_close((uv_handle_t *)&m->slots[i].respawn, NULL);
    }
}

int master_main(int argc, char **argv)
{
    static struct master ms;
    struct master *m = &ms;
    char err[1024];
    m->argc = argc;
    m->argv = argv;
    int rc = dp_settings_load(&m->s, argc, argv, err, sizeof(err));
    if (rc == DP_SETTINGS_EXIT_OK) {
        dp_settings_free(&m->s);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "airgw-dataplane: %s\n", err);
        dp_settings_free(&m->s);
        return 2;
    }
    log_init("dataplane", m->s.log_level);
    signal(SIGPIPE, SIG_IGN);
    int exit_code = 1;
    cfg_state_init(&m->st);
    uv_loop_init(&m->loop);

    if ((rc = fs_mkdirs(m->s.state_dir, 0700)) < 0) {
        log_error("cannot create state dir %s: %s", m->s.state_dir, strerror(-rc));
        goto out;
    }
    snprintf(m->state_path, sizeof(m->state_path), "%s/config.json", m->s.state_dir);
    if (setup_cp_tls(m, err, sizeof(err)) < 0) {
        log_error("%s", err);
        goto out;
    }
    if (m->cp_tls)
        log_info("config stream: TLS, control planes verified with %s%s", m->s.cp_tls_ca,
                 m->s.cp_tls_cert ? ", with a client certificate" : "");
    if (!m->s.standalone) {
        rc = cfg_state_load(&m->st, m->state_path, err, sizeof(err));
        if (rc == 0)
            log_info("serving the last configuration from %s (revision %lld) until the control "
                     "plane answers",
                     m->state_path, (long long)m->st.revision);
        else if (rc != -ENOENT)
            log_warn("ignoring the saved configuration: %s", err);
    }

    m->nslots = m->s.workers > MAX_SLOTS ? MAX_SLOTS : m->s.workers;
    for (int i = 0; i < MAX_SLOTS; i++) {
        uv_timer_init(&m->loop, &m->slots[i].respawn);
        m->slots[i].respawn.data = m;
        m->slots[i].timer_inited = 1;
    }
    for (int i = 0; i < m->nslots; i++) {
        if (open_slot(m, i, err, sizeof(err)) < 0) {
            log_error("%s", err);
            for (int k = 0; k < MAX_SLOTS; k++)
                close_slot_fds(&m->slots[k]);
            goto out_handles;
        }
    }
    for (size_t k = 0; k < m->s.nhttp; k++) {
        char where[80];
        netaddr_format((struct sockaddr *)&m->s.http_listen[k], where, sizeof(where));
        log_info("http listening on %s", where);
    }
    for (size_t k = 0; k < m->s.nhttps; k++) {
        char where[80];
        netaddr_format((struct sockaddr *)&m->s.https_listen[k], where, sizeof(where));
        log_info("https listening on %s", where);
    }
    for (size_t k = 0; k < m->s.nstream; k++) {
        char where[80];
        netaddr_format((struct sockaddr *)&m->s.stream_listen[k], where, sizeof(where));
        log_info("stream%s listening on %s", m->s.stream_tls[k] ? " (tls)" : "", where);
    }
    uv_timer_init(&m->loop, &m->save_timer);
    m->save_timer.data = m;
    uv_timer_init(&m->loop, &m->drain_timer);
    m->drain_timer.data = m;
    uv_timer_init(&m->loop, &m->health_timer);
    m->health_timer.data = m;
    uv_signal_init(&m->loop, &m->sig_term);
    uv_signal_init(&m->loop, &m->sig_int);
    uv_signal_init(&m->loop, &m->sig_hup);
    m->sig_term.data = m->sig_int.data = m->sig_hup.data = m;
    uv_signal_start(&m->sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&m->sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&m->sig_hup, on_sighup, SIGHUP);
    if (!(m->metrics = metrics_create()))
        log_warn("metrics unavailable: cannot create shared memory: %s", strerror(errno));
    m->ms = metrics_server_start(&m->loop, (struct sockaddr *)&m->s.metrics_listen,
                                 render_metrics, m, err, sizeof(err));
    if (!m->ms)
        log_error("%s (metrics are not served)", err);
    if (!(m->health = health_table_create()))
        log_warn("health checks unavailable: cannot create shared memory: %s", strerror(errno));
    m->hc = health_checker_start(&m->loop, m->health);
    /* Rows for every slot a reload may use; untouched pages cost nothing. */
    if (!(m->limits = shm_limits_create(MAX_SLOTS)))
        log_warn("node-wide limits unavailable (each worker counts alone): cannot create shared "
                 "memory: %s", strerror(errno));
    /* One set of ticket keys for every worker, so a client resumes on any. */
    if (!(m->tickets = tls_ticket_keys_create()))
        log_warn("TLS session tickets: cannot create shared keys (%s); each worker uses its own",
                 strerror(errno));
    uv_timer_init(&m->loop, &m->ticket_timer);
    m->ticket_timer.data = m;
    if (m->tickets)
        uv_timer_start(&m->ticket_timer, on_ticket_timer, TLS_TICKET_ROTATE_S * 1000ull,
                       TLS_TICKET_ROTATE_S * 1000ull);
    start_source(m);
    health_checker_update(m->hc, m->st.res);
    for (int i = 0; i < m->nslots; i++)
        spawn_worker(m, i);
    log_info("airgw-dataplane %s master ready (%d workers, node %s)", AIRGW_VERSION, m->nslots,
             m->s.node_id);
    exit_code = 0;
    uv_run(&m->loop, UV_RUN_DEFAULT);
    goto out;

out_handles:
    for (int i = 0; i < MAX_SLOTS; i++)
        uv_close((uv_handle_t *)&m->slots[i].respawn, NULL);
    uv_run(&m->loop, UV_RUN_DEFAULT);
out:
    if (uv_loop_close(&m->loop) != 0)
        log_warn("loop closed with handles still open");
    cfg_state_free(&m->st);
    tls_ctx_store_unref(m->cp_tls_store);
    free(m->cp_tls_name);
    metrics_free(m->metrics);
    health_table_free(m->health);
    shm_limits_free(m->limits);
    tls_ticket_keys_free(m->tickets);
    dp_settings_free(&m->s);
    config_cleanup();
    jsonschema_cleanup();
    if (exit_code == 0)
        log_info("stopped");
    return exit_code;
}
