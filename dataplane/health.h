/*
 * health: upstream node health, shared by a data plane's processes.
 *
 * The verdicts live in a table in shared memory (memfd, like metrics): key
 * "UPSTREAM_ID|host:port" -> down or up, plus a generation counter bumped on
 * every change so a worker refreshes a balancer's down flags only when
 * something changed (one atomic load per pick otherwise).
 *
 * Active checks run in the master (one set of probes per node, not one per
 * worker): for every upstream with checks.active, each node is probed every
 * healthy.interval (or unhealthy.interval while down) with a TCP connect or
 * an HTTP GET of http_path. Passive checks run in the workers, on the
 * outcome of real requests. Thresholds and defaults are APISIX's (lua-resty-
 * healthcheck): a node goes down after unhealthy.tcp_failures connect
 * failures, unhealthy.timeouts timeouts or unhealthy.http_failures bad
 * statuses in a row, and comes back after healthy.successes good results.
 * When every node of an upstream is down, traffic goes to all of them (as
 * APISIX does) rather than failing every request.
 */
#ifndef AIRGW_DP_HEALTH_H
#define AIRGW_DP_HEALTH_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct health_table;

/* Master: creates the shared table (NULL on failure: health checks off). */
struct health_table *health_table_create(void);
/* Worker: maps the table behind an inherited fd. */
struct health_table *health_table_attach(int fd);
int health_table_fd(const struct health_table *ht);
void health_table_free(struct health_table *ht);

/* Bumped on every verdict change. */
uint64_t health_generation(const struct health_table *ht);
/* True when the node is marked down. */
bool health_is_down(const struct health_table *ht, const char *upstream_id, const char *addr);

enum health_outcome { HEALTH_OK, HEALTH_TCP_FAILURE, HEALTH_TIMEOUT, HEALTH_HTTP_FAILURE };

/* Worker: a real request's outcome, judged by the upstream's checks.passive
 * (no-op when it has none). */
void health_passive_report(struct health_table *ht, const char *upstream_id, const char *addr,
                           const json_t *checks, enum health_outcome outcome);

struct health_checker;

/* Master: starts the active checker (no targets yet). */
struct health_checker *health_checker_start(uv_loop_t *loop, struct health_table *ht);

/* Master: the set of upstreams to check changed. resources is the whole
 * configuration (key -> value); targets whose settings did not change keep
 * their state and timers. */
void health_checker_update(struct health_checker *hc, json_t *resources);

/* Master: stops every probe; frees hc once libuv released its handles. */
void health_checker_stop(struct health_checker *hc);

#endif
