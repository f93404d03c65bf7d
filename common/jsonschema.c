/*
 * jsonschema: the JSON Schema subset described in jsonschema.h, with the error
 * wording of lua-resty-jsonschema (the validator APISIX uses).
 *
 * The validator is a plain recursive interpreter: validate() applies one
 * schema node to one document node and returns 0, or -1 with the message in
 * the context. Keywords are checked in the order lua-resty-jsonschema checks
 * them (type, object keywords, array keywords, string keywords, number
 * keywords, enum, allOf, anyOf, oneOf, if, not, format, const), so that when a
 * document has several faults the one reported is the one APISIX reports.
 * Messages are built inside out: the innermost failure writes its message and
 * each enclosing level prepends its prefix ("property \"x\" validation
 * failed: ", "failed to validate item 2: ").
 *
 * Faults of the schema rather than of the document (unresolvable $ref, bad
 * pattern, nesting too deep, a non-schema where a schema must be, out of
 * memory) are fatal: they stop the walk even inside oneOf/anyOf/not/if, where
 * an ordinary failure only means "this branch does not match", so a schema bug
 * is reported as itself instead of as "matches none".
 *
 * Ownership: schema and registry are only read. The document is only written
 * by default injection (a deep copy of "default" under an absent key). Probes
 * of oneOf/anyOf/if/not branches run on a deep copy of the document; the keys
 * that a matched oneOf/anyOf branch added to its copy are then moved into the
 * document, so defaults come only from the branch that matched.
 *
 * The compiled-regex cache is the one process-wide mutable state; the header
 * contract allows it (one validating thread per process).
 */
#include "jsonschema.h"

#include "cidr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h> /* isfinite, a macro: no libm needed */
#include <regex.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64       /* schema levels applied in one path */
#define MAX_STEPS 1000000  /* schema nodes applied per call; stops exponential schemas */
#define MSG_MAX 4096       /* internal message buffer */
#define QUOTE_MAX 512      /* one quoted name/pattern/value inside a message */
#define DATA_MAX_DEPTH 128 /* equality and merge walks; past MAX_DEPTH nothing was added */
#define PATTERN_MAX 4096   /* longest pattern we translate */
#define RE_SLOTS 256       /* regex cache slots, a power of two */
#define RE_MAX_USED 192    /* then patterns are compiled per use, not cached */

struct vctx {
    const json_t *registry; /* object holding "definitions", may be NULL */
    long steps;             /* validate() calls so far, bounded by MAX_STEPS */
    bool fatal;             /* a schema fault: no branch may swallow it */
    char msg[MSG_MAX];      /* the current failure message */
};

/* ---- messages ---------------------------------------------------------- */

static int fail(struct vctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fatal(struct vctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int wrap(struct vctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct vctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
    va_end(ap);
    return -1;
}

static int fatal(struct vctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
    va_end(ap);
    c->fatal = true;
    return -1;
}

/* Prepends a prefix to the current message; the tail is cut if it overflows. */
static int wrap(struct vctx *c, const char *fmt, ...)
{
    char pre[MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof(pre), fmt, ap);
    va_end(ap);
    size_t plen = strlen(pre), mlen = strlen(c->msg);
    if (plen > sizeof(c->msg) - 1)
        plen = sizeof(c->msg) - 1;
    if (plen + mlen > sizeof(c->msg) - 1)
        mlen = sizeof(c->msg) - 1 - plen;
    memmove(c->msg + plen, c->msg, mlen);
    memcpy(c->msg, pre, plen);
    c->msg[plen + mlen] = '\0';
    return -1;
}

/* Quotes s as Lua's string.format("%q") does, which is how lua-resty-jsonschema
 * prints property names, patterns and matched values. Cut to fit cap (>= 3). */
static const char *luaq(char *buf, size_t cap, const char *s)
{
    size_t n = 0;
    buf[n++] = '"';
    for (; *s; s++) {
        char e[2];
        size_t el = 2;
        e[0] = '\\';
        switch (*s) {
        case '"':
        case '\\':
        case '\n':
            e[1] = *s;
            break;
        case '\r':
            e[1] = 'r';
            break;
        default:
            e[0] = *s;
            el = 1;
        }
        if (n + el + 2 > cap)
            break;
        memcpy(buf + n, e, el);
        n += el;
    }
    buf[n++] = '"';
    buf[n] = '\0';
    return buf;
}

/* Formats a number as Lua's tostring does ("%.14g": 3, 0.5, 1e+20). */
static const char *numfmt(char *buf, size_t cap, const json_t *v)
{
    snprintf(buf, cap, "%.14g", json_number_value(v));
    return buf;
}

/* ---- values ------------------------------------------------------------ */

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "object";
    case JSON_ARRAY:
        return "array";
    case JSON_STRING:
        return "string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "boolean";
    case JSON_NULL:
        return "null";
    }
    return "unknown";
}

