/*
 * yaml_json: YAML (and so JSON) text to a jansson tree, built from libyaml's
 * event stream with an explicit stack (no recursion, so input cannot blow the
 * C stack).
 *
 * Decisions (yaml_json.h states the contract; these complete it):
 * - One document. A second document ("---" after the first) is an error
 *   naming its line:column, so two files concatenated by mistake are never
 *   half-loaded. No document at all (empty input, only comments) and an
 *   empty root ("---" alone) give {}.
 * - Plain scalars resolve by YAML 1.2's core schema: null|Null|NULL|~|empty
 *   -> null; true|True|TRUE|false|False|FALSE -> bool ("yes", "on" stay
 *   strings); [-+]?[0-9]+ -> integer (decimal even with leading zeros:
 *   "010" is 10); 0o[0-7]+ octal, 0x[0-9a-fA-F]+ hex (unsigned only, as the
 *   spec says); integers that do not fit int64 -> real; floats as the core
 *   schema spells them. .inf, -.inf and .nan are errors (JSON has no such
 *   numbers), and so is a float that overflows a double.
 * - Quoted and block scalars are strings. Tags: !!str, !!int, !!float,
 *   !!bool, !!null, !!map, !!seq and the non-specific "!" are honoured (a
 *   value that does not fit its tag is an error); any other tag is an error.
 * - Mapping keys must be scalars (or aliases of scalars); the key is the
 *   scalar's text ("1: x" gives {"1": "x"}). A duplicate key is an error that
 *   names it. Keys may not contain NUL.
 * - Merge keys ("<<: *base" or "<<: [*a, *b]", YAML 1.1's merge, as
 *   docker-compose files use) are honoured: explicit keys win wherever they
 *   stand, and earlier merged mappings win over later ones.
 * - Aliases are deep copies, so the caller may change the tree freely. Every
 *   scalar, key and container counts as a node, an alias counts the nodes it
 *   copies, and more than YAML_JSON_MAX_NODES is an error; an alias that
 *   would nest deeper than YAML_JSON_MAX_DEPTH is an error too.
 * - Error messages start with "line:column: " (1-based).
 */
#include "yaml_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define YAML_JSON_MAX_FILE (64u << 20) /* yaml_json_load_file refuses more */

#define TAG_PREFIX "tag:yaml.org,2002:"

struct anchor {
    json_t *value; /* the anchored node (one reference) */
    char *text;    /* a scalar's source text, for use as a key; NULL otherwise */
    size_t nodes;  /* nodes in the subtree, counted again per alias */
    int height;    /* container levels in the subtree (0 for a scalar) */
};

struct frame {
    json_t *node;         /* the open object or array */
    char *anchor;         /* its anchor, registered when it ends (owned) */
    size_t first_node;    /* ctx nodes count before it started */
    int height;           /* 1 + the highest child's height */
    char *key;            /* object: key awaiting its value (owned), or NULL */
    bool merge;           /* object: the awaited value is for a "<<" key */
    yaml_mark_t key_mark; /* object: where that key is */
    json_t *merged;       /* object: keys that came from merges (a set), or NULL */
};

struct ctx {
    struct frame stack[YAML_JSON_MAX_DEPTH]; /* open containers */
    int depth;                               /* how many are open */
    json_t *root;                            /* the finished document node */
    bool root_empty;                         /* it was an empty plain scalar */
    int docs;                                /* documents started */
    size_t nodes;                            /* nodes made, aliases expanded */
    json_t *anchor_index;                    /* anchor name -> index in anchors */
    struct anchor *anchors;                  /* every anchor seen */
    size_t nanchors, anchors_cap;            /* used and allocated */
    char *err;                               /* the caller's message buffer */
    size_t errlen;                           /* its size */
    bool failed;                             /* a message has been written */
};

static void fail(struct ctx *c, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct ctx *c, yaml_mark_t m, const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = true;
    int n = snprintf(c->err, c->errlen, "%zu:%zu: ", m.line + 1, m.column + 1);
    if (n < 0 || (size_t)n >= c->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* ---- scalars ---------------------------------------------------------- */

enum kind { K_ANY, K_STR, K_NULL, K_BOOL, K_INT, K_FLOAT };

static bool is_one_of(const char *s, size_t n, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == n && memcmp(s, *words, n) == 0)
            return true;
    return false;
}

static bool all_in(const char *s, size_t n, const char *set)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!s[i] || !strchr(set, s[i]))
            return false;
    return true;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static bool is_core_float(const char *s, size_t n)
{
    size_t i = 0, int_digits = 0, frac_digits = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, int_digits++;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, frac_digits++;
    }
    if (int_digits == 0 && frac_digits == 0)
        return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t exp_digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++, exp_digits++;
        if (exp_digits == 0)
            return false;
    }
    return i == n;
}

