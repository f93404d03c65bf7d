/*
 * store_sqlite: the embedded store (store.h) kept in one SQLite file.
 *
 * Schema (PRAGMA application_id = STORE_APP_ID, PRAGMA user_version =
 * SCHEMA_VERSION, so a file that is not ours is refused and a later version
 * can migrate):
 *
 *   kv(key TEXT PRIMARY KEY, value TEXT NOT NULL, create_rev, mod_rev)
 *   changes(rev INTEGER PRIMARY KEY, key TEXT NOT NULL, value TEXT, create_rev)
 *       one row per committed write; value is NULL for a delete (and its
 *       create_rev is then 0)
 *   meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL)
 *       'rev':    the latest committed revision (0 in a new store)
 *       'oldest': the lowest revision still in changes (rev + 1 when none)
 *
 * Invariants: revisions are consecutive, and changes holds exactly the
 * revisions [oldest, rev] (at most `history` of them). The revision counter
 * lives in meta, so it never goes back, even when every key is deleted.
 *
 * Every put/delete is one BEGIN IMMEDIATE transaction: read meta, check the
 * expected mod_rev and the guards (store_guard), write kv, append to changes,
 * prune changes, store the new revision, commit. Only after the commit is the
 * watch called. The database runs in WAL mode with synchronous=FULL, so a
 * commit that returned has been fsynced: it survives kill -9 and power loss.
 *
 * One process owns the file (the control plane's loop thread); revision() and
 * changes_since() use the values cached after the last commit. Writes read the
 * counter from the file inside their transaction, so even a second writer
 * could not make a revision be reused. A ttl (etcd leases) is refused with
 * -ENOTSUP: keys here live until deleted.
 *
 * Ownership: the store owns its connection and its cached prepared
 * statements (finalized in close). Items passed to list callbacks and changes
 * passed to callbacks and the watch are borrowed for the call only. A callback
 * may call any store function; a nested list/changes_since uses a temporary
 * statement because the cached one is still stepping.
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORE_APP_ID 0x61697267 /* "airg" */
#define SCHEMA_VERSION 1
#define BUSY_TIMEOUT_MS 5000

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_META_GET,
    ST_META_SET,
    ST_GET,
    ST_REVS,
    ST_LIST_RANGE,
    ST_LIST_FROM,
    ST_KV_PUT,
    ST_KV_DEL,
    ST_CHG_ADD,
    ST_CHG_PRUNE,
    ST_CHANGES,
    ST_GUARD_RANGE,
    ST_GUARD_FROM,
    ST_COUNT
};

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_META_GET] = "SELECT value FROM meta WHERE name = ?1",
    [ST_META_SET] = "INSERT OR REPLACE INTO meta(name, value) VALUES (?1, ?2)",
    [ST_GET] = "SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1",
    [ST_REVS] = "SELECT create_rev, mod_rev FROM kv WHERE key = ?1",
    [ST_LIST_RANGE] = "SELECT key, value, create_rev, mod_rev FROM kv"
                      " WHERE key >= ?1 AND key < ?2 ORDER BY key",
    [ST_LIST_FROM] = "SELECT key, value, create_rev, mod_rev FROM kv"
                     " WHERE key >= ?1 ORDER BY key",
    [ST_KV_PUT] = "INSERT OR REPLACE INTO kv(key, value, create_rev, mod_rev)"
                  " VALUES (?1, ?2, ?3, ?4)",
    [ST_KV_DEL] = "DELETE FROM kv WHERE key = ?1",
    [ST_CHG_ADD] = "INSERT INTO changes(rev, key, value, create_rev) VALUES (?1, ?2, ?3, ?4)",
    [ST_CHG_PRUNE] = "DELETE FROM changes WHERE rev < ?1",
    [ST_CHANGES] = "SELECT rev, key, value, create_rev FROM changes WHERE rev > ?1 ORDER BY rev",
    [ST_GUARD_RANGE] = "SELECT key FROM kv WHERE key >= ?1 AND key < ?2 AND mod_rev > ?3 LIMIT 1",
    [ST_GUARD_FROM] = "SELECT key FROM kv WHERE key >= ?1 AND mod_rev > ?3 LIMIT 1",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS kv ("
    " key TEXT PRIMARY KEY, value TEXT NOT NULL,"
    " create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS changes ("
    " rev INTEGER PRIMARY KEY, key TEXT NOT NULL, value TEXT,"
    " create_rev INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    "INSERT OR IGNORE INTO meta(name, value) VALUES ('rev', 0), ('oldest', 1);";

struct sqlite_store {
    store base;                 /* must be first: store * is cast to this */
    sqlite3 *db;                /* the connection */
    sqlite3_stmt *st[ST_COUNT]; /* cached statements, finalized in close */
    int history;                /* how many changes to keep */
    int64_t rev;                /* latest committed revision */
    int64_t oldest;             /* lowest revision in changes (rev + 1 if none) */
};

static struct sqlite_store *sq(store *s)
{
    return (struct sqlite_store *)s;
}

static void set_err(struct sqlite_store *q, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(struct sqlite_store *q, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(q->base.errmsg, sizeof(q->base.errmsg), fmt, ap);
    va_end(ap);
}

/* Records sqlite's message for a failed step and returns -EIO. */
static int db_err(struct sqlite_store *q, const char *what)
{
    set_err(q, "sqlite store: %s: %s", what, sqlite3_errmsg(q->db));
    return -EIO;
}

/* Runs a cached statement that returns no rows. */
static int exec_st(struct sqlite_store *q, int id)
{
    sqlite3_stmt *st = q->st[id];
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : db_err(q, stmt_sql[id]);
}

static int meta_get(struct sqlite_store *q, const char *name, int64_t *out)
{
    sqlite3_stmt *st = q->st[ST_META_GET];
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
    } else if (rc == SQLITE_DONE) {
        set_err(q, "sqlite store: damaged: meta '%s' is missing", name);
        ret = -EIO;
    } else {
        ret = db_err(q, "reading meta");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

static int meta_set(struct sqlite_store *q, const char *name, int64_t v)
{
    sqlite3_stmt *st = q->st[ST_META_SET];
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, v);
    return exec_st(q, ST_META_SET);
}

static void rollback(struct sqlite_store *q)
{
    /* A failed COMMIT may already have rolled back; ROLLBACK would then fail. */
    if (!sqlite3_get_autocommit(q->db)) {
        sqlite3_step(q->st[ST_ROLLBACK]);
        sqlite3_reset(q->st[ST_ROLLBACK]);
    }
}

/* Drops changes below keep_from and moves 'oldest' up. Inside a transaction. */
static int prune(struct sqlite_store *q, int64_t keep_from, int64_t *oldest)
{
    if (keep_from <= *oldest)
        return 0;
    sqlite3_bind_int64(q->st[ST_CHG_PRUNE], 1, keep_from);
    int rc = exec_st(q, ST_CHG_PRUNE);
    if (rc == 0)
        rc = meta_set(q, "oldest", keep_from);
    if (rc == 0)
        *oldest = keep_from;
    return rc;
}

/* The smallest string above every key that starts with prefix: drop
 * trailing 0xff bytes and bump the last one. Returns its length (0: none,
 * every key from prefix on matches) and a malloc'd copy in *upper. */
static int prefix_upper(const char *prefix, char **upper, size_t *len)
{
    size_t n = strlen(prefix);
    char *u = malloc(n + 1);
    if (!u)
        return -ENOMEM;
    memcpy(u, prefix, n + 1);
    while (n > 0 && (unsigned char)u[n - 1] == 0xff)
        n--;
    if (n > 0)
        u[n - 1] = (char)((unsigned char)u[n - 1] + 1);
    *upper = u;
    *len = n;
    return 0;
}

/* Checks every guard inside the write's transaction. 0, -ESTALE (message
 * set), or -EIO/-ENOMEM. */
static int check_guards(struct sqlite_store *q, const struct store_write *w)
{
    for (size_t i = 0; i < w->nguards; i++) {
        const struct store_guard *g = &w->guards[i];
        if (g->type == STORE_GUARD_CREATED) {
            sqlite3_stmt *st = q->st[ST_REVS];
            sqlite3_bind_text(st, 1, g->key, -1, SQLITE_STATIC);
            int src = sqlite3_step(st);
            int64_t created = src == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            if (src != SQLITE_ROW && src != SQLITE_DONE)
                return db_err(q, "checking a guard");
            if (created != g->rev) {
                set_err(q, "key %s changed (create_rev %" PRId64 ", expected %" PRId64 ")", g->key,
                        created, g->rev);
                return -ESTALE;
            }
            continue;
        }
        char *upper;
        size_t n;
        if (prefix_upper(g->key, &upper, &n) < 0) {
            set_err(q, "out of memory");
            return -ENOMEM;
        }
        int id = n > 0 ? ST_GUARD_RANGE : ST_GUARD_FROM;
        sqlite3_stmt *st = q->st[id];
        sqlite3_bind_text(st, 1, g->key, -1, SQLITE_STATIC);
        if (n > 0)
            sqlite3_bind_text(st, 2, upper, (int)n, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, g->rev);
        int src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            set_err(q, "key %s changed after revision %" PRId64,
                    (const char *)sqlite3_column_text(st, 0), g->rev);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        free(upper);
        if (src == SQLITE_ROW)
            return -ESTALE;
        if (src != SQLITE_DONE)
            return db_err(q, "checking a guard");
    }
    return 0;
}

struct applied {
    int64_t rev;        /* revision of the write */
    int64_t create_rev; /* the key's create_rev (0 for a delete) */
};

/* One write, put (value != NULL) or delete (value == NULL), as one
 * transaction. Returns 0 after a durable commit, or a negative errno with
 * nothing changed. */
static int apply(struct sqlite_store *q, const char *key, const char *value,
                 const struct store_write *w, struct applied *res)
{
    int64_t expect_mod_rev = w->expect_mod_rev;
    int64_t cur, oldest, old_create = 0, old_mod = 0;
    bool exists = false;
    int rc;

    if (exec_st(q, ST_BEGIN) != 0)
        return -EIO;
    if ((rc = meta_get(q, "rev", &cur)) != 0 || (rc = meta_get(q, "oldest", &oldest)) != 0)
        goto fail;

    sqlite3_stmt *st = q->st[ST_REVS];
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        exists = true;
        old_create = sqlite3_column_int64(st, 0);
        old_mod = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE) {
        rc = db_err(q, "reading key");
        goto fail;
    }

    if (value) {
        if (expect_mod_rev == STORE_ABSENT && exists) {
            set_err(q, "key %s already exists", key);
            rc = -EEXIST;
            goto fail;
        }
        if (expect_mod_rev > 0 && !exists) {
            set_err(q, "key %s does not exist", key);
            rc = -ENOENT;
            goto fail;
        }
    } else if (!exists) {
        set_err(q, "key %s does not exist", key);
        rc = -ENOENT;
        goto fail;
    }
    if (expect_mod_rev != STORE_ANY && exists && old_mod != expect_mod_rev) {
        set_err(q, "key %s was modified (mod_rev %" PRId64 ", expected %" PRId64 ")", key, old_mod,
                expect_mod_rev);
        rc = -ESTALE;
        goto fail;
    }
    if ((rc = check_guards(q, w)) != 0)
        goto fail;

    int64_t rev = cur + 1;
    int64_t create_rev = value ? (exists ? old_create : rev) : 0;
    if (value) {
        st = q->st[ST_KV_PUT];
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, create_rev);
        sqlite3_bind_int64(st, 4, rev);
        rc = exec_st(q, ST_KV_PUT);
    } else {
        sqlite3_bind_text(q->st[ST_KV_DEL], 1, key, -1, SQLITE_STATIC);
        rc = exec_st(q, ST_KV_DEL);
    }
    if (rc != 0)
        goto fail;

    st = q->st[ST_CHG_ADD];
    sqlite3_bind_int64(st, 1, rev);
    sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
    if (value)
        sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 3);
    sqlite3_bind_int64(st, 4, create_rev);
    if ((rc = exec_st(q, ST_CHG_ADD)) != 0)
        goto fail;
    if ((rc = prune(q, rev - q->history + 1, &oldest)) != 0)
        goto fail;
    if ((rc = meta_set(q, "rev", rev)) != 0)
        goto fail;
    if ((rc = exec_st(q, ST_COMMIT)) != 0)
        goto fail;

    q->rev = rev;
    q->oldest = oldest;
    res->rev = rev;
    res->create_rev = create_rev;
    return 0;

