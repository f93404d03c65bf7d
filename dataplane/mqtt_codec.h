/*
 * mqtt_codec: the MQTT framing the stream proxy needs before it can pick a
 * broker: parse a client's first packet (CONNECT, MQTT 3.1, 3.1.1 and 5.0)
 * and build the CONNACK that refuses it in the form the client's version
 * expects.
 *
 * A pure module: no allocation, no I/O, no globals. The parser is
 * incremental in the stateless way: call it again with the whole buffer
 * every time more bytes arrive; it returns MQTT_NEED_MORE until the packet
 * is complete. It never reads past len, and it reports an error as soon as
 * the bytes received so far prove it, so an error seen on a prefix is the
 * error the whole packet gets.
 *
 * Ownership: struct mqtt_connect holds views (pointer + length) into the
 * caller's buffer, never copies. They are valid while that buffer is
 * unchanged; moving or freeing the buffer invalidates them.
 *
 * Versions: 3.1 is protocol name "MQIsdp" with level 3; 3.1.1 is "MQTT"
 * level 4; 5.0 is "MQTT" level 5.
 */
#ifndef AIRGW_DP_MQTT_CODEC_H
#define AIRGW_DP_MQTT_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Protocol levels (the byte after the protocol name). */
#define MQTT_LEVEL_31 3  /* MQTT 3.1, name "MQIsdp" */
#define MQTT_LEVEL_311 4 /* MQTT 3.1.1, name "MQTT" */
#define MQTT_LEVEL_5 5   /* MQTT 5.0, name "MQTT" */

/* Largest remaining length a varint can say (4 bytes of 7 bits). */
#define MQTT_MAX_REMAINING 268435455u

/* Connect flags (byte after the level). */
#define MQTT_CF_RESERVED 0x01
#define MQTT_CF_CLEAN 0x02 /* clean session (3.x) / clean start (5.0) */
#define MQTT_CF_WILL 0x04
#define MQTT_CF_WILL_QOS 0x18 /* mask; qos = (flags & MASK) >> 3 */
#define MQTT_CF_WILL_RETAIN 0x20
#define MQTT_CF_PASSWORD 0x40
#define MQTT_CF_USERNAME 0x80

/* mqtt_parse_connect results: 0, a positive packet length, or one of these. */
#define MQTT_NEED_MORE 0
#define MQTT_ERR_NOT_MQTT (-1)       /* first byte not CONNECT: close, no reply */
#define MQTT_ERR_MALFORMED (-2)      /* violates the packet format */
#define MQTT_ERR_PROTOCOL_NAME (-3)  /* name neither "MQTT" nor "MQIsdp" */
#define MQTT_ERR_PROTOCOL_LEVEL (-4) /* level not 3/4/5, or not the name's */
#define MQTT_ERR_TOO_LARGE (-5)      /* remaining length > max_packet */

/* A view into the parsed buffer. ptr is NULL (len 0) when the field is
 * absent; a present but empty field has a non-NULL ptr and len 0. */
struct mqtt_bytes {
    const uint8_t *ptr; /* first byte, inside the caller's buffer */
    size_t len;         /* number of bytes */
};

/* MQTT 5.0 CONNECT properties, decoded. A has_* flag says the property was
 * present; the value is 0 (or an absent view) otherwise. */
struct mqtt_connect_props {
    bool has_session_expiry;        /* 0x11 seen */
    uint32_t session_expiry;        /* seconds */
    bool has_receive_max;           /* 0x21 seen */
    uint16_t receive_max;           /* never 0 when present (0 is an error) */
    bool has_max_packet_size;       /* 0x27 seen */
    uint32_t max_packet_size;       /* never 0 when present */
    bool has_topic_alias_max;       /* 0x22 seen */
    uint16_t topic_alias_max;       /* client accepts aliases up to this */
    bool has_request_response_info; /* 0x19 seen */
    uint8_t request_response_info;  /* 0 or 1 */
    bool has_request_problem_info;  /* 0x17 seen */
    uint8_t request_problem_info;   /* 0 or 1 */
    struct mqtt_bytes auth_method;  /* 0x15, UTF-8 string; ptr NULL if absent */
    struct mqtt_bytes auth_data;    /* 0x16, binary; only with auth_method */
    uint32_t user_property_count;   /* 0x26 pairs, each valid UTF-8 */
};

