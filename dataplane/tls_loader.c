/*
 * tls_loader: the TLS layer of the airgw-dataplane program, loaded on first
 * use. The program does not link BoringSSL: tls.c and BoringSSL (libssl,
 * libcrypto and the libstdc++ libssl needs, ~1.8 MiB resident per process)
 * are in a module, airgw-tls.so, that the first tls_ctx_store_build loads
 * with dlopen. A worker that never speaks TLS never maps them; a master
 * maps them only for a config stream over TLS.
 *
 * Each tls.h entry point here forwards to the module's. Only
 * tls_ctx_store_build loads it: every other function takes an object that
 * comes, directly or not, from a store, so before the load there is none
 * and they return their "nothing" value (NULL, 0, false), which is also
 * what the NULL-tolerant ones (unref, free) do. The ticket key ring
 * (tls_tickets.c) is linked into the program itself: the master makes it
 * without loading anything, and tls_use_ticket_keys is remembered until
 * the module is there.
 *
 * Where the module is looked for, in order: $AIRGW_TLS_MODULE; next to the
 * program (the build directory, or an install in one directory); ../lib/airgw/
 * from the program; AIRGW_TLS_MODULE_DIR (meson's libdir/airgw). The module
 * resolves log_msg from the program (linked with --export-dynamic) and binds
 * its own tls_* calls to itself (-Bsymbolic), so it logs as the process does.
 * Unit tests and fuzz targets link tls.c directly instead of this file.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "tls.h"

#ifndef AIRGW_TLS_MODULE_DIR
#define AIRGW_TLS_MODULE_DIR "/usr/local/lib/airgw"
#endif
#define TLS_MODULE_NAME "airgw-tls.so"

/* X(return type, name, (parameters), (arguments), value before the load) */
#define TLS_API(X)                                                                                 \
    X(struct tls_ctx_store *, tls_ctx_store_ref, (struct tls_ctx_store * st), (st), NULL)          \
    X(size_t, tls_ctx_store_count, (const struct tls_ctx_store *st), (st), 0)                      \
    X(const char *, tls_ctx_store_match, (const struct tls_ctx_store *st, const char *sni),        \
      (st, sni), NULL)                                                                             \
    X(struct tls_client_ctx *, tls_ctx_store_client,                                               \
      (struct tls_ctx_store * st, const json_t *upstream_conf, const json_t *resources, char *err, \
       size_t errlen),                                                                             \
      (st, upstream_conf, resources, err, errlen), NULL)                                           \
    X(uint64_t, tls_client_ctx_fingerprint, (const struct tls_client_ctx *cc), (cc), 0)            \
    X(struct tls_conn *, tls_conn_new_server, (struct tls_ctx_store * st, const char *alpn),       \
      (st, alpn), NULL)                                                                            \
    X(struct tls_conn *, tls_conn_new_client,                                                      \
      (struct tls_client_ctx * cc, const char *server_name, const char *alpn,                      \
       const struct tls_session *resume),                                                          \
      (cc, server_name, alpn, resume), NULL)                                                       \
    X(int, tls_conn_feed, (struct tls_conn * t, const void *data, size_t len), (t, data, len),     \
      -EPIPE)                                                                                      \
    X(int, tls_conn_handshake, (struct tls_conn * t), (t), -EPIPE)                                 \
    X(long, tls_conn_read, (struct tls_conn * t, void *buf, size_t cap), (t, buf, cap), -EPIPE)    \
    X(int, tls_conn_writev, (struct tls_conn * t, const uv_buf_t *bufs, unsigned n), (t, bufs, n), \
      -EPIPE)                                                                                      \
    X(int, tls_conn_write, (struct tls_conn * t, const void *data, size_t len), (t, data, len),    \
      -EPIPE)                                                                                      \
    X(size_t, tls_conn_out, (const struct tls_conn *t, const char **data), (t, data), 0)           \
    X(int, tls_conn_shutdown, (struct tls_conn * t), (t), -EPIPE)                                  \
    X(bool, tls_conn_is_server, (const struct tls_conn *t), (t), false)                            \
    X(bool, tls_conn_handshake_done, (const struct tls_conn *t), (t), false)                       \
    X(bool, tls_conn_resumed, (const struct tls_conn *t), (t), false)                              \
    X(enum tls_failure, tls_conn_failure, (const struct tls_conn *t), (t), TLS_FAIL_NONE)          \
    X(const char *, tls_conn_error, (const struct tls_conn *t), (t), "")                           \
    X(size_t, tls_conn_buffered, (const struct tls_conn *t), (t), 0)                               \
    X(const char *, tls_conn_sni, (const struct tls_conn *t), (t), NULL)                           \
    X(const char *, tls_conn_ssl_id, (const struct tls_conn *t), (t), NULL)                        \
    X(const char *, tls_conn_alpn, (const struct tls_conn *t, size_t *len), (t, len), NULL)        \
    X(const char *, tls_conn_version, (const struct tls_conn *t), (t), NULL)                       \
    X(const char *, tls_conn_cipher, (const struct tls_conn *t), (t), NULL)                        \
    X(int, tls_conn_peer_subject, (const struct tls_conn *t, char *buf, size_t len),               \
      (t, buf, len), -ENOENT)                                                                      \
    X(int, tls_conn_peer_cn, (const struct tls_conn *t, char *buf, size_t len), (t, buf, len),     \
      -ENOENT)                                                                                     \
    X(int, tls_conn_peer_sans, (const struct tls_conn *t, char *buf, size_t len), (t, buf, len),   \
      -ENOENT)                                                                                     \
    X(struct tls_session *, tls_conn_session, (struct tls_conn * t), (t), NULL)

