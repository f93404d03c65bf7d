/*
 * airgw-cfgwatch: subscribes to a control plane's configuration stream and
 * prints every message it receives as one JSON line on stdout. Operators use
 * it to see what a data plane would see; end-to-end tests and benchmarks use
 * it as a scriptable data plane (acks, heartbeats and a stalled reader can be
 * switched off).
 *
 * One libuv loop, one TCP connection, one decoder. The process state lives in
 * one struct watch; the loop ends when every handle is closed, and main
 * returns the exit code recorded by finish():
 *   0  --count messages received, or --timeout-ms passed
 *   1  connection failed or was closed by the peer
 *   2  bad command line
 *   3  protocol error (the decoder's description goes to stderr)
 * Exits that must flush a last frame first (the final ACK, or an ERROR on a
 * protocol error) go through finish_after_flush(): a uv_shutdown waits for
 * queued writes, bounded by a one-second grace timer.
 *
 * It does not originate PINGs: a control plane's dead-peer check then sees
 * exactly what --no-pong and --stall intend (a silent data plane).
 */
#include "cfgstream.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define READ_BUF (64 * 1024)
#define FLUSH_GRACE_MS 1000
#define STALL_CHECK_MS 100

static const char usage[] =
    "usage: airgw-cfgwatch --connect HOST:PORT [--node-id ID] [--revision N] [--count N]\n"
    "                      [--timeout-ms N] [--no-ack] [--no-pong] [--stall] [--quiet]\n"
    "\n"
    "Subscribes to an airgw control plane's config stream (proto/PROTOCOL.md) and\n"
    "prints every received message as one JSON line: the body's members plus\n"
    "\"type\" and \"recv_us\" (CLOCK_REALTIME, microseconds).\n"
    "\n"
    "  --connect HOST:PORT  control plane stream address ([v6addr]:port for IPv6)\n"
    "  --node-id ID         node id sent in HELLO (default cfgwatch-<pid>)\n"
    "  --revision N         last revision held, sent in HELLO (default 0: snapshot)\n"
    "  --count N            exit 0 after N messages (PINGs not counted)\n"
    "  --timeout-ms N       exit 0 after N ms, printing nothing more\n"
    "  --no-ack             do not send ACK after SNAPSHOT_END, RESUME, PUT, DELETE\n"
    "  --no-pong            do not answer PING (the peer should declare us dead)\n"
    "  --stall              send HELLO, then never read (the peer should cut us off);\n"
    "                       exits 1 when the peer resets the connection\n"
    "  --quiet              do not print messages\n"
    "\n"
    "Exit: 0 count or timeout reached, 1 connection failed or closed, 2 usage,\n"
    "3 protocol error.\n";

/* Command line. */
struct opts {
    const char *host;    /* --connect host part (brackets stripped) */
    const char *port;    /* --connect port part */
    const char *node_id; /* --node-id, or NULL for cfgwatch-<pid> */
    int64_t revision;    /* --revision */
    int64_t count;       /* --count, 0 = unlimited */
    int64_t timeout_ms;  /* --timeout-ms, 0 = none */
    int no_ack;          /* --no-ack */
    int no_pong;         /* --no-pong */
    int stall;           /* --stall */
    int quiet;           /* --quiet */
};

