/*
 * test_mqtt_codec: CONNECT parsing and CONNACK building (dataplane/mqtt_codec).
 *
 * The "real" packets below were captured from mosquitto_pub/mosquitto_sub
 * 2.0.11 talking to a throwaway listener (the same bytes are in
 * tests/fuzz/corpus/mqtt_codec/, which this test also walks when it can find
 * it). Error cases are hand-made.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "mqtt_codec.h"

#define LIMIT 65536

/* Decodes hex into a malloc'ed buffer (test-only; aborts on bad input). */
static uint8_t *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    uint8_t *b = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            abort();
        b[i] = (uint8_t)v;
    }
    *len = n;
    return b;
}

static bool view_is(struct mqtt_bytes v, const char *s)
{
    return v.ptr && v.len == strlen(s) && memcmp(v.ptr, s, v.len) == 0;
}

static bool view_inside(struct mqtt_bytes v, const uint8_t *buf, size_t len)
{
    if (!v.ptr)
        return v.len == 0;
    return v.ptr >= buf && v.len <= len && (size_t)(v.ptr - buf) <= len - v.len;
}

/* Every view of c lies inside buf[0..len). */
static bool views_inside(const struct mqtt_connect *c, const uint8_t *buf, size_t len)
{
    const struct mqtt_bytes vs[] = {
        c->protocol_name,  c->props,      c->p.auth_method,   c->p.auth_data,
        c->client_id,      c->will_props, c->wp.content_type, c->wp.response_topic,
        c->wp.correlation, c->will_topic, c->will_payload,    c->username,
        c->password,
    };
    for (size_t i = 0; i < sizeof(vs) / sizeof(vs[0]); i++)
        if (!view_inside(vs[i], buf, len))
            return false;
    return true;
}

/* Parses hex; returns the result and leaves the buffer in *bufp (free it). */
static int parse_hex(const char *hex, struct mqtt_connect *c, uint8_t **bufp, size_t *lenp)
{
    size_t len;
    uint8_t *b = unhex(hex, &len);
    int rc = mqtt_parse_connect(b, len, LIMIT, c);
    *bufp = b;
    if (lenp)
        *lenp = len;
    return rc;
}

/* Feeds buf one byte at a time: every proper prefix must need more (or
 * give the final error already), the whole must give the final result. */
static bool bytewise_consistent(const uint8_t *b, size_t len, size_t max)
{
    struct mqtt_connect c;
    int final = mqtt_parse_connect(b, len, max, &c);
    for (size_t k = 0; k < len; k++) {
        int rc = mqtt_parse_connect(b, k, max, &c);
        if (rc != MQTT_NEED_MORE && rc != final)
            return false;
        if (rc > 0 && (size_t)rc > k)
            return false; /* claimed bytes it was not given */
    }
    return true;
}

/* --- real packets, field by field ------------------------------------ */

static const char V31_BASIC[] = "101600064d51497364700302003c0008636c69656e743331";
static const char V31_ALL[] =
    "102700064d514973647003d4001e0006633331616c6c0003772f7400036279650003626f6200027077";
static const char V31_USERPASS[] =
    "102200064d514973647003c2003c000563333175700005616c6963650006736563726574";
static const char V31_WILL[] =
    "102300064d5149736470032e003c0004633331770009646561642f633331770004676f6e65";
static const char V311_BASIC[] = "101500044d5154540402003c0009636c69656e74333131";
static const char V311_ALL[] =
    "102600044d51545404f40005000763333131616c6c0003772f7400036279650003626f6200027077";
static const char V311_DEFAULTID[] = "100c00044d5154540402003c0000";
static const char V311_PERSIST[] = "101a00044d51545404000258000e70657273697374656e742d333131";
static const char V311_USERONLY[] = "101800044d5154540482003c000563333131750005616c696365";
static const char V311_USERPASS[] =
    "102100044d51545404c2003c00066333313175700005616c6963650006736563726574";
static const char V311_UTF8[] = "103800044d51545404c2003c0018d0bad0bbd0b8d0b5d0bdd1822dc3bc2de282"
                                "ac2df09f98800006e794a8e688b7000a70c3a4737377c3b67264";
static const char V311_WILL[] =
    "102300044d515454042e003c00056333313177000a646561642f63333131770004676f6e65";
static const char V311_WILL_EMPTY[] =
    "101c00044d5154540406003c00066333313177650006646561642f650000";
static const char V5_ALL[] = "103a00044d51545405f4002d0f26000161000162110000007821001400056335616c"
                             "6c0518000000050003772f7400036279650003626f6200027077";
static const char V5_ALLPROPS[] =
    "104c00044d5154540502003c3b1100000e10210014270001000022000a190117002600026b3100027631260002"
    "6b320002763215000b534352414d2d5348412d3116000430313032000463356170";
static const char V5_BASIC[] = "101700044d5154540502003c032100140007636c69656e7435";
static const char V5_DEFAULTID[] = "101000044d5154540502003c032100140000";
static const char V5_PERSIST[] =
    "102100044d5154540500003c0811ffffffff210014000c70657273697374656e742d35";
static const char V5_PROPS[] = "101f00044d5154540502003c0f110000003c260001610001622100140003633570";
static const char V5_USERPASS[] =
    "102300044d51545405c2003c032100140004633575700005616c6963650006736563726574";
static const char V5_WILL[] =
    "102400044d515454052e003c032100140003633577000008646561642f6335770004676f6e65";
static const char V5_WILLPROPS[] =
    "106400044d5154540516003c0321001400046335777037180000001e010102000000640300106170706c6963"
    "6174696f6e2f6a736f6e080006726573702f74090003616263260002776b000277760009646561642f6335"
    "7770000b7b2273223a226f6666227d";

