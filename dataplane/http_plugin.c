/*
 * http_plugin: the plugin phases of the HTTP engine (see plugin.h for the
 * contract, http_conn.h for struct plugin_req).
 *
 * A request gets a struct plugin_req only when a chain applies to it (a
 * global rule's or its route's): requests on routes without plugins
 * allocate nothing and take the engine's usual path.
 *
 * The runner walks a fixed sequence, as nginx walks its phases: rewrite
 * over every entry (global rules' instances first, then the route's),
 * access over every entry, then hp_req_prepare (404 / 502 / chash key),
 * before_proxy over the route's entries, then hp_up_start. A plugin's
 * PLUGIN_STOP (or a plugin_respond) ends the walk with its answer;
 * PLUGIN_ASYNC leaves the walk where it is until plugin_resume, which
 * continues it from the loop. header_filter, body_filter and log are called
 * by the engine where the response head is built, per body chunk and when
 * the request ends (hp_plugin_end, from req_finish), over every entry.
 *
 * Re-entrancy: plugin_resume may come while the runner is on the stack (a
 * plugin that resumes at once, a body callback delivered by the runner):
 * PF_RUNNING turns it into a flag the runner reads after the call returned.
 * A suspension ends exactly once: by plugin_resume, or by the framework
 * (client gone, timeout, 413, worker stopping), which calls the abort
 * callback and never runs the chain again for that request.
 *
 * Edited strings (target, host, method, header names and values) live in
 * the request's scratch space and go with it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_conn.h"
#include "log.h"
#include "plugin.h"

static void plugin_run(struct plugin_req *pr);

/* ---- set-up and end ---- */

/* A chain that applies to r and cannot run (plugin.h "Failing closed"): the
 * name of its missing plugin, else NULL. */
static const char *unavailable_plugin(const struct snapshot *s, const struct plugin_chain *rc)
{
    for (size_t i = 0; i < s->ngchains; i++)
        if (s->gchains[i]->unavailable)
            return s->gchains[i]->unavailable;
    return rc ? rc->unavailable : NULL;
}

/* The 503 of a request whose route (or a global rule) has a plugin that
 * cannot run. The working chains' header_filter and log still see it. */
static void answer_unavailable(struct plugin_req *pr, const char *name)
{
    char msg[200];
    if (name[0])
        snprintf(msg, sizeof(msg), "plugin %.128s is not available on this route", name);
    else
        snprintf(msg, sizeof(msg), "plugins are not available on this route");
    json_t *j = json_pack("{s:s}", "error_msg", msg); /* NULL: a name cut inside UTF-8 */
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    static const char fallback[] = "{\"error_msg\":\"plugins are not available on this route\"}";
    plugin_respond(pr, 503, "application/json", body ? body : fallback,
                   body ? strlen(body) : strlen(fallback));
    free(body);
    pr->phase = PH_DONE;
    hp_req_answer(pr->r, 503, NULL);
}

bool hp_plugin_begin(struct hp_req *r)
{
    const struct snapshot *s = r->snap;
    const struct plugin_chain *rc = r->route ? r->route->chain : NULL;
    size_t n = rc ? rc->n : 0, ng = 0;
    for (size_t i = 0; i < s->ngchains; i++)
        ng += s->gchains[i]->n;
    n += ng;
    const char *missing = unavailable_plugin(s, rc);
    if (n == 0 && !missing)
        return false;
    struct plugin_req *pr = calloc(1, sizeof(*pr) + n * sizeof(pr->e[0]));
    if (!pr) {
        hp_req_answer(r, missing ? 503 : 500, NULL);
        return true;
    }
    pr->r = r;
    pr->n = n;
    pr->nglobal = ng;
    size_t k = 0;
    for (size_t i = 0; i < s->ngchains; i++)
        for (size_t j = 0; j < s->gchains[i]->n; j++)
            pr->e[k++].inst = &s->gchains[i]->inst[j];
    for (size_t j = 0; rc && j < rc->n; j++)
        pr->e[k++].inst = &rc->inst[j];
    pr->req_tail = &pr->req_edits;
    pr->resp_tail = &pr->resp_edits;
    pr->content_length = (r->flags & RQ_CHUNKED)    ? -1
                         : (r->flags & RQ_HAS_BODY) ? (int64_t)r->parser.content_length
                                                    : 0;
    pr->phase = PH_REWRITE;
    r->pr = pr;
    if (missing)
        answer_unavailable(pr, missing);
    else
        plugin_run(pr);
    return true;
}

