/*
 * bench_balancer: picks per second of each balancer type with 2, 10 and 1000
 * nodes, printed as a table. One process, one thread, as a worker runs it.
 * least_conn counts a pick with its conn_start and conn_end, as a proxy calls
 * them; chash hashes a fresh client id ("client-N", ~12 bytes) each pick.
 *
 * Build: gcc -std=gnu11 -O2 -D_GNU_SOURCE -Idataplane dataplane/balancer.c
 *        tests/bench/bench_balancer.c $(pkg-config --cflags --libs jansson) -lm
 * Run:   bench_balancer [seconds per cell, default 0.2]
 */
#include "balancer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NKEYS 4096

enum weights {
    W_EQUAL, /* all 1 */
    W_SMALL, /* 1 + i % 7: roundrobin's table */
    W_WIDE,  /* 1 + (i * 37) % 1000: too wide for the table, nginx's O(n) loop */
};

struct row {
    const char *label; /* first column */
    const char *type;  /* upstream "type" */
    enum weights w;    /* node weights */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct balancer *build(const char *type, int n, enum weights wk)
{
    json_t *up = json_pack("{s:s, s:s, s:[]}", "type", type, "key", "mqtt_client_id", "nodes");
    json_t *arr = json_object_get(up, "nodes");
    for (int i = 0; i < n; i++) {
        char host[32];
        snprintf(host, sizeof(host), "10.%d.%d.%d", i / 65536, (i / 256) % 256, i % 256);
        int w = wk == W_EQUAL ? 1 : wk == W_SMALL ? 1 + i % 7 : 1 + (i * 37) % 1000;
        json_array_append_new(
            arr, json_pack("{s:s, s:i, s:i}", "host", host, "port", 1883, "weight", w));
    }
    char err[256];
    struct balancer *b = balancer_new(up, err, sizeof(err));
    json_decref(up);
    if (!b)
        fprintf(stderr, "balancer_new: %s\n", err);
    return b;
}

static char keys[NKEYS][16];
static size_t keylens[NKEYS];

static double run(struct balancer *b, bool lc, double seconds)
{
    unsigned long picks = 0, sum = 0;
    double start = now_s(), end = start + seconds, t;
    do {
        for (int i = 0; i < NKEYS; i++) {
            int idx = balancer_pick(b, keys[i], keylens[i], NULL);
            if (lc) {
                balancer_conn_start(b, idx);
                balancer_conn_end(b, idx);
            }
            sum += (unsigned)idx;
        }
        picks += NKEYS;
        t = now_s();
    } while (t < end);
    if (sum == 1)
        fprintf(stderr, "(unlikely)\n"); /* keeps the picks observable */
    return (double)picks / (t - start);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 0.2;
    if (seconds <= 0)
        seconds = 0.2;
    for (int i = 0; i < NKEYS; i++)
        keylens[i] = (size_t)snprintf(keys[i], sizeof(keys[i]), "client-%d", i);

    static const struct row rows[] = {
        {"roundrobin (equal weights)", "roundrobin", W_EQUAL},
        {"roundrobin (weights 1..7)", "roundrobin", W_SMALL},
        {"roundrobin (weights 1..1000)", "roundrobin", W_WIDE},
        {"chash (weight 1)", "chash", W_EQUAL},
        {"chash (weights 1..7)", "chash", W_SMALL},
        {"least_conn (+start/end)", "least_conn", W_EQUAL},
        {"ewma", "ewma", W_EQUAL},
    };
    static const int sizes[] = {2, 10, 1000};

    printf("%-30s %14s %14s %14s   (picks/s)\n", "type", "2 nodes", "10 nodes", "1000 nodes");
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        printf("%-30s", rows[r].label);
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            struct balancer *b = build(rows[r].type, sizes[s], rows[r].w);
            if (!b)
                return 1;
            balancer_seed(b, 1);
            if (!strcmp(rows[r].type, "ewma"))
                for (int i = 0; i < sizes[s]; i++)
                    balancer_report_latency(b, i, 1.0 + i % 50);
            double rate = run(b, !strcmp(rows[r].type, "least_conn"), seconds);
            printf(" %14.0f", rate);
            fflush(stdout);
            balancer_free(b);
        }
        printf("\n");
    }
    return 0;
}
