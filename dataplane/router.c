/*
 * router: see router.h for the matching rules.
 *
 * Shape. A radix tree (compressed trie on bytes) serves two uses. A path
 * tree maps uri keys to candidate lists: a node's exact list holds the routes
 * whose uri is exactly the node's key, its prefix list the routes whose uri
 * starts with the key and has a '*'. A host tree maps reversed, lowercased
 * hosts to path trees: "*.example.com" becomes the prefix key "moc.elpmaxe.",
 * so suffix matching is prefix matching. The router has one host tree for
 * port-less hosts, one for hosts with a port, and the path tree of the routes
 * without hosts.
 *
 * Two forms. router_build first inserts into pointer trees (struct rnode,
 * easy to split), then freezes them into flat arrays owned by the router,
 * as lua-resty-radixtree splits its data: exact keys (of every tree) go to
 * one open-addressing hash table, and only the prefix keys stay in a radix
 * tree of 64-byte nodes (one cache line each, children next to each other,
 * short labels inline). Matching reads only the flat form; an exact hit
 * costs one hash probe however many routes there are. The pointer trees
 * are then freed.
 *
 * Lookup: the exact key first; then the prefix tree is walked down from the
 * root as long as whole edge labels match, which reaches the deepest node
 * whose key is a prefix of the subject; its prefix list and those of its
 * ancestors (through `up`, the nearest ancestor with a prefix list) follow,
 * longest key first.
 *
 * Ownership. The router owns its routes (struct route) and all arrays;
 * candidates point at routes and at their uris. Nothing changes after
 * router_build, so concurrent router_match calls need no locks. Payloads
 * belong to the caller.
 */
#include "router.h"

#include "cidr.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The methods lua-resty-radixtree knows; bit i stands for methods[i]. */
static const struct {
    const char *name; /* as on the request line */
    size_t len;       /* strlen(name) */
} methods[] = {{"GET", 3},  {"POST", 4},    {"PUT", 3},     {"DELETE", 6}, {"PATCH", 5},
               {"HEAD", 4}, {"OPTIONS", 7}, {"CONNECT", 7}, {"TRACE", 5},  {"PURGE", 5}};

/* One uri of a route. */
struct ruri {
    char *s;                 /* the uri as configured, NUL-terminated */
    uint32_t len;            /* its length */
    uint32_t key_len;        /* bytes before the first '*' (len when there is none) */
    bool prefix;             /* the uri has a '*': prefix match on the key */
    struct expr_regex *glob; /* a '*' before the end: the whole-path pattern */
};

struct route {
    void *payload;      /* returned on match; the caller's */
    int64_t priority;   /* higher is tried first */
    uint32_t seq;       /* order of router_add, the last tie-breaker */
    uint16_t methods;   /* method bits; 0 = any method */
    bool enabled;       /* status is absent or 1 */
    uint32_t nuri;      /* number of uris (>= 1) */
    struct ruri *uris;  /* the uris */
    uint32_t nhost;     /* number of hosts; 0 = any host */
    char **hosts;       /* lowercased hosts as configured */
    uint32_t naddr;     /* number of client ranges; 0 = any client */
    struct cidr *addrs; /* the client ranges */
    struct expr *vars;  /* the vars rule, or NULL */
};

/*
 * A candidate: one route through one of its uris. It repeats what most
 * checks need so that a plain route is decided without touching *rt.
 */
struct rent {
    const struct route *rt; /* the route */
    const struct ruri *u;   /* the uri that put it here */
    void *payload;          /* rt->payload */
    uint16_t methods;       /* rt->methods */
    bool more;              /* remote_addrs, a uri pattern or vars need checking */
};

struct rlist {
    uint32_t n, cap; /* used and allocated entries */
    struct rent *e;  /* candidates, in trial order after router_build */
};

struct rnode {
    char *label;          /* edge bytes from the parent (root: none) */
    uint32_t label_len;   /* their count */
    uint32_t nchild, cap; /* children used and allocated */
    unsigned char *first; /* first label byte of each child */
    struct rnode **child; /* the children */
    void *exact;          /* value for this exact key (struct rlist / struct ptree) */
    void *prefix;         /* value for keys starting with this key */
    bool keep;            /* freezing: a prefix value is at or below this node */
};

/* A path tree: the routes of one host entry, or of no host. */
struct ptree {
    struct rnode *root; /* tree over uri keys; values are struct rlist */
    const char *host;   /* the host pattern of this entry (a route's string), or NULL */
};

#define NONE UINT32_MAX
#define SPACE_HOSTS (UINT32_MAX - 1)      /* hash space of the port-less host tree */
#define SPACE_HOSTS_PORT (UINT32_MAX - 2) /* hash space of the host:port tree */

#define FB_INLINE 12    /* children whose first bytes a node holds itself */
#define LABEL_INLINE 28 /* label bytes a node holds itself */

/*
 * A frozen prefix-tree node: one cache line, holding its edge label and its
 * children's first bytes when they are short, so that a lookup touches one
 * line per level. Its children are nodes[child .. child + nchild). Only
 * nodes on the way to a prefix value are kept, and chains without a value
 * or a branch are merged into one edge.
 */