/* Digits of base 8 or 16 to an integer, or a real past INT64_MAX. */
static json_t *radix_number(const char *s, size_t n, unsigned base)
{
    uint64_t v = 0;
    double d = 0;
    bool big = false;
    for (size_t i = 0; i < n; i++) {
        unsigned digit =
            s[i] <= '9' ? (unsigned)(s[i] - '0') : (unsigned)((s[i] | 0x20) - 'a' + 10);
        d = d * base + digit;
        if (!big && v > (uint64_t)(INT64_MAX - digit) / base)
            big = true;
        v = v * base + digit;
    }
    return big ? json_real(d) : json_integer((json_int_t)v);
}

/* Resolves a scalar to JSON. want is K_ANY for an untagged plain scalar,
 * else what the style or tag demands. Returns NULL after fail(). */
static json_t *resolve(struct ctx *c, const char *s, size_t n, enum kind want, yaml_mark_t m)
{
    static const char *const nulls[] = {"null", "Null", "NULL", "~", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    static const char *const infs[] = {".inf",  ".Inf",  ".INF",  "+.inf", "+.Inf",
                                       "+.INF", "-.inf", "-.Inf", "-.INF", NULL};
    static const char *const nans[] = {".nan", ".NaN", ".NAN", NULL};
    json_t *v = NULL;

    if (want == K_STR)
        goto string;
    if (n == 0 || is_one_of(s, n, nulls)) {
        if (want == K_ANY || want == K_NULL)
            return json_null();
        goto mismatch;
    }
    if (want == K_NULL)
        goto mismatch;
    if (is_one_of(s, n, trues) || is_one_of(s, n, falses)) {
        if (want == K_ANY || want == K_BOOL)
            return json_boolean(is_one_of(s, n, trues));
        goto mismatch;
    }
    if (want == K_BOOL)
        goto mismatch;
    if (is_one_of(s, n, infs) || is_one_of(s, n, nans)) {
        fail(c, m, "%.*s has no JSON representation", (int)n, s);
        return NULL;
    }

    /* libyaml's scalars are NUL-terminated, and the checks below make sure
     * strtoll/strtod see nothing but the number. */
    size_t sign = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    bool int_form = true;
    if (all_in(s + sign, n - sign, "0123456789")) {
        errno = 0;
        long long ll = strtoll(s, NULL, 10);
        if (errno == ERANGE)
            v = json_real(strtod(s, NULL));
        else
            v = json_integer((json_int_t)ll);
    } else if (n > 2 && s[0] == '0' && s[1] == 'o' && all_in(s + 2, n - 2, "01234567")) {
        v = radix_number(s + 2, n - 2, 8);
    } else if (n > 2 && s[0] == '0' && s[1] == 'x' &&
               all_in(s + 2, n - 2, "0123456789abcdefABCDEF")) {
        v = radix_number(s + 2, n - 2, 16);
    } else if (is_core_float(s, n)) {
        int_form = false;
        v = json_real(strtod(s, NULL)); /* NULL when it overflowed to inf */
    } else if (want == K_ANY) {
        goto string;
    } else {
        goto mismatch;
    }

    if (!v) {
        fail(c, m, "number %.*s is out of range", (int)(n > 40 ? 40 : n), s);
        return NULL;
    }
    if (want == K_INT && !int_form) {
        json_decref(v);
        goto mismatch;
    }
    if (want == K_FLOAT && json_is_integer(v)) {
        json_t *r = json_real((double)json_integer_value(v));
        json_decref(v);
        v = r;
    }
    return v;

string:
    v = json_stringn(s, n);
    if (!v)
        fail(c, m, "string is not valid UTF-8");
    return v;

mismatch:
    fail(c, m, "\"%.*s\" does not match its tag", (int)(n > 40 ? 40 : n), s);
    return NULL;
}

/* What a scalar event must become, from its style and tag. */
static bool scalar_kind(struct ctx *c, const yaml_event_t *ev, enum kind *out)
{
    const char *tag = (const char *)ev->data.scalar.tag;
    if (!tag) {
        *out = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? K_ANY : K_STR;
        return true;
    }
    static const struct {
        const char *name;
        enum kind kind;
    } tags[] = {
        {"!", K_STR},
        {TAG_PREFIX "str", K_STR},
        {TAG_PREFIX "null", K_NULL},
        {TAG_PREFIX "bool", K_BOOL},
        {TAG_PREFIX "int", K_INT},
        {TAG_PREFIX "float", K_FLOAT},
    };
    for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
        if (strcmp(tag, tags[i].name) == 0) {
            *out = tags[i].kind;
            return true;
        }
    }
    fail(c, ev->start_mark, "unsupported tag %.64s", tag);
    return false;
}