/* True for whole numbers; done by hand because common/ does not link libm. */
static bool is_whole(double x)
{
    if (x != x)
        return false;
    if (x >= 9007199254740992.0 || x <= -9007199254740992.0)
        return true; /* every double this large is whole */
    return x == (double)(long long)x;
}

static bool type_is(const json_t *v, const char *t)
{
    if (strcmp(t, "integer") == 0) {
        if (json_is_integer(v))
            return true;
        return json_is_real(v) && is_whole(json_real_value(v));
    }
    return strcmp(t, type_name(v)) == 0;
}

/* Compares two numbers, exactly when both are integers. */
static int num_cmp(const json_t *a, const json_t *b)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        return (x > y) - (x < y);
    }
    double x = json_number_value(a), y = json_number_value(b);
    return (x > y) - (x < y);
}

/* Deep equality as Lua sees it: 1 and 1.0 are equal. */
static bool equal(const json_t *a, const json_t *b, int depth)
{
    if (depth > DATA_MAX_DEPTH)
        return false;
    if (json_is_number(a) && json_is_number(b))
        return num_cmp(a, b) == 0;
    if (json_typeof(a) != json_typeof(b))
        return false;
    switch (json_typeof(a)) {
    case JSON_OBJECT: {
        if (json_object_size(a) != json_object_size(b))
            return false;
        const char *k;
        json_t *av;
        json_object_foreach((json_t *)a, k, av)
        {
            const json_t *bv = json_object_get(b, k);
            if (!bv || !equal(av, bv, depth + 1))
                return false;
        }
        return true;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(a);
        if (n != json_array_size(b))
            return false;
        for (size_t i = 0; i < n; i++)
            if (!equal(json_array_get(a, i), json_array_get(b, i), depth + 1))
                return false;
        return true;
    }
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b) &&
               memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
    default:
        return true;
    }
}

/* Moves into dst what validation added to src, a deep copy of dst: keys that
 * dst lacks. Only additions are possible, so this is exact. */
static int merge_added(json_t *dst, json_t *src, int depth)
{
    if (depth > DATA_MAX_DEPTH)
        return 0;
    if (json_is_object(dst) && json_is_object(src)) {
        const char *k;
        json_t *sv;
        json_object_foreach(src, k, sv)
        {
            json_t *dv = json_object_get(dst, k);
            if (!dv) {
                if (json_object_set(dst, k, sv) < 0)
                    return -1;
            } else if (merge_added(dv, sv, depth + 1) < 0) {
                return -1;
            }
        }
    } else if (json_is_array(dst) && json_is_array(src) &&
               json_array_size(dst) == json_array_size(src)) {
        for (size_t i = 0; i < json_array_size(dst); i++)
            if (merge_added(json_array_get(dst, i), json_array_get(src, i), depth + 1) < 0)
                return -1;
    }
    return 0;
}

static size_t utf8_len(const char *s, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80)
            count++;
    return count;
}

/* ---- patterns ------------------------------------------------------------ */

struct sbuf {
    char *p;    /* output, NUL-terminated */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
    bool over;  /* something did not fit */
};

static void sb_putc(struct sbuf *b, char ch)
{
    if (b->len + 1 >= b->cap) {
        b->over = true;
        return;
    }
    b->p[b->len++] = ch;
    b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s)
{
    while (*s)
        sb_putc(b, *s++);
}

/* The control character a PCRE escape letter stands for, or -1. */
static int ctrl_escape(char e)
{
    switch (e) {
    case 't':
        return '\t';
    case 'n':
        return '\n';
    case 'r':
        return '\r';
    case 'f':
        return '\f';
    case 'v':
        return '\v';
    default:
        return -1;
    }
}

/* The POSIX bracket body of \d \w \s, or NULL. */
static const char *class_body(char e)
{
    switch (e) {
    case 'd':
        return "[:digit:]";
    case 'w':
        return "[:alnum:]_";
    case 's':
        return "[:space:]";
    default:
        return NULL;
    }
}

/* A range endpoint; characters special in a POSIX bracket become collating
 * symbols so their position does not matter. */
static void put_endpoint(struct sbuf *b, int ch)
{
    if (ch == '[' || ch == ']' || ch == '-' || ch == '^') {
        sb_puts(b, "[.");
        sb_putc(b, (char)ch);
        sb_puts(b, ".]");
    } else {
        sb_putc(b, (char)ch);
    }
}

/* Reads one bracket character (possibly escaped) at *pp. Returns the character,
 * -2 for a class escape (\d \w \s, body in *cls), -3 for a negated class escape
 * (not expressible inside a POSIX bracket) or -1 at the end of input. */
static int bracket_char(const char **pp, const char **cls)
{
    const char *p = *pp;
    if (*p == '\0')
        return -1;
    if (*p != '\\') {
        *pp = p + 1;
        return (unsigned char)*p;
    }
    char e = p[1];
    if (e == '\0')
        return -1;
    *pp = p + 2;
    if ((*cls = class_body(e)) != NULL)
        return -2;
    if (class_body((char)tolower((unsigned char)e)) != NULL)
        return -3;
    if (e == 'b')
        return '\b';
    int cc = ctrl_escape(e);
    return cc >= 0 ? cc : (unsigned char)e;
}

