/*
 * shm_limits: see shm_limits.h. Every change of an entry is one CAS on its
 * state word; the other words are written only by the process that holds the
 * entry's busy mark (a claim) or are advisory (expires).
 */
#include "shm_limits.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LIMITS_MAGIC 0x6c696d31u /* "lim1" */
#define SLOT_MASK (SHM_LIMITS_SLOTS - 1)
#define TICK_NS 10000000ull              /* count windows: 10 ms ticks */
#define GRACE_MS 1000ull                 /* an expired slot is reused after this */
#define BUSY_HI 0xffffffff00000000ull    /* state while a claim is in progress: BUSY_HI | pid */
#define STALE_MS (100ull * 86400 * 1000) /* a count entry untouched this long starts afresh */
#define NS_PER_MS 1000000ull

_Static_assert((SHM_LIMITS_SLOTS & (SHM_LIMITS_SLOTS - 1)) == 0, "slots: a power of two");

struct entry {
    _Atomic uint64_t key;     /* keyed hash with the kind in the top bits; 0: never used */
    _Atomic uint64_t state;   /* the kind's value (shm_limits.h) */
    _Atomic uint64_t aux;     /* sliding: (previous window index : 32, its count : 32) */
    _Atomic uint64_t expires; /* ms since creation after which another key may take it */
};

struct header {
    uint32_t magic;
    uint32_t nworkers;     /* rows of held[] */
    uint64_t epoch_ns;     /* CLOCK_MONOTONIC at creation */
    uint64_t size;         /* bytes of the region */
    _Atomic uint64_t full; /* operations that found the table full */
    uint64_t pad[4];
};

struct shm_limits {
    int fd;                 /* memfd */
    size_t size;            /* mapping length */
    struct header *h;       /* the mapping */
    struct entry *e;        /* SHM_LIMITS_SLOTS entries */
    _Atomic uint32_t *held; /* [nworkers][SHM_LIMITS_SLOTS]: conn holds per worker */
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static size_t region_size(uint32_t nworkers)
{
    return sizeof(struct header) + sizeof(struct entry) * SHM_LIMITS_SLOTS +
           sizeof(uint32_t) * SHM_LIMITS_SLOTS * (size_t)nworkers;
}

static struct shm_limits *map(int fd, size_t size)
{
    struct shm_limits *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        free(l);
        return NULL;
    }
    l->fd = fd;
    l->size = size;
    l->h = p;
    l->e = (struct entry *)((char *)p + sizeof(struct header));
    l->held = (_Atomic uint32_t *)(l->e + SHM_LIMITS_SLOTS);
    return l;
}

struct shm_limits *shm_limits_create(int nworkers)
{
    if (nworkers < 1)
        nworkers = 1;
    if (nworkers > SHM_LIMITS_MAX_WORKERS)
        nworkers = SHM_LIMITS_MAX_WORKERS;
    size_t size = region_size((uint32_t)nworkers);
    int fd = memfd_create("airgw-limits", MFD_CLOEXEC);
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, (off_t)size) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    struct shm_limits *l = map(fd, size);
    if (!l) {
        int e = errno;
        close(fd);
        errno = e;
        return NULL;
    }
    l->h->nworkers = (uint32_t)nworkers;
    l->h->epoch_ns = mono_ns();
    l->h->size = size;
    atomic_thread_fence(memory_order_release);
    l->h->magic = LIMITS_MAGIC;
    return l;
}

struct shm_limits *shm_limits_attach(int fd)
{
    struct header h;
    if (fd < 0 || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || h.magic != LIMITS_MAGIC ||
        h.nworkers < 1 || h.nworkers > SHM_LIMITS_MAX_WORKERS || h.size != region_size(h.nworkers))
        return NULL;
    return map(fd, h.size);
}

int shm_limits_fd(const struct shm_limits *l)
{
    return l->fd;
}

void shm_limits_free(struct shm_limits *l)
{
    if (!l)
        return;
    munmap(l->h, l->size);
    close(l->fd);
    free(l);
}

uint64_t shm_limits_now(const struct shm_limits *l)
{
    uint64_t n = mono_ns();
    return n > l->h->epoch_ns ? n - l->h->epoch_ns : 0;
}

uint64_t shm_limits_full_count(const struct shm_limits *l)
{
    return atomic_load_explicit(&l->h->full, memory_order_relaxed);
}

/* FNV-1a over the parts (each ended by a 0xff that no UTF-8 text holds),
 * then a 64-bit finaliser (splitmix64) so the low bits pick slots well. */
