/*
 * limit-conn (APISIX 3.x): at most `conn` concurrent requests (HTTP) or
 * connections (stream routes) per key for the whole node, plus `burst`
 * more that are delayed; beyond conn + burst: refused (HTTP: rejected_code
 * (503) with {"error_msg": rejected_msg} or the status's page; MQTT: a
 * CONNACK "server unavailable"; other streams: closed). The count is taken
 * in access (stream: preread) and given back in the log phase (stream_log),
 * whatever happened to the request.
 *
 * Delay (lua-resty-limit-traffic's conn): the n-th concurrent request over
 * conn waits unit_delay * floor((n - 1) / conn) seconds on a timer of the
 * worker's loop; unit_delay starts at default_conn_delay and, unless
 * only_use_default_delay, follows the requests' latency (the mean of the
 * old value and each finished request's time, per worker as in APISIX).
 * Stream connections over conn are not delayed (preread cannot wait).
 * A limiter failure (table full): 500 {"error_msg":"failed to limit conn"}
 * (stream: refused) unless allow_degradation.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../mqtt_codec.h"
#include "../plugin.h"
#include "../shm_limits.h"
#include "limit_common.h"

struct limit_conn {
    uint64_t conn;         /* concurrent requests admitted without delay */
    uint64_t burst;        /* more admitted with a delay */
    double unit_delay;     /* seconds; default_conn_delay, then adapted */
    bool only_default;     /* only_use_default_delay */
    struct limit_conf lim; /* key, owner, rejected_code/_msg, allow_degradation */
};

struct wait;

/* One admitted request or connection. */
struct conn_req {
    struct shm_limits_hold hold; /* what to give back */
    uint64_t t0;                 /* uv_hrtime at admission */
    double delay;                /* seconds it waited */
    struct wait *w;              /* its wait, while it waits */
};

struct wait {
    uv_timer_t timer;     /* fires when it may go on */
    struct plugin_req *r; /* the suspended request */
    struct conn_req *cr;  /* whose w points here */
};

static void lcn_destroy(void *state)
{
    struct limit_conn *lc = state;
    if (!lc)
        return;
    limit_conf_free(&lc->lim);
    free(lc);
}

static int lcn_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    const json_t *c = a->conf;
    json_int_t conn = json_integer_value(json_object_get(c, "conn"));
    json_int_t burst = json_integer_value(json_object_get(c, "burst"));
    double delay = json_number_value(json_object_get(c, "default_conn_delay"));
    if (conn <= 0 || burst < 0 || !(delay > 0)) {
        snprintf(err, errlen,
                 "conn must be positive, burst not negative, default_conn_delay "
                 "positive");
        return -1;
    }
    struct limit_conn *lc = calloc(1, sizeof(*lc));
    if (!lc) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    lc->conn = (uint64_t)conn;
    lc->burst = (uint64_t)burst;
    lc->unit_delay = delay;
    lc->only_default = json_is_true(json_object_get(c, "only_use_default_delay"));
    if (limit_conf_parse(c, "limit-conn", a->owner, NULL, NULL, &lc->lim, err, errlen) < 0) {
        lcn_destroy(lc);
        return -1;
    }
    *state = lc;
    return 0;
}

/* Takes one for key. 1 admitted (*cr set), 0 refused, -1 limiter failed. */
static int take(struct limit_conn *lc, const char *key, size_t klen, uint64_t *held,
                struct conn_req **cr)
{
    struct shm_limits *t = limit_table();
    if (!t)
        return -1;
    uint64_t k = shm_limits_key(SHM_LIMITS_CONN, lc->lim.owner, "limit-conn", key, klen);
    bool ok;
    struct shm_limits_hold h;
    int rc = shm_limits_conn_acquire(t, k, limit_worker(), lc->conn + lc->burst, shm_limits_now(t),
                                     &ok, held, &h);
    if (rc < 0) {
        limit_warn_full("limit-conn");
        return -1;
    }
    if (!ok)
        return 0;
    *cr = calloc(1, sizeof(**cr));
    if (!*cr) {
        shm_limits_conn_release(t, &h, limit_worker(), shm_limits_now(t));
        return -1;
    }
    (*cr)->hold = h;
    (*cr)->t0 = uv_hrtime();
    return 1;
}

