/*
 * fuzz_device_api: libFuzzer target for what the device-api plugin and its
 * MQTT publisher parse from outside: HTTP bodies (device_api_telemetry,
 * device_api_attributes) and the broker's packets (mqtt_client_parse).
 *
 * The first byte picks the parser; the rest is the input. Checked:
 *  - packets: any split of the input gives "need more" or the same packet
 *    as the whole; a packet lies inside the input; each prefix is parsed
 *    from a buffer of exactly its size (ASan catches reads past it);
 *  - telemetry: an accepted body's payload is valid JSON; a body whose
 *    every entry has "ts" is published as is; otherwise every entry of the
 *    payload equals (json_equal) the posted entry, or is
 *    {"ts":NOW,"values":<the posted entry>} for an entry without "ts" --
 *    so copying the entries' bytes (never re-serialising) loses nothing;
 *  - attributes: never crashes; an accepted body is a JSON object.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt_client.h"
#include "plugins/device_api.h"

#define NOW 1700000000000LL

static void check(int ok)
{
    if (!ok)
        abort();
}

static void fuzz_packets(const uint8_t *d, size_t n)
{
    uint8_t type;
    const uint8_t *body;
    size_t bl;
    long whole = mqtt_client_parse(d, n, 4096, &type, &body, &bl);
    if (whole > 0)
        check((size_t)whole <= n && body >= d && body + bl == d + whole);
    size_t step = n > 200 ? n / 100 : 1;
    for (size_t k = 0; k < n; k += step) {
        uint8_t *p = malloc(k ? k : 1);
        memcpy(p, d, k);
        uint8_t t2;
        const uint8_t *b2;
        size_t l2;
        long r = mqtt_client_parse(p, k, 4096, &t2, &b2, &l2);
        if (r > 0)
            check(r == whole && t2 == type && l2 == bl);
        else if (r < 0)
            check(whole < 0);
        free(p);
    }
}

static void check_entry(const json_t *posted, const json_t *published)
{
    if (json_object_get(posted, "ts")) {
        check(json_equal(posted, published));
        return;
    }
    check(json_object_size(published) == 2);
    const json_t *ts = json_object_get(published, "ts");
    check(json_is_integer(ts) && json_integer_value(ts) == NOW);
    check(json_equal(json_object_get(published, "values"), posted));
}

static void fuzz_telemetry(const char *d, size_t n)
{
    char *out = NULL, err[256];
    size_t ol = 0;
    int rc = device_api_telemetry(d, n, NOW, &out, &ol, err, sizeof(err));
    if (rc != 0) {
        check(out == NULL && strlen(err) > 0);
        return;
    }
    json_t *in = json_loadb(d, n, JSON_REJECT_DUPLICATES, NULL);
    json_t *pub = json_loadb(out, ol, JSON_REJECT_DUPLICATES, NULL);
    check(in != NULL && pub != NULL);
    if (json_is_array(in)) {
        check(json_is_array(pub) && json_array_size(pub) == json_array_size(in));
        int all_ts = 1;
        for (size_t i = 0; i < json_array_size(in); i++) {
            check_entry(json_array_get(in, i), json_array_get(pub, i));
            all_ts = all_ts && json_object_get(json_array_get(in, i), "ts") != NULL;
        }
        if (all_ts)
            check(ol == n && memcmp(out, d, n) == 0);
    } else {
        check_entry(in, pub);
        if (json_object_get(in, "ts"))
            check(ol == n && memcmp(out, d, n) == 0);
    }
    json_decref(in);
    json_decref(pub);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    char err[256];
    switch (data[0] % 3) {
    case 0:
        fuzz_packets(d, n);
        break;
    case 1:
        fuzz_telemetry((const char *)d, n);
        break;
    default:
        if (device_api_attributes((const char *)d, n, err, sizeof(err)) == 0) {
            json_t *j = json_loadb((const char *)d, n, 0, NULL);
            check(json_is_object(j));
            json_decref(j);
        }
        break;
    }
    return 0;
}
