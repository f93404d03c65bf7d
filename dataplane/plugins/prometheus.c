/*
 * prometheus (APISIX 3.x): records the metrics of the requests it applies
 * to (apisix_http_status, apisix_bandwidth, apisix_http_latency with
 * APISIX's labels) into the node-wide metrics region that the master
 * serves at /apisix/prometheus/metrics on the metrics listener. As in
 * APISIX, only requests whose route (or a global rule) has the plugin are
 * recorded; the connection gauges are always there. prefer_name: the route
 * label is the route's name rather than its id (the id when it has none).
 *
 * A request that meets the plugin twice (a global rule and its route, or
 * two global rules) is recorded once: by the first global rule that has
 * it, else by the route.
 */
#include <stdlib.h>
#include <string.h>

#include "../http_proxy.h"
#include "../metrics.h"
#include "../plugin.h"
#include "../snapshot.h"

extern const struct plugin_def plugin_def_prometheus;

struct prometheus {
    bool prefer_name; /* label routes by name */
};

static int pm_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct prometheus *p = calloc(1, sizeof(*p));
    if (!p)
        return -1;
    p->prefer_name = json_is_true(json_object_get(a->conf, "prefer_name"));
    *state = p;
    return 0;
}

static void pm_destroy(void *state)
{
    free(state);
}

/* The instance that records r: the first global rule's, else the route's
 * (the caller). */
static bool records(struct plugin_req *r, void *state)
{
    const struct snapshot *s = plugin_req_snapshot(r);
    for (size_t i = 0; s && i < s->ngchains; i++) {
        const struct plugin_chain *c = s->gchains[i];
        for (size_t j = 0; c && j < c->n; j++)
            if (c->inst[j].def == &plugin_def_prometheus)
                return c->inst[j].state == state;
    }
    return true;
}

static void pm_log(struct plugin_req *r, void *state, void **data)
{
    struct prometheus *p = state;
    (void)data;
    const struct plugin_env *env = plugin_env();
    if (!env || !env->metrics || !records(r, state))
        return;
    struct http_request_info i;
    plugin_req_info(r, &i);
    const char *route = plugin_req_route_id(r);
    if (p->prefer_name && route) {
        const char *name = plugin_req_var(r, "route_name", NULL);
        if (name && *name)
            route = name;
    }
    const struct consumer_rt *c = plugin_req_consumer(r);
    struct metrics_labels l = {
        .route = route,
        .matched_uri = i.matched_uri,
        .matched_host = i.matched_host,
        .node = i.node_host,
        .consumer = c ? c->username : NULL, /* APISIX: ctx.consumer_name */
    };
    metrics_observe(env->metrics, &l, i.status, i.latency_us, i.upstream_latency_us, i.bytes_in,
                    i.bytes_out);
}

const struct plugin_def plugin_def_prometheus = {
    .name = "prometheus",
    .priority = 500,
    /* Accepted on stream routes (APISIX has stream metrics); airgw records
     * none there yet: no stream callbacks, so stream chains skip it. */
    .flags = PLUGIN_HTTP | PLUGIN_STREAM,
    .create = pm_create,
    .destroy = pm_destroy,
    .log = pm_log,
};