/* Translates a PCRE character class; p follows the '['. POSIX brackets have no
 * escapes and give ']', '-' and '^' meaning by position, so the members are
 * collected into mid and re-emitted in an order POSIX reads the same way.
 * Returns the position after the closing ']' or NULL if it cannot be
 * translated. */
static const char *bracket_members(const char *p, struct sbuf *mid, struct sbuf *out)
{
    bool neg = false, rbr = false, lbr = false, caret = false, dash = false;
    if (*p == '^') {
        neg = true;
        p++;
    }
    for (bool first = true;; first = false) {
        if (*p == '\0')
            return NULL;
        if (*p == ']' && !first) {
            p++;
            break;
        }
        if (p[0] == '[' && p[1] == ':') {
            const char *end = strstr(p + 2, ":]");
            if (!end)
                return NULL;
            for (; p < end + 2; p++)
                sb_putc(mid, *p);
            continue;
        }
        const char *cls = NULL;
        int lo = bracket_char(&p, &cls);
        if (lo == -1 || lo == -3)
            return NULL;
        if (lo == -2) {
            sb_puts(mid, cls);
            continue;
        }
        if (p[0] == '-' && p[1] != ']' && p[1] != '\0' && !(p[1] == '[' && p[2] == ':')) {
            const char *q = p + 1;
            const char *hcls = NULL;
            int hi = bracket_char(&q, &hcls);
            if (hi >= 0) {
                if (hi < lo)
                    return NULL;
                put_endpoint(mid, lo);
                sb_putc(mid, '-');
                put_endpoint(mid, hi);
                p = q;
                continue;
            }
            /* "a-\d": PCRE reads a literal '-'; fall through to plain 'a'. */
        }
        switch (lo) {
        case ']':
            rbr = true;
            break;
        case '[':
            lbr = true;
            break;
        case '^':
            caret = true;
            break;
        case '-':
            dash = true;
            break;
        default:
            sb_putc(mid, (char)lo);
        }
    }
    if (mid->over)
        return NULL;
    if (!neg && !rbr && !lbr && mid->len == 0 && caret) {
        sb_puts(out, dash ? "[-^]" : "\\^");
        return p;
    }
    sb_putc(out, '[');
    if (neg)
        sb_putc(out, '^');
    if (rbr)
        sb_putc(out, ']');
    sb_puts(out, mid->p);
    if (lbr)
        sb_putc(out, '[');
    if (caret)
        sb_putc(out, '^');
    if (dash)
        sb_putc(out, '-');
    sb_putc(out, ']');
    return p;
}

static const char *translate_bracket(const char *p, struct sbuf *out)
{
    size_t cap = strlen(p) * 8 + 16;
    struct sbuf mid = {malloc(cap), 0, cap, false};
    if (!mid.p)
        return NULL;
    mid.p[0] = '\0';
    p = bracket_members(p, &mid, out);
    free(mid.p);
    return p;
}

/* Translates the PCRE spellings schema authors use (\d \w \s, escaped
 * punctuation, classes like [a-z0-9-_.], (?:...), lazy quantifiers) into POSIX
 * extended syntax. Only match existence is asked, so lazy equals greedy.
 * Returns 0, or -1 when the pattern cannot be translated. */
static int translate_pattern(const char *p, struct sbuf *out)
{
    while (*p) {
        char ch = *p;
        if (ch == '\\') {
            char e = p[1];
            if (e == '\0') {
                sb_putc(out, '\\'); /* regcomp reports the trailing backslash */
                p++;
                continue;
            }
            p += 2;
            const char *cls = class_body(e);
            const char *ncls = class_body((char)tolower((unsigned char)e));
            int cc = ctrl_escape(e);
            if (cls) {
                sb_putc(out, '[');
                sb_puts(out, cls);
                sb_putc(out, ']');
            } else if (ncls && isupper((unsigned char)e)) {
                sb_puts(out, "[^");
                sb_puts(out, ncls);
                sb_putc(out, ']');
            } else if (cc >= 0) {
                sb_putc(out, (char)cc);
            } else if (strchr(".[]()*+?{}|^$\\", e) || isalnum((unsigned char)e)) {
                sb_putc(out, '\\');
                sb_putc(out, e);
            } else {
                sb_putc(out, e); /* \- \/ \_ \" ...: a literal */
            }
            continue;
        }
        if (ch == '[') {
            p = translate_bracket(p + 1, out);
            if (!p)
                return -1;
            continue;
        }
        if (ch == '(' && p[1] == '?' && p[2] == ':') {
            sb_putc(out, '(');
            p += 3;
            continue;
        }
        if ((ch == '*' || ch == '+' || ch == '?' || ch == '}') && p[1] == '?') {
            sb_putc(out, ch);
            p += 2;
            continue;
        }
        sb_putc(out, ch);
        p++;
    }
    return out->over ? -1 : 0;
}

