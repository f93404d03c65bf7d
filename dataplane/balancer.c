/*
 * balancer: see balancer.h.
 *
 * Layout. b->nodes keeps the order of the upstream's "nodes". Nodes of
 * weight > 0 are split into priority groups, highest priority first, and
 * each group has its own picker state, as APISIX builds one picker per
 * priority (apisix/balancer/priority.lua). A pick stamps the tried nodes,
 * then takes the first group that still has an available node (not down,
 * not tried); each group counts its up and tried nodes, so skipping an
 * exhausted group is O(1) and a group that is entered always yields a node.
 *
 * roundrobin. nginx's smooth weighted round robin: every available peer adds
 * its weight to its current weight, the largest current wins and loses the
 * total. That sequence is periodic with period W = sum of weights (scaled
 * down by their gcd) and gives node i exactly w_i slots per period, so it is
 * computed once into a table and a pick reads the next slot: O(1). A down or
 * tried node's slot is skipped, which keeps the ratio among the others exact
 * but is a little less smooth than nginx (which re-runs the sums without
 * it). Equal weights need no table: a pick cycles over the up members, O(1).
 * When the table would be too big (W > max(4096, 32 n), or W x n > 8M steps
 * to build: many nodes of unequal weights), or while more than half of the
 * group's weight is down (the walk would get long), a pick takes the
 * earliest virtual deadline (picks + 1/2) / weight from a heap instead:
 * O(log n), smooth, and exactly w_i picks per W, but not nginx's exact order.
 *
 * chash. A sorted ring of 64-bit points, weight x 160 per node (ketama, as
 * nginx's hash module with "consistent"); point k of a node hashes its
 * "host:port" and k, so a node's points never depend on the other nodes and
 * removing one node of N moves only its own ~1/N of keys. When a ring would
 * exceed 1M points, points are scaled down to weight x 1M / total (at least
 * 1 per node). A key goes to the first point >= hash(key); if that node is
 * down or tried the walk goes on along the ring to the next available one,
 * so a key comes back to its node when the node is up again.
 *
 * least_conn. A binary min-heap per group of the nodes that are up, ordered
 * by (active + 1) / weight (APISIX's score), then by the pick sequence, so
 * equal scores rotate instead of piling on one node. Tried nodes are skipped
 * by a walk of the heap that only descends below tried nodes: O(tried).
 *
 * ewma. APISIX's: ewma = ewma * w + rtt * (1 - w), w = exp(-dt / 10 s); a
 * node's score is its ewma decayed to now the same way (a quiet node looks
 * faster as time passes, so it is tried again). A pick draws two distinct
 * available nodes at random and takes the lower score. Weights are not used
 * (as APISIX), except that weight 0 is never picked.
 */
#include "balancer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHASH_POINTS_PER_WEIGHT 160
#define CHASH_MAX_POINTS (1u << 20)
#define RR_TABLE_MIN 4096
#define RR_TABLE_PER_NODE 32
#define RR_TABLE_BUILD_STEPS (8u << 20)
#define EWMA_DECAY_MS 10000.0
#define HOST_MAX 255
#define HEAP_WALK_MAX 256 /* heap_best's stack; more tried nodes: a scan */

#define GOLDEN64 0x9e3779b97f4a7c15ull

enum rr_mode {
    RR_IDENTITY, /* equal weights: cycle over the up members */
    RR_TABLE,    /* nginx's sequence: slot i is member sched[i] */
    RR_DEADLINE, /* earliest virtual deadline in the heap */
};

struct node {
    struct balancer_node pub; /* what balancer_node() shows */
    int group;                /* index in b->groups; -1 for weight 0 */
    int up_pos;               /* index in the group's up[] while up, else -1 */
    int heap_pos;             /* index in the group's heap[] while in it, else -1 */
    uint32_t tried_epoch;     /* == b->epoch while the current pick skips it */
    uint64_t lc_seq;          /* least_conn: b->lc_seq when last picked */
    uint64_t rr_picks;        /* roundrobin deadline heap: picks so far */
    double ewma;              /* ewma: smoothed response time, ms */
    uint64_t ewma_at;         /* ewma: clock at the last report */
    bool ewma_set;            /* ewma: a report arrived */
};

struct group {
    int32_t priority;     /* of every member */
    int *members;         /* node indexes, in node order */
    int n;                /* members */
    int *up;              /* the n_up members not down, any order */
    int n_up;             /* members not down */
    uint64_t w_total;     /* sum of members' weights */
    uint64_t w_up;        /* sum of up members' weights */
    uint32_t tried_epoch; /* tried_up/tried_all are valid when == b->epoch */
    int tried_up;         /* members tried by this pick that are up */
    int tried_all;        /* members tried by this pick */
    /* roundrobin */
    enum rr_mode rr_mode; /* how slots are found */
    uint16_t *sched;      /* RR_TABLE: member index per slot */
    uint32_t sched_len;   /* slots in one period */
    uint32_t cursor;      /* next slot */
    /* chash */
    uint64_t *ring_hash; /* sorted point hashes */
    uint32_t *ring_node; /* node index per point */
    uint32_t npoints;    /* points on the ring */
    /* least_conn; roundrobin but RR_IDENTITY */
    int *heap;  /* up node indexes, min-heap by node_less */
    int heap_n; /* entries in heap */
};

