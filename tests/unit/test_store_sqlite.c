/*
 * Unit tests for controlplane/store_sqlite.c through the store.h interface.
 * Every test works in its own file under one temporary directory, removed at
 * exit.
 */
#include "check.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[] = "/tmp/airgw-test-store-XXXXXX";

static const char *db_path(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof(buf), "%s/%s", tmpdir, name);
    return buf;
}

static store *open_db(const char *name, int history)
{
    char err[256] = "";
    store *s = NULL;
    int rc = store_sqlite_open(db_path(name), history, &s, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "  open %s: %d %s\n", name, rc, err);
    return s;
}

struct collected {
    int n;
    char keys[64][64];
    int64_t revs[64];
    int stop_after; /* non-zero: return 7 after this many */
};

static int collect_item(void *ud, const struct store_item *it)
{
    struct collected *c = ud;
    if (c->n < 64) {
        snprintf(c->keys[c->n], sizeof(c->keys[0]), "%s", it->key);
        c->revs[c->n] = it->mod_rev;
    }
    c->n++;
    return c->stop_after && c->n >= c->stop_after ? 7 : 0;
}

static void test_put_get_list_delete(void)
{
    store *s = open_db("basic.db", 100);
    REQUIRE(s);
    CHECK_STREQ(s->ops->name, "sqlite");
    CHECK(store_revision(s) == 0);

    struct store_item it = {0};
    CHECK(store_get(s, "/apisix/routes/1", &it) == -ENOENT);

    CHECK(store_put(s, "/apisix/routes/1", "{\"uri\":\"/a\"}", STORE_ANY, &it) == 0);
    CHECK_STREQ(it.key, "/apisix/routes/1");
    CHECK_STREQ(it.value, "{\"uri\":\"/a\"}");
    CHECK(it.create_rev == 1 && it.mod_rev == 1);
    store_item_clear(&it);
    CHECK(it.key == NULL && it.value == NULL);

    CHECK(store_put(s, "/apisix/routes/2", "{\"uri\":\"/b\"}", STORE_ANY, NULL) == 0);
    CHECK(store_put(s, "/apisix/routes/1", "{\"uri\":\"/c\"}", STORE_ANY, NULL) == 0);
    CHECK(store_revision(s) == 3);

    CHECK(store_get(s, "/apisix/routes/1", &it) == 0);
    CHECK_STREQ(it.value, "{\"uri\":\"/c\"}");
    CHECK(it.create_rev == 1);
    CHECK(it.mod_rev == 3);
    store_item_clear(&it);

    struct collected c = {0};
    CHECK(store_list(s, "/apisix/routes/", collect_item, &c) == 0);
    CHECK(c.n == 2);
    CHECK_STREQ(c.keys[0], "/apisix/routes/1");
    CHECK_STREQ(c.keys[1], "/apisix/routes/2");
    CHECK(c.revs[0] == 3 && c.revs[1] == 2);

    int64_t rev = 0;
    CHECK(store_delete(s, "/apisix/routes/1", STORE_ANY, &rev) == 0);
    CHECK(rev == 4);
    CHECK(store_get(s, "/apisix/routes/1", &it) == -ENOENT);
    CHECK(store_delete(s, "/apisix/routes/1", STORE_ANY, &rev) == -ENOENT);
    CHECK(rev == 4);
    CHECK(store_revision(s) == 4);

    /* Re-creating a deleted key starts a new life: create_rev moves. */
    CHECK(store_put(s, "/apisix/routes/1", "{}", STORE_ABSENT, &it) == 0);
    CHECK(it.create_rev == 5 && it.mod_rev == 5);
    store_item_clear(&it);

    /* Bad arguments. */
    CHECK(store_put(s, "", "{}", STORE_ANY, NULL) == -EINVAL);
    CHECK(store_put(s, "/k", NULL, STORE_ANY, NULL) == -EINVAL);
    CHECK(store_put(s, "/k", "{}", -2, NULL) == -EINVAL);
    CHECK(store_revision(s) == 5);
    store_close(s);
}