fail:
    rollback(q);
    return rc;
}

static int check_write_args(struct sqlite_store *q, const char *key, const struct store_write *w)
{
    if (!key || !*key) {
        set_err(q, "empty key");
        return -EINVAL;
    }
    if (w->expect_mod_rev < STORE_ANY) {
        set_err(q, "bad expected mod_rev %" PRId64, w->expect_mod_rev);
        return -EINVAL;
    }
    if (w->nguards && !w->guards) {
        set_err(q, "guards missing");
        return -EINVAL;
    }
    for (size_t i = 0; i < w->nguards; i++) {
        if (!w->guards[i].key) {
            set_err(q, "guard without a key");
            return -EINVAL;
        }
    }
    if (w->ttl != 0) {
        set_err(q, "ttl is only supported with the etcd store");
        return -ENOTSUP;
    }
    return 0;
}

static int sq_put(store *s, const char *key, const char *value, const struct store_write *w,
                  struct store_item *out)
{
    struct sqlite_store *q = sq(s);
    char *kcopy = NULL, *vcopy = NULL;
    struct applied res;
    int rc = check_write_args(q, key, w);
    if (rc != 0)
        return rc;
    if (!value) {
        set_err(q, "NULL value");
        return -EINVAL;
    }
    /* Copy first: once committed, the write must not be reported as failed. */
    if (out) {
        kcopy = strdup(key);
        vcopy = strdup(value);
        if (!kcopy || !vcopy) {
            set_err(q, "out of memory");
            rc = -ENOMEM;
            goto fail_copy;
        }
    }
    if ((rc = apply(q, key, value, w, &res)) != 0)
        goto fail_copy;
    if (out) {
        out->key = kcopy;
        out->value = vcopy;
        out->create_rev = res.create_rev;
        out->mod_rev = res.rev;
    }
    if (s->watch) {
        struct store_change ch = {res.rev, key, value, res.create_rev};
        s->watch(s->watch_ud, &ch);
    }
    return 0;

fail_copy:
    free(kcopy);
    free(vcopy);
    return rc;
}