struct balancer {
    enum balancer_type type;       /* upstream "type" */
    enum balancer_hash_on hash_on; /* upstream "hash_on" */
    char *hash_key;                /* upstream "key", or NULL */
    char scheme[8];                /* upstream "scheme" */
    int retries;                   /* upstream "retries", or n - 1 */
    bool fail_open;                /* pick down nodes when none is up */
    struct node *nodes;            /* in upstream order */
    int n;                         /* nodes */
    struct group *groups;          /* by priority, highest first */
    int ngroups;                   /* groups */
    int n_up;                      /* nodes of weight > 0 not down */
    uint32_t epoch;                /* stamp of the current pick's tried set */
    bool has_tried;                /* the current pick skips some node */
    uint64_t lc_seq;               /* least_conn pick counter */
    uint64_t rng;                  /* ewma random state (splitmix64) */
    balancer_clock_fn clock;       /* ewma clock */
    void *clock_ud;                /* its argument */
};

/* ---- hashing ---------------------------------------------------------- */

static inline uint64_t mix64(uint64_t x)
{
    /* splitmix64's finaliser: a bijection with full avalanche. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t balancer_hash(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0x6a09e667f3bcc909ull ^ ((uint64_t)len * GOLDEN64);
    /* Bytes are read little-endian one by one so that every host agrees. */
    while (len >= 8) {
        uint64_t w = 0;
        for (int i = 7; i >= 0; i--)
            w = (w << 8) | p[i];
        h = mix64(h ^ w) + GOLDEN64;
        p += 8;
        len -= 8;
    }
    uint64_t w = 0;
    for (size_t i = len; i > 0; i--)
        w = (w << 8) | p[i - 1];
    h = mix64(h ^ w ^ ((uint64_t)len << 59));
    return mix64(h);
}

static uint64_t rng_next(struct balancer *b)
{
    b->rng += GOLDEN64;
    return mix64(b->rng);
}

