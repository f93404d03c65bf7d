/*
 * health: see health.h.
 */
#include "health.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "balancer.h"
#include "log.h"
#include "snapshot.h"

#define HEALTH_MAGIC 0x6865616cu /* "heal" */
#define HEALTH_SLOTS 8192
#define KEY_MAX 232

enum { SLOT_EMPTY = 0, SLOT_CLAIMED, SLOT_READY };

struct hentry {
    _Atomic uint32_t state;   /* SLOT_* */
    _Atomic uint32_t down;    /* the verdict */
    _Atomic uint32_t p_succ;  /* passive: successes in a row while down */
    _Atomic uint32_t p_tcp;   /* passive: connect failures in a row */
    _Atomic uint32_t p_to;    /* passive: timeouts in a row */
    _Atomic uint32_t p_http;  /* passive: bad statuses in a row */
    char key[KEY_MAX];        /* "upstream|host:port" */
};

struct hshm {
    uint32_t magic;
    _Atomic uint64_t gen;     /* bumped on every verdict change */
    struct hentry e[HEALTH_SLOTS];
};

struct health_table {
    int fd;
    struct hshm *shm;
};

static struct health_table *map(int fd, int init)
{
    struct health_table *ht = calloc(1, sizeof(*ht));
    if (!ht)
        return NULL;
    void *p = mmap(NULL, sizeof(struct hshm), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        free(ht);
        return NULL;
    }
    ht->fd = fd;
    ht->shm = p;
    if (init)
        ht->shm->magic = HEALTH_MAGIC;
    else if (ht->shm->magic != HEALTH_MAGIC) {
        munmap(p, sizeof(struct hshm));
        free(ht);
        return NULL;
    }
    return ht;
}

struct health_table *health_table_create(void)
{
    int fd = memfd_create("airgw-health", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, sizeof(struct hshm)) < 0) {
        close(fd);
        return NULL;
    }
    struct health_table *ht = map(fd, 1);
    if (!ht)
        close(fd);
    return ht;
}

struct health_table *health_table_attach(int fd)
{
    return map(fd, 0);
}

int health_table_fd(const struct health_table *ht)
{
    return ht->fd;
}

void health_table_free(struct health_table *ht)
{
    if (!ht)
        return;
    munmap(ht->shm, sizeof(struct hshm));
    close(ht->fd);
    free(ht);
}

uint64_t health_generation(const struct health_table *ht)
{
    return ht ? atomic_load_explicit(&ht->shm->gen, memory_order_acquire) : 0;
}

static uint64_t hash_key(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    for (; *k; k++)
        h = (h ^ (unsigned char)*k) * 1099511628211ull;
    return h;
}

/* Finds (and with create, claims) the entry for key. */
static struct hentry *find(struct hshm *shm, const char *key, int create)
{
    uint64_t h = hash_key(key);
    for (uint32_t probe = 0; probe < HEALTH_SLOTS; probe++) {
        struct hentry *e = &shm->e[(h + probe) % HEALTH_SLOTS];
        uint32_t st = atomic_load_explicit(&e->state, memory_order_acquire);
        if (st == SLOT_EMPTY) {
            if (!create)
                return NULL;
            uint32_t expect = SLOT_EMPTY;
            if (atomic_compare_exchange_strong(&e->state, &expect, SLOT_CLAIMED)) {
                snprintf(e->key, sizeof(e->key), "%s", key);
                atomic_store_explicit(&e->state, SLOT_READY, memory_order_release);
                return e;
            }
            st = expect;
        }
        while (st == SLOT_CLAIMED)
            st = atomic_load_explicit(&e->state, memory_order_acquire);
        if (strncmp(e->key, key, KEY_MAX - 1) == 0)
            return e;
    }
    return NULL;
}

static void make_key(char *buf, size_t len, const char *upstream_id, const char *addr)
{
    snprintf(buf, len, "%s|%s", upstream_id, addr);
}

bool health_is_down(const struct health_table *ht, const char *upstream_id, const char *addr)
{
    if (!ht)
        return false;
    char key[KEY_MAX];
    make_key(key, sizeof(key), upstream_id, addr);
    struct hentry *e = find(ht->shm, key, 0);
    return e && atomic_load_explicit(&e->down, memory_order_relaxed);
}

static void set_down(struct health_table *ht, struct hentry *e, bool down, const char *why)
{
    uint32_t want = down ? 1 : 0;
    if (atomic_exchange(&e->down, want) != want) {
        atomic_fetch_add_explicit(&ht->shm->gen, 1, memory_order_release);
        if (down)
            log_warn("health: %s is down (%s)", e->key, why);
        else
            log_info("health: %s is up again (%s)", e->key, why);
    }
}

