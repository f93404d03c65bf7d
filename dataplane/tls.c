/*
 * tls: see tls.h for the contract.
 *
 * Objects and who owns what:
 *
 *   tls_ctx_store  refs from the worker (current store) and from server
 *                  connections still in their handshake. Owns its entries
 *                  (one reference each), its SNI index (borrowing the
 *                  entries' names), its cached client contexts and, shared
 *                  with the stores before and after it: the base SSL_CTX and
 *                  the upstream CA bundle.
 *   base SSL_CTX   where every server handshake starts: the ClientHello
 *                  callbacks, ALPN, session tickets and the session cache.
 *                  SSL_set_SSL_CTX then switches the connection to its
 *                  entry's context; the session cache and the ticket keys
 *                  stay the base's, so sessions survive store swaps.
 *   tls_entry      one ssl resource: one SSL_CTX per certificate/key pair.
 *                  refs from stores and from the connections it serves.
 *   tls_client_ctx one upstream TLS configuration (verify, client
 *                  certificate). refs from stores; connections hold the
 *                  SSL_CTX itself through their SSL.
 *   tls_conn       one SSL and its one custom BIO, whose reads take from
 *                  `in` and whose writes append to `out`: both are plain
 *                  malloc'd buffers released as soon as they are drained.
 *
 * The BIO is the engine's "memory BIO": it never blocks and never fails a
 * write except at TLS_MAX_PENDING_OUT, so SSL_write always completes and the
 * only retry BoringSSL ever reports is SSL_ERROR_WANT_READ.
 */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "log.h"
#include "tls_tickets.h"

#define TLS_MAX_PAIRS 4        /* certificate/key pairs per ssl */
#define TLS_MAX_CLIENT_CTX 256 /* cached upstream contexts per store */
#define TLS_SNI_MAX 255        /* longest server name looked up */
#define TLS_GATHER 16384       /* small plaintext buffers are gathered up to one record */
#define TLS_GATHER_BIG 4096    /* buffers from this size are encrypted where they are */

/* TLS 1.2 suites: ECDHE with AEAD only (APISIX's default list without DHE,
 * which BoringSSL does not implement). TLS 1.3 suites are not configurable. */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

#define TLS12_SESSION_TIMEOUT 600 /* seconds a TLS 1.2 session resumes (APISIX: 10m) */

enum key_kind { KEY_RSA = 0, KEY_EC, KEY_ED25519, KEY_OTHER };

struct tls_entry {
    int refs;                    /* stores and connections */
    char *id;                    /* the ssl's id */
    json_t *conf;                /* the ssl as configured (a reference): unchanged means reuse */
    SSL_CTX *ctx[TLS_MAX_PAIRS]; /* one per certificate/key pair, in configured order */
    uint8_t kind[TLS_MAX_PAIRS]; /* enum key_kind of each pair's key */
    int nctx;                    /* pairs */
    bool mtls;                   /* client.ca given: a client certificate is required */
    int depth;                   /* client.depth */
    uint16_t min_version;        /* from ssl_protocols, TLS 1.2 at least */
    uint16_t max_version;        /* from ssl_protocols */
};

struct sni_ent {
    char *name;          /* lowercase; for wildcards the suffix ".example.com" (owned) */
    struct tls_entry *e; /* borrowed from the store's entries */
    size_t order;        /* rank of the ssl by resource key: the first one wins */
};

struct tls_client_ctx {
    int refs;      /* stores holding it */
    SSL_CTX *ctx;  /* connections take their own reference through SSL_new */
    uint64_t fp;   /* tls_client_ctx_fingerprint */
    bool verify;   /* tls.verify */
    char *cert;    /* client certificate PEM, or NULL */
    char *key;     /* its key PEM, or NULL */
    char *ca_file; /* the bundle used when verify */
};

struct tls_ctx_store {
    int refs;                   /* worker + connections in their handshake */
    SSL_CTX *base;              /* handshakes start here (shared across stores) */
    struct tls_entry **entries; /* served ssls, by resource key (one ref each) */
    size_t nentries;
    struct sni_ent *exact; /* exact names, sorted by name then order */
    size_t nexact;
    struct sni_ent *wild; /* "*.x" as ".x", sorted */
    size_t nwild;
    struct tls_entry *star;          /* the ssl whose sni is "*", or NULL */
    struct tls_client_ctx **clients; /* cached upstream contexts (one ref each) */
    size_t nclients;
    char *ca_file;  /* CA bundle for upstream verification */
    X509_STORE *ca; /* loaded on first use, shared with the next store */
};

enum tls_flag {
    TF_SERVER = 1u << 0,      /* server side */
    TF_DONE = 1u << 1,        /* handshake complete */
    TF_SHUT = 1u << 2,        /* close_notify queued (or asked before the handshake ended) */
    TF_PEER_CLOSED = 1u << 3, /* close_notify received */
};

struct tls_buf {
    char *p;      /* malloc'd, NULL when empty */
    uint32_t off; /* consumed bytes at the front */
    uint32_t len; /* bytes in p */
    uint32_t cap; /* bytes allocated */
};

struct tls_conn {
    SSL *ssl;                 /* the connection (owns the BIO) */
    struct tls_ctx_store *st; /* server: a reference until the certificate is chosen */
    struct tls_entry *entry;  /* server: the ssl chosen (a reference), or NULL */
    const char *alpn;         /* server: protocols we speak (wire format), or NULL */
    SSL_SESSION *session;     /* client: the newest resumable session, or NULL */
    struct tls_buf in;        /* ciphertext fed, not read by BoringSSL yet */
    struct tls_buf out;       /* ciphertext to send */
    struct tls_buf early;     /* plaintext written before the handshake ended */
    const char *why;          /* static failure text, or NULL */
    int err;                  /* 0, or the negative errno every call returns after a failure */
    uint8_t fail;             /* enum tls_failure */
    uint8_t flags;            /* TF_* */
};

/* ---- buffers ---- */

static size_t buf_used(const struct tls_buf *b)
{
    return b->len - b->off;
}

static void buf_free(struct tls_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Appends n bytes unless more than max would be held. 0, -ENOBUFS, -ENOMEM. */
static int buf_append(struct tls_buf *b, const void *d, size_t n, size_t max)
{
    size_t used = buf_used(b);
    if (n == 0)
        return 0;
    if (n > max || used > max - n)
        return -ENOBUFS;
    if (b->off && b->len + n > b->cap) {
        memmove(b->p, b->p + b->off, used);
        b->off = 0;
        b->len = (uint32_t)used;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return -ENOMEM;
        b->p = np;
        b->cap = (uint32_t)cap;
    }
    memcpy(b->p + b->len, d, n);
    b->len += (uint32_t)n;
    return 0;
}

static void buf_consume(struct tls_buf *b, size_t n)
{
    if (n >= buf_used(b))
        buf_free(b);
    else
        b->off += (uint32_t)n;
}

/* ---- the BIO ---- */

static int bio_read(BIO *bio, char *out, int len)
{
    struct tls_conn *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    size_t avail = buf_used(&t->in);
    if (avail == 0 || len <= 0) {
        BIO_set_retry_read(bio);
        return -1;
    }
    size_t n = avail < (size_t)len ? avail : (size_t)len;
    memcpy(out, t->in.p + t->in.off, n);
    buf_consume(&t->in, n);
    return (int)n;
}

static int bio_write(BIO *bio, const char *data, int len)
{
    struct tls_conn *t = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (len <= 0)
        return 0;
    int rc = buf_append(&t->out, data, (size_t)len, TLS_MAX_PENDING_OUT);
    if (rc < 0) {
        /* Not a retry: BoringSSL reports SSL_ERROR_SYSCALL, fail() says why. */
        if (!t->fail) {
            t->fail = rc == -ENOMEM ? TLS_FAIL_NOMEM : TLS_FAIL_LIMIT;
            t->err = rc;
            t->why = rc == -ENOMEM ? "out of memory" : "too much output pending";
        }
        return -1;
    }
    return len;
}

static long bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    struct tls_conn *t = BIO_get_data(bio);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return t ? (long)buf_used(&t->in) : 0;
    case BIO_CTRL_WPENDING:
        return t ? (long)buf_used(&t->out) : 0;
    default:
        return 0;
    }
}

