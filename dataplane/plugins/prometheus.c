/* prometheus: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_prometheus = {
    .name = "prometheus",
    .priority = 500,
    .flags = PLUGIN_HTTP,
};
