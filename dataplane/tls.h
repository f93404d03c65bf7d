/*
 * tls: the data plane's one TLS layer (BoringSSL), shared by the HTTPS
 * listeners, the stream (MQTT) TLS listeners and upstream TLS (http scheme
 * "https", stream scheme "tls").
 *
 * Two parts:
 *
 *  - struct tls_ctx_store: the certificates of one configuration revision,
 *    built from the snapshot's `ssls` resources. Each enabled ssl of type
 *    "server" becomes one refcounted entry holding one SSL_CTX per
 *    certificate/key pair (cert/key, then certs[i]/keys[i]); an entry is
 *    built once and reused by the next revision's store while its ssl is
 *    unchanged (no per-connection parsing, and sessions stay resumable).
 *    A connection holds its entry (through its SSL), so it keeps its
 *    certificate when the store is swapped; new connections see the new
 *    store. The store also caches the client contexts for upstream TLS.
 *
 *  - struct tls_conn: one TLS connection (server or client side) driven
 *    entirely in memory, without sockets: the caller feeds ciphertext it
 *    read, reads plaintext, writes plaintext and sends the ciphertext the
 *    engine produced. Nothing blocks and nothing calls back into the
 *    caller, so it fits a libuv read callback as it is (see "Driving a
 *    connection" below). An idle connection holds no buffer: BoringSSL
 *    releases its record buffers by itself (SSL_MODE_RELEASE_BUFFERS is its
 *    default and a no-op flag there), the engine frees its own input and
 *    output buffers once drained, and the handshake configuration is shed
 *    once the handshake is done.
 *
 * Server behaviour (APISIX's radixtree_sni, nginx's ssl module):
 *  - TLS 1.2 minimum, 1.3 preferred (an ssl's ssl_protocols narrows that;
 *    TLSv1.1 is not offered); ECDHE with AEAD ciphers only for TLS 1.2.
 *  - The certificate is chosen from the ClientHello's server name: an exact
 *    name first, then "*.rest" for a name "label.rest" (a wildcard covers
 *    exactly one label, so "*.example.com" matches "a.example.com", neither
 *    "example.com" nor "a.b.example.com"), then an ssl whose sni is "*".
 *    Names compare case-insensitively. When several ssls claim one name the
 *    first by resource key wins. No server name, or a name no enabled ssl
 *    covers: the handshake fails with an unrecognized_name alert (APISIX
 *    has no default certificate either).
 *  - An ssl with several pairs (certs/keys) serves an ECDSA or Ed25519
 *    certificate to clients that announce such signature algorithms and
 *    the RSA one to the others, as nginx does with two ssl_certificate.
 *  - ALPN: the listener gives its protocol list (TLS_ALPN_HTTP1 for HTTPS);
 *    a client offering ALPN without any of them is refused with
 *    no_application_protocol (nginx >= 1.21.4); a client without ALPN is
 *    served.
 *  - Resumption: session tickets (TLS 1.2 and 1.3), plus a small server
 *    session cache for TLS 1.2 clients without tickets (per process). The
 *    ticket keys come from a key ring the master makes and every worker
 *    maps (tls_ticket_keys_*: random keys, rotated every
 *    TLS_TICKET_ROTATE_S with the previous key still accepted), so a client
 *    resumes on whichever worker of the node it reaches; a process without
 *    a ring (tests, a worker started by hand) uses BoringSSL's own random
 *    keys. BoringSSL sends TLS 1.3 tickets with the server's first
 *    application data. A session resumes only for the same ssl
 *    configuration (its session id context is a digest of it), so a
 *    changed certificate or client CA forces a full handshake.
 *  - mTLS: an ssl with client.ca requires a client certificate and verifies
 *    it against those CAs with depth client.depth (default 1: OpenSSL's and
 *    nginx's ssl_verify_depth meaning); no certificate or a failed
 *    verification fails the handshake (where APISIX's HTTP side would
 *    finish it and answer 400). client.skip_mtls_uri_regex is not supported
 *    (mTLS stays required; a warning is logged when the store is built).
 *    The verified certificate's subject, CN and SANs are available after
 *    the handshake (also on resumed sessions).
 *
 * Client behaviour (upstreams): SNI is the given server name unless it is
 * an IP literal; with tls.verify (APISIX's default: false) the chain is
 * verified against the system CA bundle (or the store's ca_file) and the
 * name against the certificate (DNS names, or IP SANs for an IP literal);
 * tls.client_cert/client_key or tls.client_cert_id (an ssl of type
 * "client") give the client certificate.
 *
 * Driving a connection (the same on both sides):
 *
 *     read callback with n ciphertext bytes:
 *         tls_conn_feed(t, buf, n);              // copied; freed once used
 *         while ((k = tls_conn_read(t, plain, cap)) > 0)
 *             consume k plaintext bytes;
 *         send tls_conn_out() bytes, then tls_conn_out_consume();
 *         k == -EAGAIN: wait for more input; k == 0: the peer closed
 *         (close_notify); other k < 0: fatal, close the socket (after
 *         sending any alert still in tls_conn_out()).
 *     to send plaintext: tls_conn_writev(), then send tls_conn_out().
 *     socket EOF without close_notify: a truncation; treat as EOF or error.
 *     to close: tls_conn_shutdown(), send tls_conn_out(), then shutdown(2).
 *
 * Everything here runs on one thread (a worker's loop): stores and
 * connections are not thread-safe.
 *
 * Linking: unit tests and fuzz targets link tls.c (and tls_tickets.c).
 * airgw-dataplane links tls_loader.c instead, which loads tls.c and
 * BoringSSL as a module (airgw-tls.so) on the first tls_ctx_store_build;
 * before that, no object of this API exists and every other entry point
 * returns its "nothing" value. The ticket key ring (tls_ticket_keys_*,
 * tls_tickets.c) needs no BoringSSL and is always linked in.
 */