static const char *const REAL[] = {
    V31_BASIC,       V31_ALL,      V31_USERPASS,  V31_WILL,      V311_BASIC,   V311_ALL,
    V311_DEFAULTID,  V311_PERSIST, V311_USERONLY, V311_USERPASS, V311_UTF8,    V311_WILL,
    V311_WILL_EMPTY, V5_ALL,       V5_ALLPROPS,   V5_BASIC,      V5_DEFAULTID, V5_PERSIST,
    V5_PROPS,        V5_USERPASS,  V5_WILL,       V5_WILLPROPS,
};

static void test_v31_basic(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    size_t len;
    int rc = parse_hex(V31_BASIC, &c, &b, &len);
    CHECK(rc == 24 && (size_t)rc == len);
    CHECK(c.total_len == 24 && c.remaining_len == 22);
    CHECK(view_is(c.protocol_name, "MQIsdp"));
    CHECK(c.level == MQTT_LEVEL_31);
    CHECK(c.flags == 0x02 && c.clean);
    CHECK(c.keep_alive == 60);
    CHECK(view_is(c.client_id, "client31"));
    CHECK(!c.will && !c.will_topic.ptr && !c.will_payload.ptr);
    CHECK(!c.username.ptr && !c.password.ptr);
    CHECK(!c.props.ptr && !c.will_props.ptr);
    CHECK(mqtt_client_id_acceptable(&c));
    free(b);
}

static void test_v31_all(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V31_ALL, &c, &b, NULL) == 41);
    CHECK(c.level == 3 && c.flags == 0xd4 && !c.clean && c.keep_alive == 30);
    CHECK(view_is(c.client_id, "c31all"));
    CHECK(c.will && c.will_qos == 2 && !c.will_retain);
    CHECK(view_is(c.will_topic, "w/t") && view_is(c.will_payload, "bye"));
    CHECK(view_is(c.username, "bob") && view_is(c.password, "pw"));
    free(b);

    REQUIRE(parse_hex(V31_USERPASS, &c, &b, NULL) == 36);
    CHECK(view_is(c.username, "alice") && view_is(c.password, "secret"));
    free(b);

    REQUIRE(parse_hex(V31_WILL, &c, &b, NULL) == 37);
    CHECK(c.will && c.will_qos == 1 && c.will_retain);
    CHECK(view_is(c.will_topic, "dead/c31w") && view_is(c.will_payload, "gone"));
    free(b);
}

static void test_v311_basic(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V311_BASIC, &c, &b, NULL) == 23);
    CHECK(view_is(c.protocol_name, "MQTT"));
    CHECK(c.level == MQTT_LEVEL_311 && c.flags == 0x02 && c.clean && c.keep_alive == 60);
    CHECK(view_is(c.client_id, "client311"));
    CHECK(!c.will && !c.username.ptr && !c.password.ptr && !c.props.ptr);
    free(b);

    REQUIRE(parse_hex(V311_PERSIST, &c, &b, NULL) == 28);
    CHECK(!c.clean && c.keep_alive == 600 && view_is(c.client_id, "persistent-311"));
    CHECK(mqtt_client_id_acceptable(&c));
    free(b);

    REQUIRE(parse_hex(V311_USERONLY, &c, &b, NULL) == 26);
    CHECK(view_is(c.username, "alice") && !c.password.ptr && c.flags == 0x82);
    free(b);

    REQUIRE(parse_hex(V311_USERPASS, &c, &b, NULL) == 35);
    CHECK(view_is(c.username, "alice") && view_is(c.password, "secret"));
    free(b);
}

static void test_v311_will(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V311_WILL, &c, &b, NULL) == 37);
    CHECK(c.will && c.will_qos == 1 && c.will_retain && c.flags == 0x2e);
    CHECK(view_is(c.will_topic, "dead/c311w") && view_is(c.will_payload, "gone"));
    CHECK(!c.will_props.ptr);
    free(b);

    /* --will-topic without --will-payload: an empty (present) payload */
    REQUIRE(parse_hex(V311_WILL_EMPTY, &c, &b, NULL) == 30);
    CHECK(c.will && c.will_qos == 0 && !c.will_retain);
    CHECK(view_is(c.will_topic, "dead/e"));
    CHECK(c.will_payload.ptr != NULL && c.will_payload.len == 0);
    free(b);

    REQUIRE(parse_hex(V311_ALL, &c, &b, NULL) == 40);
    CHECK(c.flags == 0xf4 && c.will_qos == 2 && c.will_retain && !c.clean && c.keep_alive == 5);
    CHECK(view_is(c.client_id, "c311all") && view_is(c.will_topic, "w/t"));
    CHECK(view_is(c.will_payload, "bye") && view_is(c.username, "bob"));
    CHECK(view_is(c.password, "pw"));
    free(b);
}

static void test_v311_utf8(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V311_UTF8, &c, &b, NULL) == 58);
    CHECK(view_is(c.client_id, "клиент-ü-€-😀"));
    CHECK(view_is(c.username, "用户"));
    CHECK(view_is(c.password, "pässwörd"));
    free(b);
}