static uint64_t default_clock(void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- availability ----------------------------------------------------- */

static inline bool is_tried(const struct balancer *b, int i)
{
    return b->has_tried && b->nodes[i].tried_epoch == b->epoch;
}

static inline bool avail(const struct balancer *b, int i, bool ignore_down)
{
    return (ignore_down || !b->nodes[i].pub.down) && !is_tried(b, i);
}

static void stamp_tried(struct balancer *b, int i)
{
    if (i < 0 || i >= b->n)
        return;
    struct node *nd = &b->nodes[i];
    if (nd->tried_epoch == b->epoch)
        return;
    nd->tried_epoch = b->epoch;
    if (nd->group < 0)
        return;
    struct group *g = &b->groups[nd->group];
    if (g->tried_epoch != b->epoch) {
        g->tried_epoch = b->epoch;
        g->tried_up = 0;
        g->tried_all = 0;
    }
    g->tried_all++;
    if (!nd->pub.down)
        g->tried_up++;
}

/* Starts a pick: stamps the tried set with a fresh epoch. */
static void begin_pick(struct balancer *b, const uint64_t *mask, const int *tried, size_t ntried)
{
    uint64_t m = mask ? *mask : 0;
    b->has_tried = m != 0 || ntried > 0;
    if (!b->has_tried)
        return;
    if (++b->epoch == 0) {
        /* Wrapped: clear old stamps so none matches by accident. */
        for (int i = 0; i < b->n; i++)
            b->nodes[i].tried_epoch = 0;
        for (int g = 0; g < b->ngroups; g++)
            b->groups[g].tried_epoch = 0;
        b->epoch = 1;
    }
    while (m) {
        stamp_tried(b, __builtin_ctzll(m));
        m &= m - 1;
    }
    for (size_t k = 0; k < ntried; k++)
        stamp_tried(b, tried[k]);
}

static int group_avail(const struct balancer *b, const struct group *g, bool ignore_down)
{
    int n = ignore_down ? g->n : g->n_up;
    if (b->has_tried && g->tried_epoch == b->epoch)
        n -= ignore_down ? g->tried_all : g->tried_up;
    return n;
}

/* ---- node heap (least_conn, roundrobin's deadline mode) --------------- */

/* least_conn order: lower (active + 1) / weight (APISIX's score), then
 * picked longer ago. */
static int lc_cmp(const struct node *x, const struct node *y)
{
    uint64_t l = ((uint64_t)x->pub.active + 1) * y->pub.weight;
    uint64_t r = ((uint64_t)y->pub.active + 1) * x->pub.weight;
    if (l != r)
        return l < r ? -1 : 1;
    return x->lc_seq < y->lc_seq ? -1 : x->lc_seq > y->lc_seq;
}

/* roundrobin deadline order: earlier virtual deadline (picks + 1/2) /
 * weight. 128-bit products, as picks only grow. */
static int vd_cmp(const struct node *x, const struct node *y)
{
    unsigned __int128 l = (unsigned __int128)(2 * x->rr_picks + 1) * y->pub.weight;
    unsigned __int128 r = (unsigned __int128)(2 * y->rr_picks + 1) * x->pub.weight;
    return l < r ? -1 : l > r;
}

/* Node a goes before node c; ties go to the lower index, so the order is
 * total and the same in every worker. */
static bool node_less(const struct balancer *b, int a, int c)
{
    const struct node *x = &b->nodes[a], *y = &b->nodes[c];
    int r = b->type == BALANCER_LEAST_CONN ? lc_cmp(x, y) : vd_cmp(x, y);
    return r ? r < 0 : a < c;
}

static void heap_set(struct balancer *b, struct group *g, int pos, int i)
{
    g->heap[pos] = i;
    b->nodes[i].heap_pos = pos;
}

static void heap_up(struct balancer *b, struct group *g, int pos)
{
    int i = g->heap[pos];
    while (pos > 0) {
        int parent = (pos - 1) / 2;
        if (!node_less(b, i, g->heap[parent]))
            break;
        heap_set(b, g, pos, g->heap[parent]);
        pos = parent;
    }
    heap_set(b, g, pos, i);
}

static void heap_down(struct balancer *b, struct group *g, int pos)
{
    int i = g->heap[pos];
    for (;;) {
        int c = 2 * pos + 1;
        if (c >= g->heap_n)
            break;
        if (c + 1 < g->heap_n && node_less(b, g->heap[c + 1], g->heap[c]))
            c++;
        if (!node_less(b, g->heap[c], i))
            break;
        heap_set(b, g, pos, g->heap[c]);
        pos = c;
    }
    heap_set(b, g, pos, i);
}

/* Restores the heap after node i's key changed; no-op if i is not in one. */
static void heap_fix(struct balancer *b, int i)
{
    struct node *nd = &b->nodes[i];
    if (nd->heap_pos < 0)
        return;
    struct group *g = &b->groups[nd->group];
    heap_up(b, g, nd->heap_pos);
    heap_down(b, g, nd->heap_pos);
}

static void heap_insert(struct balancer *b, struct group *g, int i)
{
    int pos = g->heap_n++;
    heap_set(b, g, pos, i);
    heap_up(b, g, pos);
}

static void heap_remove(struct balancer *b, struct group *g, int i)
{
    int pos = b->nodes[i].heap_pos;
    if (pos < 0)
        return;
    b->nodes[i].heap_pos = -1;
    int last = g->heap[--g->heap_n];
    if (pos == g->heap_n)
        return;
    heap_set(b, g, pos, last);
    heap_up(b, g, pos);
    heap_down(b, g, b->nodes[last].heap_pos);
}

/*
 * The first available member by node_less. The heap holds the up members:
 * its root unless tried; else the best untried node is one whose heap
 * ancestors are all tried, so the walk descends only below tried nodes,
 * O(tried). Down nodes (fail open) are not in the heap: a scan, O(n).
 */
static int heap_best(const struct balancer *b, const struct group *g, bool ignore_down)
{
    int best = -1;
    if (!ignore_down && g->heap_n == 0)
        return -1;
    if (!ignore_down && !is_tried(b, g->heap[0]))
        return g->heap[0];
    if (!ignore_down) {
        int stack[HEAP_WALK_MAX], sp = 0;
        stack[sp++] = 0;
        while (sp > 0) {
            int pos = stack[--sp];
            int i = g->heap[pos];
            if (!is_tried(b, i)) {
                if (best < 0 || node_less(b, i, best))
                    best = i;
                continue;
            }
            if (sp + 2 > HEAP_WALK_MAX) {
                best = -1; /* too many tried for the walk: scan */
                goto scan;
            }
            for (int c = 2 * pos + 1; c <= 2 * pos + 2 && c < g->heap_n; c++)
                stack[sp++] = c;
        }
        return best;
    }
scan:
    for (int m = 0; m < g->n; m++) {
        int i = g->members[m];
        if (avail(b, i, ignore_down) && (best < 0 || node_less(b, i, best)))
            best = i;
    }
    return best;
}

/* ---- roundrobin ------------------------------------------------------- */

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int rr_build(struct balancer *b, struct group *g)
{
    uint64_t gcd = 0, total = 0;
    bool equal = true;
    uint32_t w0 = b->nodes[g->members[0]].pub.weight;
    for (int m = 0; m < g->n; m++) {
        uint32_t w = b->nodes[g->members[m]].pub.weight;
        gcd = gcd64(gcd, w);
        equal = equal && w == w0;
    }
    if (equal) {
        g->rr_mode = RR_IDENTITY;
        return 0;
    }
    /* Every other mode keeps the deadline heap. */
    g->heap = malloc((size_t)g->n * sizeof(*g->heap));
    if (!g->heap)
        return -ENOMEM;
    for (int m = 0; m < g->n; m++)
        heap_insert(b, g, g->members[m]);
    for (int m = 0; m < g->n; m++)
        total += b->nodes[g->members[m]].pub.weight / gcd;
    uint64_t limit = (uint64_t)RR_TABLE_PER_NODE * (uint64_t)g->n;
    if (limit < RR_TABLE_MIN)
        limit = RR_TABLE_MIN;
    if (total > limit || total * (uint64_t)g->n > RR_TABLE_BUILD_STEPS) {
        g->rr_mode = RR_DEADLINE;
        return 0;
    }
    /* nginx's smooth weighted round robin, one period of it. */
    int64_t *cur = calloc((size_t)g->n, sizeof(*cur));
    g->sched = malloc((size_t)total * sizeof(*g->sched));
    if (!cur || !g->sched) {
        free(cur);
        return -ENOMEM;
    }
    for (uint64_t t = 0; t < total; t++) {
        int best = -1;
        for (int m = 0; m < g->n; m++) {
            cur[m] += (int64_t)(b->nodes[g->members[m]].pub.weight / gcd);
            if (best < 0 || cur[m] > cur[best])
                best = m;
        }
        cur[best] -= (int64_t)total;
        g->sched[t] = (uint16_t)best;
    }
    free(cur);
    g->rr_mode = RR_TABLE;
    g->sched_len = (uint32_t)total;
    return 0;
}

static int rr_pick(struct balancer *b, struct group *g, bool ignore_down)
{
    if (g->rr_mode == RR_IDENTITY) {
        /* Equal weights: cycle over the up members; the caller checked
         * that one of them is not tried. */
        const int *list = ignore_down ? g->members : g->up;
        uint32_t len = (uint32_t)(ignore_down ? g->n : g->n_up);
        for (uint32_t step = 0; step < len; step++) {
            uint32_t slot = g->cursor++ % len;
            if (!is_tried(b, list[slot]))
                return list[slot];
        }
        return -1;
    }
    if (g->rr_mode == RR_TABLE && (ignore_down || 2 * g->w_up >= g->w_total)) {
        /* Each member has w slots per period, so the walk ends within a
         * period, in about w_total / w_up steps. */
        for (uint32_t step = 0; step < g->sched_len; step++) {
            uint32_t slot = g->cursor;
            g->cursor = slot + 1 == g->sched_len ? 0 : slot + 1;
            int i = g->members[g->sched[slot]];
            if (avail(b, i, ignore_down))
                return i;
        }
        return -1;
    }
    int best = heap_best(b, g, ignore_down);
    if (best >= 0) {
        b->nodes[best].rr_picks++;
        heap_fix(b, best);
    }
    return best;
}

/* A node back up joins the deadline heap at the current virtual time
 * rather than with the deadlines it missed, which would be a burst. */
static void rr_rejoin(struct balancer *b, struct group *g, int i)
{
    if (g->heap_n == 0)
        return;
    const struct node *r = &b->nodes[g->heap[0]];
    struct node *nd = &b->nodes[i];
    /* Least p with (2p + 1) / w_i >= (2 p_r + 1) / w_r. */
    unsigned __int128 num = (unsigned __int128)(2 * r->rr_picks + 1) * nd->pub.weight;
    if (num <= r->pub.weight)
        return;
    num -= r->pub.weight;
    unsigned __int128 den = 2 * (unsigned __int128)r->pub.weight;
    uint64_t p = (uint64_t)((num + den - 1) / den);
    if (p > nd->rr_picks)
        nd->rr_picks = p;
}

/* ---- chash ------------------------------------------------------------ */

struct point {
    uint64_t hash; /* position on the ring */
    uint32_t node; /* node index */
};

static int point_cmp(const void *pa, const void *pb, void *arg)
{
    const struct node *nodes = arg;
    const struct point *a = pa, *b = pb;
    if (a->hash != b->hash)
        return a->hash < b->hash ? -1 : 1;
    /* Equal hashes (2^-64 per pair): order by address so that every worker
     * and every data plane builds the same ring. */
    int c = strcmp(nodes[a->node].pub.addr, nodes[b->node].pub.addr);
    if (c)
        return c;
    return a->node < b->node ? -1 : a->node > b->node;
}

static int chash_build(struct balancer *b, struct group *g)
{
    uint64_t wsum = 0;
    for (int m = 0; m < g->n; m++)
        wsum += b->nodes[g->members[m]].pub.weight;
    bool scale = wsum * CHASH_POINTS_PER_WEIGHT > CHASH_MAX_POINTS;
    uint64_t npoints = 0;
    for (int m = 0; m < g->n; m++) {
        uint64_t w = b->nodes[g->members[m]].pub.weight;
        uint64_t p = scale ? w * CHASH_MAX_POINTS / wsum : w * CHASH_POINTS_PER_WEIGHT;
        npoints += p ? p : 1;
    }
    struct point *pts = malloc((size_t)npoints * sizeof(*pts));
    g->ring_hash = malloc((size_t)npoints * sizeof(*g->ring_hash));
    g->ring_node = malloc((size_t)npoints * sizeof(*g->ring_node));
    if (!pts || !g->ring_hash || !g->ring_node) {
        free(pts);
        return -ENOMEM;
    }
    size_t k = 0;
    for (int m = 0; m < g->n; m++) {
        int i = g->members[m];
        const struct node *nd = &b->nodes[i];
        uint64_t w = nd->pub.weight;
        uint64_t p = scale ? w * CHASH_MAX_POINTS / wsum : w * CHASH_POINTS_PER_WEIGHT;
        if (!p)
            p = 1;
        uint64_t base = balancer_hash(nd->pub.addr, strlen(nd->pub.addr));
        for (uint64_t j = 0; j < p; j++) {
            pts[k].hash = mix64(base + (j + 1) * GOLDEN64);
            pts[k].node = (uint32_t)i;
            k++;
        }
    }
    qsort_r(pts, (size_t)npoints, sizeof(*pts), point_cmp, b->nodes);
    for (size_t j = 0; j < npoints; j++) {
        g->ring_hash[j] = pts[j].hash;
        g->ring_node[j] = pts[j].node;
    }
    free(pts);
    g->npoints = (uint32_t)npoints;
    return 0;
}

static int chash_pick(struct balancer *b, struct group *g, uint64_t h, bool ignore_down)
{
    /* First point >= h, wrapping to the first point. */
    uint32_t lo = 0, hi = g->npoints;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (g->ring_hash[mid] < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint32_t pos = lo == g->npoints ? 0 : lo;
    for (uint32_t step = 0; step < g->npoints; step++) {
        int i = (int)g->ring_node[pos];
        if (avail(b, i, ignore_down))
            return i;
        pos = pos + 1 == g->npoints ? 0 : pos + 1;
    }
    return -1;
}

/* ---- least_conn ------------------------------------------------------- */

static int lc_pick(struct balancer *b, struct group *g, bool ignore_down)
{
    int best = heap_best(b, g, ignore_down);
    if (best >= 0) {
        b->nodes[best].lc_seq = ++b->lc_seq;
        heap_fix(b, best);
    }
    return best;
}

/* ---- ewma ------------------------------------------------------------- */

static double ewma_score(const struct node *nd, uint64_t now)
{
    if (!nd->ewma_set)
        return 0;
    double dt = now > nd->ewma_at ? (double)(now - nd->ewma_at) : 0;
    return nd->ewma * exp(-dt / EWMA_DECAY_MS);
}

static int ewma_pick(struct balancer *b, struct group *g, bool ignore_down)
{
    int a = -1, c = -1;
    if (!ignore_down && !(b->has_tried && g->tried_epoch == b->epoch)) {
        /* Nothing in this group is tried: draw from the up list. */
        uint32_t n = (uint32_t)g->n_up;
        uint32_t x = (uint32_t)(rng_next(b) % n);
        a = g->up[x];
        if (n > 1) {
            uint32_t y = (uint32_t)(rng_next(b) % (n - 1));
            c = g->up[y >= x ? y + 1 : y];
        }
    } else {
        /* Reservoir sampling of two distinct available members. */
        uint64_t seen = 0;
        for (int m = 0; m < g->n; m++) {
            int i = g->members[m];
            if (!avail(b, i, ignore_down))
                continue;
            seen++;
            if (seen == 1) {
                a = i;
            } else if (seen == 2) {
                c = i;
            } else {
                uint64_t r = rng_next(b) % seen;
                if (r == 0)
                    a = i;
                else if (r == 1)
                    c = i;
            }
        }
    }
    if (a < 0 || c < 0)
        return a;
    uint64_t now = b->clock(b->clock_ud);
    return ewma_score(&b->nodes[c], now) < ewma_score(&b->nodes[a], now) ? c : a;
}

/* ---- picking ---------------------------------------------------------- */

static int pick_pass(struct balancer *b, uint64_t h, bool ignore_down)
{
    for (int gi = 0; gi < b->ngroups; gi++) {
        struct group *g = &b->groups[gi];
        if (group_avail(b, g, ignore_down) <= 0)
            continue;
        switch (b->type) {
        case BALANCER_ROUNDROBIN:
            return rr_pick(b, g, ignore_down);
        case BALANCER_CHASH:
            return chash_pick(b, g, h, ignore_down);
        case BALANCER_LEAST_CONN:
            return lc_pick(b, g, ignore_down);
        case BALANCER_EWMA:
            return ewma_pick(b, g, ignore_down);
        }
    }
    return -1;
}

int balancer_pick_ex(struct balancer *b, const char *key, size_t keylen, const uint64_t *tried_mask,
                     const int *tried, size_t ntried)
{
    if (!b)
        return -1;
    begin_pick(b, tried_mask, tried, ntried);
    uint64_t h = 0;
    if (b->type == BALANCER_CHASH)
        h = balancer_hash(key ? key : "", key ? keylen : 0);
    int r = pick_pass(b, h, false);
    if (r < 0 && b->fail_open && b->n_up == 0)
        r = pick_pass(b, h, true);
    b->has_tried = false;
    return r;
}

int balancer_pick(struct balancer *b, const char *key, size_t keylen, const uint64_t *tried_mask)
{
    return balancer_pick_ex(b, key, keylen, tried_mask, NULL, 0);
}

/* ---- state reports ---------------------------------------------------- */

int balancer_set_down(struct balancer *b, int idx, bool down)
{
    if (!b || idx < 0 || idx >= b->n)
        return -EINVAL;
    struct node *nd = &b->nodes[idx];
    if (nd->pub.down == down)
        return 0;
    nd->pub.down = down;
    if (nd->group < 0)
        return 0;
    struct group *g = &b->groups[nd->group];
    if (down) {
        int last = g->up[--g->n_up];
        g->up[nd->up_pos] = last;
        b->nodes[last].up_pos = nd->up_pos;
        nd->up_pos = -1;
        b->n_up--;
        g->w_up -= nd->pub.weight;
        if (g->heap)
            heap_remove(b, g, idx);
    } else {
        nd->up_pos = g->n_up;
        g->up[g->n_up++] = idx;
        b->n_up++;
        g->w_up += nd->pub.weight;
        if (g->heap && b->type == BALANCER_ROUNDROBIN)
            rr_rejoin(b, g, idx);
        if (g->heap)
            heap_insert(b, g, idx);
    }
    return 0;
}

void balancer_set_fail_open(struct balancer *b, bool on)
{
    if (b)
        b->fail_open = on;
}

int balancer_conn_start(struct balancer *b, int idx)
{
    if (!b || idx < 0 || idx >= b->n)
        return -EINVAL;
    struct node *nd = &b->nodes[idx];
    if (nd->pub.active < UINT32_MAX)
        nd->pub.active++;
    if (b->type == BALANCER_LEAST_CONN)
        heap_fix(b, idx);
    return 0;
}

int balancer_conn_end(struct balancer *b, int idx)
{
    if (!b || idx < 0 || idx >= b->n)
        return -EINVAL;
    struct node *nd = &b->nodes[idx];
    if (nd->pub.active > 0)
        nd->pub.active--;
    if (b->type == BALANCER_LEAST_CONN)
        heap_fix(b, idx);
    return 0;
}

int balancer_report_latency(struct balancer *b, int idx, double ms)
{
    if (!b || idx < 0 || idx >= b->n || !(ms >= 0) || isinf(ms))
        return -EINVAL;
    struct node *nd = &b->nodes[idx];
    uint64_t now = b->clock(b->clock_ud);
    if (!nd->ewma_set) {
        nd->ewma = ms;
        nd->ewma_set = true;
    } else {
        double dt = now > nd->ewma_at ? (double)(now - nd->ewma_at) : 0;
        double w = exp(-dt / EWMA_DECAY_MS);
        nd->ewma = nd->ewma * w + ms * (1.0 - w);
    }
    nd->ewma_at = now;
    return 0;
}

void balancer_set_clock(struct balancer *b, balancer_clock_fn fn, void *ud)
{
    if (!b)
        return;
    b->clock = fn ? fn : default_clock;
    b->clock_ud = fn ? ud : NULL;
}

void balancer_seed(struct balancer *b, uint64_t seed)
{
    if (b)
        b->rng = seed;
}

/* ---- accessors -------------------------------------------------------- */

const struct balancer_node *balancer_node(const struct balancer *b, int idx)
{
    if (!b || idx < 0 || idx >= b->n)
        return NULL;
    return &b->nodes[idx].pub;
}

int balancer_find(const struct balancer *b, const char *addr)
{
    if (!b || !addr)
        return -1;
    for (int i = 0; i < b->n; i++)
        if (strcmp(b->nodes[i].pub.addr, addr) == 0)
            return i;
    return -1;
}

int balancer_count(const struct balancer *b)
{
    return b ? b->n : 0;
}

enum balancer_type balancer_type(const struct balancer *b)
{
    return b->type;
}

enum balancer_hash_on balancer_hash_on(const struct balancer *b)
{
    return b->hash_on;
}

const char *balancer_hash_key(const struct balancer *b)
{
    return b->hash_key;
}

int balancer_retries(const struct balancer *b)
{
    return b->retries;
}

const char *balancer_scheme(const struct balancer *b)
{
    return b->scheme;
}

/* ---- building --------------------------------------------------------- */

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

void balancer_free(struct balancer *b)
{
    if (!b)
        return;
    for (int g = 0; g < b->ngroups; g++) {
        struct group *gr = &b->groups[g];
        free(gr->members);
        free(gr->up);
        free(gr->sched);
        free(gr->ring_hash);
        free(gr->ring_node);
        free(gr->heap);
    }
    free(b->groups);
    for (int i = 0; i < b->n; i++)
        free((char *)b->nodes[i].pub.addr); /* host shares this block */
    free(b->nodes);
    free(b->hash_key);
    free(b);
}

static bool name_ok(const char *h)
{
    if (!*h)
        return false;
    for (const char *p = h; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_'))
            return false;
    }
    return true;
}

static int parse_port(const char *s, const char *what, char *err, size_t errlen)
{
    long v = 0;
    if (!*s)
        return fail(err, errlen, "node \"%.64s\": empty port", what);
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > 65535)
            return fail(err, errlen, "node \"%.64s\": port must be 1 to 65535", what);
        v = v * 10 + (*p - '0');
    }
    if (v < 1 || v > 65535)
        return fail(err, errlen, "node \"%.64s\": port must be 1 to 65535", what);
    return (int)v;
}

