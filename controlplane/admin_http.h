/*
 * admin_http: the Admin API's HTTP side, on libmicrohttpd.
 *
 * MHD runs in external-epoll mode: its epoll fd is watched by a uv_poll on
 * the control plane's loop, and a uv_timer follows MHD_get_timeout. So the
 * whole control plane is one thread: admin writes, store commits and config
 * stream pushes happen in one order, with no locks.
 *
 * Per request: allow_admin (403) -> /healthz (no key) -> key and role (401)
 * -> body limit (413) -> api_handle. Every JSON answer carries
 * X-API-VERSION: v3.
 */
#ifndef AIRGW_CP_ADMIN_HTTP_H
#define AIRGW_CP_ADMIN_HTTP_H

#include <stddef.h>
#include <uv.h>

#include "api.h"
#include "settings.h"

struct admin_http;

/* Starts the Admin API on settings->admin_listen. ctx must outlive it.
 * Returns 0 or a negative errno (message in err). Logs the bound address. */
int admin_http_start(uv_loop_t *loop, const struct cp_settings *settings, struct api_ctx *ctx,
                     struct admin_http **out, char *err, size_t errlen);

/* Stops MHD (closing every connection) and frees a once libuv released its
 * handles (run the loop afterwards). */
void admin_http_stop(struct admin_http *a);

#endif