static void test_list_order_and_stop(void)
{
    store *s = open_db("order.db", 100);
    REQUIRE(s);
    const char *keys[] = {"/b/3", "/b/1", "/a/9", "/b/10", "/b/2", "/c"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        REQUIRE(store_put(s, keys[i], "1", STORE_ANY, NULL) == 0);

    struct collected c = {0};
    CHECK(store_list(s, "/b/", collect_item, &c) == 0);
    CHECK(c.n == 4);
    /* Byte order, as etcd: "/b/10" sorts before "/b/2". */
    CHECK_STREQ(c.keys[0], "/b/1");
    CHECK_STREQ(c.keys[1], "/b/10");
    CHECK_STREQ(c.keys[2], "/b/2");
    CHECK_STREQ(c.keys[3], "/b/3");

    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "", collect_item, &c) == 0);
    CHECK(c.n == 6);
    CHECK_STREQ(c.keys[0], "/a/9");
    CHECK_STREQ(c.keys[5], "/c");

    memset(&c, 0, sizeof(c));
    c.stop_after = 2;
    CHECK(store_list(s, "/b/", collect_item, &c) == 7);
    CHECK(c.n == 2);

    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "/nothing/", collect_item, &c) == 0);
    CHECK(c.n == 0);
    store_close(s);
}

static void test_prefix_does_not_leak(void)
{
    store *s = open_db("prefix.db", 100);
    REQUIRE(s);
    REQUIRE(store_put(s, "/apisix/routes", "0", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/routes/1", "1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/routes/2", "2", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/routes_x/1", "3", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/routes0", "4", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/routes.", "5", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/route", "6", STORE_ANY, NULL) == 0);
    /* LIKE-style wildcards in a prefix must be literal. */
    REQUIRE(store_put(s, "/apisix/r%/1", "7", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/r_/1", "8", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/rx/1", "9", STORE_ANY, NULL) == 0);

    struct collected c = {0};
    CHECK(store_list(s, "/apisix/routes/", collect_item, &c) == 0);
    CHECK(c.n == 2);
    CHECK_STREQ(c.keys[0], "/apisix/routes/1");
    CHECK_STREQ(c.keys[1], "/apisix/routes/2");

    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "/apisix/routes_x/", collect_item, &c) == 0);
    CHECK(c.n == 1);
    CHECK_STREQ(c.keys[0], "/apisix/routes_x/1");

    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "/apisix/r_/", collect_item, &c) == 0);
    CHECK(c.n == 1);
    CHECK_STREQ(c.keys[0], "/apisix/r_/1");

    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "/apisix/r%/", collect_item, &c) == 0);
    CHECK(c.n == 1);

    /* A prefix ending in 0xff bytes: the upper bound carries. */
    REQUIRE(store_put(s, "/z\xff", "a", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/z\xff\xff", "b", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/z\xff\xff/x", "c", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/{", "d", STORE_ANY, NULL) == 0);
    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "/z\xff\xff", collect_item, &c) == 0);
    CHECK(c.n == 2);
    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "/z", collect_item, &c) == 0);
    CHECK(c.n == 3);
    store_close(s);
}

