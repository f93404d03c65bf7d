/*
 * fuzz_config: libFuzzer target for the configuration validation path.
 *
 * Input: the first byte picks the resource kind (modulo GW_KIND__COUNT), the
 * rest is a JSON text (objects and arrays only, as the admin API parses bodies).
 * The document goes through config_check() and config_refs(); any crash,
 * sanitizer report or reference pointing outside the document or idbuf is a
 * bug. The schema registry and regex cache live for the whole run.
 */
#include "config.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INPUT (64 * 1024) /* the admin API caps bodies; bigger adds nothing */
#define MAX_REFS 4

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_INPUT)
        return 0;
    enum gw_kind kind = (enum gw_kind)(data[0] % GW_KIND__COUNT);
    json_t *doc = json_loadb((const char *)data + 1, size - 1, 0, NULL);
    if (!doc)
        return 0;

    char err[512];
    int rc = config_check(kind, doc, err, sizeof(err));
    if (rc != 0 && (err[0] == '\0' || strlen(err) >= sizeof(err)))
        abort(); /* a rejection always says why, within the buffer */

    struct config_ref refs[MAX_REFS];
    char idbuf[MAX_REFS * 24];
    int n = config_refs(kind, doc, refs, MAX_REFS, idbuf);
    if (n < 0 || n > MAX_REFS)
        abort();
    for (int i = 0; i < n; i++) {
        if (!refs[i].id || !refs[i].field || (unsigned)refs[i].kind >= GW_KIND__COUNT)
            abort();
        /* an accepted resource refers only by valid ids */
        if (rc == 0 && !config_id_valid(refs[i].id))
            abort();
    }
    json_decref(doc);
    return 0;
}
