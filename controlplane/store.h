/*
 * store: where the control plane keeps configuration. One interface, two
 * implementations: SQLite (store_sqlite.c, the embedded default) and etcd v3
 * (store_etcd.c, through etcd's JSON gateway with libcurl).
 *
 * Keys are APISIX's: "/apisix/routes/1". Values are JSON text. Every write
 * (put or delete) gets a revision of the whole store, monotonic and never
 * reused, even across restarts; create_rev/mod_rev of an item are the
 * revisions of its creation and last change (etcd's create_revision and
 * mod_revision). The store keeps a bounded history of changes so that a data
 * plane that reconnects can be sent only what it missed.
 *
 * Calls are synchronous and made from the control plane's one loop thread.
 * A write returns only when it is durable.
 *
 * The watch: SQLite calls it from put/delete, after the commit. etcd calls it
 * from the loop (store_start) for every change under its prefix as its etcd
 * watch delivers them, whichever control plane made the change, own writes
 * included; put/delete there do not call it. store_revision() is the last
 * revision handed to the watch. When the etcd store loses track (compaction)
 * it reloads and calls the resync hook instead: whoever streams changes must
 * then send every follower a fresh snapshot.
 */
#ifndef AIRGW_STORE_H
#define AIRGW_STORE_H

#include <stddef.h>
#include <stdint.h>

struct uv_loop_s;

#define STORE_ANY    (-1) /* expect_mod_rev: write whatever is there */
#define STORE_ABSENT 0    /* expect_mod_rev: key must not exist */

struct store_item {
    char *key;          /* owned */
    char *value;        /* owned JSON text */
    int64_t create_rev; /* revision that created the key */
    int64_t mod_rev;    /* revision of the last put */
};

/* One committed change. value is NULL for a delete. Borrowed in callbacks. */
struct store_change {
    int64_t rev;
    const char *key;
    const char *value;
    int64_t create_rev; /* for puts */
};

/* A condition a write depends on (checked atomically with the write; one
 * that does not hold fails the write with -ESTALE, nothing written). */
enum store_guard_type {
    STORE_GUARD_CREATED,   /* key still has create_rev == rev (it was not deleted
                              and made again meanwhile; rev 0: key is absent) */
    STORE_GUARD_UNCHANGED, /* no key under prefix key has mod_rev > rev */
};

struct store_guard {
    enum store_guard_type type; /* see above */
    const char *key;            /* the key, or the prefix for UNCHANGED */
    int64_t rev;                /* see above */
};

/* What a put or delete expects. */
struct store_write {
    int64_t expect_mod_rev;           /* STORE_ANY, STORE_ABSENT, or the mod_rev
                                         the key must still have */
    const struct store_guard *guards; /* all must hold, may be NULL */
    size_t nguards;                   /* how many */
    int64_t ttl;                      /* put: seconds the key lives (etcd lease),
                                         0 for ever; -ENOTSUP where unsupported */
};

typedef struct store store;

/* Called after every committed change, in revision order (from the loop
 * thread). */
typedef void (*store_watch_fn)(void *ud, const struct store_change *ch);
/* Iteration callback; return non-zero to stop early (that value is returned). */
typedef int (*store_item_fn)(void *ud, const struct store_item *it);
typedef int (*store_change_fn)(void *ud, const struct store_change *ch);
/* Called when the store could not deliver some changes (etcd compaction): the
 * listener must resend everything from a snapshot at store_revision(). */
typedef void (*store_resync_fn)(void *ud);

struct store_ops {
    const char *name; /* "sqlite", "etcd" */
    int (*get)(store *s, const char *key, struct store_item *out);
    int (*list)(store *s, const char *prefix, int64_t at_rev, store_item_fn fn, void *ud,
                int64_t *read_rev);
    int (*put)(store *s, const char *key, const char *value, const struct store_write *w,
               struct store_item *out);
    int (*del)(store *s, const char *key, const struct store_write *w, int64_t *out_rev);
    int64_t (*revision)(store *s);
    int (*changes_since)(store *s, int64_t rev, store_change_fn fn, void *ud);
    int (*start)(store *s, struct uv_loop_s *loop, char *err, size_t errlen); /* may be NULL */
    void (*stop)(store *s);                                                   /* may be NULL */
    void (*request)(store *s, int begin);                                     /* may be NULL */
    void (*close)(store *s);
};

struct store {
    const struct store_ops *ops; /* implementation */
    store_watch_fn watch;        /* change listener, may be NULL */
    void *watch_ud;              /* its argument */
    store_resync_fn resync;      /* resync listener, may be NULL */
    void *resync_ud;             /* its argument */
    char errmsg[512];            /* last error, for 503 bodies and logs */
};

/* Opens (creating if needed) a SQLite store at path. history is how many
 * changes to keep for resume (older ones are pruned). Returns 0 or a
 * negative errno with a message in err. */
int store_sqlite_open(const char *path, int history, store **out, char *err, size_t errlen);