/* ---- anchors ---------------------------------------------------------- */

static bool add_anchor(struct ctx *c, const char *name, json_t *value, const char *text,
                       size_t nodes, int height, yaml_mark_t m)
{
    if (c->nanchors == c->anchors_cap) {
        size_t cap = c->anchors_cap ? c->anchors_cap * 2 : 16;
        struct anchor *a = realloc(c->anchors, cap * sizeof(*a));
        if (!a)
            goto fail_oom;
        c->anchors = a;
        c->anchors_cap = cap;
    }
    struct anchor *a = &c->anchors[c->nanchors];
    a->text = text ? strdup(text) : NULL;
    if (text && !a->text)
        goto fail_oom;
    /* A later anchor of the same name replaces the earlier one. */
    if (json_object_set_new(c->anchor_index, name, json_integer((json_int_t)c->nanchors)) != 0) {
        free(a->text);
        goto fail_oom;
    }
    a->value = json_incref(value);
    a->nodes = nodes;
    a->height = height;
    c->nanchors++;
    return true;

fail_oom:
    fail(c, m, "out of memory");
    return false;
}

static struct anchor *find_anchor(struct ctx *c, const char *name)
{
    json_t *i = json_object_get(c->anchor_index, name);
    return i ? &c->anchors[json_integer_value(i)] : NULL;
}

/* ---- building --------------------------------------------------------- */

static bool count_nodes(struct ctx *c, size_t n, yaml_mark_t m)
{
    if (n > YAML_JSON_MAX_NODES - c->nodes) {
        fail(c, m, "document has more than %d nodes (aliases expanded)", YAML_JSON_MAX_NODES);
        return false;
    }
    c->nodes += n;
    return true;
}

static bool is_key_position(struct ctx *c)
{
    struct frame *f = c->depth ? &c->stack[c->depth - 1] : NULL;
    return f && json_is_object(f->node) && !f->key;
}

/* Takes the key for the innermost (object) frame. */
static bool take_key(struct ctx *c, const char *text, size_t n, bool merge, yaml_mark_t m)
{
    struct frame *f = &c->stack[c->depth - 1];
    if (memchr(text, '\0', n)) {
        fail(c, m, "mapping key contains a NUL character");
        return false;
    }
    if (!merge && json_object_get(f->node, text) &&
        !(f->merged && json_object_get(f->merged, text))) {
        fail(c, m, "duplicate key \"%.100s\"", text);
        return false;
    }
    f->key = strdup(text);
    if (!f->key) {
        fail(c, m, "out of memory");
        return false;
    }
    f->merge = merge;
    f->key_mark = m;
    return true;
}

static bool merge_one(struct ctx *c, struct frame *f, json_t *src)
{
    const char *k;
    json_t *v;
    json_object_foreach(src, k, v)
    {
        if (json_object_get(f->node, k))
            continue; /* explicit keys and earlier merges win */
        if (!f->merged && !(f->merged = json_object()))
            goto fail_oom;
        if (json_object_set(f->node, k, v) != 0 ||
            json_object_set_new(f->merged, k, json_true()) != 0)
            goto fail_oom;
    }
    return true;

fail_oom:
    fail(c, f->key_mark, "out of memory");
    return false;
}

static bool merge(struct ctx *c, struct frame *f, json_t *v)
{
    if (json_is_object(v))
        return merge_one(c, f, v);
    if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e)
        {
            if (!json_is_object(e))
                goto fail_type;
        }
        json_array_foreach(v, i, e)
        {
            if (!merge_one(c, f, e))
                return false;
        }
        return true;
    }
fail_type:
    fail(c, f->key_mark, "the value of a merge key (<<) must be a mapping or a list of mappings");
    return false;
}

