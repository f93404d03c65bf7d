/*
 * metrics: see metrics.h.
 */
#include "metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define METRICS_MAGIC 0x61697267u /* "airg" */
#define ROUTE_MAX 80
#define URI_MAX 128
#define HOST_MAX 128
#define NODE_MAX 64
#define CONSUMER_MAX 128 /* consumer names are up to 256: longer ones share a series */

static const uint32_t bucket_ms[METRICS_BUCKETS] = {1,   2,    5,    10,   20,    50,   100, 200,
                                                     500, 1000, 2000, 5000, 10000, 30000, 60000};

enum { SERIES_EMPTY = 0, SERIES_CLAIMED, SERIES_READY };

struct series {
    _Atomic uint32_t state;          /* SERIES_* */
    uint16_t status;                 /* HTTP status */
    char route[ROUTE_MAX];           /* route id, "" for no route / overflow */
    char uri[URI_MAX];               /* matched_uri */
    char host[HOST_MAX];             /* matched_host */
    char node[NODE_MAX];             /* upstream node host */
    char consumer[CONSUMER_MAX];     /* the request's consumer, or "" */
    _Atomic uint64_t count;          /* requests */
    _Atomic uint64_t bytes_in;       /* bytes from clients */
    _Atomic uint64_t bytes_out;      /* bytes to clients */
    _Atomic uint64_t lat_sum_us;     /* request latency sum */
    _Atomic uint64_t up_sum_us;      /* upstream latency sum */
    _Atomic uint64_t up_count;       /* requests that reached an upstream */
    _Atomic uint64_t lat[METRICS_BUCKETS]; /* request latency buckets (not cumulative) */
    _Atomic uint64_t up[METRICS_BUCKETS];  /* upstream latency buckets */
};

struct worker_gauges {
    _Atomic uint64_t active;   /* client connections open */
    _Atomic uint64_t accepted; /* accepted so far (this worker process) */
    _Atomic uint64_t handled;  /* handled so far */
};

struct shm {
    uint32_t magic;
    uint32_t nseries;
    _Atomic uint64_t overflow; /* observations that found the table full */
    struct worker_gauges workers[METRICS_MAX_WORKERS];
    struct series series[METRICS_SERIES];
};

struct metrics {
    int fd;         /* memfd */
    struct shm *shm;/* mapping */
};

static struct metrics *map(int fd, int init)
{
    struct metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    void *p = mmap(NULL, sizeof(struct shm), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        free(m);
        return NULL;
    }
    m->fd = fd;
    m->shm = p;
    if (init) {
        m->shm->magic = METRICS_MAGIC;
        m->shm->nseries = METRICS_SERIES;
    } else if (m->shm->magic != METRICS_MAGIC) {
        munmap(p, sizeof(struct shm));
        free(m);
        return NULL;
    }
    return m;
}

struct metrics *metrics_create(void)
{
    int fd = memfd_create("airgw-metrics", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, sizeof(struct shm)) < 0) {
        close(fd);
        return NULL;
    }
    struct metrics *m = map(fd, 1);
    if (!m)
        close(fd);
    return m;
}

struct metrics *metrics_attach(int fd)
{
    return map(fd, 0);
}

int metrics_fd(const struct metrics *m)
{
    return m->fd;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    munmap(m->shm, sizeof(struct shm));
    close(m->fd);
    free(m);
}

void metrics_worker_conns(struct metrics *m, int worker, uint64_t active, uint64_t accepted,
                          uint64_t handled)
{
    if (!m || worker < 0 || worker >= METRICS_MAX_WORKERS)
        return;
    struct worker_gauges *g = &m->shm->workers[worker];
    atomic_store_explicit(&g->active, active, memory_order_relaxed);
    atomic_store_explicit(&g->accepted, accepted, memory_order_relaxed);
    atomic_store_explicit(&g->handled, handled, memory_order_relaxed);
}

void metrics_worker_gone(struct metrics *m, int worker)
{
    if (m && worker >= 0 && worker < METRICS_MAX_WORKERS)
        atomic_store(&m->shm->workers[worker].active, 0);
}

static const char *nz(const char *s)
{
    return s ? s : "";
}

static uint64_t hash(const struct metrics_labels *l, int status)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)status;
    const char *parts[5] = {nz(l->route), nz(l->matched_uri), nz(l->matched_host), nz(l->node),
                            nz(l->consumer)};
    for (int i = 0; i < 5; i++) {
        for (const char *s = parts[i]; *s; s++)
            h = (h ^ (unsigned char)*s) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    return h;
}

/* Labels are stored truncated; comparing the truncated forms keeps one
 * series per truncated key. */
static int same(const struct series *s, const struct metrics_labels *l, int status)
{
    return s->status == status && strncmp(s->route, nz(l->route), ROUTE_MAX - 1) == 0 &&
           strncmp(s->uri, nz(l->matched_uri), URI_MAX - 1) == 0 &&
           strncmp(s->host, nz(l->matched_host), HOST_MAX - 1) == 0 &&
           strncmp(s->node, nz(l->node), NODE_MAX - 1) == 0 &&
           strncmp(s->consumer, nz(l->consumer), CONSUMER_MAX - 1) == 0;
}