static void test_expect_mod_rev(void)
{
    store *s = open_db("cas.db", 100);
    REQUIRE(s);
    struct store_item it = {0};
    /* STORE_ABSENT creates, then refuses. */
    CHECK(store_put(s, "/k", "1", STORE_ABSENT, &it) == 0);
    int64_t r1 = it.mod_rev;
    store_item_clear(&it);
    CHECK(store_put(s, "/k", "2", STORE_ABSENT, NULL) == -EEXIST);
    CHECK(s->errmsg[0] != '\0');

    /* A matching mod_rev succeeds once; the old one is then stale. */
    CHECK(store_put(s, "/k", "2", r1, &it) == 0);
    int64_t r2 = it.mod_rev;
    CHECK(r2 == r1 + 1);
    CHECK(it.create_rev == r1);
    store_item_clear(&it);
    CHECK(store_put(s, "/k", "3", r1, NULL) == -ESTALE);
    CHECK(store_put(s, "/gone", "3", r1, NULL) == -ENOENT);

    /* Failed writes do not use up revisions. */
    CHECK(store_revision(s) == r2);

    CHECK(store_delete(s, "/k", r1, NULL) == -ESTALE);
    CHECK(store_delete(s, "/k", STORE_ABSENT, NULL) == -ESTALE);
    CHECK(store_delete(s, "/nope", r2, NULL) == -ENOENT);
    int64_t rev = 0;
    CHECK(store_delete(s, "/k", r2, &rev) == 0);
    CHECK(rev == r2 + 1);
    CHECK(store_get(s, "/k", &it) == -ENOENT);

    CHECK(store_put(s, "/k", "4", STORE_ANY, NULL) == 0);
    CHECK(store_put(s, "/k", "5", STORE_ANY, NULL) == 0);
    CHECK(store_revision(s) == r2 + 3);
    store_close(s);
}

