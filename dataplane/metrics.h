/*
 * metrics: node-wide counters in shared memory, shown in Prometheus text
 * format with APISIX's metric names at /apisix/prometheus/metrics.
 *
 * The master creates the region (memfd) before starting workers; each
 * worker maps the same fd (inherited, named by AIRGW_METRICS_FD), so one
 * scrape of the master sees the whole node with no message passing. Writers
 * are the workers: per-worker connection gauges live in the worker's own
 * slot; per (route, status) series live in a fixed open-addressing table
 * whose entries are claimed with a compare-and-swap and then only ever
 * incremented with relaxed atomic adds. When the table is full, new series
 * are counted under route "" (overflow) instead of failing.
 */
#ifndef AIRGW_DP_METRICS_H
#define AIRGW_DP_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_WORKERS 256
#define METRICS_SERIES 4096
#define METRICS_BUCKETS 15 /* APISIX's default latency buckets, in ms */

struct metrics;

/* Master: creates a shared region. Returns NULL on failure (metrics off). */
struct metrics *metrics_create(void);

/* Worker: maps the region behind fd. NULL on failure. */
struct metrics *metrics_attach(int fd);

/* The fd to hand to workers. */
int metrics_fd(const struct metrics *m);

void metrics_free(struct metrics *m);

/* Worker side. */
void metrics_worker_conns(struct metrics *m, int worker, uint64_t active, uint64_t accepted,
                          uint64_t handled);
/* The labels of one series, as APISIX's: route id, the route uri and host
 * patterns that matched, the upstream node's host, the consumer an auth
 * plugin attached to the request. NULL means "". The series table has a
 * fixed size (METRICS_SERIES): what does not fit is counted under route ""
 * with no other labels (airgw_metrics_overflow counts it). */
struct metrics_labels {
    const char *route;
    const char *matched_uri;
    const char *matched_host;
    const char *node;
    const char *consumer;
};

void metrics_observe(struct metrics *m, const struct metrics_labels *l, int status,
                     uint64_t latency_us, uint64_t upstream_latency_us, uint64_t bytes_in,
                     uint64_t bytes_out);

/* Master side: the exposition text (malloc'd, caller frees). */
char *metrics_render(const struct metrics *m, const char *node_id, int64_t config_revision,
                     size_t *len);

/* Master side: forgets a worker's gauges (it exited). */
void metrics_worker_gone(struct metrics *m, int worker);

#endif