/* Finds or claims the series of (labels, status). NULL when full. */
static struct series *find(struct shm *shm, const struct metrics_labels *l, int status)
{
    uint64_t h = hash(l, status);
    for (uint32_t probe = 0; probe < METRICS_SERIES; probe++) {
        struct series *s = &shm->series[(h + probe) % METRICS_SERIES];
        uint32_t st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (st == SERIES_EMPTY) {
            uint32_t expect = SERIES_EMPTY;
            if (atomic_compare_exchange_strong(&s->state, &expect, SERIES_CLAIMED)) {
                s->status = (uint16_t)status;
                snprintf(s->route, sizeof(s->route), "%s", nz(l->route));
                snprintf(s->uri, sizeof(s->uri), "%s", nz(l->matched_uri));
                snprintf(s->host, sizeof(s->host), "%s", nz(l->matched_host));
                snprintf(s->node, sizeof(s->node), "%s", nz(l->node));
                snprintf(s->consumer, sizeof(s->consumer), "%s", nz(l->consumer));
                atomic_store_explicit(&s->state, SERIES_READY, memory_order_release);
                return s;
            }
            st = expect;
        }
        /* Another writer is filling it in: wait for the key (a few stores). */
        while (st == SERIES_CLAIMED)
            st = atomic_load_explicit(&s->state, memory_order_acquire);
        if (same(s, l, status))
            return s;
    }
    return NULL;
}

static int bucket_of(uint64_t us)
{
    for (int i = 0; i < METRICS_BUCKETS; i++)
        if (us <= (uint64_t)bucket_ms[i] * 1000)
            return i;
    return -1; /* only +Inf */
}

void metrics_observe(struct metrics *m, const struct metrics_labels *l, int status,
                     uint64_t latency_us, uint64_t upstream_latency_us, uint64_t bytes_in,
                     uint64_t bytes_out)
{
    if (!m)
        return;
    struct series *s = find(m->shm, l, status);
    if (!s) {
        static const struct metrics_labels none = {0};
        atomic_fetch_add_explicit(&m->shm->overflow, 1, memory_order_relaxed);
        s = find(m->shm, &none, status);
        if (!s)
            return;
    }
    atomic_fetch_add_explicit(&s->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->bytes_in, bytes_in, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->bytes_out, bytes_out, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->lat_sum_us, latency_us, memory_order_relaxed);
    int b = bucket_of(latency_us);
    if (b >= 0)
        atomic_fetch_add_explicit(&s->lat[b], 1, memory_order_relaxed);
    if (upstream_latency_us > 0) {
        atomic_fetch_add_explicit(&s->up_count, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->up_sum_us, upstream_latency_us, memory_order_relaxed);
        b = bucket_of(upstream_latency_us);
        if (b >= 0)
            atomic_fetch_add_explicit(&s->up[b], 1, memory_order_relaxed);
    }
}

/* A growing text buffer. */
struct out {
    char *buf;
    size_t len, cap;
    int oom;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap * 2 + (size_t)n;
        char *b = realloc(o->buf, cap);
        if (!b) {
            o->oom = 1;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
}

/* Route ids are [a-zA-Z0-9-_.] and node hosts are names or addresses:
 * nothing to escape there. Uri and host patterns may hold '"' or '\\'. */
static const char *escape(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (; *in && o + 2 < len; in++) {
        if (*in == '"' || *in == '\\')
            out[o++] = '\\';
        out[o++] = *in == '\n' ? ' ' : *in;
    }
    out[o] = '\0';
    return out;
}

static void histogram(struct out *o, const char *type, const struct series *s,
                      const _Atomic uint64_t *b, uint64_t count, uint64_t sum_us)
{
    /* APISIX's labels (type, route, service, consumer, node) and airgw's
     * code; consumer and node keep series of one route apart. */
    char lb[ROUTE_MAX + 2 * CONSUMER_MAX + NODE_MAX + 96], cons[2 * CONSUMER_MAX];
    snprintf(lb, sizeof(lb),
             "type=\"%s\",route=\"%s\",service=\"\",consumer=\"%s\",node=\"%s\","
             "code=\"%u\"",
             type, s->route, escape(s->consumer, cons, sizeof(cons)), s->node, s->status);
    uint64_t cum = 0;
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        cum += atomic_load_explicit(&b[i], memory_order_relaxed);
        put(o, "apisix_http_latency_bucket{%s,le=\"%u\"} %llu\n", lb, bucket_ms[i],
            (unsigned long long)cum);
    }
    put(o, "apisix_http_latency_bucket{%s,le=\"+Inf\"} %llu\n", lb, (unsigned long long)count);
    put(o, "apisix_http_latency_count{%s} %llu\n", lb, (unsigned long long)count);
    put(o, "apisix_http_latency_sum{%s} %.3f\n", lb, (double)sum_us / 1000.0);
}