static int bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static int bio_destroy(BIO *bio)
{
    (void)bio;
    return 1;
}

static const BIO_METHOD tls_bio_method = {
    .type = 0x7f | BIO_TYPE_SOURCE_SINK,
    .name = "airgw-tls",
    .bwrite = bio_write,
    .bread = bio_read,
    .ctrl = bio_ctrl,
    .create = bio_create,
    .destroy = bio_destroy,
};

/* What the loader checks before it uses this code as a module. */
const char tls_module_abi[] = TLS_MODULE_ABI;

/* ---- session ticket keys (the ring itself: tls_tickets.c) ---- */

/* The ring the server contexts of this process use (tls_use_ticket_keys). */
static struct tls_ticket_keys *ticket_ring;

void tls_use_ticket_keys(struct tls_ticket_keys *k)
{
    ticket_ring = k;
}

/* A ticket is AES-256-CBC + HMAC-SHA256 under the key its 16-byte name
 * names (BoringSSL's ticket format with a key callback). */
_Static_assert(TLS_TICKET_NAME_LEN == SSL_TICKET_KEY_NAME_LEN, "ticket key name length");

static int ticket_key_cb(SSL *ssl, uint8_t *name, uint8_t *iv, EVP_CIPHER_CTX *cctx, HMAC_CTX *hctx,
                         int encrypt)
{
    (void)ssl;
    struct tls_ticket_keys *k = ticket_ring;
    if (!k)
        return encrypt ? -1 : 0;
    struct tls_ticket_key cur, prev;
    tls_tickets_read(k, &cur, &prev);
    int rc = -1;
    if (encrypt) {
        memcpy(name, cur.name, sizeof(cur.name));
        if (RAND_bytes(iv, 16) == 1 &&
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, cur.aes, iv) == 1 &&
            HMAC_Init_ex(hctx, cur.hmac, sizeof(cur.hmac), EVP_sha256(), NULL) == 1)
            rc = 1;
    } else {
        static const uint8_t none[TLS_TICKET_NAME_LEN];
        const struct tls_ticket_key *use = NULL;
        rc = 0; /* an unknown (expired) key: a full handshake */
        if (memcmp(name, cur.name, sizeof(cur.name)) == 0) {
            use = &cur;
            rc = 1;
        } else if (memcmp(prev.name, none, sizeof(none)) != 0 &&
                   memcmp(name, prev.name, sizeof(prev.name)) == 0) {
            use = &prev;
            rc = 2; /* renew under the current key */
        }
        if (use && (HMAC_Init_ex(hctx, use->hmac, sizeof(use->hmac), EVP_sha256(), NULL) != 1 ||
                    EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, use->aes, iv) != 1))
            rc = -1;
    }
    explicit_bzero(&cur, sizeof(cur));
    explicit_bzero(&prev, sizeof(prev));
    return rc;
}

/* Server contexts seal tickets with the node's ring when there is one. */
static void use_ring(SSL_CTX *ctx)
{
    if (ticket_ring)
        SSL_CTX_set_tlsext_ticket_key_cb(ctx, ticket_key_cb);
}

/* ---- PEM ---- */

static STACK_OF(X509) * pem_certs(const char *pem)
{
    if (!pem)
        return NULL;
    BIO *b = BIO_new_mem_buf(pem, -1);
    if (!b)
        return NULL;
    STACK_OF(X509) *sk = sk_X509_new_null();
    X509 *x;
    while (sk && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (!sk_X509_push(sk, x)) {
            X509_free(x);
            break;
        }
    }
    ERR_clear_error(); /* the read that found no more */
    BIO_free(b);
    if (sk && sk_X509_num(sk) == 0) {
        sk_X509_free(sk);
        sk = NULL;
    }
    return sk;
}

static EVP_PKEY *pem_key(const char *pem)
{
    if (!pem)
        return NULL;
    BIO *b = BIO_new_mem_buf(pem, -1);
    if (!b)
        return NULL;
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    BIO_free(b);
    ERR_clear_error();
    return k;
}

static const char *ssl_errstr(void)
{
    uint32_t e = ERR_peek_last_error();
    const char *s = e ? ERR_reason_error_string(e) : NULL;
    return s ? s : "unknown error";
}

/* Installs the chain and key of one pair. 0 or -1 with why. */
static int ctx_use_pair(SSL_CTX *ctx, const char *cert, const char *key, int *kind, char *why,
                        size_t whylen)
{
    int rc = -1;
    STACK_OF(X509) *chain = pem_certs(cert);
    EVP_PKEY *pk = pem_key(key);
    if (!chain) {
        snprintf(why, whylen, "cannot parse the certificate");
        goto out;
    }
    if (!pk) {
        snprintf(why, whylen, "cannot parse the private key");
        goto out;
    }
    if (!SSL_CTX_use_certificate(ctx, sk_X509_value(chain, 0))) {
        snprintf(why, whylen, "certificate: %s", ssl_errstr());
        goto out;
    }
    for (size_t i = 1; i < sk_X509_num(chain); i++) {
        if (!SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i))) {
            snprintf(why, whylen, "certificate chain: %s", ssl_errstr());
            goto out;
        }
    }
    if (!SSL_CTX_use_PrivateKey(ctx, pk) || !SSL_CTX_check_private_key(ctx)) {
        snprintf(why, whylen, "the key does not match the certificate");
        goto out;
    }
    if (kind) {
        int id = EVP_PKEY_id(pk);
        *kind = id == EVP_PKEY_RSA       ? KEY_RSA
                : id == EVP_PKEY_EC      ? KEY_EC
                : id == EVP_PKEY_ED25519 ? KEY_ED25519
                                         : KEY_OTHER;
    }
    rc = 0;
out:
    if (chain)
        sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(pk);
    ERR_clear_error();
    return rc;
}

/* ---- failures ---- */

/* Records why an SSL call failed and returns the errno every later call
 * returns. Keeps a reason a callback recorded first. */
