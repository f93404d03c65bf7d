/*
 * airgw-mqttload: an MQTT 3.1.1 load generator on one libuv loop, for the
 * benchmarks (tests/bench/bench_mqtt.sh).
 *
 * N clients connect (at a given rate), P of them publish to
 * <prefix>/<publisher> and S of them subscribe: subscriber j takes the
 * topic of publisher j % P, so with P == S every message is received once.
 * The rest stay idle. Every payload carries its publisher, a sequence
 * number and the send time (CLOCK_MONOTONIC, the same clock for both ends
 * since both run here), and subscribers record publish->receive latency.
 * QoS 1 publishers also record publish->PUBACK latency.
 *
 * Publishing, --rate R messages/s per publisher:
 *   R > 0   paced by a 1 ms tick (QoS 1: never more than --inflight
 *           unacknowledged messages; a publisher that cannot keep up counts
 *           "behind" and the achieved rate shows it)
 *   R = 0   as fast as the window allows: QoS 1, at most --inflight
 *           unacknowledged PUBLISHes; QoS 0, at most --inflight messages
 *           sent but not yet received by the publisher's subscriber (an
 *           end-to-end window: a flood would only measure the broker's
 *           queues); --inflight 0 with QoS 0 floods, bounded by TCP alone.
 *
 * --hold connects the N clients and keeps them idle (PINGREQ when
 * nothing was sent for half the keep-alive) for --duration seconds, or
 * until SIGINT/SIGTERM; --ready-file is written once every client has its
 * CONNACK (or failed), which is when the memory of whatever is in front
 * can be measured.
 *
 * At the end every client sends DISCONNECT and waits (up to 2 s) for the
 * server to close first, so the TIME_WAIT sockets are not the client's.
 * Exit status: 0, 1 on a usage or setup error, 3 if any client failed or
 * any error was counted.
 *
 * The MQTT encoders and the incremental packet reader are written here
 * (a load tool must not share the gateway's code it is measuring).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#define MAGIC 0x444c514du /* "MQLD" little-endian */
#define HDR_BYTES 24      /* magic, publisher, seq, send time */
#define MAX_PKT (1u << 20)
#define SCRATCH (256 * 1024)
#define QOS0_FLOOD_QUEUE (64 * 1024)   /* flood: keep this much queued */
#define PACED_QUEUE_MAX (1024 * 1024)  /* paced: skip (behind) over this */
#define CONNACK_TIMEOUT_MS 10000
#define CLOSE_WAIT_MS 2000

/* ---- latency histogram: log-linear, 64 sub-buckets (<1.6% error) ---- */

#define HB 4096

struct hist {
    uint64_t c[HB];
    uint64_t n, max, sum;
};

static unsigned hidx(uint64_t v)
{
    if (v < 128)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - 6;
    unsigned top = (unsigned)(v >> shift); /* 64..127 */
    return 128 + (msb - 7) * 64 + (top - 64);
}

static uint64_t hval(unsigned i) /* the middle of bucket i */
{
    if (i < 128)
        return i;
    unsigned msb = (i - 128) / 64 + 7;
    unsigned shift = msb - 6;
    uint64_t top = 64 + (i - 128) % 64;
    return (top << shift) + (1ull << shift) / 2;
}