/* The whole process state. */
struct watch {
    struct opts o;              /* parsed command line */
    uv_loop_t *loop;            /* the default loop */
    uv_tcp_t tcp;               /* the connection; reinitialised per address tried */
    uv_timer_t timeout;         /* --timeout-ms, then the flush grace timer */
    uv_timer_t stall_check;     /* --stall: polls the socket state */
    uv_getaddrinfo_t gai;       /* name resolution */
    uv_connect_t connect_req;   /* the pending connect */
    uv_shutdown_t shutdown_req; /* finish_after_flush */
    struct addrinfo *ai_list;   /* resolved addresses, freed at exit */
    struct addrinfo *ai_next;   /* next address to try */
    int last_connect_err;       /* libuv error of the last failed connect */
    int resolving;              /* gai is in flight */
    int connected;              /* tcp is connected */
    int tcp_open;               /* tcp is initialised and not closed */
    int finishing;              /* finish() ran: handles are closing */
    int flushing;               /* finish_after_flush() ran */
    int flush_code;             /* exit code once the flush completes */
    int exit_code;              /* main's return value */
    int in_snapshot;            /* between SNAPSHOT_BEGIN and SNAPSHOT_END */
    int64_t received;           /* messages counted towards --count */
    struct cfgs_decoder dec;    /* incoming frames */
    char rbuf[READ_BUF];        /* read buffer handed to libuv */
};

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Records the exit code and closes everything; the loop then runs dry. */
static void finish(struct watch *w, int code)
{
    if (w->finishing)
        return;
    w->finishing = 1;
    w->exit_code = code;
    w->tcp_open = 0;
    if (w->resolving)
        uv_cancel((uv_req_t *)&w->gai);
    uv_walk(w->loop, close_walk_cb, NULL);
}

static void grace_cb(uv_timer_t *t)
{
    struct watch *w = t->data;
    finish(w, w->flush_code);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct watch *w = req->data;
    (void)status;
    finish(w, w->flush_code);
}

/* Stops reading, lets queued writes go out, then exits with code. */
static void finish_after_flush(struct watch *w, int code)
{
    if (w->finishing || w->flushing)
        return;
    w->flushing = 1;
    w->flush_code = code;
    if (!w->connected || !w->tcp_open) {
        finish(w, code);
        return;
    }
    uv_read_stop((uv_stream_t *)&w->tcp);
    uv_timer_stop(&w->stall_check);
    uv_timer_stop(&w->timeout);
    uv_timer_start(&w->timeout, grace_cb, FLUSH_GRACE_MS, 0);
    w->shutdown_req.data = w;
    if (uv_shutdown(&w->shutdown_req, (uv_stream_t *)&w->tcp, shutdown_cb) != 0)
        finish(w, code);
}

static void write_cb(uv_write_t *req, int status)
{
    struct watch *w = req->handle->data;
    free(req->data);
    free(req);
    if (status < 0 && status != UV_ECANCELED && !w->finishing) {
        fprintf(stderr, "write: %s\n", uv_strerror(status));
        finish(w, 1);
    }
}

