/* ip-restriction: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_ip_restriction = {
    .name = "ip-restriction",
    .priority = 3000,
    .flags = PLUGIN_HTTP|PLUGIN_STREAM,
};
