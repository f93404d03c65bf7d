/*
 * test_device_api: the device-api plugin's pure parts (paths, body checks,
 * the rewriting of telemetry into what is published, topics) and the MQTT
 * publisher (mqtt_client): its codec, and its behaviour against a fake
 * broker on the same libuv loop (CONNACK, PUBACK matching, QoS 0, broker
 * down, no PUBACK, connection lost, reconnect, keepalive, close).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "mqtt_client.h"
#include "plugins/device_api.h"

/* ------------------------------------------------------------ paths */

static void test_paths(void)
{
    const char *t;
    size_t tl;
    CHECK(device_api_path("/api/v1/telemetry", &t, &tl) == DEVICE_API_TELEMETRY && !t);
    CHECK(device_api_path("/api/v1/attributes", &t, &tl) == DEVICE_API_ATTRIBUTES && !t);
    CHECK(device_api_path("/api/v1/ABC123/telemetry", &t, &tl) == DEVICE_API_TELEMETRY);
    CHECK(t && tl == 6 && memcmp(t, "ABC123", 6) == 0);
    CHECK(device_api_path("/tb/api/v1/tok/attributes", &t, &tl) == DEVICE_API_ATTRIBUTES);
    CHECK(tl == 3 && memcmp(t, "tok", 3) == 0);
    CHECK(device_api_path("/api/v1/tok/rpc", &t, &tl) == DEVICE_API_NONE && !t);
    CHECK(device_api_path("/api/v1/a/b/telemetry", &t, &tl) == DEVICE_API_NONE);
    CHECK(device_api_path("/api/v1//telemetry", &t, &tl) == DEVICE_API_NONE);
    CHECK(device_api_path("/api/v1/telemetry/", &t, &tl) == DEVICE_API_NONE);
    CHECK(device_api_path("/api/v2/telemetry", &t, &tl) == DEVICE_API_NONE);
    CHECK(device_api_path("/", &t, &tl) == DEVICE_API_NONE);
    CHECK(device_api_path("/api/v1/", &t, &tl) == DEVICE_API_NONE);
}

static void test_topic(void)
{
    char *s = device_api_topic("devices/{device}/telemetry", "dev-1");
    CHECK_STREQ(s, "devices/dev-1/telemetry");
    free(s);
    s = device_api_topic("{device}/{device}", "x");
    CHECK_STREQ(s, "x/x");
    free(s);
    s = device_api_topic("fixed/topic", "x");
    CHECK_STREQ(s, "fixed/topic");
    free(s);
}

/* ------------------------------------------------------------ bodies */

/* Runs device_api_telemetry with now = 1700000000000. */
static int tel(const char *body, char **out, char *err)
{
    size_t ol = 0;
    *out = NULL;
    int rc = device_api_telemetry(body, strlen(body), 1700000000000LL, out, &ol, err, 256);
    if (rc == 0)
        CHECK(ol == strlen(*out));
    return rc;
}