static int fail(struct tls_conn *t, int ssl_err)
{
    if (t->fail) {
        if (!t->err)
            t->err = t->fail == TLS_FAIL_NOMEM   ? -ENOMEM
                     : t->fail == TLS_FAIL_LIMIT ? -ENOBUFS
                                                 : -EPROTO;
        ERR_clear_error();
        return t->err;
    }
    uint32_t e = ERR_peek_last_error();
    int reason = e ? ERR_GET_REASON(e) : 0;
    t->err = -EPROTO;
    t->fail = TLS_FAIL_PROTOCOL;
    if (ssl_err == SSL_ERROR_SYSCALL && !e) {
        t->why = "unexpected end of input";
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET &&
               reason < SSL_AD_REASON_OFFSET + 256) {
        t->fail = TLS_FAIL_PEER_ALERT;
        t->why = ERR_reason_error_string(e);
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL && reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        t->fail = TLS_FAIL_VERIFY;
        t->why = X509_verify_cert_error_string(SSL_get_verify_result(t->ssl));
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
               reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
        t->fail = TLS_FAIL_NO_PEER_CERT;
        t->why = "no client certificate";
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL && reason == SSL_R_NO_APPLICATION_PROTOCOL) {
        t->fail = TLS_FAIL_NO_ALPN;
        t->why = "no common application protocol";
    } else if (e && ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE) {
        t->fail = TLS_FAIL_NOMEM;
        t->err = -ENOMEM;
        t->why = "out of memory";
    } else {
        t->why = e ? ERR_reason_error_string(e) : "TLS error";
    }
    if (!t->why)
        t->why = "TLS error";
    ERR_clear_error();
    return t->err;
}

/* ---- entries ---- */

static struct tls_entry *entry_ref(struct tls_entry *e)
{
    e->refs++;
    return e;
}

static void entry_unref(struct tls_entry *e)
{
    if (!e || --e->refs > 0)
        return;
    for (int i = 0; i < e->nctx; i++)
        SSL_CTX_free(e->ctx[i]);
    json_decref(e->conf);
    free(e->id);
    free(e);
}

static int alpn_select_cb(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
                          unsigned inlen, void *arg);

/* The session id context of an ssl: a digest of its configuration, so a
 * session resumes only with the same certificates and client CA. */
static void conf_digest(const json_t *conf, uint8_t out[SHA256_DIGEST_LENGTH])
{
    char *s = json_dumps(conf, JSON_COMPACT | JSON_SORT_KEYS);
    SHA256((const uint8_t *)(s ? s : ""), s ? strlen(s) : 0, out);
    free(s);
}

static uint16_t proto_version(const char *s)
{
    if (strcmp(s, "TLSv1.2") == 0)
        return TLS1_2_VERSION;
    if (strcmp(s, "TLSv1.3") == 0)
        return TLS1_3_VERSION;
    return 0;
}

static SSL_CTX *server_ctx_new(const struct tls_entry *e, const uint8_t *sid, size_t sidlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, e->min_version);
    SSL_CTX_set_max_proto_version(ctx, e->max_version);
    SSL_CTX_set_strict_cipher_list(ctx, TLS12_CIPHERS);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
    SSL_CTX_set_session_id_context(ctx, sid, sidlen);
    use_ring(ctx);
    return ctx;
}

/* The client CAs of an mTLS ssl: a verification store and the names sent
 * in the CertificateRequest. 0 or -1 with why. */
static int load_client_ca(const char *pem, X509_STORE **store, STACK_OF(X509_NAME) * *names,
                          char *why, size_t whylen)
{
    STACK_OF(X509) *cas = pem_certs(pem);
    *store = NULL;
    *names = NULL;
    if (!cas) {
        snprintf(why, whylen, "cannot parse client.ca");
        return -1;
    }
    *store = X509_STORE_new();
    *names = sk_X509_NAME_new_null();
    int rc = *store && *names ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < sk_X509_num(cas); i++) {
        X509 *ca = sk_X509_value(cas, i);
        X509_NAME *n = X509_NAME_dup(X509_get_subject_name(ca));
        if (!X509_STORE_add_cert(*store, ca) || !n || !sk_X509_NAME_push(*names, n)) {
            X509_NAME_free(n);
            rc = -1;
        }
    }
    sk_X509_pop_free(cas, X509_free);
    ERR_clear_error();
    if (rc < 0) {
        snprintf(why, whylen, "cannot load client.ca");
        X509_STORE_free(*store);
        sk_X509_NAME_pop_free(*names, X509_NAME_free);
        *store = NULL;
        *names = NULL;
    }
    return rc;
}

static STACK_OF(X509_NAME) * names_dup(const STACK_OF(X509_NAME) * names)
{
    STACK_OF(X509_NAME) *d = sk_X509_NAME_new_null();
    for (size_t i = 0; d && i < sk_X509_NAME_num(names); i++) {
        X509_NAME *n = X509_NAME_dup(sk_X509_NAME_value(names, i));
        if (!n || !sk_X509_NAME_push(d, n)) {
            X509_NAME_free(n);
            sk_X509_NAME_pop_free(d, X509_NAME_free);
            return NULL;
        }
    }
    return d;
}

/* Builds the entry of one ssl. NULL with why on failure. */
static struct tls_entry *entry_build(const char *id, json_t *conf, char *why, size_t whylen)
{
    struct tls_entry *e = calloc(1, sizeof(*e));
    X509_STORE *ca = NULL;
    STACK_OF(X509_NAME) *names = NULL;
    if (!e || !(e->id = strdup(id))) {
        snprintf(why, whylen, "out of memory");
        goto fail;
    }
    e->refs = 1;
    e->conf = json_incref(conf);
    e->min_version = TLS1_2_VERSION;
    e->max_version = TLS1_3_VERSION;
    const json_t *protos = json_object_get(conf, "ssl_protocols");
    if (json_is_array(protos) && json_array_size(protos) > 0) {
        uint16_t lo = 0, hi = 0;
        size_t i;
        json_t *p;
        json_array_foreach(protos, i, p)
        {
            uint16_t v = json_is_string(p) ? proto_version(json_string_value(p)) : 0;
            if (!v)
                continue; /* TLSv1.1: never offered */
            if (!lo || v < lo)
                lo = v;
            if (v > hi)
                hi = v;
        }
        if (lo) {
            e->min_version = lo;
            e->max_version = hi;
        } else {
            log_warn("ssl %s: ssl_protocols has neither TLSv1.2 nor TLSv1.3; using both", id);
        }
    }

    const json_t *client = json_object_get(conf, "client");
    if (json_is_object(client)) {
        const char *pem = json_string_value(json_object_get(client, "ca"));
        if (load_client_ca(pem, &ca, &names, why, whylen) < 0)
            goto fail;
        e->mtls = true;
        const json_t *d = json_object_get(client, "depth");
        e->depth = json_is_integer(d) ? (int)json_integer_value(d) : 1;
        if (e->depth < 0)
            e->depth = 0;
        if (e->depth > 100)
            e->depth = 100;
        if (json_object_get(client, "skip_mtls_uri_regex"))
            log_warn("ssl %s: client.skip_mtls_uri_regex is not supported: mTLS is required on "
                     "every request",
                     id);
    }