/* Queues one encoded frame; takes ownership of frame. */
static void send_frame(struct watch *w, int rc, char *frame, size_t len)
{
    if (rc < 0) {
        fprintf(stderr, "encode: %s\n", strerror(-rc));
        finish(w, 1);
        return;
    }
    if (!w->tcp_open || w->finishing || w->flushing) {
        free(frame);
        return;
    }
    uv_write_t *req = malloc(sizeof(*req));
    if (!req) {
        free(frame);
        fprintf(stderr, "out of memory\n");
        finish(w, 1);
        return;
    }
    req->data = frame;
    uv_buf_t b = uv_buf_init(frame, (unsigned)len);
    int err = uv_write(req, (uv_stream_t *)&w->tcp, &b, 1, write_cb);
    if (err < 0) {
        free(frame);
        free(req);
        fprintf(stderr, "write: %s\n", uv_strerror(err));
        finish(w, 1);
    }
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* One line: {"type":..., <body members>, "recv_us":...}. Returns 0 or -1 when
 * stdout is gone. */
static int print_msg(const struct cfgs_msg *m, int64_t recv_us)
{
    json_t *o = json_object();
    const char *k;
    json_t *v;
    int rc = 0;

    if (!o)
        return -1;
    json_object_set_new(o, "type", json_string(cfgs_type_name(m->type)));
    json_object_foreach(m->body, k, v)
    {
        if (strcmp(k, "type") != 0 && strcmp(k, "recv_us") != 0)
            json_object_set(o, k, v);
    }
    json_object_set_new(o, "recv_us", json_integer(recv_us));
    if (json_dumpf(o, stdout, JSON_COMPACT) != 0 || fputc('\n', stdout) == EOF ||
        fflush(stdout) != 0)
        rc = -1;
    json_decref(o);
    return rc;
}

static void ack(struct watch *w, int64_t revision)
{
    char *f;
    size_t n;
    if (w->o.no_ack)
        return;
    int rc = cfgs_encode_rev(CFGS_ACK, revision, &f, &n);
    send_frame(w, rc, f, n);
}

static void handle_msg(struct watch *w, const struct cfgs_msg *m, int64_t recv_us)
{
    char *f;
    size_t n;
    int rc;

    if (!w->o.quiet && print_msg(m, recv_us) < 0) {
        finish(w, 1); /* stdout closed: nobody is listening any more */
        return;
    }
    switch (m->type) {
    case CFGS_PING:
        if (!w->o.no_pong) {
            rc = cfgs_encode_ping(CFGS_PONG, m->ts, &f, &n);
            send_frame(w, rc, f, n);
        }
        return; /* not counted */
    case CFGS_SNAPSHOT_BEGIN:
        w->in_snapshot = 1;
        break;
    case CFGS_SNAPSHOT_END:
        w->in_snapshot = 0;
        ack(w, m->revision);
        break;
    case CFGS_RESUME:
        ack(w, m->revision);
        break;
    case CFGS_PUT:
    case CFGS_DELETE:
        /* Inside a snapshot nothing is applied until SNAPSHOT_END. */
        if (!w->in_snapshot)
            ack(w, m->revision);
        break;
    default:
        break;
    }
    w->received++;
    if (w->o.count && w->received >= w->o.count)
        finish_after_flush(w, 0);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct watch *w = h->data;
    (void)suggested;
    *buf = uv_buf_init(w->rbuf, sizeof(w->rbuf));
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct watch *w = s->data;
    (void)buf;
    if (nread == 0 || w->finishing || w->flushing)
        return;
    if (nread < 0) {
        if (nread == UV_EOF)
            fprintf(stderr, "connection closed by peer\n");
        else
            fprintf(stderr, "read: %s\n", uv_strerror((int)nread));
        finish(w, 1);
        return;
    }
    int64_t recv_us = now_us();
    if (cfgs_decoder_feed(&w->dec, w->rbuf, (size_t)nread) < 0) {
        fprintf(stderr, "out of memory\n");
        finish(w, 1);
        return;
    }
    for (;;) {
        struct cfgs_msg m;
        char err[256];
        int rc = cfgs_decoder_next(&w->dec, &m, err, sizeof(err));
        if (rc == 0)
            return;
        if (rc < 0) {
            char *f;
            size_t n;
            fprintf(stderr, "protocol error: %s\n", err);
            rc = cfgs_encode_error(err, &f, &n);
            if (rc == 0)
                send_frame(w, rc, f, n);
            finish_after_flush(w, 3);
            return;
        }
        handle_msg(w, &m, recv_us);
        cfgs_msg_free(&m);
        if (w->finishing || w->flushing) /* handle_msg ended the session */
            return;
    }
}

/* --stall: nothing is read, so a close shows only in the socket state. An
 * abortive close (RST) sets SO_ERROR and moves the socket to CLOSE; a FIN that
 * got through moves it to CLOSE_WAIT. */
static void stall_check_cb(uv_timer_t *t)
{
    struct watch *w = t->data;
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&w->tcp, &fd) != 0)
        return;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    struct tcp_info ti;
    socklen_t tl = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr != 0) {
        fprintf(stderr, "connection closed by peer (%s)\n", strerror(soerr));
        finish(w, 1);
    } else if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
               ti.tcpi_state != TCP_ESTABLISHED) {
        fprintf(stderr, "connection closed by peer\n");
        finish(w, 1);
    }
}

static void try_connect(struct watch *w);

