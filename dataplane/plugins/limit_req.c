/* limit-req: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_limit_req = {
    .name = "limit-req",
    .priority = 1001,
    .flags = PLUGIN_HTTP,
};
