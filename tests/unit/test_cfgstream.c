/*
 * Unit tests of proto/cfgstream.c: every message round-trips, the decoder
 * copes with any split of the byte stream, enforces frame and member bounds,
 * keeps its errors sticky and its memory bounded.
 *
 * `test_cfgstream --write-corpus DIR` writes the fuzz seed corpus
 * (tests/fuzz/corpus/cfgstream/) instead of running the tests; the seeds are
 * in the fuzz target's input format: two chunking bytes, then the stream.
 */
#include "cfgstream.h"
#include "check.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A frame built by hand: header, type byte, body text. */
static char *raw_frame(unsigned type, const char *body, size_t blen, size_t *outlen)
{
    size_t l = blen + 1;
    char *f = malloc(l + 4);
    f[0] = (char)(l >> 24);
    f[1] = (char)(l >> 16);
    f[2] = (char)(l >> 8);
    f[3] = (char)l;
    f[4] = (char)type;
    memcpy(f + 5, body, blen);
    *outlen = l + 4;
    return f;
}

/* Decodes exactly one message from one whole frame. */
static int decode_one(const char *frame, size_t len, struct cfgs_msg *m, char *err, size_t errlen)
{
    struct cfgs_decoder d;
    cfgs_decoder_init(&d);
    int rc = cfgs_decoder_feed(&d, frame, len);
    if (rc == 0)
        rc = cfgs_decoder_next(&d, m, err, errlen);
    if (rc == 1) {
        struct cfgs_msg extra;
        if (cfgs_decoder_next(&d, &extra, NULL, 0) != 0)
            rc = -1000; /* trailing bytes */
    }
    cfgs_decoder_free(&d);
    return rc;
}

/* Decodes a hand-built body of the given type; returns the next() result. */
static int decode_body(unsigned type, const char *body, char *err, size_t errlen)
{
    size_t flen;
    char *f = raw_frame(type, body, strlen(body), &flen);
    struct cfgs_msg m;
    int rc = decode_one(f, flen, &m, err, errlen);
    if (rc == 1)
        cfgs_msg_free(&m);
    free(f);
    return rc;
}