struct cnode {
    uint32_t child;              /* index of the first child */
    uint32_t up;                 /* nearest strict ancestor with a prefix value, or NONE */
    uint32_t prefix;             /* path tree: first candidate in ents; host tree: roots index */
    uint32_t nprefix;            /* path tree: number of candidates; host tree: 0 or 1 */
    uint32_t label_off;          /* label offset in labels when longer than LABEL_INLINE */
    uint16_t label_len;          /* label length (root: 0) */
    uint16_t nchild;             /* number of children (at most 256: one per first byte) */
    unsigned char fb[FB_INLINE]; /* children's first bytes when nchild <= FB_INLINE */
    char label[LABEL_INLINE];    /* the label when label_len <= LABEL_INLINE */
};
_Static_assert(sizeof(struct cnode) == 64, "a frozen node is one cache line");

/*
 * An exact key: a slot of the open-addressing (linear probing) table shared
 * by all trees. `space` tells the trees apart: a path tree's roots index, or
 * SPACE_HOSTS / SPACE_HOSTS_PORT. An empty slot has space NONE.
 */
struct hslot {
    uint64_t hash;    /* hash_key(space, key) */
    uint32_t space;   /* which tree */
    uint32_t key_off; /* the key's bytes in labels */
    uint32_t key_len; /* and their count */
    uint32_t val;     /* path tree: first candidate in ents; host tree: roots index */
    uint32_t nval;    /* path tree: number of candidates; host tree: 1 */
};

/* A frozen path tree: its root node and the host pattern that leads to it. */
struct croot {
    uint32_t node;    /* root index in nodes */
    const char *host; /* a route's host string, or NULL for the host-less tree */
};

struct router {
    struct route **routes; /* every added route, in order */
    uint32_t nroutes, cap; /* used and allocated */
    bool built;            /* router_build succeeded; read-only from now on */
    struct cnode *nodes;   /* all frozen prefix-tree nodes of all trees */
    unsigned char *first;  /* first[i]: first label byte of nodes[i] */
    char *labels;          /* long edge labels and exact keys */
    struct rent *ents;     /* all candidate lists, each in trial order */
    struct croot *roots;   /* path trees; roots[0] is the host-less one */
    struct hslot *htab;    /* exact keys of all trees */
    size_t hmask;          /* table size - 1 (a power of two) */
    uint32_t hosts;        /* root of the port-less host tree, or NONE */
    uint32_t hosts_port;   /* root of the host:port tree, or NONE */
};

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* ---- radix tree ------------------------------------------------------------- */

static struct rnode *rnode_new(const char *label, size_t len)
{
    struct rnode *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    if (len) {
        n->label = malloc(len);
        if (!n->label) {
            free(n);
            return NULL;
        }
        memcpy(n->label, label, len);
    }
    n->label_len = (uint32_t)len;
    return n;
}

static int rnode_reserve(struct rnode *n, uint32_t more)
{
    if (n->nchild + more <= n->cap)
        return 0;
    uint32_t cap = n->cap ? n->cap * 2 : 2;
    while (cap < n->nchild + more)
        cap *= 2;
    unsigned char *first = realloc(n->first, cap);
    if (!first)
        return -ENOMEM;
    n->first = first;
    struct rnode **child = realloc(n->child, cap * sizeof(*child));
    if (!child)
        return -ENOMEM;
    n->child = child;
    n->cap = cap;
    return 0;
}

/* Returns the node for key, creating and splitting nodes as needed; NULL on ENOMEM. */
static struct rnode *rnode_insert(struct rnode *root, const char *key, size_t len)
{
    struct rnode *n = root;
    size_t pos = 0;
    while (pos < len) {
        const unsigned char *p =
            n->nchild ? memchr(n->first, (unsigned char)key[pos], n->nchild) : NULL;
        if (!p) {
            struct rnode *leaf = rnode_new(key + pos, len - pos);
            if (!leaf || rnode_reserve(n, 1) != 0) {
                if (leaf)
                    free(leaf->label);
                free(leaf);
                return NULL;
            }
            n->first[n->nchild] = (unsigned char)key[pos];
            n->child[n->nchild++] = leaf;
            return leaf;
        }
        size_t i = (size_t)(p - n->first);
        struct rnode *c = n->child[i];
        size_t rest = len - pos, max = c->label_len < rest ? c->label_len : rest, k = 1;
        while (k < max && c->label[k] == key[pos + k])
            k++;
        if (k < c->label_len) {
            /* Split c's edge after k bytes: n -> mid -> c. */
            struct rnode *mid = rnode_new(c->label, k);
            char *tail = malloc(c->label_len - k);
            if (!mid || !tail || rnode_reserve(mid, 1) != 0) {
                if (mid) {
                    free(mid->label);
                    free(mid->first);
                    free(mid->child);
                }
                free(mid);
                free(tail);
                return NULL;
            }
            memcpy(tail, c->label + k, c->label_len - k);
            free(c->label);
            c->label = tail;
            c->label_len -= (uint32_t)k;
            mid->first[0] = (unsigned char)tail[0];
            mid->child[0] = c;
            mid->nchild = 1;
            n->child[i] = mid;
            c = mid;
        }
        n = c;
        pos += k;
    }
    return n;
}

static void rlist_free(struct rlist *l)
{
    if (l) {
        free(l->e);
        free(l);
    }
}

static void ptree_free(struct ptree *t);