#ifndef AIRGW_DP_TLS_H
#define AIRGW_DP_TLS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The module's interface: bumped when a tls.h entry point or a structure
 * that crosses the boundary (struct tls_ticket_keys) changes. The loader
 * refuses a module of another version or interface, as after an upgrade on
 * disk under a running master whose new workers still run the old program. */
#define TLS_MODULE_ABI "airgw-tls 1 " AIRGW_VERSION

/* ALPN protocol lists in wire format (length-prefixed names). */
#define TLS_ALPN_HTTP1 "\x08http/1.1"

/* The CA bundle upstream verification uses unless the store names another. */
#define TLS_DEFAULT_CA_FILE "/etc/ssl/certs/ca-certificates.crt"

/* Bounds on what a connection buffers (over: -ENOBUFS). */
#define TLS_MAX_PENDING_IN (1u << 20)  /* ciphertext fed and not read yet */
#define TLS_MAX_PENDING_OUT (4u << 20) /* ciphertext produced and not sent yet */
#define TLS_MAX_EARLY (1u << 20)       /* plaintext written before the handshake ended */

struct tls_ctx_store;
struct tls_client_ctx;
struct tls_conn;
struct tls_session;

/* ---- certificate stores ---- */

/*
 * Builds the store of one revision from resources (the snapshot's object of
 * "/apisix/ssls/ID" -> ssl, other keys ignored; borrowed). prev (borrowed,
 * may be NULL) is the store it replaces: its unchanged entries, its session
 * ticket keys and session cache, and its default upstream contexts are
 * shared, not rebuilt. ca_file is the CA bundle for upstream verification
 * (NULL: TLS_DEFAULT_CA_FILE). An ssl that cannot be used (bad PEM, key not
 * matching its certificate) is skipped with a warning naming it; the
 * control plane validated it, so that only happens for input a newer
 * control plane accepts. Returns the store (one reference) or NULL when
 * out of memory.
 */
struct tls_ctx_store *tls_ctx_store_build(const json_t *resources, struct tls_ctx_store *prev,
                                          const char *ca_file);

struct tls_ctx_store *tls_ctx_store_ref(struct tls_ctx_store *st);

/* Drops a reference; with the last one the store is freed. Connections
 * keep the entries they use. NULL is ignored. */
void tls_ctx_store_unref(struct tls_ctx_store *st);

/* Number of server certificates (ssls) the store serves. */
size_t tls_ctx_store_count(const struct tls_ctx_store *st);

/* The id of the ssl that a handshake with server name sni would use, or
 * NULL (sni NULL: none). Valid as long as the store. For logs and tests. */
const char *tls_ctx_store_match(const struct tls_ctx_store *st, const char *sni);

/*
 * The client context for an upstream (upstream_conf: the upstream object as
 * configured; its "tls" member is read, absent means no client certificate
 * and no verification). resources (may be NULL) resolves tls.client_cert_id.
 * Contexts are cached in the store by content (a certificate is parsed once
 * per revision); the result is borrowed from the store (the connections
 * made with it keep what they need). NULL with a message in err when the
 * client certificate cannot be used or memory is short.
 */