/* Puts a finished node (reference stolen) where it belongs. */
static bool place(struct ctx *c, json_t *v, int height, yaml_mark_t m)
{
    if (!v) {
        fail(c, m, "out of memory");
        return false;
    }
    if (c->depth == 0) {
        c->root = v;
        return true;
    }
    struct frame *f = &c->stack[c->depth - 1];
    if (height + 1 > f->height)
        f->height = height + 1;
    bool ok;
    if (json_is_array(f->node)) {
        ok = json_array_append_new(f->node, v) == 0;
    } else if (f->merge) {
        ok = merge(c, f, v);
        json_decref(v);
    } else {
        ok = json_object_set_new(f->node, f->key, v) == 0;
        if (ok && f->merged)
            json_object_del(f->merged, f->key);
    }
    free(f->key);
    f->key = NULL;
    f->merge = false;
    if (!ok)
        fail(c, m, "out of memory");
    return ok;
}

static bool on_scalar(struct ctx *c, const yaml_event_t *ev)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *anchor = (const char *)ev->data.scalar.anchor;
    enum kind kind;
    if (!count_nodes(c, 1, ev->start_mark) || !scalar_kind(c, ev, &kind))
        return false;
    if (is_key_position(c)) {
        bool merge_key = kind == K_ANY && n == 2 && memcmp(s, "<<", 2) == 0;
        if (!take_key(c, s, n, merge_key, ev->start_mark))
            return false;
        if (anchor) {
            json_t *k = json_string(s);
            bool ok = k && add_anchor(c, anchor, k, s, 1, 0, ev->start_mark);
            json_decref(k);
            return ok;
        }
        return true;
    }
    json_t *v = resolve(c, s, n, kind, ev->start_mark);
    if (!v)
        return false;
    if (anchor && !add_anchor(c, anchor, v, memchr(s, '\0', n) ? NULL : s, 1, 0, ev->start_mark)) {
        json_decref(v);
        return false;
    }
    if (c->depth == 0 && kind == K_ANY && n == 0)
        c->root_empty = true;
    return place(c, v, 0, ev->start_mark);
}

static bool on_alias(struct ctx *c, const yaml_event_t *ev)
{
    const char *name = (const char *)ev->data.alias.anchor;
    struct anchor *a = find_anchor(c, name);
    if (!a) {
        fail(c, ev->start_mark, "unknown anchor \"%.64s\"", name);
        return false;
    }
    if (is_key_position(c)) {
        if (!a->text) {
            fail(c, ev->start_mark, "alias *%.64s is not a scalar, so it cannot be a key", name);
            return false;
        }
        return count_nodes(c, 1, ev->start_mark) &&
               take_key(c, a->text, strlen(a->text), false, ev->start_mark);
    }
    if (!count_nodes(c, a->nodes, ev->start_mark))
        return false;
    if (c->depth + a->height > YAML_JSON_MAX_DEPTH) {
        fail(c, ev->start_mark, "alias *%.64s nests deeper than %d levels", name,
             YAML_JSON_MAX_DEPTH);
        return false;
    }
    return place(c, json_deep_copy(a->value), a->height, ev->start_mark);
}

static bool on_start(struct ctx *c, const yaml_event_t *ev, bool mapping)
{
    const char *tag =
        (const char *)(mapping ? ev->data.mapping_start.tag : ev->data.sequence_start.tag);
    const char *anchor =
        (const char *)(mapping ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor);
    if (is_key_position(c)) {
        fail(c, ev->start_mark, "a mapping key must be a scalar, not a %s",
             mapping ? "mapping" : "sequence");
        return false;
    }
    if (tag && strcmp(tag, "!") != 0 &&
        strcmp(tag, mapping ? TAG_PREFIX "map" : TAG_PREFIX "seq") != 0) {
        fail(c, ev->start_mark, "unsupported tag %.64s", tag);
        return false;
    }
    if (c->depth == YAML_JSON_MAX_DEPTH) {
        fail(c, ev->start_mark, "nested deeper than %d levels", YAML_JSON_MAX_DEPTH);
        return false;
    }
    size_t before = c->nodes;
    if (!count_nodes(c, 1, ev->start_mark))
        return false;
    struct frame *f = &c->stack[c->depth];
    memset(f, 0, sizeof(*f));
    f->node = mapping ? json_object() : json_array();
    f->anchor = anchor ? strdup(anchor) : NULL;
    f->first_node = before;
    f->height = 1;
    if (!f->node || (anchor && !f->anchor)) {
        json_decref(f->node);
        free(f->anchor);
        fail(c, ev->start_mark, "out of memory");
        return false;
    }
    c->depth++;
    return true;
}