static long num(const json_t *o, const char *sect, const char *name, long dflt)
{
    const json_t *v = json_object_get(json_object_get(o, sect), name);
    return json_is_integer(v) ? (long)json_integer_value(v) : dflt;
}

void health_passive_report(struct health_table *ht, const char *upstream_id, const char *addr,
                           const json_t *checks, enum health_outcome outcome)
{
    const json_t *passive = json_object_get(checks, "passive");
    if (!ht || !json_is_object(passive))
        return;
    char key[KEY_MAX];
    make_key(key, sizeof(key), upstream_id, addr);
    struct hentry *e = find(ht->shm, key, 1);
    if (!e)
        return;
    if (outcome == HEALTH_OK) {
        atomic_store(&e->p_tcp, 0);
        atomic_store(&e->p_to, 0);
        atomic_store(&e->p_http, 0);
        long need = num(passive, "healthy", "successes", 5);
        if (atomic_load(&e->down) && need > 0 &&
            atomic_fetch_add(&e->p_succ, 1) + 1 >= (uint32_t)need) {
            atomic_store(&e->p_succ, 0);
            set_down(ht, e, false, "passive: successes");
        }
        return;
    }
    atomic_store(&e->p_succ, 0);
    _Atomic uint32_t *ctr = outcome == HEALTH_TCP_FAILURE ? &e->p_tcp
                            : outcome == HEALTH_TIMEOUT   ? &e->p_to
                                                          : &e->p_http;
    const char *name = outcome == HEALTH_TCP_FAILURE ? "tcp_failures"
                       : outcome == HEALTH_TIMEOUT   ? "timeouts"
                                                     : "http_failures";
    long dflt = outcome == HEALTH_TCP_FAILURE ? 2 : outcome == HEALTH_TIMEOUT ? 7 : 5;
    long limit = num(passive, "unhealthy", name, dflt);
    if (limit > 0 && atomic_fetch_add(ctr, 1) + 1 >= (uint32_t)limit) {
        atomic_store(ctr, 0);
        char why[64];
        snprintf(why, sizeof(why), "passive: %s", name);
        set_down(ht, e, true, why);
    }
}

/* ---- active checker (master) ---- */

enum probe_type { PROBE_TCP, PROBE_HTTP };

struct target;

struct probe {
    uv_tcp_t tcp;           /* tcp.data = probe */
    uv_connect_t creq;
    uv_write_t wreq;
    struct target *t;       /* NULL once the target let go of it */
    char req[1024];         /* the HTTP request */
    char resp[256];         /* the start of the response */
    size_t rlen;
    int finished;
};

struct target {
    struct health_checker *hc;
    struct target *next;
    char key[KEY_MAX];      /* "upstream|host:port" */
    char *sig;              /* the settings it was built from, to detect changes */
    struct sockaddr_storage sa; /* node address (literal IPs only) */
    enum probe_type type;
    char path[512];
    char host[300];         /* Host header */
    uint32_t timeout_ms, healthy_ms, unhealthy_ms;
    long successes, http_failures, tcp_failures, timeouts;
    json_t *ok_statuses, *bad_statuses; /* owned */
    long n_succ, n_http, n_tcp, n_to;   /* in a row */
    uv_timer_t timer;       /* next probe; timer.data = target */
    uv_timer_t deadline;    /* probe timeout; deadline.data = target */
    struct probe *probe;    /* in flight, or NULL */
    int removing;
    int open_handles;
};

struct health_checker {
    uv_loop_t *loop;
    struct health_table *ht;
    struct target *targets;
    int stopping;
};

static void schedule(struct target *t);

static bool status_in(const json_t *list, int status)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        if (json_is_integer(v) && json_integer_value(v) == status)
            return true;
    }
    return false;
}

static void verdict(struct target *t, enum health_outcome o, int status)
{
    struct hentry *e = find(t->hc->ht->shm, t->key, 1);
    if (!e)
        return;
    bool down = atomic_load(&e->down);
    char why[96];
    if (o == HEALTH_OK) {
        t->n_http = t->n_tcp = t->n_to = 0;
        if (down && ++t->n_succ >= t->successes) {
            t->n_succ = 0;
            snprintf(why, sizeof(why), "active: %ld successes", t->successes);
            set_down(t->hc->ht, e, false, why);
        }
        return;
    }
    t->n_succ = 0;
    long *ctr = o == HEALTH_TCP_FAILURE ? &t->n_tcp : o == HEALTH_TIMEOUT ? &t->n_to : &t->n_http;
    long limit = o == HEALTH_TCP_FAILURE ? t->tcp_failures
                 : o == HEALTH_TIMEOUT   ? t->timeouts
                                         : t->http_failures;
    if (!down && ++*ctr >= limit) {
        *ctr = 0;
        if (o == HEALTH_HTTP_FAILURE)
            snprintf(why, sizeof(why), "active: status %d, %ld times", status, limit);
        else
            snprintf(why, sizeof(why), "active: %ld %s", limit,
                     o == HEALTH_TIMEOUT ? "timeouts" : "connect failures");
        set_down(t->hc->ht, e, true, why);
    }
}

