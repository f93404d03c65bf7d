/*
 * fuzz_mqtt_codec: libFuzzer target for the MQTT CONNECT parser and the
 * CONNACK builders (dataplane/mqtt_codec).
 *
 * Input: the bytes a client sends first (the corpus holds real CONNECTs
 * captured from mosquitto clients plus hand-made edge cases). Checked on
 * every input:
 *  - splitting does not matter: every prefix (all of them for short inputs,
 *    about a hundred for long ones) needs more or gives the whole input's
 *    result, and each prefix is parsed from a buffer of exactly that size
 *    so ASan catches a read past len;
 *  - a success reports a length <= len, and every view lies inside the
 *    packet; the packet alone parses to the same fields; peek_level agrees;
 *  - a smaller max_packet only ever turns the result into TOO_LARGE;
 *  - the CONNACK written for an error, and one with a reason taken from the
 *    input, are well formed and fit the space given.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt_codec.h"

#define LIMIT 65536

static void check(int ok)
{
    if (!ok)
        abort();
}

static int inside(struct mqtt_bytes v, const uint8_t *buf, size_t len)
{
    if (!v.ptr)
        return v.len == 0;
    return v.ptr >= buf && v.len <= len && (size_t)(v.ptr - buf) <= len - v.len;
}

static void check_views(const struct mqtt_connect *c, const uint8_t *buf, size_t len)
{
    const struct mqtt_bytes vs[] = {
        c->protocol_name,  c->props,      c->p.auth_method,   c->p.auth_data,
        c->client_id,      c->will_props, c->wp.content_type, c->wp.response_topic,
        c->wp.correlation, c->will_topic, c->will_payload,    c->username,
        c->password,
    };
    for (size_t i = 0; i < sizeof(vs) / sizeof(vs[0]); i++)
        check(inside(vs[i], buf, len));
    check(c->client_id.ptr != NULL);
    check(c->will == (c->will_topic.ptr != NULL));
    check(c->will_qos <= 2);
}

/* Same fields, views at the same offsets from their buffers. */
static int same_view(struct mqtt_bytes a, const uint8_t *ba, struct mqtt_bytes b, const uint8_t *bb)
{
    if (!a.ptr || !b.ptr)
        return !a.ptr && !b.ptr;
    return a.len == b.len && a.ptr - ba == b.ptr - bb;
}

static void check_same(const struct mqtt_connect *a, const uint8_t *ba,
                       const struct mqtt_connect *b, const uint8_t *bb)
{
    check(a->total_len == b->total_len && a->level == b->level && a->flags == b->flags);
    check(a->keep_alive == b->keep_alive);
    check(same_view(a->client_id, ba, b->client_id, bb));
    check(same_view(a->username, ba, b->username, bb));
    check(same_view(a->password, ba, b->password, bb));
    check(same_view(a->will_payload, ba, b->will_payload, bb));
    check(same_view(a->props, ba, b->props, bb));
    check(a->p.session_expiry == b->p.session_expiry);
    check(a->p.user_property_count == b->p.user_property_count);
    check(a->wp.user_property_count == b->wp.user_property_count);
}

/* A CONNACK as we write it: 3.x form, or 5.0 form whose lengths add up. */
static void check_connack(const uint8_t *o, size_t n, size_t cap)
{
    if (n == 0)
        return;
    check(n <= cap && n >= 4 && o[0] == 0x20);
    if (n == 4) {
        check(o[1] == 2 && o[2] == 0);
        return;
    }
    size_t rem = 0, i = 1;
    for (int shift = 0; i < n && i <= 3; i++, shift += 7) {
        rem |= (size_t)(o[i] & 0x7f) << shift;
        if (!(o[i] & 0x80))
            break;
    }
    check(i < n && 1 + i + rem == n);
    check(o[i + 1] == 0); /* acknowledge flags */
}