static bool on_end(struct ctx *c, const yaml_event_t *ev)
{
    struct frame f = c->stack[--c->depth];
    bool ok = true;
    if (f.anchor)
        ok = add_anchor(c, f.anchor, f.node, NULL, c->nodes - f.first_node, f.height,
                        ev->start_mark);
    free(f.anchor);
    free(f.key);
    json_decref(f.merged);
    if (!ok) {
        json_decref(f.node);
        return false;
    }
    return place(c, f.node, f.height, ev->start_mark);
}

/* Where libyaml says the input went wrong. */
static void parser_failed(struct ctx *c, const yaml_parser_t *p, const char *data, size_t len)
{
    yaml_mark_t m = p->problem_mark;
    const char *problem = p->problem ? p->problem : "cannot parse";
    switch (p->error) {
    case YAML_MEMORY_ERROR:
        fail(c, m, "out of memory");
        return;
    case YAML_READER_ERROR:
        /* The reader has only a byte offset: turn it into line:column. */
        m.line = 0;
        m.column = 0;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (data[i] == '\n') {
                m.line++;
                m.column = 0;
            } else if (((unsigned char)data[i] & 0xc0) != 0x80) {
                m.column++;
            }
        }
        if (p->problem_value != -1)
            fail(c, m, "%s (byte 0x%02x)", problem, (unsigned)p->problem_value & 0xff);
        else
            fail(c, m, "%s", problem);
        return;
    default:
        if (p->context)
            fail(c, m, "%s (%s at %zu:%zu)", problem, p->context, p->context_mark.line + 1,
                 p->context_mark.column + 1);
        else
            fail(c, m, "%s", problem);
    }
}

static void ctx_free(struct ctx *c)
{
    for (int i = 0; i < c->depth; i++) {
        json_decref(c->stack[i].node);
        json_decref(c->stack[i].merged);
        free(c->stack[i].anchor);
        free(c->stack[i].key);
    }
    c->depth = 0;
    for (size_t i = 0; i < c->nanchors; i++) {
        json_decref(c->anchors[i].value);
        free(c->anchors[i].text);
    }
    free(c->anchors);
    json_decref(c->anchor_index);
}

json_t *yaml_json_parse(const char *data, size_t len, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (!data)
        data = "";

    struct ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "1:1: out of memory");
        return NULL;
    }
    c->err = err;
    c->errlen = errlen;
    c->anchor_index = json_object();

    yaml_parser_t parser;
    if (!c->anchor_index || !yaml_parser_initialize(&parser)) {
        snprintf(err, errlen, "1:1: out of memory");
        json_decref(c->anchor_index);
        free(c);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)data, len);

    bool done = false;
    while (!done && !c->failed) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            parser_failed(c, &parser, data, len);
            break;
        }
        switch (ev.type) {
        case YAML_DOCUMENT_START_EVENT:
            if (++c->docs > 1)
                fail(c, ev.start_mark, "a second YAML document starts here; only one is allowed");
            break;
        case YAML_SCALAR_EVENT:
            on_scalar(c, &ev);
            break;
        case YAML_ALIAS_EVENT:
            on_alias(c, &ev);
            break;
        case YAML_SEQUENCE_START_EVENT:
            on_start(c, &ev, false);
            break;
        case YAML_MAPPING_START_EVENT:
            on_start(c, &ev, true);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            on_end(c, &ev);
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);

    json_t *root = c->root;
    if (c->failed) {
        json_decref(root);
        root = NULL;
    } else if (!root || c->root_empty) {
        json_decref(root);
        root = json_object();
        if (!root)
            snprintf(err, errlen, "1:1: out of memory");
    }
    ctx_free(c);
    free(c);
    return root;
}

json_t *yaml_json_load_file(const char *path, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    /* Read to EOF rather than trust the size: it may be a pipe. */
    size_t len = 0, cap = 0;
    char *buf = NULL;
    for (;;) {
        if (len == cap) {
            if (cap >= YAML_JSON_MAX_FILE) {
                snprintf(err, errlen, "%s: larger than %u MiB", path, YAML_JSON_MAX_FILE >> 20);
                goto fail_read;
            }
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                snprintf(err, errlen, "%s: out of memory", path);
                goto fail_read;
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f)) {
                snprintf(err, errlen, "%s: read error", path);
                goto fail_read;
            }
            break;
        }
    }
    fclose(f);

    char msg[512];
    json_t *root = yaml_json_parse(buf ? buf : "", len, msg, sizeof(msg));
    free(buf);
    if (!root)
        snprintf(err, errlen, "%s:%s", path, msg);
    return root;

fail_read:
    free(buf);
    fclose(f);
    return NULL;
}