/*
 * Fills node nd from host h (brackets allowed around IPv6) and port (0 =
 * none given). what names the node in messages. Owns one allocation holding
 * addr then host.
 */
static int set_node(struct node *nd, const char *h, size_t hlen, int port, int default_port,
                    const char *scheme, const char *what, char *err, size_t errlen)
{
    char host[HOST_MAX + 1];
    bool bracketed = false;
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
        bracketed = true;
    } else if (hlen && (h[0] == '[' || h[hlen - 1] == ']')) {
        return fail(err, errlen, "node \"%.64s\": unbalanced [ ] around the host", what);
    }
    if (hlen == 0)
        return fail(err, errlen, "node \"%.64s\": empty host", what);
    if (hlen > HOST_MAX)
        return fail(err, errlen, "node \"%.64s\": host longer than %d characters", what, HOST_MAX);
    memcpy(host, h, hlen);
    host[hlen] = '\0';

    unsigned char bin[16];
    char canon[INET6_ADDRSTRLEN];
    int family = AF_UNSPEC;
    if (inet_pton(AF_INET6, host, bin) == 1) {
        family = AF_INET6;
        inet_ntop(AF_INET6, bin, canon, sizeof(canon));
        snprintf(host, sizeof(host), "%s", canon);
    } else if (bracketed) {
        return fail(err, errlen, "node \"%.64s\": \"%s\" in [ ] is not an IPv6 address", what,
                    host);
    } else if (inet_pton(AF_INET, host, bin) == 1) {
        family = AF_INET;
    } else if (strchr(host, ':')) {
        return fail(err, errlen,
                    "node \"%.64s\": \"%s\" is not an IPv6 address (a port goes in \"port\")", what,
                    host);
    } else if (!name_ok(host)) {
        return fail(err, errlen, "node \"%.64s\": \"%s\" is not a host name or IP address", what,
                    host);
    }
    if (port == 0) {
        if (default_port == 0)
            return fail(err, errlen,
                        "node \"%.64s\": no port, and scheme \"%s\" has no default port", what,
                        scheme);
        port = default_port;
    }
    size_t hl = strlen(host);
    size_t alen = hl + 2 + 1 + 5 + 1; /* [host]:65535\0 */
    char *block = malloc(alen + hl + 1);
    if (!block)
        return fail(err, errlen, "out of memory");
    if (family == AF_INET6)
        snprintf(block, alen, "[%s]:%d", host, port);
    else
        snprintf(block, alen, "%s:%d", host, port);
    memcpy(block + alen, host, hl + 1);
    nd->pub.addr = block;
    nd->pub.host = block + alen;
    nd->pub.port = (uint16_t)port;
    nd->pub.family = family;
    return 0;
}