struct re_slot {
    char *pattern; /* key: the schema's text; NULL when the slot is free */
    regex_t re;    /* compiled translation, valid when ok */
    bool ok;       /* false: compiling failed, why is in err */
    char err[96];  /* regerror() text */
};

static struct re_slot re_cache[RE_SLOTS];
static size_t re_used;

/* Compiles pattern into slot (re, ok, err); the key is left to the caller. */
static void compile_pattern(const char *pattern, struct re_slot *slot)
{
    slot->ok = false;
    slot->err[0] = '\0';
    size_t n = strlen(pattern);
    if (n > PATTERN_MAX) {
        snprintf(slot->err, sizeof(slot->err), "pattern too long");
        return;
    }
    size_t cap = n * 16 + 16;
    struct sbuf out = {malloc(cap), 0, cap, false};
    if (!out.p) {
        snprintf(slot->err, sizeof(slot->err), "out of memory");
        return;
    }
    out.p[0] = '\0';
    if (translate_pattern(pattern, &out) < 0) {
        snprintf(slot->err, sizeof(slot->err), "unsupported syntax");
        free(out.p);
        return;
    }
    int r = regcomp(&slot->re, out.p, REG_EXTENDED | REG_NOSUB);
    free(out.p);
    if (r != 0) {
        regerror(r, &slot->re, slot->err, sizeof(slot->err));
        return;
    }
    slot->ok = true;
}

static uint32_t str_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* Matches s against pattern (unanchored). Returns 0 with *matched, or -1
 * (fatal) when the pattern does not compile. */
static int match_pattern(struct vctx *c, const char *pattern, const char *s, bool *matched)
{
    char q[QUOTE_MAX];
    struct re_slot tmp, *slot = NULL;
    uint32_t i = str_hash(pattern) & (RE_SLOTS - 1);
    for (;; i = (i + 1) & (RE_SLOTS - 1)) {
        if (!re_cache[i].pattern)
            break;
        if (strcmp(re_cache[i].pattern, pattern) == 0) {
            slot = &re_cache[i];
            break;
        }
    }
    bool cached = slot != NULL;
    if (!slot) {
        char *key = re_used < RE_MAX_USED ? strdup(pattern) : NULL;
        slot = key ? &re_cache[i] : &tmp;
        compile_pattern(pattern, slot);
        if (key) {
            slot->pattern = key;
            re_used++;
            cached = true;
        }
    }
    if (!slot->ok)
        return fatal(c, "failed to compile pattern %s: %s", luaq(q, sizeof(q), pattern), slot->err);
    *matched = regexec(&slot->re, s, 0, NULL, 0) == 0;
    if (!cached)
        regfree(&slot->re);
    return 0;
}

void jsonschema_cleanup(void)
{
    for (size_t i = 0; i < RE_SLOTS; i++) {
        if (!re_cache[i].pattern)
            continue;
        if (re_cache[i].ok)
            regfree(&re_cache[i].re);
        free(re_cache[i].pattern);
        memset(&re_cache[i], 0, sizeof(re_cache[i]));
    }
    re_used = 0;
}

/* ---- validation ---------------------------------------------------------- */

static int validate(struct vctx *c, const json_t *schema, json_t *doc, int depth);

/* Resolves a "#/a/b" JSON pointer against the registry. */
static const json_t *resolve_ref(const json_t *registry, const char *ref)
{
    if (!registry || ref[0] != '#')
        return NULL;
    const json_t *cur = registry;
    const char *p = ref + 1;
    while (*p) {
        char tok[256];
        size_t n = 0;
        if (*p++ != '/')
            return NULL;
        for (; *p && *p != '/'; p++) {
            char ch = *p;
            if (ch == '~') {
                if (p[1] != '0' && p[1] != '1')
                    return NULL;
                ch = p[1] == '0' ? '~' : '/';
                p++;
            }
            if (n + 1 >= sizeof(tok))
                return NULL;
            tok[n++] = ch;
        }
        tok[n] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_get(cur, tok);
        } else if (json_is_array(cur)) {
            char *end;
            unsigned long idx = strtoul(tok, &end, 10);
            if (n == 0 || *end != '\0' || !isdigit((unsigned char)tok[0]))
                return NULL;
            cur = json_array_get(cur, idx);
        } else {
            return NULL;
        }
        if (!cur)
            return NULL;
    }
    return cur;
}

/* Validates against a branch without letting the branch's defaults reach doc:
 * containers are probed on a deep copy, returned in *copy on success when copy
 * is not NULL. */
