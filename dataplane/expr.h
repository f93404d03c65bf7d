/*
 * expr: the "vars" expressions of APISIX routes (lua-resty-expr v1), compiled
 * once from JSON and evaluated per request against a variable lookup.
 *
 * A rule is a JSON array. Its forms:
 *   []                                  always true
 *   [cmp, cmp, ...]                     AND of the elements
 *   ["AND"|"OR"|"!AND"|"!OR", r, r...]  logical operator (case-insensitive)
 *                                       over at least two sub-rules
 * where a sub-rule is a comparison or again one of the array forms, and a
 * comparison is [var, op, value] or [var, "!", op, value] (negated). Ops:
 * ==, ~=, >, >=, <, <=, ~~ (PCRE search), ~* (caseless PCRE search), in,
 * has, ipmatch (op names are case-insensitive). [var, value] means
 * [var, "==", value]; a JSON null value means "the variable is absent".
 *
 * Comparisons follow Lua's rules as lua-resty-expr does: an absent variable
 * is nil; == and ~= with a numeric value convert the variable with tonumber;
 * >, >=, <, <= convert both sides and are false when either is not a number;
 * `in` compares the variable with the array's string elements only.
 * airgw differences: `has` treats the variable as a comma-separated list
 * (APISIX only has table-valued variables for it); regexes are compiled and
 * checked when the rule is compiled, not on first use.
 *
 * A compiled expr is immutable: any number of threads may evaluate it at once.
 * Evaluating allocates no memory (regexes match with a stack scratch area).
 */
#ifndef AIRGW_EXPR_H
#define AIRGW_EXPR_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest nesting of arrays in one rule, and most comparisons plus groups. */
#define EXPR_MAX_DEPTH 16
#define EXPR_MAX_NODES 4096

/*
 * Looks up a request variable ("uri", "host", "arg_name", "http_x_api_key",
 * "cookie_sid", "remote_addr", "request_method", ...). Returns its bytes and
 * sets *len, or returns NULL when the variable is absent (Lua nil). The bytes
 * must stay valid until the evaluation that asked for them returns.
 */
typedef const char *(*expr_var_fn)(void *ud, const char *name, size_t *len);

struct expr;

/*
 * Compiles `rule` (a JSON array, see above) into *out. Returns 0, or -EINVAL
 * with a message in err (an invalid operator, a bad regex, an invalid IP
 * address, a rule too short or too deep), or -ENOMEM. The rule is not kept.
 */
int expr_compile(const json_t *rule, struct expr **out, char *err, size_t errlen);

/*
 * Evaluates the expression. A NULL var function means every variable is
 * absent. Returns true when the rule holds.
 */
bool expr_eval(const struct expr *e, expr_var_fn var, void *ud);

/* Frees the expression; NULL is fine. */
void expr_free(struct expr *e);

/*
 * A compiled PCRE2 pattern (8-bit, no UTF, JIT when available), as ngx.re
 * uses them with the "jo" options. Shared by the router and plugins.
 */
struct expr_regex;

enum {
    EXPR_RE_CASELESS = 1 << 0, /* the "i" option */
    EXPR_RE_FULL = 1 << 1,     /* the pattern must match the whole subject */
};

/* Compiles `pattern` (len bytes). Returns 0, -EINVAL (message in err), -ENOMEM. */
int expr_regex_compile(const char *pattern, size_t len, unsigned flags, struct expr_regex **out,
                       char *err, size_t errlen);

/* True when the pattern matches in s (anywhere, or the whole of it with EXPR_RE_FULL). */
bool expr_regex_match(const struct expr_regex *re, const char *s, size_t len);

/* Frees the pattern; NULL is fine. */
void expr_regex_free(struct expr_regex *re);

#endif