/* mosquitto_pub without -i sends an empty id with clean session. */
static void test_empty_client_id(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V311_DEFAULTID, &c, &b, NULL) == 14);
    CHECK(c.client_id.ptr != NULL && c.client_id.len == 0);
    CHECK(c.clean && mqtt_client_id_acceptable(&c));
    free(b);

    REQUIRE(parse_hex(V5_DEFAULTID, &c, &b, NULL) == 18);
    CHECK(c.client_id.ptr != NULL && c.client_id.len == 0);
    CHECK(mqtt_client_id_acceptable(&c));
    free(b);

    /* 3.1.1 empty id without clean session: parses, but must be refused */
    REQUIRE(parse_hex("100c00044d5154540400003c0000", &c, &b, NULL) == 14);
    CHECK(!mqtt_client_id_acceptable(&c));
    CHECK(mqtt_refusal_code(c.level, MQTT_REFUSE_CLIENT_ID) == 0x02);
    free(b);

    /* 3.1 never allows an empty id */
    REQUIRE(parse_hex("100e00064d51497364700302003c0000", &c, &b, NULL) == 16);
    CHECK(!mqtt_client_id_acceptable(&c));
    free(b);

    /* 5.0 empty id without clean start: fine, the broker assigns one */
    REQUIRE(parse_hex("100d00044d5154540500003c000000", &c, &b, NULL) == 15);
    CHECK(mqtt_client_id_acceptable(&c));
    free(b);
}

static void test_v5_basic(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V5_BASIC, &c, &b, NULL) == 25);
    CHECK(view_is(c.protocol_name, "MQTT") && c.level == MQTT_LEVEL_5);
    CHECK(c.clean && c.keep_alive == 60);
    /* mosquitto always announces receive maximum 20 */
    CHECK(c.props.ptr && c.props.len == 3);
    CHECK(c.p.has_receive_max && c.p.receive_max == 20);
    CHECK(!c.p.has_session_expiry && !c.p.has_max_packet_size && !c.p.has_topic_alias_max);
    CHECK(!c.p.auth_method.ptr && c.p.user_property_count == 0);
    CHECK(view_is(c.client_id, "client5"));
    free(b);

    REQUIRE(parse_hex(V5_USERPASS, &c, &b, NULL) == 37);
    CHECK(view_is(c.username, "alice") && view_is(c.password, "secret"));
    free(b);

    REQUIRE(parse_hex(V5_PERSIST, &c, &b, NULL) == 35);
    CHECK(!c.clean && c.p.has_session_expiry && c.p.session_expiry == 0xffffffffu);
    free(b);
}

static void test_v5_props(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V5_PROPS, &c, &b, NULL) == 33);
    CHECK(c.p.has_session_expiry && c.p.session_expiry == 60);
    CHECK(c.p.user_property_count == 1);
    CHECK(c.p.has_receive_max && c.p.receive_max == 20);
    CHECK(c.props.len == 15);
    free(b);

    REQUIRE(parse_hex(V5_ALLPROPS, &c, &b, NULL) == 78);
    CHECK(c.p.has_session_expiry && c.p.session_expiry == 3600);
    CHECK(c.p.has_receive_max && c.p.receive_max == 20);
    CHECK(c.p.has_max_packet_size && c.p.max_packet_size == 65536);
    CHECK(c.p.has_topic_alias_max && c.p.topic_alias_max == 10);
    CHECK(c.p.has_request_response_info && c.p.request_response_info == 1);
    CHECK(c.p.has_request_problem_info && c.p.request_problem_info == 0);
    CHECK(c.p.user_property_count == 2);
    CHECK(view_is(c.p.auth_method, "SCRAM-SHA-1"));
    CHECK(view_is(c.p.auth_data, "0102"));
    CHECK(view_is(c.client_id, "c5ap"));
    free(b);
}

static void test_v5_will_props(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    REQUIRE(parse_hex(V5_WILLPROPS, &c, &b, NULL) == 102);
    CHECK(c.will && c.will_qos == 2 && !c.will_retain);
    CHECK(c.will_props.ptr && c.will_props.len == 0x37);
    CHECK(c.wp.has_will_delay && c.wp.will_delay == 30);
    CHECK(c.wp.has_payload_format && c.wp.payload_format == 1);
    CHECK(c.wp.has_message_expiry && c.wp.message_expiry == 100);
    CHECK(view_is(c.wp.content_type, "application/json"));
    CHECK(view_is(c.wp.response_topic, "resp/t"));
    CHECK(view_is(c.wp.correlation, "abc"));
    CHECK(c.wp.user_property_count == 1);
    CHECK(view_is(c.will_topic, "dead/c5wp") && view_is(c.will_payload, "{\"s\":\"off\"}"));
    free(b);

    REQUIRE(parse_hex(V5_WILL, &c, &b, NULL) == 38);
    CHECK(c.will && c.will_qos == 1 && c.will_retain);
    CHECK(c.will_props.ptr && c.will_props.len == 0); /* present, empty */
    CHECK(!c.wp.has_will_delay && c.wp.user_property_count == 0);
    free(b);

    REQUIRE(parse_hex(V5_ALL, &c, &b, NULL) == 60);
    CHECK(c.flags == 0xf4 && !c.clean && c.keep_alive == 45);
    CHECK(c.p.user_property_count == 1 && c.p.session_expiry == 120);
    CHECK(c.wp.has_will_delay && c.wp.will_delay == 5);
    CHECK(view_is(c.will_topic, "w/t") && view_is(c.username, "bob"));
    CHECK(view_is(c.password, "pw"));
    free(b);
}

/* Every real packet: all views inside the buffer, and byte-at-a-time
 * feeding needs more until the last byte. */
static void test_real_bytewise(void)
{
    for (size_t i = 0; i < sizeof(REAL) / sizeof(REAL[0]); i++) {
        size_t len;
        uint8_t *b = unhex(REAL[i], &len);
        struct mqtt_connect c;
        for (size_t k = 0; k < len; k++)
            CHECK(mqtt_parse_connect(b, k, LIMIT, &c) == MQTT_NEED_MORE);
        CHECK(mqtt_parse_connect(b, len, LIMIT, &c) == (int)len);
        CHECK(views_inside(&c, b, len));
        CHECK(c.total_len == len);
        free(b);
    }
}

/* Big packets: 2- and 3-byte remaining lengths (like v311_bigwill and
 * v5_hugewill in the corpus), built here. */
