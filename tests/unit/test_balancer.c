/*
 * Unit tests for dataplane/balancer.c: roundrobin sequence and ratios,
 * weight 0, priority fallback, retries with a tried set, chash stability,
 * spread, remapping and failover, least_conn, ewma, input checks.
 */
#include "balancer.h"
#include "check.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>

static struct balancer *mk(const char *json)
{
    json_error_t jerr;
    json_t *up = json_loads(json, 0, &jerr);
    if (!up) {
        fprintf(stderr, "  bad test JSON: %s\n", jerr.text);
        return NULL;
    }
    char err[256];
    struct balancer *b = balancer_new(up, err, sizeof(err));
    if (!b)
        fprintf(stderr, "  balancer_new: %s\n", err);
    json_decref(up);
    return b;
}

/* Returns the error message of a balancer_new that must fail, "" if it did not. */
static const char *mk_err(const char *json)
{
    static char err[256];
    json_t *up = json_loads(json, JSON_ALLOW_NUL, NULL);
    if (!up)
        return "bad test JSON";
    struct balancer *b = balancer_new(up, err, sizeof(err));
    json_decref(up);
    if (b) {
        balancer_free(b);
        return "";
    }
    return err;
}

/* nodes as an array of n "10.0.x.y:80" nodes of weight w. */
static json_t *many_nodes(const char *type, int n, int w)
{
    json_t *up = json_pack("{s:s, s:[]}", "type", type, "nodes");
    json_t *arr = json_object_get(up, "nodes");
    for (int i = 0; i < n; i++) {
        char host[32];
        snprintf(host, sizeof(host), "10.%d.%d.%d", i / 65536, (i / 256) % 256, i % 256);
        json_array_append_new(arr,
                              json_pack("{s:s, s:i, s:i}", "host", host, "port", 80, "weight", w));
    }
    return up;
}

static void test_smooth_rr_sequence(void)
{
    struct balancer *b = mk("{\"type\":\"roundrobin\",\"nodes\":["
                            "{\"host\":\"a\",\"port\":1,\"weight\":5},"
                            "{\"host\":\"b\",\"port\":1,\"weight\":1},"
                            "{\"host\":\"c\",\"port\":1,\"weight\":1}]}");
    REQUIRE(b);
    const char *want = "aabacaaaabacaa";
    char got[15] = {0};
    for (int i = 0; i < 14; i++) {
        int idx = balancer_pick(b, NULL, 0, NULL);
        REQUIRE(idx >= 0);
        got[i] = balancer_node(b, idx)->host[0];
    }
    CHECK_STREQ(got, want);
    balancer_free(b);

    /* Object form keeps key order; the weights scale (10,2,2 is 5,1,1). */
    b = mk("{\"nodes\":{\"a:1\":10,\"b:1\":2,\"c:1\":2}}");
    REQUIRE(b);
    CHECK(balancer_type(b) == BALANCER_ROUNDROBIN);
    for (int i = 0; i < 7; i++)
        got[i] = balancer_node(b, balancer_pick(b, NULL, 0, NULL))->host[0];
    got[7] = '\0';
    CHECK_STREQ(got, "aabacaa");
    balancer_free(b);
}

static void test_rr_weight_ratio(void)
{
    struct balancer *b = mk("{\"nodes\":{\"h1:80\":1,\"h2:80\":2,\"h3:80\":3,\"h4:80\":4}}");
    REQUIRE(b);
    int cnt[4] = {0};
    for (int i = 0; i < 10000; i++) {
        int idx = balancer_pick(b, NULL, 0, NULL);
        REQUIRE(idx >= 0 && idx < 4);
        cnt[idx]++;
    }
    for (int i = 0; i < 4; i++)
        CHECK(cnt[i] == 1000 * (i + 1));
    /* A down node's share goes to the others, in their ratio. */
    balancer_set_down(b, 3, true);
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 6000; i++)
        cnt[balancer_pick(b, NULL, 0, NULL)]++;
    CHECK(cnt[3] == 0);
    CHECK(cnt[0] == 1000 && cnt[1] == 2000 && cnt[2] == 3000);
    balancer_free(b);

    /* Weights too uneven for a table: nginx's loop. */
    b = mk("{\"nodes\":{\"h1:80\":99991,\"h2:80\":7,\"h3:80\":2}}");
    REQUIRE(b);
    int c3[3] = {0};
    for (int i = 0; i < 100000; i++)
        c3[balancer_pick(b, NULL, 0, NULL)]++;
    CHECK(c3[0] == 99991 && c3[1] == 7 && c3[2] == 2);
    balancer_free(b);

    /* Many equal weights: each node once per round. */
    json_t *up = many_nodes("roundrobin", 1000, 5);
    b = balancer_new(up, NULL, 0);
    json_decref(up);
    REQUIRE(b);
    static int seen[1000];
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < 3000; i++)
        seen[balancer_pick(b, NULL, 0, NULL)]++;
    int bad = 0;
    for (int i = 0; i < 1000; i++)
        bad += seen[i] != 3;
    CHECK(bad == 0);
    balancer_free(b);
}

