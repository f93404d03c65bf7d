/*
 * limit-count (APISIX 3.x): at most `count` requests per `time_window`
 * seconds per key, for the whole node (the counters live in shm_limits, so
 * N workers together admit `count`). The window starts with the first
 * request of a key and ends time_window seconds later (APISIX's local
 * policy); airgw's extension window_type "sliding" weighs the previous
 * aligned window instead (shm_limits.h). Keys: key_type var (a variable,
 * default remote_addr), var_combination ("$a $b") or constant; an empty key
 * counts by client address. With `group`, every route of the group shares
 * the counters; otherwise they belong to the route and the plugin's
 * configuration (changing the configuration starts afresh).
 *
 * Answers as APISIX: X-RateLimit-Limit / -Remaining / -Reset on every
 * response when show_limit_quota_header (also on the refusal, with
 * Remaining 0); refused: rejected_code (503) with {"error_msg":
 * rejected_msg} or the status's page; a limiter failure (the table full):
 * 500 {"error_msg":"failed to limit count"} unless allow_degradation.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../plugin.h"
#include "../shm_limits.h"
#include "limit_common.h"

struct limit_count {
    uint64_t count;        /* requests per window */
    uint64_t window_ms;    /* time_window */
    bool sliding;          /* window_type "sliding" */
    struct limit_conf lim; /* key, owner, rejected_code/_msg, allow_degradation */
    bool show_headers;     /* show_limit_quota_header */
};

static void lc_destroy(void *state)
{
    struct limit_count *lc = state;
    if (!lc)
        return;
    limit_conf_free(&lc->lim);
    free(lc);
}

static int lc_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    const json_t *c = a->conf;
    json_int_t count = json_integer_value(json_object_get(c, "count"));
    json_int_t window = json_integer_value(json_object_get(c, "time_window"));
    if (count <= 0 || window <= 0) {
        snprintf(err, errlen, "count and time_window must be positive integers");
        return -1;
    }
    const char *wt = json_string_value(json_object_get(c, "window_type"));
    if (wt && strcmp(wt, "fixed") != 0 && strcmp(wt, "sliding") != 0) {
        snprintf(err, errlen, "unknown window_type %s", wt);
        return -1;
    }
    struct limit_count *lc = calloc(1, sizeof(*lc));
    if (!lc) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    lc->count = (uint64_t)count;
    lc->window_ms = (uint64_t)window * 1000;
    lc->sliding = wt && strcmp(wt, "sliding") == 0;
    json_t *show = json_object_get(c, "show_limit_quota_header");
    lc->show_headers = show ? json_is_true(show) : true;
    if (limit_conf_parse(c, "limit-count", a->owner, json_string_value(json_object_get(c, "group")),
                         "remote_addr", &lc->lim, err, errlen) < 0) {
        lc_destroy(lc);
        return -1;
    }
    *state = lc;
    return 0;
}

static void set_num(struct plugin_req *r, const char *name, uint64_t v)
{
    char b[24];
    snprintf(b, sizeof(b), "%" PRIu64, v);
    plugin_resp_header_set(r, name, b);
}

static int lc_access(struct plugin_req *r, void *state, void **data)
{
    struct limit_count *lc = state;
    (void)data;
    char key[LIMIT_KEY_MAX];
    size_t klen = limit_key_req(&lc->lim.key, r, key, sizeof(key));
    struct shm_limits *t = limit_table();
    struct shm_limits_verdict v;
    int rc = -ENOMEM;
    if (t) {
        uint64_t k = shm_limits_key(lc->sliding ? SHM_LIMITS_SLIDING : SHM_LIMITS_COUNT,
                                    lc->lim.owner, "limit-count", key, klen);
        rc = shm_limits_count(t, k, lc->count, lc->window_ms, shm_limits_now(t), &v);
    }
    if (rc < 0) {
        limit_warn_full("limit-count");
        if (lc->lim.allow_degradation)
            return PLUGIN_CONTINUE;
        limit_reject(r, 500, "failed to limit count");
        return PLUGIN_STOP;
    }
    if (lc->show_headers) {
        set_num(r, "X-RateLimit-Limit", lc->count);
        set_num(r, "X-RateLimit-Remaining", v.remaining);
        set_num(r, "X-RateLimit-Reset", v.reset_s);
    }
    if (v.admitted)
        return PLUGIN_CONTINUE;
    limit_reject(r, lc->lim.rejected_code, lc->lim.rejected_msg);
    return PLUGIN_STOP;
}

const struct plugin_def plugin_def_limit_count = {
    .name = "limit-count",
    .priority = 1002,
    .flags = PLUGIN_HTTP,
    .create = lc_create,
    .destroy = lc_destroy,
    .access = lc_access,
    .worker_stop = limit_common_stop,
};
