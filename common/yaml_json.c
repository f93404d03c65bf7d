/* PLACEHOLDER: to be written (yaml_json.h). */
#include "yaml_json.h"
#include <stdio.h>
json_t *yaml_json_parse(const char *data, size_t len, char *err, size_t errlen)
{
    json_error_t e;
    json_t *j = json_loadb(data, len, 0, &e);
    if (!j)
        snprintf(err, errlen, "%s", e.text);
    return j;
}
json_t *yaml_json_load_file(const char *path, char *err, size_t errlen)
{
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        snprintf(err, errlen, "%s: %s", path, e.text);
    return j;
}