/* Frees a tree; host trees hold path trees, path trees hold lists. */
static void rnode_free(struct rnode *n, bool host)
{
    if (!n)
        return;
    for (uint32_t i = 0; i < n->nchild; i++)
        rnode_free(n->child[i], host);
    if (host) {
        ptree_free(n->exact);
        ptree_free(n->prefix);
    } else {
        rlist_free(n->exact);
        rlist_free(n->prefix);
    }
    free(n->label);
    free(n->first);
    free(n->child);
    free(n);
}

static void ptree_free(struct ptree *t)
{
    if (t) {
        rnode_free(t->root, false);
        free(t);
    }
}

/* ---- routes ------------------------------------------------------------------ */

static void route_free(struct route *rt)
{
    if (!rt)
        return;
    for (uint32_t i = 0; i < rt->nuri; i++) {
        free(rt->uris[i].s);
        expr_regex_free(rt->uris[i].glob);
    }
    free(rt->uris);
    for (uint32_t i = 0; i < rt->nhost; i++)
        free(rt->hosts[i]);
    free(rt->hosts);
    free(rt->addrs);
    expr_free(rt->vars);
    free(rt);
}

/* A member, with JSON null taken as absent. */
static const json_t *member(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

/*
 * Reads `plural` (an array of strings) or else `singular` (a string) into a
 * list of borrowed strings. *n = 0 when neither is present.
 */
static int string_list(const json_t *obj, const char *plural, const char *singular,
                       const char ***out, uint32_t *n, char *err, size_t errlen)
{
    const json_t *v = member(obj, plural);
    *n = 0;
    *out = NULL;
    if (v) {
        if (!json_is_array(v))
            return fail(err, errlen, -EINVAL, "%s: must be an array", plural);
        size_t size = json_array_size(v);
        if (size == 0)
            return fail(err, errlen, -EINVAL, "%s: must not be empty", plural);
        if (size > ROUTER_MAX_ITEMS)
            return fail(err, errlen, -EINVAL, "%s: more than %d items", plural, ROUTER_MAX_ITEMS);
        const char **list = calloc(size, sizeof(*list));
        if (!list)
            return -ENOMEM;
        for (size_t i = 0; i < size; i++) {
            const json_t *s = json_array_get(v, i);
            if (!json_is_string(s) || strlen(json_string_value(s)) != json_string_length(s)) {
                free(list);
                return fail(err, errlen, -EINVAL, "%s[%zu]: must be a string", plural, i);
            }
            list[i] = json_string_value(s);
        }
        *out = list;
        *n = (uint32_t)size;
        return 0;
    }
    v = member(obj, singular);
    if (!v)
        return 0;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return fail(err, errlen, -EINVAL, "%s: must be a string", singular);
    const char **list = calloc(1, sizeof(*list));
    if (!list)
        return -ENOMEM;
    list[0] = json_string_value(v);
    *out = list;
    *n = 1;
    return 0;
}

/*
 * The pattern a uri with an inner '*' must match as a whole, as APISIX
 * builds it: split on '/', a segment starting with ':' is one non-empty
 * segment, a segment starting with '*' is anything (slashes included), other
 * segments are literal.
 */
static int compile_glob(struct ruri *u, char *err, size_t errlen)
{
    size_t cap = (size_t)u->len * 4 + 16;
    char *pat = malloc(cap);
    if (!pat)
        return -ENOMEM;
    size_t o = 0;
    const char *s = u->s, *end = s + u->len;
    while (s <= end) {
        const char *slash = memchr(s, '/', (size_t)(end - s));
        const char *seg_end = slash ? slash : end;
        if (s < seg_end && *s == ':') {
            memcpy(pat + o, "[^/]+", 5);
            o += 5;
        } else if (s < seg_end && *s == '*') {
            memcpy(pat + o, "[\\s\\S]*", 7);
            o += 7;
        } else {
            for (const char *p = s; p < seg_end; p++) {
                unsigned char ch = (unsigned char)*p;
                if (isalnum(ch) || ch == '-' || ch == '_') {
                    pat[o++] = (char)ch;
                } else {
                    o += (size_t)snprintf(pat + o, cap - o, "\\x%02x", ch);
                }
            }
        }
        if (!slash)
            break;
        pat[o++] = '/';
        s = slash + 1;
    }
    char msg[128];
    int rc = expr_regex_compile(pat, o, EXPR_RE_FULL, &u->glob, msg, sizeof(msg));
    free(pat);
    if (rc == -EINVAL)
        return fail(err, errlen, rc, "uri %s: bad pattern: %s", u->s, msg);
    return rc;
}

static int parse_uris(const json_t *j, struct route *rt, char *err, size_t errlen)
{
    const char **list;
    uint32_t n;
    int rc = string_list(j, "uris", "uri", &list, &n, err, errlen);
    if (rc)
        return rc;
    if (n == 0)
        return fail(err, errlen, -EINVAL, "route needs uri or uris");
    rt->uris = calloc(n, sizeof(*rt->uris));
    if (!rt->uris) {
        free(list);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        size_t len = strlen(list[i]);
        if (len == 0 || len > ROUTER_MAX_PATH) {
            rc = fail(err, errlen, -EINVAL, "uri: must be 1 to %d bytes", ROUTER_MAX_PATH);
            break;
        }
        struct ruri *u = &rt->uris[i];
        u->s = strdup(list[i]);
        if (!u->s) {
            rc = -ENOMEM;
            break;
        }
        rt->nuri++;
        u->len = (uint32_t)len;
        const char *star = strchr(u->s, '*');
        u->prefix = star != NULL;
        u->key_len = star ? (uint32_t)(star - u->s) : u->len;
        if (star && star[1] != '\0') {
            rc = compile_glob(u, err, errlen);
            if (rc)
                break;
        }
    }
    free(list);
    return rc;
}

static int parse_hosts(const json_t *j, struct route *rt, char *err, size_t errlen)
{
    const char **list;
    uint32_t n;
    int rc = string_list(j, "hosts", "host", &list, &n, err, errlen);
    if (rc || n == 0)
        return rc;
    rt->hosts = calloc(n, sizeof(*rt->hosts));
    if (!rt->hosts) {
        free(list);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        size_t len = strlen(list[i]);
        if (len == 0 || len > ROUTER_MAX_HOST) {
            rc = fail(err, errlen, -EINVAL, "host: must be 1 to %d bytes", ROUTER_MAX_HOST);
            break;
        }
        if (strchr(list[i] + 1, '*')) {
            rc = fail(err, errlen, -EINVAL, "host %s: '*' is only allowed first", list[i]);
            break;
        }
        char *h = malloc(len + 1);
        if (!h) {
            rc = -ENOMEM;
            break;
        }
        for (size_t k = 0; k <= len; k++)
            h[k] = (char)tolower((unsigned char)list[i][k]);
        rt->hosts[rt->nhost++] = h;
    }
    free(list);
    return rc;
}

static int parse_addrs(const json_t *j, struct route *rt, char *err, size_t errlen)
{
    const char **list;
    uint32_t n;
    int rc = string_list(j, "remote_addrs", "remote_addr", &list, &n, err, errlen);
    if (rc || n == 0)
        return rc;
    rt->addrs = calloc(n, sizeof(*rt->addrs));
    if (!rt->addrs) {
        free(list);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (cidr_parse(list[i], &rt->addrs[i]) != 0) {
            rc = fail(err, errlen, -EINVAL, "remote_addrs: invalid IP address or CIDR '%s'",
                      list[i]);
            break;
        }
        rt->naddr++;
    }
    free(list);
    return rc;
}

static int method_bit(const char *m, size_t len)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (methods[i].len == len && memcmp(methods[i].name, m, len) == 0)
            return 1 << i;
    }
    return 0;
}