static void test_telemetry_forms(void)
{
    char *o, err[256];
    /* The seed example: wrapped, the object's bytes kept (42.0 stays 42.0). */
    const char *seed = "{\"stringKey\":\"value1\", \"booleanKey\":true, \"doubleKey\":42.0, "
                       "\"longKey\":73}";
    REQUIRE(tel(seed, &o, err) == 0);
    CHECK_STREQ(o, "{\"ts\":1700000000000,\"values\":{\"stringKey\":\"value1\", "
                   "\"booleanKey\":true, \"doubleKey\":42.0, \"longKey\":73}}");
    free(o);
    /* Surrounding whitespace is not part of the entry. */
    REQUIRE(tel("  \n{\"a\":1.50}\n ", &o, err) == 0);
    CHECK_STREQ(o, "{\"ts\":1700000000000,\"values\":{\"a\":1.50}}");
    free(o);
    /* With ts: unchanged, byte for byte. */
    const char *ts = " {\"ts\":1451649600512, \"values\":{\"k\":1e3,\"j\":{\"x\":[1,2]}}} ";
    REQUIRE(tel(ts, &o, err) == 0);
    CHECK_STREQ(o, ts);
    free(o);
    /* An array of plain objects: each wrapped. */
    REQUIRE(tel("[{\"a\":1}, {\"b\":\"x,]}\\\"\"} ]", &o, err) == 0);
    CHECK_STREQ(o, "[{\"ts\":1700000000000,\"values\":{\"a\":1}},"
                   "{\"ts\":1700000000000,\"values\":{\"b\":\"x,]}\\\"\"}}]");
    free(o);
    /* Mixed: only the entry without ts wrapped. */
    REQUIRE(tel("[{\"ts\":1,\"values\":{\"a\":0.10}},{\"b\":false}]", &o, err) == 0);
    CHECK_STREQ(o, "[{\"ts\":1,\"values\":{\"a\":0.10}},"
                   "{\"ts\":1700000000000,\"values\":{\"b\":false}}]");
    free(o);
    /* Every entry with ts: unchanged. */
    const char *all = "[ {\"ts\":1,\"values\":{\"a\":1}} , {\"ts\":2,\"values\":{\"a\":2}} ]";
    REQUIRE(tel(all, &o, err) == 0);
    CHECK_STREQ(o, all);
    free(o);
    /* JSON values (objects, arrays), unicode escapes, nested brackets in strings. */
    const char *js = "{\"j\":{\"n\":{\"m\":[1,{\"z\":\"]\"}]}},\"u\":\"\\u00e9\",\"arr\":[true]}";
    REQUIRE(tel(js, &o, err) == 0);
    CHECK(strncmp(o, "{\"ts\":1700000000000,\"values\":", 29) == 0);
    CHECK(strlen(o) == 29 + strlen(js) + 1 && memcmp(o + 29, js, strlen(js)) == 0);
    free(o);
    /* "values" without ts is an ordinary JSON-valued key. */
    REQUIRE(tel("{\"values\":{\"a\":1}}", &o, err) == 0);
    CHECK_STREQ(o, "{\"ts\":1700000000000,\"values\":{\"values\":{\"a\":1}}}");
    free(o);
}

static void expect_bad(const char *body, const char *needle)
{
    char *o = NULL, err[256] = "";
    int rc = tel(body, &o, err);
    CHECK(rc == -EINVAL);
    CHECK(o == NULL);
    if (rc == -EINVAL && !strstr(err, needle))
        fprintf(stderr, "  body %s: message \"%s\" lacks \"%s\"\n", body, err, needle);
    CHECK(strstr(err, needle) != NULL);
    free(o);
}

static void test_telemetry_bad(void)
{
    expect_bad("", "telemetry: invalid JSON");
    expect_bad("{\"a\":", "invalid JSON");
    expect_bad("{\"a\":1} x", "invalid JSON");
    expect_bad("\"str\"", "invalid JSON");
    expect_bad("42", "invalid JSON");
    expect_bad("{\"a\":1,\"a\":2}", "duplicate");
    expect_bad("{}", "telemetry: no values");
    expect_bad("[]", "telemetry: empty array");
    expect_bad("{\"a\":null}", "\"a\" is null");
    expect_bad("[{\"a\":1},5]", "telemetry entry 1: must be a JSON object, not a number");
    expect_bad("[{\"a\":1},{\"b\":2},{\"ts\":\"x\",\"values\":{}}]",
               "telemetry entry 2: \"ts\" must be an integer");
    expect_bad("{\"ts\":1.5,\"values\":{\"a\":1}}", "\"ts\" must be an integer");
    expect_bad("{\"ts\":-1,\"values\":{\"a\":1}}", "not negative");
    expect_bad("{\"ts\":1}", "\"ts\" without \"values\"");
    expect_bad("{\"ts\":1,\"values\":[1]}", "\"values\" must be a JSON object, not an array");
    expect_bad("{\"ts\":1,\"values\":{}}", "telemetry: values: no values");
    expect_bad("{\"ts\":1,\"values\":{\"a\":1},\"x\":2}", "unexpected key \"x\"");
    expect_bad("{\"\":1}", "empty key");
    expect_bad("{\"a\":\"\\u0000\"}", "invalid JSON");
    expect_bad("{\"a\":\"\xff\"}", "invalid JSON");
    expect_bad("{\"a\":123456789012345678901234567890}", "invalid JSON");
    /* Deep nesting is refused by jansson, not a crash. */
    char deep[5000];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "{\"a\":");
    for (int i = 0; i < 2100; i++)
        deep[n++] = '[';
    deep[n] = '\0';
    expect_bad(deep, "invalid JSON");
}