void hp_plugin_cancel_wait(struct hp_req *r)
{
    struct plugin_req *pr = r->pr;
    if (!pr)
        return;
    pr->phase = PH_DONE;
    r->flags &= ~RQ_PBODY;
    if (!(pr->flags & PF_SUSPENDED))
        return;
    pr->flags &= ~(PF_SUSPENDED | PF_RESUMED);
    void (*fn)(void *) = pr->abort_fn;
    pr->abort_fn = NULL;
    if (fn)
        fn(pr->abort_ud);
}

void hp_plugin_end(struct hp_req *r)
{
    struct plugin_req *pr = r->pr;
    if (!pr)
        return;
    hp_plugin_cancel_wait(r);
    if (!pr->status)
        pr->status = r->status;
    for (size_t i = 0; i < pr->n; i++) {
        struct hp_pentry *e = &pr->e[i];
        if (e->inst->def->log)
            e->inst->def->log(pr, e->inst->state, &e->data);
    }
    free(pr->resp_ctype);
    free(pr->resp_body);
    free(pr->body);
    free(pr);
    r->pr = NULL;
}

/* ---- the runner ---- */

static int (*phase_fn(const struct plugin_def *d, int phase))(struct plugin_req *, void *, void **)
{
    switch (phase) {
    case PH_REWRITE:
        return d->rewrite;
    case PH_ACCESS:
        return d->access;
    case PH_BEFORE_PROXY:
        return d->before_proxy;
    default:
        return NULL;
    }
}

static void deliver_body(struct plugin_req *pr)
{
    pr->flags &= ~PF_BODY_READY;
    pr->flags |= PF_BODY_READ;
    void (*cb)(struct plugin_req *, void *, const char *, size_t) = pr->body_cb;
    pr->body_cb = NULL;
    if (cb)
        cb(pr, pr->body_ud, pr->body ? pr->body : "", pr->body_len);
}

/* Walks the phases from where the request stands until it waits, is
 * answered or goes upstream. */
static void plugin_run(struct plugin_req *pr)
{
    struct hp_req *r = pr->r;
    struct hp_client *c = r->c;
    pr->flags |= PF_RUNNING;
    while (pr->phase != PH_DONE && c->state != CS_CLOSING) {
        if (pr->flags & PF_RESPONDED) {
            pr->phase = PH_DONE;
            hp_req_answer(r, pr->resp_status, NULL);
            break;
        }
        if (pr->idx >= pr->n) {
            if (pr->phase == PH_REWRITE) {
                pr->phase = PH_ACCESS;
                pr->idx = 0;
            } else if (pr->phase == PH_ACCESS) {
                pr->phase = PH_BEFORE_PROXY;
                pr->idx = pr->nglobal;
                if (!hp_req_prepare(r)) {
                    pr->phase = PH_DONE;
                    break;
                }
            } else {
                pr->phase = PH_DONE;
                hp_up_start(r);
                break;
            }
            continue;
        }
        struct hp_pentry *e = &pr->e[pr->idx++];
        int (*fn)(struct plugin_req *, void *, void **) = phase_fn(e->inst->def, pr->phase);
        if (!fn)
            continue;
        pr->flags &= ~PF_RESUMED;
        int rc = fn(pr, e->inst->state, &e->data);
        if (rc == PLUGIN_ASYNC) {
            pr->flags |= PF_SUSPENDED;
            if (pr->flags & PF_BODY_OVER) {
                pr->flags &= ~PF_BODY_OVER;
                r->flags &= ~RQ_PBODY;
                hp_plugin_cancel_wait(r);
                hp_req_answer(r, 413, NULL);
                break;
            }
            if (pr->flags & PF_BODY_READY)
                deliver_body(pr);
            if (!(pr->flags & PF_RESUMED))
                break; /* waits for plugin_resume */
            pr->flags &= ~(PF_SUSPENDED | PF_RESUMED);
            pr->abort_fn = NULL;
            continue;
        }
        if (rc == PLUGIN_STOP && !(pr->flags & PF_RESPONDED)) {
            log_warn("worker %d: plugin %s stopped the request without an answer",
                     c->p->o.worker_id, e->inst->def->name);
            plugin_respond(pr, 500, NULL, NULL, 0);
        }
    }
    pr->flags &= ~PF_RUNNING;
}