/* MQTT 5.0 will properties, decoded (same has_* convention). */
struct mqtt_will_props {
    bool has_will_delay;              /* 0x18 seen */
    uint32_t will_delay;              /* seconds */
    bool has_payload_format;          /* 0x01 seen */
    uint8_t payload_format;           /* 0 bytes, 1 UTF-8; not checked */
    bool has_message_expiry;          /* 0x02 seen */
    uint32_t message_expiry;          /* seconds */
    struct mqtt_bytes content_type;   /* 0x03, UTF-8 string */
    struct mqtt_bytes response_topic; /* 0x08, UTF-8 string */
    struct mqtt_bytes correlation;    /* 0x09, binary */
    uint32_t user_property_count;     /* 0x26 pairs */
};

/* One parsed CONNECT. Every view points into the buffer given to
 * mqtt_parse_connect. */
struct mqtt_connect {
    size_t total_len;                /* whole packet: fixed header + remaining */
    size_t remaining_len;            /* the fixed header's remaining length */
    struct mqtt_bytes protocol_name; /* "MQTT" or "MQIsdp" */
    uint8_t level;                   /* MQTT_LEVEL_*; set as soon as it is read */
    uint8_t flags;                   /* raw connect flags (MQTT_CF_*) */
    uint16_t keep_alive;             /* seconds, 0 = off */
    bool clean;                      /* flags & MQTT_CF_CLEAN */
    struct mqtt_bytes props;         /* 5.0 property block (after its length); absent in 3.x */
    struct mqtt_connect_props p;     /* props decoded */
    struct mqtt_bytes client_id;     /* UTF-8, may be empty (ptr non-NULL, len 0) */
    bool will;                       /* flags & MQTT_CF_WILL */
    uint8_t will_qos;                /* 0..2 */
    bool will_retain;                /* flags & MQTT_CF_WILL_RETAIN */
    struct mqtt_bytes will_props;    /* 5.0 will property block; absent otherwise */
    struct mqtt_will_props wp;       /* will_props decoded */
    struct mqtt_bytes will_topic;    /* UTF-8; absent without will */
    struct mqtt_bytes will_payload;  /* binary; absent without will */
    struct mqtt_bytes username;      /* UTF-8; ptr NULL without the username flag */
    struct mqtt_bytes password;      /* binary; ptr NULL without the password flag */
};

/*
 * Parses the CONNECT at the start of buf[0..len). max_packet is the largest
 * remaining length accepted (0 means the spec's MQTT_MAX_REMAINING).
 *
 * Returns:
 *   MQTT_NEED_MORE (0)  not complete yet (including a partial remaining
 *                       length); call again with more bytes
 *   > 0                 a whole valid CONNECT of that many bytes
 *                       (out->total_len); bytes after it are the next packet
 *   MQTT_ERR_*          see above. TOO_LARGE is decided as soon as the
 *                       remaining length is complete. Any first byte but
 *                       0x10 is NOT_MQTT (0x16 is a TLS handshake on a
 *                       plain port; 0x11..0x1f are no CONNECT either).
 *
 * out is always written. On an error it is partly filled: out->level is the
 * protocol level if parsing got that far (PROTOCOL_LEVEL and every later
 * error), else 0; use mqtt_peek_level for the rest. Never reads past len and
 * never allocates.
 */
int mqtt_parse_connect(const uint8_t *buf, size_t len, size_t max_packet, struct mqtt_connect *out);

/*
 * Best effort: finds the protocol level byte of a CONNECT even when the
 * packet is malformed (wrong name, bad lengths, incomplete payload), to pick
 * the CONNACK form. Needs a first byte 0x10, a readable remaining
 * length and the name's 2-byte length; the name itself is not checked.
 * Returns 1 and sets *level, MQTT_NEED_MORE if the level byte has not
 * arrived yet, or MQTT_ERR_NOT_MQTT / MQTT_ERR_MALFORMED if it cannot be
 * found.
 */
int mqtt_peek_level(const uint8_t *buf, size_t len, uint8_t *level);