static void test_attributes(void)
{
    char err[256];
    const char *ok = "{\"firmware\":\"1.2\",\"on\":true,\"n\":1.0,\"cfg\":{\"a\":[1]}}";
    CHECK(device_api_attributes(ok, strlen(ok), err, sizeof(err)) == 0);
    CHECK(device_api_attributes("[{\"a\":1}]", 9, err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, "attributes: must be a JSON object, not an array") != NULL);
    CHECK(device_api_attributes("{}", 2, err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, "attributes: no values") != NULL);
    CHECK(device_api_attributes("{\"a\":null}", 10, err, sizeof(err)) == -EINVAL);
    CHECK(device_api_attributes("{\"a\":1", 6, err, sizeof(err)) == -EINVAL);
    CHECK(strstr(err, "attributes: invalid JSON") != NULL);
}

/* ------------------------------------------------------------ codec */

static void test_codec(void)
{
    uint8_t v[4];
    CHECK(mqtt_client_varint(v, 0) == 1 && v[0] == 0);
    CHECK(mqtt_client_varint(v, 127) == 1 && v[0] == 127);
    CHECK(mqtt_client_varint(v, 128) == 2 && v[0] == 0x80 && v[1] == 1);
    CHECK(mqtt_client_varint(v, 16383) == 2 && v[0] == 0xff && v[1] == 0x7f);
    CHECK(mqtt_client_varint(v, 268435455) == 4 && v[3] == 0x7f);

    uint8_t *b;
    size_t len;
    REQUIRE(mqtt_client_encode_connect("cid", 60, NULL, NULL, &b, &len) == 0);
    static const uint8_t want[] = {0x10, 15, 0,  4, 'M', 'Q', 'T', 'T', 4,
                                   0x02, 0,  60, 0, 3,   'c', 'i', 'd'};
    CHECK(len == sizeof(want) && memcmp(b, want, len) == 0);
    free(b);
    REQUIRE(mqtt_client_encode_connect("c", 30, "u", "pw", &b, &len) == 0);
    CHECK(b[9] == (0x02 | 0x80 | 0x40) && len == 2 + 10 + 3 + 3 + 4);
    CHECK(memcmp(b + len - 4, "\0\2pw", 4) == 0);
    free(b);
    CHECK(mqtt_client_encode_connect("c", 30, NULL, "pw", &b, &len) == -EINVAL);

    size_t off;
    REQUIRE(mqtt_client_encode_publish("a/b", "xyz", 3, 1, 0x1234, &b, &len, &off) == 0);
    static const uint8_t pub1[] = {0x32, 10, 0, 3, 'a', '/', 'b', 0x12, 0x34, 'x', 'y', 'z'};
    CHECK(len == sizeof(pub1) && memcmp(b, pub1, len) == 0 && off == 7);
    free(b);
    REQUIRE(mqtt_client_encode_publish("t", "", 0, 0, 0, &b, &len, &off) == 0);
    static const uint8_t pub0[] = {0x30, 3, 0, 1, 't'};
    CHECK(len == sizeof(pub0) && memcmp(b, pub0, len) == 0);
    free(b);
    /* A 200-byte payload needs a two-byte length. */
    char big[200];
    memset(big, 'p', sizeof(big));
    REQUIRE(mqtt_client_encode_publish("t", big, sizeof(big), 1, 1, &b, &len, &off) == 0);
    CHECK(b[1] == ((2 + 1 + 2 + 200) % 128 | 0x80) && b[2] == 1 && len == 3 + 205);
    free(b);
    CHECK(mqtt_client_encode_publish("a/+", "x", 1, 0, 0, &b, &len, &off) == -EINVAL);
    CHECK(mqtt_client_encode_publish("a/#", "x", 1, 0, 0, &b, &len, &off) == -EINVAL);
    CHECK(mqtt_client_encode_publish("", "x", 1, 0, 0, &b, &len, &off) == -EINVAL);
    CHECK(mqtt_client_encode_publish("t", "x", 1, 2, 0, &b, &len, &off) == -EINVAL);
    CHECK(!mqtt_client_topic_ok("a\0b", 3));

    uint8_t type;
    const uint8_t *body;
    size_t bl;
    static const uint8_t puback[] = {0x40, 2, 0x12, 0x34, 0xd0};
    CHECK(mqtt_client_parse(puback, 1, 4096, &type, &body, &bl) == 0);
    CHECK(mqtt_client_parse(puback, 3, 4096, &type, &body, &bl) == 0);
    CHECK(mqtt_client_parse(puback, 5, 4096, &type, &body, &bl) == 4);
    CHECK(type == 0x40 && bl == 2 && body == puback + 2);
    static const uint8_t bad[] = {0x30, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK(mqtt_client_parse(bad, sizeof(bad), 1 << 30, &type, &body, &bl) == -EPROTO);
    static const uint8_t toolong[] = {0x30, 0x80, 0x80, 0x01};
    CHECK(mqtt_client_parse(toolong, sizeof(toolong), 4096, &type, &body, &bl) == -EPROTO);
    static const uint8_t partial[] = {0x30, 0x80};
    CHECK(mqtt_client_parse(partial, sizeof(partial), 4096, &type, &body, &bl) == 0);
}

/* ------------------------------------------------- a fake broker */

enum fb_mode { FB_ACK, FB_NO_ACK, FB_CLOSE_ON_PUBLISH, FB_REFUSE, FB_ACK_REVERSED };

struct fb_client {
    uv_tcp_t tcp;
    struct fake_broker *fb;
    uint8_t buf[65536];
    size_t len;
    struct fb_client *next;
    uint16_t held[16]; /* FB_ACK_REVERSED: pids held back */
    int nheld;
};

struct fake_broker {
    uv_loop_t *loop;
    uv_tcp_t srv;
    int port;
    enum fb_mode mode;
    int connects;
    int publishes;
    int pingreqs;
    int qos_seen[2];
    char last_topic[128];
    char last_payload[256];
    uint16_t pids[1024];
    int npids;
    struct fb_client *clients;
};

static void fb_closed(uv_handle_t *h)
{
    free(h->data);
}

static void fb_write(struct fb_client *c, const uint8_t *b, size_t n)
{
    uv_buf_t ub = uv_buf_init((char *)b, (unsigned)n);
    uv_try_write((uv_stream_t *)&c->tcp, &ub, 1);
}

static void fb_drop(struct fb_client *c)
{
    struct fake_broker *fb = c->fb;
    for (struct fb_client **pp = &fb->clients; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, fb_closed);
}

static void fb_alloc(uv_handle_t *h, size_t s, uv_buf_t *b)
{
    struct fb_client *c = h->data;
    (void)s;
    *b = uv_buf_init((char *)c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void fb_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct fb_client *c = s->data;
    struct fake_broker *fb = c->fb;
    (void)buf;
    if (n < 0) {
        fb_drop(c);
        return;
    }
    c->len += (size_t)n;
    size_t off = 0;
    for (;;) {
        uint8_t type;
        const uint8_t *body;
        size_t bl;
        long pl = mqtt_client_parse(c->buf + off, c->len - off, sizeof(c->buf), &type, &body, &bl);
        if (pl <= 0)
            break;
        off += (size_t)pl;
        if ((type >> 4) == 1) {
            fb->connects++;
            static const uint8_t ok[] = {0x20, 2, 0, 0}, no[] = {0x20, 2, 0, 5};
            fb_write(c, fb->mode == FB_REFUSE ? no : ok, 4);
        } else if ((type >> 4) == 3) {
            int qos = (type >> 1) & 3;
            fb->publishes++;
            fb->qos_seen[qos & 1]++;
            size_t tl = (size_t)(body[0] << 8 | body[1]);
            snprintf(fb->last_topic, sizeof(fb->last_topic), "%.*s", (int)tl, body + 2);
            size_t po = 2 + tl + (qos ? 2 : 0);
            snprintf(fb->last_payload, sizeof(fb->last_payload), "%.*s", (int)(bl - po), body + po);
            if (fb->mode == FB_CLOSE_ON_PUBLISH) {
                fb_drop(c);
                return;
            }
            if (qos == 1) {
                uint16_t pid = (uint16_t)(body[2 + tl] << 8 | body[3 + tl]);
                if (fb->npids < 1024)
                    fb->pids[fb->npids++] = pid;
                uint8_t ack[4] = {0x40, 2, (uint8_t)(pid >> 8), (uint8_t)pid};
                if (fb->mode == FB_ACK)
                    fb_write(c, ack, 4);
                if (fb->mode == FB_ACK_REVERSED) {
                    c->held[c->nheld++] = pid;
                    if (c->nheld == 3) { /* acknowledge 3 publishes in reverse order */
                        while (c->nheld > 0) {
                            uint16_t h = c->held[--c->nheld];
                            uint8_t a[4] = {0x40, 2, (uint8_t)(h >> 8), (uint8_t)h};
                            fb_write(c, a, 4);
                        }
                    }
                }
            }
        } else if ((type >> 4) == 12) {
            fb->pingreqs++;
            static const uint8_t pr[] = {0xd0, 0};
            fb_write(c, pr, 2);
        }
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

static void fb_conn(uv_stream_t *srv, int status)
{
    struct fake_broker *fb = srv->data;
    if (status < 0)
        return;
    struct fb_client *c = calloc(1, sizeof(*c));
    c->fb = fb;
    uv_tcp_init(fb->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0) {
        uv_close((uv_handle_t *)&c->tcp, fb_closed);
        return;
    }
    c->next = fb->clients;
    fb->clients = c;
    uv_read_start((uv_stream_t *)&c->tcp, fb_alloc, fb_read);
}

static int fb_start(struct fake_broker *fb, uv_loop_t *loop, int port)
{
    memset(fb, 0, sizeof(*fb));
    fb->loop = loop;
    uv_tcp_init(loop, &fb->srv);
    fb->srv.data = fb;
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", port, &sa);
    if (uv_tcp_bind(&fb->srv, (struct sockaddr *)&sa, 0) < 0 ||
        uv_listen((uv_stream_t *)&fb->srv, 64, fb_conn) < 0)
        return -1;
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    uv_tcp_getsockname(&fb->srv, (struct sockaddr *)&ss, &sl);
    fb->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

static void fb_noop_close(uv_handle_t *h)
{
    (void)h;
}

/* Stops listening and drops every client. */
static void fb_stop(struct fake_broker *fb)
{
    while (fb->clients)
        fb_drop(fb->clients);
    if (!uv_is_closing((uv_handle_t *)&fb->srv))
        uv_close((uv_handle_t *)&fb->srv, fb_noop_close);
}

/* ----------------------------------------------- client behaviour */

struct result {
    int done;
    int status;
    uint64_t at;
};

static uv_loop_t *g_loop;

static void on_result(void *ud, int status)
{
    struct result *r = ud;
    r->done++;
    r->status = status;
    r->at = uv_now(g_loop);
}

/* Runs the loop until every result in rs is done or ms passed. */
static void run_until(struct result *rs, int n, uint64_t ms)
{
    uint64_t end = uv_now(g_loop) + ms;
    for (;;) {
        int all = 1;
        for (int i = 0; i < n; i++)
            all = all && rs[i].done;
        if (all || uv_now(g_loop) >= end)
            return;
        uv_run(g_loop, UV_RUN_ONCE);
        uv_update_time(g_loop);
    }
}

static void noop_timer(uv_timer_t *t)
{
    (void)t;
}

static void run_for(uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(g_loop, &t);
    uv_timer_start(&t, noop_timer, ms, 0);
    uint64_t end = uv_now(g_loop) + ms;
    while (uv_now(g_loop) < end) {
        uv_run(g_loop, UV_RUN_ONCE);
        uv_update_time(g_loop);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(g_loop, UV_RUN_NOWAIT);
}

static struct mqtt_publish pubmsg(int port, const char *payload, int qos, uint32_t timeout)
{
    struct mqtt_publish m = {.host = "127.0.0.1",
                             .port = (uint16_t)port,
                             .topic = "t/1",
                             .payload = payload,
                             .len = strlen(payload),
                             .qos = qos,
                             .timeout_ms = timeout};
    return m;
}

static struct fake_broker *g_fb;
static void fb_stop(struct fake_broker *fb);

/* Closes the client, stops the fake broker, and runs the loop dry: every
 * handle must be gone within a second (no timer or socket left behind). */
static int close_and_drain(struct mqtt_client *c)
{
    mqtt_client_close(c);
    if (g_fb)
        fb_stop(g_fb);
    g_fb = NULL;
    for (int i = 0; i < 200; i++) {
        if (uv_run(g_loop, UV_RUN_NOWAIT) == 0)
            return 1;
        uv_sleep(5);
    }
    return 0;
}

static void test_client_qos1(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    g_loop = &loop;
    struct fake_broker fb;
    REQUIRE(fb_start(&fb, &loop, 0) == 0);
    struct mqtt_client *c = mqtt_client_new(&loop, 3);
    REQUIRE(c);
    struct mqtt_pool_opts po = {.client_id_prefix = "t-", .pool_size = 2};
    enum { N = 200 };
    static struct result rs[N];
    memset(rs, 0, sizeof(rs));
    char payload[32];
    for (int i = 0; i < N; i++) {
        snprintf(payload, sizeof(payload), "{\"i\":%d}", i);
        struct mqtt_publish m = pubmsg(fb.port, payload, 1, 5000);
        REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &rs[i], NULL) == 0);
        CHECK(rs[i].done == 0); /* never from inside publish */
    }
    run_until(rs, N, 5000);
    int ok = 0;
    for (int i = 0; i < N; i++)
        ok += rs[i].done == 1 && rs[i].status == 0;
    CHECK(ok == N);
    CHECK(fb.publishes == N && fb.qos_seen[1] == N);
    CHECK(fb.connects == 2); /* the pool's two connections */
    CHECK_STREQ(fb.last_topic, "t/1");
    /* Identifiers are never 0. */
    int zero = 0;
    for (int i = 0; i < fb.npids; i++)
        zero += fb.pids[i] == 0;
    CHECK(zero == 0);
    struct mqtt_client_stats st;
    mqtt_client_stats(c, &st);
    CHECK(st.published == N && st.failed == 0 && st.pools == 1 && st.ready == 2);
    /* A second pool (other options) for the same node. */
    struct mqtt_pool_opts po1 = {.client_id_prefix = "u-", .pool_size = 1};
    struct result r1 = {0};
    struct mqtt_publish m = pubmsg(fb.port, "zz", 0, 5000);
    REQUIRE(mqtt_client_publish(c, &po1, &m, on_result, &r1, NULL) == 0);
    run_until(&r1, 1, 3000);
    CHECK(r1.done == 1 && r1.status == 0);
    if (r1.status)
        fprintf(stderr, "  qos 0 publish: status %d\n", r1.status);
    run_for(100); /* QoS 0 is done once written: let the broker read it */
    CHECK(fb.connects == 3 && fb.qos_seen[0] == 1);
    CHECK_STREQ(fb.last_payload, "zz");
    g_fb = &fb;
    CHECK(close_and_drain(c));
    CHECK(uv_loop_close(&loop) == 0);
}

static void test_client_reordered_acks(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    g_loop = &loop;
    struct fake_broker fb;
    REQUIRE(fb_start(&fb, &loop, 0) == 0);
    fb.mode = FB_ACK_REVERSED;
    struct mqtt_client *c = mqtt_client_new(&loop, 0);
    struct mqtt_pool_opts po = {.pool_size = 1};
    struct result rs[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        struct mqtt_publish m = pubmsg(fb.port, "x", 1, 3000);
        REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &rs[i], NULL) == 0);
    }
    run_until(rs, 3, 3000);
    for (int i = 0; i < 3; i++)
        CHECK(rs[i].done == 1 && rs[i].status == 0);
    CHECK(fb.npids == 3 && fb.pids[0] != fb.pids[1] && fb.pids[1] != fb.pids[2]);
    g_fb = &fb;
    CHECK(close_and_drain(c));
    CHECK(uv_loop_close(&loop) == 0);
}

static void test_client_failures(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    g_loop = &loop;
    /* A port nobody listens on: a free one from a closed listener. */
    struct fake_broker tmp;
    REQUIRE(fb_start(&tmp, &loop, 0) == 0);
    int dead = tmp.port;
    fb_stop(&tmp);
    uv_run(&loop, UV_RUN_DEFAULT);

    struct mqtt_client *c = mqtt_client_new(&loop, 0);
    struct mqtt_pool_opts po = {.pool_size = 2};
    struct result r = {0};
    struct mqtt_publish m = pubmsg(dead, "x", 1, 3000);
    uint64_t t0 = uv_now(&loop);
    REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &r, NULL) == 0);
    run_until(&r, 1, 4000);
    CHECK(r.done == 1 && r.status == -ENOTCONN);
    CHECK(r.at - t0 < 1000); /* refused: fails fast, not at the timeout */
    /* In the backoff: fails at once too. */
    struct result r2 = {0};
    REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &r2, NULL) == 0);
    CHECK(r2.done == 0);
    run_until(&r2, 1, 4000);
    CHECK(r2.done == 1 && r2.status == -ENOTCONN);

    /* The broker comes up on that port: the pool reconnects by itself
     * (backoff <= 3.2 s) and publishes go through again. */
    struct fake_broker fb;
    REQUIRE(fb_start(&fb, &loop, dead) == 0);
    struct mqtt_client_stats st;
    uint64_t end = uv_now(&loop) + 5000;
    do {
        run_for(50);
        mqtt_client_stats(c, &st);
    } while (st.ready < 2 && uv_now(&loop) < end);
    CHECK(st.ready == 2);
    struct result r3 = {0};
    REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &r3, NULL) == 0);
    run_until(&r3, 1, 3000);
    CHECK(r3.done == 1 && r3.status == 0);

    /* No PUBACK: times out at its timeout, not before. */
    fb.mode = FB_NO_ACK;
    struct result r4 = {0};
    struct mqtt_publish m4 = pubmsg(fb.port, "y", 1, 300);
    t0 = uv_now(&loop);
    REQUIRE(mqtt_client_publish(c, &po, &m4, on_result, &r4, NULL) == 0);
    run_until(&r4, 1, 3000);
    CHECK(r4.done == 1 && r4.status == -ETIMEDOUT);
    CHECK(r4.at - t0 >= 300 && r4.at - t0 < 1500);
    CHECK(fb.publishes == 2);

    /* Connection lost after the PUBLISH, before its PUBACK. */
    fb.mode = FB_CLOSE_ON_PUBLISH;
    struct result r5 = {0};
    struct mqtt_publish m5 = pubmsg(fb.port, "z", 1, 3000);
    REQUIRE(mqtt_client_publish(c, &po, &m5, on_result, &r5, NULL) == 0);
    run_until(&r5, 1, 3000);
    CHECK(r5.done == 1 && r5.status == -ECONNRESET);

    /* A cancelled publish's callback never runs. */
    fb.mode = FB_NO_ACK;
    struct result r6 = {0};
    struct mqtt_pub *h = NULL;
    struct mqtt_publish m6 = pubmsg(fb.port, "w", 1, 200);
    REQUIRE(mqtt_client_publish(c, &po, &m6, on_result, &r6, &h) == 0);
    mqtt_pub_cancel(h);
    run_for(400);
    CHECK(r6.done == 0);

    /* Close with a publish pending: -ECANCELED, and the loop ends. */
    struct result r7 = {0};
    REQUIRE(mqtt_client_publish(c, &po, &m6, on_result, &r7, NULL) == 0);
    run_for(50);
    g_fb = &fb;
    CHECK(close_and_drain(c));
    CHECK(r7.done == 1 && r7.status == -ECANCELED);
    CHECK(uv_loop_close(&loop) == 0);
}