static void on_probe_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Ends the probe in flight with an outcome (once). */
static void probe_end(struct probe *p, enum health_outcome o, int status)
{
    if (p->finished)
        return;
    p->finished = 1;
    struct target *t = p->t;
    if (t) {
        t->probe = NULL;
        uv_timer_stop(&t->deadline);
        if (o != HEALTH_HTTP_FAILURE || status >= 0)
            verdict(t, o, status);
        schedule(t);
    }
    uv_close((uv_handle_t *)&p->tcp, on_probe_closed);
}

static void on_probe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct probe *p = h->data;
    (void)suggested;
    *buf = uv_buf_init(p->resp + p->rlen, (unsigned)(sizeof(p->resp) - 1 - p->rlen));
}

static void on_probe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct probe *p = s->data;
    (void)buf;
    if (nread < 0) {
        probe_end(p, HEALTH_TCP_FAILURE, 0);
        return;
    }
    p->rlen += (size_t)nread;
    p->resp[p->rlen] = '\0';
    if (!strstr(p->resp, "\r\n") && p->rlen < sizeof(p->resp) - 1)
        return;
    int status = 0;
    if (sscanf(p->resp, "HTTP/%*d.%*d %d", &status) != 1) {
        probe_end(p, HEALTH_HTTP_FAILURE, 0);
        return;
    }
    struct target *t = p->t;
    if (!t)
        probe_end(p, HEALTH_OK, status);
    else if (status_in(t->ok_statuses, status))
        probe_end(p, HEALTH_OK, status);
    else if (status_in(t->bad_statuses, status))
        probe_end(p, HEALTH_HTTP_FAILURE, status);
    else
        probe_end(p, HEALTH_HTTP_FAILURE, -1); /* neither list: no verdict */
}

static void on_probe_written(uv_write_t *req, int status)
{
    struct probe *p = req->data;
    if (status < 0)
        probe_end(p, HEALTH_TCP_FAILURE, 0);
}

static void on_probe_connect(uv_connect_t *req, int status)
{
    struct probe *p = req->data;
    if (p->finished)
        return;
    if (status < 0) {
        probe_end(p, HEALTH_TCP_FAILURE, 0);
        return;
    }
    struct target *t = p->t;
    if (!t || t->type == PROBE_TCP) {
        probe_end(p, HEALTH_OK, 0);
        return;
    }
    int n = snprintf(p->req, sizeof(p->req),
                     "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: airgw-healthcheck\r\n"
                     "Connection: close\r\n\r\n",
                     t->path, t->host);
    uv_buf_t b = uv_buf_init(p->req, (unsigned)n);
    p->wreq.data = p;
    if (uv_write(&p->wreq, (uv_stream_t *)&p->tcp, &b, 1, on_probe_written) < 0 ||
        uv_read_start((uv_stream_t *)&p->tcp, on_probe_alloc, on_probe_read) < 0)
        probe_end(p, HEALTH_TCP_FAILURE, 0);
}

static void on_deadline(uv_timer_t *timer)
{
    struct target *t = timer->data;
    if (t->probe)
        probe_end(t->probe, HEALTH_TIMEOUT, 0);
}

static void on_probe_timer(uv_timer_t *timer)
{
    struct target *t = timer->data;
    if (t->probe || t->removing)
        return;
    struct probe *p = calloc(1, sizeof(*p));
    if (!p) {
        schedule(t);
        return;
    }
    p->t = t;
    uv_tcp_init(t->hc->loop, &p->tcp);
    p->tcp.data = p;
    p->creq.data = p;
    t->probe = p;
    uv_timer_start(&t->deadline, on_deadline, t->timeout_ms, 0);
    int rc = uv_tcp_connect(&p->creq, &p->tcp, (struct sockaddr *)&t->sa, on_probe_connect);
    if (rc < 0)
        probe_end(p, HEALTH_TCP_FAILURE, 0);
}

static void schedule(struct target *t)
{
    if (t->removing || t->hc->stopping)
        return;
    struct hentry *e = find(t->hc->ht->shm, t->key, 0);
    bool down = e && atomic_load(&e->down);
    uv_timer_start(&t->timer, on_probe_timer, down ? t->unhealthy_ms : t->healthy_ms, 0);
}

