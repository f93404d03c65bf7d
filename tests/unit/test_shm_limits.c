/*
 * test_shm_limits: the node-wide limit counters. Includes the .c to reach
 * the entries (busy marks left by a dead process). Processes are real
 * fork()ed children sharing one memfd mapping, as workers do.
 */
#include "../../dataplane/shm_limits.c"

#include <sys/wait.h>

#include "check.h"

#define MS 1000000ull
#define SEC 1000000000ull

static uint64_t ckey(const char *k)
{
    return shm_limits_key(SHM_LIMITS_COUNT, "route/1", "limit-count", k, strlen(k));
}

/* The count key of owner "r", plugin "p" and key PREFIX<i>. */
static uint64_t rkey(const char *prefix, unsigned i)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%s%u", prefix, i);
    return shm_limits_key(SHM_LIMITS_COUNT, "r", "p", buf, (size_t)n);
}

/* Counters shared with fork()ed children; NULL when none. */
static _Atomic uint64_t *shared_counters(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Waits for the n children; how many did not exit 0. */
static int wait_children(const pid_t *pids, int n)
{
    int bad = 0;
    for (int i = 0; i < n; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        bad += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    return bad;
}

static void test_key_hash(void)
{
    uint64_t a = shm_limits_key(SHM_LIMITS_COUNT, "route/1", "limit-count", "1.2.3.4", 7);
    uint64_t b = shm_limits_key(SHM_LIMITS_COUNT, "route/2", "limit-count", "1.2.3.4", 7);
    uint64_t c = shm_limits_key(SHM_LIMITS_REQ, "route/1", "limit-count", "1.2.3.4", 7);
    uint64_t d = shm_limits_key(SHM_LIMITS_COUNT, "route/1", "limit-count", "1.2.3.4", 7);
    /* "ab"+"c" must not meet "a"+"bc". */
    uint64_t e = shm_limits_key(SHM_LIMITS_COUNT, "ab", "c", "", 0);
    uint64_t f = shm_limits_key(SHM_LIMITS_COUNT, "a", "bc", "", 0);
    CHECK(a != 0 && a != b && a != c && a == d && e != f);
    CHECK(kind_of(c) == SHM_LIMITS_REQ && kind_of(a) == SHM_LIMITS_COUNT);
}

static void test_fixed_window(void)
{
    struct shm_limits *l = shm_limits_create(1);
    REQUIRE(l);
    struct shm_limits_verdict v;
    uint64_t k = ckey("a"), t0 = 5 * SEC;
    for (uint64_t i = 0; i < 3; i++) {
        REQUIRE(shm_limits_count(l, k, 3, 2000, t0 + i * MS, &v) == 0);
        CHECK(v.admitted);
        CHECK(v.remaining == 2 - i);
        CHECK(v.reset_s == 2);
    }
    REQUIRE(shm_limits_count(l, k, 3, 2000, t0 + 1500 * MS, &v) == 0);
    CHECK(!v.admitted && v.remaining == 0 && v.reset_s == 1);
    /* Another key has its own count. */
    REQUIRE(shm_limits_count(l, ckey("b"), 3, 2000, t0 + 1500 * MS, &v) == 0);
    CHECK(v.admitted && v.remaining == 2);
    /* The window is anchored at its first request: it ends at t0 + 2 s. */
    REQUIRE(shm_limits_count(l, k, 3, 2000, t0 + 1990 * MS, &v) == 0);
    CHECK(!v.admitted);
    REQUIRE(shm_limits_count(l, k, 3, 2000, t0 + 2000 * MS, &v) == 0);
    CHECK(v.admitted && v.remaining == 2 && v.reset_s == 2);
    /* The 10 ms tick whose number is all ones (after 497 days) must not
     * leave a state that reads as a busy mark: the next request would wait
     * for ever on "process 1". */
    uint64_t late = 0xffffffffull * 10 * MS;
    REQUIRE(shm_limits_count(l, ckey("late"), 3, 2000, late, &v) == 0);
    CHECK(v.admitted);
    REQUIRE(shm_limits_count(l, ckey("late"), 3, 2000, late + MS, &v) == 0);
    CHECK(v.admitted && v.remaining == 1);
    /* Bad arguments. */
    CHECK(shm_limits_count(l, k, 0, 2000, t0, &v) == -EINVAL);
    CHECK(shm_limits_count(l, k, 3, 0, t0, &v) == -EINVAL);
    CHECK(shm_limits_count(l, shm_limits_key(SHM_LIMITS_REQ, "x", "y", "z", 1), 3, 10, t0, &v) ==
          -EINVAL);
    shm_limits_free(l);
}

static void test_sliding_window(void)
{
    struct shm_limits *l = shm_limits_create(1);
    REQUIRE(l);
    struct shm_limits_verdict v;
    uint64_t k = shm_limits_key(SHM_LIMITS_SLIDING, "route/1", "limit-count", "a", 1);
    uint64_t admitted = 0;
    /* Window 10 (10 s .. 11 s): 10 admitted, then none. */
    for (int i = 0; i < 15; i++) {
        REQUIRE(shm_limits_count(l, k, 10, 1000, 10 * SEC + 100 * MS, &v) == 0);
        admitted += v.admitted;
    }
    CHECK(admitted == 10);
    CHECK(v.reset_s == 1);
    /* Half way into window 11 the previous window still weighs 10 * 0.5 =
     * 5: five more. */
    admitted = 0;
    for (int i = 0; i < 15; i++) {
        REQUIRE(shm_limits_count(l, k, 10, 1000, 11 * SEC + 500 * MS, &v) == 0);
        admitted += v.admitted;
    }
    CHECK(admitted == 5);
    /* 80% into window 12: window 11 had 5, weighing 1 (5 * 0.2): nine. */
    admitted = 0;
    for (int i = 0; i < 15; i++) {
        REQUIRE(shm_limits_count(l, k, 10, 1000, 12 * SEC + 800 * MS, &v) == 0);
        if (i == 0)
            CHECK(v.remaining == 8);
        admitted += v.admitted;
    }
    CHECK(admitted == 9);
    /* A skipped window counts nothing. */
    admitted = 0;
    for (int i = 0; i < 15; i++) {
        REQUIRE(shm_limits_count(l, k, 10, 1000, 20 * SEC, &v) == 0);
        admitted += v.admitted;
    }
    CHECK(admitted == 10);
    shm_limits_free(l);
}

static void test_leaky_bucket(void)
{
    struct shm_limits *l = shm_limits_create(1);
    REQUIRE(l);
    struct shm_limits_verdict v;
    uint64_t k = shm_limits_key(SHM_LIMITS_REQ, "route/1", "limit-req", "a", 1);
    uint64_t t = 3 * SEC;
    /* rate 10/s, burst 2: one now, two delayed by 100 and 200 ms, then
     * refused (lua-resty-limit-traffic's excess > burst). */
    REQUIRE(shm_limits_req(l, k, 10, 2, t, &v) == 0);
    CHECK(v.admitted && v.delay_ns == 0);
    REQUIRE(shm_limits_req(l, k, 10, 2, t, &v) == 0);
    CHECK(v.admitted && v.delay_ns == 100 * MS);
    REQUIRE(shm_limits_req(l, k, 10, 2, t, &v) == 0);
    CHECK(v.admitted && v.delay_ns == 200 * MS);
    REQUIRE(shm_limits_req(l, k, 10, 2, t, &v) == 0);
    CHECK(!v.admitted);
    /* 100 ms later one request leaked out: room for one more. */
    REQUIRE(shm_limits_req(l, k, 10, 2, t + 100 * MS, &v) == 0);
    CHECK(v.admitted && v.delay_ns == 200 * MS);
    REQUIRE(shm_limits_req(l, k, 10, 2, t + 100 * MS, &v) == 0);
    CHECK(!v.admitted);
    /* Drained: no delay. */
    REQUIRE(shm_limits_req(l, k, 10, 2, t + 2 * SEC, &v) == 0);
    CHECK(v.admitted && v.delay_ns == 0);
    /* Half a period after that: waits the other half. */
    REQUIRE(shm_limits_req(l, k, 10, 2, t + 2 * SEC + 50 * MS, &v) == 0);
    CHECK(v.admitted && v.delay_ns == 50 * MS);
    /* burst 0: only at the rate. */
    uint64_t k0 = shm_limits_key(SHM_LIMITS_REQ, "route/1", "limit-req", "b", 1);
    REQUIRE(shm_limits_req(l, k0, 2, 0, t, &v) == 0);
    CHECK(v.admitted);
    REQUIRE(shm_limits_req(l, k0, 2, 0, t + 100 * MS, &v) == 0);
    CHECK(!v.admitted);
    REQUIRE(shm_limits_req(l, k0, 2, 0, t + 500 * MS, &v) == 0);
    CHECK(v.admitted && v.delay_ns == 0);
    CHECK(shm_limits_req(l, k0, 0, 1, t, &v) == -EINVAL);
    CHECK(shm_limits_req(l, k0, 1, -1, t, &v) == -EINVAL);
    shm_limits_free(l);
}

static void test_conn(void)
{
    struct shm_limits *l = shm_limits_create(2);
    REQUIRE(l);
    uint64_t k = shm_limits_key(SHM_LIMITS_CONN, "route/1", "limit-conn", "a", 1);
    bool ok;
    uint64_t held;
    struct shm_limits_hold h1, h2, h3;
    REQUIRE(shm_limits_conn_acquire(l, k, 0, 2, SEC, &ok, &held, &h1) == 0);
    CHECK(ok && held == 1);
    REQUIRE(shm_limits_conn_acquire(l, k, 1, 2, SEC, &ok, &held, &h2) == 0);
    CHECK(ok && held == 2);
    REQUIRE(shm_limits_conn_acquire(l, k, 0, 2, SEC, &ok, &held, &h3) == 0);
    CHECK(!ok && held == 2);
    shm_limits_conn_release(l, &h1, 0, SEC);
    REQUIRE(shm_limits_conn_acquire(l, k, 0, 2, SEC, &ok, &held, &h3) == 0);
    CHECK(ok && held == 2);
    /* Worker 1 dies holding one: the master gives it back. */
    shm_limits_worker_gone(l, 1);
    REQUIRE(shm_limits_conn_acquire(l, k, 0, 2, SEC, &ok, &held, &h1) == 0);
    CHECK(ok && held == 2);
    /* A second release of what is gone does not go below zero. */
    shm_limits_conn_release(l, &h2, 1, SEC);
    shm_limits_conn_release(l, &h1, 0, SEC);
    shm_limits_conn_release(l, &h3, 0, SEC);
    shm_limits_conn_release(l, &h3, 0, SEC);
    uint64_t s = atomic_load(&l->e[h1.slot].state);
    CHECK((uint32_t)s == 0);
    shm_limits_free(l);
}

/* N processes hammer one key: together they admit exactly count. */
static void test_processes_share_count(void)
{
    enum { N = 6, TRIES = 3000, COUNT = 5000 };
    struct shm_limits *l = shm_limits_create(N);
    REQUIRE(l);
    _Atomic uint64_t *tally = shared_counters(4096);
    REQUIRE(tally);
    uint64_t kf = ckey("shared"), ks = shm_limits_key(SHM_LIMITS_SLIDING, "r", "p", "s", 1);
    uint64_t kc = shm_limits_key(SHM_LIMITS_CONN, "r", "p", "c", 1);
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        REQUIRE(pids[i] >= 0);
        if (pids[i] == 0) {
            uint64_t a = 0, b = 0, over = 0;
            for (int j = 0; j < TRIES; j++) {
                struct shm_limits_verdict v;
                if (shm_limits_count(l, kf, COUNT, 600000, shm_limits_now(l), &v) == 0 &&
                    v.admitted)
                    a++;
                if (shm_limits_count(l, ks, COUNT, 600000, shm_limits_now(l), &v) == 0 &&
                    v.admitted)
                    b++;
                bool ok;
                uint64_t held;
                struct shm_limits_hold h;
                if (shm_limits_conn_acquire(l, kc, i, 3, shm_limits_now(l), &ok, &held, &h) == 0 &&
                    ok) {
                    if (held > 3)
                        over++;
                    shm_limits_conn_release(l, &h, i, shm_limits_now(l));
                }
            }
            atomic_fetch_add(&tally[0], a);
            atomic_fetch_add(&tally[1], b);
            atomic_fetch_add(&tally[2], over);
            _exit(0);
        }
    }
    CHECK(wait_children(pids, N) == 0);
    CHECK(atomic_load(&tally[0]) == COUNT);
    /* Sliding windows are aligned: a test started near a boundary of a
     * 10-minute window may see the previous (empty) one; still exact. */
    CHECK(atomic_load(&tally[1]) == COUNT);
    CHECK(atomic_load(&tally[2]) == 0);
    uint64_t s = atomic_load(&l->e[slot_of(l, kc, shm_limits_now(l))].state);
    CHECK((uint32_t)s == 0);
    munmap((void *)tally, 4096);
    shm_limits_free(l);
}

/* N processes on one key over many short windows (synthetic clock, a
 * barrier between windows): each window admits exactly count, fixed or
 * sliding never more. */
static void test_processes_windows(void)
{
    enum { N = 4, COUNT = 50, WINDOWS = 40 };
    struct shm_limits *l = shm_limits_create(N);
    REQUIRE(l);
    _Atomic uint64_t *per = shared_counters(8192);
    REQUIRE(per);
    _Atomic uint64_t *sper = per + 256, *arrived = per + 512;
    uint64_t k = ckey("w"), ks = shm_limits_key(SHM_LIMITS_SLIDING, "r", "p", "w", 1);
    pid_t pids[N];
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        REQUIRE(pids[i] >= 0);
        if (pids[i] == 0) {
            for (uint64_t w = 0; w < WINDOWS; w++) {
                for (int j = 0; j < 200; j++) {
                    struct shm_limits_verdict v;
                    uint64_t now = (1000 + w) * 10 * MS + (uint64_t)j * 10 * MS / 200;
                    if (shm_limits_count(l, k, COUNT, 10, now, &v) == 0 && v.admitted)
                        atomic_fetch_add(&per[w], 1);
                    if (shm_limits_count(l, ks, COUNT, 10, now, &v) == 0 && v.admitted)
                        atomic_fetch_add(&sper[w], 1);
                }
                atomic_fetch_add(arrived, 1);
                while (atomic_load(arrived) < (w + 1) * N)
                    sched_yield();
            }
            _exit(0);
        }
    }
    CHECK(wait_children(pids, N) == 0);
    uint64_t exact = 0, over = 0;
    for (int w = 0; w < WINDOWS; w++) {
        exact += atomic_load(&per[w]) == COUNT;
        over += atomic_load(&sper[w]) > COUNT;
    }
    CHECK(exact == WINDOWS);
    CHECK(over == 0);
    munmap((void *)per, 8192);
    shm_limits_free(l);
}