void plugin_resume(struct plugin_req *pr)
{
    if (!(pr->flags & PF_SUSPENDED))
        return;
    if (pr->flags & PF_RUNNING) {
        pr->flags |= PF_RESUMED;
        return;
    }
    pr->flags &= ~PF_SUSPENDED;
    pr->abort_fn = NULL;
    struct hp_client *c = pr->r->c;
    if (c->state == CS_CLOSING)
        return;
    plugin_run(pr);
    if (c->state != CS_CLOSING)
        hp_client_drive(c);
}

void plugin_set_abort(struct plugin_req *pr, void (*fn)(void *ud), void *ud)
{
    pr->abort_fn = fn;
    pr->abort_ud = ud;
}

/* ---- filters ---- */

void hp_plugin_header_filter(struct hp_req *r, int status, bool upstream)
{
    struct plugin_req *pr = r->pr;
    if (!pr || (pr->flags & PF_HF_DONE))
        return;
    pr->flags |= PF_HF_DONE;
    pr->status = status;
    if (upstream)
        pr->flags |= PF_UP_HEAD;
    for (size_t i = 0; i < pr->n; i++) {
        struct hp_pentry *e = &pr->e[i];
        if (e->inst->def->header_filter)
            e->inst->def->header_filter(pr, e->inst->state, &e->data);
    }
    pr->flags &= ~PF_UP_HEAD;
}

void hp_plugin_body_filter(struct hp_req *r, const char *chunk, size_t len)
{
    struct plugin_req *pr = r->pr;
    if (!pr || len == 0)
        return;
    for (size_t i = 0; i < pr->n; i++) {
        struct hp_pentry *e = &pr->e[i];
        if (e->inst->def->body_filter)
            e->inst->def->body_filter(pr, e->inst->state, &e->data, chunk, len);
    }
}

char *hp_plugin_local_response(struct hp_req *r, int status, const char *json_msg, bool keepalive,
                               size_t *len)
{
    struct plugin_req *pr = r->pr;
    hp_plugin_cancel_wait(r);
    char dbody[512];
    const char *ctype, *body;
    size_t blen;
    if ((pr->flags & PF_RESPONDED) && pr->resp_status == status) {
        ctype = pr->resp_ctype;
        body = pr->resp_body;
        blen = pr->resp_len;
    } else {
        blen = hp_default_body(status, json_msg, dbody, sizeof(dbody), &ctype);
        body = dbody;
    }
    hp_plugin_header_filter(r, status, false);
    char *out = hp_format_response(r->c->p, status, ctype, body, blen, keepalive, pr->resp_edits,
                                   len);
    if (out && !(r->flags & RQ_HEAD))
        hp_plugin_body_filter(r, body, blen);
    return out;
}

/* ---- header edits ---- */

bool hp_plugin_replaced(const struct hp_edit *edits, const char *name)
{
    for (const struct hp_edit *e = edits; e; e = e->next)
        if (!e->dead && !e->add && strcasecmp(e->name, name) == 0)
            return true;
    return false;
}