static void test_large(void)
{
    size_t plen = 20000;
    size_t rem = 10 + 1 + 2 + 3 + 1 + 2 + 4 + 2 + plen;
    size_t len = 1 + 3 + rem;
    uint8_t *b = malloc(len + 2);
    size_t o = 0;
    b[o++] = 0x10;
    b[o++] = (uint8_t)(0x80 | (rem & 0x7f));
    b[o++] = (uint8_t)(0x80 | ((rem >> 7) & 0x7f));
    b[o++] = (uint8_t)(rem >> 14);
    memcpy(b + o, "\x00\x04MQTT\x05\x06\x00\x3c\x00\x00\x03id1\x00\x00\x04w/hu", 23);
    o += 23;
    b[o++] = (uint8_t)(plen >> 8);
    b[o++] = (uint8_t)plen;
    memset(b + o, 'y', plen);
    o += plen;
    REQUIRE(o == len);
    b[o] = 0xc0; /* a PINGREQ after it */
    b[o + 1] = 0x00;

    struct mqtt_connect c;
    CHECK(mqtt_parse_connect(b, len + 2, LIMIT, &c) == (int)len);
    CHECK(c.remaining_len == rem && c.will_payload.len == plen);
    CHECK(view_is(c.will_topic, "w/hu") && view_is(c.client_id, "id1"));
    CHECK(bytewise_consistent(b, len, LIMIT));
    /* the limit is on the remaining length, decided from 4 bytes */
    CHECK(mqtt_parse_connect(b, 4, rem - 1, &c) == MQTT_ERR_TOO_LARGE);
    CHECK(mqtt_parse_connect(b, 4, rem, &c) == MQTT_NEED_MORE);
    CHECK(mqtt_parse_connect(b, len, rem, &c) == (int)len);
    free(b);
}

/* --- errors ------------------------------------------------------------ */

struct bad {
    const char *hex;
    int want;
    const char *what;
};

static const struct bad BAD[] = {
    {"474554202f20485454502f312e31", MQTT_ERR_NOT_MQTT, "HTTP"},
    {"16030102000100", MQTT_ERR_NOT_MQTT, "TLS client hello"},
    {"30", MQTT_ERR_NOT_MQTT, "PUBLISH first"},
    {"c000", MQTT_ERR_NOT_MQTT, "PINGREQ first"},
    {"120f00044d5154540402003c00026964", MQTT_ERR_NOT_MQTT, "fixed header flags"},
    {"10ffffffff01", MQTT_ERR_MALFORMED, "5-byte varint"},
    {"10ffffffff", MQTT_ERR_MALFORMED, "4 continuation bytes"},
    {"100e00044d5154540403003c00026964", MQTT_ERR_MALFORMED, "reserved connect flag"},
    {"101400044d515454041e003c00026964000177000170", MQTT_ERR_MALFORMED, "will qos 3"},
    {"100e00044d515454040a003c00026964", MQTT_ERR_MALFORMED, "will qos without will"},
    {"100e00044d5154540422003c00026964", MQTT_ERR_MALFORMED, "will retain without will"},
    {"101200044d5154540442003c0002696400027077", MQTT_ERR_MALFORMED, "password, no user 3.1.1"},
    {"101400064d5149736470034200"
     "3c0002696400027077",
     MQTT_ERR_MALFORMED, "password, no user 3.1"},
    {"100f00044d5154540402003c0002696400", MQTT_ERR_MALFORMED, "trailing byte"},
    {"100e00044d5154540402003c00106964", MQTT_ERR_MALFORMED, "client id overruns"},
    {"100600044d515454", MQTT_ERR_MALFORMED, "packet ends after the name"},
    {"100800044d5154540402", MQTT_ERR_MALFORMED, "packet ends in the flags"},
    {"100300054d", MQTT_ERR_MALFORMED, "name overruns"},
    {"100f00044d5154540402003c000361c080", MQTT_ERR_MALFORMED, "overlong NUL"},
    {"100f00044d5154540402003c0003eda080", MQTT_ERR_MALFORMED, "surrogate"},
    {"100f00044d5154540402003c0003610062", MQTT_ERR_MALFORMED, "NUL in client id"},
    {"101000044d5154540402003c0004f4908080", MQTT_ERR_MALFORMED, "above U+10FFFF"},
    {"101000044d5154540402003c00046162e282", MQTT_ERR_MALFORMED, "truncated sequence"},
    {"100d00044d5154540402003c000180", MQTT_ERR_MALFORMED, "lone continuation"},
    {"101100044d5154540482003c000269640001ff", MQTT_ERR_MALFORMED, "bad utf-8 user name"},
    {"101500044d5154540406003c000269640003c3282f0000", MQTT_ERR_MALFORMED, "bad utf-8 will topic"},
    {"101000044d5154540406003c000269640001", MQTT_ERR_MALFORMED, "will topic missing"},
    {"100e00044d5154580402003c00026964", MQTT_ERR_PROTOCOL_NAME, "MQTX"},
    {"100e00046d7174740402003c00026964", MQTT_ERR_PROTOCOL_NAME, "lower case mqtt"},
    {"100a00000402003c00026964", MQTT_ERR_PROTOCOL_NAME, "empty name"},
    {"101000064d51497364700402003c00026964", MQTT_ERR_PROTOCOL_LEVEL, "MQIsdp level 4"},
    {"100e00044d5154540302003c00026964", MQTT_ERR_PROTOCOL_LEVEL, "MQTT level 3"},
    {"100f00044d5154540602003c0000026964", MQTT_ERR_PROTOCOL_LEVEL, "level 6"},
    {"100e00044d5154540202003c00026964", MQTT_ERR_PROTOCOL_LEVEL, "level 2"},
    {"100e00044d5154540002003c00026964", MQTT_ERR_PROTOCOL_LEVEL, "level 0"},
    {"100e00044d515454ff02003c00026964", MQTT_ERR_PROTOCOL_LEVEL, "level 255"},
    {"10818004", MQTT_ERR_TOO_LARGE, "64 KiB + 1 remaining, only header here"},
    {"10ffffff7f", MQTT_ERR_TOO_LARGE, "spec maximum remaining length"},
    /* 5.0 properties */
    {"101900044d5154540502003c0a1100000001110000000200026964", MQTT_ERR_MALFORMED,
     "duplicate session expiry"},
    {"101700044d5154540502003c081500016d1500016d00026964", MQTT_ERR_MALFORMED,
     "duplicate auth method"},
    {"101500044d5154540502003c0621000521000500026964", MQTT_ERR_MALFORMED,
     "duplicate receive maximum"},
    {"101100044d5154540502003c02010100026964", MQTT_ERR_MALFORMED,
     "payload format in CONNECT props"},
    {"101400044d5154540502003c05180000000100026964", MQTT_ERR_MALFORMED,
     "will delay in CONNECT props"},
    {"101300044d5154540502003c041f00017200026964", MQTT_ERR_MALFORMED,
     "reason string in CONNECT props"},
    {"101000044d5154540502003c010000026964", MQTT_ERR_MALFORMED, "property id 0"},
    {"101500044d5154540502003c0691000000000100026964", MQTT_ERR_MALFORMED,
     "property id with continuation"},
    {"101200044d5154540502003c0321000000026964", MQTT_ERR_MALFORMED, "receive maximum 0"},
    {"101400044d5154540502003c05270000000000026964", MQTT_ERR_MALFORMED, "maximum packet size 0"},
    {"101100044d5154540502003c02190200026964", MQTT_ERR_MALFORMED, "request response 2"},
    {"101100044d5154540502003c02170200026964", MQTT_ERR_MALFORMED, "request problem 2"},
    {"101300044d5154540502003c041600010100026964", MQTT_ERR_MALFORMED, "auth data without method"},
    {"101300044d5154540502003c04150001c300026964", MQTT_ERR_MALFORMED, "bad utf-8 auth method"},
    {"101200044d5154540502003c0311000000026964", MQTT_ERR_MALFORMED, "property value truncated"},
    {"101400044d5154540502003c40110000000100026964", MQTT_ERR_MALFORMED,
     "property length overruns"},
    {"100f00044d5154540502003c8080808001", MQTT_ERR_MALFORMED, "5-byte property length"},
    {"100b00044d5154540502003c80", MQTT_ERR_MALFORMED, "packet ends in the property length"},
    {"101600044d5154540502003c072600016b0001c300026964", MQTT_ERR_MALFORMED,
     "bad utf-8 user property"},
    {"101300044d5154540502003c042600016b00026964", MQTT_ERR_MALFORMED,
     "user property without value"},
    {"101b00044d5154540506003c0000026964051100000001000177000170", MQTT_ERR_MALFORMED,
     "session expiry in will props"},
    {"101900044d5154540506003c000002696403210005000177000170", MQTT_ERR_MALFORMED,
     "receive max in will props"},
    {"102000044d5154540506003c00000269640a18000000011800000002000177000170", MQTT_ERR_MALFORMED,
     "duplicate will delay"},
    {"101a00044d5154540506003c000002696404030001ff000177000170", MQTT_ERR_MALFORMED,
     "bad utf-8 content type"},
    {"101700044d5154540506003c00000269640900000177000170", MQTT_ERR_MALFORMED,
     "will props overrun"},
};

