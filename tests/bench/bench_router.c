/*
 * bench_router: how the route matcher's cost grows with the number of routes.
 *
 * Builds a router of 10 routes and one of 10,000 with the same mix (exact
 * /api/v1/<resource>/<n>, prefixes /api/v1/<resource>/<n>/ followed by '*',
 * exact hosts, wildcard hosts with methods), times 1,000,000 matches of
 * requests spread over the routes (with 1 in 8 a miss) in each of 5 rounds,
 * alternating the two routers, and prints the median ns/match of each and
 * their ratio. A radix tree keeps the ratio near 1.
 *
 * Usage: bench_router [matches]   (default 1000000)
 */
#include "router.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NREQ 4096 /* distinct requests, cycled through */
#define ROUNDS 5  /* timed rounds per router; the median is reported */

static const char *const resources[] = {"users",  "devices",  "orders", "sensors",
                                        "alerts", "gateways", "topics", "firmware"};

/* The route i of the mix, as JSON text in buf. */
static void route_json(int i, char *buf, size_t len)
{
    const char *res = resources[i % 8];
    int n = i / 8;
    switch (i % 10) {
    case 7:
        snprintf(buf, len, "{\"uri\": \"/api/v1/%s/%d\", \"host\": \"svc%d.example.com\"}", res, n,
                 i % 13);
        break;
    case 8:
        snprintf(buf, len, "{\"uri\": \"/api/v1/%s/%d/*\"}", res, n);
        break;
    case 9:
        snprintf(buf, len,
                 "{\"uri\": \"/api/v1/%s/%d\", \"host\": \"*.tenant%d.example.com\", "
                 "\"methods\": [\"GET\", \"POST\"]}",
                 res, n, i % 17);
        break;
    default:
        snprintf(buf, len, "{\"uri\": \"/api/v1/%s/%d\"}", res, n);
    }
}

struct breq {
    char host[64];       /* Host header */
    char path[96];       /* request path */
    struct router_req r; /* the request pointing at the two above */
};

/* A request that hits route i (or, when miss, no route). */
static void request_for(int i, bool miss, struct breq *q)
{
    const char *res = resources[i % 8];
    int n = i / 8;
    snprintf(q->host, sizeof(q->host), "gw.example.com:9080");
    switch (i % 10) {
    case 7:
        snprintf(q->host, sizeof(q->host), "svc%d.example.com", i % 13);
        snprintf(q->path, sizeof(q->path), "/api/v1/%s/%d", res, n);
        break;
    case 8:
        snprintf(q->path, sizeof(q->path), "/api/v1/%s/%d/status/latest", res, n);
        break;
    case 9:
        snprintf(q->host, sizeof(q->host), "dev-%d.tenant%d.example.com", i, i % 17);
        snprintf(q->path, sizeof(q->path), "/api/v1/%s/%d", res, n);
        break;
    default:
        snprintf(q->path, sizeof(q->path), "/api/v1/%s/%d", res, n);
    }
    if (miss)
        snprintf(q->path, sizeof(q->path), "/api/v2/%s/%d", res, n);
    router_req_init(&q->r, "GET", q->host, q->path);
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* A router of n routes of the mix and NREQ requests over it. */
struct setup {
    int nroutes;       /* routes in the router */
    struct router *r;  /* the router */
    struct breq *reqs; /* the requests */
    double ns[ROUNDS]; /* ns/match of each round */
};

static int setup(struct setup *s, int nroutes)
{
    s->nroutes = nroutes;
    s->r = router_new();
    s->reqs = calloc(NREQ, sizeof(*s->reqs));
    if (!s->r || !s->reqs)
        return -1;
    char json[256], err[256];
    for (int i = 0; i < nroutes; i++) {
        route_json(i, json, sizeof(json));
        json_t *j = json_loads(json, 0, NULL);
        int rc = router_add(s->r, j, (void *)(intptr_t)(i + 1), err, sizeof(err));
        json_decref(j);
        if (rc) {
            fprintf(stderr, "router_add: %s\n", err);
            return -1;
        }
    }
    if (router_build(s->r) != 0)
        return -1;

    uint64_t seed = 88172645463325252ull;
    for (int k = 0; k < NREQ; k++) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        request_for((int)(seed % (uint64_t)nroutes), k % 8 == 7, &s->reqs[k]);
    }
    /* Check the mix once: every non-miss request must find its route. */
    long hits = 0;
    for (int k = 0; k < NREQ; k++)
        hits += router_match(s->r, &s->reqs[k].r) != NULL;
    if (hits != NREQ - NREQ / 8) {
        fprintf(stderr, "unexpected: %ld of %d requests matched\n", hits, NREQ - NREQ / 8);
        return -1;
    }
    return 0;
}

/* One round: `count` matches; returns ns per match. */
static double round_ns(const struct setup *s, long count)
{
    uintptr_t sink = 0;
    for (long c = 0; c < NREQ; c++) /* warm the caches as a steady stream would */
        sink += (uintptr_t)router_match(s->r, &s->reqs[c].r);
    double t0 = now_ns();
    for (long c = 0; c < count; c++)
        sink += (uintptr_t)router_match(s->r, &s->reqs[c % NREQ].r);
    double t1 = now_ns();
    volatile uintptr_t keep = sink;
    (void)keep;
    return (t1 - t0) / (double)count;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v)
{
    qsort(v, ROUNDS, sizeof(*v), cmp_double);
    return v[ROUNDS / 2];
}

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 1000000;
    if (count <= 0)
        count = 1000000;
    struct setup small = {0}, large = {0};
    int rc = 1;
    if (setup(&small, 10) != 0 || setup(&large, 10000) != 0)
        goto out;
    /* Alternate the two so that a busy neighbour slows both alike. */
    for (int i = 0; i < ROUNDS; i++) {
        small.ns[i] = round_ns(&small, count);
        large.ns[i] = round_ns(&large, count);
    }
    double ns_small = median(small.ns), ns_large = median(large.ns);
    printf("routes=10     %ld matches x %d rounds, median %.1f ns/match\n", count, ROUNDS,
           ns_small);
    printf("routes=10000  %ld matches x %d rounds, median %.1f ns/match\n", count, ROUNDS,
           ns_large);
    printf("ratio 10000/10: %.2f\n", ns_large / ns_small);
    rc = 0;
out:
    router_free(small.r);
    router_free(large.r);
    free(small.reqs);
    free(large.reqs);
    return rc;
}
