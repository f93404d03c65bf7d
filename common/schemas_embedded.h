/*
 * schemas_embedded: the JSON files of common/schemas/, compiled in by
 * common/embed_schemas.py. "route", "upstream", ..., "definitions",
 * "plugin/<name>".
 */
#ifndef AIRGW_SCHEMAS_EMBEDDED_H
#define AIRGW_SCHEMAS_EMBEDDED_H

#include <stddef.h>

struct embedded_schema {
    const char *name; /* file name without .json; plugins as "plugin/NAME" */
    const char *text; /* the JSON document */
};

extern const struct embedded_schema embedded_schemas[];
extern const size_t embedded_schemas_count;

#endif