static void test_errors(void)
{
    for (size_t i = 0; i < sizeof(BAD) / sizeof(BAD[0]); i++) {
        size_t len;
        /* some rows are cut short on purpose (odd hex): decode what is there */
        uint8_t *b = unhex(BAD[i].hex, &len);
        struct mqtt_connect c;
        int rc = mqtt_parse_connect(b, len, LIMIT, &c);
        if (rc != BAD[i].want)
            fprintf(stderr, "  %s: got %d (%s), want %d\n", BAD[i].what, rc, mqtt_strerror(rc),
                    BAD[i].want);
        CHECK(rc == BAD[i].want);
        CHECK(bytewise_consistent(b, len, LIMIT));
        free(b);
    }
}

static void test_error_level_kept(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    /* the level is known for level errors and everything after them */
    CHECK(parse_hex("100f00044d5154540602003c0000026964", &c, &b, NULL) == MQTT_ERR_PROTOCOL_LEVEL);
    CHECK(c.level == 6);
    free(b);
    CHECK(parse_hex("101200044d5154540502003c0321000000026964", &c, &b, NULL) ==
          MQTT_ERR_MALFORMED);
    CHECK(c.level == 5);
    free(b);
    CHECK(parse_hex("10ffffffff01", &c, &b, NULL) == MQTT_ERR_MALFORMED);
    CHECK(c.level == 0);
    free(b);
}

static void test_need_more(void)
{
    struct mqtt_connect c;
    const uint8_t *empty = (const uint8_t *)"";
    CHECK(mqtt_parse_connect(empty, 0, LIMIT, &c) == MQTT_NEED_MORE);
    /* a partial remaining length */
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10", 1, LIMIT, &c) == MQTT_NEED_MORE);
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\x80", 2, LIMIT, &c) == MQTT_NEED_MORE);
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\xff\xff", 3, LIMIT, &c) == MQTT_NEED_MORE);
    /* 0 means the spec's limit: a 200 MB CONNECT just needs more */
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\xff\xff\x7f", 4, 0, &c) == MQTT_NEED_MORE);
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\xff\xff\xff\x7f", 5, 0, &c) == MQTT_NEED_MORE);
    /* a remaining length of 0 cannot hold a CONNECT */
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\x00", 2, LIMIT, &c) == MQTT_ERR_MALFORMED);
    /* a bad name is reported before the rest arrives */
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\x40\x00\x04XQTT", 8, LIMIT, &c) ==
          MQTT_ERR_PROTOCOL_NAME);
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\x40\x00\x04MQTT\x07", 9, LIMIT, &c) ==
          MQTT_ERR_PROTOCOL_LEVEL);
    CHECK(mqtt_parse_connect((const uint8_t *)"\x10\x40\x00\x04MQTT\x04", 9, LIMIT, &c) ==
          MQTT_NEED_MORE);
}