static int parse_methods(const json_t *j, struct route *rt, char *err, size_t errlen)
{
    const json_t *v = member(j, "methods");
    if (!v)
        return 0;
    if (!json_is_array(v))
        return fail(err, errlen, -EINVAL, "methods: must be an array");
    size_t i;
    const json_t *m;
    json_array_foreach(v, i, m)
    {
        int bit = json_is_string(m) ? method_bit(json_string_value(m), json_string_length(m)) : 0;
        if (!bit)
            return fail(err, errlen, -EINVAL, "methods[%zu]: unknown method", i);
        rt->methods |= (uint16_t)bit;
    }
    return 0;
}

static int parse_route(const json_t *j, struct route *rt, char *err, size_t errlen)
{
    if (!json_is_object(j))
        return fail(err, errlen, -EINVAL, "route must be a JSON object");
    int rc = parse_uris(j, rt, err, errlen);
    if (!rc)
        rc = parse_hosts(j, rt, err, errlen);
    if (!rc)
        rc = parse_addrs(j, rt, err, errlen);
    if (!rc)
        rc = parse_methods(j, rt, err, errlen);
    if (rc)
        return rc;

    const json_t *v = member(j, "priority");
    if (v) {
        if (!json_is_integer(v))
            return fail(err, errlen, -EINVAL, "priority: must be an integer");
        rt->priority = json_integer_value(v);
    }
    rt->enabled = true;
    v = member(j, "status");
    if (v) {
        if (!json_is_integer(v))
            return fail(err, errlen, -EINVAL, "status: must be an integer");
        rt->enabled = json_integer_value(v) == 1;
    }
    v = member(j, "vars");
    if (v) {
        char msg[256];
        rc = expr_compile(v, &rt->vars, msg, sizeof(msg));
        if (rc == -EINVAL)
            return fail(err, errlen, rc, "failed to validate the 'vars' expression: %s", msg);
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- public: building ------------------------------------------------------- */

struct router *router_new(void)
{
    return calloc(1, sizeof(struct router));
}

size_t router_count(const struct router *r)
{
    return r->nroutes;
}

int router_add(struct router *r, const json_t *route, void *payload, char *err, size_t errlen)
{
    if (r->built)
        return fail(err, errlen, -EBUSY, "router already built");
    if (r->nroutes >= ROUTER_MAX_ROUTES)
        return fail(err, errlen, -ENOSPC, "more than %d routes", ROUTER_MAX_ROUTES);
    if (r->nroutes == r->cap) {
        uint32_t cap = r->cap ? r->cap * 2 : 16;
        struct route **routes = realloc(r->routes, cap * sizeof(*routes));
        if (!routes)
            return -ENOMEM;
        r->routes = routes;
        r->cap = cap;
    }
    struct route *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return -ENOMEM;
    int rc = parse_route(route, rt, err, errlen);
    if (rc) {
        route_free(rt);
        return rc;
    }
    rt->payload = payload;
    rt->seq = r->nroutes;
    r->routes[r->nroutes++] = rt;
    return 0;
}

static int rlist_push(void **slot, const struct route *rt, const struct ruri *u)
{
    struct rlist *l = *slot;
    if (!l) {
        l = calloc(1, sizeof(*l));
        if (!l)
            return -ENOMEM;
        *slot = l;
    }
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 1;
        struct rent *e = realloc(l->e, cap * sizeof(*e));
        if (!e)
            return -ENOMEM;
        l->e = e;
        l->cap = cap;
    }
    l->e[l->n++] = (struct rent){.rt = rt,
                                 .u = u,
                                 .payload = rt->payload,
                                 .methods = rt->methods,
                                 .more = rt->naddr || rt->vars || u->glob};
    return 0;
}

static int ptree_add_route(struct ptree *t, const struct route *rt)
{
    if (!t->root && !(t->root = rnode_new(NULL, 0)))
        return -ENOMEM;
    for (uint32_t i = 0; i < rt->nuri; i++) {
        const struct ruri *u = &rt->uris[i];
        struct rnode *n = rnode_insert(t->root, u->s, u->key_len);
        if (!n || rlist_push(u->prefix ? &n->prefix : &n->exact, rt, u) != 0)
            return -ENOMEM;
    }
    return 0;
}

/* The pointer trees router_build fills before freezing them. */
struct btrees {
    struct ptree nohost;      /* routes without hosts */
    struct rnode *hosts;      /* reversed port-less host -> struct ptree */
    struct rnode *hosts_port; /* reversed host:port -> struct ptree */
};

/* True when a host pattern carries a port: "a.com:80", "[::1]:80" (not "[::1]"). */
static bool host_has_port(const char *h, size_t len)
{
    if (len && h[0] == '[') {
        const char *rb = memchr(h, ']', len);
        return rb && (size_t)(rb - h) + 1 < len && rb[1] == ':';
    }
    return memchr(h, ':', len) != NULL;
}

static int hosts_add_route(struct btrees *b, const struct route *rt)
{
    char key[ROUTER_MAX_HOST];
    for (uint32_t i = 0; i < rt->nhost; i++) {
        const char *h = rt->hosts[i];
        size_t len = strlen(h);
        struct rnode **root = host_has_port(h, len) ? &b->hosts_port : &b->hosts;
        if (!*root && !(*root = rnode_new(NULL, 0)))
            return -ENOMEM;
        bool wildcard = h[0] == '*';
        size_t klen = wildcard ? len - 1 : len;
        for (size_t k = 0; k < klen; k++)
            key[k] = h[len - 1 - k];
        struct rnode *n = rnode_insert(*root, key, klen);
        if (!n)
            return -ENOMEM;
        void **slot = wildcard ? &n->prefix : &n->exact;
        if (!*slot) {
            struct ptree *t = calloc(1, sizeof(*t));
            if (!t)
                return -ENOMEM;
            t->host = h;
            *slot = t;
        }
        int rc = ptree_add_route(*slot, rt);
        if (rc)
            return rc;
    }
    return 0;
}

/* Trial order: priority, then longer uri as written, then order of adding. */
static int rent_cmp(const void *a, const void *b)
{
    const struct rent *x = a, *y = b;
    if (x->rt->priority != y->rt->priority)
        return x->rt->priority > y->rt->priority ? -1 : 1;
    if (x->u->len != y->u->len)
        return x->u->len > y->u->len ? -1 : 1;
    if (x->rt->seq != y->rt->seq)
        return x->rt->seq < y->rt->seq ? -1 : 1;
    return x->u < y->u ? -1 : x->u > y->u;
}

static void rlist_sort(struct rlist *l)
{
    if (l && l->n > 1)
        qsort(l->e, l->n, sizeof(*l->e), rent_cmp);
}

/* ---- freezing ------------------------------------------------------------------ */

static void btrees_free(struct btrees *b)
{
    rnode_free(b->nohost.root, false);
    rnode_free(b->hosts, true);
    rnode_free(b->hosts_port, true);
}

/*
 * The hash of an exact key in a tree's space. Not seeded: the table holds
 * configured keys only, so no request can lengthen a probe sequence.
 */
static inline uint64_t hash_key(uint32_t space, const char *p, size_t n)
{
    uint64_t h = (uint64_t)space * 0x9E3779B97F4A7C15ull ^ (uint64_t)n * 0xC2B2AE3D27D4EB4Full;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        p += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = 0;
        memcpy(&v, p, n);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
    }
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* Marks the nodes on the way to a prefix value; those are the ones frozen. */
static bool mark(struct rnode *n)
{
    bool keep = n->prefix != NULL;
    for (uint32_t i = 0; i < n->nchild; i++) {
        if (mark(n->child[i]))
            keep = true;
    }
    n->keep = keep;
    return keep;
}

/* Number of kept children; *last is the last of them. */
static uint32_t kept_children(const struct rnode *n, const struct rnode **last)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < n->nchild; i++) {
        if (n->child[i]->keep) {
            k++;
            *last = n->child[i];
        }
    }
    return k;
}

