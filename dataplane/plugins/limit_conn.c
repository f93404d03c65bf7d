/* limit-conn: not implemented yet (placeholder so the registry links). */
#include "plugin.h"

const struct plugin_def plugin_def_limit_conn = {
    .name = "limit-conn",
    .priority = 1003,
    .flags = PLUGIN_HTTP|PLUGIN_STREAM,
};
