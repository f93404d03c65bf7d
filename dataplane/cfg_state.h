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

#endif
