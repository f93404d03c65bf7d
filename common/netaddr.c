/*
 * netaddr: see netaddr.h.
 */
#include "netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int netaddr_parse(const char *s, struct sockaddr_storage *out, char *err, size_t errlen)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *port_s;
    memset(out, 0, sizeof(*out));
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':' || (size_t)(close - s - 1) >= sizeof(host)) {
            snprintf(err, errlen, "\"%s\" is not ADDR:PORT ([IPv6]:PORT for IPv6)", s);
            return -EINVAL;
        }
        memcpy(host, s + 1, (size_t)(close - s - 1));
        host[close - s - 1] = '\0';
        port_s = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || colon == s || (size_t)(colon - s) >= sizeof(host) ||
            memchr(s, ':', (size_t)(colon - s))) {
            snprintf(err, errlen, "\"%s\" is not ADDR:PORT ([IPv6]:PORT for IPv6)", s);
            return -EINVAL;
        }
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port_s = colon + 1;
    }
    char *end;
    errno = 0;
    long port = strtol(port_s, &end, 10);
    if (port_s[0] < '0' || port_s[0] > '9' || *end != '\0' || errno || port < 0 || port > 65535) {
        snprintf(err, errlen, "\"%s\": port must be 0 to 65535", s);
        return -EINVAL;
    }
    if (strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");
    struct sockaddr_in *in4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    snprintf(err, errlen, "\"%s\": \"%s\" is not an IPv4 or IPv6 address", s, host);
    return -EINVAL;
}

void netaddr_format_ip(const struct sockaddr *sa, char *buf, size_t len)
{
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)len);
    else
        snprintf(buf, len, "?");
}

void netaddr_format(const struct sockaddr *sa, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];
    netaddr_format_ip(sa, ip, sizeof(ip));
    if (sa->sa_family == AF_INET)
        snprintf(buf, len, "%s:%u", ip, ntohs(((const struct sockaddr_in *)sa)->sin_port));
    else if (sa->sa_family == AF_INET6)
        snprintf(buf, len, "[%s]:%u", ip, ntohs(((const struct sockaddr_in6 *)sa)->sin6_port));
    else
        snprintf(buf, len, "?");
}