static void test_revisions_across_reopen(void)
{
    store *s = open_db("reopen.db", 100);
    REQUIRE(s);
    REQUIRE(store_put(s, "/a", "1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/b", "2", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/c", "3", STORE_ANY, NULL) == 0);
    REQUIRE(store_delete(s, "/a", STORE_ANY, NULL) == 0);
    REQUIRE(store_delete(s, "/b", STORE_ANY, NULL) == 0);
    REQUIRE(store_delete(s, "/c", STORE_ANY, NULL) == 0);
    CHECK(store_revision(s) == 6);
    store_close(s);

    /* Everything deleted: the counter still does not go back. */
    s = open_db("reopen.db", 100);
    REQUIRE(s);
    CHECK(store_revision(s) == 6);
    struct store_item it = {0};
    CHECK(store_put(s, "/a", "again", STORE_ABSENT, &it) == 0);
    CHECK(it.mod_rev == 7 && it.create_rev == 7);
    store_item_clear(&it);
    CHECK(store_put(s, "/d", "{\"x\":[1,2]}", STORE_ANY, NULL) == 0);
    store_close(s);

    s = open_db("reopen.db", 100);
    REQUIRE(s);
    CHECK(store_revision(s) == 8);
    CHECK(store_get(s, "/a", &it) == 0);
    CHECK_STREQ(it.value, "again");
    CHECK(it.mod_rev == 7);
    store_item_clear(&it);
    CHECK(store_get(s, "/d", &it) == 0);
    CHECK_STREQ(it.value, "{\"x\":[1,2]}");
    CHECK(it.create_rev == 8 && it.mod_rev == 8);
    store_item_clear(&it);
    CHECK(store_get(s, "/b", &it) == -ENOENT);
    store_close(s);
}

struct changes {
    int n;
    int64_t revs[256];
    char keys[256][32];
    int deletes;
    int64_t create_revs[256];
};

static int collect_change(void *ud, const struct store_change *ch)
{
    struct changes *c = ud;
    if (c->n < 256) {
        c->revs[c->n] = ch->rev;
        snprintf(c->keys[c->n], sizeof(c->keys[0]), "%s", ch->key);
        c->create_revs[c->n] = ch->create_rev;
    }
    if (!ch->value)
        c->deletes++;
    c->n++;
    return 0;
}

static void test_history_and_erange(void)
{
    store *s = open_db("history.db", 5);
    REQUIRE(s);
    struct changes c = {0};
    /* A new store: nothing to send from 0, nothing from the future. */
    CHECK(store_changes_since(s, 0, collect_change, &c) == 0);
    CHECK(c.n == 0);
    CHECK(store_changes_since(s, 1, collect_change, &c) == -ERANGE);

    for (int i = 1; i <= 3; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/k/%d", i);
        REQUIRE(store_put(s, key, "v", STORE_ANY, NULL) == 0);
    }
    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(s, 0, collect_change, &c) == 0);
    CHECK(c.n == 3);
    CHECK(c.revs[0] == 1 && c.revs[2] == 3);
    CHECK_STREQ(c.keys[1], "/k/2");

    for (int i = 4; i <= 12; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/k/%d", i);
        REQUIRE(store_put(s, key, "v", STORE_ANY, NULL) == 0);
    }
    REQUIRE(store_delete(s, "/k/1", STORE_ANY, NULL) == 0); /* rev 13 */
    /* Kept: 9..13. Resumable from 8 (sends 9..13) up to 13 (sends nothing). */
    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(s, 8, collect_change, &c) == 0);
    CHECK(c.n == 5);
    for (int i = 0; i < 5 && i < c.n; i++)
        CHECK(c.revs[i] == 9 + i);
    CHECK(c.deletes == 1);
    CHECK_STREQ(c.keys[4], "/k/1");
    CHECK(c.create_revs[3] == 12);

    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(s, 13, collect_change, &c) == 0);
    CHECK(c.n == 0);
    CHECK(store_changes_since(s, 11, collect_change, &c) == 0);
    CHECK(c.n == 2);
    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(s, 7, collect_change, &c) == -ERANGE);
    CHECK(c.n == 0);
    CHECK(s->errmsg[0] != '\0');
    CHECK(store_changes_since(s, 0, collect_change, &c) == -ERANGE);
    CHECK(store_changes_since(s, 14, collect_change, &c) == -ERANGE);
    CHECK(store_changes_since(s, -1, collect_change, &c) == -ERANGE);
    store_close(s);

    /* Reopened with a smaller history: pruned at once. */
    s = open_db("history.db", 2);
    REQUIRE(s);
    CHECK(store_revision(s) == 13);
    CHECK(store_changes_since(s, 10, collect_change, &c) == -ERANGE);
    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(s, 11, collect_change, &c) == 0);
    CHECK(c.n == 2);
    store_close(s);

    /* The rows themselves are gone, not just hidden. */
    sqlite3 *db;
    REQUIRE(sqlite3_open(db_path("history.db"), &db) == SQLITE_OK);
    sqlite3_stmt *st;
    REQUIRE(sqlite3_prepare_v2(db, "SELECT count(*), min(rev) FROM changes", -1, &st, NULL) ==
            SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECK(sqlite3_column_int(st, 0) == 2);
    CHECK(sqlite3_column_int(st, 1) == 12);
    sqlite3_finalize(st);
    sqlite3_close(db);

    /* history 0 keeps nothing but still resumes from the current revision. */
    s = open_db("history0.db", 0);
    REQUIRE(s);
    REQUIRE(store_put(s, "/a", "1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/a", "2", STORE_ANY, NULL) == 0);
    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(s, 2, collect_change, &c) == 0);
    CHECK(store_changes_since(s, 1, collect_change, &c) == -ERANGE);
    CHECK(c.n == 0);
    store_close(s);
}

static int stop_change(void *ud, const struct store_change *ch)
{
    (void)ch;
    (*(int *)ud)++;
    return -42;
}

static void test_changes_stop_early(void)
{
    store *s = open_db("stop.db", 10);
    REQUIRE(s);
    REQUIRE(store_put(s, "/a", "1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/b", "1", STORE_ANY, NULL) == 0);
    int calls = 0;
    CHECK(store_changes_since(s, 0, stop_change, &calls) == -42);
    CHECK(calls == 1);
    store_close(s);
}

struct watched {
    int n;
    int64_t revs[32];
    char keys[32][16];
    int is_delete[32];
    int64_t rev_seen_in_store[32];
    store *s;
};

static void on_watch(void *ud, const struct store_change *ch)
{
    struct watched *w = ud;
    if (w->n < 32) {
        w->revs[w->n] = ch->rev;
        snprintf(w->keys[w->n], sizeof(w->keys[0]), "%s", ch->key);
        w->is_delete[w->n] = ch->value == NULL;
        /* Called after the commit: the store already shows the change. */
        w->rev_seen_in_store[w->n] = store_revision(w->s);
    }
    w->n++;
}