/* A "host:port" key of the object form of "nodes". */
static int parse_map_node(struct node *nd, const char *key, int default_port, const char *scheme,
                          char *err, size_t errlen)
{
    const char *h = key;
    size_t hlen;
    int port = 0;
    if (key[0] == '[') {
        const char *close = strchr(key, ']');
        if (!close)
            return fail(err, errlen, "node \"%.64s\": missing ]", key);
        hlen = (size_t)(close - key) + 1;
        if (close[1] == ':') {
            if ((port = parse_port(close + 2, key, err, errlen)) < 0)
                return port;
        } else if (close[1] != '\0') {
            return fail(err, errlen, "node \"%.64s\": expected :port after ]", key);
        }
    } else {
        const char *colon = strchr(key, ':');
        if (colon && !strchr(colon + 1, ':')) {
            hlen = (size_t)(colon - key);
            if ((port = parse_port(colon + 1, key, err, errlen)) < 0)
                return port;
        } else {
            hlen = strlen(key); /* a name, an IPv4, or a bare IPv6 without port */
        }
    }
    return set_node(nd, h, hlen, port, default_port, scheme, key, err, errlen);
}

static int parse_weight(const json_t *v, const char *what, char *err, size_t errlen)
{
    if (!json_is_integer(v))
        return fail(err, errlen, "node \"%.64s\": weight must be an integer", what);
    json_int_t w = json_integer_value(v);
    if (w < 0 || w > BALANCER_MAX_WEIGHT)
        return fail(err, errlen, "node \"%.64s\": weight must be 0 to %d", what,
                    BALANCER_MAX_WEIGHT);
    return (int)w;
}

