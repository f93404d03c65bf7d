/* cp_tls: TLS for the config stream (OpenSSL). TODO(stream-tls). */
#include <stddef.h>