static int probe(struct vctx *c, const json_t *schema, json_t *doc, int depth, json_t **copy)
{
    json_t *target = doc, *dup = NULL;
    if (copy)
        *copy = NULL;
    if (json_is_object(doc) || json_is_array(doc)) {
        dup = json_deep_copy(doc);
        if (!dup)
            return fatal(c, "out of memory");
        target = dup;
    }
    int r = validate(c, schema, target, depth);
    if (r == 0 && copy)
        *copy = dup;
    else
        json_decref(dup);
    return r;
}

static int adopt(struct vctx *c, json_t *doc, json_t *copy)
{
    int r = copy ? merge_added(doc, copy, 0) : 0;
    json_decref(copy);
    return r < 0 ? fatal(c, "out of memory") : 0;
}

static int check_type(struct vctx *c, const json_t *schema, const json_t *doc)
{
    const json_t *t = json_object_get(schema, "type");
    if (json_is_string(t)) {
        if (!type_is(doc, json_string_value(t)))
            return fail(c, "wrong type: expected %s, got %s", json_string_value(t), type_name(doc));
    } else if (json_is_array(t)) {
        char buf[512];
        struct sbuf names = {buf, 0, sizeof(buf), false};
        bool ok = false;
        size_t i;
        json_t *v;
        buf[0] = '\0';
        json_array_foreach(t, i, v)
        {
            if (!json_is_string(v))
                continue;
            if (type_is(doc, json_string_value(v)))
                ok = true;
            if (names.len)
                sb_puts(&names, ", ");
            sb_puts(&names, json_string_value(v));
        }
        if (!ok)
            return fail(c, "wrong type: expected one of %s, got %s", buf, type_name(doc));
    }
    return 0;
}

static bool in_string_array(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    if (!json_is_array(arr))
        return false;
    json_array_foreach(arr, i, v) if (json_is_string(v) &&
                                      strcmp(json_string_value(v), s) == 0) return true;
    return false;
}

/* "dependencies" for a key present in doc: a list of keys that must be
 * present too, or a schema the whole object must match. */
static int check_dependency(struct vctx *c, json_t *doc, const char *key, const json_t *dep,
                            int depth)
{
    char q1[QUOTE_MAX], q2[QUOTE_MAX];
    if (!dep)
        return 0;
    if (json_is_array(dep)) {
        size_t i;
        json_t *v;
        json_array_foreach(dep, i, v)
        {
            if (json_is_string(v) && !json_object_get(doc, json_string_value(v)))
                return fail(c, "property %s is required when %s is set",
                            luaq(q1, sizeof(q1), json_string_value(v)), luaq(q2, sizeof(q2), key));
        }
        return 0;
    }
    if (validate(c, dep, doc, depth + 1) < 0)
        return wrap(c, "failed to validate dependent schema for %s: ", luaq(q1, sizeof(q1), key));
    return 0;
}

static int check_object(struct vctx *c, const json_t *schema, json_t *doc, int depth)
{
    const json_t *props = json_object_get(schema, "properties");
    const json_t *req = json_object_get(schema, "required");
    const json_t *deps = json_object_get(schema, "dependencies");
    const json_t *pprops = json_object_get(schema, "patternProperties");
    const json_t *addl = json_object_get(schema, "additionalProperties");
    const json_t *minp = json_object_get(schema, "minProperties");
    const json_t *maxp = json_object_get(schema, "maxProperties");
    char q[QUOTE_MAX], n1[32];
    const char *key;
    json_t *sub, *val;

    props = json_is_object(props) ? props : NULL;
    deps = json_is_object(deps) ? deps : NULL;
    pprops = json_is_object(pprops) ? pprops : NULL;

    if (props) {
        json_object_foreach((json_t *)props, key, sub)
        {
            val = json_object_get(doc, key);
            if (val) {
                if (validate(c, sub, val, depth + 1) < 0)
                    return wrap(c, "property %s validation failed: ", luaq(q, sizeof(q), key));
                if (deps && check_dependency(c, doc, key, json_object_get(deps, key), depth) < 0)
                    return -1;
                continue;
            }
            if (in_string_array(req, key))
                return fail(c, "property %s is required", luaq(q, sizeof(q), key));
            const json_t *def = json_is_object(sub) ? json_object_get(sub, "default") : NULL;
            if (def && !json_is_null(def)) {
                json_t *copy = json_deep_copy(def);
                if (!copy || json_object_set_new(doc, key, copy) < 0)
                    return fatal(c, "out of memory");
            }
        }
    }

    if (json_is_array(req)) {
        size_t i;
        json_array_foreach(req, i, val)
        {
            if (!json_is_string(val))
                continue;
            const char *name = json_string_value(val);
            if (!json_object_get(doc, name))
                return fail(c, "property %s is required", luaq(q, sizeof(q), name));
        }
    }

    if (deps) {
        json_object_foreach((json_t *)deps, key, sub)
        {
            if (props && json_object_get(props, key))
                continue;
            if (json_object_get(doc, key) && check_dependency(c, doc, key, sub, depth) < 0)
                return -1;
        }
    }

    bool addl_check = addl && !json_is_true(addl);
    if (pprops || addl_check) {
        json_object_foreach(doc, key, val)
        {
            bool matched = false;
            if (pprops) {
                const char *patt;
                json_t *psub;
                json_object_foreach((json_t *)pprops, patt, psub)
                {
                    bool m;
                    if (match_pattern(c, patt, key, &m) < 0)
                        return -1;
                    if (!m)
                        continue;
                    matched = true;
                    if (validate(c, psub, val, depth + 1) < 0)
                        return wrap(c, "failed to validate %s (matching %s): ", key,
                                    luaq(q, sizeof(q), patt));
                }
            }
            if (!addl_check || matched || (props && json_object_get(props, key)))
                continue;
            if (json_is_false(addl))
                return fail(c, "additional properties forbidden, found %s", key);
            if (validate(c, addl, val, depth + 1) < 0)
                return wrap(c, "failed to validate additional property %s: ", key);
        }
    }

    double count = (double)json_object_size(doc);
    if (json_is_number(minp) && count < json_number_value(minp))
        return fail(c, "expect object to have at least %s properties",
                    numfmt(n1, sizeof(n1), minp));
    if (json_is_number(maxp) && count > json_number_value(maxp))
        return fail(c, "expect object to have at most %s properties", numfmt(n1, sizeof(n1), maxp));
    return 0;
}