static int sq_del(store *s, const char *key, const struct store_write *w, int64_t *out_rev)
{
    struct sqlite_store *q = sq(s);
    struct applied res;
    int rc = check_write_args(q, key, w);
    if (rc == 0)
        rc = apply(q, key, NULL, w, &res);
    if (rc != 0)
        return rc;
    if (out_rev)
        *out_rev = res.rev;
    if (s->watch) {
        struct store_change ch = {res.rev, key, NULL, 0};
        s->watch(s->watch_ud, &ch);
    }
    return 0;
}

static int sq_get(store *s, const char *key, struct store_item *out)
{
    struct sqlite_store *q = sq(s);
    sqlite3_stmt *st = q->st[ST_GET];
    int ret;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        out->key = strdup(key);
        out->value = strdup(v ? v : "");
        out->create_rev = sqlite3_column_int64(st, 1);
        out->mod_rev = sqlite3_column_int64(st, 2);
        ret = 0;
        if (!out->key || !out->value) {
            store_item_clear(out);
            set_err(q, "out of memory");
            ret = -ENOMEM;
        }
    } else if (rc == SQLITE_DONE) {
        ret = -ENOENT;
    } else {
        ret = db_err(q, "get");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return ret;
}

/* The cached statement id, or a fresh copy of it when the cached one is still
 * stepping (a callback that lists from inside a list). *temp says which. */
