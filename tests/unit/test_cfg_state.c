/*
 * test_cfg_state: the data plane's copy of the configuration
 * (dataplane/cfg_state.c): live changes and snapshots applied in order, and
 * the pacer that folds a burst of changes into few recompiles.
 */
#include <jansson.h>
#include <stdint.h>

#include "cfg_state.h"
#include "check.h"

#define MS 1000000ull

static struct cfgs_msg msg(enum cfgs_type type, int64_t rev, const char *key, json_t *value)
{
    struct cfgs_msg m = {.type = type, .revision = rev, .key = key, .value = value};
    return m;
}

static void test_live_changes_and_snapshot(void)
{
    struct cfg_state st;
    cfg_state_init(&st);
    bool changed;
    json_t *v = json_pack("{s:s}", "uri", "/a");
    struct cfgs_msg m = msg(CFGS_PUT, 5, "/apisix/routes/1", v);
    CHECK(cfg_state_apply(&st, &m, &changed) == 0 && changed);
    CHECK(st.revision == 5 && json_object_size(st.res) == 1);
    m = msg(CFGS_SNAPSHOT_BEGIN, 9, NULL, NULL);
    CHECK(cfg_state_apply(&st, &m, &changed) == 0 && !changed);
    m = msg(CFGS_PUT, 9, "/apisix/routes/2", v);
    CHECK(cfg_state_apply(&st, &m, &changed) == 0 && !changed);
    CHECK(json_object_get(st.res, "/apisix/routes/2") == NULL); /* not before the end */
    m = msg(CFGS_DELETE, 9, "/apisix/routes/1", NULL);
    CHECK(cfg_state_apply(&st, &m, &changed) < 0); /* a delete inside a snapshot */
    m = msg(CFGS_SNAPSHOT_END, 9, NULL, NULL);
    CHECK(cfg_state_apply(&st, &m, &changed) == 0 && changed);
    CHECK(st.revision == 9 && json_object_size(st.res) == 1);
    CHECK(json_object_get(st.res, "/apisix/routes/2") != NULL);
    json_decref(v);
    cfg_state_free(&st);
}

static void test_pacer_first_and_cheap_runs_are_not_delayed(void)
{
    struct cfg_pacer p = {0};
    CHECK(cfg_pacer_delay_ms(&p, 1000 * MS) == 0); /* never ran */
    cfg_pacer_start(&p, 1000 * MS);
    cfg_pacer_done(&p, 1000 * MS + MS / 2); /* 0.5 ms */
    CHECK(p.runs == 1);
    CHECK(cfg_pacer_delay_ms(&p, 1000 * MS + MS / 2) == 0);
}

static void test_pacer_costly_runs_rest(void)
{
    struct cfg_pacer p = {0};
    cfg_pacer_start(&p, 1000 * MS);
    cfg_pacer_done(&p, 1040 * MS); /* 40 ms */
    /* Right after: rest three times the cost, so runs take about a quarter
     * of the time under a steady stream of changes. */
    CHECK(cfg_pacer_delay_ms(&p, 1040 * MS) == 120);
    CHECK(cfg_pacer_delay_ms(&p, 1100 * MS) == 60);
    CHECK(cfg_pacer_delay_ms(&p, 1160 * MS) == 0);
    CHECK(cfg_pacer_delay_ms(&p, 5000 * MS) == 0); /* a change after a quiet spell */
    /* Whatever a run cost, the wait is bounded. */
    cfg_pacer_start(&p, 6000 * MS);
    cfg_pacer_done(&p, 66000 * MS); /* 60 s */
    CHECK(cfg_pacer_delay_ms(&p, 66000 * MS) == 5000);
    /* A clock that went backwards does not make a huge cost. */
    cfg_pacer_start(&p, 70000 * MS);
    cfg_pacer_done(&p, 69000 * MS);
    CHECK(p.cost_ns == 0 && cfg_pacer_delay_ms(&p, 69000 * MS) == 0);
}

int main(void)
{
    RUN(test_live_changes_and_snapshot);
    RUN(test_pacer_first_and_cheap_runs_are_not_delayed);
    RUN(test_pacer_costly_runs_rest);
    return check_summary();
}
