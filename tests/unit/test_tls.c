/*
 * test_tls: the TLS layer (dataplane/tls.c): certificate stores built from
 * ssl resources, SNI selection, mTLS, ALPN, resumption, upstream contexts,
 * and the in-memory engine on both sides.
 *
 * Certificates are made at start with the openssl command line into a
 * temporary directory (a CA, an intermediate CA, server certificates for
 * a.example.com, *.example.com and a dual RSA/ECDSA name, client
 * certificates signed by the CA, by the intermediate and by an unknown CA,
 * an expired one). A server tls_conn and a client tls_conn talk through
 * their buffers: what one produces is fed to the other, no sockets. The
 * .c is included to reach a connection's SSL for a few client settings.
 */
#include "tls.c"

#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static char dir[64];

/* ---- certificates ---- */

static const char gen_script[] =
    "set -e\n"
    "cd \"$1\"\n"
    "ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key "
    "-out $1.csr -subj \"$2\" 2>/dev/null; }\n"
    "sign() { openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -out $1.crt "
    "-days $3 -extfile $1.ext 2>/dev/null; }\n"
    "ca() { openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $1.key "
    "-out $1.crt -days 3650 -subj \"$2\" -addext basicConstraints=critical,CA:TRUE "
    "-addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null; }\n"
    "ca ca '/CN=airgw test CA'\n"
    "ca other '/CN=someone else CA'\n"
    "printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > "
    "inter.ext\n"
    "ec inter '/CN=airgw test intermediate'; sign inter ca 3650\n"
    "srv() { printf 'subjectAltName=%s\\nextendedKeyUsage=serverAuth\\n' \"$3\" > $1.ext; "
    "ec $1 \"$2\"; sign $1 ca 365; }\n"
    "srv a '/CN=a.example.com/O=v1' DNS:a.example.com\n"
    "srv a2 '/CN=a.example.com/O=v2' DNS:a.example.com\n"
    "srv wild '/CN=*.example.com' 'DNS:*.example.com'\n"
    "srv ip '/CN=127.0.0.1' IP:127.0.0.1\n"
    "srv dualec '/CN=dual.example.com/O=ecdsa' DNS:dual.example.com\n"
    "printf 'subjectAltName=DNS:dual.example.com\\n' > dualrsa.ext\n"
    "openssl req -newkey rsa:2048 -nodes -keyout dualrsa.key -out dualrsa.csr "
    "-subj '/CN=dual.example.com/O=rsa' 2>/dev/null; sign dualrsa ca 365\n"
    "cli() { printf 'subjectAltName=%s\\nextendedKeyUsage=clientAuth\\n' \"$4\" > $1.ext; "
    "ec $1 \"$2\"; sign $1 $3 $5; }\n"
    "cli dev '/CN=device-1/O=airgw test' ca 'DNS:device-1.example.com, "
    "email:dev@example.com, URI:spiffe://airgw/device-1, IP:10.0.0.1' 365\n"
    "cli rogue '/CN=rogue' other DNS:rogue.example.com 365\n"
    "cli deep '/CN=deep' inter DNS:deep.example.com 365\n"
    "cli old '/CN=old' ca DNS:old.example.com -1\n"
    "cat deep.crt inter.crt > deepchain.crt\n"
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout self.key "
    "-out self.crt -days 365 -subj '/CN=a.example.com' -addext "
    "subjectAltName=DNS:a.example.com 2>/dev/null\n";

static char *slurp(const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n)
        exit(2);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* A file's content as a JSON string. */
static json_t *jfile(const char *name)
{
    char *s = slurp(name);
    json_t *j = json_string(s);
    free(s);
    return j;
}