static int parse_array_node(struct node *nd, const json_t *item, size_t k, int default_port,
                            const char *scheme, char *err, size_t errlen)
{
    char what[32];
    snprintf(what, sizeof(what), "nodes[%zu]", k);
    if (!json_is_object(item))
        return fail(err, errlen, "%s must be an object", what);
    const json_t *h = json_object_get(item, "host");
    if (!json_is_string(h))
        return fail(err, errlen, "%s: \"host\" must be a string", what);
    int port = 0;
    const json_t *p = json_object_get(item, "port");
    if (p && !json_is_null(p)) {
        if (!json_is_integer(p) || json_integer_value(p) < 1 || json_integer_value(p) > 65535)
            return fail(err, errlen, "%s: \"port\" must be an integer 1 to 65535", what);
        port = (int)json_integer_value(p);
    }
    const json_t *w = json_object_get(item, "weight");
    if (!w)
        return fail(err, errlen, "%s: \"weight\" is required", what);
    int weight = parse_weight(w, what, err, errlen);
    if (weight < 0)
        return weight;
    int32_t prio = 0;
    const json_t *pr = json_object_get(item, "priority");
    if (pr && !json_is_null(pr)) {
        if (!json_is_integer(pr) || json_integer_value(pr) < INT32_MIN ||
            json_integer_value(pr) > INT32_MAX)
            return fail(err, errlen, "%s: \"priority\" must be a 32-bit integer", what);
        prio = (int32_t)json_integer_value(pr);
    }
    if (strlen(json_string_value(h)) != json_string_length(h))
        return fail(err, errlen, "%s: \"host\" contains a NUL byte", what);
    int r = set_node(nd, json_string_value(h), json_string_length(h), port, default_port, scheme,
                     what, err, errlen);
    if (r < 0)
        return r;
    nd->pub.weight = (uint32_t)weight;
    nd->pub.priority = prio;
    return 0;
}