static void hadd(struct hist *h, uint64_t v)
{
    h->c[hidx(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

static double hq(const struct hist *h, double q) /* in ms */
{
    if (!h->n)
        return 0;
    uint64_t want = (uint64_t)ceil(q * (double)h->n), acc = 0;
    if (want < 1)
        want = 1;
    for (unsigned i = 0; i < HB; i++) {
        acc += h->c[i];
        if (acc >= want) {
            uint64_t v = hval(i);
            return (double)(v > h->max ? h->max : v) / 1e6;
        }
    }
    return (double)h->max / 1e6;
}

/* ---- options ---- */

static struct {
    const char *host;
    int port;
    int clients, publishers, subscribers;
    double connect_rate;
    const char *prefix;
    int qos;
    double rate;
    int size;
    double duration;
    int hold;
    int json;
    int inflight;
    int keepalive;
    int max_pending;
    double drain;
    const char *ready_file;
    const char *id_prefix;
} opt = {
    .host = "127.0.0.1",
    .port = 1883,
    .connect_rate = 0,
    .prefix = "mqttload",
    .qos = 0,
    .rate = 0,
    .size = 64,
    .duration = 10,
    .inflight = 32,
    .keepalive = 60,
    .max_pending = 512,
    .drain = 2,
};

/* ---- clients ---- */

enum role { R_IDLE, R_PUB, R_SUB };
enum cstate {
    C_NEW,          /* not started */
    C_TCP,          /* TCP connect under way */
    C_CONNACK,      /* CONNECT sent, waiting for CONNACK */
    C_SUBACK,       /* subscriber: SUBSCRIBE sent */
    C_READY,        /* connected (and subscribed) */
    C_BYE,          /* DISCONNECT sent, waiting for the server to close */
    C_CLOSING,      /* uv_close under way */
    C_CLOSED,       /* done, after a success */
    C_FAILED,       /* done, never ready or lost */
};

struct inflight_slot {
    uint16_t pid; /* 0: free */
    uint64_t ts;
};

struct client {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uint32_t idx;
    uint8_t role, state, ever_ready, handle_open;
    uint32_t topic; /* publisher index for pubs and subs */
    uint64_t t0;    /* ns, connect start */
    uint64_t last_tx_ms;
    uint64_t bye_ms;
    uint8_t *in;    /* partial packet, or NULL */
    uint32_t in_len, in_cap;
};

struct pubstate {
    struct client *c;
    uint64_t seq;         /* messages sent (the next seq) */
    uint64_t sent_win;    /* sent inside the measured window */
    uint64_t acked;       /* QoS 1 PUBACKs */
    uint32_t inflight;    /* QoS 1 unacknowledged */
    uint64_t recv_seq;    /* highest seq+1 received by a subscriber (QoS 0 window) */
    uint64_t last_progress_ms;
    uint64_t behind;      /* paced: ticks where the window/queue stopped us */
    uint16_t next_pid;
    struct inflight_slot *slots; /* QoS 1, power of two >= inflight+1 */
    uint32_t nslots;
    uint32_t nsubs;       /* subscribers on its topic */
};

enum phase { P_CONNECT, P_SUBSCRIBE, P_RUN, P_HOLD, P_DRAIN, P_BYE, P_CLOSE, P_DONE };

static uv_loop_t *loop;
static struct client *cl;
static struct pubstate *pubs;
static uv_timer_t tick, slow, phase_timer;
static uv_signal_t sigint_h, sigterm_h;
static enum phase phase = P_CONNECT;
static int next_connect, pending, ready_count, failed_count, subacked;
static int open_handles;
static uint64_t connect_start_ms, run_start_ns, run_end_ns, run_start_ms, drain_start_ms;
static uint64_t hold_start_ms, bye_start_ms;
static char rbuf[256 * 1024];
static uint8_t scratch[SCRATCH];
static uint8_t payload_pad[MAX_PKT];
static struct hist lat, ack_lat, conn_lat;
static uint64_t received, received_win, recv_bytes;
static struct {
    uint64_t connect, refused, closed, protocol, timeout, subscribe, write;
} err;
static int stop_requested;
static double run_seconds;

static void set_phase(enum phase p);
static void client_close(struct client *c, int failed);

static uint64_t now_ms(void)
{
    return uv_now(loop);
}

/* ---- writing ---- */

struct wreq {
    uv_write_t req;
    struct client *c;
    char data[];
};

static void pump(struct pubstate *p);

static void on_written(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct client *c = w->c;
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED && c->state < C_CLOSING) {
            err.write++;
            client_close(c, 1);
        }
        return;
    }
    if (c->role == R_PUB && phase == P_RUN && opt.rate == 0 && opt.qos == 0)
        pump(&pubs[c->topic]);
}

static int cwrite(struct client *c, const void *data, size_t len)
{
    if (c->state >= C_CLOSING)
        return -1;
    size_t off = 0;
    c->last_tx_ms = now_ms();
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n < 0 && n != UV_EAGAIN) {
            err.write++;
            client_close(c, 1);
            return -1;
        }
        off = n > 0 ? (size_t)n : 0;
    }
    if (off == len)
        return 0;
    struct wreq *w = malloc(sizeof(*w) + len - off);
    if (!w) {
        fprintf(stderr, "mqttload: out of memory\n");
        exit(1);
    }
    w->c = c;
    memcpy(w->data, (const char *)data + off, len - off);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)(len - off));
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
        free(w);
        err.write++;
        client_close(c, 1);
        return -1;
    }
    return 0;
}

/* ---- encoders ---- */

static size_t put_varint(uint8_t *p, size_t v)
{
    size_t n = 0;
    do {
        uint8_t b = v % 128;
        v /= 128;
        if (v)
            b |= 0x80;
        p[n++] = b;
    } while (v);
    return n;
}

static size_t put_str(uint8_t *p, const char *s, size_t len)
{
    p[0] = (uint8_t)(len >> 8);
    p[1] = (uint8_t)len;
    memcpy(p + 2, s, len);
    return len + 2;
}

static size_t enc_connect(uint8_t *p, const char *id, uint16_t keepalive)
{
    size_t idlen = strlen(id);
    size_t rem = 10 + 2 + idlen, n = 0;
    p[n++] = 0x10;
    n += put_varint(p + n, rem);
    n += put_str(p + n, "MQTT", 4);
    p[n++] = 4;    /* 3.1.1 */
    p[n++] = 0x02; /* clean session */
    p[n++] = (uint8_t)(keepalive >> 8);
    p[n++] = (uint8_t)keepalive;
    n += put_str(p + n, id, idlen);
    return n;
}

static size_t enc_subscribe(uint8_t *p, uint16_t pid, const char *topic, int qos)
{
    size_t tl = strlen(topic), n = 0;
    p[n++] = 0x82;
    n += put_varint(p + n, 2 + 2 + tl + 1);
    p[n++] = (uint8_t)(pid >> 8);
    p[n++] = (uint8_t)pid;
    n += put_str(p + n, topic, tl);
    p[n++] = (uint8_t)qos;
    return n;
}

static char topics_buf[64]; /* topic of the publisher being encoded */

static size_t topic_of(uint32_t t, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%u", opt.prefix, t);
    return n < 0 ? 0 : (size_t)n;
}

static size_t enc_publish(uint8_t *p, const char *topic, size_t tl, int qos, uint16_t pid,
                          uint32_t pub, uint64_t seq, uint64_t ts)
{
    size_t rem = 2 + tl + (qos ? 2 : 0) + (size_t)opt.size, n = 0;
    p[n++] = (uint8_t)(0x30 | (qos << 1));
    n += put_varint(p + n, rem);
    n += put_str(p + n, topic, tl);
    if (qos) {
        p[n++] = (uint8_t)(pid >> 8);
        p[n++] = (uint8_t)pid;
    }
    uint32_t magic = MAGIC;
    memcpy(p + n, &magic, 4);
    memcpy(p + n + 4, &pub, 4);
    memcpy(p + n + 8, &seq, 8);
    memcpy(p + n + 16, &ts, 8);
    if (opt.size > HDR_BYTES)
        memcpy(p + n + HDR_BYTES, payload_pad, (size_t)opt.size - HDR_BYTES);
    return n + (size_t)opt.size;
}