static void test_rr_down_modes(void)
{
    /* Table mode with most of the weight down: deadline heap, same ratio. */
    struct balancer *b = mk("{\"nodes\":{\"h1:80\":1,\"h2:80\":2,\"h3:80\":3,\"h4:80\":4}}");
    REQUIRE(b);
    balancer_set_down(b, 2, true);
    balancer_set_down(b, 3, true);
    int cnt[4] = {0};
    for (int i = 0; i < 3000; i++)
        cnt[balancer_pick(b, NULL, 0, NULL)]++;
    CHECK(cnt[0] == 1000 && cnt[1] == 2000);
    balancer_free(b);

    /* Equal weights with nodes down: the others share evenly. */
    b = mk("{\"nodes\":{\"h1:80\":7,\"h2:80\":7,\"h3:80\":7,\"h4:80\":7}}");
    REQUIRE(b);
    balancer_set_down(b, 0, true);
    balancer_set_down(b, 2, true);
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 1000; i++)
        cnt[balancer_pick(b, NULL, 0, NULL)]++;
    CHECK(cnt[1] == 500 && cnt[3] == 500);
    balancer_set_down(b, 0, false);
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 999; i++)
        cnt[balancer_pick(b, NULL, 0, NULL)]++;
    CHECK(cnt[0] == 333 && cnt[1] == 333 && cnt[3] == 333);
    balancer_free(b);

    /* Deadline mode: a node back from down gets its share, not a burst to
     * make up for the picks it missed. */
    b = mk("{\"nodes\":{\"a:80\":100000,\"b:80\":50000,\"c:80\":1}}");
    REQUIRE(b);
    balancer_set_down(b, 1, true);
    for (int i = 0; i < 10000; i++)
        CHECK(balancer_pick(b, NULL, 0, NULL) != 1);
    balancer_set_down(b, 1, false);
    memset(cnt, 0, sizeof(cnt));
    for (int i = 0; i < 1500; i++)
        cnt[balancer_pick(b, NULL, 0, NULL)]++;
    CHECK(cnt[1] >= 450 && cnt[1] <= 550);
    /* Smooth: never more than two picks of b in a row. */
    int run = 0, maxrun = 0;
    for (int i = 0; i < 3000; i++) {
        run = balancer_pick(b, NULL, 0, NULL) == 1 ? run + 1 : 0;
        maxrun = run > maxrun ? run : maxrun;
    }
    CHECK(maxrun <= 1);
    /* Retries in deadline mode skip the tried node. */
    uint64_t tried = 1u << 0;
    for (int i = 0; i < 10; i++) {
        int idx = balancer_pick(b, NULL, 0, &tried);
        CHECK(idx == 1 || idx == 2);
    }
    balancer_free(b);
}

static void test_zero_weight(void)
{
    const char *types[] = {"roundrobin", "chash", "least_conn", "ewma"};
    for (int t = 0; t < 4; t++) {
        char json[256];
        snprintf(json, sizeof(json),
                 "{\"type\":\"%s\",\"key\":\"remote_addr\","
                 "\"nodes\":{\"a:80\":0,\"b:80\":3,\"c:80\":0}}",
                 types[t]);
        struct balancer *b = mk(json);
        REQUIRE(b);
        for (int i = 0; i < 200; i++) {
            char key[16];
            int n = snprintf(key, sizeof(key), "k%d", i);
            CHECK(balancer_pick(b, key, (size_t)n, NULL) == 1);
        }
        balancer_set_down(b, 1, true);
        CHECK(balancer_pick(b, "x", 1, NULL) == -1);
        balancer_free(b);

        snprintf(json, sizeof(json), "{\"type\":\"%s\",\"nodes\":{\"a:80\":0}}", types[t]);
        b = mk(json);
        REQUIRE(b);
        CHECK(balancer_pick(b, "x", 1, NULL) == -1);
        balancer_free(b);
    }
    struct balancer *b = mk("{\"nodes\":{}}");
    REQUIRE(b);
    CHECK(balancer_count(b) == 0);
    CHECK(balancer_pick(b, NULL, 0, NULL) == -1);
    CHECK(balancer_retries(b) == 0);
    balancer_free(b);
}