static void test_client_refused_and_keepalive(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    g_loop = &loop;
    struct fake_broker fb;
    REQUIRE(fb_start(&fb, &loop, 0) == 0);
    fb.mode = FB_REFUSE;
    struct mqtt_client *c = mqtt_client_new(&loop, 0);
    struct mqtt_pool_opts po = {.pool_size = 1, .keepalive_s = 2};
    struct result r = {0};
    struct mqtt_publish m = pubmsg(fb.port, "x", 1, 2000);
    REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &r, NULL) == 0);
    run_until(&r, 1, 3000);
    CHECK(r.done == 1 && r.status == -ENOTCONN); /* CONNACK refusal: never sent */
    CHECK(fb.publishes == 0);
    /* Accepting now: after the backoff, a publish connects and keepalive
     * sends PINGREQ when idle for keepalive/2. */
    fb.mode = FB_ACK;
    run_for(450);
    struct result r2 = {0};
    REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &r2, NULL) == 0);
    run_until(&r2, 1, 3000);
    CHECK(r2.done == 1 && r2.status == 0);
    run_for(2200);
    CHECK(fb.pingreqs >= 1);
    g_fb = &fb;
    CHECK(close_and_drain(c));
    CHECK(uv_loop_close(&loop) == 0);
}

/* A broker that never acknowledges: 2000 publishes, 1024 in flight (the
 * per-connection cap) and the rest queued, all time out together. */
