/*
 * cidr: IPv4/IPv6 addresses and CIDR ranges ("10.0.0.0/8", "::1", "1.2.3.4").
 *
 * A bare address is a /32 (or /128) range. IPv4-mapped IPv6 addresses
 * (::ffff:1.2.3.4) match IPv4 ranges.
 */
#ifndef AIRGW_CIDR_H
#define AIRGW_CIDR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

struct cidr {
    int family;         /* AF_INET or AF_INET6 */
    uint8_t addr[16];   /* network address, first 4 bytes used for AF_INET */
    uint8_t prefix;     /* prefix length in bits */
};

/* Parses "addr" or "addr/len". Returns 0 or -EINVAL. */
int cidr_parse(const char *s, struct cidr *out);

/* True when the socket address (AF_INET or AF_INET6) is inside the range. */
bool cidr_match(const struct cidr *c, const struct sockaddr *sa);

/* True when the textual address is inside the range (false if unparseable). */
bool cidr_match_str(const struct cidr *c, const char *addr);

#endif
