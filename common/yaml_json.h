/*
 * yaml_json: loads a YAML or JSON document into a jansson tree.
 *
 * Used for the daemons' config files and for APISIX standalone files
 * (apisix.yaml). YAML scalars become JSON values as YAML 1.2's core schema
 * says (plain true/false -> bool, plain integers/floats -> numbers, plain
 * null/~/empty -> null; quoted scalars are always strings). Anchors and
 * aliases are resolved (bounded, so "billion laughs" fails cleanly). Mapping
 * keys must be scalars. Nesting is bounded (YAML_JSON_MAX_DEPTH).
 *
 * One document only (a second is an error); .inf/.nan are errors (JSON has
 * none); integers beyond int64 become reals; duplicate or non-scalar keys are
 * errors; "<<" merge keys are supported; unknown tags are errors.
 *
 * The caller owns the returned tree (json_decref).
 */
#ifndef AIRGW_YAML_JSON_H
#define AIRGW_YAML_JSON_H

#include <jansson.h>
#include <stddef.h>

#define YAML_JSON_MAX_DEPTH 64
#define YAML_JSON_MAX_NODES 1000000

/* Parses len bytes of YAML (JSON is YAML too). On error returns NULL and
 * writes a one-line message with line:column into err. An empty document
 * gives an empty object. */
json_t *yaml_json_parse(const char *data, size_t len, char *err, size_t errlen);

/* Reads and parses a file; errors name the file. */
json_t *yaml_json_load_file(const char *path, char *err, size_t errlen);

#endif