/* Why a CONNECT is refused; mqtt_refusal_code maps it to the wire code. */
enum mqtt_refusal {
    MQTT_REFUSE_VERSION,        /* 3.x 0x01, 5.0 0x84 unsupported protocol version */
    MQTT_REFUSE_MALFORMED,      /* 3.x none (close), 5.0 0x81 malformed packet */
    MQTT_REFUSE_CLIENT_ID,      /* 3.x 0x02, 5.0 0x85 client identifier not valid */
    MQTT_REFUSE_BAD_AUTH,       /* 3.x 0x04, 5.0 0x86 bad user name or password */
    MQTT_REFUSE_NOT_AUTHORIZED, /* 3.x 0x05, 5.0 0x87 not authorized */
    MQTT_REFUSE_UNAVAILABLE,    /* 3.x 0x03, 5.0 0x88 server unavailable */
    MQTT_REFUSE_TOO_LARGE,      /* 3.x 0x03 server unavailable, 5.0 0x95 packet too large */
    MQTT_REFUSE_PROTOCOL_ERROR, /* 3.x none (close), 5.0 0x82 protocol error */
};

/* Returned by mqtt_refusal_code when the version has no code for the
 * refusal: the spec says close the connection without a CONNACK.
 * mqtt_connack writes nothing for it. */
#define MQTT_CONNACK_NONE 0xff

/* Largest CONNACK mqtt_connack writes (5.0: 0x20 len flags code proplen). */
#define MQTT_CONNACK_MAX 5

/*
 * The CONNACK return/reason code refusing a CONNECT of that level for that
 * reason, or MQTT_CONNACK_NONE. Levels >= 5 (including unknown future ones)
 * get 5.0 reason codes; every lower level (3.1, 3.1.1 and unknown 0..2) gets
 * 3.1.1 return codes, which 3.1 shares. 3.x has no code for a malformed
 * packet (the spec says close), so MALFORMED and PROTOCOL_ERROR give
 * MQTT_CONNACK_NONE there.
 */
uint8_t mqtt_refusal_code(uint8_t level, enum mqtt_refusal why);

/*
 * Writes a CONNACK with session present 0 and that code, in the form for
 * level: levels < 5 get 3.x's 0x20 0x02 0x00 code; levels >= 5 get 5.0's
 * 0x20 0x03 0x00 code 0x00 (no properties), which a 5.0 client reads even
 * when it announced a level we do not know. Returns the bytes written, or 0
 * if code is MQTT_CONNACK_NONE or cap is too small (nothing written).
 */
size_t mqtt_connack(uint8_t level, uint8_t code, uint8_t *out, size_t cap);

/*
 * As mqtt_connack, plus for levels >= 5 a Reason String property (0x1f)
 * carrying reason (NUL-terminated UTF-8, may be NULL). The reason is left
 * out (not truncated) if it would not fit cap or 65535 bytes, or is not
 * valid MQTT UTF-8; 3.x forms never carry one. Returns bytes written or 0.
 */
size_t mqtt_connack_reason(uint8_t level, uint8_t code, const char *reason, uint8_t *out,
                           size_t cap);

/*
 * Convenience for the proxy after mqtt_parse_connect(buf, len, ...) returned
 * err < 0 with out c: picks the level (c->level, else mqtt_peek_level) and
 * the refusal for the error (PROTOCOL_NAME/LEVEL -> VERSION, MALFORMED,
 * TOO_LARGE) and writes the CONNACK. Returns its length, or 0 when the
 * connection should be closed without a reply (NOT_MQTT, no level found,
 * 3.x malformed).
 */
size_t mqtt_connack_for_error(int err, const uint8_t *buf, size_t len, const struct mqtt_connect *c,
                              uint8_t *out, size_t cap);

/*
 * Client identifier rules the broker would apply, so the proxy can refuse
 * before picking a broker (MQTT_REFUSE_CLIENT_ID): 3.1 needs a non-empty id;
 * 3.1.1 allows an empty id only with clean session; 5.0 allows an empty id
 * (the broker assigns one). No upper bound: 3.1 says 23 bytes at most, but
 * mosquitto and EMQX accept longer ids and the broker has the last word.
 */
bool mqtt_client_id_acceptable(const struct mqtt_connect *c);

/* A short static name for a parse result ("need more", "malformed", ...). */
const char *mqtt_strerror(int rc);

#endif