static int check_array(struct vctx *c, const json_t *schema, json_t *doc, int depth)
{
    const json_t *mini = json_object_get(schema, "minItems");
    const json_t *maxi = json_object_get(schema, "maxItems");
    const json_t *items = json_object_get(schema, "items");
    const json_t *uniq = json_object_get(schema, "uniqueItems");
    size_t n = json_array_size(doc);
    char n1[32];

    if (json_is_number(mini) && (double)n < json_number_value(mini))
        return fail(c, "expect array to have at least %s items", numfmt(n1, sizeof(n1), mini));
    if (json_is_number(maxi) && (double)n > json_number_value(maxi))
        return fail(c, "expect array to have at most %s items", numfmt(n1, sizeof(n1), maxi));

    if (json_is_array(items)) {
        /* Tuple form: item i against items[i], the rest against additionalItems. */
        size_t tn = json_array_size(items);
        const json_t *extra = json_object_get(schema, "additionalItems");
        for (size_t i = 0; i < n; i++) {
            json_t *item = json_array_get(doc, i);
            if (i < tn) {
                if (validate(c, json_array_get(items, i), item, depth + 1) < 0)
                    return wrap(c, "failed to validate item %zu: ", i + 1);
            } else if (json_is_false(extra)) {
                return fail(c, "found unexpected extra items in array");
            } else if (json_is_object(extra)) {
                if (validate(c, extra, item, depth + 1) < 0)
                    return wrap(c, "failed to validate additional item %zu: ", i + 1);
            }
        }
    } else if (items) {
        for (size_t i = 0; i < n; i++)
            if (validate(c, items, json_array_get(doc, i), depth + 1) < 0)
                return wrap(c, "failed to validate item %zu: ", i + 1);
    }

    if (json_is_true(uniq) && n > 16) {
        /* Arrays of strings (uris, hosts, methods...) can be long: check them
         * with a hash set so a large body costs O(n), not O(n^2). The result
         * is the same pair the pairwise loop below reports. */
        size_t i;
        json_t *item, *seen = json_object();
        int all_strings = 1;
        json_array_foreach(doc, i, item) {
            if (!json_is_string(item)) {
                all_strings = 0;
                break;
            }
            const char *str = json_string_value(item);
            size_t len = json_string_length(item);
            json_t *first = json_object_getn(seen, str, len);
            if (first) {
                size_t fi = (size_t)json_integer_value(first);
                json_decref(seen);
                return fail(c, "expected unique items but items %zu and %zu are equal", fi + 1,
                            i + 1);
            }
            json_object_setn_new(seen, str, len, json_integer((json_int_t)i));
        }
        json_decref(seen);
        if (all_strings)
            return 0;
    }
    if (json_is_true(uniq)) {
        if (n > 4096)
            return fail(c, "expect array to have at most 4096 items");
        for (size_t j = 1; j < n; j++)
            for (size_t i = 0; i < j; i++)
                if (equal(json_array_get(doc, i), json_array_get(doc, j), 0))
                    return fail(c, "expected unique items but items %zu and %zu are equal", i + 1,
                                j + 1);
    }
    return 0;
}