static void test_priority_fallback(void)
{
    const char *types[] = {"roundrobin", "chash", "least_conn", "ewma"};
    for (int t = 0; t < 4; t++) {
        char json[512];
        snprintf(json, sizeof(json),
                 "{\"type\":\"%s\",\"key\":\"uri\",\"nodes\":["
                 "{\"host\":\"low\",\"port\":80,\"weight\":1,\"priority\":-5},"
                 "{\"host\":\"hi1\",\"port\":80,\"weight\":1,\"priority\":10},"
                 "{\"host\":\"mid\",\"port\":80,\"weight\":100},"
                 "{\"host\":\"hi2\",\"port\":80,\"weight\":1,\"priority\":10}]}",
                 types[t]);
        struct balancer *b = mk(json);
        REQUIRE(b);
        CHECK(balancer_node(b, 2)->priority == 0);
        int cnt[4] = {0};
        for (int i = 0; i < 400; i++) {
            char key[16];
            int n = snprintf(key, sizeof(key), "/k%d", i);
            int idx = balancer_pick(b, key, (size_t)n, NULL);
            REQUIRE(idx >= 0);
            cnt[idx]++;
        }
        CHECK(cnt[0] == 0 && cnt[2] == 0);
        CHECK(cnt[1] > 50 && cnt[3] > 50);
        balancer_set_down(b, 1, true);
        CHECK(balancer_pick(b, "/a", 2, NULL) == 3);
        uint64_t tried = 1u << 3;
        CHECK(balancer_pick(b, "/a", 2, &tried) == 2); /* hi2 tried, hi1 down: priority 0 */
        tried |= 1u << 2;
        CHECK(balancer_pick(b, "/a", 2, &tried) == 0); /* then -5 */
        tried |= 1u << 0;
        CHECK(balancer_pick(b, "/a", 2, &tried) == -1);
        balancer_set_down(b, 3, true);
        CHECK(balancer_pick(b, "/a", 2, NULL) == 2);
        balancer_set_down(b, 1, false);
        CHECK(balancer_pick(b, "/a", 2, NULL) == 1); /* back to the top priority */
        balancer_free(b);
    }
}

static void test_tried_mask(void)
{
    struct balancer *b = mk("{\"nodes\":{\"a:80\":1,\"b:80\":1,\"c:80\":1}}");
    REQUIRE(b);
    uint64_t tried = 0x3;
    for (int i = 0; i < 10; i++)
        CHECK(balancer_pick(b, NULL, 0, &tried) == 2);
    tried = 0x7;
    CHECK(balancer_pick(b, NULL, 0, &tried) == -1);
    /* A retry loop visits every node once. */
    tried = 0;
    for (int i = 0; i < 3; i++) {
        int idx = balancer_pick(b, NULL, 0, &tried);
        REQUIRE(idx >= 0);
        CHECK(!(tried & (1ull << idx)));
        tried |= 1ull << idx;
    }
    CHECK(tried == 0x7);
    /* Bits past the node count are ignored. */
    tried = ~0ull << 3;
    CHECK(balancer_pick(b, NULL, 0, &tried) >= 0);
    balancer_free(b);

    /* Past 64 nodes, a list of tried indexes, for every type. */
    const char *types[] = {"roundrobin", "chash", "least_conn", "ewma"};
    for (int t = 0; t < 4; t++) {
        json_t *up = many_nodes(types[t], 100, 1);
        json_object_set_new(up, "key", json_string("remote_addr"));
        b = balancer_new(up, NULL, 0);
        json_decref(up);
        REQUIRE(b);
        balancer_seed(b, 7);
        int list[99];
        for (int i = 0; i < 99; i++)
            list[i] = i < 70 ? i : i + 1; /* everything but node 70 */
        for (int i = 0; i < 20; i++)
            CHECK(balancer_pick_ex(b, "k", 1, NULL, list, 99) == 70);
        int all[101];
        for (int i = 0; i < 100; i++)
            all[i] = i;
        all[100] = 12345; /* out of range: ignored */
        CHECK(balancer_pick_ex(b, "k", 1, NULL, all, 101) == -1);
        /* Retries walk distinct nodes. */
        int tl[100], nt = 0;
        for (int i = 0; i < 100; i++) {
            int idx = balancer_pick_ex(b, "k", 1, NULL, tl, (size_t)nt);
            REQUIRE(idx >= 0);
            for (int j = 0; j < nt; j++)
                CHECK(tl[j] != idx);
            tl[nt++] = idx;
        }
        CHECK(balancer_pick_ex(b, "k", 1, NULL, tl, (size_t)nt) == -1);
        balancer_free(b);
    }
}