/*
 * Freezing state. Freezing runs twice with the same steps: first with r
 * NULL to count what each array needs, then to fill the arrays.
 */
struct freezer {
    struct router *r;                           /* arrays to fill, or NULL to count */
    uint32_t nodes, labels, ents, roots, hkeys; /* next free index of each */
    char *key[2];                               /* key being built: [0] paths, [1] hosts */
};

static uint32_t put_list(struct freezer *f, struct rlist *l, uint32_t *n)
{
    if (!l) {
        *n = 0;
        return 0;
    }
    uint32_t off = f->ents;
    if (f->r) {
        rlist_sort(l);
        memcpy(f->r->ents + off, l->e, l->n * sizeof(*l->e));
    }
    f->ents += l->n;
    *n = l->n;
    return off;
}

static uint32_t freeze_tree(struct freezer *f, struct rnode *root, bool host, uint32_t space);

static uint32_t put_ptree(struct freezer *f, const struct ptree *t, uint32_t *n)
{
    if (!t) {
        *n = 0;
        return 0;
    }
    uint32_t i = f->roots++;
    uint32_t node = freeze_tree(f, t->root, false, i);
    if (f->r) {
        f->r->roots[i].host = t->host;
        f->r->roots[i].node = node;
    }
    *n = 1;
    return i;
}