static size_t publish_len(size_t tl)
{
    size_t rem = 2 + tl + (opt.qos ? 2 : 0) + (size_t)opt.size;
    uint8_t tmp[8];
    return 1 + put_varint(tmp, rem) + rem;
}

/* ---- publishing ---- */

/* How many this publisher may send now. */
static uint64_t allowance(struct pubstate *p, uint64_t now)
{
    uv_stream_t *s = (uv_stream_t *)&p->c->tcp;
    size_t q = uv_stream_get_write_queue_size(s);
    uint64_t may = UINT64_MAX;
    if (opt.rate > 0) {
        double el = (double)(uv_hrtime() - run_start_ns) / 1e9;
        uint64_t due = (uint64_t)(el * opt.rate) + 1;
        may = due > p->seq ? due - p->seq : 0;
        if (may && q > PACED_QUEUE_MAX) {
            p->behind++;
            return 0;
        }
    }
    if (opt.qos == 1) {
        uint64_t room = p->inflight < (uint32_t)opt.inflight ? (uint64_t)opt.inflight - p->inflight : 0;
        if (opt.rate > 0 && may > room)
            p->behind++;
        if (room < may)
            may = room;
    } else if (opt.rate == 0) {
        if (opt.inflight > 0 && p->nsubs > 0) {
            uint64_t out = p->seq - p->recv_seq;
            if (p->recv_seq < p->seq && now - p->last_progress_ms > 1000) {
                /* Nothing back for a second: count them lost, open the window. */
                p->recv_seq = p->seq;
                p->last_progress_ms = now;
                out = 0;
            }
            uint64_t room = out < (uint64_t)opt.inflight ? (uint64_t)opt.inflight - out : 0;
            if (room < may)
                may = room;
        } else {
            if (q >= QOS0_FLOOD_QUEUE)
                return 0;
        }
    }
    return may;
}

static void pump(struct pubstate *p)
{
    struct client *c = p->c;
    if (phase != P_RUN || c->state != C_READY)
        return;
    uint64_t now = now_ms();
    uint64_t may = allowance(p, now);
    if (!may)
        return;
    size_t tl = topic_of(c->topic, topics_buf, sizeof(topics_buf));
    size_t plen = publish_len(tl), n = 0;
    uint64_t ts = uv_hrtime();
    while (may > 0 && n + plen <= sizeof(scratch)) {
        uint16_t pid = 0;
        if (opt.qos == 1) {
            pid = p->next_pid;
            struct inflight_slot *sl = &p->slots[pid & (p->nslots - 1)];
            if (sl->pid)
                break; /* still in flight: wait for its PUBACK */
            sl->pid = pid;
            sl->ts = ts;
            p->next_pid = pid == 65535 ? 1 : pid + 1;
            p->inflight++;
        }
        n += enc_publish(scratch + n, topics_buf, tl, opt.qos, pid, c->topic, p->seq, ts);
        p->seq++;
        p->sent_win++;
        may--;
        if (opt.qos == 0 && opt.rate == 0 && (opt.inflight == 0 || p->nsubs == 0) &&
            n >= QOS0_FLOOD_QUEUE)
            break;
    }
    if (n)
        cwrite(c, scratch, n);
}

/* ---- reading ---- */

static void on_packet(struct client *c, const uint8_t *pk, size_t len, size_t hl, uint8_t *out,
                      size_t *outn);

static void flush_out(struct client *c, uint8_t *out, size_t *outn)
{
    if (*outn) {
        cwrite(c, out, *outn);
        *outn = 0;
    }
}

/* Total length of the packet at p, 0 if incomplete, -1 if malformed. */
static long pkt_len(const uint8_t *p, size_t len, size_t *hl)
{
    if (len < 2)
        return 0;
    size_t rem = 0, mul = 1, i = 1;
    for (;;) {
        if (i >= len)
            return 0;
        if (i > 4)
            return -1;
        rem += (size_t)(p[i] & 0x7f) * mul;
        mul *= 128;
        if (!(p[i++] & 0x80))
            break;
    }
    if (rem > MAX_PKT)
        return -1;
    *hl = i;
    return len >= i + rem ? (long)(i + rem) : 0;
}