static int gen_certs(void)
{
    snprintf(dir, sizeof(dir), "/tmp/airgw-tls-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    char path[128];
    snprintf(path, sizeof(path), "%s/gen.sh", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(gen_script, f);
    fclose(f);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "sh %s %s", path, dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void rm_certs(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

/* ---- configuration ---- */

/* An ssl resource: name is the file stem of its cert/key; snis is a
 * comma-separated list; ca a file stem or NULL. */
static json_t *ssl_conf(const char *name, const char *snis, const char *ca, int depth)
{
    char fn[64];
    json_t *o = json_object();
    snprintf(fn, sizeof(fn), "%s.crt", name);
    json_object_set_new(o, "cert", jfile(fn));
    snprintf(fn, sizeof(fn), "%s.key", name);
    json_object_set_new(o, "key", jfile(fn));
    json_t *arr = json_array();
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", snis);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
        json_array_append_new(arr, json_string(t));
    json_object_set_new(o, "snis", arr);
    if (ca) {
        snprintf(fn, sizeof(fn), "%s.crt", ca);
        json_t *c = json_object();
        json_object_set_new(c, "ca", jfile(fn));
        if (depth >= 0)
            json_object_set_new(c, "depth", json_integer(depth));
        json_object_set_new(o, "client", c);
    }
    return o;
}

static void put(json_t *res, const char *id, json_t *ssl)
{
    char key[64];
    snprintf(key, sizeof(key), "/apisix/ssls/%s", id);
    json_object_set_new(res, key, ssl);
}

static char *path_of(const char *name)
{
    static char p[4][256];
    static int i;
    i = (i + 1) % 4;
    snprintf(p[i], sizeof(p[i]), "%s/%s", dir, name);
    return p[i];
}

/* An upstream conf with tls options. */
static json_t *upstream(bool verify, const char *cert, const char *cert_id)
{
    json_t *tls = json_object();
    json_object_set_new(tls, "verify", json_boolean(verify));
    if (cert) {
        char fn[64];
        snprintf(fn, sizeof(fn), "%s.crt", cert);
        json_object_set_new(tls, "client_cert", jfile(fn));
        snprintf(fn, sizeof(fn), "%s.key", cert);
        json_object_set_new(tls, "client_key", jfile(fn));
    }
    if (cert_id)
        json_object_set_new(tls, "client_cert_id", json_string(cert_id));
    json_t *up = json_object();
    json_object_set_new(up, "scheme", json_string("https"));
    json_object_set_new(up, "tls", tls);
    return up;
}

/* ---- driving a pair ---- */

static size_t xfer(struct tls_conn *from, struct tls_conn *to)
{
    const char *d;
    size_t n = tls_conn_out(from, &d);
    if (n) {
        if (tls_conn_feed(to, d, n) < 0)
            return 0;
        tls_conn_out_consume(from, n);
    }
    return n;
}

/* Runs the handshake of c (client) and s (server). 0 when both finished;
 * -1 when one failed (its alert delivered to the other side). */
static int handshake(struct tls_conn *c, struct tls_conn *s)
{
    for (int i = 0; i < 16; i++) {
        int rc = tls_conn_handshake(c);
        xfer(c, s);
        int rs = tls_conn_handshake(s);
        xfer(s, c);
        if (rc == 0 && rs == 0)
            return 0;
        if ((rc < 0 && rc != -EAGAIN) || (rs < 0 && rs != -EAGAIN)) {
            /* A TLS 1.3 client is done before the server checked its
             * certificate: it learns of the failure on its next read. */
            char b[16];
            tls_conn_read(c, b, sizeof(b));
            xfer(c, s);
            tls_conn_read(s, b, sizeof(b));
            return -1;
        }
    }
    return -2;
}

/* Lets post-handshake messages through: BoringSSL sends its TLS 1.3
 * session tickets with the server's first application data, so the server
 * writes a byte which the client reads. */
static void settle(struct tls_conn *c, struct tls_conn *s)
{
    char b[64];
    tls_conn_write(s, "t", 1);
    for (int i = 0; i < 3; i++) {
        xfer(s, c);
        tls_conn_read(c, b, sizeof(b));
        xfer(c, s);
        tls_conn_read(s, b, sizeof(b));
    }
}

struct pair {
    struct tls_conn *c, *s;
};

static struct pair connect_pair(struct tls_ctx_store *st, struct tls_client_ctx *cc,
                                const char *sni, const char *salpn, const char *calpn,
                                const struct tls_session *resume)
{
    struct pair p;
    p.s = tls_conn_new_server(st, salpn);
    p.c = tls_conn_new_client(cc, sni, calpn, resume);
    return p;
}

static void pair_free(struct pair *p)
{
    tls_conn_free(p->c);
    tls_conn_free(p->s);
}

/* Sends n bytes from a to b through the engine; returns what b read. */
static size_t pass(struct tls_conn *a, struct tls_conn *b, const char *data, size_t n, char *out,
                   size_t cap)
{
    size_t got = 0, sent = 0;
    while (sent < n || tls_conn_buffered(a) || tls_conn_buffered(b)) {
        size_t k = n - sent > 200000 ? 200000 : n - sent;
        if (k && tls_conn_write(a, data + sent, k) == 0)
            sent += k;
        else if (k)
            return got;
        xfer(a, b);
        long r;
        while ((r = tls_conn_read(b, out + got, cap - got > 16384 ? 16384 : cap - got)) > 0)
            got += (size_t)r;
        xfer(b, a);
        if (r != -EAGAIN || (k == 0 && !tls_conn_buffered(a) && !tls_conn_buffered(b)))
            break;
    }
    return got;
}

/* Plain client context, no verification, no certificate. */
static struct tls_client_ctx *plain_client(struct tls_ctx_store *st)
{
    char err[256];
    json_t *up = upstream(false, NULL, NULL);
    struct tls_client_ctx *cc = tls_ctx_store_client(st, up, NULL, err, sizeof(err));
    json_decref(up);
    return cc;
}

static struct tls_ctx_store *store_of(json_t *res, struct tls_ctx_store *prev)
{
    return tls_ctx_store_build(res, prev, path_of("ca.crt"));
}

/* The standard store: a.example.com, *.example.com, mtls.example.com
 * (client CA), deep0/deep1.example.com (depths 0 and 1). */
static json_t *std_resources(void)
{
    json_t *res = json_object();
    put(res, "1", ssl_conf("wild", "*.example.com", NULL, -1));
    put(res, "2", ssl_conf("a", "a.example.com", NULL, -1));
    put(res, "3", ssl_conf("a", "mtls.example.com", "ca", -1));
    put(res, "4", ssl_conf("a", "deep0.example.com", "ca", 0));
    put(res, "5", ssl_conf("a", "deep1.example.com", "ca", 1));
    return res;
}

static int peer(int (*fn)(const struct tls_conn *, char *, size_t), const struct tls_conn *t,
                char *buf, size_t len)
{
    buf[0] = '\0';
    return fn(t, buf, len);
}

/* ---- tests ---- */

static void test_sni_selection(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    REQUIRE(st);
    CHECK(tls_ctx_store_count(st) == 5);
    CHECK_STREQ(tls_ctx_store_match(st, "a.example.com"), "2");
    CHECK_STREQ(tls_ctx_store_match(st, "A.Example.COM"), "2");
    CHECK_STREQ(tls_ctx_store_match(st, "b.example.com"), "1");
    CHECK(tls_ctx_store_match(st, "example.com") == NULL);
    CHECK(tls_ctx_store_match(st, "x.b.example.com") == NULL);
    CHECK(tls_ctx_store_match(st, ".example.com") == NULL);
    CHECK(tls_ctx_store_match(st, NULL) == NULL);

    struct tls_client_ctx *cc = plain_client(st);
    REQUIRE(cc);
    const char *names[] = {"a.example.com", "b.example.com"};
    const char *ids[] = {"2", "1"};
    const char *cns[] = {"a.example.com", "*.example.com"};
    for (int i = 0; i < 2; i++) {
        struct pair p = connect_pair(st, cc, names[i], TLS_ALPN_HTTP1, NULL, NULL);
        CHECK(handshake(p.c, p.s) == 0);
        CHECK_STREQ(tls_conn_ssl_id(p.s), ids[i]);
        CHECK_STREQ(tls_conn_sni(p.s), names[i]);
        char buf[256];
        CHECK(peer(tls_conn_peer_cn, p.c, buf, sizeof(buf)) > 0);
        CHECK_STREQ(buf, cns[i]);
        CHECK_STREQ(tls_conn_version(p.s), "TLSv1.3");
        /* no mTLS: no client certificate */
        CHECK(peer(tls_conn_peer_subject, p.s, buf, sizeof(buf)) == -ENOENT);
        pair_free(&p);
    }
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_unknown_sni_refused(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    const char *names[] = {"nope.example.org", "x.y.example.com", NULL, "127.0.0.1"};
    for (int i = 0; i < 4; i++) {
        struct pair p = connect_pair(st, cc, names[i], TLS_ALPN_HTTP1, NULL, NULL);
        CHECK(handshake(p.c, p.s) == -1);
        CHECK(tls_conn_failure(p.s) == TLS_FAIL_UNKNOWN_SNI);
        CHECK(tls_conn_failure(p.c) == TLS_FAIL_PEER_ALERT);
        CHECK_CONTAINS(tls_conn_error(p.c), "UNRECOGNIZED_NAME");
        CHECK(tls_conn_ssl_id(p.s) == NULL);
        char b[16];
        CHECK(tls_conn_read(p.s, b, sizeof(b)) == -EPROTO);
        CHECK(tls_conn_write(p.c, "x", 1) == -EPROTO);
        pair_free(&p);
    }
    /* An ssl with sni "*" catches every name (not a missing one). */
    put(res, "9", ssl_conf("wild", "*", NULL, -1));
    struct tls_ctx_store *st2 = store_of(res, st);
    CHECK_STREQ(tls_ctx_store_match(st2, "nope.example.org"), "9");
    CHECK_STREQ(tls_ctx_store_match(st2, "a.example.com"), "2");
    CHECK(tls_ctx_store_match(st2, NULL) == NULL);
    tls_ctx_store_unref(st);
    tls_ctx_store_unref(st2);
    json_decref(res);
}

static void test_disabled_and_bad_ssls(void)
{
    json_t *res = json_object();
    json_t *off = ssl_conf("a", "off.example.com", NULL, -1);
    json_object_set_new(off, "status", json_integer(0));
    put(res, "1", off);
    json_t *cli = ssl_conf("dev", "client.example.com", NULL, -1);
    json_object_set_new(cli, "type", json_string("client"));
    put(res, "2", cli);
    json_t *bad = ssl_conf("a", "bad.example.com", NULL, -1);
    json_object_set_new(bad, "key", jfile("wild.key")); /* not its key */
    put(res, "3", bad);
    json_t *garbage = ssl_conf("a", "garbage.example.com", NULL, -1);
    json_object_set_new(garbage, "cert",
                        json_string("-----BEGIN CERTIFICATE-----\nAAAA\n"
                                    "-----END CERTIFICATE-----\n"));
    put(res, "4", garbage);
    put(res, "5", ssl_conf("a", "ok.example.com", NULL, -1));
    /* the first ssl by key wins a name claimed twice */
    put(res, "6", ssl_conf("wild", "ok.example.com", NULL, -1));
    json_t *single = ssl_conf("a", "x", NULL, -1);
    json_object_del(single, "snis");
    json_object_set_new(single, "sni", json_string("single.example.com"));
    put(res, "7", single);
    struct tls_ctx_store *st = store_of(res, NULL);
    REQUIRE(st);
    CHECK(tls_ctx_store_count(st) == 3);
    CHECK(tls_ctx_store_match(st, "off.example.com") == NULL);
    CHECK(tls_ctx_store_match(st, "client.example.com") == NULL);
    CHECK(tls_ctx_store_match(st, "bad.example.com") == NULL);
    CHECK(tls_ctx_store_match(st, "garbage.example.com") == NULL);
    CHECK_STREQ(tls_ctx_store_match(st, "ok.example.com"), "5");
    CHECK_STREQ(tls_ctx_store_match(st, "single.example.com"), "7");
    tls_ctx_store_unref(st);
    json_decref(res);
}

/* Client context with a client certificate (file stem, or a chain file). */
static struct tls_client_ctx *cert_client(struct tls_ctx_store *st, const char *crt,
                                          const char *key)
{
    char err[256];
    json_t *up = upstream(false, NULL, NULL);
    json_t *tls = json_object_get(up, "tls");
    json_object_set_new(tls, "client_cert", jfile(crt));
    json_object_set_new(tls, "client_key", jfile(key));
    struct tls_client_ctx *cc = tls_ctx_store_client(st, up, NULL, err, sizeof(err));
    if (!cc)
        fprintf(stderr, "  client ctx: %s\n", err);
    json_decref(up);
    return cc;
}

static void test_mtls(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    REQUIRE(st);
    char buf[512];

    /* accepted, with the subject and SANs exposed */
    struct tls_client_ctx *cc = cert_client(st, "dev.crt", "dev.key");
    REQUIRE(cc);
    struct pair p = connect_pair(st, cc, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK_STREQ(tls_conn_ssl_id(p.s), "3");
    CHECK(peer(tls_conn_peer_subject, p.s, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "O=airgw test,CN=device-1");
    CHECK(peer(tls_conn_peer_cn, p.s, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "device-1");
    CHECK(peer(tls_conn_peer_sans, p.s, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "DNS:device-1.example.com, email:dev@example.com, "
                     "URI:spiffe://airgw/device-1, IP:10.0.0.1");
    CHECK(tls_conn_peer_cn(p.s, buf, 4) == -ENOSPC);
    CHECK_STREQ(buf, "dev");
    /* the server's own view is unchanged for the client */
    CHECK(peer(tls_conn_peer_cn, p.c, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "a.example.com");
    char out[8];
    CHECK(pass(p.c, p.s, "hello", 5, out, sizeof(out)) == 5);
    pair_free(&p);

    /* no certificate */
    struct tls_client_ctx *none = plain_client(st);
    p = connect_pair(st, none, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_NO_PEER_CERT);
    CHECK(tls_conn_failure(p.c) == TLS_FAIL_PEER_ALERT);
    pair_free(&p);

    /* a certificate from another CA */
    struct tls_client_ctx *rogue = cert_client(st, "rogue.crt", "rogue.key");
    p = connect_pair(st, rogue, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_VERIFY);
    CHECK_CONTAINS(tls_conn_error(p.s), "unable to get local issuer certificate");
    pair_free(&p);

    /* expired */
    struct tls_client_ctx *old = cert_client(st, "old.crt", "old.key");
    p = connect_pair(st, old, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_VERIFY);
    CHECK_CONTAINS(tls_conn_error(p.s), "expired");
    pair_free(&p);

    /* a chain through an intermediate: depth 0 refuses it, 1 takes it */
    struct tls_client_ctx *deep = cert_client(st, "deepchain.crt", "deep.key");
    REQUIRE(deep);
    p = connect_pair(st, deep, "deep0.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_VERIFY);
    CHECK_CONTAINS(tls_conn_error(p.s), "unable to get local issuer certificate");
    pair_free(&p);
    p = connect_pair(st, deep, "deep1.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(peer(tls_conn_peer_cn, p.s, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "deep");
    pair_free(&p);
    /* the default depth (1) takes it too; the device certificate passes
     * depth 0 (signed by the CA itself) */
    p = connect_pair(st, deep, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    pair_free(&p);
    p = connect_pair(st, cc, "deep0.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    pair_free(&p);

    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_alpn(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    size_t len;
    const char *a;

    struct pair p =
        connect_pair(st, cc, "a.example.com", TLS_ALPN_HTTP1, "\x02h2\x08http/1.1", NULL);
    CHECK(handshake(p.c, p.s) == 0);
    a = tls_conn_alpn(p.s, &len);
    CHECK(len == 8 && memcmp(a, "http/1.1", 8) == 0);
    a = tls_conn_alpn(p.c, &len);
    CHECK(len == 8 && memcmp(a, "http/1.1", 8) == 0);
    pair_free(&p);

    p = connect_pair(st, cc, "a.example.com", TLS_ALPN_HTTP1, "\x02h2", NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_NO_ALPN);
    CHECK_CONTAINS(tls_conn_error(p.c), "NO_APPLICATION_PROTOCOL");
    pair_free(&p);

    p = connect_pair(st, cc, "a.example.com", TLS_ALPN_HTTP1, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    tls_conn_alpn(p.s, &len);
    CHECK(len == 0);
    pair_free(&p);

    /* a listener without ALPN ignores the client's */
    p = connect_pair(st, cc, "a.example.com", NULL, "\x04mqtt", NULL);
    CHECK(handshake(p.c, p.s) == 0);
    tls_conn_alpn(p.c, &len);
    CHECK(len == 0);
    pair_free(&p);
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void resumption_round(struct tls_ctx_store *st, struct tls_client_ctx *cc, uint16_t maxv)
{
    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    if (maxv)
        SSL_set_max_proto_version(p.c->ssl, maxv);
    CHECK(handshake(p.c, p.s) == 0);
    settle(p.c, p.s);
    CHECK(!tls_conn_resumed(p.s));
    struct tls_session *sess = tls_conn_session(p.c);
    CHECK(sess != NULL);
    pair_free(&p);

    /* the same server name resumes; so does another name of the same ssl */
    p = connect_pair(st, cc, "a.example.com", NULL, NULL, sess);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(tls_conn_resumed(p.s));
    CHECK(tls_conn_resumed(p.c));
    CHECK_STREQ(tls_conn_ssl_id(p.s), "2");
    pair_free(&p);

    /* another ssl (another certificate) does not */
    p = connect_pair(st, cc, "b.example.com", NULL, NULL, sess);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(!tls_conn_resumed(p.s));
    CHECK_STREQ(tls_conn_ssl_id(p.s), "1");
    pair_free(&p);
    tls_session_free(sess);
}

static void test_resumption(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    resumption_round(st, cc, 0);
    resumption_round(st, cc, TLS1_2_VERSION);

    /* mTLS: the resumed session still carries the client's identity */
    struct tls_client_ctx *dev = cert_client(st, "dev.crt", "dev.key");
    struct pair p = connect_pair(st, dev, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    settle(p.c, p.s);
    struct tls_session *sess = tls_conn_session(p.c);
    pair_free(&p);
    p = connect_pair(st, dev, "mtls.example.com", NULL, NULL, sess);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(tls_conn_resumed(p.s));
    char buf[128];
    CHECK(peer(tls_conn_peer_cn, p.s, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "device-1");
    pair_free(&p);

    /* a new store with the same ssls (a route changed) still resumes; a
     * changed certificate does not */
    struct tls_ctx_store *st2 = store_of(res, st);
    p = connect_pair(st2, dev, "mtls.example.com", NULL, NULL, sess);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(tls_conn_resumed(p.s));
    pair_free(&p);
    put(res, "3", ssl_conf("a2", "mtls.example.com", "ca", -1));
    struct tls_ctx_store *st3 = store_of(res, st2);
    p = connect_pair(st3, dev, "mtls.example.com", NULL, NULL, sess);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(!tls_conn_resumed(p.s));
    pair_free(&p);
    tls_session_free(sess);
    tls_ctx_store_unref(st);
    tls_ctx_store_unref(st2);
    tls_ctx_store_unref(st3);
    json_decref(res);
}

static void test_large_transfer(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    REQUIRE(handshake(p.c, p.s) == 0);
    size_t n = 4u << 20;
    char *data = malloc(n), *out = malloc(n);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        data[i] = (char)(x >> 16);
    }
    CHECK(pass(p.c, p.s, data, n, out, n) == n);
    CHECK(memcmp(data, out, n) == 0);
    memset(out, 0, n);
    CHECK(pass(p.s, p.c, data, n, out, n) == n);
    CHECK(memcmp(data, out, n) == 0);

    /* gathered small pieces arrive in order */
    uv_buf_t v[5] = {uv_buf_init("ab", 2), uv_buf_init(data, 5000), uv_buf_init("\r\n", 2),
                     uv_buf_init("", 0), uv_buf_init("z", 1)};
    CHECK(tls_conn_writev(p.c, v, 5) == 0);
    xfer(p.c, p.s);
    size_t got = 0;
    long r;
    while ((r = tls_conn_read(p.s, out + got, n - got)) > 0)
        got += (size_t)r;
    CHECK(r == -EAGAIN);
    CHECK(got == 5005);
    CHECK(memcmp(out, "ab", 2) == 0 && memcmp(out + 2, data, 5000) == 0 &&
          memcmp(out + 5002, "\r\nz", 3) == 0);

    /* more than the output bound at once: refused, the connection lives */
    size_t big = TLS_MAX_PENDING_OUT + 1;
    char *huge = calloc(1, big);
    CHECK(tls_conn_write(p.c, huge, big) == -ENOBUFS);
    CHECK(tls_conn_failure(p.c) == TLS_FAIL_NONE);
    CHECK(pass(p.c, p.s, "ok", 2, out, n) == 2);
    /* idle: nothing held in the engine's buffers */
    CHECK(tls_conn_buffered(p.c) == 0 && tls_conn_buffered(p.s) == 0);
    free(huge);
    free(data);
    free(out);
    pair_free(&p);
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_certificate_swap(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    char buf[256], out[64];
    struct pair old = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    CHECK(handshake(old.c, old.s) == 0);
    CHECK(peer(tls_conn_peer_subject, old.c, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "O=v1,CN=a.example.com");

    /* a handshake still in progress keeps the store it started with */
    struct pair mid = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);

    put(res, "2", ssl_conf("a2", "a.example.com", NULL, -1));
    struct tls_ctx_store *st2 = store_of(res, st);
    tls_ctx_store_unref(st); /* the worker drops the old store */
    struct pair neu = connect_pair(st2, cc, "a.example.com", NULL, NULL, NULL);
    CHECK(handshake(neu.c, neu.s) == 0);
    CHECK(peer(tls_conn_peer_subject, neu.c, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "O=v2,CN=a.example.com");
    CHECK(handshake(mid.c, mid.s) == 0);
    CHECK(peer(tls_conn_peer_subject, mid.c, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "O=v1,CN=a.example.com");

    /* the old connection keeps working both ways */
    CHECK(pass(old.c, old.s, "ping", 4, out, sizeof(out)) == 4);
    CHECK(pass(old.s, old.c, "pong", 4, out, sizeof(out)) == 4);
    CHECK(memcmp(out, "pong", 4) == 0);
    CHECK(peer(tls_conn_peer_subject, old.c, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "O=v1,CN=a.example.com");

    /* an ssl deleted: its names are refused from then on */
    json_object_del(res, "/apisix/ssls/2");
    struct tls_ctx_store *st3 = store_of(res, st2);
    CHECK_STREQ(tls_ctx_store_match(st3, "a.example.com"), "1"); /* the wildcard now */
    json_object_del(res, "/apisix/ssls/1");
    struct tls_ctx_store *st4 = store_of(res, st3);
    CHECK(tls_ctx_store_match(st4, "a.example.com") == NULL);
    struct pair gone = connect_pair(st4, cc, "a.example.com", NULL, NULL, NULL);
    CHECK(handshake(gone.c, gone.s) == -1);
    CHECK(tls_conn_failure(gone.s) == TLS_FAIL_UNKNOWN_SNI);
    pair_free(&gone);
    tls_ctx_store_unref(st2);
    tls_ctx_store_unref(st3);
    CHECK(pass(neu.c, neu.s, "still", 5, out, sizeof(out)) == 5);
    pair_free(&neu);
    pair_free(&mid);
    pair_free(&old);
    tls_ctx_store_unref(st4);
    json_decref(res);
}

static void test_bad_input(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    char b[64];

    /* garbage instead of a ClientHello */
    struct tls_conn *s = tls_conn_new_server(st, TLS_ALPN_HTTP1);
    CHECK(tls_conn_feed(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27) == 0);
    CHECK(tls_conn_read(s, b, sizeof(b)) == -EPROTO);
    CHECK(tls_conn_failure(s) == TLS_FAIL_PROTOCOL);
    CHECK(tls_conn_error(s)[0] != '\0');
    CHECK(tls_conn_feed(s, "x", 1) == -EPROTO);
    tls_conn_free(s);

    /* a record header announcing an impossible length */
    s = tls_conn_new_server(st, NULL);
    CHECK(tls_conn_feed(s, "\x16\x03\x01\xff\xff", 5) == 0);
    CHECK(tls_conn_handshake(s) == -EPROTO);
    tls_conn_free(s);

    /* a ClientHello cut short: more input is needed, nothing fails */
    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    const char *d;
    size_t n = tls_conn_out(p.c, &d);
    CHECK(n > 10);
    CHECK(tls_conn_feed(p.s, d, n / 2) == 0);
    CHECK(tls_conn_handshake(p.s) == -EAGAIN);
    pair_free(&p);

    /* garbage after the handshake: a clean error on that side */
    p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    settle(p.c, p.s);
    CHECK(tls_conn_feed(p.s, "\x17\x03\x03\x00\x20garbage-garbage-garbage-garbage", 37) == 0);
    CHECK(tls_conn_read(p.s, b, sizeof(b)) == -EPROTO);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_PROTOCOL);
    /* the alert reaches the client */
    xfer(p.s, p.c);
    CHECK(tls_conn_read(p.c, b, sizeof(b)) == -EPROTO);
    CHECK(tls_conn_failure(p.c) == TLS_FAIL_PEER_ALERT);
    pair_free(&p);

    /* too much unread input */
    s = tls_conn_new_server(st, NULL);
    char *big = calloc(1, TLS_MAX_PENDING_IN + 1);
    CHECK(tls_conn_feed(s, big, TLS_MAX_PENDING_IN + 1) == -ENOBUFS);
    free(big);
    tls_conn_free(s);

    /* random bytes in many sizes never crash */
    uint32_t x = 7;
    for (int round = 0; round < 200; round++) {
        s = tls_conn_new_server(st, TLS_ALPN_HTTP1);
        char junk[512];
        size_t jl = 1 + (size_t)round * 2;
        for (size_t i = 0; i < jl; i++) {
            x = x * 1103515245u + 12345u;
            junk[i] = (char)(x >> 16);
        }
        if (round % 2)
            memcpy(junk, "\x16\x03\x01", 3); /* a handshake record header */
        tls_conn_feed(s, junk, jl);
        long r = tls_conn_read(s, b, sizeof(b));
        CHECK(r == -EAGAIN || r == -EPROTO);
        tls_conn_free(s);
    }
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_shutdown(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    char b[64];
    CHECK(handshake(p.c, p.s) == 0);
    /* the client closes its side; the server sees EOF and can still send */
    CHECK(tls_conn_shutdown(p.c) == 0);
    CHECK(tls_conn_write(p.c, "x", 1) == -EPIPE);
    xfer(p.c, p.s);
    CHECK(tls_conn_read(p.s, b, sizeof(b)) == 0);
    CHECK(tls_conn_read(p.s, b, sizeof(b)) == 0);
    CHECK(tls_conn_write(p.s, "bye", 3) == 0);
    xfer(p.s, p.c);
    long r = tls_conn_read(p.c, b, sizeof(b));
    CHECK(r == 3 && memcmp(b, "bye", 3) == 0);
    CHECK(tls_conn_shutdown(p.s) == 0);
    xfer(p.s, p.c);
    CHECK(tls_conn_read(p.c, b, sizeof(b)) == 0);
    pair_free(&p);

    /* early data: written before the handshake, sent right after it */
    p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    CHECK(tls_conn_write(p.c, "early", 5) == 0);
    CHECK(handshake(p.c, p.s) == 0);
    xfer(p.c, p.s);
    r = tls_conn_read(p.s, b, sizeof(b));
    CHECK(r == 5 && memcmp(b, "early", 5) == 0);
    pair_free(&p);
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_upstream_verify(void)
{
    json_t *res = std_resources();
    put(res, "8", ssl_conf("self", "self.example.com", NULL, -1));
    put(res, "10", ssl_conf("ip", "ip.example.com", NULL, -1));
    struct tls_ctx_store *st = store_of(res, NULL);
    char err[256];
    json_t *up = upstream(true, NULL, NULL);
    struct tls_client_ctx *cc = tls_ctx_store_client(st, up, res, err, sizeof(err));
    REQUIRE(cc);
    CHECK(tls_ctx_store_client(st, up, res, err, sizeof(err)) == cc); /* cached */
    struct tls_client_ctx *nov = plain_client(st);
    CHECK(tls_client_ctx_fingerprint(nov) != tls_client_ctx_fingerprint(cc));

    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    pair_free(&p);
    p = connect_pair(st, cc, "b.example.com", NULL, NULL, NULL); /* the wildcard */
    CHECK(handshake(p.c, p.s) == 0);
    pair_free(&p);

    /* a name the certificate does not have: the server's store answers
     * mtls.example.com with a.example.com's certificate */
    p = connect_pair(st, cc, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.c) == TLS_FAIL_VERIFY);
    CHECK_CONTAINS(tls_conn_error(p.c), "Hostname mismatch");
    pair_free(&p);

    /* untrusted (self-signed) */
    p = connect_pair(st, cc, "self.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.c) == TLS_FAIL_VERIFY);
    pair_free(&p);
    /* without verification it is accepted */
    p = connect_pair(st, nov, "self.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    pair_free(&p);

    /* an IP literal: no SNI is sent (so the store refuses), and the name
     * is checked against IP SANs */
    p = connect_pair(st, cc, "127.0.0.1", NULL, NULL, NULL);
    CHECK(tls_conn_sni(p.c) == NULL);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_UNKNOWN_SNI);
    pair_free(&p);
    /* an upstream serving without SNI: its IP SAN matches, a DNS SAN does
     * not (the server is the ssl's context itself, without the store) */
    const char *ids[] = {"10", "2"};
    for (int i = 0; i < 2; i++) {
        struct tls_entry *e = NULL;
        for (size_t k = 0; k < st->nentries; k++)
            if (strcmp(st->entries[k]->id, ids[i]) == 0)
                e = st->entries[k];
        REQUIRE(e);
        p.s = conn_new(e->ctx[0]);
        p.s->flags = TF_SERVER;
        p.s->entry = entry_ref(e);
        SSL_set_accept_state(p.s->ssl);
        p.c = tls_conn_new_client(cc, "127.0.0.1", NULL, NULL);
        CHECK(handshake(p.c, p.s) == (i == 0 ? 0 : -1));
        if (i == 1)
            CHECK_CONTAINS(tls_conn_error(p.c), "IP address mismatch");
        pair_free(&p);
    }

    /* the CA bundle missing: a clear error */
    struct tls_ctx_store *nb = tls_ctx_store_build(res, NULL, "/nonexistent/ca.pem");
    CHECK(tls_ctx_store_client(nb, up, res, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "CA bundle");
    CHECK(tls_ctx_store_client(nb, NULL, res, err, sizeof(err)) != NULL); /* no tls: fine */
    tls_ctx_store_unref(nb);
    json_decref(up);
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_upstream_client_cert(void)
{
    json_t *res = std_resources();
    json_t *cli = ssl_conf("dev", "unused", NULL, -1);
    json_object_del(cli, "snis");
    json_object_set_new(cli, "type", json_string("client"));
    put(res, "20", cli);
    struct tls_ctx_store *st = store_of(res, NULL);
    char err[256], buf[128];

    /* inline client_cert / client_key, against an mTLS server */
    json_t *up = upstream(true, "dev", NULL);
    struct tls_client_ctx *cc = tls_ctx_store_client(st, up, res, err, sizeof(err));
    REQUIRE(cc);
    struct pair p = connect_pair(st, cc, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == -1); /* the server's certificate is a.example.com's */
    pair_free(&p);
    json_object_set_new(json_object_get(up, "tls"), "verify", json_false());
    cc = tls_ctx_store_client(st, up, res, err, sizeof(err));
    p = connect_pair(st, cc, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(peer(tls_conn_peer_cn, p.s, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "device-1");
    pair_free(&p);
    uint64_t fp = tls_client_ctx_fingerprint(cc);
    json_decref(up);

    /* client_cert_id: an ssl of type client; same content, same print */
    up = upstream(false, NULL, "20");
    struct tls_client_ctx *byid = tls_ctx_store_client(st, up, res, err, sizeof(err));
    REQUIRE(byid);
    CHECK(tls_client_ctx_fingerprint(byid) == fp);
    p = connect_pair(st, byid, "mtls.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    pair_free(&p);
    json_decref(up);

    /* an id that is not a client ssl */
    up = upstream(false, NULL, "2");
    CHECK(tls_ctx_store_client(st, up, res, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "type client");
    json_decref(up);
    up = upstream(false, NULL, "404");
    CHECK(tls_ctx_store_client(st, up, res, err, sizeof(err)) == NULL);
    json_decref(up);

    /* a key that does not match */
    up = upstream(false, "dev", NULL);
    json_object_set_new(json_object_get(up, "tls"), "client_key", jfile("a.key"));
    CHECK(tls_ctx_store_client(st, up, res, err, sizeof(err)) == NULL);
    CHECK_CONTAINS(err, "client certificate");
    json_decref(up);
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_dual_certificates(void)
{
    json_t *res = json_object();
    json_t *dual = ssl_conf("dualrsa", "dual.example.com", NULL, -1);
    json_t *certs = json_array(), *keys = json_array();
    json_array_append_new(certs, jfile("dualec.crt"));
    json_array_append_new(keys, jfile("dualec.key"));
    json_object_set_new(dual, "certs", certs);
    json_object_set_new(dual, "keys", keys);
    put(res, "1", dual);
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    char buf[128];

    struct pair p = connect_pair(st, cc, "dual.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK(peer(tls_conn_peer_subject, p.c, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "O=ecdsa,CN=dual.example.com");
    pair_free(&p);

    static const uint16_t rsa_only[] = {SSL_SIGN_RSA_PSS_RSAE_SHA256, SSL_SIGN_RSA_PKCS1_SHA256};
    for (int v = 0; v < 2; v++) {
        p = connect_pair(st, cc, "dual.example.com", NULL, NULL, NULL);
        /* a fresh ClientHello with only RSA signature algorithms */
        tls_conn_free(p.c);
        p.c = conn_new(cc->ctx);
        SSL_set_tlsext_host_name(p.c->ssl, "dual.example.com");
        SSL_set_verify_algorithm_prefs(p.c->ssl, rsa_only, 2);
        if (v)
            SSL_set_max_proto_version(p.c->ssl, TLS1_2_VERSION);
        SSL_set_connect_state(p.c->ssl);
        CHECK(handshake(p.c, p.s) == 0);
        CHECK(peer(tls_conn_peer_subject, p.c, buf, sizeof(buf)) > 0);
        CHECK_STREQ(buf, "O=rsa,CN=dual.example.com");
        CHECK_STREQ(tls_conn_version(p.c), v ? "TLSv1.2" : "TLSv1.3");
        pair_free(&p);
    }
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_protocols(void)
{
    json_t *res = json_object();
    json_t *s12 = ssl_conf("a", "a.example.com", NULL, -1);
    json_t *pr = json_array();
    json_array_append_new(pr, json_string("TLSv1.2"));
    json_object_set_new(s12, "ssl_protocols", pr);
    put(res, "1", s12);
    put(res, "2", ssl_conf("wild", "*.example.com", NULL, -1));
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK_STREQ(tls_conn_version(p.s), "TLSv1.2");
    CHECK_STREQ(tls_conn_cipher(p.s), "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256");
    pair_free(&p);
    p = connect_pair(st, cc, "b.example.com", NULL, NULL, NULL);
    CHECK(handshake(p.c, p.s) == 0);
    CHECK_STREQ(tls_conn_version(p.s), "TLSv1.3");
    pair_free(&p);
    /* a client below TLS 1.2 is refused */
    p = connect_pair(st, cc, "b.example.com", NULL, NULL, NULL);
    tls_conn_free(p.c);
    p.c = conn_new(cc->ctx);
    SSL_set_tlsext_host_name(p.c->ssl, "b.example.com");
    SSL_set_min_proto_version(p.c->ssl, TLS1_VERSION);
    SSL_set_max_proto_version(p.c->ssl, TLS1_1_VERSION);
    SSL_set_connect_state(p.c->ssl);
    CHECK(handshake(p.c, p.s) == -1);
    CHECK(tls_conn_failure(p.s) == TLS_FAIL_PROTOCOL);
    pair_free(&p);
    tls_ctx_store_unref(st);
    json_decref(res);
}

static void test_hello_retry(void)
{
    json_t *res = std_resources();
    struct tls_ctx_store *st = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(st);
    char buf[128];
    /* The server takes only P-256, the client's key share is X25519: a
     * HelloRetryRequest, then a second ClientHello. */
    struct tls_conn *s = tls_conn_new_server(st, TLS_ALPN_HTTP1);
    CHECK(SSL_set1_curves_list(s->ssl, "P-256") == 1);
    struct tls_conn *c = tls_conn_new_client(cc, "a.example.com", TLS_ALPN_HTTP1, NULL);
    CHECK(handshake(c, s) == 0);
    CHECK_STREQ(tls_conn_ssl_id(s), "2");
    CHECK(peer(tls_conn_peer_cn, c, buf, sizeof(buf)) > 0);
    CHECK_STREQ(buf, "a.example.com");
    CHECK(SSL_used_hello_retry_request(s->ssl) == 1);
    tls_conn_free(c);
    tls_conn_free(s);
    tls_ctx_store_unref(st);
    json_decref(res);
}

/* A full handshake with st, settled so the client holds its ticket; the
 * client's session (a new reference). */
static struct tls_session *first_session(struct tls_ctx_store *st, struct tls_client_ctx *cc,
                                         uint16_t maxv)
{
    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, NULL);
    if (maxv)
        SSL_set_max_proto_version(p.c->ssl, maxv);
    CHECK(handshake(p.c, p.s) == 0);
    settle(p.c, p.s);
    CHECK(!tls_conn_resumed(p.s));
    struct tls_session *sess = tls_conn_session(p.c);
    CHECK(sess != NULL);
    pair_free(&p);
    return sess;
}

/* Resumes sess on st? *renewed (when not NULL) gets the session the
 * connection ended with (a new reference). */
static bool resumes(struct tls_ctx_store *st, struct tls_client_ctx *cc, uint16_t maxv,
                    const struct tls_session *sess, struct tls_session **renewed)
{
    struct pair p = connect_pair(st, cc, "a.example.com", NULL, NULL, sess);
    if (maxv)
        SSL_set_max_proto_version(p.c->ssl, maxv);
    CHECK(handshake(p.c, p.s) == 0);
    settle(p.c, p.s);
    bool r = tls_conn_resumed(p.s);
    CHECK(r == tls_conn_resumed(p.c));
    if (renewed)
        *renewed = tls_conn_session(p.c);
    pair_free(&p);
    return r;
}

/* Two stores with their own base contexts stand for two workers. */
static void ticket_round(struct tls_ticket_keys *master, uint16_t maxv)
{
    json_t *res = std_resources();
    struct tls_ctx_store *a = store_of(res, NULL), *b = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(a);
    struct tls_session *s1 = first_session(a, cc, maxv);
    CHECK(resumes(b, cc, maxv, s1, NULL)); /* the other "worker" */
    CHECK(resumes(a, cc, maxv, s1, NULL));

    /* one rotation: the old key still opens tickets; the ticket is renewed
     * under the new one */
    CHECK(tls_ticket_keys_rotate(master) == 0);
    struct tls_session *s2 = NULL;
    CHECK(resumes(b, cc, maxv, s1, &s2));
    CHECK(s2 != NULL);
    /* a second one: the first key is gone, the renewed ticket resumes */
    CHECK(tls_ticket_keys_rotate(master) == 0);
    CHECK(!resumes(a, cc, maxv, s1, NULL));
    CHECK(s2 && resumes(a, cc, maxv, s2, NULL));
    tls_session_free(s1);
    tls_session_free(s2);
    tls_ctx_store_unref(a);
    tls_ctx_store_unref(b);
    json_decref(res);
}

static void test_ticket_keys(void)
{
    /* without a ring each base context has its own keys: no resumption
     * from one "worker" to another */
    json_t *res = std_resources();
    struct tls_ctx_store *a = store_of(res, NULL), *b = store_of(res, NULL);
    struct tls_client_ctx *cc = plain_client(a);
    struct tls_session *s = first_session(a, cc, 0);
    CHECK(resumes(a, cc, 0, s, NULL));
    CHECK(!resumes(b, cc, 0, s, NULL));
    tls_session_free(s);
    tls_ctx_store_unref(a);
    tls_ctx_store_unref(b);
    json_decref(res);

    /* the master's ring, and a worker's mapping of it (another fd, as
     * inherited across exec) */
    struct tls_ticket_keys *master = tls_ticket_keys_create();
    CHECK(master != NULL);
    if (!master)
        return;
    int fd = dup(tls_ticket_keys_fd(master));
    struct tls_ticket_keys *worker = tls_ticket_keys_attach(fd);
    CHECK(worker != NULL);
    if (!worker) {
        close(fd);
        tls_ticket_keys_free(master);
        return;
    }
    /* not a ring */
    CHECK(tls_ticket_keys_attach(-1) == NULL);
    int devnull = open("/dev/null", O_RDONLY);
    CHECK(tls_ticket_keys_attach(devnull) == NULL);
    close(devnull);

    tls_use_ticket_keys(worker);
    ticket_round(master, 0);
    ticket_round(master, TLS1_2_VERSION);
    tls_use_ticket_keys(NULL);
    tls_ticket_keys_free(worker);
    tls_ticket_keys_free(master);
    tls_ticket_keys_free(NULL);
}

int main(void)
{
    if (gen_certs() < 0) {
        fprintf(stderr, "cannot generate certificates with openssl(1)\n");
        return 1;
    }
    log_init("test_tls", LOG_ERROR);
    RUN(test_sni_selection);
    RUN(test_unknown_sni_refused);
    RUN(test_disabled_and_bad_ssls);
    RUN(test_mtls);
    RUN(test_alpn);
    RUN(test_resumption);
    RUN(test_large_transfer);
    RUN(test_certificate_swap);
    RUN(test_bad_input);
    RUN(test_shutdown);
    RUN(test_upstream_verify);
    RUN(test_upstream_client_cert);
    RUN(test_dual_certificates);
    RUN(test_protocols);
    RUN(test_hello_retry);
    RUN(test_ticket_keys);
    rm_certs();
    return check_summary();
}