static sqlite3_stmt *reader(struct sqlite_store *q, int id, bool *temp)
{
    sqlite3_stmt *st = q->st[id];
    *temp = false;
    if (!sqlite3_stmt_busy(st))
        return st;
    if (sqlite3_prepare_v2(q->db, stmt_sql[id], -1, &st, NULL) != SQLITE_OK) {
        db_err(q, "prepare");
        return NULL;
    }
    *temp = true;
    return st;
}

static void reader_done(sqlite3_stmt *st, bool temp)
{
    if (temp) {
        sqlite3_finalize(st);
    } else {
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
    }
}

static int sq_list(store *s, const char *prefix, int64_t at_rev, store_item_fn fn, void *ud,
                   int64_t *read_rev)
{
    struct sqlite_store *q = sq(s);
    if (!prefix)
        prefix = "";
    /* One writer, and it is us: the file is always at q->rev. */
    if (at_rev != 0 && at_rev != q->rev) {
        set_err(q,
                "sqlite store: revision %" PRId64 " cannot be read (the store is at %" PRId64 ")",
                at_rev, q->rev);
        return -ERANGE;
    }
    if (read_rev)
        *read_rev = q->rev;
    size_t n;
    char *upper;
    if (prefix_upper(prefix, &upper, &n) < 0) {
        set_err(q, "out of memory");
        return -ENOMEM;
    }

    bool temp;
    sqlite3_stmt *st = reader(q, n > 0 ? ST_LIST_RANGE : ST_LIST_FROM, &temp);
    if (!st) {
        free(upper);
        return -EIO;
    }
    sqlite3_bind_text(st, 1, prefix, -1, SQLITE_STATIC);
    if (n > 0)
        sqlite3_bind_text(st, 2, upper, (int)n, SQLITE_STATIC);

    int ret = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 1);
        struct store_item it = {
            .key = (char *)sqlite3_column_text(st, 0),
            .value = (char *)(v ? v : ""),
            .create_rev = sqlite3_column_int64(st, 2),
            .mod_rev = sqlite3_column_int64(st, 3),
        };
        if ((ret = fn(ud, &it)) != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = db_err(q, "list");
    reader_done(st, temp);
    free(upper);
    return ret;
}