static void on_alloc(uv_handle_t *h, size_t sug, uv_buf_t *b)
{
    (void)h;
    (void)sug;
    *b = uv_buf_init(rbuf, sizeof(rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (c->state == C_BYE) {
            client_close(c, 0);
            return;
        }
        if (c->state < C_CLOSING) {
            if (c->state == C_TCP || c->state == C_CONNACK)
                err.connect++;
            else
                err.closed++;
            client_close(c, 1);
        }
        return;
    }
    recv_bytes += (uint64_t)nread;
    const uint8_t *d = (const uint8_t *)buf->base;
    size_t len = (size_t)nread;
    uint8_t out[8192];
    size_t outn = 0;
    if (c->in_len) {
        if (c->in_len + len > c->in_cap) {
            size_t cap = c->in_cap ? c->in_cap : 1024;
            while (cap < c->in_len + len)
                cap *= 2;
            uint8_t *n = realloc(c->in, cap);
            if (!n) {
                fprintf(stderr, "mqttload: out of memory\n");
                exit(1);
            }
            c->in = n;
            c->in_cap = (uint32_t)cap;
        }
        memcpy(c->in + c->in_len, d, len);
        c->in_len += (uint32_t)len;
        d = c->in;
        len = c->in_len;
    }
    size_t off = 0;
    while (off < len && c->state < C_CLOSING) {
        size_t hl = 0;
        long n = pkt_len(d + off, len - off, &hl);
        if (n < 0) {
            err.protocol++;
            client_close(c, 1);
            return;
        }
        if (n == 0)
            break;
        on_packet(c, d + off, (size_t)n, hl, out, &outn);
        off += (size_t)n;
    }
    if (c->state >= C_CLOSING)
        return;
    flush_out(c, out, &outn);
    size_t left = len - off;
    if (d == c->in) {
        if (left && off)
            memmove(c->in, c->in + off, left);
        c->in_len = (uint32_t)left;
        if (!left) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
    } else if (left) {
        size_t cap = 1024;
        while (cap < left)
            cap *= 2;
        c->in = malloc(cap);
        if (!c->in) {
            fprintf(stderr, "mqttload: out of memory\n");
            exit(1);
        }
        memcpy(c->in, d + off, left);
        c->in_len = (uint32_t)left;
        c->in_cap = (uint32_t)cap;
    }
}

static void became_ready(struct client *c)
{
    c->state = C_READY;
    c->ever_ready = 1;
    ready_count++;
    if (c->role == R_SUB)
        subacked++;
    pending--;
}

static void on_packet(struct client *c, const uint8_t *pk, size_t len, size_t hl, uint8_t *out,
                      size_t *outn)
{
    uint8_t type = pk[0] >> 4;
    const uint8_t *v = pk + hl;
    size_t vl = len - hl;
    switch (type) {
    case 2: /* CONNACK */
        if (c->state != C_CONNACK || vl < 2) {
            err.protocol++;
            client_close(c, 1);
            return;
        }
        if (v[1] != 0) {
            err.refused++;
            client_close(c, 1);
            return;
        }
        hadd(&conn_lat, uv_hrtime() - c->t0);
        if (c->role == R_SUB) {
            char topic[64];
            topic_of(c->topic, topic, sizeof(topic));
            uint8_t b[128];
            size_t n = enc_subscribe(b, 1, topic, opt.qos);
            c->state = C_SUBACK;
            cwrite(c, b, n);
        } else {
            became_ready(c);
        }
        return;
    case 9: /* SUBACK */
        if (c->state != C_SUBACK || vl < 3) {
            err.protocol++;
            client_close(c, 1);
            return;
        }
        if (v[2] == 0x80) {
            err.subscribe++;
            client_close(c, 1);
            return;
        }
        became_ready(c);
        return;
    case 3: { /* PUBLISH */
        int qos = (pk[0] >> 1) & 3;
        if (vl < 2) {
            err.protocol++;
            client_close(c, 1);
            return;
        }
        size_t tl = ((size_t)v[0] << 8) | v[1];
        size_t po = 2 + tl + (qos ? 2 : 0);
        if (po > vl) {
            err.protocol++;
            client_close(c, 1);
            return;
        }
        if (qos == 1) {
            if (*outn + 4 > 8192)
                flush_out(c, out, outn);
            out[(*outn)++] = 0x40;
            out[(*outn)++] = 2;
            out[(*outn)++] = v[2 + tl];
            out[(*outn)++] = v[2 + tl + 1];
        }
        uint64_t now = uv_hrtime();
        received++;
        if (now <= run_end_ns || run_end_ns == 0)
            received_win++;
        if (vl - po >= HDR_BYTES) {
            uint32_t magic, pub;
            uint64_t seq, ts;
            memcpy(&magic, v + po, 4);
            memcpy(&pub, v + po + 4, 4);
            memcpy(&seq, v + po + 8, 8);
            memcpy(&ts, v + po + 16, 8);
            if (magic == MAGIC && ts <= now) {
                hadd(&lat, now - ts);
                if (pub < (uint32_t)opt.publishers) {
                    struct pubstate *p = &pubs[pub];
                    if (seq + 1 > p->recv_seq) {
                        p->recv_seq = seq + 1;
                        p->last_progress_ms = now_ms();
                        if (opt.qos == 0 && opt.rate == 0)
                            pump(p);
                    }
                }
            }
        }
        return;
    }
    case 4: { /* PUBACK */
        if (c->role != R_PUB || vl < 2) {
            err.protocol++;
            client_close(c, 1);
            return;
        }
        struct pubstate *p = &pubs[c->topic];
        uint16_t pid = (uint16_t)((v[0] << 8) | v[1]);
        struct inflight_slot *sl = &p->slots[pid & (p->nslots - 1)];
        if (sl->pid != pid) {
            err.protocol++;
            return;
        }
        sl->pid = 0;
        hadd(&ack_lat, uv_hrtime() - sl->ts);
        p->inflight--;
        p->acked++;
        pump(p);
        return;
    }
    case 13: /* PINGRESP */
        return;
    default:
        err.protocol++;
        client_close(c, 1);
        return;
    }
}

/* ---- connecting and closing ---- */

static void on_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    c->handle_open = 0;
    free(c->in);
    c->in = NULL;
    open_handles--;
    if (phase == P_CLOSE && open_handles == 0)
        set_phase(P_DONE);
}

static void client_close(struct client *c, int failed)
{
    if (c->state >= C_CLOSING)
        return;
    if (c->state == C_TCP || c->state == C_CONNACK || c->state == C_SUBACK)
        pending--;
    if (c->state == C_READY || c->state == C_BYE)
        ready_count--;
    if (c->role == R_SUB && (c->state == C_READY || c->state == C_BYE))
        subacked--;
    c->state = C_CLOSING;
    if (failed)
        failed_count++;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    c->state = failed ? C_FAILED : C_CLOSED;
}

static void on_connected(uv_connect_t *req, int status)
{
    struct client *c = req->data;
    if (c->state != C_TCP)
        return;
    if (status < 0) {
        err.connect++;
        client_close(c, 1);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    char id[96];
    snprintf(id, sizeof(id), "%s-%d-%u", opt.id_prefix, (int)getpid(), c->idx);
    uint8_t b[160];
    size_t n = enc_connect(b, id, (uint16_t)opt.keepalive);
    c->state = C_CONNACK;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        err.connect++;
        client_close(c, 1);
        return;
    }
    cwrite(c, b, n);
}

static struct sockaddr_storage target;