static void test_watch_once_per_write(void)
{
    store *s = open_db("watch.db", 100);
    REQUIRE(s);
    struct watched w = {.s = s};
    store_set_watch(s, on_watch, &w);
    REQUIRE(store_put(s, "/a", "1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/b", "1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/a", "2", STORE_ANY, NULL) == 0);
    /* Failed writes are not seen. */
    CHECK(store_put(s, "/a", "3", STORE_ABSENT, NULL) == -EEXIST);
    CHECK(store_delete(s, "/zz", STORE_ANY, NULL) == -ENOENT);
    CHECK(store_put(s, "/a", "3", 1, NULL) == -ESTALE);
    REQUIRE(store_delete(s, "/b", STORE_ANY, NULL) == 0);

    CHECK(w.n == 4);
    for (int i = 0; i < 4; i++) {
        CHECK(w.revs[i] == i + 1);
        CHECK(w.rev_seen_in_store[i] == i + 1);
    }
    CHECK_STREQ(w.keys[0], "/a");
    CHECK_STREQ(w.keys[1], "/b");
    CHECK_STREQ(w.keys[2], "/a");
    CHECK_STREQ(w.keys[3], "/b");
    CHECK(!w.is_delete[2] && w.is_delete[3]);

    store_set_watch(s, NULL, NULL);
    REQUIRE(store_put(s, "/c", "1", STORE_ANY, NULL) == 0);
    CHECK(w.n == 4);
    store_close(s);
}

static int nested_list(void *ud, const struct store_item *it)
{
    store *s = ud;
    struct collected c = {0};
    (void)it;
    /* The outer list's statement is still stepping. */
    int rc = store_list(s, "/n/", collect_item, &c);
    return rc != 0 ? rc : (c.n == 2 ? 0 : 99);
}

static void test_nested_list(void)
{
    store *s = open_db("nested.db", 100);
    REQUIRE(s);
    REQUIRE(store_put(s, "/n/1", "1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/n/2", "2", STORE_ANY, NULL) == 0);
    CHECK(store_list(s, "/n/", nested_list, s) == 0);
    /* The cached statement is usable afterwards. */
    struct collected c = {0};
    CHECK(store_list(s, "/n/", collect_item, &c) == 0);
    CHECK(c.n == 2);
    store_close(s);
}

static void test_big_value(void)
{
    size_t len = 1536 * 1024;
    char *big = malloc(len + 1);
    REQUIRE(big);
    big[0] = '"';
    for (size_t i = 1; i < len - 1; i++)
        big[i] = (char)('a' + i % 26);
    big[len - 1] = '"';
    big[len] = '\0';

    store *s = open_db("big.db", 3);
    if (!s) {
        free(big);
        REQUIRE(s);
    }
    for (int i = 0; i < 5; i++)
        CHECK(store_put(s, "/apisix/ssls/1", big, STORE_ANY, NULL) == 0);
    store_close(s);

    s = open_db("big.db", 3);
    if (!s) {
        free(big);
        REQUIRE(s);
    }
    struct store_item it = {0};
    CHECK(store_get(s, "/apisix/ssls/1", &it) == 0);
    CHECK(it.value && strlen(it.value) == len && memcmp(it.value, big, len) == 0);
    store_item_clear(&it);
    store_close(s);
    free(big);
}

