/*
 * jsonschema: a small JSON Schema (draft 4/7 subset) validator over jansson.
 *
 * It exists so that airgw's resource and plugin schemas can be written as the
 * same JSON documents APISIX writes in Lua (schema_def.lua), and so that
 * errors read as APISIX's (lua-resty-jsonschema) do, e.g.
 *   property "uri" validation failed: wrong type: expected string, got number
 *   property "methods" validation failed: failed to validate item 1: matches none of the enum values
 *   additional properties forbidden, found foo
 *   property "count" is required
 *   value should match only one schema, but matches none
 *   object matches none of the required: ["uri"] or ["uris"]
 *
 * Keywords: type (name or array of names; "integer" accepts whole-valued
 * reals), enum, const, properties, required, additionalProperties (bool or
 * schema), patternProperties, minProperties, maxProperties, items (one schema),
 * minItems, maxItems, uniqueItems, minLength, maxLength (UTF-8 code points),
 * pattern (POSIX extended regex, unanchored as in JSON Schema), minimum,
 * maximum, exclusiveMinimum, exclusiveMaximum (numbers, draft 7 style),
 * oneOf, anyOf, allOf, not, if/then/else, dependencies (array form and schema
 * form), $ref ("#/definitions/NAME" resolved against the registry given to
 * jsonschema_validate), default, and "format": "ipv4"|"ipv6"|"cidr"(custom)
 * Also, as lua-resty-jsonschema has them: multipleOf, items as an array
 * (tuple form) with additionalItems, and draft 4 boolean
 * exclusiveMinimum/exclusiveMaximum beside minimum/maximum.
 * Unknown keywords (description, title, ...) are ignored.
 *
 * Defaults: when a property is absent and its schema has "default", a deep
 * copy of the default is inserted into the validated document (APISIX does
 * this, so stored values carry e.g. "scheme":"http"). Inside oneOf/anyOf
 * branches defaults are inserted only from the branch that matched.
 *
 * Bounds: recursion follows the schema, never the data, except through
 * "items"/"properties"; validation fails cleanly past depth 64.
 */
#ifndef AIRGW_JSONSCHEMA_H
#define AIRGW_JSONSCHEMA_H

#include <jansson.h>
#include <stddef.h>

/* Validates doc against schema. registry is the object whose "definitions"
 * member $ref resolves into (may be NULL when no $ref is used). Defaults are
 * inserted into doc. Returns 0, or -EINVAL with the message in err (never
 * longer than errlen-1, always NUL-terminated). Compiled regexes are cached
 * process-wide (not thread-safe; each airgw process validates on one thread). */
int jsonschema_validate(const json_t *schema, json_t *doc, const json_t *registry, char *err,
                        size_t errlen);

/* Frees the regex cache (call at exit so sanitizers see no leak). */
void jsonschema_cleanup(void);

#endif