static int64_t sq_revision(store *s)
{
    return sq(s)->rev;
}

static int sq_changes_since(store *s, int64_t rev, store_change_fn fn, void *ud)
{
    struct sqlite_store *q = sq(s);
    if (rev > q->rev || rev < q->oldest - 1) {
        set_err(q,
                "revision %" PRId64 " is outside the history (%" PRId64 "..%" PRId64 " can resume)",
                rev, q->oldest - 1, q->rev);
        return -ERANGE;
    }
    bool temp;
    sqlite3_stmt *st = reader(q, ST_CHANGES, &temp);
    if (!st)
        return -EIO;
    sqlite3_bind_int64(st, 1, rev);
    int ret = 0, rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct store_change ch = {
            .rev = sqlite3_column_int64(st, 0),
            .key = (const char *)sqlite3_column_text(st, 1),
            .value = (const char *)sqlite3_column_text(st, 2),
            .create_rev = sqlite3_column_int64(st, 3),
        };
        if ((ret = fn(ud, &ch)) != 0)
            break;
    }
    if (ret == 0 && rc != SQLITE_DONE)
        ret = db_err(q, "changes");
    reader_done(st, temp);
    return ret;
}

static void sq_close(store *s)
{
    struct sqlite_store *q = sq(s);
    if (!q)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(q->st[i]);
    sqlite3_close_v2(q->db);
    free(q);
}