static void test_open_creates_dirs_and_mode(void)
{
    char err[256];
    store *s = NULL;
    char path[512];
    snprintf(path, sizeof(path), "%s/d1/d2/store.db", tmpdir);
    mode_t old = umask(0);
    int rc = store_sqlite_open(path, 10, &s, err, sizeof(err));
    umask(old);
    REQUIRE(rc == 0);
    REQUIRE(store_put(s, "/a", "1", STORE_ANY, NULL) == 0);
    struct stat sb;
    CHECK(stat(path, &sb) == 0);
    CHECK((sb.st_mode & 0777) == 0600);
    /* SQLite gives its side files the database's mode. */
    char wal[600];
    snprintf(wal, sizeof(wal), "%s-wal", path);
    CHECK(stat(wal, &sb) == 0);
    CHECK((sb.st_mode & 0777) == 0600);
    snprintf(path, sizeof(path), "%s/d1", tmpdir);
    CHECK(stat(path, &sb) == 0 && S_ISDIR(sb.st_mode));
    CHECK((sb.st_mode & 0777) == 0700);
    store_close(s);

    /* A restrictive umask does not make the store unreadable to us. */
    old = umask(0277);
    rc = store_sqlite_open(db_path("umask.db"), 10, &s, err, sizeof(err));
    umask(old);
    REQUIRE(rc == 0);
    CHECK(store_put(s, "/a", "1", STORE_ANY, NULL) == 0);
    CHECK(stat(db_path("umask.db"), &sb) == 0 && (sb.st_mode & 0777) == 0600);
    store_close(s);

    /* The parent is a file: a clear error, not a crash. */
    snprintf(path, sizeof(path), "%s/d1/d2/store.db/x.db", tmpdir);
    err[0] = '\0';
    CHECK(store_sqlite_open(path, 10, &s, err, sizeof(err)) < 0);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "x.db");

    CHECK(store_sqlite_open(db_path("neg.db"), -1, &s, err, sizeof(err)) == -EINVAL);
}

