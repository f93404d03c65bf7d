/* limit-count: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_limit_count = {
    .name = "limit-count",
    .priority = 1002,
    .flags = PLUGIN_HTTP,
};