static void test_chash_stability(void)
{
    struct balancer *b = mk("{\"type\":\"chash\",\"hash_on\":\"vars\",\"key\":\"mqtt_client_id\","
                            "\"nodes\":{\"10.0.0.1:1883\":1,\"10.0.0.2:1883\":1,"
                            "\"10.0.0.3:1883\":1}}");
    /* Same nodes in another order and form: same ring, same answers. */
    struct balancer *b2 = mk("{\"type\":\"chash\",\"key\":\"mqtt_client_id\",\"nodes\":["
                             "{\"host\":\"10.0.0.3\",\"port\":1883,\"weight\":1},"
                             "{\"host\":\"10.0.0.1\",\"port\":1883,\"weight\":1},"
                             "{\"host\":\"10.0.0.2\",\"port\":1883,\"weight\":1}]}");
    REQUIRE(b && b2);
    CHECK(balancer_hash_on(b) == BALANCER_HASH_VARS);
    CHECK_STREQ(balancer_hash_key(b), "mqtt_client_id");
    for (int i = 0; i < 500; i++) {
        char key[32];
        int n = snprintf(key, sizeof(key), "device-%d", i);
        int first = balancer_pick(b, key, (size_t)n, NULL);
        REQUIRE(first >= 0);
        for (int j = 0; j < 3; j++)
            CHECK(balancer_pick(b, key, (size_t)n, NULL) == first);
        int other = balancer_pick(b2, key, (size_t)n, NULL);
        CHECK_STREQ(balancer_node(b2, other)->addr, balancer_node(b, first)->addr);
    }
    /* The hash does not depend on the host: a fixed value pins it. */
    CHECK(balancer_hash("", 0) == balancer_hash("", 0));
    CHECK(balancer_hash("abc", 3) != balancer_hash("abd", 3));
    CHECK(balancer_hash("abcdefgh1", 9) != balancer_hash("abcdefgh2", 9));
    /* NULL key is the empty key. */
    CHECK(balancer_pick(b, NULL, 0, NULL) == balancer_pick(b, "", 0, NULL));
    balancer_free(b);
    balancer_free(b2);
}

static void test_chash_spread(void)
{
    struct balancer *b = mk("{\"type\":\"chash\",\"key\":\"remote_addr\","
                            "\"nodes\":{\"127.0.0.1:1980\":1,\"127.0.0.1:1981\":1}}");
    REQUIRE(b);
    int cnt[2] = {0};
    for (int i = 0; i < 1000; i++) {
        char key[32];
        int n = snprintf(key, sizeof(key), "192.168.%d.%d", i / 256, i % 256);
        cnt[balancer_pick(b, key, (size_t)n, NULL)]++;
    }
    CHECK(cnt[0] >= 350 && cnt[0] <= 650);
    balancer_free(b);

    /* Weights 3:1 give about 3:1. */
    b = mk("{\"type\":\"chash\",\"key\":\"uri\",\"nodes\":{\"a:80\":3,\"b:80\":1}}");
    REQUIRE(b);
    cnt[0] = cnt[1] = 0;
    for (int i = 0; i < 10000; i++) {
        char key[32];
        int n = snprintf(key, sizeof(key), "/item/%d", i);
        cnt[balancer_pick(b, key, (size_t)n, NULL)]++;
    }
    CHECK(cnt[0] > 6500 && cnt[0] < 8500);
    balancer_free(b);
}

#define NKEYS 20000

static void test_chash_remap(void)
{
    const int n = 10;
    json_t *up = many_nodes("chash", n, 1);
    struct balancer *full = balancer_new(up, NULL, 0);
    json_array_remove(json_object_get(up, "nodes"), 4);
    struct balancer *less = balancer_new(up, NULL, 0);
    json_decref(up);
    REQUIRE(full && less);
    REQUIRE(balancer_count(less) == n - 1);
    int moved = 0, wrong = 0, on_removed = 0;
    for (int i = 0; i < NKEYS; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "client-%d", i);
        const char *a = balancer_node(full, balancer_pick(full, key, (size_t)kl, NULL))->addr;
        const char *c = balancer_node(less, balancer_pick(less, key, (size_t)kl, NULL))->addr;
        bool was_removed = strcmp(a, balancer_node(full, 4)->addr) == 0;
        on_removed += was_removed;
        if (strcmp(a, c) != 0) {
            moved++;
            wrong += !was_removed; /* only the removed node's keys may move */
        }
    }
    double frac = (double)moved / NKEYS;
    fprintf(stderr, "  remap on removing 1 of %d nodes: %.3f of keys moved\n", n, frac);
    CHECK(frac > 0.5 / n && frac < 1.5 / n);
    CHECK(moved == on_removed);
    CHECK(wrong == 0);
    balancer_free(full);
    balancer_free(less);

    /* Adding an 11th node: ~1/11 of keys move, all of them to it. */
    up = many_nodes("chash", n, 1);
    full = balancer_new(up, NULL, 0);
    json_array_append_new(json_object_get(up, "nodes"),
                          json_pack("{s:s,s:i,s:i}", "host", "new", "port", 80, "weight", 1));
    struct balancer *more = balancer_new(up, NULL, 0);
    json_decref(up);
    REQUIRE(full && more);
    moved = wrong = 0;
    for (int i = 0; i < NKEYS; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "client-%d", i);
        int ia = balancer_pick(full, key, (size_t)kl, NULL);
        int ic = balancer_pick(more, key, (size_t)kl, NULL);
        if (strcmp(balancer_node(full, ia)->addr, balancer_node(more, ic)->addr) != 0) {
            moved++;
            wrong += ic != n;
        }
    }
    frac = (double)moved / NKEYS;
    CHECK(frac > 0.5 / (n + 1) && frac < 1.5 / (n + 1));
    CHECK(wrong == 0);
    balancer_free(full);
    balancer_free(more);
}