static void give_back(struct conn_req *cr)
{
    struct shm_limits *t = limit_table();
    if (t)
        shm_limits_conn_release(t, &cr->hold, limit_worker(), shm_limits_now(t));
}

static void on_wait_closed(uv_handle_t *h)
{
    free(h->data);
}

static void end_wait(struct wait *w)
{
    uv_timer_stop(&w->timer);
    w->cr->w = NULL;
    uv_close((uv_handle_t *)&w->timer, on_wait_closed);
}

static void on_turn(uv_timer_t *t)
{
    struct wait *w = t->data;
    struct plugin_req *r = w->r;
    end_wait(w);
    plugin_resume(r);
}

static void on_abort(void *ud)
{
    end_wait(ud);
}

static int lcn_access(struct plugin_req *r, void *state, void **data)
{
    struct limit_conn *lc = state;
    char key[LIMIT_KEY_MAX];
    size_t klen = limit_key_req(&lc->lim.key, r, key, sizeof(key));
    uint64_t held = 0;
    struct conn_req *cr = NULL;
    int rc = take(lc, key, klen, &held, &cr);
    if (rc < 0) {
        if (lc->lim.allow_degradation)
            return PLUGIN_CONTINUE;
        limit_reject(r, 500, "failed to limit conn");
        return PLUGIN_STOP;
    }
    if (rc == 0) {
        limit_reject(r, lc->lim.rejected_code, lc->lim.rejected_msg);
        return PLUGIN_STOP;
    }
    *data = cr;
    if (held <= lc->conn)
        return PLUGIN_CONTINUE;
    double delay = lc->unit_delay * floor((double)(held - 1) / (double)lc->conn);
    const struct plugin_env *env = plugin_env();
    if (delay < 0.001 || !env)
        return PLUGIN_CONTINUE;
    struct wait *w = calloc(1, sizeof(*w));
    if (!w || uv_timer_init(env->loop, &w->timer) != 0) {
        free(w);
        return PLUGIN_CONTINUE;
    }
    cr->delay = delay;
    cr->w = w;
    w->timer.data = w;
    w->r = r;
    w->cr = cr;
    uint64_t ms = (uint64_t)ceil(delay * 1000.0);
    uv_timer_start(&w->timer, on_turn, ms, 0);
    plugin_set_abort(r, on_abort, w);
    return PLUGIN_ASYNC;
}

static void lcn_log(struct plugin_req *r, void *state, void **data)
{
    struct limit_conn *lc = state;
    struct conn_req *cr = *data;
    (void)r;
    if (!cr)
        return;
    if (cr->w)
        end_wait(cr->w);
    give_back(cr);
    if (!lc->only_default) {
        /* lua-resty-limit-traffic: unit_delay = (latency + unit_delay) / 2,
         * the latency without the time it waited here. */
        double lat = (double)(uv_hrtime() - cr->t0) / 1e9 - cr->delay;
        if (lat > 0)
            lc->unit_delay = (lat + lc->unit_delay) / 2;
    }
    free(cr);
    *data = NULL;
}

static int lcn_preread(struct plugin_stream *s, void *state, void **data)
{
    struct limit_conn *lc = state;
    char key[LIMIT_KEY_MAX];
    size_t klen = limit_key_stream(&lc->lim.key, s, key, sizeof(key));
    uint64_t held = 0;
    struct conn_req *cr = NULL;
    int rc = take(lc, key, klen, &held, &cr);
    if (rc > 0) {
        *data = cr;
        return PLUGIN_CONTINUE;
    }
    if (rc < 0 && lc->lim.allow_degradation)
        return PLUGIN_CONTINUE;
    plugin_stream_deny(s, MQTT_REFUSE_UNAVAILABLE);
    return PLUGIN_STOP;
}

static void lcn_stream_log(struct plugin_stream *s, void *state, void **data)
{
    (void)s;
    (void)state;
    struct conn_req *cr = *data;
    if (!cr)
        return;
    give_back(cr);
    free(cr);
    *data = NULL;
}

const struct plugin_def plugin_def_limit_conn = {
    .name = "limit-conn",
    .priority = 1003,
    .flags = PLUGIN_HTTP | PLUGIN_STREAM,
    .create = lcn_create,
    .destroy = lcn_destroy,
    .access = lcn_access,
    .log = lcn_log,
    .preread = lcn_preread,
    .stream_log = lcn_stream_log,
    .worker_stop = limit_common_stop,
};