static void hash_put(struct router *r, const struct hslot *s)
{
    size_t i = s->hash & r->hmask;
    while (r->htab[i].space != NONE)
        i = (i + 1) & r->hmask;
    r->htab[i] = *s;
}

/* Puts the exact values of n's subtree into the hash table; klen: bytes of key so far. */
static void emit_exact(struct freezer *f, const struct rnode *n, size_t klen, uint32_t space,
                       bool host)
{
    char *key = f->key[host];
    if (n->label_len)
        memcpy(key + klen, n->label, n->label_len);
    klen += n->label_len;
    if (n->exact) {
        struct hslot s = {.space = space, .key_len = (uint32_t)klen};
        /* A host's path tree first: it takes label space of its own. */
        s.val = host ? put_ptree(f, n->exact, &s.nval) : put_list(f, n->exact, &s.nval);
        s.key_off = f->labels;
        f->labels += (uint32_t)klen;
        f->hkeys++;
        if (f->r) {
            memcpy(f->r->labels + s.key_off, key, klen);
            s.hash = hash_key(space, key, klen);
            hash_put(f->r, &s);
        }
    }
    for (uint32_t i = 0; i < n->nchild; i++)
        emit_exact(f, n->child[i], klen, space, host);
}

/*
 * Freezes the kept node `head` into nodes[idx], merging it with the chain
 * of kept nodes below it that have neither a prefix value nor a branch.
 */
static void put_node(struct freezer *f, uint32_t idx, const struct rnode *head, uint32_t up,
                     bool host)
{
    const struct rnode *n = head, *next = NULL;
    size_t llen = head->label_len;
    if (head->label_len) { /* not the root */
        while (!n->prefix && kept_children(n, &next) == 1) {
            n = next;
            llen += n->label_len;
        }
    }
    struct cnode c;
    memset(&c, 0, sizeof(c));
    c.label_len = (uint16_t)llen;
    c.up = up;
    char *dst = c.label;
    if (llen > LABEL_INLINE) {
        c.label_off = f->labels;
        f->labels += (uint32_t)llen;
        dst = f->r ? f->r->labels + c.label_off : NULL;
    }
    if (dst) {
        size_t o = 0;
        for (const struct rnode *x = head;; kept_children(x, &x)) {
            if (x->label_len)
                memcpy(dst + o, x->label, x->label_len);
            o += x->label_len;
            if (x == n)
                break;
        }
    }
    c.prefix = host ? put_ptree(f, n->prefix, &c.nprefix) : put_list(f, n->prefix, &c.nprefix);
    c.child = f->nodes;
    for (uint32_t i = 0; i < n->nchild; i++) {
        const struct rnode *ch = n->child[i];
        if (!ch->keep)
            continue;
        if (f->r) {
            f->r->first[c.child + c.nchild] = (unsigned char)ch->label[0];
            if (c.nchild < FB_INLINE)
                c.fb[c.nchild] = (unsigned char)ch->label[0];
        }
        c.nchild++;
    }
    f->nodes += c.nchild;
    if (f->r)
        f->r->nodes[idx] = c;
    uint32_t below = c.nprefix ? idx : up;
    uint32_t k = 0;
    for (uint32_t i = 0; i < n->nchild; i++) {
        if (n->child[i]->keep)
            put_node(f, c.child + k++, n->child[i], below, host);
    }
}

/* Freezes a tree: its prefix part into nodes (returns the root), its exact keys into htab. */
static uint32_t freeze_tree(struct freezer *f, struct rnode *root, bool host, uint32_t space)
{
    mark(root);
    uint32_t idx = f->nodes++;
    if (f->r)
        f->r->first[idx] = 0;
    put_node(f, idx, root, NONE, host);
    emit_exact(f, root, 0, space, host);
    return idx;
}

static void frozen_free(struct router *r)
{
    free(r->nodes);
    free(r->first);
    free(r->labels);
    free(r->ents);
    free(r->roots);
    free(r->htab);
    r->nodes = NULL;
    r->first = NULL;
    r->labels = NULL;
    r->ents = NULL;
    r->roots = NULL;
    r->htab = NULL;
}

