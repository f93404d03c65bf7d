/*
 * Unit tests for controlplane/store_etcd.c through the store.h interface,
 * against a real etcd (Debian's /usr/bin/etcd) that this program starts on
 * free 127.0.0.1 ports in a temporary directory and stops at the end. No
 * etcd is a failure, not a skip. Other clients' writes are made with
 * etcdctl (or a second store instance), as an operator or another control
 * plane would.
 *
 * The watch needs a libuv loop: each test that uses it runs one, turning it
 * until what it waits for has arrived (or a generous deadline passed).
 */
#include "check.h"
#include "store.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define ETCD_BIN "/usr/bin/etcd"
#define ETCDCTL_BIN "/usr/bin/etcdctl"

static char tmpdir[] = "/tmp/airgw-test-etcd-XXXXXX";
static char url[64]; /* the etcd's client URL */
static int client_port, peer_port;
static pid_t etcd_pid = -1;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static size_t sink(char *p, size_t sz, size_t n, void *ud)
{
    char *buf = ud;
    size_t have = strlen(buf), len = sz * n;
    if (have + len < 512) {
        memcpy(buf + have, p, len);
        buf[have + len] = '\0';
    }
    return len;
}

/* True once etcd answers /health with "true". */
static bool etcd_healthy(void)
{
    char u[128], body[512] = "";
    snprintf(u, sizeof(u), "%s/health", url);
    CURL *h = curl_easy_init();
    curl_easy_setopt(h, CURLOPT_URL, u);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 500L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, (void *)body);
    CURLcode rc = curl_easy_perform(h);
    curl_easy_cleanup(h);
    return rc == CURLE_OK && strstr(body, "\"true\"");
}

/* Starts etcd on the chosen ports with its data in tmpdir/etcd (kept across
 * restarts). 0 when it is healthy. */
static int etcd_start(void)
{
    char data[256], log[256], curls[64], purls[64], cluster[96];
    snprintf(data, sizeof(data), "%s/etcd", tmpdir);
    snprintf(log, sizeof(log), "%s/etcd.log", tmpdir);
    snprintf(curls, sizeof(curls), "http://127.0.0.1:%d", client_port);
    snprintf(purls, sizeof(purls), "http://127.0.0.1:%d", peer_port);
    snprintf(cluster, sizeof(cluster), "t=%s", purls);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(ETCD_BIN, "etcd", "--name", "t", "--data-dir", data, "--listen-client-urls", curls,
              "--advertise-client-urls", curls, "--listen-peer-urls", purls,
              "--initial-advertise-peer-urls", purls, "--initial-cluster", cluster, "--log-level",
              "error", (char *)NULL);
        _exit(127);
    }
    etcd_pid = pid;
    for (int i = 0; i < 200; i++) {
        if (etcd_healthy())
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            etcd_pid = -1;
            fprintf(stderr, "  etcd exited at start (see %s)\n", log);
            return -EIO;
        }
        usleep(50 * 1000);
    }
    return -ETIMEDOUT;
}

static void etcd_kill(void)
{
    if (etcd_pid > 0) {
        kill(etcd_pid, SIGKILL);
        waitpid(etcd_pid, NULL, 0);
        etcd_pid = -1;
    }
}

