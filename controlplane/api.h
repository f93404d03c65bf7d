/*
 * api: the Admin API's logic, apart from HTTP transport (admin_http.c).
 *
 * Given a method, a path below /apisix/admin/, query arguments and a body,
 * it validates, reads and writes the store and returns an HTTP status with a
 * JSON body, as APISIX's Admin API v3 does. It knows nothing of sockets or
 * keys; authentication happens before it is called.
 */
#ifndef AIRGW_CP_API_H
#define AIRGW_CP_API_H

#include <jansson.h>
#include <stddef.h>

#include "store.h"
#include "stream_server.h"

#define API_MAX_BODY (1536u * 1024) /* 1.5 MiB, as APISIX's admin client_max_body_size */
#define API_MAX_DEPTH 64            /* JSON nesting accepted in a body */

/* Looks up a query argument; NULL when absent. */
typedef const char *(*api_arg_fn)(void *ud, const char *name);

struct api_ctx {
    store *st;                 /* configuration store */
    struct stream_server *ss;  /* for the data plane listing, may be NULL */
    int64_t last_write_rev;    /* revision of this control plane's latest write: POST ids
                                  start above it even before the etcd watch reports it */
};

struct api_req {
    const char *method; /* "GET", "PUT", ... */
    const char *path;   /* the part after "/apisix/admin/", without query */
    api_arg_fn arg;     /* query arguments */
    void *arg_ud;       /* its argument */
    const char *body;   /* request body (not NUL-terminated), may be NULL */
    size_t body_len;    /* its length */
};

/* Handles one request. Returns the HTTP status and sets *out to the JSON
 * response body (new reference, never NULL). */
int api_handle(struct api_ctx *ctx, const struct api_req *req, json_t **out);

/* True when the JSON text nests arrays/objects deeper than max (strings are
 * skipped correctly). Linear, no allocation: run before parsing. */
int api_json_too_deep(const char *s, size_t len, int max);

#endif
