/*
 * shm_limits: the node-wide counters of the limit plugins (limit-count,
 * limit-req, limit-conn) in shared memory, so that N workers together admit
 * what one limit allows.
 *
 * The master creates the region (memfd, like metrics.c and health.c) before
 * it starts workers; each worker maps the same fd, inherited and named by
 * AIRGW_LIMITS_FD. Nothing here takes a lock: every value changes with a
 * compare-and-swap on one 64-bit word, so a worker that dies at any
 * instruction leaves the table consistent.
 *
 * The table. SHM_LIMITS_SLOTS entries of 32 bytes, open addressing with
 * linear probing (at most SHM_LIMITS_PROBES slots from the home slot),
 * keyed by a 64-bit hash of (owner, plugin, key) whose top two bits carry
 * the kind (count, sliding count, leaky bucket, connections). Each entry:
 *   key      the keyed hash; 0: never used
 *   state    the kind's value, one word (see below)
 *   aux      sliding windows: the previous window's (index, count)
 *   expires  ms after which the slot may be taken by another key
 * A slot is reused when its expiry (plus a second of grace) has passed
 * (a window ended, a bucket drained, no connection held): the new owner
 * CASes the state from the value it saw to a busy mark (BUSY | pid), then
 * writes the key and a fresh state. Others that meet a busy mark wait for
 * it; a busy mark whose process is gone (kill(pid, 0) fails) is taken
 * over, so a worker killed mid-claim cannot wedge a slot. Keys are never
 * deleted, so an empty slot ends a probe. Two different keys with the same
 * 64-bit hash share a counter (odds about n^2 / 2^63 for n live keys).
 *
 * Kinds and their state word:
 *   count    (window start in 10 ms ticks : 32, admitted : 32); the window
 *            starts at the first request after the previous one ended
 *            (APISIX's local policy); windows up to 248 days
 *   sliding  (window index : 32, admitted in it : 32), windows aligned on
 *            multiples of the length; admits while
 *            prev * (1 - elapsed/window) + cur < count
 *   req      the time (ns) the last admitted request is served (GCRA form
 *            of the leaky bucket of lua-resty-limit-traffic: delay =
 *            excess / rate, rejected when excess > burst)
 *   conn     (slot generation : 32, held : 32); each worker's holds are also
 *            counted per (worker, slot), so the master can give back what
 *            a crashed worker held (shm_limits_worker_gone)
 *
 * Full table: an operation that finds neither its key nor a free slot in
 * SHM_LIMITS_PROBES probes returns -ENOSPC and counts it in the header;
 * the plugins then answer as APISIX does when its limiter fails: 500,
 * unless allow_degradation lets the request through (see docs/plugins.md).
 *
 * Times are the caller's (shm_limits_now): tests drive them by hand.
 */
#ifndef AIRGW_DP_SHM_LIMITS_H
#define AIRGW_DP_SHM_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SHM_LIMITS_SLOTS 65536 /* entries (2 MiB) */
#define SHM_LIMITS_PROBES 256  /* longest probe sequence */
#define SHM_LIMITS_MAX_WORKERS 256

struct shm_limits;

enum shm_limits_kind {
    SHM_LIMITS_COUNT = 0,
    SHM_LIMITS_SLIDING = 1,
    SHM_LIMITS_REQ = 2,
    SHM_LIMITS_CONN = 3,
};

/* Master (or a worker without one, or a test): a new zeroed region with
 * room for nworkers' connection holds (clamped to 1..256). NULL with errno
 * on failure. */
struct shm_limits *shm_limits_create(int nworkers);
/* Worker: maps the region behind an inherited fd. NULL when fd is not one. */
struct shm_limits *shm_limits_attach(int fd);
int shm_limits_fd(const struct shm_limits *l);
/* Unmaps and closes the fd. NULL is fine. */
void shm_limits_free(struct shm_limits *l);

/* The table's clock: ns since the region was created (CLOCK_MONOTONIC, the
 * same for every process of the node). */
uint64_t shm_limits_now(const struct shm_limits *l);

/* The key of (owner, plugin, key[keylen]) for a kind: a 64-bit hash, never
 * 0. owner and plugin may be NULL. */
uint64_t shm_limits_key(enum shm_limits_kind kind, const char *owner, const char *plugin,
                        const char *key, size_t keylen);

struct shm_limits_verdict {
    bool admitted;      /* the request may go on */
    uint64_t remaining; /* count: what is left in the window after this one */
    uint64_t reset_s;   /* count: seconds until the window ends (rounded up) */
    uint64_t delay_ns;  /* req: how long the admitted request should wait */
};

/* limit-count: one request for key (made with SHM_LIMITS_COUNT or
 * SHM_LIMITS_SLIDING), at most count per window_ms. 0, or -ENOSPC (table
 * full), -EINVAL (bad arguments). */
int shm_limits_count(struct shm_limits *l, uint64_t key, uint64_t count, uint64_t window_ms,
                     uint64_t now, struct shm_limits_verdict *v);

/* limit-req: one request for key (SHM_LIMITS_REQ): rate per second, burst
 * requests of excess. Admitted requests get delay_ns (0 when under rate).
 * 0, -ENOSPC, -EINVAL. */
int shm_limits_req(struct shm_limits *l, uint64_t key, double rate, double burst, uint64_t now,
                   struct shm_limits_verdict *v);

/* limit-conn: a held count for key (SHM_LIMITS_CONN), at most max at
 * once. On admission *hold names the slot for shm_limits_conn_release and
 * *held is the count including this one. 0, -ENOSPC, -EINVAL. */
struct shm_limits_hold {
    uint32_t slot; /* entry index */
    uint32_t gen;  /* its generation when taken */
};
int shm_limits_conn_acquire(struct shm_limits *l, uint64_t key, int worker, uint64_t max,
                            uint64_t now, bool *admitted, uint64_t *held,
                            struct shm_limits_hold *hold);
/* Gives one back. */
void shm_limits_conn_release(struct shm_limits *l, const struct shm_limits_hold *hold, int worker,
                             uint64_t now);
/* Master: a worker died; gives back every connection it held. */
void shm_limits_worker_gone(struct shm_limits *l, int worker);

/* Operations that found the table full, since creation. */
uint64_t shm_limits_full_count(const struct shm_limits *l);

#endif