/* Runs etcdctl with the given arguments; its stdout (trimmed) in out. */
static int ctl(char *out, size_t outlen, ...)
{
    const char *argv[16];
    int n = 0;
    char ep[96];
    snprintf(ep, sizeof(ep), "--endpoints=%s", url);
    argv[n++] = "etcdctl";
    argv[n++] = ep;
    va_list ap;
    va_start(ap, outlen);
    const char *a;
    while (n < 15 && (a = va_arg(ap, const char *)))
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    int p[2];
    if (pipe(p) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        setenv("ETCDCTL_API", "3", 1);
        execv(ETCDCTL_BIN, (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    size_t got = 0;
    char tmp[4096];
    ssize_t r;
    while ((r = read(p[0], tmp, sizeof(tmp))) > 0) {
        if (out && got + (size_t)r < outlen) {
            memcpy(out + got, tmp, (size_t)r);
            got += (size_t)r;
        }
    }
    close(p[0]);
    if (out && outlen) {
        out[got < outlen ? got : outlen - 1] = '\0';
        while (got > 0 && (out[got - 1] == '\n'))
            out[--got] = '\0';
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* etcd's current revision, from etcdctl's JSON. */
static int64_t etcd_rev(void)
{
    char out[4096];
    if (ctl(out, sizeof(out), "get", "/no-such-key", "-w", "json", NULL) < 0)
        return -1;
    const char *p = strstr(out, "\"revision\":");
    return p ? strtoll(p + 11, NULL, 10) : -1;
}

static store *open_at(const char *endpoints, const char *prefix, int history, double timeout)
{
    struct store_etcd_opts o = {
        .endpoints = endpoints,
        .prefix = prefix,
        .timeout = timeout,
        .tls_verify = 1,
        .history = history,
    };
    char err[512] = "";
    store *s = NULL;
    int rc = store_etcd_open(&o, &s, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "  open: %d %s\n", rc, err);
    return s;
}

static store *open_store(const char *prefix, int history)
{
    return open_at(url, prefix, history, 5);
}

/* ---- watch collection ------------------------------------------------------- */

struct seen {
    int n;
    int64_t rev[64];
    char key[64][64];
    bool del[64];
    char value[64][64];
    int resyncs;
};

static void on_watch(void *ud, const struct store_change *ch)
{
    struct seen *w = ud;
    if (w->n < 64) {
        w->rev[w->n] = ch->rev;
        snprintf(w->key[w->n], sizeof(w->key[0]), "%s", ch->key);
        w->del[w->n] = ch->value == NULL;
        snprintf(w->value[w->n], sizeof(w->value[0]), "%s", ch->value ? ch->value : "");
    }
    w->n++;
}

static void on_resync(void *ud)
{
    ((struct seen *)ud)->resyncs++;
}

/* Turns the loop until *count >= want or ms passed. */
static void run_until(uv_loop_t *loop, const int *count, int want, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (*count < want && now_ms() < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(5 * 1000);
    }
}

/* Stops the store's watch and drains the loop. */
static void finish(store *s, uv_loop_t *loop)
{
    store_stop(s);
    uv_run(loop, UV_RUN_DEFAULT);
    store_close(s);
    uv_loop_close(loop);
}

struct collected {
    int n;
    char keys[32][64];
    char values[32][64];
};

static int collect(void *ud, const struct store_item *it)
{
    struct collected *c = ud;
    if (c->n < 32) {
        snprintf(c->keys[c->n], sizeof(c->keys[0]), "%s", it->key);
        snprintf(c->values[c->n], sizeof(c->values[0]), "%s", it->value);
    }
    c->n++;
    return 0;
}

struct changes {
    int n;
    int64_t rev[64];
    char key[64][64];
};

static int collect_change(void *ud, const struct store_change *ch)
{
    struct changes *c = ud;
    if (c->n < 64) {
        c->rev[c->n] = ch->rev;
        snprintf(c->key[c->n], sizeof(c->key[0]), "%s", ch->key);
    }
    c->n++;
    return 0;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_etcd_is_there(void)
{
    /* Not a skip: without etcd the store cannot be tested, and that fails. */
    REQUIRE(access(ETCD_BIN, X_OK) == 0);
    REQUIRE(access(ETCDCTL_BIN, X_OK) == 0);
    REQUIRE(etcd_pid > 0);
}

static void test_put_get_list_delete(void)
{
    store *s = open_store("/t-crud", 100);
    REQUIRE(s);
    CHECK_STREQ(s->ops->name, "etcd");
    struct store_item it = {0};
    CHECK(store_get(s, "/apisix/routes/1", &it) == -ENOENT);
    CHECK(store_put(s, "/apisix/routes/1", "{\"uri\":\"/a\"}", STORE_ANY, &it) == 0);
    CHECK_STREQ(it.key, "/apisix/routes/1");
    CHECK(it.create_rev > 0 && it.mod_rev == it.create_rev);
    int64_t r1 = it.mod_rev;
    store_item_clear(&it);
    CHECK(store_put(s, "/apisix/routes/2", "{\"uri\":\"/b\"}", STORE_ANY, NULL) == 0);
    CHECK(store_put(s, "/apisix/routes/1", "{\"uri\":\"/c\"}", STORE_ANY, &it) == 0);
    CHECK(it.create_rev == r1 && it.mod_rev > r1);
    store_item_clear(&it);
    CHECK(store_put(s, "/apisix/upstreams/u", "{}", STORE_ANY, NULL) == 0);

    CHECK(store_get(s, "/apisix/routes/1", &it) == 0);
    CHECK_STREQ(it.value, "{\"uri\":\"/c\"}");
    CHECK(it.create_rev == r1);
    store_item_clear(&it);

    /* In etcd under the prefix, in APISIX's layout, values as they are. */
    char out[1024];
    CHECK(ctl(out, sizeof(out), "get", "/t-crud/routes/1", "--print-value-only", NULL) == 0);
    CHECK_STREQ(out, "{\"uri\":\"/c\"}");

    struct collected c = {0};
    int64_t read_rev = 0;
    CHECK(store_list_at(s, "/apisix/routes/", 0, collect, &c, &read_rev) == 0);
    CHECK(c.n == 2);
    CHECK_STREQ(c.keys[0], "/apisix/routes/1");
    CHECK_STREQ(c.keys[1], "/apisix/routes/2");
    CHECK(read_rev >= it.mod_rev);
    memset(&c, 0, sizeof(c));
    CHECK(store_list(s, "/apisix/", collect, &c) == 0);
    CHECK(c.n == 3);

    /* A listing as of an older revision shows the older value. */
    memset(&c, 0, sizeof(c));
    CHECK(store_list_at(s, "/apisix/routes/", r1, collect, &c, &read_rev) == 0);
    CHECK(c.n == 1 && read_rev == r1);
    CHECK_STREQ(c.values[0], "{\"uri\":\"/a\"}");

    int64_t rev = 0;
    CHECK(store_delete(s, "/apisix/routes/1", STORE_ANY, &rev) == 0);
    CHECK(rev > r1);
    CHECK(store_get(s, "/apisix/routes/1", &it) == -ENOENT);
    CHECK(store_delete(s, "/apisix/routes/1", STORE_ANY, NULL) == -ENOENT);

    /* Keys outside /apisix/ are refused, not mangled. */
    CHECK(store_put(s, "/elsewhere", "1", STORE_ANY, NULL) == -EINVAL);
    CHECK(store_put(s, "", "1", STORE_ANY, NULL) == -EINVAL);
    CHECK(store_put(s, "/apisix/x", NULL, STORE_ANY, NULL) == -EINVAL);
    store_close(s);
}

static void test_many_keys_list_pages(void)
{
    /* More keys than one range page (1000), read at one revision. */
    store *s = open_store("/t-many", 10);
    REQUIRE(s);
    char key[64];
    for (int i = 0; i < 1100; i += 100) {
        /* etcdctl txn would be faster; 11 keys here plus a bulk below */
        snprintf(key, sizeof(key), "/apisix/routes/%04d", i);
        REQUIRE(store_put(s, key, "v", STORE_ANY, NULL) == 0);
    }
    /* The bulk: one etcdctl txn per 100 keys. */
    for (int b = 0; b < 11; b++) {
        char path[256];
        snprintf(path, sizeof(path), "%s/txn.txt", tmpdir);
        FILE *f = fopen(path, "w");
        REQUIRE(f);
        fprintf(f, "\n");
        for (int i = 1; i < 100; i++)
            fprintf(f, "put /t-many/routes/%04d v\n", b * 100 + i);
        fprintf(f, "\n\n");
        fclose(f);
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "ETCDCTL_API=3 %s --endpoints=%s txn < %s > /dev/null",
                 ETCDCTL_BIN, url, path);
        REQUIRE(system(cmd) == 0);
    }
    struct collected c = {0};
    int64_t read_rev = 0;
    CHECK(store_list_at(s, "/apisix/routes/", 0, collect, &c, &read_rev) == 0);
    CHECK(c.n == 1100);
    CHECK(read_rev > 0);
    store_close(s);
}

static void test_create_only_and_cas(void)
{
    store *s = open_store("/t-cas", 10);
    REQUIRE(s);
    struct store_item it = {0};
    CHECK(store_put(s, "/apisix/k", "1", STORE_ABSENT, &it) == 0);
    int64_t r1 = it.mod_rev;
    store_item_clear(&it);
    CHECK(store_put(s, "/apisix/k", "2", STORE_ABSENT, NULL) == -EEXIST);
    CHECK(store_put(s, "/apisix/k", "2", r1, &it) == 0);
    int64_t r2 = it.mod_rev;
    store_item_clear(&it);
    CHECK(store_put(s, "/apisix/k", "3", r1, NULL) == -ESTALE);
    CHECK_CONTAINS(s->errmsg, "was modified");
    CHECK(store_put(s, "/apisix/gone", "3", r1, NULL) == -ENOENT);
    CHECK(store_delete(s, "/apisix/k", r1, NULL) == -ESTALE);
    CHECK(store_delete(s, "/apisix/k", STORE_ABSENT, NULL) == -ESTALE);
    CHECK(store_delete(s, "/apisix/nope", r2, NULL) == -ENOENT);

    /* Another writer (etcdctl) in between: the expected revision is stale. */
    CHECK(ctl(NULL, 0, "put", "/t-cas/k", "other", NULL) == 0);
    CHECK(store_put(s, "/apisix/k", "mine", r2, NULL) == -ESTALE);
    CHECK(store_get(s, "/apisix/k", &it) == 0);
    CHECK_STREQ(it.value, "other");
    CHECK(store_delete(s, "/apisix/k", it.mod_rev, NULL) == 0);
    store_item_clear(&it);
    CHECK(store_get(s, "/apisix/k", &it) == -ENOENT);
    store_close(s);
}

static void test_guards(void)
{
    store *s = open_store("/t-guard", 10);
    REQUIRE(s);
    struct store_item up = {0};
    REQUIRE(store_put(s, "/apisix/upstreams/u1", "{}", STORE_ABSENT, &up) == 0);

    /* A reference that still holds. */
    struct store_guard g = {STORE_GUARD_CREATED, "/apisix/upstreams/u1", up.create_rev};
    struct store_write w = {.expect_mod_rev = STORE_ABSENT, .guards = &g, .nguards = 1};
    CHECK(store_put_ex(s, "/apisix/routes/1", "{\"upstream_id\":\"u1\"}", &w, NULL) == 0);

    /* The upstream deleted and made again meanwhile: a new create_rev. */
    REQUIRE(ctl(NULL, 0, "del", "/t-guard/upstreams/u1", NULL) == 0);
    REQUIRE(ctl(NULL, 0, "put", "/t-guard/upstreams/u1", "{}", NULL) == 0);
    CHECK(store_put_ex(s, "/apisix/routes/2", "{\"upstream_id\":\"u1\"}", &w, NULL) == -ESTALE);
    struct store_item it = {0};
    CHECK(store_get(s, "/apisix/routes/2", &it) == -ENOENT);
    CHECK(store_get(s, "/apisix/upstreams/u1", &it) == 0);
    int64_t u1_mod = it.mod_rev;
    store_item_clear(&it);

    /* Delete protection: nothing under routes/ changed since the scan. */
    int64_t read_rev = 0;
    struct collected c = {0};
    REQUIRE(store_list_at(s, "/apisix/routes/", 0, collect, &c, &read_rev) == 0);
    struct store_guard pg = {STORE_GUARD_UNCHANGED, "/apisix/routes/", read_rev};
    struct store_write dw = {.expect_mod_rev = u1_mod, .guards = &pg, .nguards = 1};
    /* A route written after the scan (it could reference u1): refused. */
    REQUIRE(ctl(NULL, 0, "put", "/t-guard/routes/9", "{\"upstream_id\":\"u1\"}", NULL) == 0);
    CHECK(store_delete_ex(s, "/apisix/upstreams/u1", &dw, NULL) == -ESTALE);
    CHECK(store_get(s, "/apisix/upstreams/u1", &it) == 0);
    store_item_clear(&it);
    /* Scanned again: it holds, the delete goes through. Keys elsewhere
     * (services/) do not matter. */
    REQUIRE(store_list_at(s, "/apisix/routes/", 0, collect, &c, &read_rev) == 0);
    REQUIRE(ctl(NULL, 0, "put", "/t-guard/services/s", "{}", NULL) == 0);
    pg.rev = read_rev;
    CHECK(store_delete_ex(s, "/apisix/upstreams/u1", &dw, NULL) == 0);
    CHECK(store_get(s, "/apisix/upstreams/u1", &it) == -ENOENT);
    store_item_clear(&up);
    store_close(s);
}

static void test_watch_in_order_from_every_writer(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    store *a = open_store("/t-watch", 100), *b = open_store("/t-watch", 100);
    REQUIRE(a && b);
    struct seen w = {0};
    store_set_watch(a, on_watch, &w);
    int64_t start = store_revision(a);
    CHECK(start > 0);
    char err[256];
    REQUIRE(store_start(a, &loop, err, sizeof(err)) == 0);

    struct store_item it = {0};
    REQUIRE(store_put(a, "/apisix/routes/1", "a1", STORE_ANY, &it) == 0);
    int64_t r1 = it.mod_rev;
    store_item_clear(&it);
    REQUIRE(store_put(b, "/apisix/routes/2", "b1", STORE_ANY, NULL) == 0);
    REQUIRE(ctl(NULL, 0, "put", "/t-watch/routes/3", "ctl", NULL) == 0);
    REQUIRE(ctl(NULL, 0, "put", "/t-watch-other/routes/1", "not ours", NULL) == 0);
    REQUIRE(store_delete(b, "/apisix/routes/1", STORE_ANY, NULL) == 0);
    run_until(&loop, &w.n, 4, 5000);
    REQUIRE(w.n == 4);
    CHECK(w.rev[0] == r1);
    CHECK_STREQ(w.key[0], "/apisix/routes/1");
    CHECK_STREQ(w.value[0], "a1");
    CHECK_STREQ(w.key[1], "/apisix/routes/2");
    CHECK_STREQ(w.key[2], "/apisix/routes/3");
    CHECK_STREQ(w.value[2], "ctl");
    CHECK_STREQ(w.key[3], "/apisix/routes/1");
    CHECK(w.del[3] && !w.del[0]);
    for (int i = 1; i < 4; i++)
        CHECK(w.rev[i] > w.rev[i - 1]);
    CHECK(store_revision(a) == w.rev[3]);

    /* With the watch up, an own write has reached the watch (through the
     * etcd watch, once) when put returns, as with SQLite. */
    REQUIRE(store_put(a, "/apisix/routes/5", "a5", STORE_ANY, &it) == 0);
    CHECK(w.n == 5 && w.rev[4] == it.mod_rev && store_revision(a) == it.mod_rev);
    store_item_clear(&it);
    int64_t drev = 0;
    REQUIRE(store_delete(a, "/apisix/routes/5", STORE_ANY, &drev) == 0);
    CHECK(w.n == 6 && w.rev[5] == drev && w.del[5]);
    run_until(&loop, &w.n, 7, 300); /* nothing more comes */
    CHECK(w.n == 6);

    /* History: the same changes again, and resume from the middle. */
    struct changes c = {0};
    CHECK(store_changes_since(a, start, collect_change, &c) == 0);
    CHECK(c.n == 6);
    for (int i = 0; i < 6 && i < c.n; i++)
        CHECK(c.rev[i] == w.rev[i] && strcmp(c.key[i], w.key[i]) == 0);
    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(a, w.rev[1], collect_change, &c) == 0);
    CHECK(c.n == 4 && c.rev[0] == w.rev[2]);
    memset(&c, 0, sizeof(c));
    CHECK(store_changes_since(a, w.rev[5], collect_change, &c) == 0);
    CHECK(c.n == 0);
    CHECK(store_changes_since(a, start - 1, collect_change, &c) == -ERANGE);
    CHECK(store_changes_since(a, w.rev[5] + 1, collect_change, &c) == -ERANGE);

    /* A snapshot as of the applied revision. */
    struct collected l = {0};
    CHECK(store_list_at(a, "/apisix/", store_revision(a), collect, &l, NULL) == 0);
    CHECK(l.n == 2);

    store_close(b);
    finish(a, &loop);
}

static void test_two_control_planes_same_revisions(void)
{
    /* Two stores on one etcd apply the same changes at the same revisions,
     * so a data plane can resume from one to the other. Small history. */
    uv_loop_t la, lb;
    uv_loop_init(&la);
    uv_loop_init(&lb);
    store *a = open_store("/t-two", 3), *b = open_store("/t-two", 3);
    REQUIRE(a && b);
    struct seen wa = {0}, wb = {0};
    store_set_watch(a, on_watch, &wa);
    store_set_watch(b, on_watch, &wb);
    char err[256];
    REQUIRE(store_start(a, &la, err, sizeof(err)) == 0);
    REQUIRE(store_start(b, &lb, err, sizeof(err)) == 0);
    for (int i = 0; i < 5; i++) {
        char key[32];
        snprintf(key, sizeof(key), "/apisix/routes/%d", i);
        REQUIRE(store_put(i % 2 ? a : b, key, "v", STORE_ANY, NULL) == 0);
    }
    run_until(&la, &wa.n, 5, 5000);
    run_until(&lb, &wb.n, 5, 5000);
    REQUIRE(wa.n == 5 && wb.n == 5);
    for (int i = 0; i < 5; i++)
        CHECK(wa.rev[i] == wb.rev[i]);
    CHECK(store_revision(a) == store_revision(b));
    /* Only the last 3 are kept: resume from the 2nd change works on both,
     * from the 1st it does not (a snapshot is needed). */
    struct changes ca = {0}, cb = {0};
    CHECK(store_changes_since(a, wa.rev[1], collect_change, &ca) == 0);
    CHECK(store_changes_since(b, wa.rev[1], collect_change, &cb) == 0);
    CHECK(ca.n == 3 && cb.n == 3 && ca.rev[0] == cb.rev[0] && ca.rev[2] == cb.rev[2]);
    CHECK(store_changes_since(a, wa.rev[0], collect_change, &ca) == -ERANGE);
    CHECK_CONTAINS(a->errmsg, "outside the history");
    finish(b, &lb);
    finish(a, &la);
}

static void test_compaction_resyncs(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    store *s = open_store("/t-compact", 100);
    REQUIRE(s);
    int64_t start = store_revision(s);
    /* Changes the store has not seen, then compacted away. */
    REQUIRE(ctl(NULL, 0, "put", "/t-compact/routes/1", "x", NULL) == 0);
    REQUIRE(ctl(NULL, 0, "put", "/t-compact/routes/2", "y", NULL) == 0);
    int64_t now = etcd_rev();
    REQUIRE(now > start + 1);
    char rev[32];
    snprintf(rev, sizeof(rev), "%" PRId64, now);
    REQUIRE(ctl(NULL, 0, "compact", rev, NULL) == 0);

    struct seen w = {0};
    store_set_watch(s, on_watch, &w);
    store_set_resync(s, on_resync, &w);
    char err[256];
    REQUIRE(store_start(s, &loop, err, sizeof(err)) == 0);
    run_until(&loop, &w.resyncs, 1, 5000);
    CHECK(w.resyncs == 1);
    CHECK(w.n == 0);
    CHECK(store_revision(s) == now);
    struct changes c = {0};
    CHECK(store_changes_since(s, start, collect_change, &c) == -ERANGE);
    CHECK(store_changes_since(s, now, collect_change, &c) == 0 && c.n == 0);
    struct collected l = {0};
    CHECK(store_list_at(s, "/apisix/routes/", store_revision(s), collect, &l, NULL) == 0);
    CHECK(l.n == 2);
    /* A revision before the compaction cannot be listed any more. */
    CHECK(store_list_at(s, "/apisix/routes/", start, collect, &l, NULL) == -ERANGE);

    /* The watch goes on after the reload. */
    REQUIRE(ctl(NULL, 0, "put", "/t-compact/routes/3", "z", NULL) == 0);
    run_until(&loop, &w.n, 1, 5000);
    CHECK(w.n == 1 && w.rev[0] == now + 1);
    finish(s, &loop);
}

static void test_lease_expiry(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    store *s = open_store("/t-lease", 100);
    REQUIRE(s);
    struct seen w = {0};
    store_set_watch(s, on_watch, &w);
    char err[256];
    REQUIRE(store_start(s, &loop, err, sizeof(err)) == 0);
    struct store_write tw = {.expect_mod_rev = STORE_ABSENT, .ttl = 2};
    CHECK(store_put_ex(s, "/apisix/routes/t", "temp", &tw, NULL) == 0);
    struct store_write bad = {.expect_mod_rev = STORE_ANY, .ttl = -1};
    CHECK(store_put_ex(s, "/apisix/routes/t2", "x", &bad, NULL) == -EINVAL);
    struct store_item it = {0};
    CHECK(store_get(s, "/apisix/routes/t", &it) == 0);
    store_item_clear(&it);
    /* etcd expires it (its minimum TTL may round 2 s up a little) and the
     * watch reports the delete. */
    run_until(&loop, &w.n, 2, 8000);
    REQUIRE(w.n == 2);
    CHECK(!w.del[0] && w.del[1]);
    CHECK_STREQ(w.key[1], "/apisix/routes/t");
    CHECK(store_get(s, "/apisix/routes/t", &it) == -ENOENT);
    finish(s, &loop);
}

static void test_endpoint_failover(void)
{
    /* The first endpoint refuses connections; calls and the watch use the
     * second. */
    int dead = free_port();
    char eps[160];
    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,%s", dead, url);
    uv_loop_t loop;
    uv_loop_init(&loop);
    store *s = open_at(eps, "/t-failover", 10, 5);
    REQUIRE(s);
    CHECK(store_revision(s) > 0);
    struct seen w = {0};
    store_set_watch(s, on_watch, &w);
    char err[256];
    REQUIRE(store_start(s, &loop, err, sizeof(err)) == 0);
    CHECK(store_put(s, "/apisix/routes/1", "v", STORE_ANY, NULL) == 0);
    struct store_item it = {0};
    CHECK(store_get(s, "/apisix/routes/1", &it) == 0);
    store_item_clear(&it);
    run_until(&loop, &w.n, 1, 5000);
    CHECK(w.n == 1);
    finish(s, &loop);

    /* Only dead endpoints: -EIO at once, naming them. */
    char eps2[160];
    snprintf(eps2, sizeof(eps2), "http://127.0.0.1:%d,http://127.0.0.1:%d/", dead, dead);
    s = open_at(eps2, "/t-failover", 10, 5);
    REQUIRE(s);
    CHECK(store_revision(s) == 0);
    CHECK(store_get(s, "/apisix/routes/1", &it) == -EIO);
    CHECK_CONTAINS(s->errmsg, "etcd: get: ");
    char want[64];
    snprintf(want, sizeof(want), "http://127.0.0.1:%d", dead);
    CHECK_CONTAINS(s->errmsg, want);
    store_close(s);
}

/* ---- a member that goes silent ------------------------------------------------- */

/* A TCP relay to the test's etcd that can freeze: frozen, it accepts,
 * reads and writes nothing, so its connections stay open and silent, which
 * is what a client sees of a SIGSTOP'd member, a frozen VM or a black-holed
 * network. A mock in the network, not in the store: the store is real. */
struct relay {
    int lfd;           /* listening socket */
    int port;          /* its port */
    int fds[64];       /* connected pairs: fds[2k] client, fds[2k+1] etcd */
    int n;             /* fds in use */
    pthread_t thread;  /* runs relay_main */
    atomic_int frozen; /* set by the test */
    atomic_int stop;   /* ends the thread */
};

static void relay_drop(struct relay *r, int k)
{
    close(r->fds[2 * k]);
    close(r->fds[2 * k + 1]);
    r->fds[2 * k] = r->fds[r->n - 2];
    r->fds[2 * k + 1] = r->fds[r->n - 1];
    r->n -= 2;
}

static void *relay_main(void *arg)
{
    struct relay *r = arg;
    while (!r->stop) {
        if (r->frozen) {
            usleep(5 * 1000);
            continue;
        }
        struct pollfd p[65];
        p[0] = (struct pollfd){.fd = r->lfd, .events = POLLIN};
        for (int i = 0; i < r->n; i++)
            p[i + 1] = (struct pollfd){.fd = r->fds[i], .events = POLLIN};
        if (poll(p, (nfds_t)r->n + 1, 20) <= 0 || r->frozen)
            continue;
        for (int i = r->n - 1; i >= 0; i--) {
            if (!(p[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char buf[16384];
            ssize_t got = read(r->fds[i], buf, sizeof(buf));
            int to = r->fds[i ^ 1];
            if (got <= 0 || send(to, buf, (size_t)got, MSG_NOSIGNAL) != got) {
                relay_drop(r, i / 2);
                break; /* the poll set changed */
            }
        }
        if ((p[0].revents & POLLIN) && r->n + 2 <= 64) {
            int c = accept(r->lfd, NULL, NULL);
            int u = socket(AF_INET, SOCK_STREAM, 0);
            struct sockaddr_in a = {.sin_family = AF_INET,
                                    .sin_port = htons((uint16_t)client_port),
                                    .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
            if (c >= 0 && u >= 0 && connect(u, (struct sockaddr *)&a, sizeof(a)) == 0) {
                r->fds[r->n++] = c;
                r->fds[r->n++] = u;
            } else {
                if (c >= 0)
                    close(c);
                if (u >= 0)
                    close(u);
            }
        }
    }
    return NULL;
}

static int relay_start(struct relay *r)
{
    memset(r, 0, sizeof(*r));
    r->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (r->lfd < 0 || bind(r->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        listen(r->lfd, 16) < 0 || getsockname(r->lfd, (struct sockaddr *)&a, &len) < 0)
        return -errno;
    r->port = ntohs(a.sin_port);
    return -pthread_create(&r->thread, NULL, relay_main, r);
}

static void relay_stop(struct relay *r)
{
    r->stop = 1;
    pthread_join(r->thread, NULL);
    while (r->n)
        relay_drop(r, 0);
    close(r->lfd);
}

/* A store on [relay, etcd] with timeout 1 s, its watch started. */
static store *open_silent(struct relay *r, const char *prefix, uv_loop_t *loop, struct seen *w)
{
    char eps[160];
    snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,%s", r->port, url);
    uv_loop_init(loop);
    store *s = open_at(eps, prefix, 100, 1.0);
    if (!s)
        return NULL;
    store_set_watch(s, on_watch, w);
    char err[256];
    if (store_start(s, loop, err, sizeof(err)) != 0) {
        store_close(s);
        return NULL;
    }
    return s;
}

/* Our own write while the first endpoint is silent: the call moves to the
 * second within its one timeout (each endpoint gets a share), and the watch,
 * which does not bring that write back, moves too. */
static void silent_own_write(struct relay *r)
{
    uv_loop_t loop;
    struct seen w = {0};
    store *s = open_silent(r, "/t-silent-own", &loop, &w);
    REQUIRE(s);
    REQUIRE(store_put(s, "/apisix/routes/1", "a", STORE_ANY, NULL) == 0);
    run_until(&loop, &w.n, 1, 5000);
    REQUIRE(w.n == 1); /* the watch is up, on the relay (the first endpoint) */
    r->frozen = 1;
    store_request_begin(s);
    int rc = store_put(s, "/apisix/routes/2", "b", STORE_ANY, NULL);
    store_request_end(s);
    CHECK(rc == 0);
    if (rc)
        fprintf(stderr, "  put with the first endpoint silent: %s\n", s->errmsg);
    run_until(&loop, &w.n, 2, 10000);
    CHECK(w.n >= 2);
    CHECK_STREQ(w.key[1], "/apisix/routes/2");
    finish(s, &loop);
}

/* Only others write: the watch's liveness check finds the silent member
 * and the watch moves on. */
static void silent_others_write(struct relay *r)
{
    uv_loop_t loop;
    struct seen w = {0};
    store *s = open_silent(r, "/t-silent-others", &loop, &w);
    REQUIRE(s);
    REQUIRE(ctl(NULL, 0, "put", "/t-silent-others/routes/1", "a", NULL) == 0);
    run_until(&loop, &w.n, 1, 5000);
    REQUIRE(w.n == 1); /* up, on the relay */
    r->frozen = 1;
    REQUIRE(ctl(NULL, 0, "put", "/t-silent-others/routes/2", "b", NULL) == 0);
    run_until(&loop, &w.n, 2, 10000);
    CHECK(w.n >= 2);
    CHECK_STREQ(w.key[1], "/apisix/routes/2");
    finish(s, &loop);
}

/* Opened and started while the first endpoint is silent: the revision is
 * read from the second, and the watch, never acknowledged, moves on. */
static void silent_from_the_start(struct relay *r)
{
    r->frozen = 1;
    uv_loop_t loop;
    struct seen w = {0};
    store *s = open_silent(r, "/t-silent-start", &loop, &w);
    REQUIRE(s);
    CHECK(store_revision(s) > 0);
    REQUIRE(ctl(NULL, 0, "put", "/t-silent-start/routes/1", "a", NULL) == 0);
    run_until(&loop, &w.n, 1, 10000);
    CHECK(w.n >= 1);
    CHECK_STREQ(w.key[0], "/apisix/routes/1");
    finish(s, &loop);
}

static void test_silent_member(void)
{
    /* The first endpoint stops answering but keeps its connections. A new
     * relay for each case: a frozen one holds requests that it would pass
     * on once thawed (as a SIGCONT'd etcd would run them). Bounds are
     * generous: failing means "never", not "slow". */
    void (*cases[])(struct relay *) = {silent_own_write, silent_others_write,
                                       silent_from_the_start};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct relay r; /* stopped here even when the case failed */
        REQUIRE(relay_start(&r) == 0);
        cases[i](&r);
        relay_stop(&r);
    }
}

static void test_bad_settings(void)
{
    store *s = NULL;
    char err[256];
    struct store_etcd_opts o = {.endpoints = "127.0.0.1:2379", .history = 10};
    CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == -EINVAL);
    CHECK_CONTAINS(err, "http:// or https://");
    o.endpoints = ",";
    CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == -EINVAL);
    o.endpoints = url;
    o.prefix = "noslash";
    CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == -EINVAL);
    o.prefix = NULL;
    o.tls_cert = "/nonexistent.pem";
    CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == -EINVAL);
    CHECK_CONTAINS(err, "cert and key");
    CHECK(s == NULL);
}

/* Waits until pid is really stopped (SIGSTOP takes a moment). */
static void wait_stopped(pid_t pid)
{
    char path[64], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    for (int i = 0; i < 200; i++) {
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = '\0';
        const char *p = strrchr(buf, ')');
        if (p && (p[2] == 'T' || p[2] == 't'))
            return;
        usleep(5 * 1000);
    }
}

static void test_etcd_down_and_back(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    store *s = open_at(url, "/t-down", 100, 1.5);
    REQUIRE(s);
    struct seen w = {0};
    store_set_watch(s, on_watch, &w);
    char err[256];
    REQUIRE(store_start(s, &loop, err, sizeof(err)) == 0);
    REQUIRE(store_put(s, "/apisix/routes/1", "before", STORE_ANY, NULL) == 0);
    run_until(&loop, &w.n, 1, 5000);
    REQUIRE(w.n == 1);

    /* etcd hangs: a call gives up within the timeout (bounded, not
     * measured: 1.5 s configured, 10 s would mean no bound at all). */
    kill(etcd_pid, SIGSTOP);
    wait_stopped(etcd_pid);
    struct store_item it = {0};
    uint64_t t0 = now_ms();
    store_request_begin(s);
    CHECK(store_get(s, "/apisix/routes/1", &it) == -EIO);
    /* The request's budget is spent: the next call fails at once. */
    CHECK(store_put(s, "/apisix/routes/2", "x", STORE_ANY, NULL) == -EIO);
    store_request_end(s);
    CHECK(now_ms() - t0 < 10000);
    CHECK_CONTAINS(s->errmsg, "etcd: ");
    kill(etcd_pid, SIGCONT);

    /* etcd dies: -EIO with the endpoint in the message. */
    etcd_kill();
    CHECK(store_get(s, "/apisix/routes/1", &it) == -EIO);
    CHECK_CONTAINS(s->errmsg, url);
    CHECK(store_put(s, "/apisix/routes/2", "x", STORE_ANY, NULL) == -EIO);
    /* Let the watch notice and retry a few times. */
    for (int i = 0; i < 60; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10 * 1000);
    }

    /* Back: calls work again and the watch resumes by itself, delivering
     * what others wrote. */
    REQUIRE(etcd_start() == 0);
    CHECK(store_get(s, "/apisix/routes/1", &it) == 0);
    store_item_clear(&it);
    REQUIRE(ctl(NULL, 0, "put", "/t-down/routes/3", "after", NULL) == 0);
    REQUIRE(store_put(s, "/apisix/routes/4", "mine", STORE_ANY, NULL) == 0);
    run_until(&loop, &w.n, 3, 8000);
    REQUIRE(w.n == 3);
    CHECK_STREQ(w.key[1], "/apisix/routes/3");
    CHECK_STREQ(w.key[2], "/apisix/routes/4");
    CHECK(w.rev[2] > w.rev[1] && w.rev[1] > w.rev[0]);
    struct changes c = {0};
    CHECK(store_changes_since(s, w.rev[0], collect_change, &c) == 0 && c.n == 2);
    finish(s, &loop);
}

static void test_unreachable_at_open_then_recovers(void)
{
    /* Opened while etcd is down: revision 0, the watch keeps trying, and
     * once etcd is up the store reloads (a resync) and follows. */
    etcd_kill();
    uv_loop_t loop;
    uv_loop_init(&loop);
    store *s = open_store("/t-late", 10);
    REQUIRE(s);
    CHECK(store_revision(s) == 0);
    struct seen w = {0};
    store_set_watch(s, on_watch, &w);
    store_set_resync(s, on_resync, &w);
    char err[256];
    REQUIRE(store_start(s, &loop, err, sizeof(err)) == 0);
    for (int i = 0; i < 30; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(10 * 1000);
    }
    REQUIRE(etcd_start() == 0);
    run_until(&loop, &w.resyncs, 1, 8000);
    CHECK(w.resyncs == 1);
    CHECK(store_revision(s) > 0);
    REQUIRE(store_put(s, "/apisix/routes/1", "v", STORE_ANY, NULL) == 0);
    run_until(&loop, &w.n, 1, 5000);
    CHECK(w.n == 1);
    finish(s, &loop);
}

static void test_authentication(void)
{
    /* Last: it turns etcd's authentication on (and off again). */
    REQUIRE(ctl(NULL, 0, "user", "add", "root:rootpw", NULL) == 0);
    REQUIRE(ctl(NULL, 0, "user", "grant-role", "root", "root", NULL) == 0);
    REQUIRE(ctl(NULL, 0, "auth", "enable", NULL) == 0);

    struct store_etcd_opts o = {.endpoints = url,
                                .prefix = "/t-auth",
                                .timeout = 5,
                                .user = "root",
                                .password = "rootpw",
                                .history = 10};
    char err[512] = "";
    store *s = NULL;
    int rc = store_etcd_open(&o, &s, err, sizeof(err));
    CHECK(rc == 0);
    if (rc != 0)
        fprintf(stderr, "  open with a user: %s\n", err);
    if (s) {
        uv_loop_t loop;
        uv_loop_init(&loop);
        struct seen w = {0};
        store_set_watch(s, on_watch, &w);
        REQUIRE(store_start(s, &loop, err, sizeof(err)) == 0);
        struct store_item it = {0};
        CHECK(store_put(s, "/apisix/routes/1", "v", STORE_ANY, NULL) == 0);
        CHECK(store_get(s, "/apisix/routes/1", &it) == 0);
        store_item_clear(&it);
        run_until(&loop, &w.n, 1, 5000);
        CHECK(w.n == 1);
        /* etcd forgets its tokens when authentication is switched off and on:
         * the store authenticates again by itself. */
        CHECK(ctl(NULL, 0, "--user=root:rootpw", "auth", "disable", NULL) == 0);
        CHECK(ctl(NULL, 0, "auth", "enable", NULL) == 0);
        CHECK(store_put(s, "/apisix/routes/2", "v2", STORE_ANY, NULL) == 0);
        CHECK(store_get(s, "/apisix/routes/2", &it) == 0);
        store_item_clear(&it);
        finish(s, &loop);
    }

    /* A wrong password is refused at open, with etcd's reason. */
    o.password = "wrong";
    s = NULL;
    CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == -EACCES);
    CHECK_CONTAINS(err, "authenticating as root");
    /* No user at all: refused at open too, with etcd's reason. */
    o.user = o.password = NULL;
    CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == -EACCES);
    CHECK_CONTAINS(err, "user name is empty");
    CHECK(ctl(NULL, 0, "--user=root:rootpw", "auth", "disable", NULL) == 0);
}

/* Makes a CA, a server certificate for 127.0.0.1 (usable as a client too:
 * etcd's gateway dials etcd with it) and a client certificate, in tmpdir. */
static int make_certs(void)
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "cd %s && "
             "printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' "
             "> srv.ext && printf 'extendedKeyUsage=clientAuth\n' > cli.ext && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout ca.key -out ca.pem -days 2 -subj /CN=airgw-test-ca && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout srv.key -out srv.csr -subj /CN=127.0.0.1 && "
             "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "-out srv.pem -days 2 -extfile srv.ext && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout cli.key -out cli.csr -subj /CN=airgw && "
             "openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "-out cli.pem -days 2 -extfile cli.ext",
             tmpdir);
    char quiet[4200];
    snprintf(quiet, sizeof(quiet), "(%s) > %s/openssl.log 2>&1", cmd, tmpdir);
    return system(quiet) == 0 ? 0 : -1;
}