/* Those that return nothing. */
#define TLS_API_VOID(X)                                                                            \
    X(tls_ctx_store_unref, (struct tls_ctx_store * st), (st))                                      \
    X(tls_conn_free, (struct tls_conn * t), (t))                                                   \
    X(tls_conn_out_consume, (struct tls_conn * t, size_t n), (t, n))                               \
    X(tls_session_free, (struct tls_session * s), (s))

/* The module's functions, NULL until it is loaded. */
static struct {
    int state; /* 0: not tried, 1: loaded, -1: failed (not retried) */
    void *handle;
    struct tls_ticket_keys *keys; /* tls_use_ticket_keys before the load */
    struct tls_ctx_store *(*build)(const json_t *, struct tls_ctx_store *, const char *);
    void (*use_keys)(struct tls_ticket_keys *);
#define X(ret, name, params, args, none) ret(*name) params;
    TLS_API(X)
#undef X
#define X(name, params, args) void(*name) params;
    TLS_API_VOID(X)
#undef X
} mod;

static void *try_open(const char *path)
{
    if (access(path, R_OK) != 0)
        return NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        log_error("TLS module %s: %s", path, dlerror());
    return h;
}

static void *open_module(char *where, size_t len)
{
    const char *env = getenv("AIRGW_TLS_MODULE");
    if (env && *env) {
        snprintf(where, len, "%s", env);
        return try_open(where);
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            void *h;
            snprintf(where, len, "%s/%s", exe, TLS_MODULE_NAME);
            if ((h = try_open(where)))
                return h;
            snprintf(where, len, "%s/../lib/airgw/%s", exe, TLS_MODULE_NAME);
            if ((h = try_open(where)))
                return h;
        }
    }
    snprintf(where, len, "%s/%s", AIRGW_TLS_MODULE_DIR, TLS_MODULE_NAME);
    return try_open(where);
}

static int load(void)
{
    if (mod.state)
        return mod.state > 0 ? 0 : -ENOENT;
    mod.state = -1;
    char where[PATH_MAX + 64];
    void *h = open_module(where, sizeof(where));
    if (!h) {
        log_error("TLS is not available: the module %s was not found next to the program, in "
                  "../lib/airgw or in %s (set AIRGW_TLS_MODULE to its path)",
                  TLS_MODULE_NAME, AIRGW_TLS_MODULE_DIR);
        return -ENOENT;
    }
    const char *abi = dlsym(h, "tls_module_abi");
    if (!abi || strcmp(abi, TLS_MODULE_ABI) != 0) {
        log_error("TLS module %s is \"%s\", this program needs \"%s\" (restart the data plane "
                  "after an upgrade)",
                  where, abi ? abi : "unversioned", TLS_MODULE_ABI);
        dlclose(h);
        return -ENOENT;
    }
    bool ok = (*(void **)&mod.build = dlsym(h, "tls_ctx_store_build")) != NULL &&
              (*(void **)&mod.use_keys = dlsym(h, "tls_use_ticket_keys")) != NULL;
#define X(ret, name, params, args, none) ok = ok && (*(void **)&mod.name = dlsym(h, #name)) != NULL;
    TLS_API(X)
#undef X
#define X(name, params, args) ok = ok && (*(void **)&mod.name = dlsym(h, #name)) != NULL;
    TLS_API_VOID(X)
#undef X
    if (!ok) {
        log_error("TLS module %s: %s", where, dlerror());
        dlclose(h);
        memset(&mod, 0, sizeof(mod));
        mod.state = -1;
        return -ENOENT;
    }
    mod.handle = h;
    mod.use_keys(mod.keys);
    mod.state = 1;
    log_debug("TLS module loaded from %s", where);
    return 0;
}

struct tls_ctx_store *tls_ctx_store_build(const json_t *resources, struct tls_ctx_store *prev,
                                          const char *ca_file)
{
    if (load() < 0)
        return NULL;
    return mod.build(resources, prev, ca_file);
}

void tls_use_ticket_keys(struct tls_ticket_keys *k)
{
    mod.keys = k;
    if (mod.state > 0)
        mod.use_keys(k);
}

#define X(ret, name, params, args, none)                                                           \
    ret name params                                                                                \
    {                                                                                              \
        if (mod.state <= 0)                                                                        \
            return none;                                                                           \
        return mod.name args;                                                                      \
    }
TLS_API(X)
#undef X

#define X(name, params, args)                                                                      \
    void name params                                                                               \
    {                                                                                              \
        if (mod.state > 0)                                                                         \
            mod.name args;                                                                         \
    }
TLS_API_VOID(X)
#undef X
