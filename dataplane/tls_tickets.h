/*
 * tls_tickets: the TLS session ticket key ring's memory, apart from the TLS
 * engine so that the master (which makes and rotates the keys) and a worker
 * that has not spoken TLS yet need no BoringSSL. The public functions are
 * declared in tls.h (tls_ticket_keys_*); this header is for tls.c, which
 * seals and opens tickets with the keys.
 *
 * The ring is one shared page: the master writes it, every worker reads it
 * on each ticket it seals or opens. A sequence counter guards it (odd while
 * the master writes; a reader copies the keys and retries when the counter
 * moved), so a reader never blocks the master and never sees half a key.
 */
#ifndef AIRGW_DP_TLS_TICKETS_H
#define AIRGW_DP_TLS_TICKETS_H

#include <stdint.h>

#include "tls.h"

#define TLS_TICKET_NAME_LEN 16 /* BoringSSL's SSL_TICKET_KEY_NAME_LEN */

struct tls_ticket_key {
    uint8_t name[TLS_TICKET_NAME_LEN]; /* sent in the clear in each ticket */
    uint8_t hmac[32];                  /* HMAC-SHA256 key */
    uint8_t aes[32];                   /* AES-256-CBC key */
};

/* A consistent copy of the current key and the previous one (its name all
 * zero: none). */
void tls_tickets_read(const struct tls_ticket_keys *k, struct tls_ticket_key *cur,
                      struct tls_ticket_key *prev);

#endif