/* Non-minimal varints are tolerated (3.1.1 does not forbid them); the
 * bytes after the packet belong to the next one. */
static void test_varint_and_trailing_packets(void)
{
    struct mqtt_connect c;
    uint8_t *b;
    size_t len;
    /* remaining 14 encoded as 0x8e 0x00 */
    CHECK(parse_hex("108e0000044d5154540402003c00026964", &c, &b, &len) == 17);
    CHECK(c.remaining_len == 14 && view_is(c.client_id, "id"));
    free(b);
    /* a CONNECT followed by a PINGREQ */
    CHECK(parse_hex("100e00044d5154540402003c00026964c000", &c, &b, &len) == 16);
    CHECK(len == 18);
    free(b);
    /* 5.0 password without a user name is allowed */
    CHECK(parse_hex("101300044d5154540542003c00000269640002707"
                    "7",
                    &c, &b, NULL) == 21);
    CHECK(!c.username.ptr && view_is(c.password, "pw"));
    free(b);
    /* binary password, not UTF-8 */
    CHECK(parse_hex("101600044d51545404c2003c000269640001750003ff00fe", &c, &b, NULL) == 24);
    CHECK(c.password.len == 3 && c.password.ptr[0] == 0xff);
    free(b);
    /* a will payload format other than 0/1 is passed on (mosquitto does) */
    CHECK(parse_hex("101800044d5154540506003c0000026964020102000177000170", &c, &b, NULL) == 26);
    CHECK(c.wp.has_payload_format && c.wp.payload_format == 2);
    free(b);
    /* 50 user properties */
    char hex[1024] = "10";
    char *p = hex + 2;
    size_t plen = 50 * 7;
    size_t rem = 10 + 2 + plen + 4;
    p += sprintf(p, "%02zx%02zx", (rem & 0x7f) | 0x80, rem >> 7);
    p += sprintf(p, "00044d5154540502003c%02zx%02zx", (plen & 0x7f) | 0x80, plen >> 7);
    for (int i = 0; i < 50; i++)
        p += sprintf(p, "260001%02x000176", 'a' + i % 26);
    sprintf(p, "00026964");
    CHECK(parse_hex(hex, &c, &b, NULL) == (int)(3 + rem));
    CHECK(c.p.user_property_count == 50);
    free(b);
}

/* --- CONNACK ----------------------------------------------------------- */

static void test_refusal_codes(void)
{
    static const struct {
        enum mqtt_refusal why;
        uint8_t v3, v5;
    } T[] = {
        {MQTT_REFUSE_VERSION, 0x01, 0x84},
        {MQTT_REFUSE_MALFORMED, MQTT_CONNACK_NONE, 0x81},
        {MQTT_REFUSE_CLIENT_ID, 0x02, 0x85},
        {MQTT_REFUSE_BAD_AUTH, 0x04, 0x86},
        {MQTT_REFUSE_NOT_AUTHORIZED, 0x05, 0x87},
        {MQTT_REFUSE_UNAVAILABLE, 0x03, 0x88},
        {MQTT_REFUSE_TOO_LARGE, 0x03, 0x95},
        {MQTT_REFUSE_PROTOCOL_ERROR, MQTT_CONNACK_NONE, 0x82},
    };
    for (size_t i = 0; i < sizeof(T) / sizeof(T[0]); i++) {
        CHECK(mqtt_refusal_code(3, T[i].why) == T[i].v3);
        CHECK(mqtt_refusal_code(4, T[i].why) == T[i].v3);
        CHECK(mqtt_refusal_code(0, T[i].why) == T[i].v3);
        CHECK(mqtt_refusal_code(5, T[i].why) == T[i].v5);
        CHECK(mqtt_refusal_code(6, T[i].why) == T[i].v5);
        CHECK(mqtt_refusal_code(255, T[i].why) == T[i].v5);
    }
}

static void test_connack(void)
{
    uint8_t o[16];
    static const uint8_t codes3[] = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05};
    for (size_t i = 0; i < sizeof(codes3); i++) {
        for (uint8_t lvl = 3; lvl <= 4; lvl++) {
            memset(o, 0xee, sizeof(o));
            CHECK(mqtt_connack(lvl, codes3[i], o, sizeof(o)) == 4);
            CHECK(o[0] == 0x20 && o[1] == 0x02 && o[2] == 0x00 && o[3] == codes3[i]);
            CHECK(o[4] == 0xee);
        }
    }
    static const uint8_t codes5[] = {0x00, 0x80, 0x81, 0x82, 0x84, 0x85, 0x86, 0x87, 0x88, 0x95};
    for (size_t i = 0; i < sizeof(codes5); i++) {
        memset(o, 0xee, sizeof(o));
        CHECK(mqtt_connack(5, codes5[i], o, sizeof(o)) == 5);
        CHECK(memcmp(o, "\x20\x03\x00", 3) == 0 && o[3] == codes5[i] && o[4] == 0x00);
        CHECK(o[5] == 0xee);
    }
    /* unknown levels: v3 form below 5, v5 form from 5 up */
    CHECK(mqtt_connack(2, 0x01, o, sizeof(o)) == 4 && memcmp(o, "\x20\x02\x00\x01", 4) == 0);
    CHECK(mqtt_connack(0, 0x01, o, sizeof(o)) == 4);
    CHECK(mqtt_connack(7, 0x84, o, sizeof(o)) == 5 && memcmp(o, "\x20\x03\x00\x84\x00", 5) == 0);
    /* no code, or no room: nothing written */
    CHECK(mqtt_connack(4, MQTT_CONNACK_NONE, o, sizeof(o)) == 0);
    CHECK(mqtt_connack(5, MQTT_CONNACK_NONE, o, sizeof(o)) == 0);
    CHECK(mqtt_connack(4, 0x01, o, 3) == 0);
    CHECK(mqtt_connack(5, 0x84, o, 4) == 0);
    CHECK(mqtt_connack(5, 0x84, o, MQTT_CONNACK_MAX) == 5);
}

