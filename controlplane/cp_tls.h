/*
 * cp_tls: TLS for the control plane's config stream (OpenSSL; the control
 * plane never links BoringSSL, whose symbols clash with libcurl's OpenSSL).
 *
 * A connection is driven in memory, as the data plane's tls.h: feed the
 * ciphertext read from the socket, read plaintext, write plaintext, then
 * send what cp_tls_take_out() hands over. Nothing blocks, nothing calls
 * back.
 *
 * Server side only: TLS 1.2 minimum; with a client CA the peer must
 * present a certificate that verifies against it (mutual TLS), otherwise
 * the handshake fails. The verified subject is kept for logs and the data
 * plane listing.
 */
#ifndef AIRGW_CP_TLS_H
#define AIRGW_CP_TLS_H

#include <stddef.h>

struct cp_tls_ctx;
struct cp_tls_conn;

/* Loads the certificate chain and key (PEM files) and, when client_ca is
 * not NULL, the CAs that data plane certificates must chain to. 0 or -1
 * with a message in err. */
int cp_tls_ctx_new(const char *cert, const char *key, const char *client_ca,
                   struct cp_tls_ctx **out, char *err, size_t errlen);
void cp_tls_ctx_free(struct cp_tls_ctx *ctx);

/* A server-side connection. NULL when out of memory. */
struct cp_tls_conn *cp_tls_conn_new(struct cp_tls_ctx *ctx);
void cp_tls_conn_free(struct cp_tls_conn *c);

/* Ciphertext from the network. 0 or -1 (out of memory). */
int cp_tls_feed(struct cp_tls_conn *c, const void *data, size_t len);

/* Plaintext into buf: > 0 bytes; 0 the peer closed (close_notify); -2 more
 * input needed; -1 failure (cp_tls_error says why; send the pending output
 * first: it may hold an alert). */
long cp_tls_read(struct cp_tls_conn *c, void *buf, size_t cap);

/* Encrypts plaintext (queued until the handshake is done). 0 or -1. */
int cp_tls_write(struct cp_tls_conn *c, const void *data, size_t len);

/* Hands over the ciphertext waiting to be sent as a malloc'd buffer (the
 * caller frees it); 0 when there is none (*out NULL). */
size_t cp_tls_take_out(struct cp_tls_conn *c, char **out);

/* True once the handshake finished. */
int cp_tls_established(const struct cp_tls_conn *c);

/* The verified peer certificate's subject in the certificate's order
 * ("CN=dp1,O=Acme", RFC 2253 escaping), or "". */
const char *cp_tls_peer_subject(const struct cp_tls_conn *c);

/* Why the connection failed (one line). */
const char *cp_tls_error(const struct cp_tls_conn *c);

#endif