    uint8_t sid[SHA256_DIGEST_LENGTH];
    conf_digest(conf, sid);
    const char *certs[TLS_MAX_PAIRS], *keys[TLS_MAX_PAIRS];
    int npairs = 0;
    certs[0] = json_string_value(json_object_get(conf, "cert"));
    keys[0] = json_string_value(json_object_get(conf, "key"));
    npairs = 1;
    const json_t *ca_ = json_object_get(conf, "certs"), *ka = json_object_get(conf, "keys");
    size_t extra = json_array_size(ca_);
    if (extra != json_array_size(ka)) {
        snprintf(why, whylen, "certs and keys differ in number");
        goto fail;
    }
    for (size_t i = 0; i < extra; i++) {
        if (npairs == TLS_MAX_PAIRS) {
            log_warn("ssl %s: only %d certificate/key pairs are served", id, TLS_MAX_PAIRS);
            break;
        }
        certs[npairs] = json_string_value(json_array_get(ca_, i));
        keys[npairs] = json_string_value(json_array_get(ka, i));
        npairs++;
    }
    for (int i = 0; i < npairs; i++) {
        char pw[200];
        SSL_CTX *ctx = server_ctx_new(e, sid, sizeof(sid));
        if (!ctx) {
            snprintf(why, whylen, "out of memory");
            goto fail;
        }
        e->ctx[e->nctx++] = ctx;
        int kind = KEY_OTHER;
        if (ctx_use_pair(ctx, certs[i], keys[i], &kind, pw, sizeof(pw)) < 0) {
            if (i == 0)
                snprintf(why, whylen, "%s", pw);
            else
                snprintf(why, whylen, "pair %d: %s", i + 1, pw);
            goto fail;
        }
        e->kind[i] = (uint8_t)kind;
        if (e->mtls) {
            STACK_OF(X509_NAME) *nd = names_dup(names);
            if (!nd || !X509_STORE_up_ref(ca)) {
                sk_X509_NAME_pop_free(nd, X509_NAME_free);
                snprintf(why, whylen, "out of memory");
                goto fail;
            }
            SSL_CTX_set_cert_store(ctx, ca);
            SSL_CTX_set_client_CA_list(ctx, nd);
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
            SSL_CTX_set_verify_depth(ctx, e->depth + 1);
        }
    }
    X509_STORE_free(ca);
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    return e;
fail:
    X509_STORE_free(ca);
    if (names)
        sk_X509_NAME_pop_free(names, X509_NAME_free);
    if (e) {
        e->refs = 1;
        entry_unref(e);
    }
    ERR_clear_error();
    return NULL;
}

/* ---- the base context and the ClientHello ---- */

static void lower_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        dst[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    dst[n] = '\0';
}