/* Expired slots are reused; a full table says -ENOSPC, never blocks. */
static void test_table_full_and_reuse(void)
{
    struct shm_limits *l = shm_limits_create(1);
    REQUIRE(l);
    struct shm_limits_verdict v;
    uint64_t t = 10 * SEC;
    int rc = 0;
    unsigned i, ok = 0;
    for (i = 0; i < 2 * SHM_LIMITS_SLOTS; i++) {
        rc = shm_limits_count(l, rkey("k", i), 5, 1000, t, &v);
        if (rc < 0)
            break;
        ok++;
    }
    CHECK(rc == -ENOSPC);
    CHECK(ok > SHM_LIMITS_SLOTS / 2); /* linear probing fills most of it first */
    CHECK(ok <= SHM_LIMITS_SLOTS);
    CHECK(shm_limits_full_count(l) >= 1);
    /* The keys already in still count. */
    REQUIRE(shm_limits_count(l, rkey("k", 0), 5, 1000, t, &v) == 0);
    CHECK(v.admitted && v.remaining == 3);
    /* After the windows end (plus the grace) new keys take their slots. */
    unsigned later = 0;
    for (unsigned j = 0; j < 1000; j++) {
        if (shm_limits_count(l, rkey("new", j), 5, 1000, t + 3 * SEC, &v) == 0 && v.admitted)
            later++;
    }
    CHECK(later == 1000);
    shm_limits_free(l);
}

