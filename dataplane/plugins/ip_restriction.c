/*
 * ip-restriction: admits or refuses clients by address (APISIX 3.x's
 * ip-restriction, priority 3000; HTTP access phase and stream preread).
 *
 * The configuration has exactly one of "whitelist" (only these clients are
 * admitted) or "blacklist" (these clients are refused); entries are IPv4
 * or IPv6 addresses or CIDR ranges, mixed freely. An IPv4-mapped IPv6
 * client (::ffff:1.2.3.4, from a dual-stack listener) matches IPv4
 * entries. The lists are parsed once, in create; a request costs a scan of
 * the parsed ranges, no allocation.
 *
 * Refusals: HTTP gets conf.response_code (default 403) with
 * {"message": conf.message} (default "Your IP address is not allowed");
 * a stream connection is refused with plugin_stream_deny (MQTT: a CONNACK
 * "not authorized", 3.1.1 0x05 / 5.0 0x87; plain TCP: closed).
 *
 * A client whose address is unknown or not IP (never the case on our
 * TCP listeners) matches no entry: a whitelist refuses it, a blacklist
 * admits it.
 */
#include "plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cidr.h"
#include "mqtt_codec.h"

struct ip_restriction {
    bool whitelist;      /* true: admit only matches; false: refuse matches */
    size_t n;            /* ranges in cidr */
    struct cidr *cidr;   /* the parsed list */
    const char *message; /* HTTP refusal message (borrowed from the conf) */
    int status;          /* HTTP refusal status */
};

static void ip_restriction_destroy(void *state)
{
    struct ip_restriction *ir = state;
    if (!ir)
        return;
    free(ir->cidr);
    free(ir);
}

static int ip_restriction_create(const struct plugin_create_args *a, void **state, char *err,
                                 size_t errlen)
{
    const json_t *wl = json_object_get(a->conf, "whitelist");
    const json_t *bl = json_object_get(a->conf, "blacklist");
    if ((wl != NULL) == (bl != NULL) || !json_is_array(wl ? wl : bl)) {
        snprintf(err, errlen, "needs exactly one of whitelist or blacklist");
        return -1;
    }
    const json_t *list = wl ? wl : bl;
    struct ip_restriction *ir = calloc(1, sizeof(*ir));
    if (!ir)
        goto fail_oom;
    ir->whitelist = wl != NULL;
    ir->n = json_array_size(list);
    ir->cidr = calloc(ir->n ? ir->n : 1, sizeof(*ir->cidr));
    if (!ir->cidr)
        goto fail_oom;
    for (size_t i = 0; i < ir->n; i++) {
        const char *s = json_string_value(json_array_get(list, i));
        if (!s || cidr_parse(s, &ir->cidr[i]) != 0) {
            snprintf(err, errlen, "invalid ip address: %s", s ? s : "(not a string)");
            ip_restriction_destroy(ir);
            return -1;
        }
    }
    const char *msg = json_string_value(json_object_get(a->conf, "message"));
    ir->message = msg ? msg : "Your IP address is not allowed";
    json_int_t code = json_integer_value(json_object_get(a->conf, "response_code"));
    ir->status = code >= 400 && code <= 599 ? (int)code : 403;
    *state = ir;
    return 0;
fail_oom:
    ip_restriction_destroy(ir);
    snprintf(err, errlen, "out of memory");
    return -1;
}

/* True when the client at sa may pass. */
static bool ip_restriction_admits(const struct ip_restriction *ir, const struct sockaddr *sa)
{
    bool match = false;
    if (sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)) {
        for (size_t i = 0; i < ir->n && !match; i++)
            match = cidr_match(&ir->cidr[i], sa);
    }
    return ir->whitelist ? match : !match;
}

static int ip_restriction_access(struct plugin_req *r, void *state, void **data)
{
    const struct ip_restriction *ir = state;
    (void)data;
    if (ip_restriction_admits(ir, plugin_req_remote(r)))
        return PLUGIN_CONTINUE;
    plugin_respond_message(r, ir->status, ir->message);
    return PLUGIN_STOP;
}

static int ip_restriction_preread(struct plugin_stream *s, void *state, void **data)
{
    const struct ip_restriction *ir = state;
    (void)data;
    if (ip_restriction_admits(ir, plugin_stream_remote(s)))
        return PLUGIN_CONTINUE;
    plugin_stream_deny(s, MQTT_REFUSE_NOT_AUTHORIZED);
    return PLUGIN_STOP;
}

const struct plugin_def plugin_def_ip_restriction = {
    .name = "ip-restriction",
    .priority = 3000,
    .flags = PLUGIN_HTTP | PLUGIN_STREAM,
    .create = ip_restriction_create,
    .destroy = ip_restriction_destroy,
    .access = ip_restriction_access,
    .preread = ip_restriction_preread,
};
