#include "base64.h"

#include <stdint.h>
#include <stdlib.h>

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *base64_encode(const void *src, size_t n)
{
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    const unsigned char *s = src;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        *o++ = b64chars[s[i] >> 2];
        *o++ = b64chars[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        *o++ = b64chars[((s[i + 1] & 15) << 2) | (s[i + 2] >> 6)];
        *o++ = b64chars[s[i + 2] & 63];
    }
    if (i < n) {
        *o++ = b64chars[s[i] >> 2];
        if (i + 1 < n) {
            *o++ = b64chars[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
            *o++ = b64chars[(s[i + 1] & 15) << 2];
        } else {
            *o++ = b64chars[(s[i] & 3) << 4];
            *o++ = '=';
        }
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int b64_val(unsigned char c, enum base64_mode mode)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || (c == '-' && mode == BASE64_LENIENT))
        return 62;
    if (c == '/' || (c == '_' && mode == BASE64_LENIENT))
        return 63;
    return -1;
}

long base64_decode(const char *in, size_t len, unsigned char *out, enum base64_mode mode)
{
    if (mode == BASE64_STRICT) {
        while (len > 0 && in[len - 1] == '=')
            len--;
        if (len % 4 == 1)
            return -1;
    }
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '=' && mode == BASE64_LENIENT)
            break;
        int v = b64_val((unsigned char)in[i], mode);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (long)o;
}
