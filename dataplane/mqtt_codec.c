/*
 * mqtt_codec: CONNECT parsing and CONNACK building for MQTT 3.1, 3.1.1 and
 * 5.0 (see mqtt_codec.h for the contracts).
 *
 * The parser reads the packet front to back through a cursor that knows two
 * limits: the end of the packet (from the remaining length) and the end of
 * the bytes received. A read past the packet end is MALFORMED; a read past
 * the received bytes (but inside the packet) is NEED_MORE. Since every
 * decision depends only on bytes before the cursor and on the remaining
 * length, a prefix of a packet either needs more or fails exactly as the
 * whole packet does: callers may feed it any way they like.
 *
 * Property blocks and strings are only decoded once they have arrived
 * whole, so the property decoder never sees a partial block and has a
 * single failure: MALFORMED.
 *
 * Choices the specs leave open, and what we do:
 *  - Remaining lengths and property lengths in non-minimal varint form are
 *    accepted (3.1.1 allows it; the broker sees the same bytes and decides).
 *  - v5 protocol errors inside CONNECT (duplicate property, receive maximum
 *    or maximum packet size 0, request flags above 1, authentication data
 *    without a method) are reported as MALFORMED: the caller refuses them
 *    the same way.
 *  - A password without a user name is MALFORMED in 3.1 and 3.1.1 and
 *    allowed in 5.0.
 *  - Will topics are checked as UTF-8 only (wildcards, empty topic and the
 *    will payload's format indicator and content are the broker's to
 *    judge; a payload format other than 0/1 is passed on, as mosquitto
 *    does).
 */
#include "mqtt_codec.h"

#include <string.h>

/* Cursor over one packet. */
struct cur {
    const uint8_t *buf; /* start of the packet */
    size_t pos;         /* next byte to read */
    size_t end;         /* end of the packet: reading past it is malformed */
    size_t have;        /* bytes received, capped at end */
};

/* Inside the parser, "need more" must differ from success (0):
 * MQTT_NEED_MORE is 0 in the API, so internally it is AGAIN. */
#define AGAIN 1

/* 0 if n more bytes can be read, else MQTT_ERR_MALFORMED or AGAIN.
 * Malformed wins: a field that overruns the packet is an error whatever
 * has arrived. */
static int need(const struct cur *c, size_t n)
{
    if (n > c->end - c->pos)
        return MQTT_ERR_MALFORMED;
    if (n > c->have - c->pos)
        return AGAIN;
    return 0;
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/*
 * Decodes a variable byte integer from p[0..avail). Returns the number of
 * bytes it took (1..4) and sets *val, MQTT_NEED_MORE if it is not complete
 * within avail, or MQTT_ERR_MALFORMED if a fourth byte still has the
 * continuation bit.
 */
static int varint(const uint8_t *p, size_t avail, uint32_t *val)
{
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= avail)
            return MQTT_NEED_MORE;
        v |= (uint32_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *val = v;
            return (int)i + 1;
        }
    }
    return MQTT_ERR_MALFORMED;
}

/*
 * True if s[0..n) is well-formed UTF-8 as MQTT requires: no overlong forms,
 * no surrogates (U+D800..U+DFFF), nothing above U+10FFFF, and no U+0000.
 * Other control characters and non-characters are allowed (the spec lets a
 * receiver accept them).
 */
static bool utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t more;
        uint8_t lo = 0x80, hi = 0xbf; /* range of the first continuation */
        if (b == 0)
            return false;
        if (b < 0x80) {
            i++;
            continue;
        }
        if (b >= 0xc2 && b <= 0xdf) {
            more = 1;
        } else if (b >= 0xe0 && b <= 0xef) {
            more = 2;
            if (b == 0xe0)
                lo = 0xa0; /* overlong */
            else if (b == 0xed)
                hi = 0x9f; /* surrogates */
        } else if (b >= 0xf0 && b <= 0xf4) {
            more = 3;
            if (b == 0xf0)
                lo = 0x90; /* overlong */
            else if (b == 0xf4)
                hi = 0x8f; /* above U+10FFFF */
        } else {
            return false; /* continuation byte, 0xc0/0xc1 overlong, 0xf5.. */
        }
        if (more > n - i - 1)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= more; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += more + 1;
    }
    return true;
}

/* Reads a 2-byte length and that many bytes into *v; checks UTF-8 if
 * utf8. 0, AGAIN or MQTT_ERR_MALFORMED. */
