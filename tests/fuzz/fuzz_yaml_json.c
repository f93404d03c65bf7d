/*
 * libFuzzer target for common/yaml_json.c.
 *
 * Besides "no crash, no leak, no UB", it checks two properties on every input
 * that parses: the error buffer is left empty, and the tree survives a round
 * trip (dumped as JSON, which is YAML, and parsed again it is equal). Inputs
 * are capped at 64 KiB: the parser's limits (nodes, depth) are what is under
 * test, not the speed of reading megabytes.
 */
#include "yaml_json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_INPUT)
        return 0;
    char err[256];
    /* A copy of exactly size bytes, so reading past the end is caught. */
    char *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    json_t *j = yaml_json_parse(buf, size, err, sizeof(err));
    free(buf);
    if (!j) {
        /* Every error carries a position. */
        if (err[0] < '1' || err[0] > '9' || !strchr(err, ':'))
            abort();
        return 0;
    }
    if (err[0] != '\0')
        abort();

    char *text = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT | JSON_ENSURE_ASCII);
    if (text) {
        json_t *again = yaml_json_parse(text, strlen(text), err, sizeof(err));
        /* A failed re-parse is not itself a bug: libyaml cannot read a
         * flow key longer than 1024 characters, nor the surrogate pairs
         * JSON_ENSURE_ASCII writes for characters past U+FFFF. A different
         * tree is a bug. (ASCII output keeps raw U+2028 and friends, which
         * YAML would fold as line breaks, out of the quoted strings.) */
        if (again && !json_equal(j, again)) {
            fprintf(stderr, "round trip changed the tree: %s\n", text);
            abort();
        }
        json_decref(again);
        free(text);
    }
    json_decref(j);
    return 0;
}