/* A process killed in the middle of a claim leaves a busy mark; the next
 * one to meet it takes it over instead of waiting forever. */
static void test_dead_claimer(void)
{
    struct shm_limits *l = shm_limits_create(1);
    REQUIRE(l);
    uint64_t k = ckey("dead");
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        int idx = slot_of(l, k, shm_limits_now(l));
        atomic_store(&l->e[idx].state, BUSY_HI | (uint64_t)getpid());
        _exit(0);
    }
    waitpid(pid, NULL, 0);
    struct shm_limits_verdict v;
    REQUIRE(shm_limits_count(l, k, 2, 1000, shm_limits_now(l), &v) == 0);
    CHECK(v.admitted && v.remaining == 1);
    shm_limits_free(l);
}

static void test_attach(void)
{
    struct shm_limits *l = shm_limits_create(3);
    REQUIRE(l);
    struct shm_limits *m = shm_limits_attach(shm_limits_fd(l));
    REQUIRE(m);
    struct shm_limits_verdict v;
    CHECK(shm_limits_count(l, ckey("z"), 2, 1000, SEC, &v) == 0 && v.remaining == 1);
    CHECK(shm_limits_count(m, ckey("z"), 2, 1000, SEC, &v) == 0 && v.remaining == 0);
    /* m shares l's fd: unmap it without closing. */
    munmap(m->h, m->size);
    free(m);
    int fd = memfd_create("not-limits", MFD_CLOEXEC);
    CHECK(ftruncate(fd, 4096) == 0);
    CHECK(shm_limits_attach(fd) == NULL);
    CHECK(shm_limits_attach(-1) == NULL);
    close(fd);
    shm_limits_free(l);
}

int main(void)
{
    RUN(test_key_hash);
    RUN(test_fixed_window);
    RUN(test_sliding_window);
    RUN(test_leaky_bucket);
    RUN(test_conn);
    RUN(test_processes_share_count);
    RUN(test_processes_windows);
    RUN(test_table_full_and_reuse);
    RUN(test_dead_claimer);
    RUN(test_attach);
    return check_summary();
}
