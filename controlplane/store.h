/*
 * store: where the control plane keeps configuration. One interface, two
 * implementations: SQLite (store_sqlite.c, the embedded default) and etcd
 * (store_etcd.c, later).
 *
 * Keys are APISIX's: "/apisix/routes/1". Values are JSON text. Every write
 * (put or delete) gets the next revision of the whole store, monotonic and
 * never reused, even across restarts; create_rev/mod_rev of an item are the
 * revisions of its creation and last change (etcd's create_revision and
 * mod_revision). The store keeps a bounded history of changes so that a data
 * plane that reconnects can be sent only what it missed.
 *
 * Calls are synchronous and made from the control plane's one loop thread.
 * A write returns only when it is durable.
 */
#ifndef AIRGW_STORE_H
#define AIRGW_STORE_H

#include <stddef.h>
#include <stdint.h>

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

typedef struct store store;

/* Called after every committed change, in revision order (from the loop
 * thread). */
typedef void (*store_watch_fn)(void *ud, const struct store_change *ch);
/* Iteration callback; return non-zero to stop early (that value is returned). */
typedef int (*store_item_fn)(void *ud, const struct store_item *it);
typedef int (*store_change_fn)(void *ud, const struct store_change *ch);

struct store_ops {
    const char *name; /* "sqlite", "etcd" */
    int (*get)(store *s, const char *key, struct store_item *out);
    int (*list)(store *s, const char *prefix, store_item_fn fn, void *ud);
    int (*put)(store *s, const char *key, const char *value, int64_t expect_mod_rev,
               struct store_item *out);
    int (*del)(store *s, const char *key, int64_t expect_mod_rev, int64_t *out_rev);
    int64_t (*revision)(store *s);
    int (*changes_since)(store *s, int64_t rev, store_change_fn fn, void *ud);
    void (*close)(store *s);
};

struct store {
    const struct store_ops *ops; /* implementation */
    store_watch_fn watch;        /* change listener, may be NULL */
    void *watch_ud;              /* its argument */
    char errmsg[256];            /* last error, for 503 bodies and logs */
};

/* Opens (creating if needed) a SQLite store at path. history is how many
 * changes to keep for resume (older ones are pruned). Returns 0 or a
 * negative errno with a message in err. */
int store_sqlite_open(const char *path, int history, store **out, char *err, size_t errlen);

/* Fills *out (caller frees with store_item_clear). 0, -ENOENT, or -EIO. */
static inline int store_get(store *s, const char *key, struct store_item *out)
{
    return s->ops->get(s, key, out);
}

/* Calls fn for every key that starts with prefix, in key order. 0 or -EIO
 * or fn's non-zero return. */
static inline int store_list(store *s, const char *prefix, store_item_fn fn, void *ud)
{
    return s->ops->list(s, prefix, fn, ud);
}

/* Creates or replaces key. expect_mod_rev: STORE_ANY, STORE_ABSENT (fails
 * -EEXIST if present), or a mod_rev the key must still have (fails -ESTALE
 * otherwise, -ENOENT if gone). On success fills *out if not NULL (its key and
 * value are copies the caller frees) and calls the watch. */
static inline int store_put(store *s, const char *key, const char *value, int64_t expect_mod_rev,
                            struct store_item *out)
{
    return s->ops->put(s, key, value, expect_mod_rev, out);
}

/* Deletes key. -ENOENT when absent; -ESTALE when expect_mod_rev does not
 * match. On success sets *out_rev (if not NULL) and calls the watch. */
static inline int store_delete(store *s, const char *key, int64_t expect_mod_rev,
                               int64_t *out_rev)
{
    return s->ops->del(s, key, expect_mod_rev, out_rev);
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

static inline void store_close(store *s)
{
    s->ops->close(s);
}

void store_item_clear(struct store_item *it);

#endif