/* The etcd store's settings (see docs/configuration.md, deployment.etcd). */
struct store_etcd_opts {
    const char *endpoints; /* "http://host:port[,https://...]" */
    const char *prefix;    /* key prefix in etcd, default "/apisix" */
    const char *user;      /* NULL: no authentication */
    const char *password;  /* with user */
    double timeout;        /* seconds: the bound on one admin request's store
                              work and on each etcd call (default 5) */
    const char *tls_cert;  /* client certificate (PEM file), or NULL */
    const char *tls_key;   /* its key */
    const char *tls_ca;    /* CA bundle for etcd's certificate, or NULL (system) */
    int tls_verify;        /* 0: do not verify etcd's certificate */
    int history;           /* changes kept for resume */
};

/* Opens an etcd store: checks the settings, reads etcd's current revision
 * (an unreachable etcd is not an error: the store starts at revision 0 and
 * its watch keeps trying once started). The watch runs after store_start.
 * Returns 0 or a negative errno with a message in err. */
int store_etcd_open(const struct store_etcd_opts *o, store **out, char *err, size_t errlen);

/* Fills *out (caller frees with store_item_clear). 0, -ENOENT, or -EIO. */
static inline int store_get(store *s, const char *key, struct store_item *out)
{
    return s->ops->get(s, key, out);
}

/* Calls fn for every key that starts with prefix, in key order. 0 or -EIO
 * or fn's non-zero return. */
static inline int store_list(store *s, const char *prefix, store_item_fn fn, void *ud)
{
    return s->ops->list(s, prefix, 0, fn, ud, NULL);
}

/* store_list as of revision at_rev (0: the latest), setting *read_rev (if
 * not NULL) to the revision the listing reflects. -ERANGE when at_rev cannot
 * be read any more (compacted; SQLite: anything but its current revision). */
static inline int store_list_at(store *s, const char *prefix, int64_t at_rev, store_item_fn fn,
                                void *ud, int64_t *read_rev)
{
    return s->ops->list(s, prefix, at_rev, fn, ud, read_rev);
}

/* Creates or replaces key. expect_mod_rev: STORE_ANY, STORE_ABSENT (fails
 * -EEXIST if present), or a mod_rev the key must still have (fails -ESTALE
 * otherwise, -ENOENT if gone). On success fills *out if not NULL (its key and
 * value are copies the caller frees) and calls the watch. */
static inline int store_put(store *s, const char *key, const char *value, int64_t expect_mod_rev,
                            struct store_item *out)
{
    struct store_write w = {.expect_mod_rev = expect_mod_rev};
    return s->ops->put(s, key, value, &w, out);
}

/* store_put with guards and a ttl: -ESTALE also when a guard does not hold,
 * -ENOTSUP for a ttl the store cannot do. */
static inline int store_put_ex(store *s, const char *key, const char *value,
                               const struct store_write *w, struct store_item *out)
{
    return s->ops->put(s, key, value, w, out);
}

/* Deletes key. -ENOENT when absent; -ESTALE when expect_mod_rev does not
 * match. On success sets *out_rev (if not NULL) and calls the watch. */
static inline int store_delete(store *s, const char *key, int64_t expect_mod_rev,
                               int64_t *out_rev)
{
    struct store_write w = {.expect_mod_rev = expect_mod_rev};
    return s->ops->del(s, key, &w, out_rev);
}

/* store_delete with guards (-ESTALE when one does not hold). */
static inline int store_delete_ex(store *s, const char *key, const struct store_write *w,
                                  int64_t *out_rev)
{
    return s->ops->del(s, key, w, out_rev);
}

/* The revision of the latest committed change (0 for an empty new store). */
static inline int64_t store_revision(store *s)
{
    return s->ops->revision(s);
}

/* Calls fn for every change with revision > rev, in order. Returns 0, fn's
 * non-zero return, -ERANGE when some of those changes were pruned (the caller
 * must send a snapshot instead), or -EIO. rev greater than the current
 * revision is also -ERANGE (the caller's history is not ours). */
static inline int store_changes_since(store *s, int64_t rev, store_change_fn fn, void *ud)
{
    return s->ops->changes_since(s, rev, fn, ud);
}

static inline void store_set_watch(store *s, store_watch_fn fn, void *ud)
{
    s->watch = fn;
    s->watch_ud = ud;
}

static inline void store_set_resync(store *s, store_resync_fn fn, void *ud)
{
    s->resync = fn;
    s->resync_ud = ud;
}

/* Attaches the store to the loop the watch and resync hook are called on
 * (etcd: starts its watch thread). 0 or a negative errno (message in err). */
static inline int store_start(store *s, struct uv_loop_s *loop, char *err, size_t errlen)
{
    return s->ops->start ? s->ops->start(s, loop, err, errlen) : 0;
}

/* Detaches from the loop (etcd: stops and joins its watch thread, closes its
 * loop handle). Call before the loop's last run; store_close after it. */
static inline void store_stop(store *s)
{
    if (s->ops->stop)
        s->ops->stop(s);
}

/* Brackets the store calls of one admin request: between the two, all calls
 * together take at most the store's timeout (etcd). */
static inline void store_request_begin(store *s)
{
    if (s->ops->request)
        s->ops->request(s, 1);
}

static inline void store_request_end(store *s)
{
    if (s->ops->request)
        s->ops->request(s, 0);
}

static inline void store_close(store *s)
{
    s->ops->close(s);
}

void store_item_clear(struct store_item *it);

#endif