char *metrics_render(const struct metrics *m, const char *node_id, int64_t config_revision,
                     size_t *len)
{
    struct out o = {.cap = 16384};
    o.buf = malloc(o.cap);
    if (!o.buf)
        return NULL;
    o.buf[0] = '\0';
    const struct shm *shm = m->shm;
    uint64_t active = 0, accepted = 0, handled = 0, total = 0;
    for (int i = 0; i < METRICS_MAX_WORKERS; i++) {
        active += atomic_load_explicit(&shm->workers[i].active, memory_order_relaxed);
        accepted += atomic_load_explicit(&shm->workers[i].accepted, memory_order_relaxed);
        handled += atomic_load_explicit(&shm->workers[i].handled, memory_order_relaxed);
    }
    for (uint32_t i = 0; i < METRICS_SERIES; i++)
        if (atomic_load_explicit(&shm->series[i].state, memory_order_acquire) == SERIES_READY)
            total += atomic_load_explicit(&shm->series[i].count, memory_order_relaxed);

    put(&o, "# HELP apisix_node_info Info of the airgw data plane node\n"
            "# TYPE apisix_node_info gauge\n"
            "apisix_node_info{hostname=\"%s\",version=\"%s\"} 1\n",
        node_id, AIRGW_VERSION);
    put(&o, "# HELP apisix_config_revision Configuration revision this node serves\n"
            "# TYPE apisix_config_revision gauge\napisix_config_revision %lld\n",
        (long long)config_revision);
    put(&o, "# HELP apisix_nginx_http_current_connections Number of HTTP connections\n"
            "# TYPE apisix_nginx_http_current_connections gauge\n"
            "apisix_nginx_http_current_connections{state=\"active\"} %llu\n"
            "apisix_nginx_http_current_connections{state=\"accepted\"} %llu\n"
            "apisix_nginx_http_current_connections{state=\"handled\"} %llu\n",
        (unsigned long long)active, (unsigned long long)accepted, (unsigned long long)handled);
    put(&o, "# HELP apisix_http_requests_total The total number of client requests\n"
            "# TYPE apisix_http_requests_total gauge\napisix_http_requests_total %llu\n",
        (unsigned long long)total);

    put(&o, "# HELP apisix_http_status HTTP status codes per route\n"
            "# TYPE apisix_http_status counter\n");
    for (uint32_t i = 0; i < METRICS_SERIES; i++) {
        const struct series *s = &shm->series[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != SERIES_READY)
            continue;
        char uri[2 * URI_MAX], host[2 * HOST_MAX], cons[2 * CONSUMER_MAX];
        put(&o, "apisix_http_status{code=\"%u\",route=\"%s\",matched_uri=\"%s\",matched_host=\"%s\","
                "service=\"\",consumer=\"%s\",node=\"%s\"} %llu\n",
            s->status, s->route, escape(s->uri, uri, sizeof(uri)),
            escape(s->host, host, sizeof(host)), escape(s->consumer, cons, sizeof(cons)), s->node,
            (unsigned long long)atomic_load_explicit(&s->count, memory_order_relaxed));
    }
    put(&o, "# HELP apisix_bandwidth Total bandwidth in bytes per route\n"
            "# TYPE apisix_bandwidth counter\n");
    for (uint32_t i = 0; i < METRICS_SERIES; i++) {
        const struct series *s = &shm->series[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != SERIES_READY)
            continue;
        char cons[2 * CONSUMER_MAX];
        escape(s->consumer, cons, sizeof(cons));
        put(&o, "apisix_bandwidth{type=\"ingress\",route=\"%s\",service=\"\",consumer=\"%s\","
                "node=\"%s\",code=\"%u\"} %llu\n",
            s->route, cons, s->node, s->status,
            (unsigned long long)atomic_load_explicit(&s->bytes_in, memory_order_relaxed));
        put(&o, "apisix_bandwidth{type=\"egress\",route=\"%s\",service=\"\",consumer=\"%s\","
                "node=\"%s\",code=\"%u\"} %llu\n",
            s->route, cons, s->node, s->status,
            (unsigned long long)atomic_load_explicit(&s->bytes_out, memory_order_relaxed));
    }
    put(&o, "# HELP apisix_http_latency HTTP request latency in milliseconds per route\n"
            "# TYPE apisix_http_latency histogram\n");
    for (uint32_t i = 0; i < METRICS_SERIES; i++) {
        const struct series *s = &shm->series[i];
        if (atomic_load_explicit(&s->state, memory_order_acquire) != SERIES_READY)
            continue;
        histogram(&o, "request", s, s->lat, atomic_load(&s->count), atomic_load(&s->lat_sum_us));
        uint64_t upc = atomic_load(&s->up_count);
        if (upc)
            histogram(&o, "upstream", s, s->up, upc, atomic_load(&s->up_sum_us));
    }
    put(&o, "# HELP airgw_metrics_overflow Observations that found the series table full\n"
            "# TYPE airgw_metrics_overflow counter\nairgw_metrics_overflow %llu\n",
        (unsigned long long)atomic_load(&shm->overflow));
    if (o.oom) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    return o.buf;
}