static void on_target_handle_closed(uv_handle_t *h)
{
    struct target *t = h->data;
    if (--t->open_handles > 0)
        return;
    free(t->sig);
    json_decref(t->ok_statuses);
    json_decref(t->bad_statuses);
    free(t);
}

static void target_remove(struct target *t)
{
    t->removing = 1;
    if (t->probe) {
        t->probe->t = NULL;
        struct probe *p = t->probe;
        t->probe = NULL;
        if (!p->finished) {
            p->finished = 1;
            uv_close((uv_handle_t *)&p->tcp, on_probe_closed);
        }
    }
    /* A node no longer checked must not stay marked down. */
    struct hentry *e = find(t->hc->ht->shm, t->key, 0);
    if (e && !t->hc->stopping)
        set_down(t->hc->ht, e, false, "no longer checked");
    uv_close((uv_handle_t *)&t->timer, on_target_handle_closed);
    uv_close((uv_handle_t *)&t->deadline, on_target_handle_closed);
}

static json_t *statuses(const json_t *active, const char *sect, const int *dflt, size_t n)
{
    const json_t *v = json_object_get(json_object_get(active, sect), "http_statuses");
    if (json_is_array(v))
        return json_deep_copy(v);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(dflt[i]));
    return a;
}

static struct target *target_new(struct health_checker *hc, const char *key, const char *sig,
                                 const struct balancer_node *node, const json_t *active)
{
    struct target *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->hc = hc;
    snprintf(t->key, sizeof(t->key), "%s", key);
    t->sig = strdup(sig);
    const char *type = json_string_value(json_object_get(active, "type"));
    t->type = type && strcmp(type, "tcp") == 0 ? PROBE_TCP : PROBE_HTTP;
    if (type && strcmp(type, "https") == 0)
        log_warn("health: %s: https checks are done as TCP connects until TLS arrives", key);
    if (type && strcmp(type, "https") == 0)
        t->type = PROBE_TCP;
    const char *path = json_string_value(json_object_get(active, "http_path"));
    snprintf(t->path, sizeof(t->path), "%s", path && path[0] == '/' ? path : "/");
    const char *host = json_string_value(json_object_get(active, "host"));
    snprintf(t->host, sizeof(t->host), "%s", host ? host : node->host);
    json_t *port = json_object_get(active, "port");
    uint16_t p = json_is_integer(port) ? (uint16_t)json_integer_value(port) : node->port;
    memset(&t->sa, 0, sizeof(t->sa));
    if (node->family == AF_INET6)
        uv_ip6_addr(node->host, p, (struct sockaddr_in6 *)&t->sa);
    else
        uv_ip4_addr(node->host, p, (struct sockaddr_in *)&t->sa);
    json_t *to = json_object_get(active, "timeout");
    double tsec = json_is_number(to) ? json_number_value(to) : 1.0;
    t->timeout_ms = tsec <= 0 ? 1000 : (uint32_t)(tsec * 1000);
    t->healthy_ms = (uint32_t)num(active, "healthy", "interval", 1) * 1000;
    t->unhealthy_ms = (uint32_t)num(active, "unhealthy", "interval", 1) * 1000;
    if (t->healthy_ms == 0)
        t->healthy_ms = 1000;
    if (t->unhealthy_ms == 0)
        t->unhealthy_ms = 1000;
    t->successes = num(active, "healthy", "successes", 2);
    t->http_failures = num(active, "unhealthy", "http_failures", 5);
    t->tcp_failures = num(active, "unhealthy", "tcp_failures", 2);
    t->timeouts = num(active, "unhealthy", "timeouts", 3);
    static const int ok[] = {200, 302};
    static const int bad[] = {429, 404, 500, 501, 502, 503, 504, 505};
    t->ok_statuses = statuses(active, "healthy", ok, 2);
    t->bad_statuses = statuses(active, "unhealthy", bad, 8);
    uv_timer_init(hc->loop, &t->timer);
    uv_timer_init(hc->loop, &t->deadline);
    t->timer.data = t->deadline.data = t;
    t->open_handles = 2;
    return t;
}

struct health_checker *health_checker_start(uv_loop_t *loop, struct health_table *ht)
{
    if (!ht)
        return NULL;
    struct health_checker *hc = calloc(1, sizeof(*hc));
    if (!hc)
        return NULL;
    hc->loop = loop;
    hc->ht = ht;
    return hc;
}