struct tls_client_ctx *tls_ctx_store_client(struct tls_ctx_store *st, const json_t *upstream_conf,
                                            const json_t *resources, char *err, size_t errlen);

/* A digest of the context's configuration (verification and client
 * certificate): equal for equal configurations, across revisions. Pool
 * keys use it so a pooled connection is reused only with the same one. */
uint64_t tls_client_ctx_fingerprint(const struct tls_client_ctx *cc);

/* ---- session ticket keys shared by the workers of a node ---- */

/* How often the master makes a new ticket key; tickets under the previous
 * key are still accepted (and renewed), so a ticket lives 12 to 24 hours. */
#define TLS_TICKET_ROTATE_S (12 * 3600)

struct tls_ticket_keys;

/*
 * The master: a key ring in shared memory (a memfd, close-on-exec) holding
 * a fresh random current key and no previous one. Workers receive its fd
 * (tls_ticket_keys_fd) and map it with tls_ticket_keys_attach. Does not
 * initialise BoringSSL (the keys come from getrandom). NULL with errno set
 * when the memory cannot be made.
 */
struct tls_ticket_keys *tls_ticket_keys_create(void);

/* A worker: maps the ring behind fd (inherited from the master; fd stays
 * open while the ring is mapped). NULL when fd is not a ring. */
struct tls_ticket_keys *tls_ticket_keys_attach(int fd);

int tls_ticket_keys_fd(const struct tls_ticket_keys *k);

/* The master: the current key becomes the previous one and a new random
 * key the current one, for every process mapping the ring at once. 0 or a
 * negative errno (the ring is unchanged then). */
int tls_ticket_keys_rotate(struct tls_ticket_keys *k);

/* Unmaps and closes. NULL is ignored. */
void tls_ticket_keys_free(struct tls_ticket_keys *k);

/*
 * Makes k (borrowed; NULL: none) the ring that the server contexts built
 * from now on encrypt and decrypt tickets with. Call it before the first
 * store is built, and keep k until the last store is freed.
 */
void tls_use_ticket_keys(struct tls_ticket_keys *k);

/* ---- connections ---- */

/* Why a connection failed (tls_conn_failure). */
enum tls_failure {
    TLS_FAIL_NONE = 0,
    TLS_FAIL_UNKNOWN_SNI,  /* server: no certificate for the client's server name (or none) */
    TLS_FAIL_NO_ALPN,      /* server: the client offered no protocol we speak */
    TLS_FAIL_NO_PEER_CERT, /* server: mTLS and the client sent no certificate */
    TLS_FAIL_VERIFY,       /* the peer's certificate did not verify */
    TLS_FAIL_PEER_ALERT,   /* the peer sent a fatal alert */
    TLS_FAIL_PROTOCOL,     /* malformed or unexpected input, or no common parameters */
    TLS_FAIL_LIMIT,        /* a TLS_MAX_* bound was hit */
    TLS_FAIL_NOMEM,        /* out of memory */
};

/*
 * A server-side connection serving st's certificates (a reference on st is
 * held until the handshake picked its certificate). alpn: the protocols
 * the listener speaks in wire format (e.g. TLS_ALPN_HTTP1; static or
 * outliving the connection), or NULL to ignore the client's ALPN. Returns
 * NULL when out of memory.
 */
struct tls_conn *tls_conn_new_server(struct tls_ctx_store *st, const char *alpn);

/*
 * A client-side connection with cc (borrowed; the connection keeps what it
 * needs). server_name: sent as SNI unless it is an IP literal, and the name
 * verified when cc verifies (NULL: no SNI, and only the chain is verified).
 * alpn: wire-format list to offer, or NULL. resume: a session from an
 * earlier connection to the same server (borrowed; NULL: none). The
 * ClientHello is produced at once: send tls_conn_out(). NULL when out of
 * memory.
 */
struct tls_conn *tls_conn_new_client(struct tls_client_ctx *cc, const char *server_name,
                                     const char *alpn, const struct tls_session *resume);

/* Frees the connection (no close_notify: call tls_conn_shutdown first for
 * a clean close). NULL is ignored. */
void tls_conn_free(struct tls_conn *t);

/* Gives ciphertext read from the network (copied). 0, or -ENOBUFS when
 * more than TLS_MAX_PENDING_IN bytes would wait, -ENOMEM, -EPIPE after a
 * failure. */
