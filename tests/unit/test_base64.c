/*
 * Unit tests for common/base64.c: encoding (etcd's gateway) and decoding,
 * strict (HTTP Basic credentials) and lenient (etcd's answers).
 */
#include "base64.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

/* Decodes s; the result NUL-terminated in out (static), or NULL on -1. */
static const char *dec(const char *s, enum base64_mode mode)
{
    static unsigned char out[256];
    size_t len = strlen(s);
    if (BASE64_DECODED_MAX(len) > sizeof(out))
        return NULL;
    long n = base64_decode(s, len, out, mode);
    if (n < 0)
        return NULL;
    out[n] = '\0';
    return (const char *)out;
}

static void test_encode(void)
{
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *want[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        char *b = base64_encode(in[i], strlen(in[i]));
        REQUIRE(b);
        CHECK_STREQ(b, want[i]);
        free(b);
    }
    /* Bytes with the high bit set and a NUL: "+" and "/" of the alphabet. */
    char *b = base64_encode("\xfb\xff\x00", 3);
    REQUIRE(b);
    CHECK_STREQ(b, "+/8A");
    free(b);
}

static void test_round_trip(void)
{
    unsigned char in[256], out[BASE64_DECODED_MAX(344)];
    for (int i = 0; i < 256; i++)
        in[i] = (unsigned char)(255 - i);
    for (size_t n = 0; n <= sizeof(in); n += 17) {
        char *b = base64_encode(in, n);
        REQUIRE(b);
        CHECK(strlen(b) == (n + 2) / 3 * 4);
        for (int mode = BASE64_STRICT; mode <= BASE64_LENIENT; mode++) {
            long got = base64_decode(b, strlen(b), out, (enum base64_mode)mode);
            CHECK(got == (long)n);
            CHECK(got == (long)n && memcmp(in, out, n) == 0);
        }
        free(b);
    }
}

static void test_strict(void)
{
    CHECK_STREQ(dec("dXNlcjpwYXNz", BASE64_STRICT), "user:pass");
    CHECK_STREQ(dec("Zm9vYg==", BASE64_STRICT), "foob");
    CHECK_STREQ(dec("Zm9vYg", BASE64_STRICT), "foob"); /* padding is optional */
    CHECK_STREQ(dec("", BASE64_STRICT), "");
    CHECK(dec("Zm9vY", BASE64_STRICT) == NULL);     /* a dangling 6-bit group */
    CHECK(dec("Zm=9v", BASE64_STRICT) == NULL);     /* padding inside */
    CHECK(dec("Zm9v-_", BASE64_STRICT) == NULL);    /* the URL-safe alphabet */
    CHECK(dec("Zm9v Yg==", BASE64_STRICT) == NULL); /* blanks */
    CHECK(dec("Zm9v\x80", BASE64_STRICT) == NULL);
}

static void test_lenient(void)
{
    CHECK_STREQ(dec("Zm9vYg==", BASE64_LENIENT), "foob");
    CHECK_STREQ(dec("Zm9vYg", BASE64_LENIENT), "foob");
    CHECK_STREQ(dec("Zm9vYg==Zm9v", BASE64_LENIENT), "foob"); /* stops at '=' */
    CHECK_STREQ(dec("-_8A", BASE64_LENIENT), "\xfb\xff");     /* URL-safe; NUL last */
    CHECK_STREQ(dec("Zm9vY", BASE64_LENIENT), "foo");         /* dangling group dropped */
    CHECK(dec("Zm9v Yg==", BASE64_LENIENT) == NULL);
    CHECK(dec("Zm9v*", BASE64_LENIENT) == NULL);
}

int main(void)
{
    RUN(test_encode);
    RUN(test_round_trip);
    RUN(test_strict);
    RUN(test_lenient);
    return check_summary();
}