/* Whether any upstream, shared or inline in a route, service or stream
 * route, has active checks: without any (and no target yet) an update has
 * nothing to do and need not compile the configuration. */
static bool any_active_checks(json_t *resources)
{
    const char *k;
    json_t *v;
    json_object_foreach(resources, k, v) {
        const json_t *up = NULL;
        if (strncmp(k, "/apisix/upstreams/", 18) == 0)
            up = v;
        else if (strncmp(k, "/apisix/routes/", 15) == 0 ||
                 strncmp(k, "/apisix/services/", 17) == 0 ||
                 strncmp(k, "/apisix/stream_routes/", 22) == 0)
            up = json_object_get(v, "upstream");
        if (up && json_is_object(json_object_get(json_object_get(up, "checks"), "active")))
            return true;
    }
    return false;
}

/* The current targets by signature, to find an unchanged one in constant
 * time (open addressing; a slot's target is taken at most once). */
struct target_index {
    struct target **slot;
    bool *taken;
    size_t mask;
};

static int target_index_build(struct target_index *ix, struct target *list)
{
    size_t n = 0, cap = 8;
    for (struct target *t = list; t; t = t->next)
        n++;
    while (cap < 2 * n)
        cap *= 2;
    ix->slot = calloc(cap, sizeof(*ix->slot));
    ix->taken = calloc(cap, sizeof(*ix->taken));
    ix->mask = cap - 1;
    if (!ix->slot || !ix->taken) {
        free(ix->slot);
        free(ix->taken);
        return -1;
    }
    for (struct target *t = list; t; t = t->next) {
        size_t i = (size_t)hash_key(t->sig) & ix->mask;
        while (ix->slot[i])
            i = (i + 1) & ix->mask;
        ix->slot[i] = t;
    }
    return 0;
}

/* The first target not yet taken with this signature, taken; or NULL. */
static struct target *target_index_take(struct target_index *ix, const char *sig)
{
    for (size_t i = (size_t)hash_key(sig) & ix->mask; ix->slot[i]; i = (i + 1) & ix->mask) {
        if (!ix->taken[i] && strcmp(ix->slot[i]->sig, sig) == 0) {
            ix->taken[i] = true;
            return ix->slot[i];
        }
    }
    return NULL;
}

void health_checker_update(struct health_checker *hc, json_t *resources)
{
    if (!hc || hc->stopping)
        return;
    if (!hc->targets && !any_active_checks(resources))
        return;
    struct target_index ix;
    if (target_index_build(&ix, hc->targets) < 0)
        return;
    /* The snapshot compiler names upstreams the way workers will see them. */
    struct snapshot *s = snapshot_build(resources, 0);
    if (!s) {
        free(ix.slot);
        free(ix.taken);
        return;
    }
    struct target *fresh = NULL;
    int started = 0;
    for (size_t u = 0; u < s->nupstreams; u++) {
        const struct upstream_rt *up = s->upstreams[u];
        const json_t *active = json_object_get(json_object_get(up->conf, "checks"), "active");
        if (!json_is_object(active))
            continue;
        char *asig = json_dumps(active, JSON_COMPACT | JSON_SORT_KEYS);
        for (int i = 0; i < balancer_count(up->bal); i++) {
            const struct balancer_node *node = balancer_node(up->bal, i);
            char key[KEY_MAX], sig[4096];
            make_key(key, sizeof(key), up->id, node->addr);
            snprintf(sig, sizeof(sig), "%s|%s", key, asig ? asig : "");
            if (node->family == AF_UNSPEC) {
                log_warn("health: %s: host names are not probed yet", key);
                continue;
            }
            /* Keep an unchanged target (its counters and timer). */
            struct target *t = target_index_take(&ix, sig);
            if (!t) {
                t = target_new(hc, key, sig, node, active);
                if (!t)
                    continue;
                uv_timer_start(&t->timer, on_probe_timer, 0, 0);
                started++;
            }
            t->next = fresh;
            fresh = t;
        }
        free(asig);
    }
    snapshot_unref(s);
    /* What was not taken from the old list is no longer configured. */
    for (size_t i = 0; i <= ix.mask; i++)
        if (ix.slot[i] && !ix.taken[i])
            target_remove(ix.slot[i]);
    free(ix.slot);
    free(ix.taken);
    hc->targets = fresh;
    if (started)
        log_info("health: checking %d new node(s)", started);
}

void health_checker_stop(struct health_checker *hc)
{
    if (!hc)
        return;
    hc->stopping = 1;
    for (struct target *t = hc->targets, *next; t; t = next) {
        next = t->next;
        target_remove(t);
    }
    hc->targets = NULL;
    free(hc); /* targets no longer point back to hc once their handles close */
}