static void test_tls_with_client_certificates(void)
{
    REQUIRE(make_certs() == 0);
    int cport = free_port(), pport = free_port();
    char curls[64], purls[64], cluster[96], data[256], log[256], f[4][256];
    snprintf(curls, sizeof(curls), "https://127.0.0.1:%d", cport);
    snprintf(purls, sizeof(purls), "http://127.0.0.1:%d", pport);
    snprintf(cluster, sizeof(cluster), "tls=%s", purls);
    snprintf(data, sizeof(data), "%s/etcd-tls", tmpdir);
    snprintf(log, sizeof(log), "%s/etcd-tls.log", tmpdir);
    const char *names[4] = {"ca.pem", "srv.pem", "srv.key", "cli.pem"};
    for (int i = 0; i < 4; i++)
        snprintf(f[i], sizeof(f[i]), "%s/%s", tmpdir, names[i]);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(ETCD_BIN, "etcd", "--name", "tls", "--data-dir", data, "--listen-client-urls", curls,
              "--advertise-client-urls", curls, "--listen-peer-urls", purls,
              "--initial-advertise-peer-urls", purls, "--initial-cluster", cluster, "--cert-file",
              f[1], "--key-file", f[2], "--trusted-ca-file", f[0], "--client-cert-auth",
              "--log-level", "error", (char *)NULL);
        _exit(127);
    }
    char cli_key[256];
    snprintf(cli_key, sizeof(cli_key), "%s/cli.key", tmpdir);
    struct store_etcd_opts o = {.endpoints = curls,
                                .prefix = "/t-tls",
                                .timeout = 5,
                                .tls_cert = f[3],
                                .tls_key = cli_key,
                                .tls_ca = f[0],
                                .tls_verify = 1,
                                .history = 10};
    /* Wait for it: the store answers once etcd does. */
    store *s = NULL;
    char err[512] = "";
    for (int i = 0; i < 100; i++) {
        if (store_etcd_open(&o, &s, err, sizeof(err)) == 0 && store_revision(s) > 0)
            break;
        if (s)
            store_close(s);
        s = NULL;
        usleep(50 * 1000);
    }
    CHECK(s != NULL);
    if (s) {
        uv_loop_t loop;
        uv_loop_init(&loop);
        struct seen w = {0};
        store_set_watch(s, on_watch, &w);
        CHECK(store_start(s, &loop, err, sizeof(err)) == 0);
        CHECK(store_put(s, "/apisix/routes/1", "over tls", STORE_ANY, NULL) == 0);
        struct store_item it = {0};
        CHECK(store_get(s, "/apisix/routes/1", &it) == 0);
        CHECK_STREQ(it.value, "over tls");
        store_item_clear(&it);
        run_until(&loop, &w.n, 1, 5000);
        CHECK(w.n == 1);
        finish(s, &loop);

        /* Without our CA, etcd's certificate is not trusted. */
        o.tls_ca = NULL;
        s = NULL;
        CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == 0);
        if (s) {
            CHECK(store_get(s, "/apisix/routes/1", &it) == -EIO);
            CHECK_CONTAINS(s->errmsg, "certificate");
            store_close(s);
        }
        /* Without a client certificate etcd refuses us. */
        o.tls_ca = f[0];
        o.tls_cert = o.tls_key = NULL;
        s = NULL;
        CHECK(store_etcd_open(&o, &s, err, sizeof(err)) == 0);
        if (s) {
            CHECK(store_get(s, "/apisix/routes/1", &it) == -EIO);
            CHECK_CONTAINS(s->errmsg, curls);
            store_close(s);
        }
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    client_port = free_port();
    peer_port = free_port();
    while (peer_port == client_port)
        peer_port = free_port();
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", client_port);
    if (access(ETCD_BIN, X_OK) == 0 && etcd_start() != 0)
        fprintf(stderr, "  etcd did not start on %s\n", url);

    RUN(test_etcd_is_there);
    if (etcd_pid > 0) {
        RUN(test_bad_settings);
        RUN(test_put_get_list_delete);
        RUN(test_many_keys_list_pages);
        RUN(test_create_only_and_cas);
        RUN(test_guards);
        RUN(test_watch_in_order_from_every_writer);
        RUN(test_two_control_planes_same_revisions);
        RUN(test_compaction_resyncs);
        RUN(test_lease_expiry);
        RUN(test_endpoint_failover);
        RUN(test_silent_member);
        RUN(test_etcd_down_and_back);
        RUN(test_unreachable_at_open_then_recovers);
        RUN(test_authentication);
        RUN(test_tls_with_client_certificates);
    }
    etcd_kill();
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    curl_global_cleanup();
    return check_summary();
}
