/*
 * fuzz_cfgstream: libFuzzer target for the config stream decoder.
 *
 * Input: two control bytes, then the byte stream. The control bytes choose
 * how the stream is cut into feeds (a == 0: one feed; otherwise a pseudo-random
 * sequence of 1..a byte chunks seeded by a and b), so splits at every offset
 * get explored. Every decoded message is re-encoded twice, from its body with
 * cfgs_encode and from its typed members with the type's own encoder, and
 * both must decode again to the same message. The decoder's buffer must stay
 * within its contract: one maximal frame plus the last feed.
 */
#include "cfgstream.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FATAL(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            abort();                                                                               \
    } while (0)

static int decode_frame(const char *f, size_t n, struct cfgs_msg *m)
{
    struct cfgs_decoder d;
    cfgs_decoder_init(&d);
    FATAL(cfgs_decoder_feed(&d, f, n) == 0);
    int rc = cfgs_decoder_next(&d, m, NULL, 0);
    if (rc == 1) {
        struct cfgs_msg extra;
        FATAL(cfgs_decoder_next(&d, &extra, NULL, 0) == 0);
    }
    cfgs_decoder_free(&d);
    return rc;
}

static int streq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void same_msg(const struct cfgs_msg *a, const struct cfgs_msg *b)
{
    FATAL(a->type == b->type);
    FATAL(a->revision == b->revision);
    FATAL(a->create_revision == b->create_revision);
    FATAL(a->mod_revision == b->mod_revision);
    FATAL(a->count == b->count);
    FATAL(a->ts == b->ts);
    FATAL(a->proto == b->proto);
    FATAL(streq(a->key, b->key));
    FATAL(streq(a->node_id, b->node_id));
    FATAL(streq(a->message, b->message));
    FATAL((!a->value && !b->value) || json_equal(a->value, b->value));
}

/* Re-encodes m from its typed members; returns the encoder's result. */
static int encode_typed(const struct cfgs_msg *m, char **f, size_t *n)
{
    switch (m->type) {
    case CFGS_HELLO:
        return cfgs_encode_hello(m->node_id, m->revision, m->hostname, f, n);
    case CFGS_PUT:
        return cfgs_encode_put(m->revision, m->key, m->value, m->create_revision, m->mod_revision,
                               f, n);
    case CFGS_DELETE:
        return cfgs_encode_delete(m->revision, m->key, f, n);
    case CFGS_SNAPSHOT_BEGIN:
    case CFGS_RESUME:
    case CFGS_ACK:
        return cfgs_encode_rev(m->type, m->revision, f, n);
    case CFGS_SNAPSHOT_END:
        return cfgs_encode_snapshot_end(m->revision, m->count, f, n);
    case CFGS_PING:
    case CFGS_PONG:
        return cfgs_encode_ping(m->type, m->ts, f, n);
    case CFGS_ERROR:
        return cfgs_encode_error(m->message, f, n);
    }
    abort();
}

static void check_reencode(const struct cfgs_msg *m)
{
    char *f;
    size_t n;
    struct cfgs_msg again;

    int rc = cfgs_encode(m->type, m->body, &f, &n);
    if (rc == -EMSGSIZE)
        return; /* compact output can be longer than the input (1E2 -> 100.0) */
    FATAL(rc == 0);
    FATAL(decode_frame(f, n, &again) == 1);
    FATAL(json_equal(again.body, m->body));
    same_msg(m, &again);
    cfgs_msg_free(&again);
    free(f);

    rc = encode_typed(m, &f, &n);
    if (rc == -EMSGSIZE)
        return;
    FATAL(rc == 0);
    FATAL(decode_frame(f, n, &again) == 1);
    if (m->type == CFGS_HELLO) {
        /* the typed encoder speaks our version and adds ours */
        FATAL(again.proto == CFGS_PROTO_VERSION);
        again.proto = m->proto;
    }
    same_msg(m, &again);
    FATAL(streq(again.hostname, m->hostname));
    cfgs_msg_free(&again);
    free(f);

    if (m->type == CFGS_PUT) {
        /* the raw path must make the same bytes as the json path */
        char *text = json_dumps(m->value, JSON_COMPACT);
        char *f2, *f3;
        size_t n2, n3;
        FATAL(text);
        int r2 = cfgs_encode_put(m->revision, m->key, m->value, m->create_revision, m->mod_revision,
                                 &f2, &n2);
        int r3 = cfgs_encode_put_raw(m->revision, m->key, text, m->create_revision, m->mod_revision,
                                     &f3, &n3);
        FATAL(r2 == 0 && r3 == 0);
        FATAL(n2 == n3 && memcmp(f2, f3, n2) == 0);
        free(f2);
        free(f3);
        free(text);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    unsigned a = data[0];
    uint32_t x = (uint32_t)data[0] << 8 | data[1];
    data += 2;
    size -= 2;

    struct cfgs_decoder d;
    cfgs_decoder_init(&d);
    int dead = 0;
    size_t o = 0;
    while (o < size && !dead) {
        size_t chunk = size - o;
        if (a) {
            x = x * 1103515245u + 12345u;
            size_t c = 1 + (x >> 16) % a;
            if (c < chunk)
                chunk = c;
        }
        FATAL(cfgs_decoder_feed(&d, (const char *)data + o, chunk) == 0);
        FATAL(d.cap <= CFGS_HEADER_LEN + CFGS_MAX_FRAME + chunk);
        FATAL(d.off <= d.len && d.len <= d.cap);
        o += chunk;

        for (;;) {
            struct cfgs_msg m;
            char err[256];
            int rc = cfgs_decoder_next(&d, &m, err, sizeof(err));
            if (rc == 0)
                break;
            if (rc < 0) {
                FATAL(rc == -EPROTO || rc == -EMSGSIZE);
                FATAL(err[0] != 0 && memchr(err, 0, sizeof(err)));
                struct cfgs_msg m2;
                FATAL(cfgs_decoder_next(&d, &m2, NULL, 0) == rc); /* sticky */
                FATAL(m2.body == NULL);
                dead = 1;
                break;
            }
            FATAL(rc == 1 && json_is_object(m.body));
            check_reencode(&m);
            cfgs_msg_free(&m);
        }
    }
    cfgs_decoder_free(&d);
    return 0;
}
