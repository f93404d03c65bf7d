/* PLACEHOLDER: to be written (config.h). */
#include "config.h"
#include <string.h>
static const char *colls[] = {"routes", "services", "upstreams", "stream_routes", "ssls",
                              "consumers", "global_rules", "plugin_configs"};
static const char *names[] = {"route", "service", "upstream", "stream_route", "ssl",
                              "consumer", "global_rule", "plugin_config"};
const char *config_kind_collection(enum gw_kind k) { return colls[k]; }
const char *config_kind_name(enum gw_kind k) { return names[k]; }
int config_kind_from_collection(const char *c)
{
    for (int i = 0; i < GW_KIND__COUNT; i++)
        if (strcmp(c, colls[i]) == 0)
            return i;
    return -1;
}
bool config_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n < 1 || n > 64)
        return false;
    return strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == n;
}
int config_check(enum gw_kind kind, json_t *conf, char *err, size_t errlen)
{
    (void)kind; (void)conf; (void)err; (void)errlen;
    return 0;
}
int config_refs(enum gw_kind kind, const json_t *conf, struct config_ref *out, int max, char *idbuf)
{
    (void)kind; (void)conf; (void)out; (void)max; (void)idbuf;
    return 0;
}
const json_t *config_plugin_names(void) { static json_t *a; if (!a) a = json_array(); return a; }
const json_t *config_plugin_schema(const char *name) { (void)name; return NULL; }
bool config_plugin_is_stream(const char *name) { (void)name; return false; }
const json_t *config_kind_schema(enum gw_kind kind) { (void)kind; return NULL; }
void config_cleanup(void) {}