static void test_connack_reason(void)
{
    uint8_t o[512];
    size_t n = mqtt_connack_reason(5, 0x87, "not allowed", o, sizeof(o));
    CHECK(n == 2 + 3 + 3 + 11);
    CHECK(memcmp(o, "\x20\x11\x00\x87\x0e\x1f\x00\x0bnot allowed", n) == 0);

    /* 3.x: no properties exist, the reason is dropped */
    CHECK(mqtt_connack_reason(4, 0x05, "nope", o, sizeof(o)) == 4);
    CHECK(memcmp(o, "\x20\x02\x00\x05", 4) == 0);

    /* too big for cap: the bare refusal */
    CHECK(mqtt_connack_reason(5, 0x87, "not allowed", o, 10) == 5);
    CHECK(memcmp(o, "\x20\x03\x00\x87\x00", 5) == 0);
    /* NULL, empty and invalid UTF-8 reasons: bare */
    CHECK(mqtt_connack_reason(5, 0x88, NULL, o, sizeof(o)) == 5);
    CHECK(mqtt_connack_reason(5, 0x88, "", o, sizeof(o)) == 5);
    CHECK(mqtt_connack_reason(5, 0x88, "\xc0\x80", o, sizeof(o)) == 5);

    /* 200-byte reason: 2-byte varints for both lengths */
    char r[201];
    memset(r, 'r', 200);
    r[200] = 0;
    n = mqtt_connack_reason(5, 0x95, r, o, sizeof(o));
    size_t plen = 3 + 200, rem = 2 + 2 + plen;
    CHECK(n == 1 + 2 + rem);
    CHECK(o[0] == 0x20 && o[1] == (0x80 | (rem & 0x7f)) && o[2] == (rem >> 7));
    CHECK(o[3] == 0x00 && o[4] == 0x95);
    CHECK(o[5] == (0x80 | (plen & 0x7f)) && o[6] == (plen >> 7));
    CHECK(o[7] == 0x1f && o[8] == 0 && o[9] == 200 && o[10] == 'r' && o[n - 1] == 'r');

    /* the CONNACK we write parses back as a sane 5.0 packet: its
     * remaining length covers exactly the rest */
    CHECK(n == 3 + (size_t)((o[1] & 0x7f) | (o[2] << 7)));
}

static void test_peek_level(void)
{
    uint8_t lvl = 0;
    size_t len;
    uint8_t *b = unhex(V31_BASIC, &len);
    CHECK(mqtt_peek_level(b, len, &lvl) == 1 && lvl == 3);
    CHECK(mqtt_peek_level(b, 11, &lvl) == 1 && lvl == 3);
    CHECK(mqtt_peek_level(b, 10, &lvl) == MQTT_NEED_MORE);
    free(b);
    b = unhex(V5_BASIC, &len);
    CHECK(mqtt_peek_level(b, len, &lvl) == 1 && lvl == 5);
    free(b);
    /* malformed rest, wrong name: the level is still found */
    b = unhex("100f00044d5154580502003c03210000", &len);
    CHECK(mqtt_peek_level(b, len, &lvl) == 1 && lvl == 5);
    free(b);
    /* reserved fixed-header bits: not a CONNECT */
    b = unhex("120f00044d5154540502", &len);
    CHECK(mqtt_peek_level(b, len, &lvl) == MQTT_ERR_NOT_MQTT);
    free(b);
    CHECK(mqtt_peek_level((const uint8_t *)"GET ", 4, &lvl) == MQTT_ERR_NOT_MQTT);
    CHECK(mqtt_peek_level((const uint8_t *)"\x10\xff\xff\xff\xff", 5, &lvl) == MQTT_ERR_MALFORMED);
    CHECK(mqtt_peek_level((const uint8_t *)"\x10\x80", 2, &lvl) == MQTT_NEED_MORE);
    CHECK(mqtt_peek_level((const uint8_t *)"\x10\x0c\x00", 3, &lvl) == MQTT_NEED_MORE);
    CHECK(mqtt_peek_level((const uint8_t *)"", 0, &lvl) == MQTT_NEED_MORE);
}

static size_t for_error(const char *hex, size_t max, uint8_t *o, int *rcp)
{
    size_t len;
    uint8_t *b = unhex(hex, &len);
    struct mqtt_connect c;
    int rc = mqtt_parse_connect(b, len, max, &c);
    size_t n = mqtt_connack_for_error(rc, b, len, &c, o, 16);
    if (rcp)
        *rcp = rc;
    free(b);
    return n;
}