/* Runs the freezing steps over all trees of b; with f->r NULL it only counts. */
static void freeze_all(struct freezer *f, struct btrees *b)
{
    f->roots = 1;
    uint32_t nohost = freeze_tree(f, b->nohost.root, false, 0);
    uint32_t hosts = b->hosts ? freeze_tree(f, b->hosts, true, SPACE_HOSTS) : NONE;
    uint32_t hosts_port =
        b->hosts_port ? freeze_tree(f, b->hosts_port, true, SPACE_HOSTS_PORT) : NONE;
    if (f->r) {
        f->r->roots[0].node = nohost;
        f->r->roots[0].host = NULL;
        f->r->hosts = hosts;
        f->r->hosts_port = hosts_port;
    }
}

static int freeze(struct router *r, struct btrees *b)
{
    struct freezer f;
    memset(&f, 0, sizeof(f));
    f.key[0] = malloc(ROUTER_MAX_PATH);
    f.key[1] = malloc(ROUTER_MAX_HOST);
    if (!f.key[0] || !f.key[1]) {
        free(f.key[0]);
        free(f.key[1]);
        return -ENOMEM;
    }
    freeze_all(&f, b); /* count */

    int rc = 0;
    size_t hsize = 4;
    while (hsize < (size_t)f.hkeys * 2)
        hsize *= 2;
    /* Counters are 32 bits; NONE and the SPACE_* values are reserved. */
    if (f.nodes >= SPACE_HOSTS_PORT || f.labels >= NONE || f.ents >= NONE ||
        f.roots >= SPACE_HOSTS_PORT || f.hkeys >= NONE / 2) {
        rc = -E2BIG;
        goto out;
    }
    r->nodes = aligned_alloc(64, (size_t)f.nodes * sizeof(*r->nodes));
    r->first = malloc(f.nodes);
    r->labels = malloc(f.labels ? f.labels : 1);
    r->ents = malloc((f.ents ? f.ents : 1) * sizeof(*r->ents));
    r->roots = malloc(f.roots * sizeof(*r->roots));
    r->htab = malloc(hsize * sizeof(*r->htab));
    if (!r->nodes || !r->first || !r->labels || !r->ents || !r->roots || !r->htab) {
        frozen_free(r);
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < hsize; i++)
        r->htab[i].space = NONE;
    r->hmask = hsize - 1;

    char *key0 = f.key[0], *key1 = f.key[1];
    memset(&f, 0, sizeof(f));
    f.r = r;
    f.key[0] = key0;
    f.key[1] = key1;
    freeze_all(&f, b); /* fill */
out:
    free(f.key[0]);
    free(f.key[1]);
    return rc;
}

int router_build(struct router *r)
{
    if (r->built)
        return -EBUSY;
    struct btrees b;
    memset(&b, 0, sizeof(b));
    if (!(b.nohost.root = rnode_new(NULL, 0)))
        return -ENOMEM;
    int rc = 0;
    for (uint32_t i = 0; i < r->nroutes && rc == 0; i++) {
        const struct route *rt = r->routes[i];
        if (rt->enabled)
            rc = rt->nhost ? hosts_add_route(&b, rt) : ptree_add_route(&b.nohost, rt);
    }
    if (rc == 0)
        rc = freeze(r, &b);
    btrees_free(&b);
    if (rc == 0)
        r->built = true;
    return rc;
}

void router_free(struct router *r)
{
    if (!r)
        return;
    frozen_free(r);
    for (uint32_t i = 0; i < r->nroutes; i++)
        route_free(r->routes[i]);
    free(r->routes);
    free(r);
}

/* ---- public: matching ------------------------------------------------------- */

/* What every candidate check needs from the request. */
struct mreq {
    const struct router_req *req; /* the request */
    int method;                   /* its method bit, 0 if unknown */
};

static inline bool candidate_ok(const struct rent *e, const struct mreq *m)
{
    if (e->methods && !(e->methods & m->method))
        return false;
    if (!e->more)
        return true;
    const struct route *rt = e->rt;
    const struct router_req *req = m->req;
    if (rt->naddr) {
        if (!req->remote)
            return false;
        uint32_t i = 0;
        while (i < rt->naddr && !cidr_match(&rt->addrs[i], req->remote))
            i++;
        if (i == rt->naddr)
            return false;
    }
    if (e->u->glob && !expr_regex_match(e->u->glob, req->path, req->path_len))
        return false;
    if (rt->vars && !expr_eval(rt->vars, req->var, req->ud))
        return false;
    return true;
}

static const struct rent *list_match(const struct router *r, uint32_t off, uint32_t n,
                                     const struct mreq *m)
{
    for (uint32_t i = off; i < off + n; i++) {
        if (candidate_ok(&r->ents[i], m))
            return &r->ents[i];
    }
    return NULL;
}

/* Edge labels are short: a byte loop beats a call to memcmp. */
static inline bool bytes_eq(const char *a, const char *b, size_t n)
{
    if (n > 16)
        return memcmp(a, b, n) == 0;
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i])
            return false;
    }
    return true;
}

/* The exact key's slot in a tree's space, or NULL. */
static inline const struct hslot *hash_get(const struct router *r, uint32_t space, const char *key,
                                           size_t len)
{
    uint64_t h = hash_key(space, key, len);
    for (size_t i = h & r->hmask;; i = (i + 1) & r->hmask) {
        const struct hslot *s = &r->htab[i];
        if (s->space == NONE)
            return NULL;
        if (s->hash == h && s->space == space && s->key_len == len &&
            memcmp(r->labels + s->key_off, key, len) == 0)
            return s;
    }
}

