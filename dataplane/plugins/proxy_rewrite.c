/*
 * proxy-rewrite: rewrites what goes upstream, as APISIX's plugin of that
 * name (priority 1008, rewrite phase):
 *
 *   uri        the new path; $var and ${var} are replaced by request
 *              variables (plugin_req_var; absent ones by nothing)
 *   regex_uri  [pattern, template, pattern, template, ...]: the first
 *              pattern matching $uri has its match replaced by its template
 *              ($0..$9 and ${N} are captures); used when uri is not set
 *   method     the method sent upstream
 *   host       the Host sent upstream (with pass_host "pass", as APISIX)
 *   headers    {"add": {...}, "set": {...}, "remove": [...]}, applied in
 *              that order, or the older flat form {"Name": "value"} (a set);
 *              values may use $var and the regex_uri captures ($1); a set
 *              to "" removes the header (nginx's set_header)
 *
 * The client's query string is kept: appended with '?' to the new path, or
 * with '&' when the new path has a query of its own. The new path is
 * %-encoded where it holds bytes a request-target cannot carry.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "plugin.h"
#include "plugin_common.h"

#define PR_MAX_PAIRS 32  /* regex_uri pairs */
#define PR_MAX_OUT 16384 /* a rewritten uri or header value */
#define PR_MAX_CAPS 10   /* $0..$9 */

struct hdr_kv {
    const char *name;  /* borrowed from the configuration */
    char *value;       /* owned ("" removes, for a set) */
};

struct prw {
    const char *uri;                      /* borrowed, or NULL */
    pcre2_code *re[PR_MAX_PAIRS];         /* regex_uri patterns */
    const char *tmpl[PR_MAX_PAIRS];       /* their templates (borrowed) */
    size_t nre;
    const char *method;                   /* borrowed, or NULL */
    const char *host;                     /* borrowed, or NULL */
    struct hdr_kv *add, *set;             /* header operations */
    size_t nadd, nset;
    const char **remove;                  /* names (borrowed) */
    size_t nremove;
};

/* A growing output string, bounded by PR_MAX_OUT. */
struct obuf {
    char b[PR_MAX_OUT];
    size_t len;
    bool over;
};

static void ob_add(struct obuf *o, const char *s, size_t n)
{
    if (o->len + n >= sizeof(o->b)) {
        o->over = true;
        n = sizeof(o->b) - 1 - o->len;
    }
    memcpy(o->b + o->len, s, n);
    o->len += n;
    o->b[o->len] = '\0';
}

/* Captures of the regex_uri match, for $N in templates and headers. */
struct caps {
    const char *subject;
    PCRE2_SIZE *ov; /* pairs, or NULL */
    int n;          /* pairs set */
};

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Expands $name / ${name} in t: digits are captures, other names request
 * variables (vars false: only captures, as ngx.re.sub's template). */
static void expand(struct plugin_req *r, const char *t, const struct caps *cp, bool vars,
                   struct obuf *o)
{
    const char *p = t;
    while (*p) {
        if (*p != '$') {
            const char *d = strchr(p, '$');
            size_t n = d ? (size_t)(d - p) : strlen(p);
            ob_add(o, p, n);
            p += n;
            continue;
        }
        const char *s = p + 1, *e;
        bool brace = *s == '{';
        if (brace) {
            s++;
            e = strchr(s, '}');
            if (!e) {
                ob_add(o, p, strlen(p));
                break;
            }
        } else {
            e = s;
            if (*e >= '0' && *e <= '9')
                e++; /* $1: one digit, as nginx */
            else
                while (is_name_char(*e))
                    e++;
        }
        if (e == s) {
            if (*s == '$' && !brace) { /* "$$": a literal $ */
                ob_add(o, "$", 1);
                p = s + 1;
            } else {
                ob_add(o, "$", 1);
                p = s;
            }
            continue;
        }
        char name[128];
        size_t nl = (size_t)(e - s);
        if (nl >= sizeof(name))
            nl = sizeof(name) - 1;
        memcpy(name, s, nl);
        name[nl] = '\0';
        bool digits = strspn(name, "0123456789") == nl;
        if (digits) {
            int k = atoi(name);
            if (cp && cp->ov && k < cp->n && cp->ov[2 * k] != PCRE2_UNSET)
                ob_add(o, cp->subject + cp->ov[2 * k], cp->ov[2 * k + 1] - cp->ov[2 * k]);
        } else if (vars) {
            size_t vl = 0;
            const char *v = plugin_req_var(r, name, &vl);
            if (v)
                ob_add(o, v, vl);
        } else {
            ob_add(o, p, (size_t)(e + (brace ? 1 : 0) - p));
        }
        p = e + (brace ? 1 : 0);
    }
}

/* %-encodes what a request-target cannot carry; "%XX" already encoded is
 * kept. */
static void encode_path(const char *in, struct obuf *o)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        unsigned char ch = *p;
        bool ok = ch > 0x20 && ch < 0x7f && !strchr("\"<>\\^`{|}", ch);
        if (ch == '%')
            ok = strchr(hex, p[1] & ~0x20) && p[1] && p[2] && strchr(hex, p[2] & ~0x20);
        if (ok) {
            ob_add(o, (const char *)p, 1);
        } else {
            char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            ob_add(o, e, 3);
        }
    }
}