static int read_field(struct cur *c, struct mqtt_bytes *v, bool utf8)
{
    int rc = need(c, 2);
    if (rc)
        return rc;
    size_t n = get_u16(c->buf + c->pos);
    rc = need(c, 2 + n);
    if (rc)
        return rc;
    v->ptr = c->buf + c->pos + 2;
    v->len = n;
    if (utf8 && !utf8_ok(v->ptr, n))
        return MQTT_ERR_MALFORMED;
    c->pos += 2 + n;
    return 0;
}

/* Reads a property block (varint length + block) into *v, once it has
 * arrived whole. 0, AGAIN or MQTT_ERR_MALFORMED. */
static int read_props_block(struct cur *c, struct mqtt_bytes *v)
{
    uint32_t plen;
    int n = varint(c->buf + c->pos, c->have - c->pos, &plen);
    if (n == MQTT_NEED_MORE) {
        /* Not complete in what arrived; still malformed if the packet
         * ends before it could be. */
        return c->have < c->end ? AGAIN : MQTT_ERR_MALFORMED;
    }
    if (n < 0)
        return n;
    /* the varint itself was inside have, so inside the packet */
    int rc = need(c, (size_t)n + plen);
    if (rc)
        return rc;
    v->ptr = c->buf + c->pos + n;
    v->len = plen;
    c->pos += (size_t)n + plen;
    return 0;
}

/* Property identifiers (MQTT 5.0 section 2.2.2.2) used in CONNECT. */
enum {
    P_PAYLOAD_FORMAT = 0x01,
    P_MESSAGE_EXPIRY = 0x02,
    P_CONTENT_TYPE = 0x03,
    P_RESPONSE_TOPIC = 0x08,
    P_CORRELATION = 0x09,
    P_SESSION_EXPIRY = 0x11,
    P_AUTH_METHOD = 0x15,
    P_AUTH_DATA = 0x16,
    P_REQUEST_PROBLEM = 0x17,
    P_WILL_DELAY = 0x18,
    P_REQUEST_RESPONSE = 0x19,
    P_REASON_STRING = 0x1f,
    P_RECEIVE_MAX = 0x21,
    P_TOPIC_ALIAS_MAX = 0x22,
    P_USER_PROPERTY = 0x26,
    P_MAX_PACKET_SIZE = 0x27,
};

/*
 * Decodes a whole CONNECT (will == false) or will (will == true) property
 * block. Exactly one of cp / wp is used. Unknown or misplaced identifiers,
 * duplicates of single properties, bad values and truncated values are all
 * MQTT_ERR_MALFORMED; 0 on success.
 */
