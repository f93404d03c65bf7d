/*
 * netaddr: "ADDR:PORT" listen/connect addresses, as flags and config files
 * write them: "127.0.0.1:9180", "0.0.0.0:9080", "[::1]:9180", "*:9080"
 * ("*" is 0.0.0.0). Host names are not resolved here.
 */
#ifndef AIRGW_NETADDR_H
#define AIRGW_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* Parses s into *out. Returns 0 or -EINVAL with a reason in err. */
int netaddr_parse(const char *s, struct sockaddr_storage *out, char *err, size_t errlen);

/* Formats an AF_INET/AF_INET6 address as "1.2.3.4:80" or "[::1]:80". */
void netaddr_format(const struct sockaddr *sa, char *buf, size_t len);

/* Formats only the address part ("1.2.3.4", "::1"). */
void netaddr_format_ip(const struct sockaddr *sa, char *buf, size_t len);

#endif