static void prw_free(struct prw *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nre; i++)
        pcre2_code_free(c->re[i]);
    for (size_t i = 0; i < c->nadd; i++)
        free(c->add[i].value);
    for (size_t i = 0; i < c->nset; i++)
        free(c->set[i].value);
    free(c->add);
    free(c->set);
    free(c->remove);
    free(c);
}

static char *value_str(const json_t *v)
{
    if (json_is_string(v))
        return strdup(json_string_value(v));
    char b[64];
    if (json_is_integer(v))
        snprintf(b, sizeof(b), "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(b, sizeof(b), "%.17g", json_real_value(v));
    else
        return NULL;
    return strdup(b);
}

static int load_kv(const json_t *obj, struct hdr_kv **out, size_t *n, char *err, size_t errlen)
{
    if (!json_is_object(obj))
        return 0;
    *out = calloc(json_object_size(obj) + 1, sizeof(**out));
    if (!*out)
        return -1;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v) {
        char *s = value_str(v);
        if (!s) {
            snprintf(err, errlen, "header %s: value must be a string or a number", k);
            return -1;
        }
        (*out)[*n].name = k;
        (*out)[(*n)++].value = s;
    }
    return 0;
}

static int prw_create(const struct plugin_create_args *a, void **state, char *err, size_t errlen)
{
    struct prw *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const json_t *conf = a->conf;
    c->uri = json_string_value(json_object_get(conf, "uri"));
    c->method = json_string_value(json_object_get(conf, "method"));
    c->host = json_string_value(json_object_get(conf, "host"));
    const json_t *rx = json_object_get(conf, "regex_uri");
    if (json_is_array(rx)) {
        size_t n = json_array_size(rx);
        if (n % 2 || n / 2 > PR_MAX_PAIRS) {
            snprintf(err, errlen, "regex_uri: pairs of pattern and template (at most %d)",
                     PR_MAX_PAIRS);
            goto fail;
        }
        for (size_t i = 0; i < n; i += 2) {
            const char *pat = json_string_value(json_array_get(rx, i));
            const char *tpl = json_string_value(json_array_get(rx, i + 1));
            if (!pat || !tpl) {
                snprintf(err, errlen, "regex_uri: strings expected");
                goto fail;
            }
            pcre2_code *re = plugin_regex_compile(pat, "regex_uri", err, errlen);
            if (!re)
                goto fail;
            c->re[c->nre] = re;
            c->tmpl[c->nre++] = tpl;
        }
    }
    const json_t *h = json_object_get(conf, "headers");
    if (json_is_object(h)) {
        const json_t *add = json_object_get(h, "add"), *set = json_object_get(h, "set"),
                     *rm = json_object_get(h, "remove");
        bool structured = (json_is_object(add) || json_is_object(set) || json_is_array(rm));
        if (!structured) {
            if (load_kv(h, &c->set, &c->nset, err, errlen) < 0)
                goto fail;
        } else {
            if (load_kv(add, &c->add, &c->nadd, err, errlen) < 0 ||
                load_kv(set, &c->set, &c->nset, err, errlen) < 0)
                goto fail;
            if (json_is_array(rm)) {
                c->remove = calloc(json_array_size(rm) + 1, sizeof(*c->remove));
                if (!c->remove)
                    goto fail;
                size_t i;
                json_t *v;
                json_array_foreach(rm, i, v) {
                    if (json_is_string(v))
                        c->remove[c->nremove++] = json_string_value(v);
                }
            }
        }
    }
    *state = c;
    return 0;
fail:
    if (!err[0])
        snprintf(err, errlen, "out of memory");
    prw_free(c);
    return -1;
}

static void prw_destroy(void *state)
{
    prw_free(state);
}

/* The new request-target: path (expanded, encoded) plus the client's
 * query. Returns 0 (nothing to change when no uri applies). */