uint64_t shm_limits_key(enum shm_limits_kind kind, const char *owner, const char *plugin,
                        const char *key, size_t keylen)
{
    uint64_t h = 1469598103934665603ull;
    const char *parts[2] = {owner ? owner : "", plugin ? plugin : ""};
    for (int i = 0; i < 2; i++) {
        for (const char *s = parts[i]; *s; s++)
            h = (h ^ (unsigned char)*s) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull;
    }
    for (size_t i = 0; key && i < keylen; i++)
        h = (h ^ (unsigned char)key[i]) * 1099511628211ull;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    h = (h & ~(3ull << 62)) | ((uint64_t)kind << 62);
    if ((h & ~(3ull << 62)) == 0)
        h |= 1;
    return h;
}

static enum shm_limits_kind kind_of(uint64_t key)
{
    return (enum shm_limits_kind)(key >> 62);
}

static int is_busy(uint64_t s)
{
    return (s & BUSY_HI) == BUSY_HI;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Waits while entry e carries a busy mark; returns the state seen after it.
 * A mark whose process is gone is cleared (state 0, reusable at once). */
static uint64_t wait_not_busy(struct entry *e)
{
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    for (unsigned spins = 0; is_busy(s); spins++) {
        if (spins < 1000) {
            cpu_relax();
        } else {
            sched_yield();
            if (spins % 1000 == 999) {
                pid_t pid = (pid_t)(s & 0xffffffffu);
                if (kill(pid, 0) < 0 && errno == ESRCH) {
                    uint64_t expect = s;
                    if (atomic_compare_exchange_strong(&e->state, &expect, 0))
                        atomic_store_explicit(&e->expires, 0, memory_order_release);
                }
            }
        }
        s = atomic_load_explicit(&e->state, memory_order_acquire);
    }
    return s;
}

/* A slot another key may take: never used, or past its expiry plus grace
 * (and, for connections, holding none). */
static int reusable(struct entry *e, uint64_t k, uint64_t s, uint64_t now_ms)
{
    if (is_busy(s))
        return 0;
    if (k == 0)
        return 1;
    uint64_t exp = atomic_load_explicit(&e->expires, memory_order_acquire);
    if (exp == UINT64_MAX || exp + GRACE_MS > now_ms)
        return 0;
    if (kind_of(k) == SHM_LIMITS_CONN && (s & 0xffffffffu) != 0)
        return 0;
    return 1;
}

/* The index of key's entry, claiming a free or expired slot for it when it
 * has none. -ENOSPC when the probe sequence holds neither. */
static int slot_of(struct shm_limits *l, uint64_t key, uint64_t now)
{
    uint64_t now_ms = now / NS_PER_MS;
    uint32_t home = (uint32_t)(key & SLOT_MASK);
    for (int attempt = 0; attempt < 64; attempt++) {
        int cand = -1;
        for (uint32_t i = 0; i < SHM_LIMITS_PROBES; i++) {
            uint32_t idx = (home + i) & SLOT_MASK;
            struct entry *e = &l->e[idx];
            uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
            if (k == key)
                return (int)idx;
            uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
            if (k == 0) {
                if (is_busy(s)) {
                    /* Being claimed: perhaps for our key. Look again. */
                    wait_not_busy(e);
                    cand = -2;
                    break;
                }
                if (cand == -1)
                    cand = (int)idx;
                break;
            }
            if (cand == -1 && reusable(e, k, s, now_ms))
                cand = (int)idx;
        }
        if (cand == -2)
            continue;
        if (cand < 0) {
            atomic_fetch_add_explicit(&l->h->full, 1, memory_order_relaxed);
            return -ENOSPC;
        }
        struct entry *e = &l->e[cand];
        uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
        uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
        if (!reusable(e, k, s, now_ms))
            continue;
        uint64_t busy = BUSY_HI | ((uint64_t)getpid() & 0xffffffffu);
        if (!atomic_compare_exchange_strong(&e->state, &s, busy))
            continue;
        /* Ours: no other process changes this entry until the state is
         * published again. A fresh connection entry gets a new generation
         * so a stale hold from the previous key cannot match it. */
        uint64_t fresh = 0;
        if (kind_of(key) == SHM_LIMITS_CONN)
            fresh = ((((s >> 32) + 1) & 0x7fffffffu) | 1u) << 32;
        atomic_store_explicit(&e->expires, UINT64_MAX, memory_order_relaxed);
        atomic_store_explicit(&e->aux, 0, memory_order_relaxed);
        atomic_store_explicit(&e->key, key, memory_order_release);
        atomic_store_explicit(&e->state, fresh, memory_order_release);
        return cand;
    }
    /* Lost every race: a pathological storm. Treat like a full table. */
    atomic_fetch_add_explicit(&l->h->full, 1, memory_order_relaxed);
    return -ENOSPC;
}

/* Loads e's state for key: waits out a claim; 1 when the entry no longer
 * holds key (look it up again). */
static int load_state(struct entry *e, uint64_t key, uint64_t *s)
{
    *s = wait_not_busy(e);
    return atomic_load_explicit(&e->key, memory_order_acquire) != key;
}

/* Key's entry (claimed for it when it has none) in *e and its state, a
 * claim waited out, in *s; looks again when another key took the entry
 * over meanwhile. The entry's index, or -ENOSPC. */
static int entry_of(struct shm_limits *l, uint64_t key, uint64_t now, struct entry **e, uint64_t *s)
{
    for (;;) {
        int idx = slot_of(l, key, now);
        if (idx < 0)
            return idx;
        *e = &l->e[idx];
        if (!load_state(*e, key, s))
            return idx;
    }
}

/* Fills a count verdict; 0. */
static int count_verdict(struct shm_limits_verdict *v, bool admitted, uint64_t remaining,
                         uint64_t reset_s)
{
    v->admitted = admitted;
    v->remaining = remaining;
    v->reset_s = reset_s;
    return 0;
}

static void set_expires(struct entry *e, uint64_t ms)
{
    atomic_store_explicit(&e->expires, ms, memory_order_release);
}

/* Raises e's expiry to at least ms. Called before the CAS that makes the
 * state need it, so a reuser that sees the new state also sees the expiry;
 * a CAS that then fails leaves a later expiry than needed, which is
 * harmless (the slot is reused a little later). */
static void raise_expires(struct entry *e, uint64_t ms)
{
    uint64_t cur = atomic_load_explicit(&e->expires, memory_order_acquire);
    while ((cur < ms || cur == UINT64_MAX) && !atomic_compare_exchange_weak(&e->expires, &cur, ms))
        ;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/* Fixed window anchored at its first request. */
static int count_fixed(struct shm_limits *l, uint64_t key, uint64_t count, uint64_t window_ms,
                       uint64_t now, struct shm_limits_verdict *v)
{
    uint64_t win_ticks = div_up(window_ms * NS_PER_MS, TICK_NS);
    uint32_t now_tick = (uint32_t)(now / TICK_NS);
    if (now_tick == 0xffffffffu)
        now_tick--; /* a state with all-ones high bits reads as a busy mark */
    uint64_t now_ms = now / NS_PER_MS;
    for (;;) {
        struct entry *e;
        uint64_t s;
        int idx = entry_of(l, key, now, &e, &s);
        if (idx < 0)
            return idx;
        uint32_t start = (uint32_t)(s >> 32), n = (uint32_t)s;
        uint64_t exp = atomic_load_explicit(&e->expires, memory_order_acquire);
        uint32_t elapsed = now_tick - start;
        if ((int32_t)elapsed < 0)
            elapsed = 0; /* another process read the clock a bit later */
        int roll = n == 0 || elapsed >= win_ticks || (exp != UINT64_MAX && now_ms > exp + STALE_MS);
        uint64_t ns;
        if (roll) {
            start = now_tick;
            elapsed = 0;
            ns = ((uint64_t)start << 32) | 1u;
            raise_expires(e, now_ms + win_ticks * (TICK_NS / NS_PER_MS));
        } else if (n >= count) {
            return count_verdict(v, false, 0,
                                 div_up((win_ticks - elapsed) * TICK_NS, 1000000000ull));
        } else {
            ns = s + 1;
        }
        if (!atomic_compare_exchange_weak(&e->state, &s, ns))
            continue;
        return count_verdict(v, true, count - (uint32_t)ns,
                             div_up((win_ticks - elapsed) * TICK_NS, 1000000000ull));
    }
}

/* Sliding window counter: windows aligned on multiples of window_ms; the
 * previous window's count weighs by the part of it still inside the
 * sliding window. */
static int count_sliding(struct shm_limits *l, uint64_t key, uint64_t count, uint64_t window_ms,
                         uint64_t now, struct shm_limits_verdict *v)
{
    uint64_t now_ms = now / NS_PER_MS;
    uint32_t w = (uint32_t)(now_ms / window_ms);
    uint64_t into = now_ms - (uint64_t)w * window_ms; /* ms into window w */
    for (;;) {
        struct entry *e;
        uint64_t s;
        int idx = entry_of(l, key, now, &e, &s);
        if (idx < 0)
            return idx;
        uint32_t sw = (uint32_t)(s >> 32), cur = (uint32_t)s;
        if (sw != w) {
            if ((int32_t)(w - sw) < 0) {
                /* Another process read the clock a bit later and
                 * rolled: count in its window, at its start. */
                w = sw;
                into = 0;
                continue;
            }
            /* Roll to window w; the winner records the old window. */
            uint64_t ns = (uint64_t)w << 32;
            raise_expires(e, ((uint64_t)w + 2) * window_ms);
            if (!atomic_compare_exchange_strong(&e->state, &s, ns))
                continue;
            uint64_t prev = sw == w - 1 ? cur : 0;
            atomic_store_explicit(&e->aux, ((uint64_t)(w - 1) << 32) | prev, memory_order_release);
            continue;
        }
        /* The previous window's count; a roll in progress elsewhere may
         * not have recorded it yet: wait a little for it. */
        uint64_t a = atomic_load_explicit(&e->aux, memory_order_acquire);
        for (int spin = 0; w > 0 && (uint32_t)(a >> 32) != w - 1 && spin < 100000; spin++) {
            if (atomic_load_explicit(&e->state, memory_order_acquire) != s)
                break;
            if (spin > 1000)
                sched_yield();
            cpu_relax();
            a = atomic_load_explicit(&e->aux, memory_order_acquire);
        }
        uint64_t prev = w > 0 && (uint32_t)(a >> 32) == w - 1 ? (uint32_t)a : 0;
        uint64_t weighted = prev * (window_ms - into) / window_ms;
        uint64_t est = weighted + cur;
        if (est >= count)
            return count_verdict(v, false, 0, div_up(window_ms - into, 1000));
        raise_expires(e, ((uint64_t)w + 2) * window_ms);
        if (!atomic_compare_exchange_weak(&e->state, &s, s + 1))
            continue;
        return count_verdict(v, true, count - est - 1, div_up(window_ms - into, 1000));
    }
}

int shm_limits_count(struct shm_limits *l, uint64_t key, uint64_t count, uint64_t window_ms,
                     uint64_t now, struct shm_limits_verdict *v)
{
    memset(v, 0, sizeof(*v));
    if (!l || count == 0 || window_ms == 0 || key == 0)
        return -EINVAL;
    if (count > 0xfffffffeu)
        count = 0xfffffffeu;
    if (window_ms > (uint64_t)INT32_MAX * (TICK_NS / NS_PER_MS))
        window_ms = (uint64_t)INT32_MAX * (TICK_NS / NS_PER_MS);
    if (kind_of(key) == SHM_LIMITS_SLIDING)
        return count_sliding(l, key, count, window_ms, now, v);
    if (kind_of(key) != SHM_LIMITS_COUNT)
        return -EINVAL;
    return count_fixed(l, key, count, window_ms, now, v);
}

/* The leaky bucket as a GCRA: state = when the last admitted request is
 * served (ns since creation; 0: never). A request at t is served at
 * max(last + T, t) with T = 1/rate; it waits that minus t, and is refused
 * when that wait is more than burst * T (lua-resty-limit-traffic's
 * "excess > burst"). */
int shm_limits_req(struct shm_limits *l, uint64_t key, double rate, double burst, uint64_t now,
                   struct shm_limits_verdict *v)
{
    memset(v, 0, sizeof(*v));
    if (!l || key == 0 || kind_of(key) != SHM_LIMITS_REQ || !(rate > 0) || !(burst >= 0) ||
        !isfinite(rate) || !isfinite(burst))
        return -EINVAL;
    double t_ns = 1e9 / rate;
    if (t_ns < 1)
        t_ns = 1;
    if (t_ns > 1e18)
        t_ns = 1e18;
    uint64_t period = (uint64_t)llround(t_ns);
    double lim = burst * (double)period;
    uint64_t limit = lim > 9e18 ? UINT64_MAX / 4 : (uint64_t)llround(lim);
    if (now == 0)
        now = 1; /* 0 means "never" in the state */
    for (;;) {
        struct entry *e;
        uint64_t s;
        int idx = entry_of(l, key, now, &e, &s);
        if (idx < 0)
            return idx;
        uint64_t serve = s == 0 || s + period <= now ? now : s + period;
        uint64_t delay = serve - now;
        if (delay > limit) {
            v->admitted = false;
            return 0;
        }
        raise_expires(e, (serve + period) / NS_PER_MS + 1);
        if (!atomic_compare_exchange_weak(&e->state, &s, serve))
            continue;
        v->admitted = true;
        v->delay_ns = delay;
        return 0;
    }
}

static _Atomic uint32_t *held_of(struct shm_limits *l, int worker, uint32_t slot)
{
    if (worker < 0 || (uint32_t)worker >= l->h->nworkers || slot >= SHM_LIMITS_SLOTS)
        return NULL;
    return &l->held[(size_t)worker * SHM_LIMITS_SLOTS + slot];
}

int shm_limits_conn_acquire(struct shm_limits *l, uint64_t key, int worker, uint64_t max,
                            uint64_t now, bool *admitted, uint64_t *held,
                            struct shm_limits_hold *hold)
{
    *admitted = false;
    *held = 0;
    if (!l || key == 0 || kind_of(key) != SHM_LIMITS_CONN)
        return -EINVAL;
    if (max > 0xfffffffeu)
        max = 0xfffffffeu;
    for (;;) {
        struct entry *e;
        uint64_t s;
        int idx = entry_of(l, key, now, &e, &s);
        if (idx < 0)
            return idx;
        uint32_t n = (uint32_t)s;
        if (n + 1ull > max) {
            *held = n;
            return 0;
        }
        /* Not reusable while it holds any: say so before the count
         * shows it, so a reuser that sees n == 0 is stopped by the CAS. */
        set_expires(e, UINT64_MAX);
        if (!atomic_compare_exchange_weak(&e->state, &s, s + 1))
            continue;
        _Atomic uint32_t *h = held_of(l, worker, (uint32_t)idx);
        if (h)
            atomic_fetch_add_explicit(h, 1, memory_order_relaxed);
        *admitted = true;
        *held = n + 1ull;
        hold->slot = (uint32_t)idx;
        hold->gen = (uint32_t)(s >> 32);
        return 0;
    }
}

/* Takes n holds off entry slot of generation gen (never below zero). */
static void conn_sub(struct shm_limits *l, uint32_t slot, uint32_t gen, uint32_t n, uint64_t now_ms)
{
    struct entry *e = &l->e[slot];
    uint64_t s = atomic_load_explicit(&e->state, memory_order_acquire);
    for (;;) {
        if (is_busy(s) || (uint32_t)(s >> 32) != gen ||
            kind_of(atomic_load(&e->key)) != SHM_LIMITS_CONN)
            return; /* the entry moved on: nothing of ours is in it */
        uint32_t cur = (uint32_t)s;
        uint32_t take = n < cur ? n : cur;
        if (take == 0)
            return;
        uint64_t ns = s - take;
        if (atomic_compare_exchange_weak(&e->state, &s, ns)) {
            if ((uint32_t)ns == 0)
                set_expires(e, now_ms);
            return;
        }
    }
}

void shm_limits_conn_release(struct shm_limits *l, const struct shm_limits_hold *hold, int worker,
                             uint64_t now)
{
    if (!l || !hold || hold->slot >= SHM_LIMITS_SLOTS)
        return;
    _Atomic uint32_t *h = held_of(l, worker, hold->slot);
    if (h) {
        uint32_t c = atomic_load_explicit(h, memory_order_relaxed);
        while (c > 0 && !atomic_compare_exchange_weak(h, &c, c - 1))
            ;
    }
    conn_sub(l, hold->slot, hold->gen, 1, now / NS_PER_MS);
}

void shm_limits_worker_gone(struct shm_limits *l, int worker)
{
    if (!l || worker < 0 || (uint32_t)worker >= l->h->nworkers)
        return;
    uint64_t now_ms = shm_limits_now(l) / NS_PER_MS;
    for (uint32_t i = 0; i < SHM_LIMITS_SLOTS; i++) {
        _Atomic uint32_t *h = held_of(l, worker, i);
        if (atomic_load_explicit(h, memory_order_relaxed) == 0)
            continue;
        uint32_t n = atomic_exchange(h, 0);
        uint64_t s = atomic_load_explicit(&l->e[i].state, memory_order_acquire);
        if (n && !is_busy(s))
            conn_sub(l, i, (uint32_t)(s >> 32), n, now_ms);
    }
}