static void test_chash_failover(void)
{
    json_t *up = many_nodes("chash", 5, 1);
    struct balancer *b = balancer_new(up, NULL, 0);
    json_decref(up);
    REQUIRE(b);
    static int before[NKEYS];
    for (int i = 0; i < NKEYS; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "c%d", i);
        before[i] = balancer_pick(b, key, (size_t)kl, NULL);
    }
    balancer_set_down(b, 2, true);
    int moved = 0, bad = 0;
    int spread[5] = {0};
    for (int i = 0; i < NKEYS; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "c%d", i);
        int now = balancer_pick(b, key, (size_t)kl, NULL);
        CHECK(now != 2);
        if (before[i] == 2) {
            moved++;
            spread[now]++;
        } else {
            bad += now != before[i];
        }
    }
    CHECK(bad == 0);
    CHECK(moved > NKEYS / 10);
    /* The down node's keys spread over the others rather than onto one. */
    for (int i = 0; i < 5; i++)
        if (i != 2)
            CHECK(spread[i] > moved / 10);
    balancer_set_down(b, 2, false);
    bad = 0;
    for (int i = 0; i < NKEYS; i++) {
        char key[32];
        int kl = snprintf(key, sizeof(key), "c%d", i);
        bad += balancer_pick(b, key, (size_t)kl, NULL) != before[i];
    }
    CHECK(bad == 0);

    /* A retry of a key goes to a different node, the same one every time. */
    int first = balancer_pick(b, "dev", 3, NULL);
    uint64_t tried = 1ull << first;
    int second = balancer_pick(b, "dev", 3, &tried);
    CHECK(second >= 0 && second != first);
    CHECK(balancer_pick(b, "dev", 3, &tried) == second);
    /* ... and is where the key goes while its node is down. */
    balancer_set_down(b, first, true);
    CHECK(balancer_pick(b, "dev", 3, NULL) == second);
    for (int i = 0; i < 5; i++)
        balancer_set_down(b, i, true);
    CHECK(balancer_pick(b, "dev", 3, NULL) == -1);
    /* Fail open: with every node down, the key's own node again. */
    balancer_set_fail_open(b, true);
    CHECK(balancer_pick(b, "dev", 3, NULL) == first);
    CHECK(balancer_pick(b, "dev", 3, &tried) == second);
    balancer_free(b);
}

static void test_least_conn(void)
{
    struct balancer *b = mk("{\"type\":\"least_conn\",\"nodes\":{\"a:80\":1,\"b:80\":1,"
                            "\"c:80\":1}}");
    REQUIRE(b);
    /* Held connections: the picks spread evenly. */
    for (int i = 0; i < 30; i++) {
        int idx = balancer_pick(b, NULL, 0, NULL);
        REQUIRE(idx >= 0);
        balancer_conn_start(b, idx);
    }
    for (int i = 0; i < 3; i++)
        CHECK(balancer_node(b, i)->active == 10);
    /* Node b loses 5 connections: the next 5 picks go to it. */
    for (int i = 0; i < 5; i++)
        balancer_conn_end(b, 1);
    for (int i = 0; i < 5; i++) {
        int idx = balancer_pick(b, NULL, 0, NULL);
        CHECK(idx == 1);
        balancer_conn_start(b, idx);
    }
    /* Short requests (end before the next pick): ties rotate. */
    int cnt[3] = {0};
    for (int i = 0; i < 300; i++) {
        for (int k = 0; k < 3; k++)
            while (balancer_node(b, k)->active)
                balancer_conn_end(b, k);
        int idx = balancer_pick(b, NULL, 0, NULL);
        cnt[idx]++;
        balancer_conn_start(b, idx);
    }
    CHECK(cnt[0] == 100 && cnt[1] == 100 && cnt[2] == 100);
    /* Down and tried nodes are skipped. */
    balancer_set_down(b, 0, true);
    uint64_t tried = 1u << 1;
    for (int i = 0; i < 5; i++)
        CHECK(balancer_pick(b, NULL, 0, &tried) == 2);
    balancer_set_down(b, 0, false);
    CHECK(balancer_conn_end(b, 99) == -EINVAL);
    balancer_free(b);

    /* Weight 2 holds twice the connections of weight 1. */
    b = mk("{\"type\":\"least_conn\",\"nodes\":{\"a:80\":2,\"b:80\":1}}");
    REQUIRE(b);
    for (int i = 0; i < 300; i++)
        balancer_conn_start(b, balancer_pick(b, NULL, 0, NULL));
    CHECK(balancer_node(b, 0)->active == 200 || balancer_node(b, 0)->active == 201);
    balancer_free(b);

    /* Many nodes, some tried: the best untried one. */
    json_t *up = many_nodes("least_conn", 200, 1);
    b = balancer_new(up, NULL, 0);
    json_decref(up);
    REQUIRE(b);
    for (int i = 0; i < 200; i++)
        for (int k = 0; k < (i == 150 ? 1 : 3); k++)
            balancer_conn_start(b, i);
    CHECK(balancer_pick(b, NULL, 0, NULL) == 150);
    int list[] = {150};
    int idx = balancer_pick_ex(b, NULL, 0, NULL, list, 1);
    CHECK(idx >= 0 && idx != 150);
    balancer_free(b);
}