static int parse_exact(const uint8_t *data, size_t k, size_t max, struct mqtt_connect *c)
{
    /* an exact-size copy, so a read past k is a heap overflow ASan sees */
    uint8_t *b = malloc(k ? k : 1);
    memcpy(b, data, k);
    int rc = mqtt_parse_connect(b, k, max, c);
    if (rc > 0)
        check_views(c, b, (size_t)rc);
    free(b);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mqtt_connect c, c2;
    int rc = mqtt_parse_connect(data, size, LIMIT, &c);
    check(rc <= 0 || (size_t)rc <= size);
    check(rc >= MQTT_ERR_TOO_LARGE);

    /* prefixes */
    size_t step = size <= 512 ? 1 : size / 97 + 1;
    for (size_t k = 0; k < size; k += step) {
        int r = parse_exact(data, k, LIMIT, &c2);
        check(r == MQTT_NEED_MORE || r == rc);
        check(r <= 0 || (size_t)r <= k);
    }
    if (rc > 0 && (size_t)rc < size) {
        /* just the packet, and the packet minus one byte */
        check(parse_exact(data, (size_t)rc, LIMIT, &c2) == rc);
        check(parse_exact(data, (size_t)rc - 1, LIMIT, &c2) == MQTT_NEED_MORE);
    }

    if (rc > 0) {
        check_views(&c, data, (size_t)rc);
        check(c.total_len == (size_t)rc);
        check(c.level >= 3 && c.level <= 5);
        mqtt_parse_connect(data, (size_t)rc, LIMIT, &c2);
        check_same(&c, data, &c2, data);
        uint8_t lvl = 0;
        check(mqtt_peek_level(data, size, &lvl) == 1 && lvl == c.level);
        (void)mqtt_client_id_acceptable(&c);
    } else {
        uint8_t lvl;
        int p = mqtt_peek_level(data, size, &lvl);
        check(p == 1 || p == MQTT_NEED_MORE || p == MQTT_ERR_NOT_MQTT || p == MQTT_ERR_MALFORMED);
        if (rc == MQTT_ERR_NOT_MQTT)
            check(p == MQTT_ERR_NOT_MQTT);
    }

    /* a smaller limit can only make it too large, no limit only less so */
    size_t small = size ? data[size - 1] * 64u + 1 : 1;
    int rs = mqtt_parse_connect(data, size, small, &c2);
    check(rs == rc || rs == MQTT_ERR_TOO_LARGE);
    uint8_t ack[MQTT_CONNACK_MAX];
    check_connack(ack, mqtt_connack_for_error(rs, data, size, &c2, ack, sizeof(ack)), sizeof(ack));
    int r0 = mqtt_parse_connect(data, size, 0, &c2);
    check(r0 == rc || rc == MQTT_ERR_TOO_LARGE);
    check(mqtt_strerror(rc) != NULL);

    /* every refusal, in the form of the level the input names */
    uint8_t lvl = size > 8 ? data[8] : 4;
    for (int why = MQTT_REFUSE_VERSION; why <= MQTT_REFUSE_PROTOCOL_ERROR; why++) {
        uint8_t code = mqtt_refusal_code(lvl, (enum mqtt_refusal)why);
        size_t m = mqtt_connack(lvl, code, ack, sizeof(ack));
        check_connack(ack, m, sizeof(ack));
        check(m == (code == MQTT_CONNACK_NONE ? 0u : lvl >= MQTT_LEVEL_5 ? 5u : 4u));
    }

    /* the refusal for an error */
    uint8_t out[MQTT_CONNACK_MAX];
    size_t n = mqtt_connack_for_error(rc, data, size, &c, out, sizeof(out));
    check_connack(out, n, sizeof(out));
    check(rc < 0 || n == 0);
    if (rc == MQTT_ERR_NOT_MQTT)
        check(n == 0);

    /* a CONNACK with a reason from the input, into a tight buffer */
    if (size >= 2) {
        size_t rlen = size - 2 < 300 ? size - 2 : 300;
        char *reason = malloc(rlen + 1);
        memcpy(reason, data + 2, rlen);
        reason[rlen] = 0;
        size_t cap = data[1];
        uint8_t *o = malloc(cap ? cap : 1);
        size_t m = mqtt_connack_reason(data[0] & 7, data[1], reason, o, cap);
        check_connack(o, m, cap);
        free(o);
        free(reason);
    }
    return 0;
}
