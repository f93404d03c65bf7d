/*
 * router: the data plane's HTTP route matcher, a pure module (no sockets, no
 * event loop). It decides which route takes a request exactly as APISIX 3.x's
 * default router ("radixtree_host_uri", lua-resty-radixtree underneath) does.
 *
 * Life cycle: router_new, router_add for each (already merged) route,
 * router_build once, then router_match any number of times from any number
 * of threads: a built router is read-only and keeps no per-request state.
 * router_free when the configuration snapshot that owns it goes away.
 *
 * Matching, in order:
 *   1. Routes with hosts. The request host (lowercased, port and one trailing
 *      dot removed) selects host entries: the exact host first, then the
 *      wildcard hosts ("*.example.com", "*") whose suffix matches, longest
 *      suffix first. Within each host entry the uri matching below runs over
 *      that host's routes; the first route found wins. (airgw extension: a
 *      route host with a port, "example.com:8080", is tried first, against
 *      the Host header with its port; APISIX never matches those.)
 *   2. Routes without hosts, with the same uri matching.
 * Uri matching: a uri without '*' ("/a/b") is exact; a uri with a '*' is a
 * prefix, the bytes before its first '*' (for "/a/" followed by '*': "/a/"),
 * and when that '*' is not the last byte the whole path must also match the
 * uri as a pattern (a segment starting with '*' matches anything, slashes
 * included; one starting with ':' matches one non-empty segment). Exact
 * routes first, then prefixes from the longest to the shortest. Routes on
 * the same uri are tried by priority (higher first), then by longer uri as
 * written, then in the order they were added; the first whose methods,
 * remote_addrs and vars all hold wins, and a failure falls through to the
 * next candidate.
 *
 * Costs: an exact uri or host is one hash probe; prefixes are found by
 * walking a radix tree (compressed trie) over the request's path and host
 * bytes. Neither grows with the number of routes; only routes sharing a
 * candidate uri have their conditions checked, in the order above.
 */
#ifndef AIRGW_ROUTER_H
#define AIRGW_ROUTER_H

#include "expr.h"

#include <jansson.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

#define ROUTER_MAX_ROUTES 1000000 /* routes per router */
#define ROUTER_MAX_PATH 4096      /* bytes in one route uri (APISIX's maxLength) */
#define ROUTER_MAX_HOST 512       /* bytes in one route host; longer request hosts match none */
#define ROUTER_MAX_ITEMS 4096     /* entries in one route's uris, hosts or remote_addrs */

struct router;

/* One request as the router sees it. Strings need not be NUL-terminated. */
struct router_req {
    const char *method;            /* "GET", ...; case-sensitive */
    size_t method_len;             /* its length */
    const char *host;              /* Host header or authority, may hold ":port"; may be NULL */
    size_t host_len;               /* its length */
    const char *path;              /* normalized path without query (nginx $uri) */
    size_t path_len;               /* its length */
    const struct sockaddr *remote; /* client address (AF_INET/AF_INET6); may be NULL */
    expr_var_fn var;               /* variable lookup for vars expressions; may be NULL */
    void *ud;                      /* passed to var */
};

/* What matched: the route's payload and the patterns that selected it. */
struct router_match {
    void *payload;    /* the payload given to router_add */
    const char *uri;  /* the route uri that matched, as configured; NUL-terminated */
    const char *host; /* the route host that matched ("*.example.com"), or NULL */
};

/* Fills a request from NUL-terminated strings (NULL allowed for host). */
static inline void router_req_init(struct router_req *req, const char *method, const char *host,
                                   const char *path)
{
    memset(req, 0, sizeof(*req));
    req->method = method;
    req->method_len = method ? strlen(method) : 0;
    req->host = host;
    req->host_len = host ? strlen(host) : 0;
    req->path = path;
    req->path_len = path ? strlen(path) : 0;
}

/* Returns an empty router, or NULL when out of memory. */
struct router *router_new(void);

/*
 * Adds a route: a JSON object with uri or uris (required), host or hosts,
 * methods, remote_addr or remote_addrs, vars, priority and status (0: the
 * route is checked but never matches); other members are ignored. The plural
 * member wins when both are given. payload is returned by router_match and
 * should not be NULL. The JSON is not kept; regexes and ranges are compiled.
 * Returns 0; -EINVAL with a message in err for bad input; -ENOSPC past
 * ROUTER_MAX_ROUTES; -EBUSY after router_build; -ENOMEM.
 */
int router_add(struct router *r, const json_t *route, void *payload, char *err, size_t errlen);

/*
 * Builds the lookup structures and orders the candidates; disabled routes
 * are left out. Returns 0, -EBUSY if already built, -ENOMEM, or -E2BIG when
 * the routes need more than 2^32 table entries. After a failure only
 * router_free is useful.
 */
int router_build(struct router *r);

/*
 * Finds the route for req. Returns 0 and fills *m (m may be NULL), or
 * -ENOENT when no route matches (or the router is not built).
 */
int router_match_ex(const struct router *r, const struct router_req *req, struct router_match *m);

/* The matching route's payload, or NULL. */
void *router_match(const struct router *r, const struct router_req *req);

/* Number of routes added (disabled ones included). */
size_t router_count(const struct router *r);

/* Frees the router and everything it compiled (not the payloads); NULL is fine. */
void router_free(struct router *r);

#endif