static int parse_props(const struct mqtt_bytes *blk, bool will, struct mqtt_connect_props *cp,
                       struct mqtt_will_props *wp)
{
    struct cur c = {.buf = blk->ptr, .pos = 0, .end = blk->len, .have = blk->len};
    uint64_t seen = 0;
    while (c.pos < c.end) {
        uint8_t id = c.buf[c.pos++];
        struct mqtt_bytes s, s2;
        /* Identifiers are varints, but all defined ones fit in one byte:
         * a continuation bit means an identifier that does not exist. */
        if (id >= 64)
            return MQTT_ERR_MALFORMED;
        if (id != P_USER_PROPERTY) {
            if (seen & (1ull << id))
                return MQTT_ERR_MALFORMED;
            seen |= 1ull << id;
        }
        const uint8_t *v = c.buf + c.pos;
        switch (id) {
        case P_SESSION_EXPIRY:
        case P_MAX_PACKET_SIZE:
        case P_WILL_DELAY:
        case P_MESSAGE_EXPIRY:
            if (will != (id == P_WILL_DELAY || id == P_MESSAGE_EXPIRY))
                return MQTT_ERR_MALFORMED;
            if (need(&c, 4))
                return MQTT_ERR_MALFORMED;
            c.pos += 4;
            if (id == P_SESSION_EXPIRY) {
                cp->has_session_expiry = true;
                cp->session_expiry = get_u32(v);
            } else if (id == P_MAX_PACKET_SIZE) {
                cp->has_max_packet_size = true;
                cp->max_packet_size = get_u32(v);
                if (cp->max_packet_size == 0)
                    return MQTT_ERR_MALFORMED;
            } else if (id == P_WILL_DELAY) {
                wp->has_will_delay = true;
                wp->will_delay = get_u32(v);
            } else {
                wp->has_message_expiry = true;
                wp->message_expiry = get_u32(v);
            }
            break;
        case P_RECEIVE_MAX:
        case P_TOPIC_ALIAS_MAX:
            if (will || need(&c, 2))
                return MQTT_ERR_MALFORMED;
            c.pos += 2;
            if (id == P_RECEIVE_MAX) {
                cp->has_receive_max = true;
                cp->receive_max = get_u16(v);
                if (cp->receive_max == 0)
                    return MQTT_ERR_MALFORMED;
            } else {
                cp->has_topic_alias_max = true;
                cp->topic_alias_max = get_u16(v);
            }
            break;
        case P_REQUEST_RESPONSE:
        case P_REQUEST_PROBLEM:
        case P_PAYLOAD_FORMAT:
            if (will != (id == P_PAYLOAD_FORMAT) || need(&c, 1))
                return MQTT_ERR_MALFORMED;
            /* 5.0 makes other values of the request flags a protocol error;
             * it says no such thing of the payload format, and mosquitto
             * passes any value on */
            if (id != P_PAYLOAD_FORMAT && v[0] > 1)
                return MQTT_ERR_MALFORMED;
            c.pos += 1;
            if (id == P_REQUEST_RESPONSE) {
                cp->has_request_response_info = true;
                cp->request_response_info = v[0];
            } else if (id == P_REQUEST_PROBLEM) {
                cp->has_request_problem_info = true;
                cp->request_problem_info = v[0];
            } else {
                wp->has_payload_format = true;
                wp->payload_format = v[0];
            }
            break;
        case P_AUTH_METHOD:
        case P_CONTENT_TYPE:
        case P_RESPONSE_TOPIC:
            if (will != (id != P_AUTH_METHOD) || read_field(&c, &s, true))
                return MQTT_ERR_MALFORMED;
            if (id == P_AUTH_METHOD)
                cp->auth_method = s;
            else if (id == P_CONTENT_TYPE)
                wp->content_type = s;
            else
                wp->response_topic = s;
            break;
        case P_AUTH_DATA:
        case P_CORRELATION:
            if (will != (id == P_CORRELATION) || read_field(&c, &s, false))
                return MQTT_ERR_MALFORMED;
            if (id == P_AUTH_DATA)
                cp->auth_data = s;
            else
                wp->correlation = s;
            break;
        case P_USER_PROPERTY:
            if (read_field(&c, &s, true) || read_field(&c, &s2, true))
                return MQTT_ERR_MALFORMED;
            if (will)
                wp->user_property_count++;
            else
                cp->user_property_count++;
            break;
        default:
            return MQTT_ERR_MALFORMED;
        }
    }
    /* Authentication data without a method is a protocol error (5.0
     * 3.1.2.11.10). */
    if (!will && cp->auth_data.ptr && !cp->auth_method.ptr)
        return MQTT_ERR_MALFORMED;
    return 0;
}

static bool bytes_eq(const struct mqtt_bytes *b, const char *s)
{
    size_t n = strlen(s);
    return b->len == n && memcmp(b->ptr, s, n) == 0;
}

/* The body of mqtt_parse_connect once the fixed header is known: 0, AGAIN
 * or an MQTT_ERR_*. */
static int parse_body(struct cur *c, struct mqtt_connect *out)
{
    int rc;

    /* Variable header: protocol name, level, flags, keep alive. */
    rc = read_field(c, &out->protocol_name, false);
    if (rc)
        return rc;
    bool v31 = bytes_eq(&out->protocol_name, "MQIsdp");
    if (!v31 && !bytes_eq(&out->protocol_name, "MQTT"))
        return MQTT_ERR_PROTOCOL_NAME;

    rc = need(c, 1);
    if (rc)
        return rc;
    out->level = c->buf[c->pos++];
    if (v31 ? out->level != MQTT_LEVEL_31
            : out->level != MQTT_LEVEL_311 && out->level != MQTT_LEVEL_5)
        return MQTT_ERR_PROTOCOL_LEVEL;
    rc = need(c, 3);
    if (rc)
        return rc;
    const uint8_t *h = c->buf + c->pos;
    c->pos += 3;
    bool v5 = out->level == MQTT_LEVEL_5;

    uint8_t f = h[0];
    out->flags = f;
    out->keep_alive = get_u16(h + 1);
    out->clean = f & MQTT_CF_CLEAN;
    out->will = f & MQTT_CF_WILL;
    out->will_qos = (f & MQTT_CF_WILL_QOS) >> 3;
    out->will_retain = f & MQTT_CF_WILL_RETAIN;
    if (f & MQTT_CF_RESERVED)
        return MQTT_ERR_MALFORMED;
    if (out->will_qos == 3)
        return MQTT_ERR_MALFORMED;
    if (!out->will && (out->will_qos || out->will_retain))
        return MQTT_ERR_MALFORMED;
    if (!v5 && (f & MQTT_CF_PASSWORD) && !(f & MQTT_CF_USERNAME))
        return MQTT_ERR_MALFORMED;

    if (v5) {
        rc = read_props_block(c, &out->props);
        if (rc)
            return rc;
        rc = parse_props(&out->props, false, &out->p, NULL);
        if (rc)
            return rc;
    }

    /* Payload, in the order the flags announce it. */
    rc = read_field(c, &out->client_id, true);
    if (rc)
        return rc;
    if (out->will) {
        if (v5) {
            rc = read_props_block(c, &out->will_props);
            if (rc)
                return rc;
            rc = parse_props(&out->will_props, true, NULL, &out->wp);
            if (rc)
                return rc;
        }
        rc = read_field(c, &out->will_topic, true);
        if (rc)
            return rc;
        rc = read_field(c, &out->will_payload, false);
        if (rc)
            return rc;
    }
    if (f & MQTT_CF_USERNAME) {
        rc = read_field(c, &out->username, true);
        if (rc)
            return rc;
    }
    if (f & MQTT_CF_PASSWORD) {
        rc = read_field(c, &out->password, false);
        if (rc)
            return rc;
    }
    if (c->pos != c->end)
        return MQTT_ERR_MALFORMED; /* trailing bytes inside the packet */
    return 0;
}