static void test_client_mass_timeout(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    g_loop = &loop;
    struct fake_broker fb;
    REQUIRE(fb_start(&fb, &loop, 0) == 0);
    fb.mode = FB_NO_ACK;
    struct mqtt_client *c = mqtt_client_new(&loop, 0);
    struct mqtt_pool_opts po = {.pool_size = 1};
    enum { N = 2000 };
    static struct result rs[N];
    memset(rs, 0, sizeof(rs));
    for (int i = 0; i < N; i++) {
        struct mqtt_publish m = pubmsg(fb.port, "x", 1, 400);
        REQUIRE(mqtt_client_publish(c, &po, &m, on_result, &rs[i], NULL) == 0);
    }
    run_until(rs, N, 3000);
    int timedout = 0;
    for (int i = 0; i < N; i++)
        timedout += rs[i].done == 1 && rs[i].status == -ETIMEDOUT;
    CHECK(timedout == N);
    CHECK(fb.publishes == MQTT_CLIENT_MAX_INFLIGHT);
    g_fb = &fb;
    CHECK(close_and_drain(c));
    CHECK(uv_loop_close(&loop) == 0);
}

static void test_client_bad_args(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    g_loop = &loop;
    struct mqtt_client *c = mqtt_client_new(&loop, 0);
    struct mqtt_pool_opts po = {0};
    struct result r = {0};
    struct mqtt_publish m = pubmsg(1883, "x", 1, 100);
    m.topic = "a/#";
    CHECK(mqtt_client_publish(c, &po, &m, on_result, &r, NULL) == -EINVAL);
    m.topic = "a";
    m.qos = 2;
    CHECK(mqtt_client_publish(c, &po, &m, on_result, &r, NULL) == -EINVAL);
    CHECK(r.done == 0);
    CHECK(close_and_drain(c));
    CHECK(uv_loop_close(&loop) == 0);
}

int main(void)
{
    RUN(test_paths);
    RUN(test_topic);
    RUN(test_telemetry_forms);
    RUN(test_telemetry_bad);
    RUN(test_attributes);
    RUN(test_codec);
    RUN(test_client_qos1);
    RUN(test_client_reordered_acks);
    RUN(test_client_failures);
    RUN(test_client_refused_and_keepalive);
    RUN(test_client_mass_timeout);
    RUN(test_client_bad_args);
    return check_summary();
}
