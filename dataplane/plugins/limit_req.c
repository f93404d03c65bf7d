/*
 * limit-req (APISIX 3.x): a leaky bucket per key for the whole node: `rate`
 * requests per second, up to `burst` more waiting. A request over the rate
 * but within the burst waits its turn (excess / rate seconds) on a timer of
 * the worker's loop (the request is suspended, PLUGIN_ASYNC), or goes on at
 * once with nodelay; over the burst it is refused with rejected_code (503)
 * and {"error_msg": rejected_msg} or the status's page. Keys: key_type var
 * or var_combination, as limit-count. The bucket lives in shm_limits (the
 * GCRA form of lua-resty-limit-traffic's req: the same admissions and
 * delays). A limiter failure (table full): 500 {"error_msg":"failed to
 * limit req"} unless allow_degradation.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../plugin.h"
#include "../shm_limits.h"
#include "limit_common.h"

struct limit_req {
    double rate;           /* requests per second */
    double burst;          /* excess requests that may wait */
    bool nodelay;          /* admit excess requests at once */
    struct limit_conf lim; /* key, owner, rejected_code/_msg, allow_degradation */
};

/* A request waiting for its turn. */
struct wait {
    uv_timer_t timer;     /* fires when the turn comes */
    struct plugin_req *r; /* the suspended request */
    void **slot;          /* the request's data pointer for this instance */
};

static void lr_destroy(void *state)
{
    struct limit_req *lr = state;
    if (!lr)
        return;
    limit_conf_free(&lr->lim);
    free(lr);
}

static int lr_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    const json_t *c = a->conf;
    double rate = json_number_value(json_object_get(c, "rate"));
    json_t *b = json_object_get(c, "burst");
    double burst = json_number_value(b);
    if (!(rate > 0) || !json_is_number(b) || !(burst >= 0)) {
        snprintf(err, errlen, "rate must be positive and burst not negative");
        return -1;
    }
    struct limit_req *lr = calloc(1, sizeof(*lr));
    if (!lr) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    lr->rate = rate;
    lr->burst = burst;
    lr->nodelay = json_is_true(json_object_get(c, "nodelay"));
    if (limit_conf_parse(c, "limit-req", a->owner, NULL, NULL, &lr->lim, err, errlen) < 0) {
        lr_destroy(lr);
        return -1;
    }
    *state = lr;
    return 0;
}

static void on_wait_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_turn(uv_timer_t *t)
{
    struct wait *w = t->data;
    struct plugin_req *r = w->r;
    *w->slot = NULL;
    uv_close((uv_handle_t *)&w->timer, on_wait_closed);
    plugin_resume(r);
}

/* The request ended while it waited. */
static void on_abort(void *ud)
{
    struct wait *w = ud;
    uv_timer_stop(&w->timer);
    *w->slot = NULL;
    uv_close((uv_handle_t *)&w->timer, on_wait_closed);
}

static int lr_access(struct plugin_req *r, void *state, void **data)
{
    struct limit_req *lr = state;
    char key[LIMIT_KEY_MAX];
    size_t klen = limit_key_req(&lr->lim.key, r, key, sizeof(key));
    struct shm_limits *t = limit_table();
    struct shm_limits_verdict v;
    int rc = -ENOMEM;
    if (t) {
        uint64_t k = shm_limits_key(SHM_LIMITS_REQ, lr->lim.owner, "limit-req", key, klen);
        rc = shm_limits_req(t, k, lr->rate, lr->burst, shm_limits_now(t), &v);
    }
    if (rc < 0) {
        limit_warn_full("limit-req");
        if (lr->lim.allow_degradation)
            return PLUGIN_CONTINUE;
        limit_reject(r, 500, "failed to limit req");
        return PLUGIN_STOP;
    }
    if (!v.admitted) {
        limit_reject(r, lr->lim.rejected_code, lr->lim.rejected_msg);
        return PLUGIN_STOP;
    }
    /* APISIX waits only for delays of a millisecond or more. */
    const struct plugin_env *env = plugin_env();
    if (lr->nodelay || v.delay_ns < 1000000 || !env)
        return PLUGIN_CONTINUE;
    struct wait *w = calloc(1, sizeof(*w));
    if (!w || uv_timer_init(env->loop, &w->timer) != 0) {
        free(w);
        return PLUGIN_CONTINUE; /* cannot wait: let it through rather than fail it */
    }
    w->timer.data = w;
    w->r = r;
    w->slot = data;
    *data = w;
    uv_timer_start(&w->timer, on_turn, (v.delay_ns + 999999) / 1000000, 0);
    plugin_set_abort(r, on_abort, w);
    return PLUGIN_ASYNC;
}

const struct plugin_def plugin_def_limit_req = {
    .name = "limit-req",
    .priority = 1001,
    .flags = PLUGIN_HTTP,
    .create = lr_create,
    .destroy = lr_destroy,
    .access = lr_access,
    .worker_stop = limit_common_stop,
};