int mqtt_parse_connect(const uint8_t *buf, size_t len, size_t max_packet, struct mqtt_connect *out)
{
    memset(out, 0, sizeof(*out));
    if (len == 0)
        return MQTT_NEED_MORE;
    /* Not even a CONNECT with reserved bits set is worth a reply: 0x16 is
     * a TLS handshake on the plain port, and nothing else reads as MQTT. */
    if (buf[0] != 0x10)
        return MQTT_ERR_NOT_MQTT;

    uint32_t rem;
    int n = varint(buf + 1, len - 1, &rem);
    if (n <= 0)
        return n; /* NEED_MORE or MALFORMED */
    if (max_packet == 0 || max_packet > MQTT_MAX_REMAINING)
        max_packet = MQTT_MAX_REMAINING;
    if (rem > max_packet)
        return MQTT_ERR_TOO_LARGE;

    size_t total = 1 + (size_t)n + rem;
    out->remaining_len = rem;
    struct cur c = {.buf = buf, .pos = 1 + (size_t)n, .end = total};
    c.have = len < total ? len : total;
    int rc = parse_body(&c, out);
    if (rc == AGAIN)
        return MQTT_NEED_MORE;
    if (rc)
        return rc;
    out->total_len = total;
    return (int)total;
}

int mqtt_peek_level(const uint8_t *buf, size_t len, uint8_t *level)
{
    if (len == 0)
        return MQTT_NEED_MORE;
    if (buf[0] != 0x10)
        return MQTT_ERR_NOT_MQTT;
    uint32_t rem;
    int n = varint(buf + 1, len - 1, &rem);
    if (n <= 0)
        return n;
    size_t pos = 1 + (size_t)n;
    if (len - pos < 2)
        return MQTT_NEED_MORE;
    pos += 2 + get_u16(buf + pos);
    if (pos >= len)
        return MQTT_NEED_MORE;
    *level = buf[pos];
    return 1;
}

uint8_t mqtt_refusal_code(uint8_t level, enum mqtt_refusal why)
{
    if (level >= MQTT_LEVEL_5) {
        switch (why) {
        case MQTT_REFUSE_VERSION:
            return 0x84;
        case MQTT_REFUSE_MALFORMED:
            return 0x81;
        case MQTT_REFUSE_CLIENT_ID:
            return 0x85;
        case MQTT_REFUSE_BAD_AUTH:
            return 0x86;
        case MQTT_REFUSE_NOT_AUTHORIZED:
            return 0x87;
        case MQTT_REFUSE_UNAVAILABLE:
            return 0x88;
        case MQTT_REFUSE_TOO_LARGE:
            return 0x95;
        case MQTT_REFUSE_PROTOCOL_ERROR:
            return 0x82;
        }
        return 0x80; /* unspecified error */
    }
    switch (why) {
    case MQTT_REFUSE_VERSION:
        return 0x01;
    case MQTT_REFUSE_CLIENT_ID:
        return 0x02;
    case MQTT_REFUSE_UNAVAILABLE:
    case MQTT_REFUSE_TOO_LARGE: /* 3.x has no "too large": the service
                                 * cannot take this connection */
        return 0x03;
    case MQTT_REFUSE_BAD_AUTH:
        return 0x04;
    case MQTT_REFUSE_NOT_AUTHORIZED:
        return 0x05;
    case MQTT_REFUSE_MALFORMED:
    case MQTT_REFUSE_PROTOCOL_ERROR:
        return MQTT_CONNACK_NONE; /* 3.1.1 4.8: close without a reply */
    }
    return MQTT_CONNACK_NONE;
}