static void test_refuses_foreign_files(void)
{
    char err[256];
    store *s = NULL;

    /* A text file. */
    const char *path = db_path("notes.txt");
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    for (int i = 0; i < 100; i++)
        fputs("this is not a database, just some text in a file\n", f);
    fclose(f);
    err[0] = '\0';
    CHECK(store_sqlite_open(path, 10, &s, err, sizeof(err)) == -EINVAL);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "not an airgw store");
    CHECK_CONTAINS(err, "notes.txt");

    /* Somebody else's SQLite database. */
    sqlite3 *db;
    path = db_path("other.db");
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "CREATE TABLE users(id INTEGER, name TEXT)", NULL, NULL, NULL) ==
          SQLITE_OK);
    sqlite3_close(db);
    err[0] = '\0';
    CHECK(store_sqlite_open(path, 10, &s, err, sizeof(err)) == -EINVAL);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "not an airgw store");
    /* ... and it was left alone. */
    REQUIRE(sqlite3_open(path, &db) == SQLITE_OK);
    int64_t tables = -1;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL) == SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW)
            tables = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    CHECK(tables == 1);

    /* Our own store, written by a newer airgw. */
    s = open_db("newer.db", 10);
    REQUIRE(s);
    store_close(s);
    REQUIRE(sqlite3_open(db_path("newer.db"), &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "PRAGMA user_version=99", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    err[0] = '\0';
    CHECK(store_sqlite_open(db_path("newer.db"), 10, &s, err, sizeof(err)) == -EINVAL);
    CHECK_CONTAINS(err, "newer");

    /* An empty file is a new store. */
    path = db_path("empty.db");
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    REQUIRE(fd >= 0);
    close(fd);
    s = open_db("empty.db", 10);
    CHECK(s != NULL);
    if (s)
        store_close(s);

    /* A directory. */
    REQUIRE(mkdir(db_path("adir"), 0700) == 0);
    CHECK(store_sqlite_open(db_path("adir"), 10, &s, err, sizeof(err)) < 0);
}

static void test_wal_and_schema(void)
{
    store *s = open_db("pragmas.db", 10);
    REQUIRE(s);
    store_close(s);
    sqlite3 *db;
    REQUIRE(sqlite3_open(db_path("pragmas.db"), &db) == SQLITE_OK);
    sqlite3_stmt *st;
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECK_STREQ((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    REQUIRE(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(st) == SQLITE_ROW);
    CHECK(sqlite3_column_int(st, 0) == 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* The child writes keys as fast as it can and reports each acknowledged
 * revision; it is killed mid-way. Every acknowledged write must be there. */
static void test_crash_durability(void)
{
    enum { MAX_KEYS = 200000, KILL_AFTER = 300 };
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    const char *path = db_path("crash.db");
    char pathcopy[512];
    snprintf(pathcopy, sizeof(pathcopy), "%s", path);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        char err[256];
        store *s;
        if (store_sqlite_open(pathcopy, 50, &s, err, sizeof(err)) != 0)
            _exit(2);
        for (int i = 0; i < MAX_KEYS; i++) {
            char key[64], val[64];
            snprintf(key, sizeof(key), "/apisix/routes/%d", i);
            snprintf(val, sizeof(val), "{\"i\":%d}", i);
            struct store_item it;
            if (store_put(s, key, val, STORE_ABSENT, &it) != 0)
                _exit(3);
            int64_t rec[2] = {i, it.mod_rev};
            store_item_clear(&it);
            if (write(fds[1], rec, sizeof(rec)) != sizeof(rec))
                _exit(4);
        }
        _exit(0);
    }
    close(fds[1]);

    static int64_t acked[MAX_KEYS];
    int n = 0, killed = 0;
    int64_t rec[2];
    for (;;) {
        ssize_t r = read(fds[0], rec, sizeof(rec));
        if (r != (ssize_t)sizeof(rec))
            break; /* EOF: the child is gone (pipe writes this small are atomic) */
        if (rec[0] != n)
            break;
        acked[n++] = rec[1];
        if (n == KILL_AFTER && !killed) {
            kill(pid, SIGKILL);
            killed = 1;
        }
    }
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    CHECK(n >= KILL_AFTER);

    store *s = open_db("crash.db", 50);
    REQUIRE(s);
    CHECK(store_revision(s) >= acked[n - 1]);
    int missing = 0;
    for (int i = 0; i < n; i++) {
        char key[64], val[64];
        snprintf(key, sizeof(key), "/apisix/routes/%d", i);
        snprintf(val, sizeof(val), "{\"i\":%d}", i);
        struct store_item it = {0};
        if (store_get(s, key, &it) != 0 || strcmp(it.value, val) != 0 || it.mod_rev != acked[i])
            missing++;
        store_item_clear(&it);
    }
    CHECK(missing == 0);
    /* And the store still takes writes with fresh revisions. */
    struct store_item it = {0};
    CHECK(store_put(s, "/after", "1", STORE_ANY, &it) == 0);
    CHECK(it.mod_rev == store_revision(s) && it.mod_rev > acked[n - 1]);
    store_item_clear(&it);
    store_close(s);
    fprintf(stderr, "  (crash test: %d acknowledged writes before SIGKILL landed)\n", n);
}

static void test_memory_store(void)
{
    char err[256];
    store *s = NULL;
    REQUIRE(store_sqlite_open(":memory:", 10, &s, err, sizeof(err)) == 0);
    CHECK(store_put(s, "/a", "1", STORE_ANY, NULL) == 0);
    CHECK(store_revision(s) == 1);
    store_close(s);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void test_guards_ttl_and_list_at(void)
{
    store *s = open_db("guards.db", 100);
    REQUIRE(s);
    struct store_item up = {0}, it = {0};
    REQUIRE(store_put(s, "/apisix/upstreams/u1", "{}", STORE_ABSENT, &up) == 0);
    struct store_guard g = {STORE_GUARD_CREATED, "/apisix/upstreams/u1", up.create_rev};
    struct store_write w = {.expect_mod_rev = STORE_ABSENT, .guards = &g, .nguards = 1};
    CHECK(store_put_ex(s, "/apisix/routes/1", "r1", &w, NULL) == 0);
    /* Deleted and made again: another create_rev, the guard fails and
     * nothing is written (the revision does not move). */
    REQUIRE(store_delete(s, "/apisix/upstreams/u1", STORE_ANY, NULL) == 0);
    REQUIRE(store_put(s, "/apisix/upstreams/u1", "{}", STORE_ABSENT, &it) == 0);
    int64_t u1_mod = it.mod_rev;
    store_item_clear(&it);
    int64_t rev = store_revision(s);
    CHECK(store_put_ex(s, "/apisix/routes/2", "r2", &w, NULL) == -ESTALE);
    CHECK(store_get(s, "/apisix/routes/2", &it) == -ENOENT);
    CHECK(store_revision(s) == rev);
    /* Guard rev 0: the key must be absent. */
    struct store_guard absent = {STORE_GUARD_CREATED, "/apisix/upstreams/none", 0};
    struct store_write wa = {.expect_mod_rev = STORE_ANY, .guards = &absent, .nguards = 1};
    CHECK(store_put_ex(s, "/apisix/routes/3", "r3", &wa, NULL) == 0);

    /* Delete protection: nothing under routes/ changed since read_rev. */
    struct collected c = {0};
    int64_t read_rev = 0;
    CHECK(store_list_at(s, "/apisix/routes/", 0, collect_item, &c, &read_rev) == 0);
    CHECK(read_rev == store_revision(s) && c.n == 2);
    struct store_guard pg = {STORE_GUARD_UNCHANGED, "/apisix/routes/", read_rev};
    struct store_write dw = {.expect_mod_rev = u1_mod, .guards = &pg, .nguards = 1};
    REQUIRE(store_put(s, "/apisix/routes/9", "new", STORE_ANY, NULL) == 0);
    CHECK(store_delete_ex(s, "/apisix/upstreams/u1", &dw, NULL) == -ESTALE);
    CHECK(store_get(s, "/apisix/upstreams/u1", &it) == 0);
    store_item_clear(&it);
    /* A change elsewhere (a prefix sibling) does not count. */
    pg.rev = store_revision(s);
    REQUIRE(store_put(s, "/apisix/routes_x/1", "x", STORE_ANY, NULL) == 0);
    CHECK(store_delete_ex(s, "/apisix/upstreams/u1", &dw, NULL) == 0);

    /* list_at: only the current revision can be read. */
    memset(&c, 0, sizeof(c));
    CHECK(store_list_at(s, "/apisix/routes/", store_revision(s), collect_item, &c, NULL) == 0);
    CHECK(c.n == 3);
    CHECK(store_list_at(s, "/apisix/routes/", 1, collect_item, &c, NULL) == -ERANGE);

    /* No leases here: a ttl is refused, clearly, with nothing written. */
    struct store_write tw = {.expect_mod_rev = STORE_ANY, .ttl = 10};
    rev = store_revision(s);
    CHECK(store_put_ex(s, "/apisix/routes/t", "t", &tw, NULL) == -ENOTSUP);
    CHECK_CONTAINS(s->errmsg, "ttl is only supported with the etcd store");
    CHECK(store_revision(s) == rev);
    /* The SQLite store has no loop work: start/stop/request are no-ops. */
    CHECK(store_start(s, NULL, NULL, 0) == 0);
    store_request_begin(s);
    store_request_end(s);
    store_stop(s);
    store_item_clear(&up);
    store_close(s);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_put_get_list_delete);
    RUN(test_list_order_and_stop);
    RUN(test_prefix_does_not_leak);
    RUN(test_expect_mod_rev);
    RUN(test_revisions_across_reopen);
    RUN(test_history_and_erange);
    RUN(test_changes_stop_early);
    RUN(test_watch_once_per_write);
    RUN(test_nested_list);
    RUN(test_big_value);
    RUN(test_open_creates_dirs_and_mode);
    RUN(test_refuses_foreign_files);
    RUN(test_wal_and_schema);
    RUN(test_crash_durability);
    RUN(test_memory_store);
    RUN(test_guards_ttl_and_list_at);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return check_summary();
}