static uint64_t fake_now;

static uint64_t fake_clock(void *ud)
{
    (void)ud;
    return fake_now;
}

static void test_ewma(void)
{
    struct balancer *b = mk("{\"type\":\"ewma\",\"nodes\":{\"slow:80\":1,\"fast:80\":1}}");
    REQUIRE(b);
    fake_now = 1000;
    balancer_set_clock(b, fake_clock, NULL);
    balancer_seed(b, 42);
    CHECK(balancer_report_latency(b, 0, 200) == 0);
    CHECK(balancer_report_latency(b, 1, 10) == 0);
    for (int i = 0; i < 100; i++)
        CHECK(balancer_pick(b, NULL, 0, NULL) == 1);
    /* Retries still reach the slow node. */
    uint64_t tried = 1u << 1;
    CHECK(balancer_pick(b, NULL, 0, &tried) == 0);
    /* The fast node turns slow; in 30 s its average has moved. */
    fake_now += 30000;
    balancer_report_latency(b, 1, 2000);
    CHECK(balancer_pick(b, NULL, 0, NULL) == 0);
    CHECK(balancer_report_latency(b, 0, -1) == -EINVAL);
    CHECK(balancer_report_latency(b, 5, 1) == -EINVAL);
    balancer_free(b);

    /* Five nodes, one fast: it gets most picks (two random choices). */
    b = mk("{\"type\":\"ewma\",\"nodes\":{\"a:80\":1,\"b:80\":1,\"c:80\":1,\"d:80\":1,"
           "\"e:80\":1}}");
    REQUIRE(b);
    balancer_set_clock(b, fake_clock, NULL);
    balancer_seed(b, 1);
    for (int i = 0; i < 5; i++)
        balancer_report_latency(b, i, i == 3 ? 5 : 100 + i);
    int cnt[5] = {0};
    for (int i = 0; i < 10000; i++)
        cnt[balancer_pick(b, NULL, 0, NULL)]++;
    /* Picked whenever drawn: 2/5 of picks in expectation. */
    CHECK(cnt[3] > 3500 && cnt[3] < 4500);
    /* The slowest is never better than the other of its pair. */
    CHECK(cnt[4] == 0);
    /* A node never reported scores 0 and is tried. */
    balancer_set_down(b, 3, true);
    CHECK(balancer_pick(b, NULL, 0, NULL) != 3);
    balancer_free(b);
}

static void test_parse(void)
{
    struct balancer *b = mk("{\"scheme\":\"https\",\"retries\":2,\"type\":\"chash\","
                            "\"hash_on\":\"header\",\"key\":\"X-Device\","
                            "\"nodes\":{\"[::1]:8080\":1,\"[0:0::2]\":2,\"::3\":1,"
                            "\"example.com\":1,\"1.2.3.4:9\":4}}");
    REQUIRE(b);
    CHECK(balancer_count(b) == 5);
    CHECK(balancer_retries(b) == 2);
    CHECK(balancer_hash_on(b) == BALANCER_HASH_HEADER);
    CHECK_STREQ(balancer_scheme(b), "https");
    const struct balancer_node *nd = balancer_node(b, 0);
    CHECK_STREQ(nd->host, "::1");
    CHECK_STREQ(nd->addr, "[::1]:8080");
    CHECK(nd->port == 8080 && nd->family == AF_INET6);
    nd = balancer_node(b, 1);
    CHECK_STREQ(nd->addr, "[::2]:443");
    CHECK(nd->weight == 2);
    CHECK_STREQ(balancer_node(b, 2)->addr, "[::3]:443");
    nd = balancer_node(b, 3);
    CHECK_STREQ(nd->addr, "example.com:443");
    CHECK(nd->family == AF_UNSPEC);
    nd = balancer_node(b, 4);
    CHECK(nd->family == AF_INET && nd->port == 9 && nd->weight == 4);
    CHECK(balancer_node(b, 5) == NULL && balancer_node(b, -1) == NULL);
    CHECK(balancer_find(b, "[::2]:443") == 1);
    CHECK(balancer_find(b, "nope:1") == -1);
    balancer_free(b);

    b = mk("{\"nodes\":[{\"host\":\"[::1]\",\"weight\":1},{\"host\":\"web\",\"weight\":1,"
           "\"port\":8080,\"priority\":3,\"metadata\":{}}]}");
    REQUIRE(b);
    CHECK_STREQ(balancer_node(b, 0)->addr, "[::1]:80");
    CHECK_STREQ(balancer_node(b, 1)->addr, "web:8080");
    CHECK(balancer_node(b, 1)->priority == 3);
    CHECK(balancer_retries(b) == 1); /* absent: nodes - 1 */
    CHECK(balancer_hash_key(b) == NULL);
    CHECK(balancer_set_down(b, 2, true) == -EINVAL);
    balancer_free(b);

    b = mk("{\"scheme\":\"tcp\",\"nodes\":{\"broker:1883\":1}}");
    REQUIRE(b);
    CHECK(balancer_node(b, 0)->port == 1883);
    balancer_free(b);
    balancer_free(NULL);
}