static int check_string(struct vctx *c, const json_t *schema, const json_t *doc)
{
    const json_t *minl = json_object_get(schema, "minLength");
    const json_t *maxl = json_object_get(schema, "maxLength");
    const json_t *patt = json_object_get(schema, "pattern");
    const char *s = json_string_value(doc);
    char n1[32], q1[QUOTE_MAX], q2[QUOTE_MAX];

    if (json_is_number(minl) || json_is_number(maxl)) {
        size_t len = utf8_len(s, json_string_length(doc));
        if (json_is_number(minl) && (double)len < json_number_value(minl))
            return fail(c, "string too short, expected at least %s, got %zu",
                        numfmt(n1, sizeof(n1), minl), len);
        if (json_is_number(maxl) && (double)len > json_number_value(maxl))
            return fail(c, "string too long, expected at most %s, got %zu",
                        numfmt(n1, sizeof(n1), maxl), len);
    }
    if (json_is_string(patt)) {
        bool m;
        if (match_pattern(c, json_string_value(patt), s, &m) < 0)
            return -1;
        if (!m)
            return fail(c, "failed to match pattern %s with %s",
                        luaq(q1, sizeof(q1), json_string_value(patt)), luaq(q2, sizeof(q2), s));
    }
    return 0;
}

static int range_fail(struct vctx *c, const json_t *doc, const char *rel, const json_t *limit)
{
    char n1[32], n2[32];
    return fail(c, "expected %s to be %s %s", numfmt(n1, sizeof(n1), doc), rel,
                numfmt(n2, sizeof(n2), limit));
}

static int check_number(struct vctx *c, const json_t *schema, const json_t *doc)
{
    const json_t *min = json_object_get(schema, "minimum");
    const json_t *max = json_object_get(schema, "maximum");
    const json_t *emin = json_object_get(schema, "exclusiveMinimum");
    const json_t *emax = json_object_get(schema, "exclusiveMaximum");
    const json_t *mult = json_object_get(schema, "multipleOf");

    /* Draft 4 spells exclusiveness as a boolean beside minimum/maximum. */
    if (json_is_number(min)) {
        if (json_is_true(emin) ? num_cmp(doc, min) <= 0 : num_cmp(doc, min) < 0)
            return range_fail(c, doc, json_is_true(emin) ? "greater than" : "at least", min);
    }
    if (json_is_number(emin) && num_cmp(doc, emin) <= 0)
        return range_fail(c, doc, "greater than", emin);
    if (json_is_number(max)) {
        if (json_is_true(emax) ? num_cmp(doc, max) >= 0 : num_cmp(doc, max) > 0)
            return range_fail(c, doc, json_is_true(emax) ? "smaller than" : "at most", max);
    }
    if (json_is_number(emax) && num_cmp(doc, emax) >= 0)
        return range_fail(c, doc, "smaller than", emax);
    if (json_is_number(mult) && json_number_value(mult) > 0) {
        bool ok;
        if (json_is_integer(mult) && json_is_integer(doc)) {
            ok = json_integer_value(doc) % json_integer_value(mult) == 0;
        } else {
            double qt = json_number_value(doc) / json_number_value(mult);
            ok = isfinite(qt) && is_whole(qt);
        }
        if (!ok) {
            char n1[32], n2[32];
            return fail(c, "expected %s to be a multiple of %s", numfmt(n1, sizeof(n1), doc),
                        numfmt(n2, sizeof(n2), mult));
        }
    }
    return 0;
}

static int check_any_of(struct vctx *c, const json_t *anyof, json_t *doc, int depth)
{
    size_t i;
    json_t *sub;
    json_array_foreach(anyof, i, sub)
    {
        json_t *copy;
        if (probe(c, sub, doc, depth + 1, &copy) == 0)
            return adopt(c, doc, copy);
        if (c->fatal)
            return -1;
    }
    /* lua-resty-jsonschema lists the "required" arrays of the branches, which
     * is what makes APISIX say: object matches none of the required: ["uri"] or ["uris"] */
    char buf[1024];
    struct sbuf list = {buf, 0, sizeof(buf), false};
    buf[0] = '\0';
    json_array_foreach(anyof, i, sub)
    {
        const json_t *req = json_is_object(sub) ? json_object_get(sub, "required") : NULL;
        if (!req)
            continue;
        char *s = json_dumps(req, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!s)
            continue;
        if (list.len)
            sb_puts(&list, " or ");
        sb_puts(&list, s);
        free(s);
    }
    return fail(c, "object matches none of the required%s%s", list.len ? ": " : "", buf);
}

static int check_one_of(struct vctx *c, const json_t *oneof, json_t *doc, int depth)
{
    size_t i, first = 0;
    json_t *sub, *win = NULL;
    json_array_foreach(oneof, i, sub)
    {
        json_t *copy;
        if (probe(c, sub, doc, depth + 1, &copy) == 0) {
            if (first) {
                json_decref(copy);
                json_decref(win);
                return fail(c,
                            "value should match only one schema, but matches both schemas %zu "
                            "and %zu",
                            first, i + 1);
            }
            first = i + 1;
            win = copy;
        } else if (c->fatal) {
            json_decref(win);
            return -1;
        }
    }
    if (!first)
        return fail(c, "value should match only one schema, but matches none");
    return adopt(c, doc, win);
}