static void connect_cb(uv_connect_t *req, int status)
{
    struct watch *w = req->data;
    char *f;
    size_t n;
    char host[256];
    char node_id[64];
    const char *id = w->o.node_id;

    if (w->finishing)
        return;
    if (status < 0) {
        w->last_connect_err = status;
        try_connect(w);
        return;
    }
    w->connected = 1;
    uv_tcp_nodelay(&w->tcp, 1);

    if (!id) {
        snprintf(node_id, sizeof(node_id), "cfgwatch-%ld", (long)getpid());
        id = node_id;
    }
    if (gethostname(host, sizeof(host)) != 0)
        host[0] = 0;
    host[sizeof(host) - 1] = 0;
    int rc = cfgs_encode_hello(id, w->o.revision, host[0] ? host : NULL, &f, &n);
    send_frame(w, rc, f, n);
    if (w->finishing)
        return;

    if (w->o.stall) {
        uv_timer_start(&w->stall_check, stall_check_cb, STALL_CHECK_MS, STALL_CHECK_MS);
        return;
    }
    int err = uv_read_start((uv_stream_t *)&w->tcp, alloc_cb, read_cb);
    if (err < 0) {
        fprintf(stderr, "read: %s\n", uv_strerror(err));
        finish(w, 1);
    }
}

static void retry_close_cb(uv_handle_t *h)
{
    struct watch *w = h->data;
    if (!w->finishing)
        try_connect(w);
}

/* Connects to the next resolved address; after the last one fails, exits 1. */
static void try_connect(struct watch *w)
{
    if (w->tcp_open) {
        /* a handle that failed to connect is closed before the next try */
        w->tcp_open = 0;
        uv_close((uv_handle_t *)&w->tcp, retry_close_cb);
        return;
    }
    while (w->ai_next) {
        struct addrinfo *ai = w->ai_next;
        w->ai_next = ai->ai_next;
        uv_tcp_init(w->loop, &w->tcp);
        w->tcp.data = w;
        w->tcp_open = 1;
        w->connect_req.data = w;
        int err = uv_tcp_connect(&w->connect_req, &w->tcp, ai->ai_addr, connect_cb);
        if (err == 0)
            return;
        w->last_connect_err = err;
        w->tcp_open = 0;
        uv_close((uv_handle_t *)&w->tcp, retry_close_cb);
        return;
    }
    fprintf(stderr, "connect %s:%s: %s\n", w->o.host, w->o.port,
            uv_strerror(w->last_connect_err ? w->last_connect_err : UV_EADDRNOTAVAIL));
    finish(w, 1);
}

static void resolved_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct watch *w = req->data;
    w->resolving = 0;
    if (status == UV_ECANCELED || w->finishing) {
        uv_freeaddrinfo(res);
        return;
    }
    if (status < 0) {
        fprintf(stderr, "resolve %s: %s\n", w->o.host, uv_strerror(status));
        finish(w, 1);
        return;
    }
    w->ai_list = w->ai_next = res;
    try_connect(w);
}

static void timeout_cb(uv_timer_t *t)
{
    finish(t->data, 0);
}

/* ------------------------------------------------------------------------ */
/* Command line                                                             */
/* ------------------------------------------------------------------------ */

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "airgw-cfgwatch: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (try --help)\n");
    return -1;
}