static void test_bad_input(void)
{
    char err[64];
    CHECK(balancer_new(NULL, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "object");
    CHECK_CONTAINS(mk_err("[]"), "object");
    CHECK_CONTAINS(mk_err("{}"), "nodes");
    CHECK_CONTAINS(mk_err("{\"nodes\":5}"), "nodes");
    CHECK_CONTAINS(mk_err("{\"type\":\"random\",\"nodes\":{}}"), "random");
    CHECK_CONTAINS(mk_err("{\"type\":1,\"nodes\":{}}"), "string");
    CHECK_CONTAINS(mk_err("{\"hash_on\":\"body\",\"nodes\":{}}"), "hash_on");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:80\":-1}}"), "weight");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:80\":100001}}"), "weight");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:80\":1.5}}"), "weight");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:80\":\"1\"}}"), "weight");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:0\":1}}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:65536\":1}}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:99999999999999999999\":1}}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:\":1}}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:8x\":1}}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\":80\":1}}"), "empty host");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"[::1:80\":1}}"), "]");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"[::1]x\":1}}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"[]:80\":1}}"), "empty host");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"[nothost]:80\":1}}"), "IPv6");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a::b::c\":1}}"), "IPv6");
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a b:80\":1}}"), "host name");
    CHECK_CONTAINS(mk_err("{\"nodes\":[5]}"), "nodes[0]");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"weight\":1}]}"), "host");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"host\":\"a\"}]}"), "weight");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"host\":\"a:80\",\"weight\":1}]}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"host\":\"a\",\"port\":0,\"weight\":1}]}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"host\":\"a\",\"port\":\"80\",\"weight\":1}]}"), "port");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"host\":\"a\",\"weight\":1,\"priority\":1e3}]}"),
                   "priority");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"host\":\"a\",\"weight\":1,"
                          "\"priority\":99999999999}]}"),
                   "priority");
    CHECK_CONTAINS(mk_err("{\"nodes\":[{\"host\":\"a\\u0000b\",\"weight\":1}]}"), "NUL");
    CHECK_CONTAINS(mk_err("{\"scheme\":\"tcp\",\"nodes\":{\"broker\":1}}"), "default port");
    CHECK_CONTAINS(mk_err("{\"scheme\":\"verylongscheme\",\"nodes\":{}}"), "scheme");
    CHECK_CONTAINS(mk_err("{\"retries\":-1,\"nodes\":{}}"), "retries");

    char longhost[400];
    memset(longhost, 'h', 300);
    longhost[300] = '\0';
    char json[512];
    snprintf(json, sizeof(json), "{\"nodes\":{\"%s:80\":1}}", longhost);
    CHECK_CONTAINS(mk_err(json), "longer");

    json_t *up = many_nodes("roundrobin", BALANCER_MAX_NODES + 1, 1);
    CHECK(balancer_new(up, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "too many");
    /* NULL err is fine. */
    CHECK(balancer_new(up, NULL, 0) == NULL);
    json_decref(up);

    /* The failing node is freed with the ones before it (ASan checks). */
    CHECK_CONTAINS(mk_err("{\"nodes\":{\"a:80\":1,\"b:80\":1,\"c:80\":-3}}"), "c:80");
}

static void test_large(void)
{
    /* The bounds build and pick for every type, ring scaled down. */
    const char *types[] = {"roundrobin", "chash", "least_conn", "ewma"};
    for (int t = 0; t < 4; t++) {
        json_t *up = many_nodes(types[t], BALANCER_MAX_NODES, BALANCER_MAX_WEIGHT);
        json_array_remove(json_object_get(up, "nodes"), 0);
        json_array_append_new(json_object_get(up, "nodes"),
                              json_pack("{s:s,s:i,s:i}", "host", "odd", "port", 1, "weight", 3));
        struct balancer *b = balancer_new(up, NULL, 0);
        json_decref(up);
        REQUIRE(b);
        for (int i = 0; i < 1000; i++) {
            char key[16];
            int n = snprintf(key, sizeof(key), "%d", i);
            int idx = balancer_pick(b, key, (size_t)n, NULL);
            CHECK(idx >= 0 && idx < BALANCER_MAX_NODES);
        }
        balancer_free(b);
    }
}