static void start_client(struct client *c)
{
    c->t0 = uv_hrtime();
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    c->handle_open = 1;
    open_handles++;
    c->creq.data = c;
    c->state = C_TCP;
    pending++;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&target, on_connected);
    if (rc < 0) {
        err.connect++;
        if (rc == UV_EMFILE || rc == UV_ENFILE)
            fprintf(stderr, "mqttload: out of file descriptors at client %u\n", c->idx);
        client_close(c, 1);
    }
}

static void connect_some(void)
{
    if (phase != P_CONNECT || stop_requested)
        return;
    uint64_t allowed = (uint64_t)opt.clients;
    if (opt.connect_rate > 0) {
        double el = (double)(now_ms() - connect_start_ms) / 1000.0;
        allowed = (uint64_t)(el * opt.connect_rate) + 1;
        if (allowed > (uint64_t)opt.clients)
            allowed = (uint64_t)opt.clients;
    }
    while ((uint64_t)next_connect < allowed && pending < opt.max_pending)
        start_client(&cl[next_connect++]);
}

static int all_settled(void) /* every client ready or failed (or a stop asked) */
{
    return (next_connect == opt.clients || stop_requested) && pending == 0;
}

/* ---- phases ---- */

static void write_ready_file(void)
{
    if (!opt.ready_file)
        return;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", opt.ready_file);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "%d %d\n", ready_count, failed_count);
    fclose(f);
    rename(tmp, opt.ready_file);
}

static void on_phase_timer(uv_timer_t *t)
{
    (void)t;
    if (phase == P_RUN)
        set_phase(P_DRAIN);
    else if (phase == P_HOLD || phase == P_DRAIN)
        set_phase(P_BYE);
}

static int drained(void)
{
    uint64_t exp = 0, got = 0;
    for (int i = 0; i < opt.publishers; i++) {
        if (pubs[i].inflight)
            return 0;
        exp += pubs[i].seq * pubs[i].nsubs;
    }
    got = received;
    return got >= exp;
}

static void set_phase(enum phase p)
{
    phase = p;
    switch (p) {
    case P_SUBSCRIBE:
        fprintf(stderr, "mqttload: %d of %d connected\n", ready_count, opt.clients);
        if (opt.hold) {
            set_phase(P_HOLD);
            return;
        }
        if (subacked >= opt.subscribers) {
            set_phase(P_RUN);
            return;
        }
        break;
    case P_HOLD:
        hold_start_ms = now_ms();
        write_ready_file();
        if (stop_requested || opt.duration <= 0) {
            set_phase(P_BYE);
            return;
        }
        uv_timer_start(&phase_timer, on_phase_timer, (uint64_t)(opt.duration * 1000), 0);
        break;
    case P_RUN:
        if (stop_requested) {
            set_phase(P_BYE);
            return;
        }
        run_start_ns = uv_hrtime();
        uv_update_time(loop);
        run_start_ms = now_ms();
        for (int i = 0; i < opt.publishers; i++) {
            pubs[i].last_progress_ms = run_start_ms;
            pump(&pubs[i]);
        }
        uv_timer_start(&phase_timer, on_phase_timer, (uint64_t)(opt.duration * 1000), 0);
        break;
    case P_DRAIN:
        run_end_ns = uv_hrtime();
        run_seconds = (double)(run_end_ns - run_start_ns) / 1e9;
        drain_start_ms = now_ms();
        if (drained()) {
            set_phase(P_BYE);
            return;
        }
        uv_timer_start(&phase_timer, on_phase_timer, (uint64_t)(opt.drain * 1000), 0);
        break;
    case P_BYE: {
        uv_timer_stop(&phase_timer);
        if (run_start_ns && !run_end_ns) {
            run_end_ns = uv_hrtime();
            run_seconds = (double)(run_end_ns - run_start_ns) / 1e9;
        }
        bye_start_ms = now_ms();
        static const uint8_t disc[2] = {0xe0, 0x00};
        for (int i = 0; i < opt.clients; i++) {
            struct client *c = &cl[i];
            if (c->state == C_NEW) {
                c->state = C_CLOSED;
                continue;
            }
            if (c->state == C_READY) {
                cwrite(c, disc, sizeof(disc));
                if (c->state == C_READY) {
                    c->state = C_BYE;
                    c->bye_ms = bye_start_ms;
                }
            } else if (c->state < C_CLOSING) {
                client_close(c, 1);
            }
        }
        break;
    }
    case P_CLOSE:
        if (open_handles == 0)
            set_phase(P_DONE);
        break;
    case P_DONE:
        uv_timer_stop(&tick);
        uv_timer_stop(&slow);
        uv_timer_stop(&phase_timer);
        uv_close((uv_handle_t *)&tick, NULL);
        uv_close((uv_handle_t *)&slow, NULL);
        uv_close((uv_handle_t *)&phase_timer, NULL);
        uv_close((uv_handle_t *)&sigint_h, NULL);
        uv_close((uv_handle_t *)&sigterm_h, NULL);
        break;
    default:
        break;
    }
}

static void on_tick(uv_timer_t *t) /* 1 ms */
{
    (void)t;
    switch (phase) {
    case P_CONNECT:
        connect_some();
        if (all_settled())
            set_phase(P_SUBSCRIBE);
        break;
    case P_SUBSCRIBE:
        if (subacked >= opt.subscribers || pending == 0)
            set_phase(P_RUN);
        break;
    case P_RUN:
        for (int i = 0; i < opt.publishers; i++)
            pump(&pubs[i]);
        break;
    case P_DRAIN:
        if (drained())
            set_phase(P_BYE);
        break;
    case P_BYE: {
        int waiting = 0;
        uint64_t now = now_ms();
        for (int i = 0; i < opt.clients; i++) {
            struct client *c = &cl[i];
            if (c->state == C_BYE) {
                if (now - c->bye_ms >= CLOSE_WAIT_MS)
                    client_close(c, 0);
                else
                    waiting++;
            }
        }
        if (!waiting)
            set_phase(P_CLOSE);
        break;
    }
    default:
        break;
    }
}