static int sni_cmp(const void *a, const void *b)
{
    const struct sni_ent *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

static struct tls_entry *sni_find(const struct sni_ent *v, size_t n, const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(v[mid].name, name) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strcmp(v[lo].name, name) == 0 ? v[lo].e : NULL; /* the lowest order */
}

static struct tls_entry *store_lookup(const struct tls_ctx_store *st, const char *sni)
{
    char name[TLS_SNI_MAX + 1];
    size_t n = sni ? strlen(sni) : 0;
    if (n == 0 || n > TLS_SNI_MAX)
        return NULL;
    lower_copy(name, sni, n);
    struct tls_entry *e = sni_find(st->exact, st->nexact, name);
    if (!e) {
        const char *dot = strchr(name, '.');
        if (dot && dot != name && dot[1])
            e = sni_find(st->wild, st->nwild, dot);
    }
    return e ? e : st->star;
}

static uint16_t be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* Which key types the client can take: ECDSA and Ed25519 need their
 * signature algorithms and, below TLS 1.3, an ECDSA cipher suite. */
static void client_key_support(const SSL_CLIENT_HELLO *ch, bool *ec, bool *ed)
{
    const uint8_t *d;
    size_t len;
    bool tls13 = false, ecdsa_suite = false;
    *ec = *ed = false;
    if (SSL_early_callback_ctx_extension_get(ch, TLSEXT_TYPE_supported_versions, &d, &len) &&
        len >= 1) {
        for (size_t i = 1; i + 1 < len && i < (size_t)d[0] + 1; i += 2)
            if (be16(d + i) == TLS1_3_VERSION)
                tls13 = true;
    }
    for (size_t i = 0; i + 1 < ch->cipher_suites_len; i += 2) {
        uint16_t s = be16(ch->cipher_suites + i);
        if (s == 0xc02b || s == 0xc02c || s == 0xcca9 || s == 0xc009 || s == 0xc00a ||
            s == 0xc023 || s == 0xc024)
            ecdsa_suite = true;
    }
    if (!SSL_early_callback_ctx_extension_get(ch, TLSEXT_TYPE_signature_algorithms, &d, &len) ||
        len < 2)
        return;
    size_t n = be16(d);
    if (n > len - 2)
        n = len - 2;
    for (size_t i = 0; i + 1 < n; i += 2) {
        uint16_t a = be16(d + 2 + i);
        if ((a & 0xff) == 0x03)
            *ec = true;
        if (a == 0x0807)
            *ed = true;
    }
    if (!tls13 && !ecdsa_suite)
        *ec = *ed = false;
}

static int pick_pair(const struct tls_entry *e, const SSL_CLIENT_HELLO *ch)
{
    if (e->nctx == 1)
        return 0;
    bool ec, ed;
    client_key_support(ch, &ec, &ed);
    int rsa = -1;
    for (int i = 0; i < e->nctx; i++) {
        if ((e->kind[i] == KEY_EC && ec) || (e->kind[i] == KEY_ED25519 && ed))
            return i;
        if (e->kind[i] == KEY_RSA && rsa < 0)
            rsa = i;
    }
    return rsa >= 0 ? rsa : 0;
}

/* Runs on the ClientHello, before resumption is decided: switches the
 * connection to the context of the ssl its server name selects. With no
 * match nothing is switched and servername_cb refuses the handshake (it
 * can send unrecognized_name, which this callback cannot). */
static enum ssl_select_cert_result_t select_cert_cb(const SSL_CLIENT_HELLO *ch)
{
    SSL *ssl = ch->ssl;
    struct tls_conn *t = SSL_get_app_data(ssl);
    if (t && t->entry)
        return ssl_select_cert_success; /* a second ClientHello (HelloRetryRequest) */
    if (!t || !t->st)
        return ssl_select_cert_error;
    struct tls_entry *e = store_lookup(t->st, SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    if (!e)
        return ssl_select_cert_success;
    if (!SSL_set_SSL_CTX(ssl, e->ctx[pick_pair(e, ch)]))
        return ssl_select_cert_error;
    /* Version and verification settings are the SSL's own, not the
     * context's: set them on the connection. */
    SSL_set_min_proto_version(ssl, e->min_version);
    SSL_set_max_proto_version(ssl, e->max_version);
    if (e->mtls) {
        /* BoringSSL's depth counts the trust anchor (OpenSSL 1.0.2), nginx
         * and APISIX run OpenSSL >= 1.1 where it does not: depth 1 there
         * takes one intermediate CA. */
        SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        SSL_set_verify_depth(ssl, e->depth + 1);
    }
    t->entry = entry_ref(e);
    /* The entry is all the connection needs from the store: a slow
     * handshake does not keep a whole old store alive. */
    tls_ctx_store_unref(t->st);
    t->st = NULL;
    return ssl_select_cert_success;
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    struct tls_conn *t = SSL_get_app_data(ssl);
    (void)arg;
    if (t && t->entry)
        return SSL_TLSEXT_ERR_OK;
    if (t) {
        t->fail = TLS_FAIL_UNKNOWN_SNI;
        t->why = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) ? "no certificate for the "
                                                                      "server name"
                                                                    : "no server name (SNI)";
    }
    *alert = SSL_AD_UNRECOGNIZED_NAME;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int alpn_select_cb(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
                          unsigned inlen, void *arg)
{
    struct tls_conn *t = SSL_get_app_data(ssl);
    (void)arg;
    if (!t || !t->alpn || inlen == 0)
        return SSL_TLSEXT_ERR_NOACK;
    uint8_t *sel;
    /* Our order wins: the first of our protocols the client offers. */
    if (SSL_select_next_proto(&sel, outlen, (const uint8_t *)t->alpn, (unsigned)strlen(t->alpn), in,
                              inlen) == OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
    }
    t->fail = TLS_FAIL_NO_ALPN;
    t->why = "no common application protocol (ALPN)";
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static SSL_CTX *base_ctx_new(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    if (!ctx)
        return NULL;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_strict_cipher_list(ctx, TLS12_CIPHERS);
    SSL_CTX_set_select_certificate_cb(ctx, select_cert_cb);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, NULL);
    /* Tickets: sealed and opened here (the session context stays the base
     * after SSL_set_SSL_CTX), with the node's ring when there is one, else
     * with keys BoringSSL makes at random in this process and rotates. The
     * cache serves TLS 1.2 clients without tickets. */
    use_ring(ctx);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 1024);
    SSL_CTX_set_timeout(ctx, TLS12_SESSION_TIMEOUT);
    return ctx;
}

/* ---- client contexts ---- */

static void client_ctx_unref(struct tls_client_ctx *cc)
{
    if (!cc || --cc->refs > 0)
        return;
    SSL_CTX_free(cc->ctx);
    free(cc->cert);
    free(cc->key);
    free(cc->ca_file);
    free(cc);
}

static uint64_t fnv64(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t client_fp(bool verify, const char *ca_file, const char *cert, const char *key)
{
    uint64_t h = 14695981039346656037ull;
    h = fnv64(h, verify ? "v1" : "v0", 3);
    if (verify)
        h = fnv64(h, ca_file, strlen(ca_file) + 1);
    h = fnv64(h, cert ? cert : "", cert ? strlen(cert) + 1 : 1);
    h = fnv64(h, key ? key : "", key ? strlen(key) + 1 : 1);
    return h;
}

static bool streq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    struct tls_conn *t = SSL_get_app_data(ssl);
    if (!t)
        return 0;
    if (t->session)
        SSL_SESSION_free(t->session);
    t->session = sess;
    return 1; /* we keep the reference */
}

static X509_STORE *store_ca(struct tls_ctx_store *st, char *err, size_t errlen)
{
    if (st->ca)
        return st->ca;
    X509_STORE *ca = X509_STORE_new();
    if (!ca || !X509_STORE_load_locations(ca, st->ca_file, NULL)) {
        snprintf(err, errlen, "cannot load the CA bundle %s: %s", st->ca_file, ssl_errstr());
        X509_STORE_free(ca);
        ERR_clear_error();
        return NULL;
    }
    st->ca = ca;
    return ca;
}

static struct tls_client_ctx *client_ctx_new(struct tls_ctx_store *st, bool verify,
                                             const char *cert, const char *key, char *err,
                                             size_t errlen)
{
    struct tls_client_ctx *cc = calloc(1, sizeof(*cc));
    if (!cc)
        goto nomem;
    cc->refs = 1;
    cc->verify = verify;
    cc->fp = client_fp(verify, st->ca_file, cert, key);
    if ((cert && !(cc->cert = strdup(cert))) || (key && !(cc->key = strdup(key))) ||
        !(cc->ca_file = strdup(st->ca_file)) || !(cc->ctx = SSL_CTX_new(TLS_method())))
        goto nomem;
    SSL_CTX_set_min_proto_version(cc->ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(cc->ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(cc->ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(cc->ctx, new_session_cb);
    if (verify) {
        X509_STORE *ca = store_ca(st, err, errlen);
        if (!ca)
            goto fail;
        X509_STORE_up_ref(ca);
        SSL_CTX_set_cert_store(cc->ctx, ca);
        SSL_CTX_set_verify(cc->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(cc->ctx, SSL_VERIFY_NONE, NULL);
    }
    if (cert) {
        char why[200];
        if (ctx_use_pair(cc->ctx, cert, key, NULL, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "client certificate: %s", why);
            goto fail;
        }
    }
    return cc;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    client_ctx_unref(cc);
    ERR_clear_error();
    return NULL;
}

/* The cached context for a configuration, made on first use. Borrowed. */
static struct tls_client_ctx *client_ctx_get(struct tls_ctx_store *st, bool verify,
                                             const char *cert, const char *key, char *err,
                                             size_t errlen)
{
    uint64_t fp = client_fp(verify, st->ca_file, cert, key);
    for (size_t i = 0; i < st->nclients; i++) {
        struct tls_client_ctx *cc = st->clients[i];
        if (cc->fp == fp && cc->verify == verify && streq(cc->cert, cert) && streq(cc->key, key) &&
            strcmp(cc->ca_file, st->ca_file) == 0)
            return cc;
    }
    struct tls_client_ctx *cc = client_ctx_new(st, verify, cert, key, err, errlen);
    if (!cc)
        return NULL;
    if (st->nclients == TLS_MAX_CLIENT_CTX) {
        /* Full: the newest cached one makes room (connections keep theirs). */
        client_ctx_unref(st->clients[--st->nclients]);
    }
    if (!st->clients) {
        st->clients = calloc(TLS_MAX_CLIENT_CTX, sizeof(*st->clients));
        if (!st->clients) {
            client_ctx_unref(cc);
            snprintf(err, errlen, "out of memory");
            return NULL;
        }
    }
    st->clients[st->nclients++] = cc;
    return cc;
}

struct tls_client_ctx *tls_ctx_store_client(struct tls_ctx_store *st, const json_t *upstream_conf,
                                            const json_t *resources, char *err, size_t errlen)
{
    const json_t *tls = json_object_get(upstream_conf, "tls");
    bool verify = json_is_true(json_object_get(tls, "verify"));
    const char *cert = json_string_value(json_object_get(tls, "client_cert"));
    const char *key = json_string_value(json_object_get(tls, "client_key"));
    const json_t *cid = json_object_get(tls, "client_cert_id");
    if (cid) {
        char path[160];
        if (json_is_string(cid))
            snprintf(path, sizeof(path), "/apisix/ssls/%s", json_string_value(cid));
        else if (json_is_integer(cid))
            snprintf(path, sizeof(path), "/apisix/ssls/%lld", (long long)json_integer_value(cid));
        else
            path[0] = '\0';
        const json_t *ssl = path[0] ? json_object_get(resources, path) : NULL;
        const char *type = json_string_value(json_object_get(ssl, "type"));
        if (!ssl || !type || strcmp(type, "client") != 0) {
            /* APISIX: the ssl must exist and be of type client. */
            snprintf(err, errlen, "client_cert_id: %s is not an ssl of type client",
                     path[0] ? path + 13 : "?");
            return NULL;
        }
        cert = json_string_value(json_object_get(ssl, "cert"));
        key = json_string_value(json_object_get(ssl, "key"));
    }
    if ((cert == NULL) != (key == NULL)) {
        snprintf(err, errlen, "client certificate without its key");
        return NULL;
    }
    return client_ctx_get(st, verify, cert, key, err, errlen);
}

uint64_t tls_client_ctx_fingerprint(const struct tls_client_ctx *cc)
{
    return cc->fp;
}

/* ---- stores ---- */

struct ssl_key {
    const char *key; /* "/apisix/ssls/ID" */
    json_t *conf;    /* borrowed from resources */
};

static int ssl_key_cmp(const void *a, const void *b)
{
    return strcmp(((const struct ssl_key *)a)->key, ((const struct ssl_key *)b)->key);
}

static struct tls_entry *prev_entry(const struct tls_ctx_store *prev, const char *id,
                                    const json_t *conf)
{
    for (size_t i = 0; prev && i < prev->nentries; i++) {
        struct tls_entry *e = prev->entries[i];
        if (strcmp(e->id, id) == 0)
            return json_equal(e->conf, (json_t *)conf) ? e : NULL;
    }
    return NULL;
}

/* Adds one sni of entry e (rank order) to the index arrays. */
static int add_sni(struct tls_ctx_store *st, size_t *capx, size_t *capw, const char *sni,
                   struct tls_entry *e, size_t order)
{
    size_t n = strlen(sni);
    if (n == 0 || n > TLS_SNI_MAX)
        return 0;
    if (strcmp(sni, "*") == 0) {
        if (!st->star)
            st->star = e;
        return 0;
    }
    bool wild = n > 2 && sni[0] == '*' && sni[1] == '.';
    struct sni_ent **v = wild ? &st->wild : &st->exact;
    size_t *cnt = wild ? &st->nwild : &st->nexact, *cap = wild ? capw : capx;
    if (*cnt == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        struct sni_ent *nv = realloc(*v, nc * sizeof(**v));
        if (!nv)
            return -ENOMEM;
        *v = nv;
        *cap = nc;
    }
    const char *src = wild ? sni + 1 : sni; /* "*.x" is kept as ".x" */
    size_t sl = strlen(src);
    char *name = malloc(sl + 1);
    if (!name)
        return -ENOMEM;
    lower_copy(name, src, sl);
    (*v)[(*cnt)++] = (struct sni_ent){.name = name, .e = e, .order = order};
    return 0;
}

static void store_free(struct tls_ctx_store *st)
{
    for (size_t i = 0; i < st->nexact; i++)
        free(st->exact[i].name);
    for (size_t i = 0; i < st->nwild; i++)
        free(st->wild[i].name);
    free(st->exact);
    free(st->wild);
    for (size_t i = 0; i < st->nentries; i++)
        entry_unref(st->entries[i]);
    free(st->entries);
    for (size_t i = 0; i < st->nclients; i++)
        client_ctx_unref(st->clients[i]);
    free(st->clients);
    X509_STORE_free(st->ca);
    SSL_CTX_free(st->base);
    free(st->ca_file);
    free(st);
}

struct tls_ctx_store *tls_ctx_store_build(const json_t *resources, struct tls_ctx_store *prev,
                                          const char *ca_file)
{
    struct ssl_key *keys = NULL;
    size_t nkeys = 0, capx = 0, capw = 0;
    struct tls_ctx_store *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->refs = 1;
    st->ca_file = strdup(ca_file ? ca_file : TLS_DEFAULT_CA_FILE);
    if (!st->ca_file)
        goto fail;
    if (prev) {
        SSL_CTX_up_ref(prev->base);
        st->base = prev->base;
    } else if (!(st->base = base_ctx_new())) {
        goto fail;
    }
    if (prev && strcmp(prev->ca_file, st->ca_file) == 0) {
        /* The CA bundle and the contexts without a client certificate stay
         * (pooled upstream connections and their sessions stay usable);
         * client certificates are parsed again on first use. */
        if (prev->ca && X509_STORE_up_ref(prev->ca))
            st->ca = prev->ca;
        for (size_t i = 0; i < prev->nclients; i++) {
            struct tls_client_ctx *cc = prev->clients[i];
            if (cc->cert)
                continue;
            if (!st->clients && !(st->clients = calloc(TLS_MAX_CLIENT_CTX, sizeof(*st->clients))))
                goto fail;
            cc->refs++;
            st->clients[st->nclients++] = cc;
        }
    }

    /* The ssls by resource key: the first one wins a name claimed twice. */
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)resources, k, v)
    {
        if (strncmp(k, "/apisix/ssls/", 13) != 0 || !k[13] || !json_is_object(v))
            continue;
        if (nkeys % 64 == 0) {
            struct ssl_key *nk = realloc(keys, (nkeys + 64) * sizeof(*keys));
            if (!nk)
                goto fail;
            keys = nk;
        }
        keys[nkeys++] = (struct ssl_key){.key = k, .conf = v};
    }
    if (nkeys > 1)
        qsort(keys, nkeys, sizeof(*keys), ssl_key_cmp);
    if (nkeys && !(st->entries = calloc(nkeys, sizeof(*st->entries))))
        goto fail;
    for (size_t i = 0; i < nkeys; i++) {
        json_t *conf = keys[i].conf;
        const char *id = keys[i].key + 13;
        const char *type = json_string_value(json_object_get(conf, "type"));
        const json_t *status = json_object_get(conf, "status");
        if ((type && strcmp(type, "server") != 0) ||
            (json_is_integer(status) && json_integer_value(status) != 1))
            continue; /* client certificates, disabled ssls */
        struct tls_entry *e = prev_entry(prev, id, conf);
        if (e) {
            entry_ref(e);
        } else {
            char why[256];
            if (!(e = entry_build(id, conf, why, sizeof(why)))) {
                log_warn("ssl %s: %s; not served", id, why);
                continue;
            }
        }
        st->entries[st->nentries++] = e;
        const json_t *snis = json_object_get(conf, "snis");
        const char *sni = json_string_value(json_object_get(conf, "sni"));
        int rc = 0;
        if (json_is_array(snis)) {
            size_t j;
            json_t *s;
            json_array_foreach(snis, j, s)
            {
                if (json_is_string(s) && rc == 0)
                    rc = add_sni(st, &capx, &capw, json_string_value(s), e, i);
            }
        } else if (sni) {
            rc = add_sni(st, &capx, &capw, sni, e, i);
        }
        if (rc < 0)
            goto fail;
    }
    if (st->nexact > 1)
        qsort(st->exact, st->nexact, sizeof(*st->exact), sni_cmp);
    if (st->nwild > 1)
        qsort(st->wild, st->nwild, sizeof(*st->wild), sni_cmp);
    free(keys);
    return st;
fail:
    log_error("tls: out of memory building the certificate store");
    free(keys);
    store_free(st);
    ERR_clear_error();
    return NULL;
}

struct tls_ctx_store *tls_ctx_store_ref(struct tls_ctx_store *st)
{
    st->refs++;
    return st;
}

void tls_ctx_store_unref(struct tls_ctx_store *st)
{
    if (st && --st->refs == 0)
        store_free(st);
}

size_t tls_ctx_store_count(const struct tls_ctx_store *st)
{
    return st ? st->nentries : 0;
}

const char *tls_ctx_store_match(const struct tls_ctx_store *st, const char *sni)
{
    const struct tls_entry *e = st ? store_lookup(st, sni) : NULL;
    return e ? e->id : NULL;
}

/* ---- connections ---- */

static struct tls_conn *conn_new(SSL_CTX *ctx)
{
    struct tls_conn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    BIO *bio = NULL;
    if (!(t->ssl = SSL_new(ctx)) || !(bio = BIO_new(&tls_bio_method))) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio); /* one reference, for both directions */
    SSL_set_app_data(t->ssl, t);
    return t;
}

struct tls_conn *tls_conn_new_server(struct tls_ctx_store *st, const char *alpn)
{
    if (!st)
        return NULL;
    struct tls_conn *t = conn_new(st->base);
    if (!t)
        return NULL;
    t->flags = TF_SERVER;
    t->alpn = alpn;
    t->st = tls_ctx_store_ref(st);
    SSL_set_accept_state(t->ssl);
    return t;
}

static bool is_ip_literal(const char *s)
{
    unsigned char b[16];
    return inet_pton(AF_INET, s, b) == 1 || inet_pton(AF_INET6, s, b) == 1;
}

struct tls_conn *tls_conn_new_client(struct tls_client_ctx *cc, const char *server_name,
                                     const char *alpn, const struct tls_session *resume)
{
    struct tls_conn *t = conn_new(cc->ctx);
    if (!t)
        return NULL;
    SSL *ssl = t->ssl;
    int ok = 1;
    bool ip = server_name && is_ip_literal(server_name);
    if (server_name && !ip)
        ok = SSL_set_tlsext_host_name(ssl, server_name);
    if (ok && cc->verify && server_name) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (ip) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(param, server_name);
        } else {
            X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(ssl, server_name);
        }
    }
    if (ok && alpn)
        ok = SSL_set_alpn_protos(ssl, (const uint8_t *)alpn, (unsigned)strlen(alpn)) == 0;
    if (ok && resume)
        ok = SSL_set_session(ssl, (SSL_SESSION *)resume);
    if (!ok) {
        tls_conn_free(t);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_connect_state(ssl);
    tls_conn_handshake(t); /* the ClientHello goes out at once */
    return t;
}

void tls_conn_free(struct tls_conn *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);
    if (t->session)
        SSL_SESSION_free(t->session);
    entry_unref(t->entry);
    tls_ctx_store_unref(t->st);
    buf_free(&t->in);
    buf_free(&t->out);
    buf_free(&t->early);
    free(t);
}