static uint64_t test_rng = 12345;

static uint32_t rnd(uint32_t n)
{
    test_rng ^= test_rng << 13;
    test_rng ^= test_rng >> 7;
    test_rng ^= test_rng << 17;
    return (uint32_t)(test_rng % n);
}

/* Random weights, priorities, downs, tried sets and connections against a
 * brute-force answer: a pick is an available node of the highest priority
 * that has one, and -1 only when there is none. */
static void test_random_ops(void)
{
    const char *types[] = {"roundrobin", "chash", "least_conn", "ewma"};
    for (int t = 0; t < 4; t++) {
        for (int round = 0; round < 4; round++) {
            int n = 1 + (int)rnd(round < 2 ? 12 : 90);
            json_t *up = json_pack("{s:s, s:s, s:[]}", "type", types[t], "key", "k", "nodes");
            int prio[100];
            unsigned wt[100];
            for (int i = 0; i < n; i++) {
                char host[16];
                snprintf(host, sizeof(host), "n%d", i);
                prio[i] = (int)rnd(3) - 1;
                wt[i] = rnd(4) == 0 ? 0 : 1 + rnd(round & 1 ? 100000 : 5);
                json_array_append_new(json_object_get(up, "nodes"),
                                      json_pack("{s:s,s:i,s:i,s:i}", "host", host, "port", 80,
                                                "weight", (int)wt[i], "priority", prio[i]));
            }
            struct balancer *b = balancer_new(up, NULL, 0);
            json_decref(up);
            REQUIRE(b);
            bool down[100] = {false}, fail_open = false;
            for (int op = 0; op < 20000; op++) {
                int i = (int)rnd((uint32_t)n);
                switch (rnd(8)) {
                case 0:
                    down[i] = !down[i];
                    CHECK(balancer_set_down(b, i, down[i]) == 0);
                    continue;
                case 1:
                    balancer_conn_start(b, i);
                    continue;
                case 2:
                    balancer_conn_end(b, i);
                    continue;
                case 3:
                    balancer_report_latency(b, i, rnd(1000));
                    continue;
                case 4:
                    if (rnd(50) == 0) {
                        fail_open = !fail_open;
                        balancer_set_fail_open(b, fail_open);
                    }
                    break;
                default:
                    break;
                }
                bool tried[100] = {false};
                int list[8], nl = 0;
                uint64_t mask = 0;
                int k = (int)rnd(4) == 0 ? (int)rnd((uint32_t)n + 1) : 0;
                for (int j = 0; j < k; j++) {
                    int x = (int)rnd((uint32_t)n);
                    if (x < 64 && (rnd(2) || nl == 8))
                        mask |= 1ull << x;
                    else if (nl < 8)
                        list[nl++] = x;
                }
                for (int j = 0; j < n; j++)
                    tried[j] = j < 64 && (mask >> j & 1);
                for (int j = 0; j < nl; j++)
                    tried[list[j]] = true;
                char key[16];
                int kl = snprintf(key, sizeof(key), "%u", rnd(1000));
                int got = balancer_pick_ex(b, key, (size_t)kl, &mask, list, (size_t)nl);
                /* Oracle. */
                bool any_up = false;
                for (int j = 0; j < n; j++)
                    any_up = any_up || (wt[j] > 0 && !down[j]);
                bool ignore_down = fail_open && !any_up;
                int best_prio = INT32_MIN;
                for (int j = 0; j < n; j++)
                    if (wt[j] > 0 && (ignore_down || !down[j]) && !tried[j] && prio[j] > best_prio)
                        best_prio = prio[j];
                if (best_prio == INT32_MIN) {
                    CHECK(got == -1);
                } else {
                    REQUIRE(got >= 0 && got < n);
                    CHECK(wt[got] > 0 && !tried[got] && (ignore_down || !down[got]));
                    CHECK(prio[got] == best_prio);
                }
            }
            balancer_free(b);
        }
    }
}

int main(void)
{
    RUN(test_smooth_rr_sequence);
    RUN(test_rr_weight_ratio);
    RUN(test_rr_down_modes);
    RUN(test_zero_weight);
    RUN(test_priority_fallback);
    RUN(test_tried_mask);
    RUN(test_chash_stability);
    RUN(test_chash_spread);
    RUN(test_chash_remap);
    RUN(test_chash_failover);
    RUN(test_least_conn);
    RUN(test_ewma);
    RUN(test_parse);
    RUN(test_bad_input);
    RUN(test_large);
    RUN(test_random_ops);
    return check_summary();
}