/* The deepest kept node under `node` whose key is a prefix of key[0..len). */
static inline uint32_t walk(const struct router *r, uint32_t node, const char *key, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        const struct cnode *n = &r->nodes[node];
        const unsigned char *fb = n->nchild <= FB_INLINE ? n->fb : r->first + n->child;
        unsigned char b = (unsigned char)key[pos];
        uint32_t k = 0;
        if (n->nchild > 16) {
            const unsigned char *p = memchr(fb, b, n->nchild);
            k = p ? (uint32_t)(p - fb) : n->nchild;
        } else {
            while (k < n->nchild && fb[k] != b)
                k++;
        }
        if (k == n->nchild)
            break;
        const struct cnode *c = &r->nodes[n->child + k];
        const char *label = c->label_len <= LABEL_INLINE ? c->label : r->labels + c->label_off;
        if (c->label_len > len - pos || !bytes_eq(label + 1, key + pos + 1, c->label_len - 1u))
            break;
        pos += c->label_len;
        node = n->child + k;
    }
    return node;
}

/* Matches the path in the path tree roots[t]: exact key, then prefixes longest first. */
static const struct rent *tree_match(const struct router *r, uint32_t t, const struct mreq *m)
{
    const struct rent *e;
    const char *path = m->req->path;
    size_t len = m->req->path_len;
    const struct hslot *s = hash_get(r, t, path, len);
    if (s && (e = list_match(r, s->val, s->nval, m)))
        return e;
    uint32_t node = walk(r, r->roots[t].node, path, len);
    for (uint32_t p = r->nodes[node].nprefix ? node : r->nodes[node].up; p != NONE;
         p = r->nodes[p].up) {
        if ((e = list_match(r, r->nodes[p].prefix, r->nodes[p].nprefix, m)))
            return e;
    }
    return NULL;
}

/* Tries the host entries for the reversed host key: exact, then longest suffix first. */
static const struct rent *hosts_match(const struct router *r, uint32_t root, uint32_t space,
                                      const char *key, size_t len, const struct mreq *m,
                                      uint32_t *which)
{
    const struct rent *e;
    const struct hslot *s = hash_get(r, space, key, len);
    if (s && (e = tree_match(r, s->val, m))) {
        *which = s->val;
        return e;
    }
    uint32_t node = walk(r, root, key, len);
    for (uint32_t p = r->nodes[node].nprefix ? node : r->nodes[node].up; p != NONE;
         p = r->nodes[p].up) {
        if ((e = tree_match(r, r->nodes[p].prefix, m))) {
            *which = r->nodes[p].prefix;
            return e;
        }
    }
    return NULL;
}

/* dst = src[0..len) reversed and in ASCII lowercase: a host tree key. */
static inline void reverse_lower(char *dst, const char *src, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[len - 1 - i];
        dst[i] = (char)((unsigned)(ch - 'A') < 26u ? ch + ('a' - 'A') : ch);
    }
}

/* The winning candidate for req, and in *t the path tree it came from. */
static const struct rent *match(const struct router *r, const struct router_req *req, uint32_t *t)
{
    struct mreq mr = {.req = req,
                      .method = req->method ? method_bit(req->method, req->method_len) : 0};
    const struct rent *e = NULL;

    size_t hl = req->host ? req->host_len : 0;
    if ((r->hosts != NONE || r->hosts_port != NONE) && hl > 0 && hl <= ROUTER_MAX_HOST) {
        const char *h = req->host;
        char key[ROUTER_MAX_HOST];
        /* nginx's $host: no port, no trailing dot. */
        size_t name = hl;
        if (h[0] == '[') {
            const char *rb = memchr(h, ']', hl);
            if (rb)
                name = (size_t)(rb - h) + 1;
        } else {
            for (size_t i = 0; i < hl; i++) {
                if (h[i] == ':') {
                    name = i;
                    break;
                }
            }
        }
        if (r->hosts_port != NONE && name < hl) {
            reverse_lower(key, h, hl);
            e = hosts_match(r, r->hosts_port, SPACE_HOSTS_PORT, key, hl, &mr, t);
        }
        if (name > 0 && h[name - 1] == '.')
            name--;
        if (!e && r->hosts != NONE && name > 0) {
            reverse_lower(key, h, name);
            e = hosts_match(r, r->hosts, SPACE_HOSTS, key, name, &mr, t);
        }
    }
    if (!e) {
        *t = 0;
        e = tree_match(r, 0, &mr);
    }
    return e;
}

int router_match_ex(const struct router *r, const struct router_req *req, struct router_match *m)
{
    uint32_t t = 0;
    const struct rent *e = r->built ? match(r, req, &t) : NULL;
    if (!e)
        return -ENOENT;
    if (m) {
        m->payload = e->payload;
        m->uri = e->u->s;
        m->host = r->roots[t].host;
    }
    return 0;
}

void *router_match(const struct router *r, const struct router_req *req)
{
    uint32_t t;
    const struct rent *e = r->built ? match(r, req, &t) : NULL;
    return e ? e->payload : NULL;
}
