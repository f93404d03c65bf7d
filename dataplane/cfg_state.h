/*
 * cfg_state: the data plane's copy of the configuration: every resource by
 * key ("/apisix/routes/1" -> value) and the revision it reflects.
 *
 * The master keeps one (fed by the control plane or the standalone file),
 * persists it to STATE_DIR/config.json atomically (write, fsync, rename) so a
 * restart while the control plane is away serves the last good configuration,
 * and relays it to each worker, which keeps its own copy and compiles
 * snapshots from it. A snapshot being received is built aside and swapped in
 * whole at its end, so a broken transfer never leaves half a configuration.
 */
#ifndef AIRGW_DP_CFG_STATE_H
#define AIRGW_DP_CFG_STATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfgstream.h"

struct cfg_state {
    json_t *res;      /* key -> resource value (owned) */
    int64_t revision; /* revision of the latest applied change */
    json_t *pending;  /* snapshot being received, or NULL */
    int64_t pending_rev; /* its revision */
};

void cfg_state_init(struct cfg_state *st);
void cfg_state_free(struct cfg_state *st);

/* Applies one message from a config stream: SNAPSHOT_BEGIN/PUT/DELETE/
 * SNAPSHOT_END/RESUME. Sets *changed when the served configuration changed
 * (a live PUT/DELETE, or SNAPSHOT_END swapping a snapshot in). Returns 0 or
 * -EPROTO for a message out of place (PUT outside a snapshot is fine: it is
 * live). */
int cfg_state_apply(struct cfg_state *st, const struct cfgs_msg *m, bool *changed);

/* Replaces the whole configuration (standalone reloads). Takes res. */
void cfg_state_replace(struct cfg_state *st, json_t *res, int64_t revision);

/* Writes {"revision":N,"resources":{...}} to path atomically. 0 or -errno. */
int cfg_state_save(const struct cfg_state *st, const char *path, char *err, size_t errlen);

/* Loads a file written by cfg_state_save. 0, -ENOENT, or -EINVAL (message). */
int cfg_state_load(struct cfg_state *st, const char *path, char *err, size_t errlen);

/* Encodes the whole configuration as SNAPSHOT_BEGIN, PUT..., SNAPSHOT_END
 * frames, calling emit for each encoded frame (which takes the buffer).
 * Returns 0 or a negative errno. */
int cfg_state_encode(const struct cfg_state *st, void (*emit)(void *ud, char *buf, size_t len),
                     void *ud);

/* Paces work that each configuration change calls for but whose cost grows
 * with the configuration (a worker's snapshot compile, the master's health
 * target update, the state file save). On a change the caller arms one
 * timer with cfg_pacer_delay_ms() (unless it is already armed) and does the
 * work once when it fires, covering every change received meanwhile, timed
 * with cfg_pacer_start()/cfg_pacer_done().
 *
 * The delay keeps the work at no more than about a quarter of the
 * process's time: it is 0 while the work is cheap (under 1 ms) or the last
 * run ended at least three times as long ago as it took; otherwise the rest
 * of that interval (at most 5 s). So one change applies at once, and a
 * burst of changes folds into a few runs instead of one per change. All
 * times are in nanoseconds from uv_hrtime(). */
struct cfg_pacer {
    uint64_t started_ns; /* the run in progress began */
    uint64_t ended_ns;   /* the last run ended (0: never ran) */
    uint64_t cost_ns;    /* what the last run took */
    uint64_t runs;       /* runs so far */
};

/* Milliseconds to wait before the next run, at time now_ns. */
uint64_t cfg_pacer_delay_ms(const struct cfg_pacer *p, uint64_t now_ns);
void cfg_pacer_start(struct cfg_pacer *p, uint64_t now_ns);
void cfg_pacer_done(struct cfg_pacer *p, uint64_t now_ns);

#endif
