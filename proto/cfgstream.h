/*
 * cfgstream: the control plane -> data plane configuration stream protocol
 * (spec: proto/PROTOCOL.md). One encoder and one decoder, used by both sides.
 *
 * A frame is a 4-byte big-endian length L, then L bytes: one type byte and a
 * UTF-8 JSON object (the body). 1 <= L <= CFGS_MAX_FRAME. Bodies are checked
 * for the members their type requires; unknown members are ignored so the
 * protocol can grow.
 *
 * Ownership: the decoder owns its buffer; a decoded cfgs_msg owns its json
 * body (free with cfgs_msg_free); string members point into that body.
 */
#ifndef AIRGW_CFGSTREAM_H
#define AIRGW_CFGSTREAM_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define CFGS_PROTO_VERSION 1
#define CFGS_MAX_FRAME (16u * 1024 * 1024) /* a resource value is at most 1.5 MiB */
#define CFGS_HEADER_LEN 4

enum cfgs_type {
    CFGS_HELLO = 1,          /* dp -> cp: {"proto":1,"node_id":S,"revision":N,"hostname":S?,"version":S?} */
    CFGS_SNAPSHOT_BEGIN = 2, /* cp -> dp: {"revision":N} a full snapshot at revision N follows */
    CFGS_PUT = 3,            /* cp -> dp: {"revision":N,"key":S,"value":{...},"create_revision":N,"mod_revision":N} */
    CFGS_DELETE = 4,         /* cp -> dp: {"revision":N,"key":S} */
    CFGS_SNAPSHOT_END = 5,   /* cp -> dp: {"revision":N,"count":N} the snapshot is complete */
    CFGS_RESUME = 6,         /* cp -> dp: {"revision":N} no snapshot; changes after N follow */
    CFGS_PING = 7,           /* both: {"ts":N} (ms since epoch) */
    CFGS_PONG = 8,           /* both: {"ts":N} echoes the ping's ts */
    CFGS_ACK = 9,            /* dp -> cp: {"revision":N} the data plane has applied N */
    CFGS_ERROR = 10,         /* both: {"message":S} the sender closes after it */
};

/* A decoded message. Members not used by the type are 0/NULL. */
struct cfgs_msg {
    enum cfgs_type type;
    int64_t revision;        /* HELLO, SNAPSHOT_*, PUT, DELETE, RESUME, ACK */
    int64_t create_revision; /* PUT */
    int64_t mod_revision;    /* PUT */
    int64_t count;           /* SNAPSHOT_END */
    int64_t ts;              /* PING, PONG */
    int proto;               /* HELLO */
    const char *key;         /* PUT, DELETE */
    const char *node_id;     /* HELLO */
    const char *hostname;    /* HELLO, optional */
    const char *version;     /* HELLO, optional */
    const char *message;     /* ERROR */
    json_t *value;           /* PUT (borrowed from body) */
    json_t *body;            /* the whole body, owned */
};

/* Encodes one frame. body is serialised compactly. On success *out is a
 * malloc'd buffer of *outlen bytes (caller frees). Returns 0, -ENOMEM, or
 * -EMSGSIZE when the frame would exceed CFGS_MAX_FRAME. */
int cfgs_encode(enum cfgs_type type, const json_t *body, char **out, size_t *outlen);

/* Convenience encoders for each message; same contract as cfgs_encode.
 * value is borrowed. */
int cfgs_encode_hello(const char *node_id, int64_t revision, const char *hostname, char **out,
                      size_t *outlen);
int cfgs_encode_put(int64_t revision, const char *key, const json_t *value, int64_t create_rev,
                    int64_t mod_rev, char **out, size_t *outlen);
int cfgs_encode_put_raw(int64_t revision, const char *key, const char *value_json,
                        int64_t create_rev, int64_t mod_rev, char **out, size_t *outlen);
int cfgs_encode_delete(int64_t revision, const char *key, char **out, size_t *outlen);
int cfgs_encode_rev(enum cfgs_type type, int64_t revision, char **out, size_t *outlen);
int cfgs_encode_snapshot_end(int64_t revision, int64_t count, char **out, size_t *outlen);
int cfgs_encode_ping(enum cfgs_type type /* PING or PONG */, int64_t ts, char **out,
                     size_t *outlen);
int cfgs_encode_error(const char *message, char **out, size_t *outlen);

/* Incremental decoder: feed bytes as they arrive, take whole messages out. */
struct cfgs_decoder {
    char *buf;     /* buffered bytes not yet consumed */
    size_t len;    /* bytes in buf */
    size_t cap;    /* allocated size of buf */
    size_t off;    /* start of unconsumed data in buf */
    int error;     /* sticky: once a frame is bad, the stream is dead */
};

void cfgs_decoder_init(struct cfgs_decoder *d);
void cfgs_decoder_free(struct cfgs_decoder *d);

/* Appends bytes. Returns 0 or -ENOMEM. Never holds more than one maximal
 * frame plus what was fed in one call. */
int cfgs_decoder_feed(struct cfgs_decoder *d, const char *data, size_t len);

/* Takes the next whole message. Returns 1 and fills *msg (free with
 * cfgs_msg_free), 0 when more bytes are needed, or a negative errno when the
 * stream is corrupt: -EMSGSIZE (length 0 or over CFGS_MAX_FRAME), -EPROTO
 * (unknown type, body not a JSON object, or a required member missing or of
 * the wrong type). After an error every call returns the same error. If err
 * is not NULL a one-line description is written there on error. */
int cfgs_decoder_next(struct cfgs_decoder *d, struct cfgs_msg *msg, char *err, size_t errlen);

void cfgs_msg_free(struct cfgs_msg *msg);

/* "HELLO", "PUT", ... or "UNKNOWN". */
const char *cfgs_type_name(enum cfgs_type type);

#endif