int tls_conn_feed(struct tls_conn *t, const void *data, size_t len);

/*
 * Advances the handshake with the input fed so far. 0: the handshake is
 * done (also when it already was); -EAGAIN: more input is needed (send
 * tls_conn_out() first: the peer may wait for it); other negative: failed
 * (-EPROTO, -ENOMEM; tls_conn_failure and tls_conn_error say why).
 */
int tls_conn_handshake(struct tls_conn *t);

/*
 * Reads plaintext into buf (at most cap bytes), finishing the handshake
 * first if needed. Returns the byte count (> 0); 0 when the peer sent
 * close_notify; -EAGAIN when more input is needed; another negative errno
 * on failure. Post-handshake messages (session tickets, key updates) are
 * handled here, so keep calling until -EAGAIN and then send tls_conn_out().
 */
long tls_conn_read(struct tls_conn *t, void *buf, size_t cap);

/*
 * Encrypts plaintext (small buffers are gathered into one record). Before
 * the handshake is done the plaintext is kept and sent once it is (at most
 * TLS_MAX_EARLY bytes). 0 or a negative errno (-ENOBUFS, -ENOMEM, -EPIPE
 * after a failure or shutdown). Then send tls_conn_out().
 */
int tls_conn_writev(struct tls_conn *t, const uv_buf_t *bufs, unsigned n);
int tls_conn_write(struct tls_conn *t, const void *data, size_t len);

/* Ciphertext waiting to be sent: its length, *data pointing at it (valid
 * until the next call on t). */
size_t tls_conn_out(const struct tls_conn *t, const char **data);

/* Marks n bytes of tls_conn_out() as sent. */
void tls_conn_out_consume(struct tls_conn *t, size_t n);

/* Queues close_notify (once). 0 or a negative errno. Then send
 * tls_conn_out(). Reading may go on (the peer may still send). */
int tls_conn_shutdown(struct tls_conn *t);

/* ---- connection state ---- */

bool tls_conn_is_server(const struct tls_conn *t);
bool tls_conn_handshake_done(const struct tls_conn *t);
/* The handshake resumed an earlier session. */
bool tls_conn_resumed(const struct tls_conn *t);
enum tls_failure tls_conn_failure(const struct tls_conn *t);
/* A short static text for the failure (BoringSSL's reason, the alert or
 * the verification error), or "" when none. */
const char *tls_conn_error(const struct tls_conn *t);
/* Bytes held in the engine's own buffers (input, output, early data). */
size_t tls_conn_buffered(const struct tls_conn *t);

/* Server: the server name the client sent (NULL: none). Client: the one
 * sent (NULL: none, as for an IP literal). */
const char *tls_conn_sni(const struct tls_conn *t);
/* Server: the id of the ssl serving the connection, or NULL before the
 * certificate was chosen. */
const char *tls_conn_ssl_id(const struct tls_conn *t);
/* The negotiated ALPN protocol (not NUL-terminated; *len 0: none). */
const char *tls_conn_alpn(const struct tls_conn *t, size_t *len);
/* "TLSv1.3", "TLSv1.2"; and the cipher's standard name. */
const char *tls_conn_version(const struct tls_conn *t);
const char *tls_conn_cipher(const struct tls_conn *t);

/*
 * The peer's certificate (server side: the verified client certificate, or
 * none without mTLS; client side: the server's). Each writes a
 * NUL-terminated string into buf and returns its length, -ENOENT without a
 * peer certificate, -ENOSPC when buf is too small (buf then holds a
 * truncated string).
 *   subject: RFC 2253, as nginx's $ssl_client_s_dn ("CN=dev1,O=Acme")
 *   cn:      the subject's last commonName
 *   sans:    subjectAltNames, ", "-separated, each "DNS:x", "IP:x",
 *            "email:x" or "URI:x" (others are skipped)
 */
int tls_conn_peer_subject(const struct tls_conn *t, char *buf, size_t len);
int tls_conn_peer_cn(const struct tls_conn *t, char *buf, size_t len);
int tls_conn_peer_sans(const struct tls_conn *t, char *buf, size_t len);

/* ---- client sessions (upstream resumption) ---- */

/* The newest resumable session of a client connection (a new reference),
 * or NULL. Keep it per upstream server and pass it to the next
 * tls_conn_new_client for that server and context. */
struct tls_session *tls_conn_session(struct tls_conn *t);
void tls_session_free(struct tls_session *s);

#endif