static int check_format(struct vctx *c, const char *format, const char *s)
{
    unsigned char addr[16];
    struct cidr range;
    if (strcmp(format, "ipv4") == 0) {
        if (inet_pton(AF_INET, s, addr) != 1)
            return fail(c, "expect valid ipv4 address but got: %s", s);
    } else if (strcmp(format, "ipv6") == 0) {
        if (inet_pton(AF_INET6, s, addr) != 1)
            return fail(c, "expect valid ipv6 address but got: %s", s);
    } else if (strcmp(format, "cidr") == 0) {
        if (cidr_parse(s, &range) != 0)
            return fail(c, "expect valid cidr but got: %s", s);
    }
    return 0;
}

static int validate(struct vctx *c, const json_t *schema, json_t *doc, int depth)
{
    if (c->fatal)
        return -1;
    if (depth > MAX_DEPTH)
        return fatal(c, "schema nesting too deep");
    if (++c->steps > MAX_STEPS)
        return fatal(c, "schema too complex to validate");
    if (json_is_true(schema))
        return 0;
    if (json_is_false(schema))
        return fail(c, "expect false always");
    if (!json_is_object(schema))
        return fatal(c, "invalid schema: expected an object or a boolean, got %s",
                     schema ? type_name(schema) : "nothing");

    const json_t *ref = json_object_get(schema, "$ref");
    if (ref) {
        /* As in draft 4/7, a $ref replaces its siblings. */
        char q[QUOTE_MAX];
        const json_t *target =
            json_is_string(ref) ? resolve_ref(c->registry, json_string_value(ref)) : NULL;
        if (!target)
            return fatal(c, "failed to resolve $ref %s",
                         json_is_string(ref) ? luaq(q, sizeof(q), json_string_value(ref))
                                             : "(not a string)");
        return validate(c, target, doc, depth + 1);
    }

    if (check_type(c, schema, doc) < 0)
        return -1;
    if (json_is_object(doc) && check_object(c, schema, doc, depth) < 0)
        return -1;
    if (json_is_array(doc) && check_array(c, schema, doc, depth) < 0)
        return -1;
    if (json_is_string(doc) && check_string(c, schema, doc) < 0)
        return -1;
    if (json_is_number(doc) && check_number(c, schema, doc) < 0)
        return -1;

    const json_t *kw = json_object_get(schema, "enum");
    if (json_is_array(kw)) {
        size_t i;
        json_t *v;
        bool found = false;
        json_array_foreach(kw, i, v) if ((found = equal(doc, v, 0))) break;
        if (!found)
            return fail(c, "matches none of the enum values");
    }

    kw = json_object_get(schema, "allOf");
    if (json_is_array(kw)) {
        size_t i;
        json_t *sub;
        json_array_foreach(kw, i, sub) if (validate(c, sub, doc, depth + 1) <
                                           0) return wrap(c, "allOf %zu failed: ", i + 1);
    }

    kw = json_object_get(schema, "anyOf");
    if (json_is_array(kw) && json_array_size(kw) > 0 && check_any_of(c, kw, doc, depth) < 0)
        return -1;

    kw = json_object_get(schema, "oneOf");
    if (json_is_array(kw) && check_one_of(c, kw, doc, depth) < 0)
        return -1;

    kw = json_object_get(schema, "if");
    if (kw) {
        int r = probe(c, kw, doc, depth + 1, NULL);
        if (c->fatal)
            return -1;
        const json_t *then = json_object_get(schema, "then");
        const json_t *els = json_object_get(schema, "else");
        if (r == 0 && then && validate(c, then, doc, depth + 1) < 0)
            return c->fatal ? -1 : fail(c, "then clause did not match");
        if (r != 0 && els && validate(c, els, doc, depth + 1) < 0)
            return c->fatal ? -1 : fail(c, "else clause did not match");
    }

    kw = json_object_get(schema, "not");
    if (kw) {
        int r = probe(c, kw, doc, depth + 1, NULL);
        if (c->fatal)
            return -1;
        if (r == 0)
            return fail(c, "value wasn't supposed to match schema");
    }

    kw = json_object_get(schema, "format");
    if (json_is_string(kw) && json_is_string(doc) &&
        check_format(c, json_string_value(kw), json_string_value(doc)) < 0)
        return -1;

    kw = json_object_get(schema, "const");
    if (kw && !equal(doc, kw, 0))
        return fail(c, "failed to check const value");
    return 0;
}

int jsonschema_validate(const json_t *schema, json_t *doc, const json_t *registry, char *err,
                        size_t errlen)
{
    struct vctx *c = malloc(sizeof(*c));
    if (!c) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return -EINVAL;
    }
    c->registry = registry;
    c->steps = 0;
    c->fatal = false;
    c->msg[0] = '\0';
    int r = doc ? validate(c, schema, doc, 1) : fail(c, "no document to validate");
    if (err && errlen)
        snprintf(err, errlen, "%s", r == 0 ? "" : c->msg);
    free(c);
    return r == 0 ? 0 : -EINVAL;
}