static int rewrite_uri(struct plugin_req *r, const struct prw *c, struct caps *cp,
                       PCRE2_SIZE *ov_store)
{
    struct obuf *path = malloc(sizeof(*path));
    if (!path)
        return -ENOMEM;
    path->len = 0;
    path->over = false;
    path->b[0] = '\0';
    const char *uri = plugin_req_uri(r);
    bool have = false;
    if (c->uri) {
        expand(r, c->uri, NULL, true, path);
        have = true;
    } else {
        for (size_t i = 0; i < c->nre && !have; i++) {
            pcre2_match_data *md = pcre2_match_data_create_from_pattern(c->re[i], NULL);
            if (!md)
                break;
            int rc = pcre2_match(c->re[i], (PCRE2_SPTR)uri, strlen(uri), 0, 0, md, NULL);
            if (rc > 0) {
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
                int n = rc < PR_MAX_CAPS ? rc : PR_MAX_CAPS;
                memcpy(ov_store, ov, (size_t)n * 2 * sizeof(PCRE2_SIZE));
                for (int k = n; k < PR_MAX_CAPS; k++)
                    ov_store[2 * k] = ov_store[2 * k + 1] = PCRE2_UNSET;
                cp->subject = uri;
                cp->ov = ov_store;
                cp->n = PR_MAX_CAPS;
                /* ngx.re.sub: the first match replaced, the rest kept. */
                ob_add(path, uri, ov_store[0]);
                expand(r, c->tmpl[i], cp, false, path);
                ob_add(path, uri + ov_store[1], strlen(uri) - ov_store[1]);
                have = true;
            }
            pcre2_match_data_free(md);
        }
    }
    int ret = 0;
    if (have) {
        struct obuf *t = malloc(sizeof(*t));
        if (!t) {
            free(path);
            return -ENOMEM;
        }
        t->len = 0;
        t->over = false;
        t->b[0] = '\0';
        if (path->b[0] != '/')
            ob_add(t, "/", 1);
        encode_path(path->b, t);
        const char *args = plugin_req_args(r);
        if (args) {
            ob_add(t, strchr(t->b, '?') ? "&" : "?", 1);
            ob_add(t, args, strlen(args));
        }
        if (t->over || path->over) {
            log_warn("proxy-rewrite: rewritten uri too long; left unchanged");
        } else {
            ret = plugin_req_set_target(r, t->b);
            if (ret == -EINVAL) {
                log_warn("proxy-rewrite: rewritten uri %s is not a valid request target", t->b);
                ret = 0;
            }
        }
        free(t);
    }
    free(path);
    return ret;
}

static int header_value(struct plugin_req *r, const char *tmpl, const struct caps *cp,
                        struct obuf *o)
{
    o->len = 0;
    o->over = false;
    o->b[0] = '\0';
    expand(r, tmpl, cp, true, o);
    return o->over ? -E2BIG : 0;
}

/* A header the engine keeps for itself (Content-Length, Connection, ...)
 * is left as it is: -EINVAL is not an error of the request. */
static int edit_rc(int rc)
{
    return rc == -EINVAL ? 0 : rc;
}

static int prw_rewrite(struct plugin_req *r, void *state, void **data)
{
    (void)data;
    const struct prw *c = state;
    struct caps cp = {0};
    PCRE2_SIZE ov[2 * PR_MAX_CAPS];
    int rc = 0;
    if (c->uri || c->nre)
        rc = rewrite_uri(r, c, &cp, ov);
    if (rc == 0 && c->method)
        rc = plugin_req_set_method(r, c->method);
    if (rc == 0 && c->host)
        rc = plugin_req_set_host(r, c->host);
    if (rc == 0 && (c->nadd || c->nset)) {
        struct obuf *o = malloc(sizeof(*o));
        if (!o)
            rc = -ENOMEM;
        for (size_t i = 0; o && rc == 0 && i < c->nadd; i++)
            if (header_value(r, c->add[i].value, &cp, o) == 0 && o->len)
                rc = edit_rc(plugin_req_header_add(r, c->add[i].name, o->b));
        for (size_t i = 0; o && rc == 0 && i < c->nset; i++) {
            if (header_value(r, c->set[i].value, &cp, o) != 0)
                continue;
            if (strcasecmp(c->set[i].name, "host") == 0 && o->len)
                rc = edit_rc(plugin_req_set_host(r, o->b));
            else
                rc = edit_rc(plugin_req_header_set(r, c->set[i].name, o->len ? o->b : NULL));
        }
        free(o);
    }
    for (size_t i = 0; rc == 0 && i < c->nremove; i++)
        rc = edit_rc(plugin_req_header_set(r, c->remove[i], NULL));
    if (rc == -ENOMEM) {
        plugin_respond_message(r, 500, "out of memory");
        return PLUGIN_STOP;
    }
    return PLUGIN_CONTINUE;
}

const struct plugin_def plugin_def_proxy_rewrite = {
    .name = "proxy-rewrite",
    .priority = 1008,
    .flags = PLUGIN_HTTP,
    .create = prw_create,
    .destroy = prw_destroy,
    .rewrite = prw_rewrite,
};