int tls_conn_feed(struct tls_conn *t, const void *data, size_t len)
{
    if (t->err)
        return t->err;
    return buf_append(&t->in, data, len, TLS_MAX_PENDING_IN);
}

static int write_all(struct tls_conn *t, const char *p, size_t n)
{
    while (n > 0) {
        int chunk = n > INT_MAX ? INT_MAX : (int)n;
        ERR_clear_error();
        int rc = SSL_write(t->ssl, p, chunk);
        if (rc <= 0)
            return fail(t, SSL_get_error(t->ssl, rc));
        p += rc;
        n -= (size_t)rc;
    }
    return 0;
}

static int handshake_finished(struct tls_conn *t)
{
    t->flags |= TF_DONE;
    if (t->flags & TF_SERVER) {
        if (!t->entry) { /* cannot happen: servername_cb refuses first */
            t->fail = TLS_FAIL_UNKNOWN_SNI;
            t->why = "no certificate was chosen";
            t->err = -EPROTO;
            return t->err;
        }
        tls_ctx_store_unref(t->st);
        t->st = NULL;
    }
    /* The context settings are not needed any more: a long-lived idle
     * connection keeps only its keys and session. */
    SSL_set_shed_handshake_config(t->ssl, 1);
    if (buf_used(&t->early)) {
        int rc = write_all(t, t->early.p + t->early.off, buf_used(&t->early));
        buf_free(&t->early);
        if (rc < 0)
            return rc;
    }
    if ((t->flags & TF_SHUT) && SSL_shutdown(t->ssl) < 0)
        ERR_clear_error();
    return 0;
}