static const struct store_ops sqlite_ops = {
    .name = "sqlite",
    .get = sq_get,
    .list = sq_list,
    .put = sq_put,
    .del = sq_del,
    .revision = sq_revision,
    .changes_since = sq_changes_since,
    .close = sq_close,
};

/* fsyncs the directory that holds path, so that a new entry in it survives
 * a power loss (SQLite does this for its WAL, not for the database file). */
static int sync_parent(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    char *last = strrchr(p, '/');
    const char *dir = p;
    if (!last)
        dir = ".";
    else if (last == p)
        dir = "/";
    else
        *last = '\0';
    int rc = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    free(p);
    return rc;
}

/* mkdir -p of path's directory (mode 0700: the store holds credentials). */
static int make_parents(const char *path)
{
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    char *last = strrchr(p, '/');
    int rc = 0;
    if (last && last != p) {
        *last = '\0';
        for (char *c = p + 1;; c++) {
            if (*c != '/' && *c != '\0')
                continue;
            char save = *c;
            *c = '\0';
            if (mkdir(p, 0700) == 0) {
                if ((rc = sync_parent(p)) != 0)
                    break;
            } else if (errno != EEXIST) {
                rc = -errno;
                break;
            }
            if (save == '\0')
                break;
            *c = save;
        }
    }
    free(p);
    return rc;
}

/* Runs one PRAGMA or query that returns a single integer. */
static int query_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Checks that the file is ours (or empty, and then creates the schema). */
static int init_schema(struct sqlite_store *q, const char *path, char *err, size_t errlen)
{
    int64_t app_id = 0, version = 0, objects = 0;
    int rc = query_int(q->db, "PRAGMA application_id", &app_id);
    if (rc == SQLITE_OK)
        rc = query_int(q->db, "PRAGMA user_version", &version);
    if (rc == SQLITE_OK)
        rc = query_int(q->db, "SELECT count(*) FROM sqlite_master", &objects);
    if (rc == SQLITE_NOTADB) {
        snprintf(err, errlen, "%s: not an airgw store (not an SQLite database)", path);
        return -EINVAL;
    }
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(q->db));
        return -EIO;
    }
    bool fresh = app_id == 0 && version == 0 && objects == 0;
    if (!fresh && app_id != STORE_APP_ID) {
        snprintf(err, errlen,
                 "%s: not an airgw store (an SQLite database of another application: "
                 "application_id 0x%08" PRIx64 ", %" PRId64 " schema objects)",
                 path, app_id, objects);
        return -EINVAL;
    }
    if (version > SCHEMA_VERSION) {
        snprintf(err, errlen,
                 "%s: airgw store schema version %" PRId64
                 " is newer than this build understands (%d)",
                 path, version, SCHEMA_VERSION);
        return -EINVAL;
    }
    if (!fresh && version < 1) {
        snprintf(err, errlen, "%s: damaged airgw store (no schema version)", path);
        return -EINVAL;
    }

    /* WAL first: it cannot be switched on inside a transaction. */
    sqlite3_stmt *st;
    const char *mode = NULL;
    bool mem = strcmp(path, ":memory:") == 0;
    rc = sqlite3_prepare_v2(q->db, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        mode = (const char *)sqlite3_column_text(st, 0);
    bool wal_ok = mode && (strcmp(mode, "wal") == 0 || (mem && strcmp(mode, "memory") == 0));
    if (rc == SQLITE_OK)
        sqlite3_finalize(st);
    if (!wal_ok) {
        snprintf(err, errlen, "%s: cannot switch to WAL journal mode: %s", path,
                 sqlite3_errmsg(q->db));
        return -EIO;
    }
    char *msg = NULL;
    if (sqlite3_exec(q->db, "PRAGMA synchronous=FULL", NULL, NULL, &msg) != SQLITE_OK)
        goto fail_exec;

    if (version < SCHEMA_VERSION) {
        /* Future migrations go here, keyed on version. Version 0 is a new
         * file; IF NOT EXISTS makes a concurrent creator harmless. */
        char sql[sizeof(schema_sql) + 128];
        snprintf(sql, sizeof(sql),
                 "BEGIN IMMEDIATE; %s PRAGMA application_id=%d; PRAGMA user_version=%d; "
                 "COMMIT;",
                 schema_sql, STORE_APP_ID, SCHEMA_VERSION);
        if (sqlite3_exec(q->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
            sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
            goto fail_exec;
        }
    }
    return 0;

fail_exec:
    snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(q->db));
    sqlite3_free(msg);
    return -EIO;
}