static int prio_cmp(const void *pa, const void *pb, void *arg)
{
    const struct node *nodes = arg;
    int a = *(const int *)pa, b = *(const int *)pb;
    int32_t x = nodes[a].pub.priority, y = nodes[b].pub.priority;
    if (x != y)
        return x > y ? -1 : 1;
    return a < b ? -1 : a > b;
}

static int build_groups(struct balancer *b, char *err, size_t errlen)
{
    int nw = 0;
    for (int i = 0; i < b->n; i++)
        if (b->nodes[i].pub.weight > 0)
            nw++;
    if (nw == 0)
        return 0;
    int *order = malloc((size_t)nw * sizeof(*order));
    if (!order)
        return fail(err, errlen, "out of memory");
    for (int i = 0, k = 0; i < b->n; i++)
        if (b->nodes[i].pub.weight > 0)
            order[k++] = i;
    qsort_r(order, (size_t)nw, sizeof(*order), prio_cmp, b->nodes);
    int ng = 1;
    for (int k = 1; k < nw; k++)
        if (b->nodes[order[k]].pub.priority != b->nodes[order[k - 1]].pub.priority)
            ng++;
    b->groups = calloc((size_t)ng, sizeof(*b->groups));
    if (!b->groups) {
        free(order);
        return fail(err, errlen, "out of memory");
    }
    int start = 0;
    for (int k = 1; k <= nw; k++) {
        if (k < nw && b->nodes[order[k]].pub.priority == b->nodes[order[start]].pub.priority)
            continue;
        struct group *g = &b->groups[b->ngroups++];
        g->n = k - start;
        g->priority = b->nodes[order[start]].pub.priority;
        g->members = malloc((size_t)g->n * sizeof(*g->members));
        g->up = malloc((size_t)g->n * sizeof(*g->up));
        if (b->type == BALANCER_LEAST_CONN)
            g->heap = malloc((size_t)g->n * sizeof(*g->heap));
        if (!g->members || !g->up || (b->type == BALANCER_LEAST_CONN && !g->heap)) {
            free(order);
            return fail(err, errlen, "out of memory");
        }
        for (int m = 0; m < g->n; m++) {
            int i = order[start + m];
            g->members[m] = i;
            g->up[m] = i;
            b->nodes[i].group = b->ngroups - 1;
            b->nodes[i].up_pos = m;
            g->w_total += b->nodes[i].pub.weight;
        }
        g->n_up = g->n;
        g->w_up = g->w_total;
        b->n_up += g->n;
        int r = 0;
        if (b->type == BALANCER_ROUNDROBIN)
            r = rr_build(b, g);
        else if (b->type == BALANCER_CHASH)
            r = chash_build(b, g);
        else if (b->type == BALANCER_LEAST_CONN)
            for (int m = 0; m < g->n; m++)
                heap_insert(b, g, g->members[m]);
        if (r < 0) {
            free(order);
            return fail(err, errlen, "out of memory");
        }
        start = k;
    }
    free(order);
    return 0;
}