int tls_conn_handshake(struct tls_conn *t)
{
    if (t->err)
        return t->err;
    if (t->flags & TF_DONE)
        return 0;
    ERR_clear_error();
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1)
        return handshake_finished(t);
    int e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ && !t->fail)
        return -EAGAIN;
    return fail(t, e);
}

long tls_conn_read(struct tls_conn *t, void *buf, size_t cap)
{
    if (t->err)
        return t->err;
    if (t->flags & TF_PEER_CLOSED)
        return 0;
    if (!(t->flags & TF_DONE)) {
        int rc = tls_conn_handshake(t);
        if (rc < 0)
            return rc;
    }
    if (cap == 0)
        return -EINVAL;
    ERR_clear_error();
    int n = SSL_read(t->ssl, buf, cap > INT_MAX ? INT_MAX : (int)cap);
    if (n > 0)
        return n;
    int e = SSL_get_error(t->ssl, n);
    if (e == SSL_ERROR_WANT_READ && !t->fail)
        return -EAGAIN;
    if (e == SSL_ERROR_ZERO_RETURN) {
        t->flags |= TF_PEER_CLOSED;
        return 0;
    }
    return fail(t, e);
}

int tls_conn_writev(struct tls_conn *t, const uv_buf_t *bufs, unsigned n)
{
    if (t->err)
        return t->err;
    if (t->flags & TF_SHUT)
        return -EPIPE;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (!(t->flags & TF_DONE)) {
        if (total > TLS_MAX_EARLY || buf_used(&t->early) > TLS_MAX_EARLY - total)
            return -ENOBUFS;
        for (unsigned i = 0; i < n; i++) {
            int rc = buf_append(&t->early, bufs[i].base, bufs[i].len, TLS_MAX_EARLY);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    /* Refused before anything is encrypted, so the connection stays usable
     * (a record adds at most 5 + 16 + 256 bytes; a failing BIO write would
     * be fatal). */
    size_t grow = total + (total / 16384 + n + 1) * 300;
    if (total > TLS_MAX_PENDING_OUT || buf_used(&t->out) > TLS_MAX_PENDING_OUT - grow)
        return -ENOBUFS;
    /* Small pieces (a chunk header, a CRLF) go out in one record with
     * their neighbours instead of a record each. */
    char gather[TLS_GATHER];
    size_t gl = 0;
    for (unsigned i = 0; i < n; i++) {
        const char *p = bufs[i].base;
        size_t len = bufs[i].len;
        if (len >= TLS_GATHER_BIG || gl + len > sizeof(gather)) {
            if (gl) {
                int rc = write_all(t, gather, gl);
                if (rc < 0)
                    return rc;
                gl = 0;
            }
        }
        if (len >= TLS_GATHER_BIG) {
            int rc = write_all(t, p, len);
            if (rc < 0)
                return rc;
            continue;
        }
        memcpy(gather + gl, p, len);
        gl += len;
    }
    return gl ? write_all(t, gather, gl) : 0;
}

int tls_conn_write(struct tls_conn *t, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    if (len > UINT_MAX)
        return -EINVAL;
    return tls_conn_writev(t, &b, 1);
}

size_t tls_conn_out(const struct tls_conn *t, const char **data)
{
    *data = t->out.p ? t->out.p + t->out.off : NULL;
    return buf_used(&t->out);
}

void tls_conn_out_consume(struct tls_conn *t, size_t n)
{
    buf_consume(&t->out, n);
}

int tls_conn_shutdown(struct tls_conn *t)
{
    if (t->flags & TF_SHUT)
        return 0;
    t->flags |= TF_SHUT;
    if (t->err || !(t->flags & TF_DONE))
        return 0; /* nothing to close cleanly yet (done at the handshake's end) */
    ERR_clear_error();
    if (SSL_shutdown(t->ssl) < 0) {
        ERR_clear_error();
        return t->err ? t->err : 0;
    }
    return 0;
}

/* ---- state ---- */

bool tls_conn_is_server(const struct tls_conn *t)
{
    return t->flags & TF_SERVER;
}

bool tls_conn_handshake_done(const struct tls_conn *t)
{
    return (t->flags & TF_DONE) && !t->err;
}

bool tls_conn_resumed(const struct tls_conn *t)
{
    return (t->flags & TF_DONE) && SSL_session_reused(t->ssl);
}

enum tls_failure tls_conn_failure(const struct tls_conn *t)
{
    return t->err ? (enum tls_failure)t->fail : TLS_FAIL_NONE;
}

const char *tls_conn_error(const struct tls_conn *t)
{
    return t->err && t->why ? t->why : "";
}

size_t tls_conn_buffered(const struct tls_conn *t)
{
    return buf_used(&t->in) + buf_used(&t->out) + buf_used(&t->early);
}

const char *tls_conn_sni(const struct tls_conn *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

const char *tls_conn_ssl_id(const struct tls_conn *t)
{
    return t->entry ? t->entry->id : NULL;
}

const char *tls_conn_alpn(const struct tls_conn *t, size_t *len)
{
    const uint8_t *p = NULL;
    unsigned l = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &l);
    *len = p ? l : 0;
    return (const char *)p;
}

const char *tls_conn_version(const struct tls_conn *t)
{
    return SSL_get_version(t->ssl);
}

const char *tls_conn_cipher(const struct tls_conn *t)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(t->ssl);
    return c ? SSL_CIPHER_standard_name(c) : "";
}

/* Copies s (n bytes) into buf, control characters as '?'. */
static int put_str(char *buf, size_t len, size_t *off, const char *s, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (*off + 1 >= len) {
            rc = -ENOSPC;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        buf[(*off)++] = (char)(c < 0x20 || c == 0x7f ? '?' : c);
    }
    if (len)
        buf[*off < len ? *off : len - 1] = '\0';
    return rc;
}

int tls_conn_peer_subject(const struct tls_conn *t, char *buf, size_t len)
{
    X509 *x = SSL_get_peer_certificate(t->ssl);
    if (!x)
        return -ENOENT;
    BIO *b = BIO_new(BIO_s_mem());
    int rc = -ENOMEM;
    const uint8_t *data;
    size_t dl;
    if (b && X509_NAME_print_ex(b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253) >= 0 &&
        BIO_mem_contents(b, &data, &dl)) {
        size_t off = 0;
        rc = put_str(buf, len, &off, (const char *)data, dl);
        if (rc == 0)
            rc = (int)off;
    }
    BIO_free(b);
    X509_free(x);
    ERR_clear_error();
    return rc;
}

int tls_conn_peer_cn(const struct tls_conn *t, char *buf, size_t len)
{
    X509 *x = SSL_get_peer_certificate(t->ssl);
    if (!x)
        return -ENOENT;
    X509_NAME *name = X509_get_subject_name(x);
    int idx = -1, last = -1;
    while ((idx = X509_NAME_get_index_by_NID(name, NID_commonName, idx)) >= 0)
        last = idx;
    int rc = -ENOENT;
    if (last >= 0) {
        unsigned char *utf8 = NULL;
        int n =
            ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, last)));
        if (n >= 0) {
            size_t off = 0;
            rc = put_str(buf, len, &off, (const char *)utf8, (size_t)n);
            if (rc == 0)
                rc = (int)off;
            OPENSSL_free(utf8);
        } else {
            rc = -ENOMEM;
        }
    }
    X509_free(x);
    ERR_clear_error();
    return rc;
}