int store_sqlite_open(const char *path, int history, store **out, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    *out = NULL;
    if (!path || !*path || history < 0) {
        snprintf(err, errlen, "sqlite store: bad path or history");
        return -EINVAL;
    }

    int rc;
    if (strcmp(path, ":memory:") != 0) {
        if ((rc = make_parents(path)) != 0) {
            snprintf(err, errlen, "%s: cannot create its directory: %s", path, strerror(-rc));
            return rc;
        }
        /* Create it ourselves: mode 0600 whatever the umask (SQLite gives
         * its -wal and -shm files the same mode), and a synced directory
         * entry. An existing file keeps the mode the operator gave it. */
        bool created = true;
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 && errno == EEXIST) {
            created = false;
            fd = open(path, O_RDWR | O_CLOEXEC);
        }
        if (fd < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            return rc;
        }
        struct stat sb;
        bool regular = fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
        rc = 0;
        if (regular && created && (fchmod(fd, 0600) != 0 || fsync(fd) != 0))
            rc = -errno;
        close(fd);
        if (rc == 0 && created)
            rc = sync_parent(path);
        if (rc != 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(-rc));
            return rc;
        }
        if (!regular) {
            snprintf(err, errlen, "%s: not a regular file", path);
            return -EINVAL;
        }
    }

    struct sqlite_store *q = calloc(1, sizeof(*q));
    if (!q) {
        snprintf(err, errlen, "sqlite store: out of memory");
        return -ENOMEM;
    }
    q->base.ops = &sqlite_ops;
    q->history = history;
    if (sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path,
                 q->db ? sqlite3_errmsg(q->db) : "cannot open database");
        rc = -EIO;
        goto fail;
    }
    sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);
    sqlite3_db_config(q->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
    if ((rc = init_schema(q, path, err, errlen)) != 0)
        goto fail;

    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(q->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->st[i],
                               NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: damaged airgw store: %s", path, sqlite3_errmsg(q->db));
            rc = -EIO;
            goto fail;
        }
    }

    /* Load the counters, and prune now if history shrank since last time. */
    if ((rc = exec_st(q, ST_BEGIN)) != 0)
        goto fail_msg;
    int64_t oldest;
    if ((rc = meta_get(q, "rev", &q->rev)) != 0 || (rc = meta_get(q, "oldest", &oldest)) != 0 ||
        (rc = prune(q, q->rev - history + 1, &oldest)) != 0 || (rc = exec_st(q, ST_COMMIT)) != 0) {
        rollback(q);
        goto fail_msg;
    }
    q->oldest = oldest;
    *out = &q->base;
    return 0;

fail_msg:
    snprintf(err, errlen, "%s: %s", path, q->base.errmsg);
fail:
    sq_close(&q->base);
    return rc;
}
