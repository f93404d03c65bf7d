/*
 * base64: RFC 4648 base64, as etcd's JSON gateway and HTTP Basic
 * authentication use it.
 */
#ifndef AIRGW_BASE64_H
#define AIRGW_BASE64_H

#include <stddef.h>

/* Bytes base64_decode may write for len input characters (with room for
 * a terminating NUL). */
#define BASE64_DECODED_MAX(len) ((len) / 4 * 3 + 3)

enum base64_mode {
    /* Standard alphabet only; '=' padding is optional but only at the end;
     * a dangling 6-bit group is an error. */
    BASE64_STRICT,
    /* Also the URL-safe '-' and '_'; decoding stops at the first '=', and
     * a dangling 6-bit group is dropped. */
    BASE64_LENIENT,
};

/* Standard base64 with padding of n bytes: a NUL-terminated malloc'd
 * string, or NULL when out of memory. */
char *base64_encode(const void *src, size_t n);

/* Decodes len characters of in into out (BASE64_DECODED_MAX(len) bytes;
 * not NUL-terminated). Returns the decoded length, or -1 on bad input. */
long base64_decode(const char *in, size_t len, unsigned char *out, enum base64_mode mode);

#endif