static int parse_num(const char *flag, const char *s, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < min) {
        fprintf(stderr, "airgw-cfgwatch: %s needs an integer >= %" PRId64 ", got \"%s\"\n", flag,
                min, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Splits HOST:PORT (or [V6ADDR]:PORT) in place. */
static int parse_addr(char *s, struct opts *o)
{
    char *colon = strrchr(s, ':');
    if (!colon || colon == s || !colon[1])
        return bad("--connect needs HOST:PORT, got \"%s\"", s);
    *colon = 0;
    char *port = colon + 1;
    char *end;
    long p = strtol(port, &end, 10);
    if (*end || p < 1 || p > 65535) {
        *colon = ':';
        return bad("--connect: bad port in \"%s\"", s);
    }
    if (s[0] == '[') {
        size_t l = strlen(s);
        if (l < 3 || s[l - 1] != ']') {
            *colon = ':';
            return bad("--connect: bad address \"%s\"", s);
        }
        s[l - 1] = 0;
        s++;
    }
    o->host = s;
    o->port = port;
    return 0;
}

/* Returns 0, 1 for --help, or -1 after printing a one-line error. */
static int parse_args(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof(*o));
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        char *val = NULL;
        char *eq = NULL;
        if (strncmp(a, "--", 2) == 0 && (eq = strchr(a, '=')) != NULL) {
            *eq = 0;
            val = eq + 1;
        }
#define TAKES_VALUE()                                                                              \
    do {                                                                                           \
        if (!val) {                                                                                \
            if (i + 1 >= argc)                                                                     \
                return bad("%s needs a value", a);                                                 \
            val = argv[++i];                                                                       \
        }                                                                                          \
    } while (0)
#define NO_VALUE()                                                                                 \
    do {                                                                                           \
        if (val)                                                                                   \
            return bad("%s takes no value", a);                                                    \
    } while (0)
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            NO_VALUE();
            return 1;
        } else if (strcmp(a, "--connect") == 0) {
            TAKES_VALUE();
            if (parse_addr(val, o) < 0)
                return -1;
        } else if (strcmp(a, "--node-id") == 0) {
            TAKES_VALUE();
            if (!*val)
                return bad("%s must not be empty", a);
            o->node_id = val;
        } else if (strcmp(a, "--revision") == 0) {
            TAKES_VALUE();
            if (parse_num(a, val, 0, &o->revision) < 0)
                return -1;
        } else if (strcmp(a, "--count") == 0) {
            TAKES_VALUE();
            if (parse_num(a, val, 1, &o->count) < 0)
                return -1;
        } else if (strcmp(a, "--timeout-ms") == 0) {
            TAKES_VALUE();
            if (parse_num(a, val, 1, &o->timeout_ms) < 0)
                return -1;
        } else if (strcmp(a, "--no-ack") == 0) {
            NO_VALUE();
            o->no_ack = 1;
        } else if (strcmp(a, "--no-pong") == 0) {
            NO_VALUE();
            o->no_pong = 1;
        } else if (strcmp(a, "--stall") == 0) {
            NO_VALUE();
            o->stall = 1;
        } else if (strcmp(a, "--quiet") == 0) {
            NO_VALUE();
            o->quiet = 1;
        } else {
            return bad("unknown argument \"%s\"", a);
        }
#undef TAKES_VALUE
#undef NO_VALUE
    }
    if (!o->host)
        return bad("%s", "--connect HOST:PORT is required");
    return 0;
}

int main(int argc, char **argv)
{
    static struct watch w;

    int rc = parse_args(argc, argv, &w.o);
    if (rc == 1) {
        fputs(usage, stdout);
        return 0;
    }
    if (rc < 0)
        return 2;

    signal(SIGPIPE, SIG_IGN); /* a closed socket or stdout is an error return */
    w.loop = uv_default_loop();
    cfgs_decoder_init(&w.dec);
    uv_timer_init(w.loop, &w.timeout);
    w.timeout.data = &w;
    uv_timer_init(w.loop, &w.stall_check);
    w.stall_check.data = &w;
    if (w.o.timeout_ms)
        uv_timer_start(&w.timeout, timeout_cb, (uint64_t)w.o.timeout_ms, 0);

    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    w.gai.data = &w;
    int err = uv_getaddrinfo(w.loop, &w.gai, resolved_cb, w.o.host, w.o.port, &hints);
    if (err < 0) {
        fprintf(stderr, "resolve %s: %s\n", w.o.host, uv_strerror(err));
        finish(&w, 1);
    } else {
        w.resolving = 1;
    }

    uv_run(w.loop, UV_RUN_DEFAULT);
    if (w.ai_list)
        uv_freeaddrinfo(w.ai_list);
    cfgs_decoder_free(&w.dec);
    uv_loop_close(w.loop);
    return w.exit_code;
}
