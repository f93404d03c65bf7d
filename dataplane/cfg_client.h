/*
 * cfg_client: the data plane master's subscription to a control plane's
 * config stream (proto/PROTOCOL.md).
 *
 * It connects to the control planes in failover order, says HELLO with the
 * revision it already has, applies the snapshot or the resumed changes to
 * the cfg_state it is given, ACKs each revision, answers and sends pings, and
 * reconnects with backoff (100 ms doubling to 5 s, the next address each
 * time) whenever the link breaks or goes silent. The owner hears about every
 * change of the served configuration through on_change.
 */
#ifndef AIRGW_DP_CFG_CLIENT_H
#define AIRGW_DP_CFG_CLIENT_H

#include <stdbool.h>
#include <sys/socket.h>
#include <uv.h>

#include "cfg_state.h"
#include "cfgstream.h"

struct tls_client_ctx;

struct cfg_client;

struct cfg_client_opts {
    const struct sockaddr_storage *cps; /* control planes, failover order */
    size_t ncp;
    const char *node_id;                /* sent in HELLO */
    unsigned heartbeat_ms;              /* our PING interval; silence x3 = dead */
    /* Called after every message that changed st's served configuration.
     * snapshot: the whole configuration was replaced (else m is the live
     * PUT/DELETE that was applied). */
    void (*on_change)(void *ud, bool snapshot, const struct cfgs_msg *m);
    void *ud;
    /* TLS to the control planes (borrowed; outlives the client), or NULL
     * for plain TCP. The name verified is server_name, else the control
     * plane's address (an IP SAN). */
    struct tls_client_ctx *tls;
    const char *server_name;
};

/* Starts connecting. st must outlive the client. 0 or -errno. */
int cfg_client_start(uv_loop_t *loop, struct cfg_state *st, const struct cfg_client_opts *o,
                     struct cfg_client **out);

/* True while a control plane link is up and synced. */
bool cfg_client_synced(const struct cfg_client *c);

/* Closes the link and frees c once libuv released its handles. */
void cfg_client_stop(struct cfg_client *c);

#endif