size_t mqtt_connack(uint8_t level, uint8_t code, uint8_t *out, size_t cap)
{
    return mqtt_connack_reason(level, code, NULL, out, cap);
}

size_t mqtt_connack_reason(uint8_t level, uint8_t code, const char *reason, uint8_t *out,
                           size_t cap)
{
    if (code == MQTT_CONNACK_NONE)
        return 0;
    if (level < MQTT_LEVEL_5) {
        if (cap < 4)
            return 0;
        out[0] = 0x20;
        out[1] = 0x02;
        out[2] = 0x00; /* session present: never with a refusal */
        out[3] = code;
        return 4;
    }

    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > 0xffff || !utf8_ok((const uint8_t *)reason, rlen))
        rlen = 0;
    /* properties: 0x1f, u16 length, string; lengths below stay < 2^21, so
     * each varint takes at most 3 bytes */
    size_t plen = rlen ? 3 + rlen : 0;
    size_t pvar = plen < 128 ? 1 : plen < 16384 ? 2 : 3;
    size_t rem = 2 + pvar + plen;
    size_t rvar = rem < 128 ? 1 : rem < 16384 ? 2 : 3;
    if (rlen && 1 + rvar + rem > cap) {
        /* the reason does not fit: send the bare refusal */
        rlen = plen = 0;
        pvar = 1;
        rem = 3;
        rvar = 1;
    }
    if (1 + rvar + rem > cap)
        return 0;

    size_t o = 0;
    out[o++] = 0x20;
    for (size_t v = rem, i = 0; i < rvar; i++, v >>= 7)
        out[o++] = (uint8_t)((v & 0x7f) | (i + 1 < rvar ? 0x80 : 0));
    out[o++] = 0x00; /* acknowledge flags: session present 0 */
    out[o++] = code;
    for (size_t v = plen, i = 0; i < pvar; i++, v >>= 7)
        out[o++] = (uint8_t)((v & 0x7f) | (i + 1 < pvar ? 0x80 : 0));
    if (rlen) {
        out[o++] = P_REASON_STRING;
        out[o++] = (uint8_t)(rlen >> 8);
        out[o++] = (uint8_t)rlen;
        memcpy(out + o, reason, rlen);
        o += rlen;
    }
    return o;
}

size_t mqtt_connack_for_error(int err, const uint8_t *buf, size_t len, const struct mqtt_connect *c,
                              uint8_t *out, size_t cap)
{
    enum mqtt_refusal why;
    switch (err) {
    case MQTT_ERR_PROTOCOL_NAME:
    case MQTT_ERR_PROTOCOL_LEVEL:
        why = MQTT_REFUSE_VERSION;
        break;
    case MQTT_ERR_MALFORMED:
        why = MQTT_REFUSE_MALFORMED;
        break;
    case MQTT_ERR_TOO_LARGE:
        why = MQTT_REFUSE_TOO_LARGE;
        break;
    default:
        return 0; /* NOT_MQTT, NEED_MORE, success: nothing to refuse */
    }
    uint8_t level = c ? c->level : 0;
    if (level == 0 && mqtt_peek_level(buf, len, &level) != 1)
        return 0;
    return mqtt_connack(level, mqtt_refusal_code(level, why), out, cap);
}

bool mqtt_client_id_acceptable(const struct mqtt_connect *c)
{
    if (c->client_id.len > 0)
        return true;
    switch (c->level) {
    case MQTT_LEVEL_31:
        return false;
    case MQTT_LEVEL_311:
        return c->clean; /* 3.1.1 3.1.3-7/8 */
    default:
        return true; /* 5.0: the server assigns one */
    }
}

const char *mqtt_strerror(int rc)
{
    if (rc > 0)
        return "ok";
    switch (rc) {
    case MQTT_NEED_MORE:
        return "need more";
    case MQTT_ERR_NOT_MQTT:
        return "not mqtt";
    case MQTT_ERR_MALFORMED:
        return "malformed packet";
    case MQTT_ERR_PROTOCOL_NAME:
        return "unknown protocol name";
    case MQTT_ERR_PROTOCOL_LEVEL:
        return "unsupported protocol level";
    case MQTT_ERR_TOO_LARGE:
        return "packet too large";
    }
    return "unknown error";
}
