/*
 * expr: see expr.h. A rule compiles to a tree of nodes: logical nodes own an
 * array of children, comparison nodes own their variable name and the right
 * value prepared for their operator (a number for the ordering operators, a
 * regex, a list of CIDR ranges, the elements of an `in` array). The tree is
 * never changed after expr_compile, so evaluation needs no locks.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "expr.h"

#include "cidr.h"

#include <ctype.h>
#include <errno.h>
#include <pcre2.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* PCRE2 backtracking budget per match: a hostile subject cannot pin a worker. */
#define REGEX_MATCH_LIMIT 1000000

struct expr_regex {
    pcre2_code *code;          /* the compiled pattern (JIT-compiled when possible) */
    pcre2_match_context *mctx; /* carries the match limit; read-only while matching */
};

enum node_kind { N_AND, N_OR, N_NAND, N_NOR, N_CMP };

enum cmp_op { OP_EQ, OP_NE, OP_GT, OP_GE, OP_LT, OP_LE, OP_RE, OP_REI, OP_IN, OP_HAS, OP_IPMATCH };

/* A right-hand value, typed as Lua would see the decoded JSON. */
enum val_type { V_NIL, V_STR, V_NUM, V_BOOL, V_TABLE };

struct val {
    enum val_type type; /* what the JSON value was */
    char *str;          /* V_STR: the bytes (NUL-terminated copy) */
    size_t len;         /* V_STR: their length */
    double num;         /* V_NUM: the number */
};

struct node {
    enum node_kind kind;   /* a logical operator or a comparison */
    uint32_t nchild;       /* logical: number of children */
    struct node **child;   /* logical: the children, evaluated in order */
    enum cmp_op op;        /* comparison: the operator */
    bool reverse;          /* comparison: the "!" form, result negated */
    char *var;             /* comparison: the variable name */
    struct val rv;         /* comparison: the right value */
    bool rv_num_ok;        /* ordering ops: tonumber(rv) succeeded */
    double rv_num;         /* ordering ops: tonumber(rv) */
    struct expr_regex *re; /* ~~ and ~*: the pattern */
    struct cidr *cidrs;    /* ipmatch: the ranges */
    uint32_t ncidr;        /* ipmatch: how many */
    struct val *arr;       /* in: the array's elements */
    uint32_t narr;         /* in: how many */
};

struct expr {
    struct node *root; /* NULL for the empty rule, which is always true */
};

/* Compilation state: error buffer and the node budget. */
struct cctx {
    char *err;      /* where the message goes */
    size_t errlen;  /* its size */
    unsigned nodes; /* nodes made so far */
};