static const char *str_or(const json_t *obj, const char *name, const char *dflt, bool *bad)
{
    const json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v))
        return dflt;
    if (!json_is_string(v)) {
        *bad = true;
        return NULL;
    }
    return json_string_value(v);
}

struct balancer *balancer_new(const json_t *up, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!json_is_object(up)) {
        fail(err, errlen, "upstream must be an object");
        return NULL;
    }
    bool bad = false;
    const char *type = str_or(up, "type", "roundrobin", &bad);
    const char *scheme = bad ? NULL : str_or(up, "scheme", "http", &bad);
    const char *hash_on = bad ? NULL : str_or(up, "hash_on", "vars", &bad);
    const char *key = bad ? NULL : str_or(up, "key", NULL, &bad);
    if (bad) {
        fail(err, errlen, "\"type\", \"scheme\", \"hash_on\" and \"key\" must be strings");
        return NULL;
    }
    struct balancer *b = calloc(1, sizeof(*b));
    if (!b) {
        fail(err, errlen, "out of memory");
        return NULL;
    }
    b->clock = default_clock;
    b->rng = mix64((uint64_t)(uintptr_t)b ^ default_clock(NULL) ^ ((uint64_t)getpid() << 32));

    static const char *const types[] = {"roundrobin", "chash", "least_conn", "ewma"};
    static const char *const hashes[] = {"vars", "header", "cookie", "consumer",
                                         "vars_combinations"};
    int t = -1, hsh = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(type, types[i]) == 0)
            t = i;
    for (int i = 0; i < 5; i++)
        if (strcmp(hash_on, hashes[i]) == 0)
            hsh = i;
    if (t < 0) {
        fail(err, errlen, "unknown balancer type \"%.40s\"", type);
        goto fail;
    }
    if (hsh < 0) {
        fail(err, errlen, "unknown hash_on \"%.40s\"", hash_on);
        goto fail;
    }
    b->type = (enum balancer_type)t;
    b->hash_on = (enum balancer_hash_on)hsh;
    if (key && !(b->hash_key = strdup(key))) {
        fail(err, errlen, "out of memory");
        goto fail;
    }
    static const char *const schemes[] = {"http", "https", "grpc", "grpcs",
                                          "tcp",  "tls",   "udp",  "kafka"};
    bool known = false;
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
        known = known || strcmp(scheme, schemes[i]) == 0;
    if (!known) {
        fail(err, errlen, "unknown scheme \"%.40s\"", scheme);
        goto fail;
    }
    strcpy(b->scheme, scheme);
    int default_port = 0; /* stream schemes (tcp, tls, udp) have none */
    if (!strcmp(scheme, "http") || !strcmp(scheme, "grpc"))
        default_port = 80;
    else if (!strcmp(scheme, "https") || !strcmp(scheme, "grpcs"))
        default_port = 443;

    const json_t *nodes = json_object_get(up, "nodes");
    size_t count;
    if (json_is_object(nodes)) {
        count = json_object_size(nodes);
    } else if (json_is_array(nodes)) {
        count = json_array_size(nodes);
    } else {
        fail(err, errlen, "upstream has no \"nodes\" object or array");
        goto fail;
    }
    if (count > BALANCER_MAX_NODES) {
        fail(err, errlen, "too many nodes: %zu (at most %d)", count, BALANCER_MAX_NODES);
        goto fail;
    }
    b->nodes = calloc(count ? count : 1, sizeof(*b->nodes));
    if (!b->nodes) {
        fail(err, errlen, "out of memory");
        goto fail;
    }
    if (json_is_object(nodes)) {
        const char *addr;
        json_t *w;
        json_object_foreach((json_t *)nodes, addr, w)
        {
            struct node *nd = &b->nodes[b->n];
            int weight = parse_weight(w, addr, err, errlen);
            if (weight < 0 || parse_map_node(nd, addr, default_port, scheme, err, errlen) < 0)
                goto fail;
            b->n++;
            nd->pub.weight = (uint32_t)weight;
        }
    } else {
        for (size_t k = 0; k < count; k++) {
            struct node *nd = &b->nodes[b->n];
            if (parse_array_node(nd, json_array_get(nodes, k), k, default_port, scheme, err,
                                 errlen) < 0)
                goto fail;
            b->n++;
        }
    }
    for (int i = 0; i < b->n; i++) {
        b->nodes[i].group = -1;
        b->nodes[i].up_pos = -1;
        b->nodes[i].heap_pos = -1;
    }

    const json_t *retries = json_object_get(up, "retries");
    if (retries && !json_is_null(retries)) {
        if (!json_is_integer(retries) || json_integer_value(retries) < 0) {
            fail(err, errlen, "\"retries\" must be an integer >= 0");
            goto fail;
        }
        json_int_t r = json_integer_value(retries);
        b->retries = r > INT32_MAX ? INT32_MAX : (int)r;
    } else {
        b->retries = b->n > 0 ? b->n - 1 : 0;
    }

    if (build_groups(b, err, errlen) < 0)
        goto fail;
    return b;

fail:
    balancer_free(b);
    return NULL;
}