size_t hp_plugin_emit(const struct hp_edit *edits, char *out)
{
    size_t n = 0;
    for (const struct hp_edit *e = edits; e; e = e->next) {
        if (e->dead || !e->value)
            continue;
        size_t nl = strlen(e->name), vl = strlen(e->value);
        if (out) {
            memcpy(out + n, e->name, nl);
            memcpy(out + n + nl, ": ", 2);
            memcpy(out + n + nl + 2, e->value, vl);
            memcpy(out + n + nl + 2 + vl, "\r\n", 2);
        }
        n += nl + vl + 4;
    }
    return n;
}

/* Header names and values a plugin may send: a token, and no CR/LF/NUL. */
static bool valid_name(const char *n)
{
    if (!n || !*n)
        return false;
    for (const unsigned char *p = (const unsigned char *)n; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || strchr("()<>@,;:\\\"/[]?={}", *p))
            return false;
    return true;
}

static bool valid_value(const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

/* Framing and connection headers stay the engine's. */
static bool framing_header(const char *n)
{
    static const char *const f[] = {"connection",        "keep-alive", "proxy-connection", "te",
                                    "transfer-encoding", "upgrade",    "content-length",
                                    "trailer",           "expect"};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (strcasecmp(n, f[i]) == 0)
            return true;
    return false;
}

static int edit_add(struct hp_req *r, struct hp_edit ***tail, struct hp_edit *head,
                    const char *name, const char *value, bool add)
{
    if (!valid_name(name) || (value && !valid_value(value)) || framing_header(name) ||
        strcasecmp(name, "host") == 0)
        return -EINVAL;
    if (add && !value)
        return -EINVAL;
    if (!add)
        for (struct hp_edit *e = head; e; e = e->next)
            if (strcasecmp(e->name, name) == 0)
                e->dead = true;
    struct hp_edit *e = hp_scratch_alloc(r, sizeof(*e));
    if (!e)
        return -ENOMEM;
    memset(e, 0, sizeof(*e));
    e->name = hp_scratch_strndup(r, name, strlen(name));
    e->value = value ? hp_scratch_strndup(r, value, strlen(value)) : NULL;
    if (!e->name || (value && !e->value))
        return -ENOMEM;
    e->add = add;
    **tail = e;
    *tail = &e->next;
    return 0;
}

int plugin_req_header_set(struct plugin_req *pr, const char *name, const char *value)
{
    return edit_add(pr->r, &pr->req_tail, pr->req_edits, name, value, false);
}

int plugin_req_header_add(struct plugin_req *pr, const char *name, const char *value)
{
    return edit_add(pr->r, &pr->req_tail, pr->req_edits, name, value, true);
}

int plugin_resp_header_set(struct plugin_req *pr, const char *name, const char *value)
{
    return edit_add(pr->r, &pr->resp_tail, pr->resp_edits, name, value, false);
}

int plugin_resp_header_add(struct plugin_req *pr, const char *name, const char *value)
{
    return edit_add(pr->r, &pr->resp_tail, pr->resp_edits, name, value, true);
}

/* ---- what plugins read ---- */

const char *plugin_req_method(struct plugin_req *pr)
{
    return pr->r->method;
}

const char *plugin_req_uri(struct plugin_req *pr)
{
    return pr->r->path;
}

const char *plugin_req_args(struct plugin_req *pr)
{
    return pr->target ? pr->args : pr->r->args;
}

const char *plugin_req_arg(struct plugin_req *pr, const char *name, size_t *len)
{
    const char *a = plugin_req_args(pr);
    if (!a || !name)
        return NULL;
    size_t nl = strlen(name);
    const char *p = a;
    while (*p) {
        const char *end = strchr(p, '&');
        size_t pl = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', pl);
        size_t kl = eq ? (size_t)(eq - p) : pl;
        if (kl == nl && memcmp(p, name, nl) == 0) {
            if (len)
                *len = eq ? pl - kl - 1 : 0;
            return eq ? eq + 1 : p + pl;
        }
        if (!end)
            break;
        p = end + 1;
    }
    return NULL;
}

const char *plugin_req_header(struct plugin_req *pr, const char *name, size_t *len)
{
    const struct hp_head *h = &pr->r->head;
    int i = hp_hfind(h, name, 0);
    if (i < 0)
        return NULL;
    if (len)
        *len = h->h[i].value_len;
    return hp_hvalue(h, (uint32_t)i);
}

const char *plugin_req_var(struct plugin_req *pr, const char *name, size_t *len)
{
    size_t l = 0;
    const char *v = hp_req_var(pr->r, name, &l);
    if (v && len)
        *len = l;
    return v;
}

const struct sockaddr *plugin_req_remote(struct plugin_req *pr)
{
    return &pr->r->c->peer.sa;
}

const char *plugin_req_route_id(struct plugin_req *pr)
{
    return pr->r->route ? pr->r->route->id : NULL;
}

struct snapshot *plugin_req_snapshot(struct plugin_req *pr)
{
    return pr->r->snap;
}

int64_t plugin_req_content_length(struct plugin_req *pr)
{
    return pr->content_length;
}

const struct consumer_rt *plugin_req_consumer(struct plugin_req *pr)
{
    return pr->consumer;
}

void plugin_req_set_consumer(struct plugin_req *pr, const struct consumer_rt *c)
{
    pr->consumer = c;
}

/* ---- edits of what goes upstream ---- */

static bool valid_target(const char *t)
{
    if (!t || t[0] != '/')
        return false;
    for (const unsigned char *p = (const unsigned char *)t; *p; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return false;
    return true;
}

int plugin_req_set_target(struct plugin_req *pr, const char *target)
{
    if (!valid_target(target))
        return -EINVAL;
    char *t = hp_scratch_strndup(pr->r, target, strlen(target));
    if (!t)
        return -ENOMEM;
    pr->target = t;
    const char *q = strchr(t, '?');
    pr->args = q ? q + 1 : NULL;
    return 0;
}

int plugin_req_set_host(struct plugin_req *pr, const char *host)
{
    if (!host || !*host || !valid_value(host) || strpbrk(host, " \t/\\@?#"))
        return -EINVAL;
    char *h = hp_scratch_strndup(pr->r, host, strlen(host));
    if (!h)
        return -ENOMEM;
    pr->host = h;
    return 0;
}

int plugin_req_set_method(struct plugin_req *pr, const char *method)
{
    if (!valid_name(method))
        return -EINVAL;
    char *m = hp_scratch_strndup(pr->r, method, strlen(method));
    if (!m)
        return -ENOMEM;
    pr->method = m;
    return 0;
}

int plugin_req_arg_remove(struct plugin_req *pr, const char *name)
{
    struct hp_req *r = pr->r;
    const char *target = pr->target ? pr->target : r->target;
    const char *q = strchr(target, '?');
    if (!q || !name || !*name)
        return 0;
    size_t tl = strlen(target), nl = strlen(name);
    char *out = hp_scratch_alloc(r, tl + 1);
    if (!out)
        return -ENOMEM;
    size_t o = (size_t)(q - target);
    memcpy(out, target, o);
    bool first = true;
    const char *p = q + 1;
    while (*p) {
        const char *end = strchr(p, '&');
        size_t pl = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', pl);
        size_t kl = eq ? (size_t)(eq - p) : pl;
        if (!(kl == nl && memcmp(p, name, nl) == 0) && pl) {
            out[o++] = first ? '?' : '&';
            memcpy(out + o, p, pl);
            o += pl;
            first = false;
        }
        if (!end)
            break;
        p = end + 1;
    }
    out[o] = '\0';
    pr->target = out;
    const char *nq = strchr(out, '?');
    pr->args = nq ? nq + 1 : NULL;
    return 0;
}

/* ---- the response ---- */

int plugin_resp_status(struct plugin_req *pr)
{
    return pr->status;
}

const char *plugin_resp_header(struct plugin_req *pr, const char *name, size_t *len)
{
    if (!(pr->flags & PF_UP_HEAD))
        return NULL;
    const struct hp_head *h = &pr->r->rhead;
    int i = hp_hfind(h, name, 0);
    if (i < 0)
        return NULL;
    if (len)
        *len = h->h[i].value_len;
    return hp_hvalue(h, (uint32_t)i);
}

void plugin_respond(struct plugin_req *pr, int status, const char *content_type, const char *body,
                    size_t len)
{
    if (status < 200 || status > 599)
        status = 500;
    free(pr->resp_ctype);
    free(pr->resp_body);
    pr->resp_ctype = content_type ? strdup(content_type) : NULL;
    pr->resp_body = NULL;
    pr->resp_len = 0;
    if (body && len) {
        pr->resp_body = malloc(len);
        if (pr->resp_body) {
            memcpy(pr->resp_body, body, len);
            pr->resp_len = len;
        }
    }
    pr->resp_status = status;
    pr->flags |= PF_RESPONDED;
}

void plugin_respond_message(struct plugin_req *pr, int status, const char *message)
{
    /* {"message":"..."} with the JSON escapes a message may need. */
    size_t ml = message ? strlen(message) : 0;
    char *b = malloc(ml * 6 + 32);
    if (!b) {
        plugin_respond(pr, status, "application/json", NULL, 0);
        return;
    }
    size_t n = (size_t)sprintf(b, "{\"message\":\"");
    for (size_t i = 0; i < ml; i++) {
        unsigned char ch = (unsigned char)message[i];
        if (ch == '"' || ch == '\\') {
            b[n++] = '\\';
            b[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)sprintf(b + n, "\\u%04x", ch);
        } else {
            b[n++] = (char)ch;
        }
    }
    n += (size_t)sprintf(b + n, "\"}\n");
    plugin_respond(pr, status, "application/json", b, n);
    free(b);
}

/* ---- the request body ---- */

int plugin_req_read_body(struct plugin_req *pr, size_t max,
                         void (*cb)(struct plugin_req *r, void *ud, const char *body, size_t len),
                         void *ud)
{
    struct hp_req *r = pr->r;
    if (pr->flags & PF_BODY_WANT)
        return -EALREADY;
    pr->flags |= PF_BODY_WANT;
    pr->body_cb = cb;
    pr->body_ud = ud;
    pr->body_max = max;
    if (!(r->flags & RQ_HAS_BODY)) {
        pr->flags |= PF_BODY_READY;
        return 0;
    }
    if (pr->content_length > 0 && (uint64_t)pr->content_length > max) {
        pr->flags |= PF_BODY_OVER;
        return 0;
    }
    if (pr->content_length > 0) {
        pr->body = malloc((size_t)pr->content_length);
        if (!pr->body)
            return -ENOMEM;
        pr->body_cap = (size_t)pr->content_length;
    }
    r->flags |= RQ_PBODY;
    return 0;
}

int hp_plugin_body_chunk(struct hp_req *r, const char *at, size_t len)
{
    struct plugin_req *pr = r->pr;
    if (pr->body_len + len > pr->body_max)
        return 413;
    if (pr->body_len + len > pr->body_cap) {
        size_t cap = pr->body_cap ? pr->body_cap * 2 : 4096;
        while (cap < pr->body_len + len)
            cap *= 2;
        if (cap > pr->body_max)
            cap = pr->body_max;
        char *nb = realloc(pr->body, cap);
        if (!nb)
            return 500;
        pr->body = nb;
        pr->body_cap = cap;
    }
    memcpy(pr->body + pr->body_len, at, len);
    pr->body_len += len;
    return 0;
}

void hp_plugin_body_done(struct hp_req *r)
{
    struct plugin_req *pr = r->pr;
    r->flags &= ~RQ_PBODY;
    if (!pr)
        return;
    if (pr->flags & PF_SUSPENDED)
        deliver_body(pr);
    else
        pr->flags |= PF_BODY_READ;
}

/* ---- what the log phase reads (prometheus) ---- */

void plugin_req_info(struct plugin_req *pr, struct http_request_info *out)
{
    struct hp_req *r = pr->r;
    hp_req_info(r, pr->status ? pr->status : r->status, uv_hrtime(), out);
}