int tls_conn_peer_sans(const struct tls_conn *t, char *buf, size_t len)
{
    X509 *x = SSL_get_peer_certificate(t->ssl);
    if (!x)
        return -ENOENT;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    size_t off = 0;
    int rc = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; gens && rc == 0 && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        const char *tag = NULL;
        char ip[64];
        const char *val = NULL;
        size_t vl = 0;
        if (g->type == GEN_DNS || g->type == GEN_EMAIL || g->type == GEN_URI) {
            tag = g->type == GEN_DNS ? "DNS:" : g->type == GEN_EMAIL ? "email:" : "URI:";
            val = (const char *)ASN1_STRING_get0_data(g->d.ia5);
            vl = (size_t)ASN1_STRING_length(g->d.ia5);
        } else if (g->type == GEN_IPADD) {
            int l = ASN1_STRING_length(g->d.ip);
            const unsigned char *a = ASN1_STRING_get0_data(g->d.ip);
            if ((l == 4 && inet_ntop(AF_INET, a, ip, sizeof(ip))) ||
                (l == 16 && inet_ntop(AF_INET6, a, ip, sizeof(ip)))) {
                tag = "IP:";
                val = ip;
                vl = strlen(ip);
            }
        }
        if (!tag)
            continue;
        if (off)
            rc = put_str(buf, len, &off, ", ", 2);
        if (rc == 0)
            rc = put_str(buf, len, &off, tag, strlen(tag));
        if (rc == 0)
            rc = put_str(buf, len, &off, val, vl);
    }
    GENERAL_NAMES_free(gens);
    X509_free(x);
    ERR_clear_error();
    return rc < 0 ? rc : (int)off;
}

struct tls_session *tls_conn_session(struct tls_conn *t)
{
    if (!t->session || !SSL_SESSION_is_resumable(t->session))
        return NULL;
    SSL_SESSION_up_ref(t->session);
    return (struct tls_session *)t->session;
}

void tls_session_free(struct tls_session *s)
{
    if (s)
        SSL_SESSION_free((SSL_SESSION *)s);
}