static void test_roundtrip_hello(void)
{
    char *f;
    size_t n;
    struct cfgs_msg m;
    REQUIRE(cfgs_encode_hello("dp-1", 42, "host-a", &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_HELLO);
    CHECK(m.proto == CFGS_PROTO_VERSION);
    CHECK_STREQ(m.node_id, "dp-1");
    CHECK(m.revision == 42);
    CHECK_STREQ(m.hostname, "host-a");
    CHECK(m.version != NULL);
    CHECK(m.key == NULL && m.value == NULL && m.message == NULL);
    cfgs_msg_free(&m);
    free(f);

    REQUIRE(cfgs_encode_hello("dp-2", 0, NULL, &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.hostname == NULL);
    CHECK(m.revision == 0);
    cfgs_msg_free(&m);
    free(f);
}

static void test_roundtrip_put_delete(void)
{
    char *f;
    size_t n;
    struct cfgs_msg m;
    json_t *v =
        json_pack("{s:s,s:[s,s],s:{s:i}}", "id", "1", "uris", "/a", "/b", "upstream", "nodes", 1);
    REQUIRE(cfgs_encode_put(7, "/apisix/routes/1", v, 3, 7, &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_PUT);
    CHECK(m.revision == 7);
    CHECK_STREQ(m.key, "/apisix/routes/1");
    CHECK(m.create_revision == 3);
    CHECK(m.mod_revision == 7);
    CHECK(json_equal(m.value, v));
    CHECK(m.value == json_object_get(m.body, "value")); /* borrowed from body */
    CHECK(m.key == json_string_value(json_object_get(m.body, "key")));
    cfgs_msg_free(&m);
    CHECK(m.body == NULL);
    free(f);
    json_decref(v);

    REQUIRE(cfgs_encode_delete(8, "/apisix/routes/1", &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_DELETE);
    CHECK(m.revision == 8);
    CHECK_STREQ(m.key, "/apisix/routes/1");
    CHECK(m.value == NULL);
    cfgs_msg_free(&m);
    free(f);

    /* a key that needs escaping survives */
    REQUIRE(cfgs_encode_delete(9, "/apisix/routes/\"q\"\\\n\xc3\xa9", &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK_STREQ(m.key, "/apisix/routes/\"q\"\\\n\xc3\xa9");
    cfgs_msg_free(&m);
    free(f);
}

static void test_roundtrip_rev_types(void)
{
    static const enum cfgs_type types[] = {CFGS_SNAPSHOT_BEGIN, CFGS_RESUME, CFGS_ACK};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        char *f;
        size_t n;
        struct cfgs_msg m;
        REQUIRE(cfgs_encode_rev(types[i], 123456789012LL, &f, &n) == 0);
        REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
        CHECK(m.type == types[i]);
        CHECK(m.revision == 123456789012LL);
        cfgs_msg_free(&m);
        free(f);
    }
}

static void test_roundtrip_end_ping_pong_error(void)
{
    char *f;
    size_t n;
    struct cfgs_msg m;
    REQUIRE(cfgs_encode_snapshot_end(10, 4, &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_SNAPSHOT_END && m.revision == 10 && m.count == 4);
    cfgs_msg_free(&m);
    free(f);

    REQUIRE(cfgs_encode_ping(CFGS_PING, 1700000000123LL, &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_PING && m.ts == 1700000000123LL);
    cfgs_msg_free(&m);
    free(f);

    REQUIRE(cfgs_encode_ping(CFGS_PONG, 5, &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_PONG && m.ts == 5);
    cfgs_msg_free(&m);
    free(f);

    REQUIRE(cfgs_encode_error("unsupported proto version 9", &f, &n) == 0);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_ERROR);
    CHECK_STREQ(m.message, "unsupported proto version 9");
    cfgs_msg_free(&m);
    free(f);
}

static void test_encode_generic(void)
{
    char *f;
    size_t n;
    struct cfgs_msg m;
    json_t *b = json_pack("{s:I,s:s,s:{s:b}}", "revision", (json_int_t)3, "key",
                          "/apisix/upstreams/u", "value", "x", 1);
    json_object_set_new(b, "create_revision", json_integer(1));
    json_object_set_new(b, "mod_revision", json_integer(3));
    REQUIRE(cfgs_encode(CFGS_PUT, b, &f, &n) == 0);
    CHECK(f[4] == CFGS_PUT);
    CHECK((size_t)((unsigned char)f[3] | (unsigned char)f[2] << 8) == n - 4);
    REQUIRE(decode_one(f, n, &m, NULL, 0) == 1);
    CHECK(json_equal(m.body, b));
    CHECK(m.mod_revision == 3);
    cfgs_msg_free(&m);
    free(f);

    json_t *arr = json_array();
    CHECK(cfgs_encode(CFGS_PUT, arr, &f, &n) == -EINVAL);
    CHECK(cfgs_encode((enum cfgs_type)0, b, &f, &n) == -EINVAL);
    CHECK(cfgs_encode((enum cfgs_type)11, b, &f, &n) == -EINVAL);
    json_decref(arr);
    json_decref(b);
}

static void test_encoder_rejects_bad_args(void)
{
    char *f = NULL;
    size_t n;
    json_t *v = json_object();
    json_t *arr = json_array();
    CHECK(cfgs_encode_hello(NULL, 0, NULL, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_hello("", 0, NULL, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_hello("n", -1, NULL, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_hello("\xff", 0, NULL, &f, &n) == -EINVAL); /* not UTF-8 */
    CHECK(cfgs_encode_put(-1, "/k", v, 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put(1, "k", v, 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put(1, NULL, v, 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put(1, "/k", arr, 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put(1, "/k", v, -2, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put_raw(1, "/k", "[1]", 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put_raw(1, "/k", "", 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put_raw(1, "/k", "\"s\"", 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_put_raw(1, "/k", NULL, 0, 0, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_delete(1, "", &f, &n) == -EINVAL);
    CHECK(cfgs_encode_rev(CFGS_PUT, 1, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_rev(CFGS_ACK, -1, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_snapshot_end(1, -1, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_ping(CFGS_ACK, 1, &f, &n) == -EINVAL);
    CHECK(cfgs_encode_error(NULL, &f, &n) == -EINVAL);
    CHECK(f == NULL);
    json_decref(v);
    json_decref(arr);
}

static void test_put_raw_equals_put(void)
{
    json_t *v = json_pack("{s:s,s:[s],s:{s:s,s:{s:i,s:i}},s:f,s:n,s:b}", "id", "r\"1\u00e9", "uris",
                          "/x/*", "upstream", "type", "roundrobin", "nodes", "127.0.0.1:80", 1,
                          "[::1]:81", 2, "w", 0.5, "nil", "t", 1);
    char *text = json_dumps(v, JSON_COMPACT);
    char *f1, *f2;
    size_t n1, n2;
    REQUIRE(cfgs_encode_put(11, "/apisix/routes/r\"1", v, 2, 11, &f1, &n1) == 0);
    REQUIRE(cfgs_encode_put_raw(11, "/apisix/routes/r\"1", text, 2, 11, &f2, &n2) == 0);
    CHECK(n1 == n2);
    CHECK(n1 == n2 && memcmp(f1, f2, n1) == 0);

    /* and both equal what cfgs_encode makes of the same body */
    json_t *b = json_object();
    json_object_set_new(b, "revision", json_integer(11));
    json_object_set_new(b, "key", json_string("/apisix/routes/r\"1"));
    json_object_set_new(b, "create_revision", json_integer(2));
    json_object_set_new(b, "mod_revision", json_integer(11));
    json_object_set(b, "value", v);
    char *f3;
    size_t n3;
    REQUIRE(cfgs_encode(CFGS_PUT, b, &f3, &n3) == 0);
    CHECK(n3 == n1 && memcmp(f1, f3, n1) == 0);

    /* raw text with whitespace is embedded as is and still decodes */
    char *f4;
    size_t n4;
    struct cfgs_msg m;
    REQUIRE(cfgs_encode_put_raw(1, "/apisix/routes/2", " {\n \"a\" : 1 }\n", 1, 1, &f4, &n4) == 0);
    REQUIRE(decode_one(f4, n4, &m, NULL, 0) == 1);
    CHECK(json_integer_value(json_object_get(m.value, "a")) == 1);
    cfgs_msg_free(&m);

    free(f1);
    free(f2);
    free(f3);
    free(f4);
    free(text);
    json_decref(b);
    json_decref(v);
}

/* A stream of one of each message, for the feeding tests. */
static char *sample_stream(size_t *len, int *nmsgs)
{
    char *parts[12];
    size_t lens[12];
    int k = 0;
    json_t *v = json_pack("{s:s,s:s}", "id", "1", "uri", "/hello");
    cfgs_encode_hello("dp", 5, "h", &parts[k], &lens[k]);
    k++;
    cfgs_encode_rev(CFGS_SNAPSHOT_BEGIN, 9, &parts[k], &lens[k]);
    k++;
    cfgs_encode_put(9, "/apisix/routes/1", v, 1, 4, &parts[k], &lens[k]);
    k++;
    cfgs_encode_put_raw(9, "/apisix/routes/2", "{\"id\":\"2\"}", 5, 9, &parts[k], &lens[k]);
    k++;
    cfgs_encode_snapshot_end(9, 2, &parts[k], &lens[k]);
    k++;
    cfgs_encode_delete(10, "/apisix/routes/1", &parts[k], &lens[k]);
    k++;
    cfgs_encode_rev(CFGS_RESUME, 10, &parts[k], &lens[k]);
    k++;
    cfgs_encode_ping(CFGS_PING, 100, &parts[k], &lens[k]);
    k++;
    cfgs_encode_ping(CFGS_PONG, 100, &parts[k], &lens[k]);
    k++;
    cfgs_encode_rev(CFGS_ACK, 10, &parts[k], &lens[k]);
    k++;
    cfgs_encode_error("bye", &parts[k], &lens[k]);
    k++;
    json_decref(v);
    size_t total = 0;
    for (int i = 0; i < k; i++)
        total += lens[i];
    char *s = malloc(total);
    size_t o = 0;
    for (int i = 0; i < k; i++) {
        memcpy(s + o, parts[i], lens[i]);
        o += lens[i];
        free(parts[i]);
    }
    *len = total;
    *nmsgs = k;
    return s;
}

static const enum cfgs_type sample_types[] = {
    CFGS_HELLO,  CFGS_SNAPSHOT_BEGIN, CFGS_PUT,  CFGS_PUT, CFGS_SNAPSHOT_END, CFGS_DELETE,
    CFGS_RESUME, CFGS_PING,           CFGS_PONG, CFGS_ACK, CFGS_ERROR,
};

/* Feeds the sample stream in chunks of `chunk` bytes, draining as it goes. */
static void feed_in_chunks(size_t chunk)
{
    size_t len;
    int want;
    char *s = sample_stream(&len, &want);
    struct cfgs_decoder d;
    cfgs_decoder_init(&d);
    int got = 0;
    for (size_t o = 0; o < len; o += chunk) {
        size_t n = len - o < chunk ? len - o : chunk;
        REQUIRE(cfgs_decoder_feed(&d, s + o, n) == 0);
        struct cfgs_msg m;
        int rc;
        while ((rc = cfgs_decoder_next(&d, &m, NULL, 0)) == 1) {
            CHECK(got < want && m.type == sample_types[got]);
            got++;
            cfgs_msg_free(&m);
        }
        CHECK(rc == 0);
    }
    CHECK(got == want);
    CHECK(d.len == d.off);
    cfgs_decoder_free(&d);
    free(s);
}

static void test_byte_at_a_time(void)
{
    feed_in_chunks(1);
    feed_in_chunks(3);
    feed_in_chunks(7);
}

static void test_many_frames_one_feed(void)
{
    size_t len;
    int want;
    char *s = sample_stream(&len, &want);
    feed_in_chunks(len);

    /* fed twice without draining in between: both copies come out */
    struct cfgs_decoder d;
    cfgs_decoder_init(&d);
    REQUIRE(cfgs_decoder_feed(&d, s, len) == 0);
    REQUIRE(cfgs_decoder_feed(&d, s, len) == 0);
    struct cfgs_msg m;
    int got = 0;
    while (cfgs_decoder_next(&d, &m, NULL, 0) == 1) {
        CHECK(m.type == sample_types[got % want]);
        got++;
        cfgs_msg_free(&m);
    }
    CHECK(got == 2 * want);
    cfgs_decoder_free(&d);
    free(s);
}

static void test_partial_needs_more(void)
{
    char *f;
    size_t n;
    REQUIRE(cfgs_encode_rev(CFGS_ACK, 1, &f, &n) == 0);
    struct cfgs_decoder d;
    struct cfgs_msg m;
    cfgs_decoder_init(&d);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 0); /* empty */
    CHECK(cfgs_decoder_feed(&d, f, 0) == 0);
    CHECK(cfgs_decoder_feed(&d, f, 3) == 0);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 0); /* partial header */
    CHECK(cfgs_decoder_feed(&d, f + 3, n - 4) == 0);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 0); /* partial body */
    CHECK(cfgs_decoder_feed(&d, f + n - 1, 1) == 0);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 1);
    CHECK(m.type == CFGS_ACK && m.revision == 1);
    cfgs_msg_free(&m);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 0);
    cfgs_decoder_free(&d);
    free(f);
}

/* A PUT frame whose length field is exactly L, padded in the value. */
static int put_of_frame_len(size_t l, char **f, size_t *n)
{
    static const char key[] = "/apisix/routes/big";
    char *out0;
    size_t n0;
    if (cfgs_encode_put_raw(1, key, "{\"p\":\"\"}", 1, 1, &out0, &n0) < 0)
        return -1;
    free(out0);
    size_t pad = l + 4 - n0;
    char *val = malloc(pad + 9);
    memcpy(val, "{\"p\":\"", 6);
    memset(val + 6, 'x', pad);
    memcpy(val + 6 + pad, "\"}", 3);
    int rc = cfgs_encode_put_raw(1, key, val, 1, 1, f, n);
    free(val);
    return rc;
}

static void test_max_size(void)
{
    char *f;
    size_t n;
    REQUIRE(put_of_frame_len(CFGS_MAX_FRAME, &f, &n) == 0);
    CHECK(n == CFGS_MAX_FRAME + 4);
    struct cfgs_decoder d;
    struct cfgs_msg m;
    cfgs_decoder_init(&d);
    /* fed in 64 KiB reads, as from a socket */
    int rc = 0;
    for (size_t o = 0; o < n; o += 65536) {
        REQUIRE(cfgs_decoder_feed(&d, f + o, n - o < 65536 ? n - o : 65536) == 0);
        CHECK(d.cap <= CFGS_MAX_FRAME + 4 + 65536);
        rc = cfgs_decoder_next(&d, &m, NULL, 0);
        if (rc)
            break;
    }
    REQUIRE(rc == 1);
    CHECK(m.type == CFGS_PUT);
    CHECK(strlen(json_string_value(json_object_get(m.value, "p"))) > CFGS_MAX_FRAME - 200);
    cfgs_msg_free(&m);
    CHECK(d.cap == 0); /* the big buffer went back once drained */
    cfgs_decoder_free(&d);
    free(f);

    /* one byte more cannot be encoded, raw or not */
    CHECK(put_of_frame_len(CFGS_MAX_FRAME + 1, &f, &n) == -EMSGSIZE);
    json_t *v = json_object();
    char *big = malloc(CFGS_MAX_FRAME + 1);
    memset(big, 'y', CFGS_MAX_FRAME);
    big[CFGS_MAX_FRAME] = 0;
    json_object_set_new(v, "p", json_string(big));
    CHECK(cfgs_encode_put(1, "/k", v, 1, 1, &f, &n) == -EMSGSIZE);
    CHECK(cfgs_encode(CFGS_PUT, v, &f, &n) == -EMSGSIZE);
    json_decref(v);
    free(big);
}

static void test_zero_length(void)
{
    static const char z[] = {0, 0, 0, 0, 9, '{', '}'};
    struct cfgs_decoder d;
    struct cfgs_msg m;
    char err[128] = "";
    cfgs_decoder_init(&d);
    CHECK(cfgs_decoder_feed(&d, z, sizeof(z)) == 0);
    CHECK(cfgs_decoder_next(&d, &m, err, sizeof(err)) == -EMSGSIZE);
    CHECK_CONTAINS(err, "frame length 0");
    CHECK(m.body == NULL);
    cfgs_decoder_free(&d);
}

static void test_oversize_length(void)
{
    /* detected from the header alone, without waiting for the body */
    uint32_t l = CFGS_MAX_FRAME + 1;
    char h[5] = {(char)(l >> 24), (char)(l >> 16), (char)(l >> 8), (char)l, CFGS_PUT};
    struct cfgs_decoder d;
    struct cfgs_msg m;
    char err[128] = "";
    cfgs_decoder_init(&d);
    CHECK(cfgs_decoder_feed(&d, h, 4) == 0);
    CHECK(cfgs_decoder_next(&d, &m, err, sizeof(err)) == -EMSGSIZE);
    CHECK_CONTAINS(err, "out of range");
    CHECK(d.cap == 0);
    cfgs_decoder_free(&d);

    static const char ff[] = {(char)0xff, (char)0xff, (char)0xff, (char)0xff};
    cfgs_decoder_init(&d);
    CHECK(cfgs_decoder_feed(&d, ff, 4) == 0);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == -EMSGSIZE);
    cfgs_decoder_free(&d);
}

static void test_bad_members(void)
{
    static const struct {
        unsigned type;
        const char *body;
        const char *why;
    } cases[] = {
        {CFGS_HELLO, "{\"node_id\":\"a\",\"revision\":0}", "missing member \"proto\""},
        {CFGS_HELLO, "{\"proto\":\"1\",\"node_id\":\"a\",\"revision\":0}", "\"proto\""},
        {CFGS_HELLO, "{\"proto\":-1,\"node_id\":\"a\",\"revision\":0}", "\"proto\""},
        {CFGS_HELLO, "{\"proto\":4294967296,\"node_id\":\"a\",\"revision\":0}", "\"proto\""},
        {CFGS_HELLO, "{\"proto\":1,\"revision\":0}", "missing member \"node_id\""},
        {CFGS_HELLO, "{\"proto\":1,\"node_id\":7,\"revision\":0}", "\"node_id\""},
        {CFGS_HELLO, "{\"proto\":1,\"node_id\":\"\",\"revision\":0}", "\"node_id\""},
        {CFGS_HELLO, "{\"proto\":1,\"node_id\":\"a\"}", "missing member \"revision\""},
        {CFGS_HELLO, "{\"proto\":1,\"node_id\":\"a\",\"revision\":0,\"hostname\":1}",
         "\"hostname\""},
        {CFGS_HELLO, "{\"proto\":1,\"node_id\":\"a\",\"revision\":0,\"version\":null}",
         "\"version\""},
        {CFGS_SNAPSHOT_BEGIN, "{}", "missing member \"revision\""},
        {CFGS_SNAPSHOT_BEGIN, "{\"revision\":1.0}", "integer"},
        {CFGS_RESUME, "{\"revision\":-5}", "integer >= 0"},
        {CFGS_ACK, "{\"revision\":\"5\"}", "integer"},
        {CFGS_ACK, "{\"revision\":true}", "integer"},
        {CFGS_PUT, "{\"key\":\"/k\",\"value\":{},\"create_revision\":1,\"mod_revision\":1}",
         "\"revision\""},
        {CFGS_PUT,
         "{\"revision\":1,\"key\":\"k\",\"value\":{},\"create_revision\":1,\"mod_revision\":1}",
         "start with"},
        {CFGS_PUT,
         "{\"revision\":1,\"key\":\"\",\"value\":{},\"create_revision\":1,\"mod_revision\":1}",
         "start with"},
        {CFGS_PUT,
         "{\"revision\":1,\"key\":[\"/k\"],\"value\":{},\"create_revision\":1,\"mod_revision\":1}",
         "\"key\""},
        {CFGS_PUT, "{\"revision\":1,\"value\":{},\"create_revision\":1,\"mod_revision\":1}",
         "missing member \"key\""},
        {CFGS_PUT, "{\"revision\":1,\"key\":\"/k\",\"create_revision\":1,\"mod_revision\":1}",
         "missing member \"value\""},
        {CFGS_PUT,
         "{\"revision\":1,\"key\":\"/k\",\"value\":[],\"create_revision\":1,\"mod_revision\":1}",
         "must be an object"},
        {CFGS_PUT,
         "{\"revision\":1,\"key\":\"/k\",\"value\":null,\"create_revision\":1,\"mod_revision\":1}",
         "must be an object"},
        {CFGS_PUT, "{\"revision\":1,\"key\":\"/k\",\"value\":{},\"mod_revision\":1}",
         "\"create_revision\""},
        {CFGS_PUT, "{\"revision\":1,\"key\":\"/k\",\"value\":{},\"create_revision\":1}",
         "\"mod_revision\""},
        {CFGS_DELETE, "{\"revision\":1}", "missing member \"key\""},
        {CFGS_DELETE, "{\"revision\":1,\"key\":\"apisix\"}", "start with"},
        {CFGS_DELETE, "{\"key\":\"/k\"}", "\"revision\""},
        {CFGS_SNAPSHOT_END, "{\"revision\":1}", "missing member \"count\""},
        {CFGS_SNAPSHOT_END, "{\"revision\":1,\"count\":-1}", "\"count\""},
        {CFGS_PING, "{}", "missing member \"ts\""},
        {CFGS_PONG, "{\"ts\":1.5}", "\"ts\""},
        {CFGS_ERROR, "{}", "missing member \"message\""},
        {CFGS_ERROR, "{\"message\":{}}", "\"message\""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        int rc = decode_body(cases[i].type, cases[i].body, err, sizeof(err));
        if (rc != -EPROTO)
            fprintf(stderr, "  case %zu: rc %d for %s\n", i, rc, cases[i].body);
        CHECK(rc == -EPROTO);
        CHECK_CONTAINS(err, cases[i].why);
        CHECK_CONTAINS(err, cfgs_type_name((enum cfgs_type)cases[i].type));
    }
}

static void test_unknown_members_ignored(void)
{
    char err[128];
    CHECK(decode_body(CFGS_ACK, "{\"revision\":3,\"future\":[1,{\"x\":null}],\"z\":\"\"}", err,
                      sizeof(err)) == 1);
    CHECK(decode_body(CFGS_HELLO,
                      "{\"proto\":2,\"node_id\":\"n\",\"revision\":0,\"features\":[\"gzip\"]}", err,
                      sizeof(err)) == 1);
    /* whitespace around the object is fine */
    CHECK(decode_body(CFGS_PING, " \n{ \"ts\" : 0 }\t\r\n", err, sizeof(err)) == 1);
}

static void test_bad_body(void)
{
    static const char *bodies[] = {
        "",                                         /* L == 1: no body at all */
        "[]",                                       /* not an object */
        "[{\"revision\":1}]",                       /* not an object */
        "\"revision\"",                             /* a bare string */
        "7",                                        /* a bare number */
        "null",                                     /* a bare null */
        "{\"revision\":1",                          /* truncated */
        "{\"revision\":1}x",                        /* trailing garbage */
        "{\"revision\":1}{}",                       /* two values */
        "{\"revision\":1,\"revision\":2}",          /* duplicate member */
        "{\"revision\":1,\"x\":{\"a\":1,\"a\":2}}", /* nested duplicate */
        "{'revision':1}",                           /* not JSON */
        "{\"revision\":1,\"s\":\"\xff\"}",          /* not UTF-8 */
        "{\"revision\":1,\"s\":\"a\\u0000b\"}",     /* NUL in a string */
        "{\"revision\":99999999999999999999}",      /* integer overflow */
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        char err[256] = "";
        int rc = decode_body(CFGS_ACK, bodies[i], err, sizeof(err));
        if (rc != -EPROTO)
            fprintf(stderr, "  body %zu: rc %d\n", i, rc);
        CHECK(rc == -EPROTO);
        CHECK(err[0] != 0);
    }

    /* deep nesting is refused by jansson's depth limit, not by the stack */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 32);
    size_t o = 0;
    o += (size_t)sprintf(deep, "{\"revision\":1,\"x\":");
    for (size_t i = 0; i < depth; i++)
        deep[o++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[o++] = ']';
    deep[o++] = '}';
    deep[o] = 0;
    CHECK(decode_body(CFGS_ACK, deep, NULL, 0) == -EPROTO);
    free(deep);
}

static void test_unknown_type(void)
{
    static const unsigned types[] = {0, 11, 12, 127, 255};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        char err[128] = "";
        CHECK(decode_body(types[i], "{\"revision\":1}", err, sizeof(err)) == -EPROTO);
        CHECK_CONTAINS(err, "unknown message type");
    }
}

static void test_sticky_error(void)
{
    char *good;
    size_t gn, bn;
    REQUIRE(cfgs_encode_rev(CFGS_ACK, 1, &good, &gn) == 0);
    char *bad = raw_frame(42, "{}", 2, &bn);
    struct cfgs_decoder d;
    struct cfgs_msg m;
    char err[128];
    cfgs_decoder_init(&d);
    CHECK(cfgs_decoder_feed(&d, good, gn) == 0);
    CHECK(cfgs_decoder_feed(&d, bad, bn) == 0);
    CHECK(cfgs_decoder_feed(&d, good, gn) == 0);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 1);
    cfgs_msg_free(&m);
    CHECK(cfgs_decoder_next(&d, &m, err, sizeof(err)) == -EPROTO);
    CHECK(d.error == -EPROTO);
    CHECK(cfgs_decoder_next(&d, &m, err, sizeof(err)) == -EPROTO);
    CHECK(err[0] != 0);
    /* later bytes are dropped, not buffered */
    for (int i = 0; i < 100; i++)
        CHECK(cfgs_decoder_feed(&d, good, gn) == 0);
    CHECK(d.cap == 0 && d.len == 0);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == -EPROTO);
    CHECK(m.body == NULL);
    cfgs_decoder_free(&d);

    /* an -EMSGSIZE stays -EMSGSIZE; free + init makes a fresh decoder */
    static const char z[] = {0, 0, 0, 0};
    cfgs_decoder_init(&d);
    cfgs_decoder_feed(&d, z, 4);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == -EMSGSIZE);
    cfgs_decoder_feed(&d, good, gn);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == -EMSGSIZE);
    cfgs_decoder_free(&d);
    cfgs_decoder_init(&d);
    cfgs_decoder_feed(&d, good, gn);
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 1);
    cfgs_msg_free(&m);
    cfgs_decoder_free(&d);
    free(good);
    free(bad);
}

static void test_memory_bounded(void)
{
    /* 1000 frames of ~620 bytes, fed in reads of 1500 bytes that straddle
     * frame boundaries: the buffer must stay small, not grow with the stream */
    char *frames[1000];
    size_t lens[1000], total = 0, flen_max = 0;
    json_t *v = json_pack("{s:s,s:s}", "id", "x", "desc", "");
    char pad[512];
    memset(pad, 'p', sizeof(pad) - 1);
    pad[sizeof(pad) - 1] = 0;
    json_object_set_new(v, "desc", json_string(pad));
    for (int i = 0; i < 1000; i++) {
        char key[64];
        snprintf(key, sizeof(key), "/apisix/routes/%d", i);
        REQUIRE(cfgs_encode_put(i + 1, key, v, i + 1, i + 1, &frames[i], &lens[i]) == 0);
        total += lens[i];
        if (lens[i] > flen_max)
            flen_max = lens[i];
    }
    json_decref(v);
    char *s = malloc(total);
    size_t o = 0;
    for (int i = 0; i < 1000; i++) {
        memcpy(s + o, frames[i], lens[i]);
        o += lens[i];
        free(frames[i]);
    }

    struct cfgs_decoder d;
    cfgs_decoder_init(&d);
    size_t maxcap = 0;
    int got = 0;
    for (o = 0; o < total; o += 1500) {
        size_t n = total - o < 1500 ? total - o : 1500;
        REQUIRE(cfgs_decoder_feed(&d, s + o, n) == 0);
        if (d.cap > maxcap)
            maxcap = d.cap;
        CHECK(d.len - d.off < flen_max + 1500);
        struct cfgs_msg m;
        while (cfgs_decoder_next(&d, &m, NULL, 0) == 1) {
            CHECK(m.revision == got + 1);
            got++;
            cfgs_msg_free(&m);
        }
    }
    CHECK(got == 1000);
    CHECK(maxcap <= 4096);

    /* one 1 MiB frame in 1000-byte reads: geometric growth, never more than
     * twice the frame; the buffer is given back once the frame is taken */
    char *big;
    size_t bn;
    REQUIRE(put_of_frame_len(1 << 20, &big, &bn) == 0);
    maxcap = 0;
    for (o = 0; o < bn; o += 1000) {
        REQUIRE(cfgs_decoder_feed(&d, big + o, bn - o < 1000 ? bn - o : 1000) == 0);
        if (d.cap > maxcap)
            maxcap = d.cap;
    }
    CHECK(maxcap >= bn && maxcap <= 2 * bn);
    struct cfgs_msg m;
    CHECK(cfgs_decoder_next(&d, &m, NULL, 0) == 1);
    cfgs_msg_free(&m);
    CHECK(d.cap == 0);

    /* and after a large frame, a small steady stream shrinks the buffer */
    char *mix = malloc(bn + 10 * lens[0]);
    memcpy(mix, big, bn);
    REQUIRE(cfgs_encode_rev(CFGS_ACK, 1, &frames[0], &lens[0]) == 0);
    for (int i = 0; i < 10; i++)
        memcpy(mix + bn + (size_t)i * lens[0], frames[0], lens[0]);
    size_t mn = bn + 10 * lens[0];
    for (o = 0; o < mn; o += 1001) {
        REQUIRE(cfgs_decoder_feed(&d, mix + o, mn - o < 1001 ? mn - o : 1001) == 0);
        while (cfgs_decoder_next(&d, &m, NULL, 0) == 1)
            cfgs_msg_free(&m);
    }
    CHECK(d.cap <= 4096);
    free(frames[0]);
    free(mix);
    free(big);
    cfgs_decoder_free(&d);
    free(s);
}

static void test_type_names(void)
{
    CHECK_STREQ(cfgs_type_name(CFGS_HELLO), "HELLO");
    CHECK_STREQ(cfgs_type_name(CFGS_SNAPSHOT_BEGIN), "SNAPSHOT_BEGIN");
    CHECK_STREQ(cfgs_type_name(CFGS_PUT), "PUT");
    CHECK_STREQ(cfgs_type_name(CFGS_DELETE), "DELETE");
    CHECK_STREQ(cfgs_type_name(CFGS_SNAPSHOT_END), "SNAPSHOT_END");
    CHECK_STREQ(cfgs_type_name(CFGS_RESUME), "RESUME");
    CHECK_STREQ(cfgs_type_name(CFGS_PING), "PING");
    CHECK_STREQ(cfgs_type_name(CFGS_PONG), "PONG");
    CHECK_STREQ(cfgs_type_name(CFGS_ACK), "ACK");
    CHECK_STREQ(cfgs_type_name(CFGS_ERROR), "ERROR");
    CHECK_STREQ(cfgs_type_name((enum cfgs_type)0), "UNKNOWN");
    CHECK_STREQ(cfgs_type_name((enum cfgs_type)11), "UNKNOWN");
    CHECK_STREQ(cfgs_type_name((enum cfgs_type) - 1), "UNKNOWN");
}

/* ------------------------------------------------------------------------ */
/* Fuzz seed corpus                                                          */
/* ------------------------------------------------------------------------ */

struct seed {
    char *p;
    size_t len;
};

static void seed_add(struct seed *s, const char *p, size_t n)
{
    s->p = realloc(s->p, s->len + n);
    memcpy(s->p + s->len, p, n);
    s->len += n;
}

static void seed_frame(struct seed *s, int rc, char *f, size_t n)
{
    if (rc == 0)
        seed_add(s, f, n);
    free(f);
}

static void seed_raw(struct seed *s, unsigned type, const char *body)
{
    size_t n;
    char *f = raw_frame(type, body, strlen(body), &n);
    seed_add(s, f, n);
    free(f);
}

static int seed_write(const char *dir, const char *name, struct seed *s)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(s->p, 1, s->len, fp) != s->len || fclose(fp) != 0) {
        perror(path);
        return -1;
    }
    free(s->p);
    s->p = NULL;
    s->len = 0;
    return 0;
}

static int write_corpus(const char *dir)
{
    struct seed s = {0};
    char *f;
    size_t n;
    int rc = 0;
    json_t *v = json_pack("{s:s,s:[s],s:{s:s,s:{s:i}}}", "id", "1", "uris", "/api/*", "upstream",
                          "type", "roundrobin", "nodes", "127.0.0.1:8080", 1);

    /* a control plane's side: snapshot then live changes, fed whole */
    seed_add(&s, "\0\0", 2);
    seed_frame(&s, cfgs_encode_rev(CFGS_SNAPSHOT_BEGIN, 12, &f, &n), f, n);
    seed_frame(&s, cfgs_encode_put(12, "/apisix/routes/1", v, 3, 12, &f, &n), f, n);
    seed_frame(&s,
               cfgs_encode_put_raw(12, "/apisix/upstreams/u1",
                                   "{\"id\":\"u1\",\"type\":\"chash\",\"key\":\"mqtt_client_id\"}",
                                   5, 5, &f, &n),
               f, n);
    seed_frame(&s, cfgs_encode_snapshot_end(12, 2, &f, &n), f, n);
    seed_frame(&s, cfgs_encode_put(13, "/apisix/routes/2", v, 13, 13, &f, &n), f, n);
    seed_frame(&s, cfgs_encode_delete(14, "/apisix/routes/1", &f, &n), f, n);
    seed_frame(&s, cfgs_encode_ping(CFGS_PING, 1700000000000LL, &f, &n), f, n);
    rc |= seed_write(dir, "cp_snapshot_live", &s);

    /* a data plane's side, fed a byte at a time */
    seed_add(&s, "\1\0", 2);
    seed_frame(&s, cfgs_encode_hello("dp-1", 0, "edge-host", &f, &n), f, n);
    seed_frame(&s, cfgs_encode_rev(CFGS_ACK, 12, &f, &n), f, n);
    seed_frame(&s, cfgs_encode_ping(CFGS_PONG, 1700000000000LL, &f, &n), f, n);
    seed_frame(&s, cfgs_encode_ping(CFGS_PING, 1700000005000LL, &f, &n), f, n);
    rc |= seed_write(dir, "dp_hello_ack", &s);

    /* resume, changes, then an error; odd chunk sizes */
    seed_add(&s, "\x07\x03", 2);
    seed_frame(&s, cfgs_encode_rev(CFGS_RESUME, 40, &f, &n), f, n);
    seed_frame(&s, cfgs_encode_put(41, "/apisix/consumers/jack", v, 41, 41, &f, &n), f, n);
    seed_frame(&s, cfgs_encode_delete(42, "/apisix/ssls/\"odd\"\\key\xc3\xa9", &f, &n), f, n);
    seed_frame(&s, cfgs_encode_error("backlog over 67108864 bytes", &f, &n), f, n);
    rc |= seed_write(dir, "resume_error", &s);

    /* a valid frame, then a zero length */
    seed_add(&s, "\0\0", 2);
    seed_frame(&s, cfgs_encode_rev(CFGS_ACK, 1, &f, &n), f, n);
    seed_add(&s, "\0\0\0\0\x09{}", 7);
    rc |= seed_write(dir, "zero_length", &s);

    /* a length one past the maximum */
    seed_add(&s, "\x05\x01", 2);
    seed_add(&s, "\x01\0\0\x01\x03{}", 7);
    rc |= seed_write(dir, "oversize_length", &s);

    /* a frame cut short */
    seed_add(&s, "\x02\x09", 2);
    seed_frame(&s, cfgs_encode_snapshot_end(3, 0, &f, &n), f, n);
    if (n > 3)
        s.len -= 3;
    rc |= seed_write(dir, "truncated", &s);

    /* unknown type, duplicate members, non-object and ill-typed bodies */
    seed_add(&s, "\0\0", 2);
    seed_raw(&s, 11, "{\"revision\":1}");
    rc |= seed_write(dir, "unknown_type", &s);
    seed_add(&s, "\x10\x20", 2);
    seed_raw(&s, CFGS_PUT,
             "{\"revision\":1,\"key\":\"/k\",\"key\":\"/k\",\"value\":{},\"create_revision\":1,"
             "\"mod_revision\":1}");
    rc |= seed_write(dir, "duplicate_member", &s);
    seed_add(&s, "\x03\x00", 2);
    seed_raw(&s, CFGS_ACK, "[1,2,3]");
    seed_raw(&s, CFGS_PUT,
             "{\"revision\":1,\"key\":\"/k\",\"value\":[],\"create_revision\":1,"
             "\"mod_revision\":-1}");
    rc |= seed_write(dir, "bad_bodies", &s);

    /* unknown members, whitespace, unicode escapes: valid */
    seed_add(&s, "\x40\x11", 2);
    seed_raw(&s, CFGS_HELLO,
             " {\"proto\":1,\"node_id\":\"n\\u00e9\",\"revision\":9007199254740993,"
             "\"x\":{\"y\":[1.5e3,null,true]}} ");
    seed_raw(&s, CFGS_PUT,
             "{\"value\":{\"a\":{\"b\":{\"c\":[]}}},\"mod_revision\":2,\"create_revision\":1,"
             "\"key\":\"/apisix/routes/\\ud83d\\ude00\",\"revision\":2}");
    rc |= seed_write(dir, "unknown_members", &s);

    json_decref(v);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
        return write_corpus(argv[2]);

    RUN(test_roundtrip_hello);
    RUN(test_roundtrip_put_delete);
    RUN(test_roundtrip_rev_types);
    RUN(test_roundtrip_end_ping_pong_error);
    RUN(test_encode_generic);
    RUN(test_encoder_rejects_bad_args);
    RUN(test_put_raw_equals_put);
    RUN(test_byte_at_a_time);
    RUN(test_many_frames_one_feed);
    RUN(test_partial_needs_more);
    RUN(test_max_size);
    RUN(test_zero_length);
    RUN(test_oversize_length);
    RUN(test_bad_members);
    RUN(test_unknown_members_ignored);
    RUN(test_bad_body);
    RUN(test_unknown_type);
    RUN(test_sticky_error);
    RUN(test_memory_bounded);
    RUN(test_type_names);
    return check_summary();
}