static int fail(struct cctx *c, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(struct cctx *c, int rc, const char *fmt, ...)
{
    if (c->err && c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* ---- regex ---------------------------------------------------------------- */

int expr_regex_compile(const char *pattern, size_t len, unsigned flags, struct expr_regex **out,
                       char *err, size_t errlen)
{
    uint32_t opts = 0;
    if (flags & EXPR_RE_CASELESS)
        opts |= PCRE2_CASELESS;
    if (flags & EXPR_RE_FULL)
        opts |= PCRE2_ANCHORED | PCRE2_ENDANCHORED;

    int errcode;
    PCRE2_SIZE erroff;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &errcode, &erroff, NULL);
    if (!code) {
        if (errcode == PCRE2_ERROR_NOMEMORY || errcode == PCRE2_ERROR_HEAPLIMIT)
            return -ENOMEM;
        if (err && errlen) {
            PCRE2_UCHAR msg[128];
            if (pcre2_get_error_message(errcode, msg, sizeof(msg)) < 0)
                snprintf((char *)msg, sizeof(msg), "error %d", errcode);
            snprintf(err, errlen, "%s at offset %zu", (const char *)msg, (size_t)erroff);
        }
        return -EINVAL;
    }
    /* Without JIT the interpreter still works; only speed differs. */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);

    struct expr_regex *re = calloc(1, sizeof(*re));
    pcre2_match_context *mctx = pcre2_match_context_create(NULL);
    if (!re || !mctx) {
        free(re);
        pcre2_match_context_free(mctx);
        pcre2_code_free(code);
        return -ENOMEM;
    }
    pcre2_set_match_limit(mctx, REGEX_MATCH_LIMIT);
    re->code = code;
    re->mctx = mctx;
    *out = re;
    return 0;
}

void expr_regex_free(struct expr_regex *re)
{
    if (!re)
        return;
    pcre2_code_free(re->code);
    pcre2_match_context_free(re->mctx);
    free(re);
}

/*
 * A bump allocator over a stack buffer, handed to PCRE2 so that a match
 * allocates nothing on the heap in the usual case (the JIT path needs only
 * the general context and a one-pair match data). Larger requests, such as
 * the interpreter's backtracking frames, go to malloc and back to free.
 */
struct bump {
    size_t used;                                 /* bytes handed out from buf */
    alignas(max_align_t) unsigned char buf[512]; /* the arena */
};

static void *bump_malloc(size_t size, void *data)
{
    struct bump *b = data;
    size_t need = (size + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
    if (need <= sizeof(b->buf) - b->used) {
        void *p = b->buf + b->used;
        b->used += need;
        return p;
    }
    return malloc(size);
}

static void bump_free(void *p, void *data)
{
    struct bump *b = data;
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)b->buf;
    if (a >= lo && a < lo + sizeof(b->buf))
        return;
    free(p);
}

bool expr_regex_match(const struct expr_regex *re, const char *s, size_t len)
{
    struct bump b;
    b.used = 0;
    pcre2_general_context *g = pcre2_general_context_create(bump_malloc, bump_free, &b);
    if (!g)
        return false;
    pcre2_match_data *md = pcre2_match_data_create(1, g);
    if (!md) {
        pcre2_general_context_free(g);
        return false;
    }
    int rc = pcre2_match(re->code, (PCRE2_SPTR)(s ? s : ""), s ? len : 0, 0, 0, md, re->mctx);
    pcre2_match_data_free(md);
    pcre2_general_context_free(g);
    /* 0 means the ovector was too small, which still is a match. */
    return rc >= 0;
}

/* ---- values ----------------------------------------------------------------- */

/*
 * Lua's tonumber on a string (LuaJIT's scanner): surrounding whitespace,
 * sign, decimal or hexadecimal, exponent; no inf or nan.
 */
static bool lua_tonumber(const char *s, size_t len, double *out)
{
    char buf[128];
    while (len && isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (len == 0 || len >= sizeof(buf) || memchr(s, '\0', len))
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    const char *p = buf;
    if (*p == '+' || *p == '-')
        p++;
    if (!(isdigit((unsigned char)p[0]) || (p[0] == '.' && isdigit((unsigned char)p[1]))))
        return false;
    char *end;
    double d = strtod(buf, &end);
    if (*end != '\0')
        return false;
    *out = d;
    return true;
}

static int val_from_json(const json_t *j, struct val *v)
{
    memset(v, 0, sizeof(*v));
    if (!j || json_is_null(j)) {
        v->type = V_NIL;
    } else if (json_is_string(j)) {
        v->type = V_STR;
        v->len = json_string_length(j);
        v->str = malloc(v->len + 1);
        if (!v->str)
            return -ENOMEM;
        memcpy(v->str, json_string_value(j), v->len + 1);
    } else if (json_is_number(j)) {
        v->type = V_NUM;
        v->num = json_number_value(j);
    } else if (json_is_boolean(j)) {
        v->type = V_BOOL;
    } else {
        v->type = V_TABLE;
    }
    return 0;
}

/* ---- compile ---------------------------------------------------------------- */

static void node_free(struct node *n)
{
    if (!n)
        return;
    for (uint32_t i = 0; i < n->nchild; i++)
        node_free(n->child[i]);
    free(n->child);
    free(n->var);
    free(n->rv.str);
    expr_regex_free(n->re);
    free(n->cidrs);
    for (uint32_t i = 0; i < n->narr; i++)
        free(n->arr[i].str);
    free(n->arr);
    free(n);
}

static struct node *node_new(struct cctx *c, int *rc)
{
    if (++c->nodes > EXPR_MAX_NODES) {
        *rc = fail(c, -EINVAL, "expression has more than %d parts", EXPR_MAX_NODES);
        return NULL;
    }
    struct node *n = calloc(1, sizeof(*n));
    if (!n)
        *rc = -ENOMEM;
    return n;
}

static const struct {
    const char *name;
    enum cmp_op op;
} cmp_ops[] = {
    {"==", OP_EQ},           {"~=", OP_NE}, {">", OP_GT},   {">=", OP_GE}, {"<", OP_LT},
    {"<=", OP_LE},           {"~~", OP_RE}, {"~*", OP_REI}, {"in", OP_IN}, {"has", OP_HAS},
    {"ipmatch", OP_IPMATCH},
};

static int find_cmp_op(const char *s, enum cmp_op *op)
{
    for (size_t i = 0; i < sizeof(cmp_ops) / sizeof(cmp_ops[0]); i++) {
        if (strcasecmp(s, cmp_ops[i].name) == 0) {
            *op = cmp_ops[i].op;
            return 0;
        }
    }
    return -1;
}

/* Returns the logical kind named by s, or N_CMP when s is no logical operator. */
static enum node_kind logic_kind(const json_t *j)
{
    if (!json_is_string(j))
        return N_CMP;
    const char *s = json_string_value(j);
    if (strcasecmp(s, "AND") == 0)
        return N_AND;
    if (strcasecmp(s, "OR") == 0)
        return N_OR;
    if (strcasecmp(s, "!AND") == 0)
        return N_NAND;
    if (strcasecmp(s, "!OR") == 0)
        return N_NOR;
    return N_CMP;
}

static int add_cidr(struct cctx *c, struct node *n, const json_t *j)
{
    if (!json_is_string(j) || json_string_length(j) == 0)
        return fail(c, -EINVAL, "invalid ip address");
    if (cidr_parse(json_string_value(j), &n->cidrs[n->ncidr]) != 0)
        return fail(c, -EINVAL, "invalid ip address: %s", json_string_value(j));
    n->ncidr++;
    return 0;
}

static int prepare_ipmatch(struct cctx *c, struct node *n, const json_t *r)
{
    size_t count = json_is_array(r) ? json_array_size(r) : 1;
    if (!r || json_is_null(r) || count == 0)
        return fail(c, -EINVAL, "invalid ip address");
    if (count > EXPR_MAX_NODES)
        return fail(c, -EINVAL, "ipmatch list longer than %d", EXPR_MAX_NODES);
    n->cidrs = calloc(count, sizeof(*n->cidrs));
    if (!n->cidrs)
        return -ENOMEM;
    if (!json_is_array(r))
        return add_cidr(c, n, r);
    for (size_t i = 0; i < count; i++) {
        int rc = add_cidr(c, n, json_array_get(r, i));
        if (rc)
            return rc;
    }
    return 0;
}

static int prepare_in(struct cctx *c, struct node *n, const json_t *r)
{
    /* A non-array right value is accepted and never matches, as in Lua. */
    if (!json_is_array(r) || json_array_size(r) == 0)
        return 0;
    size_t count = json_array_size(r);
    if (count > EXPR_MAX_NODES)
        return fail(c, -EINVAL, "'in' list longer than %d", EXPR_MAX_NODES);
    n->arr = calloc(count, sizeof(*n->arr));
    if (!n->arr)
        return -ENOMEM;
    for (size_t i = 0; i < count; i++) {
        int rc = val_from_json(json_array_get(r, i), &n->arr[i]);
        if (rc)
            return rc;
        n->narr++;
    }
    return 0;
}

/* [var, op, value] or [var, "!", op, value] or [var, value]. */
static int compile_cmp(struct cctx *c, const json_t *a, struct node *n)
{
    size_t size = json_array_size(a);
    const json_t *l, *op, *r;
    n->kind = N_CMP;
    if (size == 4) {
        const json_t *bang = json_array_get(a, 1);
        if (!json_is_string(bang) || strcmp(json_string_value(bang), "!") != 0)
            return fail(c, -EINVAL, "bad 'not' expression");
        n->reverse = true;
        l = json_array_get(a, 0);
        op = json_array_get(a, 2);
        r = json_array_get(a, 3);
    } else {
        l = json_array_get(a, 0);
        op = json_array_get(a, 1);
        r = json_array_get(a, 2);
    }
    if (!json_is_string(l))
        return fail(c, -EINVAL, "invalid expression");
    if (op && !json_is_string(op))
        return fail(c, -EINVAL, "invalid expression: operator must be a string");

    bool known = op && find_cmp_op(json_string_value(op), &n->op) == 0;
    if (!known && (!r || json_is_null(r))) {
        /* [var, value]: lua-resty-expr's compatibility form of "==". */
        if (!op)
            return fail(c, -EINVAL, "invalid expression");
        r = op;
        n->op = OP_EQ;
    } else if (!known) {
        return fail(c, -EINVAL, "invalid operator '%s'", json_string_value(op));
    }

    n->var = strdup(json_string_value(l));
    if (!n->var)
        return -ENOMEM;
    int rc = val_from_json(r, &n->rv);
    if (rc)
        return rc;

    switch (n->op) {
    case OP_GT:
    case OP_GE:
    case OP_LT:
    case OP_LE:
        if (n->rv.type == V_NUM) {
            n->rv_num_ok = true;
            n->rv_num = n->rv.num;
        } else if (n->rv.type == V_STR) {
            n->rv_num_ok = lua_tonumber(n->rv.str, n->rv.len, &n->rv_num);
        }
        return 0;
    case OP_RE:
    case OP_REI: {
        if (n->rv.type != V_STR)
            return fail(c, -EINVAL, "invalid regex for '%s': must be a string",
                        n->op == OP_RE ? "~~" : "~*");
        char msg[160];
        rc = expr_regex_compile(n->rv.str, n->rv.len, n->op == OP_REI ? EXPR_RE_CASELESS : 0,
                                &n->re, msg, sizeof(msg));
        if (rc == -EINVAL)
            return fail(c, rc, "failed to compile regex '%s': %s", n->rv.str, msg);
        return rc;
    }
    case OP_IN:
        return prepare_in(c, n, r);
    case OP_IPMATCH:
        if (n->rv.type == V_STR && n->rv.len == 0)
            return fail(c, -EINVAL, "invalid ip address");
        return prepare_ipmatch(c, n, r);
    default:
        return 0;
    }
}

static int compile_rules(struct cctx *c, const json_t *rules, int depth, struct node **out);

/* Compiles the sub-rules rules[from..] as the children of a logical node. */
static int compile_children(struct cctx *c, const json_t *rules, size_t from, int depth,
                            struct node *n)
{
    size_t size = json_array_size(rules);
    n->child = calloc(size - from, sizeof(*n->child));
    if (!n->child)
        return -ENOMEM;
    for (size_t i = from; i < size; i++) {
        int rc = compile_rules(c, json_array_get(rules, i), depth + 1, &n->child[n->nchild]);
        if (rc)
            return rc;
        n->nchild++;
    }
    return 0;
}

static int compile_rules(struct cctx *c, const json_t *rules, int depth, struct node **out)
{
    if (depth > EXPR_MAX_DEPTH)
        return fail(c, -EINVAL, "expression nested deeper than %d", EXPR_MAX_DEPTH);
    if (!json_is_array(rules))
        return fail(c, -EINVAL, "invalid expression: each rule must be an array");
    size_t size = json_array_size(rules);
    if (size == 0)
        return fail(c, -EINVAL, "rule too short");

    int rc = 0;
    struct node *n = node_new(c, &rc);
    if (!n)
        return rc;
    const json_t *first = json_array_get(rules, 0);
    if (json_is_array(first)) {
        n->kind = N_AND;
        rc = compile_children(c, rules, 0, depth, n);
    } else if ((n->kind = logic_kind(first)) != N_CMP) {
        if (size <= 2)
            rc = fail(c, -EINVAL, "rule too short");
        else
            rc = compile_children(c, rules, 1, depth, n);
    } else {
        rc = compile_cmp(c, rules, n);
    }
    if (rc) {
        node_free(n);
        return rc;
    }
    *out = n;
    return 0;
}

int expr_compile(const json_t *rule, struct expr **out, char *err, size_t errlen)
{
    struct cctx c = {.err = err, .errlen = errlen, .nodes = 0};
    if (!rule)
        return fail(&c, -EINVAL, "missing argument rule");
    if (!json_is_array(rule))
        return fail(&c, -EINVAL, "rule must be an array");

    struct expr *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    if (json_array_size(rule) > 0) {
        const json_t *first = json_array_get(rule, 0);
        if (!json_is_array(first) && logic_kind(first) == N_CMP) {
            free(e);
            return fail(&c, -EINVAL, "rule should be wrapped inside brackets");
        }
        int rc = compile_rules(&c, rule, 1, &e->root);
        if (rc) {
            free(e);
            return rc;
        }
    }
    *out = e;
    return 0;
}

void expr_free(struct expr *e)
{
    if (!e)
        return;
    node_free(e->root);
    free(e);
}

/* ---- evaluate --------------------------------------------------------------- */

static bool str_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    return alen == blen && memcmp(a, b, alen) == 0;
}

/* `has` on a string variable: is r one of its comma-separated elements? */
static bool list_has(const char *l, size_t len, const struct val *r)
{
    if (r->type != V_STR)
        return false;
    size_t i = 0;
    while (i <= len) {
        size_t start = i;
        while (i < len && l[i] != ',')
            i++;
        size_t end = i;
        while (start < end && (l[start] == ' ' || l[start] == '\t'))
            start++;
        while (end > start && (l[end - 1] == ' ' || l[end - 1] == '\t'))
            end--;
        if (str_eq(l + start, end - start, r->str, r->len))
            return true;
        i++;
    }
    return false;
}

static bool ip_in(const struct node *n, const char *l, size_t len)
{
    char buf[64];
    if (len >= 2 && l[0] == '[' && l[len - 1] == ']') {
        l++;
        len -= 2;
    }
    if (len == 0 || len >= sizeof(buf) || memchr(l, '\0', len))
        return false;
    memcpy(buf, l, len);
    buf[len] = '\0';
    for (uint32_t i = 0; i < n->ncidr; i++) {
        if (cidr_match_str(&n->cidrs[i], buf))
            return true;
    }
    return false;
}

/* The comparison's raw result, before a "!" is applied; l is NULL when absent. */
static bool compare(const struct node *n, const char *l, size_t len)
{
    double x;
    switch (n->op) {
    case OP_EQ:
        switch (n->rv.type) {
        case V_NIL:
            return l == NULL;
        case V_STR:
            return l && str_eq(l, len, n->rv.str, n->rv.len);
        case V_NUM:
            return l && lua_tonumber(l, len, &x) && x == n->rv.num;
        default:
            return false;
        }
    case OP_NE:
        switch (n->rv.type) {
        case V_NIL:
            return l != NULL;
        case V_STR:
            return !l || !str_eq(l, len, n->rv.str, n->rv.len);
        case V_NUM:
            return !l || !lua_tonumber(l, len, &x) || x != n->rv.num;
        default:
            return true;
        }
    case OP_GT:
    case OP_GE:
    case OP_LT:
    case OP_LE:
        if (!l || !n->rv_num_ok || !lua_tonumber(l, len, &x))
            return false;
        if (n->op == OP_GT)
            return x > n->rv_num;
        if (n->op == OP_GE)
            return x >= n->rv_num;
        if (n->op == OP_LT)
            return x < n->rv_num;
        return x <= n->rv_num;
    case OP_RE:
    case OP_REI:
        return l && expr_regex_match(n->re, l, len);
    case OP_IN:
        if (!l)
            return false;
        for (uint32_t i = 0; i < n->narr; i++) {
            if (n->arr[i].type == V_STR && str_eq(l, len, n->arr[i].str, n->arr[i].len))
                return true;
        }
        return false;
    case OP_HAS:
        return l && list_has(l, len, &n->rv);
    case OP_IPMATCH:
        return l && ip_in(n, l, len);
    }
    return false;
}

static bool eval_node(const struct node *n, expr_var_fn var, void *ud)
{
    if (n->kind == N_CMP) {
        size_t len = 0;
        const char *l = var ? var(ud, n->var, &len) : NULL;
        return compare(n, l, len) != n->reverse;
    }
    bool any = n->kind == N_OR || n->kind == N_NOR;
    bool res = !any;
    for (uint32_t i = 0; i < n->nchild; i++) {
        bool v = eval_node(n->child[i], var, ud);
        if (any && v) {
            res = true;
            break;
        }
        if (!any && !v) {
            res = false;
            break;
        }
    }
    return (n->kind == N_NAND || n->kind == N_NOR) ? !res : res;
}

bool expr_eval(const struct expr *e, expr_var_fn var, void *ud)
{
    if (!e || !e->root)
        return true;
    return eval_node(e->root, var, ud);
}
