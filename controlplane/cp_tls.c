/*
 * cp_tls: see cp_tls.h. Two memory BIOs per connection: rbio holds the
 * ciphertext fed and not yet consumed by OpenSSL, wbio what it produced.
 */
#include "cp_tls.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cp_tls_ctx {
    SSL_CTX *ssl;
};

struct cp_tls_conn {
    SSL *ssl;
    BIO *rbio;          /* network -> OpenSSL (owned by ssl) */
    BIO *wbio;          /* OpenSSL -> network (owned by ssl) */
    char *pending;      /* plaintext written before the handshake finished */
    size_t npending;
    int established;
    char subject[256];
    char error[256];
};

static void ssl_errors(char *out, size_t len, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[200] = "";
    if (e)
        ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(out, len, "%s%s%s", what, buf[0] ? ": " : "", buf);
    ERR_clear_error();
}

int cp_tls_ctx_new(const char *cert, const char *key, const char *client_ca,
                   struct cp_tls_ctx **out, char *err, size_t errlen)
{
    struct cp_tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    ctx->ssl = SSL_CTX_new(TLS_server_method());
    if (!ctx->ssl) {
        ssl_errors(err, errlen, "TLS context");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx->ssl, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx->ssl, cert) != 1) {
        char why[300];
        ssl_errors(why, sizeof(why), "cannot load");
        snprintf(err, errlen, "config stream TLS: certificate %s: %s", cert, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx->ssl, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx->ssl) != 1) {
        char why[300];
        ssl_errors(why, sizeof(why), "cannot load or does not match the certificate");
        snprintf(err, errlen, "config stream TLS: key %s: %s", key, why);
        goto fail;
    }
    if (client_ca) {
        if (SSL_CTX_load_verify_locations(ctx->ssl, client_ca, NULL) != 1) {
            char why[300];
            ssl_errors(why, sizeof(why), "cannot load");
            snprintf(err, errlen, "config stream TLS: client_ca %s: %s", client_ca, why);
            goto fail;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
        if (names)
            SSL_CTX_set_client_CA_list(ctx->ssl, names);
        SSL_CTX_set_verify(ctx->ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
        SSL_CTX_set_verify_depth(ctx->ssl, 4);
    }
    /* Data planes reconnect often (failover, restarts): let them resume. */
    SSL_CTX_set_session_id_context(ctx->ssl, (const unsigned char *)"airgw-cfgstream", 15);
    *out = ctx;
    return 0;
fail:
    cp_tls_ctx_free(ctx);
    return -1;
}

void cp_tls_ctx_free(struct cp_tls_ctx *ctx)
{
    if (!ctx)
        return;
    SSL_CTX_free(ctx->ssl);
    free(ctx);
}

struct cp_tls_conn *cp_tls_conn_new(struct cp_tls_ctx *ctx)
{
    struct cp_tls_conn *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ssl = SSL_new(ctx->ssl);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !c->rbio || !c->wbio) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        SSL_free(c->ssl);
        free(c);
        return NULL;
    }
    BIO_set_mem_eof_return(c->rbio, -1); /* empty means "more to come", not EOF */
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    SSL_set_accept_state(c->ssl);
    return c;
}

void cp_tls_conn_free(struct cp_tls_conn *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    free(c->pending);
    free(c);
}

int cp_tls_feed(struct cp_tls_conn *c, const void *data, size_t len)
{
    return BIO_write(c->rbio, data, (int)len) == (int)len ? 0 : -1;
}

static int flush_pending(struct cp_tls_conn *c)
{
    if (!c->npending)
        return 0;
    int n = SSL_write(c->ssl, c->pending, (int)c->npending);
    free(c->pending);
    c->pending = NULL;
    c->npending = 0;
    return n > 0 ? 0 : -1;
}

static void on_established(struct cp_tls_conn *c)
{
    c->established = 1;
    X509 *peer = SSL_get1_peer_certificate(c->ssl);
    if (peer) {
        BIO *b = BIO_new(BIO_s_mem());
        if (b) {
            X509_NAME_print_ex(b, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253 & ~XN_FLAG_DN_REV);
            int n = BIO_read(b, c->subject, (int)sizeof(c->subject) - 1);
            c->subject[n > 0 ? n : 0] = '\0';
            BIO_free(b);
        }
        X509_free(peer);
    }
}

long cp_tls_read(struct cp_tls_conn *c, void *buf, size_t cap)
{
    int n = SSL_read(c->ssl, buf, (int)cap);
    if (!c->established && SSL_is_init_finished(c->ssl)) {
        on_established(c);
        if (flush_pending(c) < 0) {
            ssl_errors(c->error, sizeof(c->error), "write failed");
            return -1;
        }
    }
    if (n > 0)
        return n;
    int e = SSL_get_error(c->ssl, n);
    if (e == SSL_ERROR_WANT_READ)
        return -2;
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e == SSL_ERROR_SSL) {
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK)
            snprintf(c->error, sizeof(c->error), "TLS handshake failed: client certificate: %s",
                     X509_verify_cert_error_string(v));
        else
            ssl_errors(c->error, sizeof(c->error), "TLS failed");
    } else {
        snprintf(c->error, sizeof(c->error), "TLS failed (error %d)", e);
        ERR_clear_error();
    }
    return -1;
}

int cp_tls_write(struct cp_tls_conn *c, const void *data, size_t len)
{
    if (!len)
        return 0;
    if (!c->established) {
        char *p = realloc(c->pending, c->npending + len);
        if (!p)
            return -1;
        memcpy(p + c->npending, data, len);
        c->pending = p;
        c->npending += len;
        return 0;
    }
    int n = SSL_write(c->ssl, data, (int)len);
    if (n <= 0) {
        ssl_errors(c->error, sizeof(c->error), "write failed");
        return -1;
    }
    return 0;
}

size_t cp_tls_take_out(struct cp_tls_conn *c, char **out)
{
    *out = NULL;
    size_t n = (size_t)BIO_ctrl_pending(c->wbio);
    if (!n)
        return 0;
    char *b = malloc(n);
    if (!b)
        return 0;
    int r = BIO_read(c->wbio, b, (int)n);
    if (r <= 0) {
        free(b);
        return 0;
    }
    *out = b;
    return (size_t)r;
}

int cp_tls_established(const struct cp_tls_conn *c)
{
    return c->established;
}

const char *cp_tls_peer_subject(const struct cp_tls_conn *c)
{
    return c->subject;
}

const char *cp_tls_error(const struct cp_tls_conn *c)
{
    return c->error[0] ? c->error : "TLS failed";
}