static void test_connack_for_error(void)
{
    uint8_t o[16];
    int rc;
    /* 5.0 malformed (receive maximum 0): 0x81 */
    CHECK(for_error("101200044d5154540502003c0321000000026964", LIMIT, o, &rc) == 5);
    CHECK(rc == MQTT_ERR_MALFORMED && memcmp(o, "\x20\x03\x00\x81\x00", 5) == 0);
    /* 3.1.1 malformed: close without a reply */
    CHECK(for_error("100e00044d5154540403003c00026964", LIMIT, o, &rc) == 0);
    CHECK(rc == MQTT_ERR_MALFORMED);
    /* unknown level 6: 5.0 form, 0x84; level 2: 3.x form, 0x01 */
    CHECK(for_error("100f00044d5154540602003c0000026964", LIMIT, o, NULL) == 5);
    CHECK(memcmp(o, "\x20\x03\x00\x84\x00", 5) == 0);
    CHECK(for_error("100e00044d5154540202003c00026964", LIMIT, o, NULL) == 4);
    CHECK(memcmp(o, "\x20\x02\x00\x01", 4) == 0);
    /* MQIsdp with level 4 */
    CHECK(for_error("101000064d51497364700402003c00026964", LIMIT, o, NULL) == 4);
    CHECK(memcmp(o, "\x20\x02\x00\x01", 4) == 0);
    /* bad name: the level byte after it picks the form */
    CHECK(for_error("100e00044d5154580502003c00026964", LIMIT, o, &rc) == 5);
    CHECK(rc == MQTT_ERR_PROTOCOL_NAME && memcmp(o, "\x20\x03\x00\x84\x00", 5) == 0);
    /* too large: 5.0 0x95, 3.1.1 0x03 when the level byte is in */
    CHECK(for_error("101000044d5154540502003c0000026964", 10, o, &rc) == 5);
    CHECK(rc == MQTT_ERR_TOO_LARGE && memcmp(o, "\x20\x03\x00\x95\x00", 5) == 0);
    CHECK(for_error("100e00044d5154540402003c00026964", 10, o, NULL) == 4);
    CHECK(memcmp(o, "\x20\x02\x00\x03", 4) == 0);
    /* too large, level not here yet: nothing to say */
    CHECK(for_error("10818004", LIMIT, o, &rc) == 0 && rc == MQTT_ERR_TOO_LARGE);
    /* not MQTT, success, need more: nothing */
    CHECK(for_error("474554", LIMIT, o, NULL) == 0);
    CHECK(for_error(V311_BASIC, LIMIT, o, NULL) == 0);
    CHECK(for_error("10", LIMIT, o, NULL) == 0);
}

static void test_strerror(void)
{
    CHECK_STREQ(mqtt_strerror(MQTT_NEED_MORE), "need more");
    CHECK_STREQ(mqtt_strerror(MQTT_ERR_MALFORMED), "malformed packet");
    CHECK_STREQ(mqtt_strerror(MQTT_ERR_TOO_LARGE), "packet too large");
    CHECK_STREQ(mqtt_strerror(16), "ok");
    CHECK_STREQ(mqtt_strerror(-99), "unknown error");
}

/* --- the fuzz corpus ---------------------------------------------------- */

static DIR *open_corpus(char *path, size_t cap)
{
    const char *env = getenv("MQTT_CODEC_CORPUS");
    const char *cands[] = {env, NULL, "tests/fuzz/corpus/mqtt_codec",
                           "../tests/fuzz/corpus/mqtt_codec"};
    char from_file[512];
    const char *slash = strrchr(__FILE__, '/');
    if (slash) {
        snprintf(from_file, sizeof(from_file), "%.*s/../fuzz/corpus/mqtt_codec",
                 (int)(slash - __FILE__), __FILE__);
        cands[1] = from_file;
    }
    for (size_t i = 0; i < sizeof(cands) / sizeof(cands[0]); i++) {
        DIR *d = cands[i] ? opendir(cands[i]) : NULL;
        if (d) {
            snprintf(path, cap, "%s", cands[i]);
            return d;
        }
    }
    return NULL;
}

/* Captured files (not edge_*) parse whole; every file is split-consistent. */
static void test_corpus(void)
{
    char dir[512];
    DIR *d = open_corpus(dir, sizeof(dir));
    if (!d) {
        fprintf(stderr, "  corpus not found, skipped (set MQTT_CODEC_CORPUS)\n");
        return;
    }
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        uint8_t *b = malloc(1 << 16);
        size_t len = fread(b, 1, 1 << 16, f);
        fclose(f);
        struct mqtt_connect c;
        int rc = mqtt_parse_connect(b, len, LIMIT, &c);
        if (strncmp(e->d_name, "edge_", 5) != 0) {
            if (rc != (int)len)
                fprintf(stderr, "  %s: %d (%s)\n", e->d_name, rc, mqtt_strerror(rc));
            CHECK(rc == (int)len);
            CHECK(views_inside(&c, b, len));
        }
        if (len <= 4096 && !bytewise_consistent(b, len, LIMIT)) {
            fprintf(stderr, "  %s: split-inconsistent\n", e->d_name);
            CHECK(0);
        }
        free(b);
        files++;
    }
    closedir(d);
    CHECK(files > 20);
}

int main(void)
{
    RUN(test_v31_basic);
    RUN(test_v31_all);
    RUN(test_v311_basic);
    RUN(test_v311_will);
    RUN(test_v311_utf8);
    RUN(test_empty_client_id);
    RUN(test_v5_basic);
    RUN(test_v5_props);
    RUN(test_v5_will_props);
    RUN(test_real_bytewise);
    RUN(test_large);
    RUN(test_errors);
    RUN(test_error_level_kept);
    RUN(test_need_more);
    RUN(test_varint_and_trailing_packets);
    RUN(test_refusal_codes);
    RUN(test_connack);
    RUN(test_connack_reason);
    RUN(test_peek_level);
    RUN(test_connack_for_error);
    RUN(test_strerror);
    RUN(test_corpus);
    return check_summary();
}