static void on_slow(uv_timer_t *t) /* 1 s: timeouts, keep-alive */
{
    (void)t;
    uint64_t now = now_ms();
    static const uint8_t ping[2] = {0xc0, 0x00};
    for (int i = 0; i < next_connect; i++) {
        struct client *c = &cl[i];
        if ((c->state == C_TCP || c->state == C_CONNACK || c->state == C_SUBACK) &&
            (uv_hrtime() - c->t0) / 1000000 > CONNACK_TIMEOUT_MS) {
            err.timeout++;
            client_close(c, 1);
        } else if (c->state == C_READY && opt.keepalive > 0 &&
                   now - c->last_tx_ms >= (uint64_t)opt.keepalive * 500) {
            cwrite(c, ping, sizeof(ping));
        }
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    if (stop_requested++)
        return;
    switch (phase) {
    case P_RUN:
        set_phase(P_DRAIN);
        break;
    case P_HOLD:
    case P_DRAIN:
        set_phase(P_BYE);
        break;
    default:
        break; /* P_CONNECT/P_SUBSCRIBE go on to P_BYE via stop_requested */
    }
}

/* ---- report ---- */

static void report(void)
{
    uint64_t sent = 0, acked = 0, exp = 0, behind = 0;
    for (int i = 0; i < opt.publishers; i++) {
        sent += pubs[i].sent_win;
        acked += pubs[i].acked;
        exp += pubs[i].sent_win * pubs[i].nsubs;
        behind += pubs[i].behind;
    }
    double secs = run_seconds > 0 ? run_seconds : 0;
    double sent_ps = secs > 0 ? (double)sent / secs : 0;
    double recv_ps = secs > 0 ? (double)received_win / secs : 0;
    uint64_t lost = exp > received ? exp - received : 0;
    uint64_t errors = err.connect + err.refused + err.closed + err.protocol + err.timeout +
                      err.subscribe + err.write;
    int connected = (int)conn_lat.n;
    if (opt.json) {
        printf("{\"host\":\"%s\",\"port\":%d,\"mode\":\"%s\",\"clients\":%d,\"connected\":%d,"
               "\"failed\":%d,\"publishers\":%d,\"subscribers\":%d,\"qos\":%d,\"size\":%d,"
               "\"rate\":%g,\"inflight\":%d,\"duration_s\":%.3f,",
               opt.host, opt.port, opt.hold ? "hold" : "pubsub", opt.clients, connected,
               failed_count, opt.publishers, opt.subscribers, opt.qos, opt.size, opt.rate,
               opt.inflight, secs);
        printf("\"sent\":%" PRIu64 ",\"sent_per_s\":%.1f,\"acked\":%" PRIu64 ",\"received\":%" PRIu64
               ",\"received_in_window\":%" PRIu64 ",\"received_per_s\":%.1f,\"expected\":%" PRIu64
               ",\"lost\":%" PRIu64 ",\"behind\":%" PRIu64 ",",
               sent, sent_ps, acked, received, received_win, recv_ps, exp, lost, behind);
        printf("\"latency_ms\":{\"n\":%" PRIu64 ",\"mean\":%.4f,\"p50\":%.4f,\"p90\":%.4f,"
               "\"p99\":%.4f,\"p999\":%.4f,\"max\":%.4f},",
               lat.n, lat.n ? (double)lat.sum / (double)lat.n / 1e6 : 0, hq(&lat, .5),
               hq(&lat, .9), hq(&lat, .99), hq(&lat, .999), (double)lat.max / 1e6);
        printf("\"puback_ms\":{\"n\":%" PRIu64 ",\"p50\":%.4f,\"p99\":%.4f,\"max\":%.4f},",
               ack_lat.n, hq(&ack_lat, .5), hq(&ack_lat, .99), (double)ack_lat.max / 1e6);
        printf("\"connect_ms\":{\"n\":%" PRIu64 ",\"p50\":%.4f,\"p99\":%.4f,\"max\":%.4f},",
               conn_lat.n, hq(&conn_lat, .5), hq(&conn_lat, .99), (double)conn_lat.max / 1e6);
        printf("\"errors\":%" PRIu64 ",\"error_detail\":{\"connect\":%" PRIu64 ",\"refused\":%" PRIu64
               ",\"closed\":%" PRIu64 ",\"protocol\":%" PRIu64 ",\"timeout\":%" PRIu64
               ",\"subscribe\":%" PRIu64 ",\"write\":%" PRIu64 "}}\n",
               errors, err.connect, err.refused, err.closed, err.protocol, err.timeout,
               err.subscribe, err.write);
        return;
    }
    printf("target        %s:%d, %s\n", opt.host, opt.port, opt.hold ? "hold" : "publish/subscribe");
    printf("clients       %d (%d publishers, %d subscribers), %d connected, %d failed\n",
           opt.clients, opt.publishers, opt.subscribers, connected, failed_count);
    printf("connect       p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", hq(&conn_lat, .5),
           hq(&conn_lat, .99), (double)conn_lat.max / 1e6);
    if (!opt.hold) {
        printf("load          QoS %d, %d-byte payload, rate %s, in-flight %d, %.2f s\n", opt.qos,
               opt.size, opt.rate > 0 ? "paced" : "max", opt.inflight, secs);
        if (opt.rate > 0)
            printf("              target %.0f msg/s per publisher; behind %" PRIu64 " ticks\n",
                   opt.rate, behind);
        printf("sent          %" PRIu64 " (%.0f msg/s)%s\n", sent, sent_ps, "");
        if (opt.qos == 1)
            printf("acked         %" PRIu64 ", PUBACK p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
                   acked, hq(&ack_lat, .5), hq(&ack_lat, .99), (double)ack_lat.max / 1e6);
        printf("received      %" PRIu64 " (%.0f msg/s in the window), expected %" PRIu64
               ", lost %" PRIu64 "\n",
               received, recv_ps, exp, lost);
        printf("latency       p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms\n",
               hq(&lat, .5), hq(&lat, .9), hq(&lat, .99), hq(&lat, .999), (double)lat.max / 1e6);
    }
    printf("errors        %" PRIu64 " (connect %" PRIu64 ", refused %" PRIu64 ", closed %" PRIu64
           ", protocol %" PRIu64 ", timeout %" PRIu64 ", subscribe %" PRIu64 ", write %" PRIu64 ")\n",
           errors, err.connect, err.refused, err.closed, err.protocol, err.timeout, err.subscribe,
           err.write);
}

/* ---- main ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: airgw-mqttload [options]\n"
            "\n"
            "MQTT 3.1.1 load: N clients, P publishers and S subscribers among them\n"
            "(subscriber j takes publisher j %% P's topic), the rest idle.\n"
            "\n"
            "  --host ADDR            IPv4/IPv6 address (default 127.0.0.1)\n"
            "  --port PORT            (default 1883)\n"
            "  --clients N            connections in all (default P + S, at least 1)\n"
            "  --connect-rate R       new connections per second (0: no pacing; default 0)\n"
            "  --max-pending N        connects awaiting CONNACK at once (default 512)\n"
            "  --publishers P         (default 0)\n"
            "  --subscribers S        (default 0)\n"
            "  --topic-prefix T       topics T/<publisher> (default mqttload)\n"
            "  --qos 0|1              PUBLISH and SUBSCRIBE QoS (default 0)\n"
            "  --rate R               messages/s per publisher; 0: as fast as --inflight\n"
            "                         allows (default 0)\n"
            "  --inflight W           QoS 1: unacknowledged PUBLISHes per publisher; QoS 0 at\n"
            "                         --rate 0: sent but not yet received (0: flood) (default 32)\n"
            "  --size BYTES           payload size, at least %d (default 64)\n"
            "  --duration SECONDS     publishing time, or holding time with --hold (default 10)\n"
            "  --drain SECONDS        wait this long at most for the last messages (default 2)\n"
            "  --hold                 connect N clients and keep them idle\n"
            "  --keepalive SECONDS    MQTT keep-alive; PINGREQ after half of it idle (default 60)\n"
            "  --ready-file PATH      written once every client is connected (or failed)\n"
            "  --client-id-prefix P   client ids P-<pid>-<n> (default mqttload)\n"
            "  --json                 one JSON object instead of text\n"
            "  -h, --help\n",
            HDR_BYTES);
}

static int parse_num(const char *name, const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v <= max)) {
        fprintf(stderr, "mqttload: --%s: %s is not a number in [%g, %g]\n", name, s, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

static void raise_nofile(int need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    rlim_t want = (rlim_t)need;
    if (rl.rlim_cur >= want)
        return;
    rlim_t hard = rl.rlim_max;
    rl.rlim_cur = want;
    if (rl.rlim_max < want)
        rl.rlim_max = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        return;
    rl.rlim_cur = rl.rlim_max = hard;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    fprintf(stderr,
            "mqttload: warning: open files limited to %llu (hard limit), %d wanted: some clients "
            "will fail\n",
            (unsigned long long)rl.rlim_cur, need);
}

int main(int argc, char **argv)
{
    enum {
        O_HOST = 256, O_PORT, O_CLIENTS, O_CRATE, O_PUBS, O_SUBS, O_PREFIX, O_QOS, O_RATE,
        O_SIZE, O_DUR, O_HOLD, O_JSON, O_INFL, O_KA, O_PEND, O_DRAIN, O_READY, O_IDP
    };
    static const struct option lo[] = {
        {"host", 1, 0, O_HOST},          {"port", 1, 0, O_PORT},
        {"clients", 1, 0, O_CLIENTS},    {"connect-rate", 1, 0, O_CRATE},
        {"publishers", 1, 0, O_PUBS},    {"subscribers", 1, 0, O_SUBS},
        {"topic-prefix", 1, 0, O_PREFIX}, {"qos", 1, 0, O_QOS},
        {"rate", 1, 0, O_RATE},          {"size", 1, 0, O_SIZE},
        {"duration", 1, 0, O_DUR},       {"hold", 0, 0, O_HOLD},
        {"json", 0, 0, O_JSON},          {"inflight", 1, 0, O_INFL},
        {"keepalive", 1, 0, O_KA},       {"max-pending", 1, 0, O_PEND},
        {"drain", 1, 0, O_DRAIN},        {"ready-file", 1, 0, O_READY},
        {"client-id-prefix", 1, 0, O_IDP}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0},
    };
    opt.id_prefix = "mqttload";
    int o;
    double v;
    while ((o = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        const char *name = o >= O_HOST && o <= O_IDP ? lo[o - O_HOST].name : "?";
        switch (o) {
        case O_HOST: opt.host = optarg; break;
        case O_PREFIX: opt.prefix = optarg; break;
        case O_READY: opt.ready_file = optarg; break;
        case O_IDP: opt.id_prefix = optarg; break;
        case O_HOLD: opt.hold = 1; break;
        case O_JSON: opt.json = 1; break;
        case 'h': usage(stdout); return 0;
        case O_PORT: case O_CLIENTS: case O_PUBS: case O_SUBS: case O_QOS: case O_SIZE:
        case O_INFL: case O_KA: case O_PEND: {
            double lim[][2] = {
                [O_PORT - O_HOST] = {1, 65535}, [O_CLIENTS - O_HOST] = {0, 1000000},
                [O_PUBS - O_HOST] = {0, 100000}, [O_SUBS - O_HOST] = {0, 100000},
                [O_QOS - O_HOST] = {0, 1}, [O_SIZE - O_HOST] = {HDR_BYTES, MAX_PKT / 2},
                [O_INFL - O_HOST] = {0, 16384}, [O_KA - O_HOST] = {0, 65535},
                [O_PEND - O_HOST] = {1, 1000000},
            };
            if (parse_num(name, optarg, lim[o - O_HOST][0], lim[o - O_HOST][1], &v) < 0)
                return 1;
            if (v != floor(v)) {
                fprintf(stderr, "mqttload: --%s wants an integer\n", name);
                return 1;
            }
            int iv = (int)v;
            if (o == O_PORT) opt.port = iv;
            else if (o == O_CLIENTS) opt.clients = iv;
            else if (o == O_PUBS) opt.publishers = iv;
            else if (o == O_SUBS) opt.subscribers = iv;
            else if (o == O_QOS) opt.qos = iv;
            else if (o == O_SIZE) opt.size = iv;
            else if (o == O_INFL) opt.inflight = iv;
            else if (o == O_KA) opt.keepalive = iv;
            else opt.max_pending = iv;
            break;
        }
        case O_CRATE:
            if (parse_num(name, optarg, 0, 1e7, &opt.connect_rate) < 0)
                return 1;
            break;
        case O_RATE:
            if (parse_num(name, optarg, 0, 1e7, &opt.rate) < 0)
                return 1;
            break;
        case O_DUR:
            if (parse_num(name, optarg, 0, 1e6, &opt.duration) < 0)
                return 1;
            break;
        case O_DRAIN:
            if (parse_num(name, optarg, 0, 3600, &opt.drain) < 0)
                return 1;
            break;
        default:
            usage(stderr);
            return 1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mqttload: unexpected argument %s\n", argv[optind]);
        return 1;
    }
    if (opt.hold) {
        opt.publishers = opt.subscribers = 0;
    }
    if (opt.clients == 0)
        opt.clients = opt.publishers + opt.subscribers > 0 ? opt.publishers + opt.subscribers : 1;
    if (opt.publishers + opt.subscribers > opt.clients) {
        fprintf(stderr, "mqttload: --publishers + --subscribers exceed --clients\n");
        return 1;
    }
    if (opt.subscribers > 0 && opt.publishers == 0) {
        fprintf(stderr, "mqttload: subscribers need at least one publisher\n");
        return 1;
    }
    if (strlen(opt.prefix) > 40 || strlen(opt.id_prefix) > 40) {
        fprintf(stderr, "mqttload: prefixes are limited to 40 bytes\n");
        return 1;
    }
    if (uv_ip4_addr(opt.host, opt.port, (struct sockaddr_in *)&target) != 0 &&
        uv_ip6_addr(opt.host, opt.port, (struct sockaddr_in6 *)&target) != 0) {
        fprintf(stderr, "mqttload: --host wants an IP address: %s\n", opt.host);
        return 1;
    }
    raise_nofile(opt.clients + 64);

    for (int i = 0; i < (int)sizeof(payload_pad); i++)
        payload_pad[i] = (uint8_t)('a' + i % 26);
    cl = calloc((size_t)opt.clients, sizeof(*cl));
    pubs = calloc((size_t)opt.publishers + 1, sizeof(*pubs));
    if (!cl || !pubs) {
        fprintf(stderr, "mqttload: out of memory\n");
        return 1;
    }
    /* Subscribers first (so they are subscribed when publishing starts),
     * then publishers, then the idle ones. */
    for (int i = 0; i < opt.clients; i++) {
        struct client *c = &cl[i];
        c->idx = (uint32_t)i;
        if (i < opt.subscribers) {
            c->role = R_SUB;
            c->topic = (uint32_t)(i % opt.publishers);
            pubs[c->topic].nsubs++;
        } else if (i < opt.subscribers + opt.publishers) {
            c->role = R_PUB;
            c->topic = (uint32_t)(i - opt.subscribers);
            pubs[c->topic].c = c;
        } else {
            c->role = R_IDLE;
        }
    }
    uint32_t nslots = 2;
    while (nslots < (uint32_t)opt.inflight + 1)
        nslots *= 2;
    for (int i = 0; i < opt.publishers; i++) {
        pubs[i].next_pid = 1;
        if (opt.qos == 1) {
            pubs[i].nslots = nslots;
            pubs[i].slots = calloc(nslots, sizeof(*pubs[i].slots));
            if (!pubs[i].slots) {
                fprintf(stderr, "mqttload: out of memory\n");
                return 1;
            }
        }
    }
    if (opt.qos == 1 && opt.inflight == 0) {
        fprintf(stderr, "mqttload: QoS 1 needs --inflight >= 1\n");
        return 1;
    }

    loop = uv_default_loop();
    uv_timer_init(loop, &tick);
    uv_timer_init(loop, &slow);
    uv_timer_init(loop, &phase_timer);
    uv_signal_init(loop, &sigint_h);
    uv_signal_init(loop, &sigterm_h);
    uv_signal_start(&sigint_h, on_signal, SIGINT);
    uv_signal_start(&sigterm_h, on_signal, SIGTERM);
    connect_start_ms = now_ms();
    uv_timer_start(&tick, on_tick, 0, 1);
    uv_timer_start(&slow, on_slow, 1000, 1000);
    connect_some();
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    report();
    for (int i = 0; i < opt.publishers; i++)
        free(pubs[i].slots);
    free(pubs);
    free(cl);
    uint64_t errors = err.connect + err.refused + err.closed + err.protocol + err.timeout +
                      err.subscribe + err.write;
    return errors || failed_count ? 3 : 0;
}
